package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/internal/testenv"
)

type artifactList struct {
	JobID     string `json:"jobId"`
	Artifacts []struct {
		ID          string    `json:"id"`
		Kind        string    `json:"kind"`
		Step        *int      `json:"step"`
		Bytes       int64     `json:"bytes"`
		Format      string    `json:"format"`
		CreatedAt   time.Time `json:"createdAt"`
		DownloadURL string    `json:"downloadUrl"`
	} `json:"artifacts"`
}

func listArtifacts(t *testing.T, org *testenv.Org, jobID string) artifactList {
	t.Helper()
	r := org.Do(t, "GET", jobsPath+"/"+jobID+"/artifacts", nil)
	expect(t, r, 200)
	var l artifactList
	if err := json.Unmarshal(r.Raw, &l); err != nil {
		t.Fatalf("decode %s: %v", r.Raw, err)
	}
	if l.JobID != jobID {
		t.Fatalf("jobId %q, want %q", l.JobID, jobID)
	}
	return l
}

// download fetches url with key and returns the response's headers and body.
func download(t *testing.T, key, url string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", env.API.URL+url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-API-Key", key)
	resp, err := testenv.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return resp.StatusCode, resp.Header, body
}

func checkDownloadHeaders(t *testing.T, h http.Header, body []byte, contentType, filename string) {
	t.Helper()
	if got := h.Get("Content-Type"); got != contentType {
		t.Errorf("Content-Type %q, want %q", got, contentType)
	}
	if got := h.Get("Content-Length"); got != strconv.Itoa(len(body)) {
		t.Errorf("Content-Length %q for %d bytes", got, len(body))
	}
	if got, want := h.Get("Content-Disposition"), `attachment; filename=`+filename; got != want {
		t.Errorf("Content-Disposition %q, want %q", got, want)
	}
}

func TestJobArtifacts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	org := env.NewOrg(t)
	ds := org.Upload(t, "t.jsonl", testenv.Tickets(200, 21))
	r := org.Do(t, "POST", jobsPath, map[string]any{"name": "artifacts", "baseModel": "llama-3.1-8b", "trainingDataset": ds, "hyperparameters": map[string]any{"epochs": 1}})
	expect(t, r, 201)
	id := r.Body["id"].(string)
	if job := org.WaitStatus(t, id, time.Minute, "completed", "failed"); job["status"] != "completed" {
		t.Fatalf("job failed: %v", job["error"])
	}
	t.Cleanup(func() { _ = env.Artifacts.Delete(ctx, artifacts.OutputKey(id)) })

	// The builtin trainer keeps its latest checkpoint; there is no output yet.
	objs, err := env.Artifacts.ListObjects(ctx, artifacts.CheckpointPrefix(id))
	if err != nil || len(objs) != 1 {
		t.Fatalf("stored checkpoints %v, %v", objs, err)
	}
	ckpt := objs[0]
	var step int
	if _, err := fmt.Sscanf(path.Base(ckpt.Key), "step-%d.ckpt", &step); err != nil || step <= 0 {
		t.Fatalf("checkpoint key %s: %v", ckpt.Key, err)
	}
	ckptID := fmt.Sprintf("checkpoint-step-%012d", step)
	l := listArtifacts(t, org, id)
	if len(l.Artifacts) != 1 {
		t.Fatalf("artifacts %+v, want the one checkpoint", l.Artifacts)
	}
	a := l.Artifacts[0]
	if a.ID != ckptID || a.Kind != "checkpoint" || a.Step == nil || *a.Step != step || a.Bytes != ckpt.Size || a.Bytes <= 0 ||
		a.Format != "builtin" || a.DownloadURL != jobsPath+"/"+id+"/artifacts/"+ckptID || a.CreatedAt.Sub(ckpt.ModTime).Abs() > time.Second {
		t.Errorf("checkpoint artifact %+v; stored %+v", a, ckpt)
	}

	// Read scope is enough to download, and the bytes are the stored ones.
	status, h, body := download(t, org.ReadKey, a.DownloadURL)
	if status != 200 {
		t.Fatalf("download %s: %d %s", a.DownloadURL, status, body)
	}
	stored, err := env.Artifacts.Get(ctx, ckpt.Key)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(body, stored) {
		t.Errorf("downloaded %d bytes differ from the %d stored", len(body), len(stored))
	}
	checkDownloadHeaders(t, h, body, "application/octet-stream", id+"-"+ckptID+".ckpt")
	if status, _, _ := download(t, org.WriteKey, a.DownloadURL); status != 403 {
		t.Errorf("download with a write-only key: %d", status)
	}

	// An output directory stored as a tar is listed after the checkpoints.
	dir := t.TempDir()
	files := map[string]string{"adapter_config.json": `{"r":8}`, "weights/adapter_model.safetensors": strings.Repeat("w", 3000)}
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	n, err := env.Artifacts.PutDir(ctx, artifacts.OutputKey(id), dir)
	if err != nil {
		t.Fatal(err)
	}
	r = org.Do(t, "GET", jobsPath+"/"+id+"/artifacts", nil)
	if strings.Count(string(r.Raw), `"step"`) != 1 {
		t.Errorf("only the checkpoint has a step: %s", r.Raw)
	}
	l = listArtifacts(t, org, id)
	if len(l.Artifacts) != 2 {
		t.Fatalf("artifacts %+v, want the checkpoint and the output", l.Artifacts)
	}
	out := l.Artifacts[1]
	if out.ID != "output" || out.Kind != "output" || out.Step != nil || out.Bytes != n || out.Format != "tar" ||
		out.DownloadURL != jobsPath+"/"+id+"/artifacts/output" || out.CreatedAt.IsZero() {
		t.Errorf("output artifact %+v (stored %d bytes)", out, n)
	}
	status, h, body = download(t, org.Key, out.DownloadURL)
	if status != 200 {
		t.Fatalf("download %s: %d %s", out.DownloadURL, status, body)
	}
	checkDownloadHeaders(t, h, body, "application/x-tar", id+"-output.tar")
	if got := testenv.Untar(t, body); len(got) != len(files) || got["adapter_config.json"] != files["adapter_config.json"] ||
		got["weights/adapter_model.safetensors"] != files["weights/adapter_model.safetensors"] {
		t.Errorf("output archive holds %v", got)
	}

	// Anything else under the checkpoint prefix is not an artifact, and an
	// ID names only a listed artifact.
	if err := env.Artifacts.PutBytes(ctx, artifacts.CheckpointPrefix(id)+"notes.txt", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if l := listArtifacts(t, org, id); len(l.Artifacts) != 2 {
		t.Errorf("a stray object is listed: %+v", l.Artifacts)
	}
	for _, bad := range []string{"nope", "notes.txt", "checkpoint-step-000000000001", ckptID + ".ckpt", "output.tar", "..%2F..%2Foutputs%2F" + id + "%2Foutput.tar"} {
		r := org.Do(t, "GET", jobsPath+"/"+id+"/artifacts/"+bad, nil)
		if r.Status != 404 || errorCode(r) != "not_found" {
			t.Errorf("artifact %q: %d %s", bad, r.Status, r.Raw)
		}
	}

	// Another organization sees neither the list nor the downloads.
	other := env.NewOrg(t)
	for _, p := range []string{"/artifacts", "/artifacts/" + ckptID, "/artifacts/output"} {
		r := other.Do(t, "GET", jobsPath+"/"+id+p, nil)
		if r.Status != 404 || errorCode(r) != "not_found" || strings.Contains(string(r.Raw), "artifacts") {
			t.Errorf("GET %s from another org: %d %s", p, r.Status, r.Raw)
		}
	}
}

// TestCommandCheckpointArtifacts: a command trainer's checkpoint
// directories are listed as tar checkpoints and download as archives.
func TestCommandCheckpointArtifacts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	org := env.NewOrg(t)
	ds := org.Upload(t, "t.jsonl", testenv.Tickets(40, 22))
	r := org.Do(t, "POST", jobsPath, map[string]any{"name": "x", "baseModel": "llama-3.1-8b", "trainingDataset": ds, "hyperparameters": map[string]any{"epochs": 1}})
	expect(t, r, 201)
	id := r.Body["id"].(string)
	if job := org.WaitStatus(t, id, time.Minute, "completed", "failed"); job["status"] != "completed" {
		t.Fatalf("job failed: %v", job["error"])
	}
	// Replace the builtin checkpoint with what a command trainer stores.
	if err := env.Artifacts.DeletePrefix(ctx, artifacts.CheckpointPrefix(id)); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "optimizer.pt"), []byte("state"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Artifacts.PutDir(ctx, artifacts.DirCheckpointKey(id, 40), dir); err != nil {
		t.Fatal(err)
	}
	l := listArtifacts(t, org, id)
	if len(l.Artifacts) != 1 || l.Artifacts[0].ID != "checkpoint-step-000000000040" || l.Artifacts[0].Format != "tar" || *l.Artifacts[0].Step != 40 {
		t.Fatalf("artifacts %+v", l.Artifacts)
	}
	status, h, body := download(t, org.Key, l.Artifacts[0].DownloadURL)
	if status != 200 {
		t.Fatalf("download: %d %s", status, body)
	}
	checkDownloadHeaders(t, h, body, "application/x-tar", id+"-checkpoint-step-000000000040.tar")
	if got := testenv.Untar(t, body); got["optimizer.pt"] != "state" {
		t.Errorf("checkpoint archive holds %v", got)
	}
}
