package nat

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"holdfast/balancer"
	"holdfast/internal/wire"
)

// Config is what a Director serves.
type Config struct {
	Services []*balancer.Service
	Timeouts Timeouts
	MaxFlows int
	Recovery RecoveryConfig
	// Emit writes the packets the Director sends on its own: owner probes
	// and challenges with their retries, segments flushed to a flow found
	// by probe or adoption, resets. It is called without the Director's
	// lock, from the goroutine whose call made them (a pump, the sweep),
	// with the time of that call; nil discards them.
	Emit func(pkts [][]byte, now int64)
	// CookieBits is the width k of the timestamp cookie (cookie.go), 0..
	// MaxCookieBits: 0 turns cookies off. The reals of every service get
	// their cookie ids (balancer.AssignCookieIDs) in New.
	CookieBits int
	// Adoption says whether a real's packet with no flow is adopted (the
	// real proves it holds the connection: real.go). It is plain NAT, no
	// recovery: a director behind ECMP that sees only the reals' half of
	// a flow needs it with recovery off too. AdoptAuto follows recovery,
	// so that a director with recovery off stays the plain NAT director
	// the comparisons need.
	Adoption AdoptMode
}

// AdoptMode is Config.Adoption.
type AdoptMode uint8

// Adoption modes.
const (
	AdoptAuto AdoptMode = iota // adopt when recovery is on
	AdoptOn
	AdoptOff
)

// Director is the NAT of one director: services, flow table, every piece of
// recovery state (recoveries in flight with their parked segments, the dial
// gate, the recovery port allocator) and counters.
//
// Concurrency: every exported method takes mu. The pumps (one per TUN queue)
// call HandleBatch concurrently, each batch under one hold of mu; the
// recovery engine's goroutine calls the Sink methods (Retry, Recovered,
// Failed); the daemon calls Sweep, Stats and the runtime changes. The calls
// out to the Dialer are made with mu held: a Dialer only queues the request,
// and never calls back into the Director from Dial or Cancel.
type Director struct {
	mu        sync.Mutex
	adoptMode AdoptMode
	// replacedSyn holds, until when, the client tuples of SYN flows found
	// not to be the client's: their SYN-ACKs are not adopted (real.go).
	replacedSyn    map[fkey]int64
	replacedPruned int64
	services       []service
	bySvc          map[svcKey]uint16
	vips           map[netip.Addr]struct{}
	realAddrs      map[netip.Addr]struct{}
	realSvcs       map[svcKey][]uint16 // (proto, real addr:port) -> services it serves
	// servesProto marks the protocols of the services: a fragment from a real
	// in such a protocol may belong to a flow (it carries no ports to tell).
	servesProto [256]bool
	timeouts    Timeouts
	maxFlows    int
	flows       table
	cookieBits  uint8 // Config.CookieBits
	rec         recovery
	off         offload // the fast path (offload.go)
	stats       Stats
	emitq       [][]byte // packets to Emit once the lock is released
	emitFn      func([][]byte, int64)
}

// New builds a Director. It validates that services do not overlap, and
// that no address is both a VIP and a real (recovery addresses: rec.init).
func New(cfg Config) (*Director, error) {
	if len(cfg.Services) == 0 {
		return nil, errors.New("no service configured")
	}
	if cfg.MaxFlows <= 0 {
		return nil, fmt.Errorf("max flows %d: expected a positive number", cfg.MaxFlows)
	}
	if cfg.CookieBits < 0 || cfg.CookieBits > MaxCookieBits {
		return nil, fmt.Errorf("timestamp cookie bits %d: expected 0..%d", cfg.CookieBits, MaxCookieBits)
	}
	d := &Director{
		bySvc:     make(map[svcKey]uint16),
		vips:      make(map[netip.Addr]struct{}),
		realAddrs: make(map[netip.Addr]struct{}),
		realSvcs:  make(map[svcKey][]uint16),
		timeouts:  cfg.Timeouts,
		maxFlows:  cfg.MaxFlows,
		flows:     newTable(),
		emitFn:    cfg.Emit,
	}
	d.cookieBits = uint8(cfg.CookieBits)
	d.adoptMode = cfg.Adoption
	for _, s := range cfg.Services {
		k := svcKey{uint8(s.Proto), s.VIP}
		if _, dup := d.bySvc[k]; dup {
			return nil, fmt.Errorf("service %s configured twice", s)
		}
		if _, err := balancer.AssignCookieIDs(s, cfg.CookieBits); err != nil {
			return nil, err
		}
		si := uint16(len(d.services))
		d.bySvc[k] = si
		d.services = append(d.services, newService(s))
		d.vips[s.VIP.Addr()] = struct{}{}
		d.servesProto[s.Proto] = true
		for _, r := range s.Reals {
			d.realAddrs[r.Addr.Addr()] = struct{}{}
			rk := svcKey{uint8(s.Proto), r.Addr}
			d.realSvcs[rk] = append(d.realSvcs[rk], si)
		}
	}
	if err := d.checkOverlap(cfg.Services); err != nil {
		return nil, err
	}
	if err := d.rec.init(cfg.Recovery, d.vips, d.realAddrs); err != nil {
		return nil, err
	}
	if err := d.checkFamilies(cfg.Services); err != nil {
		return nil, err
	}
	return d, nil
}

// adopting reports whether a real's packet with no flow may be adopted.
func (d *Director) adopting() bool {
	switch d.adoptMode {
	case AdoptOn:
		return true
	case AdoptOff:
		return false
	}
	return d.rec.enabled
}

// checkFamilies refuses a service whose reals are not all of its VIP's
// family (no NAT46 or NAT64 here) and, with recovery on, a service of a
// family no recovery address has: its recovery dials would have no source.
func (d *Director) checkFamilies(svcs []*balancer.Service) error {
	for _, s := range svcs {
		v4 := s.VIP.Addr().Is4()
		for _, r := range s.Reals {
			if err := sameFamily(s, r.Addr); err != nil {
				return err
			}
		}
		if d.rec.enabled && !d.rec.ports.has(v4) {
			return fmt.Errorf("service %s is %s: recovery needs a recovery address of that family", s, family(v4))
		}
	}
	return nil
}

// sameFamily refuses a real of the other family than s's VIP.
func sameFamily(s fmt.Stringer, real netip.AddrPort) error {
	var vip netip.AddrPort
	switch sv := s.(type) {
	case *balancer.Service:
		vip = sv.VIP
	case *service:
		vip = sv.VIP
	}
	if v4 := vip.Addr().Is4(); real.Addr().Is4() != v4 {
		return fmt.Errorf("real %s of service %s: an %s service takes %s reals only (no NAT46 or NAT64)", real, s, family(v4), family(v4))
	}
	return nil
}

func family(v4 bool) string {
	if v4 {
		return "IPv4"
	}
	return "IPv6"
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
	q := d.takeEmits()
	d.mu.Unlock()
	d.send(q, now)
	return v, out
}

// HandleBatch is Handle for a batch read from the device, under one lock:
// verdicts[i] and outs[i] answer pkts[i] (partial[i] as in Handle).
func (d *Director) HandleBatch(pkts [][]byte, partial []bool, now int64, verdicts []wire.Verdict, outs [][]byte) {
	d.mu.Lock()
	for i, pkt := range pkts {
		verdicts[i], outs[i] = d.handleCounted(pkt, partial[i], now)
	}
	q := d.takeEmits()
	d.mu.Unlock()
	d.send(q, now)
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
	case wire.Park, wire.ToStack, wire.Consume:
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
		if d.ownSource(p.src.Addr()) {
			return wire.Drop, DropSpoofedSource, nil
		}
		return d.fromClient(&p, now)
	}
	if _, ok := d.realAddrs[p.src.Addr()]; ok {
		return d.fromReal(&p, now)
	}
	if p.isICMP() && !p.frag {
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

// ownSource reports whether a is an address of the director's own side: a
// VIP, a recovery address or a real (configured or added at runtime). None
// of them is ever a client, and a packet to a VIP from one is forged: from
// a recovery address:port it would make a flow whose real-side key is a
// recovery dial's (stealing its SYN-ACK, or deleting a recovered flow's
// index entry later); from a VIP or a real, a flow whose keys mirror
// another's.
func (d *Director) ownSource(a netip.Addr) bool {
	if _, ok := d.vips[a]; ok {
		return true
	}
	if _, ok := d.realAddrs[a]; ok {
		return true
	}
	return d.rec.isLocal(a)
}
