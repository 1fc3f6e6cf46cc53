package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestEscape(t *testing.T) {
	for _, tc := range []struct{ in, oneLine, text string }{
		{"plain ünïcode", "plain ünïcode", "plain ünïcode"},
		{"red \x1b[31mtext", `red \x1b[31mtext`, `red \x1b[31mtext`},
		{"a\tb\nc\rd", `a\x09b\x0ac\x0dd`, "a\tb\nc\\x0dd"},
		{"del \x7f, csi \u009b, bad \x9b", `del \x7f, csi \x9b, bad \x9b`, `del \x7f, csi \x9b, bad \x9b`},
		{"title \x1b]0;pwned\x07", `title \x1b]0;pwned\x07`, `title \x1b]0;pwned\x07`},
	} {
		if got := oneLine(tc.in); got != tc.oneLine {
			t.Errorf("oneLine(%q) = %q; want %q", tc.in, got, tc.oneLine)
		}
		if got := text(tc.in); got != tc.text {
			t.Errorf("text(%q) = %q; want %q", tc.in, got, tc.text)
		}
	}
}

func TestCLICommandsForRoutes(t *testing.T) {
	for in, want := range map[string]string{
		"job ftjob_1 is running; stop it (POST /api/v1/fine-tuning/jobs/ftjob_1/stop) before deleting it": "job ftjob_1 is running; stop it (`tuneforge jobs stop ftjob_1`) before deleting it",
		"cannot restart; POST /api/v1/fine-tuning/jobs/ftjob_1/restart once it is stopped":                "cannot restart; `tuneforge jobs restart ftjob_1` once it is stopped",
		`unknown base model "x"; GET /api/v1/fine-tuning/base-models lists the choices`:                   "unknown base model \"x\"; `tuneforge base-models` lists the choices",
		"unknown hardware; GET /api/v1/fine-tuning/hardware lists the choices":                            "unknown hardware; `tuneforge hardware` lists the choices",
		"upload one with POST /api/v1/fine-tuning/datasets":                                               "upload one with `tuneforge datasets upload FILE`",
		"delete those jobs (DELETE /api/v1/fine-tuning/jobs/{id}) first":                                  "delete those jobs (`tuneforge jobs delete ID`) first",
		"GET /api/v1/fine-tuning/jobs/ftjob_2/checkpoints lists those it keeps":                           "`tuneforge jobs checkpoints ftjob_2` lists those it keeps",
		"Deployed m; it answers POST /v1/chat/completions":                                                "Deployed m; it answers `tuneforge chat MODEL MESSAGE`",
		// Routes no command calls stay.
		"GET /api/v1/fine-tuning/stats counts them":           "GET /api/v1/fine-tuning/stats counts them",
		"a file ID from POST /v1/files":                       "a file ID from POST /v1/files",
		"POST /api/v1/fine-tuning/jobs/ftjob_1/logs is wrong": "POST /api/v1/fine-tuning/jobs/ftjob_1/logs is wrong",
	} {
		if got := cliCommands(in); got != want {
			t.Errorf("cliCommands(%q)\n = %q\nwant %q", in, got, want)
		}
	}
}

// A job's error decodes from the object servers send now and the string
// they sent before; a cancelled stop, the cost and the actions show.
func TestShowJob(t *testing.T) {
	for _, tc := range []struct {
		name, json string
		says       []string
	}{
		{"before", `{"id":"ftjob_1","status":"failed","error":"Dataset validation failed"}`,
			[]string{"Status:           failed", "Error:            Dataset validation failed\n"}},
		{"after", `{"id":"ftjob_1","status":"failed","cancelled":false,"actions":["restart","delete"],"costSoFar":1.5,"maxCost":5,
			"error":{"code":"too_few_examples","class":"data","message":"Dataset validation failed"}}`,
			[]string{"Status:           failed\n", "Error:            data: Dataset validation failed\n", "Cost so far:      $1.50 (budget $5.00)\n", "Actions:          restart, delete\n"}},
		{"cancelled", `{"id":"ftjob_1","status":"stopped","cancelled":true,"actions":["delete"],"error":null,"costSoFar":0.0123}`,
			[]string{"Status:           stopped (cancelled)\n", "Error:            -\n", "Cost so far:      $0.012\n"}},
		{"escaped", `{"id":"ftjob_1","name":"evil \u001b[31mred","status":"failed","error":{"class":"data","message":"bad\u001b[2J"}}`,
			[]string{`Name:             evil \x1b[31mred`, `Error:            data: bad\x1b[2J`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var j Job
			if err := json.Unmarshal([]byte(tc.json), &j); err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			if err := showJob(&out, j); err != nil {
				t.Fatal(err)
			}
			for _, s := range tc.says {
				if !strings.Contains(out.String(), s) {
					t.Errorf("lacks %q:\n%s", s, out.String())
				}
			}
			if strings.ContainsRune(out.String(), 0x1b) {
				t.Errorf("an escape code printed as is:\n%q", out.String())
			}
		})
	}
}
