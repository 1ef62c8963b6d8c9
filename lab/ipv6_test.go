package lab

import (
	"net/netip"
	"testing"
)

// The IPv6 plan reads like the IPv4 one, inside 2001:2::/48 (RFC 5180).
func TestMirror6(t *testing.T) {
	bench := netip.MustParsePrefix("2001:2::/48")
	for _, c := range []struct{ in, want string }{
		{"198.18.1.2", "2001:2:0:1::2"},
		{"198.18.10.11", "2001:2:0:10::11"},
		{"198.18.100.1", "2001:2:0:100::1"},
		{"198.18.200.1", "2001:2:0:200::1"},
		{"198.18.255.255", "2001:2:0:255::255"},
		{"198.19.0.1", "2001:2:0:256::1"},
	} {
		got := Mirror6(netip.MustParseAddr(c.in))
		if got.String() != c.want || !bench.Contains(got) {
			t.Errorf("Mirror6(%s) = %v, want %s in %v", c.in, got, c.want, bench)
		}
	}
	if got := Mirror6Prefix(VIPPrefix); got.String() != "2001:2:0:100::/64" || !got.Contains(VIP6) {
		t.Errorf("Mirror6Prefix(%v) = %v, want 2001:2:0:100::/64 holding %v", VIPPrefix, got, VIP6)
	}
	for _, bad := range []string{"10.0.0.1", "198.20.0.1", "2001:2::1"} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Mirror6(%s) did not panic", bad)
				}
			}()
			Mirror6(netip.MustParseAddr(bad))
		}()
	}
}

// Options that cannot be built are refused before anything is made.
func TestNewRefusesIPv6Options(t *testing.T) {
	for _, o := range []Options{
		{VRRP: true, Directors: 2, IPv6: true},
		{VRRP: true, Directors: 2, RealHopMTU: 1400},
		{RealLinkMTU: 1279},
		{RealHopMTU: 1501},
	} {
		if l, err := New(o); err == nil {
			l.Close()
			t.Errorf("New(%+v) succeeded", o)
		}
	}
}
