package cluster

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/tuneforge/tuneforge/inference"
)

// docker-compose.yml describes the topology of Local for hosts with
// Docker; these tests keep the two equal without Docker.

// composeService is the part of a compose service the tests compare.
// yaml.v3 resolves the file's anchors and merge keys (<<) as it decodes.
type composeService struct {
	Image       string            `yaml:"image"`
	Build       any               `yaml:"build"`
	Profiles    []string          `yaml:"profiles"`
	Restart     string            `yaml:"restart"`
	Entrypoint  []string          `yaml:"entrypoint"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Volumes     []string          `yaml:"volumes"`
}

const (
	// frontendAddr is the frontend in compose: its service at the
	// template's default gRPC port.
	frontendAddr = "temporal-frontend:7233"
	// defaultDynamicConfig is DYNAMIC_CONFIG_FILE_PATH's default in the
	// server's template.
	defaultDynamicConfig = "/etc/temporal/config/dynamicconfig/docker.yaml"
)

// notProcesses are the compose services that are no process of the
// topology, and why.
var notProcesses = map[string]string{
	"postgres":        "`make cluster` uses the host's PostgreSQL",
	"minio":           "`make cluster` keeps artifacts in its data directory",
	"minio-init":      "creates MinIO's bucket",
	"temporal-schema": "runs SchemaCommands, as Cluster.SetupSchema does",
}

// temporalEnvOfHost are the variables of TemporalEnv that name the
// PostgreSQL server and its credentials: the processes use the host's,
// compose its postgres service. With those of temporalEnvOfImage they are
// all whose compose value differs from the processes'; every other one,
// LOG_LEVEL included, is equal.
var temporalEnvOfHost = []string{"POSTGRES_SEEDS", "POSTGRES_USER", "POSTGRES_PWD"}

// sqlToolConnFlags are SchemaCommands' connection flags, each with a
// value, and the SQL_* variables compose passes the connection in instead.
var sqlToolConnFlags = map[string]string{"--ep": "SQL_HOST", "-p": "SQL_PORT", "-u": "SQL_USER", "--pw": "SQL_PASSWORD"}

// tuneforgeEnvDefault are variables of the tuneforge processes that
// compose leaves to their defaults: json logs are the default when stderr
// is no terminal, as in a container.
var tuneforgeEnvDefault = []string{"TUNEFORGE_LOG_FORMAT"}

// temporalEnvOfImage says whether compose leaves variable name of
// TemporalEnv unset for the image to fill in. The processes share one
// loopback address, so each needs ports of its own; each container has an
// address of its own, which the image's entrypoint resolves into
// BIND_ON_IP, and every role keeps the template's default ports (as
// frontendAddr and PostgreSQL's 5432 assume). The dynamic config file is
// mounted at the template's default path.
func temporalEnvOfImage(name string) bool {
	return name == "BIND_ON_IP" || name == "DYNAMIC_CONFIG_FILE_PATH" || strings.HasSuffix(name, "_PORT")
}

// readCompose is the repository's docker-compose.yml and the topology of
// Local for the repository.
func readCompose(t *testing.T) (string, Config, map[string]composeService) {
	t.Helper()
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(repo, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Services map[string]composeService `yaml:"services"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return repo, Local(repo), f.Services
}

func envMap(env []string) map[string]string {
	m := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

func TestComposeServicesAreTheProcesses(t *testing.T) {
	_, c, services := readCompose(t)
	isProcess := map[string]bool{}
	for _, p := range c.Processes() {
		if _, ok := services[p.Service]; !ok {
			t.Errorf("process %s: docker-compose.yml has no service %s", p.Name, p.Service)
		}
		isProcess[p.Service] = true
	}
	for name := range notProcesses {
		if _, ok := services[name]; !ok {
			t.Errorf("docker-compose.yml has no service %s (notProcesses names it)", name)
		}
	}
	for name, s := range services {
		if len(s.Profiles) == 0 && !isProcess[name] && notProcesses[name] == "" {
			t.Errorf("service %s is no process of cluster.Local's topology: add it to Config.Processes, or to notProcesses with why", name)
		}
	}
}

func TestComposeRunsTheProcesses(t *testing.T) {
	repo, c, services := readCompose(t)
	versions := goModVersions(t)
	for _, p := range c.Processes() {
		s, ok := services[p.Service]
		if !ok {
			continue // TestComposeServicesAreTheProcesses reports it
		}
		env := envMap(p.Env)
		switch p.Program {
		case ProgramTuneforge:
			checkTuneforgeService(t, p, s, env)
		case ProgramTemporal:
			checkTemporalService(t, repo, c, p, s, env, services, versions)
		case ProgramUI:
			if want := "temporalio/ui:" + versions.ui; s.Image != want {
				t.Errorf("service %s: image %q, want %q", p.Service, s.Image, want)
			}
			if got := s.Environment["TEMPORAL_ADDRESS"]; got != frontendAddr {
				t.Errorf("service %s: TEMPORAL_ADDRESS=%q, want %q", p.Service, got, frontendAddr)
			}
			if got, want := s.Environment["TEMPORAL_DEFAULT_NAMESPACE"], env["TEMPORAL_DEFAULT_NAMESPACE"]; got != want {
				t.Errorf("service %s: TEMPORAL_DEFAULT_NAMESPACE=%q, want %q", p.Service, got, want)
			}
		default:
			t.Errorf("process %s runs %s, which this test does not compare with its service", p.Name, p.Program)
		}
	}
}

func checkTuneforgeService(t *testing.T, p Process, s composeService, env map[string]string) {
	t.Helper()
	if s.Build == nil {
		t.Errorf("service %s is not built from this repository", p.Service)
	}
	if !slices.Equal(s.Command, p.Args) {
		t.Errorf("service %s runs %q, process %s %q", p.Service, s.Command, p.Name, p.Args)
	}
	if once := s.Restart == "no"; once != p.Once {
		t.Errorf("service %s: restart %q, but process %s runs once: %v (a one-shot service has restart \"no\")", p.Service, s.Restart, p.Name, p.Once)
	}
	for name := range env {
		if _, ok := s.Environment[name]; !ok && !slices.Contains(tuneforgeEnvDefault, name) {
			t.Errorf("service %s does not set %s, which process %s has", p.Service, name, p.Name)
		}
	}
	if got := s.Environment["TUNEFORGE_TEMPORAL_ADDR"]; got != frontendAddr {
		t.Errorf("service %s: TUNEFORGE_TEMPORAL_ADDR=%q, want %q", p.Service, got, frontendAddr)
	}
	if got, want := s.Environment["TUNEFORGE_TEMPORAL_NAMESPACE"], env["TUNEFORGE_TEMPORAL_NAMESPACE"]; got != want {
		t.Errorf("service %s: TUNEFORGE_TEMPORAL_NAMESPACE=%q, want %q", p.Service, got, want)
	}
}

func checkTemporalService(t *testing.T, repo string, c Config, p Process, s composeService, env map[string]string, services map[string]composeService, versions modVersions) {
	t.Helper()
	if want := "temporalio/server:" + versions.server; s.Image != want {
		t.Errorf("service %s: image %q, want %q", p.Service, s.Image, want)
	}
	// The image's entrypoint resolves BIND_ON_IP, then runs the process's
	// command, `temporal-server start`.
	if s.Entrypoint != nil || s.Command != nil || !slices.Equal(p.Args, []string{"start"}) {
		t.Errorf("service %s overrides the image's entrypoint or command, or process %s no longer runs `start`", p.Service, p.Name)
	}
	if got, want := s.Environment["TEMPORAL_SERVICES"], env["TEMPORAL_SERVICES"]; got != want {
		t.Errorf("service %s: TEMPORAL_SERVICES=%q, want %q", p.Service, got, want)
	}
	temporalEnv := envMap(c.TemporalEnv())
	for name := range s.Environment {
		if _, ok := temporalEnv[name]; !ok && name != "TEMPORAL_SERVICES" {
			t.Errorf("service %s sets %s, which the processes do not (Config.TemporalEnv)", p.Service, name)
		}
	}
	for name, want := range temporalEnv {
		got, set := s.Environment[name]
		switch {
		case slices.Contains(temporalEnvOfHost, name):
			if !set {
				t.Errorf("service %s does not set %s", p.Service, name)
			}
		case temporalEnvOfImage(name):
			if set {
				t.Errorf("service %s sets %s=%q: leave it to the image", p.Service, name, got)
			}
		case got != want:
			t.Errorf("service %s: %s=%q, the processes have %q", p.Service, name, got, want)
		}
	}
	pg := services["postgres"].Environment
	if got := s.Environment["POSTGRES_SEEDS"]; got != "postgres" {
		t.Errorf("service %s: POSTGRES_SEEDS=%q, want the postgres service", p.Service, got)
	}
	if s.Environment["POSTGRES_USER"] != pg["POSTGRES_USER"] || s.Environment["POSTGRES_PWD"] != pg["POSTGRES_PASSWORD"] {
		t.Errorf("service %s: POSTGRES_USER and POSTGRES_PWD are not the postgres service's POSTGRES_USER and POSTGRES_PASSWORD", p.Service)
	}
	rel, err := filepath.Rel(repo, c.TemporalDynamicConfig)
	if err != nil {
		t.Fatal(err)
	}
	if mount := "./" + filepath.ToSlash(rel) + ":" + defaultDynamicConfig + ":ro"; !slices.Contains(s.Volumes, mount) {
		t.Errorf("service %s does not mount %s (volumes %q)", p.Service, mount, s.Volumes)
	}
}

func TestComposeSchemaJob(t *testing.T) {
	_, c, services := readCompose(t)
	s := services["temporal-schema"]
	if want := "temporalio/admin-tools:" + goModVersions(t).server; s.Image != want {
		t.Errorf("temporal-schema: image %q, want %q", s.Image, want)
	}
	var want [][]string
	for _, args := range c.SchemaCommands() {
		var cmd []string
		for i := 0; i < len(args); i++ {
			if _, ok := sqlToolConnFlags[args[i]]; ok {
				i++ // and its value
				continue
			}
			cmd = append(cmd, args[i])
		}
		want = append(want, cmd)
	}
	for flag, v := range sqlToolConnFlags {
		if s.Environment[v] == "" {
			t.Errorf("temporal-schema does not set %s (SchemaCommands' %s)", v, flag)
		}
	}
	if len(s.Command) == 0 {
		t.Fatal("temporal-schema has no command")
	}
	// The script is the last argument of `sh -ec`.
	var got [][]string
	for line := range strings.Lines(s.Command[len(s.Command)-1]) {
		fields := strings.Fields(line)
		switch {
		case len(fields) == 0:
		case fields[0] == ProgramSQLTool:
			got = append(got, fields[1:])
		default:
			t.Errorf("temporal-schema runs %q, which SchemaCommands does not", line)
		}
	}
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("temporal-schema runs\n%q\nSchemaCommands, without the connection flags:\n%q", got, want)
	}
}

// The vLLM service loads adapters of every rank the API lets a job train.
func TestComposeServesEveryLoRARank(t *testing.T) {
	_, _, services := readCompose(t)
	want := fmt.Sprintf("--max-lora-rank=%d", inference.MaxLoRARank)
	if s := services["vllm"]; !slices.Contains(s.Command, want) {
		t.Errorf("service vllm runs %q, without %s", s.Command, want)
	}
}

func TestComposeImageVersions(t *testing.T) {
	_, _, services := readCompose(t)
	v := goModVersions(t)
	// Temporal's images at go.mod's versions, the ones `make cluster`
	// builds; temporalio/auto-setup is deprecated, its last line 1.29.
	want := map[string]string{"temporalio/server": v.server, "temporalio/admin-tools": v.server, "temporalio/ui": v.ui}
	for name, s := range services {
		repo, tag, _ := strings.Cut(strings.TrimPrefix(s.Image, "docker.io/"), ":")
		if !strings.HasPrefix(repo, "temporalio/") {
			continue
		}
		if w, ok := want[repo]; !ok {
			t.Errorf("service %s uses %s, which is none of %v", name, s.Image, slices.Sorted(maps.Keys(want)))
		} else if tag != w {
			t.Errorf("service %s uses %s, want tag %s (go.mod)", name, s.Image, w)
		}
	}
}

// modVersions are the versions, without the v, of the Temporal modules
// whose programs `make cluster` builds.
type modVersions struct{ server, ui string }

func goModVersions(t *testing.T) modVersions {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	req := map[string]string{}
	for line := range strings.Lines(string(b)) {
		line, _, _ = strings.Cut(line, "//")
		fields := strings.Fields(line)
		if len(fields) > 0 && fields[0] == "require" {
			fields = fields[1:]
		}
		if len(fields) == 2 {
			req[fields[0]] = strings.TrimPrefix(fields[1], "v")
		}
	}
	v := modVersions{server: req["go.temporal.io/server"], ui: req["github.com/temporalio/ui-server/v2"]}
	if v.server == "" || v.ui == "" {
		t.Fatalf("go.mod requires no go.temporal.io/server or github.com/temporalio/ui-server/v2: %+v", v)
	}
	return v
}
