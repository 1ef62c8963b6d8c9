package forge

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// checkPacket verifies pkt with gVisor's parser: a valid IPv4 header whose
// checksum verifies, and a TCP segment whose checksum verifies over the
// pseudo-header, with the fields of seg.
func checkPacket(t *testing.T, pkt []byte, seg *Segment) {
	t.Helper()
	ip := header.IPv4(pkt)
	if !ip.IsValid(len(pkt)) {
		t.Fatalf("not a valid IPv4 packet: %x", pkt)
	}
	if !ip.IsChecksumValid() {
		t.Fatalf("IPv4 checksum does not verify: %x", pkt)
	}
	if ip.TransportProtocol() != header.TCPProtocolNumber || int(ip.TotalLength()) != len(pkt) || ip.TTL() != 64 {
		t.Fatalf("protocol %d, total length %d of %d, ttl %d", ip.TransportProtocol(), ip.TotalLength(), len(pkt), ip.TTL())
	}
	src, dst := ip.SourceAddress(), ip.DestinationAddress()
	if src != tcpip.AddrFrom4(seg.Src.Addr().As4()) || dst != tcpip.AddrFrom4(seg.Dst.Addr().As4()) {
		t.Fatalf("addresses %v -> %v, want %v -> %v", src, dst, seg.Src, seg.Dst)
	}
	tcp := header.TCP(ip.Payload())
	payload := tcp.Payload()
	if !tcp.IsChecksumValid(src, dst, checksum.Checksum(payload, 0), uint16(len(payload))) {
		t.Fatalf("TCP checksum does not verify: %x", pkt)
	}
	if tcp.SourcePort() != seg.Src.Port() || tcp.DestinationPort() != seg.Dst.Port() ||
		tcp.SequenceNumber() != seg.Seq || tcp.AckNumber() != seg.Ack || tcp.Flags() != seg.Flags ||
		int(tcp.DataOffset()) != header.TCPMinimumSize+len(seg.Options) || string(tcp.Options()) != string(seg.Options) ||
		string(payload) != string(seg.Payload) {
		t.Fatalf("TCP %d -> %d seq %d ack %d flags %v offset %d payload %q, want %+v",
			tcp.SourcePort(), tcp.DestinationPort(), tcp.SequenceNumber(), tcp.AckNumber(), tcp.Flags(), tcp.DataOffset(), payload, seg)
	}
}

// A segment with a timestamp option: the option is in the header, counted
// in the data offset and covered by the checksum; options of a bad length
// are refused.
func TestAppendOptions(t *testing.T) {
	seg := Segment{Src: netip.MustParseAddrPort("198.18.1.2:40000"), Dst: netip.MustParseAddrPort("198.18.100.1:80"),
		Flags: header.TCPFlagAck | header.TCPFlagPsh, Seq: 7, Ack: 9, Options: TimestampOption(0x01020304, 0xa0b0c0d5), Payload: []byte("x")}
	pkt, err := seg.Append(nil)
	if err != nil {
		t.Fatal(err)
	}
	checkPacket(t, pkt, &seg)
	opts := header.ParseTCPOptions(header.TCP(header.IPv4(pkt).Payload()).Options())
	if !opts.TS || opts.TSVal != 0x01020304 || opts.TSEcr != 0xa0b0c0d5 {
		t.Fatalf("timestamp option %+v", opts)
	}
	seg.Options = []byte{header.TCPOptionNOP}
	if _, err := seg.Append(nil); err == nil {
		t.Fatal("a 1-byte option list was accepted")
	}
}

func TestAppendChecksums(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		seg := Segment{
			Src:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 1, byte(rng.IntN(256))}), uint16(rng.Uint32())),
			Dst:   netip.MustParseAddrPort("198.18.100.1:80"),
			Flags: Kinds[i%len(Kinds)].Flags(),
			Seq:   rng.Uint32(),
			Ack:   rng.Uint32(),
			ID:    uint16(rng.Uint32()),
		}
		// Odd and even payload lengths: the checksum folds a trailing byte.
		seg.Payload = make([]byte, rng.IntN(40))
		for j := range seg.Payload {
			seg.Payload[j] = byte(rng.Uint32())
		}
		pkt, err := seg.Append([]byte("prefix"))
		if err != nil {
			t.Fatal(err)
		}
		if string(pkt[:6]) != "prefix" || len(pkt) != 6+seg.Len() {
			t.Fatalf("Append did not append: %q", pkt[:6])
		}
		checkPacket(t, pkt[6:], &seg)
	}
}

// A corrupted packet must fail the check: the test above can fail.
func TestChecksumCheckCatchesCorruption(t *testing.T) {
	seg := Segment{Src: netip.MustParseAddrPort("198.18.1.2:40000"), Dst: netip.MustParseAddrPort("198.18.100.1:80"),
		Flags: header.TCPFlagAck | header.TCPFlagPsh, Seq: 1, Ack: 2, Payload: []byte("abc")}
	pkt, err := seg.Append(nil)
	if err != nil {
		t.Fatal(err)
	}
	pkt[len(pkt)-1] ^= 1
	ip := header.IPv4(pkt)
	tcp := header.TCP(ip.Payload())
	if tcp.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksum.Checksum(tcp.Payload(), 0), uint16(len(tcp.Payload()))) {
		t.Fatal("corrupted payload still verifies")
	}
}

func TestAppendRejectsIPv6(t *testing.T) {
	seg := Segment{Src: netip.MustParseAddrPort("[2001:db8::1]:1"), Dst: netip.MustParseAddrPort("198.18.100.1:80")}
	if _, err := seg.Append(nil); err == nil {
		t.Fatal("IPv6 source accepted")
	}
}

func TestAppendNoAlloc(t *testing.T) {
	seg := Segment{Src: netip.MustParseAddrPort("198.18.1.2:40000"), Dst: netip.MustParseAddrPort("198.18.100.1:80"),
		Flags: header.TCPFlagAck, Payload: DefaultPayload}
	buf := make([]byte, 0, 128)
	if n := testing.AllocsPerRun(100, func() { buf, _ = seg.Append(buf[:0]) }); n != 0 {
		t.Fatalf("Append allocates %v times per packet", n)
	}
}

func TestKindFlags(t *testing.T) {
	want := map[Kind]header.TCPFlags{
		DataAck: header.TCPFlagAck | header.TCPFlagPsh,
		PureAck: header.TCPFlagAck,
		Reset:   header.TCPFlagRst,
		Syn:     header.TCPFlagSyn,
		FinAck:  header.TCPFlagFin | header.TCPFlagAck,
	}
	if len(Kinds) != len(want) {
		t.Fatalf("%d kinds, want %d", len(Kinds), len(want))
	}
	for _, k := range Kinds {
		if k.Flags() != want[k] {
			t.Errorf("%v: flags %v, want %v", k, k.Flags(), want[k])
		}
		if k.HasPayload() != (k == DataAck) {
			t.Errorf("%v: payload %v", k, k.HasPayload())
		}
	}
}

func TestHosts(t *testing.T) {
	p := netip.MustParsePrefix("198.18.1.0/24")
	got, err := hosts(p, []netip.Addr{netip.MustParseAddr("198.18.1.2")})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 253 || got[0] != netip.MustParseAddr("198.18.1.1") || got[len(got)-1] != netip.MustParseAddr("198.18.1.254") {
		t.Fatalf("%d hosts, %v .. %v", len(got), got[0], got[len(got)-1])
	}
	for _, a := range got {
		if a == netip.MustParseAddr("198.18.1.2") {
			t.Fatal("excluded address listed")
		}
	}
	for _, bad := range []string{"2001:db8::/64", "10.0.0.0/8", "198.18.1.0/31"} {
		if _, err := hosts(netip.MustParsePrefix(bad), nil); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestPacerBounds(t *testing.T) {
	ctx := context.Background()
	p := &pacer{lim: Limits{Max: 7}, start: time.Now()}
	n := 0
	for p.next(ctx) == nil {
		n++
	}
	if n != 7 {
		t.Fatalf("Max 7 admitted %d", n)
	}
	// 2000/s for 100 ms: about 200, never far more.
	p = &pacer{lim: Limits{Rate: 2000, Duration: 100 * time.Millisecond}, start: time.Now()}
	n = 0
	for p.next(ctx) == nil {
		n++
	}
	if n < 100 || n > 202 {
		t.Fatalf("2000/s for 100ms admitted %d, want about 200 and at most 202", n)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	p = &pacer{lim: Limits{Rate: 1}, start: time.Now()}
	if err := p.next(cctx); err == nil {
		t.Fatal("a cancelled context admitted a segment")
	}
}
