// Package nat is holdfast's packet logic: decode an IPv4 packet, find or create
// its flow, rewrite it in place (LVS VS/NAT: destination VIP -> real on the way
// in, source real -> VIP on the way out, ICMP errors translated with their
// quoted header), and return a verdict.
//
// nat does no I/O, starts no goroutine and reads no clock: every entry point
// takes now (monotonic nanoseconds from the caller's coarse clock). Decode and
// rewrite allocate nothing; the flow table allocates only when it grows.
package nat
