package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"github.com/tuneforge/tuneforge/config"
)

// Logs are JSON off a terminal, and a record logged with a traced context
// carries its trace and span IDs.
func TestJSONLogsCarryTraceIDs(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	log := newLogger(config.Config{}, f)
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1, 2, 3}, SpanID: trace.SpanID{4, 5}, TraceFlags: trace.FlagsSampled,
	})
	log.With("component", "api").InfoContext(trace.ContextWithSpanContext(context.Background(), sc), "job created", "job", "ftjob_x")
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	var rec map[string]any
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatalf("not JSON: %s", b)
	}
	if rec["job"] != "ftjob_x" || rec["trace_id"] != sc.TraceID().String() || rec["span_id"] != sc.SpanID().String() || rec["component"] != "api" {
		t.Errorf("record %s", b)
	}
	if !strings.Contains(string(b), `"msg":"job created"`) {
		t.Errorf("record %s", b)
	}
}
