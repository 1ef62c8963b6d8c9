package tun

import (
	"errors"
	"fmt"
	"holdfast/internal/netnstest"
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
	for _, queues := range []int{1, 2} {
		for _, up := range []bool{true, false} {
			t.Run(fmt.Sprintf("queues=%d/up=%v", queues, up), func(t *testing.T) {
				netnstest.Enter(t)
				dev, err := OpenTUNOffload("hf0", queues)
				if err != nil {
					t.Fatal(err)
				}
				if up {
					l, err := netlink.LinkByName("hf0")
					if err != nil {
						t.Fatal(err)
					}
					if err := netlink.LinkSetUp(l); err != nil {
						t.Fatal(err)
					}
				}
				qs := Queues(dev)
				if len(qs) != queues {
					t.Fatalf("%d queues, want %d", len(qs), queues)
				}
				done := make(chan error, len(qs))
				for _, q := range qs {
					tid := make(chan int, 1)
					go readUntilError(q, tid, done)
					waitInRead(t, <-tid)
				}
				start := time.Now()
				if err := dev.Close(); err != nil {
					t.Fatalf("Close: %v", err)
				}
				for range qs {
					select {
					case err := <-done:
						if !errors.Is(err, ErrClosed) {
							t.Fatalf("Read after Close: %v, want ErrClosed", err)
						}
					case <-time.After(5 * time.Second):
						t.Fatal("Read still blocked 5s after Close")
					}
				}
				t.Logf("every Read woken %v after Close began", time.Since(start))
			})
		}
	}
}

// readUntilError reads q on a locked thread, whose id it sends first, until
// an error, which it sends to done. (A TUN just set up may get IPv6
// solicitations: they are read and dropped.)
func readUntilError(q Device, tid chan<- int, done chan<- error) {
	runtime.LockOSThread()
	tid <- unix.Gettid()
	bufs := [][]byte{make([]byte, vnetHdrLen+65535)}
	for {
		if _, err := q.Read(bufs, make([]int, 1), vnetHdrLen); err != nil {
			done <- err
			return
		}
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

// A TUN another process (here: another open) holds is refused as in use,
// by both kinds of device, and not blamed on capabilities.
func TestOpenInUse(t *testing.T) {
	netnstest.Enter(t)
	dev, err := OpenTUNOffload("hf0", 1)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	_, err = OpenTUNOffload("hf0", 1)
	if !errors.Is(err, ErrInUse) || strings.Contains(err.Error(), "CAP_NET_ADMIN") {
		t.Fatalf("offload TUN held: %v, want ErrInUse", err)
	}
	_, err = OpenTUN("hf0")
	if !errors.Is(err, ErrInUse) || strings.Contains(err.Error(), "CAP_NET_ADMIN") {
		t.Fatalf("plain TUN held: %v, want ErrInUse", err)
	}
}
