package trainer

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"
)

func TestReadModel(t *testing.T) {
	s, r := newRun(t, intentData(500, 11), nil, defaultHP)
	if _, err := r.TrainEpoch(context.Background(), 1, nil); err != nil {
		t.Fatal(err)
	}
	blob, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	m, err := ReadModel(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	for _, text := range []string{"where is my package", "I was charged twice", "", "zzz unseen words only", "refund please, the app crashes"} {
		if got, want := m.Predict(text), s.Predict(text); got != want {
			t.Errorf("Predict(%q) = %+v, want the state's %+v", text, got, want)
		}
	}
	stateBytes := int64(4 * (len(s.W) + len(s.M) + len(s.V)))
	t.Logf("model %d bytes (%d feature rows), state weights and moments %d bytes", m.Bytes(), len(m.rows), stateBytes)
	if m.Bytes() <= 0 || m.Bytes() > stateBytes/20 {
		t.Errorf("model is %d bytes, want under 1/20 of the state's %d", m.Bytes(), stateBytes)
	}

	flipped := slices.Clone(blob)
	flipped[len(flipped)/2] ^= 0x40
	for name, bad := range map[string][]byte{
		"nil":       nil,
		"text":      []byte("hello, world"),
		"version":   append([]byte(checkpointMagic), 9),
		"truncated": blob[:len(blob)-10],
		"flipped":   flipped,
		"trailing":  withTrailingBody(t, blob, []byte{1, 2, 3}),
	} {
		if _, err := ReadModel(bytes.NewReader(bad)); !errors.Is(err, errCorrupt) {
			t.Errorf("%s: ReadModel = %v, want errCorrupt", name, err)
		}
		var st State
		if err := st.UnmarshalBinary(bad); !errors.Is(err, errCorrupt) {
			t.Errorf("%s: UnmarshalBinary = %v, want errCorrupt", name, err)
		}
	}
}

// withTrailingBody re-encodes a checkpoint with extra bytes at the end of
// its decompressed body.
func withTrailingBody(t *testing.T, blob, extra []byte) []byte {
	t.Helper()
	head := len(checkpointMagic) + 1
	zr, err := gzip.NewReader(bytes.NewReader(blob[head:]))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	out := bytes.NewBuffer(slices.Clone(blob[:head]))
	zw := gzip.NewWriter(out)
	if _, err := zw.Write(append(body, extra...)); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func TestLabelCheck(t *testing.T) {
	many := make([]Example, 10000)
	for i := range many {
		many[i] = Example{Label: fmt.Sprint("reply ", i)}
	}
	repeating := intentData(100, 12)
	for name, data := range map[string][]Example{
		"empty": nil, "one label": {{Label: "yes"}, {Label: "yes"}}, "free-form": many[:50],
		"all distinct": many, "64 labels": labelsCycling(64, 128), "65 labels": labelsCycling(65, 1000), "intents": repeating,
	} {
		var c LabelCheck
		for _, e := range data {
			c.Add(e.Label)
		}
		_, want := NewState(data, 1)
		if got := c.Err(); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: LabelCheck says %v, NewState %v", name, got, want)
		}
		if len(c.hashes) > MaxLabels+1 {
			t.Errorf("%s: LabelCheck remembers %d labels, want at most %d", name, len(c.hashes), MaxLabels+1)
		}
	}
}

func labelsCycling(labels, n int) []Example {
	out := make([]Example, n)
	for i := range out {
		out[i] = Example{Label: fmt.Sprint("label", i%labels)}
	}
	return out
}
