package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"holdfast/lab"
)

// Ports of the services every director carries. The VIP port equals the
// real's port, so the three directors see the same traffic.
const (
	iperfPort = 5201 // iperf3 control and data, TCP and UDP
	httpPort  = 80   // nginx (or the lab's Go backend)
)

// bench is one run of the program: the lab, the peers it started and the
// results so far. It is used from one goroutine (the storm's workers only
// touch their own connections).
type bench struct {
	cfg   config
	tmp   string
	start time.Time

	l       *lab.Lab
	dirA    *lab.Director // holdfast and HAProxy run here
	dirB    *lab.Director // the kernel's NAT runs here (see measureOrder)
	active  *lab.Director // the director being measured: snapshot counts its packets
	rs1     *lab.Real     // the real of the throughput rows
	backend string        // HTTP backend on the reals: "nginx" or "go"
	nginx   []*nginx
	res     *Results
}

func newBench(cfg config, tmp string) *bench {
	return &bench{cfg: cfg, tmp: tmp, start: time.Now()}
}

// progress is the one line per phase on stderr.
func (b *bench) progress(msg string) {
	fmt.Fprintf(os.Stderr, "bench %6.1fs  %s\n", time.Since(b.start).Seconds(), msg)
}

// family is the IP version a row's traffic uses: the IPv4 rows go to VIP
// and the reals' IPv4 addresses, the IPv6 rows (-rows ipv6, issue 15) to
// VIP6 and their IPv6 twins (lab.Mirror6), in the same dual-stack lab and
// through the same directors, which carry both families at once.
type family int

const (
	ipv4 family = iota
	ipv6
)

// vip is the VIP of the family.
func (f family) vip() netip.Addr {
	if f == ipv6 {
		return lab.VIP6
	}
	return lab.VIP
}

// addr is real r's address of the family.
func (f family) addr(r *lab.Real) netip.Addr {
	if f == ipv6 {
		return r.Addr6
	}
	return r.Addr
}

// families are the IP versions the lab carries: IPv4, and IPv6 in a
// dual-stack lab (built so when the ipv6 rows run).
func (b *bench) families() []family {
	if b.l.IPv6() {
		return []family{ipv4, ipv6}
	}
	return []family{ipv4}
}

// rowDef is one throughput row.
type rowDef struct {
	key, name, unit, group string
	fam                    family
	haproxy                bool    // HAProxy (TCP mode) can carry it
	minKernel              float64 // target: holdfast / kernel NAT at least this (0: none)
	run                    func(ctx context.Context, b *bench) (value float64, notes []string, err error)
}

var rowDefs = []rowDef{
	{key: "tcp_1", name: "iperf3 TCP, 1 stream", unit: "Gbit/s", group: groupIperf, haproxy: true, minKernel: 0.6, run: iperfTCP(ipv4, 1)},
	{key: "tcp_4", name: "iperf3 TCP, 4 streams", unit: "Gbit/s", group: groupIperf, haproxy: true, run: iperfTCP(ipv4, 4)},
	{key: "udp_64", name: "iperf3 UDP, 64 B payload", unit: "pps", group: groupUDP, minKernel: 0.5, run: iperfUDP},
	{key: "http_keepalive", name: "wrk keep-alive", unit: "req/s", group: groupWrk, haproxy: true, minKernel: 0.65, run: wrkRun(ipv4, false)},
	{key: "http_new_conn", name: "wrk new connection", unit: "req/s", group: groupWrk, haproxy: true, minKernel: 0.75, run: wrkRun(ipv4, true)},
	// Issue 15 asks for the ratios over IPv6, not for targets: newRow sets
	// none for an IPv6 row.
	{key: "tcp6_1", name: "iperf3 TCP, 1 stream, IPv6", unit: "Gbit/s", group: groupIPv6, fam: ipv6, haproxy: true, run: iperfTCP(ipv6, 1)},
	{key: "http6_keepalive", name: "wrk keep-alive, IPv6", unit: "req/s", group: groupIPv6, fam: ipv6, haproxy: true, run: wrkRun(ipv6, false)},
}

// directorDef is one director under test: setup makes it carry the
// services on director A and returns the PID whose CPU time is its cost (0:
// none, the kernel's NAT); teardown undoes setup.
type directorDef struct {
	key, label string
	setup      func(ctx context.Context, b *bench) (pid int, teardown func() error, err error)
}

var directorDefs = map[string]directorDef{
	dirKernel:   {key: "kernel_nat", label: "kernel NAT", setup: setupKernelNAT},
	dirHAProxy:  {key: "haproxy", label: "HAProxy", setup: setupHAProxy},
	dirHoldfast: {key: "holdfast", label: "holdfast", setup: setupHoldfast},
}

// run builds the lab and measures. It returns the results so far (nil if
// nothing could be measured) and the first error that stopped it; the lab
// and every peer are gone when it returns.
func (b *bench) run(ctx context.Context) (res *Results, err error) {
	b.res = newResults(b.cfg)
	res = b.res
	defer res.finish() // also for the rows measured before an error
	for _, r := range rowDefs {
		if b.cfg.groups[r.group] {
			res.Rows = append(res.Rows, newRow(r))
		}
	}

	// The IPv6 rows need a dual-stack lab; without them it stays IPv4 only,
	// as before they existed.
	stack := ""
	if b.cfg.groups[groupIPv6] {
		stack = ", dual-stack"
	}
	b.progress("building the lab (client, router, directors A and B, rs1..rs3" + stack + ")")
	b.l, err = lab.New(lab.Options{Directors: 2, Reals: 3, IPv6: b.cfg.groups[groupIPv6]})
	if err != nil {
		return nil, err
	}
	defer func() {
		b.progress("tearing the lab down")
		var errs []error
		for _, n := range b.nginx {
			errs = append(errs, n.stop())
		}
		errs = append(errs, b.l.Close())
		if cerr := errors.Join(errs...); cerr != nil {
			err = errors.Join(err, fmt.Errorf("teardown: %w", cerr))
		}
	}()
	b.dirA, b.dirB, b.rs1 = b.l.Directors[0], b.l.Directors[1], b.l.Reals[0]
	b.active = b.dirA

	// The client opens many short connections (wrk new-connection, the
	// storm): a wide port range, and TIME_WAIT ports reused.
	for _, kv := range [][2]string{
		{"net.ipv4.ip_local_port_range", "1024 65535"},
		{"net.ipv4.tcp_tw_reuse", "1"},
	} {
		if err := b.l.Client.SetSysctl(kv[0], kv[1]); err != nil {
			return res, err
		}
	}
	if err := b.startHTTP(ctx); err != nil {
		return res, err
	}
	res.HTTPBackend = b.backend

	// The storm and the cookie group, which run holdfast on director B,
	// come before the kernel's NAT (see measureOrder).
	if b.cfg.groups[groupStorm] {
		if err := b.runStorm(ctx); err != nil {
			return res, err
		}
	}
	if b.cfg.groups[groupCookie] {
		if err := b.runCookie(ctx); err != nil {
			return res, err
		}
	}
	if b.cfg.groups[groupFastPath] {
		if err := b.runFastPath(ctx, os.Stdout); err != nil {
			return res, err
		}
	}
	if len(res.Rows) > 0 {
		if err := b.measureAll(ctx); err != nil {
			return res, err
		}
	}
	return res, nil
}

func (b *bench) runStorm(ctx context.Context) error {
	s, err := b.storm(ctx)
	b.res.Storm = s
	if err != nil && ctx.Err() == nil && s != nil {
		// A storm that went wrong is a result too; the error is in it.
		s.Error = err.Error()
		b.progress("storm failed: " + err.Error())
		return nil
	}
	return err
}

// startHTTP starts the HTTP backend on every real: nginx if installed, else
// the lab's Go backend (which then shares this process's CPU and files).
// Every phase needs it: checkPath asks it before measuring.
func (b *bench) startHTTP(ctx context.Context) error {
	if _, err := lookPath("nginx"); err != nil {
		b.progress("nginx not found: the reals serve HTTP with the lab's Go backend, in this process")
		b.backend = "go (lab.HTTPHandler, in the bench process)"
		for _, r := range b.l.Reals {
			if err := r.Serve(httpPort, 0); err != nil {
				return err
			}
		}
		return nil
	}
	b.backend = fmt.Sprintf("nginx (%d workers per real)", runtime.NumCPU())
	b.progress("starting nginx on " + fmt.Sprint(len(b.l.Reals)) + " reals")
	for _, r := range b.l.Reals {
		n, err := startNginx(ctx, r, filepath.Join(b.tmp, "nginx-"+r.Label))
		if n != nil {
			b.nginx = append(b.nginx, n)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// measureAll runs every chosen row -runs times on every chosen director,
// interleaved: run by run, row by row, each director in turn (the order
// rotating), so that a slow spell of the machine touches all of them alike
// rather than the one measured then. A director is set up for each of its
// measurements and torn down after. One that cannot be set up (or does not
// pass traffic) gets its error in its cells and is skipped from then on.
func (b *bench) measureAll(ctx context.Context) error {
	var dirs []directorDef
	for _, d := range measureOrder {
		if b.cfg.directors[d] {
			dirs = append(dirs, directorDefs[d])
			b.res.Directors = append(b.res.Directors, directorDefs[d].key)
		}
	}
	failed := map[string]bool{}
	turn := 0
	for run := 1; run <= b.cfg.runs; run++ {
		for _, row := range b.res.Rows {
			turn++
			for k := range dirs {
				d := dirs[(k+turn)%len(dirs)]
				c := row.cell(d.key)
				if d.key == "haproxy" && !row.def.haproxy {
					c.NA = "HAProxy has no UDP mode"
					continue
				}
				if failed[d.key] {
					continue
				}
				err := b.measureOnce(ctx, d, row, c, run)
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if err != nil {
					b.progress(d.label + ": " + err.Error())
					failed[d.key] = true
					for _, row := range b.res.Rows {
						if c := row.cell(d.key); c.Error == "" && c.NA == "" {
							c.Error = err.Error()
						}
					}
				}
			}
		}
	}
	return nil
}

// measureOnce sets director d up, runs row once into c, and tears d down.
// It returns an error only if d could not be set up or passes no traffic.
func (b *bench) measureOnce(ctx context.Context, d directorDef, row *Row, c *Cell, run int) (err error) {
	pid, teardown, err := d.setup(ctx, b)
	if err != nil {
		return err
	}
	defer func() {
		if d.key == "holdfast" {
			b.res.addCounters("throughput "+row.def.key, b.holdfastStats(ctx, b.dirA))
		}
		if terr := teardown(); terr != nil {
			b.progress(d.label + ": teardown: " + terr.Error())
			b.res.Notes = append(b.res.Notes, d.label+" teardown: "+terr.Error())
		}
	}()
	if err := b.checkPath(ctx, b.l.VIPs()...); err != nil {
		return err
	}
	b.progress(fmt.Sprintf("%s: %s, run %d/%d", d.label, row.def.name, run, b.cfg.runs))
	s, err := b.measure(ctx, pid, func(ctx context.Context) (float64, []string, error) { return row.def.run(ctx, b) })
	c.add(s, err)
	return nil
}

// checkPath makes one HTTP request to each of vips: a director that does
// not pass traffic fails here in seconds rather than in every row.
func (b *bench) checkPath(ctx context.Context, vips ...netip.Addr) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, vip := range vips {
		for {
			err := httpGet(ctx, b.l.Client, netip.AddrPortFrom(vip, httpPort))
			if err == nil {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("no HTTP answer through the VIP %v within 10s: %w", vip, err)
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	return nil
}

// holdfastStats is `holdfast stats --json` of the director in d: its counters as
// JSON (or a JSON string with the error).
func (b *bench) holdfastStats(ctx context.Context, d *lab.Director) json.RawMessage {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := runHost(ctx, b.cfg.holdfast, "stats", "--json", "--admin-socket", lab.AdminSocket(d))
	if err != nil || !json.Valid(out) {
		msg, _ := json.Marshal(fmt.Sprintf("holdfast stats --json: %v: %s", err, strings.TrimSpace(string(out))))
		return msg
	}
	return json.RawMessage(out)
}

// holdfastConfig writes a --config file with the given services and
// returns its path.
func (b *bench) holdfastConfig(name string, services []serviceConfig) (string, error) {
	data, err := json.MarshalIndent(map[string]any{"services": services}, "", "  ")
	if err != nil {
		return "", err
	}
	path := filepath.Join(b.tmp, name)
	return path, os.WriteFile(path, data, 0o600)
}

// serviceConfig is one service of a holdfast --config file (the fields of
// balancer.ServiceConfig this program uses).
type serviceConfig struct {
	Service   string   `json:"service"`
	Scheduler string   `json:"scheduler"`
	Reals     []string `json:"reals"`
}

// throughputServices are the VIP's services for the throughput rows, all
// to rs1: iperf3's control and data connections must meet one server. In a
// dual-stack lab VIP6 has the same services, to rs1's IPv6 address.
func (b *bench) throughputServices() []serviceConfig {
	var out []serviceConfig
	for _, f := range b.families() {
		for _, s := range throughputPorts {
			out = append(out, serviceConfig{
				Service:   s.proto + ":" + netip.AddrPortFrom(f.vip(), s.port).String(),
				Scheduler: "rr",
				Reals:     []string{netip.AddrPortFrom(f.addr(b.rs1), s.port).String()},
			})
		}
	}
	return out
}

// throughputPorts are the services every director carries for the
// throughput rows, on each VIP.
var throughputPorts = []struct {
	proto string
	port  uint16
}{{"tcp", iperfPort}, {"udp", iperfPort}, {"tcp", httpPort}}
