package daemon

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"holdfast/stack/tun/tuntest"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// A rootless failover: two directors on in-memory devices behind an
// in-test router, a gVisor stack holding the real servers' addresses and a
// gVisor client, as in the lab but without namespaces. The router sends
// client -> VIP packets, and real -> client and real -> recovery address
// packets, to the active director; what a director writes goes to the
// client or the reals by destination. Failing over is cancelling the
// active director's context and moving the router to the other.

// queueDepth is the depth of every packet queue of the topology: more than
// a TCP window's segments, so that no queue drops what TCP has in flight.
const queueDepth = 4096

// peerHost is a gVisor stack on a channel endpoint: the client, or the reals.
type peerHost struct {
	s  *gstack.Stack
	ep *channel.Endpoint
}

func newPeerHost(t *testing.T, addrs ...netip.Addr) *peerHost {
	t.Helper()
	s := gstack.New(gstack.Options{
		NetworkProtocols:   []gstack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []gstack.TransportProtocolFactory{tcp.NewProtocol},
	})
	h := &peerHost{s: s, ep: channel.New(queueDepth, 1500, "")}
	if err := s.CreateNIC(1, h.ep); err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddrFrom4(a.As4()).WithPrefix()}
		if err := s.AddProtocolAddress(1, pa, gstack.AddressProperties{}); err != nil {
			t.Fatal(err)
		}
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: 1}})
	sack := tcpip.TCPSACKEnabled(true) // as Linux peers
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); s.Wait() })
	return h
}

func (h *peerHost) deliver(b []byte) {
	pb := gstack.NewPacketBuffer(gstack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	h.ep.InjectInbound(ipv4.ProtocolNumber, pb)
	pb.DecRef()
}

// flowMark tracks one host's TCP sequence space as the router sees it: the
// end of what it sent, and the highest ACK delivered to it.
type flowMark struct {
	sent, acked seqnum.Value
	seen        bool
}

// router moves the packets of the topology.
type router struct {
	client, reals *peerHost
	realAddrs     map[netip.Addr]bool
	active        atomic.Pointer[tuntest.MemDevice]
	dead          atomic.Pointer[netip.Addr] // a real whose link is cut (it died)
	ctx           context.Context
	wg            sync.WaitGroup

	mu         sync.Mutex
	changed    *sync.Cond
	fromClient flowMark // the client's data, acked by the reals
	fromReals  flowMark // the reals' data, acked by the client
}

func newRouter(t *testing.T, client, reals *peerHost, devs ...*tuntest.MemDevice) *router {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &router{client: client, reals: reals, ctx: ctx,
		realAddrs: map[netip.Addr]bool{realA.Addr(): true, realB.Addr(): true}}
	r.changed = sync.NewCond(&r.mu)
	r.wg.Go(func() { r.fromHost(client, &r.fromClient, func(dst netip.Addr) bool { return dst == vip.Addr() }) })
	r.wg.Go(func() {
		r.fromHost(reals, &r.fromReals, func(dst netip.Addr) bool { return dst == clientIP || dst == recAddr })
	})
	for _, d := range devs {
		r.wg.Go(func() { r.fromDirector(d) })
	}
	t.Cleanup(func() { cancel(); r.wg.Wait() })
	return r
}

// fromHost sends what h emits, when toDirector says so, to the active
// director (a closed one drops it: the link to a dead director).
func (r *router) fromHost(h *peerHost, mark *flowMark, toDirector func(netip.Addr) bool) {
	for {
		pkt := h.ep.ReadContext(r.ctx)
		if pkt == nil {
			return
		}
		var b []byte
		for _, s := range pkt.AsSlices() {
			b = append(b, s...)
		}
		pkt.DecRef()
		ip := header.IPv4(b)
		if !toDirector(netip.AddrFrom4(ip.DestinationAddress().As4())) || r.isDead(netip.AddrFrom4(ip.SourceAddress().As4())) {
			continue
		}
		if ip.Protocol() == uint8(tcp.ProtocolNumber) {
			t := header.TCP(ip.Payload())
			end := seqnum.Value(t.SequenceNumber()).Add(seqnum.Size(len(t.Payload())))
			r.mu.Lock()
			if !mark.seen || mark.sent.LessThan(end) {
				mark.sent, mark.seen = end, true
			}
			r.mu.Unlock()
		}
		r.active.Load().Inject(b)
	}
}

// isDead reports whether a is the real whose link is cut.
func (r *router) isDead(a netip.Addr) bool {
	d := r.dead.Load()
	return d != nil && *d == a
}

// fromDirector delivers what director d writes, by destination.
func (r *router) fromDirector(d *tuntest.MemDevice) {
	for {
		var b []byte
		select {
		case b = <-d.Out:
		case <-r.ctx.Done():
			return
		}
		ip := header.IPv4(b)
		dst := netip.AddrFrom4(ip.DestinationAddress().As4())
		// What reaches a host acknowledges what its peer sent.
		to, mark := r.reals, &r.fromReals
		switch {
		case dst == clientIP:
			to, mark = r.client, &r.fromClient
		case !r.realAddrs[dst] || r.isDead(dst):
			continue
		}
		if t := header.TCP(ip.Payload()); ip.Protocol() == uint8(tcp.ProtocolNumber) && t.Flags().Contains(header.TCPFlagAck) {
			r.mu.Lock()
			if ack := seqnum.Value(t.AckNumber()); mark.acked.LessThan(ack) {
				mark.acked = ack
			}
			r.changed.Broadcast()
			r.mu.Unlock()
		}
		to.deliver(b)
	}
}

// waitQuiet waits until every byte either side sent has been acknowledged
// to it through a director: nothing of the connection is in flight, and a
// director that dies now leaves nothing to retransmit (up to 10 s).
func (r *router) waitQuiet(t *testing.T) {
	t.Helper()
	timedOut := false
	timer := time.AfterFunc(10*time.Second, func() {
		r.mu.Lock()
		timedOut = true
		r.changed.Broadcast()
		r.mu.Unlock()
	})
	defer timer.Stop()
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		c, s := r.fromClient, r.fromReals
		if c.seen && s.seen && !c.acked.LessThan(c.sent) && !s.acked.LessThan(s.sent) {
			return
		}
		if timedOut {
			t.Fatalf("the connection never went quiet: client %+v, reals %+v", c, s)
		}
		r.changed.Wait()
	}
}

// pair is the topology: client, reals, router and directors A (active)
// and B.
type pair struct {
	client, reals *peerHost
	router        *router
	a, b          *testDaemon
	devB          *tuntest.MemDevice
}

func newPair(t *testing.T) *pair {
	t.Helper()
	p := &pair{client: newPeerHost(t, clientIP), reals: newPeerHost(t, realA.Addr(), realB.Addr())}
	devA, devB := tuntest.NewMemDevice("hfa", queueDepth), tuntest.NewMemDevice("hfb", queueDepth)
	p.a = startDaemon(t, testConfig(t, devA, 1))
	p.b = startDaemon(t, testConfig(t, devB, 2))
	p.devB = devB
	p.router = newRouter(t, p.client, p.reals, devA, devB)
	p.router.active.Store(devA)
	return p
}

// failover kills A (its context ends) and moves the router to B.
func (p *pair) failover(t *testing.T) {
	t.Helper()
	p.a.cancel()
	p.router.active.Store(p.devB)
	if err := p.a.stop(t); err != nil {
		t.Fatalf("director A: %v", err)
	}
}

// serve accepts connections on port realA.Port() of every real address and
// runs handle on each, until t ends.
func (p *pair) serve(t *testing.T, handle func(net.Conn)) {
	t.Helper()
	ln, err := gonet.ListenTCP(p.reals.s, tcpip.FullAddress{Port: realA.Port()}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				handle(c)
			})
		}
	})
	t.Cleanup(func() {
		// A connection left behind by a failover never ends on its own.
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

func (p *pair) dial(t *testing.T) *gonet.TCPConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := gonet.DialContextTCP(ctx, p.client.s, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(vip.Addr().As4()), Port: vip.Port()}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("dial the VIP: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// counter reads an unlabelled counter of a /stats object.
func counter(t *testing.T, st map[string]any, name string) float64 {
	t.Helper()
	v, ok := st[name].(float64)
	if !ok {
		t.Fatalf("/stats %s = %v", name, st[name])
	}
	return v
}

// streamByte is byte i of the test stream: consecutive 32-bit big-endian
// counters, so that a gap or a duplicate of any length shows.
func streamByte(i int) byte {
	var w [4]byte
	binary.BigEndian.PutUint32(w[:], uint32(i/4))
	return w[i%4]
}

// TestFailoverKeepsStream: a client downloads a long stream through A; A
// dies in the middle, the router moves to B, and the client receives the
// whole stream, intact: B adopted the flow from the real's retransmission.
func TestFailoverKeepsStream(t *testing.T) {
	const total, cutAt = 8 << 20, 2 << 20
	p := newPair(t)
	p.serve(t, func(c net.Conn) {
		buf := make([]byte, 64<<10)
		for off := 0; off < total; off += len(buf) {
			n := min(len(buf), total-off)
			for i := range n {
				buf[i] = streamByte(off + i)
			}
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
	})
	c := p.dial(t)
	if err := c.SetReadDeadline(time.Now().Add(60 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 32<<10)
	got, cut := 0, false
	for got < total {
		n, err := c.Read(buf)
		for i := range n {
			if buf[i] != streamByte(got+i) {
				t.Fatalf("byte %d of the stream is %#x, want %#x (cut over at %v)", got+i, buf[i], streamByte(got+i), cut)
			}
		}
		got += n
		if err != nil {
			t.Fatalf("after %d of %d bytes: %v", got, total, err)
		}
		if !cut && got >= cutAt {
			if st := p.a.stats(t); counter(t, st, "flows_created_total") != 1 {
				t.Fatalf("director A before the failover: %v", st)
			}
			p.failover(t)
			cut = true
		}
	}
	if n, err := c.Read(buf); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("after the whole stream: %d bytes, %v; want EOF", n, err)
	}
	st := p.b.stats(t)
	if counter(t, st, "adoptions_total") != 1 || counter(t, st, "client_resets_total") != 0 || counter(t, st, "stale_flows_total") != 0 {
		t.Fatalf("director B did not adopt the flow, exactly once and without reset: %v", st)
	}
	t.Logf("%d bytes intact across the failover at %d; B: adoptions %v, recoveries %v, drops %v",
		got, cutAt, st["adoptions_total"], st["recoveries_started_total"], st["drops_total"])
}

// TestFailoverSteers: a client of an echo service talks through A; the
// connection is quiet (every byte acknowledged) when A dies, so only the
// client's next request reaches B. B has no flow: it probes the service's
// reals, the one holding the connection answers, and B forwards the
// request to it with no deltas; the client gets the echo of that request,
// intact, from its own connection.
func TestFailoverSteers(t *testing.T) {
	st := echoAcrossFailover(t, false)
	if counter(t, st, "probe_steers_total") != 1 || counter(t, st, "recoveries_started_total") != 0 ||
		counter(t, st, "adoptions_total") != 0 || counter(t, st, "client_resets_total") != 0 {
		t.Fatalf("director B did not steer the connection to its real once: %v", st)
	}
	if flows := st["flows"].(map[string]any); flows["probe/ESTABLISHED"] != 1.0 {
		t.Fatalf("director B's flows: %v, want one probe ESTABLISHED", flows)
	}
	t.Logf("B: steered %v, parked %v, latency %v", st["probe_steers_total"], st["parked_packets_total"], st["probe_steer_latency_seconds"])
}

// TestFailoverRecovers: as TestFailoverSteers, but the real holding the
// connection dies with A. Its probe goes unanswered, the other real has no
// socket for the tuple; B challenges the client, whose answer proves the
// request is its own, and recovers the connection onto the live real through
// its netstack and the recovery address.
func TestFailoverRecovers(t *testing.T) {
	st := echoAcrossFailover(t, true)
	if counter(t, st, "recoveries_started_total") != 1 || counter(t, st, "recoveries_succeeded_total") != 1 ||
		counter(t, st, "challenges_passed_total") != 1 || counter(t, st, "probes_silent_total") != 1 ||
		counter(t, st, "adoptions_total") != 0 || counter(t, st, "client_resets_total") != 0 {
		t.Fatalf("director B did not recover the connection once: %v", st)
	}
	if flows := st["flows"].(map[string]any); flows["recovered/ESTABLISHED"] != 1.0 {
		t.Fatalf("director B's flows: %v, want one recovered ESTABLISHED", flows)
	}
	t.Logf("B: recoveries %v, parked %v, latency %v", st["recoveries_succeeded_total"], st["parked_packets_total"], st["recovery_latency_seconds"])
}

// echoAcrossFailover runs one echo connection through A, fails over to B
// once it is quiet (with killOwner, the real holding it dies at the same
// time), sends a request of several segments through B and checks its echo.
// It returns B's counters.
func echoAcrossFailover(t *testing.T, killOwner bool) map[string]any {
	p := newPair(t)
	owner := make(chan netip.Addr, 1)
	p.serve(t, func(c net.Conn) {
		owner <- netip.MustParseAddrPort(c.LocalAddr().String()).Addr()
		io.Copy(c, c) //nolint:errcheck // the echo ends with its connection
	})
	c := p.dial(t)
	if err := c.SetDeadline(time.Now().Add(60 * time.Second)); err != nil {
		t.Fatal(err)
	}
	exchange := func(req []byte) {
		t.Helper()
		if _, err := c.Write(req); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(req))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatalf("echo of %d bytes: %v", len(req), err)
		}
		if !bytes.Equal(got, req) {
			t.Fatalf("echo differs from the request (%d bytes)", len(req))
		}
	}
	exchange([]byte("before the failover\n"))
	p.router.waitQuiet(t)
	if killOwner {
		a := <-owner
		p.router.dead.Store(&a)
	}
	p.failover(t)
	// Several segments: the first starts the miss, the rest park behind it.
	req := make([]byte, 20000)
	for i := range req {
		req[i] = streamByte(i)
	}
	exchange(req)
	return p.b.stats(t)
}
