package lab

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"holdfast/internal/unixhttp"

	"github.com/rs/zerolog"
)

func texts(lines []LogLine) []string {
	var out []string
	for _, l := range lines {
		out = append(out, fmt.Sprintf("%d:%s", l.Seq, l.Text))
	}
	return out
}

// The ring keeps the last size lines; since answers from a line number
// on, says how many asked-for lines are gone, and wakes a waiter on the
// next line.
func TestLogRing(t *testing.T) {
	r := newLogRing(3)
	lines, next, dropped, _ := r.since(0)
	if len(lines) != 0 || next != 0 || dropped != 0 {
		t.Fatalf("empty ring: since(0) = %v, %d, %d", lines, next, dropped)
	}
	for i := range 5 {
		r.add(Line{Text: fmt.Sprint("l", i)})
	}
	for _, tc := range []struct {
		since       uint64
		want        []string
		wantDropped uint64
	}{
		{0, []string{"2:l2", "3:l3", "4:l4"}, 2},
		{2, []string{"2:l2", "3:l3", "4:l4"}, 0},
		{4, []string{"4:l4"}, 0},
		{5, nil, 0},
		{9, nil, 0},
	} {
		lines, next, dropped, _ := r.since(tc.since)
		if got := texts(lines); !slices.Equal(got, tc.want) || next != 5 || dropped != tc.wantDropped {
			t.Errorf("since(%d) = %q, next %d, dropped %d; want %q, next 5, dropped %d", tc.since, got, next, dropped, tc.want, tc.wantDropped)
		}
	}
	_, _, _, changed := r.since(5)
	r.add(Line{Text: "l5", Stderr: true})
	select {
	case <-changed:
	default:
		t.Fatal("a new line did not close the channel since returned")
	}
	if lines, _, _, _ := r.since(5); len(lines) != 1 || !lines[0].Stderr || lines[0].Text != "l5" {
		t.Errorf("since(5) = %+v", lines)
	}
}

// A Proc that keeps n lines drops the oldest, passes every line to its
// sink, and WaitForLine still finds a line among those kept.
func TestProcKeepsBoundedLines(t *testing.T) {
	var sunk []string
	p, err := startProc("sh", exec.Command("sh", "-c", `for i in 1 2 3 4 5; do echo line$i; done`),
		procOptions{keep: 2, sink: func(l Line) { sunk = append(sunk, l.Text) }})
	if err != nil {
		t.Fatal(err)
	}
	<-p.Done()
	if got := p.Stdout(); got != "line4\nline5\n" {
		t.Errorf("kept %q, want the last 2 lines", got)
	}
	if !slices.Equal(sunk, []string{"line1", "line2", "line3", "line4", "line5"}) {
		t.Errorf("sink got %q, want every line", sunk)
	}
	if l, err := p.WaitForLine(context.Background(), func(l Line) bool { return strings.HasPrefix(l.Text, "line") }); err != nil || l.Text != "line4" {
		t.Errorf("WaitForLine = %q, %v; want line4, the first kept", l.Text, err)
	}
}

// GET /logs/{director} serves the ring of that director from ?since=, says
// which directors there are when asked for another, and with wait answers
// once a line comes.
func TestSupervisorServesLogs(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "lab.sock")
	s := &Supervisor{l: &Lab{Directors: []*Director{{Label: "A"}}}, logs: []*logRing{newLogRing(10)},
		down: make(chan struct{}), gone: make(chan struct{})}
	stop, err := unixhttp.Serve(sock, s.handler(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	s.logs[0].add(Line{Text: `{"level":"info","message":"serving"}`})
	ctx := context.Background()
	l, err := AskLogs(ctx, sock, "A", 0, false)
	if err != nil || l.Director != "A" || l.Next != 1 || !slices.Equal(texts(l.Lines), []string{`0:{"level":"info","message":"serving"}`}) {
		t.Errorf("AskLogs(A, 0) = %+v, %v", l, err)
	}
	if _, err := AskLogs(ctx, sock, "B", 0, false); err == nil || err.Error() != `this lab has no director "B" (it has A)` {
		t.Errorf("AskLogs(B) = %v, want the supervisor's refusal naming A", err)
	}
	got := make(chan Logs, 1)
	go func() {
		l, err := AskLogs(ctx, sock, "A", 1, true)
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	// Before or after the request waits, the answer is this line.
	s.logs[0].add(Line{Text: "restarted"})
	if l := <-got; l.Next != 2 || !slices.Equal(texts(l.Lines), []string{"1:restarted"}) {
		t.Errorf("AskLogs(A, 1, wait) = %+v, want line 1", l)
	}
}
