package nat

import (
	"testing"
	"unsafe"

	"holdfast/balancer"
)

// fakeFast is an Offloader that keeps what it is given, as the map would,
// and hands back whatever state the test put there.
type fakeFast struct {
	flows     map[OffloadFlow]bool // by Client, VIP, Real (State and CookieID zeroed)
	state     map[OffloadFlow]FastState
	offloads  int
	withdraws int
	refuse    bool
}

func newFakeFast() *fakeFast {
	return &fakeFast{flows: map[OffloadFlow]bool{}, state: map[OffloadFlow]FastState{}}
}

func fkeyOf(f OffloadFlow) OffloadFlow {
	return OffloadFlow{Client: f.Client, VIP: f.VIP, Real: f.Real}
}

func (o *fakeFast) Offload(f OffloadFlow) error {
	if o.refuse {
		return errRefused
	}
	o.offloads++
	o.flows[fkeyOf(f)] = true
	o.state[fkeyOf(f)] = f.State
	return nil
}

func (o *fakeFast) Withdraw(f OffloadFlow) (FastState, bool) {
	k := fkeyOf(f)
	if !o.flows[k] {
		return FastState{}, false
	}
	o.withdraws++
	delete(o.flows, k)
	return o.state[k], true
}

type refusedErr struct{}

func (refusedErr) Error() string { return "refused" }

var errRefused = refusedErr{}

// offloadDirector is newTestDirector with cookies (k = 4) and a fake fast
// path taking flows after 4 segments, settling for 1 ms.
func offloadDirector(t *testing.T) (*Director, *fakeFast) {
	t.Helper()
	d := newTestDirector(t, func(c *Config) { c.CookieBits = 4 })
	o := newFakeFast()
	d.SetOffload(o, OffloadConfig{Segments: 4, Settle: 1e6})
	return d, o
}

// The flow's size is what the memory budget of issue 18 counts on: the
// offload's fields fit the padding.
func TestOffloadFlowSize(t *testing.T) {
	if n := unsafe.Sizeof(flow{}); n != 152 {
		t.Fatalf("flow is %d bytes, want 152", n)
	}
}

// Export then import gives the flow its state back, every field of it
// (a field that import drops, or export leaves out, fails this).
func TestFastStateRoundTrip(t *testing.T) {
	d := cookieDirector(t, 4)
	f := knownFlow(t, d)
	f.ck = cookieFlow{last: 11, raw: 12, prev: 13, prevRaw: 14, synAck: 15, flags: ckSent | ckPrev | ckSynAck}
	f.win.cli = dirWin{end: 21, ack: 22, maxWin: 23}
	f.win.srv = dirWin{end: 31, ack: 32, maxWin: 33}
	f.hiSrv, f.hiSrvSeen, f.marked = 41, true, true
	want := *f
	s := f.fastState()
	if !s.Window.Cli.Seen || !s.Window.Srv.Acked || s.Window.Liberal || s.Window.CliShift != 7 || s.Window.SrvShift != 7 || s.Cookie.RoundUp != true {
		t.Fatalf("exported %+v", s)
	}
	f.ck, f.win.cli, f.win.srv, f.hiSrv, f.hiSrvSeen, f.marked = cookieFlow{}, dirWin{}, dirWin{}, 0, false, false
	f.win.flags &^= winCliSeen | winSrvAcked
	f.importFast(s)
	if *f != want {
		t.Fatalf("imported\n%+v\nwant\n%+v", *f, want)
	}
	if s2 := f.fastState(); s2 != s {
		t.Fatalf("exported again %+v, want %+v", s2, s)
	}
	// A flow picked up mid-stream: liberal, the largest scale, rounding up.
	rd, _, _ := recDirector(t, 4)
	a := adoptedFlow(t, rd).fastState()
	if !a.Window.Liberal || a.Window.CliShift != maxWScale || a.Window.SrvShift != maxWScale || !a.Cookie.RoundUp {
		t.Fatalf("adopted flow exported %+v", a)
	}
}

// A flow is offloaded once it carried 4 segments; a FIN punted by the fast
// path takes it back with the fast path's state, so the FIN is judged by
// the windows the fast path moved: with the Director's own (older) state
// it would be out of window and change nothing.
func TestOffloadAndTakeBackOnFin(t *testing.T) {
	d, o := offloadDirector(t)
	knownFlow(t, d) // 6 segments, the 4th established
	if n := d.OffloadPending(1); n != 1 || o.offloads != 1 || d.Offloaded() != 1 {
		t.Fatalf("offloaded %d (fake %d, director %d), want 1", n, o.offloads, d.Offloaded())
	}
	var of OffloadFlow
	for k := range o.flows {
		of = k
	}
	if of.Client != ap(client) || of.VIP != ap(vip) || of.Real != ap(rs1) {
		t.Fatalf("offloaded %+v", of)
	}
	s := o.state[of]
	if s.Window.Cli.End != 1006 || s.Window.Srv.End != 5101 || !s.Window.Marked || s.Window.HiSrv != 5101 {
		t.Fatalf("handed over %+v", s.Window)
	}
	// The fast path carried 200000 client bytes and 300000 of the real's.
	s.Window.Cli.End += 200000
	s.Window.Cli.Ack += 300000
	s.Window.Srv.End += 300000
	s.Window.Srv.Ack += 200000
	s.Window.HiSrv += 300000
	o.state[of] = s
	f := flowOf(d, client)
	if handle(t, d, tcp4(client, vip, fin, 1006+200000, 5101+300000, nil), 2e6) == nil {
		t.Fatal("FIN not forwarded")
	}
	if o.withdraws != 1 || f.offloaded || d.Offloaded() != 0 {
		t.Fatalf("withdraws %d, offloaded %v", o.withdraws, f.offloaded)
	}
	if f.State == StateEstablished || f.win.cli.end != 1006+200001 {
		t.Fatalf("after the FIN: state %v, client end %d (the fast path's state not taken)", f.State, f.win.cli.end)
	}
	if st := d.Stats(); st.OutOfWindow[DirToReal] != 0 {
		t.Fatalf("out of window %d", st.OutOfWindow[DirToReal])
	}
}

// A segment of an offloaded flow that reaches the Director right after the
// offload (it was in the TUN already) is handled without taking the flow
// back; one after Settle is a punt, and takes it back.
func TestOffloadSettle(t *testing.T) {
	d, o := offloadDirector(t)
	knownFlow(t, d)
	d.OffloadPending(10)
	handle(t, d, tcp4(rs1, client, psh, 5101, 1006, make([]byte, 10)), 10+5e5)
	if o.withdraws != 0 || d.Offloaded() != 1 {
		t.Fatalf("taken back within the settle time (%d)", o.withdraws)
	}
	handle(t, d, tcp4(rs1, client, psh, 5111, 1006, make([]byte, 10)), 10+2e6)
	if o.withdraws != 1 || d.Offloaded() != 0 {
		t.Fatalf("not taken back after the settle time (%d)", o.withdraws)
	}
	// It qualifies again after 4 more segments.
	for i := range 4 {
		handle(t, d, tcp4(client, vip, ack, 1006, 5121, nil), 10+3e6+int64(i))
	}
	if n := d.OffloadPending(10 + 4e6); n != 1 {
		t.Fatalf("re-offloaded %d, want 1", n)
	}
}

// What takes every offloaded flow of a real back: the real going down, a
// removal with rehome, a reload, the flow's expiry; a plain removal (the
// flows finish where they are) does not.
func TestOffloadWithdrawnOnChanges(t *testing.T) {
	for _, c := range []struct {
		name   string
		change func(d *Director) error
		want   int
	}{
		{"down", func(d *Director) error { return d.SetDown(balancer.TCP, ap(vip), ap(rs1), true) }, 1},
		{"down other real", func(d *Director) error { return d.SetDown(balancer.TCP, ap(vip), ap(rs2), true) }, 0},
		{"remove", func(d *Director) error { return d.RemoveReal(balancer.TCP, ap(vip), ap(rs1), false) }, 0},
		{"reload", func(d *Director) error { return d.Reconfigure(svcWith(t, rs1, rs2)) }, 1},
		{"expiry", func(d *Director) error { d.Sweep(1e18, 100); return nil }, 1},
		{"withdraw", func(d *Director) error { d.Withdraw(protoTCP, ap(client), ap(vip)); return nil }, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, o := offloadDirector(t)
			knownFlow(t, d)
			if d.OffloadPending(1) != 1 {
				t.Fatal("not offloaded")
			}
			if err := c.change(d); err != nil {
				t.Fatal(err)
			}
			if o.withdraws != c.want || d.Offloaded() != 1-c.want {
				t.Fatalf("withdraws %d, offloaded %d; want %d withdrawn", o.withdraws, d.Offloaded(), c.want)
			}
		})
	}
}

// Not offloaded: a flow still in its handshake, a recovered flow, an
// IPv6 flow when the fast path carries IPv4 only, any flow with offload
// off; and a refused offload leaves the flow on the TUN path.
func TestOffloadNot(t *testing.T) {
	t.Run("handshake", func(t *testing.T) {
		d, o := offloadDirector(t)
		for range 5 {
			handle(t, d, tcp4(client, vip, syn, 1000, 0, nil), 1)
		}
		if d.OffloadPending(1) != 0 || o.offloads != 0 {
			t.Fatal("a SYN's flow offloaded")
		}
	})
	t.Run("recovered", func(t *testing.T) {
		d, _ := newRecDirector(t)
		o := newFakeFast()
		d.SetOffload(o, OffloadConfig{Segments: 2})
		recoveredFlow(t, d)
		for range 4 {
			handle(t, d, tcp4(client, vip, ack, 1005, 2100, nil), 2)
		}
		if d.OffloadPending(2) != 0 {
			t.Fatal("a recovered flow offloaded")
		}
	})
	t.Run("off", func(t *testing.T) {
		d := newTestDirector(t)
		o := newFakeFast()
		d.SetOffload(o, OffloadConfig{})
		knownFlow(t, d)
		if d.OffloadPending(1) != 0 {
			t.Fatal("offloaded with Segments 0")
		}
	})
	t.Run("refused", func(t *testing.T) {
		d, o := offloadDirector(t)
		o.refuse = true
		knownFlow(t, d)
		if d.OffloadPending(1) != 0 || d.Offloaded() != 0 || flowOf(d, client).offloaded {
			t.Fatal("a refused flow marked offloaded")
		}
	})
}

// What the fast path carried refreshes the flow's idle timer and its
// real's counters; a flow that carried nothing keeps its expiry.
func TestFastCarried(t *testing.T) {
	d, _ := offloadDirector(t)
	f := knownFlow(t, d)
	d.OffloadPending(1)
	before := d.Services()[0].Reals[0]
	exp := f.Expires
	if n := d.FastCarried([]FastUpdate{{Proto: protoTCP, Client: ap(client), VIP: ap(vip)}}, 100*sec); n != 1 || f.Expires != exp {
		t.Fatalf("idle flow: found %d, expiry %d -> %d", n, exp, f.Expires)
	}
	d.FastCarried([]FastUpdate{{Proto: protoTCP, Client: ap(client), VIP: ap(vip), PacketsIn: 5, PacketsOut: 7, BytesIn: 500, BytesOut: 7000}}, 100*sec)
	if f.Expires != 100*sec+d.timeouts[StateEstablished] {
		t.Fatalf("expiry %d after carried packets", f.Expires)
	}
	after := d.Services()[0].Reals[0]
	if after.PacketsIn-before.PacketsIn != 5 || after.PacketsOut-before.PacketsOut != 7 || after.BytesOut-before.BytesOut != 7000 {
		t.Fatalf("real counters %+v -> %+v", before, after)
	}
}

// Counting segments costs the packet path no allocation.
func TestOffloadCountAllocs(t *testing.T) {
	d, _ := offloadDirector(t)
	knownFlow(t, d)
	pkt := tcp4(client, vip, ack, 1006, 5101, nil)
	buf := make([]byte, len(pkt))
	n := testing.AllocsPerRun(100, func() {
		copy(buf, pkt)
		d.HandlePacket(buf, 3)
	})
	if n != 0 {
		t.Fatalf("%v allocations a packet", n)
	}
}

// Taking a flow back merges: what the Director learned itself from
// packets that reached it after the offload (the settle time) is kept
// where it is ahead of the map's, and the map's is taken where it is
// ahead. Overwriting would lower the stale mark below server bytes the
// client then acknowledges: a live flow judged stale.
func TestFastStateMerge(t *testing.T) {
	d := cookieDirector(t, 4)
	f := knownFlow(t, d)
	s := f.fastState()
	s.Window.Cli.End += 100                                 // the map is ahead on the client's side
	f.win.srv.end, f.hiSrv = f.win.srv.end+500, f.hiSrv+500 // nat is ahead on the real's
	f.ck.last, f.ck.flags = 1000, f.ck.flags|ckSent
	s.Cookie.Last, s.Cookie.Sent = 900, true // an older cookie in the map
	wantCli, wantSrv, wantHi := s.Window.Cli.End, f.win.srv.end, f.hiSrv
	f.importFast(s)
	if f.win.cli.end != wantCli || f.win.srv.end != wantSrv || f.hiSrv != wantHi || f.ck.last != 1000 {
		t.Fatalf("merged: client end %d (want %d), real end %d (want %d), mark %d (want %d), cookie last %d (want 1000)",
			f.win.cli.end, wantCli, f.win.srv.end, wantSrv, f.hiSrv, wantHi, f.ck.last)
	}
}
