package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"time"

	"holdfast/balancer"
	"holdfast/internal/clock"
	"holdfast/internal/unixhttp"
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

func writeJSON(w http.ResponseWriter, v any) { unixhttp.WriteJSON(w, v) }

// serveAdmin serves h on the unix socket path until the returned stop.
func serveAdmin(path string, h http.Handler, log zerolog.Logger) (func(), error) {
	stop, err := unixhttp.Serve(path, h, log)
	switch {
	case errors.Is(err, unixhttp.ErrInUse):
		return nil, fmt.Errorf("--admin-socket %s: another holdfast is listening there (use another --tun or --admin-socket)", path)
	case err != nil:
		return nil, fmt.Errorf("--admin-socket: %w", err)
	}
	return stop, nil
}

// adminClient talks to a running director's admin socket.
type adminClient struct{ *unixhttp.Client }

func newAdminClient(path string) *adminClient { return &adminClient{unixhttp.NewClient(path)} }

// do sends a request and decodes the JSON answer into out.
func (c *adminClient) do(method, url string, body, out any) error {
	err := c.Do(context.Background(), method, url, body, out)
	if errors.Is(err, unixhttp.ErrUnreachable) {
		return fmt.Errorf("%w (is holdfast run --tun ... running? see --admin-socket)", err)
	}
	return err
}
