package nat

import (
	"cmp"
	"encoding/binary"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"holdfast/balancer"
	"holdfast/internal/wire"
	"holdfast/nat/nattest"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// FuzzDirectorSteps drives one Director with recovery on through a sequence
// of steps read from the fuzz input: client, real and UDP packets, ICMP
// errors quoting a flow's packet, the ends of the dials the fake dialer
// recorded, time passing with sweeps, runtime changes to the reals, and the
// miss path's answers: a real's to an owner probe, the client's to a
// challenge, a tentative cookie flow's real's. The peers are Quiet: only
// these steps answer what the Director emits. After every step it checks the
// index, counter, parking, dial-gate, port, budget and miss-path invariants
// (checkDirector, checkMiss).
//
// Encoding: one op byte (op % numOps), then the op's parameter bytes; a
// missing byte reads as 0. Sequence numbers are picked relative to a small
// model of each client's connection (sel), so that short inputs reach the
// in-window paths.
func FuzzDirectorSteps(f *testing.F) {
	for _, s := range stepSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		runSteps(t, b)
	})
}

// The handmade seeds reach what they are meant to cover.
func TestDirectorStepSeeds(t *testing.T) {
	seeds := stepSeeds()
	checks := []struct {
		name string
		ok   func(Stats) bool
	}{
		{"recovery succeeds", func(s Stats) bool {
			return s.RecoverySucceeded == 1 && s.ICMPErrors == 2 && s.FlowsExpired == 1
		}},
		{"refused, retried, failed", func(s Stats) bool {
			return s.RecoveryRetries[FailRefused] == 1 && s.RecoveryFailed[FailRefused] == 1 && s.RecoveryFailed[FailTimeout] == 1 && s.ClientResets == 2
		}},
		{"adoption during a dial", func(s Stats) bool {
			return s.Adopted == 2 && s.AdoptAborts == 2 && s.RecoverySucceeded == 0
		}},
		{"stale flow", func(s Stats) bool { return s.StaleSuspects == 1 && s.StaleFlows == 1 && s.RecoverySucceeded == 1 }},
		{"re-home", func(s Stats) bool { return s.RehomeStarted == 2 && s.Rehomed == 2 }},
		{"shutdown", func(s Stats) bool { return s.RecoveryFailed[FailShutdown] == 3 && s.ClientResets == 0 }},
		{"budgets", func(s Stats) bool {
			return s.Drop(DropRecoveryPrefixBusy) == 1 && s.Drop(DropRecoveryBusy) == 1 && s.Drop(DropRecoveryPrefixFlows) == 1 &&
				s.Drop(DropRecoveryRate) == 1 && s.RecoverySucceeded == 4
		}},
		{"no port", func(s Stats) bool {
			return s.RecoverySucceeded == 6 && s.RecoveryFailed[FailError] == 1 && s.ClientResets == 1 && s.Parked == 7
		}},
		{"kept on its real", func(s Stats) bool { return s.RehomeKept == 1 && s.RehomeStarted == 0 }},
		{"re-home races", func(s Stats) bool {
			return s.Drop(DropRehomed) == 1 && s.Drop(DropRecoveryPending) == 1 && s.Rehomed == 1 && s.AdoptAborts == 1
		}},
		{"cookie steers", func(s Stats) bool {
			return s.CookieSteers == 4 && s.CookieResets == 1 && s.ProbeSteers == 1 && s.CookieConfirmed == 3 && s.ProbesSent == 2
		}},
		{"probe answers", func(s Stats) bool {
			return s.ProbeOthers == 1 && s.ProbeResets == 4 && s.ProbesSilent == 1 && s.ChallengesRejected == 2 && s.RecoveryStarted == 0
		}},
		{"challenges", func(s Stats) bool {
			return s.ChallengeResets == 1 && s.ChallengesPassed == 2 && s.ChallengesUnanswered == 1 &&
				s.RecoveryStarted == 2 && s.Drop(DropStrayRST) == 2
		}},
	}
	if len(checks) != len(seeds) {
		t.Fatalf("%d seeds, %d checks", len(seeds), len(checks))
	}
	for i, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			if st := runSteps(t, seeds[i]); !c.ok(st) {
				t.Errorf("seed %d does not cover %s: %+v", i, c.name, st)
			}
		})
	}
}

// Ops of a step.
const (
	opClient          = iota // ci flag seqSel ackSel len opt
	opReal                   // ri ci flag seqSel ackSel len opt
	opRealLocal              // ri port flag seqSel ackSel len opt
	opUDP                    // dir ci len
	opICMP                   // kind ci ri port
	opDial                   // pick what hsSel
	opTime                   // dt budget
	opRuntime                // ri what
	opProbeAnswer            // pick kind seqSel ackSel (u32 u32 for random numbers)
	opChallengeAnswer        // kind off seqSel
	opTentative              // pick kind
	opSweep                  // dt budget
	opPass                   // (none): the peers answer as when the real died (nattest.Peers not Quiet)
	numOps
)

var (
	// Clients: five in one /24, two in another, a forged source (a
	// recovery address:port in the pool) and one in a third /24.
	sfClients = []string{
		"198.18.1.2:40000", "198.18.1.2:40001", "198.18.2.3:40002", "198.18.1.3:40000",
		"198.18.1.4:40000", "198.18.1.5:40000", "198.18.2.3:40003", "198.18.200.1:10000",
		"198.18.3.9:40000",
	}
	sfReals   = []string{rs1, rs2, rs3}
	sfFlags   = []header.TCPFlags{ack, psh, syn, fin, rst, rst | ack, synack, psh | header.TCPFlagFin}
	sfLens    = []int{0, 1, 5, 300, 1400}
	sfDts     = []int64{0, sec / 1000, sec, 6 * sec, 11 * sec, 65 * sec, 130 * sec, 16 * 60 * sec}
	sfBudgets = []int{1, 2, 4, 64}
	// How far past the trigger's seq (the challenge's ack) a client's
	// answer to a challenge says it has sent: the first ones fit the
	// triggers sfLens makes, the last is past any window.
	sfSent  = []uint32{0, 1, 5, 300, 1400, 1 << 16, 1 << 30, 1<<30 + 1}
	udpReal = "198.18.10.11:5353"
)

// stepReader hands out the fuzz input's bytes.
type stepReader struct {
	b []byte
	i int
}

func (r *stepReader) more() bool { return r.i < len(r.b) }

func (r *stepReader) byte() byte {
	if r.i >= len(r.b) {
		return 0
	}
	r.i++
	return r.b[r.i-1]
}

func (r *stepReader) u32() uint32 {
	var v [4]byte
	for i := range v {
		v[i] = r.byte()
	}
	return binary.BigEndian.Uint32(v[:])
}

// num picks base plus a small signed offset, or (0x7f) any 32-bit number.
func (r *stepReader) num(base uint32) uint32 {
	sel := r.byte()
	if sel == 0x7f {
		return r.u32()
	}
	return base + uint32(int32(int8(sel)))
}

// tcpOpts picks the TCP options of a segment: none, timestamps, a SACK
// block near the ack or 2^31 past it, both, a SYN's, or timestamps whose
// echo carries a cookie: of one of the reals, or any id.
func (r *stepReader) tcpOpts(ackn uint32) []byte {
	v := r.u32()
	ts := tsOpt(v%4+100, 7)
	switch r.byte() % 8 {
	case 6:
		return tsOpt(v%4+100, cookieEncode(1000+v>>8, uint16(2+v%3), 4))
	case 7:
		return tsOpt(v%4+100, cookieEncode(1000+v>>8, uint16(v>>4%16), 4))
	case 1:
		return ts
	case 2:
		return sackOpt(ackn+100, ackn+200)
	case 3:
		return opts(ts, sackOpt(ackn+100, ackn+200))
	case 4:
		return synOpts(1460, 7, 100)
	case 5:
		return sackOpt(ackn+1<<31, ackn+1<<31+100)
	}
	return nil
}

// conn is the model of one client's connection: the next sequence of each
// side, in the client's space.
type conn struct{ cli, srv uint32 }

func advance(next *uint32, seq uint32, flags header.TCPFlags, n int) {
	if seq != *next || flags&header.TCPFlagRst != 0 {
		return
	}
	*next += uint32(n)
	if flags&header.TCPFlagSyn != 0 {
		*next++
	}
	if flags&header.TCPFlagFin != 0 {
		*next++
	}
}

type stepper struct {
	t     *testing.T
	d     *Director
	fr    *fakeDialer
	pr    *nattest.Peers
	now   int64
	conns []conn
	// The probes and challenges opPass answered up to.
	passedProbes, passedChallenges int
	// The packets emitted that checkEmits saw, and the calls of Emit made
	// with the Director's lock held.
	seenOut, seenProbes, seenChallenges, lockedEmits int
}

// newStepDirector is the fuzz's Director: cookies of 4 bits, Quiet peers,
// small budgets.
func newStepDirector(t testing.TB) (*Director, *fakeDialer, *nattest.Peers) {
	return newMissDirector(t, 4, func(c *RecoveryConfig) {
		c.PortHi = 10001 // 2 ports per real: some dials find none
		c.Rate, c.MaxInflight, c.PrefixInflight, c.PrefixFlows = 5, 4, 3, 4
		c.ParkBytes, c.ParkFlowBytes, c.PrefixParkBytes = 4096, 2048, 3072
		c.MTU = 700 // a 1400-byte payload parks as segments
		c.UnconfirmedTimeout = 5 * time.Second
	})
}

// runSteps runs the steps of b and checks the invariants after each; it
// returns the counters after the last step, before the final drain.
func runSteps(t *testing.T, b []byte) Stats {
	d, fr, pr := newStepDirector(t)
	s := &stepper{t: t, d: d, fr: fr, pr: pr, now: 1}
	emit := d.emitFn
	d.emitFn = func(pkts [][]byte, now int64) {
		if !d.mu.TryLock() {
			s.lockedEmits++
		} else {
			d.mu.Unlock()
		}
		emit(pkts, now)
	}
	for i := range sfClients {
		s.conns = append(s.conns, conn{cli: 1000 * uint32(i+1), srv: 5000 * uint32(i+1)})
	}
	r := &stepReader{b: b}
	for n := 0; r.more(); n++ {
		op := r.byte() % numOps
		s.step(op, r)
		checkDirector(t, d)
		checkMiss(t, d)
		s.checkEmits()
		checkCancelled(t, d, fr)
		if t.Failed() {
			t.Fatalf("after step %d (op %d)", n, op)
		}
	}
	st := d.Stats()
	// Everything drains: the dials end (as the engine's shutdown ends
	// them), the misses run out of time unanswered, and an hour passes.
	for _, k := range dialKeys(d) {
		d.Failed(k, FailShutdown, s.now)
	}
	for range 4 {
		s.now += sec
		d.Sweep(s.now, 1)
		checkMiss(t, d)
	}
	d.Sweep(s.now+int64(time.Hour), len(d.flows.slab)+1)
	checkDirector(t, d)
	checkMiss(t, d)
	if d.flows.n != 0 || len(d.rec.pending) != 0 || len(d.rec.ports.inUse) != 0 || len(d.rec.dialing) != 0 || len(d.rec.prefixes) != 0 || d.rec.parkedBytes != 0 || len(d.rec.probes) != 0 {
		t.Fatalf("left held after the drain: flows %d, pending %d, ports %d, gates %d, prefixes %v, parked %d, probes %v",
			d.flows.n, len(d.rec.pending), len(d.rec.ports.inUse), len(d.rec.dialing), d.rec.prefixes, d.rec.parkedBytes, d.rec.probes)
	}
	return st
}

// send hands one packet to the Director and checks what it writes.
func (s *stepper) send(pkt []byte) {
	v, out := s.d.Handle(pkt, false, s.now)
	if (v == wire.Forward || v == wire.Reset) && out != nil {
		checkChecksums(s.t, out)
	}
}

func (s *stepper) step(op byte, r *stepReader) {
	switch op {
	case opClient:
		ci := int(r.byte()) % len(sfClients)
		c := &s.conns[ci]
		fl := sfFlags[r.byte()%byte(len(sfFlags))]
		seq, ackn := r.num(c.cli), r.num(c.srv)
		n := sfLens[r.byte()%byte(len(sfLens))]
		if fl == syn {
			ackn = 0
		}
		s.send(tcp4(sfClients[ci], vip, fl, seq, ackn, make([]byte, n), r.tcpOpts(ackn)...))
		advance(&c.cli, seq, fl, n)
	case opReal:
		real := sfReals[r.byte()%byte(len(sfReals))]
		ci := int(r.byte()) % len(sfClients)
		c := &s.conns[ci]
		fl := sfFlags[r.byte()%byte(len(sfFlags))]
		seq, ackn := r.num(c.srv), r.num(c.cli)
		n := sfLens[r.byte()%byte(len(sfLens))]
		s.send(tcp4(real, sfClients[ci], fl, seq, ackn, make([]byte, n), r.tcpOpts(ackn)...))
		advance(&c.srv, seq, fl, n)
	case opRealLocal:
		real := sfReals[r.byte()%byte(len(sfReals))]
		local := netip.AddrPortFrom(netip.MustParseAddr(recAddr), 10000+uint16(r.byte()%6))
		fl := sfFlags[r.byte()%byte(len(sfFlags))]
		// In the real's space: from the recovered flow's deltas if there
		// is one on this tuple, else from a handshake's start (1, 1).
		seqBase, ackBase := uint32(1), uint32(1)
		var ci = -1
		s.d.mu.Lock()
		if slot, side, ok := s.d.flows.lookup(Key{protoTCP, ap(real), local}); ok && side == sideReal {
			f := &s.d.flows.slab[slot]
			for i, c := range sfClients {
				if f.Client.AddrPort() == ap(c) {
					ci = i
					seqBase = s.conns[i].srv - f.AckDelta
					ackBase = s.conns[i].cli - f.SeqDelta
				}
			}
		}
		s.d.mu.Unlock()
		seq, ackn := r.num(seqBase), r.num(ackBase)
		n := sfLens[r.byte()%byte(len(sfLens))]
		s.send(tcp4(real, local.String(), fl, seq, ackn, make([]byte, n), r.tcpOpts(ackn)...))
		if ci >= 0 {
			c := &s.conns[ci]
			advance(&c.srv, c.srv+(seq-seqBase), fl, n)
		}
	case opUDP:
		dir := r.byte() % 2
		ci := int(r.byte()) % len(sfClients)
		n := sfLens[r.byte()%byte(len(sfLens))]
		if dir == 0 {
			s.send(udp4(sfClients[ci], udpVIP, make([]byte, n)))
		} else {
			s.send(udp4(udpReal, sfClients[ci], make([]byte, n)))
		}
	case opICMP:
		kind := r.byte() % 4
		ci := int(r.byte()) % len(sfClients)
		real := sfReals[r.byte()%byte(len(sfReals))]
		local := netip.AddrPortFrom(netip.MustParseAddr(recAddr), 10000+uint16(r.byte()%6)).String()
		cl, c := sfClients[ci], s.conns[ci]
		cla := ap(cl).Addr().String()
		unreach := func(from, to string, quote []byte) []byte {
			return icmp4(from, to, header.ICMPv4DstUnreachable, header.ICMPv4FragmentationNeeded, 1400, quote[:28])
		}
		switch kind {
		case 0: // the client, about the VIP's segment
			s.send(unreach(cla, ap(vip).Addr().String(), tcp4(vip, cl, ack, c.srv, c.cli, nil)))
		case 1: // the client, about a UDP reply
			s.send(unreach(cla, ap(udpVIP).Addr().String(), udp4(udpVIP, cl, []byte("a"))))
		case 2: // the real, about a client's segment
			s.send(unreach(ap(real).Addr().String(), cla, tcp4(cl, real, ack, c.cli, c.srv, nil)))
		case 3: // a router on the way, about a recovered flow's segment
			s.send(unreach("198.18.10.1", recAddr, tcp4(local, real, ack, 1, 1, nil)))
		}
	case opDial:
		keys := dialKeys(s.d)
		pick, what, hsSel := int(r.byte()), r.byte()%6, r.byte()
		if len(keys) == 0 {
			return
		}
		k := keys[pick%len(keys)]
		reason := FailReason(hsSel % byte(FailShutdown))
		switch what {
		case 0, 1:
			hs := wire.Handshake{
				AckSeq: 1 + uint32(hsSel), AckAck: 1 + 7*uint32(hsSel),
				TS: hsSel&1 != 0, OurWScale: int(hsSel>>1) % 15, PeerWScale: int(hsSel>>5) - 1,
			}
			s.checkOuts(s.d.Recovered(k, hs, s.now))
		case 2:
			// As the engine does: a retry, ended by Failed when no real
			// is left.
			if _, ok := s.d.Retry(k, reason, s.now); !ok {
				s.checkOuts(s.d.Failed(k, reason, s.now))
			}
		case 3:
			if _, ok := s.d.Retry(k, reason, s.now); ok {
				s.checkOuts(s.d.Failed(k, reason, s.now))
			} else {
				s.checkOuts(s.d.Failed(k, reason, s.now))
			}
		case 4:
			s.checkOuts(s.d.Failed(k, FailShutdown, s.now))
		case 5:
			s.checkOuts(s.d.Failed(k, reason, s.now))
		}
	case opTime:
		s.now += sfDts[r.byte()%byte(len(sfDts))]
		s.d.Sweep(s.now, sfBudgets[r.byte()%byte(len(sfBudgets))])
	case opRuntime:
		ri, what := r.byte()%4, r.byte()%7
		proto, svc, real := balancer.UDP, ap(udpVIP), ap(udpReal)
		if ri < 3 {
			proto, svc, real = balancer.TCP, ap(vip), ap(sfReals[ri])
		}
		switch what {
		case 0:
			_ = s.d.SetDown(proto, svc, real, true)
		case 1:
			_ = s.d.SetDown(proto, svc, real, false)
		case 2:
			_ = s.d.SetWeight(proto, svc, real, 0)
		case 3:
			_ = s.d.SetWeight(proto, svc, real, 1)
		case 4:
			_ = s.d.RemoveReal(proto, svc, real, true)
		case 5:
			_ = s.d.RemoveReal(proto, svc, real, false)
		case 6:
			_ = s.d.AddReal(proto, svc, real, 1, 0)
		}
	case opProbeAnswer:
		// A real's answer to one of the last probes sent (pick 0: the
		// last): its no-socket reset, an owner's duplicate ACK with
		// numbers near the trigger's, an ACK with numbers far from them
		// (or any, 0x7f), or a real socket's RST|ACK.
		pick, kind := int(r.byte()%4), r.byte()%4
		if len(s.pr.Probes) == 0 {
			r.num(0)
			r.num(0)
			return
		}
		q := infoOf(s.t, s.pr.Probes[max(0, len(s.pr.Probes)-1-pick)])
		from, to := q.dst.String(), q.src.String()
		far := uint32(0)
		if kind == 2 {
			far = 1 << 31
		}
		seq, ackn := r.num(q.ack+far), r.num(q.seq+farBelow+far)
		switch kind {
		case 0:
			s.send(tcp4(from, to, rst, seq, 0, nil))
		case 1, 2:
			s.send(tcp4(from, to, ack, seq, ackn, nil))
		case 3:
			s.send(tcp4(from, to, rst|ack, seq, ackn, nil))
		}
	case opChallengeAnswer:
		// The client's answer to the last challenge: a duplicate ACK
		// saying it sent sfSent past the trigger's seq, its ack the
		// trigger's (or near it), or a reset: its host's no-socket one
		// (seq = the challenge's ack, or near it) or one with ACK.
		kind, off := r.byte()%4, sfSent[r.byte()%byte(len(sfSent))]
		if len(s.pr.Challenges) == 0 {
			r.num(0)
			r.num(0)
			return
		}
		q := infoOf(s.t, s.pr.Challenges[len(s.pr.Challenges)-1])
		from, to := q.dst.String(), q.src.String()
		seq, ackn := r.num(q.ack+off), r.num(q.seq+farBelow)
		switch kind {
		case 0, 1:
			s.send(tcp4(from, to, ack, seq, ackn, nil))
		case 2:
			s.send(tcp4(from, to, rst, seq-off, 0, nil))
		case 3:
			s.send(tcp4(from, to, rst|ack, seq-off, ackn, nil))
		}
	case opTentative:
		// A tentative cookie flow's real answers: its no-socket reset,
		// an ACK, a real socket's RST|ACK, or data.
		pick, kind := int(r.byte()), r.byte()%4
		var real, cl string
		var ci int
		s.d.mu.Lock()
		var tent []uint32
		for i := range s.d.flows.slab {
			if f := &s.d.flows.slab[i]; f.used && f.tentative {
				tent = append(tent, uint32(i))
			}
		}
		if len(tent) > 0 {
			f := &s.d.flows.slab[tent[pick%len(tent)]]
			real, cl = s.d.realOf(f).String(), f.Client.AddrPort().String()
			ci = slices.Index(sfClients, cl)
		}
		s.d.mu.Unlock()
		if real == "" || ci < 0 {
			return
		}
		c := &s.conns[ci]
		switch kind {
		case 0:
			s.send(tcp4(real, cl, rst, c.cli, 0, nil))
		case 1:
			s.send(tcp4(real, cl, ack, c.srv, c.cli, nil))
		case 2:
			s.send(tcp4(real, cl, rst|ack, c.srv, c.cli, nil))
		case 3:
			s.send(tcp4(real, cl, psh, c.srv, c.cli, make([]byte, 5)))
			advance(&c.srv, c.srv, psh, 5)
		}
	case opSweep:
		s.now += (1 + int64(r.byte()%20)) * sec / 10
		s.d.Sweep(s.now, sfBudgets[r.byte()%byte(len(sfBudgets))])
	case opPass:
		// The peers answer what was emitted since the last pass as when
		// the connection's real died: every probe with the real's
		// no-socket reset, the last challenge with the client's fitting
		// duplicate ACK (nattest.Peers, not Quiet).
		loud := nattest.Peers{Handle: s.pr.Handle, VIPs: s.pr.VIPs, Reals: s.pr.Reals}
		probes := s.pr.Probes[s.passedProbes:]
		s.passedProbes = len(s.pr.Probes)
		loud.Emit(probes, s.now)
		if n := len(s.pr.Challenges); n > s.passedChallenges {
			s.passedChallenges = n
			loud.Emit(s.pr.Challenges[n-1:], s.now)
		}
	}
}

// checkEmits checks the packets the Director emitted since the last call:
// valid checksums, nothing left queued, Emit never called under the lock,
// challenges bare ACKs, and no reset without ACK toward a client (a real's no-socket reset is
// never passed on, and the Director's own resets to clients carry an ACK).
func (s *stepper) checkEmits() {
	t := s.t
	t.Helper()
	s.d.mu.Lock()
	queued := len(s.d.emitq)
	s.d.mu.Unlock()
	if queued != 0 || s.lockedEmits != 0 {
		t.Errorf("%d packets left queued, %d calls of Emit under the lock", queued, s.lockedEmits)
	}
	for _, b := range s.pr.Out[s.seenOut:] {
		in := infoOf(t, b)
		if slices.Contains(sfClients, in.dst.String()) && in.flags&(rst|ack) == rst {
			t.Errorf("emitted a reset without ACK to client %v: %+v", in.dst, in)
		}
	}
	for _, b := range s.pr.Probes[s.seenProbes:] {
		// Peers counts any pure ACK to a real as a probe: a flushed one
		// too.
		checkChecksums(t, b)
	}
	for _, b := range s.pr.Challenges[s.seenChallenges:] {
		if in := infoOf(t, b); in.hl != header.TCPMinimumSize || in.data != 0 || in.flags != ack {
			t.Errorf("a challenge with options, payload or flags other than ACK: %+v", in)
		}
	}
	s.seenOut, s.seenProbes, s.seenChallenges = len(s.pr.Out), len(s.pr.Probes), len(s.pr.Challenges)
}

func (s *stepper) checkOuts(outs [][]byte) {
	for _, b := range outs {
		checkChecksums(s.t, b)
	}
}

// checkCancelled checks that the dial of every recovery superseded by an
// adoption was cancelled.
func checkCancelled(t *testing.T, d *Director, fr *fakeDialer) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	for k, pd := range d.rec.pending {
		if pd.superseded && !slices.Contains(fr.cancelled, k) {
			t.Errorf("recovery of %+v superseded, its dial never cancelled", k)
		}
	}
}

// dialKeys lists the recoveries with a dial asked of the engine (the only
// ones it reports the end of), in a fixed order.
func dialKeys(d *Director) []Key {
	var keys []Key
	for _, k := range pendingKeys(d) {
		d.mu.Lock()
		if d.rec.pending[k].phase == phaseDial {
			keys = append(keys, k)
		}
		d.mu.Unlock()
	}
	return keys
}

// pendingKeys lists the recoveries in flight, in a fixed order.
func pendingKeys(d *Director) []Key {
	d.mu.Lock()
	defer d.mu.Unlock()
	keys := make([]Key, 0, len(d.rec.pending))
	for k := range d.rec.pending {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b Key) int {
		return cmp.Or(a.Src.Compare(b.Src), a.Dst.Compare(b.Dst))
	})
	return keys
}

// checkDirector checks the Director's invariants, reading its internals
// under d.mu.
func checkDirector(t *testing.T, d *Director) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()

	// The index and the slab agree.
	used := 0
	var by [numKinds][numStates]int
	type realRef struct{ svc, real uint16 }
	active, inactive := map[realRef]int{}, map[realRef]int{}
	ports := map[pair]string{}
	for i := range d.flows.slab {
		f := &d.flows.slab[i]
		if !f.used {
			continue
		}
		used++
		for side, k := range []fkey{d.clientKey(f), d.realKey(f)} {
			if v, ok := d.flows.get(k); !ok || v != uint32(i)<<1|uint32(side) {
				t.Errorf("flow %d (%+v): key %+v (side %d) in the index as %d, %v", i, d.export(f), k, side, v, ok)
			}
		}
		if f.Expires == 0 {
			t.Errorf("flow %d (%+v) has no expiry", i, d.export(f))
		}
		by[f.Kind][f.State]++
		ref := realRef{f.svc, f.real}
		if f.State == StateEstablished {
			active[ref]++
		} else {
			inactive[ref]++
		}
		if f.Kind == KindRecovered {
			p := pair{f.Local, endpointOf(d.realOf(f))}
			if who, dup := ports[p]; dup {
				t.Errorf("port pair %+v held by %s and recovered flow %+v", p, who, d.export(f))
			}
			ports[p] = "recovered flow"
		}
	}
	if used != d.flows.n {
		t.Errorf("flows.n %d, used slots %d", d.flows.n, used)
	}
	index := maps.Clone(d.flows.index6)
	for k4, v := range d.flows.index4 {
		k := k4.key()
		if _, dup := index[k]; dup {
			t.Errorf("key %+v in both index4 and index6", k)
		}
		if _, ok := k.v4(); !ok {
			t.Errorf("index4 key %+v is not IPv4", k)
		}
		index[k] = v
	}
	for k := range d.flows.index6 {
		if _, ok := k.v4(); ok {
			t.Errorf("IPv4 key %+v in index6", k)
		}
	}
	for k, v := range index {
		slot, side := v>>1, int(v&1)
		if int(slot) >= len(d.flows.slab) || !d.flows.slab[slot].used {
			t.Errorf("index entry %+v -> slot %d, not a used flow", k, slot)
			continue
		}
		f := &d.flows.slab[slot]
		if want := [2]fkey{d.clientKey(f), d.realKey(f)}[side]; want != k {
			t.Errorf("index entry %+v -> slot %d side %d, whose key is %+v", k, slot, side, want)
		}
	}
	if d.flows.indexLen() != 2*used {
		t.Errorf("index holds %d entries for %d flows", d.flows.indexLen(), used)
	}

	// Counters.
	if by != d.stats.FlowsBy {
		t.Errorf("FlowsBy %v, flows in the table by kind and state %v", d.stats.FlowsBy, by)
	}
	for si := range d.services {
		for ri, r := range d.services[si].Reals {
			ref := realRef{uint16(si), uint16(ri)}
			if r.Active != active[ref] || r.Inactive != inactive[ref] {
				t.Errorf("real %s of service %d: active %d inactive %d, its flows %d established, %d other",
					r.Addr, si, r.Active, r.Inactive, active[ref], inactive[ref])
			}
		}
	}

	// Parking.
	parked := 0
	for k, pd := range d.rec.pending {
		parked += pd.bytes
		if len(pd.parked) == 0 && pd.phase != phaseStale {
			t.Errorf("recovery of %+v parks nothing", k)
		}
		n := 0
		for _, b := range pd.parked {
			n += len(b)
		}
		if n != pd.bytes {
			t.Errorf("recovery of %+v: %d bytes counted, %d parked", k, pd.bytes, n)
		}
		if pd.bytes > d.rec.ParkFlowBytes {
			t.Errorf("recovery of %+v parks %d bytes, over ParkFlowBytes %d", k, pd.bytes, d.rec.ParkFlowBytes)
		}
	}
	if parked != d.rec.parkedBytes || parked > d.rec.ParkBytes {
		t.Errorf("parkedBytes %d, parked by the recoveries %d, ParkBytes %d", d.rec.parkedBytes, parked, d.rec.ParkBytes)
	}

	// Dial gates and port reservations.
	gates := 0
	for k, pd := range d.rec.pending {
		if !pd.dialing {
			continue
		}
		real := d.services[pd.svc].Reals[pd.real].Addr
		gk := Key{protoTCP, real, pd.local.AddrPort()}
		if ck, ok := d.rec.dialing[gk]; !ok || ck != k {
			t.Errorf("recovery of %+v dials %+v, gate %+v, %v", k, gk, ck, ok)
		}
		gates++
		p := pair{pd.local, endpointOf(real)}
		if who, dup := ports[p]; dup {
			t.Errorf("port pair %+v held by %s and the dial of %+v", p, who, k)
		}
		ports[p] = "dial"
	}
	for gk, ck := range d.rec.dialing {
		if pd := d.rec.pending[ck]; pd == nil || !pd.dialing {
			t.Errorf("gate %+v -> %+v: no dial in progress", gk, ck)
		}
	}
	if gates != len(d.rec.dialing) {
		t.Errorf("%d gates for %d dials in progress", len(d.rec.dialing), gates)
	}
	for p := range d.rec.ports.inUse {
		if _, ok := ports[p]; !ok {
			t.Errorf("port pair %+v reserved for no dial and no recovered flow", p)
		}
	}
	if len(ports) != len(d.rec.ports.inUse) {
		t.Errorf("port reservations %v, held by dials and recovered flows %v", d.rec.ports.inUse, ports)
	}
	if len(d.rec.pending) > d.rec.MaxInflight {
		t.Errorf("%d recoveries in flight, MaxInflight %d", len(d.rec.pending), d.rec.MaxInflight)
	}

	// Per-prefix budgets.
	checkPrefixTable(t, d)
}

// checkMiss checks the miss path's invariants: the index of probes and the
// probes waiting agree, a probe round waits for an answer, a cookie steer
// has its tentative flow (or none), a stale challenge its suspect flow, no
// other miss has a flow, and the
// counters of misses in flight match the table.
func checkMiss(t *testing.T, d *Director) {
	t.Helper()
	st := d.Stats()
	d.mu.Lock()
	defer d.mu.Unlock()
	for rk, ck := range d.rec.probes {
		pd := d.rec.pending[ck]
		if pd == nil || pd.phase != phaseProbe {
			t.Errorf("probe %+v of %+v: no miss in phaseProbe (%+v)", rk, ck, pd)
			continue
		}
		if q := pd.probeOf(d.services[pd.svc].Reals, rk.Src); q == nil || q.state != probeWaiting || rk.Dst != ck.Src {
			t.Errorf("probe %+v of %+v: no waiting probe for the real (%+v)", rk, ck, q)
		}
	}
	var probing, challenging int
	for ck, pd := range d.rec.pending {
		slot, side, found := d.flows.lookup(ck)
		switch pd.phase {
		case phaseProbe:
			probing++
			waiting := 0
			for _, q := range pd.probes {
				if q.state != probeWaiting {
					continue
				}
				waiting++
				rk := Key{protoTCP, d.services[pd.svc].Reals[q.real].Addr, ck.Src}
				if d.rec.probes[rk] != ck {
					t.Errorf("miss of %+v: waiting probe of %+v not in the index", ck, rk)
				}
			}
			if waiting == 0 {
				t.Errorf("miss of %+v in phaseProbe waits for no probe: %+v", ck, pd.probes)
			}
		case phaseChallenge:
			challenging++
		case phaseStale:
			if !found || side != sideClient || slot != pd.slot {
				t.Errorf("stale challenge of %+v: its flow (slot %d) is not the tuple's (%v, slot %d, side %d)", ck, pd.slot, found, slot, side)
			}
		case phaseSteer:
			if found && (side != sideClient || !d.flows.slab[slot].tentative || d.flows.slab[slot].Kind != KindCookie) {
				t.Errorf("cookie steer of %+v: its flow %+v is not a tentative cookie flow", ck, d.export(&d.flows.slab[slot]))
			}
		}
		if found && (pd.phase == phaseProbe || pd.phase == phaseChallenge) {
			t.Errorf("miss of %+v (phase %d) while a flow %+v holds the tuple", ck, pd.phase, d.export(&d.flows.slab[slot]))
		}
		if pd.phase != phaseDial && (pd.dialing || pd.superseded) {
			t.Errorf("miss of %+v (phase %d) dialing %v, superseded %v", ck, pd.phase, pd.dialing, pd.superseded)
		}
	}
	if st.Inflight != len(d.rec.pending) || st.ProbesInflight != probing || st.ChallengesInflight != challenging {
		t.Errorf("inflight %d/%d probing %d/%d challenging %d/%d (stats/table)", st.Inflight, len(d.rec.pending), st.ProbesInflight, probing, st.ChallengesInflight, challenging)
	}
}

// stepSeeds are handmade step sequences (they run as unit tests).
func stepSeeds() [][]byte {
	// Builders of one step each; sequence selectors 0 mean "the model's
	// next sequence".
	// The TCP options' bytes (4 of timestamp, 1 of choice) are 0: none.
	cl := func(ci, flag, seqSel, ackSel, n byte) []byte {
		return []byte{opClient, ci, flag, seqSel, ackSel, n, 0, 0, 0, 0, 0}
	}
	rl := func(ri, ci, flag, n byte) []byte { return []byte{opReal, ri, ci, flag, 0, 0, n, 0, 0, 0, 0, 0} }
	rloc := func(ri, port, flag, n byte) []byte {
		return []byte{opRealLocal, ri, port, flag, 0, 0, n, 0, 0, 0, 0, 0}
	}
	none := []byte{0, 0, 0, 0, 0}
	dial := func(pick, what, hs byte) []byte { return []byte{opDial, pick, what, hs} }
	tick := func(dt, budget byte) []byte { return []byte{opTime, dt, budget} }
	rt := func(ri, what byte) []byte { return []byte{opRuntime, ri, what} }
	icmp := func(kind, ci, ri, port byte) []byte { return []byte{opICMP, kind, ci, ri, port} }
	udp := func(dir, ci, n byte) []byte { return []byte{opUDP, dir, ci, n} }
	const (
		fAck, fPsh, fSyn, fFin, fRst, fRstAck, fSynAck = 0, 1, 2, 3, 4, 5, 6
		dRecovered, dRetry, dRetryFail, dShutdown      = 0, 2, 3, 4
		rtDown, rtUp, rtWeight0, rtRehome, rtAdd       = 0, 1, 2, 4, 6
	)
	// A handshake through the director for client ci (rr: rs1, rs2, rs3
	// in turn), and a request and its reply.
	handshake := func(ci, ri byte) []byte {
		return slices.Concat(cl(ci, fSyn, 0, 0, 0), rl(ri, ci, fSynAck, 0), cl(ci, fAck, 0, 0, 0),
			cl(ci, fPsh, 0, 0, 2), rl(ri, ci, fPsh, 3), cl(ci, fAck, 0, 0, 0))
	}
	// The miss path's steps. A pass answers the probes and the challenge
	// as when the connection's real died (the miss goes on to a dial).
	pass := []byte{opPass}
	// A client segment whose timestamp echo carries the cookie of real
	// ri (choice 6 of tcpOpts; the u32's low bits pick the real).
	ck := func(ci, flag, n, ri byte) []byte {
		return []byte{opClient, ci, flag, 0, 0, n, 0, 0, 0, ri, 6}
	}
	probeAns := func(pick, kind byte) []byte { return []byte{opProbeAnswer, pick, kind, 0, 0} }
	chalAns := func(kind, off, seqSel, ackSel byte) []byte {
		return []byte{opChallengeAnswer, kind, off, seqSel, ackSel}
	}
	tent := func(kind byte) []byte { return []byte{opTentative, 0, kind} }
	sweep := func(tenths, budget byte) []byte { return []byte{opSweep, tenths - 1, budget} }
	const (
		pReset, pOwner, pRandom, pRstAck = 0, 1, 2, 3
		cAck, cReset, cRstAck            = 0, 2, 3
		sent5, sentPastWindow            = 2, 7
		tReset, tAck, tRstAck, tData     = 0, 1, 2, 3
	)
	// Every real's no-socket reset to the three probes of a miss.
	resets := slices.Concat(probeAns(0, pReset), probeAns(1, pReset), probeAns(2, pReset))
	return [][]byte{
		// A failover recovery that succeeds: the trigger and a second
		// segment park, the probes and the challenge pass, the dial
		// succeeds, the real answers through the recovery address, the
		// client acknowledges (confirmed), ICMP errors both ways, and
		// idle expiry.
		slices.Concat(cl(0, fPsh, 0, 0, 2), cl(0, fPsh, 0, 0, 2), pass, dial(0, dRecovered, 0),
			rloc(0, 0, fPsh, 2), cl(0, fAck, 0, 0, 0), icmp(0, 0, 0, 0), icmp(3, 0, 0, 0),
			tick(3, 3), tick(7, 3)),
		// Refused, retried, then failed (the client gets a RST); then a
		// recovery whose retries run out of reals.
		slices.Concat(cl(1, fPsh, 0, 0, 2), pass, dial(0, dRetryFail, 0), cl(2, fPsh, 0, 0, 3), pass,
			dial(0, dRetry, 1), dial(0, dRetry, 1), dial(0, dRetry, 1)),
		// An adoption during a dial: the original real retransmits to the
		// client, the dial is cancelled and ends (Recovered: the new
		// connection is reset, the parked bytes go to the adopted flow).
		slices.Concat(cl(0, fPsh, 0, 0, 2), pass, rl(1, 0, fPsh, 2), rl(2, 0, fPsh, 2), dial(0, dRecovered, 3),
			cl(1, fPsh, 0, 0, 3), pass, rl(0, 1, fAck, 0), dial(0, dShutdown, 0)),
		// A stale flow: a handshake on rs1, the client acks server bytes
		// never carried (suspect), the real's no-socket reset confirms it,
		// and the client's next request is recovered.
		slices.Concat(handshake(0, 0), []byte{opClient, 0, fPsh, 0x7f, 0x40, 0, 0, 0, 0x7f, 0, 1, 0, 0, 2}, none,
			[]byte{opReal, 0, 0, fRst, 0x7f, 0, 1, 0, 0, 0, 0}, none,
			[]byte{opClient, 0, fPsh, 0, 0x7f, 0, 1, 0, 0, 2}, none, pass,
			dial(0, dRecovered, 0), tick(1, 3)),
		// A re-home: handshakes on rs1 and rs2, rs1 goes down and the
		// other is drained with re-homing; the next requests move.
		slices.Concat(handshake(0, 0), handshake(1, 1), rt(0, rtDown), rt(1, rtRehome),
			cl(0, fPsh, 0, 0, 2), cl(1, fPsh, 0, 0, 2), dial(0, dRecovered, 5), dial(0, dRecovered, 9),
			rt(0, rtUp), rt(1, rtAdd), rt(2, rtWeight0), cl(0, fPsh, 0, 0, 2), udp(0, 0, 2), udp(1, 0, 2),
			rt(3, rtDown), udp(0, 0, 2), tick(5, 3)),
		// A shutdown: three recoveries in flight (one prefix holds two),
		// the engine stops: no client gets a RST.
		slices.Concat(cl(0, fPsh, 0, 0, 3), pass, cl(1, fPsh, 0, 0, 3), pass, cl(2, fPsh, 0, 0, 4), pass,
			dial(0, dShutdown, 0), dial(0, dShutdown, 0), dial(0, dShutdown, 0), tick(2, 3)),
		// The budgets: a fourth trigger of a /24 (prefix busy), a fifth
		// in flight (busy); once four are recovered, a /24 at its flows
		// (prefix flows: a miss counts from its first segment), and the
		// rate spent (5 a second).
		slices.Concat(cl(0, fPsh, 0, 0, 2), pass, cl(1, fPsh, 0, 0, 2), pass, cl(3, fPsh, 0, 0, 2), pass, cl(4, fPsh, 0, 0, 2),
			cl(2, fPsh, 0, 0, 2), pass, cl(6, fPsh, 0, 0, 2),
			dial(0, dRecovered, 0), dial(0, dRecovered, 0), dial(0, dRecovered, 0), dial(0, dRecovered, 0),
			cl(4, fPsh, 0, 0, 2), cl(5, fPsh, 0, 0, 2), cl(6, fPsh, 0, 0, 2)),
		// No port: six recovered flows hold the two ports of each real,
		// and the seventh trigger fails at once (once its client passed
		// the challenge) with a RST.
		slices.Concat(cl(0, fPsh, 0, 0, 2), pass, dial(0, dRecovered, 0), cl(1, fPsh, 0, 0, 2), pass, dial(0, dRecovered, 0),
			cl(3, fPsh, 0, 0, 2), pass, dial(0, dRecovered, 0), cl(4, fPsh, 0, 0, 2), pass, dial(0, dRecovered, 0),
			tick(2, 0), cl(2, fPsh, 0, 0, 2), pass, dial(0, dRecovered, 0), cl(6, fPsh, 0, 0, 2), pass, dial(0, dRecovered, 0),
			cl(8, fPsh, 0, 0, 2), pass),
		// A re-home with every real down: the flow stays on its real.
		slices.Concat(handshake(0, 0), rt(1, rtDown), rt(2, rtDown), rt(0, rtDown), cl(0, fPsh, 0, 0, 2)),
		// Re-home races: the real a flow is re-homed from speaks during
		// the dial (never adopted); a flow adopted during a recovery
		// whose real goes down is not re-homed while that recovery is in
		// flight.
		slices.Concat(handshake(1, 0), rt(0, rtDown), cl(1, fPsh, 0, 0, 2), rl(0, 1, fPsh, 2), dial(0, dRecovered, 0),
			rt(0, rtUp), cl(0, fPsh, 0, 0, 2), pass, rl(1, 0, fPsh, 2), rt(1, rtDown), cl(0, fAck, 0, 0, 0), cl(0, fPsh, 0, 0, 2),
			dial(0, dShutdown, 0)),
		// Cookie steers: to rs2, whose no-socket reset sends the probes to
		// rs1 and rs3, rs3 the owner (steered by probe); to rs1, which
		// answers (confirmed); to rs3, whose socket resets (RST|ACK to the
		// client); to rs1, which answers only after the steer ended
		// (confirmed all the same).
		slices.Concat(ck(0, fPsh, 2, 1), tent(tReset), probeAns(1, pReset), probeAns(0, pOwner),
			ck(1, fPsh, 2, 0), tent(tData), ck(2, fPsh, 2, 2), tent(tRstAck),
			ck(3, fPsh, 2, 0), sweep(11, 3), tent(tAck)),
		// Probe answers: an ACK of random numbers, a reset and a silent
		// real (retried, then counted): the challenge, answered with
		// numbers that do not fit; a second miss whose client answers
		// past any window.
		slices.Concat(cl(0, fPsh, 0, 0, 2), probeAns(0, pRandom), probeAns(1, pReset), sweep(6, 3),
			probeAns(1, pRstAck), sweep(5, 3), chalAns(cAck, sent5, 0, 1),
			cl(2, fPsh, 0, 0, 2), probeAns(0, pReset), probeAns(1, pReset), probeAns(2, pReset),
			chalAns(cAck, sentPastWindow, 0, 0)),
		// Challenges: the source's reset (after one of another seq and one
		// with ACK); a fitting
		// answer after the retry; one unanswered; then two owners.
		slices.Concat(cl(0, fPsh, 0, 0, 2), resets, chalAns(cReset, 0, 1, 0), chalAns(cRstAck, 0, 0, 0), chalAns(cReset, 0, 0, 0),
			cl(1, fPsh, 0, 0, 2), resets, sweep(6, 3), chalAns(cAck, sent5, 0, 0),
			cl(2, fPsh, 0, 0, 2), resets, sweep(6, 3), sweep(15, 3),
			cl(3, fPsh, 0, 0, 2), probeAns(0, pOwner), probeAns(1, pOwner), probeAns(2, pReset), chalAns(cAck, sent5, 0, 0)),
	}
}
