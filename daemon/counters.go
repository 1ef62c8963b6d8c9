package daemon

import (
	"strconv"
	"strings"
	"sync/atomic"

	"holdfast/bfd"
	"holdfast/bgp"
	"holdfast/internal/wire"
	"holdfast/nat"
	"holdfast/stack/pump"
)

// The counter table: every counter of the director, declared once. /stats,
// the Prometheus collector and the "counters" (SIGUSR1) and "stopped" log
// lines are all generated from it, so a counter has one name everywhere:
// its Prometheus name without the "holdfast_" prefix.
//
// Value shapes outside Prometheus (/stats and the log lines): an unlabelled
// counter is a number; a labelled one an object keyed by its label values
// joined with "/" in label order; a histogram
// {"count": N, "sum": SECONDS, "buckets": {"0.0005": CUMULATIVE, ...}}.

// metricType is a counter's Prometheus type.
type metricType uint8

const (
	counterType metricType = iota
	gaugeType
	histogramType
)

// counterDef is one entry of the table.
type counterDef struct {
	name   string // Prometheus name without "holdfast_"; the /stats key and log field
	help   string
	typ    metricType
	labels []string
	// each reads the counter (counters and gauges): emit once per sample,
	// with one label value per label.
	each func(s *snapshot, emit func(v uint64, labels ...string))
	// hist reads a histogram.
	hist func(s *snapshot) histogramValue
}

// histogramValue is a histogram as /stats shows it. bounds and cum are the
// same buckets for Prometheus.
type histogramValue struct {
	Count   uint64            `json:"count"`
	Sum     float64           `json:"sum"` // seconds
	Buckets map[string]uint64 `json:"buckets"`
	bounds  []float64
	cum     []uint64
}

// snapshot is everything the counters are read from, taken once per export
// so that one export is consistent within each source.
type snapshot struct {
	nat       nat.Stats
	queues    []pump.PumpStats // one per TUN queue
	writeErrs uint64           // packets of the netstack and engine the device refused
	stray     uint64           // netstack packets dropped by its tap
	services  []nat.ServiceInfo
	bgp       *bgp.Status // nil without BGP
	bfd       *bfdSnap    // nil without BFD
}

// bfdSnap is the BFD sessions and counters of one snapshot.
type bfdSnap struct {
	sessions []bfd.SessionStatus
	counters bfd.Counters
}

// sources are the live objects a snapshot reads.
type sources struct {
	d         *nat.Director
	pumps     pump.Pumps
	writeErrs *atomic.Uint64
	stray     func() uint64               // nil: no netstack
	bgp       atomic.Pointer[bgp.Speaker] // nil: no BGP (or not started yet); set while the exports run
	bfd       atomic.Pointer[bfd.Server]  // nil: no BFD (or not started yet)
}

func (src *sources) snapshot() *snapshot {
	s := &snapshot{nat: src.d.Stats(), writeErrs: src.writeErrs.Load(), services: src.d.Services()}
	for _, p := range src.pumps {
		s.queues = append(s.queues, p.Stats())
	}
	if src.stray != nil {
		s.stray = src.stray()
	}
	if sp := src.bgp.Load(); sp != nil {
		st := sp.Status()
		s.bgp = &st
	}
	if b := src.bfd.Load(); b != nil {
		s.bfd = &bfdSnap{sessions: b.Status(), counters: b.Counters()}
	}
	return s
}

func (s *snapshot) pumpTotal() pump.PumpStats {
	var t pump.PumpStats
	for _, q := range s.queues {
		t.Read += q.Read
		t.Written += q.Written
		t.WriteErrors += q.WriteErrors
	}
	return t
}

// scalar is an unlabelled counter or gauge read by f.
func scalar(name, help string, typ metricType, f func(s *snapshot) uint64) counterDef {
	return counterDef{name: name, help: help, typ: typ, each: func(s *snapshot, emit func(uint64, ...string)) { emit(f(s)) }}
}

// byFailReason is a counter labelled by recovery failure reason.
func byFailReason(name, help string, f func(s *snapshot, r nat.FailReason) uint64) counterDef {
	return counterDef{name: name, help: help, typ: counterType, labels: []string{"reason"},
		each: func(s *snapshot, emit func(uint64, ...string)) {
			for _, r := range nat.FailReasons() {
				emit(f(s, r), r.String())
			}
		}}
}

// eachReal emits f's value for every real of every service.
func eachReal(f func(r *nat.RealInfo, emit func(v uint64, more ...string))) func(*snapshot, func(uint64, ...string)) {
	return func(s *snapshot, emit func(uint64, ...string)) {
		for _, svc := range s.services {
			for i := range svc.Reals {
				r := &svc.Reals[i]
				f(r, func(v uint64, more ...string) { emit(v, append([]string{svc.Service, r.Addr.String()}, more...)...) })
			}
		}
	}
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// counters is the table. Order is presentation order in Prometheus.
var counters = []counterDef{
	{name: "packets_total", help: "Packets read from the TUN, by verdict.", typ: counterType, labels: []string{"verdict"},
		each: func(s *snapshot, emit func(uint64, ...string)) {
			for v := range wire.NumVerdicts {
				emit(s.nat.Verdicts[v], v.String())
			}
		}},
	{name: "drops_total", help: "Packets dropped, by reason.", typ: counterType, labels: []string{"reason"},
		each: func(s *snapshot, emit func(uint64, ...string)) {
			for _, r := range nat.DropReasons() {
				emit(s.nat.Drop(r), r.String())
			}
		}},
	{name: "device_packets_total", help: "Packets moved by the TUN device, by direction (read, written).", typ: counterType, labels: []string{"direction"},
		each: func(s *snapshot, emit func(uint64, ...string)) {
			t := s.pumpTotal()
			emit(t.Read, "read")
			emit(t.Written, "written")
		}},
	{name: "device_queue_packets_read_total", help: "Packets read from the TUN, by queue.", typ: counterType, labels: []string{"queue"},
		each: func(s *snapshot, emit func(uint64, ...string)) {
			for i, q := range s.queues {
				emit(q.Read, strconv.Itoa(i))
			}
		}},
	scalar("device_write_errors_total", "Packets the TUN device refused.", counterType,
		func(s *snapshot) uint64 { return s.pumpTotal().WriteErrors + s.writeErrs }),
	{name: "flows", help: "Live flows, by kind (plain, adopted, recovered, cookie, probe) and state.", typ: gaugeType, labels: []string{"kind", "state"},
		each: func(s *snapshot, emit func(uint64, ...string)) {
			// The bounds are the array's: nat lists no kinds or states.
			for k := range len(s.nat.FlowsBy) {
				for st := range len(s.nat.FlowsBy[k]) {
					// Only the states in use, and ESTABLISHED always
					// (a series that is there from the start).
					if n := s.nat.FlowsBy[k][st]; n > 0 || nat.State(st) == nat.StateEstablished {
						emit(uint64(n), nat.Kind(k).String(), nat.State(st).String())
					}
				}
			}
		}},
	scalar("flows_created_total", "Flows created.", counterType, func(s *snapshot) uint64 { return s.nat.FlowsCreated }),
	scalar("flows_expired_total", "Flows removed after their idle timeout.", counterType, func(s *snapshot) uint64 { return s.nat.FlowsExpired }),
	scalar("flows_reused_total", "Flows replaced by a SYN on a TIME_WAIT or CLOSE tuple.", counterType, func(s *snapshot) uint64 { return s.nat.FlowsReused }),
	scalar("echo_replies_total", "ICMP echo requests to a VIP answered by the director.", counterType, func(s *snapshot) uint64 { return s.nat.EchoReplies }),
	scalar("icmp_errors_translated_total", "ICMP errors about a flow translated.", counterType, func(s *snapshot) uint64 { return s.nat.ICMPErrors }),
	scalar("recoveries_started_total", "Recoveries started (a mid-stream segment with no flow).", counterType, func(s *snapshot) uint64 { return s.nat.RecoveryStarted }),
	scalar("recoveries_succeeded_total", "Recoveries that installed a flow.", counterType, func(s *snapshot) uint64 { return s.nat.RecoverySucceeded }),
	byFailReason("recoveries_failed_total", "Recoveries that failed, by reason; the client got a RST (not at shutdown: the peer director may still recover it).",
		func(s *snapshot, r nat.FailReason) uint64 { return s.nat.RecoveryFailed[r] }),
	byFailReason("recovery_retries_total", "Recovery dials that failed and were retried on another real, by reason.",
		func(s *snapshot, r nat.FailReason) uint64 { return s.nat.RecoveryRetries[r] }),
	{name: "recovery_latency_seconds", help: "Time from the first parked segment to the flush, successful recoveries.", typ: histogramType,
		hist: func(s *snapshot) histogramValue {
			return latencyHist(nat.Latency{Count: s.nat.RecoverySucceeded, SumNs: s.nat.RecoveryLatencyNs, Buckets: s.nat.RecoveryLatency})
		}},
	scalar("misses_total", "Mid-stream segments with no flow that started the search for their connection's real (held to --recovery-rate).", counterType, func(s *snapshot) uint64 { return s.nat.Misses }),
	scalar("cookie_overrides_total", "Misses probing or challenging that a later segment's cookie took over (the segment that started them had none).", counterType, func(s *snapshot) uint64 { return s.nat.CookieOverrides }),
	scalar("cookie_steers_total", "Mid-stream segments with no flow sent at once to the real their timestamp cookie names (tentative).", counterType, func(s *snapshot) uint64 { return s.nat.CookieSteers }),
	scalar("cookie_steers_confirmed_total", "Cookie steers the real answered: it holds the connection.", counterType, func(s *snapshot) uint64 { return s.nat.CookieConfirmed }),
	scalar("cookie_steers_unfit_total", "Cookie steers undone by the real's ACK with numbers that fit no kept segment (a TIME_WAIT socket, the owner answering a forged segment).", counterType, func(s *snapshot) uint64 { return s.nat.CookieUnfit }),
	scalar("cookie_steers_reset_total", "Cookie steers undone by the real's no-socket reset (swallowed; the probes tried next).", counterType, func(s *snapshot) uint64 { return s.nat.CookieResets }),
	{name: "cookie_steer_latency_seconds", help: "Time from a cookie steer's first segment to the real's answer.", typ: histogramType,
		hist: func(s *snapshot) histogramValue { return latencyHist(s.nat.CookieLatency) }},
	scalar("probe_rounds_total", "Owner probe rounds: a mid-stream segment with no flow, no cookie, probing the service's reals.", counterType, func(s *snapshot) uint64 { return s.nat.ProbeRounds }),
	scalar("probe_rounds_delayed_total", "Owner probe rounds that followed another on the tuple within 510 ms, sent at its retry time.", counterType, func(s *snapshot) uint64 { return s.nat.ProbeRoundsDelayed }),
	scalar("probes_sent_total", "Owner probes sent to reals (retries included).", counterType, func(s *snapshot) uint64 { return s.nat.ProbesSent }),
	scalar("probes_reset_total", "Owner probes answered by the real's no-socket reset (swallowed).", counterType, func(s *snapshot) uint64 { return s.nat.ProbeResets }),
	scalar("probes_other_total", "Owner probes answered by an ACK that fits no parked segment (TIME_WAIT, a stale socket).", counterType, func(s *snapshot) uint64 { return s.nat.ProbeOthers }),
	scalar("probes_silent_total", "Owner probes not answered after their retry.", counterType, func(s *snapshot) uint64 { return s.nat.ProbesSilent }),
	scalar("probe_steers_total", "Flows steered to the one real that answered an owner probe as the connection's owner.", counterType, func(s *snapshot) uint64 { return s.nat.ProbeSteers }),
	scalar("probe_steers_failed_total", "Owners found whose flow could not be made (its keys taken, the table full).", counterType, func(s *snapshot) uint64 { return s.nat.ProbeNoFlow }),
	{name: "probe_steer_latency_seconds", help: "Time from a probed miss's first segment to its flush to the owner.", typ: histogramType,
		hist: func(s *snapshot) histogramValue { return latencyHist(s.nat.ProbeLatency) }},
	scalar("probes_inflight", "Misses whose owner probes wait for answers.", gaugeType, func(s *snapshot) uint64 { return uint64(s.nat.ProbesInflight) }),
	scalar("challenges_sent_total", "Challenge ACKs sent to clients before a recovery (retries included).", counterType, func(s *snapshot) uint64 { return s.nat.ChallengesSent }),
	scalar("challenges_passed_total", "Challenges the client answered with numbers a parked segment fits (a recovery dial follows).", counterType, func(s *snapshot) uint64 { return s.nat.ChallengesPassed }),
	scalar("challenges_rejected_total", "Challenges answered with numbers no parked segment fits (forged segments: nothing dialed).", counterType, func(s *snapshot) uint64 { return s.nat.ChallengesRejected }),
	scalar("challenges_reset_total", "Challenges answered by the source's no-socket reset (a spoofed source: nothing dialed).", counterType, func(s *snapshot) uint64 { return s.nat.ChallengeResets }),
	scalar("challenges_unanswered_total", "Challenges not answered after their retry (nothing dialed).", counterType, func(s *snapshot) uint64 { return s.nat.ChallengesUnanswered }),
	scalar("challenges_inflight", "Misses whose client challenge waits for its answer.", gaugeType, func(s *snapshot) uint64 { return uint64(s.nat.ChallengesInflight) }),
	scalar("syn_flows_replaced_total", "Flows of a SYN whose handshake did not complete, replaced by a segment of another connection on the tuple (a forged or stale SYN).", counterType, func(s *snapshot) uint64 { return s.nat.SynFlowsReplaced }),
	scalar("unconfirmed_resets_total", "RSTs sent to reals for recovered flows that expired before their client confirmed them.", counterType, func(s *snapshot) uint64 { return s.nat.UnconfirmedResets }),
	scalar("recoveries_inflight", "Recoveries in flight.", gaugeType, func(s *snapshot) uint64 { return uint64(s.nat.Inflight) }),
	scalar("parked_bytes", "Client bytes parked behind recoveries in flight.", gaugeType, func(s *snapshot) uint64 { return uint64(s.nat.ParkedBytes) }),
	scalar("parked_packets_total", "Client segments parked behind a recovery.", counterType, func(s *snapshot) uint64 { return s.nat.Parked }),
	scalar("adoptions_total", "Flows adopted from a real server's packet.", counterType, func(s *snapshot) uint64 { return s.nat.Adopted }),
	scalar("adoption_aborted_dials_total", "Recovery dials abandoned because the original real spoke.", counterType, func(s *snapshot) uint64 { return s.nat.AdoptAborts }),
	scalar("stale_flows_total", "Flows found stale: the client acked bytes this director never carried, and the real's no-socket reset confirmed it.", counterType, func(s *snapshot) uint64 { return s.nat.StaleFlows }),
	scalar("stale_suspects_total", "Client segments that acked server bytes this director never carried (the flow marked suspect until the real answers).", counterType, func(s *snapshot) uint64 { return s.nat.StaleSuspects }),
	scalar("stale_cleared_total", "Suspect flows whose real answered normally (not stale).", counterType, func(s *snapshot) uint64 { return s.nat.StaleCleared }),
	{name: "out_of_window_total", help: "TCP segments of a flow outside its windows, forwarded without a state change, by direction.", typ: counterType, labels: []string{"direction"},
		each: func(s *snapshot, emit func(uint64, ...string)) {
			for dir := range len(s.nat.OutOfWindow) {
				emit(s.nat.OutOfWindow[dir], nat.DirName(dir))
			}
		}},
	scalar("old_real_resets_total", "RSTs sent to a real whose connection was recovered elsewhere.", counterType, func(s *snapshot) uint64 { return s.nat.OldRealResets }),
	scalar("client_resets_total", "RSTs sent to clients whose recovery failed.", counterType, func(s *snapshot) uint64 { return s.nat.ClientResets }),
	scalar("rehomes_started_total", "Flows of a down or drained real sent through recovery.", counterType, func(s *snapshot) uint64 { return s.nat.RehomeStarted }),
	scalar("rehomes_succeeded_total", "Re-homed flows recovered onto another real.", counterType, func(s *snapshot) uint64 { return s.nat.Rehomed }),
	scalar("rehomes_kept_total", "Re-homes not started because no other real could take the flow (it stays on its real).", counterType, func(s *snapshot) uint64 { return s.nat.RehomeKept }),
	scalar("flow_index_refused_total", "Flows not inserted because one of their keys was already in the index (an entry is never overwritten).", counterType, func(s *snapshot) uint64 { return s.nat.IndexRefused }),
	scalar("netstack_stray_packets_total", "Packets of the recovery netstack dropped by its tap (RSTs after a handshake, retransmissions, IPv6 neighbour discovery or MLD).", counterType, func(s *snapshot) uint64 { return s.stray }),
	{name: "real_active_flows", help: "ESTABLISHED flows per real.", typ: gaugeType, labels: []string{"service", "real"},
		each: eachReal(func(r *nat.RealInfo, emit func(uint64, ...string)) { emit(uint64(r.Active)) })},
	{name: "real_inactive_flows", help: "Other flows per real.", typ: gaugeType, labels: []string{"service", "real"},
		each: eachReal(func(r *nat.RealInfo, emit func(uint64, ...string)) { emit(uint64(r.Inactive)) })},
	{name: "real_weight", help: "Weight per real (0: no new flows).", typ: gaugeType, labels: []string{"service", "real"},
		each: eachReal(func(r *nat.RealInfo, emit func(uint64, ...string)) { emit(uint64(r.Weight)) })},
	{name: "real_up", help: "Health per real: 1 up, 0 down.", typ: gaugeType, labels: []string{"service", "real"},
		each: eachReal(func(r *nat.RealInfo, emit func(uint64, ...string)) { emit(b2u(!r.Down)) })},
	{name: "real_connections_total", help: "Flows ever created per real (ipvsadm --stats Conns).", typ: counterType, labels: []string{"service", "real"},
		each: eachReal(func(r *nat.RealInfo, emit func(uint64, ...string)) { emit(r.Conns) })},
	{name: "real_packets_total", help: "Packets per real, by direction (in: to the real, out: from it).", typ: counterType, labels: []string{"service", "real", "direction"},
		each: eachReal(func(r *nat.RealInfo, emit func(uint64, ...string)) {
			emit(r.PacketsIn, "in")
			emit(r.PacketsOut, "out")
		})},
	{name: "real_bytes_total", help: "Bytes per real, by direction (in: to the real, out: from it).", typ: counterType, labels: []string{"service", "real", "direction"},
		each: eachReal(func(r *nat.RealInfo, emit func(uint64, ...string)) {
			emit(r.BytesIn, "in")
			emit(r.BytesOut, "out")
		})},
	{name: "bgp_session_up", help: "BGP sessions: 1 established, 0 not, per peer and side (client or real).", typ: gaugeType, labels: []string{"peer", "side"},
		each: eachPeer(func(p *bgp.PeerStatus, emit func(uint64, ...string)) { emit(b2u(p.State == "Established")) })},
	{name: "bgp_advertised_prefixes", help: "Prefixes a BGP peer has been sent and not withdrawn.", typ: gaugeType, labels: []string{"peer", "side"},
		each: eachPeer(func(p *bgp.PeerStatus, emit func(uint64, ...string)) { emit(p.Advertised) })},
	{name: "bgp_announced_prefixes", help: "Prefixes announced now, per side (client: the VIPs; real: the recovery addresses and --bgp-announce).", typ: gaugeType, labels: []string{"side"},
		each: func(s *snapshot, emit func(uint64, ...string)) {
			var st bgp.Status // without BGP: nothing announced
			if s.bgp != nil {
				st = *s.bgp
			}
			emit(uint64(len(st.ClientSide)), "client")
			emit(uint64(len(st.RealSide)), "real")
		}},
	bgpCounter("bgp_session_establishments_total", "BGP sessions that reached Established.", func(c bgp.Counters) uint64 { return c.Establishments }),
	bgpCounter("bgp_session_drops_total", "Established BGP sessions that went down.", func(c bgp.Counters) uint64 { return c.Drops }),
	bgpCounter("bgp_updates_sent_total", "BGP UPDATE messages sent, all peers.", func(c bgp.Counters) uint64 { return c.UpdatesSent }),
	bgpCounter("bgp_announcements_total", "Prefixes announced (or changed), one per prefix and change.", func(c bgp.Counters) uint64 { return c.Announcements }),
	bgpCounter("bgp_withdrawals_total", "Prefixes withdrawn.", func(c bgp.Counters) uint64 { return c.Withdrawals }),
	{name: "bfd_session_up", help: "BFD sessions: 1 up, 0 not, per router (--bfd).", typ: gaugeType, labels: []string{"peer"},
		each: func(s *snapshot, emit func(uint64, ...string)) {
			if s.bfd != nil {
				for _, ss := range s.bfd.sessions {
					emit(b2u(ss.State == bfd.Up), ss.Peer.String())
				}
			}
		}},
	bfdCounter("bfd_session_ups_total", "BFD sessions that came up.", func(c bfd.Counters) uint64 { return c.Ups }),
	bfdCounter("bfd_session_downs_total", "BFD sessions that went down from up (the router went quiet or said so).", func(c bfd.Counters) uint64 { return c.Downs }),
	bfdCounter("bfd_packets_received_total", "Valid BFD control packets from the routers.", func(c bfd.Counters) uint64 { return c.Received }),
	bfdCounter("bfd_packets_sent_total", "BFD control packets sent.", func(c bfd.Counters) uint64 { return c.Sent }),
	bfdCounter("bfd_send_errors_total", "BFD control packets that could not be sent.", func(c bfd.Counters) uint64 { return c.SendErrors }),
	{name: "bfd_drops_total", help: "BFD packets dropped, by reason: ttl (not 255: sent from off the link), peer (not a BGP router of ours), malformed, discriminator (names no session of the sender), queue.", typ: counterType, labels: []string{"reason"},
		each: func(s *snapshot, emit func(uint64, ...string)) {
			var c bfd.Counters
			if s.bfd != nil {
				c = s.bfd.counters
			}
			emit(c.DropTTL, "ttl")
			emit(c.DropPeer, "peer")
			emit(c.DropMalformed, "malformed")
			emit(c.DropDiscriminator, "discriminator")
			emit(c.DropQueue, "queue")
		}},
}

// bfdCounter is one of the BFD server's counters (0 without BFD).
func bfdCounter(name, help string, f func(bfd.Counters) uint64) counterDef {
	return counterDef{name: name, help: help, typ: counterType, each: func(s *snapshot, emit func(uint64, ...string)) {
		var c bfd.Counters
		if s.bfd != nil {
			c = s.bfd.counters
		}
		emit(f(c))
	}}
}

// eachPeer emits f's value for every BGP peer (none without BGP).
func eachPeer(f func(p *bgp.PeerStatus, emit func(v uint64, more ...string))) func(*snapshot, func(uint64, ...string)) {
	return func(s *snapshot, emit func(uint64, ...string)) {
		if s.bgp == nil {
			return
		}
		for i := range s.bgp.Peers {
			p := &s.bgp.Peers[i]
			f(p, func(v uint64, more ...string) {
				emit(v, append([]string{p.Addr.String(), p.Side.String()}, more...)...)
			})
		}
	}
}

// bgpCounter is one of the speaker's counters (0 without BGP).
func bgpCounter(name, help string, f func(bgp.Counters) uint64) counterDef {
	return counterDef{name: name, help: help, typ: counterType, each: func(s *snapshot, emit func(uint64, ...string)) {
		var c bgp.Counters
		if s.bgp != nil {
			c = s.bgp.Counters
		}
		emit(f(c))
	}}
}

// latencyHist is a nat latency histogram as the table shows it.
func latencyHist(l nat.Latency) histogramValue {
	h := histogramValue{Count: l.Count, Sum: float64(l.SumNs) / 1e9, Buckets: make(map[string]uint64, len(nat.LatencyBuckets))}
	var cum uint64
	for i, b := range nat.LatencyBuckets {
		cum += l.Buckets[i]
		h.bounds = append(h.bounds, b.Seconds())
		h.cum = append(h.cum, cum)
		h.Buckets[strconv.FormatFloat(b.Seconds(), 'g', -1, 64)] = cum
	}
	return h
}

// statsMap is every counter of the table, as /stats serves it and the
// counters and stopped lines log it.
func statsMap(s *snapshot) map[string]any {
	m := make(map[string]any, len(counters))
	for i := range counters {
		c := &counters[i]
		switch {
		case c.typ == histogramType:
			m[c.name] = c.hist(s)
		case len(c.labels) == 0:
			c.each(s, func(v uint64, _ ...string) { m[c.name] = v })
		default:
			byLabel := make(map[string]uint64)
			c.each(s, func(v uint64, labels ...string) { byLabel[strings.Join(labels, "/")] = v })
			m[c.name] = byLabel
		}
	}
	return m
}
