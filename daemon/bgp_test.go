package daemon

import (
	"net/netip"
	"slices"
	"testing"
)

// A prefix is sent only over sessions of its family: unsent names the
// prefixes a side's peers leave without one, and nothing of a side with
// no peers.
func TestUnsent(t *testing.T) {
	addrs := func(ss ...string) []netip.Addr {
		var out []netip.Addr
		for _, s := range ss {
			out = append(out, netip.MustParseAddr(s))
		}
		return out
	}
	pfx := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	both := pfx("198.18.100.1/32", "2001:2:0:100::1/128", "0.0.0.0/0", "::/0")
	for _, c := range []struct {
		name  string
		peers []netip.Addr
		want  []netip.Prefix
		got   []netip.Prefix
	}{
		{"IPv4 peers only", addrs("198.18.11.1"), both, pfx("2001:2:0:100::1/128", "::/0")},
		{"IPv6 peers only", addrs("2001:2:0:11::1"), both, pfx("198.18.100.1/32", "0.0.0.0/0")},
		{"a peer of each family", addrs("198.18.11.1", "2001:2:0:11::1"), both, nil},
		{"an IPv4-mapped peer is IPv4", addrs("::ffff:198.18.11.1"), pfx("198.18.100.1/32", "2001:2:0:100::1/128"), pfx("2001:2:0:100::1/128")},
		{"no peer on the side", nil, both, nil},
		{"nothing to send", addrs("198.18.11.1"), nil, nil},
	} {
		if got := unsent(c.peers, c.want); !slices.Equal(got, c.got) {
			t.Errorf("%s: unsent(%v, %v) = %v, want %v", c.name, c.peers, c.want, got, c.got)
		}
	}
}
