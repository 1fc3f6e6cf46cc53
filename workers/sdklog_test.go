package workers

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

func TestQuietSDK(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(quietSDK{slog.NewTextHandler(&buf, nil)}).With("component", "temporal-sdk")
	log.Warn("RecordActivityHeartbeat with error", "ActivityType", "TrainEpoch", "Error", errors.New("context canceled"))
	log.Error("Activity error.", "ActivityType", "TrainEpoch", "Error", "canceled")
	log.Error("Activity error.", "ActivityType", "Deploy", "Error", "inference backend unreachable")
	log.Warn("RecordActivityHeartbeat with error", "Error", "connection refused")
	log.Warn("Failed to poll for task.", "WorkerType", "WorkflowWorker", "Error", "context canceled")
	log.Warn("Failed to poll for task.", "WorkerType", "ActivityWorker", "Error", "frontend unavailable")
	got := buf.String()
	if strings.Contains(got, "canceled") {
		t.Errorf("cancellations were logged:\n%s", got)
	}
	if !strings.Contains(got, "inference backend unreachable") || !strings.Contains(got, "connection refused") || !strings.Contains(got, "frontend unavailable") {
		t.Errorf("real failures were dropped:\n%s", got)
	}
}
