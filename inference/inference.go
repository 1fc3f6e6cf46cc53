// Package inference talks to the inference backend that serves the LoRA
// adapters the command trainer produces: any OpenAI-compatible server with
// vLLM's dynamic LoRA API (POST /v1/load_lora_adapter and
// /v1/unload_lora_adapter). tuneforge keeps authentication and
// organization isolation in front of it; the backend only ever sees adapter
// names, never users.
package inference

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// Bounds on what is read back from the backend.
const (
	// maxErrorBody is how much of a failed answer is read for its message.
	maxErrorBody = 64 << 10
	// maxMessage is how long a backend's message may be once trimmed.
	maxMessage = 512
)

// MaxLoRARank is the largest LoRA rank the backends load: vLLM's
// --max-lora-rank, as the launcher and docker-compose.yml start it. The API
// trains no adapter of a higher rank, so that every job can be deployed.
const MaxLoRARank = 64

// AdapterName is the name job jobID's adapter is served under. Job IDs are
// unique across organizations, so two organizations can never collide, and
// a model name deployed again by another job gets a fresh adapter.
func AdapterName(jobID string) string { return "tuneforge-" + jobID }

// AdapterPath is where job jobID's adapter is materialized under dir (the
// directory shared with the backend, TUNEFORGE_ADAPTER_DIR).
func AdapterPath(dir, jobID string) string { return filepath.Join(dir, jobID) }

// Client calls one inference backend. Calls are bounded by their contexts.
type Client struct {
	// BaseURL is the backend's root URL, without the /v1 path.
	BaseURL string
	// HTTP sends the requests; nil means http.DefaultClient. It should set
	// no overall Timeout, since streamed answers last as long as generation.
	HTTP *http.Client
}

// New returns a client of the backend at baseURL (TUNEFORGE_INFERENCE_URL),
// or nil when baseURL is empty: no backend is configured. A trailing /v1,
// which OpenAI clients conventionally include, is dropped.
func New(baseURL string) *Client {
	baseURL = strings.TrimSuffix(strings.TrimRight(baseURL, "/"), "/v1")
	if baseURL == "" {
		return nil
	}
	return &Client{BaseURL: baseURL}
}

// Error is a failed call to the backend.
type Error struct {
	// Op is what was asked, such as "load adapter tuneforge-ftjob_…".
	Op string
	// Status is the backend's HTTP status; 0 when no answer came.
	Status int
	// Message is the backend's own explanation, trimmed and bounded.
	Message string
	// Err is why no answer came, when Status is 0.
	Err error
}

func (e *Error) Error() string {
	if e.Status == 0 {
		return fmt.Sprintf("inference backend unreachable: %s: %v", e.Op, e.Err)
	}
	return fmt.Sprintf("inference backend answered %s with %d: %s", e.Op, e.Status, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// IsUnavailable reports whether err says the backend could not do what was
// asked through no fault of the request: it was unreachable, timed out or
// failed (5xx, or any other answer that is not a refusal). Trying again
// later may succeed.
func IsUnavailable(err error) bool {
	var e *Error
	return errors.As(err, &e) && !IsRefused(err)
}

// IsRefused reports whether err is the backend refusing the request (4xx);
// the *Error holds its status and message.
func IsRefused(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status >= 400 && e.Status < 500
}

// LoadAdapter has the backend load the adapter in directory path (which it
// must be able to read) and serve it as model name.
func (c *Client) LoadAdapter(ctx context.Context, name, path string) error {
	return c.call(ctx, "load adapter "+name, "/v1/load_lora_adapter", map[string]string{"lora_name": name, "lora_path": path})
}

// UnloadAdapter has the backend stop serving adapter name. An adapter the
// backend does not hold is not an error, so unloading is idempotent.
func (c *Client) UnloadAdapter(ctx context.Context, name string) error {
	err := c.call(ctx, "unload adapter "+name, "/v1/unload_lora_adapter", map[string]string{"lora_name": name})
	var e *Error
	// vLLM answers 404 for an unknown adapter; older versions answered 400.
	if errors.As(err, &e) && (e.Status == http.StatusNotFound ||
		e.Status == http.StatusBadRequest && strings.Contains(strings.ToLower(e.Message), "not be found")) {
		return nil
	}
	return err
}

func (c *Client) call(ctx context.Context, op, path string, body any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	resp, err := c.post(ctx, op, path, b)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
	resp.Body.Close()
	return nil
}

// ChatCompletions forwards body, an OpenAI chat completion request, to the
// backend. On success the caller reads and closes the response: JSON, or
// server-sent events when the request asked for a stream. Any other answer
// is an *Error.
func (c *Client) ChatCompletions(ctx context.Context, body []byte) (*http.Response, error) {
	return c.post(ctx, "chat completion", "/v1/chat/completions", body)
}

func (c *Client) post(ctx context.Context, op, path string, body []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.BaseURL+path, bytes.NewReader(body))
	if err != nil {
		return nil, &Error{Op: op, Err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, &Error{Op: op, Err: err}
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	return nil, &Error{Op: op, Status: resp.StatusCode, Message: errorMessage(resp.StatusCode, b)}
}

// errorMessage extracts the explanation from a failed answer: OpenAI's
// {"error":{"message":…}}, older vLLM's {"message":…}, FastAPI's
// {"detail":…}, or the text itself.
func errorMessage(status int, body []byte) string {
	var v struct {
		Error   json.RawMessage `json:"error"`
		Message string          `json:"message"`
		Detail  json.RawMessage `json:"detail"`
	}
	msg := string(body)
	if json.Unmarshal(body, &v) == nil {
		var nested struct {
			Message string `json:"message"`
		}
		var detail string
		switch {
		case json.Unmarshal(v.Error, &nested) == nil && nested.Message != "":
			msg = nested.Message
		case v.Message != "":
			msg = v.Message
		case json.Unmarshal(v.Detail, &detail) == nil && detail != "":
			msg = detail
		case len(v.Detail) > 0:
			msg = string(v.Detail)
		}
	}
	msg = strings.Join(strings.Fields(msg), " ")
	if msg == "" {
		return http.StatusText(status)
	}
	return truncate(msg, maxMessage)
}

// truncate cuts s to at most n bytes on a character boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
