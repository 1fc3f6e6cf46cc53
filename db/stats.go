package db

import (
	"context"
	"fmt"

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
