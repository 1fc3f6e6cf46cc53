// Command testtrainer is a trainer for the tests of tuneforge's trainer
// protocol (docs/trainer-protocol.md). It trains for real, with tuneforge's
// builtin trainer, and misbehaves on request: it crashes, ignores SIGTERM,
// leaves a child process, prints garbage, or exits with a chosen code.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tuneforge/tuneforge/dataset"
	"github.com/tuneforge/tuneforge/trainer"
	"github.com/tuneforge/tuneforge/trainer/command"
)

var (
	stepDelay         = flag.Duration("step-delay", 0, "sleep between steps, so a stop lands mid-epoch")
	crashAtStep       = flag.Int("crash-at-step", 0, "exit 1 on reaching this step")
	crashMarker       = flag.String("crash-marker", "", "crash only if this file is missing, and create it")
	ignoreSigterm     = flag.Bool("ignore-sigterm", false, "ignore SIGTERM")
	spawnChild        = flag.Bool("spawn-child", false, "start a grandchild `sleep 300` in the process group")
	garbage           = flag.Bool("garbage", false, "print garbage, a huge line and a flood of lines first")
	exitCode          = flag.Int("exit-code", -1, "exit with this code after the first step")
	noFinalCheckpoint = flag.Bool("no-final-checkpoint", false, "skip the checkpoint at the end (a protocol violation)")
	evalEvery         = flag.Int("eval-every", 0, "evaluate every N steps (0: at the end only)")
	checkpointEvery   = flag.Int("checkpoint-every", 0, "checkpoint every N steps (0: at the end only)")
)

func emit(m map[string]any) {
	b, _ := json.Marshal(m)
	os.Stdout.Write(append(b, '\n'))
}

func logf(level, format string, args ...any) {
	emit(map[string]any{"type": "log", "level": level, "message": fmt.Sprintf(format, args...)})
}

// fail reports an untrainable job: exit 2 with an error log line.
func fail(format string, args ...any) {
	logf("error", format, args...)
	os.Exit(2)
}

var errStop = errors.New("stopped by SIGTERM")

func main() {
	flag.Parse()
	var terminated atomic.Bool
	sigs := make(chan os.Signal, 1)
	if *ignoreSigterm {
		signal.Ignore(syscall.SIGTERM)
	} else {
		signal.Notify(sigs, syscall.SIGTERM)
		go func() { <-sigs; terminated.Store(true) }()
	}

	b, err := os.ReadFile(os.Getenv(command.ConfigEnv))
	if err != nil {
		fail("read config: %v", err)
	}
	var cfg command.Config
	if err := json.Unmarshal(b, &cfg); err != nil {
		fail("parse config: %v", err)
	}
	if cfg.Protocol != command.Protocol {
		fail("protocol %d is not supported", cfg.Protocol)
	}
	if *spawnChild {
		child := exec.Command("sleep", "300")
		if err := child.Start(); err != nil {
			fail("spawn child: %v", err)
		}
		logf("info", "child pid %d", child.Process.Pid)
	}
	if *garbage {
		printGarbage()
	}

	train := load(cfg.TrainingFile)
	var valid []trainer.Example
	if cfg.ValidationFile != nil {
		valid = load(*cfg.ValidationFile)
	}
	var state *trainer.State
	if cfg.ResumeFrom != nil {
		state = new(trainer.State)
		b, err := os.ReadFile(filepath.Join(*cfg.ResumeFrom, "state.bin"))
		if err == nil {
			err = state.UnmarshalBinary(b)
		}
		if err != nil {
			fail("read checkpoint %s: %v", *cfg.ResumeFrom, err)
		}
		logf("info", "resumed from step %d", state.Step)
	} else if state, err = trainer.NewState(train, cfg.Seed); err != nil {
		fail("%v", err)
	}
	hp := trainer.Hyperparameters{
		Epochs: cfg.Hyperparameters.Epochs, LearningRate: cfg.Hyperparameters.LearningRate,
		BatchSize: cfg.Hyperparameters.BatchSize, WarmupSteps: cfg.Hyperparameters.WarmupSteps,
	}
	run, err := trainer.NewRun(state, hp, train, valid)
	if err != nil {
		fail("%v", err)
	}

	// An announced checkpoint belongs to the worker: never write it twice.
	saved := -1
	checkpoint := func() {
		if saved == state.Step {
			return
		}
		saved = state.Step
		dir := filepath.Join(cfg.CheckpointDir, fmt.Sprintf("step-%d", state.Step))
		b, err := state.MarshalBinary()
		if err == nil {
			err = os.MkdirAll(dir, 0o755)
		}
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, "state.bin"), b, 0o644)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "checkpoint:", err)
			os.Exit(1)
		}
		emit(map[string]any{"type": "checkpoint", "step": state.Step, "epoch": state.Epoch, "path": dir})
	}
	evaluate := func(step int) {
		if v, ok := run.ValidationLoss(); ok {
			emit(map[string]any{"type": "eval", "step": step, "validationLoss": v})
		}
	}

	var last trainer.EpochResult
	for epoch := cfg.Epochs.From; epoch <= cfg.Epochs.To; epoch++ {
		last, err = run.TrainEpoch(context.Background(), epoch, func(s trainer.StepInfo) error {
			emit(map[string]any{"type": "progress", "step": s.Step, "epoch": s.Epoch, "loss": s.BatchLoss, "learningRate": s.LearningRate, "tokens": s.Tokens})
			if *exitCode >= 0 {
				logf("error", "failing on request with exit %d", *exitCode)
				os.Exit(*exitCode)
			}
			if s.Step == *crashAtStep && crash() {
				fmt.Fprintf(os.Stderr, "crashing at step %d on request\n", s.Step)
				os.Exit(1)
			}
			if *evalEvery > 0 && s.Step%*evalEvery == 0 {
				evaluate(s.Step)
			}
			if *checkpointEvery > 0 && s.Step%*checkpointEvery == 0 {
				checkpoint()
			}
			time.Sleep(*stepDelay)
			if terminated.Load() {
				return errStop
			}
			return nil
		})
		if errors.Is(err, errStop) {
			checkpoint()
			os.Exit(143)
		}
		if err != nil {
			fail("%v", err)
		}
		logf("info", "epoch %d done: loss %.4f", epoch, last.TrainingLoss)
	}
	evaluate(state.Step)
	if !*noFinalCheckpoint {
		checkpoint()
	}
	out := filepath.Join(cfg.OutputDir, "adapter")
	b, err = state.MarshalBinary()
	if err == nil {
		err = os.MkdirAll(out, 0o755)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(out, "model.bin"), b, 0o644)
	}
	if err == nil {
		meta, _ := json.Marshal(map[string]string{"base_model_name_or_path": cfg.BaseModel, "peft_type": "TEST"})
		err = os.WriteFile(filepath.Join(out, "adapter_config.json"), meta, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "output:", err)
		os.Exit(1)
	}
	emit(map[string]any{"type": "result", "step": state.Step, "trainingLoss": last.TrainingLoss,
		"validationLoss": last.ValidationLoss, "tokens": state.Tokens, "outputPath": out})
}

// crash says whether to crash now: always without a marker, else once.
func crash() bool {
	if *crashMarker == "" {
		return true
	}
	if _, err := os.Stat(*crashMarker); err == nil {
		return false
	}
	return os.WriteFile(*crashMarker, nil, 0o644) == nil
}

func load(path string) []trainer.Example {
	f, err := os.Open(path)
	if err != nil {
		fail("open %s: %v", path, err)
	}
	defer f.Close()
	var out []trainer.Example
	_, err = dataset.Scan(context.Background(), f, dataset.Options{MinExamples: 1}, func(e dataset.Example) error {
		out = append(out, trainer.Example{Text: e.Input(), Label: e.Target(), Tokens: e.Tokens()})
		return nil
	})
	if err != nil {
		fail("%s: %v", filepath.Base(path), err)
	}
	return out
}

func printGarbage() {
	fmt.Println("this is not json")
	fmt.Println(`{"type":"telemetry","gpu":0.9}`)
	fmt.Println(strings.Repeat("x", 1<<20))
	fmt.Println(`{"type":"progress","step":"one","epoch":1,"loss":1}`)
	fmt.Fprintln(os.Stderr, "a warning on stderr")
	for i := range 50000 {
		fmt.Printf("flood %d\n", i)
	}
}
