package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// Every command's --help, and `help CMD`, prints help and succeeds without
// doing anything: with the database and Temporal unreachable, a command
// that ran would fail.
func TestHelpDoesNothingElse(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none?sslmode=disable")
	t.Setenv("TUNEFORGE_TEMPORAL_ADDR", "127.0.0.1:1")
	t.Setenv("TUNEFORGE_URL", "http://127.0.0.1:1")
	var paths [][]string
	var walk func(c *cobra.Command, path []string)
	walk = func(c *cobra.Command, path []string) {
		paths = append(paths, path)
		for _, sub := range c.Commands() {
			if sub.Name() != "help" && sub.Name() != "completion" {
				walk(sub, append(append([]string{}, path...), sub.Name()))
			}
		}
	}
	walk(rootCommand(), nil)
	if len(paths) < 20 {
		t.Fatalf("only %d commands", len(paths))
	}
	for _, path := range paths {
		for _, args := range [][]string{append(append([]string{}, path...), "--help"), append([]string{"help"}, path...)} {
			root := rootCommand()
			var out bytes.Buffer
			root.SetOut(&out)
			root.SetErr(&out)
			root.SetArgs(args)
			if err := root.Execute(); err != nil {
				t.Errorf("tuneforge %s: %v", strings.Join(args, " "), err)
			}
			if !strings.Contains(out.String(), "Usage:") {
				t.Errorf("tuneforge %s printed no usage:\n%s", strings.Join(args, " "), out.String())
			}
		}
	}
	root := rootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetArgs([]string{"--version"})
	if err := root.Execute(); err != nil || !strings.HasPrefix(out.String(), "tuneforge version ") {
		t.Errorf("--version: %v %q", err, out.String())
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"nosuch"}, {"jobs", "get"}, {"jobs", "list", "--bogus"}, {"apikey", "create", "--org", "o"}, {"worker", "extra"}} {
		root := rootCommand()
		root.SetOut(&bytes.Buffer{})
		root.SetErr(&bytes.Buffer{})
		root.SetArgs(args)
		if err := root.Execute(); err == nil || !isUsageError(err) {
			t.Errorf("tuneforge %s: %v; want a usage error", strings.Join(args, " "), err)
		}
	}
}
