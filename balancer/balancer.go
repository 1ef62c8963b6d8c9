package balancer

import (
	"net/netip"
	"strconv"
	"time"
)

// Proto is a transport protocol number as carried in the IPv4 header.
type Proto uint8

// Protocols a service can carry.
const (
	TCP Proto = 6
	UDP Proto = 17
)

// String returns "tcp" or "udp".
func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return "proto(" + strconv.Itoa(int(p)) + ")"
}

// Real is one real server of a service, and everything the director keeps
// about it. Addr and Weight are configuration; Down is its health; Removed and
// Rehome say it left its service at runtime; Active and Inactive are flow
// counts (IPVS semantics: active = ESTABLISHED TCP flows, inactive = every
// other flow), read by the lc scheduler; Traffic counts what crossed the
// director for it. The flow table (package nat) maintains the counts.
//
// Every field is guarded by nat's lock: schedulers read them under it, and
// whoever changes them (runtime weight changes, a Checker's onChange) takes it
// first. A Checker never writes a Real; it only reports.
type Real struct {
	Addr   netip.AddrPort
	Weight int // 0 = quiesced: no new flows, existing flows continue.

	// Down is true while the real fails its health check. A down real
	// takes no new flows, exactly as if its weight were 0, and keeps its
	// weight for when it comes back up; existing flows continue. The zero
	// value is up, so a real that is never checked is always up.
	Down bool

	// Removed is true once the real was taken out of its service at
	// runtime (weight 0). It keeps its place in Service.Reals, which flows
	// index, while flows still use it, and takes it back if added again.
	// Rehome is true if it was removed so that its flows move to other
	// reals rather than finish where they are.
	Removed bool
	Rehome  bool

	// CookieID is the real's id in the timestamp cookie (package nat,
	// cookie.go): 1..2^k-1, or 0 for none (cookies off, or a real beyond
	// the ids of its service). CookieIDSet says it was given explicitly
	// (",id=N"); else AssignCookieIDs derives it from the address. A
	// removed real keeps its id while flows may carry it.
	CookieID    uint16
	CookieIDSet bool

	Active   int
	Inactive int

	Traffic
}

// Traffic counts what crossed the director for one real: its flows and
// their packets and bytes.
//
// Conns is every flow ever created on the real (ipvsadm --stats Conns):
// new connections, and those a failover brought to this director (adopted,
// steered by a cookie or a probe, recovered), a cookie steer that the real
// then refused included. It never goes down.
type Traffic struct {
	Conns                uint64
	PacketsIn, BytesIn   uint64 // client -> real
	PacketsOut, BytesOut uint64 // real -> client
}

// Available reports whether the real may take a new flow: it has a weight and
// is not down. Schedulers pick only available reals; so must anything else
// that sends a new flow to a real (persistence, fallbacks).
func (r *Real) Available() bool { return r.Weight > 0 && !r.Down }

// Service is one virtual service: PROTO:VIP:PORT with its scheduler and reals.
type Service struct {
	Proto       Proto
	VIP         netip.AddrPort
	Scheduler   Scheduler
	Persistence time.Duration // 0 = none; else a client address keeps its real this long after its last flow.
	Reals       []*Real
	Check       Check // health check of every real; the zero Check is none.
}

// String returns the service as PROTO:VIP:PORT, the form ParseService reads.
func (s *Service) String() string {
	return s.Proto.String() + ":" + s.VIP.String()
}

// Scheduler picks the real for a new flow.
type Scheduler interface {
	// Name is the scheduler's short name: rr, wrr, sh, dh, lc, mh or mh:addr.
	Name() string
	// Pick returns the index in reals of the real for a new flow from client
	// to dst (the VIP:port), or -1 if no real can take a new flow (every
	// real has weight 0 or is down). It never returns a real that is not
	// Available, and must not allocate.
	Pick(reals []*Real, client, dst netip.AddrPort) int
}
