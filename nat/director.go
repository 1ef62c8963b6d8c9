package nat

import (
	"errors"
	"fmt"
	"holdfast/internal/wire"
	"net/netip"
	"sync"
	"time"

	"holdfast/balancer"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Config is what a Director serves.
type Config struct {
	Services []*balancer.Service
	Timeouts Timeouts
	MaxFlows int
	Recovery RecoveryConfig
}

// Stats is a snapshot of the Director's counters.
type Stats struct {
	Verdicts     [wire.NumVerdicts]uint64
	Drops        [numDropReasons]uint64
	Flows        int    // flows in the table now
	FlowsCreated uint64 // flows ever created (every kind)
	FlowsExpired uint64 // flows removed by idle timeout
	FlowsReused  uint64 // flows replaced by a SYN on a TIME_WAIT or CLOSE flow
	EchoReplies  uint64 // ICMP echo requests to a VIP answered
	ICMPErrors   uint64 // ICMP errors about a flow, translated

	RecoveryStarted   uint64
	RecoverySucceeded uint64
	RecoveryFailed    [numFailReasons]uint64
	RecoveryLatencyNs uint64 // sum over successes, first parked segment to flush
	ClientResets      uint64 // RSTs sent to clients whose recovery failed
	Adopted           uint64 // flows created from a real's packet
	AdoptAborts       uint64 // recovery dials abandoned because the original real spoke
	OldRealResets     uint64 // RSTs sent to a real whose connection was recovered elsewhere
	StaleFlows        uint64 // flows found stale (the client acked bytes this director never carried)
	RehomeStarted     uint64 // flows of a down or drained real sent through recovery
	Rehomed           uint64 // of those, recovered onto another real
	Parked            uint64 // packets parked
	ParkedBytes       int    // bytes parked now
	Inflight          int    // recoveries in flight now

	// FlowsBy counts live flows by kind and state.
	FlowsBy [numKinds][numStates]int
	// RecoveryLatency counts successful recoveries by latency (first
	// parked segment to flush), bucket i holding those at most
	// LatencyBuckets[i]; the last bucket holds the rest.
	RecoveryLatency [len(LatencyBuckets) + 1]uint64
}

// LatencyBuckets are the upper bounds of the recovery latency histogram.
var LatencyBuckets = [...]time.Duration{
	500 * time.Microsecond, time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond,
	250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2500 * time.Millisecond, 5 * time.Second,
}

func latencyBucket(ns int64) int {
	for i, b := range LatencyBuckets {
		if ns <= int64(b) {
			return i
		}
	}
	return len(LatencyBuckets)
}

// Drop returns the counter of one drop reason.
func (s Stats) Drop(r DropReason) uint64 { return s.Drops[r] }

type svcKey struct {
	proto uint8
	vip   netip.AddrPort
}

type affinity struct {
	real    int
	flows   int
	expires int64
}

type service struct {
	*balancer.Service
	persist map[netip.Addr]affinity
	traffic []realTraffic // parallel to Reals
	removed []bool        // parallel to Reals: removed at runtime, kept while flows remain
	rehome  []bool        // parallel to Reals: drained with --rehome, flows move away
	gone    bool          // removed by a reload: no new flows, old ones finish
}

// realTraffic counts what crossed the director for one real.
type realTraffic struct {
	PacketsIn, BytesIn   uint64 // client -> real
	PacketsOut, BytesOut uint64 // real -> client
}

// Director is the NAT of one director: services, flow table, recoveries in
// flight and counters.
//
// Concurrency: every exported method locks mu. The packet loop calls
// HandleBatch from one goroutine, one lock per batch; the recovery engine calls the recovery
// methods from its dial goroutines. Calls out to the Recoverer happen with
// mu held, so a Recoverer must never call back into the Director from
// Start, Abort or Release.
type Director struct {
	mu        sync.Mutex
	services  []service
	bySvc     map[svcKey]uint16
	vips      map[netip.Addr]struct{}
	realAddrs map[netip.Addr]struct{}
	realSvcs  map[svcKey][]uint16 // (proto, real addr:port) -> services it serves
	// servesProto marks the protocols of the services: a fragment from a real
	// in such a protocol may belong to a flow (it carries no ports to tell).
	servesProto [256]bool
	timeouts    Timeouts
	maxFlows    int
	flows       table
	rec         recovery
	stats       Stats
}

// New builds a Director. It validates that services do not overlap.
func New(cfg Config) (*Director, error) {
	if len(cfg.Services) == 0 {
		return nil, errors.New("no service configured")
	}
	if cfg.MaxFlows <= 0 {
		return nil, fmt.Errorf("max flows %d: expected a positive number", cfg.MaxFlows)
	}
	d := &Director{
		bySvc:     make(map[svcKey]uint16),
		vips:      make(map[netip.Addr]struct{}),
		realAddrs: make(map[netip.Addr]struct{}),
		realSvcs:  make(map[svcKey][]uint16),
		timeouts:  cfg.Timeouts,
		maxFlows:  cfg.MaxFlows,
		flows:     newTable(),
	}
	for _, s := range cfg.Services {
		if !s.VIP.Addr().Is4() {
			return nil, fmt.Errorf("service %s: only IPv4 VIPs are served", s)
		}
		k := svcKey{uint8(s.Proto), s.VIP}
		if _, dup := d.bySvc[k]; dup {
			return nil, fmt.Errorf("service %s configured twice", s)
		}
		si := uint16(len(d.services))
		d.bySvc[k] = si
		d.services = append(d.services, newService(s))
		d.vips[s.VIP.Addr()] = struct{}{}
		d.servesProto[s.Proto] = true
		for _, r := range s.Reals {
			if !r.Addr.Addr().Is4() {
				return nil, fmt.Errorf("real %s: only IPv4 reals are served", r.Addr)
			}
			d.realAddrs[r.Addr.Addr()] = struct{}{}
			rk := svcKey{uint8(s.Proto), r.Addr}
			d.realSvcs[rk] = append(d.realSvcs[rk], si)
		}
	}
	if err := d.rec.init(cfg.Recovery, d.vips, d.realAddrs); err != nil {
		return nil, err
	}
	return d, nil
}

// Handle decides one packet read from the device, rewriting it in place, and
// returns the verdict and the bytes to write back (a sub-slice of pkt: the
// rewritten packet for Forward, the RST built in its place for Reset).
// partial says the TCP or UDP checksum holds only the pseudo-header sum
// (a virtio-net header flagged NEEDS_CSUM): it is then not verified, and
// kept partial through the rewrite. pkt is lent: Handle keeps no reference
// to it (a parked packet is copied).
func (d *Director) Handle(pkt []byte, partial bool, now int64) (wire.Verdict, []byte) {
	d.mu.Lock()
	v, out := d.handleCounted(pkt, partial, now)
	d.mu.Unlock()
	return v, out
}

// HandleBatch is Handle for a batch read from the device, under one lock:
// verdicts[i] and outs[i] answer pkts[i] (partial[i] as in Handle).
func (d *Director) HandleBatch(pkts [][]byte, partial []bool, now int64, verdicts []wire.Verdict, outs [][]byte) {
	d.mu.Lock()
	for i, pkt := range pkts {
		verdicts[i], outs[i] = d.handleCounted(pkt, partial[i], now)
	}
	d.mu.Unlock()
}

// handleCounted is handle plus the verdict and drop counters; d.mu is held.
// The counters are plain fields under the lock the flow table needs anyway,
// read (folded) only when Stats is called.
func (d *Director) handleCounted(pkt []byte, partial bool, now int64) (wire.Verdict, []byte) {
	v, reason, out := d.handle(pkt, partial, now)
	d.stats.Verdicts[v]++
	switch v {
	case wire.Drop:
		d.stats.Drops[reason]++
		out = nil
	case wire.Park, wire.ToStack:
		out = nil
	}
	return v, out
}

// HandlePacket is Handle for a packet with complete checksums, in the
// shape tests use: the bytes to write (nil for none) and whether the packet
// goes to the recovery netstack.
func (d *Director) HandlePacket(pkt []byte, now int64) (out []byte, toStack bool) {
	v, out := d.Handle(pkt, false, now)
	return out, v == wire.ToStack
}

func (d *Director) handle(b []byte, partial bool, now int64) (wire.Verdict, DropReason, []byte) {
	var p packet
	if r := p.decodeIP(b); r != DropNone {
		return wire.Drop, r, nil
	}
	p.partial = partial
	if _, ok := d.vips[p.dst.Addr()]; ok {
		return d.fromClient(&p, now)
	}
	if _, ok := d.realAddrs[p.src.Addr()]; ok {
		return d.fromReal(&p, now)
	}
	if p.proto == protoICMP && !p.frag {
		// An error from a router between the director and the reals, about
		// a packet toward a real.
		if v, r, ok := d.icmpErrorFromRealSide(&p); ok {
			return v, r, p.ip
		}
	}
	if d.rec.isLocal(p.dst.Addr()) {
		return wire.Drop, DropRecoveryNoFlow, nil
	}
	// Neither ours nor about us: the director also routes the reals' other
	// traffic. Write it back unchanged.
	return wire.Forward, DropNone, b
}

func (d *Director) fromClient(p *packet, now int64) (wire.Verdict, DropReason, []byte) {
	if p.frag {
		return wire.Drop, DropFragment, nil
	}
	if r := p.decodeL4(); r != DropNone {
		return wire.Drop, r, nil
	}
	if p.proto == protoICMP {
		return d.icmpToVIP(p)
	}
	si, ok := d.bySvc[svcKey{p.proto, p.dst}]
	if !ok {
		return wire.Drop, DropNoService, nil
	}
	key := Key{p.proto, p.src, p.dst}
	slot, side, found := d.flows.lookup(key)
	if found && side != sideClient {
		found = false // a VIP is never a client
	}
	if found {
		f := &d.flows.slab[slot]
		isSyn := p.proto == protoTCP && p.flags&(header.TCPFlagSyn|header.TCPFlagAck) == header.TCPFlagSyn
		switch {
		case f.Expires <= now:
			d.removeFlow(slot, now)
			d.stats.FlowsExpired++
			found = false
		case isSyn && (f.State == StateTimeWait || f.State == StateClose):
			// A new connection reusing the tuple of a finished one is a
			// new flow, scheduled again (IPVS conn_reuse_mode).
			d.removeFlow(slot, now)
			d.stats.FlowsReused++
			found = false
		case p.proto == protoUDP && d.leaving(f):
			// A UDP flow has no connection to keep: its next datagram
			// goes to a healthy real (IPVS expire_nodest_conn).
			d.removeFlow(slot, now)
			found = false
		case p.proto == protoTCP && p.flags&header.TCPFlagAck != 0 && f.marked && seqAfter(p.ack, f.hiSrv):
			// The client acknowledges server bytes this director never
			// carried: the connection moved on through another director
			// (failback without sync). The flow is stale.
			d.removeFlow(slot, now)
			d.stats.StaleFlows++
			found = false
		}
	}
	if found && p.proto == protoTCP && d.rec.enabled && p.data > 1 {
		f := &d.flows.slab[slot]
		// A flow on a dead or drained real moves at its first request
		// after all of the real's data was acknowledged: before that, a
		// response is in flight and cannot be resumed elsewhere.
		if d.leaving(f) && f.marked && !seqAfter(f.hiSrv, p.ack) {
			return d.rehome(slot, f.svc, p, now)
		}
	}
	if !found {
		if p.proto == protoTCP {
			if p.flags&header.TCPFlagRst != 0 {
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
		}
	}
	f := &d.flows.slab[slot]
	d.track(f, p, true, now)
	d.toReal(p, f)
	return wire.Forward, DropNone, p.ip
}

// toReal rewrites a client's packet for its flow's real.
func (d *Director) toReal(p *packet, f *flow) {
	if p.proto == protoTCP && p.flags&header.TCPFlagAck != 0 {
		// What the client holds counts as carried: its ACK at the mark, and
		// its SACK blocks (segments of a dead director can arrive out of
		// order after the flow was adopted, and fill a hole later).
		if !f.marked {
			if !f.hiSrvSeen || seqAfter(p.ack, f.hiSrv) {
				f.hiSrv = p.ack
			}
			f.hiSrvSeen, f.marked = true, true
		}
		if edge, ok := sackRightEdge(header.TCP(p.l4)); ok && seqAfter(edge, f.hiSrv) {
			f.hiSrv = edge
		}
	}
	if f.Kind == KindRecovered {
		f.toServer().apply(p)
		rewriteSrc(p, f.Local.AddrPort())
	}
	rewriteDst(p, f.Real.AddrPort())
	t := &d.services[f.svc].traffic[f.real]
	t.PacketsIn++
	t.BytesIn += uint64(len(p.ip))
}

func (d *Director) fromReal(p *packet, now int64) (wire.Verdict, DropReason, []byte) {
	if p.frag {
		if d.servesProto[p.proto] {
			return wire.Drop, DropFragment, nil
		}
		return wire.Forward, DropNone, p.ip
	}
	if p.proto == protoICMP {
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
		f := &d.flows.slab[slot]
		if f.Expires > now {
			if p.proto == protoTCP && f.State == StateSynRecv && p.flags&(header.TCPFlagSyn|header.TCPFlagAck) == header.TCPFlagSyn|header.TCPFlagAck {
				f.hs.seeSynAck(p)
			}
			d.track(f, p, false, now)
			d.toClient(p, f)
			return wire.Forward, DropNone, p.ip
		}
		d.removeFlow(slot, now)
		d.stats.FlowsExpired++
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
	if !d.rec.enabled || (p.proto == protoTCP && p.flags&header.TCPFlagRst != 0) {
		// The patent's step 5: a real's service port talking to no flow.
		return wire.Drop, DropNoFlow, nil
	}
	return d.adopt(svcs, p, now)
}

// leaving reports whether f's real is down or being drained with --rehome.
func (d *Director) leaving(f *flow) bool {
	s := &d.services[f.svc]
	return s.Reals[f.real].Down || s.rehome[f.real]
}

// synOptions records the client's SYN options.
func synOptions(p *packet) clientHandshake {
	o := header.ParseSynOptions(header.TCP(p.l4).Options(), false)
	return clientHandshake{ws: int8(o.WS), view: -1, mss: o.MSS, sack: o.SACKPermitted, ts: o.TS}
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
	rewriteSrc(p, f.VIP.AddrPort())
	if p.proto == protoTCP {
		if e := segEnd(p); !f.hiSrvSeen || seqAfter(e, f.hiSrv) {
			f.hiSrv, f.hiSrvSeen = e, true
		}
	}
	t := &d.services[f.svc].traffic[f.real]
	t.PacketsOut++
	t.BytesOut += uint64(len(p.ip))
}

// pickReal chooses a real of service s for a new flow from client: the
// persistence template if it holds, else the scheduler. Reals in exclude are
// avoided. It returns -1 if none can take the flow.
func (d *Director) pickReal(s *service, client, dst netip.AddrPort, now int64, exclude []netip.AddrPort) int {
	if s.Persistence > 0 {
		a, ok := s.persist[client.Addr()]
		if ok && (a.flows > 0 || a.expires > now) && a.real < len(s.Reals) && s.Reals[a.real].Available() && !contains(exclude, s.Reals[a.real].Addr) {
			return a.real
		}
	}
	// A scheduler cannot be told to avoid a real: ask again (rr and wrr
	// move on), then fall back to the first acceptable one (sh, dh).
	for range len(s.Reals) {
		ri := s.Scheduler.Pick(s.Reals, client, dst)
		if ri < 0 || !contains(exclude, s.Reals[ri].Addr) {
			return ri
		}
	}
	for ri, r := range s.Reals {
		if r.Available() && !contains(exclude, r.Addr) {
			return ri
		}
	}
	return -1
}

func contains(list []netip.AddrPort, a netip.AddrPort) bool {
	for _, x := range list {
		if x == a {
			return true
		}
	}
	return false
}

// newFlow schedules a real for the packet's client and inserts a plain flow.
func (d *Director) newFlow(si uint16, p *packet, now int64) (uint32, DropReason) {
	if d.flows.n >= d.maxFlows {
		return 0, DropFlowLimit
	}
	s := &d.services[si]
	ri := d.pickReal(s, p.src, p.dst, now, nil)
	if ri < 0 {
		return 0, DropNoReal
	}
	real := s.Reals[ri].Addr
	if _, _, clash := d.flows.lookup(Key{p.proto, real, p.src}); clash {
		return 0, DropTupleClash
	}
	slot := d.insertFlow(flow{
		Proto:  p.proto,
		Client: endpointOf(p.src),
		VIP:    endpointOf(p.dst),
		Real:   endpointOf(real),
		Kind:   KindPlain,
		svc:    si,
		real:   uint16(ri),
	})
	return slot, DropNone
}

// insertFlow adds f (its State still StateNone for TCP, the caller's track
// sets it) and accounts it to its real and persistence template.
func (d *Director) insertFlow(f flow) uint32 {
	if f.Proto == protoUDP {
		f.State = StateUDP
	}
	slot := d.flows.insert(f)
	d.stats.FlowsBy[f.Kind][f.State]++
	s := &d.services[f.svc]
	r := s.Reals[f.real]
	if f.State == StateEstablished {
		r.Active++
	} else {
		r.Inactive++
	}
	if s.Persistence > 0 {
		ri := int(f.real)
		a := s.persist[f.Client.Addr()]
		if a.real != ri {
			a = affinity{real: ri}
		}
		a.flows++
		s.persist[f.Client.Addr()] = a
	}
	d.stats.FlowsCreated++
	return slot
}

// realIndex finds a real of service si by address.
func (d *Director) realIndex(si uint16, addr netip.AddrPort) int {
	for i, r := range d.services[si].Reals {
		if r.Addr == addr {
			return i
		}
	}
	return -1
}

// track advances the flow's state on a packet and refreshes its expiry.
func (d *Director) track(f *flow, p *packet, fromClient bool, now int64) {
	if p.proto == protoTCP {
		ns := nextState(f.State, fromClient, p.flags)
		if ns != f.State {
			r := d.services[f.svc].Reals[f.real]
			if f.State == StateEstablished {
				r.Active--
				r.Inactive++
			}
			if ns == StateEstablished {
				r.Inactive--
				r.Active++
			}
			d.stats.FlowsBy[f.Kind][f.State]--
			d.stats.FlowsBy[f.Kind][ns]++
			f.State = ns
		}
	}
	f.Expires = now + d.timeouts[f.State]
}

func (d *Director) removeFlow(slot uint32, now int64) {
	f := &d.flows.slab[slot]
	s := &d.services[f.svc]
	r := s.Reals[f.real]
	if f.State == StateEstablished {
		r.Active--
	} else {
		r.Inactive--
	}
	if s.Persistence > 0 {
		if a, ok := s.persist[f.Client.Addr()]; ok && a.real == int(f.real) {
			a.flows--
			a.expires = now + int64(s.Persistence)
			s.persist[f.Client.Addr()] = a
		}
	}
	if f.Kind == KindRecovered && d.rec.r != nil {
		d.rec.r.Release(f.Local.AddrPort(), f.Real.AddrPort())
	}
	d.stats.FlowsBy[f.Kind][f.State]--
	d.flows.remove(slot)
}

// Expire removes up to budget idle flows, resuming where the last call
// stopped, and forgets persistence entries that ran out. The caller runs it
// from a ticker; a budget bounds the time the lock is held.
func (d *Director) Expire(now int64, budget int) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	removed := 0
	t := &d.flows
	for i := 0; i < budget && len(t.slab) > 0; i++ {
		if t.cursor >= len(t.slab) {
			t.cursor = 0
		}
		slot := uint32(t.cursor)
		t.cursor++
		if f := &t.slab[slot]; f.used && f.Expires <= now {
			d.removeFlow(slot, now)
			d.stats.FlowsExpired++
			removed++
		}
	}
	for i := range d.services {
		s := &d.services[i]
		n := 0
		for addr, a := range s.persist {
			if a.flows <= 0 && a.expires <= now {
				delete(s.persist, addr)
			}
			if n++; n >= budget {
				break
			}
		}
	}
	return removed
}

// Stats returns a snapshot of the counters.
func (d *Director) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.stats
	s.Flows = d.flows.n
	s.ParkedBytes = d.rec.parkedBytes
	s.Inflight = len(d.rec.pending)
	return s
}

// Flows returns a copy of every live flow.
func (d *Director) Flows(now int64) []Flow {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]Flow, 0, d.flows.n)
	for i := range d.flows.slab {
		if f := &d.flows.slab[i]; f.used && f.Expires > now {
			out = append(out, f.export())
		}
	}
	return out
}
