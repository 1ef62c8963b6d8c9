package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"

	"holdfast/internal/unixhttp"
	"holdfast/lab"

	"github.com/urfave/cli/v2"
)

// `holdfast lab up` runs a lab.Supervisor in the foreground; `lab status`,
// `lab failover` and `lab down` (and in an ECMP lab `lab kill`, `lab start`
// and `lab leave`, labecmp.go), from another terminal, ask it on its
// socket (lab.Ask, lab.AskDirector), which is in the user's runtime directory
// (lab.RuntimeDir): an unprivileged lab's namespaces and /run are its own,
// and only that socket reaches it. This file holds the commands' flags,
// checks and output.

var (
	labDirectorsFlag = &cli.IntFlag{Name: "directors", Value: 2, Usage: "directors in the lab: 1 or 2; 1..3 with --ecmp (default 3 there)"}
	labRealsFlag     = &cli.IntFlag{Name: "reals", Value: 3, Usage: "real servers in the lab: 1..100"}
	labJSONFlag      = &cli.BoolFlag{Name: "json", Usage: "print the answer as JSON (for scripts)"}
	labFollowFlag    = &cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "keep printing new lines until Ctrl-C or the lab goes down"}
)

func labUpCommand() *cli.Command {
	return &cli.Command{
		Name:  "up",
		Usage: "build the lab, start the directors and backends, and supervise them until Ctrl-C or `holdfast lab down`",
		Flags: []cli.Flag{labDirectorsFlag, labRealsFlag, labVRRPFlag, labIPv6Flag, labBGPFlag, labECMPFlag}, OnUsageError: usageError,
		Action: unprivileged(labUp),
	}
}

func labSimpleCommand(command, usage string) *cli.Command {
	cmd := &cli.Command{Name: command, Usage: usage, OnUsageError: usageError,
		Action: func(c *cli.Context) error { return labRequest(c, command) }}
	if command == lab.AskStatus {
		cmd.Flags = []cli.Flag{labJSONFlag}
	}
	return cmd
}

func labUp(c *cli.Context) error {
	n, reals, vrrp, ipv6, bgp := c.Int(labDirectorsFlag.Name), c.Int(labRealsFlag.Name), c.Bool(labVRRPFlag.Name), c.Bool(labIPv6Flag.Name), c.Bool(labBGPFlag.Name)
	ecmp := c.Bool(labECMPFlag.Name)
	if ecmp && !c.IsSet(labDirectorsFlag.Name) {
		n = 3 // the group of issue 17
	}
	if err := labDirectorsUsage(n, ecmp, bgp, vrrp); err != nil {
		return err
	}
	if reals < 1 || reals > lab.MaxReals {
		return usagef("--reals %d: expected 1..%d", reals, lab.MaxReals)
	}
	if vrrp && n != 2 {
		return usagef("--vrrp needs --directors 2")
	}
	if vrrp && ipv6 {
		return usagef("--ipv6 with --vrrp: the VRRP lab is IPv4 only (keepalived would need a VRRPv3 instance per family)")
	}
	if err := bgpLabUsage(bgp, vrrp); err != nil {
		return err
	}
	// Root's lab leaves named namespaces when its `lab up` is killed; an
	// unprivileged lab's die with it, and its socket says whether it runs
	// (lab.StartSupervisor).
	if !unprivilegedLab() {
		if left, _ := lab.List(lab.SupervisedPrefix); len(left) > 0 {
			return cli.Exit(fmt.Sprintf("a lab is already up (%s...): run `holdfast lab down` first", left[0]), exitRuntime)
		}
	}
	bin, err := os.Executable()
	if err != nil {
		return cli.Exit(err.Error(), exitRuntime)
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	fmt.Fprintln(os.Stderr, "building the lab...")
	s, err := lab.StartSupervisor(ctx, lab.SupervisorOptions{Binary: bin, Directors: n, Reals: reals, VRRP: vrrp, IPv6: ipv6, BGP: bgp, ECMP: ecmp, Log: newQuietLogger()})
	if errors.Is(err, lab.ErrLabUp) {
		return cli.Exit("holdfast lab up: "+err.Error()+": run `holdfast lab down` first", exitRuntime)
	}
	if err != nil {
		return cli.Exit("holdfast lab up: "+err.Error(), exitRuntime)
	}
	defer s.Close()
	printLabUp(s.Lab())
	select {
	case <-ctx.Done():
	case <-s.Down():
	}
	fmt.Fprintln(os.Stderr, "tearing the lab down...")
	if err := s.Close(); err != nil {
		return cli.Exit("holdfast lab up: tearing down: "+err.Error(), exitRuntime)
	}
	return nil
}

// unprivilegedLab reports whether this process is the user-namespace child
// of an ordinary user's `holdfast lab`, or an ordinary user's command that
// talks to such a lab.
func unprivilegedLab() bool { return lab.HostPID() != 0 || os.Geteuid() != 0 }

func printLabUp(l *lab.Lab) {
	enter := strings.Join(lab.EnterArgv(), " ")
	plan := "198.18.0.0/15"
	// also names the IPv6 twin of an address in a dual-stack lab.
	also := func(a netip.Addr) string { return "" }
	if l.IPv6() {
		plan += " and 2001:2::/48"
		also = func(a netip.Addr) string { return ", " + lab.Mirror6(a).String() }
	}
	fmt.Printf("The lab is up (namespaces %s*, addresses in %s):\n\n", l.Prefix, plan)
	fmt.Printf("  client     %-16s ns %s%s\n", lab.ClientAddr, l.Client.Name, also(lab.ClientAddr))
	fmt.Printf("  router     %-16s ns %s%s\n", lab.ClientGateway, l.Router.Name, also(lab.ClientGateway))
	if l.BGP() {
		fmt.Printf("  real-side router %s (the reals' gateway %s) ns %s; both routers run BIRD (AS %d), the directors AS %d\n",
			lab.BGPRealPeer, lab.BGPRealGateway, l.RealRouter.Name, lab.BGPRouterAS, lab.BGPDirectorAS)
	}
	for _, d := range l.Directors {
		bgp := ""
		if l.ECMP() {
			bgp = fmt.Sprintf(", BGP MED %d, peers %s and %s, recovery address %s", lab.BGPMED(d), d.RouterAddr, lab.BGPRealPeer, lab.RecoveryAddrOf(d))
		} else if l.BGP() {
			bgp = fmt.Sprintf(", BGP MED %d, peers %s and %s", lab.BGPMED(d), d.RouterAddr, lab.BGPRealPeer)
		}
		fmt.Printf("  director %s %-16s ns %s (real side %s%s%s)%s\n", d.Label, d.Uplink.Addr(), d.Name, d.RSAddr.Addr(), also(d.RSAddr.Addr()), bgp, also(d.Uplink.Addr()))
	}
	for _, r := range l.Reals {
		fmt.Printf("  %-10s %-16s ns %s (HTTP :%d, UDP echo :%d)%s\n", r.Label, r.Addr, r.Name, lab.DefaultHTTPPort, lab.DefaultUDPPort, also(r.Addr))
	}
	if l.ECMP() {
		nh := "unknown"
		if h, err := l.ECMPNextHops(); err == nil {
			nh = h.String()
		}
		fmt.Printf("  VIP        %-16s tcp:%d (HTTP) and udp:%d (echo), mh over the reals; both routers' ECMP next hops %s\n\n",
			lab.VIP, lab.DefaultHTTPPort, lab.DefaultUDPPort, nh)
	} else {
		active := "none yet"
		if a := l.Active(); a != nil {
			active = a.Label
		}
		fmt.Printf("  VIP        %-16s tcp:%d (HTTP) and udp:%d (echo), rr over the reals; active director %s%s\n\n",
			lab.VIP, lab.DefaultHTTPPort, lab.DefaultUDPPort, active, also(lab.VIP))
	}
	fmt.Printf("Try, from another terminal:\n")
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "  %s %s curl -s http://%s/\t# answered by a real\n", enter, l.Client.Name, lab.VIP)
	if l.IPv6() {
		fmt.Fprintf(w, "  %s %s curl -s http://[%s]/\t# the same over IPv6\n", enter, l.Client.Name, lab.VIP6)
	}
	fmt.Fprintf(w, "  holdfast conns --admin-socket %s\t# director A's flows\n", lab.AdminSocket(l.Directors[0]))
	if l.BGP() {
		fmt.Fprintf(w, "  holdfast bgp --admin-socket %s\t# A's sessions and announcements\n", lab.AdminSocket(l.Directors[0]))
		fmt.Fprintf(w, "  birdc -s %s show route all\t# what the client-side router learned\n", l.BIRDSocket(lab.BGPClientSide))
	}
	if l.ECMP() {
		fmt.Fprintf(w, "  holdfast lab status [--json]\t# directors, sessions, the routers' next hops, flows per real\n")
	} else {
		fmt.Fprintf(w, "  holdfast lab status [--json]\t# directors, keepalived, flows per real\n")
	}
	fmt.Fprintf(w, "  holdfast lab logs A [-f]\t# director A's log\n")
	if l.ECMP() {
		last := l.Directors[len(l.Directors)-1].Label
		fmt.Fprintf(w, "  holdfast lab kill A\t# A crashes: links down, SIGKILL; the routers drop it\n")
		fmt.Fprintf(w, "  holdfast lab start A\t# A comes back: links up, a fresh holdfast\n")
		fmt.Fprintf(w, "  holdfast lab leave %s\t# %s leaves: SIGTERM, it withdraws, drains, stops\n", last, last)
	} else if len(l.Directors) > 1 {
		if l.BGP() {
			fmt.Fprintf(w, "  holdfast lab failover\t# unplug and kill the active director, the routers move\n")
		} else {
			fmt.Fprintf(w, "  holdfast lab failover\t# kill the active director, move the routes\n")
		}
	}
	fmt.Fprintf(w, "  holdfast lab down\t# or Ctrl-C here\n")
	w.Flush()
}

// labRequest sends a lab subcommand to the supervisor and prints its answer.
func labRequest(c *cli.Context, command string) error {
	sock := lab.SupervisorSocket()
	st, err := lab.Ask(c.Context, sock, command)
	if command == lab.AskDown {
		return labDown(st, err, sock)
	}
	if errors.Is(err, unixhttp.ErrUnreachable) {
		return cli.Exit(fmt.Sprintf("holdfast lab %s: %v (is `holdfast lab up` running as this user?)", command, err), exitRuntime)
	}
	if err != nil {
		return cli.Exit(fmt.Sprintf("holdfast lab %s: %v", command, err), exitRuntime)
	}
	if c.Bool(labJSONFlag.Name) {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	printLabStatus(st)
	return nil
}

// labDown reports the answer of the supervisor on sock to POST /down.
// Root's lab may have been left without one (its `lab up` killed): its
// namespaces are swept. An unprivileged lab's die with its processes, so
// without a supervisor there is none.
func labDown(st lab.Status, err error, sock string) error {
	if err == nil {
		fmt.Println(st.Message)
	}
	if unprivilegedLab() {
		if err == nil {
			return nil
		}
		if errors.Is(err, unixhttp.ErrUnreachable) {
			fmt.Printf("no lab is up (nothing answers on %s)\n", sock)
			return nil
		}
		return cli.Exit("holdfast lab down: "+err.Error(), exitRuntime)
	}
	if err == nil {
		if left, _ := lab.List(lab.SupervisedPrefix); len(left) == 0 {
			return nil
		}
	}
	// No supervisor (killed), or it left something: sweep.
	return labSweep()
}

func printLabStatus(st lab.Status) {
	if st.Message != "" {
		fmt.Println(st.Message)
	}
	if st.NextHops != nil {
		fmt.Printf("lab %s*: client %s, VIP %s (%s), ECMP: both routers' next hops %s\n", st.Prefix, st.Client, st.VIP, strings.Join(st.Services, ", "), st.NextHops)
	} else {
		fmt.Printf("lab %s*: client %s, VIP %s (%s), active director %s\n", st.Prefix, st.Client, st.VIP, strings.Join(st.Services, ", "), st.Active)
	}
	for _, d := range st.Directors {
		state := "not running"
		if d.Ended != "" {
			state += " (ended: " + d.Ended + ")"
		}
		if d.Running {
			state = fmt.Sprintf("running (pid %d): %d flows, %d recovered, %d adopted", d.PID, d.Flows, d.Recovered, d.Adopted)
		}
		if d.Leaving {
			state += "; leaving (withdrawn, draining)"
		}
		if d.LinksDown {
			state += "; links down"
		}
		if d.VRRP != "" {
			state = "keepalived " + d.VRRP + ", holdfast " + state
		}
		if d.BGP != "" {
			state += "; BGP sessions: " + d.BGP
		}
		fmt.Printf("  director %s  %-18s ns %-16s %s\n", d.Label, d.Uplink, d.Namespace, state)
	}
	for _, r := range st.Reals {
		fmt.Printf("  %-5v %-15v ns %-16v now %d connections, %d UDP flows; served %d connections, %d requests, %d datagrams\n",
			r.Label, r.Addr, r.Namespace, r.Active, r.UDPFlows, r.HTTPConnections, r.HTTPRequests, r.UDPDatagrams)
	}
}

func labLogsCommand() *cli.Command {
	return &cli.Command{
		Name: "logs", Usage: "print a director's log (the last 5000 lines, over its restarts)", ArgsUsage: "A|B|C",
		Flags: []cli.Flag{labFollowFlag}, OnUsageError: usageError, Action: labLogs,
	}
}

// labLogsArgs splits `lab logs`'s arguments into the director and whether
// to follow: urfave/cli stops parsing flags at the first argument, and
// `lab logs A -f` is what a user types (the banner shows it so).
func labLogsArgs(args []string, follow bool) (string, bool, error) {
	var pos []string
	for _, a := range args {
		if a == "-f" || a == "--follow" {
			follow = true
			continue
		}
		pos = append(pos, a)
	}
	if len(pos) == 1 {
		if label, ok := lab.ParseDirector(pos[0]); ok {
			return label, follow, nil
		}
	}
	return "", false, usagef("lab logs %q: %s", strings.Join(pos, " "), expectDirector)
}

func labLogs(c *cli.Context) error {
	director, follow, err := labLogsArgs(c.Args().Slice(), c.Bool(labFollowFlag.Name))
	if err != nil {
		return err
	}
	sock := lab.SupervisorSocket()
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var since uint64
	for first := true; ; first = false {
		l, err := lab.AskLogs(ctx, sock, director, since, !first)
		switch {
		case ctx.Err() != nil:
			return nil // Ctrl-C ends a follow
		case errors.Is(err, unixhttp.ErrUnreachable) && !first:
			return nil // the lab went down
		case errors.Is(err, unixhttp.ErrUnreachable):
			return cli.Exit(fmt.Sprintf("holdfast lab logs: %v (is `holdfast lab up` running as this user?)", err), exitRuntime)
		case err != nil:
			return cli.Exit("holdfast lab logs: "+err.Error(), exitRuntime)
		}
		if l.Dropped > 0 {
			fmt.Printf("-- holdfast lab: %d earlier lines are no longer kept --\n", l.Dropped)
		}
		for _, line := range l.Lines {
			fmt.Println(line.Text)
		}
		if !follow {
			return nil
		}
		since = l.Next
	}
}

// labSweep removes a lab whose supervisor is gone (killed).
func labSweep() error {
	removed, err := lab.Remove(lab.SupervisedPrefix)
	if err != nil {
		return cli.Exit(err.Error(), exitRuntime)
	}
	if len(removed) == 0 {
		fmt.Println("no lab is up")
		return nil
	}
	fmt.Printf("removed %d leftover namespaces (%s*)\n", len(removed), lab.SupervisedPrefix)
	return nil
}
