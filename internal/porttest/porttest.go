// Package porttest finds free ports for tests. It is for tests only: the
// product links none of it.
package porttest

import (
	"net"
	"testing"
)

// UDP is a UDP port of 127.0.0.1 nothing listens on now (another process
// may take it before the test binds it; tests bind at once).
func UDP(t testing.TB) uint16 {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}
