package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DemoOptions shape one run of the failover demo.
type DemoOptions struct {
	Binary   string        // the holdfast binary the directors run
	Recovery bool          // holdfast's recovery on, or a plain NAT director (--recovery=off)
	Idle     int           // connections that make a request now and then (default 40)
	Busy     int           // connections that download without pause (default 24)
	Phase    time.Duration // time on A, after the failover, after the failback (default 3s)
	VRRP     bool          // keepalived moves the routes (see Options.VRRP)
	IPv6     bool          // the load goes to VIP6 through a dual-stack lab and directors (Options.IPv6); not with VRRP
	// BGP: the directors announce by BGP to BIRD routers (Options.BGP);
	// the failover takes A's links down, then kills it: the client-side
	// router moves to B at once, the real-side router after its hold
	// timer (9 s), and the failback is A announcing again (MED 10). Not
	// with VRRP; with IPv6 over a session of each family.
	BGP bool
	// ECMP: three directors active together behind both routers' ECMP
	// (Options.ECMP, ECMPHoldfastArgs); under the load A crashes (links
	// down, SIGKILL), comes back as a fresh process 4 s later, and 4 s
	// after that C leaves (SIGTERM). Phase is the time before the first
	// event and after the last. Implies BGP; not with VRRP.
	ECMP     bool
	Progress func(phase string)
}

// DemoResult is what the built-in client saw, and what the directors counted.
type DemoResult struct {
	Mode             string        `json:"mode"`
	Routing          string        `json:"routing"` // what moved the traffic: "static routes", "vrrp", "bgp" or "bgp ecmp"
	VIP              string        `json:"vip"`     // the service the load went to: VIP:80, or [VIP6]:80 with DemoOptions.IPv6
	Connections      int           `json:"connections"`
	RequestsOK       int64         `json:"requests_ok"`
	RequestsFailed   int64         `json:"requests_failed"`
	ConnectionsReset int64         `json:"connections_reset"`
	NewConnections   int64         `json:"new_connections"`
	LongestStall     time.Duration `json:"longest_stall_ns"`
	Steered          int           `json:"steered"` // found on their own real (owner probe, timestamp cookie)
	Recoveries       int           `json:"recoveries"`
	Adoptions        int           `json:"adoptions"`
	ECMP             *DemoECMP     `json:"ecmp,omitempty"` // DemoOptions.ECMP: the routers' next hops per event, the directors' flows
}

// RunDemo builds a two-director lab, runs a keep-alive HTTP load through it,
// fails over from A to B (SIGKILL, routes moved; with BGP, A's links down
// first, and the routers follow the announcements), fails back to a
// restarted A, and tears everything down, also when ctx ends first. With
// ECMP it builds the three-director ECMP lab instead (runECMPDemo).
func RunDemo(ctx context.Context, o DemoOptions) (res DemoResult, err error) {
	if o.Idle == 0 && o.Busy == 0 {
		o.Idle, o.Busy = 40, 24
	}
	if o.Phase == 0 {
		o.Phase = 3 * time.Second
	}
	progress := func(s string) {
		if o.Progress != nil {
			o.Progress(s)
		}
	}
	if o.ECMP {
		return runECMPDemo(ctx, o, progress)
	}
	res.Mode = "holdfast"
	res.Routing = "static routes"
	switch {
	case o.VRRP:
		res.Routing = "vrrp"
	case o.BGP:
		res.Routing = "bgp"
	}
	var extra []string
	if !o.Recovery {
		res.Mode = "recovery off"
		extra = []string{"--recovery=off"}
	}

	progress("building the lab")
	l, err := New(Options{Directors: 2, Reals: 3, VRRP: o.VRRP, IPv6: o.IPv6, BGP: o.BGP})
	if err != nil {
		return res, err
	}
	defer func() {
		if cerr := l.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if err := l.ServeBackends(); err != nil {
		return res, err
	}
	args := func(d *Director) []string {
		return HoldfastArgs(d, append(l.ServiceArgs("tcp", DefaultHTTPPort), extra...)...)
	}
	start := func(d *Director) (*Proc, error) {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return StartHoldfast(sctx, d, o.Binary, args(d)...)
	}
	a, err := start(l.Directors[0])
	if err != nil {
		return res, err
	}
	if o.VRRP { // A first, so that it is the master
		if err := waitMaster(ctx, l, 0); err != nil {
			return res, err
		}
	}
	if o.BGP { // the routers send the traffic to A before the load starts
		if err := waitBGP(ctx, l.WaitBGPActive, 0); err != nil {
			return res, err
		}
	}
	b, err := start(l.Directors[1])
	if err != nil {
		return res, err
	}
	if o.BGP { // B can take over
		if err := waitBGP(ctx, l.WaitBGPEstablished, 1); err != nil {
			return res, err
		}
	}

	progress(fmt.Sprintf("connecting %d clients", o.Idle+o.Busy))
	vip := netip.AddrPortFrom(VIP, DefaultHTTPPort)
	if o.IPv6 {
		vip = netip.AddrPortFrom(VIP6, DefaultHTTPPort)
	}
	res.VIP = vip.String()
	load := newDemoLoad(l.Client, vip)
	if o.BGP {
		// A request in flight at the failover waits for the real-side
		// router (BFD: 0.9 s; its hold timer, 9 s, for a director run
		// with --bfd off), then for TCP's next retransmission,
		// whose backoff has grown meanwhile: give it time before calling
		// the connection dead.
		load.timeout = 30 * time.Second
	}
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	if err := load.start(lctx, o.Idle, o.Busy); err != nil {
		return res, err
	}
	wait := func(phase string) error {
		progress(phase)
		select {
		case <-time.After(o.Phase):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := wait("running through director A"); err != nil {
		return res, err
	}
	if err := failover(ctx, l, 1, a); err != nil {
		return res, err
	}
	moved := "failover: A killed, traffic moved to B"
	if o.BGP {
		moved = "failover: A's links down, A killed, both routers through B"
	}
	if err := wait(moved); err != nil {
		return res, err
	}
	bStats, err := demoStats(ctx, l.Directors[1])
	if err != nil {
		return res, err
	}
	// The restarted directors are the lab's to stop (Close); the demo reads
	// their counters through their admin sockets.
	if o.BGP {
		if err := l.Replug(0); err != nil {
			return res, err
		}
	}
	if _, err = start(l.Directors[0]); err != nil {
		return res, err
	}
	switch {
	case o.BGP:
		// A announces again with the lower MED: both routers return to it.
		if err := waitBGP(ctx, l.WaitBGPActive, 0); err != nil {
			return res, err
		}
	case o.VRRP:
		// nopreempt: A takes mastership back only when B's holdfast dies.
		if err := failover(ctx, l, 0, b); err != nil {
			return res, err
		}
		if _, err = start(l.Directors[1]); err != nil {
			return res, err
		}
	default:
		if err := l.Flip(0); err != nil {
			return res, err
		}
	}
	if err := wait("failback: A restarted, traffic moved back to A"); err != nil {
		return res, err
	}
	progress("collecting results")
	aStats, err := demoStats(ctx, l.Directors[0])
	if err != nil {
		return res, err
	}
	stop()
	load.wg.Wait()

	res.Connections = o.Idle + o.Busy
	res.RequestsOK = load.ok.Load()
	res.RequestsFailed = load.failed.Load()
	res.ConnectionsReset = load.reset.Load()
	res.NewConnections = load.redials.Load()
	res.LongestStall = time.Duration(load.stall.Load())
	res.Steered = aStats.ProbeSteers + aStats.CookieConfirmed + bStats.ProbeSteers + bStats.CookieConfirmed
	res.Recoveries = aStats.Recovered + bStats.Recovered
	res.Adoptions = aStats.Adopted + bStats.Adopted
	progress("tearing the lab down")
	return res, nil
}

// failover kills p (the active director's holdfast) and makes director to
// active (in a BGP lab: A's links go down first, and it waits for the
// routers, the real-side one through BFD).
func failover(ctx context.Context, l *Lab, to int, p *Proc) error {
	timeout := 10 * time.Second
	if l.BGP() {
		timeout = bgpFailoverTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return l.Failover(ctx, to, func() error {
		if err := p.Signal(syscall.SIGKILL); err != nil {
			return err
		}
		<-p.Done()
		return nil
	})
}

// waitBGP runs wait (WaitBGPActive, WaitBGPEstablished) for director i,
// bounded by the time sessions take to come up and routes to move.
func waitBGP(ctx context.Context, wait func(context.Context, int) error, i int) error {
	ctx, cancel := context.WithTimeout(ctx, bgpFailoverTimeout)
	defer cancel()
	return wait(ctx, i)
}

func waitMaster(ctx context.Context, l *Lab, i int) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return l.WaitVRRPMaster(ctx, i)
}

func demoStats(ctx context.Context, d *Director) (DirectorStats, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return ReadStats(ctx, d)
}

// demoLoad is the demo's client: one goroutine per keep-alive connection.
// A request that fails counts as failed, its connection as reset, and the
// worker dials a new connection (counted) and retries; the stall of a
// request is the time from its first attempt to its success.
type demoLoad struct {
	ns                         *NS
	vip                        netip.AddrPort
	timeout                    time.Duration // a request's, before its connection counts as dead
	ok, failed, reset, redials atomic.Int64
	stall                      atomic.Int64 // longest, ns
	wg                         sync.WaitGroup
}

func newDemoLoad(ns *NS, vip netip.AddrPort) *demoLoad {
	return &demoLoad{ns: ns, vip: vip, timeout: 15 * time.Second}
}

func (d *demoLoad) dial() (net.Conn, *bufio.Reader, error) {
	network := "tcp4"
	if d.vip.Addr().Is6() {
		network = "tcp6"
	}
	c, err := d.ns.Dial(network, d.vip.String())
	if err != nil {
		return nil, nil, err
	}
	return c, bufio.NewReader(c), nil
}

func (d *demoLoad) start(ctx context.Context, idle, busy int) error {
	for i := range idle + busy {
		c, br, err := d.dial()
		if err != nil {
			return fmt.Errorf("demo client: %w", err)
		}
		isBusy := i >= idle
		rng := rand.New(rand.NewPCG(uint64(i), 1))
		d.wg.Go(func() { d.run(ctx, c, br, isBusy, rng) })
	}
	return nil
}

func (d *demoLoad) run(ctx context.Context, c net.Conn, br *bufio.Reader, busy bool, rng *rand.Rand) {
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	for ctx.Err() == nil {
		path := "/"
		if busy {
			path = fmt.Sprintf("/bytes?n=%d", 16<<10<<rng.IntN(5)) // 16 KiB .. 256 KiB
		} else {
			// Idle: a request every 200-600 ms.
			select {
			case <-time.After(time.Duration(200+rng.IntN(400)) * time.Millisecond):
			case <-ctx.Done():
				return
			}
		}
		first := time.Now()
		for {
			err := demoGet(c, br, d.vip, path, d.timeout)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			d.failed.Add(1)
			d.reset.Add(1)
			c.Close()
			for {
				c, br, err = d.dial()
				if err == nil || ctx.Err() != nil {
					break
				}
			}
			if ctx.Err() != nil {
				return
			}
			d.redials.Add(1)
			stop()
			stop = context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
		}
		d.ok.Add(1)
		RaiseMax(&d.stall, int64(time.Since(first)))
	}
}

// demoGet sends one GET on the connection and reads the whole response,
// within timeout.
func demoGet(c net.Conn, br *bufio.Reader, vip netip.AddrPort, path string, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	req, _ := http.NewRequest("GET", "http://"+vip.String()+path, nil)
	if err := req.Write(c); err != nil {
		return err
	}
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != http.StatusOK {
		err = errors.New(resp.Status)
	}
	return err
}

// RaiseMax sets m to v if v is larger.
func RaiseMax(m *atomic.Int64, v int64) {
	for {
		old := m.Load()
		if v <= old || m.CompareAndSwap(old, v) {
			return
		}
	}
}
