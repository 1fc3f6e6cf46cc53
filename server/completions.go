package server

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/tuneforge/tuneforge/dataset"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/db/dbsqlc"
	"github.com/tuneforge/tuneforge/trainer"
)

type chatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// chatRequest is the OpenAI-compatible subset served. Other fields OpenAI
// clients send (sampling parameters, user, …) are accepted and ignored: the
// builtin model answers its most likely label.
type chatRequest struct {
	Model    string        `json:"model"`
	Messages []chatMessage `json:"messages"`
	Stream   bool          `json:"stream"`
}

func (s *Server) chatCompletions(c *gin.Context) {
	ctx := c.Request.Context()
	var req chatRequest
	if err := decodeJSON(c, &req, false); err != nil {
		s.respondError(c, err)
		return
	}
	var errs fieldErrors
	if req.Model == "" {
		errs.add("model", "is required: the resultModel of a deployed fine-tuning job")
	}
	if req.Stream {
		errs.add("stream", "streaming is not supported; send stream: false")
	}
	if len(req.Messages) == 0 {
		errs.add("messages", "must hold at least one message")
	}
	ex := dataset.Example{}
	for i, m := range req.Messages {
		if m.Role != "system" && m.Role != "user" && m.Role != "assistant" {
			errs.add("messages", "message %d has role %q; expected system, user or assistant", i+1, m.Role)
		}
		ex.Messages = append(ex.Messages, dataset.Message{Role: m.Role, Content: m.Content})
	}
	if err := errs.err(http.StatusBadRequest); err != nil {
		s.respondError(c, err)
		return
	}
	org := caller(c).OrganizationID
	model, err := s.model(ctx, org, req.Model)
	if errors.Is(err, db.ErrNotFound) {
		s.respondError(c, notFound("deployed model", req.Model))
		return
	}
	if err != nil {
		s.respondError(c, err)
		return
	}
	// The prompt is what the model was trained on: system and user turns.
	ex.Messages = append(ex.Messages, dataset.Message{Role: "assistant"})
	prompt := ex.Input()
	pred := model.Predict(prompt)
	promptTokens, completionTokens := dataset.CountTokens(prompt), dataset.CountTokens(pred.Label)
	c.JSON(http.StatusOK, gin.H{
		"id":      newID("chatcmpl-"),
		"object":  "chat.completion",
		"created": time.Now().Unix(),
		"model":   req.Model,
		"choices": []gin.H{{
			"index":         0,
			"message":       chatMessage{Role: "assistant", Content: pred.Label},
			"finish_reason": "stop",
			"probability":   pred.Probability,
		}},
		"usage": gin.H{"prompt_tokens": promptTokens, "completion_tokens": completionTokens, "total_tokens": promptTokens + completionTokens},
	})
}

// model returns the organization's deployed model called name. The row is
// read on every request, so a deleted or redeployed model is never served
// from a stale cache (on this replica or another); the weights are cached
// by their artifact key, which is unique to the deploying job.
func (s *Server) model(ctx context.Context, org, name string) (*trainer.State, error) {
	rec, err := s.Store.Q.GetDeployedModel(ctx, s.Store.Pool, dbsqlc.GetDeployedModelParams{OrganizationID: org, Name: name})
	if err != nil {
		return nil, db.NotFound(err)
	}
	return s.models.get(rec.BlobKey, func() (*trainer.State, error) {
		b, err := s.Artifacts.Get(ctx, rec.BlobKey)
		if err != nil {
			return nil, err
		}
		var st trainer.State
		if err := st.UnmarshalBinary(b); err != nil {
			return nil, err
		}
		return &st, nil
	})
}

type modelView struct {
	ID        string `json:"id"`
	Object    string `json:"object"`
	Created   int64  `json:"created"`
	OwnedBy   string `json:"owned_by"`
	BaseModel string `json:"base_model"`
	JobID     string `json:"job_id"`
	Card      string `json:"card"`
}

func viewModel(m dbsqlc.DeployedModel) modelView {
	return modelView{ID: m.Name, Object: "model", Created: m.CreatedAt.Unix(), OwnedBy: m.OrganizationID, BaseModel: m.BaseModel, JobID: m.JobID, Card: m.Card}
}

// listModels lists the organization's deployed models, OpenAI style, each
// with its model card.
func (s *Server) listModels(c *gin.Context) {
	rows, err := s.Store.Q.ListDeployedModels(c.Request.Context(), s.Store.Pool, caller(c).OrganizationID)
	if err != nil {
		s.respondError(c, err)
		return
	}
	out := make([]modelView, len(rows))
	for i, m := range rows {
		out[i] = viewModel(m)
	}
	c.JSON(http.StatusOK, gin.H{"object": "list", "data": out})
}

func (s *Server) getModel(c *gin.Context) {
	name := c.Param("model")
	m, err := s.Store.Q.GetDeployedModel(c.Request.Context(), s.Store.Pool, dbsqlc.GetDeployedModelParams{OrganizationID: caller(c).OrganizationID, Name: name})
	if db.IsNotFound(err) {
		s.respondError(c, notFound("deployed model", name))
		return
	}
	if err != nil {
		s.respondError(c, err)
		return
	}
	c.JSON(http.StatusOK, viewModel(m))
}

// modelCache keeps recently used model weights in memory, by artifact key.
type modelCache struct {
	mu     sync.Mutex
	max    int
	models map[string]*trainer.State
}

func newModelCache(max int) *modelCache {
	return &modelCache{max: max, models: make(map[string]*trainer.State)}
}

func (m *modelCache) get(key string, load func() (*trainer.State, error)) (*trainer.State, error) {
	m.mu.Lock()
	st, ok := m.models[key]
	m.mu.Unlock()
	if ok {
		return st, nil
	}
	st, err := load()
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.models) >= m.max {
		for evict := range m.models {
			delete(m.models, evict)
			break
		}
	}
	m.models[key] = st
	return st, nil
}
