package main

import (
	"bytes"
	"strings"
	"testing"
)

// Every usage error, whichever part of the CLI finds it, is one line on
// stderr with one "holdfast:" prefix, and exit status 2.
func TestOneErrorPath(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"unknown command", nil, []string{"nosuch"}, `holdfast: unknown command "nosuch" (see 'holdfast --help')`},
		{"unknown flag of the app", nil, []string{"--bogus"}, "holdfast: unknown flag --bogus (see 'holdfast --help')"},
		{"missing required flags", nil, []string{"real", "weight", "--service", "tcp:198.18.100.1:80"},
			"holdfast: real weight: --real, --weight not set (see 'holdfast real weight --help')"},
		{"environment variable that does not parse", map[string]string{"HOLDFAST_MAX_FLOWS": "abc"},
			[]string{"run", "--tun", "hf0", "--service", "tcp:198.18.100.1:80", "--real", "198.18.10.11:80"},
			`holdfast: run: HOLDFAST_MAX_FLOWS="abc" (for --max-flows): expected an integer (see 'holdfast run --help')`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var stderr bytes.Buffer
			code := run(newApp(), append([]string{"holdfast"}, tc.args...), &stderr)
			if got := strings.TrimRight(stderr.String(), "\n"); code != exitUsage || got != tc.want {
				t.Fatalf("exit %d, stderr %q; want exit %d, %q", code, got, exitUsage, tc.want)
			}
		})
	}
}

// --version prints the build's version and exits 0.
func TestVersion(t *testing.T) {
	var stderr bytes.Buffer
	app := newApp()
	var stdout bytes.Buffer
	app.Writer = &stdout
	if code := run(app, []string{"holdfast", "--version"}, &stderr); code != 0 || !strings.HasPrefix(stdout.String(), "holdfast version ") || stderr.Len() != 0 {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
}

// An interface name the kernel would refuse is refused up front.
func TestTUNName(t *testing.T) {
	for name, ok := range map[string]bool{"hf0": true, "holdfast-tun-15": true, "": false, "holdfast-tun-016": false,
		"a/b": false, "a:b": false, "a b": false, ".": false, "..": false} {
		if validIfName(name) != ok {
			t.Errorf("validIfName(%q) = %v, want %v", name, !ok, ok)
		}
	}
}
