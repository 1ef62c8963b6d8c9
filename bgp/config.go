package bgp

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/rs/zerolog"
)

// Timer defaults. A director behind ECMP is only as good as the time the
// routers take to notice it is gone. With the hold time RFC 4271 suggests
// (90 s, keepalive 30 s) a director that dies behind a link that stays up
// blackholes its share of the flows for a minute and a half; load balancers
// that announce their own VIPs run short timers (or BFD) for that reason.
// 9 s hold with a 3 s keepalive (a third of the hold time, as RFC 4271
// section 10 suggests) lets two keepalives be lost before the session
// drops, and is within what every router accepts (a hold time is 0 or at
// least 3 s). A link that goes down takes the session with it at once on
// the router's side; the hold time is for the case where it does not.
const (
	DefaultHoldTime     = 9 * time.Second
	DefaultKeepalive    = 3 * time.Second
	DefaultConnectRetry = 5 * time.Second
)

// Config is a Speaker's configuration. The zero values of the timers take
// the defaults above.
type Config struct {
	LocalAS  uint32
	PeerAS   uint32     // every peer's AS (eBGP: not LocalAS)
	RouterID netip.Addr // an IPv4 address (RFC 4271's BGP Identifier)

	// ClientPeers are the client-side routers: they get SetClientSide's
	// prefixes (the VIPs). RealPeers are the real servers' routers: they get
	// SetRealSide's (recovery addresses and announce prefixes). A router
	// may not be in both lists.
	ClientPeers []netip.Addr
	RealPeers   []netip.Addr

	// MED is the MULTI_EXIT_DISC of every path announced (a pair: the
	// backup announces a higher one).
	MED uint32

	HoldTime  time.Duration
	Keepalive time.Duration
	// ConnectRetry is how long a session that could not be opened, or that
	// dropped, waits before the next attempt (GoBGP's default is 120 s, far
	// too long for a router that restarts).
	ConnectRetry time.Duration
	// Password, when set, signs every session with TCP-MD5 (RFC 2385).
	Password string
	// Port is the peers' BGP port; 0 means 179. For tests.
	Port uint16

	// Log gets the session changes, announcements and withdrawals, and
	// GoBGP's own warnings; the zero Logger discards them.
	Log zerolog.Logger
}

// withDefaults returns c with the zero timers set to the defaults.
func (c Config) withDefaults() Config {
	if c.HoldTime == 0 {
		c.HoldTime = DefaultHoldTime
	}
	if c.Keepalive == 0 {
		c.Keepalive = DefaultKeepalive
	}
	if c.ConnectRetry == 0 {
		c.ConnectRetry = DefaultConnectRetry
	}
	if c.Port == 0 {
		c.Port = 179
	}
	return c
}

// validate says what is wrong with c (after withDefaults).
func (c Config) validate() error {
	var errs []error
	if c.LocalAS == 0 {
		errs = append(errs, errors.New("local AS is 0"))
	}
	if c.PeerAS == 0 {
		errs = append(errs, errors.New("peer AS is 0"))
	}
	if c.LocalAS != 0 && c.LocalAS == c.PeerAS {
		errs = append(errs, fmt.Errorf("peer AS %d is the local AS: holdfast speaks eBGP only", c.PeerAS))
	}
	if !c.RouterID.Is4() || c.RouterID.IsUnspecified() {
		errs = append(errs, fmt.Errorf("router ID %v: want a non-zero IPv4 address", c.RouterID))
	}
	if len(c.ClientPeers)+len(c.RealPeers) == 0 {
		errs = append(errs, errors.New("no peer"))
	}
	seen := map[netip.Addr]Side{}
	for _, l := range []struct {
		side  Side
		peers []netip.Addr
	}{{ClientSide, c.ClientPeers}, {RealSide, c.RealPeers}} {
		for _, a := range l.peers {
			switch {
			case !a.IsValid() || a.IsUnspecified() || a.IsMulticast():
				errs = append(errs, fmt.Errorf("%s-side peer %v: want a unicast address", l.side, a))
			case a.Is4In6() || a.Zone() != "":
				errs = append(errs, fmt.Errorf("%s-side peer %v: want a plain IPv4 or IPv6 address", l.side, a))
			case seen[a] == l.side:
				errs = append(errs, fmt.Errorf("%s-side peer %v given twice", l.side, a))
			case seen[a] != 0:
				// One session per router: it would have to carry both sides'
				// prefixes, which the side split exists to keep apart.
				errs = append(errs, fmt.Errorf("peer %v is both a client-side and a real-side peer", a))
			}
			seen[a] |= l.side
		}
	}
	if c.HoldTime < 3*time.Second || c.HoldTime%time.Second != 0 || c.HoldTime > 65535*time.Second {
		errs = append(errs, fmt.Errorf("hold time %v: want whole seconds from 3s to 65535s (RFC 4271 4.2)", c.HoldTime))
	}
	if c.Keepalive < time.Second || c.Keepalive%time.Second != 0 || c.Keepalive > c.HoldTime/3 {
		errs = append(errs, fmt.Errorf("keepalive %v: want whole seconds from 1s to a third of the hold time (%v)", c.Keepalive, c.HoldTime/3))
	}
	if c.ConnectRetry < time.Second || c.ConnectRetry%time.Second != 0 {
		errs = append(errs, fmt.Errorf("connect retry %v: want whole seconds, at least 1s", c.ConnectRetry))
	}
	if len(c.Password) > 80 {
		// TCP_MD5SIG_MAXKEYLEN in linux/tcp.h.
		errs = append(errs, fmt.Errorf("password of %d bytes: Linux takes at most 80", len(c.Password)))
	}
	return errors.Join(errs...)
}
