package server_test

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/server"
	"github.com/tuneforge/tuneforge/workers"
)

// multipartForm is a form of fields fields (name=value) and then a file.
func multipartForm(fields int, file []byte) string {
	var b strings.Builder
	for i := range fields {
		fmt.Fprintf(&b, "--XYZ\r\nContent-Disposition: form-data; name=\"f%d\"\r\n\r\n%s\r\n", i, strings.Repeat("v", 100))
	}
	b.WriteString("--XYZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n")
	b.WriteString("--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.jsonl\"\r\n\r\n")
	b.Write(file)
	b.WriteString("\r\n--XYZ--\r\n")
	return b.String()
}

// Upload forms are held in memory but for their file: a form of many
// fields is refused as soon as it passes the bound, and stores nothing.
func TestUploadFormFieldsAreBounded(t *testing.T) {
	t.Parallel()
	data := testenv.Tickets(10, 71)
	form := http.Header{"Content-Type": {"multipart/form-data; boundary=XYZ"}}
	for _, path := range []string{datasetsPath, "/v1/files"} {
		org := env.NewOrg(t)
		start := time.Now()
		expect(t, env.Do(t, org.Key, "POST", path, multipartForm(20_000, data), form), 413, "more than 32 fields besides the file")
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("POST %s: a form of 20,000 fields took %s to refuse", path, d)
		}
		// Few fields, but large ones together.
		var big strings.Builder
		for i := range 10 {
			fmt.Fprintf(&big, "--XYZ\r\nContent-Disposition: form-data; name=\"f%d\"\r\n\r\n%s\r\n", i, strings.Repeat("v", 4000))
		}
		big.WriteString(multipartForm(0, data))
		expect(t, env.Do(t, org.Key, "POST", path, big.String(), form), 413, "more than 32768 bytes in all")
		expectNothingStored(t, org, "POST "+path+" with too many form fields")
		// An ordinary form is stored.
		expect(t, env.Do(t, org.Key, "POST", path, multipartForm(3, data), form), map[string]int{datasetsPath: 201, "/v1/files": 200}[path], `"filename":"f.jsonl"`)
	}
}

// An upload whose process died between storing the object and recording
// the dataset leaves an object nothing names: swept once it is an hour
// old, while datasets' objects and uploads still under way stay.
func TestSweepOrphanDatasets(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	api := server.New(server.Deps{
		Store: env.Store, Temporal: env.Temporal, Artifacts: env.Artifacts, DataDir: env.DataDir,
		Logger: env.Log, GPULiveness: workers.GPULiveness,
	})
	org := env.NewOrg(t)
	data := testenv.Tickets(10, 73)
	kept := artifacts.DatasetKey(org.ID, org.Upload(t, "kept.jsonl", data))
	orphan, young := artifacts.DatasetKey(org.ID, "ds_orphan"), artifacts.DatasetKey(org.ID, "ds_young")
	longAgo := time.Now().Add(-2 * time.Hour)
	for _, key := range []string{orphan, young} {
		if err := env.Artifacts.PutBytes(ctx, key, data); err != nil {
			t.Fatal(err)
		}
	}
	for _, key := range []string{kept, orphan} {
		if err := os.Chtimes(filepath.Join(env.DataDir, "artifacts", filepath.FromSlash(key)), longAgo, longAgo); err != nil {
			t.Fatal(err)
		}
	}
	n, err := api.SweepOrphanDatasets(ctx, time.Now().Add(-time.Hour))
	if err != nil || n < 1 {
		t.Fatalf("swept %d objects: %v", n, err)
	}
	want := []string{kept, young}
	slices.Sort(want)
	if got := storedDatasets(t, org.ID); !slices.Equal(got, want) {
		t.Fatalf("after the sweep the store holds %v, want %v", got, want)
	}
	expect(t, org.Do(t, "GET", datasetsPath, nil), 200, `"count":1`)
}
