package fastpath

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"holdfast/balancer"
	"holdfast/internal/wire"
	"holdfast/nat"
	"holdfast/nat/nattest"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// The lab's addresses (198.18.0.0/15): a client, a VIP whose port 80 maps to
// a real's port 8080 (a port rewrite too), and the MACs of the next hops.
const (
	client   = "198.18.0.2:40000"
	vip      = "198.18.2.1:80"
	real     = "198.18.1.10:8080"
	upPrefix = "198.18.0.1/24"
	rsPrefix = "198.18.1.1/24"
	k        = nat.DefaultCookieBits
)

var (
	clientMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xc1}
	realMAC   = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xa1}
)

// tc verdicts (linux/pkt_cls.h).
const (
	tcOK       = 0
	tcRedirect = 7
)

// skbContext is struct __sk_buff up to ifindex, the fields a
// BPF_PROG_TEST_RUN of a tc program may set: the packet arrives on the
// device ifindex (skb_iif ingress_ifindex).
type skbContext struct {
	_              [9]uint32 // len .. priority
	IngressIfindex uint32
	Ifindex        uint32
}

// testNet is the director's side of the FIB in a network namespace of the
// test's own: two veth links, the client's and the real's, each with a
// permanent neighbour, forwarding on. BPF_PROG_TEST_RUN runs the program
// in the calling thread's namespace, so everything runs on one locked
// thread (run), which exits with the test: the namespace has no name and
// goes with it.
type testNet struct {
	up, rs int // ifindexes
	upMAC  net.HardwareAddr
	rsMAC  net.HardwareAddr
	work   chan func()
}

func newTestNet(t testing.TB) *testNet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: BPF_PROG_TEST_RUN of a tc program and a network namespace of its own (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)")
	}
	n := &testNet{work: make(chan func())}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with its namespace
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- n.setup()
		for f := range n.work {
			f()
		}
	}()
	if err := <-errc; err != nil {
		t.Fatalf("test namespace: %v", err)
	}
	t.Cleanup(func() { close(n.work) })
	return n
}

func (n *testNet) setup() error {
	// /proc/sys/net is the opening thread's namespace's.
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/all/forwarding", []byte("1"), 0); err != nil {
		return err
	}
	for _, l := range []struct {
		name, prefix, nb string
		mac              net.HardwareAddr
		idx              *int
		own              *net.HardwareAddr
	}{
		{"fpup0", upPrefix, "198.18.0.2", clientMAC, &n.up, &n.upMAC},
		{"fprs0", rsPrefix, "198.18.1.10", realMAC, &n.rs, &n.rsMAC},
	} {
		// A veth pair (the kernel here has no dummy links); the peer is
		// up so that the link has carrier.
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: l.name, MTU: 1500}, PeerName: l.name + "p"}); err != nil {
			return fmt.Errorf("veth %s: %w", l.name, err)
		}
		peer, err := netlink.LinkByName(l.name + "p")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(peer); err != nil {
			return err
		}
		link, err := netlink.LinkByName(l.name)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return err
		}
		addr, err := netlink.ParseAddr(l.prefix)
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(link, addr); err != nil {
			return err
		}
		if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: link.Attrs().Index, State: netlink.NUD_PERMANENT,
			IP: net.ParseIP(l.nb), HardwareAddr: l.mac}); err != nil {
			return err
		}
		*l.idx, *l.own = link.Attrs().Index, link.Attrs().HardwareAddr
	}
	return nil
}

// do runs f on the namespace's thread.
func (n *testNet) do(f func()) {
	done := make(chan struct{})
	n.work <- func() { f(); close(done) }
	<-done
}

// harness runs the same packets through a nat.Director (the TUN path) and
// the fast path.
type harness struct {
	t   testing.TB
	n   *testNet
	d   *nat.Director
	p   *Program
	now int64
}

// newHarnessWith loads the program with cfg next to a Director with one
// service, cookies on.
func newHarnessWith(t testing.TB, cfg Config) *harness {
	t.Helper()
	n := newTestNet(t)
	svc, err := balancer.ServiceConfig{Service: "tcp:" + vip, Scheduler: "rr", Reals: []string{real}}.Build()
	if err != nil {
		t.Fatal(err)
	}
	d, err := nat.New(nat.Config{Services: []*balancer.Service{svc}, Timeouts: nat.NewTimeouts(15*time.Minute, 2*time.Minute, 5*time.Minute),
		MaxFlows: 100, CookieBits: k})
	if err != nil {
		t.Fatal(err)
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	p, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return &harness{t: t, n: n, d: d, p: p, now: int64(time.Second)}
}

// nat runs pkt through the Director and wants it forwarded.
func (h *harness) nat(pkt []byte) []byte {
	h.t.Helper()
	h.now += int64(time.Millisecond)
	v, out := h.d.Handle(bytes.Clone(pkt), false, h.now)
	if v != wire.Forward {
		h.t.Fatalf("nat: %v for %x", v, pkt)
	}
	return out
}

// run runs pkt (an IP packet) through the BPF program as if it arrived on
// ifindex, and returns the verdict and the frame after it.
func (h *harness) run(pkt []byte, ifindex int) (uint32, []byte) {
	h.t.Helper()
	frame := append(append(append([]byte{}, h.n.upMAC...), clientMAC...), 0x08, 0x00)
	frame = append(frame, pkt...)
	var ret uint32
	var out []byte
	var err error
	h.n.do(func() {
		opts := ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+64),
			Context: skbContext{IngressIfindex: uint32(ifindex), Ifindex: uint32(ifindex)}}
		ret, err = h.p.BPFProgram().Run(&opts)
		out = opts.DataOut
	})
	if err != nil {
		h.t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	return ret, out
}

// both runs pkt, arriving on ifindex, through the Director and the fast
// path, and wants the fast path to redirect it with the egress link's
// and the neighbour's MACs and the Director's bytes, TTL one less.
func (h *harness) both(name string, pkt []byte, ifindex int, egressMAC, nbMAC net.HardwareAddr) []byte {
	h.t.Helper()
	want := h.nat(pkt)
	ret, frame := h.run(pkt, ifindex)
	if ret != tcRedirect {
		h.t.Fatalf("%s: verdict %d, want TC_ACT_REDIRECT (%d)", name, ret, tcRedirect)
	}
	if !bytes.Equal(frame[0:6], nbMAC) || !bytes.Equal(frame[6:12], egressMAC) {
		h.t.Errorf("%s: MACs %x -> %x, want %x -> %x", name, frame[6:12], frame[0:6], egressMAC, nbMAC)
	}
	got := frame[14:]
	nattest.CheckChecksums(h.t, got)
	if got[8] != pkt[8]-1 {
		h.t.Errorf("%s: TTL %d, want %d", name, got[8], pkt[8]-1)
	}
	// The Director leaves the TTL to the kernel's forwarding: compare
	// with its output's TTL and IP checksum taken from ours.
	want = bytes.Clone(want)
	want[8] = got[8]
	copy(want[10:12], got[10:12])
	if !bytes.Equal(got, want) {
		h.t.Errorf("%s: the fast path and nat differ\n fast %x\n  nat %x", name, got, want)
	}
	return got
}

// ts is the timestamp option as Linux sends it: NOP, NOP, TS.
func ts(val, ecr uint32) []byte {
	b := []byte{1, 1, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[4:], val)
	binary.BigEndian.PutUint32(b[8:], ecr)
	return b
}

func tsOf(t *testing.T, pkt []byte) (val, ecr uint32) {
	t.Helper()
	tcp := pkt[20:]
	if !bytes.Equal(tcp[20:24], []byte{1, 1, 8, 10}) {
		t.Fatalf("no NOP NOP TS in %x", pkt)
	}
	return binary.BigEndian.Uint32(tcp[24:]), binary.BigEndian.Uint32(tcp[28:])
}

const (
	cISN = 100  // the client's initial sequence number
	sISN = 9000 // the real's
	ack  = header.TCPFlagAck
	psh  = header.TCPFlagPsh | header.TCPFlagAck
)

// TestSameAsNAT runs one connection's segments through the Director and,
// once established and handed over, through the fast path too: every
// rewrite (addresses, ports, checksums, the cookie written and restored
// from the last bucket, the one before, an unknown one rounded up, the
// SYN-ACK's echo unchanged) must be the Director's, and the segments the
// fast path must not carry pass unchanged.
func TestSameAsNAT(t *testing.T) {
	for _, cache := range []bool{false, true} {
		t.Run(fmt.Sprintf("CacheFIB=%v", cache), func(t *testing.T) { testSameAsNAT(t, cache) })
	}
}

func testSameAsNAT(t *testing.T, cache bool) {
	h := newHarnessWith(t, Config{CookieBits: k, CacheFIB: cache})
	n := h.n
	// The handshake through the Director only (the fast path punts SYN).
	h.nat(nattest.TCP4(client, vip, header.TCPFlagSyn, cISN, 0, nil, ts(1000, 0)...))
	h.nat(nattest.TCP4(real, client, header.TCPFlagSyn|ack, sISN, cISN+1, nil, ts(5000, 1000)...))
	h.nat(nattest.TCP4(client, vip, ack, cISN+1, sISN+1, nil, ts(1001, 5000)...))

	r, err := balancer.ServiceConfig{Service: "tcp:" + vip, Scheduler: "rr", Reals: []string{real}}.Build()
	if err != nil {
		t.Fatal(err)
	}
	balancer.AssignCookieIDs(r, k) //nolint:errcheck // one real always fits
	id := balancer.CookieIDOf(r.Reals[0], k)
	f := Flow{Client: nattest.AP(client), VIP: nattest.AP(vip), Real: nattest.AP(real), CookieID: id,
		Cookie: CookieState{SynAck: 5000, Flags: CookieSynAck}}
	if err := h.p.Add(f); err != nil {
		t.Fatal(err)
	}

	toClient := func(name string, seq, tsval uint32, payload []byte) uint32 {
		t.Helper()
		out := h.both(name, nattest.TCP4(real, client, psh, seq, cISN+1, payload, ts(tsval, 1001)...), n.rs, n.upMAC, clientMAC)
		v, _ := tsOf(t, out)
		if v&(1<<k-1) != uint32(id) || v <= tsval {
			t.Errorf("%s: TSval %d from %d: want above it, id %d in the low %d bits", name, v, tsval, id, k)
		}
		return v
	}
	toReal := func(name string, seq, ackn, tsecr, want uint32, payload []byte) {
		t.Helper()
		out := h.both(name, nattest.TCP4(client, vip, psh, seq, ackn, payload, ts(1010, tsecr)...), n.up, n.rsMAC, realMAC)
		if _, e := tsOf(t, out); e != want {
			t.Errorf("%s: TSecr %d restored to %d, want %d", name, tsecr, e, want)
		}
	}
	data := []byte("0123456789")
	s := uint32(sISN + 1)
	v1 := toClient("reply 1", s, 5003, data)
	s += 10
	toReal("echo of the last bucket", cISN+1, s, v1, 5003, nil)
	v2 := toClient("reply 2, next bucket", s, 5040, data)
	s += 10
	if v2>>k == v1>>k {
		t.Fatalf("TSvals %d and %d in one bucket: the test wants two", v1, v2)
	}
	toReal("echo of the bucket before", cISN+1, s, v1, 5003, data)
	toReal("echo of the SYN-ACK", cISN+11, s, 5000, 5000, nil)
	unknown := uint32(4000)&^(1<<k-1) | uint32(id)
	toReal("unknown echo, rounded up", cISN+11, s, unknown, unknown&^(1<<k-1)-1, nil)

	got, err := h.p.Cookie(f.Client)
	if err != nil {
		t.Fatal(err)
	}
	if got.Last != v2 || got.Raw != 5040 || got.Prev != v1 || got.PrevRaw != 5003 || got.Flags&(CookieSent|CookiePrev) != CookieSent|CookiePrev {
		t.Errorf("cookie state %+v: want last %d raw 5040 prev %d prevRaw 5003", got, v2, v1)
	}
	if c, err := h.p.Carried(f); err != nil || c != 6 {
		t.Errorf("carried %d segments (%v), want 6", c, err)
	}

	// What the fast path must pass unchanged, to the kernel and the TUN.
	for _, c := range []struct {
		name string
		pkt  []byte
		on   int
	}{
		{"FIN", nattest.TCP4(client, vip, header.TCPFlagFin|ack, cISN+11, s, nil, ts(1011, v2)...), n.up},
		{"RST", nattest.TCP4(real, client, header.TCPFlagRst, s, 0, nil), n.rs},
		{"another client's segment (a miss)", nattest.TCP4("198.18.0.3:40000", vip, ack, 1, 1, nil), n.up},
		{"TTL 1", ttl1(nattest.TCP4(client, vip, ack, cISN+11, s, nil, ts(1011, v2)...)), n.up},
		{"larger than the real's link", nattest.TCP4(client, vip, psh, cISN+11, s, make([]byte, 1500), ts(1011, v2)...), n.up},
	} {
		ret, frame := h.run(c.pkt, c.on)
		if ret != tcOK || !bytes.Equal(frame[14:], c.pkt) {
			t.Errorf("%s: verdict %d, packet %x: want TC_ACT_OK and the packet unchanged", c.name, ret, frame[14:])
		}
	}
	cnt, err := h.p.Counters()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{"forward": 6, "punt_flags": 2, "miss": 1, "punt_ip": 1, "punt_mtu": 1}
	for name, w := range want {
		if cnt[name] != w {
			t.Errorf("counter %s = %d, want %d (all: %v)", name, cnt[name], w, cnt)
		}
	}
}

// ttl1 sets the TTL of an IPv4 packet to 1 and fixes its checksum.
func ttl1(b []byte) []byte {
	ip := header.IPv4(b)
	ip.SetTTL(1)
	ip.SetChecksum(0)
	ip.SetChecksum(^ip.CalculateChecksum())
	return b
}

// newBenchHarness is newHarness with the connection's flow in the map.
func newBenchHarness(b *testing.B, cfg Config) *harness {
	h := newHarnessWith(b, cfg)
	f := Flow{Client: nattest.AP(client), VIP: nattest.AP(vip), Real: nattest.AP(real), CookieID: 1,
		Cookie: CookieState{SynAck: 5000, Flags: CookieSynAck}}
	if err := h.p.Add(f); err != nil {
		b.Fatal(err)
	}
	return h
}

// BenchmarkForward is the program's cost for one client segment it carries
// (1448 bytes of payload, the timestamp restored, the FIB asked, the MACs
// written), in prog-ns/op as the kernel's BPF statistics time the program
// (ns/op adds the system call of BPF_PROG_TEST_RUN). One run per call: a
// run rewrites the packet, and a repeat would see the rewritten one, a miss.
func BenchmarkForward(b *testing.B) {
	for _, cache := range []bool{false, true} {
		b.Run(fmt.Sprintf("CacheFIB=%v", cache), func(b *testing.B) {
			h := newBenchHarness(b, Config{CookieBits: k, CacheFIB: cache})
			pkt := nattest.TCP4(client, vip, psh, cISN+1, sISN+1, make([]byte, 1448), ts(1010, 5000)...)
			benchProgram(b, h, pkt, tcRedirect)
		})
	}
}

// BenchmarkMiss is the program's cost for a segment of a flow it does not
// carry (one lookup, then TC_ACT_OK): what every punted packet pays on top
// of the TUN path.
func BenchmarkMiss(b *testing.B) {
	h := newBenchHarness(b, Config{CookieBits: k})
	pkt := nattest.TCP4("198.18.0.3:40000", vip, psh, 1, 1, make([]byte, 1448), ts(1010, 5000)...)
	benchProgram(b, h, pkt, tcOK)
}

func benchProgram(b *testing.B, h *harness, pkt []byte, want uint32) {
	frame := append(append(append([]byte{}, h.n.upMAC...), clientMAC...), 0x08, 0x00)
	frame = append(frame, pkt...)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatal(err)
	}
	defer stats.Close()
	prog := h.p.BPFProgram()
	before, err := prog.Stats()
	if err != nil {
		b.Fatal(err)
	}
	h.n.do(func() {
		opts := ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+64),
			Context: skbContext{IngressIfindex: uint32(h.n.up), Ifindex: uint32(h.n.up)}}
		b.ResetTimer()
		for range b.N {
			var ret uint32
			if ret, err = prog.Run(&opts); err == nil && ret != want {
				err = fmt.Errorf("verdict %d, want %d", ret, want)
			}
			if err != nil {
				return
			}
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	after, err := prog.Stats()
	if err != nil {
		b.Fatal(err)
	}
	if n := after.RunCount - before.RunCount; n > 0 {
		b.ReportMetric(float64((after.Runtime-before.Runtime).Nanoseconds())/float64(n), "prog-ns/op")
	}
}

// TestFIBCache: with CacheFIB a flow keeps the FIB's answer until BumpFIB,
// so a neighbour whose MAC changed is written with the old MAC until then
// and with the new one after (the product bumps on every netlink route or
// neighbour change); without it the new MAC is there at once.
func TestFIBCache(t *testing.T) {
	for _, cache := range []bool{false, true} {
		t.Run(fmt.Sprintf("CacheFIB=%v", cache), func(t *testing.T) {
			h := newHarnessWith(t, Config{CookieBits: k, CacheFIB: cache})
			f := Flow{Client: nattest.AP(client), VIP: nattest.AP(vip), Real: nattest.AP(real), CookieID: 1}
			if err := h.p.Add(f); err != nil {
				t.Fatal(err)
			}
			pkt := nattest.TCP4(client, vip, ack, cISN+1, sISN+1, nil, ts(1010, 5000)...)
			dmac := func() net.HardwareAddr {
				t.Helper()
				ret, frame := h.run(bytes.Clone(pkt), h.n.up)
				if ret != tcRedirect {
					t.Fatalf("verdict %d, want TC_ACT_REDIRECT", ret)
				}
				return frame[0:6]
			}
			if got := dmac(); !bytes.Equal(got, realMAC) {
				t.Fatalf("first segment to %v, want the real's %v", got, realMAC)
			}
			moved := net.HardwareAddr{0x02, 0, 0, 0, 0, 0xa2}
			var err error
			h.n.do(func() {
				err = netlink.NeighSet(&netlink.Neigh{LinkIndex: h.n.rs, State: netlink.NUD_PERMANENT,
					IP: net.ParseIP(nattest.AP(real).Addr().String()), HardwareAddr: moved})
			})
			if err != nil {
				t.Fatal(err)
			}
			want := moved
			if cache {
				want = realMAC
			}
			if got := dmac(); !bytes.Equal(got, want) {
				t.Errorf("after the neighbour moved, before BumpFIB: to %v, want %v", got, want)
			}
			if err := h.p.BumpFIB(); err != nil {
				t.Fatal(err)
			}
			if got := dmac(); !bytes.Equal(got, moved) {
				t.Errorf("after BumpFIB: to %v, want %v", got, moved)
			}
		})
	}
}
