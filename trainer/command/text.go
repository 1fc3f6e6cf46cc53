package command

import (
	"strings"
	"unicode/utf8"
)

// Clean returns s as text that PostgreSQL (whose text columns refuse NUL
// and invalid UTF-8) and Temporal (whose payloads and failure messages must
// be valid UTF-8) accept: each run of invalid bytes and each NUL becomes
// U+FFFD. Every string of the trainer's that leaves a Runner passes
// through it: the lines given to Handler.Log and the messages of its
// errors.
func Clean(s string) string {
	if utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// cut returns at most n bytes of s, cut before a character rather than
// inside one.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return trimPartial(s[:n])
}

// trimPartial drops the character that s ends inside of, if any: what is
// left of a line cut at a byte count.
func trimPartial(s string) string {
	for i := len(s) - 1; i >= 0 && i >= len(s)-utf8.UTFMax; i-- {
		if utf8.RuneStart(s[i]) {
			if utf8.FullRuneInString(s[i:]) {
				return s
			}
			return s[:i]
		}
	}
	return s
}

// cleanHandler is the Handler a Runner feeds: it passes on only text that
// Clean has made storable.
type cleanHandler struct{ Handler }

func (h cleanHandler) Log(level, msg string) error { return h.Handler.Log(level, Clean(msg)) }

// cleanError makes an error of Run storable: an *Error's message is
// cleaned, and any other error whose message is not storable (a handler's,
// naming a file the trainer made) is wrapped in one whose message is.
func cleanError(err error) error {
	if err == nil {
		return nil
	}
	if ce, ok := err.(*Error); ok {
		if msg := Clean(ce.Message); msg != ce.Message {
			c := *ce
			c.Message = msg
			return &c
		}
		return err
	}
	msg := err.Error()
	if clean := Clean(msg); clean != msg {
		return &cleanedError{msg: clean, err: err}
	}
	return err
}

type cleanedError struct {
	msg string
	err error
}

func (e *cleanedError) Error() string { return e.msg }
func (e *cleanedError) Unwrap() error { return e.err }
