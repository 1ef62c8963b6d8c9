package tun

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
// It bypasses Go's poller: each queue's fd is blocking and its pump's locked
// thread sleeps in read(2) itself, so a packet costs one read(2) and one
// write(2), the fewest a TUN allows (no poll, no read that finds the queue
// empty). Close wakes the reads by sending the TUN datagrams of its own (see
// wake).
//
// With more than one queue (IFF_MULTI_QUEUE) the kernel spreads packets over
// the queues by flow hash, and a write's flow steers the packets of the
// same flow back to the queue that wrote it; each queue has its own pump, so
// the kernel's forwarding work done inside write(2) runs on as many threads.

const (
	vnetHdrLen    = 10 // struct virtio_net_hdr, no num_buffers
	vnetNeedsCsum = unix.VIRTIO_NET_HDR_F_NEEDS_CSUM
	offloadBatch  = 1 // a TUN read moves one packet: see tunQueue.Read
)

// offloadTUN is the device; as a Device it reads and writes through its
// first queue.
type offloadTUN struct {
	name   string
	queues []*tunQueue
	wakefd int // a UDP socket bound to the TUN: see wake

	closing sync.Mutex
	closed  atomic.Bool
}

// tunQueue is one queue's fd.
type tunQueue struct {
	dev *offloadTUN
	fd  int
	mu  sync.RWMutex // held shared by every syscall, exclusively by Close
}

// OpenTUNOffload creates (or attaches to) TUN device name with a
// virtio-net header and TCP segmentation (IPv4 and IPv6) and checksum
// offload, with the given number of queues (1 or more; see Queues). It
// fails where the kernel does not support them; callers fall back to
// OpenTUN.
func OpenTUNOffload(name string, queues int) (Device, error) {
	if queues < 1 {
		return nil, fmt.Errorf("TUN %q: %d queues: want 1 or more", name, queues)
	}
	d := &offloadTUN{name: name, wakefd: -1}
	fail := func(err error) (Device, error) {
		for _, q := range d.queues {
			unix.Close(q.fd)
		}
		if d.wakefd >= 0 {
			unix.Close(d.wakefd)
		}
		return nil, err
	}
	flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if queues > 1 {
		flags |= unix.IFF_MULTI_QUEUE
	}
	for range queues {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fail(fmt.Errorf("open TUN %q: /dev/net/tun: %w", name, err))
		}
		d.queues = append(d.queues, &tunQueue{dev: d, fd: fd})
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return fail(fmt.Errorf("open TUN %q: %w", name, err))
		}
		ifr.SetUint16(flags)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			return fail(openError(name, err))
		}
		d.name = ifr.Name()
		// TSO6 too: nat rewrites an IPv6 super-packet as an IPv4 one (the
		// addresses and the pseudo-header share of the partial
		// checksum) and splits it when it parks it (segmentOf).
		if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, unix.TUN_F_CSUM|unix.TUN_F_TSO4|unix.TUN_F_TSO6); err != nil {
			return fail(fmt.Errorf("TUN %q: offload (TUNSETOFFLOAD): %w", name, err))
		}
	}
	// The wake socket is made now, in the TUN's network namespace, and
	// bound to it by index.
	var err error
	if d.wakefd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0); err != nil {
		return fail(fmt.Errorf("TUN %q: wake socket: %w", name, err))
	}
	if err := d.bindWake(); err != nil {
		return fail(fmt.Errorf("TUN %q: wake socket: %w", name, err))
	}
	return d, nil
}

// Queues returns the device's queues, each a Device of its own for one
// pump; a device without queues is its own only queue.
func Queues(dev Device) []Device {
	if d, ok := dev.(*offloadTUN); ok {
		out := make([]Device, len(d.queues))
		for i, q := range d.queues {
			out[i] = q
		}
		return out
	}
	return []Device{dev}
}

func (d *offloadTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return d.queues[0].Read(bufs, sizes, offset)
}

func (d *offloadTUN) Write(bufs [][]byte, offset int) (int, error) {
	return d.queues[0].Write(bufs, offset)
}

func (d *offloadTUN) BatchSize() int  { return offloadBatch }
func (d *offloadTUN) VnetHdrLen() int { return vnetHdrLen }
func (d *offloadTUN) Name() string    { return d.name }

// Read blocks in read(2) until a packet comes, and returns it alone:
// batching reads would save no syscall (a TUN hands over one packet per
// read), only add the latency of the batch.
func (q *tunQueue) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	q.mu.RLock()
	defer q.mu.RUnlock()
	d := q.dev
	for {
		if d.closed.Load() {
			return 0, ErrClosed
		}
		m, err := unix.Read(q.fd, bufs[0][offset-vnetHdrLen:])
		switch {
		case d.closed.Load():
			return 0, ErrClosed // woken by Close (or a last packet: dropped)
		case err == nil && m >= vnetHdrLen:
			sizes[0] = m - vnetHdrLen
			return 1, nil
		case err == nil, errors.Is(err, unix.EINTR):
			// a runt (nothing to hand on), or a signal: read again
		default:
			return 0, fmt.Errorf("read %s: %w", d.name, err)
		}
	}
}

func (q *tunQueue) Write(bufs [][]byte, offset int) (int, error) {
	q.mu.RLock()
	defer q.mu.RUnlock()
	if q.dev.closed.Load() {
		return 0, ErrClosed
	}
	for i, b := range bufs {
		for {
			err := rawWrite(q.fd, b[offset-vnetHdrLen:])
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return i, fmt.Errorf("write %s: %w", q.dev.name, err)
			}
			break
		}
	}
	return len(bufs), nil
}

func (q *tunQueue) BatchSize() int  { return offloadBatch }
func (q *tunQueue) VnetHdrLen() int { return vnetHdrLen }
func (q *tunQueue) Name() string    { return q.dev.name }

// Close closes the whole device.
func (q *tunQueue) Close() error { return q.dev.Close() }

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

// Close wakes every Read sleeping in read(2), waits for every syscall in
// progress, then closes the descriptors. It is idempotent.
func (d *offloadTUN) Close() error {
	d.closing.Lock()
	defer d.closing.Unlock()
	if d.closed.Swap(true) {
		return nil
	}
	stop, raised := make(chan struct{}), make(chan bool, 1)
	go func() { raised <- d.wake(stop) }()
	for _, q := range d.queues {
		q.mu.Lock()
		defer q.mu.Unlock()
	}
	close(stop)
	var errs []error
	if <-raised {
		errs = append(errs, os.NewSyscallError("set TUN down again", d.setUp(false)))
	}
	for _, q := range d.queues {
		errs = append(errs, os.NewSyscallError("close", unix.Close(q.fd)))
	}
	errs = append(errs, os.NewSyscallError("close", unix.Close(d.wakefd)))
	return errors.Join(errs...)
}

// wakeAddr is where Close's wake-up datagrams go (the port varies). They
// never leave the host: the socket is bound to the TUN, so the kernel queues
// them on the TUN itself, for the Reads they wake (which drop them).
var wakeAddr = [4]byte{198, 19, 255, 254}

// wake sends the TUN datagrams until stop is closed: every 50 ms with one
// queue (a read returning at that moment may miss one); with more, each to
// another port, every 2 ms, since the kernel picks a datagram's queue by its
// flow hash. A TUN that is down queues nothing: after a failed send wake
// sets the link up, and it reports whether it did, so that Close can set it
// down again.
func (d *offloadTUN) wake(stop <-chan struct{}) (raised bool) {
	every := 50 * time.Millisecond
	if len(d.queues) > 1 {
		every = 2 * time.Millisecond
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for port := 9; ; port = port%60000 + 1 {
		to := &unix.SockaddrInet4{Addr: wakeAddr, Port: port}
		if err := unix.Sendto(d.wakefd, []byte{0}, 0, to); err != nil && !raised {
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
