package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"holdfast/lab"
)

// clockTicks is USER_HZ, the unit of /proc/stat and /proc/PID/stat times:
// 100 on every Linux architecture Go supports (sysconf(_SC_CLK_TCK) needs
// cgo).
const clockTicks = 100

// snapshot is what measure reads before and after a run.
type snapshot struct {
	at         time.Time
	procTicks  int64 // utime+stime of the director process; -1 without one
	hostTicks  int64 // busy time of all CPUs
	stealTicks int64 // time the hypervisor ran something else on our CPUs
	packets    uint64
	tunDropped int64 // tx drops of director A's TUN; -1 without one
}

// sample is one measured run.
type sample struct {
	value   float64
	notes   []string
	dirCPU  float64 // seconds; negative: n/a
	hostCPU float64 // seconds, every CPU
	steal   float64 // fraction of the CPUs' time stolen by the hypervisor
	packets uint64  // received by director A on both its links
}

// measure runs f and charges it the CPU time and the packets director A
// moved meanwhile. Packets are what A's two veths received (uplink and
// real-server side): one per packet forwarded, whichever direction. They
// count socket buffers, so a GSO packet the client's stack sent counts once
// however many segments it carries; it does for all three directors alike.
func (b *bench) measure(ctx context.Context, pid int, f func(context.Context) (float64, []string, error)) (sample, error) {
	before, err := b.snapshot(pid)
	if err != nil {
		return sample{}, err
	}
	v, notes, err := f(ctx)
	if err != nil {
		return sample{}, err
	}
	after, err := b.snapshot(pid)
	if err != nil {
		return sample{}, err
	}
	s := sample{value: v, notes: notes, dirCPU: -1, packets: after.packets - before.packets,
		hostCPU: float64(after.hostTicks-before.hostTicks) / clockTicks}
	if before.tunDropped >= 0 && after.tunDropped > before.tunDropped {
		s.notes = append(s.notes, fmt.Sprintf("the kernel dropped %d packets at holdfast's TUN (queue full: not read in time)", after.tunDropped-before.tunDropped))
	}
	if wall := after.at.Sub(before.at).Seconds() * float64(runtime.NumCPU()); wall > 0 {
		s.steal = float64(after.stealTicks-before.stealTicks) / clockTicks / wall
	}
	if pid > 0 {
		s.dirCPU = float64(after.procTicks-before.procTicks) / clockTicks
	}
	return s, nil
}

func (b *bench) snapshot(pid int) (snapshot, error) {
	s := snapshot{at: time.Now(), procTicks: -1, tunDropped: -1}
	if d, err := readTUNDrops(b.active); err == nil {
		s.tunDropped = int64(d.TX)
	}
	var err error
	if pid > 0 {
		if s.procTicks, err = procCPUTicks(pid); err != nil {
			return s, err
		}
	}
	if s.hostTicks, s.stealTicks, err = hostTicks(); err != nil {
		return s, err
	}
	for _, ifname := range []string{b.active.UplinkIface, b.active.RSIface} {
		ls, err := b.active.LinkStats(ifname)
		if err != nil {
			return s, err
		}
		s.packets += ls.RxPackets
	}
	return s, nil
}

// procCPUTicks is utime+stime of a process, all its threads (/proc/PID/stat
// fields 14 and 15).
func procCPUTicks(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// "pid (comm) state ppid ...": comm may hold spaces; fields count from
	// the last ')'.
	i := bytes.LastIndexByte(data, ')')
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, data)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, data)
	}
	return utime + stime, nil
}

// hostTicks reads /proc/stat: the busy time of every CPU (user, nice,
// system, irq, softirq) and the steal time.
func hostTicks() (busy, steal int64, err error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: %q", line)
	}
	var v [9]int64
	for i := 1; i < 9; i++ {
		if v[i], err = strconv.ParseInt(f[i], 10, 64); err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %q", line)
		}
	}
	return v[1] + v[2] + v[3] + v[6] + v[7], v[8], nil
}

// median of a non-empty slice (the mean of the middle two for an even
// count).
func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// --- memory of a holdfast process ---

// memSnap is a director's memory and flow count at one moment.
type memSnap struct {
	HeapAlloc int64 `json:"heap_alloc_bytes"` // Go runtime MemStats.HeapAlloc (go_memstats_heap_alloc_bytes)
	HeapInuse int64 `json:"heap_inuse_bytes"` // MemStats.HeapInuse
	RSS       int64 `json:"rss_bytes"`        // VmRSS of /proc/PID/status
	GCs       int64 `json:"gc_cycles"`        // completed GC cycles so far
	Flows     int64 `json:"flows"`            // flows in its table (admin API)
}

// metricsAddr is where the storm's directors serve Prometheus metrics, each
// inside its own namespace: the Go runtime's MemStats come from there.
const metricsAddr = "127.0.0.1:9100"

// memory reads a running director's memory: the Go runtime's numbers from
// its --metrics-addr, VmRSS from /proc, the flow count from its admin API.
func (b *bench) memory(ctx context.Context, d *lab.Director, p *lab.Proc) (memSnap, error) {
	var m memSnap
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c := &http.Client{Transport: &http.Transport{DialContext: d.Dialer(nil), DisableKeepAlives: true}}
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+metricsAddr+"/metrics", nil)
	if err != nil {
		return m, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return m, fmt.Errorf("director %s metrics: %w", d.Label, err)
	}
	defer resp.Body.Close()
	want := map[string]*int64{
		"go_memstats_heap_alloc_bytes": &m.HeapAlloc,
		"go_memstats_heap_inuse_bytes": &m.HeapInuse,
		"go_gc_duration_seconds_count": &m.GCs,
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if dst := want[name]; ok && dst != nil {
			f, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
			if err != nil {
				return m, fmt.Errorf("director %s metrics: %s: %w", d.Label, sc.Text(), err)
			}
			*dst = int64(f)
			delete(want, name)
		}
	}
	if err := sc.Err(); err != nil {
		return m, err
	}
	if len(want) > 0 {
		return m, fmt.Errorf("director %s metrics: missing %v", d.Label, keys(want))
	}
	if m.RSS, err = vmRSS(p.PID()); err != nil {
		return m, err
	}
	stats, err := lab.ReadStats(ctx, d)
	if err != nil {
		return m, err
	}
	m.Flows = int64(stats.Flows)
	return m, nil
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// vmRSS is VmRSS of /proc/PID/status, in bytes.
func vmRSS(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest) // "1234 kB"
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				return kb << 10, err
			}
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}
