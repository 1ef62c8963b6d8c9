package daemon

import (
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

// attempts is the number of reals a recovery tries.
const attempts = 3

// newDirector builds the Director with its recovery parts and registers
// their stages: the netstack serving the recovery addresses, the engine
// dialing through it, the Director asking the engine. This is the one place
// that knows how the three are wired together.
//
// With recovery off, the netstack still serves the recovery addresses (a
// peer's recovered flows must not be taken for something else) but nothing
// dials.
func newDirector(cfg Config, mtu int, write func([]byte), clk *clock.Clock, st *stages, log zerolog.Logger) (*nat.Director, *netstack.Stack, error) {
	r := cfg.Recovery
	ncfg := nat.Config{Services: cfg.Services, Timeouts: cfg.Timeouts, MaxFlows: cfg.MaxFlows,
		Recovery: nat.RecoveryConfig{Addrs: r.Addrs}}
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
		mss := r.MSS
		if mss == 0 {
			mss = mtu - header.IPv4MinimumSize - header.TCPMinimumSize
		}
		var err error
		eng, err = recovery.New(recovery.Config{
			Addrs: r.Addrs, PortLo: r.PortLo, PortHi: r.PortHi,
			WScale: r.WScale, MSS: mss, Timeout: r.Timeout, Attempts: attempts,
		}, ns, write, clk, log)
		if err != nil {
			return nil, nil, invalid(PartRecovery, err)
		}
		st.own("recovery engine", eng.Close)
		ncfg.Recovery = nat.RecoveryConfig{
			Enabled: true, Recoverer: eng, Addrs: r.Addrs,
			Rate: float64(r.Rate), MaxInflight: r.MaxInflight, Allow: r.Allow,
			ParkBytes: r.ParkBytes, ParkFlowBytes: min(r.ParkBytes, parkFlowBytes),
		}
	}
	d, err := nat.New(ncfg)
	if err != nil {
		return nil, nil, invalid(PartDirector, err)
	}
	if eng != nil {
		eng.Attach(d)
	}
	return d, ns, nil
}
