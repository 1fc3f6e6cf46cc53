package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/trainer"
)

// TestDevSurvivesSIGKILL kills `tuneforge dev` with SIGKILL in the middle of
// an epoch, starts it again on the same data directory and database, and
// checks the job completes with every metric point exactly once.
func TestDevSurvivesSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "tuneforge")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ctx := context.Background()
	dbName := fmt.Sprintf("tuneforge_durability_%d", time.Now().UnixNano())
	dbURL, err := testenv.DatabaseURL(dbName)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if c, err := pgx.Connect(ctx, testenv.AdminURL()); err == nil {
			_, _ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+dbName+" WITH (FORCE)")
			c.Close(ctx)
		}
	})
	httpAddr, temporalAddr := freeAddr(t), freeAddr(t)
	environ := append(os.Environ(),
		"DATABASE_URL="+dbURL,
		"TUNEFORGE_DATA_DIR="+filepath.Join(dir, "data"),
		"TUNEFORGE_HTTP_ADDR="+httpAddr,
		"TUNEFORGE_TEMPORAL_ADDR="+temporalAddr,
		"TUNEFORGE_UI_ADDR="+freeAddr(t),
		"TUNEFORGE_DEV_SLOTS=1",
		"TUNEFORGE_LOG_LEVEL=warn",
	)
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "dev")
		cmd.Env = environ
		cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
		if testing.Verbose() {
			cmd.Stderr = os.Stderr
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
		deadline := time.Now().Add(90 * time.Second)
		for {
			if resp, err := http.Get("http://" + httpAddr + "/healthz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					return cmd
				}
			}
			if time.Now().After(deadline) {
				t.Fatal("tuneforge dev did not come up")
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	first := start()
	keyBytes, err := os.ReadFile(filepath.Join(dir, "data", "dev-api-key"))
	if err != nil {
		t.Fatal(err)
	}
	api := &apiClient{base: "http://" + httpAddr, key: strings.TrimSpace(string(keyBytes)), t: t}

	var ds map[string]any
	api.do("POST", "/api/v1/fine-tuning/datasets?filename=big.jsonl", testenv.Tickets(60000, 31), 201, &ds)
	var job map[string]any
	api.do("POST", "/api/v1/fine-tuning/jobs", map[string]any{"name": "durable", "baseModel": "llama-3.1-8b",
		"trainingDataset": ds["id"], "validationFile": ds["id"], "hyperparameters": map[string]any{"epochs": 4}}, 201, &job)
	id := job["id"].(string)
	// Kill once a periodic checkpoint inside epoch 2 exists.
	api.waitPoints(id, 26)
	waitMidEpochCheckpoint(t, filepath.Join(dir, "data", "artifacts", "checkpoints", id, "latest.ckpt"))
	killedAt := len(api.points(id))
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_, _ = first.Process.Wait()

	start()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		api.do("GET", "/api/v1/fine-tuning/jobs/"+id, nil, 200, &job)
		if job["status"] == "completed" {
			break
		}
		if job["status"] == "failed" || time.Now().After(deadline) {
			t.Fatalf("after the restart the job is %v (%v)", job["status"], job["error"])
		}
		time.Sleep(200 * time.Millisecond)
	}
	points := api.points(id)
	if killedAt >= len(points) {
		t.Fatalf("the job had finished before the kill (%d points)", killedAt)
	}
	if len(points) != 100 {
		t.Fatalf("%d metric points after the restart, want 100 (4 epochs × 25)", len(points))
	}
	for i, p := range points {
		if p != (i+1)*300 {
			t.Fatalf("metric point %d is step %d, want %d", i, p, (i+1)*300)
		}
	}
	var logs map[string]any
	api.do("GET", "/api/v1/fine-tuning/jobs/"+id+"/logs?lines=1000", nil, 200, &logs)
	if raw, _ := json.Marshal(logs); !bytes.Contains(raw, []byte("resumed at step")) {
		t.Errorf("the restarted platform did not resume from a checkpoint: %s", raw)
	}
}

type apiClient struct {
	base, key string
	t         *testing.T
}

func (c *apiClient) do(method, path string, body any, want int, out any) {
	c.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		r = bytes.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		r = bytes.NewReader(j)
	}
	req, _ := http.NewRequest(method, c.base+path, r)
	req.Header.Set("X-API-Key", c.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		c.t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			c.t.Fatal(err)
		}
	}
}

func (c *apiClient) points(id string) []int {
	var m struct {
		Metrics struct {
			Steps []struct{ Step int } `json:"steps"`
		} `json:"metrics"`
	}
	c.do("GET", "/api/v1/fine-tuning/jobs/"+id+"/metrics", nil, 200, &m)
	out := make([]int, len(m.Metrics.Steps))
	for i, s := range m.Metrics.Steps {
		out[i] = s.Step
	}
	return out
}

func (c *apiClient) waitPoints(id string, n int) {
	c.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for len(c.points(id)) < n {
		if time.Now().After(deadline) {
			c.t.Fatalf("fewer than %d metric points", n)
		}
		time.Sleep(30 * time.Millisecond)
	}
}

func waitMidEpochCheckpoint(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		var st trainer.State
		if b, err := os.ReadFile(path); err == nil && st.UnmarshalBinary(b) == nil && st.Epoch == 1 && st.EpochStep > 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("no checkpoint inside epoch 2 appeared")
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
