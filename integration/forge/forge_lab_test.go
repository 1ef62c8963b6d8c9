package forge_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"holdfast/integration/forge"
	"holdfast/lab"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestSendThroughLab sends a small blind attack and a small flood from the
// lab's client namespace and reads them in director A's namespace (the VIP
// made local there, a raw TCP socket reading what arrives): every segment
// crosses the router with its spoofed source intact, its checksums valid.
// Needs root.
func TestSendThroughLab(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root for a namespace lab and raw sockets (CI runs as root)")
	}
	l, err := lab.New(lab.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
	d := l.Directors[0]
	if _, err := d.IP("addr", "add", netip.PrefixFrom(lab.VIP, 32).String(), "dev", "lo"); err != nil {
		t.Fatal(err)
	}
	var rfd int
	if err := d.Do(func() (err error) {
		rfd, err = syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, syscall.IPPROTO_TCP)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(rfd)
	syscall.SetsockoptInt(rfd, syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4<<20)
	tv := syscall.NsecToTimeval(int64(time.Second))
	if err := syscall.SetsockoptTimeval(rfd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}

	snd, err := forge.Open(l.Client)
	if err != nil {
		t.Fatal(err)
	}
	defer snd.Close()
	vip := netip.AddrPortFrom(lab.VIP, 80)
	victims := []forge.Tuple{
		{Client: netip.AddrPortFrom(lab.ClientAddr, 40001), VIP: vip},
		{Client: netip.AddrPortFrom(lab.ClientAddr, 40002), VIP: vip},
		{Client: netip.AddrPortFrom(lab.ClientAddr, 40003), VIP: vip},
	}
	ctx := context.Background()
	blind, err := snd.Blind(ctx, forge.Blind{Victims: victims, Rounds: 2, Rand: rand.New(rand.NewPCG(1, 1)), Limits: forge.Limits{Rate: 1000}})
	if err != nil || blind.Sent != 30 {
		t.Fatalf("blind: sent %d of 30: %v", blind.Sent, err)
	}
	exclude := []netip.Addr{lab.ClientAddr, lab.ClientGateway}
	flood, err := snd.Flood(ctx, forge.Flood{Sources: lab.ClientPrefix, Exclude: exclude, Dst: vip,
		Rand: rand.New(rand.NewPCG(2, 2)), Limits: forge.Limits{Rate: 2000, Max: 200, Duration: 5 * time.Second}})
	if err != nil || flood.Sent != 200 {
		t.Fatalf("flood: sent %d of 200: %v", flood.Sent, err)
	}

	byFlags := map[header.TCPFlags]int{}
	victimPort := map[uint16]bool{40001: true, 40002: true, 40003: true}
	floodSrcs := map[tcpip.Address]bool{}
	blindGot, floodGot := 0, 0
	buf := make([]byte, 65536)
	for blindGot < 30 || floodGot < 200 {
		n, _, err := syscall.Recvfrom(rfd, buf, 0)
		if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINTR) {
			t.Fatalf("received %d of 30 blind and %d of 200 flood segments, then nothing for 1s", blindGot, floodGot)
		}
		if err != nil {
			t.Fatal(err)
		}
		ip := header.IPv4(buf[:n])
		if !ip.IsValid(n) || ip.DestinationAddress() != tcpip.AddrFrom4(lab.VIP.As4()) {
			continue
		}
		tcp := header.TCP(ip.Payload())
		if tcp.DestinationPort() != 80 {
			continue
		}
		if !ip.IsChecksumValid() || !tcp.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksum.Checksum(tcp.Payload(), 0), uint16(len(tcp.Payload()))) {
			t.Fatalf("a segment arrived with a bad checksum: %x", buf[:n])
		}
		src := ip.SourceAddress()
		switch {
		case src == tcpip.AddrFrom4(lab.ClientAddr.As4()) && victimPort[tcp.SourcePort()]:
			blindGot++
			byFlags[tcp.Flags()]++
		case src == tcpip.AddrFrom4(lab.ClientAddr.As4()) || src == tcpip.AddrFrom4(lab.ClientGateway.As4()):
			t.Fatalf("flood from an excluded source %v", src)
		case lab.ClientPrefix.Contains(netip.AddrFrom4(src.As4())):
			if tcp.Flags() != header.TCPFlagAck|header.TCPFlagPsh || string(tcp.Payload()) != string(forge.DefaultPayload) {
				t.Fatalf("flood segment flags %v payload %q", tcp.Flags(), tcp.Payload())
			}
			floodGot++
			floodSrcs[src] = true
		}
	}
	for _, k := range forge.Kinds {
		if byFlags[k.Flags()] != 6 {
			t.Errorf("%v: %d arrived, want 6 (2 rounds of 3 victims); all: %v", k, byFlags[k.Flags()], byFlags)
		}
	}
	// 200 draws from 252 addresses: far more than 50 distinct.
	if len(floodSrcs) < 50 {
		t.Errorf("flood used %d distinct sources", len(floodSrcs))
	}
	t.Logf("blind %d segments at %.0f/s, flood %d at %.0f/s from %d sources: all arrived in %s, checksums valid",
		blind.Sent, blind.Rate(), flood.Sent, flood.Rate(), len(floodSrcs), d.Name)
}
