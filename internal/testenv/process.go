package testenv

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/internal/freeport"
)

// For tests that run tuneforge's own binary.

// BuildBinary builds the production tuneforge binary (-tags nodev) into
// the test's temporary directory.
func BuildBinary(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tuneforge")
	out, err := exec.Command("go", "build", "-tags", "nodev", "-o", bin, "github.com/tuneforge/tuneforge/cmd/tuneforge").CombinedOutput()
	if err != nil {
		t.Fatalf("build tuneforge: %v\n%s", err, out)
	}
	return bin
}

// FreeAddr is a 127.0.0.1 address with a port nothing listens on now
// (freeport.Pick: below the ephemeral range, so another test's outgoing
// connection cannot take it before the process under test listens).
func FreeAddr(t testing.TB) string {
	t.Helper()
	port, err := freeport.Pick()
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// WaitOK waits until url answers 200, failing the test after timeout.
func WaitOK(t testing.TB, url string, timeout time.Duration) {
	t.Helper()
	if err := waitOK(url, timeout); err != nil {
		t.Fatal(err)
	}
}

// WaitOK waits until the process's url answers 200, failing the test with
// the process's output after timeout.
func (p *Process) WaitOK(url string, timeout time.Duration) {
	p.t.Helper()
	if err := waitOK(url, timeout); err != nil {
		p.t.Fatalf("%v; the process's output:\n%s", err, p.Logs())
	}
}

func waitOK(url string, timeout time.Duration) error {
	var last string
	for deadline := time.Now().Add(timeout); ; time.Sleep(100 * time.Millisecond) {
		r, err := http.Get(url)
		if err == nil {
			r.Body.Close()
			if r.StatusCode == http.StatusOK {
				return nil
			}
			last = r.Status
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer 200 within %s (last: %s)", url, timeout, last)
		}
	}
}

// Process is one of tuneforge's processes run from its binary, which a
// test may kill and start again; it is killed when the test ends.
type Process struct {
	t    testing.TB
	bin  string
	args []string
	env  []string
	mu   sync.Mutex
	cmd  *exec.Cmd
	logs lockedBuffer
}

// StartProcess runs bin with args, in this process's environment with
// environ added.
func StartProcess(t testing.TB, bin string, environ []string, args ...string) *Process {
	t.Helper()
	p := &Process{t: t, bin: bin, args: args, env: append(os.Environ(), environ...)}
	p.Start()
	t.Cleanup(p.Kill)
	return p
}

// Start starts the process (again).
func (p *Process) Start() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cmd = exec.Command(p.bin, p.args...)
	p.cmd.Env = p.env
	p.cmd.Stdout, p.cmd.Stderr = &p.logs, &p.logs
	// Wait would otherwise wait on any child still holding the output.
	p.cmd.WaitDelay = 5 * time.Second
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
}

// Kill sends SIGKILL, so the process gets no chance to tidy up, and waits
// for it to exit.
func (p *Process) Kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		_ = p.cmd.Wait()
	}
}

// Stop sends sig and waits for the process to exit; it returns the exit
// code, -1 when a signal ended the process.
func (p *Process) Stop(sig os.Signal) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	_ = p.cmd.Process.Signal(sig)
	_ = p.cmd.Wait()
	return p.cmd.ProcessState.ExitCode()
}

// Logs is what the process has written to stdout and stderr, in all its runs.
func (p *Process) Logs() string { return p.logs.String() }

// lockedBuffer is a process's output, written by exec's copier while a
// failing test may read it.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(b)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
