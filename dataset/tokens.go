package dataset

import (
	"unicode"
	"unicode/utf8"
)

// CountTokens approximates how many tokens a BPE tokenizer would produce for
// s, without downloading one: each run of letters and digits counts
// ceil(runes/4) tokens and each other non-space rune counts 1. It is an
// estimate, close enough for length limits on English text and code; real
// tokenizers differ by model, and scripts written without spaces, such as
// Chinese, are undercounted.
func CountTokens(s string) int {
	n, run := 0, 0
	for _, r := range s {
		var word bool
		if r < utf8.RuneSelf {
			word = 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9'
		} else {
			word = unicode.IsLetter(r) || unicode.IsDigit(r)
		}
		if word {
			run++
			continue
		}
		n += (run + 3) / 4
		run = 0
		if !unicode.IsSpace(r) {
			n++
		}
	}
	return n + (run+3)/4
}
