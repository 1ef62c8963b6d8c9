package recovery

import (
	"bytes"
	"context"
	"net/netip"
	"testing"
	"time"

	"holdfast/balancer"
	"holdfast/internal/wire"
	"holdfast/nat"
	"holdfast/nat/nattest"

	"github.com/rs/zerolog"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// The engine with a real Director as its sink, the contract end to end: a
// trigger segment parks, the first real refuses, the Director picks the
// second and a new port, its handshake completes, and the parked segment is
// written translated for the recovered flow. Then a dial in flight at
// shutdown is reported and leaves nothing behind, with no RST to the client.
func TestEngineWithDirector(t *testing.T) {
	const (
		vip    = "198.18.100.1:80"
		client = "198.18.1.2:40000"
		rs1    = "198.18.10.11:8080"
		rs2    = "198.18.10.12:8080"
	)
	sched, err := balancer.NewScheduler("rr")
	if err != nil {
		t.Fatal(err)
	}
	svc := &balancer.Service{Proto: balancer.TCP, VIP: nattest.AP(vip), Scheduler: sched, Reals: []*balancer.Real{
		{Addr: nattest.AP(rs1), Weight: 1}, {Addr: nattest.AP(rs2), Weight: 1},
	}}
	fd := newFakeDialer(refuse, succeed, hang)
	written := make(chan []byte, 16)
	e := New(Config{}, fd, func(b []byte) { written <- b }, func() int64 { return 2 }, zerolog.Nop())
	// The reals and the client answer the Director's probes and challenge
	// as when the connection's real died: the miss goes on to a dial.
	pr := &nattest.Peers{
		VIPs:  map[netip.Addr]bool{nattest.AP(vip).Addr(): true},
		Reals: map[netip.Addr]bool{nattest.AP(rs1).Addr(): true, nattest.AP(rs2).Addr(): true},
	}
	d, err := nat.New(nat.Config{
		Emit:     pr.Emit,
		Services: []*balancer.Service{svc},
		Timeouts: nat.NewTimeouts(time.Minute, time.Minute, time.Minute),
		MaxFlows: 100,
		Recovery: nat.RecoveryConfig{
			Enabled: true, Dialer: e, Addrs: []netip.Addr{netip.MustParseAddr("198.18.200.1")},
			PortLo: 10000, PortHi: 10099, WScale: 7, MSS: 1460,
			Rate: 100, MaxInflight: 10, ParkBytes: 1 << 20, ParkFlowBytes: 1 << 16,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	pr.Handle = func(b []byte, now int64) { d.Handle(b, false, now) }
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- e.Run(ctx, d) }()
	defer func() {
		cancel()
		<-ran
	}()

	const psh = header.TCPFlagAck | header.TCPFlagPsh
	if v, _ := d.Handle(nattest.TCP4(client, vip, psh, 1000, 2000, []byte("GET /")), false, 1); v != wire.Park {
		t.Fatalf("trigger: %v, want park", v)
	}
	var out []byte
	select {
	case out = <-written:
	case <-time.After(10 * time.Second):
		t.Fatal("nothing written")
	}
	dials := fd.dialed()
	if len(dials) != 2 || dials[0].Remote != nattest.AP(rs1) || dials[1].Remote != nattest.AP(rs2) || dials[1].Local == dials[0].Local {
		t.Fatalf("dials %+v: want rs1, then rs2 from another port", dials)
	}
	// SeqDelta = 1000 - AckSeq (the fake's: the local port), AckDelta = 2000 - 9.
	want := nattest.TCP4(dials[1].Local.String(), rs2, psh, uint32(dials[1].Local.Port()), 9, []byte("GET /"))
	if !bytes.Equal(out, want) {
		t.Fatalf("flushed:\n got %x\nwant %x", out, want)
	}
	st := d.Stats()
	if st.RecoverySucceeded != 1 || st.RecoveryRetries[nat.FailRefused] != 1 || st.Inflight != 0 || st.ParkedBytes != 0 {
		t.Fatalf("stats %+v", st)
	}
	if f := d.Flows(2); len(f) != 1 || f[0].Kind != nat.KindRecovered || f[0].Real != nattest.AP(rs2) || f[0].Local != dials[1].Local {
		t.Fatalf("flows %+v", f)
	}

	// A dial in flight when the engine stops.
	if v, _ := d.Handle(nattest.TCP4("198.18.1.3:40001", vip, psh, 1, 1, []byte("GET /")), false, 3); v != wire.Park {
		t.Fatalf("second trigger: %v, want park", v)
	}
	<-fd.started
	<-fd.started
	<-fd.started // the third dial, which hangs
	cancel()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	ran <- nil // for the deferred wait
	st = d.Stats()
	if st.RecoveryFailed[nat.FailShutdown] != 1 || st.ClientResets != 0 || st.Inflight != 0 || st.ParkedBytes != 0 {
		t.Fatalf("after shutdown: %+v", st)
	}
	select {
	case b := <-written:
		t.Fatalf("wrote %x at shutdown", b)
	default:
	}
}
