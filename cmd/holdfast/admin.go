package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"holdfast/daemon/adminapi"
	"holdfast/internal/unixhttp"
)

// defaultAdminSocket includes the TUN name: directors in different network
// namespaces share one filesystem.
func defaultAdminSocket(tun string) string { return "/run/holdfast/" + tun + ".sock" }

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
