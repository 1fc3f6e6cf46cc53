package server_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/db/dbsqlc"
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
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return testenv.Response{Status: resp.StatusCode, Raw: raw}
}

// insertJobRow writes a queued job straight into the read model (no
// workflow), through dbtx (the pool or a transaction).
func insertJobRow(dbtx dbsqlc.DBTX, org, id, hardware, ds string, valid *string) error {
	_, err := env.Store.Q.CreateJob(context.Background(), dbtx, dbsqlc.CreateJobParams{
		ID: id, OrganizationID: org, Owner: "u", Name: "n", BaseModel: "llama-3.1-8b", HardwareID: hardware,
		TrainingDataset: ds, TrainingDatasetID: ds, TrainingFile: "train.jsonl", ValidationDatasetID: valid,
		Epochs: 1, LearningRate: 0.1, BatchSize: 8, Suffix: "s", Status: jobstatus.Queued, CreatedAt: time.Now(),
	})
	return err
}
