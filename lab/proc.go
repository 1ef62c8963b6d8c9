package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Line is one line a process wrote, without its newline.
type Line struct {
	Stderr bool
	Text   string
}

// Proc is a process started by the lab. Its output is kept line by line so a
// caller can wait for a line (a peer's readiness message, such as tcpdump's
// "listening on", or an operator's message) instead of sleeping; a
// director's readiness is its READY=1 instead (NS.StartReady).
// Methods are safe for concurrent use.
type Proc struct {
	Name string
	cmd  *exec.Cmd
	done chan struct{} // closed once the process is reaped and output flushed

	mu      sync.Mutex
	keep    int        // most lines kept (oldest go first); 0 means all
	dropped int        // lines no longer kept
	sink    func(Line) // also gets every line, in order, under mu; may be nil
	lines   []Line
	partial [2][]byte     // unterminated output of stdout, stderr
	changed chan struct{} // closed and replaced on every new line and on exit
	exited  bool
	state   *os.ProcessState
	waitErr error
	atExits []func() // run once it exited, before done is closed
}

// startProc starts cmd, capturing its output. The child gets SIGKILL if the
// process that started it dies, so a crashed test leaves no server behind.
func startProc(name string, cmd *exec.Cmd, o procOptions) (*Proc, error) {
	p := &Proc{Name: name, cmd: cmd, done: make(chan struct{}), changed: make(chan struct{}), keep: o.keep, sink: o.sink}
	cmd.Stdout = lineWriter{p, false}
	cmd.Stderr = lineWriter{p, true}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// A grandchild holding the output pipes must not block Wait forever.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		for i, b := range p.partial {
			if len(b) > 0 {
				p.add(Line{Stderr: i == 1, Text: string(b)})
			}
		}
		p.exited, p.state, p.waitErr = true, cmd.ProcessState, err
		close(p.changed)
		atExits := p.atExits
		p.mu.Unlock()
		for _, f := range atExits {
			f()
		}
		close(p.done)
	}()
	return p, nil
}

// atExit arranges for f to run once the process has exited, before Done is
// closed; at once if it has exited already.
func (p *Proc) atExit(f func()) {
	p.mu.Lock()
	if !p.exited {
		p.atExits = append(p.atExits, f)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	f()
}

type lineWriter struct {
	p      *Proc
	stderr bool
}

func (w lineWriter) Write(b []byte) (int, error) {
	p := w.p
	i := 0
	if w.stderr {
		i = 1
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	buf := append(p.partial[i], b...)
	added := false
	for {
		j := bytes.IndexByte(buf, '\n')
		if j < 0 {
			break
		}
		p.add(Line{Stderr: w.stderr, Text: strings.TrimSuffix(string(buf[:j]), "\r")})
		buf = buf[j+1:]
		added = true
	}
	p.partial[i] = append([]byte(nil), buf...)
	if added {
		close(p.changed)
		p.changed = make(chan struct{})
	}
	return len(b), nil
}

// procOptions shape what a Proc keeps of its output. The zero value keeps
// every line: a test's processes are short-lived, while the supervisor's
// directors run for as long as a lab is up and pass their lines on to its
// log rings (logring.go).
type procOptions struct {
	keep int        // most lines kept, 0 for all
	sink func(Line) // gets every line too; must not block or call p
}

// add records one complete line; p.mu is held.
func (p *Proc) add(l Line) {
	p.lines = append(p.lines, l)
	if p.keep > 0 && len(p.lines) > p.keep {
		n := len(p.lines) - p.keep
		p.lines = append(p.lines[:0:0], p.lines[n:]...)
		p.dropped += n
	}
	if p.sink != nil {
		p.sink(l)
	}
}

// PID returns the process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Signal sends sig to the process (by PID; os.ErrProcessDone once it exited).
func (p *Proc) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Done is closed when the process has exited and its output is complete.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait waits for the process to exit or ctx to end, whichever comes first,
// and returns its state (exit code, or the signal that ended it).
func (p *Proc) Wait(ctx context.Context) (*os.ProcessState, error) {
	select {
	case <-p.done:
		return p.state, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%s (pid %d) still running: %w", p.Name, p.PID(), ctx.Err())
	}
}

// Lines returns every complete line so far (of those kept), stdout and stderr interleaved in
// the order they were read.
func (p *Proc) Lines() []Line {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Line(nil), p.lines...)
}

// Stderr returns the stderr lines so far, joined with newlines.
func (p *Proc) Stderr() string { return p.text(true) }

// Stdout returns the stdout lines so far, joined with newlines.
func (p *Proc) Stdout() string { return p.text(false) }

func (p *Proc) text(stderr bool) string {
	var b strings.Builder
	for _, l := range p.Lines() {
		if l.Stderr == stderr {
			b.WriteString(l.Text)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// ErrExited is returned by WaitForLine when the process exits first.
var ErrExited = errors.New("process exited")

// WaitForLine returns the first line (from the start of the output, or of
// what is kept of it) that match accepts. It fails when ctx ends or when
// the process exits without such a line (wrapping ErrExited, with the exit
// state).
func (p *Proc) WaitForLine(ctx context.Context, match func(Line) bool) (Line, error) {
	next := 0 // counts every line, dropped ones included
	for {
		p.mu.Lock()
		next = max(next, p.dropped)
		lines, changed, exited, state := p.lines[next-p.dropped:], p.changed, p.exited, p.state
		p.mu.Unlock()
		for _, l := range lines {
			if match(l) {
				return l, nil
			}
		}
		next += len(lines)
		if exited {
			return Line{}, fmt.Errorf("%s (pid %d): %w (%v) before the line appeared", p.Name, p.PID(), ErrExited, state)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return Line{}, fmt.Errorf("%s (pid %d): waiting for a line: %w", p.Name, p.PID(), ctx.Err())
		}
	}
}

// stop kills the process if it is still running and waits for it (bounded).
func (p *Proc) stop() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := p.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("lab: kill %s (pid %d): %w", p.Name, p.PID(), err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("lab: %s (pid %d) still running 10s after SIGKILL", p.Name, p.PID())
	}
}
