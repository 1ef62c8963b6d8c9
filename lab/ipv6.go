package lab

import (
	"fmt"
	"net/netip"
)

// The IPv6 half of a dual-stack lab (Options.IPv6): the IPv4 plan mirrored
// into 2001:2::/48, the benchmarking prefix of RFC 5180, only. 198.18.X.Y
// on a /24 becomes 2001:2:0:X::Y on a /64, written with the same digits
// (Mirror6): 198.18.10.11 is 2001:2:0:10::11.
var (
	// ClientAddr6 is the client's IPv6 address on its link to the router.
	ClientAddr6 = Mirror6(ClientAddr)
	// ClientGateway6 is the router's IPv6 address on the client link.
	ClientGateway6 = Mirror6(ClientGateway)
	// ClientPrefix6 is the client link.
	ClientPrefix6 = Mirror6Prefix(ClientPrefix)

	// VIP6 is the first IPv6 virtual IP; the router sends all of VIPPrefix6
	// to the active director.
	VIP6       = Mirror6(VIP)
	VIPPrefix6 = Mirror6Prefix(VIPPrefix)

	// RecoveryPrefix6 and RecoveryAddr6 are RecoveryPrefix and RecoveryAddr
	// for IPv6 flows: pass RecoveryAddr6 as a second --recovery-addr.
	RecoveryPrefix6 = Mirror6Prefix(RecoveryPrefix)
	RecoveryAddr6   = Mirror6(RecoveryAddr)

	// RealPrefix6 is the real-server segment.
	RealPrefix6 = Mirror6Prefix(RealPrefix)
)

// Mirror6 is the lab's IPv6 address for its IPv4 address a = 198.18.X.Y:
// 2001:2:0:X::Y, X and Y written with their decimal digits (which are valid
// hexadecimal), so that the two plans read alike. It panics outside
// 198.18.0.0/15.
func Mirror6(a netip.Addr) netip.Addr {
	b := a.As4()
	if !a.Is4() || b[0] != 198 || b[1]&^1 != 18 {
		panic(fmt.Sprintf("lab: Mirror6(%v): not in 198.18.0.0/15", a))
	}
	third := int(b[2])
	if b[1] == 19 {
		third += 256 // 198.19.X.Y: 2001:2:0:(256+X)::Y, still a decimal reading
	}
	return netip.MustParseAddr(fmt.Sprintf("2001:2:0:%d::%d", third, b[3]))
}

// Mirror6Prefix is Mirror6 for a /24 of the plan: a /64.
func Mirror6Prefix(p netip.Prefix) netip.Prefix {
	if p.Bits() != 24 {
		panic(fmt.Sprintf("lab: Mirror6Prefix(%v): the plan mirrors /24s only", p))
	}
	return netip.PrefixFrom(Mirror6(p.Addr()), 64).Masked()
}

// mirror6 is Mirror6 of an interface address with its prefix length: a /24
// address becomes a /64 one (the host part kept, unlike Mirror6Prefix).
func mirror6(p netip.Prefix) netip.Prefix {
	return netip.PrefixFrom(Mirror6(p.Addr()), 64)
}

// ip6Step adds the IPv6 address p to dev in n without duplicate address
// detection: a lab address is unique by construction, and DAD would keep it
// tentative (unusable) for a second or more after the link comes up.
func ip6Step(n *NS, p netip.Prefix, dev string) func() error {
	return ipStep(n, "-6", "addr", "add", p.String(), "dev", dev, "nodad")
}

// IPv6 reports whether the lab is dual-stack (Options.IPv6).
func (l *Lab) IPv6() bool { return l.ipv6 }

// VIPs are the lab's first virtual IPs: VIP, then VIP6 in a dual-stack lab.
func (l *Lab) VIPs() []netip.Addr {
	if l.ipv6 {
		return []netip.Addr{VIP, VIP6}
	}
	return []netip.Addr{VIP}
}

// ServiceArgs are the `holdfast run` flags of the service proto:VIP:port
// with rr over every real on port, and in a dual-stack lab of its twin
// proto:[VIP6]:port over the reals' IPv6 addresses: a dual-stack director.
func (l *Lab) ServiceArgs(proto string, port uint16) []string {
	var args []string
	for i, vip := range l.VIPs() {
		args = append(args, "--service", proto+":"+netip.AddrPortFrom(vip, port).String(), "--scheduler", "rr")
		for _, r := range l.Reals {
			args = append(args, "--real", netip.AddrPortFrom(r.Addrs()[i], port).String())
		}
	}
	return args
}
