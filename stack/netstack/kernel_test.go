package netstack

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"holdfast/internal/netnstest"
	"holdfast/internal/wire"
	"holdfast/stack/tun"

	"github.com/rs/zerolog"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestNetstackDialKernel dials Linux itself, over a TUN in a namespace of
// the test's own, from a recovery address of each family: the kernel's TCP
// accepts the stack's SYN and final ACK (checksums over either
// pseudo-header, the IPv6 header as the stack writes it), and its listener
// hands out an established connection. Needs root.
func TestNetstackDialKernel(t *testing.T) {
	netnstest.Enter(t)
	const name = "hfns0"
	dev, err := tun.OpenTUN(name)
	if err != nil {
		t.Fatal(err)
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	var recs []netip.Addr
	for _, fam := range families {
		recs = append(recs, fam.rec)
		// The reals' addresses are the kernel's, on the TUN (no DAD: the
		// address is usable at once); the recovery addresses are
		// routed into the TUN.
		a := &netlink.Addr{IPNet: ipNet(fam.real.Addr()), Flags: unix.IFA_F_NODAD}
		if err := netlink.AddrAdd(link, a); err != nil {
			t.Fatalf("add %s to %s: %v", fam.real.Addr(), name, err)
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(fam.rec), Scope: netlink.SCOPE_LINK}); err != nil {
			t.Fatalf("route %s dev %s: %v", fam.rec, name, err)
		}
	}
	n, err := New(recs, 1500, func(b []byte) {
		if err := tun.WritePacket(dev, b); err != nil {
			t.Errorf("write to the TUN: %v", err)
		}
	}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		bufs, sizes := [][]byte{make([]byte, 65535)}, []int{0}
		for {
			if _, err := dev.Read(bufs, sizes, 0); err != nil {
				return
			}
			// What the kernel sends besides the handshakes (router
			// solicitations, MLD on the TUN) is refused here.
			n.Inject(bufs[0][:sizes[0]], false)
		}
	}()
	t.Cleanup(func() { dev.Close(); <-read; n.Close() })

	// Not subtests: those run on other goroutines, whose threads are
	// outside the namespace, and the listeners must be inside.
	for _, fam := range families {
		func() {
			ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(fam.real))
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			hs, err := dialOnce(ctx, n, wire.DialOptions{Local: netip.AddrPortFrom(fam.rec, 20000), Remote: fam.real, Timestamps: true, SACK: true, WScale: 7, MSS: 1400})
			if err != nil {
				t.Fatalf("%s: dial the kernel: %v", fam.name, err)
			}
			if hs.AckSeq != hs.ISS+1 || hs.AckAck != hs.IRS+1 || !hs.TS || !hs.SACKPermitted || hs.PeerWScale < 0 {
				t.Fatalf("%s: handshake %+v", fam.name, hs)
			}
			if err := ln.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
				t.Fatal(err)
			}
			c, err := ln.AcceptTCP()
			if err != nil {
				t.Fatalf("%s: the kernel accepted no connection: %v", fam.name, err)
			}
			defer c.Close()
			if got := c.RemoteAddr().(*net.TCPAddr).AddrPort(); got != netip.AddrPortFrom(fam.rec, 20000) {
				t.Errorf("%s: the kernel's connection is from %s, want %s", fam.name, got, netip.AddrPortFrom(fam.rec, 20000))
			}
		}()
	}
}

func ipNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}
