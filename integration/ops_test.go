package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"holdfast/lab"
)

// Operations tests (issue 5): metrics, the admin API and its subcommands,
// runtime weight changes, health checks and reloads, against a running
// director in a one-director lab.

// opsLab is a lab with one director running `holdfast run` with the
// standard lab flags and the flags args returns for the built lab.
func opsLab(t *testing.T, args func(l *lab.Lab) []string) (*lab.Lab, *lab.Proc) {
	t.Helper()
	l := NewLab(t, lab.Options{Directors: 1, Reals: 3})
	if err := l.ServeBackends(); err != nil {
		t.Fatal(err)
	}
	return l, StartDirector(t, l.Directors[0].NS, directorArgs(l.Directors[0], args(l)...)...)
}

func realList(l *lab.Lab, port int) []string {
	var a []string
	for _, r := range l.Reals {
		a = append(a, netip.AddrPortFrom(r.Addr, uint16(port)).String())
	}
	return a
}

// writeConfig writes a --config file and returns its path.
func writeConfig(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "holdfast.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

type svcConfig struct {
	Service   string   `json:"service"`
	Scheduler string   `json:"scheduler"`
	Reals     []string `json:"reals"`
	Check     string   `json:"check,omitempty"`
}

func config(svcs ...svcConfig) any { return map[string]any{"services": svcs} }

// ctl runs a holdfast admin subcommand against the lab's director.
func ctl(t *testing.T, l *lab.Lab, args ...string) (string, error) {
	t.Helper()
	args = append(args, "--admin-socket", lab.AdminSocket(l.Directors[0]))
	out, err := exec.Command(holdfastBinary(t), args...).CombinedOutput()
	return string(out), err
}

func ctlJSON(t *testing.T, l *lab.Lab, v any, args ...string) {
	t.Helper()
	out, err := ctl(t, l, append(args, "--json")...)
	if err != nil {
		t.Fatalf("holdfast %v: %v\n%s", args, err, out)
	}
	// {"director": {...}, "<what was asked>": ...}: v gets the second.
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("holdfast %v: %v\n%s", args, err, out)
	}
	var d struct{ PID int }
	if err := json.Unmarshal(m["director"], &d); err != nil || d.PID == 0 || len(m) != 2 {
		t.Fatalf("holdfast %v: no director field with its pid, or more than one other field: %v\n%s", args, err, out)
	}
	delete(m, "director")
	for _, raw := range m {
		if err := json.Unmarshal(raw, v); err != nil {
			t.Fatalf("holdfast %v: %v\n%s", args, err, out)
		}
	}
}

// scrape fetches the director's /metrics (from inside its namespace) and
// returns each sample's value by its name and labels as printed.
func scrape(t *testing.T, d *lab.Director, addr string) map[string]float64 {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: d.Dialer(&net.Dialer{})}}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		m[line[:i]] = v
	}
	return m
}

// The counters on /metrics match the traffic sent: flows created, flows per
// real, and the exact datagrams of a UDP service per real and direction.
func TestMetricsMatchTraffic(t *testing.T) {
	const metrics = "127.0.0.1:9100"
	l, _ := opsLab(t, func(l *lab.Lab) []string {
		return []string{"--metrics-addr", metrics, "--config", writeConfig(t, config(
			svcConfig{Service: "tcp:" + vipHTTP.String(), Scheduler: "rr", Reals: realList(l, lab.DefaultHTTPPort)},
			svcConfig{Service: "udp:" + vipUDP.String(), Scheduler: "rr", Reals: realList(l, lab.DefaultUDPPort)},
		))}
	})
	c := newVIPClient(t, l.Client, false, netip.Addr{})
	counts := countReals(t, c, httpURL(vipHTTP, "/"), 30, 3)
	const flows, datagrams = 3, 20
	echoed := udpEcho(t, l, flows, datagrams)

	m := scrape(t, l.Directors[0], metrics)
	want := map[string]float64{
		"holdfast_flows_created_total":                30 + flows,
		`holdfast_drops_total{reason="bad_checksum"}`: 0,
		`holdfast_drops_total{reason="no_flow"}`:      0,
		`holdfast_packets_total{verdict="drop"}`:      0,
	}
	for _, r := range l.Reals {
		tcp := fmt.Sprintf(`{real="%s",service="tcp:%s"}`, netip.AddrPortFrom(r.Addr, lab.DefaultHTTPPort), vipHTTP)
		// The connections closed, but their flows live on in TIME_WAIT.
		want["holdfast_real_inactive_flows"+tcp] = float64(counts[r.Label])
		want["holdfast_real_active_flows"+tcp] = 0
		udp := netip.AddrPortFrom(r.Addr, lab.DefaultUDPPort).String()
		for _, dir := range []string{"in", "out"} {
			want[fmt.Sprintf(`holdfast_real_packets_total{direction="%s",real="%s",service="udp:%s"}`, dir, udp, vipUDP)] = float64(echoed[r.Label])
		}
	}
	for k, v := range want {
		if got, ok := m[k]; !ok || got != v {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, v)
		}
	}
	if m[`holdfast_packets_total{verdict="forward"}`] != m[`holdfast_device_packets_total{direction="read"}`] {
		t.Errorf("forwarded %v of %v packets read, with no drop", m[`holdfast_packets_total{verdict="forward"}`], m[`holdfast_device_packets_total{direction="read"}`])
	}
	t.Logf("30 HTTP requests %v, %d UDP flows x %d datagrams %v", counts, flows, datagrams, echoed)
}

// `holdfast conns` lists exactly the live flows.
func TestConnsListsLiveFlows(t *testing.T) {
	l, _ := opsLab(t, func(l *lab.Lab) []string {
		return append([]string{"--service", "tcp:" + vipHTTP.String(), "--scheduler", "rr"}, realFlags(l, lab.DefaultHTTPPort)...)
	})
	conns := dialHTTP(t, l.Client, 10)
	requireNoErrors(t, "requests", eachConn(conns, requests(1)))
	want := map[string]bool{}
	for _, h := range conns {
		want[h.c.LocalAddr().String()] = true
	}
	var got []struct {
		Proto, Client, VIP, Real, State, Kind string
	}
	ctlJSON(t, l, &got, "conns")
	if len(got) != len(want) {
		t.Fatalf("conns lists %d flows, want %d: %+v", len(got), len(want), got)
	}
	for _, f := range got {
		if !want[f.Client] || f.VIP != vipHTTP.String() || f.State != "ESTABLISHED" || f.Kind != "plain" || f.Proto != "tcp" {
			t.Fatalf("unexpected flow %+v", f)
		}
		delete(want, f.Client)
	}
	// The socket is the running user's alone.
	if st, err := os.Stat(lab.AdminSocket(l.Directors[0])); err != nil || st.Mode().Perm() != 0o600 || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("admin socket: %v, mode %v", err, st.Mode())
	} else if uid := st.Sys().(*syscall.Stat_t).Uid; int(uid) != os.Getuid() {
		t.Fatalf("admin socket owned by uid %d, want %d", uid, os.Getuid())
	}
	// The table form prints the director's line, then one line per flow
	// under a header, then the count.
	out, err := ctl(t, l, "conns")
	if err != nil || !strings.HasPrefix(out, "director 1  pid ") || strings.Count(strings.TrimSpace(out), "\n") != len(conns)+2 ||
		!strings.HasSuffix(out, fmt.Sprintf("\n%d flows\n", len(conns))) {
		t.Fatalf("holdfast conns: %v\n%s", err, out)
	}
}

// `holdfast real weight ... --weight 0` stops new flows to that real while
// its existing connections keep working.
func TestWeightZeroQuiesces(t *testing.T) {
	l, _ := opsLab(t, func(l *lab.Lab) []string {
		return append([]string{"--service", "tcp:" + vipHTTP.String(), "--scheduler", "rr"}, realFlags(l, lab.DefaultHTTPPort)...)
	})
	conns := dialHTTP(t, l.Client, 6)
	owner := owners(t, conns)
	rs1 := netip.AddrPortFrom(l.Reals[0].Addr, lab.DefaultHTTPPort).String()
	if out, err := ctl(t, l, "real", "weight", "--service", "tcp:"+vipHTTP.String(), "--real", rs1, "--weight", "0"); err != nil {
		t.Fatalf("real weight: %v\n%s", err, out)
	}
	c := newVIPClient(t, l.Client, false, netip.Addr{})
	counts := countReals(t, c, httpURL(vipHTTP, "/"), 30, 3)
	if counts[l.Reals[0].Label] != 0 || counts[l.Reals[1].Label]+counts[l.Reals[2].Label] != 30 {
		t.Fatalf("after weight 0 on rs1: %v", counts)
	}
	for i, h := range conns {
		for range 3 {
			real, _, _, err := h.get("/")
			if err != nil || real != owner[i] {
				t.Fatalf("old connection %d (on %s): %v, answered by %s", i, owner[i], err, real)
			}
		}
	}
	t.Logf("new flows after weight 0 on rs1: %v; %d old connections kept their real", counts, len(conns))
}

// A real whose server dies is marked down within fall x interval + timeout
// (plus slack), and gets no new flow.
func TestHealthCheckMarksDown(t *testing.T) {
	const port = 8080
	interval, timeout, fall := 300*time.Millisecond, 200*time.Millisecond, 3
	var servers []*http.Server
	l, dir := opsLab(t, func(l *lab.Lab) []string {
		for _, r := range l.Reals {
			ln, err := r.Listen("tcp4", netip.AddrPortFrom(r.Addr, port).String())
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{Handler: lab.HTTPHandler(r.Label, &r.Stats)}
			go srv.Serve(ln)
			t.Cleanup(func() { srv.Close() })
			servers = append(servers, srv)
		}
		return append([]string{"--service", "tcp:" + netip.AddrPortFrom(lab.VIP, port).String(), "--scheduler", "rr",
			"--check", "tcp", "--check-interval", interval.String(), "--check-timeout", timeout.String(),
			"--check-rise", "2", "--check-fall", strconv.Itoa(fall)}, realFlags(l, port)...)
	})
	url := httpURL(netip.AddrPortFrom(lab.VIP, port), "/")
	c := newVIPClient(t, l.Client, false, netip.Addr{})
	if counts := countReals(t, c, url, 30, 3); len(counts) != 3 {
		t.Fatalf("before: %v", counts)
	}
	killed := time.Now()
	servers[1].Close() // rs2's server dies: connections are refused
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rs2 := netip.AddrPortFrom(l.Reals[1].Addr, port).String()
	if _, err := dir.WaitForLine(ctx, func(line lab.Line) bool {
		return strings.Contains(line.Text, `"message":"real down"`) && strings.Contains(line.Text, rs2)
	}); err != nil {
		t.Fatalf("rs2 never marked down: %v", err)
	}
	took := time.Since(killed)
	limit := time.Duration(fall)*interval + timeout + time.Second
	t.Logf("rs2 marked down %v after its server died (limit %v)", took.Round(time.Millisecond), limit)
	if took > limit {
		t.Fatalf("marked down after %v, over fall x interval + timeout + 1s = %v", took, limit)
	}
	counts := countReals(t, c, url, 30, 3)
	if counts[l.Reals[1].Label] != 0 || counts[l.Reals[0].Label]+counts[l.Reals[2].Label] != 30 {
		t.Fatalf("after rs2 went down: %v", counts)
	}
	var svcs []struct {
		Reals []struct {
			Addr string
			Down bool
		}
	}
	ctlJSON(t, l, &svcs, "service", "list")
	for _, r := range svcs[0].Reals {
		if r.Down != (r.Addr == rs2) {
			t.Fatalf("service list: %+v", svcs)
		}
	}
}

// SIGHUP reloads --config; a broken file changes nothing, a good one applies
// without dropping flows.
func TestReload(t *testing.T) {
	var path string
	l, dir := opsLab(t, func(l *lab.Lab) []string {
		path = writeConfig(t, config(svcConfig{Service: "tcp:" + vipHTTP.String(), Scheduler: "rr", Reals: realList(l, lab.DefaultHTTPPort)}))
		return []string{"--config", path}
	})
	conns := dialHTTP(t, l.Client, 3)
	requireNoErrors(t, "before", eachConn(conns, requests(1)))
	reloadAndWait := func(want string) {
		t.Helper()
		before := len(dir.Lines())
		if err := dir.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		n := 0
		if _, err := dir.WaitForLine(ctx, func(line lab.Line) bool {
			n++
			return n > before && strings.Contains(line.Text, want)
		}); err != nil {
			t.Fatalf("waiting for %q after SIGHUP: %v", want, err)
		}
	}
	var before, after any
	ctlJSON(t, l, &before, "service", "list", "--interval", "0") // no rates: the same answer twice

	// Broken: rejected whole, nothing changes.
	if err := os.WriteFile(path, []byte(`{"services":[{"service":"tcp:`+vipHTTP.String()+`","scheduler":"xx","reals":[]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	reloadAndWait("reload rejected")
	ctlJSON(t, l, &after, "service", "list", "--interval", "0")
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Fatalf("a rejected reload changed the services:\n%v\n%v", before, after)
	}
	c := newVIPClient(t, l.Client, false, netip.Addr{})
	if counts := countReals(t, c, httpURL(vipHTTP, "/"), 30, 3); len(counts) != 3 {
		t.Fatalf("after the rejected reload: %v", counts)
	}

	// Good: rs3 leaves the service; its flows stay, new ones avoid it.
	reals := realList(l, lab.DefaultHTTPPort)
	if err := os.WriteFile(path, []byte(`{"services":[{"service":"tcp:`+vipHTTP.String()+`","scheduler":"rr","reals":["`+reals[0]+`","`+reals[1]+`"]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	reloadAndWait(`"message":"reloaded"`)
	if counts := countReals(t, c, httpURL(vipHTTP, "/"), 30, 3); counts[l.Reals[2].Label] != 0 || len(counts) != 2 {
		t.Fatalf("after removing rs3: %v", counts)
	}
	requireNoErrors(t, "old connections after the reload", eachConn(conns, requests(2)))
}
