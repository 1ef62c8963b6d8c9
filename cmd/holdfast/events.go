package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"holdfast/nat"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
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
			if n := st.RecoveryStarted - prev.RecoveryStarted; n > 0 {
				if now.Sub(lastRecovery) > quiet {
					log.Info().Uint64("recoveries", n).Msg("recoveries started: connections without a flow reached this director (a failover?)")
				}
				lastRecovery = now
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

// serveMetrics serves Prometheus metrics on addr at /metrics.
func serveMetrics(addr string, c prometheus.Collector, log zerolog.Logger) (func(), error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return serveHTTP("metrics-addr", addr, mux, log)
}

// servePprof serves net/http/pprof's profiles on addr.
func servePprof(addr string, log zerolog.Logger) (func(), error) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return serveHTTP("pprof-addr", addr, mux, log)
}

// serveHTTP serves h on addr (given by --flag) until the returned stop.
func serveHTTP(flag, addr string, h http.Handler, log zerolog.Logger) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, errors.New("--" + flag + " " + addr + ": " + err.Error())
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() { // an HTTP endpoint: serves until stopped
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Str("flag", flag).Msg("HTTP endpoint")
		}
	}()
	return func() { srv.Close(); <-done }, nil
}
