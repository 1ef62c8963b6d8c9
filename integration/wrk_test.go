package integration

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"holdfast/lab"
)

// wrkResult is what one wrk run reports.
type wrkResult struct {
	requests                                  int
	connectErr, readErr, writeErr, timeoutErr int // "Socket errors"
	non2xx                                    int
	out                                       string
}

var (
	wrkRequests = regexp.MustCompile(`(\d+) requests in`)
	wrkSocket   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

func parseWrk(t *testing.T, out string) wrkResult {
	t.Helper()
	r := wrkResult{out: out}
	m := wrkRequests.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("wrk printed no request count:\n%s", out)
	}
	r.requests, _ = strconv.Atoi(m[1])
	if m := wrkSocket.FindStringSubmatch(out); m != nil {
		r.connectErr, _ = strconv.Atoi(m[1])
		r.readErr, _ = strconv.Atoi(m[2])
		r.writeErr, _ = strconv.Atoi(m[3])
		r.timeoutErr, _ = strconv.Atoi(m[4])
	}
	if m := wrkNon2xx.FindStringSubmatch(out); m != nil {
		r.non2xx, _ = strconv.Atoi(m[1])
	}
	return r
}

// TestFailoverWrk: wrk (16 keep-alive connections, 2 threads, 8 s, a
// request times out after 3 s) downloads 16 KiB and 1 MiB responses through
// A; once every connection has its flow on A, A dies and the routes move to
// B. wrk must see no socket error (connect, read, write), no timeout (a
// stalled socket) and no response other than 200; the same with 1 % random
// loss on the client path (the directors' uplinks).
func TestFailoverWrk(t *testing.T) {
	const conns = 16
	for _, c := range []struct {
		name  string
		size  int
		lossy bool
	}{
		{"16KiB", 16 << 10, false},
		{"1MiB", 1 << 20, false},
		{"16KiB lossy", 16 << 10, true},
		{"1MiB lossy", 1 << 20, true},
	} {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			var setup func(*lab.Lab)
			if c.lossy {
				setup = func(l *lab.Lab) {
					for _, d := range l.Directors {
						out, err := runIn(d.NS, 10*time.Second, "iptables", "-w", "-t", "raw", "-A", "PREROUTING", "-i", d.UplinkIface,
							"-m", "statistic", "--mode", "random", "--probability", "0.01", "-j", "DROP")
						if err != nil {
							t.Fatalf("iptables in %s: %v\n%s", d.Name, err, out)
						}
					}
				}
			}
			wrkFailover(t, newPair(t, setup), c.name, conns, c.size)
		})
	}
}

// wrkFailover runs wrk (conns keep-alive connections, 2 threads, 8 s, a
// request times out after 3 s) from the client to the pair's VIP for size
// byte responses, fails over once every connection has its flow on A, and
// requires no socket error, no timeout, no non-2xx and no client reset.
func wrkFailover(t *testing.T, p *pair, name string, conns, size int) {
	t.Helper()
	url := httpURL(p.vip, "/bytes?n="+strconv.Itoa(size))
	done := make(chan string, 1)
	go func() {
		out, err := runIn(p.l.Client, 60*time.Second, "wrk", "-t2", "-c"+strconv.Itoa(conns), "-d8s", "--timeout", "3s", url)
		if err != nil {
			out += "\nwrk: " + err.Error()
		}
		done <- out
	}()
	// The event to fail over on: every wrk connection has its flow
	// on A. Nothing announces it: poll A's counters.
	deadline := time.Now().Add(5 * time.Second)
	for directorCounters(t, p.l.Directors[0]).FlowsCreated < conns {
		if time.Now().After(deadline) {
			t.Fatalf("wrk did not open %d connections through A in 5 s", conns)
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
	p.failover(t)
	r := parseWrk(t, <-done)
	b := directorCounters(t, p.l.Directors[1])
	t.Logf("wrk %s to %s through a failover: %d requests; socket errors connect %d, read %d, write %d, timeout %d; non-2xx %d; B: %d steered by cookie, %d by probe, %d recovered, %d adopted, %d client resets",
		name, url, r.requests, r.connectErr, r.readErr, r.writeErr, r.timeoutErr, r.non2xx,
		b.CookieConfirmed, b.ProbeSteers, b.Recovered, b.Adopted, b.ClientResets)
	if r.requests == 0 || r.connectErr+r.readErr+r.writeErr+r.timeoutErr+r.non2xx != 0 || b.ClientResets != 0 {
		t.Fatalf("want requests, no error, no timeout, no non-2xx, no client reset; wrk said:\n%s", r.out)
	}
}
