package fastpath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Flow is one established plain flow as the fast path carries it: both
// directions, client <-> VIP on the client's side and client <-> real on
// the real's (IPv4 TCP only).
type Flow struct {
	Client, VIP, Real netip.AddrPort
	// CookieID is the real's id in the timestamp cookie (0 with cookies
	// off, or a flow without timestamps).
	CookieID uint16
	// Cookie is the flow's cookie state as nat keeps it, handed over with
	// the flow.
	Cookie CookieState
}

// CookieState is nat's cookieFlow in the form the BPF program keeps it.
type CookieState struct {
	Last, Raw, Prev, PrevRaw, SynAck uint32
	Flags                            CookieFlags
}

// CookieFlags are the valid fields of a CookieState.
type CookieFlags uint32

// Cookie flags, as bpf/fastpath.c defines them.
const (
	CookieSent    CookieFlags = 1 << iota // Last and Raw are valid
	CookiePrev                            // Prev and PrevRaw are valid
	CookieSynAck                          // SynAck is valid
	CookieRoundUp                         // restore echoes before the first rewrite here by rounding up (a flow taken over from the TUN path)
)

// Counters of the BPF program, by index.
var counterNames = [...]string{
	"forward", "forward_neigh", "miss", "punt_flags", "punt_ip", "punt_fib", "punt_mtu", "other",
}

// Config is what Load builds the program with.
type Config struct {
	// CookieBits is nat.Config.CookieBits: the cookie's width k, 0 off.
	CookieBits int
	// CacheFIB keeps each flow's FIB answer (egress link, MACs) in its
	// map entry until BumpFIB, instead of asking the FIB for every packet
	// (BenchmarkForward: about 450 ns a carried segment without, 280
	// with); the egress MTU is still checked per packet.
	CacheFIB bool
}

// Program is the loaded fast path: its program and maps. The maps are
// written from one goroutine (the owner of the Program); the BPF program
// reads them on every CPU.
type Program struct {
	objs  fastpathObjects
	slots uint32 // cookie slots handed out so far
	flows map[netip.AddrPort]uint32
}

// Load loads the BPF program and its maps into the kernel (CAP_BPF and
// CAP_NET_ADMIN).
func Load(cfg Config) (*Program, error) {
	if cfg.CookieBits < 0 || cfg.CookieBits > 9 {
		return nil, fmt.Errorf("cookie bits %d: expected 0..9", cfg.CookieBits)
	}
	spec, err := loadFastpath()
	if err != nil {
		return nil, err
	}
	if err := spec.Variables[fastpathVarCookieBits].Set(uint32(cfg.CookieBits)); err != nil {
		return nil, err
	}
	var cache uint32
	if cfg.CacheFIB {
		cache = 1
	}
	if err := spec.Variables[fastpathVarCacheFib].Set(cache); err != nil {
		return nil, err
	}
	p := &Program{flows: map[netip.AddrPort]uint32{}}
	if err := spec.LoadAndAssign(&p.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("loading the fast path: %+v", ve)
		}
		return nil, fmt.Errorf("loading the fast path: %w", err)
	}
	return p, nil
}

// Close removes the program and its maps (links attached with Attach are
// the caller's to close first).
func (p *Program) Close() error { return p.objs.Close() }

// Attach attaches the program at tcx ingress of the interface named
// ifname, in the network namespace of the calling thread.
func (p *Program) Attach(ifname string) (link.Link, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, err
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifi.Index, Program: p.objs.HoldfastFastpath, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return nil, fmt.Errorf("attach tcx ingress %s: %w", ifname, err)
	}
	return l, nil
}

// BumpFIB drops every cached FIB answer: the product calls it on every
// route and neighbour change (netlink), the prototype's tests by hand.
func (p *Program) BumpFIB() error {
	var gen uint32
	if err := p.objs.FibGen.Lookup(uint32(0), &gen); err != nil {
		return err
	}
	return p.objs.FibGen.Put(uint32(0), gen+1)
}

// BPFProgram is the program, for BPF_PROG_TEST_RUN.
func (p *Program) BPFProgram() *ebpf.Program { return p.objs.HoldfastFastpath }

// key and val build the map's entries: addresses and ports in network
// byte order, as the program compares them with the packet's.
func key(src, dst netip.AddrPort) fastpathFlowKey {
	s, d := src.Addr().As4(), dst.Addr().As4()
	return fastpathFlowKey{Saddr: binary.NativeEndian.Uint32(s[:]), Daddr: binary.NativeEndian.Uint32(d[:]),
		Sport: be16(src.Port()), Dport: be16(dst.Port())}
}

func be16(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

// Add puts f into the map, both directions, with its cookie state. A flow
// already there (the same client) is replaced.
func (p *Program) Add(f Flow) error {
	if !f.Client.Addr().Is4() || !f.VIP.Addr().Is4() || !f.Real.Addr().Is4() {
		return fmt.Errorf("flow %v -> %v -> %v: the prototype carries IPv4 only", f.Client, f.VIP, f.Real)
	}
	slot, ok := p.flows[f.Client]
	if !ok {
		if p.slots >= p.objs.Cookies.MaxEntries() {
			return fmt.Errorf("flow %v: no cookie slot left (%d)", f.Client, p.slots)
		}
		slot = p.slots
		p.slots++
	}
	c := fastpathCookieState{Last: f.Cookie.Last, Raw: f.Cookie.Raw, Prev: f.Cookie.Prev, PrevRaw: f.Cookie.PrevRaw,
		SynAck: f.Cookie.SynAck, Flags: uint32(f.Cookie.Flags)}
	if err := p.objs.Cookies.Put(slot, &c); err != nil {
		return err
	}
	toReal := key(f.Real, f.Client)
	fwd := fastpathFlowVal{Slot: slot}
	fwd.Saddr, fwd.Daddr, fwd.Sport, fwd.Dport = toReal.Daddr, toReal.Saddr, toReal.Dport, toReal.Sport
	toClient := key(f.VIP, f.Client)
	rev := fastpathFlowVal{Saddr: toClient.Saddr, Daddr: toClient.Daddr, Sport: toClient.Sport, Dport: toClient.Dport,
		Slot: slot, CookieId: f.CookieID, ToClient: 1}
	if err := p.objs.Flows.Put(key(f.Client, f.VIP), &fwd); err != nil {
		return err
	}
	if err := p.objs.Flows.Put(key(f.Real, f.Client), &rev); err != nil {
		return err
	}
	p.flows[f.Client] = slot
	return nil
}

// Cookie reads back a flow's cookie state (for tests and for handing the
// flow back to the TUN path).
func (p *Program) Cookie(client netip.AddrPort) (CookieState, error) {
	slot, ok := p.flows[client]
	if !ok {
		return CookieState{}, fmt.Errorf("flow %v: not in the fast path", client)
	}
	var c fastpathCookieState
	if err := p.objs.Cookies.Lookup(slot, &c); err != nil {
		return CookieState{}, err
	}
	return CookieState{Last: c.Last, Raw: c.Raw, Prev: c.Prev, PrevRaw: c.PrevRaw, SynAck: c.SynAck, Flags: CookieFlags(c.Flags)}, nil
}

// Carried is the number of segments the fast path carried for the flow
// in both directions (a GSO packet counts its segments).
func (p *Program) Carried(f Flow) (uint64, error) {
	var n uint64
	for _, k := range []fastpathFlowKey{key(f.Client, f.VIP), key(f.Real, f.Client)} {
		var v fastpathFlowVal
		if err := p.objs.Flows.Lookup(&k, &v); err != nil {
			return 0, err
		}
		n += v.Packets
	}
	return n, nil
}

// Counters sums the program's per-CPU counters by name.
func (p *Program) Counters() (map[string]uint64, error) {
	out := make(map[string]uint64, len(counterNames))
	for i, name := range counterNames {
		var per []uint64
		if err := p.objs.Stats.Lookup(uint32(i), &per); err != nil {
			return nil, err
		}
		var sum uint64
		for _, v := range per {
			sum += v
		}
		out[name] = sum
	}
	return out, nil
}
