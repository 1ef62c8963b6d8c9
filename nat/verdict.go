package nat

// Verdict is what the packet loop does with a packet after Handle.
type Verdict uint8

// Verdicts. Forward writes the (possibly rewritten) packet back to the device.
// ToStack, Park and Reset belong to recovery (a later stage) and are reserved.
const (
	Forward Verdict = iota
	ToStack
	Park
	Drop
	Reset
	numVerdicts
)

var verdictNames = [numVerdicts]string{"forward", "to_stack", "park", "drop", "reset"}

func (v Verdict) String() string {
	if v < numVerdicts {
		return verdictNames[v]
	}
	return "verdict?"
}

// DropReason says why a packet was dropped. Every drop has exactly one reason
// and one counter.
type DropReason uint8

// Drop reasons.
const (
	DropNone         DropReason = iota
	DropTruncated               // shorter than its headers say
	DropMalformed               // impossible header fields
	DropBadChecksum             // IPv4, TCP, UDP or ICMP checksum does not verify
	DropFragment                // an IP fragment to a VIP or from a real (not reassembled)
	DropUnsupported             // not IPv4 (IPv6 is not served yet)
	DropUnknownProto            // a VIP packet that is not TCP, UDP or ICMP
	DropNoService               // a VIP port with no service
	DropNoReal                  // every real of the service has weight 0
	DropFlowLimit               // the flow table is full (--max-flows)
	DropNoFlow                  // a real's service port sent a packet that belongs to no flow
	DropStrayRST                // a RST from a client that belongs to no flow
	DropICMPNoFlow              // an ICMP error to a VIP about no known flow
	DropICMPOther               // an ICMP message to a VIP that is neither echo nor an error
	DropTupleClash              // the real-side tuple is already used by another flow
	numDropReasons
)

var dropNames = [numDropReasons]string{
	"none", "truncated", "malformed", "bad_checksum", "fragment", "unsupported",
	"unknown_proto", "no_service", "no_real", "flow_limit", "no_flow",
	"stray_rst", "icmp_no_flow", "icmp_other", "tuple_clash",
}

func (r DropReason) String() string {
	if r < numDropReasons {
		return dropNames[r]
	}
	return "reason?"
}

// DropReasons lists every reason, in counter order.
func DropReasons() []DropReason {
	rs := make([]DropReason, 0, numDropReasons-1)
	for r := DropTruncated; r < numDropReasons; r++ {
		rs = append(rs, r)
	}
	return rs
}
