package bgp

import (
	"net/netip"
	"slices"
	"testing"
)

func pfx(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// TestReconcile feeds successive sets of one side or the other and checks
// the path updates each one asks for and what is announced after it.
func TestReconcile(t *testing.T) {
	type step struct {
		side   Side
		set    []string
		want   []change
		client []string // announced to the client side after the step
		real   []string
	}
	c := func(p string, s Side) change { return change{netip.MustParsePrefix(p), s} }
	steps := []step{
		{side: ClientSide, set: []string{"198.18.0.100/32", "198.18.0.101/32"},
			want:   []change{c("198.18.0.100/32", ClientSide), c("198.18.0.101/32", ClientSide)},
			client: []string{"198.18.0.100/32", "198.18.0.101/32"}},
		// The same set again: idempotent.
		{side: ClientSide, set: []string{"198.18.0.101/32", "198.18.0.100/32"},
			client: []string{"198.18.0.100/32", "198.18.0.101/32"}},
		{side: RealSide, set: []string{"198.18.30.1/32", "0.0.0.0/0", "2001:2::30:1/128"},
			want:   []change{c("0.0.0.0/0", RealSide), c("198.18.30.1/32", RealSide), c("2001:2::30:1/128", RealSide)},
			client: []string{"198.18.0.100/32", "198.18.0.101/32"},
			real:   []string{"0.0.0.0/0", "198.18.30.1/32", "2001:2::30:1/128"}},
		// One VIP gone, one new: withdraw the one, announce the other.
		{side: ClientSide, set: []string{"198.18.0.101/32", "2001:2::100/128"},
			want:   []change{c("198.18.0.100/32", 0), c("2001:2::100/128", ClientSide)},
			client: []string{"198.18.0.101/32", "2001:2::100/128"},
			real:   []string{"0.0.0.0/0", "198.18.30.1/32", "2001:2::30:1/128"}},
		// A prefix of both sides: the client side adds itself to the path.
		{side: ClientSide, set: []string{"198.18.0.101/32", "2001:2::100/128", "198.18.30.1/32"},
			want:   []change{c("198.18.30.1/32", ClientSide|RealSide)},
			client: []string{"198.18.0.101/32", "198.18.30.1/32", "2001:2::100/128"},
			real:   []string{"0.0.0.0/0", "198.18.30.1/32", "2001:2::30:1/128"}},
		// The real side lets it go: the path stays, for the client side only.
		{side: RealSide, set: []string{"0.0.0.0/0", "2001:2::30:1/128"},
			want:   []change{c("198.18.30.1/32", ClientSide)},
			client: []string{"198.18.0.101/32", "198.18.30.1/32", "2001:2::100/128"},
			real:   []string{"0.0.0.0/0", "2001:2::30:1/128"}},
		// Unmasked and mapped prefixes are what BGP carries; duplicates fold.
		{side: RealSide, set: []string{"0.0.0.0/0", "2001:2::30:1/128", "::ffff:198.18.30.7/128", "198.18.30.7/32", "198.18.31.9/24"},
			want:   []change{c("198.18.30.7/32", RealSide), c("198.18.31.0/24", RealSide)},
			client: []string{"198.18.0.101/32", "198.18.30.1/32", "2001:2::100/128"},
			real:   []string{"0.0.0.0/0", "198.18.30.7/32", "198.18.31.0/24", "2001:2::30:1/128"}},
		// Everything gone from one side leaves the other alone.
		{side: ClientSide, set: nil,
			want: []change{c("198.18.0.101/32", 0), c("198.18.30.1/32", 0), c("2001:2::100/128", 0)},
			real: []string{"0.0.0.0/0", "198.18.30.7/32", "198.18.31.0/24", "2001:2::30:1/128"}},
		{side: RealSide, set: nil,
			want: []change{c("0.0.0.0/0", 0), c("198.18.30.7/32", 0), c("198.18.31.0/24", 0), c("2001:2::30:1/128", 0)}},
	}
	cur := map[netip.Prefix]Side{}
	for i, st := range steps {
		want, err := normalize(pfx(st.set...))
		if err != nil {
			t.Fatalf("step %d: normalize: %v", i, err)
		}
		got := reconcile(cur, st.side, want)
		if !slices.Equal(got, st.want) {
			t.Errorf("step %d (%s %v): changes\n got %v\nwant %v", i, st.side, st.set, got, st.want)
		}
		if g, w := announced(cur, ClientSide), pfx(st.client...); !slices.Equal(g, w) {
			t.Errorf("step %d: client side announced %v, want %v", i, g, w)
		}
		if g, w := announced(cur, RealSide), pfx(st.real...); !slices.Equal(g, w) {
			t.Errorf("step %d: real side announced %v, want %v", i, g, w)
		}
	}
	if len(cur) != 0 {
		t.Errorf("after both sides emptied, %d prefixes left: %v", len(cur), cur)
	}
}

func TestNormalizeRefuses(t *testing.T) {
	for _, in := range []netip.Prefix{
		{},
		netip.MustParsePrefix("::ffff:0.0.0.0/95"),
	} {
		if got, err := normalize([]netip.Prefix{in}); err == nil {
			t.Errorf("normalize(%v) = %v, want an error", in, got)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{
		LocalAS: 65001, PeerAS: 65000, RouterID: netip.MustParseAddr("198.18.10.2"),
		ClientPeers: []netip.Addr{netip.MustParseAddr("198.18.10.1")},
		RealPeers:   []netip.Addr{netip.MustParseAddr("198.18.20.1")},
	}
	if err := ok.withDefaults().validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
	}{
		{"iBGP", func(c *Config) { c.PeerAS = c.LocalAS }},
		{"no local AS", func(c *Config) { c.LocalAS = 0 }},
		{"IPv6 router ID", func(c *Config) { c.RouterID = netip.MustParseAddr("2001:2::1") }},
		{"no peers", func(c *Config) { c.ClientPeers, c.RealPeers = nil, nil }},
		{"peer on both sides", func(c *Config) { c.RealPeers = c.ClientPeers }},
		{"peer twice", func(c *Config) { c.ClientPeers = append(c.ClientPeers, c.ClientPeers[0]) }},
		{"hold time 2s", func(c *Config) { c.HoldTime = 2e9 }},
		{"keepalive over a third of hold", func(c *Config) { c.Keepalive = 4e9 }},
		{"long password", func(c *Config) { c.Password = string(make([]byte, 81)) }},
	} {
		c := ok
		tc.mod(&c)
		if err := c.withDefaults().validate(); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
}
