package activities

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/activity"

	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/db/dbsqlc"
)

// The GPU queue. A waiting job holds no worker slot and no connection: its
// workflow joins the pool's queue (RequestGPU) and then waits for the
// SignalGPUGranted signal. Whatever frees or adds capacity (a release, a
// training worker coming up) dispatches the pool: it grants free slots in
// one transaction under the pool's lock, then signals the granted jobs.
// PostgreSQL holds the queue, so it is durable, ordered and shared by every
// replica; a grant stays marked unnotified until its signal was accepted,
// and every dispatch re-sends unnotified grants, so a crash between the
// grant and the signal delays a job by one dispatch at most.

// SignalGPUGranted tells a waiting job's workflow that it holds its slot.
const SignalGPUGranted = "gpu-granted"

// GPUGrant is SignalGPUGranted's payload. RequestedAt names the request it
// answers, so a late duplicate meant for an earlier run is ignored.
type GPUGrant struct {
	RequestedAt time.Time
}

// LeaseRequest asks for one slot of a hardware pool.
type LeaseRequest struct {
	JobID          string
	OrganizationID string
	HardwareID     string
	QueuedAt       time.Time
	CreatedAt      time.Time
}

// GPUTicket is the answer to RequestGPU: the job holds its slot already, or
// waits for the grant of the request made at RequestedAt.
type GPUTicket struct {
	Granted     bool
	RequestedAt time.Time
}

// RequestGPU puts the job in its pool's queue (idempotently: a retry keeps
// its place) and dispatches the pool, which may grant the slot at once.
func (a *Activities) RequestGPU(ctx context.Context, req LeaseRequest) (GPUTicket, error) {
	ticket, ahead, err := a.enqueue(ctx, req)
	if err != nil {
		return GPUTicket{}, err
	}
	msg := acquiredLog(req.HardwareID)
	if !ticket.Granted {
		msg = fmt.Sprintf("Waiting for a GPU slot on %s (%d of your organization's jobs ahead of it on this pool)", req.HardwareID, ahead)
	}
	return ticket, a.appendLog(ctx, req.JobID, LevelInfo, msg)
}

// enqueue joins the queue, grants what the pool has free and signals the
// other jobs granted; ahead counts the organization's jobs before this one.
func (a *Activities) enqueue(ctx context.Context, req LeaseRequest) (ticket GPUTicket, ahead int64, err error) {
	err = a.Store.InTx(ctx, func(tx pgx.Tx) error {
		q := a.Store.Q
		if err := q.LockGPUPool(ctx, tx, req.HardwareID); err != nil {
			return fmt.Errorf("lock pool %s: %w", req.HardwareID, err)
		}
		lease, err := q.RequestGPULease(ctx, tx, dbsqlc.RequestGPULeaseParams{
			JobID: req.JobID, HardwareID: req.HardwareID, OrganizationID: req.OrganizationID, RequestedAt: req.QueuedAt,
		})
		if db.IsForeignKeyViolation(err) {
			return jobGone(req.JobID)
		}
		if err != nil {
			return fmt.Errorf("request a slot: %w", err)
		}
		if lease.GrantedAt == nil {
			if err := a.grantFree(ctx, tx, req.HardwareID); err != nil {
				return err
			}
			if lease, err = q.GetGPULease(ctx, tx, req.JobID); err != nil {
				return fmt.Errorf("read the lease: %w", err)
			}
		}
		ticket = GPUTicket{Granted: lease.GrantedAt != nil, RequestedAt: lease.RequestedAt}
		if ticket.Granted {
			// This answer is the job's notice.
			return q.MarkGPUGrantNotified(ctx, tx, dbsqlc.MarkGPUGrantNotifiedParams{JobID: req.JobID, RequestedAt: lease.RequestedAt})
		}
		ahead, err = q.GPUQueuePosition(ctx, tx, dbsqlc.GPUQueuePositionParams{
			HardwareID: req.HardwareID, OrganizationID: req.OrganizationID, RequestedAt: lease.RequestedAt, JobID: req.JobID,
		})
		return err
	})
	if err != nil {
		return GPUTicket{}, 0, err
	}
	return ticket, ahead, a.notifyGrants(ctx, req.HardwareID)
}

// GPUGranted logs that a waiting job got its slot.
func (a *Activities) GPUGranted(ctx context.Context, req LeaseRequest) error {
	return a.appendLog(ctx, req.JobID, LevelInfo, acquiredLog(req.HardwareID))
}

func acquiredLog(hardwareID string) string {
	return fmt.Sprintf("Acquired a GPU slot on %s", hardwareID)
}

// ReleaseGPU gives the job's slot (or its place in the queue) back and
// hands free slots to the next jobs.
func (a *Activities) ReleaseGPU(ctx context.Context, jobID string) error {
	pools, err := a.Store.Q.ReleaseGPULease(ctx, a.Store.Pool, jobID)
	if err != nil {
		return fmt.Errorf("release slot of %s: %w", jobID, err)
	}
	for _, hw := range pools {
		if err := a.DispatchGPUs(ctx, hw); err != nil {
			return err
		}
	}
	return nil
}

// DispatchGPUs grants the pool's free slots to the next waiting jobs and
// signals every granted job not yet told.
func (a *Activities) DispatchGPUs(ctx context.Context, hardwareID string) error {
	if err := a.grantPool(ctx, hardwareID); err != nil {
		return err
	}
	return a.notifyGrants(ctx, hardwareID)
}

// grantPool grants the pool's free slots in a transaction of its own,
// under the pool's lock.
func (a *Activities) grantPool(ctx context.Context, hardwareID string) error {
	return a.Store.InTx(ctx, func(tx pgx.Tx) error {
		if err := a.Store.Q.LockGPUPool(ctx, tx, hardwareID); err != nil {
			return fmt.Errorf("lock pool %s: %w", hardwareID, err)
		}
		return a.grantFree(ctx, tx, hardwareID)
	})
}

// grantFree grants as many slots as the pool has free, fairly; the caller
// holds the pool's lock.
func (a *Activities) grantFree(ctx context.Context, tx pgx.Tx, hardwareID string) error {
	q := a.Store.Q
	usage, err := q.GPUPoolUsage(ctx, tx, dbsqlc.GPUPoolUsageParams{HardwareID: hardwareID, LiveSeconds: a.GPULiveness.Seconds()})
	if err != nil {
		return fmt.Errorf("pool usage: %w", err)
	}
	for free := min(usage.Capacity-usage.Granted, usage.Waiting); free > 0; free-- {
		next, err := q.NextFairGPUWaiter(ctx, tx, hardwareID)
		if err != nil {
			return fmt.Errorf("pool queue: %w", err)
		}
		lease, err := q.GrantGPULease(ctx, tx, next)
		if err != nil {
			return fmt.Errorf("grant a slot: %w", err)
		}
		if err := q.RecordGPUTurn(ctx, tx, dbsqlc.RecordGPUTurnParams{HardwareID: hardwareID, OrganizationID: lease.OrganizationID}); err != nil {
			return fmt.Errorf("record the turn: %w", err)
		}
	}
	return nil
}

// notifyGrants signals the pool's granted jobs that have not been told. A
// job whose workflow is gone (terminated from outside) gives its slot back.
func (a *Activities) notifyGrants(ctx context.Context, hardwareID string) error {
	for {
		grants, err := a.Store.Q.UnnotifiedGPUGrants(ctx, a.Store.Pool, hardwareID)
		if err != nil {
			return fmt.Errorf("pending grants: %w", err)
		}
		freed := false
		for _, g := range grants {
			err := a.Temporal.SignalWorkflow(ctx, g.JobID, "", SignalGPUGranted, GPUGrant{RequestedAt: g.RequestedAt})
			var nf *serviceerror.NotFound
			switch {
			case errors.As(err, &nf):
				a.Logger.Warn("a granted job has no open workflow; its slot goes to the next job", "job", g.JobID, "pool", hardwareID)
				if _, err := a.Store.Q.ReleaseGPULease(ctx, a.Store.Pool, g.JobID); err != nil {
					return fmt.Errorf("release slot of %s: %w", g.JobID, err)
				}
				freed = true
				continue
			case err != nil:
				return fmt.Errorf("signal the grant to %s: %w", g.JobID, err)
			}
			if err := a.Store.Q.MarkGPUGrantNotified(ctx, a.Store.Pool, dbsqlc.MarkGPUGrantNotifiedParams{JobID: g.JobID, RequestedAt: g.RequestedAt}); err != nil {
				return fmt.Errorf("mark the grant of %s: %w", g.JobID, err)
			}
		}
		if !freed {
			return nil
		}
		if err := a.grantPool(ctx, hardwareID); err != nil {
			return err
		}
	}
}

// legacyLeasePoll paces AcquireGPU.
const legacyLeasePoll = time.Second

// AcquireGPU serves only job workflows that scheduled it before RequestGPU
// replaced it (their histories must replay): it joins the queue and waits,
// heartbeating, until the dispatcher grants the slot.
func (a *Activities) AcquireGPU(ctx context.Context, req LeaseRequest) error {
	for {
		ticket, _, err := a.enqueue(ctx, req)
		if err != nil {
			return err
		}
		if ticket.Granted {
			return a.GPUGranted(ctx, req)
		}
		activity.RecordHeartbeat(ctx)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(legacyLeasePoll):
		}
	}
}
