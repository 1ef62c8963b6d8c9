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
	"golang.org/x/sys/unix"
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

// testPrefixes6 adds IPv6 VIPs and a recovery address from 2001:2::/48 (RFC
// 5180 benchmarking space) to testPrefixes: a dual-stack director.
var testPrefixes6 = append(slices.Clone(testPrefixes),
	netip.MustParsePrefix("2001:2::10/128"),
	netip.MustParsePrefix("2001:2:0:30::1/128"),
)

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

type testSysctl struct {
	path  string // under /proc/sys
	want  string
	ipv6  bool
	onTUN bool // vanishes with the TUN
}

// testSysctls are the sysctls SetupRoutes sets and their wanted values, listed
// independently of routes.go; served6: with IPv6 prefixes.
func testSysctls(served6 bool) []testSysctl {
	v := []testSysctl{
		{path: "net/ipv4/ip_forward", want: "1"},
		{path: "net/ipv4/conf/all/rp_filter", want: "0"},
		{path: "net/ipv4/conf/" + testTUN + "/rp_filter", want: "0", onTUN: true},
		{path: "net/ipv4/conf/" + testReal + "/rp_filter", want: "0"},
		{path: "net/ipv4/conf/" + testTUN + "/send_redirects", want: "0", onTUN: true},
		{path: "net/ipv4/conf/all/send_redirects", want: "0"},
	}
	if !served6 {
		return append(v, testSysctl{path: "net/ipv6/conf/" + testTUN + "/disable_ipv6", want: "1", ipv6: true, onTUN: true})
	}
	return append(v,
		testSysctl{path: "net/ipv6/conf/all/forwarding", want: "1", ipv6: true},
		testSysctl{path: "net/ipv6/conf/" + testTUN + "/addr_gen_mode", want: "1", ipv6: true, onTUN: true},
		testSysctl{path: "net/ipv6/conf/" + testTUN + "/disable_ipv6", want: "0", ipv6: true, onTUN: true},
	)
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

// snapshotSysctls reads the sysctls SetupRoutes touches for IPv4 prefixes (the
// IPv6 one only when the kernel has IPv6; the TUN's only while it exists).
func (lab *routesLab) snapshotSysctls(t *testing.T, withTUN bool) map[string]string {
	t.Helper()
	return lab.snapshotSysctlsFor(t, withTUN, false)
}

// snapshotSysctlsFor reads the sysctls SetupRoutes touches, for IPv6 prefixes
// too if served6.
func (lab *routesLab) snapshotSysctlsFor(t *testing.T, withTUN, served6 bool) map[string]string {
	t.Helper()
	m := make(map[string]string)
	for _, s := range testSysctls(served6) {
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
	return steeringRulesOf(t, netlink.FAMILY_V4, iif, table)
}

// steeringRulesOf returns the rules of family fam sending packets from iif to
// table.
func steeringRulesOf(t *testing.T, fam int, iif string, table int) []netlink.Rule {
	t.Helper()
	rules, err := netlink.RuleList(fam)
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
	addSteeringRuleOf(t, netlink.FAMILY_V4, iif, table, priority)
}

func addSteeringRuleOf(t *testing.T, fam int, iif string, table, priority int) {
	t.Helper()
	r := netlink.NewRule()
	r.Family = fam
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
	return tableRoutesOf(t, netlink.FAMILY_V4, table)
}

// tableRoutesOf returns the routes of family fam in table.
func tableRoutesOf(t *testing.T, fam, table int) []netlink.Route {
	t.Helper()
	routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatalf("list routes of table %d: %v", table, err)
	}
	return routes
}

// tunPrefixes returns the destinations of the main-table routes through the
// TUN, of both families, with the IPv4 ones' scope checked. The kernel's own
// IPv6 routes on the TUN (multicast ff00::/8, and fe80::/64 if it had a
// link-local address) are left out.
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
	if lab.ipv6 {
		for _, r := range tableRoutesOf(t, netlink.FAMILY_V6, syscall.RT_TABLE_MAIN) {
			if r.LinkIndex != lab.tunIndex || r.Protocol == unix.RTPROT_KERNEL {
				continue
			}
			out = append(out, ipNetPrefix(t, r.Dst))
		}
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

// checkInstalled checks everything SetupRoutes installs for testPrefixes with
// the default table and priority.
func (lab *routesLab) checkInstalled(t *testing.T) {
	t.Helper()
	lab.checkInstalledFor(t, testPrefixes)
}

// checkInstalledFor checks everything SetupRoutes installs for prefixes (IPv6
// ones among them or not) with the default table and priority.
func (lab *routesLab) checkInstalledFor(t *testing.T, prefixes []netip.Prefix) {
	t.Helper()
	served6 := slices.ContainsFunc(prefixes, func(p netip.Prefix) bool { return p.Addr().Is6() })
	if got := lab.tunPrefixes(t); !slices.Equal(got, prefixes) {
		t.Errorf("main-table routes dev %s = %v, want %v", testTUN, got, prefixes)
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		want := 1
		if fam == netlink.FAMILY_V6 && !served6 {
			if !lab.ipv6 {
				continue
			}
			want = 0
		}
		routes := tableRoutesOf(t, fam, DefaultRouteTable)
		if len(routes) != want || (want == 1 && (routes[0].LinkIndex != lab.tunIndex || ipNetPrefix(t, routes[0].Dst).Bits() != 0)) {
			t.Errorf("family %d: table %d = %v, want %d route: default dev %s", fam, DefaultRouteTable, routes, want, testTUN)
		}
		rules := steeringRulesOf(t, fam, testReal, DefaultRouteTable)
		if len(rules) != want || (want == 1 && rules[0].Priority != DefaultRulePriority) {
			t.Errorf("family %d: rules iif %s lookup %d = %v, want %d at priority %d", fam, testReal, DefaultRouteTable, rules, want, DefaultRulePriority)
		}
	}
	got := lab.snapshotSysctlsFor(t, true, served6)
	for _, s := range testSysctls(served6) {
		if v, ok := got[s.path]; ok && v != s.want {
			t.Errorf("sysctl %s = %s, want %s", s.path, v, s.want)
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
	for _, served6 := range []bool{false, true} {
		t.Run(map[bool]string{false: "IPv4", true: "dual-stack"}[served6], func(t *testing.T) {
			lab := newRoutesLab(t)
			if served6 && !lab.ipv6 {
				t.Skip("skipping: this kernel has no IPv6 (no /proc/sys/net/ipv6)")
			}
			prefixes := testPrefixes
			if served6 {
				prefixes = testPrefixes6
			}
			writeTestSysctl(t, "net/ipv4/conf/all/rp_filter", "2")
			before := lab.snapshotSysctlsFor(t, false, served6)

			undo, err := SetupRoutes(RouteConfig{TUN: testTUN, RealIface: testReal, Prefixes: prefixes}, testLogger(t))
			if err != nil {
				t.Fatalf("SetupRoutes: %v", err)
			}
			lab.closeTUN(t)
			if err := undo(); err != nil {
				t.Fatalf("undo after the TUN is gone: %v", err)
			}
			for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
				if got := steeringRulesOf(t, fam, testReal, DefaultRouteTable); len(got) != 0 {
					t.Errorf("family %d: rules left: %v", fam, got)
				}
			}
			if got := lab.snapshotSysctlsFor(t, false, served6); !maps.Equal(got, before) {
				t.Errorf("sysctls after undo = %v, want %v", got, before)
			}
		})
	}
}

// A dual-stack director: IPv6 VIP and recovery routes into the TUN, a
// default route and a rule of IPv6's own, IPv6 forwarding on, the TUN's IPv6
// on (though off by default here) and without a link-local address, a
// warning about router advertisements; undo takes every piece back.
func TestSetupRoutesInstallsIPv6(t *testing.T) {
	lab := newRoutesLab(t)
	if !lab.ipv6 {
		t.Skip("skipping: this kernel has no IPv6 (no /proc/sys/net/ipv6)")
	}
	writeTestSysctl(t, "net/ipv6/conf/all/forwarding", "0")
	writeTestSysctl(t, "net/ipv6/conf/"+testTUN+"/disable_ipv6", "1")
	before := lab.snapshotSysctlsFor(t, true, true)
	var logs bytes.Buffer
	undo, err := SetupRoutes(RouteConfig{TUN: testTUN, RealIface: testReal, Prefixes: testPrefixes6}, testLogger(t, &logs))
	if err != nil {
		t.Fatalf("SetupRoutes: %v", err)
	}
	lab.checkInstalledFor(t, testPrefixes6)
	tun, err := netlink.LinkByName(testTUN)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := netlink.AddrList(tun, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 0 {
		t.Errorf("IPv6 addresses on %s: %v, want none (no link-local)", testTUN, addrs)
	}
	if f := tun.Attrs().Flags; f&net.FlagMulticast != 0 || f&net.FlagUp == 0 {
		t.Errorf("%s flags %v, want up and no multicast (no MLD reports into the NAT)", testTUN, f)
	}
	if !strings.Contains(logs.String(), `"level":"warn","ifaces":["`+testOther+`","`+testReal+`"],"message":"net.ipv6.conf.all.forwarding=1: these interfaces (accept_ra=1) no longer accept router advertisements`) {
		t.Errorf("no warning about accept_ra in:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), `"ipv6":true,"prefixes":[`) {
		t.Errorf("the summary does not say ipv6: true:\n%s", logs.String())
	}

	if err := undo(); err != nil {
		t.Fatalf("undo: %v", err)
	}
	if got := lab.tunPrefixes(t); len(got) != 0 {
		t.Errorf("main-table routes dev %s left: %v", testTUN, got)
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		if got := tableRoutesOf(t, fam, DefaultRouteTable); len(got) != 0 {
			t.Errorf("family %d: table %d left: %v", fam, DefaultRouteTable, got)
		}
		if got := steeringRulesOf(t, fam, testReal, DefaultRouteTable); len(got) != 0 {
			t.Errorf("family %d: rules left: %v", fam, got)
		}
	}
	if got := lab.snapshotSysctlsFor(t, true, true); !maps.Equal(got, before) {
		t.Errorf("sysctls after undo = %v, want %v", got, before)
	}
}

// A killed dual-stack run leaves an IPv6 rule too: the next run, dual-stack
// or IPv4 only, removes it (an IPv4-only run must not steer the reals' IPv6
// into a TUN that has IPv6 off), and keeps a foreign IPv6 rule.
func TestSetupRoutesKilledRunLeftoversIPv6(t *testing.T) {
	lab := newRoutesLab(t)
	if !lab.ipv6 {
		t.Skip("skipping: this kernel has no IPv6 (no /proc/sys/net/ipv6)")
	}
	addSteeringRuleOf(t, netlink.FAMILY_V6, testReal, DefaultRouteTable, 900)
	addSteeringRuleOf(t, netlink.FAMILY_V6, testReal, 200, 800)
	dual := RouteConfig{TUN: testTUN, RealIface: testReal, Prefixes: testPrefixes6}
	if _, err := SetupRoutes(dual, testLogger(t)); err != nil { // killed: no undo
		t.Fatalf("first SetupRoutes: %v", err)
	}
	if _, err := SetupRoutes(dual, testLogger(t)); err != nil { // killed again
		t.Fatalf("second SetupRoutes over the leftovers: %v", err)
	}
	lab.checkInstalledFor(t, testPrefixes6)
	// The next run serves IPv4 only.
	v4 := RouteConfig{TUN: testTUN, RealIface: testReal, Prefixes: testPrefixes}
	undo, err := SetupRoutes(v4, testLogger(t))
	if err != nil {
		t.Fatalf("IPv4 SetupRoutes over the dual-stack leftovers: %v", err)
	}
	if got := steeringRulesOf(t, netlink.FAMILY_V6, testReal, DefaultRouteTable); len(got) != 0 {
		t.Errorf("IPv6 rules iif %s lookup %d after an IPv4 run: %v, want none", testReal, DefaultRouteTable, got)
	}
	if err := undo(); err != nil {
		t.Fatalf("undo: %v", err)
	}
	if n := len(steeringRulesOf(t, netlink.FAMILY_V6, testReal, 200)); n != 1 {
		t.Errorf("IPv6 rules iif %s lookup 200: %d, want the foreign one kept", testReal, n)
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
		name: "IPv6 prefix on an MTU below IPv6's",
		cfg: func(c RouteConfig) RouteConfig {
			c.Prefixes, c.MTU = testPrefixes6, 1279
			return c
		},
		wantErr: "TUN MTU 1279 (configured) is below the IPv6 minimum of 1280",
	}, {
		name: "IPv4-mapped prefix",
		cfg: func(c RouteConfig) RouteConfig {
			c.Prefixes = []netip.Prefix{netip.MustParsePrefix("::ffff:198.18.0.10/128")}
			return c
		},
		wantErr: "not IPv4-mapped",
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
			if got := steeringRulesOf(t, netlink.FAMILY_V6, testReal, DefaultRouteTable); len(got) != 0 {
				t.Errorf("IPv6 rules left: %v", got)
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
