package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"holdfast/balancer"
	"holdfast/internal/clock"
	"holdfast/nat"
	"holdfast/stack/pump"

	"github.com/rs/zerolog"
)

// The admin API: HTTP with JSON bodies on a unix socket, used by the
// holdfast conns, stats, service and real subcommands.

// defaultAdminSocket includes the TUN name: directors in different network
// namespaces share one filesystem.
func defaultAdminSocket(tun string) string { return "/run/holdfast/" + tun + ".sock" }

// ConnInfo is one flow as `holdfast conns` shows it.
type ConnInfo struct {
	Proto      string  `json:"proto"`
	Client     string  `json:"client"`
	VIP        string  `json:"vip"`
	Real       string  `json:"real"`
	Local      string  `json:"local,omitempty"` // recovery address:port (recovered flows)
	State      string  `json:"state"`
	Kind       string  `json:"kind"`
	SeqDelta   uint32  `json:"seq_delta"`
	AckDelta   uint32  `json:"ack_delta"`
	TSvalDelta uint32  `json:"tsval_delta"`
	TSecrDelta uint32  `json:"tsecr_delta"`
	ExpiresIn  float64 `json:"expires_in_s"`
}

// RealChange is the body of POST /real.
type RealChange struct {
	Op      string `json:"op"`      // add, remove, weight
	Service string `json:"service"` // PROTO:VIP:PORT; for remove "" means every service with the real
	Real    string `json:"real"`    // ADDR:PORT[*WEIGHT] for add, ADDR:PORT otherwise
	Weight  int    `json:"weight"`  // for weight
	Rehome  bool   `json:"rehome"`  // for remove: move the real's flows to other reals
}

type admin struct {
	d     *nat.Director
	pump  pump.Pumps
	clock *clock.Clock
	stats func() map[string]any
	log   zerolog.Logger
}

func (a *admin) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /conns", a.conns)
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, a.stats()) })
	mux.HandleFunc("GET /services", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, a.d.Services()) })
	mux.HandleFunc("POST /real", a.real)
	return mux
}

func (a *admin) conns(w http.ResponseWriter, _ *http.Request) {
	now := a.clock.Now()
	flows := a.d.Flows(now)
	out := make([]ConnInfo, 0, len(flows))
	for _, f := range flows {
		c := ConnInfo{
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
	writeJSON(w, out)
}

func (a *admin) real(w http.ResponseWriter, r *http.Request) {
	var c RealChange
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err := a.applyReal(c); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	a.log.Info().Str("op", c.Op).Str(fService, c.Service).Str("real", c.Real).Int("weight", c.Weight).Bool("rehome", c.Rehome).Msg("real changed")
	writeJSON(w, a.d.Services())
}

func (a *admin) applyReal(c RealChange) error {
	addr, weight, err := balancer.ParseReal(c.Real)
	if err != nil {
		return fmt.Errorf("--real: %w", err)
	}
	if c.Op == "remove" && c.Service == "" {
		return a.removeEverywhere(addr, c.Rehome)
	}
	proto, vip, err := balancer.ParseService(c.Service)
	if err != nil {
		return fmt.Errorf("--service: %w", err)
	}
	switch c.Op {
	case "add":
		return a.d.AddReal(proto, vip, addr, weight)
	case "remove":
		return a.d.RemoveReal(proto, vip, addr, c.Rehome)
	case "weight":
		if c.Weight < 0 || c.Weight > 65535 {
			return fmt.Errorf("--weight %d: expected 0..65535", c.Weight)
		}
		return a.d.SetWeight(proto, vip, addr, c.Weight)
	}
	return fmt.Errorf("op %q: expected add, remove or weight", c.Op)
}

// removeEverywhere removes a real from every service that has it.
func (a *admin) removeEverywhere(addr netip.AddrPort, rehome bool) error {
	n := 0
	for _, s := range a.d.Services() {
		for _, r := range s.Reals {
			if r.Addr != addr || r.Removed {
				continue
			}
			proto, vip, err := balancer.ParseService(s.Service)
			if err == nil {
				err = a.d.RemoveReal(proto, vip, addr, rehome)
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

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v) //nolint:errcheck // the client went away
}

// serveAdmin listens on the unix socket path (mode 0600, owned by the
// running user) until ctx ends. A socket file left by a killed run is
// replaced; one in use by a live director is an error.
func serveAdmin(ctx context.Context, path string, h http.Handler, log zerolog.Logger) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("--admin-socket %s: %w", path, err)
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("--admin-socket %s: another holdfast is listening there (use another --tun or --admin-socket)", path)
	}
	os.Remove(path) // a leftover of a killed run
	old := syscall.Umask(0o077)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("--admin-socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("--admin-socket %s: %w", path, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() { // admin: serves until stopped
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("admin socket")
		}
	}()
	return func() {
		// Let answers in progress finish (lab down answers, then stops).
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if srv.Shutdown(sctx) != nil {
			srv.Close()
		}
		<-done
		os.Remove(path)
	}, nil
}

// adminClient talks to a running director's admin socket.
type adminClient struct {
	path string
	http *http.Client
}

func newAdminClient(path string) *adminClient {
	return &adminClient{path: path, http: &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}}
}

// do sends a request and decodes the JSON answer into out.
func (c *adminClient) do(method, url string, body, out any) error {
	var req *http.Request
	var err error
	if body != nil {
		b, _ := json.Marshal(body)
		req, err = http.NewRequest(method, "http://holdfast"+url, bytes.NewReader(b))
	} else {
		req, err = http.NewRequest(method, "http://holdfast"+url, nil)
	}
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("admin socket %s: %w (is holdfast run --tun ... running? see --admin-socket)", c.path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var msg [512]byte
		n, _ := resp.Body.Read(msg[:])
		return errors.New(string(trimNL(msg[:n])))
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}
