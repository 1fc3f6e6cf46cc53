package server_test

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/tuneforge/tuneforge/server"
)

func TestMetricsAreOffTheAPI(t *testing.T) {
	t.Parallel()
	expect(t, env.Do(t, "", "GET", "/metrics", nil, nil), 404)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := server.MetricsServer("")
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	resp, err := http.Get("http://" + ln.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(b), "tuneforge_http_requests_total") {
		t.Errorf("metrics listener: %d %.300s", resp.StatusCode, b)
	}
}
