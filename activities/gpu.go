package activities

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"go.temporal.io/sdk/activity"

	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/db/dbsqlc"
)

// LeaseRequest asks for one slot of a hardware pool.
type LeaseRequest struct {
	JobID      string
	HardwareID string
	QueuedAt   time.Time
	CreatedAt  time.Time
}

// leasePoll is how often a waiting job checks for a free slot.
const leasePoll = 250 * time.Millisecond

// AcquireGPU waits, heartbeating, until the job holds a slot of its pool.
// Slots are granted in QueuedAt order; a slot belongs to the job (not to a
// host) until ReleaseGPU, so a crashed training worker's job keeps its place
// and resumes on another worker of the pool.
func (a *Activities) AcquireGPU(ctx context.Context, req LeaseRequest) error {
	logged := false
	for {
		granted, position, err := a.tryGrant(ctx, req)
		if err != nil {
			return err
		}
		if granted {
			return a.appendLog(ctx, req.JobID, LevelInfo, fmt.Sprintf("Acquired a GPU slot on %s", req.HardwareID), req.CreatedAt)
		}
		if !logged {
			logged = true
			msg := fmt.Sprintf("Waiting for a GPU slot on %s (%d ahead in the queue)", req.HardwareID, position)
			if err := a.appendLog(ctx, req.JobID, LevelInfo, msg, req.CreatedAt); err != nil {
				return err
			}
		}
		activity.RecordHeartbeat(ctx, position)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(leasePoll):
		}
	}
}

// tryGrant grants the job a slot if one is free and the job heads the queue;
// otherwise it returns how many jobs are ahead of it.
func (a *Activities) tryGrant(ctx context.Context, req LeaseRequest) (granted bool, ahead int64, err error) {
	err = a.Store.InTx(ctx, func(tx pgx.Tx) error {
		q := a.Store.Q
		if err := q.LockGPUPool(ctx, tx, req.HardwareID); err != nil {
			return fmt.Errorf("lock pool %s: %w", req.HardwareID, err)
		}
		lease, err := q.RequestGPULease(ctx, tx, dbsqlc.RequestGPULeaseParams{JobID: req.JobID, HardwareID: req.HardwareID, RequestedAt: req.QueuedAt})
		if db.IsForeignKeyViolation(err) {
			return jobGone(req.JobID, req.CreatedAt)
		}
		if err != nil {
			return fmt.Errorf("request a slot: %w", err)
		}
		if lease.GrantedAt != nil {
			granted = true
			return nil
		}
		usage, err := q.GPUPoolUsage(ctx, tx, dbsqlc.GPUPoolUsageParams{HardwareID: req.HardwareID, LiveSeconds: a.GPULiveness.Seconds()})
		if err != nil {
			return fmt.Errorf("pool usage: %w", err)
		}
		head, err := q.NextGPUWaiter(ctx, tx, req.HardwareID)
		if err != nil {
			return fmt.Errorf("pool queue: %w", err)
		}
		if head != req.JobID || usage.Granted >= usage.Capacity {
			ahead, err = q.GPUQueuePosition(ctx, tx, dbsqlc.GPUQueuePositionParams{HardwareID: req.HardwareID, RequestedAt: lease.RequestedAt, JobID: req.JobID})
			return err
		}
		granted = true
		return q.GrantGPULease(ctx, tx, req.JobID)
	})
	return granted, ahead, err
}

// ReleaseGPU gives the job's slot (or its place in the queue) back.
func (a *Activities) ReleaseGPU(ctx context.Context, jobID string) error {
	if err := a.Store.Q.ReleaseGPULease(ctx, a.Store.Pool, jobID); err != nil {
		return fmt.Errorf("release slot of %s: %w", jobID, err)
	}
	return nil
}
