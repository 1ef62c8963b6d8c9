// Command holdfast is a userspace L4 load-balancing director (LVS VS/NAT over
// a TUN device) whose established TCP connections survive the death of the
// director carrying them.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"

	"holdfast/internal/buildinfo"

	"github.com/urfave/cli/v2"
)

// Exit codes.
const (
	exitRuntime = 1 // the director could not run (TUN, routes, ...)
	exitUsage   = 2 // a bad flag, flag value or config file
)

func main() {
	os.Exit(run(newApp(), os.Args, os.Stderr))
}

// noHelpTopic is urfave/cli's answer to an unknown command (exit 3).
var noHelpTopic = regexp.MustCompile(`^No help topic for '(.*)'$`)

// run runs app on args and returns the exit code, every error said in one
// line with one "holdfast:" prefix.
func run(app *cli.App, args []string, stderr io.Writer) int {
	err := app.Run(args)
	if err == nil {
		return 0
	}
	msg, code := err.Error(), exitRuntime
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		code = ec.ExitCode()
	}
	if m := noHelpTopic.FindStringSubmatch(msg); m != nil {
		msg, code = fmt.Sprintf("unknown command %q (see 'holdfast --help')", m[1]), exitUsage
	}
	if msg != "" {
		// A command's own prefix ("holdfast lab demo: ...") reads
		// "holdfast: lab demo: ...".
		fmt.Fprintln(stderr, "holdfast:", strings.TrimPrefix(strings.TrimPrefix(msg, "holdfast: "), "holdfast "))
	}
	return code
}

func newApp() *cli.App {
	app := &cli.App{
		Name:    "holdfast",
		Usage:   "an L4 load-balancing director whose TCP connections survive its failover",
		Version: buildinfo.Read().String(),
		Commands: append(append([]*cli.Command{
			runCommand(),
			labCommand(),
		}, ctlCommands()...), docsCommands()...),
		// `holdfast ... --generate-bash-completion` prints the words that
		// can follow: the shell completions (docs.go) ask it.
		EnableBashCompletion: true,
		// Usage errors (unknown flag, a value that does not parse) exit 2
		// with one line; the help is one --help away.
		OnUsageError: usageError,
		// cli's own exit handler calls os.Exit; main does that instead.
		ExitErrHandler: func(*cli.Context, error) {},
	}
	oneLineRequired(app.Commands)
	helpTemplates(app)
	return app
}

// oneLineRequired replaces urfave/cli's check of required flags, which
// prints the whole help and exits 1, with one that names the missing flags
// in one line and exits 2. The flags may be shared by several commands:
// every command's required names are read before any flag is changed.
func oneLineRequired(cmds []*cli.Command) {
	need := map[*cli.Command][]string{}
	var walk func([]*cli.Command)
	walk = func(cmds []*cli.Command) {
		for _, cmd := range cmds {
			for _, f := range cmd.Flags {
				if rf, ok := f.(cli.RequiredFlag); ok && rf.IsRequired() {
					need[cmd] = append(need[cmd], f.Names()[0])
				}
			}
			walk(cmd.Subcommands)
		}
	}
	walk(cmds)
	for cmd, names := range need {
		for _, f := range cmd.Flags {
			switch ff := f.(type) {
			case *cli.StringFlag:
				if ff.Required {
					ff.Required, ff.Usage = false, ff.Usage+" (required)"
				}
			case *cli.IntFlag:
				if ff.Required {
					ff.Required, ff.Usage = false, ff.Usage+" (required)"
				}
			}
		}
		before := cmd.Before
		cmd.Before = func(c *cli.Context) error {
			var missing []string
			for _, n := range names {
				if !c.IsSet(n) {
					missing = append(missing, "--"+n)
				}
			}
			if len(missing) > 0 {
				name := strings.TrimPrefix(c.Command.HelpName, c.App.Name+" ")
				return cli.Exit(fmt.Sprintf("%s: %s not set (see '%s --help')", name, strings.Join(missing, ", "), c.Command.HelpName), exitUsage)
			}
			if before != nil {
				return before(c)
			}
			return nil
		}
	}
}

// badValue matches the flag package's "invalid value" error, badEnv
// urfave/cli's for an environment variable that does not parse.
var (
	badValue = regexp.MustCompile(`^invalid value "(.*)" for flag -([a-z0-9-]+): `)
	badEnv   = regexp.MustCompile(`^could not parse "(.*)" as [a-z0-9]+ value from environment variable "([A-Z0-9_]+)" for flag ([a-z0-9-]+): `)
)

func usageError(c *cli.Context, err error, _ bool) error {
	msg := strings.Replace(err.Error(), "flag provided but not defined: -", "unknown flag --", 1)
	if m := badValue.FindStringSubmatch(msg); m != nil {
		msg = fmt.Sprintf("--%s %q: expected %s", m[2], m[1], expectation(c, m[2]))
	}
	if m := badEnv.FindStringSubmatch(msg); m != nil {
		msg = fmt.Sprintf("%s=%q (for --%s): expected %s", m[2], m[1], m[3], expectation(c, m[3]))
	}
	name := c.Command.FullName()
	if name == "" || name == c.App.Name {
		// The app's own flags: main's "holdfast:" prefix says it.
		return cli.Exit(fmt.Sprintf("%s (see '%s --help')", msg, c.App.Name), exitUsage)
	}
	return cli.Exit(fmt.Sprintf("%s: %s (see '%s --help')", name, msg, c.Command.HelpName), exitUsage)
}

// expectation says what kind of value a flag takes.
func expectation(c *cli.Context, name string) string {
	for _, f := range c.Command.Flags {
		if !slices.Contains(f.Names(), name) {
			continue
		}
		switch f.(type) {
		case *cli.IntFlag:
			return "an integer"
		case *cli.DurationFlag:
			return "a duration such as 90s or 15m"
		case *cli.BoolFlag:
			return "true or false"
		}
	}
	return "a valid value"
}

// usagef is a user error: a flag or config value that is wrong.
func usagef(format string, args ...any) error {
	return cli.Exit(fmt.Sprintf(format, args...), exitUsage)
}
