package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"

	"holdfast/daemon/adminapi"
	"holdfast/internal/unixhttp"
)

// defaultAdminSocket is the admin socket without --admin-socket: an
// abstract unix socket named after the TUN. Linux scopes abstract names by
// network namespace (unix(7)), and so is a TUN name: two directors in two
// namespaces with the same --tun each get their own socket, and a client
// run in a namespace reaches that namespace's director, as `ip netns exec`
// users expect. A path keyed by the namespace (/run/holdfast/<netns
// inode>/<tun>.sock) would do the same, but leaves a file and a directory
// behind every killed director and namespace, needs a writable /run, and
// its key means nothing to an operator. The price of an abstract socket is
// that no file mode guards it: the server checks each caller's credentials
// instead (unixhttp.PeerAllowed: root or the director's user).
func defaultAdminSocket(tun string) string { return "@holdfast/" + tun }

// unreachable says an error that reached no server in a sentence: where
// the client looked, why it failed (the errno, not the HTTP client's chain
// of wrappers), and what to check.
func unreachable(err error) error {
	if !errors.Is(err, unixhttp.ErrUnreachable) {
		return err
	}
	why := "no answer"
	var errno syscall.Errno
	if errors.As(err, &errno) {
		why = errno.Error()
	}
	var ue *unixhttp.UnreachableError
	where := "the admin socket"
	if errors.As(err, &ue) {
		where = ue.Path
	}
	return noDirector(fmt.Sprintf("no director answers on %s (%s): is holdfast run --tun ... running in this network namespace? (see --tun, --admin-socket)", where, why))
}

// noDirector is unreachable's sentence; it is unixhttp.ErrUnreachable.
type noDirector string

func (e noDirector) Error() string        { return string(e) }
func (e noDirector) Is(target error) bool { return target == unixhttp.ErrUnreachable }

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

func (c *directorClient) info() (adminapi.Info, error) {
	out, err := c.Info(context.Background())
	return out, flagError(err)
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
