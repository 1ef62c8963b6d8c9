package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
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
		// A commented-out setting is an example to uncomment: its name
		// must be a flag's too.
		line = strings.TrimPrefix(line, "#HOLDFAST_")
		if line != strings.TrimSpace(sc.Text()) {
			line = "HOLDFAST_" + line
		}
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

// `make install` under DESTDIR installs the binary, the unit, the example
// configuration, and the man page and completions the binary prints, each
// with its mode; a second run keeps an edited configuration.
func TestMakeInstall(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping in -short mode: it builds holdfast with make")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("skipping: make is not installed (CI runs the tests through make, so it has it)")
	}
	dest, bin := t.TempDir(), filepath.Join(t.TempDir(), "holdfast")
	install := func() {
		t.Helper()
		cmd := exec.Command("make", "-s", "install", "DESTDIR="+dest, "PREFIX=/usr", "BIN="+bin)
		cmd.Dir = "../.."
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("make install: %v\n%s", err, out)
		}
	}
	install()
	files := map[string]os.FileMode{
		"usr/bin/holdfast":                                  0o755,
		"usr/share/man/man8/holdfast.8":                     0o644,
		"usr/share/bash-completion/completions/holdfast":    0o644,
		"usr/share/zsh/site-functions/_holdfast":            0o644,
		"usr/share/fish/vendor_completions.d/holdfast.fish": 0o644,
		"usr/share/doc/holdfast/README.md":                  0o644,
		"lib/systemd/system/holdfast.service":               0o644,
		"etc/holdfast/holdfast.env":                         0o644,
		"etc/holdfast/services.json":                        0o644,
	}
	for name, mode := range files {
		fi, err := os.Stat(filepath.Join(dest, name))
		if err != nil {
			t.Error(err)
			continue
		}
		if fi.Mode().Perm() != mode || fi.Size() == 0 {
			t.Errorf("%s: mode %v, %d bytes; want %v, not empty", name, fi.Mode().Perm(), fi.Size(), mode)
		}
	}
	for name, start := range map[string]string{
		"usr/share/man/man8/holdfast.8":                     ".TH HOLDFAST 8 ",
		"usr/share/bash-completion/completions/holdfast":    "# bash completion for holdfast",
		"usr/share/zsh/site-functions/_holdfast":            "#compdef holdfast\n",
		"usr/share/fish/vendor_completions.d/holdfast.fish": "# holdfast fish shell completion",
	} {
		if b, err := os.ReadFile(filepath.Join(dest, name)); err != nil || !strings.HasPrefix(string(b), start) {
			t.Errorf("%s does not start with %q: %v", name, start, err)
		}
	}
	env := filepath.Join(dest, "etc/holdfast/holdfast.env")
	if err := os.WriteFile(env, []byte("HOLDFAST_TUN=edited\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	install()
	if b, _ := os.ReadFile(env); string(b) != "HOLDFAST_TUN=edited\n" {
		t.Errorf("a second make install replaced the edited holdfast.env: %q", b)
	}
}

// The keepalived sample is valid as shipped (IPv4) and with its IPv6
// instances uncommented and listed in the sync group.
func TestKeepalivedSample(t *testing.T) {
	ka, err := exec.LookPath("keepalived")
	if err != nil {
		t.Skip("skipping: keepalived is not installed (.ci/run installs it)")
	}
	b, err := os.ReadFile("../../deploy/keepalived.conf")
	if err != nil {
		t.Fatal(err)
	}
	sample := string(b)
	i := strings.Index(sample, "# With IPv6 services (dual-stack directors)")
	if i < 0 {
		t.Fatal("the sample has no IPv6 part")
	}
	head := strings.NewReplacer("#clients6", "clients6", "#reals6", "reals6").Replace(sample[:i])
	var v6 []string
	for _, l := range strings.Split(sample[i:], "\n") {
		switch {
		case strings.HasPrefix(l, "#vrrp_instance"), strings.HasPrefix(l, "#    "), l == "#}":
			l = l[1:]
		case l == "#":
			l = ""
		}
		v6 = append(v6, l)
	}
	dir := t.TempDir()
	for name, conf := range map[string]string{"ipv4.conf": sample, "dual.conf": head + strings.Join(v6, "\n")} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(ka, "--config-test", "-f", path).CombinedOutput(); err != nil || len(out) != 0 {
			t.Errorf("keepalived --config-test %s: %v\n%s", name, err, out)
		}
	}
	if !strings.Contains(head, "\n        clients6 ") || !strings.Contains(strings.Join(v6, "\n"), "native_ipv6") {
		t.Error("the IPv6 instances were not uncommented: the test checks nothing")
	}
}

// The routers' samples for BGP (deploy/) parse: BIRD's with bird -p, FRR's
// with vtysh --dryrun (both exit non-zero on an unknown statement).
func TestRouterSamples(t *testing.T) {
	for _, tc := range []struct {
		tool  string
		args  []string
		files []string
	}{
		{"bird", []string{"-p", "-c"}, []string{"bird-client-side.conf", "bird-real-side.conf"}},
		{"vtysh", []string{"--dryrun", "-f"}, []string{"frr-client-side.conf", "frr-real-side.conf"}},
	} {
		t.Run(tc.tool, func(t *testing.T) {
			bin, err := exec.LookPath(tc.tool)
			if err != nil {
				t.Skipf("skipping: %s is not installed (.ci/run installs bird2 and frr)", tc.tool)
			}
			for _, f := range tc.files {
				out, err := exec.Command(bin, append(tc.args, filepath.Join("../../deploy", f))...).CombinedOutput()
				if err != nil {
					t.Errorf("%s %s: %v\n%s", tc.tool, f, err, out)
				}
			}
		})
	}
}
