package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// An ECMP lab (Options.ECMP, issue 17) is a BGP lab whose directors are
// active together: up to three (A, B, C: uplinks 198.18.11.0/24 to
// 198.18.13.0/24, peering addresses 198.18.20.2 to .4), all announcing
// with ECMPMED, and both routers merge their equal routes into one
// multipath route (BIRD's kernel protocol, merge paths):
//
//	client -- router --198.18.1N.0/24-- director N (N = 1..3) --+-- switch --+-- rs1..rsN
//	                                                             +-- rrouter (real side)
//
// The kernels hash a flow's two directions independently (L4 hash,
// fib_multipath_hash_policy=1), so a director often sees only the
// client's segments or only the real's replies: its holdfast adopts the
// replies of a flow it has no record of (--adoption on). Each director
// has its own recovery address, RecoveryAddrOf, announced to the
// real-side router: a recovered flow's replies reach the director that
// dialled it.
//
// A dual-stack ECMP lab (Options.IPv6) does the same for IPv6: the routers
// merge the directors' equal VIP6/128 and ::/0 routes learned over the IPv6
// sessions (bgp.go), hash them on L4 too, and each director has its own
// IPv6 recovery address, RecoveryAddr6Of.

// ECMPMED is every director's --bgp-med in an ECMP lab: equal MEDs make
// equal routes, which BIRD merges.
const ECMPMED = 10

// ECMP says whether the lab is an ECMP lab (Options.ECMP).
func (l *Lab) ECMP() bool { return l.ecmp }

// RecoveryAddrOf is director d's --recovery-addr: RecoveryAddr, shared by
// the directors of a pair; in an ECMP lab its own, RecoveryPrefix's host
// d.ID (198.18.200.1 for A, .2 for B, .3 for C), since a director that
// recovers a flow must get the real's replies to it.
func RecoveryAddrOf(d *Director) netip.Addr {
	if d.lab == nil || !d.lab.ecmp {
		return RecoveryAddr
	}
	b := RecoveryPrefix.Addr().As4()
	b[3] = byte(d.ID)
	return netip.AddrFrom4(b)
}

// RecoveryAddr6Of is director d's IPv6 --recovery-addr in a dual-stack lab:
// the mirror of RecoveryAddrOf (RecoveryAddr6, shared, for a pair; in an
// ECMP lab 2001:2:0:200::N, its own).
func RecoveryAddr6Of(d *Director) netip.Addr { return Mirror6(RecoveryAddrOf(d)) }

// ecmpSteps set the routers' kernels up for multipath: hash on the L4
// tuple, not only the addresses (policy 0; for IPv6 policy 0 hashes the
// addresses and the flow label), so that the client's connections spread
// over the directors; and ignore a next hop whose link is down, so that a
// director whose link went down gets no more traffic before BIRD
// withdraws its route (Documentation/networking/ip-sysctl.rst, both
// families). IPv6 reads ignore_routes_with_linkdown per interface; writing
// "all" sets every existing interface's and the default for new ones.
func (l *Lab) ecmpSteps() []func() error {
	var steps []func() error
	for _, ns := range []*NS{l.Router, l.RealRouter} {
		steps = append(steps,
			func() error { return ns.SetSysctl("net.ipv4.fib_multipath_hash_policy", "1") },
			func() error { return ns.SetSysctl("net.ipv4.conf.all.ignore_routes_with_linkdown", "1") },
		)
		if l.ipv6 {
			steps = append(steps,
				func() error { return ns.SetSysctl("net.ipv6.fib_multipath_hash_policy", "1") },
				func() error { return ns.SetSysctl("net.ipv6.conf.all.ignore_routes_with_linkdown", "1") },
			)
		}
	}
	return steps
}

// routeVias are the gateways of ns's kernel route to exactly p: one for a
// plain route, one per next hop of a multipath route ("nexthop via"),
// none if there is no such route.
func routeVias(ns *NS, p netip.Prefix) ([]netip.Addr, error) {
	out, err := ns.IP(familyFlag(p), "route", "show", "exact", p.String())
	if err != nil {
		return nil, err
	}
	var vias []netip.Addr
	f := strings.Fields(out)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "via" {
			a, err := netip.ParseAddr(f[i+1])
			if err != nil {
				return nil, fmt.Errorf("lab: route to %s in %s: %w", p, ns.Name, err)
			}
			vias = append(vias, a)
		}
	}
	return vias, nil
}

// ECMPRoutes are the directors the routers' kernels spread the IPv4
// traffic over now, in Directors order: the next hops of the client-side
// router's VIP route and those of the real-side router's default route. A
// next hop that is no director is an error.
func (l *Lab) ECMPRoutes() (vip, reals []*Director, err error) { return l.ecmpRoutes(false) }

// ECMPRoutes6 are ECMPRoutes for IPv6 in a dual-stack lab: the next hops
// of the client-side router's VIP6/128 route and of the real-side
// router's ::/0.
func (l *Lab) ECMPRoutes6() (vip, reals []*Director, err error) {
	if !l.ipv6 {
		return nil, nil, errors.New("lab: ECMPRoutes6: not a dual-stack lab (Options.IPv6)")
	}
	return l.ecmpRoutes(true)
}

func (l *Lab) ecmpRoutes(v6 bool) (vip, reals []*Director, err error) {
	cv, err := routeVias(l.Router, vipRoute(v6))
	if err != nil {
		return nil, nil, err
	}
	rv, err := routeVias(l.RealRouter, defaultRoute(v6))
	if err != nil {
		return nil, nil, err
	}
	for _, d := range l.Directors {
		if slices.Contains(cv, d.uplinkAddr(v6)) {
			vip = append(vip, d)
		}
		if slices.Contains(rv, d.bgpAddr(v6)) {
			reals = append(reals, d)
		}
	}
	if len(vip) != len(cv) || len(reals) != len(rv) {
		return nil, nil, fmt.Errorf("lab: routers' %s next hops %v (VIP) and %v (reals' default) are not all directors", familyName(v6), cv, rv)
	}
	return vip, reals, nil
}

// WaitECMP waits (bounded by ctx) until both routers' kernel routes have
// exactly the directors ds as next hops: the VIP route on the client
// side, the reals' default route on the real side; in a dual-stack lab
// those of both families (ECMPRoutes, ECMPRoutes6).
func (l *Lab) WaitECMP(ctx context.Context, ds ...*Director) error {
	if !l.ecmp {
		return errors.New("lab: WaitECMP: not an ECMP lab (Options.ECMP)")
	}
	for {
		var wrong []string
		for _, v6 := range l.families() {
			vip, reals, err := l.ecmpRoutes(v6)
			if err != nil {
				return err
			}
			if !slices.Equal(vip, ds) || !slices.Equal(reals, ds) {
				wrong = append(wrong, fmt.Sprintf("%s: VIP via %s, reals' default via %s", familyName(v6), labels(vip), labels(reals)))
			}
		}
		if len(wrong) == 0 {
			return nil
		}
		// BIRD tells no one when it exports a merged route: poll.
		select {
		case <-ctx.Done():
			return fmt.Errorf("lab: routers not through %s (%s): %w", labels(ds), strings.Join(wrong, "; "), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func labels(ds []*Director) string {
	if len(ds) == 0 {
		return "nothing"
	}
	var s []string
	for _, d := range ds {
		s = append(s, d.Label)
	}
	return "directors " + strings.Join(s, ", ")
}
