package nat

import (
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Adoption is a switch of its own: with recovery off it adopts when asked
// to (a director behind ECMP seeing only the reals' half of a flow), and
// by default it follows recovery, so that a recovery-off director stays
// plain NAT; with recovery on it can be turned off.
func TestAdoptionSwitch(t *testing.T) {
	for _, tc := range []struct {
		name     string
		recovery bool
		mode     AdoptMode
		adopted  bool
	}{
		{"recovery off, auto", false, AdoptAuto, false},
		{"recovery off, on", false, AdoptOn, true},
		{"recovery on, auto", true, AdoptAuto, true},
		{"recovery on, off", true, AdoptOff, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d *Director
			if tc.recovery {
				d, _ = newRecDirector(t)
				d.adoptMode = tc.mode
			} else {
				d = newTestDirector(t, func(c *Config) { c.Adoption = tc.mode })
			}
			out := handle(t, d, tcp4(rs1, client, psh, 5000, 3000, []byte("data")), 1)
			if got := out != nil; got != tc.adopted {
				t.Fatalf("a real's mid-stream segment forwarded %v, want %v", got, tc.adopted)
			}
			if got := d.Stats().Adopted; got != map[bool]uint64{true: 1}[tc.adopted] {
				t.Fatalf("%d adopted", got)
			}
			if tc.adopted {
				if src, dst := addrs(out); src != ap(vip) || dst != ap(client) {
					t.Fatalf("forwarded %v -> %v, want %v -> %v", src, dst, vip, client)
				}
			}
		})
	}
}

// Behind ECMP the routers hash the two directions apart: director X sees
// the client's SYN and every client segment, director Y the real's
// SYN-ACK and every reply. Y adopts the SYN-ACK (it never saw the SYN),
// X lets the client's handshake ACK through without having seen the
// SYN-ACK, and the connection carries data both ways, with recovery off
// and adoption on (plain NAT).
func TestHalfFlows(t *testing.T) {
	mk := func() *Director { return newTestDirector(t, func(c *Config) { c.Adoption = AdoptOn }) }
	x, y := mk(), mk()
	out := handle(t, x, tcp4(client, vip, syn, 1000, 0, nil, 2, 4, 5, 0xb4), 1)
	if out == nil {
		t.Fatal("X dropped the SYN")
	}
	_, real := addrs(out)
	if out = handle(t, y, tcp4(real.String(), client, synack, 9000, 1001, nil, 2, 4, 5, 0xb4), 1); out == nil {
		t.Fatal("Y dropped the SYN-ACK of a SYN X carried")
	}
	if src, dst := addrs(out); src != ap(vip) || dst != ap(client) {
		t.Fatalf("SYN-ACK forwarded %v -> %v", src, dst)
	}
	for i, seg := range []struct {
		d        *Director
		from, to string
		flags    header.TCPFlags
		seq, ack uint32
		data     string
	}{
		{x, client, vip, ack, 1001, 9001, ""},
		{x, client, vip, psh, 1001, 9001, "GET / HTTP/1.1\r\n\r\n"},
		{y, real.String(), client, psh, 9001, 1019, "HTTP/1.1 200 OK\r\n\r\n"},
		{x, client, vip, ack, 1019, 9020, ""},
		{x, client, vip, psh, 1019, 9020, "GET /2 HTTP/1.1\r\n\r\n"},
		{y, real.String(), client, psh, 9020, 1039, "HTTP/1.1 200 OK\r\n\r\n"},
	} {
		if out := handle(t, seg.d, tcp4(seg.from, seg.to, seg.flags, seg.seq, seg.ack, []byte(seg.data)), int64(2+i)); out == nil {
			t.Fatalf("segment %d (%s -> %s) dropped", i, seg.from, seg.to)
		}
	}
	for name, d := range map[string]*Director{"X": x, "Y": y} {
		st := d.Stats()
		if st.StaleSuspects != 0 || st.OutOfWindow[DirToReal] != 0 || st.OutOfWindow[DirToClient] != 0 || st.Flows != 1 {
			t.Errorf("%s: %d stale suspects, out of window %v, %d flows; want 0, none, 1", name, st.StaleSuspects, st.OutOfWindow, st.Flows)
		}
		// Each half is an established flow on the established timeout,
		// an active connection of its real (Y's began with the SYN-ACK:
		// not the real's own active open, SYN_SENT).
		last := map[string]int64{"X": 6, "Y": 7}[name] // its last segment's time
		if fl := d.Flows(8); len(fl) != 1 || fl[0].State != StateEstablished || fl[0].Expires != last+d.timeouts[StateEstablished] {
			t.Errorf("%s: flows %+v, want one ESTABLISHED expiring at %d", name, fl, last+d.timeouts[StateEstablished])
		}
		if r := d.services[0].Reals[d.realIndex(0, real)]; r.Active != 1 || r.Inactive != 0 {
			t.Errorf("%s: real %s has %d active, %d inactive flows; want 1, 0", name, real, r.Active, r.Inactive)
		}
	}
}

// A real's SYN-ACK is not adopted while the client's tuple has a miss in
// progress (the connection being looked for is another one), nor a bare
// SYN from a real's service port; a replaced SYN's record expires with the
// real's last retransmission, and the SYN-ACK is then adopted.
func TestSynAckAdoptionLimits(t *testing.T) {
	d, _, pr := newRecDirectorPeers(t)
	pr.Quiet = true // nobody answers: the miss stays in progress
	handle(t, d, tcp4(client, vip, psh, 100, 200, []byte("GET /")), 1)
	if out := handle(t, d, tcp4(rs1, client, synack, 9000, 778, nil), 1); out != nil || d.Stats().Adopted != 0 {
		t.Fatalf("a SYN-ACK on a tuple with a miss in progress was adopted: %x", out)
	}
	if out := handle(t, d, tcp4(rs1, client2, syn, 9000, 0, nil), 1); out != nil || d.Stats().Adopted != 0 {
		t.Fatalf("a real's bare SYN was adopted: %x", out)
	}

	d, _ = newRecDirector(t)
	d.noteReplacedSyn(packKey(Key{protoTCP, ap(client2), ap(vip)}), 1)
	if out := handle(t, d, tcp4(rs1, client2, synack, 9000, 778, nil), 2); out != nil {
		t.Fatal("a replaced SYN's SYN-ACK was adopted")
	}
	later := 1 + replacedSynTTL
	d.Sweep(later, 10)
	if len(d.replacedSyn) != 0 {
		t.Fatalf("%d replaced SYN records after their time", len(d.replacedSyn))
	}
	if out := handle(t, d, tcp4(rs1, client2, synack, 9000, 778, nil), later); out == nil || d.Stats().Adopted != 1 {
		t.Fatal("a SYN-ACK with no flow and no record was not adopted")
	}
}

// The cookie on half flows: Y, which sees the real's replies, writes it;
// X, which sees the client's segments and never the real's TSvals, passes
// the echo of the SYN-ACK's TSval unchanged (learned from the client's
// handshake ACK) and rounds every other echo up to the end of the raw
// bucket it came from.
func TestHalfFlowCookie(t *testing.T) {
	mk := func() *Director {
		return newTestDirector(t, func(c *Config) { c.Adoption, c.CookieBits = AdoptOn, 4 })
	}
	x, y := mk(), mk()
	out := handle(t, x, tcp4(client, vip, syn, 1000, 0, nil, tsOpt(500, 0)...), 1)
	if out == nil {
		t.Fatal("X dropped the SYN")
	}
	_, real := addrs(out)
	rs := real.String()
	if out = handle(t, y, tcp4(rs, client, synack, 9000, 1001, nil, tsOpt(1000, 500)...), 1); out == nil {
		t.Fatal("Y dropped the SYN-ACK")
	}
	if val, _ := tsOf(t, out); val != 1000 {
		t.Fatalf("Y rewrote the SYN-ACK's TSval: %d", val)
	}
	echo := func(flags header.TCPFlags, seq, ack, ecr uint32, data string, now int64) uint32 {
		t.Helper()
		out := handle(t, x, tcp4(client, vip, flags, seq, ack, []byte(data), tsOpt(501, ecr)...), now)
		if out == nil {
			t.Fatalf("X dropped the client's segment echoing %d", ecr)
		}
		_, e := tsOf(t, out)
		return e
	}
	if e := echo(ack, 1001, 9001, 1000, "", 1); e != 1000 {
		t.Fatalf("handshake ACK's echo %d at the real, want 1000", e)
	}
	if e := echo(psh, 1001, 9001, 1000, "GET / HTTP/1.1\r\n\r\n", 2); e != 1000 {
		t.Fatalf("request's echo of the SYN-ACK %d at the real, want 1000", e)
	}
	out = handle(t, y, tcp4(rs, client, psh, 9001, 1019, []byte("HTTP/1.1 200 OK\r\n\r\n"), tsOpt(1005, 501)...), 2)
	val, _ := tsOf(t, out)
	if val != cookieEncode(1005, uint16(val&15), 4) || val&15 == 0 {
		t.Fatalf("Y sent TSval %d for raw 1005, want a cookie", val)
	}
	// 1005 is in raw bucket 62, which ends at 1007.
	if e := echo(ack, 1019, 9020, val, "", 3); e != 1007 {
		t.Fatalf("echo %d of Y's cookie restored to %d, want 1007", val, e)
	}
	if e := echo(ack, 1019, 9020, 1000, "", 3); e != 1000 {
		t.Fatalf("a late echo of the SYN-ACK restored to %d, want 1000", e)
	}
	if st := x.Stats(); st.StaleSuspects != 0 || st.Flows != 1 {
		t.Fatalf("X: %d stale suspects, %d flows", st.StaleSuspects, st.Flows)
	}
}
