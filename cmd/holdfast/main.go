// Command holdfast is a userspace L4 load-balancing director (LVS VS/NAT over
// a TUN device) whose established TCP connections survive the death of the
// director carrying them.
package main

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
)

// Exit codes.
const (
	exitRuntime = 1 // the director could not run (TUN, routes, ...)
	exitUsage   = 2 // a bad flag, flag value or config file
)

func main() {
	app := newApp()
	if err := app.Run(os.Args); err != nil {
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			if msg := err.Error(); msg != "" {
				fmt.Fprintln(os.Stderr, "holdfast:", msg)
			}
			os.Exit(ec.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "holdfast:", err)
		os.Exit(exitRuntime)
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "holdfast",
		Usage: "an L4 load-balancing director whose TCP connections survive its failover",
		Commands: append([]*cli.Command{
			runCommand(),
			labCommand(),
		}, ctlCommands()...),
		// Usage errors (unknown flag, a value that does not parse) exit 2
		// with one line; the help is one --help away.
		OnUsageError: usageError,
		// cli's own exit handler calls os.Exit; main does that instead.
		ExitErrHandler: func(*cli.Context, error) {},
	}
}

// badValue matches the flag package's "invalid value" error.
var badValue = regexp.MustCompile(`^invalid value "(.*)" for flag -([a-z0-9-]+): `)

func usageError(c *cli.Context, err error, _ bool) error {
	msg := strings.Replace(err.Error(), "flag provided but not defined: -", "unknown flag --", 1)
	if m := badValue.FindStringSubmatch(msg); m != nil {
		msg = fmt.Sprintf("--%s %q: expected %s", m[2], m[1], expectation(c, m[2]))
	}
	return cli.Exit(fmt.Sprintf("%s: %s (see '%s --help')", c.Command.FullName(), msg, c.Command.HelpName), exitUsage)
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
