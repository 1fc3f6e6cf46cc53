package db_test

import (
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tuneforge/tuneforge/db/dbsqlc"
)

// TestGetJobDetail: one query gives the job's row, the spend of the slot
// it holds (none while it waits) and its best checkpoint (the lowest
// validation loss, the earliest of equals), and only to its organization.
func TestGetJobDetail(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	pool := f.pool("pool")
	f.queue(pool, "", lease{job: "held", org: "a", granted: true}, lease{job: "waiting", org: "a"})
	held, waiting := f.id("held"), f.id("waiting")
	for i, loss := range []*float64{nil, new(0.5), new(0.3), new(0.3), new(0.4)} {
		f.check(f.q.RecordJobCheckpoint(f.ctx, f.tx, dbsqlc.RecordJobCheckpointParams{
			ID: f.id("ckpt-" + string(rune('a'+i))), JobID: held, Step: int32(10 * (i + 1)), Epoch: 1, ValidationLoss: loss, BlobKey: "k",
		}))
	}
	get := func(org, id string) (dbsqlc.GetJobDetailRow, error) {
		return f.q.GetJobDetail(f.ctx, f.tx, dbsqlc.GetJobDetailParams{OrganizationID: f.id(org), ID: id})
	}
	r, err := get("a", held)
	f.check(err)
	if r.Job.ID != held || !r.Holding || r.HeldSeconds < 0 || r.HeldCost < 0 {
		t.Errorf("the holding job: %s, holding %v, %v s, %v USD", r.Job.ID, r.Holding, r.HeldSeconds, r.HeldCost)
	}
	if r.BestID != f.id("ckpt-c") || r.BestStep != 30 || r.BestValidationLoss != 0.3 {
		t.Errorf("best checkpoint %q at step %d, loss %v; want %q at 30, 0.3", r.BestID, r.BestStep, r.BestValidationLoss, f.id("ckpt-c"))
	}
	r, err = get("a", waiting)
	f.check(err)
	if r.Holding || r.HeldSeconds != 0 || r.BestID != "" {
		t.Errorf("the waiting job: holding %v, %v s, best %q", r.Holding, r.HeldSeconds, r.BestID)
	}
	if _, err := get("b", held); !errors.Is(err, pgx.ErrNoRows) {
		t.Errorf("another organization read the job: %v", err)
	}
}
