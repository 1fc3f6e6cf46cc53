//go:build nodev

package main

import (
	"context"
	"errors"
	"log/slog"

	"github.com/tuneforge/tuneforge/config"
)

// runDev is absent from production builds (-tags nodev), which leave the
// embedded Temporal server out.
func runDev(context.Context, config.Config, *slog.Logger) error {
	return errors.New("this binary was built with -tags nodev and has no embedded Temporal server; use `go run ./cmd/tuneforge dev`")
}
