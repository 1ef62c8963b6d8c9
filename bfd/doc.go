// Package bfd is holdfast's Bidirectional Forwarding Detection (RFC 5880,
// single hop over UDP: RFC 5881), the liveness check a router runs next to
// its BGP session with a director: with the hold timer alone, a router whose
// link to a dead director stays up (a real-side router on a bridge) keeps
// sending to it for the hold time (3 s at the least); with BFD it notices
// in its detection time, the director's multiplier times its interval
// (3 x 300 ms by default), and drops the session and the routes.
//
// It keeps to a narrow use of the protocol:
//
//   - asynchronous mode only: no echo function (Required Min Echo RX 0), no
//     demand mode, no authentication (a packet with the A bit is dropped);
//     as RFC 5881 section 5 asks of a session without authentication, a
//     packet counts only if it arrived with TTL (hop limit) 255, which an
//     off-path sender cannot forge: a router decrements it;
//   - sessions only with the configured peers (the BGP routers), one per
//     peer, made in New: a packet from any other address is dropped and
//     counted, so the state is bounded by the configuration;
//   - passive role by default (RFC 5880 section 6.1): a session sends
//     nothing until the router has sent it a packet, so a router without
//     BFD configured gets nothing it did not ask for; Config.Active also
//     opens the sessions;
//   - the router's BGP acts on the session (BIRD `bfd on`, FRR `neighbor
//     ... bfd`); on holdfast's side a session going down is logged and
//     counted and the BGP session keeps its own hold timer: a director
//     whose router is gone has nobody to withdraw from.
//
// The state machine (fsm.go) is pure: it takes the time as an argument and
// does no I/O; Server (server.go) owns the sockets and a goroutine per
// session.
package bfd
