// Package console is tuneforge's web console: a single page, served by the
// API at / from assets embedded in the binary (no Node at run time), that
// signs in with an API key kept in the browser session and drives the same
// REST API as every other client.
package console

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var static embed.FS

// contentSecurityPolicy lets the page load only its own assets and call
// only its own API. default-src does not cover frame-ancestors (no other
// site may frame the page to click-jack a signed-in user), base-uri (an
// injected <base> would re-point relative URLs) or form-action (a form may
// not post elsewhere), so each is set.
const contentSecurityPolicy = "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

// Handler serves the console's page and assets; path is the request's
// path below the console's root ("" or "index.html" for the page).
func Handler() http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.FileServer(http.FS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", contentSecurityPolicy)
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "no-referrer")
		files.ServeHTTP(w, r)
	})
}
