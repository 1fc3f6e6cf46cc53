package db

import (
	"context"
	"fmt"
	"time"
)

// PoolCapacity reads each hardware pool's live capacity, by hardware ID:
// the slots of its workers seen within live.
func (c Conn) PoolCapacity(ctx context.Context, live time.Duration) (map[string]int64, error) {
	rows, err := c.q.ListGPUPoolUsage(ctx, c.db, live.Seconds())
	if err != nil {
		return nil, fmt.Errorf("read pool capacity: %w", err)
	}
	out := make(map[string]int64, len(rows))
	for _, r := range rows {
		out[r.ID] = r.Capacity
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
