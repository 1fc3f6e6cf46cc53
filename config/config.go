// Package config reads tuneforge's settings from the environment.
package config

import (
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tuneforge/tuneforge/trainer/hang"
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
	// LogFormat is "json" or "text" (TUNEFORGE_LOG_FORMAT); empty means
	// text on a terminal and JSON elsewhere.
	LogFormat       string
	RateLimit       float64 // TUNEFORGE_RATE_LIMIT: requests per second per API key; 0 is unlimited
	MaxActiveJobs   int     // TUNEFORGE_MAX_ACTIVE_JOBS: queued plus running jobs per organization; 0 is no cap
	ModelCacheBytes int64   // TUNEFORGE_MODEL_CACHE_BYTES: memory the API's served builtin models may take; 0 (unset) is serving.DefaultCacheBytes
	MetricsAddr     string  // TUNEFORGE_METRICS_ADDR: Prometheus /metrics listen address; "" disables

	// Abuse limits of the API.
	AuthFailureRate   float64  // TUNEFORGE_AUTH_FAILURE_RATE: failed authentications per second per client address; 0 is unlimited
	TrustedProxies    []string // TUNEFORGE_TRUSTED_PROXIES: proxies whose X-Forwarded-For names the client
	DatasetMaxBytes   int64    // TUNEFORGE_DATASET_MAX_BYTES: the size of one dataset, uploaded or imported
	DatasetQuotaBytes int64    // TUNEFORGE_DATASET_QUOTA_BYTES: an organization's datasets' total size; 0 is unlimited
	DatasetQuotaCount int64    // TUNEFORGE_DATASET_QUOTA_COUNT: an organization's number of datasets; 0 is unlimited
	StreamsPerKey     int      // TUNEFORGE_STREAMS_PER_KEY: followed logs open at once per API key; 0 is no cap
	StreamsPerOrg     int      // TUNEFORGE_STREAMS_PER_ORG: followed logs open at once per organization; 0 is no cap
	// TUNEFORGE_IMPORT_DIR: the only directory jobs import dataset paths
	// from, default <data dir>/import
	ImportDir string

	// Training workers.
	Trainer      string        // TUNEFORGE_TRAINER: builtin (default) or command
	TrainerCmd   string        // TUNEFORGE_TRAINER_CMD: the command trainer's command line
	TrainerGrace time.Duration // TUNEFORGE_TRAINER_GRACE: SIGTERM to SIGKILL, default 30s
	// TUNEFORGE_TRAINER_LOG_RATE: log lines a second each training attempt
	// may write, default command.DefaultLogRate's 20
	TrainerLogRate float64
	// TUNEFORGE_TRAINER_WORLD_SIZE: processes a command-trainer attempt
	// runs, one per GPU; unset (0), the pool's GPU count. 1 runs a
	// version-1 trainer as one process that sees all of its slot's GPUs.
	TrainerWorldSize int
	ModelDir         string // TUNEFORGE_MODEL_DIR: base model weights, one directory per base model ID
	WorkDir          string // TUNEFORGE_WORK_DIR: per-attempt work directories of the command trainer

	// A trainer showing no sign of life (a step, an evaluation's progress,
	// a checkpoint) for TUNEFORGE_HANG_FACTOR times its slowest recent
	// step, within TUNEFORGE_HANG_FLOOR and TUNEFORGE_HANG_CEILING (and for
	// the ceiling before its first step), is killed as hung and its epoch
	// retried; default 2m, 30m and 10.
	Hang hang.Limits

	// Serving of adapters trained by the command trainer.
	// TUNEFORGE_INFERENCE_BACKENDS: MODEL=URL[;ADAPTER_DIR],... the vLLM
	// server (OpenAI-compatible, with the LoRA API) of each base model
	InferenceBackends string
	InferenceURL      string // TUNEFORGE_INFERENCE_URL: the backend of every base model the list above does not name; "" disables
	AdapterDir        string // TUNEFORGE_ADAPTER_DIR: where adapters are materialized for that server to read
	// TUNEFORGE_INFERENCE_MAX_TOKENS: the most tokens one chat completion
	// of that server may generate, default 4096
	InferenceMaxTokens int
}

// Trainer backends.
const (
	TrainerBuiltin = "builtin"
	TrainerCommand = "command"
)

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
	if c.MaxActiveJobs, err = strconv.Atoi(env("TUNEFORGE_MAX_ACTIVE_JOBS", "500")); err != nil || c.MaxActiveJobs < 0 {
		return c, fmt.Errorf("TUNEFORGE_MAX_ACTIVE_JOBS %q: must be a number of jobs, 0 for no cap", os.Getenv("TUNEFORGE_MAX_ACTIVE_JOBS"))
	}
	if v := env("TUNEFORGE_MODEL_CACHE_BYTES", ""); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return c, fmt.Errorf("TUNEFORGE_MODEL_CACHE_BYTES %q: must be a positive number of bytes", v)
		}
		c.ModelCacheBytes = n
	}
	// Set but empty turns the metrics listener off.
	if v, ok := os.LookupEnv("TUNEFORGE_METRICS_ADDR"); ok {
		c.MetricsAddr = strings.TrimSpace(v)
	} else {
		c.MetricsAddr = "127.0.0.1:9090"
	}
	if c.AuthFailureRate, err = strconv.ParseFloat(env("TUNEFORGE_AUTH_FAILURE_RATE", "10"), 64); err != nil || c.AuthFailureRate < 0 {
		return c, fmt.Errorf("TUNEFORGE_AUTH_FAILURE_RATE %q: must be a number of failed authentications per second, 0 for no limit", os.Getenv("TUNEFORGE_AUTH_FAILURE_RATE"))
	}
	c.TrustedProxies = SplitList(env("TUNEFORGE_TRUSTED_PROXIES", ""))
	for _, p := range c.TrustedProxies {
		if _, err := netip.ParsePrefix(p); err != nil {
			if _, err := netip.ParseAddr(p); err != nil {
				return c, fmt.Errorf("TUNEFORGE_TRUSTED_PROXIES: %q is not an IP address or CIDR network", p)
			}
		}
	}
	for _, b := range []struct {
		dst      *int64
		name     string
		def, min int64
		what     string
	}{
		{&c.DatasetMaxBytes, "TUNEFORGE_DATASET_MAX_BYTES", 1 << 30, 1, "a positive number of bytes"},
		{&c.DatasetQuotaBytes, "TUNEFORGE_DATASET_QUOTA_BYTES", 10 << 30, 0, "a number of bytes, 0 for no limit"},
		{&c.DatasetQuotaCount, "TUNEFORGE_DATASET_QUOTA_COUNT", 1000, 0, "a number of datasets, 0 for no limit"},
	} {
		v, err := strconv.ParseInt(env(b.name, strconv.FormatInt(b.def, 10)), 10, 64)
		if err != nil || v < b.min {
			return c, fmt.Errorf("%s %q: must be %s", b.name, os.Getenv(b.name), b.what)
		}
		*b.dst = v
	}
	for _, b := range []struct {
		dst  *int
		name string
		def  int
	}{
		{&c.StreamsPerKey, "TUNEFORGE_STREAMS_PER_KEY", 8},
		{&c.StreamsPerOrg, "TUNEFORGE_STREAMS_PER_ORG", 32},
	} {
		if *b.dst, err = strconv.Atoi(env(b.name, strconv.Itoa(b.def))); err != nil || *b.dst < 0 {
			return c, fmt.Errorf("%s %q: must be a number of streams, 0 for no cap", b.name, os.Getenv(b.name))
		}
	}
	c.Trainer = env("TUNEFORGE_TRAINER", TrainerBuiltin)
	c.TrainerCmd = env("TUNEFORGE_TRAINER_CMD", "")
	if err := c.CheckTrainer(); err != nil {
		return c, err
	}
	grace, err := time.ParseDuration(env("TUNEFORGE_TRAINER_GRACE", "30s"))
	if err != nil || grace < 0 {
		return c, fmt.Errorf("TUNEFORGE_TRAINER_GRACE %q: must be a duration such as 30s", os.Getenv("TUNEFORGE_TRAINER_GRACE"))
	}
	c.TrainerGrace = grace
	if c.TrainerLogRate, err = strconv.ParseFloat(env("TUNEFORGE_TRAINER_LOG_RATE", "20"), 64); err != nil || c.TrainerLogRate <= 0 {
		return c, fmt.Errorf("TUNEFORGE_TRAINER_LOG_RATE %q: must be a positive number of log lines per second", os.Getenv("TUNEFORGE_TRAINER_LOG_RATE"))
	}
	if v := os.Getenv("TUNEFORGE_TRAINER_WORLD_SIZE"); v != "" {
		if c.TrainerWorldSize, err = strconv.Atoi(v); err != nil || c.TrainerWorldSize < 1 {
			return c, fmt.Errorf("TUNEFORGE_TRAINER_WORLD_SIZE %q: must be a number of processes, 1 or the pool's GPU count", v)
		}
	}
	if c.Hang, err = hangLimits(); err != nil {
		return c, err
	}
	for _, d := range []struct {
		dst       *string
		name, def string
	}{
		{&c.ModelDir, "TUNEFORGE_MODEL_DIR", "models"},
		{&c.WorkDir, "TUNEFORGE_WORK_DIR", "work"},
		{&c.AdapterDir, "TUNEFORGE_ADAPTER_DIR", "adapters"},
	} {
		if *d.dst, err = filepath.Abs(env(d.name, filepath.Join(dir, d.def))); err != nil {
			return c, fmt.Errorf("%s: %w", d.name, err)
		}
	}
	if c.ImportDir, err = filepath.Abs(env("TUNEFORGE_IMPORT_DIR", filepath.Join(dir, "import"))); err != nil {
		return c, fmt.Errorf("TUNEFORGE_IMPORT_DIR: %w", err)
	}
	if err := c.checkImportDir(); err != nil {
		return c, err
	}
	c.InferenceURL = strings.TrimRight(env("TUNEFORGE_INFERENCE_URL", ""), "/")
	c.InferenceBackends = env("TUNEFORGE_INFERENCE_BACKENDS", "")
	if c.InferenceMaxTokens, err = strconv.Atoi(env("TUNEFORGE_INFERENCE_MAX_TOKENS", "4096")); err != nil || c.InferenceMaxTokens < 1 {
		return c, fmt.Errorf("TUNEFORGE_INFERENCE_MAX_TOKENS %q: must be a positive number of tokens", os.Getenv("TUNEFORGE_INFERENCE_MAX_TOKENS"))
	}
	if err := c.LogLevel.UnmarshalText([]byte(env("TUNEFORGE_LOG_LEVEL", "info"))); err != nil {
		return c, fmt.Errorf("TUNEFORGE_LOG_LEVEL: %w", err)
	}
	switch c.LogFormat = env("TUNEFORGE_LOG_FORMAT", ""); c.LogFormat {
	case "", "json", "text":
	default:
		return c, fmt.Errorf("TUNEFORGE_LOG_FORMAT=%q: must be json or text", c.LogFormat)
	}
	return c, nil
}

// CheckTrainer validates the trainer backend settings.
func (c Config) CheckTrainer() error {
	switch c.Trainer {
	case TrainerBuiltin:
		return nil
	case TrainerCommand:
		if c.TrainerCmd == "" {
			return fmt.Errorf("TUNEFORGE_TRAINER=command needs TUNEFORGE_TRAINER_CMD, the trainer's command line (for example: python3 trainers/hf/train.py)")
		}
		return nil
	}
	return fmt.Errorf("TUNEFORGE_TRAINER %q: must be builtin or command", c.Trainer)
}

// hangLimits reads the TUNEFORGE_HANG_* settings.
func hangLimits() (hang.Limits, error) {
	var l hang.Limits
	for _, d := range []struct {
		dst  *time.Duration
		name string
		def  time.Duration
	}{
		{&l.Floor, "TUNEFORGE_HANG_FLOOR", hang.Default.Floor},
		{&l.Ceiling, "TUNEFORGE_HANG_CEILING", hang.Default.Ceiling},
	} {
		v, err := time.ParseDuration(env(d.name, d.def.String()))
		if err != nil {
			return l, fmt.Errorf("%s %q: must be a duration such as %s", d.name, os.Getenv(d.name), d.def)
		}
		*d.dst = v
	}
	f, err := strconv.ParseFloat(env("TUNEFORGE_HANG_FACTOR", strconv.FormatFloat(hang.Default.Factor, 'g', -1, 64)), 64)
	if err != nil {
		return l, fmt.Errorf("TUNEFORGE_HANG_FACTOR %q: must be a number", os.Getenv("TUNEFORGE_HANG_FACTOR"))
	}
	l.Factor = f
	if err := l.Validate(); err != nil {
		return l, fmt.Errorf("TUNEFORGE_HANG_FLOOR, _CEILING, _FACTOR: %w", err)
	}
	return l, nil
}

// checkImportDir refuses an import directory that holds the platform's
// own files: jobs could then import other organizations' data.
func (c Config) checkImportDir() error {
	own := []struct{ name, dir string }{
		{"TUNEFORGE_DATA_DIR", c.DataDir}, {"TUNEFORGE_WORK_DIR", c.WorkDir},
		{"TUNEFORGE_ADAPTER_DIR", c.AdapterDir}, {"TUNEFORGE_MODEL_DIR", c.ModelDir},
	}
	if u, err := url.Parse(c.Artifacts); err == nil && u.Scheme == "file" {
		own = append(own, struct{ name, dir string }{"TUNEFORGE_ARTIFACTS", filepath.FromSlash(u.Path)})
	}
	for _, d := range own {
		if rel, err := filepath.Rel(c.ImportDir, d.dir); err == nil && filepath.IsLocal(rel) {
			return fmt.Errorf("TUNEFORGE_IMPORT_DIR %s holds %s (%s), whose files jobs could then import; give imports a directory of their own", c.ImportDir, d.name, d.dir)
		}
	}
	return nil
}

// SplitList splits a comma-separated list, dropping blanks.
func SplitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

func env(name, def string) string {
	if v := strings.TrimSpace(os.Getenv(name)); v != "" {
		return v
	}
	return def
}
