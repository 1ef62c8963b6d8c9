package integration

import (
	"math/rand/v2"
	"net/netip"
	"strconv"
	"syscall"
	"testing"
	"time"

	"holdfast/lab"
	"holdfast/nat/nattest"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Test (g): a flood of forged mid-stream segments (random source ports, each
// a "connection" the director never saw) is held to --recovery-rate, every
// refusal is counted, and established connections keep working during it.
func TestRecoveryFloodIsRateLimited(t *testing.T) {
	const rate = 200
	l := NewLab(t, lab.Options{Directors: 1, Reals: 3})
	if err := l.ServeBackends(); err != nil {
		t.Fatal(err)
	}
	args := []string{"--service", "tcp:" + vipHTTP.String(), "--scheduler", "rr", "--recovery-rate", strconv.Itoa(rate)}
	for _, r := range l.Reals {
		args = append(args, "--real", netip.AddrPortFrom(r.Addr, lab.DefaultHTTPPort).String())
	}
	StartDirector(t, l.Directors[0].NS, directorArgs(l.Directors[0], args...)...)

	conns := dialHTTP(t, l.Client, 20)
	requireNoErrors(t, "before the flood", eachConn(conns, requests(1)))

	// The flood: forged segments with data from random ports, sent from the
	// client namespace through a raw socket.
	const forged = 5000
	rng := rand.New(rand.NewPCG(7, 7))
	start := time.Now()
	flood := make(chan error, 1)
	go func() {
		flood <- l.Client.Do(func() error {
			fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
			if err != nil {
				return err
			}
			defer syscall.Close(fd)
			to := &syscall.SockaddrInet4{Addr: lab.VIP.As4()}
			for range forged {
				src := netip.AddrPortFrom(lab.ClientAddr, uint16(1024+rng.IntN(28000)))
				pkt := nattest.TCP4(src.String(), vipHTTP.String(), header.TCPFlagAck|header.TCPFlagPsh,
					rng.Uint32(), rng.Uint32(), []byte("GET / HTTP/1.1\r\nHost: forged\r\n\r\n"))
				if err := syscall.Sendto(fd, pkt, 0, to); err != nil {
					return err
				}
			}
			return nil
		})
	}()
	// Established connections keep working while it lasts.
	requireNoErrors(t, "during the flood", eachConn(conns, requests(5)))
	if err := <-flood; err != nil {
		t.Fatalf("flood: %v", err)
	}
	c := directorCounters(t, l.Directors[0])
	elapsed := time.Since(start)
	limit := int(rate*elapsed.Seconds()) + rate // the bucket starts full: one second's worth
	t.Logf("flood of %d forged segments over %v: %d recoveries started (limit %d), %d refused by the rate, drops %v",
		forged, elapsed.Round(time.Millisecond), c.RecoveryStarted, limit, c.Drops["recovery_rate"], nonZero(c.Drops))
	if c.RecoveryStarted > limit {
		t.Fatalf("%d recoveries started, over the limit %d", c.RecoveryStarted, limit)
	}
	if c.RecoveryStarted < rate/2 {
		t.Fatalf("only %d recoveries started: the flood did not reach the director", c.RecoveryStarted)
	}
	// Every forged segment is either a recovery, parked behind one (same
	// random port twice), or refused and counted.
	refused := int(c.Drops["recovery_rate"] + c.Drops["recovery_busy"])
	if refused == 0 || c.RecoveryStarted+refused > forged {
		t.Fatalf("recoveries %d + refused %d for %d forged segments", c.RecoveryStarted, refused, forged)
	}
}
