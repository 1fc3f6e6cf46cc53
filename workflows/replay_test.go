package workflows_test

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/tuneforge/tuneforge/workflows"
)

// The histories in testdata were recorded from real jobs run by
// `tuneforge dev` (see testdata/README.md). Replaying them fails when a change
// to FineTuningJob is not deterministic, i.e. would break the jobs that are
// open when it is deployed. Such a change must go behind workflow.GetVersion;
// after a change that does, record fresh histories next to these ones
// instead of replacing them.
func TestReplayRecordedHistories(t *testing.T) {
	for _, tc := range []struct{ file, what string }{
		{"job_deployed.json", "2 epochs, completed, deployed through the deploy update"},
		{"job_stopped_restarted.json", "stopped mid-training by the stop update (epoch cancelled, slot released), then restarted: continue-as-new"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			replayer := worker.NewWorkflowReplayer()
			replayer.RegisterWorkflowWithOptions(workflows.FineTuningJob, workflow.RegisterOptions{Name: "FineTuningJob"})
			err := replayer.ReplayWorkflowHistoryFromJSONFile(nil, filepath.Join("testdata", tc.file))
			require.NoError(t, err, "replaying a job that was %s", tc.what)
		})
	}
}
