package hang

import (
	"strings"
	"testing"
	"time"
)

// clock is a fake time source the test moves by hand.
type clock struct{ t time.Time }

func (c *clock) pass(d time.Duration) { c.t = c.t.Add(d) }

func (c *clock) watch() *Watch {
	return newWatch(Limits{Floor: 2 * time.Second, Ceiling: time.Minute, Factor: 10}, func() time.Time { return c.t })
}

// steps reports n steps after from, each taking d, and returns the last.
func (c *clock) steps(w *Watch, n int, d time.Duration, from int) int {
	for i := range n {
		c.pass(d)
		w.Step(from + i + 1)
	}
	return from + n
}

func hung(w *Watch) bool {
	_, h := w.Check()
	return h
}

func limit(w *Watch) time.Duration {
	s, _ := w.Check()
	return s.Limit
}

func TestStartupLimitIsTheCeiling(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	w := c.watch()
	c.pass(59 * time.Second)
	w.Loading() // a log line while loading: alive
	c.pass(59 * time.Second)
	if hung(w) {
		t.Fatal("hung within the ceiling of its last log line")
	}
	c.pass(2 * time.Second)
	s, h := w.Check()
	if !h || s.Started || s.Limit != time.Minute || s.Silent != 61*time.Second {
		t.Fatalf("%+v %v; want hung before its first step, at the ceiling", s, h)
	}
	if !strings.Contains(s.String(), "before its first step") {
		t.Errorf("%q", s)
	}
}

func TestLimitFollowsTheSlowestRecentStep(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	w := c.watch()
	step := c.steps(w, 1, 40*time.Second, 0) // loading, then step 1
	if got := limit(w); got != time.Minute {
		t.Errorf("limit %s after one step; want the ceiling until a step's duration is known", got)
	}
	step = c.steps(w, 5, 100*time.Millisecond, step)
	if got := limit(w); got != 2*time.Second {
		t.Errorf("limit %s for 100ms steps; want the floor", got)
	}
	step = c.steps(w, 1, 3*time.Second, step) // one slow step raises it
	if got := limit(w); got != 30*time.Second {
		t.Errorf("limit %s after a 3s step; want 10 × 3s", got)
	}
	step = c.steps(w, recentSteps, 100*time.Millisecond, step) // until it is no longer recent
	if got := limit(w); got != 2*time.Second {
		t.Errorf("limit %s once the slow step is past; want the floor", got)
	}
	c.steps(w, 1, 10*time.Minute, step)
	if got := limit(w); got != time.Minute {
		t.Errorf("limit %s after a 10m step; want the ceiling", got)
	}
}

func TestSignsOfLife(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	w := c.watch()
	c.steps(w, 3, 100*time.Millisecond, 36)
	for range 5 { // a long evaluation that reports its progress
		c.pass(1900 * time.Millisecond)
		w.Alive()
	}
	w.Loading() // a log line after the first step is no sign of life
	if hung(w) {
		t.Fatal("hung while reporting evaluation progress")
	}
	resume := w.Pause() // the worker uploads a checkpoint
	c.pass(time.Hour)
	if hung(w) {
		t.Fatal("hung while paused")
	}
	resume()
	c.pass(1900 * time.Millisecond)
	if hung(w) {
		t.Fatal("the pause counted against the trainer")
	}
	c.pass(200 * time.Millisecond)
	s, h := w.Check()
	if !h || s.Step != 39 || s.Limit != 2*time.Second || s.Slowest != 100*time.Millisecond {
		t.Fatalf("%+v %v; want hung after step 39 at the floor", s, h)
	}
	if want := "the trainer hung after step 39: no step, evaluation progress or checkpoint for 2.1s (the limit for a trainer whose steps took up to 100ms is 2s)"; s.String() != want {
		t.Errorf("%q; want %q", s, want)
	}
}

func TestLimitsValidate(t *testing.T) {
	if err := Default.Validate(); err != nil {
		t.Error(err)
	}
	for _, l := range []Limits{
		{Floor: 0, Ceiling: time.Minute, Factor: 10},
		{Floor: time.Minute, Ceiling: time.Second, Factor: 10},
		{Floor: time.Second, Ceiling: time.Minute, Factor: 0.5},
	} {
		if l.Validate() == nil {
			t.Errorf("%+v validates", l)
		}
	}
	if (Limits{}).OrDefault() != Default {
		t.Error("zero limits are not the default")
	}
}
