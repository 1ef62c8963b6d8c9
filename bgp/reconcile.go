package bgp

import (
	"fmt"
	"net/netip"
	"slices"
)

// Side says which routers a prefix or a peer belongs to.
type Side uint8

const (
	// ClientSide routers are sent the VIPs.
	ClientSide Side = 1 << iota
	// RealSide routers are sent the recovery addresses and the announce
	// prefixes (the routes the real servers' replies need).
	RealSide
)

func (s Side) String() string {
	switch s {
	case ClientSide:
		return "client"
	case RealSide:
		return "real"
	case ClientSide | RealSide:
		return "client+real"
	case 0:
		return "none"
	}
	return fmt.Sprintf("Side(%d)", uint8(s))
}

// change is one path update the reconciler asks for: announce Prefix to
// the sides in Sides (a new path, or the same prefix with other sides,
// which replaces the old path), or withdraw it when Sides is 0.
type change struct {
	Prefix netip.Prefix
	Sides  Side
}

// normalize returns the prefixes of ps as BGP carries them: masked,
// IPv4-mapped IPv6 prefixes as IPv4, sorted and without duplicates. An
// invalid prefix, or a mapped one shorter than ::ffff:0:0/96, is an error.
func normalize(ps []netip.Prefix) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		if !p.IsValid() {
			return nil, fmt.Errorf("invalid prefix %q", p)
		}
		if p.Addr().Is4In6() {
			if p.Bits() < 96 {
				return nil, fmt.Errorf("prefix %s: an IPv4-mapped prefix shorter than /96", p)
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		if p.Addr().Zone() != "" {
			return nil, fmt.Errorf("prefix %s: a zone has no place in BGP", p)
		}
		out = append(out, p.Masked())
	}
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out), nil
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// reconcile sets side's prefixes in cur (prefix -> the sides it is
// announced to) to want, which normalize has sorted, and returns the path
// updates that take the announced state there, in prefix order. A prefix
// other sides still want keeps its path with the sides that are left. cur
// is updated in place. Setting the same set twice returns no change.
func reconcile(cur map[netip.Prefix]Side, side Side, want []netip.Prefix) []change {
	var out []change
	wanted := make(map[netip.Prefix]bool, len(want))
	for _, p := range want {
		wanted[p] = true
		if old := cur[p]; old&side == 0 {
			cur[p] = old | side
			out = append(out, change{p, old | side})
		}
	}
	for p, old := range cur {
		if old&side != 0 && !wanted[p] {
			if n := old &^ side; n != 0 {
				cur[p] = n
			} else {
				delete(cur, p)
			}
			out = append(out, change{p, old &^ side})
		}
	}
	slices.SortFunc(out, func(a, b change) int { return comparePrefix(a.Prefix, b.Prefix) })
	return out
}

// announced returns the prefixes of cur that side has, sorted.
func announced(cur map[netip.Prefix]Side, side Side) []netip.Prefix {
	var out []netip.Prefix
	for p, s := range cur {
		if s&side != 0 {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, comparePrefix)
	return out
}
