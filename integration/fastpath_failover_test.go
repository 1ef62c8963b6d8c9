package integration

import "testing"

// fastPathTC is the flag of the fast path variants.
var fastPathTC = []string{"--fast-path", "tc"}

// TestFastPathFailoverBusy is TestFailoverBusy with the tc fast path on
// both directors: A's program carries the busy connections (and writes
// their cookies) when A dies; B, whose program starts empty, finds every
// connection through its TUN path and hands it to its own program. Every
// body must be intact and every connection go on (busyThrough's checks).
func TestFastPathFailoverBusy(t *testing.T) {
	p := newPair(t, nil, fastPathTC, fastPathTC)
	busyThrough(t, p, 64, busySizes, func() { p.failover(t) })
}

// TestFastPathFailoverIdle is TestFailoverIdle with the tc fast path on
// both directors.
func TestFastPathFailoverIdle(t *testing.T) {
	p, conns, errs := idleFailoverOn(t, newPair(t, nil, fastPathTC, fastPathTC))
	checkIdleFailover(t, p, conns, errs)
}
