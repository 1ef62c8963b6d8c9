package daemon

import (
	"errors"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"holdfast/internal/buildinfo"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
)

// collector exports the counter table to Prometheus at scrape time. The
// packet path only bumps plain counters under the lock it already holds;
// nothing is folded or copied until Prometheus asks.
type collector struct {
	src   *sources
	descs []*prometheus.Desc // parallel to counters
}

func newCollector(src *sources) *collector {
	c := &collector{src: src}
	for _, d := range counters {
		c.descs = append(c.descs, prometheus.NewDesc("holdfast_"+d.name, d.help, d.labels, nil))
	}
	return c
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.snapshot()
	for i := range counters {
		def, desc := &counters[i], c.descs[i]
		if def.typ == histogramType {
			h := def.hist(s)
			buckets := make(map[float64]uint64, len(h.bounds))
			for j, b := range h.bounds {
				buckets[b] = h.cum[j]
			}
			ch <- prometheus.MustNewConstHistogram(desc, h.Count, h.Sum, buckets)
			continue
		}
		vt := prometheus.CounterValue
		if def.typ == gaugeType {
			vt = prometheus.GaugeValue
		}
		def.each(s, func(v uint64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(desc, vt, float64(v), labels...)
		})
	}
}

// metricsHandler serves the counters and the Go runtime's and process's
// metrics.
func metricsHandler(c prometheus.Collector) http.Handler {
	reg := prometheus.NewRegistry()
	bi := buildinfo.Read()
	build := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "holdfast_build_info", Help: "The build of holdfast serving: always 1, the build in the labels.",
		ConstLabels: prometheus.Labels{"version": bi.Version, "revision": bi.Revision, "goversion": bi.GoVersion},
	}, func() float64 { return 1 })
	reg.MustRegister(c, build, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}

// pprofHandler serves net/http/pprof's profiles.
func pprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// serveHTTP serves h on addr until the returned stop, which waits for the
// server's goroutine.
func serveHTTP(part Part, addr string, h http.Handler, log zerolog.Logger) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, runtimeError(part, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() { // owned by the stage part: serves until stopped
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Str(fStage, string(part)).Msg("HTTP endpoint")
		}
	}()
	return func() { srv.Close(); <-done }, nil
}
