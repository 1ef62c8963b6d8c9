package tun

import (
	"errors"
	"os"
)

// isClosedErr reports whether err comes from using a closed file.
func isClosedErr(err error) bool {
	return errors.Is(err, os.ErrClosed)
}

// NeedsCsum reports whether a packet's virtio-net header (the VnetHdrLen
// bytes before it) says its TCP/UDP checksum is only the pseudo-header sum.
func NeedsCsum(vnetHdr []byte) bool { return len(vnetHdr) > 0 && vnetHdr[0]&vnetNeedsCsum != 0 }

// IsClosed reports whether err means the device was closed: a clean stop.
func IsClosed(err error) bool { return errors.Is(err, ErrClosed) || isClosedErr(err) }
