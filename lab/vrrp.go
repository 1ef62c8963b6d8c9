package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Addresses of a VRRP lab (Options.VRRP), in 198.18.0.0/15 like the rest.
var (
	// UplinkPrefix is the segment the router and the directors share: the
	// router is .1, director A .2, B .3.
	UplinkPrefix = netip.MustParsePrefix("198.18.2.0/24")
	// VRRPNextHop floats on the uplink segment: the router's next hop for
	// VIPPrefix. Only this address is ever assigned, never a VIP: a director
	// holding a VIP would answer for it with its own kernel (RST) instead of
	// routing it into the TUN.
	VRRPNextHop = netip.MustParseAddr("198.18.2.254")
	// VRRPGateway floats on the real-server segment: the reals' default
	// gateway, so their replies (to clients and to the recovery address)
	// reach the director that has the flows.
	VRRPGateway = netip.MustParseAddr("198.18.10.1")
)

const (
	// UplinkBridgeName is the uplink segment of a VRRP lab: a bridge in the
	// router namespace holding the router's address, with the router ends
	// of the director links (dA0, dB0) as its ports.
	UplinkBridgeName = "br1"
	// HealthTUN is the TUN whose presence keepalived's health check tests:
	// HoldfastArgs's --tun. holdfast creates it at start and the kernel
	// deletes it when the process dies, however it dies, so "the TUN
	// exists" is "this namespace's holdfast runs" (holdfast processes in
	// other namespaces share the PID space, so a process check could not
	// tell them apart).
	HealthTUN = "hf0"

	vridUplink = 51
	vridReals  = 52
)

// vrrpState is what a VRRP lab adds: the keepalived processes (one per
// director, in Directors order) and the directory holding their
// configuration and PID files. Set once in New, read-only after.
type vrrpState struct {
	dir        string
	keepalived []*Proc
}

// keepalivedConf is the configuration of one director's keepalived. The
// comments in it say why each setting is there; deploy/keepalived.conf is
// the commented version for real directors.
var keepalivedConf = template.Must(template.New("keepalived.conf").Parse(`# keepalived for director {{.Label}} of lab {{.Lab}}: written by holdfast's
# namespace lab, removed with it. See deploy/keepalived.conf.
global_defs {
    router_id {{.Lab}}dir{{.Label}}
    # Sub-second advert_int needs VRRPv3 (v2 counts whole seconds).
    vrrp_version 3
    # The check is ip(8), root-owned: run it as root, and refuse scripts
    # a non-root user could change.
    script_user root
    enable_script_security
    # {{.TUN}} exists only while holdfast runs: tracking it must survive its
    # absence at start and its deletion and re-creation.
    dynamic_interfaces
    # On becoming master: gratuitous ARPs right away (the router and the
    # reals switch MACs on the first), a second round 1 s later.
    vrrp_garp_master_repeat 3
    vrrp_garp_master_delay 1
}

# Fails when this namespace's holdfast is not running.
vrrp_script holdfast_up {
    script "{{.IP}} link show {{.TUN}}"
    interval 1
    timeout 1
    fall 1
    rise 1
    # Not master-eligible before the first check says holdfast runs.
    init_fail
}

# Both floating addresses move together: a director is the next hop of the
# clients' packets exactly when it is the reals' gateway.
vrrp_sync_group holdfast {
    group {
        uplink
        reals
    }
    # Unweighted: failure puts the whole group in FAULT, which releases the
    # addresses and tells the peer (priority 0 advert) to take over now.
    track_script {
        holdfast_up
    }
    # The same fact seen through netlink: the TUN's deletion is reported the
    # moment the process dies, where the script looks once a second.
    track_interface {
        {{.TUN}}
    }
}

vrrp_instance uplink {
    state BACKUP
    interface {{.Uplink}}
    virtual_router_id {{.VRIDUplink}}
    priority {{.Priority}}
    advert_int {{.AdvertInt}}
    # A director that comes back (failback) stays backup: moving traffic
    # again would only make every connection recover a second time.
    nopreempt
    virtual_ipaddress {
        {{.NextHop}}/32 dev {{.Uplink}}
    }
}

vrrp_instance reals {
    state BACKUP
    interface {{.RSIface}}
    virtual_router_id {{.VRIDReals}}
    priority {{.Priority}}
    advert_int {{.AdvertInt}}
    nopreempt
    virtual_ipaddress {
        {{.Gateway}}/32 dev {{.RSIface}}
    }
}
`))

// vrrpAdvertInt is the advert interval: a backup declares the master dead
// after 3 missed adverts (plus skew), so this bounds the takeover when a
// master vanishes without a word. A master whose holdfast dies says so
// itself (priority 0), and the takeover takes the skew time only.
const vrrpAdvertInt = "0.1"

// vrrpUplinkSteps creates the uplink segment: the bridge and the router's
// address on it.
func (l *Lab) vrrpUplinkSteps() []func() error {
	return []func() error{
		ipStep(l.Router, "link", "add", UplinkBridgeName, "type", "bridge"),
		ipStep(l.Router, "link", "set", UplinkBridgeName, "up"),
		ipStep(l.Router, "addr", "add", netip.PrefixFrom(l.Directors[0].RouterAddr, UplinkPrefix.Bits()).String(), "dev", UplinkBridgeName),
	}
}

// vrrpRoutes points the router and the reals at the floating addresses,
// once: from then on keepalived moves the addresses, not the routes.
func (l *Lab) vrrpRoutes() error {
	if _, err := l.Router.IP("route", "replace", VIPPrefix.String(), "via", VRRPNextHop.String()); err != nil {
		return err
	}
	for _, r := range l.Reals {
		if _, err := r.IP("route", "replace", "default", "via", VRRPGateway.String()); err != nil {
			return err
		}
	}
	return nil
}

// startVRRP writes a keepalived configuration per director into a fresh
// temporary directory, checks it, and starts keepalived in each director's
// namespace. Close stops them and removes the directory.
func (l *Lab) startVRRP() error {
	bin, err := exec.LookPath("keepalived")
	if err != nil {
		return fmt.Errorf("lab: Options.VRRP needs keepalived (Debian package keepalived): %w", err)
	}
	ip, err := exec.LookPath("ip")
	if err != nil {
		return fmt.Errorf("lab: Options.VRRP: %w", err)
	}
	// keepalived runs the health check by absolute path, and with
	// enable_script_security only if no directory on it is writable by
	// others: resolve symlinks (/sbin -> usr/sbin) so it checks the real one.
	if ip, err = filepath.EvalSymlinks(ip); err != nil {
		return fmt.Errorf("lab: Options.VRRP: %w", err)
	}
	dir, err := os.MkdirTemp("", "holdfast-lab-vrrp-")
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	v := &vrrpState{dir: dir}
	if err := l.register(nil, v.stop); err != nil {
		return errors.Join(err, os.RemoveAll(dir))
	}
	l.vrrp = v

	for i, d := range l.Directors {
		conf := filepath.Join(dir, "keepalived-"+d.Label+".conf")
		var b strings.Builder
		err := keepalivedConf.Execute(&b, map[string]any{
			"Lab":        l.Prefix,
			"Label":      d.Label,
			"IP":         ip,
			"TUN":        HealthTUN,
			"Uplink":     d.UplinkIface,
			"RSIface":    d.RSIface,
			"NextHop":    VRRPNextHop,
			"Gateway":    VRRPGateway,
			"VRIDUplink": vridUplink,
			"VRIDReals":  vridReals,
			// Only the first election uses it (nopreempt): A wins when
			// both become eligible together.
			"Priority":  150 - 50*i,
			"AdvertInt": vrrpAdvertInt,
		})
		if err != nil {
			return fmt.Errorf("lab: keepalived configuration: %w", err)
		}
		if err := os.WriteFile(conf, []byte(b.String()), 0o600); err != nil {
			return fmt.Errorf("lab: %w", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := d.Run(ctx, bin, "--config-test", "-f", conf)
		cancel()
		if err != nil {
			return fmt.Errorf("lab: director %s: keepalived rejects %s: %w\n%s", d.Label, conf, err, out)
		}
		// In the foreground (the PID is keepalived's own, and it dies with
		// the lab's process), VRRP only, logging to stderr; PID files in
		// the lab's directory, so several labs and a system keepalived do
		// not take each other for "already running".
		p, err := d.Start("keepalived-"+d.Label, bin,
			"--dont-fork", "--vrrp", "--log-console", "--log-detail", "--no-syslog",
			"--use-file", conf,
			"--pid", filepath.Join(dir, "keepalived-"+d.Label+".pid"),
			"--vrrp_pid", filepath.Join(dir, "vrrp-"+d.Label+".pid"))
		if err != nil {
			return err
		}
		v.keepalived = append(v.keepalived, p)
		// Ready once its VRRP process has set up the instances, which start
		// in FAULT (no holdfast runs yet).
		ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
		err = l.WaitVRRPState(ctx, i, VRRPFaultState)
		cancel()
		if err != nil {
			return fmt.Errorf("lab: keepalived not ready: %w", err)
		}
	}
	return nil
}

// stop ends the keepalived processes (SIGTERM, by PID: each removes its
// floating addresses and tells its peer) and removes the directory. One that
// does not exit in time is left to the lab's SIGKILL.
func (v *vrrpState) stop() error { return stopProcs(v.keepalived, v.dir) }

// stopProcs sends each of procs SIGTERM (by PID), waits up to 5 s for each
// to exit (one that does not is left to the lab's SIGKILL) and removes dir,
// their configuration.
func stopProcs(procs []*Proc, dir string) error {
	var errs []error
	for _, p := range procs {
		if err := p.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			errs = append(errs, fmt.Errorf("lab: SIGTERM %s (pid %d): %w", p.Name, p.PID(), err))
		}
	}
	for _, p := range procs {
		select {
		case <-p.Done():
		case <-time.After(5 * time.Second):
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, fmt.Errorf("lab: %w", err))
	}
	return errors.Join(errs...)
}

// Keepalived returns the keepalived process of Directors[i] (its log is the
// VRRP state history), or nil if the lab does not run VRRP.
func (l *Lab) Keepalived(i int) *Proc {
	if l.vrrp == nil || i < 0 || i >= len(l.vrrp.keepalived) {
		return nil
	}
	return l.vrrp.keepalived[i]
}

// VRRP states, as keepalived names them.
const (
	VRRPMasterState = "MASTER"
	VRRPBackupState = "BACKUP"
	VRRPFaultState  = "FAULT" // not eligible: its holdfast does not run
)

// stateLine matches keepalived's state transitions, e.g. "(uplink) Entering
// MASTER STATE", "(reals): entering FAULT state (interface hf0 down)".
var stateLine = regexp.MustCompile(`\((uplink|reals)\):? [Ee]ntering (MASTER|BACKUP|FAULT) (?:STATE|state)`)

// VRRPState is the state of Directors[i]'s keepalived, from its log: one of
// the VRRP*State constants when both instances (uplink and reals) are in it,
// "" before keepalived said anything, or both states ("uplink MASTER, reals
// BACKUP") while the sync group is moving.
func (l *Lab) VRRPState(i int) string {
	p := l.Keepalived(i)
	if p == nil {
		return ""
	}
	return parseVRRPState(p.Lines())
}

func parseVRRPState(lines []Line) string {
	var uplink, reals string
	for _, ln := range lines {
		if m := stateLine.FindStringSubmatch(ln.Text); m != nil {
			if m[1] == "uplink" {
				uplink = m[2]
			} else {
				reals = m[2]
			}
		}
	}
	if uplink == reals {
		return uplink
	}
	return "uplink " + uplink + ", reals " + reals
}

// WaitVRRPState waits until Directors[i]'s keepalived reports state (one of
// the VRRP*State constants), ctx ends, or it exits. It follows the log, so
// the answer is as fresh as keepalived's own view; for "who gets the
// traffic", which is the addresses, use WaitVRRPMaster.
func (l *Lab) WaitVRRPState(ctx context.Context, i int, state string) error {
	p := l.Keepalived(i)
	if p == nil {
		return fmt.Errorf("lab: WaitVRRPState(%d): the lab does not run VRRP or has no director %d", i, i)
	}
	for {
		lines := p.Lines()
		if parseVRRPState(lines) == state {
			return nil
		}
		// Wake on the next line after those seen.
		seen := 0
		_, err := p.WaitForLine(ctx, func(Line) bool { seen++; return seen > len(lines) })
		if err != nil {
			return fmt.Errorf("lab: director %s: keepalived in %q, not %s: %w\n%s",
				l.Directors[i].Label, parseVRRPState(p.Lines()), state, err, tailLines(p.Lines(), 30))
		}
	}
}

// floating reports, for each director, whether it holds VRRPNextHop and
// VRRPGateway.
func (l *Lab) floating() ([][2]bool, error) {
	held := make([][2]bool, len(l.Directors))
	for i, d := range l.Directors {
		addrs, err := d.addrs()
		if err != nil {
			return nil, err
		}
		for _, a := range addrs {
			held[i][0] = held[i][0] || a == VRRPNextHop
			held[i][1] = held[i][1] || a == VRRPGateway
		}
	}
	return held, nil
}

// addrs lists the IPv4 addresses of every interface in n, through netlink
// (no process per call: WaitVRRPMaster polls it).
func (n *NS) addrs() ([]netip.Addr, error) {
	ns, err := netns.GetFromName(n.Name)
	if err != nil {
		return nil, fmt.Errorf("lab: netns %s: %w", n.Name, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, syscall.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("lab: netlink in %s: %w", n.Name, err)
	}
	defer h.Close()
	for {
		list, err := h.AddrList(nil, netlink.FAMILY_V4)
		if errors.Is(err, netlink.ErrDumpInterrupted) {
			continue // the addresses changed during the dump: read them again
		}
		if err != nil {
			return nil, fmt.Errorf("lab: %s: list addresses: %w", n.Name, err)
		}
		out := make([]netip.Addr, 0, len(list))
		for _, a := range list {
			if ip, ok := netip.AddrFromSlice(a.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
		return out, nil
	}
}

// VRRPMaster returns the director that holds both floating addresses while
// no other director holds either, or nil when there is none: no holdfast
// runs, or mastership is moving (keepalived moves the two addresses one after
// the other). It fails if the lab does not run VRRP.
func (l *Lab) VRRPMaster() (*Director, error) {
	if l.vrrp == nil {
		return nil, errors.New("lab: VRRPMaster: the lab does not run VRRP (Options.VRRP)")
	}
	held, err := l.floating()
	if err != nil {
		return nil, err
	}
	return master(l.Directors, held), nil
}

func master(ds []*Director, held [][2]bool) *Director {
	var m *Director
	for i, h := range held {
		switch {
		case h == [2]bool{true, true} && m == nil:
			m = ds[i]
		case h != [2]bool{}:
			return nil // a second holder, or one address only
		}
	}
	return m
}

// vrrpPoll is how often WaitVRRPMaster looks at the addresses: it bounds the
// error of a measured takeover time.
const vrrpPoll = 5 * time.Millisecond

// WaitVRRPMaster waits until Directors[i] is the VRRP master (VRRPMaster),
// ctx ends, or a keepalived exits. The error says who held which address
// and ends with each keepalived's recent log.
func (l *Lab) WaitVRRPMaster(ctx context.Context, i int) error {
	if l.vrrp == nil {
		return errors.New("lab: WaitVRRPMaster: the lab does not run VRRP (Options.VRRP)")
	}
	if i < 0 || i >= len(l.Directors) {
		return fmt.Errorf("lab: WaitVRRPMaster(%d): have %d directors", i, len(l.Directors))
	}
	want := l.Directors[i]
	tick := time.NewTicker(vrrpPoll)
	defer tick.Stop()
	var held [][2]bool
	for {
		var err error
		held, err = l.floating()
		if err != nil {
			return err
		}
		if master(l.Directors, held) == want {
			return nil
		}
		for _, p := range l.vrrp.keepalived {
			select {
			case <-p.Done():
				return fmt.Errorf("lab: waiting for director %s to be VRRP master: %s exited\n%s", want.Label, p.Name, l.vrrpLogs())
			default:
			}
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("lab: director %s not VRRP master (%s): %w\n%s", want.Label, l.describe(held), ctx.Err(), l.vrrpLogs())
		}
	}
}

// describe says who holds which floating address.
func (l *Lab) describe(held [][2]bool) string {
	var parts []string
	for i, h := range held {
		var has []string
		if h[0] {
			has = append(has, VRRPNextHop.String())
		}
		if h[1] {
			has = append(has, VRRPGateway.String())
		}
		if len(has) == 0 {
			has = append(has, "nothing")
		}
		parts = append(parts, l.Directors[i].Label+" holds "+strings.Join(has, ", "))
	}
	return strings.Join(parts, "; ")
}

// vrrpLogs is the tail of every keepalived's log.
func (l *Lab) vrrpLogs() string {
	var b strings.Builder
	for _, p := range l.vrrp.keepalived {
		fmt.Fprintf(&b, "%s (pid %d):\n%s", p.Name, p.PID(), tailLines(p.Lines(), 30))
	}
	return b.String()
}

func tailLines(lines []Line, n int) string {
	var b strings.Builder
	if len(lines) > n {
		fmt.Fprintf(&b, "  [... %d lines before]\n", len(lines)-n)
		lines = lines[len(lines)-n:]
	}
	for _, l := range lines {
		b.WriteString("  ")
		b.WriteString(l.Text)
		b.WriteByte('\n')
	}
	return b.String()
}
