package main

import (
	"os"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"
)

// timeFormat is the JSON logs' timestamp: RFC 3339 with milliseconds.
const timeFormat = "2006-01-02T15:04:05.000Z07:00"

// newLogger builds the one logger of the process from --log-level and
// --log-format; it is passed down from here (the daemon names its fields).
func newLogger(c *cli.Context) (zerolog.Logger, error) {
	level, err := zerolog.ParseLevel(c.String(logLevelFlag.Name))
	if err != nil || level == zerolog.NoLevel {
		return zerolog.Nop(), usagef("--log-level %q: expected debug, info, warn or error", c.String(logLevelFlag.Name))
	}
	var w = os.Stderr
	format := c.String(logFormatFlag.Name)
	switch format {
	case "":
		format = "json"
		if isatty.IsTerminal(w.Fd()) {
			format = "console"
		}
	case "json", "console":
	default:
		return zerolog.Nop(), usagef("--log-format %q: expected json or console", format)
	}
	// Millisecond timestamps in both formats: a failover is timed in
	// milliseconds. Colours only on a terminal.
	zerolog.TimeFieldFormat = timeFormat
	var l zerolog.Logger
	if format == "console" {
		l = zerolog.New(zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000", NoColor: !isatty.IsTerminal(w.Fd())})
	} else {
		l = zerolog.New(w)
	}
	return l.Level(level).With().Timestamp().Logger(), nil
}

// newQuietLogger logs errors only, to stderr: for helpers of commands that
// are not the director.
func newQuietLogger() zerolog.Logger {
	return zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, NoColor: !isatty.IsTerminal(os.Stderr.Fd())}).Level(zerolog.ErrorLevel)
}
