package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"holdfast/daemon/adminapi"
	"holdfast/internal/unixhttp"

	"github.com/rs/zerolog"
)

// defaultAdminSocket includes the TUN name: directors in different network
// namespaces share one filesystem.
func defaultAdminSocket(tun string) string { return "/run/holdfast/" + tun + ".sock" }

// serveAdmin serves h on the unix socket path until the returned stop (the
// lab supervisor's socket; the director's is served by package daemon).
func serveAdmin(path string, h http.Handler, log zerolog.Logger) (func(), error) {
	stop, err := unixhttp.Serve(path, h, log)
	switch {
	case errors.Is(err, unixhttp.ErrInUse):
		return nil, fmt.Errorf("--admin-socket %s: another holdfast is listening there (use another --tun or --admin-socket)", path)
	case err != nil:
		return nil, fmt.Errorf("--admin-socket: %w", err)
	}
	return stop, nil
}

// writeJSON answers a request of the lab supervisor's socket.
func writeJSON(w http.ResponseWriter, v any) { unixhttp.WriteJSON(w, v) }

// adminClient calls a unix-socket JSON API with the CLI's words for an
// unreachable socket (the lab supervisor's; the director's is directorClient).
type adminClient struct{ *unixhttp.Client }

func newAdminClient(path string) *adminClient { return &adminClient{unixhttp.NewClient(path)} }

// do sends a request and decodes the JSON answer into out.
func (c *adminClient) do(method, url string, body, out any) error {
	return unreachable(c.Do(context.Background(), method, url, body, out))
}

// unreachable points an error that reached no server at --admin-socket.
func unreachable(err error) error {
	if errors.Is(err, unixhttp.ErrUnreachable) {
		return fmt.Errorf("%w (is holdfast run --tun ... running? see --admin-socket)", err)
	}
	return err
}

// directorClient is a director's admin API client with the CLI's words for
// its errors: the flag that finds the socket, and the flags a refused
// change names.
type directorClient struct{ *adminapi.Client }

// flagError turns an error of the API into the CLI's: an answer that names
// a field of the request names the flag of the same name.
func flagError(err error) error {
	if err = unreachable(err); err == nil || errors.Is(err, unixhttp.ErrUnreachable) {
		return err
	}
	msg := err.Error()
	for _, f := range adminapi.RealChangeFields {
		if rest, ok := strings.CutPrefix(msg, f); ok && (strings.HasPrefix(rest, ":") || strings.HasPrefix(rest, " ")) {
			return errors.New("--" + msg)
		}
	}
	return err
}

func (c *directorClient) conns() ([]adminapi.Conn, error) {
	out, err := c.Conns(context.Background())
	return out, flagError(err)
}

func (c *directorClient) stats() (map[string]any, error) {
	var out map[string]any
	return out, flagError(c.Stats(context.Background(), &out))
}

func (c *directorClient) services() ([]adminapi.Service, error) {
	out, err := c.Services(context.Background())
	return out, flagError(err)
}

func (c *directorClient) changeReal(ch adminapi.RealChange) error {
	_, err := c.ChangeReal(context.Background(), ch)
	return flagError(err)
}
