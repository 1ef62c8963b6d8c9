package main

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"

	"holdfast/daemon/adminapi"

	"github.com/urfave/cli/v2"
)

var testConns = []adminapi.Conn{
	{Proto: "tcp", Client: "198.18.1.1:40000", VIP: "198.18.100.1:80", Real: "198.18.10.11:80", State: "ESTABLISHED", Kind: "plain"},
	{Proto: "tcp", Client: "198.18.1.2:40001", VIP: "198.18.100.1:80", Real: "198.18.10.12:80", State: "TIME_WAIT", Kind: "plain"},
	{Proto: "udp", Client: "198.18.1.3:5000", VIP: "198.18.100.1:80", Real: "198.18.10.11:80", State: "UDP", Kind: "plain"},
	{Proto: "tcp", Client: "198.18.1.4:40002", VIP: "198.18.100.1:443", Real: "198.18.10.11:443", State: "ESTABLISHED", Kind: "recovered", Local: "198.18.200.1:61000"},
}

// TestConnFilter: each filter flag keeps its flows; given together they
// all apply; a bad value is a usage error naming the flag.
func TestConnFilter(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want []string // clients kept
	}{
		{"none", nil, []string{"198.18.1.1:40000", "198.18.1.2:40001", "198.18.1.3:5000", "198.18.1.4:40002"}},
		{"service", []string{"--service", "tcp:198.18.100.1:80"}, []string{"198.18.1.1:40000", "198.18.1.2:40001"}},
		{"service udp, any case", []string{"--service", "UDP:198.18.100.1:80"}, []string{"198.18.1.3:5000"}},
		{"real", []string{"--real", "198.18.10.11:80"}, []string{"198.18.1.1:40000", "198.18.1.3:5000"}},
		{"state, any case", []string{"--state", "established"}, []string{"198.18.1.1:40000", "198.18.1.4:40002"}},
		{"all three", []string{"--service", "tcp:198.18.100.1:80", "--real", "198.18.10.11:80", "--state", "ESTABLISHED"}, []string{"198.18.1.1:40000"}},
		{"nothing matches", []string{"--real", "198.18.10.13:80"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := parseConnFilter(t, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, c := range f.filter(slices.Clone(testConns)) {
				got = append(got, c.Client)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("kept %v, want %v", got, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--service", "sctp:198.18.100.1:80"}, "--service: "},
		{[]string{"--real", "198.18.10.11"}, `--real "198.18.10.11": expected ADDR:PORT`},
		{[]string{"--state", "ESTABLISHD"}, `--state "ESTABLISHD": expected one of ESTABLISHED, SYN_SENT,`},
		{[]string{"--state", "NONE"}, `--state "NONE": expected one of`},
	} {
		_, err := parseConnFilter(t, tc.args...)
		var ec cli.ExitCoder
		if !errors.As(err, &ec) || ec.ExitCode() != exitUsage || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%v: %v, want a usage error starting %q", tc.args, err, tc.want)
		}
	}
}

// parseConnFilter runs conns' filter flags through a cli.App as conns has
// them.
func parseConnFilter(t *testing.T, args ...string) (connFilter, error) {
	t.Helper()
	var f connFilter
	var ferr error
	var conns *cli.Command
	for _, c := range ctlCommands() {
		if c.Name == "conns" {
			conns = c
		}
	}
	cmd := *conns
	cmd.Action = func(c *cli.Context) error { f, ferr = newConnFilter(c); return nil }
	app := &cli.App{Name: "holdfast", Commands: []*cli.Command{&cmd}}
	if err := app.Run(append([]string{"holdfast", "conns"}, args...)); err != nil {
		t.Fatal(err)
	}
	return f, ferr
}

// TestConnsTable: a line per flow under the header, sorted by client, then
// the count.
func TestConnsTable(t *testing.T) {
	var b bytes.Buffer
	in := []adminapi.Conn{testConns[3], testConns[0]}
	if err := writeConns(&b, in); err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"PRO  CLIENT            VIP               REAL              STATE        KIND       EXPIRES  LOCAL               SEQ-DELTA  ACK-DELTA",
		"TCP  198.18.1.1:40000  198.18.100.1:80   198.18.10.11:80   ESTABLISHED  plain      00:00    -                   0          0",
		"TCP  198.18.1.4:40002  198.18.100.1:443  198.18.10.11:443  ESTABLISHED  recovered  00:00    198.18.200.1:61000  0          0",
		"2 flows",
		"",
	}, "\n")
	if got := b.String(); got != want {
		t.Errorf("table\n%s\nwant\n%s", got, want)
	}
	b.Reset()
	if err := writeConns(&b, nil); err != nil || !strings.HasSuffix(b.String(), "\n0 flows\n") {
		t.Errorf("no flows: %v\n%s", err, b.String())
	}
	b.Reset()
	if err := writeConns(&b, in[:1]); err != nil || !strings.HasSuffix(b.String(), "\n1 flow\n") {
		t.Errorf("one flow: %v\n%s", err, b.String())
	}
}
