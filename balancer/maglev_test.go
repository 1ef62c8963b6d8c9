package balancer

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

// owners returns the real (by address) mh picks for each of n clients.
func owners(s Scheduler, reals []*Real, n int) []netip.AddrPort {
	out := make([]netip.AddrPort, n)
	for i := range out {
		if p := s.Pick(reals, client(i), vip); p >= 0 {
			out[i] = reals[p].Addr
		}
	}
	return out
}

// The table shares its entries in proportion to the weights: equal
// weights within one entry of each other, 3:2:1 within N/M of the shares.
func TestMaglevSpread(t *testing.T) {
	for _, weights := range [][]int{{1, 1, 1}, {3, 2, 1}, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1}} {
		reals := realsW(weights...)
		table := buildMaglev(nil, reals)
		count := make([]int, len(reals))
		for _, i := range table {
			count[i]++
		}
		total := 0
		for _, w := range weights {
			total += w
		}
		for i, w := range weights {
			want := float64(maglevSize) * float64(w) / float64(total)
			if d := float64(count[i]) - want; d > float64(len(weights))+1 || d < -float64(len(weights))-1 {
				t.Errorf("weights %v: real %d has %d entries, want %.0f", weights, i, count[i], want)
			}
		}
	}
}

// The table is a function of the reals, not of their order: two
// directors given the reals in different orders send every client to the
// same real.
func TestMaglevOrderIndependent(t *testing.T) {
	a := realsW(1, 2, 3, 1, 1)
	b := append([]*Real(nil), a...)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(b), func(i, j int) { b[i], b[j] = b[j], b[i] })
	oa, ob := owners(mustScheduler(t, "mh"), a, 20000), owners(mustScheduler(t, "mh"), b, 20000)
	for i := range oa {
		if oa[i] != ob[i] {
			t.Fatalf("client %v: %v given one order, %v given another", client(i), oa[i], ob[i])
		}
	}
}

// Minimal disruption: when one of ten reals leaves, its clients move and
// few of the others' do (Maglev's bound is not zero: the paper measures
// a few percent at this table-to-reals ratio).
func TestMaglevDisruption(t *testing.T) {
	const n = 50000
	reals := realsW(1, 1, 1, 1, 1, 1, 1, 1, 1, 1)
	before := owners(mustScheduler(t, "mh"), reals, n)
	gone := reals[3].Addr
	after := owners(mustScheduler(t, "mh"), append(append([]*Real(nil), reals[:3]...), reals[4:]...), n)
	moved, others := 0, 0
	for i := range before {
		if before[i] == gone {
			if after[i] == gone {
				t.Fatalf("client %v still on the removed real", client(i))
			}
			continue
		}
		others++
		if after[i] != before[i] {
			moved++
		}
	}
	frac := float64(moved) / float64(others)
	t.Logf("%d of %d clients of the other reals moved (%.2f%%)", moved, others, 100*frac)
	if frac > 0.03 {
		t.Fatalf("%.2f%% of the other reals' clients moved, want at most 3%%", 100*frac)
	}
	// sh, for comparison, rebuilds its weighted round robin table: most
	// clients move.
	shBefore := owners(mustScheduler(t, "sh"), reals, n)
	shAfter := owners(mustScheduler(t, "sh"), append(append([]*Real(nil), reals[:3]...), reals[4:]...), n)
	shMoved := 0
	for i := range shBefore {
		if shBefore[i] != gone && shAfter[i] != shBefore[i] {
			shMoved++
		}
	}
	if shMoved <= moved {
		t.Errorf("sh moved %d, mh %d: mh should move fewer", shMoved, moved)
	}
}

// Health does not reshuffle: a real down (or quiesced) loses its clients
// to the others, and the others' clients stay; back up, it gets exactly
// its own back.
func TestMaglevHealth(t *testing.T) {
	const n = 20000
	reals := realsW(1, 1, 1, 1)
	s := mustScheduler(t, "mh")
	before := owners(s, reals, n)
	for _, change := range []struct {
		name string
		do   func(*Real)
		undo func(*Real)
	}{
		{"down", func(r *Real) { r.Down = true }, func(r *Real) { r.Down = false }},
		{"weight 0", func(r *Real) { r.Weight = 0 }, func(r *Real) { r.Weight = 1 }},
	} {
		change.do(reals[1])
		during := owners(s, reals, n)
		for i := range before {
			switch {
			case before[i] == reals[1].Addr && during[i] == reals[1].Addr:
				t.Fatalf("%s: client %v still sent to the unavailable real", change.name, client(i))
			case before[i] != reals[1].Addr && during[i] != before[i]:
				t.Fatalf("%s: client %v moved from %v to %v", change.name, client(i), before[i], during[i])
			}
		}
		change.undo(reals[1])
		if back := owners(s, reals, n); !equalAddrs(back, before) {
			t.Fatalf("%s: not every client came back to its real", change.name)
		}
	}
}

func equalAddrs(a, b []netip.AddrPort) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return len(a) == len(b)
}

// mh keys on the client's address and port, mh:addr on its address only.
func TestMaglevKey(t *testing.T) {
	reals := realsW(1, 1, 1, 1)
	c := netip.MustParseAddr("198.18.1.2")
	seen := map[string]map[int]bool{"mh": {}, "mh:addr": {}}
	for name := range seen {
		s := mustScheduler(t, name)
		for port := range uint16(64) {
			seen[name][s.Pick(reals, netip.AddrPortFrom(c, 40000+port), vip)] = true
		}
	}
	if len(seen["mh:addr"]) != 1 {
		t.Errorf("mh:addr sent one address's connections to %d reals, want 1", len(seen["mh:addr"]))
	}
	if len(seen["mh"]) != len(reals) {
		t.Errorf("mh sent 64 ports of one address to %d reals, want all %d", len(seen["mh"]), len(reals))
	}
	v6 := netip.MustParseAddrPort("[2001:2:0:10::2]:40000")
	if p := mustScheduler(t, "mh").Pick(realsW(1, 1), v6, vip); p < 0 {
		t.Errorf("no real for an IPv6 client")
	}
}
