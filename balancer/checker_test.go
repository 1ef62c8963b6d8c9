package balancer

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fast is the timing of most checker tests: short enough to run many checks,
// long enough that a loopback check does not time out on a loaded machine
// under -race (20ms did, now and then, on two busy CPUs).
// fast checks every 100 ms, its timeout the whole interval: on a loaded
// machine under -race a loopback server's answer can take more than 50 ms,
// and a timeout is a failed check the test did not ask for (seen with 50 ms
// at load average 10: "down after 2 answers of 503", an unexpected
// "timeout after 50ms").
var fast = CheckTiming{Interval: 100 * time.Millisecond, Timeout: 100 * time.Millisecond, Rise: 2, Fall: 3}

// patience is how long a test waits for something that should happen within a
// few intervals; generous, for a loaded machine under -race.
const patience = 5 * time.Second

type event struct {
	t      Target
	up     bool
	reason string
	at     time.Time
	n      int64 // the value of the test's counter when onChange ran.
}

// recorder collects onChange calls on a channel. counter, if set, is read
// inside onChange: the value seen there is exact, since the goroutine that
// called onChange makes no check until onChange returns.
type recorder struct {
	ch      chan event
	counter atomic.Pointer[func() int64]
}

func newRecorder() *recorder { return &recorder{ch: make(chan event, 1000)} }

func (r *recorder) onChange(t Target, up bool, reason string) {
	e := event{t: t, up: up, reason: reason, at: time.Now()}
	if f := r.counter.Load(); f != nil {
		e.n = (*f)()
	}
	r.ch <- e
}

func (r *recorder) next(t *testing.T) event {
	t.Helper()
	select {
	case e := <-r.ch:
		return e
	case <-time.After(patience):
		t.Fatalf("no onChange within %v", patience)
		return event{}
	}
}

func (r *recorder) none(t *testing.T, d time.Duration) {
	t.Helper()
	if d == 0 {
		select {
		case e := <-r.ch:
			t.Fatalf("unexpected onChange(%v, up=%v, %q)", e.t.Addr, e.up, e.reason)
		default:
		}
		return
	}
	select {
	case e := <-r.ch:
		t.Fatalf("unexpected onChange(%v, up=%v, %q)", e.t.Addr, e.up, e.reason)
	case <-time.After(d):
	}
}

// counted wakes eventually: every test server sends on it (without
// blocking) each time it counts a connection or a request.
var counted = make(chan struct{}, 1)

func notifyCounted() {
	select {
	case counted <- struct{}{}:
	default:
	}
}

// eventually waits until cond, over what the test servers counted, holds,
// looking again each time they count; it fails once patience runs out.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	timeout := time.NewTimer(patience)
	defer timeout.Stop()
	for !cond() {
		select {
		case <-counted:
		case <-timeout.C:
			t.Fatalf("%s: not within %v", what, patience)
		}
	}
}

func newChecker(t *testing.T, timing CheckTiming, r *recorder) *Checker {
	t.Helper()
	c := NewChecker(timing, r.onChange)
	t.Cleanup(c.Stop)
	return c
}

// tcpServer accepts connections on 127.0.0.1 and closes them at once,
// counting them.
type tcpServer struct {
	ln       net.Listener
	accepted atomic.Int64
	done     chan struct{}
}

func listenTCP(t *testing.T, addr string) *tcpServer {
	t.Helper()
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &tcpServer{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			notifyCounted()
			c.Close()
		}
	}()
	t.Cleanup(s.close)
	return s
}

func (s *tcpServer) addr() netip.AddrPort {
	return s.ln.Addr().(*net.TCPAddr).AddrPort()
}

func (s *tcpServer) close() {
	s.ln.Close()
	<-s.done
}

// closedPort returns a loopback address nobody listens on.
func closedPort(t *testing.T) netip.AddrPort {
	s := listenTCP(t, "127.0.0.1:0")
	s.close()
	return s.addr()
}

// httpServer answers every request with a status that the test switches,
// counting the answers by status.
type httpServer struct {
	*httptest.Server
	status atomic.Int64
	mu     sync.Mutex
	counts map[int]int64
	reqs   []*http.Request
}

func newHTTPServer(t *testing.T) *httpServer {
	s := &httpServer{counts: map[int]int64{}}
	s.status.Store(200)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := int(s.status.Load())
		s.mu.Lock()
		s.counts[st]++
		s.reqs = append(s.reqs, r)
		s.mu.Unlock()
		notifyCounted()
		w.WriteHeader(st)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *httpServer) count(status int) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[status]
}

func (s *httpServer) addr() netip.AddrPort {
	return netip.MustParseAddrPort(s.Listener.Addr().String())
}

func TestHealthObserve(t *testing.T) {
	tests := []struct {
		name       string
		rise, fall int
		results    string // + pass, - fail
		want       string // state after each result: U up, D down
	}{
		{"healthy", 2, 3, "+++++", "UUUUU"},
		{"down after fall", 2, 3, "---", "UUD"},
		{"isolated failures reset", 2, 3, "--+--+--", "UUUUUUUU"},
		{"up after rise", 2, 3, "---++", "UUDDU"},
		{"a failure resets rise", 2, 3, "---+-+-++", "UUDDDDDDU"},
		{"still down while failing", 2, 3, "------", "UUDDDD"},
		{"flapping at rise 1 fall 1", 1, 1, "-+-+", "DUDU"},
		{"fall 1", 2, 1, "-", "D"},
		{"rise 3 fall 2", 3, 2, "--++-+++", "UDDDDDDU"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := health{up: true}
			var got strings.Builder
			for i, r := range tt.results {
				was := h.up
				changed := h.observe(r == '+', tt.rise, tt.fall)
				if changed != (h.up != was) {
					t.Fatalf("result %d: observe = %v but up went %v -> %v", i, changed, was, h.up)
				}
				got.WriteByte("DU"[b2i(h.up)])
			}
			if got.String() != tt.want {
				t.Errorf("states = %s, want %s", got.String(), tt.want)
			}
		})
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestCheckerTCP: a real whose listener closes goes down after Fall failed
// checks, and back up after Rise successful ones once it listens again.
func TestCheckerTCP(t *testing.T) {
	srv := listenTCP(t, "127.0.0.1:0")
	rec := newRecorder()
	c := newChecker(t, fast, rec)
	tg := Target{Service: "tcp:198.18.100.1:80", Addr: srv.addr(), Check: Check{Kind: CheckTCP}}
	c.Set([]Target{tg})

	if up, known := c.State(tg); !up || !known {
		t.Fatalf("State before any check = %v, %v; want up, known", up, known)
	}
	eventually(t, "3 checks", func() bool { return srv.accepted.Load() >= 3 })
	rec.none(t, 0) // a healthy real starts up: nothing to report.

	closed := time.Now()
	srv.close()
	e := rec.next(t)
	if e.up || e.t != tg || e.reason != "connect: connection refused" {
		t.Fatalf("onChange(%+v, up=%v, %q), want down with connect: connection refused", e.t, e.up, e.reason)
	}
	// Fall failures are Fall-1 intervals apart at least (a timer never
	// fires early), and at most Fall intervals and a timeout after the
	// failure; the upper bound has slack for a loaded machine.
	took := e.at.Sub(closed)
	if min := time.Duration(fast.Fall-1) * fast.Interval; took < min {
		t.Errorf("down %v after the listener closed, want at least (fall-1)×interval = %v", took, min)
	}
	if max := time.Duration(fast.Fall)*fast.Interval + fast.Timeout + time.Second; took > max {
		t.Errorf("down %v after the listener closed, want at most %v", took, max)
	}
	if up, known := c.State(tg); up || !known {
		t.Errorf("State after down = %v, %v; want down, known", up, known)
	}

	reopened := time.Now()
	listenTCP(t, srv.addr().String())
	e = rec.next(t)
	if !e.up || e.t != tg || e.reason != "connect: ok" {
		t.Fatalf("onChange(%+v, up=%v, %q), want up with connect: ok", e.t, e.up, e.reason)
	}
	if took, min := e.at.Sub(reopened), time.Duration(fast.Rise-1)*fast.Interval; took < min {
		t.Errorf("up %v after the listener reopened, want at least (rise-1)×interval = %v", took, min)
	}
	if up, _ := c.State(tg); !up {
		t.Error("State after up = down")
	}
	rec.none(t, 5*fast.Interval)
}

// TestCheckerHTTP switches a server between 200 and 503 and counts the
// answers: down exactly at the Fall-th 503, up exactly at the Rise-th 200.
func TestCheckerHTTP(t *testing.T) {
	srv := newHTTPServer(t)
	rec := newRecorder()
	c := newChecker(t, fast, rec)
	chk, err := ParseCheck("http:/healthz?full=1=200")
	if err != nil {
		t.Fatal(err)
	}
	tg := Target{Service: "tcp:198.18.100.1:80", Addr: srv.addr(), Check: chk}
	c.Set([]Target{tg})

	eventually(t, "3 checks", func() bool { return srv.count(200) >= 3 })
	rec.none(t, 0)

	n503 := func() int64 { return srv.count(503) }
	rec.counter.Store(&n503)
	srv.status.Store(503)
	e := rec.next(t)
	if e.up || e.reason != "HTTP status 503, want 200" {
		t.Fatalf("onChange(up=%v, %q), want down with HTTP status 503, want 200", e.up, e.reason)
	}
	if e.n != int64(fast.Fall) {
		t.Errorf("down after %d answers of 503, want exactly fall = %d", e.n, fast.Fall)
	}

	base := srv.count(200)
	n200 := func() int64 { return srv.count(200) - base }
	rec.counter.Store(&n200)
	srv.status.Store(200)
	e = rec.next(t)
	if !e.up || e.reason != "HTTP status 200" {
		t.Fatalf("onChange(up=%v, %q), want up with HTTP status 200", e.up, e.reason)
	}
	if e.n != int64(fast.Rise) {
		t.Errorf("up after %d answers of 200, want exactly rise = %d", e.n, fast.Rise)
	}
	rec.none(t, 5*fast.Interval)

	// What the real saw: GET of the path as configured, Host its own
	// ADDR:PORT, Connection: close, and a new connection every time.
	srv.mu.Lock()
	defer srv.mu.Unlock()
	conns := map[string]bool{}
	for _, r := range srv.reqs {
		if r.Method != "GET" || r.RequestURI != "/healthz?full=1" || r.Host != srv.addr().String() || !r.Close {
			t.Fatalf("request %s %s Host %s close=%v, want GET /healthz?full=1 Host %s close=true",
				r.Method, r.RequestURI, r.Host, r.Close, srv.addr())
		}
		if conns[r.RemoteAddr] {
			t.Fatalf("connection from %s reused", r.RemoteAddr)
		}
		conns[r.RemoteAddr] = true
	}
}

// holdServer accepts connections and never answers.
func holdServer(t *testing.T) (addr netip.AddrPort, accepted *atomic.Int64) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted = new(atomic.Int64)
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			accepted.Add(1)
			notifyCounted()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().(*net.TCPAddr).AddrPort(), accepted
}

// TestCheckerReasons: the reason given with a transition for each way a check
// fails.
func TestCheckerReasons(t *testing.T) {
	hold, _ := holdServer(t)
	refused := closedPort(t)
	srv := newHTTPServer(t)
	srv.status.Store(302)
	timing := CheckTiming{Interval: 200 * time.Millisecond, Timeout: 150 * time.Millisecond, Rise: 1, Fall: 1}
	tests := []struct {
		name   string
		addr   netip.AddrPort
		check  string
		reason string
	}{
		{"http timeout", hold, "http:/", "timeout after 150ms"},
		{"tcp refused", refused, "tcp", "connect: connection refused"},
		{"http refused", refused, "http:/", "connect: connection refused"},
		{"redirect not followed", srv.addr(), "http:/", "HTTP status 302, want 200"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder()
			c := newChecker(t, timing, rec)
			chk, err := ParseCheck(tt.check)
			if err != nil {
				t.Fatal(err)
			}
			tg := Target{Service: "tcp:198.18.100.1:80", Addr: tt.addr, Check: chk}
			c.Set([]Target{tg})
			if e := rec.next(t); e.up || e.reason != tt.reason {
				t.Errorf("onChange(up=%v, %q), want down with %q", e.up, e.reason, tt.reason)
			}
		})
	}
}

// TestCheckerSetKeepsState: Set with a target already checked keeps its state
// (no restart as up, no report); a target whose check changed is a new one.
func TestCheckerSetKeepsState(t *testing.T) {
	srv := newHTTPServer(t)
	srv.status.Store(503)
	rec := newRecorder()
	timing := fast
	timing.Fall = 1
	c := newChecker(t, timing, rec)
	tg := Target{Service: "tcp:198.18.100.1:80", Addr: srv.addr(), Check: Check{Kind: CheckHTTP, Path: "/", Status: 200}}
	c.Set([]Target{tg})
	if e := rec.next(t); e.up || e.t != tg {
		t.Fatalf("onChange(%+v, up=%v), want %v down", e.t, e.up, tg.Addr)
	}

	other := tg
	other.Check.Status = 503 // the same real, checked another way
	none := Target{Service: "tcp:198.18.100.1:80", Addr: closedPort(t)}
	c.Set([]Target{tg, other, tg, none})
	if up, known := c.State(tg); up || !known {
		t.Errorf("State(unchanged target) after Set = %v, %v; want down, known", up, known)
	}
	if up, known := c.State(other); !up || !known {
		t.Errorf("State(new target) after Set = %v, %v; want up, known", up, known)
	}
	if up, known := c.State(none); !up || !known {
		t.Errorf("State(target with no check) = %v, %v; want up, known", up, known)
	}
	before := srv.count(503)
	eventually(t, "more checks", func() bool { return srv.count(503) >= before+10 })
	rec.none(t, 0) // the unchanged target was not restarted as up.

	c.Set([]Target{other})
	if _, known := c.State(tg); known {
		t.Error("State(removed target): known")
	}
	c.Stop()
	if _, known := c.State(other); known {
		t.Error("State after Stop: known")
	}
	c.Set([]Target{tg}) // after Stop: nothing starts.
	if _, known := c.State(tg); known {
		t.Error("Set after Stop started a target")
	}
	rec.none(t, 0)
}

// TestCheckerJitter: the first checks of many targets started together are
// spread over the interval, not fired at once.
func TestCheckerJitter(t *testing.T) {
	var mu sync.Mutex
	var times []time.Time
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		mu.Lock()
		times = append(times, time.Now())
		mu.Unlock()
		notifyCounted()
	}))
	defer srv.Close()
	timing := CheckTiming{Interval: 400 * time.Millisecond, Timeout: 400 * time.Millisecond, Rise: 1, Fall: 1}
	c := NewChecker(timing, nil)
	defer c.Stop()
	const n = 50
	var targets []Target
	for i := range n {
		targets = append(targets, Target{Service: fmt.Sprint("svc", i), Addr: netip.MustParseAddrPort(srv.Listener.Addr().String()),
			Check: Check{Kind: CheckHTTP, Path: "/", Status: 200}})
	}
	c.Set(targets)
	eventually(t, fmt.Sprint(n, " checks"), func() bool { mu.Lock(); defer mu.Unlock(); return len(times) >= n })
	mu.Lock()
	first := slices.Clone(times[:n])
	mu.Unlock()
	// Uniform over 400ms, 50 first checks all fall within 100ms with a
	// probability of about 50×(1/4)^49; at once, they would span a few ms.
	if span := first[n-1].Sub(first[0]); span < timing.Interval/4 {
		t.Errorf("first %d checks span %v, want them spread over the %v interval", n, span, timing.Interval)
	}
}

// TestCheckerStopCutsChecks: Stop does not wait for a check in flight to time
// out.
func TestCheckerStopCutsChecks(t *testing.T) {
	hold, accepted := holdServer(t)
	timing := CheckTiming{Interval: time.Second, Timeout: time.Second, Rise: 1, Fall: 1}
	rec := newRecorder()
	c := NewChecker(timing, rec.onChange)
	t.Cleanup(c.Stop)
	c.Set([]Target{{Service: "tcp:198.18.100.1:80", Addr: hold, Check: Check{Kind: CheckHTTP, Path: "/", Status: 200}}})
	eventually(t, "a check in flight", func() bool { return accepted.Load() > 0 })
	start := time.Now()
	c.Stop()
	if took := time.Since(start); took > timing.Timeout/2 {
		t.Errorf("Stop took %v with a check in flight, want it cut short", took)
	}
	rec.none(t, 0) // a check cut short is not the real's failure.
}

// TestCheckerNoLeak: Set and Stop end every goroutine the checker started,
// its probes' and net/http's.
func TestCheckerNoLeak(t *testing.T) {
	tcp := listenTCP(t, "127.0.0.1:0")
	web := newHTTPServer(t)
	hold, _ := holdServer(t)
	refused := closedPort(t)
	base := goroutines()

	c := NewChecker(fast, func(Target, bool, string) {})
	t.Cleanup(c.Stop) // on failure too: a leaked checker would probe the next test's servers.
	var targets []Target
	for i := range 10 {
		svc := fmt.Sprint("tcp:198.18.100.", i, ":80")
		targets = append(targets,
			Target{Service: svc, Addr: tcp.addr(), Check: Check{Kind: CheckTCP}},
			Target{Service: svc, Addr: web.addr(), Check: Check{Kind: CheckHTTP, Path: "/", Status: 200}},
			Target{Service: svc, Addr: hold, Check: Check{Kind: CheckHTTP, Path: "/", Status: 200}},
			Target{Service: svc, Addr: refused, Check: Check{Kind: CheckTCP}},
			Target{Service: svc, Addr: refused}, // none: no goroutine
		)
	}
	c.Set(targets)
	if n := runtime.NumGoroutine(); n < base+40 {
		t.Fatalf("%d goroutines after Set of 40 checked targets, want at least %d", n, base+40)
	}
	eventually(t, "checks", func() bool { return tcp.accepted.Load() >= 30 && web.count(200) >= 30 })

	// Removal ends goroutines too, without Stop. The two kept checks
	// take a millisecond of each interval, so the goroutines of their
	// connections are mostly gone when noLeak looks.
	c.Set([]Target{targets[0], targets[1], targets[4]})
	noLeak(t, "Set", base+2)
	c.Stop()
	noLeak(t, "Stop", base)
}

// goroutines is the number of goroutines once those of earlier tests'
// connections have ended: the least of a few samples.
func goroutines() int {
	n := runtime.NumGoroutine()
	for range 10 {
		time.Sleep(5 * time.Millisecond)
		n = min(n, runtime.NumGoroutine())
	}
	return n
}

// noLeak waits for the goroutine count to come down to want: the goroutines
// of closed connections (net/http's, the test servers') end shortly after.
func noLeak(t *testing.T, after string, want int) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for runtime.NumGoroutine() > want {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("after %s: %d goroutines, want at most %d\n%s", after, runtime.NumGoroutine(), want, buf)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestNewCheckerInvalidTiming(t *testing.T) {
	defer func() {
		r := recover()
		if r == nil || !strings.Contains(fmt.Sprint(r), "check fall 0") {
			t.Errorf("NewChecker with fall 0: panic %v, want one naming check fall", r)
		}
	}()
	NewChecker(CheckTiming{Interval: time.Second, Timeout: time.Second, Rise: 1}, nil)
}

// TestCheckerStateInOnChange: State gives the new state by the time onChange
// runs, so a caller that sets Down from State after Set, under the lock
// onChange takes, agrees with the reports.
func TestCheckerStateInOnChange(t *testing.T) {
	srv := newHTTPServer(t)
	var c *Checker
	mismatch := make(chan string, 10)
	rec := newRecorder()
	timing := fast
	timing.Rise, timing.Fall = 1, 1
	c = NewChecker(timing, func(tg Target, up bool, reason string) {
		if got, known := c.State(tg); got != up || !known {
			mismatch <- fmt.Sprintf("onChange(up=%v) but State = %v, %v", up, got, known)
		}
		rec.onChange(tg, up, reason)
	})
	t.Cleanup(c.Stop)
	tg := Target{Service: "tcp:198.18.100.1:80", Addr: srv.addr(), Check: Check{Kind: CheckHTTP, Path: "/", Status: 200}}
	c.Set([]Target{tg})
	for _, status := range []int64{503, 200, 503} {
		srv.status.Store(status)
		if e := rec.next(t); e.up != (status == 200) {
			t.Fatalf("status %d: onChange(up=%v)", status, e.up)
		}
	}
	select {
	case m := <-mismatch:
		t.Fatal(m)
	default:
	}
}

// TestCheckerProven: a real is proven once a check of it passed, not
// before (it is up meanwhile); one whose checks fail never is; a target
// without a check is at once.
func TestCheckerProven(t *testing.T) {
	srv := listenTCP(t, "127.0.0.1:0")
	dead := listenTCP(t, "127.0.0.1:0")
	dead.close()
	c := newChecker(t, fast, newRecorder())
	good := Target{Service: "tcp:198.18.100.1:80", Addr: srv.addr(), Check: Check{Kind: CheckTCP}}
	bad := Target{Service: "tcp:198.18.100.1:80", Addr: dead.addr(), Check: Check{Kind: CheckTCP}}
	none := Target{Service: "udp:198.18.100.1:53", Addr: dead.addr()}
	c.Set([]Target{good, bad, none})
	if !c.Proven(none) {
		t.Error("a target without a check is not proven")
	}
	eventually(t, "the good real proven", func() bool { return c.Proven(good) })
	if srv.accepted.Load() < 1 {
		t.Fatal("proven without a check")
	}
	eventually(t, "the dead real down", func() bool { up, _ := c.State(bad); return !up })
	if c.Proven(bad) {
		t.Error("a real whose every check failed is proven")
	}
	if c.Proven(Target{Service: "tcp:198.18.100.1:81", Addr: srv.addr()}) {
		t.Error("a target the checker does not hold is proven")
	}
}
