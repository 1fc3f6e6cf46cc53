package cli

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// DefaultURL is the API `make dev` serves.
const DefaultURL = "http://127.0.0.1:8080"

// app is what the client commands share: the API client, built when a
// command runs, and the output mode.
type app struct {
	client Client
	json   bool

	progressAt   time.Time
	progressLine string
}

// Commands are the client commands (jobs, datasets, models, chat,
// base-models, hardware). getenv reads TUNEFORGE_URL and TUNEFORGE_API_KEY
// when a command runs, so --help never needs them.
func Commands(getenv func(string) string) []*cobra.Command {
	a := &app{}
	cmds := []*cobra.Command{jobsCommand(a), datasetsCommand(a), modelsCommand(a), chatCommand(a), baseModelsCommand(a), hardwareCommand(a)}
	for _, c := range cmds {
		c.PersistentFlags().BoolVar(&a.json, "json", false, "print the API's JSON, unchanged, for scripts")
		c.PersistentPreRun = func(*cobra.Command, []string) {
			a.client = Client{BaseURL: getenv("TUNEFORGE_URL"), Key: getenv("TUNEFORGE_API_KEY")}
			if a.client.BaseURL == "" {
				a.client.BaseURL = DefaultURL
			}
		}
		if c.HasSubCommands() {
			// Else cobra prints a group's help for a mistyped subcommand,
			// and succeeds.
			c.Args = unknownSubcommand
			c.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
		}
	}
	return cmds
}

// unknownSubcommand refuses arguments to a group of commands, as cobra
// does at the top level: naming the subcommands the typo may have meant.
func unknownSubcommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += "\n\nDid you mean this?\n\t" + strings.Join(s, "\n\t")
	}
	return UsageError(errors.New(msg))
}
