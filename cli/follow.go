package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// followReconnects is how many times a broken stream is taken up again.
const followReconnects = 10

// followLogs prints a job's log as the API streams it (GET logs?follow=true),
// taking the stream up again where it broke, until the job's run ends. On a
// terminal a progress line shows the job's epoch, step and loss. A job that
// did not complete or deploy is an error with ExitJobUnsuccessful.
func (a *app) followLogs(ctx context.Context, cmd *cobra.Command, jobID string, q url.Values) error {
	out, status := cmd.OutOrStdout(), cmd.ErrOrStderr()
	p := newProgress(status)
	defer p.clear()
	var lastID int64
	seen := false
	for attempt := 0; ; attempt++ {
		params := url.Values{"follow": {"true"}}
		for k, v := range q {
			params[k] = v
		}
		header := http.Header{"Accept": {"text/event-stream"}}
		if seen {
			header.Set("Last-Event-ID", strconv.FormatInt(lastID, 10))
		}
		resp, err := a.client.send(ctx, http.MethodGet, jobPath(jobID, "/logs?"+params.Encode()), nil, header)
		if err != nil {
			var apiErr *APIError
			if errors.As(err, &apiErr) || attempt >= followReconnects || ctx.Err() != nil {
				return err
			}
			time.Sleep(time.Duration(attempt+1) * 500 * time.Millisecond)
			continue
		}
		end, err := readStream(resp.Body, func(l logLine) error {
			if seen && l.ID <= lastID {
				return nil // printed before the stream was taken up again
			}
			lastID, seen = l.ID, true
			p.clear()
			var err error
			if a.json {
				b, _ := json.Marshal(l)
				_, err = fmt.Fprintf(out, "%s\n", b)
			} else {
				_, err = fmt.Fprintln(out, l)
			}
			a.drawProgress(ctx, p, jobID)
			return err
		}, func() { a.drawProgress(ctx, p, jobID) })
		resp.Body.Close()
		if end != "" {
			p.clear()
			if end == "completed" || end == "deployed" {
				fmt.Fprintf(status, "job %s is %s\n", jobID, end)
				return nil
			}
			// Said once, by the error the command returns.
			return a.unsuccessful(ctx, jobID, end)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if attempt >= followReconnects {
			return fmt.Errorf("the log stream of %s kept breaking: %v", jobID, err)
		}
		time.Sleep(time.Duration(attempt+1) * 500 * time.Millisecond)
	}
}

// unsuccessful is the error of a followed job that ended end (failed,
// stopped or deleted), with why when the API still has the job.
func (a *app) unsuccessful(ctx context.Context, jobID, end string) error {
	msg := fmt.Sprintf("job %s ended %s", jobID, oneLine(end))
	var j Job
	if _, err := a.client.get(ctx, jobPath(jobID), &j); err == nil && j.Status == end {
		msg = fmt.Sprintf("job %s ended %s", jobID, oneLine(j.statusLabel()))
		if j.Error != nil {
			msg += ": " + text(cliCommands(j.Error.String()))
		}
	}
	return &exitError{ExitJobUnsuccessful, errors.New(msg)}
}

// readStream reads server-sent events: each log event goes to onLine,
// anything else (a keepalive) calls onIdle. It returns the status of the
// end event, or "" when the stream broke off first.
func readStream(r io.Reader, onLine func(logLine) error, onIdle func()) (string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var event, data string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			switch event {
			case "log":
				var l logLine
				if err := json.Unmarshal([]byte(data), &l); err != nil {
					return "", fmt.Errorf("a log event the CLI cannot read: %w", err)
				}
				if err := onLine(l); err != nil {
					return "", err
				}
			case "end":
				var e struct {
					Status string `json:"status"`
				}
				if err := json.Unmarshal([]byte(data), &e); err != nil {
					return "", fmt.Errorf("an end event the CLI cannot read: %w", err)
				}
				return e.Status, nil
			default:
				onIdle()
			}
			event, data = "", ""
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			data = strings.TrimPrefix(line, "data: ")
		}
	}
	return "", sc.Err()
}

// drawProgress redraws the job's progress line, asking the API for its
// state at most once a second; on anything but a terminal it does
// nothing.
func (a *app) drawProgress(ctx context.Context, p *progress, jobID string) {
	if !p.on || time.Since(a.progressAt) < time.Second {
		if p.on && a.progressLine != "" {
			p.show(a.progressLine, true)
		}
		return
	}
	a.progressAt = time.Now()
	var j Job
	if _, err := a.client.get(ctx, jobPath(jobID), &j); err != nil {
		return
	}
	var m jobMetrics
	step, loss := 0, "-"
	if _, err := a.client.get(ctx, jobPath(jobID, "/metrics"), &m); err == nil && len(m.Metrics.Steps) > 0 {
		last := m.Metrics.Steps[len(m.Metrics.Steps)-1]
		step, loss = last.Step, fmt.Sprintf("%.4g", last.TrainingLoss)
	}
	total := max(j.Hyperparameters.Epochs, 1)
	done := 0
	if j.Metrics.Epoch != nil {
		done = *j.Metrics.Epoch
	}
	a.progressLine = fmt.Sprintf("%s %s epoch %d/%d · step %d · loss %s", oneLine(j.statusLabel()), bar(float64(done)/float64(total), 20), min(done+1, total), total, step, loss)
	p.show(a.progressLine, true)
}
