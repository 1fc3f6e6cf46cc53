package platform_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.temporal.io/sdk/client"

	"github.com/tuneforge/tuneforge/db/dbsqlc"
	"github.com/tuneforge/tuneforge/internal/benchdata"
	"github.com/tuneforge/tuneforge/internal/dbtest"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/jobstatus"
)

const jobsPath = "/api/v1/fine-tuning/jobs"

// idlePool is a pool no worker serves: jobs created by the benchmark wait
// there for a GPU instead of training.
const idlePool = "gpu-a100-80gb-x4"

// TestAPIThroughput: benchmarks 2 and 3. Reads of one job and of the
// first page of an organization of 1000 jobs, and job creation, at
// wrkConns connections, each against a bare Gin + pgx handler running the
// same SQL (no authentication, no validation, no workflow) on the same
// pool; and creation against raw client.ExecuteWorkflow calls on the same
// Temporal server.
func TestAPIThroughput(t *testing.T) {
	ctx := context.Background()
	org := env.NewOrg(t)
	ds := org.Upload(t, "t.jsonl", testenv.Tickets(200, 1))
	if err := benchdata.LoadJobs(ctx, env.Store.Pool, org.ID, ds, 1000); err != nil {
		t.Fatal(err)
	}
	bare := httptest.NewServer(bareAPI(env.Store.Pool, org.ID))
	defer bare.Close()
	key := map[string]string{"X-API-Key": org.Key}
	job := benchdata.JobID(org.ID, 500)

	reads := []struct{ name, api, bare string }{
		{"GET /jobs/:id", env.API.URL + jobsPath + "/" + job, bare.URL + "/jobs/" + job},
		{"GET /jobs", env.API.URL + jobsPath, bare.URL + "/jobs"},
	}
	for _, r := range reads {
		api := runWrk(t, request{method: "GET", url: r.api, header: key})
		ceiling := runWrk(t, request{method: "GET", url: r.bare})
		ratio := api.rps / ceiling.rps
		results.add(result{"2 API throughput", r.name, api.String(), ceiling.String(), fmt.Sprintf("%.2f", ratio), "≥ 0.70", verdict(ratio >= 0.7)})
	}

	starts := rawStarts(t)
	body, _ := json.Marshal(map[string]any{
		"name": "bench", "baseModel": "llama-3.1-8b", "trainingDataset": ds, "hardware": idlePool,
		"hyperparameters": map[string]any{"epochs": 1},
	})
	api := runWrk(t, request{method: "POST", url: env.API.URL + jobsPath, body: string(body), header: key})
	ceiling := runWrk(t, request{method: "POST", url: bare.URL + "/jobs", body: string(body)})
	results.add(result{"2 API throughput", "POST /jobs", api.String(), ceiling.String() + " (INSERT only)",
		fmt.Sprintf("%.2f", api.rps/ceiling.rps), "(none)", ""})
	ratio := api.rps / starts
	results.add(result{"3 workflow starts", "jobs created/s", fmt.Sprintf("%.0f/s", api.rps), fmt.Sprintf("%.0f ExecuteWorkflow/s", starts),
		fmt.Sprintf("%.2f", ratio), "≥ 0.80", verdict(ratio >= 0.8)})
	waitValidated(t, env.Store.Pool, org.ID)
}

// bareAPI is the ceiling of the API's reads and writes: Gin without
// middleware running the same generated queries on the same pool, for the
// organization org, without authentication or validation.
func bareAPI(pool *pgxpool.Pool, org string) http.Handler {
	q := dbsqlc.New()
	r := gin.New()
	r.GET("/jobs/:id", func(c *gin.Context) {
		j, err := q.GetJob(c, pool, dbsqlc.GetJobParams{OrganizationID: org, ID: c.Param("id")})
		if err != nil {
			c.String(http.StatusInternalServerError, err.Error())
			return
		}
		c.JSON(http.StatusOK, j)
	})
	r.GET("/jobs", func(c *gin.Context) {
		jobs, err := q.ListJobs(c, pool, dbsqlc.ListJobsParams{OrganizationID: org, Sort: "createdAt:desc", Lim: 21})
		if err != nil {
			c.String(http.StatusInternalServerError, err.Error())
			return
		}
		n, err := q.CountJobs(c, pool, dbsqlc.CountJobsParams{OrganizationID: org, Most: 1001})
		if err != nil {
			c.String(http.StatusInternalServerError, err.Error())
			return
		}
		c.JSON(http.StatusOK, gin.H{"count": n, "jobs": jobs})
	})
	var n atomic.Int64
	r.POST("/jobs", func(c *gin.Context) {
		var in struct {
			Name, BaseModel, TrainingDataset, Hardware string
		}
		if err := c.BindJSON(&in); err != nil {
			return
		}
		j, err := q.CreateJob(c, pool, dbsqlc.CreateJobParams{
			ID: fmt.Sprintf("ftjob_bare_%s_%d", dbtest.RandomHex(4), n.Add(1)), OrganizationID: org, Owner: "u", Name: in.Name,
			BaseModel: in.BaseModel, HardwareID: in.Hardware, Status: jobstatus.Queued, TrainingDataset: in.TrainingDataset,
			TrainingDatasetID: in.TrainingDataset, TrainingFile: "t.jsonl", Epochs: 1, LearningRate: 0.0002, BatchSize: 8,
			Metadata: map[string]string{}, CreatedAt: time.Now(),
		})
		if err != nil {
			c.String(http.StatusInternalServerError, err.Error())
			return
		}
		c.JSON(http.StatusCreated, j)
	})
	return r
}

// rawStarts is how many workflows a second wrkConns callers of
// client.ExecuteWorkflow start on the platform's Temporal server, for
// wrkTime. The workflows go to a task queue nobody polls and time out.
func rawStarts(t *testing.T) float64 {
	deadline := time.Now().Add(wrkTime)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	var started atomic.Int64
	var failed atomic.Value
	prefix := "bench-start-" + dbtest.RandomHex(4)
	begin := time.Now()
	var wg sync.WaitGroup
	for range wrkConns {
		wg.Go(func() {
			for ctx.Err() == nil {
				_, err := env.Temporal.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
					ID: fmt.Sprintf("%s-%d", prefix, started.Add(1)), TaskQueue: "bench-nobody", WorkflowRunTimeout: time.Minute,
				}, "BenchNothing")
				// gRPC may give up a moment before the deadline itself.
				if err != nil && time.Until(deadline) > 100*time.Millisecond {
					failed.Store(err)
				}
			}
		})
	}
	wg.Wait()
	if err, ok := failed.Load().(error); ok {
		t.Fatalf("ExecuteWorkflow: %v", err)
	}
	// The call in flight at the deadline did not complete.
	return float64(started.Load()-int64(wrkConns)) / time.Since(begin).Seconds()
}

// waitValidated waits until every job of org has validated its dataset,
// so that the benchmarks after this one run on a quiet platform.
func waitValidated(t *testing.T, pool *pgxpool.Pool, org string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Minute)
	for {
		var n int
		err := pool.QueryRow(context.Background(),
			`SELECT count(*) FROM jobs WHERE organization_id = $1 AND hardware_id = $2 AND validated_at IS NULL AND id NOT LIKE 'ftjob_bare_%'`, org, idlePool).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d created jobs still validate after 10 minutes", n)
		}
		time.Sleep(time.Second)
	}
}
