package nat

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"holdfast/balancer"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

const (
	syn    = header.TCPFlagSyn
	synack = header.TCPFlagSyn | header.TCPFlagAck
	ack    = header.TCPFlagAck
	psh    = header.TCPFlagAck | header.TCPFlagPsh
	fin    = header.TCPFlagFin | header.TCPFlagAck
	rst    = header.TCPFlagRst
)

// handle runs one packet and returns what would be written (nil = dropped).
func handle(t *testing.T, d *Director, pkt []byte, now int64) []byte {
	t.Helper()
	out, _ := d.HandlePacket(pkt, now)
	if out != nil {
		checkChecksums(t, out)
	}
	return out
}

func TestTCPConnectionBothWays(t *testing.T) {
	d := newTestDirector(t)
	out := handle(t, d, tcp4(client, vip, syn, 1000, 0, nil), 1)
	if out == nil {
		t.Fatal("SYN dropped")
	}
	if src, dst := addrs(out); src != ap(client) || dst != ap(rs1) {
		t.Fatalf("SYN rewritten to %v -> %v, want %v -> %v", src, dst, client, rs1)
	}
	// The real's SYN-ACK goes back from the VIP.
	out = handle(t, d, tcp4(rs1, client, synack, 5000, 1001, nil), 2)
	if src, dst := addrs(out); src != ap(vip) || dst != ap(client) {
		t.Fatalf("SYN-ACK rewritten to %v -> %v, want %v -> %v", src, dst, vip, client)
	}
	// Sequence numbers, payload and flags are untouched by plain NAT.
	in := tcp4(client, vip, psh, 1001, 5001, []byte("GET / HTTP/1.1\r\n\r\n"))
	want := tcp4(client, rs1, psh, 1001, 5001, []byte("GET / HTTP/1.1\r\n\r\n"))
	if out = handle(t, d, in, 3); !bytes.Equal(out, want) {
		t.Fatalf("data segment:\n got %x\nwant %x", out, want)
	}
	f := d.Flows(3)
	if len(f) != 1 || f[0].State != StateEstablished || f[0].Real != ap(rs1) {
		t.Fatalf("flows = %+v, want one ESTABLISHED flow to rs1", f)
	}
	if r := d.services[0].Reals[0]; r.Active != 1 || r.Inactive != 0 {
		t.Fatalf("rs1 active/inactive = %d/%d, want 1/0", r.Active, r.Inactive)
	}
	// A second connection goes to the next real (rr).
	out = handle(t, d, tcp4(client2, vip, syn, 1, 0, nil), 4)
	if _, dst := addrs(out); dst != ap(rs2) {
		t.Fatalf("second SYN to %v, want %v", dst, rs2)
	}
}

func TestTCPStatesAndReuse(t *testing.T) {
	d := newTestDirector(t)
	steps := []struct {
		name       string
		pkt        []byte
		fromClient bool
		want       State
	}{
		{"syn", tcp4(client, vip, syn, 1, 0, nil), true, StateSynRecv},
		{"synack", tcp4(rs1, client, synack, 9, 2, nil), false, StateSynRecv},
		{"ack", tcp4(client, vip, ack, 2, 10, nil), true, StateEstablished},
		{"server fin", tcp4(rs1, client, fin, 10, 2, nil), false, StateFinWait},
		{"client fin", tcp4(client, vip, fin, 2, 11, nil), true, StateTimeWait},
		{"last ack", tcp4(rs1, client, ack, 11, 3, nil), false, StateTimeWait},
	}
	for i, s := range steps {
		if handle(t, d, s.pkt, int64(i+1)) == nil {
			t.Fatalf("%s: dropped", s.name)
		}
		if f := d.Flows(int64(i + 1)); len(f) != 1 || f[0].State != s.want {
			t.Fatalf("%s: flows %+v, want state %v", s.name, f, s.want)
		}
	}
	if st := d.Stats(); st.FlowsCreated != 1 {
		t.Fatalf("flows created = %d, want 1", st.FlowsCreated)
	}
	// A new SYN on the TIME_WAIT tuple is a new flow, rescheduled (rr: rs2).
	out := handle(t, d, tcp4(client, vip, syn, 7777, 0, nil), 10)
	if _, dst := addrs(out); dst != ap(rs2) {
		t.Fatalf("reused tuple sent to %v, want rescheduled to %v", dst, rs2)
	}
	if st := d.Stats(); st.FlowsReused != 1 || st.FlowsCreated != 2 || st.Flows != 1 {
		t.Fatalf("stats %+v, want 1 reused, 2 created, 1 live", st)
	}
	if r := d.services[0].Reals[0]; r.Active != 0 || r.Inactive != 0 {
		t.Fatalf("rs1 counts %d/%d after its flow ended, want 0/0", r.Active, r.Inactive)
	}
}

// TestRealConns: every flow inserted counts once on its real's Conns
// (ipvsadm's Conns), whatever becomes of it; packets of a flow do not.
func TestRealConns(t *testing.T) {
	d := newTestDirector(t)
	conns := func() [3]uint64 {
		r := d.Services()[0].Reals
		return [3]uint64{r[0].Conns, r[1].Conns, r[2].Conns}
	}
	handle(t, d, tcp4(client, vip, syn, 1, 0, nil), 1) // rr: rs1
	handle(t, d, tcp4(rs1, client, synack, 9, 2, nil), 2)
	handle(t, d, tcp4(client, vip, ack, 2, 10, nil), 3)
	if got := conns(); got != [3]uint64{1, 0, 0} {
		t.Fatalf("after one connection to rs1: conns %v, want [1 0 0]", got)
	}
	handle(t, d, tcp4(client2, vip, syn, 1, 0, nil), 4) // rs2
	handle(t, d, tcp4(client, vip, rst, 2, 0, nil), 5)
	handle(t, d, tcp4(client, vip, syn, 500, 0, nil), 6) // the tuple reused: rs3
	handle(t, d, tcp4(client, vip, syn, 500, 0, nil), 7) // a retransmitted SYN: the same flow
	if got := conns(); got != [3]uint64{1, 1, 1} {
		t.Fatalf("after three flows: conns %v, want [1 1 1]", got)
	}
	// Expired flows stay counted.
	d.Sweep(1+20*60*sec, 100)
	if got := conns(); got != [3]uint64{1, 1, 1} || d.Stats().Flows != 0 {
		t.Fatalf("after the flows expired: conns %v, want [1 1 1] (flows %d)", got, d.Stats().Flows)
	}
}

func TestMidStreamMissIsScheduled(t *testing.T) {
	d := newTestDirector(t)
	out := handle(t, d, tcp4(client, vip, psh, 123, 456, []byte("x")), 1)
	if _, dst := addrs(out); dst != ap(rs1) {
		t.Fatalf("mid-stream miss sent to %v, want %v", dst, rs1)
	}
	if f := d.Flows(1); len(f) != 1 || f[0].State != StateEstablished {
		t.Fatalf("flows %+v, want one ESTABLISHED", f)
	}
	// A RST with no flow creates nothing.
	if out := handle(t, d, tcp4(client2, vip, rst, 1, 0, nil), 2); out != nil {
		t.Fatal("stray RST forwarded")
	}
	if got := d.Stats().Drop(DropStrayRST); got != 1 {
		t.Fatalf("stray_rst = %d, want 1", got)
	}
}

func TestFromRealWithoutFlow(t *testing.T) {
	d := newTestDirector(t)
	// From a real's service port: dropped (patent step 5).
	if out := handle(t, d, tcp4(rs1, client, psh, 1, 1, []byte("hi")), 1); out != nil {
		t.Fatal("packet from a real's service port with no flow was forwarded")
	}
	if got := d.Stats().Drop(DropNoFlow); got != 1 {
		t.Fatalf("no_flow = %d, want 1", got)
	}
	// The real's other traffic passes unchanged.
	other := tcp4("198.18.10.11:33000", "198.18.50.1:443", syn, 1, 0, nil)
	orig := bytes.Clone(other)
	if out := handle(t, d, other, 2); !bytes.Equal(out, orig) {
		t.Fatal("unrelated packet from a real was changed or dropped")
	}
}

func TestUDPFlow(t *testing.T) {
	d := newTestDirector(t)
	out := handle(t, d, udp4(client, udpVIP, []byte("ping")), 1)
	if want := udp4(client, "198.18.10.11:5353", []byte("ping")); !bytes.Equal(out, want) {
		t.Fatalf("udp to real:\n got %x\nwant %x", out, want)
	}
	out = handle(t, d, udp4("198.18.10.11:5353", client, []byte("pong")), 2)
	if want := udp4(udpVIP, client, []byte("pong")); !bytes.Equal(out, want) {
		t.Fatalf("udp reply:\n got %x\nwant %x", out, want)
	}
	// Idle past the UDP timeout, the flow is gone.
	if n := d.Sweep(2+300*sec, 100); n != 1 {
		t.Fatalf("expired %d flows, want 1", n)
	}
	if st := d.Stats(); st.Flows != 0 || st.FlowsExpired != 1 {
		t.Fatalf("after expiry: %+v", st)
	}
}

func TestEchoToVIP(t *testing.T) {
	d := newTestDirector(t)
	in := icmp4("198.18.1.2", "198.18.100.1", header.ICMPv4Echo, 0, 0x12340001, []byte("abcdefgh"))
	want := icmp4("198.18.100.1", "198.18.1.2", header.ICMPv4EchoReply, 0, 0x12340001, []byte("abcdefgh"))
	out := handle(t, d, in, 1)
	if !bytes.Equal(out, want) {
		t.Fatalf("echo reply:\n got %x\nwant %x", out, want)
	}
}

func TestFlowLimit(t *testing.T) {
	d := newTestDirector(t, func(c *Config) { c.MaxFlows = 2 })
	for i, c := range []string{"198.18.1.2:1", "198.18.1.2:2", "198.18.1.2:3"} {
		out := handle(t, d, tcp4(c, vip, syn, 1, 0, nil), 1)
		if (out == nil) != (i == 2) {
			t.Fatalf("SYN %d: forwarded=%v", i, out != nil)
		}
	}
	if got := d.Stats().Drop(DropFlowLimit); got != 1 {
		t.Fatalf("flow_limit = %d, want 1", got)
	}
}

func TestPersistence(t *testing.T) {
	d := newTestDirector(t, func(c *Config) { c.Services[0].Persistence = 60e9 })
	first := handle(t, d, tcp4("198.18.1.2:1", vip, syn, 1, 0, nil), 1)
	_, want := addrs(first)
	for port := 2; port < 6; port++ {
		src := "198.18.1.2:" + string(rune('0'+port))
		out := handle(t, d, tcp4(src, vip, syn, 1, 0, nil), 2)
		if _, dst := addrs(out); dst != want {
			t.Fatalf("connection %d to %v, want %v (persistence)", port, dst, want)
		}
	}
	// Another client is scheduled normally (rr moves on).
	out := handle(t, d, tcp4("198.18.1.3:1", vip, syn, 1, 0, nil), 3)
	if _, dst := addrs(out); dst == want {
		t.Fatalf("other client also got %v", dst)
	}
	// All flows expire; the affinity outlives them by the persistence
	// time, then is forgotten.
	d.Sweep(10*60*sec, 1000)
	out = handle(t, d, tcp4("198.18.1.2:9", vip, syn, 1, 0, nil), 10*60*sec+30*sec)
	if _, dst := addrs(out); dst != want {
		t.Fatalf("within persistence after flows ended: %v, want %v", dst, want)
	}
}

// Bad input is dropped with one counter per reason.
func TestBadInput(t *testing.T) {
	good := tcp4(client, vip, syn, 1, 0, nil)
	mut := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	cases := []struct {
		name string
		pkt  []byte
		want DropReason
	}{
		{"empty", nil, DropTruncated},
		{"short ip", good[:10], DropTruncated},
		{"version 5", mut(func(b []byte) []byte { b[0] = 0x55; return b }), DropMalformed},
		{"ihl 4", mut(func(b []byte) []byte { b[0] = 0x44; return b }), DropMalformed},
		{"total length beyond buffer", good[:len(good)-1], DropTruncated},
		{"ip checksum", mut(func(b []byte) []byte { b[10] ^= 1; return b }), DropBadChecksum},
		{"tcp checksum", mut(func(b []byte) []byte { b[len(b)-3] ^= 1; return b }), DropBadChecksum},
		{"tcp data offset 4", mut(func(b []byte) []byte { b[32] = 0x40; return b }), DropMalformed},
		{"tcp offset beyond", mut(func(b []byte) []byte { b[32] = 0xf0; return b }), DropTruncated},
		{"fragment", fragment(good), DropFragment},
		{"sctp", ipv4(ap(client).Addr(), ap(vip).Addr(), 132, make([]byte, 12)), DropUnknownProto},
		{"no service", tcp4(client, "198.18.100.1:81", syn, 1, 0, nil), DropNoService},
		{"icmp timestamp", icmp4("198.18.1.2", "198.18.100.1", 13, 0, 0, make([]byte, 12)), DropICMPOther},
		{"icmp error no flow", icmp4("198.18.1.2", "198.18.100.1", header.ICMPv4DstUnreachable, header.ICMPv4FragmentationNeeded, 1400, tcp4(vip, client, ack, 1, 1, nil)[:28]), DropICMPNoFlow},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := newTestDirector(t)
			if out, _ := d.HandlePacket(c.pkt, 1); out != nil {
				t.Fatalf("forwarded, want drop %v", c.want)
			}
			st := d.Stats()
			for r := DropTruncated; r < numDropReasons; r++ {
				want := uint64(0)
				if r == c.want {
					want = 1
				}
				if st.Drops[r] != want {
					t.Errorf("%v = %d, want %d", r, st.Drops[r], want)
				}
			}
		})
	}
}

// fragment marks a packet as a first fragment (MF set), fixing the checksum.
func fragment(b []byte) []byte {
	b = bytes.Clone(b)
	ip := header.IPv4(b)
	ip.SetFlagsFragmentOffset(header.IPv4FlagMoreFragments, 0)
	ip.SetChecksum(0)
	ip.SetChecksum(^ip.CalculateChecksum())
	return b
}

// Golden ICMP translation: a "fragmentation needed" about a reply VIP->client,
// sent by the client side, reaches the real with the quote it knows
// (real->client), and one from the real side reaches the client with the
// quote it knows (client->VIP).
func TestICMPErrorTranslation(t *testing.T) {
	d := newTestDirector(t)
	handle(t, d, tcp4(client, vip, syn, 1000, 0, nil), 1)
	handle(t, d, tcp4(rs1, client, synack, 5000, 1001, nil), 2)

	// A router on the client side cannot forward a 1500-byte reply.
	const mtu = 1400
	quoteOut := tcp4(vip, client, psh, 5001, 1001, make([]byte, 64))[:48]
	in := icmp4("198.18.2.1", "198.18.100.1", header.ICMPv4DstUnreachable, header.ICMPv4FragmentationNeeded, mtu, quoteOut)
	wantQuote := tcp4(rs1, client, psh, 5001, 1001, make([]byte, 64))[:48]
	// The quoted transport checksum is not translated (see setQuoted).
	copy(wantQuote[36:38], quoteOut[36:38])
	want := icmp4("198.18.2.1", "198.18.10.11", header.ICMPv4DstUnreachable, header.ICMPv4FragmentationNeeded, mtu, wantQuote)
	if out := handle(t, d, in, 3); !bytes.Equal(out, want) {
		t.Fatalf("client-side error:\n got %x\nwant %x", out, want)
	}

	// The real itself (or a router near it) reports on client->real.
	quoteIn := tcp4(client, rs1, psh, 1001, 5001, make([]byte, 64))[:48]
	in = icmp4("198.18.10.11", "198.18.1.2", header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 0, quoteIn)
	wantQuote = tcp4(client, vip, psh, 1001, 5001, make([]byte, 64))[:48]
	copy(wantQuote[36:38], quoteIn[36:38])
	want = icmp4("198.18.100.1", "198.18.1.2", header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 0, wantQuote)
	if out := handle(t, d, in, 4); !bytes.Equal(out, want) {
		t.Fatalf("real-side error:\n got %x\nwant %x", out, want)
	}
	// From a router between director and reals: the sender stays.
	in = icmp4("198.18.10.1", "198.18.1.2", header.ICMPv4TimeExceeded, 0, 0, quoteIn)
	want = icmp4("198.18.10.1", "198.18.1.2", header.ICMPv4TimeExceeded, 0, 0, wantQuote)
	if out := handle(t, d, in, 5); !bytes.Equal(out, want) {
		t.Fatalf("router error:\n got %x\nwant %x", out, want)
	}
	if got := d.Stats().ICMPErrors; got != 3 {
		t.Fatalf("icmp errors translated = %d, want 3", got)
	}
	// The quoted IP header checksum still verifies.
	out := handle(t, d, icmp4("198.18.10.11", "198.18.1.2", header.ICMPv4DstUnreachable, 4, 0, quoteIn), 6)
	inner := header.IPv4(out[28:48])
	if inner.CalculateChecksum() != 0xffff {
		t.Fatalf("quoted IP checksum broken: %#04x", binary.BigEndian.Uint16(inner[10:]))
	}
}

func TestDecodeRewriteAllocs(t *testing.T) {
	d := newTestDirector(t)
	pkt := tcp4(client, vip, psh, 1, 1, make([]byte, 100))
	handle(t, d, bytes.Clone(pkt), 1)
	reply := tcp4(rs1, client, psh, 1, 1, make([]byte, 100))
	buf := make([]byte, len(pkt))
	n := testing.AllocsPerRun(1000, func() {
		copy(buf, pkt)
		d.HandlePacket(buf, 2)
		copy(buf, reply)
		d.HandlePacket(buf, 2)
	})
	if n != 0 {
		t.Fatalf("%v allocations per packet pair, want 0", n)
	}
}

// A UDP flow whose real went down moves to a healthy real at its next
// datagram.
func TestUDPFlowLeavesDownReal(t *testing.T) {
	d := newTestDirector(t, func(c *Config) {
		c.Services[1].Reals = append(c.Services[1].Reals, &balancer.Real{Addr: ap("198.18.10.12:5353"), Weight: 1})
	})
	out := handle(t, d, udp4(client, udpVIP, []byte("a")), 1)
	if _, dst := addrs(out); dst != ap("198.18.10.11:5353") {
		t.Fatalf("first datagram to %v", dst)
	}
	if err := d.SetDown(17, ap(udpVIP), ap("198.18.10.11:5353"), true); err != nil {
		t.Fatal(err)
	}
	out = handle(t, d, udp4(client, udpVIP, []byte("b")), 2)
	if _, dst := addrs(out); dst != ap("198.18.10.12:5353") {
		t.Fatalf("datagram after the real went down to %v", dst)
	}
	if f := d.Flows(2); len(f) != 1 || f[0].Real != ap("198.18.10.12:5353") {
		t.Fatalf("flows %+v", f)
	}
}

// csumReplace16 agrees with a checksum computed from scratch, and leaves the
// field alone when the word did not change (where RFC 1624 eqn. 3 alone
// would turn 0xffff into 0x0000).
func TestCsumReplace16(t *testing.T) {
	data := make([]byte, 64)
	stored := func() uint16 { return ^checksum.Checksum(data, 0) }
	seed := uint32(1)
	next := func() uint16 { seed = seed*1664525 + 1013904223; return uint16(seed >> 16) }
	for i := range len(data) / 2 {
		binary.BigEndian.PutUint16(data[2*i:], next())
	}
	xsum := stored()
	for range 10000 {
		off := 2 * int(next()%uint16(len(data)/2))
		v := next()
		if next()%8 == 0 {
			v = binary.BigEndian.Uint16(data[off:]) // unchanged word
		}
		xsum = put16(data, off, v, xsum)
		if want := stored(); xsum != want && !(xsum^want == 0xffff && (xsum == 0 || want == 0)) {
			t.Fatalf("incremental %#04x, from scratch %#04x", xsum, want)
		}
	}
	if got := csumReplace16(0xffff, 0x1234, 0x1234); got != 0xffff {
		t.Fatalf("unchanged word changed the field 0xffff to %#04x", got)
	}
	if eqn3 := ^checksum.Combine(checksum.Combine(^uint16(0xffff), ^uint16(0x1234)), 0x1234); eqn3 != 0 {
		t.Fatalf("eqn. 3 on an unchanged word gives %#04x; the comment says 0x0000", eqn3)
	}
}

// Services reports each real's state and traffic from its one record; a
// removed real is listed while flows use it. Moving a real's flows needs
// recovery.
func TestServicesAndRemoval(t *testing.T) {
	d := newTestDirector(t)
	syn1 := tcp4(client, vip, syn, 1, 0, nil)
	handle(t, d, syn1, 1)
	handle(t, d, tcp4(rs1, client, synack, 9, 2, make([]byte, 10)), 1)
	if err := d.RemoveReal(6, ap(vip), ap(rs1), true); !errors.Is(err, ErrRecoveryOff) {
		t.Fatalf("rehome without recovery: %v, want ErrRecoveryOff", err)
	}
	if err := d.RemoveReal(6, ap(vip), ap(rs1), false); err != nil {
		t.Fatal(err)
	}
	svcs := d.Services()
	if len(svcs) != 2 || svcs[0].Service != "tcp:"+vip || svcs[0].Scheduler != "rr" || len(svcs[0].Reals) != 3 {
		t.Fatalf("services %+v", svcs)
	}
	r := svcs[0].Reals[0]
	want := RealInfo{Addr: ap(rs1), Weight: 0, Removed: true, Inactive: 1,
		Traffic: balancer.Traffic{Conns: 1, PacketsIn: 1, BytesIn: uint64(len(syn1)), PacketsOut: 1, BytesOut: 50}}
	if r != want {
		t.Fatalf("rs1 %+v, want %+v", r, want)
	}
	// Once its last flow is gone, a removed real is no longer listed.
	d.Sweep(1+2*60*sec, 100)
	if reals := d.Services()[0].Reals; len(reals) != 2 || reals[0].Addr != ap(rs2) {
		t.Fatalf("after its flow ended: %+v", reals)
	}
	// Added again, it takes its old place back.
	if err := d.AddReal(6, ap(vip), ap(rs1), 3, 0); err != nil {
		t.Fatal(err)
	}
	if r := d.Services()[0].Reals[0]; r.Addr != ap(rs1) || r.Weight != 3 || r.Removed || r.PacketsIn != 1 {
		t.Fatalf("re-added %+v", r)
	}
}
