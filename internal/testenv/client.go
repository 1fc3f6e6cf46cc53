package testenv

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// HTTP is the tests' client. Its timeout turns a request that never
// ends into a failure naming it, rather than a package that hangs until
// go test's -timeout.
var HTTP = &http.Client{Timeout: 2 * time.Minute}

// Client calls a running tuneforge API with one key.
type Client struct {
	BaseURL string
	Key     string
}

// Response is a decoded API response.
type Response struct {
	Status int
	Body   map[string]any
	Raw    []byte
}

// Do sends a request; body may be nil, a string, []byte or a value to
// encode as JSON.
func (c *Client) Do(t testing.TB, method, path string, body any) Response {
	t.Helper()
	return c.Send(t, method, path, body, nil)
}

// Send is Do with extra headers.
func (c *Client) Send(t testing.TB, method, path string, body any, header http.Header) Response {
	t.Helper()
	var r io.Reader
	// Bodies are sent with the content type a real client would give
	// them: strings and values as JSON, raw bytes as a JSONL file.
	contentType := "application/json"
	switch b := body.(type) {
	case nil:
		contentType = ""
	case string:
		r = strings.NewReader(b)
	case []byte:
		r = bytes.NewReader(b)
		contentType = "application/x-ndjson"
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		r = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, c.BaseURL+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if c.Key != "" {
		req.Header.Set("X-API-Key", c.Key)
	}
	resp, err := HTTP.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	out := Response{Status: resp.StatusCode, Raw: raw}
	if len(raw) > 0 {
		_ = json.Unmarshal(raw, &out.Body)
	}
	return out
}

// Upload stores a dataset and returns its ID.
func (c *Client) Upload(t testing.TB, name string, jsonl []byte) string {
	t.Helper()
	res := c.Do(t, http.MethodPost, "/api/v1/fine-tuning/datasets?filename="+name, jsonl)
	if res.Status != http.StatusCreated {
		t.Fatalf("upload %s: %d %s", name, res.Status, res.Raw)
	}
	return res.Body["id"].(string)
}

// WaitStatus polls a job until it has one of statuses, and returns it.
func (c *Client) WaitStatus(t testing.TB, jobID string, timeout time.Duration, statuses ...string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		res := c.Do(t, http.MethodGet, "/api/v1/fine-tuning/jobs/"+jobID, nil)
		if res.Status != http.StatusOK {
			t.Fatalf("get %s: %d %s", jobID, res.Status, res.Raw)
		}
		for _, s := range statuses {
			if res.Body["status"] == s {
				return res.Body
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s is %v after %s, want one of %v (error: %v)", jobID, res.Body["status"], timeout, statuses, res.Body["error"])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitCompleted polls a job until it has ended, and fails the test with
// its error and log unless it completed.
func (c *Client) WaitCompleted(t testing.TB, jobID string, timeout time.Duration) map[string]any {
	t.Helper()
	job := c.WaitStatus(t, jobID, timeout, "completed", "failed")
	if job["status"] != "completed" {
		t.Fatalf("job %s %s: %v\n%s", jobID, job["status"], job["error"], c.Logs(t, jobID))
	}
	return job
}

// MetricSteps returns the steps of a job's recorded metric points.
func (c *Client) MetricSteps(t testing.TB, jobID string) []int {
	t.Helper()
	res := c.Do(t, http.MethodGet, "/api/v1/fine-tuning/jobs/"+jobID+"/metrics", nil)
	if res.Status != http.StatusOK {
		t.Fatalf("metrics of %s: %d %s", jobID, res.Status, res.Raw)
	}
	var out []int
	for _, s := range res.Body["metrics"].(map[string]any)["steps"].([]any) {
		out = append(out, int(s.(map[string]any)["step"].(float64)))
	}
	return out
}

// WaitMetricPoints waits until a job has recorded at least n metric points.
func (c *Client) WaitMetricPoints(t testing.TB, jobID string, n int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for len(c.MetricSteps(t, jobID)) < n {
		if time.Now().After(deadline) {
			t.Fatalf("job %s recorded fewer than %d metric points", jobID, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Logs returns a job's log (up to 1000 lines) as raw JSON.
func (c *Client) Logs(t testing.TB, jobID string) string {
	t.Helper()
	return string(c.Do(t, http.MethodGet, "/api/v1/fine-tuning/jobs/"+jobID+"/logs?lines=1000", nil).Raw)
}

// EventTypes returns the types of a job's events, oldest first, and the
// events themselves.
func (c *Client) EventTypes(t testing.TB, jobID string) ([]string, []map[string]any) {
	t.Helper()
	r := c.Do(t, http.MethodGet, "/api/v1/fine-tuning/jobs/"+jobID+"/events?limit=1000", nil)
	if r.Status != http.StatusOK {
		t.Fatalf("events of %s: %d %s", jobID, r.Status, r.Raw)
	}
	var types []string
	var events []map[string]any
	for _, e := range r.Body["events"].([]any) {
		ev := e.(map[string]any)
		types = append(types, ev["type"].(string))
		events = append(events, ev)
	}
	return types, events
}

// Expect fails the test unless r has status and its body mentions each of contains.
func (r Response) Expect(t testing.TB, status int, contains ...string) {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d, want %d: %s", r.Status, status, r.Raw)
	}
	for _, c := range contains {
		if !strings.Contains(string(r.Raw), c) {
			t.Fatalf("response %s does not mention %q", r.Raw, c)
		}
	}
}

// CheckIncreasing fails the test unless steps, a job's metric points, have
// no duplicate and end at last.
func CheckIncreasing(t testing.TB, steps []int, last int) {
	t.Helper()
	if len(steps) == 0 || steps[len(steps)-1] != last {
		t.Fatalf("metric steps %v; want them to end at step %d", steps, last)
	}
	for i := 1; i < len(steps); i++ {
		if steps[i] <= steps[i-1] {
			t.Fatalf("metric steps are not strictly increasing at %d: %v", i, steps)
		}
	}
}

// CheckSteps fails the test unless steps are a job's metric points for
// epochs whole epochs of stepsPerEpoch steps, each once and in order: the
// builtin trainer records 25 a epoch.
func CheckSteps(t testing.TB, steps []int, epochs, stepsPerEpoch int) {
	t.Helper()
	every := stepsPerEpoch / 25
	if len(steps) != epochs*25 {
		t.Fatalf("%d metric points, want %d", len(steps), epochs*25)
	}
	for i, s := range steps {
		if s != (i+1)*every {
			t.Fatalf("metric point %d is step %d, want %d", i, s, (i+1)*every)
		}
	}
}
