package daemon

import (
	"net"
	"os"
	"strconv"
)

// Readiness, in systemd's notify protocol (sd_notify(3)): one datagram per
// state change on the unixgram socket the service manager names in
// NOTIFY_SOCKET. A name starting with '@' is in the abstract namespace; Go's
// net package maps the '@' to the leading NUL byte itself.

const (
	stateStopping = "STOPPING=1"
)

// stateReady is READY=1 with our pid: a service manager that did not start
// this process itself (the lab, a wrapper) learns which process is serving.
func stateReady() string { return "READY=1\nMAINPID=" + strconv.Itoa(os.Getpid()) }

// notify sends state to the socket at path; "" sends nothing.
func notify(path, state string) error {
	if path == "" {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}
