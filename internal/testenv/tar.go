package testenv

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"testing"
)

// Untar returns the regular files of a tar archive, by name.
func Untar(t testing.TB, b []byte) map[string]string {
	t.Helper()
	files := map[string]string{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatalf("not a valid tar: %v", err)
		}
		if hdr.Typeflag == tar.TypeReg {
			content, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[hdr.Name] = string(content)
		}
	}
}
