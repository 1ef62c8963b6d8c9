package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"

	"holdfast/lab"
)

var lookPath = exec.LookPath

// runHost runs a host command (outside the lab) and returns its stdout.
func runHost(ctx context.Context, name string, args ...string) ([]byte, error) {
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(errb.Bytes()))
	}
	return out.Bytes(), nil
}

// stopProc sends sig to a process the lab started and waits up to grace for
// it to exit, then kills it (by PID). It returns the exit state.
func stopProc(p *lab.Proc, sig syscall.Signal, grace time.Duration) (*os.ProcessState, error) {
	if err := p.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return nil, fmt.Errorf("%s (pid %d): %v: %w", p.Name, p.PID(), sig, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if st, err := p.Wait(ctx); err == nil {
		return st, nil
	}
	p.Signal(syscall.SIGKILL) //nolint:errcheck // it may exit meanwhile
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := p.Wait(ctx)
	if err != nil {
		return nil, err
	}
	return st, fmt.Errorf("%s (pid %d) ignored %v for %v: killed", p.Name, p.PID(), sig, grace)
}

// waitListening waits until a TCP socket listens on addr inside ns (ss(8)),
// the process p exits (an error with its output), or timeout passes.
func waitListening(ctx context.Context, ns *lab.NS, p *lab.Proc, timeout time.Duration, addrs ...netip.AddrPort) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		out, err := ns.Run(ctx, "ss", "-Hltn")
		if err == nil {
			missing := 0
			for _, a := range addrs {
				if !bytes.Contains(out, []byte(" "+a.String()+" ")) {
					missing++
				}
			}
			if missing == 0 {
				return nil
			}
		}
		select {
		case <-p.Done():
			return fmt.Errorf("%s exited before listening on %v:\n%s%s", p.Name, addrs, p.Stdout(), p.Stderr())
		case <-ctx.Done():
			return fmt.Errorf("%s not listening on %v after %v:\n%s%s", p.Name, addrs, timeout, p.Stdout(), p.Stderr())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// httpGet makes one GET / request to addr from ns and reads the answer.
func httpGet(ctx context.Context, ns *lab.NS, addr netip.AddrPort) error {
	c := &http.Client{Transport: &http.Transport{DialContext: ns.Dialer(nil), DisableKeepAlives: true}, Timeout: 2 * time.Second}
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+addr.String()+"/", nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return errors.New(resp.Status)
	}
	return nil
}

// --- nginx on the reals ---

// nginx is one real's nginx: a master (started by the lab) and its workers.
// The lab kills only the master, and nginx workers outlive their master, so
// stop also kills each worker still running, by PID.
type nginx struct {
	p       *lab.Proc
	workers []int
}

var nginxConf = template.Must(template.New("nginx.conf").Parse(`# written by holdfast's bench, removed with it
daemon off;
master_process on;
worker_processes {{.Workers}};
worker_rlimit_nofile {{.NoFile}};
pid {{.Dir}}/nginx.pid;
error_log stderr warn;
events {
    worker_connections {{.Conns}};
}
http {
    access_log off;
    client_body_temp_path {{.Dir}}/body;
    proxy_temp_path {{.Dir}}/proxy;
    fastcgi_temp_path {{.Dir}}/fastcgi;
    uwsgi_temp_path {{.Dir}}/uwsgi;
    scgi_temp_path {{.Dir}}/scgi;
    # The storm's connections stay idle for as long as the run takes, and
    # wrk's keep-alive connections never hit a request limit.
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    server {
{{- range .Listen}}
        listen {{.}} backlog=8192 reuseport;
{{- end}}
        location / {
            add_header {{.Header}} {{.Label}};
            return 200 "{{.Label}}\n";
        }
    }
}
`))

func startNginx(ctx context.Context, r *lab.Real, dir string) (*nginx, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return nil, err
	}
	workers := runtime.NumCPU()
	var listen []netip.AddrPort // IPv6 too in a dual-stack lab
	for _, a := range r.Addrs() {
		listen = append(listen, netip.AddrPortFrom(a, httpPort))
	}
	var conf bytes.Buffer
	err := nginxConf.Execute(&conf, map[string]any{
		"Dir": dir, "Workers": workers, "NoFile": lim.Max, "Conns": min(lim.Max-64, 65536),
		"Listen": listen, "Header": lab.RealHeader, "Label": r.Label,
	})
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, conf.Bytes(), 0o600); err != nil {
		return nil, err
	}
	// -e: the error log before the configuration is read (nginx would open
	// /var/log/nginx/error.log otherwise).
	p, err := r.Start("nginx-"+r.Label, "nginx", "-p", dir, "-c", path, "-e", "stderr")
	if err != nil {
		return nil, err
	}
	n := &nginx{p: p}
	if err := waitListening(ctx, r.NS, p, 10*time.Second, listen...); err != nil {
		return n, fmt.Errorf("nginx on %s: %w", r.Label, err)
	}
	// The master forks its workers after opening the sockets.
	deadline := time.Now().Add(5 * time.Second)
	for {
		n.workers = children(p.PID())
		if len(n.workers) >= workers || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return n, nil
}

// stop ends nginx: SIGTERM to the master (fast shutdown: it stops its
// workers), then SIGKILL to any worker still there.
func (n *nginx) stop() error {
	_, err := stopProc(n.p, syscall.SIGTERM, 10*time.Second)
	for _, pid := range n.workers {
		if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) == "nginx" {
			syscall.Kill(pid, syscall.SIGKILL) //nolint:errcheck // gone already is fine
		}
	}
	return err
}

// children lists the child PIDs of pid.
func children(pid int) []int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(data)) {
		if c, err := strconv.Atoi(f); err == nil {
			out = append(out, c)
		}
	}
	return out
}

// --- the three directors ---

// setupKernelNAT is LVS's neighbour in the kernel: iptables DNAT of each
// VIP:port to rs1 in director B's namespace (see measureOrder), with
// conntrack, and in a dual-stack lab the same for VIP6 (kernelNAT6). No
// SNAT: the reals route back through the director, which un-NATs the
// replies.
func setupKernelNAT(ctx context.Context, b *bench) (int, func() error, error) {
	d := b.dirB
	if err := b.use(d); err != nil {
		return 0, nil, err
	}
	var undo6 func() error
	flush := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := d.Run(ctx, "iptables", "-w", "-t", "nat", "-F", "PREROUTING")
		if undo6 != nil {
			err = errors.Join(err, undo6())
		}
		return err
	}
	for _, s := range throughputPorts {
		to := netip.AddrPortFrom(b.rs1.Addr, s.port).String()
		if err := d.KernelNAT(ctx, s.proto, int(s.port), to); err != nil {
			return 0, nil, errors.Join(err, flush())
		}
	}
	if b.l.IPv6() {
		var err error
		if undo6, err = b.kernelNAT6(ctx, d); err != nil {
			return 0, nil, errors.Join(err, flush())
		}
	}
	return 0, flush, nil
}

// nat6Table is the nftables table of the kernel's IPv6 NAT on director B.
const nat6Table = "holdfast_bench_nat6"

var nat6Conf = template.Must(template.New("nat6.nft").Parse(`# written by holdfast's bench, removed with it
table ip6 {{.Table}} {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
{{- range .Rules}}
        ip6 daddr {{$.VIP}} {{.Proto}} dport {{.Port}} dnat to {{.To}}
{{- end}}
    }
}
`))

// kernelNAT6 is lab's KernelNAT for VIP6 on director d: IPv6 forwarding
// on, and an nftables ip6 nat table that DNATs each of VIP6's services to
// rs1's IPv6 address, with conntrack (the nat hook implies it); no SNAT.
// nftables rather than ip6tables: on Debian the latter is the former
// anyway, and one table is one thing to delete. It returns the undo.
func (b *bench) kernelNAT6(ctx context.Context, d *lab.Director) (func() error, error) {
	if err := d.SetSysctl("net.ipv6.conf.all.forwarding", "1"); err != nil {
		return nil, err
	}
	type rule struct {
		Proto string
		Port  uint16
		To    netip.AddrPort
	}
	var rules []rule
	for _, s := range throughputPorts {
		rules = append(rules, rule{s.proto, s.port, netip.AddrPortFrom(b.rs1.Addr6, s.port)})
	}
	var conf bytes.Buffer
	if err := nat6Conf.Execute(&conf, map[string]any{"Table": nat6Table, "VIP": lab.VIP6, "Rules": rules}); err != nil {
		return nil, err
	}
	path := filepath.Join(b.tmp, "nat6.nft")
	if err := os.WriteFile(path, conf.Bytes(), 0o600); err != nil {
		return nil, err
	}
	if out, err := d.Run(ctx, "nft", "-f", path); err != nil {
		return nil, fmt.Errorf("nft ip6 DNAT in %s: %w: %s", d.Name, err, out)
	}
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if out, err := d.Run(ctx, "nft", "delete", "table", "ip6", nat6Table); err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	}, nil
}

var haproxyConf = template.Must(template.New("haproxy.cfg").Parse(`# written by holdfast's bench, removed with it
global
    # Each proxied connection takes two descriptors; stay under RLIMIT_NOFILE.
    maxconn {{.MaxConn}}
    nbthread {{.Threads}}
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
{{range .Services}}
frontend fe_{{.Name}}
    bind {{.Bind}}
    default_backend be_{{.Name}}
backend be_{{.Name}}
    server {{$.Label}} {{.Real}}
{{end}}`))

// setupHAProxy runs HAProxy in TCP mode on director A, listening on the VIP
// (and VIP6 in a dual-stack lab), which it needs as a local address: on lo,
// for this director's run only.
func setupHAProxy(ctx context.Context, b *bench) (int, func() error, error) {
	d := b.dirA
	if err := b.use(d); err != nil {
		return 0, nil, err
	}
	type service struct {
		Name       string // fe_NAME, be_NAME: the port, 6_PORT for VIP6
		Bind, Real netip.AddrPort
	}
	var services []service
	var listen []netip.AddrPort
	var added []netip.Prefix
	delVIP := func() error {
		var errs []error
		for _, p := range added {
			_, err := d.IP("addr", "del", p.String(), "dev", "lo")
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	}
	for _, f := range b.families() {
		vip := netip.PrefixFrom(f.vip(), f.vip().BitLen())
		args := []string{"addr", "add", vip.String(), "dev", "lo"}
		if f == ipv6 {
			args = append(args, "nodad") // else tentative, unbindable, for a second
		}
		if _, err := d.IP(args...); err != nil {
			return 0, nil, errors.Join(err, delVIP())
		}
		added = append(added, vip)
		for _, port := range []uint16{iperfPort, httpPort} {
			name := strconv.Itoa(int(port))
			if f == ipv6 {
				name = "6_" + name
			}
			s := service{Name: name, Bind: netip.AddrPortFrom(f.vip(), port), Real: netip.AddrPortFrom(f.addr(b.rs1), port)}
			services = append(services, s)
			listen = append(listen, s.Bind)
		}
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, nil, errors.Join(err, delVIP())
	}
	var conf bytes.Buffer
	err := haproxyConf.Execute(&conf, map[string]any{
		"MaxConn": (lim.Max - 256) / 2, "Threads": runtime.NumCPU(),
		"Label": b.rs1.Label, "Services": services,
	})
	if err != nil {
		return 0, nil, errors.Join(err, delVIP())
	}
	path := filepath.Join(b.tmp, "haproxy.cfg")
	if err := os.WriteFile(path, conf.Bytes(), 0o600); err != nil {
		return 0, nil, errors.Join(err, delVIP())
	}
	// -db: foreground, no daemon, no master process: the PID is the proxy's.
	p, err := d.Start("haproxy", "haproxy", "-db", "-f", path)
	if err != nil {
		return 0, nil, errors.Join(err, delVIP())
	}
	teardown := func() error {
		_, err := stopProc(p, syscall.SIGTERM, 5*time.Second)
		return errors.Join(err, delVIP(), dropTimeWait(b, d.NS))
	}
	if err := waitListening(ctx, d.NS, p, 10*time.Second, listen...); err != nil {
		return 0, nil, errors.Join(err, teardown())
	}
	return p.PID(), teardown, nil
}

// dropTimeWait removes the TIME_WAIT sockets HAProxy leaves in director A's
// namespace (its end of the client connections, VIP:port to client:port).
// Until they expire (60 s) they would blackhole the next director's
// connections that reuse those client ports: the kernel's early demux
// attaches an arriving SYN to the matching TIME_WAIT socket, and ip_forward
// drops a packet that has a socket. ss -K destroys them where the kernel
// allows it (SOCK_DESTROY on TIME_WAIT, recent kernels); else this waits.
func dropTimeWait(b *bench, ns *lab.NS) error {
	ctx, cancel := context.WithTimeout(context.Background(), 70*time.Second)
	defer cancel()
	ns.Run(ctx, "ss", "-K", "-Htan", "state", "time-wait") //nolint:errcheck // the count below decides
	waited := false
	for {
		out, err := ns.Run(ctx, "ss", "-Htan", "state", "time-wait")
		if err != nil {
			return err
		}
		n := bytes.Count(out, []byte("\n"))
		if n == 0 {
			return nil
		}
		if !waited {
			b.progress(fmt.Sprintf("waiting for %d TIME_WAIT sockets in %s to expire (ss -K cannot destroy them here)", n, ns.Role))
			waited = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d TIME_WAIT sockets left in %s", n, ns.Name)
		case <-time.After(time.Second):
		}
	}
}

// setupHoldfast runs `holdfast run` on director A as the lab runs it
// (lab.HoldfastArgs: --setup-routes and the lab's plumbing).
func setupHoldfast(ctx context.Context, b *bench) (int, func() error, error) {
	if err := b.use(b.dirA); err != nil {
		return 0, nil, err
	}
	path, err := b.holdfastConfig("holdfast-throughput.json", b.throughputServices())
	if err != nil {
		return 0, nil, err
	}
	p, err := b.startHoldfast(ctx, b.dirA, "--config", path)
	if err != nil {
		return 0, nil, err
	}
	return p.PID(), func() error { return stopHoldfast(p) }, nil
}

// startHoldfast starts the holdfast under test on director d, with the
// lab's arguments and extra, and waits until it serves.
func (b *bench) startHoldfast(ctx context.Context, d *lab.Director, extra ...string) (*lab.Proc, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	p, err := lab.StartHoldfast(ctx, d, b.cfg.holdfast, lab.HoldfastArgs(d, extra...)...)
	if err != nil || b.cfg.txqueuelen == 0 {
		return p, err
	}
	if _, err := d.IP("link", "set", "dev", lab.HealthTUN, "txqueuelen", strconv.Itoa(b.cfg.txqueuelen)); err != nil {
		return nil, errors.Join(err, stopHoldfast(p))
	}
	return p, nil
}

// stopHoldfast ends a director with SIGTERM (it undoes its routes) and
// wants a clean exit.
func stopHoldfast(p *lab.Proc) error {
	st, err := stopProc(p, syscall.SIGTERM, 10*time.Second)
	if err != nil {
		return err
	}
	if st.ExitCode() != 0 {
		return fmt.Errorf("%s exited with %v after SIGTERM:\n%s", p.Name, st, tail(p.Stderr(), 10))
	}
	return nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// --- iperf3 ---

// iperfResult is the part of iperf3's -J output this program reads.
type iperfResult struct {
	Error string `json:"error"`
	End   struct {
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
		// UDP: the sender's totals with the receiver's loss count.
		Sum struct {
			Seconds     float64 `json:"seconds"`
			Packets     int64   `json:"packets"`
			LostPackets int64   `json:"lost_packets"`
		} `json:"sum"`
	} `json:"end"`
}

// iperfServer starts a one-off iperf3 server on rs1's address of family f
// and waits until it listens; the caller stops it.
func (b *bench) iperfServer(ctx context.Context, f family) (*lab.Proc, error) {
	rs := b.rs1
	srv, err := rs.Start("iperf3-server", "iperf3", "-s", "-1", "-B", f.addr(rs).String(), "-p", strconv.Itoa(iperfPort))
	if err != nil {
		return nil, err
	}
	if err := waitListening(ctx, rs.NS, srv, 5*time.Second, netip.AddrPortFrom(f.addr(rs), iperfPort)); err != nil {
		stopProc(srv, syscall.SIGTERM, 5*time.Second) //nolint:errcheck // the error that matters is err
		return nil, err
	}
	return srv, nil
}

// iperf runs one iperf3 test from the client to the VIP of family f, port
// iperfPort, against a one-off server on rs1.
func (b *bench) iperf(ctx context.Context, f family, args ...string) (iperfResult, error) {
	var res iperfResult
	srv, err := b.iperfServer(ctx, f)
	if err != nil {
		return res, err
	}
	defer stopProc(srv, syscall.SIGTERM, 5*time.Second) //nolint:errcheck // a one-off server has usually exited
	ctx, cancel := context.WithTimeout(ctx, b.cfg.duration+30*time.Second)
	defer cancel()
	argv := append([]string{"iperf3", "-c", f.vip().String(), "-p", strconv.Itoa(iperfPort), "-J", "--connect-timeout", "3000"}, args...)
	out, runErr := b.l.Client.Run(ctx, argv...)
	// -J prints its error inside the JSON, with a failing exit status.
	if err := json.Unmarshal(out, &res); err != nil {
		return res, errors.Join(runErr, fmt.Errorf("iperf3 output: %w: %.300s", err, out))
	}
	if res.Error != "" {
		return res, fmt.Errorf("iperf3: %s", res.Error)
	}
	return res, runErr
}

// seconds is the -duration in whole seconds, as iperf3 wants it.
func (b *bench) seconds() string {
	return strconv.Itoa(max(1, int(b.cfg.duration.Round(time.Second)/time.Second)))
}

// iperfTCP is a TCP row of family f: Gbit/s received by the server, slow
// start (the first second) omitted.
func iperfTCP(f family, streams int) func(context.Context, *bench) (float64, []string, error) {
	return func(ctx context.Context, b *bench) (float64, []string, error) {
		res, err := b.iperf(ctx, f, "-t", b.seconds(), "-O", "1", "-P", strconv.Itoa(streams))
		if err != nil {
			return 0, nil, err
		}
		return res.End.SumReceived.BitsPerSecond / 1e9, nil, nil
	}
}

// iperfUDP is the UDP row: 64-byte payloads sent as fast as the client can
// (-b 0), packets per second that reached the server.
func iperfUDP(ctx context.Context, b *bench) (float64, []string, error) {
	res, err := b.iperf(ctx, ipv4, "-u", "-l", "64", "-b", "0", "-t", b.seconds())
	if err != nil {
		return 0, nil, err
	}
	s := res.End.Sum
	if s.Seconds <= 0 {
		return 0, nil, errors.New("iperf3 UDP: no duration in its output")
	}
	var notes []string
	if s.Packets > 0 {
		notes = append(notes, fmt.Sprintf("sent %.0f pps, %.1f%% lost", float64(s.Packets)/s.Seconds, 100*float64(s.LostPackets)/float64(s.Packets)))
	}
	return float64(s.Packets-s.LostPackets) / s.Seconds, notes, nil
}

// --- wrk ---

var (
	wrkRate       = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkSockErrors = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx     = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

// wrkRun is an HTTP row: wrk with 64 connections against the VIP of family
// f, keeping connections alive or opening one per request (Connection:
// close).
func wrkRun(f family, closeEach bool) func(context.Context, *bench) (float64, []string, error) {
	return func(ctx context.Context, b *bench) (float64, []string, error) {
		ctx, cancel := context.WithTimeout(ctx, b.cfg.duration+30*time.Second)
		defer cancel()
		argv := []string{"wrk", "-t", strconv.Itoa(runtime.NumCPU()), "-c", "64", "-d", b.cfg.duration.String(), "--timeout", "5s"}
		if closeEach {
			argv = append(argv, "-H", "Connection: close")
		}
		argv = append(argv, "http://"+netip.AddrPortFrom(f.vip(), httpPort).String()+"/")
		out, err := b.l.Client.Run(ctx, argv...)
		if err != nil {
			return 0, nil, fmt.Errorf("%w: %s", err, out)
		}
		m := wrkRate.FindSubmatch(out)
		if m == nil {
			return 0, nil, fmt.Errorf("wrk: no Requests/sec in its output:\n%s", out)
		}
		rate, err := strconv.ParseFloat(string(m[1]), 64)
		if err != nil {
			return 0, nil, err
		}
		var notes []string
		if m := wrkSockErrors.FindSubmatch(out); m != nil {
			notes = append(notes, "wrk "+strings.TrimSpace(string(m[0])))
		}
		if m := wrkNon2xx.FindSubmatch(out); m != nil {
			notes = append(notes, "wrk "+strings.TrimSpace(string(m[0])))
		}
		return rate, notes, nil
	}
}

// --- raw HTTP/1.1 on a kept connection (the storm) ---

// keptConn is one client keep-alive connection of the storm.
type keptConn struct {
	c  net.Conn
	br *bufio.Reader
}

var getRequest = []byte("GET / HTTP/1.1\r\nHost: " + lab.VIP.String() + "\r\n\r\n")

// get sends one request on the connection and reads the whole answer,
// within timeout (0: within the deadline the caller set).
func (k *keptConn) get(timeout time.Duration) error {
	if timeout > 0 {
		k.c.SetDeadline(time.Now().Add(timeout))
	}
	if _, err := k.c.Write(getRequest); err != nil {
		return err
	}
	resp, err := http.ReadResponse(k.br, nil)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && (resp.StatusCode != http.StatusOK || resp.Close) {
		err = fmt.Errorf("status %d, close %v", resp.StatusCode, resp.Close)
	}
	return err
}

// use makes d the active director: the router and the reals route through
// it, and the measurements count its packets.
func (b *bench) use(d *lab.Director) error {
	for i, x := range b.l.Directors {
		if x == d {
			if err := b.l.Flip(i); err != nil {
				return err
			}
			b.active = d
			return nil
		}
	}
	return fmt.Errorf("director %s is not in the lab", d.Label)
}
