package bfd

import (
	"errors"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)

// wire delivers a's next packet to b through the wire format.
func wire(t *testing.T, a, b *fsm, now time.Time) (changed, reply bool) {
	t.Helper()
	c, err := Parse(a.packet().Append(nil))
	if err != nil {
		t.Fatalf("Parse of a packet we wrote: %v", err)
	}
	return b.receive(c, now)
}

func TestHandshake(t *testing.T) {
	router := newFSM(0x11, 100*time.Millisecond, 5, false)
	dir := newFSM(0x22, 300*time.Millisecond, 3, true)
	if iv := dir.txInterval(); iv != 0 {
		t.Fatalf("passive session sends every %v before hearing from the router", iv)
	}
	if iv := router.txInterval(); iv != slowTx {
		t.Fatalf("active session before Up sends every %v, want %v (RFC 5880 6.8.3)", iv, slowTx)
	}
	// Router Down -> director: Down -> Init, and it answers at once.
	if ch, reply := wire(t, router, dir, t0); !ch || !reply || dir.state != Init {
		t.Fatalf("director after the router's Down: state %v changed %v reply %v, want Init, true, true", dir.state, ch, reply)
	}
	// Director Init -> router: Down -> Up.
	if wire(t, dir, router, t0); router.state != Up {
		t.Fatalf("router after the director's Init: %v, want Up", router.state)
	}
	// Router Up -> director: Init -> Up, advertising its fast interval with a poll.
	if wire(t, router, dir, t0); dir.state != Up {
		t.Fatalf("director after the router's Up: %v, want Up", dir.state)
	}
	if !dir.poll || dir.advTx != 300*time.Millisecond {
		t.Fatalf("director Up: poll %v advTx %v, want a poll sequence for 300ms", dir.poll, dir.advTx)
	}
	// The router's Up came with its own poll (it went to 100 ms): the
	// director's next packet is the Final, which ends it.
	if f := dir.packet(); !f.Final || f.Poll {
		t.Fatalf("director's answer to the router's poll: %+v", f)
	} else if router.receive(f, t0); router.poll {
		t.Fatal("the director's Final did not end the router's poll")
	}
	p := dir.packet()
	if !p.Poll || p.DesiredTx != 300000 || p.MinRx != 300000 || p.DetectMult != 3 || p.YourDisc != 0x11 || p.MyDisc != 0x22 {
		t.Fatalf("director's packet once Up: %+v", p)
	}
	// The router answers the poll with a Final; the poll ends.
	if _, reply := router.receive(p, t0); !reply {
		t.Fatal("a Poll did not ask for an immediate reply")
	}
	if f := router.packet(); !f.Final || f.Poll {
		t.Fatalf("reply to a Poll: %+v, want Final and no Poll", f)
	} else {
		dir.receive(f, t0)
	}
	if dir.poll {
		t.Fatal("the Final did not end the poll sequence")
	}
	// Router advertised 100 ms desired tx while Up (its slowTx floor
	// only applies before Up): the director's detection time is the
	// router's multiplier (5) times the slower of its own rx (300 ms) and
	// the router's tx.
	wire(t, router, dir, t0)
	if got, want := dir.detectTime(), 5*300*time.Millisecond; got != want {
		t.Fatalf("director's detection time %v, want %v", got, want)
	}
	// The director sends at the slower of its interval and the router's rx.
	if got := dir.txInterval(); got != 300*time.Millisecond {
		t.Fatalf("director's tx interval Up: %v, want 300ms", got)
	}
}

func up(t *testing.T) (router, dir *fsm) {
	t.Helper()
	router = newFSM(0x11, 100*time.Millisecond, 3, false)
	dir = newFSM(0x22, 300*time.Millisecond, 3, true)
	wire(t, router, dir, t0)
	wire(t, dir, router, t0)
	wire(t, router, dir, t0)
	if router.state != Up || dir.state != Up {
		t.Fatalf("no handshake: %v %v", router.state, dir.state)
	}
	return router, dir
}

func TestDetectionExpires(t *testing.T) {
	router, dir := up(t)
	wire(t, router, dir, t0)
	dl := dir.deadline()
	if want := t0.Add(dir.detectTime()); !dl.Equal(want) {
		t.Fatalf("deadline %v, want %v", dl, want)
	}
	if dir.expire(dl.Add(-time.Microsecond)) {
		t.Fatal("expired before its detection time")
	}
	if !dir.expire(dl) || dir.state != Down || dir.diag != DiagExpired || dir.remoteDisc != 0 {
		t.Fatalf("after the detection time: state %v diag %v remote %x, want Down, expired, 0", dir.state, dir.diag, dir.remoteDisc)
	}
	if iv := dir.txInterval(); iv != 0 {
		t.Fatalf("passive session without a remote keeps sending every %v", iv)
	}
	if !dir.deadline().IsZero() {
		t.Fatal("detection timer still runs on a Down session")
	}
}

func TestNeighborDown(t *testing.T) {
	for _, st := range []State{Down, AdminDown} {
		router, dir := up(t)
		router.state = st
		if ch, _ := wire(t, router, dir, t0); !ch || dir.state != Down || dir.diag != DiagNeighborDown {
			t.Errorf("router says %v: director %v diag %v, want Down, neighbor signaled down", st, dir.state, dir.diag)
		}
		if dir.advTx != slowTx {
			t.Errorf("router says %v: director advertises %v, want %v", st, dir.advTx, slowTx)
		}
	}
}

func TestAdminDown(t *testing.T) {
	router, dir := up(t)
	c, ok := dir.adminDown()
	if !ok || c.State != AdminDown || c.Diag != DiagAdminDown {
		t.Fatalf("adminDown: %+v %v", c, ok)
	}
	if router.receive(c, t0); router.state != Down || router.diag != DiagNeighborDown {
		t.Fatalf("router after AdminDown: %v %v", router.state, router.diag)
	}
	if fresh := newFSM(1, time.Second, 3, true); func() bool { _, ok := fresh.adminDown(); return ok }() {
		t.Fatal("a session that never heard its router wants to tell it")
	}
}

func TestParse(t *testing.T) {
	good := Control{State: Up, DetectMult: 3, MyDisc: 7, YourDisc: 9, DesiredTx: 300000, MinRx: 300000, Diag: DiagExpired}
	got, err := Parse(good.Append(nil))
	if err != nil || got != good {
		t.Fatalf("round trip: %+v %v, want %+v", got, err, good)
	}
	mod := func(f func(b []byte)) []byte { b := good.Append(nil); f(b); return b }
	for _, c := range []struct {
		name string
		b    []byte
		want error
	}{
		{"short", good.Append(nil)[:23], ErrShort},
		{"length past the end", mod(func(b []byte) { b[offLength] = 30 }), ErrShort},
		{"length below 24", mod(func(b []byte) { b[offLength] = 20 }), ErrShort},
		{"version 0", mod(func(b []byte) { b[0] &= 0x1f }), ErrVersion},
		{"mult 0", mod(func(b []byte) { b[offMult] = 0 }), ErrMult},
		{"multipoint", mod(func(b []byte) { b[offFlags] |= flagMultipoint }), ErrMultipoint},
		{"auth", mod(func(b []byte) { b[offFlags] |= flagAuth }), ErrAuth},
		{"my disc 0", mod(func(b []byte) { clear(b[offMyDisc : offMyDisc+4]) }), ErrMyDisc},
		{"your disc 0 while Up", mod(func(b []byte) { clear(b[offYourDisc : offYourDisc+4]) }), ErrYourDisc},
		{"poll and final", mod(func(b []byte) { b[offFlags] |= flagPoll | flagFinal }), ErrPollFinal},
	} {
		if _, err := Parse(c.b); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	down := good
	down.State, down.YourDisc = Down, 0
	if _, err := Parse(down.Append(nil)); err != nil {
		t.Errorf("Down with your disc 0: %v", err)
	}
}

func TestJitter(t *testing.T) {
	for range 1000 {
		if j := jitter(time.Second, 3); j < 750*time.Millisecond || j > time.Second {
			t.Fatalf("jitter %v outside 75-100%%", j)
		}
		if j := jitter(time.Second, 1); j < 750*time.Millisecond || j > 900*time.Millisecond {
			t.Fatalf("jitter with multiplier 1 %v outside 75-90%%", j)
		}
	}
}
