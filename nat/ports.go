package nat

import (
	"fmt"
	"net/netip"

	"holdfast/internal/shrink"
)

// portAlloc hands out the recovery address:port a recovery dials from. A pair
// may serve several reals at once (the 4-tuple stays unique), so it is
// reserved per real: from the moment nat asks for a dial until the dial fails
// or, when it succeeds, until the recovered flow ends. Guarded by the
// Director's lock.
type portAlloc struct {
	addrs  []netip.Addr
	lo, hi uint16
	next   int // cursor over addrs x ports
	inUse  map[pair]struct{}
}

// pair is a (local, real) reservation packed in 12 bytes without a pointer
// (two netip.AddrPort are 64 bytes, with pointers the collector scans):
// there is one per recovered flow.
type pair struct{ local, real endpoint }

func newPortAlloc(addrs []netip.Addr, lo, hi uint16) (portAlloc, error) {
	if len(addrs) == 0 {
		return portAlloc{}, fmt.Errorf("no recovery address")
	}
	if lo == 0 || hi < lo {
		return portAlloc{}, fmt.Errorf("recovery ports %d-%d: expected 1 <= LO <= HI", lo, hi)
	}
	return portAlloc{addrs: addrs, lo: lo, hi: hi, inUse: make(map[pair]struct{})}, nil
}

func (a *portAlloc) size() int { return len(a.addrs) * (int(a.hi-a.lo) + 1) }

// get reserves a local address:port not in use toward real, other than
// the real's own port.
func (a *portAlloc) get(real netip.AddrPort) (netip.AddrPort, bool) {
	n := a.size()
	ports := int(a.hi-a.lo) + 1
	for range n {
		i := a.next
		a.next = (a.next + 1) % n
		local := netip.AddrPortFrom(a.addrs[i/ports], a.lo+uint16(i%ports))
		if local.Port() == real.Port() {
			// Never the real's own port: a connection from port 80 to
			// port 80 reads, on the reals' side, as the service's reply.
			continue
		}
		k := pair{endpointOf(local), endpointOf(real)}
		if _, used := a.inUse[k]; !used {
			a.inUse[k] = struct{}{}
			return local, true
		}
	}
	return netip.AddrPort{}, false
}

// release frees a reservation (a no-op for one not held, and with recovery
// off, where the map is nil). The map gives back its room as it empties: a
// failover storm fills it with one entry per recovered flow.
func (a *portAlloc) release(local, real endpoint) {
	a.inUse = shrink.Delete(a.inUse, pair{local, real})
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
