package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"holdfast/internal/unixhttp"
	"holdfast/lab"

	"github.com/urfave/cli/v2"
)

// `holdfast lab up` runs a lab.Supervisor in the foreground; `lab status`,
// `lab failover` and `lab down`, from another terminal, ask it on its
// socket (lab.Ask). This file holds the commands' flags, checks and output.

var (
	labDirectorsFlag = &cli.IntFlag{Name: "directors", Value: 2, Usage: "directors in the lab: 1 or 2"}
	labRealsFlag     = &cli.IntFlag{Name: "reals", Value: 3, Usage: "real servers in the lab: 1..100"}
)

func labUpCommand() *cli.Command {
	return &cli.Command{
		Name:  "up",
		Usage: "build the lab, start the directors and backends, and supervise them until Ctrl-C or `holdfast lab down`",
		Flags: []cli.Flag{labDirectorsFlag, labRealsFlag, labVRRPFlag}, OnUsageError: usageError,
		Action: unprivileged(labUp),
	}
}

func labSimpleCommand(command, usage string) *cli.Command {
	return &cli.Command{Name: command, Usage: usage, OnUsageError: usageError,
		Action: func(c *cli.Context) error { return labRequest(c, command) }}
}

func labUp(c *cli.Context) error {
	n, reals, vrrp := c.Int(labDirectorsFlag.Name), c.Int(labRealsFlag.Name), c.Bool(labVRRPFlag.Name)
	if n != 1 && n != 2 {
		return usagef("--directors %d: expected 1 or 2", n)
	}
	if reals < 1 || reals > lab.MaxReals {
		return usagef("--reals %d: expected 1..%d", reals, lab.MaxReals)
	}
	if vrrp && n != 2 {
		return usagef("--vrrp needs --directors 2")
	}
	if left, _ := lab.List(lab.SupervisedPrefix); len(left) > 0 {
		return cli.Exit(fmt.Sprintf("a lab is already up (%s...): run `holdfast lab down` first", left[0]), exitRuntime)
	}
	bin, err := os.Executable()
	if err != nil {
		return cli.Exit(err.Error(), exitRuntime)
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	fmt.Fprintln(os.Stderr, "building the lab...")
	s, err := lab.StartSupervisor(ctx, lab.SupervisorOptions{Binary: bin, Directors: n, Reals: reals, VRRP: vrrp, Log: newQuietLogger()})
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

func printLabUp(l *lab.Lab) {
	fmt.Printf("The lab is up (namespaces %s*, addresses in 198.18.0.0/15):\n\n", l.Prefix)
	fmt.Printf("  client     %-16s ns %s\n", lab.ClientAddr, l.Client.Name)
	fmt.Printf("  router     %-16s ns %s\n", lab.ClientGateway, l.Router.Name)
	for _, d := range l.Directors {
		fmt.Printf("  director %s %-16s ns %s (real side %s)\n", d.Label, d.Uplink.Addr(), d.Name, d.RSAddr.Addr())
	}
	for _, r := range l.Reals {
		fmt.Printf("  %-10s %-16s ns %s (HTTP :%d, UDP echo :%d)\n", r.Label, r.Addr, r.Name, lab.DefaultHTTPPort, lab.DefaultUDPPort)
	}
	active := "none yet"
	if a := l.Active(); a != nil {
		active = a.Label
	}
	fmt.Printf("  VIP        %-16s tcp:%d, rr over the reals; active director %s\n\n", lab.VIP, lab.DefaultHTTPPort, active)
	fmt.Printf("Try, from another terminal:\n")
	fmt.Printf("  ip netns exec %s curl -s http://%s/          # answered by a real\n", l.Client.Name, lab.VIP)
	fmt.Printf("  holdfast conns --admin-socket %s\n", lab.AdminSocket(l.Directors[0]))
	fmt.Printf("  holdfast lab status\n")
	fmt.Printf("  holdfast lab failover                          # kill the active director, move the routes\n")
	fmt.Printf("  holdfast lab down                              # or Ctrl-C here\n")
}

// labRequest sends a lab subcommand to the supervisor and prints its answer.
func labRequest(c *cli.Context, command string) error {
	st, err := lab.Ask(c.Context, lab.SupervisorSocket, command)
	if command == lab.AskDown {
		if err == nil {
			fmt.Println(st.Message)
			if left, _ := lab.List(lab.SupervisedPrefix); len(left) == 0 {
				return nil
			}
		}
		// No supervisor (killed), or it left something: sweep.
		return labSweep()
	}
	if errors.Is(err, unixhttp.ErrUnreachable) {
		return cli.Exit(fmt.Sprintf("holdfast lab %s: %v (is `holdfast lab up` running?)", command, err), exitRuntime)
	}
	if err != nil {
		return cli.Exit(fmt.Sprintf("holdfast lab %s: %v", command, err), exitRuntime)
	}
	if st.Message != "" {
		fmt.Println(st.Message)
	}
	fmt.Printf("lab %s*: client %s, VIP %s, active director %s\n", st.Prefix, st.Client, st.VIP, st.Active)
	for _, d := range st.Directors {
		state := "not running"
		if d.Running {
			state = fmt.Sprintf("running (pid %d): %d flows, %d recovered, %d adopted", d.PID, d.Flows, d.Recovered, d.Adopted)
		}
		fmt.Printf("  director %s  %-18s ns %-16s %s\n", d.Label, d.Uplink, d.Namespace, state)
	}
	for _, r := range st.Reals {
		fmt.Printf("  %-5v %-15v ns %-16v %v connections, %v requests\n", r.Label, r.Addr, r.Namespace, r.HTTPConnections, r.HTTPRequests)
	}
	return nil
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
