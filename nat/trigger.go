package nat

import (
	"net/netip"

	"holdfast/internal/wire"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Triggers and parking: which client segments with no flow start a recovery
// (DESIGN.md section 2), the limits on recoveries, the start of one (its
// first dial asked of the Dialer), re-homes, and the parking of segments
// behind a recovery in flight.

// recoverMiss handles a client TCP segment (not SYN, not RST) with no flow:
// the answer to a challenge, a segment parked behind a miss in progress, or
// the start of one (miss.go) if it may trigger.
func (d *Director) recoverMiss(si uint16, p *packet, now int64) (wire.Verdict, DropReason, []byte) {
	key := Key{p.proto, p.src, p.dst}
	if pd := d.rec.pending[key]; pd != nil {
		if pd.phase == phaseChallenge && isPureACK(p) {
			return d.challengeAnswer(key, pd, p, now)
		}
		if d.cookieOverrides(pd, p) {
			// A segment whose cookie names a real this miss has not
			// ruled out, behind a miss that probes or challenges: the
			// miss was started by a segment without a cookie (forged,
			// or the client's own before its first rewritten TSval),
			// and the probes may wait for a real that an attacker's
			// segments keep rate-limited. The cookie is tried now, on
			// this segment; the parked ones go (the client retransmits
			// its own).
			d.endMiss(key, pd)
			d.stats.CookieOverrides++
			return d.startMiss(si, p, now)
		}
		v, r, out := d.park(pd, p)
		if v == wire.Park && (pd.phase == phaseProbe || pd.phase == phaseChallenge) {
			d.recheckOwners(key, pd, now)
		}
		return v, r, out
	}
	if p.data == 0 {
		return d.steerNoData(si, p, now)
	}
	if r := d.refuseRecovery(p, now); r != DropNone {
		return wire.Drop, r, nil
	}
	return d.startMiss(si, p, now)
}

// steerNoData handles p, a pure ACK or a FIN with no flow. It proves no
// connection worth a search (refuseRecovery) and is dropped, unless its
// cookie names a live real: then it is steered there on a tentative flow,
// as a segment with data would be, but nothing else is tried (no probe,
// no challenge, no recovery). Behind ECMP the client side of a flow the
// routers moved may never send anything else: during a download its ACKs
// come here while the real's data goes through another director, and
// without them the real's window would never open again.
func (d *Director) steerNoData(si uint16, p *packet, now int64) (wire.Verdict, DropReason, []byte) {
	_, ts, _, tsecr := tcpOptions(header.TCP(p.l4))
	if !ts || p.flags&header.TCPFlagAck == 0 {
		return wire.Drop, DropNoTrigger, nil
	}
	ri, ok := d.cookieReal(si, tsecr)
	if !ok {
		return wire.Drop, DropNoTrigger, nil
	}
	if r := d.refuseSearch(p, now); r != DropNone {
		return wire.Drop, r, nil
	}
	key := Key{p.proto, p.src, p.dst}
	pd := newPending(si, p, now, unknownHandshake, netip.AddrPort{})
	pd.noData = true
	v, r, out, ok := d.steerByCookie(key, pd, p, ri, now)
	if !ok {
		return wire.Drop, DropNoTrigger, nil
	}
	d.stats.Misses++
	return v, r, out
}

// refuseRecovery says why a segment may not start a miss (the search for
// its connection's real, then a recovery), or DropNone. It takes a
// rate-limiter token when it allows one.
//
// Only a segment with data proves a live connection worth the search; a
// pure ACK or FIN does not, and waits for a retransmission. One byte
// starts the search (it may be a protocol's one-byte message, or a
// keepalive probe at SND.UNA-1, which the connection's own real answers
// as such), but never becomes the trigger of a recovery dial, nor does a
// segment with SACK blocks (see challengeAnswer).
func (d *Director) refuseRecovery(p *packet, now int64) DropReason {
	if p.data == 0 {
		return DropNoTrigger
	}
	return d.refuseSearch(p, now)
}

// refuseSearch is refuseRecovery for a segment that may start a miss
// whatever its data: the budgets and the allowed sources.
func (d *Director) refuseSearch(p *packet, now int64) DropReason {
	rc := &d.rec
	if !rc.allowed(p.src.Addr()) {
		return DropRecoveryDenied
	}
	if r := rc.prefixRefuse(p.src.Addr()); r != DropNone {
		return r
	}
	switch {
	case len(rc.pending) >= rc.MaxInflight:
		return DropRecoveryBusy
	case d.flows.n+len(rc.pending) >= d.maxFlows:
		return DropFlowLimit
	case !rc.allow(now):
		return DropRecoveryRate
	}
	return DropNone
}

// newPending is the recovery of p's connection onto a real of service si,
// before its first dial.
func newPending(si uint16, p *packet, now int64, hs clientHandshake, from netip.AddrPort) *pending {
	_, ts, tsval, tsecr := tcpOptions(header.TCP(p.l4))
	pd := &pending{
		svc: si, started: now, win: header.TCP(p.l4).WindowSize(),
		seq: p.seq, ack: p.ack, ts: ts, tsval: tsval, tsecr: tsecr,
		hs: hs, from: from,
	}
	if from.IsValid() {
		pd.tried = append(pd.tried, from)
	}
	return pd
}

// beginRecovery parks p behind pd, whose first dial o is reserved, and
// asks the Dialer for it.
func (d *Director) beginRecovery(key Key, pd *pending, p *packet, o wire.DialOptions) (wire.Verdict, DropReason, []byte) {
	if v, r, _ := d.park(pd, p); v != wire.Park {
		d.endDial(pd, false)
		return v, r, nil
	}
	d.rec.pending[key] = pd
	d.rec.prefixAdd(key.Src.Addr(), prefixUse{inflight: 1})
	d.stats.RecoveryStarted++
	d.rec.Dialer.Dial(key, o)
	return wire.Park, DropNone, nil
}

// rehome moves the flow in slot, whose real is down or drained, onto a
// healthy real: the client's segment p (all of the old real's data
// acknowledged) is recovered as after a failover, with the handshake the
// director saw, so that window scale, MSS and SACK are exact.
//
// The flow is removed only once its first dial is asked for: with no other
// real to take it (none available, or none with a free recovery port) the
// flow stays where it is and p goes to its real (counted RehomeKept; a
// drained real still serves, and a down one may not be), to be tried again at
// the client's next request. A tuple with a recovery already in flight (a
// flow adopted during it) is not re-homed: p is dropped (recovery_pending)
// and the client retransmits it once that recovery ended.
func (d *Director) rehome(slot uint32, si uint16, p *packet, now int64) (wire.Verdict, DropReason, []byte) {
	key := Key{p.proto, p.src, p.dst}
	if d.rec.pending[key] != nil {
		return wire.Drop, DropRecoveryPending, nil
	}
	f := &d.flows.slab[slot]
	from := d.realOf(f)
	if !d.otherReal(si, from) {
		return d.keepOnReal(f, p, now)
	}
	if r := d.refuseRecovery(p, now); r != DropNone {
		return wire.Drop, r, nil
	}
	if sack, _, _, _ := tcpOptions(header.TCP(p.l4)); sack {
		return wire.Drop, DropSACKTrigger, nil
	}
	pd := newPending(si, p, now, f.hs, from)
	o, ok := d.nextDial(key, pd, now)
	if !ok {
		return d.keepOnReal(f, p, now)
	}
	v, r, out := d.beginRecovery(key, pd, p, o)
	if v == wire.Park {
		d.removeFlow(slot, now)
		d.stats.RehomeStarted++
	}
	return v, r, out
}

// keepOnReal forwards p to its flow's real after a re-home found no real to
// move to.
func (d *Director) keepOnReal(f *flow, p *packet, now int64) (wire.Verdict, DropReason, []byte) {
	d.stats.RehomeKept++
	d.track(f, p, true, now)
	d.toReal(p, f)
	return wire.Forward, DropNone, p.ip
}

// otherReal reports whether service si has a real other than from that can
// take a flow.
func (d *Director) otherReal(si uint16, from netip.AddrPort) bool {
	for _, r := range d.services[si].Reals {
		if r.Addr != from && r.Available() {
			return true
		}
	}
	return false
}

// park keeps a copy of a client segment until its recovery ends. A TCP
// segment longer than RecoveryConfig.MTU is a GSO super-packet from the
// offload TUN (up to 64 KiB, segmented by the kernel on the way out as its
// virtio-net header says): the parked copy leaves later without that header,
// written as one packet too big for the link to the reals. It is parked as
// the segments the kernel would have made, each within the MTU, with full
// checksums.
func (d *Director) park(pd *pending, p *packet) (wire.Verdict, DropReason, []byte) {
	rc := &d.rec
	hl := len(p.ip) - len(p.l4) + int(header.TCP(p.l4).DataOffset())
	mss := rc.MTU - hl
	nseg, n := 1, len(p.ip)
	if rc.MTU > 0 && len(p.ip) > rc.MTU && mss > 0 && p.data > mss {
		nseg = (p.data + mss - 1) / mss
		n = p.data + nseg*hl
	} else {
		mss = p.data
	}
	if pd.bytes+n > rc.ParkFlowBytes || rc.parkedBytes+n > rc.ParkBytes {
		return wire.Drop, DropParkFull, nil
	}
	if rc.prefixParked(p.src.Addr())+n > rc.PrefixParkBytes {
		return wire.Drop, DropPrefixParkFull, nil
	}
	if nseg == 1 {
		cp := append([]byte(nil), p.ip...)
		if p.partial {
			// A parked copy leaves without its virtio-net header: give
			// it a full checksum.
			var q packet
			q.decodeIP(cp)
			q.partial = true
			q.decodeL4()
			q.completeChecksum()
		}
		pd.parked = append(pd.parked, cp)
	} else {
		for k := range nseg {
			pd.parked = append(pd.parked, segmentOf(p, hl, k*mss, min(mss, p.data-k*mss), k, k == nseg-1))
		}
	}
	pd.bytes += n
	rc.parkedBytes += n
	rc.prefixAdd(p.src.Addr(), prefixUse{parked: int32(n)})
	if p.flags&header.TCPFlagAck != 0 && (len(pd.parked) == nseg || seqAfter(p.ack, pd.lastAck)) {
		pd.lastAck = p.ack
	}
	if e := segEnd(p); len(pd.parked) == nseg || seqAfter(e, pd.lastEnd) {
		pd.lastEnd = e
	}
	d.stats.Parked++
	return wire.Park, DropNone, nil
}

// segmentOf is segment k of TCP super-packet p, as TSO makes it: the
// headers (hl bytes) copied, the payload bytes [off, off+size), sequence
// number advanced by off, the IPv4 ID by k, FIN and PSH only on the last
// segment and CWR only on the first; with complete IP and TCP checksums.
func segmentOf(p *packet, hl, off, size, k int, last bool) []byte {
	b := make([]byte, hl+size)
	copy(b, p.ip[:hl])
	copy(b[hl:], p.ip[hl+off:hl+off+size])
	l4 := len(p.ip) - len(p.l4) // the IP headers' length
	if p.v6 {
		// No ID, no header checksum (TSO6 copies the rest of the headers).
		header.IPv6(b).SetPayloadLength(uint16(len(b) - header.IPv6MinimumSize))
	} else {
		ip := header.IPv4(b)
		ip.SetTotalLength(uint16(len(b)))
		ip.SetID(ip.ID() + uint16(k))
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
	}
	seg := packet{ip: b, v6: p.v6, proto: protoTCP}
	t := header.TCP(b[l4:])
	t.SetSequenceNumber(p.seq + uint32(off))
	flags := p.flags
	if !last {
		flags &^= header.TCPFlagFin | header.TCPFlagPsh
	}
	if k > 0 {
		flags &^= header.TCPFlagCwr
	}
	t.SetFlags(uint8(flags))
	t.SetChecksum(0)
	t.SetChecksum(^checksum.Checksum(t, seg.pseudoSum(len(t))))
	return b
}
