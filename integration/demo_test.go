package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
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
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	args := []string{"lab", "demo", "--json"}
	if f.ipv6 {
		args = append(args, "--ipv6")
	}
	cmd := exec.CommandContext(ctx, holdfastBinary(t), args...)
	out, err := cmd.Output()
	took := time.Since(start)
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("holdfast lab demo: %v\n%s\n%s", err, out, stderr)
	}
	var res struct {
		Seconds float64          `json:"seconds"`
		Runs    []lab.DemoResult `json:"runs"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("demo output %q: %v", out, err)
	}
	t.Logf("demo took %v: %+v", took.Round(time.Millisecond), res.Runs)
	if len(res.Runs) != 2 || res.Runs[0].Mode != "holdfast" || res.Runs[1].Mode != "recovery off" {
		t.Fatalf("runs %+v", res.Runs)
	}
	hf, off := res.Runs[0], res.Runs[1]
	for _, r := range res.Runs {
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
	// The demo's labs are named after its process: hf<pid>-<n>-.
	if left, _ := lab.List(fmt.Sprintf("hf%d-", cmd.Process.Pid)); len(left) > 0 {
		t.Errorf("namespaces left behind: %v", left)
	}
}
