package lab

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
)

// Addresses of the topology. All of them are in 198.18.0.0/15; ipv6.go has
// their IPv6 twins.
var (
	// ClientAddr is the client's address on its link to the router (/24).
	ClientAddr = netip.MustParseAddr("198.18.1.2")
	// ClientGateway is the router's address on the client link.
	ClientGateway = netip.MustParseAddr("198.18.1.1")
	// ClientPrefix is the client link.
	ClientPrefix = netip.MustParsePrefix("198.18.1.0/24")

	// VIP is the first virtual IP; the router sends all of VIPPrefix to the
	// active director (in a BGP lab, each VIP's /32 the director announces). VIPs are never assigned to an interface.
	VIP       = netip.MustParseAddr("198.18.100.1")
	VIPPrefix = netip.MustParsePrefix("198.18.100.0/24")

	// RecoveryPrefix holds the directors' recovery addresses (DESIGN.md
	// section 2). The lab routes nothing to it: the reals reach it through
	// their default route, which points at the active director (in a BGP
	// lab, at the real-side router, which learned it from the directors).
	RecoveryPrefix = netip.MustParsePrefix("198.18.200.0/24")
	// RecoveryAddr is the recovery address the directors of a lab share
	// (an ECMP lab gives each its own: RecoveryAddrOf).
	RecoveryAddr = netip.MustParseAddr("198.18.200.1")

	// RealPrefix is the real-server segment (the bridge in the switch ns).
	RealPrefix = netip.MustParsePrefix("198.18.10.0/24")

	// A lab with Options.RealHopMTU puts the reals behind two routers: the
	// directors' segment RealPrefix holds HopNear (namespace "hop1"), joined
	// by the hop link HopPrefix (HopNear's end .1, HopFar's .2) to the far
	// router (namespace "hop2"), whose bridge is RealHopPrefix, with the
	// reals' gateway RealHopGateway.
	HopNear        = netip.MustParseAddr("198.18.10.254")
	HopPrefix      = netip.MustParsePrefix("198.18.9.0/24")
	RealHopPrefix  = netip.MustParsePrefix("198.18.11.0/24")
	RealHopGateway = netip.MustParseAddr("198.18.11.1")
)

// Interface names. Each lives in its own namespace, so they repeat freely.
const (
	ClientIface     = "up0"  // client: link to the router
	DirectorUplink  = "up0"  // director: link to the router
	DirectorRSIface = "rs0"  // director: port on the real-server segment
	RealIface       = "eth0" // real server: port on the real-server segment
	BridgeName      = "br0"  // switch: the real-server segment
)

// Ports the backends listen on by default (ServeBackends).
const (
	DefaultHTTPPort = 80
	DefaultUDPPort  = 5353
)

// MaxReals is the largest Options.Reals: reals use 198.18.10.11 upwards
// (198.18.11.11 with Options.RealHopMTU).
const MaxReals = 100

// Options shape a Lab. The zero value is one director, three reals, MTU 1500,
// IPv4 only.
type Options struct {
	// Prefix starts the name of every namespace the lab creates. Empty means
	// "hf<pid>-<n>-", unique per build in this process, which SweepStale
	// recognises once the process is gone.
	Prefix string
	// Directors is 1 or 2 (0 means 1); 3 with ECMP.
	Directors int
	// Reals is the number of real servers, 1..MaxReals (0 means 3).
	Reals int
	// DirectorLinkMTU is the MTU of the router-director links, both ends
	// (0 means 1500). Client and reals always use 1500.
	DirectorLinkMTU int
	// VRRP replaces the routes Flip moves by keepalived (see vrrp.go): the
	// router and the directors share one uplink segment (UplinkPrefix, a
	// bridge in the router namespace), the router sends VIPPrefix via the
	// floating VRRPNextHop and the reals use the floating VRRPGateway, and
	// keepalived in each director namespace moves both addresses to the
	// director whose holdfast runs. Needs keepalived(8) installed.
	VRRP bool
	// IPv6 makes the lab dual-stack: every link also gets the IPv6 mirror
	// of its IPv4 address (Mirror6: ClientAddr6, VIPPrefix6, Real.Addr6 and
	// so on, all in 2001:2::/48), without duplicate address detection, and
	// every route of the IPv4 plan has its IPv6 twin (Flip moves both).
	// The backends listen on both addresses. Not with VRRP: keepalived
	// would need a VRRPv3 instance per family, which the lab does not
	// build.
	IPv6 bool
	// RealLinkMTU is the MTU of the real-server segment: the reals' and
	// the directors' ports and the bridge (0 means 1500).
	RealLinkMTU int
	// RealHopMTU, if not 0, puts the reals behind two routers joined by a
	// link of this MTU that neither the directors nor the reals sit on
	// (HopNear, HopPrefix, RealHopPrefix): a packet a director sends
	// towards a real that is too big for the hop draws the near router's
	// ICMP "fragmentation needed" or ICMPv6 Packet Too Big, addressed to
	// the packet's source, the client, and routed back through the
	// director. Every other link stays at 1500. Not with VRRP.
	RealHopMTU int
	// BGP replaces the routes Flip moves by BGP (see bgp.go): a client-side
	// router (the Router namespace) and a real-side router (RealRouter, on
	// the reals' segment, their default gateway) run BIRD 2, and the
	// directors' holdfast (HoldfastArgs adds the --bgp-* flags) announce
	// the VIPs to the one, the recovery address and 0.0.0.0/0 to the
	// other, A with MED 10, B with 20. Each director's uplink is then
	// 198.18.1N.0/24 (N its ID). With IPv6 the lab is dual-stack here too:
	// every director has an IPv6 session with each router as well (the
	// mirrors of the IPv4 peering addresses), over which it announces VIP6
	// and its IPv6 recovery address and ::/0 (bgp.go). Not with VRRP or
	// RealHopMTU. Needs bird(8) and birdc(8) installed.
	BGP bool
	// ECMP makes a BGP lab active-active (see ecmp.go, issue 17): every
	// director announces with the same MED (ECMPMED), both routers merge
	// the equal routes into one multipath route hashed on L4
	// (fib_multipath_hash_policy=1, ignore_routes_with_linkdown=1), and
	// each director has its own recovery address (RecoveryAddrOf) instead
	// of the shared RecoveryAddr. Needs BGP; allows Directors 3.
	ECMP bool
}

// Lab is a built topology. Its fields are set by New and read-only after;
// methods are safe for concurrent use.
type Lab struct {
	Prefix string
	Client *NS
	Router *NS // the client-side router
	Switch *NS
	// RealRouter is the real-side router of a BGP lab (Options.BGP); nil
	// otherwise.
	RealRouter *NS
	Directors  []*Director // A, then B and C as Options.Directors says
	Reals      []*Real     // rs1..rsN

	mu         sync.Mutex
	closed     bool
	namespaces []*NS  // created ones, in creation order
	ipv6       bool   // Options.IPv6
	hop        [2]*NS // Options.RealHopMTU: the near and the far router
	procs      []*Proc
	closers    []func() error // backends, closed before the namespaces go
	active     int
	ecmp       bool       // Options.ECMP
	vrrp       *vrrpState // nil unless Options.VRRP
	bgp        *bgpState  // nil unless Options.BGP
}

// Director is a director's namespace and its addresses.
type Director struct {
	*NS
	Label       string       // "A", "B" or "C"
	ID          int          // 1 for A, 2 for B, 3 for C: holdfast --director-id
	Uplink      netip.Prefix // its address on the router link, e.g. 198.18.2.2/24 (VRRP: on the shared uplink segment)
	RouterAddr  netip.Addr   // the router's end of that link (or segment), its default gateway
	RSAddr      netip.Prefix // its address on the real-server segment, e.g. 198.18.10.2/24
	UplinkIface string       // DirectorUplink
	RSIface     string       // DirectorRSIface: pass it to `holdfast run --real-iface`
	// BGPAddr is its address on BGPRealPeerPrefix, on the reals' segment,
	// from which it peers with the real-side router (Options.BGP; else
	// invalid).
	BGPAddr netip.Prefix

	// IPv6 twins of Uplink, RouterAddr and RSAddr (Options.IPv6; else invalid).
	Uplink6     netip.Prefix
	RouterAddr6 netip.Addr
	RSAddr6     netip.Prefix
	// BGPAddr6 is BGPAddr's IPv6 twin on BGPRealPeerPrefix6, from which it
	// peers with the real-side router over IPv6 (Options.BGP with
	// Options.IPv6; else invalid).
	BGPAddr6 netip.Prefix
}

// Real is a real server's namespace, address and backend counters.
type Real struct {
	*NS
	Label string     // "rs1", "rs2", ...
	Addr  netip.Addr // 198.18.10.11, .12, ...
	Addr6 netip.Addr // 2001:2:0:10::11, ... (Options.IPv6; else invalid)
	Stats Counters   // traffic its backends served
}

// Addrs are the real's addresses: Addr, then Addr6 in a dual-stack lab.
func (r *Real) Addrs() []netip.Addr {
	if r.Addr6.IsValid() {
		return []netip.Addr{r.Addr, r.Addr6}
	}
	return []netip.Addr{r.Addr}
}

var builds atomic.Int64

// stalePrefix matches default prefixes; group 1 is the pid that made them.
var stalePrefix = regexp.MustCompile(`^hf([0-9]+)-[0-9]+-`)

var validPrefix = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$`)

// New builds the topology. On error everything created so far is removed.
func New(opts Options) (_ *Lab, err error) {
	if opts.Directors == 0 {
		opts.Directors = 1
	}
	if opts.Reals == 0 {
		opts.Reals = 3
	}
	if opts.DirectorLinkMTU == 0 {
		opts.DirectorLinkMTU = 1500
	}
	if opts.Prefix == "" {
		opts.Prefix = fmt.Sprintf("hf%d-%d-", os.Getpid(), builds.Add(1))
	}
	switch {
	case opts.ECMP && !opts.BGP:
		return nil, errors.New("lab: ECMP without BGP: the routers learn the equal routes from the directors' announcements")
	case opts.ECMP && (opts.Directors < 1 || opts.Directors > 3):
		return nil, fmt.Errorf("lab: Directors = %d, want 1..3", opts.Directors)
	case !opts.ECMP && opts.Directors != 1 && opts.Directors != 2:
		return nil, fmt.Errorf("lab: Directors = %d, want 1 or 2 (3 with ECMP)", opts.Directors)
	case opts.Reals < 1 || opts.Reals > MaxReals:
		return nil, fmt.Errorf("lab: Reals = %d, want 1..%d", opts.Reals, MaxReals)
	case opts.DirectorLinkMTU < 576 || opts.DirectorLinkMTU > 1500:
		// 576: the IPv4 minimum any host must accept; 1500: what client and
		// reals use, so a larger link would never be the bottleneck.
		return nil, fmt.Errorf("lab: DirectorLinkMTU = %d, want 576..1500", opts.DirectorLinkMTU)
	case opts.RealLinkMTU != 0 && (opts.RealLinkMTU < 1280 || opts.RealLinkMTU > 1500):
		// 1280: the IPv6 minimum, which a dual-stack segment needs.
		return nil, fmt.Errorf("lab: RealLinkMTU = %d, want 1280..1500", opts.RealLinkMTU)
	case opts.RealHopMTU != 0 && (opts.RealHopMTU < 1280 || opts.RealHopMTU > 1500):
		return nil, fmt.Errorf("lab: RealHopMTU = %d, want 1280..1500", opts.RealHopMTU)
	case opts.VRRP && (opts.IPv6 || opts.RealHopMTU != 0):
		return nil, errors.New("lab: VRRP with IPv6 or RealHopMTU: the VRRP lab is IPv4 only, with the reals on the directors' segment")
	case opts.BGP && (opts.VRRP || opts.RealHopMTU != 0):
		return nil, errors.New("lab: BGP with VRRP or RealHopMTU: the BGP lab has the reals on the directors' segment, and BGP moves the routes")
	case !validPrefix.MatchString(opts.Prefix):
		return nil, fmt.Errorf("lab: Prefix %q, want 1-40 characters of [A-Za-z0-9_.-]", opts.Prefix)
	}

	// The directors' admin sockets go there.
	if _, err := EnsureRuntimeDir(); err != nil {
		return nil, err
	}
	if opts.RealLinkMTU == 0 {
		opts.RealLinkMTU = 1500
	}
	l := &Lab{Prefix: opts.Prefix, ipv6: opts.IPv6, ecmp: opts.ECMP}
	defer func() {
		if err != nil {
			if cerr := l.Close(); cerr != nil {
				err = fmt.Errorf("%w (and cleaning up: %v)", err, cerr)
			}
		}
	}()

	if l.Client, err = l.addNS("client"); err != nil {
		return nil, err
	}
	if l.Router, err = l.addNS("router"); err != nil {
		return nil, err
	}
	if l.Switch, err = l.addNS("switch"); err != nil {
		return nil, err
	}
	if opts.BGP {
		if l.RealRouter, err = l.addNS("rrouter"); err != nil {
			return nil, err
		}
	}
	if opts.RealHopMTU != 0 {
		for i, role := range []string{"hop1", "hop2"} {
			if l.hop[i], err = l.addNS(role); err != nil {
				return nil, err
			}
		}
	}
	for i := range opts.Directors {
		label := string(rune('A' + i))
		ns, err := l.addNS("dir" + label)
		if err != nil {
			return nil, err
		}
		d := directorPlan(i, opts)
		d.NS = ns
		l.Directors = append(l.Directors, d)
	}
	for i := range opts.Reals {
		label := "rs" + strconv.Itoa(i+1)
		ns, err := l.addNS(label)
		if err != nil {
			return nil, err
		}
		r := &Real{
			NS:    ns,
			Label: label,
			Addr:  netip.AddrFrom4([4]byte{198, 18, 10, byte(11 + i)}),
		}
		if opts.RealHopMTU != 0 {
			r.Addr = netip.AddrFrom4([4]byte{198, 18, 11, byte(11 + i)})
		}
		if opts.IPv6 {
			r.Addr6 = Mirror6(r.Addr)
		}
		l.Reals = append(l.Reals, r)
	}

	if err := l.wire(opts); err != nil {
		return nil, err
	}
	if opts.VRRP {
		if err := l.startVRRP(); err != nil {
			return nil, err
		}
	}
	if opts.BGP {
		if err := l.startBGP(); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// directorPlan is Directors[i]'s label, ID and addresses (no namespace).
func directorPlan(i int, opts Options) *Director {
	// A point-to-point link per director: 198.18.2.2, 198.18.3.2; with
	// VRRP one segment: 198.18.2.2, 198.18.2.3 (BGP: bgpAddrs).
	uplink := [4]byte{198, 18, byte(2 + i), 2}
	if opts.VRRP {
		uplink = [4]byte{198, 18, 2, byte(2 + i)}
	}
	d := &Director{
		Label:       string(rune('A' + i)),
		ID:          i + 1,
		Uplink:      netip.PrefixFrom(netip.AddrFrom4(uplink), 24),
		RouterAddr:  netip.AddrFrom4([4]byte{198, 18, uplink[2], 1}),
		RSAddr:      netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 10, byte(2 + i)}), 24),
		UplinkIface: DirectorUplink,
		RSIface:     DirectorRSIface,
	}
	if opts.BGP {
		bgpAddrs(d)
	}
	// The IPv6 plan mirrors the IPv4 one as it ends up, a BGP lab's
	// uplinks 198.18.1N.0/24 included.
	if opts.IPv6 {
		d.Uplink6, d.RouterAddr6, d.RSAddr6 = mirror6(d.Uplink), Mirror6(d.RouterAddr), mirror6(d.RSAddr)
		if opts.BGP {
			d.BGPAddr6 = mirror6(d.BGPAddr)
		}
	}
	return d
}

// addNS creates one namespace with lo up. An IPv4-only lab turns IPv6 off
// there (its link-local chatter would only add noise to captures); a
// dual-stack one turns duplicate address detection off, for the link-local
// addresses too (the global ones are added with nodad).
func (l *Lab) addNS(role string) (*NS, error) {
	n := &NS{Name: l.Prefix + role, Role: role, lab: l}
	if _, err := run("ip", "netns", "add", n.Name); err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.namespaces = append(l.namespaces, n)
	l.mu.Unlock()
	sysctls := [][2]string{
		{"net.ipv6.conf.all.disable_ipv6", "1"},
		{"net.ipv6.conf.default.disable_ipv6", "1"},
	}
	if l.ipv6 {
		sysctls = [][2]string{
			{"net.ipv6.conf.all.accept_dad", "0"},
			{"net.ipv6.conf.default.accept_dad", "0"},
		}
	}
	for _, kv := range sysctls {
		if err := n.SetSysctl(kv[0], kv[1]); err != nil {
			return nil, err
		}
	}
	if _, err := n.IP("link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	return n, nil
}

// wire creates the links, addresses and routes.
func (l *Lab) wire(opts Options) error {
	// With IPv6 the bridges forward multicast to every port: without an MLD
	// querier in the lab, snooping could keep a neighbour solicitation from
	// a port whose report it never saw.
	bridge := []string{"link", "add", BridgeName, "type", "bridge"}
	if l.ipv6 {
		bridge = append(bridge, "mcast_snooping", "0")
	}
	steps := []func() error{
		func() error { return veth(l.Client, ClientIface, l.Router, "cl0", 1500) },
		ipStep(l.Client, "addr", "add", netip.PrefixFrom(ClientAddr, 24).String(), "dev", ClientIface),
		ipStep(l.Router, "addr", "add", netip.PrefixFrom(ClientGateway, 24).String(), "dev", "cl0"),
		ipStep(l.Client, "route", "add", "default", "via", ClientGateway.String()),
		func() error { return l.Router.SetSysctl("net.ipv4.ip_forward", "1") },
		ipStep(l.Switch, bridge...),
		ipStep(l.Switch, "link", "set", BridgeName, "up"),
	}
	if l.ipv6 {
		steps = append(steps,
			ip6Step(l.Client, netip.PrefixFrom(ClientAddr6, 64), ClientIface),
			ip6Step(l.Router, netip.PrefixFrom(ClientGateway6, 64), "cl0"),
			ipStep(l.Client, "-6", "route", "add", "default", "via", ClientGateway6.String()),
			func() error { return l.Router.SetSysctl("net.ipv6.conf.all.forwarding", "1") },
		)
	}
	if opts.VRRP {
		steps = append(steps, l.vrrpUplinkSteps()...)
	}
	if l.hop[0] != nil {
		steps = append(steps, l.hopSteps(opts.RealHopMTU, bridge)...)
	}
	for _, d := range l.Directors {
		routerSide := "d" + d.Label + "0"
		steps = append(steps,
			func() error { return veth(d.NS, d.UplinkIface, l.Router, routerSide, opts.DirectorLinkMTU) },
			ipStep(d.NS, "addr", "add", d.Uplink.String(), "dev", d.UplinkIface),
		)
		if opts.VRRP {
			// A port of the shared uplink segment, which holds the router's address.
			steps = append(steps, ipStep(l.Router, "link", "set", routerSide, "master", UplinkBridgeName))
		} else {
			steps = append(steps, ipStep(l.Router, "addr", "add", netip.PrefixFrom(d.RouterAddr, 24).String(), "dev", routerSide))
		}
		steps = append(steps,
			func() error { return port(l.Switch, d.NS, d.RSIface, "dir"+d.Label, opts.RealLinkMTU) },
			ipStep(d.NS, "addr", "add", d.RSAddr.String(), "dev", d.RSIface),
			ipStep(d.NS, "route", "add", "default", "via", d.RouterAddr.String()),
		)
		if l.ipv6 {
			steps = append(steps,
				ip6Step(d.NS, d.Uplink6, d.UplinkIface),
				ip6Step(l.Router, netip.PrefixFrom(d.RouterAddr6, 64), routerSide),
				ip6Step(d.NS, d.RSAddr6, d.RSIface),
				ipStep(d.NS, "-6", "route", "add", "default", "via", d.RouterAddr6.String()),
			)
		}
		if l.hop[0] != nil {
			// The reals are not on the directors' segment: their prefix
			// is behind the near router.
			steps = append(steps, ipStep(d.NS, "route", "add", RealHopPrefix.String(), "via", HopNear.String(), "dev", d.RSIface))
			if l.ipv6 {
				steps = append(steps, ipStep(d.NS, "-6", "route", "add", Mirror6Prefix(RealHopPrefix).String(), "via", Mirror6(HopNear).String(), "dev", d.RSIface))
			}
		}
	}
	realSwitch := l.Switch
	if l.hop[0] != nil {
		realSwitch = l.hop[1]
	}
	for _, r := range l.Reals {
		steps = append(steps,
			func() error { return port(realSwitch, r.NS, RealIface, r.Label, opts.RealLinkMTU) },
			ipStep(r.NS, "addr", "add", netip.PrefixFrom(r.Addr, 24).String(), "dev", RealIface),
		)
		if l.ipv6 {
			steps = append(steps, ip6Step(r.NS, netip.PrefixFrom(r.Addr6, 64), RealIface))
		}
		if l.hop[0] != nil {
			// Their gateway is the far router, whatever director is active.
			steps = append(steps, ipStep(r.NS, "route", "add", "default", "via", RealHopGateway.String()))
			if l.ipv6 {
				steps = append(steps, ipStep(r.NS, "-6", "route", "add", "default", "via", Mirror6(RealHopGateway).String()))
			}
		}
	}
	if l.RealRouter != nil {
		steps = append(steps, l.bgpSteps(opts.RealLinkMTU)...)
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	switch {
	case opts.VRRP:
		return l.vrrpRoutes()
	case opts.BGP:
		return nil // BIRD installs the routers' routes; bgpSteps set the reals'
	}
	return l.Flip(0)
}

// hopSteps build the routers of Options.RealHopMTU: the near one (hop1) a
// port of the directors' segment, the far one (hop2) holding the reals'
// bridge, and the hop link of the given MTU between them.
func (l *Lab) hopSteps(mtu int, bridge []string) []func() error {
	near, far := l.hop[0], l.hop[1]
	nearHop := netip.PrefixFrom(HopPrefix.Addr().Next(), 24)
	farHop := netip.PrefixFrom(nearHop.Addr().Next(), 24)
	steps := []func() error{
		func() error { return port(l.Switch, near, RealIface, "hop1", 1500) },
		ipStep(near, "addr", "add", netip.PrefixFrom(HopNear, 24).String(), "dev", RealIface),
		func() error { return veth(near, "hop0", far, "hop0", mtu) },
		ipStep(near, "addr", "add", nearHop.String(), "dev", "hop0"),
		ipStep(far, "addr", "add", farHop.String(), "dev", "hop0"),
		ipStep(far, bridge...),
		ipStep(far, "link", "set", BridgeName, "up"),
		ipStep(far, "addr", "add", netip.PrefixFrom(RealHopGateway, 24).String(), "dev", BridgeName),
		ipStep(near, "route", "add", RealHopPrefix.String(), "via", farHop.Addr().String()),
		ipStep(far, "route", "add", "default", "via", nearHop.Addr().String()),
		func() error { return near.SetSysctl("net.ipv4.ip_forward", "1") },
		func() error { return far.SetSysctl("net.ipv4.ip_forward", "1") },
	}
	if l.ipv6 {
		steps = append(steps,
			ip6Step(near, netip.PrefixFrom(Mirror6(HopNear), 64), RealIface),
			ip6Step(near, mirror6(nearHop), "hop0"),
			ip6Step(far, mirror6(farHop), "hop0"),
			ip6Step(far, netip.PrefixFrom(Mirror6(RealHopGateway), 64), BridgeName),
			ipStep(near, "-6", "route", "add", Mirror6Prefix(RealHopPrefix).String(), "via", Mirror6(farHop.Addr()).String()),
			ipStep(far, "-6", "route", "add", "default", "via", Mirror6(nearHop.Addr()).String()),
			func() error { return near.SetSysctl("net.ipv6.conf.all.forwarding", "1") },
			func() error { return far.SetSysctl("net.ipv6.conf.all.forwarding", "1") },
		)
	}
	return steps
}

func ipStep(n *NS, args ...string) func() error {
	return func() error {
		_, err := n.IP(args...)
		return err
	}
}

// veth joins a:aName and b:bName, both ends with the given MTU and up.
func veth(a *NS, aName string, b *NS, bName string, mtu int) error {
	m := strconv.Itoa(mtu)
	if _, err := a.IP("link", "add", aName, "mtu", m, "type", "veth", "peer", "name", bName, "mtu", m, "netns", b.Name); err != nil {
		return err
	}
	if _, err := a.IP("link", "set", aName, "up"); err != nil {
		return err
	}
	_, err := b.IP("link", "set", bName, "up")
	return err
}

// port attaches n:ifname to the bridge in sw as port swName, both ends with
// the given MTU.
func port(sw, n *NS, ifname, swName string, mtu int) error {
	if err := veth(n, ifname, sw, swName, mtu); err != nil {
		return err
	}
	_, err := sw.IP("link", "set", swName, "master", BridgeName)
	return err
}

// Flip makes Directors[i] the active one: the router sends VIPPrefix (and
// VIPPrefix6) to it and every real uses it as its default gateway (what a
// VRRP floating address would do; with Options.RealHopMTU, the near
// router's default route moves instead). A VRRP lab refuses: keepalived
// decides there (WaitVRRPMaster); so does a BGP lab, where the routers
// follow the directors' announcements (WaitBGPActive).
func (l *Lab) Flip(i int) error {
	if l.vrrp != nil {
		return fmt.Errorf("lab: Flip(%d): this lab runs VRRP; keepalived moves the routes (stop a director's holdfast, then WaitVRRPMaster)", i)
	}
	if l.bgp != nil {
		return fmt.Errorf("lab: Flip(%d): this lab runs BGP; the routers follow the directors' announcements (WaitBGPActive)", i)
	}
	if i < 0 || i >= len(l.Directors) {
		return fmt.Errorf("lab: Flip(%d): have %d directors", i, len(l.Directors))
	}
	d := l.Directors[i]
	type route struct {
		ns   *NS
		args []string
	}
	routes := []route{{l.Router, []string{"route", "replace", VIPPrefix.String(), "via", d.Uplink.Addr().String()}}}
	if l.ipv6 {
		routes = append(routes, route{l.Router, []string{"-6", "route", "replace", VIPPrefix6.String(), "via", d.Uplink6.Addr().String()}})
	}
	gateways := []*NS{}
	if l.hop[0] != nil {
		gateways = append(gateways, l.hop[0])
	} else {
		for _, r := range l.Reals {
			gateways = append(gateways, r.NS)
		}
	}
	for _, n := range gateways {
		routes = append(routes, route{n, []string{"route", "replace", "default", "via", d.RSAddr.Addr().String()}})
		if l.ipv6 {
			routes = append(routes, route{n, []string{"-6", "route", "replace", "default", "via", d.RSAddr6.Addr().String()}})
		}
	}
	for _, r := range routes {
		if _, err := r.ns.IP(r.args...); err != nil {
			return err
		}
	}
	l.mu.Lock()
	l.active = i
	l.mu.Unlock()
	return nil
}

// Active returns the director the router and the reals currently use. In a
// VRRP lab that is the VRRP master (VRRPMaster), nil while no director holds
// both floating addresses; in a BGP lab the director the client-side
// router's VIP route goes through (BGPRoutes), nil while it has none.
func (l *Lab) Active() *Director {
	if l.vrrp != nil {
		d, _ := l.VRRPMaster()
		return d
	}
	if l.bgp != nil {
		d, _, _ := l.BGPRoutes()
		return d
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.Directors[l.active]
}

// Namespaces returns the namespaces the lab created, in creation order.
func (l *Lab) Namespaces() []*NS {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*NS(nil), l.namespaces...)
}

// Real returns the real server with address a, or nil.
func (l *Lab) Real(a netip.Addr) *Real {
	for _, r := range l.Reals {
		if r.Addr == a {
			return r
		}
	}
	return nil
}

// Close stops the backends, kills the processes started in the lab that are
// still running (SIGKILL, by PID) and deletes the namespaces, which removes
// their veths and the bridge. It is idempotent; it keeps going past errors
// and returns them all.
//
// A namespace outlives its name while something still holds it: sockets the
// caller made with Listen or Dial and has not closed keep it (and its links)
// alive until they are closed.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	closers, procs, nss := l.closers, l.procs, l.namespaces
	l.mu.Unlock()

	var errs []error
	defer func() {
		// A killed director leaves its admin socket behind.
		for _, d := range l.Directors {
			os.Remove(AdminSocket(d))
		}
	}()
	for _, c := range closers {
		if err := c(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range procs {
		if err := p.stop(); err != nil {
			errs = append(errs, err)
		}
	}
	for i := len(nss) - 1; i >= 0; i-- {
		if _, err := run("ip", "netns", "delete", nss[i].Name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// register records something Close must undo; it fails once the lab is closed.
func (l *Lab) register(p *Proc, closer func() error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("lab: closed")
	}
	if p != nil {
		l.procs = append(l.procs, p)
	}
	if closer != nil {
		l.closers = append(l.closers, closer)
	}
	return nil
}
