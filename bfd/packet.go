package bfd

import (
	"encoding/binary"
	"errors"
	"strconv"
)

// A BFD Control packet (RFC 5880 section 4.1), without authentication:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|Vers |  Diag   |Sta|P|F|C|A|D|M|  Detect Mult  |    Length     |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                       My Discriminator                        |
//	|                      Your Discriminator                       |
//	|                    Desired Min TX Interval                    |
//	|                   Required Min RX Interval                    |
//	|                 Required Min Echo RX Interval                 |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
const (
	version      = 1
	packetLen    = 24
	offFlags     = 1
	offMult      = 2
	offLength    = 3
	offMyDisc    = 4
	offYourDisc  = 8
	offDesiredTx = 12
	offMinRx     = 16
	offMinEchoRx = 20

	flagPoll       = 1 << 5
	flagFinal      = 1 << 4
	flagCPI        = 1 << 3
	flagAuth       = 1 << 2
	flagDemand     = 1 << 1
	flagMultipoint = 1 << 0
)

// State is a session state (RFC 5880 section 4.1, Sta).
type State uint8

const (
	AdminDown State = 0
	Down      State = 1
	Init      State = 2
	Up        State = 3
)

func (s State) String() string {
	switch s {
	case AdminDown:
		return "AdminDown"
	case Down:
		return "Down"
	case Init:
		return "Init"
	case Up:
		return "Up"
	}
	return "State(?)"
}

// Diag is the diagnostic code: why the local system last left Up.
type Diag uint8

const (
	DiagNone         Diag = 0 // No Diagnostic
	DiagExpired      Diag = 1 // Control Detection Time Expired
	DiagNeighborDown Diag = 3 // Neighbor Signaled Session Down
	DiagAdminDown    Diag = 7 // Administratively Down
)

func (d Diag) String() string {
	switch d {
	case DiagNone:
		return "none"
	case DiagExpired:
		return "detection time expired"
	case DiagNeighborDown:
		return "neighbor signaled down"
	case DiagAdminDown:
		return "administratively down"
	}
	return "diag " + strconv.Itoa(int(d))
}

// Control is a decoded Control packet. Intervals are in microseconds, as
// on the wire.
type Control struct {
	Diag        Diag
	State       State
	Poll, Final bool
	Demand      bool
	DetectMult  uint8
	MyDisc      uint32
	YourDisc    uint32
	DesiredTx   uint32 // Desired Min TX Interval, µs
	MinRx       uint32 // Required Min RX Interval, µs
	MinEchoRx   uint32 // Required Min Echo RX Interval, µs
}

// Append appends c's 24 bytes to b.
func (c Control) Append(b []byte) []byte {
	var p [packetLen]byte
	p[0] = version<<5 | byte(c.Diag)&0x1f
	f := byte(c.State) << 6
	if c.Poll {
		f |= flagPoll
	}
	if c.Final {
		f |= flagFinal
	}
	if c.Demand {
		f |= flagDemand
	}
	p[offFlags] = f
	p[offMult] = c.DetectMult
	p[offLength] = packetLen
	binary.BigEndian.PutUint32(p[offMyDisc:], c.MyDisc)
	binary.BigEndian.PutUint32(p[offYourDisc:], c.YourDisc)
	binary.BigEndian.PutUint32(p[offDesiredTx:], c.DesiredTx)
	binary.BigEndian.PutUint32(p[offMinRx:], c.MinRx)
	binary.BigEndian.PutUint32(p[offMinEchoRx:], c.MinEchoRx)
	return append(b, p[:]...)
}

// Reasons Parse rejects a packet (RFC 5880 section 6.8.6, the checks before
// a session is selected).
var (
	ErrShort      = errors.New("bfd: shorter than its length field or than 24 bytes")
	ErrVersion    = errors.New("bfd: version is not 1")
	ErrMult       = errors.New("bfd: detect multiplier 0")
	ErrMultipoint = errors.New("bfd: multipoint bit set")
	ErrMyDisc     = errors.New("bfd: my discriminator 0")
	ErrYourDisc   = errors.New("bfd: your discriminator 0 in a state other than Down or AdminDown")
	ErrAuth       = errors.New("bfd: authentication present (not configured)")
	ErrPollFinal  = errors.New("bfd: poll and final both set")
)

// Parse decodes and validates a Control packet.
func Parse(b []byte) (Control, error) {
	if len(b) < packetLen {
		return Control{}, ErrShort
	}
	if b[0]>>5 != version {
		return Control{}, ErrVersion
	}
	if n := int(b[offLength]); n < packetLen || n > len(b) {
		return Control{}, ErrShort
	}
	f := b[offFlags]
	c := Control{
		Diag:       Diag(b[0] & 0x1f),
		State:      State(f >> 6),
		Poll:       f&flagPoll != 0,
		Final:      f&flagFinal != 0,
		Demand:     f&flagDemand != 0,
		DetectMult: b[offMult],
		MyDisc:     binary.BigEndian.Uint32(b[offMyDisc:]),
		YourDisc:   binary.BigEndian.Uint32(b[offYourDisc:]),
		DesiredTx:  binary.BigEndian.Uint32(b[offDesiredTx:]),
		MinRx:      binary.BigEndian.Uint32(b[offMinRx:]),
		MinEchoRx:  binary.BigEndian.Uint32(b[offMinEchoRx:]),
	}
	switch {
	case f&flagAuth != 0:
		return Control{}, ErrAuth
	case c.DetectMult == 0:
		return Control{}, ErrMult
	case f&flagMultipoint != 0:
		return Control{}, ErrMultipoint
	case c.MyDisc == 0:
		return Control{}, ErrMyDisc
	case c.YourDisc == 0 && c.State != Down && c.State != AdminDown:
		return Control{}, ErrYourDisc
	case c.Poll && c.Final:
		return Control{}, ErrPollFinal
	}
	return c, nil
}
