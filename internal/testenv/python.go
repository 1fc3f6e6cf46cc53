package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Repo is the repository's root directory.
func Repo() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// PythonPath is the interpreter of the project's Python environment, with
// torch, transformers and peft: TUNEFORGE_PYTHON (make test sets it), else
// the repository's .venv; an error saying how to build it when it lacks them.
func PythonPath() (string, error) {
	python := os.Getenv("TUNEFORGE_PYTHON")
	if python == "" {
		python = filepath.Join(Repo(), ".venv", "bin", "python")
	}
	out, err := exec.Command(python, "-c", "import torch, transformers, peft").CombinedOutput()
	if err != nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		return "", fmt.Errorf("the language-model tests need the Python environment (make venv builds .venv; "+
			"TUNEFORGE_PYTHON names another interpreter); %s: %v: %s", python, err, lines[len(lines)-1])
	}
	return python, nil
}

// Python is PythonPath for a test: without the environment the test skips,
// saying how to build it, except in CI (CI=true), where a missing library
// fails it.
func Python(t testing.TB) string {
	t.Helper()
	python, err := PythonPath()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	return python
}
