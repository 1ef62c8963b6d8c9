package main

import (
	"errors"
	"fmt"
	"testing"

	"holdfast/daemon"
	"holdfast/internal/unixhttp"

	"github.com/urfave/cli/v2"
)

// TestRunError: a daemon error becomes the CLI's message, naming the flag
// of the part it is about, with the exit code of its kind (a Config the
// daemon finds wrong is a usage error).
func TestRunError(t *testing.T) {
	cfg := daemon.Config{AdminSocket: "/run/holdfast/hf0.sock", MetricsAddr: "127.0.0.1:9100", PprofAddr: "127.0.0.1:6060"}
	cause := errors.New("the cause")
	for _, tc := range []struct {
		err  error
		code int
		msg  string
	}{
		{&daemon.Error{Part: daemon.PartRoutes, Err: cause}, exitRuntime, "--setup-routes: the cause"},
		{&daemon.Error{Part: daemon.PartAdmin, Err: fmt.Errorf("socket %s: %w", cfg.AdminSocket, unixhttp.ErrInUse)}, exitRuntime,
			"--admin-socket /run/holdfast/hf0.sock: another holdfast is listening there (use another --tun or --admin-socket)"},
		{&daemon.Error{Part: daemon.PartAdmin, Err: cause}, exitRuntime, "--admin-socket: the cause"},
		{&daemon.Error{Part: daemon.PartMetrics, Err: cause}, exitRuntime, "--metrics-addr 127.0.0.1:9100: the cause"},
		{&daemon.Error{Part: daemon.PartPprof, Err: cause}, exitRuntime, "--pprof-addr 127.0.0.1:6060: the cause"},
		{&daemon.Error{Part: daemon.PartPackets, Err: cause}, exitRuntime, "packet loop: the cause"},
		{&daemon.Error{Part: daemon.PartDevice, Err: cause}, exitRuntime, "the cause"},
		{&daemon.Error{Part: daemon.PartDirector, Err: cause, Invalid: true}, exitUsage, "the cause"},
		{cause, exitRuntime, "the cause"},
	} {
		var ec cli.ExitCoder
		if err := runError(tc.err, cfg); !errors.As(err, &ec) || ec.ExitCode() != tc.code || err.Error() != tc.msg {
			t.Errorf("runError(%v) = %v (%T), want exit %d %q", tc.err, err, err, tc.code, tc.msg)
		}
	}
}

// TestFlagError: an admin API answer that names a field of the request
// names the flag of the same name.
func TestFlagError(t *testing.T) {
	for in, want := range map[string]string{
		`real: invalid real "x": expected ADDR:PORT`: `--real: invalid real "x": expected ADDR:PORT`,
		"service: invalid service":                   "--service: invalid service",
		"weight 70000: expected 0..65535":            "--weight 70000: expected 0..65535",
		"no service has real 198.18.10.11:80":        "no service has real 198.18.10.11:80",
		"realm: not a field":                         "realm: not a field",
	} {
		if got := flagError(errors.New(in)).Error(); got != want {
			t.Errorf("flagError(%q) = %q, want %q", in, got, want)
		}
	}
	if flagError(nil) != nil {
		t.Error("flagError(nil) is not nil")
	}
	unreachable := fmt.Errorf("socket /x: %w: refused", unixhttp.ErrUnreachable)
	if got := flagError(unreachable); !errors.Is(got, unixhttp.ErrUnreachable) || got.Error() == unreachable.Error() {
		t.Errorf("flagError(unreachable) = %v, want it to point at --admin-socket", got)
	}
}
