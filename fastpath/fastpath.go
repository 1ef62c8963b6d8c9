package fastpath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"holdfast/nat"

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
	// Window is the flow's window tracking as nat keeps it. A zero
	// Window (nothing seen) is tracked as a flow picked up mid-stream:
	// liberal, every window field at the largest scale.
	Window nat.FastWindow
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
	"forward", "forward_neigh", "miss", "punt_flags", "punt_ip", "punt_fib", "punt_mtu", "other", "punt_window",
}

// Window flags, as bpf/fastpath.c defines them (flow_state.win_flags).
const (
	wCliSeen = 1 << iota
	wCliAcked
	wSrvSeen
	wSrvAcked
	wLiberal
	wHiSrvSeen
	wMarked
)

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

// Program is the loaded fast path: its program and maps. The BPF program
// reads and updates them on every CPU; the Go side's calls are serialised
// by mu (the Director calls Offload and Withdraw under its own lock, the
// daemon's sweep reads the counters without it).
type Program struct {
	objs  fastpathObjects
	mu    sync.Mutex
	slots uint32   // state slots handed out so far
	free  []uint32 // slots given back
	flows map[netip.AddrPort]*entry
}

// entry is what the Go side keeps of an offloaded flow: its state slot,
// its two keys, and the segment and byte counts already reported (Carried).
type entry struct {
	slot              uint32
	toReal, toClient  fastpathFlowKey
	pktsIn, pktsOut   uint64
	bytesIn, bytesOut uint64
	proto             uint8
	client, vip       netip.AddrPort
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
	p := &Program{flows: map[netip.AddrPort]*entry{}}
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

// BumpFIB drops every cached FIB answer. With CacheFIB the daemon must call
// it on every route and neighbour change (netlink); it loads the program
// without CacheFIB until it does. Tests call it by hand.
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

// Add puts f into the map, both directions, with its cookie and window
// state. A flow already there (the same client) is replaced.
func (p *Program) Add(f Flow) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.add(f)
}

func (p *Program) add(f Flow) error {
	if !f.Client.Addr().Is4() || !f.VIP.Addr().Is4() || !f.Real.Addr().Is4() {
		return fmt.Errorf("flow %v -> %v -> %v: the fast path carries IPv4 only", f.Client, f.VIP, f.Real)
	}
	e, ok := p.flows[f.Client]
	if !ok {
		e = &entry{proto: 6, client: f.Client, vip: f.VIP}
		switch n := len(p.free); {
		case n > 0:
			e.slot = p.free[n-1]
			p.free = p.free[:n-1]
		case p.slots < p.objs.States.MaxEntries():
			e.slot = p.slots
			p.slots++
		default:
			return fmt.Errorf("flow %v: no state slot left (%d)", f.Client, p.slots)
		}
	} else {
		p.objs.Flows.Delete(&e.toReal)   //nolint:errcheck // replaced below
		p.objs.Flows.Delete(&e.toClient) //nolint:errcheck
	}
	st := stateOf(f.Cookie, f.Window)
	if err := p.objs.States.Put(e.slot, &st); err != nil {
		p.release(f.Client, e, ok)
		return err
	}
	toReal := key(f.Real, f.Client)
	fwd := fastpathFlowVal{Slot: e.slot}
	fwd.Saddr, fwd.Daddr, fwd.Sport, fwd.Dport = toReal.Daddr, toReal.Saddr, toReal.Dport, toReal.Sport
	toClient := key(f.VIP, f.Client)
	rev := fastpathFlowVal{Saddr: toClient.Saddr, Daddr: toClient.Daddr, Sport: toClient.Sport, Dport: toClient.Dport,
		Slot: e.slot, CookieId: f.CookieID, ToClient: 1}
	e.toReal, e.toClient = key(f.Client, f.VIP), key(f.Real, f.Client)
	e.pktsIn, e.pktsOut, e.bytesIn, e.bytesOut = 0, 0, 0, 0
	if err := p.objs.Flows.Put(&e.toReal, &fwd); err != nil {
		p.release(f.Client, e, ok)
		return err
	}
	if err := p.objs.Flows.Put(&e.toClient, &rev); err != nil {
		p.objs.Flows.Delete(&e.toReal) //nolint:errcheck // undoing the half put
		p.release(f.Client, e, ok)
		return err
	}
	p.flows[f.Client] = e
	return nil
}

// release gives e's slot back (a failed add of a new flow, or a removal).
func (p *Program) release(client netip.AddrPort, e *entry, known bool) {
	if known {
		delete(p.flows, client)
	}
	p.free = append(p.free, e.slot)
}

// stateOf is the map's flow_state of a cookie and window state.
func stateOf(c CookieState, w nat.FastWindow) fastpathFlowState {
	st := fastpathFlowState{Last: c.Last, Raw: c.Raw, Prev: c.Prev, PrevRaw: c.PrevRaw, SynAck: c.SynAck, Flags: uint32(c.Flags),
		HiSrv: w.HiSrv, CliShift: w.CliShift, SrvShift: w.SrvShift}
	st.Cli.End, st.Cli.Ack, st.Cli.MaxWin = w.Cli.End, w.Cli.Ack, w.Cli.MaxWin
	st.Srv.End, st.Srv.Ack, st.Srv.MaxWin = w.Srv.End, w.Srv.Ack, w.Srv.MaxWin
	for _, b := range [...]struct {
		on   bool
		flag uint8
	}{{w.Cli.Seen, wCliSeen}, {w.Cli.Acked, wCliAcked}, {w.Srv.Seen, wSrvSeen}, {w.Srv.Acked, wSrvAcked},
		{w.Liberal, wLiberal}, {w.HiSrvSeen, wHiSrvSeen}, {w.Marked, wMarked}} {
		if b.on {
			st.WinFlags |= b.flag
		}
	}
	if st.WinFlags&(wCliSeen|wSrvSeen) == 0 {
		st.WinFlags |= wLiberal
		st.CliShift, st.SrvShift = 14, 14
	}
	return st
}

// cookieOf and windowOf read a flow_state back.
func cookieOf(st *fastpathFlowState) CookieState {
	return CookieState{Last: st.Last, Raw: st.Raw, Prev: st.Prev, PrevRaw: st.PrevRaw, SynAck: st.SynAck, Flags: CookieFlags(st.Flags)}
}

func windowOf(st *fastpathFlowState) nat.FastWindow {
	f := st.WinFlags
	return nat.FastWindow{
		Cli:      nat.FastDir{End: st.Cli.End, Ack: st.Cli.Ack, MaxWin: st.Cli.MaxWin, Seen: f&wCliSeen != 0, Acked: f&wCliAcked != 0},
		Srv:      nat.FastDir{End: st.Srv.End, Ack: st.Srv.Ack, MaxWin: st.Srv.MaxWin, Seen: f&wSrvSeen != 0, Acked: f&wSrvAcked != 0},
		CliShift: st.CliShift, SrvShift: st.SrvShift, Liberal: f&wLiberal != 0,
		HiSrv: st.HiSrv, HiSrvSeen: f&wHiSrvSeen != 0, Marked: f&wMarked != 0,
	}
}

// Cookie reads back a flow's cookie state (for tests and for handing the
// flow back to the TUN path).
func (p *Program) Cookie(client netip.AddrPort) (CookieState, error) {
	st, err := p.state(client)
	if err != nil {
		return CookieState{}, err
	}
	return cookieOf(&st), nil
}

// Window reads back a flow's window state.
func (p *Program) Window(client netip.AddrPort) (nat.FastWindow, error) {
	st, err := p.state(client)
	if err != nil {
		return nat.FastWindow{}, err
	}
	return windowOf(&st), nil
}

func (p *Program) state(client netip.AddrPort) (fastpathFlowState, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var st fastpathFlowState
	e, ok := p.flows[client]
	if !ok {
		return st, fmt.Errorf("flow %v: not in the fast path", client)
	}
	err := p.objs.States.Lookup(e.slot, &st)
	return st, err
}

// Remove takes the flow of client out of the map and returns its state as
// the fast path left it; ok is false if it was not there. The entries go
// first, so that no CPU that looks the flow up after them changes the
// state read (one that found it just before may still: a lost update of
// the maxima, or of the cookie's last bucket, costs a restore rounded up).
func (p *Program) Remove(client netip.AddrPort) (c CookieState, w nat.FastWindow, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.flows[client]
	if !ok {
		return c, w, false
	}
	p.objs.Flows.Delete(&e.toReal)   //nolint:errcheck // gone already is fine
	p.objs.Flows.Delete(&e.toClient) //nolint:errcheck
	var st fastpathFlowState
	err := p.objs.States.Lookup(e.slot, &st)
	p.release(client, e, true)
	if err != nil {
		return c, w, false
	}
	return cookieOf(&st), windowOf(&st), true
}

// Offload is nat.Offloader's: f goes into the map with the state nat
// handed over.
func (p *Program) Offload(f nat.OffloadFlow) error {
	c := f.State.Cookie
	var flags CookieFlags
	for _, b := range [...]struct {
		on   bool
		flag CookieFlags
	}{{c.Sent, CookieSent}, {c.HasPrev, CookiePrev}, {c.HasSynAck, CookieSynAck}, {c.RoundUp, CookieRoundUp}} {
		if b.on {
			flags |= b.flag
		}
	}
	return p.Add(Flow{Client: f.Client, VIP: f.VIP, Real: f.Real, CookieID: f.CookieID,
		Cookie: CookieState{Last: c.Last, Raw: c.Raw, Prev: c.Prev, PrevRaw: c.PrevRaw, SynAck: c.SynAck, Flags: flags},
		Window: f.State.Window})
}

// Withdraw is nat.Offloader's: f leaves the map, and its state goes back
// to nat.
func (p *Program) Withdraw(f nat.OffloadFlow) (nat.FastState, bool) {
	c, w, ok := p.Remove(f.Client)
	if !ok {
		return nat.FastState{}, false
	}
	return nat.FastState{Cookie: nat.FastCookie{Last: c.Last, Raw: c.Raw, Prev: c.Prev, PrevRaw: c.PrevRaw, SynAck: c.SynAck,
		Sent: c.Flags&CookieSent != 0, HasPrev: c.Flags&CookiePrev != 0, HasSynAck: c.Flags&CookieSynAck != 0,
		RoundUp: c.Flags&CookieRoundUp != 0}, Window: w}, true
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

// Updates appends to us what every flow in the map carried since the last
// call (nat.Director.FastCarried takes them), and returns the number of
// flows in the map.
func (p *Program) Updates(us []nat.FastUpdate) ([]nat.FastUpdate, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.flows {
		var in, out fastpathFlowVal
		if p.objs.Flows.Lookup(&e.toReal, &in) != nil || p.objs.Flows.Lookup(&e.toClient, &out) != nil {
			continue
		}
		u := nat.FastUpdate{Proto: e.proto, Client: e.client, VIP: e.vip,
			PacketsIn: in.Packets - e.pktsIn, PacketsOut: out.Packets - e.pktsOut,
			BytesIn: in.Bytes - e.bytesIn, BytesOut: out.Bytes - e.bytesOut}
		e.pktsIn, e.pktsOut, e.bytesIn, e.bytesOut = in.Packets, out.Packets, in.Bytes, out.Bytes
		us = append(us, u)
	}
	return us, len(p.flows)
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
