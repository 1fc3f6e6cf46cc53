package platform_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/db/dbsqlc"
	"github.com/tuneforge/tuneforge/internal/benchdata"
	"github.com/tuneforge/tuneforge/internal/benchutil"
	"github.com/tuneforge/tuneforge/internal/dbtest"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/jobstatus"
	"github.com/tuneforge/tuneforge/trainer"
)

// TestAPIThroughput: benchmarks 2 and 3. Reads of one job and of the
// first page of an organization of 1000 jobs, and job creation, at
// benchutil.Conns connections, each against a bare Gin + pgx handler running the
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
		{"GET /jobs/:id", env.API.URL + benchutil.JobsPath + "/" + job, bare.URL + "/jobs/" + job},
		{"GET /jobs", env.API.URL + benchutil.JobsPath, bare.URL + "/jobs"},
	}
	for _, r := range reads {
		api := benchutil.Wrk(t, benchutil.Request{Method: "GET", URL: r.api, Header: key})
		ceiling := benchutil.Wrk(t, benchutil.Request{Method: "GET", URL: r.bare})
		ratio := api.RPS / ceiling.RPS
		results.Add(benchutil.Result{Bench: "2 API throughput", What: r.name, Value: api.String(), Ceiling: ceiling.String(),
			Ratio: fmt.Sprintf("%.2f", ratio), Target: "≥ 0.70", Met: benchutil.Verdict(ratio >= 0.7)})
	}

	starts, err := benchutil.RawStarts(ctx, env.Temporal, benchutil.Conns, benchutil.Time)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]any{
		"name": "bench", "baseModel": "llama-3.1-8b", "trainingDataset": ds, "hardware": benchutil.IdlePool,
		"hyperparameters": map[string]any{"epochs": 1},
	})
	api := benchutil.Wrk(t, benchutil.Request{Method: "POST", URL: env.API.URL + benchutil.JobsPath, Body: string(body), Header: key})
	ceiling := benchutil.Wrk(t, benchutil.Request{Method: "POST", URL: bare.URL + "/jobs", Body: string(body)})
	results.Add(benchutil.Result{Bench: "2 API throughput", What: "POST /jobs", Value: api.String(), Ceiling: ceiling.String() + " (INSERT only)",
		Ratio: fmt.Sprintf("%.2f", api.RPS/ceiling.RPS), Target: "(none)"})
	ratio := api.RPS / starts
	results.Add(benchutil.Result{Bench: "3 workflow starts", What: "jobs created/s", Value: fmt.Sprintf("%.0f/s", api.RPS),
		Ceiling: fmt.Sprintf("%.0f ExecuteWorkflow/s", starts), Ratio: fmt.Sprintf("%.2f", ratio), Target: "≥ 0.80", Met: benchutil.Verdict(ratio >= 0.8)})
	// The benchmarks after this one run on a quiet platform.
	if err := benchutil.WaitValidated(ctx, env.Store.Pool, org.ID, benchutil.IdlePool, 10*time.Minute); err != nil {
		t.Fatal(err)
	}
}

// bareAPI is the ceiling of the API's reads and writes: Gin without
// middleware running the same generated queries on the same pool, the list
// planned for each call as the API plans it, for the organization org,
// without authentication or validation.
func bareAPI(pool *pgxpool.Pool, org string) http.Handler {
	q := dbsqlc.New()
	r := gin.New()
	r.GET("/jobs/:id", func(c *gin.Context) {
		j, err := q.GetJobDetail(c, pool, dbsqlc.GetJobDetailParams{OrganizationID: org, ID: c.Param("id")})
		if err != nil {
			c.String(http.StatusInternalServerError, err.Error())
			return
		}
		c.JSON(http.StatusOK, j)
	})
	r.GET("/jobs", func(c *gin.Context) {
		jobs, err := q.ListJobs(c, db.CustomPlans(pool), dbsqlc.ListJobsParams{OrganizationID: org, Sort: "createdAt:desc", Lim: 21})
		if err != nil {
			c.String(http.StatusInternalServerError, err.Error())
			return
		}
		n, err := q.CountJobs(c, db.CustomPlans(pool), dbsqlc.CountJobsParams{OrganizationID: org, Most: 1001})
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
			ID: fmt.Sprintf("%s%s_%d", benchutil.BareJobPrefix, dbtest.RandomHex(4), n.Add(1)), OrganizationID: org, Owner: "u", Name: in.Name,
			BaseModel: in.BaseModel, HardwareID: in.Hardware, Status: jobstatus.Queued, TrainingDataset: in.TrainingDataset,
			TrainingDatasetID: in.TrainingDataset, TrainingFile: "t.jsonl", Epochs: 1, LearningRate: 0.0002, BatchSize: 8,
			Metadata: map[string]string{}, CreatedAt: time.Now(), Method: db.MethodSupervised, LoraRank: trainer.DefaultLoRARank,
		})
		if err != nil {
			c.String(http.StatusInternalServerError, err.Error())
			return
		}
		c.JSON(http.StatusCreated, j)
	})
	return r
}
