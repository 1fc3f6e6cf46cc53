package serving

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"

	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/internal/peakheap"
	"github.com/tuneforge/tuneforge/trainer"
)

var vocabulary = strings.Fields("order invoice refund delivery password crash login card account late broken package email charge return bug screen address payment tracking")

// trainModel trains a small model of labels labels (seed makes each
// distinct), stores its checkpoint under key as Deploy does, and returns it.
func trainModel(t testing.TB, store *artifacts.Store, key string, labels int, seed uint64) *trainer.State {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 3))
	train := make([]trainer.Example, 300)
	for i := range train {
		label := r.IntN(labels)
		words := []string{fmt.Sprint("topic", label), vocabulary[r.IntN(len(vocabulary))], vocabulary[(label*7+int(seed))%len(vocabulary)]}
		train[i] = trainer.Example{Text: strings.Join(words, " "), Label: fmt.Sprint("label-", label), Tokens: 3}
	}
	s, err := trainer.NewState(train, int64(seed))
	if err != nil {
		t.Fatal(err)
	}
	run, err := trainer.NewRun(s, trainer.Hyperparameters{Epochs: 1, LearningRate: 2e-4, BatchSize: 8}, train, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := run.TrainEpoch(context.Background(), 1, nil); err != nil {
		t.Fatal(err)
	}
	blob, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := store.PutBytes(context.Background(), key, blob); err != nil {
		t.Fatal(err)
	}
	return s
}

func openStore(t testing.TB) *artifacts.Store {
	t.Helper()
	store, err := artifacts.Open(context.Background(), "file://"+t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return store
}

func TestModels(t *testing.T) {
	ctx := context.Background()
	store := openStore(t)
	states := map[string]*trainer.State{}
	for i := range 5 {
		key := fmt.Sprintf("models/org/job%d/m.model", i)
		states[key] = trainModel(t, store, key, 4, uint64(i))
	}
	one, err := New(store, 0).Get(ctx, "models/org/job0/m.model")
	if err != nil {
		t.Fatal(err)
	}
	// Room for two and a half models: never more than two stay.
	budget := one.Bytes() * 5 / 2
	m := New(store, budget)
	for range 2 {
		for key, s := range states {
			model, err := m.Get(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			for _, text := range []string{"topic1 order", "topic3 crash late", "nothing known"} {
				if got, want := model.Predict(text), s.Predict(text); got != want {
					t.Errorf("%s: Predict(%q) = %+v, want the trained state's %+v", key, text, got, want)
				}
			}
			if n, bytes := m.Cached(); n > 2 || bytes > budget {
				t.Fatalf("cache holds %d models, %d bytes; budget %d bytes", n, bytes, budget)
			}
		}
	}
	if _, err := m.Get(ctx, "models/org/nojob/m.model"); !errors.Is(err, artifacts.ErrNotExist) {
		t.Errorf("missing model: %v, want artifacts.ErrNotExist", err)
	}
	if err := store.PutBytes(ctx, "models/org/bad/m.model", []byte("not a model")); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get(ctx, "models/org/bad/m.model"); err == nil {
		t.Error("a corrupt model loaded")
	}
}

// BenchmarkServe200Models loads 200 deployed builtin models (2 to 16
// labels each) through a Models of the default budget and asks each one a
// question, twice over, per iteration. It reports the peak heap (peak-heap-B
// with garbage, peak-live-B what collections found live) and what the cache
// holds at the end (cached-B, cached-models). The checkpoint-states
// sub-benchmark measures the same models served as they were before
// Models: full training states decoded from the checkpoint, 64 kept.
func BenchmarkServe200Models(b *testing.B) {
	ctx := context.Background()
	store := openStore(b)
	keys := make([]string, 200)
	for i := range keys {
		keys[i] = fmt.Sprintf("models/org/job%03d/m.model", i)
		trainModel(b, store, keys[i], 2+i%15, uint64(i))
	}
	b.Run("models", func(b *testing.B) {
		var peak peakheap.Peak
		var n int
		var cached int64
		for b.Loop() {
			m := New(store, 0)
			w := peakheap.Start()
			for range 2 {
				for _, key := range keys {
					model, err := m.Get(ctx, key)
					if err != nil {
						b.Fatal(err)
					}
					model.Predict("topic1 order late")
				}
			}
			p := w.Stop()
			peak.Heap, peak.Live = max(peak.Heap, p.Heap), max(peak.Live, p.Live)
			n, cached = m.Cached()
		}
		b.ReportMetric(float64(peak.Heap), "peak-heap-B")
		b.ReportMetric(float64(peak.Live), "peak-live-B")
		b.ReportMetric(float64(cached), "cached-B")
		b.ReportMetric(float64(n), "cached-models")
	})
	b.Run("checkpoint-states", func(b *testing.B) {
		var peak peakheap.Peak
		for b.Loop() {
			var kept [64]*trainer.State
			w := peakheap.Start()
			for i, key := range keys {
				blob, err := store.Get(ctx, key)
				if err != nil {
					b.Fatal(err)
				}
				var s trainer.State
				if err := s.UnmarshalBinary(blob); err != nil {
					b.Fatal(err)
				}
				s.Predict("topic1 order late")
				kept[i%len(kept)] = &s
			}
			p := w.Stop()
			peak.Heap, peak.Live = max(peak.Heap, p.Heap), max(peak.Live, p.Live)
			runtime.KeepAlive(kept)
		}
		b.ReportMetric(float64(peak.Heap), "peak-heap-B")
		b.ReportMetric(float64(peak.Live), "peak-live-B")
	})
}
