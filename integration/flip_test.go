package integration

import (
	"maps"
	"net/netip"
	"testing"

	"holdfast/lab"
)

// TestFlip: two directors run the same service; after Flip(1) new
// connections go through director B (and none through A), and the reals
// answer through B.
func TestFlip(t *testing.T) {
	l := startLab(t, lab.Options{Directors: 2, Reals: 3})
	for _, d := range l.Directors {
		args := append([]string{"--service", "tcp:" + vipHTTP.String(), "--scheduler", "rr"}, realFlags(l, lab.DefaultHTTPPort)...)
		StartDirector(t, d.NS, directorArgs(d, args...)...)
	}
	c := newVIPClient(t, l.Client, false, netip.Addr{})
	want := map[string]int{"rs1": 10, "rs2": 10, "rs3": 10}

	for _, active := range []int{0, 1} {
		if err := l.Flip(active); err != nil {
			t.Fatal(err)
		}
		// The router's ends of the director links: dA0, dB0.
		before := make([]lab.LinkStats, len(l.Directors))
		for i, d := range l.Directors {
			s, err := l.Router.LinkStats("d" + d.Label + "0")
			if err != nil {
				t.Fatal(err)
			}
			before[i] = s
		}
		if got := countReals(t, c, httpURL(vipHTTP, "/"), 30, 1); !maps.Equal(got, want) {
			t.Errorf("director %s active: requests per real %v, want %v", l.Directors[active].Label, got, want)
		}
		for i, d := range l.Directors {
			s, err := l.Router.LinkStats("d" + d.Label + "0")
			if err != nil {
				t.Fatal(err)
			}
			// Each request is at least SYN, ACK, request, FIN toward the
			// VIP; the idle director's link carries nothing at all.
			tx := s.TxPackets - before[i].TxPackets
			if i == active && tx < 4*30 {
				t.Errorf("director %s active: router sent it %d packets for 30 requests, want at least 120", d.Label, tx)
			}
			if i != active && tx != 0 {
				t.Errorf("director %s active: router sent %d packets to idle director %s, want 0", l.Directors[active].Label, tx, d.Label)
			}
		}
	}
}
