// Package shrink keeps maps that fill in bursts from holding their peak
// memory: a Go map never gives back the room it grew, so a map of recoveries
// in flight that took 4096 entries in a failover storm would keep that size
// for the life of the process.
package shrink

import "math/bits"

// Delete deletes k from m and returns m, or a copy of what is left in a new
// map each time the deletion brings m down to 0, 8, 64, 512, ... (powers of
// 8) entries, so that an emptying map holds at most about eight times the
// room its entries need. Callers store the result:
//
//	m = shrink.Delete(m, k)
//
// A copy costs at most as many entries as are left, so a deletion costs
// O(1) amortized while the map shrinks; use it for maps of work in flight,
// not on a per-packet path.
func Delete[K comparable, V any](m map[K]V, k K) map[K]V {
	before := len(m)
	delete(m, k)
	n := len(m)
	switch {
	case n == before:
		return m // k was not there
	case n == 0:
		return make(map[K]V)
	case n >= 8 && n&(n-1) == 0 && bits.TrailingZeros(uint(n))%3 == 0:
		c := make(map[K]V, n)
		for k, v := range m {
			c[k] = v
		}
		return c
	}
	return m
}
