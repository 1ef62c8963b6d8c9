package integration

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"holdfast/lab"
)

// TestLabTopologyIPv6 checks the dual-stack lab on its own, without a
// director (issue 15): every link has its IPv6 mirror, usable at once
// (nodad), the router forwards IPv6, each director reaches each real's
// backend over both families, and Flip moves the IPv6 routes with the IPv4
// ones.
func TestLabTopologyIPv6(t *testing.T) {
	l := NewLab(t, lab.Options{Directors: 2, Reals: 3, IPv6: true})
	if err := l.ServeBackends(); err != nil {
		t.Fatal(err)
	}
	// Through the router to both directors' uplinks: the router's IPv6
	// forwarding and the directors' IPv6 default routes.
	for _, dst := range []netip.Addr{lab.ClientGateway6, l.Directors[0].Uplink6.Addr(), l.Directors[1].Uplink6.Addr()} {
		if out, err := runIn(l.Client, 10*time.Second, "ping", "-6", "-c", "1", "-W", "2", dst.String()); err != nil {
			t.Errorf("ping -6 %s from the client: %v\n%s", dst, err, out)
		}
	}
	// No address is tentative (duplicate address detection off).
	for _, n := range l.Namespaces() {
		if out, err := n.IP("-6", "addr", "show", "tentative"); err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("%s: tentative IPv6 addresses: %q, %v", n.Role, out, err)
		}
	}
	for _, d := range l.Directors {
		for _, f := range bothFamilies {
			local := d.RSAddr.Addr()
			if f.ipv6 {
				local = d.RSAddr6.Addr()
			}
			c := newVIPClient(t, d.NS, false, local)
			for _, r := range l.Reals {
				got, err := c.getReal(httpURL(netip.AddrPortFrom(f.addr(r), lab.DefaultHTTPPort), "/"))
				if err != nil || got != r.Label {
					t.Errorf("director %s to %s over %v: got %q, %v", d.Label, r.Label, f, got, err)
				}
			}
		}
	}
	for _, r := range l.Reals {
		if got := r.Stats.HTTPRequests.Load(); got != 4 {
			t.Errorf("%s answered %d requests, want 4 (one per director and family)", r.Label, got)
		}
	}
	if v, err := l.Router.Sysctl("net.ipv6.conf.all.forwarding"); err != nil || v != "1" {
		t.Errorf("router IPv6 forwarding = %q, %v; want 1", v, err)
	}
	for _, i := range []int{1, 0} {
		if err := l.Flip(i); err != nil {
			t.Fatal(err)
		}
		d := l.Directors[i]
		wantVIP := fmt.Sprintf("via %s dev d%s0", d.Uplink6.Addr(), d.Label)
		if out, err := l.Router.IP("-6", "route", "get", lab.VIP6.String()); err != nil || !strings.Contains(out, wantVIP) {
			t.Errorf("router: route to the IPv6 VIP with director %s active: %q, %v; want %q", d.Label, out, err, wantVIP)
		}
		wantGW := fmt.Sprintf("via %s dev %s", d.RSAddr6.Addr(), lab.RealIface)
		for _, r := range l.Reals {
			if out, err := r.IP("-6", "route", "get", lab.ClientAddr6.String()); err != nil || !strings.Contains(out, wantGW) {
				t.Errorf("%s: IPv6 route to the client with director %s active: %q, %v; want %q", r.Label, d.Label, out, err, wantGW)
			}
		}
	}
}

// TestLabRealHop checks the topology of the PMTU tests' router hop, in both
// families: the reals sit behind two routers joined by a 1400-byte link
// that neither the directors nor the reals sit on; a director reaches each
// real through it, Flip moves the near router's default route, and a
// director's 1500-byte packet with DF draws the near router's "too big"
// naming 1400.
func TestLabRealHop(t *testing.T) {
	l := NewLab(t, lab.Options{Directors: 2, Reals: 2, IPv6: true, RealHopMTU: 1400})
	if err := l.ServeBackends(); err != nil {
		t.Fatal(err)
	}
	d := l.Directors[0]
	for _, f := range bothFamilies {
		c := newVIPClient(t, d.NS, false, netip.Addr{})
		for _, r := range l.Reals {
			got, err := c.getReal(httpURL(netip.AddrPortFrom(f.addr(r), lab.DefaultHTTPPort), "/"))
			if err != nil || got != r.Label {
				t.Errorf("director A to %s over %v: got %q, %v", r.Label, f, got, err)
			}
		}
		r := l.Reals[0]
		if out, err := r.IP("link", "show", lab.RealIface); err != nil || !strings.Contains(out, " mtu 1500 ") {
			t.Errorf("%s %s: %q, %v; want mtu 1500 (the real does not sit on the narrow link)", r.Label, lab.RealIface, out, err)
		}
		// ping -s: 1452 bytes of payload + 48 of headers (IPv6 + ICMPv6),
		// or 1472 + 28, make 1500.
		size, flag := "1472", "-4"
		if f.ipv6 {
			size, flag = "1452", "-6"
		}
		out, err := runIn(d.NS, 10*time.Second, "ping", flag, "-c", "1", "-W", "2", "-M", "do", "-s", size, f.addr(r).String())
		if err == nil || !strings.Contains(out, "mtu = 1400") && !strings.Contains(out, "mtu=1400") {
			t.Errorf("1500-byte ping %s with DF from director A to %s: err %v, output %q; want a failure reporting mtu 1400", flag, r.Label, err, out)
		}
	}
	for _, i := range []int{1, 0} {
		if err := l.Flip(i); err != nil {
			t.Fatal(err)
		}
		for _, f := range bothFamilies {
			// The far router's way back to the client goes through the
			// near one, whose default route is the active director.
			dst, want := lab.ClientAddr.String(), "via "+l.Directors[i].RSAddr.Addr().String()
			if f.ipv6 {
				dst, want = lab.ClientAddr6.String(), "via "+l.Directors[i].RSAddr6.Addr().String()
			}
			out, err := nsRole(t, l, "hop1").IP("route", "get", dst)
			if err != nil || !strings.Contains(out, want) {
				t.Errorf("hop1: route to the client over %v with director %s active: %q, %v; want %q", f, l.Directors[i].Label, out, err, want)
			}
		}
	}
}

// nsRole is the lab's namespace of the given role, or fails t.
func nsRole(t *testing.T, l *lab.Lab, role string) *lab.NS {
	t.Helper()
	for _, n := range l.Namespaces() {
		if n.Role == role {
			return n
		}
	}
	t.Fatalf("the lab has no %s namespace", role)
	return nil
}

// TestLabUpIPv6: as root, `lab up --ipv6` builds a dual-stack lab whose
// directors serve both families: the banner shows the IPv6 addresses and a
// curl of the IPv6 VIP, `lab status --json` lists the four services, an
// HTTP connection and a UDP flow to the IPv6 VIP are answered, the HTTP
// connection survives `lab failover`, and `lab down` removes everything.
func TestLabUpIPv6(t *testing.T) {
	requireRoot(t)
	bin := holdfastBinary(t)
	u := rootLabUp(t, bin, "--ipv6")
	if line := u.bannerLine(t, "addresses in"); !strings.Contains(line, "2001:2::/48") {
		t.Errorf("banner's first line: %q, want it to name 2001:2::/48", line)
	}
	if line := u.bannerLine(t, "VIP "); !strings.Contains(line, lab.VIP6.String()) {
		t.Errorf("banner's VIP line: %q, want %v in it", line, lab.VIP6)
	}
	// The banner's own IPv6 curl, as a user would paste it.
	curl := strings.Fields(u.bannerLine(t, "curl -s http://["))
	if r := runCmd(t, exec.Command(curl[0], curl[1:]...)); r.code != 0 || !strings.HasPrefix(r.stdout, "rs") {
		t.Errorf("%v: exit %d, stdout %q, stderr %q; want a real's name", curl, r.code, r.stdout, r.stderr)
	}

	st := parseLabStatus(t, runCmd(t, exec.Command(bin, "lab", "status", "--json")))
	want := []string{"tcp:" + vipHTTP.String(), "udp:198.18.100.1:5353", "tcp:" + ipv6.vip().String(), "udp:[2001:2:0:100::1]:5353"}
	if strings.Join(st.Services, " ") != strings.Join(want, " ") {
		t.Errorf("lab status --json: services %v, want %v", st.Services, want)
	}

	client := &lab.NS{Name: lab.SupervisedPrefix + "client"}
	conns := dialVIP(t, client, ipv6.vip(), 1)
	before, _, _, err := conns[0].get("/")
	if err != nil {
		t.Fatalf("HTTP to %v: %v", ipv6.vip(), err)
	}
	uc, err := client.Dial("udp6", netip.AddrPortFrom(lab.VIP6, lab.DefaultUDPPort).String())
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	uc.SetDeadline(time.Now().Add(10 * time.Second))
	resp := make([]byte, 64)
	if _, err := uc.Write([]byte("echo me")); err != nil {
		t.Fatal(err)
	}
	if n, err := uc.Read(resp); err != nil || string(resp[:n]) != "echo me" {
		t.Fatalf("UDP echo through the IPv6 VIP: %q, %v", resp[:n], err)
	}
	if r := runCmd(t, exec.Command(bin, "lab", "failover")); r.code != 0 {
		t.Fatalf("lab failover: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	after, _, _, err := conns[0].get("/")
	if err != nil || after != before {
		t.Errorf("the IPv6 connection after lab failover: answered by %q (%v), before by %q; want the same real", after, err, before)
	}
	if r := runCmd(t, exec.Command(bin, "lab", "down")); r.code != 0 || r.stdout != "the lab is down\n" {
		t.Fatalf("lab down: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if err := u.wait(t); err != nil {
		t.Fatalf("holdfast lab up exited with %v\nstderr:\n%s", err, tail(u.stderr.String(), 20))
	}
	if left, _ := lab.List(lab.SupervisedPrefix); len(left) > 0 {
		t.Fatalf("namespaces left: %v", left)
	}
}
