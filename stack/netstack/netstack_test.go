package netstack

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"holdfast/internal/wire"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// family is one IP version's addresses for the tests: the recovery address
// and a real (198.18.0.0/15 and 2001:2::/48 only).
type family struct {
	name string
	rec  netip.Addr
	real netip.AddrPort
}

var families = []family{
	{"IPv4", netip.MustParseAddr("198.18.200.1"), netip.MustParseAddrPort("198.18.10.11:8080")},
	{"IPv6", netip.MustParseAddr("2001:2:0:30::1"), netip.MustParseAddrPort("[2001:2:0:20::11]:8080")},
}

// forFamilies runs f as a subtest for each family.
func forFamilies(t *testing.T, f func(t *testing.T, fam family)) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) { f(t, fam) })
	}
}

// peer is a second gVisor stack playing the real server, wired back to back
// with the recovery Netstack: what the tap lets out reaches the peer, what the
// peer sends goes through Netstack.Inject (as the director's NAT would).
type peer struct {
	s     *gstack.Stack
	ep    *channel.Endpoint
	proto tcpip.NetworkProtocolNumber
	seen  chan []byte // every packet the peer received, copied
	// partial hands the peer's packets to Inject as a virtio-net
	// NEEDS_CSUM packet would come: the TCP checksum field holding the
	// pseudo-header sum only.
	partial bool
}

func newPeer(t *testing.T, addr netip.Addr, n **Stack) *peer {
	t.Helper()
	s := gstack.New(gstack.Options{
		// DAD off: a peer's tentative address would refuse the SYN.
		NetworkProtocols:   []gstack.NetworkProtocolFactory{ipv4.NewProtocol, newIPv6},
		TransportProtocols: []gstack.TransportProtocolFactory{tcp.NewProtocol},
	})
	p := &peer{s: s, ep: channel.New(64, 1500, ""), proto: netProto(addr), seen: make(chan []byte, 64)}
	if err := s.CreateNIC(1, p.ep); err != nil {
		t.Fatal(err)
	}
	if err := s.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: p.proto, AddressWithPrefix: tcpipAddr(addr).WithPrefix()}, gstack.AddressProperties{}); err != nil {
		t.Fatal(err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: 1}, {Destination: header.IPv6EmptySubnet, NIC: 1}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			pkt := p.ep.ReadContext(ctx)
			if pkt == nil {
				return
			}
			var b []byte
			for _, s := range pkt.AsSlices() {
				b = append(b, s...)
			}
			pkt.DecRef()
			if p.partial {
				seg, ok := parseSegment(b)
				if !ok {
					t.Errorf("the peer sent a packet that is not TCP: % x", b)
					continue
				}
				seg.tcp.SetChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, seg.src, seg.dst, uint16(len(seg.tcp))))
			}
			(*n).Inject(b, p.partial)
		}
	}()
	t.Cleanup(func() { cancel(); <-done; s.Close(); s.Wait() })
	return p
}

// newPair builds the recovery Netstack on rec wired to a peer playing the
// real at real.
func newPair(t *testing.T, rec netip.Addr, real netip.AddrPort) (*Stack, *peer) {
	t.Helper()
	var n *Stack
	p := newPeer(t, real.Addr(), &n)
	var err error
	n, err = New([]netip.Addr{rec}, 1500, p.deliver, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n, p
}

func (p *peer) deliver(b []byte) {
	select {
	case p.seen <- append([]byte(nil), b...):
	default:
	}
	pb := gstack.NewPacketBuffer(gstack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	p.ep.InjectInbound(p.proto, pb)
	pb.DecRef()
}

// seenTCP is the TCP header of a packet the peer saw.
func seenTCP(t *testing.T, b []byte) header.TCP {
	t.Helper()
	seg, ok := parseSegment(b)
	if !ok {
		t.Fatalf("the peer saw a packet that is not TCP: % x", b)
	}
	return seg.tcp
}

func (p *peer) listen(t *testing.T, port uint16) (tcpip.Endpoint, *waiter.Queue) {
	var wq waiter.Queue
	ep, err := p.s.NewEndpoint(tcp.ProtocolNumber, p.proto, &wq)
	if err != nil {
		t.Fatal(err)
	}
	if err := ep.Bind(tcpip.FullAddress{Port: port}); err != nil {
		t.Fatal(err)
	}
	if err := ep.Listen(8); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ep.Close)
	return ep, &wq
}

func TestNetstackDialCapturesHandshake(t *testing.T) {
	forFamilies(t, func(t *testing.T, fam family) { testDialCapturesHandshake(t, fam, false) })
}

// The real's packets come with a partial checksum (a virtio-net TUN's
// NEEDS_CSUM): Inject completes it over the pseudo-header of their family,
// or the stack would drop them and the dial time out.
func TestNetstackDialPartialChecksum(t *testing.T) {
	forFamilies(t, func(t *testing.T, fam family) { testDialCapturesHandshake(t, fam, true) })
}

func testDialCapturesHandshake(t *testing.T, fam family, partial bool) {
	rec, real := fam.rec, fam.real
	n, p := newPair(t, rec, real)
	p.partial = partial
	ln, lwq := p.listen(t, real.Port())

	for _, ts := range []bool{true, false} {
		local := netip.AddrPortFrom(rec, 20000)
		if !ts {
			local = netip.AddrPortFrom(rec, 20001)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		hs, err := dialOnce(ctx, n, wire.DialOptions{Local: local, Remote: real, Timestamps: ts, SACK: true, WScale: 7, MSS: 1400})
		cancel()
		if err != nil {
			t.Fatalf("ts=%v: dial: %v", ts, err)
		}
		if hs.OurWScale != 7 || hs.PeerWScale < 0 || hs.PeerMSS == 0 || !hs.SACKPermitted {
			t.Fatalf("ts=%v: handshake options %+v", ts, hs)
		}
		if hs.AckSeq != hs.ISS+1 || hs.AckAck != hs.IRS+1 {
			t.Fatalf("ts=%v: final ACK seq/ack %d/%d, want %d/%d", ts, hs.AckSeq, hs.AckAck, hs.ISS+1, hs.IRS+1)
		}
		if hs.TS != ts || (ts && hs.AckTSecr != hs.SynAckTSval) {
			t.Fatalf("ts=%v: timestamps %+v", ts, hs)
		}
		// The peer saw SYN and final ACK; with ts off its SYN carried no
		// timestamp option.
		syn := <-p.seen
		o := header.ParseSynOptions(seenTCP(t, syn).Options(), false)
		if o.TS != ts || o.WS != 7 || o.MSS != 1400 {
			t.Fatalf("ts=%v: SYN options %+v", ts, o)
		}
		<-p.seen // final ACK
		// The peer accepted an established connection, and the RST of
		// Abort never reached it.
		we, ch := waiter.NewChannelEntry(waiter.ReadableEvents)
		lwq.EventRegister(&we)
		conn, _, aerr := ln.Accept(nil)
		for isWouldBlock(aerr) {
			<-ch
			conn, _, aerr = ln.Accept(nil)
		}
		lwq.EventUnregister(&we)
		if aerr != nil {
			t.Fatalf("accept: %s", aerr)
		}
		select {
		case b := <-p.seen:
			t.Fatalf("ts=%v: a packet leaked after the handshake: flags %v", ts, seenTCP(t, b).Flags())
		default:
		}
		if st := tcp.EndpointState(conn.State()); st != tcp.StateEstablished {
			t.Fatalf("peer connection state %v, want established", st)
		}
		conn.Close()
	}
	if n.Stray() == 0 {
		t.Fatalf("the Abort RSTs should have been dropped by the tap and counted")
	}
}

func TestNetstackDialRefused(t *testing.T) { forFamilies(t, testDialRefused) }

func testDialRefused(t *testing.T, fam family) {
	rec := fam.rec
	real := netip.AddrPortFrom(fam.real.Addr(), 8081) // nothing listens
	n, _ := newPair(t, rec, real)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := dialOnce(ctx, n, wire.DialOptions{Local: netip.AddrPortFrom(rec, 20000), Remote: real, Timestamps: true, WScale: 7, MSS: 1460})
	var de *DialError
	if !errors.As(err, &de) || !de.Refused {
		t.Fatalf("dial to a closed port: %v, want a refused DialError", err)
	}
}

func TestNetstackInjectOnlyForDials(t *testing.T) {
	forFamilies(t, func(t *testing.T, fam family) {
		n, err := New([]netip.Addr{fam.rec}, 1500, func([]byte) {}, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(n.Close)
		b := tcpPacket(fam.real, netip.AddrPortFrom(fam.rec, 20000), 1, 0, header.TCPFlagAck, nil)
		if n.Inject(b, false) {
			t.Fatal("a packet for no dial was injected")
		}
	})
}

// tcpPacket is an IPv4 or IPv6 (fixed header only) TCP segment from src to
// dst with valid checksums.
func tcpPacket(src, dst netip.AddrPort, seq, ack uint32, flags header.TCPFlags, opts []byte) []byte {
	tl := header.TCPMinimumSize + len(opts)
	var b []byte
	var tcph header.TCP
	if src.Addr().Is4() {
		b = make([]byte, header.IPv4MinimumSize+tl)
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(tcp.ProtocolNumber),
			SrcAddr: tcpipAddr(src.Addr()), DstAddr: tcpipAddr(dst.Addr())})
		ip.SetChecksum(^ip.CalculateChecksum())
		tcph = header.TCP(b[header.IPv4MinimumSize:])
	} else {
		b = make([]byte, header.IPv6MinimumSize+tl)
		header.IPv6(b).Encode(&header.IPv6Fields{PayloadLength: uint16(tl), TransportProtocol: tcp.ProtocolNumber, HopLimit: 64,
			SrcAddr: tcpipAddr(src.Addr()), DstAddr: tcpipAddr(dst.Addr())})
		tcph = header.TCP(b[header.IPv6MinimumSize:])
	}
	tcph.Encode(&header.TCPFields{SrcPort: src.Port(), DstPort: dst.Port(), SeqNum: seq, AckNum: ack,
		DataOffset: uint8(tl), Flags: flags, WindowSize: 65535})
	copy(tcph[header.TCPMinimumSize:], opts)
	seg, _ := parseSegment(b)
	seg.setChecksum()
	return b
}

func isWouldBlock(e tcpip.Error) bool {
	_, ok := e.(*tcpip.ErrWouldBlock)
	return ok
}

// TestNetstackStartTimeout: a real that never answers ends the dial at its
// deadline (to reapEvery) with an error wrapping context.DeadlineExceeded,
// done is called once, and the tuple is free for a new dial.
func TestNetstackStartTimeout(t *testing.T) { forFamilies(t, testStartTimeout) }

func testStartTimeout(t *testing.T, fam family) {
	syns := make(chan struct{}, 16)
	n, err := New([]netip.Addr{fam.rec}, 1500, func([]byte) { syns <- struct{}{} }, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	o := wire.DialOptions{Local: netip.AddrPortFrom(fam.rec, 20000), Remote: netip.AddrPortFrom(fam.real.Addr(), 80), WScale: 7, MSS: 1460}
	const timeout = 300 * time.Millisecond
	errs := make(chan error, 2)
	start := time.Now()
	if _, err := n.Start(o, timeout, func(_ wire.Handshake, err error) { errs <- err }); err != nil {
		t.Fatal(err)
	}
	<-syns // the SYN left, into the void
	select {
	case err := <-errs:
		took := time.Since(start)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("dial ended with %v, want DeadlineExceeded", err)
		}
		if took < timeout || took > timeout+5*reapEvery {
			t.Fatalf("dial ended after %v, want %v (to %v)", took, timeout, reapEvery)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("dial not ended 5s after its 300ms timeout")
	}
	if _, err := n.Start(o, timeout, func(_ wire.Handshake, err error) { errs <- err }); err != nil {
		t.Fatalf("the tuple is still taken after the dial ended: %v", err)
	}
	select {
	case err := <-errs:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("second dial ended with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("second dial not ended")
	}
}

// dialOnce performs one recovery handshake and returns what it captured (see
// Start). ctx ends it early.
func dialOnce(ctx context.Context, n *Stack, o wire.DialOptions) (wire.Handshake, error) {
	type result struct {
		hs  wire.Handshake
		err error
	}
	ch := make(chan result, 1)
	cancel, err := n.Start(o, 0, func(hs wire.Handshake, err error) { ch <- result{hs, err} })
	if err != nil {
		return wire.Handshake{}, err
	}
	select {
	case r := <-ch:
		return r.hs, r.err
	case <-ctx.Done():
		cancel(ctx.Err())
		r := <-ch
		return r.hs, r.err
	}
}

// A forged SYN-ACK (wrong ack, window scale 14, no timestamps) that reaches
// the stack before the real's changes nothing captured: only a SYN-ACK that
// acknowledges our SYN (ack = ISS+1) is recorded, and the stack's RST for the
// forged one does not leave.
func TestNetstackForgedSynAckIgnored(t *testing.T) { forFamilies(t, testForgedSynAckIgnored) }

func testForgedSynAckIgnored(t *testing.T, fam family) {
	rec, real := fam.rec, fam.real
	local := netip.AddrPortFrom(rec, 20000)
	var n *Stack
	p := newPeer(t, real.Addr(), &n)
	var forged atomic.Bool
	out := func(b []byte) {
		tcph := seenTCP(t, b)
		if f := tcph.Flags(); f == header.TCPFlagSyn && !forged.Swap(true) {
			// Before the peer sees the first SYN, the forger answers it.
			if !n.Inject(forgedSynAck(real, local, tcph.SequenceNumber()+1000), false) {
				t.Error("the forged SYN-ACK was not injected")
			}
		}
		p.deliver(b)
	}
	var err error
	if n, err = New([]netip.Addr{rec}, 1500, out, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	p.listen(t, real.Port())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hs, err := dialOnce(ctx, n, wire.DialOptions{Local: local, Remote: real, Timestamps: true, SACK: true, WScale: 7, MSS: 1400})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	if !forged.Load() {
		t.Fatal("no SYN was forged an answer")
	}
	if hs.PeerWScale == 14 || !hs.TS || hs.IRS == 777 || hs.AckAck != hs.IRS+1 || hs.AckTSecr != hs.SynAckTSval {
		t.Fatalf("the forged SYN-ACK was recorded: %+v", hs)
	}
	// The stack's RST for the forged SYN-ACK never reached the real (in
	// SYN-RECV, it would have reset the connection being made).
	for {
		select {
		case b := <-p.seen:
			if f := seenTCP(t, b).Flags(); f&header.TCPFlagRst != 0 {
				t.Fatalf("a RST reached the real: flags %v", f)
			}
			continue
		default:
		}
		break
	}
}

// forgedSynAck is a SYN-ACK from real to local, seq 777, acknowledging ack,
// with MSS 1460 and window scale 14 and no timestamps.
func forgedSynAck(real, local netip.AddrPort, ack uint32) []byte {
	return tcpPacket(real, local, 777, ack, header.TCPFlagSyn|header.TCPFlagAck, []byte{2, 4, 0x05, 0xb4, 1, 3, 3, 14})
}

// What the IPv6 stack might send besides its handshakes (a Neighbor
// Solicitation, an MLD report) and an IPv6 segment with an extension header
// never reach the device: the tap drops them and counts them as strays.
func TestNetstackTapDropsStrayIPv6(t *testing.T) {
	var outs atomic.Int32
	n, err := New([]netip.Addr{families[1].rec}, 1500, func([]byte) { outs.Add(1) }, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	rec := tcpipAddr(families[1].rec)
	solicited := header.SolicitedNodeAddr(rec)
	icmp6 := func(typ header.ICMPv6Type, size int, dst tcpip.Address) []byte {
		b := make([]byte, header.IPv6MinimumSize+size)
		header.IPv6(b).Encode(&header.IPv6Fields{PayloadLength: uint16(size), TransportProtocol: header.ICMPv6ProtocolNumber,
			HopLimit: 255, SrcAddr: rec, DstAddr: dst})
		header.ICMPv6(b[header.IPv6MinimumSize:]).SetType(typ)
		return b
	}
	// A TCP segment of a dial in progress behind a hop-by-hop header (PadN).
	syn := tcpPacket(netip.AddrPortFrom(families[1].rec, 20000), families[1].real, 1, 0, header.TCPFlagSyn, nil)
	withExt := slices.Concat(syn[:header.IPv6MinimumSize], []byte{uint8(header.TCPProtocolNumber), 0, 1, 4, 0, 0, 0, 0}, syn[header.IPv6MinimumSize:])
	header.IPv6(withExt).SetPayloadLength(uint16(len(withExt) - header.IPv6MinimumSize))
	withExt[header.IPv6NextHeaderOffset] = uint8(header.IPv6HopByHopOptionsExtHdrIdentifier)
	if n.Inject(withExt, false) {
		t.Error("Inject took an IPv6 segment with an extension header")
	}
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"neighbor solicitation", icmp6(header.ICMPv6NeighborSolicit, header.ICMPv6NeighborSolicitMinimumSize, solicited)},
		{"MLDv2 report", icmp6(header.ICMPv6MulticastListenerV2Report, header.ICMPv6HeaderSize+4, header.MLDv2RoutersAddress)},
		{"TCP behind an extension header", withExt},
		{"an IPv6 header cut short", syn[:header.IPv6MinimumSize-1]},
	} {
		before := n.Stray()
		n.tap(tc.b)
		if n.Stray() != before+1 {
			t.Errorf("%s: stray %d, want %d", tc.name, n.Stray(), before+1)
		}
	}
	if outs.Load() != 0 {
		t.Errorf("%d stray packets reached the device", outs.Load())
	}
}

// A recovery address and a real of different IP versions cannot be one
// dial; an IPv6 recovery address that is not global unicast is refused.
func TestNetstackRefusesFamilyMix(t *testing.T) {
	n, err := New([]netip.Addr{families[0].rec, families[1].rec}, 1500, func([]byte) {}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	o := wire.DialOptions{Local: netip.AddrPortFrom(families[1].rec, 20000), Remote: families[0].real, WScale: 7, MSS: 1400}
	if _, err := n.Start(o, time.Second, func(wire.Handshake, error) { t.Error("done called") }); err == nil || !strings.Contains(err.Error(), "not of one IP version") {
		t.Errorf("Start of an IPv6 local to an IPv4 real: %v, want an error", err)
	}
	for _, a := range []string{"fe80::1", "ff02::1", "::", "::1"} {
		if n, err := New([]netip.Addr{netip.MustParseAddr(a)}, 1500, func([]byte) {}, zerolog.Nop()); err == nil {
			n.Close()
			t.Errorf("New with recovery address %s: no error", a)
		}
	}
}
