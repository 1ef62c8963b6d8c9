package nat

import (
	"time"

	"holdfast/internal/wire"
)

// Stats is a snapshot of the Director's counters. The daemon's counter table
// reads these fields by name: renaming one renames a metric.
type Stats struct {
	Verdicts     [wire.NumVerdicts]uint64
	Drops        [numDropReasons]uint64
	Flows        int    // flows in the table now
	FlowsCreated uint64 // flows ever created (every kind)
	FlowsExpired uint64 // flows removed by idle timeout
	FlowsReused  uint64 // flows replaced by a SYN on a TIME_WAIT or CLOSE flow
	EchoReplies  uint64 // ICMP echo requests to a VIP answered
	ICMPErrors   uint64 // ICMP errors about a flow, translated

	RecoveryStarted   uint64
	RecoverySucceeded uint64
	RecoveryFailed    [numFailReasons]uint64
	// RecoveryRetries counts the dials that failed and were retried on
	// another real, by why they failed: a recovery that succeeds on its
	// second real counts here and not in RecoveryFailed.
	RecoveryRetries   [numFailReasons]uint64
	RecoveryLatencyNs uint64 // sum over successes, first parked segment to flush
	ClientResets      uint64 // RSTs sent to clients whose recovery failed
	Adopted           uint64 // flows created from a real's packet
	AdoptAborts       uint64 // recovery dials abandoned because the original real spoke
	OldRealResets     uint64 // RSTs sent to a real whose connection was recovered elsewhere
	StaleFlows        uint64 // flows found stale: suspect, then the real's no-socket reset confirmed it
	StaleSuspects     uint64 // client segments that acked server bytes this director never carried (the flow marked suspect)
	StaleCleared      uint64 // suspect flows whose real answered normally (not stale)
	RehomeStarted     uint64 // flows of a down or drained real sent through recovery
	Rehomed           uint64 // of those, recovered onto another real
	RehomeKept        uint64 // re-homes not started: no other real could take the flow, which stays on its real
	IndexRefused      uint64 // flows not inserted: one of their keys was already in the index (never overwritten)
	Parked            uint64 // packets parked
	ParkedBytes       int    // bytes parked now
	Inflight          int    // recoveries in flight now
	// OutOfWindow counts TCP segments of a flow outside its windows
	// (window.go), forwarded without a state change, by direction
	// (DirToReal: client segments, DirToClient: the real's). A stale
	// suspect's segment counts here too.
	OutOfWindow [numDirs]uint64

	// The miss path (miss.go): how a mid-stream segment with no flow
	// found its connection's real. Cookie: steers to the real a timestamp
	// cookie names (tentative), those the real confirmed, and those its
	// no-socket reset undid. Probe: rounds of owner probes, probes sent
	// (retries included), answered by a reset, answered by an ACK that
	// fits no parked segment, not answered after the retry; flows steered
	// to the one owner found, and owners found whose flow could not be
	// made. Challenge: challenges sent to clients (retries included),
	// answered with numbers a parked segment fits (the recovery dials),
	// answered with numbers none fits, answered by the source's reset,
	// not answered (all three: no backend connection).
	Misses                                               uint64 // mid-stream segments with no flow that started the search (each took a token of RecoveryConfig.Rate)
	CookieOverrides                                      uint64 // misses probing or challenging, ended for a segment whose cookie names a real (miss.go, cookieOverrides)
	CookieSteers, CookieConfirmed, CookieResets          uint64
	CookieUnfit                                          uint64 // cookie steers undone by the real's pure ACK that fit no kept segment (TIME_WAIT, the owner answering a forged segment)
	ProbeRounds, ProbesSent, ProbeResets, ProbeOthers    uint64
	ProbesSilent, ProbeSteers, ProbeNoFlow               uint64
	ProbeRoundsDelayed                                   uint64 // probe rounds sent at the previous round's retry time (one round per tuple per 510 ms)
	ChallengesSent, ChallengesPassed, ChallengesRejected uint64
	ChallengeResets, ChallengesUnanswered                uint64
	// StaleChallenges counts the challenges sent to the client of a flow
	// made suspect by a segment in window (StaleFlows counts those whose
	// answer proved the segment the client's own, StaleCleared those
	// whose answer did not, or whose real acknowledged the segment).
	StaleChallenges uint64
	// SynFlowsReplaced counts flows of a SYN whose handshake did not
	// complete, removed for a client segment of another connection on the
	// tuple (its ack does not answer the SYN-ACK): the SYN was forged or
	// stale.
	SynFlowsReplaced uint64
	// UnconfirmedResets counts the RSTs sent to reals for recovered flows
	// that expired unconfirmed (expireFlow).
	UnconfirmedResets                  uint64
	CookieLatency, ProbeLatency        Latency // first segment to the real's confirmation (cookie), to the flush (probe)
	ProbesInflight, ChallengesInflight int     // misses in those phases now

	// FlowsBy counts live flows by kind and state.
	FlowsBy [numKinds][numStates]int
	// RecoveryLatency counts successful recoveries by latency (first
	// parked segment to flush), bucket i holding those at most
	// LatencyBuckets[i]; the last bucket holds the rest.
	RecoveryLatency [len(LatencyBuckets) + 1]uint64
}

// Directions of a flow's packets, for the counters kept by direction.
const (
	DirToReal   = iota // client -> real
	DirToClient        // real -> client
	numDirs
)

var dirNames = [numDirs]string{"to_real", "to_client"}

// DirName names a direction for the counters' labels.
func DirName(dir int) string { return dirNames[dir] }

// LatencyBuckets are the upper bounds of the recovery latency histogram.
var LatencyBuckets = [...]time.Duration{
	500 * time.Microsecond, time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond,
	250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2500 * time.Millisecond, 5 * time.Second,
}

// Latency is a latency histogram in LatencyBuckets.
type Latency struct {
	Count, SumNs uint64
	Buckets      [len(LatencyBuckets) + 1]uint64
}

func (l *Latency) add(ns int64) {
	l.Count++
	l.SumNs += uint64(ns)
	l.Buckets[latencyBucket(ns)]++
}

func latencyBucket(ns int64) int {
	for i, b := range LatencyBuckets {
		if ns <= int64(b) {
			return i
		}
	}
	return len(LatencyBuckets)
}

// Drop returns the counter of one drop reason.
func (s Stats) Drop(r DropReason) uint64 { return s.Drops[r] }

// Stats returns a snapshot of the counters.
func (d *Director) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.stats
	s.Flows = d.flows.n
	s.ParkedBytes = d.rec.parkedBytes
	s.Inflight = len(d.rec.pending)
	for _, pd := range d.rec.pending {
		switch pd.phase {
		case phaseProbe:
			s.ProbesInflight++
		case phaseChallenge:
			s.ChallengesInflight++
		}
	}
	return s
}
