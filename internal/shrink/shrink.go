// Package shrink keeps maps that fill in bursts from holding their peak
// memory: a Go map never gives back the room it grew, so a map of recoveries
// in flight that took 4096 entries in a failover storm would keep that size
// for the life of the process.
package shrink

// Delete deletes k from m and returns m, or a new map if that left m empty
// (what m held is then garbage). Callers store the result:
//
//	m = shrink.Delete(m, k)
//
// Use it for maps that empty often (work in flight), not on a per-packet
// path: an emptied map costs one allocation when it fills again.
func Delete[K comparable, V any](m map[K]V, k K) map[K]V {
	delete(m, k)
	if len(m) == 0 {
		return make(map[K]V)
	}
	return m
}
