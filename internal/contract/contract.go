// Package contract holds an API to its OpenAPI document in tests.
package contract

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	vErrors "github.com/pb33f/libopenapi-validator/errors"

	"github.com/tuneforge/tuneforge/server"
)

// Contract holds a test API to its OpenAPI document: every response is
// validated against it, and so is every request the API accepted (a 2xx),
// so a handler and the document cannot drift apart.
type Contract struct {
	mu         sync.Mutex
	v          validator.Validator
	violations map[string]int
	checked    int
}

// New holds routes, the API's, to the document: each must be in it, and
// it must describe no route the API lacks.
func New(routes []string) (*Contract, error) {
	b, err := server.OpenAPIJSON()
	if err != nil {
		return nil, err
	}
	doc, err := libopenapi.NewDocument(b)
	if err != nil {
		return nil, fmt.Errorf("read the OpenAPI document: %w", err)
	}
	v, errs := validator.NewValidator(doc)
	if len(errs) > 0 {
		return nil, fmt.Errorf("the OpenAPI document: %v", errs)
	}
	if ok, verrs := v.ValidateDocument(); !ok {
		return nil, fmt.Errorf("the OpenAPI document is not valid OpenAPI 3.1: %s", describe(verrs))
	}
	c := &Contract{v: v, violations: map[string]int{}}
	documented := map[string]bool{}
	model, err := doc.BuildV3Model()
	if err != nil {
		return nil, fmt.Errorf("read the OpenAPI document: %w", err)
	}
	for path, item := range model.Model.Paths.PathItems.FromOldest() {
		for method := range item.GetOperations().FromOldest() {
			documented[strings.ToUpper(method)+" "+path] = true
		}
	}
	for _, r := range routes {
		if !documented[r] {
			c.violations[r+": served but not in the document"]++
		}
		delete(documented, r)
	}
	for r := range documented {
		c.violations[r+": in the document but not served"]++
	}
	return c, nil
}

// captureLimit bounds the bodies kept for validation; larger ones (big
// uploads, long streams) pass through unchecked.
const captureLimit = 4 << 20

// Wrap validates what h answers, and what it accepted.
func (c *Contract) Wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var reqBody []byte
		checkRequest := r.ContentLength >= 0 && r.ContentLength <= captureLimit
		if checkRequest && r.Body != nil {
			var err error
			if reqBody, err = io.ReadAll(r.Body); err != nil {
				http.Error(w, "test contract: read body: "+err.Error(), http.StatusBadRequest)
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(reqBody))
		}
		rec := &recorder{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(rec, r)

		req := r.Clone(r.Context())
		req.Body = io.NopCloser(bytes.NewReader(reqBody))
		var errs []*vErrors.ValidationError
		c.mu.Lock()
		defer c.mu.Unlock()
		c.checked++
		if rec.status/100 == 2 && checkRequest {
			_, rerrs := c.v.ValidateHttpRequestSync(req)
			errs = append(errs, rerrs...)
		}
		if !rec.truncated {
			req.Body = io.NopCloser(bytes.NewReader(reqBody))
			resp := &http.Response{
				StatusCode: rec.status, Header: rec.Header(), Request: req,
				Body: io.NopCloser(bytes.NewReader(rec.body.Bytes())),
			}
			_, serrs := c.v.ValidateHttpResponse(req, resp)
			errs = append(errs, serrs...)
		}
		for _, e := range errs {
			if (e.IsPathMissingError() || e.IsOperationMissingError()) && (rec.status == http.StatusNotFound || rec.status == http.StatusMethodNotAllowed) {
				continue // no such route, and the API said so
			}
			key := fmt.Sprintf("%s %s → %d: %s", r.Method, route(r), rec.status, describe([]*vErrors.ValidationError{e}))
			c.violations[key]++
		}
	})
}

// route names a request's path with its IDs replaced, so one violation of
// a route is listed once.
func route(r *http.Request) string {
	parts := strings.Split(r.URL.Path, "/")
	for i, p := range parts {
		for _, prefix := range []string{"ftjob_", "ds_", "ftckpt_", "ftevent-", "checkpoint-step-"} {
			if strings.HasPrefix(p, prefix) {
				parts[i] = "{" + strings.TrimSuffix(prefix, "_") + "}"
			}
		}
	}
	return strings.Join(parts, "/")
}

func describe(errs []*vErrors.ValidationError) string {
	var out []string
	for _, e := range errs {
		msg := e.Message
		if e.Reason != "" {
			msg += ": " + e.Reason
		}
		for _, f := range e.SchemaValidationErrors {
			msg += fmt.Sprintf(" [%s: %s]", f.FieldPath, f.Reason)
		}
		out = append(out, msg)
	}
	return strings.Join(out, "; ")
}

// Violations lists what the API answered, or accepted, that its document
// does not describe, each once with its count.
func (c *Contract) Violations() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.violations))
	for k, n := range c.violations {
		out = append(out, fmt.Sprintf("%s (×%d)", k, n))
	}
	sort.Strings(out)
	return slices.Clip(out)
}

// recorder passes a response through while keeping a copy of it.
type recorder struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
	body        bytes.Buffer
	truncated   bool
}

func (r *recorder) WriteHeader(code int) {
	if !r.wroteHeader {
		r.status, r.wroteHeader = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	r.wroteHeader = true
	if r.body.Len()+len(b) <= captureLimit {
		r.body.Write(b)
	} else {
		r.truncated = true
	}
	return r.ResponseWriter.Write(b)
}

func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection (deadlines).
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// ExitCode is a test binary's exit code: code, or 1 when the API's traffic
// broke its document (each breach is printed).
func (c *Contract) ExitCode(code int) int {
	v := c.Violations()
	if len(v) == 0 {
		return code
	}
	fmt.Fprintf(os.Stderr, "\nThe API's traffic in these tests broke server/openapi.yaml %d ways:\n", len(v))
	for _, line := range v {
		fmt.Fprintln(os.Stderr, "  "+line)
	}
	return 1
}
