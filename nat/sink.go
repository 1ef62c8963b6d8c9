package nat

import (
	"holdfast/internal/shrink"
	"holdfast/internal/wire"
)

// The ends of recovery dials, as the recovery engine reports them (the Sink of
// package recovery). Each method takes the Director's lock itself; the engine
// calls them from its one goroutine and writes the packets they return.

// flushChunk bounds the parked bytes rewritten under one hold of the lock: a
// recovery may have parked megabytes (ParkFlowBytes), and every pump waits for
// the lock meanwhile.
const flushChunk = 64 << 10

// Retry is told that the dial in progress for key failed for reason, and asks
// for the next one: it frees the failed dial's port and returns the options
// of a dial to a real not tried yet, from a newly reserved port. ok is false
// when no real is left or the flow was adopted meanwhile; the engine then
// ends the recovery with Failed.
func (d *Director) Retry(key Key, reason FailReason, now int64) (o wire.DialOptions, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	pd := d.rec.pending[key]
	if pd == nil {
		return wire.DialOptions{}, false
	}
	d.endDial(pd, false)
	if pd.superseded {
		return wire.DialOptions{}, false
	}
	if o, ok = d.nextDial(key, pd, now); ok {
		d.stats.RecoveryRetries[reason]++
	}
	return o, ok
}

// Recovered ends the recovery of key whose dial completed with handshake hs
// (its final ACK has left): it installs the recovered flow and returns the
// parked segments translated for it, to be written in order. If the flow was
// adopted meanwhile, it returns a RST for the new real's connection and the
// parked segments rewritten for the adopted flow instead.
func (d *Director) Recovered(key Key, hs wire.Handshake, now int64) [][]byte {
	d.mu.Lock()
	pd := d.takePending(key)
	if pd == nil {
		d.mu.Unlock()
		return nil
	}
	real, local := d.services[pd.svc].Reals[pd.real].Addr, pd.local.AddrPort()
	if _, _, clash := d.flows.lookup(key); pd.superseded || clash {
		d.endDial(pd, false)
		d.mu.Unlock()
		rst := buildRST(nil, local, real, hs.AckSeq, 0, false)
		return append([][]byte{rst}, d.flush(key, pd, now)...)
	}
	d.endDial(pd, true)
	f := flow{
		Proto:      protoTCP,
		Client:     endpointOf(key.Src),
		Local:      pd.local,
		State:      StateEstablished,
		Kind:       KindRecovered,
		SeqDelta:   pd.seq - hs.AckSeq,
		AckDelta:   pd.ack - hs.AckAck,
		TS:         hs.TS && pd.ts,
		TSvalDelta: pd.tsval - hs.AckTSval,
		TSecrDelta: pd.tsecr - hs.SynAckTSval,
		// Shifts the director never saw (the client's SYN, the old real's
		// SYN-ACK) are unknown (-1): no rescale then (see DESIGN.md). A
		// re-homed flow knows them: the rescale is exact.
		winToServer: shift{pd.hs.wsOr(-1), int8(hs.OurWScale)},
		winToClient: shift{int8(hs.PeerWScale), pd.hs.viewOr(-1)},
		hs:          pd.hs,
		hiSrv:       pd.ack,
		hiSrvSeen:   true,
		marked:      true,
		svc:         pd.svc,
		real:        pd.real,
		unconfirmed: true,
		// Alive from the start: the parked segments are flushed in chunks,
		// the lock released between them, and a client segment arriving
		// meanwhile must find a live flow, not one expired at 0.
		Expires: now + min(d.timeouts[StateEstablished], int64(d.rec.UnconfirmedTimeout)),
	}
	if pd.hs.known && (hs.OurWScale < 0 || hs.PeerWScale < 0) {
		// Scaling is off on the new connection: both shifts are 0.
		f.winToServer.out, f.winToClient.in = 0, 0
	}
	if _, ok := d.insertFlow(f); !ok {
		// The recovered flow's real-side key (real, recovery address:port)
		// is taken: it cannot be installed without overwriting another
		// flow's entry. The recovery fails; the new real's connection is
		// reset, and the parked segments go nowhere (the client
		// retransmits them).
		d.rec.ports.release(pd.local, endpointOf(real))
		d.stats.RecoveryFailed[FailError]++
		d.mu.Unlock()
		return [][]byte{buildRST(nil, local, real, hs.AckSeq, 0, false)}
	}
	d.rec.prefixAdd(key.Src.Addr(), prefixUse{flows: 1})
	d.stats.RecoverySucceeded++
	if pd.from.IsValid() {
		d.stats.Rehomed++
	}
	d.stats.RecoveryLatencyNs += uint64(now - pd.started)
	d.stats.RecoveryLatency[latencyBucket(now-pd.started)]++
	d.mu.Unlock()
	return d.flush(key, pd, now)
}

// Failed ends the recovery of key whose last dial failed for reason, or that
// the engine gave up (attempts spent, Retry found no real, shutdown). The
// client gets a RST it accepts (seq = its RCV.NXT, the ack it sent), except
// after FailShutdown: the director is going away, and the client's next
// retransmission reaches the one that takes over, which can recover it. If
// the flow was adopted meanwhile, the parked segments go to it instead.
func (d *Director) Failed(key Key, reason FailReason, now int64) [][]byte {
	d.mu.Lock()
	pd := d.takePending(key)
	if pd == nil {
		d.mu.Unlock()
		return nil
	}
	d.endDial(pd, false)
	if _, _, found := d.flows.lookup(key); pd.superseded || found {
		d.mu.Unlock()
		return d.flush(key, pd, now)
	}
	d.stats.RecoveryFailed[reason]++
	if reason == FailShutdown {
		d.mu.Unlock()
		return nil
	}
	d.stats.ClientResets++
	d.mu.Unlock()
	return [][]byte{buildRST(nil, key.Dst, key.Src, pd.lastAck, pd.lastEnd, true)}
}

// takePending removes the recovery of key from the Director; d.mu is held.
// Its parked segments stop counting against the parking limits (they are on
// their way out), and it gives back its prefix's in-flight slot and parked
// bytes.
func (d *Director) takePending(key Key) *pending {
	pd := d.rec.pending[key]
	if pd != nil {
		d.rec.pending = shrink.Delete(d.rec.pending, key)
		d.rec.parkedBytes -= pd.bytes
		d.rec.prefixAdd(key.Src.Addr(), prefixUse{inflight: -1, parked: -int32(pd.bytes)})
	}
	return pd
}

// flush rewrites pd's parked segments, in order, for the flow of key and
// returns them. It is called without d.mu: pd is no longer reachable from the
// Director, so only the caller touches it, and the lock is taken once per
// chunk so that a large parked queue does not stall the pumps. A client
// segment handled between two chunks is forwarded ahead of the parked ones
// still to go: the real's TCP reorders it, as it does whenever the pumps'
// writes and the engine's (which no lock orders) cross.
func (d *Director) flush(key Key, pd *pending, now int64) [][]byte {
	out := pd.parked[:0] // rewritten in place: out[k] is a prefix of parked[i], i >= k
	for i, more := 0, true; more && i < len(pd.parked); {
		out, i, more = d.flushChunk(key, pd, out, i, now)
	}
	return out
}

// flushChunk rewrites pd's parked segments from i on, under one hold of d.mu,
// as many as fit in flushChunk bytes (at least one, which always fits: an
// IPv4 packet is smaller), appends them to out and returns where it stopped. more is false
// if the flow of key is gone (as the table holds it at each chunk): the rest
// is dropped, as for a flow that went away after the flush.
func (d *Director) flushChunk(key Key, pd *pending, out [][]byte, i int, now int64) (_ [][]byte, next int, more bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	slot, side, found := d.flows.lookup(key)
	if !found || side != sideClient {
		return out, i, false
	}
	f := &d.flows.slab[slot]
	for n := 0; i < len(pd.parked) && (n == 0 || n+len(pd.parked[i]) <= flushChunk); i++ {
		b := pd.parked[i]
		n += len(b)
		var p packet
		if p.decodeIP(b) != DropNone || p.decodeL4() != DropNone {
			continue
		}
		d.track(f, &p, true, now)
		d.toReal(&p, f)
		out = append(out, p.ip)
	}
	return out, i, true
}
