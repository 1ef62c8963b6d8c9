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

// Addresses of the topology. All of them are in 198.18.0.0/15.
var (
	// ClientAddr is the client's address on its link to the router (/24).
	ClientAddr = netip.MustParseAddr("198.18.1.2")
	// ClientGateway is the router's address on the client link.
	ClientGateway = netip.MustParseAddr("198.18.1.1")
	// ClientPrefix is the client link.
	ClientPrefix = netip.MustParsePrefix("198.18.1.0/24")

	// VIP is the first virtual IP; the router sends all of VIPPrefix to the
	// active director. VIPs are never assigned to an interface.
	VIP       = netip.MustParseAddr("198.18.100.1")
	VIPPrefix = netip.MustParsePrefix("198.18.100.0/24")

	// RecoveryPrefix holds the directors' recovery addresses (DESIGN.md
	// section 2). The lab routes nothing to it: the reals reach it through
	// their default route, which points at the active director.
	RecoveryPrefix = netip.MustParsePrefix("198.18.200.0/24")
	// RecoveryAddr is the recovery address the directors of a lab share.
	RecoveryAddr = netip.MustParseAddr("198.18.200.1")

	// RealPrefix is the real-server segment (the bridge in the switch ns).
	RealPrefix = netip.MustParsePrefix("198.18.10.0/24")
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

// MaxReals is the largest Options.Reals: reals use 198.18.10.11 upwards.
const MaxReals = 100

// Options shape a Lab. The zero value is one director, three reals, MTU 1500.
type Options struct {
	// Prefix starts the name of every namespace the lab creates. Empty means
	// "hf<pid>-<n>-", unique per build in this process, which SweepStale
	// recognises once the process is gone.
	Prefix string
	// Directors is 1 or 2 (0 means 1).
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
}

// Lab is a built topology. Its fields are set by New and read-only after;
// methods are safe for concurrent use.
type Lab struct {
	Prefix    string
	Client    *NS
	Router    *NS
	Switch    *NS
	Directors []*Director // A, then B if Options.Directors == 2
	Reals     []*Real     // rs1..rsN

	mu         sync.Mutex
	closed     bool
	namespaces []*NS // created ones, in creation order
	procs      []*Proc
	closers    []func() error // backends, closed before the namespaces go
	active     int
	vrrp       *vrrpState // nil unless Options.VRRP
}

// Director is a director's namespace and its addresses.
type Director struct {
	*NS
	Label       string       // "A" or "B"
	ID          int          // 1 for A, 2 for B: holdfast --director-id
	Uplink      netip.Prefix // its address on the router link, e.g. 198.18.2.2/24 (VRRP: on the shared uplink segment)
	RouterAddr  netip.Addr   // the router's end of that link (or segment), its default gateway
	RSAddr      netip.Prefix // its address on the real-server segment, e.g. 198.18.10.2/24
	UplinkIface string       // DirectorUplink
	RSIface     string       // DirectorRSIface: pass it to `holdfast run --real-iface`
}

// Real is a real server's namespace, address and backend counters.
type Real struct {
	*NS
	Label string     // "rs1", "rs2", ...
	Addr  netip.Addr // 198.18.10.11, .12, ...
	Stats Counters   // traffic its backends served
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
	case opts.Directors != 1 && opts.Directors != 2:
		return nil, fmt.Errorf("lab: Directors = %d, want 1 or 2", opts.Directors)
	case opts.Reals < 1 || opts.Reals > MaxReals:
		return nil, fmt.Errorf("lab: Reals = %d, want 1..%d", opts.Reals, MaxReals)
	case opts.DirectorLinkMTU < 576 || opts.DirectorLinkMTU > 1500:
		// 576: the IPv4 minimum any host must accept; 1500: what client and
		// reals use, so a larger link would never be the bottleneck.
		return nil, fmt.Errorf("lab: DirectorLinkMTU = %d, want 576..1500", opts.DirectorLinkMTU)
	case !validPrefix.MatchString(opts.Prefix):
		return nil, fmt.Errorf("lab: Prefix %q, want 1-40 characters of [A-Za-z0-9_.-]", opts.Prefix)
	}

	// The directors' admin sockets go there.
	if _, err := EnsureRuntimeDir(); err != nil {
		return nil, err
	}
	l := &Lab{Prefix: opts.Prefix}
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
	for i := range opts.Directors {
		label := string(rune('A' + i))
		ns, err := l.addNS("dir" + label)
		if err != nil {
			return nil, err
		}
		// A point-to-point link per director: 198.18.2.2, 198.18.3.2; with
		// VRRP one segment: 198.18.2.2, 198.18.2.3.
		uplink := [4]byte{198, 18, byte(2 + i), 2}
		if opts.VRRP {
			uplink = [4]byte{198, 18, 2, byte(2 + i)}
		}
		l.Directors = append(l.Directors, &Director{
			NS:          ns,
			Label:       label,
			ID:          i + 1,
			Uplink:      netip.PrefixFrom(netip.AddrFrom4(uplink), 24),
			RouterAddr:  netip.AddrFrom4([4]byte{198, 18, uplink[2], 1}),
			RSAddr:      netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 10, byte(2 + i)}), 24),
			UplinkIface: DirectorUplink,
			RSIface:     DirectorRSIface,
		})
	}
	for i := range opts.Reals {
		label := "rs" + strconv.Itoa(i+1)
		ns, err := l.addNS(label)
		if err != nil {
			return nil, err
		}
		l.Reals = append(l.Reals, &Real{
			NS:    ns,
			Label: label,
			Addr:  netip.AddrFrom4([4]byte{198, 18, 10, byte(11 + i)}),
		})
	}

	if err := l.wire(opts); err != nil {
		return nil, err
	}
	if opts.VRRP {
		if err := l.startVRRP(); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// addNS creates one namespace with lo up and IPv6 off (the lab is IPv4 only,
// and IPv6 link-local chatter would only add noise to captures).
func (l *Lab) addNS(role string) (*NS, error) {
	n := &NS{Name: l.Prefix + role, Role: role, lab: l}
	if _, err := run("ip", "netns", "add", n.Name); err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.namespaces = append(l.namespaces, n)
	l.mu.Unlock()
	for _, kv := range [][2]string{
		{"net.ipv6.conf.all.disable_ipv6", "1"},
		{"net.ipv6.conf.default.disable_ipv6", "1"},
	} {
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
	steps := []func() error{
		func() error { return veth(l.Client, ClientIface, l.Router, "cl0", 1500) },
		ipStep(l.Client, "addr", "add", netip.PrefixFrom(ClientAddr, 24).String(), "dev", ClientIface),
		ipStep(l.Router, "addr", "add", netip.PrefixFrom(ClientGateway, 24).String(), "dev", "cl0"),
		ipStep(l.Client, "route", "add", "default", "via", ClientGateway.String()),
		func() error { return l.Router.SetSysctl("net.ipv4.ip_forward", "1") },
		ipStep(l.Switch, "link", "add", BridgeName, "type", "bridge"),
		ipStep(l.Switch, "link", "set", BridgeName, "up"),
	}
	if opts.VRRP {
		steps = append(steps, l.vrrpUplinkSteps()...)
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
			func() error { return l.port(d.NS, d.RSIface, "dir"+d.Label) },
			ipStep(d.NS, "addr", "add", d.RSAddr.String(), "dev", d.RSIface),
			ipStep(d.NS, "route", "add", "default", "via", d.RouterAddr.String()),
		)
	}
	for _, r := range l.Reals {
		steps = append(steps,
			func() error { return l.port(r.NS, RealIface, r.Label) },
			ipStep(r.NS, "addr", "add", netip.PrefixFrom(r.Addr, 24).String(), "dev", RealIface),
		)
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	if opts.VRRP {
		return l.vrrpRoutes()
	}
	return l.Flip(0)
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

// port attaches n:ifname to the real-server bridge as switch port swName.
func (l *Lab) port(n *NS, ifname, swName string) error {
	if err := veth(n, ifname, l.Switch, swName, 1500); err != nil {
		return err
	}
	_, err := l.Switch.IP("link", "set", swName, "master", BridgeName)
	return err
}

// Flip makes Directors[i] the active one: the router sends VIPPrefix to it
// and every real uses it as its default gateway (what a VRRP floating address
// would do). A VRRP lab refuses: keepalived decides there (WaitVRRPMaster).
func (l *Lab) Flip(i int) error {
	if l.vrrp != nil {
		return fmt.Errorf("lab: Flip(%d): this lab runs VRRP; keepalived moves the routes (stop a director's holdfast, then WaitVRRPMaster)", i)
	}
	if i < 0 || i >= len(l.Directors) {
		return fmt.Errorf("lab: Flip(%d): have %d directors", i, len(l.Directors))
	}
	d := l.Directors[i]
	if _, err := l.Router.IP("route", "replace", VIPPrefix.String(), "via", d.Uplink.Addr().String()); err != nil {
		return err
	}
	for _, r := range l.Reals {
		if _, err := r.IP("route", "replace", "default", "via", d.RSAddr.Addr().String()); err != nil {
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
// both floating addresses.
func (l *Lab) Active() *Director {
	if l.vrrp != nil {
		d, _ := l.VRRPMaster()
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
