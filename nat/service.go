package nat

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"holdfast/balancer"
)

// Services and their reals, and the runtime changes to them: services,
// reals, weights and health, applied at once and without touching existing
// flows. A flow keeps the index of its real, so a real is never moved or
// dropped from its service's slice: a removed real keeps its slot with weight
// 0 (no new flows) until it is added again. Everything about a real is in its
// balancer.Real (configuration, health, removal, flow counts, traffic).

// ErrRecoveryOff is returned by RemoveReal when asked to move the real's
// flows (rehome) while recovery is off: flows move through recovery.
var ErrRecoveryOff = errors.New("moving a real's flows to other reals needs recovery, which is off")

type svcKey struct {
	proto uint8
	vip   netip.AddrPort
}

// affinity is a persistence template: the real a client address sticks to.
type affinity struct {
	real    int
	flows   int
	expires int64
}

type service struct {
	*balancer.Service
	persist map[netip.Addr]affinity
	gone    bool // removed by a reload: no new flows, old ones finish
}

func newService(s *balancer.Service) service {
	return service{Service: s, persist: make(map[netip.Addr]affinity)}
}

// addReal appends a new real to s (the caller checked it is not there)
// with its cookie id (newRealCookieID); explicit says it was given.
func (s *service) addReal(addr netip.AddrPort, weight int, id uint16, explicit bool) {
	s.Reals = append(s.Reals, &balancer.Real{Addr: addr, Weight: weight, CookieID: id, CookieIDSet: explicit})
}

// RealInfo describes one real of a service.
type RealInfo struct {
	Addr     netip.AddrPort
	Weight   int
	Down     bool // marked down by health checks
	Removed  bool // removed at runtime, flows still draining
	Rehome   bool // removed with its flows moving to other reals
	Active   int
	Inactive int
	balancer.Traffic

	CookieID uint16 // its timestamp cookie id; 0: none
}

// ServiceInfo describes one service.
type ServiceInfo struct {
	Service     string // PROTO:VIP:PORT
	Scheduler   string
	Persistence time.Duration
	Check       balancer.Check // the health check of its reals
	Reals       []RealInfo
}

// Services lists the services and their reals with their counters. Reals
// removed at runtime are listed while flows still use them.
func (d *Director) Services() []ServiceInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []ServiceInfo
	for i := range d.services {
		s := &d.services[i]
		if s.gone {
			continue
		}
		si := ServiceInfo{Service: s.String(), Scheduler: s.Scheduler.Name(), Persistence: s.Persistence, Check: s.Check}
		for _, r := range s.Reals {
			if r.Removed && r.Active+r.Inactive == 0 {
				continue
			}
			si.Reals = append(si.Reals, RealInfo{
				Addr: r.Addr, Weight: r.Weight, Down: r.Down, Removed: r.Removed, Rehome: r.Rehome,
				CookieID: r.CookieID, Active: r.Active, Inactive: r.Inactive, Traffic: r.Traffic,
			})
		}
		out = append(out, si)
	}
	return out
}

// pickReal chooses a real of service s for a new flow from client: the
// persistence template if it holds, else the scheduler. Reals in exclude are
// avoided. It returns -1 if none can take the flow.
func (d *Director) pickReal(s *service, client, dst netip.AddrPort, now int64, exclude []netip.AddrPort) int {
	if s.Persistence > 0 {
		a, ok := s.persist[client.Addr()]
		if ok && (a.flows > 0 || a.expires > now) && a.real < len(s.Reals) && s.Reals[a.real].Available() && !contains(exclude, s.Reals[a.real].Addr) {
			return a.real
		}
	}
	// A scheduler cannot be told to avoid a real: ask again (rr and wrr
	// move on), then fall back to the first acceptable one (sh, dh).
	for range len(s.Reals) {
		ri := s.Scheduler.Pick(s.Reals, client, dst)
		if ri < 0 || !contains(exclude, s.Reals[ri].Addr) {
			return ri
		}
	}
	for ri, r := range s.Reals {
		if r.Available() && !contains(exclude, r.Addr) {
			return ri
		}
	}
	return -1
}

func contains(list []netip.AddrPort, a netip.AddrPort) bool {
	for _, x := range list {
		if x == a {
			return true
		}
	}
	return false
}

// realIndex finds a real of service si by address.
func (d *Director) realIndex(si uint16, addr netip.AddrPort) int {
	for i, r := range d.services[si].Reals {
		if r.Addr == addr {
			return i
		}
	}
	return -1
}

// service finds a live service by protocol and VIP:port.
func (d *Director) service(proto balancer.Proto, vip netip.AddrPort) (*service, uint16, error) {
	si, ok := d.bySvc[svcKey{uint8(proto), vip}]
	if !ok {
		return nil, 0, fmt.Errorf("no service %s:%s", proto, vip)
	}
	return &d.services[si], si, nil
}

// real finds a real of a live service; removed reals count only with
// withRemoved.
func (d *Director) real(proto balancer.Proto, vip, real netip.AddrPort, withRemoved bool) (*service, int, error) {
	s, si, err := d.service(proto, vip)
	if err != nil {
		return nil, 0, err
	}
	ri := d.realIndex(si, real)
	if ri < 0 || (s.Reals[ri].Removed && !withRemoved) {
		return nil, 0, fmt.Errorf("service %s has no real %s", s, real)
	}
	return s, ri, nil
}

// SetWeight changes a real's weight; 0 quiesces it (no new flows, existing
// flows continue).
func (d *Director) SetWeight(proto balancer.Proto, vip, real netip.AddrPort, weight int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ri, err := d.real(proto, vip, real, false)
	if err == nil {
		s.Reals[ri].Weight = weight
	}
	return err
}

// AddReal adds a real to a service (or gives a removed one back its weight)
// with its timestamp cookie id: id, or derived from its address if 0. An id
// another real holds refuses the add (see newRealCookieID); a removed real
// keeps its id.
func (d *Director) AddReal(proto balancer.Proto, vip, real netip.AddrPort, weight int, id uint16) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, si, err := d.service(proto, vip)
	if err != nil {
		return err
	}
	if err := sameFamily(s, real); err != nil {
		return err
	}
	if err := d.checkRealAddr(real.Addr(), nil); err != nil {
		return err
	}
	if ri := d.realIndex(si, real); ri >= 0 {
		r := s.Reals[ri]
		if !r.Removed {
			return fmt.Errorf("service %s already has real %s", s, real)
		}
		if err := d.readdCookieID(s, r, id); err != nil {
			return err
		}
		r.Removed, r.Rehome, r.Weight = false, false, weight
		return nil
	}
	if len(s.Reals) >= 0xffff {
		return fmt.Errorf("service %s: too many reals", s)
	}
	cid, err := d.newRealCookieID(s, real, id, func(r *balancer.Real) bool { return !r.Removed }, nil)
	if err != nil {
		return err
	}
	s.addReal(real, weight, cid, id != 0)
	d.realAddrs[real.Addr()] = struct{}{}
	rk := svcKey{uint8(proto), real}
	d.realSvcs[rk] = append(d.realSvcs[rk], si)
	return nil
}

// RemoveReal stops new flows to a real. Its flows finish where they are, or
// with rehome move to other reals, each at its first request after all of
// the real's data was acknowledged (recovery must be on: else
// ErrRecoveryOff).
func (d *Director) RemoveReal(proto balancer.Proto, vip, real netip.AddrPort, rehome bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if rehome && !d.rec.enabled {
		return ErrRecoveryOff
	}
	s, ri, err := d.real(proto, vip, real, false)
	if err == nil {
		r := s.Reals[ri]
		r.Removed, r.Rehome, r.Weight = true, rehome, 0
		if rehome {
			d.withdrawWhere(func(f *flow) bool { return d.services[f.svc].Reals[f.real] == r })
		}
	}
	return err
}

// SetDown records a health-check verdict for a real of a service; a down
// real gets no new flows (and, with recovery on, its flows move).
func (d *Director) SetDown(proto balancer.Proto, vip, real netip.AddrPort, down bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ri, err := d.real(proto, vip, real, true)
	if err == nil {
		r := s.Reals[ri]
		if down && !r.Down {
			// Its flows move (recovery on) at their next packet, which
			// the fast path would keep from the Director.
			d.withdrawWhere(func(f *flow) bool { return d.services[f.svc].Reals[f.real] == r })
		}
		r.Down = down
	}
	return err
}

// Reconfigure applies a new set of services (a reload). It was validated
// whole by the caller, and is checked here for what only the Director
// knows (addresses that are both a VIP and a real, or a recovery address):
// an error changes nothing, and once checked this cannot fail half-way. A service that stays keeps
// its flows and its reals' counters: reals are added, removed (drained) or
// re-weighted, and the scheduler, persistence and check replaced. A new service is
// added. A service no longer listed takes no new flows; its flows finish.
func (d *Director) Reconfigure(svcs []*balancer.Service) error {
	if err := d.checkFamilies(svcs); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.checkOverlap(svcs); err != nil {
		return err
	}
	ids, err := d.reloadCookieIDs(svcs)
	if err != nil {
		return err
	}
	// Every flow back from the fast path: a reload may remove or re-home
	// its real, or its service.
	d.withdrawWhere(func(*flow) bool { return true })
	keep := make(map[svcKey]bool, len(svcs))
	for _, ns := range svcs {
		k := svcKey{uint8(ns.Proto), ns.VIP}
		keep[k] = true
		si, ok := d.bySvc[k]
		if !ok {
			// A service seen before and dropped by an earlier reload
			// comes back in its old slot, so its old flows stay valid.
			si, ok = d.goneService(k)
		}
		if !ok {
			si = uint16(len(d.services))
			d.bySvc[k] = si
			d.services = append(d.services, newService(ns))
			d.vips[ns.VIP.Addr()] = struct{}{}
			d.servesProto[ns.Proto] = true
			for _, r := range ns.Reals {
				d.noteReal(ns.Proto, r.Addr, si)
			}
			continue
		}
		d.bySvc[k] = si
		s := &d.services[si]
		s.gone = false
		s.Scheduler = ns.Scheduler
		s.Persistence = ns.Persistence
		s.Check = ns.Check
		want := make(map[netip.AddrPort]int, len(ns.Reals))
		for _, r := range ns.Reals {
			want[r.Addr] = r.Weight
		}
		for _, r := range s.Reals {
			w, ok := want[r.Addr]
			r.Removed = !ok
			if ok {
				r.Rehome = false
			}
			r.Weight = w // 0 when removed
			delete(want, r.Addr)
		}
		for _, r := range ns.Reals { // new reals, in file order
			if w, ok := want[r.Addr]; ok {
				s.addReal(r.Addr, w, ids[r], r.CookieIDSet)
				d.noteReal(ns.Proto, r.Addr, si)
			}
		}
	}
	for k, si := range d.bySvc {
		if !keep[k] {
			delete(d.bySvc, k)
			d.services[si].gone = true
		}
	}
	return nil
}

func (d *Director) goneService(k svcKey) (uint16, bool) {
	for i := range d.services {
		s := &d.services[i]
		if s.gone && uint8(s.Proto) == k.proto && s.VIP == k.vip {
			return uint16(i), true
		}
	}
	return 0, false
}

func (d *Director) noteReal(proto balancer.Proto, addr netip.AddrPort, si uint16) {
	d.realAddrs[addr.Addr()] = struct{}{}
	rk := svcKey{uint8(proto), addr}
	for _, s := range d.realSvcs[rk] {
		if s == si {
			return
		}
	}
	d.realSvcs[rk] = append(d.realSvcs[rk], si)
}

// checkOverlap says which address of svcs has two roles: a VIP that is also
// a real or a recovery address, or a real that is a recovery address. Each
// role is routed and dispatched apart (a packet to a VIP is a client's, a
// packet from a real is a server's, one to a recovery address a dial's), so
// an address with two would have its packets taken for the other's.
func (d *Director) checkOverlap(svcs []*balancer.Service) error {
	vips := make(map[netip.Addr]struct{}, len(svcs))
	for _, s := range svcs {
		if d.rec.isLocal(s.VIP.Addr()) {
			return fmt.Errorf("service %s: VIP %s is also a recovery address", s, s.VIP.Addr())
		}
		vips[s.VIP.Addr()] = struct{}{}
	}
	for _, s := range svcs {
		for _, r := range s.Reals {
			if err := d.checkRealAddr(r.Addr.Addr(), vips); err != nil {
				return fmt.Errorf("service %s: %w", s, err)
			}
		}
	}
	return nil
}

// checkRealAddr says if a, a real's address, is a VIP (of vips, or of the
// Director's services when vips is nil) or a recovery address.
func (d *Director) checkRealAddr(a netip.Addr, vips map[netip.Addr]struct{}) error {
	if vips == nil {
		vips = d.vips
	}
	if _, ok := vips[a]; ok {
		return fmt.Errorf("real %s is also a VIP", a)
	}
	if d.rec.isLocal(a) {
		return fmt.Errorf("real %s is also a recovery address", a)
	}
	return nil
}
