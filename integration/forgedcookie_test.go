package integration

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"holdfast/integration/forge"
	"holdfast/lab"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// waitIdle waits until director d has no miss or recovery in flight (up to
// 10 s). Nothing announces that: it polls the admin API.
func waitIdle(t *testing.T, d *lab.Director) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for c := directorCounters(t, d); c.Inflight != 0; c = directorCounters(t, d) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d misses still in flight after 10 s", d.Label, c.Inflight)
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
}

// cookieIDs is how many ids --ts-cookie-bits 4 (the default) gives.
const cookieIDs = 1<<4 - 1

// TestForgedCookiesAfterFailover: 100 idle keep-alive connections through
// A, then A dies; before the clients resume, the attacker sends every
// victim's tuple segments with a payload and a timestamp option naming
// each cookie id in turn (random seq, ack and TSval), one id per round, each
// round once B has nothing in flight, so that on every tuple B meets each
// forged cookie with no flow. Then every connection makes three requests.
// None may be lost, every one must still be answered by its original real
// (a flow pinned to a wrong real would lose it, or move it), and no
// connection may be opened on the reals.
func TestForgedCookiesAfterFailover(t *testing.T) {
	s := newForgedSetup(t, true, 2)
	conns := dialHTTP(t, s.l.Client, blindConns)
	owner := owners(t, conns)
	s.failover(t)
	before := snapshotReals(t, s.l)

	snd, err := forge.Open(s.l.Client)
	if err != nil {
		t.Fatal(err)
	}
	defer snd.Close()
	rng := rand.New(rand.NewPCG(13, 13))
	sent := 0
	for id := uint32(1); id <= cookieIDs; id++ {
		waitIdle(t, s.l.Directors[1])
		for _, v := range victims(conns) {
			seg := forge.Segment{
				Src: v.Client, Dst: v.VIP, Flags: header.TCPFlagAck | header.TCPFlagPsh,
				Seq: rng.Uint32(), Ack: rng.Uint32(), ID: uint16(rng.Uint32()),
				Options: forge.TimestampOption(rng.Uint32(), rng.Uint32()&^cookieIDs|id),
				Payload: forge.DefaultPayload,
			}
			if err := snd.Send(&seg); err != nil {
				t.Fatalf("forger, after %d segments: %v", sent, err)
			}
			sent++
		}
	}

	waitIdle(t, s.l.Directors[1])
	var (
		mu    sync.Mutex
		moved []string
	)
	errs := eachConn(conns, func(i int, h *httpConn) error {
		for range 3 {
			real, _, _, err := h.get("/")
			if err != nil {
				return err
			}
			if real != owner[i] {
				mu.Lock()
				moved = append(moved, h.c.LocalAddr().String()+": "+owner[i]+" -> "+real)
				mu.Unlock()
			}
		}
		return nil
	})
	lost := classify(errs)
	opened, accepted := before.opened(snapshotReals(t, s.l))
	c := directorCounters(t, s.l.Directors[1])
	t.Logf("forged cookies right after a failover: %d segments (%d ids x %d tuples); %d of %d connections lost (%d reset, %d timeout), %d answered by another real, %d connections opened on the reals (%d accepted); B: %d misses, %d cookie steers (%d confirmed), %d steered by probe, %d challenges (%d passed), %d recoveries",
		sent, cookieIDs, len(conns), lost.lost, len(conns), lost.resets, lost.timeouts, len(moved), opened, accepted,
		c.Misses, c.CookieSteers, c.CookieConfirmed, c.ProbeSteers, c.ChallengesSent, c.ChallengesOK, c.RecoveryStarted)
	if lost.lost != 0 || len(moved) != 0 || opened != 0 || accepted != 0 || c.RecoveryStarted != 0 {
		t.Fatalf("want 0 lost, 0 moved, 0 opened, 0 recoveries; first loss: %v; moved: %v", lost.first, moved)
	}
}
