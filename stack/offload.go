package stack

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// The offload TUN: opened with IFF_VNET_HDR and TUNSETOFFLOAD, so the
// kernel hands over (and takes back) TCP segments of up to 64 KiB with their
// checksum left to complete (NEEDS_CSUM) instead of segmenting and summing
// every 1500-byte packet: most of a director's CPU goes to the kernel's
// per-packet work, not to the NAT.
//
// It bypasses Go's poller: the fd is non-blocking, Read tries read(2) first
// and sleeps in poll(2) (on the fd and an eventfd that Close signals) only
// when nothing is queued, so a busy loop costs one syscall per packet on a
// locked thread.

const (
	vnetHdrLen    = 10 // struct virtio_net_hdr, no num_buffers
	vnetNeedsCsum = unix.VIRTIO_NET_HDR_F_NEEDS_CSUM
	offloadBatch  = 64
)

type offloadTUN struct {
	name string
	fd   int
	evfd int

	mu     sync.RWMutex // held shared by every syscall, exclusively by Close
	closed atomic.Bool

	// Used by the one reading goroutine only.
	drained bool           // the last read(2) found the queue empty
	pollfds [2]unix.PollFd // reused: no allocation per sleep
}

// OpenTUNOffload creates (or attaches to) TUN device name with a
// virtio-net header and TCPv4 segmentation and checksum offload. It fails
// where the kernel does not support them; callers fall back to OpenTUN.
func OpenTUNOffload(name string) (Device, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open TUN %q: /dev/net/tun: %w", name, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open TUN %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open TUN %q (needs CAP_NET_ADMIN): %w", name, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, unix.TUN_F_CSUM|unix.TUN_F_TSO4); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUN %q: offload (TUNSETOFFLOAD): %w", name, err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUN %q: eventfd: %w", name, err)
	}
	return &offloadTUN{name: ifr.Name(), fd: fd, evfd: evfd}, nil
}

func (d *offloadTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	n := 0
	for n < len(bufs) {
		if d.closed.Load() {
			return n, ErrClosed
		}
		if d.drained {
			// The last read found the queue empty: sleep first rather
			// than spend a read(2) on EAGAIN again.
			if err := d.wait(); err != nil {
				return 0, err
			}
			d.drained = false
		}
		m, err := unix.Read(d.fd, bufs[n][offset-vnetHdrLen:])
		switch {
		case err == nil && m >= vnetHdrLen:
			sizes[n] = m - vnetHdrLen
			n++
		case err == nil, errors.Is(err, unix.EINTR):
			// a runt (nothing to hand on), or a signal: read again
		case errors.Is(err, unix.EAGAIN):
			d.drained = true
			if n > 0 {
				return n, nil // a batch, and nothing more queued
			}
		default:
			return n, fmt.Errorf("read %s: %w", d.name, err)
		}
	}
	return n, nil
}

// wait sleeps in poll(2) until the TUN has a packet or Close signals.
func (d *offloadTUN) wait() error {
	d.pollfds = [2]unix.PollFd{{Fd: int32(d.fd), Events: unix.POLLIN}, {Fd: int32(d.evfd), Events: unix.POLLIN}}
	if _, err := unix.Poll(d.pollfds[:], -1); err != nil && !errors.Is(err, unix.EINTR) {
		return fmt.Errorf("poll %s: %w", d.name, err)
	}
	if d.pollfds[1].Revents != 0 || d.pollfds[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 {
		return ErrClosed
	}
	return nil
}

func (d *offloadTUN) Write(bufs [][]byte, offset int) (int, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed.Load() {
		return 0, ErrClosed
	}
	for i, b := range bufs {
		for {
			_, err := unix.Write(d.fd, b[offset-vnetHdrLen:])
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if errors.Is(err, unix.EAGAIN) {
				// The device queue toward the kernel is full: wait for
				// room rather than drop.
				fds := []unix.PollFd{{Fd: int32(d.fd), Events: unix.POLLOUT}}
				unix.Poll(fds, 100) //nolint:errcheck // retried either way
				continue
			}
			if err != nil {
				return i, fmt.Errorf("write %s: %w", d.name, err)
			}
			break
		}
	}
	return len(bufs), nil
}

func (d *offloadTUN) BatchSize() int  { return offloadBatch }
func (d *offloadTUN) VnetHdrLen() int { return vnetHdrLen }
func (d *offloadTUN) Name() string    { return d.name }

// Close wakes a Read sleeping in poll, waits for every syscall in progress,
// then closes the descriptors. It is idempotent.
func (d *offloadTUN) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	var one [8]byte
	one[0] = 1
	unix.Write(d.evfd, one[:]) //nolint:errcheck // a full counter wakes poll too
	d.mu.Lock()
	defer d.mu.Unlock()
	return errors.Join(os.NewSyscallError("close", unix.Close(d.fd)), os.NewSyscallError("close", unix.Close(d.evfd)))
}
