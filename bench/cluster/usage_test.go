package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// backends names the PostgreSQL backends that serve the cluster's
// databases, among the processes whose CPU a usage counts.
const backends = "PostgreSQL (the cluster's databases)"

// databases names the cluster's databases in the order of the commit
// counts of a usage or a sample.
var databases = [3]string{"tuneforge", "temporal", "visibility"}

// usage is what a load took: CPU in cores, the machine's and that of each
// of the cluster's processes and of its PostgreSQL backends, and the
// transactions a second that its databases committed, in all and each.
type usage struct {
	cores, busy float64
	procs       []string
	used        []float64
	commits     float64
	perDB       [3]float64
}

// commitsPer is the transactions committed for each of n things done at
// rate a second: in all, then each database's.
func (u usage) commitsPer(rate float64, what string) string {
	parts := make([]string, len(databases))
	for i, name := range databases {
		parts[i] = fmt.Sprintf("%s %.1f", name, u.perDB[i]/rate)
	}
	return fmt.Sprintf("%.0f commits a %s (%s)", u.commits/rate, what, strings.Join(parts, ", "))
}

func (u usage) String() string {
	var parts []string
	rest := u.busy
	for i, name := range u.procs {
		if u.used[i] >= 0.005 {
			parts = append(parts, fmt.Sprintf("%s %.2f", name, u.used[i]))
		}
		rest -= u.used[i]
	}
	return fmt.Sprintf("machine %.0f %% of %.0f cores: %s; the rest (the load generator, other work) %.2f; %.0f commits/s",
		100*u.busy/u.cores, u.cores, strings.Join(parts, ", "), rest, u.commits)
}

// measure runs load and returns what it took. CPU comes from /proc, a
// process's ticks against the machine's, which count every core; commits
// from pg_stat_database, which a busy backend updates every second.
func (b *bench) measure(t *testing.T, load func()) usage {
	t.Helper()
	before, err := b.sample()
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	load()
	secs := time.Since(began).Seconds()
	after, err := b.sample()
	if err != nil {
		t.Fatal(err)
	}
	perCore := (after.total - before.total) / float64(after.cores)
	u := usage{cores: float64(after.cores), busy: (after.busy - before.busy) / perCore}
	for i := range u.perDB {
		u.perDB[i] = (after.commits[i] - before.commits[i]) / secs
		u.commits += u.perDB[i]
	}
	for _, name := range after.names {
		u.procs = append(u.procs, name)
		u.used = append(u.used, (after.ticks[name]-before.ticks[name])/perCore)
	}
	var pg float64
	for pid, ticks := range after.backends {
		// A backend that connected meanwhile spent all its ticks then.
		pg += ticks - before.backends[pid]
	}
	u.procs, u.used = append(u.procs, backends), append(u.used, pg/perCore)
	return u
}

// sample is the CPU time so far, in clock ticks: the machine's, busy and
// in all, over its cores; each of the cluster's running processes', by
// name; and each of its PostgreSQL backends', by pid. And the
// transactions each of its databases has committed.
type sample struct {
	busy, total float64
	cores       int
	names       []string
	ticks       map[string]float64
	backends    map[int]float64
	commits     [3]float64
}

func (b *bench) sample() (sample, error) {
	s := sample{ticks: map[string]float64{}, backends: map[int]float64{}}
	var err error
	if s.busy, s.total, s.cores, err = machineTicks(); err != nil {
		return s, err
	}
	for _, p := range b.c.Processes() {
		pid, err := b.pid(p.Name)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return s, err
		}
		if s.ticks[p.Name], err = processTicks(pid); err != nil {
			return s, err
		}
		s.names = append(s.names, p.Name)
	}
	ctx := context.Background()
	dbs := []string{b.c.Database, b.c.TemporalDatabase, b.c.VisibilityDatabase}
	rows, err := b.store.Pool.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE datname = ANY($1)`, dbs)
	if err != nil {
		return s, fmt.Errorf("list the cluster's PostgreSQL backends: %w", err)
	}
	for rows.Next() {
		var pid int
		if err := rows.Scan(&pid); err != nil {
			return s, fmt.Errorf("list the cluster's PostgreSQL backends: %w", err)
		}
		// A backend that has just gone took its ticks with it.
		if ticks, err := processTicks(pid); err == nil {
			s.backends[pid] = ticks
		}
	}
	if err := rows.Err(); err != nil {
		return s, fmt.Errorf("list the cluster's PostgreSQL backends: %w", err)
	}
	for i, name := range dbs {
		err = b.store.Pool.QueryRow(ctx, `SELECT xact_commit::float8 FROM pg_stat_database WHERE datname = $1`, name).Scan(&s.commits[i])
		if err != nil {
			return s, fmt.Errorf("count the commits of %s: %w", name, err)
		}
	}
	return s, nil
}

// pid is the running process's pid, which the cluster keeps in its run
// directory (package cluster); os.ErrNotExist when it is not running.
func (b *bench) pid(name string) (int, error) {
	raw, err := os.ReadFile(filepath.Join(b.c.Dir, "run", name+".pid"))
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		return 0, fmt.Errorf("pid file of %s: %w", name, err)
	}
	return pid, nil
}

// machineTicks is the CPU time of every core so far, busy and in all, in
// clock ticks, and the number of cores (/proc/stat).
func machineTicks() (busy, total float64, cores int, err error) {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) > 0 && f[0] == "cpu":
			// user nice system idle iowait irq softirq steal; guest time
			// is counted in user already.
			for i, v := range f[1:min(len(f), 9)] {
				n, err := strconv.ParseFloat(v, 64)
				if err != nil {
					return 0, 0, 0, fmt.Errorf("/proc/stat: %w", err)
				}
				total += n
				if i != 3 && i != 4 {
					busy += n
				}
			}
		case len(f) > 0 && strings.HasPrefix(f[0], "cpu"):
			cores++
		}
	}
	return busy, total, cores, nil
}

// processTicks is process pid's CPU time so far, user and system, in
// clock ticks (/proc/PID/stat).
func processTicks(pid int) (float64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command's closing parenthesis start at the
	// third; utime and stime are the 14th and 15th.
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	var ticks float64
	for _, v := range f[11:13] {
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	return ticks, nil
}
