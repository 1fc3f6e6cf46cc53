package command

import (
	"slices"
	"strings"
)

// The trainer's environment is allow-listed: a trainer's output reaches
// the job's log, which the job's owner reads, so the worker's own settings
// (DATABASE_URL, the blob store's keys, …) must never reach it. What a
// trainer needs to find its interpreter, libraries and GPUs passes; so do
// the settings of the usual ML libraries, except any whose name says it
// holds a secret (HF_TOKEN, say: a trainer never downloads). The protocol's
// own variable, ConfigEnv, is set by the Runner. docs/trainer-protocol.md
// lists the same.
var (
	// envNames pass as they are.
	envNames = []string{
		"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR",
		"LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME", "PYTHONUNBUFFERED", "VIRTUAL_ENV",
		"OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM",
	}
	// envPrefixes pass every variable they begin.
	envPrefixes = []string{
		"LC_", "CUDA_", "NVIDIA_", "NCCL_", "HF_", "TRANSFORMERS_", "TORCH", "PYTORCH_", "TRITON_", "MKL_",
	}
	// secretWords, as a word of a name (words are split at '_'), keep
	// the variable out even when its prefix passes.
	secretWords = []string{"TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL", "CREDENTIALS", "AUTH"}
)

// trainerEnv returns the variables of environ (KEY=value entries, as
// os.Environ gives) that the allow-list passes, and ConfigEnv set to
// configPath.
func trainerEnv(environ []string, configPath string) []string {
	var out []string
	for _, kv := range environ {
		name, _, ok := strings.Cut(kv, "=")
		if ok && EnvAllowed(name) {
			out = append(out, kv)
		}
	}
	return append(out, ConfigEnv+"="+configPath)
}

// EnvAllowed reports whether the worker's variable name reaches the
// trainer. ConfigEnv does not: the Runner sets it.
func EnvAllowed(name string) bool {
	for _, w := range strings.Split(name, "_") {
		if slices.Contains(secretWords, strings.ToUpper(w)) {
			return false
		}
	}
	if slices.Contains(envNames, name) {
		return true
	}
	for _, p := range envPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}
