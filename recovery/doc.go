// Package recovery executes the recovery handshakes of package nat: when a
// TCP segment reaches a director without a flow (a failover just happened),
// nat parks it, reserves a recovery address:port and asks its Dialer, the
// Engine, for a dial to a real. The engine starts the dial through a Dialer of
// its own (the gVisor netstack, package stack/netstack), and reports its end
// to a Sink (the nat.Director): Recovered with the captured handshake, from
// which nat installs the flow with its sequence and timestamp deltas and
// returns the parked segments to write; or, for a dial refused or timed out,
// Retry for the next real (bounded by Config.Attempts) and finally Failed,
// for which nat returns the client's RST.
//
// The engine holds no recovery state beyond the dials in flight: nat owns
// it. It imports no netstack and no Director, only the two interfaces, and
// is not on the per-packet path.
package recovery
