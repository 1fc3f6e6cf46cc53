package activities

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/db"
)

func TestLogBatchKeepsOrderAndNeverHoldsTheHeartbeat(t *testing.T) {
	release := make(chan struct{})
	var got []string
	b := newLogBatch(func(lines []db.LogLine) error {
		<-release // a slow database
		for _, l := range lines {
			got = append(got, l.Message)
		}
		return nil
	})
	var want []string
	added := make(chan struct{})
	go func() {
		defer close(added)
		// Enough for a batch being written, one waiting, and an Add that
		// waits for the writer.
		for i := range 3*logBatchLines + 1 {
			msg := fmt.Sprint("line ", i)
			want = append(want, msg)
			if err := b.Add(db.LogLine{Level: "info", Message: msg}); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	time.Sleep(logDelay + 10*time.Millisecond)
	flushed := make(chan struct{})
	go func() { b.Flush(); close(flushed) }()
	select {
	case <-flushed:
	case <-time.After(5 * time.Second):
		t.Fatal("Flush waited for the writer")
	}
	close(release)
	<-added
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("wrote %d lines, want %d in order", len(got), len(want))
	}
}

func TestLogBatchReportsAFailedWrite(t *testing.T) {
	boom := errors.New("boom")
	b := newLogBatch(func([]db.LogLine) error { return boom })
	_ = b.Add(db.LogLine{Message: "x"})
	if err := b.Close(); !errors.Is(err, boom) {
		t.Fatalf("Close: %v, want boom", err)
	}
	if err := b.Add(db.LogLine{Message: "after"}); !errors.Is(err, boom) {
		t.Fatalf("Add after a failure: %v, want boom", err)
	}
}
