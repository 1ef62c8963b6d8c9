package nat

import (
	"net/netip"

	"holdfast/internal/wire"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Triggers and parking: which client segments with no flow start a recovery
// (DESIGN.md section 2), the limits on recoveries, the start of one (its
// first dial asked of the Dialer), re-homes, and the parking of segments
// behind a recovery in flight.

// recoverMiss handles a client TCP segment (not SYN, not RST) with no flow:
// park it behind a recovery in flight, or start one if it may trigger.
func (d *Director) recoverMiss(si uint16, p *packet, now int64) (wire.Verdict, DropReason, []byte) {
	key := Key{p.proto, p.src, p.dst}
	if pd := d.rec.pending[key]; pd != nil {
		return d.park(pd, p)
	}
	if r := d.refuseRecovery(p, now); r != DropNone {
		return wire.Drop, r, nil
	}
	return d.startRecovery(si, p, now, unknownHandshake, netip.AddrPort{})
}

// refuseRecovery says why a segment may not start a recovery, or DropNone.
// It takes a rate-limiter token when it allows one.
//
// Only a segment with data proves a live connection worth a handshake; a
// pure ACK, FIN or 1-byte keepalive probe (SND.UNA-1) does not, and a segment
// with SACK blocks means the client holds bytes from the old real that the
// new one would not match. Such segments wait for a retransmission.
func (d *Director) refuseRecovery(p *packet, now int64) DropReason {
	rc := &d.rec
	if p.data <= 1 {
		return DropNoTrigger
	}
	sack, _, _, _ := tcpOptions(header.TCP(p.l4))
	switch {
	case sack:
		return DropSACKTrigger
	case !rc.allowed(p.src.Addr()):
		return DropRecoveryDenied
	case len(rc.pending) >= rc.MaxInflight:
		return DropRecoveryBusy
	case d.flows.n+len(rc.pending) >= d.maxFlows:
		return DropFlowLimit
	case !rc.allow(now):
		return DropRecoveryRate
	}
	return DropNone
}

// startRecovery parks p and asks the Dialer for the first dial recovering
// its connection onto a real of service si. hs is what is known of the
// client's handshake; from is the real being left behind by a re-home
// (invalid otherwise).
func (d *Director) startRecovery(si uint16, p *packet, now int64, hs clientHandshake, from netip.AddrPort) (wire.Verdict, DropReason, []byte) {
	key := Key{p.proto, p.src, p.dst}
	_, ts, tsval, tsecr := tcpOptions(header.TCP(p.l4))
	pd := &pending{
		svc: si, started: now,
		seq: p.seq, ack: p.ack, ts: ts, tsval: tsval, tsecr: tsecr,
		hs: hs, from: from,
	}
	if from.IsValid() {
		pd.tried = append(pd.tried, from)
	}
	o, ok := d.nextDial(key, pd, now)
	if !ok && !pd.noPort {
		return wire.Drop, DropNoReal, nil
	}
	if !ok {
		// Every real that could take the flow has all its recovery ports
		// taken: the recovery fails at once, and the client gets the RST
		// a failed recovery gives (seq = its ack, its RCV.NXT).
		d.stats.RecoveryStarted++
		d.stats.RecoveryFailed[FailError]++
		d.stats.ClientResets++
		var seq uint32
		if p.flags&header.TCPFlagAck != 0 {
			seq = p.ack
		}
		return wire.Reset, DropNone, buildRST(p.ip[:0:len(p.ip)], p.dst, p.src, seq, segEnd(p), true)
	}
	if v, r, _ := d.park(pd, p); v != wire.Park {
		d.endDial(pd, false)
		return v, r, nil
	}
	d.rec.pending[key] = pd
	d.stats.RecoveryStarted++
	d.rec.Dialer.Dial(key, o)
	return wire.Park, DropNone, nil
}

// rehome moves the flow in slot, whose real is down or drained, onto a
// healthy real: the client's segment p (all of the old real's data
// acknowledged) is recovered as after a failover, with the handshake the
// director saw, so that window scale, MSS and SACK are exact.
func (d *Director) rehome(slot uint32, si uint16, p *packet, now int64) (wire.Verdict, DropReason, []byte) {
	if r := d.refuseRecovery(p, now); r != DropNone {
		return wire.Drop, r, nil
	}
	f := &d.flows.slab[slot]
	hs, from := f.hs, f.Real.AddrPort()
	d.removeFlow(slot, now)
	d.stats.RehomeStarted++
	return d.startRecovery(si, p, now, hs, from)
}

// park keeps a copy of a client segment until its recovery ends.
func (d *Director) park(pd *pending, p *packet) (wire.Verdict, DropReason, []byte) {
	rc := &d.rec
	n := len(p.ip)
	if pd.bytes+n > rc.ParkFlowBytes || rc.parkedBytes+n > rc.ParkBytes {
		return wire.Drop, DropParkFull, nil
	}
	cp := append([]byte(nil), p.ip...)
	if p.partial {
		// A parked copy leaves without its virtio-net header: give it a
		// full checksum.
		var q packet
		q.decodeIP(cp)
		q.partial = true
		q.decodeL4()
		q.completeChecksum()
	}
	pd.parked = append(pd.parked, cp)
	pd.bytes += n
	rc.parkedBytes += n
	if p.flags&header.TCPFlagAck != 0 && (len(pd.parked) == 1 || seqAfter(p.ack, pd.lastAck)) {
		pd.lastAck = p.ack
	}
	if e := segEnd(p); len(pd.parked) == 1 || seqAfter(e, pd.lastEnd) {
		pd.lastEnd = e
	}
	d.stats.Parked++
	return wire.Park, DropNone, nil
}
