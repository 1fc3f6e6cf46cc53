package server_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/server"
)

// rawConn opens a connection to the API at url.
func rawConn(t *testing.T, url string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// cutOff waits up to wait for the server to answer and close conn, and
// returns the status line it sent, if any.
func cutOff(t *testing.T, conn net.Conn, wait time.Duration) string {
	t.Helper()
	start := time.Now()
	conn.SetReadDeadline(start.Add(wait))
	b, err := io.ReadAll(conn)
	if err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("the server still held the connection after %s: %v", time.Since(start).Round(time.Millisecond), err)
	}
	status, _, _ := strings.Cut(string(b), "\r\n")
	return status
}

func TestSlowClientsAreCutOff(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	api := apiWith(t, func(d *server.Deps) {
		d.Timeouts = server.Timeouts{ReadHeader: 300 * time.Millisecond, Read: 600 * time.Millisecond, Write: time.Second, Idle: 500 * time.Millisecond, Stall: 500 * time.Millisecond}
	})
	const wait = 3 * time.Second

	// Headers sent slowly.
	conn := rawConn(t, api.URL)
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\n", jobsPath)
	cutOff(t, conn, wait)

	// A JSON body sent slowly.
	conn = rawConn(t, api.URL)
	fmt.Fprintf(conn, "POST /api/v1/fine-tuning/estimate-cost HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nContent-Length: 100\r\n\r\n{\"baseModel\"", org.Key)
	if status := cutOff(t, conn, wait); !strings.Contains(status, "408") {
		t.Errorf("stalled JSON body: %q", status)
	}

	// An upload that stalls.
	conn = rawConn(t, api.URL)
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nContent-Length: 100000\r\n\r\n%s", datasetsPath, org.Key, testenv.Tickets(3, 36))
	if status := cutOff(t, conn, wait); !strings.Contains(status, "408") {
		t.Errorf("stalled upload: %q", status)
	}
	expectNothingStored(t, org, "a stalled upload")

	// A kept-alive connection that sits idle.
	conn = rawConn(t, api.URL)
	fmt.Fprintf(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	if status := cutOff(t, conn, wait); !strings.Contains(status, "200") {
		t.Errorf("health: %q", status)
	}

	// An upload that keeps coming takes as long as it needs, past Read
	// and Write.
	data := testenv.Tickets(40, 37)
	pr, pw := io.Pipe()
	go func() {
		for chunk := range slices.Chunk(data, len(data)/8+1) {
			time.Sleep(200 * time.Millisecond)
			pw.Write(chunk)
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", api.URL+datasetsPath, pr)
	req.Header.Set("X-API-Key", org.Key)
	start := time.Now()
	resp, err := testenv.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 201 || time.Since(start) < 1500*time.Millisecond {
		t.Errorf("a steady upload: %d after %s", resp.StatusCode, time.Since(start))
	}

	// So does a download the client keeps reading.
	ds := org.Upload(t, "t.jsonl", data)
	jobID := "ftjob_slow" + org.ID
	if err := insertJobRow(env.Store.Pool, org.ID, jobID, "gpu-a100-40gb", ds, nil); err != nil {
		t.Fatal(err)
	}
	const size = 32 << 20
	key := artifacts.CheckpointKey(jobID, 1)
	if err := env.Artifacts.PutBytes(context.Background(), key, make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Artifacts.Delete(context.Background(), key) })
	req, _ = http.NewRequest("GET", api.URL+jobsPath+"/"+jobID+"/artifacts/checkpoint-step-000000000001", nil)
	req.Header.Set("X-API-Key", org.Key)
	start = time.Now()
	resp, err = testenv.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, buf := 0, make([]byte, 1<<20)
	for {
		n, err := io.ReadFull(resp.Body, buf)
		got += n
		if err != nil {
			break
		}
		time.Sleep(60 * time.Millisecond)
	}
	if got != size || time.Since(start) < 1500*time.Millisecond {
		t.Errorf("a slow download got %d of %d bytes in %s", got, size, time.Since(start))
	}

	// Headers beyond the limit are refused.
	conn = rawConn(t, api.URL)
	fmt.Fprintf(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", strings.Repeat("x", 100<<10))
	status, _ := bufio.NewReader(conn).ReadString('\n')
	if !strings.Contains(status, "431") {
		t.Errorf("100 KiB of headers: %q", status)
	}
}
