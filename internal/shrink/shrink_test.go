package shrink

import (
	"runtime"
	"testing"
)

// TestDeleteGivesMemoryBack: a map grown to 100k entries and emptied with
// Delete no longer holds its room; with plain delete it would.
func TestDeleteGivesMemoryBack(t *testing.T) {
	const n = 100_000
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
		for i := range n {
			delete(plain, i)
		}
	})
	given := live(func() {
		shrunk = grow()
		for i := range n {
			shrunk = Delete(shrunk, i)
		}
	})
	if len(plain) != 0 || len(shrunk) != 0 {
		t.Fatalf("maps not empty: %d, %d", len(plain), len(shrunk))
	}
	t.Logf("emptied map keeps %d B with delete, %d B with Delete", kept, given)
	if kept < n*8 {
		t.Fatalf("plain delete kept only %d B: the test no longer shows the problem", kept)
	}
	if given > kept/100 {
		t.Fatalf("Delete kept %d B (plain delete %d B)", given, kept)
	}
	runtime.KeepAlive(plain)
	runtime.KeepAlive(shrunk)
}
