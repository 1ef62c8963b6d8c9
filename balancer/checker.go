package balancer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// Target is one real to check: its address and the check to run. Service is a
// label carried back to onChange (e.g. "tcp:198.18.100.1:80"), so that a real
// serving two services is checked, and reported, once per service. A Target is
// comparable and identifies a check: changing any field is removing one
// target and adding another.
type Target struct {
	Service string
	Addr    netip.AddrPort
	Check   Check
}

// Checker probes reals and reports transitions. Each real gets one goroutine;
// Stop ends them all and waits.
//
// Probes run from the holdfast process, so through the network namespace it
// runs in: the director's, from which the reals are reached.
//
// State follows HAProxy: a target starts up, so that traffic flows before its
// first check; it goes down after Fall consecutive failed checks and back up
// after Rise consecutive successful ones (CheckTiming). A target whose check
// is CheckNone gets no goroutine and is always up.
//
// Concurrency contract: onChange is called from the checker's goroutines, one
// call at a time per target, in order, and only on a transition. It should
// return quickly. The checker never writes Real.Down: onChange is where the
// caller applies the verdict, under its own lock (nat's), to the Real it finds
// by t.Service and t.Addr, ignoring targets it no longer has. State already
// gives the new state when onChange is called.
//
// Set reports nothing: a new target starts up without a call to onChange. So
// after Set the caller sets Down from State for the reals it checks, under
// the lock onChange takes; otherwise a real marked down under its old check
// (a reload that changed the check) would stay down. State takes only the
// checker's own lock, which no goroutine holds while calling onChange, so it
// may be called under the caller's lock and from onChange.
//
// Set, State and Stop are safe for concurrent use. Set and Stop wait for the
// goroutines of the targets they end, including an onChange call such a
// goroutine is making: do not call Set or Stop from onChange, nor while
// holding a lock onChange takes or blocking what onChange waits on. In
// return, once Set or Stop returns, onChange is not called again for a target
// they ended.
type Checker struct {
	timing   CheckTiming
	onChange func(t Target, up bool, reason string)
	client   *http.Client
	dialer   net.Dialer

	mu      sync.Mutex
	targets map[Target]*probe
	stopped bool
}

// probe is one target's goroutine and state.
type probe struct {
	cancel context.CancelFunc // nil for CheckNone: no goroutine.
	done   chan struct{}      // closed when the goroutine has returned.
	up     bool               // guarded by Checker.mu.
	// proven: a check of the real has passed (always, for CheckNone);
	// guarded by Checker.mu. A real is up until its checks fail, but it is
	// not proven before one passed: a director announces a VIP only for
	// proven reals (a restarted director with dead reals must not attract
	// traffic while its first checks are still out).
	proven bool
}

// NewChecker returns a Checker that probes with timing and reports
// transitions to onChange (nil: only State tells). It probes nothing until
// Set. It panics if timing does not pass Validate: flags and config files are
// validated before it is called.
func NewChecker(timing CheckTiming, onChange func(t Target, up bool, reason string)) *Checker {
	if err := timing.Validate(); err != nil {
		panic("balancer.NewChecker: " + err.Error())
	}
	if onChange == nil {
		onChange = func(Target, bool, string) {}
	}
	c := &Checker{timing: timing, onChange: onChange, targets: make(map[Target]*probe)}
	c.client = &http.Client{
		Transport: &http.Transport{
			// A fresh connection per check: a reused one would pass
			// a check for a real that no longer accepts connections.
			DisableKeepAlives: true,
			// A check must reach the real itself, whatever
			// HTTP_PROXY says.
			Proxy:              nil,
			DialContext:        c.dialer.DialContext,
			DisableCompression: true,
		},
		// A redirect is the real's answer; following it would check
		// some other server.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return c
}

// Set makes targets the set of targets checked: new ones start (up, first
// probe at a random point of the first interval so that many reals are not
// checked all at once), ones not listed stop, and ones already checked keep
// their state and schedule. Duplicates count once. After Stop, Set does
// nothing.
func (c *Checker) Set(targets []Target) {
	want := make(map[Target]bool, len(targets))
	for _, t := range targets {
		want[t] = true
	}
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return
	}
	var ended []*probe
	for t, p := range c.targets {
		if !want[t] {
			delete(c.targets, t)
			ended = append(ended, p)
		}
	}
	for t := range want {
		if _, ok := c.targets[t]; !ok {
			c.targets[t] = c.start(t)
		}
	}
	c.mu.Unlock()
	endProbes(ended)
}

// State returns whether t is up, and whether t is checked at all (known is
// false for a target not given to Set, or removed, or after Stop).
func (c *Checker) State(t Target) (up bool, known bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.targets[t]
	if !ok {
		return false, false
	}
	return p.up, true
}

// Proven reports whether a check of t has passed since Set gave it (always
// true for a target without a check; false for one Set does not hold).
func (c *Checker) Proven(t Target) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.targets[t]
	return ok && p.proven
}

// Stop ends every probe and waits for their goroutines, cutting short the
// checks in flight. It is idempotent.
func (c *Checker) Stop() {
	c.mu.Lock()
	c.stopped = true
	ended := make([]*probe, 0, len(c.targets))
	for _, p := range c.targets {
		ended = append(ended, p)
	}
	clear(c.targets)
	c.mu.Unlock()
	endProbes(ended)
	c.client.CloseIdleConnections()
}

// start returns t's probe, with its goroutine running unless t is not
// checked. c.mu is held.
func (c *Checker) start(t Target) *probe {
	p := &probe{up: true, done: make(chan struct{})}
	if t.Check.Kind == CheckNone {
		p.proven = true
		close(p.done)
		return p
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go c.run(ctx, t, p)
	return p
}

// endProbes cancels the probes and waits for their goroutines to return.
func endProbes(ps []*probe) {
	for _, p := range ps {
		if p.cancel != nil {
			p.cancel()
		}
	}
	for _, p := range ps {
		<-p.done
	}
}

// run is a target's goroutine: check every Interval, count, report.
func (c *Checker) run(ctx context.Context, t Target, p *probe) {
	defer close(p.done)
	h := health{up: true}
	// The first check at a random point of the first interval spreads
	// the checks of reals started together (at start-up, on reload) over
	// the interval, as HAProxy spreads its initial checks.
	next := time.Now().Add(rand.N(c.timing.Interval))
	timer := time.NewTimer(time.Until(next))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		reason, ok := c.check(ctx, t)
		if ctx.Err() != nil {
			return // ended mid-check: not the real's failure.
		}
		if ok && !h.proven {
			h.proven = true
			c.mu.Lock()
			p.proven = true
			c.mu.Unlock()
		}
		if h.observe(ok, c.timing.Rise, c.timing.Fall) {
			c.mu.Lock()
			p.up = h.up
			c.mu.Unlock()
			c.onChange(t, h.up, reason)
		}
		// Interval is start to start, so a real that stops answering
		// is down within Fall×Interval + Timeout. A check never
		// outlasts Timeout ≤ Interval, so next stays ahead of now
		// unless the process was stalled; then check at once rather
		// than catch up with a burst.
		next = next.Add(c.timing.Interval)
		if d := time.Until(next); d > 0 {
			timer.Reset(d)
		} else {
			next = time.Now()
			timer.Reset(0)
		}
	}
}

// health counts consecutive results against rise and fall.
type health struct {
	up     bool
	n      int  // consecutive results that disagree with up.
	proven bool // a check passed (probe.proven, without the lock)
}

// observe records one check result and reports whether up changed.
func (h *health) observe(ok bool, rise, fall int) bool {
	if ok == h.up {
		h.n = 0
		return false
	}
	h.n++
	need := fall
	if !h.up {
		need = rise
	}
	if h.n < need {
		return false
	}
	h.up, h.n = ok, 0
	return true
}

// check runs one check of t, bounded by Timeout, and returns a short reason
// (for a log line) and whether it passed.
func (c *Checker) check(ctx context.Context, t Target) (reason string, ok bool) {
	ctx, cancel := context.WithTimeout(ctx, c.timing.Timeout)
	defer cancel()
	var err error
	switch t.Check.Kind {
	case CheckTCP:
		reason, err = c.checkTCP(ctx, t.Addr)
	case CheckHTTP:
		reason, err = c.checkHTTP(ctx, t.Addr, t.Check)
	default:
		return "no check", true
	}
	if err == nil {
		return reason, true
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return "timeout after " + c.timing.Timeout.String(), false
	}
	return err.Error(), false
}

func (c *Checker) checkTCP(ctx context.Context, addr netip.AddrPort) (string, error) {
	conn, err := c.dialer.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return "", dialError(err)
	}
	conn.Close()
	return "connect: ok", nil
}

func (c *Checker) checkHTTP(ctx context.Context, addr netip.AddrPort, chk Check) (string, error) {
	path, want := chk.Path, chk.Status
	if path == "" {
		path = "/"
	}
	if want == 0 {
		want = DefaultCheckStatus
	}
	// ParseCheck has made sure the path is a request URI, so it goes on
	// the request line as written. Host is the real's ADDR:PORT: the
	// director knows no name for a real.
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr.String()+path, nil)
	if err != nil {
		return "", fmt.Errorf("HTTP: %w", err)
	}
	req.Header.Set("User-Agent", "holdfast-check")
	req.Close = true // Connection: close.
	resp, err := c.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // drop `Get "http://…":`, the target is logged already.
		}
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "dial" {
			return "", dialError(err)
		}
		return "", fmt.Errorf("HTTP: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != want {
		return "", errors.New("HTTP status " + strconv.Itoa(resp.StatusCode) + ", want " + strconv.Itoa(want))
	}
	return "HTTP status " + strconv.Itoa(resp.StatusCode), nil
}

// dialError shortens a dial error to the system call's: "connect: connection
// refused" rather than "dial tcp 198.18.10.11:80: connect: connection refused".
func dialError(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err
	}
	return err
}
