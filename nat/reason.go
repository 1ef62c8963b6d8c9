package nat

// DropReason says why a packet was dropped. Every drop has exactly one reason
// and one counter.
type DropReason uint8

// Drop reasons.
const (
	DropNone                DropReason = iota
	DropTruncated                      // shorter than its headers say
	DropMalformed                      // impossible header fields
	DropBadChecksum                    // IPv4 header, TCP, UDP, ICMP or ICMPv6 checksum does not verify
	DropFragment                       // an IP fragment to a VIP or from a real (not reassembled)
	DropUnsupported                    // an IPv6 jumbogram, or a routing header with segments left
	DropUnknownProto                   // a VIP packet that is not TCP, UDP or its family's ICMP
	DropNoService                      // a VIP port with no service
	DropNoReal                         // every real of the service has weight 0
	DropFlowLimit                      // the flow table is full (Config.MaxFlows)
	DropNoFlow                         // a real's service port sent a packet that belongs to no flow
	DropStrayRST                       // a RST from a client that belongs to no flow
	DropICMPNoFlow                     // an ICMP error to a VIP about no known flow
	DropICMPOther                      // an ICMP message to a VIP that is neither echo nor an error
	DropTupleClash                     // the real-side tuple is already used by another flow
	DropNoTrigger                      // mid-stream segment with no flow and no payload (ACK, FIN, keepalive): never triggers recovery
	DropSACKTrigger                    // mid-stream segment with no flow carrying SACK blocks: waits for a retransmission
	DropRecoveryDenied                 // client outside RecoveryConfig.Allow
	DropRecoveryRate                   // over RecoveryConfig.Rate
	DropRecoveryBusy                   // RecoveryConfig.MaxInflight recoveries already in flight
	DropParkFull                       // RecoveryConfig.ParkFlowBytes or ParkBytes reached
	DropRecoveryNoFlow                 // a packet to a recovery address that is neither a flow nor a dial in progress
	DropRehomed                        // a packet from a real its flow is being re-homed away from
	DropSpoofedSource                  // a packet to a VIP whose source is a VIP, a recovery address or a real: never a client
	DropRecoveryPending                // a SYN, or a re-home's trigger, for a tuple whose recovery is in flight
	DropAdoptAmbiguous                 // a real's packet with no flow, the real serving several VIPs and nothing telling which
	DropStaleReset                     // a real's no-socket reset that proved a suspect flow stale (the client's connection lives elsewhere)
	DropRecoveryPrefixBusy             // the client's prefix has RecoveryConfig.PrefixInflight recoveries in flight
	DropRecoveryPrefixFlows            // the client's prefix has RecoveryConfig.PrefixFlows recovered flows and recoveries
	DropPrefixParkFull                 // the client's prefix has RecoveryConfig.PrefixParkBytes parked
	numDropReasons
)

var dropNames = [numDropReasons]string{
	"none", "truncated", "malformed", "bad_checksum", "fragment", "unsupported",
	"unknown_proto", "no_service", "no_real", "flow_limit", "no_flow",
	"stray_rst", "icmp_no_flow", "icmp_other", "tuple_clash",
	"no_trigger", "sack_trigger", "recovery_denied", "recovery_rate",
	"recovery_busy", "park_full", "recovery_no_flow", "rehomed",
	"spoofed_source", "recovery_pending", "adopt_ambiguous", "stale_reset",
	"recovery_prefix_busy", "recovery_prefix_flows", "prefix_park_full",
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

// FailReason says why a recovery, or one of its dials, failed.
type FailReason uint8

// Recovery failure reasons.
const (
	FailRefused  FailReason = iota // the last real tried answered the SYN with RST
	FailTimeout                    // the last dial completed no handshake in time
	FailNoReal                     // no real could take the flow
	FailError                      // a local error (no free recovery port, the netstack)
	FailShutdown                   // the recovery engine stopped with the dial in flight (no RST: the director is going away)
	numFailReasons
)

var failNames = [numFailReasons]string{"refused", "timeout", "no_real", "error", "shutdown"}

func (r FailReason) String() string {
	if r < numFailReasons {
		return failNames[r]
	}
	return "fail?"
}

// FailReasons lists every reason, in counter order.
func FailReasons() []FailReason {
	return []FailReason{FailRefused, FailTimeout, FailNoReal, FailError, FailShutdown}
}
