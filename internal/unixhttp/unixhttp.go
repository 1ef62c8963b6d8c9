// Package unixhttp serves and calls HTTP with JSON bodies over a unix
// socket: the director's admin API and the lab supervisor's control socket.
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
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// ErrInUse says a live process already listens on the socket.
var ErrInUse = errors.New("another process is listening there")

// Serve listens on the unix socket path (mode 0600, owned by the running
// user) and serves h until the returned stop is called. A socket file left
// by a killed process is replaced; one a live process listens on is
// ErrInUse. stop lets answers in progress finish (up to 2 s), then removes
// the socket file.
func Serve(path string, h http.Handler, log zerolog.Logger) (stop func(), err error) {
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
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
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
		os.Remove(path)
	}, nil
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
		return fmt.Errorf("socket %s: %w: %w", c.Path, ErrUnreachable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var msg [512]byte
		n, _ := io.ReadFull(resp.Body, msg[:])
		return errors.New(string(bytes.TrimRight(msg[:n], "\r\n")))
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
