package server_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/server"
)

func TestDatasetQuotaCount(t *testing.T) {
	t.Parallel()
	api := apiWith(t, func(d *server.Deps) { d.Datasets = server.DatasetLimits{QuotaCount: 3} })
	org := env.NewOrg(t)
	c := &testenv.Client{BaseURL: api.URL, Key: org.Key}
	data := testenv.Tickets(20, 31)
	// Parallel uploads cannot overshoot the quota.
	statuses := make([]testenv.Response, 8)
	var wg sync.WaitGroup
	for i := range statuses {
		wg.Go(func() { statuses[i] = c.Do(t, "POST", datasetsPath+"?filename=t.jsonl", data) })
	}
	wg.Wait()
	created := 0
	for _, r := range statuses {
		switch r.Status {
		case 201:
			created++
		case 409:
			expect(t, r, 409, "quota_exceeded", "quota is 3 datasets", "DELETE /api/v1/fine-tuning/datasets/")
		default:
			t.Fatalf("parallel upload: %d %s", r.Status, r.Raw)
		}
	}
	if created != 3 || len(storedDatasets(t, org.ID)) != 3 {
		t.Fatalf("%d uploads were accepted and %d objects stored under a quota of 3 datasets", created, len(storedDatasets(t, org.ID)))
	}
	r := c.Do(t, "POST", datasetsPath+"?filename=t.jsonl", data)
	expect(t, r, 409, "stores 3 datasets of", strconv.Itoa(3*len(data))+" bytes")
	// Other organizations have quotas of their own.
	other := env.NewOrg(t)
	expect(t, (&testenv.Client{BaseURL: api.URL, Key: other.Key}).Do(t, "POST", datasetsPath, data), 201)
	// Deleting a dataset makes room.
	list := org.Do(t, "GET", datasetsPath, nil).Body["datasets"].([]any)
	expect(t, c.Do(t, "DELETE", datasetsPath+"/"+list[0].(map[string]any)["id"].(string), nil), 204)
	expect(t, c.Do(t, "POST", datasetsPath+"?filename=t.jsonl", data), 201)
}

func TestDatasetQuotaBytes(t *testing.T) {
	t.Parallel()
	data := testenv.Tickets(20, 32)
	quota := int64(2*len(data) + len(data)/2)
	api := apiWith(t, func(d *server.Deps) { d.Datasets = server.DatasetLimits{QuotaBytes: quota} })
	org := env.NewOrg(t)
	c := &testenv.Client{BaseURL: api.URL, Key: org.Key}
	expect(t, c.Do(t, "POST", datasetsPath, data), 201)
	expect(t, c.Do(t, "POST", datasetsPath, data), 201)
	// Refused before it is read (its length is known), and while it streams.
	used := strconv.Itoa(2 * len(data))
	expect(t, c.Do(t, "POST", datasetsPath, data), 409, "quota_exceeded", used+" bytes", strconv.FormatInt(quota, 10)+" bytes")
	expect(t, postStream(t, api.URL+datasetsPath, org.Key, data), 409, "quota_exceeded", used+" bytes", "larger than the space left")
	if n := len(storedDatasets(t, org.ID)); n != 2 {
		t.Errorf("%d dataset objects stored, want 2", n)
	}
	// A job importing a file by path counts too.
	name := "quota-" + org.ID + ".jsonl"
	if err := os.WriteFile(filepath.Join(env.DataDir, "import", name), data, 0o644); err != nil {
		t.Fatal(err)
	}
	r := c.Do(t, "POST", jobsPath, map[string]any{"name": "n", "baseModel": "llama-3.1-8b", "trainingDataset": name})
	expect(t, r, 409, "trainingDataset: dataset quota exceeded")
}

func TestDeleteDataset(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	data := testenv.Tickets(20, 33)
	train, valid := org.Upload(t, "train.jsonl", data), org.Upload(t, "valid.jsonl", data)
	expect(t, env.NewOrg(t).Do(t, "DELETE", datasetsPath+"/"+train, nil), 404)
	expect(t, org.Do(t, "DELETE", datasetsPath+"/ds_missing", nil), 404)
	expect(t, org.Do(t, "GET", datasetsPath+"/"+train, nil), 200)

	ctx := context.Background()
	jobID := "ftjob_dsdelete" + org.ID
	if err := insertJobRow(env.Store.Pool, org.ID, jobID, "gpu-a100-40gb", train, &valid); err != nil {
		t.Fatal(err)
	}
	setStatus := func(status string) {
		if _, err := env.Store.Pool.Exec(ctx, "UPDATE jobs SET status = $1 WHERE id = $2", status, jobID); err != nil {
			t.Fatal(err)
		}
	}
	// Jobs that read the dataset now, or will when restarted, keep it.
	for _, status := range []string{"queued", "running", "stopped", "failed"} {
		setStatus(status)
		expect(t, org.Do(t, "DELETE", datasetsPath+"/"+train, nil), 409, jobID+" ("+status+")", "restarted")
		expect(t, org.Do(t, "DELETE", datasetsPath+"/"+valid, nil), 409, jobID)
	}
	if n := len(storedDatasets(t, org.ID)); n != 2 {
		t.Fatalf("refused deletes removed objects: %d left", n)
	}
	// Completed and deployed jobs never read it again, and keep naming it.
	setStatus("completed")
	expect(t, org.Do(t, "DELETE", datasetsPath+"/"+train, nil), 204)
	setStatus("deployed")
	expect(t, org.Do(t, "DELETE", datasetsPath+"/"+valid, nil), 204)
	expect(t, org.Do(t, "GET", jobsPath+"/"+jobID, nil), 200, `"trainingDataset":"`+train, `"trainingFile":"train.jsonl"`)
	expect(t, org.Do(t, "GET", datasetsPath+"/"+train, nil), 404)
	expect(t, org.Do(t, "DELETE", datasetsPath+"/"+train, nil), 404)
	expectNothingStored(t, org, "deleting both datasets")
	// A deleted dataset names nothing a new job can use.
	expect(t, org.Do(t, "POST", jobsPath, map[string]any{"name": "n", "baseModel": "llama-3.1-8b", "trainingDataset": train}), 422, "unknown dataset")
	err := insertJobRow(env.Store.Pool, org.ID, jobID+"x", "gpu-a100-40gb", train, nil)
	if !db.IsForeignKeyViolation(err) {
		t.Errorf("a job row naming a deleted dataset: %v", err)
	}
}

// A dataset's delete and a job insert naming it serialize: whichever locks
// the dataset's row first wins, and the other sees its outcome.
func TestDeleteDatasetRacesJobCreation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	org := env.NewOrg(t)
	// lockRow locks the dataset as a delete does, in a transaction that
	// deletes it and commits once commit is called.
	lockRow := func(ds string) (commit func()) {
		locked, release, done := make(chan error, 1), make(chan struct{}), make(chan error, 1)
		go func() {
			done <- env.Store.Transact(ctx, func(tx db.Conn) error {
				_, err := tx.LockDataset(ctx, org.ID, ds)
				locked <- err
				if err != nil {
					return err
				}
				<-release
				return tx.DeleteDataset(ctx, org.ID, ds)
			})
		}()
		if err := <-locked; err != nil {
			t.Fatal(err)
		}
		return func() {
			close(release)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		}
	}

	// The delete locks first: the insert waits for it, then fails.
	ds := org.Upload(t, "a.jsonl", testenv.Tickets(10, 40))
	commit := lockRow(ds)
	inserted := make(chan error, 1)
	go func() {
		inserted <- insertJobRow(env.Store.Pool, org.ID, "ftjob_race1"+org.ID, "gpu-a100-40gb", ds, nil)
	}()
	select {
	case err := <-inserted:
		t.Fatalf("a job was inserted while its dataset was being deleted: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	commit()
	if err := <-inserted; !db.IsForeignKeyViolation(err) {
		t.Fatalf("insert after the delete: %v", err)
	}

	// The insert commits first: the delete sees the job and refuses.
	ds = org.Upload(t, "b.jsonl", testenv.Tickets(10, 41))
	tx, err := env.Store.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := insertJobRow(tx, org.ID, "ftjob_race2"+org.ID, "gpu-a100-40gb", ds, nil); err != nil {
		t.Fatal(err)
	}
	deleted := make(chan testenv.Response, 1)
	go func() { deleted <- org.Do(t, "DELETE", datasetsPath+"/"+ds, nil) }()
	time.Sleep(300 * time.Millisecond)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	expect(t, <-deleted, 409, "ftjob_race2"+org.ID+" (queued)")
}

func TestFailedImportsAndUploadsLeaveNothing(t *testing.T) {
	t.Parallel()
	const limit = 4096
	api := apiWith(t, func(d *server.Deps) { d.Datasets = server.DatasetLimits{MaxBytes: limit} })
	org := env.NewOrg(t)
	c := &testenv.Client{BaseURL: api.URL, Key: org.Key}
	big := testenv.Tickets(60, 34)
	if len(big) <= limit {
		t.Fatalf("test data of %d bytes is not over the limit", len(big))
	}
	// A file imported by path is capped like an upload.
	name := "big-" + org.ID + ".jsonl"
	if err := os.WriteFile(filepath.Join(env.DataDir, "import", name), big, 0o644); err != nil {
		t.Fatal(err)
	}
	r := c.Do(t, "POST", jobsPath, map[string]any{"name": "n", "baseModel": "llama-3.1-8b", "trainingDataset": name})
	expect(t, r, 413, "trainingDataset: the dataset exceeds 4096 bytes")
	expectNothingStored(t, org, "a refused import")

	expect(t, c.Do(t, "POST", datasetsPath, big), 413, "exceeds 4096 bytes")
	expectNothingStored(t, org, "a refused upload")
	expect(t, postStream(t, api.URL+datasetsPath, org.Key, big), 413, "exceeds 4096 bytes")
	expectNothingStored(t, org, "a refused streamed upload")
	form := "--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.jsonl\"\r\n\r\n" + string(big) + "\r\n--XYZ--\r\n"
	expect(t, c.Send(t, "POST", datasetsPath, form, http.Header{"Content-Type": {"multipart/form-data; boundary=XYZ"}}), 413, "exceeds 4096 bytes")
	expectNothingStored(t, org, "a refused multipart upload")
	expect(t, c.Do(t, "POST", datasetsPath, append(testenv.Tickets(5, 35), "{oops\n"...)), 422, "invalid_dataset")
	expectNothingStored(t, org, "an invalid upload")

	// A client that hangs up halfway.
	conn, err := net.Dial("tcp", strings.TrimPrefix(api.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nContent-Length: 3000\r\n\r\n%s", datasetsPath, org.Key, big[:1500])
	time.Sleep(200 * time.Millisecond)
	conn.Close()
	time.Sleep(300 * time.Millisecond)
	expectNothingStored(t, org, "an upload cut off halfway")
}

// An upload records what its validation found, for jobs on the file to use
// instead of reading it again.
func TestUploadRecordsStats(t *testing.T) {
	org := env.NewOrg(t)
	one := org.Upload(t, "train.jsonl", testenv.Tickets(20, 3))
	d, err := env.Store.Dataset(t.Context(), org.ID, one)
	if err != nil {
		t.Fatal(err)
	}
	if st := d.Stats; st == nil || st.Examples != 20 || st.Tokens <= 0 || st.MaxTokens <= 0 || st.LabelProblem != "" {
		t.Errorf("stats of a good file: %+v", st)
	}
	var lines []string
	for range 5 {
		lines = append(lines, `{"prompt":"a question","completion":"the only label"}`)
	}
	single := org.Upload(t, "single.jsonl", []byte(strings.Join(lines, "\n")))
	if d, err = env.Store.Dataset(t.Context(), org.ID, single); err != nil {
		t.Fatal(err)
	}
	if st := d.Stats; st == nil || st.Examples != 5 || st.LabelProblem == "" {
		t.Errorf("stats of a file with one label: %+v", st)
	}
}
