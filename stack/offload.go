package stack

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The offload TUN: opened with IFF_VNET_HDR and TUNSETOFFLOAD, so the
// kernel hands over (and takes back) TCP segments of up to 64 KiB with their
// checksum left to complete (NEEDS_CSUM) instead of segmenting and summing
// every 1500-byte packet: most of a director's CPU goes to the kernel's
// per-packet work, not to the NAT.
//
// It bypasses Go's poller: the fd is blocking and the pump's locked thread
// sleeps in read(2) itself, so a packet costs one read(2) and one write(2),
// the fewest a TUN allows (no poll, no read that finds the queue empty).
// Close wakes the read by sending the TUN one datagram of its own (see
// wake).

const (
	vnetHdrLen    = 10 // struct virtio_net_hdr, no num_buffers
	vnetNeedsCsum = unix.VIRTIO_NET_HDR_F_NEEDS_CSUM
	offloadBatch  = 64
)

type offloadTUN struct {
	name   string
	fd     int
	wakefd int // a UDP socket bound to the TUN: see wake

	mu     sync.RWMutex // held shared by every syscall, exclusively by Close
	closed atomic.Bool
}

// OpenTUNOffload creates (or attaches to) TUN device name with a
// virtio-net header and TCPv4 segmentation and checksum offload. It fails
// where the kernel does not support them; callers fall back to OpenTUN.
func OpenTUNOffload(name string) (Device, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
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
	// The wake socket is made now, in the TUN's network namespace, and
	// bound to it by index.
	wakefd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUN %q: wake socket: %w", name, err)
	}
	d := &offloadTUN{name: ifr.Name(), fd: fd, wakefd: wakefd}
	if err := d.bindWake(); err != nil {
		unix.Close(fd)
		unix.Close(wakefd)
		return nil, fmt.Errorf("TUN %q: wake socket: %w", name, err)
	}
	return d, nil
}

// Read blocks in read(2) until a packet comes, and returns it alone:
// batching reads would save no syscall (a TUN hands over one packet per
// read), only add the latency of the batch.
func (d *offloadTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	for {
		if d.closed.Load() {
			return 0, ErrClosed
		}
		m, err := unix.Read(d.fd, bufs[0][offset-vnetHdrLen:])
		switch {
		case d.closed.Load():
			return 0, ErrClosed // woken by Close (or a last packet: dropped)
		case err == nil && m >= vnetHdrLen:
			sizes[0] = m - vnetHdrLen
			return 1, nil
		case err == nil, errors.Is(err, unix.EINTR), errors.Is(err, unix.EAGAIN):
			// a runt (nothing to hand on), or a signal: read again
		default:
			return 0, fmt.Errorf("read %s: %w", d.name, err)
		}
	}
}

func (d *offloadTUN) Write(bufs [][]byte, offset int) (int, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed.Load() {
		return 0, ErrClosed
	}
	for i, b := range bufs {
		for {
			err := rawWrite(d.fd, b[offset-vnetHdrLen:])
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

// rawWrite is write(2) without telling Go's scheduler: a TUN write does not
// block (the kernel forwards the packet within it), so handing the thread's
// P away and back, as unix.Write does, would only cost time.
func rawWrite(fd int, b []byte) error {
	_, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	if e != 0 {
		return e
	}
	return nil
}

// Close wakes a Read sleeping in read(2), waits for every syscall in
// progress, then closes the descriptor. It is idempotent.
func (d *offloadTUN) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	stop, raised := make(chan struct{}), make(chan bool, 1)
	go func() { raised <- d.wake(stop) }()
	d.mu.Lock()
	defer d.mu.Unlock()
	close(stop)
	var errs []error
	if <-raised {
		errs = append(errs, os.NewSyscallError("set TUN down again", d.setUp(false)))
	}
	errs = append(errs, os.NewSyscallError("close", unix.Close(d.fd)), os.NewSyscallError("close", unix.Close(d.wakefd)))
	return errors.Join(errs...)
}

// wakeAddr is where Close's wake-up datagram goes. It never leaves the host:
// the socket is bound to the TUN, so the kernel queues the datagram on the
// TUN itself, for the Read it wakes (which drops it).
var wakeAddr = unix.SockaddrInet4{Addr: [4]byte{198, 19, 255, 254}, Port: 9}

// wake sends the TUN a datagram every 50 ms until stop is closed (a read
// returning at that moment may miss one). A TUN that is down queues nothing:
// after a failed send wake sets the link up, and it reports whether it did,
// so that Close can set it down again.
func (d *offloadTUN) wake(stop <-chan struct{}) (raised bool) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if err := unix.Sendto(d.wakefd, []byte{0}, 0, &wakeAddr); err != nil && !raised {
			raised = d.setUp(true) == nil
		}
		select {
		case <-stop:
			return raised
		case <-t.C:
		}
	}
}

// setUp sets the TUN's IFF_UP flag (through the wake socket, which lives in
// the TUN's network namespace whatever thread runs this).
func (d *offloadTUN) setUp(up bool) error {
	ifr, err := unix.NewIfreq(d.name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(d.wakefd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	flags := ifr.Uint16()
	if up {
		flags |= unix.IFF_UP
	} else {
		flags &^= unix.IFF_UP
	}
	ifr.SetUint16(flags)
	return unix.IoctlIfreq(d.wakefd, unix.SIOCSIFFLAGS, ifr)
}

func (d *offloadTUN) bindWake() error {
	ifr, err := unix.NewIfreq(d.name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(d.wakefd, unix.SIOCGIFINDEX, ifr); err != nil {
		return err
	}
	return unix.SetsockoptInt(d.wakefd, unix.SOL_SOCKET, unix.SO_BINDTOIFINDEX, int(ifr.Uint32()))
}
