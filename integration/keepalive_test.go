package integration

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"holdfast/lab"
)

// TestKeepAlive: 50 keep-alive connections carry 100 requests each through
// the VIP. Each connection has its own client (one transport, used
// sequentially), so exactly 50 connections are dialed, and rr spreads them
// 17/17/16 over the reals. With --tun-queues 2, every queue's pump carries
// packets.
func TestKeepAlive(t *testing.T) {
	for _, queues := range []int{1, 2} {
		t.Run(fmt.Sprintf("queues=%d", queues), func(t *testing.T) { testKeepAlive(t, queues) })
	}
}

func testKeepAlive(t *testing.T, queues int) {
	const conns, perConn = 50, 100
	l := startLab(t, lab.Options{Reals: 3})
	d := l.Directors[0]
	args := append([]string{"--service", "tcp:" + vipHTTP.String(), "--scheduler", "rr", "--tun-queues", fmt.Sprint(queues)}, realFlags(l, lab.DefaultHTTPPort)...)
	StartDirector(t, d.NS, directorArgs(d, args...)...)

	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		ok     int
		failed []error
		dials  int64
	)
	clients := make([]*vipClient, conns)
	for i := range clients {
		clients[i] = newVIPClient(t, l.Client, true, netip.Addr{})
	}
	for _, c := range clients {
		wg.Go(func() {
			first := ""
			for range perConn {
				real, err := c.getReal(httpURL(vipHTTP, "/"))
				mu.Lock()
				if err != nil {
					failed = append(failed, err)
				} else {
					ok++
				}
				mu.Unlock()
				if err != nil {
					return
				}
				if first == "" {
					first = real
				} else if real != first {
					mu.Lock()
					failed = append(failed, fmt.Errorf("one connection answered by %s then %s", first, real))
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	for _, c := range clients {
		dials += c.dials.Load()
	}
	if ok != conns*perConn || len(failed) > 0 {
		t.Errorf("%d of %d requests succeeded; %d failures, first: %v", ok, conns*perConn, len(failed), firstErr(failed))
	}
	if dials != conns {
		t.Errorf("clients dialed %d connections, want %d", dials, conns)
	}
	var connsPerReal, reqsPerReal []int64
	for _, r := range l.Reals {
		connsPerReal = append(connsPerReal, r.Stats.HTTPConns.Load())
		reqsPerReal = append(reqsPerReal, r.Stats.HTTPRequests.Load())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := lab.ReadStats(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.ReadByQueue) != queues || slices.Contains(st.ReadByQueue, 0) {
		t.Errorf("packets read by queue %v, want %d queues that all read", st.ReadByQueue, queues)
	}
	t.Logf("packets read by queue: %v", st.ReadByQueue)
	c, q := slices.Sorted(slices.Values(connsPerReal)), slices.Sorted(slices.Values(reqsPerReal))
	if !slices.Equal(c, []int64{16, 17, 17}) || !slices.Equal(q, []int64{1600, 1700, 1700}) {
		t.Errorf("reals accepted %v connections and answered %v requests, want 16/17/17 and 1600/1700/1700 in some order", connsPerReal, reqsPerReal)
	}
}
