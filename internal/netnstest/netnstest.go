// Package netnstest moves a test into a throwaway network namespace. It is
// for tests only: the product links none of it.
package netnstest

import (
	"errors"
	"os"
	"runtime"
	"syscall"
	"testing"

	"github.com/vishvananda/netns"
)

// Enter moves the test's goroutine, locked to its OS thread, into a fresh
// unnamed network namespace, and back in t.Cleanup. The namespace vanishes
// when its handle is closed and no thread is left in it. Without root the
// test is skipped.
func Enter(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("get the current network namespace: %v", err)
	}
	back := func() {
		// If the thread cannot get back, leave it locked: the runtime then
		// discards it with the goroutine instead of reusing a thread stuck in
		// the test namespace.
		if err := netns.Set(orig); err != nil {
			t.Errorf("return to the original network namespace: %v", err)
			return
		}
		runtime.UnlockOSThread()
	}
	ns, err := netns.New()
	if err != nil {
		back()
		orig.Close()
		if errors.Is(err, syscall.EPERM) {
			t.Skip("needs CAP_SYS_ADMIN: creates a network namespace")
		}
		t.Fatalf("create a network namespace: %v", err)
	}
	t.Cleanup(func() {
		back()
		ns.Close()
		orig.Close()
	})
}
