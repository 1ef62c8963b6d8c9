package main

import (
	"bytes"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"holdfast/daemon"
	"holdfast/daemon/adminapi"

	"github.com/urfave/cli/v2"
)

// holdfast bgp's table: one line per session, established ones with their
// uptime, the others with why they went down; then what each side gets.
func TestWriteBGP(t *testing.T) {
	var out bytes.Buffer
	err := writeBGP(&out, adminapi.BGP{LocalAS: 65001, RouterID: "198.18.11.2", MED: 10,
		Peers: []adminapi.BGPPeer{
			{Addr: "198.18.11.1", Side: "client", AS: 65000, State: "Established", Since: time.Now(), Uptime: 62.4, Advertised: 2,
				BFD: &adminapi.BFDSession{State: "Up", RemoteState: "Up", Since: time.Now(), DetectTime: 0.9, TxInterval: 0.3}},
			{Addr: "198.18.20.1", Side: "real", AS: 65000, State: "Active", LastError: "read-failed", BFD: &adminapi.BFDSession{State: "Down"}},
			{Addr: "198.18.30.1", Side: "real", AS: 65000, State: "Active"},
		},
		ClientSide: []string{"198.18.100.1/32", "2001:2:0:100::1/128"},
	})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	want := []string{
		"local AS 65001  router id 198.18.11.2  MED 10",
		"PEER         SIDE    AS     STATE        SINCE",
		"198.18.11.1  client  65000  Established",
		"198.18.20.1  real    65000  Active       -",
		"198.18.30.1  real    65000  Active       -",
		"announced to the client side: 198.18.100.1/32 2001:2:0:100::1/128",
		"announced to the real side:   nothing",
	}
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(want), out.String())
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("line %d %q, want it to start %q", i, lines[i], w)
		}
	}
	if !strings.HasSuffix(lines[2], "up 1m2s") || !strings.HasSuffix(lines[3], "read-failed") {
		t.Errorf("info column:\n%s\n%s", lines[2], lines[3])
	}
	for i, w := range []string{"Up 900ms", "not asked", "off"} {
		if !strings.Contains(lines[2+i], "  "+w+"  ") && !strings.HasSuffix(lines[2+i], "  "+w) {
			t.Errorf("BFD column of line %d %q, want %q", 2+i, lines[2+i], w)
		}
	}
}

// A dual-stack director in a group (issue 17) has a client-side and a
// real-side peer of each family and a default route of each to announce:
// parseBGP keeps each peer on its side, IPv6 ones as given.
func TestParseBGPDualStack(t *testing.T) {
	var got *daemon.BGP
	app := &cli.App{
		Flags: []cli.Flag{bgpLocalASFlag, bgpPeerASFlag, bgpRouterIDFlag, bgpPeerFlag, bgpRealPeerFlag, bgpAnnounceFlag,
			bgpMEDFlag, bgpHoldFlag, bgpKeepaliveFlag, bgpPasswordFlag, bgpDrainFlag, bfdFlag, bfdIntervalFlag, bfdMultiplierFlag},
		Action: func(c *cli.Context) (err error) { got, err = parseBGP(c); return err },
	}
	err := app.Run([]string{"holdfast", "--bgp-local-as", "65001", "--bgp-peer-as", "65000", "--bgp-router-id", "198.18.12.2",
		"--bgp-peer", "198.18.12.1", "--bgp-real-peer", "198.18.20.1", "--bgp-announce", "0.0.0.0/0",
		"--bgp-peer", "2001:2:0:12::1", "--bgp-real-peer", "2001:2:0:20::1", "--bgp-announce", "::/0"})
	if err != nil {
		t.Fatal(err)
	}
	addrs := func(ss ...string) []netip.Addr {
		var out []netip.Addr
		for _, s := range ss {
			out = append(out, netip.MustParseAddr(s))
		}
		return out
	}
	wantAnnounce := []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	if !slices.Equal(got.ClientPeers, addrs("198.18.12.1", "2001:2:0:12::1")) || !slices.Equal(got.RealPeers, addrs("198.18.20.1", "2001:2:0:20::1")) ||
		!slices.Equal(got.Announce, wantAnnounce) {
		t.Errorf("client peers %v, real peers %v, announce %v; want each family's on its side", got.ClientPeers, got.RealPeers, got.Announce)
	}
	if got.BFD == nil || got.BFD.Active || got.BFD.Interval != 300*time.Millisecond || got.BFD.Multiplier != 3 {
		t.Errorf("BFD %+v, want passive by default, 300ms x 3", got.BFD)
	}
}
