package nat

import (
	"time"

	"holdfast/internal/wire"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// The real path: packets from a real server (or to a recovery address). A
// packet of a known flow is rewritten for its client; the SYN-ACK of a dial in
// progress goes to the recovery netstack; a real's service port with no flow
// is adopted (the real proves it holds the connection).

func (d *Director) fromReal(p *packet, now int64) (wire.Verdict, DropReason, []byte) {
	if p.frag {
		if d.servesProto[p.proto] {
			return wire.Drop, DropFragment, nil
		}
		return wire.Forward, DropNone, p.ip
	}
	if p.isICMP() {
		if v, r, ok := d.icmpErrorFromRealSide(p); ok {
			return v, r, p.ip
		}
		if d.rec.isLocal(p.dst.Addr()) {
			return wire.Drop, DropRecoveryNoFlow, nil
		}
		return wire.Forward, DropNone, p.ip
	}
	if p.proto != protoTCP && p.proto != protoUDP {
		return wire.Forward, DropNone, p.ip
	}
	if r := p.decodeL4(); r != DropNone {
		return wire.Drop, r, nil
	}
	key := Key{p.proto, p.src, p.dst}
	slot, side, found := d.flows.lookup(key)
	if found && side == sideReal {
		d.seenOffloaded(slot, p, now)
		f := &d.flows.slab[slot]
		if f.Expires > now {
			if p.proto != protoTCP {
				d.track(f, p, false, now)
				d.toClient(p, f)
				return wire.Forward, DropNone, p.ip
			}
			if f.tentative && d.tentativeAnswer(slot, f, p, now) {
				return wire.Consume, DropNone, nil
			}
			if f.win.flags&winHandshake != 0 && d.rec.enabled &&
				p.flags&(header.TCPFlagRst|header.TCPFlagAck) == header.TCPFlagRst {
				// A flow made by a SYN here whose client has not acked
				// the real's SYN-ACK, and the real rejects a client
				// segment on it with the reset a socket in SYN_RECV (or
				// none) gives a segment whose ack is not its SYN-ACK's:
				// the client's connection is another one on the tuple (the
				// SYN was forged or stale, and the client's segment
				// overtook the SYN-ACK). Swallowed; the client's
				// retransmission finds its connection's real through the
				// miss path.
				d.noteReplacedSyn(d.clientKey(f), now)
				d.removeFlow(slot, now)
				d.stats.SynFlowsReplaced++
				return wire.Consume, DropNone, nil
			}
			var sg seg
			v := f.checkWindow(p, false, &sg)
			if v == winStaleReset {
				// The real has no connection for the flow: it lives on
				// through another director. The reset is not the
				// client's (its connection is alive there); the client's
				// next segment finds no flow and is recovered.
				d.removeFlow(slot, now)
				d.stats.StaleFlows++
				return wire.Drop, DropStaleReset, nil
			}
			if v == winOK && f.State == StateSynRecv && p.flags&(header.TCPFlagSyn|header.TCPFlagAck) == header.TCPFlagSyn|header.TCPFlagAck {
				f.hs.seeSynAck(p)
			}
			d.trackSeg(f, p, &sg, false, v, now)
			d.toClient(p, f)
			return wire.Forward, DropNone, p.ip
		}
		d.expireFlow(slot, now)
	}
	if ck, ok := d.rec.probes[key]; ok {
		if v, handled := d.probeAnswer(ck, key, p, now); handled {
			return v, DropNone, nil
		}
	}
	if d.rec.isLocal(p.dst.Addr()) {
		// Only a handshake in progress may reach the netstack: one that
		// sees an unknown tuple answers RST and kills a live connection.
		if _, dialing := d.rec.dialing[key]; dialing {
			return wire.ToStack, DropNone, p.ip
		}
		return wire.Drop, DropRecoveryNoFlow, nil
	}
	svcs, ok := d.realSvcs[svcKey{p.proto, p.src}]
	if !ok {
		return wire.Forward, DropNone, p.ip // the real's other traffic
	}
	if !d.adopting() || (p.proto == protoTCP && p.flags&header.TCPFlagRst != 0) {
		// The patent's step 5: a real's service port talking to no flow.
		// A reset proves nothing.
		return wire.Drop, DropNoFlow, nil
	}
	if p.proto == protoTCP && p.flags&header.TCPFlagSyn != 0 && d.synAckSuspect(svcs, p, now) {
		return wire.Drop, DropNoFlow, nil
	}
	return d.adopt(svcs, p, now)
}

// synAckSuspect reports whether a real's SYN-ACK with no flow must not be
// adopted: one that is not a SYN-ACK, or one whose client tuple has a miss
// in progress. Behind ECMP the SYN-ACK of a SYN another director carried
// comes to this one with no flow at all, and is adopted as the start of
// the flow (and after a failover in the middle of a handshake, the same).
// A miss in progress means the client's tuple belongs to a connection
// being looked for: the SYN-ACK answers a SYN that was not that
// connection's (forged or stale, its flow replaced), and taken as the owner
// speaking it would send the connection to the wrong real.
func (d *Director) synAckSuspect(svcs []uint16, p *packet, now int64) bool {
	if p.flags&(header.TCPFlagSyn|header.TCPFlagAck) != header.TCPFlagSyn|header.TCPFlagAck {
		return true // a bare SYN from a real's service port
	}
	for _, s := range svcs {
		ck := Key{p.proto, p.dst, d.services[s].VIP}
		if d.rec.pending[ck] != nil {
			return true
		}
		if until, ok := d.replacedSyn[packKey(ck)]; ok && until > now {
			return true // the SYN this answers was found not the client's
		}
	}
	return false
}

// replacedSynTTL is how long a SYN flow found not to be the client's (its
// tuple's connection lives elsewhere) keeps its real's SYN-ACK from being
// adopted: Linux retransmits a SYN-ACK five times over about 63 s.
const replacedSynTTL = 64 * int64(time.Second)

// maxReplacedSyn bounds the replaced SYN tuples remembered: a flood of
// forged SYNs each replaced fills it at worst, and then a replaced SYN's
// SYN-ACK may be adopted again (pinning that tuple until the client's
// segments prove the flow stale), the behaviour without the record.
const maxReplacedSyn = 1 << 16

// noteReplacedSyn records the client tuple k of a SYN flow found not the
// client's.
func (d *Director) noteReplacedSyn(k fkey, now int64) {
	if d.replacedSyn == nil {
		d.replacedSyn = make(map[fkey]int64)
	}
	if len(d.replacedSyn) < maxReplacedSyn {
		d.replacedSyn[k] = now + replacedSynTTL
	}
}

// pruneReplacedSyn forgets the expired records (from Sweep, once a second:
// a full map is 65,536 entries to walk).
func (d *Director) pruneReplacedSyn(now int64) {
	if len(d.replacedSyn) == 0 || now < d.replacedPruned+int64(time.Second) {
		return
	}
	d.replacedPruned = now
	for k, until := range d.replacedSyn {
		if until <= now {
			delete(d.replacedSyn, k)
		}
	}
	if len(d.replacedSyn) == 0 {
		d.replacedSyn = nil // give the room back after a flood
	}
}

// seeSynAck completes the handshake record with the real's SYN-ACK. Window
// scaling, SACK and timestamps are in effect only if both sides offered them
// (RFC 7323, RFC 2018).
func (h *clientHandshake) seeSynAck(p *packet) {
	o := header.ParseSynOptions(header.TCP(p.l4).Options(), true)
	h.view = int8(o.WS)
	if h.ws < 0 || h.view < 0 {
		h.ws, h.view = 0, 0
	}
	h.sack = h.sack && o.SACKPermitted
	h.ts = h.ts && o.TS
	h.known = true
}

// toClient rewrites a real's packet for its flow's client.
func (d *Director) toClient(p *packet, f *flow) {
	if f.Kind == KindRecovered {
		f.toClient().apply(p)
		rewriteDst(p, f.Client.AddrPort())
	}
	r := d.services[f.svc].Reals[f.real]
	d.cookieToClient(p, f, r.CookieID)
	rewriteSrc(p, d.services[f.svc].VIP)
	r.PacketsOut++
	r.BytesOut += uint64(len(p.ip))
}

// adopt handles a packet from a real's service port with no flow. The real
// proves it holds the connection (it retransmits toward the client after a
// director died): create a plain flow, as the failed director had, unless
// the client's connection already lives elsewhere.
//
// A real may serve several VIPs, and its packet does not say which one the
// client talks to: a pending recovery for (client, VIP) tells (the original
// connection beats the new one); else the real's one live service does. With
// more than one and nothing to tell, the packet is dropped (adopt_ambiguous)
// rather than answered from a VIP the client may not have connected to (its
// TCP would RST it).
func (d *Director) adopt(svcs []uint16, p *packet, now int64) (wire.Verdict, DropReason, []byte) {
	si, live := -1, 0
	var pd *pending
	for _, s := range svcs {
		if d.services[s].gone {
			continue
		}
		live++
		if si < 0 {
			si = int(s)
		}
		ck := Key{p.proto, p.dst, d.services[s].VIP}
		if slot, side, found := d.flows.lookup(ck); found && side == sideClient && d.flows.slab[slot].tentative {
			// A real speaking on the tuple holds the connection; a
			// tentative cookie flow to another real read noise.
			d.removeFlow(slot, now)
			d.stats.CookieResets++
		} else if found && side == sideClient {
			if p.proto != protoTCP || d.flows.slab[slot].Kind != KindRecovered {
				// The client's flow is on another real with the
				// client's own numbers: this real's packet is a late
				// one of an older connection on the tuple, or the
				// client's flow was made by a forged SYN. Dropped, never
				// answered with a reset (that could end the client's
				// live connection on this real).
				return wire.Drop, DropNoFlow, nil
			}
			// Recovered elsewhere: end the orphan.
			d.stats.OldRealResets++
			return wire.Reset, DropNone, buildRST(p.ip[:0:len(p.ip)], p.dst, p.src, p.ack, 0, false)
		}
		if q := d.rec.pending[ck]; q != nil && pd == nil {
			pd, si = q, int(s)
		}
	}
	switch {
	case si < 0:
		return wire.Drop, DropNoFlow, nil // only services removed by a reload
	case pd == nil && live > 1:
		return wire.Drop, DropAdoptAmbiguous, nil
	case pd != nil && pd.from == p.src:
		// The real this flow is being re-homed from: dead or drained,
		// never adopted.
		return wire.Drop, DropRehomed, nil
	case pd != nil && (pd.phase == phaseProbe || pd.phase == phaseChallenge) && isPureACK(p) &&
		pd.probeOf(d.services[si].Reals, p.src) != nil && !pd.fitsOwner(p.seq, p.ack, header.TCP(p.l4).WindowSize()):
		// A second or late answer to an owner probe (a socket that
		// answered the probe and its retry), whose numbers fit no
		// parked segment: a TIME_WAIT or stale socket, not the
		// connection speaking.
		return wire.Drop, DropNoFlow, nil
	}
	if d.flows.n >= d.maxFlows {
		return wire.Drop, DropFlowLimit, nil
	}
	ri := d.realIndex(uint16(si), p.src)
	slot, ok := d.insertFlow(flow{
		Proto:  p.proto,
		Client: endpointOf(p.dst),
		Kind:   KindAdopted,
		svc:    uint16(si),
		real:   uint16(ri),
	})
	if !ok {
		return wire.Drop, DropTupleClash, nil
	}
	ck := Key{p.proto, p.dst, d.services[si].VIP}
	d.stats.Adopted++
	f := &d.flows.slab[slot]
	if p.flags&header.TCPFlagSyn != 0 {
		// A SYN-ACK: the client's SYN went through another director.
		// The flow starts where that SYN would have put it (IPVS's
		// SYN_RECV), so that the real's next segments make it
		// established; from NONE the real's SYN reads as the real's own
		// active open, and its flow would stay SYN_SENT (2 minutes idle,
		// an inactive flow) for all its life.
		d.setState(f, StateSynRecv)
	}
	d.track(f, p, false, now)
	d.toClient(p, f)
	switch {
	case pd != nil && pd.phase == phaseDial:
		// The original connection beats a new one: have the dial
		// cancelled. Its end finishes the recovery, whose parked
		// segments then go to the adopted flow.
		pd.superseded = true
		d.rec.Dialer.Cancel(ck)
		d.stats.AdoptAborts++
	case pd != nil:
		// A miss still looking (probes, challenge, a cookie steer): the
		// real found itself. Its parked segments go to it now.
		d.endMiss(ck, pd)
		d.stats.AdoptAborts++
		d.flushLocked(slot, pd, now)
	}
	return wire.Forward, DropNone, p.ip
}

// leaving reports whether f's real is down or was removed with its flows
// moving away (rehome).
func (d *Director) leaving(f *flow) bool {
	r := d.services[f.svc].Reals[f.real]
	return r.Down || r.Rehome
}
