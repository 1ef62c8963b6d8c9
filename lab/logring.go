package lab

import (
	"sync"
)

// LogLine is one line of a director's log as the supervisor serves it
// (GET /logs/{director}). Seq numbers every line a director's holdfast
// wrote since `lab up`, across its restarts, so that a follower asks for
// what came after the last one it has.
type LogLine struct {
	Seq    uint64 `json:"seq"`
	Stderr bool   `json:"stderr,omitempty"`
	Text   string `json:"text"`
}

// Logs is an answer of GET /logs/{director}: the lines kept with Seq >=
// the asked one, Next to ask for afterwards, and how many asked-for lines
// were no longer kept (Dropped).
type Logs struct {
	Director string    `json:"director"`
	Lines    []LogLine `json:"lines"`
	Next     uint64    `json:"next"`
	Dropped  uint64    `json:"dropped,omitempty"`
}

// logRingLines bounds one director's log: a lab may stay up for days, and
// holdfast logs every recovery and failover it handles.
const logRingLines = 5000

// logRing keeps the last lines of a director's log, over all its runs.
// Its methods are safe for concurrent use.
type logRing struct {
	mu      sync.Mutex
	buf     []LogLine // a circular buffer of up to size lines
	size    int
	next    uint64        // Seq of the next line; line Seq s is at buf[s%size]
	changed chan struct{} // closed and replaced on every line
}

func newLogRing(size int) *logRing {
	return &logRing{size: size, changed: make(chan struct{})}
}

// add appends l, overwriting the oldest line when the ring is full.
func (r *logRing) add(l Line) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ll := LogLine{Seq: r.next, Stderr: l.Stderr, Text: l.Text}
	if len(r.buf) < r.size {
		r.buf = append(r.buf, ll)
	} else {
		r.buf[r.next%uint64(r.size)] = ll
	}
	r.next++
	close(r.changed)
	r.changed = make(chan struct{})
}

// since returns the kept lines with Seq >= seq, the Seq to ask for next,
// how many lines from seq on are gone, and a channel closed on the next
// line.
func (r *logRing) since(seq uint64) (lines []LogLine, next, dropped uint64, changed <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	first := r.next - uint64(len(r.buf)) // Seq of the oldest line kept
	if seq < first {
		dropped, seq = first-seq, first
	}
	for s := seq; s < r.next; s++ {
		lines = append(lines, r.buf[s%uint64(r.size)])
	}
	return lines, r.next, dropped, r.changed
}
