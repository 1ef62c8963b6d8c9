// Package stack is the top-level home of holdfast's edge; the code lives in
// its subpackages, one concern each:
//
//   - tun: the TUN device behind a batch-shaped Device interface (a plain TUN
//     through github.com/songgao/water, or one with a virtio-net header and
//     TCP segmentation/checksum offload); tun/tuntest is an in-memory Device
//     for tests.
//   - pump: the packet pump that hands each batch read from a Device to a
//     Handler and applies its verdicts.
//   - netstack: the gVisor TCP/IP stack that performs recovery handshakes.
//   - host: the host plumbing (routes, the policy rule, sysctls, MTU).
//
// None of them imports nat: the pump calls a Handler interface, and the
// types both sides need (verdicts, handshakes) live in internal/wire.
package stack
