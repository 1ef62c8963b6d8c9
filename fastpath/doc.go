// Package fastpath is a prototype of holdfast's kernel fast path (issue
// 18, docs/fastpath.md): a tc eBPF program, attached on the director's
// client-facing and real-facing interfaces, that carries the segments of
// established plain IPv4 TCP flows the Go side put into its map (rewrite,
// timestamp cookie, TTL, FIB lookup and redirect) and passes everything
// else to the kernel, which routes it into the TUN as before.
//
// It is groundwork to measure, not a product: the daemon and the CLI do
// not use it. What it must not do: decide anything about a flow (the
// nat.Director owns every flow; this package only carries what it is
// given), or change a packet it then passes to the kernel.
package fastpath
