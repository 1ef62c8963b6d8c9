package bfd

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"holdfast/internal/porttest"

	"golang.org/x/sys/unix"
)

// testPeer is a router's end of a session over loopback: a UDP socket at
// 127.0.0.2 with its own TTL, reading the TTL of what it receives.
type testPeer struct {
	t    *testing.T
	c    *net.UDPConn
	to   netip.AddrPort // the server's control port
	ttl  int
	oob  []byte
	from netip.Addr
}

func newTestPeer(t *testing.T, addr netip.Addr, port uint16, to netip.AddrPort, ttl int) *testPeer {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TTL, ttl)
			unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTTL, 1)
		})
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", netip.AddrPortFrom(addr, port).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return &testPeer{t: t, c: pc.(*net.UDPConn), to: to, ttl: ttl, oob: make([]byte, 128), from: addr}
}

func (p *testPeer) send(c Control) {
	p.t.Helper()
	if _, err := p.c.WriteToUDPAddrPort(c.Append(nil), p.to); err != nil {
		p.t.Fatal(err)
	}
}

// recv is the next Control packet from the server and its TTL.
func (p *testPeer) recv(within time.Duration) (Control, int, error) {
	p.t.Helper()
	b := make([]byte, 128)
	p.c.SetReadDeadline(time.Now().Add(within))
	n, oobn, _, _, err := p.c.ReadMsgUDPAddrPort(b, p.oob)
	if err != nil {
		return Control{}, 0, err
	}
	ttl, _ := parseOOB(p.oob[:oobn])
	c, err := Parse(b[:n])
	return c, ttl, err
}

// waitState waits until the server's session with peer is in st.
func waitState(t *testing.T, s *Server, peer netip.Addr, st State, within time.Duration) SessionStatus {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ss, _ := s.Session(peer)
		if ss.State == st {
			return ss
		}
		if time.Now().After(deadline) {
			t.Fatalf("session with %v: %v after %v, want %v", peer, ss.State, within, st)
		}
		time.Sleep(5 * time.Millisecond) // polls a status: a session change has no event to wait on
	}
}

func waitCounter(t *testing.T, name string, get func() uint64, want uint64) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for get() < want {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d, want %d", name, get(), want)
		}
		time.Sleep(5 * time.Millisecond) // polls a counter
	}
}

// handshake brings the session with router up from the router's side.
func handshake(t *testing.T, s *Server, router *testPeer, f *fsm) {
	t.Helper()
	router.send(f.packet())
	var (
		c   Control
		ttl int
		err error
	)
	for c.YourDisc != f.localDisc { // skip what the server sent an earlier session
		if c, ttl, err = router.recv(2 * time.Second); err != nil {
			t.Fatalf("no answer to the router's Down: %v", err)
		}
	}
	if ttl != 255 {
		t.Fatalf("server sent with TTL %d, want 255 (RFC 5881 5)", ttl)
	}
	if c.State != Init || c.YourDisc != f.localDisc {
		t.Fatalf("answer to Down: %+v, want Init naming the router's discriminator", c)
	}
	if f.receive(c, time.Now()); f.state != Up {
		t.Fatalf("router after Init: %v", f.state)
	}
	router.send(f.packet())
	waitState(t, s, router.from, Up, 2*time.Second)
}

func TestServer(t *testing.T) {
	srvPort, peerPort := porttest.UDP(t), porttest.UDP(t)
	routerAddr := netip.MustParseAddr("127.0.0.2")
	s, err := New(context.Background(), Config{Peers: []netip.Addr{routerAddr}, Interval: 50 * time.Millisecond, Port: srvPort, PeerPort: peerPort})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			s.Close()
		}
	})
	to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), srvPort)
	router := newTestPeer(t, routerAddr, peerPort, to, 255)

	// Passive: nothing before the router speaks.
	if c, _, err := router.recv(300 * time.Millisecond); err == nil {
		t.Fatalf("passive server sent %+v before the router did", c)
	}

	f := newFSM(0xabc, 50*time.Millisecond, 3, false)
	handshake(t, s, router, f)
	st, _ := s.Session(routerAddr)
	if st.Local != netip.MustParseAddr("127.0.0.1") || st.RemoteDisc != 0xabc {
		t.Errorf("status once Up: %+v", st)
	}

	// A router sending more often than the server (every 10 ms against
	// its 50) must not hold the server's own packets back: it keeps its
	// interval (BIRD declared such a director dead once).
	got := 0
	steady := f.packet()
	steady.Poll = false // no poll: the server answers nothing, it only sends on its own
	for end := time.Now().Add(400 * time.Millisecond); time.Now().Before(end); {
		router.send(steady)
		if _, _, err := router.recv(10 * time.Millisecond); err == nil {
			got++
		}
	}
	if got < 4 {
		t.Errorf("the server sent %d packets in 400 ms while the router sent every 10 ms; want 4 or more at 50 ms", got)
	}

	// Forged or misdirected packets are dropped and counted, and change
	// nothing.
	c0 := s.Counters()
	forged := newTestPeer(t, routerAddr, porttest.UDP(t), to, 64) // the router's address, TTL of a host farther away
	down := f.packet()
	down.State = Down
	forged.send(down)
	waitCounter(t, "drops for TTL", func() uint64 { return s.Counters().DropTTL }, c0.DropTTL+1)
	stranger := newTestPeer(t, netip.MustParseAddr("127.0.0.3"), porttest.UDP(t), to, 255)
	stranger.send(down)
	waitCounter(t, "drops for peer", func() uint64 { return s.Counters().DropPeer }, c0.DropPeer+1)
	wrong := f.packet()
	wrong.YourDisc ^= 0xffff
	router.send(wrong)
	waitCounter(t, "drops for discriminator", func() uint64 { return s.Counters().DropDiscriminator }, c0.DropDiscriminator+1)
	junk := f.packet().Append(nil)
	junk[0] = 0
	if _, err := router.c.WriteToUDPAddrPort(junk, to); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, "drops malformed", func() uint64 { return s.Counters().DropMalformed }, c0.DropMalformed+1)
	if st, _ := s.Session(routerAddr); st.State != Up {
		t.Fatalf("after the forged packets: %v, want Up", st.State)
	}

	// The router goes quiet: Down after its detection time (3 x 50 ms).
	quiet := time.Now()
	st = waitState(t, s, routerAddr, Down, 2*time.Second)
	if st.Diag != DiagExpired {
		t.Errorf("diag %v, want detection time expired", st.Diag)
	}
	if el := time.Since(quiet); el < 100*time.Millisecond {
		t.Errorf("went down %v after the router's last packet, before its detection time", el)
	}
	if got := s.Counters(); got.Ups != 1 || got.Downs != 1 {
		t.Errorf("ups %d downs %d, want 1 1", got.Ups, got.Downs)
	}

	// Up again, then Close: the router is told AdminDown.
	f = newFSM(0xdef, 50*time.Millisecond, 3, false)
	handshake(t, s, router, f)
	closed = true
	s.Close()
	for {
		c, _, err := router.recv(2 * time.Second)
		if err != nil {
			t.Fatalf("no AdminDown at Close: %v", err)
		}
		if c.State == AdminDown {
			if c.Diag != DiagAdminDown {
				t.Errorf("AdminDown with diag %v", c.Diag)
			}
			break
		}
	}
}

func TestActive(t *testing.T) {
	srvPort, peerPort := porttest.UDP(t), porttest.UDP(t)
	routerAddr := netip.MustParseAddr("127.0.0.2")
	router := newTestPeer(t, routerAddr, peerPort, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), srvPort), 255)
	s, err := New(context.Background(), Config{Peers: []netip.Addr{routerAddr}, Active: true, Port: srvPort, PeerPort: peerPort})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, ttl, err := router.recv(3 * time.Second)
	if err != nil {
		t.Fatalf("active server sent nothing: %v", err)
	}
	if c.State != Down || c.YourDisc != 0 || ttl != 255 || c.DesiredTx != uint32(slowTx/time.Microsecond) {
		t.Fatalf("active server's first packet %+v (TTL %d), want Down, your disc 0, TTL 255, 1 s", c, ttl)
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []Config{
		{Interval: time.Millisecond},
		{Interval: time.Minute},
		{Peers: []netip.Addr{{}}},
		{Peers: []netip.Addr{netip.MustParseAddr("224.0.0.1")}},
	} {
		if c.Validate() == nil {
			t.Errorf("%+v: valid", c)
		}
	}
}

// A port another BFD daemon holds: New says so (the daemon adds the way
// out, --bfd off).
func TestPortTaken(t *testing.T) {
	port := porttest.UDP(t)
	c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: int(port)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = New(context.Background(), Config{Peers: []netip.Addr{netip.MustParseAddr("127.0.0.2")}, Port: port})
	if err == nil || !strings.Contains(err.Error(), "BFD control port") || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("New on a taken port: %v", err)
	}
}
