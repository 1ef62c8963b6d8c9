package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"holdfast/balancer"
	"holdfast/daemon"

	"github.com/urfave/cli/v2"
)

// runMainEnv makes the test binary run main instead of the tests, so that
// a test can run holdfast as a user does: its exit code, stdout, stderr.
const runMainEnv = "HOLDFAST_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		os.Args = append([]string{"holdfast"}, os.Args[1:]...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// holdfast runs the test binary as holdfast with args and env added to a
// clean environment (no HOLDFAST_* of the caller's). As root it runs in a
// throwaway network namespace (unshare -n), so that a value wrongly
// accepted cannot create a TUN device on the host.
func holdfast(t *testing.T, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	argv := append([]string{self}, args...)
	if os.Geteuid() == 0 {
		argv = append([]string{"unshare", "--net"}, argv...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append([]string{runMainEnv + "=1", "PATH=" + os.Getenv("PATH")}, env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("%q: %v", argv, err)
	}
	return code, out.String(), errOut.String()
}

// loadArgs runs loadServices on the run flags set from args, twice, and
// requires the same answer both times (reading the flags keeps no state).
func loadArgs(t *testing.T, args ...string) ([]*balancer.Service, error) {
	t.Helper()
	var svcs []*balancer.Service
	var lerr error
	app := &cli.App{Name: "t", Flags: runFlags(), Action: func(c *cli.Context) error {
		svcs, lerr = loadServices(c)
		again, err := loadServices(c)
		if describe(again) != describe(svcs) || (err == nil) != (lerr == nil) {
			t.Errorf("%q: a second load gave %v, %v; the first %v, %v", args, describe(again), err, describe(svcs), lerr)
		}
		return nil
	}}
	if err := app.Run(append([]string{"t"}, args...)); err != nil {
		t.Fatalf("flags %q: %v", args, err)
	}
	return svcs, lerr
}

// describe writes services as "PROTO:VIP:PORT SCHED [p=D] [check] REAL*W...; ...".
func describe(svcs []*balancer.Service) string {
	var parts []string
	for _, s := range svcs {
		p := []string{s.String(), s.Scheduler.Name()}
		if s.Persistence != 0 {
			p = append(p, "p="+s.Persistence.String())
		}
		if s.Check != (balancer.Check{}) {
			p = append(p, "check")
		}
		for _, r := range s.Reals {
			p = append(p, r.Addr.String()+"*"+strconv.Itoa(r.Weight))
		}
		parts = append(parts, strings.Join(p, " "))
	}
	return strings.Join(parts, "; ")
}

// TestServiceFlagGroups: which per-service flags go to which service.
func TestServiceFlagGroups(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{name: "ipvsadm order, tcp and udp on one VIP:PORT",
			args: []string{"--service", "tcp:198.18.0.10:5201", "--real", "198.18.10.11:5201",
				"--service=udp:198.18.0.10:5201", "--scheduler=rr", "--real=198.18.10.11:5201",
				"--service", "tcp:198.18.0.10:80", "--scheduler", "sh", "--persistence", "10m", "--check", "tcp",
				"--real", "198.18.10.11:80*2", "--real", "198.18.10.12:80,198.18.10.13:80,id=5"},
			want: "tcp:198.18.0.10:5201 wrr 198.18.10.11:5201*1; udp:198.18.0.10:5201 rr 198.18.10.11:5201*1; " +
				"tcp:198.18.0.10:80 sh p=10m0s check 198.18.10.11:80*2 198.18.10.12:80*1 198.18.10.13:80*1"},
		{name: "one service, its flags in any order",
			args: []string{"--scheduler", "rr", "--real", "198.18.10.11:80", "--service", "tcp:198.18.0.10:80", "--real", "198.18.10.12:80*0"},
			want: "tcp:198.18.0.10:80 rr 198.18.10.11:80*1 198.18.10.12:80*0"},
		{name: "one service from variables",
			env:  map[string]string{"HOLDFAST_SERVICE": "udp:198.18.0.10:53", "HOLDFAST_REAL": "198.18.10.11:53,198.18.10.12:53,id=4", "HOLDFAST_SCHEDULER": "sh"},
			want: "udp:198.18.0.10:53 sh 198.18.10.11:53*1 198.18.10.12:53*1"},
		{name: "the command line wins over a variable",
			env:  map[string]string{"HOLDFAST_SERVICE": "udp:198.18.0.10:53", "HOLDFAST_REAL": "198.18.10.11:53", "HOLDFAST_SCHEDULER": "sh"},
			args: []string{"--service", "tcp:198.18.0.10:80", "--real", "198.18.10.12:80"},
			want: "tcp:198.18.0.10:80 sh 198.18.10.12:80*1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			svcs, err := loadArgs(t, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			if got := describe(svcs); got != tc.want {
				t.Errorf("services\n%s, want\n%s", got, tc.want)
			}
		})
	}
	// The flags of one parse are not those of the next.
	a, _ := loadArgs(t, "--service", "tcp:198.18.0.10:80", "--real", "198.18.10.11:80")
	b, _ := loadArgs(t, "--service", "tcp:198.18.0.10:81", "--real", "198.18.10.11:81")
	if len(a) != 1 || len(b) != 1 || !slices.Equal([]string{a[0].String(), b[0].String()}, []string{"tcp:198.18.0.10:80", "tcp:198.18.0.10:81"}) {
		t.Errorf("two parses: %s then %s", describe(a), describe(b))
	}
}

// TestReloadServices: a SIGHUP rereads --config only; services from flags
// have nothing to reload (reading the flags again would undo the runtime
// changes), said in one line.
func TestReloadServices(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.json")
	if err := os.WriteFile(file, []byte(`{"services":[{"service":"tcp:198.18.0.10:80","reals":["198.18.10.11:80*2"]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args    []string
		want    string
		wantErr string
	}{
		{[]string{"--service", "tcp:198.18.0.10:80", "--real", "198.18.10.11:80"}, "", "no --config; nothing to reload"},
		{[]string{"--config", file}, "tcp:198.18.0.10:80 wrr 198.18.10.11:80*2", ""},
	} {
		app := &cli.App{Name: "t", Flags: runFlags(), Action: func(c *cli.Context) error {
			svcs, err := reloadServices(c)()
			switch {
			case tc.wantErr != "" && (!errors.Is(err, daemon.ErrNothingToReload) || err.Error() != tc.wantErr):
				t.Errorf("%q: reload error %v, want %q", tc.args, err, tc.wantErr)
			case tc.wantErr == "" && (err != nil || describe(svcs) != tc.want):
				t.Errorf("%q: reload %s, %v; want %s", tc.args, describe(svcs), err, tc.want)
			}
			return nil
		}}
		if err := app.Run(append([]string{"t"}, tc.args...)); err != nil {
			t.Fatal(err)
		}
	}
}
