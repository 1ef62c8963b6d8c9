package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"holdfast/lab"
)

// Issue 14 item 9: `holdfast lab up` as a user drives it from another
// terminal: status (and --json, with keepalived's MASTER/BACKUP and the
// flows held now per real), logs of a director, the UDP echo the banner
// advertises on the VIP.

// labUp is a running `holdfast lab up`: its banner, and its stdout and
// stderr as they come.
type labUp struct {
	cmd    *exec.Cmd
	banner []string
	stderr *bytes.Buffer
	exited chan error // gets cmd.Wait's result
}

// startLabUp starts cmd, a `holdfast lab up` whose Stdout is unset, and
// returns once its banner is out (the line naming `holdfast lab down` ends
// it), or fails t if it exits first or is not up within 60 s. The caller
// arranges the cleanup (the process must go before the test ends).
func startLabUp(t *testing.T, cmd *exec.Cmd, stderr *bytes.Buffer) *labUp {
	t.Helper()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	u := &labUp{cmd: cmd, stderr: stderr, exited: make(chan error, 1)}
	lines := make(chan string)
	go func() { // reads until lab up closes its stdout, then reaps it
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		u.exited <- cmd.Wait()
	}()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				err := <-u.exited
				u.exited <- err
				skipIfRefused(t, stderr.String())
				t.Fatalf("holdfast lab up exited (%v) before its banner:\n%s\nstderr:\n%s", err, strings.Join(u.banner, "\n"), tail(stderr.String(), 30))
			}
			u.banner = append(u.banner, line)
			if strings.Contains(line, "holdfast lab down") {
				go func() { // the rest of stdout, so that lab up never blocks
					for range lines {
					}
				}()
				return u
			}
		case <-timeout:
			t.Fatalf("no banner from holdfast lab up after 60 s:\n%s\nstderr:\n%s", strings.Join(u.banner, "\n"), tail(stderr.String(), 30))
		}
	}
}

// bannerLine returns the command of the banner's line containing s, with
// its comment cut off.
func (u *labUp) bannerLine(t *testing.T, s string) string {
	t.Helper()
	for _, l := range u.banner {
		if strings.Contains(l, s) {
			cmd, _, _ := strings.Cut(l, "#")
			return strings.TrimSpace(cmd)
		}
	}
	t.Fatalf("the banner has no line with %q:\n%s", s, strings.Join(u.banner, "\n"))
	return ""
}

// wait waits up to 30 s for lab up to exit after `lab down` and returns
// how it ended.
func (u *labUp) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-u.exited:
		u.exited <- err
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("holdfast lab up still running 30 s after lab down\nstderr:\n%s", tail(u.stderr.String(), 30))
		return nil
	}
}

// result is what a command printed and how it exited.
type result struct {
	stdout, stderr string
	code           int
}

// runCmd runs cmd (its Stdout and Stderr unset) to its end, bounded by 30 s.
func runCmd(t *testing.T, cmd *exec.Cmd) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill() // by PID: this test's own command
		<-done
		t.Fatalf("%v still running after 30 s\nstdout:\n%s\nstderr:\n%s", cmd.Args, stdout.String(), stderr.String())
	}
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("%v: %v", cmd.Args, err)
	}
	return r
}

// wantOK fails t unless r is exit 0 with nothing on stderr.
func wantOK(t *testing.T, what string, r result) {
	t.Helper()
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("%s: exit %d\nstdout:\n%s\nstderr:\n%s", what, r.code, r.stdout, r.stderr)
	}
}

// parseLabStatus decodes `lab status --json`.
func parseLabStatus(t *testing.T, r result) lab.Status {
	t.Helper()
	wantOK(t, "lab status --json", r)
	var st lab.Status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("lab status --json: %v\n%s", err, r.stdout)
	}
	return st
}

// wantServingLog fails t unless `lab logs A` printed director A's start and
// holdfast's "serving" line.
func wantServingLog(t *testing.T, r result) {
	t.Helper()
	wantOK(t, "lab logs A", r)
	if !strings.Contains(r.stdout, "-- holdfast lab: starting holdfast in hflab-dirA --") || !strings.Contains(r.stdout, `"message":"serving"`) {
		t.Fatalf("lab logs A has no start line and no serving line:\n%s", tail(r.stdout, 20))
	}
}

// rootLabUp runs `holdfast lab up` with args as root until its banner is
// out, and stops it (by PID, then `lab down` for anything left) when t
// ends. It skips t while a lab of the same name, which another `lab up` on
// this machine made, is up: the supervised lab is one per host.
func rootLabUp(t *testing.T, bin string, args ...string) *labUp {
	t.Helper()
	if left, _ := lab.List(lab.SupervisedPrefix); len(left) > 0 {
		t.Skipf("skipping: a lab made by `holdfast lab up` is running on this machine (%v): one per host", left)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(bin, append([]string{"lab", "up"}, args...)...)
	cmd.Stderr = &stderr
	u := startLabUp(t, cmd, &stderr)
	t.Cleanup(func() {
		cmd.Process.Kill() // by PID; a no-op once it exited
		<-u.exited
		if left, _ := lab.List(lab.SupervisedPrefix); len(left) > 0 {
			exec.Command(bin, "lab", "down").Run()
		}
	})
	return u
}

// TestLabUpStatusVRRPLogs: as root, `lab up --vrrp`; `lab status --json`
// names A MASTER and B BACKUP and counts, per real, the TCP connection and
// the UDP flow held open through the VIP (the UDP echo the banner
// advertises answers), `lab status` prints the same, `lab logs A` has
// holdfast's lines, `lab logs B` too, and `lab down` ends it all.
func TestLabUpStatusVRRPLogs(t *testing.T) {
	requireKeepalived(t)
	bin := holdfastBinary(t)
	u := rootLabUp(t, bin, "--vrrp")
	if vip := u.bannerLine(t, "VIP"); !strings.Contains(vip, "tcp:80 (HTTP) and udp:5353 (echo)") {
		t.Errorf("banner's VIP line: %q", vip)
	}

	// One HTTP connection and one UDP flow, held open while status looks.
	client := &lab.NS{Name: lab.SupervisedPrefix + "client"}
	tc, err := client.Dial("tcp4", lab.VIP.String()+":80")
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := tc.Write([]byte("GET / HTTP/1.1\r\nHost: lab\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	resp := make([]byte, 512)
	n, err := tc.Read(resp)
	if err != nil || !bytes.Contains(resp[:n], []byte("X-Real: rs")) {
		t.Fatalf("HTTP through the VIP: %q, %v", resp[:n], err)
	}
	uc, err := client.Dial("udp4", lab.VIP.String()+":5353")
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	uc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := uc.Write([]byte("echo me")); err != nil {
		t.Fatal(err)
	}
	if n, err := uc.Read(resp); err != nil || string(resp[:n]) != "echo me" {
		t.Fatalf("UDP echo through the VIP: %q, %v", resp[:n], err)
	}

	st := parseLabStatus(t, runCmd(t, exec.Command(bin, "lab", "status", "--json")))
	if st.Active != "A" || len(st.Directors) != 2 || st.Directors[0].VRRP != lab.VRRPMasterState || st.Directors[1].VRRP != lab.VRRPBackupState {
		t.Errorf("lab status --json: active %q, directors %+v; want A MASTER, B BACKUP", st.Active, st.Directors)
	}
	active, udp := 0, 0
	for _, r := range st.Reals {
		active += r.Active
		udp += r.UDPFlows
	}
	if active != 1 || udp != 1 {
		t.Errorf("lab status --json: %d connections and %d UDP flows held now over the reals, want 1 and 1: %+v", active, udp, st.Reals)
	}
	text := runCmd(t, exec.Command(bin, "lab", "status"))
	wantOK(t, "lab status", text)
	for _, want := range []string{"keepalived MASTER, holdfast running", "keepalived BACKUP, holdfast running", "now 1 connections", "1 UDP flows"} {
		if !strings.Contains(text.stdout, want) {
			t.Errorf("lab status has no %q:\n%s", want, text.stdout)
		}
	}
	wantServingLog(t, runCmd(t, exec.Command(bin, "lab", "logs", "A")))
	if r := runCmd(t, exec.Command(bin, "lab", "logs", "B")); r.code != 0 || !strings.Contains(r.stdout, "hflab-dirB") {
		t.Errorf("lab logs B: exit %d\n%s%s", r.code, tail(r.stdout, 5), r.stderr)
	}
	// A follower of A's log sees A's holdfast end with the lab, then exits 0.
	follow := exec.Command(bin, "lab", "logs", "A", "-f")
	followOut, err := follow.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { follow.Process.Kill() }) // by PID; a no-op once it exited
	followed := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(followOut)
		followed <- string(b)
	}()
	if r := runCmd(t, exec.Command(bin, "lab", "down")); r.code != 0 || r.stdout != "the lab is down\n" {
		t.Fatalf("lab down: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	select {
	case out := <-followed:
		if err := follow.Wait(); err != nil || !strings.Contains(out, `"message":"serving"`) || !strings.Contains(out, ") ended: signal: killed --") {
			t.Errorf("lab logs A -f: %v, want exit 0 with A's serving and its end:\n%s", err, tail(out, 10))
		}
	case <-time.After(30 * time.Second):
		t.Errorf("lab logs A -f still running 30 s after lab down")
	}
	if err := u.wait(t); err != nil {
		t.Fatalf("holdfast lab up exited with %v\nstderr:\n%s", err, tail(u.stderr.String(), 20))
	}
	if left, _ := lab.List(lab.SupervisedPrefix); len(left) > 0 {
		t.Fatalf("namespaces left: %v", left)
	}
}

// TestLabUpECMP (issue 17): `holdfast lab up --bgp --ecmp` comes up with
// three directors, every session Established, and both routers' ECMP
// next hops A, B and C (lab status --json); `lab kill B` takes B's links
// down and kills it, and both routers drop it; `lab start 2` (B by its
// --director-id) runs a fresh holdfast there and both routers have three
// next hops again; `lab leave C` stops C gracefully (exit 0) and both
// routers drop it. Requests through the VIP work after each step, a pair's
// `lab failover` is refused, and `lab down` leaves no namespace.
func TestLabUpECMP(t *testing.T) {
	requireBIRD(t)
	bin := holdfastBinary(t)
	u := rootLabUp(t, bin, "--bgp", "--ecmp")
	u.bannerLine(t, "holdfast lab kill A")
	u.bannerLine(t, "holdfast lab leave C")
	if vip := u.bannerLine(t, "VIP"); !strings.Contains(vip, "both routers' ECMP next hops 3 (A, B, C)") {
		t.Errorf("banner's VIP line: %q", vip)
	}
	status := func() lab.Status {
		t.Helper()
		return parseLabStatus(t, runCmd(t, exec.Command(bin, "lab", "status", "--json")))
	}
	wantHops := func(what string, st lab.Status, want ...string) {
		t.Helper()
		if st.NextHops == nil || !slices.Equal(st.NextHops.ClientSide, want) || !slices.Equal(st.NextHops.RealSide, want) {
			t.Errorf("%s: lab status --json next hops %+v, want %v on both routers", what, st.NextHops, want)
		}
	}
	up := "client Established, real Established"
	st := status()
	wantHops("at the start", st, "A", "B", "C")
	if st.Active != "ECMP" || len(st.Directors) != 3 {
		t.Fatalf("lab status --json: active %q, %d directors; want ECMP, 3", st.Active, len(st.Directors))
	}
	for _, d := range st.Directors {
		if !d.Running || d.BGP != up {
			t.Errorf("at the start: director %+v, want running with every session Established", d)
		}
	}
	bPID := st.Directors[1].PID
	labVIPGets(t, "at the start", 12)

	step := func(args ...string) string {
		t.Helper()
		start := time.Now()
		r := runCmd(t, exec.Command(bin, append([]string{"lab"}, args...)...))
		wantOK(t, "lab "+strings.Join(args, " "), r)
		t.Logf("lab %s took %v: %s", strings.Join(args, " "), time.Since(start).Round(time.Millisecond), firstLineOf(r.stdout))
		return r.stdout
	}
	if out := step("kill", "B"); !strings.Contains(out, "director B unplugged (its links down) and killed (SIGKILL") {
		t.Errorf("lab kill B said:\n%s", out)
	}
	st = status()
	wantHops("after lab kill B", st, "A", "C")
	if b := st.Directors[1]; b.Running || !b.LinksDown || b.Ended != "signal: killed" {
		t.Errorf("after lab kill B: director B %+v, want not running, links down, ended by SIGKILL", b)
	}
	labVIPGets(t, "after lab kill B", 12)

	if out := step("start", "2"); !strings.Contains(out, "director B started (a fresh holdfast") {
		t.Errorf("lab start 2 said:\n%s", out)
	}
	st = status()
	wantHops("after lab start 2", st, "A", "B", "C")
	if b := st.Directors[1]; !b.Running || b.LinksDown || b.PID == bPID || b.BGP != up {
		t.Errorf("after lab start 2: director B %+v, want a new process (not pid %d) with its links up and sessions Established", b, bPID)
	}
	labVIPGets(t, "after lab start 2", 12)

	if out := step("leave", "C"); !strings.Contains(out, "director C left (SIGTERM") {
		t.Errorf("lab leave C said:\n%s", out)
	}
	st = status()
	wantHops("after lab leave C", st, "A", "B")
	if c := st.Directors[2]; c.Running || c.LinksDown || c.Ended != "exit status 0" {
		t.Errorf("after lab leave C: director C %+v, want not running, links up, exit status 0", c)
	}
	labVIPGets(t, "after lab leave C", 12)

	if r := runCmd(t, exec.Command(bin, "lab", "failover")); r.code != 1 || !strings.Contains(r.stderr, "no active director to fail over from") {
		t.Errorf("lab failover in an ECMP lab: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := runCmd(t, exec.Command(bin, "lab", "down")); r.code != 0 {
		t.Fatalf("lab down: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if err := u.wait(t); err != nil {
		t.Fatalf("holdfast lab up exited with %v\nstderr:\n%s", err, tail(u.stderr.String(), 20))
	}
	if left, _ := lab.List(lab.SupervisedPrefix); len(left) > 0 {
		t.Fatalf("namespaces left: %v", left)
	}
}

// labVIPGets makes n HTTP requests through the supervised lab's VIP, each
// on a new connection (a new source port, which the routers' L4 hash
// spreads over the directors), and fails t unless a real answers each.
func labVIPGets(t *testing.T, what string, n int) {
	t.Helper()
	client := &lab.NS{Name: lab.SupervisedPrefix + "client"}
	for i := range n {
		c, err := client.Dial("tcp4", lab.VIP.String()+":80")
		if err != nil {
			t.Fatalf("%s: request %d: %v", what, i, err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Write([]byte("GET / HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n"))
		var resp []byte
		if err == nil {
			resp, err = io.ReadAll(c)
		}
		c.Close()
		if err != nil || !bytes.Contains(resp, []byte("X-Real: rs")) {
			t.Fatalf("%s: request %d through the VIP: %q, %v", what, i, resp, err)
		}
	}
}
