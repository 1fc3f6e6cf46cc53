package inference

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingStarter starts "backends" that are only values, counting starts.
type countingStarter struct {
	starts atomic.Int32
}

func (s *countingStarter) Can(model string) bool { return model == "llama-3.1-8b" }

func (s *countingStarter) Start(ctx context.Context, model string) (*Backend, error) {
	s.starts.Add(1)
	time.Sleep(20 * time.Millisecond) // a start takes a while: others arrive meanwhile
	return &Backend{Client: New("http://127.0.0.1:1"), AdapterDir: "/adapters"}, nil
}

func TestBackendsStartAModelOnceForConcurrentRequests(t *testing.T) {
	starter := &countingStarter{}
	b := NewBackends(nil, nil, starter)
	var wg sync.WaitGroup
	got := make([]*Backend, 16)
	for i := range got {
		wg.Go(func() {
			be, err := b.For(context.Background(), "llama-3.1-8b")
			if err != nil {
				t.Error(err)
			}
			got[i] = be
		})
	}
	wg.Wait()
	if n := starter.starts.Load(); n != 1 {
		t.Fatalf("%d starts for 16 concurrent requests, want 1", n)
	}
	for _, be := range got {
		if be != got[0] {
			t.Fatal("concurrent requests got different backends")
		}
	}
	// A forgotten backend is started again, once.
	if !b.Forget("llama-3.1-8b", got[0]) || b.Forget("llama-3.1-8b", got[0]) {
		t.Fatal("Forget: want true for the started backend, then false")
	}
	if _, err := b.For(context.Background(), "llama-3.1-8b"); err != nil || starter.starts.Load() != 2 {
		t.Fatalf("after Forget: %v, %d starts", err, starter.starts.Load())
	}
}

func TestBackendsRoute(t *testing.T) {
	configured, err := ParseBackends("llama-3.1-8b=http://vllm-llama:8000, mistral-7b-v0.3=https://vllm-mistral:8000/v1;/adapters/mistral", "/adapters")
	if err != nil {
		t.Fatal(err)
	}
	b := NewBackends(configured, nil, &countingStarter{})
	llama, _ := b.For(context.Background(), "llama-3.1-8b")
	mistral, _ := b.For(context.Background(), "mistral-7b-v0.3")
	if llama.Client.BaseURL != "http://vllm-llama:8000" || llama.AdapterDir != "/adapters" ||
		mistral.Client.BaseURL != "https://vllm-mistral:8000" || mistral.AdapterDir != "/adapters/mistral" {
		t.Errorf("routes: %+v %+v", llama, mistral)
	}
	if _, err := b.For(context.Background(), "llama-3.1-70b"); !errors.Is(err, ErrNoBackend) {
		t.Errorf("a model nothing serves: %v", err)
	}
	if b.Serves("llama-3.1-70b") || !b.Serves("mistral-7b-v0.3") {
		t.Error("Serves disagrees with For")
	}
	var none *Backends
	if none.Serves("llama-3.1-8b") || none.Running("llama-3.1-8b") != nil {
		t.Error("a nil Backends serves nothing")
	}
	for _, bad := range []string{"llama-3.1-8b", "=http://x", "m=ftp://x", "m=http://a,m=http://b"} {
		if _, err := ParseBackends(bad, ""); err == nil {
			t.Errorf("ParseBackends(%q) accepted", bad)
		}
	}
}
