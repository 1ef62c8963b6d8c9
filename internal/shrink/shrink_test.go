package shrink

import (
	"runtime"
	"testing"
)

// TestDeleteGivesMemoryBack: a map grown to 100k entries and emptied (or
// brought down to 100 entries) with Delete no longer holds its room; with
// plain delete it would. What is left stays in the map.
func TestDeleteGivesMemoryBack(t *testing.T) {
	const n = 100_000
	for _, left := range []int{0, 100} {
		live := func(f func()) uint64 {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			f()
			runtime.GC()
			runtime.ReadMemStats(&after)
			if after.HeapAlloc < before.HeapAlloc {
				return 0
			}
			return after.HeapAlloc - before.HeapAlloc
		}
		var plain, shrunk map[int]int
		grow := func() map[int]int {
			m := make(map[int]int)
			for i := range n {
				m[i] = i
			}
			return m
		}
		kept := live(func() {
			plain = grow()
			for i := range n - left {
				delete(plain, i)
			}
		})
		given := live(func() {
			shrunk = grow()
			for i := range n - left {
				shrunk = Delete(shrunk, i)
			}
			shrunk = Delete(shrunk, -1) // absent: no change
		})
		if len(plain) != left || len(shrunk) != left {
			t.Fatalf("left %d: maps hold %d, %d", left, len(plain), len(shrunk))
		}
		for i := n - left; i < n; i++ {
			if shrunk[i] != i {
				t.Fatalf("left %d: entry %d lost", left, i)
			}
		}
		t.Logf("left %d: the map keeps %d B with delete, %d B with Delete", left, kept, given)
		if kept < n*8 {
			t.Fatalf("plain delete kept only %d B: the test no longer shows the problem", kept)
		}
		if given > kept/50 {
			t.Fatalf("left %d: Delete kept %d B (plain delete %d B)", left, given, kept)
		}
		runtime.KeepAlive(plain)
		runtime.KeepAlive(shrunk)
	}
}

func BenchmarkDeleteDrain(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		m := make(map[int]int)
		for i := range 4096 {
			m[i] = i
		}
		for i := range 4096 {
			m = Delete(m, i)
		}
	}
}
