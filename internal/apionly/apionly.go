// Package apionly builds tuneforge's API alone, on a PostgreSQL store,
// with a Temporal client that never connects, for benchmarks and tests of
// what reaches no workflow (listing, refused requests). It leaves the
// embedded Temporal server out of their builds.
package apionly

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"go.temporal.io/sdk/client"

	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/server"
)

// New builds the API on store, with a data directory and file artifact
// store of its own; close releases them. A request that gets as far as a
// workflow fails as a 503.
func New(ctx context.Context, store *db.Store) (api *server.Server, close func(), err error) {
	temporal, err := client.NewLazyClient(client.Options{HostPort: "127.0.0.1:1"})
	if err != nil {
		return nil, nil, fmt.Errorf("temporal client: %w", err)
	}
	dir, err := os.MkdirTemp("", "tuneforge-apionly-")
	if err != nil {
		temporal.Close()
		return nil, nil, err
	}
	close = func() { temporal.Close(); os.RemoveAll(dir) }
	blobs, err := artifacts.Open(ctx, "file://"+dir+"/artifacts")
	if err != nil {
		close()
		return nil, nil, err
	}
	api = server.New(server.Deps{Store: store, Temporal: temporal, Artifacts: blobs, DataDir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	return api, close, nil
}
