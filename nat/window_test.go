package nat

import (
	"testing"

	"holdfast/internal/wire"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// flowOf returns the live flow of the client's key (nil if none).
func flowOf(d *Director, c string) *flow {
	slot, side, ok := d.flows.lookup(Key{protoTCP, ap(c), ap(vip)})
	if !ok || side != sideClient {
		return nil
	}
	return &d.flows.slab[slot]
}

// knownFlow sets up a plain flow whose handshake crossed the director (both
// scales 7, windows 502 << 7): client bytes 1000 (SYN) .. 1006, real bytes
// 5000 (SYN) .. 5101, all acknowledged.
func knownFlow(t *testing.T, d *Director) *flow {
	t.Helper()
	for _, s := range []struct {
		pkt []byte
	}{
		{tcp4(client, vip, syn, 1000, 0, nil, synOpts(1460, 7, 50)...)},
		{tcp4(rs1, client, synack, 5000, 1001, nil, synOpts(1460, 7, 80)...)},
		{tcp4(client, vip, ack, 1001, 5001, nil)},
		{tcp4(client, vip, psh, 1001, 5001, []byte("GET /"))},
		{tcp4(rs1, client, psh, 5001, 1006, make([]byte, 100))},
		{tcp4(client, vip, ack, 1006, 5101, nil)},
	} {
		if handle(t, d, s.pkt, 1) == nil {
			t.Fatal("handshake segment dropped")
		}
	}
	f := flowOf(d, client)
	if f == nil || f.State != StateEstablished || !f.hs.known || f.hiSrv != 5101 {
		t.Fatalf("set-up flow %+v", f)
	}
	return f
}

// adoptedFlow sets up a flow adopted from rs2's retransmission (bytes
// 7000..7100 acking client byte 300) and the client's ack of it.
func adoptedFlow(t *testing.T, d *Director) *flow {
	t.Helper()
	handle(t, d, tcp4(rs2, client, psh, 7000, 300, make([]byte, 100)), 1)
	handle(t, d, tcp4(client, vip, ack, 300, 7100, nil), 1)
	f := flowOf(d, client)
	if f == nil || f.Kind != KindAdopted || !f.liberal() {
		t.Fatalf("adopted flow %+v", f)
	}
	return f
}

// recoveredFlow sets up a flow recovered from the client's segment (bytes
// 1000..1005 acking 2000): SeqDelta 1000-7, AckDelta 2000-9.
func recoveredFlow(t *testing.T, d *Director) *flow {
	t.Helper()
	handle(t, d, tcp4(client, vip, psh, 1000, 2000, []byte("GET /")), 1)
	d.Recovered(Key{protoTCP, ap(client), ap(vip)}, wire.Handshake{AckSeq: 7, AckAck: 9, OurWScale: 7, PeerWScale: 7}, 1)
	handle(t, d, tcp4(rs1, local, psh, 9, 12, make([]byte, 100)), 1)
	handle(t, d, tcp4(client, vip, ack, 1005, 2100, nil), 1)
	f := flowOf(d, client)
	if f == nil || f.Kind != KindRecovered || f.hiSrv != 2100 {
		t.Fatalf("recovered flow %+v", f)
	}
	return f
}

// rng is a small deterministic generator of forged numbers.
type rng uint64

func (r *rng) u32() uint32 {
	*r = *r*6364136223846793005 + 1442695040888963407
	return uint32(*r >> 32)
}

// withoutSuspicion is f with what a suspect segment may change (the
// suspicion itself) cleared.
func withoutSuspicion(f flow) flow {
	f.win.flags &^= winSuspect
	f.win.suspectAck = 0
	return f
}

// Blind segments (random seq and ack) of every kind, from either side,
// against a live flow of every kind: forwarded, counted out of window, and
// the flow unchanged (its state, expiry, mark and windows), except for the
// suspicion a client ack beyond the mark raises.
func TestBlindSegmentsChangeNothing(t *testing.T) {
	kinds := []struct {
		name  string
		setup func(*testing.T, *Director) *flow
		real  string // the real's source
		to    string // the real's destination
		rec   bool
	}{
		{"plain from the SYN", knownFlow, rs1, client, false},
		{"adopted", adoptedFlow, rs2, client, true},
		{"recovered", recoveredFlow, rs1, local, true},
		{"plain mid-stream, recovery off", func(t *testing.T, d *Director) *flow {
			handle(t, d, tcp4(client, vip, psh, 300, 7000, []byte("GET /")), 1)
			handle(t, d, tcp4(rs1, client, psh, 7000, 305, make([]byte, 100)), 1)
			handle(t, d, tcp4(client, vip, ack, 305, 7100, nil), 1)
			return flowOf(d, client)
		}, rs1, client, false},
	}
	forged := []struct {
		name  string
		flags header.TCPFlags
		data  []byte
	}{
		{"rst", rst, nil},
		{"rst-ack", rst | ack, nil},
		{"fin", fin, nil},
		{"syn", syn, nil},
		{"ack", ack, nil},
		{"data", psh, []byte("evil")},
	}
	for _, k := range kinds {
		for _, fromClient := range []bool{true, false} {
			for _, fg := range forged {
				name := k.name + "/" + fg.name + "/from real"
				if fromClient {
					name = k.name + "/" + fg.name + "/from client"
				}
				t.Run(name, func(t *testing.T) {
					var d *Director
					if k.rec {
						d, _ = newRecDirector(t)
					} else {
						d = newTestDirector(t)
					}
					f := k.setup(t, d)
					before := *f
					r := rng(len(name))
					const rounds = 200
					passed, exposed := 0, 0
					for range rounds {
						seq, a := r.u32(), r.u32()
						var pkt []byte
						if fromClient {
							pkt = tcp4(client, vip, fg.flags, seq, a, fg.data)
						} else {
							pkt = tcp4(k.real, k.to, fg.flags, seq, a, fg.data)
						}
						// A client segment whose seq the window lets through
						// and whose ack passes the mark is stale at once
						// (window.go): the one exposure, bounded below.
						var p packet
						if p.decodeIP(pkt) == DropNone && p.decodeL4() == DropNone && fromClient && fg.flags&ack != 0 {
							var sg seg
							if f.checkWindow(&p, true, &sg) == winStale {
								exposed++
								continue
							}
						}
						v, out := d.Handle(pkt, false, 2)
						if v != wire.Forward || out == nil {
							t.Fatalf("seq %d ack %d: verdict %v, want forwarded", seq, a, v)
						}
						if g := flowOf(d, client); g != f || withoutSuspicion(*g) != withoutSuspicion(before) {
							passed++
							*f = before // count it, and go on from the same flow
						}
					}
					// A liberal flow lets a few random seqs through (window.go);
					// they may change state, so they are the only ones that may.
					st := d.Stats()
					dir := DirToReal
					if !fromClient {
						dir = DirToClient
					}
					if exposed > rounds/50 {
						t.Fatalf("%d of %d blind segments would have made the flow stale", exposed, rounds)
					}
					if passed > rounds/50 || st.OutOfWindow[dir] < uint64(rounds-passed-exposed) {
						t.Fatalf("%d of %d blind segments changed the flow, out_of_window %v", passed, rounds, st.OutOfWindow)
					}
					if st.StaleFlows != 0 || st.Flows != 1 {
						t.Fatalf("stale %d, flows %d", st.StaleFlows, st.Flows)
					}
				})
			}
		}
	}
}

// RST and FIN in window still move the flow's state; just outside, they do
// not.
func TestInWindowRSTAndFIN(t *testing.T) {
	cases := []struct {
		name string
		pkt  []byte
		want State
	}{
		{"client rst at its SND.NXT", tcp4(client, vip, rst|ack, 1006, 5101, nil), StateClose},
		{"client rst at the real's ack", tcp4(client, vip, rst, 1006, 0, nil), StateClose},
		{"client rst one past", tcp4(client, vip, rst, 1007, 0, nil), StateEstablished},
		{"client rst one before", tcp4(client, vip, rst, 1005, 0, nil), StateEstablished},
		{"real rst at its SND.NXT", tcp4(rs1, client, rst|ack, 5101, 1006, nil), StateClose},
		{"real rst one past", tcp4(rs1, client, rst, 5102, 0, nil), StateEstablished},
		{"client fin", tcp4(client, vip, fin, 1006, 5101, nil), StateCloseWait},
		{"real fin", tcp4(rs1, client, fin, 5101, 1006, nil), StateFinWait},
		{"client fin beyond the real's window", tcp4(client, vip, fin, 1006+502<<7+1, 5101, nil), StateEstablished},
		{"real fin acking unsent bytes", tcp4(rs1, client, fin, 5101, 1007, nil), StateEstablished},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := newTestDirector(t)
			f := knownFlow(t, d)
			if handle(t, d, c.pkt, 2) == nil {
				t.Fatal("dropped")
			}
			if f.State != c.want {
				t.Fatalf("state %v, want %v", f.State, c.want)
			}
			oow := d.Stats().OutOfWindow
			if (c.want == StateEstablished) != (oow[DirToReal]+oow[DirToClient] == 1) {
				t.Fatalf("out_of_window %v", oow)
			}
		})
	}
	// A SYN on a CLOSE flow is a new connection (a reuse); on an
	// ESTABLISHED one it is not.
	d := newTestDirector(t)
	knownFlow(t, d)
	handle(t, d, tcp4(client, vip, syn, 99999, 0, nil), 2)
	if st := d.Stats(); st.FlowsReused != 0 || st.FlowsCreated != 1 {
		t.Fatalf("SYN on a live flow: %+v", st)
	}
	handle(t, d, tcp4(client, vip, rst, 1006, 0, nil), 3)
	handle(t, d, tcp4(client, vip, syn, 99999, 0, nil), 4)
	if st := d.Stats(); st.FlowsReused != 1 || st.FlowsCreated != 2 {
		t.Fatalf("SYN on a closed flow: reused %d, created %d", st.FlowsReused, st.FlowsCreated)
	}
}

// A client ack beyond the mark on a segment whose seq is out of window only
// makes a flow suspect: what the real answers decides. Its no-socket reset (bare RST, seq = that ack) removes
// the flow; any other answer clears the suspicion, after which the same
// reset proves nothing.
func TestStaleNeedsTheRealsReset(t *testing.T) {
	d, fr := newRecDirector(t)
	f := knownFlow(t, d)
	beyond := uint32(5101 + 1<<30)
	const far = 1006 + 1<<31 // a seq out of window
	if handle(t, d, tcp4(client, vip, ack, far, beyond, nil), 2) == nil {
		t.Fatal("suspect ack not forwarded")
	}
	if f.win.flags&winSuspect == 0 || f.win.suspectAck != beyond || f.hiSrv != 5101 {
		t.Fatalf("after the suspect ack: flags %b, suspect ack %d, mark %d", f.win.flags, f.win.suspectAck, f.hiSrv)
	}
	// Resets that are not the no-socket answer to it prove nothing.
	for _, p := range [][]byte{
		tcp4(rs1, client, rst|ack, beyond, 1006, nil), // has an ACK
		tcp4(rs1, client, rst, beyond+1, 0, nil),      // another seq
	} {
		handle(t, d, p, 2)
		if flowOf(d, client) != f || f.State != StateEstablished {
			t.Fatalf("a reset that is not the real's no-socket answer changed the flow: %+v", f)
		}
	}
	// A normal answer: the real holds the connection.
	if handle(t, d, tcp4(rs1, client, ack, 5101, 1006, nil), 3) == nil {
		t.Fatal("the real's answer not forwarded")
	}
	if f.win.flags&winSuspect != 0 || d.Stats().StaleCleared != 1 {
		t.Fatalf("suspicion not cleared: flags %b", f.win.flags)
	}
	if handle(t, d, tcp4(rs1, client, rst, beyond, 0, nil), 4) == nil || flowOf(d, client) != f {
		t.Fatal("a reset after the suspicion cleared removed the flow or was dropped")
	}
	if st := d.Stats(); st.StaleFlows != 0 || st.StaleSuspects != 1 || len(fr.dials) != 0 {
		t.Fatalf("stale %d, suspects %d, dials %d", st.StaleFlows, st.StaleSuspects, len(fr.dials))
	}

	// Suspect again, and this time the real has no socket.
	d, fr = newRecDirector(t)
	knownFlow(t, d)
	handle(t, d, tcp4(client, vip, psh, far, beyond, []byte("GET /2")), 2)
	if out := handle(t, d, tcp4(rs1, client, rst, beyond, 0, nil), 2); out != nil {
		t.Fatal("the confirming reset reached the client")
	}
	if st := d.Stats(); st.StaleFlows != 1 || st.Flows != 0 || st.Drop(DropStaleReset) != 1 {
		t.Fatalf("stale %d, flows %d, stale_reset %d", st.StaleFlows, st.Flows, st.Drop(DropStaleReset))
	}
	handle(t, d, tcp4(client, vip, psh, 1006, beyond, []byte("GET /2")), 3)
	if len(fr.dials) != 1 {
		t.Fatalf("the retransmission after the stale verdict: %d recoveries, want 1", len(fr.dials))
	}
}

// The client's own segment (its seq in window) acking server bytes this
// director never carried makes the flow suspect and challenges the client:
// an answer that fits the segment proves the flow stale (a failback without
// sync), and the client's retransmission is recovered; an answer that does
// not (the segment was forged) clears the suspicion, and the flow lives on.
func TestStaleInWindow(t *testing.T) {
	d, fr, _ := newRecDirectorPeers(t)
	knownFlow(t, d)
	if out := handle(t, d, tcp4(client, vip, psh, 1006, 9000, []byte("GET /2")), 2); out == nil {
		t.Fatal("the segment of a suspect flow was not forwarded")
	}
	if st := d.Stats(); st.StaleFlows != 1 || st.StaleSuspects != 1 || st.Flows != 0 {
		t.Fatalf("stale %d, suspects %d, flows %d; want 1, 1, 0", st.StaleFlows, st.StaleSuspects, st.Flows)
	}
	handle(t, d, tcp4(client, vip, psh, 1006, 9000, []byte("GET /2")), 3)
	if len(fr.dials) != 1 {
		t.Fatalf("the retransmission after the stale verdict: %d recoveries, want 1", len(fr.dials))
	}

	// A forged segment in window: the client's answer (its own numbers)
	// does not fit it.
	d, fr, pr := newRecDirectorPeers(t)
	pr.Quiet = true
	knownFlow(t, d)
	handle(t, d, tcp4(client, vip, psh, 1006, 9000, []byte("EVIL")), 2)
	if len(pr.Challenges) != 1 {
		t.Fatalf("%d challenges, want 1", len(pr.Challenges))
	}
	if out := handle(t, d, tcp4(client, vip, ack, 1006, 5101, nil), 2); out == nil {
		t.Fatal("the client's answer that does not fit was not forwarded as a plain ACK")
	}
	if st := d.Stats(); st.StaleFlows != 0 || st.StaleCleared != 1 || st.Flows != 1 || st.Inflight != 0 || len(fr.dials) != 0 {
		t.Fatalf("stale %d, cleared %d, flows %d, in flight %d, dials %d; want 0, 1, 1, 0, 0", st.StaleFlows, st.StaleCleared, st.Flows, st.Inflight, len(fr.dials))
	}
}

// A recovered flow's suspect ack is compared in the client's space: the
// real's reset carries it translated.
func TestStaleRecoveredFlow(t *testing.T) {
	d, _ := newRecDirector(t)
	recoveredFlow(t, d)
	beyond := uint32(2100 + 1<<20)
	out := handle(t, d, tcp4(client, vip, psh, 1005+1<<31, beyond, []byte("GET /2")), 2)
	if out == nil || header.TCP(out[20:]).AckNumber() != beyond-(2000-9) {
		t.Fatal("suspect segment not forwarded with the flow's deltas")
	}
	if out := handle(t, d, tcp4(rs1, local, rst, beyond-(2000-9), 0, nil), 2); out != nil {
		t.Fatal("confirming reset forwarded")
	}
	if st := d.Stats(); st.StaleFlows != 1 || st.Flows != 0 {
		t.Fatalf("stale %d, flows %d", st.StaleFlows, st.Flows)
	}
}

// Item 12 of the issue: a SACK block must not raise the mark beyond what
// could have crossed, or stale detection is off for good.
func TestSpoofedSACKDoesNotMoveTheMark(t *testing.T) {
	t.Run("known flow", func(t *testing.T) {
		d := newTestDirector(t)
		f := knownFlow(t, d)
		handle(t, d, tcp4(client, vip, ack, 1006, 5101, nil, sackOpt(5101+1<<31-100, 5101+1<<31-1)...), 2)
		if f.hiSrv != 5101 {
			t.Fatalf("mark moved to %d by a SACK block", f.hiSrv)
		}
		// Stale detection is still on.
		handle(t, d, tcp4(client, vip, ack, 1006, 5101+1<<30, nil), 3)
		if st := d.Stats(); st.StaleFlows != 1 {
			t.Fatalf("an in-window ack 2^30 beyond the mark: stale %d, want 1", st.StaleFlows)
		}
	})
	t.Run("adopted flow", func(t *testing.T) {
		d, _ := newRecDirector(t)
		f := adoptedFlow(t, d)
		// Within a window: the dead director's bytes, held out of order.
		handle(t, d, tcp4(client, vip, ack, 300, 7100, nil, sackOpt(9000, 12000)...), 2)
		if f.hiSrv != 12000 {
			t.Fatalf("mark %d, want 12000 (a SACK block within a window)", f.hiSrv)
		}
		handle(t, d, tcp4(client, vip, ack, 300, 7100, nil, sackOpt(12000+1<<31-100, 12000+1<<31-1)...), 3)
		if f.hiSrv != 12000 {
			t.Fatalf("mark moved to %d by a SACK block 2^31 ahead", f.hiSrv)
		}
		// Out of window by seq, a block within a window does not count either.
		handle(t, d, tcp4(client, vip, ack, 300+1<<31, 7100, nil, sackOpt(13000, 14000)...), 4)
		if f.hiSrv != 12000 {
			t.Fatalf("mark moved to %d by an out-of-window segment", f.hiSrv)
		}
	})
}

// A flow picked up mid-stream is liberal about windows (scale 14) but
// stateless for what falls outside: in-window FIN and RST work, the rest is
// forwarded and counted.
func TestMidStreamFlowLiberal(t *testing.T) {
	d, _ := newRecDirector(t)
	f := adoptedFlow(t, d)
	// 2^20 past the real's ack is within 502 << 14.
	if handle(t, d, tcp4(client, vip, psh, 300+1<<20, 7100, []byte("far")), 2) == nil || d.Stats().OutOfWindow[DirToReal] != 0 {
		t.Fatal("a segment within the liberal window counted out of window")
	}
	handle(t, d, tcp4(client, vip, fin, 300+1<<31, 7100, nil), 3)
	handle(t, d, tcp4(client, vip, rst, 0x80000000, 0, nil), 3)
	if f.State != StateEstablished || d.Stats().OutOfWindow[DirToReal] != 2 {
		t.Fatalf("state %v, out_of_window %v", f.State, d.Stats().OutOfWindow)
	}
	// The client's RST at the real's ack (the only end of RCV.NXT's range
	// known for a direction not seen from its start) closes it.
	handle(t, d, tcp4(rs2, client, rst|ack, 7100, 300+1<<20+3, nil), 4)
	if f.State != StateClose {
		t.Fatalf("in-window RST of the real: state %v", f.State)
	}
}

// Half a flow: a director that sees only the client's packets (the replies
// go through another one) checks nothing of the real's side, finds nothing
// suspect in the client's acks, and follows its FIN.
func TestHalfFlow(t *testing.T) {
	d, fr := newRecDirector(t)
	handle(t, d, tcp4(client, vip, syn, 1000, 0, nil, synOpts(1460, 7, 50)...), 1)
	handle(t, d, tcp4(client, vip, ack, 1001, 5001, nil), 1)
	f := flowOf(d, client)
	for i, a := range []uint32{5001 + 1<<20, 5001 + 1<<30, 5001 + 3<<30} {
		seq := uint32(1001 + 10*i)
		if handle(t, d, tcp4(client, vip, psh, seq, a, make([]byte, 10)), 2) == nil {
			t.Fatalf("segment %d dropped", i)
		}
	}
	handle(t, d, tcp4(client, vip, fin, 1031, 5001+3<<30, nil), 3)
	st := d.Stats()
	if f.State != StateCloseWait || st.OutOfWindow != [numDirs]uint64{} || st.StaleSuspects != 0 || len(fr.dials) != 0 {
		t.Fatalf("state %v, out_of_window %v, suspects %d", f.State, st.OutOfWindow, st.StaleSuspects)
	}
}

// A forged SYN-ACK (wrong ack) does not complete the handshake record.
func TestSynAckMustAnswerTheSYN(t *testing.T) {
	d := newTestDirector(t)
	handle(t, d, tcp4(client, vip, syn, 1000, 0, nil, synOpts(1460, 7, 50)...), 1)
	handle(t, d, tcp4(rs1, client, synack, 777, 4242, nil, synOpts(1460, 14, 80)...), 1)
	f := flowOf(d, client)
	if f.hs.known || d.Stats().OutOfWindow[DirToClient] != 1 {
		t.Fatalf("forged SYN-ACK recorded: %+v", f.hs)
	}
	handle(t, d, tcp4(rs1, client, synack, 5000, 1001, nil, synOpts(1460, 7, 80)...), 1)
	if !f.hs.known || f.hs.view != 7 {
		t.Fatalf("the real's SYN-ACK not recorded: %+v", f.hs)
	}
}

// Window tracking adds nothing to allocate on the packet path, for a flow
// that sees its out-of-window segments either.
func TestWindowAllocs(t *testing.T) {
	d := newTestDirector(t)
	knownFlow(t, d)
	blind := tcp4(client, vip, rst, 0xdeadbeef, 0, nil)
	reply := tcp4(rs1, client, psh, 5101, 1006, make([]byte, 100))
	buf := make([]byte, len(reply))
	n := testing.AllocsPerRun(1000, func() {
		copy(buf, blind)
		d.HandlePacket(buf[:len(blind)], 2)
		copy(buf, reply)
		d.HandlePacket(buf[:len(reply)], 2)
	})
	if n != 0 {
		t.Fatalf("%v allocations per packet pair, want 0", n)
	}
}

// A recovered flow knows the real's window scale (its SYN-ACK answered the
// director's own SYN): a client segment 1 MiB beyond the real's window
// (502 << 7 bytes) is out of window there, so an ack beyond the mark on it
// only makes the flow suspect, where the largest scale (14) would have let
// it through as stale.
func TestRecoveredFlowKnowsTheRealsScale(t *testing.T) {
	d, fr := newRecDirector(t)
	f := recoveredFlow(t, d)
	if got := f.win.srv.maxWin; got != 502<<7 {
		t.Fatalf("the real's window %d, want %d (its shift 7 applied)", got, 502<<7)
	}
	handle(t, d, tcp4(client, vip, psh, 1005+1<<20, 2100+1<<20, []byte("GET /2")), 2)
	if st := d.Stats(); st.StaleFlows != 0 || st.StaleSuspects != 1 || len(fr.dials) != 1 {
		t.Fatalf("stale %d, suspects %d, dials %d; want 0, 1, 1 (the recovery's own)", st.StaleFlows, st.StaleSuspects, len(fr.dials))
	}
}
