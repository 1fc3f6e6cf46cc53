package console

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestSecurityHeaders(t *testing.T) {
	for _, path := range []string{"/", "/app.js", "/missing"} {
		rec := httptest.NewRecorder()
		Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		csp := rec.Header().Get("Content-Security-Policy")
		directives := map[string]string{}
		for _, d := range strings.Split(csp, ";") {
			name, value, _ := strings.Cut(strings.TrimSpace(d), " ")
			directives[name] = value
		}
		for name, want := range map[string]string{
			"default-src":     "'self'",
			"script-src":      "'self'",
			"frame-ancestors": "'none'",
			"base-uri":        "'none'",
			"form-action":     "'self'",
		} {
			if got := directives[name]; got != want {
				t.Errorf("GET %s: Content-Security-Policy %s is %q, want %q (header: %s)", path, name, got, want, csp)
			}
		}
		if got := rec.Header().Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("GET %s: X-Content-Type-Options %q", path, got)
		}
	}
}
