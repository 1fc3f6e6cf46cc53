package command

import (
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestSplit(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"python3 trainers/hf/train.py", []string{"python3", "trainers/hf/train.py"}},
		{"  a\t b  ", []string{"a", "b"}},
		{`run --name 'two words' "x \"y\" \$z \q"`, []string{"run", "--name", "two words", `x "y" $z \q`}},
		{`a\ b ''`, []string{"a b", ""}},
		{`it's' 'ok`, nil},
	} {
		got, err := Split(tc.in)
		if tc.want == nil {
			if err == nil {
				t.Errorf("Split(%q) = %q, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Split(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	if _, err := Split("   "); err == nil {
		t.Error("Split of blanks: want an error")
	}
}

func TestParseLine(t *testing.T) {
	p := parseLine(`{"type":"progress","step":3,"epoch":1,"loss":0.5,"learningRate":0.0002,"tokens":1200}`)
	if p.progress == nil || !reflect.DeepEqual(*p.progress, Progress{Step: 3, Epoch: 1, Loss: 0.5, LearningRate: 0.0002, Tokens: 1200}) {
		t.Errorf("progress: %+v", p)
	}
	// Protocol 1.1: a progress message may carry the trainer's own metrics.
	p = parseLine(`{"type":"progress","step":4,"epoch":1,"loss":0.69,"metrics":{"rewardMargin":0.25,"rewardAccuracy":0.75}}`)
	if p.progress == nil || !reflect.DeepEqual(p.progress.Metrics, map[string]float64{"rewardMargin": 0.25, "rewardAccuracy": 0.75}) {
		t.Errorf("progress with metrics: %+v", p)
	}
	p = parseLine(`{"type":"result","step":9,"trainingLoss":0.1,"validationLoss":null,"tokens":5,"outputPath":"output/adapter"}`)
	if p.result == nil || p.result.ValidationLoss != nil || p.result.OutputPath != "output/adapter" {
		t.Errorf("result: %+v", p)
	}
	p = parseLine(`{"type":"evaluating","step":40,"done":128,"total":1000}`)
	if p.evaluating == nil || *p.evaluating != (EvalProgress{Step: 40, Done: 128, Total: 1000}) {
		t.Errorf("evaluating: %+v", p)
	}
	if p = parseLine(`{"type":"evaluating"}`); p.evaluating == nil || *p.evaluating != (EvalProgress{}) {
		t.Errorf("evaluating without its optional fields: %+v", p)
	}
	p = parseLine(`{"type":"log","level":"loud","message":"hi"}`)
	if p.log == nil || p.log.level != LevelInfo {
		t.Errorf("log with an unknown level: %+v", p)
	}
	// Protocol 1.1: rank 0 alone speaks for a trainer of several processes.
	if p = parseLine(`{"type":"checkpoint","step":3,"path":"checkpoints/step-3","rank":0}`); p.checkpoint == nil {
		t.Errorf("rank 0's checkpoint: %+v", p)
	}
	for _, line := range []string{"plain text", `{"type":"telemetry","x":1}`, `{"no type"`, `[1,2]`,
		`{"type":"progress","step":3,"epoch":1,"loss":1,"rank":1}`, `{"type":"result","step":"bad","rank":2}`} {
		if p := parseLine(line); p != (parsed{}) {
			t.Errorf("parseLine(%q) = %+v; want no message", line, p)
		}
	}
	for _, line := range []string{`{"type":"progress","step":"three","epoch":1,"loss":1}`, `{"type":"checkpoint","step":3}`, `{"type":"eval","step":3}`,
		`{"type":"progress","step":3,"epoch":1,"loss":1,"metrics":{"rewardMargin":"high"}}`} {
		if p := parseLine(line); !strings.Contains(p.malformed, "message") {
			t.Errorf("parseLine(%q) = %+v; want it reported as malformed", line, p)
		}
	}
}

func TestJoinIsSplitsInverse(t *testing.T) {
	for _, words := range [][]string{
		{"python3", "train.py", "--init-tiny"},
		{"/path with spaces/python", "it's", "", `a"b\c`, "$HOME", "é"},
	} {
		got, err := Split(Join(words...))
		if err != nil || !slices.Equal(got, words) {
			t.Errorf("Split(Join(%q)) = %q, %v", words, got, err)
		}
	}
}
