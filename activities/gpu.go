package activities

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/activity"

	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/metrics"
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
	place, err := a.enqueue(ctx, req)
	if err != nil {
		return GPUTicket{}, err
	}
	ticket := GPUTicket{Granted: place.Granted, RequestedAt: place.RequestedAt}
	if place.Granted {
		return ticket, a.granted(ctx, req)
	}
	msg := fmt.Sprintf("Waiting for a GPU slot on %s (%d of your organization's jobs ahead of it on this pool)", req.HardwareID, place.Ahead)
	return ticket, a.Store.Transact(ctx, func(tx db.Conn) error {
		_, err := recordEventLogged(ctx, tx, db.Event{JobID: req.JobID, Type: db.EventWaitingForGPU, Message: msg,
			Data: map[string]any{"hardware": req.HardwareID, "ahead": place.Ahead}})
		return err
	})
}

// enqueue joins the queue, grants what the pool has free and signals the
// other jobs granted.
func (a *Activities) enqueue(ctx context.Context, req LeaseRequest) (db.GPUPlace, error) {
	place, err := a.Store.RequestGPU(ctx, db.GPURequest{
		JobID: req.JobID, OrganizationID: req.OrganizationID, HardwareID: req.HardwareID, RequestedAt: req.QueuedAt,
	}, a.GPULiveness)
	if db.IsNotFound(err) {
		return db.GPUPlace{}, jobGone(req.JobID)
	}
	if err != nil {
		return db.GPUPlace{}, err
	}
	return place, a.notifyGrants(ctx, req.HardwareID)
}

// GPUGranted records that a waiting job got its slot.
func (a *Activities) GPUGranted(ctx context.Context, req LeaseRequest) error {
	return a.granted(ctx, req)
}

// granted records the job's grant of a slot (its event and log line) and
// measures its wait, once: a local activity runs again when the workflow
// task that ran it failed, after its transaction committed.
func (a *Activities) granted(ctx context.Context, req LeaseRequest) error {
	waited := time.Since(req.QueuedAt)
	recorded := false
	err := a.Store.Transact(ctx, func(tx db.Conn) error {
		var err error
		recorded, err = recordEventLogged(ctx, tx, db.Event{JobID: req.JobID, Type: db.EventGPUAcquired,
			Message: fmt.Sprintf("Acquired a GPU slot on %s", req.HardwareID),
			Data:    map[string]any{"hardware": req.HardwareID, "waitedSeconds": waited.Round(time.Millisecond).Seconds()}})
		return err
	})
	if recorded && err == nil {
		metrics.QueueWait.WithLabelValues(req.HardwareID).Observe(waited.Seconds())
	}
	return err
}

// ReleaseGPU gives the job's slot (or its place in the queue) back and
// hands free slots to the next jobs.
func (a *Activities) ReleaseGPU(ctx context.Context, jobID string) error {
	pools, err := a.Store.ReleaseGPU(ctx, jobID)
	if err != nil {
		return err
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
	if err := a.Store.GrantFreeGPUs(ctx, hardwareID, a.GPULiveness); err != nil {
		return err
	}
	return a.notifyGrants(ctx, hardwareID)
}

// notifyGrants signals the pool's granted jobs that have not been told. A
// job whose workflow is gone (terminated from outside) gives its slot back.
func (a *Activities) notifyGrants(ctx context.Context, hardwareID string) error {
	for {
		grants, err := a.Store.UnnotifiedGrants(ctx, hardwareID)
		if err != nil {
			return err
		}
		freed := false
		for _, g := range grants {
			err := a.Temporal.SignalWorkflow(ctx, g.JobID, "", SignalGPUGranted, GPUGrant{RequestedAt: g.RequestedAt})
			var nf *serviceerror.NotFound
			switch {
			case errors.As(err, &nf):
				a.Logger.Warn("a granted job has no open workflow; its slot goes to the next job", "job", g.JobID, "pool", hardwareID)
				if _, err := a.Store.ReleaseGPU(ctx, g.JobID); err != nil {
					return err
				}
				freed = true
				continue
			case err != nil:
				return fmt.Errorf("signal the grant to %s: %w", g.JobID, err)
			}
			if err := a.Store.MarkGrantNotified(ctx, g.JobID, g.RequestedAt); err != nil {
				return err
			}
		}
		if !freed {
			return nil
		}
		if err := a.Store.GrantFreeGPUs(ctx, hardwareID, a.GPULiveness); err != nil {
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
		place, err := a.enqueue(ctx, req)
		if err != nil {
			return err
		}
		if place.Granted {
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
