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
	// outside the namespace, and the listeners must be inside. Without
	// timestamps and SACK the tap rewrites the SYN's options: the kernel
	// checks the checksum the tap computed.
	for _, fam := range families {
		for i, opts := range []bool{true, false} {
			func() {
				local := netip.AddrPortFrom(fam.rec, 20000+uint16(i))
				ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(fam.real))
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				hs, err := dialOnce(ctx, n, wire.DialOptions{Local: local, Remote: fam.real, Timestamps: opts, SACK: opts, WScale: 7, MSS: 1400})
				if err != nil {
					t.Fatalf("%s, options %v: dial the kernel: %v", fam.name, opts, err)
				}
				if hs.AckSeq != hs.ISS+1 || hs.AckAck != hs.IRS+1 || hs.TS != opts || hs.SACKPermitted != opts || hs.PeerWScale < 0 {
					t.Fatalf("%s, options %v: handshake %+v", fam.name, opts, hs)
				}
				if err := ln.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
					t.Fatal(err)
				}
				c, err := ln.AcceptTCP()
				if err != nil {
					t.Fatalf("%s, options %v: the kernel accepted no connection: %v", fam.name, opts, err)
				}
				defer c.Close()
				if got := c.RemoteAddr().(*net.TCPAddr).AddrPort(); got != local {
					t.Errorf("%s: the kernel's connection is from %s, want %s", fam.name, got, local)
				}
			}()
		}
	}
}

func ipNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}
