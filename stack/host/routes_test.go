package host

import (
	"bytes"
	"encoding/json"
	"errors"
	"holdfast/internal/netnstest"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/rs/zerolog"
	"github.com/vishvananda/netlink"
)

const (
	testTUN   = "hf0"
	testReal  = "hfreal0" // MTU 1500, the real-server side
	testOther = "hfother0"

	testRealMTU  = 1500
	testOtherMTU = 1400 // the smallest: auto MTU must pick it
)

// testPrefixes uses 198.18.0.0/15 only (RFC 2544 benchmarking space).
var testPrefixes = []netip.Prefix{
	netip.MustParsePrefix("198.18.0.10/32"),
	netip.MustParsePrefix("198.18.0.11/32"),
	netip.MustParsePrefix("198.19.255.0/24"),
}

// routesLab is a fresh namespace holding a real-server interface (MTU 1500),
// another up interface (MTU 1400) and a TUN owned by the test.
type routesLab struct {
	tun      *netlink.Tuntap
	tunIndex int
	ipv6     bool // the kernel has IPv6 (net.ipv6.conf exists)
}

func newRoutesLab(t *testing.T) *routesLab {
	t.Helper()
	netnstest.Enter(t)
	addTestLink(t, testReal, testRealMTU)
	addTestLink(t, testOther, testOtherMTU)

	// NonPersist with one queue kept open: the TUN lives while its fd is open,
	// as holdfast's own TUN does, and closing the fd removes it (and the kernel
	// drops its routes).
	tun := &netlink.Tuntap{
		LinkAttrs:  netlink.LinkAttrs{Name: testTUN},
		Mode:       netlink.TUNTAP_MODE_TUN,
		Flags:      netlink.TUNTAP_DEFAULTS | netlink.TUNTAP_NO_PI,
		NonPersist: true,
		Queues:     1,
	}
	if err := netlink.LinkAdd(tun); err != nil {
		t.Fatalf("create TUN %s: %v", testTUN, err)
	}
	// Registered after enterNetns, so it runs first, inside the namespace.
	t.Cleanup(func() {
		for _, f := range tun.Fds {
			f.Close()
		}
		if l, err := netlink.LinkByName(testTUN); err == nil {
			_ = netlink.LinkDel(l)
		}
	})
	l, err := netlink.LinkByName(testTUN)
	if err != nil {
		t.Fatalf("look up TUN: %v", err)
	}
	_, err = os.Stat("/proc/sys/net/ipv6/conf/all")
	return &routesLab{tun: tun, tunIndex: l.Attrs().Index, ipv6: err == nil}
}

// closeTUN closes the TUN's fd, which removes it, as when holdfast exits.
func (lab *routesLab) closeTUN(t *testing.T) {
	t.Helper()
	for _, f := range lab.tun.Fds {
		if err := f.Close(); err != nil {
			t.Fatalf("close TUN: %v", err)
		}
	}
	if _, err := netlink.LinkByName(testTUN); err == nil {
		t.Fatalf("TUN %s still exists after closing its fd", testTUN)
	}
}

// addTestLink adds an up interface. It is a dummy, or an ifb where the kernel
// is built without the dummy driver (ifb is as inert: no peer, no traffic).
func addTestLink(t *testing.T, name string, mtu int) {
	t.Helper()
	attrs := netlink.LinkAttrs{Name: name, MTU: mtu}
	var link netlink.Link = &netlink.Dummy{LinkAttrs: attrs}
	err := netlink.LinkAdd(link)
	if errors.Is(err, syscall.EOPNOTSUPP) {
		t.Logf("no dummy driver in this kernel; %s is an ifb", name)
		link = &netlink.Ifb{LinkAttrs: attrs}
		err = netlink.LinkAdd(link)
	}
	if err != nil {
		t.Fatalf("add %s: %v", name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		t.Fatalf("bring up %s: %v", name, err)
	}
	if got := mustLinkMTU(t, name); got != mtu {
		t.Fatalf("%s MTU = %d, want %d", name, got, mtu)
	}
}

func mustLinkMTU(t *testing.T, name string) int {
	t.Helper()
	mtu, err := LinkMTU(name)
	if err != nil {
		t.Fatal(err)
	}
	return mtu
}

// testSysctls are the sysctls SetupRoutes sets and their wanted values, listed
// independently of routes.go.
var testSysctls = []struct {
	path  string // under /proc/sys
	want  string
	ipv6  bool
	onTUN bool // vanishes with the TUN
}{
	{path: "net/ipv4/ip_forward", want: "1"},
	{path: "net/ipv4/conf/all/rp_filter", want: "0"},
	{path: "net/ipv4/conf/" + testTUN + "/rp_filter", want: "0", onTUN: true},
	{path: "net/ipv4/conf/" + testReal + "/rp_filter", want: "0"},
	{path: "net/ipv6/conf/" + testTUN + "/disable_ipv6", want: "1", ipv6: true, onTUN: true},
	{path: "net/ipv4/conf/" + testTUN + "/send_redirects", want: "0", onTUN: true},
	{path: "net/ipv4/conf/all/send_redirects", want: "0"},
}

func readTestSysctl(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc/sys", path))
	if err != nil {
		t.Fatalf("read sysctl: %v", err)
	}
	return strings.TrimSpace(string(b))
}

func writeTestSysctl(t *testing.T, path, value string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join("/proc/sys", path), []byte(value), 0); err != nil {
		t.Fatalf("write sysctl: %v", err)
	}
}

// snapshotSysctls reads the sysctls SetupRoutes touches (the IPv6 one only when
// the kernel has IPv6; the TUN's only while it exists).
func (lab *routesLab) snapshotSysctls(t *testing.T, withTUN bool) map[string]string {
	t.Helper()
	m := make(map[string]string)
	for _, s := range testSysctls {
		if (s.ipv6 && !lab.ipv6) || (s.onTUN && !withTUN) {
			continue
		}
		m[s.path] = readTestSysctl(t, s.path)
	}
	return m
}

// steeringRules returns the IPv4 rules sending packets from iif to table.
func steeringRules(t *testing.T, iif string, table int) []netlink.Rule {
	t.Helper()
	rules, err := netlink.RuleList(netlink.FAMILY_V4)
	if err != nil {
		t.Fatalf("list rules: %v", err)
	}
	var out []netlink.Rule
	for _, r := range rules {
		if r.IifName == iif && r.Table == table {
			out = append(out, r)
		}
	}
	return out
}

func addSteeringRule(t *testing.T, iif string, table, priority int) {
	t.Helper()
	r := netlink.NewRule()
	r.Family = netlink.FAMILY_V4
	r.IifName = iif
	r.Table = table
	r.Priority = priority
	if err := netlink.RuleAdd(r); err != nil {
		t.Fatalf("add rule iif %s lookup %d priority %d: %v", iif, table, priority, err)
	}
}

// tableRoutes returns the IPv4 routes of table.
func tableRoutes(t *testing.T, table int) []netlink.Route {
	t.Helper()
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatalf("list routes of table %d: %v", table, err)
	}
	return routes
}

// tunPrefixes returns the destinations of the main-table routes through the
// TUN, with their scope checked.
func (lab *routesLab) tunPrefixes(t *testing.T) []netip.Prefix {
	t.Helper()
	var out []netip.Prefix
	for _, r := range tableRoutes(t, syscall.RT_TABLE_MAIN) {
		if r.LinkIndex != lab.tunIndex {
			continue
		}
		if r.Scope != netlink.SCOPE_LINK {
			t.Errorf("route %s dev %s: scope %v, want link", r.Dst, testTUN, r.Scope)
		}
		out = append(out, ipNetPrefix(t, r.Dst))
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

func ipNetPrefix(t *testing.T, n *net.IPNet) netip.Prefix {
	t.Helper()
	if n == nil {
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		t.Fatalf("bad route destination %v", n)
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}

// checkInstalled checks everything SetupRoutes installs with the default
// table and priority.
func (lab *routesLab) checkInstalled(t *testing.T) {
	t.Helper()
	if got := lab.tunPrefixes(t); !slices.Equal(got, testPrefixes) {
		t.Errorf("main-table routes dev %s = %v, want %v", testTUN, got, testPrefixes)
	}
	routes := tableRoutes(t, DefaultRouteTable)
	if len(routes) != 1 || routes[0].LinkIndex != lab.tunIndex || ipNetPrefix(t, routes[0].Dst).Bits() != 0 {
		t.Errorf("table %d = %v, want exactly: default dev %s", DefaultRouteTable, routes, testTUN)
	}
	rules := steeringRules(t, testReal, DefaultRouteTable)
	if len(rules) != 1 || rules[0].Priority != DefaultRulePriority {
		t.Errorf("rules iif %s lookup %d = %v, want exactly one at priority %d", testReal, DefaultRouteTable, rules, DefaultRulePriority)
	}
	for path, got := range lab.snapshotSysctls(t, true) {
		for _, s := range testSysctls {
			if s.path == path && got != s.want {
				t.Errorf("sysctl %s = %s, want %s", path, got, s.want)
			}
		}
	}
}

func testLogger(t *testing.T, w ...io.Writer) zerolog.Logger {
	return zerolog.New(io.MultiWriter(append(w, zerolog.NewTestWriter(t))...)).Level(zerolog.DebugLevel)
}

func TestSetupRoutesInstalls(t *testing.T) {
	lab := newRoutesLab(t)
	var logs bytes.Buffer
	undo, err := SetupRoutes(RouteConfig{TUN: testTUN, RealIface: testReal, Prefixes: testPrefixes}, testLogger(t, &logs))
	if err != nil {
		t.Fatalf("SetupRoutes: %v", err)
	}
	t.Cleanup(func() {
		if err := undo(); err != nil {
			t.Errorf("undo: %v", err)
		}
	})

	lab.checkInstalled(t)
	if got := mustLinkMTU(t, testTUN); got != testOtherMTU {
		t.Errorf("TUN MTU = %d, want %d (auto: the smallest up link)", got, testOtherMTU)
	}
	l, err := netlink.LinkByName(testTUN)
	if err != nil {
		t.Fatal(err)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("TUN is not up")
	}

	// The summary is one info line with fields.
	var summary map[string]any
	for line := range strings.Lines(logs.String()) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["level"] == "info" {
			summary = m
		}
	}
	want := map[string]any{
		logFieldTUN: testTUN, logFieldRealIface: testReal, logFieldMTU: float64(testOtherMTU),
		logFieldTable: float64(DefaultRouteTable), logFieldPriority: float64(DefaultRulePriority),
	}
	for k, v := range want {
		if summary[k] != v {
			t.Errorf("summary log %s = %v, want %v (line %v)", k, summary[k], v, summary)
		}
	}
	if p, _ := summary[logFieldPrefixes].([]any); len(p) != len(testPrefixes) {
		t.Errorf("summary log %s = %v, want %d prefixes", logFieldPrefixes, summary[logFieldPrefixes], len(testPrefixes))
	}
}

// A run killed with SIGKILL never calls undo. The next run must replace its
// leftovers, not duplicate them, and not fail.
func TestSetupRoutesKilledRunLeftovers(t *testing.T) {
	lab := newRoutesLab(t)
	cfg := RouteConfig{TUN: testTUN, RealIface: testReal, Prefixes: testPrefixes}

	// An even older killed run used another priority; a rule for another table
	// on the same interface is someone else's and must survive.
	addSteeringRule(t, testReal, DefaultRouteTable, 900)
	addSteeringRule(t, testReal, 200, 800)

	if _, err := SetupRoutes(cfg, testLogger(t)); err != nil { // killed: no undo
		t.Fatalf("first SetupRoutes: %v", err)
	}
	undo, err := SetupRoutes(cfg, testLogger(t))
	if err != nil {
		t.Fatalf("second SetupRoutes over the leftovers: %v", err)
	}
	lab.checkInstalled(t)
	if n := len(steeringRules(t, testReal, 200)); n != 1 {
		t.Errorf("rules iif %s lookup 200: %d, want the foreign one kept", testReal, n)
	}

	if err := undo(); err != nil {
		t.Fatalf("undo: %v", err)
	}
	if rules := steeringRules(t, testReal, DefaultRouteTable); len(rules) != 0 {
		t.Errorf("after undo, rules iif %s lookup %d = %v, want none", testReal, DefaultRouteTable, rules)
	}
	if n := len(steeringRules(t, testReal, 200)); n != 1 {
		t.Errorf("after undo, rules iif %s lookup 200: %d, want the foreign one kept", testReal, n)
	}
}

func TestSetupRoutesUndoRestores(t *testing.T) {
	lab := newRoutesLab(t)
	// Values SetupRoutes must change and undo must bring back.
	writeTestSysctl(t, "net/ipv4/conf/all/rp_filter", "2")
	writeTestSysctl(t, "net/ipv4/conf/"+testReal+"/rp_filter", "1")
	writeTestSysctl(t, "net/ipv4/conf/all/send_redirects", "1")
	writeTestSysctl(t, "net/ipv4/ip_forward", "0")
	before := lab.snapshotSysctls(t, true)

	undo, err := SetupRoutes(RouteConfig{TUN: testTUN, RealIface: testReal, Prefixes: testPrefixes}, testLogger(t))
	if err != nil {
		t.Fatalf("SetupRoutes: %v", err)
	}
	lab.checkInstalled(t)

	checkRemoved := func(t *testing.T) {
		t.Helper()
		if got := lab.tunPrefixes(t); len(got) != 0 {
			t.Errorf("main-table routes dev %s left: %v", testTUN, got)
		}
		if got := tableRoutes(t, DefaultRouteTable); len(got) != 0 {
			t.Errorf("table %d left: %v", DefaultRouteTable, got)
		}
		if got := steeringRules(t, testReal, DefaultRouteTable); len(got) != 0 {
			t.Errorf("rules left: %v", got)
		}
		if got := lab.snapshotSysctls(t, true); !maps.Equal(got, before) {
			t.Errorf("sysctls after undo = %v, want %v", got, before)
		}
		if got := readTestSysctl(t, "net/ipv4/conf/all/rp_filter"); got != "2" {
			t.Errorf("conf.all.rp_filter after undo = %s, want 2", got)
		}
	}
	if err := undo(); err != nil {
		t.Fatalf("undo: %v", err)
	}
	checkRemoved(t)

	// Twice is harmless and leaves the restored state alone.
	writeTestSysctl(t, "net/ipv4/conf/all/rp_filter", "1")
	before["net/ipv4/conf/all/rp_filter"] = "1"
	if err := undo(); err != nil {
		t.Fatalf("second undo: %v", err)
	}
	if got := readTestSysctl(t, "net/ipv4/conf/all/rp_filter"); got != "1" {
		t.Errorf("second undo rewrote conf.all.rp_filter: %s, want 1", got)
	}
}

// holdfast closes its TUN before undo runs on a normal exit: the kernel has
// already dropped the routes through it, and undo must not call that an error.
func TestSetupRoutesUndoAfterTUNGone(t *testing.T) {
	lab := newRoutesLab(t)
	writeTestSysctl(t, "net/ipv4/conf/all/rp_filter", "2")
	before := lab.snapshotSysctls(t, false)

	undo, err := SetupRoutes(RouteConfig{TUN: testTUN, RealIface: testReal, Prefixes: testPrefixes}, testLogger(t))
	if err != nil {
		t.Fatalf("SetupRoutes: %v", err)
	}
	lab.closeTUN(t)
	if err := undo(); err != nil {
		t.Fatalf("undo after the TUN is gone: %v", err)
	}
	if got := steeringRules(t, testReal, DefaultRouteTable); len(got) != 0 {
		t.Errorf("rules left: %v", got)
	}
	if got := lab.snapshotSysctls(t, false); !maps.Equal(got, before) {
		t.Errorf("sysctls after undo = %v, want %v", got, before)
	}
}

func TestSetupRoutesErrors(t *testing.T) {
	base := RouteConfig{TUN: testTUN, RealIface: testReal, Prefixes: testPrefixes}
	tests := []struct {
		name    string
		prepare func(t *testing.T)
		cfg     func(c RouteConfig) RouteConfig
		wantErr string // the whole message if exact, else a substring
		exact   bool
	}{{
		name:    "missing real iface",
		cfg:     func(c RouteConfig) RouteConfig { c.RealIface = "eth9"; return c },
		wantErr: `--real-iface "eth9": no such interface in this network namespace`,
		exact:   true,
	}, {
		name:    "missing TUN",
		cfg:     func(c RouteConfig) RouteConfig { c.TUN = "hf9"; return c },
		wantErr: `TUN "hf9": no such interface in this network namespace`,
		exact:   true,
	}, {
		name:    "explicit MTU too small",
		cfg:     func(c RouteConfig) RouteConfig { c.MTU = 500; return c },
		wantErr: "TUN MTU 500 (configured) is below the IPv4 minimum of 576",
	}, {
		name: "auto MTU too small",
		prepare: func(t *testing.T) {
			l, err := netlink.LinkByName(testOther)
			if err != nil {
				t.Fatal(err)
			}
			if err := netlink.LinkSetMTU(l, 500); err != nil {
				t.Fatal(err)
			}
		},
		cfg:     func(c RouteConfig) RouteConfig { return c },
		wantErr: "TUN MTU 500 (smallest up link " + testOther + ") is below",
	}, {
		name: "MTU the TUN refuses",
		cfg:  func(c RouteConfig) RouteConfig { c.MTU = 70000; return c },
		// The kernel's answer follows the context.
		wantErr: "set MTU 70000 on " + testTUN + ": ",
	}, {
		name: "IPv6 prefix",
		cfg: func(c RouteConfig) RouteConfig {
			c.Prefixes = append(slices.Clone(c.Prefixes), netip.MustParsePrefix("2001:db8::1/128"))
			return c
		},
		wantErr: "only IPv4",
	}, {
		name: "host bits",
		cfg: func(c RouteConfig) RouteConfig {
			c.Prefixes = []netip.Prefix{netip.MustParsePrefix("198.18.0.1/24")}
			return c
		},
		wantErr: "host bits set",
	}, {
		name:    "main table",
		cfg:     func(c RouteConfig) RouteConfig { c.Table = 254; return c },
		wantErr: "routing table 254",
	}, {
		name:    "priority after main",
		cfg:     func(c RouteConfig) RouteConfig { c.Priority = 32766; return c },
		wantErr: "rule priority 32766",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lab := newRoutesLab(t)
			if tt.prepare != nil {
				tt.prepare(t)
			}
			before := lab.snapshotSysctls(t, true)
			undo, err := SetupRoutes(tt.cfg(base), testLogger(t))
			if err == nil {
				undo()
				t.Fatalf("SetupRoutes succeeded, want error %q", tt.wantErr)
			}
			if undo != nil {
				t.Errorf("undo is not nil on error")
			}
			if (tt.exact && err.Error() != tt.wantErr) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error = %q, want %q", err, tt.wantErr)
			}
			// A failed setup leaves nothing behind.
			if got := lab.tunPrefixes(t); len(got) != 0 {
				t.Errorf("routes left: %v", got)
			}
			if got := steeringRules(t, testReal, DefaultRouteTable); len(got) != 0 {
				t.Errorf("rules left: %v", got)
			}
			if got := lab.snapshotSysctls(t, true); !maps.Equal(got, before) {
				t.Errorf("sysctls = %v, want unchanged %v", got, before)
			}
		})
	}
}

// A VIP that is also one of the director's addresses never reaches the TUN (the
// local table is consulted first): SetupRoutes says so.
func TestSetupRoutesWarnsLocalVIP(t *testing.T) {
	newRoutesLab(t)
	l, err := netlink.LinkByName(testOther)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := netlink.ParseAddr("198.18.0.10/32")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrAdd(l, addr); err != nil {
		t.Fatalf("add %s to %s: %v", addr, testOther, err)
	}
	var logs bytes.Buffer
	undo, err := SetupRoutes(RouteConfig{TUN: testTUN, RealIface: testReal, Prefixes: testPrefixes}, testLogger(t, &logs))
	if err != nil {
		t.Fatalf("SetupRoutes: %v", err)
	}
	if err := undo(); err != nil {
		t.Errorf("undo: %v", err)
	}
	if !strings.Contains(logs.String(), `"level":"warn","prefix":"198.18.0.10/32","addr":"198.18.0.10"`) {
		t.Errorf("no warning about the local VIP in:\n%s", logs.String())
	}
}

// undo runs its steps in reverse, keeps only the failed ones, and a later call
// retries just those. No root needed.
func TestRoutesTeardownRetriesFailed(t *testing.T) {
	var (
		td    teardown
		calls []string
		fail  = map[string]bool{"b": true}
	)
	for _, name := range []string{"a", "b", "c"} {
		td.add(name, func() error {
			calls = append(calls, name)
			if fail[name] {
				return errors.New("busy")
			}
			return nil
		})
	}
	err := td.run()
	if err == nil || err.Error() != "b: busy" {
		t.Errorf("first run: error %v, want \"b: busy\"", err)
	}
	if want := []string{"c", "b", "a"}; !slices.Equal(calls, want) {
		t.Errorf("first run called %v, want %v", calls, want)
	}
	calls, fail["b"] = nil, false
	if err := td.run(); err != nil {
		t.Errorf("second run: %v", err)
	}
	if want := []string{"b"}; !slices.Equal(calls, want) {
		t.Errorf("second run called %v, want %v", calls, want)
	}
	calls = nil
	if err := td.run(); err != nil || len(calls) != 0 {
		t.Errorf("third run: error %v, calls %v; want nothing", err, calls)
	}
}
