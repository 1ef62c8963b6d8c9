package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"holdfast/daemon/adminapi"
	"holdfast/lab"
)

// The BGP lab (lab.Options.BGP, issue 16's acceptance): directors A (d1,
// MED 10) and B (d2, MED 20) run holdfast with the --bgp-* flags and peer
// with a client-side router (198.18.1N.1, a link each, BIRD checks the
// link) and a real-side router (198.18.20.1 on the reals' segment, where a
// dead director's link stays up: BFD, which holdfast answers by default,
// notices in 0.9 s, the hold timer alone in 9 s), both BIRD 2.
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
			// The routers ask for BFD (bfd on); holdfast answers (--bfd
			// passive by default), at the router's 300 ms x 3.
			if b := peer.BFD; b == nil || b.State != "Up" || b.RemoteState != "Up" || b.DetectTime != 0.9 {
				t.Errorf("director %s: BFD with %s %+v, want Up both ways, detection 0.9 s", d.Label, peer.Addr, b)
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

// bgpFailoverResult is what one failover of TestBGPLabFailover measured.
type bgpFailoverResult struct {
	mode                   string
	clientMoved, realMoved time.Duration // from the links going down to each router's kernel route through B
	idle, idleLost         int           // idle keep-alive connections, and those that did not survive
	wrk                    wrkResult
	wrkMax                 string // wrk's longest request
}

func (r bgpFailoverResult) wrkErrors() int {
	return r.wrk.connectErr + r.wrk.readErr + r.wrk.writeErr + r.wrk.non2xx
}

// bgpWrkTimeout is wrk's --timeout in the BGP failovers: a request in
// flight when A dies waits for the real-side router, which notices only
// after its hold timer (9 s: A's link to it stays up) for a director
// without BFD, and then for the TCP retransmission that follows (the
// backoff doubles from 200 ms: the one after a 9 s blackout comes 12.6 s
// after the first loss at worst). A stalled socket is one that waits
// longer than that.
const bgpWrkTimeout = 20 * time.Second

var wrkLatency = regexp.MustCompile(`Latency\s+\S+\s+\S+\s+(\S+)`)

// startWrk runs wrk (16 keep-alive connections, 2 threads, for d) from the
// lab's client to VIP:80 for 16 KiB responses; the channel gets its output.
func startWrk(l *lab.Lab, d time.Duration) <-chan string {
	done := make(chan string, 1)
	go func() {
		out, err := runIn(l.Client, d+60*time.Second, "wrk", "-t2", "-c16", "-d"+strconv.Itoa(int(d.Seconds()))+"s",
			"--timeout", strconv.Itoa(int(bgpWrkTimeout.Seconds()))+"s", httpURL(vipHTTP, "/bytes?n=16384"))
		if err != nil {
			out += "\nwrk: " + err.Error()
		}
		done <- out
	}()
	return done
}

// bgpFailover is the acceptance failover in a BGP lab whose routers send
// the traffic to A: 200 idle keep-alive connections make a request, wrk
// runs; once loaded (all of it through A) says the load has its flows on
// A, A's links go down, then kill kills A's announcer (holdfast, or BIRD
// of the kernel-NAT anchor); once both routers send the traffic to B,
// each idle connection makes 5 more requests on its socket, and wrk ends.
func bgpFailover(t *testing.T, l *lab.Lab, mode string, loaded func() bool, kill func()) bgpFailoverResult {
	t.Helper()
	res := bgpFailoverResult{mode: mode, idle: 200}
	conns := dialVIP(t, l.Client, vipHTTP, res.idle)
	requireNoErrors(t, "before the failover", eachConn(conns, requests(1)))
	wrk := startWrk(l, 25*time.Second)
	// The event to fail over on: the load has its flows on A. Nothing
	// announces it: poll.
	if d, ok := within(10*time.Second, loaded); !ok {
		t.Fatalf("the load has no flows on A after %v", d)
	}
	start := time.Now()
	if err := l.Unplug(0); err != nil {
		t.Fatal(err)
	}
	kill()
	// Each router's kernel route moves when BIRD exports the new best
	// route, which says so to nobody: poll both.
	if d, ok := within(30*time.Second, func() bool {
		vip, reals, err := l.BGPRoutes()
		if err != nil {
			t.Fatal(err)
		}
		if vip == l.Directors[1] && res.clientMoved == 0 {
			res.clientMoved = time.Since(start)
		}
		if reals == l.Directors[1] && res.realMoved == 0 {
			res.realMoved = time.Since(start)
		}
		return res.clientMoved != 0 && res.realMoved != 0
	}); !ok {
		t.Fatalf("the routers did not move to B within %v (client side after %v, real side after %v)", d, res.clientMoved, res.realMoved)
	}
	errs := eachConn(conns, func(_ int, h *httpConn) error {
		// Five requests, the first needs the connection's flow on B.
		return requests(5)(0, h)
	})
	res.idleLost = len(errs)
	if len(errs) > 0 {
		t.Logf("%s: %d of %d idle connections lost; first: %v", mode, len(errs), res.idle, errs[0])
	}
	out := <-wrk
	res.wrk = parseWrk(t, out)
	if m := wrkLatency.FindStringSubmatch(out); m != nil {
		res.wrkMax = m[1]
	}
	t.Logf("%s: client-side router through B %v after the links went down, real-side router %v; idle connections %d/%d survived; wrk %d requests, socket errors connect %d read %d write %d, timeouts (> %v) %d, non-2xx %d, longest request %s",
		mode, res.clientMoved.Round(time.Millisecond), res.realMoved.Round(time.Millisecond), res.idle-res.idleLost, res.idle,
		res.wrk.requests, res.wrk.connectErr, res.wrk.readErr, res.wrk.writeErr, bgpWrkTimeout, res.wrk.timeoutErr, res.wrk.non2xx, res.wrkMax)
	if res.clientMoved > time.Second {
		t.Errorf("%s: the client-side router took %v to move (its link to A went down: BIRD's check link should drop the session at once)", mode, res.clientMoved)
	}
	// BFD (holdfast's by default, BIRD's on the kernel-NAT directors):
	// 3 x 300 ms.
	if res.realMoved > 2*time.Second {
		t.Errorf("%s: the real-side router took %v to move, want BFD's 0.9 s (with room for a loaded machine: 2 s)", mode, res.realMoved)
	}
	t.Cleanup(func() {
		for _, h := range conns {
			h.c.Close()
		}
	})
	return res
}

// TestBGPLabFailover is issue 16's acceptance failover, holdfast against
// its anchor in the same BGP lab: d1 (A) dies (its links go down, then
// SIGKILL), the routers move to d2 (B): the client-side router at once,
// the real-side router through BFD (its link to A stays up). With holdfast all 200 idle
// keep-alive connections survive on their sockets and wrk sees no error
// and no stalled socket; then d1 comes back (the routers return to it,
// MED 10) and d2 gets SIGTERM (withdraw, drain, exit 0) with wrk running,
// losing nothing. With kernel NAT (iptables DNAT on each director, BIRD
// announcing the VIP from each with the same MEDs) the same failover loses
// connections. Both are logged side by side.
func TestBGPLabFailover(t *testing.T) {
	requireBIRD(t)
	if _, err := exec.LookPath("wrk"); err != nil {
		t.Fatal("needs wrk (.ci/run installs it)")
	}
	var results []bgpFailoverResult
	t.Run("holdfast", func(t *testing.T) { results = append(results, bgpFailoverHoldfast(t)) })
	t.Run("kernel_NAT", func(t *testing.T) { results = append(results, bgpFailoverKernelNAT(t)) })
	var b strings.Builder
	fmt.Fprintf(&b, "BGP failover, d1 unplugged then killed, side by side:\n%-34s", "")
	for _, r := range results {
		fmt.Fprintf(&b, "%14s", r.mode)
	}
	row := func(name string, f func(bgpFailoverResult) string) {
		fmt.Fprintf(&b, "\n%-34s", name)
		for _, r := range results {
			fmt.Fprintf(&b, "%14s", f(r))
		}
	}
	row("client-side router moved after", func(r bgpFailoverResult) string { return r.clientMoved.Round(time.Millisecond).String() })
	row("real-side router moved after", func(r bgpFailoverResult) string { return r.realMoved.Round(time.Millisecond).String() })
	row("idle connections survived", func(r bgpFailoverResult) string { return fmt.Sprintf("%d/%d", r.idle-r.idleLost, r.idle) })
	row("wrk requests", func(r bgpFailoverResult) string { return fmt.Sprint(r.wrk.requests) })
	row("wrk socket errors + non-2xx", func(r bgpFailoverResult) string { return fmt.Sprint(r.wrkErrors()) })
	row("wrk stalled sockets (timeouts)", func(r bgpFailoverResult) string { return fmt.Sprint(r.wrk.timeoutErr) })
	row("wrk longest request", func(r bgpFailoverResult) string { return r.wrkMax })
	t.Log(b.String())
}

func bgpFailoverHoldfast(t *testing.T) bgpFailoverResult {
	p := newBGPPair(t, nil)
	l := p.l
	res := bgpFailover(t, l, "holdfast",
		func() bool { return directorCounters(t, l.Directors[0]).FlowsCreated >= 200+16 },
		func() { killDirector(t, p.dirs[0]) })
	b := directorCounters(t, l.Directors[1])
	t.Logf("B after the failover: %d steered by cookie, %d by probe, %d recovered, %d adopted, %d client resets, failed recoveries %v",
		b.CookieConfirmed, b.ProbeSteers, b.Recovered, b.Adopted, b.ClientResets, b.RecoveryFailed)
	if res.idleLost != 0 || res.wrk.requests == 0 || res.wrkErrors() != 0 || res.wrk.timeoutErr != 0 || b.ClientResets != 0 {
		t.Fatalf("holdfast: want every idle connection, wrk requests with no error and no stalled socket, no client reset; wrk said:\n%s", res.wrk.out)
	}

	// d1 comes back, then d2 leaves (SIGTERM) with wrk running.
	wrk := startWrk(l, 15*time.Second)
	conns := dialVIP(t, l.Client, vipHTTP, 50)
	requireNoErrors(t, "on B", eachConn(conns, requests(1)))
	if err := l.Replug(0); err != nil {
		t.Fatal(err)
	}
	p.restart(t, 0)
	back := waitActive(t, l, 0, 20*time.Second)
	requireNoErrors(t, "after d1 came back", eachConn(conns, requests(2)))
	if err := p.dirs[1].Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	killed.Store(p.dirs[1], true) // stopped here, not by StartDirector's cleanup
	sigterm := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	st, err := p.dirs[1].Wait(ctx)
	if err != nil {
		t.Fatalf("d2 did not exit after SIGTERM: %v", err)
	}
	took := time.Since(sigterm)
	requireNoErrors(t, "after d2 stopped", eachConn(conns, requests(2)))
	r := parseWrk(t, <-wrk)
	a := directorCounters(t, l.Directors[0])
	t.Logf("holdfast: d1 back, routers through it %v after its READY=1; d2 SIGTERM: exit %d after %v; wrk %d requests, socket errors connect %d read %d write %d, timeouts %d, non-2xx %d; 50 connections made 5 requests across both; A: %d recovered, %d steered by cookie, %d client resets",
		back.Round(time.Millisecond), st.ExitCode(), took.Round(time.Millisecond), r.requests, r.connectErr, r.readErr, r.writeErr, r.timeoutErr, r.non2xx,
		a.Recovered, a.CookieConfirmed, a.ClientResets)
	if st.ExitCode() != 0 || r.requests == 0 || r.connectErr+r.readErr+r.writeErr+r.timeoutErr+r.non2xx != 0 || a.ClientResets != 0 {
		t.Fatalf("d1 back and d2 stopped: want exit 0, wrk with no error and no timeout, no client reset; wrk said:\n%s", r.out)
	}
	return res
}

func bgpFailoverKernelNAT(t *testing.T) bgpFailoverResult {
	requireBIRD(t)
	l := NewLab(t, bgpLabOptions)
	if err := l.ServeBackends(); err != nil {
		t.Fatal(err)
	}
	for i, d := range l.Directors {
		kernelNATDirector(t, l, d)
		if _, err := l.StartDirectorBIRD(i); err != nil {
			t.Fatal(err)
		}
	}
	waitSessions(t, l, l.Directors...)
	waitActive(t, l, 0, 10*time.Second)
	a := l.Directors[0]
	res := bgpFailover(t, l, "kernel NAT",
		func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			entries, err := a.ConntrackTable(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return len(entries) >= 200+16
		},
		func() {
			b := l.BIRD("dir" + a.Label)
			if err := b.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			<-b.Done()
		})
	if res.idleLost == 0 && res.wrkErrors() == 0 {
		t.Errorf("kernel NAT lost nothing in the failover: the anchor no longer shows what holdfast adds")
	}
	return res
}

// TestBGPLabHealthGate: a director announces a VIP to the client side
// only while a real of it has passed a health check. With every real's
// port closed the client-side router learns nothing from it over three
// check intervals (the real side, which health does not gate, has its
// routes); the VIP appears within a check interval (plus the director's
// quarter-second announce tick and the update's trip) of a real starting to
// listen, and is withdrawn as fast when the last real stops, the session
// staying up.
func TestBGPLabHealthGate(t *testing.T) {
	requireBIRD(t)
	const interval = time.Second
	l := NewLab(t, lab.Options{Directors: 1, Reals: 2, BGP: true})
	d := l.Directors[0]
	svc := netip.AddrPortFrom(lab.VIP, 8080) // nothing listens on the reals' 8080 yet
	args := []string{"--check-interval", interval.String(), "--check-timeout", "500ms", "--check-rise", "1", "--check-fall", "1",
		"--service", "tcp:" + svc.String(), "--scheduler", "rr", "--check", "tcp"}
	for _, r := range l.Reals {
		args = append(args, "--real", netip.AddrPortFrom(r.Addr, svc.Port()).String())
	}
	StartDirector(t, d.NS, directorArgs(d, args...)...)
	waitSessions(t, l, d)
	client, real := routerBIRD(l, lab.BGPClientSide), routerBIRD(l, lab.BGPRealSide)
	proto := lab.BGPProtocol(d)

	// Nothing to wait for: the VIP must stay absent. Watch for three check
	// intervals, every poll a chance to see it.
	if took, seen := within(3*interval, func() bool { return len(client.routes(t, proto)) != 0 }); seen {
		t.Fatalf("with every real down, the client-side router learned %v from the director after %v", prefixSet(client.routes(t, proto)), took)
	}
	if st := bgpShow(t, d); len(st.ClientSide) != 0 {
		t.Errorf("with every real down, holdfast bgp says it announces %v to the client side", st.ClientSide)
	}
	if got := real.routes(t, proto); !samePrefixes(got, "0.0.0.0/0", netip.PrefixFrom(lab.RecoveryAddr, 32).String()) {
		t.Errorf("the real-side router learned %v, want the default route and the recovery address (not gated by health)", prefixSet(got))
	}

	ln, err := l.Reals[1].Listen("tcp", netip.AddrPortFrom(l.Reals[1].Addr, svc.Port()).String())
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	vip := netip.PrefixFrom(lab.VIP, 32).String()
	limit := interval + time.Second
	up, ok := within(3*limit, func() bool { return samePrefixes(client.routes(t, proto), vip) })
	if !ok || up > limit {
		t.Fatalf("the VIP reached the client-side router %v after a real came up (seen: %v), want within %v", up, ok, limit)
	}
	if vipVia, _, err := l.BGPRoutes(); err != nil || vipVia != d {
		t.Errorf("the client-side router's kernel routes the VIP to %v (%v), want director %s", vipVia, err, d.Label)
	}
	ln.Close()
	down, ok := within(3*limit, func() bool { return len(client.routes(t, proto)) == 0 })
	if !ok || down > limit {
		t.Fatalf("the VIP left the client-side router %v after the last real went down (gone: %v), want within %v", down, ok, limit)
	}
	if st := protoState(t, l, lab.BGPClientSide, d); st != "Established" {
		t.Errorf("client-side session %s after the withdrawal, want Established (withdrawn, not dropped)", st)
	}
	t.Logf("every real down: no VIP over %v; a real up: VIP on the client-side router after %v; the last real down: withdrawn after %v (check interval %v, rise 1, fall 1)",
		3*interval, up.Round(time.Millisecond), down.Round(time.Millisecond), interval)
}

// pinnedClient is a second client address whose traffic both routers
// keep sending to A whatever BGP says (policy routes, as a router that
// has not converged yet would): what A does with a connection during its
// drain is then visible.
var pinnedClient = netip.MustParseAddr("198.18.1.3")

func pinToA(t *testing.T, l *lab.Lab) {
	t.Helper()
	a := l.Directors[0]
	for _, s := range []struct {
		ns   *lab.NS
		args []string
	}{
		{l.Client, []string{"addr", "add", netip.PrefixFrom(pinnedClient, 24).String(), "dev", lab.ClientIface}},
		{l.Router, []string{"rule", "add", "from", pinnedClient.String(), "lookup", "200", "pref", "100"}},
		{l.Router, []string{"route", "add", netip.PrefixFrom(lab.VIP, 32).String(), "via", a.Uplink.Addr().String(), "table", "200"}},
		{l.RealRouter, []string{"rule", "add", "to", pinnedClient.String(), "lookup", "200", "pref", "100"}},
		{l.RealRouter, []string{"route", "add", "default", "via", a.BGPAddr.Addr().String(), "table", "200"}},
	} {
		if _, err := s.ns.IP(s.args...); err != nil {
			t.Fatal(err)
		}
	}
}

// reqLoop makes requests on h back to back until stop is closed or one
// fails, and records when each succeeded.
type reqLoop struct {
	mu    sync.Mutex
	ok    []time.Time
	err   error
	errAt time.Time
	done  chan struct{}
}

func startReqLoop(h *httpConn, stop <-chan struct{}) *reqLoop {
	r := &reqLoop{done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			_, _, _, err := h.get("/")
			r.mu.Lock()
			if err != nil {
				r.err, r.errAt = err, time.Now()
				r.mu.Unlock()
				return
			}
			r.ok = append(r.ok, time.Now())
			r.mu.Unlock()
		}
	}()
	return r
}

func (r *reqLoop) snapshot() (ok []time.Time, errAt time.Time, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ok), r.errAt, r.err
}

// okAfter is how many requests succeeded after t.
func okAfter(ok []time.Time, t time.Time) int {
	n := 0
	for _, at := range ok {
		if at.After(t) {
			n++
		}
	}
	return n
}

// TestBGPLabWithdrawBeforeDrain: SIGTERM on the active director (A) with
// a keep-alive connection making requests back to back: both routers lose
// A's routes at once (withdrawn, the sessions still up) and send the
// traffic to B; A keeps forwarding an established connection for the
// drain (a client whose packets the routers still send to A, pinToA),
// then exits 0; the connection the routers moved loses no request.
func TestBGPLabWithdrawBeforeDrain(t *testing.T) {
	const drain = 4 * time.Second
	p := newBGPPair(t, func(l *lab.Lab) { pinToA(t, l) }, []string{"--bgp-drain", drain.String()})
	l := p.l
	a := l.Directors[0]
	moving := dialVIP(t, l.Client, vipHTTP, 1)[0]
	dial := l.Client.Dialer(&net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(pinnedClient, 0))})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	pc, err := dial(ctx, "tcp4", vipHTTP.String())
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	pinned := &httpConn{c: pc, br: bufio.NewReader(pc), vip: vipHTTP}
	t.Cleanup(func() { pc.Close() })
	requireNoErrors(t, "through A", eachConn([]*httpConn{moving, pinned}, requests(1)))
	if n := directorCounters(t, a).FlowsCreated; n != 2 {
		t.Fatalf("A created %d flows, want the 2 connections", n)
	}

	stop := make(chan struct{})
	mv, pn := startReqLoop(moving, stop), startReqLoop(pinned, stop)
	// Requests flow on both before the signal: wait for a few.
	if _, ok := within(5*time.Second, func() bool {
		m, _, _ := mv.snapshot()
		q, _, _ := pn.snapshot()
		return len(m) >= 5 && len(q) >= 5
	}); !ok {
		t.Fatal("no requests on the two connections")
	}
	sigterm := time.Now()
	killed.Store(p.dirs[0], true) // stopped here, not by StartDirector's cleanup
	if err := p.dirs[0].Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	client, real := routerBIRD(l, lab.BGPClientSide), routerBIRD(l, lab.BGPRealSide)
	proto := lab.BGPProtocol(a)
	gone, ok := within(drain, func() bool { return len(client.routes(t, proto)) == 0 && len(real.routes(t, proto)) == 0 })
	if !ok || gone > time.Second {
		t.Fatalf("A's routes still on the routers %v after SIGTERM (gone: %v): client side %v, real side %v", gone, ok,
			prefixSet(client.routes(t, proto)), prefixSet(real.routes(t, proto)))
	}
	for _, r := range []string{lab.BGPClientSide, lab.BGPRealSide} {
		if st := protoState(t, l, r, a); st != "Established" {
			t.Errorf("%s router's session with A is %s once A withdrew, want Established (withdrawn during the drain, not dropped)", r, st)
		}
	}
	moved := waitActive(t, l, 1, drain)
	moved += gone

	wctx, wcancel := context.WithTimeout(context.Background(), drain+10*time.Second)
	defer wcancel()
	st, err := p.dirs[0].Wait(wctx)
	if err != nil {
		t.Fatalf("A did not exit after SIGTERM: %v", err)
	}
	exited := time.Since(sigterm)
	if st.ExitCode() != 0 || exited < drain {
		t.Errorf("A exited with %v %v after SIGTERM, want status 0 after the drain (%v)", st, exited, drain)
	}
	exitAt := time.Now()
	// The moved connection goes on after A is gone: wait for 10 more.
	if _, ok := within(10*time.Second, func() bool { m, _, _ := mv.snapshot(); return okAfter(m, exitAt) >= 10 }); !ok {
		t.Errorf("the moved connection made no 10 requests after A exited")
	}
	close(stop)
	pc.Close() // A no longer forwards it: unblock its last request
	<-mv.done
	<-pn.done
	mOK, _, mErr := mv.snapshot()
	pOK, pErrAt, pErr := pn.snapshot()
	if mErr != nil {
		t.Errorf("the connection the routers moved lost a request: %v", mErr)
	}
	lastPinned := time.Duration(0)
	if len(pOK) > 0 {
		lastPinned = pOK[len(pOK)-1].Sub(sigterm)
	}
	if lastPinned < drain-500*time.Millisecond {
		t.Errorf("A forwarded the pinned connection until %v after SIGTERM (error %v at %v), want through the drain (%v)", lastPinned, pErr, pErrAt.Sub(sigterm), drain)
	}
	b := directorCounters(t, l.Directors[1])
	t.Logf("SIGTERM on A: its routes gone from both routers after %v (sessions up), both routers through B after %v; A forwarded the pinned connection until %v after SIGTERM (%d requests during the drain), exited %d after %v; the moved connection: %d requests in all, %d during the drain, error %v; B: %d flows created, %d steered by cookie, %d by probe, %d adopted, %d recovered, %d client resets",
		gone.Round(time.Millisecond), moved.Round(time.Millisecond), lastPinned.Round(time.Millisecond), okAfter(pOK, sigterm), st.ExitCode(), exited.Round(time.Millisecond),
		len(mOK), okAfter(mOK, sigterm)-okAfter(mOK, exitAt), mErr, b.FlowsCreated, b.CookieConfirmed, b.ProbeSteers, b.Adopted, b.Recovered, b.ClientResets)
	if b.ClientResets != 0 || b.FlowsCreated == 0 {
		t.Errorf("B: %d flows created, %d client resets; want the moved connection, no reset", b.FlowsCreated, b.ClientResets)
	}
}
