package activities

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"go.temporal.io/sdk/activity"

	"github.com/tuneforge/tuneforge/dataset"
	"github.com/tuneforge/tuneforge/trainer"
)

// ValidateInput names the datasets of a job.
type ValidateInput struct {
	JobID             string
	DatasetKey        string
	ValidationKey     string
	MaxSequenceLength int
}

// DatasetSummary is what validation found.
type DatasetSummary struct {
	Examples           int
	Tokens             int64
	ValidationExamples int
}

// ValidateDataset streams the training (and validation) files, checks every
// line and fails, without retries, with line-numbered errors on bad data.
func (a *Activities) ValidateDataset(ctx context.Context, in ValidateInput) (DatasetSummary, error) {
	if err := a.appendLog(ctx, in.JobID, LevelInfo, "Validating the training dataset"); err != nil {
		return DatasetSummary{}, err
	}
	var examples []trainer.Example
	train, err := a.scan(ctx, in.DatasetKey, "training file", in.MaxSequenceLength, 0, func(e dataset.Example) error {
		examples = append(examples, toTrainerExample(e))
		return nil
	})
	if err != nil {
		return DatasetSummary{}, err
	}
	if _, err := trainer.NewState(examples, 0); err != nil {
		return DatasetSummary{}, invalidData("training file: %v", err)
	}
	sum := DatasetSummary{Examples: train.Examples, Tokens: train.Tokens}
	if in.ValidationKey != "" {
		// A small validation set is fine: it only measures.
		v, err := a.scan(ctx, in.ValidationKey, "validation file", in.MaxSequenceLength, 1, nil)
		if err != nil {
			return DatasetSummary{}, err
		}
		sum.ValidationExamples = v.Examples
	}
	msg := fmt.Sprintf("Dataset valid: %d training examples, %d tokens", sum.Examples, sum.Tokens)
	if in.ValidationKey != "" {
		msg += fmt.Sprintf(", %d validation examples", sum.ValidationExamples)
	}
	return sum, a.appendLog(ctx, in.JobID, LevelInfo, msg)
}

// scan streams one dataset file through dataset.Scan, heartbeating, and
// turns bad data into a non-retryable error naming the file.
func (a *Activities) scan(ctx context.Context, key, what string, maxSeq, minExamples int, fn func(dataset.Example) error) (dataset.Summary, error) {
	r, err := a.Artifacts.Open(ctx, key)
	if err != nil {
		return dataset.Summary{}, fmt.Errorf("open %s: %w", what, err)
	}
	defer r.Close()
	n := 0
	sum, err := dataset.Scan(ctx, r, dataset.Options{MinExamples: minExamples, MaxSequenceLength: maxSeq}, func(e dataset.Example) error {
		if n++; n%1000 == 0 {
			activity.RecordHeartbeat(ctx, n)
		}
		if fn != nil {
			return fn(e)
		}
		return nil
	})
	var verr *dataset.ValidationError
	if errors.As(err, &verr) {
		return sum, invalidData("%s: %v", what, verr)
	}
	if err != nil {
		return sum, fmt.Errorf("read %s: %w", what, err)
	}
	return sum, nil
}

// loadExamples reads a dataset file into the trainer's examples.
// Epochs of one job follow each other on the same workers, so the parsed
// dataset is kept: datasets are immutable under their keys.
func (a *Activities) loadExamples(ctx context.Context, key, what string) ([]trainer.Example, error) {
	if out, ok := a.datasets.get(key); ok {
		return out, nil
	}
	var out []trainer.Example
	_, err := a.scan(ctx, key, what, 0, 1, func(e dataset.Example) error {
		out = append(out, toTrainerExample(e))
		return nil
	})
	if err != nil {
		return nil, err
	}
	a.datasets.put(key, out)
	return out, nil
}

// datasetCache holds the most recently loaded datasets of a worker.
type datasetCache struct {
	mu      sync.Mutex
	entries []cachedDataset // most recent last
}

type cachedDataset struct {
	key      string
	examples []trainer.Example
}

// datasetCacheSize bounds the cache: a few jobs' training and validation
// files per worker.
const datasetCacheSize = 4

func (c *datasetCache) get(key string) ([]trainer.Example, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, e := range c.entries {
		if e.key == key {
			c.entries = append(append(c.entries[:i:i], c.entries[i+1:]...), e)
			return e.examples, true
		}
	}
	return nil, false
}

func (c *datasetCache) put(key string, examples []trainer.Example) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, e := range c.entries {
		if e.key == key {
			c.entries = append(c.entries[:i:i], c.entries[i+1:]...)
			break
		}
	}
	c.entries = append(c.entries, cachedDataset{key, examples})
	if len(c.entries) > datasetCacheSize {
		c.entries = c.entries[len(c.entries)-datasetCacheSize:]
	}
}

func toTrainerExample(e dataset.Example) trainer.Example {
	return trainer.Example{Text: e.Input(), Label: e.Target(), Tokens: e.Tokens()}
}
