package nat

import (
	"net/netip"

	"holdfast/balancer"
	"holdfast/internal/shrink"
	"holdfast/internal/wire"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// The miss path (DESIGN.md sections 5 and 6): a client's mid-stream TCP
// segment with no flow, after a failover the first segment of every
// connection. The connection usually still lives on its original real, so
// the director looks for that real before it makes a new connection, in
// this order, each step only if the one before found nothing:
//
//  1. The timestamp cookie (cookie.go): the client's TSecr names the real
//     that holds the connection. The segment goes there at once, on a
//     tentative flow (zero round trips); the real's no-socket reset (RST
//     without ACK) is swallowed and the next step tried.
//  2. Owner probes: an ACK on the client's tuple, no option, no payload, a
//     sequence number far below any window, to every up real of the
//     service. A real's socket for the tuple answers with a duplicate ACK
//     carrying its numbers, a real without one with a no-socket reset. A
//     plausible owner (numbers that fit a parked segment) when all have
//     answered, and exactly one, takes the flow with no deltas.
//  3. The patent's recovery, only for a client that proved it receives at
//     its address: a challenge ACK from the VIP (no option, no payload,
//     seq = trigger.ack - 2^30, out of any receive window) that its TCP
//     answers with a duplicate ACK holding its true SND.NXT and RCV.NXT.
//     A parked segment that fits the answer is the trigger of the dial;
//     none, or no answer, ends the miss at no cost.
//
// Every step keeps the tuple's segments parked behind one pending entry
// (recovery.go), which counts against the recovery budgets (in flight,
// per prefix, parking) from the first segment on. Linux answers an
// out-of-window segment at most once per 500 ms per socket
// (tcp_invalid_ratelimit, and a rate-limited answer does not restart the
// timer), so probes and challenges are retried once, retryAfter later.
// The timers run from Sweep. Everything here is written against
// netip addresses and buildSegment, which take either family.

// phase says what a pending entry is trying.
type phase uint8

const (
	phaseDial      phase = iota // the patent's recovery: a dial in progress (the recovery engine)
	phaseSteer                  // a tentative cookie steer: the flow exists, the trigger is kept until the real answers
	phaseProbe                  // owner probes out to the service's reals
	phaseChallenge              // the client challenged before a dial
	phaseStale                  // the client of a suspect flow challenged: is the segment that made it suspect its own?
)

// Timers of the miss path.
const (
	// retryAfter is when a probe or challenge is sent again: past
	// Linux's 500 ms tcp_invalid_ratelimit (a rate-limited answer does not
	// restart it, so the retry always gets one from a live socket).
	retryAfter = 510_000_000
	// answerWait is how long a real's answer to a probe's retry is waited
	// for (the reals' link: a round trip of well under a millisecond).
	answerWait = 500_000_000
	// challengeWait is how long a client's answer to a challenge's retry
	// is waited for: a round trip to a client far away. A genuine client
	// answers well before it and ends the wait; only a source that never
	// answers (a spoofed one) holds its prefix's slot for it, so that a
	// flood of them from one prefix starts RecoveryConfig.PrefixInflight
	// misses per 2 s, not per second.
	challengeWait = 1_500_000_000
	// steerWait bounds how long a cookie steer keeps its trigger for a
	// fall-through to the probes: the real's answer to a forwarded
	// segment takes one round trip on the reals' link.
	steerWait = 1_000_000_000
	// farBelow puts a probe's or challenge's sequence number outside any
	// receive window (at most 2^30 bytes, RFC 7323).
	farBelow = 1 << 30
	// fitWin is how far a challenge's answer (the client's SND.NXT) may be
	// past a parked segment for the segment to fit: the largest window
	// there is (the answer's ack, which must equal the segment's, is the
	// check a blind attacker fails).
	fitWin = 1 << 30
)

// probeState is where one owner probe stands.
type probeState uint8

const (
	probeWaiting probeState = iota
	probeReset              // answered by a no-socket reset: not the owner
	probeOwner              // answered by an ACK whose numbers fit a parked segment
	probeOther              // answered by an ACK that fits none (TIME_WAIT, a stale socket)
	probeSilent             // no answer after the retry
)

// probe is one real's owner probe and its answer.
type probe struct {
	real     uint16 // index in the service's Reals
	state    probeState
	win      uint16 // the answer's window field
	seq, ack uint32 // the answer's numbers
}

// startMiss is the miss path's first step for p, which may trigger (see
// refuseRecovery): the cookie, else the probes, else the challenge.
func (d *Director) startMiss(si uint16, p *packet, now int64) (wire.Verdict, DropReason, []byte) {
	key := Key{p.proto, p.src, p.dst}
	pd := newPending(si, p, now, unknownHandshake, netip.AddrPort{})
	d.stats.Misses++
	if pd.ts {
		if ri, ok := d.cookieReal(si, pd.tsecr); ok {
			if v, r, out, ok := d.steerByCookie(key, pd, p, ri, now); ok {
				return v, r, out
			}
		}
	}
	if v, r, _ := d.park(pd, p); v != wire.Park {
		return v, r, nil
	}
	d.addPending(key, pd)
	d.probeOrChallenge(key, pd, now)
	return wire.Park, DropNone, nil
}

// addPending puts pd in the table under key, and in its prefix's budget.
func (d *Director) addPending(key Key, pd *pending) {
	d.rec.pending[key] = pd
	d.rec.prefixAdd(key.Src.Addr(), prefixUse{inflight: 1})
}

// endMiss ends a miss that dials nothing: its entry leaves the table and
// the budgets, its probes are forgotten. Its parked segments are dropped
// unless the caller flushes them.
func (d *Director) endMiss(key Key, pd *pending) {
	d.forgetProbes(key, pd)
	d.takePending(key)
}

// probeOrChallenge sends the owner probes of pd, or when no real can be
// probed, the challenge.
func (d *Director) probeOrChallenge(key Key, pd *pending, now int64) {
	if !d.startProbes(key, pd, now) {
		d.startChallenge(key, pd, now)
	}
}

// steerByCookie sends p at once to the real its cookie names, ri, on a
// tentative flow, and keeps a copy of p until the real answers. ok is false
// if the flow cannot be made (its keys taken, the table full): the probes
// are tried instead.
func (d *Director) steerByCookie(key Key, pd *pending, p *packet, ri int, now int64) (_ wire.Verdict, _ DropReason, _ []byte, ok bool) {
	if d.flows.n >= d.maxFlows {
		return 0, 0, nil, false
	}
	s := &d.services[pd.svc]
	real := s.Reals[ri].Addr
	if !d.keysFree(key, Key{protoTCP, real, key.Src}) || d.probing(real, key.Src) {
		return 0, 0, nil, false
	}
	if v, r, _ := d.park(pd, p); v != wire.Park {
		return v, r, nil, true
	}
	// Tentative and unconfirmed: on the short timeout until the real
	// answers (a forged cookie that reaches the owner gets only its
	// challenge ACK, which the client ignores).
	slot, inserted := d.insertFlow(flow{
		Proto: protoTCP, Client: endpointOf(key.Src),
		Kind: KindCookie, svc: pd.svc, real: uint16(ri), tentative: true, unconfirmed: true,
	})
	if !inserted {
		d.unpark(pd, key.Src.Addr())
		return 0, 0, nil, false
	}
	pd.phase, pd.deadline = phaseSteer, now+steerWait
	pd.probes = append(pd.probes, probe{real: uint16(ri), state: probeWaiting})
	d.addPending(key, pd)
	d.stats.CookieSteers++
	f := &d.flows.slab[slot]
	d.track(f, p, true, now)
	d.toReal(p, f)
	return wire.Forward, DropNone, p.ip, true
}

// cookieOverrides reports whether p, a segment arriving behind pd (probing
// or challenging), carries a cookie naming an up real of pd's service that pd
// has not ruled out, and data enough to start a miss.
func (d *Director) cookieOverrides(pd *pending, p *packet) bool {
	if (pd.phase != phaseProbe && pd.phase != phaseChallenge) || p.data <= 1 || d.cookieBits == 0 {
		return false
	}
	_, ts, _, tsecr := tcpOptions(header.TCP(p.l4))
	if !ts {
		return false
	}
	ri, ok := d.cookieReal(pd.svc, tsecr)
	if !ok {
		return false
	}
	for _, q := range pd.probes {
		if int(q.real) == ri && q.state == probeReset {
			return false
		}
	}
	return true
}

// unpark takes back the segment just parked behind pd (not yet in the
// table) for client.
func (d *Director) unpark(pd *pending, client netip.Addr) {
	d.rec.parkedBytes -= pd.bytes
	d.rec.prefixAdd(client, prefixUse{parked: -int32(pd.bytes)})
	pd.parked, pd.bytes = nil, 0
}

// tentativeAnswer handles a real's segment on f, a tentative cookie flow
// (in slot; ck its client key). A no-socket reset (RST without ACK: the
// form Linux's tcp_v4_send_reset answers a segment carrying an ACK with,
// when it has no socket for it) says the cookie was noise or forged: it is
// swallowed, the flow removed, and the miss goes on with the probes; so
// does a pure ACK whose numbers fit no kept segment. Any other segment
// proves the real holds the connection: the flow is confirmed, its windows
// learned afresh from the real's numbers (what the client side had learned
// may have come from a forged segment). handled is false when the caller
// goes on with the segment as for any flow.
func (d *Director) tentativeAnswer(slot uint32, f *flow, p *packet, now int64) (handled bool) {
	ck := Key{protoTCP, f.Client.AddrPort(), d.vipOf(f)}
	pd := d.rec.pending[ck]
	if pd != nil && pd.phase != phaseSteer {
		pd = nil
	}
	// While the steer's trigger is kept, a pure ACK must fit it to
	// confirm: a TIME_WAIT socket of an earlier connection on the tuple,
	// or the owner answering a forged segment with its own numbers, does
	// not (then the steer is undone as for a reset, and the probes
	// decide). Data, a FIN or a SYN from the real is the real speaking on
	// its connection, as adoption takes it.
	noSocket := p.flags&(header.TCPFlagRst|header.TCPFlagAck) == header.TCPFlagRst
	unfit := pd != nil && isPureACK(p) && !pd.fitsOwner(p.seq, p.ack, header.TCP(p.l4).WindowSize())
	if noSocket || unfit {
		ri := f.real
		d.removeFlow(slot, now)
		if noSocket {
			d.stats.CookieResets++
		} else {
			d.stats.CookieUnfit++
		}
		switch {
		case pd != nil && pd.noData:
			d.endMiss(ck, pd) // a pure ACK's steer: nothing else to try
		case pd != nil:
			for i := range pd.probes {
				if pd.probes[i].real == ri {
					pd.probes[i].state = probeReset
				}
			}
			pd.retried = false
			d.probeOrChallenge(ck, pd, now)
		}
		return true
	}
	f.tentative, f.unconfirmed = false, false
	f.win = tcpWin{}
	f.hiSrvSeen, f.marked = false, false
	d.stats.CookieConfirmed++
	if pd != nil {
		d.stats.CookieLatency.add(now - pd.started)
		d.endMiss(ck, pd)
	}
	return false
}

// startProbes sends an owner probe to every real of pd's service that is
// up and not ruled out yet (a cookie steer's reset), and whose tuple with
// the client is free (no flow, dial or other probe holds it: its answer
// would not be told apart). ok is false if none was sent.
func (d *Director) startProbes(key Key, pd *pending, now int64) (ok bool) {
	s := &d.services[pd.svc]
	known := pd.probes
	pd.probes = pd.probes[:0:0]
	for _, q := range known {
		if q.state != probeWaiting {
			pd.probes = append(pd.probes, q) // ruled out before: kept so
		}
	}
	// One probe round per tuple per retryAfter: a round that follows
	// another too soon (a new miss on the tuple) is sent at the earlier
	// round's retry time, when the reals' rate limit lets them answer;
	// that send is its one retry.
	last, recent := d.rec.probed[key]
	delayed := recent && now-last < retryAfter
	sent := 0
	for ri, r := range s.Reals {
		if r.Down || r.Rehome || pd.probed(uint16(ri)) {
			continue
		}
		rk := Key{protoTCP, r.Addr, key.Src}
		if _, _, taken := d.flows.lookup(rk); taken || d.probing(r.Addr, key.Src) {
			continue
		}
		if _, dialing := d.rec.dialing[rk]; dialing {
			continue
		}
		d.rec.probes[rk] = key
		pd.probes = append(pd.probes, probe{real: uint16(ri)})
		if !delayed {
			d.emit(d.probePacket(key, pd, r.Addr))
		}
		sent++
	}
	if sent == 0 {
		return false
	}
	pd.phase, pd.retried, pd.deadline = phaseProbe, false, now+retryAfter
	d.stats.ProbeRounds++
	if delayed {
		pd.deadline = last + retryAfter
		d.stats.ProbeRoundsDelayed++
		return true
	}
	d.rec.probed[key] = now
	d.stats.ProbesSent += uint64(sent)
	return true
}

// probed reports whether pd already has a probe (or a verdict) for real ri.
func (pd *pending) probed(ri uint16) bool {
	for _, q := range pd.probes {
		if q.real == ri {
			return true
		}
	}
	return false
}

// probing reports whether an owner probe for the client's tuple at real
// waits for its answer.
func (d *Director) probing(real netip.AddrPort, client netip.AddrPort) bool {
	_, ok := d.rec.probes[Key{protoTCP, real, client}]
	return ok
}

// probePacket is the owner probe of pd's tuple for real: from the client's
// address and port, an ACK with the trigger's ack and a seq farBelow the
// trigger's, no option (a timestamp could fail PAWS, which Linux since 2025
// drops without an answer), no payload.
func (d *Director) probePacket(key Key, pd *pending, real netip.AddrPort) []byte {
	return buildSegment(nil, key.Src, real, pd.seq-farBelow, pd.ack, header.TCPFlagAck, pd.win)
}

// forgetProbes removes pd's probes waiting for an answer from the index of
// probes.
func (d *Director) forgetProbes(key Key, pd *pending) {
	s := &d.services[pd.svc]
	for _, q := range pd.probes {
		if int(q.real) >= len(s.Reals) {
			continue
		}
		rk := Key{protoTCP, s.Reals[q.real].Addr, key.Src}
		if d.rec.probes[rk] == key {
			d.rec.probes = shrink.Delete(d.rec.probes, rk)
		}
	}
}

// probeAnswer handles a real's segment on the tuple of an owner probe (rk,
// the probe of client key ck). A reset or a pure ACK is the answer and is
// consumed; anything else is the real speaking on its connection (a
// retransmission): handled is false, and the caller adopts it.
func (d *Director) probeAnswer(ck, rk Key, p *packet, now int64) (v wire.Verdict, handled bool) {
	pd := d.rec.pending[ck]
	if pd == nil || pd.phase != phaseProbe {
		d.rec.probes = shrink.Delete(d.rec.probes, rk)
		return 0, false
	}
	q := pd.probeOf(d.services[pd.svc].Reals, p.src)
	if q == nil {
		return 0, false
	}
	switch {
	case p.flags&header.TCPFlagRst != 0:
		if q.state == probeWaiting {
			q.state = probeReset
			d.stats.ProbeResets++
		}
	case p.data == 0 && p.flags&(header.TCPFlagSyn|header.TCPFlagFin) == 0 && p.flags&header.TCPFlagAck != 0:
		if q.state == probeWaiting {
			q.seq, q.ack, q.win = p.seq, p.ack, header.TCP(p.l4).WindowSize()
			q.state = probeOther
			if pd.fitsOwner(q.seq, q.ack, q.win) {
				q.state = probeOwner
			} else {
				d.stats.ProbeOthers++
			}
		}
	default:
		return 0, false
	}
	d.rec.probes = shrink.Delete(d.rec.probes, rk)
	d.decideProbes(ck, pd, now, false)
	return wire.Consume, true
}

// recheckOwners runs when a segment parks behind a miss whose probes were
// answered: a real that answered with numbers no parked segment fitted may
// fit the new one (a forged segment started the miss, the client's own
// arrives now). In the probe round the decision is retaken; after it (the
// client challenged) the one plausible owner, if there is one, takes the
// flow at once.
func (d *Director) recheckOwners(key Key, pd *pending, now int64) {
	changed := false
	for i := range pd.probes {
		if q := &pd.probes[i]; q.state == probeOther && pd.fitsOwner(q.seq, q.ack, q.win) {
			q.state = probeOwner
			changed = true
		}
	}
	if !changed {
		return
	}
	if pd.phase == phaseProbe {
		d.decideProbes(key, pd, now, false)
		return
	}
	owner, owners := -1, 0
	for i, q := range pd.probes {
		if q.state == probeOwner {
			owner, owners = i, owners+1
		}
	}
	if owners == 1 {
		d.steerByProbe(key, pd, pd.probes[owner], now)
	}
}

// probeOf is pd's probe of the real at addr.
func (pd *pending) probeOf(reals []*balancer.Real, addr netip.AddrPort) *probe {
	for i := range pd.probes {
		if ri := pd.probes[i].real; int(ri) < len(reals) && reals[ri].Addr == addr {
			return &pd.probes[i]
		}
	}
	return nil
}

// fitsOwner reports whether a real's answer (its SND.NXT seq, its RCV.NXT
// ack, its window field win) fits one of pd's parked segments: the real has
// sent at least what the client acknowledged and at most the client's
// receive window more (the segment's window field at the largest scale,
// the scale being unknown), and the segment's bytes lie within the real's
// receive window of what it expects (a retransmission below it, or bytes
// after a lost segment above it). A TIME_WAIT socket of an earlier
// connection on the tuple, or a socket an earlier recovery left behind with
// stale numbers, answers with numbers that fit nothing, but for a chance of
// about (w<<14)^2 / 2^63: 1 in 130,000 at Linux's usual 502.
func (pd *pending) fitsOwner(seq, ack uint32, win uint16) bool {
	rwin := max(uint32(win)<<maxWScale, minAckWin)
	for _, b := range pd.parked {
		ps, _ := readParked(b)
		sq, sa, hasAck := ps.seq, ps.ack, ps.hasAck
		cwin := max(uint32(ps.win)<<maxWScale, minAckWin)
		if hasAck && !seqAfter(sa, seq) && seq-sa <= cwin && (ack-sq <= rwin || sq-ack <= rwin) {
			return true
		}
	}
	return false
}

// parkedSeg is what the miss path reads of a parked segment.
type parkedSeg struct {
	seq, end, ack uint32
	win           uint16
	hasAck, sack  bool // an ACK; SACK blocks
}

// readParked reads a parked segment (parked copies are well formed: they
// were decoded when parked); ok is false otherwise.
func readParked(b []byte) (ps parkedSeg, ok bool) {
	var p packet
	if p.decodeIP(b) != DropNone {
		return ps, false
	}
	t := header.TCP(p.l4)
	if len(t) < header.TCPMinimumSize || int(t.DataOffset()) > len(t) {
		return ps, false
	}
	p.seq, p.flags = t.SequenceNumber(), t.Flags()
	p.data = len(t) - int(t.DataOffset())
	ps = parkedSeg{seq: p.seq, end: segEnd(&p), ack: t.AckNumber(), win: t.WindowSize(), hasAck: p.flags&header.TCPFlagAck != 0}
	ps.sack, _, _, _ = tcpOptions(t)
	return ps, true
}

// decideProbes ends the probe round of pd when it can: exactly one
// plausible owner and no probe waiting steers the flow to it; no plausible
// owner, or two, goes on to the challenge. final says the waiting probes
// count as silent (the round's last timer).
func (d *Director) decideProbes(key Key, pd *pending, now int64, final bool) {
	owner, owners := -1, 0
	for i := range pd.probes {
		q := &pd.probes[i]
		if q.state == probeWaiting {
			if !final {
				return
			}
			q.state = probeSilent
			d.stats.ProbesSilent++
		}
		if q.state == probeOwner {
			owner, owners = i, owners+1
		}
	}
	d.forgetProbes(key, pd)
	if owners == 1 {
		d.steerByProbe(key, pd, pd.probes[owner], now)
		return
	}
	d.startChallenge(key, pd, now)
}

// steerByProbe gives the flow of pd to the owner q found: a flow with no
// deltas, the real's side of its windows seeded from the answer, and the
// parked segments forwarded to it (out of window ones change nothing, and
// the real answers them itself).
func (d *Director) steerByProbe(key Key, pd *pending, q probe, now int64) {
	d.takePending(key)
	s := &d.services[pd.svc]
	real := s.Reals[q.real].Addr
	if !d.keysFree(key, Key{protoTCP, real, key.Src}) || d.flows.n >= d.maxFlows {
		d.stats.ProbeNoFlow++
		return
	}
	slot, ok := d.insertFlow(flow{
		Proto: protoTCP, Client: endpointOf(key.Src),
		Kind: KindProbe, State: StateEstablished, svc: pd.svc, real: q.real,
		hiSrv: q.seq, hiSrvSeen: true, marked: true,
		win: tcpWin{
			srv:   dirWin{end: q.seq, ack: q.ack, maxWin: uint32(q.win) << maxWScale},
			flags: winSrvSeen | winSrvAcked,
		},
		Expires: now + d.timeouts[StateEstablished],
	})
	if !ok {
		d.stats.ProbeNoFlow++
		return
	}
	d.stats.ProbeSteers++
	d.stats.ProbeLatency.add(now - pd.started)
	d.flushLocked(slot, pd, now)
}

// flushLocked rewrites pd's parked segments for the flow in slot and queues
// them to be written (d.mu is held; pd is out of the table).
func (d *Director) flushLocked(slot uint32, pd *pending, now int64) {
	f := &d.flows.slab[slot]
	for _, b := range pd.parked {
		var p packet
		if p.decodeIP(b) != DropNone || p.decodeL4() != DropNone {
			continue
		}
		d.track(f, &p, true, now)
		d.toReal(&p, f)
		d.emit(p.ip)
	}
	pd.parked = nil
}

// startChallenge challenges pd's client before a recovery dial: an ACK from
// the VIP, seq farBelow the trigger's ack (outside the client's receive
// window whatever its size), ack the trigger's seq, no option (Linux drops
// an old ACK failing PAWS without an answer), no payload (a guessed byte
// could be queued as data).
func (d *Director) startChallenge(key Key, pd *pending, now int64) {
	pd.phase, pd.retried, pd.deadline = phaseChallenge, false, now+retryAfter
	d.emit(challengePacket(key, pd))
	d.stats.ChallengesSent++
}

func challengePacket(key Key, pd *pending) []byte {
	return buildSegment(nil, key.Dst, key.Src, pd.ack-farBelow, pd.seq, header.TCPFlagAck, 0)
}

// isPureACK reports whether p is an ACK with no payload, SYN, FIN or RST:
// the form of a duplicate ACK answering a challenge.
func isPureACK(p *packet) bool {
	return p.data == 0 && p.flags&(header.TCPFlagSyn|header.TCPFlagFin|header.TCPFlagRst|header.TCPFlagAck) == header.TCPFlagAck
}

// challengeAnswer handles the client's pure ACK a on a tuple whose client
// is challenged: its seq is the client's SND.NXT, its ack its RCV.NXT. The
// first parked segment that fits it becomes the dial's trigger: the same
// ack, its bytes within what the client has sent (trigger.end <= a.seq,
// a.seq - window <= trigger.seq), no SACK block (the client holds bytes
// from the old real the new one would not match). The parked segments
// before it are dropped. None fits: the parked segments were not the
// client's (forged), and the miss ends at no cost.
func (d *Director) challengeAnswer(key Key, pd *pending, a *packet, now int64) (wire.Verdict, DropReason, []byte) {
	at, sacked, short := -1, false, false
	for i, b := range pd.parked {
		ps, _ := readParked(b)
		seq, end, ack, hasAck, sack := ps.seq, ps.end, ps.ack, ps.hasAck, ps.sack
		if hasAck && ack == a.ack && !seqAfter(end, a.seq) && a.seq-seq <= fitWin {
			switch {
			case end-seq <= 1:
				// One byte may be a keepalive probe's (SND.UNA-1):
				// the new real would take it for data.
				short = true
			case sack:
				sacked = true
			default:
				at = i
			}
			if at >= 0 {
				break
			}
		}
	}
	if at < 0 {
		if short && !sacked {
			// The client's own segments, but none with two bytes or
			// more: they wait for one that proves a request.
			d.stats.Drops[DropNoTrigger]++
		} else if sacked {
			// The client's own segments, but carrying SACK blocks: they
			// wait for a retransmission without.
			d.stats.Drops[DropSACKTrigger]++
		} else {
			d.stats.ChallengesRejected++
		}
		d.endMiss(key, pd)
		return wire.Consume, DropNone, nil
	}
	d.stats.ChallengesPassed++
	if at > 0 {
		n := 0
		for _, b := range pd.parked[:at] {
			n += len(b)
		}
		pd.parked = pd.parked[at:]
		pd.bytes -= n
		d.rec.parkedBytes -= n
		d.rec.prefixAdd(key.Src.Addr(), prefixUse{parked: -int32(n)})
		// The reset of a failed dial takes the client's numbers from the
		// segments kept (as park does), not from those dropped.
		for i, b := range pd.parked {
			ps, _ := readParked(b)
			if ps.hasAck && (i == 0 || seqAfter(ps.ack, pd.lastAck)) {
				pd.lastAck = ps.ack
			}
			if i == 0 || seqAfter(ps.end, pd.lastEnd) {
				pd.lastEnd = ps.end
			}
		}
	}
	var t packet
	t.decodeIP(pd.parked[0])
	t.decodeL4()
	_, ts, tsval, tsecr := tcpOptions(header.TCP(t.l4))
	pd.seq, pd.ack, pd.ts, pd.tsval, pd.tsecr = t.seq, t.ack, ts, tsval, tsecr
	d.dialMiss(key, pd, now)
	return wire.Consume, DropNone, nil
}

// challengeReset handles a client's RST on a challenged tuple: seq = the
// challenge's ack (the trigger's seq) is its host's no-socket reset, the
// source has no such connection (a spoofed trigger), and the miss ends.
func (d *Director) challengeReset(key Key, pd *pending, p *packet) bool {
	if p.seq != pd.seq || p.flags&header.TCPFlagAck != 0 {
		return false
	}
	d.stats.ChallengeResets++
	d.endMiss(key, pd)
	return true
}

// dialMiss turns a challenged miss whose client answered into the patent's
// recovery: the first dial, or its failure at once (no real, no port).
func (d *Director) dialMiss(key Key, pd *pending, now int64) {
	pd.phase = phaseDial
	o, ok := d.nextDial(key, pd, now)
	if !ok {
		reason := FailNoReal
		if pd.noPort {
			reason = FailError // every real's recovery ports are taken
		}
		d.stats.RecoveryStarted++
		d.stats.RecoveryFailed[reason]++
		lastAck, lastEnd := pd.lastAck, pd.lastEnd
		d.endMiss(key, pd)
		// The client gets the RST a failed recovery gives (seq = its ack,
		// its RCV.NXT).
		d.stats.ClientResets++
		d.emit(buildRST(nil, key.Dst, key.Src, lastAck, lastEnd, true))
		return
	}
	d.stats.RecoveryStarted++
	d.rec.Dialer.Dial(key, o)
}

// staleChallenge challenges the client of the flow in slot, whose segment p
// is in window but acknowledges server bytes this director never carried.
// If the client's answer fits p (staleAnswer), p was its own and the flow is
// stale; else p was forged, and the flow lives on. One challenge at a time
// per flow, within the recovery budgets (beyond them the flow stays
// suspect, for the real's no-socket reset to prove).
func (d *Director) staleChallenge(slot uint32, p *packet, now int64) {
	key := Key{p.proto, p.src, p.dst}
	rc := &d.rec
	if rc.pending[key] != nil || len(rc.pending) >= rc.MaxInflight || rc.prefixRefuse(p.src.Addr()) != DropNone {
		return
	}
	f := &d.flows.slab[slot]
	pd := &pending{svc: f.svc, started: now, seq: p.seq, ack: p.ack, lastEnd: segEnd(p), slot: slot}
	d.addPending(key, pd)
	d.startChallenge(key, pd, now)
	pd.phase = phaseStale
	d.stats.StaleChallenges++
}

// staleAnswer handles the client's pure ACK a on a suspect flow (slot) whose
// client is challenged: an answer with the suspect segment's ack and a seq
// at or past its end says the segment was the client's own: the flow is
// stale, removed, and the client's next segment finds its real through the
// miss path. Any other answer says it was forged: the flow is no longer
// suspect. stale is false when the caller goes on with a as for any flow.
func (d *Director) staleAnswer(slot uint32, a *packet, now int64) (v wire.Verdict, stale bool) {
	key := Key{a.proto, a.src, a.dst}
	pd := d.rec.pending[key]
	if pd == nil || pd.phase != phaseStale || pd.slot != slot {
		return 0, false
	}
	d.endMiss(key, pd)
	if a.ack == pd.ack && !seqAfter(pd.lastEnd, a.seq) {
		d.removeFlow(slot, now)
		d.stats.StaleFlows++
		return wire.Consume, true
	}
	d.flows.slab[slot].win.flags &^= winSuspect
	d.stats.StaleCleared++
	return 0, false
}

// staleAccepted ends the challenge of f's client, a suspect flow, when the
// real's segment sg acknowledges the segment that made it suspect: the real
// took the client's bytes, so it holds the client's connection and the flow
// is live. It reports whether f's suspicion may be cleared: also when no
// challenge is out (the real answered normally), not when the real answered
// with numbers short of the suspect segment (a socket the connection left
// behind: the client's answer decides).
func (d *Director) staleAccepted(f *flow, sg *seg) bool {
	key := Key{f.Proto, f.Client.AddrPort(), d.vipOf(f)}
	pd := d.rec.pending[key]
	if pd == nil || pd.phase != phaseStale {
		return true
	}
	if !sg.hasAck() || seqAfter(pd.lastEnd, sg.ack) {
		return false
	}
	d.endMiss(key, pd)
	return true
}

// endStale ends the stale challenge of the flow in slot, if one is out: the
// flow is going.
func (d *Director) endStale(f *flow, slot uint32) {
	key := Key{f.Proto, f.Client.AddrPort(), d.vipOf(f)}
	if pd := d.rec.pending[key]; pd != nil && pd.phase == phaseStale && pd.slot == slot {
		d.endMiss(key, pd)
	}
}

// missTimers runs the miss path's timers due at now: the retries of probes
// and challenges, and the ends of phases whose answers did not come.
func (d *Director) missTimers(now int64) {
	for key, last := range d.rec.probed {
		if now-last >= retryAfter {
			delete(d.rec.probed, key)
		}
	}
	for key, pd := range d.rec.pending {
		if pd.phase == phaseDial || pd.deadline > now {
			continue
		}
		switch pd.phase {
		case phaseSteer:
			// The real did not answer the steered segment in time: the
			// flow stays tentative (a later reset still removes it), the
			// trigger and the budget go.
			d.endMiss(key, pd)
		case phaseProbe:
			if pd.retried {
				d.decideProbes(key, pd, now, true)
				continue
			}
			pd.retried, pd.deadline = true, now+answerWait
			d.rec.probed[key] = now
			s := &d.services[pd.svc]
			for _, q := range pd.probes {
				if q.state == probeWaiting {
					d.emit(d.probePacket(key, pd, s.Reals[q.real].Addr))
					d.stats.ProbesSent++
				}
			}
		case phaseChallenge, phaseStale:
			if pd.retried {
				// Unanswered: a miss ends at no cost; a suspect flow
				// stays suspect (the real's no-socket reset may still
				// prove it stale).
				d.stats.ChallengesUnanswered++
				d.endMiss(key, pd)
				continue
			}
			pd.retried, pd.deadline = true, now+challengeWait
			d.emit(challengePacket(key, pd))
			d.stats.ChallengesSent++
		}
	}
}

// emit queues a packet the Director sends on its own (probes, challenges,
// flushed segments, resets), written after its lock is released.
func (d *Director) emit(b []byte) { d.emitq = append(d.emitq, b) }

// takeEmits returns the queued packets and empties the queue; d.mu is held.
func (d *Director) takeEmits() [][]byte {
	q := d.emitq
	d.emitq = nil
	return q
}

// send hands queued packets to Config.Emit (d.mu not held).
func (d *Director) send(q [][]byte, now int64) {
	if len(q) > 0 && d.emitFn != nil {
		d.emitFn(q, now)
	}
}
