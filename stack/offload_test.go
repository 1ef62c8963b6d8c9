package stack

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestOffloadCloseWakesRead: Read sleeps in a blocking read(2); Close must
// wake it (ErrClosed) whether the TUN is up (the wake datagram) or down
// (set up for the datagram, then down again).
func TestOffloadCloseWakesRead(t *testing.T) {
	for _, up := range []bool{true, false} {
		t.Run(fmt.Sprintf("up=%v", up), func(t *testing.T) {
			enterNetns(t)
			dev, err := OpenTUNOffload(testTUN)
			if err != nil {
				t.Fatal(err)
			}
			l, err := netlink.LinkByName(testTUN)
			if err != nil {
				t.Fatal(err)
			}
			if up {
				if err := netlink.LinkSetUp(l); err != nil {
					t.Fatal(err)
				}
			}
			tid := make(chan int, 1)
			done := make(chan error, 1)
			go func() {
				runtime.LockOSThread()
				tid <- unix.Gettid()
				bufs := [][]byte{make([]byte, vnetHdrLen+65535)}
				for {
					// A TUN just set up may get IPv6 solicitations.
					if _, err := dev.Read(bufs, make([]int, 1), vnetHdrLen); err != nil {
						done <- err
						return
					}
				}
			}()
			waitInRead(t, <-tid)
			start := time.Now()
			if err := dev.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			select {
			case err := <-done:
				if !errors.Is(err, ErrClosed) {
					t.Fatalf("Read after Close: %v, want ErrClosed", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Read still blocked 5s after Close")
			}
			t.Logf("Read woken %v after Close began", time.Since(start))
		})
	}
}

// waitInRead polls until thread tid of this process sleeps in read(2)
// (/proc/.../syscall starts with the syscall number): there is no event for
// a thread entering a syscall.
func waitInRead(t *testing.T, tid int) {
	t.Helper()
	path := fmt.Sprintf("/proc/self/task/%d/syscall", tid)
	want := fmt.Sprint(unix.SYS_READ) + " "
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil && strings.HasPrefix(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("thread %d not in read(2) after 5s: %q %v", tid, b, err)
		}
		time.Sleep(time.Millisecond)
	}
}
