package integration

import (
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"holdfast/lab"
)

// TestHUPKeepsMaintenance: a real put in maintenance (real weight
// --weight 0) stays there across a HUP of a director run from flags, which
// has nothing to reload and says so; its new flows keep avoiding it, and
// holdfast service dump prints the weight 0 in a --config file.
func TestHUPKeepsMaintenance(t *testing.T) {
	l, dir := opsLab(t, func(l *lab.Lab) []string {
		return append([]string{"--service", "tcp:" + vipHTTP.String(), "--scheduler", "rr"}, realFlags(l, lab.DefaultHTTPPort)...)
	})
	rs1 := netip.AddrPortFrom(l.Reals[0].Addr, lab.DefaultHTTPPort).String()
	if out, err := ctl(t, l, "real", "weight", "--service", "tcp:"+vipHTTP.String(), "--real", rs1, "--weight", "0"); err != nil {
		t.Fatalf("real weight: %v\n%s", err, out)
	}
	before := len(dir.Lines())
	if err := dir.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n := 0
	if _, err := dir.WaitForLine(ctx, func(line lab.Line) bool {
		n++
		return n > before && strings.Contains(line.Text, "reload: no --config; nothing to reload")
	}); err != nil {
		t.Fatalf("waiting for the no-op reload line: %v", err)
	}
	var svcs []struct {
		Reals []struct {
			Addr   string
			Weight int
		}
	}
	ctlJSON(t, l, &svcs, "service", "list")
	for _, r := range svcs[0].Reals {
		if r.Addr == rs1 && r.Weight != 0 {
			t.Fatalf("%s has weight %d after the HUP, want 0 (maintenance)", rs1, r.Weight)
		}
	}
	c := newVIPClient(t, l.Client, false, netip.Addr{})
	if counts := countReals(t, c, httpURL(vipHTTP, "/"), 30, 3); counts[l.Reals[0].Label] != 0 {
		t.Fatalf("after the HUP, new flows reach the real in maintenance: %v", counts)
	}

	out, err := ctl(t, l, "service", "dump")
	if err != nil {
		t.Fatalf("service dump: %v\n%s", err, out)
	}
	var file struct {
		Services []struct {
			Service string   `json:"service"`
			Reals   []string `json:"reals"`
		} `json:"services"`
	}
	if err := json.Unmarshal([]byte(out), &file); err != nil || len(file.Services) != 1 || len(file.Services[0].Reals) != 3 ||
		!strings.HasPrefix(file.Services[0].Reals[0], rs1+"*0,id=") {
		t.Fatalf("service dump: %v\n%s", err, out)
	}
}
