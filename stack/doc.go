// Package stack is holdfast's edge: the TUN device (github.com/songgao/water)
// behind a batch-shaped Device interface, an in-memory Device for tests, the
// packet pump that hands each packet to a Handler and writes back what it
// returns, a coarse clock, and the host plumbing (routes, rules, sysctls).
//
// stack knows nothing of NAT: the pump calls a Handler interface.
package stack
