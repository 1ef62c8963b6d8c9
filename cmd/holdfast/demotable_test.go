package main

import (
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"holdfast/lab"
)

// captureStdout runs f and returns what it wrote to os.Stdout.
func captureStdout(t *testing.T, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	done := make(chan string)
	go func() { b, _ := io.ReadAll(r); done <- string(b) }()
	func() {
		defer func() { os.Stdout = old; w.Close() }()
		f()
	}()
	return <-done
}

// The demo tables: a column per run, the client's rows in both, the ECMP
// one with a row per event and per director.
func TestDemoTables(t *testing.T) {
	runs := []lab.DemoResult{
		{Mode: "holdfast", VIP: "198.18.100.1:80", Connections: 64, RequestsOK: 43924, LongestStall: 1602 * time.Millisecond, Steered: 46, Adoptions: 74},
		{Mode: "recovery off", VIP: "198.18.100.1:80", Connections: 64, RequestsOK: 50043, RequestsFailed: 3, ConnectionsReset: 2},
	}
	row := func(out, name string, cells ...string) {
		t.Helper()
		re := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(name) + `\s+` + strings.Join(cells, `\s+`) + `\s*$`)
		if !re.MatchString(out) {
			t.Errorf("no row %q %q in:\n%s", name, cells, out)
		}
	}
	plain := captureStdout(t, func() { printDemoTable(runs, time.Second) })
	row(plain, "requests ok", "43924", "50043")
	row(plain, "requests failed", "0", "3")
	row(plain, "connections reset", "0", "2")
	row(plain, "longest stall", "1.602s", "0s")
	row(plain, "steered to their real", "46", "0")

	for i := range runs {
		runs[i].ECMP = &lab.DemoECMP{
			Events: []lab.DemoEvent{
				{Event: "at the start", NextHops: lab.NextHops{ClientSide: []string{"A", "B", "C"}, RealSide: []string{"A", "B", "C"}}},
				{Event: "A killed", NextHops: lab.NextHops{ClientSide: []string{"B", "C"}, RealSide: []string{"B", "C"}}},
			},
			Directors: []lab.DemoDirector{{Label: "A", Flows: 84, Adopted: 28}},
		}
	}
	ecmp := captureStdout(t, func() { printDemoTable(runs, time.Second) })
	row(ecmp, "next hops A killed", `2 \(B C\)`, `2 \(B C\)`)
	row(ecmp, "requests ok", "43924", "50043")
	row(ecmp, "adoptions", "74", "0")
	row(ecmp, "flows via A", `84 \(28 adopted\)`, `84 \(28 adopted\)`)
}
