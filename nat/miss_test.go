package nat

import (
	"bytes"
	"net/netip"
	"sync"
	"testing"

	"holdfast/internal/wire"
	"holdfast/nat/nattest"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Unit tests of the miss path (miss.go): the fall-through order cookie,
// probes, challenge, dial; the classification of probe answers; the
// challenge's accept rules and timers; adoption during a miss; budgets and
// SYNs during a miss; Emit outside the lock. The peers are Quiet: each test
// answers the probes and challenges itself, and time is the now argument
// (timers run through Sweep).

const ms = sec / 1000

// newMissDirector is newRecDirectorPeers with cookies of cookieBits bits and
// Quiet peers.
func newMissDirector(t testing.TB, cookieBits int, mod ...func(*RecoveryConfig)) (*Director, *fakeDialer, *nattest.Peers) {
	t.Helper()
	d, fr, pr := recDirector(t, cookieBits, mod...)
	pr.Quiet = true
	return d, fr, pr
}

// The trigger of most tests: 5 bytes at seq 100, acking 200.
var trigSeq, trigAck uint32 = 100, 200

var trigData = []byte("GET /")

func trig(opt ...byte) []byte { return tcp4(client, vip, psh, trigSeq, trigAck, trigData, opt...) }

// cookieOf is the TSecr a client echoes for a TSval the director encoded
// with the id of real ri of the TCP service.
func cookieOf(d *Director, ri int) uint32 {
	return cookieEncode(1000, d.services[0].Reals[ri].CookieID, d.cookieBits)
}

// segInfo reads a built segment's addresses, numbers, flags, header length
// and payload length.
type segInfo struct {
	src, dst netip.AddrPort
	seq, ack uint32
	flags    header.TCPFlags
	hl, data int
	win      uint16
}

func infoOf(t testing.TB, b []byte) segInfo {
	t.Helper()
	checkChecksums(t, b)
	src, dst := addrs(b)
	tc := header.TCP(header.IPv4(b).Payload())
	return segInfo{src, dst, tc.SequenceNumber(), tc.AckNumber(), tc.Flags(), int(tc.DataOffset()), len(tc.Payload()), tc.WindowSize()}
}

// probedReals lists the reals the probes pr saw from index from on went to.
func probedReals(t testing.TB, pr *nattest.Peers, from int) []netip.AddrPort {
	t.Helper()
	var out []netip.AddrPort
	for _, b := range pr.Probes[from:] {
		out = append(out, infoOf(t, b).dst)
	}
	return out
}

// resetProbes answers the probes pr saw from index from on with each real's
// no-socket reset (RST, seq = the probe's ack), except those to the reals
// in skip.
func resetProbes(t *testing.T, d *Director, pr *nattest.Peers, from int, now int64, skip ...string) {
	t.Helper()
next:
	for _, b := range pr.Probes[from:] {
		in := infoOf(t, b)
		for _, s := range skip {
			if in.dst == ap(s) {
				continue next
			}
		}
		if v, _ := d.Handle(tcp4(in.dst.String(), in.src.String(), rst, in.ack, 0, nil), false, now); v != wire.Consume {
			t.Fatalf("the no-socket reset of %v: verdict %v, want consume", in.dst, v)
		}
	}
}

// ownerAnswer is real's duplicate ACK to a probe: its SND.NXT seq, its
// RCV.NXT ack.
func ownerAnswer(real string, seq, ackn uint32) []byte {
	return tcp4(real, client, ack, seq, ackn, nil)
}

// toChallenge parks the segments (the first one triggers a miss) and has
// every real answer the probes with a reset: the client is challenged.
func toChallenge(t *testing.T, d *Director, pr *nattest.Peers, now int64, segs ...[]byte) {
	t.Helper()
	for i, s := range segs {
		if v, _ := d.Handle(s, false, now); v != wire.Park {
			t.Fatalf("segment %d: verdict %v, want park", i, v)
		}
	}
	resetProbes(t, d, pr, 0, now)
	if len(pr.Challenges) != 1 {
		t.Fatalf("%d challenges after every real reset, want 1", len(pr.Challenges))
	}
}

// checkMissOver checks that no miss is left and nothing it held: no entry,
// no probe, no parked byte, an empty prefix table.
func checkMissOver(t *testing.T, d *Director) {
	t.Helper()
	st := d.Stats()
	if st.Inflight != 0 || st.ParkedBytes != 0 || len(d.rec.prefixes) != 0 || len(d.rec.probes) != 0 || len(d.rec.pending) != 0 {
		t.Fatalf("left held: inflight %d, parked %d, prefixes %v, probes %v", st.Inflight, st.ParkedBytes, d.rec.prefixes, d.rec.probes)
	}
}

// 1. The fall-through order: cookie, probes to the other reals, challenge,
// dial.
func TestMissFallThrough(t *testing.T) {
	d, fr, pr := newMissDirector(t, 4)
	key := Key{protoTCP, ap(client), ap(vip)}
	// The cookie names rs2: the segment goes there at once, no probe.
	v, out := d.Handle(trig(tsOpt(50, cookieOf(d, 1))...), false, 1)
	if v != wire.Forward {
		t.Fatalf("cookie steer: verdict %v, want forward", v)
	}
	if in := infoOf(t, out); in.src != ap(client) || in.dst != ap(rs2) || in.seq != trigSeq || in.ack != trigAck || in.data != len(trigData) {
		t.Fatalf("cookie steer wrote %+v, want the trigger to %s", in, rs2)
	}
	if len(pr.Probes) != 0 || len(pr.Challenges) != 0 || len(pr.Out) != 0 {
		t.Fatalf("emitted on a cookie steer: probes %d, challenges %d, out %d", len(pr.Probes), len(pr.Challenges), len(pr.Out))
	}
	if f := d.Flows(1); len(f) != 1 || f[0].Kind != KindCookie || f[0].Real != ap(rs2) {
		t.Fatalf("flows %+v, want one cookie flow to %s", f, rs2)
	}
	if st := d.Stats(); st.CookieSteers != 1 || st.Inflight != 1 || st.Misses != 1 {
		t.Fatalf("stats %+v", st)
	}
	// rs2 has no socket: its reset is swallowed, and the probes go to the
	// other reals.
	if v, out := d.Handle(tcp4(rs2, client, rst, trigAck, 0, nil), false, 2); v != wire.Consume || out != nil {
		t.Fatalf("no-socket reset of the cookie's real: verdict %v, out %x", v, out)
	}
	if got := probedReals(t, pr, 0); len(got) != 2 || got[0] != ap(rs1) || got[1] != ap(rs3) {
		t.Fatalf("probes to %v, want %s and %s", got, rs1, rs3)
	}
	if st := d.Stats(); st.CookieResets != 1 || st.Flows != 0 || len(pr.Out) != 0 {
		t.Fatalf("after the reset: cookie resets %d, flows %d, out %d", st.CookieResets, st.Flows, len(pr.Out))
	}
	// Every real reset: the client is challenged.
	resetProbes(t, d, pr, 0, 3)
	if len(pr.Challenges) != 1 || len(fr.dials) != 0 || len(pr.Out) != 0 {
		t.Fatalf("challenges %d, dials %d, out %d; want 1, 0, 0", len(pr.Challenges), len(fr.dials), len(pr.Out))
	}
	// The client's duplicate ACK fits: the dial.
	if v, _ := d.Handle(tcp4(client, vip, ack, trigSeq+5, trigAck, nil), false, 4); v != wire.Consume {
		t.Fatalf("challenge answer: verdict %v", v)
	}
	if len(fr.dials) != 1 || fr.dials[0].key != key || !fr.dials[0].o.Timestamps {
		t.Fatalf("dials %+v", fr.dials)
	}
	if st := d.Stats(); st.ChallengesPassed != 1 || st.RecoveryStarted != 1 || st.ProbeResets != 2 || st.Inflight != 1 {
		t.Fatalf("stats %+v", st)
	}

	t.Run("without timestamps", func(t *testing.T) {
		d, _, pr := newMissDirector(t, 4)
		if v, _ := d.Handle(trig(), false, 1); v != wire.Park {
			t.Fatalf("verdict %v, want park", v)
		}
		if got := probedReals(t, pr, 0); len(got) != 3 || d.Stats().CookieSteers != 0 {
			t.Fatalf("probes to %v, cookie steers %d; want all three reals and none", got, d.Stats().CookieSteers)
		}
	})
	t.Run("cookie of no real", func(t *testing.T) {
		d, _, pr := newMissDirector(t, 4)
		if v, _ := d.Handle(trig(tsOpt(50, cookieEncode(1000, 15, 4))...), false, 1); v != wire.Park || len(pr.Probes) != 3 {
			t.Fatalf("verdict %v, %d probes; want park and 3", v, len(pr.Probes))
		}
	})
	t.Run("RST|ACK of a tentative flow reaches the client", func(t *testing.T) {
		d, _, pr := newMissDirector(t, 4)
		if v, _ := d.Handle(trig(tsOpt(50, cookieOf(d, 1))...), false, 1); v != wire.Forward {
			t.Fatalf("cookie steer: verdict %v", v)
		}
		v, out := d.Handle(tcp4(rs2, client, rst|ack, trigAck, trigSeq+5, nil), false, 2)
		if v != wire.Forward || out == nil {
			t.Fatalf("a real socket's RST|ACK: verdict %v", v)
		}
		if in := infoOf(t, out); in.src != ap(vip) || in.dst != ap(client) || in.flags != rst|ack {
			t.Fatalf("wrote %+v, want the RST|ACK from the VIP to the client", in)
		}
		if st := d.Stats(); st.CookieResets != 0 || st.CookieConfirmed != 1 || len(pr.Probes) != 0 || st.Inflight != 0 {
			t.Fatalf("stats %+v, probes %d", st, len(pr.Probes))
		}
	})
	t.Run("the real's answer confirms", func(t *testing.T) {
		d, fr, pr := newMissDirector(t, 4)
		d.Handle(trig(tsOpt(50, cookieOf(d, 2))...), false, 1)
		out := handle(t, d, tcp4(rs3, client, psh, trigAck, trigSeq+5, []byte("200 OK"), tsOpt(2000, 50)...), 2)
		if in := infoOf(t, out); in.src != ap(vip) || in.dst != ap(client) {
			t.Fatalf("the real's answer wrote %+v", in)
		}
		st := d.Stats()
		if st.CookieConfirmed != 1 || st.CookieLatency.Count != 1 || st.Inflight != 0 || len(pr.Probes) != 0 || len(fr.dials) != 0 {
			t.Fatalf("stats %+v", st)
		}
		if f := d.Flows(2); len(f) != 1 || f[0].Kind != KindCookie || d.flows.slab[0].tentative {
			t.Fatalf("flows %+v, want one confirmed cookie flow", f)
		}
		checkMissOver(t, d)
	})
}

// The probe packet: from the client, ACK only, the trigger's ack and
// window, seq far below the trigger's, no option, no payload.
func TestProbePacket(t *testing.T) {
	d, _, pr := newMissDirector(t, 0)
	d.Handle(trig(), false, 1)
	if len(pr.Probes) != 3 {
		t.Fatalf("%d probes", len(pr.Probes))
	}
	for i, b := range pr.Probes {
		in := infoOf(t, b)
		want := segInfo{ap(client), ap(sfReals[i]), trigSeq - 1<<30, trigAck, ack, 20, 0, 502}
		if in != want {
			t.Fatalf("probe %d: %+v, want %+v", i, in, want)
		}
	}
	if st := d.Stats(); st.ProbeRounds != 1 || st.ProbesSent != 3 || st.ProbesInflight != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// 2. Probe answers: which ACK is the owner's.
func TestProbeClassification(t *testing.T) {
	cases := []struct {
		name    string
		answers map[string][2]uint32 // real -> the ACK's seq, ack (the others reset)
		owner   string               // "" : none, the client is challenged
	}{
		{"owner at the trigger's ack", map[string][2]uint32{rs2: {trigAck, trigSeq + 5}}, rs2},
		{"owner with unacked data out", map[string][2]uint32{rs2: {trigAck + 30000, trigSeq}}, rs2},
		{"owner missed the trigger's bytes", map[string][2]uint32{rs3: {trigAck, trigSeq - 20000}}, rs3},
		{"time-wait (random numbers)", map[string][2]uint32{rs2: {0x9abcdef0, 0x12345678}}, ""},
		{"stale owner (seq before the trigger's ack)", map[string][2]uint32{rs2: {trigAck - 5000, trigSeq + 5}}, ""},
		{"seq a window past the trigger's ack", map[string][2]uint32{rs2: {trigAck + 1<<30 + 1, trigSeq + 5}}, ""},
		{"ack far from the trigger's seq", map[string][2]uint32{rs2: {trigAck, trigSeq + 1<<31}}, ""},
		{"two plausible owners", map[string][2]uint32{rs1: {trigAck, trigSeq + 5}, rs2: {trigAck, trigSeq + 5}}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, fr, pr := newMissDirector(t, 0)
			key := Key{protoTCP, ap(client), ap(vip)}
			d.Handle(trig(), false, 1)
			var skip []string
			for real, a := range c.answers {
				skip = append(skip, real)
				if v, out := d.Handle(ownerAnswer(real, a[0], a[1]), false, 2); v != wire.Consume || out != nil {
					t.Fatalf("answer of %s: verdict %v", real, v)
				}
			}
			if st := d.Stats(); st.ProbeSteers != 0 || len(pr.Challenges) != 0 {
				t.Fatal("decided before every real answered")
			}
			resetProbes(t, d, pr, 0, 3, skip...)
			st := d.Stats()
			if c.owner == "" {
				if st.ProbeSteers != 0 || len(pr.Challenges) != 1 || st.Flows != 0 || st.ChallengesInflight != 1 {
					t.Fatalf("no owner: steers %d, challenges %d, flows %d", st.ProbeSteers, len(pr.Challenges), st.Flows)
				}
				if want := uint64(len(c.answers)); len(c.answers) == 1 && st.ProbeOthers != want {
					t.Fatalf("probe others %d, want %d", st.ProbeOthers, want)
				}
				return
			}
			if st.ProbeSteers != 1 || len(pr.Challenges) != 0 || st.ProbeLatency.Count != 1 || len(fr.dials) != 0 {
				t.Fatalf("stats %+v, challenges %d", st, len(pr.Challenges))
			}
			// The parked trigger comes out unchanged but for its
			// destination: no deltas.
			if want := tcp4(client, c.owner, psh, trigSeq, trigAck, trigData); len(pr.Out) != 1 || !bytes.Equal(pr.Out[0], want) {
				t.Fatalf("flushed %x, want %x", pr.Out, want)
			}
			slot, side, ok := d.flows.lookup(key)
			if !ok || side != sideClient {
				t.Fatal("no flow")
			}
			f := &d.flows.slab[slot]
			a := c.answers[c.owner]
			if f.Kind != KindProbe || d.realOf(f) != ap(c.owner) || f.SeqDelta != 0 || f.AckDelta != 0 {
				t.Fatalf("flow %+v", d.export(f))
			}
			if f.win.flags&winSrvSeen == 0 || f.win.srv.end != a[0] || f.win.srv.ack != a[1] || !f.hiSrvSeen || f.hiSrv != a[0] {
				t.Fatalf("windows not seeded from the answer: %+v, hiSrv %d", f.win, f.hiSrv)
			}
			checkMissOver(t, d)
			// The flow carries the connection both ways.
			if out := handle(t, d, tcp4(c.owner, client, psh, a[0], trigSeq+5, []byte("ok")), 4); out == nil {
				t.Fatal("the owner's reply dropped")
			}
		})
	}
}

// A silent real may be rate-limited: no decision until its retry (at
// retryAfter, to it alone) went unanswered for answerWait; an owner that
// answers only the retry is still found.
func TestProbeSilentRetry(t *testing.T) {
	t.Run("silent, then counted", func(t *testing.T) {
		d, _, pr := newMissDirector(t, 0)
		const t0 = 10 * sec
		d.Handle(trig(), false, t0)
		d.Handle(ownerAnswer(rs2, trigAck, trigSeq+5), false, t0+ms)
		resetProbes(t, d, pr, 0, t0+ms, rs2, rs3) // rs3 silent
		d.Sweep(t0+retryAfter-1, 100)
		if len(pr.Probes) != 3 || d.Stats().ProbeSteers != 0 {
			t.Fatalf("before retryAfter: %d probes, steers %d", len(pr.Probes), d.Stats().ProbeSteers)
		}
		d.Sweep(t0+retryAfter, 100)
		if got := probedReals(t, pr, 3); len(got) != 1 || got[0] != ap(rs3) {
			t.Fatalf("retry to %v, want %s alone", got, rs3)
		}
		d.Sweep(t0+retryAfter+answerWait-1, 100)
		if st := d.Stats(); st.ProbeSteers != 0 || st.ProbesSilent != 0 || len(pr.Probes) != 4 {
			t.Fatalf("before answerWait: steers %d, silent %d, probes %d", st.ProbeSteers, st.ProbesSilent, len(pr.Probes))
		}
		d.Sweep(t0+retryAfter+answerWait, 100)
		if st := d.Stats(); st.ProbesSilent != 1 || st.ProbeSteers != 1 || st.ProbesSent != 4 {
			t.Fatalf("stats %+v", st)
		}
		if f := d.Flows(t0 + sec); len(f) != 1 || f[0].Real != ap(rs2) {
			t.Fatalf("flows %+v", f)
		}
		checkMissOver(t, d)
	})
	t.Run("owner answers the retry", func(t *testing.T) {
		d, _, pr := newMissDirector(t, 0)
		d.Handle(trig(), false, 1)
		resetProbes(t, d, pr, 0, 2, rs3)
		d.Sweep(1+retryAfter, 100)
		if len(pr.Probes) != 4 {
			t.Fatalf("%d probes, want the retry", len(pr.Probes))
		}
		d.Handle(ownerAnswer(rs3, trigAck, trigSeq+5), false, 2+retryAfter)
		if f := d.Flows(3 + retryAfter); len(f) != 1 || f[0].Real != ap(rs3) || f[0].Kind != KindProbe || len(pr.Challenges) != 0 {
			t.Fatalf("flows %+v, challenges %d", f, len(pr.Challenges))
		}
		checkMissOver(t, d)
	})
	t.Run("all silent", func(t *testing.T) {
		d, _, pr := newMissDirector(t, 0)
		d.Handle(trig(), false, 1)
		d.Sweep(1+retryAfter, 100)
		d.Sweep(1+retryAfter+answerWait, 100)
		if st := d.Stats(); st.ProbesSilent != 3 || len(pr.Challenges) != 1 || len(d.rec.probes) != 0 {
			t.Fatalf("silent %d, challenges %d, probes %v", st.ProbesSilent, len(pr.Challenges), d.rec.probes)
		}
	})
}

// 3. The challenge packet and its accept rules.
func TestChallenge(t *testing.T) {
	d, _, pr := newMissDirector(t, 0)
	toChallenge(t, d, pr, 1, trig())
	in := infoOf(t, pr.Challenges[0])
	if want := (segInfo{ap(vip), ap(client), trigAck - 1<<30, trigSeq, ack, 20, 0, 0}); in != want {
		t.Fatalf("challenge %+v, want %+v", in, want)
	}

	cases := []struct {
		name     string
		seq, ack uint32
		pass     bool
	}{
		{"the trigger's end", trigSeq + 5, trigAck, true},
		{"more sent since", trigSeq + 60000, trigAck, true},
		{"a window past the trigger", trigSeq + 1<<30, trigAck, true},
		{"beyond a window past the trigger", trigSeq + 1<<30 + 1, trigAck, false},
		{"before the trigger's end", trigSeq + 4, trigAck, false},
		{"another ack", trigSeq + 5, trigAck + 1, false},
		{"an ack below", trigSeq + 5, trigAck - 1, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, fr, pr := newMissDirector(t, 0)
			toChallenge(t, d, pr, 1, trig())
			if v, out := d.Handle(tcp4(client, vip, ack, c.seq, c.ack, nil), false, 2); v != wire.Consume || out != nil {
				t.Fatalf("answer: verdict %v", v)
			}
			st := d.Stats()
			if !c.pass {
				if len(fr.dials) != 0 || st.ChallengesRejected != 1 || st.ChallengesPassed != 0 || st.Flows != 0 || len(pr.Out) != 0 {
					t.Fatalf("unfitting answer: dials %d, stats %+v", len(fr.dials), st)
				}
				checkMissOver(t, d)
				return
			}
			if len(fr.dials) != 1 || st.ChallengesPassed != 1 || st.ChallengesRejected != 0 || st.Inflight != 1 {
				t.Fatalf("fitting answer: dials %d, stats %+v", len(fr.dials), st)
			}
		})
	}

	t.Run("a forged trigger before the genuine one", func(t *testing.T) {
		d, fr, pr := newMissDirector(t, 0)
		key := Key{protoTCP, ap(client), ap(vip)}
		forged := tcp4(client, vip, psh, 777777, 888888, []byte("evil bytes"))
		genuine := trig()
		toChallenge(t, d, pr, 1, forged, genuine)
		if in := infoOf(t, pr.Challenges[0]); in.seq != wrap(888888-1<<30) || in.ack != 777777 {
			t.Fatalf("challenge %+v, want the forged trigger's numbers", in)
		}
		d.Handle(tcp4(client, vip, ack, trigSeq+5, trigAck, nil), false, 2)
		if len(fr.dials) != 1 {
			t.Fatalf("dials %+v", fr.dials)
		}
		if st := d.Stats(); st.ParkedBytes != len(genuine) {
			t.Fatalf("parked %d bytes, want only the genuine segment's %d", st.ParkedBytes, len(genuine))
		}
		out := d.Recovered(key, wire.Handshake{AckSeq: 10, AckAck: 20}, 3)
		if want := tcp4(local, fr.dials[0].o.Remote.String(), psh, 10, 20, trigData); len(out) != 1 || !bytes.Equal(out[0], want) {
			t.Fatalf("flushed %x, want %x (deltas from the genuine segment)", out, want)
		}
		checkPrefixTable(t, d)
	})
	t.Run("SACK-bearing segments never trigger", func(t *testing.T) {
		d, fr, pr := newMissDirector(t, 0)
		toChallenge(t, d, pr, 1, trig(sackOpt(trigAck+100, trigAck+200)...))
		d.Handle(tcp4(client, vip, ack, trigSeq+5, trigAck, nil), false, 2)
		if st := d.Stats(); len(fr.dials) != 0 || st.Drop(DropSACKTrigger) != 1 || st.ChallengesRejected != 0 {
			t.Fatalf("dials %d, sack drops %d", len(fr.dials), st.Drop(DropSACKTrigger))
		}
		checkMissOver(t, d)
	})
	t.Run("a SACK-bearing segment, then one without", func(t *testing.T) {
		d, fr, pr := newMissDirector(t, 0)
		key := Key{protoTCP, ap(client), ap(vip)}
		toChallenge(t, d, pr, 1, trig(sackOpt(trigAck+100, trigAck+200)...), trig())
		d.Handle(tcp4(client, vip, ack, trigSeq+5, trigAck, nil), false, 2)
		if len(fr.dials) != 1 {
			t.Fatalf("dials %+v", fr.dials)
		}
		out := d.Recovered(key, wire.Handshake{AckSeq: 10, AckAck: 20}, 3)
		if want := tcp4(local, fr.dials[0].o.Remote.String(), psh, 10, 20, trigData); len(out) != 1 || !bytes.Equal(out[0], want) {
			t.Fatalf("flushed %x, want %x", out, want)
		}
	})
	t.Run("unanswered", func(t *testing.T) {
		d, fr, pr := newMissDirector(t, 0)
		const t0 = 5 * sec
		toChallenge(t, d, pr, t0, trig())
		d.Sweep(t0+retryAfter-1, 100)
		if len(pr.Challenges) != 1 {
			t.Fatal("retried before retryAfter")
		}
		d.Sweep(t0+retryAfter, 100)
		if len(pr.Challenges) != 2 || !bytes.Equal(pr.Challenges[0], pr.Challenges[1]) {
			t.Fatalf("%d challenges, want the retry (the same packet)", len(pr.Challenges))
		}
		d.Sweep(t0+retryAfter+challengeWait-1, 100)
		if d.Stats().Inflight != 1 {
			t.Fatal("ended before challengeWait")
		}
		d.Sweep(t0+retryAfter+challengeWait, 100)
		st := d.Stats()
		if st.ChallengesUnanswered != 1 || st.ChallengesSent != 2 || len(fr.dials) != 0 || st.Flows != 0 || len(pr.Out) != 0 || st.ClientResets != 0 {
			t.Fatalf("stats %+v, dials %d, out %d", st, len(fr.dials), len(pr.Out))
		}
		checkMissOver(t, d)
	})
	t.Run("the source's reset", func(t *testing.T) {
		d, fr, pr := newMissDirector(t, 0)
		toChallenge(t, d, pr, 1, trig())
		// Another seq, or with ACK: not the no-socket reset.
		for _, r := range [][]byte{tcp4(client, vip, rst, trigSeq+1, 0, nil), tcp4(client, vip, rst|ack, trigSeq, trigAck, nil)} {
			if v, _ := d.Handle(r, false, 2); v != wire.Drop {
				t.Fatalf("verdict %v, want drop", v)
			}
		}
		if st := d.Stats(); st.ChallengeResets != 0 || st.Inflight != 1 || st.Drop(DropStrayRST) != 2 {
			t.Fatalf("stats %+v", st)
		}
		if v, _ := d.Handle(tcp4(client, vip, rst, trigSeq, 0, nil), false, 3); v != wire.Consume {
			t.Fatalf("verdict %v, want consume", v)
		}
		if st := d.Stats(); st.ChallengeResets != 1 || len(fr.dials) != 0 || len(pr.Out) != 0 {
			t.Fatalf("stats %+v", st)
		}
		checkMissOver(t, d)
	})
}

// 4. The original real speaks during the probes or the challenge: its flow
// is adopted, the miss ends (no dial ever asked) and the parked segments go
// to it.
func TestMissAdoption(t *testing.T) {
	for _, during := range []string{"probe", "challenge"} {
		t.Run(during, func(t *testing.T) {
			d, fr, pr := newMissDirector(t, 0)
			second := tcp4(client, vip, psh, trigSeq+5, trigAck, []byte("more"))
			if during == "probe" {
				d.Handle(trig(), false, 1)
				d.Handle(second, false, 1)
			} else {
				toChallenge(t, d, pr, 1, trig(), second)
			}
			out := handle(t, d, tcp4(rs3, client, psh, trigAck, trigSeq, []byte("resp")), 2)
			if want := tcp4(vip, client, psh, trigAck, trigSeq, []byte("resp")); !bytes.Equal(out, want) {
				t.Fatalf("adopted:\n got %x\nwant %x", out, want)
			}
			want := [][]byte{tcp4(client, rs3, psh, trigSeq, trigAck, trigData), tcp4(client, rs3, psh, trigSeq+5, trigAck, []byte("more"))}
			if len(pr.Out) != 2 || !bytes.Equal(pr.Out[0], want[0]) || !bytes.Equal(pr.Out[1], want[1]) {
				t.Fatalf("flushed %x, want %x", pr.Out, want)
			}
			st := d.Stats()
			if len(fr.dials) != 0 || len(fr.cancelled) != 0 || st.Adopted != 1 || st.AdoptAborts != 1 {
				t.Fatalf("dials %d, cancelled %d, stats %+v", len(fr.dials), len(fr.cancelled), st)
			}
			checkMissOver(t, d)
			if f := d.Flows(2); len(f) != 1 || f[0].Kind != KindAdopted || f[0].Real != ap(rs3) {
				t.Fatalf("flows %+v", f)
			}
			// A late answer to a probe reaches nobody.
			if v, _ := d.Handle(tcp4(rs1, client, rst, trigAck, 0, nil), false, 3); v != wire.Drop {
				t.Fatalf("a late probe reset: verdict %v", v)
			}
		})
	}
}

// 5. A SYN on a tuple whose miss is in flight is dropped; a miss counts
// against the budgets from its first segment.
func TestMissSynAndBudgets(t *testing.T) {
	for _, during := range []string{"probe", "challenge"} {
		t.Run("syn during "+during, func(t *testing.T) {
			d, _, pr := newMissDirector(t, 0)
			if during == "probe" {
				d.Handle(trig(), false, 1)
			} else {
				toChallenge(t, d, pr, 1, trig())
			}
			if v, _ := d.Handle(tcp4(client, vip, syn, 5555, 0, nil), false, 2); v != wire.Drop {
				t.Fatalf("SYN: verdict %v", v)
			}
			if st := d.Stats(); st.Drop(DropRecoveryPending) != 1 || st.Flows != 0 || st.Inflight != 1 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
	t.Run("prefix in flight", func(t *testing.T) {
		d, _, _ := newMissDirector(t, 0, func(c *RecoveryConfig) { c.PrefixInflight = 2 })
		for i, src := range []string{"198.18.1.2:1000", "198.18.1.9:1000"} {
			if r := trigger(t, d, src, 1); r != DropNone {
				t.Fatalf("trigger %d: %v", i, r)
			}
			if st := d.Stats(); st.Inflight != i+1 || st.ProbesInflight != i+1 {
				t.Fatalf("after trigger %d: inflight %d", i, st.Inflight)
			}
		}
		if r := trigger(t, d, "198.18.1.3:1000", 1); r != DropRecoveryPrefixBusy {
			t.Fatalf("third trigger of the /24: %v", r)
		}
		if r := trigger(t, d, "198.18.2.3:1000", 1); r != DropNone {
			t.Fatalf("another prefix: %v", r)
		}
		checkPrefixTable(t, d)
	})
	t.Run("in flight", func(t *testing.T) {
		d, _, _ := newMissDirector(t, 0, func(c *RecoveryConfig) { c.MaxInflight = 1 })
		if r := trigger(t, d, "198.18.1.2:1000", 1); r != DropNone {
			t.Fatal(r)
		}
		if r := trigger(t, d, "198.18.2.2:1000", 1); r != DropRecoveryBusy {
			t.Fatalf("second miss: %v", r)
		}
	})
	t.Run("a cookie steer counts", func(t *testing.T) {
		d, _, _ := newMissDirector(t, 4, func(c *RecoveryConfig) { c.PrefixInflight = 1 })
		if v, _ := d.Handle(trig(tsOpt(50, cookieOf(d, 0))...), false, 1); v != wire.Forward {
			t.Fatal(v)
		}
		if r := trigger(t, d, "198.18.1.9:1000", 1); r != DropRecoveryPrefixBusy {
			t.Fatalf("a second miss of the prefix during a steer: %v", r)
		}
		checkPrefixTable(t, d)
	})
}

// 6. Emit is called without the Director's lock: peers that answer at
// once re-enter Handle from inside it (a deadlock otherwise), and Emit
// itself finds the lock free. Concurrent pumps and sweeps run the same
// under the race detector.
func TestEmitOutsideLock(t *testing.T) {
	d, fr, pr := newRecDirectorPeers(t)
	emit := d.emitFn
	var held int
	d.emitFn = func(pkts [][]byte, now int64) {
		if !d.mu.TryLock() {
			held++
		} else {
			d.mu.Unlock()
		}
		emit(pkts, now)
	}
	handle(t, d, trig(), 1) // probes, resets, challenge, answer, dial: all nested
	if len(fr.dials) != 1 || len(pr.Probes) != 3 || len(pr.Challenges) != 1 {
		t.Fatalf("dials %d, probes %d, challenges %d", len(fr.dials), len(pr.Probes), len(pr.Challenges))
	}
	pr.Quiet = true
	handle(t, d, tcp4(client2, vip, psh, 1, 1, []byte("x1")), 2)
	d.Sweep(2+retryAfter, 100) // the probes' retry, from Sweep
	if len(pr.Probes) != 9 {
		t.Fatalf("%d probes, want 3 + 3 + the 3 retries", len(pr.Probes))
	}
	if held != 0 {
		t.Fatalf("Emit called with the lock held %d times", held)
	}

	t.Run("concurrent", func(t *testing.T) {
		fr := &lockedDialer{}
		pr := &lockedPeers{}
		d := newTestDirector(t, func(c *Config) {
			c.Recovery = RecoveryConfig{
				Enabled: true, Dialer: fr, Addrs: []netip.Addr{netip.MustParseAddr(recAddr)},
				PortLo: 10000, PortHi: 10999, WScale: 7, MSS: 1460,
				Rate: 1e6, MaxInflight: 1000, ParkBytes: 1 << 24, ParkFlowBytes: 1 << 16,
			}
			c.Emit = pr.Emit
		})
		answer(d, &pr.Peers)
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 50 {
					src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(1 + g), byte(1 + i)}), 4000)
					now := int64(1 + i*int(ms))
					d.Handle(tcp4(src.String(), vip, psh, 1, 1, []byte("data")), false, now)
					d.Handle(tcp4(src.String(), vip, ack, 3, 1, nil), false, now)
					if i%10 == 0 {
						d.Sweep(now+retryAfter, 100)
					}
				}
			}()
		}
		wg.Wait()
		// Each goroutine has its own clock: a sweep of one may run the
		// timers of another's miss before its (nested) answers arrive,
		// and end it unanswered. Every miss ends one way or the other.
		if st := d.Stats(); st.Misses != 200 || st.RecoveryStarted+st.ChallengesUnanswered+st.ChallengesRejected != 200 {
			t.Fatalf("misses %d, recoveries %d, challenges unanswered %d, rejected %d",
				st.Misses, st.RecoveryStarted, st.ChallengesUnanswered, st.ChallengesRejected)
		}
	})
}

// lockedPeers and lockedDialer serialize nattest.Peers and fakeDialer for
// concurrent callers.
type lockedPeers struct {
	mu sync.Mutex
	nattest.Peers
}

func (l *lockedPeers) Emit(pkts [][]byte, now int64) {
	// The answers re-enter the Director, which may emit again from
	// this goroutine: record under the lock, answer without it.
	for _, b := range pkts {
		l.mu.Lock()
		l.Peers.Quiet = true
		l.Peers.Emit([][]byte{b}, now)
		l.mu.Unlock()
		q := nattest.Peers{Handle: l.Handle, VIPs: l.VIPs, Reals: l.Reals}
		q.Emit([][]byte{b}, now)
	}
}

type lockedDialer struct {
	mu sync.Mutex
	fakeDialer
}

func (l *lockedDialer) Dial(k Key, o wire.DialOptions) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.fakeDialer.Dial(k, o)
}

func (l *lockedDialer) Cancel(k Key) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.fakeDialer.Cancel(k)
}

// wrap is n modulo 2^32.
func wrap(n int64) uint32 { return uint32(n) }

// A probed real's second or late answer (to the probe and to its retry)
// is not adopted when its numbers fit no parked segment: a TIME_WAIT or
// stale socket does not take the connection (an owner answering both is
// found by the first).
func TestProbeLateAnswer(t *testing.T) {
	for _, c := range []struct {
		name     string
		seq, ack uint32
		adopted  bool
	}{
		{"time-wait", 0x9abcdef0, 0x12345678, false},
		{"stale owner", trigAck - 5000, trigSeq + 5, false},
		{"owner", trigAck, trigSeq + 5, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, fr, pr := newMissDirector(t, 0)
			d.Handle(trig(), false, 1)
			resetProbes(t, d, pr, 0, 2, rs3)
			d.Sweep(1+retryAfter, 100) // the retry to rs3
			// rs3's answer to the first probe comes late, then its answer
			// to the retry.
			if v, _ := d.Handle(ownerAnswer(rs3, c.seq, c.ack), false, 2+retryAfter); v != wire.Consume {
				t.Fatalf("first answer: verdict %v", v)
			}
			v, out := d.Handle(ownerAnswer(rs3, c.seq, c.ack), false, 3+retryAfter)
			f := d.Flows(3 + retryAfter)
			if !c.adopted {
				if v != wire.Drop || out != nil || len(f) != 0 || d.Stats().Adopted != 0 || len(pr.Out) != 0 {
					t.Fatalf("second answer: verdict %v, flows %+v, flushed %d", v, f, len(pr.Out))
				}
				if st := d.Stats(); len(pr.Challenges) != 1 || st.ChallengesInflight != 1 || len(fr.dials) != 0 {
					t.Fatalf("challenges %d, in flight %d", len(pr.Challenges), st.ChallengesInflight)
				}
				return
			}
			if len(f) != 1 || f[0].Real != ap(rs3) || len(pr.Challenges) != 0 || len(pr.Out) != 1 {
				t.Fatalf("flows %+v, challenges %d, flushed %d", f, len(pr.Challenges), len(pr.Out))
			}
		})
	}
}

// A recovery whose challenge passed and whose dials then fail resets the
// client with the numbers of its answer (seq = its RCV.NXT), not those of
// a forged segment parked before the genuine one.
func TestChallengeFailedResetNumbers(t *testing.T) {
	d, _, pr := newMissDirector(t, 0)
	key := Key{protoTCP, ap(client), ap(vip)}
	toChallenge(t, d, pr, 1, tcp4(client, vip, psh, 777777, 888888, []byte("evil bytes")), trig())
	d.Handle(tcp4(client, vip, ack, trigSeq+5, trigAck, nil), false, 2)
	out := d.Failed(key, FailRefused, 3)
	if want := asRST(tcp4(vip, client, rst|ack, trigAck, trigSeq+5, nil)); len(out) != 1 || !bytes.Equal(out[0], want) {
		t.Fatalf("RST %+v, want %+v", infoOf(t, out[0]), infoOf(t, want))
	}
}

// A cookie steer is confirmed only by an answer that fits its trigger: a
// pure ACK with other numbers (a TIME_WAIT socket of an earlier connection,
// the owner answering a forged segment) undoes it as a reset does, and the
// probes go to the other reals; the real's ACK of the trigger's bytes
// confirms it.
func TestCookieSteerConfirmFits(t *testing.T) {
	d, _, pr := newMissDirector(t, 4)
	if v, _ := d.Handle(trig(tsOpt(50, cookieOf(d, 1))...), false, 1); v != wire.Forward {
		t.Fatalf("cookie steer: verdict %v, want forward", v)
	}
	if v, out := d.Handle(ownerAnswer(rs2, 1<<31, 3<<30), false, 2); v != wire.Consume || out != nil {
		t.Fatalf("an unfitting ACK of the cookie's real: verdict %v, out %x; want consume", v, out)
	}
	if st := d.Stats(); st.CookieUnfit != 1 || st.CookieConfirmed != 0 || st.Flows != 0 {
		t.Fatalf("cookie unfit %d, confirmed %d, flows %d; want 1, 0, 0", st.CookieUnfit, st.CookieConfirmed, st.Flows)
	}
	if got := probedReals(t, pr, 0); len(got) != 2 || got[0] != ap(rs1) || got[1] != ap(rs3) {
		t.Fatalf("probes to %v, want %s and %s", got, rs1, rs3)
	}

	d, _, _ = newMissDirector(t, 4)
	d.Handle(trig(tsOpt(50, cookieOf(d, 1))...), false, 1)
	if v, out := d.Handle(ownerAnswer(rs2, trigAck, trigSeq+uint32(len(trigData))), false, 2); v != wire.Forward || out == nil {
		t.Fatalf("the owner's ACK of the trigger: verdict %v; want forward", v)
	}
	if st := d.Stats(); st.CookieConfirmed != 1 || st.Flows != 1 {
		t.Fatalf("cookie confirmed %d, flows %d; want 1, 1", st.CookieConfirmed, st.Flows)
	}
	checkMissOver(t, d)
}

// A one-byte segment (a protocol's one-byte message, or a keepalive probe
// at SND.UNA-1) starts the search: it steers to the real its cookie names,
// or that answers the probes; but no real holding it, it never becomes a
// recovery dial's trigger (the new real would take a keepalive's byte for
// data): the miss ends, counted no_trigger.
func TestOneByteSegment(t *testing.T) {
	d, _, _ := newMissDirector(t, 4)
	if v, _ := d.Handle(tcp4(client, vip, psh, trigSeq, trigAck, []byte{1}, tsOpt(50, cookieOf(d, 0))...), false, 1); v != wire.Forward {
		t.Fatalf("one byte with a cookie: verdict %v, want forward (steered)", v)
	}

	d, fr, pr := newMissDirector(t, 4)
	toChallenge(t, d, pr, 1, tcp4(client, vip, psh, trigSeq, trigAck, []byte{1}))
	if v, _ := d.Handle(tcp4(client, vip, ack, trigSeq+1, trigAck, nil), false, 2); v != wire.Consume {
		t.Fatalf("challenge answer: verdict %v, want consume", v)
	}
	if st := d.Stats(); len(fr.dials) != 0 || st.Drop(DropNoTrigger) != 1 {
		t.Fatalf("dials %d, no_trigger %d; want 0, 1", len(fr.dials), st.Drop(DropNoTrigger))
	}
	checkMissOver(t, d)
}

// One probe round per tuple per 510 ms: a new miss on a tuple whose last
// round went out less than retryAfter ago sends its probes at that round's
// retry time (from Sweep), not at once.
func TestProbeRoundPacing(t *testing.T) {
	d, _, pr := newMissDirector(t, 4)
	toChallenge(t, d, pr, 1, trig()) // round 1 at 1, answered by resets
	// The client's answer does not fit: the miss ends.
	d.Handle(tcp4(client, vip, ack, 1<<31, 1<<30, nil), false, 2)
	checkMissOver(t, d)
	n := len(pr.Probes)
	if v, _ := d.Handle(trig(), false, 3); v != wire.Park {
		t.Fatalf("the next trigger: verdict %v, want park", v)
	}
	if len(pr.Probes) != n {
		t.Fatalf("%d probes sent at once within 510 ms of the last round", len(pr.Probes)-n)
	}
	d.Sweep(1+retryAfter-1, 100)
	if len(pr.Probes) != n {
		t.Fatal("probes sent before the last round's retry time")
	}
	d.Sweep(1+retryAfter, 100)
	if got := len(pr.Probes) - n; got != 3 || d.Stats().ProbeRoundsDelayed != 1 {
		t.Fatalf("%d probes at the retry time, delayed rounds %d; want 3, 1", got, d.Stats().ProbeRoundsDelayed)
	}
}

// A pure ACK or FIN with no flow starts no search (refuseRecovery), but
// one whose cookie names a live real is steered there: behind ECMP, the
// client side of a moved flow sees only the client's ACKs while the real's
// data goes through another director. Nothing else is tried for it: the
// real's no-socket reset ends the miss with no probe, challenge or dial; a
// pure ACK whose cookie names no real is dropped as before.
func TestCookieSteersPureACK(t *testing.T) {
	for _, c := range []struct {
		name  string
		flags header.TCPFlags
	}{{"ack", ack}, {"fin", fin | ack}} {
		t.Run(c.name, func(t *testing.T) {
			d, fr, pr := newMissDirector(t, 4)
			pkt := tcp4(client, vip, c.flags, trigSeq, trigAck, nil, tsOpt(50, cookieOf(d, 1))...)
			v, out := d.Handle(pkt, false, 1)
			if v != wire.Forward {
				t.Fatalf("verdict %v, want forward (steered)", v)
			}
			if in := infoOf(t, out); in.dst != ap(rs2) || in.seq != trigSeq || in.ack != trigAck {
				t.Fatalf("steered %+v, want the segment to %s", in, rs2)
			}
			if f := d.Flows(1); len(f) != 1 || f[0].Kind != KindCookie || f[0].Real != ap(rs2) {
				t.Fatalf("flows %+v, want one cookie flow to %s", f, rs2)
			}
			if st := d.Stats(); st.CookieSteers != 1 || st.Misses != 1 || st.Drop(DropNoTrigger) != 0 {
				t.Fatalf("cookie steers %d, misses %d, no_trigger %d; want 1, 1, 0", st.CookieSteers, st.Misses, st.Drop(DropNoTrigger))
			}
			if v, _ := d.Handle(tcp4(rs2, client, rst, trigAck, 0, nil), false, 2); v != wire.Consume {
				t.Fatalf("the real's no-socket reset: verdict %v, want consume", v)
			}
			if st := d.Stats(); st.CookieResets != 1 || st.Flows != 0 || len(pr.Probes) != 0 || len(pr.Challenges) != 0 || len(fr.dials) != 0 {
				t.Fatalf("after the reset: cookie resets %d, flows %d, probes %d, challenges %d, dials %d; want 1, 0, 0, 0, 0",
					st.CookieResets, st.Flows, len(pr.Probes), len(pr.Challenges), len(fr.dials))
			}
			checkMissOver(t, d)
		})
	}
	t.Run("no real's cookie", func(t *testing.T) {
		d, _, pr := newMissDirector(t, 4)
		if v, _ := d.Handle(tcp4(client, vip, ack, trigSeq, trigAck, nil, tsOpt(50, 0x1000)...), false, 1); v != wire.Drop {
			t.Fatalf("verdict %v, want drop", v)
		}
		if st := d.Stats(); st.Drop(DropNoTrigger) != 1 || st.Flows != 0 || len(pr.Probes) != 0 {
			t.Fatalf("no_trigger %d, flows %d, probes %d; want 1, 0, 0", st.Drop(DropNoTrigger), st.Flows, len(pr.Probes))
		}
		checkMissOver(t, d)
	})
}
