// Package nat is holdfast's packet logic: decode an IPv4 or IPv6 packet, find or create
// its flow, rewrite it in place (LVS VS/NAT: destination VIP -> real on the way
// in, source real -> VIP on the way out, ICMP errors translated with their
// quoted header), and return a verdict. It also owns all recovery state
// (recoveries in flight, parked segments, the dial gate, recovery ports): the
// recovery engine only executes the dials nat asks of its Dialer.
//
// nat does no I/O, starts no goroutine and reads no clock: every entry point
// takes now (monotonic nanoseconds from the caller's coarse clock), and work
// with deadlines is done when the daemon calls Sweep. Decode and rewrite
// allocate nothing; the flow table allocates only when it grows.
//
// Files by concern: director.go (the Director and its dispatch), client.go
// and real.go (the two packet paths), flow.go (the flow table and its
// accounting), service.go (services and reals, runtime changes), recovery.go,
// trigger.go, sink.go and ports.go (recovery state, triggers and parking, the
// ends of dials, the port allocator), stats.go, and the packet work in
// packet.go, rewrite.go, tcpx.go, icmp.go and state.go, and the timestamp
// cookie (the real's id in the server's TSval) in cookie.go.
package nat
