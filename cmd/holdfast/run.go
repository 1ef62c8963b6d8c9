package main

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"holdfast/balancer"
	"holdfast/internal/clock"
	"holdfast/nat"
	"holdfast/recovery"
	"holdfast/stack/host"
	"holdfast/stack/netstack"
	"holdfast/stack/pump"
	"holdfast/stack/tun"

	"github.com/rs/zerolog"
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

// runSettings is everything run needs, validated.
type runSettings struct {
	tun         string
	services    []*balancer.Service
	setupRoutes bool
	realIface   string
	routeTable  int
	tunMTU      int
	timeouts    nat.Timeouts
	maxFlows    int
	rec         recoverySettings
	adminSocket string
	metricsAddr string
	pprofAddr   string
	checks      balancer.CheckTiming
	offload     bool
	queues      int
	nice        int
	// reload reads --config (and the service flags) again, validated whole.
	reload func() ([]*balancer.Service, error)
}

func parseRun(c *cli.Context) (runSettings, error) {
	s := runSettings{
		tun:         c.String(tunFlag.Name),
		adminSocket: c.String(adminSocketFlag.Name),
		metricsAddr: c.String(metricsAddrFlag.Name),
		pprofAddr:   c.String(pprofAddrFlag.Name),
		offload:     c.Bool(tunOffloadFlag.Name),
		queues:      c.Int(tunQueuesFlag.Name),
		nice:        c.Int(packetNiceFlag.Name),
		reload:      func() ([]*balancer.Service, error) { return loadServices(c) },
		setupRoutes: c.Bool(setupRoutesFlag.Name),
		realIface:   c.String(realIfaceFlag.Name),
		routeTable:  c.Int(routeTableFlag.Name),
		tunMTU:      c.Int(tunMTUFlag.Name),
		maxFlows:    c.Int(maxFlowsFlag.Name),
	}
	if c.Args().Len() > 0 {
		return s, usagef("run: unexpected argument %q (every setting is a --flag)", c.Args().First())
	}
	if s.tun == "" || len(s.tun) > 15 {
		return s, usagef("--tun %q: expected an interface name of 1 to 15 characters", s.tun)
	}
	if s.adminSocket == "" {
		s.adminSocket = defaultAdminSocket(s.tun)
	}
	for _, a := range []struct{ flag, value string }{{metricsAddrFlag.Name, s.metricsAddr}, {pprofAddrFlag.Name, s.pprofAddr}} {
		if _, err := netip.ParseAddrPort(a.value); a.value != "" && err != nil {
			return s, usagef("--%s %q: expected ADDR:PORT, e.g. 127.0.0.1:9100", a.flag, a.value)
		}
	}
	if s.setupRoutes && s.realIface == "" {
		return s, usagef("--setup-routes needs --real-iface IFNAME (the interface facing the real servers)")
	}
	if s.routeTable < 1 || s.routeTable > 0xfffffff0 || s.routeTable == 253 || s.routeTable == 254 || s.routeTable == 255 {
		return s, usagef("--route-table %d: expected a table number other than 253, 254, 255 (default, main, local)", s.routeTable)
	}
	if s.queues < 1 || s.queues > 64 {
		return s, usagef("--tun-queues %d: expected 1..64", s.queues)
	}
	if s.nice < -20 || s.nice > 19 {
		return s, usagef("--packet-nice %d: expected -20..19 (0: leave the priority)", s.nice)
	}
	if s.queues > 1 && !s.offload {
		return s, usagef("--tun-queues %d: needs --tun-offload (a plain TUN has one queue)", s.queues)
	}
	if s.tunMTU != 0 && (s.tunMTU < 576 || s.tunMTU > 65535) {
		return s, usagef("--tun-mtu %d: expected 0 (auto) or 576..65535", s.tunMTU)
	}
	if s.maxFlows < 1 {
		return s, usagef("--max-flows %d: expected a positive number", s.maxFlows)
	}
	for _, f := range []*cli.DurationFlag{timeoutTCPFlag, timeoutTCPFinFlag, timeoutUDPFlag} {
		if c.Duration(f.Name) <= 0 {
			return s, usagef("--%s %s: expected a positive duration, e.g. %s", f.Name, c.Duration(f.Name), f.Value)
		}
	}
	s.checks = balancer.CheckTiming{
		Interval: c.Duration(checkIntervalFlag.Name), Timeout: c.Duration(checkTimeoutFlag.Name),
		Rise: c.Int(checkRiseFlag.Name), Fall: c.Int(checkFallFlag.Name),
	}
	if !c.IsSet(checkTimeoutFlag.Name) {
		// As HAProxy without "timeout check": a check may take the interval.
		s.checks.Timeout = min(s.checks.Timeout, s.checks.Interval)
	}
	if err := s.checks.Validate(); err != nil {
		return s, usagef("--check-interval/--check-timeout/--check-rise/--check-fall: %v", err)
	}
	s.timeouts = nat.NewTimeouts(c.Duration(timeoutTCPFlag.Name), c.Duration(timeoutTCPFinFlag.Name), c.Duration(timeoutUDPFlag.Name))
	var err error
	if s.services, err = loadServices(c); err != nil {
		return s, err
	}
	if s.rec, err = parseRecovery(c); err != nil {
		return s, err
	}
	return s, nil
}

func runAction(c *cli.Context) error {
	log, err := newLogger(c)
	if err != nil {
		return err
	}
	s, err := parseRun(c)
	if err != nil {
		return err
	}
	dev, err := openTUN(s.tun, s.offload, s.queues, log)
	if err != nil {
		return cli.Exit(err.Error(), exitRuntime)
	}
	defer dev.Close()

	mtu := s.tunMTU
	if s.setupRoutes {
		var prefixes []netip.Prefix
		for _, svc := range s.services {
			prefixes = append(prefixes, netip.PrefixFrom(svc.VIP.Addr(), svc.VIP.Addr().BitLen()))
		}
		for _, a := range s.rec.addrs {
			prefixes = append(prefixes, netip.PrefixFrom(a, a.BitLen()))
		}
		undo, err := host.SetupRoutes(host.RouteConfig{
			TUN: s.tun, RealIface: s.realIface, Prefixes: prefixes, Table: s.routeTable, MTU: s.tunMTU,
		}, log)
		if err != nil {
			return cli.Exit("--setup-routes: "+err.Error(), exitRuntime)
		}
		defer func() {
			if err := undo(); err != nil {
				log.Error().Err(err).Msg("removing routes")
			} else {
				log.Info().Msg("routes removed")
			}
		}()
	}
	if mtu == 0 {
		if mtu, err = host.LinkMTU(s.tun); err != nil {
			return cli.Exit(err.Error(), exitRuntime)
		}
	}

	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return serve(ctx, s, dev, mtu, log)
}

// serve runs the pump and its helpers until ctx ends or the pump fails.
func serve(ctx context.Context, s runSettings, dev tun.Device, mtu int, log zerolog.Logger) error {
	clk := clock.New()
	clk.Update()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var writeErrs atomic.Uint64
	write := func(b []byte) { // off the packet loop: netstack and recovery
		if err := tun.WritePacket(dev, b); err != nil {
			writeErrs.Add(1)
		}
	}
	cfg := nat.Config{Services: s.services, Timeouts: s.timeouts, MaxFlows: s.maxFlows}
	var ns *netstack.Stack
	if len(s.rec.addrs) > 0 {
		var err error
		if ns, err = netstack.New(s.rec.addrs, mtu, write, log); err != nil {
			return cli.Exit(err.Error(), exitRuntime)
		}
		defer ns.Close()
	}
	var eng *recovery.Engine
	if s.rec.enabled {
		mss := s.rec.mss
		if mss == 0 {
			mss = mtu - 40
		}
		eng = recovery.New(recovery.Config{Timeout: s.rec.timeout, Attempts: 3}, ns, write, clk.Now, log)
		cfg.Recovery = nat.RecoveryConfig{
			Enabled: true, Dialer: eng, Addrs: s.rec.addrs,
			PortLo: s.rec.portLo, PortHi: s.rec.portHi, WScale: s.rec.wscale, MSS: mss,
			Rate: float64(s.rec.rate), MaxInflight: s.rec.maxInflight, Allow: s.rec.allow,
			ParkBytes: s.rec.parkBytes, ParkFlowBytes: min(s.rec.parkBytes, 4<<20),
		}
	} else {
		cfg.Recovery = nat.RecoveryConfig{Addrs: s.rec.addrs}
	}
	d, err := nat.New(cfg)
	if err != nil {
		return usagef("%v", err)
	}
	if eng != nil {
		// The engine stops before the netstack it dials through closes
		// (deferred earlier, so run later).
		engCtx, stopEng := context.WithCancel(context.Background())
		engDone := make(chan struct{})
		go func() {
			defer close(engDone)
			if err := eng.Run(engCtx, d); err != nil {
				log.Error().Err(err).Msg("recovery engine")
			}
		}()
		defer func() { stopEng(); <-engDone }()
	}

	done := make(chan struct{})
	go func() { // clock: the packet path's only time source
		defer close(done)
		clk.Run(ctx, time.Millisecond)
	}()
	expired := make(chan struct{})
	go func() { // expiry: sweeps the flow table a slice at a time
		defer close(expired)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				d.Sweep(clk.Now(), 10000)
			}
		}
	}()

	var stk pump.Stack
	if ns != nil {
		stk = ns
	}
	pumps := pump.NewPumps(dev, func() pump.Handler { return d }, stk, clk, log)
	pumps.SetNice(s.nice)
	stats := func() map[string]any { return statsMap(d.Stats(), pumps, writeErrs.Load()) }
	stopAdmin, err := serveAdmin(s.adminSocket, (&admin{d: d, pump: pumps, clock: clk, stats: stats, log: log}).handler(), log)
	if err != nil {
		return cli.Exit(err.Error(), exitRuntime)
	}
	defer stopAdmin()
	if s.metricsAddr != "" {
		stopMetrics, err := serveMetrics(s.metricsAddr, &collector{d: d, pump: pumps, writeErrs: writeErrs.Load}, log)
		if err != nil {
			return cli.Exit(err.Error(), exitRuntime)
		}
		defer stopMetrics()
	}
	if s.pprofAddr != "" {
		stopPprof, err := servePprof(s.pprofAddr, log)
		if err != nil {
			return cli.Exit(err.Error(), exitRuntime)
		}
		defer stopPprof()
	}
	checker := balancer.NewChecker(s.checks, func(t balancer.Target, up bool, reason string) {
		proto, vip, err := balancer.ParseService(t.Service)
		if err == nil {
			err = d.SetDown(proto, vip, t.Addr, !up)
		}
		if err != nil {
			return // a target of a service or real that went away
		}
		ev, msg := log.Warn(), "real down"
		if up {
			ev, msg = log.Info(), "real up"
		}
		ev.Str(fService, t.Service).Str("real", t.Addr.String()).Str("check", t.Check.String()).Str("reason", reason).Msg(msg)
	})
	defer checker.Stop()
	setChecks(checker, d, s.services)
	watched := make(chan struct{})
	go func() { // events: logs what an operator must know, rate limited
		defer close(watched)
		watchEvents(ctx, d, log)
	}()

	pumpErr := make(chan error, 1)
	go func() { pumpErr <- pumps.Run() }()

	logStart(log, s, mtu)
	// SIGUSR1 logs the counters, as the exit does; SIGHUP reloads --config.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGHUP)
	defer signal.Stop(sigs)
wait:
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				reload(s, d, checker, log)
			} else {
				log.Info().Fields(stats()).Msg("counters")
			}
		case <-ctx.Done():
			if sig := context.Cause(ctx); sig != nil && !errors.Is(sig, context.Canceled) {
				log.Info().Str(fSignal, sig.Error()).Msg("stopping")
			} else {
				log.Info().Msg("stopping")
			}
			dev.Close()
			err = <-pumpErr
			break wait
		case err = <-pumpErr:
			if err != nil {
				log.Error().Err(err).Msg("packet loop failed")
			}
			break wait
		}
	}
	cancel()
	<-done
	<-expired
	<-watched
	log.Info().Fields(stats()).Msg("stopped")
	if err != nil {
		return cli.Exit("packet loop: "+err.Error(), exitRuntime)
	}
	return nil
}

// openTUN opens the TUN device, with segmentation and checksum offload
// (a virtio-net header) when asked and the kernel supports it.
func openTUN(name string, offload bool, queues int, log zerolog.Logger) (tun.Device, error) {
	if offload {
		dev, err := tun.OpenTUNOffload(name, queues)
		if err == nil {
			return dev, nil
		}
		log.Warn().Err(err).Msg("TUN offload unavailable; using a plain TUN (slower)")
	}
	return tun.OpenTUN(name)
}

// reload applies a new --config on SIGHUP. A file that does not validate is
// rejected whole: the running configuration stays.
func reload(s runSettings, d *nat.Director, checker *balancer.Checker, log zerolog.Logger) {
	svcs, err := s.reload()
	if err == nil {
		err = d.Reconfigure(svcs)
	}
	if err != nil {
		log.Error().Err(err).Msg("reload rejected; the running configuration stays")
		return
	}
	setChecks(checker, d, svcs)
	for _, svc := range svcs {
		logService(log, svc)
	}
	log.Info().Int("services", len(svcs)).Msg("reloaded")
}

// setChecks makes the checker probe the reals of svcs, and records the state
// of each (a real whose check changed starts up again).
func setChecks(checker *balancer.Checker, d *nat.Director, svcs []*balancer.Service) {
	var targets []balancer.Target
	for _, svc := range svcs {
		for _, r := range svc.Reals {
			targets = append(targets, balancer.Target{Service: svc.String(), Addr: r.Addr, Check: svc.Check})
		}
	}
	checker.Set(targets)
	for _, svc := range svcs {
		for _, t := range targets {
			if t.Service == svc.String() {
				up, _ := checker.State(t)
				d.SetDown(svc.Proto, svc.VIP, t.Addr, !up) //nolint:errcheck // the reals were just applied
			}
		}
	}
}

// statsMap is every counter, as logged (SIGUSR1, exit) and served (/stats).
func statsMap(st nat.Stats, pumps pump.Pumps, writeErrs uint64) map[string]any {
	ps := pumps.Stats()
	byQueue := make([]uint64, len(pumps))
	for i, p := range pumps {
		byQueue[i] = p.Stats().Read
	}
	drops := make(map[string]uint64)
	for _, r := range nat.DropReasons() {
		drops[r.String()] = st.Drop(r)
	}
	fails := make(map[string]uint64)
	for _, r := range nat.FailReasons() {
		fails[r.String()] = st.RecoveryFailed[r]
	}
	return map[string]any{
		"packets_read": ps.Read, "packets_read_by_queue": byQueue, "packets_written": ps.Written, "write_errors": ps.WriteErrors + writeErrs,
		fFlows: st.Flows, "flows_created": st.FlowsCreated, "flows_expired": st.FlowsExpired,
		"echo_replies": st.EchoReplies, "icmp_errors": st.ICMPErrors, "drops": drops,
		"recovery_started": st.RecoveryStarted, "recovered": st.RecoverySucceeded,
		"recovery_failed": fails, "client_resets": st.ClientResets,
		"adopted": st.Adopted, "adopt_aborts": st.AdoptAborts,
		"old_real_resets": st.OldRealResets, "stale_flows": st.StaleFlows,
		"parked": st.Parked, "inflight": st.Inflight,
	}
}

func logStart(log zerolog.Logger, s runSettings, mtu int) {
	for _, svc := range s.services {
		logService(log, svc)
	}
	addrs := zerolog.Arr()
	for _, a := range s.rec.addrs {
		addrs.Str(a.String())
	}
	log.Info().Bool("recovery", s.rec.enabled).Array("recovery_addrs", addrs).
		Str("recovery_ports", strconv.Itoa(int(s.rec.portLo))+"-"+strconv.Itoa(int(s.rec.portHi))).
		Int("recovery_wscale", s.rec.wscale).Dur("recovery_timeout", s.rec.timeout).
		Int("recovery_rate", s.rec.rate).Int("recovery_max_inflight", s.rec.maxInflight).Msg("recovery")
	log.Info().Str(fTUN, s.tun).Int("mtu", mtu).Bool("setup_routes", s.setupRoutes).Bool("tun_offload", s.offload).Int("tun_queues", s.queues).Int("packet_nice", s.nice).
		Int("max_flows", s.maxFlows).Str("admin_socket", s.adminSocket).Str("metrics_addr", s.metricsAddr).
		Int("pid", os.Getpid()).Msg("serving")
}

func logService(log zerolog.Logger, svc *balancer.Service) {
	reals := zerolog.Arr()
	for _, r := range svc.Reals {
		reals.Str(r.Addr.String() + "*" + strconv.Itoa(r.Weight))
	}
	log.Info().Str(fService, svc.String()).Str(fScheduler, svc.Scheduler.Name()).
		Dur("persistence", svc.Persistence).Array(fReals, reals).Msg("service")
}
