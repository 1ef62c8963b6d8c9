package fastpath

import (
	"bytes"
	"testing"

	"holdfast/nat"
	"holdfast/nat/nattest"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// wsOpt is the window scale option (padded with a NOP).
func wsOpt(shift byte) []byte { return []byte{1, 3, 3, shift} }

// TestSameAsNATOffloaded hands a flow to the fast path the product's way
// (nat's Offloader, the Director's exported cookie and window state) and
// runs every later segment through both: the in-window ones must come out
// as the Director's bytes and leave the map's state equal to the
// Director's (which handles them too: a settle time that never ends keeps
// the flow offloaded); the out-of-window ones, and a client's ack of
// server bytes never carried, must be punted unchanged (TC_ACT_OK) and
// change the map's state in nothing, as nat's window check changes
// nothing for them. Taking the flow back gives the Director the map's
// state. Each check fails if the window port differs from window.go (a
// comparison dropped, a shift or the stale mark not handed over).
func TestSameAsNATOffloaded(t *testing.T) {
	h := newHarnessWith(t, Config{CookieBits: k, CacheFIB: true})
	n := h.n
	h.d.SetOffload(h.p, nat.OffloadConfig{Segments: 4, Settle: 1 << 62})
	cl, vp := nattest.AP(client), nattest.AP(vip)
	syn := append(ts(1000, 0), wsOpt(7)...)
	synAck := append(ts(5000, 1000), wsOpt(7)...)
	h.nat(nattest.TCP4(client, vip, header.TCPFlagSyn, cISN, 0, nil, syn...))
	h.nat(nattest.TCP4(real, client, header.TCPFlagSyn|ack, sISN, cISN+1, nil, synAck...))
	h.nat(nattest.TCP4(client, vip, ack, cISN+1, sISN+1, nil, ts(1001, 5000)...))
	h.nat(nattest.TCP4(client, vip, psh, cISN+1, sISN+1, []byte("GET /"), ts(1002, 5000)...))
	if got := h.d.OffloadPending(h.now); got != 1 {
		t.Fatalf("offloaded %d flows, want 1", got)
	}
	same := func(name string, cookie bool) {
		t.Helper()
		want, ok := h.d.FastStateOf(6, cl, vp)
		if !ok {
			t.Fatalf("%s: no flow", name)
		}
		w, err := h.p.Window(cl)
		if err != nil {
			t.Fatal(err)
		}
		if w != want.Window {
			t.Errorf("%s: window state\n fast %+v\n  nat %+v", name, w, want.Window)
		}
		c, err := h.p.Cookie(cl)
		if err != nil {
			t.Fatal(err)
		}
		if cookie && (c.Last != want.Cookie.Last || c.Raw != want.Cookie.Raw || c.Prev != want.Cookie.Prev || c.PrevRaw != want.Cookie.PrevRaw ||
			(c.Flags&CookieSent != 0) != want.Cookie.Sent || (c.Flags&CookiePrev != 0) != want.Cookie.HasPrev) {
			t.Errorf("%s: cookie state\n fast %+v\n  nat %+v", name, c, want.Cookie)
		}
	}
	same("handed over", true)
	if w, _ := h.p.Window(cl); w.CliShift != 7 || w.SrvShift != 7 || w.Liberal || !w.Marked || w.Cli.End != cISN+6 {
		t.Fatalf("handed over %+v: want the handshake's scale 7, marked, client end %d", w, cISN+6)
	}

	c, s := uint32(cISN+6), uint32(sISN+1) // the next client and real sequence
	big := make([]byte, 1400)
	for i := range 3 {
		h.both("reply", nattest.TCP4(real, client, psh, s, c, big, ts(5010+uint32(i), 1002)...), n.rs, n.upMAC, clientMAC)
		s += uint32(len(big))
		same("reply", true)
	}
	v, _ := h.p.Cookie(cl)
	h.both("client ack", nattest.TCP4(client, vip, ack, c, s, nil, ts(1003, v.Last)...), n.up, n.rsMAC, realMAC)
	same("client ack", true)
	h.both("client data", nattest.TCP4(client, vip, psh, c, s, []byte("more"), ts(1004, v.Last)...), n.up, n.rsMAC, realMAC)
	c += 4
	same("client data", true)
	h.both("real ack", nattest.TCP4(real, client, ack, s, c, nil, ts(5020, 1004)...), n.rs, n.upMAC, clientMAC)
	same("real ack", true)

	win := uint32(502 << 7)
	before, _ := h.p.Window(cl)
	punted := func(name string, pkt []byte, on int) {
		t.Helper()
		ret, frame := h.run(pkt, on)
		if ret != tcOK || !bytes.Equal(frame[14:], pkt) {
			t.Errorf("%s: verdict %d: want TC_ACT_OK and the packet unchanged", name, ret)
		}
		if w, _ := h.p.Window(cl); w != before {
			t.Errorf("%s: the map's window state moved\n %+v\n %+v", name, before, w)
		}
	}
	cnt0, _ := h.p.Counters()
	for _, p := range []struct {
		name string
		pkt  []byte
		on   int
	}{
		{"client seq beyond the real's window", nattest.TCP4(client, vip, psh, s+2*win+100000, s, []byte("x"), ts(1005, v.Last)...), n.up},
		{"client seq a window behind (not a retransmission)", nattest.TCP4(client, vip, psh, c-200000, s, []byte("x"), ts(1005, v.Last)...), n.up},
		{"client ack far behind", nattest.TCP4(client, vip, ack, c, s-300000, nil, ts(1005, v.Last)...), n.up},
		{"real seq beyond the client's window", nattest.TCP4(real, client, psh, s+2*win+100000, c, big, ts(5021, 1004)...), n.rs},
		{"real ack of client bytes never sent", nattest.TCP4(real, client, ack, s, c+1000, nil, ts(5021, 1004)...), n.rs},
	} {
		punted(p.name, p.pkt, p.on)
		// nat forwards it and changes nothing of its windows (winOut,
		// counted); a real's segment gets its cookie written, which
		// the punted one gets from nat in the product too (it takes
		// the flow back first).
		h.nat(p.pkt)
		same(p.name, false)
	}
	cnt, _ := h.p.Counters()
	if d := cnt["punt_window"] - cnt0["punt_window"]; d != 5 {
		t.Errorf("punt_window counted %d, want 5", d)
	}
	if st := h.d.Stats(); st.OutOfWindow[nat.DirToReal]+st.OutOfWindow[nat.DirToClient] != 5 {
		t.Errorf("nat judged %d+%d out of window, want 5 in all: the vectors are not nat's out-of-window ones",
			st.OutOfWindow[nat.DirToReal], st.OutOfWindow[nat.DirToClient])
	}
	// A client's in-window segment acking server bytes never carried is
	// for nat to judge (stale: with recovery off the flow goes): punted.
	stale := nattest.TCP4(client, vip, ack, c, s+5000, nil, ts(1005, v.Last)...)
	punted("client ack of server bytes never carried", stale, n.up)

	// Taken back: the Director's state is the map's.
	final, _ := h.p.Window(cl)
	if !h.d.Withdraw(6, cl, vp) {
		t.Fatal("not offloaded at the end")
	}
	if got, _ := h.d.FastStateOf(6, cl, vp); got.Window != final {
		t.Errorf("taken back: %+v, want the map's %+v", got.Window, final)
	}
	if _, err := h.p.Window(cl); err == nil {
		t.Error("the flow is still in the map after Withdraw")
	}
	h.nat(stale)
	if st := h.d.Stats(); st.StaleFlows != 1 {
		t.Errorf("nat found %d stale flows on the punted ack, want 1", st.StaleFlows)
	}
}
