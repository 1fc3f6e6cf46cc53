package dataset

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// jsonSpace is the whitespace JSON allows around values; a line of only
// these is blank.
const jsonSpace = " \t\r\n"

// text captures a JSON value that should be a string. Unlike a plain string
// field it remembers whether the key was present and what kind of value it
// held, so errors can say "it is a number" rather than fail to decode.
type text struct {
	kind byte // first byte of the JSON value; 0 when the key is absent
	s    string
}

// UnmarshalJSON records the value's kind and, for strings, its text. It
// never fails, so wrong types become validation messages, not decode errors.
func (t *text) UnmarshalJSON(b []byte) error {
	t.kind = b[0]
	if t.kind != '"' {
		return nil
	}
	// Most strings have no escapes; skip the second decode for them. The
	// caller's decode already rejected control characters.
	if bytes.IndexByte(b, '\\') < 0 && utf8.Valid(b) {
		t.s = string(b[1 : len(b)-1])
		return nil
	}
	return json.Unmarshal(b, &t.s)
}

// present treats null like an absent key, as JSON producers commonly do.
func (t text) present() bool { return t.kind != 0 && t.kind != 'n' }

// problem says why t is not a non-empty string, or returns "" if it is one.
func (t text) problem() string {
	switch {
	case t.kind == 0:
		return "it is missing"
	case t.kind != '"':
		return "it is " + kindName(t.kind)
	case t.s == "":
		return "it is empty"
	case strings.TrimSpace(t.s) == "":
		return "it is only whitespace"
	}
	return ""
}

// kindName names a JSON value by its first byte.
func kindName(c byte) string {
	switch c {
	case '"':
		return "a string"
	case '{':
		return "an object"
	case '[':
		return "an array"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

type rawMessage struct {
	Role    text `json:"role"`
	Content text `json:"content"`
}

// rawLine holds the keys of every format; other keys are ignored. The
// preference format's are kept raw and decoded once the line is known to
// be in it, so a mistyped one is reported by name.
type rawLine struct {
	Messages           []rawMessage    `json:"messages"`
	Prompt             text            `json:"prompt"`
	Completion         text            `json:"completion"`
	Input              json.RawMessage `json:"input"`
	PreferredOutput    json.RawMessage `json:"preferred_output"`
	NonPreferredOutput json.RawMessage `json:"non_preferred_output"`
}

// rawInput is a preference line's input: a conversation, with the tools
// it may call.
type rawInput struct {
	Messages          []rawMessage    `json:"messages"`
	Tools             json.RawMessage `json:"tools"`
	ParallelToolCalls json.RawMessage `json:"parallel_tool_calls"`
}

// present treats null like an absent key, as JSON producers commonly do.
func present(raw json.RawMessage) bool {
	return len(raw) > 0 && !bytes.Equal(raw, []byte("null"))
}

const messagesShape = `"messages" must be an array of {"role","content"} objects`

// parseLine parses one non-blank line. It returns the format the line is
// written in whenever that is clear, even if the line is invalid, so that
// mixed-format files are reported as such; problem is "" for a valid line.
func parseLine(line []byte) (ex Example, format Format, problem string) {
	var raw rawLine
	err := json.Unmarshal(line, &raw)
	var syn *json.SyntaxError
	if errors.As(err, &syn) {
		return ex, "", syntaxProblem(line, syn)
	}
	if c := bytes.TrimLeft(line, jsonSpace)[0]; c != '{' {
		return ex, "", "each line must be a JSON object, not " + kindName(c)
	}
	if err != nil {
		// The text and raw fields never fail, so only "messages" can be
		// mistyped.
		return ex, FormatChat, messagesShape
	}

	chat := raw.Messages != nil
	pc := raw.Prompt.present() || raw.Completion.present()
	pref := present(raw.Input) || present(raw.PreferredOutput) || present(raw.NonPreferredOutput)
	switch {
	case chat && pc:
		return ex, "", `has both "messages" and "prompt"/"completion"; use one format per line`
	case pref && (chat || pc):
		return ex, "", `has both "input"/"preferred_output"/"non_preferred_output" (preference format) and the keys of another format; use one format per line`
	case chat:
		ex.Messages, problem = chatMessages(raw.Messages)
		return ex, FormatChat, problem
	case pc:
		if p := raw.Prompt.problem(); p != "" {
			return ex, FormatPromptCompletion, `"prompt" must be a non-empty string (` + p + ")"
		}
		if p := raw.Completion.problem(); p != "" {
			return ex, FormatPromptCompletion, `"completion" must be a non-empty string (` + p + ")"
		}
		ex.Messages = []Message{{Role: "user", Content: raw.Prompt.s}, {Role: "assistant", Content: raw.Completion.s}}
		return ex, FormatPromptCompletion, ""
	case pref:
		ex, problem = preferencePair(raw)
		return ex, FormatPreference, problem
	}
	return ex, "", `expected {"messages":[...]} (chat format), {"prompt":"...","completion":"..."} or ` +
		`{"input":{"messages":[...]},"preferred_output":[...],"non_preferred_output":[...]} (preference format); found none of them`
}

// chatMessages validates a chat line's messages; it reports the first problem.
func chatMessages(raw []rawMessage) ([]Message, string) {
	if len(raw) == 0 {
		return nil, `"messages" is empty; add at least one user and one assistant message`
	}
	msgs, users, assistants, problem := messages(raw, "message")
	switch {
	case problem != "":
		return nil, problem
	case users == 0:
		return nil, "no user message; each example needs at least one"
	case assistants == 0:
		return nil, "no assistant message; each example needs at least one"
	case msgs[len(msgs)-1].Role != "assistant":
		return nil, fmt.Sprintf("the last message must be from the assistant (it is from the %s)", msgs[len(msgs)-1].Role)
	}
	return msgs, ""
}

// messages checks each message's role and content, naming a bad one as
// "<what> <n>", and counts the user and assistant messages.
func messages(raw []rawMessage, what string) (msgs []Message, users, assistants int, problem string) {
	msgs = make([]Message, len(raw))
	for i, m := range raw {
		if m.Role.kind != '"' {
			return nil, 0, 0, fmt.Sprintf(`%s %d "role" must be "system", "user" or "assistant" (%s)`, what, i+1, m.Role.problem())
		}
		switch m.Role.s {
		case "user":
			users++
		case "assistant":
			assistants++
		case "system":
		default:
			return nil, 0, 0, fmt.Sprintf("%s %d has role %s; expected system, user or assistant", what, i+1, quoteShort(m.Role.s))
		}
		if p := m.Content.problem(); p != "" {
			return nil, 0, 0, fmt.Sprintf("%s %d content must be a non-empty string (%s)", what, i+1, p)
		}
		msgs[i] = Message{Role: m.Role.s, Content: m.Content.s}
	}
	return msgs, users, assistants, ""
}

const inputShape = `"input" must be an object with "messages", an array of {"role","content"} objects`

// preferencePair validates a preference line, OpenAI's DPO format: an input
// conversation that ends with the user's turn, and two different assistant
// replies to it, the preferred and the non-preferred one.
func preferencePair(raw rawLine) (Example, string) {
	var ex Example
	if !present(raw.Input) {
		return ex, `"input" is missing; it holds the conversation both outputs answer: {"messages":[...]}`
	}
	var in rawInput
	if raw.Input[0] != '{' || json.Unmarshal(raw.Input, &in) != nil {
		return ex, inputShape
	}
	if len(in.Messages) == 0 {
		return ex, `"input.messages" is missing or empty; add at least one user message`
	}
	msgs, users, _, problem := messages(in.Messages, "input message")
	switch {
	case problem != "":
		return ex, problem
	case users == 0:
		return ex, "no user message in the input; each example needs at least one"
	case msgs[len(msgs)-1].Role != "user":
		return ex, fmt.Sprintf("the last input message must be from the user, whom both outputs answer (it is from the %s)", msgs[len(msgs)-1].Role)
	case present(in.Tools) && in.Tools[0] != '[':
		return ex, `"input.tools" must be an array of tool definitions, as in chat completions`
	case present(in.ParallelToolCalls) && in.ParallelToolCalls[0] != 't' && in.ParallelToolCalls[0] != 'f':
		return ex, `"input.parallel_tool_calls" must be true or false`
	}
	preferred, problem := output(raw.PreferredOutput, "preferred_output")
	if problem != "" {
		return ex, problem
	}
	nonPreferred, problem := output(raw.NonPreferredOutput, "non_preferred_output")
	if problem != "" {
		return ex, problem
	}
	if preferred == nonPreferred {
		return ex, `"preferred_output" and "non_preferred_output" are the same; a pair must differ for the model to learn which is preferred`
	}
	ex.Messages, ex.Preferred, ex.NonPreferred = msgs, preferred, nonPreferred
	return ex, ""
}

// output reads one of a preference line's outputs: an array of exactly one
// assistant message, returning its content.
func output(raw json.RawMessage, field string) (string, string) {
	shape := fmt.Sprintf(`%q must be an array of one {"role":"assistant","content":"..."} message`, field)
	if !present(raw) {
		return "", shape + " (it is missing)"
	}
	var msgs []rawMessage
	if raw[0] != '[' || json.Unmarshal(raw, &msgs) != nil {
		return "", shape
	}
	if len(msgs) != 1 {
		return "", fmt.Sprintf("%s (it has %d)", shape, len(msgs))
	}
	m := msgs[0]
	if m.Role.kind != '"' || m.Role.s != "assistant" {
		role := m.Role.problem()
		if role == "" {
			role = "its role is " + quoteShort(m.Role.s)
		} else {
			role = "its role: " + role
		}
		return "", fmt.Sprintf("%q must be an assistant message (%s)", field, role)
	}
	if p := m.Content.problem(); p != "" {
		return "", fmt.Sprintf("%q content must be a non-empty string (%s)", field, p)
	}
	return m.Content.s, ""
}

// quoteShort quotes a user-supplied value for an error message, cut short
// so that a huge value cannot flood API responses and logs.
func quoteShort(s string) string {
	const limit = 40
	if utf8.RuneCountInString(s) <= limit {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q...", string([]rune(s)[:limit]))
}

// syntaxProblem rewrites encoding/json's syntax errors, written for
// programmers, into what a person editing the file needs: where the
// problem is and the likely fix.
func syntaxProblem(line []byte, err *json.SyntaxError) string {
	msg := err.Error()
	if strings.HasPrefix(msg, "unexpected end") {
		return "invalid JSON (the line ends before the JSON object is complete; each example must be one JSON object on a single line)"
	}
	// Offset counts the bytes read up to and including the bad one.
	off := int(err.Offset) - 1
	if off < 0 || off >= len(line) {
		// Not expected from today's encoding/json; keep its own wording
		// rather than index out of range if that changes.
		return "invalid JSON (" + msg + ")"
	}
	r, _ := utf8.DecodeRune(line[off:])
	at := fmt.Sprintf("unexpected %q at column %d", r, utf8.RuneCount(line[:off])+1)
	switch {
	case strings.Contains(msg, "after top-level value"):
		return "invalid JSON (" + at + " after the end of the JSON value; put exactly one JSON object on each line)"
	case strings.Contains(msg, "in string literal"):
		return "invalid JSON (" + at + " inside a string; write tabs as \\t and other control characters as \\uXXXX)"
	case strings.Contains(msg, "in string escape code"):
		return "invalid JSON (" + at + " in a backslash escape; write a literal backslash as \\\\)"
	case strings.ContainsRune(`'‘’“”`, r):
		return "invalid JSON (" + at + `; keys and strings need straight double quotes ")`
	case strings.Contains(msg, "beginning of object key"):
		return "invalid JSON (" + at + "; expected a quoted key, check for a trailing comma)"
	}
	return "invalid JSON (" + at + ")"
}
