package nat

import (
	"encoding/binary"
	"net/netip"

	"holdfast/internal/wire"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Offsets inside an ICMP error: 8 bytes of ICMP header (ICMPv4's and
// ICMPv6's alike), then the quoted IP header of the packet that caused it,
// then at least 8 bytes of its transport header (RFC 792; RFC 4443 quotes
// as much as fits in the minimum MTU), which hold the ports for TCP and UDP.
const (
	icmpInnerIP      = header.ICMPv4MinimumSize
	ipChecksumOffset = 10
	ipSrcOffset      = 12
	ipDstOffset      = 16
	ip6SrcOffset     = 8
	ip6DstOffset     = 24
)

// isICMPError reports whether an ICMP message of the packet's family is an
// error that quotes a packet.
func isICMPError(p *packet) bool {
	if len(p.l4) < icmpInnerIP {
		return false
	}
	if p.v6 {
		switch header.ICMPv6Type(p.l4[0]) {
		case header.ICMPv6DstUnreachable, header.ICMPv6PacketTooBig, header.ICMPv6TimeExceeded, header.ICMPv6ParamProblem:
			return true
		}
		return false
	}
	switch header.ICMPv4Type(p.l4[0]) {
	case header.ICMPv4DstUnreachable, header.ICMPv4SrcQuench, header.ICMPv4TimeExceeded, header.ICMPv4ParamProblem:
		return true
	}
	return false
}

// quoted is the packet quoted by an ICMP error: its family, the offset of
// its transport header from the start of the quote, and its (protocol,
// src, dst) with ports.
type quoted struct {
	v6    bool
	proto uint8
	hl    int
	src   netip.AddrPort
	dst   netip.AddrPort
}

// addrOffsets are the offsets of the quoted source and destination
// addresses from the start of the quote.
func (q quoted) addrOffsets() (src, dst int) {
	if q.v6 {
		return ip6SrcOffset, ip6DstOffset
	}
	return ipSrcOffset, ipDstOffset
}

// parseQuoted decodes the quoted header of an ICMP error of p's family.
// ok is false if the quote is too short to hold the IP header (and, for
// IPv6, the extension headers before the transport) and the ports, is of
// the other family, or is not TCP/UDP.
func parseQuoted(p *packet) (q quoted, ok bool) {
	in := p.l4[icmpInnerIP:]
	q.v6 = p.v6
	if !p.v6 {
		if len(in) < header.IPv4MinimumSize || header.IPVersion(in) != header.IPv4Version {
			return q, false
		}
		ip := header.IPv4(in)
		q.hl = int(ip.HeaderLength())
		q.proto = ip.Protocol()
	} else {
		if len(in) < header.IPv6MinimumSize || header.IPVersion(in) != header.IPv6Version {
			return q, false
		}
		next, off := in[6], header.IPv6MinimumSize
		for {
			switch header.IPv6ExtensionHeaderIdentifier(next) {
			case header.IPv6HopByHopOptionsExtHdrIdentifier, header.IPv6DestinationOptionsExtHdrIdentifier, header.IPv6RoutingExtHdrIdentifier:
				if off+2 > len(in) {
					return q, false
				}
				next, off = in[off], off+8*(int(in[off+1])+1)
				continue
			}
			break // a fragment is quoted as such: not a flow's packet
		}
		q.hl, q.proto = off, next
	}
	if q.hl < header.IPv4MinimumSize || len(in) < q.hl+8 || (q.proto != protoTCP && q.proto != protoUDP) {
		return q, false
	}
	ports := in[q.hl:]
	so, do := q.addrOffsets()
	n := 4
	if q.v6 {
		n = 16
	}
	sa, _ := netip.AddrFromSlice(in[so : so+n])
	da, _ := netip.AddrFromSlice(in[do : do+n])
	q.src = netip.AddrPortFrom(sa, binary.BigEndian.Uint16(ports[0:]))
	q.dst = netip.AddrPortFrom(da, binary.BigEndian.Uint16(ports[2:]))
	return q, true
}

// setQuoted rewrites the quoted source (src=true) or destination address and
// port, keeping the quoted IPv4 header checksum and the ICMP checksum right.
// The quoted transport checksum is left alone: the quote is often truncated,
// and neither Linux nor IPVS (ip_vs_nat_icmp) checks or fixes it.
func setQuoted(icmp header.ICMPv4, q quoted, src bool, to netip.AddrPort) {
	in := icmp[icmpInnerIP:]
	xsum := icmp.Checksum()
	so, do := q.addrOffsets()
	addrOff, portOff, old := do, 2, q.dst
	if src {
		addrOff, portOff, old = so, 0, q.src
	}
	if old.Addr() != to.Addr() {
		xsum = putAddr(icmp, icmpInnerIP+addrOff, to.Addr(), xsum)
		if !q.v6 {
			// Fold the address change into the quoted IP checksum, then
			// fold that change into the ICMP checksum (which covers the
			// quote).
			ipsum := binary.BigEndian.Uint16(in[ipChecksumOffset:])
			ipsum = csumReplaceAddr(ipsum, old.Addr().AsSlice(), to.Addr().AsSlice())
			xsum = put16(icmp, icmpInnerIP+ipChecksumOffset, ipsum, xsum)
		}
	}
	xsum = put16(icmp, icmpInnerIP+q.hl+portOff, to.Port(), xsum)
	icmp.SetChecksum(xsum)
}

// setQuotedSeq adds delta to the quoted TCP sequence number.
func setQuotedSeq(icmp header.ICMPv4, q quoted, delta uint32) {
	if q.proto != protoTCP || delta == 0 {
		return
	}
	off := icmpInnerIP + q.hl + header.TCPSeqNumOffset
	seq := binary.BigEndian.Uint32(icmp[off:]) + delta
	icmp.SetChecksum(put32(icmp, off, seq, icmp.Checksum()))
}

// icmpToVIP handles an ICMP message addressed to a VIP: echo requests are
// answered by the director, errors about a flow are translated toward its
// real, anything else is dropped.
func (d *Director) icmpToVIP(p *packet) (wire.Verdict, DropReason, []byte) {
	icmp := header.ICMPv4(p.l4)
	switch {
	case isEchoRequest(p):
		echoReply(p)
		d.stats.EchoReplies++
		return wire.Forward, DropNone, p.ip
	case isICMPError(p):
		// The client reports on a packet VIP -> client: the quote says
		// src=VIP:port, dst=client:port.
		q, ok := parseQuoted(p)
		if !ok {
			return wire.Drop, DropMalformed, nil
		}
		slot, side, found := d.flows.lookup(Key{q.proto, q.dst, q.src})
		if !found || side != sideClient {
			return wire.Drop, DropICMPNoFlow, nil
		}
		f := &d.flows.slab[slot]
		setQuoted(icmp, q, true, d.realOf(f))
		if f.Kind == KindRecovered {
			// The real knows this segment as real -> recovery address,
			// in its own sequence space.
			setQuoted(icmp, q, false, f.Local.AddrPort())
			setQuotedSeq(icmp, q, -f.AckDelta)
		}
		setAddr(p, false, d.realOf(f).Addr())
		d.stats.ICMPErrors++
		return wire.Forward, DropNone, p.ip
	}
	return wire.Drop, DropICMPOther, nil
}

// icmpErrorFromRealSide translates an ICMP error about a packet the director
// sent toward a real (quote: src=client, dst=real), sent by the real itself or
// by a router on the way. ok is false when the message is not such an error;
// the caller then forwards it unchanged.
func (d *Director) icmpErrorFromRealSide(p *packet) (v wire.Verdict, r DropReason, ok bool) {
	if !p.isICMP() || !isICMPError(p) {
		return wire.Forward, DropNone, false
	}
	q, qok := parseQuoted(p)
	if !qok {
		return wire.Forward, DropNone, false
	}
	slot, side, found := d.flows.lookup(Key{q.proto, q.dst, q.src})
	if !found || side != sideReal {
		return wire.Forward, DropNone, false
	}
	if r := p.decodeL4(); r != DropNone {
		return wire.Drop, r, true
	}
	f := &d.flows.slab[slot]
	icmp := header.ICMPv4(p.l4)
	setQuoted(icmp, q, false, d.vipOf(f))
	if f.Kind == KindRecovered {
		// The client knows this segment as client -> VIP, in its own
		// sequence space (Linux ignores an error whose quoted sequence is
		// outside SND.UNA..SND.NXT).
		setQuoted(icmp, q, true, f.Client.AddrPort())
		setQuotedSeq(icmp, q, f.SeqDelta)
		setAddr(p, false, f.Client.Addr())
	}
	if p.src.Addr() == d.realOf(f).Addr() {
		// The client must not learn the real's address, and Linux matches
		// errors to sockets by the quote, not the sender: say it came from
		// the VIP, as IPVS does.
		setAddr(p, true, d.vipOf(f).Addr())
	}
	d.stats.ICMPErrors++
	return wire.Forward, DropNone, true
}

// isEchoRequest reports whether p is an echo request of its family.
func isEchoRequest(p *packet) bool {
	if p.v6 {
		return header.ICMPv6Type(p.l4[0]) == header.ICMPv6EchoRequest && p.l4[1] == 0
	}
	return header.ICMPv4Type(p.l4[0]) == header.ICMPv4Echo && p.l4[1] == 0
}

// echoReply turns an echo request into its reply in place. Swapping the
// addresses leaves the IPv4 header checksum and ICMPv6's pseudo-header sum
// unchanged (the sum is commutative).
func echoReply(p *packet) {
	so, do, n := ipSrcOffset, ipDstOffset, 4
	reply := uint16(header.ICMPv4EchoReply)
	if p.v6 {
		so, do, n, reply = ip6SrcOffset, ip6DstOffset, 16, uint16(header.ICMPv6EchoReply)
	}
	var tmp [16]byte
	copy(tmp[:n], p.ip[so:so+n])
	copy(p.ip[so:so+n], p.ip[do:do+n])
	copy(p.ip[do:do+n], tmp[:n])
	p.src, p.dst = p.dst, p.src
	p.setHopLimit(64)
	icmp := header.ICMPv4(p.l4)
	icmp.SetChecksum(put16(icmp, 0, reply<<8|uint16(icmp.Code()), icmp.Checksum()))
}
