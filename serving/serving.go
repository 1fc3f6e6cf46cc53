// Package serving holds the builtin models an API process answers with:
// loaded from the artifact store once, however many requests ask for a
// model at the same time, and kept in memory within a byte budget.
package serving

import (
	"context"
	"fmt"

	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/trainer"
)

// DefaultCacheBytes is the memory models may take when no budget is set:
// thousands of typical builtin models (tens of KiB each), or 32 of the
// largest possible (64 labels over every feature bucket, 16 MiB).
const DefaultCacheBytes = 512 << 20

// Models serves trained models by their artifact key. It keeps only what
// inference needs (trainer.Model), never the optimizer state of the
// checkpoint, and the most recently used models up to its budget.
type Models struct {
	store *artifacts.Store
	cache *cache[*trainer.Model]
}

// New serves models from store within maxBytes of memory; 0 or less means
// DefaultCacheBytes.
func New(store *artifacts.Store, maxBytes int64) *Models {
	if maxBytes <= 0 {
		maxBytes = DefaultCacheBytes
	}
	return &Models{store: store, cache: newCache[*trainer.Model](maxBytes)}
}

// Get returns the model stored under key. Artifact keys are unique to the
// deploying job and never rewritten, so a cached model is never stale.
func (m *Models) Get(ctx context.Context, key string) (*trainer.Model, error) {
	return m.cache.get(ctx, key, m.load)
}

// Cached returns how many models are in memory and the bytes they take.
func (m *Models) Cached() (models int, bytes int64) {
	return m.cache.stats()
}

// load decodes the model as it streams from the store, so the blob is
// never held whole.
func (m *Models) load(ctx context.Context, key string) (*trainer.Model, int64, error) {
	r, err := m.store.Open(ctx, key)
	if err != nil {
		return nil, 0, fmt.Errorf("open model: %w", err)
	}
	defer r.Close()
	model, err := trainer.ReadModel(r)
	if err != nil {
		return nil, 0, fmt.Errorf("read model %s: %w", key, err)
	}
	return model, model.Bytes(), nil
}
