// Package nattest builds IPv4 test packets with checksums computed from
// scratch, and checks the checksums of packets the director produced. It is
// shared by nat's unit tests and the in-memory pipeline tests.
package nattest

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// AP parses "a.b.c.d:port".
func AP(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func addr(a netip.Addr) tcpip.Address { return tcpip.AddrFrom4(a.As4()) }

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

// TCP4 builds a TCP segment src -> dst ("a.b.c.d:port") with the given TCP
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
	b := IPv4(s.Addr(), d.Addr(), uint8(header.TCPProtocolNumber), l4)
	FixL4Checksum(b)
	return b
}

// UDP4 builds a UDP datagram src -> dst.
func UDP4(src, dst string, payload []byte) []byte {
	s, d := AP(src), AP(dst)
	l4 := make([]byte, header.UDPMinimumSize+len(payload))
	header.UDP(l4).Encode(&header.UDPFields{SrcPort: s.Port(), DstPort: d.Port(), Length: uint16(len(l4))})
	copy(l4[header.UDPMinimumSize:], payload)
	b := IPv4(s.Addr(), d.Addr(), uint8(header.UDPProtocolNumber), l4)
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

func l4Sum(ip header.IPv4) uint16 {
	l4 := ip.Payload()
	return checksum.Checksum(l4, header.PseudoHeaderChecksum(ip.TransportProtocol(), ip.SourceAddress(), ip.DestinationAddress(), uint16(len(l4))))
}

// FixL4Checksum recomputes the TCP or UDP checksum of b from scratch.
func FixL4Checksum(b []byte) {
	ip := header.IPv4(b)
	l4 := ip.Payload()
	var off int
	switch ip.TransportProtocol() {
	case header.TCPProtocolNumber:
		off = header.TCPChecksumOffset
	case header.UDPProtocolNumber:
		off = 6
	default:
		return
	}
	l4[off], l4[off+1] = 0, 0
	xsum := ^l4Sum(ip)
	if ip.TransportProtocol() == header.UDPProtocolNumber && xsum == 0 {
		xsum = 0xffff
	}
	binary.BigEndian.PutUint16(l4[off:], xsum)
}

// CheckChecksums fails the test unless every checksum of b (IP header, and
// TCP, UDP or ICMP) verifies when recomputed from scratch.
func CheckChecksums(t testing.TB, b []byte) {
	t.Helper()
	ip := header.IPv4(b)
	if !ip.IsValid(len(b)) || checksum.Checksum(b[:ip.HeaderLength()], 0) != 0xffff {
		t.Fatalf("IP header invalid or its checksum does not verify: %x", b)
	}
	l4 := ip.Payload()
	switch ip.TransportProtocol() {
	case header.TCPProtocolNumber:
		if l4Sum(ip) != 0xffff {
			t.Fatalf("TCP checksum does not verify: %x", b)
		}
	case header.UDPProtocolNumber:
		if binary.BigEndian.Uint16(l4[6:]) != 0 && l4Sum(ip) != 0xffff {
			t.Fatalf("UDP checksum does not verify: %x", b)
		}
	case header.ICMPv4ProtocolNumber:
		if checksum.Checksum(l4, 0) != 0xffff {
			t.Fatalf("ICMP checksum does not verify: %x", b)
		}
	}
}
