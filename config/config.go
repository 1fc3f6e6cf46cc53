// Package config reads tuneforge's settings from the environment.
package config

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultDatabaseURL is the local PostgreSQL that `make dev` expects.
const DefaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/tuneforge?sslmode=disable"

// Config holds every setting; each field names its environment variable.
type Config struct {
	DatabaseURL       string // DATABASE_URL
	DatabaseURLSet    bool   // whether DATABASE_URL was given (errors then skip the local-server hint)
	HTTPAddr          string // TUNEFORGE_HTTP_ADDR
	TemporalAddr      string // TUNEFORGE_TEMPORAL_ADDR
	TemporalNamespace string // TUNEFORGE_TEMPORAL_NAMESPACE
	UIAddr            string // TUNEFORGE_UI_ADDR
	DataDir           string // TUNEFORGE_DATA_DIR
	Artifacts         string // TUNEFORGE_ARTIFACTS
	LogLevel          slog.Level
	RateLimit         float64 // TUNEFORGE_RATE_LIMIT: requests per second per API key; 0 is unlimited
}

// FromEnv reads the environment, applying the documented defaults.
func FromEnv() (Config, error) {
	c := Config{
		DatabaseURL:       os.Getenv("DATABASE_URL"),
		HTTPAddr:          env("TUNEFORGE_HTTP_ADDR", "127.0.0.1:8080"),
		TemporalAddr:      env("TUNEFORGE_TEMPORAL_ADDR", "127.0.0.1:7233"),
		TemporalNamespace: env("TUNEFORGE_TEMPORAL_NAMESPACE", "default"),
		UIAddr:            env("TUNEFORGE_UI_ADDR", "127.0.0.1:8233"),
		DataDir:           env("TUNEFORGE_DATA_DIR", "./.tuneforge"),
	}
	c.DatabaseURLSet = c.DatabaseURL != ""
	if !c.DatabaseURLSet {
		c.DatabaseURL = DefaultDatabaseURL
	}
	dir, err := filepath.Abs(c.DataDir)
	if err != nil {
		return c, fmt.Errorf("TUNEFORGE_DATA_DIR %q: %w", c.DataDir, err)
	}
	c.DataDir = dir
	c.Artifacts = env("TUNEFORGE_ARTIFACTS", "file://"+filepath.ToSlash(filepath.Join(dir, "artifacts")))
	rl, err := strconv.ParseFloat(env("TUNEFORGE_RATE_LIMIT", "50"), 64)
	if err != nil || rl < 0 {
		return c, fmt.Errorf("TUNEFORGE_RATE_LIMIT %q: must be a number of requests per second, 0 for no limit", os.Getenv("TUNEFORGE_RATE_LIMIT"))
	}
	c.RateLimit = rl
	if err := c.LogLevel.UnmarshalText([]byte(env("TUNEFORGE_LOG_LEVEL", "info"))); err != nil {
		return c, fmt.Errorf("TUNEFORGE_LOG_LEVEL: %w", err)
	}
	return c, nil
}

func env(name, def string) string {
	if v := strings.TrimSpace(os.Getenv(name)); v != "" {
		return v
	}
	return def
}
