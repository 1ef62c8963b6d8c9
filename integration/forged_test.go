//go:build forged

// Forged-segment tests (issue 12, "Acceptance": the blind attack and the
// forged flood). Today's director fails them, so they sit behind the build
// tag `forged` and stay out of the default suite; the lead removes the tag
// once the director passes. Run them (root, one at a time):
//
//	go test -race -count=1 -tags forged -run 'TestForged' -v ./integration/
//
// HOLDFAST_FORGED_KINDS=rst,syn (say) restricts the blind attack to those
// kinds, to tell which one does the damage; the acceptance is all five.
//
// Each test runs the same load and the same attack twice, against holdfast
// and against the anchor, kernel NAT (iptables DNAT with conntrack in the
// director's namespace, as integration/bench does), logs both side by side,
// and asserts the acceptance for holdfast.

package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"holdfast/integration/forge"
	"holdfast/lab"
)

// The anchor's DNAT target: the reals as one range. nf_nat picks an address
// of a range from a hash of the tuple's addresses (not its ports), so every
// connection of the client lands on the same real, and director B picks the
// same one as A did for a flow it picks up mid-stream (conntrack's loose
// pickup, nf_conntrack_tcp_loose=1 by default).
func kernelNATTarget(l *lab.Lab) string {
	return l.Reals[0].Addr.String() + "-" + l.Reals[len(l.Reals)-1].Addr.String() + ":" + strconv.Itoa(lab.DefaultHTTPPort)
}

// setupKernelNAT turns director d's namespace into a kernel NAT director
// for vipHTTP: forwarding on, DNAT of VIP:80 to the reals.
func setupKernelNAT(t *testing.T, l *lab.Lab, d *lab.Director) {
	t.Helper()
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("kernel NAT anchor needs iptables")
	}
	if err := d.SetSysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	out, err := runIn(d.NS, 10*time.Second, "iptables", "-w", "-t", "nat", "-A", "PREROUTING", "-d", lab.VIP.String()+"/32",
		"-p", "tcp", "--dport", strconv.Itoa(lab.DefaultHTTPPort), "-j", "DNAT", "--to-destination", kernelNATTarget(l))
	if err != nil {
		t.Fatalf("iptables DNAT in %s: %v\n%s", d.Name, err, out)
	}
	// A segment conntrack finds INVALID (out of window: most forged ones) is
	// not translated; without this route its destination, the VIP, would go
	// back out of the default route to the router, which sends it here again
	// until its TTL runs out. A NAT box does not route its VIPs elsewhere.
	if _, err := d.IP("route", "add", "blackhole", lab.VIPPrefix.String()); err != nil {
		t.Fatal(err)
	}
}

// forgedSetup is one side of a comparison: a lab with either holdfast or
// kernel NAT on its directors.
type forgedSetup struct {
	name   string // "holdfast" or "kernel NAT"
	l      *lab.Lab
	p      *pair     // holdfast with two directors, else nil
	single *lab.Proc // holdfast with one director, else nil
	active int
}

func (s *forgedSetup) holdfast() bool { return s.p != nil || s.single != nil }

// activeDirector is the director the routes point at.
func (s *forgedSetup) activeDirector() *lab.Director { return s.l.Directors[s.active] }

// activeProc is the active holdfast process (nil for kernel NAT).
func (s *forgedSetup) activeProc() *lab.Proc {
	switch {
	case s.p != nil:
		return s.p.dirs[s.p.active]
	case s.single != nil:
		return s.single
	}
	return nil
}

// newForgedSetup builds a lab with `directors` directors running holdfast
// (extra flags appended) or kernel NAT.
func newForgedSetup(t *testing.T, holdfast bool, directors int, extra ...string) *forgedSetup {
	t.Helper()
	if !holdfast {
		l := NewLab(t, lab.Options{Directors: directors, Reals: 3})
		if err := l.ServeBackends(); err != nil {
			t.Fatal(err)
		}
		for _, d := range l.Directors {
			setupKernelNAT(t, l, d)
		}
		return &forgedSetup{name: "kernel NAT", l: l}
	}
	if directors == 2 {
		p := newPair(t, nil, extra, extra)
		return &forgedSetup{name: "holdfast", l: p.l, p: p}
	}
	l := startLab(t, lab.Options{Reals: 3})
	d := l.Directors[0]
	args := append([]string{"--service", "tcp:" + vipHTTP.String(), "--scheduler", "rr"}, realFlags(l, lab.DefaultHTTPPort)...)
	args = append(args, extra...)
	return &forgedSetup{name: "holdfast", l: l, single: StartDirector(t, d.NS, directorArgs(d, args...)...)}
}

// failover moves the service from A to B: holdfast A is killed; for kernel
// NAT, A's forwarding is switched off (its conntrack table dies with it, as
// it would with the machine). Then the routes move.
func (s *forgedSetup) failover(t *testing.T) {
	t.Helper()
	if s.p != nil {
		s.p.failover(t)
		s.active = s.p.active
		return
	}
	if err := s.l.Directors[s.active].SetSysctl("net.ipv4.ip_forward", "0"); err != nil {
		t.Fatal(err)
	}
	s.active = 1 - s.active
	if err := s.l.Flip(s.active); err != nil {
		t.Fatal(err)
	}
}

// recoveriesStarted is the active holdfast's recoveries_started_total, -1
// for kernel NAT.
func (s *forgedSetup) recoveriesStarted(t *testing.T) int {
	if !s.holdfast() {
		return -1
	}
	return directorCounters(t, s.activeDirector()).RecoveryStarted
}

// packetsRead is the client-side packets the active holdfast read from its
// TUN: device_packets_total{direction="read"} (the sum of its by-queue
// counter, device_queue_packets_read_total) less the packets its real-side
// link received, which the TUN carries too (the reals' replies, and their
// answers to recovery dials). For kernel NAT, the packets its uplink
// received.
func (s *forgedSetup) packetsRead(t *testing.T) uint64 {
	t.Helper()
	d := s.activeDirector()
	if !s.holdfast() {
		return s.uplinkRx(t)
	}
	var n uint64
	for _, q := range directorCounters(t, d).ReadByQueue {
		n += q
	}
	st, err := d.LinkStats(d.RSIface)
	if err != nil {
		t.Fatal(err)
	}
	return n - st.RxPackets
}

// uplinkRx is the packets the active director's uplink received.
func (s *forgedSetup) uplinkRx(t *testing.T) uint64 {
	t.Helper()
	d := s.activeDirector()
	st, err := d.LinkStats(d.UplinkIface)
	if err != nil {
		t.Fatal(err)
	}
	return st.RxPackets
}

// realSnapshot is what the reals hold and have accepted: their TCP sockets
// whose peer is the recovery address (ss -tan in each real's namespace), and
// the connections their backends accepted so far.
type realSnapshot struct {
	recoverySockets map[string]bool // "real local peer"
	accepted        int64
}

func snapshotReals(t *testing.T, l *lab.Lab) realSnapshot {
	t.Helper()
	s := realSnapshot{recoverySockets: map[string]bool{}}
	peer := lab.RecoveryAddr.String() + ":"
	for _, r := range l.Reals {
		out, err := runIn(r.NS, 30*time.Second, "ss", "-Htan")
		if err != nil {
			t.Fatalf("ss in %s: %v\n%s", r.Name, err, out)
		}
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			// State Recv-Q Send-Q Local:Port Peer:Port
			if len(f) >= 5 && f[0] != "LISTEN" && strings.HasPrefix(f[4], peer) {
				s.recoverySockets[r.Label+" "+f[3]+" "+f[4]] = true
			}
		}
		s.accepted += r.Stats.HTTPConns.Load()
	}
	return s
}

// opened is what the reals gained from s to later: recovery-address sockets
// present in later and not in s, and connections accepted in between (this
// also catches connections that came and went between the snapshots).
func (s realSnapshot) opened(later realSnapshot) (sockets int, accepted int64) {
	for k := range later.recoverySockets {
		if !s.recoverySockets[k] {
			sockets++
		}
	}
	return sockets, later.accepted - s.accepted
}

// victims are the tuples of conns as an attacker knows them.
func victims(conns []*httpConn) []forge.Tuple {
	out := make([]forge.Tuple, len(conns))
	for i, h := range conns {
		out[i] = forge.Tuple{Client: netip.MustParseAddrPort(h.c.LocalAddr().String()), VIP: vipHTTP}
	}
	return out
}

// loss sorts the errors of lost connections.
type loss struct {
	lost, resets, timeouts int
	first                  error
}

func classify(errs []error) loss {
	l := loss{lost: len(errs), first: firstErr(errs)}
	for _, err := range errs {
		switch {
		case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			l.resets++
		case errors.Is(err, os.ErrDeadlineExceeded):
			l.timeouts++
		}
	}
	return l
}

func (l loss) String() string {
	s := fmt.Sprintf("%d lost (%d reset, %d timeout)", l.lost, l.resets, l.timeouts)
	if l.first != nil {
		s += fmt.Sprintf(", first: %v", l.first)
	}
	return s
}

// workWhile has every connection make a request every 30 to 150 ms (random)
// until done is closed, then one final request; a connection stops at its
// first error. It returns the errors (one per lost connection).
func workWhile(conns []*httpConn, done <-chan struct{}, seed uint64) []error {
	return eachConn(conns, func(i int, h *httpConn) error {
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		for {
			select {
			case <-done:
				_, _, _, err := h.get("/")
				return err
			case <-time.After(time.Duration(30+rng.IntN(120)) * time.Millisecond):
				// Load pacing, not an event: the connection works now and then.
			}
			if _, _, _, err := h.get("/"); err != nil {
				return err
			}
		}
	})
}

// blindResult is one side's numbers for a blind attack.
type blindResult struct {
	conns          int
	kinds          []forge.Kind
	loss           loss
	openedSockets  int   // recovery-address sockets new on the reals
	accepted       int64 // connections the reals accepted during the attack
	recoveries     int   // recoveries started during the attack (-1: kernel NAT)
	sent           forge.Report
	uplinkReceived uint64 // packets the director's uplink received during the attack
}

func (r blindResult) String() string {
	rec := "n/a"
	if r.recoveries >= 0 {
		rec = strconv.Itoa(r.recoveries)
	}
	return fmt.Sprintf("%d of %d connections lost (%d reset, %d timeout); %d connections opened on the reals from %v (ss), %d accepted by the reals; %s recoveries started; %d forged segments in %v (%.0f/s), director uplink received %d packets",
		r.loss.lost, r.conns, r.loss.resets, r.loss.timeouts, r.openedSockets, lab.RecoveryAddr, r.accepted, rec,
		r.sent.Sent, r.sent.Elapsed.Round(time.Millisecond), r.sent.Rate(), r.uplinkReceived)
}

const (
	blindConns  = 100
	blindRounds = 20
	blindRate   = 5000 // forged segments per second: 10,000 segments in 2 s
)

// blindAttack runs the blind attack on one side: 100 keep-alive connections
// make a request each (through B after a failover when failover is set, and
// then one more), then the forger sends each tuple 20 rounds of the five
// kinds while the connections work, and each makes a final request.
func blindAttack(t *testing.T, s *forgedSetup, failover bool) blindResult {
	t.Helper()
	kinds := blindKinds(t)
	conns := dialHTTP(t, s.l.Client, blindConns)
	requireNoErrors(t, s.name+": before the attack", eachConn(conns, requests(1)))
	if failover {
		s.failover(t)
		// Every flow is picked up mid-stream on B by this request.
		requireNoErrors(t, s.name+": first request through B", eachConn(conns, requests(1)))
	}
	snd, err := forge.Open(s.l.Client)
	if err != nil {
		t.Fatal(err)
	}
	defer snd.Close()

	before := snapshotReals(t, s.l)
	recBefore := s.recoveriesStarted(t)
	rxBefore := s.uplinkRx(t)

	done := make(chan struct{})
	var (
		rep    forge.Report
		forged error
		wg     sync.WaitGroup
	)
	wg.Go(func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		rep, forged = snd.Blind(ctx, forge.Blind{
			Victims: victims(conns),
			Rounds:  blindRounds,
			Kinds:   kinds,
			Rand:    rand.New(rand.NewPCG(12, 12)),
			Limits:  forge.Limits{Rate: blindRate, Duration: 30 * time.Second},
		})
	})
	errs := workWhile(conns, done, 12)
	wg.Wait()
	if forged != nil {
		t.Fatalf("%s: forger: %v (after %d segments)", s.name, forged, rep.Sent)
	}
	if want := blindConns * blindRounds * len(kinds); rep.Sent != want {
		t.Fatalf("%s: forger sent %d segments, want %d", s.name, rep.Sent, want)
	}

	after := snapshotReals(t, s.l)
	r := blindResult{conns: len(conns), kinds: kinds, loss: classify(errs), sent: rep, uplinkReceived: s.uplinkRx(t) - rxBefore}
	r.openedSockets, r.accepted = before.opened(after)
	if recBefore >= 0 {
		r.recoveries = s.recoveriesStarted(t) - recBefore
	} else {
		r.recoveries = -1
	}
	// The attack must have reached the director, or the numbers say nothing.
	if r.uplinkReceived < uint64(rep.Sent) {
		t.Errorf("%s: the director's uplink received %d packets during the attack, fewer than the %d forged: the router dropped them (rp_filter?)",
			s.name, r.uplinkReceived, rep.Sent)
	}
	return r
}

// kindsEnv restricts the blind attack to some kinds, to tell which one does
// the damage: a comma-separated list of forge.Kind names ("ack|psh+data",
// "ack", "rst", "syn", "fin|ack"). Unset means all five (the acceptance).
const kindsEnv = "HOLDFAST_FORGED_KINDS"

func blindKinds(t *testing.T) []forge.Kind {
	t.Helper()
	v := os.Getenv(kindsEnv)
	if v == "" {
		return forge.Kinds
	}
	var ks []forge.Kind
	for _, name := range strings.Split(v, ",") {
		i := slices.IndexFunc(forge.Kinds, func(k forge.Kind) bool { return k.String() == strings.TrimSpace(name) })
		if i < 0 {
			t.Fatalf("%s=%q: no kind %q; kinds: %v", kindsEnv, v, name, forge.Kinds)
		}
		ks = append(ks, forge.Kinds[i])
	}
	t.Logf("%s: only %v", kindsEnv, ks)
	return ks
}

// runBlind runs the blind attack against holdfast and kernel NAT, logs both
// and asserts the acceptance for holdfast.
func runBlind(t *testing.T, failover bool) {
	what := "no failover"
	if failover {
		what = "right after a failover"
	}
	results := map[string]blindResult{}
	for _, holdfast := range []bool{true, false} {
		name := map[bool]string{true: "holdfast", false: "kernelNAT"}[holdfast]
		t.Run(name, func(t *testing.T) {
			dirs := 1
			if failover {
				dirs = 2
			}
			s := newForgedSetup(t, holdfast, dirs)
			r := blindAttack(t, s, failover)
			t.Logf("blind attack, %s, %s: %v", what, s.name, r)
			results[name] = r
			if holdfast && (r.loss.lost != 0 || r.openedSockets != 0 || r.accepted != 0 || r.recoveries != 0) {
				t.Errorf("blind attack, %s, holdfast: %d of %d connections lost (%d reset, %d timeout), %d connections opened on the reals (ss; %d accepted), %d recoveries started; want 0, 0, 0 (kernel NAT: see its subtest); first loss: %v",
					what, r.loss.lost, r.conns, r.loss.resets, r.loss.timeouts, r.openedSockets, r.accepted, r.recoveries, r.loss.first)
			}
		})
	}
	h, ok1 := results["holdfast"]
	k, ok2 := results["kernelNAT"]
	if !ok1 || !ok2 {
		return // a subtest was not run or stopped early
	}
	t.Logf("blind attack, %s, side by side (%d connections, %d rounds of %v per tuple):\n  holdfast:   lost %3d (reset %d, timeout %d), opened on reals %d (accepted %d), recoveries %d\n  kernel NAT: lost %3d (reset %d, timeout %d), opened on reals %d (accepted %d), recoveries n/a",
		what, blindConns, blindRounds, h.kinds,
		h.loss.lost, h.loss.resets, h.loss.timeouts, h.openedSockets, h.accepted, h.recoveries,
		k.loss.lost, k.loss.resets, k.loss.timeouts, k.openedSockets, k.accepted)
}

// TestForgedBlindAttack: 100 idle keep-alive connections through director
// A; the forger sends each tuple 20 rounds of the five forged kinds with
// random seq and ack while they work. Holdfast must lose none, open no
// connection on the reals and start no recovery.
func TestForgedBlindAttack(t *testing.T) { runBlind(t, false) }

// TestForgedBlindAttackAfterFailover: the same right after a failover,
// when every flow has been picked up mid-stream on B (each made one request
// through B before the attack).
func TestForgedBlindAttackAfterFailover(t *testing.T) { runBlind(t, true) }

// --- the forged flood ---

const (
	floodRate     = 16000 // forged segments per second sent (the issue: 11,000 or more read; the margin is for a loaded machine)
	floodMinRead  = 11000
	floodDuration = 4 * time.Second
	floodVictims  = 100
	maxRSSGrowth  = 16 << 20
)

// latencies measures the victims: every connection makes a request every
// 80 to 120 ms for d and records each request's time. It returns the
// latencies and the errors.
func latencies(conns []*httpConn, d time.Duration, seed uint64) ([]time.Duration, []error) {
	var mu sync.Mutex
	var all []time.Duration
	end := time.Now().Add(d)
	errs := eachConn(conns, func(i int, h *httpConn) error {
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		var mine []time.Duration
		defer func() {
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		}()
		for time.Now().Before(end) {
			start := time.Now()
			if _, _, _, err := h.get("/"); err != nil {
				return err
			}
			mine = append(mine, time.Since(start))
			// Load pacing: about 10 requests per second per connection.
			time.Sleep(time.Duration(80+rng.IntN(40)) * time.Millisecond)
		}
		return nil
	})
	return all, errs
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

// vmRSS is a process's resident memory in bytes (/proc/PID/status).
func vmRSS(t *testing.T, pid int) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest) // "12345 kB"
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				if err == nil {
					return kb << 10
				}
			}
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

type floodResult struct {
	baseP50, baseP99, floodP50, floodP99 time.Duration
	baseErrs, floodErrs                  loss
	sent                                 forge.Report
	readRate                             float64 // forged segments per second the director read (flood phase less baseline)
	uplinkRate                           float64 // the same from the packets its uplink received
	openedSockets                        int
	accepted                             int64
	recoveries                           int
	flowsCreated                         int
	rssBefore, rssAfter                  int64 // holdfast only
}

func (r floodResult) String() string {
	s := fmt.Sprintf("victims p50/p99 %v/%v without the flood, %v/%v under it (%.1fx); %d forged sent in %v (%.0f/s), director read %.0f forged/s (uplink %.0f/s); %d connections opened on the reals from %v (ss), %d accepted by the reals; victims lost: %d before, %d during",
		r.baseP50.Round(10*time.Microsecond), r.baseP99.Round(10*time.Microsecond), r.floodP50.Round(10*time.Microsecond), r.floodP99.Round(10*time.Microsecond),
		float64(r.floodP99)/float64(max(r.baseP99, 1)), r.sent.Sent, r.sent.Elapsed.Round(time.Millisecond), r.sent.Rate(), r.readRate, r.uplinkRate,
		r.openedSockets, lab.RecoveryAddr, r.accepted, r.baseErrs.lost, r.floodErrs.lost)
	if r.rssBefore > 0 {
		s += fmt.Sprintf("; %d recoveries started, %d flows created; RSS %.1f -> %.1f MB (+%.1f)", r.recoveries, r.flowsCreated,
			float64(r.rssBefore)/(1<<20), float64(r.rssAfter)/(1<<20), float64(r.rssAfter-r.rssBefore)/(1<<20))
	}
	return s
}

// forgedFlood measures the victims without a flood, then under one:
// ACK|PSH segments with payload and random seq/ack from random addresses of
// the client subnet (not the client's own, not the router's) at floodRate.
func forgedFlood(t *testing.T, s *forgedSetup) floodResult {
	t.Helper()
	conns := dialHTTP(t, s.l.Client, floodVictims)
	requireNoErrors(t, s.name+": victims' first request", eachConn(conns, requests(1)))
	var r floodResult

	read0, rx0 := s.packetsRead(t), s.uplinkRx(t)
	t0 := time.Now()
	base, errs := latencies(conns, floodDuration, 1)
	el := time.Since(t0).Seconds()
	baseRead, baseRx := float64(s.packetsRead(t)-read0)/el, float64(s.uplinkRx(t)-rx0)/el
	r.baseErrs = classify(errs)
	requireNoErrors(t, s.name+": victims without the flood", errs)
	r.baseP50, r.baseP99 = percentile(base, 0.5), percentile(base, 0.99)

	snd, err := forge.Open(s.l.Client)
	if err != nil {
		t.Fatal(err)
	}
	defer snd.Close()
	before := snapshotReals(t, s.l)
	var statsBefore lab.DirectorStats
	if p := s.activeProc(); p != nil {
		r.rssBefore = vmRSS(t, p.PID())
		statsBefore = directorCounters(t, s.activeDirector())
	}
	read1, rx1 := s.packetsRead(t), s.uplinkRx(t)
	t1 := time.Now()
	var (
		wg     sync.WaitGroup
		forged error
	)
	wg.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), floodDuration+10*time.Second)
		defer cancel()
		r.sent, forged = snd.Flood(ctx, forge.Flood{
			Sources: lab.ClientPrefix,
			Exclude: []netip.Addr{lab.ClientAddr, lab.ClientGateway},
			Dst:     vipHTTP,
			Rand:    rand.New(rand.NewPCG(11, 11)),
			Limits:  forge.Limits{Rate: floodRate, Duration: floodDuration},
		})
	})
	flood, errs := latencies(conns, floodDuration, 2)
	wg.Wait()
	el = time.Since(t1).Seconds()
	floodRead, floodRx := float64(s.packetsRead(t)-read1)/el, float64(s.uplinkRx(t)-rx1)/el
	if forged != nil {
		t.Fatalf("%s: flood: %v (after %d segments)", s.name, forged, r.sent.Sent)
	}
	r.readRate, r.uplinkRate = floodRead-baseRead, floodRx-baseRx
	r.floodErrs = classify(errs)
	r.floodP50, r.floodP99 = percentile(flood, 0.5), percentile(flood, 0.99)
	if p := s.activeProc(); p != nil {
		r.rssAfter = vmRSS(t, p.PID())
		st := directorCounters(t, s.activeDirector())
		r.recoveries = st.RecoveryStarted - statsBefore.RecoveryStarted
		r.flowsCreated = st.FlowsCreated - statsBefore.FlowsCreated
	}
	r.openedSockets, r.accepted = before.opened(snapshotReals(t, s.l))
	return r
}

// TestForgedFlood: up to 16,000 forged mid-stream segments per second for
// 4 s from random addresses of the client subnet while 100 keep-alive
// victims work. Holdfast must open no connection on the reals for the
// spoofed sources, keep the victims' p99 latency within 3x of the same run
// without the flood, and grow by no more than 16 MB.
func TestForgedFlood(t *testing.T) {
	results := map[string]floodResult{}
	for _, holdfast := range []bool{true, false} {
		name := map[bool]string{true: "holdfast", false: "kernelNAT"}[holdfast]
		t.Run(name, func(t *testing.T) {
			s := newForgedSetup(t, holdfast, 1)
			// Latency under a flood depends on the machine's other work: say it.
			if la, err := os.ReadFile("/proc/loadavg"); err == nil {
				t.Logf("load average before the run: %s", strings.TrimSpace(string(la)))
			}
			r := forgedFlood(t, s)
			results[name] = r
			t.Logf("forged flood, %s: %v", s.name, r)
			if r.readRate < floodMinRead {
				t.Errorf("%s read %.0f forged segments/s, want at least %d: the flood did not reach the director at the rate the acceptance asks", s.name, r.readRate, floodMinRead)
			}
			if !holdfast {
				return
			}
			var fails []string
			if r.openedSockets != 0 || r.accepted != 0 {
				fails = append(fails, fmt.Sprintf("%d connections opened on the reals (ss; %d accepted), want 0", r.openedSockets, r.accepted))
			}
			if r.floodP99 > 3*r.baseP99 {
				fails = append(fails, fmt.Sprintf("victims' p99 %v under the flood, more than 3x %v without it", r.floodP99.Round(10*time.Microsecond), r.baseP99.Round(10*time.Microsecond)))
			}
			if g := r.rssAfter - r.rssBefore; g > maxRSSGrowth {
				fails = append(fails, fmt.Sprintf("resident memory grew by %.1f MB, want at most %d MB", float64(g)/(1<<20), maxRSSGrowth>>20))
			}
			if r.floodErrs.lost != 0 {
				fails = append(fails, fmt.Sprintf("victims: %v", r.floodErrs))
			}
			if len(fails) > 0 {
				t.Errorf("forged flood, holdfast (%.0f forged/s read): %s", r.readRate, strings.Join(fails, "; "))
			}
		})
	}
	h, ok1 := results["holdfast"]
	k, ok2 := results["kernelNAT"]
	if !ok1 || !ok2 {
		return // a subtest was not run or stopped early
	}
	t.Logf("forged flood side by side (%d victims, %d forged/s for %v):\n  holdfast:   p99 %v -> %v, opened on reals %d (accepted %d), read %.0f/s, RSS +%.1f MB\n  kernel NAT: p99 %v -> %v, opened on reals %d (accepted %d), read %.0f/s",
		floodVictims, floodRate, floodDuration,
		h.baseP99.Round(10*time.Microsecond), h.floodP99.Round(10*time.Microsecond), h.openedSockets, h.accepted, h.readRate, float64(h.rssAfter-h.rssBefore)/(1<<20),
		k.baseP99.Round(10*time.Microsecond), k.floodP99.Round(10*time.Microsecond), k.openedSockets, k.accepted, k.readRate)
}
