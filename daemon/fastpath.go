package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"holdfast/fastpath"
	"holdfast/nat"

	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/rs/zerolog"
)

// The fast path stage (docs/fastpath.md, issue 18): the tc program of
// package fastpath, attached at ingress of the director's links, carries
// the established plain flows the Director offloads to it; everything else,
// and every packet it punts, goes through the TUN as before. The stage owns
// the program and its links, offloads the flows that qualified (a flow
// that carried fastSegments segments through the TUN within about a
// second), and once a second reads what the map carried: the Director
// refreshes those flows' idle timers and their reals' counters, and takes
// back a flow idle in the map for fastIdle seconds.

// FastPathMode is Config.FastPath.
type FastPathMode string

// Fast path modes (--fast-path).
const (
	FastPathOff  FastPathMode = "off"  // the TUN path alone
	FastPathAuto FastPathMode = "auto" // tc where it can be had, else off, logged
	FastPathTC   FastPathMode = "tc"   // tc, or fail at start
	FastPathXDP  FastPathMode = "xdp"  // reserved: not built
)

// PartFastPath is the fast path's part of the daemon.
const PartFastPath Part = "fast path"

// ErrXDPNotBuilt is the error of --fast-path xdp.
var ErrXDPNotBuilt = errors.New("xdp: not built (docs/fastpath.md: the tc fast path was measured and chosen); use tc, auto or off")

// The offload policy.
const (
	fastSegments     = 8                      // segments through the TUN within about a second that make a flow qualify
	fastSettle       = 50 * time.Millisecond  // a flow's packets still in the TUN after its offload: not a punt
	fastOffloadEvery = 100 * time.Millisecond // how often qualified flows go into the map
	fastSyncEvery    = 10                     // offload ticks between two reads of the map (a second)
	fastIdle         = 5                      // reads in a row without a carried segment before a flow is taken back
)

// Log field names of the stage.
const (
	fFastPath = "fast_path"
	fIfaces   = "ifaces"
)

// validFastPath checks a mode (the CLI checks it first, naming the flag).
func validFastPath(m FastPathMode) error {
	switch m {
	case "", FastPathOff, FastPathAuto, FastPathTC:
		return nil
	case FastPathXDP:
		return invalid(PartFastPath, ErrXDPNotBuilt)
	}
	return invalid(PartFastPath, fmt.Errorf("mode %q: expected auto, off, tc or xdp", string(m)))
}

// fastPath is the running fast path: the program, its links, and what the
// sweep keeps between two reads.
type fastPath struct {
	prog   *fastpath.Program
	links  []link.Link
	ifaces []string
	buf    []nat.FastUpdate
	idle   map[netip.AddrPort]int // reads in a row each flow carried nothing
}

// startFastPath starts the fast path as cfg.FastPath says, with its one
// log line: what was chosen and why.
func (r *runner) startFastPath(ctx context.Context, st *stages) error {
	mode := r.cfg.FastPath
	if err := validFastPath(mode); err != nil {
		return err
	}
	if mode == "" || mode == FastPathOff {
		r.log.Info().Str(fFastPath, "off").Msg("fast path: off: --fast-path off (the TUN path alone)")
		return nil
	}
	fp, err := openFastPath(r.cfg)
	if err != nil {
		if mode == FastPathTC {
			return runtimeError(PartFastPath, fmt.Errorf("fast path tc: %w", err))
		}
		r.log.Info().Str(fFastPath, "off").Err(err).Msg("fast path: off: " + err.Error())
		return nil
	}
	r.d.SetOffload(fp.prog, nat.OffloadConfig{Segments: fastSegments, Settle: int64(fastSettle)})
	ifs := zerolog.Arr()
	for _, n := range fp.ifaces {
		ifs.Str(n)
	}
	r.log.Info().Str(fFastPath, "tc").Array(fIfaces, ifs).Msg("fast path: tc on " + strings.Join(fp.ifaces, ", "))
	st.run(ctx, PartFastPath, func(ctx context.Context) error { return fp.run(ctx, r) }, nil)
	return nil
}

// openFastPath loads the program and attaches it at tcx ingress of every
// Ethernet link that is up, but the TUN: the director's client-facing and
// real-facing links (a link with no flow costs a miss, about 100 ns a
// packet, and its traffic passes as before).
func openFastPath(cfg Config) (*fastPath, error) {
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, err
	}
	links, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, l := range links {
		if l.Flags&net.FlagUp == 0 || l.Flags&net.FlagLoopback != 0 || len(l.HardwareAddr) != 6 || l.Name == cfg.TUN {
			continue
		}
		names = append(names, l.Name)
	}
	if len(names) == 0 {
		return nil, errors.New("no Ethernet link that is up to attach to")
	}
	prog, err := fastpath.Load(fastpath.Config{CookieBits: cfg.Recovery.CookieBits})
	if err != nil {
		return nil, err
	}
	fp := &fastPath{prog: prog, idle: map[netip.AddrPort]int{}}
	for _, n := range names {
		l, err := prog.Attach(n)
		if err != nil {
			fp.close()
			return nil, err
		}
		fp.links = append(fp.links, l)
		fp.ifaces = append(fp.ifaces, n)
	}
	return fp, nil
}

// close detaches the program and frees its maps.
func (fp *fastPath) close() {
	for _, l := range fp.links {
		l.Close()
	}
	fp.prog.Close()
}

// run is the stage: offload, read the map, and at the end take every flow
// back (the Director's state then is the map's) and detach.
func (fp *fastPath) run(ctx context.Context, r *runner) error {
	defer func() {
		r.d.WithdrawAll()
		ev := r.log.Info()
		if c, err := fp.prog.Counters(); err == nil {
			for name, v := range c {
				ev = ev.Uint64("fast_"+name, v)
			}
		}
		fp.close()
		ev.Msg("fast path stopped")
	}()
	t := time.NewTicker(fastOffloadEvery)
	defer t.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			now := r.clk.Now()
			r.d.OffloadPending(now)
			if n%fastSyncEvery == 0 {
				fp.sync(r.d, now)
			}
		}
	}
}

// sync reads what the map carried: the Director refreshes idle timers and
// counters, and takes back a flow idle in the map for fastIdle reads.
func (fp *fastPath) sync(d *nat.Director, now int64) {
	fp.buf, _ = fp.prog.Updates(fp.buf[:0])
	d.FastCarried(fp.buf, now)
	idle := make(map[netip.AddrPort]int, len(fp.idle))
	for _, u := range fp.buf {
		if u.PacketsIn+u.PacketsOut > 0 {
			continue
		}
		if n := fp.idle[u.Client] + 1; n < fastIdle {
			idle[u.Client] = n
		} else {
			d.Withdraw(u.Proto, u.Client, u.VIP)
		}
	}
	fp.idle = idle
}
