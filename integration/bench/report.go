package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Results is bench/results.json, and what the table shows.
type Results struct {
	Date        string                     `json:"date"`
	Kernel      string                     `json:"kernel"`
	Cores       int                        `json:"cores"`
	CPUModel    string                     `json:"cpu_model,omitempty"`
	GoVersion   string                     `json:"go_version"`
	Commit      string                     `json:"holdfast_commit,omitempty"`
	Runs        int                        `json:"runs"`
	TUNQueueLen int                        `json:"experiment_tun_txqueuelen,omitempty"` // -tun-txqueuelen: not holdfast as shipped
	RunSeconds  float64                    `json:"run_seconds"`
	HTTPBackend string                     `json:"http_backend,omitempty"`
	Directors   []string                   `json:"directors"` // measured, in the order they ran
	Rows        []*Row                     `json:"rows"`
	Storm       *Storm                     `json:"storm,omitempty"`
	Cookie      *Cookie                    `json:"cookie,omitempty"`
	Counters    map[string]json.RawMessage `json:"holdfast_counters,omitempty"` // `holdfast stats --json` at the end of each phase
	Method      map[string]string          `json:"method"`
	Notes       []string                   `json:"notes,omitempty"`
}

// Row is one throughput row: a cell per director, the ratios, the target.
type Row struct {
	Key         string           `json:"key"`
	Name        string           `json:"name"`
	Unit        string           `json:"unit"`
	Cells       map[string]*Cell `json:"directors"`
	OverKernel  *float64         `json:"holdfast_over_kernel_nat"`
	OverHAProxy *float64         `json:"holdfast_over_haproxy"`
	Target      string           `json:"target,omitempty"`
	Met         *bool            `json:"target_met"`
	def         rowDef
}

// Cell is one row for one director: its runs and their median.
type Cell struct {
	Median *float64  `json:"median"`
	Runs   []float64 `json:"runs"`
	// Director CPU-seconds per million packets (null: n/a, the kernel's
	// NAT has no process), and the whole host's (client, server and
	// director together).
	DirectorCPUPerMpkt *float64 `json:"director_cpu_s_per_mpkt"`
	HostCPUPerMpkt     *float64 `json:"host_cpu_s_per_mpkt"`
	MpktPerRun         *float64 `json:"mpkt_per_run"`
	// StealMax is the largest share of CPU time the hypervisor took during
	// a run (/proc/stat steal): a noisy neighbour, not the director.
	StealMax float64  `json:"steal_max"`
	Notes    []string `json:"notes,omitempty"`
	Errors   []string `json:"errors,omitempty"` // runs that failed
	Error    string   `json:"error,omitempty"`  // the director could not be set up
	NA       string   `json:"n_a,omitempty"`

	dirCPU, hostCPU, mpkt []float64
}

func newResults(cfg config) *Results {
	r := &Results{
		Date:        time.Now().UTC().Format(time.RFC3339),
		Cores:       runtime.NumCPU(),
		GoVersion:   runtime.Version(),
		Runs:        cfg.runs,
		TUNQueueLen: cfg.txqueuelen,
		RunSeconds:  cfg.duration.Seconds(),
		Counters:    map[string]json.RawMessage{},
		Method: map[string]string{
			"topology":      "client ns -- router ns -- director A or B ns (identical links) -- switch -- rs1 (throughput rows: every VIP port to rs1 only); rs2, rs3 join for the storm; addresses in 198.18.0.0/15, and with the ipv6 rows their twins in 2001:2::/48 (lab.Mirror6: the lab is dual-stack and every director carries both VIPs in every run)",
			"order":         "interleaved: for each run, for each row, each director in turn (the order rotating), set up for that one measurement and torn down after; the storm and the cookie group first",
			"kernel_nat":    "iptables -t nat PREROUTING DNAT to rs1 in director B's namespace (lab.Flip(1)), conntrack, no SNAT (the reals route back through B); on B because its conntrack hooks stay registered in that namespace after the rules go; for VIP6 an nftables ip6 nat table (prerouting, dnat to rs1's IPv6 address), net.ipv6.conf.all.forwarding=1",
			"haproxy":       "haproxy -db in TCP mode on director A, the VIP (and VIP6, bind [VIP6]:port) on lo for its run only",
			"holdfast":      "holdfast run with lab.HoldfastArgs (--setup-routes) on director A, the build under test",
			"tcp":           "iperf3 -c VIP -t D -O 1 [-P 4]: receiver bits/s, the first second omitted",
			"udp_64":        "iperf3 -u -l 64 -b 0 -t D: (packets sent - lost) / seconds, i.e. packets received by the server",
			"http":          "wrk -t CORES -c64 -d D [-H 'Connection: close'] against nginx on rs1 (return 200)",
			"ipv6":          "tcp6_1 and http6_keepalive: the tcp_1 and http_keepalive runs to VIP6 (2001:2:0:100::1) and rs1's IPv6 address (nginx and iperf3 -B listen there), interleaved with the IPv4 rows; no targets, the ratios only",
			"packets":       "received by the measured director's two veths (uplink and real-server side) during the run: one per packet forwarded in either direction; a GSO packet counts once",
			"director_cpu":  "utime+stime of the director process (/proc/PID/stat) during the run; n/a for the kernel's NAT (softirq time in whatever context the packets arrive, not separable from the client's and server's)",
			"host_cpu":      "busy time of all CPUs (/proc/stat: user, nice, system, irq, softirq) during the run: client, server and director together",
			"steal":         "steal_max: the largest share of CPU time /proc/stat counts as stolen by the hypervisor during one run of the cell",
			"median":        "median of the runs that succeeded; ratios are of medians",
			"storm":         "directors A and B run holdfast with tcp:VIP:80 over rs1..rs3 (rr, default recovery settings); N keep-alive connections (TCP keepalive off) make one request through A; SIGKILL A, lab.Flip(1); then one request on every connection at once. -runs passes as shipped, then one pass with GOGC=1 for the heap",
			"storm_seconds": "from the failover (A dead, routes on B) until the last connection had its answer; median of the default passes",
			"storm_memory":  memoryMethod,
			"cookie":        cookieMethod,
		},
	}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		r.Kernel = cstr(u.Release[:])
	}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(data)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				r.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if root, err := moduleRoot(); err == nil {
		if out, err := exec.Command("git", "-C", root, "describe", "--always", "--dirty").Output(); err == nil {
			r.Commit = strings.TrimSpace(string(out))
		}
	}
	return r
}

func cstr(b []int8) string {
	var s strings.Builder
	for _, c := range b {
		if c == 0 {
			break
		}
		s.WriteByte(byte(c))
	}
	return s.String()
}

func newRow(def rowDef) *Row {
	r := &Row{Key: def.key, Name: def.name, Unit: def.unit, Cells: map[string]*Cell{}, def: def}
	if def.fam == ipv6 {
		return r // the ratios only (rowDefs)
	}
	var t []string
	if def.minKernel > 0 {
		t = append(t, fmt.Sprintf(">= %.2fx kernel NAT", def.minKernel))
	}
	if def.haproxy {
		t = append(t, "> HAProxy")
	}
	r.Target = strings.Join(t, ", ")
	return r
}

func (r *Row) cell(director string) *Cell {
	c := r.Cells[director]
	if c == nil {
		c = &Cell{}
		r.Cells[director] = c
	}
	return c
}

func (c *Cell) add(s sample, err error) {
	run := len(c.Runs) + len(c.Errors) + 1
	if err != nil {
		c.Errors = append(c.Errors, fmt.Sprintf("run %d: %v", run, err))
		return
	}
	c.Runs = append(c.Runs, s.value)
	c.StealMax = max(c.StealMax, s.steal)
	for _, n := range s.notes {
		c.Notes = append(c.Notes, fmt.Sprintf("run %d: %s", run, n))
	}
	mpkt := float64(s.packets) / 1e6
	c.mpkt = append(c.mpkt, mpkt)
	if mpkt > 0 {
		c.hostCPU = append(c.hostCPU, s.hostCPU/mpkt)
		if s.dirCPU >= 0 {
			c.dirCPU = append(c.dirCPU, s.dirCPU/mpkt)
		}
	}
}

func medianPtr(v []float64) *float64 {
	if len(v) == 0 {
		return nil
	}
	m := median(v)
	return &m
}

// finish computes the medians, ratios and targets.
func (r *Results) finish() {
	for _, row := range r.Rows {
		for _, c := range row.Cells {
			c.Median = medianPtr(c.Runs)
			c.DirectorCPUPerMpkt = medianPtr(c.dirCPU)
			c.HostCPUPerMpkt = medianPtr(c.hostCPU)
			c.MpktPerRun = medianPtr(c.mpkt)
		}
		hf := row.Cells["holdfast"]
		ratio := func(other string) *float64 {
			o := row.Cells[other]
			if hf == nil || o == nil || hf.Median == nil || o.Median == nil || *o.Median == 0 {
				return nil
			}
			v := *hf.Median / *o.Median
			return &v
		}
		row.OverKernel, row.OverHAProxy = ratio("kernel_nat"), ratio("haproxy")
		if row.Target == "" {
			continue
		}
		met, known := true, true
		if row.def.minKernel > 0 {
			if row.OverKernel == nil {
				known = false
			} else {
				met = met && *row.OverKernel >= row.def.minKernel
			}
		}
		if row.def.haproxy {
			if row.OverHAProxy == nil {
				known = false
			} else {
				met = met && *row.OverHAProxy > 1
			}
		}
		if known || !met {
			row.Met = &met
		}
	}
}

func (r *Results) addCounters(phase string, raw json.RawMessage) {
	r.Counters[phase] = raw
}

func writeResults(path string, r *Results) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// --- the table ---

var tableDirectors = []struct{ key, label string }{
	{"kernel_nat", "kernel NAT"}, {"haproxy", "HAProxy"}, {"holdfast", "holdfast"},
}

func printTable(w io.Writer, r *Results) {
	fmt.Fprintf(w, "\nholdfast bench  %s  %d cores (%s)  Linux %s  %s\n", r.Date, r.Cores, r.CPUModel, r.Kernel, r.Commit)
	fmt.Fprintf(w, "median of %d runs of %gs; HTTP backend %s\n", r.Runs, r.RunSeconds, r.HTTPBackend)
	if r.TUNQueueLen > 0 {
		fmt.Fprintf(w, "EXPERIMENT: holdfast's TUN txqueuelen set to %d by the bench (-tun-txqueuelen), not holdfast as shipped\n", r.TUNQueueLen)
	}
	fmt.Fprintln(w)
	if len(r.Rows) > 0 {
		fmt.Fprintf(w, "%-26s %-7s %11s %11s %11s %10s %11s  %s\n", "", "", "kernel NAT", "HAProxy", "holdfast", "hf/kernel", "hf/HAProxy", "target")
		for _, row := range r.Rows {
			fmt.Fprintf(w, "%-26s %-7s", row.Name, row.Unit)
			for _, d := range tableDirectors {
				fmt.Fprintf(w, " %11s", cellText(row.Cells[d.key], row.Unit))
			}
			fmt.Fprintf(w, " %10s %11s  %s%s\n", ratioText(row.OverKernel), ratioText(row.OverHAProxy), row.Target, metText(row.Met))
		}
		fmt.Fprintf(w, "\ndirector CPU-s per million packets (whole host in brackets)\n")
		for _, row := range r.Rows {
			fmt.Fprintf(w, "%-34s", row.Name)
			for _, d := range tableDirectors {
				fmt.Fprintf(w, " %19s", cpuText(row.Cells[d.key]))
			}
			fmt.Fprintln(w)
		}
	}
	if s := r.Storm; s != nil {
		fmt.Fprintf(w, "\nrecovery storm (holdfast): %d idle keep-alive connections, SIGKILL A, routes to B\n", s.Connections)
		if s.Error != "" {
			fmt.Fprintf(w, "  failed: %s\n", s.Error)
		}
		for _, p := range s.Passes {
			gogc := p.Name
			tun := ""
			if p.BTUNDropped != nil && p.BTUNDropped.TX > 0 {
				tun = fmt.Sprintf("; B's TUN dropped %d", p.BTUNDropped.TX)
			}
			fmt.Fprintf(w, "  %-13s every connection answered via B in %s (p50 %.2f s, p99 %.2f s; %d opened, %d answered, %d failed; B used %.2f CPU-s%s)\n",
				gogc, secondsText(p.AllDoneSeconds), p.P50Seconds, p.P99Seconds, p.Established, p.Completed, p.Failed, p.BCPUSeconds, tun)
			fmt.Fprintf(w, "  %-13s per plain flow %s; per recovered flow %s\n", "", memText(p.Plain), memText(p.Recovered))
			for _, e := range p.FirstErrors {
				fmt.Fprintf(w, "  %-13s error: %s\n", "", e)
			}
		}
		fmt.Fprintf(w, "  all recovered in (median) %10s   target <= %g s%s\n", secondsText(s.AllDoneSeconds), s.TargetSeconds, metText(s.MetSeconds))
		fmt.Fprintf(w, "  memory per plain flow     %10s   target <= %g B%s   (RSS %s)\n", bytesText(s.PlainHeapBytesPerFlow), s.TargetPlain, metText(s.MetPlain), bytesText(s.PlainRSSBytesPerFlow))
		fmt.Fprintf(w, "  memory per recovered flow %10s   target <= %g B%s   (RSS %s)\n", bytesText(s.RecoveredHeapBytesPerFlow), s.TargetRecovered, metText(s.MetRecovered), bytesText(s.RecoveredRSSBytesPerFlow))
		fmt.Fprintf(w, "  (heap: Go HeapAlloc growth per flow with GOGC=%s, i.e. live heap within ~1%%; RSS: median VmRSS growth per flow, default GOGC)\n", memGOGC)
	}
	if r.Cookie != nil {
		printCookie(w, r.Cookie)
	}
	notes := r.noteLines()
	if len(notes) > 0 {
		fmt.Fprintf(w, "\nnotes\n")
		for _, n := range notes {
			fmt.Fprintf(w, "  %s\n", n)
		}
	}
	fmt.Fprintln(w)
}

func cellText(c *Cell, unit string) string {
	switch {
	case c == nil:
		return "-"
	case c.NA != "":
		return "n/a"
	case c.Median == nil:
		return "failed"
	case unit == "Gbit/s":
		return fmt.Sprintf("%.2f", *c.Median)
	default:
		return fmt.Sprintf("%.0f", *c.Median)
	}
}

func ratioText(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.2fx", *v)
}

func metText(m *bool) string {
	switch {
	case m == nil:
		return ""
	case *m:
		return ": met"
	default:
		return ": MISSED"
	}
}

func cpuText(c *Cell) string {
	if c == nil || c.NA != "" || c.HostCPUPerMpkt == nil {
		return "-"
	}
	dir := "n/a"
	if c.DirectorCPUPerMpkt != nil {
		dir = fmt.Sprintf("%.2f", *c.DirectorCPUPerMpkt)
	}
	return fmt.Sprintf("%s (%.2f)", dir, *c.HostCPUPerMpkt)
}

func memText(m FlowMemory) string {
	if m.HeapBytesPerFlow == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.0f B heap, %.0f B RSS (%d flows, %d GCs)", *m.HeapBytesPerFlow, *m.RSSBytesPerFlow,
		m.After.Flows-m.Before.Flows, m.After.GCs-m.Before.GCs)
}

func secondsText(v *float64) string {
	if v == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.2f s", *v)
}

func bytesText(v *float64) string {
	if v == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.0f B", *v)
}

// noteLines are the failed runs, the peers' error counts and the holdfast
// counters that say something went wrong (drops, write errors, failed
// recoveries).
func (r *Results) noteLines() []string {
	var out []string
	for _, row := range r.Rows {
		for _, d := range tableDirectors {
			c := row.Cells[d.key]
			if c == nil {
				continue
			}
			prefix := d.label + ", " + row.Name + ": "
			if c.Error != "" {
				out = append(out, prefix+firstLine(c.Error))
			}
			for _, e := range c.Errors {
				out = append(out, prefix+firstLine(e))
			}
			if c.StealMax >= 0.02 {
				out = append(out, fmt.Sprintf("%s%.0f%% of the CPU time stolen by the hypervisor in the worst run", prefix, 100*c.StealMax))
			}
			for _, n := range c.Notes {
				if !strings.Contains(n, "errors: connect 0, read 0, write 0, timeout 0") {
					out = append(out, prefix+n)
				}
			}
		}
	}
	phases := keys(r.Counters)
	for _, p := range phases {
		if s := counterAnomalies(r.Counters[p]); s != "" {
			out = append(out, "holdfast counters ("+p+"): "+s)
		}
	}
	out = append(out, r.Notes...)
	return out
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// counterAnomalies lists the non-zero counters of `holdfast stats --json` output
// that count trouble.
func counterAnomalies(raw json.RawMessage) string {
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return s
		}
		return "unreadable: " + string(raw)
	}
	var parts []string
	// The keys are the Prometheus names without "holdfast_" (the /stats
	// contract).
	for _, k := range []string{"drops_total", "recoveries_failed_total"} {
		sub, _ := m[k].(map[string]any)
		var nz []string
		for _, name := range keys(sub) {
			if v, _ := sub[name].(float64); v != 0 {
				nz = append(nz, fmt.Sprintf("%s %.0f", name, v))
			}
		}
		if len(nz) > 0 {
			parts = append(parts, k+" {"+strings.Join(nz, ", ")+"}")
		}
	}
	for _, k := range []string{"device_write_errors_total", "client_resets_total", "stale_flows_total"} {
		if v, _ := m[k].(float64); v != 0 {
			parts = append(parts, fmt.Sprintf("%s %.0f", k, v))
		}
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}
