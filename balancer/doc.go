// Package balancer holds the services a director serves, their real servers,
// the schedulers that pick a real for a new flow (rr, wrr, sh, dh, lc), and
// the health checks that mark reals down.
//
// The schedulers and the parsers do no I/O and read no clock. Schedulers are
// called under nat's lock only: from every packet pump (one per TUN queue)
// and from the recovery engine's goroutine (through nat), never two at once.
// They keep their cursor state without locks of their own, and the fields they
// read (Real.Weight, Real.Down, Real.Active, Real.Inactive) are written under
// that same lock.
//
// The Checker is the one part that does I/O and starts goroutines: it probes
// reals over the network of the namespace the process runs in and reports
// transitions to a callback. It never writes a Real; the caller applies a
// transition to Real.Down under its own lock. The packet path never waits on
// a check.
package balancer
