package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"

	"holdfast/daemon/adminapi"
)

// HoldfastArgs is `holdfast run` for director d with the lab's plumbing:
// TUN hf0, routes set up on its real-server side, JSON logs (for the tests
// that look for an operator's message), the recovery address
// (RecoveryAddrOf: shared, or d's own in an ECMP lab), d's
// own recovery port range (--director-id) and admin socket. In a dual-stack
// lab (Options.IPv6) the director is dual-stack too: RecoveryAddr6Of is a
// second --recovery-addr. In a BGP lab (Options.BGP) it adds the --bgp-*
// flags: peers, MED (BGPMED), timers, --bgp-announce 0.0.0.0/0. extra follows (services, scheduler, reals; a
// later --recovery=off wins).
func HoldfastArgs(d *Director, extra ...string) []string {
	args := []string{"run", "--tun", "hf0", "--setup-routes", "--real-iface", d.RSIface, "--log-format", "json",
		"--recovery-addr", RecoveryAddrOf(d).String()}
	if d.lab != nil && d.lab.ipv6 {
		args = append(args, "--recovery-addr", RecoveryAddr6Of(d).String())
	}
	args = append(args, "--director-id", strconv.Itoa(d.ID), "--admin-socket", AdminSocket(d))
	if d.lab != nil && d.lab.bgp != nil {
		args = append(args, bgpArgs(d)...)
	}
	return append(args, extra...)
}

// AdminSocket is the admin socket of director d's holdfast: a file, not
// the default abstract socket, which is reachable only from d's network
// namespace, while the lab and the tests call it from the host's; in
// RuntimeDir, which an unprivileged lab's user reaches from any shell.
func AdminSocket(d *Director) string { return filepath.Join(RuntimeDir(), d.Name+".sock") }

// StartHoldfast starts `bin args...` in d's namespace and waits (bounded by
// ctx) until it is serving: it sends READY=1 on the notify socket the lab
// gives it (NS.StartReady). On failure the process is killed and the error
// carries its stderr.
func StartHoldfast(ctx context.Context, d *Director, bin string, args ...string) (*Proc, error) {
	return startHoldfast(ctx, d, bin, procOptions{}, args...)
}

// startHoldfast is StartHoldfast with o shaping what the Proc keeps.
func startHoldfast(ctx context.Context, d *Director, bin string, o procOptions, args ...string) (*Proc, error) {
	p, err := d.startReady(ctx, "holdfast-"+d.Label, o, append([]string{bin}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("director %s not serving: %w", d.Label, err)
	}
	return p, nil
}

// DirectorStats are the counters of a running director that the lab and
// the integration tests read (ReadStats).
type DirectorStats struct {
	Flows           int               // live flows, of every kind and state
	FlowsCreated    int               // flows created
	RecoveryStarted int               // recoveries started
	Recovered       int               // recoveries that installed a flow
	Adopted         int               // flows adopted from a real's packet
	AdoptAborts     int               // recovery dials abandoned because the original real spoke
	ClientResets    int               // RSTs sent to clients whose recovery failed
	StaleFlows      int               // flows found stale
	OldRealResets   int               // RSTs sent to a real whose connection was recovered elsewhere
	Misses          int               // mid-stream segments with no flow that started the search for their real
	Inflight        int               // misses and recoveries in flight now
	CookieSteers    int               // misses steered to the real their timestamp cookie names (tentative)
	CookieConfirmed int               // of those, confirmed by the real
	ProbeSteers     int               // misses steered to the real that answered an owner probe
	ChallengesSent  int               // challenge ACKs sent to clients before a recovery
	ChallengesOK    int               // challenges answered with numbers a parked segment fits
	ChallengeResets int               // challenges answered by the source's no-socket reset
	ICMPTranslated  int               // ICMP and ICMPv6 errors about a flow translated
	RecoveryFailed  map[string]int    // failed recoveries by reason
	Drops           map[string]uint64 // dropped packets by reason
	ReadByQueue     []uint64          // packets read, by TUN queue (index = queue number)
}

// Found is the number of connections picked up with no flow: recovered,
// adopted, or steered to their own real (probe, confirmed cookie).
func (s DirectorStats) Found() int {
	return s.Recovered + s.Adopted + s.ProbeSteers + s.CookieConfirmed
}

// Failed is the number of recoveries that failed, whatever the reason.
func (s DirectorStats) Failed() int {
	n := 0
	for _, v := range s.RecoveryFailed {
		n += v
	}
	return n
}

// ReadStats reads director d's counters from its admin API: GET /stats on
// AdminSocket(d), bounded by ctx.
func ReadStats(ctx context.Context, d *Director) (DirectorStats, error) {
	s, err := readStats(ctx, AdminSocket(d))
	if err != nil {
		return s, fmt.Errorf("director %s: %w", d.Label, err)
	}
	return s, nil
}

func readStats(ctx context.Context, socket string) (DirectorStats, error) {
	var raw json.RawMessage
	if err := adminapi.NewClient(socket).Stats(ctx, &raw); err != nil {
		return DirectorStats{}, fmt.Errorf("GET /stats: %w", err)
	}
	return decodeStats(raw)
}

// decodeStats reads the /stats object: one key per counter, the Prometheus
// name without "holdfast_"; a counter with one label is an object by label
// value, one with several labels an object keyed by the values joined with
// "/" (flows: "kind/state"). Every key DirectorStats needs must be there: a
// renamed counter is an error here, not a silent zero in a test.
func decodeStats(data []byte) (DirectorStats, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return DirectorStats{}, fmt.Errorf("director stats %.200q: %w", data, err)
	}
	var (
		s       DirectorStats
		flows   map[string]int
		byQueue map[string]uint64
	)
	fields := []struct {
		key string
		dst any
	}{
		{"flows", &flows},
		{"flows_created_total", &s.FlowsCreated},
		{"recoveries_started_total", &s.RecoveryStarted},
		{"recoveries_succeeded_total", &s.Recovered},
		{"adoptions_total", &s.Adopted},
		{"adoption_aborted_dials_total", &s.AdoptAborts},
		{"client_resets_total", &s.ClientResets},
		{"stale_flows_total", &s.StaleFlows},
		{"old_real_resets_total", &s.OldRealResets},
		{"misses_total", &s.Misses},
		{"recoveries_inflight", &s.Inflight},
		{"cookie_steers_total", &s.CookieSteers},
		{"cookie_steers_confirmed_total", &s.CookieConfirmed},
		{"probe_steers_total", &s.ProbeSteers},
		{"challenges_sent_total", &s.ChallengesSent},
		{"challenges_passed_total", &s.ChallengesOK},
		{"challenges_reset_total", &s.ChallengeResets},
		{"icmp_errors_translated_total", &s.ICMPTranslated},
		{"recoveries_failed_total", &s.RecoveryFailed},
		{"drops_total", &s.Drops},
		{"device_queue_packets_read_total", &byQueue},
	}
	for _, f := range fields {
		v, ok := m[f.key]
		if !ok {
			return DirectorStats{}, fmt.Errorf("director stats: no %q", f.key)
		}
		if err := json.Unmarshal(v, f.dst); err != nil {
			return DirectorStats{}, fmt.Errorf("director stats: %s: %w", f.key, err)
		}
	}
	for _, n := range flows {
		s.Flows += n
	}
	// Queues are numbered 0..N-1: a gap means the contract changed.
	s.ReadByQueue = make([]uint64, len(byQueue))
	for q, n := range byQueue {
		i, err := strconv.Atoi(q)
		if err != nil || i < 0 || i >= len(byQueue) || strconv.Itoa(i) != q {
			return DirectorStats{}, fmt.Errorf("director stats: device_queue_packets_read_total: queue %q of %d, want 0..%d", q, len(byQueue), len(byQueue)-1)
		}
		s.ReadByQueue[i] = n
	}
	return s, nil
}

// Failover makes director to the active one after stop (which kills the
// active director's holdfast) has run: by moving the routes by hand (Flip),
// or in a VRRP lab by waiting until keepalived has moved the floating
// addresses to it (bounded by ctx). In a BGP lab the other director's
// links go down first (Unplug, as when its host dies), then stop runs, and
// Failover waits until both routers send the traffic to director to: the
// client-side router moves at once (its link to the dead director went
// down), the real-side router through BFD (0.9 s), or after the hold time
// (BGPHoldTime) for a director without it, so ctx must allow for that. Replug the dead director before starting it again.
func (l *Lab) Failover(ctx context.Context, to int, stop func() error) error {
	if l.bgp != nil {
		if to < 0 || to >= len(l.Directors) || len(l.Directors) != 2 {
			return fmt.Errorf("lab: Failover(%d): have %d directors", to, len(l.Directors))
		}
		if err := l.Unplug(1 - to); err != nil {
			return err
		}
	}
	if err := stop(); err != nil {
		return err
	}
	switch {
	case l.vrrp != nil:
		return l.WaitVRRPMaster(ctx, to)
	case l.bgp != nil:
		return l.WaitBGPActive(ctx, to)
	}
	return l.Flip(to)
}
