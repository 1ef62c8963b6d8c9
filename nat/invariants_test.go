package nat

import (
	"bytes"
	"holdfast/nat/nattest"
	"net/netip"
	"strings"
	"testing"

	"holdfast/balancer"
	"holdfast/internal/wire"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

const vip2 = "198.18.100.2:80"

// tcpService is a TCP service on vip, rr over reals (weight 1).
func tcpService(t testing.TB, vip string, reals ...string) *balancer.Service {
	t.Helper()
	sch, err := balancer.NewScheduler("rr")
	if err != nil {
		t.Fatal(err)
	}
	s := &balancer.Service{Proto: balancer.TCP, VIP: ap(vip), Scheduler: sch}
	for _, r := range reals {
		s.Reals = append(s.Reals, &balancer.Real{Addr: ap(r), Weight: 1})
	}
	return s
}

// A packet to a VIP from a VIP, a recovery address or a real is forged: it
// is dropped as spoofed_source and opens no flow and no recovery.
func TestSpoofedSourceDropped(t *testing.T) {
	d, fr := newRecDirector(t)
	for _, src := range []string{"198.18.100.1:4000", local, "198.18.10.12:4000", "198.18.10.11:5353"} {
		for _, flags := range []header.TCPFlags{syn, psh} {
			if out := handle(t, d, tcp4(src, vip, flags, 1, 2, []byte("GET /")), 1); out != nil {
				t.Fatalf("from %s, flags %v: forwarded", src, flags)
			}
		}
	}
	st := d.Stats()
	if st.Drop(DropSpoofedSource) != 8 || st.Flows != 0 || len(fr.dials) != 0 {
		t.Fatalf("spoofed drops %d, flows %d, dials %d", st.Drop(DropSpoofedSource), st.Flows, len(fr.dials))
	}
}

// The index never overwrites an entry: an insert whose key is taken changes
// nothing and is counted.
func TestIndexNeverOverwrites(t *testing.T) {
	d := newTestDirector(t)
	handle(t, d, tcp4(client, vip, syn, 1, 0, nil), 1)
	f := d.flows.slab[0]
	ck, rk := d.clientKey(&f), d.realKey(&f)
	before := d.flows.indexLen()
	other := func(a string) endpoint { return endpointOf(ap(a)) }
	for _, keys := range [][2]fkey{
		{ck, fkey{other(rs2), f.Client, f.Proto}},                                        // same client key
		{fkey{f.Client, other(vip2), f.Proto}, rk},                                       // same real key
		{rk, fkey{other(rs2), rk.src, f.Proto}},                                          // its client key is f's real key
		{fkey{f.Client, other(vip2), f.Proto}, ck},                                       // its real key is f's client key
		{fkey{other(rs2), other(vip2), f.Proto}, fkey{other(rs2), other(vip2), f.Proto}}, // both its keys the same
	} {
		if _, ok := d.flows.insert(flow{Proto: f.Proto, Client: f.Client, svc: f.svc, real: 1}, keys[0], keys[1]); ok {
			t.Fatalf("inserted a flow with keys %+v over %+v", keys, f)
		}
	}
	// The Director counts a refusal: a flow of the same client to rs2.
	if _, ok := d.insertFlow(flow{Proto: f.Proto, Client: f.Client, svc: f.svc, real: 1}); ok {
		t.Fatalf("inserted a second flow of the client's key")
	}
	if d.flows.indexLen() != before || d.flows.n != 1 || d.Stats().IndexRefused != 1 {
		t.Fatalf("index %d entries (was %d), %d flows, refused %d", d.flows.indexLen(), before, d.flows.n, d.Stats().IndexRefused)
	}
	slot, side, ok := d.flows.lookup(Key{protoTCP, ap(client), ap(vip)})
	if !ok || slot != 0 || side != sideClient || d.realOf(&d.flows.slab[0]) != ap(rs1) {
		t.Fatalf("the first flow's entry changed: %d %d %v", slot, side, ok)
	}
}

// A new flow never takes the real-side tuple of a recovery dial in progress
// (it would take the dial's SYN-ACK), even when the source check is passed
// by (the client path called directly).
func TestNewFlowNotOnDialTuple(t *testing.T) {
	d, fr := newRecDirector(t)
	handle(t, d, tcp4(client, vip, psh, 100, 200, []byte("GET /")), 1)
	if len(fr.dials) != 1 || fr.dials[0].o.Remote != ap(rs1) {
		t.Fatalf("dials %+v", fr.dials)
	}
	d.SetDown(6, ap(vip), ap(rs2), true)
	d.SetDown(6, ap(vip), ap(rs3), true)
	var p packet
	b := tcp4(local, vip, syn, 1, 0, nil)
	if p.decodeIP(b) != DropNone {
		t.Fatal("decode")
	}
	if v, r, _ := d.fromClient(&p, 1); v != wire.Drop || r != DropTupleClash {
		t.Fatalf("SYN from the dial's local tuple: %v %v", v, r)
	}
	if d.Stats().Flows != 0 {
		t.Fatal("a flow took the dial's tuple")
	}
}

// A SYN for a tuple whose recovery is in flight opens no flow (dropped,
// recovery_pending): the recovery installs its own flow and flushes the
// parked segments into it, not into a flow the SYN made.
func TestSynDuringRecovery(t *testing.T) {
	d, _ := newRecDirector(t)
	key := Key{protoTCP, ap(client), ap(vip)}
	handle(t, d, tcp4(client, vip, psh, 100, 200, []byte("GET /")), 1)
	if out := handle(t, d, tcp4(client, vip, syn, 7777, 0, nil), 1); out != nil {
		t.Fatal("SYN during a recovery of its tuple forwarded")
	}
	if st := d.Stats(); st.Drop(DropRecoveryPending) != 1 || st.Flows != 0 {
		t.Fatalf("pending drops %d, flows %d", st.Drop(DropRecoveryPending), st.Flows)
	}
	out := d.Recovered(key, wire.Handshake{AckSeq: 10, AckAck: 20}, 2)
	if want := tcp4(local, rs1, psh, 10, 20, []byte("GET /")); len(out) != 1 || !bytes.Equal(out[0], want) {
		t.Fatalf("flushed %x, want %x", out, want)
	}
	if f := d.Flows(2); len(f) != 1 || f[0].Kind != KindRecovered {
		t.Fatalf("flows %+v", f)
	}
}

// A flow adopted during a recovery of its tuple, whose real then goes down,
// is not re-homed while that recovery is in flight: no second recovery
// replaces the first, the parked bytes all come back to the budget, and the
// first recovery's end hands its parked segments to the adopted flow.
func TestRehomeDuringRecovery(t *testing.T) {
	d, fr := newRecDirector(t)
	key := Key{protoTCP, ap(client), ap(vip)}
	handle(t, d, tcp4(client, vip, psh, 100, 500, []byte("GET /")), 1)
	if out := handle(t, d, tcp4(rs2, client, psh, 500, 105, []byte("resp")), 1); out == nil {
		t.Fatal("the original real's packet not adopted")
	}
	handle(t, d, tcp4(client, vip, ack, 105, 504, nil), 1)
	d.SetDown(6, ap(vip), ap(rs2), true)
	if out := handle(t, d, tcp4(client, vip, psh, 105, 504, []byte("GET /2")), 2); out != nil {
		t.Fatal("the request was forwarded or re-homed")
	}
	st := d.Stats()
	if len(fr.dials) != 1 || st.Drop(DropRecoveryPending) != 1 || st.RehomeStarted != 0 || st.Flows != 1 {
		t.Fatalf("dials %d, pending drops %d, re-homes %d, flows %d", len(fr.dials), st.Drop(DropRecoveryPending), st.RehomeStarted, st.Flows)
	}
	out := d.Failed(key, FailRefused, 3) // the cancelled dial ends
	if want := tcp4(client, rs2, psh, 100, 500, []byte("GET /")); len(out) != 1 || !bytes.Equal(out[0], want) {
		t.Fatalf("flushed %x, want %x", out, want)
	}
	if st := d.Stats(); st.ParkedBytes != 0 || st.Inflight != 0 || st.ClientResets != 0 {
		t.Fatalf("after the recovery: parked %d, inflight %d, client resets %d", st.ParkedBytes, st.Inflight, st.ClientResets)
	}
	// Now the re-home goes ahead.
	if out := handle(t, d, tcp4(client, vip, psh, 105, 504, []byte("GET /2")), 4); out != nil || len(fr.dials) != 2 || d.Stats().RehomeStarted != 1 {
		t.Fatalf("re-home after the recovery: forwarded %v, dials %d", out != nil, len(fr.dials))
	}
}

// After a reload removes a service, its flows' client packets still reach
// their flow; only new flows are refused.
func TestReloadRemovedServiceKeepsFlows(t *testing.T) {
	d := newTestDirector(t)
	handle(t, d, tcp4(client, vip, syn, 1, 0, nil), 1)
	handle(t, d, tcp4(rs1, client, synack, 9, 2, nil), 1)
	if err := d.Reconfigure([]*balancer.Service{tcpService(t, vip2, rs2)}); err != nil {
		t.Fatal(err)
	}
	out := handle(t, d, tcp4(client, vip, psh, 2, 10, []byte("GET /")), 2)
	if want := tcp4(client, rs1, psh, 2, 10, []byte("GET /")); !bytes.Equal(out, want) {
		t.Fatalf("a live flow of a removed service:\n got %x\nwant %x", out, want)
	}
	if out := handle(t, d, tcp4(client2, vip, syn, 1, 0, nil), 2); out != nil || d.Stats().Drop(DropNoService) != 1 {
		t.Fatal("a new flow of a removed service was opened")
	}
}

// A real serving two VIPs: its packet with no flow is adopted for the VIP
// whose recovery for that client is pending; with none, it is dropped as
// ambiguous rather than answered from a VIP the client may not know.
func TestAdoptAmbiguous(t *testing.T) {
	fr, pr := &fakeDialer{}, &nattest.Peers{}
	d := newTestDirector(t, func(c *Config) {
		c.Services = append(c.Services, tcpService(t, vip2, rs1))
		c.Recovery = RecoveryConfig{
			Enabled: true, Dialer: fr, Addrs: []netip.Addr{netip.MustParseAddr(recAddr)},
			PortLo: 10000, PortHi: 10009, WScale: 7, MSS: 1460,
			Rate: 1000, MaxInflight: 10, ParkBytes: 1 << 20, ParkFlowBytes: 1 << 16,
		}
		c.Emit = pr.Emit
	})
	answer(d, pr)
	if out := handle(t, d, tcp4(rs1, client, psh, 7, 8, []byte("retransmit")), 1); out != nil {
		t.Fatalf("adopted with two VIPs to choose from: %x", out)
	}
	if st := d.Stats(); st.Drop(DropAdoptAmbiguous) != 1 || st.Adopted != 0 {
		t.Fatalf("ambiguous drops %d, adopted %d", st.Drop(DropAdoptAmbiguous), st.Adopted)
	}
	handle(t, d, tcp4(client, vip2, psh, 8, 7, []byte("GET /")), 2)
	if len(fr.dials) != 1 {
		t.Fatalf("dials %+v", fr.dials)
	}
	out := handle(t, d, tcp4(rs1, client, psh, 7, 8, []byte("retransmit")), 2)
	if want := tcp4(vip2, client, psh, 7, 8, []byte("retransmit")); !bytes.Equal(out, want) {
		t.Fatalf("adopted for the pending recovery's VIP:\n got %x\nwant %x", out, want)
	}
	if len(fr.cancelled) != 1 || fr.cancelled[0] != (Key{protoTCP, ap(client), ap(vip2)}) {
		t.Fatalf("cancelled %+v", fr.cancelled)
	}
	// A real of one live service is adopted as before.
	if out := handle(t, d, tcp4(rs2, client2, psh, 7, 8, []byte("x")), 3); out == nil {
		t.Fatal("the real of one service not adopted")
	}
}

// A re-home with no other real to move to keeps the flow on its real.
func TestRehomeNoOtherReal(t *testing.T) {
	for _, how := range []string{"none available", "no port"} {
		t.Run(how, func(t *testing.T) {
			d, fr := newRecDirector(t, func(c *RecoveryConfig) { c.PortHi = c.PortLo })
			handle(t, d, tcp4(client, vip, syn, 1000, 0, nil), 1)
			handle(t, d, tcp4(rs1, client, synack, 5000, 1001, nil), 1)
			handle(t, d, tcp4(client, vip, ack, 1001, 5001, nil), 1)
			switch how {
			case "none available":
				d.SetDown(6, ap(vip), ap(rs2), true)
				d.SetDown(6, ap(vip), ap(rs3), true)
			case "no port": // the one recovery port toward rs2 and rs3 taken
				handle(t, d, tcp4(client2, vip, psh, 1, 1, []byte("data")), 1) // dial to rs2 (rr)
				handle(t, d, tcp4("198.18.1.4:4000", vip, psh, 1, 1, []byte("data")), 1)
				if len(fr.dials) != 2 || fr.dials[0].o.Remote == ap(rs1) || fr.dials[1].o.Remote == ap(rs1) {
					t.Fatalf("dials %+v", fr.dials)
				}
			}
			dials := len(fr.dials)
			if err := d.RemoveReal(6, ap(vip), ap(rs1), true); err != nil {
				t.Fatal(err)
			}
			out := handle(t, d, tcp4(client, vip, psh, 1001, 5001, []byte("GET /")), 2)
			if want := tcp4(client, rs1, psh, 1001, 5001, []byte("GET /")); !bytes.Equal(out, want) {
				t.Fatalf("request:\n got %x\nwant %x", out, want)
			}
			st := d.Stats()
			if len(fr.dials) != dials || st.RehomeKept != 1 || st.RehomeStarted != 0 || st.ClientResets != 0 {
				t.Fatalf("dials %d, kept %d, started %d, resets %d", len(fr.dials), st.RehomeKept, st.RehomeStarted, st.ClientResets)
			}
			if f := d.Flows(2); len(f) != 1 || f[0].Real != ap(rs1) {
				t.Fatalf("flows %+v", f)
			}
		})
	}
}

// A parked GSO super-packet (longer than the MTU, partial checksum) leaves
// as MTU-sized segments with full checksums, the sequence advancing, PSH on
// the last only: it is written later without its virtio-net header.
func TestParkedGSOSegmented(t *testing.T) {
	d, _ := newRecDirector(t, func(c *RecoveryConfig) { c.MTU = 1500 })
	key := Key{protoTCP, ap(client), ap(vip)}
	payload := make([]byte, 4000)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	gso := asPartial(tcp4(client, vip, psh, 1000, 2000, payload, tsOpt(5, 6)...))
	if v, _ := d.Handle(gso, true, 1); v != wire.Park {
		t.Fatalf("verdict %v", v)
	}
	if st := d.Stats(); st.ParkedBytes != 4000+3*(20+32) {
		t.Fatalf("parked bytes %d", st.ParkedBytes)
	}
	out := d.Recovered(key, wire.Handshake{AckSeq: 10, AckAck: 20}, 2)
	if len(out) != 3 {
		t.Fatalf("%d segments, want 3", len(out))
	}
	var got []byte
	seq := uint32(10)
	for i, b := range out {
		checkChecksums(t, b)
		if len(b) > 1500 {
			t.Fatalf("segment %d: %d bytes", i, len(b))
		}
		tc := header.TCP(b[20:])
		if tc.SequenceNumber() != seq || tc.AckNumber() != 20 {
			t.Fatalf("segment %d: seq %d ack %d, want %d 20", i, tc.SequenceNumber(), tc.AckNumber(), seq)
		}
		if psh := tc.Flags()&header.TCPFlagPsh != 0; psh != (i == len(out)-1) {
			t.Fatalf("segment %d: PSH %v", i, psh)
		}
		seq += uint32(len(tc.Payload()))
		got = append(got, tc.Payload()...)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("the segments do not carry the payload in order")
	}
}

// Flows reads the table in chunks of at most flowsChunk slots per lock hold,
// and all of them in the end.
func TestFlowsInChunks(t *testing.T) {
	d := newTestDirector(t, func(c *Config) { c.MaxFlows = 3 * flowsChunk })
	n := flowsChunk + flowsChunk/2
	for i := range n {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(2 + i/60000), byte(i / 250 % 240)}), uint16(1024+i%250))
		if out := handle(t, d, tcp4(src.String(), vip, syn, 1, 0, nil), 1); out == nil {
			t.Fatalf("SYN %d dropped", i)
		}
	}
	chunk, next, more := d.flowsChunk(nil, 0, 1)
	if len(chunk) != flowsChunk || next != flowsChunk || !more {
		t.Fatalf("first chunk: %d flows, next %d, more %v", len(chunk), next, more)
	}
	if f := d.Flows(1); len(f) != n {
		t.Fatalf("%d flows, want %d", len(f), n)
	}
}

// Runtime changes and reloads refuse an address with two roles.
func TestOverlapOnRuntimeChanges(t *testing.T) {
	d, _ := newRecDirector(t)
	for _, real := range []string{"198.18.100.1:8080", recAddr + ":8080"} {
		if err := d.AddReal(balancer.TCP, ap(vip), ap(real), 1, 0); err == nil {
			t.Fatalf("AddReal %s: no error", real)
		}
	}
	for name, svcs := range map[string][]*balancer.Service{
		"real is a VIP":                {tcpService(t, vip, rs1), tcpService(t, vip2, "198.18.100.1:8080")},
		"real is a recovery address":   {tcpService(t, vip, recAddr+":8080")},
		"VIP is a recovery address":    {tcpService(t, recAddr+":80", rs1)},
		"VIP is a real of its service": {tcpService(t, vip, "198.18.100.1:81")},
	} {
		if err := d.Reconfigure(svcs); err == nil {
			t.Fatalf("%s: no error", name)
		} else if !strings.Contains(err.Error(), "also") {
			t.Fatalf("%s: %v", name, err)
		}
	}
	// Nothing was applied.
	if svcs := d.Services(); len(svcs) != 2 || len(svcs[0].Reals) != 3 {
		t.Fatalf("services %+v", svcs)
	}
}

// Shutdown with several clients parked: no RST for any of them, and every
// parked byte, port and gate given back.
func TestShutdownParkedClientsNoReset(t *testing.T) {
	d, fr := newRecDirector(t)
	clients := []string{client, client2, "198.18.1.4:40002"}
	for _, c := range clients {
		for i := range 3 {
			if v, _ := d.Handle(tcp4(c, vip, psh, uint32(100+5*i), 200, []byte("GET /")), false, 1); v != wire.Park {
				t.Fatalf("%s segment %d: %v", c, i, v)
			}
		}
	}
	if len(fr.dials) != len(clients) {
		t.Fatalf("dials %+v", fr.dials)
	}
	for _, c := range clients {
		if out := d.Failed(Key{protoTCP, ap(c), ap(vip)}, FailShutdown, 2); len(out) != 0 {
			t.Fatalf("%s: wrote %x at shutdown", c, out)
		}
	}
	st := d.Stats()
	if st.ClientResets != 0 || st.RecoveryFailed[FailShutdown] != 3 || st.ParkedBytes != 0 || st.Inflight != 0 ||
		len(d.rec.ports.inUse) != 0 || len(d.rec.dialing) != 0 {
		t.Fatalf("after shutdown: %+v, ports %v, gate %v", st, d.rec.ports.inUse, d.rec.dialing)
	}
}

// A recovered flow whose real-side key is taken is not installed over it:
// the new real's connection is reset, its port freed, the other flow intact.
func TestRecoveredKeyTaken(t *testing.T) {
	d, _ := newRecDirector(t)
	key := Key{protoTCP, ap(client), ap(vip)}
	handle(t, d, tcp4(client, vip, psh, 100, 200, []byte("GET /")), 1)
	// A flow (forged past the source check) holding (rs1, local).
	squatter := flow{Proto: protoTCP, Client: endpointOf(ap(local)), svc: 0, real: 0} // rs1's
	if _, ok := d.insertFlow(squatter); !ok {
		t.Fatal("setup")
	}
	out := d.Recovered(key, wire.Handshake{AckSeq: 10, AckAck: 20}, 2)
	if want := asRST(tcp4(local, rs1, rst, 10, 0, nil)); len(out) != 1 || !bytes.Equal(out[0], want) {
		t.Fatalf("wrote %x, want only the RST %x", out, want)
	}
	st := d.Stats()
	if st.IndexRefused != 1 || st.RecoveryFailed[FailError] != 1 || st.RecoverySucceeded != 0 || st.Flows != 1 || len(d.rec.ports.inUse) != 0 {
		t.Fatalf("stats %+v, ports %v", st, d.rec.ports.inUse)
	}
	if slot, side, ok := d.flows.lookup(Key{protoTCP, ap(rs1), ap(local)}); !ok || side != sideReal || d.flows.slab[slot].Client != endpointOf(ap(local)) {
		t.Fatal("the other flow's entry was overwritten")
	}
}
