package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"holdfast/daemon/adminapi"
)

// holdfast bgp's table: one line per session, established ones with their
// uptime, the others with why they went down; then what each side gets.
func TestWriteBGP(t *testing.T) {
	var out bytes.Buffer
	err := writeBGP(&out, adminapi.BGP{LocalAS: 65001, RouterID: "198.18.11.2", MED: 10,
		Peers: []adminapi.BGPPeer{
			{Addr: "198.18.11.1", Side: "client", AS: 65000, State: "Established", Since: time.Now(), Uptime: 62.4, Advertised: 2},
			{Addr: "198.18.20.1", Side: "real", AS: 65000, State: "Active", LastError: "read-failed"},
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
}
