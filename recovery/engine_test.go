package recovery

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"holdfast/internal/wire"
	"holdfast/nat"
	"holdfast/stack/netstack"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The contract, checked by the compiler: the netstack is the engine's
// Dialer, the Director its Sink, and the engine the Director's Dialer.
var (
	_ Dialer     = (*netstack.Stack)(nil)
	_ Sink       = (*nat.Director)(nil)
	_ nat.Dialer = (*Engine)(nil)
)

// step is what the fake dialer does with one Start.
type step int

const (
	succeed  step = iota // the handshake completes
	refuse               // the real answers RST
	timeOut              // no answer within the timeout
	hang                 // no end until cancelled
	startErr             // Start itself fails
)

// fakeDialer plays its script, one step per Start in call order (hang once
// the script is spent). Ends are reported from inside Start or cancel, on
// the engine's goroutine: the engine must cope with a done that comes before
// Start has returned.
type fakeDialer struct {
	mu      sync.Mutex
	script  []step
	calls   []wire.DialOptions
	timeout time.Duration
	started chan wire.DialOptions // every dial that started
	cancels []error
}

func newFakeDialer(script ...step) *fakeDialer {
	return &fakeDialer{script: script, started: make(chan wire.DialOptions, 1024)}
}

// handshake is what a successful dial of o captured.
func handshake(o wire.DialOptions) wire.Handshake {
	return wire.Handshake{AckSeq: uint32(o.Local.Port()), AckAck: 9, OurWScale: o.WScale, PeerWScale: 7}
}

func (f *fakeDialer) Start(o wire.DialOptions, timeout time.Duration, done func(wire.Handshake, error)) (func(error), error) {
	f.mu.Lock()
	s := hang
	if n := len(f.calls); n < len(f.script) {
		s = f.script[n]
	}
	f.calls = append(f.calls, o)
	f.timeout = timeout
	f.mu.Unlock()
	if s == startErr {
		return nil, errors.New("new endpoint: no buffer space")
	}
	f.started <- o
	var once sync.Once
	end := func(hs wire.Handshake, err error) { once.Do(func() { done(hs, err) }) }
	switch s {
	case succeed:
		end(handshake(o), nil)
	case refuse:
		end(wire.Handshake{}, fmt.Errorf("dial %s: %w", o.Remote, wire.ErrRefused))
	case timeOut:
		end(wire.Handshake{}, fmt.Errorf("dial %s: %w", o.Remote, context.DeadlineExceeded))
	}
	return func(cause error) {
		f.mu.Lock()
		f.cancels = append(f.cancels, cause)
		f.mu.Unlock()
		end(wire.Handshake{}, fmt.Errorf("dial %s: %w", o.Remote, cause))
	}, nil
}

func (f *fakeDialer) dialed() []wire.DialOptions {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// fakeSink records the engine's reports. Retry hands out the next of its
// options (false once spent); Recovered and Failed return one packet naming
// the call, which the engine must write.
type fakeSink struct {
	mu    sync.Mutex
	next  []wire.DialOptions
	calls []string
	hs    []wire.Handshake
	ended chan nat.Key
}

func newFakeSink(next ...wire.DialOptions) *fakeSink {
	return &fakeSink{next: next, ended: make(chan nat.Key, 1024)}
}

func (s *fakeSink) Retry(key nat.Key, reason nat.FailReason, now int64) (wire.DialOptions, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, "retry "+reason.String())
	if len(s.next) == 0 {
		return wire.DialOptions{}, false
	}
	o := s.next[0]
	s.next = s.next[1:]
	return o, true
}

func (s *fakeSink) Recovered(key nat.Key, hs wire.Handshake, now int64) [][]byte {
	s.mu.Lock()
	s.calls = append(s.calls, "recovered")
	s.hs = append(s.hs, hs)
	s.mu.Unlock()
	s.ended <- key
	return [][]byte{[]byte("recovered " + key.Src.String())}
}

func (s *fakeSink) Failed(key nat.Key, reason nat.FailReason, now int64) [][]byte {
	s.mu.Lock()
	s.calls = append(s.calls, "failed "+reason.String())
	s.mu.Unlock()
	s.ended <- key
	return [][]byte{[]byte("failed " + key.Src.String())}
}

func (s *fakeSink) log() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// harness runs an engine over fakes until the test ends.
type harness struct {
	e       *Engine
	d       *fakeDialer
	sink    *fakeSink
	mu      sync.Mutex
	written []string
	stop    context.CancelFunc
	ran     chan error
	once    sync.Once
	err     error // Run's
}

func newHarness(t *testing.T, cfg Config, d *fakeDialer, sink *fakeSink) *harness {
	t.Helper()
	h := &harness{d: d, sink: sink, ran: make(chan error, 1)}
	write := func(b []byte) {
		h.mu.Lock()
		h.written = append(h.written, string(b))
		h.mu.Unlock()
	}
	h.e = New(cfg, d, write, func() int64 { return 1 }, zerolog.Nop())
	ctx, cancel := context.WithCancel(context.Background())
	h.stop = cancel
	go func() { h.ran <- h.e.Run(ctx, sink) }()
	t.Cleanup(func() {
		h.shutdown()
		if h.err != nil {
			t.Errorf("Run: %v", h.err)
		}
	})
	return h
}

// shutdown ends Run and waits for it (once; later calls return at once).
func (h *harness) shutdown() {
	h.once.Do(func() {
		h.stop()
		h.err = <-h.ran
	})
}

func (h *harness) writes() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.written)
}

// wait waits for the end of n recoveries.
func (h *harness) wait(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case <-h.sink.ended:
		case <-time.After(10 * time.Second):
			t.Fatalf("no end reported; sink saw %v", h.sink.log())
		}
	}
}

func (h *harness) waitStarted(t *testing.T) wire.DialOptions {
	t.Helper()
	select {
	case o := <-h.d.started:
		return o
	case <-time.After(10 * time.Second):
		t.Fatal("no dial started")
	}
	return wire.DialOptions{}
}

var (
	key1 = nat.Key{Proto: 6, Src: netip.MustParseAddrPort("198.18.1.2:40000"), Dst: netip.MustParseAddrPort("198.18.100.1:80")}
	key2 = nat.Key{Proto: 6, Src: netip.MustParseAddrPort("198.18.1.3:40001"), Dst: netip.MustParseAddrPort("198.18.100.1:80")}
)

// opts is a dial to real i from recovery port 10000+i.
func opts(i int) wire.DialOptions {
	return wire.DialOptions{
		Local:  netip.MustParseAddrPort("198.18.200.1:" + fmt.Sprint(10000+i)),
		Remote: netip.MustParseAddrPort("198.18.10." + fmt.Sprint(10+i) + ":8080"),
		WScale: 7, MSS: 1460, SACK: true,
	}
}

func TestEngine(t *testing.T) {
	cases := []struct {
		name     string
		cfg      Config
		script   []step
		next     []wire.DialOptions // what Retry hands out
		calls    []string           // what the sink sees
		dials    []wire.DialOptions // what the dialer sees
		recovers int                // dial whose handshake reaches Recovered (-1 none)
	}{
		{
			name: "success", script: []step{succeed},
			calls: []string{"recovered"}, dials: []wire.DialOptions{opts(1)}, recovers: 0,
		},
		{
			name: "refused, then the next real", script: []step{refuse, succeed}, next: []wire.DialOptions{opts(2)},
			calls: []string{"retry refused", "recovered"}, dials: []wire.DialOptions{opts(1), opts(2)}, recovers: 1,
		},
		{
			name: "timeout, then the next real", script: []step{timeOut, succeed}, next: []wire.DialOptions{opts(2)},
			calls: []string{"retry timeout", "recovered"}, dials: []wire.DialOptions{opts(1), opts(2)}, recovers: 1,
		},
		{
			name: "attempts spent", script: []step{timeOut, refuse, timeOut}, next: []wire.DialOptions{opts(2), opts(3), opts(4)},
			calls: []string{"retry timeout", "retry refused", "failed timeout"}, dials: []wire.DialOptions{opts(1), opts(2), opts(3)}, recovers: -1,
		},
		{
			name: "no real left", script: []step{refuse},
			calls: []string{"retry refused", "failed refused"}, dials: []wire.DialOptions{opts(1)}, recovers: -1,
		},
		{
			name: "a dial that cannot start", script: []step{startErr, succeed}, next: []wire.DialOptions{opts(2)},
			calls: []string{"retry error", "recovered"}, dials: []wire.DialOptions{opts(1), opts(2)}, recovers: 1,
		},
		{
			name: "one attempt", cfg: Config{Attempts: 1}, script: []step{refuse}, next: []wire.DialOptions{opts(2)},
			calls: []string{"failed refused"}, dials: []wire.DialOptions{opts(1)}, recovers: -1,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, c.cfg, newFakeDialer(c.script...), newFakeSink(c.next...))
			h.e.Dial(key1, opts(1))
			h.wait(t, 1)
			h.shutdown()
			if got := h.sink.log(); !slices.Equal(got, c.calls) {
				t.Errorf("sink saw %q, want %q", got, c.calls)
			}
			if got := h.d.dialed(); !slices.Equal(got, c.dials) {
				t.Errorf("dialed %v, want %v", got, c.dials)
			}
			end := "failed " + key1.Src.String()
			if c.recovers >= 0 {
				end = "recovered " + key1.Src.String()
				if hs := h.sink.hs; len(hs) != 1 || hs[0] != handshake(c.dials[c.recovers]) {
					t.Errorf("handshakes reported %+v, want that of dial %d", hs, c.recovers)
				}
			}
			if got := h.writes(); !slices.Equal(got, []string{end}) {
				t.Errorf("wrote %q, want %q", got, end)
			}
			if h.d.timeout != 3*time.Second {
				t.Errorf("dial timeout %v, want the default 3s", h.d.timeout)
			}
		})
	}
}

// Adoption: nat cancels the dial in progress; its end is final (no retry)
// and reported Failed, whatever the dial's own error, so that nat hands the
// parked segments to the adopted flow.
func TestEngineCancel(t *testing.T) {
	h := newHarness(t, Config{Timeout: time.Minute}, newFakeDialer(hang), newFakeSink(opts(2)))
	h.e.Cancel(key2) // nothing in flight for it: ignored
	h.e.Dial(key1, opts(1))
	h.waitStarted(t)
	h.e.Cancel(key1)
	h.wait(t, 1)
	h.e.Cancel(key1) // again, after the end: ignored
	h.shutdown()
	if got, want := h.sink.log(), []string{"failed error"}; !slices.Equal(got, want) {
		t.Fatalf("sink saw %q, want %q", got, want)
	}
	if len(h.d.cancels) != 1 || !errors.Is(h.d.cancels[0], context.Canceled) || len(h.d.dialed()) != 1 {
		t.Fatalf("cancels %v, dials %v", h.d.cancels, h.d.dialed())
	}
	if h.d.timeout != time.Minute {
		t.Fatalf("dial timeout %v, want the configured minute", h.d.timeout)
	}
}

// Shutdown mid-dial: every dial in flight is cancelled, and Run returns only
// once each was reported Failed with FailShutdown, never retried; a dial
// asked for as the engine stops is reported the same way.
func TestEngineShutdown(t *testing.T) {
	h := newHarness(t, Config{}, newFakeDialer(hang, hang), newFakeSink(opts(3), opts(4)))
	h.e.Dial(key1, opts(1))
	h.e.Dial(key2, opts(2))
	h.waitStarted(t)
	h.waitStarted(t)
	h.shutdown()
	// Run has returned: both ends are in, none pending.
	if got, want := h.sink.log(), []string{"failed shutdown", "failed shutdown"}; !slices.Equal(got, want) {
		t.Fatalf("sink saw %q, want %q", got, want)
	}
	if len(h.d.cancels) != 2 || len(h.d.dialed()) != 2 {
		t.Fatalf("cancels %v, dials %v", h.d.cancels, h.d.dialed())
	}
	if got := h.writes(); len(got) != 2 {
		t.Fatalf("wrote %q, want the two Failed answers", got)
	}

	// A Dial queued before a Run whose context already ended.
	sink := newFakeSink()
	e := New(Config{}, newFakeDialer(hang), func([]byte) {}, func() int64 { return 1 }, zerolog.Nop())
	e.Dial(key1, opts(1))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.Run(ctx, sink); err != nil {
		t.Fatal(err)
	}
	if got, want := sink.log(), []string{"failed shutdown"}; !slices.Equal(got, want) {
		t.Fatalf("a dial asked for while stopping: sink saw %q, want %q", got, want)
	}
	if err := e.Run(ctx, sink); err == nil {
		t.Fatal("a second Run did not fail")
	}
}

// Many recoveries at once, each with its own script position: every one is
// reported once.
func TestEngineMany(t *testing.T) {
	const n = 200
	script := make([]step, n)
	for i := range script {
		script[i] = []step{succeed, timeOut, refuse}[i%3]
	}
	h := newHarness(t, Config{Attempts: 1}, newFakeDialer(script...), newFakeSink())
	for i := range n {
		h.e.Dial(nat.Key{Proto: 6, Src: netip.AddrPortFrom(netip.MustParseAddr("198.18.1.2"), uint16(1000+i)), Dst: key1.Dst}, opts(1))
	}
	h.wait(t, n)
	h.shutdown()
	count := map[string]int{}
	for _, c := range h.sink.log() {
		count[c]++
	}
	if count["recovered"] != 67 || count["failed timeout"] != 67 || count["failed refused"] != 66 || len(h.writes()) != n {
		t.Fatalf("ends %v, %d writes; want 67 recovered, 67 timeouts, 66 refused, %d writes", count, len(h.writes()), n)
	}
}
