package cli

import (
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

// Commands are the client commands (jobs, datasets, models). getenv reads
// TUNEFORGE_URL and TUNEFORGE_API_KEY when a command runs, so --help never
// needs them.
func Commands(getenv func(string) string) []*cobra.Command {
	a := &app{}
	cmds := []*cobra.Command{jobsCommand(a), datasetsCommand(a), modelsCommand(a)}
	for _, c := range cmds {
		c.PersistentFlags().BoolVar(&a.json, "json", false, "print the API's JSON, unchanged, for scripts")
		c.PersistentPreRun = func(*cobra.Command, []string) {
			a.client = Client{BaseURL: getenv("TUNEFORGE_URL"), Key: getenv("TUNEFORGE_API_KEY")}
			if a.client.BaseURL == "" {
				a.client.BaseURL = DefaultURL
			}
		}
	}
	return cmds
}
