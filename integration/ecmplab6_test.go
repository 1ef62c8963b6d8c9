package integration

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"holdfast/lab"
)

// The dual-stack ECMP lab (lab.Options.ECMP with IPv6, issue 17: "IPv6
// VIPs in a group (MP-BGP)"): each of the three directors has a session of
// each family with each router (holdfast sends a family only over sessions
// of that family), announces VIP and VIP6 to the client-side router and
// its own recovery addresses, 0.0.0.0/0 and ::/0 to the real-side router,
// all with the same MED; both routers merge the equal routes of each
// family into one multipath route hashed on L4.

// ecmpLab6Options is the acceptance lab, dual-stack.
var ecmpLab6Options = lab.Options{Directors: 3, Reals: 3, BGP: true, ECMP: true, IPv6: true}

// ecmpGroup6Args are a director's services in the dual-stack group: the
// HTTP service on VIP over the reals' IPv4 addresses and on VIP6 over
// their IPv6 ones, both with mh (every director picks the same real for
// a tuple), adoption on (a director takes up a real's reply to a SYN
// another director forwarded).
func ecmpGroup6Args(l *lab.Lab) []string {
	args := append([]string{"--service", "tcp:" + vipHTTP.String(), "--scheduler", "mh"}, ipv4.realFlags(l, lab.DefaultHTTPPort)...)
	args = append(args, "--service", "tcp:"+ipv6.vip().String(), "--scheduler", "mh")
	args = append(args, ipv6.realFlags(l, lab.DefaultHTTPPort)...)
	return append(args, "--adoption", "on", "--recovery-rate", "100000")
}

// birdSessions is router's `birdc show protocols`: the state of each
// director session (director_*), by protocol name.
func birdSessions(t *testing.T, l *lab.Lab, router string) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := l.Birdc(ctx, router, "show", "protocols")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		// name proto table state since info
		if f := strings.Fields(line); len(f) >= 6 && f[1] == "BGP" && strings.HasPrefix(f[0], "director_") {
			got[f[0]] = f[5]
		}
	}
	return got
}

// TestECMPLabIPv6: the dual-stack ECMP lab with holdfast on three
// directors serving the HTTP service on VIP and on VIP6. Every BGP session
// of both families is Established on both routers (birdc), each director
// announces each prefix over the session of its family (holdfast bgp, and
// what BIRD learned from each IPv6 session with its next hop), both
// routers' VIP6/128 and ::/0 kernel routes have the three directors as
// next hops; 300 new IPv6 connections are all answered and every director
// carried some of their SYNs; and with 100 idle IPv6 keep-alive
// connections open, the director that carried most of their client
// segments dies (links down, then SIGKILL): once both routers show two
// next hops for both families, each connection makes a request, and every
// one is answered by its real, the moved ones found by the cookie (every
// miss of the two left is a cookie steer, none starts a recovery).
func TestECMPLabIPv6(t *testing.T) {
	requireBIRD(t)
	l := NewLab(t, ecmpLab6Options)
	if err := l.ServeBackends(); err != nil {
		t.Fatal(err)
	}
	procs := make([]*lab.Proc, len(l.Directors))
	for i, d := range l.Directors {
		procs[i] = StartDirector(t, d.NS, directorArgs(d, ecmpGroup6Args(l)...)...)
	}

	// Six sessions on each router, all Established: a director and
	// family each.
	want := map[string]bool{}
	for _, d := range l.Directors {
		want[lab.BGPProtocol(d)] = true
		want[lab.BGPProtocol6(d)] = true
	}
	var states map[string]map[string]string
	if d, ok := within(30*time.Second, func() bool {
		states = map[string]map[string]string{}
		up := true
		for _, r := range []string{lab.BGPClientSide, lab.BGPRealSide} {
			states[r] = birdSessions(t, l, r)
			for p := range want {
				up = up && states[r][p] == "Established"
			}
			up = up && len(states[r]) == len(want)
		}
		return up
	}); !ok {
		t.Fatalf("sessions not all Established after %v: %v (want %d per router)", d, states, len(want))
	}
	t.Logf("birdc show protocols: %v", states)

	// What each director announces, to which side, and over which
	// session: IPv4 prefixes over the IPv4 sessions, IPv6 ones over the
	// IPv6 sessions, each with the director's own next hop.
	for _, d := range l.Directors {
		st := bgpShow(t, d)
		peers := map[string]string{
			d.RouterAddr.String(): "client", d.RouterAddr6.String(): "client",
			lab.BGPRealPeer.String(): "real", lab.BGPRealPeer6.String(): "real",
		}
		for _, p := range st.Peers {
			if peers[p.Addr] != p.Side || p.State != "Established" {
				t.Errorf("director %s: peer %+v, want side %q, Established", d.Label, p, peers[p.Addr])
			}
			delete(peers, p.Addr)
		}
		if len(peers) != 0 {
			t.Errorf("director %s: holdfast bgp lists no session with %v", d.Label, peers)
		}
		waitBFDUp(t, d) // of both families
		vip4, vip6 := netip.PrefixFrom(lab.VIP, 32), netip.PrefixFrom(lab.VIP6, 128)
		rec4, rec6 := netip.PrefixFrom(lab.RecoveryAddrOf(d), 32), netip.PrefixFrom(lab.RecoveryAddr6Of(d), 128)
		wantClient := []string{vip4.String(), vip6.String()}
		wantReal := []string{"0.0.0.0/0", "::/0", rec4.String(), rec6.String()}
		gotClient, gotReal := slices.Sorted(slices.Values(st.ClientSide)), slices.Sorted(slices.Values(st.RealSide))
		slices.Sort(wantClient)
		slices.Sort(wantReal)
		if !slices.Equal(gotClient, wantClient) || !slices.Equal(gotReal, wantReal) {
			t.Errorf("director %s announces %v to the client side and %v to the real side, want %v and %v", d.Label, gotClient, gotReal, wantClient, wantReal)
		}
		for _, side := range []struct {
			router string
			want   []string
			nh     netip.Addr
		}{
			{lab.BGPClientSide, []string{vip6.String()}, d.Uplink6.Addr()},
			{lab.BGPRealSide, []string{"::/0", rec6.String()}, d.BGPAddr6.Addr()},
		} {
			got := routerBIRD(l, side.router).routes(t, lab.BGPProtocol6(d))
			if !samePrefixes(got, side.want...) {
				t.Errorf("%s router learned %v over director %s's IPv6 session, want %v", side.router, prefixSet(got), d.Label, side.want)
			}
			for pfx, r := range got {
				if r.MED != fmt.Sprint(lab.ECMPMED) || r.NextHop != side.nh.String() {
					t.Errorf("%s router: %s from director %s has MED %s, next hop %s; want %d, %s", side.router, pfx, d.Label, r.MED, r.NextHop, lab.ECMPMED, side.nh)
				}
			}
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := l.WaitECMP(ctx, l.Directors...); err != nil {
		t.Fatal(err)
	}
	vip, reals, err := l.ECMPRoutes6()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(vip, l.Directors) || !slices.Equal(reals, l.Directors) {
		t.Errorf("IPv6 next hops: VIP6 via %v, ::/0 via %v; want all three directors", vip, reals)
	}
	checkECMPRoutes(t, l, []string{"-6"}, []ecmpRoute{
		{l.Router, netip.PrefixFrom(lab.VIP6, 128).String(), func(d *lab.Director) netip.Addr { return d.Uplink6.Addr() }},
		{l.RealRouter, "::/0", func(d *lab.Director) netip.Addr { return d.BGPAddr6.Addr() }},
	})
	for _, ns := range []*lab.NS{l.Router, l.RealRouter} {
		for _, k := range []string{"net.ipv6.fib_multipath_hash_policy", "net.ipv6.conf.all.ignore_routes_with_linkdown"} {
			if v, err := ns.Sysctl(k); err != nil || v != "1" {
				t.Errorf("%s: %s = %q, %v; want 1", ns.Role, k, v, err)
			}
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// 300 new IPv6 connections, a new source port each.
	const conns = 300
	before := make([]lab.DirectorStats, len(l.Directors))
	for i, d := range l.Directors {
		before[i] = directorCounters(t, d)
	}
	c := newVIPClient(t, l.Client, false, netip.Addr{})
	served := countReals(t, c, httpURL(ipv6.vip(), "/"), conns, 8)
	if n := c.dials.Load(); n < conns {
		t.Errorf("%d requests made %d connections, want %d", conns, n, conns)
	}
	var split []string
	syns := 0
	for i, d := range l.Directors {
		s := directorCounters(t, d)
		fromClient := (s.FlowsCreated - before[i].FlowsCreated) - (s.Adopted - before[i].Adopted)
		syns += fromClient
		split = append(split, fmt.Sprintf("%s %d from the client's SYN, %d adopted", d.Label, fromClient, s.Adopted-before[i].Adopted))
		if fromClient == 0 {
			t.Errorf("director %s carried none of the %d IPv6 connections' SYNs", d.Label, conns)
		}
	}
	if syns != conns {
		t.Errorf("the directors made %d flows from a client's SYN, want %d (one per connection)", syns, conns)
	}
	t.Logf("%d IPv6 connections, 0 failed; reals %v; directors %s", conns, served, strings.Join(split, "; "))

	// 100 idle IPv6 keep-alive connections, one request each: the
	// client then echoes a cookie.
	const idle = 100
	for i, d := range l.Directors {
		before[i] = directorCounters(t, d)
	}
	hs := dialVIP(t, l.Client, ipv6.vip(), idle)
	owner := owners(t, hs)
	victim, most := 0, -1
	for i, d := range l.Directors {
		s := directorCounters(t, d)
		fromClient := (s.FlowsCreated - before[i].FlowsCreated) - (s.Adopted - before[i].Adopted)
		if fromClient > most {
			victim, most = i, fromClient
		}
	}
	if most <= 0 {
		t.Fatalf("no director carried the client side of the %d idle connections", idle)
	}
	dead := l.Directors[victim]
	var left []*lab.Director
	for i, d := range l.Directors {
		if i != victim {
			left = append(left, d)
			before[i] = directorCounters(t, d)
		}
	}

	start := time.Now()
	if err := l.Unplug(victim); err != nil {
		t.Fatal(err)
	}
	killDirector(t, procs[victim])
	// The client-side router drops the dead director's sessions at once
	// (its link went down), the real-side router after the hold time.
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := l.WaitECMP(ctx, left...); err != nil {
		t.Fatal(err)
	}
	moved := time.Since(start)
	if vip, reals, err := l.ECMPRoutes6(); err != nil || !slices.Equal(vip, left) || !slices.Equal(reals, left) {
		t.Fatalf("after director %s died: IPv6 next hops VIP6 via %v, ::/0 via %v (%v); want %v", dead.Label, vip, reals, err, left)
	}

	errs := eachConn(hs, func(i int, h *httpConn) error {
		real, _, _, err := h.get("/")
		if err != nil {
			return err
		}
		if real != owner[i] {
			return fmt.Errorf("%s: answered by %s, was %s", h.c.LocalAddr(), real, owner[i])
		}
		return nil
	})
	requireNoErrors(t, fmt.Sprintf("%d idle IPv6 connections after director %s died", idle, dead.Label), errs)

	var misses, steers, confirmed, recoveries, probes, resets int
	var notes []string
	for i, d := range l.Directors {
		if i == victim {
			continue
		}
		s := directorCounters(t, d)
		b := before[i]
		m, st, cf := s.Misses-b.Misses, s.CookieSteers-b.CookieSteers, s.CookieConfirmed-b.CookieConfirmed
		misses, steers, confirmed = misses+m, steers+st, confirmed+cf
		recoveries += s.RecoveryStarted - b.RecoveryStarted
		probes += s.ProbeSteers - b.ProbeSteers
		resets += s.ClientResets - b.ClientResets
		notes = append(notes, fmt.Sprintf("%s: %d misses, %d cookie steers (%d confirmed), %d adopted", d.Label, m, st, cf, s.Adopted-b.Adopted))
	}
	if misses == 0 {
		t.Errorf("no connection moved to the directors left (no miss), though director %s carried the client side of %d", dead.Label, most)
	}
	if steers != misses || recoveries != 0 || probes != 0 || resets != 0 {
		t.Errorf("the directors left had %d misses: %d cookie steers, %d recoveries, %d probe steers, %d client resets; want every miss steered by its cookie",
			misses, steers, recoveries, probes, resets)
	}
	t.Logf("director %s (client side of %d idle connections) died; routers at 2 next hops (both families) after %v; %d of %d connections answered by their real; %s",
		dead.Label, most, moved.Round(time.Millisecond), idle-len(errs), idle, strings.Join(notes, "; "))
}

// TestLabUpBGPIPv6: as root, `lab up --bgp --ipv6` (refused before issue
// 17) comes up with both directors' sessions of both families Established
// on both routers (`lab status --json`); a keep-alive connection to the
// IPv6 VIP survives `lab failover` (A unplugged and killed, the routers
// move to B on both families), and `lab down` removes everything.
func TestLabUpBGPIPv6(t *testing.T) {
	requireBIRD(t)
	bin := holdfastBinary(t)
	u := rootLabUp(t, bin, "--bgp", "--ipv6")
	if line := u.bannerLine(t, "VIP "); !strings.Contains(line, lab.VIP6.String()) {
		t.Errorf("banner's VIP line: %q, want %v in it", line, lab.VIP6)
	}
	up := "client Established, real Established, client6 Established, real6 Established"
	st := parseLabStatus(t, runCmd(t, exec.Command(bin, "lab", "status", "--json")))
	if st.Active != "A" || len(st.Directors) != 2 || st.Directors[0].BGP != up || st.Directors[1].BGP != up {
		t.Errorf("lab status --json: active %q, directors %+v; want A, every session of both families Established", st.Active, st.Directors)
	}
	client := &lab.NS{Name: lab.SupervisedPrefix + "client"}
	conns := dialVIP(t, client, ipv6.vip(), 1)
	before, _, _, err := conns[0].get("/")
	if err != nil {
		t.Fatalf("HTTP to %v: %v", ipv6.vip(), err)
	}
	start := time.Now()
	r := runCmd(t, exec.Command(bin, "lab", "failover"))
	wantOK(t, "lab failover", r)
	t.Logf("lab failover took %v: %s", time.Since(start).Round(time.Millisecond), firstLineOf(r.stdout))
	after, _, _, err := conns[0].get("/")
	if err != nil || after != before {
		t.Errorf("the IPv6 connection after lab failover: answered by %q (%v), before by %q; want the same real", after, err, before)
	}
	if r := runCmd(t, exec.Command(bin, "lab", "down")); r.code != 0 {
		t.Fatalf("lab down: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if err := u.wait(t); err != nil {
		t.Fatalf("holdfast lab up exited with %v\nstderr:\n%s", err, tail(u.stderr.String(), 20))
	}
	if left, _ := lab.List(lab.SupervisedPrefix); len(left) > 0 {
		t.Fatalf("namespaces left: %v", left)
	}
}
