package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"holdfast/lab"
)

// iperfPort is the port of the iperf3 services: iperf3's own default.
const iperfPort = 5201

// iperfEnd is the part of iperf3's -J output TestThreeServices reads.
type iperfEnd struct {
	Error string `json:"error"`
	End   struct {
		SumReceived struct {
			Bytes         int64   `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
		Sum struct { // UDP: the sender's packets, the receiver's loss
			Packets     int64 `json:"packets"`
			LostPackets int64 `json:"lost_packets"`
		} `json:"sum"`
	} `json:"end"`
}

// iperf3 runs an iperf3 client in the lab's client namespace against
// VIP:iperfPort and returns its -J summary.
func iperf3(ctx context.Context, l *lab.Lab, args ...string) (iperfEnd, error) {
	var res iperfEnd
	argv := append([]string{"iperf3", "-c", lab.VIP.String(), "-p", strconv.Itoa(iperfPort), "-J", "--connect-timeout", "3000"}, args...)
	out, runErr := l.Client.Run(ctx, argv...)
	if err := json.Unmarshal(out, &res); err != nil {
		return res, errors.Join(runErr, fmt.Errorf("iperf3 %s output: %w: %.300s", strings.Join(args, " "), err, out))
	}
	if res.Error != "" {
		return res, fmt.Errorf("iperf3 %s: %s", strings.Join(args, " "), res.Error)
	}
	return res, runErr
}

// TestThreeServices: one director given three services on the command line,
// ipvsadm style (each --service owns the flags after it): tcp:VIP:5201 and
// udp:VIP:5201 on rs1 alone (iperf3's TCP control connection and its UDP
// data need the one server) and tcp:VIP:80 over the three reals with rr.
// HTTP requests run all along while iperf3 runs a TCP test and then a UDP
// test (an iperf3 server runs one test at a time; during the UDP test the
// two 5201 services carry its control connection and its datagrams at
// once). Every request succeeds and spreads over the three reals, the TCP
// test moves data, the UDP test loses under 5 % of its datagrams.
func TestThreeServices(t *testing.T) {
	l := startLab(t, lab.Options{Reals: 3})
	d, rs1 := l.Directors[0], l.Reals[0]
	// iperf3 prints its banner once it listens (--forceflush: at once,
	// through the pipe).
	srv, err := rs1.Start("iperf3-server", "iperf3", "-s", "--forceflush", "-B", rs1.Addr.String(), "-p", strconv.Itoa(iperfPort))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err = srv.WaitForLine(ctx, func(l lab.Line) bool { return strings.Contains(l.Text, "Server listening") })
	cancel()
	if err != nil {
		t.Fatalf("iperf3 server on rs1 not listening: %v\n%s", err, srv.Stderr())
	}

	iperfReal := netip.AddrPortFrom(rs1.Addr, iperfPort).String()
	args := []string{
		"--service", "tcp:" + netip.AddrPortFrom(lab.VIP, iperfPort).String(), "--real", iperfReal,
		"--service=udp:" + netip.AddrPortFrom(lab.VIP, iperfPort).String(), "--real=" + iperfReal,
		"--service", "tcp:" + vipHTTP.String(), "--scheduler", "rr",
	}
	args = append(args, realFlags(l, lab.DefaultHTTPPort)...)
	StartDirector(t, d.NS, directorArgs(d, args...)...)

	out, err := ctl(t, l, "service", "list")
	if err != nil {
		t.Fatalf("service list: %v\n%s", err, out)
	}
	for _, s := range []string{"tcp:198.18.100.1:5201", "udp:198.18.100.1:5201", "tcp:198.18.100.1:80"} {
		if !strings.Contains(out, s) {
			t.Errorf("service list has no %s:\n%s", s, out)
		}
	}

	// HTTP, one connection per request, until iperf3 is done.
	c := newVIPClient(t, l.Client, false, netip.Addr{})
	var (
		stop   atomic.Bool
		wg     sync.WaitGroup
		mu     sync.Mutex
		counts = map[string]int{}
		errs   []error
	)
	for range 4 {
		wg.Go(func() {
			for !stop.Load() {
				real, err := c.getReal(httpURL(vipHTTP, "/"))
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					counts[real]++
				}
				mu.Unlock()
			}
		})
	}
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tcp, tcpErr := iperf3(ctx, l, "-t", "2")
	udp, udpErr := iperf3(ctx, l, "-u", "-b", "10M", "-t", "2")
	stop.Store(true)
	wg.Wait()

	if tcpErr != nil {
		t.Errorf("iperf3 TCP: %v", tcpErr)
	} else if tcp.End.SumReceived.Bytes == 0 {
		t.Errorf("iperf3 TCP received nothing")
	}
	if udpErr != nil {
		t.Errorf("iperf3 UDP: %v", udpErr)
	} else if s := udp.End.Sum; s.Packets == 0 || s.LostPackets*20 > s.Packets {
		t.Errorf("iperf3 UDP: %d of %d datagrams lost, want under 5 %%", s.LostPackets, s.Packets)
	}
	total := 0
	for _, n := range counts {
		total += n
	}
	if len(errs) > 0 {
		t.Errorf("%d of %d HTTP requests failed; first: %v", len(errs), total+len(errs), errs[0])
	}
	if len(counts) != 3 {
		t.Errorf("HTTP requests per real %v, want all three reals", counts)
	}
	t.Logf("iperf3 TCP %.2f Gbit/s; iperf3 UDP %d datagrams, %d lost; HTTP %d requests %v",
		tcp.End.SumReceived.BitsPerSecond/1e9, udp.End.Sum.Packets, udp.End.Sum.LostPackets, total, counts)
}
