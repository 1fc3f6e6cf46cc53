// Command tuneforge runs the fine-tuning platform: the API, the workers, the
// migrations, API key management, and `dev`, everything in one process.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/tuneforge/tuneforge/apikey"
	"github.com/tuneforge/tuneforge/config"
	"github.com/tuneforge/tuneforge/workers"
)

const usage = `tuneforge: a fine-tuning job platform on Temporal

Usage:
  tuneforge dev                      everything in one process (embedded Temporal, Web UI, workers, API)
  tuneforge api                      the REST API
  tuneforge worker                   the control worker (workflows, control activities)
  tuneforge worker --hardware ID --slots N [--trainer builtin|command]
                                     a training worker for one hardware pool
  tuneforge migrate                  apply the database migrations
  tuneforge apikey create --org ORG --user USER --scopes fine-tuning:read,fine-tuning:write

Settings come from the environment; see README.md.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cfg, err := config.FromEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, "tuneforge:", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	slog.SetDefault(log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	cmd, args := os.Args[1], os.Args[2:]
	shutdownTracing, err := setupTracing(ctx, cmd)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tuneforge:", err)
		os.Exit(1)
	}
	defer shutdownTracing(context.WithoutCancel(ctx)) //nolint:errcheck // best effort flush at exit
	switch cmd {
	case "dev":
		err = runDev(ctx, cfg, log)
	case "api":
		err = runAPI(ctx, cfg, log)
	case "worker":
		err = runWorker(ctx, cfg, log, args)
	case "migrate":
		err = runMigrate(ctx, cfg)
	case "apikey":
		err = runAPIKey(ctx, cfg, args)
	case "help", "-h", "--help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "tuneforge: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "tuneforge:", err)
		os.Exit(1)
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

func runAPIKey(ctx context.Context, cfg config.Config, args []string) error {
	if len(args) == 0 || args[0] != "create" {
		return errors.New("usage: tuneforge apikey create --org ORG --user USER --scopes fine-tuning:read,fine-tuning:write")
	}
	fs := flag.NewFlagSet("apikey create", flag.ContinueOnError)
	org := fs.String("org", "", "organization ID")
	user := fs.String("user", "", "user ID")
	scopes := fs.String("scopes", strings.Join(apikey.AllScopes, ","), "comma-separated scopes")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	store, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	defer store.Close()
	key, err := apikey.Create(ctx, store, *org, *user, config.SplitList(*scopes))
	if err != nil {
		return err
	}
	fmt.Println(key)
	return nil
}

func runAPI(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	p, err := connect(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer p.close()
	log.Info("API listening", "addr", cfg.HTTPAddr)
	return group(ctx, p.apiRoles(cfg)...)
}

func runWorker(ctx context.Context, cfg config.Config, log *slog.Logger, args []string) error {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	hardware := fs.String("hardware", "", "hardware pool to train on (omit for the control worker)")
	slots := fs.Int("slots", 1, "jobs this training worker runs at once (its GPUs)")
	trainerName := fs.String("trainer", cfg.Trainer, "trainer backend: builtin or command (TUNEFORGE_TRAINER)")
	id := fs.String("id", "", "stable worker ID (default: host name and pool)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg.Trainer = *trainerName
	if err := cfg.CheckTrainer(); err != nil {
		return err
	}
	p, err := connect(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer p.close()
	if err := workers.RegisterSearchAttributes(ctx, p.temporal, cfg.TemporalNamespace); err != nil {
		return err
	}
	if *hardware == "" {
		log.Info("control worker running")
		return workers.RunControl(ctx, p.temporal, p.activities())
	}
	if *id == "" {
		host, _ := os.Hostname()
		*id = host + "/" + *hardware
	}
	acts, err := p.trainingActivities(cfg, *id)
	if err != nil {
		return err
	}
	log.Info("training worker running", "hardware", *hardware, "slots", *slots, "id", *id, "trainer", trainerLabel(cfg))
	return workers.RunTraining(ctx, p.temporal, acts, workers.Training{
		ID: *id, HardwareID: *hardware, Slots: *slots, CheckGPUs: cfg.Trainer == config.TrainerCommand,
	}, log)
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
