package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"holdfast/internal/unixhttp"
	"holdfast/lab"

	"github.com/urfave/cli/v2"
)

// The ECMP lab's commands (issue 17): `lab up --bgp --ecmp` runs up to
// three directors active together behind both routers' ECMP, and a group
// has no active director to fail over from. Its membership changes as an
// operator's does: `lab kill N` (a crash), `lab start N` (a fresh
// process), `lab leave N` (a graceful stop), N a director as `lab logs`
// names it.

// expectDirector is what a director argument may be (lab.ParseDirector).
const expectDirector = "expected one director, A, B or C (or its number, 1..3)"

// labDirectorsUsage checks --directors against the kind of lab: 1 or 2 in
// a pair, 1..3 in an ECMP lab, which is a BGP lab without keepalived.
func labDirectorsUsage(n int, ecmp, bgp, vrrp bool) error {
	switch {
	case ecmp && vrrp:
		return ecmpLabUsage(vrrp)
	case ecmp && !bgp:
		return usagef("--ecmp needs --bgp: the routers learn the equal routes from the directors' announcements")
	case ecmp && (n < 1 || n > 3):
		return usagef("--directors %d: expected 1..3 with --ecmp", n)
	case !ecmp && n != 1 && n != 2:
		return usagef("--directors %d: expected 1 or 2 (1..3 with --bgp --ecmp)", n)
	}
	return nil
}

// labDirectorCommand is `lab kill|start|leave N`: the supervisor does it
// and answers once the routers have settled.
func labDirectorCommand(command, usage string) *cli.Command {
	return &cli.Command{
		Name: command, Usage: usage, ArgsUsage: "A|B|C|1..3", OnUsageError: usageError,
		Flags:  []cli.Flag{labJSONFlag},
		Action: func(c *cli.Context) error { return labDirectorRequest(c, command) },
	}
}

func labDirectorRequest(c *cli.Context, command string) error {
	// urfave/cli stops parsing flags at the first argument, and `lab kill
	// A --json` is what a user types after `lab kill A`.
	asJSON := c.Bool(labJSONFlag.Name)
	var args []string
	for _, a := range c.Args().Slice() {
		if a == "--json" || a == "-json" {
			asJSON = true
			continue
		}
		args = append(args, a)
	}
	label, ok := "", len(args) == 1
	if ok {
		label, ok = lab.ParseDirector(args[0])
	}
	if !ok {
		return usagef("lab %s %q: %s", command, strings.Join(args, " "), expectDirector)
	}
	st, err := lab.AskDirector(c.Context, lab.SupervisorSocket(), command, label)
	if errors.Is(err, unixhttp.ErrUnreachable) {
		return cli.Exit(fmt.Sprintf("holdfast lab %s: %v (is `holdfast lab up` running as this user?)", command, err), exitRuntime)
	}
	if err != nil {
		return cli.Exit(fmt.Sprintf("holdfast lab %s %s: %v", command, label, err), exitRuntime)
	}
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	printLabStatus(st)
	return nil
}

// printECMPDemoTable prints the runs of `lab demo --ecmp`: the routers'
// next hops after each event, the client's results, and what each
// director carried.
func printECMPDemoTable(rs []lab.DemoResult, took time.Duration) {
	fmt.Printf("ECMP demo: keep-alive HTTP to %s through directors A, B and C, announced by BGP with equal MEDs\n", rs[0].VIP)
	fmt.Printf("to BIRD routers that spread the flows over them (ECMP, L4 hash); each runs --scheduler mh --adoption on\n")
	fmt.Printf("with its own recovery address. Under the load A crashes (its links go down, then SIGKILL), comes back as\n")
	fmt.Printf("a fresh process %v later, and %v after that C leaves (SIGTERM: it withdraws, drains, stops).\n\n", lab.ECMPDemoEventGap, lab.ECMPDemoEventGap)
	t := newDemoTable(rs)
	t.row("", func(r lab.DemoResult) string { return r.Mode })
	for k, ev := range rs[0].ECMP.Events {
		t.row("next hops "+ev.Event, func(r lab.DemoResult) string {
			if k >= len(r.ECMP.Events) {
				return "-"
			}
			e := r.ECMP.Events[k]
			s := hopsCell(e.NextHops)
			if e.NotSettled != "" {
				s += " (not settled)"
			}
			return s
		})
	}
	t.clientRows()
	for k, d := range rs[0].ECMP.Directors {
		t.row("flows via "+d.Label, func(r lab.DemoResult) string {
			if k >= len(r.ECMP.Directors) {
				return "-"
			}
			d := r.ECMP.Directors[k]
			return fmt.Sprintf("%d (%d adopted)", d.Flows, d.Adopted)
		})
	}
	t.w.Flush()
	for _, r := range rs {
		if r.Mode == "recovery off" && r.RequestsFailed == 0 && r.ConnectionsReset == 0 {
			// Say why the comparison shows no loss, lest it read as a
			// demo that tests nothing.
			fmt.Printf("\nWith --recovery=off no connection was lost either: a director schedules a flow the routers moved\n")
			fmt.Printf("to it as a new one, and mh picks the real it was on while the reals stay the same, so plain NAT\n")
			fmt.Printf("(with --adoption on for the replies) carries it; the timestamp cookie (\"steered\") is what still\n")
			fmt.Printf("finds the real when mh's choice differs (a real added, removed or reweighted).\n")
		}
	}
	fmt.Printf("\n(next hops: both routers', or client side / real side where they differ; flows via a director: what its\n")
	fmt.Printf("holdfast processes created, of a client's SYN or adopted from a real's reply; %s in all; every namespace\n", took.Round(100*time.Millisecond))
	fmt.Printf("was removed)\n")
}

// hopsCell is a table cell for next hops: "3 (A B C)", or "2 (B C) / 3 (A B C)"
// when the client-side and the real-side router differ.
func hopsCell(n lab.NextHops) string {
	f := func(ls []string) string { return fmt.Sprintf("%d (%s)", len(ls), strings.Join(ls, " ")) }
	if strings.Join(n.ClientSide, " ") == strings.Join(n.RealSide, " ") {
		return f(n.ClientSide)
	}
	return f(n.ClientSide) + " / " + f(n.RealSide)
}
