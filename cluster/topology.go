// Package cluster is tuneforge's production topology run as processes on
// one machine: a Temporal cluster on PostgreSQL with its roles in processes
// of their own (Temporal's own server program, the one its images run, set
// up by its own SQL tool), the Temporal Web UI, API replicas, a control
// worker and training workers. `make cluster` runs it; the fault test and
// `make bench-cluster` run it on ports and databases of their own; and
// docker-compose.yml describes the same topology for hosts with Docker,
// which a test keeps equal to this one.
package cluster

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"
)

// The programs a topology runs, found in Config.Bin.
const (
	ProgramTuneforge = "tuneforge"
	ProgramTemporal  = "temporal-server"
	ProgramSQLTool   = "temporal-sql-tool"
	ProgramUI        = "temporal-ui-server"
)

// TemporalRoles are the Temporal server's services, one process each.
var TemporalRoles = []string{"frontend", "history", "matching", "worker"}

// Postgres is the PostgreSQL server that holds tuneforge's database and
// Temporal's two.
type Postgres struct {
	Host     string
	Port     int
	User     string
	Password string
}

// Ports are the loopback ports the topology listens on.
type Ports struct {
	// Temporal's gRPC and membership ports, by role.
	GRPC       map[string]int
	Membership map[string]int
	// FrontendHTTP is the frontend's HTTP API.
	FrontendHTTP int
	UI           int
	// API has one port per API replica; Metrics one per tuneforge process
	// that serves /metrics, by process name.
	API     []int
	Metrics map[string]int
}

// Config is one topology.
type Config struct {
	// Bin holds the programs; Dir the logs, pid files and tuneforge's data
	// (artifacts, checkpoints), shared by its processes as a shared bucket
	// would be.
	Bin, Dir string
	Postgres Postgres
	// Databases: tuneforge's, Temporal's and Temporal's visibility store.
	Database, TemporalDatabase, VisibilityDatabase string
	Namespace                                      string
	// HistoryShards is fixed for a cluster's life: Temporal cannot change
	// it once the database holds workflows.
	HistoryShards int
	// Pool is the hardware pool the training workers serve, with Slots
	// jobs each; TrainingWorkers of them.
	Pool            string
	Slots           int
	TrainingWorkers int
	Ports           Ports
	// TemporalDynamicConfig is the Temporal server's dynamic config file.
	TemporalDynamicConfig string
	// UIConfigDir holds the Web UI's configuration (cluster.yaml).
	UIConfigDir string
	// Env is added to every tuneforge process's environment (settings
	// such as TUNEFORGE_RATE_LIMIT).
	Env []string
}

// Process is one program of the topology.
type Process struct {
	// Name is unique within the topology; Service is its
	// docker-compose.yml service.
	Name, Service string
	Program       string
	Args          []string
	// Env is added to the environment the process inherits.
	Env []string
	// Ready is a URL that answers 200 once the process serves; "" when
	// it serves no HTTP.
	Ready string
	// Once: the process runs to completion (a migration) before the
	// processes after it start.
	Once bool
}

// Path is the process's program file.
func (c Config) Path(p Process) string { return filepath.Join(c.Bin, p.Program) }

// FrontendAddr is the Temporal frontend's host:port.
func (c Config) FrontendAddr() string { return loopback(c.Ports.GRPC["frontend"]) }

// APIURLs are the API replicas' base URLs.
func (c Config) APIURLs() []string {
	urls := make([]string, len(c.Ports.API))
	for i, p := range c.Ports.API {
		urls[i] = "http://" + loopback(p)
	}
	return urls
}

// UIURL is the Web UI's address.
func (c Config) UIURL() string { return "http://" + loopback(c.Ports.UI) }

// DatabaseURL is tuneforge's DATABASE_URL.
func (c Config) DatabaseURL() string {
	auth := c.Postgres.User
	if c.Postgres.Password != "" {
		auth += ":" + c.Postgres.Password
	}
	return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable", auth, net.JoinHostPort(c.Postgres.Host, strconv.Itoa(c.Postgres.Port)), c.Database)
}

// TemporalEnv is the environment of every Temporal server process: the
// variables of the configuration template built into the server (and so
// into Temporal's server image), with only the role (TEMPORAL_SERVICES)
// differing between processes.
func (c Config) TemporalEnv() []string {
	env := []string{
		"DB=postgres12",
		"POSTGRES_SEEDS=" + c.Postgres.Host,
		"DB_PORT=" + strconv.Itoa(c.Postgres.Port),
		"POSTGRES_USER=" + c.Postgres.User,
		"POSTGRES_PWD=" + c.Postgres.Password,
		"DBNAME=" + c.TemporalDatabase,
		"VISIBILITY_DBNAME=" + c.VisibilityDatabase,
		"NUM_HISTORY_SHARDS=" + strconv.Itoa(c.HistoryShards),
		"BIND_ON_IP=127.0.0.1",
		"FRONTEND_HTTP_PORT=" + strconv.Itoa(c.Ports.FrontendHTTP),
		"DYNAMIC_CONFIG_FILE_PATH=" + c.TemporalDynamicConfig,
		"LOG_LEVEL=warn",
		// Connections per role: 10 to the main store and 5 to visibility
		// (the template's defaults are 20 and 10), so the four roles stay
		// within 60 of PostgreSQL's default 100.
		"SQL_MAX_CONNS=10", "SQL_MAX_IDLE_CONNS=10",
		"SQL_VIS_MAX_CONNS=5", "SQL_VIS_MAX_IDLE_CONNS=5",
	}
	for _, role := range TemporalRoles {
		prefix := map[string]string{"frontend": "FRONTEND", "history": "HISTORY", "matching": "MATCHING", "worker": "WORKER"}[role]
		env = append(env,
			prefix+"_GRPC_PORT="+strconv.Itoa(c.Ports.GRPC[role]),
			prefix+"_MEMBERSHIP_PORT="+strconv.Itoa(c.Ports.Membership[role]))
	}
	return env
}

// tuneforgeEnv is the environment every tuneforge process shares.
func (c Config) tuneforgeEnv() []string {
	return append([]string{
		"DATABASE_URL=" + c.DatabaseURL(),
		"TUNEFORGE_TEMPORAL_ADDR=" + c.FrontendAddr(),
		"TUNEFORGE_TEMPORAL_NAMESPACE=" + c.Namespace,
		"TUNEFORGE_DATA_DIR=" + filepath.Join(c.Dir, "data"),
		"TUNEFORGE_LOG_FORMAT=json",
	}, c.Env...)
}

// Processes lists the topology in the order it starts: the Temporal
// roles, the Web UI, the migration, the workers and the API replicas.
// (The schema set-up runs before all of them: SchemaCommands.)
func (c Config) Processes() []Process {
	var ps []Process
	for _, role := range TemporalRoles {
		ps = append(ps, Process{
			Name: "temporal-" + role, Service: "temporal-" + role, Program: ProgramTemporal,
			Args: []string{"start"}, Env: append(c.TemporalEnv(), "TEMPORAL_SERVICES="+role),
		})
	}
	ps = append(ps, Process{
		Name: "temporal-ui", Service: "temporal-ui", Program: ProgramUI,
		Args: []string{"--root", c.UIConfigDir, "--config", ".", "--env", "cluster", "start"},
		Env: []string{
			"TEMPORAL_ADDRESS=" + c.FrontendAddr(),
			"TEMPORAL_UI_PORT=" + strconv.Itoa(c.Ports.UI),
			"TEMPORAL_DEFAULT_NAMESPACE=" + c.Namespace,
		},
		Ready: c.UIURL() + "/healthz",
	})
	ps = append(ps, Process{Name: "migrate", Service: "migrate", Program: ProgramTuneforge, Args: []string{"migrate"}, Env: c.tuneforgeEnv(), Once: true})
	worker := func(name, service string, args ...string) Process {
		env := c.tuneforgeEnv()
		ready := ""
		if port := c.Ports.Metrics[name]; port != 0 {
			env = append(env, "TUNEFORGE_METRICS_ADDR="+loopback(port))
			ready = "http://" + loopback(port) + "/metrics"
		}
		return Process{Name: name, Service: service, Program: ProgramTuneforge, Args: append([]string{"worker"}, args...), Env: env, Ready: ready}
	}
	ps = append(ps, worker("control", "worker"))
	for i := 1; i <= c.TrainingWorkers; i++ {
		name := fmt.Sprintf("training-%d", i)
		ps = append(ps, worker(name, name, "--hardware", c.Pool, "--slots", strconv.Itoa(c.Slots), "--trainer", "builtin", "--id", name))
	}
	for i, port := range c.Ports.API {
		name := fmt.Sprintf("api-%d", i+1)
		env := append(c.tuneforgeEnv(), "TUNEFORGE_HTTP_ADDR="+loopback(port))
		if m := c.Ports.Metrics[name]; m != 0 {
			env = append(env, "TUNEFORGE_METRICS_ADDR="+loopback(m))
		}
		ps = append(ps, Process{Name: name, Service: name, Program: ProgramTuneforge, Args: []string{"api"}, Env: env,
			Ready: "http://" + loopback(port) + "/readyz"})
	}
	return ps
}

// SchemaCommands set up (or upgrade) Temporal's two databases with
// Temporal's SQL tool and the schemas built into it; each is idempotent.
func (c Config) SchemaCommands() [][]string {
	conn := []string{"--plugin", "postgres12", "--ep", c.Postgres.Host, "-p", strconv.Itoa(c.Postgres.Port), "-u", c.Postgres.User}
	if c.Postgres.Password != "" {
		conn = append(conn, "--pw", c.Postgres.Password)
	}
	var cmds [][]string
	for _, db := range [][2]string{{c.TemporalDatabase, "postgresql/v12/temporal"}, {c.VisibilityDatabase, "postgresql/v12/visibility"}} {
		name, schema := db[0], db[1]
		at := append(append([]string{}, conn...), "--db", name)
		cmds = append(cmds,
			append(append([]string{}, at...), "create-database"),
			append(append([]string{}, at...), "setup-schema", "-v", "0.0"),
			append(append([]string{}, at...), "update-schema", "--schema-name", schema))
	}
	return cmds
}

func loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
