package nat

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"holdfast/balancer"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Config is what a Director serves.
type Config struct {
	Services []*balancer.Service
	Timeouts Timeouts
	MaxFlows int
}

// Stats is a snapshot of the Director's counters.
type Stats struct {
	Verdicts     [numVerdicts]uint64
	Drops        [numDropReasons]uint64
	Flows        int    // flows in the table now
	FlowsCreated uint64 // flows ever created
	FlowsExpired uint64 // flows removed by idle timeout
	FlowsReused  uint64 // flows replaced by a SYN on a TIME_WAIT or CLOSE flow
	EchoReplies  uint64 // ICMP echo requests to a VIP answered
	ICMPErrors   uint64 // ICMP errors about a flow, translated
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
}

// Director is the NAT of one director: services, flow table and counters.
//
// Concurrency: every method locks mu. The packet loop calls HandlePacket from
// one goroutine; the lock exists so that an admin or metrics reader can take a
// consistent snapshot, and is uncontended on the hot path.
type Director struct {
	mu        sync.Mutex
	services  []service
	bySvc     map[svcKey]uint16
	vips      map[netip.Addr]struct{}
	realAddrs map[netip.Addr]struct{}
	realPorts map[svcKey]struct{} // (proto, real addr:port) of every service
	// servesProto marks the protocols of the services: a fragment from a real
	// in such a protocol may belong to a flow (it carries no ports to tell).
	servesProto [256]bool
	timeouts    Timeouts
	maxFlows    int
	flows       table
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
		realPorts: make(map[svcKey]struct{}),
		timeouts:  cfg.Timeouts,
		maxFlows:  cfg.MaxFlows,
		flows:     newTable(),
	}
	for _, s := range cfg.Services {
		if !s.VIP.Addr().Is4() {
			return nil, fmt.Errorf("service %s:%s: only IPv4 VIPs are served", s.Proto, s.VIP)
		}
		k := svcKey{uint8(s.Proto), s.VIP}
		if _, dup := d.bySvc[k]; dup {
			return nil, fmt.Errorf("service %s:%s configured twice", s.Proto, s.VIP)
		}
		d.bySvc[k] = uint16(len(d.services))
		d.services = append(d.services, service{Service: s, persist: make(map[netip.Addr]affinity)})
		d.vips[s.VIP.Addr()] = struct{}{}
		d.servesProto[s.Proto] = true
		for _, r := range s.Reals {
			if !r.Addr.Addr().Is4() {
				return nil, fmt.Errorf("real %s: only IPv4 reals are served", r.Addr)
			}
			d.realAddrs[r.Addr.Addr()] = struct{}{}
			d.realPorts[svcKey{uint8(s.Proto), r.Addr}] = struct{}{}
		}
	}
	return d, nil
}

// HandlePacket decides one packet read from the device, rewriting it in place.
// It returns the bytes to write back to the device (a sub-slice of pkt), or nil
// to write nothing. pkt is lent: HandlePacket keeps no reference to it.
func (d *Director) HandlePacket(pkt []byte, now int64) []byte {
	d.mu.Lock()
	v, reason, out := d.handle(pkt, now)
	d.stats.Verdicts[v]++
	if v == Drop {
		d.stats.Drops[reason]++
		out = nil
	}
	d.mu.Unlock()
	return out
}

func (d *Director) handle(b []byte, now int64) (Verdict, DropReason, []byte) {
	var p packet
	if r := p.decodeIP(b); r != DropNone {
		return Drop, r, nil
	}
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
	// Neither ours nor about us: the director also routes the reals' other
	// traffic. Write it back unchanged.
	return Forward, DropNone, b
}

func (d *Director) fromClient(p *packet, now int64) (Verdict, DropReason, []byte) {
	if p.frag {
		return Drop, DropFragment, nil
	}
	if r := p.decodeL4(); r != DropNone {
		return Drop, r, nil
	}
	if p.proto == protoICMP {
		return d.icmpToVIP(p)
	}
	si, ok := d.bySvc[svcKey{p.proto, p.dst}]
	if !ok {
		return Drop, DropNoService, nil
	}
	slot, side, found := d.flows.lookup(Key{p.proto, p.src, p.dst})
	if found && side != sideClient {
		found = false // a VIP is never a client
	}
	if found {
		f := &d.flows.slab[slot]
		switch {
		case f.Expires <= now:
			d.removeFlow(slot, now)
			d.stats.FlowsExpired++
			found = false
		case p.proto == protoTCP && p.flags&(header.TCPFlagSyn|header.TCPFlagAck) == header.TCPFlagSyn &&
			(f.State == StateTimeWait || f.State == StateClose):
			// A new connection reusing the tuple of a finished one is a
			// new flow, scheduled again (IPVS conn_reuse_mode).
			d.removeFlow(slot, now)
			d.stats.FlowsReused++
			found = false
		}
	}
	if !found {
		if p.proto == protoTCP && p.flags&header.TCPFlagRst != 0 {
			return Drop, DropStrayRST, nil
		}
		var r DropReason
		// A SYN opens a flow; so does a mid-stream segment (no recovery
		// here: scheduled like a new flow, as a director without state
		// sync does, IPVS sloppy_tcp).
		slot, r = d.newFlow(si, p, now)
		if r != DropNone {
			return Drop, r, nil
		}
	}
	f := &d.flows.slab[slot]
	d.track(f, p, true, now)
	rewriteDst(p, f.Real)
	return Forward, DropNone, p.ip
}

func (d *Director) fromReal(p *packet, now int64) (Verdict, DropReason, []byte) {
	if p.frag {
		if d.servesProto[p.proto] {
			return Drop, DropFragment, nil
		}
		return Forward, DropNone, p.ip
	}
	if p.proto == protoICMP {
		if v, r, ok := d.icmpErrorFromRealSide(p); ok {
			return v, r, p.ip
		}
		return Forward, DropNone, p.ip
	}
	if p.proto != protoTCP && p.proto != protoUDP {
		return Forward, DropNone, p.ip
	}
	if r := p.decodeL4(); r != DropNone {
		return Drop, r, nil
	}
	slot, side, found := d.flows.lookup(Key{p.proto, p.src, p.dst})
	if found && side == sideReal {
		f := &d.flows.slab[slot]
		if f.Expires > now {
			d.track(f, p, false, now)
			rewriteSrc(p, f.VIP)
			return Forward, DropNone, p.ip
		}
		d.removeFlow(slot, now)
		d.stats.FlowsExpired++
	}
	if _, ok := d.realPorts[svcKey{p.proto, p.src}]; ok {
		// The patent's step 5: a real's service port talking to no flow.
		return Drop, DropNoFlow, nil
	}
	return Forward, DropNone, p.ip
}

// newFlow schedules a real for the packet's client and inserts the flow.
func (d *Director) newFlow(si uint16, p *packet, now int64) (uint32, DropReason) {
	if d.flows.n >= d.maxFlows {
		return 0, DropFlowLimit
	}
	s := &d.services[si]
	ri := -1
	if s.Persistence > 0 {
		a, ok := s.persist[p.src.Addr()]
		if ok && (a.flows > 0 || a.expires > now) && a.real < len(s.Reals) && s.Reals[a.real].Weight > 0 {
			ri = a.real
		}
	}
	if ri < 0 {
		ri = s.Scheduler.Pick(s.Reals, p.src, p.dst)
		if ri < 0 {
			return 0, DropNoReal
		}
	}
	real := s.Reals[ri]
	if _, _, clash := d.flows.lookup(Key{p.proto, real.Addr, p.src}); clash {
		return 0, DropTupleClash
	}
	st := StateUDP
	if p.proto == protoTCP {
		st = StateNone
	}
	slot := d.flows.insert(Flow{
		Proto:  p.proto,
		Client: p.src,
		VIP:    p.dst,
		Real:   real.Addr,
		State:  st,
		Kind:   KindPlain,
		svc:    si,
		real:   uint16(ri),
	})
	real.Inactive++
	if s.Persistence > 0 {
		a := s.persist[p.src.Addr()]
		if a.real != ri {
			a = affinity{real: ri}
		}
		a.flows++
		s.persist[p.src.Addr()] = a
	}
	d.stats.FlowsCreated++
	return slot, DropNone
}

// track advances the flow's state on a packet and refreshes its expiry.
func (d *Director) track(f *Flow, p *packet, fromClient bool, now int64) {
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
	return s
}

// Flows returns a copy of every live flow.
func (d *Director) Flows(now int64) []Flow {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]Flow, 0, d.flows.n)
	for i := range d.flows.slab {
		if f := d.flows.slab[i]; f.used && f.Expires > now {
			out = append(out, f)
		}
	}
	return out
}
