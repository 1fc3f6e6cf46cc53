//go:build !nodev

package main

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/tuneforge/tuneforge/config"
	"github.com/tuneforge/tuneforge/inference/vllm"
	"github.com/tuneforge/tuneforge/trainer/command"
)

// devLanguageModels sets `tuneforge dev` up to fine-tune and serve language
// models when it runs in the repository with the Python environment built
// (make venv): the workers train with trainers/hf (tiny stand-ins of the
// catalog's architectures when TUNEFORGE_MODEL_DIR has no weights) unless
// TUNEFORGE_TRAINER says otherwise, and deploys start vLLM's CPU build.
// It returns the launcher (nil without the environment), to be closed,
// and whether the workers train language models on this machine's CPU
// (their GPUs are then not checked against the pools).
func devLanguageModels(ctx context.Context, cfg *config.Config, log *slog.Logger) (*vllm.Launcher, bool) {
	repo, err := os.Getwd()
	if err != nil {
		return nil, false
	}
	// make venv's stamp says .venv matches the lock (importing torch and
	// vLLM to check would take seconds); another interpreter is asked.
	python, ready := os.Getenv("TUNEFORGE_PYTHON"), false
	if python == "" {
		python = filepath.Join(repo, ".venv", "bin", "python")
		ready = newer(filepath.Join(repo, ".venv", ".synced"), filepath.Join(repo, "uv.lock"), filepath.Join(repo, "pyproject.toml"))
	} else {
		ready = exec.CommandContext(ctx, python, "-c", "import torch, transformers, peft, vllm").Run() == nil
	}
	script := filepath.Join(repo, "trainers", "hf", "train.py")
	if _, err := os.Stat(script); err != nil || !ready {
		if _, set := os.LookupEnv("TUNEFORGE_TRAINER"); !set {
			log.Info("training with the builtin CPU classifier: to fine-tune and serve language models, build the Python environment (make venv) and run make dev from the repository")
		}
		return nil, false
	}
	cpu := false
	if _, set := os.LookupEnv("TUNEFORGE_TRAINER"); !set {
		// One thread per trainer: the dev slots share this machine's cores.
		cfg.Trainer, cfg.TrainerCmd, cpu = config.TrainerCommand, command.Join(python, script, "--init-tiny", "--threads", "1"), true
	}
	return &vllm.Launcher{Python: python, Repo: repo, ModelDir: cfg.ModelDir, DataDir: cfg.DataDir, AdapterDir: cfg.AdapterDir, Logger: log}, cpu
}

// newer reports whether path exists and is newer than each of than (a
// .venv stamp older than the lock is a stale environment: make venv).
func newer(path string, than ...string) bool {
	st, err := os.Stat(path)
	if err != nil {
		return false
	}
	for _, t := range than {
		if o, err := os.Stat(t); err == nil && o.ModTime().After(st.ModTime()) {
			return false
		}
	}
	return true
}
