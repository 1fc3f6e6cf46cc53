// Package apifuzz_test fuzzes the API's request decoding on a real server
// and PostgreSQL. It lives apart from the server's own tests so that its
// instrumented build (go test -fuzz) leaves out the embedded Temporal
// server: the requests it sends name no dataset, job or model of the
// caller's, so each is refused before any workflow would be reached.
package apifuzz_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/tuneforge/tuneforge/apikey"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/internal/apionly"
	"github.com/tuneforge/tuneforge/internal/contract"
	"github.com/tuneforge/tuneforge/internal/dbtest"
)

var (
	api *httptest.Server
	key string
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	ctx := context.Background()
	url, drop, err := dbtest.Create(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer drop()
	store, err := db.Open(ctx, url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer store.Close()
	if err := store.Migrate(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// No Temporal server: a request that got as far as a workflow would
	// fail as a 503, and the fuzz target with it.
	srv, closeAPI, err := apionly.New(ctx, store)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer closeAPI()
	doc, err := contract.New(srv.Routes())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	api = httptest.NewServer(doc.Wrap(srv))
	defer api.Close()
	if key, err = apikey.Create(ctx, store, "org_fuzz", "user_fuzz", apikey.AllScopes); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return doc.ExitCode(m.Run())
}

// routes are those that decode a JSON body, on both APIs.
var routes = []string{
	"/api/v1/fine-tuning/jobs",
	"/api/v1/fine-tuning/estimate-cost",
	"/api/v1/fine-tuning/jobs/ftjob_00000000000000000000/restart",
	"/api/v1/fine-tuning/jobs/ftjob_00000000000000000000/stop",
	"/api/v1/fine-tuning/jobs/ftjob_00000000000000000000/deploy",
	"/v1/fine_tuning/jobs",
	"/v1/chat/completions",
}

// FuzzJSONBodies posts arbitrary bodies to every route that decodes JSON:
// whatever the body, the answer is never a 5xx, and a refusal is the
// API's error shape with a message.
func FuzzJSONBodies(f *testing.F) {
	for i, body := range []string{
		`{"name":"n","baseModel":"llama-3.1-8b","trainingDataset":"ds_missing","hyperparameters":{"epochs":3,"learningRate":0.0002,"batchSize":8,"warmupSteps":10},"metadata":{"team":"a"}}`,
		`{"baseModel":"llama-3.1-8b","datasetSize":1000,"epochs":3,"hardware":"gpu-a100-40gb"}`,
		`{"fromCheckpoint":"ftckpt_x"}`,
		``,
		`{}`,
		`{"model":"gpt-4o-mini","training_file":"file-x","hyperparameters":{"n_epochs":"auto","batch_size":4,"learning_rate_multiplier":0.1},"suffix":"s","seed":7,"method":{"type":"supervised"}}`,
		`{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"stream":true,"temperature":0.5}`,
	} {
		f.Add(uint8(i), []byte(body))
	}
	f.Add(uint8(0), []byte(`{"name":"\u0000","trainingDataset":"../../etc/passwd","hyperparameters":{"epochs":1e309}}`))
	f.Add(uint8(5), []byte(`{"model":"m","training_file":"f","hyperparameters":{"n_epochs":-1}} trailing`))
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		path := routes[int(route)%len(routes)]
		req, err := http.NewRequest("POST", api.URL+path, strings.NewReader(string(body)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		if resp.StatusCode >= 500 {
			t.Fatalf("POST %s %q: %d %s", path, body, resp.StatusCode, raw)
		}
		if resp.StatusCode >= 400 {
			var e struct {
				Error *struct {
					Message string `json:"message"`
				} `json:"error"`
			}
			if json.Unmarshal(raw, &e) != nil || e.Error == nil || e.Error.Message == "" {
				t.Fatalf("POST %s %q: %d without an error message: %s", path, body, resp.StatusCode, raw)
			}
		}
	})
}
