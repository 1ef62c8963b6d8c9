package nat

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"holdfast/balancer"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Packet builders for tests: every packet leaves with checksums computed
// from scratch.

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func ipv4(src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	b := make([]byte, header.IPv4MinimumSize+len(l4))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)),
		TTL:         64,
		Protocol:    proto,
		SrcAddr:     tcpipAddr(src),
		DstAddr:     tcpipAddr(dst),
		ID:          1,
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	copy(b[header.IPv4MinimumSize:], l4)
	return b
}

func tcp4(src, dst string, flags header.TCPFlags, seq, ack uint32, payload []byte, opts ...byte) []byte {
	s, d := ap(src), ap(dst)
	hl := header.TCPMinimumSize + len(opts)
	l4 := make([]byte, hl+len(payload))
	t := header.TCP(l4)
	t.Encode(&header.TCPFields{
		SrcPort: s.Port(), DstPort: d.Port(), SeqNum: seq, AckNum: ack,
		DataOffset: uint8(hl), Flags: flags, WindowSize: 502,
	})
	copy(l4[header.TCPMinimumSize:], opts)
	copy(l4[hl:], payload)
	b := ipv4(s.Addr(), d.Addr(), protoTCP, l4)
	fixL4Checksum(b)
	return b
}

func udp4(src, dst string, payload []byte) []byte {
	s, d := ap(src), ap(dst)
	l4 := make([]byte, header.UDPMinimumSize+len(payload))
	u := header.UDP(l4)
	u.Encode(&header.UDPFields{SrcPort: s.Port(), DstPort: d.Port(), Length: uint16(len(l4))})
	copy(l4[header.UDPMinimumSize:], payload)
	b := ipv4(s.Addr(), d.Addr(), protoUDP, l4)
	fixL4Checksum(b)
	return b
}

func icmp4(src, dst string, typ header.ICMPv4Type, code header.ICMPv4Code, rest uint32, body []byte) []byte {
	l4 := make([]byte, header.ICMPv4MinimumSize+len(body))
	l4[0], l4[1] = byte(typ), byte(code)
	binary.BigEndian.PutUint32(l4[4:], rest)
	copy(l4[8:], body)
	header.ICMPv4(l4).SetChecksum(^checksum.Checksum(l4, 0))
	return ipv4(netip.MustParseAddr(src), netip.MustParseAddr(dst), protoICMP, l4)
}

// fixL4Checksum recomputes the TCP or UDP checksum from scratch.
func fixL4Checksum(b []byte) {
	ip := header.IPv4(b)
	l4 := ip.Payload()
	var off int
	switch ip.Protocol() {
	case protoTCP:
		off = 16
	case protoUDP:
		off = 6
	default:
		return
	}
	l4[off], l4[off+1] = 0, 0
	xsum := ^checksum.Checksum(l4, pseudoHeaderSum(ip, ip.Protocol(), len(l4)))
	if ip.Protocol() == protoUDP && xsum == 0 {
		xsum = 0xffff
	}
	binary.BigEndian.PutUint16(l4[off:], xsum)
}

// checkChecksums fails the test unless every checksum of b verifies when
// recomputed from scratch (IP header, and TCP/UDP/ICMP).
func checkChecksums(t testing.TB, b []byte) {
	t.Helper()
	ip := header.IPv4(b)
	if checksum.Checksum(b[:ip.HeaderLength()], 0) != 0xffff {
		t.Fatalf("IP header checksum does not verify")
	}
	l4 := ip.Payload()
	switch ip.Protocol() {
	case protoTCP:
		if checksum.Checksum(l4, pseudoHeaderSum(ip, protoTCP, len(l4))) != 0xffff {
			t.Fatalf("TCP checksum does not verify")
		}
	case protoUDP:
		if binary.BigEndian.Uint16(l4[6:]) != 0 && checksum.Checksum(l4, pseudoHeaderSum(ip, protoUDP, len(l4))) != 0xffff {
			t.Fatalf("UDP checksum does not verify")
		}
	case protoICMP:
		if checksum.Checksum(l4, 0) != 0xffff {
			t.Fatalf("ICMP checksum does not verify")
		}
	}
}

func addrs(b []byte) (src, dst netip.AddrPort) {
	var p packet
	if p.decodeIP(b) != DropNone {
		panic("bad packet")
	}
	if p.proto != protoICMP && p.decodeL4() != DropNone {
		panic("bad l4")
	}
	return p.src, p.dst
}

const (
	vip     = "198.18.100.1:80"
	client  = "198.18.1.2:40000"
	client2 = "198.18.1.3:40001"
	rs1     = "198.18.10.11:8080"
	rs2     = "198.18.10.12:8080"
	rs3     = "198.18.10.13:8080"
	udpVIP  = "198.18.100.1:5353"
	sec     = int64(1e9)
)

// newTestDirector serves tcp vip -> rs1..rs3 (rr) and udp udpVIP -> rs1:5353.
func newTestDirector(t testing.TB, mod ...func(*Config)) *Director {
	t.Helper()
	mk := func(proto balancer.Proto, vip string, reals ...string) *balancer.Service {
		sch, err := balancer.NewScheduler("rr")
		if err != nil {
			t.Fatal(err)
		}
		s := &balancer.Service{Proto: proto, VIP: ap(vip), Scheduler: sch}
		for _, r := range reals {
			s.Reals = append(s.Reals, &balancer.Real{Addr: ap(r), Weight: 1})
		}
		return s
	}
	cfg := Config{
		Services: []*balancer.Service{
			mk(balancer.TCP, vip, rs1, rs2, rs3),
			mk(balancer.UDP, udpVIP, "198.18.10.11:5353"),
		},
		Timeouts: NewTimeouts(15*60e9, 120e9, 300e9),
		MaxFlows: 1000,
	}
	for _, m := range mod {
		m(&cfg)
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
