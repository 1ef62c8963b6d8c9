package bgp

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	bgppkt "github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
	"github.com/rs/zerolog"
)

// Log field names.
const (
	fPeer   = "peer"
	fSide   = "side"
	fState  = "state"
	fPrefix = "prefix"
	fTo     = "to"
	fReason = "reason"
	fPeerAS = "peer_as"
	fMED    = "med"
	fWas    = "was"
)

// Names of the GoBGP defined sets and policies the speaker installs.
const (
	setClientPeers = "holdfast-client-peers"
	setRealPeers   = "holdfast-real-peers"
	setClientTag   = "holdfast-client-tag"
	setRealTag     = "holdfast-real-tag"
	policyExport   = "holdfast-export"
	policyImport   = "holdfast-import"
	globalRIB      = "global" // GoBGP's name for the global policy assignment
)

// ErrClosed is returned by a Speaker's methods after Close.
var ErrClosed = errors.New("bgp: speaker closed")

// Speaker is holdfast's BGP speaker: one GoBGP server with the configured
// peers, announcing what SetClientSide and SetRealSide were last given.
//
// Its methods are safe for concurrent use; path changes are serialized by
// mu, so two Set calls never interleave their updates. The GoBGP server and
// its goroutines (its event loop, one per peer, the watch callback) belong
// to the Speaker and end in Close.
type Speaker struct {
	cfg Config
	log zerolog.Logger
	srv *server.BgpServer

	stopWatch context.CancelFunc

	mu        sync.Mutex
	cur       map[netip.Prefix]Side // what is announced, to which sides
	withdrawn bool                  // WithdrawAll was called: announce nothing more
	closed    bool
	peers     map[netip.Addr]*peerTrack
	counters  Counters
}

// peerTrack is what the speaker remembers of a peer across GoBGP's events.
type peerTrack struct {
	side      Side
	state     bgppkt.FSMState
	since     time.Time // of the last state change
	upSince   time.Time // zero unless established
	lastError string
}

// New starts a Speaker: it configures GoBGP (no listener, import nothing,
// the export policy of the package comment) and adds the peers, which it
// then dials, and keeps dialling, on its own. Nothing is announced until
// SetClientSide or SetRealSide. ctx bounds the start only.
func New(ctx context.Context, cfg Config) (*Speaker, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("bgp: %w", err)
	}
	s := &Speaker{
		cfg:   cfg,
		log:   cfg.Log,
		cur:   map[netip.Prefix]Side{},
		peers: map[netip.Addr]*peerTrack{},
	}
	now := time.Now()
	for _, a := range cfg.ClientPeers {
		s.peers[a] = &peerTrack{side: ClientSide, state: bgppkt.BGP_FSM_IDLE, since: now}
	}
	for _, a := range cfg.RealPeers {
		s.peers[a] = &peerTrack{side: RealSide, state: bgppkt.BGP_FSM_IDLE, since: now}
	}
	s.srv = server.NewBgpServer(server.LoggerOption(slogToZerolog(cfg.Log), nil))
	go s.srv.Serve()
	if err := s.start(ctx); err != nil {
		s.srv.Stop()
		return nil, fmt.Errorf("bgp: %w", err)
	}
	s.log.Info().Uint32("local_as", cfg.LocalAS).Uint32(fPeerAS, cfg.PeerAS).
		Str("router_id", cfg.RouterID.String()).Uint32(fMED, cfg.MED).
		Str("hold_time", cfg.HoldTime.String()).Str("keepalive", cfg.Keepalive.String()).
		Bool("md5", cfg.Password != "").
		Int("client_peers", len(cfg.ClientPeers)).Int("real_peers", len(cfg.RealPeers)).
		Msg("bgp speaker started")
	return s, nil
}

func (s *Speaker) start(ctx context.Context) error {
	c := s.cfg
	if err := s.srv.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn:      c.LocalAS,
		RouterId: c.RouterID.String(),
		// No listener: holdfast opens its sessions; nobody opens one to it.
		ListenPort: -1,
	}}); err != nil {
		return fmt.Errorf("start: %w", err)
	}
	// Holdfast announces and never learns: reject every route received.
	// GoBGP runs the global import policy on the paths added locally too
	// (AddPath), so those are let in by name and the rest rejected.
	if err := s.srv.AddPolicy(ctx, &api.AddPolicyRequest{Policy: &api.Policy{
		Name: policyImport,
		Statements: []*api.Statement{{
			Name:       policyImport + "-local",
			Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_LOCAL},
			Actions:    &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_ACCEPT},
		}},
	}}); err != nil {
		return fmt.Errorf("import policy: %w", err)
	}
	if err := s.srv.SetPolicyAssignment(ctx, &api.SetPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
		Name:          globalRIB,
		Direction:     api.PolicyDirection_POLICY_DIRECTION_IMPORT,
		Policies:      []*api.Policy{{Name: policyImport}},
		DefaultAction: api.RouteAction_ROUTE_ACTION_REJECT,
	}}); err != nil {
		return fmt.Errorf("import policy: %w", err)
	}
	if err := s.exportPolicy(ctx); err != nil {
		return fmt.Errorf("export policy: %w", err)
	}
	// WatchEvent's ctx ends the watch: ours lives until Close, not the
	// caller's start-up context.
	watchCtx, cancel := context.WithCancel(context.Background())
	s.stopWatch = cancel
	if err := s.srv.WatchEvent(watchCtx, server.WatchEventMessageCallbacks{OnPeerUpdate: s.onPeer}, server.WatchPeer()); err != nil {
		cancel()
		return fmt.Errorf("watch peers: %w", err)
	}
	for a, p := range s.peers {
		if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: s.peerConf(a)}); err != nil {
			return fmt.Errorf("%s-side peer %s: %w", p.side, a, err)
		}
	}
	return nil
}

// peerConf is GoBGP's configuration of the session to a.
func (s *Speaker) peerConf(a netip.Addr) *api.Peer {
	c := s.cfg
	fam := &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	if a.Is6() {
		fam.Afi = api.Family_AFI_IP6
	}
	sec := func(d time.Duration) uint64 { return uint64(d / time.Second) }
	return &api.Peer{
		Conf: &api.PeerConf{
			NeighborAddress: a.String(),
			PeerAsn:         c.PeerAS,
			AuthPassword:    c.Password,
			Description:     "holdfast " + s.peers[a].side.String() + "-side",
		},
		Timers: &api.Timers{Config: &api.TimersConfig{
			HoldTime:          sec(c.HoldTime),
			KeepaliveInterval: sec(c.Keepalive),
			ConnectRetry:      sec(c.ConnectRetry),
			// After a drop GoBGP waits this long before it dials again
			// (30 s by default); a router that restarts should get its
			// routes back as soon as it listens.
			IdleHoldTimeAfterReset: sec(c.ConnectRetry),
		}},
		Transport: &api.Transport{
			PassiveMode: false,
			RemotePort:  uint32(c.Port),
		},
		// One family per session, the session's own (see the package
		// comment): next hop self is then always an address of the family.
		AfiSafis: []*api.AfiSafi{{Config: &api.AfiSafiConfig{Family: fam, Enabled: true}}},
	}
}

// exportPolicy installs the side split: a path goes to a peer of a side
// only if it carries that side's community, which is stripped on the way
// out; everything else is rejected.
func (s *Speaker) exportPolicy(ctx context.Context) error {
	neighbors := func(as []netip.Addr) []string {
		l := make([]string, 0, len(as))
		for _, a := range as {
			l = append(l, netip.PrefixFrom(a, a.BitLen()).String())
		}
		return l
	}
	sets := []*api.DefinedSet{
		{DefinedType: api.DefinedType_DEFINED_TYPE_NEIGHBOR, Name: setClientPeers, List: neighbors(s.cfg.ClientPeers)},
		{DefinedType: api.DefinedType_DEFINED_TYPE_NEIGHBOR, Name: setRealPeers, List: neighbors(s.cfg.RealPeers)},
		{DefinedType: api.DefinedType_DEFINED_TYPE_LARGE_COMMUNITY, Name: setClientTag, List: []string{"^" + s.tag(ClientSide).String() + "$"}},
		{DefinedType: api.DefinedType_DEFINED_TYPE_LARGE_COMMUNITY, Name: setRealTag, List: []string{"^" + s.tag(RealSide).String() + "$"}},
	}
	for _, d := range sets {
		if len(d.List) == 0 {
			// GoBGP refuses an empty set; a side without peers then has no
			// statement, and its paths are rejected by default.
			continue
		}
		if err := s.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: d}); err != nil {
			return fmt.Errorf("set %s: %w", d.Name, err)
		}
	}
	strip := &api.CommunityAction{Type: api.CommunityAction_TYPE_REMOVE, Communities: []string{
		"^" + s.tag(ClientSide).String() + "$", "^" + s.tag(RealSide).String() + "$",
	}}
	stmt := func(name, peers, tag string) *api.Statement {
		return &api.Statement{
			Name: name,
			Conditions: &api.Conditions{
				NeighborSet:       &api.MatchSet{Type: api.MatchSet_TYPE_ANY, Name: peers},
				LargeCommunitySet: &api.MatchSet{Type: api.MatchSet_TYPE_ANY, Name: tag},
			},
			Actions: &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_ACCEPT, LargeCommunity: strip},
		}
	}
	pol := &api.Policy{Name: policyExport}
	if len(s.cfg.ClientPeers) > 0 {
		pol.Statements = append(pol.Statements, stmt(policyExport+"-client", setClientPeers, setClientTag))
	}
	if len(s.cfg.RealPeers) > 0 {
		pol.Statements = append(pol.Statements, stmt(policyExport+"-real", setRealPeers, setRealTag))
	}
	if err := s.srv.AddPolicy(ctx, &api.AddPolicyRequest{Policy: pol}); err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	return s.srv.SetPolicyAssignment(ctx, &api.SetPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
		Name:          globalRIB,
		Direction:     api.PolicyDirection_POLICY_DIRECTION_EXPORT,
		Policies:      []*api.Policy{{Name: policyExport}},
		DefaultAction: api.RouteAction_ROUTE_ACTION_REJECT,
	}})
}

// tag is the large community (RFC 8092: our AS, 0, the side) that marks a
// path for side. It never leaves the speaker: the export policy strips it.
func (s *Speaker) tag(side Side) *bgppkt.LargeCommunity {
	return bgppkt.NewLargeCommunity(s.cfg.LocalAS, 0, uint32(side))
}

// SetClientSide sets the prefixes announced to the client-side peers (the
// VIPs): it announces those not announced yet and withdraws those no longer
// given. Giving the same set again changes nothing. After WithdrawAll it
// announces nothing.
func (s *Speaker) SetClientSide(ps []netip.Prefix) error { return s.set(ClientSide, ps) }

// SetRealSide sets the prefixes announced to the real-side peers (the
// recovery addresses and the announce prefixes), as SetClientSide does.
func (s *Speaker) SetRealSide(ps []netip.Prefix) error { return s.set(RealSide, ps) }

func (s *Speaker) set(side Side, ps []netip.Prefix) error {
	want, err := normalize(ps)
	if err != nil {
		return fmt.Errorf("bgp: %s side: %w", side, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.withdrawn {
		want = nil
	}
	return s.apply(reconcile(s.cur, side, want), side.String()+"-side set")
}

// WithdrawAll withdraws everything announced, to both sides, and makes
// later Set calls announce nothing: it is for a director that is leaving
// (SIGTERM: withdraw, drain, stop). The sessions stay up, so the routers
// hear the withdrawals at once rather than at their hold timer.
func (s *Speaker) WithdrawAll() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	return s.withdrawAllLocked()
}

func (s *Speaker) withdrawAllLocked() error {
	s.withdrawn = true
	ch := reconcile(s.cur, ClientSide, nil)
	ch = append(ch, reconcile(s.cur, RealSide, nil)...)
	// A prefix of both sides appears twice: first with the real side left,
	// then withdrawn. Only the last change of each prefix matters.
	last := map[netip.Prefix]Side{}
	for _, c := range ch {
		last[c.Prefix] = c.Sides
	}
	var out []change
	for _, c := range ch {
		if s, ok := last[c.Prefix]; ok {
			out = append(out, change{c.Prefix, s})
			delete(last, c.Prefix)
		}
	}
	if len(out) > 0 {
		s.log.Info().Int("prefixes", len(out)).Msg("bgp withdrawing everything")
	}
	return s.apply(out, "withdraw all")
}

// apply sends changes to GoBGP. Each change is one path; a failure is
// logged and joined into the error, and the others are still applied.
// s.cur already holds the new state: a path GoBGP refused is reported, not
// retried.
func (s *Speaker) apply(changes []change, why string) error {
	var errs []error
	for _, c := range changes {
		p := s.path(c)
		var err error
		if c.Sides == 0 {
			err = s.srv.DeletePath(apiutil.DeletePathRequest{Paths: []*apiutil.Path{p}})
		} else {
			_, err = s.srv.AddPath(apiutil.AddPathRequest{Paths: []*apiutil.Path{p}})
		}
		if err != nil {
			s.log.Error().Err(err).Str(fPrefix, c.Prefix.String()).Str(fTo, c.Sides.String()).Msg("bgp path update failed")
			errs = append(errs, fmt.Errorf("%s %s: %w", verb(c), c.Prefix, err))
			continue
		}
		if c.Sides == 0 {
			s.counters.Withdrawals++
			s.log.Info().Str(fPrefix, c.Prefix.String()).Str(fReason, why).Msg("bgp withdraw")
		} else {
			s.counters.Announcements++
			s.log.Info().Str(fPrefix, c.Prefix.String()).Str(fTo, c.Sides.String()).Uint32(fMED, s.cfg.MED).Str(fReason, why).Msg("bgp announce")
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("bgp: %w", errors.Join(errs...))
	}
	return nil
}

func verb(c change) string {
	if c.Sides == 0 {
		return "withdraw"
	}
	return "announce"
}

// path is GoBGP's path for c: origin IGP, the MED, next hop unspecified
// (GoBGP puts the session's local address there: next hop self), and one
// community per side.
func (s *Speaker) path(c change) *apiutil.Path {
	nlri, _ := bgppkt.NewIPAddrPrefix(c.Prefix) // normalize made c.Prefix valid
	fam := bgppkt.RF_IPv4_UC
	nh := netip.IPv4Unspecified()
	if c.Prefix.Addr().Is6() {
		fam, nh = bgppkt.RF_IPv6_UC, netip.IPv6Unspecified()
	}
	var hop bgppkt.PathAttributeInterface
	if fam == bgppkt.RF_IPv4_UC {
		hop, _ = bgppkt.NewPathAttributeNextHop(nh)
	} else {
		hop, _ = bgppkt.NewPathAttributeMpReachNLRI(fam, []bgppkt.PathNLRI{{NLRI: nlri}}, nh)
	}
	var tags []*bgppkt.LargeCommunity
	for _, side := range []Side{ClientSide, RealSide} {
		if c.Sides&side != 0 {
			tags = append(tags, s.tag(side))
		}
	}
	attrs := []bgppkt.PathAttributeInterface{
		bgppkt.NewPathAttributeOrigin(bgppkt.BGP_ORIGIN_ATTR_TYPE_IGP),
		hop,
		bgppkt.NewPathAttributeMultiExitDisc(s.cfg.MED),
	}
	if len(tags) > 0 {
		attrs = append(attrs, bgppkt.NewPathAttributeLargeCommunities(tags))
	}
	return &apiutil.Path{Family: fam, Nlri: nlri, Attrs: attrs, Withdrawal: c.Sides == 0}
}

// onPeer runs on GoBGP's watch goroutine for each peer event: it logs a
// state change and counts establishments and drops.
func (s *Speaker) onPeer(ev *apiutil.WatchEventMessage_PeerEvent, at time.Time) {
	if ev.Type != apiutil.PEER_EVENT_STATE {
		return
	}
	a := ev.Peer.Conf.NeighborAddress
	st := ev.Peer.State.SessionState
	s.mu.Lock()
	p := s.peers[a]
	if p == nil || p.state == st {
		s.mu.Unlock()
		return
	}
	was := p.state
	p.state, p.since = st, at
	reason := ev.Peer.State.DisconnectMessage
	if reason == "" && ev.Peer.State.DisconnectReason != api.PeerState_DISCONNECT_REASON_UNSPECIFIED {
		reason = ev.Peer.State.DisconnectReason.String()
	}
	switch {
	case st == bgppkt.BGP_FSM_ESTABLISHED:
		s.counters.Establishments++
		p.upSince = at
	case was == bgppkt.BGP_FSM_ESTABLISHED:
		s.counters.Drops++
		p.upSince = time.Time{}
		if reason == "" {
			reason = "session dropped"
		}
		p.lastError = reason
	}
	side := p.side
	s.mu.Unlock()

	ev2 := s.log.Info()
	if was == bgppkt.BGP_FSM_ESTABLISHED {
		ev2 = s.log.Warn()
	}
	ev2 = ev2.Str(fPeer, a.String()).Str(fSide, side.String()).Str(fState, stateName(st)).Str(fWas, stateName(was))
	if reason != "" && st != bgppkt.BGP_FSM_ESTABLISHED {
		ev2 = ev2.Str(fReason, reason)
	}
	switch {
	case st == bgppkt.BGP_FSM_ESTABLISHED:
		ev2.Msg("bgp session up")
	case was == bgppkt.BGP_FSM_ESTABLISHED:
		ev2.Msg("bgp session down")
	default:
		// Idle, Connect, Active, OpenSent, OpenConfirm: every attempt goes
		// through them; at debug so a router that is away does not flood
		// the log every ConnectRetry.
		s.log.Debug().Str(fPeer, a.String()).Str(fSide, side.String()).Str(fState, stateName(st)).Str(fWas, stateName(was)).Msg("bgp session state")
	}
}

// stateName is the FSM state as BIRD and RFC 4271 spell it.
func stateName(st bgppkt.FSMState) string {
	switch st {
	case bgppkt.BGP_FSM_IDLE:
		return "Idle"
	case bgppkt.BGP_FSM_CONNECT:
		return "Connect"
	case bgppkt.BGP_FSM_ACTIVE:
		return "Active"
	case bgppkt.BGP_FSM_OPENSENT:
		return "OpenSent"
	case bgppkt.BGP_FSM_OPENCONFIRM:
		return "OpenConfirm"
	case bgppkt.BGP_FSM_ESTABLISHED:
		return "Established"
	}
	return "State(" + strconv.Itoa(int(st)) + ")"
}

// Close withdraws everything (as WithdrawAll), then closes every session
// with a Cease notification and stops GoBGP and its goroutines. It is
// idempotent; the error is the withdrawal's.
func (s *Speaker) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	err := s.withdrawAllLocked()
	s.closed = true
	s.mu.Unlock()
	// Outside mu: stopping waits for GoBGP's goroutines, and the watch
	// callback takes mu.
	s.stopWatch()
	s.srv.Stop()
	s.log.Info().Msg("bgp speaker stopped")
	return err
}
