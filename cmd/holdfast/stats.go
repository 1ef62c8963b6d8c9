package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"holdfast/daemon/adminapi"

	"github.com/mattn/go-isatty"
	"github.com/urfave/cli/v2"
)

// `holdfast stats`: the counters of GET /stats as a table for people (the
// non-zero ones, with a rate per second between two samples), or as they
// come for scripts (--json).

var (
	statsWatchFlag = &cli.BoolFlag{Name: "watch", Usage: "refresh the table every --interval until interrupted"}
	// A DurationFlag of its own: the rates need two samples, and a second
	// is what ipvsadm --rate people expect to read.
	statsIntervalFlag = &cli.DurationFlag{Name: "interval", Value: time.Second,
		Usage: "time between the two samples of /stats the rates come from (0: one sample, no rates)"}
)

// statRow is one value of the table: a counter, or one label combination of
// a labelled counter (name{LABEL/VALUES}), or a histogram's count or sum.
type statRow struct {
	name  string
	value float64
	// counter says the value only grows, so a rate means something: a
	// Prometheus counter (its name ends in _total) or a histogram's count
	// or sum. Gauges (flows, weights, in-flight) have none.
	counter bool
}

// statRows flattens a /stats object (see package daemon's counter table
// for its shapes) into rows sorted by name. The "director" key, which the
// CLI adds, is not a counter.
func statRows(st map[string]any) []statRow {
	var rows []statRow
	for name, v := range st {
		if name == "director" {
			continue
		}
		isCounter := strings.HasSuffix(name, "_total")
		switch v := v.(type) {
		case float64:
			rows = append(rows, statRow{name, v, isCounter})
		case map[string]any:
			if _, hist := v["buckets"]; hist {
				for _, k := range []string{"count", "sum"} {
					if n, ok := v[k].(float64); ok {
						rows = append(rows, statRow{name + "{" + k + "}", n, true})
					}
				}
				continue
			}
			for k, n := range v {
				if n, ok := n.(float64); ok {
					rows = append(rows, statRow{name + "{" + k + "}", n, isCounter})
				}
			}
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].name < rows[j].name })
	return rows
}

// statRates is the rate per second of each counter row of cur since prev,
// dt apart. A counter that went down (the director restarted between the
// samples) or is not in prev has no rate.
func statRates(prev, cur []statRow, dt time.Duration) map[string]float64 {
	if dt <= 0 || prev == nil {
		return nil
	}
	before := make(map[string]float64, len(prev))
	for _, r := range prev {
		before[r.name] = r.value
	}
	rates := make(map[string]float64)
	for _, r := range cur {
		p, ok := before[r.name]
		if !r.counter || !ok || r.value < p {
			continue
		}
		rates[r.name] = (r.value - p) / dt.Seconds()
	}
	return rates
}

// writeStatsTable writes the director line and the non-zero rows of cur
// with their rates ("-": none): names aligned left, numbers right.
func writeStatsTable(out io.Writer, info *adminapi.Info, cur []statRow, rates map[string]float64) error {
	lines := [][3]string{{"COUNTER", "VALUE", "PER-SECOND"}}
	for _, r := range cur {
		if r.value == 0 {
			continue
		}
		rate := "-"
		if v, ok := rates[r.name]; ok {
			rate = fmtNum(v)
		}
		lines = append(lines, [3]string{r.name, fmtNum(r.value), rate})
	}
	var width [3]int
	for _, l := range lines {
		for i, s := range l {
			width[i] = max(width[i], len(s))
		}
	}
	var b strings.Builder
	b.WriteString(directorLine(info) + "\n")
	for _, l := range lines {
		fmt.Fprintf(&b, "%-*s  %*s  %*s\n", width[0], l[0], width[1], l[1], width[2], l[2])
	}
	_, err := io.WriteString(out, b.String())
	return err
}

// fmtNum prints a count as an integer and anything else (seconds, rates)
// with at most two decimals.
func fmtNum(v float64) string {
	if v == float64(int64(v)) {
		return strconv.FormatInt(int64(v), 10)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

// ctlStats prints the counters: a table (two samples --interval apart for
// the rates), refreshed with --watch, or with --json one sample as one
// JSON object, the director that answered being its "director" field next
// to the counters' keys so that the output stays JSON for scripts.
func ctlStats(c *cli.Context) error {
	interval := c.Duration(statsIntervalFlag.Name)
	switch {
	case c.Bool(jsonFlag.Name) && c.Bool(statsWatchFlag.Name):
		return usagef("stats: --watch is for the table, not --json")
	case interval < 0 || (interval == 0 && c.Bool(statsWatchFlag.Name)):
		return usagef("stats: --interval %s: expected a positive duration (0 without --watch: no rates)", interval)
	}
	cl := ctlClient(c)
	info, err := director(cl)
	if err != nil {
		return err
	}
	sample := func() (map[string]any, error) {
		st, err := cl.stats()
		if err != nil {
			return nil, cli.Exit(err.Error(), exitRuntime)
		}
		if st == nil {
			st = map[string]any{}
		}
		return st, nil
	}
	if c.Bool(jsonFlag.Name) {
		st, err := sample()
		if err != nil {
			return err
		}
		st["director"] = info
		return printJSON(st)
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	watch := c.Bool(statsWatchFlag.Name)
	clear := watch && isatty.IsTerminal(os.Stdout.Fd())
	var prev []statRow
	var prevAt time.Time
	for printed := false; ; {
		st, err := sample()
		if err != nil {
			return err
		}
		cur, at := statRows(st), time.Now()
		if prev != nil || interval == 0 {
			switch {
			case clear:
				fmt.Print("\033[H\033[2J") // cursor home, clear screen
			case printed:
				fmt.Println() // a blank line between two tables
			}
			if err := writeStatsTable(os.Stdout, info, cur, statRates(prev, cur, at.Sub(prevAt))); err != nil {
				return err
			}
			if !watch {
				return nil
			}
			printed = true
		}
		prev, prevAt = cur, at
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}
