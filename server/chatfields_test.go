package server_test

import (
	"encoding/json"
	"maps"
	"reflect"
	"strings"
	"testing"

	"github.com/tuneforge/tuneforge/inference"
	"github.com/tuneforge/tuneforge/server"
)

// TestChatCompletionForwardsAllowListedFields shows what of a chat
// completion request reaches the shared inference backend: the messages as
// sent, the allow-listed sampling fields, max_tokens always and capped;
// nothing else. Fields that would change what the answer means or costs
// are refused with a 400 naming them, and the backend is not called.
func TestChatCompletionForwardsAllowListedFields(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	id := completedJob(t, org, "fields")
	storeOutput(t, id, adapterFiles)
	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/deploy", nil), 200, `"status":"deployed"`)
	name, model := inference.AdapterName(id), "llama-3.1-8b-fields"
	const maxTokens = float64(server.DefaultMaxCompletionTokens)
	calls := func() int { return len(backend.Calls(name)) }
	lastSent := func() map[string]any {
		t.Helper()
		c := backend.Calls(name)
		return c[len(c)-1].Body
	}
	// Messages pass as they are, fields tuneforge does not read included.
	messages := []any{
		map[string]any{"role": "system", "content": "be brief", "name": "ops"},
		map[string]any{"role": "user", "content": "hello"},
	}
	with := func(extra map[string]any) map[string]any {
		body := map[string]any{"model": model, "messages": messages}
		maps.Copy(body, extra)
		return body
	}

	for _, tc := range []struct {
		name string
		body map[string]any
		want map[string]any // what the backend gets besides model and messages
	}{
		{"no max_tokens", nil, map[string]any{"max_tokens": maxTokens}},
		{"max_tokens within the cap", map[string]any{"max_tokens": 20}, map[string]any{"max_tokens": 20.0}},
		{"max_tokens beyond the cap", map[string]any{"max_tokens": 1_000_000}, map[string]any{"max_tokens": maxTokens}},
		{"max_completion_tokens first", map[string]any{"max_completion_tokens": 50, "max_tokens": 10}, map[string]any{"max_tokens": 50.0}},
		{"max_completion_tokens beyond the cap", map[string]any{"max_completion_tokens": 99999}, map[string]any{"max_tokens": maxTokens}},
		{"nulls are absent", map[string]any{"max_tokens": nil, "n": nil, "stop": nil, "chat_template": nil, "guided_json": nil},
			map[string]any{"max_tokens": maxTokens}},
		{"every allowed field", map[string]any{
			"temperature": 0.7, "top_p": 0.9, "stop": []string{"\n\n", "END"}, "seed": 7, "presence_penalty": 0.5,
			"frequency_penalty": -0.5, "logprobs": true, "top_logprobs": 5, "user": "u1", "stream": false, "max_tokens": 64,
			// The defaults of fields otherwise refused: accepted, not forwarded.
			"n": 1, "best_of": 1, "response_format": map[string]any{"type": "text"}, "tool_choice": "none",
			// Not streamed: no stream_options.
			"stream_options": map[string]any{"include_usage": true},
		}, map[string]any{
			"temperature": 0.7, "top_p": 0.9, "stop": []any{"\n\n", "END"}, "seed": 7.0, "presence_penalty": 0.5,
			"frequency_penalty": -0.5, "logprobs": true, "top_logprobs": 5.0, "user": "u1", "stream": false, "max_tokens": 64.0,
		}},
		{"unknown fields are dropped", map[string]any{
			"store": true, "metadata": map[string]any{"k": "v"}, "service_tier": "auto", "parallel_tool_calls": false,
			"top_k": 5, "min_p": 0.1, "priority": -100, "ignore_eos": true, "min_tokens": 100000, "echo": true,
			"request_id": "mine", "kv_transfer_params": map[string]any{"do_remote_decode": true}, "vllm_xargs": map[string]any{"x": 1},
		}, map[string]any{"max_tokens": maxTokens}},
	} {
		r := org.Do(t, "POST", "/v1/chat/completions", with(tc.body))
		expect(t, r, 200, `"model":"`+model+`"`, "echo: hello")
		want := map[string]any{"model": name, "messages": messages}
		maps.Copy(want, tc.want)
		if sent := lastSent(); !reflect.DeepEqual(sent, want) {
			got, _ := json.Marshal(sent)
			exp, _ := json.Marshal(want)
			t.Errorf("%s: the backend got\n%s\nwant\n%s", tc.name, got, exp)
		}
	}

	// Streamed, stream_options keeps include_usage only.
	_, data := streamChat(t, org.Key, with(map[string]any{"stream": true, "stream_options": map[string]any{"include_usage": true, "continuous_usage_stats": true}}))
	chunks(t, data)
	want := map[string]any{"model": name, "messages": messages, "stream": true, "stream_options": map[string]any{"include_usage": true}, "max_tokens": maxTokens}
	if sent := lastSent(); !reflect.DeepEqual(sent, want) {
		t.Errorf("streamed: the backend got %v, want %v", sent, want)
	}

	for _, tc := range []struct {
		field string
		extra map[string]any
		says  string
	}{
		{"n", map[string]any{"n": 2}, "must be 1"},
		{"n", map[string]any{"n": 128}, "must be 1"},
		{"best_of", map[string]any{"best_of": 4}, "must be 1"},
		{"use_beam_search", map[string]any{"use_beam_search": true}, "beam search"},
		{"chat_template", map[string]any{"chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}, "chat template"},
		{"chat_template_kwargs", map[string]any{"chat_template_kwargs": map[string]any{"enable_thinking": true}}, "chat template"},
		{"add_generation_prompt", map[string]any{"add_generation_prompt": false}, "chat template"},
		{"guided_json", map[string]any{"guided_json": map[string]any{"type": "object"}}, "guided decoding"},
		{"guided_regex", map[string]any{"guided_regex": "(a+)+$"}, "guided decoding"},
		{"guided_grammar", map[string]any{"guided_grammar": `root ::= "a"*`}, "guided decoding"},
		{"guided_choice", map[string]any{"guided_choice": []string{"a", "b"}}, "guided decoding"},
		{"guided_decoding_backend", map[string]any{"guided_decoding_backend": "outlines"}, "guided decoding"},
		{"structured_outputs", map[string]any{"structured_outputs": map[string]any{"regex": ".*"}}, "guided decoding"},
		{"response_format", map[string]any{"response_format": map[string]any{"type": "json_schema", "json_schema": map[string]any{"name": "x", "schema": map[string]any{}}}}, "guided decoding"},
		{"response_format", map[string]any{"response_format": map[string]any{"type": "json_object"}}, "guided decoding"},
		{"logits_processors", map[string]any{"logits_processors": []string{"os.system"}}, "logits processors"},
		{"tools", map[string]any{"tools": []any{map[string]any{"type": "function", "function": map[string]any{"name": "f"}}}}, "tool calling"},
		{"tool_choice", map[string]any{"tool_choice": "required"}, "tool calling"},
		{"logit_bias", map[string]any{"logit_bias": map[string]any{"50256": -100}}, "not supported"},
		{"prompt_logprobs", map[string]any{"prompt_logprobs": 20}, "not supported"},
		{"top_logprobs", map[string]any{"top_logprobs": 5}, "needs logprobs"},
		{"top_logprobs", map[string]any{"logprobs": true, "top_logprobs": 21}, "from 0 to 20"},
		{"max_tokens", map[string]any{"max_tokens": 0}, "at least 1"},
		{"max_tokens", map[string]any{"max_tokens": -1}, "at least 1"},
		{"max_tokens", map[string]any{"max_tokens": 1.5}, "whole number"},
		{"max_completion_tokens", map[string]any{"max_completion_tokens": "100"}, "whole number"},
		{"temperature", map[string]any{"temperature": 2.5}, "from 0 to 2"},
		{"top_p", map[string]any{"top_p": 0}, "greater than 0"},
		{"presence_penalty", map[string]any{"presence_penalty": -3}, "from -2 to 2"},
		{"seed", map[string]any{"seed": "7"}, "whole number"},
		{"stop", map[string]any{"stop": []string{"a", "b", "c", "d", "e"}}, "at most 4"},
		{"user", map[string]any{"user": 7}, "a string"},
		{"stream_options", map[string]any{"stream": true, "stream_options": "yes"}, "must be a"},
	} {
		before := calls()
		r := org.Do(t, "POST", "/v1/chat/completions", with(tc.extra))
		if r.Status != 400 || !strings.Contains(string(r.Raw), tc.field+": ") || !strings.Contains(string(r.Raw), tc.says) {
			t.Errorf("%v: %d %s; want a 400 naming %s, saying %q", tc.extra, r.Status, r.Raw, tc.field, tc.says)
			continue
		}
		if e, _ := r.Body["error"].(map[string]any); e["param"] != tc.field || e["type"] != "invalid_request_error" {
			t.Errorf("%v: error %v; want param %s", tc.extra, e, tc.field)
		}
		if calls() != before {
			t.Errorf("%v: the refused request reached the backend: %v", tc.extra, lastSent())
		}
	}
}

// TestChatCompletionBuiltinChecksFields: a builtin model checks the same
// fields, though it ignores them.
func TestChatCompletionBuiltinChecksFields(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	id := completedJob(t, org, "builtin-fields")
	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/deploy", nil), 200, `"status":"deployed"`)
	body := func(extra map[string]any) map[string]any {
		b := map[string]any{"model": "llama-3.1-8b-builtin-fields", "messages": []map[string]string{{"role": "user", "content": "refund please"}}}
		maps.Copy(b, extra)
		return b
	}
	expect(t, org.Do(t, "POST", "/v1/chat/completions", body(map[string]any{"temperature": 0.2, "max_tokens": 1_000_000, "store": true})), 200, `"probability"`)
	r := org.Do(t, "POST", "/v1/chat/completions", body(map[string]any{"n": 3}))
	expect(t, r, 400, "n: must be 1")
	if e, _ := r.Body["error"].(map[string]any); e["param"] != "n" {
		t.Errorf("error %s; want param n", r.Raw)
	}
	expect(t, org.Do(t, "POST", "/v1/chat/completions", body(map[string]any{"guided_regex": "a+"})), 400, "guided_regex: ")
}
