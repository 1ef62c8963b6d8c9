package nat

import (
	"errors"
	"fmt"
	"holdfast/internal/wire"
	"net/netip"

	"holdfast/internal/shrink"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Recoverer performs recovery handshakes for the Director (package recovery
// implements it). The Director calls it with its lock held: no method may
// block or call back into the Director.
type Recoverer interface {
	// Start begins recovering the flow of req.Key onto req.Real. The
	// recoverer reports back through Dialing, NextReal, DialFailed,
	// Recovered and RecoveryFailed.
	Start(req RecoveryRequest)
	// Abort asks a recovery in flight to give up: the original real spoke
	// and the flow was adopted.
	Abort(key Key)
	// Release frees the recovery port of a recovered flow that ended.
	Release(local, real netip.AddrPort)
}

// RecoveryRequest starts one recovery.
type RecoveryRequest struct {
	Key        Key            // the client's key: (tcp, client, VIP)
	Real       netip.AddrPort // first real to try
	Timestamps bool           // the client uses TCP timestamps
	WScale     int            // window scale to advertise; -1: the configured default
	MSS        int            // MSS to advertise at most; 0: the configured default
	SACK       bool           // offer SACK (the client negotiated it, or is not known not to)
}

// Handshake is what a recovery dial captured (raw wire values).
type Handshake struct {
	AckSeq, AckAck uint32 // the director's final ACK
	AckTSval       uint32
	SynAckTSval    uint32
	TS             bool // timestamps negotiated with the real
	OurWScale      int  // shift advertised in the SYN (-1 none)
	PeerWScale     int  // the real's shift (-1 none)
}

// RecoveryConfig controls recovery.
type RecoveryConfig struct {
	Enabled       bool
	Recoverer     Recoverer
	Addrs         []netip.Addr   // recovery addresses (never a VIP or a real)
	Rate          float64        // recoveries started per second
	MaxInflight   int            // recoveries in flight at once
	Allow         []netip.Prefix // clients that may trigger recovery; empty = any
	ParkBytes     int            // bytes parked at once, all flows
	ParkFlowBytes int            // bytes parked at once, one flow
}

// pending is one recovery in flight.
type pending struct {
	svc        uint16
	parked     [][]byte // copies, in arrival order
	bytes      int
	started    int64
	seq, ack   uint32 // of the trigger segment: the deltas map these
	ts         bool
	tsval      uint32
	tsecr      uint32
	lastAck    uint32 // highest ack parked: the client's RCV.NXT for a RST
	lastEnd    uint32 // end of the last parked segment
	tried      []netip.AddrPort
	superseded bool // the flow was adopted meanwhile
	// A re-home: the client's handshake as the director saw it, and the
	// real left behind (whose packets for this tuple are never adopted).
	hs   clientHandshake
	from netip.AddrPort
}

type recovery struct {
	RecoveryConfig
	enabled     bool
	r           Recoverer
	local       map[netip.Addr]struct{}
	pending     map[Key]*pending
	dialing     map[Key]Key // real-side tuple of a dial -> client key
	parkedBytes int
	tokens      float64
	last        int64
}

func (rc *recovery) init(c RecoveryConfig, vips, reals map[netip.Addr]struct{}) error {
	rc.RecoveryConfig = c
	rc.local = make(map[netip.Addr]struct{})
	rc.pending = make(map[Key]*pending)
	rc.dialing = make(map[Key]Key)
	for _, a := range c.Addrs {
		if !a.Is4() {
			return fmt.Errorf("recovery address %s: only IPv4 is served", a)
		}
		if _, clash := vips[a]; clash {
			return fmt.Errorf("recovery address %s is also a VIP", a)
		}
		if _, clash := reals[a]; clash {
			return fmt.Errorf("recovery address %s is also a real server", a)
		}
		rc.local[a] = struct{}{}
	}
	if !c.Enabled {
		return nil
	}
	switch {
	case c.Recoverer == nil:
		return errors.New("recovery enabled without a recoverer")
	case len(c.Addrs) == 0:
		return errors.New("recovery enabled without a recovery address")
	case c.Rate <= 0 || c.MaxInflight <= 0 || c.ParkBytes <= 0 || c.ParkFlowBytes <= 0:
		return fmt.Errorf("recovery limits must be positive: %+v", c)
	}
	rc.enabled, rc.r = true, c.Recoverer
	rc.tokens = rc.burst()
	return nil
}

func (rc *recovery) isLocal(a netip.Addr) bool {
	_, ok := rc.local[a]
	return ok
}

// burst is the token bucket's depth: one second's worth, at least 1.
func (rc *recovery) burst() float64 { return max(rc.Rate, 1) }

// allow takes a token from the recovery rate limiter.
func (rc *recovery) allow(now int64) bool {
	if now > rc.last {
		rc.tokens = min(rc.burst(), rc.tokens+float64(now-rc.last)*rc.Rate/1e9)
		rc.last = now
	}
	if rc.tokens < 1 {
		return false
	}
	rc.tokens--
	return true
}

func (rc *recovery) allowed(a netip.Addr) bool {
	if len(rc.Allow) == 0 {
		return true
	}
	for _, p := range rc.Allow {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

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

// startRecovery parks p and starts recovering its connection onto a real of
// service si. hs is what is known of the client's handshake; from is the real
// being left behind by a re-home (invalid otherwise).
func (d *Director) startRecovery(si uint16, p *packet, now int64, hs clientHandshake, from netip.AddrPort) (wire.Verdict, DropReason, []byte) {
	key := Key{p.proto, p.src, p.dst}
	s := &d.services[si]
	var exclude []netip.AddrPort
	if from.IsValid() {
		exclude = append(exclude, from)
	}
	ri := d.pickReal(s, p.src, p.dst, now, exclude)
	if ri < 0 {
		return wire.Drop, DropNoReal, nil
	}
	_, ts, tsval, tsecr := tcpOptions(header.TCP(p.l4))
	pd := &pending{
		svc: si, started: now,
		seq: p.seq, ack: p.ack, ts: ts, tsval: tsval, tsecr: tsecr,
		tried: append(exclude, s.Reals[ri].Addr),
		hs:    hs, from: from,
	}
	if v, r, _ := d.park(pd, p); v != wire.Park {
		return v, r, nil
	}
	d.rec.pending[key] = pd
	d.stats.RecoveryStarted++
	req := RecoveryRequest{Key: key, Real: s.Reals[ri].Addr, Timestamps: ts, WScale: -1, SACK: true}
	if hs.known {
		req.WScale, req.MSS, req.SACK = int(hs.ws), int(hs.mss), hs.sack
	}
	d.rec.r.Start(req)
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

// adopt handles a packet from a real's service port with no flow. The real
// proves it holds the connection (it retransmits toward the client after a
// director died): create a plain flow, as the failed director had, unless
// the client's connection already lives elsewhere.
func (d *Director) adopt(svcs []uint16, p *packet, now int64) (wire.Verdict, DropReason, []byte) {
	si := -1
	for _, s := range svcs {
		if d.services[s].gone {
			continue
		}
		if si < 0 {
			si = int(s)
		}
		ck := Key{p.proto, p.dst, d.services[s].VIP}
		if _, side, found := d.flows.lookup(ck); found && side == sideClient {
			if p.proto != protoTCP {
				return wire.Drop, DropNoFlow, nil
			}
			// Recovered (or adopted) elsewhere: end the orphan.
			d.stats.OldRealResets++
			return wire.Reset, DropNone, buildRST(p.ip[:0:len(p.ip)], p.dst, p.src, p.ack, 0, false)
		}
		if pd := d.rec.pending[ck]; pd != nil && pd.from == p.src {
			// The real this flow is being re-homed from: dead or drained,
			// never adopted.
			return wire.Drop, DropRehomed, nil
		}
		if pd := d.rec.pending[ck]; pd != nil {
			// The original connection beats a new one: adopt and let
			// the dial go.
			pd.superseded = true
			d.rec.r.Abort(ck)
			d.stats.AdoptAborts++
			si = int(s)
			break
		}
	}
	if si < 0 {
		return wire.Drop, DropNoFlow, nil // only services removed by a reload
	}
	if d.flows.n >= d.maxFlows {
		return wire.Drop, DropFlowLimit, nil
	}
	ri := d.realIndex(uint16(si), p.src)
	slot := d.insertFlow(flow{
		Proto:  p.proto,
		Client: endpointOf(p.dst),
		VIP:    endpointOf(d.services[si].VIP),
		Real:   endpointOf(p.src),
		Kind:   KindAdopted,
		svc:    uint16(si),
		real:   uint16(ri),
	})
	d.stats.Adopted++
	f := &d.flows.slab[slot]
	d.track(f, p, false, now)
	d.toClient(p, f)
	return wire.Forward, DropNone, p.ip
}

// Dialing registers the real-side tuple of a dial about to start, so the
// real's answers reach the netstack. It returns false if the recovery should
// stop (adopted meanwhile, or unknown).
func (d *Director) Dialing(key Key, real, local netip.AddrPort) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	pd := d.rec.pending[key]
	if pd == nil || pd.superseded {
		return false
	}
	d.rec.dialing[Key{protoTCP, real, local}] = key
	return true
}

// DialFailed unregisters the tuple of a dial that did not complete.
func (d *Director) DialFailed(key Key, real, local netip.AddrPort) {
	d.mu.Lock()
	d.rec.dialing = shrink.Delete(d.rec.dialing, Key{protoTCP, real, local})
	d.mu.Unlock()
}

// NextReal picks another real for a recovery whose dial failed, avoiding the
// ones tried. ok is false when none is left or the recovery was superseded.
func (d *Director) NextReal(key Key, now int64) (netip.AddrPort, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	pd := d.rec.pending[key]
	if pd == nil || pd.superseded {
		return netip.AddrPort{}, false
	}
	s := &d.services[pd.svc]
	ri := d.pickReal(s, key.Src, key.Dst, now, pd.tried)
	if ri < 0 {
		return netip.AddrPort{}, false
	}
	pd.tried = append(pd.tried, s.Reals[ri].Addr)
	return s.Reals[ri].Addr, true
}

// Recovered installs the recovered flow once the handshake's final ACK has
// left, and returns the parked segments translated for it, to be written in
// order. If the flow was adopted meanwhile, installed is false and out holds
// a RST for the new real's connection and the parked segments for the
// adopted flow.
func (d *Director) Recovered(key Key, real, local netip.AddrPort, hs Handshake, now int64) (out [][]byte, installed bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	rk := Key{protoTCP, real, local}
	d.rec.dialing = shrink.Delete(d.rec.dialing, rk)
	pd := d.takePending(key)
	_, _, clash := d.flows.lookup(key)
	if pd == nil || pd.superseded || clash {
		out = append(out, buildRST(nil, local, real, hs.AckSeq, 0, false))
		if pd != nil {
			out = append(out, d.flushTo(key, pd, now)...)
		}
		return out, false
	}
	ri := d.realIndex(pd.svc, real)
	f := flow{
		Proto:      protoTCP,
		Client:     endpointOf(key.Src),
		VIP:        endpointOf(key.Dst),
		Real:       endpointOf(real),
		Local:      endpointOf(local),
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
		real:        uint16(ri),
	}
	if pd.hs.known && (hs.OurWScale < 0 || hs.PeerWScale < 0) {
		// Scaling is off on the new connection: both shifts are 0.
		f.winToServer.out, f.winToClient.in = 0, 0
	}
	d.insertFlow(f)
	d.stats.RecoverySucceeded++
	if pd.from.IsValid() {
		d.stats.Rehomed++
	}
	d.stats.RecoveryLatencyNs += uint64(now - pd.started)
	d.stats.RecoveryLatency[latencyBucket(now-pd.started)]++
	return d.flushTo(key, pd, now), true
}

// RecoveryFailed ends a recovery that found no real: the client gets a RST it
// accepts (seq = its RCV.NXT, the ack it sent). If the flow was adopted
// meanwhile, the parked segments go to it instead.
func (d *Director) RecoveryFailed(key Key, reason FailReason, now int64) [][]byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	pd := d.takePending(key)
	if pd == nil {
		return nil
	}
	if _, _, found := d.flows.lookup(key); pd.superseded || found {
		return d.flushTo(key, pd, now)
	}
	d.stats.RecoveryFailed[reason]++
	d.stats.ClientResets++
	return [][]byte{buildRST(nil, key.Dst, key.Src, pd.lastAck, pd.lastEnd, true)}
}

func (d *Director) takePending(key Key) *pending {
	pd := d.rec.pending[key]
	if pd != nil {
		d.rec.pending = shrink.Delete(d.rec.pending, key)
		d.rec.parkedBytes -= pd.bytes
	}
	return pd
}

// flushTo rewrites parked segments for the flow of key, in order.
func (d *Director) flushTo(key Key, pd *pending, now int64) [][]byte {
	slot, side, found := d.flows.lookup(key)
	if !found || side != sideClient {
		return nil
	}
	f := &d.flows.slab[slot]
	out := pd.parked[:0]
	for _, b := range pd.parked {
		var p packet
		if p.decodeIP(b) != DropNone || p.decodeL4() != DropNone {
			continue
		}
		d.track(f, &p, true, now)
		d.toReal(&p, f)
		out = append(out, p.ip)
	}
	return out
}

// buildRST writes a 40-byte TCP RST from src to dst into buf (reusing its
// storage when it is large enough) and returns it. With withAck the RST
// carries ACK = ack.
func buildRST(buf []byte, src, dst netip.AddrPort, seq, ack uint32, withAck bool) []byte {
	const n = header.IPv4MinimumSize + header.TCPMinimumSize
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	b := buf[:n]
	clear(b)
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: n, TTL: 64, Protocol: protoTCP,
		SrcAddr: tcpipAddr(src.Addr()), DstAddr: tcpipAddr(dst.Addr()),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	flags := header.TCPFlagRst
	if !withAck {
		ack = 0
	} else {
		flags |= header.TCPFlagAck
	}
	t := header.TCP(b[header.IPv4MinimumSize:])
	t.Encode(&header.TCPFields{
		SrcPort: src.Port(), DstPort: dst.Port(), SeqNum: seq, AckNum: ack,
		DataOffset: header.TCPMinimumSize, Flags: flags,
	})
	t.SetChecksum(^t.CalculateChecksum(pseudoHeaderSum(ip, protoTCP, header.TCPMinimumSize)))
	return b
}
