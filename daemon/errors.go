package daemon

import "errors"

// Part names the piece of the daemon an error is about. The CLI maps a
// part to the flag that configures it.
type Part string

// Parts.
const (
	PartServices Part = "services"
	PartDevice   Part = "device"
	PartRoutes   Part = "routes"
	PartFlows    Part = "flow table"
	PartRecovery Part = "recovery"
	PartDirector Part = "director"
	PartChecks   Part = "health checks"
	PartAdmin    Part = "admin API"
	PartMetrics  Part = "metrics"
	PartPprof    Part = "pprof"
	PartPackets  Part = "packet loop"
	PartClock    Part = "clock"
	PartExpiry   Part = "expiry sweep"
	PartEvents   Part = "events"
)

// ErrInvalid marks an error caused by the Config itself (a usage error for
// the CLI), as opposed to one the environment caused (no TUN, an address in
// use): errors.Is(err, ErrInvalid).
var ErrInvalid = errors.New("invalid configuration")

// Error is an error of Run: the part it is about, and the cause.
type Error struct {
	Part    Part
	Err     error
	Invalid bool // the Config is wrong (errors.Is(err, ErrInvalid))
}

func (e *Error) Error() string { return string(e.Part) + ": " + e.Err.Error() }

func (e *Error) Unwrap() []error {
	if e.Invalid {
		return []error{e.Err, ErrInvalid}
	}
	return []error{e.Err}
}

func runtimeError(p Part, err error) error { return &Error{Part: p, Err: err} }
func invalid(p Part, err error) error      { return &Error{Part: p, Err: err, Invalid: true} }
