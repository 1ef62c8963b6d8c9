package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// How `holdfast lab up --ecmp` and `holdfast lab demo --ecmp` run a group
// of directors in an ECMP lab (ecmp.go, issue 17): what each director's
// holdfast is given, and the events of a group whose membership changes.

// ecmpSettle bounds the wait for the routers after a membership change. The
// real-side router sits on the reals' segment, whose link stays up when a
// director dies; the lab's routers run BFD with the directors (holdfast
// answers it by default), which drops a dead director in 0.9 s, where the
// hold timer alone would take 9 s (and a director killed and restarted 4
// s later, the acceptance's scenario, would never have been dropped). A
// withdrawal or a new session is a matter of milliseconds; the bound
// leaves room for a loaded machine and for a director run with --bfd off
// (its hold time).
const ecmpSettle = BGPHoldTime + 10*time.Second

// ECMPHoldfastArgs is `holdfast run` for director d of an ECMP lab as a
// member of a group runs it (issue 17's acceptance): HoldfastArgs (its own
// recovery address and --director-id, the BGP peers, ECMPMED), services
// scheduled by mh (Maglev: every director picks the same real for a
// tuple, so a flow the routers move lands where it was), --adoption on (a
// director that sees only a real's replies takes them up, also with
// --recovery=off); BGP and BFD keep holdfast's defaults. services are `--service` flags
// with their reals (Lab.ServiceArgs); their scheduler is replaced. extra
// follows.
func ECMPHoldfastArgs(d *Director, services []string, extra ...string) []string {
	svc := slices.Clone(services)
	for i := 0; i+1 < len(svc); i++ {
		if svc[i] == "--scheduler" {
			svc[i+1] = "mh"
		}
	}
	args := append(svc, "--adoption", "on")
	return HoldfastArgs(d, append(args, extra...)...)
}

// ParseDirector reads an operator's name of a director: its label (A, B,
// C, either case) or its number (1..3, holdfast's --director-id). It
// returns the label; whether the lab has that director is the lab's to
// say.
func ParseDirector(s string) (string, bool) {
	if len(s) != 1 {
		return "", false
	}
	switch c := s[0]; {
	case c >= 'A' && c <= 'C':
		return s, true
	case c >= 'a' && c <= 'c':
		return strings.ToUpper(s), true
	case c >= '1' && c <= '3':
		return string(rune('A' + c - '1')), true
	}
	return "", false
}

// directorIndex is the index in l.Directors of the director labelled
// label.
func (l *Lab) directorIndex(label string) (int, error) {
	i := slices.IndexFunc(l.Directors, func(d *Director) bool { return d.Label == label })
	if i < 0 {
		var ls []string
		for _, d := range l.Directors {
			ls = append(ls, d.Label+" ("+strconv.Itoa(d.ID)+")")
		}
		return 0, fmt.Errorf("this lab has no director %s (it has %s)", label, strings.Join(ls, ", "))
	}
	return i, nil
}

// NextHops are the directors the routers of an ECMP lab spread the
// traffic over at one moment, by label.
type NextHops struct {
	ClientSide []string `json:"client_side"` // the client-side router's VIP route
	RealSide   []string `json:"real_side"`   // the real-side router's default route
}

// String is "3 (A, B, C)", or "2 (B, C) client side, 3 (A, B, C) real side"
// when the routers disagree.
func (n NextHops) String() string {
	f := func(ls []string) string { return fmt.Sprintf("%d (%s)", len(ls), strings.Join(ls, ", ")) }
	if slices.Equal(n.ClientSide, n.RealSide) {
		return f(n.ClientSide)
	}
	return f(n.ClientSide) + " client side, " + f(n.RealSide) + " real side"
}

// ECMPNextHops reads both routers' next hops now (ECMPRoutes).
func (l *Lab) ECMPNextHops() (NextHops, error) {
	vip, reals, err := l.ECMPRoutes()
	if err != nil {
		return NextHops{}, err
	}
	ls := func(ds []*Director) []string {
		out := []string{}
		for _, d := range ds {
			out = append(out, d.Label)
		}
		return out
	}
	return NextHops{ClientSide: ls(vip), RealSide: ls(reals)}, nil
}

// waitECMP waits, up to ecmpSettle, until both routers spread the traffic
// over exactly ds (WaitECMP), and returns how long that took.
func (l *Lab) waitECMP(ctx context.Context, ds []*Director) (time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, ecmpSettle)
	defer cancel()
	err := l.WaitECMP(ctx, ds...)
	return time.Since(start), err
}

// The ECMP demo (DemoOptions.ECMP): three directors behind both routers'
// ECMP under the demo's load; A crashes (its links go down, then SIGKILL),
// comes back as a fresh process ECMPDemoEventGap later, and ECMPDemoEventGap after
// that C leaves (SIGTERM: it withdraws, drains, stops), as in issue 17's
// acceptance.

// ECMPDemoEventGap is the time from one membership change of the ECMP
// demo to the next.
const ECMPDemoEventGap = 4 * time.Second

// DemoECMP is what an ECMP demo adds to its DemoResult: the routers' next
// hops at the start and after each event, and what each director carried.
type DemoECMP struct {
	Events    []DemoEvent    `json:"events"`
	Directors []DemoDirector `json:"directors"`
}

// DemoEvent is the routers' next hops after one event (or at the start).
type DemoEvent struct {
	Event    string        `json:"event"`
	At       time.Duration `json:"at_ns"`      // since the load started (0: before it)
	Settled  time.Duration `json:"settled_ns"` // from the event until the routers showed NextHops
	NextHops NextHops      `json:"next_hops"`
	// NotSettled says why the routers did not reach the expected next
	// hops within ecmpSettle; NextHops are then what they had.
	NotSettled string `json:"not_settled,omitempty"`
}

// DemoDirector is what one director's holdfast processes counted, added
// up over its restarts (a killed process's counters are read just before
// the kill, a leaving one's during its drain).
type DemoDirector struct {
	Label     string `json:"label"`
	Processes int    `json:"processes"`
	Flows     int    `json:"flows"`   // flows created: of a client's SYN, or adopted
	Adopted   int    `json:"adopted"` // flows taken up from a real's packet (replies another director's flow sent there)
	Steered   int    `json:"steered"` // connections it found on their real (cookie, owner probe)
	Recovered int    `json:"recovered"`
}

func (dd *DemoDirector) add(s DirectorStats) {
	dd.Processes++
	dd.Flows += s.FlowsCreated
	dd.Adopted += s.Adopted
	dd.Steered += s.ProbeSteers + s.CookieConfirmed
	dd.Recovered += s.Recovered
}

// runECMPDemo is RunDemo for DemoOptions.ECMP.
func runECMPDemo(ctx context.Context, o DemoOptions, progress func(string)) (res DemoResult, err error) {
	res.Mode, res.Routing = "holdfast", "bgp ecmp"
	if o.VRRP {
		return res, errors.New("lab: the ECMP demo with VRRP: the ECMP lab is a BGP lab")
	}
	var extra []string
	if !o.Recovery {
		res.Mode = "recovery off"
		extra = []string{"--recovery=off"} // --adoption on stays: plain NAT on half a flow
	}
	progress("building the ECMP lab")
	l, err := New(Options{Directors: 3, Reals: 3, BGP: true, ECMP: true})
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
	a, b, c := l.Directors[0], l.Directors[1], l.Directors[2]
	procs := make([]*Proc, len(l.Directors)) // each director's current holdfast; the lab stops them (Close)
	start := func(i int) error {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		d := l.Directors[i]
		p, err := StartHoldfast(sctx, d, o.Binary, ECMPHoldfastArgs(d, l.ServiceArgs("tcp", DefaultHTTPPort), extra...)...)
		procs[i] = p
		return err
	}
	for i := range l.Directors {
		if err := start(i); err != nil {
			return res, err
		}
	}
	ecmp := &DemoECMP{}
	res.ECMP = ecmp
	var loadStart time.Time
	// event records the routers' next hops once they are want (or
	// ecmpSettle after the event at t, whichever comes first).
	event := func(name string, t time.Time, want ...*Director) error {
		took, werr := l.waitECMP(ctx, want)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		nh, err := l.ECMPNextHops()
		if err != nil {
			return err
		}
		ev := DemoEvent{Event: name, Settled: took, NextHops: nh}
		if !loadStart.IsZero() {
			ev.At = t.Sub(loadStart)
		}
		if werr != nil {
			ev.NotSettled = werr.Error()
		}
		ecmp.Events = append(ecmp.Events, ev)
		progress(fmt.Sprintf("%s: both routers' next hops %s", name, nh))
		return nil
	}
	// until waits until d after t, or ctx's end.
	until := func(t time.Time, d time.Duration) error {
		select {
		case <-time.After(time.Until(t.Add(d))):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := event("at the start", time.Now(), a, b, c); err != nil {
		return res, err
	}

	progress(fmt.Sprintf("connecting %d clients", o.Idle+o.Busy))
	vip := netip.AddrPortFrom(VIP, DefaultHTTPPort)
	res.VIP = vip.String()
	load := newDemoLoad(l.Client, vip)
	// A request whose reply the real-side router hashes to the dead
	// director waits for its hold timer, then for the real's next
	// retransmission, whose backoff has grown meanwhile.
	load.timeout = 30 * time.Second
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	if err := load.start(lctx, o.Idle, o.Busy); err != nil {
		return res, err
	}
	loadStart = time.Now()
	progress("running through A, B and C")
	if err := until(loadStart, o.Phase); err != nil {
		return res, err
	}

	counted := make([]DemoDirector, len(l.Directors))
	for i, d := range l.Directors {
		counted[i].Label = d.Label
	}
	// A's counters die with it: read them just before the crash.
	aStats, err := demoStats(ctx, a)
	if err != nil {
		return res, err
	}
	counted[0].add(aStats)
	killed := time.Now()
	if err := l.Unplug(0); err != nil {
		return res, err
	}
	procs[0].Signal(syscall.SIGKILL) //nolint:errcheck // it may be dead already
	<-procs[0].Done()
	if err := event("A killed (links down, SIGKILL)", killed, b, c); err != nil {
		return res, err
	}
	if err := until(killed, ECMPDemoEventGap); err != nil {
		return res, err
	}
	back := time.Now()
	if err := l.Replug(0); err != nil {
		return res, err
	}
	if err := start(0); err != nil {
		return res, err
	}
	if err := event("A back (a fresh process)", back, a, b, c); err != nil {
		return res, err
	}
	if err := until(back, ECMPDemoEventGap); err != nil {
		return res, err
	}
	// C's counters as it starts to leave, in case it is gone before the
	// read during its drain.
	cStats, err := demoStats(ctx, c)
	if err != nil {
		return res, err
	}
	left := time.Now()
	if err := procs[2].Signal(syscall.SIGTERM); err != nil {
		return res, err
	}
	if err := event("C left (SIGTERM: withdraw, drain, stop)", left, a, b); err != nil {
		return res, err
	}
	if s, err := demoStats(ctx, c); err == nil {
		cStats = s
	}
	counted[2].add(cStats)
	progress("running through A and B")
	if err := until(left, o.Phase); err != nil {
		return res, err
	}
	progress("collecting results")
	for _, i := range []int{0, 1} {
		s, err := demoStats(ctx, l.Directors[i])
		if err != nil {
			return res, err
		}
		counted[i].add(s)
	}
	stop()
	load.wg.Wait()

	res.Connections = o.Idle + o.Busy
	res.RequestsOK = load.ok.Load()
	res.RequestsFailed = load.failed.Load()
	res.ConnectionsReset = load.reset.Load()
	res.NewConnections = load.redials.Load()
	res.LongestStall = time.Duration(load.stall.Load())
	for _, dd := range counted {
		res.Steered += dd.Steered
		res.Recoveries += dd.Recovered
		res.Adoptions += dd.Adopted
	}
	ecmp.Directors = counted
	progress("tearing the lab down")
	return res, nil
}
