package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"syscall"
)

// HoldfastArgs is `holdfast run` for director d with the lab's plumbing:
// TUN hf0, routes set up on its real-server side, JSON logs, the shared
// recovery address, d's own recovery port range (--director-id) and admin
// socket. extra
// follows (services, scheduler, reals; a later --recovery=off wins).
func HoldfastArgs(d *Director, extra ...string) []string {
	return append([]string{"run", "--tun", "hf0", "--setup-routes", "--real-iface", d.RSIface, "--log-format", "json",
		"--recovery-addr", RecoveryAddr.String(), "--director-id", strconv.Itoa(d.ID),
		"--admin-socket", AdminSocket(d)}, extra...)
}

// AdminSocket is the admin socket of director d's holdfast: the directors
// of a lab share one filesystem and one TUN name, so the default path
// (which includes the TUN name) would clash.
func AdminSocket(d *Director) string { return "/run/holdfast/" + d.Name + ".sock" }

// StartHoldfast starts `bin args...` in d's namespace and waits (bounded by
// ctx) until it logs that it is serving. On failure the process is killed
// and the error carries its output.
func StartHoldfast(ctx context.Context, d *Director, bin string, args ...string) (*Proc, error) {
	p, err := d.Start("holdfast-"+d.Label, append([]string{bin}, args...)...)
	if err != nil {
		return nil, err
	}
	if _, err := p.WaitForLine(ctx, IsServing); err != nil {
		p.stop()
		return nil, fmt.Errorf("director %s not serving: %w\n%s", d.Label, err, p.Stderr())
	}
	return p, nil
}

// IsServing reports whether l is the director's JSON readiness line.
func IsServing(l Line) bool { return isMessage(l, "serving") }

func isMessage(l Line, msg string) bool {
	if !l.Stderr || !strings.Contains(l.Text, msg) {
		return false
	}
	var m struct {
		Message string `json:"message"`
	}
	return json.Unmarshal([]byte(l.Text), &m) == nil && m.Message == msg
}

// DirectorStats is the director's counters line (SIGUSR1, and at exit).
type DirectorStats struct {
	Flows           int               `json:"-"`
	FlowsCreated    int               `json:"flows_created_total"`
	RecoveryStarted int               `json:"recoveries_started_total"`
	Recovered       int               `json:"recoveries_succeeded_total"`
	Adopted         int               `json:"adoptions_total"`
	AdoptAborts     int               `json:"adoption_aborted_dials_total"`
	ClientResets    int               `json:"client_resets_total"`
	StaleFlows      int               `json:"stale_flows_total"`
	OldRealResets   int               `json:"old_real_resets_total"`
	RecoveryFailed  map[string]int    `json:"recoveries_failed_total"`
	Drops           map[string]uint64 `json:"drops_total"`
	ReadByQueue     []uint64          `json:"-"`
}

// Failed is the number of recoveries that failed, whatever the reason.
func (s DirectorStats) Failed() int {
	n := 0
	for _, v := range s.RecoveryFailed {
		n += v
	}
	return n
}

// ReadStats asks a running director for its counters (SIGUSR1) and returns
// the line it logs in answer.
func ReadStats(ctx context.Context, p *Proc) (DirectorStats, error) {
	before := 0
	for _, l := range p.Lines() {
		if isMessage(l, "counters") {
			before++
		}
	}
	if err := p.Signal(syscall.SIGUSR1); err != nil {
		return DirectorStats{}, fmt.Errorf("SIGUSR1 to %s: %w", p.Name, err)
	}
	seen := 0
	l, err := p.WaitForLine(ctx, func(l Line) bool {
		if isMessage(l, "counters") {
			seen++
			return seen > before
		}
		return false
	})
	if err != nil {
		return DirectorStats{}, err
	}
	return ParseStats(l.Text)
}

// ParseStats reads a counters (or stopped) log line.
func ParseStats(line string) (DirectorStats, error) {
	var s DirectorStats
	if err := json.Unmarshal([]byte(line), &s); err != nil {
		return s, fmt.Errorf("director counters %q: %w", line, err)
	}
	return s, nil
}

// Failover makes director to the active one after stop (which kills the
// active director's holdfast) has run: by moving the routes by hand (Flip),
// or in a VRRP lab by waiting until keepalived has moved the floating
// addresses to it (bounded by ctx).
func (l *Lab) Failover(ctx context.Context, to int, stop func() error) error {
	if err := stop(); err != nil {
		return err
	}
	if l.vrrp != nil {
		return l.WaitVRRPMaster(ctx, to)
	}
	return l.Flip(to)
}
