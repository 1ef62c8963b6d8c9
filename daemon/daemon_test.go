package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"holdfast/balancer"
	"holdfast/daemon/adminapi"
	"holdfast/internal/unixhttp"
	"holdfast/nat"
	"holdfast/stack/tun"
	"holdfast/stack/tun/tuntest"

	"github.com/rs/zerolog"
)

var (
	vip      = netip.MustParseAddrPort("198.18.100.1:80")
	realA    = netip.MustParseAddrPort("198.18.10.11:8080")
	realB    = netip.MustParseAddrPort("198.18.10.12:8080")
	recAddr  = netip.MustParseAddr("198.18.200.1")
	clientIP = netip.MustParseAddr("198.18.1.1")
)

// testServices builds the test service: tcp VIP:80 -> two reals, rr. Each
// director needs its own (the director keeps its flow counts in them).
func testServices(t *testing.T) []*balancer.Service {
	t.Helper()
	s, err := balancer.ServiceConfig{Service: "tcp:" + vip.String(), Scheduler: "rr",
		Reals: []string{realA.String(), realB.String()}}.Build()
	if err != nil {
		t.Fatal(err)
	}
	return []*balancer.Service{s}
}

// testConfig is director number id (1..4: its recovery ports) on dev.
func testConfig(t *testing.T, dev *tuntest.MemDevice, id int) Config {
	t.Helper()
	lo, hi, err := nat.DirectorPorts(id)
	if err != nil {
		t.Fatal(err)
	}
	return Config{
		Services: testServices(t),
		Device:   dev,
		MTU:      1500,
		Timeouts: nat.NewTimeouts(15*time.Minute, 2*time.Minute, 5*time.Minute),
		MaxFlows: 1000,
		Recovery: Recovery{
			Enabled: true, Addrs: []netip.Addr{recAddr}, PortLo: lo, PortHi: hi,
			WScale: 7, Timeout: 3 * time.Second, Rate: 1000, MaxInflight: 64, ParkBytes: 1 << 20,
		},
	}
}

// logBuffer collects log lines written from any goroutine.
type logBuffer struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	cond *sync.Cond // broadcast on each write; made on first use, under mu
}

func (b *logBuffer) written() *sync.Cond {
	if b.cond == nil {
		b.cond = sync.NewCond(&b.mu)
	}
	return b.cond
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.written().Broadcast()
	return b.buf.Write(p)
}

// lines returns the JSON lines whose message is msg, decoded.
func (b *logBuffer) lines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.linesLocked(t, msg)
}

func (b *logBuffer) linesLocked(t *testing.T, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(b.buf.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		if m["message"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// wait returns the n-th line whose message is msg, waiting for it up to 10 s.
func (b *logBuffer) wait(t *testing.T, msg string, n int) map[string]any {
	t.Helper()
	timedOut := false
	timer := time.AfterFunc(10*time.Second, func() {
		b.mu.Lock()
		timedOut = true
		b.written().Broadcast()
		b.mu.Unlock()
	})
	defer timer.Stop()
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		if ls := b.linesLocked(t, msg); len(ls) >= n {
			return ls[n-1]
		}
		if timedOut {
			t.Fatalf("no %d %q lines within 10s", n, msg)
		}
		b.written().Wait()
	}
}

// notifyListener listens on a unixgram socket as a service manager would.
type notifyListener struct {
	path string
	conn *net.UnixConn
}

func listenNotify(t *testing.T, path string) *notifyListener {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &notifyListener{path: path, conn: c}
}

// next returns the next datagram, or fails after timeout.
func (n *notifyListener) next(t *testing.T, timeout time.Duration) string {
	t.Helper()
	n.conn.SetReadDeadline(time.Now().Add(timeout))
	b := make([]byte, 256)
	k, err := n.conn.Read(b)
	if err != nil {
		t.Fatalf("notify socket %s: %v", n.path, err)
	}
	return string(b[:k])
}

// testDaemon is one Run in a goroutine of the test.
type testDaemon struct {
	cfg    Config
	log    *logBuffer
	admin  *adminapi.Client
	notify *notifyListener
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// startDaemon runs cfg (with an admin socket and a notify socket of its own)
// and returns once it said READY=1. It is stopped when t ends.
func startDaemon(t *testing.T, cfg Config) *testDaemon {
	t.Helper()
	dir := t.TempDir()
	td := &testDaemon{log: &logBuffer{}, done: make(chan error, 1)}
	td.notify = listenNotify(t, filepath.Join(dir, "notify"))
	cfg.NotifySocket = td.notify.path
	if cfg.AdminSocket == "" {
		cfg.AdminSocket = filepath.Join(dir, "admin.sock")
	}
	td.cfg = cfg
	td.admin = adminapi.NewClient(cfg.AdminSocket)
	ctx, cancel := context.WithCancel(context.Background())
	td.cancel = cancel
	go func() { td.done <- Run(ctx, cfg, zerolog.New(td.log)) }()
	t.Cleanup(func() {
		if err := td.stop(t); err != nil {
			t.Errorf("Run: %v", err)
		}
		td.admin.Close()
	})
	ready := make(chan string, 1)
	go func() {
		b := make([]byte, 256)
		td.notify.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, _ := td.notify.conn.Read(b)
		ready <- string(b[:n])
	}()
	select {
	case msg := <-ready:
		if want := "READY=1\nMAINPID=" + strconv.Itoa(os.Getpid()); msg != want {
			t.Fatalf("notified %q, want %q", msg, want)
		}
	case err := <-td.done:
		td.done <- err
		t.Fatalf("Run returned before serving: %v", err)
	}
	return td
}

// stop cancels Run's context and returns Run's error (once; later calls
// return the same).
func (td *testDaemon) stop(t *testing.T) error {
	td.once.Do(func() {
		td.cancel()
		select {
		case td.err = <-td.done:
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return within 10s of its context's end")
		}
	})
	return td.err
}

func (td *testDaemon) stats(t *testing.T) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var m map[string]any
	if err := td.admin.Stats(ctx, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestRunStops: Run serves (admin API up, READY=1 sent), then stops when
// its context ends: STOPPING=1, a "stopped" line with the counters, the
// admin socket gone, and (TestMain) no goroutine left.
func TestRunStops(t *testing.T) {
	dev := tuntest.NewMemDevice("mem0", 64)
	td := startDaemon(t, testConfig(t, dev, 1))
	if st := td.stats(t); st["flows_created_total"] != 0.0 {
		t.Fatalf("stats of an idle director: flows_created_total %v", st["flows_created_total"])
	}
	if err := td.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if msg := td.notify.next(t, time.Second); msg != "STOPPING=1" {
		t.Fatalf("notified %q when stopping, want STOPPING=1", msg)
	}
	if n := len(td.log.lines(t, "stopped")); n != 1 {
		t.Fatalf("%d stopped lines, want 1", n)
	}
	if n := len(td.log.lines(t, "serving")); n != 1 {
		t.Fatalf("%d serving lines, want 1", n)
	}
	if _, err := os.Stat(td.cfg.AdminSocket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("admin socket after Run: %v", err)
	}
	// Nothing was injected: a read can only end because the device is closed.
	if _, err := dev.Read([][]byte{make([]byte, 64)}, []int{0}, 0); !errors.Is(err, tun.ErrClosed) {
		t.Fatalf("Run left its device open: read %v", err)
	}
}

// TestRunDeviceGone: the device closing under the pumps ends Run (as a TUN
// deleted under a running director), without error.
func TestRunDeviceGone(t *testing.T) {
	dev := tuntest.NewMemDevice("mem0", 64)
	td := startDaemon(t, testConfig(t, dev, 1))
	dev.Close()
	select {
	case err := <-td.done:
		td.done <- err
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run still running 10s after its device closed")
	}
}

// TestRunBadConfig: a Config that cannot work is an ErrInvalid error naming
// the part, returned before anything starts.
func TestRunBadConfig(t *testing.T) {
	good := func() Config { return testConfig(t, tuntest.NewMemDevice("mem0", 1), 1) }
	for _, tc := range []struct {
		name   string
		change func(c *Config)
		part   Part
		want   string
	}{
		{"no service", func(c *Config) { c.Services = nil }, PartServices, "no service"},
		{"no device", func(c *Config) { c.Device = nil }, PartDevice, "no TUN name"},
		{"no MTU", func(c *Config) { c.MTU = 0 }, PartDevice, "MTU 0"},
		{"routes on a given device", func(c *Config) { c.Routes.Setup = true }, PartRoutes, "routes"},
		{"no flows", func(c *Config) { c.MaxFlows = 0 }, PartFlows, "max flows 0"},
		{"zero timeout", func(c *Config) { c.Timeouts[nat.StateUDP] = 0 }, PartFlows, "UDP"},
		{"bad checks", func(c *Config) { c.Checks = balancer.CheckTiming{Interval: time.Second} }, PartChecks, "timeout"},
		{"recovery without address", func(c *Config) { c.Recovery.Addrs = nil }, PartRecovery, "recovery address"},
		{"recovery without rate", func(c *Config) { c.Recovery.Rate = 0 }, PartRecovery, "rate 0"},
		{"recovery address of the other IP version only", func(c *Config) {
			c.Recovery.Addrs = []netip.Addr{netip.MustParseAddr("2001:2:0:30::1")}
		}, PartRecovery, "is IPv4 and every recovery address is IPv6"},
		{"budget prefix too long", func(c *Config) { c.Recovery.PrefixLen4 = 33 }, PartRecovery, "/33 (IPv4)"},
		{"negative per-prefix flows", func(c *Config) { c.Recovery.PrefixFlows = -1 }, PartRecovery, "flows -1"},
		{"cookie too wide", func(c *Config) { c.Recovery.CookieBits = 10 }, PartRecovery, "timestamp cookie bits 10: expected 0..9"},
		{"bad metrics address", func(c *Config) { c.MetricsAddr = "localhost" }, PartMetrics, `"localhost"`},
		// Found by the parts themselves (nat owns the recovery ports).
		{"recovery address is a VIP", func(c *Config) { c.Recovery.Addrs = []netip.Addr{vip.Addr()} }, PartDirector, "also a VIP"},
		{"bad recovery ports", func(c *Config) { c.Recovery.PortLo, c.Recovery.PortHi = 2000, 1000 }, PartDirector, "recovery ports 2000-1000"},
		{"cookie id collision", func(c *Config) {
			s := c.Services[0]
			c.Recovery.CookieBits = 4
			s.Reals = append(s.Reals, &balancer.Real{Addr: netip.MustParseAddrPort("198.18.10.99:8080"), Weight: 1,
				CookieID: balancer.DerivedCookieID(s.Reals[0].Addr, 4), CookieIDSet: true})
		}, PartDirector, "have the same cookie id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good()
			tc.change(&cfg)
			var log logBuffer
			err := Run(context.Background(), cfg, zerolog.New(&log))
			var de *Error
			if !errors.As(err, &de) || !errors.Is(err, ErrInvalid) || de.Part != tc.part || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run: %v, want an invalid %s error containing %q", err, tc.part, tc.want)
			}
			if len(log.lines(t, "serving")) != 0 {
				t.Fatal("served with a bad config")
			}
		})
	}
}

// TestRunAdminSocketInUse: a socket another director listens on (a file,
// or an abstract one as the CLI's default) is a runtime error of the admin
// API (not a usage error), found before anything is set up: the second Run
// logs nothing and closes its device; the first director keeps serving.
func TestRunAdminSocketInUse(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		t.Run(fmt.Sprintf("abstract=%v", abstract), func(t *testing.T) {
			cfg := testConfig(t, tuntest.NewMemDevice("mem0", 1), 1)
			if abstract {
				cfg.AdminSocket = fmt.Sprintf("@holdfast-test/%d/%s", os.Getpid(), t.Name())
			}
			first := startDaemon(t, cfg)
			dev := tuntest.NewMemDevice("mem1", 1)
			cfg = testConfig(t, dev, 2)
			cfg.AdminSocket = first.cfg.AdminSocket
			log := &logBuffer{}
			err := Run(context.Background(), cfg, zerolog.New(log))
			var de *Error
			if !errors.As(err, &de) || de.Part != PartAdmin || errors.Is(err, ErrInvalid) || !errors.Is(err, unixhttp.ErrInUse) {
				t.Fatalf("Run on a socket in use: %v, want a runtime admin API error", err)
			}
			log.mu.Lock()
			logged := log.buf.String()
			log.mu.Unlock()
			if logged != "" {
				t.Fatalf("Run on a socket in use logged, want nothing:\n%s", logged)
			}
			if _, err := dev.Read([][]byte{make([]byte, 64)}, []int{0}, 0); !errors.Is(err, tun.ErrClosed) {
				t.Fatalf("Run on a socket in use left its device open: read %v", err)
			}
			first.stats(t)
		})
	}
}

// TestRunAdminInfo: GET /info names the director that answers.
func TestRunAdminInfo(t *testing.T) {
	cfg := testConfig(t, tuntest.NewMemDevice("mem0", 1), 1)
	cfg.Recovery.ID = 3
	cfg.AdminSocket = fmt.Sprintf("@holdfast-test/%d/info", os.Getpid())
	td := startDaemon(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := td.admin.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := os.Stat("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if info.ID != 3 || info.PID != os.Getpid() || info.TUN != "mem0" || info.Socket != cfg.AdminSocket ||
		info.NetNS != ns.Sys().(*syscall.Stat_t).Ino || info.Uptime < 0 || info.Uptime > 60 || info.Version == "" ||
		time.Since(info.Started) > time.Minute {
		t.Fatalf("info %+v", info)
	}
}

// TestRunSignals: with HandleSignals, SIGHUP reloads (a set of services
// that does not validate leaves the running one), SIGUSR1 logs every
// counter of the table and SIGTERM stops Run.
func TestRunSignals(t *testing.T) {
	cfg := testConfig(t, tuntest.NewMemDevice("mem0", 1), 1)
	cfg.HandleSignals = true
	next := make(chan []*balancer.Service, 1)
	cfg.Reload = func() ([]*balancer.Service, error) {
		if s := <-next; s != nil {
			return s, nil
		}
		return nil, errors.New("broken file")
	}
	td := startDaemon(t, cfg)
	signal := func(sig syscall.Signal, msg string) map[string]any {
		t.Helper()
		n := len(td.log.lines(t, msg))
		if err := syscall.Kill(os.Getpid(), sig); err != nil {
			t.Fatal(err)
		}
		return td.log.wait(t, msg, n+1)
	}
	reals := func() []netip.AddrPort {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		svcs, err := td.admin.Services(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []netip.AddrPort
		for _, r := range svcs[0].Reals {
			out = append(out, r.Addr)
		}
		return out
	}

	next <- nil
	signal(syscall.SIGHUP, "reload rejected; the running configuration stays")
	if got := reals(); !slices.Equal(got, []netip.AddrPort{realA, realB}) {
		t.Fatalf("reals after a rejected reload: %v", got)
	}
	one, err := balancer.ServiceConfig{Service: "tcp:" + vip.String(), Scheduler: "rr", Reals: []string{realA.String()}}.Build()
	if err != nil {
		t.Fatal(err)
	}
	next <- []*balancer.Service{one}
	signal(syscall.SIGHUP, "reloaded")
	if got := reals(); !slices.Equal(got, []netip.AddrPort{realA}) {
		t.Fatalf("reals after the reload: %v, want [%s]", got, realA)
	}

	line := signal(syscall.SIGUSR1, "counters")
	for _, c := range counters {
		if _, ok := line[c.name]; !ok {
			t.Errorf("the counters line has no %s", c.name)
		}
	}

	// SIGTERM stops Run cleanly, and the log says why.
	if line := signal(syscall.SIGTERM, "stopping"); line["signal"] != "terminated signal received" {
		t.Errorf("stopping line %v, want the signal", line)
	}
	if err := td.stop(t); err != nil {
		t.Fatalf("Run after SIGTERM: %v", err)
	}
}

// TestNotify: READY=1 with our pid and STOPPING=1 reach a unixgram socket,
// named by path or in the abstract namespace ('@'); no socket, no message.
func TestNotify(t *testing.T) {
	if err := notify("", stateReady()); err != nil {
		t.Fatalf("notify without a socket: %v", err)
	}
	for _, path := range []string{
		filepath.Join(t.TempDir(), "notify"),
		"@holdfast-test-" + strconv.Itoa(os.Getpid()),
	} {
		n := listenNotify(t, path)
		if err := notify(path, stateReady()); err != nil {
			t.Fatalf("notify %s: %v", path, err)
		}
		if msg, want := n.next(t, time.Second), "READY=1\nMAINPID="+strconv.Itoa(os.Getpid()); msg != want {
			t.Fatalf("%s: got %q, want %q", path, msg, want)
		}
		if err := notify(path, stateStopping); err != nil {
			t.Fatal(err)
		}
		if msg := n.next(t, time.Second); msg != "STOPPING=1" {
			t.Fatalf("%s: got %q, want STOPPING=1", path, msg)
		}
	}
	if err := notify(filepath.Join(t.TempDir(), "absent"), stateReady()); err == nil {
		t.Fatal("notify to no socket: no error")
	}
}

// TestServicesJSON: /services keeps the field names it had when nat's
// types carried the JSON tags (the embedded traffic counters included).
func TestServicesJSON(t *testing.T) {
	in := []nat.ServiceInfo{
		{Service: "tcp:198.18.100.1:80", Scheduler: "wrr", Persistence: 10 * time.Minute, Reals: []nat.RealInfo{{
			Addr: realA, Weight: 3, Down: true, Removed: true, Rehome: true, Active: 4, Inactive: 5, CookieID: 11,
		}}},
		{Service: "udp:198.18.100.1:53", Scheduler: "rr"},
	}
	r := &in[0].Reals[0]
	r.PacketsIn, r.BytesIn, r.PacketsOut, r.BytesOut, r.Conns = 6, 7, 8, 9, 12
	got, err := json.Marshal(services(in))
	if err != nil {
		t.Fatal(err)
	}
	// nat.ServiceInfo's encoding/json output before the move, and the
	// timestamp cookie id and the real's connections since.
	const want = `[{"service":"tcp:198.18.100.1:80","scheduler":"wrr","persistence_ns":600000000000,"reals":[{"addr":"198.18.10.11:8080","weight":3,"down":true,"removed":true,"rehome":true,"active":4,"inactive":5,"conns":12,"PacketsIn":6,"BytesIn":7,"PacketsOut":8,"BytesOut":9,"cookie_id":11}]},{"service":"udp:198.18.100.1:53","scheduler":"rr","persistence_ns":0,"reals":null}]`
	if string(got) != want {
		t.Fatalf("services JSON\n got %s\nwant %s", got, want)
	}
}

// TestRehomeNeedsRecovery: moving a real's flows away with recovery off is
// refused with a message naming the request's rehome field (the CLI turns
// it into --rehome), and the real stays in its service.
func TestRehomeNeedsRecovery(t *testing.T) {
	dev := tuntest.NewMemDevice("mem0", 64)
	cfg := testConfig(t, dev, 1)
	cfg.Recovery.Enabled = false
	td := startDaemon(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := td.admin.ChangeReal(ctx, adminapi.RealChange{Op: "remove", Service: "tcp:" + vip.String(), Real: realA.String(), Rehome: true})
	if err == nil || err.Error() != "rehome needs recovery on (holdfast run --recovery=on)" {
		t.Fatalf("rehome with recovery off: %v", err)
	}
	svcs, err := td.admin.Services(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 1 || len(svcs[0].Reals) != 2 || svcs[0].Reals[0].Removed {
		t.Fatalf("services after the refused removal: %+v", svcs)
	}
}

// TestRuntimeRealChecked: a real added through the admin API is health
// checked like a configured one (here a port nothing listens on: down at its
// first check).
func TestRuntimeRealChecked(t *testing.T) {
	dev := tuntest.NewMemDevice("mem0", 64)
	cfg := testConfig(t, dev, 1)
	for _, s := range cfg.Services {
		s.Check = balancer.Check{Kind: balancer.CheckTCP}
	}
	cfg.Checks = balancer.CheckTiming{Interval: 50 * time.Millisecond, Timeout: 50 * time.Millisecond, Rise: 1, Fall: 1}
	td := startDaemon(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	added := ln.Addr().String()
	ln.Close() // nothing listens there now: connection refused
	if _, err := td.admin.ChangeReal(ctx, adminapi.RealChange{Op: "add", Service: "tcp:" + vip.String(), Real: added}); err != nil {
		t.Fatal(err)
	}
	for i := 1; ; i++ {
		if l := td.log.wait(t, "real down", i); l["real"] == added {
			break
		}
	}
	svcs, err := td.admin.Services(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range svcs[0].Reals {
		if r.Addr.String() == added && !r.Down {
			t.Fatalf("the added real is not down: %+v", r)
		}
	}
}

// A runtime change is logged with what it changed: `real add ADDR*3` logs
// weight 3 (the weight inside the real's string), `real weight` its own.
func TestRealChangeLogged(t *testing.T) {
	dev := tuntest.NewMemDevice("hft", 64)
	td := startDaemon(t, testConfig(t, dev, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	svc := "tcp:" + vip.String()
	if _, err := td.admin.ChangeReal(ctx, adminapi.RealChange{Op: "add", Service: svc, Real: "198.18.10.99:8080*3"}); err != nil {
		t.Fatal(err)
	}
	if l := td.log.wait(t, "real changed", 1); l["op"] != "add" || l["weight"] != 3.0 {
		t.Fatalf("logged %v, want op add, weight 3", l)
	}
	if _, err := td.admin.ChangeReal(ctx, adminapi.RealChange{Op: "weight", Service: svc, Real: "198.18.10.99:8080", Weight: 0}); err != nil {
		t.Fatal(err)
	}
	if l := td.log.wait(t, "real changed", 2); l["op"] != "weight" || l["weight"] != 0.0 {
		t.Fatalf("logged %v, want op weight, weight 0", l)
	}
}

// `real weight` and `real remove` take the real as ADDR:PORT alone: a weight
// or an id in it (which they would ignore) is refused, naming the field.
func TestRealChangeRejectsWeightInReal(t *testing.T) {
	dev := tuntest.NewMemDevice("hft", 64)
	td := startDaemon(t, testConfig(t, dev, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	svc := "tcp:" + vip.String()
	for _, ch := range []adminapi.RealChange{
		{Op: "weight", Service: svc, Real: realA.String() + "*3", Weight: 2},
		{Op: "remove", Service: svc, Real: realA.String() + ",id=4"},
	} {
		_, err := td.admin.ChangeReal(ctx, ch)
		if err == nil || !strings.Contains(err.Error(), "expected ADDR:PORT alone") {
			t.Errorf("%s %q: %v, want a refusal", ch.Op, ch.Real, err)
		}
	}
	svcs, err := td.admin.Services(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range svcs[0].Reals {
		if r.Addr == realA && r.Weight != 1 {
			t.Fatalf("the refused change applied: %+v", r)
		}
	}
}
