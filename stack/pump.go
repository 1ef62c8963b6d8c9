package stack

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// Handler decides one packet. It may rewrite pkt in place and returns the
// bytes to write back to the device (a sub-slice of pkt's buffer) or nil to
// write nothing; toStack asks the pump to hand pkt to its Netstack. pkt is
// lent for the duration of the call: a Handler must not retain it.
type Handler interface {
	HandlePacket(pkt []byte, now int64) (out []byte, toStack bool)
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
	mtu   int
	ns    *Netstack // may be nil: then toStack packets are dropped

	read, written, writeErrs atomic.Uint64
}

// NewPump returns a pump for packets up to mtu bytes. ns, if not nil,
// receives the packets the Handler sends to the stack.
func NewPump(dev Device, h Handler, ns *Netstack, clock *Clock, mtu int, log zerolog.Logger) *Pump {
	return &Pump{dev: dev, h: h, ns: ns, clock: clock, mtu: mtu, log: log}
}

// Stats returns the pump's counters.
func (p *Pump) Stats() PumpStats {
	return PumpStats{Read: p.read.Load(), Written: p.written.Load(), WriteErrors: p.writeErrs.Load()}
}

// Run reads until the device is closed. A closed device is a clean stop
// (nil); any other read error is returned.
func (p *Pump) Run() error {
	p.log.Debug().Str("device", p.dev.Name()).Msg("pump started")
	defer p.log.Debug().Str("device", p.dev.Name()).Msg("pump stopped")
	batch := p.dev.BatchSize()
	bufs := make([][]byte, batch)
	for i := range bufs {
		// Room for any packet the device can deliver, whatever its MTU.
		bufs[i] = make([]byte, 65535)
	}
	sizes := make([]int, batch)
	out := make([][]byte, 0, batch)
	for {
		n, err := p.dev.Read(bufs, sizes, 0)
		if err != nil {
			if errors.Is(err, ErrClosed) || isClosedErr(err) {
				return nil
			}
			return err
		}
		p.read.Add(uint64(n))
		now := p.clock.Now()
		out = out[:0]
		for i := 0; i < n; i++ {
			pkt := bufs[i][:sizes[i]]
			o, toStack := p.h.HandlePacket(pkt, now)
			switch {
			case o != nil:
				out = append(out, o)
			case toStack && p.ns != nil:
				p.ns.Inject(pkt)
			}
		}
		if len(out) == 0 {
			continue
		}
		w, err := p.dev.Write(out, 0)
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
