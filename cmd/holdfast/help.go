package main

import (
	"io"
	"os"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
)

// The help text. urfave/cli sorts option groups by name and each group's
// options by name, and wraps options not at all, the rest only when given a
// width; an operator reads `run --help` in the
// order of setting a director up (flags.go's categoryOrder, each group's
// options as runFlags lists them), wrapped to the terminal (80 columns when
// not on one), continuation lines under the text they continue.

// Help is printed by urfave/cli through this package variable; every
// command's template (helpTemplates) asks for the functions below.
func init() { cli.HelpPrinter = printHelp }

func printHelp(out io.Writer, templ string, data any) {
	width := helpWidth(out)
	cli.HelpPrinterCustom(out, templ, data, map[string]any{
		// urfave/cli's own "wrap" (names, usage, commands) wraps at wrapAt.
		"wrapAt":  func() int { return width },
		"options": func(data any) string { return formatOptions(data, width) },
	})
}

// defaultHelpWidth is the width of help that does not go to a terminal (a
// pipe, a file, a test).
const defaultHelpWidth = 80

// helpWidth is the width of out's terminal, or defaultHelpWidth.
func helpWidth(out io.Writer) int {
	if f, ok := out.(*os.File); ok {
		if ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ); err == nil && ws.Col > 0 {
			return int(ws.Col)
		}
	}
	return defaultHelpWidth
}

// commandHelpTemplate and subcommandHelpTemplate are urfave/cli's
// CommandHelpTemplate and SubcommandHelpTemplate (a command with
// subcommands) with the options printed by formatOptions.
const (
	commandHelpTemplate = `NAME:
   {{template "helpNameTemplate" .}}

USAGE:
   {{template "usageTemplate" .}}{{if .Description}}

DESCRIPTION:
   {{template "descriptionTemplate" .}}{{end}}{{if .VisibleFlags}}

OPTIONS:
{{options .}}{{end}}
`
	subcommandHelpTemplate = `NAME:
   {{template "helpNameTemplate" .}}

USAGE:
   {{template "usageTemplate" .}}{{if .Description}}

DESCRIPTION:
   {{template "descriptionTemplate" .}}{{end}}{{if .VisibleCommands}}

COMMANDS:{{template "visibleCommandCategoryTemplate" .}}{{end}}{{if .VisibleFlags}}

OPTIONS:
{{options .}}{{end}}
`
)

// appHelpTemplate is urfave/cli's AppHelpTemplate with the options printed
// by formatOptions.
const appHelpTemplate = `NAME:
   {{template "helpNameTemplate" .}}

USAGE:
   {{.HelpName}} {{if .VisibleFlags}}[global options]{{end}}{{if .Commands}} command [command options]{{end}}{{if .Version}}

VERSION:
   {{.Version}}{{end}}{{if .VisibleCommands}}

COMMANDS:{{template "visibleCommandCategoryTemplate" .}}{{end}}{{if .VisibleFlags}}

GLOBAL OPTIONS:
{{options .}}{{end}}
`

// helpTemplates gives app and every command the templates above.
func helpTemplates(app *cli.App) {
	app.CustomAppHelpTemplate = appHelpTemplate
	var walk func([]*cli.Command)
	walk = func(cmds []*cli.Command) {
		for _, cmd := range cmds {
			// As urfave/cli chooses; its setup gives a command without
			// subcommands a help subcommand too, not worth listing.
			cmd.CustomHelpTemplate = commandHelpTemplate
			if len(cmd.Subcommands) > 0 {
				cmd.CustomHelpTemplate = subcommandHelpTemplate
			}
			walk(cmd.Subcommands)
		}
	}
	walk(app.Commands)
}

// flagGroup is one category of options, in the order they are listed.
type flagGroup struct {
	name  string
	flags []cli.Flag
}

// groupFlags puts flags in categoryOrder's groups, uncategorized ones first
// (a subcommand's own flags) and others after the known ones; each group
// keeps the flags' order. --help goes last, alone if it is all there is
// outside a category.
func groupFlags(flags []cli.Flag) []flagGroup {
	var groups []flagGroup
	var help cli.Flag
	for _, f := range flags {
		if f == cli.HelpFlag {
			help = f
			continue
		}
		cat := ""
		if cf, ok := f.(cli.CategorizableFlag); ok {
			cat = cf.GetCategory()
		}
		i := slices.IndexFunc(groups, func(g flagGroup) bool { return g.name == cat })
		if i < 0 {
			groups = append(groups, flagGroup{name: cat})
			i = len(groups) - 1
		}
		groups[i].flags = append(groups[i].flags, f)
	}
	rank := func(name string) int {
		if i := slices.Index(categoryOrder, name); i >= 0 {
			return i
		}
		return len(categoryOrder)
	}
	slices.SortStableFunc(groups, func(a, b flagGroup) int { return rank(a.name) - rank(b.name) })
	if help != nil {
		if len(groups) > 0 && groups[0].name == "" {
			groups[0].flags = append(groups[0].flags, help)
		} else {
			groups = append(groups, flagGroup{flags: []cli.Flag{help}})
		}
	}
	return groups
}

// flagParts splits a flag's help line into its names ("--tun value") and
// its text (usage, default, environment variable).
func flagParts(f cli.Flag) (names, text string) {
	names, text, _ = strings.Cut(f.String(), "\t")
	// A repeatable flag's "--x value [ --x value ]": its usage says
	// "repeatable".
	names, _, _ = strings.Cut(names, " [ ")
	return names, strings.TrimSpace(text)
}

// Layout of the options: names indented by optIndent, texts in one column
// after the longest names up to optNamesMax (longer ones put their text on
// the next line), at least optTextMin wide.
const (
	optIndent   = 3
	optNamesMax = 30
	optTextMin  = 24
)

// formatOptions lists data's (an app's or command's) visible flags in their
// groups, wrapped to width.
func formatOptions(data any, width int) string {
	v, ok := data.(interface{ VisibleFlags() []cli.Flag })
	if !ok {
		return ""
	}
	groups := groupFlags(v.VisibleFlags())
	col := 0
	for _, g := range groups {
		for _, f := range g.flags {
			if n, _ := flagParts(f); len(n) <= optNamesMax {
				col = max(col, len(n))
			}
		}
	}
	col += optIndent + 2
	if width-col < optTextMin {
		col = 2 * optIndent
	}
	pad := strings.Repeat(" ", optIndent)
	var b strings.Builder
	for i, g := range groups {
		if i > 0 {
			b.WriteString("\n")
		}
		if g.name != "" {
			b.WriteString(pad + g.name + "\n\n")
		}
		for _, f := range g.flags {
			names, text := flagParts(f)
			line := pad + names
			if text != "" {
				if len(line)+2 > col {
					b.WriteString(line + "\n")
					line = ""
				}
				line += strings.Repeat(" ", col-len(line)) + wrapText(text, col, width)
			}
			b.WriteString(line + "\n")
		}
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// wrapText breaks text into lines of at most width-indent characters, every
// line but the first indented by indent spaces; a word too long for a line
// is cut.
func wrapText(text string, indent, width int) string {
	n := max(width-indent, 1)
	var lines []string
	line := ""
	for _, w := range strings.Fields(text) {
		for len(w) > n {
			if line != "" {
				lines, line = append(lines, line), ""
			}
			lines, w = append(lines, w[:n]), w[n:]
		}
		switch {
		case line == "":
			line = w
		case len(line)+1+len(w) <= n:
			line += " " + w
		default:
			lines, line = append(lines, line), w
		}
	}
	if line != "" {
		lines = append(lines, line)
	}
	return strings.Join(lines, "\n"+strings.Repeat(" ", indent))
}
