package db

import (
	"context"
	"fmt"
	"time"

	"github.com/tuneforge/tuneforge/db/dbsqlc"
)

// The GPU queue: each hardware pool's leases, granted in one transaction
// under the pool's advisory lock, and the training workers whose
// advertised slots are the pool's capacity. Every grant takes live, how
// recently a worker must have been seen for its slots to count.

// GPURequest asks for one slot of a hardware pool for a job.
type GPURequest struct {
	JobID          string
	OrganizationID string
	HardwareID     string
	// RequestedAt places the request in the queue.
	RequestedAt time.Time
}

// GPUPlace is where a request left the job: holding its slot, or waiting
// behind Ahead of its organization's jobs. RequestedAt names the request
// (a retry's is the first request's).
type GPUPlace struct {
	Granted     bool
	RequestedAt time.Time
	Ahead       int64
}

// RequestGPU puts the job in its pool's queue (idempotently: a retry keeps
// its place) and grants what the pool has free, in one transaction under
// the pool's lock. A slot granted to the job now is marked notified: the
// answer is the job's notice. ErrNotFound when the job (or pool) is gone.
func (s *Store) RequestGPU(ctx context.Context, r GPURequest, live time.Duration) (GPUPlace, error) {
	var place GPUPlace
	err := s.Transact(ctx, func(tx Conn) error {
		if err := tx.lockPool(ctx, r.HardwareID); err != nil {
			return err
		}
		lease, err := tx.q.RequestGPULease(ctx, tx.db, dbsqlc.RequestGPULeaseParams{
			JobID: r.JobID, HardwareID: r.HardwareID, OrganizationID: r.OrganizationID, RequestedAt: r.RequestedAt,
		})
		if IsForeignKeyViolation(err) {
			return fmt.Errorf("request a slot for %s: %w", r.JobID, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("request a slot: %w", err)
		}
		if lease.GrantedAt == nil {
			if err := tx.grantFree(ctx, r.HardwareID, live); err != nil {
				return err
			}
			if lease, err = tx.q.GetGPULease(ctx, tx.db, r.JobID); err != nil {
				return fmt.Errorf("read the lease: %w", err)
			}
		}
		place = GPUPlace{Granted: lease.GrantedAt != nil, RequestedAt: lease.RequestedAt.UTC()}
		if place.Granted {
			return tx.MarkGrantNotified(ctx, r.JobID, lease.RequestedAt)
		}
		queued, err := tx.QueuePlace(ctx, r.OrganizationID, r.JobID)
		place.Ahead = queued.Ahead
		return err
	})
	if err != nil {
		return GPUPlace{}, err
	}
	return place, nil
}

// GrantFreeGPUs grants the pool's free slots to the next waiting jobs, in
// a transaction of its own under the pool's lock.
func (s *Store) GrantFreeGPUs(ctx context.Context, hardwareID string, live time.Duration) error {
	return s.Transact(ctx, func(tx Conn) error {
		if err := tx.lockPool(ctx, hardwareID); err != nil {
			return err
		}
		return tx.grantFree(ctx, hardwareID, live)
	})
}

// lockPool serializes the pool's grants until the transaction ends.
func (c Conn) lockPool(ctx context.Context, hardwareID string) error {
	if err := c.q.LockGPUPool(ctx, c.db, hardwareID); err != nil {
		return fmt.Errorf("lock pool %s: %w", hardwareID, err)
	}
	return nil
}

// grantFree grants as many slots as the pool has free, fairly; the caller
// holds the pool's lock.
func (c Conn) grantFree(ctx context.Context, hardwareID string, live time.Duration) error {
	usage, err := c.q.GPUPoolUsage(ctx, c.db, dbsqlc.GPUPoolUsageParams{HardwareID: hardwareID, LiveSeconds: live.Seconds()})
	if err != nil {
		return fmt.Errorf("pool usage: %w", err)
	}
	for free := min(usage.Capacity-usage.Granted, usage.Waiting); free > 0; free-- {
		next, err := c.q.NextFairGPUWaiter(ctx, c.db, hardwareID)
		if err != nil {
			return fmt.Errorf("pool queue: %w", err)
		}
		lease, err := c.q.GrantGPULease(ctx, c.db, next)
		if err != nil {
			return fmt.Errorf("grant a slot: %w", err)
		}
		if err := c.q.RecordGPUTurn(ctx, c.db, dbsqlc.RecordGPUTurnParams{HardwareID: hardwareID, OrganizationID: lease.OrganizationID}); err != nil {
			return fmt.Errorf("record the turn: %w", err)
		}
	}
	return nil
}

// ReleaseGPU gives the job's slot (or its place in the queue) back and
// returns the pools it freed, none when it had no lease. It grants
// nothing: the caller dispatches those pools.
func (c Conn) ReleaseGPU(ctx context.Context, jobID string) ([]string, error) {
	pools, err := c.q.ReleaseGPULease(ctx, c.db, jobID)
	if err != nil {
		return nil, fmt.Errorf("release slot of %s: %w", jobID, err)
	}
	return pools, nil
}

// GPUGrant is a granted slot, named by the request it answers.
type GPUGrant struct {
	JobID       string
	RequestedAt time.Time
}

// UnnotifiedGrants lists the pool's grants not yet marked notified, oldest
// grant first.
func (c Conn) UnnotifiedGrants(ctx context.Context, hardwareID string) ([]GPUGrant, error) {
	rows, err := c.q.UnnotifiedGPUGrants(ctx, c.db, hardwareID)
	if err != nil {
		return nil, fmt.Errorf("pending grants: %w", err)
	}
	out := make([]GPUGrant, len(rows))
	for i, r := range rows {
		out[i] = GPUGrant{JobID: r.JobID, RequestedAt: r.RequestedAt.UTC()}
	}
	return out, nil
}

// MarkGrantNotified records that the job's workflow was told of the grant
// answering its request at requestedAt; a lease of another request is left
// as it is.
func (c Conn) MarkGrantNotified(ctx context.Context, jobID string, requestedAt time.Time) error {
	if err := c.q.MarkGPUGrantNotified(ctx, c.db, dbsqlc.MarkGPUGrantNotifiedParams{JobID: jobID, RequestedAt: requestedAt}); err != nil {
		return fmt.Errorf("mark the grant of %s: %w", jobID, err)
	}
	return nil
}

// GPULease is a job's place in a pool's queue, or its slot once granted.
type GPULease struct {
	JobID          string
	OrganizationID string
	HardwareID     string
	RequestedAt    time.Time
	// GrantedAt is nil while the job waits.
	GrantedAt *time.Time
	// NotifiedAt is nil until the job's workflow was told of the grant.
	NotifiedAt *time.Time
}

// GPULease reads the job's lease; ErrNotFound when it has none.
func (c Conn) GPULease(ctx context.Context, jobID string) (GPULease, error) {
	r, err := c.q.GetGPULease(ctx, c.db, jobID)
	if err != nil {
		return GPULease{}, fmt.Errorf("read the lease of %s: %w", jobID, NotFound(err))
	}
	return GPULease{
		JobID: r.JobID, OrganizationID: r.OrganizationID, HardwareID: r.HardwareID,
		RequestedAt: r.RequestedAt.UTC(), GrantedAt: utc(r.GrantedAt), NotifiedAt: utc(r.NotifiedAt),
	}, nil
}

// AdvertiseGPUWorker records a training worker's slots of a pool, and the
// trainer it runs ("builtin" or "command": config.TrainerBuiltin or
// config.TrainerCommand), as seen now; the worker repeats it well within
// the liveness window.
func (c Conn) AdvertiseGPUWorker(ctx context.Context, id, hardwareID string, slots int, trainer string) error {
	err := c.q.HeartbeatGPUWorker(ctx, c.db, dbsqlc.HeartbeatGPUWorkerParams{ID: id, HardwareID: hardwareID, Slots: int32(slots), Trainer: trainer})
	if err != nil {
		return fmt.Errorf("heartbeat of worker %s: %w", id, err)
	}
	return nil
}

// LiveTrainers lists, each once and sorted, the trainers that the pool's
// workers seen within live advertise: none when no worker of the pool is
// live. "" stands for a worker that did not say (its binary predates the
// advertisement of trainers).
func (c Conn) LiveTrainers(ctx context.Context, hardwareID string, live time.Duration) ([]string, error) {
	kinds, err := c.q.LivePoolTrainers(ctx, c.db, dbsqlc.LivePoolTrainersParams{HardwareID: hardwareID, LiveSeconds: live.Seconds()})
	if err != nil {
		return nil, fmt.Errorf("trainers of pool %s: %w", hardwareID, err)
	}
	return kinds, nil
}

// WithdrawGPUWorker removes a training worker's advertisement, so its slots
// stop counting at once rather than when it is no longer live.
func (c Conn) WithdrawGPUWorker(ctx context.Context, id string) error {
	if err := c.q.DeleteGPUWorker(ctx, c.db, id); err != nil {
		return fmt.Errorf("withdraw worker %s: %w", id, err)
	}
	return nil
}

// QueuePlace is where one of the organization's jobs stands in its pool's
// queue: Granted, or waiting behind Ahead of the organization's jobs.
// ErrNotFound when the job has asked for no slot.
func (c Conn) QueuePlace(ctx context.Context, org, jobID string) (GPUPlace, error) {
	r, err := c.q.GetJobQueuePlace(ctx, c.db, dbsqlc.GetJobQueuePlaceParams{JobID: jobID, OrganizationID: org})
	if err != nil {
		return GPUPlace{}, fmt.Errorf("read the queue place of %s: %w", jobID, NotFound(err))
	}
	return GPUPlace{Granted: r.Granted, Ahead: r.Ahead}, nil
}
