// Package devserver embeds a Temporal server (persisted in a SQLite file) and
// the Temporal Web UI, for `tuneforge dev` and the integration tests. It is
// the only package that imports go.temporal.io/server, so production binaries
// built with the `nodev` tag never link it.
package devserver

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	uiserver "github.com/temporalio/ui-server/v2/server"
	uiconfig "github.com/temporalio/ui-server/v2/server/config"
	uioptions "github.com/temporalio/ui-server/v2/server/server_options"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/server/common/authorization"
	"go.temporal.io/server/common/cluster"
	"go.temporal.io/server/common/config"
	"go.temporal.io/server/common/dynamicconfig"
	tlog "go.temporal.io/server/common/log"
	"go.temporal.io/server/common/metrics"
	sqliteplugin "go.temporal.io/server/common/persistence/sql/sqlplugin/sqlite"
	"go.temporal.io/server/schema/sqlite"
	"go.temporal.io/server/temporal"
)

// Config says where the embedded server keeps its state and listens.
type Config struct {
	// DatabaseFile is the SQLite file; empty means in memory (tests).
	DatabaseFile string
	// FrontendAddr is host:port for the gRPC frontend; port 0 picks a free one.
	FrontendAddr string
	// UIAddr is host:port for the Web UI; empty disables it.
	UIAddr string
	// Namespace is created at start, with SearchAttributes registered on it.
	Namespace        string
	SearchAttributes map[string]enumspb.IndexedValueType
	// LogLevel is the Temporal server's own log level (default "error": it is chatty).
	LogLevel string
	// LogFile, when set, receives the Temporal server's own log instead
	// of stderr, so a terminal shows only what the platform says.
	LogFile string
	// Logger receives the UI's errors.
	Logger *slog.Logger
}

// Server is a running embedded Temporal server and, optionally, its Web UI.
type Server struct {
	temporal     temporal.Server
	ui           *uiserver.Server
	frontendAddr string
	uiURL        string
}

// FrontendAddr is the host:port clients dial.
func (s *Server) FrontendAddr() string { return s.frontendAddr }

// UIURL is the Web UI's address, or "" when it is disabled.
func (s *Server) UIURL() string { return s.uiURL }

// Start starts the server (and the UI) and returns once the frontend listens.
func Start(cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	host, port, err := splitHostPort(cfg.FrontendAddr)
	if err != nil {
		return nil, fmt.Errorf("temporal address %q: %w", cfg.FrontendAddr, err)
	}
	if port == 0 {
		if port, err = freePort(host); err != nil {
			return nil, err
		}
	} else if err := checkFree(host, port); err != nil {
		return nil, fmt.Errorf("temporal address %s:%d is taken (is another `tuneforge dev` running?): %w", host, port, err)
	}
	frontend := net.JoinHostPort(host, strconv.Itoa(port))

	sqlCfg := &config.SQL{
		PluginName:        sqliteplugin.PluginName,
		ConnectAttributes: map[string]string{"mode": "rwc", "_journal_mode": "wal", "_synchronous": "2"},
		DatabaseName:      cfg.DatabaseFile,
	}
	if cfg.DatabaseFile == "" {
		// The SQLite plugin creates the schema of an in-memory database itself.
		sqlCfg.ConnectAttributes = map[string]string{"mode": "memory", "cache": "shared"}
		sqlCfg.DatabaseName = "tuneforge-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	} else {
		if err := os.MkdirAll(filepath.Dir(cfg.DatabaseFile), 0o755); err != nil {
			return nil, fmt.Errorf("create temporal data directory: %w", err)
		}
		if _, err := os.Stat(cfg.DatabaseFile); errors.Is(err, os.ErrNotExist) {
			if err := sqlite.SetupSchema(sqlCfg); err != nil {
				return nil, fmt.Errorf("set up temporal schema in %s: %w", cfg.DatabaseFile, err)
			}
		}
	}

	const clusterName = "active"
	ns, err := sqlite.NewNamespaceConfig(clusterName, cfg.Namespace, false, cfg.SearchAttributes)
	if err != nil {
		return nil, fmt.Errorf("namespace config: %w", err)
	}
	if err := sqlite.CreateNamespaces(sqlCfg, ns); err != nil {
		return nil, fmt.Errorf("create namespace %s: %w", cfg.Namespace, err)
	}

	serverCfg, err := serverConfig(sqlCfg, host, port, clusterName, cfg.DatabaseFile != "")
	if err != nil {
		return nil, err
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "error"
	}
	logger := tlog.NewZapLogger(tlog.BuildZapLogger(tlog.Config{Level: cfg.LogLevel, Format: "console", OutputFile: cfg.LogFile}))
	authorizer, err := authorization.GetAuthorizerFromConfig(&serverCfg.Global.Authorization)
	if err != nil {
		return nil, fmt.Errorf("temporal authorizer: %w", err)
	}
	claimMapper, err := authorization.GetClaimMapperFromConfig(&serverCfg.Global.Authorization, logger)
	if err != nil {
		return nil, fmt.Errorf("temporal claim mapper: %w", err)
	}
	srv, err := temporal.NewServer(
		temporal.WithConfig(serverCfg),
		temporal.ForServices(temporal.DefaultServices),
		temporal.WithLogger(logger),
		temporal.WithAuthorizer(authorizer),
		temporal.WithClaimMapper(func(*config.Config) authorization.ClaimMapper { return claimMapper }),
		temporal.WithDynamicConfigClient(dynamicConfig()),
	)
	if err != nil {
		return nil, fmt.Errorf("create temporal server: %w", err)
	}
	if err := srv.Start(); err != nil {
		return nil, fmt.Errorf("start temporal server: %w", err)
	}
	s := &Server{temporal: srv, frontendAddr: frontend}

	if cfg.UIAddr != "" {
		if err := s.startUI(cfg, frontend); err != nil {
			_ = srv.Stop()
			return nil, err
		}
	}
	return s, nil
}

// Stop shuts the UI and the server down.
func (s *Server) Stop() error {
	if s.ui != nil {
		s.ui.Stop()
	}
	return s.temporal.Stop()
}

func (s *Server) startUI(cfg Config, frontend string) error {
	host, port, err := splitHostPort(cfg.UIAddr)
	if err != nil {
		return fmt.Errorf("UI address %q: %w", cfg.UIAddr, err)
	}
	// The UI server exits the process on a listen error, so check first.
	if err := checkFree(host, port); err != nil {
		return fmt.Errorf("web UI address %s is taken: %w", cfg.UIAddr, err)
	}
	s.ui = uiserver.NewServer(uioptions.WithConfigProvider(&uiconfig.Config{
		Host:                host,
		Port:                port,
		TemporalGRPCAddress: frontend,
		EnableUI:            true,
		DefaultNamespace:    cfg.Namespace,
		HideLogs:            true,
		DisableNewsFetch:    true,
		CORS:                uiconfig.CORS{CookieInsecure: true},
	}))
	go func() {
		if err := s.ui.Start(); err != nil {
			cfg.Logger.Error("web UI stopped", "err", err)
		}
	}()
	s.uiURL = "http://" + net.JoinHostPort(host, strconv.Itoa(port))
	return nil
}

// servicePorts picks each service's gRPC and membership ports. A persisted
// server takes fixed offsets from the frontend port, so that after a crash
// the restarted services come back as the same cluster members instead of
// waiting for the dead ones to be declared gone; ports that are taken, and
// those of an in-memory server, are chosen freely.
func servicePorts(host string, frontendPort int, persisted bool) (map[string]config.Service, error) {
	pick := func(fixed int) (int, error) {
		if persisted && fixed > 0 && fixed < 65536 && checkFree(host, fixed) == nil {
			return fixed, nil
		}
		return freePort(host)
	}
	services := map[string]config.Service{}
	for i, name := range []string{"frontend", "history", "matching", "worker"} {
		grpcPort := frontendPort
		if i > 0 {
			p, err := pick(frontendPort + i)
			if err != nil {
				return nil, err
			}
			grpcPort = p
		}
		membership, err := pick(frontendPort + 100 + i)
		if err != nil {
			return nil, err
		}
		services[name] = config.Service{RPC: config.RPC{GRPCPort: grpcPort, MembershipPort: membership, BindOnIP: host}}
	}
	return services, nil
}

func serverConfig(sqlCfg *config.SQL, host string, frontendPort int, clusterName string, persisted bool) (*config.Config, error) {
	services, err := servicePorts(host, frontendPort, persisted)
	if err != nil {
		return nil, err
	}
	metricsPort, err := freePort(host)
	if err != nil {
		return nil, err
	}
	frontend := net.JoinHostPort(host, strconv.Itoa(frontendPort))
	return &config.Config{
		Global: config.Global{
			Membership: config.Membership{MaxJoinDuration: 30 * time.Second, BroadcastAddress: host},
			Metrics: &metrics.Config{Prometheus: &metrics.PrometheusConfig{
				ListenAddress: net.JoinHostPort(host, strconv.Itoa(metricsPort)),
				HandlerPath:   "/metrics",
			}},
		},
		Persistence: config.Persistence{
			DefaultStore:     sqliteplugin.PluginName,
			VisibilityStore:  sqliteplugin.PluginName,
			NumHistoryShards: 1,
			DataStores:       map[string]config.DataStore{sqliteplugin.PluginName: {SQL: sqlCfg}},
		},
		ClusterMetadata: &cluster.Config{
			FailoverVersionIncrement: 10,
			MasterClusterName:        clusterName,
			CurrentClusterName:       clusterName,
			ClusterInformation: map[string]cluster.ClusterInformation{
				clusterName: {Enabled: true, InitialFailoverVersion: 1, RPCAddress: frontend},
			},
		},
		DCRedirectionPolicy: config.DCRedirectionPolicy{Policy: "noop"},
		Services:            services,
		Archival: config.Archival{
			History:    config.HistoryArchival{State: "disabled"},
			Visibility: config.VisibilityArchival{State: "disabled"},
		},
		NamespaceDefaults: config.NamespaceDefaults{Archival: config.ArchivalNamespaceDefaults{
			History:    config.HistoryArchivalNamespaceDefaults{State: "disabled"},
			Visibility: config.VisibilityArchivalNamespaceDefaults{State: "disabled"},
		}},
		PublicClient: config.PublicClient{HostPort: frontend},
	}, nil
}

// dynamicConfig tunes the single-process server for low latency: one task
// queue partition (no forwarding between partitions), search attributes
// visible as soon as they are written, and room for a busy development box.
func dynamicConfig() dynamicconfig.StaticClient {
	one := []dynamicconfig.ConstrainedValue{{Value: 1}}
	qps := []dynamicconfig.ConstrainedValue{{Value: 50000}}
	return dynamicconfig.StaticClient{
		dynamicconfig.ForceSearchAttributesCacheRefreshOnRead.Key(): []dynamicconfig.ConstrainedValue{{Value: true}},
		dynamicconfig.MatchingNumTaskqueueReadPartitions.Key():      one,
		dynamicconfig.MatchingNumTaskqueueWritePartitions.Key():     one,
		dynamicconfig.FrontendPersistenceMaxQPS.Key():               qps,
		dynamicconfig.HistoryPersistenceMaxQPS.Key():                qps,
		dynamicconfig.MatchingPersistenceMaxQPS.Key():               qps,
		dynamicconfig.WorkerPersistenceMaxQPS.Key():                 qps,
	}
}

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("port %q is not a number", p)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return host, port, nil
}

func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("find a free port on %s: %w", host, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func checkFree(host string, port int) error {
	l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return err
	}
	return l.Close()
}
