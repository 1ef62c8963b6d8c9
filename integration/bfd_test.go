package integration

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"holdfast/bfd"
	"holdfast/daemon/adminapi"
	"holdfast/integration/forge"
	"holdfast/lab"
)

// bfdCounters reads director d's BFD counters from /stats.
func bfdCounters(t *testing.T, d *lab.Director) (drops map[string]uint64, downs, received uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var raw struct {
		Drops    map[string]uint64 `json:"bfd_drops_total"`
		Downs    uint64            `json:"bfd_session_downs_total"`
		Received uint64            `json:"bfd_packets_received_total"`
	}
	if err := adminapi.NewClient(lab.AdminSocket(d)).Stats(ctx, &raw); err != nil {
		t.Fatalf("director %s: GET /stats: %v", d.Label, err)
	}
	return raw.Drops, raw.Downs, raw.Received
}

// waitBFDUp waits until every BGP peer of d has its BFD session Up
// (holdfast bgp --json): the lab's routers ask for one with each session,
// of either family.
func waitBFDUp(t *testing.T, d *lab.Director) {
	t.Helper()
	var peers []adminapi.BGPPeer
	if _, ok := within(10*time.Second, func() bool {
		peers = bgpShow(t, d).Peers
		for _, peer := range peers {
			if peer.BFD == nil || peer.BFD.State != "Up" {
				return false
			}
		}
		return len(peers) > 0
	}); !ok {
		t.Fatalf("director %s: BFD sessions not all Up: %+v", d.Label, peers)
	}
}

// TestForgedBFD: an off-path attacker on the client side forges BFD
// packets that claim to come from each of a director's routers and say
// Down and AdminDown, the packets that would take the director's
// sessions down (and with them, at the router, its BGP session and
// routes) if they counted. They arrive with a TTL below 255 (the
// client-side router forwarded them) and are dropped and counted as such
// (RFC 5881 section 5); the sessions stay Up on both ends, the BGP
// sessions Established, and the routers keep sending the traffic to A.
func TestForgedBFD(t *testing.T) {
	p := newBGPPair(t, nil)
	l := p.l
	a := l.Directors[0]
	waitBFDUp(t, a)
	drops0, downs0, _ := bfdCounters(t, a)

	snd, err := forge.Open(l.Client)
	if err != nil {
		t.Fatal(err)
	}
	defer snd.Close()
	const each = 200
	sent := map[netip.Addr]int{}
	for _, router := range []netip.Addr{a.RouterAddr, lab.BGPRealPeer} {
		for i := range each {
			c := bfd.Control{State: bfd.Down, DetectMult: 3, MyDisc: rand.Uint32() | 1, DesiredTx: 1e6, MinRx: 1e6}
			if i%2 == 1 {
				c.State, c.Diag = bfd.AdminDown, bfd.DiagAdminDown
			}
			pkt, err := forge.UDP4(netip.AddrPortFrom(router, uint16(49152+i)), netip.AddrPortFrom(a.Uplink.Addr(), bfd.Port), 255, c.Append(nil))
			if err != nil {
				t.Fatal(err)
			}
			if err := snd.SendPacket(pkt); err != nil {
				t.Fatal(err)
			}
			sent[router]++
			time.Sleep(2 * time.Millisecond) // pacing: 500 packets a second
		}
	}
	// The spoofed client-side router's packets reach A on the link they
	// claim (no reverse-path filter objects): every one must be counted a
	// TTL drop. Nothing announces the count: poll it.
	var drops map[string]uint64
	var downs uint64
	if _, ok := within(5*time.Second, func() bool {
		drops, downs, _ = bfdCounters(t, a)
		return drops["ttl"]-drops0["ttl"] >= each
	}); !ok {
		t.Errorf("director A counted %d TTL drops of the %d forged packets sent as its client-side router, want all of them (drops %v)", drops["ttl"]-drops0["ttl"], each, drops)
	}
	if downs != downs0 {
		t.Errorf("director A's BFD sessions went down %d times during the forgery", downs-downs0)
	}
	st := bgpShow(t, a)
	for _, peer := range st.Peers {
		if peer.BFD == nil || peer.BFD.State != "Up" || peer.State != "Established" {
			t.Errorf("after the forgery: peer %s BGP %s BFD %+v, want Established and Up", peer.Addr, peer.State, peer.BFD)
		}
	}
	for _, r := range []string{lab.BGPClientSide, lab.BGPRealSide} {
		out, err := l.Birdc(context.Background(), r, "show", "bfd", "sessions")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, a.Uplink.Addr().String()+" ") || strings.HasPrefix(line, a.BGPAddr.Addr().String()+" ") {
				if !strings.Contains(line, " Up ") {
					t.Errorf("%s router: BFD session with A %q, want Up", r, line)
				}
			}
		}
	}
	waitActive(t, l, 0, 5*time.Second)
	raw, _ := json.Marshal(drops)
	t.Logf("forged %d Down/AdminDown packets as A's client-side router and %d as its real-side router, TTL 255 at the attacker: A dropped %d for TTL (all drops now %s); BFD downs %d; sessions Up, routes on A",
		sent[a.RouterAddr], sent[lab.BGPRealPeer], drops["ttl"]-drops0["ttl"], raw, downs-downs0)
}
