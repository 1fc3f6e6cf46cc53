package server_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/jobstatus"
	"github.com/tuneforge/tuneforge/server"
	"github.com/tuneforge/tuneforge/workers"
)

const datasetsPath = "/api/v1/fine-tuning/datasets"

// apiWith starts another API on the test platform, its Deps changed by
// change, served with its own HTTP server settings.
func apiWith(t *testing.T, change func(*server.Deps)) *httptest.Server {
	t.Helper()
	d := server.Deps{
		Store: env.Store, Temporal: env.Temporal, Artifacts: env.Artifacts, DataDir: env.DataDir,
		Logger: env.Log, GPULiveness: workers.GPULiveness,
	}
	change(&d)
	api := server.New(d)
	ts := httptest.NewUnstartedServer(api)
	ts.Config = api.HTTPServer("")
	ts.Start()
	t.Cleanup(ts.Close)
	return ts
}

// storedDatasets lists the organization's dataset objects in the artifact store.
func storedDatasets(t *testing.T, orgID string) []string {
	t.Helper()
	keys, err := env.Artifacts.List(context.Background(), "datasets/"+orgID+"/")
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// expectNothingStored checks that the organization has neither dataset rows
// nor dataset objects.
func expectNothingStored(t *testing.T, org *testenv.Org, after string) {
	t.Helper()
	if keys := storedDatasets(t, org.ID); len(keys) != 0 {
		t.Errorf("after %s the artifact store holds %v", after, keys)
	}
	if r := org.Do(t, "GET", datasetsPath, nil); !strings.Contains(string(r.Raw), `"count":0`) {
		t.Errorf("after %s the organization has datasets: %s", after, r.Raw)
	}
}

// postStream sends body without a Content-Length (chunked), as a client
// streaming a file of unknown size does.
func postStream(t *testing.T, url, key string, body []byte) testenv.Response {
	t.Helper()
	req, err := http.NewRequest("POST", url, io.MultiReader(strings.NewReader(""), strings.NewReader(string(body))))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-API-Key", key)
	resp, err := testenv.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return testenv.Response{Status: resp.StatusCode, Raw: raw}
}

// execer runs SQL on the pool or in a transaction.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// insertJob writes j straight into the read model (no workflow), through x.
// Plain SQL: writing a job's row is its workflow's business, not the API's,
// so package db offers the API no such method.
func insertJob(x execer, j db.Job) error {
	_, err := x.Exec(context.Background(), `INSERT INTO jobs (
		id, organization_id, owner, name, description, base_model, hardware_id, status,
		training_dataset, training_dataset_id, training_file, validation_file, validation_dataset_id,
		epochs, learning_rate, batch_size, warmup_steps, suffix, created_at, updated_at
	) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $19)`,
		j.ID, j.OrganizationID, j.Owner, j.Name, j.Description, j.BaseModel, j.HardwareID, j.Status,
		j.TrainingDataset, j.TrainingDatasetID, j.TrainingFile, j.ValidationFile, j.ValidationDatasetID,
		j.Epochs, j.LearningRate, j.BatchSize, j.WarmupSteps, j.Suffix, j.CreatedAt)
	return err
}

// insertJobRow writes a queued job straight into the read model (no
// workflow), through x (the pool or a transaction).
func insertJobRow(x execer, org, id, hardware, ds string, valid *string) error {
	return insertJob(x, db.Job{
		ID: id, OrganizationID: org, Owner: "u", Name: "n", BaseModel: "llama-3.1-8b", HardwareID: hardware,
		TrainingDataset: ds, TrainingDatasetID: ds, TrainingFile: "train.jsonl", ValidationDatasetID: valid,
		Epochs: 1, LearningRate: 0.1, BatchSize: 8, Suffix: "s", Status: jobstatus.Queued, CreatedAt: time.Now(),
	})
}

// jobLeases counts the GPU leases (held or waited for) of a job.
func jobLeases(t *testing.T, id string) int {
	t.Helper()
	var n int
	if err := env.Store.Pool.QueryRow(context.Background(), "SELECT count(*) FROM gpu_leases WHERE job_id = $1", id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// jobErrorMessage is a job's error message ("" for none).
func jobErrorMessage(job map[string]any) string {
	e, _ := job["error"].(map[string]any)
	msg, _ := e["message"].(string)
	return msg
}

// errorClass is a job's error class ("" for none).
func errorClass(job map[string]any) string {
	e, _ := job["error"].(map[string]any)
	class, _ := e["class"].(string)
	return class
}
