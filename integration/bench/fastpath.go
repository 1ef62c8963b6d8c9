package main

// -rows fastpath (not in the default set): the measurement behind
// docs/fastpath.md (issue 18). The stream and keep-alive rows, interleaved
// as measureAll does, on five directors: the kernel's NAT, HAProxy,
// holdfast as shipped (the TUN path), and holdfast with the prototype tc
// fast path (asking the FIB for every packet, or caching its answer per
// flow) of package fastpath carrying its established flows. The fast
// path is not part of holdfast yet: this program loads it into director
// A's namespace next to the running holdfast and fills its map from
// holdfast's admin API (`conns`) while a row runs, so what is measured is
// the data path's cost, not a control plane.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"holdfast/daemon/adminapi"
	"holdfast/fastpath"
	"holdfast/lab"
	"holdfast/nat"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// groupFastPath is the -rows name of this measurement.
const groupFastPath = "fastpath"

// fpPoll is how often the feeder asks holdfast for its flows during a row.
// Polling: the admin API has no stream of new flows, and a flow taken a
// few tens of milliseconds late only leaves those segments on the TUN.
const fpPoll = 100 * time.Millisecond

// fpRow is one row of the measurement.
type fpRow struct {
	key, name, unit string
	run             func(ctx context.Context, b *bench) (float64, []string, error)
}

var fpRows = []fpRow{
	{"tcp_1", "iperf3 TCP, 1 stream", "Gbit/s", iperfTCP(ipv4, 1)},
	{"tcp_4", "iperf3 TCP, 4 streams", "Gbit/s", iperfTCP(ipv4, 4)},
	{"http_keepalive", "wrk keep-alive", "req/s", wrkRun(ipv4, false)},
}

// fpDirector is one director of the measurement. setup returns the PID
// whose CPU time is charged to it (0: none) and wrap, which runs a row
// (the fast path's feeder runs beside it).
type fpDirector struct {
	key, label string
	setup      func(ctx context.Context, b *bench) (pid int, wrap func(ctx context.Context, run func(context.Context) (float64, []string, error)) (float64, []string, error), teardown func() error, err error)
}

func plainWrap(ctx context.Context, run func(context.Context) (float64, []string, error)) (float64, []string, error) {
	return run(ctx)
}

// plain turns one of bench.go's directors into an fpDirector.
func plain(d directorDef) fpDirector {
	return fpDirector{key: d.key, label: d.label, setup: func(ctx context.Context, b *bench) (int, func(context.Context, func(context.Context) (float64, []string, error)) (float64, []string, error), func() error, error) {
		pid, td, err := d.setup(ctx, b)
		return pid, plainWrap, td, err
	}}
}

var fpDirectors = []fpDirector{
	plain(directorDefs[dirHoldfast]),
	{key: "holdfast_tc", label: "holdfast + tc fast path", setup: setupHoldfastTC(false)},
	{key: "holdfast_tc_cached", label: "holdfast + tc fast path, FIB cached", setup: setupHoldfastTC(true)},
	plain(directorDefs[dirHAProxy]),
	plain(directorDefs[dirKernel]),
}

// FastPathResults is bench/fastpath.json.
type FastPathResults struct {
	Date       string            `json:"date"`
	Kernel     string            `json:"kernel"`
	Runs       int               `json:"runs"`
	RunSeconds float64           `json:"run_seconds"`
	Directors  []string          `json:"directors"`
	Rows       []*FastPathRow    `json:"rows"`
	LoadAvg    []string          `json:"loadavg"` // /proc/loadavg before each measurement
	Method     map[string]string `json:"method"`
}

// FastPathRow is one row: a cell per director.
type FastPathRow struct {
	Key   string                   `json:"key"`
	Name  string                   `json:"name"`
	Unit  string                   `json:"unit"`
	Cells map[string]*FastPathCell `json:"directors"`
	def   fpRow
}

// FastPathCell is one director's runs of a row.
type FastPathCell struct {
	Runs   []float64 `json:"runs"`
	Median *float64  `json:"median"`
	Min    *float64  `json:"min"`
	Max    *float64  `json:"max"`
	// Per run: the director process's CPU-seconds, the host's softirq
	// CPU-seconds (where the BPF program and the kernel's forwarding run),
	// the whole host's busy CPU-seconds, and the packets director A (or
	// B) received on its two links (socket buffers: a GSO packet counts
	// once).
	DirCPU  []float64 `json:"director_cpu_s"`
	SoftIRQ []float64 `json:"softirq_cpu_s"`
	HostCPU []float64 `json:"host_cpu_s"`
	Packets []uint64  `json:"packets"`
	// The fast path only: segments it carried (GSO segments counted) and
	// the counters of its program; the BPF program's own run time per
	// invocation (kernel BPF stats).
	Carried  []uint64            `json:"fastpath_carried_segments,omitempty"`
	Counters []map[string]uint64 `json:"fastpath_counters,omitempty"`
	NsPerRun []float64           `json:"bpf_ns_per_run,omitempty"`
	Notes    []string            `json:"notes,omitempty"`
	Errors   []string            `json:"errors,omitempty"`
}

// runFastPath measures the rows on the five directors, -runs times,
// interleaved (as measureAll), writes fastpath.json next to -out and
// prints a table.
func (b *bench) runFastPath(ctx context.Context, stdout io.Writer) error {
	if err := checkFastPathTools(); err != nil {
		return err
	}
	res := &FastPathResults{Date: time.Now().UTC().Format(time.RFC3339), Runs: b.cfg.runs, RunSeconds: b.cfg.duration.Seconds(),
		Method: map[string]string{
			"order":    "run by run, row by row, the five directors in a rotating order; each set up before and torn down after its measurement",
			"fastpath": "holdfast as shipped plus the tc program of package fastpath on director A's uplink and real-side veths (tcx ingress); the bench polls holdfast's conns every 100 ms during the row and adds each established plain IPv4 TCP flow to the map",
			"cpu":      "director_cpu_s: utime+stime of the director's process (none for the kernel's NAT); softirq_cpu_s: /proc/stat softirq of all CPUs (every namespace: the clients' and servers' too); host_cpu_s: all busy time",
		}}
	if u, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		res.Kernel = strings.TrimSpace(string(u))
	}
	for _, d := range fpDirectors {
		res.Directors = append(res.Directors, d.key)
	}
	for _, r := range fpRows {
		row := &FastPathRow{Key: r.key, Name: r.name, Unit: r.unit, Cells: map[string]*FastPathCell{}, def: r}
		for _, d := range fpDirectors {
			row.Cells[d.key] = &FastPathCell{}
		}
		res.Rows = append(res.Rows, row)
	}
	defer func() {
		res.finish()
		printFastPath(stdout, res)
		out := filepath.Join(filepath.Dir(b.cfg.out), "fastpath.json")
		if data, err := json.MarshalIndent(res, "", "  "); err == nil {
			if err := os.WriteFile(out, append(data, '\n'), 0o644); err == nil {
				b.progress("fast path results written to " + out)
			}
		}
	}()
	turn := 0
	for run := 1; run <= b.cfg.runs; run++ {
		for _, row := range res.Rows {
			turn++
			for k := range fpDirectors {
				d := fpDirectors[(k+turn)%len(fpDirectors)]
				if la, err := os.ReadFile("/proc/loadavg"); err == nil {
					res.LoadAvg = append(res.LoadAvg, fmt.Sprintf("%s run %d %s: %s", d.key, run, row.Key, strings.TrimSpace(string(la))))
				}
				b.progress(fmt.Sprintf("fastpath: %s: %s, run %d/%d", d.label, row.Name, run, b.cfg.runs))
				err := b.fpMeasureOnce(ctx, d, row, row.Cells[d.key])
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if err != nil {
					c := row.Cells[d.key]
					c.Errors = append(c.Errors, fmt.Sprintf("run %d: %v", run, err))
					b.progress(d.label + ": " + err.Error())
				}
			}
		}
	}
	return nil
}

func checkFastPathTools() error {
	var missing []string
	for _, t := range [][2]string{{"iperf3", "iperf3"}, {"wrk", "wrk"}, {"haproxy", "haproxy"}, {"iptables", "iptables"}} {
		if _, err := lookPath(t[0]); err != nil {
			missing = append(missing, t[0]+" ("+t[1]+")")
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("-rows fastpath: missing tools: %s", strings.Join(missing, ", "))
	}
	return nil
}

// fpMeasureOnce sets d up, runs row once into c, and tears d down.
func (b *bench) fpMeasureOnce(ctx context.Context, d fpDirector, row *FastPathRow, c *FastPathCell) (err error) {
	pid, wrap, teardown, err := d.setup(ctx, b)
	if err != nil {
		return err
	}
	defer func() {
		if terr := teardown(); terr != nil {
			err = errors.Join(err, fmt.Errorf("teardown: %w", terr))
		}
	}()
	if err := b.checkPath(ctx, lab.VIP); err != nil {
		return err
	}
	var extra fpExtra
	softBefore, err := softirqTicks()
	if err != nil {
		return err
	}
	s, err := b.measure(ctx, pid, func(ctx context.Context) (float64, []string, error) {
		return wrap(context.WithValue(ctx, fpExtraKey{}, &extra), func(ctx context.Context) (float64, []string, error) { return row.def.run(ctx, b) })
	})
	if err != nil {
		return err
	}
	softAfter, err := softirqTicks()
	if err != nil {
		return err
	}
	c.Runs = append(c.Runs, s.value)
	c.DirCPU = append(c.DirCPU, s.dirCPU)
	c.SoftIRQ = append(c.SoftIRQ, float64(softAfter-softBefore)/clockTicks)
	c.HostCPU = append(c.HostCPU, s.hostCPU)
	c.Packets = append(c.Packets, s.packets)
	c.Notes = append(c.Notes, s.notes...)
	if extra.counters != nil {
		c.Carried = append(c.Carried, extra.carried)
		c.Counters = append(c.Counters, extra.counters)
		c.NsPerRun = append(c.NsPerRun, extra.nsPerRun)
		c.Notes = append(c.Notes, extra.notes...)
	}
	return nil
}

// fpExtra is what the fast path's wrap reports of one run.
type fpExtra struct {
	carried  uint64
	counters map[string]uint64
	nsPerRun float64
	notes    []string
}

type fpExtraKey struct{}

// softirqTicks is the softirq time of all CPUs (/proc/stat).
func softirqTicks() (int64, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: %q", line)
	}
	return strconv.ParseInt(f[7], 10, 64)
}

// setupHoldfastTC is holdfast as shipped on director A plus the tc fast
// path: the program loaded and attached (tcx ingress) to A's uplink and
// real-side veths inside A's namespace. Its wrap feeds the map with
// holdfast's established flows while the row runs.
func setupHoldfastTC(cacheFIB bool) func(ctx context.Context, b *bench) (int, func(context.Context, func(context.Context) (float64, []string, error)) (float64, []string, error), func() error, error) {
	return func(ctx context.Context, b *bench) (int, func(context.Context, func(context.Context) (float64, []string, error)) (float64, []string, error), func() error, error) {
		return b.holdfastTC(ctx, cacheFIB)
	}
}

func (b *bench) holdfastTC(ctx context.Context, cacheFIB bool) (int, func(context.Context, func(context.Context) (float64, []string, error)) (float64, []string, error), func() error, error) {
	pid, stopHF, err := setupHoldfast(ctx, b)
	if err != nil {
		return 0, nil, nil, err
	}
	prog, err := fastpath.Load(fastpath.Config{CookieBits: nat.DefaultCookieBits, CacheFIB: cacheFIB})
	if err != nil {
		return 0, nil, nil, errors.Join(err, stopHF())
	}
	var links []link.Link
	teardown := func() error {
		var errs []error
		for _, l := range links {
			errs = append(errs, l.Close())
		}
		errs = append(errs, prog.Close(), stopHF())
		return errors.Join(errs...)
	}
	err = b.dirA.Do(func() error {
		for _, ifname := range []string{b.dirA.UplinkIface, b.dirA.RSIface} {
			l, err := prog.Attach(ifname)
			if err != nil {
				return err
			}
			links = append(links, l)
		}
		return nil
	})
	if err != nil {
		return 0, nil, nil, errors.Join(err, teardown())
	}
	wrap := func(ctx context.Context, run func(context.Context) (float64, []string, error)) (float64, []string, error) {
		extra, _ := ctx.Value(fpExtraKey{}).(*fpExtra)
		bpfStats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
		if err != nil {
			return 0, nil, fmt.Errorf("enable BPF run-time stats: %w", err)
		}
		defer bpfStats.Close()
		statsBefore, err := prog.BPFProgram().Stats()
		if err != nil {
			return 0, nil, err
		}
		feedCtx, stopFeed := context.WithCancel(ctx)
		f := &feeder{prog: prog, socket: lab.AdminSocket(b.dirA), added: map[netip.AddrPort]fastpath.Flow{}}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); f.run(feedCtx) }()
		v, notes, err := run(ctx)
		stopFeed()
		wg.Wait()
		if err != nil {
			return v, notes, err
		}
		statsAfter, err := prog.BPFProgram().Stats()
		if err != nil {
			return 0, nil, err
		}
		if extra != nil {
			if n := statsAfter.RunCount - statsBefore.RunCount; n > 0 {
				extra.nsPerRun = float64(statsAfter.Runtime-statsBefore.Runtime) / float64(n)
			}
			if extra.counters, err = prog.Counters(); err != nil {
				return 0, nil, err
			}
			for _, fl := range f.added {
				if n, err := prog.Carried(fl); err == nil {
					extra.carried += n
				}
			}
			extra.notes = append(extra.notes, fmt.Sprintf("fast path: %d flows added, first after %v; %s", len(f.added), f.first, f.lastErr))
		}
		return v, notes, nil
	}
	return pid, wrap, teardown, nil
}

// feeder polls holdfast's flows and adds the established plain IPv4 TCP
// ones to the fast path's map, each once.
type feeder struct {
	prog    *fastpath.Program
	socket  string
	added   map[netip.AddrPort]fastpath.Flow
	first   time.Duration
	lastErr string
}

func (f *feeder) run(ctx context.Context) {
	c := adminapi.NewClient(f.socket)
	defer c.Close()
	start := time.Now()
	ids := map[netip.AddrPort]uint16{} // real -> cookie id
	for {
		if len(ids) == 0 {
			if svcs, err := c.Services(ctx); err == nil {
				for _, s := range svcs {
					for _, r := range s.Reals {
						ids[r.Addr] = r.CookieID
					}
				}
			}
		}
		conns, err := c.Conns(ctx)
		if err != nil && ctx.Err() == nil {
			f.lastErr = "conns: " + err.Error()
		}
		for _, cn := range conns {
			if cn.Proto != "tcp" || cn.Kind != "plain" || cn.State != "ESTABLISHED" {
				continue
			}
			cl, err1 := netip.ParseAddrPort(cn.Client)
			vip, err2 := netip.ParseAddrPort(cn.VIP)
			rl, err3 := netip.ParseAddrPort(cn.Real)
			if err1 != nil || err2 != nil || err3 != nil || !cl.Addr().Is4() {
				continue
			}
			if _, ok := f.added[cl]; ok {
				continue
			}
			// The TUN path wrote cookies until now, and this program
			// cannot read holdfast's cookie state: echoes of them are
			// rounded up, as for a flow that moved here (nat/cookie.go).
			fl := fastpath.Flow{Client: cl, VIP: vip, Real: rl, CookieID: ids[rl], Cookie: fastpath.CookieState{Flags: fastpath.CookieRoundUp}}
			if err := f.prog.Add(fl); err != nil {
				f.lastErr = "add: " + err.Error()
				continue
			}
			if len(f.added) == 0 {
				f.first = time.Since(start).Round(time.Millisecond)
			}
			f.added[cl] = fl
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(fpPoll):
		}
	}
}

func (r *FastPathResults) finish() {
	for _, row := range r.Rows {
		for _, c := range row.Cells {
			if len(c.Runs) > 0 {
				m := median(c.Runs)
				lo, hi := c.Runs[0], c.Runs[0]
				for _, v := range c.Runs {
					lo, hi = min(lo, v), max(hi, v)
				}
				c.Median, c.Min, c.Max = &m, &lo, &hi
			}
		}
	}
}

// printFastPath prints the table of docs/fastpath.md: medians with the
// runs' spread, the ratios to the kernel's NAT and HAProxy, and the CPU
// per packet.
func printFastPath(w io.Writer, r *FastPathResults) {
	fmt.Fprintf(w, "\nfast path prototype (issue 18): median of %d runs of %.0f s [min-max]\n", r.Runs, r.RunSeconds)
	for _, row := range r.Rows {
		fmt.Fprintf(w, "%-22s", row.Name)
		for _, d := range r.Directors {
			c := row.Cells[d]
			if c.Median == nil {
				fmt.Fprintf(w, " | %s: -", d)
				continue
			}
			fmt.Fprintf(w, " | %s %s [%s-%s]", d, num(*c.Median), num(*c.Min), num(*c.Max))
		}
		fmt.Fprintf(w, " %s\n", row.Unit)
		ratio := func(a, b string) string {
			ca, cb := row.Cells[a], row.Cells[b]
			if ca.Median == nil || cb.Median == nil || *cb.Median == 0 {
				return "-"
			}
			return fmt.Sprintf("%.2f", *ca.Median / *cb.Median)
		}
		fmt.Fprintf(w, "%-22s   tc/kernel %s  tc/haproxy %s  tun/kernel %s  tun/haproxy %s\n", "",
			ratio("holdfast_tc", "kernel_nat"), ratio("holdfast_tc", "haproxy"), ratio("holdfast", "kernel_nat"), ratio("holdfast", "haproxy"))
		fmt.Fprintf(w, "%-22s   cached/kernel %s  cached/haproxy %s\n", "", ratio("holdfast_tc_cached", "kernel_nat"), ratio("holdfast_tc_cached", "haproxy"))
		for _, d := range r.Directors {
			c := row.Cells[d]
			var dir, soft, host []float64
			for i, p := range c.Packets {
				if p == 0 {
					continue
				}
				us := 1e6 / float64(p)
				if c.DirCPU[i] >= 0 {
					dir = append(dir, c.DirCPU[i]*us)
				}
				soft = append(soft, c.SoftIRQ[i]*us)
				host = append(host, c.HostCPU[i]*us)
			}
			line := fmt.Sprintf("%-22s   %-12s CPU us/pkt: director %s softirq %s host %s", "", d, medStr(dir), medStr(soft), medStr(host))
			if len(c.NsPerRun) > 0 {
				var carried, pk uint64
				for i := range c.Carried {
					carried += c.Carried[i]
					pk += c.Packets[i]
				}
				line += fmt.Sprintf("  bpf %.0f ns/run, carried %d segments (links received %d skbs)", median(c.NsPerRun), carried, pk)
			}
			fmt.Fprintln(w, line)
			for _, e := range c.Errors {
				fmt.Fprintf(w, "%-22s   %-12s error: %s\n", "", d, e)
			}
		}
	}
}

// num prints a row's value: whole numbers for rates, three digits for
// Gbit/s.
func num(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.3g", v)
}

func medStr(v []float64) string {
	if len(v) == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", median(v))
}
