package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// `holdfast man` prints holdfast(8): the usual sections, every command and
// every option of run, roff that groff reads without a warning and man
// renders.
func TestManPage(t *testing.T) {
	code, page, stderr := holdfast(t, nil, "man")
	if code != 0 || stderr != "" || !strings.HasPrefix(page, ".TH HOLDFAST 8 ") {
		t.Fatalf("exit %d, stderr %q, stdout %.40q", code, stderr, page)
	}
	want := []string{".SH NAME\n", ".SH SYNOPSIS\n", ".SH DESCRIPTION\n", ".SH OPTIONS\n", ".SH COMMANDS\n",
		".SH ENVIRONMENT\n", ".SH FILES\n", ".SH SIGNALS\n", ".SH EXIT STATUS\n", ".SH SEE ALSO\n"}
	forCommands(newApp().Commands, "holdfast", func(name string, _ *cli.Command) {
		want = append(want, ".SS "+roffQuote(name)+"\n")
	})
	for _, f := range runFlags() {
		want = append(want, "\n.TP\n"+`\fB`+roffEscape("--"+f.Names()[0])+`\fR`)
	}
	last := -1
	for _, w := range want {
		i := strings.Index(page, w)
		if i < 0 {
			t.Errorf("no %q", w)
		}
		if strings.HasPrefix(w, ".SH") {
			if i < last {
				t.Errorf("%q out of order", w)
			}
			last = i
		}
	}
	// The groups of run's options in the help's order.
	run := page[strings.Index(page, `.SS "holdfast run"`):]
	run = run[:strings.Index(run[1:], ".SS")]
	prev := -1
	for _, cat := range categoryOrder[1:] {
		i := strings.Index(run, ".PP\n\\fI"+roffEscape(cat)+"\\fR\n")
		if i < prev {
			t.Errorf("group %q missing or out of order", cat)
		}
		prev = i
	}

	file := filepath.Join(t.TempDir(), "holdfast.8")
	if err := os.WriteFile(file, []byte(page), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("groff"); err == nil {
		out, err := exec.Command("groff", "-ww", "-z", "-man", file).CombinedOutput()
		if err != nil || len(out) > 0 {
			t.Errorf("groff -ww: %v\n%s", err, out)
		}
	}
	if _, err := exec.LookPath("man"); err != nil {
		t.Log("man not installed: the page is not rendered")
		return
	}
	cmd := exec.Command("man", "-l", file)
	cmd.Env = append(os.Environ(), "MANWIDTH=80", "MANPAGER=cat", "PAGER=cat")
	out, err := cmd.Output()
	text := string(out)
	for _, w := range []string{"NAME\n       holdfast - an L4", "SYNOPSIS\n       holdfast run [options]", "   holdfast run\n",
		"       --service value\n", "EXIT STATUS\n"} {
		if err != nil || !strings.Contains(text, w) {
			t.Errorf("man -l: %v; no %q in\n%s", err, w, text)
			break
		}
	}
}

// completionShell makes a directory with a `holdfast` that is this test
// binary running main, for shells completing through it.
func completionShell(t *testing.T) (path string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	wrapper := "#!/bin/sh\nexec env " + runMainEnv + "=1 '" + self + "' \"$@\"\n"
	if err := os.WriteFile(filepath.Join(dir, "holdfast"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir + ":" + os.Getenv("PATH")
}

// The bash completion completes commands, subcommands, flags and the
// completion command's shells, by asking holdfast itself.
func TestBashCompletion(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("skipping: bash is not installed (the completion script is bash's)")
	}
	code, script, stderr := holdfast(t, nil, "completion", "bash")
	if code != 0 || stderr != "" || !strings.Contains(script, "--generate-bash-completion") ||
		!strings.Contains(script, "\ncomplete -o bashdefault -o default -F _holdfast holdfast\n") {
		t.Fatalf("exit %d, stderr %q, script\n%s", code, stderr, script)
	}
	path := completionShell(t)
	for _, tc := range []struct {
		line  string
		want  []string // exactly these if exact, else among them
		exact bool
	}{
		{"holdfast ", []string{"run", "lab", "conns", "stats", "service", "real", "man", "completion"}, false},
		{"holdfast ru", []string{"run"}, true},
		{"holdfast run --se", []string{"--service", "--setup-routes"}, true},
		{"holdfast run --service tcp:198.18.0.10:80 --sch", []string{"--scheduler"}, true},
		{"holdfast run --log-l", []string{"--log-level"}, true},
		{"holdfast service ", []string{"list", "dump"}, false},
		{"holdfast real weight --w", []string{"--weight"}, true},
		{"holdfast completion ", []string{"bash", "zsh", "fish"}, true},
	} {
		// COMP_WORDS as bash splits the line, the last word the one
		// completed (empty after a space).
		words := strings.Split(tc.line, " ")
		cmd := exec.Command(bash, "--norc", "--noprofile", "-c", `eval "$1"; COMP_WORDS=("${@:2}"); COMP_CWORD=$(($#-2)); `+
			`_holdfast; printf '%s\n' "${COMPREPLY[@]}"`, "bash", script)
		cmd.Args = append(cmd.Args, words...)
		cmd.Env = []string{"PATH=" + path}
		var errOut bytes.Buffer
		cmd.Stderr = &errOut
		out, err := cmd.Output()
		got := strings.Fields(string(out))
		ok := err == nil && errOut.Len() == 0
		for _, w := range tc.want {
			ok = ok && slices.Contains(got, w)
		}
		if tc.exact {
			ok = ok && len(got) == len(tc.want)
		}
		if !ok {
			t.Errorf("%q<TAB>: %v %s; got %q, want %q", tc.line, err, errOut.String(), got, tc.want)
		}
	}
}

// The zsh script parses, and the fish one completes (fish's complete -C),
// where these shells are installed; a shell that is none of the three is a
// usage error.
func TestZshFishCompletion(t *testing.T) {
	for _, shell := range []string{"zsh", "fish"} {
		code, script, stderr := holdfast(t, nil, "completion", shell)
		if code != 0 || stderr != "" || !strings.Contains(script, "holdfast") {
			t.Fatalf("completion %s: exit %d, stderr %q", shell, code, stderr)
		}
		bin, err := exec.LookPath(shell)
		if err != nil {
			t.Logf("%s not installed: its script is not checked", shell)
			continue
		}
		file := filepath.Join(t.TempDir(), "holdfast."+shell)
		if err := os.WriteFile(file, []byte(script), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(bin, "-n", file).CombinedOutput(); err != nil || len(out) > 0 {
			t.Errorf("%s -n: %v\n%s", shell, err, out)
		}
		if shell != "fish" {
			continue
		}
		cmd := exec.Command(bin, "--no-config", "-c", `source $argv[1]; complete -C "holdfast ru"; complete -C "holdfast run --se"; complete -C "holdfast real "`, file)
		cmd.Env = []string{"PATH=" + completionShell(t), "HOME=" + t.TempDir()}
		out, err := cmd.Output()
		var got []string
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			word, _, _ := strings.Cut(l, "\t")
			got = append(got, word)
		}
		for _, w := range []string{"run", "--service", "--setup-routes", "add", "remove", "weight"} {
			if err != nil || !slices.Contains(got, w) {
				t.Errorf("fish complete -C: %v; got %q, no %q", err, got, w)
			}
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "holdfast: completion: which shell? expected bash, zsh or fish\n"},
		{[]string{"tcsh"}, "holdfast: completion: \"tcsh\": expected bash, zsh or fish\n"},
		{[]string{"bash", "zsh"}, "holdfast: completion: unexpected argument \"zsh\" (one shell at a time)\n"},
	} {
		if code, stdout, stderr := holdfast(t, nil, append([]string{"completion"}, tc.args...)...); code != exitUsage || stdout != "" || stderr != tc.want {
			t.Errorf("completion %q: exit %d, stdout %q, stderr %q; want exit 2, %q", tc.args, code, stdout, stderr, tc.want)
		}
	}
}

// Completing `holdfast run ...` parses the flags and runs nothing (a
// director would log on stderr and run until the helper's timeout): it
// offers urfave/cli's help subcommand only.
func TestCompletionRunsNothing(t *testing.T) {
	code, stdout, stderr := holdfast(t, nil, "run", "--tun", "hf-test", "--service", "tcp:198.18.0.10:80", "--real", "198.18.10.11:80", "--generate-bash-completion")
	if code != 0 || stderr != "" || stdout != "help\nh\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}
