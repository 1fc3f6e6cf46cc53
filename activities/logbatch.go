package activities

import (
	"sync"
	"time"

	"github.com/tuneforge/tuneforge/db"
)

// logBatch holds a trainer's log lines until they are written, a batch at
// a time, by a goroutine of its own: a trainer may print tens of thousands
// a second, which one INSERT a line (or a reader that waited for each
// write) could not keep up with. A line waits at most about logDelay (the
// heartbeat sends what has waited that long) or until logBatchLines have
// gathered; while one batch is written the next gathers, and a third waits
// for the writer, which holds the trainer back rather than buffer without
// bound.
type logBatch struct {
	write func([]db.LogLine) error

	mu     sync.Mutex // Add (the reader) and Flush (the heartbeat)
	lines  []db.LogLine
	oldest time.Time
	closed bool

	batches chan []db.LogLine
	done    chan struct{}
	errMu   sync.Mutex
	err     error // the first failed write; the attempt fails with it
}

const (
	logBatchLines = 2000
	logDelay      = 50 * time.Millisecond
)

func newLogBatch(write func([]db.LogLine) error) *logBatch {
	b := &logBatch{write: write, batches: make(chan []db.LogLine, 1), done: make(chan struct{})}
	go func() {
		defer close(b.done)
		for lines := range b.batches {
			if b.failed() != nil {
				continue
			}
			if err := b.write(lines); err != nil {
				b.errMu.Lock()
				b.err = err
				b.errMu.Unlock()
			}
		}
	}()
	return b
}

func (b *logBatch) failed() error {
	b.errMu.Lock()
	defer b.errMu.Unlock()
	return b.err
}

// Add holds a line, and sends the batch to the writer when it is full or
// old; it returns the error of a failed write.
func (b *logBatch) Add(line db.LogLine) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.lines) == 0 {
		b.oldest = time.Now()
	}
	b.lines = append(b.lines, line)
	if len(b.lines) >= logBatchLines || time.Since(b.oldest) >= logDelay {
		b.send()
	}
	return b.failed()
}

// Flush sends the lines that have waited logDelay. It is the heartbeat's,
// which must not wait: while Add waits for a busy writer, Flush has
// nothing to do.
func (b *logBatch) Flush() {
	if !b.mu.TryLock() {
		return
	}
	defer b.mu.Unlock()
	if b.closed || len(b.lines) == 0 || time.Since(b.oldest) < logDelay {
		return
	}
	select {
	case b.batches <- b.lines:
		b.lines = nil
	default: // the writer is busy; the next Add or Flush sends them
	}
}

// send hands the batch to the writer; the caller holds mu.
func (b *logBatch) send() {
	if b.closed || len(b.lines) == 0 {
		return
	}
	b.batches <- b.lines
	b.lines = nil
}

// Close writes what is held, waits for the writer and returns the first
// failed write's error. Lines added after it are dropped.
func (b *logBatch) Close() error {
	b.mu.Lock()
	if !b.closed {
		b.send()
		b.closed = true
		close(b.batches)
	}
	b.mu.Unlock()
	<-b.done
	return b.failed()
}
