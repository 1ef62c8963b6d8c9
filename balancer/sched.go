package balancer

import (
	"fmt"
	"net/netip"
	"strings"
)

// NewScheduler returns a fresh scheduler by its short name: rr, wrr, sh, dh,
// lc, mh or mh:addr (case-insensitive). Each Service needs its own
// instance: rr, wrr, sh, dh and mh keep state about the reals they last
// saw.
//
// Schedulers are not safe for concurrent use: nat calls them under its lock
// (from every pump, and from the recovery engine's goroutine), which
// serializes the calls. Pick copes with the reals slice, weights and health changing between
// calls (runtime add, remove, quiesce, down): the state is resized or rebuilt
// on the next Pick, which may then allocate; a Pick with nothing changed does
// not, and neither does one after a real went down or up.
func NewScheduler(name string) (Scheduler, error) {
	switch strings.ToLower(name) {
	case "rr":
		return &roundRobin{}, nil
	case "wrr":
		return &weightedRoundRobin{}, nil
	case "sh":
		return &hashScheduler{name: "sh"}, nil
	case "dh":
		return &hashScheduler{name: "dh", byDst: true}, nil
	case "lc":
		return leastConn{}, nil
	case "mh":
		return &maglev{}, nil
	case "mh:addr":
		return &maglev{addrOnly: true}, nil
	}
	return nil, fmt.Errorf("unknown scheduler %q (expected rr, wrr, sh, dh, lc, mh or mh:addr)", name)
}

// roundRobin hands new flows to the available reals (weight > 0, not down) in
// turn, ignoring the weight's value.
type roundRobin struct {
	next int // index to try first; may be out of range after the slice shrank.
}

func (s *roundRobin) Name() string { return "rr" }

func (s *roundRobin) Pick(reals []*Real, _, _ netip.AddrPort) int {
	n := len(reals)
	for k := range n {
		i := (s.next + k) % n
		if reals[i].Available() {
			s.next = i + 1
			return i
		}
	}
	return -1
}

// weightedRoundRobin is nginx's smooth weighted round robin
// (ngx_http_upstream_get_peer in src/http/ngx_http_upstream_round_robin.c):
// weights 5:1:1 give a a b a c a a rather than a a a a a b c, so no real takes a
// burst of consecutive flows.
type weightedRoundRobin struct {
	seen    view
	current []int // nginx's current_weight, one per real.
}

func (s *weightedRoundRobin) Name() string { return "wrr" }

func (s *weightedRoundRobin) Pick(reals []*Real, _, _ netip.AddrPort) int {
	if !s.seen.equal(reals) {
		// Stale credit would favour or starve reals for a while after a
		// change; starting again from zero is what nginx does on reload.
		// A real going down or up is such a change, as a weight set to
		// 0 and back is.
		s.seen.take(reals)
		s.current = resize(s.current, len(reals))
		clear(s.current)
	}
	return smoothStep(s.current, reals, true)
}

// leastConn is IPVS's weighted least connection (ip_vs_wlc.c): an established
// flow costs 256 times what any other flow costs, and the real with the least
// cost per unit of weight wins; ties go to the first.
type leastConn struct{}

func (leastConn) Name() string { return "lc" }

func (leastConn) Pick(reals []*Real, _, _ netip.AddrPort) int {
	best := -1
	var bestOver, bestWeight int64
	for i, r := range reals {
		if !r.Available() {
			continue
		}
		over, w := int64(r.Active)*256+int64(r.Inactive), int64(r.Weight)
		// over/w < bestOver/bestWeight without a division (weights ≤ 65535,
		// so the products fit in int64 for any realistic flow count).
		if best < 0 || over*bestWeight < bestOver*w {
			best, bestOver, bestWeight = i, over, w
		}
	}
	return best
}

// tableSize is the number of buckets of the sh/dh table, as IPVS's default
// CONFIG_IP_VS_SH_TAB_BITS=8.
const (
	tableBits = 8
	tableSize = 1 << tableBits
)

// hashScheduler is IPVS sh (source hash) or dh (destination hash): the
// client's (or destination's) address, not its port, selects one of 256
// buckets, and each bucket holds a real, the reals filling the buckets in
// proportion to their weight. A client thus keeps its real as long as the set
// of reals does not change.
//
// A real set to weight 0 keeps its buckets and Pick probes on to the next
// bucket (IPVS sh "fallback"): quiescing a real moves only that real's
// clients, and giving it back the same weight moves them back. A down real is
// skipped the same way. Any other change (a real added or removed, a weight
// changed to another non-zero value) rebuilds the table.
//
// The table is built from the configured weights and ignores health: a real
// that is down when the table is (re)built still gets its buckets, so health
// flapping never reshuffles the clients of healthy reals, and a real that
// comes back up gets exactly its own clients back, even across a rebuild.
//
// dh hashes dst, which is the VIP:port: every flow of a service has the same
// destination, so dh sends them all to one real (falling back to the next
// bucket when that real is quiesced). It exists because the patent names it.
type hashScheduler struct {
	name  string
	byDst bool

	seen  view             // weights the table was built with.
	table [tableSize]int32 // bucket -> index in reals, -1 if none.
	cur   []int            // scratch for build, kept to avoid reallocating.
}

func (s *hashScheduler) Name() string { return s.name }

func (s *hashScheduler) Pick(reals []*Real, client, dst netip.AddrPort) int {
	if len(reals) == 0 {
		return -1 // also keeps the zero table of a fresh scheduler unread.
	}
	if !s.seen.covers(reals) {
		s.build(reals)
	}
	addr := client.Addr()
	if s.byDst {
		addr = dst.Addr()
	}
	h := hash32(fold(addr))
	for off := range uint32(tableSize) {
		i := s.table[(h+off)%tableSize]
		if i < 0 {
			break // empty table: no real had a weight at build time.
		}
		if reals[i].Available() {
			return int(i)
		}
	}
	// Every bucket's real is quiesced or down. A real with a weight but no
	// bucket exists only with more than 256 reals; take the first available
	// one rather than refuse the flow.
	for i, r := range reals {
		if r.Available() {
			return i
		}
	}
	return -1
}

// build fills the table with smooth weighted round robin over the reals'
// weights: each real gets its share of the 256 buckets rounded to within one,
// and its buckets are spread out rather than contiguous. Reals of weight 0 get
// no bucket; down reals get theirs (see hashScheduler).
func (s *hashScheduler) build(reals []*Real) {
	s.seen.take(reals)
	s.cur = resize(s.cur, len(reals))
	clear(s.cur)
	for b := range s.table {
		s.table[b] = int32(smoothStep(s.cur, reals, false))
	}
}

// fold reduces an address to 32 bits as IPVS's ip_vs_sh_hashkey does: an IPv4
// address as a big-endian number, an IPv6 address as the XOR of its four
// words. An IPv4-mapped IPv6 address folds like the IPv4 address.
func fold(a netip.Addr) uint32 {
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		return be32(b[:])
	}
	b := a.As16()
	return be32(b[0:4]) ^ be32(b[4:8]) ^ be32(b[8:12]) ^ be32(b[12:16])
}

func be32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// hash32 is the kernel's hash_32(v, tableBits): multiplicative (Fibonacci)
// hashing, which spreads consecutive client addresses evenly over the buckets.
func hash32(v uint32) uint32 {
	return (v * 0x61C88647) >> (32 - tableBits)
}

// view remembers the (address, weight, down) list a scheduler built its state
// for, so that Pick notices a runtime change with one pass and no allocation.
type view []viewEntry

type viewEntry struct {
	addr   netip.AddrPort
	weight int
	down   bool
}

func (v *view) take(reals []*Real) {
	*v = resize(*v, len(reals))
	for i, r := range reals {
		(*v)[i] = viewEntry{r.Addr, r.Weight, r.Down}
	}
}

// equal reports whether reals have exactly the addresses, weights and health
// seen.
func (v view) equal(reals []*Real) bool {
	if len(v) != len(reals) {
		return false
	}
	for i, r := range reals {
		if v[i] != (viewEntry{r.Addr, r.Weight, r.Down}) {
			return false
		}
	}
	return true
}

// covers is equal, except that health is ignored and a real whose weight
// dropped to 0 still matches: the sh/dh table keeps its buckets and Pick
// probes past them.
func (v view) covers(reals []*Real) bool {
	if len(v) != len(reals) {
		return false
	}
	for i, r := range reals {
		if v[i].addr != r.Addr || (r.Weight != v[i].weight && r.Weight > 0) {
			return false
		}
	}
	return true
}

// resize returns s with length n, reusing its backing array when it is large
// enough.
func resize[T any](s []T, n int) []T {
	if cap(s) >= n {
		return s[:n]
	}
	return make([]T, n)
}

// smoothStep is one step of nginx's smooth weighted round robin over reals,
// with cur the running state (one entry per real): every candidate gains its
// weight, the largest wins and pays back the total. health also skips down
// reals (wrr); without it only weight counts (the sh/dh table, which keeps a
// down real's buckets).
func smoothStep(cur []int, reals []*Real, health bool) int {
	total, best := 0, -1
	for i, r := range reals {
		if r.Weight <= 0 || (health && r.Down) {
			continue
		}
		cur[i] += r.Weight
		total += r.Weight
		if best < 0 || cur[i] > cur[best] {
			best = i
		}
	}
	if best >= 0 {
		cur[best] -= total
	}
	return best
}
