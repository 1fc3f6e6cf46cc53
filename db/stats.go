package db

import (
	"context"
	"fmt"

	"github.com/tuneforge/tuneforge/db/dbsqlc"
	"github.com/tuneforge/tuneforge/jobstatus"
)

// JobStats counts the organization's jobs by status; a status without jobs
// is absent.
func (c Conn) JobStats(ctx context.Context, org string) (map[jobstatus.Status]int64, error) {
	rows, err := c.q.JobStats(ctx, c.db, org)
	if err != nil {
		return nil, fmt.Errorf("count jobs by status: %w", err)
	}
	out := make(map[jobstatus.Status]int64, len(rows))
	for _, r := range rows {
		out[r.Status] = r.N
	}
	return out, nil
}

// Spend is what the organization's jobs have cost in USD, the slots they
// hold now included.
func (c Conn) Spend(ctx context.Context, org string) (float64, error) {
	v, err := c.q.OrganizationSpend(ctx, c.db, org)
	if err != nil {
		return 0, fmt.Errorf("sum spend: %w", err)
	}
	return v, nil
}

// HeldSpend is the GPU time and its price so far of a slot a job holds.
type HeldSpend struct {
	Seconds, Cost float64
}

// Throughput is what the organization's finished jobs of a model on a pool
// trained: Tokens in Seconds of GPU time, over Jobs jobs.
type Throughput struct {
	Jobs            int64
	Tokens, Seconds float64
}

// MeasuredThroughput sums the organization's finished jobs of baseModel on
// hardwareID; Jobs is 0 when it has none.
func (c Conn) MeasuredThroughput(ctx context.Context, org, baseModel, hardwareID string) (Throughput, error) {
	r, err := c.q.MeasuredThroughput(ctx, c.db, dbsqlc.MeasuredThroughputParams{OrganizationID: org, BaseModel: baseModel, HardwareID: hardwareID})
	if err != nil {
		return Throughput{}, fmt.Errorf("measure throughput: %w", err)
	}
	return Throughput{Jobs: r.Jobs, Tokens: r.Tokens, Seconds: r.Seconds}, nil
}
