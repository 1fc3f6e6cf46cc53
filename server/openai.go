package server

import (
	"net/http"
	"regexp"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/tuneforge/tuneforge/failure"
)

// The OpenAI-shaped view under /v1: the same jobs, datasets and models as
// the seed API, with the objects, list envelopes and error envelope that
// OpenAI's client libraries parse.

// openAIPath reports whether a request is to the OpenAI-shaped view, whose
// errors take OpenAI's envelope.
func openAIPath(c *gin.Context) bool {
	return strings.HasPrefix(c.Request.URL.Path, "/v1/")
}

// openAIError is OpenAI's error object.
type openAIError struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

type openAIErrorView struct {
	Error openAIError `json:"error"`
}

// toOpenAIError renders e as OpenAI does: a type by status class, the
// first bad field as param, and a code where OpenAI has one.
func toOpenAIError(e *apiError) openAIErrorView {
	out := openAIError{Message: openAIRoutes(e.Message), Type: "invalid_request_error"}
	code := func(s string) *string { return &s }
	switch {
	case e.Status == http.StatusUnauthorized:
		out.Code = code("invalid_api_key")
	case e.Status == http.StatusForbidden:
		out.Type = "permission_error"
	case e.Status == http.StatusNotFound:
		out.Code = code("not_found")
	case e.Status == http.StatusTooManyRequests:
		out.Type, out.Code = "rate_limit_error", code("rate_limit_exceeded")
	case e.Status >= 500:
		out.Type = "server_error"
	}
	if e.Code == string(failure.Capacity) {
		// No pool can run the job as asked: the message names what would.
		out.Code = code(e.Code)
	}
	if len(e.Details) > 0 && e.Details[0].Field != "" {
		out.Param = &e.Details[0].Field
	}
	return openAIErrorView{Error: out}
}

// seedRouteRE finds the seed API's routes in a message, as "POST
// /api/v1/fine-tuning/datasets" or "GET /api/v1/fine-tuning/jobs/ftjob_x/checkpoints".
var seedRouteRE = regexp.MustCompile(`\b(GET|POST|DELETE) /api/v1/fine-tuning/(datasets|jobs)(/[A-Za-z0-9_{}-]+)?(/[a-z]+)?`)

// openAIRoutes rewrites the seed API's routes in a message shared by both
// APIs as the /v1 routes that do the same, so a /v1 client is pointed at
// routes of its own API; a route /v1 has no counterpart of stays.
func openAIRoutes(msg string) string {
	return seedRouteRE.ReplaceAllStringFunc(msg, func(route string) string {
		m := seedRouteRE.FindStringSubmatch(route)
		method, kind, id, action := m[1], m[2], m[3], m[4]
		switch {
		case kind == "datasets" && action == "" && (method != "DELETE" || id != ""):
			return method + " /v1/files" + id
		case kind == "jobs" && id != "" && method == "GET" && (action == "" || action == "/checkpoints" || action == "/events"):
			return method + " /v1/fine_tuning/jobs" + id + action
		case kind == "jobs" && id != "" && method == "POST" && action == "/stop":
			return "POST /v1/fine_tuning/jobs" + id + "/pause"
		}
		return route
	})
}

// openAIList is OpenAI's list envelope.
type openAIList[T any] struct {
	Object  string  `json:"object"`
	Data    []T     `json:"data"`
	HasMore bool    `json:"has_more"`
	FirstID *string `json:"first_id"`
	LastID  *string `json:"last_id"`
}

// newOpenAIList wraps a page read with one row more than limit (trimPage).
func newOpenAIList[T any](items []T, limit int, id func(T) string) openAIList[T] {
	out := openAIList[T]{Object: "list"}
	out.Data, out.HasMore = trimPage(items, limit)
	if out.Data == nil {
		out.Data = []T{}
	}
	if n := len(out.Data); n > 0 {
		first, last := id(out.Data[0]), id(out.Data[n-1])
		out.FirstID, out.LastID = &first, &last
	}
	return out
}
