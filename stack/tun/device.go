package tun

import (
	"errors"
	"fmt"
	"os"

	"github.com/songgao/water"
	"golang.org/x/sys/unix"
)

// Device is a packet device in the shape of wireguard-go's tun.Device: reads
// and writes move batches of whole IP packets, each starting at offset in its
// buffer. A batch of 1 is valid; BatchSize says how many a call may move.
//
// A device with a virtio-net header (VnetHdrLen() == 10) keeps it in the
// VnetHdrLen bytes before offset: Read fills them, Write sends them, so the
// caller keeps a packet's header or writes a zeroed one for a new packet.
type Device interface {
	// Read reads up to len(bufs) packets into bufs[i][offset:], setting
	// sizes[i], and returns how many it read. It blocks until at least one
	// packet is available or the device is closed (then it returns an error).
	Read(bufs [][]byte, sizes []int, offset int) (int, error)
	// Write writes each bufs[i][offset-VnetHdrLen():] as one packet. It is
	// safe for concurrent use.
	Write(bufs [][]byte, offset int) (int, error)
	BatchSize() int
	VnetHdrLen() int
	Name() string
	Close() error
}

// WritePacket writes one packet that has no virtio-net header yet (from the
// netstack, the recovery engine): it prepends a zeroed one if the device
// wants it.
func WritePacket(dev Device, pkt []byte) error {
	hdr := dev.VnetHdrLen()
	b := pkt
	if hdr > 0 {
		b = make([]byte, hdr+len(pkt))
		copy(b[hdr:], pkt)
	}
	_, err := dev.Write([][]byte{b}, hdr)
	return err
}

// ErrClosed is returned by a closed device.
var ErrClosed = errors.New("device closed")

// tunDevice is a Linux TUN opened through water, one packet per call.
type tunDevice struct {
	ifc *water.Interface
}

// OpenTUN creates (or attaches to) the TUN device name. It needs
// CAP_NET_ADMIN in the current network namespace.
func OpenTUN(name string) (Device, error) {
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return nil, fmt.Errorf("open TUN %q: /dev/net/tun is not available: %w", name, err)
	}
	ifc, err := water.New(water.Config{
		DeviceType:             water.TUN,
		PlatformSpecificParams: water.PlatformSpecificParams{Name: name},
	})
	if err != nil {
		return nil, openError(name, err)
	}
	return &tunDevice{ifc: ifc}, nil
}

// ErrInUse is wrapped by an open error when another process holds the TUN
// device (TUNSETIFF's EBUSY): another director on the same --tun.
var ErrInUse = errors.New("in use by another process")

// openError says why attaching to TUN name failed: in use, or not allowed,
// as such.
func openError(name string, err error) error {
	switch {
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("TUN %q is %w (another holdfast on this --tun?)", name, ErrInUse)
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("open TUN %q (needs CAP_NET_ADMIN): %w", name, err)
	}
	return fmt.Errorf("open TUN %q: %w", name, err)
}

func (d *tunDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := d.ifc.Read(bufs[0][offset:])
	if err != nil {
		return 0, err
	}
	sizes[0] = n
	return 1, nil
}

func (d *tunDevice) Write(bufs [][]byte, offset int) (int, error) {
	for i, b := range bufs {
		if _, err := d.ifc.Write(b[offset:]); err != nil {
			return i, err
		}
	}
	return len(bufs), nil
}

func (d *tunDevice) BatchSize() int  { return 1 }
func (d *tunDevice) VnetHdrLen() int { return 0 }
func (d *tunDevice) Name() string    { return d.ifc.Name() }
func (d *tunDevice) Close() error    { return d.ifc.Close() }
