// Package jobstatus defines a fine-tuning job's status once, for the
// workflow that decides it, the SQL that stores it and the API that shows
// and filters it. (PostgreSQL's CHECK on jobs.status guards the same list;
// a test keeps the two equal.)
package jobstatus

import (
	"slices"
	"strings"
)

// Status is a job's status as the API shows it.
type Status string

// The statuses of a job.
const (
	Queued    Status = "queued"
	Running   Status = "running"
	Completed Status = "completed"
	Failed    Status = "failed"
	Stopped   Status = "stopped"
	Deployed  Status = "deployed"
)

// All lists every status, in the order the API documents them.
var All = []Status{Queued, Running, Completed, Failed, Stopped, Deployed}

// Active lists the statuses of jobs that wait for or hold a GPU slot; an
// organization's cap counts them.
var Active = []Status{Queued, Running}

// MayTrain lists the statuses of jobs that may still read their datasets:
// active ones, and failed or stopped ones, which a restart trains again.
// Completed and deployed jobs never train again.
var MayTrain = []Status{Queued, Running, Failed, Stopped}

// Valid reports whether s is a status.
func (s Status) Valid() bool { return slices.Contains(All, s) }

// Finished reports whether s ends a training run: the job's finish time is
// recorded with it.
func (s Status) Finished() bool { return s == Completed || s == Failed || s == Stopped }

// IsActive reports whether s is one of Active.
func (s Status) IsActive() bool { return slices.Contains(Active, s) }

// Names lists the statuses for messages: "queued, running, …".
func Names() string {
	names := make([]string, len(All))
	for i, s := range All {
		names[i] = string(s)
	}
	return strings.Join(names, ", ")
}

// Strings returns statuses as strings, for SQL array parameters.
func Strings(statuses []Status) []string {
	out := make([]string, len(statuses))
	for i, s := range statuses {
		out[i] = string(s)
	}
	return out
}
