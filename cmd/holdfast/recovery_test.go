package main

import (
	"errors"
	"net/netip"
	"slices"
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

// --ts-cookie-bits: nat's default, a value from the flag or HOLDFAST_*, and
// one usage line (exit 2) for a value out of 0..9.
func TestTSCookieBitsFlag(t *testing.T) {
	r, err := parseRecoveryArgs(t)
	if err != nil || r.CookieBits != nat.DefaultCookieBits {
		t.Fatalf("default: %d, %v", r.CookieBits, err)
	}
	if r, err = parseRecoveryArgs(t, "--ts-cookie-bits", "0"); err != nil || r.CookieBits != 0 {
		t.Fatalf("0: %d, %v", r.CookieBits, err)
	}
	// urfave/cli keeps a value from the environment in the flag's Value.
	defer func(v int) { tsCookieBitsFlag.Value = v }(tsCookieBitsFlag.Value)
	t.Setenv("HOLDFAST_TS_COOKIE_BITS", "9")
	if r, err = parseRecoveryArgs(t); err != nil || r.CookieBits != 9 {
		t.Fatalf("env 9: %d, %v", r.CookieBits, err)
	}
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--ts-cookie-bits", "10"}, "--ts-cookie-bits 10: expected 0..9 (0: no timestamp cookies)"},
		{[]string{"--ts-cookie-bits", "-1"}, "--ts-cookie-bits -1: expected 0..9 (0: no timestamp cookies)"},
	} {
		_, err := parseRecoveryArgs(t, tc.args...)
		var ec cli.ExitCoder
		if !errors.As(err, &ec) || ec.ExitCode() != exitUsage || err.Error() != tc.msg {
			t.Errorf("%q: %v, want exit %d %q", tc.args, err, exitUsage, tc.msg)
		}
	}
}

// Cookie ids of --real: explicit with ,id=N, else derived; a collision is
// one usage line (exit 2) naming both reals.
func TestRealCookieIDs(t *testing.T) {
	run := func(args ...string) (daemon.Config, error) {
		t.Helper()
		var cfg daemon.Config
		var perr error
		app := &cli.App{Name: "t", Flags: runFlags(), Action: func(c *cli.Context) error {
			cfg, perr = parseRun(c)
			return nil
		}}
		base := []string{"t", "--recovery-addr", "198.18.200.1", "--service", "tcp:198.18.100.1:80"}
		if err := app.Run(append(base, args...)); err != nil {
			t.Fatalf("flags %q: %v", args, err)
		}
		return cfg, perr
	}
	cfg, err := run("--real", "198.18.10.11:80", "--real", "198.18.10.12:80*2,id=7")
	if err != nil {
		t.Fatal(err)
	}
	if rs := cfg.Services[0].Reals; rs[0].CookieID != 12 || rs[1].CookieID != 7 || !rs[1].CookieIDSet {
		t.Fatalf("ids %d %d", rs[0].CookieID, rs[1].CookieID)
	}
	_, err = run("--real", "198.18.10.11:80", "--real", "198.18.10.12:80,id=12")
	const want = "service tcp:198.18.100.1:80: reals 198.18.10.11:80 and 198.18.10.12:80 have the same cookie id 12; give one of them its own with ,id=N (1..15)"
	var ec cli.ExitCoder
	if !errors.As(err, &ec) || ec.ExitCode() != exitUsage || err.Error() != want {
		t.Fatalf("collision: %v\nwant exit %d %q", err, exitUsage, want)
	}
	// With cookies off, ids are not checked.
	if _, err = run("--ts-cookie-bits", "0", "--real", "198.18.10.11:80", "--real", "198.18.10.12:80,id=12"); err != nil {
		t.Fatal(err)
	}
}

// --recovery-allow takes a network prefix: one with host bits set (a typo
// for the network, or for a /32) is refused in one line.
func TestRecoveryAllowHostBits(t *testing.T) {
	if _, err := parseRecoveryArgs(t, "--recovery-allow", "198.18.1.0/24"); err != nil {
		t.Fatalf("a network prefix refused: %v", err)
	}
	_, err := parseRecoveryArgs(t, "--recovery-allow", "198.18.1.5/24")
	var ec cli.ExitCoder
	if !errors.As(err, &ec) || ec.ExitCode() != exitUsage || err.Error() != `--recovery-allow "198.18.1.5/24": host bits set; expected a network prefix (198.18.1.0/24?)` {
		t.Fatalf("host bits: %v", err)
	}
}

// A dual-stack director: IPv4 and IPv6 services side by side (a VIP of each
// family on the same port), a recovery address of each family (an
// IPv4-mapped one written as IPv4), IPv6 --recovery-allow prefixes. All of
// it parses; nothing here needs nat's IPv6 packet path.
func TestParseRunDualStack(t *testing.T) {
	var cfg daemon.Config
	var perr error
	app := &cli.App{Name: "t", Flags: runFlags(), Action: func(c *cli.Context) error {
		cfg, perr = parseRun(c)
		return nil
	}}
	args := []string{"t", "--tun", "hf0",
		"--recovery-addr", "::ffff:198.18.200.1", "--recovery-addr", "2001:2:0:30::1",
		"--recovery-allow", "198.18.0.0/15", "--recovery-allow", "2001:2::/48",
		"--service", "tcp:198.18.0.10:80", "--real", "198.18.10.11:80",
		"--service", "tcp:[2001:2::10]:80", "--real", "[2001:2:0:20::11]:80", "--real", "[2001:2:0:20::12]:80*2"}
	if err := app.Run(args); err != nil {
		t.Fatal(err)
	}
	if perr != nil {
		t.Fatalf("parseRun: %v", perr)
	}
	r := cfg.Recovery
	if want := []netip.Addr{netip.MustParseAddr("198.18.200.1"), netip.MustParseAddr("2001:2:0:30::1")}; !slices.Equal(r.Addrs, want) {
		t.Errorf("recovery addresses %v, want %v", r.Addrs, want)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("2001:2::/48")}; !slices.Equal(r.Allow, want) {
		t.Errorf("recovery allow %v, want %v", r.Allow, want)
	}
	if len(cfg.Services) != 2 || cfg.Services[1].String() != "tcp:[2001:2::10]:80" || len(cfg.Services[1].Reals) != 2 ||
		cfg.Services[1].Reals[1].Addr != netip.MustParseAddrPort("[2001:2:0:20::12]:80") {
		t.Errorf("services %v", cfg.Services)
	}
}
