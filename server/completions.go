package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/dataset"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/inference"
	"github.com/tuneforge/tuneforge/trainer"
)

// maxAnswerBody bounds an answer of the inference backend that is read
// whole (one not streamed) before it is passed on.
const maxAnswerBody = 16 << 20

type chatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// chatRequest is the OpenAI-compatible subset tuneforge reads itself. The
// other fields are checked by forwardChat: for a model the inference
// backend serves, the allow-listed ones reach it; builtin models, which
// answer their most likely label, ignore them.
type chatRequest struct {
	Model         string        `json:"model"`
	Messages      []chatMessage `json:"messages"`
	Stream        bool          `json:"stream"`
	StreamOptions struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

func (s *Server) chatCompletions(c *gin.Context) {
	ctx := c.Request.Context()
	body, err := io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, maxJSONBody))
	if err != nil {
		s.respondError(c, jsonError(err, nil, nil))
		return
	}
	var req chatRequest
	if err := json.NewDecoder(bytes.NewReader(body)).Decode(&req); err != nil {
		s.respondError(c, jsonError(err, body, &req))
		return
	}
	// The fields as sent, checked; the allow-listed ones are for the
	// inference backend.
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		s.respondError(c, badRequest("the request body must hold a single JSON object"))
		return
	}
	maxTokens := s.MaxCompletionTokens
	if maxTokens <= 0 {
		maxTokens = DefaultMaxCompletionTokens
	}
	fwd := forwardChat(fields, maxTokens)
	var errs fieldErrors
	if req.Model == "" {
		errs.add("model", "is required: the resultModel of a deployed fine-tuning job")
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
	errs = append(errs, fwd.errs...)
	if err := errs.err(http.StatusBadRequest); err != nil {
		s.respondError(c, err)
		return
	}
	rec, err := s.chatModel(ctx, caller(c).OrganizationID, req.Model)
	if db.IsNotFound(err) {
		s.respondError(c, notFound("deployed model", req.Model))
		return
	}
	if err != nil {
		s.respondError(c, err)
		return
	}
	if rec.Adapter != nil {
		s.proxyCompletion(c, rec, fwd.fields)
		return
	}
	model, err := s.model(ctx, rec)
	if err != nil {
		s.respondError(c, err)
		return
	}
	// The prompt is what the model was trained on: system and user turns.
	ex.Messages = append(ex.Messages, dataset.Message{Role: "assistant"})
	prompt := ex.Input()
	pred := model.Predict(prompt)
	promptTokens, completionTokens := dataset.CountTokens(prompt), dataset.CountTokens(pred.Label)
	id, created := newID("chatcmpl-"), time.Now().Unix()
	usage := chatUsage{PromptTokens: promptTokens, CompletionTokens: completionTokens, TotalTokens: promptTokens + completionTokens}
	if req.Stream {
		streamAnswer(c, chatChunk{ID: id, Object: "chat.completion.chunk", Created: created, Model: req.Model},
			pred.Label, usage, req.StreamOptions.IncludeUsage)
		return
	}
	c.JSON(http.StatusOK, chatCompletion{
		ID: id, Object: "chat.completion", Created: created, Model: req.Model,
		Choices: []chatChoice{{
			Message: chatMessage{Role: "assistant", Content: pred.Label}, FinishReason: "stop", Probability: pred.Probability,
		}},
		Usage: usage,
	})
}

// The OpenAI chat completion objects a builtin model answers with.
type (
	chatUsage struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
		TotalTokens      int `json:"total_tokens"`
	}
	chatChoice struct {
		Index        int         `json:"index"`
		Message      chatMessage `json:"message"`
		FinishReason string      `json:"finish_reason"`
		// Probability is the model's confidence in its label (tuneforge's own).
		Probability float64 `json:"probability"`
	}
	chatCompletion struct {
		ID      string       `json:"id"`
		Object  string       `json:"object"`
		Created int64        `json:"created"`
		Model   string       `json:"model"`
		Choices []chatChoice `json:"choices"`
		Usage   chatUsage    `json:"usage"`
	}
	chatDelta struct {
		Role    string `json:"role,omitempty"`
		Content string `json:"content,omitempty"`
	}
	chunkChoice struct {
		Index        int       `json:"index"`
		Delta        chatDelta `json:"delta"`
		FinishReason *string   `json:"finish_reason"`
	}
	chatChunk struct {
		ID      string        `json:"id"`
		Object  string        `json:"object"`
		Created int64         `json:"created"`
		Model   string        `json:"model"`
		Choices []chunkChoice `json:"choices"`
		Usage   *chatUsage    `json:"usage,omitempty"`
	}
)

// streamAnswer sends a builtin model's whole answer as OpenAI streams one:
// a chunk with the content, one with the finish reason, one with the usage
// when the client asked for it, then [DONE]. Each chunk starts as head.
func streamAnswer(c *gin.Context, head chatChunk, content string, usage chatUsage, includeUsage bool) {
	chunk := func(choices []chunkChoice, usage *chatUsage) chatChunk {
		out := head
		out.Choices, out.Usage = choices, usage
		return out
	}
	stop := "stop"
	events := []chatChunk{
		chunk([]chunkChoice{{Delta: chatDelta{Role: "assistant", Content: content}}}, nil),
		chunk([]chunkChoice{{FinishReason: &stop}}, nil),
	}
	if includeUsage {
		events = append(events, chunk([]chunkChoice{}, &usage))
	}
	startStream(c)
	for _, e := range events {
		b, _ := json.Marshal(e)
		fmt.Fprintf(c.Writer, "data: %s\n\n", b)
	}
	io.WriteString(c.Writer, "data: [DONE]\n\n")
	c.Writer.Flush()
}

// startStream begins a 200 answer of server-sent events.
func startStream(c *gin.Context) {
	c.Header("Content-Type", "text/event-stream")
	c.Header("Cache-Control", "no-cache")
	c.Header("X-Accel-Buffering", "no") // tells proxies such as nginx not to buffer the events
	c.Status(http.StatusOK)
}

// proxyCompletion answers with a model the inference backend serves as an
// adapter: the request's allow-listed fields (forwardChat) go to the
// backend, naming the adapter, and the answer comes back, streamed or
// whole, naming the model the client asked for.
func (s *Server) proxyCompletion(c *gin.Context, rec db.Model, fields map[string]json.RawMessage) {
	ctx := c.Request.Context()
	be, err := s.Inference.For(ctx, rec.BaseModel)
	if err != nil {
		s.log.ErrorContext(ctx, "a deployed model's inference backend is missing", "model", rec.Name, "job", rec.JobID, "err", err)
		s.respondError(c, newError(http.StatusServiceUnavailable, "unavailable", "model %s is served by an inference backend of %s, and none is available", rec.Name, rec.BaseModel))
		return
	}
	adapter := *rec.Adapter
	fields["model"], _ = json.Marshal(adapter)
	body, err := json.Marshal(fields)
	if err != nil {
		s.respondError(c, fmt.Errorf("encode the request for the inference backend: %w", err))
		return
	}
	resp, err := be.Client.ChatCompletions(ctx, body)
	if ctx.Err() == nil && inference.IsUnavailable(err) && backendStatus(err) == 0 && s.Inference.Forget(rec.BaseModel, be) {
		// A backend this process started does not answer: start it again
		// (the starter returns it as it is if it still runs); the adapter
		// is loaded below.
		if be, err = s.Inference.For(ctx, rec.BaseModel); err == nil {
			resp, err = be.Client.ChatCompletions(ctx, body)
		}
	}
	if backendStatus(err) == http.StatusNotFound {
		// The backend lost the adapter (it restarted, say): load it again
		// from where the deploy materialized it, and ask once more.
		s.log.InfoContext(ctx, "reload adapter into the inference backend", "model", rec.Name, "adapter", adapter)
		if lerr := be.Client.LoadAdapter(ctx, adapter, inference.AdapterPath(be.AdapterDir, rec.JobID)); inference.IsUnavailable(lerr) {
			err = lerr
		} else {
			// A refusal may be a concurrent request's reload; asking again tells.
			resp, err = be.Client.ChatCompletions(ctx, body)
		}
	}
	// The backend may have taken longer than the server's write timeout.
	s.extendWrite(c)
	if err != nil {
		s.respondError(c, s.backendError(ctx, rec, err))
		return
	}
	defer resp.Body.Close()
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		startStream(c)
		if err := inference.CopyStream(s.streamWriter(c), c.Writer.Flush, resp.Body, rec.Name); err != nil {
			// The answer has begun, so it can only end here; the log says why.
			s.log.WarnContext(ctx, "streamed answer of the inference backend broke off", "model", rec.Name, "adapter", adapter, "err", err)
		}
		return
	}
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBody+1))
	if err == nil && len(answer) > maxAnswerBody {
		err = fmt.Errorf("the answer exceeds %d bytes", maxAnswerBody)
	}
	if err == nil {
		answer, err = inference.RewriteModel(answer, rec.Name)
	}
	s.extendWrite(c)
	if err != nil {
		s.log.WarnContext(ctx, "unreadable answer of the inference backend", "model", rec.Name, "adapter", adapter, "err", err)
		s.respondError(c, newError(http.StatusBadGateway, "bad_gateway", "the inference backend's answer was unreadable; try again"))
		return
	}
	c.Data(http.StatusOK, "application/json", answer)
}

func backendStatus(err error) int {
	var ierr *inference.Error
	if errors.As(err, &ierr) {
		return ierr.Status
	}
	return 0
}

// backendError is the API's answer to a failed call to the inference
// backend. A refusal of the request is the client's to fix, so its status
// and message pass through, naming the client's model rather than the
// adapter; anything else is the backend's trouble, a 503.
func (s *Server) backendError(ctx context.Context, rec db.Model, err error) error {
	var ierr *inference.Error
	if !errors.As(err, &ierr) {
		return err
	}
	codes := map[int]string{
		http.StatusBadRequest: "invalid_request", http.StatusConflict: "conflict", http.StatusRequestEntityTooLarge: "payload_too_large",
		http.StatusUnprocessableEntity: "unprocessable_entity", http.StatusTooManyRequests: "rate_limited",
	}
	// Authentication failures and unknown models are not the client's doing.
	if inference.IsRefused(err) && ierr.Status != http.StatusUnauthorized && ierr.Status != http.StatusForbidden &&
		ierr.Status != http.StatusNotFound && ierr.Status != http.StatusProxyAuthRequired {
		code, ok := codes[ierr.Status]
		if !ok {
			code = "invalid_request"
		}
		return newError(ierr.Status, code, "the inference backend refused the request: %s", strings.ReplaceAll(ierr.Message, *rec.Adapter, rec.Name))
	}
	if ctx.Err() == nil {
		s.log.WarnContext(ctx, "inference backend unavailable", "model", rec.Name, "adapter", *rec.Adapter, "err", err)
	}
	return newError(http.StatusServiceUnavailable, "unavailable", "the inference backend serving model %s is unavailable; try again later", rec.Name)
}

// model returns a builtin model. The row is read on every request, so a
// deleted or redeployed model is never served from a stale cache (on this
// replica or another); the model is cached by its artifact key, which is
// unique to the deploying job.
// chatModel finds the model a chat names: a deployed model, or a kept
// checkpoint of a job by its checkpoint model name (as OpenAI serves its
// fine_tuned_model_checkpoint). A builtin checkpoint is served as it is; an
// adapter's must be deployed first, which loads it into its backend.
func (s *Server) chatModel(ctx context.Context, org, name string) (db.Model, error) {
	n, ok := parseFineTunedName(name)
	if !ok || !n.Checkpoint {
		return s.Store.Model(ctx, org, name)
	}
	job, err := s.Store.Job(ctx, org, n.JobID)
	if err != nil {
		return db.Model{}, err
	}
	k, err := s.Store.CheckpointAtStep(ctx, job.ID, n.Step)
	if err != nil {
		return db.Model{}, err
	}
	if _, dir, _ := artifacts.ParseCheckpointKey(job.ID, artifacts.RollingKey(job.ID, k.BlobKey)); dir {
		return db.Model{}, newError(http.StatusConflict, "conflict",
			"checkpoint %s of job %s is a LoRA adapter, served once deployed: POST /api/v1/fine-tuning/jobs/%s/deploy with {\"checkpoint\": %q}",
			k.ID, job.ID, job.ID, k.ID)
	}
	return db.Model{Name: name, OrganizationID: org, JobID: job.ID, BaseModel: job.BaseModel, BlobKey: k.BlobKey}, nil
}

func (s *Server) model(ctx context.Context, rec db.Model) (*trainer.Model, error) {
	return s.models.Get(ctx, rec.BlobKey)
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

type modelList struct {
	Object string      `json:"object"`
	Data   []modelView `json:"data"`
}

func viewModel(m db.Model) modelView {
	return modelView{ID: m.Name, Object: "model", Created: m.CreatedAt.Unix(), OwnedBy: m.OrganizationID, BaseModel: m.BaseModel, JobID: m.JobID, Card: m.Card}
}

// listModels lists the organization's deployed models, OpenAI style, each
// with its model card.
func (s *Server) listModels(c *gin.Context) {
	rows, err := s.Store.Models(c.Request.Context(), caller(c).OrganizationID)
	if err != nil {
		s.respondError(c, err)
		return
	}
	out := make([]modelView, len(rows))
	for i, m := range rows {
		out[i] = viewModel(m)
	}
	c.JSON(http.StatusOK, modelList{Object: "list", Data: out})
}

func (s *Server) getModel(c *gin.Context) {
	name := c.Param("model")
	m, err := s.Store.Model(c.Request.Context(), caller(c).OrganizationID, name)
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
