package lab

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
	return l.startDirectorBIRD("StartGroupBIRD", i, groupBIRDTimers)
}
