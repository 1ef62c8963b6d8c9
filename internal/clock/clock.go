// Package clock is the packet path's time source: a coarse monotonic clock
// advanced by a ticker, so that the per-packet code never calls time.Now.
package clock

import (
	"context"
	"sync/atomic"
	"time"
)

// Clock is a coarse monotonic clock in nanoseconds. Now is safe for
// concurrent use; Run is one goroutine, owned by whoever started it.
type Clock struct {
	start time.Time
	ns    atomic.Int64
}

// New returns a clock reading 0 now; call Run to keep it moving.
func New() *Clock { return &Clock{start: time.Now()} }

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
