package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	"holdfast/balancer"
	"holdfast/nat"
)

// A reload follows HAProxy's server-state rule: a runtime change to a real
// (real weight, real add, real remove) stays until the file changes that
// same real. The file's previous version (fileState) tells which reals it
// changed: a real whose line is the same as last time keeps its runtime
// state, one the file changed (or added, or dropped) takes the file's. A
// logrotate or config-management HUP thus never puts a real under
// maintenance back into service.

// ErrNothingToReload is what a Config.Reload returns when the services do
// not come from a file (they came from flags): a SIGHUP then changes
// nothing, and says why in one line (the error's text, e.g. "no --config;
// nothing to reload").
var ErrNothingToReload = errors.New("nothing to reload")

// fileReal is a real as the file gave it: its weight and its cookie id if
// given (0: none given).
type fileReal struct {
	weight int
	id     uint16
}

// fileService is a service as the file gave it.
type fileService struct {
	reals map[netip.AddrPort]fileReal
}

// fileState is one version of the file's services, by PROTO:VIP:PORT. It
// holds copies: the Director owns (and changes) the Services it was given.
type fileState map[string]fileService

func fileStateOf(svcs []*balancer.Service) fileState {
	st := make(fileState, len(svcs))
	for _, s := range svcs {
		fs := fileService{reals: make(map[netip.AddrPort]fileReal, len(s.Reals))}
		for _, r := range s.Reals {
			fr := fileReal{weight: r.Weight}
			if r.CookieIDSet {
				fr.id = r.CookieID
			}
			fs.reals[r.Addr] = fr
		}
		st[s.String()] = fs
	}
	return st
}

// reloadLine is one line a reload logs: a difference it applies, or a
// runtime change it keeps (kept).
type reloadLine struct {
	service string
	real    string // "" for a line about the service
	msg     string
	kept    bool
}

// mergeReload returns the services a reload applies (for
// nat.Director.Reconfigure) and what it changes: next is the file's new
// version, prev its previous one, running the Director's services now.
// Scheduler, persistence and check are the file's (they have no runtime
// change). Each real takes the file's weight unless the file did not change
// it since prev, when its runtime state stays: its runtime weight, removed
// if removed at runtime, there if added at runtime. It changes nothing;
// the Services it returns are new, or next's own.
func mergeReload(prev fileState, next []*balancer.Service, running []nat.ServiceInfo) ([]*balancer.Service, []reloadLine) {
	run := make(map[string]nat.ServiceInfo, len(running))
	for _, s := range running {
		run[s.Service] = s
	}
	var lines []reloadLine
	out := make([]*balancer.Service, 0, len(next))
	listed := make(map[string]bool, len(next))
	for _, ns := range next {
		name := ns.String()
		listed[name] = true
		rs, ok := run[name]
		if !ok {
			lines = append(lines, reloadLine{service: name, msg: "service " + name + " added (reload)"})
			out = append(out, ns)
			continue
		}
		svcLine := func(what, from, to string) {
			if from != to {
				lines = append(lines, reloadLine{service: name, msg: fmt.Sprintf("service %s %s %s -> %s (reload)", name, what, from, to)})
			}
		}
		svcLine("scheduler", rs.Scheduler, ns.Scheduler.Name())
		svcLine("persistence", rs.Persistence.String(), ns.Persistence.String())
		svcLine("check", rs.Check.String(), ns.Check.String())

		ps, inPrev := prev[name]
		live := make(map[netip.AddrPort]nat.RealInfo, len(rs.Reals))
		for _, r := range rs.Reals {
			if !r.Removed {
				live[r.Addr] = r
			}
		}
		ms := &balancer.Service{Proto: ns.Proto, VIP: ns.VIP, Scheduler: ns.Scheduler,
			Persistence: ns.Persistence, Check: ns.Check, Reals: make([]*balancer.Real, 0, len(ns.Reals))}
		inFile := make(map[netip.AddrPort]bool, len(ns.Reals))
		for _, fr := range ns.Reals {
			inFile[fr.Addr] = true
			a := fr.Addr.String()
			cur, isLive := live[fr.Addr]
			was, wasInFile := ps.reals[fr.Addr]
			given := fileReal{weight: fr.Weight}
			if fr.CookieIDSet {
				given.id = fr.CookieID
			}
			if inPrev && wasInFile && was == given { // the file did not change it
				switch {
				case !isLive:
					lines = append(lines, reloadLine{service: name, real: a, kept: true,
						msg: "real " + a + " stays removed (a runtime change the file did not change)"})
				default:
					if cur.Weight != fr.Weight {
						lines = append(lines, reloadLine{service: name, real: a, kept: true,
							msg: fmt.Sprintf("real %s keeps its runtime weight %d, not the file's %d (a runtime change the file did not change)", a, cur.Weight, fr.Weight)})
					}
					ms.Reals = append(ms.Reals, &balancer.Real{Addr: fr.Addr, Weight: cur.Weight, CookieID: fr.CookieID, CookieIDSet: fr.CookieIDSet})
				}
				continue
			}
			switch {
			case !isLive:
				lines = append(lines, reloadLine{service: name, real: a, msg: "real " + a + " added with weight " + strconv.Itoa(fr.Weight) + " (reload)"})
			case cur.Weight != fr.Weight:
				lines = append(lines, reloadLine{service: name, real: a, msg: fmt.Sprintf("real %s weight %d -> %d (reload)", a, cur.Weight, fr.Weight)})
			}
			if isLive && fr.CookieIDSet && cur.CookieID != 0 && cur.CookieID != fr.CookieID {
				// nat keeps a live real's id: its flows' cookies, on
				// every director, carry it. Say so instead of nothing.
				lines = append(lines, reloadLine{service: name, real: a, kept: true,
					msg: fmt.Sprintf("real %s keeps cookie id %d, not the file's %d (its flows' cookies carry it: remove the real, let its flows end, then add it with the new id)", a, cur.CookieID, fr.CookieID)})
			}
			ms.Reals = append(ms.Reals, &balancer.Real{Addr: fr.Addr, Weight: fr.Weight, CookieID: fr.CookieID, CookieIDSet: fr.CookieIDSet})
		}
		for _, r := range rs.Reals { // live reals the file does not list
			if r.Removed || inFile[r.Addr] {
				continue
			}
			a := r.Addr.String()
			if _, wasInFile := ps.reals[r.Addr]; inPrev && wasInFile {
				lines = append(lines, reloadLine{service: name, real: a, msg: "real " + a + " removed (reload)"})
				continue
			}
			lines = append(lines, reloadLine{service: name, real: a, kept: true,
				msg: "real " + a + " stays with weight " + strconv.Itoa(r.Weight) + " (added at runtime; the file never listed it)"})
			ms.Reals = append(ms.Reals, &balancer.Real{Addr: r.Addr, Weight: r.Weight, CookieID: r.CookieID})
		}
		out = append(out, ms)
	}
	for _, s := range running {
		if !listed[s.Service] {
			lines = append(lines, reloadLine{service: s.Service, msg: "service " + s.Service + " removed (reload)"})
		}
	}
	return out, lines
}

// reload applies the services of cfg.Reload on SIGHUP by the rule above.
// Services that do not validate are rejected whole: the running
// configuration stays.
func (r *runner) reload() {
	if r.cfg.Reload == nil {
		r.log.Info().Msg("reload: " + ErrNothingToReload.Error())
		return
	}
	next, err := r.cfg.Reload()
	if errors.Is(err, ErrNothingToReload) {
		r.log.Info().Msg("reload: " + err.Error())
		return
	}
	if err == nil {
		err = r.cfg.Recovery.Serves(next)
	}
	if err != nil {
		r.log.Error().Err(err).Msg("reload rejected; the running configuration stays")
		return
	}
	nextFile := fileStateOf(next) // before Reconfigure, which owns next's new services
	r.changeMu.Lock()
	apply, lines := mergeReload(r.file, next, r.d.Services())
	if err := r.d.Reconfigure(apply); err != nil {
		r.changeMu.Unlock()
		r.log.Error().Err(err).Msg("reload rejected; the running configuration stays")
		return
	}
	r.file = nextFile
	r.setChecks()
	running := r.d.Services()
	r.changeMu.Unlock()
	changed := 0
	for _, l := range lines {
		ev := r.log.Info().Str(fService, l.service)
		if l.real != "" {
			ev = ev.Str("real", l.real)
		}
		if !l.kept {
			changed++
		}
		ev.Msg(l.msg)
	}
	for _, svc := range running {
		if listed := slices.ContainsFunc(apply, func(s *balancer.Service) bool { return s.String() == svc.Service }); listed {
			r.logService(svc)
		}
	}
	r.log.Info().Int("services", len(apply)).Int("changes", changed).Msg("reloaded")
}
