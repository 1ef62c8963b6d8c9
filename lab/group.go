package lab

import (
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
)

// groupBIRDTimers are what StartGroupBIRD adds to the kernel-NAT
// director's BIRD sessions: BIRD waits connect delay time (5 s by
// default) after it starts before it first dials a peer, and connect retry
// time (120 s) after a dial that failed, e.g. one the router refused
// while its error wait time ran after the director's previous session
// died. A kernel-NAT director that comes back into an ECMP group would
// rejoin 5 s (or two minutes) late: later than the next membership event
// of issue 17's acceptance. 1 s is the least BIRD takes for the delay
// (bgp_active waits at least one second).
const groupBIRDTimers = "\tconnect delay time 1;\n\tconnect retry time 1;\n"

// StartGroupBIRD is StartDirectorBIRD for a kernel-NAT director of an
// ECMP group that joins under load: the same announcements, with BIRD
// dialling the routers 1 s after it starts and retrying every second
// (groupBIRDTimers), as holdfast's own speaker does within seconds.
func (l *Lab) StartGroupBIRD(i int) (*Proc, error) {
	if l.bgp == nil {
		return nil, errors.New("lab: StartGroupBIRD: not a BGP lab (Options.BGP)")
	}
	bin, err := exec.LookPath("bird")
	if err != nil {
		return nil, fmt.Errorf("lab: StartGroupBIRD: %w", err)
	}
	d := l.Directors[i]
	var conf strings.Builder
	if err := directorBIRDConf.Execute(&conf, map[string]any{
		"Label": d.Label, "Lab": l.Prefix, "RouterID": d.Uplink.Addr(),
		"VIP": netip.PrefixFrom(VIP, 32), "DirectorAS": BGPDirectorAS, "RouterAS": BGPRouterAS,
		"Hold": int(BGPHoldTime.Seconds()), "Keepalive": int(BGPKeepalive.Seconds()),
		"ClientPeer": d.RouterAddr, "ClientLocal": d.Uplink.Addr(),
		"RealPeer": BGPRealPeer, "RealLocal": d.BGPAddr.Addr(), "MED": BGPMED(d),
	}); err != nil {
		return nil, fmt.Errorf("lab: BIRD configuration: %w", err)
	}
	// The timers go into the template both sessions share: after its last
	// line (directorBIRDConf's "direct;").
	const anchor = "\tdirect;\n}\n"
	c := conf.String()
	if !strings.Contains(c, anchor) {
		return nil, errors.New("lab: StartGroupBIRD: the director's BIRD configuration has no `direct;` closing its bgp template: update groupBIRDTimers' anchor")
	}
	c = strings.Replace(c, anchor, "\tdirect;\n"+groupBIRDTimers+"}\n", 1)
	return l.startBIRD(d.NS, "dir"+d.Label, bin, c)
}
