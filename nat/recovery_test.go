package nat

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"holdfast/internal/wire"
	"holdfast/nat/nattest"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// fakeDialer records what the Director asks of its recovery engine.
type fakeDialer struct {
	dials     []dialReq
	cancelled []Key
}

type dialReq struct {
	key Key
	o   wire.DialOptions
}

func (f *fakeDialer) Dial(k Key, o wire.DialOptions) { f.dials = append(f.dials, dialReq{k, o}) }
func (f *fakeDialer) Cancel(k Key)                   { f.cancelled = append(f.cancelled, k) }

const (
	recAddr = "198.18.200.1"
	local   = "198.18.200.1:10000"
)

// newRecDirector is a Director with recovery on, a fakeDialer, and peers
// that answer its probes and challenges at once (nattest.Peers): every miss
// goes straight through to a recovery dial, as when the connection's real
// died.
func newRecDirector(t testing.TB, mod ...func(*RecoveryConfig)) (*Director, *fakeDialer) {
	t.Helper()
	d, fr, _ := newRecDirectorPeers(t, mod...)
	return d, fr
}

func newRecDirectorPeers(t testing.TB, mod ...func(*RecoveryConfig)) (*Director, *fakeDialer, *nattest.Peers) {
	t.Helper()
	return recDirector(t, 0, mod...)
}

// recDirector is newRecDirectorPeers with timestamp cookies of cookieBits
// bits (0: off).
func recDirector(t testing.TB, cookieBits int, mod ...func(*RecoveryConfig)) (*Director, *fakeDialer, *nattest.Peers) {
	t.Helper()
	fr := &fakeDialer{}
	pr := &nattest.Peers{}
	d := newTestDirector(t, func(c *Config) {
		c.CookieBits = cookieBits
		c.Recovery = RecoveryConfig{
			Enabled: true, Dialer: fr, Addrs: []netip.Addr{netip.MustParseAddr(recAddr)},
			PortLo: 10000, PortHi: 10009, WScale: 7, MSS: 1460,
			Rate: 1000, MaxInflight: 10, ParkBytes: 1 << 20, ParkFlowBytes: 1 << 16,
		}
		for _, m := range mod {
			m(&c.Recovery)
		}
		c.Emit = pr.Emit
	})
	answer(d, pr)
	return d, fr, pr
}

// answer makes pr answer d's probes and challenges (see nattest.Peers).
func answer(d *Director, pr *nattest.Peers) {
	pr.VIPs, pr.Reals = make(map[netip.Addr]bool), make(map[netip.Addr]bool)
	for a := range d.vips {
		pr.VIPs[a] = true
	}
	for a := range d.realAddrs {
		pr.Reals[a] = true
	}
	pr.Handle = func(b []byte, now int64) { d.Handle(b, false, now) }
}

// TCP option builders (each padded with NOPs to a multiple of 4).
func tsOpt(val, ecr uint32) []byte {
	b := []byte{1, 1, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[4:], val)
	binary.BigEndian.PutUint32(b[8:], ecr)
	return b
}

func sackOpt(edges ...uint32) []byte {
	b := []byte{1, 1, 5, byte(2 + 4*len(edges))}
	for _, e := range edges {
		b = binary.BigEndian.AppendUint32(b, e)
	}
	return b
}

func opts(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// Golden translation of a recovered flow, every value chosen to cross the
// 2^32 wrap somewhere.
func TestRecoveredTranslationGolden(t *testing.T) {
	d, fr := newRecDirector(t)
	key := Key{protoTCP, ap(client), ap(vip)}
	data := bytes.Repeat([]byte{'a'}, 256)

	// The first mid-stream segment parks and starts a recovery; so does
	// nothing else for the second, which parks behind it.
	seg1 := tcp4(client, vip, psh, 0xffffff00, 0x7ffffff0, data, tsOpt(1000, 0xfffffff0)...)
	seg2 := tcp4(client, vip, psh, 0x00000000, 0x7ffffff0, data, tsOpt(1001, 0xfffffff0)...)
	for i, s := range [][]byte{seg1, seg2} {
		if out := handle(t, d, s, 1); out != nil {
			t.Fatalf("segment %d forwarded before recovery", i)
		}
	}
	// Without the client's handshake, the SYN says what is configured.
	if want := (dialReq{key, wire.DialOptions{Local: ap(local), Remote: ap(rs1), Timestamps: true, SACK: true, WScale: 7, MSS: 1460}}); len(fr.dials) != 1 || fr.dials[0] != want {
		t.Fatalf("recoveries started: %+v, want %+v", fr.dials, want)
	}
	if st := d.Stats(); st.Verdicts[wire.Park] != 2 || st.ParkedBytes != len(seg1)+len(seg2) || st.Inflight != 1 {
		t.Fatalf("parking stats %+v", st)
	}
	hs := wire.Handshake{AckSeq: 0x10, AckAck: 0xfffffff8, AckTSval: 5, SynAckTSval: 0xfffffffe, TS: true, OurWScale: 7, PeerWScale: 7}
	out := d.Recovered(key, hs, 2)
	if ok := d.Stats().RecoverySucceeded == 1; !ok || len(out) != 2 {
		t.Fatalf("Recovered: ok=%v, %d packets", ok, len(out))
	}
	// SeqDelta = 0xffffff00-0x10, AckDelta = 0x7ffffff0-0xfffffff8,
	// TSvalDelta = 995, TSecrDelta = 0xfffffff0-0xfffffffe.
	want := [][]byte{
		tcp4(local, rs1, psh, 0x10, 0xfffffff8, data, tsOpt(5, 0xfffffffe)...),
		tcp4(local, rs1, psh, 0x110, 0xfffffff8, data, tsOpt(6, 0xfffffffe)...),
	}
	for i := range want {
		checkChecksums(t, out[i])
		if !bytes.Equal(out[i], want[i]) {
			t.Fatalf("flushed segment %d:\n got %x\nwant %x", i, out[i], want[i])
		}
	}

	cases := []struct {
		name    string
		in, out []byte
	}{
		{
			"server data to client",
			tcp4(rs1, local, psh, 0xfffffff8, 0x210, []byte("hello"), tsOpt(0xffffffff, 6)...),
			tcp4(vip, client, psh, 0x7ffffff0, 0x100, []byte("hello"), tsOpt(0xfffffff1, 1001)...),
		},
		{
			"client ack with a D-SACK block below its ack",
			tcp4(client, vip, ack, 0x100, 0x7ffffff5, nil, opts(tsOpt(1002, 0xfffffff1), sackOpt(0x7fffff00, 0x7fffff10))...),
			tcp4(local, rs1, ack, 0x210, 0xfffffffd, nil, opts(tsOpt(7, 0xffffffff), sackOpt(0xffffff08, 0xffffff18))...),
		},
		{
			"server SACK of client bytes",
			tcp4(rs1, local, ack, 0xfffffffd, 0x210, nil, opts(tsOpt(0, 7), sackOpt(0x310, 0x410))...),
			tcp4(vip, client, ack, 0x7ffffff5, 0x100, nil, opts(tsOpt(0xfffffff2, 1002), sackOpt(0x200, 0x300))...),
		},
	}
	for _, c := range cases {
		got := handle(t, d, c.in, 3)
		if !bytes.Equal(got, c.out) {
			t.Fatalf("%s:\n got %x\nwant %x", c.name, got, c.out)
		}
	}
	f := d.Flows(3)
	if len(f) != 1 || f[0].Kind != KindRecovered || f[0].Local != ap(local) {
		t.Fatalf("flows %+v", f)
	}
	if st := d.Stats(); st.RecoverySucceeded != 1 || st.ParkedBytes != 0 || st.Inflight != 0 {
		t.Fatalf("stats after recovery %+v", st)
	}
	// The flow holds its port; idle past the timeout, the flow goes and
	// its port is released.
	held := pair{endpointOf(ap(local)), endpointOf(ap(rs1))}
	if _, ok := d.rec.ports.inUse[held]; !ok || len(d.rec.ports.inUse) != 1 {
		t.Fatalf("ports in use %v, want %v", d.rec.ports.inUse, held)
	}
	d.Sweep(3+16*60*sec, 100)
	if len(d.rec.ports.inUse) != 0 {
		t.Fatalf("ports still in use after the flow ended: %v", d.rec.ports.inUse)
	}
}

// Without client timestamps, the recovery asks for none, and options other
// than SACK pass untouched.
func TestRecoveryWithoutTimestamps(t *testing.T) {
	d, fr := newRecDirector(t)
	handle(t, d, tcp4(client, vip, psh, 100, 200, []byte("GET /")), 1)
	key := Key{protoTCP, ap(client), ap(vip)}
	if len(fr.dials) != 1 || fr.dials[0].o.Timestamps {
		t.Fatalf("started %+v, want one without timestamps", fr.dials)
	}
	out := d.Recovered(key, wire.Handshake{AckSeq: 1, AckAck: 2, OurWScale: 7, PeerWScale: 9}, 2)
	if want := tcp4(local, rs1, psh, 1, 2, []byte("GET /")); len(out) != 1 || !bytes.Equal(out[0], want) {
		t.Fatalf("flushed %x, want %x", out, want)
	}
	// A window field crosses unchanged: the client's shift is unknown.
	in := tcp4(rs1, local, psh, 2, 6, []byte("x"))
	got := handle(t, d, in, 3)
	if w := header.TCP(got[20:]).WindowSize(); w != 502 {
		t.Fatalf("window %d, want 502 (no rescale with an unknown shift)", w)
	}
}

func TestRescale(t *testing.T) {
	cases := []struct {
		in, out int8
		w, want uint16
	}{
		{7, 7, 100, 100},
		{9, 7, 100, 400},
		{7, 9, 100, 25},
		{7, 9, 101, 26},       // rounded up
		{7, 14, 1, 1},         // never 0 for a non-zero window
		{0, 7, 0, 0},          // a zero window stays zero
		{14, 0, 4, 0xffff},    // clamped
		{-1, 7, 1234, 1234},   // unknown: untouched
		{2, -1, 1234, 1234},   // unknown: untouched
		{0, 7, 65535, 512},    // 65535 bytes in 128-byte units, rounded up
		{7, 0, 65535, 0xffff}, // clamped
	}
	for _, c := range cases {
		s := shift{c.in, c.out}
		got := c.w
		if s.active() {
			got = s.rescale(c.w)
		}
		if got != c.want {
			t.Errorf("rescale %d from shift %d to %d = %d, want %d", c.w, c.in, c.out, got, c.want)
		}
	}
	// Through apply, with the checksum kept.
	pkt := tcp4(client, vip, ack, 1, 1, nil)
	var p packet
	p.decodeIP(pkt)
	p.decodeL4()
	xlate{win: shift{9, 7}}.apply(&p)
	checkChecksums(t, pkt)
	if w := header.TCP(p.l4).WindowSize(); w != 502*4 {
		t.Fatalf("window %d, want %d", w, 502*4)
	}
}

func TestRecoveryTriggers(t *testing.T) {
	allowOnly := func(c *RecoveryConfig) { c.Allow = []netip.Prefix{netip.MustParsePrefix("198.18.1.0/25")} }
	cases := []struct {
		name string
		mod  func(*RecoveryConfig)
		pkt  []byte
		want DropReason
	}{
		{"pure ack", nil, tcp4(client, vip, ack, 1, 1, nil), DropNoTrigger},
		{"fin", nil, tcp4(client, vip, fin, 1, 1, nil), DropNoTrigger},
		{"keepalive probe", nil, tcp4(client, vip, ack, 0, 1, []byte{0}), DropNoTrigger},
		{"sack blocks", nil, tcp4(client, vip, psh, 1, 1, []byte("data"), sackOpt(5, 9)...), DropSACKTrigger},
		{"rst", nil, tcp4(client, vip, rst, 1, 1, nil), DropStrayRST},
		{"not allowed", allowOnly, tcp4("198.18.1.200:1000", vip, psh, 1, 1, []byte("data")), DropRecoveryDenied},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var mods []func(*RecoveryConfig)
			if c.mod != nil {
				mods = append(mods, c.mod)
			}
			d, fr := newRecDirector(t, mods...)
			if out, _ := d.HandlePacket(c.pkt, 1); out != nil {
				t.Fatal("forwarded")
			}
			if got := d.Stats().Drop(c.want); got != 1 || len(fr.dials) != 0 {
				t.Fatalf("%v = %d, recoveries %d; want 1 and 0", c.want, got, len(fr.dials))
			}
		})
	}
	t.Run("allowed", func(t *testing.T) {
		d, fr := newRecDirector(t, allowOnly)
		handle(t, d, tcp4(client, vip, psh, 1, 1, []byte("data")), 1)
		if len(fr.dials) != 1 {
			t.Fatalf("client in the allowed prefix: %d recoveries", len(fr.dials))
		}
	})
	t.Run("rate and inflight", func(t *testing.T) {
		d, fr := newRecDirector(t, func(c *RecoveryConfig) { c.Rate = 2; c.MaxInflight = 3 })
		seg := func(port int) []byte {
			return tcp4("198.18.1.2:"+itoa(port), vip, psh, 1, 1, []byte("data"))
		}
		for i := range 4 { // burst of 2, then refused by the rate
			handle(t, d, seg(1000+i), 1)
		}
		if st := d.Stats(); len(fr.dials) != 2 || st.Drop(DropRecoveryRate) != 2 {
			t.Fatalf("at one instant: %d started, %d rate-limited", len(fr.dials), st.Drop(DropRecoveryRate))
		}
		handle(t, d, seg(2000), 1+sec) // a second later, tokens again
		handle(t, d, seg(2001), 1+sec) // but 3 in flight is the cap
		if st := d.Stats(); len(fr.dials) != 3 || st.Drop(DropRecoveryBusy) != 1 {
			t.Fatalf("after refill: %d started, %d busy", len(fr.dials), st.Drop(DropRecoveryBusy))
		}
	})
	t.Run("park limit", func(t *testing.T) {
		d, _ := newRecDirector(t, func(c *RecoveryConfig) { c.ParkFlowBytes = 2000 })
		big := make([]byte, 900)
		for i := range 3 {
			handle(t, d, tcp4(client, vip, psh, uint32(1+900*i), 1, big), 1)
		}
		if st := d.Stats(); st.Verdicts[wire.Park] != 2 || st.Drop(DropParkFull) != 1 {
			t.Fatalf("parked %d, park_full %d; want 2 and 1", st.Verdicts[wire.Park], st.Drop(DropParkFull))
		}
	})
}

// A failed recovery answers the client with a RST it accepts: seq = the ack
// it sent (its RCV.NXT).
func TestRecoveryFailureResetsClient(t *testing.T) {
	d, _ := newRecDirector(t)
	key := Key{protoTCP, ap(client), ap(vip)}
	handle(t, d, tcp4(client, vip, psh, 5000, 9000, []byte("GET /")), 1)
	handle(t, d, tcp4(client, vip, psh, 5005, 9100, []byte("more")), 1)
	out := d.Failed(key, FailRefused, 2)
	want := asRST(tcp4(vip, client, rst|ack, 9100, 5009, nil))
	if len(out) != 1 || !bytes.Equal(out[0], want) {
		t.Fatalf("RST:\n got %x\nwant %x", out, want)
	}
	st := d.Stats()
	if st.RecoveryFailed[FailRefused] != 1 || st.ClientResets != 1 || st.Inflight != 0 || st.ParkedBytes != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// Server-side adoption: the original real proves it holds the connection.
func TestAdoption(t *testing.T) {
	t.Run("no flow", func(t *testing.T) {
		d, _ := newRecDirector(t)
		out := handle(t, d, tcp4(rs2, client, psh, 7, 8, []byte("retransmit")), 1)
		if want := tcp4(vip, client, psh, 7, 8, []byte("retransmit")); !bytes.Equal(out, want) {
			t.Fatalf("adopted packet:\n got %x\nwant %x", out, want)
		}
		out = handle(t, d, tcp4(client, vip, ack, 8, 17, nil), 2)
		if _, dst := addrs(out); dst != ap(rs2) {
			t.Fatalf("client packet to %v, want the adopting real %v", dst, rs2)
		}
		if f := d.Flows(2); len(f) != 1 || f[0].Kind != KindAdopted || d.Stats().Adopted != 1 {
			t.Fatalf("flows %+v", f)
		}
	})
	t.Run("server data before the first client ack", func(t *testing.T) {
		// The adopting real keeps sending before the client acks anything:
		// an ack of all of it is not stale.
		d, fr := newRecDirector(t)
		for i := range 3 {
			handle(t, d, tcp4(rs2, client, psh, uint32(7+1000*i), 8, make([]byte, 1000)), 1)
		}
		if out := handle(t, d, tcp4(client, vip, ack, 8, 3007, nil), 2); out == nil {
			t.Fatal("ack of adopted data dropped")
		}
		if out := handle(t, d, tcp4(client, vip, psh, 8, 3007, []byte("GET /")), 2); out == nil || len(fr.dials) != 0 {
			t.Fatalf("next request: forwarded %v, recoveries %d", out != nil, len(fr.dials))
		}
		if st := d.Stats(); st.StaleFlows != 0 || st.Adopted != 1 {
			t.Fatalf("stats %+v", st)
		}
	})
	t.Run("client holds bytes of the dead director", func(t *testing.T) {
		// Segments the dead director forwarded arrive out of order after
		// the adoption; the client SACKs them, then acks them once the
		// hole is filled. That is not a stale flow.
		d, fr := newRecDirector(t)
		handle(t, d, tcp4(rs2, client, psh, 1000, 8, make([]byte, 1000)), 1)
		handle(t, d, tcp4(client, vip, ack, 8, 2000, nil, sackOpt(5000, 9000)...), 2)
		handle(t, d, tcp4(rs2, client, psh, 2000, 8, make([]byte, 1000)), 2)
		handle(t, d, tcp4(client, vip, ack, 8, 9000, nil), 3)
		if st := d.Stats(); st.StaleFlows != 0 || len(fr.dials) != 0 {
			t.Fatalf("stale %d, recoveries %d", st.StaleFlows, len(fr.dials))
		}
		// Beyond anything seen or held, it is: the client's answer to the
		// challenge fits the segment (the peers answer at once), and its
		// retransmission is recovered.
		handle(t, d, tcp4(client, vip, psh, 8, 9500, []byte("GET /")), 4)
		handle(t, d, tcp4(client, vip, psh, 8, 9500, []byte("GET /")), 5)
		if st := d.Stats(); st.StaleFlows != 1 || len(fr.dials) != 1 {
			t.Fatalf("stale %d, recoveries %d; want 1 and 1", st.StaleFlows, len(fr.dials))
		}
	})
	t.Run("during a dial", func(t *testing.T) {
		d, fr := newRecDirector(t)
		key := Key{protoTCP, ap(client), ap(vip)}
		handle(t, d, tcp4(client, vip, psh, 100, 200, []byte("GET /")), 1)
		handle(t, d, tcp4(rs3, client, psh, 200, 100, []byte("old")), 2)
		if len(fr.cancelled) != 1 || fr.cancelled[0] != key {
			t.Fatalf("aborted %+v", fr.cancelled)
		}
		// The engine reports the aborted dial: the parked segment goes to
		// the adopting real, untranslated.
		out := d.Failed(key, FailError, 3)
		if want := tcp4(client, rs3, psh, 100, 200, []byte("GET /")); len(out) != 1 || !bytes.Equal(out[0], want) {
			t.Fatalf("flushed %x, want %x", out, want)
		}
		st := d.Stats()
		if st.AdoptAborts != 1 || st.ClientResets != 0 || st.Inflight != 0 {
			t.Fatalf("stats %+v", st)
		}
		if len(d.rec.ports.inUse) != 0 || len(d.rec.dialing) != 0 {
			t.Fatalf("the aborted dial still holds a port %v or the gate %v", d.rec.ports.inUse, d.rec.dialing)
		}
	})
	t.Run("recovered elsewhere", func(t *testing.T) {
		d, _ := newRecDirector(t)
		key := Key{protoTCP, ap(client), ap(vip)}
		handle(t, d, tcp4(client, vip, psh, 100, 200, []byte("GET /")), 1)
		d.Recovered(key, wire.Handshake{AckSeq: 1, AckAck: 1}, 2)
		// The old real (rs3) still holds the original connection: it gets
		// a RST at its RCV.NXT (the ack it sent), the client nothing.
		out := handle(t, d, tcp4(rs3, client, psh, 200, 105, []byte("late")), 3)
		want := asRST(tcp4(client, rs3, rst, 105, 0, nil))
		if !bytes.Equal(out, want) {
			t.Fatalf("RST to the old real:\n got %x\nwant %x", out, want)
		}
		if st := d.Stats(); st.OldRealResets != 1 || st.Verdicts[wire.Reset] != 1 {
			t.Fatalf("stats %+v", st)
		}
	})
}

// A flow whose client acknowledges server bytes this director never carried
// is suspect; the client's answer to a challenge proves the segment its own,
// so the flow is stale (failback without sync), and the client's
// retransmission goes through recovery again.
func TestStaleFlowRecoversAgain(t *testing.T) {
	d, fr, pr := newRecDirectorPeers(t)
	handle(t, d, tcp4(client, vip, syn, 1000, 0, nil), 1)
	handle(t, d, tcp4(rs1, client, synack, 5000, 1001, nil), 1)
	handle(t, d, tcp4(client, vip, ack, 1001, 5001, nil), 1)
	handle(t, d, tcp4(rs1, client, psh, 5001, 1001, make([]byte, 100)), 1)
	// Acks up to what crossed this director are fine.
	if out := handle(t, d, tcp4(client, vip, ack, 1001, 5101, nil), 2); out == nil {
		t.Fatal("ack of forwarded bytes dropped")
	}
	// Then the connection lives on elsewhere and comes back: the segment
	// goes to the flow's real, unchanged but for the address, and the
	// client is challenged.
	if out := handle(t, d, tcp4(client, vip, psh, 1001, 9000, []byte("GET /")), 3); out == nil {
		t.Fatal("segment of a suspect flow dropped")
	}
	if st := d.Stats(); st.StaleFlows != 1 || st.StaleChallenges != 1 || len(pr.Challenges) != 1 || st.Flows != 0 {
		t.Fatalf("stale %d, stale challenges %d (sent %d), flows %d; want 1, 1, 1, 0", st.StaleFlows, st.StaleChallenges, len(pr.Challenges), st.Flows)
	}
	handle(t, d, tcp4(client, vip, psh, 1001, 9000, []byte("GET /")), 4)
	if len(fr.dials) != 1 {
		t.Fatalf("recoveries %d; want 1", len(fr.dials))
	}
}

// Packets to a recovery address reach the netstack only for a dial in
// progress.
func TestRecoveryAddressOnlyForDials(t *testing.T) {
	d, _ := newRecDirector(t)
	synAck := tcp4(rs1, local, synack, 1, 2, nil)
	if out, toStack := d.HandlePacket(bytes.Clone(synAck), 1); out != nil || toStack {
		t.Fatal("packet for an unknown recovery tuple was passed on")
	}
	key := Key{protoTCP, ap(client), ap(vip)}
	// Asking for the dial opens the gate for its tuple.
	handle(t, d, tcp4(client, vip, psh, 1, 1, []byte("GET /")), 1)
	if out, toStack := d.HandlePacket(bytes.Clone(synAck), 2); out != nil || !toStack {
		t.Fatal("SYN-ACK of a dial in progress did not go to the stack")
	}
	if got := d.Stats().Drop(DropRecoveryNoFlow); got != 1 {
		t.Fatalf("recovery_no_flow = %d, want 1", got)
	}
	// The dial's end closes it.
	d.Failed(key, FailTimeout, 3)
	if out, toStack := d.HandlePacket(bytes.Clone(synAck), 4); out != nil || toStack {
		t.Fatal("packet for the tuple of an ended dial was passed on")
	}
}

// ICMP errors about a recovered flow carry the quoted header each side knows,
// sequence number included.
func TestRecoveredICMP(t *testing.T) {
	d, _ := newRecDirector(t)
	key := Key{protoTCP, ap(client), ap(vip)}
	handle(t, d, tcp4(client, vip, psh, 0x1000, 0x9000, []byte("GET /")), 1)
	d.Recovered(key, wire.Handshake{AckSeq: 0x10, AckAck: 0x20}, 2)
	// SeqDelta 0xff0, AckDelta 0x8fe0.
	fixQuoteCsum := func(want, in []byte) { copy(want[36:38], in[36:38]) }

	quoteIn := tcp4(local, rs1, psh, 0x15, 0x20, make([]byte, 64))[:48]
	wantQ := tcp4(client, vip, psh, 0x1005, 0x20, make([]byte, 64))[:48]
	fixQuoteCsum(wantQ, quoteIn)
	in := icmp4("198.18.10.11", recAddr, header.ICMPv4DstUnreachable, header.ICMPv4FragmentationNeeded, 1400, quoteIn)
	want := icmp4("198.18.100.1", "198.18.1.2", header.ICMPv4DstUnreachable, header.ICMPv4FragmentationNeeded, 1400, wantQ)
	if out := handle(t, d, in, 3); !bytes.Equal(out, want) {
		t.Fatalf("real-side error:\n got %x\nwant %x", out, want)
	}
	quoteOut := tcp4(vip, client, psh, 0x9000, 0x1005, make([]byte, 64))[:48]
	wantQ = tcp4(rs1, local, psh, 0x20, 0x1005, make([]byte, 64))[:48]
	fixQuoteCsum(wantQ, quoteOut)
	in = icmp4("198.18.2.1", "198.18.100.1", header.ICMPv4DstUnreachable, header.ICMPv4FragmentationNeeded, 1400, quoteOut)
	want = icmp4("198.18.2.1", "198.18.10.11", header.ICMPv4DstUnreachable, header.ICMPv4FragmentationNeeded, 1400, wantQ)
	if out := handle(t, d, in, 4); !bytes.Equal(out, want) {
		t.Fatalf("client-side error:\n got %x\nwant %x", out, want)
	}
}

// asRST clears what the director's RSTs leave zero (window, IP ID) in a
// built packet and fixes its checksums.
func asRST(b []byte) []byte {
	ip := header.IPv4(b)
	ip.SetID(0)
	ip.SetChecksum(0)
	ip.SetChecksum(^ip.CalculateChecksum())
	header.TCP(b[20:]).SetWindowSize(0)
	nattestFix(b)
	return b
}

func TestRecoveredAllocs(t *testing.T) {
	d, _ := newRecDirector(t)
	key := Key{protoTCP, ap(client), ap(vip)}
	handle(t, d, tcp4(client, vip, psh, 1000, 2000, []byte("GET /"), tsOpt(1, 2)...), 1)
	d.Recovered(key, wire.Handshake{AckSeq: 7, AckAck: 9, TS: true}, 2)
	in := tcp4(client, vip, ack, 1005, 2000, make([]byte, 100), opts(tsOpt(3, 4), sackOpt(1900, 1950))...)
	out := tcp4(rs1, local, psh, 9, 12, make([]byte, 100), tsOpt(5, 6)...)
	buf := make([]byte, len(in))
	n := testing.AllocsPerRun(1000, func() {
		copy(buf, in)
		d.HandlePacket(buf[:len(in)], 3)
		copy(buf, out)
		d.HandlePacket(buf[:len(out)], 3)
	})
	if n != 0 {
		t.Fatalf("%v allocations per recovered packet pair, want 0", n)
	}
}

// synOpts are SYN options: MSS, SACK-permitted, timestamps, window scale.
func synOpts(mss uint16, ws byte, tsval uint32) []byte {
	b := []byte{2, 4, byte(mss >> 8), byte(mss), 4, 2, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0, 1, 3, 3, ws}
	binary.BigEndian.PutUint32(b[8:], tsval)
	return b
}

// A flow whose real went down moves to another real at its next request
// once all of the old real's data is acknowledged, with the handshake the
// director saw: the recovery SYN says what the client said, and windows are
// rescaled exactly between the old real's shift and the new one's.
func TestRehome(t *testing.T) {
	for _, how := range []string{"down", "drain"} {
		t.Run(how, func(t *testing.T) {
			d, fr := newRecDirector(t)
			key := Key{protoTCP, ap(client), ap(vip)}
			handle(t, d, tcp4(client, vip, syn, 1000, 0, nil, synOpts(1400, 9, 50)...), 1)
			handle(t, d, tcp4(rs1, client, synack, 5000, 1001, nil, synOpts(1460, 7, 80)...), 1)
			handle(t, d, tcp4(client, vip, psh, 1001, 5001, []byte("GET /"), tsOpt(51, 80)...), 1)
			handle(t, d, tcp4(rs1, client, psh, 5001, 1006, make([]byte, 100), tsOpt(81, 51)...), 1)
			switch how {
			case "down":
				d.SetDown(6, ap(vip), ap(rs1), true)
			case "drain":
				if err := d.RemoveReal(6, ap(vip), ap(rs1), true); err != nil {
					t.Fatal(err)
				}
			}
			// Not all of the response is acknowledged: it stays.
			if out := handle(t, d, tcp4(client, vip, psh, 1006, 5050, []byte("GET /2"), tsOpt(52, 81)...), 2); out == nil {
				t.Fatal("request with unacknowledged data before it was not forwarded to the old real")
			}
			if len(fr.dials) != 0 {
				t.Fatalf("re-homed with server data unacknowledged: %+v", fr.dials)
			}
			// All acknowledged: the next request moves.
			if out := handle(t, d, tcp4(client, vip, psh, 1012, 5101, []byte("GET /3"), tsOpt(53, 81)...), 3); out != nil {
				t.Fatal("request of a flow on a leaving real forwarded")
			}
			want := dialReq{key, wire.DialOptions{Local: ap(local), Remote: ap(rs2), Timestamps: true, WScale: 9, MSS: 1400, SACK: true}}
			if len(fr.dials) != 1 || fr.dials[0] != want {
				t.Fatalf("re-home request %+v, want %+v", fr.dials, want)
			}
			// The old real's late packets are never adopted.
			if out := handle(t, d, tcp4(rs1, client, psh, 5101, 1018, []byte("late")), 3); out != nil {
				t.Fatal("packet of the old real forwarded during the re-home")
			}
			out := d.Recovered(key, wire.Handshake{AckSeq: 77, AckAck: 88, TS: true, AckTSval: 9, SynAckTSval: 3, OurWScale: 9, PeerWScale: 5}, 4)
			if ok := d.Stats().RecoverySucceeded == 1; !ok || len(out) != 1 {
				t.Fatalf("Recovered: %v, %d packets", ok, len(out))
			}
			if want := tcp4(local, rs2, psh, 77, 88, []byte("GET /3"), tsOpt(9, 3)...); !bytes.Equal(out[0], want) {
				t.Fatalf("flushed:\n got %x\nwant %x", out[0], want)
			}
			// The new real scales by 5, the client by 7 (the old real's).
			got := handle(t, d, tcp4(rs2, local, psh, 88, 83, []byte("ok"), tsOpt(4, 9)...), 5)
			if w := header.TCP(got[20:]).WindowSize(); w != (502<<5+127)>>7 {
				t.Fatalf("window to the client %d, want %d", w, (502<<5+127)>>7)
			}
			// Client to server: both scale by 9, the window passes.
			got = handle(t, d, tcp4(client, vip, ack, 1018, 5103, nil, tsOpt(54, 81)...), 5)
			if w := header.TCP(got[20:]).WindowSize(); w != 502 {
				t.Fatalf("window to the server %d, want 502", w)
			}
			st := d.Stats()
			if st.RehomeStarted != 1 || st.Rehomed != 1 || st.Drop(DropRehomed) != 1 {
				t.Fatalf("stats: started %d, rehomed %d, rehomed drops %d", st.RehomeStarted, st.Rehomed, st.Drop(DropRehomed))
			}
			if f := d.Flows(5); len(f) != 1 || f[0].Real != ap(rs2) || f[0].Kind != KindRecovered {
				t.Fatalf("flows %+v", f)
			}
		})
	}
}

// The engine's side of a recovery whose dials fail: Retry moves to a real not
// tried, from a newly reserved port, and frees the failed dial's port and
// gate; with no real left, Failed resets the client and nothing stays held.
func TestRecoveryRetryThenFail(t *testing.T) {
	d, fr := newRecDirector(t)
	key := Key{protoTCP, ap(client), ap(vip)}
	handle(t, d, tcp4(client, vip, psh, 5000, 9000, []byte("GET /")), 1)
	if len(fr.dials) != 1 || fr.dials[0].o.Remote != ap(rs1) || fr.dials[0].o.Local != ap(local) {
		t.Fatalf("first dial %+v", fr.dials)
	}
	synAckFrom := func(real string, local netip.AddrPort) []byte {
		return tcp4(real, local.String(), synack, 1, 2, nil)
	}
	seen := map[netip.AddrPort]bool{ap(rs1): true}
	prev := fr.dials[0].o
	for i, reason := range []FailReason{FailRefused, FailTimeout} {
		o, ok := d.Retry(key, reason, int64(2+i))
		if !ok || seen[o.Remote] || o.Local == prev.Local || o.Local.Addr() != netip.MustParseAddr(recAddr) {
			t.Fatalf("retry %d: %+v, %v (tried %v, previous %+v)", i, o, ok, seen, prev)
		}
		seen[o.Remote] = true
		if o.Timestamps || !o.SACK || o.WScale != 7 || o.MSS != 1460 {
			t.Fatalf("retry %d: SYN options %+v, want the configured ones", i, o)
		}
		// Only the dial in progress holds a port and the gate.
		if len(d.rec.ports.inUse) != 1 || len(d.rec.dialing) != 1 {
			t.Fatalf("retry %d: ports %v, gate %v", i, d.rec.ports.inUse, d.rec.dialing)
		}
		if _, toStack := d.HandlePacket(synAckFrom(prev.Remote.String(), prev.Local), 3); toStack {
			t.Fatalf("retry %d: the failed dial's tuple still reaches the netstack", i)
		}
		if _, toStack := d.HandlePacket(synAckFrom(o.Remote.String(), o.Local), 3); !toStack {
			t.Fatalf("retry %d: the new dial's tuple does not reach the netstack", i)
		}
		prev = o
	}
	if o, ok := d.Retry(key, FailRefused, 4); ok {
		t.Fatalf("a fourth real out of three: %+v", o)
	}
	st := d.Stats()
	if st.RecoveryRetries[FailRefused] != 1 || st.RecoveryRetries[FailTimeout] != 1 || st.Inflight != 1 {
		t.Fatalf("after the retries: %+v", st)
	}
	out := d.Failed(key, FailRefused, 5)
	want := asRST(tcp4(vip, client, rst|ack, 9000, 5005, nil))
	if len(out) != 1 || !bytes.Equal(out[0], want) {
		t.Fatalf("RST:\n got %x\nwant %x", out, want)
	}
	st = d.Stats()
	if st.RecoveryFailed[FailRefused] != 1 || st.ClientResets != 1 || st.Inflight != 0 || st.ParkedBytes != 0 {
		t.Fatalf("stats %+v", st)
	}
	if len(d.rec.ports.inUse) != 0 || len(d.rec.dialing) != 0 || len(d.rec.pending) != 0 {
		t.Fatalf("left held: ports %v, gate %v, pending %v", d.rec.ports.inUse, d.rec.dialing, d.rec.pending)
	}
	// A Retry or an end for a recovery nat no longer has does nothing.
	if _, ok := d.Retry(key, FailRefused, 6); ok {
		t.Fatal("Retry of an ended recovery")
	}
	if out := d.Failed(key, FailRefused, 6); out != nil {
		t.Fatalf("Failed of an ended recovery: %x", out)
	}
	if out := d.Recovered(key, wire.Handshake{}, 6); out != nil {
		t.Fatalf("Recovered of an ended recovery: %x", out)
	}
}

// A recovery the engine ends because it is stopping does not reset the
// client: the director is going away, and the one taking over can still
// recover the connection.
func TestRecoveryShutdownNoReset(t *testing.T) {
	d, _ := newRecDirector(t)
	key := Key{protoTCP, ap(client), ap(vip)}
	handle(t, d, tcp4(client, vip, psh, 5000, 9000, []byte("GET /")), 1)
	if out := d.Failed(key, FailShutdown, 2); len(out) != 0 {
		t.Fatalf("wrote %x on shutdown", out)
	}
	st := d.Stats()
	if st.RecoveryFailed[FailShutdown] != 1 || st.ClientResets != 0 || st.Inflight != 0 || len(d.rec.ports.inUse) != 0 {
		t.Fatalf("stats %+v, ports %v", st, d.rec.ports.inUse)
	}
}

// With every recovery port toward every real taken, a trigger fails at once
// and resets the client.
func TestRecoveryNoPort(t *testing.T) {
	d, fr, pr := newRecDirectorPeers(t, func(c *RecoveryConfig) { c.PortHi = c.PortLo })
	for i := range 3 { // one dial per real, from the one port
		handle(t, d, tcp4("198.18.1.2:"+itoa(1000+i), vip, psh, 1, 1, []byte("data")), 1)
	}
	if len(fr.dials) != 3 || len(d.rec.ports.inUse) != 3 {
		t.Fatalf("%d dials, ports %v", len(fr.dials), d.rec.ports.inUse)
	}
	pr.Out = nil
	v, _ := d.Handle(tcp4("198.18.1.2:2000", vip, psh, 700, 800, []byte("data")), false, 1)
	if want := asRST(tcp4(vip, "198.18.1.2:2000", rst|ack, 800, 704, nil)); v != wire.Park || len(pr.Out) != 1 || !bytes.Equal(pr.Out[0], want) {
		t.Fatalf("verdict %v, sent %x; want park, then a reset %x", v, pr.Out, want)
	}
	st := d.Stats()
	if len(fr.dials) != 3 || st.RecoveryStarted != 4 || st.RecoveryFailed[FailError] != 1 || st.ClientResets != 1 || st.Inflight != 3 {
		t.Fatalf("dials %d, stats %+v", len(fr.dials), st)
	}
}

// Parked segments are rewritten at most flushChunk bytes per hold of the
// lock, in order, and all of them in the end.
func TestRecoveredFlushInChunks(t *testing.T) {
	d, _ := newRecDirector(t, func(c *RecoveryConfig) { c.ParkFlowBytes = 1 << 20 })
	key := Key{protoTCP, ap(client), ap(vip)}
	const n, size = 100, 1400
	seg := func(i int) []byte {
		return tcp4(client, vip, psh, uint32(1000+i*size), 2000, bytes.Repeat([]byte{byte(i)}, size))
	}
	for i := range n {
		if v, _ := d.Handle(seg(i), false, 1); v != wire.Park {
			t.Fatalf("segment %d: %v", i, v)
		}
	}
	out := d.Recovered(key, wire.Handshake{AckSeq: 7, AckAck: 9}, 2)
	if len(out) != n {
		t.Fatalf("%d segments flushed, want %d", len(out), n)
	}
	for i, b := range out {
		checkChecksums(t, b)
		// SeqDelta 1000-7, AckDelta 2000-9.
		want := tcp4(local, rs1, psh, uint32(7+i*size), 9, bytes.Repeat([]byte{byte(i)}, size))
		if !bytes.Equal(b, want) {
			t.Fatalf("flushed segment %d out of order or wrong:\n got %x\nwant %x", i, b[:40], want[:40])
		}
	}
	// One chunk of a second batch for the installed flow stops within the
	// bound, and the next goes on from there.
	pd := &pending{}
	total := 0
	for i := range n {
		pd.parked = append(pd.parked, seg(n+i))
		total += len(pd.parked[i])
	}
	chunk, next, more := d.flushChunk(key, pd, nil, 0, 3)
	bytesIn := 0
	for _, b := range chunk {
		bytesIn += len(b)
	}
	if !more || next != len(chunk) || next == n || bytesIn > flushChunk || bytesIn+len(pd.parked[next]) <= flushChunk {
		t.Fatalf("one chunk: %d segments, %d bytes, next %d, more %v (of %d bytes)", len(chunk), bytesIn, next, more, total)
	}
	chunk, next, _ = d.flushChunk(key, pd, chunk, next, 3)
	if header.TCP(chunk[len(chunk)-1][20:]).SequenceNumber() != uint32(7+(n+next-1)*size) {
		t.Fatal("the second chunk does not go on where the first stopped")
	}
	// A flow gone between chunks gets none of the rest.
	d.Sweep(3+16*60*sec, 1000)
	if _, _, more := d.flushChunk(key, pd, nil, next, 3+16*60*sec); more {
		t.Fatal("a chunk flushed to a flow that is gone")
	}
}
