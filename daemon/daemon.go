package daemon

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"holdfast/balancer"
	"holdfast/bfd"
	"holdfast/bgp"
	"holdfast/internal/clock"
	"holdfast/internal/unixhttp"
	"holdfast/nat"
	"holdfast/stack/host"
	"holdfast/stack/pump"
	"holdfast/stack/tun"

	"github.com/rs/zerolog"
)

// Log field names.
const (
	fService   = "service"
	fScheduler = "scheduler"
	fReals     = "reals"
	fTUN       = "tun"
	fSignal    = "signal"
	fStage     = "stage"
)

// Sweep of the flow table: every expiryEvery, at most expiryBudget slots,
// which bounds the time the director's lock is held.
const (
	expiryEvery  = 100 * time.Millisecond
	expiryBudget = 10000
)

// clockResolution is the packet path's time step (see internal/clock).
const clockResolution = time.Millisecond

// runner is one Run: what the stages and handlers share.
type runner struct {
	cfg     Config
	log     zerolog.Logger
	clk     *clock.Clock
	d       *nat.Director
	checker *balancer.Checker
	// checksMu orders setChecks calls (a reload and an admin change may
	// race): the last to read the Director's reals is the last to Set.
	checksMu sync.Mutex
	// changeMu orders the changes to the Director's services: a reload
	// reads the running services, merges the file into them and applies
	// the merge; an admin change in between would be undone by it.
	changeMu sync.Mutex
	src      *sources
	// file is the services as the reload source last gave them (at start:
	// Config.Services), to tell which reals a reload changes (reload.go).
	// Only the main loop reads and writes it.
	file fileState
	// bgp is the speaker (nil without BGP) and announceStop ends its
	// announcing stage (bgp.go).
	bgp          *bgp.Speaker
	bfd          *bfd.Server // nil without BFD
	announceStop chan struct{}
}

// Run runs a director until ctx ends (or, with cfg.HandleSignals, SIGINT or
// SIGTERM), then stops everything it started and returns. An error is an
// *Error naming the part that failed; errors.Is(err, ErrInvalid) for a
// Config that cannot work.
func Run(ctx context.Context, cfg Config, log zerolog.Logger) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The stages run under runCtx: a SIGTERM ends the wait below (ctx),
	// not the stages, which keep the director working (clock, sweeps,
	// recoveries) through the BGP drain; stopAll ends them.
	runCtx := ctx
	if cfg.HandleSignals {
		var stop context.CancelFunc
		ctx, stop = signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
		defer stop()
	}

	// The admin socket before the TUN and the routes: a director whose
	// socket is taken (another one in this network namespace with the same
	// TUN name, or the same --admin-socket) refuses to start having
	// changed nothing.
	var adminLn net.Listener
	if cfg.AdminSocket != "" {
		if adminLn, err = listenAdmin(cfg.AdminSocket); err != nil {
			if cfg.Device != nil {
				cfg.Device.Close() // Run closes a device it was given
			}
			return err
		}
		defer func() {
			if adminLn != nil { // an error came before serving it
				adminLn.Close()
			}
		}()
	}

	dev := cfg.Device
	if dev == nil {
		if dev, err = openTUN(cfg.TUN, cfg.Offload, cfg.Queues, log); err != nil {
			return runtimeError(PartDevice, err)
		}
	}
	defer dev.Close()
	if cfg.Routes.Setup {
		undo, err := setupRoutes(cfg, log)
		if err != nil {
			return err
		}
		defer func() {
			if err := undo(); err != nil {
				log.Error().Err(err).Msg("removing routes")
			} else {
				log.Info().Msg("routes removed")
			}
		}()
	}
	mtu := cfg.MTU
	if mtu == 0 {
		if mtu, err = host.LinkMTU(cfg.TUN); err != nil {
			return runtimeError(PartDevice, err)
		}
	}

	st := newStages(log)
	defer st.stopAll() // on an error before serving; a no-op after the stop below
	r := &runner{cfg: cfg, log: log, clk: clock.New(), file: fileStateOf(cfg.Services)}
	r.clk.Update()
	st.run(runCtx, PartClock, func(ctx context.Context) error { r.clk.Run(ctx, clockResolution); return nil }, nil)

	var writeErrs atomic.Uint64
	write := func(b []byte) { // the netstack, the recovery engine, the Director's own packets
		if err := tun.WritePacket(dev, b); err != nil {
			writeErrs.Add(1)
		}
	}
	d, ns, err := newDirector(runCtx, cfg, mtu, write, r.clk, st, log)
	if err != nil {
		return err
	}
	r.d = d
	st.run(runCtx, PartExpiry, r.expire, nil)
	if err := r.startFastPath(runCtx, st); err != nil {
		return err
	}

	var stk pump.Stack
	r.src = &sources{d: d, writeErrs: &writeErrs}
	if ns != nil {
		stk, r.src.stray = ns, ns.Stray
	}
	pumps := pump.NewPumps(dev, func() pump.Handler { return d }, stk, r.clk, log)
	pumps.SetNice(cfg.Nice)
	r.src.pumps = pumps

	if adminLn != nil {
		st.own(string(PartAdmin), unixhttp.ServeListener(adminLn, r.adminHandler(), log))
		adminLn = nil // the stage stops it
	}
	if cfg.MetricsAddr != "" {
		stop, err := serveHTTP(PartMetrics, cfg.MetricsAddr, metricsHandler(newCollector(r.src)), log)
		if err != nil {
			return err
		}
		st.own(string(PartMetrics), stop)
	}
	if cfg.PprofAddr != "" {
		stop, err := serveHTTP(PartPprof, cfg.PprofAddr, pprofHandler(), log)
		if err != nil {
			return err
		}
		st.own(string(PartPprof), stop)
	}
	r.checker = balancer.NewChecker(cfg.Checks, r.healthChanged)
	st.own(string(PartChecks), r.checker.Stop)
	r.setChecks()
	st.run(runCtx, PartEvents, func(ctx context.Context) error { watchEvents(ctx, d, log); return nil }, nil)
	st.run(runCtx, PartPackets, func(context.Context) error { return pumps.Run() }, func() { dev.Close() })

	// SIGUSR1 logs the counters, as the exit does; SIGHUP reloads. Both
	// are caught before READY=1: a manager may send one right after it.
	var sigs chan os.Signal
	if cfg.HandleSignals {
		sigs = make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGHUP)
		defer signal.Stop(sigs)
	}
	r.logStart(dev.Name(), mtu)
	if cfg.BGP != nil {
		// Serving now: the speaker may announce (once health allows).
		if err := r.startBGP(runCtx, st); err != nil {
			return err
		}
	}
	if err := notify(cfg.NotifySocket, stateReady()); err != nil {
		log.Warn().Err(err).Str("socket", cfg.NotifySocket).Msg("cannot notify the service manager")
	}
	var runErr error
wait:
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				r.reload()
			} else {
				r.logCounters("counters")
			}
		case <-ctx.Done():
			// A signal's cause also matches context.Canceled (os/signal's
			// signalError.Is): only a plain cancel is context.Canceled itself.
			if sig := context.Cause(ctx); sig != nil && sig != context.Canceled { //nolint:errorlint // identity, see above
				log.Info().Str(fSignal, sig.Error()).Msg("stopping")
			} else {
				log.Info().Msg("stopping")
			}
			break wait
		case e := <-st.ended:
			if e.err != nil {
				runErr = runtimeError(e.part, e.err)
			}
			break wait
		}
	}
	if err := notify(cfg.NotifySocket, stateStopping); err != nil {
		log.Warn().Err(err).Str("socket", cfg.NotifySocket).Msg("cannot notify the service manager")
	}
	// Withdraw before the packet path stops; drain only if it still runs.
	r.stopBGP(runErr == nil)
	st.stopAll()
	r.logCounters("stopped")
	return runErr
}

// logCounters logs the whole counter table as the fields of one line.
func (r *runner) logCounters(msg string) {
	r.log.Info().Fields(statsMap(r.src.snapshot())).Msg(msg)
}

// expire sweeps the flow table a slice at a time.
func (r *runner) expire(ctx context.Context) error {
	t := time.NewTicker(expiryEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			r.d.Sweep(r.clk.Now(), expiryBudget)
		}
	}
}

// openTUN opens the TUN device, with segmentation and checksum offload
// (a virtio-net header) when asked and the kernel supports it.
func openTUN(name string, offload bool, queues int, log zerolog.Logger) (tun.Device, error) {
	if offload {
		dev, err := tun.OpenTUNOffload(name, queues)
		if err == nil || errors.Is(err, tun.ErrInUse) {
			// A TUN another process holds is not an offload problem:
			// a plain TUN would be refused the same.
			return dev, err
		}
		log.Warn().Err(err).Msg("TUN offload unavailable; using a plain TUN (slower)")
	}
	return tun.OpenTUN(name)
}

// setupRoutes routes the VIPs and the recovery addresses into the TUN (see
// stack/host) and returns the undo.
func setupRoutes(cfg Config, log zerolog.Logger) (func() error, error) {
	var prefixes []netip.Prefix
	for _, svc := range cfg.Services {
		prefixes = append(prefixes, netip.PrefixFrom(svc.VIP.Addr(), svc.VIP.Addr().BitLen()))
	}
	for _, a := range cfg.Recovery.Addrs {
		prefixes = append(prefixes, netip.PrefixFrom(a, a.BitLen()))
	}
	undo, err := host.SetupRoutes(host.RouteConfig{
		TUN: cfg.TUN, RealIface: cfg.Routes.RealIface, Prefixes: prefixes, Table: cfg.Routes.Table, MTU: cfg.MTU,
	}, log)
	if err != nil {
		return nil, runtimeError(PartRoutes, err)
	}
	return undo, nil
}

// healthChanged is the checker's report: a real went up or down.
func (r *runner) healthChanged(t balancer.Target, up bool, reason string) {
	proto, vip, err := balancer.ParseService(t.Service)
	if err == nil {
		err = r.d.SetDown(proto, vip, t.Addr, !up)
	}
	if err != nil {
		return // a target of a service or real that went away
	}
	ev, msg := r.log.Warn(), "real down"
	if up {
		ev, msg = r.log.Info(), "real up"
	}
	ev.Str(fService, t.Service).Str("real", t.Addr.String()).Str("check", t.Check.String()).Str("reason", reason).Msg(msg)
}

// setChecks makes the checker probe every real the Director has now (the
// configured ones, those added at runtime; not those removed and draining),
// and records the state of each (a real whose check changed starts up
// again). It is called at start, after a reload and after every runtime
// change of a real: the Director's view is the one source, so that a real
// added by the admin API is checked like a configured one.
func (r *runner) setChecks() {
	r.checksMu.Lock()
	defer r.checksMu.Unlock()
	var targets []balancer.Target
	for _, svc := range r.d.Services() {
		for _, real := range svc.Reals {
			if !real.Removed {
				targets = append(targets, balancer.Target{Service: svc.Service, Addr: real.Addr, Check: svc.Check})
			}
		}
	}
	r.checker.Set(targets)
	for _, t := range targets {
		up, _ := r.checker.State(t)
		proto, vip, err := balancer.ParseService(t.Service)
		if err == nil {
			err = r.d.SetDown(proto, vip, t.Addr, !up)
		}
		_ = err // a service or real changed meanwhile: its own setChecks follows
	}
}

// logStart logs the configuration, then "serving": the line operators read
// (readiness itself goes to the service manager, see notify).
func (r *runner) logStart(tunName string, mtu int) {
	c := r.cfg
	for _, svc := range r.d.Services() {
		// The Director's copy under its lock: it owns c.Services now,
		// and health checks may be changing them.
		r.logService(svc)
		r.logCookieless(svc)
	}
	addrs := zerolog.Arr()
	for _, a := range c.Recovery.Addrs {
		addrs.Str(a.String())
	}
	rec := c.Recovery
	r.log.Info().Bool("recovery", rec.Enabled).Array("recovery_addrs", addrs).
		Str("recovery_ports", strconv.Itoa(int(rec.PortLo))+"-"+strconv.Itoa(int(rec.PortHi))).
		Int("recovery_wscale", rec.WScale).Str("recovery_timeout", rec.Timeout.String()).
		Int("recovery_rate", rec.Rate).Int("recovery_max_inflight", rec.MaxInflight).
		Int("ts_cookie_bits", rec.CookieBits).Msg("recovery")
	r.log.Info().Str(fTUN, tunName).Int("mtu", mtu).Bool("setup_routes", c.Routes.Setup).Bool("tun_offload", c.Offload).
		Int("tun_queues", c.Queues).Int("packet_nice", c.Nice).
		Int("max_flows", c.MaxFlows).Str("admin_socket", c.AdminSocket).Str("metrics_addr", c.MetricsAddr).
		Int("pid", os.Getpid()).Msg("serving")
}

// logCookieless warns, once at start, of the reals of svc beyond its
// timestamp cookie ids (nat.Config.CookieBits): their flows carry no
// cookie, and another director finds them by probe only.
func (r *runner) logCookieless(svc nat.ServiceInfo) {
	k := r.cfg.Recovery.CookieBits
	if k == 0 {
		return
	}
	without := zerolog.Arr()
	n := 0
	for _, real := range svc.Reals {
		if real.CookieID == 0 && !real.Removed {
			without.Str(real.Addr.String())
			n++
		}
	}
	if n > 0 {
		r.log.Warn().Str(fService, svc.Service).Int("ts_cookie_bits", k).Array(fReals, without).
			Msgf("more reals than the %d timestamp cookie ids: these get no cookie (raise --ts-cookie-bits)", 1<<k-1)
	}
}

func (r *runner) logService(svc nat.ServiceInfo) {
	reals := zerolog.Arr()
	for _, real := range svc.Reals {
		if real.Removed {
			continue
		}
		s := real.Addr.String() + "*" + strconv.Itoa(real.Weight)
		if real.CookieID != 0 {
			s += ",id=" + strconv.Itoa(int(real.CookieID))
		}
		reals.Str(s)
	}
	ev, msg := r.log.Info(), "service"
	if !slices.ContainsFunc(svc.Reals, func(r nat.RealInfo) bool { return !r.Removed }) {
		ev, msg = r.log.Warn(), "service has no real: its new flows are dropped (no_real) until real add"
	}
	ev.Str(fService, svc.Service).Str(fScheduler, svc.Scheduler).
		Str("persistence", svc.Persistence.String()).Array(fReals, reals).Msg(msg)
}
