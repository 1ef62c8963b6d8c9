// Package lab builds throwaway network-namespace topologies for holdfast
// (DESIGN.md section 5) and runs real peers inside them:
//
//	client ns -- router ns --+-- director A ns --+-- switch ns (bridge) -- rs1..rsN ns
//	                         +-- director B ns --+
//
// Every address is in 198.18.0.0/15 (RFC 2544 benchmarking range), and with
// Options.IPv6 its twin in 2001:2::/48 (RFC 5180, ipv6.go); nothing is
// routed out of the lab. A Lab owns what it creates: its namespaces (and so
// their veths and bridge), the processes started in them and the backend
// servers it runs; Close removes all of it, also after a build that failed
// half-way.
//
// Two users: the `holdfast lab` subcommands (cmd/holdfast/lab.go and
// labctl.go: demo, up, status, failover, down) and the integration tests
// (integration/, which wrap it in integration/harness_test.go, and
// integration/bench). It is the one lab package the product binary links,
// for the lab subcommand, so it must not import "testing" or any test
// helper.
//
// What it holds: the topology (lab.go, netns.go), the processes it starts
// and their output (proc.go), the built-in backends and load (backend.go,
// demo.go), the IPv6 plan (ipv6.go), keepalived (vrrp.go), the BIRD routers
// of a BGP lab (bgp.go), the user-namespace re-exec that lets an
// ordinary user run a lab (userns.go), where its sockets live (rundir.go),
// and the supervisor behind `holdfast lab up` (supervisor.go) with its
// directors' log rings (logring.go).
//
// A director is a holdfast process the lab talks to through its contracts,
// never its log text: it is ready when it sends READY=1 on the notify
// socket the lab gives it (notify.go), and its counters come from its admin
// API (director.go: GET /stats).
//
// With Options.VRRP the directors share the router's segment and keepalived
// (one per director namespace) moves the floating next-hop and the reals'
// gateway, instead of Flip (IPv4 only). With Options.BGP the directors'
// holdfast announce by BGP to BIRD 2 on the router (the client side) and on
// a real-side router on the reals' segment, which is their gateway: the
// routers' kernels follow the announcements, nothing moves routes (with
// Options.IPv6 over a session of each family). With Options.RealHopMTU the reals
// sit behind two routers (hop1, hop2 ns) joined by a narrow link, for the
// path-MTU tests.
//
// It needs CAP_SYS_ADMIN and CAP_NET_ADMIN (root, or root of a user
// namespace through ReexecUnprivileged) and iproute2's ip(8); Options.VRRP
// also needs keepalived(8), Options.BGP bird(8) and birdc(8) (Debian bird2).
package lab
