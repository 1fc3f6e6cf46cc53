package command

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tuneforge/tuneforge/trainer/hang"
)

// Limits on what a trainer's output may cost. Beyond them lines are cut
// or dropped, never buffered: a runaway trainer cannot exhaust the
// worker's memory or flood the job log.
const (
	// MaxLineBytes cuts longer lines.
	MaxLineBytes = 64 << 10
	// DefaultLogRate is the log lines a second an attempt may write when
	// Runner.LogRate is unset; the token bucket holds ten seconds' worth.
	DefaultLogRate = 20
	// stderrTail lines of stderr, and as many of all the output that goes
	// to the job's log, are kept to explain a failure.
	stderrTail = 20
	// groupGoneWait bounds the wait for a killed process group to vanish.
	groupGoneWait = 10 * time.Second
	// peerExitWait is how long the other processes of a multi-process
	// trainer have to exit after one failed, before they are killed: a
	// peer's collective operations would wait on the failed one for ever.
	peerExitWait = 5 * time.Second
)

// Kind classifies how an attempt failed.
type Kind int

// The kinds of failure, as the protocol's exit codes define them.
const (
	// KindCrash: any other exit or an unexpected signal; retry from the
	// latest checkpoint.
	KindCrash Kind = iota
	// KindInvalid: exit 2, the data or configuration cannot be trained.
	KindInvalid
	// KindOutOfMemory: exit 3, out of GPU memory.
	KindOutOfMemory
	// KindProtocol: the trainer broke the protocol (exit 0 without a
	// result, a path outside its directories, a result with no checkpoint).
	KindProtocol
	// KindHang: the trainer showed no sign of life for longer than its
	// limit (see package hang) and was killed; retry from the latest
	// checkpoint.
	KindHang
)

// Retryable says whether another attempt may succeed.
func (k Kind) Retryable() bool { return k == KindCrash || k == KindHang }

// Error is a failed attempt.
type Error struct {
	Kind Kind
	// ExitCode is the process's exit code, -1 when a signal killed it.
	ExitCode int
	// Message is meant for users: what failed and, where known, why.
	Message string
	// Stall says how a KindHang trainer hung; Output is what it wrote
	// last, the lines meant for the job's log (oldest first, cleaned).
	Stall  *hang.Stall
	Output []string
}

func (e *Error) Error() string { return e.Message }

// Handler records what a trainer reports. Its methods are called one at a
// time, in the order of the trainer's output; while one runs the trainer's
// output waits, so Checkpoint can upload a directory before the trainer
// moves on. An error from a method stops the attempt and is returned by Run.
// The messages Log is given are valid UTF-8 without NUL (see Clean).
type Handler interface {
	Progress(Progress) error
	Eval(Eval) error
	Evaluating(EvalProgress) error
	Checkpoint(Checkpoint) error
	Log(level, message string) error
}

// Runner starts trainer processes.
type Runner struct {
	// Argv is the command line, split (see Split). Relative paths in it
	// that name files from the worker's directory are made absolute, since
	// the trainer runs in its attempt's directory.
	Argv []string
	// Grace is how long a trainer has between SIGTERM and SIGKILL.
	Grace time.Duration
	// LogRate bounds the log lines a second an attempt records (0:
	// DefaultLogRate), with bursts of ten seconds' worth; more are dropped
	// and counted in the log.
	LogRate float64
	// Hang bounds how long a trainer may show no sign of life before it
	// is killed as hung (zero: hang.Default).
	Hang hang.Limits
	// WorldSize is how many processes train an attempt (config.json's
	// worldSize), one per GPU of the worker's slot: a training worker sets
	// it to its pool's GPU count (see workers.RunTraining). 0 counts as 1.
	// With more than one, Run starts the command that many times, as
	// torchrun would (see startRanks).
	WorldSize int
	// SlotGPUs are the GPUs (CUDA device IDs) of each of the worker's
	// slots. An attempt takes a free slot's and its trainer sees only
	// those (CUDA_VISIBLE_DEVICES), so that jobs running side by side
	// never share a GPU. Empty: the trainer sees what the worker sees.
	SlotGPUs [][]string

	mu       sync.Mutex
	slotBusy []bool
}

// NewRunner splits cmdline and resolves its relative file paths against
// the current directory.
func NewRunner(cmdline string, grace time.Duration) (*Runner, error) {
	argv, err := Split(cmdline)
	if err != nil {
		return nil, fmt.Errorf("TUNEFORGE_TRAINER_CMD: %w", err)
	}
	for i, arg := range argv {
		if filepath.IsAbs(arg) || !strings.ContainsRune(arg, filepath.Separator) {
			continue
		}
		if _, err := os.Stat(arg); err == nil {
			if argv[i], err = filepath.Abs(arg); err != nil {
				return nil, err
			}
		}
	}
	if _, err := exec.LookPath(argv[0]); err != nil {
		return nil, fmt.Errorf("TUNEFORGE_TRAINER_CMD: %w", err)
	}
	return &Runner{Argv: argv, Grace: grace}, nil
}

// String is the command line, for logs.
func (r *Runner) String() string { return strings.Join(r.Argv, " ") }

// event is one line of the trainer's output.
type event struct {
	line   string
	stderr bool
	cut    bool // the line was longer than MaxLineBytes
}

// Run trains one attempt in dir, which must exist: it writes cfg to
// dir/config.json (its worldSize set from the Runner), creates the
// checkpoint and output directories, starts the trainer's processes in a
// process group of their own, with an allow-listed environment
// (trainerEnv) and a free slot's GPUs, and feeds their messages to h until
// they exit. When one of several processes fails, the others are killed
// after peerExitWait, and the failed one's exit decides the attempt; so are
// those still running peerExitWait after rank 0 exited 0, which then
// decides (a process stuck in its teardown must not hold a finished
// attempt). When
// ctx ends it sends SIGTERM, then SIGKILL after the grace period, and
// returns ctx's error once no process of the group is left. A trainer that
// hangs (see Hang) is killed with its group at once: a hung process would
// not act on SIGTERM, nor should it write a checkpoint. Otherwise it returns the
// trainer's result, or an *Error that classifies the failure, or the error
// of a Handler method. The trainer's text reaches h and the error's
// message only through Clean.
func (r *Runner) Run(ctx context.Context, dir string, cfg Config, h Handler) (Result, error) {
	res, err := r.run(ctx, dir, cfg, cleanHandler{h})
	return res, cleanError(err)
}

func (r *Runner) run(ctx context.Context, dir string, cfg Config, h Handler) (Result, error) {
	for _, d := range []string{cfg.CheckpointDir, cfg.OutputDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return Result{}, fmt.Errorf("create %s: %w", d, err)
		}
	}
	cfg.WorldSize = max(1, r.WorldSize)
	cfgPath := filepath.Join(dir, "config.json")
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return Result{}, fmt.Errorf("encode config: %w", err)
	}
	if err := os.WriteFile(cfgPath, b, 0o644); err != nil {
		return Result{}, fmt.Errorf("write config: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	gpus, release, err := r.takeSlot()
	if err != nil {
		return Result{}, err
	}
	// Run returns once no process of the attempt is left.
	defer release()
	env := trainerEnv(os.Environ(), cfgPath)
	if gpus != nil {
		env = setEnv(env, "CUDA_VISIBLE_DEVICES", strings.Join(gpus, ","))
	}

	outR, outW, err := os.Pipe()
	if err != nil {
		return Result{}, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return Result{}, err
	}
	procs, err := r.startRanks(dir, env, cfg.WorldSize, outW, errW)
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return Result{}, err
	}
	pgid := procs[0].Process.Pid

	events := make(chan event)
	readersDone := make(chan struct{}, 2)
	go readLines(outR, false, events, readersDone)
	go readLines(errR, true, events, readersDone)
	go func() {
		<-readersDone
		<-readersDone
		close(events)
	}()
	type rankExit struct {
		rank int
		err  error
	}
	waited := make(chan rankExit, len(procs))
	for rank, cmd := range procs {
		go func() { waited <- rankExit{rank, cmd.Wait()} }()
	}

	rate := r.LogRate
	if rate <= 0 {
		rate = DefaultLogRate
	}
	a := attempt{cfg: cfg, h: h, logs: newBucket(rate, 10*rate), rate: rate, lastCkpt: -1, watch: hang.Start(r.Hang)}
	watching := time.NewTicker(a.watch.CheckEvery())
	defer watching.Stop()
	var (
		done       = ctx.Done()
		graceTimer <-chan time.Time
		exited     bool
		running    = len(procs)
		// verdict is the rank whose exit decides the attempt: the first
		// that failed, else rank 0.
		verdict     = -1
		waitErrs    = make([]error, len(procs))
		peerTimer   <-chan time.Time
		streamsOpen = true
		drainTimer  <-chan time.Time
		// Set once a hung trainer is killed: a process stuck in the
		// kernel may outlive SIGKILL, and must not hold the attempt.
		abandonTimer <-chan time.Time
	)
	for !exited || streamsOpen {
		select {
		case ev, ok := <-events:
			if !ok {
				streamsOpen = false
				events = nil
				continue
			}
			if a.failed == nil {
				// The trainer waits on its output while the handler works.
				resume := a.watch.Pause()
				a.handle(ev)
				resume()
				if a.failed != nil && !a.cancelled {
					// Stop at once: the attempt's outcome is already decided.
					_ = syscall.Kill(-pgid, syscall.SIGKILL)
				}
			}
		case <-watching.C:
			if a.failed != nil || a.cancelled || exited {
				continue
			}
			if s, hung := a.watch.Check(); hung {
				a.failed = &Error{Kind: KindHang, ExitCode: -1, Message: s.String() + "; it was killed with its process group",
					Stall: &s, Output: slices.Clone(a.output)}
				_ = syscall.Kill(-pgid, syscall.SIGKILL)
				abandonTimer = time.After(groupGoneWait)
			}
		case <-abandonTimer:
			abandonTimer = nil
			if !exited {
				exited, waited = true, nil
				outR.Close()
				errR.Close()
			}
		case <-done:
			done = nil
			a.cancelled = true
			_ = syscall.Kill(-pgid, syscall.SIGTERM)
			graceTimer = time.After(r.Grace)
		case <-graceTimer:
			graceTimer = nil
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
		case ex := <-waited:
			running--
			waitErrs[ex.rank] = ex.err
			ps := procs[ex.rank].ProcessState
			switch {
			case verdict >= 0:
			case ps == nil || ps.ExitCode() != 0:
				verdict = ex.rank
				if running > 0 {
					peerTimer = time.After(peerExitWait)
				}
			case ex.rank == 0 && running > 0:
				// Rank 0 is done (its result, or the lack of one, decides),
				// however the rest end.
				verdict = 0
				peerTimer = time.After(peerExitWait)
			}
			if running > 0 {
				continue
			}
			exited, waited, peerTimer = true, nil, nil
			if verdict < 0 {
				verdict = 0
			}
			// Whatever the trainer left running in its group dies with it,
			// and closes the pipes it may hold.
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			waitGroupGone(pgid, groupGoneWait)
			drainTimer = time.After(time.Second)
		case <-peerTimer:
			peerTimer = nil
			if verdict == 0 {
				a.log(LevelWarn, fmt.Sprintf("%d of the trainer's processes had not exited %s after rank 0 finished; they were killed", running, peerExitWait))
			}
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
		case <-drainTimer:
			// A process that left the group still holds the pipes; what it
			// writes no longer belongs to this attempt.
			outR.Close()
			errR.Close()
			drainTimer = nil
		}
	}
	outR.Close()
	errR.Close()
	a.flushDropped()

	switch {
	case a.cancelled && ctx.Err() != nil:
		return Result{}, ctx.Err()
	case a.failed != nil:
		return Result{}, a.failed
	}
	who := "the trainer"
	if len(procs) > 1 && verdict > 0 {
		who = fmt.Sprintf("the trainer's rank %d (of %d processes)", verdict, len(procs))
	}
	return a.outcome(who, procs[verdict].ProcessState, waitErrs[verdict])
}

// startRanks starts n processes of the command in dir, writing to stdout
// and stderr: the first leads a new process group and the others join it,
// so that a signal to the group reaches every rank and whatever they
// start. With n > 1 each has the environment torchrun gives its workers
// (RANK, LOCAL_RANK, WORLD_SIZE, …, and MASTER_ADDR and MASTER_PORT for
// torch.distributed's env:// rendezvous). torchrun itself is not used: it
// starts each worker in a session of its own, out of reach of a signal to
// the group, SIGKILLs them 30 s after a SIGTERM whatever the grace, and
// exits 1 whatever a worker exited with, which would turn the protocol's
// exits 2 and 3 into crashes.
func (r *Runner) startRanks(dir string, env []string, n int, stdout, stderr *os.File) ([]*exec.Cmd, error) {
	var port string
	if n > 1 {
		p, err := freePort()
		if err != nil {
			return nil, fmt.Errorf("find a port for the trainer's processes to meet on: %w", err)
		}
		port = strconv.Itoa(p)
	}
	cmds := make([]*exec.Cmd, 0, n)
	for rank := range n {
		cmd := exec.Command(r.Argv[0], r.Argv[1:]...)
		cmd.Dir, cmd.Env = dir, env
		if n > 1 {
			cmd.Env = rankEnv(env, rank, n, port)
		}
		cmd.Stdout, cmd.Stderr = stdout, stderr
		cmd.SysProcAttr = sysProcAttr()
		if rank > 0 {
			cmd.SysProcAttr.Pgid = cmds[0].Process.Pid
		}
		if err := cmd.Start(); err != nil {
			if rank > 0 {
				_ = syscall.Kill(-cmds[0].Process.Pid, syscall.SIGKILL)
				for _, c := range cmds {
					_ = c.Wait()
				}
			}
			return nil, fmt.Errorf("start trainer %s: %w", r, err)
		}
		cmds = append(cmds, cmd)
	}
	return cmds, nil
}

// rankEnv is env with torchrun's variables for rank of a single-host world.
func rankEnv(env []string, rank, world int, port string) []string {
	r, w := strconv.Itoa(rank), strconv.Itoa(world)
	out := slices.Clone(env)
	for _, kv := range [][2]string{
		{"RANK", r}, {"LOCAL_RANK", r}, {"WORLD_SIZE", w}, {"LOCAL_WORLD_SIZE", w},
		{"GROUP_RANK", "0"}, {"ROLE_RANK", r}, {"ROLE_WORLD_SIZE", w},
		{"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", port},
	} {
		out = setEnv(out, kv[0], kv[1])
	}
	return out
}

// setEnv is env with name set to value, replacing any earlier value.
func setEnv(env []string, name, value string) []string {
	out := slices.DeleteFunc(slices.Clone(env), func(kv string) bool { return strings.HasPrefix(kv, name+"=") })
	return append(out, name+"="+value)
}

// freePort is a TCP port free on the loopback interface now. Rank 0 binds
// it a moment later; should another process take it in between, the
// attempt fails as a crash and is retried.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// takeSlot takes a free slot's GPUs (nil without SlotGPUs) until release.
func (r *Runner) takeSlot() (gpus []string, release func(), err error) {
	if len(r.SlotGPUs) == 0 {
		return nil, func() {}, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.slotBusy == nil {
		r.slotBusy = make([]bool, len(r.SlotGPUs))
	}
	for i, busy := range r.slotBusy {
		if !busy {
			r.slotBusy[i] = true
			return r.SlotGPUs[i], func() {
				r.mu.Lock()
				r.slotBusy[i] = false
				r.mu.Unlock()
			}, nil
		}
	}
	// The worker runs no more attempts at once than it has slots.
	return nil, nil, fmt.Errorf("all %d GPU slots of this worker are in use", len(r.SlotGPUs))
}

// readLines sends r's lines to events, cutting long ones (before a
// character, not inside one) without buffering them whole.
func readLines(r io.Reader, stderr bool, events chan<- event, done chan<- struct{}) {
	defer func() { done <- struct{}{} }()
	br := bufio.NewReaderSize(r, MaxLineBytes)
	for {
		chunk, err := br.ReadSlice('\n')
		ev := event{line: strings.TrimRight(string(chunk), "\r\n"), stderr: stderr}
		if errors.Is(err, bufio.ErrBufferFull) {
			ev.line, ev.cut = trimPartial(ev.line), true
			// Skip the rest of the line.
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
		}
		if ev.line != "" || ev.cut {
			events <- ev
		}
		if err != nil {
			return
		}
	}
}

// attempt is the state of one run's output handling.
type attempt struct {
	cfg       Config
	h         Handler
	logs      *bucket
	dropped   int
	rate      float64 // the log lines a second it may write
	result    *Result
	lastCkpt  int      // step of the last announced checkpoint, -1 for none
	lastError string   // the last error log line
	stderr    []string // the last stderrTail stderr lines
	output    []string // the last stderrTail lines meant for the job's log, cleaned
	watch     *hang.Watch
	cancelled bool
	failed    error
}

func (a *attempt) handle(ev event) {
	line := ev.line
	if ev.cut {
		line += fmt.Sprintf(" … [line cut at %d KiB]", MaxLineBytes>>10)
	}
	if ev.stderr {
		a.stderr = append(a.stderr, truncate(line, 1024))
		if len(a.stderr) > stderrTail {
			a.stderr = a.stderr[1:]
		}
		a.log(LevelWarn, line)
		return
	}
	if ev.cut {
		a.log(LevelInfo, line)
		return
	}
	p := parseLine(line)
	var err error
	switch {
	case p.progress != nil:
		a.watch.Step(p.progress.Step)
		err = a.h.Progress(*p.progress)
	case p.eval != nil:
		a.watch.Alive()
		err = a.h.Eval(*p.eval)
	case p.evaluating != nil:
		a.watch.Alive()
		err = a.h.Evaluating(*p.evaluating)
	case p.checkpoint != nil:
		a.watch.Alive()
		err = a.checkpoint(*p.checkpoint)
	case p.log != nil:
		if p.log.level == LevelError {
			a.lastError = p.log.message
		}
		a.log(p.log.level, p.log.message)
	case p.result != nil:
		err = a.resultLine(*p.result)
	case p.malformed != "":
		a.log(LevelWarn, fmt.Sprintf("trainer protocol: %s: %s", p.malformed, truncate(line, 512)))
	default:
		a.log(LevelInfo, line)
	}
	if err != nil {
		a.failed = err
	}
}

func (a *attempt) checkpoint(c Checkpoint) error {
	path, err := a.inside(c.Path, a.cfg.CheckpointDir, "checkpoint path")
	if err != nil {
		return err
	}
	if fi, err := os.Stat(path); err != nil || !fi.IsDir() {
		return a.protocolError("checkpoint %s at step %d is not a directory", c.Path, c.Step)
	}
	c.Path = path
	if err := a.h.Checkpoint(c); err != nil {
		return err
	}
	a.lastCkpt = c.Step
	return nil
}

func (a *attempt) resultLine(res Result) error {
	path, err := a.inside(res.OutputPath, a.cfg.OutputDir, "output path")
	if err != nil {
		return err
	}
	res.OutputPath = path
	if a.cfg.Epochs.To < a.cfg.Hyperparameters.Epochs && a.lastCkpt != res.Step {
		return a.protocolError("the result at step %d has no checkpoint at that step, so epoch %d cannot resume from it; "+
			"a trainer must announce a checkpoint at the end of its last epoch", res.Step, a.cfg.Epochs.To+1)
	}
	a.result = &res
	return nil
}

// inside resolves p (relative paths against the attempt's directory, the
// trainer's working directory) and checks it lies under root.
func (a *attempt) inside(p, root, what string) (string, error) {
	if !filepath.IsAbs(p) {
		p = filepath.Join(filepath.Dir(root), p)
	}
	p = filepath.Clean(p)
	rel, err := filepath.Rel(root, p)
	if err != nil || rel == "." || !filepath.IsLocal(rel) {
		return "", a.protocolError("%s %s is not under %s", what, p, root)
	}
	return p, nil
}

func (a *attempt) protocolError(format string, args ...any) error {
	return &Error{Kind: KindProtocol, ExitCode: -1, Message: "trainer protocol violation: " + fmt.Sprintf(format, args...)}
}

// log appends a job log line within the rate limit; the output's tail
// keeps it either way.
func (a *attempt) log(level, msg string) {
	a.watch.Loading()
	a.output = append(a.output, Clean(truncate(msg, 1024)))
	if len(a.output) > stderrTail {
		a.output = a.output[1:]
	}
	if !a.logs.take() {
		a.dropped++
		return
	}
	a.flushDropped()
	if err := a.h.Log(level, msg); err != nil {
		a.failed = err
	}
}

func (a *attempt) flushDropped() {
	if a.dropped == 0 || a.failed != nil {
		return
	}
	n := a.dropped
	a.dropped = 0
	if err := a.h.Log(LevelWarn, fmt.Sprintf("%d trainer output lines were dropped (more than %g a second)", n, a.rate)); err != nil {
		a.failed = err
	}
}

// outcome classifies the exit of who, the process that decides it.
func (a *attempt) outcome(who string, ps *os.ProcessState, waitErr error) (Result, error) {
	if ps == nil {
		return Result{}, fmt.Errorf("wait for trainer: %w", waitErr)
	}
	code := ps.ExitCode()
	why := a.why()
	switch code {
	case 0:
		if a.result == nil {
			return Result{}, &Error{Kind: KindProtocol, Message: who + " exited 0 without a result line" + suffix(why)}
		}
		return *a.result, nil
	case 2:
		if why == "" {
			why = "no reason given"
		}
		return Result{}, &Error{Kind: KindInvalid, ExitCode: code, Message: who + " cannot train this job: " + why}
	case 3:
		return Result{}, &Error{Kind: KindOutOfMemory, ExitCode: code, Message: who + " ran out of GPU memory; " +
			"create the job with a smaller batchSize or on a hardware pool with more GPU memory" + suffix(why)}
	case -1:
		return Result{}, &Error{Kind: KindCrash, ExitCode: code, Message: fmt.Sprintf("%s was killed by %s", who, ps.String()) + suffix(why)}
	}
	return Result{}, &Error{Kind: KindCrash, ExitCode: code, Message: fmt.Sprintf("%s exited with code %d", who, code) + suffix(why)}
}

// why is the trainer's own explanation: its last error log line, or else
// the end of its stderr.
func (a *attempt) why() string {
	if a.lastError != "" {
		return a.lastError
	}
	if n := len(a.stderr); n > 0 {
		return strings.Join(a.stderr[max(0, n-5):], "\n")
	}
	return ""
}

func suffix(why string) string {
	if why == "" {
		return ""
	}
	return ": " + why
}

// truncate cuts s to at most n bytes, before a character, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return cut(s, n) + "…"
}

// bucket is a token bucket.
type bucket struct {
	rate, tokens, burst float64
	last                time.Time
}

func newBucket(rate, burst float64) *bucket {
	return &bucket{rate: rate, tokens: burst, burst: burst, last: time.Now()}
}

func (b *bucket) take() bool {
	now := time.Now()
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
