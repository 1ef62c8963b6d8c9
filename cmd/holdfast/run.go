package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"holdfast/balancer"
	"holdfast/daemon"
	"holdfast/internal/unixhttp"
	"holdfast/nat"

	"github.com/urfave/cli/v2"
)

func runCommand() *cli.Command {
	return &cli.Command{
		Name:         "run",
		Usage:        "run a director: NAT the services' VIPs to their real servers through a TUN device",
		Flags:        runFlags(),
		OnUsageError: usageError,
		Action:       runAction,
	}
}

// parseRun turns the flags and --config into the daemon's Config, validated
// with messages that name the flags.
func parseRun(c *cli.Context) (daemon.Config, error) {
	s := daemon.Config{
		TUN:         c.String(tunFlag.Name),
		AdminSocket: c.String(adminSocketFlag.Name),
		MetricsAddr: c.String(metricsAddrFlag.Name),
		PprofAddr:   c.String(pprofAddrFlag.Name),
		Offload:     c.Bool(tunOffloadFlag.Name),
		Queues:      c.Int(tunQueuesFlag.Name),
		Nice:        c.Int(packetNiceFlag.Name),
		Reload:      reloadServices(c),
		Routes: daemon.Routes{
			Setup:     c.Bool(setupRoutesFlag.Name),
			RealIface: c.String(realIfaceFlag.Name),
			Table:     c.Int(routeTableFlag.Name),
		},
		MTU:           c.Int(tunMTUFlag.Name),
		MaxFlows:      c.Int(maxFlowsFlag.Name),
		HandleSignals: true,
		NotifySocket:  os.Getenv("NOTIFY_SOCKET"),
	}
	if c.Args().Len() > 0 {
		return s, usagef("run: unexpected argument %q (every setting is a --flag)", c.Args().First())
	}
	if !validIfName(s.TUN) {
		return s, usagef("--tun %q: expected an interface name: 1 to 15 characters, no '/', ':' or space, not . or ..", s.TUN)
	}
	if s.AdminSocket == "" {
		s.AdminSocket = defaultAdminSocket(s.TUN)
	}
	for _, a := range []struct{ flag, value string }{{metricsAddrFlag.Name, s.MetricsAddr}, {pprofAddrFlag.Name, s.PprofAddr}} {
		if _, err := netip.ParseAddrPort(a.value); a.value != "" && err != nil {
			return s, usagef("--%s %q: expected ADDR:PORT, e.g. 127.0.0.1:9100", a.flag, a.value)
		}
	}
	if s.Routes.Setup && s.Routes.RealIface == "" {
		return s, usagef("--setup-routes needs --real-iface IFNAME (the interface facing the real servers)")
	}
	if t := s.Routes.Table; t < 1 || t > 0xfffffff0 || t == 253 || t == 254 || t == 255 {
		return s, usagef("--route-table %d: expected a table number other than 253, 254, 255 (default, main, local)", t)
	}
	if s.Queues < 1 || s.Queues > 64 {
		return s, usagef("--tun-queues %d: expected 1..64", s.Queues)
	}
	if s.Nice < -20 || s.Nice > 19 {
		return s, usagef("--packet-nice %d: expected -20..19 (0: leave the priority)", s.Nice)
	}
	if s.Queues > 1 && !s.Offload {
		return s, usagef("--tun-queues %d: needs --tun-offload (a plain TUN has one queue)", s.Queues)
	}
	if s.MTU != 0 && (s.MTU < 576 || s.MTU > 65535) {
		return s, usagef("--tun-mtu %d: expected 0 (auto) or 576..65535", s.MTU)
	}
	if s.MaxFlows < 1 {
		return s, usagef("--max-flows %d: expected a positive number", s.MaxFlows)
	}
	for _, f := range []*cli.DurationFlag{timeoutTCPFlag, timeoutTCPFinFlag, timeoutUDPFlag} {
		if c.Duration(f.Name) <= 0 {
			return s, usagef("--%s %s: expected a positive duration, e.g. %s", f.Name, c.Duration(f.Name), f.Value)
		}
	}
	s.Checks = balancer.CheckTiming{
		Interval: c.Duration(checkIntervalFlag.Name), Timeout: c.Duration(checkTimeoutFlag.Name),
		Rise: c.Int(checkRiseFlag.Name), Fall: c.Int(checkFallFlag.Name),
	}
	if !c.IsSet(checkTimeoutFlag.Name) {
		// As HAProxy without "timeout check": a check may take the interval.
		s.Checks.Timeout = min(s.Checks.Timeout, s.Checks.Interval)
	}
	if err := s.Checks.Validate(); err != nil {
		return s, usagef("--check-interval/--check-timeout/--check-rise/--check-fall: %v", err)
	}
	s.Timeouts = nat.NewTimeouts(c.Duration(timeoutTCPFlag.Name), c.Duration(timeoutTCPFinFlag.Name), c.Duration(timeoutUDPFlag.Name))
	var err error
	if s.FastPath, err = parseFastPath(c); err != nil {
		return s, err
	}
	if s.Services, err = loadServices(c); err != nil {
		return s, err
	}
	if s.Recovery, err = parseRecovery(c); err != nil {
		return s, err
	}
	if s.BGP, err = parseBGP(c); err != nil {
		return s, err
	}
	switch v := c.String(adoptionFlag.Name); v {
	case "auto":
	case "on":
		s.Adoption = nat.AdoptOn
	case "off":
		s.Adoption = nat.AdoptOff
	default:
		return s, usagef("--%s %q: expected auto, on or off", adoptionFlag.Name, v)
	}
	if err := recoveryClear(s.Recovery, s.Services, c.IsSet(recoveryPortsFlag.Name)); err != nil {
		return s, err
	}
	for _, svc := range s.Services {
		// The reals' cookie ids (nat.New assigns them again): a
		// collision is the configuration's fault.
		if _, err := balancer.AssignCookieIDs(svc, s.Recovery.CookieBits); err != nil {
			return s, usagef("%v", err)
		}
	}
	return s, nil
}

func runAction(c *cli.Context) error {
	log, err := newLogger(c)
	if err != nil {
		return err
	}
	cfg, err := parseRun(c)
	if err != nil {
		return err
	}
	if err := daemon.Run(c.Context, cfg, log); err != nil {
		return runError(err, cfg)
	}
	return nil
}

// runError gives a daemon error its exit code (usage or runtime) and, for
// the parts a flag configures, the flag's name.
func runError(err error, cfg daemon.Config) error {
	code := exitRuntime
	if errors.Is(err, daemon.ErrInvalid) {
		code = exitUsage
	}
	var de *daemon.Error
	if !errors.As(err, &de) {
		return cli.Exit(err.Error(), code)
	}
	msg := de.Err.Error()
	switch de.Part {
	case daemon.PartRoutes:
		msg = "--" + setupRoutesFlag.Name + ": " + msg
	case daemon.PartAdmin:
		if errors.Is(err, unixhttp.ErrInUse) {
			msg = fmt.Sprintf("--%s %s: another holdfast is listening there (use another --%s or --%s)", adminSocketFlag.Name, cfg.AdminSocket, tunFlag.Name, adminSocketFlag.Name)
		} else {
			msg = "--" + adminSocketFlag.Name + ": " + msg
		}
	case daemon.PartMetrics:
		msg = "--" + metricsAddrFlag.Name + " " + cfg.MetricsAddr + ": " + msg
	case daemon.PartPprof:
		msg = "--" + pprofAddrFlag.Name + " " + cfg.PprofAddr + ": " + msg
	case daemon.PartPackets:
		msg = "packet loop: " + msg
	}
	return cli.Exit(msg, code)
}

// validIfName is the kernel's rule for an interface name (dev_valid_name):
// 1 to 15 bytes, not "." or "..", no '/', ':' or white space.
func validIfName(name string) bool {
	if name == "" || len(name) > 15 || name == "." || name == ".." {
		return false
	}
	return !strings.ContainsAny(name, "/: \t\n\r\v\f")
}

// recoveryClear refuses a recovery address that is a VIP or a real (nat
// refuses it too, without naming the flag) and an explicit --recovery-ports
// range holding a service's port (its VIP's or a real's): a recovered
// connection from the recovery address's port 80 to a real reads, on the
// reals' side, as a reply of the web service, which stateless filters
// ("source port 80, let it in") pass and captures mislabel. A range derived
// from --director-id is not the operator's choice to refuse: the allocator
// never dials a real from the real's own port (nat portAlloc.get). With
// recovery on, each service needs a recovery address of its own IP version
// (daemon.Recovery.Serves).
func recoveryClear(r daemon.Recovery, svcs []*balancer.Service, explicitPorts bool) error {
	if err := r.Serves(svcs); err != nil {
		return usagef("%v: give --%s an address of that version too, or --%s=off", err, recoveryAddrFlag.Name, recoveryFlag.Name)
	}
	for _, svc := range svcs {
		for _, a := range r.Addrs {
			if a == svc.VIP.Addr() {
				return usagef("--%s %s: is the VIP of service %s (a recovery address is the director's own, routed to it, never a VIP or a real)", recoveryAddrFlag.Name, a, svc)
			}
			for _, rl := range svc.Reals {
				if a == rl.Addr.Addr() {
					return usagef("--%s %s: is a real of service %s (a recovery address is the director's own, routed to it, never a VIP or a real)", recoveryAddrFlag.Name, a, svc)
				}
			}
		}
		if !explicitPorts {
			continue
		}
		ports := []uint16{svc.VIP.Port()}
		for _, rl := range svc.Reals {
			ports = append(ports, rl.Addr.Port())
		}
		for _, p := range ports {
			if p >= r.PortLo && p <= r.PortHi {
				return usagef("--%s %d-%d: holds port %d of service %s; a recovered connection from it reads as the service's reply on the reals' side: choose a range clear of the services' ports", recoveryPortsFlag.Name, r.PortLo, r.PortHi, p, svc)
			}
		}
	}
	return nil
}
