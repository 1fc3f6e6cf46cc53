package server_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/server"
	"github.com/tuneforge/tuneforge/workflows"
)

// Fault tests of job creation and deletion: each interrupts one step and
// checks that what is left is a whole job or none, never half of one.
// Faults are real: a Temporal server that does not answer, a client that
// gives up mid-request, and PostgreSQL refusing the row's insert or delete
// (a trigger) until the fault is healed.

// fault makes PostgreSQL refuse op (INSERT or DELETE) on the jobs rows
// named name until the returned func heals it.
func fault(t *testing.T, op, name string) (heal func()) {
	t.Helper()
	fn := "fault_" + strings.ToLower(op) + "_" + strings.NewReplacer("-", "_").Replace(name)
	row := "NEW"
	if op == "DELETE" {
		row = "OLD"
	}
	trigger := fmt.Sprintf("TRIGGER %s BEFORE %s ON jobs", fn, op)
	if op == "COMMIT" {
		// Checked as the inserting transaction commits.
		trigger = fmt.Sprintf("CONSTRAINT TRIGGER %s AFTER INSERT ON jobs DEFERRABLE INITIALLY DEFERRED", fn)
	}
	ctx := context.Background()
	_, err := env.Store.Pool.Exec(ctx, fmt.Sprintf(`
		CREATE FUNCTION %[1]s() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF %[2]s.name = '%[3]s' THEN RAISE EXCEPTION 'injected fault'; END IF;
			RETURN %[2]s;
		END $$;
		CREATE %[4]s FOR EACH ROW EXECUTE FUNCTION %[1]s();`, fn, row, name, trigger))
	if err != nil {
		t.Fatal(err)
	}
	heal = func() {
		if _, err := env.Store.Pool.Exec(ctx, fmt.Sprintf(`DROP TRIGGER IF EXISTS %[1]s ON jobs; DROP FUNCTION IF EXISTS %[1]s();`, fn)); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(heal)
	return heal
}

// deadTemporal is a Temporal client whose server never answers.
func deadTemporal(t *testing.T) client.Client {
	t.Helper()
	dead, err := client.NewLazyClient(client.Options{HostPort: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	return dead
}

// impatient is the org's client with a short timeout: a caller who gives
// up (or an API that dies) while the request is in flight.
func impatient(org *testenv.Org, method, path string, body string) error {
	req, err := http.NewRequest(method, org.BaseURL+path, strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("X-API-Key", org.Key)
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Do(req)
	if err == nil {
		resp.Body.Close()
		return fmt.Errorf("the request finished with %d", resp.StatusCode)
	}
	return nil
}

func jobCount(t *testing.T, org *testenv.Org) float64 {
	t.Helper()
	r := org.Do(t, "GET", jobsPath, nil)
	expect(t, r, 200)
	return r.Body["count"].(float64)
}

// workflowOpen reports whether a workflow of id is running.
func workflowOpen(t *testing.T, id string) bool {
	t.Helper()
	desc, err := env.Temporal.DescribeWorkflowExecution(context.Background(), id, "")
	if err != nil {
		return false
	}
	return desc.GetWorkflowExecutionInfo().GetCloseTime() == nil
}

// leftovers lists what the store holds for the job.
func leftovers(t *testing.T, org *testenv.Org, id string) []string {
	t.Helper()
	var out []string
	for _, prefix := range []string{artifacts.CheckpointPrefix(id), artifacts.KeptPrefix(id), "outputs/" + id + "/", artifacts.ModelPrefix(org.ID, id)} {
		keys, err := env.Artifacts.List(context.Background(), prefix)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, keys...)
	}
	return out
}

func TestCreateFaults(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	ds := org.Upload(t, "tickets.jsonl", testenv.Tickets(20, 5))
	body := func(name string) string {
		return fmt.Sprintf(`{"name": %q, "baseModel": "llama-3.1-8b", "trainingDataset": %q, "hyperparameters": {"epochs": 1}}`, name, ds)
	}

	t.Run("Temporal does not answer before the start", func(t *testing.T) {
		api := apiWith(t, func(d *server.Deps) { d.Temporal, d.MaxActiveJobs = deadTemporal(t), 10 })
		r := (&testenv.Client{BaseURL: api.URL, Key: org.Key}).Do(t, "POST", jobsPath, body("never"))
		expect(t, r, 503, "nothing was created")
		if n := jobCount(t, org); n != 0 {
			t.Fatalf("%v jobs after a refused start; want none", n)
		}
	})

	t.Run("the row cannot be written", func(t *testing.T) {
		heal := fault(t, "INSERT", "fault-create")
		r := org.Do(t, "POST", jobsPath, body("fault-create"))
		expect(t, r, 503, "nothing was created")
		heal()
		if n := jobCount(t, org); n != 0 {
			t.Fatalf("%v jobs after a create whose row was refused; want none", n)
		}
	})

	t.Run("the commit fails after the start", func(t *testing.T) {
		heal := fault(t, "COMMIT", "fault-commit")
		r := org.Do(t, "POST", jobsPath, body("fault-commit"))
		expect(t, r, 503, "accepted but not confirmed")
		if n := jobCount(t, org); n != 0 {
			t.Fatalf("%v jobs while the row cannot be committed; want none", n)
		}
		heal()
		// The started workflow writes the row itself once PostgreSQL takes
		// it: the job is whole.
		var id string
		deadline := time.Now().Add(time.Minute)
		for id == "" {
			if time.Now().After(deadline) {
				t.Fatal("the job never appeared after the fault healed")
			}
			r := org.Do(t, "GET", jobsPath+"?search=fault-commit", nil)
			if jobs := r.Body["jobs"].([]any); len(jobs) == 1 {
				id = jobs[0].(map[string]any)["id"].(string)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if job := org.WaitStatus(t, id, time.Minute, "completed", "failed"); job["status"] != "completed" {
			t.Fatalf("the job created through the fault %s: %v", job["status"], job["error"])
		}
		if types, _ := org.EventTypes(t, id); slices.Index(types, "created") < 0 || len(slices.DeleteFunc(slices.Clone(types), func(s string) bool { return s != "created" })) != 1 {
			t.Errorf("events of the job created through the fault: %v", types)
		}
	})

	t.Run("the organization is at its cap", func(t *testing.T) {
		capped := env.NewOrg(t)
		api := apiWith(t, func(d *server.Deps) { d.MaxActiveJobs = 1 })
		c := &testenv.Client{BaseURL: api.URL, Key: capped.Key}
		cds := capped.Upload(t, "tickets.jsonl", testenv.Tickets(20, 5))
		req := map[string]any{"name": "first", "baseModel": "llama-3.1-8b", "trainingDataset": cds, "hardware": "gpu-a100-80gb-x4"}
		expect(t, c.Do(t, "POST", jobsPath, req), 201)
		req["name"] = "second"
		expect(t, c.Do(t, "POST", jobsPath, req), 429, "1 queued or running jobs")
		if n := jobCount(t, capped); n != 1 {
			t.Fatalf("%v jobs; want the first only", n)
		}
	})
}

func TestDeleteFaults(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	ds := org.Upload(t, "tickets.jsonl", testenv.Tickets(20, 6))
	completed := func(name string) string {
		r := org.Do(t, "POST", jobsPath, map[string]any{"name": name, "baseModel": "llama-3.1-8b", "trainingDataset": ds, "hyperparameters": map[string]any{"epochs": 1}})
		expect(t, r, 201)
		id := r.Body["id"].(string)
		if job := org.WaitStatus(t, id, time.Minute, "completed", "failed"); job["status"] != "completed" {
			t.Fatalf("job %s: %v", id, job["error"])
		}
		expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/deploy", nil), 200)
		return id
	}

	t.Run("Temporal does not answer before the start", func(t *testing.T) {
		id := completed("kept")
		api := apiWith(t, func(d *server.Deps) { d.Temporal = deadTemporal(t) })
		expect(t, (&testenv.Client{BaseURL: api.URL, Key: org.Key}).Do(t, "DELETE", jobsPath+"/"+id, nil), 503, "was not deleted")
		expect(t, org.Do(t, "GET", jobsPath+"/"+id, nil), 200, `"status":"deployed"`)
		if len(leftovers(t, org, id)) == 0 {
			t.Fatal("the job that was not deleted lost its artifacts")
		}
	})

	t.Run("the row cannot be deleted and the caller gives up", func(t *testing.T) {
		id := completed("fault-delete")
		heal := fault(t, "DELETE", "fault-delete")
		if err := impatient(org, "DELETE", jobsPath+"/"+id, ""); err != nil {
			t.Fatal(err)
		}
		// Nothing is half deleted while the row stays.
		expect(t, org.Do(t, "GET", jobsPath+"/"+id, nil), 200, `"status":"deployed"`)
		if len(leftovers(t, org, id)) == 0 {
			t.Fatal("the job lost its artifacts while its row stayed")
		}
		heal()
		env.WaitDeleted(t, id)
		expect(t, org.Do(t, "GET", jobsPath+"/"+id, nil), 404)
		if left := leftovers(t, org, id); len(left) > 0 {
			t.Fatalf("the deleted job left %v in the store", left)
		}
		if workflowOpen(t, id) {
			t.Fatal("the deleted job's workflow is still open")
		}
	})

	t.Run("a queued job holding its place", func(t *testing.T) {
		// Queued on a pool without workers: the delete must free its place.
		r := org.Do(t, "POST", jobsPath, map[string]any{"name": "queued", "baseModel": "llama-3.1-8b", "trainingDataset": ds, "hardware": "gpu-a100-80gb-x4"})
		expect(t, r, 201)
		id := r.Body["id"].(string)
		deadline := time.Now().Add(time.Minute)
		for !strings.Contains(string(org.Do(t, "GET", jobsPath+"/"+id+"/logs", nil).Raw), "Waiting for a GPU slot") {
			if time.Now().After(deadline) {
				t.Fatal("the job never queued")
			}
			time.Sleep(100 * time.Millisecond)
		}
		expect(t, org.Do(t, "DELETE", jobsPath+"/"+id, nil), 204)
		expect(t, org.Do(t, "GET", jobsPath+"/"+id, nil), 404)
		env.WaitDeleted(t, id)
		if leases := jobLeases(t, id); leases != 0 || workflowOpen(t, id) || workflowOpen(t, workflows.DeleteWorkflowID(id)) {
			t.Fatalf("after the delete: %d leases, job workflow open %v", leases, workflowOpen(t, id))
		}
	})
}

// TestDeployThatCannotSucceed: a deploy PostgreSQL refuses for good (the
// model card would hold a NUL, from a label of the training data) fails at
// once with a 4xx instead of retrying forever, and leaves the job
// completed: deployable again, with nothing published.
func TestDeployThatCannotSucceed(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	data := strings.ReplaceAll(string(testenv.Tickets(40, 9)), `"billing"`, `"bill\u0000ing"`)
	ds := org.Upload(t, "nul.jsonl", []byte(data))
	r := org.Do(t, "POST", jobsPath, map[string]any{"name": "nul label", "baseModel": "llama-3.1-8b", "trainingDataset": ds, "hyperparameters": map[string]any{"epochs": 1}})
	expect(t, r, 201)
	id := r.Body["id"].(string)
	if job := org.WaitStatus(t, id, time.Minute, "completed", "failed"); job["status"] != "completed" {
		t.Fatalf("job %s: %v", id, job["error"])
	}
	for range 2 {
		expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/deploy", nil), 422, "NUL")
		expect(t, org.Do(t, "GET", jobsPath+"/"+id, nil), 200, `"status":"completed"`)
	}
	for _, key := range leftovers(t, org, id) {
		if strings.HasPrefix(key, "models/") {
			t.Fatalf("the failed deploy left %s", key)
		}
	}
}

// TestLostDeployRaceLeavesNothing: two jobs deploy the same model name at
// once; the loser answers 409 and leaves nothing published in the store.
func TestLostDeployRaceLeavesNothing(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	ds := org.Upload(t, "tickets.jsonl", testenv.Tickets(40, 10))
	ids := make([]string, 2)
	for i := range ids {
		r := org.Do(t, "POST", jobsPath, map[string]any{"name": "racer", "baseModel": "llama-3.1-8b", "trainingDataset": ds, "suffix": "race", "hyperparameters": map[string]any{"epochs": 1}})
		expect(t, r, 201)
		ids[i] = r.Body["id"].(string)
	}
	for _, id := range ids {
		org.WaitStatus(t, id, time.Minute, "completed")
	}
	statuses := make([]int, 2)
	done := make(chan struct{})
	for i, id := range ids {
		go func() {
			defer func() { done <- struct{}{} }()
			req, _ := http.NewRequest("POST", org.BaseURL+jobsPath+"/"+id+"/deploy", nil)
			req.Header.Set("X-API-Key", org.Key)
			if resp, err := testenv.HTTP.Do(req); err == nil {
				statuses[i] = resp.StatusCode
				resp.Body.Close()
			}
		}()
	}
	<-done
	<-done
	loser := -1
	for i, s := range statuses {
		if s == http.StatusConflict {
			loser = i
		}
	}
	if loser < 0 || statuses[1-loser] != http.StatusOK {
		t.Fatalf("deploy statuses %v; want one 200 and one 409", statuses)
	}
	for _, key := range leftovers(t, org, ids[loser]) {
		if strings.HasPrefix(key, "models/") {
			t.Fatalf("the losing deploy left %s", key)
		}
	}
	if len(leftovers(t, org, ids[1-loser])) == 0 {
		t.Fatal("the winning deploy published nothing")
	}
}
