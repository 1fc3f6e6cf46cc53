package server

import (
	"bytes"
	"encoding/json"
	"maps"
	"math"
	"slices"
	"strings"
)

// DefaultMaxCompletionTokens bounds the tokens one chat completion may
// generate when Deps.MaxCompletionTokens is unset.
const DefaultMaxCompletionTokens = 4096

// maxTopLogprobs is the most top_logprobs a request may ask for, OpenAI's
// bound and vLLM's default --max-logprobs.
const maxTopLogprobs = 20

// maxStopSequences is the most stop sequences a request may give, as OpenAI.
const maxStopSequences = 4

// The fields of a chat completion request (docs/api.md). The inference
// backend is shared by every organization and called with tuneforge's own
// key, so only an allow-list of fields reaches it, each checked, and
// max_tokens is always sent, capped. Fields that would change what the
// answer means or what it costs (another chat template, guided decoding,
// tools, several choices, beam search, …) are refused with a 400 naming
// the field, rather than dropped, so a client never mistakes an answer for
// one that honoured them; any other field is ignored.
const ownTemplate = "is not accepted: the model's own chat template formats the messages"

var refusedChatFields = map[string]string{
	"chat_template":          ownTemplate,
	"chat_template_kwargs":   ownTemplate,
	"add_generation_prompt":  ownTemplate,
	"continue_final_message": ownTemplate,
	"add_special_tokens":     ownTemplate,
	"documents":              ownTemplate,
	"mm_processor_kwargs":    "is not accepted: models here take text messages only",
	"structured_outputs":     "is not supported: guided decoding (structured output) is not offered",
	"logits_processors":      "is not accepted: custom logits processors do not run on the shared backend",
	"allowed_token_ids":      "is not supported",
	"bad_words":              "is not supported",
	"logit_bias":             "is not supported",
	"prompt_logprobs":        "is not supported; logprobs and top_logprobs give the answer's",
	"use_beam_search":        "is not supported: beam search is not offered",
	"length_penalty":         "is not supported: beam search is not offered",
	"tools":                  "is not supported: tool calling is not offered",
	"functions":              "is not supported: tool calling is not offered",
	"function_call":          "is not supported: tool calling is not offered",
}

// chatForward is a chat completion request as the inference backend gets
// it, and the problems found on the way.
type chatForward struct {
	fields map[string]json.RawMessage
	errs   fieldErrors
}

// forwardChat checks the request's fields and returns those the inference
// backend gets: model (the caller renames it to the adapter) and messages
// as sent, the allow-listed sampling fields, and max_tokens, the request's
// max_completion_tokens or max_tokens capped at maxTokens, which is also
// what a request without either gets. A null field is an absent one.
func forwardChat(fields map[string]json.RawMessage, maxTokens int) chatForward {
	f := chatForward{fields: map[string]json.RawMessage{}}
	var (
		logprobs, stream bool
		maxTok, maxCompl *float64
		topLogprobs      bool
	)
	for _, name := range slices.Sorted(maps.Keys(fields)) {
		raw := fields[name]
		if isNull(raw) {
			continue
		}
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			f.errs.add(name, "is not valid JSON")
			continue
		}
		switch name {
		case "model", "messages":
			f.fields[name] = raw
		case "stream":
			stream = f.flag(name, raw, v)
		case "stream_options":
			// Taken once stream is known, below.
		case "max_tokens", "max_completion_tokens":
			n, ok := whole(v)
			if !ok || n < 1 {
				f.errs.add(name, "must be a whole number of at least 1")
			} else if name == "max_tokens" {
				maxTok = &n
			} else {
				maxCompl = &n
			}
		case "temperature":
			f.number(name, raw, v, 0, 2, "must be a number from 0 to 2")
		case "top_p":
			if x, ok := v.(float64); ok && x > 0 && x <= 1 {
				f.fields[name] = raw
			} else {
				f.errs.add(name, "must be a number greater than 0 and at most 1")
			}
		case "presence_penalty", "frequency_penalty":
			f.number(name, raw, v, -2, 2, "must be a number from -2 to 2")
		case "seed":
			if n, ok := whole(v); ok && math.Abs(n) <= 1<<63 {
				f.fields[name] = raw
			} else {
				f.errs.add(name, "must be a whole number")
			}
		case "stop":
			f.stop(raw, v)
		case "logprobs":
			logprobs = f.flag(name, raw, v)
		case "top_logprobs":
			if n, ok := whole(v); ok && n >= 0 && n <= maxTopLogprobs {
				topLogprobs = true
				f.fields[name] = raw
			} else {
				f.errs.add(name, "must be a whole number from 0 to %d", maxTopLogprobs)
			}
		case "user":
			if _, ok := v.(string); ok {
				f.fields[name] = raw
			} else {
				f.errs.add(name, "must be a string")
			}
		case "n", "best_of":
			// One choice a request: not forwarded, the backend's default.
			if n, ok := whole(v); !ok || n != 1 {
				f.errs.add(name, "must be 1: a chat completion here answers with one choice; send several requests for several answers")
			}
		case "response_format":
			// {"type": "text"} is the default, and not forwarded.
			if m, ok := v.(map[string]any); !ok || m["type"] != "text" {
				f.errs.add(name, `is not supported except {"type": "text"}: guided decoding (structured output) is not offered`)
			}
		case "tool_choice":
			// "none" is the default without tools, and not forwarded.
			if v != "none" {
				f.errs.add(name, `is not supported except "none": tool calling is not offered`)
			}
		default:
			if why, ok := refusedChatFields[name]; ok {
				f.errs.add(name, "%s", why)
			} else if strings.HasPrefix(name, "guided_") {
				f.errs.add(name, "is not supported: guided decoding (structured output) is not offered")
			}
			// Anything else is ignored.
		}
	}
	if topLogprobs && !logprobs {
		f.errs.add("top_logprobs", "needs logprobs set to true")
	}
	if raw := fields["stream_options"]; !isNull(raw) {
		var so map[string]json.RawMessage
		if json.Unmarshal(raw, &so) != nil {
			f.errs.add("stream_options", "must be an object")
		} else if iu := so["include_usage"]; !isNull(iu) {
			var b bool
			if json.Unmarshal(iu, &b) != nil {
				f.errs.add("stream_options", "include_usage must be true or false")
			} else if stream {
				// Only include_usage: it is all a non-streamed answer lacks.
				f.fields["stream_options"], _ = json.Marshal(map[string]bool{"include_usage": b})
			}
		}
	}
	n := float64(maxTokens)
	if maxCompl != nil {
		n = min(n, *maxCompl)
	} else if maxTok != nil {
		n = min(n, *maxTok)
	}
	f.fields["max_tokens"], _ = json.Marshal(int64(n))
	return f
}

// flag forwards a boolean and returns it.
func (f *chatForward) flag(name string, raw json.RawMessage, v any) bool {
	b, ok := v.(bool)
	if ok {
		f.fields[name] = raw
	} else {
		f.errs.add(name, "must be true or false")
	}
	return b
}

// number forwards a number within [lo, hi].
func (f *chatForward) number(name string, raw json.RawMessage, v any, lo, hi float64, msg string) {
	if x, ok := v.(float64); ok && x >= lo && x <= hi {
		f.fields[name] = raw
		return
	}
	f.errs.add(name, "%s", msg)
}

// stop forwards a stop string, or a list of at most maxStopSequences.
func (f *chatForward) stop(raw json.RawMessage, v any) {
	switch s := v.(type) {
	case string:
		f.fields["stop"] = raw
		return
	case []any:
		if len(s) <= maxStopSequences && !slices.ContainsFunc(s, func(e any) bool { _, ok := e.(string); return !ok }) {
			f.fields["stop"] = raw
			return
		}
	}
	f.errs.add("stop", "must be a string or a list of at most %d strings", maxStopSequences)
}

// whole returns v as a whole number, if it is one.
func whole(v any) (float64, bool) {
	x, ok := v.(float64)
	return x, ok && x == math.Trunc(x) && !math.IsInf(x, 0)
}

func isNull(raw json.RawMessage) bool {
	return len(raw) == 0 || bytes.Equal(bytes.TrimSpace(raw), []byte("null"))
}
