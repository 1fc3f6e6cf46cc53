package cluster

import (
	"path/filepath"

	"github.com/tuneforge/tuneforge/internal/freeport"
)

// Local is the topology `make cluster` runs from the repository at repo:
// the local PostgreSQL, Temporal's usual ports (frontend 7233, Web UI
// 8233), API replicas on 8080 and 8081, state in bin/cluster. Its
// tuneforge database is not `make dev`'s: the jobs of one would name
// workflows the other's Temporal never ran.
func Local(repo string) Config {
	return Config{
		Bin:                   filepath.Join(repo, "bin", "cluster", "bin"),
		Dir:                   filepath.Join(repo, "bin", "cluster"),
		Postgres:              Postgres{Host: "127.0.0.1", Port: 5432, User: "postgres"},
		Database:              "tuneforge_cluster",
		TemporalDatabase:      "temporal",
		VisibilityDatabase:    "temporal_visibility",
		Namespace:             "default",
		HistoryShards:         4,
		Pool:                  "gpu-a100-40gb",
		Slots:                 2,
		TrainingWorkers:       2,
		TemporalDynamicConfig: filepath.Join(repo, "deploy", "temporal", "dynamicconfig.yaml"),
		UIConfigDir:           filepath.Join(repo, "deploy", "temporal-ui"),
		Ports: Ports{
			GRPC:         map[string]int{"frontend": 7233, "history": 7234, "matching": 7235, "worker": 7239},
			Membership:   map[string]int{"frontend": 6933, "history": 6934, "matching": 6935, "worker": 6939},
			FrontendHTTP: 7243,
			UI:           8233,
			API:          []int{8080, 8081},
			Metrics:      map[string]int{"api-1": 9090, "api-2": 9091, "control": 9092, "training-1": 9093, "training-2": 9094},
		},
	}
}

// UseFreePorts moves every port to one that is free now, for a topology
// beside others (tests, benchmarks).
func (c *Config) UseFreePorts() error {
	var err error
	free := func() int {
		if err != nil {
			return 0
		}
		var p int
		p, err = freeport.Pick()
		return p
	}
	for _, role := range TemporalRoles {
		c.Ports.GRPC[role], c.Ports.Membership[role] = free(), free()
	}
	c.Ports.FrontendHTTP, c.Ports.UI = free(), free()
	for i := range c.Ports.API {
		c.Ports.API[i] = free()
	}
	for name := range c.Ports.Metrics {
		c.Ports.Metrics[name] = free()
	}
	return err
}
