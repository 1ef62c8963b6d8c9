// Package tuntest is an in-memory tun.Device for tests (as wireguard-go's
// tun/tuntest): tests put packets "from the kernel" with Inject and receive
// what was written on Out. It lets the whole pipeline run without root,
// including input that a real TUN would never deliver.
package tuntest

import (
	"sync"

	"holdfast/stack/tun"
)

// MemDevice is an in-memory tun.Device (as wireguard-go's tun/tuntest): tests put
// packets "from the kernel" with Inject and receive what the pump wrote on
// Out. It lets the whole pipeline run without root, including input that a
// real TUN would never deliver (the kernel drops malformed IP first).
type MemDevice struct {
	name   string
	in     chan []byte
	Out    chan []byte
	closed chan struct{}
	once   sync.Once
}

// NewMemDevice returns a device whose queues hold up to depth packets.
func NewMemDevice(name string, depth int) *MemDevice {
	return &MemDevice{
		name:   name,
		in:     make(chan []byte, depth),
		Out:    make(chan []byte, depth),
		closed: make(chan struct{}),
	}
}

// Inject queues a copy of pkt to be read by the pump. It blocks when the
// queue is full and returns false once the device is closed.
func (d *MemDevice) Inject(pkt []byte) bool {
	select {
	case d.in <- append([]byte(nil), pkt...):
		return true
	case <-d.closed:
		return false
	}
}

func (d *MemDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case p := <-d.in:
		sizes[0] = copy(bufs[0][offset:], p)
		return 1, nil
	case <-d.closed:
		return 0, tun.ErrClosed
	}
}

func (d *MemDevice) Write(bufs [][]byte, offset int) (int, error) {
	for i, b := range bufs {
		select {
		case d.Out <- append([]byte(nil), b[offset:]...):
		case <-d.closed:
			return i, tun.ErrClosed
		}
	}
	return len(bufs), nil
}

func (d *MemDevice) BatchSize() int  { return 1 }
func (d *MemDevice) VnetHdrLen() int { return 0 }
func (d *MemDevice) Name() string    { return d.name }

// Close unblocks readers and writers; it is idempotent.
func (d *MemDevice) Close() error {
	d.once.Do(func() { close(d.closed) })
	return nil
}
