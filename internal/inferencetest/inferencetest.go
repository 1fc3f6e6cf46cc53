// Package inferencetest is an inference backend for tests: an
// OpenAI-compatible HTTP server with vLLM's dynamic LoRA API that records
// what it is asked. It answers a chat completion by echoing the last
// message, as JSON or streamed as server-sent events. Faults are set per
// adapter, so tests running in parallel do not disturb each other.
package inferencetest

import (
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// Call is one request the backend received.
type Call struct {
	// Path is the request's path, such as /v1/load_lora_adapter.
	Path string
	// Name is the adapter it names: lora_name, or model for a completion.
	Name string
	// Body is the decoded request body.
	Body map[string]any
	// Files lists the files under lora_path when an adapter was loaded,
	// relative to it and sorted.
	Files []string
}

// Server is a running backend.
type Server struct {
	*httptest.Server

	mu     sync.Mutex
	calls  []Call
	loaded map[string]string // adapter name → path
	refuse map[string]string // adapter name → why its load is refused
	reject map[string]string // adapter name → why its completions are refused
	down   map[string]bool
	held   map[string]chan struct{} // adapter name → released when streams may go on
}

// New starts a backend; Close it when done.
func New() *Server {
	s := &Server{loaded: map[string]string{}, refuse: map[string]string{}, reject: map[string]string{}, down: map[string]bool{}, held: map[string]chan struct{}{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/load_lora_adapter", s.load)
	mux.HandleFunc("POST /v1/unload_lora_adapter", s.unload)
	mux.HandleFunc("POST /v1/chat/completions", s.complete)
	s.Server = httptest.NewServer(mux)
	return s
}

// Calls returns the requests that named adapter, oldest first.
func (s *Server) Calls(adapter string) []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Call
	for _, c := range s.calls {
		if c.Name == adapter {
			out = append(out, c)
		}
	}
	return out
}

// Loaded reports whether adapter is loaded, and from which path.
func (s *Server) Loaded(adapter string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.loaded[adapter]
	return p, ok
}

// Refuse makes loads of adapter fail with 400 and message; "" lifts it.
func (s *Server) Refuse(adapter, message string) { s.set(func() { s.refuse[adapter] = message }) }

// RefuseCompletions makes chat completions of adapter fail with 400 and
// message, as vLLM refuses a request it finds invalid; "" lifts it.
func (s *Server) RefuseCompletions(adapter, message string) {
	s.set(func() { s.reject[adapter] = message })
}

// SetDown makes every request about adapter find no backend: the
// connection is closed without an answer.
func (s *Server) SetDown(adapter string, down bool) { s.set(func() { s.down[adapter] = down }) }

// Hold makes streamed answers of adapter stop after their first chunk
// until release is called, so a test can see chunks arrive one by one.
func (s *Server) Hold(adapter string) (release func()) {
	ch := make(chan struct{})
	s.set(func() { s.held[adapter] = ch })
	var once sync.Once
	return func() {
		once.Do(func() {
			s.set(func() { delete(s.held, adapter) })
			close(ch)
		})
	}
}

// Forget drops adapter as a restart of the backend would.
func (s *Server) Forget(adapter string) { s.set(func() { delete(s.loaded, adapter) }) }

func (s *Server) set(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f()
}

// begin decodes and records a request; it returns false when the request
// has been answered already (a bad body, or an adapter that is down).
func (s *Server) begin(w http.ResponseWriter, r *http.Request, nameField string) (Call, bool) {
	c := Call{Path: r.URL.Path}
	if err := json.NewDecoder(r.Body).Decode(&c.Body); err != nil {
		fail(w, http.StatusBadRequest, "invalid JSON: "+err.Error())
		return c, false
	}
	c.Name, _ = c.Body[nameField].(string)
	if p, _ := c.Body["lora_path"].(string); p != "" && r.URL.Path == "/v1/load_lora_adapter" {
		_ = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				rel, _ := filepath.Rel(p, path)
				c.Files = append(c.Files, filepath.ToSlash(rel))
			}
			return nil
		})
		slices.Sort(c.Files)
	}
	s.mu.Lock()
	s.calls = append(s.calls, c)
	down := s.down[c.Name]
	s.mu.Unlock()
	if down {
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			conn.Close()
		}
		return c, false
	}
	return c, true
}

func (s *Server) load(w http.ResponseWriter, r *http.Request) {
	c, ok := s.begin(w, r, "lora_name")
	if !ok {
		return
	}
	path, _ := c.Body["lora_path"].(string)
	if c.Name == "" || path == "" {
		fail(w, http.StatusBadRequest, "Both 'lora_name' and 'lora_path' must be provided.")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.loaded[c.Name]; ok {
		fail(w, http.StatusBadRequest, fmt.Sprintf("The lora adapter '%s' has already been loaded.", c.Name))
		return
	}
	if msg := s.refuse[c.Name]; msg != "" {
		fail(w, http.StatusBadRequest, msg)
		return
	}
	if _, err := os.Stat(filepath.Join(path, "adapter_config.json")); err != nil {
		fail(w, http.StatusNotFound, fmt.Sprintf("Loading lora %s failed: No adapter found for %s", c.Name, path))
		return
	}
	s.loaded[c.Name] = path
	fmt.Fprintf(w, "Success: LoRA adapter '%s' added successfully.", c.Name)
}

func (s *Server) unload(w http.ResponseWriter, r *http.Request) {
	c, ok := s.begin(w, r, "lora_name")
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.loaded[c.Name]; !ok {
		fail(w, http.StatusNotFound, fmt.Sprintf("The lora adapter '%s' cannot be found.", c.Name))
		return
	}
	delete(s.loaded, c.Name)
	fmt.Fprintf(w, "Success: LoRA adapter '%s' removed successfully.", c.Name)
}

// Reply is the answer to a conversation: its last message, echoed.
func Reply(messages []any) string {
	if len(messages) == 0 {
		return "echo:"
	}
	m, _ := messages[len(messages)-1].(map[string]any)
	content, _ := m["content"].(string)
	return "echo: " + content
}

func (s *Server) complete(w http.ResponseWriter, r *http.Request) {
	c, ok := s.begin(w, r, "model")
	if !ok {
		return
	}
	if _, ok := s.Loaded(c.Name); !ok {
		fail(w, http.StatusNotFound, fmt.Sprintf("The model `%s` does not exist.", c.Name))
		return
	}
	if n, ok := c.Body["max_tokens"].(float64); ok && n < 1 {
		fail(w, http.StatusBadRequest, fmt.Sprintf("max_tokens must be at least 1, got %g.", n))
		return
	}
	s.mu.Lock()
	reject := s.reject[c.Name]
	s.mu.Unlock()
	if reject != "" {
		fail(w, http.StatusBadRequest, reject)
		return
	}
	messages, _ := c.Body["messages"].([]any)
	reply := Reply(messages)
	if stream, _ := c.Body["stream"].(bool); !stream {
		w.Header().Set("Content-Type", "application/json")
		writeJSON(w, map[string]any{
			"id": "chatcmpl-test", "object": "chat.completion", "created": 1, "model": c.Name,
			"choices": []any{map[string]any{"index": 0, "message": map[string]any{"role": "assistant", "content": reply}, "finish_reason": "stop"}},
			"usage":   map[string]any{"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
		})
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	chunk := func(delta map[string]any, finish any) {
		io.WriteString(w, "data: ")
		writeJSON(w, map[string]any{
			"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1, "model": c.Name,
			"choices": []any{map[string]any{"index": 0, "delta": delta, "finish_reason": finish}},
		})
		io.WriteString(w, "\n")
		http.NewResponseController(w).Flush()
	}
	chunk(map[string]any{"role": "assistant", "content": ""}, nil)
	s.mu.Lock()
	held := s.held[c.Name]
	s.mu.Unlock()
	if held != nil {
		select {
		case <-held:
		case <-r.Context().Done():
			return
		}
	}
	for _, word := range strings.SplitAfter(reply, " ") {
		chunk(map[string]any{"content": word}, nil)
	}
	chunk(map[string]any{}, "stop")
	fmt.Fprint(w, "data: [DONE]\n\n")
}

// writeJSON writes v and a newline without escaping HTML, as Python does.
func writeJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// fail answers as vLLM does.
func fail(w http.ResponseWriter, status int, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	writeJSON(w, map[string]any{"error": map[string]any{"message": message, "type": http.StatusText(status), "code": status}})
}
