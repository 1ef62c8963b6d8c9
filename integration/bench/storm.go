package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"holdfast/lab"
)

// Storm is the recovery storm's result: -runs passes of the same storm
// with holdfast as shipped (the time and the RSS, medians), then one with
// GOGC=1, so that the Go heap stays within about 1% of the live heap and
// HeapAlloc measures what the flows keep alive (holdfast exposes no
// forced-GC figure: see memoryMethod).
type Storm struct {
	Connections int `json:"connections"` // asked for (-storm-conns)

	// Headlines: medians of the default passes, the heap of the GOGC=1
	// pass. AllDoneSeconds is null when a pass lost connections.
	AllDoneSeconds            *float64 `json:"all_done_seconds"`
	PlainHeapBytesPerFlow     *float64 `json:"plain_heap_bytes_per_flow"`
	RecoveredHeapBytesPerFlow *float64 `json:"recovered_heap_bytes_per_flow"`
	PlainRSSBytesPerFlow      *float64 `json:"plain_rss_bytes_per_flow"`
	RecoveredRSSBytesPerFlow  *float64 `json:"recovered_rss_bytes_per_flow"`

	TargetSeconds   float64 `json:"target_seconds"`
	TargetPlain     float64 `json:"target_plain_bytes_per_flow"`
	TargetRecovered float64 `json:"target_recovered_bytes_per_flow"`
	MetSeconds      *bool   `json:"target_seconds_met"`
	MetPlain        *bool   `json:"target_plain_met"`
	MetRecovered    *bool   `json:"target_recovered_met"`

	Passes       []*StormPass `json:"passes"`
	MemoryMethod string       `json:"memory_method"`
	Error        string       `json:"error,omitempty"`
}

// StormPass is one storm: open, fail over, one request each.
type StormPass struct {
	Name        string `json:"name"`
	GOGC        string `json:"gogc"`        // the directors' GOGC ("" = default, 100)
	Established int    `json:"established"` // opened, and made one request through A
	Completed   int    `json:"completed"`   // made one request through B after the failover
	Failed      int    `json:"failed"`      // did not (reset, timeout)
	// AllDoneSeconds is the time from the failover (A dead, routes on B)
	// until the last connection had its answer; null if any failed or did
	// not open.
	AllDoneSeconds *float64 `json:"all_done_seconds"`
	P50Seconds     float64  `json:"p50_seconds"`
	P99Seconds     float64  `json:"p99_seconds"`
	// BCPUSeconds is director B's CPU time from the failover to the last
	// answer.
	BCPUSeconds float64 `json:"b_cpu_seconds"`
	// BTUNDropped is what the kernel dropped on B's TUN during the storm
	// (tx: packets routed into the TUN that holdfast did not read in time).
	BTUNDropped *tunDrops  `json:"b_tun_dropped,omitempty"`
	Plain       FlowMemory `json:"memory_plain"`     // director A, before and after the connections opened
	Recovered   FlowMemory `json:"memory_recovered"` // director B, before and after the storm
	FirstErrors []string   `json:"first_errors,omitempty"`
	// Diagnostics, when some connection failed: the client's view of the
	// first few failed sockets (ss -tni), B's flows for them (holdfast
	// conns) and B's TUN counters.
	Diagnostics []string `json:"diagnostics,omitempty"`
}

// FlowMemory is a director's memory before and after it took on flows.
type FlowMemory struct {
	Before memSnap `json:"before"`
	After  memSnap `json:"after"`
	// Per flow: the growth divided by the growth of the flow table.
	HeapBytesPerFlow *float64 `json:"heap_bytes_per_flow"`
	RSSBytesPerFlow  *float64 `json:"rss_bytes_per_flow"`
}

func (m *FlowMemory) compute() {
	flows := m.After.Flows - m.Before.Flows
	if flows <= 0 {
		return
	}
	heap := float64(m.After.HeapAlloc-m.Before.HeapAlloc) / float64(flows)
	rss := float64(m.After.RSS-m.Before.RSS) / float64(flows)
	m.HeapBytesPerFlow, m.RSSBytesPerFlow = &heap, &rss
}

// memGOGC is the GOGC of the memory pass: the heap may exceed the live heap
// of the last collection by 1% (of live heap, stacks and globals) before
// the next one starts.
const memGOGC = "1"

const memoryMethod = "heap: growth of the director's Go runtime MemStats.HeapAlloc (go_memstats_heap_alloc_bytes, " +
	"served on --metrics-addr) divided by the growth of its flow table (admin API), in a pass where the directors " +
	"run with GOGC=" + memGOGC + " so HeapAlloc stays within ~1% of the live heap; holdfast exposes no forced-GC " +
	"figure. RSS: the same with VmRSS of /proc/PID/status, in the pass with the default GOGC. Plain: director A, " +
	"before the connections opened and after each made one request. Recovered: director B, before the failover " +
	"and after every connection was answered through it."

// storm runs the default passes, then the GOGC=1 pass.
func (b *bench) storm(ctx context.Context) (*Storm, error) {
	s := &Storm{Connections: b.cfg.stormConns, TargetSeconds: 2, TargetPlain: 256, TargetRecovered: 512, MemoryMethod: memoryMethod}
	defer s.setTargets()
	for i := range b.cfg.runs + 1 {
		p := &StormPass{Name: fmt.Sprintf("storm %d/%d", i+1, b.cfg.runs)}
		if i == b.cfg.runs {
			p.GOGC, p.Name = memGOGC, "storm GOGC="+memGOGC
		}
		s.Passes = append(s.Passes, p)
		if err := b.stormPass(ctx, p); err != nil {
			return s, err
		}
	}
	return s, nil
}

func (s *Storm) setTargets() {
	var secs, plainRSS, recRSS []float64
	lost := false
	for _, p := range s.Passes {
		if p.GOGC != "" {
			s.PlainHeapBytesPerFlow = p.Plain.HeapBytesPerFlow
			s.RecoveredHeapBytesPerFlow = p.Recovered.HeapBytesPerFlow
			continue
		}
		if p.AllDoneSeconds == nil {
			lost = true
		} else {
			secs = append(secs, *p.AllDoneSeconds)
		}
		if p.Plain.RSSBytesPerFlow != nil {
			plainRSS = append(plainRSS, *p.Plain.RSSBytesPerFlow)
		}
		if p.Recovered.RSSBytesPerFlow != nil {
			recRSS = append(recRSS, *p.Recovered.RSSBytesPerFlow)
		}
	}
	if !lost {
		s.AllDoneSeconds = medianPtr(secs)
	}
	s.PlainRSSBytesPerFlow, s.RecoveredRSSBytesPerFlow = medianPtr(plainRSS), medianPtr(recRSS)
	check := func(v *float64, limit float64) *bool {
		ok := v != nil && *v <= limit
		return &ok
	}
	s.MetSeconds = check(s.AllDoneSeconds, s.TargetSeconds)
	s.MetPlain = check(s.PlainHeapBytesPerFlow, s.TargetPlain)
	s.MetRecovered = check(s.RecoveredHeapBytesPerFlow, s.TargetRecovered)
}

// stormPass runs directors A and B with one HTTP service over the three
// reals, opens the connections through A (one request each), kills A
// (SIGKILL), moves the routes to B, and times one request on every
// connection.
func (b *bench) stormPass(ctx context.Context, s *StormPass) error {
	n, name := b.cfg.stormConns, s.Name
	var reals []string
	for _, r := range b.l.Reals {
		reals = append(reals, netip.AddrPortFrom(r.Addr, httpPort).String())
	}
	path, err := b.holdfastConfig("holdfast-storm.json", []serviceConfig{
		{Service: fmt.Sprintf("tcp:%s:%d", lab.VIP, httpPort), Scheduler: "rr", Reals: reals},
	})
	if err != nil {
		return err
	}
	if err := b.l.Flip(0); err != nil {
		return err
	}
	b.progress(name + ": starting holdfast on directors A and B")
	var procs [2]*lab.Proc
	var conns []*keptConn
	defer func() {
		// The client's sockets first, while B still carries them: it sees
		// their FINs.
		for _, c := range conns {
			c.c.Close()
		}
		if len(conns) > 0 {
			b.waitClosed(name)
		}
		for i, p := range procs {
			if p == nil {
				continue
			}
			select {
			case <-p.Done(): // A, killed
				continue
			default:
			}
			b.res.addCounters(name+" "+b.l.Directors[i].Label, b.holdfastStats(context.Background(), b.l.Directors[i]))
			if err := stopHoldfast(p); err != nil {
				b.res.Notes = append(b.res.Notes, name+": "+err.Error())
			}
		}
		b.l.Flip(0) //nolint:errcheck // the next phase flips again, or the lab goes
		b.dropStale()
	}()
	// The directors inherit this process's environment (ip netns exec
	// passes it on); this process's own GC read GOGC at its start.
	if s.GOGC != "" {
		os.Setenv("GOGC", s.GOGC)
		defer os.Unsetenv("GOGC")
	}
	for i, d := range b.l.Directors {
		if procs[i], err = b.startHoldfast(ctx, d, "--config", path, "--metrics-addr", metricsAddr); err != nil {
			return err
		}
	}
	a, bp := procs[0], procs[1]
	if err := b.checkPath(ctx, lab.VIP); err != nil { // the storm's one service
		return err
	}
	settle(ctx, 500*time.Millisecond)
	if s.Plain.Before, err = b.memory(ctx, b.l.Directors[0], a); err != nil {
		return err
	}

	b.progress(fmt.Sprintf("%s: opening %d keep-alive connections through A, one request each", name, n))
	var openErrs []string
	conns, openErrs = b.openConns(ctx, n)
	s.Established = len(conns)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if len(openErrs) > 0 {
		s.FirstErrors = append(s.FirstErrors, openErrs...)
		b.progress(fmt.Sprintf("%s: %d of %d connections failed to open; first: %s", name, n-len(conns), n, openErrs[0]))
	}
	if len(conns) == 0 {
		return errors.New("no connection opened through A")
	}
	settle(ctx, time.Second)
	if s.Plain.After, err = b.memory(ctx, b.l.Directors[0], a); err != nil {
		return err
	}
	s.Plain.compute()
	b.res.addCounters(name+" A before SIGKILL", b.holdfastStats(ctx, b.l.Directors[0]))
	if s.Recovered.Before, err = b.memory(ctx, b.l.Directors[1], bp); err != nil {
		return err
	}

	b.progress(name + ": SIGKILL A, routes to B, one request on every connection")
	if err := a.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	<-a.Done()
	// A killed director leaves its admin socket behind.
	os.Remove(lab.AdminSocket(b.l.Directors[0])) //nolint:errcheck // gone is fine
	if err := b.l.Flip(1); err != nil {
		return err
	}
	cpu0, err := procCPUTicks(bp.PID())
	if err != nil {
		return err
	}
	tun0, err := readTUNDrops(b.l.Directors[1])
	if err != nil {
		return err
	}
	done, failed, errs := requestAll(ctx, conns, 30*time.Second)
	if len(failed) > 0 {
		s.Diagnostics = b.diagnose(ctx, b.l.Directors[1], failed[:min(3, len(failed))])
	}
	cpu1, err := procCPUTicks(bp.PID())
	if err != nil {
		return err
	}
	tun1, err := readTUNDrops(b.l.Directors[1])
	if err != nil {
		return err
	}
	s.BTUNDropped = &tunDrops{TX: tun1.TX - tun0.TX, RX: tun1.RX - tun0.RX}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	s.BCPUSeconds = float64(cpu1-cpu0) / clockTicks
	s.Completed, s.Failed = len(done), len(errs)
	s.FirstErrors = append(s.FirstErrors, errs[:min(5, len(errs))]...)
	if len(done) > 0 {
		secs := make([]float64, len(done))
		for i, d := range done {
			secs[i] = d.Seconds()
		}
		slices.Sort(secs)
		s.P50Seconds = secs[len(secs)/2]
		s.P99Seconds = secs[min(len(secs)-1, len(secs)*99/100)]
		if len(errs) == 0 && len(conns) == n {
			last := secs[len(secs)-1]
			s.AllDoneSeconds = &last
		}
	}
	b.progress(fmt.Sprintf("%s: %d of %d connections answered through B, %d failed", name, len(done), len(conns), len(errs)))
	settle(ctx, 5*time.Second)
	if os.Getenv("BENCH_HEAP") != "" {
		out, err := exec.Command("ip", "netns", "exec", b.l.Directors[1].Name, "curl", "-s", "-o", os.Getenv("BENCH_HEAP")+name, "http://127.0.0.1:6061/debug/pprof/heap?gc=1").CombinedOutput()
		fmt.Fprintln(os.Stderr, "HEAP", string(out), err)
	}
	if s.Recovered.After, err = b.memory(ctx, b.l.Directors[1], bp); err != nil {
		return err
	}
	s.Recovered.compute()
	return nil
}

// waitClosed waits (up to 10 s) until the client's connections to the VIP
// have finished closing, so that no FIN of this pass reaches the next one.
func (b *bench) waitClosed(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dst := netip.AddrPortFrom(lab.VIP, httpPort).String()
	for {
		out, err := b.l.Client.Run(ctx, "ss", "-Htan", "exclude", "time-wait", "dst", dst)
		if err != nil || len(bytes.TrimSpace(out)) == 0 {
			return
		}
		if ctx.Err() != nil {
			b.res.Notes = append(b.res.Notes, fmt.Sprintf("%s: %d client connections still closing 10 s after close", name, bytes.Count(out, []byte("\n"))))
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// dropStale destroys (ss -K) what a storm leaves: the reals' ends of the
// connections that went through A, which nobody will ever close (the client
// closed its side through B, to other reals' sockets), those of B's
// recovery connections still closing, and the client's TIME_WAIT sockets. Left alone, a later connection from the same client
// port would meet them.
func (b *bench) dropStale() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, r := range b.l.Reals {
		for _, dst := range []string{lab.ClientAddr.String(), lab.RecoveryPrefix.String()} {
			r.Run(ctx, "ss", "-K", "-Htan", "dst", dst) //nolint:errcheck // best effort
		}
	}
	b.l.Client.Run(ctx, "ss", "-K", "-Htan", "state", "time-wait") //nolint:errcheck // best effort
}

func settle(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// openConns dials n connections from the client to the VIP (64 at a time)
// and makes one request on each. It returns those that succeeded and the
// first few errors. TCP keepalive is off: the connections must stay silent
// until the storm, or a probe would start a recovery early.
func (b *bench) openConns(ctx context.Context, n int) ([]*keptConn, []string) {
	dial := b.l.Client.Dialer(&net.Dialer{Timeout: 10 * time.Second, KeepAlive: -1})
	addr := netip.AddrPortFrom(lab.VIP, httpPort).String()
	var (
		mu    sync.Mutex
		conns []*keptConn
		errs  []string
		next  atomic.Int64
		wg    sync.WaitGroup
	)
	for range 64 {
		wg.Go(func() {
			for next.Add(1) <= int64(n) && ctx.Err() == nil {
				c, err := dial(ctx, "tcp4", addr)
				if err == nil {
					k := &keptConn{c: c, br: bufio.NewReaderSize(c, 512)}
					if err = k.get(10 * time.Second); err == nil {
						mu.Lock()
						conns = append(conns, k)
						mu.Unlock()
						continue
					}
					c.Close()
				}
				mu.Lock()
				if len(errs) < 5 {
					errs = append(errs, "open: "+err.Error())
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return conns, errs
}

// requestAll makes one request on every connection at once and returns the
// time each success took from the start, the connections that failed, and
// their errors.
func requestAll(ctx context.Context, conns []*keptConn, timeout time.Duration) ([]time.Duration, []*keptConn, []string) {
	var (
		mu     sync.Mutex
		done   []time.Duration
		failed []*keptConn
		errs   []string
		wg     sync.WaitGroup
	)
	deadline := time.Now().Add(timeout)
	for _, k := range conns {
		k.c.SetDeadline(deadline)
	}
	// Ctrl-C ends every request at once.
	stop := context.AfterFunc(ctx, func() {
		for _, k := range conns {
			k.c.SetDeadline(time.Now())
		}
	})
	defer stop()
	start := time.Now()
	for _, k := range conns {
		wg.Go(func() {
			err := k.get(0)
			d := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", k.c.LocalAddr(), err))
				failed = append(failed, k)
				return
			}
			done = append(done, d)
		})
	}
	wg.Wait()
	return done, failed, errs
}

// diagnose collects what the client and director d know of connections
// that failed.
func (b *bench) diagnose(ctx context.Context, d *lab.Director, failed []*keptConn) []string {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	var out []string
	flows, _ := runHost(ctx, b.cfg.holdfast, "conns", "--admin-socket", lab.AdminSocket(d))
	for _, k := range failed {
		local := k.c.LocalAddr().String()
		ss, _ := b.l.Client.Run(ctx, "ss", "-Htni", "src", local)
		out = append(out, "client ss "+local+": "+strings.Join(strings.Fields(string(ss)), " "))
		found := false
		for line := range strings.Lines(string(flows)) {
			if strings.Contains(line, local) {
				out = append(out, "director "+d.Label+" flow: "+strings.TrimSpace(line))
				found = true
			}
		}
		if !found {
			out = append(out, "director "+d.Label+": no flow for "+local)
		}
	}
	if link, err := d.IP("-s", "link", "show", "dev", lab.HealthTUN); err == nil {
		out = append(out, "director "+d.Label+" "+strings.Join(strings.Fields(link), " "))
	}
	return out
}

// tunDrops are the dropped counters of a director's TUN.
type tunDrops struct {
	TX uint64 `json:"tx"` // routed into the TUN, not read by holdfast in time
	RX uint64 `json:"rx"`
}

func readTUNDrops(d *lab.Director) (tunDrops, error) {
	out, err := d.IP("-s", "-j", "link", "show", "dev", lab.HealthTUN)
	if err != nil {
		return tunDrops{}, err
	}
	var links []struct {
		Stats64 struct {
			RX struct{ Dropped uint64 } `json:"rx"`
			TX struct{ Dropped uint64 } `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		return tunDrops{}, fmt.Errorf("director %s: ip -s -j link show %s: %q: %v", d.Label, lab.HealthTUN, out, err)
	}
	return tunDrops{TX: links[0].Stats64.TX.Dropped, RX: links[0].Stats64.RX.Dropped}, nil
}
