package main

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"holdfast/balancer"
	"holdfast/daemon"
	"holdfast/nat"

	"github.com/urfave/cli/v2"
)

// parseRecovery reads the Recovery flag group.
func parseRecovery(c *cli.Context) (daemon.Recovery, error) {
	var r daemon.Recovery
	switch v := c.String(recoveryFlag.Name); v {
	case "on":
		r.Enabled = true
	case "off":
	default:
		return r, usagef("--recovery %q: expected on or off", v)
	}
	for _, s := range c.StringSlice(recoveryAddrFlag.Name) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return r, usagef("--recovery-addr %q: expected a unicast IPv4 or IPv6 address, e.g. 198.18.200.1 or 2001:2:0:30::1", s)
		}
		// The recovery address is routed to the director from beyond
		// its links (and shared by a pair): an IPv6 one is global
		// unicast, as a VIP is, and neither is loopback (the kernel
		// routes no loopback address out of the host).
		p := balancer.AddrProblem(a)
		if p == "" && a.IsLoopback() {
			p = "is loopback"
		}
		if p != "" {
			return r, usagef("--recovery-addr %q: %s; expected a unicast IPv4 or global unicast IPv6 address, e.g. 198.18.200.1 or 2001:2:0:30::1", s, p)
		}
		a = a.Unmap()
		if slices.Contains(r.Addrs, a) {
			return r, usagef("--recovery-addr %s given twice", a)
		}
		r.Addrs = append(r.Addrs, a)
	}
	if r.Enabled && len(r.Addrs) == 0 {
		return r, usagef("--recovery=on needs --recovery-addr ADDR (an address routed to the directors, not on the reals' link), or --recovery=off")
	}
	var err error
	r.ID = c.Int(directorIDFlag.Name)
	if r.PortLo, r.PortHi, err = nat.DirectorPorts(r.ID); err != nil {
		return r, usagef("--director-id %d: expected 1..4", c.Int(directorIDFlag.Name))
	}
	if s := c.String(recoveryPortsFlag.Name); s != "" {
		if r.PortLo, r.PortHi, err = parsePortRange(s); err != nil {
			return r, usagef("--recovery-ports %q: expected LO-HI with 1 <= LO <= HI <= 65535, e.g. 10000-22999", s)
		}
	}
	if r.WScale = c.Int(recoveryWScaleFlag.Name); r.WScale < 0 || r.WScale > 14 {
		return r, usagef("--recovery-wscale %d: expected 0..14", r.WScale)
	}
	if r.MSS = c.Int(recoveryMSSFlag.Name); r.MSS != 0 && (r.MSS < 536 || r.MSS > 65495) {
		return r, usagef("--recovery-mss %d: expected 536..65495 (or unset for the TUN MTU - 40 on IPv4, - 60 on IPv6)", r.MSS)
	}
	if r.Timeout = c.Duration(recoveryTimeoutFlag.Name); r.Timeout <= 0 {
		return r, usagef("--recovery-timeout %s: expected a positive duration, e.g. 3s", r.Timeout)
	}
	if r.Rate = c.Int(recoveryRateFlag.Name); r.Rate < 1 {
		return r, usagef("--recovery-rate %d: expected a positive number of recoveries per second", r.Rate)
	}
	if r.MaxInflight = c.Int(recoveryMaxInflightFlag.Name); r.MaxInflight < 1 {
		return r, usagef("--recovery-max-inflight %d: expected a positive number", r.MaxInflight)
	}
	for _, s := range c.StringSlice(recoveryAllowFlag.Name) {
		p, err := netip.ParsePrefix(s)
		if err != nil || p.Addr().Is4In6() {
			// netip refuses a zone in a prefix; an IPv4-mapped one
			// would match no client (nat sees IPv4 as IPv4).
			return r, usagef("--recovery-allow %q: expected an IPv4 or IPv6 CIDR prefix, e.g. 198.18.0.0/15 or 2001:2::/48", s)
		}
		if p.Masked() != p {
			return r, usagef("--recovery-allow %q: host bits set; expected a network prefix (%s?)", s, p.Masked())
		}
		r.Allow = append(r.Allow, p)
	}
	if r.ParkBytes, err = parseBytes(c.String(parkBytesFlag.Name)); err != nil || r.ParkBytes < 65536 {
		return r, usagef("--park-bytes %q: expected a size of at least 64KiB, e.g. 64MiB", c.String(parkBytesFlag.Name))
	}
	if r.PrefixLen4 = c.Int(recoveryPrefixLen4Flag.Name); r.PrefixLen4 < 1 || r.PrefixLen4 > 32 {
		return r, usagef("--recovery-prefix-len4 %d: expected 1..32", r.PrefixLen4)
	}
	if r.PrefixLen6 = c.Int(recoveryPrefixLen6Flag.Name); r.PrefixLen6 < 1 || r.PrefixLen6 > 128 {
		return r, usagef("--recovery-prefix-len6 %d: expected 1..128", r.PrefixLen6)
	}
	if r.PrefixInflight = c.Int(recoveryPrefixInflightFlag.Name); r.PrefixInflight < 1 {
		return r, usagef("--recovery-prefix-inflight %d: expected a positive number", r.PrefixInflight)
	}
	if r.PrefixFlows = c.Int(recoveryPrefixFlowsFlag.Name); r.PrefixFlows < 1 {
		return r, usagef("--recovery-prefix-flows %d: expected a positive number", r.PrefixFlows)
	}
	if r.UnconfirmedTimeout = c.Duration(timeoutRecoveredUnconfirmedFlag.Name); r.UnconfirmedTimeout <= 0 {
		return r, usagef("--timeout-recovered-unconfirmed %s: expected a positive duration, e.g. 10s", r.UnconfirmedTimeout)
	}
	if r.CookieBits = c.Int(tsCookieBitsFlag.Name); r.CookieBits < 0 || r.CookieBits > nat.MaxCookieBits {
		return r, usagef("--ts-cookie-bits %d: expected 0..%d (0: no timestamp cookies)", r.CookieBits, nat.MaxCookieBits)
	}
	return r, nil
}

func parsePortRange(s string) (uint16, uint16, error) {
	lo, hi, ok := strings.Cut(s, "-")
	if !ok {
		return 0, 0, strconv.ErrSyntax
	}
	l, err := strconv.ParseUint(lo, 10, 16)
	if err != nil {
		return 0, 0, err
	}
	h, err := strconv.ParseUint(hi, 10, 16)
	if err != nil || l == 0 || h < l {
		return 0, 0, strconv.ErrRange
	}
	return uint16(l), uint16(h), nil
}

// parseBytes reads "65536", "64KiB", "64MiB" or "1GiB".
func parseBytes(s string) (int, error) {
	mult := 1
	for _, u := range []struct {
		suffix string
		mult   int
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = n, u.mult
			break
		}
	}
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 0 || n > (1<<40)/mult {
		return 0, strconv.ErrSyntax
	}
	return n * mult, nil
}
