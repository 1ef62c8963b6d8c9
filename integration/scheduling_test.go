package integration

import (
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"holdfast/lab"
)

var vipHTTP = netip.AddrPortFrom(lab.VIP, lab.DefaultHTTPPort)

// realFlags returns --real ADDR:PORT*W for the lab's reals on port, with the
// given weights (none: no weight suffix).
func realFlags(l *lab.Lab, port int, weights ...int) []string {
	var args []string
	for i, r := range l.Reals {
		s := netip.AddrPortFrom(r.Addr, uint16(port)).String()
		if len(weights) > 0 {
			s += fmt.Sprintf("*%d", weights[i])
		}
		args = append(args, "--real", s)
	}
	return args
}

// startLab builds a lab with its backends running.
func startLab(t *testing.T, opts lab.Options) *lab.Lab {
	t.Helper()
	l := NewLab(t, opts)
	if err := l.ServeBackends(); err != nil {
		t.Fatalf("starting the backends: %v", err)
	}
	return l
}

// TestRoundRobin: 600 new connections through the VIP with rr over three
// reals land exactly 200 on each, with recovery on (the default) and off.
func TestRoundRobin(t *testing.T) {
	for _, recovery := range []string{"on", "off"} {
		t.Run("recovery="+recovery, func(t *testing.T) {
			l := startLab(t, lab.Options{Reals: 3})
			d := l.Directors[0]
			args := append([]string{"--recovery=" + recovery, "--service", "tcp:" + vipHTTP.String(), "--scheduler", "rr"},
				realFlags(l, lab.DefaultHTTPPort)...)
			StartDirector(t, d.NS, directorArgs(d, args...)...)

			c := newVIPClient(t, l.Client, false, netip.Addr{})
			got := countReals(t, c, httpURL(vipHTTP, "/"), 600, 8)
			if want := map[string]int{"rs1": 200, "rs2": 200, "rs3": 200}; !maps.Equal(got, want) {
				t.Errorf("requests per real %v, want %v", got, want)
			}
			if n := c.dials.Load(); n != 600 {
				t.Errorf("client dialed %d connections, want 600", n)
			}
			for _, r := range l.Reals {
				if conns, reqs := r.Stats.HTTPConns.Load(), r.Stats.HTTPRequests.Load(); conns != 200 || reqs != 200 {
					t.Errorf("%s accepted %d connections and answered %d requests, want 200 and 200", r.Label, conns, reqs)
				}
			}
		})
	}
}

// checkWeighted requires 600 requests split as the weights 3:2:1, each real
// within ±2% of its share.
func checkWeighted(t *testing.T, got map[string]int) {
	t.Helper()
	want := map[string]int{"rs1": 300, "rs2": 200, "rs3": 100}
	total := 0
	for _, n := range got {
		total += n
	}
	if total != 600 || len(got) != 3 {
		t.Fatalf("requests per real %v: %d in all over %d reals, want 600 over 3", got, total, len(got))
	}
	for real, w := range want {
		if diff := got[real] - w; diff*50 > w || -diff*50 > w {
			t.Errorf("%s answered %d requests, want %d ±2%%", real, got[real], w)
		}
	}
	t.Logf("requests per real: %v", got)
}

// TestWeightedRoundRobin: wrr with weights 3:2:1 given by flags.
func TestWeightedRoundRobin(t *testing.T) {
	l := startLab(t, lab.Options{Reals: 3})
	d := l.Directors[0]
	args := append([]string{"--service", "tcp:" + vipHTTP.String(), "--scheduler", "wrr"}, realFlags(l, lab.DefaultHTTPPort, 3, 2, 1)...)
	StartDirector(t, d.NS, directorArgs(d, args...)...)

	c := newVIPClient(t, l.Client, false, netip.Addr{})
	checkWeighted(t, countReals(t, c, httpURL(vipHTTP, "/"), 600, 8))
}

// TestConfigFile: the same wrr service from a --config file, next to a UDP
// service in the same file, both served.
func TestConfigFile(t *testing.T) {
	l := startLab(t, lab.Options{Reals: 3})
	d := l.Directors[0]
	cfg := filepath.Join(t.TempDir(), "holdfast.json")
	content := `{"services":[
  {"service":"tcp:198.18.100.1:80","scheduler":"wrr","persistence":"","reals":["198.18.10.11:80*3","198.18.10.12:80*2","198.18.10.13:80*1"]},
  {"service":"udp:198.18.100.1:5353","scheduler":"rr","reals":["198.18.10.11:5353","198.18.10.12:5353","198.18.10.13:5353"]}
]}`
	if err := os.WriteFile(cfg, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	StartDirector(t, d.NS, directorArgs(d, "--config", cfg)...)

	c := newVIPClient(t, l.Client, false, netip.Addr{})
	checkWeighted(t, countReals(t, c, httpURL(vipHTTP, "/"), 600, 8))
	udpEcho(t, l, 3, 10)
}

// TestSourceHash: with sh every request from one client address lands on the
// same real; eight client addresses do not all land on one real.
func TestSourceHash(t *testing.T) {
	l := startLab(t, lab.Options{Reals: 3})
	d := l.Directors[0]
	args := append([]string{"--service", "tcp:" + vipHTTP.String(), "--scheduler", "sh"}, realFlags(l, lab.DefaultHTTPPort)...)
	StartDirector(t, d.NS, directorArgs(d, args...)...)

	sources := []netip.Addr{lab.ClientAddr}
	for i := 3; i <= 9; i++ {
		a := netip.AddrFrom4([4]byte{198, 18, 1, byte(i)})
		if _, err := l.Client.IP("addr", "add", netip.PrefixFrom(a, 24).String(), "dev", lab.ClientIface); err != nil {
			t.Fatal(err)
		}
		sources = append(sources, a)
	}
	used := map[string]bool{}
	for _, src := range sources {
		c := newVIPClient(t, l.Client, false, src)
		got := countReals(t, c, httpURL(vipHTTP, "/"), 50, 4)
		reals := slices.Collect(maps.Keys(got))
		if len(reals) != 1 || got[reals[0]] != 50 {
			t.Errorf("from %s: requests per real %v, want all 50 on one real", src, got)
			continue
		}
		used[reals[0]] = true
		t.Logf("%s -> %s", src, reals[0])
	}
	// A hash that ignored the address would send everyone to one real; with
	// three reals and eight sources that happens by chance with p ≈ 0.0005.
	if len(used) < 2 {
		t.Errorf("eight client addresses all landed on %v", slices.Collect(maps.Keys(used)))
	}
}
