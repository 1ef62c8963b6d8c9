package nat

import "testing"

// A forged SYN on the tuple of a connection this director never saw (right
// after a failover) makes a flow to some real; the real's SYN-ACK reaches the
// client, whose established TCP answers with its own numbers. That segment,
// and the client's next request, do not answer the SYN-ACK: the SYN's flow
// goes and the request takes the miss path (here: no real holds it, the
// client answers the challenge, a recovery dial). The real's SYN-ACK for the
// replaced SYN is not adopted (it would pin the tuple to its real) for as
// long as the real retransmits it.
func TestForgedSYNDoesNotPinTheTuple(t *testing.T) {
	d, fr := newRecDirector(t)
	handle(t, d, tcp4(client, vip, syn, 777, 0, nil), 1) // forged
	f := flowOf(d, client)
	real := d.realOf(f).String()
	if out := handle(t, d, tcp4(real, client, synack, 9000, 778, nil), 1); out == nil {
		t.Fatal("the real's SYN-ACK was not forwarded")
	}
	// The client's challenge ACK for that SYN-ACK (its own numbers).
	handle(t, d, tcp4(client, vip, ack, 5000, 3000, nil), 2)
	st := d.Stats()
	if st.SynFlowsReplaced != 1 || st.Flows != 0 {
		t.Fatalf("SYN flows replaced %d, flows %d; want 1, 0", st.SynFlowsReplaced, st.Flows)
	}
	// The real retransmits its SYN-ACK: its SYN was not the client's, not
	// adopted.
	if out := handle(t, d, tcp4(real, client, synack, 9000, 778, nil), 3); out != nil || d.Stats().Adopted != 0 {
		t.Fatalf("a SYN-ACK with no flow was adopted: %x", out)
	}
	// The client's request goes through the miss path.
	handle(t, d, tcp4(client, vip, psh, 5000, 3000, []byte("GET /")), 4)
	if st := d.Stats(); st.Misses != 1 || len(fr.dials) != 1 {
		t.Fatalf("misses %d, dials %d; want 1, 1", st.Misses, len(fr.dials))
	}
}

// The genuine handshake is untouched: the final ACK answers the SYN-ACK.
func TestSYNFlowCompletes(t *testing.T) {
	d, _ := newRecDirector(t)
	handle(t, d, tcp4(client, vip, syn, 777, 0, nil), 1)
	f := flowOf(d, client)
	handle(t, d, tcp4(d.realOf(f).String(), client, synack, 9000, 778, nil), 1)
	if out := handle(t, d, tcp4(client, vip, ack, 778, 9001, nil), 2); out == nil || f.State != StateEstablished {
		t.Fatalf("final ACK: forwarded %v, state %v", out != nil, f.State)
	}
	if st := d.Stats(); st.SynFlowsReplaced != 0 || st.Flows != 1 {
		t.Fatalf("SYN flows replaced %d, flows %d; want 0, 1", st.SynFlowsReplaced, st.Flows)
	}
}

// The client's segment reaches the SYN's real before its SYN-ACK came back
// (nothing tells the director yet): the real rejects it with a bare RST,
// which the client must not see; the SYN's flow goes.
func TestForgedSYNRealRejects(t *testing.T) {
	d, _ := newRecDirector(t)
	handle(t, d, tcp4(client, vip, syn, 777, 0, nil), 1) // forged
	f := flowOf(d, client)
	real := d.realOf(f).String()
	if out := handle(t, d, tcp4(client, vip, psh, 5000, 3000, []byte("GET /")), 2); out == nil {
		t.Fatal("the client's segment on the SYN's flow was not forwarded")
	}
	if out := handle(t, d, tcp4(real, client, rst, 3000, 0, nil), 2); out != nil {
		t.Fatalf("the real's reset reached the client: %x", out)
	}
	if st := d.Stats(); st.SynFlowsReplaced != 1 || st.Flows != 0 {
		t.Fatalf("SYN flows replaced %d, flows %d; want 1, 0", st.SynFlowsReplaced, st.Flows)
	}
}

// A forged SYN reaches the real that holds the client's connection: the
// real answers from its established socket (a challenge ACK with its own
// numbers), and the client's next segment acks those numbers but is not the
// byte after the forged SYN. The flow carries on to that real as one picked
// up mid-stream: the forged SYN's numbers and options are forgotten, so that
// a later forged RST inside the range they spanned changes nothing.
func TestForgedSYNAnsweredByTheOwner(t *testing.T) {
	d, _ := newRecDirector(t)
	handle(t, d, tcp4(client, vip, syn, 3042012064, 0, nil), 1) // forged
	f := flowOf(d, client)
	real := d.realOf(f).String()
	handle(t, d, tcp4(real, client, ack, 654406734, 2273632763, nil), 1) // the owner's challenge ACK
	if out := handle(t, d, tcp4(client, vip, psh, 2273632763, 654406734, make([]byte, 73)), 2); out == nil {
		t.Fatal("the client's request was not forwarded to the owner")
	}
	if f.win.flags&winHandshake != 0 || f.hs.known || f.win.cli.end != 2273632836 {
		t.Fatalf("flags %b, handshake %+v, client end %d; want the client's side learned afresh", f.win.flags, f.hs, f.win.cli.end)
	}
	handle(t, d, tcp4(real, client, ack, 654406734, 2273632836, nil), 2)
	handle(t, d, tcp4(client, vip, rst, 3002903511, 0, nil), 3) // forged, between the two
	if f.State != StateEstablished || d.Stats().SynFlowsReplaced != 1 {
		t.Fatalf("state %v after a forged RST, SYN flows replaced %d", f.State, d.Stats().SynFlowsReplaced)
	}
}

// A real speaking on a tuple whose client flow goes to another real is
// answered with a reset only if that flow is a recovered one (the client's
// connection lives on the recovery connection); otherwise its packet is
// dropped: the client flow may come from a forged SYN, and the reset would
// end the client's live connection on this real.
func TestNoOrphanResetForPlainFlows(t *testing.T) {
	d, _ := newRecDirector(t)
	handle(t, d, tcp4(client, vip, syn, 777, 0, nil), 1) // forged, to some real
	other := rs1
	if d.realOf(flowOf(d, client)) == ap(rs1) {
		other = rs2
	}
	if out := handle(t, d, tcp4(other, client, psh, 5000, 3000, []byte("data")), 2); out != nil {
		t.Fatalf("answered the client's own real: %x", out)
	}
	if st := d.Stats(); st.OldRealResets != 0 || st.Drop(DropNoFlow) != 1 {
		t.Fatalf("old real resets %d, no_flow %d; want 0, 1", st.OldRealResets, st.Drop(DropNoFlow))
	}
}
