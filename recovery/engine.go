package recovery

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"

	"holdfast/internal/clock"
	"holdfast/internal/shrink"
	"holdfast/internal/wire"
	"holdfast/internal/workq"
	"holdfast/nat"
	"holdfast/stack/netstack"

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
// Lifetime: the engine owns one goroutine, which starts the recoveries the
// Director asks for (Start is called with the Director locked, so it only
// queues). A dial's end is handled on the netstack's goroutines, which also
// start the next attempt: no goroutine per recovery (the Go runtime keeps
// every goroutine it ever had at once, about 500 bytes each, for good, and a
// failover storm has thousands in flight). Close ends them all and waits.
type Engine struct {
	cfg   Config
	ns    *netstack.Stack
	write func([]byte)
	clock *clock.Clock
	log   zerolog.Logger
	ports *portAlloc
	d     *nat.Director

	mu     sync.Mutex
	jobs   map[nat.Key]*job // recoveries in flight
	closed bool
	wg     sync.WaitGroup // one per job

	starting *workq.Queue[*job] // started, not yet dialing
	stop     chan struct{}
	ran      chan struct{}
}

// job is one recovery: its attempts, one dial at a time.
type job struct {
	req     nat.RecoveryRequest
	attempt int
	real    netip.AddrPort
	reason  nat.FailReason
	cancel  func(error) // the dial in progress (nil between dials); e.mu
	dial    int         // the dial's number, so a late cancel is not kept; e.mu
	aborted bool        // e.mu
}

// New returns an engine. write sends a packet to the device (it must be safe
// for concurrent use). Attach the Director before traffic flows.
func New(cfg Config, ns *netstack.Stack, write func([]byte), clk *clock.Clock, log zerolog.Logger) (*Engine, error) {
	ports, err := newPortAlloc(cfg.Addrs, cfg.PortLo, cfg.PortHi)
	if err != nil {
		return nil, err
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = 3
	}
	e := &Engine{
		cfg: cfg, ns: ns, write: write, clock: clk, log: log, ports: ports,
		jobs: make(map[nat.Key]*job), starting: workq.New[*job](), stop: make(chan struct{}), ran: make(chan struct{}),
	}
	go func() {
		defer close(e.ran)
		e.starting.Run(e.stop, e.try)
	}()
	return e, nil
}

// Attach sets the Director the engine reports to. (The Director is built
// with the engine as its Recoverer, hence two steps.)
func (e *Engine) Attach(d *nat.Director) { e.d = d }

// Close ends every recovery in flight (each reports its failure to the
// Director) and waits for them.
func (e *Engine) Close() {
	e.mu.Lock()
	e.closed = true
	for _, j := range e.jobs {
		j.abort()
	}
	e.mu.Unlock()
	e.wg.Wait()
	close(e.stop)
	<-e.ran
}

// PortsInUse is the number of recovery tuples reserved.
func (e *Engine) PortsInUse() int { return e.ports.used() }

// Start implements nat.Recoverer. It is called with the Director locked: it
// only queues the recovery for the engine's goroutine.
func (e *Engine) Start(req nat.RecoveryRequest) {
	j := &job{req: req, real: req.Real, reason: nat.FailNoReal}
	e.mu.Lock()
	if e.closed {
		j.aborted = true
	}
	e.jobs[req.Key] = j
	e.wg.Add(1)
	e.mu.Unlock()
	e.starting.Push(j)
}

// Abort implements nat.Recoverer.
func (e *Engine) Abort(key nat.Key) {
	e.mu.Lock()
	if j := e.jobs[key]; j != nil {
		j.abort()
	}
	e.mu.Unlock()
}

// abort marks j aborted and ends its dial in progress; e.mu is held.
func (j *job) abort() {
	j.aborted = true
	if j.cancel != nil {
		j.cancel(context.Canceled)
	}
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

// try starts the job's next dial; when none can start, the job ends.
func (e *Engine) try(j *job) {
	key := j.req.Key
	for ; j.attempt < e.cfg.Attempts; j.attempt++ {
		if e.isAborted(j) {
			break
		}
		if j.attempt > 0 {
			r, ok := e.d.NextReal(key, e.clock.Now())
			if !ok {
				break
			}
			j.real = r
		}
		real := j.real
		local, ok := e.ports.get(real)
		if !ok {
			j.reason = nat.FailError
			e.log.Warn().Str("real", real.String()).Msg("recovery: no free recovery port")
			break
		}
		if !e.d.Dialing(key, real, local) {
			e.ports.release(local, real)
			break
		}
		e.mu.Lock()
		j.dial++
		n := j.dial
		e.mu.Unlock()
		cancel, err := e.ns.Start(e.dialOptions(j.req, local, real), e.cfg.Timeout, func(hs wire.Handshake, err error) {
			e.dialed(j, n, real, local, hs, err)
		})
		if err != nil {
			e.d.DialFailed(key, real, local)
			e.Release(local, real)
			j.reason = nat.FailError
			e.log.Debug().Err(err).Str("client", key.Src.String()).Str("real", real.String()).Msg("recovery dial failed to start")
			continue
		}
		e.mu.Lock()
		if j.aborted {
			cancel(context.Canceled)
		} else if j.dial == n { // unless this dial ended and the next began meanwhile
			j.cancel = cancel
		}
		e.mu.Unlock()
		return
	}
	e.finish(j, e.d.RecoveryFailed(key, j.reason, e.clock.Now()))
}

func (e *Engine) isAborted(j *job) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return j.aborted
}

// dialed handles the end of one dial of j (on a netstack goroutine).
func (e *Engine) dialed(j *job, n int, real, local netip.AddrPort, hs wire.Handshake, err error) {
	key := j.req.Key
	e.mu.Lock()
	if j.dial == n {
		j.cancel = nil
	}
	e.mu.Unlock()
	if err == nil {
		out, installed := e.d.Recovered(key, real, local, nat.Handshake{
			AckSeq: hs.AckSeq, AckAck: hs.AckAck, AckTSval: hs.AckTSval,
			SynAckTSval: hs.SynAckTSval, TS: hs.TS,
			OurWScale: hs.OurWScale, PeerWScale: hs.PeerWScale,
		}, e.clock.Now())
		if !installed {
			e.Release(local, real)
		}
		e.finish(j, out)
		return
	}
	e.d.DialFailed(key, real, local)
	e.Release(local, real)
	var de *netstack.DialError
	switch {
	case e.isAborted(j):
		// Aborted (adopted) or shutting down: the reason stays.
	case errors.As(err, &de) && de.Refused:
		j.reason = nat.FailRefused
	case errors.Is(err, context.DeadlineExceeded):
		j.reason = nat.FailTimeout
	default:
		j.reason = nat.FailError
	}
	if e.log.Debug().Enabled() {
		e.log.Debug().Err(err).Str("client", key.Src.String()).Str("real", real.String()).Msg("recovery dial failed")
	}
	j.attempt++
	e.try(j)
}

// finish writes the job's last packets and forgets it.
func (e *Engine) finish(j *job, out [][]byte) {
	e.writeAll(out)
	e.mu.Lock()
	if e.jobs[j.req.Key] == j {
		e.jobs = shrink.Delete(e.jobs, j.req.Key)
	}
	e.mu.Unlock()
	e.wg.Done()
}

// dialOptions is the recovery SYN for req: the configured window scale and
// MSS, unless the client's own handshake is known (a re-home): then the SYN
// says what the client said, so the new connection matches the client's.
func (e *Engine) dialOptions(req nat.RecoveryRequest, local, real netip.AddrPort) wire.DialOptions {
	o := wire.DialOptions{
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
