package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"holdfast/balancer"
	"holdfast/bfd"
	"holdfast/bgp"
	"holdfast/daemon/adminapi"
	"holdfast/internal/buildinfo"
	"holdfast/internal/unixhttp"
	"holdfast/nat"
)

// The admin API (package adminapi has its wire format): HTTP with JSON
// bodies on a unix socket, for the conns, stats, service and real
// subcommands and the lab. The JSON types are defined there, not in nat:
// presentation belongs to the edge.

// listenAdmin takes the admin socket: Run calls it before it opens the TUN
// or installs a route, so that a second director with the same socket (the
// default one: same TUN name, same network namespace) refuses to start
// with nothing to undo.
func listenAdmin(path string) (net.Listener, error) {
	ln, err := unixhttp.Listen(path)
	if err != nil {
		return nil, runtimeError(PartAdmin, err)
	}
	return ln, nil
}

// adminHandler is the admin API; its /info says the director started now.
func (r *runner) adminHandler() http.Handler {
	mux := http.NewServeMux()
	started := time.Now()
	mux.HandleFunc("GET "+adminapi.PathInfo, func(w http.ResponseWriter, _ *http.Request) {
		unixhttp.WriteJSON(w, r.info(started))
	})
	mux.HandleFunc("GET "+adminapi.PathConns, r.conns)
	mux.HandleFunc("GET "+adminapi.PathStats, func(w http.ResponseWriter, _ *http.Request) {
		unixhttp.WriteJSON(w, statsMap(r.src.snapshot()))
	})
	mux.HandleFunc("GET "+adminapi.PathServices, func(w http.ResponseWriter, _ *http.Request) {
		unixhttp.WriteJSON(w, services(r.d.Services()))
	})
	mux.HandleFunc("GET "+adminapi.PathConfig, func(w http.ResponseWriter, _ *http.Request) {
		unixhttp.WriteJSON(w, runningConfig(r.d.Services()))
	})
	mux.HandleFunc("POST "+adminapi.PathReal, r.real)
	mux.HandleFunc("GET "+adminapi.PathBGP, func(w http.ResponseWriter, _ *http.Request) {
		sp := r.src.bgp.Load()
		if sp == nil {
			http.Error(w, "BGP is off (holdfast run --bgp-local-as ... --bgp-peer ...)", http.StatusNotFound)
			return
		}
		st := bgpStatus(sp.Status(), r.src.bfd.Load())
		unixhttp.WriteJSON(w, st)
	})
	return mux
}

// bgpStatus is the speaker's state in the API's words, each peer with its
// BFD session (b nil: BFD off).
func bgpStatus(st bgp.Status, b *bfd.Server) adminapi.BGP {
	strs := func(ps []netip.Prefix) []string {
		out := make([]string, 0, len(ps))
		for _, p := range ps {
			out = append(out, p.String())
		}
		return out
	}
	out := adminapi.BGP{LocalAS: st.LocalAS, RouterID: st.RouterID.String(), MED: st.MED,
		Peers: make([]adminapi.BGPPeer, 0, len(st.Peers)), ClientSide: strs(st.ClientSide), RealSide: strs(st.RealSide), Withdrawn: st.Withdrawn}
	for _, p := range st.Peers {
		out.Peers = append(out.Peers, adminapi.BGPPeer{Addr: p.Addr.String(), Side: p.Side.String(), AS: p.AS, State: p.State,
			Since: p.Since.Truncate(time.Millisecond), Uptime: p.Uptime.Seconds(), LastError: p.LastError,
			Advertised: p.Advertised, Received: p.Received})
		if b == nil {
			continue
		}
		if ss, ok := b.Session(p.Addr); ok {
			out.Peers[len(out.Peers)-1].BFD = &adminapi.BFDSession{State: ss.State.String(), RemoteState: ss.RemoteState.String(),
				Diag: ss.Diag.String(), Since: ss.Since.Truncate(time.Millisecond), DetectTime: ss.DetectTime.Seconds(),
				TxInterval: ss.TxInterval.Seconds()}
		}
	}
	return out
}

// info is GET /info.
func (r *runner) info(started time.Time) adminapi.Info {
	inode, name := netNS()
	tunName := r.cfg.TUN
	if r.cfg.Device != nil {
		tunName = r.cfg.Device.Name()
	}
	return adminapi.Info{
		ID: r.cfg.Recovery.ID, PID: os.Getpid(), TUN: tunName, NetNS: inode, NetNSName: name,
		Started: started.Truncate(time.Millisecond), Uptime: time.Since(started).Seconds(),
		Version: buildinfo.Read().String(), Socket: r.cfg.AdminSocket,
	}
}

// netNS returns the inode of the process's network namespace and its name
// under /run/netns (where `ip netns add` bind-mounts it), "" if it has
// none there. The inode is 0 if /proc cannot tell.
func netNS() (inode uint64, name string) {
	self, err := os.Stat("/proc/self/ns/net")
	if err != nil {
		return 0, ""
	}
	st, ok := self.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, ""
	}
	entries, _ := os.ReadDir("/run/netns") // none: no names
	for _, e := range entries {
		fi, err := os.Stat(filepath.Join("/run/netns", e.Name()))
		if err != nil {
			continue
		}
		if o, ok := fi.Sys().(*syscall.Stat_t); ok && o.Ino == st.Ino && o.Dev == st.Dev {
			return st.Ino, e.Name()
		}
	}
	return st.Ino, ""
}

// services converts nat's view of the services to the API's.
func services(in []nat.ServiceInfo) []adminapi.Service {
	out := make([]adminapi.Service, 0, len(in))
	for _, s := range in {
		as := adminapi.Service{Service: s.Service, Scheduler: s.Scheduler, Persistence: s.Persistence}
		for _, r := range s.Reals {
			as.Reals = append(as.Reals, adminapi.Real{
				Addr: r.Addr, Weight: r.Weight, Down: r.Down, Removed: r.Removed, Rehome: r.Rehome,
				CookieID: r.CookieID, Active: r.Active, Inactive: r.Inactive, Conns: r.Conns,
				PacketsIn: r.PacketsIn, BytesIn: r.BytesIn, PacketsOut: r.PacketsOut, BytesOut: r.BytesOut,
			})
		}
		out = append(out, as)
	}
	return out
}

// runningConfig is the services as a --config file (GET /config): each
// real with its weight now and its cookie id made explicit (so that the
// file, run or reloaded, gives every real the id its flows carry). Reals
// removed at runtime are left out; a real marked down by its check is
// listed (its health is no configuration).
func runningConfig(in []nat.ServiceInfo) adminapi.Config {
	out := adminapi.Config{Services: make([]adminapi.ConfigService, 0, len(in))}
	for _, s := range in {
		cs := adminapi.ConfigService{Service: s.Service, Scheduler: s.Scheduler, Reals: []string{}}
		if s.Persistence != 0 {
			cs.Persistence = s.Persistence.String()
		}
		if s.Check.Kind != balancer.CheckNone {
			cs.Check = s.Check.String()
		}
		for _, r := range s.Reals {
			if r.Removed {
				continue
			}
			real := r.Addr.String() + "*" + strconv.Itoa(r.Weight)
			if r.CookieID != 0 {
				real += ",id=" + strconv.Itoa(int(r.CookieID))
			}
			cs.Reals = append(cs.Reals, real)
		}
		out.Services = append(out.Services, cs)
	}
	return out
}

func (r *runner) conns(w http.ResponseWriter, _ *http.Request) {
	now := r.clk.Now()
	flows := r.d.Flows(now)
	out := make([]adminapi.Conn, 0, len(flows))
	for _, f := range flows {
		c := adminapi.Conn{
			Proto: balancer.Proto(f.Proto).String(), Client: f.Client.String(), VIP: f.VIP.String(),
			Real: f.Real.String(), State: f.State.String(), Kind: f.Kind.String(),
			SeqDelta: f.SeqDelta, AckDelta: f.AckDelta, TSvalDelta: f.TSvalDelta, TSecrDelta: f.TSecrDelta,
			ExpiresIn: time.Duration(f.Expires - now).Seconds(),
		}
		if f.Local.IsValid() {
			c.Local = f.Local.String()
		}
		out = append(out, c)
	}
	unixhttp.WriteJSON(w, out)
}

func (r *runner) real(w http.ResponseWriter, req *http.Request) {
	var c adminapi.RealChange
	dec := json.NewDecoder(http.MaxBytesReader(w, req.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	r.changeMu.Lock()
	err := r.applyReal(c)
	if err == nil {
		r.setChecks() // a real added is checked from now on, one removed no longer
	}
	r.changeMu.Unlock()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ev := r.log.Info().Str("op", c.Op).Str(fService, c.Service).Str("real", c.Real)
	switch c.Op {
	case "add":
		// The weight is the one in the real's ADDR:PORT*WEIGHT (1 if
		// none): RealChange.Weight is real weight's field.
		if _, weight, _, err := balancer.ParseReal(c.Real); err == nil {
			ev = ev.Int("weight", weight)
		}
	case "weight":
		ev = ev.Int("weight", c.Weight)
	case "remove":
		ev = ev.Bool("rehome", c.Rehome)
	}
	ev.Msg("real changed")
	unixhttp.WriteJSON(w, services(r.d.Services()))
}

// applyReal applies one change. Errors start with the name of the
// request's field they are about (see adminapi.RealChange).
func (r *runner) applyReal(c adminapi.RealChange) error {
	addr, weight, id, err := balancer.ParseReal(c.Real)
	if err != nil {
		return fmt.Errorf("real: %w", err)
	}
	if c.Op != "add" && addr.String() != c.Real {
		// A weight or an id in the real's string would be ignored: say
		// so instead (`real weight` takes --weight).
		return fmt.Errorf("real %q: expected ADDR:PORT alone (a weight or an id is for real add; real weight takes --weight)", c.Real)
	}
	if c.Op == "remove" && c.Service == "" {
		return r.removeEverywhere(addr, c.Rehome)
	}
	proto, vip, err := balancer.ParseService(c.Service)
	if err != nil {
		return fmt.Errorf("service: %w", err)
	}
	switch c.Op {
	case "add":
		return r.d.AddReal(proto, vip, addr, weight, id)
	case "remove":
		return removeError(r.d.RemoveReal(proto, vip, addr, c.Rehome))
	case "weight":
		if c.Weight < 0 || c.Weight > 65535 {
			return fmt.Errorf("weight %d: expected 0..65535", c.Weight)
		}
		return r.d.SetWeight(proto, vip, addr, c.Weight)
	}
	return fmt.Errorf("op %q: expected add, remove or weight", c.Op)
}

// removeError names the request field a refused removal is about.
func removeError(err error) error {
	if errors.Is(err, nat.ErrRecoveryOff) {
		return errors.New("rehome needs recovery on (holdfast run --recovery=on)")
	}
	return err
}

// removeEverywhere removes a real from every service that has it.
func (r *runner) removeEverywhere(addr netip.AddrPort, rehome bool) error {
	n := 0
	for _, s := range r.d.Services() {
		for _, real := range s.Reals {
			if real.Addr != addr || real.Removed {
				continue
			}
			proto, vip, err := balancer.ParseService(s.Service)
			if err == nil {
				err = removeError(r.d.RemoveReal(proto, vip, addr, rehome))
			}
			if err != nil {
				return err
			}
			n++
		}
	}
	if n == 0 {
		return fmt.Errorf("no service has real %s", addr)
	}
	return nil
}
