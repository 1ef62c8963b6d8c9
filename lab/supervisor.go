package lab

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"holdfast/daemon/adminapi"
	"holdfast/internal/unixhttp"

	"github.com/rs/zerolog"
)

// The lab supervisor: `holdfast lab up` builds a lab and supervises it in
// the foreground (the built-in backends live in its process); `lab status`,
// `lab failover` and `lab down` (and in an ECMP lab `lab kill`, `lab start`
// and `lab leave`), from another terminal, ask it on a unix socket (Ask,
// AskDirector): SupervisorSocket, in the user's RuntimeDir, so that the
// user's other shells reach an unprivileged lab too, whose namespaces and
// /run they do not see.

const (
	// SupervisedPrefix starts the names of the namespaces of the lab a
	// Supervisor builds. Root has one such lab per host, which Remove can
	// find and delete after its supervisor was killed; an ordinary user has
	// one (its SupervisorSocket), whose namespaces the kernel removes with
	// its processes.
	SupervisedPrefix = "hflab-"

	// dirLogKeep is what a director's Proc keeps of its own output, for the
	// error of a start that fails; the supervisor's log ring has the rest.
	dirLogKeep = 200
)

// ErrLabUp says a supervisor of this user's already answers on
// SupervisorSocket.
var ErrLabUp = errors.New("a lab is already up")

// SupervisorOptions shape a supervised lab.
type SupervisorOptions struct {
	Binary    string         // the holdfast binary the directors run
	Directors int            // 1 or 2; 1..3 with ECMP
	Reals     int            // 1..MaxReals
	VRRP      bool           // keepalived moves the routes (Options.VRRP); needs 2 directors
	IPv6      bool           // a dual-stack lab (Options.IPv6) and directors; not with VRRP
	BGP       bool           // the directors announce by BGP to BIRD routers (Options.BGP); not with VRRP
	ECMP      bool           // the directors are a group behind the routers' ECMP (Options.ECMP, ECMPHoldfastArgs); needs BGP
	Log       zerolog.Logger // errors of the control socket's server
}

// Supervisor owns a running lab: its namespaces, the backends, holdfast in
// each director namespace, and the control socket. Its methods are safe for
// concurrent use (the control socket's handlers call them).
type Supervisor struct {
	l        *Lab
	bin      string
	vrrp     bool
	bgp      bool
	ecmp     bool
	stopSock func()

	// ops serialises the commands that change the directors (failover,
	// kill, start, leave): each waits for the routers to settle, which a
	// second one at the same time would confuse.
	ops sync.Mutex

	mu        sync.Mutex
	dirs      []*Proc // holdfast of each director, nil before its first start
	unplugged []bool  // director i's links are down (Kill), until Start
	leaving   []bool  // director i's holdfast got SIGTERM (Leave): it withdrew and drains

	logs []*logRing // each director's log, over its restarts; set once

	downOnce  sync.Once
	down      chan struct{} // closed by POST /down
	closeOnce sync.Once
	gone      chan struct{} // closed once the lab is torn down
	closeErr  error
}

// StartSupervisor builds the lab (namespaces SupervisedPrefix*), serves the
// backends, starts holdfast in each director namespace (A first, the VRRP
// master) and serves SupervisorSocket, which it takes first: when another
// supervisor of this user's answers there, it fails with ErrLabUp before
// building anything. On error everything it made is removed. ctx bounds
// the start; the caller waits for Down or its own signal, then calls Close.
func StartSupervisor(ctx context.Context, o SupervisorOptions) (_ *Supervisor, err error) {
	if o.VRRP && o.Directors != 2 {
		return nil, fmt.Errorf("lab: VRRP with %d directors, want 2", o.Directors)
	}
	if _, err := EnsureRuntimeDir(); err != nil {
		return nil, err
	}
	sock := SupervisorSocket()
	ln, err := unixhttp.Listen(sock)
	if errors.Is(err, unixhttp.ErrInUse) {
		return nil, fmt.Errorf("%w (%s answers)", ErrLabUp, sock)
	}
	if err != nil {
		return nil, err
	}
	l, err := New(Options{Prefix: SupervisedPrefix, Directors: o.Directors, Reals: o.Reals, VRRP: o.VRRP, IPv6: o.IPv6, BGP: o.BGP, ECMP: o.ECMP})
	if err != nil {
		ln.Close()
		return nil, err
	}
	n := len(l.Directors)
	s := &Supervisor{l: l, bin: o.Binary, vrrp: o.VRRP, bgp: o.BGP, ecmp: o.ECMP,
		dirs: make([]*Proc, n), unplugged: make([]bool, n), leaving: make([]bool, n),
		down: make(chan struct{}), gone: make(chan struct{})}
	for range l.Directors {
		s.logs = append(s.logs, newLogRing(logRingLines))
	}
	defer func() {
		if err != nil {
			ln.Close() // removes the socket file
			err = errors.Join(err, l.Close())
		}
	}()
	if err := l.ServeBackends(); err != nil {
		return nil, err
	}
	for i := range l.Directors {
		if err := s.start(ctx, i); err != nil {
			return nil, err
		}
		if o.VRRP && i == 0 { // A first, so that it is the master
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := l.WaitVRRPMaster(wctx, 0)
			cancel()
			if err != nil {
				return nil, err
			}
		}
	}
	if o.VRRP {
		if err := s.waitStandby(ctx, 1); err != nil {
			return nil, err
		}
	}
	switch {
	case o.ECMP:
		// The lab is up once both routers spread the traffic over every
		// director.
		if _, err := l.waitECMP(ctx, l.Directors); err != nil {
			return nil, err
		}
	case o.BGP:
		// The lab is up once the routers send the traffic to A and every
		// director's sessions are up (a standby that can take over).
		if err := waitBGP(ctx, l.WaitBGPActive, 0); err != nil {
			return nil, err
		}
		for i := range l.Directors {
			if err := waitBGP(ctx, l.WaitBGPEstablished, i); err != nil {
				return nil, err
			}
		}
	}
	s.stopSock = unixhttp.ServeListener(ln, s.handler(), o.Log)
	return s, nil
}

// Lab is the supervised lab.
func (s *Supervisor) Lab() *Lab { return s.l }

// Down is closed when a client asked for the lab to go down (POST /down).
func (s *Supervisor) Down() <-chan struct{} { return s.down }

// Close tears the lab down, then answers a waiting POST /down and stops the
// control socket: `lab down` returns once the lab is gone. It is
// idempotent.
func (s *Supervisor) Close() error {
	s.closeOnce.Do(func() {
		s.closeErr = s.l.Close()
		close(s.gone)
		if s.stopSock != nil {
			s.stopSock()
		}
	})
	return s.closeErr
}

// supervisedServices are the directors' services: HTTP, and the UDP echo
// every real serves too (ServeBackends).
var supervisedServices = []struct {
	proto string
	port  uint16
}{{"tcp", DefaultHTTPPort}, {"udp", DefaultUDPPort}}

// serviceArgs are the `holdfast run` flags of supervisedServices, rr over
// the reals, of both families in a dual-stack lab (Lab.ServiceArgs).
func (s *Supervisor) serviceArgs() []string {
	var args []string
	for _, svc := range supervisedServices {
		args = append(args, s.l.ServiceArgs(svc.proto, svc.port)...)
	}
	return args
}

// start runs holdfast in director i's namespace (in an ECMP lab as a
// group member: ECMPHoldfastArgs). Its output goes to the director's log
// ring, between a line that says it starts and one that says how it
// ended, which `lab logs` shows.
func (s *Supervisor) start(ctx context.Context, i int) error {
	d, ring := s.l.Directors[i], s.logs[i]
	ring.add(Line{Text: fmt.Sprintf("-- holdfast lab: starting holdfast in %s --", d.Name)})
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	o := procOptions{keep: dirLogKeep, sink: ring.add}
	args := HoldfastArgs(d, s.serviceArgs()...)
	if s.ecmp {
		args = ECMPHoldfastArgs(d, s.serviceArgs())
	}
	p, err := startHoldfast(sctx, d, s.bin, o, args...)
	if err != nil {
		ring.add(Line{Text: "-- holdfast lab: " + firstLine(err.Error()) + " --"})
		return err
	}
	p.atExit(func() {
		ring.add(Line{Text: fmt.Sprintf("-- holdfast lab: holdfast (pid %d) ended: %s --", p.PID(), procEnded(p))})
	})
	s.mu.Lock()
	s.dirs[i], s.leaving[i] = p, false
	s.mu.Unlock()
	return nil
}

// waitStandby waits (up to 10 s) until director i's keepalived is BACKUP:
// its holdfast has started, and keepalived's check (once a second) has
// seen it, so the lab that `lab up` or `lab failover` reports has a
// standby that can take over.
func (s *Supervisor) waitStandby(ctx context.Context, i int) error {
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return s.l.WaitVRRPState(wctx, i, VRRPBackupState)
}

func (s *Supervisor) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) { unixhttp.WriteJSON(w, s.Status(r.Context())) })
	mux.HandleFunc("POST /failover", func(w http.ResponseWriter, r *http.Request) {
		st, err := s.Failover(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		unixhttp.WriteJSON(w, st)
	})
	for command, f := range map[string]func(context.Context, string) (Status, error){
		AskKill: s.Kill, AskStart: s.Start, AskLeave: s.Leave,
	} {
		mux.HandleFunc("POST /"+command+"/{director}", func(w http.ResponseWriter, r *http.Request) {
			st, err := f(r.Context(), r.PathValue("director"))
			if err != nil {
				http.Error(w, err.Error(), http.StatusConflict)
				return
			}
			unixhttp.WriteJSON(w, st)
		})
	}
	mux.HandleFunc("GET /logs/{director}", s.serveLogs)
	mux.HandleFunc("POST /down", func(w http.ResponseWriter, r *http.Request) {
		s.downOnce.Do(func() { close(s.down) })
		select {
		case <-s.gone:
			unixhttp.WriteJSON(w, Status{Message: "the lab is down"})
		case <-r.Context().Done():
		}
	})
	return mux
}

// Status is the supervisor's answer: the lab, the active director, the
// directors' processes and counters, the reals' traffic, and what a
// command did (Message).
type Status struct {
	Prefix     string           `json:"prefix"`
	Namespaces []string         `json:"namespaces"`
	Client     string           `json:"client"`
	VIP        string           `json:"vip"`
	Services   []string         `json:"services"` // PROTO:VIP:PORT
	Active     string           `json:"active"`   // a director's label, or "none"; "ECMP" in an ECMP lab (NextHops says which)
	Enter      []string         `json:"enter"`    // argv that runs a command in one of the lab's namespaces: append the namespace, then the command
	Directors  []DirectorStatus `json:"directors"`
	Reals      []RealStatus     `json:"reals"`
	// NextHops are, in an ECMP lab, the directors both routers spread the
	// traffic over now.
	NextHops *NextHops `json:"next_hops,omitempty"`
	Message  string    `json:"message,omitempty"`
}

// DirectorStatus is one director of a Status. The counters are zero when
// the director is not running or did not answer in time.
type DirectorStatus struct {
	Label       string `json:"label"`
	Namespace   string `json:"namespace"`
	Uplink      string `json:"uplink"`
	RS          string `json:"rs"`
	AdminSocket string `json:"admin_socket"`
	Running     bool   `json:"running"`
	PID         int    `json:"pid,omitempty"`
	// Ended is how its last holdfast ended ("signal: killed", "exit status
	// 0"), while none runs.
	Ended string `json:"ended,omitempty"`
	// Leaving: its holdfast got SIGTERM (`lab leave`): it withdrew its
	// routes and forwards what still comes until its drain ends.
	Leaving bool `json:"leaving,omitempty"`
	// LinksDown: its links are down (`lab kill`), until `lab start`.
	LinksDown bool   `json:"links_down,omitempty"`
	VRRP      string `json:"vrrp,omitempty"` // keepalived's state (VRRPMasterState, ...) in a VRRP lab
	// BGP is, in a BGP lab, the state of its session on each router as
	// BIRD says it: "client Established, real Established".
	BGP       string `json:"bgp,omitempty"`
	Flows     int    `json:"flows"`
	Recovered int    `json:"recovered"`
	Adopted   int    `json:"adopted"`
}

// RealStatus is one real server of a Status: the flows the directors hold
// to it now (Active, UDPFlows: from their admin API's per-real counts),
// and what its backends served since `lab up` (the totals).
type RealStatus struct {
	Label           string `json:"label"`
	Addr            string `json:"addr"`
	Namespace       string `json:"namespace"`
	Active          int    `json:"active"`    // established TCP connections to its HTTP backend the directors hold now
	UDPFlows        int    `json:"udp_flows"` // UDP flows to its echo the directors hold now (until their idle timeout)
	HTTPConnections int64  `json:"http_connections"`
	HTTPRequests    int64  `json:"http_requests"`
	UDPDatagrams    int64  `json:"udp_datagrams"`
}

// Status describes the lab now.
func (s *Supervisor) Status(ctx context.Context) Status {
	st := Status{Prefix: s.l.Prefix, Client: ClientAddr.String(), VIP: VIP.String(), Active: "none", Enter: EnterArgv()}
	for _, vip := range s.l.VIPs() {
		for _, svc := range supervisedServices {
			st.Services = append(st.Services, svc.proto+":"+netip.AddrPortFrom(vip, svc.port).String())
		}
	}
	if s.ecmp {
		st.Active = "ECMP"
		if nh, err := s.l.ECMPNextHops(); err == nil {
			st.NextHops = &nh
		}
	} else if a := s.l.Active(); a != nil {
		st.Active = a.Label
	}
	for _, ns := range s.l.Namespaces() {
		st.Namespaces = append(st.Namespaces, ns.Name)
	}
	s.mu.Lock()
	dirs := append([]*Proc(nil), s.dirs...)
	unplugged, leaving := slices.Clone(s.unplugged), slices.Clone(s.leaving)
	s.mu.Unlock()
	active := map[string]int{} // PROTO:ADDR -> flows held now, over the directors
	for i, d := range s.l.Directors {
		ds := DirectorStatus{Label: d.Label, Namespace: d.Name, Uplink: d.Uplink.String(), RS: d.RSAddr.String(),
			AdminSocket: AdminSocket(d), VRRP: s.l.VRRPState(i), LinksDown: unplugged[i]}
		if s.bgp {
			ds.BGP = s.l.bgpStates(ctx, d)
		}
		if p := dirs[i]; p != nil {
			select {
			case <-p.Done():
				ds.Ended = procEnded(p)
			default:
				ds.Running, ds.PID, ds.Leaving = true, p.PID(), leaving[i]
				rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				if c, err := ReadStats(rctx, d); err == nil {
					ds.Flows, ds.Recovered, ds.Adopted = c.Flows, c.Recovered, c.Adopted
				}
				addActive(rctx, d, active)
				cancel()
			}
		}
		st.Directors = append(st.Directors, ds)
	}
	for _, r := range s.l.Reals {
		st.Reals = append(st.Reals, RealStatus{Label: r.Label, Addr: r.Addr.String(), Namespace: r.Name,
			Active: active["tcp:"+r.Addr.String()], UDPFlows: active["udp:"+r.Addr.String()],
			HTTPConnections: r.Stats.HTTPConns.Load(), HTTPRequests: r.Stats.HTTPRequests.Load(),
			UDPDatagrams: r.Stats.UDPDatagrams.Load()})
	}
	return st
}

// addActive adds director d's active flows per real (GET /services) to
// active, keyed "PROTO:ADDR". A director that does not answer adds nothing:
// its flows are gone or unknown, and Status says whether it runs.
func addActive(ctx context.Context, d *Director, active map[string]int) {
	c := adminapi.NewClient(AdminSocket(d))
	defer c.Close()
	svcs, err := c.Services(ctx)
	if err != nil {
		return
	}
	for _, svc := range svcs {
		proto, _, _ := strings.Cut(svc.Service, ":")
		for _, r := range svc.Reals {
			n := r.Active
			if proto == "udp" {
				n += r.Inactive // as in ipvsadm, a UDP flow is never "active"
			}
			active[proto+":"+r.Addr.Addr().String()] += n
		}
	}
}

// Failover kills the active director (SIGKILL), moves the routes to the
// other (or waits for keepalived to), and starts the killed one again as
// the standby.
func (s *Supervisor) Failover(ctx context.Context) (Status, error) {
	s.ops.Lock()
	defer s.ops.Unlock()
	if s.ecmp {
		return Status{}, errors.New("an ECMP lab has no active director to fail over from: every director carries traffic; use holdfast lab kill, start or leave N")
	}
	if len(s.l.Directors) < 2 {
		return Status{}, errors.New("this lab has one director: nothing to fail over to (holdfast lab up --directors 2)")
	}
	from := 0
	for i, d := range s.l.Directors {
		if d == s.l.Active() {
			from = i
		}
	}
	to := 1 - from
	s.mu.Lock()
	p := s.dirs[from]
	s.mu.Unlock()
	timeout := 10 * time.Second
	if s.bgp {
		timeout = bgpFailoverTimeout
	}
	fctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := s.l.Failover(fctx, to, func() error {
		if p != nil {
			p.Signal(syscall.SIGKILL) //nolint:errcheck // it may be dead already
			<-p.Done()
		}
		return nil
	})
	if err != nil {
		return Status{}, err
	}
	if s.bgp {
		if err := s.l.Replug(from); err != nil {
			return Status{}, err
		}
	}
	if err := s.start(ctx, from); err != nil {
		return Status{}, fmt.Errorf("restarting %s as the standby: %w", s.l.Directors[from].Label, err)
	}
	if s.vrrp {
		if err := s.waitStandby(ctx, from); err != nil {
			return Status{}, err
		}
	}
	if s.bgp {
		// The restarted director announces its lower MED (A) and takes the
		// traffic back, or stands by with the higher one (B).
		if err := waitBGP(ctx, s.l.WaitBGPEstablished, from); err != nil {
			return Status{}, err
		}
	}
	st := s.Status(ctx)
	how, killed := "routes moved", "killed (SIGKILL)"
	switch {
	case s.vrrp:
		how = "keepalived moved the floating addresses"
	case s.bgp:
		killed = "unplugged (its links down) and killed (SIGKILL)"
		how = "the routers moved (the client side at once, the real side after its hold timer)"
	}
	restarted := "restarted as the standby"
	if s.bgp && from == 0 {
		restarted = "restarted: it announces the lower MED, so the routers went back to it"
	}
	st.Message = fmt.Sprintf("director %s %s; %s to %s; %s %s",
		s.l.Directors[from].Label, killed, how, s.l.Directors[to].Label, s.l.Directors[from].Label, restarted)
	return st, nil
}

// procEnded is how p ended: "signal: killed", "exit status 0".
func procEnded(p *Proc) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == nil {
		return "running"
	}
	return p.state.String()
}

// ecmpDirector checks that this is an ECMP lab and finds the director
// labelled label (lab kill, start and leave name one).
func (s *Supervisor) ecmpDirector(command, label string) (int, error) {
	if !s.ecmp {
		return 0, fmt.Errorf("lab %s is for an ECMP lab (holdfast lab up --bgp --ecmp); in this one use holdfast lab failover", command)
	}
	return s.l.directorIndex(label)
}

// running is the directors whose holdfast runs and has not been told to
// leave: those both routers should spread the traffic over.
func (s *Supervisor) running() []*Director {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ds []*Director
	for i, p := range s.dirs {
		if p == nil || s.leaving[i] {
			continue
		}
		select {
		case <-p.Done():
		default:
			ds = append(ds, s.l.Directors[i])
		}
	}
	return ds
}

// proc is director i's holdfast if it runs, else nil.
func (s *Supervisor) proc(i int) *Proc {
	s.mu.Lock()
	p := s.dirs[i]
	s.mu.Unlock()
	if p == nil {
		return nil
	}
	select {
	case <-p.Done():
		return nil
	default:
		return p
	}
}

// settled waits until both routers spread the traffic over the running
// directors and says so for a command's message.
func (s *Supervisor) settled(ctx context.Context) (string, error) {
	ds := s.running()
	took, err := s.l.waitECMP(ctx, ds)
	if err != nil {
		return "", err
	}
	nh, err := s.l.ECMPNextHops()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("both routers' next hops %s after %v", nh, took.Round(time.Millisecond)), nil
}

// Kill crashes director label of an ECMP lab as a host dies: its links go
// down (Unplug: the client-side router drops its session at once, the
// real-side router, whose link stays up, through BFD in about a second),
// then its holdfast gets SIGKILL. It returns once both routers have taken
// it out of their next hops. Its links stay down until Start.
func (s *Supervisor) Kill(ctx context.Context, label string) (Status, error) {
	s.ops.Lock()
	defer s.ops.Unlock()
	i, err := s.ecmpDirector(AskKill, label)
	if err != nil {
		return Status{}, err
	}
	p := s.proc(i)
	if p == nil {
		return Status{}, fmt.Errorf("director %s's holdfast is not running (holdfast lab start %s)", label, label)
	}
	if err := s.l.Unplug(i); err != nil {
		return Status{}, err
	}
	s.mu.Lock()
	s.unplugged[i] = true
	s.mu.Unlock()
	p.Signal(syscall.SIGKILL) //nolint:errcheck // it may be dead already
	<-p.Done()
	how, err := s.settled(ctx)
	if err != nil {
		return Status{}, err
	}
	st := s.Status(ctx)
	st.Message = fmt.Sprintf("director %s unplugged (its links down) and killed (SIGKILL, pid %d); %s", label, p.PID(), how)
	return st, nil
}

// Start brings director label of an ECMP lab back: its links up (Replug)
// and a fresh holdfast, which announces once it serves. It returns once
// both routers have it among their next hops again.
func (s *Supervisor) Start(ctx context.Context, label string) (Status, error) {
	s.ops.Lock()
	defer s.ops.Unlock()
	i, err := s.ecmpDirector(AskStart, label)
	if err != nil {
		return Status{}, err
	}
	if p := s.proc(i); p != nil {
		return Status{}, fmt.Errorf("director %s's holdfast runs already (pid %d)", label, p.PID())
	}
	if err := s.l.Replug(i); err != nil {
		return Status{}, err
	}
	s.mu.Lock()
	s.unplugged[i] = false
	s.mu.Unlock()
	if err := s.start(ctx, i); err != nil {
		return Status{}, err
	}
	how, err := s.settled(ctx)
	if err != nil {
		return Status{}, err
	}
	st := s.Status(ctx)
	st.Message = fmt.Sprintf("director %s started (a fresh holdfast, pid %d); %s", label, s.proc(i).PID(), how)
	return st, nil
}

// Leave stops director label of an ECMP lab gracefully: SIGTERM, on which
// holdfast withdraws its routes, forwards what still comes for its drain
// time (--bgp-drain) while the routers move the traffic away, and exits.
// It returns once the routers have taken it out and its holdfast has
// exited.
func (s *Supervisor) Leave(ctx context.Context, label string) (Status, error) {
	s.ops.Lock()
	defer s.ops.Unlock()
	i, err := s.ecmpDirector(AskLeave, label)
	if err != nil {
		return Status{}, err
	}
	p := s.proc(i)
	if p == nil {
		return Status{}, fmt.Errorf("director %s's holdfast is not running (holdfast lab start %s)", label, label)
	}
	s.mu.Lock()
	s.leaving[i] = true
	s.mu.Unlock()
	start := time.Now()
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return Status{}, fmt.Errorf("director %s: SIGTERM: %w", label, err)
	}
	how, err := s.settled(ctx)
	if err != nil {
		return Status{}, err
	}
	wctx, cancel := context.WithTimeout(ctx, leaveTimeout)
	defer cancel()
	state, err := p.Wait(wctx)
	if err != nil {
		return Status{}, err
	}
	st := s.Status(ctx)
	st.Message = fmt.Sprintf("director %s left (SIGTERM, pid %d): %s; it drained and exited (%v) %v after the signal",
		label, p.PID(), how, state, time.Since(start).Round(time.Millisecond))
	return st, nil
}

// leaveTimeout bounds a leaving director's exit: holdfast's drain
// (--bgp-drain, 5 s by default) and its shutdown, with room.
const leaveTimeout = 20 * time.Second

// logsWait bounds how long GET /logs/{director}?wait=1 holds an answer
// with no new line: a follower asks again, and a dead client is noticed.
const logsWait = 25 * time.Second

// serveLogs answers GET /logs/{director}?since=SEQ[&wait=1]: the
// director's kept lines from SEQ on; with wait and none yet, it answers on
// the next line or after logsWait.
func (s *Supervisor) serveLogs(w http.ResponseWriter, r *http.Request) {
	label := r.PathValue("director")
	i := slices.IndexFunc(s.l.Directors, func(d *Director) bool { return d.Label == label })
	if i < 0 {
		http.Error(w, fmt.Sprintf("this lab has no director %q (it has %s)", label, s.labels()), http.StatusNotFound)
		return
	}
	var since uint64
	if v := r.URL.Query().Get("since"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			http.Error(w, fmt.Sprintf("since=%q: want a line number", v), http.StatusBadRequest)
			return
		}
		since = n
	}
	lines, next, dropped, changed := s.logs[i].since(since)
	if len(lines) == 0 && r.URL.Query().Get("wait") == "1" {
		t := time.NewTimer(logsWait)
		defer t.Stop()
		select {
		case <-changed:
			lines, next, dropped, _ = s.logs[i].since(since)
		case <-t.C:
		case <-r.Context().Done():
			return
		case <-s.gone:
		}
	}
	unixhttp.WriteJSON(w, Logs{Director: label, Lines: lines, Next: next, Dropped: dropped})
}

// labels lists the directors' labels: "A, B and C", "A and B", or "A".
func (s *Supervisor) labels() string {
	var ls []string
	for _, d := range s.l.Directors {
		ls = append(ls, d.Label)
	}
	if len(ls) < 2 {
		return strings.Join(ls, "")
	}
	return strings.Join(ls[:len(ls)-1], ", ") + " and " + ls[len(ls)-1]
}

// firstLine is s up to its first newline: an error that carries a
// process's stderr after its first line.
func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// Supervisor commands, for Ask; AskKill, AskStart and AskLeave name a
// director (AskDirector) and are for an ECMP lab.
const (
	AskStatus   = "status"
	AskFailover = "failover"
	AskDown     = "down"
	AskKill     = "kill"
	AskStart    = "start"
	AskLeave    = "leave"
)

// askTimeouts bound each command: a failover may wait for keepalived and a
// director's start, and down answers once the lab is torn down; kill and
// start wait for the routers (ecmpSettle) and a start, leave for the
// routers and the director's drain.
var askTimeouts = map[string]time.Duration{
	AskStatus: 10 * time.Second, AskFailover: 30 * time.Second, AskDown: 30 * time.Second,
	AskKill: 30 * time.Second, AskStart: 30 * time.Second, AskLeave: ecmpSettle + leaveTimeout + 10*time.Second,
}

// Ask sends a command (AskStatus, AskFailover, AskDown) to the supervisor
// listening on socket and returns its answer. AskDown returns once the lab
// is torn down. When nothing listens on socket the error wraps
// unixhttp.ErrUnreachable.
func Ask(ctx context.Context, socket, command string) (Status, error) {
	timeout, ok := askTimeouts[command]
	if !ok || command == AskKill || command == AskStart || command == AskLeave {
		return Status{}, fmt.Errorf("lab: supervisor command %q, want status, failover or down", command)
	}
	method := "POST"
	if command == AskStatus {
		method = "GET"
	}
	c := unixhttp.NewClient(socket)
	c.HTTP.Timeout = timeout
	var st Status
	err := c.Do(ctx, method, "/"+command, nil, &st)
	return st, err
}

// AskDirector sends a command about one director (AskKill, AskStart,
// AskLeave) to the supervisor listening on socket: POST /COMMAND/LABEL.
// When nothing listens on socket the error wraps unixhttp.ErrUnreachable.
func AskDirector(ctx context.Context, socket, command, label string) (Status, error) {
	if command != AskKill && command != AskStart && command != AskLeave {
		return Status{}, fmt.Errorf("lab: supervisor command %q about a director, want kill, start or leave", command)
	}
	c := unixhttp.NewClient(socket)
	c.HTTP.Timeout = askTimeouts[command]
	var st Status
	err := c.Do(ctx, "POST", "/"+command+"/"+url.PathEscape(label), nil, &st)
	return st, err
}

// AskLogs asks the supervisor on socket for director's log lines from
// since on (GET /logs/{director}); with wait it holds on until there is
// one, up to logsWait. When nothing listens on socket the error wraps
// unixhttp.ErrUnreachable.
func AskLogs(ctx context.Context, socket, director string, since uint64, wait bool) (Logs, error) {
	c := unixhttp.NewClient(socket)
	c.HTTP.Timeout = logsWait + 10*time.Second
	q := url.Values{"since": {strconv.FormatUint(since, 10)}}
	if wait {
		q.Set("wait", "1")
	}
	var l Logs
	err := c.Do(ctx, "GET", "/logs/"+url.PathEscape(director)+"?"+q.Encode(), nil, &l)
	return l, err
}
