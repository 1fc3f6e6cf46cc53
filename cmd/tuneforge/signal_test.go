package main

import (
	"syscall"
	"testing"
	"time"
)

// `tuneforge dev` shuts down cleanly on Ctrl-C or SIGTERM and exits 0, so
// an interrupted `make dev` reports no error.
func TestDevExitsZeroOnSignal(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			d := startDev(t, freshDatabase(t))
			start := time.Now()
			if code := d.Stop(sig); code != 0 {
				t.Fatalf("exit code %d after %s; want 0:\n%s", code, sig, d.Logs())
			}
			t.Logf("stopped in %s", time.Since(start).Round(time.Millisecond))
		})
	}
}
