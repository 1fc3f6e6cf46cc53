package command

import (
	"strings"
	"testing"
)

// FuzzParseLine feeds the protocol's line parser arbitrary stdout lines:
// it must not panic, and a line is at most one thing (a message, or a
// malformed one with a reason).
func FuzzParseLine(f *testing.F) {
	for _, seed := range []string{
		`{"type":"progress","step":10,"epoch":1,"loss":0.5,"learningRate":0.0002,"tokens":120}`,
		`{"type":"eval","step":10,"validationLoss":0.4,"metrics":{"accuracy":0.9}}`,
		`{"type":"checkpoint","step":10,"epoch":1,"path":"ckpt"}`,
		`{"type":"log","level":"warn","message":"slow"}`,
		`{"type":"result","step":10,"trainingLoss":0.3,"outputPath":"out"}`,
		`{"type":"progress","step":"ten"}`, `{"type":"log"}`, `not json`, `{"type":1}`, ` {`,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, line string) {
		p := parseLine(line)
		set := 0
		for _, ok := range []bool{p.progress != nil, p.eval != nil, p.checkpoint != nil, p.log != nil, p.result != nil, p.malformed != ""} {
			if ok {
				set++
			}
		}
		if set > 1 {
			t.Fatalf("%q parsed as %d things: %+v", line, set, p)
		}
		if set > 0 && !strings.HasPrefix(strings.TrimSpace(line), "{") {
			t.Fatalf("%q is not a JSON object but parsed as %+v", line, p)
		}
		if p.log != nil && p.log.level != LevelInfo && p.log.level != LevelWarn && p.log.level != LevelError {
			t.Fatalf("%q logs at level %q", line, p.log.level)
		}
	})
}

// FuzzSplit feeds the command-line splitter arbitrary lines: no panic,
// and a line without quotes or backslashes splits at its blanks (space,
// tab, newline) with every byte kept.
func FuzzSplit(f *testing.F) {
	for _, seed := range []string{`python3 trainers/hf/train.py`, `a 'b c' "d \"e\"" f\ g`, `"open`, `'`, `\`, ``} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, line string) {
		words, err := Split(line)
		if err != nil {
			return
		}
		if !strings.ContainsAny(line, `'"\`) {
			blank := func(r rune) bool { return r == ' ' || r == '\t' || r == '\n' }
			if want := strings.FieldsFunc(line, blank); strings.Join(words, "\x00") != strings.Join(want, "\x00") {
				t.Fatalf("%q split as %q, want %q", line, words, want)
			}
		}
	})
}
