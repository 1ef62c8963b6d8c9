package bgp

import (
	"context"
	"net/netip"
	"slices"
	"time"

	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	bgppkt "github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

// Status is a snapshot of a Speaker for `holdfast bgp` and /stats: its
// sessions (as `birdc show protocols`), what it announces (as `show route
// export`) and its counters.
type Status struct {
	LocalAS  uint32
	RouterID netip.Addr
	MED      uint32
	Peers    []PeerStatus // client-side first, then real-side, each by address

	// ClientSide and RealSide are the prefixes announced to each side now;
	// empty after WithdrawAll.
	ClientSide []netip.Prefix
	RealSide   []netip.Prefix
	Withdrawn  bool // WithdrawAll was called: nothing more is announced

	Counters Counters
}

// PeerStatus is one session.
type PeerStatus struct {
	Addr  netip.Addr
	Side  Side
	AS    uint32
	State string    // Idle, Connect, Active, OpenSent, OpenConfirm, Established
	Since time.Time // the last state change
	// Uptime is how long the session has been established; 0 when it is not.
	Uptime time.Duration
	// LastError is why the established session last went down (the
	// notification or the TCP error, as GoBGP reports it); empty if it
	// never did. A session that never came up has none: GoBGP keeps its
	// connect errors to its debug log.
	LastError string
	// Advertised is the number of prefixes the peer has been sent and not
	// withdrawn; Received those it sent us (GoBGP's Adj-RIB-In); Imported
	// those of its routes in the speaker's RIB, which the import policy
	// keeps at 0.
	Advertised, Received, Imported uint64
	// UpdatesSent counts the UPDATE messages sent to the peer, as GoBGP
	// counts them.
	UpdatesSent uint64
}

// Counters are the speaker's cumulative counts since New.
type Counters struct {
	Establishments uint64 // sessions that reached Established
	Drops          uint64 // established sessions that went down
	UpdatesSent    uint64 // UPDATE messages sent, all peers (GoBGP's per-peer counts, added up)
	Announcements  uint64 // paths announced or changed (one per prefix and change)
	Withdrawals    uint64 // paths withdrawn
}

// Status returns a snapshot. After Close the sessions are reported as the
// speaker last saw them.
func (s *Speaker) Status() Status {
	type gobgpPeer struct {
		advertised, received, imported, updates uint64
	}
	got := map[netip.Addr]gobgpPeer{}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if !closed {
		// ListPeer goes through GoBGP's event loop: not under mu, which the
		// watch callback that loop feeds takes.
		_ = s.srv.ListPeer(context.Background(), &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
			a, err := netip.ParseAddr(p.GetConf().GetNeighborAddress())
			if err != nil {
				return
			}
			var g gobgpPeer
			for _, af := range p.GetAfiSafis() {
				g.advertised += af.GetState().GetAdvertised()
				g.received += af.GetState().GetReceived()
			}
			g.updates = p.GetState().GetMessages().GetSent().GetUpdate()
			got[a] = g
		})
		// GoBGP's Accepted counts what passed the peer's own policies, not
		// the global import policy: count what is in the RIB instead.
		for _, f := range []bgppkt.Family{bgppkt.RF_IPv4_UC, bgppkt.RF_IPv6_UC} {
			_ = s.srv.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_GLOBAL, Family: f},
				func(_ bgppkt.NLRI, paths []*apiutil.Path) {
					for _, p := range paths {
						if p.PeerAddress.IsValid() && !p.PeerAddress.IsUnspecified() {
							g := got[p.PeerAddress]
							g.imported++
							got[p.PeerAddress] = g
						}
					}
				})
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	st := Status{
		LocalAS:    s.cfg.LocalAS,
		RouterID:   s.cfg.RouterID,
		MED:        s.cfg.MED,
		ClientSide: announced(s.cur, ClientSide),
		RealSide:   announced(s.cur, RealSide),
		Withdrawn:  s.withdrawn,
		Counters:   s.counters,
	}
	for a, p := range s.peers {
		g := got[a]
		ps := PeerStatus{
			Addr: a, Side: p.side, AS: s.cfg.PeerAS,
			State: stateName(p.state), Since: p.since, LastError: p.lastError,
			Advertised: g.advertised, Received: g.received, Imported: g.imported,
			UpdatesSent: g.updates,
		}
		if !p.upSince.IsZero() {
			ps.Uptime = now.Sub(p.upSince)
		}
		st.Counters.UpdatesSent += g.updates
		st.Peers = append(st.Peers, ps)
	}
	slices.SortFunc(st.Peers, func(x, y PeerStatus) int {
		if x.Side != y.Side {
			return int(x.Side) - int(y.Side)
		}
		return x.Addr.Compare(y.Addr)
	})
	return st
}
