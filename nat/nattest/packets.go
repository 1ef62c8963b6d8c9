// Package nattest builds IPv4 and IPv6 test packets with checksums computed
// from scratch, and checks the checksums of packets the director produced.
// It is shared by nat's unit tests and the in-memory pipeline tests. The
// builders take addresses of either family ("198.18.1.2:40000",
// "[2001:2::2]:40000") and build a packet of that family.
package nattest

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// AP parses "a.b.c.d:port" or "[v6]:port".
func AP(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func addr(a netip.Addr) tcpip.Address {
	if a = a.Unmap(); a.Is4() {
		return tcpip.AddrFrom4(a.As4())
	}
	return tcpip.AddrFrom16(a.As16())
}

// IP wraps l4 in an IPv4 header (IPv4 addresses) or an IPv6 one.
func IP(src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	if src.Unmap().Is4() {
		return IPv4(src, dst, proto, l4)
	}
	return IPv6(src, dst, proto, l4)
}

// IPv6 wraps l4 in an IPv6 header (hop limit 64, no extension header).
func IPv6(src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	b := make([]byte, header.IPv6MinimumSize+len(l4))
	header.IPv6(b).Encode(&header.IPv6Fields{
		PayloadLength: uint16(len(l4)), TransportProtocol: tcpip.TransportProtocolNumber(proto),
		HopLimit: 64, SrcAddr: addr(src), DstAddr: addr(dst),
	})
	copy(b[header.IPv6MinimumSize:], l4)
	return b
}

// Layers splits an IPv4 or IPv6 packet into its transport protocol, the
// transport bytes and the pseudo-header sum (IPv6: after hop-by-hop,
// routing and destination options headers; a fragment header is the
// "transport").
func Layers(b []byte) (proto uint8, l4 []byte, pseudo func(int) uint16) {
	if header.IPVersion(b) == header.IPv6Version {
		ip := header.IPv6(b)
		next, off := ip.NextHeader(), header.IPv6MinimumSize
		for (next == 0 || next == 43 || next == 60) && off+8 <= len(b) { // hop-by-hop, routing, destination options
			next, off = b[off], off+8*(int(b[off+1])+1)
		}
		if off > len(b) {
			off = len(b)
		}
		return next, b[off:], func(n int) uint16 {
			return header.PseudoHeaderChecksum(tcpip.TransportProtocolNumber(next), ip.SourceAddress(), ip.DestinationAddress(), uint16(n))
		}
	}
	ip := header.IPv4(b)
	return ip.Protocol(), ip.Payload(), func(n int) uint16 {
		return header.PseudoHeaderChecksum(ip.TransportProtocol(), ip.SourceAddress(), ip.DestinationAddress(), uint16(n))
	}
}

// IPv4 wraps l4 in an IPv4 header (TTL 64, no options) with a valid checksum.
func IPv4(src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	b := make([]byte, header.IPv4MinimumSize+len(l4))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)),
		TTL:         64,
		Protocol:    proto,
		SrcAddr:     addr(src),
		DstAddr:     addr(dst),
		ID:          1,
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	copy(b[header.IPv4MinimumSize:], l4)
	return b
}

// TCP4 builds a TCP segment src -> dst ("a.b.c.d:port", or "[v6]:port" for
// an IPv6 one) with the given TCP
// options (raw bytes, padded by the caller to a multiple of 4).
func TCP4(src, dst string, flags header.TCPFlags, seq, ack uint32, payload []byte, opts ...byte) []byte {
	s, d := AP(src), AP(dst)
	hl := header.TCPMinimumSize + len(opts)
	l4 := make([]byte, hl+len(payload))
	header.TCP(l4).Encode(&header.TCPFields{
		SrcPort: s.Port(), DstPort: d.Port(), SeqNum: seq, AckNum: ack,
		DataOffset: uint8(hl), Flags: flags, WindowSize: 502,
	})
	copy(l4[header.TCPMinimumSize:], opts)
	copy(l4[hl:], payload)
	b := IP(s.Addr(), d.Addr(), uint8(header.TCPProtocolNumber), l4)
	FixL4Checksum(b)
	return b
}

// UDP4 builds a UDP datagram src -> dst.
func UDP4(src, dst string, payload []byte) []byte {
	s, d := AP(src), AP(dst)
	l4 := make([]byte, header.UDPMinimumSize+len(payload))
	header.UDP(l4).Encode(&header.UDPFields{SrcPort: s.Port(), DstPort: d.Port(), Length: uint16(len(l4))})
	copy(l4[header.UDPMinimumSize:], payload)
	b := IP(s.Addr(), d.Addr(), uint8(header.UDPProtocolNumber), l4)
	FixL4Checksum(b)
	return b
}

// ICMP4 builds an ICMP message; rest is the second 32-bit word (id/seq,
// next-hop MTU, ...).
func ICMP4(src, dst string, typ header.ICMPv4Type, code header.ICMPv4Code, rest uint32, body []byte) []byte {
	l4 := make([]byte, header.ICMPv4MinimumSize+len(body))
	l4[0], l4[1] = byte(typ), byte(code)
	binary.BigEndian.PutUint32(l4[4:], rest)
	copy(l4[8:], body)
	header.ICMPv4(l4).SetChecksum(^checksum.Checksum(l4, 0))
	return IPv4(netip.MustParseAddr(src), netip.MustParseAddr(dst), uint8(header.ICMPv4ProtocolNumber), l4)
}

// ICMP6 builds an ICMPv6 message (its checksum covers the pseudo-header);
// rest is the second 32-bit word (id/seq, MTU, pointer...).
func ICMP6(src, dst string, typ header.ICMPv6Type, code header.ICMPv6Code, rest uint32, body []byte) []byte {
	l4 := make([]byte, header.ICMPv6MinimumSize+len(body))
	l4[0], l4[1] = byte(typ), byte(code)
	binary.BigEndian.PutUint32(l4[4:], rest)
	copy(l4[8:], body)
	b := IPv6(netip.MustParseAddr(src), netip.MustParseAddr(dst), uint8(header.ICMPv6ProtocolNumber), l4)
	_, l4, pseudo := Layers(b)
	header.ICMPv6(l4).SetChecksum(^checksum.Checksum(l4, pseudo(len(l4))))
	return b
}

// FixL4Checksum recomputes the TCP or UDP checksum of b from scratch.
func FixL4Checksum(b []byte) {
	proto, l4, pseudo := Layers(b)
	var off int
	switch tcpip.TransportProtocolNumber(proto) {
	case header.TCPProtocolNumber:
		off = header.TCPChecksumOffset
	case header.UDPProtocolNumber:
		off = 6
	default:
		return
	}
	l4[off], l4[off+1] = 0, 0
	xsum := ^checksum.Checksum(l4, pseudo(len(l4)))
	if tcpip.TransportProtocolNumber(proto) == header.UDPProtocolNumber && xsum == 0 {
		xsum = 0xffff
	}
	binary.BigEndian.PutUint16(l4[off:], xsum)
}

// CheckChecksums fails the test unless every checksum of b (IPv4 header,
// and TCP, UDP, ICMP or ICMPv6) verifies when recomputed from scratch.
func CheckChecksums(t testing.TB, b []byte) {
	t.Helper()
	if header.IPVersion(b) == header.IPv6Version {
		ip := header.IPv6(b)
		if !ip.IsValid(len(b)) {
			t.Fatalf("IPv6 header invalid: %x", b)
		}
	} else {
		ip := header.IPv4(b)
		if !ip.IsValid(len(b)) || checksum.Checksum(b[:ip.HeaderLength()], 0) != 0xffff {
			t.Fatalf("IP header invalid or its checksum does not verify: %x", b)
		}
	}
	proto, l4, pseudo := Layers(b)
	switch tcpip.TransportProtocolNumber(proto) {
	case header.TCPProtocolNumber:
		if checksum.Checksum(l4, pseudo(len(l4))) != 0xffff {
			t.Fatalf("TCP checksum does not verify: %x", b)
		}
	case header.UDPProtocolNumber:
		if binary.BigEndian.Uint16(l4[6:]) != 0 && checksum.Checksum(l4, pseudo(len(l4))) != 0xffff {
			t.Fatalf("UDP checksum does not verify: %x", b)
		}
	case header.ICMPv4ProtocolNumber:
		if checksum.Checksum(l4, 0) != 0xffff {
			t.Fatalf("ICMP checksum does not verify: %x", b)
		}
	case header.ICMPv6ProtocolNumber:
		if checksum.Checksum(l4, pseudo(len(l4))) != 0xffff {
			t.Fatalf("ICMPv6 checksum does not verify: %x", b)
		}
	}
}
