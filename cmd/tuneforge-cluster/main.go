// Command tuneforge-cluster runs tuneforge's production topology as
// processes on this machine (`make cluster`, `make cluster-down`): a
// Temporal cluster on PostgreSQL, one process per Temporal role, the
// Temporal Web UI, two API replicas, the control worker and two training
// workers. Run it from the repository, after `make cluster-build`.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tuneforge/tuneforge/cluster"
)

const usage = `usage: tuneforge-cluster up|down|status|restart NAME|kill NAME

  up          set up Temporal's databases and start every process (detached)
  down        stop them all (SIGTERM, then SIGKILL after 2 minutes)
  status      list the processes and whether each runs
  restart N   stop process N and start it again
  kill N      SIGKILL process N, as a crash would`

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "tuneforge-cluster:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("%s", usage)
	}
	repo, err := os.Getwd()
	if err != nil {
		return err
	}
	c := cluster.New(cluster.Local(repo))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch {
	case args[0] == "up" && len(args) == 1:
		if err := c.Up(ctx); err != nil {
			return fmt.Errorf("%w\n(what started still runs: make cluster-down stops it; logs in %s/logs)", err, c.Dir)
		}
		fmt.Printf("cluster up: API %v, Temporal %s, Web UI %s; logs in %s/logs\n", c.APIURLs(), c.FrontendAddr(), c.UIURL(), c.Dir)
		return nil
	case args[0] == "down" && len(args) == 1:
		return c.Down(2 * time.Minute)
	case args[0] == "status" && len(args) == 1:
		for _, p := range c.Processes() {
			state := "stopped"
			if c.Running(p.Name) {
				state = "running"
			}
			fmt.Printf("%-18s %s\n", p.Name, state)
		}
		return nil
	case args[0] == "restart" && len(args) == 2:
		if err := c.Stop(args[1], 2*time.Minute); err != nil {
			return err
		}
		return c.Start(ctx, args[1])
	case args[0] == "kill" && len(args) == 2:
		return c.Kill(args[1])
	}
	return fmt.Errorf("%s", usage)
}
