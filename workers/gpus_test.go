package workers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/trainer/command"
)

func TestParseNvidiaSMI(t *testing.T) {
	for _, tc := range []struct {
		name, out string
		want      []GPU
		err       string
	}{
		{name: "one", out: "NVIDIA A100-SXM4-40GB, 40960\n", want: []GPU{{"NVIDIA A100-SXM4-40GB", 40960}}},
		{name: "several, blank lines, CRLF", out: "\nNVIDIA H100 80GB HBM3, 81559\r\nNVIDIA A100-SXM4-80GB, 81920\r\n\n",
			want: []GPU{{"NVIDIA H100 80GB HBM3", 81559}, {"NVIDIA A100-SXM4-80GB", 81920}}},
		{name: "comma in name", out: "Odd, Card, 24576", want: []GPU{{"Odd, Card", 24576}}},
		{name: "empty", out: "\n", err: "no GPUs listed"},
		{name: "not CSV", out: "No devices were found", err: `line 1 ("No devices were found")`},
		{name: "memory not a number", out: "NVIDIA A100-SXM4-40GB, [N/A]", err: "memory in MiB"},
		{name: "memory with unit", out: "NVIDIA A100-SXM4-40GB, 40960 MiB", err: "memory in MiB"},
		{name: "no name", out: ", 40960", err: "line 1"},
		{name: "bad second line", out: "NVIDIA A10, 23028\nNVIDIA A10, -1", err: "line 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseNvidiaSMI(tc.out)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, %v; want an error mentioning %q", got, err, tc.err)
				}
				return
			}
			if err != nil || fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

var (
	pool40  = db.Hardware{ID: "gpu-a100-40gb", Name: "NVIDIA A100 40GB", GPUMemoryGB: 40, GPUCount: 1}
	pool80  = db.Hardware{ID: "gpu-a100-80gb", Name: "NVIDIA A100 80GB", GPUMemoryGB: 80, GPUCount: 1}
	pool80x = db.Hardware{ID: "gpu-a100-80gb-x4", Name: "NVIDIA A100 80GB x4", GPUMemoryGB: 80, GPUCount: 4}

	a100_40 = GPU{"NVIDIA A100-SXM4-40GB", 40960}
	a100_80 = GPU{"NVIDIA A100-SXM4-80GB", 81920}
	h100    = GPU{"NVIDIA H100 80GB HBM3", 81559}
	rtx4090 = GPU{"NVIDIA GeForce RTX 4090", 24564}
)

func TestCheckPool(t *testing.T) {
	for _, tc := range []struct {
		name  string
		gpus  []GPU
		hw    db.Hardware
		slots int
		err   []string // what a refusal must mention; none: accepted
	}{
		{name: "A100 40GB in the 40gb pool", gpus: []GPU{a100_40}, hw: pool40, slots: 1},
		{name: "A100 80GB in the 80gb pool", gpus: []GPU{a100_80}, hw: pool80, slots: 1},
		{name: "H100 in the 80gb pool", gpus: []GPU{h100}, hw: pool80, slots: 1},
		{name: "bigger card in a smaller pool", gpus: []GPU{h100}, hw: pool40, slots: 1},
		{name: "spare GPUs", gpus: []GPU{a100_40, a100_40}, hw: pool40, slots: 1},
		{name: "two slots on two GPUs", gpus: []GPU{h100, h100}, hw: pool80, slots: 2},
		{name: "x4 pool on four GPUs", gpus: []GPU{a100_80, a100_80, a100_80, a100_80}, hw: pool80x, slots: 1},
		{name: "24 GB card in the 40gb pool", gpus: []GPU{rtx4090}, hw: pool40, slots: 1,
			err: []string{"gpu-a100-40gb", "at least 40 GB", "NVIDIA GeForce RTX 4090 (24564 MiB, 25.8 GB)", "1 of this host's GPUs have less"}},
		{name: "40 GB card in the 80gb pool", gpus: []GPU{a100_40}, hw: pool80, slots: 1,
			err: []string{"at least 80 GB", "40960 MiB, 42.9 GB"}},
		{name: "one small card among big ones", gpus: []GPU{h100, rtx4090}, hw: pool80, slots: 1,
			err: []string{"1 of this host's GPUs have less", "found 2 GPU(s)"}},
		{name: "too few GPUs for the x4 pool", gpus: []GPU{a100_80, a100_80}, hw: pool80x, slots: 1,
			err: []string{"gpu-a100-80gb-x4", "needs 4 GPU(s) (1 slot(s) × 4)", "found 2 GPU(s)"}},
		{name: "too few GPUs for two slots", gpus: []GPU{h100}, hw: pool80, slots: 2,
			err: []string{"needs 2 GPU(s) (2 slot(s) × 1)", "found 1 GPU(s)"}},
		{name: "no GPUs", gpus: nil, hw: pool40, slots: 1, err: []string{"found no NVIDIA GPUs"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckPool(tc.gpus, tc.hw, tc.slots)
			if len(tc.err) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrPoolUnfit) {
				t.Fatalf("got %v, want ErrPoolUnfit", err)
			}
			for _, s := range tc.err {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("%q does not mention %q", err, s)
				}
			}
		})
	}
}

// FakeNvidiaSMI puts an nvidia-smi that runs script (sh) alone on PATH and
// returns the file its arguments are written to. Exported for the
// workers_test package.
func FakeNvidiaSMI(t *testing.T, script string) string {
	t.Helper()
	dir := t.TempDir()
	args := filepath.Join(dir, "args")
	body := "#!/bin/sh\necho \"$*\" > " + args + "\n" + script + "\n"
	if err := os.WriteFile(filepath.Join(dir, "nvidia-smi"), []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	return args
}

func TestDetectGPUs(t *testing.T) {
	ctx := context.Background()
	t.Run("lists GPUs", func(t *testing.T) {
		args := FakeNvidiaSMI(t, `printf 'NVIDIA H100 80GB HBM3, 81559\nNVIDIA H100 80GB HBM3, 81559\n'`)
		gpus, err := DetectGPUs(ctx)
		if err != nil || fmt.Sprint(gpus) != fmt.Sprint([]GPU{h100, h100}) {
			t.Fatalf("got %v, %v", gpus, err)
		}
		if b, _ := os.ReadFile(args); strings.TrimSpace(string(b)) != "--query-gpu=name,memory.total --format=csv,noheader,nounits" {
			t.Errorf("nvidia-smi ran with %q", b)
		}
	})
	t.Run("no nvidia-smi", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir())
		if gpus, err := DetectGPUs(ctx); gpus != nil || err != nil {
			t.Fatalf("got %v, %v; want nil, nil", gpus, err)
		}
	})
	t.Run("nvidia-smi fails", func(t *testing.T) {
		FakeNvidiaSMI(t, `echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."; exit 9`)
		if _, err := DetectGPUs(ctx); err == nil || !strings.Contains(err.Error(), "couldn't communicate with the NVIDIA driver") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("nvidia-smi hangs", func(t *testing.T) {
		FakeNvidiaSMI(t, `exec sleep 30`)
		t.Setenv("PATH", os.Getenv("PATH")+":/bin:/usr/bin") // for sleep
		old := nvidiaSMITimeout
		nvidiaSMITimeout = 200 * time.Millisecond
		t.Cleanup(func() { nvidiaSMITimeout = old })
		start := time.Now()
		if _, err := DetectGPUs(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("DetectGPUs took %s", d)
		}
	})
}

// TestCheckGPUsWithoutNvidiaSMI: a host without nvidia-smi (a CPU-only
// development machine) passes with a warning.
func TestCheckGPUsWithoutNvidiaSMI(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	if gpus, err := checkGPUs(context.Background(), Training{ID: "test/cpu", Slots: 1}, pool40, log); err != nil || gpus != nil {
		t.Fatal(gpus, err)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "GPU memory cannot be checked") {
		t.Errorf("no warning:\n%s", logs.String())
	}
}

// TestFitRunner: an attempt runs one process per GPU of the pool unless
// the worker chose one; each slot's trainer gets GPUs of its own, by the
// IDs the worker's CUDA_VISIBLE_DEVICES gives them.
func TestFitRunner(t *testing.T) {
	four := []GPU{a100_80, a100_80, a100_80, a100_80}
	for _, tc := range []struct {
		name      string
		worldSize int // the runner's before
		hw        db.Hardware
		slots     int
		gpus      []GPU
		visible   string
		want      int        // the runner's world size after
		slotGPUs  [][]string // nil: not pinned
		err       string
	}{
		{name: "one GPU, CPU host", hw: pool40, slots: 2, want: 1},
		{name: "x4 pool, CPU host", hw: pool80x, slots: 1, want: 4},
		{name: "x4 pool, version-1 trainer", worldSize: 1, hw: pool80x, slots: 1, gpus: four, want: 1,
			slotGPUs: [][]string{{"0", "1", "2", "3"}}},
		{name: "two slots of one GPU", hw: pool80, slots: 2, gpus: []GPU{h100, h100}, want: 1, slotGPUs: [][]string{{"0"}, {"1"}}},
		{name: "x4 pool by CUDA_VISIBLE_DEVICES", hw: pool80x, slots: 1, gpus: append(four, four...), visible: "4,5,6,7",
			want: 4, slotGPUs: [][]string{{"4", "5", "6", "7"}}},
		{name: "CUDA_VISIBLE_DEVICES too short", hw: pool80x, slots: 1, gpus: four, visible: "GPU-a,GPU-b",
			err: "needs 4 GPU(s) (1 slot(s) × 4), but CUDA_VISIBLE_DEVICES=GPU-a,GPU-b shows 2"},
		{name: "world size neither 1 nor the pool's", worldSize: 2, hw: pool80x, slots: 1,
			err: "TUNEFORGE_TRAINER_WORLD_SIZE is 2, but an attempt on pool gpu-a100-80gb-x4 has 4 GPU(s): it must be 1 or 4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &command.Runner{WorldSize: tc.worldSize}
			err := fitRunner(r, tc.hw, tc.slots, tc.gpus, tc.visible)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want an error saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.WorldSize != tc.want || fmt.Sprint(r.SlotGPUs) != fmt.Sprint(tc.slotGPUs) {
				t.Errorf("world size %d, slot GPUs %v; want %d, %v", r.WorldSize, r.SlotGPUs, tc.want, tc.slotGPUs)
			}
		})
	}
}
