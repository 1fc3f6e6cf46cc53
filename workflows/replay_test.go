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
		{"job_granted_deployed_v2.json", "created by update-with-start (its row written by the workflow), queued behind another job, granted by signal, 2 epochs, deployed"},
		{"job_stopped_restarted_v2.json", "created by update-with-start, stopped mid-training, restarted: continue-as-new carrying its state"},
		{"job_deleted_v2.json", "a DeleteJob run: row deleted, job workflow terminated, artifacts removed"},
		{"job_auto_deployed_v3.json", "created through /v1 with AutoDeploy: trained 2 epochs and deployed itself"},
		{"job_paused_resumed_v3.json", "paused mid-training by a stop update with its requester, resumed: continue-as-new"},
		{"job_cancelled_v3.json", "the resumed run, cancelled mid-training by a stop update with cancel"},
		{"job_rewound_v3.json", "stopped after its first epoch, restarted fromCheckpoint: RewindToCheckpoint, then continue-as-new"},
		{"job_deploy_failed_v3.json", "completed, its deploy refused (the model name is another job's) and recorded by RecordDeployFailure"},
		{"job_auto_deployed_v4.json", "Revision 1: validated by ValidateRecordedDataset, no version markers, trained 2 epochs and deployed itself"},
		{"job_paused_resumed_v4.json", "Revision 1: paused mid-training, resumed: continue-as-new"},
		{"job_cancelled_v4.json", "Revision 1: the resumed run, cancelled mid-training"},
		{"job_rewound_v4.json", "Revision 1: stopped after its first epoch, restarted fromCheckpoint"},
		{"job_deploy_failed_v4.json", "Revision 1: completed, its deploy refused and recorded"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			replayer := worker.NewWorkflowReplayer()
			replayer.RegisterWorkflowWithOptions(workflows.FineTuningJob, workflow.RegisterOptions{Name: "FineTuningJob"})
			replayer.RegisterWorkflowWithOptions(workflows.DeleteJob, workflow.RegisterOptions{Name: "DeleteJob"})
			err := replayer.ReplayWorkflowHistoryFromJSONFile(nil, filepath.Join("testdata", tc.file))
			require.NoError(t, err, "replaying a job that was %s", tc.what)
		})
	}
}
