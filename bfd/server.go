package bfd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// Port is the single-hop BFD Control port (RFC 5881 section 4).
const Port = 3784

// Defaults: FRR's, what operators know; 900 ms to notice a dead director.
const (
	DefaultInterval   = 300 * time.Millisecond
	DefaultMultiplier = 3
)

// Config configures a Server.
type Config struct {
	// Peers are the routers a session is kept with (one each); packets
	// from any other address are dropped.
	Peers []netip.Addr
	// Active opens the sessions (sends before the router has); otherwise
	// a session answers only once its router has sent to it.
	Active bool
	// Interval is the Desired Min TX and Required Min RX Interval once a
	// session is Up (before, at least 1 s); Multiplier is the Detect Mult.
	// Zero values are the defaults.
	Interval   time.Duration
	Multiplier uint8
	// Port is where Control packets are received, PeerPort where they are
	// sent; 0 is Port. For tests.
	Port, PeerPort uint16
	// Log gets the session changes; the zero Logger discards them.
	Log zerolog.Logger
}

// Validate reports what is wrong with c, naming values, not flags.
func (c Config) Validate() error {
	var errs []error
	if c.Interval != 0 && (c.Interval < 10*time.Millisecond || c.Interval > 10*time.Second || c.Interval%time.Microsecond != 0) {
		errs = append(errs, fmt.Errorf("interval %v: want 10ms to 10s", c.Interval))
	}
	for _, p := range c.Peers {
		if !p.IsValid() || p.Is4In6() || p.IsUnspecified() || p.IsMulticast() {
			errs = append(errs, fmt.Errorf("peer %v: want a unicast IPv4 or IPv6 address", p))
		}
	}
	return errors.Join(errs...)
}

// Server keeps one session per peer.
type Server struct {
	cfg      Config
	log      zerolog.Logger
	sessions map[netip.Addr]*session // fixed in New: read without a lock
	byDisc   map[uint32]*session
	rx       []*net.UDPConn

	cancel context.CancelFunc
	wg     sync.WaitGroup
	c      counters
}

// counters are the Server's cumulative counts.
type counters struct {
	rx, tx, ups, downs                                       atomic.Uint64
	dropTTL, dropPeer, dropBad, dropDisc, dropQueue, sendErr atomic.Uint64
}

// Counters are a Server's cumulative counts since New.
type Counters struct {
	Received, Sent uint64 // valid Control packets taken by a session; packets sent
	Ups, Downs     uint64 // sessions that came Up; Up sessions that went down
	// Drops by reason: TTL (not 255: from off the link), Peer (not a
	// configured router), Malformed (RFC 5880 section 6.8.6's checks, or
	// authentication), Discriminator (names no session of the sender),
	// Queue (the session's queue was full).
	DropTTL, DropPeer, DropMalformed, DropDiscriminator, DropQueue uint64
	SendErrors                                                     uint64
}

// SessionStatus is one session, as `birdc show bfd sessions` has it.
type SessionStatus struct {
	Peer, Local netip.Addr // Local: the address it sends from (invalid before the first packet)
	State       State
	RemoteState State
	Diag        Diag // why it last left Up (ours)
	Since       time.Time
	LocalDisc   uint32
	RemoteDisc  uint32
	TxInterval  time.Duration // the periodic interval (0: silent)
	DetectTime  time.Duration // the remote's multiplier times the slower of our rx and its tx
}

type inbound struct {
	c     Control
	local netip.Addr
	at    time.Time
}

type session struct {
	peer netip.Addr
	in   chan inbound
	st   atomic.Pointer[SessionStatus]
}

// New binds the Control port for the families of cfg.Peers and starts a
// session per peer. ctx bounds the sessions' goroutines; Close stops them.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Multiplier == 0 {
		cfg.Multiplier = DefaultMultiplier
	}
	if cfg.Port == 0 {
		cfg.Port = Port
	}
	if cfg.PeerPort == 0 {
		cfg.PeerPort = Port
	}
	s := &Server{cfg: cfg, log: cfg.Log, sessions: map[netip.Addr]*session{}, byDisc: map[uint32]*session{}}
	var v4, v6 bool
	for _, p := range cfg.Peers {
		p = p.WithZone("")
		if s.sessions[p] != nil {
			continue
		}
		disc := rand.Uint32()
		for disc == 0 || s.byDisc[disc] != nil {
			disc = rand.Uint32()
		}
		ss := &session{peer: p, in: make(chan inbound, 16)}
		ss.st.Store(&SessionStatus{Peer: p, State: Down, RemoteState: Down, LocalDisc: disc})
		s.sessions[p], s.byDisc[disc] = ss, ss
		v4, v6 = v4 || p.Is4(), v6 || p.Is6()
	}
	for _, fam := range []struct {
		on      bool
		network string
		any     netip.Addr
	}{{v4, "udp4", netip.IPv4Unspecified()}, {v6, "udp6", netip.IPv6Unspecified()}} {
		if !fam.on {
			continue
		}
		c, err := listenRx(ctx, fam.network, netip.AddrPortFrom(fam.any, cfg.Port))
		if err != nil {
			s.closeRx()
			return nil, err
		}
		s.rx = append(s.rx, c)
	}
	ctx, s.cancel = context.WithCancel(ctx)
	for _, ss := range s.sessions {
		s.wg.Go(func() { s.run(ctx, ss, ss.st.Load().LocalDisc) })
	}
	for _, c := range s.rx {
		s.wg.Go(func() { s.read(c) })
	}
	return s, nil
}

// listenRx binds the Control port with the TTL (hop limit) and destination
// address of every packet delivered with it.
func listenRx(ctx context.Context, network string, at netip.AddrPort) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			if network == "udp4" {
				serr = errors.Join(unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTTL, 1),
					unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1))
			} else {
				serr = errors.Join(unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVHOPLIMIT, 1),
					unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1))
			}
		})
		return errors.Join(err, serr)
	}}
	pc, err := lc.ListenPacket(ctx, network, at.String())
	if err != nil {
		return nil, fmt.Errorf("BFD control port: %w", err)
	}
	return pc.(*net.UDPConn), nil
}

// dialTx is a session's sending socket: from local (or any address the
// route gives), a source port from 49152 to 65535 kept for the session's
// life, TTL (hop limit) 255 (RFC 5881 sections 4 and 5).
func dialTx(local, peer netip.Addr) (*net.UDPConn, error) {
	network := "udp4"
	if peer.Is6() {
		network = "udp6"
	}
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			if network == "udp4" {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TTL, 255)
			} else {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, 255)
			}
		})
		return errors.Join(err, serr)
	}}
	if !local.IsValid() {
		local = netip.IPv4Unspecified()
		if peer.Is6() {
			local = netip.IPv6Unspecified()
		}
	}
	var err error
	for range 32 {
		var pc net.PacketConn
		src := netip.AddrPortFrom(local, uint16(49152+rand.IntN(65536-49152)))
		if pc, err = lc.ListenPacket(context.Background(), network, src.String()); err == nil {
			c := pc.(*net.UDPConn)
			return c, nil
		}
	}
	return nil, fmt.Errorf("BFD source port: %w", err)
}

// read takes Control packets off c and hands each valid one to its session.
func (s *Server) read(c *net.UDPConn) {
	b := make([]byte, 512)
	oob := make([]byte, 256)
	for {
		n, oobn, _, from, err := c.ReadMsgUDPAddrPort(b, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		now := time.Now()
		ttl, local := parseOOB(oob[:oobn])
		if ttl != 255 {
			s.c.dropTTL.Add(1)
			continue
		}
		ss := s.sessions[from.Addr().Unmap().WithZone("")]
		if ss == nil {
			s.c.dropPeer.Add(1)
			continue
		}
		p, err := Parse(b[:n])
		if err != nil {
			s.c.dropBad.Add(1)
			continue
		}
		if p.YourDisc != 0 && s.byDisc[p.YourDisc] != ss {
			s.c.dropDisc.Add(1)
			continue
		}
		select {
		case ss.in <- inbound{c: p, local: local, at: now}:
		default:
			s.c.dropQueue.Add(1)
		}
	}
}

// parseOOB reads the TTL (hop limit) and the destination address; ttl -1
// if absent.
func parseOOB(oob []byte) (ttl int, dst netip.Addr) {
	ttl = -1
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return ttl, dst
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_TTL && len(m.Data) >= 4,
			m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_HOPLIMIT && len(m.Data) >= 4:
			ttl = int(int32(binary.NativeEndian.Uint32(m.Data)))
		case m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= unix.SizeofInet4Pktinfo:
			// struct in_pktinfo: ifindex, spec_dst, addr (the header's destination)
			dst = netip.AddrFrom4([4]byte(m.Data[8:12]))
		case m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_PKTINFO && len(m.Data) >= unix.SizeofInet6Pktinfo:
			dst = netip.AddrFrom16([16]byte(m.Data[0:16]))
		}
	}
	return ttl, dst
}

// run is a session: its state machine, timers and sending socket.
func (s *Server) run(ctx context.Context, ss *session, disc uint32) {
	f := newFSM(disc, s.cfg.Interval, s.cfg.Multiplier, !s.cfg.Active)
	var (
		tx    *net.UDPConn
		local netip.Addr
		since = time.Now()
		buf   = make([]byte, 0, packetLen)
	)
	defer func() {
		if tx != nil {
			tx.Close()
		}
	}()
	log := s.log.With().Str("peer", ss.peer.String()).Logger()
	send := func(c Control) {
		if tx == nil {
			var err error
			if tx, err = dialTx(local, ss.peer); err != nil {
				s.c.sendErr.Add(1)
				log.Warn().Err(err).Msg("bfd: no socket to send from")
				return
			}
		}
		if _, err := tx.WriteToUDPAddrPort(c.Append(buf[:0]), netip.AddrPortFrom(ss.peer, s.cfg.PeerPort)); err != nil {
			s.c.sendErr.Add(1)
			return
		}
		s.c.tx.Add(1)
	}
	publish := func() {
		ss.st.Store(&SessionStatus{Peer: ss.peer, Local: local, State: f.state, RemoteState: f.remoteState, Diag: f.diag,
			Since: since, LocalDisc: f.localDisc, RemoteDisc: f.remoteDisc, TxInterval: f.txInterval(),
			DetectTime: f.detectTime()})
	}
	txTimer := time.NewTimer(time.Hour)
	detect := time.NewTimer(time.Hour)
	defer txTimer.Stop()
	defer detect.Stop()
	// The periodic timer is set when a packet was sent, when sending
	// starts, and when the interval shrinks: never merely because a packet
	// arrived, or a router sending faster than us would postpone our
	// packets for ever.
	var (
		txPending bool
		txIv      time.Duration
	)
	arm := func(now time.Time, sent bool) {
		switch iv := f.txInterval(); {
		case iv == 0:
			txTimer.Stop()
			txPending = false
		case sent || !txPending || iv < txIv:
			txTimer.Reset(jitter(iv, f.mult))
			txPending, txIv = true, iv
		}
		if d := f.deadline(); !d.IsZero() {
			detect.Reset(d.Sub(now))
		} else {
			detect.Stop()
		}
	}
	changed := func(old State, now time.Time) {
		since = now
		switch {
		case f.state == Up:
			s.c.ups.Add(1)
			log.Info().Str("local", local.String()).Dur("detect", f.detectTime()).Msg("bfd session up")
		case old == Up:
			s.c.downs.Add(1)
			log.Warn().Str("diag", f.diag.String()).Str("remote_state", f.remoteState.String()).Msg("bfd session down")
		}
	}
	arm(time.Now(), false)
	for {
		select {
		case <-ctx.Done():
			if c, ok := f.adminDown(); ok {
				send(c)
			}
			return
		case in := <-ss.in:
			s.c.rx.Add(1)
			if in.local.IsValid() && in.local != local && f.state != Up {
				// The router reaches us at this address: answer from it
				// (it knows the session by our address).
				local = in.local
				if tx != nil {
					tx.Close()
					tx = nil
				}
			}
			old := f.state
			ch, reply := f.receive(in.c, in.at)
			if ch {
				changed(old, in.at)
			}
			if reply {
				send(f.packet())
			}
			arm(in.at, reply)
			publish()
		case <-txTimer.C:
			txPending = false
			send(f.packet())
			arm(time.Now(), true)
			publish()
		case <-detect.C:
			now := time.Now()
			old := f.state
			if f.expire(now) {
				changed(old, now)
			}
			arm(now, false)
			publish()
		}
	}
}

// jitter is iv reduced by 0 to 25 % (10 to 25 % with a multiplier of 1),
// as section 6.8.7 asks, so that sessions do not synchronise.
func jitter(iv time.Duration, mult uint8) time.Duration {
	lo, hi := 75, 100
	if mult == 1 {
		hi = 90
	}
	return iv * time.Duration(lo+rand.IntN(hi-lo+1)) / 100
}

// Status is every session, by peer address.
func (s *Server) Status() []SessionStatus {
	out := make([]SessionStatus, 0, len(s.sessions))
	for _, ss := range s.sessions {
		out = append(out, *ss.st.Load())
	}
	slices.SortFunc(out, func(a, b SessionStatus) int { return a.Peer.Compare(b.Peer) })
	return out
}

// Session is one peer's session; false if the peer has none.
func (s *Server) Session(peer netip.Addr) (SessionStatus, bool) {
	ss := s.sessions[peer.Unmap().WithZone("")]
	if ss == nil {
		return SessionStatus{}, false
	}
	return *ss.st.Load(), true
}

// Counters returns the cumulative counts.
func (s *Server) Counters() Counters {
	return Counters{Received: s.c.rx.Load(), Sent: s.c.tx.Load(), Ups: s.c.ups.Load(), Downs: s.c.downs.Load(),
		DropTTL: s.c.dropTTL.Load(), DropPeer: s.c.dropPeer.Load(), DropMalformed: s.c.dropBad.Load(),
		DropDiscriminator: s.c.dropDisc.Load(), DropQueue: s.c.dropQueue.Load(), SendErrors: s.c.sendErr.Load()}
}

// Close tells every router with a session that it is administratively
// down, then stops the sessions and closes the sockets.
func (s *Server) Close() error {
	s.cancel()
	s.closeRx()
	s.wg.Wait()
	return nil
}

func (s *Server) closeRx() {
	for _, c := range s.rx {
		c.Close()
	}
}
