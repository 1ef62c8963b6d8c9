package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// Readiness by systemd's notify protocol (sd_notify(3)): the lab starts a
// director with NOTIFY_SOCKET naming a unixgram socket of its own and waits
// for a datagram with the line READY=1, which `holdfast run` sends once it
// serves. Log text is for operators; this is the contract.

// notifySocketEnv is the variable sd_notify(3) reads.
const notifySocketEnv = "NOTIFY_SOCKET"

// notifyReady is the line that says the process is serving.
const notifyReady = "READY=1"

// notifySocket receives the notifications of one process.
//
// It is a path, not an abstract name: abstract unix sockets belong to a
// network namespace (unix(7)), and the process runs in another one than
// the lab, while a path is reached through the filesystem, which they share.
type notifySocket struct {
	dir   string
	path  string
	conn  *net.UnixConn
	ready chan struct{} // closed on the first datagram with a line READY=1
	read  chan struct{} // closed when the reader has stopped

	once      sync.Once
	closeOnce sync.Once
}

// sunPathMax is the longest socket path Linux takes (sizeof sun_path, less
// the terminating NUL).
const sunPathMax = 107

// listenNotify creates a notify socket at a unique path in a new directory
// of its own, mode 0700 (only this user, who runs the processes too, can
// send to it), and starts reading it.
func listenNotify() (*notifySocket, error) {
	base := os.TempDir()
	if len(base) > sunPathMax-40 { // room for the directory and socket names
		base = "/tmp"
	}
	dir, err := os.MkdirTemp(base, "holdfast-notify-")
	if err != nil {
		return nil, fmt.Errorf("lab: notify socket: %w", err)
	}
	path := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("lab: notify socket: %w", err)
	}
	s := &notifySocket{dir: dir, path: path, conn: conn, ready: make(chan struct{}), read: make(chan struct{})}
	go s.serve()
	return s, nil
}

// serve reads datagrams until the socket is closed.
func (s *notifySocket) serve() {
	defer close(s.read)
	// systemd reads at most this much of one notification (NOTIFY_BUFFER_MAX).
	buf := make([]byte, 4096)
	for {
		n, err := s.conn.Read(buf)
		if err != nil {
			return // closed
		}
		if hasLine(buf[:n], notifyReady) {
			s.once.Do(func() { close(s.ready) })
		}
	}
}

// hasLine reports whether msg, newline-separated assignments, has line.
func hasLine(msg []byte, line string) bool {
	for l := range bytes.SplitSeq(msg, []byte{'\n'}) {
		if string(l) == line {
			return true
		}
	}
	return false
}

// Close stops the reader and removes the socket and its directory.
func (s *notifySocket) Close() {
	s.closeOnce.Do(func() {
		s.conn.Close()
		<-s.read
		os.RemoveAll(s.dir)
	})
}

// command is exec.Command(argv...) with this process's environment but
// NOTIFY_SOCKET (withoutNotify), plus env.
func command(env []string, argv ...string) *exec.Cmd {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(withoutNotify(os.Environ()), env...)
	return cmd
}

// withoutNotify is environ without NOTIFY_SOCKET: a process the lab starts reports to
// the lab, never to whatever supervises the lab itself (systemd, when
// `holdfast lab up` runs as a service; keepalived speaks the protocol too).
func withoutNotify(environ []string) []string {
	out := make([]string, 0, len(environ)+1)
	for _, kv := range environ {
		if !strings.HasPrefix(kv, notifySocketEnv+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// startReady starts a process with start, passing it the NOTIFY_SOCKET
// assignment to add to its environment, and waits (bounded by ctx) until it
// sends READY=1. The socket lives as long as the process (its STOPPING=1
// finds it) and is removed before Done is closed. If the process exits
// first (the error wraps ErrExited) or ctx ends (the process is killed), the
// error carries its stderr.
func startReady(ctx context.Context, start func(env []string) (*Proc, error)) (*Proc, error) {
	s, err := listenNotify()
	if err != nil {
		return nil, err
	}
	p, err := start([]string{notifySocketEnv + "=" + s.path})
	if err != nil {
		s.Close()
		return nil, err
	}
	p.atExit(s.Close)
	select {
	case <-s.ready:
		return p, nil
	case <-p.Done():
		st, _ := p.Wait(context.Background())
		return nil, fmt.Errorf("%s (pid %d): %w (%v) before %s\n%s", p.Name, p.PID(), ErrExited, st, notifyReady, p.Stderr())
	case <-ctx.Done():
		err := fmt.Errorf("%s (pid %d): no %s: %w", p.Name, p.PID(), notifyReady, ctx.Err())
		if serr := p.stop(); serr != nil {
			err = errors.Join(err, serr)
		}
		return nil, fmt.Errorf("%w\n%s", err, p.Stderr())
	}
}
