package integration

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"holdfast/lab"
)

// Failover tests (issue 3): two directors, a router, three reals and a client
// with Linux's default TCP sysctls. A failover is SIGKILL of the active
// director, then the router's VIP route and the reals' default route move to
// the other one.

// killed marks directors a test killed on purpose, for StartDirector's
// cleanup.
var killed sync.Map // *lab.Proc -> true

// pair is a lab with both directors running, A active; the test's load
// goes to vip.
type pair struct {
	l      *lab.Lab
	vip    netip.AddrPort
	dirs   [2]*lab.Proc
	args   [2][]string
	active int
}

// newPair builds the lab and starts A and B; extra[i] adds flags to director
// i. setup runs inside the lab before the directors start (sysctls, iptables).
func newPair(t *testing.T, setup func(*lab.Lab), extra ...[]string) *pair {
	t.Helper()
	return buildPair(t, lab.Options{Directors: 2, Reals: 3}, ipv4, setup, extra...)
}

// newFamilyPair is newPair in a dual-stack lab whose directors serve the
// HTTP service of both families (familyServices); the load goes to f's VIP.
func newFamilyPair(t *testing.T, f family, setup func(*lab.Lab), extra ...[]string) *pair {
	t.Helper()
	return buildPair(t, lab.Options{Directors: 2, Reals: 3, IPv6: true}, f, setup, extra...)
}

func buildPair(t *testing.T, opts lab.Options, f family, setup func(*lab.Lab), extra ...[]string) *pair {
	t.Helper()
	l := NewLab(t, opts)
	if err := l.ServeBackends(); err != nil {
		t.Fatal(err)
	}
	if setup != nil {
		setup(l)
	}
	p := &pair{l: l, vip: f.vip()}
	reals := familyServices(l)
	for i, d := range l.Directors {
		args := append(directorArgs(d, reals...), "--recovery-rate", "100000")
		if i < len(extra) {
			args = append(args, extra[i]...)
		}
		p.args[i] = args
		p.dirs[i] = StartDirector(t, d.NS, args...)
	}
	return p
}

// failover kills the active director and moves the routes to the other.
func (p *pair) failover(t *testing.T) {
	t.Helper()
	killDirector(t, p.dirs[p.active])
	p.active = 1 - p.active
	if err := p.l.Flip(p.active); err != nil {
		t.Fatal(err)
	}
}

// restart starts the (killed) director i again, without moving routes.
func (p *pair) restart(t *testing.T, i int) {
	t.Helper()
	p.dirs[i] = StartDirector(t, p.l.Directors[i].NS, p.args[i]...)
}

// killDirector sends SIGKILL to a director and waits for it to die; its
// StartDirector cleanup then expects no clean exit.
func killDirector(t *testing.T, p *lab.Proc) {
	t.Helper()
	killed.Store(p, true)
	if err := p.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL director: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := p.Wait(ctx); err != nil {
		t.Fatalf("director did not die: %v", err)
	}
}

// directorCounters reads the counters of director d's running holdfast
// (its admin API).
func directorCounters(t *testing.T, d *lab.Director) lab.DirectorStats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := lab.ReadStats(ctx, d)
	if err != nil {
		t.Fatalf("director counters: %v", err)
	}
	return c
}

// httpConn is one client TCP connection to a VIP, used for requests one at
// a time with Go's net/http wire code. It never reconnects: an error on it is
// a connection that did not survive.
type httpConn struct {
	c   net.Conn
	br  *bufio.Reader
	vip netip.AddrPort // what c is connected to, for the URL and Host header
}

// dialHTTP opens n connections from ns to vipHTTP.
func dialHTTP(t *testing.T, ns *lab.NS, n int) []*httpConn {
	t.Helper()
	return dialVIP(t, ns, vipHTTP, n)
}

// dialVIP opens n connections from ns to vip, of vip's family.
func dialVIP(t *testing.T, ns *lab.NS, vip netip.AddrPort, n int) []*httpConn {
	t.Helper()
	network := "tcp4"
	if vip.Addr().Is6() {
		network = "tcp6"
	}
	conns := make([]*httpConn, n)
	for i := range conns {
		c, err := ns.Dial(network, vip.String())
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = &httpConn{c: c, br: bufio.NewReader(c), vip: vip}
	}
	return conns
}

// dial opens n connections from the lab's client to the pair's VIP.
func (p *pair) dial(t *testing.T, n int) []*httpConn {
	t.Helper()
	return dialVIP(t, p.l.Client, p.vip, n)
}

// get sends GET path and reads the whole response; it returns the real that
// answered and the body's length and SHA-256.
func (h *httpConn) get(path string) (real string, n int64, sum string, err error) {
	h.c.SetDeadline(time.Now().Add(20 * time.Second))
	req, _ := http.NewRequest("GET", "http://"+h.vip.String()+path, nil)
	if err := req.Write(h.c); err != nil {
		return "", 0, "", fmt.Errorf("%s: write: %w", h.c.LocalAddr(), err)
	}
	resp, err := http.ReadResponse(h.br, req)
	if err != nil {
		return "", 0, "", fmt.Errorf("%s: read response: %w", h.c.LocalAddr(), err)
	}
	defer resp.Body.Close()
	s := sha256.New()
	n, err = io.Copy(s, resp.Body)
	if err != nil {
		return "", n, "", fmt.Errorf("%s: read body: %w", h.c.LocalAddr(), err)
	}
	if resp.StatusCode != http.StatusOK || resp.Close {
		return "", n, "", fmt.Errorf("%s: status %d, close %v", h.c.LocalAddr(), resp.StatusCode, resp.Close)
	}
	return resp.Header.Get(lab.RealHeader), n, hex.EncodeToString(s.Sum(nil)), nil
}

// eachConn runs f on every connection concurrently and returns the errors.
func eachConn(conns []*httpConn, f func(i int, h *httpConn) error) []error {
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for i, h := range conns {
		wg.Go(func() {
			if err := f(i, h); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errs
}

// owners makes one request on each connection and returns the real that
// answered each.
func owners(t *testing.T, conns []*httpConn) []string {
	t.Helper()
	owner := make([]string, len(conns))
	for i, h := range conns {
		real, _, _, err := h.get("/")
		if err != nil {
			t.Fatal(err)
		}
		owner[i] = real
	}
	return owner
}

func requests(n int) func(int, *httpConn) error {
	return func(_ int, h *httpConn) error {
		for range n {
			if _, _, _, err := h.get("/"); err != nil {
				return err
			}
		}
		return nil
	}
}

func requireNoErrors(t *testing.T, what string, errs []error) {
	t.Helper()
	if len(errs) > 0 {
		t.Fatalf("%s: %d connections failed; first: %v", what, len(errs), errors.Join(errs[:min(3, len(errs))]...))
	}
}

// idleFailover is test (a): 200 keep-alive connections make one request,
// the active director dies, and each makes 5 more on the same socket. It
// returns the pair and connections for follow-ups.
func idleFailover(t *testing.T, setup func(*lab.Lab), extraB ...string) (*pair, []*httpConn, []error) {
	return idleFailoverOn(t, newPair(t, setup, nil, extraB))
}

// idleFailoverOn is idleFailover on a given pair.
func idleFailoverOn(t *testing.T, p *pair) (*pair, []*httpConn, []error) {
	conns := p.dial(t, 200)
	requireNoErrors(t, "before failover", eachConn(conns, requests(1)))
	p.failover(t)
	// The first request of each connection is the one that needs its flow
	// back: time that round apart.
	start := time.Now()
	errs := eachConn(conns, requests(1))
	t.Logf("first request of %d connections after the failover: %v (%.0f connections/s)",
		len(conns), time.Since(start).Round(time.Millisecond), float64(len(conns))/time.Since(start).Seconds())
	return p, conns, append(errs, eachConn(conns, requests(4))...)
}

func TestFailoverIdle(t *testing.T) {
	p, conns, errs := idleFailover(t, nil)
	checkIdleFailover(t, p, conns, errs)
}

// checkIdleFailover requires every connection of an idle failover to have
// survived and been found by the new director.
func checkIdleFailover(t *testing.T, p *pair, conns []*httpConn, errs []error) {
	t.Helper()
	requireNoErrors(t, "after failover", errs)
	c := directorCounters(t, p.l.Directors[1])
	t.Logf("B: %d steered by probe, %d by cookie, %d recovered, %d adopted, %d stale, drops %v",
		c.ProbeSteers, c.CookieConfirmed, c.Recovered, c.Adopted, c.StaleFlows, nonZero(c.Drops))
	if c.Found() != len(conns) || c.Failed() != 0 || c.ClientResets != 0 {
		t.Fatalf("B found %d (steered %d + %d, recovered %d, adopted %d), want %d connections; failed %v, client resets %d",
			c.Found(), c.ProbeSteers, c.CookieConfirmed, c.Recovered, c.Adopted, len(conns), c.RecoveryFailed, c.ClientResets)
	}
}

// With --recovery=off, B is a plain NAT director without state sync: the
// same test must see resets (this is the comparison point, and shows the
// test can fail).
func TestFailoverIdleRecoveryOff(t *testing.T) {
	_, conns, errs := idleFailover(t, nil, "--recovery=off")
	t.Logf("recovery off: %d of %d connections failed after failover", len(errs), len(conns))
	if len(errs) == 0 {
		t.Fatal("no connection failed with recovery off")
	}
	resets := 0
	for _, err := range errs {
		if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			resets++
		}
	}
	if resets == 0 {
		t.Fatalf("failures were not resets: %v", errs[0])
	}
}

// Test (c): the idle failover with client timestamps off, and with client SACK
// off.
func TestFailoverIdleClientOptions(t *testing.T) {
	for _, c := range []struct{ name, key, value string }{
		{"timestamps off", "net.ipv4.tcp_timestamps", "0"},
		{"sack off", "net.ipv4.tcp_sack", "0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, _, errs := idleFailover(t, func(l *lab.Lab) {
				if err := l.Client.SetSysctl(c.key, c.value); err != nil {
					t.Fatal(err)
				}
			})
			requireNoErrors(t, "after failover", errs)
		})
	}
}

// Test (e): after an idle failover A comes back and takes over (failback),
// then dies again. B still holds the flows it recovered, now stale: the
// client acknowledges bytes that crossed A. Each connection keeps working.
func TestFailbackAndSecondFailover(t *testing.T) {
	p, conns, errs := idleFailover(t, nil)
	failbackAndSecondFailover(t, p, conns, errs)
}

// failbackAndSecondFailover is test (e) after an idle failover.
func failbackAndSecondFailover(t *testing.T, p *pair, conns []*httpConn, errs []error) {
	t.Helper()
	requireNoErrors(t, "after failover", errs)
	p.restart(t, 0)
	p.active = 0
	if err := p.l.Flip(0); err != nil {
		t.Fatal(err)
	}
	requireNoErrors(t, "after failback", eachConn(conns, requests(3)))
	p.failover(t) // A dies again: B, with stale flows
	requireNoErrors(t, "after second failover", eachConn(conns, requests(3)))
	c := directorCounters(t, p.l.Directors[1])
	t.Logf("B after the second failover: %d recovered, %d adopted, %d stale", c.Recovered, c.Adopted, c.StaleFlows)
	if c.StaleFlows == 0 {
		t.Fatal("B found no stale flow: the test did not exercise stale-flow detection")
	}
}

// busyLoad is test (b): connections loop over requests with responses of
// 16 KiB to 1 MiB while the active director dies. Every body is checked.
func busyLoad(t *testing.T, conns int, sizes []int64, setup func(*lab.Lab)) (longest time.Duration) {
	p := newPair(t, setup)
	return busyThrough(t, p, conns, sizes, func() { p.failover(t) })
}

// busyThrough is busyLoad's load on a given pair with a given failover:
// every connection loops over requests for sizes until it has completed 3
// after failover() returned. Every body is checked. It logs the longest
// request before and after the failover began, and returns the longest
// stall after it: the longest time a connection went without receiving a
// byte.
func busyThrough(t *testing.T, p *pair, conns int, sizes []int64, failover func()) time.Duration {
	t.Helper()
	var (
		failedOver              atomic.Bool
		stallBefore, stallAfter atomic.Int64 // longest time a connection went without progress
	)
	cs := p.dial(t, conns)
	for i, h := range cs {
		pc := &progressConn{Conn: h.c, last: time.Now(), failedOver: &failedOver, before: &stallBefore, after: &stallAfter}
		cs[i] = &httpConn{c: pc, br: bufio.NewReader(pc), vip: h.vip}
	}
	sums := map[int64]string{}
	for _, n := range sizes {
		sums[n] = lab.PatternSHA256(n)
	}
	var (
		after     = make([]atomic.Int64, conns) // requests completed after the failover
		before    atomic.Int64
		maxStall  atomic.Int64 // longest request completed after the failover
		maxBefore atomic.Int64 // the same before it: the load's own baseline
		warm      sync.WaitGroup
	)
	warm.Add(conns)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	done := make(chan []error, 1)
	go func() {
		done <- eachConn(cs, func(i int, h *httpConn) error {
			warmed := false
			defer func() {
				if !warmed {
					warm.Done() // failed before its first response
				}
			}()
			for k := 0; ; k++ {
				if after[i].Load() >= 3 {
					return nil
				}
				if ctx.Err() != nil {
					return fmt.Errorf("connection %d: %d requests after failover before the deadline", i, after[i].Load())
				}
				n := sizes[(i+k)%len(sizes)]
				start := time.Now()
				_, got, sum, err := h.get(fmt.Sprintf("/bytes?n=%d", n))
				if err != nil {
					return err
				}
				if got != n || sum != sums[n] {
					return fmt.Errorf("%s: body of %d bytes corrupt (got %d, sha %s)", h.c.LocalAddr(), n, got, sum)
				}
				d := time.Since(start)
				if failedOver.Load() {
					after[i].Add(1)
					lab.RaiseMax(&maxStall, int64(d))
				} else {
					before.Add(1)
					lab.RaiseMax(&maxBefore, int64(d))
				}
				if !warmed {
					warmed = true
					warm.Done()
				}
			}
		})
	}()
	warm.Wait() // every connection is busy
	failedOver.Store(true)
	failover()
	errs := <-done
	requireNoErrors(t, "busy failover", errs)
	c := directorCounters(t, p.l.Directors[p.active])
	t.Logf("busy failover: %d connections, %d requests before; new director %d steered by probe, %d by cookie, %d recovered, %d adopted (%d dials abandoned), %d stale, drops %v; "+
		"longest request after the failover %v (before it: %v); longest stall after the failover %v (before it: %v)",
		conns, before.Load(), c.ProbeSteers, c.CookieConfirmed, c.Recovered, c.Adopted, c.AdoptAborts, c.StaleFlows, nonZero(c.Drops),
		time.Duration(maxStall.Load()).Round(time.Millisecond), time.Duration(maxBefore.Load()).Round(time.Millisecond),
		time.Duration(stallAfter.Load()).Round(time.Millisecond), time.Duration(stallBefore.Load()).Round(time.Millisecond))
	if c.Found() < conns || c.ClientResets != 0 {
		t.Fatalf("new director found %d flows (recovered %d, adopted %d, steered %d + %d), want at least %d; client resets %d",
			c.Found(), c.Recovered, c.Adopted, c.ProbeSteers, c.CookieConfirmed, conns, c.ClientResets)
	}
	return time.Duration(stallAfter.Load())
}

// progressConn measures stalls: the longest time its connection went
// without progress, from one read that returned data (or a write) to the
// next read that returned data. A gap that ends after the failover began
// counts as after. Used by one goroutine at a time, like httpConn.
type progressConn struct {
	net.Conn
	last          time.Time
	failedOver    *atomic.Bool
	before, after *atomic.Int64
}

func (c *progressConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		now := time.Now()
		m := c.before
		if c.failedOver.Load() {
			m = c.after
		}
		lab.RaiseMax(m, int64(now.Sub(c.last)))
		c.last = now
	}
	return n, err
}

func (c *progressConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.last = time.Now()
	return n, err
}

var busySizes = []int64{16 << 10, 64 << 10, 256 << 10, 1 << 20}

func TestFailoverBusy(t *testing.T) {
	busyLoad(t, 64, busySizes, nil)
}

// Test (c), third part: the client's window scale is 9, not the 7 the
// recovery SYN assumes, with 1 MiB responses.
func TestFailoverBusyClientWindowScale9(t *testing.T) {
	busyLoad(t, 64, []int64{1 << 20}, func(l *lab.Lab) {
		// Linux derives the shift from the largest receive buffer:
		// ilog2(30000000) - 15 = 9.
		if err := l.Client.SetSysctl("net.ipv4.tcp_rmem", "4096 131072 30000000"); err != nil {
			t.Fatal(err)
		}
	})
}

// Test (d): (b) with 1% random loss on both links of each director.
func TestFailoverBusyLossy(t *testing.T) {
	busyLoad(t, 64, busySizes, func(l *lab.Lab) {
		for _, d := range l.Directors {
			for _, ifname := range []string{d.UplinkIface, d.RSIface} {
				out, err := runIn(d.NS, 10*time.Second, "iptables", "-w", "-t", "raw", "-A", "PREROUTING", "-i", ifname,
					"-m", "statistic", "--mode", "random", "--probability", "0.01", "-j", "DROP")
				if err != nil {
					t.Fatalf("iptables in %s: %v\n%s", d.Name, err, out)
				}
			}
		}
	})
}

func nonZero(m map[string]uint64) map[string]uint64 {
	out := map[string]uint64{}
	for k, v := range m {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}
