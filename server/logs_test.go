package server_test

import (
	"bufio"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/internal/testenv"
)

type sseEvent struct {
	id, event, data string
}

// readEvents reads server-sent events from a followed log until the stream
// ends or n events have come (n <= 0: all).
func readEvents(t *testing.T, key, url, lastEventID string, n int) []sseEvent {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), "GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-API-Key", key)
	if lastEventID != "" {
		req.Header.Set("Last-Event-ID", lastEventID)
	}
	resp, err := testenv.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("follow: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var out []sseEvent
	var e sseEvent
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if e.event != "" {
				out = append(out, e)
				if n > 0 && len(out) == n {
					return out
				}
			}
			e = sseEvent{}
		case strings.HasPrefix(line, "id: "):
			e.id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "event: "):
			e.event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			e.data = strings.TrimPrefix(line, "data: ")
		}
	}
	return out
}

// Following a job's log streams every line once, in order, while the job
// trains, and ends when it has finished; a client that reconnects with
// Last-Event-ID goes on where it left off.
func TestFollowLogs(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	ds := org.Upload(t, "train.jsonl", testenv.Tickets(20000, 51))
	r := org.Do(t, "POST", jobsPath, map[string]any{"name": "follow", "baseModel": "llama-3.1-8b", "trainingDataset": ds, "hyperparameters": map[string]any{"epochs": 2}})
	expect(t, r, 201)
	id := r.Body["id"].(string)
	url := env.API.URL + jobsPath + "/" + id + "/logs?follow=true"

	head := readEvents(t, org.Key, url+"&after=0", "", 3)
	if len(head) != 3 {
		t.Fatalf("the stream gave %d events before the client left", len(head))
	}
	rest := readEvents(t, org.Key, url, head[2].id, 0)
	if len(rest) == 0 || rest[len(rest)-1].event != "end" || !strings.Contains(rest[len(rest)-1].data, `"status":"completed"`) {
		t.Fatalf("the followed log did not end with the job: %v", rest)
	}
	events := append(head, rest[:len(rest)-1]...)
	var messages []string
	last := int64(0)
	for _, e := range events {
		n, err := strconv.ParseInt(e.id, 10, 64)
		if err != nil || e.event != "log" || n <= last {
			t.Fatalf("event %+v after id %d", e, last)
		}
		last = n
		var l struct {
			ID      int64  `json:"id"`
			Message string `json:"message"`
		}
		if err := json.Unmarshal([]byte(e.data), &l); err != nil || l.ID != n {
			t.Fatalf("event data %s", e.data)
		}
		messages = append(messages, l.Message)
	}
	// The same lines as the log read whole.
	all := org.Do(t, "GET", jobsPath+"/"+id+"/logs?after=0&lines=10000", nil)
	expect(t, all, 200)
	lines := all.Body["logs"].([]any)
	if len(lines) != len(messages) {
		t.Fatalf("followed %d lines; the log has %d", len(messages), len(lines))
	}
	for i, l := range lines {
		if l.(map[string]any)["message"] != messages[i] {
			t.Fatalf("line %d: followed %q, logged %q", i, messages[i], l.(map[string]any)["message"])
		}
	}
	if !strings.Contains(strings.Join(messages, "\n"), "Training completed") {
		t.Errorf("the followed log lacks the end of training: %q", messages)
	}

	// Paging with after.
	second := lines[1].(map[string]any)["id"].(float64)
	page := org.Do(t, "GET", jobsPath+"/"+id+"/logs?lines=2&after="+strconv.FormatInt(int64(second), 10), nil)
	expect(t, page, 200)
	if got := page.Body["logs"].([]any); len(got) != 2 || got[0].(map[string]any)["id"] != lines[2].(map[string]any)["id"] {
		t.Errorf("the page after line 2: %s", page.Raw)
	}
	// A finished job's followed log is its tail and the end.
	start := time.Now()
	tail := readEvents(t, org.Key, env.API.URL+jobsPath+"/"+id+"/logs?follow=true&lines=2", "", 0)
	if len(tail) != 3 || tail[2].event != "end" || time.Since(start) > 5*time.Second {
		t.Errorf("a finished job's followed log: %v", tail)
	}

	expect(t, org.Do(t, "GET", jobsPath+"/"+id+"/logs?after=x", nil), 400, "after")
	expect(t, org.Do(t, "GET", jobsPath+"/"+id+"/logs?follow=maybe", nil), 400, "follow")
	expect(t, org.Do(t, "GET", jobsPath+"/"+id+"/logs?after=1&since=2025-01-01T00:00:00Z", nil), 400, "not both")
	expect(t, env.NewOrg(t).Do(t, "GET", jobsPath+"/"+id+"/logs?follow=true", nil), 404)
}
