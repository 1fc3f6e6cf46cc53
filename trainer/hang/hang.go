// Package hang tells a hung trainer from a slow one. A trainer hangs when
// it is alive but shows no sign of life (a step, an evaluation's progress,
// a checkpoint) for longer than its limit: before its first step the
// ceiling, since loading a model is slow; after it Factor times its
// slowest recent step, kept within Floor and Ceiling. The limit follows the
// trainer's own pace, so one job's slow steps are not taken for another's
// hang.
package hang

import (
	"fmt"
	"slices"
	"sync"
	"time"
)

// Limits configure a Watch.
type Limits struct {
	Floor   time.Duration // the least limit, however fast the steps
	Ceiling time.Duration // the most, and the limit before the first step
	Factor  float64       // the limit's multiple of the slowest recent step
}

// Default is what a zero Limits means.
var Default = Limits{Floor: 2 * time.Minute, Ceiling: 30 * time.Minute, Factor: 10}

// OrDefault is l, or Default when l is zero.
func (l Limits) OrDefault() Limits {
	if l == (Limits{}) {
		return Default
	}
	return l
}

// Validate says what is wrong with l, if anything.
func (l Limits) Validate() error {
	switch {
	case l.Floor <= 0:
		return fmt.Errorf("the floor must be positive, not %s", l.Floor)
	case l.Ceiling < l.Floor:
		return fmt.Errorf("the ceiling (%s) must not be below the floor (%s)", l.Ceiling, l.Floor)
	case !(l.Factor >= 1):
		return fmt.Errorf("the factor must be at least 1, not %v", l.Factor)
	}
	return nil
}

// recentSteps is how many of the latest step durations the limit follows.
const recentSteps = 20

// Watch follows one attempt's signs of life. Its methods may be called
// from any goroutine.
type Watch struct {
	l   Limits
	now func() time.Time

	mu       sync.Mutex
	last     time.Time // the last sign of life
	stepAt   time.Time // when the last step was reported; zero before the first
	step     int
	recent   []time.Duration // the latest step durations, oldest first
	pausedAt time.Time       // zero unless paused
}

// Start starts watching an attempt that has just begun.
func Start(l Limits) *Watch {
	return newWatch(l, time.Now)
}

func newWatch(l Limits, now func() time.Time) *Watch {
	return &Watch{l: l.OrDefault(), now: now, last: now()}
}

// CheckEvery is how often a watcher should call Check: a small part of
// the floor, so a hang is caught soon after its limit.
func (w *Watch) CheckEvery() time.Duration {
	return min(max(w.l.Floor/10, 10*time.Millisecond), time.Second)
}

// Step records that the trainer reported step n.
func (w *Watch) Step(n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := w.now()
	if !w.stepAt.IsZero() {
		w.recent = append(w.recent, now.Sub(w.stepAt))
		if len(w.recent) > recentSteps {
			w.recent = w.recent[1:]
		}
	}
	w.last, w.stepAt, w.step = now, now, n
}

// Alive records a sign of life other than a step: an evaluation's
// progress, a checkpoint.
func (w *Watch) Alive() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.last = w.now()
}

// Loading records output that is a sign of life only before the first
// step: a trainer loading or downloading a model says how it is doing in
// log lines, but one that logs and takes no step after its first is hung.
func (w *Watch) Loading() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stepAt.IsZero() {
		w.last = w.now()
	}
}

// Pause stops the clock until the returned func is called: the time the
// worker spends on the trainer's behalf (recording a point, uploading a
// checkpoint) is not the trainer's.
func (w *Watch) Pause() (resume func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.pausedAt.IsZero() {
		return func() {} // nested: the outer pause resumes
	}
	w.pausedAt = w.now()
	return func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		paused := w.now().Sub(w.pausedAt)
		w.pausedAt = time.Time{}
		w.last = w.last.Add(paused)
		if !w.stepAt.IsZero() {
			w.stepAt = w.stepAt.Add(paused)
		}
	}
}

// Stall describes a hung trainer.
type Stall struct {
	Step    int           // the last step it reported; 0 before its first
	Started bool          // whether it had reported a step
	Silent  time.Duration // how long it had shown no sign of life
	Limit   time.Duration
	// Slowest is the slowest recent step the limit derives from; 0
	// before a step's duration was known.
	Slowest time.Duration
}

// String says what hung, for users.
func (s Stall) String() string {
	if !s.Started {
		return fmt.Sprintf("the trainer hung before its first step: nothing reported for %s (the startup limit is %s)", round(s.Silent), round(s.Limit))
	}
	why := fmt.Sprintf("the limit for a trainer whose steps took up to %s", round(s.Slowest))
	if s.Slowest == 0 {
		why = "the limit before a step's duration is known"
	}
	return fmt.Sprintf("the trainer hung after step %d: no step, evaluation progress or checkpoint for %s (%s is %s)",
		s.Step, round(s.Silent), why, round(s.Limit))
}

// round keeps three significant digits, enough to read.
func round(d time.Duration) time.Duration {
	unit := time.Duration(1)
	for d/unit >= 1000 {
		unit *= 10
	}
	return d.Round(unit)
}

// Check says whether the trainer has been silent past its limit.
func (w *Watch) Check() (Stall, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.pausedAt.IsZero() {
		return Stall{}, false
	}
	s := Stall{Step: w.step, Started: !w.stepAt.IsZero(), Silent: w.now().Sub(w.last), Limit: w.l.Ceiling}
	if len(w.recent) > 0 {
		s.Slowest = slices.Max(w.recent)
		s.Limit = min(max(time.Duration(w.l.Factor*float64(s.Slowest)), w.l.Floor), w.l.Ceiling)
	}
	return s, s.Silent > s.Limit
}
