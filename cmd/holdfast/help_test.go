package main

import (
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
)

// `holdfast run --help` lists its option groups in the order of use,
// Service first, each group's options as runFlags lists them, and every
// wrapped text continues under its start.
func TestRunHelpGroups(t *testing.T) {
	code, stdout, stderr := holdfast(t, nil, "run", "--help")
	if code != 0 || stderr != "" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	_, opts, ok := strings.Cut(stdout, "\nOPTIONS:\n")
	if !ok {
		t.Fatalf("no OPTIONS in\n%s", stdout)
	}
	var headers, flags []string
	col := 0
	for _, l := range strings.Split(opts, "\n") {
		switch {
		case l == "":
		case strings.HasPrefix(l, "   --"):
			flags = append(flags, strings.Fields(l)[0])
			// The text column: after the names and at least two spaces.
			if gap := strings.Index(l[3:], "  "); gap > 0 {
				text := len(l) - len(strings.TrimLeft(l[3+gap:], " "))
				if col != 0 && text != col {
					t.Errorf("text at column %d, others at %d: %q", text, col, l)
				}
				col = text
			}
		case !strings.HasPrefix(l, "    "):
			headers = append(headers, strings.TrimSpace(l))
		default:
			// A continuation line: under the text column.
			if ind := len(l) - len(strings.TrimLeft(l, " ")); col != 0 && ind != col {
				t.Errorf("continuation indented %d, text column %d: %q", ind, col, l)
			}
		}
	}
	want := []string{catService, catDevice, catTable, catRecover, catChecks, catBGP, catAdmin, catLog}
	if !slices.Equal(headers, want) {
		t.Errorf("groups %q, want %q", headers, want)
	}
	if len(flags) < 5 || !slices.Equal(flags[:5], []string{"--service", "--scheduler", "--real", "--persistence", "--check"}) {
		t.Errorf("options begin %q, want the per-service ones in the order of use", flags[:min(5, len(flags))])
	}
	if col == 0 {
		t.Error("no text column found")
	}
	// Every category of `run` has its place in the order.
	for _, f := range runFlags() {
		if cat := f.(cli.CategorizableFlag).GetCategory(); !slices.Contains(categoryOrder, cat) {
			t.Errorf("--%s: category %q is not in categoryOrder", f.Names()[0], cat)
		}
	}
}

// Help that does not go to a terminal is wrapped at 80 columns, for every
// command.
func TestHelpWidth(t *testing.T) {
	var paths [][]string
	var walk func([]string, []*cli.Command)
	walk = func(prefix []string, cmds []*cli.Command) {
		for _, c := range cmds {
			p := append(slices.Clone(prefix), c.Name)
			paths = append(paths, p)
			walk(p, c.Subcommands)
		}
	}
	paths = append(paths, nil)
	walk(nil, newApp().Commands)
	for _, p := range paths {
		code, stdout, stderr := holdfast(t, nil, append(p, "--help")...)
		if code != 0 || stderr != "" || !strings.HasPrefix(stdout, "NAME:\n") {
			t.Errorf("%q --help: exit %d, stderr %q, stdout %.40q", p, code, stderr, stdout)
		}
		for _, l := range strings.Split(stdout, "\n") {
			if len(l) > defaultHelpWidth {
				t.Errorf("%q --help: %d columns: %q", p, len(l), l)
			}
		}
	}
}

// On a terminal, help is wrapped to its width.
func TestHelpTerminalWidth(t *testing.T) {
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	defer ptmx.Close()
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pts.Close()
	if err := unix.IoctlSetWinsize(int(pts.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 40, Col: 120}); err != nil {
		t.Fatal(err)
	}
	if got := helpWidth(pts); got != 120 {
		t.Errorf("helpWidth(a 120-column terminal) = %d", got)
	}
	if got := helpWidth(&strings.Builder{}); got != defaultHelpWidth {
		t.Errorf("helpWidth(not a file) = %d", got)
	}
	cmd := runCommand()
	out := formatOptions(cmd, 120)
	widest := 0
	for _, l := range strings.Split(out, "\n") {
		widest = max(widest, len(l))
	}
	if widest > 120 || widest <= defaultHelpWidth {
		t.Errorf("options wrapped at 120 columns: widest line %d", widest)
	}
}

func TestWrapText(t *testing.T) {
	for _, tc := range []struct {
		text          string
		indent, width int
		want          string
	}{
		{"a b c", 2, 80, "a b c"},
		{"aaa bbb ccc", 2, 9, "aaa bbb\n  ccc"},
		{"aaaaaaaaaa b", 2, 6, "aaaa\n  aaaa\n  aa b"},
		{"", 2, 10, ""},
	} {
		if got := wrapText(tc.text, tc.indent, tc.width); got != tc.want {
			t.Errorf("wrapText(%q, %d, %d) = %q, want %q", tc.text, tc.indent, tc.width, got, tc.want)
		}
	}
}
