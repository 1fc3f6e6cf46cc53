package server_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// get fetches a page without credentials, as a browser would.
func get(t *testing.T, path string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(env.API.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// The document itself; that it describes every route, and every request
// and response the tests make, is checked by the test environment.
func TestOpenAPIDocumentAndReference(t *testing.T) {
	resp, body := get(t, "/openapi.json")
	var doc struct {
		OpenAPI string                    `json:"openapi"`
		Paths   map[string]map[string]any `json:"paths"`
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("/openapi.json: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.1") || doc.Paths["/v1/fine_tuning/jobs"]["post"] == nil || doc.Paths["/api/v1/fine-tuning/jobs/{id}/stop"]["post"] == nil {
		t.Errorf("document %s with paths %d", doc.OpenAPI, len(doc.Paths))
	}

	resp, page := get(t, "/docs")
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("/docs: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	for _, want := range []string{"<code>/v1/fine_tuning/jobs/{id}/cancel</code>", "<code>/api/v1/fine-tuning/datasets</code>", `href="/openapi.json"`, `<h3 id="Job">`} {
		if !strings.Contains(page, want) {
			t.Errorf("the reference page lacks %s", want)
		}
	}
}

func TestConsoleIsServed(t *testing.T) {
	resp, page := get(t, "/")
	if resp.StatusCode != 200 || !strings.Contains(page, `src="/console/app.js"`) {
		t.Fatalf("/: %d %.200s", resp.StatusCode, page)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
		t.Errorf("the console's page has CSP %q", csp)
	}
	for path, ctype := range map[string]string{"/console/app.js": "text/javascript", "/console/app.css": "text/css"} {
		if resp, _ := get(t, path); resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), ctype) {
			t.Errorf("%s: %d %s", path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
	}
	if resp, _ := get(t, "/console/nope.js"); resp.StatusCode != 404 {
		t.Errorf("a missing asset: %d", resp.StatusCode)
	}
}
