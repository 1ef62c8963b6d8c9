package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"
	"time"
)

// A BGP lab (Options.BGP): the directors announce by BGP (holdfast run
// --bgp-*) to two BIRD 2 routers instead of Flip moving static routes
// (DESIGN.md section 7, issue 16):
//
//	client -- router (client side, BIRD) --198.18.11.0/24-- director A --+-- switch (br0) --+-- rs1..rsN
//	                                     --198.18.12.0/24-- director B --+                  +-- rrouter (real side, BIRD)
//
// Each director has its own link to the client-side router (the router's
// end 198.18.1N.1, the director's 198.18.1N.2, N its ID), on which BIRD
// checks the link: the router drops a director's session the moment that
// link goes down. The real-side router sits on the reals' segment (their
// default gateway, BGPRealGateway) and peers with the directors on a
// second subnet of that segment, BGPRealPeerPrefix (router .1, director
// 1+ID): its link stays up when a director dies, so it notices through
// BFD (both routers run it with every director; holdfast answers by
// default) in 0.9 s, or for a director without BFD after the hold time.
// A announces with MED 10, B with 20: both routers send
// the traffic to A while A announces, else to B (an ECMP lab, ecmp.go,
// spreads it over all of them).
//
// A dual-stack BGP lab (Options.IPv6, issue 17) mirrors all of it
// (Mirror6): each director also has an IPv6 session with each router, the
// client-side one at 2001:2:0:1N::1, the real-side one at BGPRealPeer6
// (2001:2:0:20::1), and announces VIP6 over the one and its IPv6 recovery
// address and ::/0 over the other. holdfast sends each family only over
// sessions of that family (bgp/doc.go: next hop self needs an address of
// the family), so the routers run a BIRD protocol per director and family:
// BGPProtocol for IPv4, BGPProtocol6 for IPv6.
var (
	// BGPRealPeerPrefix is the subnet of the reals' segment on which the
	// directors peer with the real-side router (as in
	// deploy/bird-real-side.conf).
	BGPRealPeerPrefix = netip.MustParsePrefix("198.18.20.0/24")
	// BGPRealPeer is the real-side router's peering address
	// (--bgp-real-peer).
	BGPRealPeer = netip.MustParseAddr("198.18.20.1")
	// BGPRealGateway is the real-side router's address on the reals'
	// subnet: their default gateway.
	BGPRealGateway = netip.MustParseAddr("198.18.10.1")

	// IPv6 twins of the above (Options.IPv6): 2001:2:0:20::/64, the
	// router's 2001:2:0:20::1 there, and the reals' IPv6 gateway
	// 2001:2:0:10::1.
	BGPRealPeerPrefix6 = Mirror6Prefix(BGPRealPeerPrefix)
	BGPRealPeer6       = Mirror6(BGPRealPeer)
	BGPRealGateway6    = Mirror6(BGPRealGateway)
)

// BGP numbers of the lab: the routers' AS, the directors' AS, and the
// timers of deploy/bird-*.conf (holdfast's defaults).
const (
	BGPRouterAS   = 65000
	BGPDirectorAS = 65001
	BGPHoldTime   = 9 * time.Second
	BGPKeepalive  = 3 * time.Second
)

// Protocol names of the routers' sessions (birdc show protocols).
const (
	BGPClientSide = "client" // the client-side router (the Router namespace)
	BGPRealSide   = "real"   // the real-side router (the RealRouter namespace)
)

// BGPMED is director d's --bgp-med: 10 for A, 20 for B; ECMPMED for
// every director of an ECMP lab (Options.ECMP).
func BGPMED(d *Director) int {
	if d.lab != nil && d.lab.ecmp {
		return ECMPMED
	}
	return 10 * d.ID
}

// BGPProtocol is the name of director d's session in the routers' BIRD
// (`birdc show protocols`): "director_a", "director_b".
func BGPProtocol(d *Director) string { return "director_" + strings.ToLower(d.Label) }

// BGPProtocol6 is the name of director d's IPv6 session in the routers'
// BIRD in a dual-stack lab: "director_a6", "director_b6".
func BGPProtocol6(d *Director) string { return BGPProtocol(d) + "6" }

// BGPProtocols are the names of director d's sessions on each router:
// BGPProtocol, and in a dual-stack lab BGPProtocol6.
func (l *Lab) BGPProtocols(d *Director) []string {
	if l.ipv6 {
		return []string{BGPProtocol(d), BGPProtocol6(d)}
	}
	return []string{BGPProtocol(d)}
}

// bgpState is what a BGP lab adds: the two routers' BIRD processes (client
// side, real side) and the directory holding their configurations and
// control sockets. Set once in New, read-only after.
type bgpState struct {
	dir   string
	birds map[string]*Proc // by BGPClientSide, BGPRealSide
}

// birdRouterConf is a router's BIRD: deploy/bird-client-side.conf and
// deploy/bird-real-side.conf with the lab's addresses; in a dual-stack lab
// with an IPv6 twin of each filter, kernel protocol and session.
var birdRouterConf = template.Must(template.New("bird.conf").Parse(`# BIRD 2, {{.Side}}-side router of lab {{.Lab}}: written by holdfast's
# namespace lab, removed with it. See deploy/bird-{{.Side}}-side.conf.
router id {{.RouterID}};

protocol device {
}
{{range .Families}}
# Only what this side needs from the directors over {{.Name}}: {{.Accepts}}.
filter from_director_{{.Name}} {
	if net ~ [ {{.Filter}} ] then accept;
	reject;
}
{{- if $.ECMP}}

# The learned {{.Name}} routes go to the kernel: the equal routes of every
# director (same MED, same AS path) merged into one multipath route, which
# the kernel hashes on L4 (fib_multipath_hash_policy=1).
protocol kernel {
	merge paths yes;
	{{.Name}} { export filter { if source = RTS_BGP then accept; reject; }; };
}
{{- else}}

# The learned {{.Name}} routes go to the kernel, which forwards to the
# director with the lower MED.
protocol kernel {
	{{.Name}} { export filter { if source = RTS_BGP then accept; reject; }; };
}
{{- end}}
{{end}}
# BFD with every director: holdfast answers it by default (--bfd passive).
# Where a dead director's link stays up (the real side, a bridge), BFD
# drops its session in the director's detection time, 3 x 300 ms, instead
# of the hold time.
protocol bfd {
	interface "*" {
		min rx interval 100 ms;
		min tx interval 300 ms;
		multiplier 3;
	};
}

template bgp director {
	local as {{.RouterAS}};
	bfd on;
	# holdfast dials and never listens.
	passive on;
	hold time {{.Hold}};
	keepalive time {{.Keepalive}};
	# After a session fails (a dead director: its link went down, or the
	# hold timer), BIRD waits error wait time before it accepts the
	# director again, 60 s by default (up to 300 s after repeated errors):
	# a director that comes back would wait that long. The lab restarts
	# directors within seconds.
	error wait time 1, 10;
	direct;
{{- if .CheckLink}}
	# Each director's link is its own: when it goes down, drop the session
	# at once instead of waiting for the hold timer.
	check link yes;
{{- else}}
	# A shared segment: a dead director's link stays up here, BFD (or
	# the hold timer, for a director without it) notices.
{{- end}}
}
{{range .Directors}}
# One session per family: holdfast announces each family only over
# sessions of that family.
protocol bgp {{.Name}} from director {
	neighbor {{.Addr}} as {{$.DirectorAS}};
	source address {{.Local}};
	{{.Family}} { import filter from_director_{{.Family}}; export none; };
}
{{end}}`))

// birdFamily is one address family of a router's BIRD: its channel name
// ("ipv4", "ipv6"), and the prefixes it accepts from the directors.
type birdFamily struct {
	Name, Accepts, Filter string
}

type birdNeighbor struct {
	Name        string
	Family      string // "ipv4" or "ipv6": its channel
	Addr, Local netip.Addr
}

// bgpAddrs sets the directors' IPv4 addresses of a BGP lab: the uplink
// 198.18.1N.2/24 (router .1) and BGPAddr on BGPRealPeerPrefix (New mirrors
// them into IPv6 in a dual-stack lab).
func bgpAddrs(d *Director) {
	d.Uplink = netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(10 + d.ID), 2}), 24)
	d.RouterAddr = netip.AddrFrom4([4]byte{198, 18, byte(10 + d.ID), 1})
	b := BGPRealPeerPrefix.Addr().As4()
	b[3] = byte(1 + d.ID)
	d.BGPAddr = netip.PrefixFrom(netip.AddrFrom4(b), BGPRealPeerPrefix.Bits())
}

// bgpSteps add the real-side router to the reals' segment, the directors'
// peering addresses there, and the reals' default route through it.
func (l *Lab) bgpSteps(realMTU int) []func() error {
	rr := l.RealRouter
	steps := []func() error{
		// The router forwards the reals' packets back out of the port they
		// came in by, to a director on the same segment: a redirect would
		// send the reals to the director directly, past the route BGP
		// moves.
		func() error { return rr.SetSysctl("net.ipv4.conf.all.send_redirects", "0") },
		func() error { return rr.SetSysctl("net.ipv4.conf.default.send_redirects", "0") },
		func() error { return rr.SetSysctl("net.ipv4.ip_forward", "1") },
		func() error { return port(l.Switch, rr, RealIface, "rrouter", realMTU) },
		ipStep(rr, "addr", "add", netip.PrefixFrom(BGPRealGateway, RealPrefix.Bits()).String(), "dev", RealIface),
		ipStep(rr, "addr", "add", netip.PrefixFrom(BGPRealPeer, BGPRealPeerPrefix.Bits()).String(), "dev", RealIface),
	}
	if l.ipv6 {
		// IPv6 has no send_redirects; Linux sends no redirect whose
		// target, the next hop, is not link-local (ndisc_send_redirect),
		// and the directors' next hops here are global addresses.
		steps = append(steps,
			func() error { return rr.SetSysctl("net.ipv6.conf.all.forwarding", "1") },
			ip6Step(rr, netip.PrefixFrom(BGPRealGateway6, RealPrefix6.Bits()), RealIface),
			ip6Step(rr, netip.PrefixFrom(BGPRealPeer6, BGPRealPeerPrefix6.Bits()), RealIface),
		)
	}
	for _, d := range l.Directors {
		steps = append(steps, ipStep(d.NS, "addr", "add", d.BGPAddr.String(), "dev", d.RSIface))
		if l.ipv6 {
			steps = append(steps,
				ip6Step(d.NS, d.BGPAddr6, d.RSIface),
				// Unplug takes the links down, which flushes a link's IPv6
				// addresses unless this is on (IPv4 keeps them): a
				// director plugged back in would have none.
				func() error { return d.SetSysctl("net.ipv6.conf.all.keep_addr_on_down", "1") },
			)
		}
	}
	if l.ecmp {
		steps = append(steps, l.ecmpSteps()...)
	}
	for _, r := range l.Reals {
		steps = append(steps,
			func() error { return r.SetSysctl("net.ipv4.conf.all.accept_redirects", "0") },
			ipStep(r.NS, "route", "replace", "default", "via", BGPRealGateway.String()),
		)
		if l.ipv6 {
			// IPv6 reads accept_redirects per interface ("all" does not
			// reach an existing one).
			steps = append(steps,
				func() error { return r.SetSysctl("net.ipv6.conf."+RealIface+".accept_redirects", "0") },
				ipStep(r.NS, "-6", "route", "replace", "default", "via", BGPRealGateway6.String()),
			)
		}
	}
	return steps
}

// startBGP writes and checks both routers' BIRD configurations in a fresh
// temporary directory and starts BIRD in the Router and RealRouter
// namespaces. Close stops them and removes the directory.
func (l *Lab) startBGP() error {
	bin, err := exec.LookPath("bird")
	if err != nil {
		return fmt.Errorf("lab: Options.BGP needs BIRD 2 (Debian package bird2): %w", err)
	}
	if _, err := exec.LookPath("birdc"); err != nil {
		return fmt.Errorf("lab: Options.BGP needs birdc (Debian package bird2): %w", err)
	}
	dir, err := os.MkdirTemp("", "holdfast-lab-bird-")
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	b := &bgpState{dir: dir, birds: map[string]*Proc{}}
	if err := l.register(nil, func() error { return b.stop(l) }); err != nil {
		return errors.Join(err, os.RemoveAll(dir))
	}
	l.bgp = b
	confs, err := l.routerConfs()
	if err != nil {
		return err
	}
	for _, side := range []struct {
		name string
		ns   *NS
	}{{BGPClientSide, l.Router}, {BGPRealSide, l.RealRouter}} {
		if _, err := l.startBIRD(side.ns, side.name, bin, confs[side.name]); err != nil {
			return err
		}
	}
	return nil
}

// routerConfs are the routers' BIRD configurations, by BGPClientSide and
// BGPRealSide.
func (l *Lab) routerConfs() (map[string]string, error) {
	confs := map[string]string{}
	for _, side := range []struct {
		name      string
		id        netip.Addr
		families  []birdFamily
		checkLink bool
		// The router's and the director's end of d's session of a family.
		local, neighbor func(d *Director, v6 bool) netip.Addr
	}{
		{BGPClientSide, l.Directors[0].RouterAddr,
			[]birdFamily{
				{"ipv4", "VIP host routes", VIPPrefix.String() + "{32,32}"},
				{"ipv6", "VIP6 host routes", VIPPrefix6.String() + "{128,128}"},
			}, true,
			func(d *Director, v6 bool) netip.Addr { return pick(v6, d.RouterAddr6, d.RouterAddr) },
			func(d *Director, v6 bool) netip.Addr { return pick(v6, d.Uplink6.Addr(), d.Uplink.Addr()) }},
		{BGPRealSide, BGPRealPeer,
			[]birdFamily{
				{"ipv4", "recovery addresses and the default route", RecoveryPrefix.String() + "{32,32}, 0.0.0.0/0"},
				{"ipv6", "IPv6 recovery addresses and the default route", RecoveryPrefix6.String() + "{128,128}, ::/0"},
			}, false,
			func(_ *Director, v6 bool) netip.Addr { return pick(v6, BGPRealPeer6, BGPRealPeer) },
			func(d *Director, v6 bool) netip.Addr { return pick(v6, d.BGPAddr6.Addr(), d.BGPAddr.Addr()) }},
	} {
		families := side.families[:1]
		if l.ipv6 {
			families = side.families
		}
		var ns []birdNeighbor
		for _, d := range l.Directors {
			for i, name := range l.BGPProtocols(d) {
				v6 := i == 1
				ns = append(ns, birdNeighbor{Name: name, Family: families[i].Name, Addr: side.neighbor(d, v6), Local: side.local(d, v6)})
			}
		}
		var conf strings.Builder
		if err := birdRouterConf.Execute(&conf, map[string]any{
			"Side": side.name, "Lab": l.Prefix, "RouterID": side.id, "ECMP": l.ecmp,
			"Families": families, "CheckLink": side.checkLink,
			"RouterAS": BGPRouterAS, "DirectorAS": BGPDirectorAS,
			"Hold": int(BGPHoldTime.Seconds()), "Keepalive": int(BGPKeepalive.Seconds()),
			"Directors": ns,
		}); err != nil {
			return nil, fmt.Errorf("lab: BIRD configuration: %w", err)
		}
		confs[side.name] = conf.String()
	}
	return confs, nil
}

// pick is v6's address if v6, else v4's.
func pick(v6 bool, a6, a4 netip.Addr) netip.Addr {
	if v6 {
		return a6
	}
	return a4
}

// startBIRD writes conf to the BGP directory, checks it (bird -p) and
// starts BIRD in ns in the foreground (so that the lab's PID is BIRD's), its
// control socket BIRDSocket(name); it returns once BIRD answers there.
func (l *Lab) startBIRD(ns *NS, name, bin, conf string) (*Proc, error) {
	b := l.bgp
	cfg := filepath.Join(b.dir, name+".conf")
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := ns.Run(ctx, bin, "-p", "-c", cfg); err != nil {
		return nil, fmt.Errorf("lab: BIRD rejects %s: %w\n%s", cfg, err, out)
	}
	sock := filepath.Join(b.dir, name+".ctl")
	p, err := ns.Start("bird-"+name, bin, "-f", "-c", cfg, "-s", sock)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	b.birds[name] = p
	l.mu.Unlock()
	// BIRD makes its control socket once it has read its configuration,
	// and says so nowhere: poll birdc until it answers.
	for {
		if _, err := l.birdc(ctx, name, "show", "status"); err == nil {
			return p, nil
		}
		select {
		case <-p.Done():
			return nil, fmt.Errorf("lab: BIRD %s exited: %s", name, tailLines(p.Lines(), 20))
		case <-ctx.Done():
			return nil, fmt.Errorf("lab: BIRD %s: no control socket after 10 s: %s", name, tailLines(p.Lines(), 20))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop ends the BIRD processes (SIGTERM, by PID) and removes the directory.
func (b *bgpState) stop(l *Lab) error {
	l.mu.Lock()
	var procs []*Proc
	for _, p := range b.birds {
		procs = append(procs, p)
	}
	l.mu.Unlock()
	return stopProcs(procs, b.dir)
}

// BGP says whether the lab runs BGP (Options.BGP).
func (l *Lab) BGP() bool { return l.bgp != nil }

// BIRD returns the BIRD process of router (BGPClientSide, BGPRealSide, or
// a name given to StartDirectorBIRD), or nil.
func (l *Lab) BIRD(router string) *Proc {
	if l.bgp == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.bgp.birds[router]
}

// Birdc runs `birdc args...` against router's BIRD and returns its output.
func (l *Lab) Birdc(ctx context.Context, router string, args ...string) (string, error) {
	if l.bgp == nil {
		return "", errors.New("lab: not a BGP lab (Options.BGP)")
	}
	return l.birdc(ctx, router, args...)
}

func (l *Lab) birdc(ctx context.Context, router string, args ...string) (string, error) {
	sock := filepath.Join(l.bgp.dir, router+".ctl")
	out, err := exec.CommandContext(ctx, "birdc", append([]string{"-s", sock}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("lab: birdc %s (%s): %w: %s", strings.Join(args, " "), router, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// BGPProtocolState is the state of director d's (IPv4) session on router
// (`birdc show protocols`: "Established", "Active", "Connect", ...; "" if
// BIRD does not say).
func (l *Lab) BGPProtocolState(ctx context.Context, router string, d *Director) (string, error) {
	return l.BGPSessionState(ctx, router, BGPProtocol(d))
}

// BGPSessionState is the state of the session named proto (BGPProtocols)
// on router, as BGPProtocolState.
func (l *Lab) BGPSessionState(ctx context.Context, router, proto string) (string, error) {
	out, err := l.Birdc(ctx, router, "show", "protocols", proto)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(out, "\n") {
		// name proto table state since info: "director_a BGP --- up 03:12:40.123 Established"
		if f := strings.Fields(line); len(f) >= 6 && f[0] == proto {
			return f[5], nil
		}
	}
	return "", nil
}

// routeVia is the gateway of ns's kernel route to exactly p (invalid if
// it has none, or no gateway).
func routeVia(ns *NS, p netip.Prefix) (netip.Addr, error) {
	out, err := ns.IP("-o", familyFlag(p), "route", "show", "exact", p.String())
	if err != nil {
		return netip.Addr{}, err
	}
	f := strings.Fields(out)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "via" {
			return netip.ParseAddr(f[i+1])
		}
	}
	return netip.Addr{}, nil
}

// familyFlag is ip(8)'s family option for p: without -6, `ip route`
// shows and parses IPv4 only.
func familyFlag(p netip.Prefix) string {
	if p.Addr().Is6() {
		return "-6"
	}
	return "-4"
}

// defaultRoute is the default route of the family: 0.0.0.0/0 or ::/0.
func defaultRoute(v6 bool) netip.Prefix {
	if v6 {
		return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
}

// BGPRoutes are the directors the routers' kernels send the IPv4 traffic
// to now: the client-side router's route to VIP (its /32 from BGP) and the
// real-side router's default route; nil for a route that is not there.
func (l *Lab) BGPRoutes() (vip, reals *Director, err error) { return l.bgpRoutes(false) }

// BGPRoutes6 are BGPRoutes for IPv6 in a dual-stack lab: the client-side
// router's route to VIP6/128 and the real-side router's ::/0.
func (l *Lab) BGPRoutes6() (vip, reals *Director, err error) {
	if !l.ipv6 {
		return nil, nil, errors.New("lab: BGPRoutes6: not a dual-stack lab (Options.IPv6)")
	}
	return l.bgpRoutes(true)
}

func (l *Lab) bgpRoutes(v6 bool) (vip, reals *Director, err error) {
	cv, err := routeVia(l.Router, vipRoute(v6))
	if err != nil {
		return nil, nil, err
	}
	rv, err := routeVia(l.RealRouter, defaultRoute(v6))
	if err != nil {
		return nil, nil, err
	}
	for _, d := range l.Directors {
		if d.uplinkAddr(v6) == cv {
			vip = d
		}
		if d.bgpAddr(v6) == rv {
			reals = d
		}
	}
	return vip, reals, nil
}

// vipRoute is VIP's host route (/32), or VIP6's (/128).
func vipRoute(v6 bool) netip.Prefix {
	if v6 {
		return netip.PrefixFrom(VIP6, 128)
	}
	return netip.PrefixFrom(VIP, 32)
}

// uplinkAddr is d's address on its uplink of the family: the client-side
// router's next hop to it.
func (d *Director) uplinkAddr(v6 bool) netip.Addr { return pick(v6, d.Uplink6.Addr(), d.Uplink.Addr()) }

// bgpAddr is d's peering address of the family on the reals' segment:
// the real-side router's next hop to it.
func (d *Director) bgpAddr(v6 bool) netip.Addr { return pick(v6, d.BGPAddr6.Addr(), d.BGPAddr.Addr()) }

// families are the lab's address families, as "is IPv6": IPv4, then IPv6
// in a dual-stack lab.
func (l *Lab) families() []bool {
	if l.ipv6 {
		return []bool{false, true}
	}
	return []bool{false}
}

func familyName(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

// WaitBGPActive waits (bounded by ctx) until both routers send the
// traffic to Directors[i]: the client-side router's VIP route and the
// real-side router's default route go through it, in a dual-stack lab
// those of both families.
func (l *Lab) WaitBGPActive(ctx context.Context, i int) error {
	if l.bgp == nil {
		return errors.New("lab: WaitBGPActive: not a BGP lab (Options.BGP)")
	}
	if i < 0 || i >= len(l.Directors) {
		return fmt.Errorf("lab: WaitBGPActive(%d): have %d directors", i, len(l.Directors))
	}
	want := l.Directors[i]
	for {
		var wrong []string
		for _, v6 := range l.families() {
			vip, reals, err := l.bgpRoutes(v6)
			if err != nil {
				return err
			}
			if vip != want || reals != want {
				wrong = append(wrong, fmt.Sprintf("%s: VIP via %s, reals' default via %s", familyName(v6), label(vip), label(reals)))
			}
		}
		if len(wrong) == 0 {
			return nil
		}
		// The kernel routes change when BIRD exports a new best route;
		// nothing announces it to the lab: poll.
		select {
		case <-ctx.Done():
			return fmt.Errorf("lab: routers not through director %s (%s): %w", want.Label, strings.Join(wrong, "; "), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func label(d *Director) string {
	if d == nil {
		return "nothing"
	}
	return "director " + d.Label
}

// Unplug takes Directors[i]'s links down (its uplink and its port on the
// reals' segment), as when its host dies: the client-side router sees the
// carrier go at once, the real-side router's own link stays up.
func (l *Lab) Unplug(i int) error {
	d := l.Directors[i]
	for _, ifname := range []string{d.UplinkIface, d.RSIface} {
		if _, err := d.IP("link", "set", ifname, "down"); err != nil {
			return err
		}
	}
	return nil
}

// Replug brings Directors[i]'s links up again and restores its default
// routes (which the kernel deleted with the link going down). Idempotent.
func (l *Lab) Replug(i int) error {
	d := l.Directors[i]
	for _, ifname := range []string{d.UplinkIface, d.RSIface} {
		if _, err := d.IP("link", "set", ifname, "up"); err != nil {
			return err
		}
	}
	if _, err := d.IP("route", "replace", "default", "via", d.RouterAddr.String()); err != nil {
		return err
	}
	if l.ipv6 {
		if _, err := d.IP("-6", "route", "replace", "default", "via", d.RouterAddr6.String()); err != nil {
			return err
		}
	}
	return nil
}

// bgpArgs are director d's --bgp-* flags in a BGP lab; in a dual-stack
// lab with the IPv6 peers and ::/0 too, so that VIP6, the IPv6 recovery
// address and ::/0 have sessions of their family to go over.
func bgpArgs(d *Director) []string {
	args := []string{
		"--bgp-local-as", strconv.Itoa(BGPDirectorAS), "--bgp-peer-as", strconv.Itoa(BGPRouterAS),
		"--bgp-router-id", d.Uplink.Addr().String(),
		"--bgp-peer", d.RouterAddr.String(), "--bgp-real-peer", BGPRealPeer.String(),
		"--bgp-announce", "0.0.0.0/0",
	}
	if d.lab != nil && d.lab.ipv6 {
		args = append(args, "--bgp-peer", d.RouterAddr6.String(), "--bgp-real-peer", BGPRealPeer6.String(), "--bgp-announce", "::/0")
	}
	return append(args, "--bgp-med", strconv.Itoa(BGPMED(d)),
		"--bgp-hold-time", BGPHoldTime.String(), "--bgp-keepalive", BGPKeepalive.String())
}

// directorBIRDConf is BIRD on a director of the kernel-NAT anchor: it
// announces VIP to the client-side router and the default route to the
// real-side router, with the director's MED, as holdfast would, but with
// no health check and no drain.
var directorBIRDConf = template.Must(template.New("bird-director.conf").Parse(`# BIRD 2 on director {{.Label}} of lab {{.Lab}} (kernel NAT anchor).
router id {{.RouterID}};
protocol device {
}
# Routes to announce, never installed here (no kernel protocol).
protocol static vips {
	ipv4;
	route {{.VIP}} blackhole;
}
protocol static defaults {
	ipv4;
	route 0.0.0.0/0 blackhole;
}
# BFD with the routers, as holdfast answers them (--bfd passive, 300 ms x 3).
protocol bfd {
	interface "*" {
		min rx interval 300 ms;
		min tx interval 300 ms;
		multiplier 3;
	};
}
template bgp toward {
	local as {{.DirectorAS}};
	hold time {{.Hold}};
	keepalive time {{.Keepalive}};
	bfd on;
	direct;
}
protocol bgp to_client from toward {
	neighbor {{.ClientPeer}} as {{.RouterAS}};
	source address {{.ClientLocal}};
	ipv4 { import none; export filter { if proto = "vips" then { bgp_med = {{.MED}}; accept; } reject; }; };
}
protocol bgp to_real from toward {
	neighbor {{.RealPeer}} as {{.RouterAS}};
	source address {{.RealLocal}};
	ipv4 { import none; export filter { if proto = "defaults" then { bgp_med = {{.MED}}; accept; } reject; }; };
}
`))

// StartDirectorBIRD starts BIRD in Directors[i]'s namespace announcing,
// as holdfast run --bgp-* does there, VIP/32 to the client-side router and
// 0.0.0.0/0 to the real-side router with the director's MED (BGPMED): the
// kernel-NAT anchor's announcer, IPv4 only (in a dual-stack lab the IPv6
// sessions stay down). Its name for BIRD and Birdc is
// "dir"+Label; the lab stops it on Close, a caller may kill it first.
func (l *Lab) StartDirectorBIRD(i int) (*Proc, error) {
	return l.startDirectorBIRD("StartDirectorBIRD", i, "")
}

// startDirectorBIRD is StartDirectorBIRD (named by fn in errors) with
// timers added to the sessions' template (after its `direct;`), or none.
func (l *Lab) startDirectorBIRD(fn string, i int, timers string) (*Proc, error) {
	if l.bgp == nil {
		return nil, fmt.Errorf("lab: %s: not a BGP lab (Options.BGP)", fn)
	}
	bin, err := exec.LookPath("bird")
	if err != nil {
		return nil, fmt.Errorf("lab: %s: %w", fn, err)
	}
	d := l.Directors[i]
	var conf strings.Builder
	if err := directorBIRDConf.Execute(&conf, map[string]any{
		"Label": d.Label, "Lab": l.Prefix, "RouterID": d.Uplink.Addr(),
		"VIP": netip.PrefixFrom(VIP, 32), "DirectorAS": BGPDirectorAS, "RouterAS": BGPRouterAS,
		"Hold": int(BGPHoldTime.Seconds()), "Keepalive": int(BGPKeepalive.Seconds()),
		"ClientPeer": d.RouterAddr, "ClientLocal": d.Uplink.Addr(),
		"RealPeer": BGPRealPeer, "RealLocal": d.BGPAddr.Addr(), "MED": BGPMED(d),
	}); err != nil {
		return nil, fmt.Errorf("lab: BIRD configuration: %w", err)
	}
	c := conf.String()
	if timers != "" {
		// The timers go into the template both sessions share: after its
		// last line (directorBIRDConf's "direct;").
		const anchor = "\tdirect;\n}\n"
		if !strings.Contains(c, anchor) {
			return nil, fmt.Errorf("lab: %s: the director's BIRD configuration has no `direct;` closing its bgp template", fn)
		}
		c = strings.Replace(c, anchor, "\tdirect;\n"+timers+"}\n", 1)
	}
	return l.startBIRD(d.NS, "dir"+d.Label, bin, c)
}

// BIRDSocket is the control socket of router's BIRD (BGPClientSide,
// BGPRealSide, "dir"+Label), for birdc -s; "" if the lab runs no BGP.
func (l *Lab) BIRDSocket(router string) string {
	if l.bgp == nil {
		return ""
	}
	return filepath.Join(l.bgp.dir, router+".ctl")
}

// WaitBGPEstablished waits (bounded by ctx) until both routers have an
// Established session with Directors[i], in a dual-stack lab one of each
// family: it can take the traffic over.
func (l *Lab) WaitBGPEstablished(ctx context.Context, i int) error {
	if l.bgp == nil {
		return errors.New("lab: WaitBGPEstablished: not a BGP lab (Options.BGP)")
	}
	d := l.Directors[i]
	for {
		up := true
		var states []string
		for _, r := range []string{BGPClientSide, BGPRealSide} {
			for _, proto := range l.BGPProtocols(d) {
				st, err := l.BGPSessionState(ctx, r, proto)
				if err != nil && ctx.Err() == nil {
					return err
				}
				states = append(states, r+"/"+proto+" "+st)
				up = up && st == "Established"
			}
		}
		if up {
			return nil
		}
		// BIRD tells no one when a session comes up: poll.
		select {
		case <-ctx.Done():
			return fmt.Errorf("lab: director %s's sessions not up (%s): %w", d.Label, strings.Join(states, ", "), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// bgpFailoverTimeout bounds a BGP lab's failover: the real-side router
// moves through BFD, or the hold timer for a director without it, with
// room for a loaded machine.
const bgpFailoverTimeout = BGPHoldTime + 10*time.Second

// bgpStates is director d's session state on each router, for Status:
// "client Established, real Established", in a dual-stack lab followed by
// the IPv6 sessions' ("client6 Established, real6 Established").
func (l *Lab) bgpStates(ctx context.Context, d *Director) string {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var out []string
	for i, proto := range l.BGPProtocols(d) {
		for _, r := range []string{BGPClientSide, BGPRealSide} {
			st, err := l.BGPSessionState(ctx, r, proto)
			if err != nil {
				st = "unknown"
			}
			name := r
			if i == 1 {
				name += "6"
			}
			out = append(out, name+" "+st)
		}
	}
	return strings.Join(out, ", ")
}
