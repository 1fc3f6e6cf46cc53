package workers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/trainer/command"
)

// GPU is one NVIDIA GPU as nvidia-smi reports it.
type GPU struct {
	Name      string
	MemoryMiB int
}

// GB is the GPU's memory in decimal gigabytes, the unit of the hardware
// catalog: an "80GB" card reports 81920 MiB, about 85.9 GB.
func (g GPU) GB() float64 { return float64(g.MemoryMiB) * 1.048576 / 1000 }

// String names the GPU with its memory in both units, for logs and errors.
func (g GPU) String() string { return fmt.Sprintf("%s (%d MiB, %.1f GB)", g.Name, g.MemoryMiB, g.GB()) }

// ErrPoolUnfit is wrapped by CheckPool's refusals, so a caller that serves
// several pools can skip the one this host cannot serve.
var ErrPoolUnfit = errors.New("this host's GPUs do not fit the hardware pool")

// nvidiaSMITimeout bounds nvidia-smi, which can hang when a driver is wedged.
var nvidiaSMITimeout = 30 * time.Second

// DetectGPUs lists the NVIDIA GPUs that nvidia-smi sees: all of the host's,
// or in a container those given to it. Without nvidia-smi on PATH it
// returns nil and no error: no NVIDIA GPU is visible. An nvidia-smi that
// fails (no driver loaded, no devices) is an error, since a host that ships
// it is meant to have GPUs.
func DetectGPUs(ctx context.Context) ([]GPU, error) {
	path, err := exec.LookPath("nvidia-smi")
	if errors.Is(err, exec.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("find nvidia-smi: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, nvidiaSMITimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits")
	// A child that keeps the output pipes open must not outlive the timeout.
	cmd.WaitDelay = time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("nvidia-smi did not answer within %s: %w", nvidiaSMITimeout, ctx.Err())
		}
		// nvidia-smi writes its reasons (no driver, no devices) to stdout.
		msg := strings.TrimSpace(stdout.String() + "\n" + stderr.String())
		return nil, fmt.Errorf("nvidia-smi failed (%s): %w", msg, err)
	}
	gpus, err := parseNvidiaSMI(stdout.String())
	if err != nil {
		return nil, fmt.Errorf("nvidia-smi: %w", err)
	}
	return gpus, nil
}

// checkGPUs logs the GPUs the worker's trainers will see, refuses a pool
// they cannot serve (an error wrapping ErrPoolUnfit) and returns them. A
// host without nvidia-smi passes with a warning, so a CPU-only development
// machine can still run a command trainer on a tiny model.
func checkGPUs(ctx context.Context, t Training, hw db.Hardware, log *slog.Logger) ([]GPU, error) {
	gpus, err := DetectGPUs(ctx)
	if err != nil {
		return nil, fmt.Errorf("training worker %s: detect GPUs: %w", t.ID, err)
	}
	if gpus == nil {
		log.Warn("nvidia-smi not found: no NVIDIA GPU is visible, so GPU memory cannot be checked against the pool",
			"worker", t.ID, "hardware", hw.ID, "poolGpuMemoryGB", hw.GPUMemoryGB, "poolGpuCount", hw.GPUCount)
		return nil, nil
	}
	for i, g := range gpus {
		log.Info("GPU", "worker", t.ID, "index", i, "name", g.Name, "memoryMiB", g.MemoryMiB, "memoryGB", fmt.Sprintf("%.1f", g.GB()))
	}
	if err := CheckPool(gpus, hw, t.Slots); err != nil {
		return nil, fmt.Errorf("training worker %s: %w", t.ID, err)
	}
	return gpus, nil
}

// fitRunner fits the command trainer's runner to the pool: an attempt runs
// one process per GPU of the pool (r.WorldSize, unless
// TUNEFORGE_TRAINER_WORLD_SIZE chose 1 for a trainer of one process), and
// each of the slots gets GPUs of its own, so that jobs side by side never
// share one. The GPUs are gpus (none: not pinned, as on a host without
// nvidia-smi) by the IDs the worker's CUDA_VISIBLE_DEVICES (visible)
// gives them, their indices without it.
func fitRunner(r *command.Runner, hw db.Hardware, slots int, gpus []GPU, visible string) error {
	n := max(1, int(hw.GPUCount))
	switch r.WorldSize {
	case 0:
		r.WorldSize = n
	case 1, n:
	default:
		return fmt.Errorf("TUNEFORGE_TRAINER_WORLD_SIZE is %d, but an attempt on pool %s has %d GPU(s): it must be 1 or %d",
			r.WorldSize, hw.ID, n, n)
	}
	if len(gpus) == 0 {
		return nil
	}
	ids := make([]string, len(gpus))
	for i := range ids {
		ids[i] = strconv.Itoa(i)
	}
	if visible != "" {
		ids = strings.Split(visible, ",")
	}
	if len(ids) < slots*n {
		return fmt.Errorf("%w: pool %s needs %d GPU(s) (%d slot(s) × %d), but CUDA_VISIBLE_DEVICES=%s shows %d",
			ErrPoolUnfit, hw.ID, slots*n, slots, n, visible, len(ids))
	}
	r.SlotGPUs = make([][]string, slots)
	for i := range slots {
		r.SlotGPUs[i] = ids[i*n : (i+1)*n]
	}
	return nil
}

// parseNvidiaSMI reads `nvidia-smi --query-gpu=name,memory.total
// --format=csv,noheader,nounits`: one "name, MiB" line per GPU.
func parseNvidiaSMI(out string) ([]GPU, error) {
	var gpus []GPU
	for i, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		// The memory is the last field; split there in case a name has a comma.
		comma := strings.LastIndex(line, ",")
		if comma < 0 {
			return nil, fmt.Errorf("line %d (%q) is not \"name, memory\"", i+1, line)
		}
		name, mem := strings.TrimSpace(line[:comma]), strings.TrimSpace(line[comma+1:])
		mib, err := strconv.Atoi(mem)
		if err != nil || mib <= 0 || name == "" {
			return nil, fmt.Errorf("line %d (%q): want a GPU name and its memory in MiB", i+1, line)
		}
		gpus = append(gpus, GPU{Name: name, MemoryMiB: mib})
	}
	if len(gpus) == 0 {
		return nil, errors.New("no GPUs listed")
	}
	return gpus, nil
}

// CheckPool refuses a pool the GPUs cannot serve: each of the worker's
// slots runs a trainer on the pool's GPU count (fitRunner pins them), so
// every GPU needs the pool's per-GPU memory and there must be slots × GPU
// count of them. The error
// wraps ErrPoolUnfit and says what was found and what the pool needs.
func CheckPool(gpus []GPU, hw db.Hardware, slots int) error {
	need := slots * int(hw.GPUCount)
	needs := fmt.Sprintf("pool %s (%s) needs %d GPU(s) (%d slot(s) × %d) with at least %d GB each",
		hw.ID, hw.Name, need, slots, hw.GPUCount, hw.GPUMemoryGB)
	found := make([]string, len(gpus))
	small := 0
	for i, g := range gpus {
		found[i] = g.String()
		// Exact integer comparison: MiB are 1,048,576 bytes, catalog GB 10^9.
		if int64(g.MemoryMiB)*1_048_576 < int64(hw.GPUMemoryGB)*1_000_000_000 {
			small++
		}
	}
	have := "no NVIDIA GPUs"
	if len(gpus) > 0 {
		have = fmt.Sprintf("%d GPU(s): %s", len(gpus), strings.Join(found, ", "))
	}
	switch {
	case small > 0:
		return fmt.Errorf("%w: %s, but %d of this host's GPUs have less; found %s", ErrPoolUnfit, needs, small, have)
	case len(gpus) < need:
		return fmt.Errorf("%w: %s; found %s", ErrPoolUnfit, needs, have)
	}
	return nil
}
