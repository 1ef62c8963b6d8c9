package daemon

import (
	"context"

	"holdfast/internal/clock"
	"holdfast/nat"
	"holdfast/recovery"
	"holdfast/stack/netstack"

	"github.com/rs/zerolog"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// parkFlowBytes bounds what one flow may park: a recovery that waits
// behind more than this is not worth its memory.
const parkFlowBytes = 4 << 20

// attempts is the number of dials (reals) a recovery tries.
const attempts = 3

// newDirector builds the Director with its recovery parts and registers
// their stages: the netstack serving the recovery addresses, the engine
// dialing through it, the Director asking the engine. This is the one place
// that knows how the three are wired together.
//
// With recovery off, the netstack still serves the recovery addresses (a
// peer's recovered flows must not be taken for something else) but nothing
// dials.
func newDirector(ctx context.Context, cfg Config, mtu int, write func([]byte), clk *clock.Clock, st *stages, log zerolog.Logger) (*nat.Director, *netstack.Stack, error) {
	r := cfg.Recovery
	ncfg := nat.Config{Services: cfg.Services, Timeouts: cfg.Timeouts, MaxFlows: cfg.MaxFlows, Adoption: cfg.Adoption,
		Recovery: nat.RecoveryConfig{Addrs: r.Addrs}, CookieBits: r.CookieBits}
	var ns *netstack.Stack
	if len(r.Addrs) > 0 {
		var err error
		if ns, err = netstack.New(r.Addrs, mtu, write, log); err != nil {
			return nil, nil, runtimeError(PartRecovery, err)
		}
		st.own("netstack", ns.Close)
	}
	var eng *recovery.Engine
	if r.Enabled {
		mss, mss6 := r.MSS, r.MSS
		if mss == 0 {
			mss = mtu - header.IPv4MinimumSize - header.TCPMinimumSize
			mss6 = mtu - header.IPv6MinimumSize - header.TCPMinimumSize
		}
		eng = recovery.New(recovery.Config{Timeout: r.Timeout, Attempts: attempts}, ns, write, clk.Now, log)
		ncfg.Recovery = nat.RecoveryConfig{
			Enabled: true, Dialer: eng, Addrs: r.Addrs,
			PortLo: r.PortLo, PortHi: r.PortHi, WScale: r.WScale, MSS: mss, MSS6: mss6,
			Rate: float64(r.Rate), MaxInflight: r.MaxInflight, Allow: r.Allow,
			ParkBytes: r.ParkBytes, ParkFlowBytes: min(r.ParkBytes, parkFlowBytes), MTU: mtu,
			PrefixLen4: r.PrefixLen4, PrefixLen6: r.PrefixLen6,
			PrefixInflight: r.PrefixInflight, PrefixFlows: r.PrefixFlows,
			UnconfirmedTimeout: r.UnconfirmedTimeout,
		}
	}
	// The Director's own packets (probes, challenges, segments flushed to
	// a flow found by probe or adoption, resets) leave from the pump or
	// sweep goroutine that made them.
	ncfg.Emit = func(pkts [][]byte, _ int64) {
		for _, b := range pkts {
			write(b)
		}
	}
	d, err := nat.New(ncfg)
	if err != nil {
		return nil, nil, invalid(PartDirector, err)
	}
	if eng != nil {
		// After the netstack it dials through, so stopped before it: the
		// engine's stop ends every dial in flight and reports it.
		st.run(ctx, PartRecovery, func(ctx context.Context) error { return eng.Run(ctx, d) }, nil)
	}
	return d, ns, nil
}
