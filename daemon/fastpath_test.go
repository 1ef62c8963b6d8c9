package daemon

import (
	"context"
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"

	"holdfast/stack/tun/tuntest"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// --fast-path xdp, or a mode that is none, is a Config that cannot work:
// refused before anything starts.
func TestFastPathInvalid(t *testing.T) {
	for mode, want := range map[FastPathMode]string{FastPathXDP: "xdp: not built", "ebpf": `mode "ebpf": expected auto, off, tc or xdp`} {
		cfg := testConfig(t, tuntest.NewMemDevice("mem0", 1), 1)
		cfg.FastPath = mode
		err := Run(context.Background(), cfg, zerolog.Nop())
		var de *Error
		if !errors.As(err, &de) || !errors.Is(err, ErrInvalid) || de.Part != PartFastPath || !strings.Contains(err.Error(), want) {
			t.Errorf("--fast-path %s: %v, want an invalid fast path error with %q", mode, err, want)
		}
	}
}

// inEmptyNetns starts f on a thread of its own in a network namespace of
// its own with nothing but lo (down): the fast path finds no link there,
// so a test of its failure attaches nothing to the host's links. The
// channel is closed when f has returned.
func inEmptyNetns(t *testing.T, f func()) <-chan struct{} {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: a network namespace of its own")
	}
	started, done := make(chan error), make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread ends with its namespace
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			started <- err
			return
		}
		started <- nil
		f()
	}()
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	return done
}

// --fast-path tc where it cannot be had fails at start with the reason, a
// runtime error (exit 1 in the CLI), and auto falls back to the TUN path
// with one line saying why.
func TestFastPathUnavailable(t *testing.T) {
	cfg := testConfig(t, tuntest.NewMemDevice("mem0", 1), 1)
	cfg.FastPath = FastPathTC
	var err error
	<-inEmptyNetns(t, func() { err = Run(context.Background(), cfg, zerolog.Nop()) })
	var de *Error
	if !errors.As(err, &de) || errors.Is(err, ErrInvalid) || de.Part != PartFastPath || !strings.Contains(err.Error(), "no Ethernet link") {
		t.Errorf("--fast-path tc without a link: %v, want a runtime fast path error naming the reason", err)
	}

	cfg = testConfig(t, tuntest.NewMemDevice("mem1", 1), 2)
	cfg.FastPath = FastPathAuto
	log := &logBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := inEmptyNetns(t, func() { err = Run(ctx, cfg, zerolog.New(log)) })
	log.wait(t, "serving", 1)
	cancel()
	<-done
	if err != nil {
		t.Errorf("auto without a link: %v, want the TUN path", err)
	}
	if l := log.lines(t, "fast path: off: no Ethernet link that is up to attach to"); len(l) != 1 || l[0][fFastPath] != "off" {
		t.Errorf("auto without a link: fast path lines %v, want one saying off and why", l)
	}
}
