// Package unixhttp serves and calls HTTP with JSON bodies over a unix
// socket (a file, or an abstract socket with its callers' credentials
// checked): the director's admin API and the lab supervisor's control socket.
// Errors name the socket, not a flag: callers add the flag.
package unixhttp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// ErrInUse says a live process already listens on the socket.
var ErrInUse = errors.New("another process is listening there")

// Abstract reports whether path names a socket in Linux's abstract
// namespace (a leading '@', as Go's net package spells it): no file, gone
// with the last process that holds it, and scoped by network namespace
// (unix(7)). Nothing like a file mode guards it: Serve checks each peer's
// credentials instead (PeerAllowed).
func Abstract(path string) bool { return strings.HasPrefix(path, "@") }

// PeerAllowed is the rule for a client of an abstract socket, whose
// credentials the kernel gives (SO_PEERCRED): root, or the server's own
// user. It is what a socket file of mode 0600 owned by the server's user
// allows.
func PeerAllowed(peerUID, serverUID int) bool { return peerUID == 0 || peerUID == serverUID }

// Listen listens on the unix socket path: a file (mode 0600, owned by the
// running user; its directory is created) or, with a leading '@', an
// abstract socket. A socket file left by a killed process is replaced; a
// socket a live process listens on is ErrInUse. Listening before anything
// else is set up lets a caller refuse to start without undoing anything.
func Listen(path string) (net.Listener, error) {
	if Abstract(path) {
		ln, err := net.Listen("unix", path)
		if errors.Is(err, syscall.EADDRINUSE) {
			err = ErrInUse // only a live socket holds an abstract name
		}
		if err != nil {
			return nil, fmt.Errorf("socket %s: %w", path, err)
		}
		return ln, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("socket %s: %w", path, ErrInUse)
	}
	os.Remove(path) // a leftover of a killed run
	old := syscall.Umask(0o077)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	return ln, nil
}

// Serve listens on path (see Listen) and serves h until the returned stop
// is called (see ServeListener).
func Serve(path string, h http.Handler, log zerolog.Logger) (stop func(), err error) {
	ln, err := Listen(path)
	if err != nil {
		return nil, err
	}
	return ServeListener(ln, h, log), nil
}

// peerKey is the context key of a connection's peer check (ServeListener).
type peerKey struct{}

// peerCheck is the outcome of the credential check of one connection.
type peerCheck struct {
	uid int
	err error // the credentials could not be read
}

// ServeListener serves h on ln, a listener of Listen, until the returned
// stop is called: stop lets answers in progress finish (up to 2 s), then
// closes ln (which removes a socket file). On an abstract socket every
// request of a peer that is not PeerAllowed is refused (403, one line that
// says why).
func ServeListener(ln net.Listener, h http.Handler, log zerolog.Logger) (stop func()) {
	path := ln.Addr().String()
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	if Abstract(path) {
		self := os.Geteuid()
		srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
			uid, err := peerUID(c)
			return context.WithValue(ctx, peerKey{}, peerCheck{uid, err})
		}
		srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p, _ := r.Context().Value(peerKey{}).(peerCheck)
			switch {
			case p.err != nil:
				http.Error(w, fmt.Sprintf("socket %s: cannot read the caller's credentials: %v", path, p.err), http.StatusForbidden)
			case !PeerAllowed(p.uid, self):
				log.Warn().Str("socket", path).Int("uid", p.uid).Msg("refused a caller: not root, not the server's user")
				http.Error(w, fmt.Sprintf("socket %s: uid %d may not call this server (root or uid %d only)", path, p.uid, self), http.StatusForbidden)
			default:
				h.ServeHTTP(w, r)
			}
		})
	}
	done := make(chan struct{})
	go func() { // serves until stopped
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Str("socket", path).Msg("unix socket server")
		}
	}()
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if srv.Shutdown(sctx) != nil {
			srv.Close()
		}
		<-done
		if !Abstract(path) {
			os.Remove(path)
		}
	}
}

// peerUID reads the uid of a unix connection's peer, as the kernel
// recorded it when the peer connected (SO_PEERCRED, unix(7)).
func peerUID(c net.Conn) (int, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, fmt.Errorf("%T is not a unix connection", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var (
		cred *syscall.Ucred
		cerr error
	)
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, fmt.Errorf("SO_PEERCRED: %w", cerr)
	}
	return int(cred.Uid), nil
}

// WriteJSON writes v as indented JSON.
func WriteJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v) //nolint:errcheck // the client went away
}

// Client calls a server on a unix socket.
type Client struct {
	Path string
	HTTP *http.Client
}

// NewClient returns a client of the socket at path, with a 10 s timeout per
// call.
func NewClient(path string) *Client {
	return &Client{Path: path, HTTP: &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}}
}

// ErrUnreachable wraps the error of a call that reached no server.
var ErrUnreachable = errors.New("no server on the socket")

// UnreachableError is the error of a call that reached no server on Path:
// it is ErrUnreachable, and it wraps the dial's error.
type UnreachableError struct {
	Path string
	Err  error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("socket %s: %v: %v", e.Path, ErrUnreachable, e.Err)
}

// Is makes errors.Is(err, ErrUnreachable) hold.
func (e *UnreachableError) Is(target error) bool { return target == ErrUnreachable }

func (e *UnreachableError) Unwrap() error { return e.Err }

// Do sends a request (body as JSON, if not nil) and decodes the JSON answer
// into out. A non-200 answer is an error with the answer's first line.
func (c *Client) Do(ctx context.Context, method, url string, body, out any) error {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://unix"+url, r)
	if err != nil {
		return err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return &UnreachableError{Path: c.Path, Err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var msg [512]byte
		n, _ := io.ReadFull(resp.Body, msg[:])
		return errors.New(string(bytes.TrimRight(msg[:n], "\r\n")))
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
