// Package netstack is the gVisor TCP/IP stack that performs recovery
// handshakes: it dials a real server from a recovery address (IPv4 or IPv6),
// captures the SYN, SYN-ACK and final ACK on its link, and aborts the
// endpoint. It sees nothing but its own handshakes, and writes nothing after
// a final ACK.
package netstack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"holdfast/internal/shrink"
	"holdfast/internal/wire"
	"holdfast/internal/workq"

	"github.com/rs/zerolog"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

const nicID = 1

// Stack is a gVisor TCP/IP stack used only to perform recovery handshakes:
// it dials a real server from a recovery address, the link tap captures the
// SYN, the SYN-ACK and the final ACK, and the endpoint is aborted right after.
// From then on the director splices the client's segments into that
// connection itself.
//
// The stack sees nothing but its own handshakes: Inject accepts a packet only
// for a dial in progress, and the tap lets nothing out for a tuple once its
// final ACK has left (so Abort's RST never reaches the real).
type Stack struct {
	s   *gstack.Stack
	ep  *linkEP
	out func([]byte) // writes a packet toward the real servers (the TUN)
	log zerolog.Logger

	mu    sync.Mutex
	dials map[tuple]*dial // handshakes in progress

	// Dials to settle (see settle), worked off by a few goroutines: no
	// goroutine per dial (a Go runtime keeps every goroutine it ever had
	// at once, about 500 bytes each, for good).
	settling *workq.Queue[*dial]
	stop     chan struct{}
	workers  sync.WaitGroup

	stray atomic.Uint64 // netstack packets dropped by the tap
}

type tuple struct{ local, remote netip.AddrPort }

type dial struct {
	t      tuple
	opts   wire.DialOptions
	hs     wire.Handshake
	synned bool // our SYN left (hs.ISS is known)
	synAck bool
	// Once captured or ended, nothing more leaves for the tuple (the tap
	// drops it): Abort's RST must never reach the real. Once the dial is
	// gone from dials, nothing leaves for the tuple either.
	captured bool  // the final ACK is leaving: the dial succeeded
	sending  bool  // the tap is writing the final ACK: settle waits for it
	cause    error // why the dial was ended early (timeout, cancel)
	ended    bool  // done was called (or is being called)

	ep       tcpip.Endpoint
	wq       waiter.Queue
	we       waiter.Entry
	deadline time.Time // zero: none; see reap
	done     func(wire.Handshake, error)
}

// New builds the stack with the recovery addresses, of either family, on one
// NIC whose packets go to out. mtu is the TUN's MTU.
func New(addrs []netip.Addr, mtu int, out func([]byte), log zerolog.Logger) (_ *Stack, err error) {
	s := gstack.New(gstack.Options{
		NetworkProtocols:   []gstack.NetworkProtocolFactory{ipv4.NewProtocol, newIPv6},
		TransportProtocols: []gstack.TransportProtocolFactory{tcp.NewProtocol},
	})
	n := &Stack{
		s:        s,
		out:      out,
		log:      log,
		dials:    make(map[tuple]*dial),
		settling: workq.New[*dial](),
		stop:     make(chan struct{}),
	}
	defer func() {
		if err != nil {
			// The stack's own goroutines (the TCP processors) stop
			// only with it.
			s.Close()
			s.Wait()
		}
	}()
	n.ep = &linkEP{Endpoint: channel.New(1, uint32(mtu), ""), n: n}
	if err := s.CreateNIC(nicID, n.ep); err != nil {
		return nil, fmt.Errorf("netstack: create NIC: %s", err)
	}
	for _, a := range addrs {
		a = a.Unmap()
		if a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() || (a.Is6() && !a.IsGlobalUnicast()) {
			// A recovery address is routed to the director from beyond
			// its links: an IPv6 link-local one (or a zone) names a link
			// the netstack, behind the TUN, is not on.
			return nil, fmt.Errorf("netstack: recovery address %s: expected a unicast address (IPv6: global unicast, no zone)", a)
		}
		pa := tcpip.ProtocolAddress{
			Protocol:          netProto(a),
			AddressWithPrefix: tcpipAddr(a).WithPrefix(),
		}
		if err := s.AddProtocolAddress(nicID, pa, gstack.AddressProperties{}); err != nil {
			return nil, fmt.Errorf("netstack: add recovery address %s: %s", a, err)
		}
	}
	s.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})
	sack := tcpip.TCPSACKEnabled(true)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); err != nil {
		return nil, fmt.Errorf("netstack: enable SACK: %s", err)
	}
	// The SYN's window scale follows the receive buffer (see Dial); allow
	// buffers big enough for shift 14.
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4096, Default: 1 << 20, Max: 1 << 30}
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv); err != nil {
		return nil, fmt.Errorf("netstack: receive buffer range: %s", err)
	}
	for range settleWorkers {
		n.workers.Go(func() { n.settling.Run(n.stop, n.settle) })
	}
	n.workers.Go(n.reap)
	return n, nil
}

const settleWorkers = 2

// newIPv6 is gVisor's IPv6 with everything but unicast turned off. The NIC
// is the far side of a layer-3 TUN: neighbour discovery there is the
// kernel's, and the stack's addresses are the director's own, assigned
// once. So no duplicate address detection (its Neighbor Solicitations
// would go to the reals, and the address would stay tentative, refusing
// dials, for a second), no MLD reports for the solicited-node groups the
// addresses join, no router solicitations, no router advertisements
// handled, no link-local or SLAAC addresses. Whatever the stack still sends
// that is not a handshake is dropped and counted by the tap (Stray).
var newIPv6 = ipv6.NewProtocolWithOptions(ipv6.Options{
	NDPConfigs: ipv6.NDPConfigurations{
		MaxRtrSolicitations: 0,
		HandleRAs:           ipv6.HandlingRAsDisabled,
	},
	AutoGenLinkLocal: false,
	MLD:              ipv6.MLDOptions{Enabled: false},
	DADConfigs:       gstack.DADConfigurations{DupAddrDetectTransmits: 0},
})

// netProto is the network protocol of a (unmapped) address.
func netProto(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Is4() {
		return ipv4.ProtocolNumber
	}
	return ipv6.ProtocolNumber
}

// tcpipAddr converts an (unmapped) address to gVisor's.
func tcpipAddr(a netip.Addr) tcpip.Address {
	if a.Is4() {
		return tcpip.AddrFrom4(a.As4())
	}
	return tcpip.AddrFrom16(a.As16())
}

// netipAddr converts a gVisor address of 4 or 16 bytes.
func netipAddr(a tcpip.Address) netip.Addr {
	if a.Len() == header.IPv4AddressSize {
		return netip.AddrFrom4(a.As4())
	}
	return netip.AddrFrom16(a.As16())
}

// Close stops the stack. Dials still in progress never end: callers end
// theirs first.
func (n *Stack) Close() {
	close(n.stop)
	n.workers.Wait()
	n.s.Close()
	n.s.Wait()
}

// Stray counts packets the tap dropped: anything the stack sent that was not
// part of a handshake in progress (RSTs after Abort, retransmissions, and
// any NDP or MLD the IPv6 protocol sends though newIPv6 turns them off).
func (n *Stack) Stray() uint64 { return n.stray.Load() }

// rcvBufForShift is the receive buffer that makes gVisor advertise shift s
// (tcp.FindWndScale: the smallest shift that fits the buffer in 16 bits).
func rcvBufForShift(s int) int64 {
	if s <= 0 {
		return 65535
	}
	return int64(0xffff) << s
}

// Start begins one recovery handshake; done is called once, from one of
// the netstack's goroutines, with what the tap captured, or with a
// *DialError. The endpoint is aborted before done is called, and nothing it
// sends leaves. A timeout above 0 ends the dial then, give or take reapEvery (the error wraps
// context.DeadlineExceeded); cancel ends it early with cause (unless the
// handshake completed first). An error from Start itself means done will
// not be called.
func (n *Stack) Start(o wire.DialOptions, timeout time.Duration, done func(wire.Handshake, error)) (cancel func(cause error), err error) {
	// The tuple is matched against the addresses of the packets, which
	// are never IPv4-mapped.
	o.Local = netip.AddrPortFrom(o.Local.Addr().Unmap(), o.Local.Port())
	o.Remote = netip.AddrPortFrom(o.Remote.Addr().Unmap(), o.Remote.Port())
	if !o.Local.Addr().IsValid() || o.Local.Addr().Is4() != o.Remote.Addr().Is4() {
		return nil, fmt.Errorf("dial %s -> %s: the addresses are not of one IP version", o.Local, o.Remote)
	}
	d := &dial{t: tuple{o.Local, o.Remote}, opts: o, done: done}
	n.mu.Lock()
	if _, busy := n.dials[d.t]; busy {
		n.mu.Unlock()
		return nil, fmt.Errorf("dial %s -> %s: tuple already dialing", o.Local, o.Remote)
	}
	n.dials[d.t] = d
	n.mu.Unlock()
	ep, terr := n.s.NewEndpoint(tcp.ProtocolNumber, netProto(o.Local.Addr()), &d.wq)
	if terr != nil {
		n.forget(d)
		return nil, fmt.Errorf("dial %s -> %s: new endpoint: %s", o.Local, o.Remote, terr)
	}
	d.ep = ep
	fail := func(err error) (func(error), error) {
		n.mu.Lock()
		d.ended = true
		n.mu.Unlock()
		ep.Abort()
		ep.Close()
		n.forget(d)
		return nil, err
	}
	ep.SocketOptions().SetReceiveBufferSize(rcvBufForShift(o.WScale), true)
	if o.MSS > 0 {
		if err := ep.SetSockOptInt(tcpip.MaxSegOption, o.MSS); err != nil {
			return fail(fmt.Errorf("dial %s -> %s: set MSS %d: %s", o.Local, o.Remote, o.MSS, err))
		}
	}
	ep.SocketOptions().SetReuseAddress(true)
	if err := ep.Bind(tcpip.FullAddress{NIC: nicID, Addr: tcpipAddr(o.Local.Addr()), Port: o.Local.Port()}); err != nil {
		return fail(fmt.Errorf("dial %s -> %s: bind: %s", o.Local, o.Remote, err))
	}
	// Writable fires before the final ACK is written: an event only asks
	// settle to look (an error, or a closed endpoint, ends the dial).
	d.we = waiter.NewFunctionEntry(waiter.EventOut|waiter.EventErr|waiter.EventHUp, func(waiter.EventMask) { n.enqueue(d) })
	d.wq.EventRegister(&d.we)
	if timeout > 0 {
		n.mu.Lock()
		d.deadline = time.Now().Add(timeout)
		n.mu.Unlock()
	}
	if err := ep.Connect(tcpip.FullAddress{NIC: nicID, Addr: tcpipAddr(o.Remote.Addr()), Port: o.Remote.Port()}); err != nil {
		if _, started := err.(*tcpip.ErrConnectStarted); !started {
			d.wq.EventUnregister(&d.we)
			return fail(fmt.Errorf("dial %s -> %s: connect: %s", o.Local, o.Remote, err))
		}
	}
	return func(cause error) { n.end(d, cause) }, nil
}

// end ends d early with cause, unless it ended already.
func (n *Stack) end(d *dial, cause error) {
	n.mu.Lock()
	if d.cause == nil {
		d.cause = cause
	}
	n.mu.Unlock()
	n.enqueue(d)
}

// forget removes d from the dials in progress.
func (n *Stack) forget(d *dial) {
	n.mu.Lock()
	if n.dials[d.t] == d {
		n.dials = shrink.Delete(n.dials, d.t)
	}
	n.mu.Unlock()
}

// enqueue asks a worker to settle d. It never blocks: the tap calls it from
// inside the stack.
func (n *Stack) enqueue(d *dial) { n.settling.Push(d) }

// settle ends d if it is over: the final ACK left (success), it was ended
// early, or the endpoint failed. Otherwise (an early writable event) the
// dial goes on.
func (n *Stack) settle(d *dial) {
	n.mu.Lock()
	if d.ended || d.sending {
		// Ended, or the final ACK is still being written: the tap
		// enqueues d again once it is out, so that nothing (the parked
		// segments) reaches the real before it.
		n.mu.Unlock()
		return
	}
	captured, cause, hs, ep := d.captured, d.cause, d.hs, d.ep
	n.mu.Unlock()
	o := d.opts
	var err error
	switch {
	case captured:
	case cause != nil:
		err = &DialError{Local: o.Local, Remote: o.Remote, Err: cause}
	default:
		if e := ep.LastError(); e != nil {
			err = &DialError{Local: o.Local, Remote: o.Remote, Err: errors.New(e.String()), Refused: isRefused(e)}
		} else if st := tcp.EndpointState(ep.State()); st == tcp.StateClose || st == tcp.StateError {
			err = &DialError{Local: o.Local, Remote: o.Remote, Err: errors.New("connection closed"), Refused: true}
		} else {
			return // still dialing
		}
	}
	n.mu.Lock()
	if d.ended || d.sending || d.captured != captured {
		n.mu.Unlock()
		if !d.ended {
			n.enqueue(d) // captured meanwhile: decide again
		}
		return
	}
	d.ended = true
	done := d.done
	d.ep, d.done = nil, nil // whatever still points at d keeps little
	n.mu.Unlock()
	d.wq.EventUnregister(&d.we)
	ep.Abort()
	ep.Close()
	n.forget(d)
	done(hs, err)
}

// reapEvery is how often reap looks for dials past their deadline: a timer
// per dial would keep each dial (and its endpoint) reachable from the
// runtime's timer heap until the deadline, long after it ended.
const reapEvery = 100 * time.Millisecond

// reap ends the dials that ran past their deadline.
func (n *Stack) reap() {
	t := time.NewTicker(reapEvery)
	defer t.Stop()
	var late []*dial
	for {
		select {
		case <-n.stop:
			return
		case now := <-t.C:
			n.mu.Lock()
			for _, d := range n.dials {
				if !d.deadline.IsZero() && now.After(d.deadline) && d.cause == nil && !d.ended {
					d.cause = context.DeadlineExceeded
					late = append(late, d)
				}
			}
			n.mu.Unlock()
			for i, d := range late {
				n.enqueue(d)
				late[i] = nil
			}
			late = late[:0]
		}
	}
}

func isRefused(err tcpip.Error) bool {
	_, ok := err.(*tcpip.ErrConnectionRefused)
	return ok
}

// DialError is a failed recovery handshake.
type DialError struct {
	Local, Remote netip.AddrPort
	Refused       bool // the real answered RST
	Err           error
}

func (e *DialError) Error() string {
	return fmt.Sprintf("recovery dial %s -> %s: %v", e.Local, e.Remote, e.Err)
}

// Unwrap gives the cause, and wire.ErrRefused for a refused dial.
func (e *DialError) Unwrap() []error {
	if e.Refused {
		return []error{e.Err, wire.ErrRefused}
	}
	return []error{e.Err}
}

// segment is the TCP segment of an IPv4 or IPv6 packet.
type segment struct {
	proto    tcpip.NetworkProtocolNumber
	src, dst tcpip.Address
	tcp      header.TCP
}

// parseSegment finds the TCP segment of an IPv4 packet or of an IPv6 packet
// with the fixed header only: neither gVisor's recovery segments nor a
// real's answers to them carry extension headers, and anything else is not
// the stack's to see.
func parseSegment(b []byte) (segment, bool) {
	var s segment
	if len(b) == 0 {
		return s, false
	}
	switch header.IPVersion(b) {
	case header.IPv4Version:
		ip := header.IPv4(b)
		if !ip.IsValid(len(b)) || ip.TransportProtocol() != header.TCPProtocolNumber {
			return s, false
		}
		s = segment{proto: ipv4.ProtocolNumber, src: ip.SourceAddress(), dst: ip.DestinationAddress(), tcp: ip.Payload()}
	case header.IPv6Version:
		ip := header.IPv6(b)
		if !ip.IsValid(len(b)) || ip.NextHeader() != uint8(header.TCPProtocolNumber) {
			return s, false
		}
		s = segment{proto: ipv6.ProtocolNumber, src: ip.SourceAddress(), dst: ip.DestinationAddress(), tcp: ip.Payload()}
	default:
		return s, false
	}
	if len(s.tcp) < header.TCPMinimumSize || int(s.tcp.DataOffset()) < header.TCPMinimumSize || int(s.tcp.DataOffset()) > len(s.tcp) {
		return s, false
	}
	return s, true
}

// setChecksum computes the TCP checksum of s over its pseudo-header (RFC
// 9293 3.1 for IPv4, RFC 8200 8.1 for IPv6: the same sum over addresses of
// either length, protocol and length).
func (s segment) setChecksum() {
	s.tcp.SetChecksum(0)
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, s.src, s.dst, uint16(len(s.tcp)))
	s.tcp.SetChecksum(^checksum.Checksum(s.tcp, xsum))
}

// Inject hands a packet from a real to the stack if it belongs to a dial in
// progress, and reports whether it did. pkt is copied; a partial checksum
// (virtio-net NEEDS_CSUM) is completed first, as gVisor verifies it.
func (n *Stack) Inject(pkt []byte, partial bool) bool {
	seg, ok := parseSegment(pkt)
	if !ok {
		return false
	}
	tcph := seg.tcp
	t := tuple{
		local:  netip.AddrPortFrom(netipAddr(seg.dst), tcph.DestinationPort()),
		remote: netip.AddrPortFrom(netipAddr(seg.src), tcph.SourcePort()),
	}
	n.mu.Lock()
	d := n.dials[t]
	if d == nil {
		n.mu.Unlock()
		return false
	}
	// The SYN-ACK is recorded only if it acknowledges our SYN (RFC 9293
	// 3.10.7.3: SEG.ACK = ISS+1 in SYN-SENT; the stack resets any other):
	// the first one seen may be forged by anyone who knows the tuple, and
	// recording it would give the recovered flow its window scale and
	// timestamp choice, before gVisor drops it.
	if f := tcph.Flags(); f&(header.TCPFlagSyn|header.TCPFlagAck) == header.TCPFlagSyn|header.TCPFlagAck && !d.synAck &&
		d.synned && tcph.AckNumber() == d.hs.ISS+1 {
		o := header.ParseSynOptions(tcph.Options(), true)
		d.synAck = true
		d.hs.IRS = tcph.SequenceNumber()
		d.hs.TS = o.TS && d.opts.Timestamps
		d.hs.SynAckTSval, d.hs.SynAckTSecr = o.TSVal, o.TSEcr
		d.hs.PeerWScale = o.WS
		d.hs.PeerMSS = int(o.MSS)
		d.hs.SACKPermitted = o.SACKPermitted
	}
	n.mu.Unlock()
	if partial {
		pkt = append([]byte(nil), pkt...)
		seg, _ := parseSegment(pkt)
		seg.setChecksum()
	}
	pb := gstack.NewPacketBuffer(gstack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
	n.ep.InjectInbound(seg.proto, pb)
	pb.DecRef()
	return true
}

// linkEP is the netstack's NIC: a channel endpoint whose WritePackets taps
// every outbound packet instead of queueing it.
type linkEP struct {
	*channel.Endpoint
	n *Stack
}

// WritePackets is called synchronously by the stack for each outbound packet.
func (e *linkEP) WritePackets(pkts gstack.PacketBufferList) (int, tcpip.Error) {
	for _, pkt := range pkts.AsSlice() {
		var b []byte
		for _, s := range pkt.AsSlices() {
			b = append(b, s...)
		}
		e.n.tap(b)
	}
	return pkts.Len(), nil
}

// tap decides one outbound packet of the stack: a SYN of a dial in progress
// (timestamps stripped if the client has none), the final ACK (captured, and
// the tuple silenced in the same step), a RST (dropped), or anything else of
// a dial in progress (let out). Anything else (no TCP: the NDP or MLD the
// IPv6 stack might still send) is dropped and counted. The
// decision is made under n.mu; the write to the device is not (the pump's
// Inject takes n.mu too, and a device write may block).
func (n *Stack) tap(b []byte) {
	seg, ok := parseSegment(b)
	if !ok {
		n.stray.Add(1)
		return
	}
	tcph := seg.tcp
	t := tuple{
		local:  netip.AddrPortFrom(netipAddr(seg.src), tcph.SourcePort()),
		remote: netip.AddrPortFrom(netipAddr(seg.dst), tcph.DestinationPort()),
	}
	n.mu.Lock()
	d := n.dials[t]
	if d == nil || d.captured || d.ended {
		n.mu.Unlock()
		n.stray.Add(1)
		return
	}
	var captured *dial
	f := tcph.Flags()
	switch {
	case f&header.TCPFlagRst != 0:
		// Before the capture the stack resets only what it takes for a
		// bad answer to its SYN: a SYN-ACK with the wrong ack, which
		// anyone who knows the tuple can forge. Its RST (seq = the
		// forged ack) would land in the real's window and reset the
		// embryonic connection of the real's own SYN-ACK on its way.
		n.mu.Unlock()
		n.stray.Add(1)
		return
	case f&header.TCPFlagSyn != 0 && f&header.TCPFlagAck == 0:
		o := header.ParseSynOptions(tcph.Options(), false)
		d.hs.ISS = tcph.SequenceNumber()
		d.synned = true
		d.hs.OurWScale = o.WS
		if d.opts.Timestamps {
			d.hs.SynTSval = o.TSVal
		}
		if !d.opts.Timestamps || !d.opts.SACK {
			stripOptions(seg, !d.opts.Timestamps, !d.opts.SACK)
		}
	case d.synAck && f == header.TCPFlagAck && len(tcph.Payload()) == 0:
		o := header.ParseTCPOptions(tcph.Options())
		d.hs.AckSeq, d.hs.AckAck = tcph.SequenceNumber(), tcph.AckNumber()
		d.hs.AckTSval, d.hs.AckTSecr = o.TSVal, o.TSEcr
		d.hs.AckWindow = tcph.WindowSize()
		// Silenced in the same step that lets the final ACK out: nothing
		// the stack sends for the tuple after it (Abort's RST) leaves.
		d.captured, d.sending = true, true
		captured = d
	}
	n.mu.Unlock()
	n.out(b)
	if captured != nil {
		n.mu.Lock()
		captured.sending = false
		n.mu.Unlock()
		n.enqueue(captured)
	}
}

// stripOptions replaces the timestamp and/or SACK-permitted options of a SYN
// with NOPs (gVisor always offers both; a client without them must not get a
// server that uses them) and recomputes the TCP checksum.
func stripOptions(seg segment, ts, sack bool) {
	opts := seg.tcp.Options()
	// Options already replaced stay replaced when the list ends early (an
	// EOL, a malformed option): the checksum below covers them.
scan:
	for i := 0; i < len(opts); {
		switch kind := opts[i]; kind {
		case header.TCPOptionEOL:
			break scan
		case header.TCPOptionNOP:
			i++
			continue
		}
		if i+1 >= len(opts) || opts[i+1] < 2 || i+int(opts[i+1]) > len(opts) {
			break scan
		}
		l := int(opts[i+1])
		if (ts && opts[i] == header.TCPOptionTS) || (sack && opts[i] == header.TCPOptionSACKPermitted) {
			for j := i; j < i+l; j++ {
				opts[j] = header.TCPOptionNOP
			}
		}
		i += l
	}
	seg.setChecksum()
}
