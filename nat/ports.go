package nat

import (
	"fmt"
	"net/netip"

	"holdfast/internal/shrink"
)

// portAlloc hands out the recovery address:port a recovery dials from. A pair
// may serve several reals at once (the 4-tuple stays unique), so it is
// reserved per real: from the moment nat asks for a dial until the dial fails
// or, when it succeeds, until the recovered flow ends. A real is dialled from
// a recovery address of its own family. Guarded by the Director's lock.
type portAlloc struct {
	fam    [2]famPorts // IPv4, IPv6
	lo, hi uint16
	inUse  map[pair]struct{}
}

// famPorts are the recovery addresses of one family and the cursor over
// addrs x ports.
type famPorts struct {
	addrs []netip.Addr
	next  int
}

// pair is a (local, real) reservation packed in 36 bytes without a pointer
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
	a := portAlloc{lo: lo, hi: hi, inUse: make(map[pair]struct{})}
	for _, addr := range addrs {
		f := &a.fam[famIndex(addr)]
		f.addrs = append(f.addrs, addr.Unmap())
	}
	return a, nil
}

// famIndex is 0 for an IPv4 address, 1 for IPv6.
func famIndex(a netip.Addr) int {
	if a.Unmap().Is4() {
		return 0
	}
	return 1
}

// has reports whether there is a recovery address of the family (IPv4 if
// v4, else IPv6).
func (a *portAlloc) has(v4 bool) bool {
	i := 1
	if v4 {
		i = 0
	}
	return len(a.fam[i].addrs) > 0
}

// get reserves a local address:port of real's family not in use toward
// real, other than the real's own port.
func (a *portAlloc) get(real netip.AddrPort) (netip.AddrPort, bool) {
	f := &a.fam[famIndex(real.Addr())]
	ports := int(a.hi-a.lo) + 1
	n := len(f.addrs) * ports
	for range n {
		i := f.next
		f.next = (f.next + 1) % n
		local := netip.AddrPortFrom(f.addrs[i/ports], a.lo+uint16(i%ports))
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

// MaxDirectorID is the largest director id: eight directors share a
// recovery address with disjoint ranges.
const MaxDirectorID = 8

// directorRange is the size of each id's range: 10000-61999 in eight
// slices. 6500 ports toward each real is 6500 connections recovered at once
// per real and director (a storm of 10,000 over three reals fits); the
// ports below 10000 (well-known and registered services) and the highest
// ones stay clear.
const directorRange = 6500

// DirectorPorts is the default recovery port range of director id
// (1..MaxDirectorID): disjoint ranges, so that directors sharing a recovery
// address never reuse each other's tuples.
func DirectorPorts(id int) (lo, hi uint16, err error) {
	if id < 1 || id > MaxDirectorID {
		return 0, 0, fmt.Errorf("director id %d: expected 1..%d", id, MaxDirectorID)
	}
	lo = uint16(10000 + (id-1)*directorRange)
	return lo, lo + directorRange - 1, nil
}
