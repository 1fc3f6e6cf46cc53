// Package failure owns why a job failed: the classes of failure, the code
// of each cause, what the user should do next, and which classes are
// retried. The workflow classifies an activity's error by its type; the
// API shows the class and filters by it.
package failure

import (
	"fmt"
	"strings"
)

// Class is the kind of a job's failure; it decides whether the job is
// retried and what its user is told to change.
type Class string

// The classes of failure.
const (
	// Data: the dataset cannot be trained.
	Data Class = "data"
	// Config: the hyperparameters or the model cannot run on the job's
	// hardware or trainer.
	Config Class = "config"
	// OOM: training ran out of GPU memory.
	OOM Class = "oom"
	// Hang: the trainer stopped reporting progress and was killed.
	Hang Class = "hang"
	// WorkerLost: the training worker died or went away mid-epoch.
	WorkerLost Class = "worker_lost"
	// Capacity: no hardware pool can ever run the job.
	Capacity Class = "capacity"
	// Budget: the job reached its maxCost.
	Budget Class = "budget"
	// Internal: a fault of the platform or the trainer.
	Internal Class = "internal"
)

// Classes lists every class, in the order documentation shows them.
var Classes = []Class{Data, Config, OOM, Hang, WorkerLost, Capacity, Budget, Internal}

// Valid says whether c is one of Classes.
func (c Class) Valid() bool {
	for _, k := range Classes {
		if c == k {
			return true
		}
	}
	return false
}

// Names lists the classes for a message: "data, config, …".
func Names() string {
	names := make([]string, len(Classes))
	for i, c := range Classes {
		names[i] = string(c)
	}
	return strings.Join(names, ", ")
}

// Retried says whether an epoch that failed with c is tried again, from
// the latest checkpoint, within the epoch's attempts. The retry policy of
// every class is here and nowhere else: data, config, oom, capacity and
// budget would fail the same way again; a hang, a lost worker and an
// internal fault (a database blip, a crashed trainer) may not.
func (c Class) Retried() bool {
	switch c {
	case Hang, WorkerLost, Internal:
		return true
	}
	return false
}

// Failure is why a job failed: a stable code for programs, its class, and
// a message for people that ends with what to do next.
type Failure struct {
	Code    string `json:"code"`
	Class   Class  `json:"class"`
	Message string `json:"message"`
}

// Cause is one error type's code and class.
type Cause struct {
	Code  string
	Class Class
}

// Error types raised outside the activities package: the workflow's own.
const (
	// TypeBudget: the job reached its maxCost.
	TypeBudget = "BudgetExceeded"
	// TypeWorkerLost: an epoch's worker stopped heartbeating.
	TypeWorkerLost = "WorkerLost"
)

// New is a failure of the cause, its message followed by the class's
// advice.
func New(c Cause, msg string) Failure {
	if next := advice(c.Class); next != "" {
		msg = fmt.Sprintf("%s. %s", trimStop(msg), next)
	}
	return Failure{Code: c.Code, Class: c.Class, Message: msg}
}

func trimStop(s string) string {
	for len(s) > 0 && (s[len(s)-1] == '.' || s[len(s)-1] == ' ') {
		s = s[:len(s)-1]
	}
	return s
}

// advice says what to do next after a failure of class c.
func advice(c Class) string {
	switch c {
	case Data:
		return "Fix the dataset where the message says and create the job again with the corrected file"
	case Config:
		return "Change the hyperparameters, base model or hardware the message names and create the job again"
	case OOM:
		return "Restart the job with a smaller batchSize, shorten the longest examples, or restart it on a pool with more GPU memory (restart accepts batchSize and hardware)"
	case Hang:
		return "The trainer hung on every attempt; check the last output lines in the job's events, then restart the job, which resumes from its latest checkpoint"
	case WorkerLost:
		return "Training workers kept going away; check the workers of the job's hardware pool, then restart the job, which resumes from its latest checkpoint"
	case Capacity:
		return "No hardware pool can run this job; choose other hardware or a smaller base model"
	case Budget:
		return "Restart the job with a higher maxCost to continue from its latest checkpoint"
	case Internal:
		return "Restart the job to resume from its latest checkpoint; if it fails again, report the job ID to your operator"
	}
	return ""
}
