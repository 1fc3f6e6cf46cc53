// Package cli is tuneforge's command-line client: `tuneforge jobs …`,
// `tuneforge datasets …` and `tuneforge models …` call a tuneforge API
// (TUNEFORGE_URL, TUNEFORGE_API_KEY) and print tables for people or, with
// --json, the API's JSON unchanged for scripts.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Exit codes scripts can rely on.
const (
	ExitOK = 0
	// ExitError: the request failed (the API refused it, or could not be
	// reached).
	ExitError = 1
	// ExitUsage: the command line is wrong.
	ExitUsage = 2
	// ExitJobUnsuccessful: a followed job ended failed, stopped or deleted.
	ExitJobUnsuccessful = 3
	// ExitNotFound: the job, dataset or model does not exist (or is
	// another organization's).
	ExitNotFound = 4
)

// ExitError carries the exit code a command's failure calls for.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// ExitCode is the exit code for err: ExitOK for nil.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var e *exitError
	if errors.As(err, &e) {
		return e.code
	}
	var apiErr *APIError
	if errors.As(err, &apiErr) && apiErr.Status == http.StatusNotFound {
		return ExitNotFound
	}
	return ExitError
}

// APIError is an error answer of the API.
type APIError struct {
	Status  int
	Code    string
	Message string
	Details []struct {
		Field   string `json:"field"`
		Line    int    `json:"line"`
		Message string `json:"message"`
	}
}

// Error is the server's explanation, its routes named as CLI commands and
// its control characters escaped.
func (e *APIError) Error() string {
	msg := fmt.Sprintf("%s (HTTP %d)", cliCommands(text(e.Message)), e.Status)
	for _, d := range e.Details[min(1, len(e.Details)):] {
		where := oneLine(d.Field)
		if d.Line > 0 {
			where = fmt.Sprintf("line %d", d.Line)
		}
		msg += fmt.Sprintf("\n  %s: %s", where, cliCommands(text(d.Message)))
	}
	return msg
}

// Client calls one tuneforge API with one key.
type Client struct {
	BaseURL string
	Key     string
	HTTP    *http.Client
}

const fineTuning = "/api/v1/fine-tuning"

// httpClient follows redirects only within the API's scheme and host: Go
// sends X-API-Key on to wherever a redirect points.
func (c *Client) httpClient() *http.Client {
	hc := http.Client{}
	if c.HTTP != nil {
		hc = *c.HTTP
	}
	hc.CheckRedirect = sameHostRedirect
	return &hc
}

// redirectError refuses a redirect to another scheme or host.
type redirectError struct{ from, to *url.URL }

func (e *redirectError) Error() string {
	return fmt.Sprintf("refusing redirect to other host %s (from %s): the API key is sent only to TUNEFORGE_URL's host",
		oneLine(e.to.Scheme+"://"+e.to.Host), e.from.Scheme+"://"+e.from.Host)
}

func sameHostRedirect(req *http.Request, via []*http.Request) error {
	from := via[0].URL
	if req.URL.Scheme != from.Scheme || req.URL.Host != from.Host {
		return &redirectError{from, req.URL}
	}
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	return nil
}

// send makes a request and returns the response when it is a 2xx; any
// other answer is an *APIError.
func (c *Client) send(ctx context.Context, method, path string, body io.Reader, header http.Header) (*http.Response, error) {
	if c.Key == "" {
		return nil, &exitError{ExitUsage, errors.New("TUNEFORGE_API_KEY is not set: export the key `tuneforge apikey create` printed (make dev prints one, saved in .tuneforge/dev-api-key)")}
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.BaseURL, "/")+path, body)
	if err != nil {
		return nil, &exitError{ExitUsage, fmt.Errorf("TUNEFORGE_URL %q: %w", c.BaseURL, err)}
	}
	if s, ok := body.(interface{ Size() int64 }); ok {
		req.ContentLength = s.Size()
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("X-API-Key", c.Key)
	resp, err := c.httpClient().Do(req)
	var redirErr *redirectError
	if errors.As(err, &redirErr) {
		return nil, redirErr
	}
	if err != nil {
		return nil, fmt.Errorf("tuneforge API at %s does not answer (is TUNEFORGE_URL right, and `make dev` or `tuneforge api` running?): %w", c.BaseURL, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var env struct {
		Error *APIError `json:"error"`
	}
	if json.Unmarshal(raw, &env) != nil || env.Error == nil {
		return nil, &APIError{Status: resp.StatusCode, Message: strings.TrimSpace(string(raw))}
	}
	env.Error.Status = resp.StatusCode
	return nil, env.Error
}

// call sends a JSON request (body nil for none) and returns the answer's
// raw JSON.
func (c *Client) call(ctx context.Context, method, path string, body any) ([]byte, error) {
	var r io.Reader
	header := http.Header{}
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		r = strings.NewReader(string(b))
		header.Set("Content-Type", "application/json")
	}
	resp, err := c.send(ctx, method, path, r, header)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// get reads path into v, and returns the raw JSON too.
func (c *Client) get(ctx context.Context, path string, v any) ([]byte, error) {
	raw, err := c.call(ctx, http.MethodGet, path, nil)
	if err != nil {
		return nil, err
	}
	if v != nil {
		if err := json.Unmarshal(raw, v); err != nil {
			return raw, fmt.Errorf("read the answer of GET %s: %w", path, err)
		}
	}
	return raw, nil
}

func jobPath(id string, rest ...string) string {
	return fineTuning + "/jobs/" + url.PathEscape(id) + strings.Join(rest, "")
}

// Job is the part of the API's job object the CLI shows.
type Job struct {
	ID              string            `json:"id"`
	Name            string            `json:"name"`
	BaseModel       string            `json:"baseModel"`
	Status          string            `json:"status"`
	Description     string            `json:"description"`
	Owner           string            `json:"owner"`
	TrainedTokens   int64             `json:"trainedTokens"`
	CreatedAt       time.Time         `json:"createdAt"`
	StartedAt       *time.Time        `json:"startedAt"`
	FinishedAt      *time.Time        `json:"finishedAt"`
	TrainingDataset string            `json:"trainingDataset"`
	TrainingFile    string            `json:"trainingFile"`
	ValidationFile  *string           `json:"validationFile"`
	Hardware        string            `json:"hardware"`
	Suffix          string            `json:"suffix"`
	ResultModel     *string           `json:"resultModel"`
	Error           *jobError         `json:"error"`
	Cancelled       bool              `json:"cancelled"`
	Actions         []string          `json:"actions"`
	CostSoFar       *float64          `json:"costSoFar"`
	MaxCost         *float64          `json:"maxCost"`
	Metadata        map[string]string `json:"metadata"`
	Hyperparameters struct {
		Epochs       int     `json:"epochs"`
		LearningRate float64 `json:"learningRate"`
		BatchSize    int     `json:"batchSize"`
		WarmupSteps  int     `json:"warmupSteps"`
		QLoRA        bool    `json:"qlora"`
		LoRARank     int     `json:"loraRank"`
	} `json:"hyperparameters"`
	Method struct {
		Type string `json:"type"`
		DPO  *struct {
			Beta float64 `json:"beta"`
		} `json:"dpo"`
	} `json:"method"`
	InitFrom *string `json:"initFrom"`
	Metrics  struct {
		TrainingLoss   *float64 `json:"trainingLoss"`
		ValidationLoss *float64 `json:"validationLoss"`
		Epoch          *int     `json:"epoch"`
	} `json:"metrics"`
}

// jobError is why a job failed: an object with a class, or from servers
// before failures had classes, a string.
type jobError struct {
	Code    string `json:"code"`
	Class   string `json:"class"`
	Message string `json:"message"`
}

func (e *jobError) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		return json.Unmarshal(b, &e.Message)
	}
	type object jobError // without this method
	return json.Unmarshal(b, (*object)(e))
}

// String is "class: message", or "-" for none.
func (e *jobError) String() string {
	switch {
	case e == nil || e.Class == "" && e.Message == "":
		return "-"
	case e.Class == "":
		return e.Message
	}
	return e.Class + ": " + e.Message
}

// statusLabel is the job's status, telling a cancelled stop (which cannot
// resume) from a plain one.
func (j Job) statusLabel() string {
	if j.Cancelled && j.Status == "stopped" {
		return "stopped (cancelled)"
	}
	return j.Status
}

// finished says whether a job's run has ended, and how.
func (j Job) finished() (done, ok bool) {
	switch j.Status {
	case "completed", "deployed":
		return true, true
	case "failed", "stopped":
		return true, false
	}
	return false, false
}

// UsageError marks err as a wrong command line (ExitUsage).
func UsageError(err error) error { return &exitError{ExitUsage, err} }
