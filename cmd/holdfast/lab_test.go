package main

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// A bad lab flag is a usage error: one line naming the flag, exit 2, before
// anything is built.
func TestLabUsageErrors(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: as an ordinary user a lab command re-executes itself in a user namespace before it reads its flags")
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"lab", "up", "--directors", "3"}, "--directors 3: expected 1 or 2 (1..3 with --bgp --ecmp)"},
		{[]string{"lab", "up", "--ecmp"}, "--ecmp needs --bgp: the routers learn the equal routes"},
		{[]string{"lab", "up", "--bgp", "--ecmp", "--directors", "4"}, "--directors 4: expected 1..3 with --ecmp"},
		{[]string{"lab", "up", "--bgp", "--ecmp", "--directors", "0"}, "--directors 0: expected 1..3 with --ecmp"},
		{[]string{"lab", "up", "--bgp", "--ecmp", "--vrrp"}, "--ecmp with --vrrp: keepalived gives the routes to one director"},
		{[]string{"lab", "demo", "--ecmp", "--vrrp"}, "--ecmp with --vrrp"},
		{[]string{"lab", "demo", "--ecmp", "--phase", "100ms"}, "--phase 100ms: expected 500ms..1m"},
		{[]string{"lab", "kill"}, `lab kill "": expected one director, A, B or C (or its number, 1..3)`},
		{[]string{"lab", "kill", "D"}, `lab kill "D": expected one director, A, B or C`},
		{[]string{"lab", "start", "4"}, `lab start "4": expected one director, A, B or C`},
		{[]string{"lab", "leave", "A", "B"}, `lab leave "A B": expected one director, A, B or C`},
		{[]string{"lab", "leave", "--now", "A"}, "unknown flag --now"},
		{[]string{"lab", "up", "--reals", "101"}, "--reals 101: expected 1..100"},
		{[]string{"lab", "up", "--directors", "1", "--vrrp"}, "--vrrp needs --directors 2"},
		{[]string{"lab", "up", "--directors", "two"}, `--directors "two": expected an integer`},
		{[]string{"lab", "demo", "--phase", "100ms"}, "--phase 100ms: expected 500ms..1m"},
		{[]string{"lab", "up", "--bgp", "--vrrp"}, "--bgp with --vrrp: choose one way"},
		{[]string{"lab", "demo", "--idle", "0", "--busy", "0"}, "--idle 0 --busy 0: expected 1..2000 connections in all"},
		{[]string{"lab", "status", "--yaml"}, "unknown flag --yaml"},
		{[]string{"lab", "logs"}, `lab logs "": expected one director, A, B or C (or its number, 1..3)`},
		{[]string{"lab", "logs", "D"}, `lab logs "D": expected one director, A, B or C`},
		{[]string{"lab", "logs", "A", "B"}, `lab logs "A B": expected one director, A, B or C`},
		{[]string{"lab", "logs", "-f"}, `lab logs "": expected one director, A, B or C`},
		{[]string{"lab", "logs", "A", "--tail"}, `lab logs "A --tail": expected one director, A, B or C`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			err := newApp().Run(append([]string{"holdfast"}, tc.args...))
			var ec cli.ExitCoder
			if !errors.As(err, &ec) || ec.ExitCode() != exitUsage {
				t.Fatalf("Run = %v, want a usage error (exit %d)", err, exitUsage)
			}
			if msg := err.Error(); !strings.Contains(msg, tc.want) || strings.Contains(msg, "\n") {
				t.Errorf("message %q, want one line with %q", msg, tc.want)
			}
		})
	}
}

// The follow flag counts before or after the director.
func TestLabLogsArgs(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		flag       bool
		want       string
		wantFollow bool
	}{
		{[]string{"A"}, false, "A", false},
		{[]string{"B"}, true, "B", true},
		{[]string{"A", "-f"}, false, "A", true},
		{[]string{"A", "--follow"}, false, "A", true},
		{[]string{"C"}, false, "C", false},      // the ECMP lab's third director
		{[]string{"2", "-f"}, false, "B", true}, // its --director-id
		{[]string{"c"}, false, "C", false},
	} {
		d, f, err := labLogsArgs(tc.args, tc.flag)
		if err != nil || d != tc.want || f != tc.wantFollow {
			t.Errorf("labLogsArgs(%q, %v) = %q, %v, %v; want %q, %v", tc.args, tc.flag, d, f, err, tc.want, tc.wantFollow)
		}
	}
}

// The kind of lab decides the directors it may have; the checks run as an
// ordinary user too (TestLabUsageErrors needs root to reach them through
// the command line).
func TestLabDirectorsUsage(t *testing.T) {
	for _, tc := range []struct {
		n               int
		ecmp, bgp, vrrp bool
		want            string // "" for no error
	}{
		{n: 1}, {n: 2}, {n: 2, vrrp: true}, {n: 2, bgp: true},
		{n: 3, want: "--directors 3: expected 1 or 2 (1..3 with --bgp --ecmp)"},
		{n: 3, bgp: true, want: "--directors 3: expected 1 or 2 (1..3 with --bgp --ecmp)"},
		{n: 1, ecmp: true, bgp: true}, {n: 3, ecmp: true, bgp: true},
		{n: 3, ecmp: true, want: "--ecmp needs --bgp"},
		{n: 4, ecmp: true, bgp: true, want: "--directors 4: expected 1..3 with --ecmp"},
		{n: 3, ecmp: true, bgp: true, vrrp: true, want: "--ecmp with --vrrp"},
		{n: 2, ecmp: true, bgp: true},
	} {
		err := labDirectorsUsage(tc.n, tc.ecmp, tc.bgp, tc.vrrp)
		if tc.want == "" {
			if err != nil {
				t.Errorf("%+v: %v, want none", tc, err)
			}
			continue
		}
		var ec cli.ExitCoder
		if !errors.As(err, &ec) || ec.ExitCode() != exitUsage || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want a usage error starting %q", tc, err, tc.want)
		}
	}
}
