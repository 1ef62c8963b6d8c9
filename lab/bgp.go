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
// 1+ID): its link stays up when a director dies, so it notices only after
// the hold time. A announces with MED 10, B with 20: both routers send
// the traffic to A while A announces, else to B (an ECMP lab, ecmp.go,
// spreads it over all of them).
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

// bgpState is what a BGP lab adds: the two routers' BIRD processes (client
// side, real side) and the directory holding their configurations and
// control sockets. Set once in New, read-only after.
type bgpState struct {
	dir   string
	birds map[string]*Proc // by BGPClientSide, BGPRealSide
}

// birdRouterConf is a router's BIRD: deploy/bird-client-side.conf and
// deploy/bird-real-side.conf with the lab's addresses, IPv4 only.
var birdRouterConf = template.Must(template.New("bird.conf").Parse(`# BIRD 2, {{.Side}}-side router of lab {{.Lab}}: written by holdfast's
# namespace lab, removed with it. See deploy/bird-{{.Side}}-side.conf.
router id {{.RouterID}};

protocol device {
}

# Only what this side needs from the directors: {{.Accepts}}.
filter from_director {
	if net ~ [ {{.Filter}} ] then accept;
	reject;
}

{{- if .ECMP}}
# The learned routes go to the kernel: the equal routes of every director
# (same MED, same AS path) merged into one multipath route, which the
# kernel hashes on L4 (fib_multipath_hash_policy=1).
protocol kernel {
	merge paths yes;
	ipv4 { export filter { if source = RTS_BGP then accept; reject; }; };
}
{{- else}}
# The learned routes go to the kernel, which forwards to the director
# with the lower MED.
protocol kernel {
	ipv4 { export filter { if source = RTS_BGP then accept; reject; }; };
}
{{- end}}

template bgp director {
	local as {{.RouterAS}};
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
	# A shared segment: a dead director's link stays up here, the hold
	# timer notices.
{{- end}}
	ipv4 { import filter from_director; export none; };
}
{{range .Directors}}
protocol bgp {{.Name}} from director {
	neighbor {{.Addr}} as {{$.DirectorAS}};
	source address {{.Local}};
}
{{end}}`))

type birdNeighbor struct {
	Name        string
	Addr, Local netip.Addr
}

// bgpAddrs sets the directors' addresses of a BGP lab: the uplink
// 198.18.1N.2/24 (router .1) and BGPAddr on BGPRealPeerPrefix.
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
	for _, d := range l.Directors {
		steps = append(steps, ipStep(d.NS, "addr", "add", d.BGPAddr.String(), "dev", d.RSIface))
	}
	if l.ecmp {
		steps = append(steps, l.ecmpSteps()...)
	}
	for _, r := range l.Reals {
		steps = append(steps,
			func() error { return r.SetSysctl("net.ipv4.conf.all.accept_redirects", "0") },
			ipStep(r.NS, "route", "replace", "default", "via", BGPRealGateway.String()),
		)
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
	for _, side := range []struct {
		name      string
		ns        *NS
		id        netip.Addr
		accepts   string
		filter    string
		checkLink bool
		local     func(*Director) netip.Addr
		neighbor  func(*Director) netip.Addr
	}{
		{BGPClientSide, l.Router, l.Directors[0].RouterAddr, "VIP host routes",
			VIPPrefix.String() + "{32,32}", true,
			func(d *Director) netip.Addr { return d.RouterAddr },
			func(d *Director) netip.Addr { return d.Uplink.Addr() }},
		{BGPRealSide, l.RealRouter, BGPRealPeer, "recovery addresses and the default route",
			RecoveryPrefix.String() + "{32,32}, 0.0.0.0/0", false,
			func(*Director) netip.Addr { return BGPRealPeer },
			func(d *Director) netip.Addr { return d.BGPAddr.Addr() }},
	} {
		var ns []birdNeighbor
		for _, d := range l.Directors {
			ns = append(ns, birdNeighbor{Name: BGPProtocol(d), Addr: side.neighbor(d), Local: side.local(d)})
		}
		var conf strings.Builder
		if err := birdRouterConf.Execute(&conf, map[string]any{
			"Side": side.name, "Lab": l.Prefix, "RouterID": side.id, "ECMP": l.ecmp,
			"Accepts": side.accepts, "Filter": side.filter, "CheckLink": side.checkLink,
			"RouterAS": BGPRouterAS, "DirectorAS": BGPDirectorAS,
			"Hold": int(BGPHoldTime.Seconds()), "Keepalive": int(BGPKeepalive.Seconds()),
			"Directors": ns,
		}); err != nil {
			return fmt.Errorf("lab: BIRD configuration: %w", err)
		}
		if _, err := l.startBIRD(side.ns, side.name, bin, conf.String()); err != nil {
			return err
		}
	}
	return nil
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

// BGPProtocolState is the state of director d's session on router
// (`birdc show protocols`: "Established", "Active", "Connect", ...; "" if
// BIRD does not say).
func (l *Lab) BGPProtocolState(ctx context.Context, router string, d *Director) (string, error) {
	out, err := l.Birdc(ctx, router, "show", "protocols", BGPProtocol(d))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(out, "\n") {
		// name proto table state since info: "director_a BGP --- up 03:12:40.123 Established"
		if f := strings.Fields(line); len(f) >= 6 && f[0] == BGPProtocol(d) {
			return f[5], nil
		}
	}
	return "", nil
}

// routeVia is the gateway of ns's kernel route to exactly p (invalid if
// it has none, or no gateway).
func routeVia(ns *NS, p netip.Prefix) (netip.Addr, error) {
	out, err := ns.IP("-o", "route", "show", "exact", p.String())
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

// BGPRoutes are the directors the routers' kernels send the traffic to
// now: the client-side router's route to VIP (its /32 from BGP) and the
// real-side router's default route; nil for a route that is not there.
func (l *Lab) BGPRoutes() (vip, reals *Director, err error) {
	cv, err := routeVia(l.Router, netip.PrefixFrom(VIP, 32))
	if err != nil {
		return nil, nil, err
	}
	rv, err := routeVia(l.RealRouter, netip.MustParsePrefix("0.0.0.0/0"))
	if err != nil {
		return nil, nil, err
	}
	for _, d := range l.Directors {
		if d.Uplink.Addr() == cv {
			vip = d
		}
		if d.BGPAddr.Addr() == rv {
			reals = d
		}
	}
	return vip, reals, nil
}

// WaitBGPActive waits (bounded by ctx) until both routers send the
// traffic to Directors[i]: the client-side router's VIP route and the
// real-side router's default route go through it.
func (l *Lab) WaitBGPActive(ctx context.Context, i int) error {
	if l.bgp == nil {
		return errors.New("lab: WaitBGPActive: not a BGP lab (Options.BGP)")
	}
	if i < 0 || i >= len(l.Directors) {
		return fmt.Errorf("lab: WaitBGPActive(%d): have %d directors", i, len(l.Directors))
	}
	want := l.Directors[i]
	for {
		vip, reals, err := l.BGPRoutes()
		if err != nil {
			return err
		}
		if vip == want && reals == want {
			return nil
		}
		// The kernel routes change when BIRD exports a new best route;
		// nothing announces it to the lab: poll.
		select {
		case <-ctx.Done():
			return fmt.Errorf("lab: routers not through director %s: VIP via %s, reals' default via %s: %w",
				want.Label, label(vip), label(reals), ctx.Err())
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
// route (which the kernel deleted with the link going down). Idempotent.
func (l *Lab) Replug(i int) error {
	d := l.Directors[i]
	for _, ifname := range []string{d.UplinkIface, d.RSIface} {
		if _, err := d.IP("link", "set", ifname, "up"); err != nil {
			return err
		}
	}
	_, err := d.IP("route", "replace", "default", "via", d.RouterAddr.String())
	return err
}

// bgpArgs are director d's --bgp-* flags in a BGP lab.
func bgpArgs(d *Director) []string {
	return []string{
		"--bgp-local-as", strconv.Itoa(BGPDirectorAS), "--bgp-peer-as", strconv.Itoa(BGPRouterAS),
		"--bgp-router-id", d.Uplink.Addr().String(),
		"--bgp-peer", d.RouterAddr.String(), "--bgp-real-peer", BGPRealPeer.String(),
		"--bgp-announce", "0.0.0.0/0", "--bgp-med", strconv.Itoa(BGPMED(d)),
		"--bgp-hold-time", BGPHoldTime.String(), "--bgp-keepalive", BGPKeepalive.String(),
	}
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
template bgp toward {
	local as {{.DirectorAS}};
	hold time {{.Hold}};
	keepalive time {{.Keepalive}};
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
// kernel-NAT anchor's announcer. Its name for BIRD and Birdc is
// "dir"+Label; the lab stops it on Close, a caller may kill it first.
func (l *Lab) StartDirectorBIRD(i int) (*Proc, error) {
	if l.bgp == nil {
		return nil, errors.New("lab: StartDirectorBIRD: not a BGP lab (Options.BGP)")
	}
	bin, err := exec.LookPath("bird")
	if err != nil {
		return nil, fmt.Errorf("lab: StartDirectorBIRD: %w", err)
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
	return l.startBIRD(d.NS, "dir"+d.Label, bin, conf.String())
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
// Established session with Directors[i]: it can take the traffic over.
func (l *Lab) WaitBGPEstablished(ctx context.Context, i int) error {
	if l.bgp == nil {
		return errors.New("lab: WaitBGPEstablished: not a BGP lab (Options.BGP)")
	}
	d := l.Directors[i]
	for {
		up := true
		var states []string
		for _, r := range []string{BGPClientSide, BGPRealSide} {
			st, err := l.BGPProtocolState(ctx, r, d)
			if err != nil && ctx.Err() == nil {
				return err
			}
			states = append(states, r+" "+st)
			up = up && st == "Established"
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
// moves after its hold timer, with room for a loaded machine.
const bgpFailoverTimeout = BGPHoldTime + 10*time.Second

// bgpStates is director d's session state on each router, for Status.
func (l *Lab) bgpStates(ctx context.Context, d *Director) string {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var out []string
	for _, r := range []string{BGPClientSide, BGPRealSide} {
		st, err := l.BGPProtocolState(ctx, r, d)
		if err != nil {
			st = "unknown"
		}
		out = append(out, r+" "+st)
	}
	return strings.Join(out, ", ")
}
