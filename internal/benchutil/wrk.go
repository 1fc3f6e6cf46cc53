package benchutil

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Load is one HTTP load: wrk's requests per second and latency quantiles.
type Load struct {
	RPS      float64
	P50, P99 time.Duration
}

func (l Load) String() string {
	return fmt.Sprintf("%.0f req/s, p50 %s, p99 %s", l.RPS, MS(l.P50), MS(l.P99))
}

// Request is what wrk sends, over and over.
type Request struct {
	Method, URL, Body string
	Header            map[string]string
}

// Wrk loads r with wrk (Debian's wrk package) at Conns connections for
// Time, after a second to warm up. Any answer that is not 2xx fails the
// benchmark: a figure of errors measures nothing.
func Wrk(t testing.TB, r Request) Load {
	t.Helper()
	return WrkAll(t, Conns, r)[0]
}

// WrkAll is Wrk for a load spread over several servers: a wrk process for
// each of rs, conns connections each, all warming up together and then
// measuring together.
func WrkAll(t testing.TB, conns int, rs ...Request) []Load {
	t.Helper()
	if _, err := exec.LookPath("wrk"); err != nil {
		t.Fatal("wrk is not installed: apt-get install wrk")
	}
	dir := t.TempDir()
	scripts := make([]string, len(rs))
	for i, r := range rs {
		scripts[i] = filepath.Join(dir, fmt.Sprintf("req%d.lua", i))
		if err := os.WriteFile(scripts[i], []byte(r.lua()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	run := func(d time.Duration) []string {
		outs, errs := make([]string, len(rs)), make([]error, len(rs))
		var wg sync.WaitGroup
		for i, r := range rs {
			wg.Go(func() {
				// wrk refuses fewer connections than threads.
				out, err := exec.Command("wrk", fmt.Sprintf("-t%d", min(2, conns)), fmt.Sprintf("-c%d", conns), fmt.Sprintf("-d%ds", int(d.Seconds())),
					"--timeout", "60s", "--latency", "-s", scripts[i], r.URL).CombinedOutput()
				outs[i] = string(out)
				if err != nil {
					errs[i] = fmt.Errorf("wrk %s %s: %w\n%s", r.Method, r.URL, err, out)
				}
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		return outs
	}
	run(time.Second)
	loads := make([]Load, len(rs))
	for i, out := range run(Time) {
		l, err := parseWrk(out)
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", rs[i].Method, rs[i].URL, err, out)
		}
		loads[i] = l
	}
	return loads
}

// lua is the wrk script that sends r.
func (r Request) lua() string {
	var lua strings.Builder
	fmt.Fprintf(&lua, "wrk.method = %q\n", r.Method)
	if r.Body != "" {
		fmt.Fprintf(&lua, "wrk.body = %q\nwrk.headers[\"Content-Type\"] = \"application/json\"\n", r.Body)
	}
	for k, v := range r.Header {
		fmt.Fprintf(&lua, "wrk.headers[%q] = %q\n", k, v)
	}
	return lua.String()
}

// parseWrk reads wrk's report.
func parseWrk(out string) (Load, error) {
	if m := regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`).FindStringSubmatch(out); m != nil {
		return Load{}, fmt.Errorf("%s answers were not 2xx", m[1])
	}
	if strings.Contains(out, "Socket errors") {
		return Load{}, errors.New("socket errors")
	}
	rps := regexp.MustCompile(`Requests/sec:\s+([\d.]+)`).FindStringSubmatch(out)
	if rps == nil {
		return Load{}, errors.New("wrk said no rate")
	}
	var l Load
	l.RPS, _ = strconv.ParseFloat(rps[1], 64)
	if l.RPS == 0 {
		return Load{}, errors.New("no request completed")
	}
	var err error
	if l.P50, err = quantile(out, "50%"); err != nil {
		return Load{}, err
	}
	if l.P99, err = quantile(out, "99%"); err != nil {
		return Load{}, err
	}
	return l, nil
}

// quantile reads a line of wrk's latency distribution ("99%   12.34ms").
func quantile(out, q string) (time.Duration, error) {
	m := regexp.MustCompile(`(?m)^\s+` + regexp.QuoteMeta(q) + `\s+([\d.]+)(us|ms|s)\s*$`).FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("wrk said no %s latency", q)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[m[2]]
	return time.Duration(v * float64(unit)), nil
}
