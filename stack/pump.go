package stack

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// Action is what the pump does with a packet after its Handler.
type Action uint8

// Actions.
const (
	Nothing  Action = iota // dropped, or kept by the handler (a copy)
	Write                  // write out back, with the packet's virtio-net header
	WriteNew               // write out back, a new packet: plain virtio-net header
	ToStack                // hand the packet to the Netstack
)

// Handler decides a batch of packets. For each pkts[i] it may rewrite it in
// place and sets acts[i] and, for Write and WriteNew, outs[i]: the bytes to
// write (a sub-slice of pkts[i] starting where it starts). partial[i] says the
// packet's TCP/UDP checksum is only the pseudo-header sum (virtio-net
// NEEDS_CSUM). The packets are lent for the duration of the call: a Handler
// must not retain them.
type Handler interface {
	HandleBatch(pkts [][]byte, partial []bool, now int64, acts []Action, outs [][]byte)
}

// Clock is a coarse monotonic clock in nanoseconds, advanced by a ticker so
// that the packet path never calls time.Now.
type Clock struct {
	start time.Time
	ns    atomic.Int64
}

// NewClock returns a clock reading 0 now; call Run to keep it moving.
func NewClock() *Clock { return &Clock{start: time.Now()} }

// Now returns the last tick, in nanoseconds since the clock was created.
func (c *Clock) Now() int64 { return c.ns.Load() }

// Update sets the clock to the current time.
func (c *Clock) Update() { c.ns.Store(int64(time.Since(c.start))) }

// Run advances the clock every resolution until ctx ends.
func (c *Clock) Run(ctx context.Context, resolution time.Duration) {
	t := time.NewTicker(resolution)
	defer t.Stop()
	for {
		c.Update()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
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
	dev   Device
	h     Handler
	clock *Clock
	log   zerolog.Logger
	ns    *Netstack // may be nil: then toStack packets are dropped
	nice  int       // the packet thread's nice value while Run runs (0: leave it)

	read, written, writeErrs atomic.Uint64
}

// NewPump returns a pump (its buffers hold any packet the device delivers,
// GSO ones included). ns, if not nil,
// receives the packets the Handler sends to the stack.
func NewPump(dev Device, h Handler, ns *Netstack, clock *Clock, log zerolog.Logger) *Pump {
	return &Pump{dev: dev, h: h, ns: ns, clock: clock, log: log}
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
		// Room for any packet the device can deliver (a GSO packet is up
		// to 64 KiB), after the virtio-net header.
		bufs[i] = make([]byte, hdr+65535)
	}
	sizes := make([]int, batch)
	out := make([][]byte, 0, batch)
	pkts := make([][]byte, batch)
	partial := make([]bool, batch)
	acts := make([]Action, batch)
	outs := make([][]byte, batch)
	for {
		n, err := p.dev.Read(bufs, sizes, hdr)
		if err != nil {
			if errors.Is(err, ErrClosed) || isClosedErr(err) {
				return nil
			}
			return err
		}
		p.read.Add(uint64(n))
		now := p.clock.Now()
		for i := 0; i < n; i++ {
			pkts[i] = bufs[i][hdr : hdr+sizes[i]]
			partial[i] = hdr > 0 && bufs[i][0]&vnetNeedsCsum != 0
		}
		p.h.HandleBatch(pkts[:n], partial[:n], now, acts[:n], outs[:n])
		out = out[:0]
		for i := 0; i < n; i++ {
			b := bufs[i]
			switch acts[i] {
			case Write:
				out = append(out, b[:hdr+len(outs[i])])
			case WriteNew:
				clear(b[:hdr])
				out = append(out, b[:hdr+len(outs[i])])
			case ToStack:
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
			if errors.Is(err, ErrClosed) || isClosedErr(err) {
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
func NewPumps(dev Device, newHandler func() Handler, ns *Netstack, clock *Clock, log zerolog.Logger) Pumps {
	var ps Pumps
	for i, q := range Queues(dev) {
		ps = append(ps, NewPump(q, newHandler(), ns, clock, log.With().Int("queue", i).Logger()))
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
