package nat

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"holdfast/balancer"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// The timestamp cookie (DESIGN.md section 5, item 1). The director writes a
// small id of the flow's real into the low k bits of the server's TSval on
// its way to the client, and restores the client's TSecr on its way back.
// The client echoes the TSval in every segment, so any director, with or
// without state, reads from the TSecr which real holds the connection
// (cookieReal).
//
// Encoding, with k = Config.CookieBits and the bucket of a value its bits
// above the low k:
//
//	T' = (((T >> k) + 1) << k) | id
//
// T' is in the bucket after T's: always above T, monotone in T, the same on
// every director. A flow whose id changes (recovered flows use id 0, "none")
// would go below the last TSval the client saw, which the client's PAWS drops
// (RFC 7323 section 5; Linux's TCP_PAWS_WINDOW is 1): the flow then steps up
// to the last value's bucket, or one more. The SYN-ACK's TSval is left alone
// (Linux SYN cookies read wscale, SACK and ECN from its low bits).
//
// Restore: the client echoes ts_recent, which Linux updates only for
// segments at or below rcv_wup, so the echo is often older than the last
// rewrite. A flow keeps the largest raw TSval sent in each of its last two
// buckets, and an echo in one of them is restored to it (never past a value
// the real sent). An echo with no record (a flow that moved here, replies
// through another director) is rounded up to the end of the raw bucket it
// came from, (T' &^ mask) - 1: Linux discards the negative RTT samples that
// may give, where rounding down could fake a spurious retransmission
// (tcp_packet_delayed) and undo a cwnd reduction. An echo this director
// cannot attribute to a rewrite passes unchanged: any echo before the flow's
// first rewritten TSval where the SYN-ACK crossed here, and one that equals
// the raw SYN-ACK TSval (the final ACK; recent kernels reject a SYN_RECV ACK
// whose TSecr they did not send). Where the SYN-ACK went through another
// director (ECMP hashes the two directions apart), the client's handshake
// ACK tells the SYN-ACK's TSval, and every other echo is rounded up.
//
// Recovered flows are encoded with id 0 after their translation and
// restored before it: the cookie works in the client's space. All
// arithmetic is modulo 2^32: buckets wrap with the values, and order is
// sequence-space order (seqAfter).

// MaxCookieBits is the largest Config.CookieBits: a clock in steps of 2^9 ms
// is still within RFC 7323's 1 ms to 1 s per tick.
const MaxCookieBits = 9

// DefaultCookieBits is the cookie width the CLI starts with: ids 1..15 (15
// reals a service) and a clock in steps of 16 ms.
const DefaultCookieBits = 4

// cookieFlow is a flow's cookie state (20 bytes and the flags). All values
// are in the client's space (after a recovered flow's translation).
type cookieFlow struct {
	last    uint32 // the last TSval sent to the client (valid with ckSent)
	raw     uint32 // the largest raw TSval sent in last's bucket
	prev    uint32 // a TSval sent in the bucket before (valid with ckPrev)
	prevRaw uint32 // the largest raw TSval sent in prev's bucket
	synAck  uint32 // the raw TSval of the real's SYN-ACK (valid with ckSynAck)
	flags   cookieFlags
}

type cookieFlags uint8

const (
	ckSent   cookieFlags = 1 << iota // a rewritten TSval was sent to the client
	ckPrev                           // prev and prevRaw are valid
	ckSynAck                         // synAck is valid
)

// cookieMask is the mask of the id bits (0 with cookies off).
func (d *Director) cookieMask() uint32 { return 1<<d.cookieBits - 1 }

// cookieEncode is T' for raw TSval t and id, before the PAWS step.
func cookieEncode(t uint32, id uint16, k uint8) uint32 {
	return ((t>>k)+1)<<k | uint32(id)
}

// cookieRoundUp is the end of the raw bucket a T' came from: the largest
// raw TSval that encodes into the bucket of v, (v &^ mask) - 1.
func cookieRoundUp(v uint32, k uint8) uint32 {
	return v&^(1<<k-1) - 1
}

// tsOption returns the offset in t of a timestamp option's kind byte, or
// -1. Linux puts it first, after two NOPs: that layout is checked before
// the options are walked.
func tsOption(t header.TCP) int {
	hl := int(t.DataOffset())
	if hl < header.TCPMinimumSize+header.TCPOptionTSLength {
		return -1
	}
	if binary.BigEndian.Uint32(t[header.TCPMinimumSize:]) == 0x0101080a {
		return header.TCPMinimumSize + 2
	}
	for at, l, kind := nextOption(t, header.TCPMinimumSize); l > 0; at, l, kind = nextOption(t, at+l) {
		if kind == header.TCPOptionTS && l == header.TCPOptionTSLength {
			return at
		}
	}
	return -1
}

// putTS32 is put32 for a timestamp field: where it is 16-bit aligned (the
// layout Linux sends, NOP NOP TS), both words are folded into the checksum
// at once (RFC 1624 eqn. 3, as csumReplace16); else put32 does it.
func putTS32(b []byte, off int, v uint32, xsum uint16) uint16 {
	if off&1 != 0 {
		return put32(b, off, v, xsum)
	}
	old := binary.BigEndian.Uint32(b[off:])
	binary.BigEndian.PutUint32(b[off:], v)
	if old == v {
		return xsum
	}
	s := uint32(^xsum) + uint32(^uint16(old>>16)) + uint32(^uint16(old)) + v>>16 + v&0xffff
	s = s&0xffff + s>>16
	s = s&0xffff + s>>16
	return ^uint16(s)
}

// cookieToClient writes the cookie of f, whose real's id is realID, into the
// TSval of p, a real's segment on its way to the client (after a recovered
// flow's translation). A SYN-ACK is left alone; its TSval is recorded.
func (d *Director) cookieToClient(p *packet, f *flow, realID uint16) {
	k := d.cookieBits
	if k == 0 || p.proto != protoTCP || (f.Kind == KindRecovered && !f.TS) {
		return
	}
	t := header.TCP(p.l4)
	at := tsOption(t)
	if at < 0 {
		return
	}
	raw := binary.BigEndian.Uint32(t[at+2:])
	c := &f.ck
	if p.flags&header.TCPFlagSyn != 0 {
		c.synAck, c.flags = raw, c.flags|ckSynAck
		return
	}
	var id uint16
	if f.Kind != KindRecovered {
		id = realID
	}
	v := cookieEncode(raw, id, k)
	if c.flags&ckSent != 0 && seqAfter(c.last, v) {
		// The id changed (or the raw clock went back): step up to the
		// last value's bucket, or one more, so that the client's TSval
		// never decreases.
		v = c.last&^d.cookieMask() | uint32(id)
		if seqAfter(c.last, v) {
			v += 1 << k
		}
	}
	switch b := v >> k; {
	case c.flags&ckSent == 0:
		c.raw = raw
	case b == c.last>>k:
		if seqAfter(raw, c.raw) {
			c.raw = raw
		}
	default:
		c.prev, c.prevRaw, c.raw = c.last, c.raw, raw
		c.flags |= ckPrev
	}
	c.last = v
	c.flags |= ckSent
	xsum := putTS32(t, at+2, v, t.Checksum())
	if !p.partial {
		// A partial checksum does not cover the header yet (as in
		// xlate.apply).
		t.SetChecksum(xsum)
	}
}

// cookieToReal restores the TSecr of p, a client's segment on its way to
// f's real (before a recovered flow's translation).
func (d *Director) cookieToReal(p *packet, f *flow) {
	k := d.cookieBits
	c := &f.ck
	// TSecr is meaningful only on an ACK (RFC 7323, section 3.2). Nothing
	// is restored on a recovered flow before its first rewrite (its
	// TSecrDelta maps the raw echo of the trigger), nor on a SYN's flow
	// while the SYN-ACK's TSval is unknown here (the echo may be it, or
	// raw). A flow whose handshake crossed here knows it; a SYN's flow
	// whose replies go through another director (behind ECMP) learns it
	// from the client's handshake ACK (cookieSynAckEcho), and from then on
	// restores what the other director wrote by rounding up; so does a
	// flow picked up mid-stream (adopted, steered: a moved flow).
	if k == 0 || p.flags&(header.TCPFlagAck|header.TCPFlagSyn) != header.TCPFlagAck || p.proto != protoTCP ||
		c.flags&ckSent == 0 && (f.Kind == KindPlain && f.hs.view < 0 && c.flags&ckSynAck == 0 || f.Kind == KindRecovered) {
		return
	}
	t := header.TCP(p.l4)
	at := tsOption(t)
	if at < 0 {
		return
	}
	e := binary.BigEndian.Uint32(t[at+6:])
	if c.flags&ckSynAck != 0 && e == c.synAck {
		// The echo of the SYN-ACK, whatever came since: the restore
		// changes no flow state (a client's segment could be forged).
		// After a wrap of the real's clock a rewritten value may equal
		// it, and passes raw: off by less than two buckets.
		return
	}
	var v uint32
	switch b := e >> k; {
	case b == c.last>>k:
		v = c.raw
	case c.flags&ckPrev != 0 && b == c.prev>>k:
		v = c.prevRaw
	default:
		v = cookieRoundUp(e, k)
	}
	xsum := putTS32(t, at+6, v, t.Checksum())
	if !p.partial {
		t.SetChecksum(xsum)
	}
}

// cookieSynAckEcho records the TSecr of p, the client's handshake ACK on
// f, a SYN's flow whose SYN-ACK went through another director: it is the
// real's SYN-ACK TSval, raw (the SYN-ACK is never rewritten), which the
// client echoes until the real's first rewritten TSval reaches it and
// which must reach the real unchanged (a real in SYN_RECV rejects an ACK
// whose TSecr it did not send; Linux SYN cookies read options from its
// low bits). Any later echo on the flow is one another director wrote.
func (d *Director) cookieSynAckEcho(p *packet, f *flow) {
	if d.cookieBits == 0 || f.ck.flags&(ckSynAck|ckSent) != 0 {
		return
	}
	t := header.TCP(p.l4)
	if at := tsOption(t); at >= 0 {
		f.ck.synAck = binary.BigEndian.Uint32(t[at+6:])
		f.ck.flags |= ckSynAck
	}
}

// cookieReal is the index in service si's reals of the real whose cookie id
// is tsecr's low bits. ok is false with cookies off, for id 0 ("none"), for
// an id no real has, and for a real that is down or being re-homed from
// (its connections move). A removed real still serves its flows: it is
// found while it keeps its id (see AddReal).
func (d *Director) cookieReal(si uint16, tsecr uint32) (ri int, ok bool) {
	if d.cookieBits == 0 {
		return -1, false
	}
	id := uint16(tsecr & d.cookieMask())
	if id == 0 {
		return -1, false
	}
	ri = -1
	for i, r := range d.services[si].Reals {
		if r.CookieID != id {
			continue
		}
		ri = i
		if !r.Removed {
			break
		}
	}
	if ri < 0 {
		return -1, false
	}
	if r := d.services[si].Reals[ri]; r.Down || r.Rehome {
		return -1, false
	}
	return ri, true
}

// newRealCookieID is the cookie id of a real new to service s at runtime
// (AddReal, a reload): id if given (0: derived from addr). An id is never
// reused for another real while flows may carry it: the reals of s for
// which holds says so keep theirs, and so does a removed real that still
// has flows; added maps the ids of reals added earlier by the same change.
// A derived id that collides while every id is held gives 0 (no cookie: the
// real's flows are found by probe), as for the reals beyond the ids at
// start; any other collision is an error naming the other real.
func (d *Director) newRealCookieID(s *service, addr netip.AddrPort, id uint16, holds func(*balancer.Real) bool, added map[uint16]netip.AddrPort) (uint16, error) {
	k := int(d.cookieBits)
	if k == 0 {
		return 0, nil
	}
	max := 1<<k - 1
	if id > uint16(max) {
		return 0, fmt.Errorf("real %s: cookie id %d: expected 1..%d with %d cookie bits", addr, id, max, k)
	}
	want := id
	if want == 0 {
		want = balancer.DerivedCookieID(addr, k)
	}
	held := make(map[uint16]bool, max)
	var other netip.AddrPort
	var otherFlows int
	for _, r := range s.Reals {
		if r.CookieID == 0 || (!holds(r) && r.Active+r.Inactive == 0) {
			continue
		}
		held[r.CookieID] = true
		if r.CookieID == want {
			other, otherFlows = r.Addr, r.Active+r.Inactive
			if holds(r) {
				otherFlows = -1
			}
		}
	}
	for aid, a := range added {
		held[aid] = true
		if aid == want {
			other, otherFlows = a, -1
		}
	}
	switch {
	case !other.IsValid():
		return want, nil
	case id == 0 && len(held) >= max:
		return 0, nil
	case otherFlows >= 0:
		return 0, fmt.Errorf("real %s: cookie id %d is real %s's, removed but still with %d flows; give the new real its own with ,id=N (1..%d)", addr, want, other, otherFlows, max)
	}
	return 0, fmt.Errorf("real %s: cookie id %d is real %s's; give the new real its own with ,id=N (1..%d)", addr, want, other, max)
}

// readdCookieID checks that r, a removed real of s added again, may take
// back its cookie id: given id (0: any) is its own, and no other real took
// it meanwhile (one may once r had no flows left).
func (d *Director) readdCookieID(s *service, r *balancer.Real, id uint16) error {
	if d.cookieBits == 0 {
		return nil
	}
	if id != 0 && id != r.CookieID {
		return fmt.Errorf("real %s: cookie id %d: the real keeps its id %d", r.Addr, id, r.CookieID)
	}
	for _, o := range s.Reals {
		if o != r && r.CookieID != 0 && o.CookieID == r.CookieID && (!o.Removed || o.Active+o.Inactive > 0) {
			return fmt.Errorf("real %s: its cookie id %d is now real %s's", r.Addr, r.CookieID, o.Addr)
		}
	}
	return nil
}

// reloadCookieIDs checks the cookie ids of a reload (Reconfigure) before
// anything changes. A new service's reals get theirs as at start
// (balancer.AssignCookieIDs). In a service that stays, a real that stays
// keeps its id, a real removed keeps it while it has flows, and each new
// real gets one by newRealCookieID: the result maps the new reals (the
// reload's Real structs) to their ids.
func (d *Director) reloadCookieIDs(svcs []*balancer.Service) (map[*balancer.Real]uint16, error) {
	ids := make(map[*balancer.Real]uint16)
	for _, ns := range svcs {
		k := svcKey{uint8(ns.Proto), ns.VIP}
		si, ok := d.bySvc[k]
		if !ok {
			si, ok = d.goneService(k)
		}
		if !ok {
			if _, err := balancer.AssignCookieIDs(ns, int(d.cookieBits)); err != nil {
				return nil, err
			}
			continue
		}
		s := &d.services[si]
		stays := make(map[netip.AddrPort]bool, len(ns.Reals))
		for _, r := range ns.Reals {
			stays[r.Addr] = true
		}
		holds := func(r *balancer.Real) bool { return stays[r.Addr] }
		for _, r := range s.Reals {
			if stays[r.Addr] && r.Removed {
				if err := d.readdCookieID(s, r, 0); err != nil {
					return nil, fmt.Errorf("service %s: %w", s, err)
				}
			}
		}
		added := make(map[uint16]netip.AddrPort)
		for _, r := range ns.Reals {
			if d.realIndex(si, r.Addr) >= 0 {
				continue
			}
			var given uint16
			if r.CookieIDSet {
				given = r.CookieID
			}
			id, err := d.newRealCookieID(s, r.Addr, given, holds, added)
			if err != nil {
				return nil, fmt.Errorf("service %s: %w", s, err)
			}
			ids[r] = id
			if id != 0 {
				added[id] = r.Addr
			}
		}
	}
	return ids, nil
}
