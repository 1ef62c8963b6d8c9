package nat

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"holdfast/balancer"
	"holdfast/internal/wire"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// With 4 cookie bits the test services' reals get derived ids
// ((low 16 bits of the address) + port) mod 15 + 1: rs1 198.18.10.11:8080
// (0x0a0b + 8080 = 10651) 2, rs2 3, rs3 4.
const (
	idRS1 = 2
	idRS2 = 3
)

func cookieDirector(t testing.TB, k int) *Director {
	t.Helper()
	return newTestDirector(t, func(c *Config) { c.CookieBits = k })
}

// tsOf returns the timestamp option of a packet.
func tsOf(t testing.TB, b []byte) (val, ecr uint32) {
	t.Helper()
	tcp := header.TCP(b[header.IPv4(b).HeaderLength():])
	at := tsOption(tcp)
	if at < 0 {
		t.Fatalf("no timestamp option in %x", b)
	}
	return binary.BigEndian.Uint32(tcp[at+2:]), binary.BigEndian.Uint32(tcp[at+6:])
}

// The encoding and its inverse, for every width, across the 2^32 wrap.
func TestCookieEncodeRoundUp(t *testing.T) {
	for k := uint8(1); k <= MaxCookieBits; k++ {
		mask := uint32(1)<<k - 1
		for _, raw := range []uint32{0, 1, 1000, mask, mask + 1, 0x7fffffff, 0xffffffff - mask, 0xfffffffe, 0xffffffff} {
			for _, id := range []uint16{0, 1, uint16(mask)} {
				v := cookieEncode(raw, id, k)
				if !seqAfter(v, raw) || v-raw > 2*mask+1 {
					t.Fatalf("k %d: encode(%#x, %d) = %#x: not just above", k, raw, id, v)
				}
				if v&mask != uint32(id) || v>>k != ((raw>>k)+1)&(0xffffffff>>k) {
					t.Fatalf("k %d: encode(%#x, %d) = %#x: not the next bucket with the id", k, raw, id, v)
				}
				// The round-up is the end of raw's bucket: at or above raw,
				// below the next bucket.
				if u := cookieRoundUp(v, k); u>>k != raw>>k || u&mask != mask {
					t.Fatalf("k %d: roundUp(%#x) = %#x for raw %#x", k, v, u, raw)
				}
			}
		}
	}
	// Golden values, k = 4.
	for _, c := range []struct {
		raw  uint32
		id   uint16
		want uint32
	}{
		{1005, 2, 1010}, {1007, 2, 1010}, {1008, 2, 1026}, {1008, 0, 1024},
		{0xfffffff0, 2, 2}, {0xffffffff, 15, 15}, {0xffffffef, 1, 0xfffffff1},
	} {
		if got := cookieEncode(c.raw, c.id, 4); got != c.want {
			t.Errorf("encode(%#x, %d) = %#x, want %#x", c.raw, c.id, got, c.want)
		}
	}
	for in, want := range map[uint32]uint32{1010: 1007, 1026: 1023, 2: 0xffffffff, 0x12: 0xf} {
		if got := cookieRoundUp(in, 4); got != want {
			t.Errorf("roundUp(%#x) = %#x, want %#x", in, got, want)
		}
	}
}

// A connection seen from its SYN: the SYN-ACK and every echo before the
// first rewrite pass unchanged; the real's TSvals reach the client with its
// id; the client's echoes reach the real restored, from the records of the
// last two buckets, else rounded up.
func TestCookieConnection(t *testing.T) {
	d := cookieDirector(t, 4)
	step := func(in []byte, want []byte, now int64) {
		t.Helper()
		out := handle(t, d, in, now)
		if !bytes.Equal(out, want) {
			t.Fatalf("got  %x\nwant %x", out, want)
		}
	}
	step(tcp4(client, vip, syn, 1000, 0, nil, tsOpt(500, 0)...), tcp4(client, rs1, syn, 1000, 0, nil, tsOpt(500, 0)...), 1)
	step(tcp4(rs1, client, synack, 7000, 1001, nil, tsOpt(1000, 500)...), tcp4(vip, client, synack, 7000, 1001, nil, tsOpt(1000, 500)...), 1)
	// Final ACK and data before the server's first rewritten TSval.
	step(tcp4(client, vip, ack, 1001, 7001, nil, tsOpt(501, 1000)...), tcp4(client, rs1, ack, 1001, 7001, nil, tsOpt(501, 1000)...), 1)
	step(tcp4(client, vip, psh, 1001, 7001, []byte("GET /"), tsOpt(502, 1000)...), tcp4(client, rs1, psh, 1001, 7001, []byte("GET /"), tsOpt(502, 1000)...), 1)
	// The real's data: raw 1005 is bucket 62, the client sees bucket 63 with id 2.
	step(tcp4(rs1, client, psh, 7001, 1006, []byte("a"), tsOpt(1005, 502)...), tcp4(vip, client, psh, 7001, 1006, []byte("a"), tsOpt(1010, 502)...), 2)
	// The SYN-ACK's TSval echoed still (ts_recent lags): unchanged.
	step(tcp4(client, vip, ack, 1006, 7002, nil, tsOpt(503, 1000)...), tcp4(client, rs1, ack, 1006, 7002, nil, tsOpt(503, 1000)...), 2)
	step(tcp4(client, vip, ack, 1006, 7002, nil, tsOpt(503, 1010)...), tcp4(client, rs1, ack, 1006, 7002, nil, tsOpt(503, 1005)...), 2)
	// Same bucket, a larger raw value: recorded.
	step(tcp4(rs1, client, psh, 7002, 1006, []byte("b"), tsOpt(1007, 503)...), tcp4(vip, client, psh, 7002, 1006, []byte("b"), tsOpt(1010, 503)...), 2)
	step(tcp4(client, vip, ack, 1006, 7003, nil, tsOpt(504, 1010)...), tcp4(client, rs1, ack, 1006, 7003, nil, tsOpt(504, 1007)...), 2)
	// Two more buckets: 64 (raw 1010) and 66 (raw 1040, 1041).
	step(tcp4(rs1, client, psh, 7003, 1006, []byte("c"), tsOpt(1010, 504)...), tcp4(vip, client, psh, 7003, 1006, []byte("c"), tsOpt(1026, 504)...), 3)
	step(tcp4(rs1, client, psh, 7004, 1006, []byte("d"), tsOpt(1040, 504)...), tcp4(vip, client, psh, 7004, 1006, []byte("d"), tsOpt(1058, 504)...), 3)
	step(tcp4(rs1, client, psh, 7005, 1006, []byte("e"), tsOpt(1041, 504)...), tcp4(vip, client, psh, 7005, 1006, []byte("e"), tsOpt(1058, 504)...), 3)
	for _, c := range []struct{ echo, want uint32 }{
		{1058, 1041}, // the last bucket's largest
		{1026, 1010}, // the bucket before
		{1010, 1007}, // no longer recorded: rounded up (exact here)
		{1042, 1039}, // never sent here (another director): rounded up
		{1000, 1000}, // the SYN-ACK's, even after rewritten values were echoed
	} {
		step(tcp4(client, vip, ack, 1006, 7006, nil, tsOpt(505, c.echo)...), tcp4(client, rs1, ack, 1006, 7006, nil, tsOpt(505, c.want)...), 4)
	}
	if f := d.Flows(5); len(f) != 1 || f[0].State != StateEstablished {
		t.Fatalf("flows %+v", f)
	}
}

// Around the 2^32 wrap: buckets wrap with the values, and restores are
// exact on both sides of it.
func TestCookieWrap(t *testing.T) {
	d := cookieDirector(t, 4)
	handle(t, d, tcp4(client, vip, syn, 1000, 0, nil, tsOpt(500, 0)...), 1)
	handle(t, d, tcp4(rs1, client, synack, 7000, 1001, nil, tsOpt(0xffffffd0, 500)...), 1)
	handle(t, d, tcp4(client, vip, ack, 1001, 7001, nil, tsOpt(501, 0xffffffd0)...), 1)
	var seen []uint32
	for i, raw := range []uint32{0xffffffe0, 0xfffffff5, 0x3} {
		out := handle(t, d, tcp4(rs1, client, psh, 7001+uint32(i), 1001, []byte("x"), tsOpt(raw, 501)...), 2)
		v, _ := tsOf(t, out)
		seen = append(seen, v)
	}
	if want := []uint32{0xfffffff2, 0x2, 0x12}; seen[0] != want[0] || seen[1] != want[1] || seen[2] != want[2] {
		t.Fatalf("client saw %#x, want %#x", seen, want)
	}
	for echo, want := range map[uint32]uint32{0x12: 0x3, 0x2: 0xfffffff5, 0xfffffff2: 0xffffffef, 0x22: 0x1f} {
		out := handle(t, d, tcp4(client, vip, ack, 1001, 7004, nil, tsOpt(502, echo)...), 3)
		if _, e := tsOf(t, out); e != want {
			t.Errorf("echo %#x restored to %#x, want %#x", echo, e, want)
		}
	}
}

// PAWS: what the client sees never decreases, whatever the flow's id does
// (steered to another real, recovered with id 0, re-homed), and every echo
// restores to a value the real sent (or the end of its raw bucket).
func TestCookiePAWSAcrossIDChanges(t *testing.T) {
	d := cookieDirector(t, 4)
	handle(t, d, tcp4(client, vip, syn, 1000, 0, nil, tsOpt(500, 0)...), 1)
	handle(t, d, tcp4(rs1, client, synack, 7000, 1001, nil, tsOpt(1000, 500)...), 1)
	handle(t, d, tcp4(client, vip, ack, 1001, 7001, nil, tsOpt(501, 1000)...), 1)
	r := d.services[0].Reals[0]
	var last uint32
	raw := uint32(1000)
	seq := uint32(7001)
	for i, id := range []uint16{idRS1, 15, 1, 0, 9, 3, 3, 14, 0, 0, 7, 1, 15} {
		r.CookieID = id
		raw += uint32(i % 3) // several values in one raw bucket, some moves
		out := handle(t, d, tcp4(rs1, client, psh, seq, 1001, []byte("x"), tsOpt(raw, 501)...), 2)
		seq++
		v, _ := tsOf(t, out)
		if i > 0 && seqAfter(last, v) {
			t.Fatalf("step %d (id %d): client saw %d after %d", i, id, v, last)
		}
		if v&15 != uint32(id) || !seqAfter(v, raw) {
			t.Fatalf("step %d: client saw %d for raw %d, id %d", i, v, raw, id)
		}
		last = v
		// The echo of what the client saw restores to the largest raw
		// value of its bucket: this one.
		out = handle(t, d, tcp4(client, vip, ack, 1001, seq, nil, tsOpt(502, v)...), 2)
		if _, e := tsOf(t, out); e != raw {
			t.Fatalf("step %d: echo %d restored to %d, want %d", i, v, e, raw)
		}
	}
}

// A re-home: the plain flow's cookie (id 2) gives way to the recovered
// flow's (id 0, after the deltas): the client's view stays monotone and
// the new real gets its own TSvals back.
func TestCookieRehome(t *testing.T) {
	d, fr := newRecDirector(t)
	d.cookieBits = 4
	for _, s := range d.services {
		if _, err := balancer.AssignCookieIDs(s.Service, 4); err != nil {
			t.Fatal(err)
		}
	}
	key := Key{protoTCP, ap(client), ap(vip)}
	handle(t, d, tcp4(client, vip, syn, 1000, 0, nil, synOpts(1400, 9, 50)...), 1)
	handle(t, d, tcp4(rs1, client, synack, 5000, 1001, nil, synOpts(1460, 7, 80)...), 1)
	handle(t, d, tcp4(client, vip, psh, 1001, 5001, []byte("GET /"), tsOpt(51, 80)...), 1)
	out := handle(t, d, tcp4(rs1, client, psh, 5001, 1006, make([]byte, 100), tsOpt(81, 51)...), 1)
	before, _ := tsOf(t, out)
	if before != 96|idRS1 {
		t.Fatalf("client saw %d, want %d", before, 96|idRS1)
	}
	if err := d.RemoveReal(6, ap(vip), ap(rs1), true); err != nil {
		t.Fatal(err)
	}
	if out := handle(t, d, tcp4(client, vip, psh, 1006, 5101, []byte("GET /3"), tsOpt(53, before)...), 3); out != nil || len(fr.dials) != 1 {
		t.Fatalf("not re-homed: %x, dials %+v", out, fr.dials)
	}
	flushed := d.Recovered(key, wire.Handshake{AckSeq: 77, AckAck: 88, TS: true, AckTSval: 9, SynAckTSval: 3, OurWScale: 9, PeerWScale: 5}, 4)
	if len(flushed) != 1 {
		t.Fatalf("flushed %d", len(flushed))
	}
	// The trigger's echo, before the recovered flow's first rewrite:
	// only the delta (what the new real's SYN-ACK said).
	if _, e := tsOf(t, flushed[0]); e != 3 {
		t.Fatalf("flushed echo %d, want 3", e)
	}
	// Client space: 4 + (96|2 - 3) = 99, bucket 6; the client sees bucket 7, id 0.
	out = handle(t, d, tcp4(rs2, local, psh, 88, 1012, []byte("ok"), tsOpt(4, 9)...), 5)
	after, _ := tsOf(t, out)
	if after != 112 || !seqAfter(after, before) {
		t.Fatalf("client saw %d after %d, want 112", after, before)
	}
	out = handle(t, d, tcp4(client, vip, ack, 1012, 5103, nil, tsOpt(54, after)...), 5)
	if _, e := tsOf(t, out); e != 4 {
		t.Fatalf("echo %d reached the new real as %d, want 4", after, e)
	}
}

// Checksums stay valid (full), and a partial checksum stays the
// pseudo-header sum of the rewritten header, completing to the full path's
// packet.
func TestCookieChecksums(t *testing.T) {
	full, part := cookieDirector(t, 4), cookieDirector(t, 4)
	pkts := [][]byte{
		tcp4(client, vip, syn, 1000, 0, nil, tsOpt(500, 0)...),
		tcp4(rs1, client, synack, 7000, 1001, nil, tsOpt(1000, 500)...),
		tcp4(client, vip, ack, 1001, 7001, nil, tsOpt(501, 1000)...),
		tcp4(rs1, client, psh, 7001, 1001, make([]byte, 333), tsOpt(0x1234567f, 501)...),
		tcp4(client, vip, psh, 1001, 7334, make([]byte, 77), opts(sackOpt(7001, 7002), tsOpt(502, 0x12345682))...),
		tcp4(rs1, client, psh, 7334, 1078, make([]byte, 3), opts([]byte{1, 1, 1, 1}, tsOpt(0xffffffff, 502))...),
		tcp4(client, vip, ack, 1078, 7337, nil, tsOpt(503, 0x0000000f)...),
		// The option at an odd offset (one NOP before it): put32's path.
		tcp4(rs1, client, psh, 7337, 1078, []byte("f"), oddTS(0x00010203, 503)...),
		tcp4(client, vip, ack, 1078, 7338, nil, oddTS(504, 0x00010012)...),
	}
	for i, p := range pkts {
		fo := handle(t, full, bytes.Clone(p), 2)
		v, po := part.Handle(asPartial(p), true, 2)
		if fo == nil || v != wire.Forward {
			t.Fatalf("packet %d dropped", i)
		}
		if i >= 3 {
			if bytes.Equal(fo[20+20:], p[20+20:]) {
				t.Fatalf("packet %d: options not rewritten", i)
			}
		}
		if want := asPartial(fo); !bytes.Equal(po, want) {
			t.Fatalf("packet %d, partial:\n got %x\nwant %x", i, po, want)
		}
	}
}

// k = 0: no packet changes beyond the NAT.
func TestCookieOff(t *testing.T) {
	d := cookieDirector(t, 0)
	for _, c := range []struct{ in, want []byte }{
		{tcp4(client, vip, syn, 1000, 0, nil, tsOpt(500, 0)...), tcp4(client, rs1, syn, 1000, 0, nil, tsOpt(500, 0)...)},
		{tcp4(rs1, client, synack, 7000, 1001, nil, tsOpt(1000, 500)...), tcp4(vip, client, synack, 7000, 1001, nil, tsOpt(1000, 500)...)},
		{tcp4(rs1, client, psh, 7001, 1001, []byte("a"), tsOpt(1005, 501)...), tcp4(vip, client, psh, 7001, 1001, []byte("a"), tsOpt(1005, 501)...)},
		{tcp4(client, vip, ack, 1001, 7002, nil, tsOpt(502, 1005)...), tcp4(client, rs1, ack, 1001, 7002, nil, tsOpt(502, 1005)...)},
		{tcp4(client, vip, ack, 1001, 7002, nil, tsOpt(502, 1234)...), tcp4(client, rs1, ack, 1001, 7002, nil, tsOpt(502, 1234)...)},
	} {
		if out := handle(t, d, c.in, 1); !bytes.Equal(out, c.want) {
			t.Fatalf("got  %x\nwant %x", out, c.want)
		}
	}
	if ri, ok := d.cookieReal(0, 1010); ok || ri != -1 {
		t.Fatalf("cookieReal with cookies off: %d, %v", ri, ok)
	}
	if _, err := New(Config{Services: svcWith(t, rs1), MaxFlows: 1, CookieBits: 10}); err == nil || err.Error() != "timestamp cookie bits 10: expected 0..9" {
		t.Fatalf("10 bits: %v", err)
	}
}

// cookieReal reads the real from an echo: the id's real, none for id 0 or
// an unknown id, none for a real down or being re-homed from; a removed
// real still serving its flows is found.
func TestCookieReal(t *testing.T) {
	d := cookieDirector(t, 4)
	for _, c := range []struct {
		tsecr uint32
		ri    int
		ok    bool
	}{
		{1010, 0, true}, {0x12345673, 1, true}, {0xfffffff4, 2, true},
		{1008, -1, false}, {1015, -1, false}, {cookieEncode(1000, 15, 4), -1, false},
	} {
		if ri, ok := d.cookieReal(0, c.tsecr); ri != c.ri || ok != c.ok {
			t.Errorf("cookieReal(%#x) = %d, %v, want %d, %v", c.tsecr, ri, ok, c.ri, c.ok)
		}
	}
	if err := d.SetDown(6, ap(vip), ap(rs2), true); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.cookieReal(0, 1011); ok {
		t.Error("a down real found")
	}
	if err := d.RemoveReal(6, ap(vip), ap(rs3), false); err != nil {
		t.Fatal(err)
	}
	if ri, ok := d.cookieReal(0, 1012); !ok || ri != 2 {
		t.Errorf("removed real (draining): %d, %v", ri, ok)
	}
	d.services[0].Reals[0].Rehome = true // RemoveReal(..., true) with recovery on
	if _, ok := d.cookieReal(0, 1010); ok {
		t.Error("a real being re-homed from found")
	}
}

// Neither the cookie's rewrites nor its decode allocate.
func TestCookieAllocs(t *testing.T) {
	d := cookieDirector(t, 4)
	handle(t, d, tcp4(client, vip, syn, 1000, 0, nil, tsOpt(500, 0)...), 1)
	handle(t, d, tcp4(rs1, client, synack, 7000, 1001, nil, tsOpt(1000, 500)...), 1)
	in := tcp4(client, vip, psh, 1001, 7001, []byte("x"), tsOpt(501, 1010)...)
	out := tcp4(rs1, client, psh, 7001, 1002, []byte("y"), tsOpt(1005, 501)...)
	buf := make([]byte, len(in))
	n := testing.AllocsPerRun(100, func() {
		copy(buf, out)
		if o, _ := d.HandlePacket(buf, 2); o == nil {
			t.Fatal("dropped")
		}
		copy(buf, in)
		if o, _ := d.HandlePacket(buf, 2); o == nil {
			t.Fatal("dropped")
		}
		if _, ok := d.cookieReal(0, 1010); !ok {
			t.Fatal("not found")
		}
	})
	if n != 0 {
		t.Fatalf("%v allocations", n)
	}
}

// Runtime adds: an id another real holds (live, or removed with flows)
// refuses the add, naming it; one free again is taken; with every id held
// a derived one gives no cookie.
func TestCookieAddReal(t *testing.T) {
	d := cookieDirector(t, 4)
	const svc = "198.18.10.20:8080" // derived id (0x0a14 + 8080) mod 15 + 1 = 11
	expect := func(err error, want string) {
		t.Helper()
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Fatalf("error %v, want %q", err, want)
		}
	}
	idOf := func(addr string) uint16 {
		for _, r := range d.services[0].Reals {
			if r.Addr == ap(addr) {
				return r.CookieID
			}
		}
		t.Fatalf("no real %s", addr)
		return 0
	}
	expect(d.AddReal(6, ap(vip), ap(svc), 1, idRS1), "cookie id 2 is real 198.18.10.11:8080's")
	expect(d.AddReal(6, ap(vip), ap(svc), 1, 16), "cookie id 16: expected 1..15")
	expect(d.AddReal(6, ap(vip), ap(svc), 1, 0), "")
	if id := idOf(svc); id != 11 {
		t.Fatalf("derived id %d, want 11", id)
	}
	// rs2 removed with a flow: its id is held; once the flow ends, free.
	handle(t, d, tcp4(client, vip, syn, 1, 0, nil), 1) // rr: rs1
	handle(t, d, tcp4(client2, vip, syn, 1, 0, nil), 1)
	if f := d.Flows(1); len(f) != 2 || f[1].Real != ap(rs2) {
		t.Fatalf("flows %+v", f)
	}
	expect(d.RemoveReal(6, ap(vip), ap(rs2), false), "")
	expect(d.AddReal(6, ap(vip), ap("198.18.10.30:8080"), 1, idRS2), "cookie id 3 is real 198.18.10.12:8080's, removed but still with 1 flows")
	d.Sweep(1e18, 100)
	expect(d.AddReal(6, ap(vip), ap("198.18.10.30:8080"), 1, idRS2), "")
	// rs2 back: its id is now another real's.
	expect(d.AddReal(6, ap(vip), ap(rs2), 1, 0), "its cookie id 3 is now real 198.18.10.30:8080's")
	// A reload adding a real with a held id changes nothing.
	before := len(d.services[0].Reals)
	ns := svcWith(t, rs1, rs3, svc, "198.18.10.30:8080", "198.18.10.40:8080,id=4")
	expect(d.Reconfigure(append(ns, d.services[1].Service)), "cookie id 4 is real 198.18.10.13:8080's")
	if len(d.services[0].Reals) != before {
		t.Fatal("a refused reload changed the reals")
	}
	ns = svcWith(t, rs1, rs3, svc, "198.18.10.30:8080", "198.18.10.40:8080,id=9")
	expect(d.Reconfigure(append(ns, d.services[1].Service)), "")
	if id := idOf("198.18.10.40:8080"); id != 9 {
		t.Fatalf("reloaded real's id %d, want 9", id)
	}
}

// With every id held, a real added (derived id) gets none.
func TestCookieAddRealFull(t *testing.T) {
	d := cookieDirector(t, 2) // ids 1..3: rs1..rs3 take (10651+k) mod 3 + 1
	expect := d.AddReal(6, ap(vip), ap("198.18.10.40:8080"), 1, 0)
	if expect != nil {
		t.Fatal(expect)
	}
	if r := d.services[0].Reals[3]; r.CookieID != 0 {
		t.Fatalf("id %d, want none", r.CookieID)
	}
	if err := d.AddReal(6, ap(vip), ap("198.18.10.41:8080"), 1, 1); err == nil {
		t.Fatal("an explicit id held by another real taken")
	}
}

// oddTS is a timestamp option after one NOP, its values at odd offsets.
func oddTS(val, ecr uint32) []byte {
	b := []byte{1, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[3:], val)
	binary.BigEndian.PutUint32(b[7:], ecr)
	return b
}

func svcWith(t *testing.T, reals ...string) []*balancer.Service {
	t.Helper()
	s, err := balancer.ServiceConfig{Service: "tcp:" + vip, Scheduler: "rr", Reals: reals}.Build()
	if err != nil {
		t.Fatal(err)
	}
	return []*balancer.Service{s}
}
