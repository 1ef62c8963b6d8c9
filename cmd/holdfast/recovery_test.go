package main

import (
	"errors"
	"testing"
	"time"

	"holdfast/daemon"
	"holdfast/nat"

	"github.com/urfave/cli/v2"
)

// parseRecoveryArgs runs parseRecovery on the run flags set from args.
func parseRecoveryArgs(t *testing.T, args ...string) (daemon.Recovery, error) {
	t.Helper()
	var r daemon.Recovery
	var perr error
	app := &cli.App{Name: "t", Flags: runFlags(), Action: func(c *cli.Context) error {
		r, perr = parseRecovery(c)
		return nil
	}}
	if err := app.Run(append([]string{"t", "--recovery-addr", "198.18.200.1"}, args...)); err != nil {
		t.Fatalf("flags %q: %v", args, err)
	}
	return r, perr
}

// The per-prefix budget flags: nat's defaults, values from flags and
// HOLDFAST_* variables, and one usage line (exit 2) per bad value.
func TestRecoveryBudgetFlags(t *testing.T) {
	r, err := parseRecoveryArgs(t)
	if err != nil {
		t.Fatal(err)
	}
	if r.PrefixLen4 != nat.DefaultPrefixLen4 || r.PrefixLen6 != nat.DefaultPrefixLen6 || r.PrefixInflight != nat.DefaultPrefixInflight ||
		r.PrefixFlows != nat.DefaultPrefixFlows || r.UnconfirmedTimeout != nat.DefaultUnconfirmedTimeout {
		t.Fatalf("defaults %+v", r)
	}
	t.Setenv("HOLDFAST_RECOVERY_PREFIX_FLOWS", "77")
	r, err = parseRecoveryArgs(t, "--recovery-prefix-len4", "32", "--recovery-prefix-len6", "48",
		"--recovery-prefix-inflight", "5", "--timeout-recovered-unconfirmed", "3s")
	if err != nil {
		t.Fatal(err)
	}
	if r.PrefixLen4 != 32 || r.PrefixLen6 != 48 || r.PrefixInflight != 5 || r.PrefixFlows != 77 || r.UnconfirmedTimeout != 3*time.Second {
		t.Fatalf("set %+v", r)
	}
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--recovery-prefix-len4", "33"}, "--recovery-prefix-len4 33: expected 1..32"},
		{[]string{"--recovery-prefix-len4", "0"}, "--recovery-prefix-len4 0: expected 1..32"},
		{[]string{"--recovery-prefix-len6", "129"}, "--recovery-prefix-len6 129: expected 1..128"},
		{[]string{"--recovery-prefix-inflight", "0"}, "--recovery-prefix-inflight 0: expected a positive number"},
		{[]string{"--recovery-prefix-flows", "-1"}, "--recovery-prefix-flows -1: expected a positive number"},
		{[]string{"--timeout-recovered-unconfirmed", "0s"}, "--timeout-recovered-unconfirmed 0s: expected a positive duration, e.g. 10s"},
	} {
		_, err := parseRecoveryArgs(t, tc.args...)
		var ec cli.ExitCoder
		if !errors.As(err, &ec) || ec.ExitCode() != exitUsage || err.Error() != tc.msg {
			t.Errorf("%q: %v, want exit %d %q", tc.args, err, exitUsage, tc.msg)
		}
	}
}
