package host

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/rs/zerolog"
	"github.com/vishvananda/netlink"
)

const (
	// DefaultRouteTable is the policy routing table used when RouteConfig.Table is 0.
	DefaultRouteTable = 100
	// DefaultRulePriority is the ip rule priority used when RouteConfig.Priority is 0.
	DefaultRulePriority = 1000
	// MinTUNMTU is the smallest TUN MTU SetupRoutes accepts: every IPv4 host must
	// accept 576-byte datagrams (RFC 791, RFC 1122 3.3.2), so a smaller link MTU
	// is a misconfiguration, not a path to adapt to.
	MinTUNMTU = 576
	// MinTUNMTU6 is the smallest TUN MTU when an IPv6 prefix is routed into
	// it: every IPv6 link has an MTU of at least 1280 (RFC 8200 section 5),
	// and Linux turns IPv6 off on a link below it.
	MinTUNMTU6 = 1280

	// tunTxQueueLen is the TUN's queue length set by SetupRoutes.
	tunTxQueueLen = 10000

	// mainRulePriority is the priority of the kernel's "lookup main" rule. The
	// holdfast rule must come before it: the main table knows a route to the
	// clients (the default route), and a real server's reply matched there would
	// be forwarded to the client untranslated, bypassing the TUN.
	mainRulePriority = 32766
)

// Log field names used by SetupRoutes.
const (
	logFieldTUN       = "tun"
	logFieldRealIface = "real_iface"
	logFieldMTU       = "mtu"
	logFieldMTUFrom   = "mtu_from"
	logFieldTable     = "table"
	logFieldPriority  = "rule_priority"
	logFieldPrefixes  = "prefixes"
	logFieldPrefix    = "prefix"
	logFieldAddr      = "addr"
	logFieldSysctl    = "sysctl"
	logFieldOld       = "old"
	logFieldNew       = "new"
	logFieldIPv6      = "ipv6"
	logFieldIfaces    = "ifaces"
)

// RouteConfig says what SetupRoutes installs.
type RouteConfig struct {
	TUN       string         // the TUN device name (already created and owned by this process)
	RealIface string         // interface facing the real servers
	Prefixes  []netip.Prefix // VIPs and recovery addresses (/32, /128), routed into the TUN in the main table
	Table     int            // policy routing table for packets arriving on RealIface (DefaultRouteTable if 0)
	Priority  int            // ip rule priority (DefaultRulePriority if 0)
	MTU       int            // TUN MTU; 0 = auto: the smallest MTU of the other up, non-loopback links in the namespace
}

// SetupRoutes installs the host plumbing of DESIGN.md section 4 ("Host
// plumbing") in the network namespace of the calling thread (a caller inside a
// namespace must hold runtime.LockOSThread): the TUN's MTU and up state, the
// sysctls forwarding needs, a main-table route into the TUN for each prefix, and
// policy routing that sends every packet arriving on RealIface, except those
// addressed to the director itself, into the TUN. IPv4 is always set up; IPv6
// (its forwarding, the TUN's IPv6, a default route and a rule of its own) only
// when a prefix is IPv6, and the TUN's IPv6 is disabled otherwise.
//
// It returns undo, which removes the routes and the rule and writes back every
// sysctl SetupRoutes changed, in reverse order. Routes and rules already gone
// (the TUN closed and the kernel dropped its routes with it) are not errors.
// undo returns the joined errors of the steps that failed; calling it again
// retries only those, and after a fully successful call it does nothing.
// undo leaves the TUN's MTU, multicast flag and up state alone: the TUN belongs
// to its owner.
//
// If SetupRoutes fails it rolls back what it had done and returns nil undo.
//
// A run killed with SIGKILL leaves its policy rule behind (rules name the
// interface and outlive it; routes through the TUN vanish with the TUN), and
// its sysctl values: the next run replaces the rule, but it records the
// leftover sysctl values as the "previous" ones, so its undo cannot restore
// the values from before the killed run.
func SetupRoutes(cfg RouteConfig, log zerolog.Logger) (undo func() error, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	realLink, err := lookupLink("--real-iface", cfg.RealIface)
	if err != nil {
		return nil, err
	}
	tun, err := lookupLink("TUN", cfg.TUN)
	if err != nil {
		return nil, err
	}
	if realLink.Attrs().Flags&net.FlagUp == 0 {
		log.Warn().Str(logFieldRealIface, cfg.RealIface).Msg("real-server interface is down")
	}

	td := &teardown{}
	defer func() {
		if err != nil {
			if rerr := td.run(); rerr != nil {
				err = errors.Join(err, fmt.Errorf("roll back: %w", rerr))
			}
		}
	}()

	// 2. MTU. The TUN's MTU is the smallest MTU of the links it forwards
	// between, so the kernel itself sends "fragmentation needed" (with the
	// header the sender knows) before a packet enters the TUN, and path-MTU
	// discovery works without the NAT translating the kernel's own errors.
	mtu, mtuFrom := cfg.MTU, "configured"
	if mtu == 0 {
		mtu, mtuFrom, err = autoMTU(tun.Attrs().Index)
		if err != nil {
			return nil, err
		}
	}
	if mtu < MinTUNMTU {
		return nil, fmt.Errorf("TUN MTU %d (%s) is below the IPv4 minimum of %d", mtu, mtuFrom, MinTUNMTU)
	}
	ipv6 := hasIPv6(cfg.Prefixes)
	if ipv6 && mtu < MinTUNMTU6 {
		return nil, fmt.Errorf("TUN MTU %d (%s) is below the IPv6 minimum of %d (an IPv6 VIP or recovery address is routed into the TUN)", mtu, mtuFrom, MinTUNMTU6)
	}
	if err := netlink.LinkSetMTU(tun, mtu); err != nil {
		return nil, fmt.Errorf("set MTU %d on %s: %w", mtu, cfg.TUN, err)
	}
	// 3. Sysctls, before the TUN comes up: its IPv6 (on or off, and without
	// a link-local address) must be settled before the kernel starts it.
	for _, s := range routeSysctls(cfg.TUN, cfg.RealIface, ipv6) {
		changed, err := setSysctl(s, td, log)
		if err != nil {
			return nil, err
		}
		if changed && s.name == ipv6ForwardingSysctl {
			warnAcceptRA(cfg.TUN, log)
		}
	}
	// A deeper queue toward the TUN: the kernel drops what does not fit
	// while the packet loop is busy (bursts of small packets, a recovery
	// storm); 500, the TUN default, holds well under a millisecond of them.
	if tun.Attrs().TxQLen < tunTxQueueLen {
		if err := netlink.LinkSetTxQLen(tun, tunTxQueueLen); err != nil {
			return nil, fmt.Errorf("set txqueuelen %d on %s: %w", tunTxQueueLen, cfg.TUN, err)
		}
	}
	// No multicast on the TUN with IPv6 on it: the kernel would send MLD
	// reports (from ::, for ff02::2 and the like, once forwarding is on)
	// into the packet loop when it comes up. The NAT serves unicast only,
	// and a layer-3 TUN has no neighbours to discover.
	if ipv6 && tun.Attrs().Flags&net.FlagMulticast != 0 {
		if err := netlink.LinkSetMulticastOff(tun); err != nil {
			return nil, fmt.Errorf("turn multicast off on %s: %w", cfg.TUN, err)
		}
	}
	if err := netlink.LinkSetUp(tun); err != nil {
		return nil, fmt.Errorf("bring up %s: %w", cfg.TUN, err)
	}

	// 4. Main table: each VIP and recovery address goes into the TUN.
	tunIndex := tun.Attrs().Index
	for _, p := range cfg.Prefixes {
		r := &netlink.Route{
			LinkIndex: tunIndex,
			Dst:       ipNet(p),
			Scope:     routeScope(p.Addr()),
		}
		if err := netlink.RouteReplace(r); err != nil {
			return nil, fmt.Errorf("route %s dev %s: %w", p, cfg.TUN, err)
		}
		td.add(fmt.Sprintf("delete route %s dev %s", p, cfg.TUN), func() error {
			return ignoreGone(netlink.RouteDel(r))
		})
	}
	warnLocalPrefixes(cfg.Prefixes, log)

	// 5. Policy routing: whatever arrives from the real servers (replies to
	// clients, replies to recovery handshakes) is routed into the TUN, where the
	// NAT translates it back. IPv6 has rules and tables of its own (ip -6).
	families := []int{netlink.FAMILY_V4}
	if ipv6 {
		families = append(families, netlink.FAMILY_V6)
	}
	// A killed run left its rules behind (rules match the interface by name and
	// outlive the TUN), maybe at another priority, maybe of a family this run
	// does not serve: remove every rule steering RealIface into our table, so
	// each rule below exists exactly once and none is left of the other.
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		if err := deleteRules(fam, cfg.RealIface, cfg.Table, log); err != nil {
			return nil, err
		}
	}
	for _, fam := range families {
		ip := familyName(fam)
		def := &netlink.Route{
			LinkIndex: tunIndex,
			Dst:       defaultDst(fam),
			Table:     cfg.Table,
			Scope:     familyScope(fam),
		}
		if err := netlink.RouteReplace(def); err != nil {
			return nil, fmt.Errorf("%s route default dev %s table %d: %w", ip, cfg.TUN, cfg.Table, err)
		}
		td.add(fmt.Sprintf("delete %s route default dev %s table %d", ip, cfg.TUN, cfg.Table), func() error {
			return ignoreGone(netlink.RouteDel(def))
		})

		// The kernel evaluates its "lookup local" rule at priority 0 before
		// this one, so packets addressed to the director itself that arrive
		// on RealIface (health-check replies, management traffic, and for
		// IPv6 neighbour discovery: the local table holds the multicast
		// and link-local routes) are still delivered locally; only
		// forwarded traffic is sent into the TUN.
		rule := netlink.NewRule()
		rule.Family = fam
		rule.IifName = cfg.RealIface
		rule.Table = cfg.Table
		rule.Priority = cfg.Priority
		if err := netlink.RuleAdd(rule); err != nil {
			return nil, fmt.Errorf("%s rule iif %s lookup %d priority %d: %w", ip, cfg.RealIface, cfg.Table, cfg.Priority, err)
		}
		td.add(fmt.Sprintf("delete %s rule iif %s lookup %d priority %d", ip, cfg.RealIface, cfg.Table, cfg.Priority), func() error {
			return ignoreGone(netlink.RuleDel(rule))
		})
	}

	// 6. Summary.
	prefixes := make([]string, len(cfg.Prefixes))
	for i, p := range cfg.Prefixes {
		prefixes[i] = p.String()
	}
	log.Info().
		Str(logFieldTUN, cfg.TUN).
		Int(logFieldMTU, mtu).
		Str(logFieldMTUFrom, mtuFrom).
		Str(logFieldRealIface, cfg.RealIface).
		Int(logFieldTable, cfg.Table).
		Int(logFieldPriority, cfg.Priority).
		Bool(logFieldIPv6, ipv6).
		Strs(logFieldPrefixes, prefixes).
		Msg("host routes installed")

	return td.run, nil
}

// LinkMTU returns the MTU of the interface called name in the network
// namespace of the calling thread.
func LinkMTU(name string) (int, error) {
	l, err := lookupLink("interface", name)
	if err != nil {
		return 0, err
	}
	return l.Attrs().MTU, nil
}

// withDefaults fills in the defaults and checks cfg. It returns a copy whose
// prefixes are deduplicated.
func (cfg RouteConfig) withDefaults() (RouteConfig, error) {
	if cfg.TUN == "" {
		return cfg, errors.New("no TUN device name")
	}
	if cfg.RealIface == "" {
		return cfg, errors.New("--real-iface: no interface name")
	}
	if cfg.RealIface == cfg.TUN {
		return cfg, fmt.Errorf("--real-iface %q: is the TUN itself", cfg.RealIface)
	}
	if cfg.Table == 0 {
		cfg.Table = DefaultRouteTable
	}
	// 253, 254 and 255 are the kernel's default, main and local tables.
	if cfg.Table < 0 || (cfg.Table >= 253 && cfg.Table <= 255) || int64(cfg.Table) > 1<<32-1 {
		return cfg, fmt.Errorf("routing table %d: want 1-252 or 256-4294967295 (253-255 are the kernel's default, main and local tables)", cfg.Table)
	}
	if cfg.Priority == 0 {
		cfg.Priority = DefaultRulePriority
	}
	if cfg.Priority < 0 || cfg.Priority >= mainRulePriority {
		return cfg, fmt.Errorf("rule priority %d: want 1-%d, before the kernel's main-table rule", cfg.Priority, mainRulePriority-1)
	}
	if cfg.MTU < 0 {
		return cfg, fmt.Errorf("TUN MTU %d: want 0 (auto) or at least %d", cfg.MTU, MinTUNMTU)
	}
	prefixes := make([]netip.Prefix, 0, len(cfg.Prefixes))
	for _, p := range cfg.Prefixes {
		switch {
		case !p.IsValid():
			return cfg, fmt.Errorf("prefix %q: invalid", p)
		case p.Addr().Zone() != "" || p.Addr().Is4In6():
			return cfg, fmt.Errorf("prefix %s: expected an IPv4 or IPv6 prefix without a zone, not IPv4-mapped", p)
		case p.Masked() != p:
			return cfg, fmt.Errorf("prefix %s: host bits set (the prefix is %s)", p, p.Masked())
		}
		if !slices.Contains(prefixes, p) {
			prefixes = append(prefixes, p)
		}
	}
	cfg.Prefixes = prefixes
	return cfg, nil
}

// lookupLink finds an interface by name; what names it in the error (a flag or
// a role).
func lookupLink(what, name string) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil, fmt.Errorf("%s %q: no such interface in this network namespace", what, name)
	}
	if err != nil {
		return nil, fmt.Errorf("look up %s %q: %w", what, name, err)
	}
	return l, nil
}

// autoMTU returns the smallest MTU of the up, non-loopback links other than
// the TUN, and the name of the link it came from.
func autoMTU(tunIndex int) (int, string, error) {
	links, err := retryDump(netlink.LinkList)
	if err != nil {
		return 0, "", fmt.Errorf("auto MTU: list links: %w", err)
	}
	mtu, from := 0, ""
	for _, l := range links {
		a := l.Attrs()
		if a.Index == tunIndex || a.Flags&net.FlagLoopback != 0 || a.Flags&net.FlagUp == 0 {
			continue
		}
		if mtu == 0 || a.MTU < mtu {
			mtu, from = a.MTU, a.Name
		}
	}
	if mtu == 0 {
		return 0, "", errors.New("auto MTU: no other up, non-loopback interface in this network namespace; set the MTU explicitly")
	}
	return mtu, "smallest up link " + from, nil
}

// sysctl is one /proc/sys file to set.
type sysctl struct {
	name  string // dotted, for messages: net.ipv4.conf.hf0.rp_filter
	path  string
	value string
	// optional: a missing file is skipped (IPv6 absent from the kernel).
	optional bool
}

// newSysctl builds a sysctl from path components. Components are not split on
// dots, so interface names with dots (VLANs: eth0.100) are kept whole.
func newSysctl(value string, optional bool, parts ...string) sysctl {
	return sysctl{
		name:     strings.Join(parts, "."),
		path:     filepath.Join(append([]string{"/proc/sys"}, parts...)...),
		value:    value,
		optional: optional,
	}
}

// ipv6ForwardingSysctl is the sysctl that turns IPv6 forwarding on; see
// warnAcceptRA.
const ipv6ForwardingSysctl = "net.ipv6.conf.all.forwarding"

// routeSysctls lists the sysctls SetupRoutes sets, in order, with IPv6's if
// ipv6. See https://docs.kernel.org/networking/ip-sysctl.html for each.
func routeSysctls(tun, realIface string, ipv6 bool) []sysctl {
	v6 := []sysctl{
		// holdfast serves no IPv6 here; IPv6 on the TUN would only bring
		// router solicitations and link-local chatter into the NAT.
		newSysctl("1", true, "net", "ipv6", "conf", tun, "disable_ipv6"),
	}
	if ipv6 {
		v6 = []sysctl{
			// Not optional: an IPv6 VIP needs the kernel's IPv6. Writing
			// conf.all sets every interface's forwarding (and undo's
			// write of the old value does too).
			newSysctl("1", false, "net", "ipv6", "conf", "all", "forwarding"),
			// No link-local address on the TUN (addr_gen_mode 1: none),
			// set before IPv6 is on: the kernel then sends no ICMPv6
			// redirect for a packet the NAT writes into the TUN that
			// routes back into it (a redirect needs a link-local
			// source, RFC 4861 8.2; IPv6 has no send_redirects), and
			// joins no solicited-node group there. Optional: kernels
			// before 4.11 have no such file.
			newSysctl("1", true, "net", "ipv6", "conf", tun, "addr_gen_mode"),
			// The TUN carries IPv6 (the default may have it off).
			newSysctl("0", false, "net", "ipv6", "conf", tun, "disable_ipv6"),
		}
		// IPv6 has no rp_filter (reverse-path filtering is netfilter's
		// rpfilter match there, which holdfast leaves to the operator).
	}
	v4 := []sysctl{
		newSysctl("1", false, "net", "ipv4", "ip_forward"),
		// Reverse-path filtering would drop traffic holdfast forwards
		// asymmetrically: packets the NAT writes into the TUN carry client
		// sources, which the main table reaches through another interface; on
		// RealIface, packets whose source the main table routes elsewhere (an
		// ICMP error from a router between the director and the reals). The
		// kernel uses max(conf.all, conf.<dev>), so each must be 0.
		newSysctl("0", false, "net", "ipv4", "conf", "all", "rp_filter"),
		newSysctl("0", false, "net", "ipv4", "conf", tun, "rp_filter"),
		newSysctl("0", false, "net", "ipv4", "conf", realIface, "rp_filter"),
	}
	return append(append(v4, v6...),
		// A packet the NAT writes into the TUN that routes back into the TUN
		// would make the kernel send the "sender" an ICMP redirect. The kernel
		// ORs conf.all and conf.<dev> for send_redirects, so both must be 0.
		newSysctl("0", false, "net", "ipv4", "conf", tun, "send_redirects"),
		newSysctl("0", false, "net", "ipv4", "conf", "all", "send_redirects"),
	)
}

// warnAcceptRA says, once IPv6 forwarding was turned on, which interfaces
// stop accepting router advertisements: with forwarding on the kernel
// ignores them where accept_ra is 1, so an uplink configured by SLAAC or
// whose default route comes from RAs loses it when the route expires. Set
// accept_ra=2 there (accept them even when forwarding).
func warnAcceptRA(tun string, log zerolog.Logger) {
	paths, err := filepath.Glob("/proc/sys/net/ipv6/conf/*/accept_ra")
	if err != nil {
		return
	}
	var ifaces []string
	for _, p := range paths {
		name := filepath.Base(filepath.Dir(p))
		if name == "all" || name == "default" || name == "lo" || name == tun {
			continue
		}
		if v, err := readSysctl(p); err == nil && v == "1" {
			ifaces = append(ifaces, name)
		}
	}
	if len(ifaces) == 0 {
		return
	}
	log.Warn().Strs(logFieldIfaces, ifaces).
		Msg("net.ipv6.conf.all.forwarding=1: these interfaces (accept_ra=1) no longer accept router advertisements; set net.ipv6.conf.IFACE.accept_ra=2 on an uplink that needs them")
}

// hasIPv6 reports whether a prefix is IPv6.
func hasIPv6(prefixes []netip.Prefix) bool {
	for _, p := range prefixes {
		if p.Addr().Is6() {
			return true
		}
	}
	return false
}

// routeScope is the scope of a route into the TUN: link for IPv4 (no
// gateway); IPv6 routes have no scope (the kernel reports universe for
// every one, and matches a replace or delete by it).
func routeScope(a netip.Addr) netlink.Scope {
	if a.Is4() {
		return familyScope(netlink.FAMILY_V4)
	}
	return familyScope(netlink.FAMILY_V6)
}

func familyScope(fam int) netlink.Scope {
	if fam == netlink.FAMILY_V6 {
		return netlink.SCOPE_UNIVERSE
	}
	return netlink.SCOPE_LINK
}

// defaultDst is the default route's destination of a family.
func defaultDst(fam int) *net.IPNet {
	if fam == netlink.FAMILY_V6 {
		return &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
}

// familyName names a family in messages, as ip(8) -4/-6 would.
func familyName(fam int) string {
	if fam == netlink.FAMILY_V6 {
		return "IPv6"
	}
	return "IPv4"
}

// setSysctl writes s if it differs from the current value, records the old
// value in td, and reports whether it wrote.
func setSysctl(s sysctl, td *teardown, log zerolog.Logger) (bool, error) {
	old, err := readSysctl(s.path)
	if s.optional && errors.Is(err, os.ErrNotExist) {
		log.Debug().Str(logFieldSysctl, s.name).Msg("sysctl absent, skipped")
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read sysctl %s: %w", s.name, err)
	}
	if old == s.value {
		return false, nil
	}
	if err := writeSysctl(s.path, s.value); err != nil {
		return false, fmt.Errorf("set sysctl %s=%s: %w", s.name, s.value, err)
	}
	log.Debug().Str(logFieldSysctl, s.name).Str(logFieldOld, old).Str(logFieldNew, s.value).Msg("sysctl set")
	td.add(fmt.Sprintf("restore sysctl %s=%s", s.name, old), func() error {
		err := writeSysctl(s.path, old)
		// The interface went away, and its settings with it.
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	})
	return true, nil
}

func readSysctl(path string) (string, error) {
	b, err := os.ReadFile(path)
	return strings.TrimSpace(string(b)), err
}

func writeSysctl(path, value string) error {
	// No O_CREATE: a missing file must fail with ENOENT, not try to create.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// deleteRules removes every rule of family fam that sends packets arriving on
// iif to table, whatever its priority.
func deleteRules(fam int, iif string, table int, log zerolog.Logger) error {
	rules, err := retryDump(func() ([]netlink.Rule, error) { return netlink.RuleList(fam) })
	if fam == netlink.FAMILY_V6 && errors.Is(err, syscall.EAFNOSUPPORT) {
		return nil // no IPv6 in this kernel: no IPv6 rule left either
	}
	if err != nil {
		return fmt.Errorf("list %s rules: %w", familyName(fam), err)
	}
	for _, r := range rules {
		if r.IifName != iif || r.Table != table {
			continue
		}
		if err := ignoreGone(netlink.RuleDel(&r)); err != nil {
			return fmt.Errorf("delete leftover %s rule iif %s lookup %d priority %d: %w", familyName(fam), iif, table, r.Priority, err)
		}
		log.Warn().
			Bool(logFieldIPv6, fam == netlink.FAMILY_V6).
			Str(logFieldRealIface, iif).
			Int(logFieldTable, table).
			Int(logFieldPriority, r.Priority).
			Msg("removed a leftover policy rule (an earlier run did not clean up)")
	}
	return nil
}

// warnLocalPrefixes warns about prefixes holding one of the director's own
// addresses: the kernel's local table is consulted first and delivers those to
// the director itself, so they never reach the TUN (a VRRP daemon assigning the
// VIP to an interface does this).
func warnLocalPrefixes(prefixes []netip.Prefix, log zerolog.Logger) {
	if len(prefixes) == 0 {
		return
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		log.Debug().Err(err).Msg("list addresses to check the prefixes against")
		return
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		for _, p := range prefixes {
			if p.Contains(ip) {
				log.Warn().Str(logFieldPrefix, p.String()).Str(logFieldAddr, ip.String()).
					Msg("prefix holds a local address: the kernel delivers it to the director itself, not into the TUN")
			}
		}
	}
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// ignoreGone treats "already gone" as success: no such route (ESRCH), no such
// rule (ENOENT), no such device (ENODEV, the TUN closed).
func ignoreGone(err error) error {
	if errors.Is(err, syscall.ESRCH) || errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ENODEV) {
		return nil
	}
	return err
}

// retryDump retries a netlink dump the kernel interrupted because the list
// changed while it was read.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	var (
		v   []T
		err error
	)
	for range 5 {
		v, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return v, err
}

// teardown is the undo list of SetupRoutes. run may be called from any
// goroutine, more than once; each call runs, in reverse order, the steps that
// have not yet succeeded.
type teardown struct {
	mu    sync.Mutex
	steps []teardownStep
}

type teardownStep struct {
	what string
	fn   func() error
}

func (td *teardown) add(what string, fn func() error) {
	td.mu.Lock()
	defer td.mu.Unlock()
	td.steps = append(td.steps, teardownStep{what, fn})
}

func (td *teardown) run() error {
	td.mu.Lock()
	defer td.mu.Unlock()
	var (
		errs   []error
		failed []teardownStep
	)
	for i := len(td.steps) - 1; i >= 0; i-- {
		s := td.steps[i]
		if err := s.fn(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s.what, err))
			failed = append(failed, s)
		}
	}
	slices.Reverse(failed)
	td.steps = failed
	return errors.Join(errs...)
}
