package balancer

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Parsing shared by the CLI flags and the config file. Errors name what they
// got and what they expect but not where it came from: callers prefix them
// with the flag (--real) or the config path (config FILE: services[1]: ...).

const (
	realSyntax    = "expected ADDR:PORT[*WEIGHT][,id=N], e.g. 198.18.10.11:80*2"
	serviceSyntax = "expected PROTO:VIP:PORT with PROTO tcp or udp, e.g. tcp:198.18.0.10:80"
	maxWeight     = 65535 // as IPVS (ipvsadm -w).
)

// ParseReal parses ADDR:PORT[*WEIGHT][,id=N], e.g. 198.18.10.11:80*2,id=3
// or [2001:db8::1]:80. The weight defaults to 1 and may be 0..65535 (0
// quiesces the real). N is the real's timestamp cookie id, 1..MaxCookieID
// (what a service's cookie width allows is AssignCookieIDs' to check); id is
// 0 when none is given.
func ParseReal(s string) (addr netip.AddrPort, weight int, id uint16, err error) {
	rest, idText, hasID := strings.Cut(s, ",")
	addrPort, weightText, hasWeight := strings.Cut(rest, "*")
	ap, err := parseAddrPort(addrPort)
	if err == errSyntax {
		return netip.AddrPort{}, 0, 0, fmt.Errorf("invalid real %q: %s", s, realSyntax)
	}
	if err != nil {
		return netip.AddrPort{}, 0, 0, fmt.Errorf("invalid real %q: %w", s, err)
	}
	weight = 1
	if hasWeight {
		weight, err = parseWeight(weightText)
		if err != nil {
			return netip.AddrPort{}, 0, 0, fmt.Errorf("invalid real %q: %w", s, err)
		}
	}
	if hasID {
		if id, err = parseCookieID(idText); err != nil {
			return netip.AddrPort{}, 0, 0, fmt.Errorf("invalid real %q: %w", s, err)
		}
	}
	return ap, weight, id, nil
}

// parseCookieID reads "id=N", N decimal digits 1..MaxCookieID.
func parseCookieID(s string) (uint16, error) {
	n, ok := strings.CutPrefix(s, "id=")
	if !ok {
		return 0, fmt.Errorf("%q: expected id=N after the comma", s)
	}
	if n == "" || len(n) > 3 || strings.Trim(n, "0123456789") != "" {
		return 0, fmt.Errorf("cookie id %q: expected a number 1..%d", n, MaxCookieID)
	}
	v, _ := strconv.Atoi(n)
	if v < 1 || v > MaxCookieID {
		return 0, fmt.Errorf("cookie id %d: expected a number 1..%d", v, MaxCookieID)
	}
	return uint16(v), nil
}

// parseWeight accepts decimal digits only: strconv.Atoi would also take a
// sign, and "+2" or "-0" in a config file is more likely a typo than intent.
func parseWeight(s string) (int, error) {
	if s == "" || len(s) > 5 || strings.Trim(s, "0123456789") != "" {
		return 0, fmt.Errorf("weight %q: expected a number 0..%d", s, maxWeight)
	}
	w, _ := strconv.Atoi(s)
	if w > maxWeight {
		return 0, fmt.Errorf("weight %d: expected a number 0..%d", w, maxWeight)
	}
	return w, nil
}

// ParseService parses PROTO:VIP:PORT, e.g. tcp:198.18.0.10:80 or
// udp:[2001:db8::10]:53. PROTO is tcp or udp, in either case.
func ParseService(s string) (Proto, netip.AddrPort, error) {
	protoText, addrPort, _ := strings.Cut(s, ":")
	var proto Proto
	switch strings.ToLower(protoText) {
	case "tcp":
		proto = TCP
	case "udp":
		proto = UDP
	default:
		return 0, netip.AddrPort{}, fmt.Errorf("invalid service %q: %s", s, serviceSyntax)
	}
	ap, err := parseAddrPort(addrPort)
	if err == errSyntax {
		return 0, netip.AddrPort{}, fmt.Errorf("invalid service %q: %s", s, serviceSyntax)
	}
	if err != nil {
		return 0, netip.AddrPort{}, fmt.Errorf("invalid service %q: %w", s, err)
	}
	return proto, ap, nil
}

// errSyntax is parseAddrPort's error for text that is not ADDR:PORT at all;
// the caller then states the syntax it expects.
var errSyntax = errors.New("not ADDR:PORT")

// parseAddrPort parses ADDR:PORT and rejects what cannot be a VIP or a real:
// port 0 and the addresses AddrProblem names. An IPv4-mapped IPv6 address
// becomes plain IPv4 so that it compares equal to the same address written as
// IPv4. An IPv6 address with a port but no brackets gets its own message.
func parseAddrPort(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		if hint := BracketHint(s); hint != "" {
			return netip.AddrPort{}, errors.New(hint)
		}
		return netip.AddrPort{}, errSyntax
	}
	a := ap.Addr()
	if p := AddrProblem(a); p != "" {
		return netip.AddrPort{}, fmt.Errorf("address %s %s", a, p)
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, errors.New("port 0 is not allowed; expected 1..65535")
	}
	return netip.AddrPortFrom(a.Unmap(), ap.Port()), nil
}

// BracketHint says how to write s if it is an IPv6 address followed by a
// port without the brackets RFC 3986 (3.2.2) puts around the address:
// 2001:2::1:80 is read as [2001:2::1]:80, though it is also an IPv6 address
// alone; which was meant only the brackets tell. "" if s is not that.
func BracketHint(s string) string {
	i := strings.LastIndexByte(s, ':')
	if i < 0 || strings.ContainsAny(s, "[]") || strings.Count(s, ":") < 2 {
		return ""
	}
	host, port := s[:i], s[i+1:]
	a, err := netip.ParseAddr(host)
	if err != nil || !a.Is6() || port == "" || strings.Trim(port, "0123456789") != "" {
		return ""
	}
	return fmt.Sprintf("put IPv6 addresses in brackets: [%s]:%s", host, port)
}

// AddrProblem says why a cannot be a VIP, a real or a recovery address, or
// returns "": a zone (it names a host interface, which the director's TUN does
// not have), the unspecified address, multicast, and link-local unicast (never
// forwarded between links, so it cannot reach the director through a
// router), of either family. Loopback is not refused here: the health-check
// tests use reals on 127.0.0.1 (a recovery address refuses it itself). The
// text follows the address in a message: "address fe80::1 is link-local".
func AddrProblem(a netip.Addr) string {
	switch {
	case a.Zone() != "":
		return "has a zone, which is not supported"
	case a.IsUnspecified():
		return "is unspecified"
	case a.IsMulticast():
		return "is multicast"
	case a.IsLinkLocalUnicast():
		return "is link-local"
	}
	return ""
}

// ServiceConfig is one service as written in a config file (and assembled
// from CLI flags).
type ServiceConfig struct {
	Service     string   `json:"service"`     // PROTO:VIP:PORT
	Scheduler   string   `json:"scheduler"`   // rr, wrr, sh, dh or lc; "" = wrr
	Persistence string   `json:"persistence"` // Go duration, e.g. "30m"; "" = none
	Reals       []string `json:"reals"`       // ADDR:PORT[*WEIGHT][,id=N]
	Check       string   `json:"check"`       // none, tcp, http:/PATH[=STATUS]; "" = none
}

// DefaultScheduler is the scheduler of a ServiceConfig that names none.
const DefaultScheduler = "wrr"

// Build validates c and returns the Service it describes, with a fresh
// scheduler and fresh Real structs (flow counts zero, all up). An error starts
// with the field at fault (service, scheduler, persistence, reals, reals[i] or
// check).
func (c ServiceConfig) Build() (*Service, error) {
	proto, vip, err := ParseService(c.Service)
	if err != nil {
		return nil, fmt.Errorf("service: %w", err)
	}
	name := c.Scheduler
	if name == "" {
		name = DefaultScheduler
	}
	sched, err := NewScheduler(name)
	if err != nil {
		return nil, fmt.Errorf("scheduler: %w", err)
	}
	var persist time.Duration
	if c.Persistence != "" {
		persist, err = time.ParseDuration(c.Persistence)
		if err != nil || persist < 0 {
			return nil, fmt.Errorf("persistence: invalid duration %q: expected a non-negative Go duration, e.g. 30m or 1h30m", c.Persistence)
		}
	}
	var check Check
	if c.Check != "" {
		check, err = ParseCheck(c.Check)
		if err != nil {
			return nil, fmt.Errorf("check: %w", err)
		}
	}
	if c.Reals == nil {
		// Missing, as opposed to an empty list: a service with no real
		// yet (it drops its new flows, counted as no_real, until `real
		// add`), as `service dump` writes one whose reals were all
		// removed, and as ipvsadm -S does.
		return nil, fmt.Errorf("reals: no real server given for service %s; expected at least one ADDR:PORT[*WEIGHT] (or [] for none yet)", c.Service)
	}
	svc := &Service{Proto: proto, VIP: vip, Scheduler: sched, Persistence: persist,
		Reals: make([]*Real, 0, len(c.Reals)), Check: check}
	first := make(map[netip.AddrPort]int, len(c.Reals)) // real -> index where first given
	for i, s := range c.Reals {
		addr, weight, id, err := ParseReal(s)
		if err != nil {
			return nil, fmt.Errorf("reals[%d]: %w", i, err)
		}
		if j, dup := first[addr]; dup {
			return nil, fmt.Errorf("reals[%d]: duplicate real %s, already given as reals[%d]", i, addr, j)
		}
		if addr.Addr().Is4() != vip.Addr().Is4() {
			// VS/NAT rewrites addresses in place; it cannot translate
			// between IPv4 and IPv6.
			return nil, fmt.Errorf("reals[%d]: real %s and VIP %s are of different IP versions", i, addr, vip.Addr())
		}
		if addr == vip {
			return nil, fmt.Errorf("reals[%d]: real %s is the service's own VIP:PORT", i, addr)
		}
		first[addr] = i
		svc.Reals = append(svc.Reals, &Real{Addr: addr, Weight: weight, CookieID: id, CookieIDSet: id != 0})
	}
	return svc, nil
}

// ValidateServices rejects two services with the same protocol and VIP:PORT:
// a packet could not tell which one it belongs to. Errors name the services by
// their index in svcs, which is their position in the config file or on the
// command line.
func ValidateServices(svcs []*Service) error {
	type key struct {
		proto Proto
		vip   netip.AddrPort
	}
	first := make(map[key]int, len(svcs))
	for i, s := range svcs {
		if s == nil {
			return fmt.Errorf("services[%d]: missing service", i)
		}
		k := key{s.Proto, s.VIP}
		if j, dup := first[k]; dup {
			return fmt.Errorf("services[%d]: duplicate service %s, already given as services[%d]", i, s, j)
		}
		first[k] = i
		if s.Proto == UDP && s.Check.Kind != CheckNone {
			// A tcp or http check connects over TCP to the real's port:
			// a UDP real there refuses it, is marked down, and the
			// service is black-holed.
			return fmt.Errorf("services[%d]: service %s: the check %s probes its reals over TCP; a UDP service takes no check (none)", i, s, s.Check)
		}
	}
	return nil
}
