package nat

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
)

// Sequence-space translation of recovered flows (DESIGN.md section 2):
//
//	client -> real: seq -= SeqDelta, ack -= AckDelta, TSval -= TSvalDelta,
//	                TSecr -= TSecrDelta, SACK edges -= AckDelta
//	real -> client: seq += AckDelta, ack += SeqDelta, TSval += TSecrDelta,
//	                TSecr += TSvalDelta, SACK edges += SeqDelta
//
// and the window field rescaled where both shifts are known and differ. All
// arithmetic is modulo 2^32 (seqnum wraps); every changed word is folded into
// the TCP checksum incrementally.

// put32 writes v at b[off:off+4] and returns the stored checksum xsum updated
// for the change. off may be odd (TCP options are byte-aligned): the change is
// folded in over the 16-bit words of b that cover it. b must start on a
// 16-bit boundary of the checksummed data (a TCP header does).
func put32(b []byte, off int, v uint32, xsum uint16) uint16 {
	start := off &^ 1
	end := (off + 5) &^ 1
	var old [6]byte
	n := copy(old[:], b[start:end])
	binary.BigEndian.PutUint32(b[off:], v)
	for i := 0; i < n; i += 2 {
		xsum = csumReplace16(xsum, binary.BigEndian.Uint16(old[i:]), binary.BigEndian.Uint16(b[start+i:]))
	}
	return xsum
}

// shift describes a window rescale: the sender's shift and the receiver's
// idea of it. -1 means unknown; no rescale happens unless both are known.
type shift struct{ in, out int8 }

func (s shift) active() bool { return s.in >= 0 && s.out >= 0 && s.in != s.out }

// rescale converts a window field from the sender's scale to the one the
// receiver applies: rounded up, clamped to 16 bits, and never 0 for a
// non-zero window (a zero window stalls the sender).
func (s shift) rescale(w uint16) uint16 {
	if w == 0 {
		return 0
	}
	bytes := uint64(w) << uint(s.in)
	unit := uint64(1) << uint(s.out)
	v := (bytes + unit - 1) >> uint(s.out)
	switch {
	case v > 0xffff:
		return 0xffff
	case v == 0:
		return 1
	}
	return uint16(v)
}

// xlate holds the additive constants for one direction: values are added
// (mod 2^32) to seq, ack, TSval, TSecr and SACK edges.
type xlate struct {
	seq, ack, tsval, tsecr, sack uint32
	ts                           bool
	win                          shift
}

// toServer returns the translation client -> real of f.
func (f *flow) toServer() xlate {
	return xlate{
		seq: -f.SeqDelta, ack: -f.AckDelta,
		tsval: -f.TSvalDelta, tsecr: -f.TSecrDelta,
		sack: -f.AckDelta, ts: f.TS, win: f.winToServer,
	}
}

// toClient returns the translation real -> client of f.
func (f *flow) toClient() xlate {
	return xlate{
		seq: f.AckDelta, ack: f.SeqDelta,
		tsval: f.TSecrDelta, tsecr: f.TSvalDelta,
		sack: f.SeqDelta, ts: f.TS, win: f.winToClient,
	}
}

// apply translates a decoded TCP segment in place.
func (x xlate) apply(p *packet) {
	t := header.TCP(p.l4)
	xsum := t.Checksum()
	p.seq += x.seq
	xsum = put32(t, header.TCPSeqNumOffset, p.seq, xsum)
	if p.flags&header.TCPFlagAck != 0 {
		p.ack += x.ack
		xsum = put32(t, header.TCPAckNumOffset, p.ack, xsum)
	}
	if x.win.active() && p.flags&header.TCPFlagSyn == 0 {
		w := t.WindowSize()
		xsum = put16(t, header.TCPWinSizeOffset, x.win.rescale(w), xsum)
	}
	for at, l, kind := nextOption(t, header.TCPMinimumSize); l > 0; at, l, kind = nextOption(t, at+l) {
		switch {
		case kind == header.TCPOptionTS && l == header.TCPOptionTSLength && x.ts:
			v := binary.BigEndian.Uint32(t[at+2:]) + x.tsval
			xsum = put32(t, at+2, v, xsum)
			// TSecr is only meaningful on an ACK (RFC 7323, section 3.2).
			if p.flags&header.TCPFlagAck != 0 {
				xsum = put32(t, at+6, binary.BigEndian.Uint32(t[at+6:])+x.tsecr, xsum)
			}
		case kind == header.TCPOptionSACK && (l-2)%8 == 0:
			for j := at + 2; j < at+l; j += 4 {
				xsum = put32(t, j, binary.BigEndian.Uint32(t[j:])+x.sack, xsum)
			}
		}
	}
	if !p.partial {
		// A partial checksum does not cover the header yet: the kernel
		// sums the rewritten words when it completes it.
		t.SetChecksum(xsum)
	}
}

// tcpOptions reports whether the segment carries SACK blocks, and its
// timestamp option.
func tcpOptions(t header.TCP) (sack, ts bool, tsval, tsecr uint32) {
	for at, l, kind := nextOption(t, header.TCPMinimumSize); l > 0; at, l, kind = nextOption(t, at+l) {
		switch {
		case kind == header.TCPOptionSACK && l > 2:
			sack = true
		case kind == header.TCPOptionTS && l == header.TCPOptionTSLength:
			ts = true
			tsval = binary.BigEndian.Uint32(t[at+2:])
			tsecr = binary.BigEndian.Uint32(t[at+6:])
		}
	}
	return sack, ts, tsval, tsecr
}

// sackRightEdge returns the highest right edge of the segment's SACK blocks.
func sackRightEdge(t header.TCP) (edge uint32, ok bool) {
	for at, l, kind := nextOption(t, header.TCPMinimumSize); l > 0; at, l, kind = nextOption(t, at+l) {
		if kind == header.TCPOptionSACK && (l-2)%8 == 0 {
			for j := at + 6; j < at+l; j += 8 {
				if e := binary.BigEndian.Uint32(t[j:]); !ok || seqAfter(e, edge) {
					edge, ok = e, true
				}
			}
		}
	}
	return edge, ok
}

// nextOption finds the first TCP option with a length field at or after
// offset i of the header: its offset, length and kind. l is 0 at the end of
// the options or at a malformed one (the rest is then left alone).
func nextOption(t header.TCP, i int) (at, l int, kind byte) {
	hl := int(t.DataOffset())
	for i < hl {
		switch t[i] {
		case header.TCPOptionEOL:
			return i, 0, 0
		case header.TCPOptionNOP:
			i++
			continue
		}
		if i+1 >= hl || t[i+1] < 2 || i+int(t[i+1]) > hl {
			return i, 0, 0
		}
		return i, int(t[i+1]), t[i]
	}
	return i, 0, 0
}

// segEnd is the sequence number after a segment (payload, SYN and FIN each
// take sequence space).
func segEnd(p *packet) uint32 {
	e := p.seq + uint32(p.data)
	if p.flags&header.TCPFlagSyn != 0 {
		e++
	}
	if p.flags&header.TCPFlagFin != 0 {
		e++
	}
	return e
}

// seqAfter reports a > b in sequence space.
func seqAfter(a, b uint32) bool { return seqnum.Value(b).LessThan(seqnum.Value(a)) }
