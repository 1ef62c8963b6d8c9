// The acceptance tests of issue 13 (find the connection's own real before
// making a new one): the slow-upload failover through holdfast
// (upload_test.go has the machinery and the kernel NAT + conntrackd anchor)
// and the idle keep-alive failover answered by the original real.

package integration

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"holdfast/lab"
)

// holdfastRig is a holdfast pair (both directors with extra flags) as an
// uploadRig.
func holdfastRig(t *testing.T, name string, setup func(*lab.Lab), extra ...string) *uploadRig {
	t.Helper()
	p := newPair(t, setup, extra, extra)
	return &uploadRig{name: name, l: p.l, vip: p.vip, failover: p.failover}
}

// familyRig is holdfastRig on a dual-stack pair, the uploads going to f's
// VIP.
func familyRig(t *testing.T, f family, name string, setup func(*lab.Lab), extra ...string) *uploadRig {
	t.Helper()
	p := newFamilyPair(t, f, setup, extra, extra)
	return &uploadRig{name: name, l: p.l, vip: p.vip, failover: p.failover}
}

// TestUploadFailoverSteering is the slow-upload failover through holdfast,
// with client timestamps on and off: 16 of 16 uploads must survive, each
// stored intact on its connection's original real and on no other. With
// --recovery=off (a plain NAT director, the comparison point) the losses
// are only logged.
func TestUploadFailoverSteering(t *testing.T) {
	for _, v := range []struct {
		name  string
		extra []string
		check bool
	}{
		{"holdfast", nil, true},
		{"holdfast --recovery=off", []string{"--recovery=off"}, false},
	} {
		for _, ts := range []bool{true, false} {
			t.Run(v.name+"/"+timestampsName(ts), func(t *testing.T) {
				r := slowUploads(t, holdfastRig(t, v.name, clientTimestamps(t, ts), v.extra...))
				t.Logf("slow uploads, %s, client %s: %v", r.name, timestampsName(ts), r)
				if !v.check {
					return
				}
				if r.lost() != 0 {
					t.Errorf("%s, client %s: lost %d of %d uploads, want 0; first: %v", v.name, timestampsName(ts), r.lost(), len(r.outcomes), r.firstLost)
				}
				if !r.storedConsistent() {
					t.Errorf("%s, client %s: the reals stored %v uploads, the client got intact answers from %v: want each upload stored on exactly the real that answered it",
						v.name, timestampsName(ts), r.stored, r.answered)
				}
			})
		}
	}
}

const (
	idleConns     = 200
	idleRequests  = 3  // per connection after the failover
	idleResumers  = 16 // connections resumed at once
	idleSeedOrder = 13
)

// TestIdleFailoverOriginalReal is the idle keep-alive acceptance: 200
// connections make a request each through A, A dies, and each makes 3 more
// through B, resumed in a shuffled order (16 at a time); every request must
// be answered by the real that answered the connection's first one, with
// client timestamps on and off. The first request's latency after the
// failover is logged (median, p99).
func TestIdleFailoverOriginalReal(t *testing.T) {
	for _, ts := range []bool{true, false} {
		t.Run(timestampsName(ts), func(t *testing.T) {
			p := newPair(t, clientTimestamps(t, ts))
			conns := dialHTTP(t, p.l.Client, idleConns)
			owner := owners(t, conns)
			p.failover(t)

			order := rand.New(rand.NewPCG(idleSeedOrder, 0)).Perm(len(conns))
			var (
				next     atomic.Int64
				mu       sync.Mutex
				first    []time.Duration
				original int
				failed   int // connections with a failed request
				movedTo  int // connections answered by another real, none failed
				moved    []string
				errs     []error
				wg       sync.WaitGroup
			)
			start := time.Now()
			for range idleResumers {
				wg.Go(func() {
					for {
						k := int(next.Add(1)) - 1
						if k >= len(order) {
							return
						}
						i := order[k]
						ok, lost := true, false
						for j := range idleRequests {
							t0 := time.Now()
							real, _, _, err := conns[i].get("/")
							d := time.Since(t0)
							mu.Lock()
							switch {
							case err != nil:
								errs = append(errs, fmt.Errorf("connection %d, request %d after the failover: %w", i, j+1, err))
								ok, lost = false, true
							case real != owner[i]:
								moved = append(moved, fmt.Sprintf("connection %d: %s before, %s after", i, owner[i], real))
								ok = false
							}
							if j == 0 && err == nil {
								first = append(first, d)
							}
							mu.Unlock()
							if err != nil {
								break
							}
						}
						mu.Lock()
						switch {
						case ok:
							original++
						case lost:
							failed++
						default:
							movedTo++
						}
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			c := directorCounters(t, p.l.Directors[1])
			// The reals still see each connection from the client's own
			// address and port, on one real: the one that answered.
			peers := realPeers(t, p.l)
			seen := 0
			for i, h := range conns {
				if peers[h.c.LocalAddr().String()] == owner[i] {
					seen++
				}
			}
			fromRecovery := 0
			for peer := range peers {
				if strings.HasPrefix(peer, lab.RecoveryAddr.String()+":") {
					fromRecovery++
				}
			}
			t.Logf("idle failover, holdfast, client %s: answered by the original real %d of %d (%d failed, %d answered by another real); first request after the failover: median %v, p99 %v (resumed %d at a time, all in %v); the reals see %d of %d connections from the client's own address on their original real, %d from the recovery address; B: %d steered by cookie, %d by probe, %d recovered, %d adopted",
				timestampsName(ts), original, len(conns), failed, movedTo, latencyQuantile(first, 0.5), latencyQuantile(first, 0.99),
				idleResumers, time.Since(start).Round(time.Millisecond), seen, len(conns), fromRecovery, c.CookieConfirmed, c.ProbeSteers, c.Recovered, c.Adopted)
			if seen != len(conns) || fromRecovery != 0 {
				t.Errorf("client %s: the reals see %d of %d connections from the client's address on their original real, and %d from the recovery address; want all and none",
					timestampsName(ts), seen, len(conns), fromRecovery)
			}
			if original != len(conns) {
				t.Errorf("client %s: %d of %d connections answered only by their original real, want all; failed: %d (first: %v); answered by another real: %d (first: %v)",
					timestampsName(ts), original, len(conns), failed, firstErr(errs), movedTo, firstOf(moved))
			}
		})
	}
}

// storedConsistent says whether every intact answer is an upload its real
// stored, and every stored upload was answered intact: each upload is
// stored on exactly one real, the one that answered.
func (r uploadReport) storedConsistent() bool {
	for real, n := range r.answered {
		if r.stored[real] != n {
			return false
		}
	}
	for real, n := range r.stored {
		if r.answered[real] != n {
			return false
		}
	}
	return true
}

// latencyQuantile is the q-quantile of ds (nearest rank), 0 if empty.
func latencyQuantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))].Round(10 * time.Microsecond)
}

func firstOf(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return s[0]
}
