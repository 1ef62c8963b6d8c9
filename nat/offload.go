package nat

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Offload: handing an established flow to a kernel fast path and taking it
// back (docs/fastpath.md, "Ownership of a flow's state"). The Director owns
// every flow; it offloads one by giving its Offloader the flow's tuples, its
// cookie id and its cookie and window state (FastState), and from then on
// the fast path's copy of that state is the authoritative one until the flow
// is taken back: on a SYN, FIN or RST of the flow reaching the Director (the
// fast path punts those), on any of its packets reaching the Director once
// the flow has settled (the fast path punted it: out of window, too large,
// no route), when its real goes down or is removed with rehome, on a
// reload, when it is removed (idle expiry), and when the daemon asks (idle
// in the fast path). Taking it back imports the fast path's state into the
// flow, so that the TUN path goes on from where the fast path was.
//
// nat still does no I/O: the Offloader is the daemon's, called with the
// Director's lock held (as the Dialer is), and must not call back into the
// Director.

// Offloader is the fast path as the Director sees it.
type Offloader interface {
	// Offload puts f into the fast path. An error leaves the flow on the
	// TUN path (it may qualify again later).
	Offload(f OffloadFlow) error
	// Withdraw removes f from the fast path and returns the state the
	// fast path kept for it; ok is false when it had none (nothing is
	// imported then).
	Withdraw(f OffloadFlow) (s FastState, ok bool)
}

// OffloadConfig is when the Director offloads a flow.
type OffloadConfig struct {
	// Segments: a flow qualifies once it has carried this many segments
	// (both directions) through the Director within about a second (a
	// clock tick of 2^30 ns). 0 turns offloading off.
	Segments int
	// IPv6 says whether the fast path carries IPv6 flows.
	IPv6 bool
	// Settle is how long (ns) after its offload a flow's packets other
	// than SYN, FIN and RST still reaching the Director are taken as ones
	// that were on their way through the TUN before the offload: they are
	// handled with the flow's own state and do not take it back.
	Settle int64
}

// OffloadFlow names an offloaded flow (IPv4 or IPv6 TCP): client <-> VIP on
// the client's side, client <-> Real on the real's.
type OffloadFlow struct {
	Client, VIP, Real netip.AddrPort
	// CookieID is the real's id in the timestamp cookie (0 with cookies
	// off, or a real beyond the ids).
	CookieID uint16
	// State is the flow's state at the offload.
	State FastState
}

// FastState is what of a flow's state the fast path keeps and updates: its
// timestamp cookie and its window tracking.
type FastState struct {
	Cookie FastCookie
	Window FastWindow
}

// FastCookie is a flow's cookie state (cookie.go's cookieFlow): every
// value in the client's space.
type FastCookie struct {
	Last, Raw     uint32 // the last TSval sent to the client, the largest raw TSval of its bucket (with Sent)
	Prev, PrevRaw uint32 // the same for the bucket before (with HasPrev)
	SynAck        uint32 // the raw TSval of the real's SYN-ACK (with HasSynAck)
	Sent          bool
	HasPrev       bool
	HasSynAck     bool
	// RoundUp: an echo before the first rewritten TSval is restored by
	// rounding up (a flow picked up mid-stream, or whose SYN-ACK did not
	// cross here); else it passes raw. Derived from the flow, not
	// imported.
	RoundUp bool
}

// FastDir is one direction of a flow's window tracking (window.go's
// dirWin), in the client's sequence spaces.
type FastDir struct {
	End, Ack, MaxWin uint32
	Seen             bool // End and MaxWin are valid
	Acked            bool // Ack is valid
}

// FastWindow is a flow's window tracking as the fast path checks and
// learns it (window.go's classify, for a segment without SYN, FIN or RST of
// a flow that is not suspect).
type FastWindow struct {
	Cli, Srv FastDir
	// CliShift and SrvShift are the shifts that turn the window field of
	// a client's and of a real's segment into bytes (segOf).
	CliShift, SrvShift uint8
	// Liberal: a flow picked up mid-stream (unknown window scale), whose
	// acks may pass what crossed here by AckSlack.
	Liberal bool
	// HiSrv is the stale mark (flow.hiSrv): the highest server sequence
	// forwarded, in the client's space (with HiSrvSeen). A client's ack
	// beyond it is for the Director to judge.
	HiSrv     uint32
	HiSrvSeen bool
	Marked    bool
}

// offload is the Director's offloading state.
type offload struct {
	o   Offloader
	cfg OffloadConfig
	// cand are the client keys of flows that qualified since the last
	// OffloadPending (bounded: cap is set once, so that appending never
	// allocates on the packet path).
	cand []fkey
	// since maps the slots of offloaded flows to the time of their
	// offload.
	since map[uint32]int64
}

// offloadCandidates bounds the flows queued for offload between two
// OffloadPending calls; a flow that does not fit qualifies again later.
const offloadCandidates = 4096

// offloadTick is the window of OffloadConfig.Segments: now >> 30, about a
// second.
const offloadTick = 30

// SetOffload gives the Director its fast path. Call it before serving.
func (d *Director) SetOffload(o Offloader, cfg OffloadConfig) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.off = offload{o: o, cfg: cfg, cand: make([]fkey, 0, offloadCandidates), since: make(map[uint32]int64)}
	if o == nil {
		d.off.cfg.Segments = 0
	}
}

// offloadable reports whether f may be carried by the fast path: an
// established TCP flow of plain NAT (no deltas) whose state needs no
// judgement the fast path cannot make, on a real that stays.
func (d *Director) offloadable(f *flow) bool {
	if f.Proto != protoTCP || f.State != StateEstablished || f.Kind == KindRecovered ||
		f.unconfirmed || f.tentative || !f.marked || f.win.flags&(winSuspect|winHandshake) != 0 || d.leaving(f) {
		return false
	}
	return d.off.cfg.IPv6 || f.Client.Addr().Is4()
}

// countSegment counts p's segment on f towards its offload (track).
func (d *Director) countSegment(f *flow, now int64) {
	if d.off.cfg.Segments == 0 || f.offloaded {
		return
	}
	if tick := uint8(now >> offloadTick); tick != f.segTick {
		f.segTick, f.segs = tick, 0
	}
	if f.segs < 0xff {
		f.segs++
	}
	if int(f.segs) == d.off.cfg.Segments && len(d.off.cand) < cap(d.off.cand) && d.offloadable(f) {
		d.off.cand = append(d.off.cand, d.clientKey(f))
	}
}

// OffloadPending offloads the flows that qualified since the last call and
// are still offloadable, and returns how many it offloaded.
func (d *Director) OffloadPending(now int64) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, k := range d.off.cand {
		v, ok := d.flows.get(k)
		if !ok || int(v&1) != sideClient {
			continue
		}
		slot := v >> 1
		f := &d.flows.slab[slot]
		if f.offloaded || f.Expires <= now || !d.offloadable(f) {
			continue
		}
		if d.off.o.Offload(d.offloadFlow(f)) != nil {
			continue
		}
		f.offloaded = true
		d.off.since[slot] = now
		n++
	}
	d.off.cand = d.off.cand[:0]
	return n
}

// offloadFlow is f as the Offloader takes it.
func (d *Director) offloadFlow(f *flow) OffloadFlow {
	return OffloadFlow{Client: f.Client.AddrPort(), VIP: d.vipOf(f), Real: d.realOf(f),
		CookieID: d.services[f.svc].Reals[f.real].CookieID, State: f.fastState()}
}

// seenOffloaded is called for a packet of flow slot that reached the
// Director (the client's or the real's side found it): an offloaded flow
// is taken back unless the packet is one that was on its way before the
// offload (see OffloadConfig.Settle).
func (d *Director) seenOffloaded(slot uint32, p *packet, now int64) {
	f := &d.flows.slab[slot]
	if !f.offloaded {
		return
	}
	if p.proto == protoTCP && p.flags&(header.TCPFlagSyn|header.TCPFlagFin|header.TCPFlagRst) == 0 &&
		now-d.off.since[slot] < d.off.cfg.Settle {
		return
	}
	d.withdraw(slot)
}

// withdraw takes the offloaded flow in slot back from the fast path and
// imports the state the fast path kept.
func (d *Director) withdraw(slot uint32) {
	f := &d.flows.slab[slot]
	if !f.offloaded {
		return
	}
	if s, ok := d.off.o.Withdraw(d.offloadFlow(f)); ok {
		f.importFast(s)
	}
	f.offloaded, f.segs = false, 0
	delete(d.off.since, slot)
}

// withdrawWhere takes back every offloaded flow for which take says so.
func (d *Director) withdrawWhere(take func(f *flow) bool) {
	for slot := range d.off.since {
		if take(&d.flows.slab[slot]) {
			d.withdraw(slot)
		}
	}
}

// Withdraw takes the flow of client and vip back from the fast path (the
// daemon's call for a flow idle there); false if it was not offloaded.
func (d *Director) Withdraw(proto uint8, client, vip netip.AddrPort) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	slot, side, ok := d.flows.lookup(Key{proto, client, vip})
	if !ok || side != sideClient || !d.flows.slab[slot].offloaded {
		return false
	}
	d.withdraw(slot)
	return true
}

// WithdrawAll takes every offloaded flow back (the fast path stops).
func (d *Director) WithdrawAll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.withdrawWhere(func(*flow) bool { return true })
}

// Offloaded returns the number of flows in the fast path.
func (d *Director) Offloaded() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.off.since)
}

// FastUpdate is what the fast path carried of one offloaded flow since the
// last report: segments and bytes each way (deltas).
type FastUpdate struct {
	Proto                 uint8
	Client, VIP           netip.AddrPort
	PacketsIn, PacketsOut uint64 // to the real, to the client
	BytesIn, BytesOut     uint64
}

// FastCarried accounts what the fast path carried (the daemon's sweep
// reads it from the map): a flow that carried anything has its idle timer
// refreshed as its packets would have, and its real's counters grow. It
// returns the flows it found offloaded.
func (d *Director) FastCarried(us []FastUpdate, now int64) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, u := range us {
		slot, side, ok := d.flows.lookup(Key{u.Proto, u.Client, u.VIP})
		if !ok || side != sideClient {
			continue
		}
		f := &d.flows.slab[slot]
		if !f.offloaded {
			continue
		}
		n++
		r := d.services[f.svc].Reals[f.real]
		r.PacketsIn += u.PacketsIn
		r.PacketsOut += u.PacketsOut
		r.BytesIn += u.BytesIn
		r.BytesOut += u.BytesOut
		if u.PacketsIn+u.PacketsOut > 0 {
			f.Expires = now + d.timeouts[f.State]
		}
	}
	return n
}

// fastState exports f's cookie and window state.
func (f *flow) fastState() FastState {
	c := &f.ck
	w := &f.win
	s := FastState{
		Cookie: FastCookie{
			Last: c.last, Raw: c.raw, Prev: c.prev, PrevRaw: c.prevRaw, SynAck: c.synAck,
			Sent: c.flags&ckSent != 0, HasPrev: c.flags&ckPrev != 0, HasSynAck: c.flags&ckSynAck != 0,
			// cookieToReal: before the first rewrite, a plain flow
			// whose SYN-ACK the director saw nothing of passes the echo
			// raw; every other flow (not recovered) rounds up.
			RoundUp: f.Kind != KindRecovered && (f.Kind != KindPlain || f.hs.view >= 0),
		},
		Window: FastWindow{
			Cli:     FastDir{End: w.cli.end, Ack: w.cli.ack, MaxWin: w.cli.maxWin, Seen: w.flags&winCliSeen != 0, Acked: w.flags&winCliAcked != 0},
			Srv:     FastDir{End: w.srv.end, Ack: w.srv.ack, MaxWin: w.srv.maxWin, Seen: w.flags&winSrvSeen != 0, Acked: w.flags&winSrvAcked != 0},
			Liberal: f.liberal(), HiSrv: f.hiSrv, HiSrvSeen: f.hiSrvSeen, Marked: f.marked,
		},
	}
	s.Window.CliShift, s.Window.SrvShift = maxWScale, maxWScale
	if f.hs.known {
		s.Window.CliShift = uint8(min(max(f.hs.ws, 0), maxWScale))
		s.Window.SrvShift = uint8(min(max(f.hs.view, 0), maxWScale))
	}
	return s
}

// importFast merges s, the fast path's state of f, into f's. Every field
// is a maximum of what was seen (a direction's end, ack and window, the
// stale mark), learned from in-window segments only: the merge is the
// larger of the two, so that what the Director itself learned from
// packets still reaching it after the offload (OffloadConfig.Settle) is
// not lost. The cookie state is the one whose last TSval is the later.
// The shifts and Liberal follow from the flow's handshake, and RoundUp from
// its kind: they are not imported.
func (f *flow) importFast(s FastState) {
	c := &f.ck
	if sc := s.Cookie; sc.Sent && (c.flags&ckSent == 0 || !seqAfter(c.last, sc.Last)) || !sc.Sent && c.flags&ckSent == 0 {
		c.last, c.raw, c.prev, c.prevRaw = sc.Last, sc.Raw, sc.Prev, sc.PrevRaw
		c.flags &^= ckSent | ckPrev
		if sc.Sent {
			c.flags |= ckSent
		}
		if sc.HasPrev {
			c.flags |= ckPrev
		}
	}
	if s.Cookie.HasSynAck && c.flags&ckSynAck == 0 {
		c.synAck = s.Cookie.SynAck
		c.flags |= ckSynAck
	}
	w := &f.win
	mergeDir(&w.cli, &w.flags, winCliSeen, winCliAcked, s.Window.Cli)
	mergeDir(&w.srv, &w.flags, winSrvSeen, winSrvAcked, s.Window.Srv)
	if s.Window.HiSrvSeen && (!f.hiSrvSeen || seqAfter(s.Window.HiSrv, f.hiSrv)) {
		f.hiSrv, f.hiSrvSeen = s.Window.HiSrv, true
	}
	f.marked = f.marked || s.Window.Marked
}

// mergeDir merges the fast path's d into one direction of a flow (seen and
// acked its flags).
func mergeDir(dw *dirWin, flags *winFlags, seen, acked winFlags, d FastDir) {
	if d.Seen {
		if *flags&seen == 0 || seqAfter(d.End, dw.end) {
			dw.end = d.End
		}
		dw.maxWin = max(dw.maxWin, d.MaxWin)
		*flags |= seen
	}
	if d.Acked && (*flags&acked == 0 || seqAfter(d.Ack, dw.ack)) {
		dw.ack = d.Ack
		*flags |= acked
	}
}

// FastStateOf returns the cookie and window state of the flow of client
// and vip as the Director holds it (for an offloaded flow, as it was at
// the offload, or as the Director's own handling of the packets that
// still reach it moved it), for tests that hold the fast path to nat.
func (d *Director) FastStateOf(proto uint8, client, vip netip.AddrPort) (FastState, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	slot, side, ok := d.flows.lookup(Key{proto, client, vip})
	if !ok || side != sideClient {
		return FastState{}, false
	}
	return d.flows.slab[slot].fastState(), true
}
