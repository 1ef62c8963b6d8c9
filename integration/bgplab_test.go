package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"testing"
	"time"

	"holdfast/daemon/adminapi"
	"holdfast/lab"
)

// The BGP lab (lab.Options.BGP, issue 16's acceptance): directors A (d1,
// MED 10) and B (d2, MED 20) run holdfast with the --bgp-* flags and peer
// with a client-side router (198.18.1N.1, a link each, BIRD checks the
// link) and a real-side router (198.18.20.1 on the reals' segment, where a
// dead director's link stays up: the hold timer, 9 s, notices), both BIRD 2.
// No static route moves: what the routers' kernels do is what BGP says.

// requireBIRD skips t without BIRD 2 (and root).
func requireBIRD(t *testing.T) {
	t.Helper()
	requireRoot(t)
	for _, bin := range []string{"bird", "birdc"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s (Debian bird2; .ci/run installs it)", bin)
		}
	}
}

// bgpLabOptions is the acceptance lab: two directors, three reals, BGP.
var bgpLabOptions = lab.Options{Directors: 2, Reals: 3, BGP: true}

// newBGPPair builds the BGP lab and starts holdfast on A and B (newPair's
// services and flags, with the --bgp-* flags lab.HoldfastArgs adds), and
// waits until every session is up and both routers send the traffic to A.
func newBGPPair(t *testing.T, setup func(*lab.Lab), extra ...[]string) *pair {
	t.Helper()
	requireBIRD(t)
	p := buildPair(t, bgpLabOptions, ipv4, setup, extra...)
	waitSessions(t, p.l, p.l.Directors...)
	waitActive(t, p.l, 0, 10*time.Second)
	return p
}

// waitSessions waits until both routers have an Established session with
// each of ds.
func waitSessions(t *testing.T, l *lab.Lab, ds ...*lab.Director) {
	t.Helper()
	var states []string
	if d, ok := within(20*time.Second, func() bool {
		states = states[:0]
		up := true
		for _, d := range ds {
			for _, r := range []string{lab.BGPClientSide, lab.BGPRealSide} {
				st := protoState(t, l, r, d)
				states = append(states, fmt.Sprintf("%s/%s %s", r, lab.BGPProtocol(d), st))
				up = up && st == "Established"
			}
		}
		return up
	}); !ok {
		t.Fatalf("sessions not up after %v: %v", d, states)
	}
}

func protoState(t *testing.T, l *lab.Lab, router string, d *lab.Director) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := l.BGPProtocolState(ctx, router, d)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// waitActive waits up to d until both routers' kernels send the traffic
// to Directors[i], and returns how long it took.
func waitActive(t *testing.T, l *lab.Lab, i int, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := l.WaitBGPActive(ctx, i); err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

// routerBIRD is router's BIRD as bgp_test.go's helpers see it.
func routerBIRD(l *lab.Lab, router string) *bird {
	return &bird{name: router, sock: l.BIRDSocket(router)}
}

// bgpShow is `holdfast bgp --json` against director d.
func bgpShow(t *testing.T, d *lab.Director) adminapi.BGP {
	t.Helper()
	out, err := exec.Command(holdfastBinary(t), "bgp", "--json", "--admin-socket", lab.AdminSocket(d)).Output()
	if err != nil {
		t.Fatalf("holdfast bgp --json (director %s): %v: %s", d.Label, err, out)
	}
	var v struct {
		BGP adminapi.BGP `json:"bgp"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("holdfast bgp --json: %v: %s", err, out)
	}
	return v.BGP
}

// TestBGPLabSessions: both directors are Established with both routers,
// `holdfast bgp --json` says so and lists what each side is sent (the VIP
// to the client side; the recovery address and 0.0.0.0/0 to the real
// side), `birdc show route` agrees (each director's routes with its MED
// and its own next hop), both routers' kernels send the traffic to A (MED
// 10), and requests through the VIP are answered.
func TestBGPLabSessions(t *testing.T) {
	p := newBGPPair(t, nil)
	l := p.l
	vip := netip.PrefixFrom(lab.VIP, 32).String()
	realSide := []string{"0.0.0.0/0", netip.PrefixFrom(lab.RecoveryAddr, 32).String()}
	for _, d := range l.Directors {
		st := bgpShow(t, d)
		if st.LocalAS != lab.BGPDirectorAS || st.MED != uint32(lab.BGPMED(d)) {
			t.Errorf("director %s: holdfast bgp says AS %d MED %d, want %d and %d", d.Label, st.LocalAS, st.MED, lab.BGPDirectorAS, lab.BGPMED(d))
		}
		want := map[string]string{d.RouterAddr.String(): "client", lab.BGPRealPeer.String(): "real"}
		for _, peer := range st.Peers {
			if want[peer.Addr] != peer.Side || peer.State != "Established" || peer.AS != lab.BGPRouterAS {
				t.Errorf("director %s: peer %+v, want side %q, AS %d, Established", d.Label, peer, want[peer.Addr], lab.BGPRouterAS)
			}
			delete(want, peer.Addr)
		}
		if len(want) != 0 {
			t.Errorf("director %s: holdfast bgp lists no session with %v", d.Label, want)
		}
		rs := slices.Sorted(slices.Values(st.RealSide))
		if !slices.Equal(st.ClientSide, []string{vip}) || !slices.Equal(rs, realSide) {
			t.Errorf("director %s announces %v to the client side and %v to the real side, want [%s] and %v", d.Label, st.ClientSide, rs, vip, realSide)
		}
		t.Logf("director %s: %d peers Established, client side %v, real side %v", d.Label, len(st.Peers), st.ClientSide, rs)

		for _, side := range []struct {
			router string
			want   []string
			nh     netip.Addr
		}{
			{lab.BGPClientSide, []string{vip}, d.Uplink.Addr()},
			{lab.BGPRealSide, realSide, d.BGPAddr.Addr()},
		} {
			got := routerBIRD(l, side.router).routes(t, lab.BGPProtocol(d))
			if !samePrefixes(got, side.want...) {
				t.Errorf("%s router learned %v from director %s, want %v", side.router, prefixSet(got), d.Label, side.want)
			}
			for pfx, r := range got {
				if r.MED != fmt.Sprint(lab.BGPMED(d)) || r.NextHop != side.nh.String() {
					t.Errorf("%s router: %s from director %s has MED %s, next hop %s; want %d, %s", side.router, pfx, d.Label, r.MED, r.NextHop, lab.BGPMED(d), side.nh)
				}
			}
		}
	}
	vipVia, realsVia, err := l.BGPRoutes()
	if err != nil {
		t.Fatal(err)
	}
	if vipVia != l.Directors[0] || realsVia != l.Directors[0] {
		t.Errorf("the routers send the VIP to %v and the reals' default route to %v, want both to A", vipVia, realsVia)
	}
	c := newVIPClient(t, l.Client, false, netip.Addr{}) // a connection per request: rr spreads them
	got := countReals(t, c, httpURL(vipHTTP, "/"), 30, 1)
	if len(got) != 3 {
		t.Errorf("30 requests through the VIP answered by %v, want all three reals", got)
	}
	if a := directorCounters(t, l.Directors[0]); a.FlowsCreated == 0 {
		t.Errorf("A created no flow: the traffic did not go through A")
	}
	if b := directorCounters(t, l.Directors[1]); b.FlowsCreated != 0 {
		t.Errorf("B created %d flows while A announces the lower MED", b.FlowsCreated)
	}
}
