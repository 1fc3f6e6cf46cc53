package server

import (
	"context"
	"sync"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"

	"github.com/tuneforge/tuneforge/workflows"
)

// revisionTTL is how long a replica keeps the control workers' revision
// before it asks Temporal again.
const revisionTTL = 10 * time.Second

// revisions chooses the workflow revision of new jobs: the lowest that the
// control workers polling queue (the control task queue) run (Temporal lists the
// pollers of the last few minutes, with their identities). A job of a
// revision an old worker does not know would break once a new worker
// replays what the old one began, so during a rolling upgrade new jobs
// keep the old revision until every old worker is gone.
type revisions struct {
	temporal client.Client
	queue    string
	mu       sync.Mutex
	at       time.Time
	rev      int
}

// current is the revision to give a job created now. With no control
// worker polling, it is this build's: the first worker to come is most
// likely of it. An answer Temporal cannot give leaves the last one, or 0
// (which every worker runs) when there is none.
func (r *revisions) current(ctx context.Context) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.at.IsZero() && time.Since(r.at) < revisionTTL {
		return r.rev
	}
	resp, err := r.temporal.DescribeTaskQueue(ctx, r.queue, enumspb.TASK_QUEUE_TYPE_WORKFLOW)
	if err != nil {
		return r.rev
	}
	rev := workflows.Revision
	for _, p := range resp.GetPollers() {
		rev = min(rev, workflows.IdentityRevision(p.GetIdentity()))
	}
	r.rev, r.at = rev, time.Now()
	return rev
}
