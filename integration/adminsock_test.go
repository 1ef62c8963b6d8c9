package integration

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"holdfast/lab"
)

// withoutAdminSocket is directorArgs without its --admin-socket: the
// director takes the default socket, as a user's would.
func withoutAdminSocket(d *lab.Director, args ...string) []string {
	a := directorArgs(d, args...)
	i := slices.Index(a, "--admin-socket")
	return slices.Delete(a, i, i+2)
}

// routing is what a director installs in its namespace: rules and routes
// of every table.
func routing(t *testing.T, d *lab.Director) string {
	t.Helper()
	rules, err := d.IP("rule", "show")
	if err != nil {
		t.Fatal(err)
	}
	routes, err := d.IP("route", "show", "table", "all")
	if err != nil {
		t.Fatal(err)
	}
	return rules + routes
}

// TestDefaultAdminSocketPerNetNS (issue 14, item 3): two directors in two
// network namespaces with the same --tun and no --admin-socket both start,
// and `holdfast conns`, `service list` and `stats` run inside each
// namespace answer for that namespace's director, saying so first (its
// pid). A second director in a namespace whose default socket is taken
// exits with one line, having installed nothing, and the first serves on.
func TestDefaultAdminSocketPerNetNS(t *testing.T) {
	l := NewLab(t, lab.Options{Directors: 2, Reals: 1})
	if err := l.ServeBackends(); err != nil {
		t.Fatal(err)
	}
	svc := append([]string{"--service", "tcp:" + vipHTTP.String(), "--scheduler", "rr"}, realFlags(l, lab.DefaultHTTPPort)...)
	bin := holdfastBinary(t)
	procs := make([]*lab.Proc, len(l.Directors))
	for i, d := range l.Directors {
		procs[i] = StartDirector(t, d.NS, withoutAdminSocket(d, svc...)...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i, d := range l.Directors {
		head := fmt.Sprintf("director %d  pid %d  tun hf0  netns %s (", d.ID, procs[i].PID(), d.Name)
		for _, args := range [][]string{{"conns"}, {"service", "list"}} {
			out, err := d.Run(ctx, append([]string{bin}, append(args, "--tun", "hf0")...)...)
			if err != nil || !strings.HasPrefix(string(out), head) {
				t.Fatalf("holdfast %v in %s: %v\n%s\nwant a first line starting %q", args, d.Name, err, out, head)
			}
			t.Logf("holdfast %v in %s: %s", args, d.Name, strings.SplitN(string(out), "\n", 2)[0])
		}
		out, err := d.Run(ctx, bin, "stats", "--json", "--tun", "hf0")
		if want := fmt.Sprintf(`"pid": %d,`, procs[i].PID()); err != nil || !strings.Contains(string(out), want) {
			t.Fatalf("holdfast stats in %s: %v\n%s\nwant %s in its director field", d.Name, err, out, want)
		}
	}

	// A second director in A's namespace: same TUN, same default socket.
	a := l.Directors[0]
	before := routing(t, a)
	out, err := a.Run(ctx, append([]string{bin}, withoutAdminSocket(a, svc...)...)...)
	var ee *exec.ExitError
	want := "holdfast: --admin-socket @holdfast/hf0: another holdfast is listening there (use another --tun or --admin-socket)\n"
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || string(out) != want {
		t.Fatalf("a second director in %s: %v, output:\n%s\nwant exit 1 and only %q", a.Name, err, out, want)
	}
	if after := routing(t, a); after != before {
		t.Fatalf("the refused director changed the routing of %s:\nbefore:\n%s\nafter:\n%s", a.Name, before, after)
	}
	out, err = a.Run(ctx, bin, "conns", "--tun", "hf0")
	if head := fmt.Sprintf("director %d  pid %d  ", a.ID, procs[0].PID()); err != nil || !strings.HasPrefix(string(out), head) {
		t.Fatalf("holdfast conns in %s after the refused start: %v\n%s", a.Name, err, out)
	}
}
