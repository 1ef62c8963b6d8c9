package recovery

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"

	"holdfast/internal/shrink"
	"holdfast/nat"
	"holdfast/stack"

	"github.com/rs/zerolog"
)

// Config is the engine's settings.
type Config struct {
	Addrs    []netip.Addr
	PortLo   uint16
	PortHi   uint16
	WScale   int           // window scale advertised in recovery SYNs
	MSS      int           // MSS advertised in recovery SYNs
	Timeout  time.Duration // per dial
	Attempts int           // reals tried per recovery
}

// Engine runs recovery handshakes for a nat.Director. It implements
// nat.Recoverer.
//
// Lifetime: each recovery is one goroutine, started by Start and owned by the
// engine; Close cancels them all and waits.
type Engine struct {
	cfg   Config
	ns    *stack.Netstack
	write func([]byte)
	clock *stack.Clock
	log   zerolog.Logger
	ports *portAlloc
	d     *nat.Director

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	cancels map[nat.Key]context.CancelFunc
}

// New returns an engine. write sends a packet to the device (it must be safe
// for concurrent use). Attach the Director before traffic flows.
func New(cfg Config, ns *stack.Netstack, write func([]byte), clock *stack.Clock, log zerolog.Logger) (*Engine, error) {
	ports, err := newPortAlloc(cfg.Addrs, cfg.PortLo, cfg.PortHi)
	if err != nil {
		return nil, err
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = 3
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Engine{
		cfg: cfg, ns: ns, write: write, clock: clock, log: log, ports: ports,
		ctx: ctx, cancel: cancel, cancels: make(map[nat.Key]context.CancelFunc),
	}, nil
}

// Attach sets the Director the engine reports to. (The Director is built
// with the engine as its Recoverer, hence two steps.)
func (e *Engine) Attach(d *nat.Director) { e.d = d }

// Close stops every recovery in flight and waits for them.
func (e *Engine) Close() {
	e.cancel()
	e.wg.Wait()
}

// PortsInUse is the number of recovery tuples reserved.
func (e *Engine) PortsInUse() int { return e.ports.used() }

// Start implements nat.Recoverer. It is called with the Director locked.
func (e *Engine) Start(req nat.RecoveryRequest) {
	ctx, cancel := context.WithCancel(e.ctx)
	e.mu.Lock()
	e.cancels[req.Key] = cancel
	e.mu.Unlock()
	e.wg.Add(1)
	go e.recover(ctx, req)
}

// Abort implements nat.Recoverer.
func (e *Engine) Abort(key nat.Key) {
	e.mu.Lock()
	if c := e.cancels[key]; c != nil {
		c()
	}
	e.mu.Unlock()
}

// Release implements nat.Recoverer: a recovered flow ended.
func (e *Engine) Release(local, real netip.AddrPort) {
	e.ports.release(local, real)
}

func (e *Engine) writeAll(pkts [][]byte) {
	for _, p := range pkts {
		e.write(p)
	}
}

// recover runs one recovery to its end: installed, adopted, or failed.
func (e *Engine) recover(ctx context.Context, req nat.RecoveryRequest) {
	defer e.wg.Done()
	defer func() {
		e.mu.Lock()
		if c := e.cancels[req.Key]; c != nil {
			c()
			e.cancels = shrink.Delete(e.cancels, req.Key)
		}
		e.mu.Unlock()
	}()
	real := req.Real
	reason := nat.FailNoReal
	for attempt := 0; attempt < e.cfg.Attempts; attempt++ {
		if attempt > 0 {
			r, ok := e.d.NextReal(req.Key, e.clock.Now())
			if !ok {
				break
			}
			real = r
		}
		local, ok := e.ports.get(real)
		if !ok {
			reason = nat.FailError
			e.log.Warn().Str("real", real.String()).Msg("recovery: no free recovery port")
			break
		}
		if !e.d.Dialing(req.Key, real, local) {
			e.ports.release(local, real)
			break
		}
		dctx, dcancel := context.WithTimeout(ctx, e.cfg.Timeout)
		hs, err := e.ns.Dial(dctx, e.dialOptions(req, local, real))
		dcancel()
		if err == nil {
			out, installed := e.d.Recovered(req.Key, real, local, nat.Handshake{
				AckSeq: hs.AckSeq, AckAck: hs.AckAck, AckTSval: hs.AckTSval,
				SynAckTSval: hs.SynAckTSval, TS: hs.TS,
				OurWScale: hs.OurWScale, PeerWScale: hs.PeerWScale,
			}, e.clock.Now())
			e.writeAll(out)
			if !installed {
				e.Release(local, real)
			}
			return
		}
		e.d.DialFailed(req.Key, real, local)
		e.Release(local, real)
		var de *stack.DialError
		switch {
		case ctx.Err() != nil:
			// Aborted (adopted) or shutting down.
		case errors.As(err, &de) && de.Refused:
			reason = nat.FailRefused
		case errors.Is(err, context.DeadlineExceeded):
			reason = nat.FailTimeout
		default:
			reason = nat.FailError
		}
		if e.log.Debug().Enabled() {
			e.log.Debug().Err(err).Str("client", req.Key.Src.String()).Str("real", real.String()).Msg("recovery dial failed")
		}
		if ctx.Err() != nil {
			break
		}
	}
	e.writeAll(e.d.RecoveryFailed(req.Key, reason, e.clock.Now()))
}

// dialOptions is the recovery SYN for req: the configured window scale and
// MSS, unless the client's own handshake is known (a re-home): then the SYN
// says what the client said, so the new connection matches the client's.
func (e *Engine) dialOptions(req nat.RecoveryRequest, local, real netip.AddrPort) stack.DialOptions {
	o := stack.DialOptions{
		Local: local, Remote: real, Timestamps: req.Timestamps, SACK: req.SACK,
		WScale: e.cfg.WScale, MSS: e.cfg.MSS,
	}
	if req.WScale >= 0 {
		o.WScale = req.WScale
	}
	if req.MSS > 0 && req.MSS < o.MSS {
		o.MSS = req.MSS
	}
	return o
}
