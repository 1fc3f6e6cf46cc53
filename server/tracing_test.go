package server_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace"

	"github.com/tuneforge/tuneforge/internal/testenv"
)

// TestTraceFollowsAJob checks one trace runs from the caller's HTTP request
// through the API and the Temporal client into the workflow (which starts
// the activities; its own span ends only when the workflow does) and the
// activities.
func TestTraceFollowsAJob(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	ds := org.Upload(t, "t.jsonl", testenv.Tickets(40, 41))
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	hdr := http.Header{"Traceparent": {"00-" + traceID + "-00f067aa0ba902b7-01"}}
	r := env.Do(t, org.Key, "POST", jobsPath, map[string]any{"name": "traced", "baseModel": "llama-3.1-8b", "trainingDataset": ds, "hyperparameters": map[string]any{"epochs": 1}}, hdr)
	expect(t, r, 201)
	org.WaitStatus(t, r.Body["id"].(string), 30*time.Second, "completed")

	want := map[string]bool{"POST /api/v1/fine-tuning/jobs": false, "StartWorkflow:FineTuningJob": false, "StartActivity:TrainEpoch": false, "RunActivity:TrainEpoch": false}
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, s := range spans.Ended() {
			if s.SpanContext().TraceID().String() == traceID {
				if _, ok := want[s.Name()]; ok {
					want[s.Name()] = true
				}
			}
		}
		missing := []string{}
		for name, seen := range want {
			if !seen {
				missing = append(missing, name)
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("trace %s lacks spans %s; it has %s", traceID, strings.Join(missing, ", "), spanNames(spans.Ended(), traceID))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func spanNames(ended []trace.ReadOnlySpan, traceID string) string {
	var names []string
	for _, s := range ended {
		if s.SpanContext().TraceID().String() == traceID {
			names = append(names, s.Name())
		}
	}
	return strings.Join(names, ", ")
}
