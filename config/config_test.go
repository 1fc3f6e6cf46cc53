package config

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestImportDir(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("TUNEFORGE_DATA_DIR", dir)
	c, err := FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "import"); c.ImportDir != want {
		t.Errorf("default import directory %s, want %s", c.ImportDir, want)
	}
	if c.StreamsPerKey != 8 || c.StreamsPerOrg != 32 {
		t.Errorf("default stream caps %d per key, %d per organization", c.StreamsPerKey, c.StreamsPerOrg)
	}
	// A directory holding the platform's own files is refused.
	for _, bad := range []string{dir, filepath.Dir(dir), filepath.Join(dir, "work", "..")} {
		t.Setenv("TUNEFORGE_IMPORT_DIR", bad)
		if _, err := FromEnv(); err == nil || !strings.Contains(err.Error(), "TUNEFORGE_IMPORT_DIR") {
			t.Errorf("TUNEFORGE_IMPORT_DIR=%s: %v", bad, err)
		}
	}
	t.Setenv("TUNEFORGE_IMPORT_DIR", filepath.Join(t.TempDir(), "imports"))
	t.Setenv("TUNEFORGE_STREAMS_PER_KEY", "-1")
	if _, err := FromEnv(); err == nil || !strings.Contains(err.Error(), "TUNEFORGE_STREAMS_PER_KEY") {
		t.Errorf("a negative stream cap: %v", err)
	}
}
