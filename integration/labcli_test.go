package integration

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"holdfast/lab"
)

// TestLabCommands drives `holdfast lab up`, `status`, `failover` and `down`
// as a user would, with curl through the VIP in between.
func TestLabCommands(t *testing.T) {
	requireRoot(t)
	bin := holdfastBinary(t)
	if left, _ := lab.List("hflab-"); len(left) > 0 {
		t.Skipf("skipping: a lab made by `holdfast lab up` is running on this machine (%v)", left)
	}
	up := exec.Command(bin, "lab", "up")
	var out strings.Builder
	stdout, err := up.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		up.Process.Kill() // by PID; a no-op once it exited
		up.Wait()
		if left, _ := lab.List("hflab-"); len(left) > 0 {
			exec.Command(bin, "lab", "down").Run()
		}
	})
	// Wait for the banner (its last line names `holdfast lab down`).
	buf := make([]byte, 4096)
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "holdfast lab down") {
		if time.Now().After(deadline) {
			t.Fatalf("lab up printed: %s", out.String())
		}
		n, err := stdout.Read(buf)
		out.Write(buf[:n])
		if err != nil {
			t.Fatalf("lab up: %v\n%s", err, out.String())
		}
	}
	run := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		b, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, b)
		}
		return string(b)
	}
	curl := func() string {
		return run("ip", "netns", "exec", "hflab-client", "curl", "-s", "-m", "5", "http://"+lab.VIP.String()+"/")
	}
	if got := curl(); !strings.HasPrefix(got, "rs") {
		t.Fatalf("curl through the lab: %q", got)
	}
	if st := run(bin, "lab", "status"); !strings.Contains(st, "active director A") || strings.Count(st, "running (pid") != 2 {
		t.Fatalf("lab status:\n%s", st)
	}
	if fo := run(bin, "lab", "failover"); !strings.Contains(fo, "routes moved to B") || !strings.Contains(fo, "active director B") {
		t.Fatalf("lab failover:\n%s", fo)
	}
	if got := curl(); !strings.HasPrefix(got, "rs") {
		t.Fatalf("curl after the failover: %q", got)
	}
	if down := run(bin, "lab", "down"); !strings.Contains(down, "the lab is down") {
		t.Fatalf("lab down:\n%s", down)
	}
	go func() { // drain, so that lab up never blocks on its output
		for {
			if _, err := stdout.Read(buf); err != nil {
				return
			}
		}
	}()
	if err := up.Wait(); err != nil {
		t.Fatalf("lab up exited with %v", err)
	}
	if left, _ := lab.List("hflab-"); len(left) > 0 {
		t.Fatalf("namespaces left: %v", left)
	}
}
