package nat

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Flows: the keys and the table, and the Director's accounting of flows
// (insert, remove, state tracking, the sweep of idle flows).

// Key identifies one direction of a flow: (protocol, source, destination) as
// the packet carries them. A flow has two keys: (client, VIP) for packets from
// the client and (real, client) for packets from the real server. Key is
// comparable and allocation-free as a map key.
type Key struct {
	Proto uint8
	Src   netip.AddrPort
	Dst   netip.AddrPort
}

// Kind says how a flow came to be.
type Kind uint8

// Flow kinds.
const (
	KindPlain     Kind = iota // scheduled by this director (SYN, UDP, or a mid-stream segment with recovery off)
	KindAdopted               // created from a real server's packet (recovery stage)
	KindRecovered             // spliced into a recovery connection (recovery stage)
	KindCookie                // a mid-stream segment sent to the real its timestamp cookie names (miss.go)
	KindProbe                 // a mid-stream segment sent to the real that answered an owner probe (miss.go)
	numKinds
)

var kindNames = [...]string{"plain", "adopted", "recovered", "cookie", "probe"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "kind?"
}

// endpoint is an address and port in 18 bytes and no pointer, an IPv4
// address in its IPv4-mapped IPv6 form (decodeIPv6 refuses that form on
// the wire, so the two families never meet). Flows and the index's keys
// hold endpoints rather than netip.AddrPort (32 bytes, one of them a
// pointer): the garbage collector has nothing in the table to scan. The
// zero endpoint stands for "none".
type endpoint struct {
	ip   [16]byte
	port uint16
}

// endpointOf packs an address and port; an invalid one gives the zero
// endpoint.
func endpointOf(a netip.AddrPort) endpoint {
	if !a.Addr().IsValid() {
		return endpoint{}
	}
	return endpoint{a.Addr().As16(), a.Port()}
}

// AddrPort unpacks e; the zero endpoint gives the invalid AddrPort.
func (e endpoint) AddrPort() netip.AddrPort {
	if e == (endpoint{}) {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(e.Addr(), e.port)
}

// Addr returns e's address (IPv4 as IPv4).
func (e endpoint) Addr() netip.Addr { return netip.AddrFrom16(e.ip).Unmap() }

// fkey is a Key packed for the index (38 bytes, no pointer).
type fkey struct {
	src, dst endpoint
	proto    uint8
}

func packKey(k Key) fkey { return fkey{endpointOf(k.Src), endpointOf(k.Dst), k.Proto} }

// fkey4 is an IPv4 fkey (14 bytes): the index keeps the IPv4 flows apart,
// where a key is hashed and compared in about a third of the bytes, and
// four times as many fit a cache line as of fkey's 38 (with their slot).
type fkey4 struct {
	src, dst     [4]byte
	sport, dport uint16
	proto        uint8
}

// v4mapped is the prefix of an IPv4 address in its IPv4-mapped form.
var v4mapped = [12]byte{10: 0xff, 11: 0xff}

// v4 returns k as an fkey4 when both its endpoints are IPv4.
func (k fkey) v4() (fkey4, bool) {
	if [12]byte(k.src.ip[:12]) != v4mapped || [12]byte(k.dst.ip[:12]) != v4mapped {
		return fkey4{}, false
	}
	return fkey4{[4]byte(k.src.ip[12:]), [4]byte(k.dst.ip[12:]), k.src.port, k.dst.port, k.proto}, true
}

// key is the fkey of k4.
func (k4 fkey4) key() fkey {
	k := fkey{proto: k4.proto}
	copy(k.src.ip[:], v4mapped[:])
	copy(k.src.ip[12:], k4.src[:])
	copy(k.dst.ip[:], v4mapped[:])
	copy(k.dst.ip[12:], k4.dst[:])
	k.src.port, k.dst.port = k4.sport, k4.dport
	return k
}

// Flow is a copy of one NATed connection, as Director.Flows returns it.
type Flow struct {
	Proto   uint8
	Client  netip.AddrPort
	VIP     netip.AddrPort
	Real    netip.AddrPort
	Local   netip.AddrPort // recovered flows: the recovery address:port the real sees
	State   State
	Kind    Kind
	Expires int64 // monotonic ns

	// Recovered flows: the deltas (see tcpx.go); zero for other kinds.
	SeqDelta, AckDelta     uint32
	TSvalDelta, TSecrDelta uint32
}

// flow is one NATed connection as the table keeps it: fields as in Flow,
// the client and recovery endpoints packed, the VIP and the real as
// indices (svc, real), the one-byte fields last so that nothing pads (152
// bytes in all, 32 of them window tracking, 24 the timestamp cookie, 36
// the two endpoints of either family).
type flow struct {
	Client  endpoint
	Local   endpoint // recovered flows: the recovery address:port the real sees
	Expires int64    // monotonic ns

	// Recovered flows translate sequence numbers and timestamps (see
	// tcpx.go); the deltas are zero for other kinds.
	SeqDelta, AckDelta     uint32
	TSvalDelta, TSecrDelta uint32

	// hiSrv is the highest server sequence (in the client's space) this
	// director has forwarded, for stale-flow detection (hiSrvSeen once a
	// server segment crossed). Detection starts at the first client ACK
	// (marked), which raises hiSrv to that ACK: bytes acknowledged then may
	// have crossed a director that has since died.
	hiSrv uint32

	// win is the flow's window tracking (window.go), TCP only.
	win tcpWin

	// hs is the client's side of the handshake, for flows whose SYN and
	// SYN-ACK crossed this director (and flows re-homed from those).
	hs clientHandshake

	// ck is the flow's timestamp cookie state (cookie.go): the last TSval
	// sent to the client, the raw TSvals of the last two buckets for the
	// restore of the client's TSecr, and the SYN-ACK's raw TSval.
	ck cookieFlow

	svc         uint16 // index into Director.services
	real        uint16 // index into the service's Reals
	winToServer shift
	winToClient shift
	Proto       uint8
	State       State
	Kind        Kind
	TS          bool
	hiSrvSeen   bool
	marked      bool
	used        bool
	// unconfirmed: a recovered flow whose client has not yet acknowledged
	// server data that crossed the recovered connection (confirm, in
	// recovery.go), or a tentative one: it is on
	// RecoveryConfig.UnconfirmedTimeout.
	unconfirmed bool
	// tentative: a cookie flow whose real has not answered yet (miss.go,
	// tentativeAnswer).
	tentative bool
	// offloaded: the fast path carries the flow and holds its cookie and
	// window state (offload.go); segs counts its segments in the clock
	// tick segTick, towards its offload.
	offloaded bool
	segs      uint8
	segTick   uint8
}

// vipOf and realOf are f's VIP and real: its service's VIP and the
// service's real at f.real. A flow keeps the indices, not the addresses (36
// bytes less a flow): a service and a real keep their index for as long as
// they have flows (service.go).
func (d *Director) vipOf(f *flow) netip.AddrPort { return d.services[f.svc].VIP }

func (d *Director) realOf(f *flow) netip.AddrPort { return d.services[f.svc].Reals[f.real].Addr }

func (d *Director) export(f *flow) Flow {
	return Flow{
		Proto: f.Proto, Client: f.Client.AddrPort(), VIP: d.vipOf(f), Real: d.realOf(f),
		Local: f.Local.AddrPort(), State: f.State, Kind: f.Kind, Expires: f.Expires,
		SeqDelta: f.SeqDelta, AckDelta: f.AckDelta, TSvalDelta: f.TSvalDelta, TSecrDelta: f.TSecrDelta,
	}
}

// clientKey is the key of f's client's packets.
func (d *Director) clientKey(f *flow) fkey {
	return fkey{f.Client, endpointOf(d.vipOf(f)), f.Proto}
}

// realKey is the key of the real's packets: they are addressed to the client,
// or to the recovery address:port for a recovered flow.
func (d *Director) realKey(f *flow) fkey {
	if f.Kind == KindRecovered {
		return fkey{endpointOf(d.realOf(f)), f.Local, f.Proto}
	}
	return fkey{endpointOf(d.realOf(f)), f.Client, f.Proto}
}

// side of a Key in the index.
const (
	sideClient = 0
	sideReal   = 1
)

// table stores flows in a slab indexed by slot; the index holds slot<<1|side
// for both keys of every flow (IPv4 keys in index4, the others in index6),
// so a lookup from either side is one map access and flows never move (a
// slot stays valid until removed).
type table struct {
	slab   []flow
	free   []uint32
	index4 map[fkey4]uint32
	index6 map[fkey]uint32
	n      int
	cursor int // Sweep position
}

func newTable() table {
	return table{index4: make(map[fkey4]uint32), index6: make(map[fkey]uint32)}
}

func (t *table) lookup(k Key) (slot uint32, side int, ok bool) {
	var v uint32
	if s, d := k.Src.Addr(), k.Dst.Addr(); s.Is4() && d.Is4() {
		v, ok = t.index4[fkey4{s.As4(), d.As4(), k.Src.Port(), k.Dst.Port(), k.Proto}]
	} else {
		v, ok = t.index6[packKey(k)]
	}
	return v >> 1, int(v & 1), ok
}

// get, put and del are the index's operations on a packed key.
func (t *table) get(k fkey) (uint32, bool) {
	if k4, ok := k.v4(); ok {
		v, ok := t.index4[k4]
		return v, ok
	}
	v, ok := t.index6[k]
	return v, ok
}

func (t *table) put(k fkey, v uint32) {
	if k4, ok := k.v4(); ok {
		t.index4[k4] = v
	} else {
		t.index6[k] = v
	}
}

func (t *table) del(k fkey) {
	if k4, ok := k.v4(); ok {
		delete(t.index4, k4)
	} else {
		delete(t.index6, k)
	}
}

// indexLen is the number of keys in the index.
func (t *table) indexLen() int { return len(t.index4) + len(t.index6) }

// insert adds f under both its keys, ck (its client's) and rk (its real's).
// It never overwrites an entry: if
// either key is already in the index (or both keys are the same), it
// inserts nothing and returns false. An overwritten entry would leave
// another flow (or itself) reachable from one side only, and its removal
// would later delete the entry of the flow that took its key; callers check
// both keys (and the dial gate) first, and the Director counts a refusal
// (Stats.IndexRefused).
func (t *table) insert(f flow, ck, rk fkey) (uint32, bool) {
	if ck == rk {
		return 0, false
	}
	if _, taken := t.get(ck); taken {
		return 0, false
	}
	if _, taken := t.get(rk); taken {
		return 0, false
	}
	var slot uint32
	if n := len(t.free); n > 0 {
		slot = t.free[n-1]
		t.free = t.free[:n-1]
	} else {
		slot = uint32(len(t.slab))
		t.slab = append(t.slab, flow{})
	}
	f.used = true
	t.slab[slot] = f
	t.put(ck, slot<<1|sideClient)
	t.put(rk, slot<<1|sideReal)
	t.n++
	return slot, true
}

// remove takes the flow in slot, whose keys are ck and rk, out.
func (t *table) remove(slot uint32, ck, rk fkey) {
	f := &t.slab[slot]
	t.del(ck)
	t.del(rk)
	*f = flow{}
	t.free = append(t.free, slot)
	t.n--
}

// keysFree reports whether a new flow may take the client-side key ck and
// the real-side key rk: neither is in the index, and rk is not the tuple of
// a recovery dial in progress (whose SYN-ACK it would steal).
func (d *Director) keysFree(ck, rk Key) bool {
	if _, _, taken := d.flows.lookup(ck); taken {
		return false
	}
	if _, _, taken := d.flows.lookup(rk); taken {
		return false
	}
	_, dialing := d.rec.dialing[rk]
	return !dialing
}

// clientHandshake is what the director saw of a connection's handshake:
// the client's SYN options and the shift the client applies to the windows
// it receives (the window scale of the original real's SYN-ACK). A re-home
// uses it to make the recovery exact.
type clientHandshake struct {
	known bool
	ws    int8   // the client's window scale (-1: none offered)
	view  int8   // the window scale the client applies to the server's windows (-1: none)
	mss   uint16 // the client's MSS (0: none)
	sack  bool   // both sides SACK-permitted
	ts    bool   // both sides use timestamps
}

var unknownHandshake = clientHandshake{ws: -1, view: -1}

// wsOr returns the client's shift, or def when unknown.
func (h clientHandshake) wsOr(def int8) int8 {
	if !h.known {
		return def
	}
	return h.ws
}

// viewOr returns the shift the client applies to server windows, or def.
func (h clientHandshake) viewOr(def int8) int8 {
	if !h.known {
		return def
	}
	return h.view
}

// insertFlow adds f (its State still StateNone for TCP, the caller's track
// sets it) and accounts it to its real (its flow counts and Conns) and
// persistence template. ok is
// false, and nothing changed but Stats.IndexRefused, if one of f's keys is
// already taken (see table.insert).
func (d *Director) insertFlow(f flow) (slot uint32, ok bool) {
	if f.Proto == protoUDP {
		f.State = StateUDP
	}
	if slot, ok = d.flows.insert(f, d.clientKey(&f), d.realKey(&f)); !ok {
		d.stats.IndexRefused++
		return 0, false
	}
	d.stats.FlowsBy[f.Kind][f.State]++
	s := &d.services[f.svc]
	r := s.Reals[f.real]
	if f.State == StateEstablished {
		r.Active++
	} else {
		r.Inactive++
	}
	r.Conns++
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
	return slot, true
}

// track advances the flow's state on a packet and refreshes its expiry. A
// TCP segment is checked against the flow's windows first (window.go): one
// out of window changes nothing (winOut, winSuspectAck), and a real's reset
// confirming a stale suspect (winStaleReset) is for the caller to act on.
func (d *Director) track(f *flow, p *packet, fromClient bool, now int64) winVerdict {
	if p.proto != protoTCP {
		f.Expires = now + d.timeouts[f.State]
		return winOK
	}
	var sg seg
	v := f.checkWindow(p, fromClient, &sg)
	d.trackSeg(f, p, &sg, fromClient, v, now)
	return v
}

// trackSeg is track for a TCP segment already checked: v and sg are what
// checkWindow said of it.
func (d *Director) trackSeg(f *flow, p *packet, sg *seg, fromClient bool, v winVerdict, now int64) {
	w := &f.win
	if !fromClient && w.flags&winSuspect != 0 && v != winStaleReset && p.flags&header.TCPFlagRst == 0 && d.staleAccepted(f, sg) {
		// The real answered a suspect flow normally: it holds the
		// connection, and its numbers are the truth.
		w.resync(sg)
		d.stats.StaleCleared++
	}
	switch v {
	case winSuspectAck:
		w.flags |= winSuspect
		w.suspectAck = sg.ack
		d.stats.StaleSuspects++
		d.stats.OutOfWindow[DirToReal]++
		return
	case winOut:
		if fromClient {
			d.stats.OutOfWindow[DirToReal]++
		} else {
			d.stats.OutOfWindow[DirToClient]++
		}
		return
	case winStaleReset:
		return
	}
	if f.unconfirmed && fromClient {
		f.confirm(sg)
	}
	if p.flags&header.TCPFlagRst == 0 {
		w.learn(sg, fromClient)
	}
	if fromClient && sg.hasAck() {
		// What the client holds counts as carried: its ACK at the mark, and
		// its SACK blocks (segments of a dead director can arrive out of
		// order after the flow was adopted, and fill a hole later), within
		// a window of the mark: a forged block must not raise it by 2^31.
		if !f.marked {
			if !f.hiSrvSeen || seqAfter(sg.ack, f.hiSrv) {
				f.hiSrv = sg.ack
			}
			f.hiSrvSeen, f.marked = true, true
		}
		if edge, ok := sackRightEdge(header.TCP(p.l4)); ok && seqAfter(edge, f.hiSrv) && !seqAfter(edge, f.hiSrv+f.ackSlack()) {
			f.hiSrv = edge
		}
	}
	if !fromClient && (!f.hiSrvSeen || seqAfter(sg.end, f.hiSrv)) {
		f.hiSrv, f.hiSrvSeen = sg.end, true
	}
	d.setState(f, nextState(f.State, fromClient, p.flags))
	if f.unconfirmed {
		d.unconfirmedExpiry(f, fromClient, now)
		return
	}
	f.Expires = now + d.timeouts[f.State]
	d.countSegment(f, now)
}

// setState moves f to state ns, with the accounting of its real's active
// and inactive flows and of the flows by kind and state.
func (d *Director) setState(f *flow, ns State) {
	if ns == f.State {
		return
	}
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

// expireFlow removes the flow in slot, idle past its expiry. A recovered
// flow whose client never confirmed it (a trigger the challenge let
// through, but whose source never acknowledged the real's data) leaves a
// backend connection: the real gets a RST at the last client sequence it
// was sent (its RCV.NXT, which RFC 5961 asks of a RST), so that it does not
// keep the connection until its own keepalive gives up.
func (d *Director) expireFlow(slot uint32, now int64) {
	f := &d.flows.slab[slot]
	if f.Kind == KindRecovered && f.unconfirmed && f.win.flags&winCliSeen != 0 {
		d.emit(buildRST(nil, f.Local.AddrPort(), d.realOf(f), f.win.cli.end-f.SeqDelta, 0, false))
		d.stats.UnconfirmedResets++
	}
	d.removeFlow(slot, now)
	d.stats.FlowsExpired++
}

func (d *Director) removeFlow(slot uint32, now int64) {
	f := &d.flows.slab[slot]
	if f.offloaded {
		d.withdraw(slot)
	}
	if f.win.flags&winSuspect != 0 {
		d.endStale(f, slot)
	}
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
	if f.Kind == KindRecovered {
		// The recovery port was reserved for this flow's real when its
		// dial was asked for: the flow's end frees it, and the flow's
		// place in its client prefix's budget.
		d.rec.ports.release(f.Local, endpointOf(d.realOf(f)))
		d.rec.prefixAdd(f.Client.Addr(), prefixUse{flows: -1})
	}
	d.stats.FlowsBy[f.Kind][f.State]--
	d.flows.remove(slot, d.clientKey(f), d.realKey(f))
}

// Sweep does the Director's periodic work, at most budget steps of each
// kind so that the lock is held briefly: it removes idle flows, resuming
// where the last call stopped, and forgets persistence entries that ran out.
// It returns the flows removed. The daemon calls it from a ticker with its
// coarse clock: nat reads no clock, so every table with deadlines that nat
// keeps is swept here, the miss path's probes and challenges with their
// retries too (missTimers); the packets they send go out through
// Config.Emit.
func (d *Director) Sweep(now int64, budget int) int {
	d.mu.Lock()
	defer func() {
		q := d.takeEmits()
		d.mu.Unlock()
		d.send(q, now)
	}()
	removed := 0
	t := &d.flows
	for i := 0; i < budget && len(t.slab) > 0; i++ {
		if t.cursor >= len(t.slab) {
			t.cursor = 0
		}
		slot := uint32(t.cursor)
		t.cursor++
		if f := &t.slab[slot]; f.used && f.Expires <= now {
			d.expireFlow(slot, now)
			removed++
		}
	}
	d.missTimers(now)
	d.pruneReplacedSyn(now)
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

// flowsChunk bounds the slots Flows reads under one hold of the lock: a
// copy of a million flows in one hold stalled every pump for 300 ms.
const flowsChunk = 4096

// Flows returns a copy of every live flow. The table is read flowsChunk
// slots per hold of the lock, so the copy is not one instant's: a flow
// inserted meanwhile into a slot already read is missing, and one removed
// from a slot not yet read is too. Every flow live throughout is there,
// once (flows never move between slots).
func (d *Director) Flows(now int64) []Flow {
	d.mu.Lock()
	n := d.flows.n
	d.mu.Unlock()
	out := make([]Flow, 0, n)
	for i, more := 0, true; more; {
		out, i, more = d.flowsChunk(out, i, now)
	}
	return out
}

// flowsChunk appends the live flows of slots i to i+flowsChunk to out, under
// one hold of d.mu, and returns where it stopped and whether slots are left.
func (d *Director) flowsChunk(out []Flow, i int, now int64) (_ []Flow, next int, more bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	end := min(i+flowsChunk, len(d.flows.slab))
	for ; i < end; i++ {
		if f := &d.flows.slab[i]; f.used && f.Expires > now {
			out = append(out, d.export(f))
		}
	}
	return out, i, i < len(d.flows.slab)
}
