package platform_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// load is one HTTP load: wrk's requests per second and latency quantiles.
type load struct {
	rps      float64
	p50, p99 time.Duration
}

func (l load) String() string {
	return fmt.Sprintf("%.0f req/s, p50 %s, p99 %s", l.rps, ms(l.p50), ms(l.p99))
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }

// request is what wrk sends, over and over.
type request struct {
	method, url, body string
	header            map[string]string
}

// wrkConns and wrkTime are each load's connections and length.
var (
	wrkConns = envInt("BENCH_CONNS", 64)
	wrkTime  = time.Duration(envInt("BENCH_SECONDS", 10)) * time.Second
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// runWrk loads r with wrk (Debian's wrk package) at wrkConns connections
// for wrkTime, after a second to warm up. Any answer that is not 2xx fails
// the benchmark: a figure of errors measures nothing.
func runWrk(t *testing.T, r request) load {
	t.Helper()
	if _, err := exec.LookPath("wrk"); err != nil {
		t.Fatal("wrk is not installed: apt-get install wrk")
	}
	script := filepath.Join(t.TempDir(), "req.lua")
	var lua strings.Builder
	fmt.Fprintf(&lua, "wrk.method = %q\n", r.method)
	if r.body != "" {
		fmt.Fprintf(&lua, "wrk.body = %q\nwrk.headers[\"Content-Type\"] = \"application/json\"\n", r.body)
	}
	for k, v := range r.header {
		fmt.Fprintf(&lua, "wrk.headers[%q] = %q\n", k, v)
	}
	if err := os.WriteFile(script, []byte(lua.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(d time.Duration) string {
		out, err := exec.Command("wrk", "-t2", fmt.Sprintf("-c%d", wrkConns), fmt.Sprintf("-d%ds", int(d.Seconds())),
			"--timeout", "60s", "--latency", "-s", script, r.url).CombinedOutput()
		if err != nil {
			t.Fatalf("wrk %s %s: %v\n%s", r.method, r.url, err, out)
		}
		return string(out)
	}
	run(time.Second)
	out := run(wrkTime)
	if m := regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`).FindStringSubmatch(out); m != nil {
		t.Fatalf("%s %s: %s answers were not 2xx\n%s", r.method, r.url, m[1], out)
	}
	if strings.Contains(out, "Socket errors") {
		t.Fatalf("%s %s: socket errors\n%s", r.method, r.url, out)
	}
	rps := regexp.MustCompile(`Requests/sec:\s+([\d.]+)`).FindStringSubmatch(out)
	if rps == nil {
		t.Fatalf("wrk said no rate:\n%s", out)
	}
	l := load{p50: quantile(t, out, "50%"), p99: quantile(t, out, "99%")}
	l.rps, _ = strconv.ParseFloat(rps[1], 64)
	if l.rps == 0 {
		t.Fatalf("%s %s: no request completed\n%s", r.method, r.url, out)
	}
	return l
}

// quantile reads a line of wrk's latency distribution ("99%   12.34ms").
func quantile(t *testing.T, out, q string) time.Duration {
	t.Helper()
	m := regexp.MustCompile(`(?m)^\s+` + regexp.QuoteMeta(q) + `\s+([\d.]+)(us|ms|s)\s*$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("wrk said no %s latency:\n%s", q, out)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[m[2]]
	return time.Duration(v * float64(unit))
}
