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
// refusal is counted, none costs a backend connection, and established
// connections keep working during it.
// The flood comes from one client address: the per-prefix budgets are raised
// out of the way here (TestRecoveryFloodPrefixBudget tests them).
func TestRecoveryFloodIsRateLimited(t *testing.T) {
	const rate = 200
	l := NewLab(t, lab.Options{Directors: 1, Reals: 3})
	if err := l.ServeBackends(); err != nil {
		t.Fatal(err)
	}
	args := []string{"--service", "tcp:" + vipHTTP.String(), "--scheduler", "rr", "--recovery-rate", strconv.Itoa(rate),
		"--recovery-prefix-inflight", "4096", "--recovery-prefix-flows", "1000000"}
	for _, r := range l.Reals {
		args = append(args, "--real", netip.AddrPortFrom(r.Addr, lab.DefaultHTTPPort).String())
	}
	StartDirector(t, l.Directors[0].NS, directorArgs(l.Directors[0], args...)...)

	conns := dialHTTP(t, l.Client, 20)
	requireNoErrors(t, "before the flood", eachConn(conns, requests(1)))

	const forged = 5000
	start := time.Now()
	flood := floodForged(l, forged)
	// Established connections keep working while it lasts.
	requireNoErrors(t, "during the flood", eachConn(conns, requests(5)))
	if err := <-flood; err != nil {
		t.Fatalf("flood: %v", err)
	}
	c := directorCounters(t, l.Directors[0])
	elapsed := time.Since(start)
	limit := int(rate*elapsed.Seconds()) + rate // the bucket starts full: one second's worth
	t.Logf("flood of %d forged segments over %v: %d misses (limit %d), %d refused by the rate, %d challenges, %d reset by the client's host, %d recoveries; drops %v",
		forged, elapsed.Round(time.Millisecond), c.Misses, limit, c.Drops["recovery_rate"], c.ChallengesSent, c.ChallengeResets, c.RecoveryStarted, nonZero(c.Drops))
	if c.Misses > limit {
		t.Fatalf("%d misses started, over the limit %d", c.Misses, limit)
	}
	if c.Misses < rate/2 {
		t.Fatalf("only %d misses started: the flood did not reach the director", c.Misses)
	}
	// Every forged segment is either a miss, parked behind one (same
	// random port twice), or refused and counted.
	refused := int(c.Drops["recovery_rate"] + c.Drops["recovery_busy"])
	if refused == 0 || c.Misses+refused > forged {
		t.Fatalf("misses %d + refused %d for %d forged segments", c.Misses, refused, forged)
	}
	// None of them cost a backend connection: the client's host has no
	// connection on the forged tuples and answers the challenge with a
	// reset.
	if c.RecoveryStarted != 0 || c.ChallengeResets == 0 {
		t.Fatalf("%d recoveries started for forged segments, %d challenges reset; want 0 and some", c.RecoveryStarted, c.ChallengeResets)
	}
}

// A flood of forged segments from one client prefix is held to that
// prefix's budget of misses in flight, every refusal is counted,
// established connections keep working, and no forged segment costs a
// backend connection or a flow (the challenge stops them).
func TestRecoveryFloodPrefixBudget(t *testing.T) {
	const prefixFlows = 100
	l := NewLab(t, lab.Options{Directors: 1, Reals: 3})
	if err := l.ServeBackends(); err != nil {
		t.Fatal(err)
	}
	args := []string{"--service", "tcp:" + vipHTTP.String(), "--scheduler", "rr",
		"--recovery-prefix-inflight", "16", "--recovery-prefix-flows", strconv.Itoa(prefixFlows),
		"--timeout-recovered-unconfirmed", "2s"}
	for _, r := range l.Reals {
		args = append(args, "--real", netip.AddrPortFrom(r.Addr, lab.DefaultHTTPPort).String())
	}
	StartDirector(t, l.Directors[0].NS, directorArgs(l.Directors[0], args...)...)

	conns := dialHTTP(t, l.Client, 20)
	requireNoErrors(t, "before the flood", eachConn(conns, requests(1)))
	before := directorCounters(t, l.Directors[0])

	const forged = 5000
	flood := floodForged(l, forged)
	requireNoErrors(t, "during the flood", eachConn(conns, requests(5)))
	if err := <-flood; err != nil {
		t.Fatalf("flood: %v", err)
	}
	c := directorCounters(t, l.Directors[0])
	t.Logf("flood of %d forged segments: %d misses, %d challenges, %d reset by the client's host, %d recoveries; drops %v",
		forged, c.Misses, c.ChallengesSent, c.ChallengeResets, c.RecoveryStarted, nonZero(c.Drops))
	if c.Misses == 0 {
		t.Fatal("no miss started: the flood did not reach the director")
	}
	refused := int(c.Drops["recovery_prefix_busy"] + c.Drops["recovery_prefix_flows"])
	if refused == 0 || c.Misses+refused > forged {
		t.Fatalf("misses %d + refused by the prefix budgets %d for %d forged segments", c.Misses, refused, forged)
	}
	// No forged segment cost a backend connection or left a flow: the
	// challenge stopped every one.
	if c.RecoveryStarted != 0 || c.Flows > before.Flows {
		t.Fatalf("%d recoveries started, %d flows (%d before the flood): want none for forged segments", c.RecoveryStarted, c.Flows, before.Flows)
	}
	requireNoErrors(t, "after the flood", eachConn(conns, requests(1)))
}

// floodForged sends n forged segments with data (random source ports, seq
// and ack) from the client's address to the VIP, through a raw socket in the
// client namespace, and reports the end of it on the channel.
func floodForged(l *lab.Lab, n int) <-chan error {
	rng := rand.New(rand.NewPCG(7, 7))
	flood := make(chan error, 1)
	go func() {
		flood <- l.Client.Do(func() error {
			fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
			if err != nil {
				return err
			}
			defer syscall.Close(fd)
			to := &syscall.SockaddrInet4{Addr: lab.VIP.As4()}
			for range n {
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
	return flood
}
