package main

import (
	"holdfast/internal/wire"
	"holdfast/nat"
	"holdfast/stack/pump"

	"github.com/prometheus/client_golang/prometheus"
)

// collector exports the director's counters at scrape time. The packet path
// only bumps plain counters under the lock it already holds; nothing is
// folded or copied until Prometheus asks.
type collector struct {
	d         *nat.Director
	pump      pump.Pumps
	writeErrs func() uint64
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("holdfast_"+name, help, labels, nil)
}

var (
	mPackets        = desc("packets_total", "Packets read from the TUN, by verdict.", "verdict")
	mDrops          = desc("drops_total", "Packets dropped, by reason.", "reason")
	mDevice         = desc("device_packets_total", "Packets moved by the TUN device, by direction (read, written).", "direction")
	mWriteErrors    = desc("device_write_errors_total", "Packets the TUN device refused.")
	mFlows          = desc("flows", "Live flows, by kind (plain, adopted, recovered) and state.", "kind", "state")
	mFlowsCreated   = desc("flows_created_total", "Flows created.")
	mFlowsExpired   = desc("flows_expired_total", "Flows removed after their idle timeout.")
	mFlowsReused    = desc("flows_reused_total", "Flows replaced by a SYN on a TIME_WAIT or CLOSE tuple.")
	mEcho           = desc("echo_replies_total", "ICMP echo requests to a VIP answered by the director.")
	mICMP           = desc("icmp_errors_translated_total", "ICMP errors about a flow translated.")
	mRecStarted     = desc("recoveries_started_total", "Recoveries started (a mid-stream segment with no flow).")
	mRecOK          = desc("recoveries_succeeded_total", "Recoveries that installed a flow.")
	mRecFailed      = desc("recoveries_failed_total", "Recoveries that failed, by reason; the client got a RST.", "reason")
	mRecLatency     = desc("recovery_latency_seconds", "Time from the first parked segment to the flush, successful recoveries.")
	mInflight       = desc("recoveries_inflight", "Recoveries in flight.")
	mParkedBytes    = desc("parked_bytes", "Client bytes parked behind recoveries in flight.")
	mParked         = desc("parked_packets_total", "Client segments parked behind a recovery.")
	mAdopted        = desc("adoptions_total", "Flows adopted from a real server's packet.")
	mAdoptAborts    = desc("adoption_aborted_dials_total", "Recovery dials abandoned because the original real spoke.")
	mStale          = desc("stale_flows_total", "Flows found stale (the client acked bytes this director never carried).")
	mOldRealResets  = desc("old_real_resets_total", "RSTs sent to a real whose connection was recovered elsewhere.")
	mClientResets   = desc("client_resets_total", "RSTs sent to clients whose recovery failed.")
	mRealActive     = desc("real_active_flows", "ESTABLISHED flows per real.", "service", "real")
	mRealInactive   = desc("real_inactive_flows", "Other flows per real.", "service", "real")
	mRealWeight     = desc("real_weight", "Weight per real (0: no new flows).", "service", "real")
	mRealUp         = desc("real_up", "Health per real: 1 up, 0 down.", "service", "real")
	mRealPackets    = desc("real_packets_total", "Packets per real, by direction (in: to the real, out: from it).", "service", "real", "direction")
	mRealBytes      = desc("real_bytes_total", "Bytes per real, by direction (in: to the real, out: from it).", "service", "real", "direction")
	collectorDescs  = []*prometheus.Desc{mPackets, mDrops, mDevice, mWriteErrors, mFlows, mFlowsCreated, mFlowsExpired, mFlowsReused, mEcho, mICMP, mRecStarted, mRecOK, mRecFailed, mRecLatency, mInflight, mParkedBytes, mParked, mAdopted, mAdoptAborts, mStale, mOldRealResets, mClientResets, mRealActive, mRealInactive, mRealWeight, mRealUp, mRealPackets, mRealBytes}
	counterV, gauge = prometheus.CounterValue, prometheus.GaugeValue
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range collectorDescs {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := c.d.Stats()
	ps := c.pump.Stats()
	m := func(d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, t, v, labels...)
	}
	for v := wire.Forward; v < wire.NumVerdicts; v++ {
		m(mPackets, counterV, float64(st.Verdicts[v]), v.String())
	}
	for _, r := range nat.DropReasons() {
		m(mDrops, counterV, float64(st.Drop(r)), r.String())
	}
	m(mDevice, counterV, float64(ps.Read), "read")
	m(mDevice, counterV, float64(ps.Written), "written")
	m(mWriteErrors, counterV, float64(ps.WriteErrors+c.writeErrs()))
	for k := nat.KindPlain; k <= nat.KindRecovered; k++ {
		for s := nat.StateNone; s <= nat.StateUDP; s++ {
			if n := st.FlowsBy[k][s]; n > 0 || s == nat.StateEstablished {
				m(mFlows, gauge, float64(n), k.String(), s.String())
			}
		}
	}
	m(mFlowsCreated, counterV, float64(st.FlowsCreated))
	m(mFlowsExpired, counterV, float64(st.FlowsExpired))
	m(mFlowsReused, counterV, float64(st.FlowsReused))
	m(mEcho, counterV, float64(st.EchoReplies))
	m(mICMP, counterV, float64(st.ICMPErrors))
	m(mRecStarted, counterV, float64(st.RecoveryStarted))
	m(mRecOK, counterV, float64(st.RecoverySucceeded))
	for _, r := range nat.FailReasons() {
		m(mRecFailed, counterV, float64(st.RecoveryFailed[r]), r.String())
	}
	buckets := make(map[float64]uint64, len(nat.LatencyBuckets))
	var cum uint64
	for i, b := range nat.LatencyBuckets {
		cum += st.RecoveryLatency[i]
		buckets[b.Seconds()] = cum
	}
	ch <- prometheus.MustNewConstHistogram(mRecLatency, st.RecoverySucceeded, float64(st.RecoveryLatencyNs)/1e9, buckets)
	m(mInflight, gauge, float64(st.Inflight))
	m(mParkedBytes, gauge, float64(st.ParkedBytes))
	m(mParked, counterV, float64(st.Parked))
	m(mAdopted, counterV, float64(st.Adopted))
	m(mAdoptAborts, counterV, float64(st.AdoptAborts))
	m(mStale, counterV, float64(st.StaleFlows))
	m(mOldRealResets, counterV, float64(st.OldRealResets))
	m(mClientResets, counterV, float64(st.ClientResets))
	for _, s := range c.d.Services() {
		for _, r := range s.Reals {
			real := r.Addr.String()
			m(mRealActive, gauge, float64(r.Active), s.Service, real)
			m(mRealInactive, gauge, float64(r.Inactive), s.Service, real)
			m(mRealWeight, gauge, float64(r.Weight), s.Service, real)
			up := 1.0
			if r.Down {
				up = 0
			}
			m(mRealUp, gauge, up, s.Service, real)
			m(mRealPackets, counterV, float64(r.PacketsIn), s.Service, real, "in")
			m(mRealPackets, counterV, float64(r.PacketsOut), s.Service, real, "out")
			m(mRealBytes, counterV, float64(r.BytesIn), s.Service, real, "in")
			m(mRealBytes, counterV, float64(r.BytesOut), s.Service, real, "out")
		}
	}
}
