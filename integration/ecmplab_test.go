package integration

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"holdfast/lab"
)

// The ECMP lab (lab.Options.ECMP, issue 17): directors A, B and C (d1..d3)
// announce with the same MED to the BGP lab's two BIRD routers, which
// merge the equal routes into multipath routes hashed on L4. The two
// directions of a flow are hashed apart, so a director often carries only
// half of it: each runs --scheduler mh (every director picks the same
// real for a tuple) and --adoption on (it takes up a real's reply to a SYN
// another director forwarded), with its own --recovery-addr.

// ecmpLabOptions is the acceptance lab: three directors, three reals, ECMP.
var ecmpLabOptions = lab.Options{Directors: 3, Reals: 3, BGP: true, ECMP: true}

// newECMPGroup builds the ECMP lab, starts holdfast on every director and
// waits until every session is up and both routers spread the traffic
// over all three.
func newECMPGroup(t *testing.T) *lab.Lab {
	t.Helper()
	requireBIRD(t)
	l := NewLab(t, ecmpLabOptions)
	if err := l.ServeBackends(); err != nil {
		t.Fatal(err)
	}
	for _, d := range l.Directors {
		args := append([]string{"--service", "tcp:" + vipHTTP.String(), "--scheduler", "mh"}, ipv4.realFlags(l, lab.DefaultHTTPPort)...)
		args = append(args, "--adoption", "on", "--recovery-rate", "100000")
		StartDirector(t, d.NS, directorArgs(d, args...)...)
	}
	waitSessions(t, l, l.Directors...)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := l.WaitECMP(ctx, l.Directors...); err != nil {
		t.Fatal(err)
	}
	return l
}

// TestECMPLabSessions: both routers' kernel routes (the VIP's on the
// client side, the reals' default on the real side) have the three
// directors as next hops, each director announces its own recovery
// address to the real side, 300 new connections from the client (a new
// source port each) all get their answer, and every director carried
// some of them.
func TestECMPLabSessions(t *testing.T) {
	l := newECMPGroup(t)
	checkECMPRoutes(t, l, nil, []ecmpRoute{
		{l.Router, netip.PrefixFrom(lab.VIP, 32).String(), func(d *lab.Director) netip.Addr { return d.Uplink.Addr() }},
		{l.RealRouter, "default", func(d *lab.Director) netip.Addr { return d.BGPAddr.Addr() }},
	})
	for _, d := range l.Directors {
		if got := lab.RecoveryAddrOf(d); !slices.Contains(bgpShow(t, d).RealSide, netip.PrefixFrom(got, 32).String()) {
			t.Errorf("director %s does not announce its recovery address %s to the real side", d.Label, got)
		}
	}

	const conns = 300
	c := newVIPClient(t, l.Client, false, netip.Addr{}) // a connection per request
	reals := countReals(t, c, httpURL(vipHTTP, "/"), conns, 8)
	if n := c.dials.Load(); n < conns {
		t.Errorf("%d requests made %d connections, want %d", conns, n, conns)
	}
	// Every flow is counted in flows_created_total, adopted ones too: a
	// director's own flows of the client's SYNs are the rest. An adopted
	// flow is a connection whose SYN-ACK came back through another
	// director than its SYN went through.
	var split []string
	syns := 0
	for _, d := range l.Directors {
		s := directorCounters(t, d)
		fromClient := s.FlowsCreated - s.Adopted
		syns += fromClient
		split = append(split, fmt.Sprintf("%s %d from the client's SYN, %d adopted from a real's reply", d.Label, fromClient, s.Adopted))
		if fromClient == 0 {
			t.Errorf("director %s carried none of the %d connections' SYNs", d.Label, conns)
		}
	}
	if syns != conns {
		t.Errorf("the directors made %d flows from a client's SYN, want %d (one per connection)", syns, conns)
	}
	t.Logf("%d connections, 0 failed; reals %v; directors %s", conns, reals, strings.Join(split, "; "))
}

// ecmpRoute is a router's route that has every director as a next hop.
type ecmpRoute struct {
	ns    *lab.NS
	route string
	want  func(*lab.Director) netip.Addr // the director's next hop address
}

// checkECMPRoutes checks that each route (ip ipArgs route show exact) has
// one next hop per director, each director's.
func checkECMPRoutes(t *testing.T, l *lab.Lab, ipArgs []string, routes []ecmpRoute) {
	t.Helper()
	for _, r := range routes {
		args := append(slices.Clone(ipArgs), "route", "show", "exact", r.route)
		out, err := r.ns.IP(args...)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range l.Directors {
			if !strings.Contains(out, "nexthop via "+r.want(d).String()+" ") {
				t.Errorf("%s: route %s has no next hop via director %s (%s):\n%s", r.ns.Role, r.route, d.Label, r.want(d), out)
			}
		}
		if n := strings.Count(out, "nexthop via"); n != len(l.Directors) {
			t.Errorf("%s: route %s has %d next hops, want %d:\n%s", r.ns.Role, r.route, n, len(l.Directors), out)
		}
		t.Logf("%s: ip %s:\n%s", r.ns.Role, strings.Join(args, " "), strings.TrimSpace(out))
	}
}
