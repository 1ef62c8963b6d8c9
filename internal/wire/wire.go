// Package wire holds the few types that cross between holdfast's packet
// logic (nat) and its edge (the pump, the recovery netstack) without either
// importing the other: the verdict on a packet, and the options and result
// of a recovery handshake. It is a leaf: it imports nothing of holdfast.
package wire

import (
	"errors"
	"net/netip"
)

// Verdict is what the pump does with a packet after the packet logic has
// decided it.
type Verdict uint8

// Verdicts. Forward writes the (possibly rewritten) packet back to the
// device with its virtio-net header; Reset writes the RST built in the
// packet's place (a new packet: a plain virtio-net header); ToStack hands
// the packet to the recovery netstack (a handshake in progress); Park means
// the packet logic kept a copy until its flow's recovery ends; Drop drops it;
// Consume means the packet logic took the packet as the answer to one of its
// own probes or challenges (nothing to write).
const (
	Forward Verdict = iota
	ToStack
	Park
	Drop
	Reset
	Consume
	NumVerdicts
)

var verdictNames = [NumVerdicts]string{"forward", "to_stack", "park", "drop", "reset", "consume"}

func (v Verdict) String() string {
	if v < NumVerdicts {
		return verdictNames[v]
	}
	return "verdict?"
}

// DialOptions describe one recovery handshake.
type DialOptions struct {
	Local      netip.AddrPort // recovery address and a port reserved for this real
	Remote     netip.AddrPort // the real server
	Timestamps bool           // offer TCP timestamps in the SYN (only if the client uses them)
	SACK       bool           // offer SACK in the SYN (not if the client did not negotiate it)
	WScale     int            // window scale shift to advertise, 0..14
	MSS        int            // MSS to advertise
}

// Handshake is what a recovery dial captured on the wire: the director's
// SYN, the real's SYN-ACK and the director's final ACK. Sequence numbers and
// timestamps are raw wire values.
type Handshake struct {
	ISS       uint32 // our SYN's sequence number
	SynTSval  uint32 // our SYN's TSval (0 if timestamps were not offered)
	OurWScale int    // window scale we advertised (-1: none)

	IRS           uint32 // the real's SYN-ACK sequence number
	TS            bool   // timestamps negotiated
	SynAckTSval   uint32
	SynAckTSecr   uint32
	PeerWScale    int // the real's window scale (-1: none)
	PeerMSS       int
	SACKPermitted bool

	// The final ACK of the handshake, sent by the director.
	AckSeq, AckAck     uint32
	AckTSval, AckTSecr uint32
	AckWindow          uint16
}

// ErrRefused is wrapped by a dial error when the real answered the SYN with
// a RST (nothing listens on its port).
var ErrRefused = errors.New("connection refused")
