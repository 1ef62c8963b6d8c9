package nat

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// IP protocol numbers handled here.
const (
	protoICMP  = uint8(header.ICMPv4ProtocolNumber)
	protoTCP   = uint8(header.TCPProtocolNumber)
	protoUDP   = uint8(header.UDPProtocolNumber)
	protoICMP6 = uint8(header.ICMPv6ProtocolNumber)
)

// packet is a decoded view of an IPv4 or IPv6 packet. Its slices alias the
// caller's buffer; decoding copies nothing and allocates nothing.
type packet struct {
	ip    []byte // the whole packet: IP header (and IPv6 extension headers), transport
	l4    []byte // transport header and payload, trimmed to the IP length
	v6    bool
	proto uint8          // the transport protocol (IPv6: after the extension headers)
	src   netip.AddrPort // port 0 for ICMP
	dst   netip.AddrPort
	frag  bool
	// partial: the TCP/UDP checksum field holds only the pseudo-header sum
	// (virtio-net NEEDS_CSUM); the kernel completes it on the way out.
	partial bool
	flags   header.TCPFlags
	seq     uint32
	ack     uint32
	data    int // TCP payload length
}

// isICMP reports whether the packet is ICMP of its family (ICMPv4 in IPv4,
// ICMPv6 in IPv6).
func (p *packet) isICMP() bool {
	if p.v6 {
		return p.proto == protoICMP6
	}
	return p.proto == protoICMP
}

// decodeIP checks the IP header and fills ip, l4, proto and the addresses.
// The transport header is not looked at (see decodeL4), so that packets that
// are not ours pass through untouched.
func (p *packet) decodeIP(b []byte) DropReason {
	if len(b) < 1 {
		return DropTruncated
	}
	p.data = 0
	p.flags = 0
	p.partial = false
	switch header.IPVersion(b) {
	case header.IPv4Version:
		return p.decodeIPv4(b)
	case header.IPv6Version:
		return p.decodeIPv6(b)
	}
	return DropMalformed
}

func (p *packet) decodeIPv4(b []byte) DropReason {
	if len(b) < header.IPv4MinimumSize {
		return DropTruncated
	}
	ip := header.IPv4(b)
	hl := int(ip.HeaderLength())
	tl := int(ip.TotalLength())
	switch {
	case hl < header.IPv4MinimumSize || tl < hl:
		return DropMalformed
	case hl > len(b) || tl > len(b):
		return DropTruncated
	}
	// The device may hand us trailing bytes (link padding): the IP header's
	// total length is the truth.
	ip = ip[:tl]
	if checksum.Checksum(ip[:hl], 0) != 0xffff {
		return DropBadChecksum
	}
	p.ip = ip
	p.v6 = false
	p.l4 = ip[hl:]
	p.proto = ip.Protocol()
	p.frag = ip.More() || ip.FragmentOffset() != 0
	p.src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[12:16])), 0)
	p.dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[16:20])), 0)
	return DropNone
}

// decodeIPv6 checks the fixed header and walks the extension headers a
// director must (RFC 8200 4.1: hop-by-hop, destination options, routing,
// fragment) to the transport header. A fragment is marked (dropped and
// counted by the callers, as IPv4 fragments are); a routing header with
// segments left names a further destination, not us: unsupported. An
// IPv4-mapped address never appears on the wire (RFC 4291 2.5.5.2), and
// the flow table stores IPv4 addresses in that form: malformed.
func (p *packet) decodeIPv6(b []byte) DropReason {
	if len(b) < header.IPv6MinimumSize {
		return DropTruncated
	}
	ip := header.IPv6(b)
	pl := int(ip.PayloadLength())
	if pl == 0 && ip.NextHeader() == uint8(header.IPv6HopByHopOptionsExtHdrIdentifier) {
		return DropUnsupported // a jumbogram (RFC 2675), or nothing at all
	}
	if header.IPv6MinimumSize+pl > len(b) {
		return DropTruncated
	}
	b = b[:header.IPv6MinimumSize+pl]
	src, dst := netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
	if src.Is4In6() || dst.Is4In6() {
		return DropMalformed
	}
	next, off, frag := ip.NextHeader(), header.IPv6MinimumSize, false
	for done := false; !done; {
		switch header.IPv6ExtensionHeaderIdentifier(next) {
		case header.IPv6HopByHopOptionsExtHdrIdentifier, header.IPv6DestinationOptionsExtHdrIdentifier, header.IPv6RoutingExtHdrIdentifier:
			if off+8 > len(b) {
				return DropTruncated
			}
			n := 8 * (int(b[off+1]) + 1)
			if off+n > len(b) {
				return DropTruncated
			}
			if header.IPv6ExtensionHeaderIdentifier(next) == header.IPv6RoutingExtHdrIdentifier && b[off+3] != 0 {
				return DropUnsupported // segments left: not the final destination
			}
			next, off = b[off], off+n
		case header.IPv6FragmentExtHdrIdentifier:
			if off+8 > len(b) {
				return DropTruncated
			}
			// Even an atomic fragment (offset 0, no more) is a fragment
			// header the director would have to keep: dropped as one.
			next, off, frag = b[off], off+8, true
			done = true
		default:
			done = true
		}
	}
	p.ip = b
	p.v6 = true
	p.l4 = b[off:]
	p.proto = next
	p.frag = frag
	p.src = netip.AddrPortFrom(src, 0)
	p.dst = netip.AddrPortFrom(dst, 0)
	return DropNone
}

// decodeL4 checks the transport header (length, offsets, checksum) of a
// packet that is ours, and fills in ports and TCP fields.
func (p *packet) decodeL4() DropReason {
	l4 := p.l4
	switch p.proto {
	case protoTCP:
		if len(l4) < header.TCPMinimumSize {
			return DropTruncated
		}
		t := header.TCP(l4)
		off := int(t.DataOffset())
		if off < header.TCPMinimumSize {
			return DropMalformed
		}
		if off > len(l4) {
			return DropTruncated
		}
		if !p.partial && !p.l4ChecksumOK() {
			return DropBadChecksum
		}
		p.src = netip.AddrPortFrom(p.src.Addr(), t.SourcePort())
		p.dst = netip.AddrPortFrom(p.dst.Addr(), t.DestinationPort())
		p.flags = t.Flags()
		p.seq = t.SequenceNumber()
		p.ack = t.AckNumber()
		p.data = len(l4) - off
	case protoUDP:
		if len(l4) < header.UDPMinimumSize {
			return DropTruncated
		}
		u := header.UDP(l4)
		ul := int(u.Length())
		if ul < header.UDPMinimumSize {
			return DropMalformed
		}
		if ul > len(l4) {
			return DropTruncated
		}
		p.l4 = l4[:ul]
		if !p.partial && u.Checksum() != 0 && !p.l4ChecksumOK() {
			return DropBadChecksum
		}
		p.src = netip.AddrPortFrom(p.src.Addr(), u.SourcePort())
		p.dst = netip.AddrPortFrom(p.dst.Addr(), u.DestinationPort())
	case protoICMP, protoICMP6:
		if !p.isICMP() {
			return DropUnknownProto // ICMPv6 in IPv4, or ICMPv4 in IPv6
		}
		if len(l4) < header.ICMPv4MinimumSize { // 8 bytes, as ICMPv6's
			return DropTruncated
		}
		var xsum uint16
		if p.v6 {
			xsum = p.pseudoSum(len(l4)) // ICMPv6 covers a pseudo-header (RFC 4443 2.3)
		}
		if checksum.Checksum(l4, xsum) != 0xffff {
			return DropBadChecksum
		}
	default:
		return DropUnknownProto
	}
	return DropNone
}

// l4ChecksumOK verifies a TCP or UDP checksum over the pseudo-header and the
// whole segment.
func (p *packet) l4ChecksumOK() bool {
	return checksum.Checksum(p.l4, p.pseudoSum(len(p.l4))) == 0xffff
}

// completeChecksum turns a partial TCP or UDP checksum (the pseudo-header sum
// only) into a full one, computed over the segment.
func (p *packet) completeChecksum() {
	off := header.TCPChecksumOffset
	if p.proto == protoUDP {
		off = 6 // UDP checksum
	}
	if !p.partial || len(p.l4) < off+2 {
		return
	}
	p.l4[off], p.l4[off+1] = 0, 0
	xsum := ^checksum.Checksum(p.l4, p.pseudoSum(len(p.l4)))
	if p.proto == protoUDP && xsum == 0 {
		xsum = 0xffff
	}
	p.l4[off], p.l4[off+1] = byte(xsum>>8), byte(xsum)
	p.partial = false
}

// pseudoSum is the (uncomplemented) sum of the packet's pseudo-header for
// a transport of l4len bytes: IPv4's (RFC 793) or IPv6's (RFC 8200 8.1);
// both sum to the addresses, the protocol and the length.
func (p *packet) pseudoSum(l4len int) uint16 {
	addrs := p.ip[12:20]
	if p.v6 {
		addrs = p.ip[8:40]
	}
	xsum := checksum.Checksum(addrs, 0)
	return checksum.Combine(checksum.Combine(xsum, uint16(p.proto)), uint16(l4len))
}

// setIPAddr sets the packet's source (src) or destination address in the
// IP header: IPv4's header checksum follows; IPv6 has none. The transport
// checksums are the caller's (l4PseudoAddr).
func (p *packet) setIPAddr(src bool, a netip.Addr) {
	if !p.v6 {
		ip := header.IPv4(p.ip)
		if src {
			ip.SetSourceAddressWithChecksumUpdate(anyAddr(a))
		} else {
			ip.SetDestinationAddressWithChecksumUpdate(anyAddr(a))
		}
		return
	}
	off := 24
	if src {
		off = 8
	}
	b := a.As16()
	copy(p.ip[off:off+16], b[:])
}

// setHopLimit sets IPv4's TTL (the header checksum follows) or IPv6's hop
// limit.
func (p *packet) setHopLimit(n uint8) {
	if p.v6 {
		p.ip[7] = n
		return
	}
	ip := header.IPv4(p.ip)
	// TTL shares a word with the protocol.
	const ttlOffset = 8
	ip.SetChecksum(put16(ip, ttlOffset, uint16(n)<<8|uint16(ip.Protocol()), ip.Checksum()))
}

// buildRST writes a TCP RST from src to dst into buf (reusing its storage
// when it is large enough) and returns it. With withAck the RST carries
// ACK = ack.
func buildRST(buf []byte, src, dst netip.AddrPort, seq, ack uint32, withAck bool) []byte {
	flags := header.TCPFlagRst
	if !withAck {
		ack = 0
	} else {
		flags |= header.TCPFlagAck
	}
	return buildSegment(buf, src, dst, seq, ack, flags, 0)
}

// buildSegment writes a TCP segment with no option and no payload from src
// to dst into buf (reusing its storage when it is large enough) and returns
// it: the director's own resets, probes and challenges. src and dst are of
// one family, IPv4 (a 40-byte packet) or IPv6 (60 bytes); the checksums are
// complete.
func buildSegment(buf []byte, src, dst netip.AddrPort, seq, ack uint32, flags header.TCPFlags, win uint16) []byte {
	ipLen := header.IPv4MinimumSize
	if !src.Addr().Unmap().Is4() {
		ipLen = header.IPv6MinimumSize
	}
	n := ipLen + header.TCPMinimumSize
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	b := buf[:n]
	clear(b)
	sa, da := anyAddr(src.Addr()), anyAddr(dst.Addr())
	if ipLen == header.IPv4MinimumSize {
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(n), TTL: 64, Protocol: protoTCP, SrcAddr: sa, DstAddr: da,
		})
		ip.SetChecksum(^ip.CalculateChecksum())
	} else {
		header.IPv6(b).Encode(&header.IPv6Fields{
			PayloadLength: header.TCPMinimumSize, TransportProtocol: header.TCPProtocolNumber,
			HopLimit: 64, SrcAddr: sa, DstAddr: da,
		})
	}
	if flags&header.TCPFlagAck == 0 {
		ack = 0
	}
	t := header.TCP(b[ipLen:])
	t.Encode(&header.TCPFields{
		SrcPort: src.Port(), DstPort: dst.Port(), SeqNum: seq, AckNum: ack,
		DataOffset: header.TCPMinimumSize, Flags: flags, WindowSize: win,
	})
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, sa, da, header.TCPMinimumSize)
	t.SetChecksum(^t.CalculateChecksum(xsum))
	return b
}
