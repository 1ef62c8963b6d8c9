package bgp

import (
	"context"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	bgppkt "github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

// receiver is a GoBGP router on a loopback address that accepts the
// speaker's session and everything on it, to see what the speaker sends.
type receiver struct {
	srv  *server.BgpServer
	addr netip.Addr
}

func freePort(t *testing.T, addrs ...string) uint16 {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", net.JoinHostPort(addrs[0], "0"))
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		ok := true
		for _, a := range addrs[1:] {
			l2, err := net.Listen("tcp", net.JoinHostPort(a, strconv.Itoa(port)))
			if err != nil {
				ok = false
				break
			}
			l2.Close()
		}
		if ok {
			return uint16(port)
		}
	}
	t.Fatal("no port free on every receiver address")
	return 0
}

func startReceiver(t *testing.T, addr, speaker netip.Addr, port uint16) *receiver {
	t.Helper()
	srv := server.NewBgpServer(server.LoggerOption(slogToZerolog(zerolog.Nop()), nil))
	go srv.Serve()
	ctx := context.Background()
	if err := srv.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn: 65000, RouterId: "198.18.250." + strconv.Itoa(int(addr.As16()[15])), ListenPort: int32(port),
		ListenAddresses: []string{addr.String()},
	}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	both := []*api.AfiSafi{
		{Config: &api.AfiSafiConfig{Family: &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}, Enabled: true}},
		{Config: &api.AfiSafiConfig{Family: &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}, Enabled: true}},
	}
	if err := srv.AddPeer(ctx, &api.AddPeerRequest{Peer: &api.Peer{
		Conf:      &api.PeerConf{NeighborAddress: speaker.String(), PeerAsn: 65001},
		Transport: &api.Transport{PassiveMode: true},
		// Both families offered, whatever the session's: the speaker must
		// still send each family only over a session of that family.
		AfiSafis: both,
	}}); err != nil {
		t.Fatal(err)
	}
	return &receiver{srv: srv, addr: addr}
}

// routes returns what r holds in its RIB, by prefix, with the attributes.
func (r *receiver) routes(t *testing.T) map[netip.Prefix][]bgppkt.PathAttributeInterface {
	t.Helper()
	got := map[netip.Prefix][]bgppkt.PathAttributeInterface{}
	for _, f := range []bgppkt.Family{bgppkt.RF_IPv4_UC, bgppkt.RF_IPv6_UC} {
		err := r.srv.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_GLOBAL, Family: f},
			func(n bgppkt.NLRI, paths []*apiutil.Path) {
				p, err := netip.ParsePrefix(n.String())
				if err != nil {
					t.Errorf("receiver %s: prefix %q: %v", r.addr, n, err)
					return
				}
				got[p] = paths[0].Attrs
			})
		if err != nil {
			t.Fatal(err)
		}
	}
	return got
}

func keys(m map[netip.Prefix][]bgppkt.PathAttributeInterface) []netip.Prefix {
	var out []netip.Prefix
	for p := range m {
		out = append(out, p)
	}
	slices.SortFunc(out, comparePrefix)
	return out
}

// eventually polls cond every 10 ms for up to d: GoBGP's RIB has no event
// a test can wait on short of a watcher per receiver, and a poll bounded in
// time says the same.
func eventually(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); ; {
		if cond() {
			return true
		}
		if time.Now().After(end) {
			return false
		}
		time.Sleep(10 * time.Millisecond) // the poll interval, see above
	}
}

// TestSpeakerSides runs a Speaker against GoBGP receivers on loopback
// addresses (no root needed): a client-side one on 127.0.0.2 and on ::1,
// a real-side one on 127.0.0.3. Each gets exactly its side's prefixes of its
// own family, with the MED and without the side tags; moving a prefix
// between sides, withdrawing, WithdrawAll and Close reach them.
func TestSpeakerSides(t *testing.T) {
	spk4, spk6 := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")
	c4, r4, c6 := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3"), netip.MustParseAddr("::1")
	port := freePort(t, c4.String(), r4.String(), c6.String())
	rc4 := startReceiver(t, c4, spk4, port)
	rr4 := startReceiver(t, r4, spk4, port)
	rc6 := startReceiver(t, c6, spk6, port)

	log := zerolog.Nop()
	if testing.Verbose() {
		log = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr})
	}
	s, err := New(context.Background(), Config{
		LocalAS: 65001, PeerAS: 65000, RouterID: netip.MustParseAddr("198.18.10.2"),
		ClientPeers: []netip.Addr{c4, c6}, RealPeers: []netip.Addr{r4},
		MED: 20, Port: port, ConnectRetry: time.Second, Log: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !eventually(10*time.Second, func() bool {
		for _, p := range s.Status().Peers {
			if p.State != "Established" {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("sessions not established: %+v", s.Status().Peers)
	}

	if err := s.SetClientSide(pfx("198.18.0.100/32", "198.18.0.101/32", "2001:2::100/128")); err != nil {
		t.Fatal(err)
	}
	if err := s.SetRealSide(pfx("198.18.30.1/32", "0.0.0.0/0", "2001:2::30:1/128")); err != nil {
		t.Fatal(err)
	}
	want := func(stage string, r *receiver, ps ...string) {
		t.Helper()
		w := pfx(ps...)
		slices.SortFunc(w, comparePrefix)
		var got map[netip.Prefix][]bgppkt.PathAttributeInterface
		if !eventually(2*time.Second, func() bool { got = r.routes(t); return slices.Equal(keys(got), w) }) {
			t.Fatalf("%s: receiver %s has %v, want %v", stage, r.addr, keys(got), w)
		}
		for p, attrs := range got {
			var med *uint32
			for _, a := range attrs {
				switch a := a.(type) {
				case *bgppkt.PathAttributeMultiExitDisc:
					med = &a.Value
				case *bgppkt.PathAttributeLargeCommunities, *bgppkt.PathAttributeCommunities:
					t.Errorf("%s: receiver %s: %s carries %v (the side tags must be stripped)", stage, r.addr, p, a)
				}
			}
			if med == nil || *med != 20 {
				t.Errorf("%s: receiver %s: %s has MED %v, want 20", stage, r.addr, p, med)
			}
		}
	}
	// 2001:2::30:1/128 is real-side and IPv6: the only real-side peer is
	// IPv4, so nobody gets it.
	want("announce", rc4, "198.18.0.100/32", "198.18.0.101/32")
	want("announce", rc6, "2001:2::100/128")
	want("announce", rr4, "0.0.0.0/0", "198.18.30.1/32")

	// A VIP withdrawn; the recovery address moves to both sides.
	if err := s.SetClientSide(pfx("198.18.0.101/32", "2001:2::100/128", "198.18.30.1/32")); err != nil {
		t.Fatal(err)
	}
	want("both sides", rc4, "198.18.0.101/32", "198.18.30.1/32")
	want("both sides", rr4, "0.0.0.0/0", "198.18.30.1/32")
	// The real side lets it go: the client side keeps it.
	if err := s.SetRealSide(pfx("0.0.0.0/0")); err != nil {
		t.Fatal(err)
	}
	want("moved", rr4, "0.0.0.0/0")
	want("moved", rc4, "198.18.0.101/32", "198.18.30.1/32")

	st := s.Status()
	if !slices.Equal(st.ClientSide, pfx("198.18.0.101/32", "198.18.30.1/32", "2001:2::100/128")) || !slices.Equal(st.RealSide, pfx("0.0.0.0/0")) {
		t.Errorf("status announces client %v real %v", st.ClientSide, st.RealSide)
	}
	if st.Counters.Establishments != 3 || st.Counters.Drops != 0 || st.Counters.UpdatesSent == 0 {
		t.Errorf("counters %+v: want 3 establishments, no drop, some updates", st.Counters)
	}

	if err := s.WithdrawAll(); err != nil {
		t.Fatal(err)
	}
	want("withdraw all", rc4)
	want("withdraw all", rc6)
	want("withdraw all", rr4)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.SetClientSide(pfx("198.18.0.100/32")); err != ErrClosed {
		t.Errorf("SetClientSide after Close: %v, want ErrClosed", err)
	}
}

// TestSpeakerCloseLeavesNoGoroutine: Close stops GoBGP's event loop, the
// per-peer FSMs (one dialling a peer that does not answer) and the watch.
func TestSpeakerCloseLeavesNoGoroutine(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	port := freePort(t, "127.0.0.9")
	s, err := New(context.Background(), Config{
		LocalAS: 65001, PeerAS: 65000, RouterID: netip.MustParseAddr("198.18.10.2"),
		ClientPeers: []netip.Addr{netip.MustParseAddr("127.0.0.9")},
		RealPeers:   []netip.Addr{netip.MustParseAddr("::1")},
		Port:        port, ConnectRetry: time.Second, Log: zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetClientSide(pfx("198.18.0.100/32")); err != nil {
		t.Fatal(err)
	}
	if st := s.Status(); len(st.Peers) != 2 || st.Peers[0].Side != ClientSide || st.Peers[0].State == "Established" {
		t.Errorf("status peers %+v: want the client-side peer first, not established", st.Peers)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
