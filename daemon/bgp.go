package daemon

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"holdfast/balancer"
	"holdfast/bfd"
	"holdfast/bgp"

	"github.com/rs/zerolog"
)

// BGP: the director announces its VIPs itself (DESIGN.md section 7). The
// speaker starts once the director serves (TUN, routes, packet threads);
// every announceEvery the runner works out what to announce: to the
// client-side routers each VIP one of whose services has a real that is
// available and proven by a passing health check (a restarted director with
// dead reals attracts nothing), to the real-side routers the recovery
// addresses and the --bgp-announce prefixes. On stop it withdraws
// everything first, keeps forwarding for Drain while the routers move the
// traffic away, then stops.

// BGP configures the speaker; nil in Config.BGP is no BGP.
type BGP struct {
	bgp.Config
	// Announce are prefixes sent to the real-side peers with the recovery
	// addresses (e.g. 0.0.0.0/0, or the client prefixes), so that the
	// reals' replies come back through a director.
	Announce []netip.Prefix
	// Drain is how long the director keeps forwarding after it withdrew
	// everything at stop.
	Drain time.Duration
	// BFD, when set, keeps a BFD session with every peer (bfd/doc.go): the
	// routers then notice a dead director in its detection time, not its
	// hold time. Its Peers are set from the BGP peers.
	BFD *bfd.Config
}

// Log field names of the BGP stage.
const (
	fPrefix = "prefix"
	fSide   = "side"
)

// announceEvery is how often the announcements follow health: a real's
// check interval is 2 s by default, a router's hold time 9 s; a quarter
// second is quick beside both and costs nothing.
const announceEvery = 250 * time.Millisecond

// PartBGP is the BGP speaker, PartBFD its BFD sessions.
const (
	PartBGP Part = "bgp"
	PartBFD Part = "bfd"
)

// startBGP starts the speaker and the stage that keeps its announcements
// following the services' health. The speaker is r.bgp; stopBGP ends it.
func (r *runner) startBGP(ctx context.Context, st *stages) error {
	c := r.cfg.BGP.Config
	c.Log = r.log.With().Str(fStage, string(PartBGP)).Logger()
	if b := r.cfg.BGP.BFD; b != nil {
		// Before the speaker: a router with BFD configured asks for a
		// session as soon as its BGP session comes up.
		bc := *b
		bc.Peers = append(slices.Clone(c.ClientPeers), c.RealPeers...)
		bc.Log = r.log.With().Str(fStage, string(PartBFD)).Logger()
		srv, err := bfd.New(ctx, bc)
		if err != nil {
			return runtimeError(PartBFD, fmt.Errorf("%w (another BFD daemon on this host? --bfd off leaves BFD to it)", err))
		}
		r.bfd = srv
		r.src.bfd.Store(srv)
		mode := "passive (answers the routers that ask)"
		if bc.Active {
			mode = "active"
		}
		r.log.Info().Str(fStage, string(PartBFD)).Str("mode", mode).Int("peers", len(bc.Peers)).
			Str("interval", cmp.Or(bc.Interval, bfd.DefaultInterval).String()).Uint8("multiplier", cmp.Or(bc.Multiplier, bfd.DefaultMultiplier)).Msg("bfd: listening")
	}
	sp, err := bgp.New(ctx, c)
	if err != nil {
		r.closeBFD()
		return runtimeError(PartBGP, err)
	}
	r.bgp = sp
	r.src.bgp.Store(sp)
	r.announceStop = make(chan struct{})
	st.run(ctx, PartBGP, func(ctx context.Context) error { r.announce(ctx); return nil }, nil)
	return nil
}

// announce sets the speaker's two sides every announceEvery until ctx ends
// or stopBGP says so. A prefix no peer can be sent (unsent) is logged once.
func (r *runner) announce(ctx context.Context) {
	t := time.NewTicker(announceEvery)
	defer t.Stop()
	warned := map[netip.Prefix]bool{}
	for {
		client, real := r.bgpSet(r.log)
		for _, side := range []struct {
			name  string
			peers []netip.Addr
			want  []netip.Prefix
		}{{"client", r.cfg.BGP.ClientPeers, client}, {"real", r.cfg.BGP.RealPeers, real}} {
			for _, p := range unsent(side.peers, side.want) {
				if warned[p] {
					continue
				}
				warned[p] = true
				r.log.Warn().Str(fPrefix, p.String()).Str(fSide, side.name).
					Msgf("bgp: no %s %s-side peer: %s is announced to no router (a prefix goes only over sessions of its family); add a peer of that family on that side", familyOf(p), side.name, p)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-r.announceStop:
			return
		case <-t.C:
		}
	}
}

// bgpSet gives the speaker what to announce now (it changes only what
// differs, and logs it), and returns it.
func (r *runner) bgpSet(log zerolog.Logger) (client, real []netip.Prefix) {
	client = r.clientSide()
	if err := r.bgp.SetClientSide(client); err != nil {
		log.Error().Err(err).Msg("bgp: client side")
	}
	real = slices.Clone(r.cfg.BGP.Announce)
	for _, a := range r.cfg.Recovery.Addrs {
		real = append(real, netip.PrefixFrom(a, a.BitLen()))
	}
	if err := r.bgp.SetRealSide(real); err != nil {
		log.Error().Err(err).Msg("bgp: real side")
	}
	return client, real
}

// unsent are the prefixes of want that none of a side's peers is sent:
// the speaker sends a prefix only over sessions of its family (bgp/doc.go:
// next hop self needs an address of the family), so a dual-stack
// director's IPv6 VIP with IPv4 client-side peers only is announced to no
// router and attracts no traffic. A side without peers sends nothing on
// purpose (its routes are static): nothing of it is reported.
func unsent(peers []netip.Addr, want []netip.Prefix) []netip.Prefix {
	if len(peers) == 0 {
		return nil
	}
	var has4, has6 bool
	for _, a := range peers {
		if a.Unmap().Is4() {
			has4 = true
		} else {
			has6 = true
		}
	}
	var out []netip.Prefix
	for _, p := range want {
		if is4 := p.Addr().Unmap().Is4(); is4 && !has4 || !is4 && !has6 {
			out = append(out, p)
		}
	}
	return out
}

// familyOf is "IPv4" or "IPv6", p's family.
func familyOf(p netip.Prefix) string {
	if p.Addr().Unmap().Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// clientSide is the VIPs (/32 or /128) one of whose services has a real
// that takes new flows (a weight, not down) and has passed a health check.
func (r *runner) clientSide() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range r.d.Services() {
		_, vip, err := balancer.ParseService(s.Service)
		if err != nil {
			continue
		}
		p := netip.PrefixFrom(vip.Addr(), vip.Addr().BitLen())
		if slices.Contains(out, p) {
			continue
		}
		for _, real := range s.Reals {
			if real.Removed || real.Down || real.Weight == 0 {
				continue
			}
			if r.checker.Proven(balancer.Target{Service: s.Service, Addr: real.Addr, Check: s.Check}) {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

// stopBGP withdraws everything, keeps forwarding for the drain time if
// drain (the packet path still runs), then closes the speaker. A no-op
// without BGP.
func (r *runner) stopBGP(drain bool) {
	if r.bgp == nil {
		return
	}
	close(r.announceStop)
	if err := r.bgp.WithdrawAll(); err != nil {
		r.log.Error().Err(err).Msg("bgp: withdrawing")
	}
	if d := r.cfg.BGP.Drain; drain && d > 0 {
		r.log.Info().Str("drain", d.String()).Msg("bgp: everything withdrawn; forwarding while the routers move the traffic away (a second SIGINT or SIGTERM cuts it short)")
		// The drain is a time, not an event: the routers say nothing
		// once they moved the traffic.
		timer := time.NewTimer(d)
		var again chan os.Signal
		if r.cfg.HandleSignals {
			again = make(chan os.Signal, 1)
			signal.Notify(again, syscall.SIGINT, syscall.SIGTERM)
			defer signal.Stop(again)
		}
		select {
		case <-timer.C:
		case sig := <-again:
			r.log.Warn().Str(fSignal, sig.String()).Msg("bgp: drain cut short")
		}
		timer.Stop()
	}
	if err := r.bgp.Close(); err != nil {
		r.log.Error().Err(err).Msg("bgp: closing")
	}
	r.closeBFD()
}

// closeBFD tells the routers the BFD sessions are administratively down
// (after the BGP sessions closed: the routers then take it for the stop it
// is, not a failure) and stops them.
func (r *runner) closeBFD() {
	if r.bfd != nil {
		r.bfd.Close()
	}
}
