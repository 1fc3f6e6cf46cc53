package dataset

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
)

func chatLine(msgs ...Message) string {
	type msg struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	}
	var line struct {
		Messages []msg `json:"messages"`
	}
	for _, m := range msgs {
		line.Messages = append(line.Messages, msg(m))
	}
	b, err := json.Marshal(line)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func pcLine(prompt, completion string) string {
	b, err := json.Marshal(map[string]string{"prompt": prompt, "completion": completion})
	if err != nil {
		panic(err)
	}
	return string(b)
}

// prefLine is a preference (DPO) line: input messages and the two outputs.
func prefLine(preferred, nonPreferred string, input ...Message) string {
	type msg struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	}
	var line struct {
		Input struct {
			Messages []msg `json:"messages"`
		} `json:"input"`
		Preferred    []msg `json:"preferred_output"`
		NonPreferred []msg `json:"non_preferred_output"`
	}
	for _, m := range input {
		line.Input.Messages = append(line.Input.Messages, msg(m))
	}
	line.Preferred = []msg{{"assistant", preferred}}
	line.NonPreferred = []msg{{"assistant", nonPreferred}}
	b, err := json.Marshal(line)
	if err != nil {
		panic(err)
	}
	return string(b)
}

var (
	okChat = chatLine(Message{"system", "Be brief."}, Message{"user", "Hi"}, Message{"assistant", "Hello."})
	okPC   = pcLine("2+2=", "4")
	okPref = prefLine("Paris.", "I think it is Lyon.", Message{"system", "Be brief."}, Message{"user", "Capital of France?"})
)

func repeat(line string, n int) []string {
	ls := make([]string, n)
	for i := range ls {
		ls[i] = line
	}
	return ls
}

// file joins lines into a JSONL file.
func file(lines ...string) string {
	return strings.Join(lines, "\n") + "\n"
}

// withBad is a file of n good lines with bad ones at the given 1-based
// line numbers, so a test case reads as "line 3 is X".
func withBad(good string, n int, bad map[int]string) string {
	ls := repeat(good, n)
	for i, l := range bad {
		ls[i-1] = l
	}
	return file(ls...)
}

func TestScan(t *testing.T) {
	tests := []struct {
		name        string
		input       string
		opts        Options
		format      Format
		examples    int
		lines       int
		errs        []LineError // Message is a substring to find
		invalid     int
		problem     string // substring; "" means none
		errContains string // substring of ValidationError.Error()
	}{
		{name: "valid chat", input: file(repeat(okChat, 10)...), format: FormatChat, examples: 10, lines: 10},
		{name: "valid prompt/completion", input: file(repeat(okPC, 12)...), format: FormatPromptCompletion, examples: 12, lines: 12},
		{
			name:     "blank lines skipped but counted",
			input:    "\n" + file(repeat(okPC, 5)...) + "   \n\t\r\n" + file(repeat(okPC, 5)...) + "\n",
			format:   FormatPromptCompletion,
			examples: 10, lines: 14,
		},
		{
			name:     "BOM, CRLF and no final newline",
			input:    "\xEF\xBB\xBF" + strings.Join(repeat(okChat, 10), "\r\n"),
			format:   FormatChat,
			examples: 10, lines: 10,
		},
		{
			name:     "unknown keys ignored",
			input:    file(repeat(`{"prompt":"a","completion":"b","weight":1,"meta":{"x":[1]}}`, 10)...),
			format:   FormatPromptCompletion,
			examples: 10, lines: 10,
		},
		{name: "empty file", input: "", problem: "the file is empty", errContains: "the file is empty"},
		{name: "only blank lines", input: "\n  \n\r\n", lines: 3, problem: "empty"},
		{
			name:     "too few examples",
			input:    file(repeat(okChat, 9)...),
			format:   FormatChat,
			examples: 9, lines: 9,
			problem:     "found 9 examples; at least 10 are needed",
			errContains: "found 9 examples; at least 10 are needed",
		},
		{
			name:     "MinExamples option",
			input:    file(repeat(okChat, 3)...),
			opts:     Options{MinExamples: 3},
			format:   FormatChat,
			examples: 3, lines: 3,
		},
		{
			name:     "truncated JSON",
			input:    withBad(okChat, 11, map[int]string{3: `{"messages": [`}),
			format:   FormatChat,
			examples: 10, lines: 11,
			errs:    []LineError{{3, "invalid JSON (the line ends before the JSON object is complete; each example must be one JSON object on a single line)"}},
			invalid: 1,
		},
		{
			name:     "pretty-printed JSON",
			input:    file("{", `  "prompt": "a",`, `  "completion": "b"`, "}"),
			lines:    4,
			errs:     []LineError{{1, "line ends before"}, {2, `unexpected ':' at column 11 after the end of the JSON value`}, {3, "unexpected ':' at column 15"}, {4, `unexpected '}' at column 1`}},
			invalid:  4,
			problem:  "found 0 valid examples; at least 10 are needed",
			examples: 0,
		},
		{
			name:     "single quotes",
			input:    withBad(okPC, 11, map[int]string{2: `{"prompt": 'hi', "completion": "x"}`}),
			format:   FormatPromptCompletion,
			examples: 10, lines: 11,
			errs:    []LineError{{2, `invalid JSON (unexpected '\'' at column 12; keys and strings need straight double quotes ")`}},
			invalid: 1,
		},
		{
			name:     "trailing comma",
			input:    withBad(okPC, 11, map[int]string{5: `{"prompt":"a","completion":"b",}`}),
			format:   FormatPromptCompletion,
			examples: 10, lines: 11,
			errs:    []LineError{{5, "invalid JSON (unexpected '}' at column 32; expected a quoted key, check for a trailing comma)"}},
			invalid: 1,
		},
		{
			name:     "raw tab in string",
			input:    withBad(okPC, 11, map[int]string{1: "{\"prompt\":\"a\tb\",\"completion\":\"c\"}"}),
			format:   FormatPromptCompletion,
			examples: 10, lines: 11,
			errs:    []LineError{{1, `unexpected '\t' at column 13 inside a string`}},
			invalid: 1,
		},
		{
			name:     "not an object",
			input:    file(append(repeat(okPC, 10), `["a","b"]`, `"s"`, `12`, `true`, `null`)...),
			format:   FormatPromptCompletion,
			examples: 10, lines: 15,
			opts: Options{MaxErrors: 10},
			errs: []LineError{
				{11, "each line must be a JSON object, not an array"},
				{12, "each line must be a JSON object, not a string"},
				{13, "each line must be a JSON object, not a number"},
				{14, "each line must be a JSON object, not a boolean"},
				{15, "each line must be a JSON object, not null"},
			},
			invalid: 5,
		},
		{
			name:     "bad escape",
			input:    withBad(okPC, 11, map[int]string{3: `{"prompt":"C:\Users","completion":"b"}`}),
			format:   FormatPromptCompletion,
			examples: 10, lines: 11,
			errs:    []LineError{{3, `invalid JSON (unexpected 'U' at column 15 in a backslash escape; write a literal backslash as \\)`}},
			invalid: 1,
		},
		{
			name:     "wrong role",
			input:    withBad(okChat, 11, map[int]string{9: `{"messages":[{"role":"user","content":"a"},{"role":"bot","content":"b"}]}`}),
			format:   FormatChat,
			examples: 10, lines: 11,
			errs:    []LineError{{9, `message 2 has role "bot"; expected system, user or assistant`}},
			invalid: 1,
		},
		{
			name:     "long role is cut short",
			input:    withBad(okChat, 11, map[int]string{9: chatLine(Message{"user", "a"}, Message{strings.Repeat("é", 50), "b"})}),
			format:   FormatChat,
			examples: 10, lines: 11,
			errs:    []LineError{{9, `message 2 has role "` + strings.Repeat("é", 40) + `"...; expected system, user or assistant`}},
			invalid: 1,
		},
		{
			name:     "missing role",
			input:    withBad(okChat, 11, map[int]string{9: `{"messages":[{"content":"a"},{"role":"assistant","content":"b"}]}`}),
			format:   FormatChat,
			examples: 10, lines: 11,
			errs:    []LineError{{9, `message 1 "role" must be "system", "user" or "assistant" (it is missing)`}},
			invalid: 1,
		},
		{
			name:     "missing assistant",
			input:    withBad(okChat, 11, map[int]string{9: chatLine(Message{"system", "s"}, Message{"user", "u"})}),
			format:   FormatChat,
			examples: 10, lines: 11,
			errs:    []LineError{{9, "no assistant message; each example needs at least one"}},
			invalid: 1,
		},
		{
			name:     "missing user",
			input:    withBad(okChat, 11, map[int]string{2: chatLine(Message{"system", "s"}, Message{"assistant", "a"})}),
			format:   FormatChat,
			examples: 10, lines: 11,
			errs:    []LineError{{2, "no user message; each example needs at least one"}},
			invalid: 1,
		},
		{
			name:     "last message not from assistant",
			input:    withBad(okChat, 11, map[int]string{7: chatLine(Message{"user", "u"}, Message{"assistant", "a"}, Message{"user", "u2"})}),
			format:   FormatChat,
			examples: 10, lines: 11,
			errs:    []LineError{{7, "the last message must be from the assistant (it is from the user)"}},
			invalid: 1,
		},
		{
			name:     "non-string, null, blank and missing content",
			input:    file(append(repeat(okChat, 10), `{"messages":[{"role":"user","content":42},{"role":"assistant","content":"a"}]}`, `{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":null}]}`, chatLine(Message{"user", " \n "}, Message{"assistant", "a"}), `{"messages":[{"role":"user"},{"role":"assistant","content":"a"}]}`)...),
			format:   FormatChat,
			examples: 10, lines: 14,
			errs: []LineError{
				{11, "message 1 content must be a non-empty string (it is a number)"},
				{12, "message 2 content must be a non-empty string (it is null)"},
				{13, "message 1 content must be a non-empty string (it is only whitespace)"},
				{14, "message 1 content must be a non-empty string (it is missing)"},
			},
			invalid: 4,
		},
		{
			name:     "messages not an array of objects",
			input:    file(append(repeat(okChat, 10), `{"messages":"hi"}`, `{"messages":["hi"]}`, `{"messages":[]}`)...),
			format:   FormatChat,
			examples: 10, lines: 13,
			errs: []LineError{
				{11, `"messages" must be an array of {"role","content"} objects`},
				{12, `"messages" must be an array of {"role","content"} objects`},
				{13, `"messages" is empty; add at least one user and one assistant message`},
			},
			invalid: 3,
		},
		{
			name:     "prompt/completion problems",
			input:    file(append(repeat(okPC, 10), `{"prompt":"a"}`, `{"prompt":"","completion":"b"}`, `{"prompt":["a"],"completion":"b"}`, `{"prompt":"a","completion":{"text":"b"}}`)...),
			format:   FormatPromptCompletion,
			examples: 10, lines: 14,
			errs: []LineError{
				{11, `"completion" must be a non-empty string (it is missing)`},
				{12, `"prompt" must be a non-empty string (it is empty)`},
				{13, `"prompt" must be a non-empty string (it is an array)`},
				{14, `"completion" must be a non-empty string (it is an object)`},
			},
			invalid: 4,
		},
		{
			name:     "neither format and both formats in a line",
			input:    file(append(repeat(okPC, 10), `{"text":"a"}`, `{"messages":[],"prompt":"a","completion":"b"}`)...),
			format:   FormatPromptCompletion,
			examples: 10, lines: 12,
			errs: []LineError{
				{11, `expected {"messages":[...]} (chat format), {"prompt":"...","completion":"..."} or {"input":{"messages":[...]},"preferred_output":[...],"non_preferred_output":[...]} (preference format); found none of them`},
				{12, `has both "messages" and "prompt"/"completion"; use one format per line`},
			},
			invalid: 2,
		},
		{
			name:     "formats mixed across lines",
			input:    file(append(repeat(okChat, 11), okPC, `{"prompt":"","completion":"b"}`, okChat)...),
			format:   FormatChat,
			examples: 12, lines: 14,
			errs: []LineError{
				{12, "uses prompt/completion format but earlier lines (from line 1) use chat messages format; use one format in the whole file"},
				{13, "uses prompt/completion format but earlier lines"},
			},
			invalid: 2,
		},
		{name: "valid preference", input: file(repeat(okPref, 10)...), format: FormatPreference, examples: 10, lines: 10},
		{
			name: "preference with tools and null keys of other formats",
			input: file(repeat(`{"input":{"messages":[{"role":"user","content":"hi"}],"tools":[],"parallel_tool_calls":false},`+
				`"preferred_output":[{"role":"assistant","content":"Hello!"}],"non_preferred_output":[{"role":"assistant","content":"What?"}],"messages":null}`, 10)...),
			format:   FormatPreference,
			examples: 10, lines: 10,
		},
		{
			name: "preference problems",
			input: file(append(repeat(okPref, 10),
				`{"input":{"messages":[{"role":"user","content":"q"}]},"preferred_output":[{"role":"assistant","content":"a"}]}`,
				`{"preferred_output":[{"role":"assistant","content":"a"}],"non_preferred_output":[{"role":"assistant","content":"b"}]}`,
				`{"input":[],"preferred_output":[{"role":"assistant","content":"a"}],"non_preferred_output":[{"role":"assistant","content":"b"}]}`,
				`{"input":{"messages":[]},"preferred_output":[{"role":"assistant","content":"a"}],"non_preferred_output":[{"role":"assistant","content":"b"}]}`,
				prefLine("a", "b", Message{"user", "q"}, Message{"assistant", "x"}),
				prefLine("a", "b", Message{"system", "s"}),
				prefLine("a", "b", Message{"user", "q"}, Message{"bot", "x"}),
				prefLine("same", "same", Message{"user", "q"}),
				`{"input":{"messages":[{"role":"user","content":"q"}]},"preferred_output":[{"role":"user","content":"a"}],"non_preferred_output":[{"role":"assistant","content":"b"}]}`,
				`{"input":{"messages":[{"role":"user","content":"q"}]},"preferred_output":[{"role":"assistant","content":"a"}],"non_preferred_output":[]}`,
				`{"input":{"messages":[{"role":"user","content":"q"}]},"preferred_output":{"role":"assistant","content":"a"},"non_preferred_output":[{"role":"assistant","content":"b"}]}`,
				`{"input":{"messages":[{"role":"user","content":"q"}]},"preferred_output":[{"role":"assistant","content":""}],"non_preferred_output":[{"role":"assistant","content":"b"}]}`,
				`{"input":{"messages":[{"role":"user","content":"q"}],"tools":{}},"preferred_output":[{"role":"assistant","content":"a"}],"non_preferred_output":[{"role":"assistant","content":"b"}]}`,
			)...),
			opts:     Options{MaxErrors: 20},
			format:   FormatPreference,
			examples: 10, lines: 23,
			errs: []LineError{
				{11, `"non_preferred_output" must be an array of one {"role":"assistant","content":"..."} message (it is missing)`},
				{12, `"input" is missing`},
				{13, `"input" must be an object with "messages"`},
				{14, `"input.messages" is missing or empty`},
				{15, "the last input message must be from the user, whom both outputs answer (it is from the assistant)"},
				{16, "no user message in the input"},
				{17, `input message 2 has role "bot"; expected system, user or assistant`},
				{18, `"preferred_output" and "non_preferred_output" are the same`},
				{19, `"preferred_output" must be an assistant message (its role is "user")`},
				{20, `"non_preferred_output" must be an array of one {"role":"assistant","content":"..."} message (it has 0)`},
				{21, `"preferred_output" must be an array of one`},
				{22, `"preferred_output" content must be a non-empty string (it is empty)`},
				{23, `"input.tools" must be an array`},
			},
			invalid: 13,
		},
		{
			name:     "preference and chat mixed",
			input:    file(append(repeat(okPref, 10), okChat, `{"messages":[{"role":"user","content":"q"}],"input":{}}`)...),
			format:   FormatPreference,
			examples: 10, lines: 12,
			errs: []LineError{
				{11, "uses chat messages format but earlier lines (from line 1) use preference (DPO) format; use one format in the whole file"},
				{12, `has both "input"/"preferred_output"/"non_preferred_output" (preference format) and the keys of another format`},
			},
			invalid: 2,
		},
		{
			name:     "preference longer than MaxSequenceLength",
			input:    withBad(prefLine("a", "b", Message{"user", "q"}), 11, map[int]string{4: prefLine("one two three four", "no", Message{"user", "q"})}), // 1 + 5
			opts:     Options{MaxSequenceLength: 5},
			format:   FormatPreference,
			examples: 10, lines: 11,
			errs:    []LineError{{4, "input with its longer output has about 6 tokens, more than the 5 allowed"}},
			invalid: 1,
		},
		{
			name:     "example longer than MaxSequenceLength",
			input:    withBad(okPC, 11, map[int]string{6: pcLine("one two three four five", "six")}), // "thre|e": 7 tokens
			opts:     Options{MaxSequenceLength: 5},
			format:   FormatPromptCompletion,
			examples: 10, lines: 11,
			errs:    []LineError{{6, "example has about 7 tokens, more than the 5 allowed (the base model's maxSequenceLength); shorten it or split it into several examples"}},
			invalid: 1,
		},
		{
			name:     "more invalid lines than MaxErrors",
			input:    withBad(okPC, 14, map[int]string{2: "x", 5: "{", 6: "{}", 13: "[]"}),
			opts:     Options{MaxErrors: 2},
			format:   FormatPromptCompletion,
			examples: 10, lines: 14,
			errs:        []LineError{{2, "invalid JSON"}, {5, "invalid JSON"}},
			invalid:     4,
			errContains: `4 of 14 lines are invalid: line 2: invalid JSON (unexpected 'x' at column 1); line 5: invalid JSON (the line ends before`,
		},
		{
			name:        "file problem comes first",
			input:       file(okPC, "nope"),
			format:      FormatPromptCompletion,
			examples:    1,
			lines:       2,
			errs:        []LineError{{2, "invalid JSON"}},
			invalid:     1,
			problem:     "found 1 valid examples; at least 10 are needed",
			errContains: "found 1 valid examples; at least 10 are needed; 1 of 2 lines is invalid: line 2: invalid JSON (unexpected 'o' at column 2)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var seen []int
			sum, err := Scan(context.Background(), strings.NewReader(tt.input), tt.opts, func(ex Example) error {
				seen = append(seen, ex.Line)
				return nil
			})
			if sum.Format != tt.format || sum.Examples != tt.examples || sum.Lines != tt.lines {
				t.Errorf("summary = %+v; want format %q, %d examples, %d lines", sum, tt.format, tt.examples, tt.lines)
			}
			if len(seen) != tt.examples {
				t.Errorf("fn called %d times; want %d", len(seen), tt.examples)
			}
			wantValid := tt.invalid == 0 && tt.problem == ""
			if wantValid {
				if err != nil {
					t.Fatalf("Scan error = %v; want nil", err)
				}
				return
			}
			var verr *ValidationError
			if !errors.As(err, &verr) {
				t.Fatalf("Scan error = %v (%T); want *ValidationError", err, err)
			}
			if verr.Invalid != tt.invalid {
				t.Errorf("Invalid = %d; want %d (%v)", verr.Invalid, tt.invalid, verr)
			}
			if verr.Total != tt.lines {
				t.Errorf("Total = %d; want %d", verr.Total, tt.lines)
			}
			if len(verr.Lines) != len(tt.errs) {
				t.Fatalf("got %d line errors; want %d: %v", len(verr.Lines), len(tt.errs), verr.Lines)
			}
			for i, want := range tt.errs {
				got := verr.Lines[i]
				if got.Line != want.Line || !strings.Contains(got.Message, want.Message) {
					t.Errorf("line error %d = %q; want line %d containing %q", i, got.Error(), want.Line, want.Message)
				}
			}
			if (tt.problem == "") != (verr.Problem == "") || !strings.Contains(verr.Problem, tt.problem) {
				t.Errorf("Problem = %q; want it to contain %q", verr.Problem, tt.problem)
			}
			if !strings.Contains(verr.Error(), tt.errContains) {
				t.Errorf("Error() = %q; want it to contain %q", verr.Error(), tt.errContains)
			}
		})
	}
}

func TestScanExamples(t *testing.T) {
	input := file(okPC, "", `{"prompt":"tab\tquote\" \u00e9","completion":"ok"}`)
	var got []Example
	sum, err := Scan(context.Background(), strings.NewReader(input), Options{MinExamples: 1}, func(ex Example) error {
		got = append(got, ex)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []Example{
		{Line: 1, Messages: []Message{{"user", "2+2="}, {"assistant", "4"}}},
		{Line: 3, Messages: []Message{{"user", "tab\tquote\" é"}, {"assistant", "ok"}}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("examples = %+v; want %+v", got, want)
	}
	// 2 + 2 = | 4 is 5 tokens; tab quot|e " é | ok is 6.
	if sum.Tokens != 11 || sum.MaxTokens != 6 {
		t.Errorf("Tokens, MaxTokens = %d, %d; want 11, 6", sum.Tokens, sum.MaxTokens)
	}
}

func TestScanLongLine(t *testing.T) {
	long := pcLine(strings.Repeat("a", maxLineBytes), "b")
	input := file(append([]string{okPC, long}, repeat(okPC, 10)...)...)
	sum, err := Scan(context.Background(), strings.NewReader(input), Options{}, nil)
	var verr *ValidationError
	if !errors.As(err, &verr) {
		t.Fatalf("Scan error = %v; want *ValidationError", err)
	}
	want := []LineError{{2, "the line is longer than 4 MiB; shorten the example"}}
	if !reflect.DeepEqual(verr.Lines, want) || verr.Invalid != 1 {
		t.Errorf("line errors = %v (%d invalid); want %v", verr.Lines, verr.Invalid, want)
	}
	if sum.Examples != 11 || sum.Lines != 12 {
		t.Errorf("summary = %+v; want 11 examples in 12 lines", sum)
	}
}

func TestLineReader(t *testing.T) {
	type result struct {
		line    string
		tooLong bool
	}
	tests := []struct {
		name  string
		input string
		want  []result
	}{
		{"no final newline", "a\nb", []result{{"a", false}, {"b", false}}},
		{"CRLF and blank", "a\r\n\r\nb\n", []result{{"a", false}, {"", false}, {"b", false}}},
		{"exactly max with CRLF", "12345678901234567890\r\nx", []result{{"12345678901234567890", false}, {"x", false}}},
		{"one over max", "123456789012345678901\nx\n", []result{{"", true}, {"x", false}}},
		{"far over max", strings.Repeat("y", 100) + "\nx", []result{{"", true}, {"x", false}}},
		{"over max at EOF", strings.Repeat("y", 100), []result{{"", true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A 16-byte buffer makes lines span several ReadSlice calls.
			lr := lineReader{br: bufio.NewReaderSize(strings.NewReader(tt.input), 16), max: 20}
			var got []result
			for {
				line, tooLong, err := lr.next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, result{string(line), tooLong})
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("lines = %+v; want %+v", got, tt.want)
			}
		})
	}
}

// failingReader returns its data, then err instead of io.EOF.
type failingReader struct {
	data string
	err  error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if r.data == "" {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestScanStops(t *testing.T) {
	errDisk := errors.New("connection reset")
	errStop := errors.New("stop")
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name     string
		ctx      context.Context
		r        io.Reader
		fn       func(Example) error
		want     error
		examples int
	}{
		{
			name:     "read error",
			ctx:      context.Background(),
			r:        &failingReader{data: file(okPC, okPC, "{bad"), err: errDisk},
			want:     errDisk,
			examples: 2,
		},
		{
			name: "read error mid-line",
			ctx:  context.Background(),
			r:    &failingReader{data: okPC + "\n" + okPC[:5], err: errDisk},
			want: errDisk, examples: 1,
		},
		{
			name: "canceled context",
			ctx:  canceled,
			r:    strings.NewReader(file(repeat(okPC, 10)...)),
			want: context.Canceled,
		},
		{
			name:     "callback error",
			ctx:      context.Background(),
			r:        strings.NewReader(file(repeat(okPC, 10)...)),
			fn:       func(ex Example) error { return fmt.Errorf("at %d: %w", ex.Line, errStop) },
			want:     errStop,
			examples: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sum, err := Scan(tt.ctx, tt.r, Options{}, tt.fn)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Scan error = %v; want %v", err, tt.want)
			}
			var verr *ValidationError
			if errors.As(err, &verr) {
				t.Errorf("Scan error %v is a *ValidationError; want it distinct", err)
			}
			if sum.Examples != tt.examples {
				t.Errorf("Examples = %d; want %d", sum.Examples, tt.examples)
			}
		})
	}
}

func TestValidationErrorMessage(t *testing.T) {
	tests := []struct {
		err  ValidationError
		want string
	}{
		{
			err:  ValidationError{Problem: "the file is empty"},
			want: "the file is empty",
		},
		{
			err: ValidationError{
				Lines:   []LineError{{4, "invalid JSON (unexpected 'x' at column 1)"}, {9, `message 2 has role "bot"; expected system, user or assistant`}},
				Invalid: 3,
				Total:   120,
			},
			want: `3 of 120 lines are invalid: line 4: invalid JSON (unexpected 'x' at column 1); line 9: message 2 has role "bot"; expected system, user or assistant; and 1 more`,
		},
		{
			err: ValidationError{
				Lines:   []LineError{{2, "oops"}},
				Invalid: 1,
				Total:   3,
				Problem: "found 2 valid examples; at least 10 are needed",
			},
			want: "found 2 valid examples; at least 10 are needed; 1 of 3 lines is invalid: line 2: oops",
		},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q; want %q", got, tt.want)
		}
	}
}

func TestCountTokens(t *testing.T) {
	tests := []struct {
		in   string
		want int
	}{
		{"", 0},
		{"   \n\t", 0},
		{"a", 1},
		{"abcd", 1},
		{"abcde", 2},
		{"Hello, world!", 6},            // hell|o , worl|d !
		{"x = 12345678", 4},             // x = 1234|5678
		{"naïve café", 3},               // letters beyond ASCII stay in the run
		{"日本語のテキスト", 2},                 // 8 letters without spaces: undercounted
		{"a-b", 3},                      // symbols split runs
		{"emoji 🙂🙂", 4},                 // 2 for "emoji", 1 per symbol
		{strings.Repeat("ab ", 10), 10}, // each short word is one token
	}
	for _, tt := range tests {
		if got := CountTokens(tt.in); got != tt.want {
			t.Errorf("CountTokens(%q) = %d; want %d", tt.in, got, tt.want)
		}
	}
}

func TestExampleAccessors(t *testing.T) {
	tests := []struct {
		name          string
		msgs          []Message
		input, target string
		tokens        int
	}{
		{
			name:   "prompt/completion",
			msgs:   []Message{{"user", "What is 2+2?"}, {"assistant", "4"}},
			input:  "What is 2+2?",
			target: "4",
			tokens: 7, // what is 2 + 2 ? | 4
		},
		{
			name: "multi-turn chat",
			msgs: []Message{
				{"system", "Label sentiment."},
				{"user", "I love it"},
				{"assistant", "positive"},
				{"user", "I hate it"},
				{"assistant", "negative"},
			},
			input:  "Label sentiment.\nI love it\nI hate it",
			target: "negative",
			tokens: 16, // labe|l sent|imen|t . = 6, then 3, 2, 3, 2
		},
		{
			name:   "no assistant",
			msgs:   []Message{{"user", "hi"}},
			input:  "hi",
			target: "",
			tokens: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ex := Example{Messages: tt.msgs}
			if got := ex.Input(); got != tt.input {
				t.Errorf("Input() = %q; want %q", got, tt.input)
			}
			if got := ex.Target(); got != tt.target {
				t.Errorf("Target() = %q; want %q", got, tt.target)
			}
			if got := ex.Tokens(); got != tt.tokens {
				t.Errorf("Tokens() = %d; want %d", got, tt.tokens)
			}
		})
	}
}

func TestPreferenceExample(t *testing.T) {
	var got []Example
	sum, err := Scan(context.Background(), strings.NewReader(file(repeat(okPref, 10)...)), Options{}, func(e Example) error {
		got = append(got, e)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ex := got[0]
	want := Example{Line: 1, Messages: []Message{{"system", "Be brief."}, {"user", "Capital of France?"}}, Preferred: "Paris.", NonPreferred: "I think it is Lyon."}
	if !reflect.DeepEqual(ex, want) {
		t.Fatalf("example = %+v; want %+v", ex, want)
	}
	// Be brie|f . = 4, capi|tal of fran|ce ? = 6; pari|s . = 3; I thin|k it is Lyon . = 7.
	if ex.Target() != "Paris." || ex.Input() != "Be brief.\nCapital of France?" || ex.Tokens() != 20 || ex.SequenceTokens() != 17 {
		t.Errorf("target %q, input %q, tokens %d, sequence tokens %d", ex.Target(), ex.Input(), ex.Tokens(), ex.SequenceTokens())
	}
	if sum.Tokens != 200 || sum.MaxTokens != 17 {
		t.Errorf("summary %+v; want 200 tokens, at most 17 in a sequence", sum)
	}
}

func BenchmarkScan(b *testing.B) {
	var sb strings.Builder
	for i := range 10000 {
		sb.WriteString(chatLine(
			Message{"system", "You are a support assistant for an online store."},
			Message{"user", fmt.Sprintf("Order #%d arrived damaged: the box was crushed and two items are broken. What can I do?", i)},
			Message{"assistant", strings.Repeat("We are sorry to hear that. Please send a photo and we will ship replacements. ", 1+i%5)},
		))
		sb.WriteByte('\n')
	}
	data := sb.String()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Scan(context.Background(), strings.NewReader(data), Options{}, nil); err != nil {
			b.Fatal(err)
		}
	}
}
