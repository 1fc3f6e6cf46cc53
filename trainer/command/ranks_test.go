//go:build linux

package command

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// shRunner runs script with sh as every process of a world of n.
func shRunner(n int, script string) *Runner {
	return &Runner{Argv: []string{"/bin/sh", "-c", script}, Grace: 5 * time.Second, WorldSize: n}
}

// describeRank makes each process report, on stderr, what it was given.
const describeRank = `echo "rank=$RANK local=$LOCAL_RANK world=$WORLD_SIZE master=$MASTER_ADDR:$MASTER_PORT ` +
	`gpus=$CUDA_VISIBLE_DEVICES pgid=$(cut -d' ' -f5 /proc/$$/stat)" >&2
`

// TestRunStartsAProcessPerRank: a world of 2 is two processes of the
// command in one process group, with torchrun's variables and the slot's
// GPUs; config.json says the world size, and rank 1's messages are log
// lines.
func TestRunStartsAProcessPerRank(t *testing.T) {
	j := newJob(t, 1, 1)
	r := shRunner(2, describeRank+`
grep -q '"worldSize": 2' "$TUNEFORGE_TRAINER_CONFIG" || exit 9
if [ "$RANK" = 0 ]; then
	mkdir -p output/adapter
	echo '{"type":"progress","step":1,"epoch":1,"loss":1}'
	sleep 0.2
	echo '{"type":"result","step":1,"trainingLoss":1,"tokens":1,"outputPath":"output/adapter"}'
else
	echo '{"type":"progress","step":7,"epoch":1,"loss":9,"rank":1}'
fi`)
	r.SlotGPUs = [][]string{{"3", "5"}}
	rec := &recorder{}
	res, err := r.Run(context.Background(), j.dir, j.cfg, rec)
	if err != nil {
		t.Fatal(err, rec.logs)
	}
	if res.Step != 1 || len(rec.progress) != 1 || rec.progress[0].Step != 1 {
		t.Errorf("result %+v, progress %+v; want rank 0's alone", res, rec.progress)
	}
	if !rec.logged(`info: {"type":"progress","step":7,"epoch":1,"loss":9,"rank":1}`) {
		t.Errorf("rank 1's message is not a log line: %q", rec.logs)
	}
	line := regexp.MustCompile(`rank=(\d) local=(\d) world=2 master=127\.0\.0\.1:(\d+) gpus=3,5 pgid=(\d+)`)
	var ports, groups []string
	for _, l := range rec.logs {
		if m := line.FindStringSubmatch(l); m != nil && m[1] == m[2] {
			ports, groups = append(ports, m[3]), append(groups, m[4])
		}
	}
	if len(ports) != 2 || ports[0] != ports[1] || groups[0] != groups[1] {
		t.Errorf("want two ranks with one master port and one process group: %q", rec.logs)
	}
}

// TestRunRankFailure: when one rank fails, the others are killed (their
// collective operations would wait for ever) and the failed rank's exit
// classifies the attempt: exit 3 is out of memory, not a crash.
func TestRunRankFailure(t *testing.T) {
	j := newJob(t, 1, 1)
	r := shRunner(2, describeRank+`
if [ "$RANK" = 1 ]; then echo "CUDA out of memory" >&2; exit 3; fi
echo $$ > rank0.pid
exec sleep 300`)
	start := time.Now()
	_, err := r.Run(context.Background(), j.dir, j.cfg, &recorder{})
	var ce *Error
	if !errors.As(err, &ce) || ce.Kind != KindOutOfMemory || !strings.Contains(ce.Message, "rank 1 (of 2 processes) ran out of GPU memory") {
		t.Fatalf("got %v, want rank 1's out of memory", err)
	}
	if d := time.Since(start); d > peerExitWait+10*time.Second {
		t.Errorf("Run took %s", d)
	}
	assertGone(t, filepath.Join(j.dir, "rank0.pid"))
}

// TestRunStopsEveryRank: a stop sends SIGTERM to every rank, which may
// save a checkpoint (here: a file) before it exits.
func TestRunStopsEveryRank(t *testing.T) {
	j := newJob(t, 1, 1)
	r := shRunner(2, describeRank+`
trap 'touch stopped.$RANK; exit 143' TERM
# Rank 0 reports (and so draws the stop) once rank 1 has its trap.
if [ "$RANK" = 1 ]; then touch ready.1; else
  while [ ! -e ready.1 ]; do sleep 0.01; done
  echo '{"type":"progress","step":1,"epoch":1,"loss":1}'
fi
while :; do sleep 0.05; done`)
	ctx, cancel := context.WithCancel(context.Background())
	rec := &recorder{onProgress: func(Progress) { cancel() }}
	if _, err := r.Run(ctx, j.dir, j.cfg, rec); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want the cancellation", err)
	}
	for _, f := range []string{"stopped.0", "stopped.1"} {
		if _, err := os.Stat(filepath.Join(j.dir, f)); err != nil {
			t.Errorf("a rank did not act on SIGTERM: %v", err)
		}
	}
}

// TestRunRankStuckAfterRankZero: a rank still running peerExitWait after
// rank 0 exited 0 with its result (stuck in its teardown, say) is killed,
// and the attempt ends with rank 0's result.
func TestRunRankStuckAfterRankZero(t *testing.T) {
	j := newJob(t, 1, 1)
	r := shRunner(2, `if [ "$RANK" = 1 ]; then echo $$ > rank1.pid; exec sleep 300; fi
while [ ! -e rank1.pid ]; do sleep 0.01; done
mkdir -p checkpoints/step-1 output/adapter
echo '{"type":"progress","step":1,"epoch":1,"loss":1}'
echo '{"type":"checkpoint","step":1,"path":"checkpoints/step-1"}'
echo '{"type":"result","outputPath":"output/adapter","step":1,"trainingLoss":1}'`)
	start := time.Now()
	rec := &recorder{}
	res, err := r.Run(context.Background(), j.dir, j.cfg, rec)
	if err != nil || res.Step != 1 {
		t.Fatalf("got %+v, %v; want rank 0's result", res, err)
	}
	if d := time.Since(start); d > peerExitWait+10*time.Second {
		t.Errorf("Run took %s", d)
	}
	if !strings.Contains(strings.Join(rec.logs, "\n"), "1 of the trainer's processes had not exited 5s after rank 0 finished; they were killed") {
		t.Errorf("no warning of the killed rank: %q", rec.logs)
	}
	assertGone(t, filepath.Join(j.dir, "rank1.pid"))
}

// assertGone fails unless the process whose pid the file holds is gone.
func assertGone(t *testing.T, pidFile string) {
	t.Helper()
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("process %d outlived the attempt (kill: %v)", pid, err)
	}
}
