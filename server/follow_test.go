package server_test

import (
	"bufio"
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/server"
	"github.com/tuneforge/tuneforge/workers"
)

// queuedJob writes a queued job of org straight into the read model: with
// no workflow, its log stays open until the test ends it.
func queuedJob(t *testing.T, org *testenv.Org, name string) string {
	t.Helper()
	ds := org.Upload(t, "train.jsonl", testenv.Tickets(10, 72))
	id := "ftjob_" + name + org.ID
	if err := insertJobRow(env.Store.Pool, org.ID, id, "gpu-a100-40gb", ds, nil); err != nil {
		t.Fatal(err)
	}
	return id
}

// openFollow starts following a log and returns the response, its stream
// still open (closed when the test ends).
func openFollow(t *testing.T, url, key string) *http.Response {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-API-Key", key)
	resp, err := testenv.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	return resp
}

// A followed log holds a connection and database reads for as long as its
// job runs: each key and organization may hold only so many.
func TestFollowedLogsAreCapped(t *testing.T) {
	t.Parallel()
	api := apiWith(t, func(d *server.Deps) { d.StreamsPerKey, d.StreamsPerOrg = 2, 3 })
	org := env.NewOrg(t)
	url := api.URL + jobsPath + "/" + queuedJob(t, org, "cap") + "/logs?follow=true"
	refused := func(key, who string) {
		t.Helper()
		resp := openFollow(t, url, key)
		var body strings.Builder
		_, _ = bufio.NewReader(resp.Body).WriteTo(&body)
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" ||
			!strings.Contains(body.String(), "too_many_streams") || !strings.Contains(body.String(), who) {
			t.Fatalf("a stream past the cap: %d, Retry-After %q, %s", resp.StatusCode, resp.Header.Get("Retry-After"), body.String())
		}
	}
	open := func(key string) *http.Response {
		t.Helper()
		resp := openFollow(t, url, key)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("a stream within the cap: %d", resp.StatusCode)
		}
		return resp
	}
	first := open(org.Key)
	open(org.Key)
	refused(org.Key, "this API key already has 2 followed logs")
	open(org.ReadKey)
	refused(org.ReadKey, "your organization already has 3 followed logs")
	// Another organization has streams of its own, and reading a log
	// without follow is never capped.
	other := env.NewOrg(t)
	if resp := openFollow(t, api.URL+jobsPath+"/"+queuedJob(t, other, "cap")+"/logs?follow=true", other.Key); resp.StatusCode != http.StatusOK {
		t.Fatalf("another organization's stream: %d", resp.StatusCode)
	}
	c := &testenv.Client{BaseURL: api.URL, Key: org.Key}
	expect(t, c.Do(t, "GET", strings.TrimPrefix(strings.TrimSuffix(url, "?follow=true"), api.URL), nil), 200)
	// A stream that ends gives its place back.
	first.Body.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp := openFollow(t, url, org.ReadKey)
		if resp.StatusCode == http.StatusOK {
			break
		}
		resp.Body.Close()
		if time.Now().After(deadline) {
			t.Fatalf("a closed stream's place was not given back: %d", resp.StatusCode)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The followers of one job share one poll loop, and each gets every line,
// those of a follower that joins late included.
func TestFollowersShareOnePoller(t *testing.T) {
	t.Parallel()
	api := server.New(server.Deps{
		Store: env.Store, Temporal: env.Temporal, Artifacts: env.Artifacts, DataDir: env.DataDir,
		Logger: env.Log, GPULiveness: workers.GPULiveness,
	})
	ts := httptest.NewServer(api)
	t.Cleanup(ts.Close)
	ctx := t.Context()
	org := env.NewOrg(t)
	job := queuedJob(t, org, "share")
	url := ts.URL + jobsPath + "/" + job + "/logs?follow=true&after=0"
	write := func(from, to int) {
		for i := from; i < to; i++ {
			if err := env.Store.AppendLog(ctx, job, "info", "line "+strconv.Itoa(i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(0, 5)

	var wg sync.WaitGroup
	got := make([][]sseEvent, 3)
	follow := func(i int) {
		wg.Go(func() { got[i] = readEvents(t, org.Key, url, "", 0) })
	}
	waitFollowers := func(n int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			feeds, followers := api.LogFeeds()
			if followers == n {
				if feeds != 1 {
					t.Fatalf("%d followers of one job have %d poll loops", n, feeds)
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d followers after 30s, want %d", followers, n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	follow(0)
	follow(1)
	waitFollowers(2)
	write(5, 20)
	// One loop reads every followPoll (250ms), however many follow it:
	// two loops would read about 8 times a second.
	polls := api.LogPolls()
	time.Sleep(2 * time.Second)
	if n := api.LogPolls() - polls; n > 10 {
		t.Errorf("the database was polled %d times in 2s for 2 followers of one job", n)
	}
	// A follower that joins late reads what it missed itself, then joins
	// the same loop.
	follow(2)
	waitFollowers(3)
	write(20, 30)
	if _, err := env.Store.Pool.Exec(ctx, "UPDATE jobs SET status = 'completed' WHERE id = $1", job); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for i, events := range got {
		if len(events) != 31 || events[30].event != "end" || !strings.Contains(events[30].data, `"status":"completed"`) {
			t.Fatalf("follower %d got %d events, ending %v; want 30 lines and the end", i, len(events), events[len(events)-1])
		}
		for j, e := range events[:30] {
			if e.event != "log" || !strings.Contains(e.data, `"message":"line `+strconv.Itoa(j)+`"`) {
				t.Fatalf("follower %d: event %d is %+v, want line %d", i, j, e, j)
			}
		}
	}
	if feeds, followers := api.LogFeeds(); feeds != 0 || followers != 0 {
		t.Errorf("after the log ended: %d poll loops, %d followers", feeds, followers)
	}
}
