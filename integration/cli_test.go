package integration

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

var expectedWord = regexp.MustCompile(`\bexpected\b`)

// TestBadArguments runs `holdfast run` with a bad flag value or config file:
// it must exit with status 2 and print one line on stderr naming the flag or
// field, the value and what is expected. No root needed; as root the binary
// runs in a throwaway network namespace (unshare -n), so a value wrongly
// accepted cannot create a TUN device on the host.
func TestBadArguments(t *testing.T) {
	bin := holdfastBinary(t)
	dir := t.TempDir()
	writeConfig := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	svc := []string{"--service", "tcp:198.18.100.1:80"}
	unknownSched := writeConfig("sched.json", `{"services":[{"service":"tcp:198.18.100.1:80","scheduler":"fastest","reals":["198.18.10.11:80"]}]}`)
	syntaxErr := writeConfig("syntax.json", "{\"services\":[\n  {\"service\":\"tcp:198.18.100.1:80\",,\"reals\":[\"198.18.10.11:80\"]}]}\n")
	truncated := writeConfig("truncated.json", "{\"services\":[\n  {\"service\":\"tcp:198.18.100.1:80\",\n")
	badReal := writeConfig("real.json", `{"services":[{"service":"tcp:198.18.100.1:80","scheduler":"wrr","reals":["198.18.10.11:80*3","198.18.10.12"]}]}`)
	unknownField := writeConfig("field.json", `{"services":[{"service":"tcp:198.18.100.1:80","schedular":"rr","reals":["198.18.10.11:80"]}]}`)

	for _, tc := range []struct {
		name string
		args []string
		want []string // substrings of the one stderr line: flag or field, value, expectation
		// expected: the line must also say what is expected in so many words
		// ("unexpected EOF" does not count).
		expected bool
		// noRecoveryAddr leaves out the (valid) --recovery-addr.
		noRecoveryAddr bool
	}{
		{name: "real without port", args: append(svc, "--real", "198.18.10.11"),
			want: []string{"--real", `"198.18.10.11"`, "ADDR:PORT"}, expected: true},
		{name: "real with bad weight", args: append(svc, "--real", "198.18.10.11:80*x"),
			want: []string{"--real", "198.18.10.11:80*x", "0..65535"}},
		{name: "service with bad protocol", args: []string{"--service", "sctp:198.18.100.1:80", "--real", "198.18.10.11:80"},
			want: []string{"--service", "sctp:198.18.100.1:80", "tcp or udp"}, expected: true},
		{name: "unknown scheduler flag", args: append(svc, "--scheduler", "fastest", "--real", "198.18.10.11:80"),
			want: []string{"--scheduler", "fastest", "rr, wrr, sh, dh, lc, mh or mh:addr"}, expected: true},
		{name: "config: unknown scheduler", args: []string{"--config", unknownSched},
			want: []string{unknownSched, "scheduler", "fastest", "rr, wrr, sh, dh, lc, mh or mh:addr"}, expected: true},
		{name: "config: JSON syntax error", args: []string{"--config", syntaxErr},
			want: []string{syntaxErr, "line 2"}, expected: true},
		{name: "config: truncated JSON", args: []string{"--config", truncated},
			want: []string{truncated}, expected: true},
		{name: "config: real without port", args: []string{"--config", badReal},
			want: []string{badReal, "reals[1]", `"198.18.10.12"`, "ADDR:PORT"}, expected: true},
		{name: "config: unknown field", args: []string{"--config", unknownField},
			want: []string{unknownField, "schedular"}},
		{name: "recovery without address", args: append(svc, "--real", "198.18.10.11:80"),
			want: []string{"--recovery-addr", "--recovery=off"}, noRecoveryAddr: true},
		{name: "config: missing file", args: []string{"--config", filepath.Join(dir, "absent.json")},
			want: []string{"--config", filepath.Join(dir, "absent.json")}},
		{name: "packet nice out of range", args: append(svc, "--real", "198.18.10.11:80", "--packet-nice", "-21"),
			want: []string{"--packet-nice", "-21", "-20..19"}, expected: true},
		{name: "tun queues out of range", args: append(svc, "--real", "198.18.10.11:80", "--tun-queues", "0"),
			want: []string{"--tun-queues", "0", "1..64"}, expected: true},
		{name: "budget prefix length out of range", args: append(svc, "--real", "198.18.10.11:80", "--recovery-prefix-len4", "33"),
			want: []string{"--recovery-prefix-len4", "33", "1..32"}, expected: true},
		{name: "IPv6 budget prefix length out of range", args: append(svc, "--real", "198.18.10.11:80", "--recovery-prefix-len6", "129"),
			want: []string{"--recovery-prefix-len6", "129", "1..128"}, expected: true},
		{name: "no recoveries in flight per prefix", args: append(svc, "--real", "198.18.10.11:80", "--recovery-prefix-inflight", "0"),
			want: []string{"--recovery-prefix-inflight", "0", "positive"}, expected: true},
		{name: "no recovered flows per prefix", args: append(svc, "--real", "198.18.10.11:80", "--recovery-prefix-flows", "-1"),
			want: []string{"--recovery-prefix-flows", "-1", "positive"}, expected: true},
		{name: "unconfirmed timeout zero", args: append(svc, "--real", "198.18.10.11:80", "--timeout-recovered-unconfirmed", "0s"),
			want: []string{"--timeout-recovered-unconfirmed", "0s", "positive duration"}, expected: true},
		{name: "tun queues without offload", args: append(svc, "--real", "198.18.10.11:80", "--tun-queues", "2", "--tun-offload=false"),
			want: []string{"--tun-queues", "2", "--tun-offload"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			argv := append([]string{bin, "run", "--tun", "hf0", "--log-format", "json"}, tc.args...)
			if !tc.noRecoveryAddr {
				// Valid, so that the one bad value is what gets reported.
				argv = append(argv, "--recovery-addr", "198.18.200.1")
			}
			if os.Geteuid() == 0 {
				argv = append([]string{"unshare", "--net"}, argv...)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Fatalf("%q: %v, want exit status 2\nstderr:\n%s", argv, err, stderr.String())
			}
			lines := strings.Split(strings.TrimRight(stderr.String(), "\n"), "\n")
			if len(lines) != 1 {
				t.Errorf("stderr has %d lines, want 1:\n%s", len(lines), stderr.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr %q does not contain %q", stderr.String(), w)
				}
			}
			if tc.expected && !expectedWord.MatchString(stderr.String()) {
				t.Errorf("stderr %q does not say what is expected", stderr.String())
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout %q, want nothing", stdout.String())
			}
		})
	}
}
