package main

import (
	"context"
	"fmt"
	"log/slog"

	"go.temporal.io/sdk/client"

	"github.com/tuneforge/tuneforge/activities"
	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/config"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/inference"
	"github.com/tuneforge/tuneforge/metrics"
	"github.com/tuneforge/tuneforge/server"
	"github.com/tuneforge/tuneforge/trainer/command"
	"github.com/tuneforge/tuneforge/workers"
)

// platform is the connections every role shares.
type platform struct {
	store     *db.Store
	temporal  client.Client
	artifacts *artifacts.Store
	log       *slog.Logger
	dataDir   string
	// inference routes command-trained adapters to their base model's backend.
	inference  *inference.Backends
	adapterDir string
}

func openStore(ctx context.Context, cfg config.Config) (*db.Store, error) {
	store, err := db.Open(ctx, cfg.DatabaseURL)
	if err != nil && !cfg.DatabaseURLSet {
		return nil, fmt.Errorf("%w\nDATABASE_URL is unset, so tuneforge tried %s. Start PostgreSQL (for example: pg_ctlcluster 15 main start) or set DATABASE_URL", err, config.DefaultDatabaseURL)
	}
	return store, err
}

// connect opens the shared connections; starter (nil: none) starts
// inference backends for base models the configuration names none for.
func connect(ctx context.Context, cfg config.Config, log *slog.Logger, starter inference.Starter) (*platform, error) {
	store, err := openStore(ctx, cfg)
	if err != nil {
		return nil, err
	}
	p := &platform{store: store, log: log, dataDir: cfg.DataDir, adapterDir: cfg.AdapterDir}
	if p.inference, err = backends(cfg, starter); err != nil {
		p.close()
		return nil, err
	}
	if p.artifacts, err = artifacts.Open(ctx, cfg.Artifacts); err != nil {
		p.close()
		return nil, err
	}
	if p.temporal, err = workers.Dial(ctx, cfg.TemporalAddr, cfg.TemporalNamespace, log); err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}

// backends are the inference backends cfg names (TUNEFORGE_INFERENCE_BACKENDS,
// then TUNEFORGE_INFERENCE_URL for every other model) and, when not nil,
// starter's for the models neither names.
func backends(cfg config.Config, starter inference.Starter) (*inference.Backends, error) {
	configured, err := inference.ParseBackends(cfg.InferenceBackends, cfg.AdapterDir)
	if err != nil {
		return nil, fmt.Errorf("TUNEFORGE_INFERENCE_BACKENDS: %w", err)
	}
	return inference.NewBackends(configured, inference.Fallback(cfg.InferenceURL, cfg.AdapterDir), starter), nil
}

func (p *platform) close() {
	if p.temporal != nil {
		p.temporal.Close()
	}
	if p.artifacts != nil {
		p.artifacts.Close()
	}
	p.store.Close()
}

func (p *platform) activities() *activities.Activities {
	return &activities.Activities{
		Store: p.store, Artifacts: p.artifacts, Logger: p.log, GPULiveness: workers.GPULiveness,
		Inference: p.inference, AdapterDir: p.adapterDir, Temporal: p.temporal,
	}
}

// trainingActivities are the activities of one training worker: each has
// its own work directory, and the trainer backend cfg names.
func (p *platform) trainingActivities(cfg config.Config, workerID string) (*activities.Activities, error) {
	acts := p.activities()
	acts.Hang = cfg.Hang
	if cfg.Trainer != config.TrainerCommand {
		return acts, nil
	}
	runner, err := command.NewRunner(cfg.TrainerCmd, cfg.TrainerGrace)
	if err != nil {
		return nil, err
	}
	runner.LogRate = cfg.TrainerLogRate
	runner.Hang = cfg.Hang
	runner.WorldSize = cfg.TrainerWorldSize // 0: RunTraining makes it the pool's GPU count
	acts.Command, acts.ModelDir, acts.WorkDir = runner, cfg.ModelDir, activities.WorkRoot(cfg.WorkDir, workerID)
	return acts, nil
}

func (p *platform) api(cfg config.Config) *server.Server {
	return server.New(server.Deps{
		Store: p.store, Temporal: p.temporal, Artifacts: p.artifacts, DataDir: cfg.DataDir, ImportDir: cfg.ImportDir,
		Logger: p.log, GPULiveness: workers.GPULiveness, RateLimit: cfg.RateLimit,
		AuthFailureRate: cfg.AuthFailureRate, TrustedProxies: cfg.TrustedProxies,
		Datasets: server.DatasetLimits{
			MaxBytes: cfg.DatasetMaxBytes, QuotaBytes: cfg.DatasetQuotaBytes, QuotaCount: cfg.DatasetQuotaCount,
		},
		Inference: p.inference, MaxActiveJobs: cfg.MaxActiveJobs,
		StreamsPerKey: cfg.StreamsPerKey, StreamsPerOrg: cfg.StreamsPerOrg,
		ModelCacheBytes: cfg.ModelCacheBytes, MaxCompletionTokens: cfg.InferenceMaxTokens,
	})
}

// apiRoles serve the API and, on its own address unless turned off, the
// Prometheus metrics, the GPU pools' among them.
func (p *platform) apiRoles(cfg config.Config) []func(context.Context) error {
	api := p.api(cfg)
	metrics.RegisterPools(p.store, workers.GPULiveness, p.log)
	return append([]func(context.Context) error{func(ctx context.Context) error { return api.ListenAndServe(ctx, cfg.HTTPAddr) }},
		p.metricsRoles(cfg, true)...)
}

// metricsRoles serve the Prometheus metrics on TUNEFORGE_METRICS_ADDR
// unless it is empty. A worker (required false) that cannot listen there,
// because another process of the host does, warns and goes on without.
func (p *platform) metricsRoles(cfg config.Config, required bool) []func(context.Context) error {
	if cfg.MetricsAddr == "" {
		return nil
	}
	p.log.Info("metrics listening", "addr", cfg.MetricsAddr)
	return []func(context.Context) error{func(ctx context.Context) error {
		err := server.ListenAndServeMetrics(ctx, cfg.MetricsAddr)
		if err != nil && !required && ctx.Err() == nil {
			p.log.Warn("metrics not served; give each process of a host its own TUNEFORGE_METRICS_ADDR", "addr", cfg.MetricsAddr, "err", err)
			return nil
		}
		return err
	}}
}
