package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"holdfast/bgp"
)

// The BGP test topology, three namespaces:
//
//	client router (BIRD, AS 65000)          real router (BIRD, AS 65000)
//	198.18.110.1/24  2001:2:0:110::1/64     198.18.120.1/24
//	        |                                       |
//	198.18.110.2/24  2001:2:0:110::2/64     198.18.120.2/24
//	          speaker (holdfast's bgp.Speaker, AS 65001, MED 10)
//
// The speaker has an IPv4 and an IPv6 session with the client router and an
// IPv4 session with the real router, all signed with TCP-MD5.
const (
	bgpPassword = "hf-bgp-test"
	bgpMED      = 10
)

var (
	crV4  = netip.MustParseAddr("198.18.110.1")
	crV6  = netip.MustParseAddr("2001:2:0:110::1")
	spCV4 = netip.MustParseAddr("198.18.110.2")
	spCV6 = netip.MustParseAddr("2001:2:0:110::2")
	rrV4  = netip.MustParseAddr("198.18.120.1")
	spRV4 = netip.MustParseAddr("198.18.120.2")
)

// bgpNS is a namespace of the BGP test, deleted in t.Cleanup.
type bgpNS string

func newBGPNS(t *testing.T, role string) bgpNS {
	t.Helper()
	// "hf<pid>-<n>-" is the lab's stale-namespace pattern: TestMain's sweep
	// deletes these too if this process dies before its cleanup.
	name := bgpNS(fmt.Sprintf("hf%d-16016-bgp-%s", os.Getpid(), role))
	bgpRun(t, "ip", "netns", "add", string(name))
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", string(name)).CombinedOutput(); err != nil {
			t.Errorf("ip netns delete %s: %v: %s", name, err, out)
		}
	})
	name.ip(t, "link", "set", "lo", "up")
	return name
}

func (n bgpNS) ip(t *testing.T, args ...string) {
	t.Helper()
	bgpRun(t, "ip", append([]string{"-n", string(n)}, args...)...)
}

func bgpRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// bgpLink joins a and b by a veth pair (ifA in a, ifB in b) with the given
// addresses; IPv6 addresses without duplicate address detection, so BIRD
// can bind to them at once.
func bgpLink(t *testing.T, a bgpNS, ifA string, addrsA []string, b bgpNS, ifB string, addrsB []string) {
	t.Helper()
	a.ip(t, "link", "add", ifA, "type", "veth", "peer", "name", ifB, "netns", string(b))
	for _, l := range []struct {
		ns    bgpNS
		iface string
		addrs []string
	}{{a, ifA, addrsA}, {b, ifB, addrsB}} {
		for _, ad := range l.addrs {
			args := []string{"addr", "add", ad, "dev", l.iface}
			if strings.Contains(ad, ":") {
				args = append(args, "nodad")
			}
			l.ns.ip(t, args...)
		}
		l.ns.ip(t, "link", "set", l.iface, "up")
	}
}

// bird is a BIRD 2 daemon running in a namespace, driven with birdc.
type bird struct {
	name, sock string
	kill       func() // kills it (by PID) and waits for it; idempotent
}

// startBIRD starts bird in ns with conf, in the foreground so that the PID
// is the one killed at cleanup.
func startBIRD(t *testing.T, ns bgpNS, name, conf string) *bird {
	t.Helper()
	dir := t.TempDir()
	b := &bird{name: name, sock: filepath.Join(dir, "bird.ctl")}
	cfg := filepath.Join(dir, "bird.conf")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	cmd := exec.Command("ip", "netns", "exec", string(ns), "bird", "-f", "-c", cfg, "-s", b.sock)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start bird %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	b.kill = sync.OnceFunc(func() {
		cmd.Process.Kill()
		<-done
	})
	t.Cleanup(func() {
		b.kill()
		if t.Failed() {
			t.Logf("bird %s output:\n%s", name, log.String())
		}
	})
	// BIRD creates its control socket once it has read its configuration:
	// poll for it (there is no readiness notification to wait on).
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := b.birdc("show status"); err == nil {
			return b
		}
		select {
		case <-done:
			t.Fatalf("bird %s exited: %s", name, log.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("bird %s: no control socket after 10s: %s", name, log.String())
		}
	}
}

func (b *bird) birdc(cmd string) (string, error) {
	out, err := exec.Command("birdc", append([]string{"-s", b.sock}, strings.Fields(cmd)...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("birdc %s (%s): %v: %s", cmd, b.name, err, out)
	}
	return string(out), nil
}

// birdRoute is a route of `birdc show route ... all`.
type birdRoute struct {
	Prefix  netip.Prefix
	NextHop string
	MED     string
	Attrs   string // the attribute lines, to look for what must not be there
}

// routes returns the routes BIRD learned from protocol proto, by prefix.
func (b *bird) routes(t *testing.T, proto string) map[netip.Prefix]birdRoute {
	t.Helper()
	out, err := b.birdc("show route protocol " + proto + " all")
	if err != nil {
		t.Fatal(err)
	}
	got := map[netip.Prefix]birdRoute{}
	var cur *birdRoute
	flush := func() {
		if cur != nil {
			got[cur.Prefix] = *cur
		}
		cur = nil
	}
	for _, line := range strings.Split(out, "\n") {
		if line == "" || strings.HasPrefix(line, "BIRD ") || strings.HasPrefix(line, "Table ") {
			continue
		}
		if line[0] != ' ' && line[0] != '\t' {
			flush()
			f := strings.Fields(line)
			p, err := netip.ParsePrefix(f[0])
			if err != nil {
				t.Fatalf("bird %s: unexpected line %q", b.name, line)
			}
			cur = &birdRoute{Prefix: p}
			continue
		}
		if cur == nil {
			continue
		}
		l := strings.TrimSpace(line)
		cur.Attrs += l + "\n"
		if v, ok := strings.CutPrefix(l, "BGP.next_hop: "); ok {
			cur.NextHop = strings.Fields(v)[0]
		}
		if v, ok := strings.CutPrefix(l, "BGP.med: "); ok {
			cur.MED = v
		}
	}
	flush()
	return got
}

// protoState returns BIRD's state of protocol proto ("Established", ...).
func (b *bird) protoState(t *testing.T, proto string) string {
	t.Helper()
	out, err := b.birdc("show protocols " + proto)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 6 && f[0] == proto {
			return f[5]
		}
	}
	return ""
}

// birdConf is a router's configuration: passive sessions (holdfast
// initiates), import everything holdfast sends, and export a static route
// of each family so that the test can see holdfast reject it.
func birdConf(routerID netip.Addr) string {
	var b strings.Builder
	fmt.Fprintf(&b, "router id %s;\nprotocol device {}\n", routerID)
	b.WriteString("protocol static st4 { ipv4; route 198.18.99.0/24 blackhole; }\n")
	b.WriteString("protocol static st6 { ipv6; route 2001:2:99::/64 blackhole; }\n")
	return b.String()
}

func birdSession(name, family string, local, neighbor netip.Addr) string {
	return fmt.Sprintf(`protocol bgp %s {
	local %s as 65000;
	neighbor %s as 65001;
	password "%s";
	passive on;
	%s { import all; export where source = RTS_STATIC; };
}
`, name, local, neighbor, bgpPassword, family)
}

// speakerProc is the bgpspeaker helper running in a namespace.
type speakerProc struct {
	t    *testing.T
	in   io.WriteCloser
	out  *bufio.Scanner
	mu   sync.Mutex
	log  bytes.Buffer
	cmd  *exec.Cmd
	done chan struct{}
}

var (
	speakerOnce sync.Once
	speakerBin  string
	speakerErr  error
)

func buildSpeaker(t *testing.T) string {
	t.Helper()
	speakerOnce.Do(func() {
		dir, err := os.MkdirTemp("", "holdfast-bgpspeaker-")
		if err != nil {
			speakerErr = err
			return
		}
		bin := filepath.Join(dir, "bgpspeaker")
		args := []string{"build", "-o", bin}
		if raceEnabled {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, "./integration/bgpspeaker")...)
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			speakerErr = fmt.Errorf("go %v: %v\n%s", args, err, out)
			return
		}
		speakerBin = bin
	})
	if speakerErr != nil {
		t.Fatal(speakerErr)
	}
	return speakerBin
}

type syncBuffer struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (s syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func startSpeaker(t *testing.T, ns bgpNS, args ...string) *speakerProc {
	t.Helper()
	bin := buildSpeaker(t)
	s := &speakerProc{t: t, done: make(chan struct{})}
	s.cmd = exec.Command("ip", append([]string{"netns", "exec", string(ns), bin}, args...)...)
	s.cmd.Stderr = syncBuffer{&s.mu, &s.log}
	var err error
	if s.in, err = s.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s.out = bufio.NewScanner(stdout)
	s.out.Buffer(nil, 1<<20)
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		<-s.done
		if t.Failed() {
			s.mu.Lock()
			t.Logf("speaker log:\n%s", s.log.String())
			s.mu.Unlock()
		}
	})
	return s
}

// do sends one command and returns the speaker's status after it; a
// command's error fails the test.
func (s *speakerProc) do(cmd string) bgp.Status {
	s.t.Helper()
	if _, err := fmt.Fprintln(s.in, cmd); err != nil {
		s.t.Fatalf("speaker %q: %v", cmd, err)
	}
	if !s.out.Scan() {
		s.t.Fatalf("speaker %q: no answer (%v)", cmd, s.out.Err())
	}
	var r struct {
		Err    string     `json:"err"`
		Status bgp.Status `json:"status"`
	}
	if err := json.Unmarshal(s.out.Bytes(), &r); err != nil {
		s.t.Fatalf("speaker %q: %v: %s", cmd, err, s.out.Bytes())
	}
	if r.Err != "" {
		s.t.Fatalf("speaker %q: %s", cmd, r.Err)
	}
	return r.Status
}

// within polls cond every 20 ms until it holds or d has passed, and returns
// how long it took. BIRD has no event a test can wait on for a route that
// arrives or leaves: polling birdc is the way to see it.
func within(d time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for {
		if cond() {
			return time.Since(start), true
		}
		if time.Since(start) > d {
			return time.Since(start), false
		}
		time.Sleep(20 * time.Millisecond) // the poll interval, see above
	}
}

func prefixSet(m map[netip.Prefix]birdRoute) []netip.Prefix {
	var out []netip.Prefix
	for p := range m {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return out
}

func samePrefixes(m map[netip.Prefix]birdRoute, want ...string) bool {
	var w []netip.Prefix
	for _, s := range want {
		w = append(w, netip.MustParsePrefix(s))
	}
	got := prefixSet(m)
	slices.SortFunc(w, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Equal(got, w)
}

// TestBGPSpeakerBIRD runs bgp.Speaker against two BIRD 2 routers: the
// client-side router learns exactly the VIPs (each family over its own
// session) with the MED and holdfast's next hop, the real-side router
// exactly the recovery address and the announce prefix, a withdrawal
// reaches both within a second, the routers' own routes are never imported,
// and WithdrawAll, then Close, empty both routers.
func TestBGPSpeakerBIRD(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces (CI runs as root)")
	}
	if _, err := exec.LookPath("bird"); err != nil {
		t.Skip("needs BIRD 2 (Debian bird2; .ci/run installs it)")
	}
	spk, cr, rr := newBGPNS(t, "spk"), newBGPNS(t, "cr"), newBGPNS(t, "rr")
	bgpLink(t, spk, "tocr", []string{spCV4.String() + "/24", spCV6.String() + "/64"}, cr, "tospk", []string{crV4.String() + "/24", crV6.String() + "/64"})
	bgpLink(t, spk, "torr", []string{spRV4.String() + "/24"}, rr, "tospk", []string{rrV4.String() + "/24"})

	client := startBIRD(t, cr, "client", birdConf(crV4)+
		birdSession("hf4", "ipv4", crV4, spCV4)+birdSession("hf6", "ipv6", crV6, spCV6))
	real := startBIRD(t, rr, "real", birdConf(rrV4)+birdSession("hf4", "ipv4", rrV4, spRV4))

	sp := startSpeaker(t, spk, "-router-id", spCV4.String(), "-med", fmt.Sprint(bgpMED), "-password", bgpPassword,
		"-client-peer", crV4.String()+","+crV6.String(), "-real-peer", rrV4.String())

	// The sessions come up (holdfast dials; the routers are passive).
	if d, ok := within(20*time.Second, func() bool {
		return client.protoState(t, "hf4") == "Established" && client.protoState(t, "hf6") == "Established" &&
			real.protoState(t, "hf4") == "Established"
	}); !ok {
		t.Fatalf("sessions not established after %v: client hf4 %s hf6 %s, real hf4 %s; speaker %+v", d,
			client.protoState(t, "hf4"), client.protoState(t, "hf6"), real.protoState(t, "hf4"), sp.do("status").Peers)
	}

	sp.do("client 198.18.0.100/32,198.18.0.101/32,2001:2::100/128")
	sp.do("real 198.18.30.1/32,0.0.0.0/0")

	var c4, c6, r4 map[netip.Prefix]birdRoute
	if d, ok := within(5*time.Second, func() bool {
		c4, c6, r4 = client.routes(t, "hf4"), client.routes(t, "hf6"), real.routes(t, "hf4")
		return samePrefixes(c4, "198.18.0.100/32", "198.18.0.101/32") && samePrefixes(c6, "2001:2::100/128") &&
			samePrefixes(r4, "0.0.0.0/0", "198.18.30.1/32")
	}); !ok {
		out, _ := client.birdc("show protocols all hf4")
		all, _ := client.birdc("show route all")
		t.Fatalf("after %v: client learned %v over IPv4 and %v over IPv6, real %v; want the VIPs and the real side's set\nclient router: %s\n%s",
			d, prefixSet(c4), prefixSet(c6), prefixSet(r4), out, all)
	}
	check := func(who string, m map[netip.Prefix]birdRoute, nh netip.Addr) {
		for p, r := range m {
			if r.MED != fmt.Sprint(bgpMED) {
				t.Errorf("%s: %s has MED %q, want %d", who, p, r.MED, bgpMED)
			}
			if r.NextHop != nh.String() {
				t.Errorf("%s: %s has next hop %q, want %s (next hop self)", who, p, r.NextHop, nh)
			}
			if strings.Contains(r.Attrs, "community") {
				t.Errorf("%s: %s carries a community (the side tags must be stripped):\n%s", who, p, r.Attrs)
			}
		}
	}
	check("client router, IPv4", c4, spCV4)
	check("client router, IPv6", c6, spCV6)
	check("real router", r4, spRV4)

	// The routers' static routes reached holdfast and were not imported.
	st := sp.do("status")
	for _, p := range st.Peers {
		if p.State != "Established" {
			t.Errorf("speaker: peer %s is %s", p.Addr, p.State)
		}
		if p.Received == 0 || p.Imported != 0 {
			t.Errorf("speaker: peer %s received %d routes and imported %d; want some received (the router's static route) and none imported",
				p.Addr, p.Received, p.Imported)
		}
	}
	wantAdv := map[netip.Addr]uint64{crV4: 2, crV6: 1, rrV4: 2}
	for _, p := range st.Peers {
		if p.Advertised != wantAdv[p.Addr] {
			t.Errorf("speaker: peer %s advertised %d prefixes, want %d", p.Addr, p.Advertised, wantAdv[p.Addr])
		}
	}
	if st.Counters.Establishments != 3 {
		t.Errorf("speaker counters %+v: want 3 establishments", st.Counters)
	}

	// A withdrawal on each side reaches its router within a second.
	start := time.Now()
	sp.do("client 198.18.0.101/32,2001:2::100/128")
	sp.do("real 0.0.0.0/0")
	if _, ok := within(time.Second, func() bool {
		return samePrefixes(client.routes(t, "hf4"), "198.18.0.101/32") && samePrefixes(real.routes(t, "hf4"), "0.0.0.0/0")
	}); !ok {
		t.Errorf("withdrawals not seen within 1s: client %v, real %v", prefixSet(client.routes(t, "hf4")), prefixSet(real.routes(t, "hf4")))
	} else {
		t.Logf("withdrawals on both routers %v after the first Set", time.Since(start).Round(time.Millisecond))
	}
	if !samePrefixes(client.routes(t, "hf6"), "2001:2::100/128") {
		t.Errorf("client router, IPv6: %v after an IPv4 withdrawal, want 2001:2::100/128 still", prefixSet(client.routes(t, "hf6")))
	}

	// WithdrawAll empties both routers while the sessions stay up: the
	// routes go because they are withdrawn, not because a session fell.
	sp.do("withdraw")
	if d, ok := within(time.Second, func() bool {
		return len(client.routes(t, "hf4")) == 0 && len(client.routes(t, "hf6")) == 0 && len(real.routes(t, "hf4")) == 0
	}); !ok {
		t.Errorf("after WithdrawAll and %v: client %v %v, real %v", d, prefixSet(client.routes(t, "hf4")), prefixSet(client.routes(t, "hf6")), prefixSet(real.routes(t, "hf4")))
	}
	for _, s := range []struct {
		b     *bird
		proto string
	}{{client, "hf4"}, {client, "hf6"}, {real, "hf4"}} {
		if st := s.b.protoState(t, s.proto); st != "Established" {
			t.Errorf("bird %s %s is %s after WithdrawAll, want Established", s.b.name, s.proto, st)
		}
	}
	// A Set after WithdrawAll announces nothing (the director is leaving).
	if st := sp.do("client 198.18.0.100/32"); len(st.ClientSide) != 0 || !st.Withdrawn {
		t.Errorf("after WithdrawAll, SetClientSide announced %v (withdrawn %v)", st.ClientSide, st.Withdrawn)
	}
	st = sp.do("close")
	if st.Counters.Drops != 0 {
		t.Errorf("counters %+v: a session dropped before Close", st.Counters)
	}
	if _, ok := within(5*time.Second, func() bool {
		return client.protoState(t, "hf4") != "Established" && real.protoState(t, "hf4") != "Established"
	}); !ok {
		t.Errorf("sessions still established after Close")
	}
}

// TestBGPSpeakerCloseWithdraws: Close alone (no WithdrawAll first) leaves
// nothing announced on either router.
func TestBGPSpeakerCloseWithdraws(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces (CI runs as root)")
	}
	if _, err := exec.LookPath("bird"); err != nil {
		t.Skip("needs BIRD 2 (Debian bird2; .ci/run installs it)")
	}
	spk, cr, rr := newBGPNS(t, "spk"), newBGPNS(t, "cr"), newBGPNS(t, "rr")
	bgpLink(t, spk, "tocr", []string{spCV4.String() + "/24"}, cr, "tospk", []string{crV4.String() + "/24"})
	bgpLink(t, spk, "torr", []string{spRV4.String() + "/24"}, rr, "tospk", []string{rrV4.String() + "/24"})
	client := startBIRD(t, cr, "client", birdConf(crV4)+birdSession("hf4", "ipv4", crV4, spCV4))
	real := startBIRD(t, rr, "real", birdConf(rrV4)+birdSession("hf4", "ipv4", rrV4, spRV4))
	sp := startSpeaker(t, spk, "-router-id", spCV4.String(), "-med", "20", "-password", bgpPassword,
		"-client-peer", crV4.String(), "-real-peer", rrV4.String())
	sp.do("client 198.18.0.100/32")
	sp.do("real 198.18.30.1/32")
	if d, ok := within(20*time.Second, func() bool {
		return samePrefixes(client.routes(t, "hf4"), "198.18.0.100/32") && samePrefixes(real.routes(t, "hf4"), "198.18.30.1/32")
	}); !ok {
		t.Fatalf("after %v: client %v, real %v", d, prefixSet(client.routes(t, "hf4")), prefixSet(real.routes(t, "hf4")))
	}
	sp.do("close")
	if d, ok := within(time.Second, func() bool {
		return len(client.routes(t, "hf4")) == 0 && len(real.routes(t, "hf4")) == 0
	}); !ok {
		t.Errorf("after Close and %v: client %v, real %v", d, prefixSet(client.routes(t, "hf4")), prefixSet(real.routes(t, "hf4")))
	}
}

// TestBGPSpeakerRouterRestart: a router that dies is seen as a drop (with
// its reason), and once it is back the speaker dials it again and it gets
// its routes back without a Set.
func TestBGPSpeakerRouterRestart(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces (CI runs as root)")
	}
	if _, err := exec.LookPath("bird"); err != nil {
		t.Skip("needs BIRD 2 (Debian bird2; .ci/run installs it)")
	}
	spk, cr, rr := newBGPNS(t, "spk"), newBGPNS(t, "cr"), newBGPNS(t, "rr")
	bgpLink(t, spk, "tocr", []string{spCV4.String() + "/24"}, cr, "tospk", []string{crV4.String() + "/24"})
	bgpLink(t, spk, "torr", []string{spRV4.String() + "/24"}, rr, "tospk", []string{rrV4.String() + "/24"})
	realConf := birdConf(rrV4) + birdSession("hf4", "ipv4", rrV4, spRV4)
	client := startBIRD(t, cr, "client", birdConf(crV4)+birdSession("hf4", "ipv4", crV4, spCV4))
	real := startBIRD(t, rr, "real", realConf)
	sp := startSpeaker(t, spk, "-router-id", spCV4.String(), "-password", bgpPassword,
		"-client-peer", crV4.String(), "-real-peer", rrV4.String())
	sp.do("client 198.18.0.100/32")
	sp.do("real 198.18.30.1/32,0.0.0.0/0")
	if d, ok := within(20*time.Second, func() bool {
		return samePrefixes(client.routes(t, "hf4"), "198.18.0.100/32") && samePrefixes(real.routes(t, "hf4"), "0.0.0.0/0", "198.18.30.1/32")
	}); !ok {
		t.Fatalf("after %v: client %v, real %v", d, prefixSet(client.routes(t, "hf4")), prefixSet(real.routes(t, "hf4")))
	}

	real.kill()
	var rp bgp.PeerStatus
	// The speaker learns of the drop from its socket (BIRD's end closed
	// with the process): poll its status, there is no event to wait on
	// from outside the helper.
	if _, ok := within(5*time.Second, func() bool {
		for _, p := range sp.do("status").Peers {
			if p.Addr == rrV4 {
				rp = p
			}
		}
		return rp.State != "Established"
	}); !ok {
		t.Fatalf("real-side peer still %s after its router died", rp.State)
	}
	st := sp.do("status")
	if st.Counters.Drops != 1 || rp.LastError == "" || rp.Uptime != 0 {
		t.Errorf("after the real router died: counters %+v, peer %+v; want 1 drop, a last error, no uptime", st.Counters, rp)
	}
	t.Logf("real-side peer after its router died: %s, last error %q", rp.State, rp.LastError)

	real = startBIRD(t, rr, "real (restarted)", realConf)
	if d, ok := within(20*time.Second, func() bool {
		return samePrefixes(real.routes(t, "hf4"), "0.0.0.0/0", "198.18.30.1/32")
	}); !ok {
		t.Fatalf("restarted real router has %v after %v, want its routes back", prefixSet(real.routes(t, "hf4")), d)
	} else {
		t.Logf("restarted real router had its routes back after %v", d.Round(time.Millisecond))
	}
	if st := sp.do("status"); st.Counters.Establishments != 3 {
		t.Errorf("counters %+v: want 3 establishments (2, then the restarted router)", st.Counters)
	}
	if !samePrefixes(client.routes(t, "hf4"), "198.18.0.100/32") {
		t.Errorf("client router: %v after the real router's restart", prefixSet(client.routes(t, "hf4")))
	}
}
