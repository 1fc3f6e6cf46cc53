// Command listjobs measures GET /jobs at scale: it loads one organization
// holding -big jobs and -orgs organizations sharing -spread jobs, serves
// the real API over them in-process (PostgreSQL only: listing touches no
// workflow), and prints p50/p99 of first pages for every filter, search,
// sort key and a few deep offsets, with PostgreSQL choosing plans as it
// does (custom) and forced to generic plans, as pgx's statement cache can
// end up with.
//
//	go run ./bench/listjobs -big 1000000 -orgs 100 -spread 1000000
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tuneforge/tuneforge/apikey"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/internal/apionly"
	"github.com/tuneforge/tuneforge/internal/benchdata"
	"github.com/tuneforge/tuneforge/internal/dbtest"
)

func main() {
	big := flag.Int("big", 1_000_000, "jobs of the one big organization")
	orgs := flag.Int("orgs", 100, "other organizations")
	spread := flag.Int("spread", 1_000_000, "jobs shared among the other organizations")
	runs := flag.Int("runs", 50, "requests per query and plan mode")
	flag.Parse()
	if err := run(*big, *orgs, *spread, *runs); err != nil {
		fmt.Fprintln(os.Stderr, "listjobs:", err)
		os.Exit(1)
	}
}

// loadDataset writes organization $1's dataset, which its jobs train on.
const loadDataset = `INSERT INTO datasets (id, organization_id, filename, bytes, sha256, blob_key, created_by)
VALUES ('ds_' || $1, $1, 'train.jsonl', 1000, '', 'k', 'u')`

func run(big, orgs, spread, runs int) error {
	ctx := context.Background()
	url, drop, err := dbtest.Create(ctx)
	if err != nil {
		return err
	}
	defer drop()
	store, err := db.Open(ctx, url)
	if err != nil {
		return err
	}
	defer store.Close()
	if err := store.Migrate(ctx); err != nil {
		return err
	}
	start := time.Now()
	fill := func(org string, n int) error {
		if _, err := store.Pool.Exec(ctx, loadDataset, org); err != nil {
			return fmt.Errorf("load %s: %w", org, err)
		}
		return benchdata.LoadJobs(ctx, store.Pool, org, "ds_"+org, n)
	}
	if err := fill("org_big", big); err != nil {
		return err
	}
	for i := range orgs {
		if err := fill(fmt.Sprintf("org_%03d", i), spread/max(orgs, 1)); err != nil {
			return err
		}
	}
	if _, err := store.Pool.Exec(ctx, "VACUUM ANALYZE jobs"); err != nil {
		return err
	}
	fmt.Printf("loaded %d jobs (one organization of %d, %d of %d) in %s\n\n", big+spread, big, orgs, spread/max(orgs, 1), time.Since(start).Round(time.Second))

	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	modes := []struct{ name, url string }{{"custom", url}, {"generic", url + sep + "plan_cache_mode=force_generic_plan"}}
	type result struct{ p50, p99 time.Duration }
	results := map[string]map[string]result{}
	var order []string
	for _, mode := range modes {
		st, err := db.Open(ctx, mode.url)
		if err != nil {
			return err
		}
		base, stop, err := serve(ctx, st)
		if err != nil {
			st.Close()
			return err
		}
		for _, org := range []string{"org_big", "org_000"} {
			key, err := apikey.Create(ctx, st, org, "bench", []string{apikey.ScopeRead})
			if err != nil {
				return err
			}
			for _, q := range queries(org, org == "org_big") {
				name := org + " " + q
				if !slices.Contains(order, name) {
					order = append(order, name)
				}
				lat, err := measure(base, key, q, runs)
				if err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
				if results[name] == nil {
					results[name] = map[string]result{}
				}
				results[name][mode.name] = result{lat[len(lat)/2], lat[len(lat)*99/100]}
			}
		}
		stop()
		st.Close()
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "organization\tquery\tcustom p50\tcustom p99\tgeneric p50\tgeneric p99\t")
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }
	for _, name := range order {
		org, q, _ := strings.Cut(name, " ")
		r := results[name]
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t\n", org, q, ms(r["custom"].p50), ms(r["custom"].p99), ms(r["generic"].p50), ms(r["generic"].p99))
	}
	return w.Flush()
}

// queries are GET /jobs query strings: the first page of every filter,
// search and sort key, deep offsets, and the keyset cursor as deep.
func queries(org string, big bool) []string {
	q := []string{"", "status=failed", "status=queued", "baseModel=llama-3.1-70b", "search=support", "search=week%207", "search=nothing-like-it", "metadata[team]=search"}
	for _, key := range []string{"createdAt", "updatedAt", "startedAt", "finishedAt", "name", "status"} {
		q = append(q, "sort="+key+":asc", "sort="+key+":desc")
	}
	// Jobs are created in the order of their number, so the page after
	// job i newest first starts as deep as offset (jobs − i).
	q = append(q, "offset=1000", "limit=100&offset=9000", "limit=100&after="+benchdata.JobID(org, 1000))
	if big {
		q = append(q, "offset=100000", "offset=900000", "after="+benchdata.JobID(org, 100000))
	}
	return q
}

// serve runs the API over st; listing needs no Temporal.
func serve(ctx context.Context, st *db.Store) (string, func(), error) {
	api, closeAPI, err := apionly.New(ctx, st)
	if err != nil {
		return "", nil, err
	}
	srv := httptest.NewServer(api)
	return srv.URL, func() { srv.Close(); closeAPI() }, nil
}

// measure sends GET /jobs?q runs times, after a few to warm up (and to let
// PostgreSQL settle on a plan), and returns the latencies sorted. A query
// whose first answer took over 100 ms is measured 3 times, so that a slow
// plan costs minutes, not hours; its p99 is then its slowest.
func measure(base, key, q string, runs int) ([]time.Duration, error) {
	var lat []time.Duration
	warm := 5
	for i := 0; i < warm+runs; i++ {
		req, _ := http.NewRequest("GET", base+"/api/v1/fine-tuning/jobs?"+q, nil)
		req.Header.Set("X-API-Key", key)
		t := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return nil, fmt.Errorf("status %d", resp.StatusCode)
		}
		took := time.Since(t)
		if i == 0 && took > 100*time.Millisecond {
			warm, runs = 1, 3
		}
		if i >= warm {
			lat = append(lat, took)
		}
	}
	slices.Sort(lat)
	return lat, nil
}
