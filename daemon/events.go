package daemon

import (
	"context"
	"time"

	"holdfast/nat"

	"github.com/rs/zerolog"
)

// watchEvents logs, at most once per quiet period each, what an operator
// must know and the packet path cannot log: the first recoveries after a
// quiet period (a failover reached this director), failed recoveries, and
// limits hit. Everything else is in the counters.
func watchEvents(ctx context.Context, d *nat.Director, log zerolog.Logger) {
	const quiet = 10 * time.Second
	t := time.NewTicker(time.Second)
	defer t.Stop()
	prev := d.Stats()
	lastRecovery := time.Time{}
	lastWarn := map[string]time.Time{}
	warn := func(what string, n uint64, now time.Time, ev *zerolog.Event) {
		if n == 0 || now.Sub(lastWarn[what]) < quiet {
			return
		}
		lastWarn[what] = now
		ev.Str("what", what).Uint64("count", n).Msg("limit hit")
	}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			st := d.Stats()
			if n := st.Misses - prev.Misses; n > 0 {
				if now.Sub(lastRecovery) > quiet {
					// The first of a burst: after a failover to this
					// director, or a failback to it.
					log.Info().Uint64("misses", n).
						Uint64("steered_cookie", st.CookieConfirmed-prev.CookieConfirmed).
						Uint64("steered_probe", st.ProbeSteers-prev.ProbeSteers).
						Uint64("recoveries", st.RecoveryStarted-prev.RecoveryStarted).
						Msg("connections with no flow here reached this director: finding their reals")
				}
				lastRecovery = now
			}
			if n := st.RehomeStarted - prev.RehomeStarted; n > 0 {
				log.Info().Uint64("rehomes", n).Msg("flows of a down or drained real moving to another real")
			}
			for _, r := range []nat.DropReason{nat.DropFlowLimit, nat.DropRecoveryRate, nat.DropRecoveryBusy, nat.DropParkFull, nat.DropRecoveryDenied} {
				warn(r.String(), st.Drop(r)-prev.Drop(r), now, log.Warn())
			}
			for _, r := range nat.FailReasons() {
				warn("recovery_failed_"+r.String(), st.RecoveryFailed[r]-prev.RecoveryFailed[r], now, log.Warn())
			}
			prev = st
		}
	}
}
