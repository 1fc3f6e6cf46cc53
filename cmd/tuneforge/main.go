// Command tuneforge runs the fine-tuning platform: the API, the workers, the
// migrations, API key management, and `dev`, everything in one process.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/tuneforge/tuneforge/apikey"
	"github.com/tuneforge/tuneforge/cli"
	"github.com/tuneforge/tuneforge/config"
	"github.com/tuneforge/tuneforge/workers"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	root := rootCommand()
	err := root.ExecuteContext(ctx)
	stop()
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "tuneforge:", err)
		code := cli.ExitCode(err)
		if isUsageError(err) {
			code = cli.ExitUsage
		}
		if code == cli.ExitUsage {
			fmt.Fprintln(os.Stderr, "Run `tuneforge help` or add --help to a command for its usage.")
		}
		os.Exit(code)
	}
}

// isUsageError recognizes cobra's own errors about the command line.
func isUsageError(err error) bool {
	msg := err.Error()
	for _, prefix := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "required flag", "invalid argument", "flag needs an argument", "accepts ", "requires "} {
		if strings.HasPrefix(msg, prefix) {
			return true
		}
	}
	return false
}

// version is the binary's version: set with -ldflags "-X main.version=…",
// else the module version or VCS revision Go recorded.
var version = ""

func versionString() string {
	if version != "" {
		return version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := info.Main.Version
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v = strings.TrimSuffix(v+" "+s.Value[:12], " ")
		}
	}
	if v == "" {
		return "devel"
	}
	return v
}

func rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "tuneforge",
		Short: "tuneforge: a fine-tuning job platform on Temporal",
		Long: `tuneforge: a fine-tuning job platform on Temporal.

The platform's processes (dev, api, worker, migrate, apikey) read their
settings from the environment (see README.md). The client commands (jobs,
datasets, models, chat, base-models, hardware) call an API: TUNEFORGE_URL
(default ` + cli.DefaultURL + `) with the key in TUNEFORGE_API_KEY.`,
		Version:       versionString(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return cli.UsageError(err) })
	root.AddGroup(&cobra.Group{ID: "platform", Title: "Run the platform:"}, &cobra.Group{ID: "client", Title: "Use it:"})
	for _, c := range platformCommands() {
		c.GroupID = "platform"
		root.AddCommand(c)
	}
	for _, c := range cli.Commands(os.Getenv) {
		c.GroupID = "client"
		root.AddCommand(c)
	}
	return root
}

// platformCommands run tuneforge's processes. Each reads its settings and
// starts tracing only when it runs, so --help does nothing but print.
func platformCommands() []*cobra.Command {
	dev := &cobra.Command{
		Use:   "dev",
		Short: "Run everything in one process: embedded Temporal and its Web UI, the workers, the API",
		Args:  cobra.NoArgs,
		RunE:  runs("dev", runDev),
	}
	api := &cobra.Command{
		Use:   "api",
		Short: "Run the REST API (TUNEFORGE_HTTP_ADDR; metrics on TUNEFORGE_METRICS_ADDR)",
		Args:  cobra.NoArgs,
		RunE:  runs("api", runAPI),
	}
	var w workerFlags
	worker := &cobra.Command{
		Use:   "worker",
		Short: "Run the control worker, or with --hardware a training worker for one pool",
		Example: `  tuneforge worker                                  # the control worker
  tuneforge worker --hardware gpu-a100-40gb --slots 2 --trainer command`,
		Args: cobra.NoArgs,
		RunE: runs("worker", func(ctx context.Context, cfg config.Config, log *slog.Logger) error {
			return runWorker(ctx, cfg, log, w)
		}),
	}
	worker.Flags().StringVar(&w.hardware, "hardware", "", "hardware pool to train on (omit for the control worker)")
	worker.Flags().IntVar(&w.slots, "slots", 1, "jobs this training worker runs at once (its GPUs)")
	worker.Flags().StringVar(&w.trainer, "trainer", "", "trainer backend: builtin or command (default TUNEFORGE_TRAINER)")
	worker.Flags().StringVar(&w.id, "id", "", "stable worker ID (default: host name and pool)")
	migrate := &cobra.Command{
		Use:   "migrate",
		Short: "Apply the database migrations",
		Args:  cobra.NoArgs,
		RunE: runs("migrate", func(ctx context.Context, cfg config.Config, _ *slog.Logger) error {
			return runMigrate(ctx, cfg)
		}),
	}
	apikeyCmd := &cobra.Command{Use: "apikey", Short: "Manage API keys"}
	var org, user, scopes string
	create := &cobra.Command{
		Use:     "create",
		Short:   "Make an API key and print it once (only its SHA-256 is stored)",
		Example: "  tuneforge apikey create --org org_acme --user alice --scopes fine-tuning:read,fine-tuning:write",
		Args:    cobra.NoArgs,
		RunE: runs("apikey", func(ctx context.Context, cfg config.Config, _ *slog.Logger) error {
			return runAPIKey(ctx, cfg, org, user, scopes)
		}),
	}
	create.Flags().StringVar(&org, "org", "", "organization ID (required)")
	create.Flags().StringVar(&user, "user", "", "user ID (required)")
	create.Flags().StringVar(&scopes, "scopes", strings.Join(apikey.AllScopes, ","), "comma-separated scopes")
	_ = create.MarkFlagRequired("org")
	_ = create.MarkFlagRequired("user")
	apikeyCmd.AddCommand(create)
	return []*cobra.Command{dev, api, worker, migrate, apikeyCmd}
}

// runs makes a platform command's RunE: read the settings, log, trace.
func runs(name string, run func(context.Context, config.Config, *slog.Logger) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		cfg, err := config.FromEnv()
		if err != nil {
			return cli.UsageError(err)
		}
		log := newLogger(cfg, os.Stderr)
		slog.SetDefault(log)
		ctx := cmd.Context()
		shutdownTracing, err := setupTracing(ctx, name)
		if err != nil {
			return err
		}
		defer shutdownTracing(context.WithoutCancel(ctx)) //nolint:errcheck // best effort flush at exit
		return run(ctx, cfg, log)
	}
}

func runMigrate(ctx context.Context, cfg config.Config) error {
	store, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	defer store.Close()
	if err := store.Migrate(ctx); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "migrations applied")
	return nil
}

func runAPIKey(ctx context.Context, cfg config.Config, org, user, scopes string) error {
	store, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	defer store.Close()
	key, err := apikey.Create(ctx, store, org, user, config.SplitList(scopes))
	if err != nil {
		return err
	}
	fmt.Println(key)
	return nil
}

func runAPI(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	p, err := connect(ctx, cfg, log, nil)
	if err != nil {
		return err
	}
	defer p.close()
	log.Info("API listening", "addr", cfg.HTTPAddr)
	return group(ctx, p.apiRoles(cfg)...)
}

// workerFlags are `tuneforge worker`'s flags.
type workerFlags struct {
	hardware, trainer, id string
	slots                 int
}

func runWorker(ctx context.Context, cfg config.Config, log *slog.Logger, w workerFlags) error {
	if w.trainer != "" {
		cfg.Trainer = w.trainer
	}
	if err := cfg.CheckTrainer(); err != nil {
		return cli.UsageError(err)
	}
	p, err := connect(ctx, cfg, log, nil)
	if err != nil {
		return err
	}
	defer p.close()
	if err := workers.RegisterSearchAttributes(ctx, p.temporal, cfg.TemporalNamespace); err != nil {
		return err
	}
	serveMetrics := p.metricsRoles(cfg, false)
	if w.hardware == "" {
		log.Info("control worker running")
		return group(ctx, append(serveMetrics, func(ctx context.Context) error { return workers.RunControl(ctx, p.temporal, p.activities()) })...)
	}
	if w.id == "" {
		host, _ := os.Hostname()
		w.id = host + "/" + w.hardware
	}
	acts, err := p.trainingActivities(cfg, w.id)
	if err != nil {
		return err
	}
	log.Info("training worker running", "hardware", w.hardware, "slots", w.slots, "id", w.id, "trainer", trainerLabel(cfg))
	return group(ctx, append(serveMetrics, func(ctx context.Context) error {
		return workers.RunTraining(ctx, p.temporal, acts, workers.Training{
			ID: w.id, HardwareID: w.hardware, Slots: w.slots, CheckGPUs: cfg.Trainer == config.TrainerCommand,
		}, log)
	})...)
}

// trainerLabel names the trainer backend for people.
func trainerLabel(cfg config.Config) string {
	if cfg.Trainer == config.TrainerCommand {
		return "command: " + cfg.TrainerCmd
	}
	return "builtin CPU trainer"
}

// group runs fns until the first fails or ctx ends.
func group(ctx context.Context, fns ...func(context.Context) error) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, fn := range fns {
		g.Go(func() error { return fn(gctx) })
	}
	return g.Wait()
}
