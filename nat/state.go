package nat

import (
	"slices"
	"strings"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// State is a flow's TCP state as the director sees it. The states and the
// transition table follow IPVS (net/netfilter/ipvs/ip_vs_proto_tcp.c,
// tcp_states): the director sees both directions but is no endpoint, so the
// states are an approximation that drives timeouts, not a TCP state machine.
type State uint8

// States. UDP flows are always StateUDP.
const (
	StateNone State = iota
	StateEstablished
	StateSynSent
	StateSynRecv
	StateFinWait
	StateTimeWait
	StateClose
	StateCloseWait
	StateLastAck
	StateUDP
	numStates
)

var stateNames = [numStates]string{
	"NONE", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT", "TIME_WAIT",
	"CLOSE", "CLOSE_WAIT", "LAST_ACK", "UDP",
}

// StateNamed returns the state String names s (any case): how a user
// names one (holdfast conns --state).
func StateNamed(s string) (State, bool) {
	for i, n := range stateNames {
		if strings.EqualFold(n, s) {
			return State(i), true
		}
	}
	return 0, false
}

// StateNames lists the names of the states, in order.
func StateNames() []string { return slices.Clone(stateNames[:]) }

func (s State) String() string {
	if s < numStates {
		return stateNames[s]
	}
	return "STATE?"
}

// tcpEvent is the segment class IPVS uses, chosen by flag priority
// RST > SYN > FIN > ACK.
type tcpEvent uint8

const (
	evSYN tcpEvent = iota
	evFIN
	evACK
	evRST
)

func classify(f header.TCPFlags) tcpEvent {
	switch {
	case f&header.TCPFlagRst != 0:
		return evRST
	case f&header.TCPFlagSyn != 0:
		return evSYN
	case f&header.TCPFlagFin != 0:
		return evFIN
	}
	return evACK
}

const (
	sNO = StateNone
	sES = StateEstablished
	sSS = StateSynSent
	sSR = StateSynRecv
	sFW = StateFinWait
	sTW = StateTimeWait
	sCL = StateClose
	sCW = StateCloseWait
	sLA = StateLastAck
)

// Transition tables indexed [event][state], states in the order
// NONE ES SS SR FW TW CL CW LA. "in" is client -> real, "out" real -> client.
// Copied from IPVS tcp_states (without LISTEN and SYNACK).
var (
	tcpIn = [4][9]State{
		evSYN: {sSR, sES, sES, sSR, sSR, sSR, sSR, sSR, sSR},
		evFIN: {sCL, sCW, sSS, sTW, sTW, sTW, sCL, sCW, sLA},
		evACK: {sES, sES, sSS, sES, sFW, sTW, sCL, sCW, sCL},
		evRST: {sCL, sCL, sCL, sSR, sCL, sCL, sCL, sCL, sLA},
	}
	tcpOut = [4][9]State{
		evSYN: {sSS, sES, sSS, sSR, sSS, sSS, sSS, sSS, sSS},
		evFIN: {sTW, sFW, sSS, sTW, sFW, sTW, sCL, sTW, sLA},
		evACK: {sES, sES, sSS, sES, sFW, sTW, sCL, sCW, sLA},
		evRST: {sCL, sCL, sSS, sCL, sCL, sTW, sCL, sCL, sCL},
	}
)

func nextState(s State, fromClient bool, f header.TCPFlags) State {
	if s > sLA {
		return s
	}
	if fromClient {
		return tcpIn[classify(f)][s]
	}
	return tcpOut[classify(f)][s]
}

// Timeouts holds the idle timeout of each state, in nanoseconds.
type Timeouts [numStates]int64

// NewTimeouts builds the table from the three operator knobs (ipvsadm --set
// tcp tcpfin udp); the other states take IPVS's defaults.
func NewTimeouts(tcp, tcpFin, udp time.Duration) Timeouts {
	var t Timeouts
	t[StateNone] = int64(10 * time.Second)
	t[StateEstablished] = int64(tcp)
	t[StateSynSent] = int64(2 * time.Minute)
	t[StateSynRecv] = int64(time.Minute)
	t[StateFinWait] = int64(tcpFin)
	t[StateTimeWait] = int64(tcpFin)
	t[StateClose] = int64(10 * time.Second)
	t[StateCloseWait] = int64(time.Minute)
	t[StateLastAck] = int64(30 * time.Second)
	t[StateUDP] = int64(udp)
	return t
}
