package server_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/server"
)

// Every route of both APIs, read from the OpenAPI document so that a new
// route is covered the day it is added, called by one organization with
// another's job, dataset, checkpoint, artifact and model: 404 every time,
// and the other organization's things are as they were.
func TestOtherOrganizationsIDsAreNotFound(t *testing.T) {
	t.Parallel()
	victim, intruder := env.NewOrg(t), env.NewOrg(t)
	job := completedJob(t, victim, "isolated")
	expect(t, victim.Do(t, "POST", jobsPath+"/"+job+"/deploy", nil), 200)
	dataset := victim.Upload(t, "kept.jsonl", testenv.Tickets(40, 63))
	checkpoint := firstID(t, victim.Do(t, "GET", jobsPath+"/"+job+"/checkpoints", nil), "checkpoints")
	artifact := firstID(t, victim.Do(t, "GET", jobsPath+"/"+job+"/artifacts", nil), "artifacts")
	model := "llama-3.1-8b-isolated"
	before := snapshot(t, victim, job, dataset)

	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	b, err := server.OpenAPIJSON()
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	param := regexp.MustCompile(`\{(\w+)\}`)
	called := 0
	for _, path := range slices.Sorted(maps.Keys(doc.Paths)) {
		if !param.MatchString(path) || strings.HasPrefix(path, "/console/") {
			continue // no ID of anyone's, or a static asset
		}
		url := param.ReplaceAllStringFunc(path, func(p string) string {
			switch {
			case p == "{artifactId}":
				return artifact
			case p == "{model}":
				return model
			case p == "{id}" && (strings.Contains(path, "/jobs/")):
				return job
			case p == "{id}" && (strings.Contains(path, "/datasets/") || strings.Contains(path, "/files/")):
				return dataset
			}
			t.Fatalf("%s: no other organization's ID to try for %s", path, p)
			return ""
		})
		for _, method := range slices.Sorted(maps.Keys(doc.Paths[path])) {
			if method == "parameters" {
				continue
			}
			var body any
			if method == "post" {
				body = map[string]any{"fromCheckpoint": checkpoint}
			}
			r := intruder.Do(t, strings.ToUpper(method), url, body)
			called++
			if r.Status != http.StatusNotFound {
				t.Errorf("%s %s with another organization's IDs: %d %s", strings.ToUpper(method), url, r.Status, r.Raw)
			}
			for _, id := range []string{checkpoint, artifact} {
				if strings.Contains(string(r.Raw), id) {
					t.Errorf("%s %s names %s", strings.ToUpper(method), url, id)
				}
			}
		}
	}
	if called < 20 {
		t.Fatalf("only %d operations take an ID", called)
	}
	t.Logf("%d operations answered 404 to another organization's IDs", called)

	// IDs in bodies: they name nothing of the intruder's either.
	own := completedJob(t, intruder, "intruder")
	ownDataset := intruder.Upload(t, "own.jsonl", testenv.Tickets(40, 64))
	for _, c := range []struct {
		path string
		body map[string]any
	}{
		{jobsPath, map[string]any{"name": "x", "baseModel": "llama-3.1-8b", "trainingDataset": dataset}},
		{jobsPath, map[string]any{"name": "x", "baseModel": "llama-3.1-8b", "trainingDataset": ownDataset, "validationFile": dataset}},
		{"/v1/fine_tuning/jobs", map[string]any{"model": "llama-3.1-8b", "training_file": dataset}},
		{"/v1/chat/completions", map[string]any{"model": model, "messages": []map[string]string{{"role": "user", "content": "hi"}}}},
		{jobsPath + "/" + own + "/restart", map[string]any{"fromCheckpoint": checkpoint}},
	} {
		r := intruder.Do(t, "POST", c.path, c.body)
		// OpenAI answers a reference to nothing with 400, as /v1 does.
		refused := r.Status == http.StatusNotFound || r.Status == http.StatusUnprocessableEntity ||
			strings.HasPrefix(c.path, "/v1/fine_tuning") && r.Status == http.StatusBadRequest
		if !refused {
			t.Errorf("POST %s naming another organization's things: %d %s", c.path, r.Status, r.Raw)
		}
	}
	if got := intruder.Do(t, "GET", jobsPath, nil); !strings.Contains(string(got.Raw), `"count":1`) {
		t.Errorf("the intruder's jobs: %s", got.Raw)
	}
	if after := snapshot(t, victim, job, dataset); after != before {
		t.Errorf("the victim's things changed:\nbefore %s\nafter  %s", before, after)
	}
}

func firstID(t *testing.T, r testenv.Response, list string) string {
	t.Helper()
	items, _ := r.Body[list].([]any)
	if r.Status != 200 || len(items) == 0 {
		t.Fatalf("no %s: %d %s", list, r.Status, r.Raw)
	}
	return items[0].(map[string]any)["id"].(string)
}

// snapshot is what an organization sees of a job and a dataset.
func snapshot(t *testing.T, org *testenv.Org, job, dataset string) string {
	t.Helper()
	var parts []string
	for _, path := range []string{jobsPath + "/" + job, jobsPath + "/" + job + "/events", jobsPath + "/" + job + "/checkpoints",
		jobsPath + "/" + job + "/artifacts", "/api/v1/fine-tuning/datasets/" + dataset, "/v1/models"} {
		r := org.Do(t, "GET", path, nil)
		parts = append(parts, fmt.Sprintf("%s %d %s", path, r.Status, r.Raw))
	}
	chat := org.Do(t, "POST", "/v1/chat/completions", map[string]any{"model": "llama-3.1-8b-isolated", "messages": []map[string]string{{"role": "user", "content": "invoice"}}})
	return strings.Join(append(parts, fmt.Sprint("chat ", chat.Status)), "\n")
}
