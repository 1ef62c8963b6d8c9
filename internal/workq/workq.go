// Package workq hands work from code that must not block (nat asking for a
// recovery dial with its lock held, gVisor's callbacks) to the goroutines
// that do it: an unbounded FIFO, the loop that drains it (Run) and a last
// drain at the end of its life (Drain). It starts no goroutine itself and is
// not on any per-packet path.
package workq

import "sync"

// Queue is an unbounded FIFO of items, worked off by Run.
type Queue[T any] struct {
	mu    sync.Mutex
	items []T
	wake  chan struct{}
}

// New returns an empty queue.
func New[T any]() *Queue[T] { return &Queue[T]{wake: make(chan struct{}, 1)} }

// Push appends v. It never blocks.
func (q *Queue[T]) Push(v T) {
	q.mu.Lock()
	q.items = append(q.items, v)
	q.mu.Unlock()
	q.signal()
}

func (q *Queue[T]) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Run calls do for each item until stop is closed (items still queued then
// are left). One Run does the items in order. Several Runs may drain one
// queue: each takes all that is queued at once and leaves what comes
// meanwhile to the others, so every item is done once, in no set order.
func (q *Queue[T]) Run(stop <-chan struct{}, do func(T)) {
	var batch []T
	for {
		select {
		case <-stop:
			return
		case <-q.wake:
		}
		q.mu.Lock()
		batch, q.items = q.items, batch[:0]
		q.mu.Unlock()
		if len(batch) > 0 {
			q.signal() // another Run may take what arrives meanwhile
		}
		var zero T
		for i, v := range batch {
			do(v)
			batch[i] = zero // what is done is not kept alive
		}
	}
}

// Drain does every item queued now, in order, on the caller's goroutine, and
// returns when the queue is empty (items that do pushes are done too). It is
// for the end of a queue's life, once no Run is left.
func (q *Queue[T]) Drain(do func(T)) {
	for {
		q.mu.Lock()
		batch := q.items
		q.items = nil
		q.mu.Unlock()
		if len(batch) == 0 {
			return
		}
		for _, v := range batch {
			do(v)
		}
	}
}
