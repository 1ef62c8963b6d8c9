package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"holdfast/balancer"
	"holdfast/nat"
	"holdfast/stack/tun"
)

// Config is everything a director needs to run. The CLI builds it from
// flags and --config, validated there with messages that name the flags;
// Run checks it again, naming the fields, for callers that are not the CLI.
type Config struct {
	// Services are served from the start. Each Run needs services of its
	// own: the director keeps its flow counts in them.
	Services []*balancer.Service
	// Reload returns the services again, validated whole, on SIGHUP: the
	// file's new version. A real the file did not change since its last
	// version keeps its runtime state (reload.go). nil, or an error that
	// is ErrNothingToReload: SIGHUP changes nothing, logged.
	Reload func() ([]*balancer.Service, error)

	// TUN is the device to open (or attach to), unless Device is set.
	TUN string
	// Device, if not nil, is used instead of opening TUN (tests: an
	// in-memory tuntest device; no routes are set up then). Run closes it.
	Device tun.Device
	// Offload opens the TUN with a virtio-net header (segmentation and
	// checksum offload), falling back to a plain TUN where unsupported.
	Offload bool
	// Queues is the TUN's number of queues, each with a packet thread
	// (offload only); 0 means 1.
	Queues int
	// Nice is the packet threads' nice value (0: leave it).
	Nice int
	// MTU is the TUN's MTU: set by the route setup (0 there: the smallest
	// of the other links); without the route setup, 0 reads the device's.
	// Required with Device.
	MTU int
	// Routes, if Setup, routes the VIPs, the recovery addresses and the
	// real-server side into the TUN, and undoes that when Run returns.
	Routes Routes

	// FastPath is the kernel fast path's mode (fastpath.go; "": off).
	FastPath FastPathMode

	// BGP, if not nil, announces the VIPs and the recovery addresses with
	// the embedded speaker (bgp.go).
	BGP *BGP

	// Adoption: whether a real's packet with no flow is adopted (nat's
	// Config.Adoption; the zero value follows Recovery.Enabled).
	Adoption nat.AdoptMode

	Timeouts nat.Timeouts // every state's idle timeout, positive (nat.NewTimeouts)
	MaxFlows int          // most flows at once, positive
	Recovery Recovery

	// AdminSocket is the admin API's unix socket ("": no admin API).
	AdminSocket string
	// MetricsAddr and PprofAddr are ADDR:PORT to serve Prometheus metrics
	// and Go's profiles on ("": not served).
	MetricsAddr string
	PprofAddr   string
	// Checks is the timing of the health checks (zero: balancer.DefaultCheckTiming).
	Checks balancer.CheckTiming

	// HandleSignals makes Run stop on SIGINT and SIGTERM, reload on SIGHUP
	// and log the counters on SIGUSR1 (the process's signals: for main).
	HandleSignals bool
	// NotifySocket is the service manager's notify socket (systemd's
	// NOTIFY_SOCKET; a leading '@' is the abstract namespace): READY=1
	// once serving, STOPPING=1 when stopping. "": no notification.
	NotifySocket string
}

// Routes is the host plumbing Run sets up (see stack/host).
type Routes struct {
	Setup     bool
	RealIface string // the interface facing the real servers
	Table     int    // the policy routing table
}

// Recovery is the recovery settings.
type Recovery struct {
	Enabled bool
	// ID is the director's id (holdfast --director-id, which also picks
	// PortLo..PortHi): the admin API's /info names the director by it.
	ID int
	// Addrs are the recovery addresses (a netstack serves them even with
	// recovery off, so that a peer's recovered flows are not misrouted).
	Addrs          []netip.Addr
	PortLo, PortHi uint16
	WScale         int           // window scale of the recovery SYN
	MSS            int           // MSS of the recovery SYN; 0: MTU - 40
	Timeout        time.Duration // per handshake
	Rate           int           // recoveries started per second at most
	MaxInflight    int           // recoveries in flight at most
	Allow          []netip.Prefix
	ParkBytes      int // bytes parked at once, all flows
	// Budgets per client prefix (nat.RecoveryConfig); zero values take
	// nat's defaults.
	PrefixLen4, PrefixLen6 int // bits of a client's budget prefix
	PrefixInflight         int // recoveries in flight per prefix
	PrefixFlows            int // recovered flows (and recoveries) per prefix
	// UnconfirmedTimeout is the idle timeout of a recovered flow until
	// its client acks server data; 0: nat's default.
	UnconfirmedTimeout time.Duration
	// CookieBits is the width of the timestamp cookie, 0..
	// nat.MaxCookieBits (nat.Config.CookieBits); 0 turns cookies off. It
	// applies with recovery off too: a peer director may need the cookies.
	CookieBits int
}

// Serves returns an error naming the first service that r, enabled, has no
// recovery address for: a recovery dials the service's real from a recovery
// address, which must be of the real's IP version (no NAT46 or NAT64). Nil
// with recovery off: nothing is dialled then.
func (r Recovery) Serves(svcs []*balancer.Service) error {
	if !r.Enabled {
		return nil
	}
	for _, svc := range svcs {
		v4 := svc.VIP.Addr().Is4()
		if slices.ContainsFunc(r.Addrs, func(a netip.Addr) bool { return a.Unmap().Is4() == v4 }) {
			continue
		}
		version, have := "IPv6", "IPv4"
		if v4 {
			version, have = "IPv4", "IPv6"
		}
		return fmt.Errorf("service %s is %s and every recovery address is %s (a recovery dials the service's real from a recovery address of its IP version)", svc, version, have)
	}
	return nil
}

// withDefaults returns c with its zero values that have a default filled
// in, or an ErrInvalid error naming the first field that cannot work.
func (c Config) withDefaults() (Config, error) {
	switch {
	case len(c.Services) == 0:
		return c, invalid(PartServices, errors.New("no service configured"))
	case c.Device == nil && c.TUN == "":
		return c, invalid(PartDevice, errors.New("no TUN name and no device"))
	case c.Device != nil && c.Routes.Setup:
		return c, invalid(PartRoutes, errors.New("routes can only be set up for a TUN Run opens"))
	case c.Device != nil && c.MTU <= 0:
		return c, invalid(PartDevice, fmt.Errorf("MTU %d: expected the given device's MTU", c.MTU))
	case c.MTU < 0:
		return c, invalid(PartDevice, fmt.Errorf("MTU %d: expected 0 (auto) or more", c.MTU))
	case c.Queues < 0:
		return c, invalid(PartDevice, fmt.Errorf("queues %d: expected 1 or more", c.Queues))
	case c.Routes.Setup && c.Routes.RealIface == "":
		return c, invalid(PartRoutes, errors.New("route setup without the real servers' interface"))
	case c.MaxFlows <= 0:
		return c, invalid(PartFlows, fmt.Errorf("max flows %d: expected a positive number", c.MaxFlows))
	case validFastPath(c.FastPath) != nil:
		return c, validFastPath(c.FastPath)
	}
	for st, t := range c.Timeouts {
		if t <= 0 {
			return c, invalid(PartFlows, fmt.Errorf("timeout of state %s: %v, expected a positive duration", nat.State(st), time.Duration(t)))
		}
	}
	if c.Queues == 0 {
		c.Queues = 1
	}
	if c.Checks == (balancer.CheckTiming{}) {
		c.Checks = balancer.DefaultCheckTiming
	}
	if err := c.Checks.Validate(); err != nil {
		return c, invalid(PartChecks, err)
	}
	r := c.Recovery
	if r.CookieBits < 0 || r.CookieBits > nat.MaxCookieBits {
		return c, invalid(PartRecovery, fmt.Errorf("timestamp cookie bits %d: expected 0..%d", r.CookieBits, nat.MaxCookieBits))
	}
	if r.Enabled {
		switch {
		case len(r.Addrs) == 0:
			return c, invalid(PartRecovery, errors.New("recovery enabled without a recovery address"))
		case r.Serves(c.Services) != nil:
			return c, invalid(PartRecovery, r.Serves(c.Services))
		case r.Timeout <= 0:
			return c, invalid(PartRecovery, fmt.Errorf("timeout %v: expected a positive duration", r.Timeout))
		case r.Rate <= 0 || r.MaxInflight <= 0 || r.ParkBytes <= 0:
			return c, invalid(PartRecovery, fmt.Errorf("rate %d, max in flight %d, park bytes %d: expected positive numbers", r.Rate, r.MaxInflight, r.ParkBytes))
		case r.PrefixLen4 < 0 || r.PrefixLen4 > 32 || r.PrefixLen6 < 0 || r.PrefixLen6 > 128:
			return c, invalid(PartRecovery, fmt.Errorf("budget prefix lengths /%d (IPv4), /%d (IPv6): expected 1..32 and 1..128 (0: default)", r.PrefixLen4, r.PrefixLen6))
		case r.PrefixInflight < 0 || r.PrefixFlows < 0 || r.UnconfirmedTimeout < 0:
			return c, invalid(PartRecovery, fmt.Errorf("per-prefix in flight %d, flows %d, unconfirmed timeout %v: expected positive values (0: default)", r.PrefixInflight, r.PrefixFlows, r.UnconfirmedTimeout))
		}
	}
	for _, a := range []struct {
		p    Part
		addr string
	}{{PartMetrics, c.MetricsAddr}, {PartPprof, c.PprofAddr}} {
		if _, err := netip.ParseAddrPort(a.addr); a.addr != "" && err != nil {
			return c, invalid(a.p, fmt.Errorf("address %q: expected ADDR:PORT", a.addr))
		}
	}
	return c, nil
}
