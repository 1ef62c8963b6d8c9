package main

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"holdfast/balancer"
	"holdfast/nat"
	"holdfast/stack"

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
}

func parseRun(c *cli.Context) (runSettings, error) {
	s := runSettings{
		tun:         c.String(tunFlag.Name),
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
	if s.setupRoutes && s.realIface == "" {
		return s, usagef("--setup-routes needs --real-iface IFNAME (the interface facing the real servers)")
	}
	if s.routeTable < 1 || s.routeTable > 0xfffffff0 || s.routeTable == 253 || s.routeTable == 254 || s.routeTable == 255 {
		return s, usagef("--route-table %d: expected a table number other than 253, 254, 255 (default, main, local)", s.routeTable)
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
	s.timeouts = nat.NewTimeouts(c.Duration(timeoutTCPFlag.Name), c.Duration(timeoutTCPFinFlag.Name), c.Duration(timeoutUDPFlag.Name))
	var err error
	if s.services, err = loadServices(c); err != nil {
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
	d, err := nat.New(nat.Config{Services: s.services, Timeouts: s.timeouts, MaxFlows: s.maxFlows})
	if err != nil {
		return usagef("%v", err)
	}

	dev, err := stack.OpenTUN(s.tun)
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
		undo, err := stack.SetupRoutes(stack.RouteConfig{
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
		mtu, _ = stack.LinkMTU(s.tun)
	}

	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return serve(ctx, s, d, dev, mtu, log)
}

// serve runs the pump and its helpers until ctx ends or the pump fails.
func serve(ctx context.Context, s runSettings, d *nat.Director, dev stack.Device, mtu int, log zerolog.Logger) error {
	clock := stack.NewClock()
	clock.Update()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	done := make(chan struct{})
	go func() { // clock: the packet path's only time source
		defer close(done)
		clock.Run(ctx, time.Millisecond)
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
				d.Expire(clock.Now(), 10000)
			}
		}
	}()

	pump := stack.NewPump(dev, d, clock, mtu, log)
	pumpErr := make(chan error, 1)
	go func() { pumpErr <- pump.Run() }()

	logStart(log, s, mtu)
	var err error
	select {
	case <-ctx.Done():
		if sig := context.Cause(ctx); sig != nil && !errors.Is(sig, context.Canceled) {
			log.Info().Str(fSignal, sig.Error()).Msg("stopping")
		} else {
			log.Info().Msg("stopping")
		}
		dev.Close()
		err = <-pumpErr
	case err = <-pumpErr:
		if err != nil {
			log.Error().Err(err).Msg("packet loop failed")
		}
	}
	cancel()
	<-done
	<-expired
	st := d.Stats()
	ps := pump.Stats()
	log.Info().Uint64("packets_read", ps.Read).Uint64("packets_written", ps.Written).
		Uint64("flows_created", st.FlowsCreated).Int(fFlows, st.Flows).Msg("stopped")
	if err != nil {
		return cli.Exit("packet loop: "+err.Error(), exitRuntime)
	}
	return nil
}

func logStart(log zerolog.Logger, s runSettings, mtu int) {
	for _, svc := range s.services {
		reals := zerolog.Arr()
		for _, r := range svc.Reals {
			reals.Str(r.Addr.String() + "*" + strconv.Itoa(r.Weight))
		}
		log.Info().Str(fService, svc.String()).Str(fScheduler, svc.Scheduler.Name()).
			Dur("persistence", svc.Persistence).Array(fReals, reals).Msg("service")
	}
	log.Info().Str(fTUN, s.tun).Int("mtu", mtu).Bool("setup_routes", s.setupRoutes).
		Int("max_flows", s.maxFlows).Int("pid", os.Getpid()).Msg("serving")
}
