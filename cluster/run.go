package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/tuneforge/tuneforge/workflows"
)

// Cluster runs a topology's processes. Each runs in a process group of its
// own with its output in Dir/logs/NAME.log and its pid in Dir/run/NAME.pid,
// so that Down, from another process, can stop what Up started.
type Cluster struct {
	Config
	mu      sync.Mutex
	running map[string]*running
}

type running struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and been reaped
}

// New returns a cluster of cfg's topology; nothing runs yet.
func New(cfg Config) *Cluster { return &Cluster{Config: cfg, running: map[string]*running{}} }

// StartTimeout bounds the wait for one process to be ready.
const StartTimeout = 2 * time.Minute

// Up sets up Temporal's databases and starts every process that is not
// running, in order, each once the one before it is ready. On an error,
// what started keeps running: Down stops it.
func (c *Cluster) Up(ctx context.Context) error {
	for _, dir := range []string{c.logDir(), c.runDir(), filepath.Join(c.Dir, "data")} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	if err := c.SetupSchema(ctx); err != nil {
		return err
	}
	for _, p := range c.Processes() {
		// Up again leaves what runs alone.
		if !p.Once && c.Running(p.Name) {
			continue
		}
		if err := c.Start(ctx, p.Name); err != nil {
			return err
		}
	}
	return c.waitSearchAttributes(ctx)
}

// waitSearchAttributes waits until Temporal accepts a workflow with
// tuneforge's search attributes. On a fresh cluster the workers register
// them, and each Temporal role learns of them when its cache refreshes
// (up to a minute); until then a job's create answers 503. A probe
// workflow, terminated at once, tells when that has passed.
func (c *Cluster) waitSearchAttributes(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, StartTimeout)
	defer cancel()
	tc, err := client.DialContext(ctx, client.Options{HostPort: c.FrontendAddr(), Namespace: c.Namespace, Logger: quiet{}})
	if err != nil {
		return fmt.Errorf("connect to Temporal: %w", err)
	}
	defer tc.Close()
	attrs := temporal.NewSearchAttributes(
		workflows.SearchAttrStatus.ValueSet("probe"),
		workflows.SearchAttrBaseModel.ValueSet("probe"),
		workflows.SearchAttrOrganization.ValueSet("probe"))
	for {
		id := "tuneforge-cluster-probe-" + strconv.FormatInt(time.Now().UnixNano(), 36)
		run, err := tc.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: "tuneforge-cluster-probe", TypedSearchAttributes: attrs}, "ClusterProbe")
		if err == nil {
			return tc.TerminateWorkflow(ctx, id, run.GetRunID(), "the cluster accepts tuneforge's search attributes")
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("Temporal still refuses tuneforge's search attributes: %w", err)
		case <-time.After(time.Second):
		}
	}
}

// SetupSchema creates tuneforge's database (its migrate process fills
// it), and creates Temporal's databases and brings their schemas to the
// server's version with Temporal's SQL tool.
func (c *Cluster) SetupSchema(ctx context.Context) error {
	if err := c.createDatabase(ctx); err != nil {
		return err
	}
	for _, args := range c.SchemaCommands() {
		out, err := exec.CommandContext(ctx, filepath.Join(c.Bin, ProgramSQLTool), args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %s: %w\n%s", ProgramSQLTool, strings.Join(args, " "), err, out)
		}
	}
	return nil
}

// createDatabase creates tuneforge's database when it is missing, as the
// PostgreSQL image's POSTGRES_DB does in docker-compose.yml.
func (c *Cluster) createDatabase(ctx context.Context) error {
	admin := c.Config
	admin.Database = "postgres"
	conn, err := pgx.Connect(ctx, admin.DatabaseURL())
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", c.Database).Scan(&exists); err != nil {
		return fmt.Errorf("look for database %s: %w", c.Database, err)
	}
	if exists {
		return nil
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{c.Database}.Sanitize()); err != nil {
		return fmt.Errorf("create database %s: %w", c.Database, err)
	}
	return nil
}

// Process is the topology's process called name.
func (c *Cluster) Process(name string) (Process, error) {
	ps := c.Processes()
	i := slices.IndexFunc(ps, func(p Process) bool { return p.Name == name })
	if i < 0 {
		return Process{}, fmt.Errorf("the topology has no process %q", name)
	}
	return ps[i], nil
}

// Start starts (or restarts) process name and waits until it is ready,
// or, for a process that runs once, until it has succeeded.
func (c *Cluster) Start(ctx context.Context, name string) error {
	p, err := c.Process(name)
	if err != nil {
		return err
	}
	if err := c.Kill(name); err != nil {
		return err
	}
	logFile, err := os.OpenFile(c.logPath(name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	fmt.Fprintf(logFile, "--- %s: %s %s\n", time.Now().Format(time.RFC3339), p.Program, strings.Join(p.Args, " "))
	cmd := exec.Command(c.Path(p), p.Args...)
	cmd.Env = append(os.Environ(), p.Env...)
	cmd.Dir = c.Dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// A session of its own: a signal to the launcher's terminal does not
	// reach it, and it outlives a launcher that exits.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	r := &running{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(r.done)
	}()
	c.mu.Lock()
	c.running[name] = r
	c.mu.Unlock()
	if err := os.WriteFile(c.pidPath(name), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		return err
	}
	if p.Once {
		select {
		case <-r.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		_ = os.Remove(c.pidPath(name))
		if code := cmd.ProcessState.ExitCode(); code != 0 {
			return fmt.Errorf("%s exited %d:\n%s", name, code, c.LogTail(name, 40))
		}
		return nil
	}
	return c.waitReady(ctx, p, r)
}

func (c *Cluster) waitReady(ctx context.Context, p Process, r *running) error {
	ctx, cancel := context.WithTimeout(ctx, StartTimeout)
	defer cancel()
	ready := func() bool {
		switch {
		case p.Ready != "":
			resp, err := http.Get(p.Ready)
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		case p.Name == "temporal-frontend":
			return c.frontendServes(ctx)
		default:
			// A process without a health check counts as ready once it
			// has stayed up for a moment.
			select {
			case <-r.done:
				return false
			case <-time.After(time.Second):
				return true
			}
		}
	}
	for !ready() {
		select {
		case <-r.done:
			return fmt.Errorf("%s exited (%v) before it was ready:\n%s", p.Name, r.cmd.ProcessState, c.LogTail(p.Name, 40))
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s: %w\n%s", p.Name, StartTimeout, ctx.Err(), c.LogTail(p.Name, 40))
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}

// frontendServes says whether the Temporal frontend answers its health
// check.
func (c *Cluster) frontendServes(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	tc, err := client.DialContext(ctx, client.Options{HostPort: c.FrontendAddr(), Logger: quiet{}})
	if err != nil {
		return false
	}
	defer tc.Close()
	_, err = tc.CheckHealth(ctx, &client.CheckHealthRequest{})
	return err == nil
}

// Signal sends sig to process name's group.
func (c *Cluster) Signal(name string, sig syscall.Signal) error {
	pid, err := c.pid(name)
	if err != nil || pid == 0 {
		return err
	}
	if err := syscall.Kill(-pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %s: %w", name, err)
	}
	return nil
}

// Kill SIGKILLs process name, as a crash or an OOM kill would end it, and
// waits until it is gone; nothing happens when it is not running.
func (c *Cluster) Kill(name string) error {
	return c.stop(name, syscall.SIGKILL, 10*time.Second)
}

// Stop asks process name to stop (SIGTERM), as an operator or a
// container runtime does, and SIGKILLs it after grace.
func (c *Cluster) Stop(name string, grace time.Duration) error {
	return c.stop(name, syscall.SIGTERM, grace)
}

func (c *Cluster) stop(name string, sig syscall.Signal, grace time.Duration) error {
	pid, err := c.pid(name)
	if err != nil || pid == 0 {
		return err
	}
	_ = syscall.Kill(-pid, sig)
	deadline := time.Now().Add(grace)
	for c.alive(name, pid) {
		if time.Now().After(deadline) {
			if sig == syscall.SIGKILL {
				return fmt.Errorf("%s (pid %d) is still running after SIGKILL", name, pid)
			}
			sig = syscall.SIGKILL
			_ = syscall.Kill(-pid, sig)
			deadline = time.Now().Add(10 * time.Second)
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = os.Remove(c.pidPath(name))
	return nil
}

// Down stops every process, the last started first: the API replicas
// before the workers, the workers (which hand their jobs back) before
// Temporal.
func (c *Cluster) Down(grace time.Duration) error {
	ps := c.Processes()
	slices.Reverse(ps)
	var errs []error
	for _, p := range ps {
		errs = append(errs, c.Stop(p.Name, grace))
	}
	return errors.Join(errs...)
}

// Running says whether process name runs.
func (c *Cluster) Running(name string) bool {
	pid, err := c.pid(name)
	return err == nil && pid != 0 && c.alive(name, pid)
}

// alive says whether pid still runs; a child of this process is reaped
// by Start's goroutine, any other is init's.
func (c *Cluster) alive(name string, pid int) bool {
	c.mu.Lock()
	r := c.running[name]
	c.mu.Unlock()
	if r != nil && r.cmd.Process.Pid == pid {
		select {
		case <-r.done:
			return false
		default:
			return true
		}
	}
	return syscall.Kill(pid, 0) == nil
}

// pid is process name's pid from its pid file, 0 when it has none or the
// pid is no longer one of the topology's programs.
func (c *Cluster) pid(name string) (int, error) {
	b, err := os.ReadFile(c.pidPath(name))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("pid file of %s: %w", name, err)
	}
	p, err := c.Process(name)
	if err != nil {
		return 0, err
	}
	// A rebuilt program's old process shows the path as deleted.
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil || filepath.Base(strings.TrimSuffix(exe, " (deleted)")) != p.Program {
		// Gone, or a reused pid: not ours to signal.
		return 0, nil
	}
	return pid, nil
}

// LogTail is the last n lines process name wrote.
func (c *Cluster) LogTail(name string, n int) string {
	b, _ := os.ReadFile(c.logPath(name))
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func (c *Cluster) logDir() string             { return filepath.Join(c.Dir, "logs") }
func (c *Cluster) runDir() string             { return filepath.Join(c.Dir, "run") }
func (c *Cluster) logPath(name string) string { return filepath.Join(c.logDir(), name+".log") }
func (c *Cluster) pidPath(name string) string { return filepath.Join(c.runDir(), name+".pid") }

// quiet drops the SDK's log lines of the health checks.
type quiet struct{}

func (quiet) Debug(string, ...any) {}
func (quiet) Info(string, ...any)  {}
func (quiet) Warn(string, ...any)  {}
func (quiet) Error(string, ...any) {}
