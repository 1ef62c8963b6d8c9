package nat

import (
	"holdfast/internal/wire"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// The client path: packets to a VIP. A packet of a known flow is rewritten
// for its real; a SYN (or any first packet with recovery off) schedules a
// real and opens a flow; a mid-stream TCP segment with no flow goes to
// recovery (trigger.go).

func (d *Director) fromClient(p *packet, now int64) (wire.Verdict, DropReason, []byte) {
	if p.frag {
		return wire.Drop, DropFragment, nil
	}
	if r := p.decodeL4(); r != DropNone {
		return wire.Drop, r, nil
	}
	if p.isICMP() {
		return d.icmpToVIP(p)
	}
	// The flow first: a service removed by a reload takes no new flows,
	// but its live flows keep going (they carry their service's index).
	key := Key{p.proto, p.src, p.dst}
	slot, side, found := d.flows.lookup(key)
	if found && side != sideClient {
		found = false // a VIP is never a client
	}
	if found {
		d.seenOffloaded(slot, p, now)
		f := &d.flows.slab[slot]
		isSyn := p.proto == protoTCP && p.flags&(header.TCPFlagSyn|header.TCPFlagAck) == header.TCPFlagSyn
		switch {
		case f.Expires <= now:
			d.expireFlow(slot, now)
			found = false
		case isSyn && (f.State == StateTimeWait || f.State == StateClose):
			// A new connection reusing the tuple of a finished one is a
			// new flow, scheduled again (IPVS conn_reuse_mode).
			d.removeFlow(slot, now)
			d.stats.FlowsReused++
			found = false
		case p.proto == protoTCP && d.rec.enabled && f.win.flags&(winHandshake|winSrvSeen) == winHandshake|winSrvSeen &&
			p.flags&(header.TCPFlagSyn|header.TCPFlagRst|header.TCPFlagAck) == header.TCPFlagAck && p.ack != f.win.srv.end:
			// The flow is a SYN's, its handshake not completed, and this
			// segment's ack does not answer the real's SYN-ACK: it belongs
			// to a connection on the tuple this director never saw (after
			// a failover), whose tuple a SYN took, forged or stale. The
			// SYN's flow goes, and the segment finds its connection's real.
			// (A director that did not see the SYN-ACK, the replies going
			// through another one, cannot tell, and does not judge.)
			d.noteReplacedSyn(d.clientKey(f), now)
			d.removeFlow(slot, now)
			d.stats.SynFlowsReplaced++
			found = false
		case p.proto == protoUDP && d.leaving(f):
			// A UDP flow has no connection to keep: its next datagram
			// goes to a healthy real (IPVS expire_nodest_conn).
			d.removeFlow(slot, now)
			found = false
		}
	}
	var sg seg
	v := winOK
	if found && p.proto == protoTCP && d.flows.slab[slot].win.flags&winHandshake != 0 {
		// The client acks the SYN-ACK (the case above took any other
		// ack), or, the SYN-ACK not seen here (replies through another
		// director), sends the byte after its SYN: the handshake is the
		// client's own.
		f := &d.flows.slab[slot]
		if p.flags&(header.TCPFlagSyn|header.TCPFlagRst|header.TCPFlagAck) == header.TCPFlagAck &&
			(f.win.flags&winSrvSeen != 0 || p.seq == f.win.cli.end) {
			f.win.flags &^= winHandshake
			if f.win.flags&winSrvSeen == 0 {
				d.cookieSynAckEcho(p, f)
			}
			if p.seq != f.win.cli.end {
				// The ack answers the real's numbers, but the seq is
				// not the byte after the SYN: the real answered the SYN
				// from an established socket of the client's connection
				// (a challenge ACK), and the SYN was not the client's.
				// The flow carries on as one picked up mid-stream: the
				// client's side and the handshake record (the SYN's
				// options) are forgotten, to be learned from the client's
				// own segments.
				f.win.flags &^= winCliSeen | winCliAcked
				f.hs = clientHandshake{ws: -1, view: -1}
				f.marked = false
				d.stats.SynFlowsReplaced++
			}
		}
	}
	if found && p.proto == protoTCP {
		// A client segment that acknowledges server bytes this director
		// never carried makes the flow suspect: the connection may have
		// moved on through another director (failback without sync), or
		// the segment is forged. It is forwarded with the flow's rewrite
		// and changes nothing. Proof that the flow is stale is something
		// an off-path attacker cannot produce: the real's own no-socket
		// reset (fromReal), or, for a segment in window (the client's own,
		// or a lucky guess), the client's answer to a challenge that fits
		// the segment (staleChallenge).
		f := &d.flows.slab[slot]
		if f.win.flags&winSuspect != 0 && isPureACK(p) {
			if v, stale := d.staleAnswer(slot, p, now); stale {
				return v, DropNone, nil
			}
		}
		if v = f.checkWindow(p, true, &sg); v == winStale {
			if !d.rec.enabled {
				// No challenge without recovery: as before window
				// tracking, the flow goes and the segment opens a new
				// one (a plain NAT director without state sync).
				d.removeFlow(slot, now)
				d.stats.StaleFlows++
				found = false
			} else {
				d.staleChallenge(slot, p, now)
				v = winSuspectAck
			}
		}
	}
	if found && p.proto == protoTCP {
		f := &d.flows.slab[slot]
		// A flow on a dead or drained real moves at its first request
		// after all of the real's data was acknowledged: before that, a
		// response is in flight and cannot be resumed elsewhere.
		if v == winOK && d.rec.enabled && p.data > 1 && d.leaving(f) && f.marked && !seqAfter(f.hiSrv, p.ack) {
			return d.rehome(slot, f.svc, p, now)
		}
		d.trackSeg(f, p, &sg, true, v, now)
		d.toReal(p, f)
		return wire.Forward, DropNone, p.ip
	}
	if !found {
		si, ok := d.bySvc[svcKey{p.proto, p.dst}]
		if !ok {
			return wire.Drop, DropNoService, nil
		}
		if p.proto == protoTCP {
			if p.flags&header.TCPFlagRst != 0 {
				if pd := d.rec.pending[key]; pd != nil && pd.phase == phaseChallenge && d.challengeReset(key, pd, p) {
					return wire.Consume, DropNone, nil
				}
				return wire.Drop, DropStrayRST, nil
			}
			if p.flags&header.TCPFlagSyn == 0 && d.rec.enabled {
				return d.recoverMiss(si, p, now)
			}
		}
		var r DropReason
		// A SYN opens a flow; with recovery off so does a mid-stream
		// segment (scheduled like a new flow, as a director without
		// state sync does: IPVS sloppy_tcp).
		slot, r = d.newFlow(si, p, now)
		if r != DropNone {
			return wire.Drop, r, nil
		}
		if p.proto == protoTCP && p.flags&header.TCPFlagSyn != 0 {
			d.flows.slab[slot].hs = synOptions(p)
			d.flows.slab[slot].win.flags |= winHandshake
		}
	}
	f := &d.flows.slab[slot]
	d.track(f, p, true, now)
	d.toReal(p, f)
	return wire.Forward, DropNone, p.ip
}

// toReal rewrites a client's packet for its flow's real.
func (d *Director) toReal(p *packet, f *flow) {
	d.cookieToReal(p, f)
	if f.Kind == KindRecovered {
		f.toServer().apply(p)
		rewriteSrc(p, f.Local.AddrPort())
	}
	r := d.services[f.svc].Reals[f.real]
	rewriteDst(p, r.Addr)
	r.PacketsIn++
	r.BytesIn += uint64(len(p.ip))
}

// synOptions records the client's SYN options.
func synOptions(p *packet) clientHandshake {
	o := header.ParseSynOptions(header.TCP(p.l4).Options(), false)
	return clientHandshake{ws: int8(o.WS), view: -1, mss: o.MSS, sack: o.SACKPermitted, ts: o.TS}
}

// newFlow schedules a real for the packet's client and inserts a plain flow.
// A tuple whose recovery is in flight gets no flow: Recovered would flush
// the parked mid-stream segments into it (a SYN there is dropped, counted as
// recovery_pending; a genuine client's next SYN after the recovery ends
// opens a flow). The new flow takes neither key of another flow nor the
// tuple of a recovery dial.
func (d *Director) newFlow(si uint16, p *packet, now int64) (uint32, DropReason) {
	key := Key{p.proto, p.src, p.dst}
	if d.rec.pending[key] != nil {
		return 0, DropRecoveryPending
	}
	if d.flows.n >= d.maxFlows {
		return 0, DropFlowLimit
	}
	s := &d.services[si]
	ri := d.pickReal(s, p.src, p.dst, now, nil)
	if ri < 0 {
		return 0, DropNoReal
	}
	real := s.Reals[ri].Addr
	if !d.keysFree(key, Key{p.proto, real, p.src}) {
		return 0, DropTupleClash
	}
	slot, ok := d.insertFlow(flow{
		Proto:  p.proto,
		Client: endpointOf(p.src),
		Kind:   KindPlain,
		svc:    si,
		real:   uint16(ri),
	})
	if !ok {
		return 0, DropTupleClash
	}
	return slot, DropNone
}
