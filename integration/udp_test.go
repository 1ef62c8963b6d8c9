package integration

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"holdfast/lab"
)

var vipUDP = netip.AddrPortFrom(lab.VIP, lab.DefaultUDPPort)

// udpEcho sends n datagrams on each of flows client sockets (one flow each)
// to the UDP VIP and requires each to come back exactly, from the VIP (the
// sockets are connected, so the kernel drops anything from another source).
// It returns the number of datagrams each real echoed during the call.
func udpEcho(t *testing.T, l *lab.Lab, flows, n int) map[string]int64 {
	t.Helper()
	before := map[string]int64{}
	for _, r := range l.Reals {
		before[r.Label] = r.Stats.UDPDatagrams.Load()
	}
	buf := make([]byte, 2048)
	for f := range flows {
		conn, err := l.Client.Dial("udp4", vipUDP.String())
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			msg := fmt.Appendf(nil, "flow %d datagram %d %s", f, i, bytes.Repeat([]byte{byte(i)}, i*10))
			if _, err := conn.Write(msg); err != nil {
				t.Fatalf("flow %d datagram %d: %v", f, i, err)
			}
			conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			m, err := conn.Read(buf)
			if err != nil {
				conn.Close()
				t.Fatalf("flow %d (%s): no echo of datagram %d: %v", f, conn.LocalAddr(), i, err)
			}
			if !bytes.Equal(buf[:m], msg) {
				t.Errorf("flow %d datagram %d: echo %q, want %q", f, i, buf[:m], msg)
			}
		}
		conn.Close()
	}
	got := map[string]int64{}
	for _, r := range l.Reals {
		if d := r.Stats.UDPDatagrams.Load() - before[r.Label]; d != 0 {
			got[r.Label] = d
		}
	}
	return got
}

// TestUDPEcho: three UDP flows of 50 datagrams through udp:VIP:5353 with rr:
// every datagram is echoed exactly, and each flow stays on its own real.
func TestUDPEcho(t *testing.T) {
	l := startLab(t, lab.Options{Reals: 3})
	d := l.Directors[0]
	args := append([]string{"--service", "udp:" + vipUDP.String(), "--scheduler", "rr"}, realFlags(l, lab.DefaultUDPPort)...)
	StartDirector(t, d.NS, directorArgs(d, args...)...)

	got := udpEcho(t, l, 3, 50)
	counts := make([]int64, 0, len(got))
	for _, n := range got {
		counts = append(counts, n)
	}
	if !slices.Equal(counts, []int64{50, 50, 50}) {
		t.Errorf("datagrams echoed per real %v, want 50 on each of the three", got)
	}
}
