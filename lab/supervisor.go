package lab

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"holdfast/internal/unixhttp"

	"github.com/rs/zerolog"
)

// The lab supervisor: `holdfast lab up` builds a lab and supervises it in
// the foreground (the built-in backends live in its process); `lab status`,
// `lab failover` and `lab down`, from another terminal, ask it on a unix
// socket (Ask).

const (
	// SupervisedPrefix starts the names of the namespaces of the lab a
	// Supervisor builds: there is one such lab per host, which Remove can
	// find and delete after its supervisor was killed.
	SupervisedPrefix = "hflab-"
	// SupervisorSocket is the supervisor's control socket.
	SupervisorSocket = "/run/holdfast/lab.sock"
)

// SupervisorOptions shape a supervised lab.
type SupervisorOptions struct {
	Binary    string         // the holdfast binary the directors run
	Directors int            // 1 or 2
	Reals     int            // 1..MaxReals
	VRRP      bool           // keepalived moves the routes (Options.VRRP); needs 2 directors
	Log       zerolog.Logger // errors of the control socket's server
}

// Supervisor owns a running lab: its namespaces, the backends, holdfast in
// each director namespace, and the control socket. Its methods are safe for
// concurrent use (the control socket's handlers call them).
type Supervisor struct {
	l        *Lab
	bin      string
	vrrp     bool
	stopSock func()

	mu   sync.Mutex
	dirs []*Proc // holdfast of each director, nil before its first start

	downOnce  sync.Once
	down      chan struct{} // closed by POST /down
	closeOnce sync.Once
	gone      chan struct{} // closed once the lab is torn down
	closeErr  error
}

// StartSupervisor builds the lab (namespaces SupervisedPrefix*), serves the
// backends, starts holdfast in each director namespace (A first, the VRRP
// master) and listens on SupervisorSocket. On error everything it made is
// removed. ctx bounds the start; the caller waits for Down or its own
// signal, then calls Close.
func StartSupervisor(ctx context.Context, o SupervisorOptions) (_ *Supervisor, err error) {
	if o.VRRP && o.Directors != 2 {
		return nil, fmt.Errorf("lab: VRRP with %d directors, want 2", o.Directors)
	}
	l, err := New(Options{Prefix: SupervisedPrefix, Directors: o.Directors, Reals: o.Reals, VRRP: o.VRRP})
	if err != nil {
		return nil, err
	}
	s := &Supervisor{l: l, bin: o.Binary, vrrp: o.VRRP, dirs: make([]*Proc, len(l.Directors)),
		down: make(chan struct{}), gone: make(chan struct{})}
	defer func() {
		if err != nil {
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
	if s.stopSock, err = unixhttp.Serve(SupervisorSocket, s.handler(), o.Log); err != nil {
		return nil, err
	}
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

// start runs holdfast in director i's namespace.
func (s *Supervisor) start(ctx context.Context, i int) error {
	d := s.l.Directors[i]
	args := []string{"--service", "tcp:" + netip.AddrPortFrom(VIP, DefaultHTTPPort).String(), "--scheduler", "rr"}
	for _, r := range s.l.Reals {
		args = append(args, "--real", netip.AddrPortFrom(r.Addr, DefaultHTTPPort).String())
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	p, err := StartHoldfast(sctx, d, s.bin, HoldfastArgs(d, args...)...)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.dirs[i] = p
	s.mu.Unlock()
	return nil
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
	Active     string           `json:"active"` // a director's label, or "none"
	Directors  []DirectorStatus `json:"directors"`
	Reals      []RealStatus     `json:"reals"`
	Message    string           `json:"message,omitempty"`
}

// DirectorStatus is one director of a Status. The counters are zero when
// the director is not running or did not answer in time.
type DirectorStatus struct {
	Label     string `json:"label"`
	Namespace string `json:"namespace"`
	Uplink    string `json:"uplink"`
	RS        string `json:"rs"`
	Running   bool   `json:"running"`
	PID       int    `json:"pid,omitempty"`
	Flows     int    `json:"flows"`
	Recovered int    `json:"recovered"`
	Adopted   int    `json:"adopted"`
}

// RealStatus is one real server of a Status: what its HTTP backend served.
type RealStatus struct {
	Label           string `json:"label"`
	Addr            string `json:"addr"`
	Namespace       string `json:"namespace"`
	HTTPConnections int64  `json:"http_connections"`
	HTTPRequests    int64  `json:"http_requests"`
}

// Status describes the lab now.
func (s *Supervisor) Status(ctx context.Context) Status {
	st := Status{Prefix: s.l.Prefix, Client: ClientAddr.String(), VIP: VIP.String(), Active: "none"}
	if a := s.l.Active(); a != nil {
		st.Active = a.Label
	}
	for _, ns := range s.l.Namespaces() {
		st.Namespaces = append(st.Namespaces, ns.Name)
	}
	s.mu.Lock()
	dirs := append([]*Proc(nil), s.dirs...)
	s.mu.Unlock()
	for i, d := range s.l.Directors {
		ds := DirectorStatus{Label: d.Label, Namespace: d.Name, Uplink: d.Uplink.String(), RS: d.RSAddr.String()}
		if p := dirs[i]; p != nil {
			select {
			case <-p.Done():
			default:
				ds.Running, ds.PID = true, p.PID()
				rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				if c, err := ReadStats(rctx, d); err == nil {
					ds.Flows, ds.Recovered, ds.Adopted = c.Flows, c.Recovered, c.Adopted
				}
				cancel()
			}
		}
		st.Directors = append(st.Directors, ds)
	}
	for _, r := range s.l.Reals {
		st.Reals = append(st.Reals, RealStatus{Label: r.Label, Addr: r.Addr.String(), Namespace: r.Name,
			HTTPConnections: r.Stats.HTTPConns.Load(), HTTPRequests: r.Stats.HTTPRequests.Load()})
	}
	return st
}

// Failover kills the active director (SIGKILL), moves the routes to the
// other (or waits for keepalived to), and starts the killed one again as
// the standby.
func (s *Supervisor) Failover(ctx context.Context) (Status, error) {
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
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
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
	if err := s.start(ctx, from); err != nil {
		return Status{}, fmt.Errorf("restarting %s as the standby: %w", s.l.Directors[from].Label, err)
	}
	st := s.Status(ctx)
	how := "routes moved"
	if s.vrrp {
		how = "keepalived moved the floating addresses"
	}
	st.Message = fmt.Sprintf("director %s killed (SIGKILL); %s to %s; %s restarted as the standby",
		s.l.Directors[from].Label, how, s.l.Directors[to].Label, s.l.Directors[from].Label)
	return st, nil
}

// Supervisor commands, for Ask.
const (
	AskStatus   = "status"
	AskFailover = "failover"
	AskDown     = "down"
)

// askTimeouts bound each command: a failover may wait for keepalived and a
// director's start, and down answers once the lab is torn down.
var askTimeouts = map[string]time.Duration{AskStatus: 10 * time.Second, AskFailover: 30 * time.Second, AskDown: 30 * time.Second}

// Ask sends a command (AskStatus, AskFailover, AskDown) to the supervisor
// listening on socket and returns its answer. AskDown returns once the lab
// is torn down. When nothing listens on socket the error wraps
// unixhttp.ErrUnreachable.
func Ask(ctx context.Context, socket, command string) (Status, error) {
	timeout, ok := askTimeouts[command]
	if !ok {
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
