package nat

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"holdfast/balancer"
	"holdfast/internal/wire"
	"holdfast/nat/nattest"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// IPv6 addresses of the tests (2001:2::/48, RFC 5180).
const (
	vip6     = "[2001:2::100]:80"
	udpVIP6  = "[2001:2::100]:5353"
	client6  = "[2001:2:0:10::2]:40000"
	client6b = "[2001:2:0:10::3]:40001"
	rs1v6    = "[2001:2:0:20::11]:8080"
	rs2v6    = "[2001:2:0:20::12]:8080"
	udpRS6   = "[2001:2:0:20::11]:5353"
	recAddr6 = "2001:2:0:30::1"
)

// fam is one address family's test addresses.
type fam struct {
	name                         string
	vip, udpVIP, client, client2 string
	rs1, rs2, udpRS, rec         string
}

var families = []fam{
	{"IPv4", vip, udpVIP, client, client2, rs1, rs2, "198.18.10.11:5353", recAddr},
	{"IPv6", vip6, udpVIP6, client6, client6b, rs1v6, rs2v6, udpRS6, recAddr6},
}

// dualDirector serves both families side by side: tcp VIP -> rs1, rs2 and
// udp VIP -> udpRS of each, the same ports, recovery on with a recovery
// address of each family.
func dualDirector(t testing.TB) (*Director, *fakeDialer) {
	t.Helper()
	fr := &fakeDialer{}
	pr := &nattest.Peers{}
	var svcs []*balancer.Service
	var recs []netip.Addr
	for _, f := range families {
		for _, s := range []struct {
			proto balancer.Proto
			vip   string
			reals []string
		}{{balancer.TCP, f.vip, []string{f.rs1, f.rs2}}, {balancer.UDP, f.udpVIP, []string{f.udpRS}}} {
			sch, err := balancer.NewScheduler("rr")
			if err != nil {
				t.Fatal(err)
			}
			svc := &balancer.Service{Proto: s.proto, VIP: ap(s.vip), Scheduler: sch}
			for _, r := range s.reals {
				svc.Reals = append(svc.Reals, &balancer.Real{Addr: ap(r), Weight: 1})
			}
			svcs = append(svcs, svc)
		}
		recs = append(recs, netip.MustParseAddr(f.rec))
	}
	d, err := New(Config{
		Services: svcs, Timeouts: NewTimeouts(15*60e9, 120e9, 300e9), MaxFlows: 1000,
		Recovery: RecoveryConfig{
			Enabled: true, Dialer: fr, Addrs: recs, PortLo: 10000, PortHi: 10009, WScale: 7, MSS: 1460, MSS6: 1440,
			Rate: 1000, MaxInflight: 10, ParkBytes: 1 << 20, ParkFlowBytes: 1 << 16,
		},
		Emit: pr.Emit,
	})
	if err != nil {
		t.Fatal(err)
	}
	answer(d, pr) // the peers answer probes and challenges as when the real died
	return d, fr
}

// mustForward hands b to d and returns the packet it writes, its
// checksums verified from scratch.
func mustForward(t *testing.T, d *Director, b []byte, now int64) []byte {
	t.Helper()
	v, out := d.Handle(bytes.Clone(b), false, now)
	if v != wire.Forward || out == nil {
		t.Fatalf("verdict %v for %x", v, b)
	}
	checkChecksums(t, out)
	return out
}

// TestFamiliesNAT: a dual-stack director carries a TCP connection and UDP
// datagrams of each family the same way: the client's packets reach the
// real (round robin over new connections), the real's come back from the
// VIP, every checksum verifies, and a flow of one family never answers
// for the other.
func TestFamiliesNAT(t *testing.T) {
	d, _ := dualDirector(t)
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			out := mustForward(t, d, tcp4(f.client, f.vip, syn, 1000, 0, nil, 2, 4, 5, 0xb4), 1)
			if src, dst := addrs(out); src != ap(f.client) || dst != ap(f.rs1) {
				t.Fatalf("SYN went %v -> %v, want %v -> %v", src, dst, f.client, f.rs1)
			}
			out = mustForward(t, d, tcp4(f.rs1, f.client, synack, 5000, 1001, nil), 2)
			if src, dst := addrs(out); src != ap(f.vip) || dst != ap(f.client) {
				t.Fatalf("SYN-ACK went %v -> %v, want %v -> %v", src, dst, f.vip, f.client)
			}
			mustForward(t, d, tcp4(f.client, f.vip, ack, 1001, 5001, nil), 3)
			out = mustForward(t, d, tcp4(f.client, f.vip, psh, 1001, 5001, []byte("GET / HTTP/1.0\r\n\r\n")), 4)
			if !bytes.HasSuffix(out, []byte("GET / HTTP/1.0\r\n\r\n")) {
				t.Fatalf("payload lost: %x", out)
			}
			mustForward(t, d, tcp4(f.rs1, f.client, psh, 5001, 1019, []byte("HTTP/1.0 200 OK\r\n\r\n")), 5)
			// The next connection goes to the next real.
			out = mustForward(t, d, tcp4(f.client2, f.vip, syn, 7000, 0, nil), 6)
			if _, dst := addrs(out); dst != ap(f.rs2) {
				t.Fatalf("second connection to %v, want %v", dst, f.rs2)
			}
			out = mustForward(t, d, udp4(f.client, f.udpVIP, []byte("query")), 7)
			if _, dst := addrs(out); dst != ap(f.udpRS) {
				t.Fatalf("datagram to %v, want %v", dst, f.udpRS)
			}
			out = mustForward(t, d, udp4(f.udpRS, f.client, []byte("answer")), 8)
			if src, _ := addrs(out); src != ap(f.udpVIP) {
				t.Fatalf("answer from %v, want %v", src, f.udpVIP)
			}
		})
	}
	if n := len(d.Flows(9)); n != 6 {
		t.Fatalf("%d flows, want 6 (3 per family)", n)
	}
	for _, fl := range d.Flows(9) {
		if fl.Client.Addr().Is4() != fl.Real.Addr().Is4() || fl.Client.Addr().Is4() != fl.VIP.Addr().Is4() {
			t.Errorf("flow mixes families: %+v", fl)
		}
	}
}

// withExt inserts IPv6 extension headers (8 bytes each) of the given
// types before b's transport header: hop-by-hop (0), routing (43, type 4,
// segments left 0), fragment (44, a first fragment: offset 0, more
// fragments), destination options (60). The transport checksum stays
// valid (the pseudo-header is the same).
func withExt(b []byte, types ...uint8) []byte {
	ip := header.IPv6(b)
	next := ip.NextHeader()
	var ext []byte
	for i := len(types) - 1; i >= 0; i-- {
		h := make([]byte, 8)
		h[0] = next
		switch types[i] {
		case 43:
			h[2] = 4 // SRH type, segments left 0 (h[3])
		case 44:
			h[3] = 1 // offset 0, M
			binary.BigEndian.PutUint32(h[4:], 0x1234)
		default:
			h[2], h[3] = 1, 4 // PadN option filling the header
		}
		ext = append(h, ext...)
		next = types[i]
	}
	out := append(append(bytes.Clone(b[:header.IPv6MinimumSize]), ext...), b[header.IPv6MinimumSize:]...)
	header.IPv6(out).SetNextHeader(next)
	header.IPv6(out).SetPayloadLength(uint16(len(out) - header.IPv6MinimumSize))
	return out
}

// TestIPv6Decode: the extension headers a director walks, and the IPv6
// packets it refuses, each with its drop counter.
func TestIPv6Decode(t *testing.T) {
	syn6 := tcp4(client6, vip6, syn, 1000, 0, nil)
	for _, tc := range []struct {
		name string
		b    []byte
		want DropReason // DropNone: forwarded to a real
	}{
		{"plain", syn6, DropNone},
		{"hop-by-hop and destination options", withExt(syn6, 0, 60), DropNone},
		{"routing header, no segment left", withExt(syn6, 43), DropNone},
		{"first fragment", withExt(syn6, 44), DropFragment},
		{"fragment after options", withExt(syn6, 0, 44), DropFragment},
		{"routing header with a segment left", func() []byte {
			b := withExt(syn6, 43)
			b[header.IPv6MinimumSize+3] = 1
			return b
		}(), DropUnsupported},
		{"jumbogram", func() []byte {
			b := withExt(syn6, 0)
			header.IPv6(b).SetPayloadLength(0)
			return b
		}(), DropUnsupported},
		{"extension header beyond the payload", func() []byte {
			b := withExt(syn6, 60)
			b[header.IPv6MinimumSize+1] = 200
			return b
		}(), DropTruncated},
		{"payload length beyond the buffer", syn6[:len(syn6)-1], DropTruncated},
		{"short header", syn6[:39], DropTruncated},
		{"IPv4-mapped source", func() []byte {
			b := bytes.Clone(syn6)
			m := netip.MustParseAddr("::ffff:198.18.1.2").As16()
			copy(b[8:24], m[:])
			nattestFix(b)
			return b
		}(), DropMalformed},
		{"bad TCP checksum", func() []byte {
			b := bytes.Clone(syn6)
			b[len(b)-1] ^= 1
			return b
		}(), DropBadChecksum},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, _ := dualDirector(t)
			v, out := d.Handle(bytes.Clone(tc.b), false, 1)
			if tc.want == DropNone {
				if v != wire.Forward || out == nil {
					t.Fatalf("verdict %v, want forward", v)
				}
				checkChecksums(t, out)
				var p packet
				if p.decodeIP(out) != DropNone || p.decodeL4() != DropNone || p.dst != ap(rs1v6) {
					t.Fatalf("forwarded to %v, want %v", p.dst, rs1v6)
				}
				return
			}
			if v != wire.Drop || d.stats.Drops[tc.want] != 1 {
				t.Fatalf("verdict %v, drops %v; want a drop counted as %v", v, d.stats.Drops, tc.want)
			}
		})
	}
}

// TestICMPv6: an echo to a VIP is answered; errors about a flow are
// translated both ways (the quoted header names what the receiver sent),
// with the ICMPv6 checksum, which covers the outer addresses, right.
func TestICMPv6(t *testing.T) {
	d, _ := dualDirector(t)
	mustForward(t, d, tcp4(client6, vip6, syn, 1000, 0, nil), 1)
	mustForward(t, d, tcp4(rs1v6, client6, synack, 5000, 1001, nil), 2)

	out := mustForward(t, d, nattest.ICMP6("2001:2:0:10::2", "2001:2::100", header.ICMPv6EchoRequest, 0, 0x10001, []byte("ping")), 3)
	if out[header.IPv6MinimumSize] != byte(header.ICMPv6EchoReply) {
		t.Fatalf("echo answered with type %d", out[header.IPv6MinimumSize])
	}
	if src, dst := header.IPv6(out).SourceAddress(), header.IPv6(out).DestinationAddress(); src.String() != "2001:2::100" || dst.String() != "2001:2:0:10::2" {
		t.Fatalf("echo reply %v -> %v", src, dst)
	}

	// A router on the reals' side cannot forward a client segment (MTU
	// 1280 beyond it): the client must hear it about client -> VIP.
	seg := tcp4(client6, rs1v6, psh, 1001, 5001, bytes.Repeat([]byte("x"), 100))
	ptb := nattest.ICMP6("2001:2:0:20::1", "2001:2:0:10::2", header.ICMPv6PacketTooBig, 0, 1280, seg)
	out = mustForward(t, d, ptb, 4)
	q, ok := parseQuoted(&packet{l4: out[header.IPv6MinimumSize:], v6: true})
	if !ok || q.src != ap(client6) || q.dst != ap(vip6) {
		t.Fatalf("Packet Too Big quotes %v -> %v, want %v -> %v", q.src, q.dst, client6, vip6)
	}
	if src := header.IPv6(out).SourceAddress(); src.String() != "2001:2:0:20::1" {
		t.Fatalf("a router's error comes from %v, want the router", src)
	}
	// The real itself says so: the client hears it from the VIP.
	ptb = nattest.ICMP6("2001:2:0:20::11", "2001:2:0:10::2", header.ICMPv6PacketTooBig, 0, 1280, seg)
	out = mustForward(t, d, ptb, 5)
	if src := header.IPv6(out).SourceAddress(); src.String() != "2001:2::100" {
		t.Fatalf("the real's error comes from %v, want the VIP", src)
	}
	// The client cannot take a segment VIP -> client: the real hears it
	// about real -> client.
	back := tcp4(vip6, client6, psh, 5001, 1001, bytes.Repeat([]byte("y"), 100))
	ptb = nattest.ICMP6("2001:2:0:10::2", "2001:2::100", header.ICMPv6PacketTooBig, 0, 1280, back)
	out = mustForward(t, d, ptb, 6)
	if dst := header.IPv6(out).DestinationAddress(); dst.String() != "2001:2:0:20::11" {
		t.Fatalf("the client's error goes to %v, want the real", dst)
	}
	q, ok = parseQuoted(&packet{l4: out[header.IPv6MinimumSize:], v6: true})
	if !ok || q.src != ap(rs1v6) || q.dst != ap(client6) {
		t.Fatalf("the real hears of %v -> %v, want %v -> %v", q.src, q.dst, rs1v6, client6)
	}
	if d.stats.ICMPErrors != 3 || d.stats.EchoReplies != 1 {
		t.Fatalf("%d errors translated, %d echoes; want 3, 1", d.stats.ICMPErrors, d.stats.EchoReplies)
	}
	// ICMPv4 inside IPv6 is no ICMP: dropped as an unknown protocol.
	bad := nattest.IPv6(netip.MustParseAddr("2001:2:0:10::2"), netip.MustParseAddr("2001:2::100"), protoICMP, make([]byte, 8))
	if v, _ := d.Handle(bad, false, 7); v != wire.Drop || d.stats.Drops[DropUnknownProto] != 1 {
		t.Fatalf("ICMPv4 in IPv6: verdict %v, drops %v", v, d.stats.Drops)
	}
}

// TestRecoveryFamilies: a mid-stream segment of either family is recovered
// from the recovery address of its own family, with its family's MSS.
func TestRecoveryFamilies(t *testing.T) {
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			d, fr := dualDirector(t)
			if v, _ := d.Handle(tcp4(f.client, f.vip, psh, 100, 200, []byte("GET /")), false, 1); v != wire.Park {
				t.Fatalf("verdict %v for a miss, want park", v)
			}
			if len(fr.dials) != 1 {
				t.Fatalf("%d recovery dials, want 1 (the peers answered the probes and the challenge)", len(fr.dials))
			}
			o := fr.dials[0].o
			wantMSS := 1460
			if !o.Remote.Addr().Is4() {
				wantMSS = 1440
			}
			if o.Local.Addr() != netip.MustParseAddr(f.rec) || o.MSS != wantMSS || o.Remote.Addr().Is4() != o.Local.Addr().Is4() {
				t.Fatalf("dial %+v, want from %s with MSS %d", o, f.rec, wantMSS)
			}
		})
	}
}

// TestFamilyErrors: no NAT46 or NAT64, and no recovery for a family
// without a recovery address.
func TestFamilyErrors(t *testing.T) {
	sch, _ := balancer.NewScheduler("rr")
	mk := func(vip string, reals ...string) *balancer.Service {
		s := &balancer.Service{Proto: balancer.TCP, VIP: ap(vip), Scheduler: sch}
		for _, r := range reals {
			s.Reals = append(s.Reals, &balancer.Real{Addr: ap(r), Weight: 1})
		}
		return s
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"IPv4 real of an IPv6 service", Config{Services: []*balancer.Service{mk(vip6, rs1)}},
			"real 198.18.10.11:8080 of service tcp:[2001:2::100]:80: an IPv6 service takes IPv6 reals only (no NAT46 or NAT64)"},
		{"IPv6 real of an IPv4 service", Config{Services: []*balancer.Service{mk(vip, rs1v6)}},
			"real [2001:2:0:20::11]:8080 of service tcp:198.18.100.1:80: an IPv4 service takes IPv4 reals only (no NAT46 or NAT64)"},
		{"IPv6 service, IPv4 recovery address only", Config{Services: []*balancer.Service{mk(vip6, rs1v6)},
			Recovery: RecoveryConfig{Enabled: true, Dialer: &fakeDialer{}, Addrs: []netip.Addr{netip.MustParseAddr(recAddr)},
				PortLo: 10000, PortHi: 10009, Rate: 1, MaxInflight: 1, ParkBytes: 1 << 20, ParkFlowBytes: 1 << 16}},
			"service tcp:[2001:2::100]:80 is IPv6: recovery needs a recovery address of that family"},
		{"link-local recovery address", Config{Services: []*balancer.Service{mk(vip6, rs1v6)},
			Recovery: RecoveryConfig{Addrs: []netip.Addr{netip.MustParseAddr("fe80::1")}}},
			"recovery address fe80::1: expected a unicast address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Timeouts, tc.cfg.MaxFlows = NewTimeouts(1e9, 1e9, 1e9), 10
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, want %q", err, tc.want)
			}
		})
	}
}
