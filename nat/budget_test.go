package nat

import (
	"net/netip"
	"testing"
	"time"

	"holdfast/internal/wire"
)

// Budgets per client prefix and the short timeout of unconfirmed recovered
// flows (DESIGN.md section 6).

// trigger sends a mid-stream segment with data from src (no flow) and
// returns its verdict's drop reason (DropNone if it was parked).
func trigger(t *testing.T, d *Director, src string, now int64) DropReason {
	t.Helper()
	before := d.Stats().Drops
	v, _ := d.Handle(tcp4(src, vip, psh, 100, 200, []byte("GET /")), false, now)
	after := d.Stats().Drops
	for r := range after {
		if after[r] != before[r] {
			return DropReason(r)
		}
	}
	if v != wire.Park {
		t.Fatalf("trigger from %s: verdict %v and no drop", src, v)
	}
	return DropNone
}

func clientKey(src string) Key { return Key{protoTCP, ap(src), ap(vip)} }

// checkPrefixTable recomputes the prefix table from the recoveries in flight
// and the recovered flows, and fails if the Director's differs.
func checkPrefixTable(t *testing.T, d *Director) {
	t.Helper()
	want := make(map[netip.Prefix]prefixUse)
	for k, pd := range d.rec.pending {
		p := d.rec.prefixOf(k.Src.Addr())
		u := want[p]
		u.inflight++
		u.parked += int32(pd.bytes)
		want[p] = u
	}
	for i := range d.flows.slab {
		if f := &d.flows.slab[i]; f.used && f.Kind == KindRecovered {
			p := d.rec.prefixOf(f.Client.Addr())
			u := want[p]
			u.flows++
			want[p] = u
		}
	}
	if len(want) != len(d.rec.prefixes) {
		t.Fatalf("prefix table %v, want %v", d.rec.prefixes, want)
	}
	for p, u := range want {
		if d.rec.prefixes[p] != u {
			t.Fatalf("prefix table %v, want %v", d.rec.prefixes, want)
		}
	}
}

// A prefix has at most PrefixInflight recoveries in flight; the others are
// not affected, and a slot comes back when a recovery ends.
func TestRecoveryPrefixInflight(t *testing.T) {
	d, fr := newRecDirector(t, func(c *RecoveryConfig) { c.PrefixInflight = 2 })
	for _, src := range []string{"198.18.1.2:1000", "198.18.1.200:1000"} {
		if r := trigger(t, d, src, 1); r != DropNone {
			t.Fatalf("trigger from %s dropped: %v", src, r)
		}
	}
	if r := trigger(t, d, "198.18.1.3:1000", 1); r != DropRecoveryPrefixBusy {
		t.Fatalf("third trigger of 198.18.1.0/24: %v, want %v", r, DropRecoveryPrefixBusy)
	}
	if r := trigger(t, d, "198.18.2.3:1000", 1); r != DropNone {
		t.Fatalf("trigger of another /24 dropped: %v", r)
	}
	if st := d.Stats(); st.Drop(DropRecoveryPrefixBusy) != 1 || st.Inflight != 3 || len(fr.dials) != 3 {
		t.Fatalf("busy drops %d, in flight %d, dials %d; want 1, 3, 3", st.Drop(DropRecoveryPrefixBusy), st.Inflight, len(fr.dials))
	}
	d.Failed(clientKey("198.18.1.2:1000"), FailRefused, 2)
	if r := trigger(t, d, "198.18.1.3:1000", 3); r != DropNone {
		t.Fatalf("trigger after a recovery of the prefix ended: %v", r)
	}
}

// A prefix has at most PrefixFlows recovered flows and recoveries in flight
// together; a removed flow gives its place back.
func TestRecoveryPrefixFlows(t *testing.T) {
	d, fr := newRecDirector(t, func(c *RecoveryConfig) { c.PrefixFlows = 2 })
	a, b, c := "198.18.1.2:1000", "198.18.1.3:1000", "198.18.1.4:1000"
	trigger(t, d, a, 1)
	d.Recovered(clientKey(a), wire.Handshake{AckSeq: 1, AckAck: 1}, 2)
	trigger(t, d, b, 2) // one flow and one in flight
	if r := trigger(t, d, c, 2); r != DropRecoveryPrefixFlows {
		t.Fatalf("trigger over the flows of the prefix: %v, want %v", r, DropRecoveryPrefixFlows)
	}
	d.Recovered(clientKey(b), wire.Handshake{AckSeq: 1, AckAck: 1}, 3)
	if r := trigger(t, d, c, 3); r != DropRecoveryPrefixFlows {
		t.Fatalf("trigger over two recovered flows: %v, want %v", r, DropRecoveryPrefixFlows)
	}
	if r := trigger(t, d, "198.18.7.1:1000", 3); r != DropNone {
		t.Fatalf("trigger of another prefix: %v", r)
	}
	if st := d.Stats(); st.Drop(DropRecoveryPrefixFlows) != 2 || len(fr.dials) != 3 {
		t.Fatalf("flows drops %d, dials %d; want 2, 3", st.Drop(DropRecoveryPrefixFlows), len(fr.dials))
	}
	// a's flow expires (never confirmed): c may recover.
	d.Sweep(2+int64(DefaultUnconfirmedTimeout)+1, 100)
	if r := trigger(t, d, c, 3+int64(DefaultUnconfirmedTimeout)); r != DropNone {
		t.Fatalf("trigger after the prefix's flows expired: %v", r)
	}
}

// The budget prefix is the address masked to PrefixLen4 or PrefixLen6 bits,
// whatever the family; the table keeps only prefixes in use.
func TestRecoveryPrefixOf(t *testing.T) {
	d, _ := newRecDirector(t, func(c *RecoveryConfig) { c.PrefixLen4, c.PrefixLen6, c.PrefixInflight = 16, 48, 1 })
	rc := &d.rec
	for in, want := range map[string]string{
		"198.18.1.2":          "198.18.0.0/16",
		"::ffff:198.18.250.9": "198.18.0.0/16",
		"2001:db8:1:2:3::4":   "2001:db8:1::/48",
		"2001:db8:1:ffff::1":  "2001:db8:1::/48",
	} {
		if got := rc.prefixOf(netip.MustParseAddr(in)); got != netip.MustParsePrefix(want) {
			t.Errorf("prefixOf(%s) = %s, want %s", in, got, want)
		}
	}
	v6a, v6b, v6c := netip.MustParseAddr("2001:db8:1::1"), netip.MustParseAddr("2001:db8:1:9::1"), netip.MustParseAddr("2001:db8:2::1")
	rc.prefixAdd(v6a, prefixUse{inflight: 1})
	if r := rc.prefixRefuse(v6b); r != DropRecoveryPrefixBusy {
		t.Errorf("same /48: %v, want %v", r, DropRecoveryPrefixBusy)
	}
	if r := rc.prefixRefuse(v6c); r != DropNone {
		t.Errorf("another /48: %v", r)
	}
	rc.prefixAdd(v6b, prefixUse{inflight: -1})
	if len(rc.prefixes) != 0 {
		t.Errorf("table %v after the use went back to zero, want empty", rc.prefixes)
	}
}

// Many recoveries, ended every way a recovery or a recovered flow ends,
// leave nothing in the prefix table (nor ports, gates or recoveries).
func TestRecoveryPrefixTableDrains(t *testing.T) {
	d, fr := newRecDirector(t, func(c *RecoveryConfig) {
		c.PortHi, c.MaxInflight, c.PrefixInflight, c.PrefixFlows, c.Rate = 10999, 1000, 4, 8, 1e6
	})
	ends := []string{"fail", "shutdown", "retry-fail", "adopt-fail", "adopt-recovered", "expire", "confirmed-rst", "stale"}
	now := int64(1)
	n := 0
	for round := range 10 {
		// Recoveries piled up in one prefix, over its in-flight budget,
		// ended after the others.
		var piled []Key
		for k := range 6 {
			src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 9, byte(k)}), uint16(1000+round)).String()
			if trigger(t, d, src, now) == DropNone {
				piled = append(piled, clientKey(src))
			}
		}
		for i, end := range ends {
			// Clients spread over a few /24s, so that some triggers hit a
			// budget on the way.
			src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(1 + n%5), byte(2 + n%200)}), uint16(1000+n)).String()
			n++
			_ = i
			key := clientKey(src)
			dials := len(fr.dials)
			if r := trigger(t, d, src, now); r != DropNone {
				continue // over a budget: nothing held
			}
			o := fr.dials[dials].o
			switch end {
			case "fail":
				d.Failed(key, FailRefused, now)
			case "shutdown":
				d.Failed(key, FailShutdown, now)
			case "retry-fail":
				d.Retry(key, FailTimeout, now)
				d.Failed(key, FailTimeout, now)
			case "adopt-fail", "adopt-recovered":
				// The original real (not the one dialed) speaks.
				old := rs2
				if o.Remote == ap(rs2) {
					old = rs3
				}
				handle(t, d, tcp4(old, src, psh, 200, 100, []byte("old")), now)
				if end == "adopt-fail" {
					d.Failed(key, FailError, now)
				} else {
					d.Recovered(key, wire.Handshake{AckSeq: 1, AckAck: 1}, now)
				}
			case "expire":
				d.Recovered(key, wire.Handshake{AckSeq: 1, AckAck: 1}, now)
			case "confirmed-rst":
				d.Recovered(key, wire.Handshake{AckSeq: 1, AckAck: 1}, now)
				handle(t, d, tcp4(o.Remote.String(), o.Local.String(), psh, 1, 6, []byte("hello")), now)
				handle(t, d, tcp4(src, vip, ack, 105, 205, nil), now)
				handle(t, d, tcp4(src, vip, rst|ack, 105, 205, nil), now)
			case "stale":
				// Recovered, then the client acks server bytes that never
				// crossed: the flow is stale, removed, and its segment
				// starts a recovery again, which fails.
				d.Recovered(key, wire.Handshake{AckSeq: 1, AckAck: 1}, now)
				handle(t, d, tcp4(o.Remote.String(), o.Local.String(), psh, 1, 6, []byte("hello")), now)
				handle(t, d, tcp4(src, vip, psh, 105, 200+1<<20, []byte("x2")), now)
				d.Failed(key, FailRefused, now)
			}
			checkPrefixTable(t, d)
		}
		for k, key := range piled {
			if k%2 == 0 {
				d.Failed(key, FailShutdown, now)
			} else {
				d.Recovered(key, wire.Handshake{AckSeq: 1, AckAck: 1}, now)
			}
		}
		checkPrefixTable(t, d)
		now += 3 * sec
		d.Sweep(now, 1<<20)
		checkPrefixTable(t, d)
	}
	st := d.Stats()
	if st.Drop(DropRecoveryPrefixBusy)+st.Drop(DropRecoveryPrefixFlows) == 0 {
		t.Error("no trigger hit a prefix budget: the test does not cover the refusals")
	}
	if st.RecoverySucceeded == 0 || st.RecoveryFailed[FailShutdown] == 0 || st.AdoptAborts == 0 || st.StaleFlows == 0 || st.RecoveryRetries[FailTimeout] == 0 {
		t.Errorf("ends not covered: %+v", st)
	}
	d.Sweep(now+int64(time.Hour), 1<<20)
	if len(d.rec.prefixes) != 0 || len(d.rec.pending) != 0 || len(d.rec.ports.inUse) != 0 || len(d.rec.dialing) != 0 || d.flows.n != 0 {
		t.Fatalf("left held: prefixes %v, pending %d, ports %d, gates %d, flows %d",
			d.rec.prefixes, len(d.rec.pending), len(d.rec.ports.inUse), len(d.rec.dialing), d.flows.n)
	}
}

// A recovered flow whose client never acknowledges the real's data (a
// spoofed trigger) expires after UnconfirmedTimeout, the real's
// retransmissions notwithstanding, and its port and prefix budget go with
// it; one whose client acks that data is on the ESTABLISHED timeout.
func TestRecoveredUnconfirmedTimeout(t *testing.T) {
	d, fr := newRecDirector(t, func(c *RecoveryConfig) { c.UnconfirmedTimeout = 5 * time.Second })
	spoofed, genuine := "198.18.1.2:1000", "198.18.2.2:1000"
	for _, src := range []string{spoofed, genuine} {
		trigger(t, d, src, 1)
		d.Recovered(clientKey(src), wire.Handshake{AckSeq: 1, AckAck: 1}, 1)
	}
	for i, src := range []string{spoofed, genuine} {
		o := fr.dials[i].o
		// The real answers the request ("GET /" at 1..6 in its space).
		handle(t, d, tcp4(o.Remote.String(), o.Local.String(), psh, 1, 6, []byte("hello")), 1*sec)
		if src == genuine {
			// The client acks the reply (server seq 200 + 5 in its space).
			handle(t, d, tcp4(src, vip, ack, 105, 205, nil), 1*sec)
		} else {
			// A repeat of the trigger's ack is no proof.
			handle(t, d, tcp4(src, vip, ack, 105, 200, nil), 1*sec)
		}
		// The real retransmits.
		for _, at := range []int64{2, 4, 6} {
			handle(t, d, tcp4(o.Remote.String(), o.Local.String(), psh, 1, 6, []byte("hello")), at*sec)
		}
	}
	d.Sweep(6*sec+1, 100) // 5 s after the client's last segment
	fl := d.Flows(6*sec + 1)
	if len(fl) != 1 || fl[0].Client != ap(genuine) {
		t.Fatalf("flows after the unconfirmed timeout: %+v, want only %s's", fl, genuine)
	}
	if len(d.rec.ports.inUse) != 1 || len(d.rec.prefixes) != 1 {
		t.Fatalf("ports %v, prefixes %v; want only the genuine flow's", d.rec.ports.inUse, d.rec.prefixes)
	}
	if got, want := fl[0].Expires, 6*sec+15*60*sec; got != want {
		t.Fatalf("genuine flow expires at %d, want %d (ESTABLISHED timeout after its ack)", got, want)
	}
}

// A prefix parks at most PrefixParkBytes at once, over all its recoveries;
// the bytes come back when a recovery ends.
func TestRecoveryPrefixParkBytes(t *testing.T) {
	seg := func(src string, seq uint32) []byte { return tcp4(src, vip, psh, seq, 200, make([]byte, 500)) }
	n := len(seg(client, 0))
	d, _ := newRecDirector(t, func(c *RecoveryConfig) { c.PrefixParkBytes = 2 * n })
	a, b := "198.18.1.2:1000", "198.18.1.3:1000"
	for i, s := range [][]byte{seg(a, 100), seg(b, 100)} {
		if v, _ := d.Handle(s, false, 1); v != wire.Park {
			t.Fatalf("segment %d: %v", i, v)
		}
	}
	for i, s := range [][]byte{seg(a, 600), seg("198.18.1.4:1000", 100)} {
		if v, _ := d.Handle(s, false, 1); v != wire.Drop {
			t.Fatalf("segment %d over the prefix's parking: %v", i, v)
		}
	}
	if v, _ := d.Handle(seg("198.18.2.2:1000", 100), false, 1); v != wire.Park {
		t.Fatalf("another prefix's segment: %v", v)
	}
	if st := d.Stats(); st.Drop(DropPrefixParkFull) != 2 || st.Inflight != 3 {
		t.Fatalf("prefix park drops %d, in flight %d; want 2, 3", st.Drop(DropPrefixParkFull), st.Inflight)
	}
	d.Failed(clientKey(a), FailRefused, 2)
	if v, _ := d.Handle(seg("198.18.1.4:1000", 100), false, 3); v != wire.Park {
		t.Fatalf("after a recovery of the prefix ended: %v", v)
	}
}
