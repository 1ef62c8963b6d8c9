package integration

import (
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"testing"
	"time"

	"holdfast/lab"
)

// TestLabTopology checks the harness on its own, without a director: the
// namespaces, links, addresses and routes of DESIGN.md section 5, Flip, and
// that Close removes everything and kills what was started.
func TestLabTopology(t *testing.T) {
	goroutines := runtime.NumGoroutine()
	l := NewLab(t, lab.Options{Directors: 2, Reals: 3})

	names, err := lab.List(l.Prefix)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, role := range []string{"client", "router", "switch", "dirA", "dirB", "rs1", "rs2", "rs3"} {
		want = append(want, l.Prefix+role)
	}
	slices.Sort(names)
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Fatalf("namespaces %v, want %v", names, want)
	}

	// Client to router, and through the router to both directors' uplinks
	// (which needs the router's forwarding and the directors' default routes).
	for _, dst := range []string{"198.18.1.1", "198.18.2.2", "198.18.3.2"} {
		if out, err := runIn(l.Client, 10*time.Second, "ping", "-c", "1", "-W", "2", dst); err != nil {
			t.Errorf("ping %s from the client: %v\n%s", dst, err, out)
		}
	}

	// Each director reaches each real across the bridge: an HTTP request to
	// the real's backend, made inside the director's namespace.
	if err := l.ServeBackends(); err != nil {
		t.Fatal(err)
	}
	for _, d := range l.Directors {
		c := newVIPClient(t, d.NS, false, d.RSAddr.Addr())
		for _, r := range l.Reals {
			got, err := c.getReal(httpURL(netip.AddrPortFrom(r.Addr, lab.DefaultHTTPPort), "/"))
			if err != nil || got != r.Label {
				t.Errorf("director %s to %s: got %q, %v", d.Label, r.Label, got, err)
			}
		}
	}
	for _, r := range l.Reals {
		if got := r.Stats.HTTPRequests.Load(); got != 2 {
			t.Errorf("%s answered %d requests, want 2 (one per director)", r.Label, got)
		}
	}

	if v, err := l.Router.Sysctl("net.ipv4.ip_forward"); err != nil || v != "1" {
		t.Errorf("router ip_forward = %q, %v; want 1", v, err)
	}
	if v, err := l.Client.Sysctl("net.ipv4.ip_forward"); err != nil || v != "0" {
		t.Errorf("client ip_forward = %q, %v; want 0 (the sysctl must be per namespace)", v, err)
	}

	// Flip moves the VIP route and the reals' gateway, and back.
	for _, i := range []int{0, 1, 0} {
		if i != 0 || l.Active() != l.Directors[0] {
			if err := l.Flip(i); err != nil {
				t.Fatal(err)
			}
		}
		d := l.Directors[i]
		if l.Active() != d {
			t.Errorf("Active() = %s after Flip(%d)", l.Active().Label, i)
		}
		wantVIP := fmt.Sprintf("via %s dev d%s0", d.Uplink.Addr(), d.Label)
		if out, err := l.Router.IP("route", "get", lab.VIP.String()); err != nil || !strings.Contains(out, wantVIP) {
			t.Errorf("router: route to the VIP with director %s active: %q, %v; want %q", d.Label, out, err, wantVIP)
		}
		wantGW := fmt.Sprintf("via %s dev %s", d.RSAddr.Addr(), lab.RealIface)
		for _, r := range l.Reals {
			if out, err := r.IP("route", "get", lab.ClientAddr.String()); err != nil || !strings.Contains(out, wantGW) {
				t.Errorf("%s: route to the client with director %s active: %q, %v; want %q", r.Label, d.Label, out, err, wantGW)
			}
		}
	}
	if err := l.Flip(2); err == nil {
		t.Error("Flip(2) with two directors succeeded")
	}

	p, err := l.Client.Start("sleep", "sleep", "600")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-p.Done():
	default:
		t.Errorf("sleep (pid %d) still running after Close", p.PID())
	}
	if left, err := lab.List(l.Prefix); err != nil || len(left) != 0 {
		t.Errorf("after Close: namespaces %v, %v; want none", left, err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	// The backends' and the processes' goroutines end with Close (client
	// connections close asynchronously, hence the deadline).
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > goroutines; {
		if time.Now().After(deadline) {
			var dump strings.Builder
			pprof.Lookup("goroutine").WriteTo(&dump, 1)
			t.Errorf("%d goroutines 5s after Close, %d before the lab:\n%s", runtime.NumGoroutine(), goroutines, dump.String())
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := l.Client.Start("sleep", "sleep", "600"); err == nil {
		t.Error("Start after Close succeeded")
	}
}

// TestLabLinkMTU checks the option the PMTU test relies on: only the
// router-director links are narrow, and the router says so with
// "fragmentation needed" (what the client's path-MTU discovery uses).
func TestLabLinkMTU(t *testing.T) {
	l := NewLab(t, lab.Options{DirectorLinkMTU: 1400})
	d := l.Directors[0]
	for _, c := range []struct {
		ns    *lab.NS
		iface string
		mtu   int
	}{
		{l.Client, lab.ClientIface, 1500},
		{l.Router, "cl0", 1500},
		{l.Router, "dA0", 1400},
		{d.NS, lab.DirectorUplink, 1400},
		{d.NS, lab.DirectorRSIface, 1500},
		{l.Reals[0].NS, lab.RealIface, 1500},
	} {
		out, err := c.ns.IP("-o", "link", "show", c.iface)
		if want := fmt.Sprintf(" mtu %d ", c.mtu); err != nil || !strings.Contains(out, want) {
			t.Errorf("%s %s: %q, %v; want%s", c.ns.Role, c.iface, out, err, want)
		}
	}
	// 1372 bytes of ICMP payload + 28 of headers = 1400: fits; 1373 does not.
	if out, err := runIn(l.Client, 10*time.Second, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1372", "198.18.2.2"); err != nil {
		t.Errorf("1400-byte ping to director A: %v\n%s", err, out)
	}
	out, err := runIn(l.Client, 10*time.Second, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1373", "198.18.2.2")
	if err == nil || !strings.Contains(out, "mtu = 1400") {
		t.Errorf("1401-byte ping with DF to director A: err %v, output %q; want a failure reporting mtu = 1400", err, out)
	}
}

// TestLabPartialBuildFailure makes New fail half-way (a namespace name it
// needs is taken) and checks it removes what it had built.
func TestLabPartialBuildFailure(t *testing.T) {
	requireRoot(t)
	prefix := fmt.Sprintf("hfpart%d-", os.Getpid())
	taken := prefix + "rs2"
	if out, err := runHost("ip", "netns", "add", taken); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", taken, err, out)
	}
	t.Cleanup(func() {
		if out, err := runHost("ip", "netns", "delete", taken); err != nil {
			t.Errorf("ip netns delete %s: %v\n%s", taken, err, out)
		}
	})
	l, err := lab.New(lab.Options{Prefix: prefix, Reals: 3})
	if err == nil {
		l.Close()
		t.Fatal("New succeeded with its rs2 namespace name taken")
	}
	if !strings.Contains(err.Error(), taken) {
		t.Errorf("New error %q does not name %s", err, taken)
	}
	if left, err := lab.List(prefix); err != nil || !slices.Equal(left, []string{taken}) {
		t.Errorf("after the failed New: namespaces %v, %v; want only %s", left, err, taken)
	}
}
