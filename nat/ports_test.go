package nat

import (
	"net/netip"
	"testing"
)

func TestPortAllocPerReal(t *testing.T) {
	rec := netip.MustParseAddr("198.18.200.1")
	r1 := netip.MustParseAddrPort("198.18.10.11:80")
	r2 := netip.MustParseAddrPort("198.18.10.12:80")
	a, err := newPortAlloc([]netip.Addr{rec}, 10000, 10002)
	if err != nil {
		t.Fatal(err)
	}
	// Three ports toward one real, then none left for it...
	seen := map[netip.AddrPort]bool{}
	for range 3 {
		l, ok := a.get(r1)
		if !ok || seen[l] || l.Addr() != rec || l.Port() < 10000 || l.Port() > 10002 {
			t.Fatalf("get = %v, %v (seen %v)", l, ok, seen)
		}
		seen[l] = true
	}
	if l, ok := a.get(r1); ok {
		t.Fatalf("a fourth port toward the same real: %v", l)
	}
	// ...but the same ports serve another real (the 4-tuple differs).
	if _, ok := a.get(r2); !ok {
		t.Fatal("no port toward a second real")
	}
	// A released pair is handed out again.
	a.release(endpointOf(netip.AddrPortFrom(rec, 10001)), endpointOf(r1))
	if l, ok := a.get(r1); !ok || l.Port() != 10001 {
		t.Fatalf("after release: %v, %v", l, ok)
	}
	if got := len(a.inUse); got != 4 {
		t.Fatalf("%d pairs in use, want 4", got)
	}
}

func TestDirectorPortsDisjoint(t *testing.T) {
	var prevHi uint16
	for id := 1; id <= MaxDirectorID; id++ {
		lo, hi, err := DirectorPorts(id)
		if err != nil || lo <= prevHi || hi < lo {
			t.Fatalf("id %d: %d-%d, %v (previous ended at %d)", id, lo, hi, err, prevHi)
		}
		prevHi = hi
	}
	if _, hi, _ := DirectorPorts(MaxDirectorID); hi > 61999 {
		t.Fatalf("the last range ends at %d, past 61999", hi)
	}
	for _, id := range []int{0, MaxDirectorID + 1} {
		if _, _, err := DirectorPorts(id); err == nil {
			t.Fatalf("id %d accepted", id)
		}
	}
}

// A real is never dialled from its own port: a range that is nothing but
// the real's port has no port toward it, and a wider one skips it.
func TestPortAllocSkipsRealPort(t *testing.T) {
	rec := netip.MustParseAddr("198.18.200.1")
	real := netip.MustParseAddrPort("198.18.10.11:10001")
	a, err := newPortAlloc([]netip.Addr{rec}, 10001, 10001)
	if err != nil {
		t.Fatal(err)
	}
	if l, ok := a.get(real); ok {
		t.Fatalf("dialled %v from the real's own port %v", real, l)
	}
	if a, err = newPortAlloc([]netip.Addr{rec}, 10000, 10002); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if l, ok := a.get(real); !ok || l.Port() == real.Port() {
			t.Fatalf("get = %v, %v", l, ok)
		}
	}
	if l, ok := a.get(real); ok {
		t.Fatalf("a third port toward the real, of two that are not its own: %v", l)
	}
}
