package nat

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"holdfast/internal/shrink"
	"holdfast/internal/wire"
)

// Recovery state. nat owns all of it: the recoveries in flight with their
// parked segments and trigger numbers, the reals each tried, the dial gate
// (which real-side tuples may reach the netstack) and the recovery port
// allocator. The recovery engine only executes the dials nat asks for
// (Dialer) and reports their ends (Retry, Recovered, Failed in sink.go).
// The trigger rules and parking are in trigger.go.

// Dialer executes the recovery dials the Director asks for (package
// recovery's Engine). The Director calls it with its lock held: Dial and
// Cancel must only queue the request, never block, and never call back into
// the Director from inside them.
//
// Every Dial ends in exactly one call of Recovered or Failed, with any number
// of Retry calls before it (one per failed dial that the engine retries).
type Dialer interface {
	// Dial starts dial o for the recovery of key (the client's key).
	Dial(key Key, o wire.DialOptions)
	// Cancel ends the dial in progress for key: the original real spoke
	// and the flow was adopted. The recovery still ends through Recovered
	// or Failed, which hand its parked segments to the adopted flow.
	Cancel(key Key)
}

// RecoveryConfig controls recovery.
type RecoveryConfig struct {
	Enabled bool
	Dialer  Dialer
	Addrs   []netip.Addr // recovery addresses (never a VIP or a real)
	// PortLo..PortHi are the local ports of recovery dials, on every
	// recovery address (disjoint between directors sharing an address:
	// DirectorPorts).
	PortLo, PortHi uint16
	// WScale (0..14) and MSS are what a recovery SYN advertises when the
	// client's own handshake is unknown (after a failover); MSS 0 leaves
	// it to the dialer. MSS6 is the MSS of IPv6 dials (their headers are
	// 20 bytes longer). A re-home knows the client's and says what it said.
	WScale        int
	MSS, MSS6     int
	Rate          float64        // recoveries started per second
	MaxInflight   int            // recoveries in flight at once
	Allow         []netip.Prefix // clients that may trigger recovery; empty = any
	ParkBytes     int            // bytes parked at once, all flows
	ParkFlowBytes int            // bytes parked at once, one flow
	// Budgets per client prefix (DESIGN.md section 6): a client's prefix
	// is its address masked to PrefixLen4 bits (IPv4) or PrefixLen6
	// (IPv6). A prefix has at most PrefixInflight recoveries in flight
	// and PrefixFlows recovered flows alive and recoveries in flight
	// together, so that a flood of forged segments from one prefix cannot
	// take the in-flight slots, ports and flows the others need. Zero
	// values take the Default ones.
	PrefixLen4, PrefixLen6      int
	PrefixInflight, PrefixFlows int
	// PrefixParkBytes bounds the bytes one prefix's recoveries park at
	// once; zero: ParkBytes/16 (at least ParkFlowBytes), so that one
	// prefix cannot fill the parking all recoveries share.
	PrefixParkBytes int
	// UnconfirmedTimeout is the idle timeout of a recovered flow until the
	// client acknowledges server data that crossed the recovered
	// connection (a spoofed trigger's source never does): instead of the
	// state's when shorter, and only the client's segments refresh it.
	// Zero: DefaultUnconfirmedTimeout.
	UnconfirmedTimeout time.Duration
	// MTU is the largest packet the link to the reals takes: a parked GSO
	// super-packet longer than it is parked as segments within it (see
	// park). 0: no limit (a device without offload hands over no such
	// packet).
	MTU int
}

// Defaults of the per-prefix budgets (RecoveryConfig's zero values).
//
// They must not hurt a genuine failover, where every connection of a client
// prefix (a NAT gateway, an office) is picked up at once. A miss (the
// search for a connection's real, miss.go) holds its prefix's in-flight slot
// for a round trip to the reals when the real still holds the connection,
// and for about two seconds when the source never answers its challenge (a
// spoofed one: challengeWait): the slot count is what a flood from one
// prefix costs per two seconds (each miss: a probe and its answer per real,
// two challenges).
// The bench's recovery storm from one client (6,000 idle keep-alive
// connections, all resuming at once, every one steered back to its real)
// took 0.59 to 1.01 s with 1024 in flight per prefix, 1.06 to 1.15 s with
// 2048 (more probes at once overflow the TUN's queue and their answers wait
// for the 510 ms retry), 1.00 to 1.77 s with 512, 6.86 s with 256 (the
// refused segments wait for the clients' retransmission timeouts).
// 16384 recovered flows per prefix covers the 10,000 connections of the
// bench's recovery storm from one client and bounds what one prefix's
// segments that passed the challenge keep alive (a backend connection and a
// recovery port each, out of 13,000 ports per recovery address and real).
// Operators whose clients are single hosts lower both.
const (
	DefaultPrefixLen4         = 24
	DefaultPrefixLen6         = 64
	DefaultPrefixInflight     = 1024
	DefaultPrefixFlows        = 16384
	DefaultUnconfirmedTimeout = 10 * time.Second
)

// prefixUse is what one client prefix holds of the recovery budgets.
type prefixUse struct{ inflight, flows, parked int32 }

// prefixParked is the bytes parked now by the recoveries of a's prefix.
func (rc *recovery) prefixParked(a netip.Addr) int {
	return int(rc.prefixes[rc.prefixOf(a)].parked)
}

// prefixOf is the budget prefix of client address a.
func (rc *recovery) prefixOf(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	bits := rc.PrefixLen6
	if a.Is4() {
		bits = rc.PrefixLen4
	}
	p, _ := a.Prefix(bits)
	return p
}

// prefixAdd adds delta to the use of a's prefix; an entry that comes back
// to zero is removed (the table holds only prefixes in use).
func (rc *recovery) prefixAdd(a netip.Addr, delta prefixUse) {
	k := rc.prefixOf(a)
	u := rc.prefixes[k]
	u.inflight += delta.inflight
	u.flows += delta.flows
	u.parked += delta.parked
	if u == (prefixUse{}) {
		rc.prefixes = shrink.Delete(rc.prefixes, k)
		return
	}
	rc.prefixes[k] = u
}

// prefixRefuse says whether a's prefix is over one of its budgets, or
// DropNone.
func (rc *recovery) prefixRefuse(a netip.Addr) DropReason {
	u := rc.prefixes[rc.prefixOf(a)]
	switch {
	case int(u.inflight) >= rc.PrefixInflight:
		return DropRecoveryPrefixBusy
	case int(u.inflight)+int(u.flows) >= rc.PrefixFlows:
		return DropRecoveryPrefixFlows
	}
	return DropNone
}

// confirm ends f's unconfirmed period if the client's in-window segment sg
// acknowledges server data that crossed the recovered connection: an ack
// beyond the highest it had sent, and within what the real sent through this
// flow. The source of a forged trigger never receives that data; an
// off-path attacker who keeps forging can still guess such an ack (it knows
// its trigger's ack, and one byte past it is enough): that costs it a
// second, timed segment per flow, within the prefix budgets. The
// return-routability challenge before recovery (not built yet) is the
// answer to that.
func (f *flow) confirm(sg *seg) {
	w := &f.win
	if !sg.hasAck() || w.flags&winCliAcked == 0 || w.flags&winSrvSeen == 0 {
		return
	}
	if seqAfter(sg.ack, w.cli.ack) && !seqAfter(sg.ack, w.srv.end) {
		f.unconfirmed = false
	}
}

// unconfirmedExpiry refreshes the expiry of f, a recovered flow still
// unconfirmed, after one of its segments: the state's timeout or
// UnconfirmedTimeout, whichever is shorter, and only on a client segment.
// The real's own segments do not keep it: a real retransmitting to a spoofed
// source would otherwise keep the flow (and its port) alive as long as it
// retries.
func (d *Director) unconfirmedExpiry(f *flow, fromClient bool, now int64) {
	if !fromClient {
		return
	}
	f.Expires = now + min(d.timeouts[f.State], int64(d.rec.UnconfirmedTimeout))
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
	noData     bool // a cookie steer of a pure ACK or FIN: nothing else is tried (steerNoData)
	// A re-home: the client's handshake as the director saw it, and the
	// real left behind (whose packets for this tuple are never adopted).
	hs   clientHandshake
	from netip.AddrPort
	// The dial in progress (dialing): the real's index in the service and
	// the recovery address:port reserved toward it.
	dialing bool
	real    uint16
	local   endpoint
	noPort  bool // a real was passed over for want of a free recovery port

	// The miss path (miss.go): what is being tried for the tuple, the
	// next timer of that phase (a retry, or its end) and whether its one
	// retry went out; the owner probes of phaseProbe, one per real (also
	// the real a failed cookie steer went to, as not the owner); the
	// trigger's window field and its arrival.
	phase    phase
	retried  bool
	deadline int64
	probes   []probe
	win      uint16
	slot     uint32 // phaseStale: the suspect flow's slot
}

type recovery struct {
	RecoveryConfig
	enabled     bool
	local       map[netip.Addr]struct{}
	pending     map[Key]*pending
	dialing     map[Key]Key                // real-side tuple of a dial in progress -> client key
	probes      map[Key]Key                // real-side tuple of an owner probe waiting for its answer -> client key
	probed      map[Key]int64              // client key -> when its last probe round went out (for retryAfter, swept)
	prefixes    map[netip.Prefix]prefixUse // client prefixes holding a budget
	ports       portAlloc
	parkedBytes int
	tokens      float64
	last        int64
}

func (rc *recovery) init(c RecoveryConfig, vips, reals map[netip.Addr]struct{}) error {
	for _, d := range []struct {
		v   *int
		def int
	}{{&c.PrefixLen4, DefaultPrefixLen4}, {&c.PrefixLen6, DefaultPrefixLen6}, {&c.PrefixInflight, DefaultPrefixInflight}, {&c.PrefixFlows, DefaultPrefixFlows}} {
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.PrefixParkBytes == 0 {
		c.PrefixParkBytes = max(c.ParkBytes/16, c.ParkFlowBytes)
	}
	if c.UnconfirmedTimeout == 0 {
		c.UnconfirmedTimeout = DefaultUnconfirmedTimeout
	}
	rc.RecoveryConfig = c
	rc.local = make(map[netip.Addr]struct{})
	rc.prefixes = make(map[netip.Prefix]prefixUse)
	rc.pending = make(map[Key]*pending)
	rc.dialing = make(map[Key]Key)
	rc.probes = make(map[Key]Key)
	rc.probed = make(map[Key]int64)
	for _, a := range c.Addrs {
		if a = a.Unmap(); !a.IsGlobalUnicast() {
			return fmt.Errorf("recovery address %s: expected a unicast address", a)
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
	case c.Dialer == nil:
		return errors.New("recovery enabled without a dialer")
	case len(c.Addrs) == 0:
		return errors.New("recovery enabled without a recovery address")
	case c.WScale < 0 || c.WScale > 14:
		return fmt.Errorf("recovery window scale %d: expected 0..14", c.WScale)
	case c.MSS < 0 || c.MSS > 0xffff || c.MSS6 < 0 || c.MSS6 > 0xffff:
		return fmt.Errorf("recovery MSS %d (IPv4), %d (IPv6): expected 0..65535", c.MSS, c.MSS6)
	case c.Rate <= 0:
		return fmt.Errorf("recovery rate %g: expected a positive number of recoveries per second", c.Rate)
	case c.MaxInflight <= 0:
		return fmt.Errorf("recoveries in flight %d: expected a positive number", c.MaxInflight)
	case c.ParkBytes <= 0 || c.ParkFlowBytes <= 0:
		return fmt.Errorf("parking limits %d (all flows), %d (one flow): expected positive sizes", c.ParkBytes, c.ParkFlowBytes)
	case c.PrefixLen4 < 1 || c.PrefixLen4 > 32:
		return fmt.Errorf("IPv4 budget prefix length %d: expected 1..32", c.PrefixLen4)
	case c.PrefixLen6 < 1 || c.PrefixLen6 > 128:
		return fmt.Errorf("IPv6 budget prefix length %d: expected 1..128", c.PrefixLen6)
	case c.PrefixInflight < 0 || c.PrefixFlows < 0 || c.PrefixParkBytes < 0:
		return fmt.Errorf("per-prefix budgets %d in flight, %d flows, %d parked bytes: expected positive numbers", c.PrefixInflight, c.PrefixFlows, c.PrefixParkBytes)
	case c.UnconfirmedTimeout < 0:
		return fmt.Errorf("timeout of unconfirmed recovered flows %v: expected a positive duration", c.UnconfirmedTimeout)
	}
	var err error
	if rc.ports, err = newPortAlloc(c.Addrs, c.PortLo, c.PortHi); err != nil {
		return err
	}
	rc.enabled = true
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

// dialOptions is the recovery SYN for pd's next dial: the configured window
// scale and MSS, unless the client's own handshake is known (a re-home):
// then the SYN says what the client said, so that the new connection matches
// the client's (exact window rescale, SACK only if negotiated, an MSS the
// client can take).
func (rc *recovery) dialOptions(pd *pending, local, real netip.AddrPort) wire.DialOptions {
	o := wire.DialOptions{
		Local: local, Remote: real, Timestamps: pd.ts, SACK: true,
		WScale: rc.WScale, MSS: rc.MSS,
	}
	if !real.Addr().Is4() {
		o.MSS = rc.MSS6
	}
	if pd.hs.known {
		o.WScale, o.SACK = int(pd.hs.ws), pd.hs.sack
		if m := int(pd.hs.mss); m > 0 && (o.MSS == 0 || m < o.MSS) {
			o.MSS = m
		}
	}
	return o
}

// nextDial picks the next real for pd (one it has not tried), reserves a
// recovery port toward it and opens the dial gate for the tuple, so that the
// real's SYN-ACK reaches the netstack. A real with no free port is passed
// over. ok is false when no real is left.
func (d *Director) nextDial(key Key, pd *pending, now int64) (o wire.DialOptions, ok bool) {
	s := &d.services[pd.svc]
	for {
		ri := d.pickReal(s, key.Src, key.Dst, now, pd.tried)
		if ri < 0 {
			return wire.DialOptions{}, false
		}
		real := s.Reals[ri].Addr
		pd.tried = append(pd.tried, real)
		local, free := d.rec.ports.get(real)
		if !free {
			pd.noPort = true
			continue
		}
		pd.dialing, pd.real, pd.local = true, uint16(ri), endpointOf(local)
		d.rec.dialing[Key{protoTCP, real, local}] = key
		return d.rec.dialOptions(pd, local, real), true
	}
}

// endDial closes the dial gate of pd's dial in progress, and frees its port
// unless keepPort (the dial succeeded: the port is the recovered flow's
// until it ends).
func (d *Director) endDial(pd *pending, keepPort bool) {
	if !pd.dialing {
		return
	}
	pd.dialing = false
	real := d.services[pd.svc].Reals[pd.real].Addr
	d.rec.dialing = shrink.Delete(d.rec.dialing, Key{protoTCP, real, pd.local.AddrPort()})
	if !keepPort {
		d.rec.ports.release(pd.local, endpointOf(real))
	}
}
