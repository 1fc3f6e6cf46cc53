package db

import (
	"context"
	"fmt"
	"time"
)

// PoolUsage is one hardware pool's live capacity and use.
type PoolUsage struct {
	HardwareID string
	// Capacity is the slots of the pool's workers seen within the
	// liveness window; Granted are held by jobs; Waiting jobs queue.
	Capacity, Granted, Waiting int64
}

// PoolUsage reads every hardware pool's usage, in catalog order.
func (c Conn) PoolUsage(ctx context.Context, live time.Duration) ([]PoolUsage, error) {
	rows, err := c.q.ListGPUPoolUsage(ctx, c.db, live.Seconds())
	if err != nil {
		return nil, fmt.Errorf("read pool usage: %w", err)
	}
	out := make([]PoolUsage, len(rows))
	for i, r := range rows {
		out[i] = PoolUsage{HardwareID: r.ID, Capacity: r.Capacity, Granted: r.Granted, Waiting: r.Waiting}
	}
	return out, nil
}

// PoolCapacity reads each hardware pool's live capacity, by hardware ID:
// the slots of its workers seen within live.
func (c Conn) PoolCapacity(ctx context.Context, live time.Duration) (map[string]int64, error) {
	usage, err := c.PoolUsage(ctx, live)
	if err != nil {
		return nil, err
	}
	out := make(map[string]int64, len(usage))
	for _, u := range usage {
		out[u.HardwareID] = u.Capacity
	}
	return out, nil
}

// PoolJobs is an organization's jobs in one pool.
type PoolJobs struct {
	// Queued jobs wait for a slot; Running ones hold one.
	Queued, Running int64
}

// PoolJobs reads the organization's own jobs in each pool, by hardware ID;
// a pool without its jobs is absent. Other organizations' jobs are theirs
// to know.
func (c Conn) PoolJobs(ctx context.Context, org string) (map[string]PoolJobs, error) {
	rows, err := c.q.ListOrganizationPoolJobs(ctx, c.db, org)
	if err != nil {
		return nil, fmt.Errorf("read the organization's pool jobs: %w", err)
	}
	out := make(map[string]PoolJobs, len(rows))
	for _, r := range rows {
		out[r.HardwareID] = PoolJobs{Queued: r.Queued, Running: r.Running}
	}
	return out, nil
}
