package inference

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
)

// A vLLM server serves one base model, so tuneforge keeps one backend per
// base model and routes each adapter to the backend of the model it was
// trained on.

// Backend is the inference server of one base model.
type Backend struct {
	Client *Client
	// AdapterDir is where adapters are materialized for this backend to read.
	AdapterDir string
}

// Starter starts a backend for a base model on first use: `tuneforge dev`
// runs vLLM's CPU build itself. Can says, without starting anything,
// whether it could.
type Starter interface {
	Can(baseModel string) bool
	Start(ctx context.Context, baseModel string) (*Backend, error)
}

// ErrNoBackend is the error of a base model that no backend serves.
var ErrNoBackend = errors.New("no inference backend serves this base model")

// Backends routes base models to their backends: the configured ones
// (TUNEFORGE_INFERENCE_BACKENDS), then one that serves every other model
// (TUNEFORGE_INFERENCE_URL), then the Starter's. A nil *Backends has none.
type Backends struct {
	configured map[string]*Backend
	fallback   *Backend
	starter    Starter

	mu       sync.Mutex
	started  map[string]*Backend
	starting map[string]*sync.Mutex // one start of a model at a time
}

// NewBackends returns the routes of configured (base model to backend),
// fallback (nil: none) and starter (nil: none).
func NewBackends(configured map[string]*Backend, fallback *Backend, starter Starter) *Backends {
	return &Backends{configured: configured, fallback: fallback, starter: starter,
		started: map[string]*Backend{}, starting: map[string]*sync.Mutex{}}
}

// Fallback is the backend at url for every base model (TUNEFORGE_INFERENCE_URL),
// reading adapters from adapterDir; nil when url is empty.
func Fallback(url, adapterDir string) *Backend {
	if url == "" {
		return nil
	}
	return &Backend{Client: New(url), AdapterDir: adapterDir}
}

// fixed is the backend the configuration names for baseModel: its own,
// else the fallback; nil when neither does.
func (b *Backends) fixed(baseModel string) *Backend {
	if be := b.configured[baseModel]; be != nil {
		return be
	}
	return b.fallback
}

// Serves reports whether a backend serves baseModel or can be started for it.
func (b *Backends) Serves(baseModel string) bool {
	if b == nil {
		return false
	}
	return b.fixed(baseModel) != nil || b.starter != nil && b.starter.Can(baseModel)
}

// For returns the backend of baseModel, starting it if that is how it is
// served; an error wrapping ErrNoBackend, naming the setting to add, when
// nothing serves it.
func (b *Backends) For(ctx context.Context, baseModel string) (*Backend, error) {
	if b == nil {
		return nil, noBackend(baseModel)
	}
	if be := b.fixed(baseModel); be != nil {
		return be, nil
	}
	if b.starter == nil || !b.starter.Can(baseModel) {
		return nil, noBackend(baseModel)
	}
	b.mu.Lock()
	be, once := b.started[baseModel], b.starting[baseModel]
	if once == nil {
		once = &sync.Mutex{}
		b.starting[baseModel] = once
	}
	b.mu.Unlock()
	if be != nil {
		return be, nil
	}
	// Requests that find the model unstarted wait for one start, then all
	// use what it started.
	once.Lock()
	defer once.Unlock()
	b.mu.Lock()
	be = b.started[baseModel]
	b.mu.Unlock()
	if be != nil {
		return be, nil
	}
	be, err := b.starter.Start(ctx, baseModel)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.started[baseModel] = be
	b.mu.Unlock()
	return be, nil
}

// Running returns the backend of baseModel if one is configured or already
// started, without starting one; nil otherwise.
func (b *Backends) Running(baseModel string) *Backend {
	if b == nil {
		return nil
	}
	if be := b.fixed(baseModel); be != nil {
		return be
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.started[baseModel]
}

// Forget drops a started backend that stopped answering, so that the next
// For starts it again; false when be is not one this process started.
func (b *Backends) Forget(baseModel string, be *Backend) bool {
	if b == nil {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started[baseModel] != be {
		return false
	}
	delete(b.started, baseModel)
	return true
}

// AdapterDirs lists every directory adapters may be materialized in.
func (b *Backends) AdapterDirs(baseModel string) []string {
	if b == nil {
		return nil
	}
	seen := map[string]bool{}
	var dirs []string
	add := func(be *Backend) {
		if be != nil && be.AdapterDir != "" && !seen[be.AdapterDir] {
			seen[be.AdapterDir] = true
			dirs = append(dirs, be.AdapterDir)
		}
	}
	add(b.configured[baseModel])
	add(b.fallback)
	b.mu.Lock()
	add(b.started[baseModel])
	b.mu.Unlock()
	return dirs
}

func noBackend(baseModel string) error {
	return fmt.Errorf("%w: no inference backend serves %s; add %s=URL, the URL of a vLLM server of that model, to TUNEFORGE_INFERENCE_BACKENDS",
		ErrNoBackend, baseModel, baseModel)
}

// ParseBackends reads TUNEFORGE_INFERENCE_BACKENDS: comma-separated
// MODEL=URL entries, each optionally followed by ;ADAPTER_DIR (default
// adapterDir), such as
// "llama-3.1-8b=http://vllm-llama:8000,mistral-7b-v0.3=http://vllm-mistral:8000;/adapters/mistral".
func ParseBackends(spec, adapterDir string) (map[string]*Backend, error) {
	out := map[string]*Backend{}
	for _, entry := range strings.Split(spec, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		model, rest, ok := strings.Cut(entry, "=")
		model = strings.TrimSpace(model)
		if !ok || model == "" {
			return nil, fmt.Errorf("%q: each entry is MODEL=URL, such as llama-3.1-8b=http://vllm:8000", entry)
		}
		url, dir, _ := strings.Cut(rest, ";")
		url, dir = strings.TrimSpace(url), strings.TrimSpace(dir)
		if !strings.HasPrefix(url, "http://") && !strings.HasPrefix(url, "https://") {
			return nil, fmt.Errorf("%q: the URL of %s must start with http:// or https://", entry, model)
		}
		if out[model] != nil {
			return nil, fmt.Errorf("%s is named twice", model)
		}
		if dir == "" {
			dir = adapterDir
		}
		out[model] = &Backend{Client: New(url), AdapterDir: dir}
	}
	return out, nil
}
