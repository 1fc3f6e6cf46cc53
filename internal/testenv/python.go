package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Python is the interpreter of the project's Python environment, with
// torch, transformers and peft: TUNEFORGE_PYTHON (make test sets it), else
// the repository's .venv. Without one the test skips, saying how to build
// it, except in CI (CI=true), where a missing library fails the test.
func Python(t testing.TB) string {
	t.Helper()
	python := os.Getenv("TUNEFORGE_PYTHON")
	if python == "" {
		_, file, _, _ := runtime.Caller(0)
		python = filepath.Join(filepath.Dir(file), "..", "..", ".venv", "bin", "python")
	}
	out, err := exec.Command(python, "-c", "import torch, transformers, peft").CombinedOutput()
	if err != nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		msg := "the language-model tests need the Python environment (make venv builds .venv; TUNEFORGE_PYTHON names another interpreter); " +
			python + ": " + err.Error() + ": " + lines[len(lines)-1]
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return python
}
