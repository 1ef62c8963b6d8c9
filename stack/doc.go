// Package stack is holdfast's edge: the TUN device behind a batch-shaped
// Device interface (a plain TUN through github.com/songgao/water, or one
// with a virtio-net header and TCP segmentation/checksum offload opened
// directly), an in-memory Device for tests, the packet pump that hands each
// batch to a Handler and writes back what it returns, a coarse clock, the
// gVisor netstack that performs recovery handshakes, and the host plumbing
// (routes, rules, sysctls).
//
// stack knows nothing of NAT: the pump calls a Handler interface.
package stack
