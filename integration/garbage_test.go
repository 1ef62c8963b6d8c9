package integration

import (
	"bytes"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"

	"holdfast/balancer"
	"holdfast/internal/clock"
	"holdfast/internal/wire"
	"holdfast/nat"
	"holdfast/nat/nattest"
	"holdfast/stack/pump"
	"holdfast/stack/tun/tuntest"

	"github.com/rs/zerolog"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestGarbageThroughPacketLoop feeds the whole packet loop (in-memory device,
// pump, director) with garbage a real TUN would never deliver, interleaved
// with valid SYNs. Each kind of garbage lands on its own drop counter, and
// every valid packet still comes out, rewritten, in order.
func TestGarbageThroughPacketLoop(t *testing.T) {
	sched, err := balancer.NewScheduler("rr")
	if err != nil {
		t.Fatal(err)
	}
	svc := &balancer.Service{Proto: balancer.TCP, VIP: nattest.AP("198.18.100.1:80"), Scheduler: sched,
		Reals: []*balancer.Real{{Addr: nattest.AP("198.18.10.11:8080"), Weight: 1}}}
	d, err := nat.New(nat.Config{
		Services: []*balancer.Service{svc},
		Timeouts: nat.NewTimeouts(time.Minute, time.Minute, time.Minute),
		MaxFlows: 100000,
	})
	if err != nil {
		t.Fatal(err)
	}
	dev := tuntest.NewMemDevice("mem0", 64)
	clk := clock.New()
	clk.Update()
	p := pump.NewPump(dev, d, nil, clk, zerolog.Nop())
	done := make(chan error, 1)
	go func() { done <- p.Run() }()
	var stopOnce sync.Once
	stop := func() {
		stopOnce.Do(func() {
			dev.Close()
			if err := <-done; err != nil {
				t.Errorf("pump: %v", err)
			}
		})
	}
	t.Cleanup(stop)

	rng := rand.New(rand.NewPCG(1, 2))
	valid := nattest.TCP4("198.18.1.2:1000", "198.18.100.1:80", header.TCPFlagSyn, 1, 0, nil)
	garbage := []struct {
		reason nat.DropReason
		make   func() []byte
	}{
		{nat.DropMalformed, func() []byte { // random bytes, IP version 0..3
			b := make([]byte, 1+rng.IntN(1500))
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
			b[0] &= 0x3f
			return b
		}},
		{nat.DropTruncated, func() []byte { return bytes.Clone(valid[:1+rng.IntN(19)]) }},  // cut inside the IP header
		{nat.DropTruncated, func() []byte { return bytes.Clone(valid[:20+rng.IntN(20)]) }}, // cut inside the TCP header
		{nat.DropBadChecksum, func() []byte { // one flipped bit in the sequence or ack number
			b := bytes.Clone(valid)
			b[24+rng.IntN(8)] ^= 1 << rng.IntN(8)
			return b
		}},
		{nat.DropBadChecksum, func() []byte { b := bytes.Clone(valid); b[10] ^= 0x80; return b }}, // IP checksum
		{nat.DropUnknownProto, func() []byte {
			return nattest.IPv4(nattest.AP("198.18.1.2:1").Addr(), nattest.AP("198.18.100.1:1").Addr(), 132, make([]byte, 16))
		}},
	}
	want := map[nat.DropReason]uint64{}
	const rounds = 200
	for i := 0; i < rounds; i++ {
		for _, g := range garbage {
			if !dev.Inject(g.make()) {
				t.Fatal("device closed")
			}
			want[g.reason]++
		}
		// A valid SYN from a new client port: it must come out rewritten.
		port := uint16(2000 + i)
		syn := nattest.TCP4("198.18.1.2:"+strconv.Itoa(int(port)), "198.18.100.1:80", header.TCPFlagSyn, 1, 0, nil)
		dev.Inject(syn)
		select {
		case out := <-dev.Out:
			nattest.CheckChecksums(t, out)
			ip := header.IPv4(out)
			tcp := header.TCP(ip.Payload())
			if ip.DestinationAddress().String() != "198.18.10.11" || tcp.DestinationPort() != 8080 || tcp.SourcePort() != port {
				t.Fatalf("round %d: valid SYN came out as %x", i, out)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: the loop stopped forwarding after garbage", i)
		}
	}
	st := d.Stats()
	for _, r := range nat.DropReasons() {
		if st.Drop(r) != want[r] {
			t.Errorf("drop %v = %d, want %d", r, st.Drop(r), want[r])
		}
	}
	if st.FlowsCreated != rounds || st.Verdicts[wire.Forward] != rounds {
		t.Errorf("flows created %d, forwarded %d; want %d each", st.FlowsCreated, st.Verdicts[wire.Forward], rounds)
	}
	stop() // the pump counts a write after the device took it
	if ps := p.Stats(); ps.Read != uint64(rounds*(len(garbage)+1)) || ps.Written != rounds {
		t.Errorf("pump read %d wrote %d, want %d and %d", ps.Read, ps.Written, rounds*(len(garbage)+1), rounds)
	}
}
