package platform_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/tuneforge/tuneforge/apikey"
	"github.com/tuneforge/tuneforge/internal/benchutil"
	"github.com/tuneforge/tuneforge/internal/testenv"
)

// TestServing: benchmark 7. Chat completions of a deployed builtin model
// at benchutil.Conns connections, against a handler doing the same work without
// the model: it authenticates the key, decodes the request, reads the
// deployed model's row and answers a fixed completion.
func TestServing(t *testing.T) {
	org := env.NewOrg(t)
	ds := org.Upload(t, "t.jsonl", testenv.Tickets(2000, 3))
	r := org.Do(t, "POST", benchutil.JobsPath, map[string]any{"name": "serve bench", "baseModel": "llama-3.1-8b", "trainingDataset": ds,
		"hardware": "gpu-a100-40gb", "suffix": "serve-bench", "hyperparameters": map[string]any{"epochs": 2}})
	if r.Status != 201 {
		t.Fatalf("create: %d %s", r.Status, r.Raw)
	}
	id := r.Body["id"].(string)
	org.WaitStatus(t, id, 5*time.Minute, "completed")
	if r := org.Do(t, "POST", benchutil.JobsPath+"/"+id+"/deploy", nil); r.Status != 200 {
		t.Fatalf("deploy: %d %s", r.Status, r.Raw)
	}
	model := org.WaitStatus(t, id, time.Minute, "deployed")["resultModel"].(string)

	body, _ := json.Marshal(map[string]any{"model": model, "messages": []map[string]string{
		{"role": "system", "content": "Classify the support ticket."},
		{"role": "user", "content": testenv.TicketQuestion("billing", 5)},
	}})
	key := map[string]string{"Authorization": "Bearer " + org.Key}
	if r := org.Do(t, "POST", "/v1/chat/completions", body); r.Status != 200 {
		t.Fatalf("chat: %d %s", r.Status, r.Raw)
	}
	bare := httptest.NewServer(withoutModel())
	defer bare.Close()
	api := benchutil.Wrk(t, benchutil.Request{Method: "POST", URL: env.API.URL + "/v1/chat/completions", Body: string(body), Header: key})
	ceiling := benchutil.Wrk(t, benchutil.Request{Method: "POST", URL: bare.URL + "/v1/chat/completions", Body: string(body), Header: key})
	results.Add(benchutil.Result{Bench: "7 serving", What: "POST /v1/chat/completions (builtin)", Value: api.String(),
		Ceiling: ceiling.String() + " (no model)", Ratio: fmt.Sprintf("%.2f", api.RPS/ceiling.RPS), Target: "(report)"})
}

// withoutModel answers chat completions as the API does up to the model:
// the key is checked and the deployed model's row read.
func withoutModel() http.Handler {
	keys := apikey.NewCache(env.Store) // as the API remembers keys
	r := gin.New()
	r.POST("/v1/chat/completions", func(c *gin.Context) {
		key, err := keys.Lookup(c, strings.TrimPrefix(c.GetHeader("Authorization"), "Bearer "))
		if err != nil {
			c.String(http.StatusUnauthorized, err.Error())
			return
		}
		var req struct {
			Model    string `json:"model"`
			Messages []struct {
				Role, Content string
			} `json:"messages"`
		}
		if err := c.BindJSON(&req); err != nil {
			return
		}
		if _, err := env.Store.Model(c, key.OrganizationID, req.Model); err != nil {
			c.String(http.StatusNotFound, err.Error())
			return
		}
		c.JSON(http.StatusOK, gin.H{"object": "chat.completion", "model": req.Model,
			"choices": []gin.H{{"message": gin.H{"role": "assistant", "content": "billing"}, "finish_reason": "stop"}}})
	})
	return r
}
