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

// Real is one real server of a service. Addr and Weight are configuration;
// Active and Inactive are flow counts maintained by the flow table (IPVS
// semantics: active = ESTABLISHED TCP flows, inactive = every other flow), read
// by the lc scheduler.
type Real struct {
	Addr   netip.AddrPort
	Weight int // 0 = quiesced: no new flows, existing flows continue.

	Active   int
	Inactive int
}

// Service is one virtual service: PROTO:VIP:PORT with its scheduler and reals.
type Service struct {
	Proto       Proto
	VIP         netip.AddrPort
	Scheduler   Scheduler
	Persistence time.Duration // 0 = none; else a client address keeps its real this long after its last flow.
	Reals       []*Real
}

// String returns the service as PROTO:VIP:PORT, the form ParseService reads.
func (s *Service) String() string {
	return s.Proto.String() + ":" + s.VIP.String()
}

// Scheduler picks the real for a new flow.
type Scheduler interface {
	// Name is the scheduler's short name: rr, wrr, sh, dh or lc.
	Name() string
	// Pick returns the index in reals of the real for a new flow from client
	// to dst (the VIP:port), or -1 if no real can take a new flow (every
	// weight is 0). It must not allocate.
	Pick(reals []*Real, client, dst netip.AddrPort) int
}
