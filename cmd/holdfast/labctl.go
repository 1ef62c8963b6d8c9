package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"holdfast/lab"

	"github.com/urfave/cli/v2"
)

// `holdfast lab up` builds a lab and supervises it in the foreground (the
// built-in backends live in its process); `lab status`, `lab failover` and
// `lab down`, from another terminal, talk to it on a unix socket.

const (
	labPrefix = "hflab-"
	labSocket = "/run/holdfast/lab.sock"
)

var (
	labDirectorsFlag = &cli.IntFlag{Name: "directors", Value: 2, Usage: "directors in the lab: 1 or 2"}
	labRealsFlag     = &cli.IntFlag{Name: "reals", Value: 3, Usage: "real servers in the lab: 1..100"}
)

func labUpCommand() *cli.Command {
	return &cli.Command{
		Name:  "up",
		Usage: "build the lab, start the directors and backends, and supervise them until Ctrl-C or `holdfast lab down`",
		Flags: []cli.Flag{labDirectorsFlag, labRealsFlag, labVRRPFlag}, OnUsageError: usageError,
		Action: unprivileged(labUp),
	}
}

func labSimpleCommand(name, usage, path string) *cli.Command {
	return &cli.Command{Name: name, Usage: usage, OnUsageError: usageError,
		Action: func(c *cli.Context) error { return labRequest(c, path) }}
}

// labStatus is what `lab status` prints.
type labStatus struct {
	Prefix     string              `json:"prefix"`
	Namespaces []string            `json:"namespaces"`
	Client     string              `json:"client"`
	VIP        string              `json:"vip"`
	Active     string              `json:"active"`
	Directors  []labDirector       `json:"directors"`
	Reals      []map[string]any    `json:"reals"`
	Message    string              `json:"message,omitempty"`
	Stats      []lab.DirectorStats `json:"-"`
}

type labDirector struct {
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

// labSupervisor owns a running lab.
type labSupervisor struct {
	l    *lab.Lab
	bin  string
	mu   sync.Mutex
	dirs []*lab.Proc
	vrrp bool
	down chan struct{} // closed by POST /down
	gone chan struct{} // closed once the lab is torn down
	once sync.Once
}

func labUp(c *cli.Context) error {
	n, reals := c.Int(labDirectorsFlag.Name), c.Int(labRealsFlag.Name)
	if n != 1 && n != 2 {
		return usagef("--directors %d: expected 1 or 2", n)
	}
	if reals < 1 || reals > lab.MaxReals {
		return usagef("--reals %d: expected 1..%d", reals, lab.MaxReals)
	}
	if left, _ := lab.List(labPrefix); len(left) > 0 {
		return cli.Exit(fmt.Sprintf("a lab is already up (%s...): run `holdfast lab down` first", left[0]), exitRuntime)
	}
	bin, err := os.Executable()
	if err != nil {
		return cli.Exit(err.Error(), exitRuntime)
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	fmt.Fprintln(os.Stderr, "building the lab...")
	vrrp := c.Bool(labVRRPFlag.Name)
	if vrrp && n != 2 {
		return usagef("--vrrp needs --directors 2")
	}
	l, err := lab.New(lab.Options{Prefix: labPrefix, Directors: n, Reals: reals, VRRP: vrrp})
	if err != nil {
		return cli.Exit("holdfast lab up: "+err.Error(), exitRuntime)
	}
	defer l.Close()
	if err := l.ServeBackends(); err != nil {
		return cli.Exit("holdfast lab up: "+err.Error(), exitRuntime)
	}
	s := &labSupervisor{l: l, bin: bin, vrrp: vrrp, dirs: make([]*lab.Proc, n), down: make(chan struct{}), gone: make(chan struct{})}
	for i := range l.Directors {
		if err := s.start(ctx, i); err != nil {
			return cli.Exit("holdfast lab up: "+err.Error(), exitRuntime)
		}
		if vrrp && i == 0 { // A first, so that it is the master
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := l.WaitVRRPMaster(wctx, 0)
			cancel()
			if err != nil {
				return cli.Exit("holdfast lab up: "+err.Error(), exitRuntime)
			}
		}
	}
	stopSock, err := serveAdmin(labSocket, s.handler(), newQuietLogger())
	if err != nil {
		return cli.Exit("holdfast lab up: "+err.Error(), exitRuntime)
	}
	defer stopSock()
	printLabUp(l)
	select {
	case <-ctx.Done():
	case <-s.down:
	}
	fmt.Fprintln(os.Stderr, "tearing the lab down...")
	// Here rather than in the deferred Close, so that POST /down can
	// answer once it is done (the socket is stopped after).
	err = l.Close()
	close(s.gone)
	if err != nil {
		return cli.Exit("holdfast lab up: tearing down: "+err.Error(), exitRuntime)
	}
	return nil
}

// start runs holdfast in director i's namespace.
func (s *labSupervisor) start(ctx context.Context, i int) error {
	d := s.l.Directors[i]
	args := []string{"--service", "tcp:" + netip.AddrPortFrom(lab.VIP, lab.DefaultHTTPPort).String(), "--scheduler", "rr"}
	for _, r := range s.l.Reals {
		args = append(args, "--real", netip.AddrPortFrom(r.Addr, lab.DefaultHTTPPort).String())
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	p, err := lab.StartHoldfast(sctx, d, s.bin, lab.HoldfastArgs(d, args...)...)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.dirs[i] = p
	s.mu.Unlock()
	return nil
}

func (s *labSupervisor) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, s.status(r.Context())) })
	mux.HandleFunc("POST /failover", func(w http.ResponseWriter, r *http.Request) {
		st, err := s.failover(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		writeJSON(w, st)
	})
	mux.HandleFunc("POST /down", func(w http.ResponseWriter, r *http.Request) {
		s.once.Do(func() { close(s.down) })
		select {
		case <-s.gone:
			writeJSON(w, labStatus{Message: "the lab is down"})
		case <-r.Context().Done():
		}
	})
	return mux
}

func (s *labSupervisor) status(ctx context.Context) labStatus {
	st := labStatus{Prefix: s.l.Prefix, Client: lab.ClientAddr.String(), VIP: lab.VIP.String(), Active: "none"}
	if a := s.l.Active(); a != nil {
		st.Active = a.Label
	}
	for _, ns := range s.l.Namespaces() {
		st.Namespaces = append(st.Namespaces, ns.Name)
	}
	s.mu.Lock()
	dirs := append([]*lab.Proc(nil), s.dirs...)
	s.mu.Unlock()
	for i, d := range s.l.Directors {
		ld := labDirector{Label: d.Label, Namespace: d.Name, Uplink: d.Uplink.String(), RS: d.RSAddr.String()}
		if p := dirs[i]; p != nil {
			select {
			case <-p.Done():
			default:
				ld.Running, ld.PID = true, p.PID()
				rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				if ds, err := lab.ReadStats(rctx, p); err == nil {
					ld.Flows, ld.Recovered, ld.Adopted = ds.Flows, ds.Recovered, ds.Adopted
				}
				cancel()
			}
		}
		st.Directors = append(st.Directors, ld)
	}
	for _, r := range s.l.Reals {
		st.Reals = append(st.Reals, map[string]any{"label": r.Label, "addr": r.Addr.String(), "namespace": r.Name,
			"http_connections": r.Stats.HTTPConns.Load(), "http_requests": r.Stats.HTTPRequests.Load()})
	}
	return st
}

// failover kills the active director (SIGKILL), moves the routes to the
// other, and starts the killed one again as the standby.
func (s *labSupervisor) failover(ctx context.Context) (labStatus, error) {
	if len(s.l.Directors) < 2 {
		return labStatus{}, errors.New("this lab has one director: nothing to fail over to (holdfast lab up --directors 2)")
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
		return labStatus{}, err
	}
	if err := s.start(ctx, from); err != nil {
		return labStatus{}, fmt.Errorf("restarting %s as the standby: %w", s.l.Directors[from].Label, err)
	}
	st := s.status(ctx)
	how := "routes moved"
	if s.vrrp {
		how = "keepalived moved the floating addresses"
	}
	st.Message = fmt.Sprintf("director %s killed (SIGKILL); %s to %s; %s restarted as the standby",
		s.l.Directors[from].Label, how, s.l.Directors[to].Label, s.l.Directors[from].Label)
	return st, nil
}

func printLabUp(l *lab.Lab) {
	fmt.Printf("The lab is up (namespaces %s*, addresses in 198.18.0.0/15):\n\n", l.Prefix)
	fmt.Printf("  client     %-16s ns %s\n", lab.ClientAddr, l.Client.Name)
	fmt.Printf("  router     %-16s ns %s\n", lab.ClientGateway, l.Router.Name)
	for _, d := range l.Directors {
		fmt.Printf("  director %s %-16s ns %s (real side %s)\n", d.Label, d.Uplink.Addr(), d.Name, d.RSAddr.Addr())
	}
	for _, r := range l.Reals {
		fmt.Printf("  %-10s %-16s ns %s (HTTP :%d, UDP echo :%d)\n", r.Label, r.Addr, r.Name, lab.DefaultHTTPPort, lab.DefaultUDPPort)
	}
	active := "none yet"
	if a := l.Active(); a != nil {
		active = a.Label
	}
	fmt.Printf("  VIP        %-16s tcp:%d, rr over the reals; active director %s\n\n", lab.VIP, lab.DefaultHTTPPort, active)
	fmt.Printf("Try, from another terminal:\n")
	fmt.Printf("  ip netns exec %s curl -s http://%s/          # answered by a real\n", l.Client.Name, lab.VIP)
	fmt.Printf("  holdfast conns --admin-socket %s\n", lab.AdminSocket(l.Directors[0]))
	fmt.Printf("  holdfast lab status\n")
	fmt.Printf("  holdfast lab failover                          # kill the active director, move the routes\n")
	fmt.Printf("  holdfast lab down                              # or Ctrl-C here\n")
}

// labDownTimeout bounds the wait for the supervisor to tear the lab down.
const labDownTimeout = 30 * time.Second

// labRequest sends a lab subcommand to the supervisor.
func labRequest(c *cli.Context, path string) error {
	method := "POST"
	if path == "/status" {
		method = "GET"
	}
	cl := newAdminClient(labSocket)
	if path == "/down" {
		// The supervisor answers once it has torn the lab down.
		cl.HTTP.Timeout = labDownTimeout
	}
	var st labStatus
	err := cl.do(method, path, struct{}{}, &st)
	if path == "/down" {
		if err == nil {
			fmt.Println(st.Message)
			if left, _ := lab.List(labPrefix); len(left) == 0 {
				return nil
			}
		}
		// No supervisor (killed), or it left something: sweep.
		return labSweep()
	}
	if err != nil {
		return cli.Exit(fmt.Sprintf("holdfast lab %s: %v (is `holdfast lab up` running?)", c.Command.Name, err), exitRuntime)
	}
	if st.Message != "" {
		fmt.Println(st.Message)
	}
	fmt.Printf("lab %s*: client %s, VIP %s, active director %s\n", st.Prefix, st.Client, st.VIP, st.Active)
	for _, d := range st.Directors {
		state := "not running"
		if d.Running {
			state = fmt.Sprintf("running (pid %d): %d flows, %d recovered, %d adopted", d.PID, d.Flows, d.Recovered, d.Adopted)
		}
		fmt.Printf("  director %s  %-18s ns %-16s %s\n", d.Label, d.Uplink, d.Namespace, state)
	}
	for _, r := range st.Reals {
		fmt.Printf("  %-5v %-15v ns %-16v %v connections, %v requests\n", r["label"], r["addr"], r["namespace"], r["http_connections"], r["http_requests"])
	}
	return nil
}

// labSweep removes a lab whose supervisor is gone (killed): the processes
// left in its namespaces, by PID, then the namespaces.
func labSweep() error {
	names, err := lab.List(labPrefix)
	if err != nil {
		return cli.Exit(err.Error(), exitRuntime)
	}
	if len(names) == 0 {
		fmt.Println("no lab is up")
		return nil
	}
	for _, n := range names {
		out, _ := exec.Command("ip", "netns", "pids", n).Output()
		for _, f := range strings.Fields(string(out)) {
			var pid int
			if _, err := fmt.Sscan(f, &pid); err == nil && pid > 1 {
				syscall.Kill(pid, syscall.SIGKILL) //nolint:errcheck // a process of the lab's namespaces
			}
		}
		if out, err := exec.Command("ip", "netns", "delete", n).CombinedOutput(); err != nil {
			return cli.Exit(fmt.Sprintf("delete %s: %v %s", n, err, out), exitRuntime)
		}
	}
	fmt.Printf("removed %d leftover namespaces (%s*)\n", len(names), labPrefix)
	return nil
}
