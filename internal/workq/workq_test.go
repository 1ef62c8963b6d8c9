package workq

import (
	"fmt"
	"sync"
	"testing"
)

// TestQueue: items pushed from many goroutines are each done exactly once,
// with one Run in each pusher's order; Run returns at stop.
func TestQueue(t *testing.T) {
	for _, runners := range []int{1, 2} {
		t.Run(fmt.Sprintf("runs=%d", runners), func(t *testing.T) {
			const pushers, each = 8, 1000
			q := New[[2]int]()
			stop := make(chan struct{})
			var mu sync.Mutex
			seen := make([][]int, pushers)
			done := make(chan struct{}, pushers*each)
			var runs sync.WaitGroup
			for range runners {
				runs.Go(func() {
					q.Run(stop, func(v [2]int) {
						mu.Lock()
						seen[v[0]] = append(seen[v[0]], v[1])
						mu.Unlock()
						done <- struct{}{}
					})
				})
			}
			var push sync.WaitGroup
			for p := range pushers {
				push.Go(func() {
					for i := range each {
						q.Push([2]int{p, i})
					}
				})
			}
			push.Wait()
			for range pushers * each {
				<-done
			}
			close(stop)
			runs.Wait()
			for p, items := range seen {
				if len(items) != each {
					t.Fatalf("pusher %d: %d items done, want %d", p, len(items), each)
				}
				count := make([]int, each)
				for i, v := range items {
					count[v]++
					if runners == 1 && v != i {
						t.Fatalf("pusher %d: item %d done in place %d", p, v, i)
					}
				}
				for v, c := range count {
					if c != 1 {
						t.Fatalf("pusher %d: item %d done %d times", p, v, c)
					}
				}
			}
		})
	}
}

// TestDrain: Drain does what is queued, in order, including what the items
// themselves push, and returns on an empty queue.
func TestDrain(t *testing.T) {
	q := New[int]()
	for i := range 3 {
		q.Push(i)
	}
	var got []int
	q.Drain(func(v int) {
		got = append(got, v)
		if v < 3 {
			q.Push(v + 10)
		}
	})
	if want := []int{0, 1, 2, 10, 11, 12}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("drained %v, want %v", got, want)
	}
	q.Drain(func(v int) { t.Fatalf("drained %d from an empty queue", v) })
}
