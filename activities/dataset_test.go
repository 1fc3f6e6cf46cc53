package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"

	"go.temporal.io/sdk/temporal"

	"github.com/tuneforge/tuneforge/internal/peakheap"
	"github.com/tuneforge/tuneforge/trainer"
)

// jsonl synthesizes a JSONL file line by line, cycling through a few
// thousand generated support tickets, so a file of any size streams from
// memory that does not depend on it.
type jsonl struct {
	lines [][]byte
	left  int64  // bytes still to produce; the line that crosses 0 is finished
	cur   []byte // rest of the line being read
	n     int    // lines started
	probe func(lines int)
}

func newJSONL(size int64, labels int) *jsonl {
	words := strings.Fields("please help me with my order today thanks hello I need this is about the problem since yesterday urgent can you check it again invoice refund delivery password crash")
	r := rand.New(rand.NewPCG(1, 2))
	g := &jsonl{left: size}
	for i := range 4099 {
		text := make([]string, 10+r.IntN(10))
		for k := range text {
			text[k] = words[r.IntN(len(words))]
		}
		line, _ := json.Marshal(map[string]any{"messages": []map[string]string{
			{"role": "system", "content": "Classify the support ticket."},
			{"role": "user", "content": strings.Join(text, " ")},
			{"role": "assistant", "content": fmt.Sprint("label-", i%labels)},
		}})
		g.lines = append(g.lines, append(line, '\n'))
	}
	return g
}

func (g *jsonl) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if len(g.cur) == 0 {
			if g.left <= 0 {
				break
			}
			g.cur = g.lines[g.n%len(g.lines)]
			g.left -= int64(len(g.cur))
			if g.n++; g.probe != nil {
				g.probe(g.n)
			}
		}
		k := copy(p[n:], g.cur)
		g.cur, n = g.cur[k:], n+k
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

func TestValidateTraining(t *testing.T) {
	sum, err := validateTraining(context.Background(), newJSONL(1<<20, 8), 0)
	if err != nil || sum.Examples < 4000 || sum.Tokens == 0 {
		t.Fatalf("validateTraining = %+v, %v; want thousands of examples", sum, err)
	}
	_, err = validateTraining(context.Background(), newJSONL(1<<20, 1000), 0)
	var appErr *temporal.ApplicationError
	if !errors.As(err, &appErr) || appErr.Type() != ErrTypeInvalidData || appErr.NonRetryable() == false ||
		!strings.Contains(err.Error(), "training file: training data is not learnable by the builtin trainer: more than 64 distinct assistant replies") {
		t.Errorf("1000 labels: err = %v, want a non-retryable InvalidData naming the labels", err)
	}
}

// TestValidateTrainingMemory shows validation's memory does not grow with
// the file: the heap found live partway through a 250 000-line file is the
// same at line 10 000 and at line 250 000 (to well under the 100 bytes per
// example that keeping examples would add).
func TestValidateTrainingMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 45 MB")
	}
	if !runAlone(t) {
		return
	}
	live := map[int]uint64{}
	g := newJSONL(1<<62, 8)
	g.probe = func(n int) {
		if n == 10_000 || n == 250_000 {
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			live[n] = ms.HeapAlloc
		}
		if n == 250_001 {
			g.left = 0 // end the file here
		}
	}
	if _, err := validateTraining(context.Background(), g, 0); err != nil {
		t.Fatal(err)
	}
	grew := int64(live[250_000]) - int64(live[10_000])
	t.Logf("live heap at line 10 000: %d B, at line 250 000: %d B", live[10_000], live[250_000])
	if grew > 256<<10 {
		t.Errorf("live heap grew %d B over 240 000 lines; want it flat", grew)
	}
}

// BenchmarkValidateDataset1GiB validates a generated 1 GiB training file
// per iteration and reports the peak heap (peak-heap-B: live and unswept
// garbage; peak-live-B: what collections found live).
func BenchmarkValidateDataset1GiB(b *testing.B) {
	const size = 1 << 30
	b.SetBytes(size)
	w := peakheap.Start()
	for b.Loop() {
		if _, err := validateTraining(context.Background(), newJSONL(size, 8), 0); err != nil {
			b.Fatal(err)
		}
	}
	p := w.Stop()
	b.ReportMetric(float64(p.Heap), "peak-heap-B")
	b.ReportMetric(float64(p.Live), "peak-live-B")
}

func TestDatasetCacheBoundedInBytes(t *testing.T) {
	examples := func(n int) []trainer.Example {
		return slices.Repeat([]trainer.Example{{Text: strings.Repeat("x", 60), Label: "label"}}, n)
	}
	size := examplesBytes(examples(100))
	c := datasetCache{maxBytes: 3 * size}
	for _, key := range []string{"a", "b", "c"} {
		c.put(key, examples(100))
	}
	c.get("a") // b is now the least recently used
	c.put("d", examples(100))
	var held []string
	for _, key := range []string{"a", "b", "c", "d"} {
		if _, ok := c.get(key); ok {
			held = append(held, key)
		}
	}
	if !slices.Equal(held, []string{"a", "c", "d"}) || c.bytes != 3*size {
		t.Errorf("cache holds %v in %d bytes, want [a c d] in %d", held, c.bytes, 3*size)
	}
	c.put("huge", examples(301))
	if _, ok := c.get("huge"); ok || len(c.entries) != 3 {
		t.Errorf("a dataset over the whole budget was kept, or evicted others: %d entries", len(c.entries))
	}
	c.put("a", examples(200)) // replaced by one twice the size: c, now the oldest, goes
	if len(c.entries) != 2 || c.entries[0].key != "d" || c.bytes != size+examplesBytes(examples(200)) {
		t.Errorf("after replacing a: %d entries, %d bytes", len(c.entries), c.bytes)
	}
}

// runAlone runs the calling test again in a process of its own, without
// the platform's servers and workers, whose allocations would blur a
// measurement of the process's heap; it reports whether this is that run.
func runAlone(t *testing.T) bool {
	t.Helper()
	if os.Getenv("TUNEFORGE_TEST_ALONE") != "" {
		return true
	}
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v")
	cmd.Env = append(os.Environ(), "TUNEFORGE_TEST_ALONE=1")
	out, err := cmd.CombinedOutput()
	t.Logf("in a process of its own:\n%s", out)
	if err != nil {
		t.Fatalf("%s alone: %v", t.Name(), err)
	}
	return false
}

// A dataset's featurized form is kept beside its examples for the state it
// was made for, counted in the budget, and made anew for another state.
func TestDatasetCacheKeepsFeaturized(t *testing.T) {
	var examples []trainer.Example
	for i := range 40 {
		examples = append(examples, trainer.Example{Text: fmt.Sprintf("ticket %d about billing", i), Label: []string{"billing", "bug"}[i%2]})
	}
	s, err := trainer.NewState(examples, 1)
	if err != nil {
		t.Fatal(err)
	}
	c := datasetCache{maxBytes: 1 << 20}
	if f := c.featurize("absent", s, examples); f == nil || len(c.entries) != 0 {
		t.Fatal("featurizing examples the cache does not hold kept them")
	}
	c.put("a", examples)
	first := c.featurize("a", s, examples)
	if again := c.featurize("a", s, examples); again != first {
		t.Error("the second epoch featurized again")
	}
	if c.bytes != examplesBytes(examples)+first.Bytes() {
		t.Errorf("%d bytes held, want the examples' and the features'", c.bytes)
	}
	other, err := trainer.NewState(append(examples, trainer.Example{Text: "a new kind", Label: "outage"}), 1)
	if err != nil {
		t.Fatal(err)
	}
	if f := c.featurize("a", other, examples); f == first || !f.For(other) {
		t.Error("features made for another state's labels were reused")
	}
	small := datasetCache{maxBytes: examplesBytes(examples) + 1}
	small.put("a", examples)
	small.featurize("a", s, examples)
	if small.entries[0].featurized != nil || small.bytes != examplesBytes(examples) {
		t.Error("features over the budget were kept")
	}
}
