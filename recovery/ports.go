package recovery

import (
	"fmt"
	"net/netip"
	"sync"
)

// portAlloc hands out recovery address:port pairs. A pair may serve several
// reals at once (the 4-tuple stays unique), so it is reserved per real; it
// stays reserved until the flow that used it ends.
type portAlloc struct {
	mu     sync.Mutex
	addrs  []netip.Addr
	lo, hi uint16
	next   int // cursor over addrs x ports
	inUse  map[pair]struct{}
}

// pair is a (local, real) reservation packed in 12 bytes without a pointer
// (two netip.AddrPort are 64 bytes, with pointers the collector scans):
// there is one per recovered flow.
type pair struct {
	local, real  [4]byte
	lport, rport uint16
}

func pairOf(local, real netip.AddrPort) pair {
	return pair{local.Addr().As4(), real.Addr().As4(), local.Port(), real.Port()}
}

func newPortAlloc(addrs []netip.Addr, lo, hi uint16) (*portAlloc, error) {
	if len(addrs) == 0 {
		return nil, fmt.Errorf("no recovery address")
	}
	if lo == 0 || hi < lo {
		return nil, fmt.Errorf("recovery ports %d-%d: expected 1 <= LO <= HI", lo, hi)
	}
	return &portAlloc{addrs: addrs, lo: lo, hi: hi, inUse: make(map[pair]struct{})}, nil
}

func (a *portAlloc) size() int { return len(a.addrs) * (int(a.hi-a.lo) + 1) }

// get reserves a local address:port not in use toward real.
func (a *portAlloc) get(real netip.AddrPort) (netip.AddrPort, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := a.size()
	ports := int(a.hi-a.lo) + 1
	for range n {
		i := a.next
		a.next = (a.next + 1) % n
		local := netip.AddrPortFrom(a.addrs[i/ports], a.lo+uint16(i%ports))
		k := pairOf(local, real)
		if _, used := a.inUse[k]; !used {
			a.inUse[k] = struct{}{}
			return local, true
		}
	}
	return netip.AddrPort{}, false
}

func (a *portAlloc) release(local, real netip.AddrPort) {
	a.mu.Lock()
	delete(a.inUse, pairOf(local, real))
	a.mu.Unlock()
}

func (a *portAlloc) used() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.inUse)
}

// DirectorPorts is the default recovery port range of director id (1..4):
// disjoint ranges, so that two directors sharing a recovery address never
// reuse each other's tuples.
func DirectorPorts(id int) (lo, hi uint16, err error) {
	if id < 1 || id > 4 {
		return 0, 0, fmt.Errorf("director id %d: expected 1..4", id)
	}
	lo = uint16(10000 + (id-1)*13000)
	return lo, lo + 12999, nil
}
