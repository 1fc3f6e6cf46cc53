package freeport

import "testing"

// TestPicksStayApart: no pick lands where a server on an earlier pick may
// take its other ports.
func TestPicksStayApart(t *testing.T) {
	var got []int
	for range 200 {
		p, err := Pick()
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range got {
			if d := p - q; d == 0 || abs(d) <= 3 || abs(abs(d)-100) <= 3 {
				t.Fatalf("picked %d after %d", p, q)
			}
		}
		got = append(got, p)
	}
}

func abs(x int) int { return max(x, -x) }
