package inference_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/inference"
	"github.com/tuneforge/tuneforge/internal/inferencetest"
)

func adapterDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "adapter_config.json"), []byte(`{"r":8}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestNew(t *testing.T) {
	if c := inference.New(""); c != nil {
		t.Errorf("New(\"\") = %+v, want nil", c)
	}
	for _, u := range []string{"http://vllm:8000", "http://vllm:8000/", "http://vllm:8000/v1", "http://vllm:8000/v1/"} {
		if c := inference.New(u); c == nil || c.BaseURL != "http://vllm:8000" {
			t.Errorf("New(%q) = %+v", u, c)
		}
	}
}

func TestLoadUnload(t *testing.T) {
	b := inferencetest.New()
	defer b.Close()
	c := inference.New(b.URL)
	ctx := context.Background()
	name, dir := inference.AdapterName("ftjob_1"), adapterDir(t)
	if name != "tuneforge-ftjob_1" {
		t.Errorf("AdapterName = %s", name)
	}
	if err := c.LoadAdapter(ctx, name, dir); err != nil {
		t.Fatal(err)
	}
	if p, ok := b.Loaded(name); !ok || p != dir {
		t.Fatalf("loaded %q %v, want %s", p, ok, dir)
	}
	err := c.LoadAdapter(ctx, name, dir)
	var ierr *inference.Error
	if !inference.IsRefused(err) || inference.IsUnavailable(err) || !errors.As(err, &ierr) ||
		ierr.Status != 400 || ierr.Message != "The lora adapter 'tuneforge-ftjob_1' has already been loaded." {
		t.Fatalf("second load: %v", err)
	}
	if err := c.UnloadAdapter(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.Loaded(name); ok {
		t.Fatal("still loaded after unload")
	}
	// Unloading what the backend does not hold is not an error.
	if err := c.UnloadAdapter(ctx, name); err != nil {
		t.Fatalf("second unload: %v", err)
	}
	err = c.LoadAdapter(ctx, name, t.TempDir())
	if !inference.IsRefused(err) || !errors.As(err, &ierr) || ierr.Status != 404 || !strings.Contains(ierr.Message, "No adapter found") {
		t.Fatalf("load of an empty directory: %v", err)
	}
	b.Refuse(name, "rank 512 exceeds --max-lora-rank 64")
	if err := c.LoadAdapter(ctx, name, dir); !errors.As(err, &ierr) || ierr.Message != "rank 512 exceeds --max-lora-rank 64" {
		t.Fatalf("refused load: %v", err)
	}
	var bodies []map[string]any
	for _, call := range b.Calls(name) {
		bodies = append(bodies, call.Body)
	}
	if len(bodies) != 6 || bodies[0]["lora_path"] != dir || bodies[2]["lora_path"] != nil {
		t.Errorf("calls %v", bodies)
	}
}

// An older vLLM answers 400 for an adapter it does not hold.
func TestUnloadOldNotFound(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(400)
		io.WriteString(w, `{"object":"error","message":"The lora adapter 'x' cannot be found.","type":"InvalidUserInput","code":400}`)
	}))
	defer srv.Close()
	if err := inference.New(srv.URL).UnloadAdapter(context.Background(), "x"); err != nil {
		t.Fatal(err)
	}
}

func TestUnavailable(t *testing.T) {
	ctx := context.Background()
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "CUDA out of memory", http.StatusInternalServerError)
	}))
	defer failing.Close()
	release := make(chan struct{})
	hanging := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	defer hanging.Close()
	defer close(release)
	b := inferencetest.New()
	defer b.Close()
	b.SetDown("tuneforge-down", true)

	for _, tc := range []struct {
		name string
		url  string
		msg  string
	}{
		{"refused connection", closed.URL, ""},
		{"5xx", failing.URL, "CUDA out of memory"},
		{"timeout", hanging.URL, ""},
		{"closed connection", b.URL, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			defer cancel()
			err := inference.New(tc.url).LoadAdapter(ctx, "tuneforge-down", adapterDir(t))
			var ierr *inference.Error
			if !inference.IsUnavailable(err) || inference.IsRefused(err) || !errors.As(err, &ierr) || ierr.Message != tc.msg {
				t.Fatalf("got %v", err)
			}
			if !strings.Contains(err.Error(), "load adapter tuneforge-down") {
				t.Errorf("error %q does not say what failed", err)
			}
		})
	}
}

func TestErrorMessages(t *testing.T) {
	long := strings.Repeat("é", 400)
	for _, tc := range []struct {
		status int
		body   string
		want   string
	}{
		{400, `{"error":{"message":"max_tokens must be at least 1","type":"BadRequestError","code":400}}`, "max_tokens must be at least 1"},
		{400, `{"object":"error","message":"The lora adapter 'x' has already been loaded.","code":400}`, "The lora adapter 'x' has already been loaded."},
		{404, `{"detail":"Not Found"}`, "Not Found"},
		{422, `{"detail":[{"loc":["body","lora_path"],"msg":"Field required"}]}`, `[{"loc":["body","lora_path"],"msg":"Field required"}]`},
		{400, "  plain\n\ttext  ", "plain text"},
		{409, "", "Conflict"},
		{400, long, strings.Repeat("é", 256) + "…"},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(tc.status)
			io.WriteString(w, tc.body)
		}))
		err := inference.New(srv.URL).LoadAdapter(context.Background(), "a", "/p")
		srv.Close()
		var ierr *inference.Error
		if !errors.As(err, &ierr) || ierr.Status != tc.status || ierr.Message != tc.want {
			t.Errorf("%d %q: got %#v, want message %q", tc.status, tc.body, ierr, tc.want)
		}
	}
}

func TestChatCompletions(t *testing.T) {
	b := inferencetest.New()
	defer b.Close()
	c := inference.New(b.URL)
	ctx := context.Background()
	name := inference.AdapterName("ftjob_chat")
	if err := c.LoadAdapter(ctx, name, adapterDir(t)); err != nil {
		t.Fatal(err)
	}
	body := `{"model":"` + name + `","messages":[{"role":"user","content":"a <b> & c"}],"temperature":0.2}`
	resp, err := c.ChatCompletions(ctx, []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	out, err := inference.RewriteModel(raw, "support-v1")
	if err != nil {
		t.Fatal(err)
	}
	var answer struct {
		Model   string
		Choices []struct{ Message struct{ Content string } }
		Usage   map[string]int
	}
	if err := json.Unmarshal(out, &answer); err != nil || answer.Model != "support-v1" || answer.Choices[0].Message.Content != "echo: a <b> & c" || answer.Usage["total_tokens"] != 5 {
		t.Fatalf("answer %s (%v)", out, err)
	}
	if !bytes.Contains(out, []byte("a <b> & c")) {
		t.Errorf("the answer's text was escaped: %s", out)
	}
	if got := b.Calls(name)[1].Body; got["temperature"] != 0.2 {
		t.Errorf("the backend got %v", got)
	}

	_, err = c.ChatCompletions(ctx, []byte(`{"model":"`+name+`","messages":[],"max_tokens":-1}`))
	var ierr *inference.Error
	if !inference.IsRefused(err) || !errors.As(err, &ierr) || ierr.Status != 400 || ierr.Message != "max_tokens must be at least 1, got -1." {
		t.Fatalf("bad request: %v", err)
	}
	_, err = c.ChatCompletions(ctx, []byte(`{"model":"tuneforge-nope","messages":[]}`))
	if !errors.As(err, &ierr) || ierr.Status != 404 {
		t.Fatalf("unknown model: %v", err)
	}
}

func TestStream(t *testing.T) {
	b := inferencetest.New()
	defer b.Close()
	c := inference.New(b.URL)
	ctx := context.Background()
	name := inference.AdapterName("ftjob_stream")
	if err := c.LoadAdapter(ctx, name, adapterDir(t)); err != nil {
		t.Fatal(err)
	}
	resp, err := c.ChatCompletions(ctx, []byte(`{"model":"`+name+`","stream":true,"messages":[{"role":"user","content":"one two three"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %s", ct)
	}
	var out bytes.Buffer
	flushes := 0
	if err := inference.CopyStream(&out, func() { flushes++ }, resp.Body, "support-v1"); err != nil {
		t.Fatal(err)
	}
	content, events := "", 0
	var last string
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			events++
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			t.Fatalf("line %q", line)
		}
		last = data
		if data == "[DONE]" {
			continue
		}
		var chunk struct {
			Model   string
			Choices []struct{ Delta struct{ Content string } }
		}
		if err := json.Unmarshal([]byte(data), &chunk); err != nil || chunk.Model != "support-v1" {
			t.Fatalf("chunk %s (%v)", data, err)
		}
		content += chunk.Choices[0].Delta.Content
	}
	if content != "echo: one two three" || last != "[DONE]" || events != 7 || flushes < events {
		t.Errorf("content %q, last %q, %d events, %d flushes:\n%s", content, last, events, flushes, out.String())
	}
}

func TestCopyStreamPassesOtherLinesThrough(t *testing.T) {
	in := ": keep-alive\nevent: message\nid: 7\ndata: {\"model\":\"tuneforge-x\",\"n\":1}\n\ndata: not json {\ndata:{\"object\":\"error\"}\n\ndata: [DONE]\n\n"
	want := ": keep-alive\nevent: message\nid: 7\ndata: {\"model\":\"m\",\"n\":1}\n\ndata: not json {\ndata: {\"object\":\"error\"}\n\ndata: [DONE]\n\n"
	var out bytes.Buffer
	if err := inference.CopyStream(&out, func() {}, strings.NewReader(in), "m"); err != nil {
		t.Fatal(err)
	}
	if out.String() != want {
		t.Errorf("got\n%q\nwant\n%q", out.String(), want)
	}
	long := "data: " + strings.Repeat("x", 2<<20) + "\n\n"
	if err := inference.CopyStream(io.Discard, func() {}, strings.NewReader(long), "m"); err == nil {
		t.Error("a line over the limit was copied")
	}
}

func TestRewriteModel(t *testing.T) {
	out, err := inference.RewriteModel([]byte(`{"id":"x","model":"tuneforge-ftjob_1","choices":[]}`), "m")
	if err != nil || string(out) != `{"choices":[],"id":"x","model":"m"}` {
		t.Errorf("got %s, %v", out, err)
	}
	in := []byte(`{"id":"x"}`)
	if out, err := inference.RewriteModel(in, "m"); err != nil || string(out) != string(in) {
		t.Errorf("without a model: %s, %v", out, err)
	}
	if _, err := inference.RewriteModel([]byte(`[1]`), "m"); err == nil {
		t.Error("an array was rewritten")
	}
}
