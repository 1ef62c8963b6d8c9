package integration

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"holdfast/lab"
)

// jsonTime is a JSON log line's timestamp with milliseconds.
var jsonTime = regexp.MustCompile(`"time":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)"`)

// TestLogsForPeople: a director's JSON log lines carry millisecond
// timestamps (a failover is timed in milliseconds), durations with their
// unit ("3s", not 3000), and no colour codes when stderr is not a terminal.
func TestLogsForPeople(t *testing.T) {
	l := startLab(t, lab.Options{Reals: 3})
	d := l.Directors[0]
	args := append([]string{"--service", "tcp:" + vipHTTP.String(), "--scheduler", "rr", "--persistence", "10m"}, realFlags(l, lab.DefaultHTTPPort)...)
	p := StartDirector(t, d.NS, directorArgs(d, args...)...)
	// The lines are written before READY=1, but read from the pipe by
	// another goroutine: wait for the last start-up line to be read.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := p.WaitForLine(ctx, func(l lab.Line) bool { return strings.Contains(l.Text, `"message":"serving"`) }); err != nil {
		t.Fatalf("no serving line: %v\n%s", err, p.Stderr())
	}
	out := p.Stderr()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 3 {
		t.Fatalf("%d log lines:\n%s", len(lines), out)
	}
	for _, line := range lines {
		if !jsonTime.MatchString(line) {
			t.Fatalf("a log line without a millisecond timestamp: %s", line)
		}
	}
	if strings.Contains(out, "\x1b[") {
		t.Fatalf("colour codes in a log that is not a terminal:\n%s", out)
	}
	for _, want := range []string{`"recovery_timeout":"3s"`, `"persistence":"10m0s"`} {
		if !strings.Contains(out, want) {
			t.Fatalf("no %s in the start-up lines:\n%s", want, out)
		}
	}
}
