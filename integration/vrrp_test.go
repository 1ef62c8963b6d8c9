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

// VRRP failover tests (issue 4, item 3): the failover tests of
// failover_test.go, but nobody moves routes. keepalived runs in each
// director's namespace and moves the router's floating next hop and the
// reals' floating gateway to the director whose holdfast runs; the failover
// is SIGKILL of A's holdfast only, and keepalived A, still running, must give
// the addresses up because its health checks see holdfast gone.

// vrrpTimeout bounds each wait for a VRRP state: the health script runs once
// a second, an election takes under half a second.
const vrrpTimeout = 10 * time.Second

// requireKeepalived skips t unless it runs as root with keepalived installed.
func requireKeepalived(t *testing.T) {
	t.Helper()
	requireRoot(t)
	if _, err := exec.LookPath("keepalived"); err != nil {
		t.Skipf("skipping: the VRRP tests need keepalived(8) (Debian package keepalived; .ci/run installs it): %v", err)
	}
}

// newVRRPPair is newPair in a VRRP lab. A starts first and becomes master;
// then B starts and settles as backup, so that a failover measures the
// takeover alone, not B's start.
func newVRRPPair(t *testing.T) *pair {
	t.Helper()
	requireKeepalived(t)
	l := NewLab(t, lab.Options{Directors: 2, Reals: 3, VRRP: true})
	if err := l.ServeBackends(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, d := range l.Directors {
				t.Logf("keepalived %s:\n%s", d.Label, tail(l.Keepalived(i).Stderr()+l.Keepalived(i).Stdout(), 60))
			}
		}
	})
	if m := l.Active(); m != nil {
		t.Fatalf("director %s is VRRP master before any holdfast runs", m.Label)
	}
	p := &pair{l: l, vip: vipHTTP}
	reals := append([]string{"--service", "tcp:" + vipHTTP.String(), "--scheduler", "rr"}, realFlags(l, lab.DefaultHTTPPort)...)
	for i, d := range l.Directors {
		args := append(directorArgs(d, reals...), "--recovery-rate", "100000")
		if !slices.Contains(args, lab.HealthTUN) {
			t.Fatalf("director args %q do not name the TUN keepalived checks (%s)", args, lab.HealthTUN)
		}
		p.args[i] = args
		p.dirs[i] = StartDirector(t, d.NS, args...)
		ctx, cancel := context.WithTimeout(context.Background(), vrrpTimeout)
		var err error
		if i == 0 {
			err = l.WaitVRRPMaster(ctx, 0)
		} else {
			err = l.WaitVRRPState(ctx, i, lab.VRRPBackupState)
		}
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	if m := l.Active(); m != l.Directors[0] {
		t.Fatalf("VRRP master %v with both directors up, want A (nopreempt keeps the first master)", m)
	}
	return p
}

// vrrpFailover kills A's holdfast (SIGKILL; keepalived A stays up) and waits
// until B holds both floating addresses and A none. It returns how long
// mastership took to move, from the SIGKILL on.
func vrrpFailover(t *testing.T, p *pair) time.Duration {
	t.Helper()
	l := p.l
	ka := l.Keepalived(0)
	scriptFailures := countLines(ka, "VRRP_Script(holdfast_up) failed")
	start := time.Now()
	killDirector(t, p.dirs[0])
	ctx, cancel := context.WithTimeout(context.Background(), vrrpTimeout)
	defer cancel()
	if err := l.WaitVRRPMaster(ctx, 1); err != nil {
		t.Fatalf("after A's holdfast was killed: %v", err)
	}
	took := time.Since(start)
	p.active = 1
	if got := l.Active(); got != l.Directors[1] {
		t.Fatalf("Active() = %v after the takeover, want B", got)
	}
	if err := l.WaitVRRPState(ctx, 1, lab.VRRPMasterState); err != nil {
		t.Fatal(err)
	}
	// A gave mastership up itself (FAULT: holdfast is gone), with its
	// keepalived still running, and its health script saw it too (the TUN's
	// deletion, tracked through netlink, is what acts first).
	if err := l.WaitVRRPState(ctx, 0, lab.VRRPFaultState); err != nil {
		t.Fatal(err)
	}
	seen := 0
	if _, err := ka.WaitForLine(ctx, func(ln lab.Line) bool {
		if strings.Contains(ln.Text, "VRRP_Script(holdfast_up) failed") {
			seen++
		}
		return seen > scriptFailures
	}); err != nil {
		t.Fatalf("keepalived A: no health script failure after holdfast died: %v", err)
	}
	select {
	case <-ka.Done():
		t.Fatal("keepalived A exited: the failover must come from its health checks, not from its death")
	default:
	}
	t.Logf("VRRP: B master %v after A's holdfast was killed", took.Round(time.Millisecond))
	return took
}

// requireOneTakeover checks that mastership moved exactly once: A became
// master once (at the start) and B once (the failover), so no advert was
// missed under load (a backup that misses three takes over on its own).
func requireOneTakeover(t *testing.T, l *lab.Lab) {
	t.Helper()
	for i, d := range l.Directors {
		if n := countLines(l.Keepalived(i), "(uplink) Entering MASTER STATE"); n != 1 {
			t.Errorf("keepalived %s entered MASTER %d times, want 1", d.Label, n)
		}
	}
}

func countLines(p *lab.Proc, substr string) int {
	n := 0
	for _, l := range p.Lines() {
		if strings.Contains(l.Text, substr) {
			n++
		}
	}
	return n
}

// TestVRRPTopology checks the VRRP lab without load: the shared uplink
// segment, routes through the floating addresses, keepalived deciding by
// holdfast's presence, Flip refused, and Close stopping keepalived.
func TestVRRPTopology(t *testing.T) {
	p := newVRRPPair(t)
	l := p.l
	if err := l.Flip(1); err == nil {
		t.Error("Flip(1) in a VRRP lab succeeded")
	}
	wantVIP := fmt.Sprintf("via %s dev %s", lab.VRRPNextHop, lab.UplinkBridgeName)
	if out, err := l.Router.IP("route", "get", lab.VIP.String()); err != nil || !strings.Contains(out, wantVIP) {
		t.Errorf("router: route to the VIP: %q, %v; want %q", out, err, wantVIP)
	}
	wantGW := fmt.Sprintf("via %s dev %s", lab.VRRPGateway, lab.RealIface)
	for _, r := range l.Reals {
		if out, err := r.IP("route", "get", lab.ClientAddr.String()); err != nil || !strings.Contains(out, wantGW) {
			t.Errorf("%s: route to the client: %q, %v; want %q", r.Label, out, err, wantGW)
		}
	}
	// Only the floating addresses move: no director ever holds a VIP or the
	// recovery address (its kernel would answer for it).
	for _, d := range l.Directors {
		out, err := d.IP("-4", "-o", "addr", "show")
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range []netip.Addr{lab.VIP, lab.RecoveryAddr} {
			if strings.Contains(out, " "+a.String()+"/") {
				t.Errorf("director %s holds %s:\n%s", d.Label, a, out)
			}
		}
	}
	// Requests go through A, then through B once A's holdfast is gone.
	c := newVIPClient(t, l.Client, false, netip.Addr{})
	for _, active := range []int{0, 1} {
		if active == 1 {
			vrrpFailover(t, p)
		}
		before, err := l.Router.LinkStats("d" + l.Directors[active].Label + "0")
		if err != nil {
			t.Fatal(err)
		}
		if got := countReals(t, c, httpURL(vipHTTP, "/"), 30, 1); len(got) != 3 {
			t.Errorf("director %s master: requests per real %v, want all three", l.Directors[active].Label, got)
		}
		after, err := l.Router.LinkStats("d" + l.Directors[active].Label + "0")
		if err != nil {
			t.Fatal(err)
		}
		if tx := after.TxPackets - before.TxPackets; tx < 4*30 {
			t.Errorf("director %s master: the router sent it %d packets for 30 requests, want at least 120", l.Directors[active].Label, tx)
		}
	}
	requireOneTakeover(t, l)

	ka := []*lab.Proc{l.Keepalived(0), l.Keepalived(1)}
	killDirector(t, p.dirs[1]) // Close would kill it, unexpectedly for its cleanup
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, k := range ka {
		select {
		case <-k.Done():
		default:
			t.Errorf("%s (pid %d) still running after Close", k.Name, k.PID())
		}
	}
}

// TestVRRPFailoverIdle is TestFailoverIdle through VRRP: 200 keep-alive
// connections make one request, A's holdfast dies, keepalived moves the
// addresses to B, and each connection makes 5 more on the same socket.
func TestVRRPFailoverIdle(t *testing.T) {
	p := newVRRPPair(t)
	conns := dialHTTP(t, p.l.Client, 200)
	requireNoErrors(t, "before failover", eachConn(conns, requests(1)))
	vrrpFailover(t, p)
	start := time.Now()
	errs := eachConn(conns, requests(1))
	t.Logf("first request of %d connections after the failover: %v", len(conns), time.Since(start).Round(time.Millisecond))
	requireNoErrors(t, "after failover", append(errs, eachConn(conns, requests(4))...))
	c := directorCounters(t, p.l.Directors[1])
	t.Logf("B: %d steered by probe, %d by cookie, %d recovered, %d adopted, %d stale, drops %v",
		c.ProbeSteers, c.CookieConfirmed, c.Recovered, c.Adopted, c.StaleFlows, nonZero(c.Drops))
	if c.Found() != len(conns) || c.Failed() != 0 || c.ClientResets != 0 {
		t.Fatalf("B found %d connections (%d adopted), want %d; failed %v, client resets %d",
			c.Found(), c.Adopted, len(conns), c.RecoveryFailed, c.ClientResets)
	}
	requireOneTakeover(t, p.l)
}

// TestVRRPFailoverBusy is TestFailoverBusy through VRRP: 64 connections loop
// over 16 KiB-1 MiB responses while A's holdfast dies and keepalived moves
// the addresses to B. Every body is checked.
func TestVRRPFailoverBusy(t *testing.T) {
	p := newVRRPPair(t)
	var took time.Duration
	stall := busyThrough(t, p, 64, busySizes, func() { took = vrrpFailover(t, p) })
	t.Logf("VRRP busy failover: mastership moved in %v, longest stall of a connection after it %v",
		took.Round(time.Millisecond), stall.Round(time.Millisecond))
	requireOneTakeover(t, p.l)
}
