package nat

import "testing"

// A forged SYN on the tuple of a connection this director never saw (right
// after a failover) makes a flow to some real; the real's SYN-ACK reaches the
// client, whose established TCP answers with its own numbers. That segment,
// and the client's next request, do not answer the SYN-ACK: the SYN's flow
// goes and the request takes the miss path (here: no real holds it, the
// client answers the challenge, a recovery dial). A SYN-ACK with no flow is
// never adopted (it would pin the tuple to its real).
func TestForgedSYNDoesNotPinTheTuple(t *testing.T) {
	d, fr := newRecDirector(t)
	handle(t, d, tcp4(client, vip, syn, 777, 0, nil), 1) // forged
	f := flowOf(d, client)
	real := f.Real.AddrPort().String()
	if out := handle(t, d, tcp4(real, client, synack, 9000, 778, nil), 1); out == nil {
		t.Fatal("the real's SYN-ACK was not forwarded")
	}
	// The client's challenge ACK for that SYN-ACK (its own numbers).
	handle(t, d, tcp4(client, vip, ack, 5000, 3000, nil), 2)
	st := d.Stats()
	if st.SynFlowsReplaced != 1 || st.Flows != 0 {
		t.Fatalf("SYN flows replaced %d, flows %d; want 1, 0", st.SynFlowsReplaced, st.Flows)
	}
	// The real retransmits its SYN-ACK: no flow, not adopted.
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
	handle(t, d, tcp4(f.Real.AddrPort().String(), client, synack, 9000, 778, nil), 1)
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
	real := f.Real.AddrPort().String()
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
