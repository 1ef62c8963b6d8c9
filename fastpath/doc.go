// Package fastpath is holdfast's kernel fast path (issue 18,
// docs/fastpath.md): a tc eBPF program, attached on the director's
// client-facing and real-facing interfaces, that carries the segments of
// established plain IPv4 TCP flows the Director offloaded into its map
// (rewrite, timestamp cookie, window tracking, TTL, FIB lookup and
// redirect) and passes everything else to the kernel, which routes it into
// the TUN as before. A Program is the Director's nat.Offloader; the
// daemon's fast path stage (daemon/fastpath.go, --fast-path) owns it.
//
// What it must not do: decide anything about a flow (the nat.Director owns
// every flow; this package only carries what it is given, and punts what
// nat must judge), or change a packet it then passes to the kernel.
package fastpath
