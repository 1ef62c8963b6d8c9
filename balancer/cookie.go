package balancer

import (
	"fmt"
	"net/netip"
)

// Timestamp cookie ids (package nat, cookie.go): with k cookie bits a real
// has an id 1..2^k-1 (0 is "none"), the same on every director configured
// alike: explicit (",id=N"), else derived from the real's address and port.

// MaxCookieID is the largest id there can be (k at most 9).
const MaxCookieID = 1<<9 - 1

// DerivedCookieID is the id of a real given none with k cookie bits (k >=
// 1): ((the low 16 bits of the address) + port) mod (2^k - 1) + 1, so that
// consecutive addresses (or ports) get distinct ids. IPv6 addresses take
// their low 16 bits too.
func DerivedCookieID(addr netip.AddrPort, k int) uint16 {
	a := addr.Addr().As16()
	low := uint32(a[14])<<8 | uint32(a[15])
	n := uint32(1)<<k - 1
	return uint16((low+uint32(addr.Port()))%n + 1)
}

// CookieIDOf is r's id with k cookie bits: its explicit id, else the
// derived one; 0 with k = 0.
func CookieIDOf(r *Real, k int) uint16 {
	switch {
	case k == 0:
		return 0
	case r.CookieIDSet:
		return r.CookieID
	}
	return DerivedCookieID(r.Addr, k)
}

// AssignCookieIDs sets the CookieID of every real of s for k cookie bits
// (0 turns cookies off: every id 0). The first 2^k-1 reals get their
// explicit or derived ids; reals beyond them get 0, no cookie (their count
// is returned, for the caller to say so). An explicit id out of 1..2^k-1, or
// two reals with the same id, is an error that names them.
func AssignCookieIDs(s *Service, k int) (without int, err error) {
	if k == 0 {
		for _, r := range s.Reals {
			r.CookieID = 0
		}
		return 0, nil
	}
	max := 1<<k - 1
	owner := make(map[uint16]*Real, min(len(s.Reals), max))
	for i, r := range s.Reals {
		if r.CookieIDSet && (r.CookieID < 1 || int(r.CookieID) > max) {
			return 0, fmt.Errorf("service %s: real %s: cookie id %d: expected 1..%d with %d cookie bits", s, r.Addr, r.CookieID, max, k)
		}
		if i >= max {
			r.CookieID = 0
			without++
			continue
		}
		id := CookieIDOf(r, k)
		if o, dup := owner[id]; dup {
			return 0, fmt.Errorf("service %s: reals %s and %s have the same cookie id %d; give one of them its own with ,id=N (1..%d)", s, o.Addr, r.Addr, id, max)
		}
		owner[id] = r
		r.CookieID = id
	}
	return without, nil
}
