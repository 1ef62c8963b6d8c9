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
		{[]string{"lab", "up", "--directors", "3"}, "--directors 3: expected 1 or 2"},
		{[]string{"lab", "up", "--reals", "101"}, "--reals 101: expected 1..100"},
		{[]string{"lab", "up", "--directors", "1", "--vrrp"}, "--vrrp needs --directors 2"},
		{[]string{"lab", "up", "--directors", "two"}, `--directors "two": expected an integer`},
		{[]string{"lab", "demo", "--phase", "100ms"}, "--phase 100ms: expected 500ms..1m"},
		{[]string{"lab", "up", "--bgp", "--vrrp"}, "--bgp with --vrrp: choose one way"},
		{[]string{"lab", "demo", "--idle", "0", "--busy", "0"}, "--idle 0 --busy 0: expected 1..2000 connections in all"},
		{[]string{"lab", "status", "--yaml"}, "unknown flag --yaml"},
		{[]string{"lab", "logs"}, `lab logs "": expected one director, A or B`},
		{[]string{"lab", "logs", "C"}, `lab logs "C": expected one director, A or B`},
		{[]string{"lab", "logs", "A", "B"}, `lab logs "A B": expected one director, A or B`},
		{[]string{"lab", "logs", "-f"}, `lab logs "": expected one director, A or B`},
		{[]string{"lab", "logs", "A", "--tail"}, `lab logs "A --tail": expected one director, A or B`},
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
	} {
		d, f, err := labLogsArgs(tc.args, tc.flag)
		if err != nil || d != tc.want || f != tc.wantFollow {
			t.Errorf("labLogsArgs(%q, %v) = %q, %v, %v; want %q, %v", tc.args, tc.flag, d, f, err, tc.want, tc.wantFollow)
		}
	}
}
