// Package server is tuneforge's REST API: Gin handlers that read the
// PostgreSQL read model and drive job workflows through Temporal updates.
package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.temporal.io/sdk/client"

	"github.com/tuneforge/tuneforge/apikey"
	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/console"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/inference"
	"github.com/tuneforge/tuneforge/serving"
	"github.com/tuneforge/tuneforge/workflows"
)

// Limits on what a request may carry.
const (
	maxJSONBody = 1 << 20
	// maxHeaderBytes bounds the request line and headers; keys, trace
	// context and query strings fit many times over.
	maxHeaderBytes = 64 << 10
)

// Deps is what the API needs.
type Deps struct {
	Store     *db.Store
	Temporal  client.Client
	Artifacts *artifacts.Store
	// DataDir is the platform's data directory; ImportDir defaults to its
	// import/.
	DataDir string
	// ImportDir is the only directory trainingDataset and validationFile
	// paths are imported from, created by New; "" means DataDir/import.
	ImportDir string
	Logger    *slog.Logger
	// GPULiveness is how recently a training worker must have been seen.
	GPULiveness time.Duration
	// RateLimit is the requests per second each API key may make (with a
	// burst of twice that); 0 means unlimited.
	RateLimit float64
	// AuthFailureRate is the failed authentications per second (with a
	// burst of as many) a client address may make before its requests are
	// refused without a database lookup; 0 means unlimited.
	AuthFailureRate float64
	// TrustedProxies are the proxies (addresses or CIDRs) whose
	// X-Forwarded-For header names the client; with none, the client is
	// the connection's peer and the header is ignored.
	TrustedProxies []string
	// Datasets bounds what each organization stores.
	Datasets DatasetLimits
	// Timeouts bound how long a client may hold a connection.
	Timeouts Timeouts
	// Inference routes models trained by the command trainer (LoRA
	// adapters) to the backend of their base model; nil when none is
	// configured.
	Inference *inference.Backends
	// MaxActiveJobs caps each organization's queued plus running jobs; 0
	// means no cap.
	MaxActiveJobs int
	// StreamsPerKey and StreamsPerOrg cap the followed logs (follow=true)
	// each API key and each organization may hold open at once; 0 means
	// no cap.
	StreamsPerKey, StreamsPerOrg int
	// ModelCacheBytes is the memory builtin models may take while served;
	// 0 means serving.DefaultCacheBytes.
	ModelCacheBytes int64
	// TransitionWait is how long a stop or restart waits for the job's
	// workflow to carry it out before answering 202 (still under way);
	// 0 means 30 s.
	TransitionWait time.Duration
	// MaxCompletionTokens caps the tokens a chat completion of the
	// inference backend may generate (max_tokens, which is always sent);
	// 0 means DefaultMaxCompletionTokens.
	MaxCompletionTokens int
}

// Server serves the API.
type Server struct {
	Deps
	log     *slog.Logger
	engine  *gin.Engine
	models  *serving.Models
	metrics *httpMetrics
	// limiter and authFailures share their buckets with the other
	// replicas through PostgreSQL (see ratelimit.go).
	limiter *rateLimiter
	keys    *apikey.Cache
	// authFailures counts failed authentications per client address.
	authFailures *rateLimiter
	// streams counts open followed logs; logs polls them, once per job.
	streams *streamLimits
	logs    *logHub
	// readyDB and readyTemporal answer /readyz.
	readyDB, readyTemporal healthCheck
	// creating serializes the creates of each Idempotency-Key.
	creating keyLocks
	// revisions chooses new jobs' workflow revision.
	revisions *revisions
}

// New builds the API's router.
func New(d Deps) *Server {
	gin.SetMode(gin.ReleaseMode)
	d.Timeouts = d.Timeouts.withDefaults()
	shared := newSharedBuckets(d.Store.Pool, d.Logger)
	s := &Server{Deps: d, log: d.Logger, engine: gin.New(), models: serving.New(d.Artifacts, d.ModelCacheBytes),
		limiter:      newSharedRateLimiter(shared, "key:", d.RateLimit, max(1, int(2*d.RateLimit))),
		keys:         apikey.NewCache(d.Store),
		authFailures: newSharedRateLimiter(shared, "addr:", d.AuthFailureRate, max(1, int(d.AuthFailureRate))),
		streams:      newStreamLimits(d.StreamsPerKey, d.StreamsPerOrg),
		logs:         newLogHub(d.Store, d.Logger),
		revisions:    &revisions{temporal: d.Temporal, queue: workflows.ControlTaskQueue},
	}
	if err := os.MkdirAll(s.importDir(), 0o755); err != nil {
		// Imports by path then find no file; uploads work all the same.
		s.log.Warn("cannot create the import directory: jobs can use uploaded datasets only (set TUNEFORGE_IMPORT_DIR to one this process may create)",
			"dir", s.importDir(), "err", err)
	}
	if err := s.engine.SetTrustedProxies(d.TrustedProxies); err != nil {
		// config.FromEnv checks them; trusting no proxy is the safe fallback.
		s.log.Error("ignoring the trusted proxies", "err", err)
		_ = s.engine.SetTrustedProxies(nil)
	}
	s.metrics = newHTTPMetrics(prometheus.DefaultRegisterer)
	s.engine.Use(s.recover, s.observe)
	s.engine.HandleMethodNotAllowed = true
	s.engine.NoRoute(func(c *gin.Context) {
		s.respondError(c, newError(http.StatusNotFound, "not_found", "no route %s %s", c.Request.Method, c.Request.URL.Path))
	})
	s.engine.NoMethod(func(c *gin.Context) {
		s.respondError(c, newError(http.StatusMethodNotAllowed, "method_not_allowed", "%s is not allowed on %s", c.Request.Method, c.Request.URL.Path))
	})

	s.engine.GET("/healthz", s.health)
	s.engine.GET("/readyz", s.ready)
	s.engine.GET("/openapi.json", s.openAPIDocument)
	s.engine.GET("/docs", s.docs)
	// The web console: a page and its assets, which call the API above.
	ui := console.Handler()
	s.engine.GET("/", gin.WrapH(ui))
	s.engine.GET("/console/*file", gin.WrapH(http.StripPrefix("/console", ui)))

	read, write := s.auth(apikey.ScopeRead), s.auth(apikey.ScopeWrite)
	ft := s.engine.Group("/api/v1/fine-tuning")
	ft.GET("/jobs", read, s.listJobs)
	ft.POST("/jobs", write, s.createJob)
	ft.GET("/jobs/:id", read, s.getJob)
	ft.DELETE("/jobs/:id", write, s.deleteJob)
	ft.POST("/jobs/:id/stop", write, s.stopJob)
	ft.POST("/jobs/:id/restart", write, s.restartJob)
	ft.POST("/jobs/:id/deploy", write, s.deployJob)
	ft.GET("/jobs/:id/logs", read, s.jobLogs)
	ft.GET("/jobs/:id/metrics", read, s.jobMetrics)
	ft.GET("/jobs/:id/events", read, s.jobEvents)
	ft.GET("/jobs/:id/checkpoints", read, s.jobCheckpoints)
	ft.GET("/jobs/:id/artifacts", read, s.jobArtifacts)
	ft.GET("/jobs/:id/artifacts/:artifactId", read, s.downloadJobArtifact)
	ft.GET("/stats", read, s.stats)
	ft.GET("/base-models", read, s.baseModels)
	ft.GET("/hardware", read, s.hardware)
	ft.POST("/estimate-cost", read, s.estimateCost)
	ft.POST("/datasets", write, s.uploadDataset)
	ft.GET("/datasets", read, s.listDatasets)
	ft.GET("/datasets/:id", read, s.getDataset)
	ft.DELETE("/datasets/:id", write, s.deleteDataset)
	s.engine.POST("/v1/files", write, s.openAIUploadFile)
	s.engine.GET("/v1/files", read, s.openAIListFiles)
	s.engine.GET("/v1/files/:id", read, s.openAIGetFile)
	s.engine.GET("/v1/files/:id/content", read, s.openAIFileContent)
	s.engine.DELETE("/v1/files/:id", write, s.openAIDeleteFile)
	s.engine.POST("/v1/fine_tuning/jobs", write, s.openAICreateJob)
	s.engine.GET("/v1/fine_tuning/jobs", read, s.openAIListJobs)
	s.engine.GET("/v1/fine_tuning/jobs/:id", read, s.openAIGetJob)
	s.engine.POST("/v1/fine_tuning/jobs/:id/cancel", write, s.openAICancelJob)
	s.engine.POST("/v1/fine_tuning/jobs/:id/pause", write, s.openAIPauseJob)
	s.engine.POST("/v1/fine_tuning/jobs/:id/resume", write, s.openAIResumeJob)
	s.engine.GET("/v1/fine_tuning/jobs/:id/events", read, s.openAIJobEvents)
	s.engine.GET("/v1/fine_tuning/jobs/:id/checkpoints", read, s.openAIJobCheckpoints)
	s.engine.POST("/v1/chat/completions", read, s.chatCompletions)
	s.engine.GET("/v1/models", read, s.listModels)
	s.engine.GET("/v1/models/:model", read, s.getModel)
	return s
}

// Routes lists the routes the API serves as "METHOD /path/{param}", the
// spelling of its OpenAPI document, which must describe each one.
func (s *Server) Routes() []string {
	var out []string
	for _, r := range s.engine.Routes() {
		parts := strings.Split(r.Path, "/")
		for i, p := range parts {
			if len(p) > 1 && (p[0] == ':' || p[0] == '*') {
				parts[i] = "{" + p[1:] + "}"
			}
		}
		out = append(out, r.Method+" "+strings.Join(parts, "/"))
	}
	return out
}

// ServeHTTP makes Server an http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.engine.ServeHTTP(w, r) }

// HTTPServer is the API's HTTP server on addr, with its timeouts.
func (s *Server) HTTPServer(addr string) *http.Server {
	t := s.Timeouts
	return &http.Server{
		Addr: addr, Handler: s, MaxHeaderBytes: maxHeaderBytes,
		ReadHeaderTimeout: t.ReadHeader, ReadTimeout: t.Read, WriteTimeout: t.Write, IdleTimeout: t.Idle,
	}
}

// ListenAndServe serves on addr until ctx ends, then shuts down gracefully.
// Meanwhile it sweeps the objects of uploads that crashed halfway.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	go s.sweepOrphans(ctx)
	return serve(ctx, s.HTTPServer(addr))
}

// MetricsServer serves Prometheus metrics at /metrics on addr: a listener
// of its own, kept off the public API port.
func MetricsServer(addr string) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.Handler())
	t := Timeouts{}.withDefaults()
	return &http.Server{
		Addr: addr, Handler: mux, MaxHeaderBytes: maxHeaderBytes,
		ReadHeaderTimeout: t.ReadHeader, ReadTimeout: t.Read, WriteTimeout: t.Write, IdleTimeout: t.Idle,
	}
}

// ListenAndServeMetrics serves MetricsServer on addr until ctx ends.
func ListenAndServeMetrics(ctx context.Context, addr string) error {
	return serve(ctx, MetricsServer(addr))
}

// serve runs srv until ctx ends, then shuts it down gracefully.
func serve(ctx context.Context, srv *http.Server) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
		defer cancel()
		return srv.Shutdown(shutdownCtx)
	}
}

// health says the process is alive; it touches nothing, so a restart
// decided on it never comes of a dependency's outage.
func (s *Server) health(c *gin.Context) {
	c.JSON(http.StatusOK, healthView{Status: "ok"})
}

// ready says whether the API can serve: PostgreSQL and Temporal answer.
func (s *Server) ready(c *gin.Context) {
	ctx := c.Request.Context()
	var down []string
	if s.readyDB.check(ctx, s.Store.Pool.Ping) != nil {
		down = append(down, "PostgreSQL")
	}
	if s.readyTemporal.check(ctx, s.temporalHealth) != nil {
		down = append(down, "Temporal")
	}
	if len(down) > 0 {
		verb := "does"
		if len(down) > 1 {
			verb = "do"
		}
		s.respondError(c, newError(http.StatusServiceUnavailable, "unavailable", "not ready: %s %s not answer", strings.Join(down, " and "), verb))
		return
	}
	c.JSON(http.StatusOK, healthView{Status: "ready"})
}

func (s *Server) temporalHealth(ctx context.Context) error {
	_, err := s.Temporal.CheckHealth(ctx, &client.CheckHealthRequest{})
	return err
}

// healthCheck asks a dependency at most once a second and shares the
// answer: /readyz takes no key, so a flood of it must not become work.
type healthCheck struct {
	mu  sync.Mutex
	at  time.Time
	err error
}

func (h *healthCheck) check(ctx context.Context, ping func(context.Context) error) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if time.Since(h.at) < time.Second {
		return h.err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	h.err, h.at = ping(ctx), time.Now()
	return h.err
}

// auth admits requests whose key (X-API-Key, or Authorization: Bearer for
// OpenAI clients) is valid and carries scope. A client address that keeps
// failing is refused before its key is looked up, so guessing keys costs
// the database nothing but the check, on every replica alike.
func (s *Server) auth(scope string) gin.HandlerFunc {
	return func(c *gin.Context) {
		ctx := c.Request.Context()
		addr := clientAddr(c.ClientIP())
		plaintext := c.GetHeader("X-API-Key")
		if plaintext == "" {
			plaintext, _ = strings.CutPrefix(c.GetHeader("Authorization"), "Bearer ")
		}
		trimmed := strings.TrimSpace(plaintext)
		// A key found valid here lately is answered from the key cache and
		// tells a guesser nothing: only lookups meet the throttle.
		if !s.keys.Cached(trimmed) {
			if blocked, wait := s.authFailures.blockedShared(ctx, addr); blocked {
				c.Header("Retry-After", retryAfter(wait))
				s.respondError(c, newError(http.StatusTooManyRequests, "rate_limited",
					"too many failed authentications from your address; retry in %s with a valid API key", wait.Round(time.Millisecond)))
				return
			}
		}
		if plaintext == "" {
			s.authFailures.takeShared(ctx, addr)
			how := "send it in the X-API-Key header (or as Authorization: Bearer KEY)"
			if openAIPath(c) {
				how = "send it as Authorization: Bearer KEY, as OpenAI clients do with api_key"
			}
			s.respondError(c, newError(http.StatusUnauthorized, "unauthorized", "missing API key: %s", how))
			return
		}
		key, err := s.keys.Lookup(ctx, trimmed)
		if errors.Is(err, apikey.ErrInvalid) {
			s.authFailures.takeShared(ctx, addr)
			s.respondError(c, newError(http.StatusUnauthorized, "unauthorized", "invalid API key"))
			return
		}
		if err != nil {
			s.respondError(c, err)
			return
		}
		if !key.HasScope(scope) {
			s.respondError(c, newError(http.StatusForbidden, "forbidden", "this API key lacks the %s scope", scope))
			return
		}
		if ok, wait := s.limiter.allowShared(ctx, key.ID); !ok {
			c.Header("Retry-After", retryAfter(wait))
			s.respondError(c, errRateLimited(wait))
			return
		}
		c.Set("key", key)
		c.Next()
	}
}

func caller(c *gin.Context) apikey.Key { return c.MustGet("key").(apikey.Key) }

// recover turns a panic into a logged 500 with the API's error shape.
func (s *Server) recover(c *gin.Context) {
	defer func() {
		if r := recover(); r != nil {
			s.log.ErrorContext(c.Request.Context(), "panic in handler", "path", c.FullPath(), "panic", r)
			s.respondError(c, newError(http.StatusInternalServerError, "internal", "internal error; the request was not completed"))
		}
	}()
	c.Next()
}

// bindJSON decodes a size-limited JSON body strictly: unknown fields and
// trailing data are errors, and so is a body over the limit (413).
func bindJSON(c *gin.Context, dst any) error { return decodeJSON(c, dst, true) }

func decodeJSON(c *gin.Context, dst any, strict bool) error {
	// Read whole, so an error can quote what the client sent.
	body, err := io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, maxJSONBody))
	if err != nil {
		return jsonError(err, nil, dst)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(dst); err != nil {
		return jsonError(err, body, dst)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return badRequest("the request body must hold a single JSON object")
	}
	return nil
}

// bindOptionalJSON is bindJSON for a body that may be left out: an empty
// body leaves dst as it is.
func bindOptionalJSON(c *gin.Context, dst any) error {
	body, err := io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, maxJSONBody))
	if err != nil {
		return jsonError(err, nil, dst)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	c.Request.Body = io.NopCloser(bytes.NewReader(body))
	return bindJSON(c, dst)
}
