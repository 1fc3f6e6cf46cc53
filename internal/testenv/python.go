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

// PythonModules skips the test unless python imports each of modules, as
// the project's environment does (make venv), except in CI (CI=true),
// where a missing module fails it.
func PythonModules(t testing.TB, python string, modules ...string) {
	t.Helper()
	out, err := exec.Command(python, "-c", "import "+strings.Join(modules, ", ")).CombinedOutput()
	if err == nil {
		return
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	msg := fmt.Sprintf("%s cannot import %s (make venv builds .venv with them): %s", python, strings.Join(modules, ", "), lines[len(lines)-1])
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}
