// Package dataset validates fine-tuning data uploaded as JSONL and streams
// its examples to callers.
//
// Files are read line by line, never whole, so uploads of any size use
// bounded memory. Every problem is reported with its line number and in
// words meant for the person who has to fix the file.
package dataset

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
)

// maxLineBytes caps one line so that a file without newlines cannot make
// Scan buffer the whole upload; a longer line is reported as invalid.
const maxLineBytes = 4 << 20

// ctxCheckLines is how often, in lines, Scan looks at its context: often
// enough to stop promptly, rarely enough to cost nothing.
const ctxCheckLines = 1000

// Message is one turn of a conversation.
type Message struct {
	Role    string // "system", "user" or "assistant"
	Content string
}

// Example is one parsed line, normalized: prompt/completion lines become
// [user: prompt, assistant: completion], so callers handle one shape. A
// preference line's Messages are its input, the conversation both of its
// outputs answer.
type Example struct {
	Line     int // 1-based line number in the file
	Messages []Message
	// Preferred and NonPreferred are a preference line's two assistant
	// replies to Messages; "" in the other formats.
	Preferred, NonPreferred string
}

// Input is the text a classifier sees: the system and user contents of all
// turns before the last assistant message, joined with "\n". Without an
// assistant message it is all system and user contents.
func (e Example) Input() string {
	turns := e.Messages
	if i := e.lastAssistant(); i >= 0 {
		turns = turns[:i]
	}
	parts := make([]string, 0, len(turns))
	for _, m := range turns {
		if m.Role == "system" || m.Role == "user" {
			parts = append(parts, m.Content)
		}
	}
	return strings.Join(parts, "\n")
}

// Target is the content of the last assistant message, or "" if there is
// none; a preference example's is its preferred output.
func (e Example) Target() string {
	if e.Preferred != "" {
		return e.Preferred
	}
	if i := e.lastAssistant(); i >= 0 {
		return e.Messages[i].Content
	}
	return ""
}

// Tokens is the example's approximate token count: CountTokens summed over
// all message contents, a preference example's two outputs included.
func (e Example) Tokens() int {
	return e.promptTokens() + CountTokens(e.Preferred) + CountTokens(e.NonPreferred)
}

// SequenceTokens is the approximate length of the longest sequence a
// trainer builds from the example: all of it, or for a preference example
// its input with the longer of its outputs (each output is trained after
// the input, one at a time).
func (e Example) SequenceTokens() int {
	return e.promptTokens() + max(CountTokens(e.Preferred), CountTokens(e.NonPreferred))
}

func (e Example) promptTokens() int {
	n := 0
	for _, m := range e.Messages {
		n += CountTokens(m.Content)
	}
	return n
}

func (e Example) lastAssistant() int {
	for i := len(e.Messages) - 1; i >= 0; i-- {
		if e.Messages[i].Role == "assistant" {
			return i
		}
	}
	return -1
}

// Format is the line format of a file; one file uses one format.
type Format string

// The accepted line formats.
const (
	// FormatChat lines look like {"messages":[{"role":"user","content":"..."},...]}.
	FormatChat Format = "chat"
	// FormatPromptCompletion lines look like {"prompt":"...","completion":"..."}.
	FormatPromptCompletion Format = "prompt_completion"
	// FormatPreference is OpenAI's preference (DPO) format: lines look like
	// {"input":{"messages":[...]},"preferred_output":[{"role":"assistant",...}],
	// "non_preferred_output":[{"role":"assistant",...}]}.
	FormatPreference Format = "preference"
)

// Preference says whether the format holds preference pairs, which DPO
// trains, rather than demonstrations, which supervised training learns.
func (f Format) Preference() bool { return f == FormatPreference }

// Describe names the format the way messages show it to users.
func (f Format) Describe() string {
	switch f {
	case FormatChat:
		return "chat messages format"
	case FormatPreference:
		return "preference (DPO) format"
	}
	return "prompt/completion format"
}

// MinTrainingExamples is the fewest valid examples a training file needs.
const MinTrainingExamples = 10

// Options tunes validation. The zero value is usable.
type Options struct {
	MinExamples       int // fewest valid examples a file needs; 0 or less means MinTrainingExamples
	MaxSequenceLength int // most tokens per example (see CountTokens); 0 or less means unlimited
	MaxErrors         int // how many line errors to keep in detail; 0 or less means 5
}

func (o Options) withDefaults() Options {
	if o.MinExamples <= 0 {
		o.MinExamples = MinTrainingExamples
	}
	if o.MaxErrors <= 0 {
		o.MaxErrors = 5
	}
	return o
}

// Summary describes what Scan read. The counts cover valid examples only,
// the ones passed to Scan's callback.
type Summary struct {
	Format    Format // format of the first valid line; "" if there is none
	Examples  int    // valid examples
	Tokens    int64  // approximate tokens in all valid examples
	MaxTokens int    // approximate tokens in the longest valid example (Example.SequenceTokens)
	Lines     int    // lines read, including blank ones
}

// LineError is one bad line.
type LineError struct {
	Line    int    // 1-based line number
	Message string // what is wrong, without the line number
}

// Error returns the message prefixed with its line, e.g. "line 4: ...".
func (e LineError) Error() string {
	return fmt.Sprintf("line %d: %s", e.Line, e.Message)
}

// ValidationError reports every problem found in a file: the first few line
// errors with the total count, and any file-level problem. It means the data
// is bad, so retrying without changing the file will not help.
type ValidationError struct {
	Lines   []LineError // the first Options.MaxErrors line errors, in line order
	Invalid int         // total invalid lines, including those not in Lines
	Total   int         // lines read, including blank ones, for "3 of 120 lines"
	Problem string      // file-level problem, e.g. "the file is empty"; "" if none
}

// Error lists the file-level problem first, then the line errors, e.g.
// "3 of 120 lines are invalid: line 4: ...; line 9: ...; and 1 more".
func (e *ValidationError) Error() string {
	var b strings.Builder
	b.WriteString(e.Problem)
	if e.Invalid == 0 {
		return b.String()
	}
	if b.Len() > 0 {
		b.WriteString("; ")
	}
	verb := "are"
	if e.Invalid == 1 {
		verb = "is"
	}
	fmt.Fprintf(&b, "%d of %d lines %s invalid", e.Invalid, e.Total, verb)
	for i, le := range e.Lines {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		b.WriteString(le.Error())
	}
	if more := e.Invalid - len(e.Lines); more > 0 {
		fmt.Fprintf(&b, "; and %d more", more)
	}
	return b.String()
}

// Scan streams r, validates every line, and calls fn (if non-nil) for each
// valid example in order, including when other lines are invalid; the caller
// decides what to do with them.
//
// When the data is bad (invalid lines, an empty file, too few examples) Scan
// returns a *ValidationError. Other failures (reading r, ctx being done, or
// fn returning an error) stop the scan and are returned wrapped, never as a
// *ValidationError, so callers can retry those and not bad data. The Summary
// is returned in every case and covers what was read before any stop.
func Scan(ctx context.Context, r io.Reader, opts Options, fn func(Example) error) (Summary, error) {
	opts = opts.withDefaults()
	lr := lineReader{br: bufio.NewReaderSize(r, 64<<10), max: maxLineBytes}
	verr := &ValidationError{}
	var sum Summary
	formatLine := 0 // line that set sum.Format, named in mixed-format errors
	nonBlank := 0

	invalid := func(msg string) {
		verr.Invalid++
		if len(verr.Lines) < opts.MaxErrors {
			verr.Lines = append(verr.Lines, LineError{Line: sum.Lines, Message: msg})
		}
	}

	for {
		if sum.Lines%ctxCheckLines == 0 {
			if err := ctx.Err(); err != nil {
				return sum, fmt.Errorf("dataset: scan stopped after %d lines: %w", sum.Lines, err)
			}
		}
		line, tooLong, err := lr.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return sum, fmt.Errorf("dataset: reading line %d: %w", sum.Lines+1, err)
		}
		sum.Lines++
		if tooLong {
			nonBlank++
			invalid(fmt.Sprintf("the line is longer than %d MiB; shorten the example", maxLineBytes>>20))
			continue
		}
		if sum.Lines == 1 {
			// Editors on Windows often save UTF-8 with a byte order mark.
			line = bytes.TrimPrefix(line, []byte("\xEF\xBB\xBF"))
		}
		if len(bytes.Trim(line, jsonSpace)) == 0 {
			continue
		}
		nonBlank++

		ex, format, problem := parseLine(line)
		if format != "" && sum.Format != "" && format != sum.Format {
			// Reported before any other problem of the line: converting
			// the line is the fix, whatever else is wrong with it.
			invalid(fmt.Sprintf("uses %s but earlier lines (from line %d) use %s; use one format in the whole file",
				format.Describe(), formatLine, sum.Format.Describe()))
			continue
		}
		if problem != "" {
			invalid(problem)
			continue
		}
		ex.Line = sum.Lines
		seq := ex.SequenceTokens()
		if opts.MaxSequenceLength > 0 && seq > opts.MaxSequenceLength {
			what, fix := "example", "shorten it or split it into several examples"
			if format.Preference() {
				what, fix = "input with its longer output", "shorten the input or the outputs"
			}
			invalid(fmt.Sprintf("%s has about %d tokens, more than the %d allowed (the base model's maxSequenceLength); %s",
				what, seq, opts.MaxSequenceLength, fix))
			continue
		}

		if sum.Format == "" {
			sum.Format, formatLine = format, sum.Lines
		}
		sum.Examples++
		sum.Tokens += int64(ex.Tokens())
		sum.MaxTokens = max(sum.MaxTokens, seq)
		if fn != nil {
			if err := fn(ex); err != nil {
				return sum, fmt.Errorf("dataset: line %d: %w", ex.Line, err)
			}
		}
	}

	switch {
	case sum.Lines == 0:
		verr.Problem = "the file is empty"
	case nonBlank == 0:
		verr.Problem = "the file is empty (it has only blank lines)"
	case sum.Examples < opts.MinExamples:
		valid := ""
		if verr.Invalid > 0 {
			valid = "valid "
		}
		verr.Problem = fmt.Sprintf("found %d %sexamples; at least %d are needed", sum.Examples, valid, opts.MinExamples)
	}
	if verr.Invalid > 0 || verr.Problem != "" {
		verr.Total = sum.Lines
		return sum, verr
	}
	return sum, nil
}

// lineReader splits a stream into lines while buffering at most max bytes
// of any one line.
type lineReader struct {
	br  *bufio.Reader
	buf []byte // reused between lines; next's result aliases it
	max int
}

// next returns the next line without its "\n" or "\r\n". A line longer than
// max bytes is consumed to its end and reported as tooLong, without content,
// so the caller can go on with the following line. At the end of the input
// next returns io.EOF.
func (lr *lineReader) next() (line []byte, tooLong bool, err error) {
	lr.buf = lr.buf[:0]
	read := 0
	for {
		chunk, err := lr.br.ReadSlice('\n')
		read += len(chunk)
		if !tooLong {
			// +2 leaves room for the "\r\n" trimmed below.
			if len(lr.buf)+len(chunk) > lr.max+2 {
				tooLong = true
			} else {
				lr.buf = append(lr.buf, chunk...)
			}
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		// io.EOF after some bytes is a last line without a newline; the
		// next call sees io.EOF with no bytes.
		if err != nil && (err != io.EOF || read == 0) {
			return nil, false, err
		}
		break
	}
	if tooLong {
		return nil, true, nil
	}
	line = bytes.TrimSuffix(lr.buf, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	if len(line) > lr.max {
		return nil, true, nil
	}
	return line, false, nil
}
