package nat

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// IP protocol numbers handled here.
const (
	protoICMP = uint8(header.ICMPv4ProtocolNumber)
	protoTCP  = uint8(header.TCPProtocolNumber)
	protoUDP  = uint8(header.UDPProtocolNumber)
)

// packet is a decoded view of an IPv4 packet. Its slices alias the caller's
// buffer; decoding copies nothing and allocates nothing.
type packet struct {
	ip    header.IPv4
	l4    []byte // transport header and payload, trimmed to the IP total length
	proto uint8
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

// decodeIP checks the IPv4 header and fills ip, l4, proto and the addresses.
// The transport header is not looked at (see decodeL4), so that packets that
// are not ours pass through untouched.
func (p *packet) decodeIP(b []byte) DropReason {
	if len(b) < 1 {
		return DropTruncated
	}
	switch header.IPVersion(b) {
	case header.IPv4Version:
	case header.IPv6Version:
		return DropUnsupported
	default:
		return DropMalformed
	}
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
	p.l4 = ip[hl:]
	p.proto = ip.Protocol()
	p.frag = ip.More() || ip.FragmentOffset() != 0
	p.src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[12:16])), 0)
	p.dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[16:20])), 0)
	p.data = 0
	p.flags = 0
	p.partial = false
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
	case protoICMP:
		if len(l4) < header.ICMPv4MinimumSize {
			return DropTruncated
		}
		if checksum.Checksum(l4, 0) != 0xffff {
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
	xsum := pseudoHeaderSum(p.ip, p.proto, len(p.l4))
	return checksum.Checksum(p.l4, xsum) == 0xffff
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
	xsum := ^checksum.Checksum(p.l4, pseudoHeaderSum(p.ip, p.proto, len(p.l4)))
	if p.proto == protoUDP && xsum == 0 {
		xsum = 0xffff
	}
	p.l4[off], p.l4[off+1] = byte(xsum>>8), byte(xsum)
	p.partial = false
}

// pseudoHeaderSum is the (uncomplemented) sum of the IPv4 pseudo-header.
func pseudoHeaderSum(ip header.IPv4, proto uint8, l4len int) uint16 {
	xsum := checksum.Checksum(ip[12:20], 0)
	return checksum.Combine(checksum.Combine(xsum, uint16(proto)), uint16(l4len))
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
