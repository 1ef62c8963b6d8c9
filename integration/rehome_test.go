package integration

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"holdfast/lab"
)

// Backend failure tests (issue 7): connections on a real that dies or is
// drained move to another real at their next request.

const rehomePort = 8080

// realServers runs the lab backend on rehomePort on every real's address of
// a family, each server owned by the test so that it can be stopped and
// started again.
type realServers struct {
	l    *lab.Lab
	f    family
	mu   sync.Mutex
	srvs []*http.Server
}

func startRealServers(t *testing.T, l *lab.Lab) *realServers {
	return startRealServersOf(t, l, ipv4)
}

func startRealServersOf(t *testing.T, l *lab.Lab, f family) *realServers {
	rs := &realServers{l: l, f: f, srvs: make([]*http.Server, len(l.Reals))}
	for i := range l.Reals {
		rs.start(t, i)
	}
	t.Cleanup(func() {
		rs.mu.Lock()
		defer rs.mu.Unlock()
		for _, s := range rs.srvs {
			if s != nil {
				s.Close()
			}
		}
	})
	return rs
}

func (rs *realServers) start(t *testing.T, i int) {
	t.Helper()
	r := rs.l.Reals[i]
	ln, err := r.Listen("tcp", netip.AddrPortFrom(rs.f.addr(r), rehomePort).String())
	if err != nil {
		t.Fatalf("%s: %v", r.Label, err)
	}
	srv := &http.Server{Handler: lab.HTTPHandler(r.Label, &r.Stats)}
	go srv.Serve(ln)
	rs.mu.Lock()
	rs.srvs[i] = srv
	rs.mu.Unlock()
}

func (rs *realServers) stop(i int) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.srvs[i].Close()
	rs.srvs[i] = nil
}

func rehomeArgs(l *lab.Lab, extra ...string) []string {
	return rehomeArgsOf(l, ipv4, extra...)
}

// rehomeArgsOf are the director flags of the rehome service of family f:
// VIP:rehomePort (or [VIP6]) over the reals' addresses of f, health checked.
func rehomeArgsOf(l *lab.Lab, f family, extra ...string) []string {
	vip := netip.AddrPortFrom(f.vip().Addr(), rehomePort)
	a := []string{"--service", "tcp:" + vip.String(), "--scheduler", "rr",
		"--check", "tcp", "--check-interval", "300ms", "--check-timeout", "200ms", "--check-fall", "3", "--check-rise", "2"}
	a = append(a, f.realFlags(l, rehomePort)...)
	return append(a, extra...)
}

func rehomeConns(t *testing.T, l *lab.Lab, n int) []*httpConn {
	t.Helper()
	return dialVIP(t, l.Client, netip.AddrPortFrom(lab.VIP, rehomePort), n)
}

// 120 keep-alive connections over 3 reals; one real is black-holed (it stays
// silent, as a dead machine does); every connection makes 5 more requests on
// its socket: none fails, none reconnects.
func TestRehomeDeadReal(t *testing.T) {
	testRehomeDeadReal(t, NewLab(t, lab.Options{Directors: 1, Reals: 3}), ipv4)
}

// testRehomeDeadReal is TestRehomeDeadReal in l over family f; the
// connections that move are recovered on another real, a recovery dial
// from f's recovery address.
func testRehomeDeadReal(t *testing.T, l *lab.Lab, f family) {
	t.Helper()
	startRealServersOf(t, l, f)
	StartDirector(t, l.Directors[0].NS, directorArgs(l.Directors[0], rehomeArgsOf(l, f)...)...)
	conns := dialVIP(t, l.Client, netip.AddrPortFrom(f.vip().Addr(), rehomePort), 120)
	owner := owners(t, conns)
	dead := l.Reals[1]
	tables := "iptables"
	if f.ipv6 {
		tables = "ip6tables"
	}
	for _, chain := range []string{"INPUT", "OUTPUT"} {
		if out, err := runIn(dead.NS, 10*time.Second, tables, "-w", "-A", chain, "-j", "DROP"); err != nil {
			t.Fatalf("black-holing %s: %v\n%s", dead.Label, err, out)
		}
	}
	var longest atomic.Int64
	var moved atomic.Int64
	errs := eachConn(conns, func(i int, h *httpConn) error {
		for k := range 5 {
			start := time.Now()
			real, _, _, err := h.get("/")
			if err != nil {
				return fmt.Errorf("connection %d (on %s), request %d: %w", i, owner[i], k, err)
			}
			lab.RaiseMax(&longest, int64(time.Since(start)))
			if real == dead.Label {
				return fmt.Errorf("connection %d answered by the dead real", i)
			}
			if k == 0 && real != owner[i] {
				moved.Add(1)
			}
		}
		return nil
	})
	requireNoErrors(t, "after the black hole", errs)
	c := directorCounters(t, l.Directors[0])
	t.Logf("%d connections moved off %s; longest request %v (health check: 3 x 300ms + 200ms); director: %d re-homed",
		moved.Load(), dead.Label, time.Duration(longest.Load()).Round(time.Millisecond), c.Recovered)
	onDead := 0
	for _, o := range owner {
		if o == dead.Label {
			onDead++
		}
	}
	if int(moved.Load()) != onDead || c.Recovered != onDead {
		t.Fatalf("%d connections were on %s, %d moved, %d recovered", onDead, dead.Label, moved.Load(), c.Recovered)
	}
}

// A rolling restart under a busy keep-alive load: each real in turn is
// drained with --rehome, restarted once `holdfast conns` shows no flow left
// on it, and added back. No request fails: a drained real's FIN or RST never
// reaches a client.
func TestRehomeRollingRestart(t *testing.T) {
	l := NewLab(t, lab.Options{Directors: 1, Reals: 3})
	servers := startRealServers(t, l)
	StartDirector(t, l.Directors[0].NS, directorArgs(l.Directors[0], rehomeArgs(l)...)...)
	conns := rehomeConns(t, l, 30)
	sizes := []int64{16 << 10, 64 << 10, 256 << 10}
	sums := map[int64]string{}
	for _, n := range sizes {
		sums[n] = lab.PatternSHA256(n)
	}
	ctx, stop := context.WithCancel(context.Background())
	var requests atomic.Int64
	done := make(chan []error, 1)
	go func() {
		done <- eachConn(conns, func(i int, h *httpConn) error {
			for k := 0; ctx.Err() == nil; k++ {
				n := sizes[(i+k)%len(sizes)]
				_, got, sum, err := h.get(fmt.Sprintf("/bytes?n=%d", n))
				if err != nil {
					return fmt.Errorf("connection %d: %w", i, err)
				}
				if got != n || sum != sums[n] {
					return fmt.Errorf("connection %d: corrupt body of %d bytes", i, n)
				}
				requests.Add(1)
			}
			return nil
		})
	}()
	service := "tcp:" + netip.AddrPortFrom(lab.VIP, rehomePort).String()
	for i, r := range l.Reals {
		addr := netip.AddrPortFrom(r.Addr, rehomePort).String()
		start := time.Now()
		if out, err := ctl(t, l, "real", "remove", "--rehome", addr); err != nil {
			t.Fatalf("drain %s: %v\n%s", r.Label, err, out)
		}
		deadline := time.Now().Add(20 * time.Second)
		for {
			var flows []struct{ Real string }
			ctlJSON(t, l, &flows, "conns")
			left := 0
			for _, f := range flows {
				if f.Real == addr {
					left++
				}
			}
			if left == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still has %d flows 20s after the drain", r.Label, left)
			}
			time.Sleep(50 * time.Millisecond) // polling the admin API: no event to wait on
		}
		drained := time.Since(start)
		servers.stop(i)
		servers.start(t, i)
		if out, err := ctl(t, l, "real", "add", "--service", service, "--real", addr); err != nil {
			t.Fatalf("add back %s: %v\n%s", r.Label, err, out)
		}
		t.Logf("%s drained in %v, restarted, added back (%d requests so far)", r.Label, drained.Round(time.Millisecond), requests.Load())
	}
	stop()
	requireNoErrors(t, "rolling restart", <-done)
	t.Logf("%d requests over 30 busy connections, 0 errors", requests.Load())
}

// Re-homing with window scales that differ everywhere (client 9, reals 7, 5
// and 9, through the director's recorded handshakes): 1 MiB responses arrive
// intact after the move.
func TestRehomeWindowScales(t *testing.T) {
	l := NewLab(t, lab.Options{Directors: 1, Reals: 3})
	// ilog2(max rmem) - 15 is the shift Linux advertises.
	for ns, rmem := range map[*lab.NS]string{
		l.Client:      "4096 131072 30000000", // 9
		l.Reals[0].NS: "4096 131072 6291456",  // 7
		l.Reals[1].NS: "4096 65536 1048576",   // 5
		l.Reals[2].NS: "4096 131072 16777216", // 9
	} {
		if err := ns.SetSysctl("net.ipv4.tcp_rmem", rmem); err != nil {
			t.Fatal(err)
		}
	}
	startRealServers(t, l)
	StartDirector(t, l.Directors[0].NS, directorArgs(l.Directors[0], rehomeArgs(l)...)...)
	conns := rehomeConns(t, l, 12)
	const size = 1 << 20
	sum := lab.PatternSHA256(size)
	get := func(i int, h *httpConn) error {
		_, n, s, err := h.get("/bytes?n=" + strconv.Itoa(size))
		if err == nil && (n != size || s != sum) {
			err = fmt.Errorf("connection %d: corrupt 1 MiB body (%d bytes)", i, n)
		}
		return err
	}
	requireNoErrors(t, "before", eachConn(conns, get))
	// Drain the reals one by one: every connection moves at least once,
	// most twice, between reals of different shifts.
	for _, r := range l.Reals[:2] {
		if out, err := ctl(t, l, "real", "remove", "--rehome", netip.AddrPortFrom(r.Addr, rehomePort).String()); err != nil {
			t.Fatalf("drain %s: %v\n%s", r.Label, err, out)
		}
		requireNoErrors(t, "after draining "+r.Label, eachConn(conns, func(i int, h *httpConn) error {
			for range 2 {
				if err := get(i, h); err != nil {
					return err
				}
			}
			return nil
		}))
	}
	var flows []struct{ Real, Kind string }
	ctlJSON(t, l, &flows, "conns")
	last := netip.AddrPortFrom(l.Reals[2].Addr, rehomePort).String()
	for _, f := range flows {
		if f.Real != last {
			t.Fatalf("a flow stayed on %s after both drains: %+v", f.Real, f)
		}
	}
}
