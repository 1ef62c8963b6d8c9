package nat

import (
	"net/netip"
	"testing"

	"holdfast/balancer"
	"holdfast/nat/nattest"
)

// Short names for the shared builders.
var (
	ap             = nattest.AP
	ipv4           = nattest.IPv4
	tcp4           = nattest.TCP4
	udp4           = nattest.UDP4
	icmp4          = nattest.ICMP4
	checkChecksums = nattest.CheckChecksums
	nattestFix     = nattest.FixL4Checksum
)

func addrs(b []byte) (src, dst netip.AddrPort) {
	var p packet
	if p.decodeIP(b) != DropNone {
		panic("bad packet")
	}
	if p.proto != protoICMP && p.decodeL4() != DropNone {
		panic("bad l4")
	}
	return p.src, p.dst
}

const (
	vip     = "198.18.100.1:80"
	client  = "198.18.1.2:40000"
	client2 = "198.18.1.3:40001"
	rs1     = "198.18.10.11:8080"
	rs2     = "198.18.10.12:8080"
	rs3     = "198.18.10.13:8080"
	udpVIP  = "198.18.100.1:5353"
	sec     = int64(1e9)
)

// newTestDirector serves tcp vip -> rs1..rs3 (rr) and udp udpVIP -> rs1:5353.
func newTestDirector(t testing.TB, mod ...func(*Config)) *Director {
	t.Helper()
	mk := func(proto balancer.Proto, vip string, reals ...string) *balancer.Service {
		sch, err := balancer.NewScheduler("rr")
		if err != nil {
			t.Fatal(err)
		}
		s := &balancer.Service{Proto: proto, VIP: ap(vip), Scheduler: sch}
		for _, r := range reals {
			s.Reals = append(s.Reals, &balancer.Real{Addr: ap(r), Weight: 1})
		}
		return s
	}
	cfg := Config{
		Services: []*balancer.Service{
			mk(balancer.TCP, vip, rs1, rs2, rs3),
			mk(balancer.UDP, udpVIP, "198.18.10.11:5353"),
		},
		Timeouts: NewTimeouts(15*60e9, 120e9, 300e9),
		MaxFlows: 1000,
	}
	for _, m := range mod {
		m(&cfg)
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
