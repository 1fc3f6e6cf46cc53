package dataset

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"unicode/utf8"
)

// FuzzScan feeds the validator arbitrary files: it must not panic, must
// call bad data a *ValidationError whose line errors name real lines in
// order, and must pass on only examples with something to learn.
func FuzzScan(f *testing.F) {
	for _, seed := range []string{
		`{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"billing"}]}` + "\n",
		`{"prompt":"hi","completion":"billing"}` + "\n" + `{"prompt":"x"}` + "\n",
		`{"input":{"messages":[{"role":"user","content":"hi"}]},"preferred_output":[{"role":"assistant","content":"a"}],"non_preferred_output":[{"role":"assistant","content":"b"}]}` + "\n",
		"\n\n{\n", `{"messages":[{"role":"assistant","content":""}]}`, `[1,2]`, "\xff\xfe", `{"messages":null}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var got []Example
		sum, err := Scan(context.Background(), bytes.NewReader(data), Options{MinExamples: 1, MaxErrors: 3}, func(e Example) error {
			got = append(got, e)
			return nil
		})
		if lines := bytes.Count(data, []byte("\n")) + 1; sum.Lines > lines {
			t.Fatalf("read %d lines of a file of at most %d", sum.Lines, lines)
		}
		if sum.Examples != len(got) {
			t.Fatalf("summary counts %d examples, the callback saw %d", sum.Examples, len(got))
		}
		last := 0
		for _, e := range got {
			if e.Line <= last || e.Line > sum.Lines {
				t.Fatalf("example at line %d after line %d of %d", e.Line, last, sum.Lines)
			}
			last = e.Line
			if e.Target() == "" || !utf8.ValidString(e.Input()) || !utf8.ValidString(e.Target()) || e.Tokens() < 0 {
				t.Fatalf("line %d passed with target %q, input %q", e.Line, e.Target(), e.Input())
			}
		}
		if err == nil {
			return
		}
		var verr *ValidationError
		if !errors.As(err, &verr) {
			t.Fatalf("bad data is not a ValidationError: %v", err)
		}
		if verr.Error() == "" || len(verr.Lines) > 3 || verr.Invalid < len(verr.Lines) {
			t.Fatalf("validation error %+v", verr)
		}
		prev := 0
		for _, le := range verr.Lines {
			if le.Line <= prev || le.Line > sum.Lines || le.Message == "" {
				t.Fatalf("line error %+v after line %d of %d", le, prev, sum.Lines)
			}
			prev = le.Line
		}
	})
}
