package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeNotifyEnv makes the test binary a fake director (fakeNotify) instead
// of running the tests: the daemon's side of the notify protocol, as
// `holdfast run` speaks it.
const fakeNotifyEnv = "HOLDFAST_LAB_FAKE_NOTIFY"

func TestMain(m *testing.M) {
	if mode := os.Getenv(fakeNotifyEnv); mode != "" {
		os.Exit(fakeNotify(mode))
	}
	os.Exit(m.Run())
}

// fakeNotify sends what mode says to $NOTIFY_SOCKET, then runs until
// killed ("ready", "not ready") or exits 3 ("exit").
func fakeNotify(mode string) int {
	fmt.Fprintln(os.Stderr, "fake director:", mode)
	var sockets []string
	for _, kv := range os.Environ() {
		if v, ok := strings.CutPrefix(kv, notifySocketEnv+"="); ok {
			sockets = append(sockets, v)
		}
	}
	if len(sockets) != 1 {
		fmt.Fprintf(os.Stderr, "fake director: NOTIFY_SOCKET set %d times: %q\n", len(sockets), sockets)
		return 4
	}
	send := func(msg string) {
		c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sockets[0], Net: "unixgram"})
		if err != nil {
			fmt.Fprintln(os.Stderr, "fake director:", err)
			os.Exit(5)
		}
		defer c.Close()
		if _, err := c.Write([]byte(msg)); err != nil {
			fmt.Fprintln(os.Stderr, "fake director:", err)
			os.Exit(5)
		}
	}
	switch mode {
	case "ready":
		send("STATUS=starting")
		send(fmt.Sprintf("READY=1\nMAINPID=%d", os.Getpid()))
	case "not ready":
		for _, msg := range []string{"READY=0", "XREADY=1", "STATUS=READY=1", "READY=1 ", "READY=10"} {
			send(msg)
		}
	case "exit":
		fmt.Fprintln(os.Stderr, "fake director: giving up")
		return 3
	}
	// Until the test stops it: SIGTERM (or the lab's SIGKILL at a deadline).
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)
	<-stop
	return 0
}

// startFake is startReady of a fake director; it returns the process and
// the notify socket it was given, also when startReady fails.
func startFake(t *testing.T, ctx context.Context, mode string) (*Proc, string, error) {
	t.Helper()
	var started *Proc
	var socket string
	p, err := startReady(ctx, func(env []string) (*Proc, error) {
		socket = strings.TrimPrefix(env[0], notifySocketEnv+"=")
		p, err := startProc("fake", command(append(env, fakeNotifyEnv+"="+mode), os.Args[0]), procOptions{})
		started = p
		return p, err
	})
	if started == nil {
		t.Fatalf("startReady(%s) did not start the process: %v", mode, err)
	}
	t.Cleanup(func() { started.stop() })
	if p != nil && p != started {
		t.Fatalf("startReady returned %p, started %p", p, started)
	}
	return started, socket, err
}

func requireGone(t *testing.T, socket string) {
	t.Helper()
	if _, err := os.Stat(filepath.Dir(socket)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("notify socket directory %s after the process exited: %v, want it removed", filepath.Dir(socket), err)
	}
}

// READY=1 on the socket is readiness; the lab's own NOTIFY_SOCKET is not
// passed on; the socket lives as long as the process.
func TestStartReady(t *testing.T) {
	t.Setenv(notifySocketEnv, "/run/systemd/notify")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, socket, err := startFake(t, ctx, "ready")
	if err != nil {
		t.Fatalf("startReady = %v", err)
	}
	select {
	case <-p.Done():
		t.Fatalf("the process exited: %s", p.Stderr())
	default:
	}
	if fi, err := os.Stat(socket); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("notify socket %s while the process runs: %v, %v", socket, fi, err)
	}
	if fi, err := os.Stat(filepath.Dir(socket)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("notify socket directory: %v, %v; want mode 0700", fi, err)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	requireGone(t, socket)
}

// A process that exits without READY=1 fails the start, with its stderr.
func TestStartReadyExited(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, socket, err := startFake(t, ctx, "exit")
	if !errors.Is(err, ErrExited) || !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "fake director: giving up") {
		t.Errorf("startReady = %v; want ErrExited, the exit status and the stderr", err)
	}
	requireGone(t, socket)
}

// Only a line READY=1 counts: without one the start fails when ctx ends,
// and the process is killed.
func TestStartReadyNotReady(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	p, socket, err := startFake(t, ctx, "not ready")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "fake director: not ready") {
		t.Errorf("startReady = %v; want DeadlineExceeded and the stderr", err)
	}
	select {
	case <-p.Done():
	default:
		t.Fatal("startReady failed with the process still running")
	}
	if ws, ok := p.state.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Errorf("process ended with %v, want killed", p.state)
	}
	requireGone(t, socket)
}

func TestHasLine(t *testing.T) {
	for _, tc := range []struct {
		msg  string
		want bool
	}{
		{"READY=1", true},
		{"READY=1\nMAINPID=42", true},
		{"STATUS=up\nREADY=1", true},
		{"STATUS=up\nREADY=1\n", true},
		{"READY=0", false},
		{"STATUS=READY=1", false},
		{"READY=1 ", false},
		{"READY=10", false},
		{"", false},
	} {
		if got := hasLine([]byte(tc.msg), notifyReady); got != tc.want {
			t.Errorf("hasLine(%q) = %v, want %v", tc.msg, got, tc.want)
		}
	}
}

func TestWithoutNotify(t *testing.T) {
	got := withoutNotify([]string{"PATH=/bin", "NOTIFY_SOCKET=/run/systemd/notify", "NOTIFY_SOCKETX=keep", "HOME=/root"})
	if want := []string{"PATH=/bin", "NOTIFY_SOCKETX=keep", "HOME=/root"}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("withoutNotify = %q, want %q", got, want)
	}
}

// The notify socket is a path, so READY=1 reaches it from a process in
// another network namespace (an abstract name would not: unix(7)).
func TestStartReadyInNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to create network namespaces")
	}
	l, err := New(Options{Reals: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("removing the lab: %v", err)
		}
	})
	t.Setenv(fakeNotifyEnv, "ready") // the child inherits it
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d := l.Directors[0]
	p, err := d.StartReady(ctx, "fake", os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	own, err1 := os.Readlink("/proc/self/ns/net")
	its, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", p.PID()))
	if err1 != nil || err2 != nil || own == its {
		t.Errorf("the fake director's network namespace %q (%v), this test's %q (%v): want another one", its, err2, own, err1)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Wait(ctx); err != nil {
		t.Fatal(err)
	}
}
