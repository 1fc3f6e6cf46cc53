package server_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/server"
)

func TestAuthFailuresAreThrottledPerAddress(t *testing.T) {
	t.Parallel()
	api := apiWith(t, func(d *server.Deps) { d.AuthFailureRate = 10 })
	org := env.NewOrg(t)
	c := &testenv.Client{BaseURL: api.URL}
	// X-Forwarded-For is not believed without trusted proxies: every
	// request comes from this test's address, whatever it claims.
	for i := range 10 {
		r := c.Send(t, "GET", jobsPath, nil, http.Header{"X-Api-Key": {"tf_guess" + strconv.Itoa(i)}, "X-Forwarded-For": {fmt.Sprintf("10.0.0.%d", i)}})
		expect(t, r, 401, "invalid API key")
	}
	req, _ := http.NewRequest("GET", api.URL+jobsPath, nil)
	req.Header.Set("X-Forwarded-For", "10.9.9.9")
	resp, err := testenv.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("the 11th failure within a second: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	// Another address is not affected.
	other := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext}}
	req, _ = http.NewRequest("GET", api.URL+jobsPath, nil)
	req.Header.Set("X-API-Key", org.Key)
	if resp, err := other.Do(req); err != nil {
		t.Logf("cannot send from 127.0.0.2: %v", err)
	} else if resp.Body.Close(); resp.StatusCode != 200 {
		t.Errorf("another address: %d", resp.StatusCode)
	}
	// The bucket refills at 10 a second.
	time.Sleep(1100 * time.Millisecond)
	expect(t, (&testenv.Client{BaseURL: api.URL, Key: org.Key}).Do(t, "GET", jobsPath, nil), 200)

	// Throttled requests never reach the database: this API's is closed, so
	// a key lookup would be a 500.
	store, err := db.Open(context.Background(), env.Store.Pool.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	store.Close()
	closed := apiWith(t, func(d *server.Deps) { d.Store, d.AuthFailureRate = store, 10 })
	cc := &testenv.Client{BaseURL: closed.URL}
	for range 5 {
		expect(t, cc.Do(t, "GET", jobsPath, nil), 401, "missing API key")
		expect(t, cc.Send(t, "GET", jobsPath, nil, http.Header{"X-Api-Key": {"garbled"}}), 401, "invalid API key")
	}
	for _, key := range []string{"", "garbled", "tf_wellformedbutunknown"} {
		expect(t, (&testenv.Client{BaseURL: closed.URL, Key: key}).Do(t, "GET", jobsPath, nil), 429, "too many failed authentications")
	}
}
