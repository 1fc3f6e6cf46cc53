// Package freeport picks loopback ports for processes a caller is about to
// start (the cluster's, the tests').
package freeport

import (
	"errors"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"sync"
)

// near says whether a and b could clash: a server started on a picked port
// may also take ports at fixed offsets from it (the embedded Temporal
// server's other services, at +1 to +3 and +100 to +103: devserver's
// servicePorts), which are not taken yet when the next port is picked.
func near(a, b int) bool {
	for _, base := range []int{-100, 0, 100} {
		if d := a - b - base; d >= -3 && d <= 3 {
			return true
		}
	}
	return false
}

var (
	mu     sync.Mutex
	picked []int
)

// Pick is a port nothing listens on now on 127.0.0.1, between 20000 and
// 32000: below Linux's ephemeral range (32768 up), so no outgoing
// connection takes it before the process listens, and within a smallint,
// as Temporal's cluster_membership table keeps ports. It is near no port
// this process picked before.
func Pick() (int, error) {
	mu.Lock()
	defer mu.Unlock()
	for range 1000 {
		port := 20000 + rand.IntN(12000)
		if slices.ContainsFunc(picked, func(p int) bool { return near(p, port) }) {
			continue
		}
		if l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err == nil {
			l.Close()
			picked = append(picked, port)
			return port, nil
		}
	}
	return 0, errors.New("no free port between 20000 and 32000")
}
