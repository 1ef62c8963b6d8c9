package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"holdfast/bfd"
	"holdfast/bgp"
	"holdfast/internal/clock"
	"holdfast/internal/porttest"
	"holdfast/nat"
	"holdfast/nat/nattest"
	"holdfast/stack/pump"
	"holdfast/stack/tun/tuntest"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/rs/zerolog"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// flat is one counter's values by label values joined with "/" ("" for an
// unlabelled counter; "count", "sum" and "le=BOUND" for a histogram).
type flat map[string]float64

// flattenJSON reads counter c from a /stats object or a log line.
func flattenJSON(t *testing.T, c *counterDef, v any) flat {
	t.Helper()
	f := flat{}
	num := func(x any) float64 {
		n, ok := x.(float64)
		if !ok {
			t.Fatalf("%s: %v (%T) is not a number", c.name, x, x)
		}
		return n
	}
	switch {
	case c.typ == histogramType:
		h, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("%s: %v is not a histogram object", c.name, v)
		}
		f["count"], f["sum"] = num(h["count"]), num(h["sum"])
		buckets, ok := h["buckets"].(map[string]any)
		if !ok {
			t.Fatalf("%s: buckets %v", c.name, h["buckets"])
		}
		for b, n := range buckets {
			f["le="+b] = num(n)
		}
	case len(c.labels) == 0:
		f[""] = num(v)
	default:
		m, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("%s: %v is not an object", c.name, v)
		}
		for k, n := range m {
			if got := len(strings.Split(k, "/")); got < len(c.labels) {
				t.Fatalf("%s: key %q has %d label values, want %d", c.name, k, got, len(c.labels))
			}
			f[k] = num(n)
		}
	}
	return f
}

// TestCountersEverywhere: every entry of the table is in /stats, in the
// Prometheus output and in the counters log line, under the same name, with
// the same values; nothing else is in any of them.
func TestCountersEverywhere(t *testing.T) {
	timeouts := nat.NewTimeouts(15*time.Minute, 2*time.Minute, 5*time.Minute)
	d, err := nat.New(nat.Config{Services: testServices(t), Timeouts: timeouts, MaxFlows: 100})
	if err != nil {
		t.Fatal(err)
	}
	// Some traffic, so that values differ from zero: three SYNs (flows on
	// both reals) and a truncated packet.
	for i := range 3 {
		syn := nattest.TCP4(fmt.Sprintf("%s:%d", clientIP, 40000+i), vip.String(), header.TCPFlagSyn, 1, 0, nil)
		if v, _ := d.Handle(syn, false, 1); v.String() != "forward" {
			t.Fatalf("SYN %d: %v", i, v)
		}
	}
	d.Handle([]byte{0x45, 0, 0}, false, 1)
	pumps := pump.NewPumps(tuntest.NewMemDevice("mem0", 1), func() pump.Handler { return d }, nil, clock.New(), zerolog.Nop())
	var writeErrs atomic.Uint64
	writeErrs.Store(2)
	src := &sources{d: d, pumps: pumps, writeErrs: &writeErrs, stray: func() uint64 { return 5 }}
	// A speaker whose peers never answer (a port nothing listens on): its
	// sessions are samples of the per-peer counters.
	sp, err := bgp.New(context.Background(), bgp.Config{LocalAS: 65001, PeerAS: 65000, RouterID: netip.MustParseAddr("198.18.0.1"),
		ClientPeers: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, RealPeers: []netip.Addr{netip.MustParseAddr("127.0.0.2")},
		Port: 9, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	src.bgp.Store(sp)
	// And BFD sessions with them that never hear from the routers
	// (passive, on a free port).
	bs, err := bfd.New(context.Background(), bfd.Config{Peers: []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")}, Port: porttest.UDP(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Close()
	src.bfd.Store(bs)
	var log logBuffer
	r := &runner{log: zerolog.New(&log), d: d, src: src, clk: clock.New()}

	rec := httptest.NewRecorder()
	r.adminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/stats", nil))
	var stats map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &stats); err != nil {
		t.Fatalf("/stats: %v\n%s", err, rec.Body)
	}
	r.logCounters("counters")
	line := log.lines(t, "counters")[0]
	rec = httptest.NewRecorder()
	metricsHandler(newCollector(src)).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("/metrics: %v", err)
	}

	names := map[string]bool{}
	for i := range counters {
		c := &counters[i]
		if names[c.name] {
			t.Fatalf("%s is in the table twice", c.name)
		}
		names[c.name] = true
		sv, ok := stats[c.name]
		if !ok {
			t.Errorf("/stats has no %s", c.name)
			continue
		}
		lv, ok := line[c.name]
		if !ok {
			t.Errorf("the counters line has no %s", c.name)
			continue
		}
		mf, ok := families["holdfast_"+c.name]
		if !ok {
			t.Errorf("/metrics has no holdfast_%s", c.name)
			continue
		}
		wantType := map[metricType]string{counterType: "COUNTER", gaugeType: "GAUGE", histogramType: "HISTOGRAM"}[c.typ]
		if got := mf.GetType().String(); got != wantType {
			t.Errorf("holdfast_%s is a %s, want %s", c.name, got, wantType)
		}
		prom := flat{}
		for _, m := range mf.GetMetric() {
			byName := map[string]string{}
			for _, l := range m.GetLabel() {
				byName[l.GetName()] = l.GetValue()
			}
			if got := slices.Sorted(maps.Keys(byName)); !slices.Equal(got, slices.Sorted(slices.Values(c.labels))) {
				t.Errorf("holdfast_%s has labels %v, want %v", c.name, got, c.labels)
			}
			var vals []string
			for _, l := range c.labels {
				vals = append(vals, byName[l])
			}
			key := strings.Join(vals, "/")
			switch c.typ {
			case counterType:
				prom[key] = m.GetCounter().GetValue()
			case gaugeType:
				prom[key] = m.GetGauge().GetValue()
			case histogramType:
				h := m.GetHistogram()
				prom["count"], prom["sum"] = float64(h.GetSampleCount()), h.GetSampleSum()
				for _, b := range h.GetBucket() {
					if math.IsInf(b.GetUpperBound(), 1) {
						continue // Prometheus's own: the count, which /stats has as such
					}
					prom["le="+strconv.FormatFloat(b.GetUpperBound(), 'g', -1, 64)] = float64(b.GetCumulativeCount())
				}
			}
		}
		s, l := flattenJSON(t, c, sv), flattenJSON(t, c, lv)
		if !maps.Equal(s, prom) || !maps.Equal(s, l) {
			t.Errorf("%s differs:\n/stats   %v\n/metrics %v\nlog      %v", c.name, s, prom, l)
		}
	}
	for k := range stats {
		if !names[k] {
			t.Errorf("/stats has %s, which is not in the table", k)
		}
	}
	for k := range line {
		if !names[k] && k != "level" && k != "message" {
			t.Errorf("the counters line has %s, which is not in the table", k)
		}
	}
	for k := range families {
		if name, ok := strings.CutPrefix(k, "holdfast_"); ok && !names[name] && k != "holdfast_build_info" {
			t.Errorf("/metrics has %s, which is not in the table", k)
		}
	}
	// The one metric outside the table: which build serves.
	if bi := families["holdfast_build_info"]; bi == nil || len(bi.GetMetric()) != 1 || bi.GetMetric()[0].GetGauge().GetValue() != 1 {
		t.Errorf("holdfast_build_info: %v", bi)
	}

	// The values are the sources'.
	want := map[string]any{
		"flows_created_total":          3.0,
		"netstack_stray_packets_total": 5.0,
		"device_write_errors_total":    2.0,
	}
	for k, v := range want {
		if stats[k] != v {
			t.Errorf("%s = %v, want %v", k, stats[k], v)
		}
	}
	if got := stats["drops_total"].(map[string]any)["truncated"]; got != 1.0 {
		t.Errorf("drops_total[truncated] = %v, want 1", got)
	}
	if got := stats["flows"].(map[string]any)["plain/SYN_RECV"]; got != 3.0 {
		t.Errorf("flows[plain/SYN_RECV] = %v, want 3 (%v)", got, stats["flows"])
	}
	in := stats["real_packets_total"].(map[string]any)
	if a, b := in["tcp:"+vip.String()+"/"+realA.String()+"/in"], in["tcp:"+vip.String()+"/"+realB.String()+"/in"]; a.(float64)+b.(float64) != 3 {
		t.Errorf("real_packets_total %v, want 3 packets in to the reals", in)
	}
	if got := stats["device_queue_packets_read_total"].(map[string]any); len(got) != 1 || got["0"] != 0.0 {
		t.Errorf("device_queue_packets_read_total %v, want queue 0 with 0 packets", got)
	}
}
