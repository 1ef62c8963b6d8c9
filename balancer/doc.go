// Package balancer holds the services a director serves, their real servers and
// the schedulers that pick a real for a new flow (rr, wrr, sh, dh, lc).
//
// It does no I/O and reads no clock. Schedulers are called from the packet loop
// only (one goroutine), so they keep their cursor state without locks; the
// counters they read (Real.Active, Real.Inactive) are maintained by nat.
package balancer
