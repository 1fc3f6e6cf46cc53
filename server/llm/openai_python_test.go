package llm_test

import (
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/internal/testenv"
)

// TestOpenAIPythonFlow runs testdata/openai_flow.py: OpenAI's fine-tuning
// guide written with the official openai Python package, pointed at the
// platform. It uploads files, creates a job with metadata, lists its events
// and checkpoints, waits for it to succeed (trained by trainers/hf, served
// by vLLM), chats with its fine_tuned_model, then pauses, resumes and
// cancels a second job.
func TestOpenAIPythonFlow(t *testing.T) {
	testenv.PythonModules(t, python, "openai")
	org := env.NewOrg(t)
	// llama-3.1-70b's default hardware is pool, the only one with a command
	// trainer (OpenAI's create names no hardware); checkpoints at epoch ends
	// only, few and enough.
	env.StartCommandWorker(t, pool, hfTrainer("--threads", "1", "--eval-every", "0", "--checkpoint-every", "0")...)
	cmd := exec.CommandContext(t.Context(), python, "testdata/openai_flow.py", "--model", "llama-3.1-70b", "--timeout", "300")
	cmd.Env = append(os.Environ(), "TUNEFORGE_URL="+env.API.URL, "TUNEFORGE_API_KEY="+org.Key)
	started := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("openai_flow.py, %s:\n%s", time.Since(started).Round(time.Second), out)
	if err != nil {
		t.Fatalf("openai_flow.py: %v", err)
	}
}
