package netstack

import (
	"context"
	"errors"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"holdfast/internal/wire"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// peer is a second gVisor stack playing the real server, wired back to back
// with the recovery Netstack: what the tap lets out reaches the peer, what the
// peer sends goes through Netstack.Inject (as the director's NAT would).
type peer struct {
	s    *gstack.Stack
	ep   *channel.Endpoint
	seen chan []byte // every packet the peer received, copied
}

func newPeer(t *testing.T, addr netip.Addr, n **Stack) *peer {
	t.Helper()
	s := gstack.New(gstack.Options{
		NetworkProtocols:   []gstack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []gstack.TransportProtocolFactory{tcp.NewProtocol},
	})
	p := &peer{s: s, ep: channel.New(64, 1500, ""), seen: make(chan []byte, 64)}
	if err := s.CreateNIC(1, p.ep); err != nil {
		t.Fatal(err)
	}
	s.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddrFrom4(addr.As4()).WithPrefix()}, gstack.AddressProperties{})
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: 1}})
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
			(*n).Inject(b, false)
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
	p.ep.InjectInbound(ipv4.ProtocolNumber, pb)
	pb.DecRef()
}

func (p *peer) listen(t *testing.T, port uint16) (tcpip.Endpoint, *waiter.Queue) {
	var wq waiter.Queue
	ep, err := p.s.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
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
	rec := netip.MustParseAddr("198.18.200.1")
	real := netip.MustParseAddrPort("198.18.10.11:8080")
	n, p := newPair(t, rec, real)
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
		o := header.ParseSynOptions(header.TCP(header.IPv4(syn).Payload()).Options(), false)
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
			t.Fatalf("ts=%v: a packet leaked after the handshake: flags %v", ts, header.TCP(header.IPv4(b).Payload()).Flags())
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

func TestNetstackDialRefused(t *testing.T) {
	rec := netip.MustParseAddr("198.18.200.1")
	real := netip.MustParseAddrPort("198.18.10.11:8081") // nothing listens
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
	n, err := New([]netip.Addr{netip.MustParseAddr("198.18.200.1")}, 1500, func([]byte) {}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	b := make([]byte, 40)
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{TotalLength: 40, TTL: 64, Protocol: uint8(tcp.ProtocolNumber),
		SrcAddr: tcpip.AddrFrom4([4]byte{198, 18, 10, 11}), DstAddr: tcpip.AddrFrom4([4]byte{198, 18, 200, 1})})
	header.TCP(b[20:]).Encode(&header.TCPFields{SrcPort: 80, DstPort: 20000, DataOffset: 20, Flags: header.TCPFlagAck})
	if n.Inject(b, false) {
		t.Fatal("a packet for no dial was injected")
	}
}

func isWouldBlock(e tcpip.Error) bool {
	_, ok := e.(*tcpip.ErrWouldBlock)
	return ok
}

// TestNetstackStartTimeout: a real that never answers ends the dial at its
// deadline (to reapEvery) with an error wrapping context.DeadlineExceeded,
// done is called once, and the tuple is free for a new dial.
func TestNetstackStartTimeout(t *testing.T) {
	syns := make(chan struct{}, 16)
	n, err := New([]netip.Addr{netip.MustParseAddr("198.18.200.1")}, 1500, func([]byte) { syns <- struct{}{} }, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	o := wire.DialOptions{Local: netip.MustParseAddrPort("198.18.200.1:20000"), Remote: netip.MustParseAddrPort("198.18.10.11:80"), WScale: 7, MSS: 1460}
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
func TestNetstackForgedSynAckIgnored(t *testing.T) {
	rec := netip.MustParseAddr("198.18.200.1")
	real := netip.MustParseAddrPort("198.18.10.11:8080")
	local := netip.AddrPortFrom(rec, 20000)
	var n *Stack
	p := newPeer(t, real.Addr(), &n)
	var forged atomic.Bool
	out := func(b []byte) {
		tcph := header.TCP(header.IPv4(b).Payload())
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
			if f := header.TCP(header.IPv4(b).Payload()).Flags(); f&header.TCPFlagRst != 0 {
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
	opts := []byte{2, 4, 0x05, 0xb4, 1, 3, 3, 14}
	b := make([]byte, 20+20+len(opts))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(tcp.ProtocolNumber),
		SrcAddr: tcpip.AddrFrom4(real.Addr().As4()), DstAddr: tcpip.AddrFrom4(local.Addr().As4())})
	ip.SetChecksum(^ip.CalculateChecksum())
	tcph := header.TCP(b[20:])
	tcph.Encode(&header.TCPFields{SrcPort: real.Port(), DstPort: local.Port(), SeqNum: 777, AckNum: ack,
		DataOffset: uint8(20 + len(opts)), Flags: header.TCPFlagSyn | header.TCPFlagAck, WindowSize: 65535})
	copy(tcph[20:], opts)
	xsum := header.PseudoHeaderChecksum(tcp.ProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(tcph)))
	tcph.SetChecksum(^checksum.Checksum(tcph, xsum))
	return b
}
