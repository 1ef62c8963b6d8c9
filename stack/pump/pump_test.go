package pump

import (
	"holdfast/internal/clock"
	"holdfast/internal/wire"
	"holdfast/stack/tun/tuntest"
	"os"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// threadProbe is a Handler that reports the thread it runs on and that
// thread's nice value, then drops the packet.
type threadProbe struct{ seen chan [2]int }

func (h threadProbe) HandleBatch(pkts [][]byte, _ []bool, _ int64, vs []wire.Verdict, _ [][]byte) {
	tid := unix.Gettid()
	raw, _ := unix.Getpriority(unix.PRIO_PROCESS, tid)
	for i := range pkts {
		vs[i] = wire.Drop
	}
	h.seen <- [2]int{tid, 20 - raw}
}

// TestPumpNice: with SetNice, the packet thread runs at that nice value, and
// gets its old one back when the pump stops.
func TestPumpNice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a negative nice value needs CAP_SYS_NICE")
	}
	raw0, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		t.Fatal(err)
	}
	dev := tuntest.NewMemDevice("mem0", 4)
	probe := threadProbe{seen: make(chan [2]int, 4)}
	ps := NewPumps(dev, func() Handler { return probe }, nil, clock.New(), zerolog.Nop())
	ps.SetNice(-7)
	done := make(chan error, 1)
	go func() { done <- ps.Run() }()
	dev.Inject([]byte{0x45})
	var got [2]int
	select {
	case got = <-probe.seen:
	case <-time.After(5 * time.Second):
		t.Fatal("the pump did not handle the packet")
	}
	if got[1] != -7 {
		t.Fatalf("packet thread %d runs at nice %d, want -7", got[0], got[1])
	}
	dev.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	raw, err := unix.Getpriority(unix.PRIO_PROCESS, got[0])
	if err != nil {
		t.Logf("thread %d gone after the pump stopped (%v): nothing to restore", got[0], err)
		return
	}
	if raw != raw0 {
		t.Fatalf("thread %d kept nice %d after the pump stopped, want %d", got[0], 20-raw, 20-raw0)
	}
}
