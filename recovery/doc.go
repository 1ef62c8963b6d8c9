// Package recovery splices established TCP connections that reach a director
// without a flow (a failover just happened) into fresh connections to a real
// server: for each recovery the nat package parks the client's segments and
// calls Engine.Start; the engine reserves a recovery address:port, dials the
// real through the gVisor netstack (package stack), and hands the captured
// handshake back to nat, which installs the flow with its sequence and
// timestamp deltas and returns the parked segments to write.
//
// It retries another real when a dial is refused or times out (bounded), and
// otherwise has nat answer the client with a RST. Its only part on the fast
// path is Handler, which turns nat's verdicts into the pump's actions.
package recovery
