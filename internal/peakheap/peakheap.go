// Package peakheap measures how much heap a stretch of code needs at its
// peak, for benchmarks that report memory rather than time.
package peakheap

import (
	"runtime"
	"runtime/metrics"
	"time"
)

// interval is how often the heap is sampled: often enough to see the peaks
// between garbage collections of a busy loop, cheap enough not to slow it.
const interval = time.Millisecond

// Sample names, from runtime/metrics.
const (
	heapObjects = "/memory/classes/heap/objects:bytes" // live and not yet swept: what HeapAlloc reports
	heapLive    = "/gc/heap/live:bytes"                // marked live by the last collection
)

// Watch samples the heap on its own goroutine until Stop.
type Watch struct {
	stop chan struct{}
	done chan Peak
}

// Peak is the most a Watch saw.
type Peak struct {
	Heap uint64 // heap objects, garbage not yet swept included
	Live uint64 // heap the garbage collector found live
}

// Start collects garbage, so earlier work does not count, and starts
// sampling.
func Start() *Watch {
	runtime.GC()
	w := &Watch{stop: make(chan struct{}), done: make(chan Peak, 1)}
	go w.run()
	return w
}

func (w *Watch) run() {
	samples := []metrics.Sample{{Name: heapObjects}, {Name: heapLive}}
	var p Peak
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		metrics.Read(samples)
		p.Heap = max(p.Heap, samples[0].Value.Uint64())
		p.Live = max(p.Live, samples[1].Value.Uint64())
		select {
		case <-w.stop:
			w.done <- p
			return
		case <-t.C:
		}
	}
}

// Stop ends sampling and returns the peaks. It takes a last sample, so
// what the measured code still holds counts.
func (w *Watch) Stop() Peak {
	close(w.stop)
	return <-w.done
}
