package server

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/tuneforge/tuneforge/db"
)

// apiError is every error the API returns, as
// {"error":{"code":"…","message":"…","details":[…]}}.
type apiError struct {
	Status  int           `json:"-"`
	Code    string        `json:"code"`
	Message string        `json:"message"`
	Details []fieldDetail `json:"details,omitempty"`
}

// fieldDetail names one bad field (or dataset line) and what to fix.
type fieldDetail struct {
	Field   string `json:"field,omitempty"`
	Line    int    `json:"line,omitempty"`
	Message string `json:"message"`
}

func (e *apiError) Error() string { return e.Message }

func newError(status int, code, format string, args ...any) *apiError {
	return &apiError{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

func badRequest(format string, args ...any) *apiError {
	return newError(http.StatusBadRequest, "invalid_request", format, args...)
}

func notFound(what, id string) *apiError {
	return newError(http.StatusNotFound, "not_found", "%s %s not found", what, id)
}

func conflict(format string, args ...any) *apiError {
	return newError(http.StatusConflict, "conflict", format, args...)
}

// errStalled answers a request whose body stopped arriving in time.
var errStalled = newError(http.StatusRequestTimeout, "request_timeout", "the request body stopped arriving in time; send it without pausing")

// fieldErrors collects validation problems so a request reports all at once.
type fieldErrors []fieldDetail

func (f *fieldErrors) add(field, format string, args ...any) {
	*f = append(*f, fieldDetail{Field: field, Message: fmt.Sprintf(format, args...)})
}

// err returns the collected problems as one error, or nil.
func (f fieldErrors) err(status int) error {
	if len(f) == 0 {
		return nil
	}
	msg := f[0].Field + ": " + f[0].Message
	switch more := len(f) - 1; {
	case more == 1:
		msg += " (and 1 more problem)"
	case more > 1:
		msg += fmt.Sprintf(" (and %d more problems)", more)
	}
	code := "invalid_request"
	if status == http.StatusUnprocessableEntity {
		code = "unprocessable_entity"
	}
	return &apiError{Status: status, Code: code, Message: msg, Details: f}
}

// respondError writes err; anything not an apiError is logged and becomes a
// generic 500, so internal details never reach clients.
func (s *Server) respondError(c *gin.Context, err error) {
	var apiErr *apiError
	if db.IsInvalidText(err) {
		// Text PostgreSQL cannot store (a NUL, invalid UTF-8) came from the client.
		apiErr = badRequest("text in the request must be valid UTF-8 without NUL characters")
	}
	if apiErr == nil && db.IsUnavailable(err) {
		// PostgreSQL is restarting or unreachable: the client may retry.
		s.log.WarnContext(c.Request.Context(), "database unavailable", "method", c.Request.Method, "path", c.FullPath(), "err", err)
		c.Header("Retry-After", "1")
		apiErr = newError(http.StatusServiceUnavailable, "unavailable", "the database is unavailable; try again shortly")
	}
	if apiErr == nil && !errors.As(err, &apiErr) {
		s.log.ErrorContext(c.Request.Context(), "request failed", "method", c.Request.Method, "path", c.FullPath(), "err", err)
		apiErr = newError(http.StatusInternalServerError, "internal", "internal error; the request was not completed")
	}
	if openAIPath(c) {
		// OpenAI's clients retry a 409 unless told not to; a refused
		// transition stays refused.
		if apiErr.Status == http.StatusConflict {
			c.Header("x-should-retry", "false")
		}
		c.AbortWithStatusJSON(apiErr.Status, toOpenAIError(apiErr))
		return
	}
	c.AbortWithStatusJSON(apiErr.Status, errorView{Error: apiErr})
}
