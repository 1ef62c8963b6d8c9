// Package bgp is holdfast's embedded BGP speaker (DESIGN.md section 7): it
// announces a director's VIPs to the client-side routers, and its recovery
// addresses with the prefixes the replies need (e.g. a default route) to the
// real-side routers, so the routers send traffic to a director that serves
// and stop when it withdraws or dies.
//
// It is built on GoBGP v4 (github.com/osrg/gobgp/v4) as a library and keeps
// to a narrow use of it:
//
//   - holdfast initiates every session (eBGP, passive false) and listens on
//     no port (GoBGP's Global.ListenPort -1): a director is not a router
//     that anyone may dial;
//   - an import policy rejects every route: holdfast announces, it never
//     learns; what the routers send ends in GoBGP's Adj-RIB-In (Received in
//     Status) and never in its RIB (Imported, 0);
//   - what goes to whom is decided by the path, not by the peer: each
//     announced path carries a large community per side it belongs to, and
//     the export policy accepts a path for a peer only when the peer is in
//     that side's neighbor set and the path has that side's community, then
//     strips the communities. Moving a prefix between sides is one path
//     update, which GoBGP turns into an announcement for the peers that now
//     get it and a withdrawal for the peers that had it;
//   - each family goes only to peers of that family: an IPv4 session
//     negotiates ipv4-unicast only and an IPv6 session ipv6-unicast only.
//     Next hop self needs a next hop of the prefix's family, and an IPv4
//     session has no IPv6 address of ours to give; announcing each family
//     over sessions of that family is the rule that needs none.
//
// The daemon owns the decision of what to announce (a VIP while one of its
// reals is up and the packet path serves); this package only reconciles:
// SetClientSide and SetRealSide announce what is new and withdraw what is
// gone, WithdrawAll empties both before a drain, Close stops. It must not
// decide health, read holdfast's configuration, or touch the packet path.
package bgp
