package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"holdfast/balancer"
	"holdfast/daemon/adminapi"
	"holdfast/nat"
	"holdfast/stack/tun/tuntest"
)

var realC = netip.MustParseAddrPort("198.18.10.13:8080")

// svc builds a service of vip from a config file's fields.
func svc(t *testing.T, sched, check string, reals ...string) *balancer.Service {
	t.Helper()
	s, err := balancer.ServiceConfig{Service: "tcp:" + vip.String(), Scheduler: sched, Check: check, Reals: reals}.Build()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// running is the Director's view of one service of vip with reals
// ADDR*WEIGHT[,id=N] (a trailing "-": removed, draining).
func running(sched string, reals ...string) []nat.ServiceInfo {
	si := nat.ServiceInfo{Service: "tcp:" + vip.String(), Scheduler: sched}
	for _, r := range reals {
		removed := strings.HasSuffix(r, "-")
		addr, w, id, err := balancer.ParseReal(strings.TrimSuffix(r, "-"))
		if err != nil {
			panic(err)
		}
		si.Reals = append(si.Reals, nat.RealInfo{Addr: addr, Weight: w, Removed: removed, CookieID: id})
	}
	return []nat.ServiceInfo{si}
}

// TestMergeReload: HAProxy's server-state rule, real by real. prev is the
// file's previous version, next its new one, run what runs now.
func TestMergeReload(t *testing.T) {
	a, b, c := realA.String(), realB.String(), realC.String()
	tests := []struct {
		name      string
		prev      *balancer.Service
		next      *balancer.Service
		run       []nat.ServiceInfo
		want      []string // reals applied, ADDR*WEIGHT in order
		wantLines []string
		wantKept  []string
	}{
		{
			name: "same file keeps a runtime weight",
			prev: svc(t, "rr", "", a, b+"*2"), next: svc(t, "rr", "", a, b+"*2"),
			run:      running("rr", a, b+"*0"),
			want:     []string{a + "*1", b + "*0"},
			wantKept: []string{"real " + b + " keeps its runtime weight 0, not the file's 2 (a runtime change the file did not change)"},
		},
		{
			name: "the file changed the real: the file's weight",
			prev: svc(t, "rr", "", a, b+"*2"), next: svc(t, "rr", "", a, b+"*3"),
			run:       running("rr", a, b+"*0"),
			want:      []string{a + "*1", b + "*3"},
			wantLines: []string{"real " + b + " weight 0 -> 3 (reload)"},
		},
		{
			name: "same file keeps a runtime add and a runtime remove",
			prev: svc(t, "rr", "", a, b), next: svc(t, "rr", "", a, b),
			run:  running("rr", a, b+"*0-", c+"*4"),
			want: []string{a + "*1", c + "*4"},
			wantKept: []string{
				"real " + b + " stays removed (a runtime change the file did not change)",
				"real " + c + " stays with weight 4 (added at runtime; the file never listed it)",
			},
		},
		{
			name: "a real removed at runtime and changed by the file comes back",
			prev: svc(t, "rr", "", a, b), next: svc(t, "rr", "", a, b+"*5"),
			run:       running("rr", a),
			want:      []string{a + "*1", b + "*5"},
			wantLines: []string{"real " + b + " added with weight 5 (reload)"},
		},
		{
			name: "the file drops a real and adds one; scheduler and check from the file",
			prev: svc(t, "rr", "", a, b), next: svc(t, "wrr", "tcp", a, c+"*2"),
			run:  running("rr", a, b),
			want: []string{a + "*1", c + "*2"},
			wantLines: []string{
				"service tcp:" + vip.String() + " scheduler rr -> wrr (reload)",
				"service tcp:" + vip.String() + " check none -> tcp (reload)",
				"real " + c + " added with weight 2 (reload)",
				"real " + b + " removed (reload)",
			},
		},
		{
			name: "a cookie id given is a change of the real",
			prev: svc(t, "rr", "", a, b), next: svc(t, "rr", "", a, b+",id=3"),
			run:  running("rr", a, b+"*0"),
			want: []string{a + "*1", b + "*1"},
			wantLines: []string{
				"real " + b + " weight 0 -> 1 (reload)",
			},
		},
		{
			name: "a live real keeps its cookie id, and says so",
			prev: svc(t, "rr", "", a, b+",id=3"), next: svc(t, "rr", "", a, b+",id=5"),
			run:  running("rr", a, b+",id=3"),
			want: []string{a + "*1", b + "*1"},
			wantKept: []string{
				"real " + b + " keeps cookie id 3, not the file's 5 (its flows' cookies carry it: remove the real, let its flows end, then add it with the new id)",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			apply, lines := mergeReload(fileStateOf([]*balancer.Service{tc.prev}), []*balancer.Service{tc.next}, tc.run)
			if len(apply) != 1 {
				t.Fatalf("applied %d services, want 1", len(apply))
			}
			var got []string
			for _, r := range apply[0].Reals {
				got = append(got, fmt.Sprintf("%s*%d", r.Addr, r.Weight))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("reals %v, want %v", got, tc.want)
			}
			var changed, kept []string
			for _, l := range lines {
				if l.kept {
					kept = append(kept, l.msg)
				} else {
					changed = append(changed, l.msg)
				}
			}
			if !slices.Equal(changed, tc.wantLines) {
				t.Errorf("lines %q\nwant %q", changed, tc.wantLines)
			}
			if !slices.Equal(kept, tc.wantKept) {
				t.Errorf("kept %q\nwant %q", kept, tc.wantKept)
			}
		})
	}
}

// TestMergeReloadServices: a service new to the file is applied as given,
// one the file drops is logged as removed.
func TestMergeReloadServices(t *testing.T) {
	other, err := balancer.ServiceConfig{Service: "udp:198.18.100.1:53", Reals: []string{"198.18.10.11:53"}}.Build()
	if err != nil {
		t.Fatal(err)
	}
	prev := []*balancer.Service{svc(t, "rr", "", realA.String())}
	apply, lines := mergeReload(fileStateOf(prev), []*balancer.Service{other}, running("rr", realA.String()))
	if len(apply) != 1 || apply[0] != other {
		t.Fatalf("applied %v, want the new service as given", apply)
	}
	var got []string
	for _, l := range lines {
		got = append(got, l.msg)
	}
	want := []string{"service udp:198.18.100.1:53 added (reload)", "service tcp:" + vip.String() + " removed (reload)"}
	if !slices.Equal(got, want) {
		t.Errorf("lines %q, want %q", got, want)
	}
}

// TestReloadKeepsRuntimeChanges: through Run and SIGHUP. A real set to
// weight 0 at runtime stays at 0 on a HUP with the same file, and a HUP
// whose source has nothing to reload (no --config) changes nothing and
// says so; a file that changes the real puts its weight back, logged.
func TestReloadKeepsRuntimeChanges(t *testing.T) {
	cfg := testConfig(t, tuntest.NewMemDevice("mem0", 1), 1)
	cfg.HandleSignals = true
	type answer struct {
		svcs []*balancer.Service
		err  error
	}
	next := make(chan answer, 1)
	cfg.Reload = func() ([]*balancer.Service, error) { a := <-next; return a.svcs, a.err }
	td := startDaemon(t, cfg)
	hup := func(msg string) map[string]any {
		t.Helper()
		n := len(td.log.lines(t, msg))
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		return td.log.wait(t, msg, n+1)
	}
	weights := func() map[netip.AddrPort]int {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		svcs, err := td.admin.Services(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out := make(map[netip.AddrPort]int)
		for _, r := range svcs[0].Reals {
			if !r.Removed {
				out[r.Addr] = r.Weight
			}
		}
		return out
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := td.admin.ChangeReal(ctx, adminapi.RealChange{Op: "weight", Service: "tcp:" + vip.String(), Real: realB.String(), Weight: 0}); err != nil {
		t.Fatal(err)
	}

	next <- answer{err: fmt.Errorf("no --config; %w", ErrNothingToReload)}
	hup("reload: no --config; nothing to reload")
	if w := weights(); w[realB] != 0 || w[realA] != 1 {
		t.Fatalf("weights after a HUP with nothing to reload: %v", w)
	}

	next <- answer{svcs: testServices(t)} // the file as at start
	line := hup("reloaded")
	if w := weights(); w[realB] != 0 || w[realA] != 1 {
		t.Fatalf("weights after a HUP with the same file: %v, want %s at 0", w, realB)
	}
	if line["changes"] != 0.0 {
		t.Errorf("reloaded line %v, want 0 changes", line)
	}
	td.log.wait(t, "real "+realB.String()+" keeps its runtime weight 0, not the file's 1 (a runtime change the file did not change)", 1)

	next <- answer{svcs: []*balancer.Service{svc(t, "rr", "", realA.String(), realB.String()+"*2")}}
	hup("reloaded")
	if w := weights(); w[realB] != 2 {
		t.Fatalf("weights after a file that changed %s: %v, want 2", realB, w)
	}
	l := td.log.wait(t, "real "+realB.String()+" weight 0 -> 2 (reload)", 1)
	if l["real"] != realB.String() || l["service"] != "tcp:"+vip.String() {
		t.Errorf("weight line %v", l)
	}

	next <- answer{err: errors.New("broken file")}
	hup("reload rejected; the running configuration stays")
	if w := weights(); w[realB] != 2 {
		t.Fatalf("weights after a rejected reload: %v", w)
	}

	// An IPv6 service, and every recovery address is IPv4: rejected
	// before the Director sees it.
	v6, err := balancer.ServiceConfig{Service: "tcp:[2001:2::10]:80", Reals: []string{"[2001:2:0:20::11]:80"}}.Build()
	if err != nil {
		t.Fatal(err)
	}
	next <- answer{svcs: []*balancer.Service{svc(t, "rr", "", realA.String(), realB.String()+"*2"), v6}}
	l = hup("reload rejected; the running configuration stays")
	if e, _ := l["error"].(string); !strings.Contains(e, "service tcp:[2001:2::10]:80 is IPv6 and every recovery address is IPv4") {
		t.Errorf("rejected reload line %v", l)
	}
}
