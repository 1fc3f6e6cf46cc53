// Package freeport picks loopback ports for processes a caller is about to
// start (the cluster's, the tests').
package freeport

import (
	"errors"
	"math/rand/v2"
	"net"
	"strconv"
)

// Pick is a port nothing listens on now on 127.0.0.1, between 20000 and
// 32000: below Linux's ephemeral range (32768 up), so no outgoing
// connection takes it before the process listens, and within a smallint,
// as Temporal's cluster_membership table keeps ports.
func Pick() (int, error) {
	for range 1000 {
		port := 20000 + rand.IntN(12000)
		if l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err == nil {
			l.Close()
			return port, nil
		}
	}
	return 0, errors.New("no free port between 20000 and 32000")
}
