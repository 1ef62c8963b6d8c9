package main

import (
	"bufio"
	"os"
	"strings"
	"testing"
)

// The packaging in dist/ matches the CLI: every variable of the example
// environment file is a flag's (a typo would be ignored by urfave/cli and
// the director run without it), the example config file loads, and the unit
// starts `holdfast run`, waits for its READY=1 and reloads with SIGHUP.
func TestDist(t *testing.T) {
	vars := map[string]bool{}
	for _, f := range runFlags() {
		if ev, ok := f.(interface{ GetEnvVars() []string }); ok {
			for _, v := range ev.GetEnvVars() {
				vars[v] = true
			}
		}
	}
	env, err := os.Open("../../dist/holdfast.env")
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	sc := bufio.NewScanner(env)
	n := 0
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, _, ok := strings.Cut(line, "=")
		if !ok || !vars[name] {
			t.Errorf("dist/holdfast.env: %q is no flag's variable", line)
		}
		n++
	}
	if n == 0 {
		t.Fatal("dist/holdfast.env sets nothing")
	}
	if svcs, err := loadConfigFile("../../dist/services.json"); err != nil || len(svcs) == 0 {
		t.Fatalf("dist/services.json: %v", err)
	}
	unit, err := os.ReadFile("../../dist/holdfast.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"\nType=notify\n", "\nExecStart=/usr/local/bin/holdfast run\n", "\nExecReload=/bin/kill -HUP $MAINPID\n",
		"\nEnvironmentFile=/etc/holdfast/holdfast.env\n", "\nDeviceAllow=/dev/net/tun rw\n"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("dist/holdfast.service lacks %q", strings.TrimSpace(want))
		}
	}
}
