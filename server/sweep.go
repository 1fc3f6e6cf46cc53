package server

import (
	"context"
	"fmt"
	"time"

	"github.com/tuneforge/tuneforge/artifacts"
)

// An upload stores its dataset's object, then records its row; a process
// that dies in between leaves an object nothing names, which would count
// against no quota and never be deleted. The API sweeps such objects.
const (
	// orphanAge is how old an object with no row must be to be swept: an
	// upload records its row moments after the object is whole, so an
	// object that old was left by a crash.
	orphanAge = time.Hour
	// orphanSweepEvery is how often the API looks for them.
	orphanSweepEvery = time.Hour
	// orphanBatch is how many objects one database lookup checks.
	orphanBatch = 500
)

// SweepOrphanDatasets deletes the dataset objects last written before
// cutoff that no dataset row names, and returns how many it deleted.
func (s *Server) SweepOrphanDatasets(ctx context.Context, cutoff time.Time) (int, error) {
	deleted := 0
	var batch []string
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		named, err := s.Store.DatasetBlobKeys(ctx, batch)
		if err != nil {
			return err
		}
		for _, key := range batch {
			if named[key] {
				continue
			}
			if err := s.Artifacts.Delete(ctx, key); err != nil {
				return fmt.Errorf("sweep an orphaned dataset object: %w", err)
			}
			s.log.InfoContext(ctx, "deleted a dataset object no dataset names (its upload did not finish)", "key", key)
			deleted++
		}
		batch = batch[:0]
		return nil
	}
	err := s.Artifacts.EachObject(ctx, artifacts.DatasetPrefix, func(o artifacts.Object) error {
		if !o.ModTime.Before(cutoff) {
			return nil
		}
		if batch = append(batch, o.Key); len(batch) == orphanBatch {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	return deleted, err
}

// sweepOrphans runs SweepOrphanDatasets now and every orphanSweepEvery
// until ctx ends. Several API processes may sweep at once: deleting an
// object twice is harmless.
func (s *Server) sweepOrphans(ctx context.Context) {
	tick := time.NewTicker(orphanSweepEvery)
	defer tick.Stop()
	for {
		if _, err := s.SweepOrphanDatasets(ctx, time.Now().Add(-orphanAge)); err != nil && ctx.Err() == nil {
			s.log.ErrorContext(ctx, "sweep orphaned dataset objects", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
