package lab

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// planLab is a Lab with opts's directors planned (addresses, no
// namespaces): enough for what the BGP lab writes and passes to holdfast.
func planLab(opts Options) *Lab {
	l := &Lab{Prefix: "t-", ipv6: opts.IPv6, ecmp: opts.ECMP}
	if opts.BGP {
		l.bgp = &bgpState{}
	}
	for i := range opts.Directors {
		d := directorPlan(i, opts)
		d.NS = &NS{Name: "t-dir" + d.Label, lab: l}
		l.Directors = append(l.Directors, d)
	}
	return l
}

// A dual-stack BGP lab mirrors the BGP lab's IPv4 plan, its uplinks
// 198.18.1N.0/24 and peering addresses included.
func TestDirectorPlanBGP6(t *testing.T) {
	l := planLab(Options{Directors: 3, BGP: true, ECMP: true, IPv6: true})
	for _, c := range []struct {
		d                                       *Director
		uplink6, router6, rs6, bgp4, bgp6, rec6 string
	}{
		{l.Directors[0], "2001:2:0:11::2/64", "2001:2:0:11::1", "2001:2:0:10::2/64", "198.18.20.2/24", "2001:2:0:20::2/64", "2001:2:0:200::1"},
		{l.Directors[2], "2001:2:0:13::2/64", "2001:2:0:13::1", "2001:2:0:10::4/64", "198.18.20.4/24", "2001:2:0:20::4/64", "2001:2:0:200::3"},
	} {
		d := c.d
		got := []string{d.Uplink6.String(), d.RouterAddr6.String(), d.RSAddr6.String(), d.BGPAddr.String(), d.BGPAddr6.String(), RecoveryAddr6Of(d).String()}
		want := []string{c.uplink6, c.router6, c.rs6, c.bgp4, c.bgp6, c.rec6}
		if !slices.Equal(got, want) {
			t.Errorf("director %s: uplink6, router6, rs6, bgp, bgp6, recovery6 = %v, want %v", d.Label, got, want)
		}
	}
	if BGPRealPeer6.String() != "2001:2:0:20::1" || BGPRealGateway6.String() != "2001:2:0:10::1" || !BGPRealPeerPrefix6.Contains(BGPRealPeer6) {
		t.Errorf("real-side router: peer %v in %v, gateway %v", BGPRealPeer6, BGPRealPeerPrefix6, BGPRealGateway6)
	}
	// A pair shares RecoveryAddr6, as it shares RecoveryAddr.
	p := planLab(Options{Directors: 2, BGP: true, IPv6: true})
	if a, b := RecoveryAddr6Of(p.Directors[0]), RecoveryAddr6Of(p.Directors[1]); a != RecoveryAddr6 || b != RecoveryAddr6 {
		t.Errorf("a pair's IPv6 recovery addresses %v, %v; want both %v", a, b, RecoveryAddr6)
	}
}

// flagValues are the values of every --name in args, in order.
func flagValues(args []string, name string) []string {
	var out []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == name {
			out = append(out, args[i+1])
		}
	}
	return out
}

// In a dual-stack BGP lab a director's holdfast gets a client-side and a
// real-side peer of each family, ::/0 to announce next to 0.0.0.0/0, and
// (ECMP) its own recovery address of each family; in an IPv4 one none of
// the IPv6 ones.
func TestHoldfastArgsBGP6(t *testing.T) {
	for _, c := range []struct {
		opts                       Options
		peers, realPeers, announce []string
		recovery                   []string
	}{
		{Options{Directors: 3, BGP: true, ECMP: true, IPv6: true},
			[]string{"198.18.12.1", "2001:2:0:12::1"}, []string{"198.18.20.1", "2001:2:0:20::1"}, []string{"0.0.0.0/0", "::/0"},
			[]string{"198.18.200.2", "2001:2:0:200::2"}},
		{Options{Directors: 2, BGP: true, IPv6: true},
			[]string{"198.18.12.1", "2001:2:0:12::1"}, []string{"198.18.20.1", "2001:2:0:20::1"}, []string{"0.0.0.0/0", "::/0"},
			[]string{"198.18.200.1", "2001:2:0:200::1"}},
		{Options{Directors: 2, BGP: true},
			[]string{"198.18.12.1"}, []string{"198.18.20.1"}, []string{"0.0.0.0/0"}, []string{"198.18.200.1"}},
	} {
		args := HoldfastArgs(planLab(c.opts).Directors[1])
		for _, f := range []struct {
			name string
			want []string
		}{{"--bgp-peer", c.peers}, {"--bgp-real-peer", c.realPeers}, {"--bgp-announce", c.announce}, {"--recovery-addr", c.recovery}} {
			if got := flagValues(args, f.name); !slices.Equal(got, f.want) {
				t.Errorf("%+v: director B's %s %v, want %v", c.opts, f.name, got, f.want)
			}
		}
		if got := flagValues(args, "--bgp-router-id"); !slices.Equal(got, []string{"198.18.12.2"}) {
			t.Errorf("%+v: --bgp-router-id %v, want the IPv4 uplink 198.18.12.2 (a BGP identifier is IPv4)", c.opts, got)
		}
	}
}

// The routers' BIRD configurations have a session per director and
// family, each with its family's channel, neighbour and source address,
// a filter and a kernel protocol per family (merging paths in an ECMP
// lab); BIRD itself accepts them (bird -p) where it is installed.
func TestRouterConfs(t *testing.T) {
	for _, c := range []struct {
		opts Options
		want map[string][]string // by side: lines the configuration must hold
		not  []string            // in neither side's
	}{
		{Options{Directors: 3, BGP: true, ECMP: true, IPv6: true}, map[string][]string{
			BGPClientSide: {
				"protocol bgp director_c6 from director {", "neighbor 2001:2:0:13::2 as 65001;", "source address 2001:2:0:13::1;",
				"ipv6 { import filter from_director_ipv6; export none; };", "if net ~ [ 2001:2:0:100::/64{128,128} ] then accept;",
				"protocol bgp director_c from director {", "neighbor 198.18.13.2 as 65001;", "check link yes;",
			},
			BGPRealSide: {
				"protocol bgp director_c6 from director {", "neighbor 2001:2:0:20::4 as 65001;", "source address 2001:2:0:20::1;",
				"if net ~ [ 2001:2:0:200::/64{128,128}, ::/0 ] then accept;", "ipv6 { export filter { if source = RTS_BGP then accept; reject; }; };",
			},
		}, nil},
		{Options{Directors: 2, BGP: true}, map[string][]string{
			BGPClientSide: {"protocol bgp director_b from director {", "ipv4 { import filter from_director_ipv4; export none; };"},
			BGPRealSide:   {"neighbor 198.18.20.3 as 65001;", "if net ~ [ 198.18.200.0/24{32,32}, 0.0.0.0/0 ] then accept;"},
		}, []string{"ipv6", "director_a6", "merge paths"}},
	} {
		l := planLab(c.opts)
		confs, err := l.routerConfs()
		if err != nil {
			t.Fatal(err)
		}
		families := len(l.families())
		for side, conf := range confs {
			lines := map[string]bool{}
			for _, line := range strings.Split(conf, "\n") {
				lines[strings.TrimSpace(line)] = true
			}
			for _, w := range c.want[side] {
				if !lines[w] {
					t.Errorf("%+v: %s router's BIRD has no line %q:\n%s", c.opts, side, w, conf)
				}
			}
			for _, n := range c.not {
				if strings.Contains(conf, n) {
					t.Errorf("%+v: %s router's BIRD has %q:\n%s", c.opts, side, n, conf)
				}
			}
			if n, want := strings.Count(conf, "\nprotocol bgp "), len(l.Directors)*families; n != want {
				t.Errorf("%+v: %s router's BIRD has %d sessions, want %d", c.opts, side, n, want)
			}
			if n := strings.Count(conf, "\nprotocol kernel {"); n != families {
				t.Errorf("%+v: %s router's BIRD has %d kernel protocols, want %d (one per family)", c.opts, side, n, families)
			}
			if n, want := strings.Count(conf, "merge paths yes;"), map[bool]int{true: families}[c.opts.ECMP]; n != want {
				t.Errorf("%+v: %s router's BIRD merges paths in %d kernel protocols, want %d", c.opts, side, n, want)
			}
			birdParses(t, side, conf)
		}
	}
}

// birdParses checks conf with `bird -p` (parse only: no root, no socket),
// where BIRD is installed.
func birdParses(t *testing.T, name, conf string) {
	t.Helper()
	bin, err := exec.LookPath("bird")
	if err != nil {
		t.Logf("bird not installed (Debian bird2): %s's configuration not checked by BIRD", name)
		return
	}
	cfg := filepath.Join(t.TempDir(), name+".conf")
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, bin, "-p", "-c", cfg).CombinedOutput(); err != nil {
		t.Errorf("bird -p rejects the %s router's configuration: %v\n%s\n%s", name, err, out, conf)
	}
}

// The BGP lab is dual-stack with IPv6 now, but still refuses what it
// cannot build, before anything is made.
func TestNewRefusesBGPOptions(t *testing.T) {
	for _, o := range []Options{
		{BGP: true, Directors: 2, VRRP: true},
		{BGP: true, Directors: 2, IPv6: true, RealHopMTU: 1400},
	} {
		l, err := New(o)
		if err == nil {
			l.Close()
			t.Errorf("New(%+v) succeeded", o)
			continue
		}
		if !strings.Contains(err.Error(), "BGP with VRRP or RealHopMTU") {
			t.Errorf("New(%+v) = %v, want it to name BGP with VRRP or RealHopMTU", o, err)
		}
	}
}
