// Package pump moves packets between a tun.Device and a Handler: one goroutine
// per device queue, locked to its OS thread, buffers allocated once, the
// handler's verdicts applied (written back, handed to the recovery
// netstack, or dropped). It knows nothing of NAT: the Handler decides.
package pump

import (
	"runtime"
	"sync/atomic"

	"holdfast/internal/clock"
	"holdfast/internal/wire"
	"holdfast/stack/tun"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// Handler decides a batch of packets. For each pkts[i] it may rewrite it in
// place and sets verdicts[i] and, for Forward and Reset, outs[i]: the bytes
// to write (a sub-slice of pkts[i] starting where it starts). partial[i]
// says the packet's TCP/UDP checksum is only the pseudo-header sum
// (virtio-net NEEDS_CSUM). The packets are lent for the duration of the
// call: a Handler must not retain them. nat.Director is one.
type Handler interface {
	HandleBatch(pkts [][]byte, partial []bool, now int64, verdicts []wire.Verdict, outs [][]byte)
}

// Stack receives the packets a Handler sends to the recovery netstack
// (netstack.Netstack is one). Inject copies what it keeps.
type Stack interface {
	Inject(pkt []byte, partial bool) bool
}

// PumpStats counts what the pump did.
type PumpStats struct {
	Read        uint64 // packets read from the device
	Written     uint64 // packets written back
	WriteErrors uint64 // writes the device refused
}

// Pump moves packets from a Device through a Handler and back.
//
// Lifetime: Run is one goroutine, owned by the caller; it returns when the
// device is closed or fails. Buffers are allocated once and reused.
type Pump struct {
	dev   tun.Device
	h     Handler
	clock *clock.Clock
	log   zerolog.Logger
	ns    Stack // may be nil: then ToStack packets are dropped
	nice  int   // the packet thread's nice value while Run runs (0: leave it)

	read, written, writeErrs atomic.Uint64
}

// NewPump returns a pump (its buffers hold any packet the device delivers,
// GSO ones included). ns, if not nil,
// receives the packets the Handler sends to the stack.
func NewPump(dev tun.Device, h Handler, ns Stack, clk *clock.Clock, log zerolog.Logger) *Pump {
	return &Pump{dev: dev, h: h, ns: ns, clock: clk, log: log}
}

// Stats returns the pump's counters.
func (p *Pump) Stats() PumpStats {
	return PumpStats{Read: p.read.Load(), Written: p.written.Load(), WriteErrors: p.writeErrs.Load()}
}

// Run reads until the device is closed. A closed device is a clean stop
// (nil); any other read error is returned. The goroutine stays on one OS
// thread: the device's syscalls are made directly, not through Go's poller.
func (p *Pump) Run() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if p.nice != 0 {
		defer p.renice()()
	}
	p.log.Debug().Str("device", p.dev.Name()).Msg("pump started")
	defer p.log.Debug().Str("device", p.dev.Name()).Msg("pump stopped")
	batch := p.dev.BatchSize()
	hdr := p.dev.VnetHdrLen()
	bufs := make([][]byte, batch)
	for i := range bufs {
		// Room for any packet the device can deliver after the
		// virtio-net header: a GSO packet is up to 64 KiB, an IPv6 one's
		// payload up to 65535 bytes after its 40-byte header.
		bufs[i] = make([]byte, hdr+40+65535)
	}
	sizes := make([]int, batch)
	out := make([][]byte, 0, batch)
	pkts := make([][]byte, batch)
	partial := make([]bool, batch)
	verdicts := make([]wire.Verdict, batch)
	outs := make([][]byte, batch)
	for {
		n, err := p.dev.Read(bufs, sizes, hdr)
		if err != nil {
			if tun.IsClosed(err) {
				return nil
			}
			return err
		}
		p.read.Add(uint64(n))
		now := p.clock.Now()
		for i := 0; i < n; i++ {
			pkts[i] = bufs[i][hdr : hdr+sizes[i]]
			partial[i] = tun.NeedsCsum(bufs[i][:hdr])
		}
		p.h.HandleBatch(pkts[:n], partial[:n], now, verdicts[:n], outs[:n])
		out = out[:0]
		for i := 0; i < n; i++ {
			b := bufs[i]
			switch verdicts[i] {
			case wire.Forward:
				out = append(out, b[:hdr+len(outs[i])])
			case wire.Reset: // a new packet: plain virtio-net header
				clear(b[:hdr])
				out = append(out, b[:hdr+len(outs[i])])
			case wire.ToStack:
				if p.ns != nil {
					p.ns.Inject(pkts[i], partial[i])
				}
			}
			outs[i] = nil
		}
		if len(out) == 0 {
			continue
		}
		w, err := p.dev.Write(out, hdr)
		p.written.Add(uint64(w))
		if err != nil {
			if tun.IsClosed(err) {
				return nil
			}
			// The kernel refuses single packets (EINVAL, ENOBUFS); the
			// loop must not stop for one.
			p.writeErrs.Add(uint64(len(out) - w))
			if p.log.Debug().Enabled() {
				p.log.Debug().Err(err).Msg("device write failed")
			}
		}
	}
}

// Pumps runs one Pump per queue of a device.
type Pumps []*Pump

// NewPumps returns a pump for each of dev's queues (see Queues), each with
// its own Handler from newHandler.
func NewPumps(dev tun.Device, newHandler func() Handler, ns Stack, clk *clock.Clock, log zerolog.Logger) Pumps {
	var ps Pumps
	for i, q := range tun.Queues(dev) {
		ps = append(ps, NewPump(q, newHandler(), ns, clk, log.With().Int("queue", i).Logger()))
	}
	return ps
}

// Run runs every pump until the device is closed. If one fails, Run closes
// the device, so that the others stop, and returns the first error.
func (ps Pumps) Run() error {
	errs := make(chan error, len(ps))
	for _, p := range ps {
		go func() { errs <- p.Run() }()
	}
	var first error
	for range ps {
		if err := <-errs; err != nil && first == nil {
			first = err
			ps[0].dev.Close() //nolint:errcheck // the pump's error says more
		}
	}
	return first
}

// Stats sums the pumps' counters.
func (ps Pumps) Stats() PumpStats {
	var s PumpStats
	for _, p := range ps {
		ps := p.Stats()
		s.Read += ps.Read
		s.Written += ps.Written
		s.WriteErrors += ps.WriteErrors
	}
	return s
}

// SetNice makes each pump's thread run at nice value n (-20..19) while it
// runs: a director's packet thread should not wait behind ordinary
// processes, as the kernel's own forwarding (in softirq) never does. 0
// leaves the priority alone.
func (ps Pumps) SetNice(n int) {
	for _, p := range ps {
		p.nice = n
	}
}

// renice sets the calling (locked) thread's nice value to p.nice and returns
// the function that puts the old one back, so that the thread goes back to
// Go's scheduler as it came. Without the privilege (CAP_SYS_NICE) it logs
// once and leaves the priority.
func (p *Pump) renice() (restore func()) {
	tid := unix.Gettid()
	// getpriority(2) returns 20 - nice.
	raw, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		p.log.Warn().Err(err).Msg("packet thread priority unknown; left as it is")
		return func() {}
	}
	old := 20 - raw
	if err := unix.Setpriority(unix.PRIO_PROCESS, tid, p.nice); err != nil {
		p.log.Warn().Err(err).Int("nice", p.nice).Msg("cannot set the packet thread's priority (needs CAP_SYS_NICE); it runs at the process's")
		return func() {}
	}
	return func() {
		// Back to a higher nice value is always allowed; back to a lower
		// one needs the privilege, without which the thread keeps p.nice.
		unix.Setpriority(unix.PRIO_PROCESS, tid, old) //nolint:errcheck // see above
	}
}
