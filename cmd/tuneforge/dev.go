//go:build !nodev

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tuneforge/tuneforge/apikey"
	"github.com/tuneforge/tuneforge/config"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/devserver"
	"github.com/tuneforge/tuneforge/inference"
	"github.com/tuneforge/tuneforge/workers"
	"github.com/tuneforge/tuneforge/workflows"
)

// runDev runs the whole platform in one process on an embedded Temporal
// server whose state lives in the data directory.
func runDev(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	if !cfg.DatabaseURLSet {
		conn, err := net.DialTimeout("tcp", "127.0.0.1:5432", 2*time.Second)
		if err != nil {
			return errors.New("no PostgreSQL listens on 127.0.0.1:5432 and DATABASE_URL is unset.\n" +
				"Start it (Debian: pg_ctlcluster --skip-systemctl-redirect 15 main start) or set DATABASE_URL=postgres://USER@HOST:PORT/DB")
		}
		conn.Close()
	}
	if err := db.EnsureDatabase(ctx, cfg.DatabaseURL); err != nil {
		return err
	}
	if err := runMigrate(ctx, cfg); err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return fmt.Errorf("cannot create the data directory %s (set TUNEFORGE_DATA_DIR to one you can write): %w", cfg.DataDir, err)
	}
	srv, err := devserver.Start(devserver.Config{
		DatabaseFile:     filepath.Join(cfg.DataDir, "temporal.db"),
		LogFile:          filepath.Join(cfg.DataDir, "temporal-server.log"),
		LogLevel:         "warn",
		FrontendAddr:     cfg.TemporalAddr,
		UIAddr:           cfg.UIAddr,
		Namespace:        cfg.TemporalNamespace,
		SearchAttributes: workflows.SearchAttributes(),
		Logger:           log,
	})
	if err != nil {
		return err
	}
	defer srv.Stop()

	launcher, cpuTrainer := devLanguageModels(ctx, &cfg, log)
	var starter inference.Starter
	if launcher != nil {
		defer launcher.Close()
		starter = launcher
	}
	p, err := connect(ctx, cfg, log, starter)
	if err != nil {
		return err
	}
	defer p.close()
	key, err := devKey(ctx, p, cfg.DataDir)
	if err != nil {
		return err
	}
	hardware, err := p.store.HardwarePools(ctx)
	if err != nil {
		return err
	}
	slots := 2
	if v := os.Getenv("TUNEFORGE_DEV_SLOTS"); v != "" {
		if slots, err = strconv.Atoi(v); err != nil || slots < 1 {
			return fmt.Errorf("TUNEFORGE_DEV_SLOTS=%q: must be a positive integer", v)
		}
	}
	acts := p.activities()
	roles := append(p.apiRoles(cfg), func(ctx context.Context) error { return workers.RunControl(ctx, p.temporal, acts) })
	for _, h := range hardware {
		t := workers.Training{ID: "dev/" + h.ID, HardwareID: h.ID, Slots: slots, CheckGPUs: cfg.Trainer == config.TrainerCommand && !cpuTrainer}
		tacts, err := p.trainingActivities(cfg, t.ID)
		if err != nil {
			return err
		}
		roles = append(roles, func(ctx context.Context) error {
			err := workers.RunTraining(ctx, p.temporal, tacts, t, log)
			if errors.Is(err, workers.ErrPoolUnfit) {
				// This host cannot serve every pool; dev serves the others.
				log.Warn("no dev training worker for this pool", "hardware", h.ID, "reason", err)
				return nil
			}
			return err
		})
	}
	fmt.Fprintf(os.Stderr, `
tuneforge dev is running
  API             http://%s/api/v1/fine-tuning
  Metrics         %s
  Temporal Web UI %s
  Temporal        %s (namespace %s; its server's log: %s)
  Data directory  %s
  Training pools  %d slot(s) each on %d hardware pools (%s)
  Adapters        %s

Development API key (org org_dev, user user_dev, both scopes):
  export TUNEFORGE_API_KEY=%s
  curl -H "X-API-Key: $TUNEFORGE_API_KEY" http://%s/api/v1/fine-tuning/jobs

`, cfg.HTTPAddr, metricsURL(cfg.MetricsAddr), srv.UIURL(), srv.FrontendAddr(), cfg.TemporalNamespace, filepath.Join(cfg.DataDir, "temporal-server.log"), cfg.DataDir, slots, len(hardware), trainerLabel(cfg), servingLabel(cfg, launcher != nil), key, cfg.HTTPAddr)
	return group(ctx, roles...)
}

// devKey returns the development key kept in the data directory, making
// one (org_dev, both scopes) the first time.
func devKey(ctx context.Context, p *platform, dataDir string) (string, error) {
	path := filepath.Join(dataDir, "dev-api-key")
	if b, err := os.ReadFile(path); err == nil {
		key := strings.TrimSpace(string(b))
		if _, err := apikey.Lookup(ctx, p.store, key); err == nil {
			return key, nil
		}
	}
	key, err := apikey.Create(ctx, p.store, "org_dev", "user_dev", apikey.AllScopes)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(path, []byte(key+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("save development key: %w", err)
	}
	return key, nil
}

func metricsURL(addr string) string {
	if addr == "" {
		return "off (TUNEFORGE_METRICS_ADDR is empty)"
	}
	return "http://" + addr + "/metrics"
}

// servingLabel says where deploys of LoRA adapters go.
func servingLabel(cfg config.Config, launcher bool) string {
	switch {
	case cfg.InferenceBackends != "" || cfg.InferenceURL != "":
		return "served by the backends TUNEFORGE_INFERENCE_BACKENDS and TUNEFORGE_INFERENCE_URL name"
	case launcher:
		return "served by vLLM's CPU build, started for a base model on its first deploy"
	}
	return "not served: no inference backend (make venv, or set TUNEFORGE_INFERENCE_BACKENDS)"
}
