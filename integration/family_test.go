package integration

import (
	"net/netip"
	"testing"

	"holdfast/lab"
)

// family is the address family an acceptance test runs its load in (issue
// 15): IPv4, or IPv6 through a dual-stack lab. Tests that run both build a
// dual-stack lab and director for each (newFamilyPair, familyServices), so
// that the IPv4 run is the IPv6 run's twin through the same kind of
// director, serving both families at once.
type family struct{ ipv6 bool }

var (
	ipv4 = family{}
	ipv6 = family{ipv6: true}
	// bothFamilies: the IPv4 twin first, as the issue asks "the IPv4
	// results unchanged in the same runs".
	bothFamilies = []family{ipv4, ipv6}
)

func (f family) String() string {
	if f.ipv6 {
		return "IPv6"
	}
	return "IPv4"
}

// vip is the HTTP service of the family: VIP:80 or [VIP6]:80.
func (f family) vip() netip.AddrPort {
	if f.ipv6 {
		return netip.AddrPortFrom(lab.VIP6, lab.DefaultHTTPPort)
	}
	return vipHTTP
}

// addr is real r's address of the family.
func (f family) addr(r *lab.Real) netip.Addr {
	if f.ipv6 {
		return r.Addr6
	}
	return r.Addr
}

// realFlags is realFlags for the family's addresses of the reals.
func (f family) realFlags(l *lab.Lab, port int) []string {
	var args []string
	for _, r := range l.Reals {
		args = append(args, "--real", netip.AddrPortFrom(f.addr(r), uint16(port)).String())
	}
	return args
}

// familyServices are the director flags of the lab's HTTP service over the
// reals with rr, in each family the lab has: tcp:VIP:80, and in a
// dual-stack lab tcp:[VIP6]:80 next to it (each --service owns the flags
// after it).
func familyServices(l *lab.Lab) []string {
	args := append([]string{"--service", "tcp:" + vipHTTP.String(), "--scheduler", "rr"}, ipv4.realFlags(l, lab.DefaultHTTPPort)...)
	if l.Reals[0].Addr6.IsValid() {
		args = append(args, "--service", "tcp:"+ipv6.vip().String(), "--scheduler", "rr")
		args = append(args, ipv6.realFlags(l, lab.DefaultHTTPPort)...)
	}
	return args
}

// dualStackLab is startLab with IPv6 on.
func dualStackLab(t *testing.T, opts lab.Options) *lab.Lab {
	t.Helper()
	opts.IPv6 = true
	return startLab(t, opts)
}
