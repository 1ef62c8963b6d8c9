package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"holdfast/lab"

	"github.com/mattn/go-isatty"
	"github.com/urfave/cli/v2"
)

func labCommand() *cli.Command {
	return &cli.Command{
		Name:  "lab",
		Usage: "a network-namespace lab: two directors (with --bgp --ecmp up to three, active together), routers, real servers and a client (198.18.0.0/15 only; with --ipv6 2001:2::/48 too)",
		Subcommands: []*cli.Command{
			labDemoCommand(),
			labUpCommand(),
			labSimpleCommand(lab.AskStatus, "show the lab's topology, the active director (in an ECMP lab the routers' next hops) and flow counts"),
			labSimpleCommand(lab.AskFailover, "kill the active director (SIGKILL), move the routes to the other, restart the killed one as standby (a pair; an ECMP lab has kill, start and leave)"),
			labDirectorCommand(lab.AskKill, "ECMP lab: crash a director: its links go down, then SIGKILL; returns once both routers dropped it (the real side, whose link stays up, through BFD in about a second); its links stay down until `lab start`"),
			labDirectorCommand(lab.AskStart, "ECMP lab: bring a director back: its links up and a fresh holdfast, which announces once serving; returns once both routers have it again"),
			labDirectorCommand(lab.AskLeave, "ECMP lab: stop a director gracefully: SIGTERM, on which it withdraws, drains (--bgp-drain, 5 s) and exits; returns once it exited"),
			labSimpleCommand(lab.AskDown, "tear the lab down (also a lab whose `lab up` was killed)"),
			labLogsCommand(),
		},
		OnUsageError: usageError,
	}
}

var (
	demoJSONFlag  = &cli.BoolFlag{Name: "json", Usage: "print the table as JSON (for scripts)"}
	demoPhaseFlag = &cli.DurationFlag{
		Name: "phase", Value: 3 * time.Second,
		Usage: "time on A, after the failover and after the failback, per run",
	}
	demoIdleFlag = &cli.IntFlag{Name: "idle", Value: 40, Usage: "keep-alive connections that make a request now and then"}
	demoBusyFlag = &cli.IntFlag{Name: "busy", Value: 24, Usage: "keep-alive connections that download without pause"}
	labVRRPFlag  = &cli.BoolFlag{Name: "vrrp", Usage: "keepalived (VRRP) in each director namespace moves the routes, as in a real deployment"}
	labBGPFlag   = &cli.BoolFlag{Name: "bgp", Usage: "the directors announce by BGP (holdfast run --bgp-*) to a client-side and a real-side router running BIRD 2, instead of moved static routes; with --ipv6 over a session of each family (not with --vrrp)"}
	labIPv6Flag  = &cli.BoolFlag{Name: "ipv6", Usage: "a dual-stack lab (IPv6 in 2001:2::/48 too) and directors; the demo's load goes to the IPv6 VIP (not with --vrrp)"}
	labECMPFlag  = &cli.BoolFlag{Name: "ecmp", Usage: "the BGP lab with its directors active together (issue 17): equal MEDs, both routers spread the flows by ECMP (L4 hash); each director runs --scheduler mh --adoption on with its own recovery address (lab up: needs --bgp, --directors 1..3, default 3; demo: three directors, one crashes and comes back, another leaves)"}
)

// unprivileged wraps the Action of a `holdfast lab` subcommand: run as an
// ordinary user, the action runs in a re-executed child inside new user,
// network and mount namespaces (lab.ReexecUnprivileged), and this process
// exits with the child's status. As root, or in the child, it runs action.
func unprivileged(action cli.ActionFunc) cli.ActionFunc {
	return func(c *cli.Context) error {
		reexec, code, err := lab.ReexecUnprivileged(os.Args)
		if err != nil {
			return cli.Exit(c.Command.HelpName+": "+err.Error(), exitRuntime)
		}
		if reexec {
			if code == 0 {
				return nil
			}
			// The child has said what went wrong.
			return cli.Exit("", code)
		}
		return action(c)
	}
}

func labDemoCommand() *cli.Command {
	return &cli.Command{
		Name:         "demo",
		Usage:        "build the lab, run a load, fail over and back (--ecmp: a director crashes and comes back, another leaves), twice (holdfast, and --recovery=off), print the table",
		Flags:        []cli.Flag{demoJSONFlag, demoPhaseFlag, demoIdleFlag, demoBusyFlag, labVRRPFlag, labIPv6Flag, labBGPFlag, labECMPFlag},
		OnUsageError: usageError,
		Action:       unprivileged(labDemo),
	}
}

func labDemo(c *cli.Context) error {
	o := lab.DemoOptions{
		Phase: c.Duration(demoPhaseFlag.Name),
		Idle:  c.Int(demoIdleFlag.Name),
		Busy:  c.Int(demoBusyFlag.Name),
		VRRP:  c.Bool(labVRRPFlag.Name),
		IPv6:  c.Bool(labIPv6Flag.Name),
		BGP:   c.Bool(labBGPFlag.Name),
		ECMP:  c.Bool(labECMPFlag.Name),
	}
	if o.ECMP {
		if err := ecmpLabUsage(o.VRRP); err != nil {
			return err
		}
		o.BGP = true // the ECMP demo is a BGP lab: --ecmp says it all
	}
	if err := bgpLabUsage(o.BGP, o.VRRP); err != nil {
		return err
	}
	switch {
	case o.IPv6 && o.VRRP:
		return usagef("--ipv6 with --vrrp: the VRRP lab is IPv4 only (keepalived would need a VRRPv3 instance per family)")
	case o.Phase < 500*time.Millisecond || o.Phase > time.Minute:
		return usagef("--phase %s: expected 500ms..1m", o.Phase)
	case o.Idle < 0 || o.Busy < 0 || o.Idle+o.Busy == 0 || o.Idle+o.Busy > 2000:
		return usagef("--idle %d --busy %d: expected 1..2000 connections in all", o.Idle, o.Busy)
	}
	bin, err := os.Executable()
	if err != nil {
		return cli.Exit("holdfast lab demo: cannot find its own binary: "+err.Error(), exitRuntime)
	}
	o.Binary = bin
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	tty := isatty.IsTerminal(os.Stderr.Fd())
	started := time.Now()
	var results []lab.DemoResult
	for i, recovery := range []bool{true, false} {
		o.Recovery = recovery
		name := "holdfast"
		if !recovery {
			name = "recovery off"
		}
		o.Progress = func(phase string) {
			line := fmt.Sprintf("[%4.1fs] run %d/2 (%s): %s", time.Since(started).Seconds(), i+1, name, phase)
			if tty {
				fmt.Fprintf(os.Stderr, "\r\033[K%s", line)
			} else {
				fmt.Fprintln(os.Stderr, line)
			}
		}
		r, err := lab.RunDemo(ctx, o)
		if tty {
			fmt.Fprint(os.Stderr, "\r\033[K")
		}
		if err != nil {
			if ctx.Err() != nil {
				return cli.Exit("holdfast lab demo: interrupted; the lab was torn down", 130)
			}
			return cli.Exit("holdfast lab demo: "+err.Error(), exitRuntime)
		}
		results = append(results, r)
	}
	if c.Bool(demoJSONFlag.Name) {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Seconds float64          `json:"seconds"`
			Runs    []lab.DemoResult `json:"runs"`
		}{time.Since(started).Seconds(), results})
	}
	printDemoTable(results, time.Since(started))
	return nil
}

// ecmpLabUsage refuses --ecmp with --vrrp, which it would otherwise meet
// as "--bgp with --vrrp", a flag the user may not have typed.
func ecmpLabUsage(vrrp bool) error {
	if vrrp {
		return usagef("--ecmp with --vrrp: keepalived gives the routes to one director, ECMP spreads them over all (the ECMP lab is a BGP lab)")
	}
	return nil
}

// bgpLabUsage refuses --bgp with --vrrp. With --ipv6 the BGP lab is
// dual-stack: each director has an IPv6 session with each router too.
func bgpLabUsage(bgp, vrrp bool) error {
	if bgp && vrrp {
		return usagef("--bgp with --vrrp: choose one way to move the traffic (BGP announcements or keepalived)")
	}
	return nil
}

// demoTable is the demo's table on stdout: a row per quantity, a column
// per run.
type demoTable struct {
	w  *tabwriter.Writer
	rs []lab.DemoResult
}

func newDemoTable(rs []lab.DemoResult) demoTable {
	return demoTable{w: tabwriter.NewWriter(os.Stdout, 0, 0, 3, ' ', tabwriter.AlignRight), rs: rs}
}

// row writes name, then f of each run.
func (t demoTable) row(name string, f func(lab.DemoResult) string) {
	fmt.Fprintf(t.w, "%s\t", name)
	for _, r := range t.rs {
		fmt.Fprintf(t.w, "%s\t", f(r))
	}
	fmt.Fprintln(t.w)
}

// clientRows are what every demo's client counted.
func (t demoTable) clientRows() {
	num := func(f func(lab.DemoResult) int64) func(lab.DemoResult) string {
		return func(r lab.DemoResult) string { return fmt.Sprint(f(r)) }
	}
	t.row("connections", num(func(r lab.DemoResult) int64 { return int64(r.Connections) }))
	t.row("requests ok", num(func(r lab.DemoResult) int64 { return r.RequestsOK }))
	t.row("requests failed", num(func(r lab.DemoResult) int64 { return r.RequestsFailed }))
	t.row("connections reset", num(func(r lab.DemoResult) int64 { return r.ConnectionsReset }))
	t.row("new connections", num(func(r lab.DemoResult) int64 { return r.NewConnections }))
	t.row("longest stall", func(r lab.DemoResult) string { return r.LongestStall.Round(time.Millisecond).String() })
	t.row("steered to their real", num(func(r lab.DemoResult) int64 { return int64(r.Steered) }))
	t.row("recoveries", num(func(r lab.DemoResult) int64 { return int64(r.Recoveries) }))
	t.row("adoptions", num(func(r lab.DemoResult) int64 { return int64(r.Adoptions) }))
}

func printDemoTable(rs []lab.DemoResult, took time.Duration) {
	vip := ""
	if len(rs) > 0 {
		vip = " to " + rs[0].VIP
	}
	if len(rs) > 0 && rs[0].ECMP != nil {
		printECMPDemoTable(rs, took)
		return
	}
	if len(rs) > 0 && rs[0].Routing == "bgp" {
		fmt.Printf("Failover demo: keep-alive HTTP%s through director A, announced by BGP (MED 10; B 20) to BIRD routers.\n", vip)
		fmt.Printf("A's links go down and A is killed: the client-side router moves to B at once, the real-side router, whose\n")
		fmt.Printf("link to A stays up, through BFD (0.9 s). A restarted announces again and both routers return to it (failback).\n\n")
	} else {
		fmt.Printf("Failover demo: keep-alive HTTP%s through director A, A killed (failover to B), A restarted (failback).\n\n", vip)
	}
	t := newDemoTable(rs)
	t.row("", func(r lab.DemoResult) string { return r.Mode })
	t.clientRows()
	t.w.Flush()
	fmt.Printf("\n(%s in all; every namespace was removed)\n", took.Round(100*time.Millisecond))
}
