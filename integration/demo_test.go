package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"holdfast/lab"
)

// TestDemo runs `holdfast lab demo --json` as a user would (make demo) and
// checks the promise: within 60 s, no failed request and no reset
// connection with holdfast, and some without recovery.
func TestDemo(t *testing.T) {
	testDemo(t, ipv4)
}

// TestDemoIPv6 is TestDemo with --ipv6: the load goes to [VIP6]:80
// through a dual-stack lab and directors (issue 15).
func TestDemoIPv6(t *testing.T) {
	testDemo(t, ipv6)
}

func testDemo(t *testing.T, f family) {
	requireRoot(t)
	var args []string
	if f.ipv6 {
		args = append(args, "--ipv6")
	}
	runs, took := runDemo(t, 2*time.Minute, args...)
	t.Logf("demo took %v: %+v", took.Round(time.Millisecond), runs)
	hf, off := runs[0], runs[1]
	for _, r := range runs {
		if r.VIP != f.vip().String() {
			t.Errorf("%s run: the load went to %q, want %v", r.Mode, r.VIP, f.vip())
		}
	}
	if hf.RequestsFailed != 0 || hf.ConnectionsReset != 0 || hf.NewConnections != 0 || hf.RequestsOK == 0 {
		t.Errorf("holdfast: %d failed, %d reset, %d new connections, %d ok; want 0, 0, 0 and some",
			hf.RequestsFailed, hf.ConnectionsReset, hf.NewConnections, hf.RequestsOK)
	}
	if hf.Steered+hf.Recoveries+hf.Adoptions < hf.Connections {
		t.Errorf("holdfast: %d steered + %d recoveries + %d adoptions for %d connections moved twice", hf.Steered, hf.Recoveries, hf.Adoptions, hf.Connections)
	}
	if off.ConnectionsReset == 0 {
		t.Errorf("recovery off: no connection reset: the demo shows nothing")
	}
	if took > 60*time.Second {
		t.Errorf("the demo took %v, over 60 s", took)
	}
}

// runDemo runs `holdfast lab demo --json` with args, within timeout, and
// returns its two runs (holdfast, then --recovery=off: anything else fails
// t) and how long it took; it fails t if the demo left a namespace.
func runDemo(t *testing.T, timeout time.Duration, args ...string) ([]lab.DemoResult, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, holdfastBinary(t), append([]string{"lab", "demo", "--json"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	took := time.Since(start)
	if err != nil {
		t.Fatalf("holdfast lab demo %s: %v\n%s\n%s", strings.Join(args, " "), err, out, tail(stderr.String(), 20))
	}
	// The demo's labs are named after its process: hf<pid>-<n>-.
	if left, _ := lab.List(fmt.Sprintf("hf%d-", cmd.Process.Pid)); len(left) > 0 {
		t.Errorf("namespaces left behind: %v", left)
	}
	var res struct {
		Runs []lab.DemoResult `json:"runs"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("demo output %q: %v", out, err)
	}
	if len(res.Runs) != 2 || res.Runs[0].Mode != "holdfast" || res.Runs[1].Mode != "recovery off" {
		t.Fatalf("runs %+v", res.Runs)
	}
	t.Logf("the demo took %v", took.Round(100*time.Millisecond))
	return res.Runs, took
}

// logDemoRun logs what one run of the demo counted.
func logDemoRun(t *testing.T, r lab.DemoResult) {
	t.Helper()
	t.Logf("%s (%s): %d connections, %d ok, %d failed, %d reset, %d new, longest stall %v, %d steered, %d recovered, %d adopted",
		r.Mode, r.Routing, r.Connections, r.RequestsOK, r.RequestsFailed, r.ConnectionsReset, r.NewConnections,
		r.LongestStall.Round(time.Millisecond), r.Steered, r.Recoveries, r.Adoptions)
}
