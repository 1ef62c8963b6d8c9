package recovery

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"holdfast/internal/shrink"
	"holdfast/internal/wire"
	"holdfast/internal/workq"
	"holdfast/nat"

	"github.com/rs/zerolog"
)

// Dialer performs one recovery handshake (*netstack.Stack). Start begins it;
// done is called once, from any goroutine, with what it captured or why it
// failed (wrapping wire.ErrRefused for a RST, context.DeadlineExceeded after
// timeout), unless Start itself fails. cancel ends the dial early with cause,
// and done is still called.
type Dialer interface {
	Start(o wire.DialOptions, timeout time.Duration, done func(wire.Handshake, error)) (cancel func(error), err error)
}

// Sink is what the engine reports to (*nat.Director, which owns the
// recoveries). Each method takes the sink's own lock; the engine calls them
// from Run's goroutine only, and writes the packets they return.
type Sink interface {
	// Retry is told that the dial for key failed; it returns the next dial
	// to make, or false when the recovery cannot go on.
	Retry(key nat.Key, reason nat.FailReason, now int64) (wire.DialOptions, bool)
	// Recovered ends the recovery of key with the handshake of its dial.
	Recovered(key nat.Key, hs wire.Handshake, now int64) [][]byte
	// Failed ends the recovery of key without one.
	Failed(key nat.Key, reason nat.FailReason, now int64) [][]byte
}

// Config is the engine's settings.
type Config struct {
	Timeout  time.Duration // per dial; 0: 3s
	Attempts int           // dials per recovery, the first one included; 0: 3
}

// Engine executes the recovery dials a nat.Director asks for (it is the
// Director's nat.Dialer) and reports their ends to a Sink (the Director).
// Recovery state is nat's: which reals were tried, the ports, the parked
// segments, whether the flow was adopted. The engine keeps only what
// executing dials needs: the cancel handle and attempt count of each dial in
// flight.
//
// Lifetime: the engine is one goroutine, Run, fed by a work queue. Dial and
// Cancel (called with the Director's lock held) and the Dialer's done
// callbacks (called on its goroutines) only push to the queue; Run does the
// rest, so the engine's state needs no lock and no goroutine exists per
// recovery (a failover storm has thousands in flight). When Run's context
// ends, every dial in flight is cancelled, and Run returns once each has
// ended and been reported Failed with nat.FailShutdown (even one whose
// handshake completed meanwhile: the director is going away); so is a dial
// asked for meanwhile. A Dial after Run has returned is never reported: the
// Director is being discarded by then.
type Engine struct {
	cfg   Config
	d     Dialer
	write func([]byte)
	now   func() int64
	log   zerolog.Logger
	q     *workq.Queue[event]
	ran   atomic.Bool

	// Run's goroutine only.
	sink     Sink
	dials    map[nat.Key]*dial
	stopping bool
	drained  chan struct{} // closed when the last dial ends while stopping
}

// dial is one recovery's dial in flight.
type dial struct {
	key       nat.Key
	cancel    func(error)
	attempt   int  // dials started for this recovery, this one included
	cancelled bool // adopted or shutting down: its end is final
}

type op uint8

const (
	opDial op = iota
	opCancel
	opDone
)

// event is one item of the engine's queue.
type event struct {
	op   op
	key  nat.Key
	o    wire.DialOptions // opDial
	dial *dial            // opDone: the dial that ended
	hs   wire.Handshake   // opDone
	err  error            // opDone
}

// New returns an engine dialing through d. write sends a packet to the
// device (safe for concurrent use); now is the coarse clock nat's entry
// points take. Nothing runs until Run.
func New(cfg Config, d Dialer, write func([]byte), now func() int64, log zerolog.Logger) *Engine {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 3 * time.Second
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = 3
	}
	return &Engine{
		cfg: cfg, d: d, write: write, now: now, log: log,
		q: workq.New[event](), dials: make(map[nat.Key]*dial),
	}
}

// Dial implements nat.Dialer: it queues dial o for the recovery of key.
func (e *Engine) Dial(key nat.Key, o wire.DialOptions) {
	e.q.Push(event{op: opDial, key: key, o: o})
}

// Cancel implements nat.Dialer: it queues the cancellation of key's dial.
func (e *Engine) Cancel(key nat.Key) {
	e.q.Push(event{op: opCancel, key: key})
}

// Run executes dials and reports to sink until ctx ends, then cancels every
// dial in flight and returns nil once each has been reported. It is the
// engine's one goroutine: a second Run returns an error at once.
func (e *Engine) Run(ctx context.Context, sink Sink) error {
	if !e.ran.CompareAndSwap(false, true) {
		return errors.New("recovery engine: Run called twice")
	}
	e.sink = sink
	e.q.Run(ctx.Done(), e.do)
	e.stopping = true
	e.drained = make(chan struct{})
	for _, j := range e.dials {
		j.cancelled = true
		j.cancel(context.Canceled)
	}
	if len(e.dials) == 0 {
		close(e.drained)
	}
	e.q.Run(e.drained, e.do) // the cancelled dials' ends
	e.q.Drain(e.do)          // and what was asked meanwhile, never started
	return nil
}

func (e *Engine) do(ev event) {
	switch ev.op {
	case opDial:
		if e.stopping {
			e.report(e.sink.Failed(ev.key, nat.FailShutdown, e.now()))
			return
		}
		if e.dials[ev.key] != nil {
			// nat asks again only after the last recovery of key ended,
			// and its end removed the dial first.
			e.log.Error().Str("client", ev.key.Src.String()).Msg("recovery: a second dial for a recovery in flight, ignored")
			return
		}
		j := &dial{key: ev.key}
		e.dials[ev.key] = j
		e.start(j, ev.o)
	case opCancel:
		if j := e.dials[ev.key]; j != nil && !j.cancelled {
			j.cancelled = true
			j.cancel(context.Canceled)
		}
	case opDone:
		if e.dials[ev.dial.key] != ev.dial {
			return // not a dial in flight (cannot happen: each ends once)
		}
		e.ended(ev.dial, ev.hs, ev.err)
	}
}

// start starts dial o of j, or if it cannot start, goes on as after a failed
// dial.
func (e *Engine) start(j *dial, o wire.DialOptions) {
	for {
		j.attempt++
		cancel, err := e.d.Start(o, e.cfg.Timeout, func(hs wire.Handshake, err error) {
			e.q.Push(event{op: opDone, dial: j, hs: hs, err: err})
		})
		if err == nil {
			j.cancel = cancel
			return
		}
		e.log.Debug().Err(err).Str("client", j.key.Src.String()).Str("real", o.Remote.String()).Msg("recovery dial failed to start")
		next, ok := e.next(j, nat.FailError)
		if !ok {
			return
		}
		o = next
	}
}

// ended handles the end of j's dial in flight.
func (e *Engine) ended(j *dial, hs wire.Handshake, err error) {
	j.cancel = nil
	switch {
	case e.stopping:
		e.fail(j, nat.FailShutdown)
	case err == nil:
		e.forget(j)
		e.report(e.sink.Recovered(j.key, hs, e.now()))
	default:
		reason := failReason(err)
		if e.log.Debug().Enabled() {
			e.log.Debug().Err(err).Str("client", j.key.Src.String()).Str("reason", reason.String()).Msg("recovery dial failed")
		}
		if o, ok := e.next(j, reason); ok {
			e.start(j, o)
		}
	}
}

// next asks the sink for the dial after one of j's that failed for reason;
// when there is none (attempts spent, adopted, no real left) it ends the
// recovery.
func (e *Engine) next(j *dial, reason nat.FailReason) (wire.DialOptions, bool) {
	if !j.cancelled && j.attempt < e.cfg.Attempts {
		if o, ok := e.sink.Retry(j.key, reason, e.now()); ok {
			return o, true
		}
	}
	e.fail(j, reason)
	return wire.DialOptions{}, false
}

// fail ends j's recovery without a connection.
func (e *Engine) fail(j *dial, reason nat.FailReason) {
	e.forget(j)
	e.report(e.sink.Failed(j.key, reason, e.now()))
}

// forget removes j from the dials in flight, before its end is reported: the
// report may let nat start a new recovery of the same key.
func (e *Engine) forget(j *dial) {
	e.dials = shrink.Delete(e.dials, j.key)
	if e.stopping && len(e.dials) == 0 {
		close(e.drained)
	}
}

func (e *Engine) report(pkts [][]byte) {
	for _, p := range pkts {
		e.write(p)
	}
}

// failReason classifies a failed dial.
func failReason(err error) nat.FailReason {
	switch {
	case errors.Is(err, wire.ErrRefused):
		return nat.FailRefused
	case errors.Is(err, context.DeadlineExceeded):
		return nat.FailTimeout
	}
	return nat.FailError
}
