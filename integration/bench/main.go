// Command bench measures holdfast side by side with the kernel's NAT
// (iptables DNAT with conntrack) and HAProxy in TCP mode, in one namespace
// lab and one run (issue 6): iperf3 TCP (1 and 4 streams), iperf3 UDP with
// 64-byte payloads, wrk keep-alive and new-connection requests, each the
// median of -runs runs, with the director's CPU-seconds per million packets;
// then a recovery storm (10,000 idle keep-alive connections, a failover, the
// time until each has made one request through the backup) and holdfast's
// memory per flow; and what holdfast's timestamp cookie costs the real's TCP
// (one iperf3 stream under 1 % loss, cookies on, off, and on a flow moved to
// the backup: -rows cookie). The ipv6 rows (issue 15) repeat the 1-stream
// TCP and the keep-alive rows over IPv6 in the same lab, built dual-stack for
// them, the kernel's NAT being nftables ip6 DNAT there. It prints a table and
// writes bench/results.json.
//
//	client ns -- router ns -- director A ns --+-- switch -- rs1, rs2, rs3
//	                       \- director B ns --+
//
// It runs whatever `holdfast run` is (built from ./cmd/holdfast, or -holdfast)
// and does not change it. It needs root, iproute2, and the peers: iperf3,
// wrk, haproxy, iptables, nftables (the IPv6 kernel NAT, the cookie group's
// loss) and nginx (the lab's Go backend stands in without it). Everything it
// creates (namespaces, processes, files in a temporary directory) is removed
// on exit, on error and on SIGINT.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Row groups, as -rows names them.
const (
	groupIperf  = "iperf"  // iperf3 TCP, 1 and 4 streams
	groupUDP    = "udp"    // iperf3 UDP, 64-byte payloads
	groupWrk    = "wrk"    // wrk keep-alive and new connection
	groupStorm  = "storm"  // recovery storm and memory per flow
	groupCookie = "cookie" // the timestamp cookie's cost on the real's TCP (cookie.go)
	groupIPv6   = "ipv6"   // iperf3 TCP 1 stream and wrk keep-alive over IPv6 (a dual-stack lab)
)

var allGroups = []string{groupIperf, groupUDP, groupWrk, groupIPv6, groupStorm, groupCookie}

// Directors, as -directors names them, in their order within a turn (see
// measureAll). The kernel's NAT runs on director B, holdfast and HAProxy on
// A: its nat table registers conntrack hooks in its namespace that stay
// there once the rules are gone, and they would tax every packet of the
// other two (holdfast's packets cross the director's netfilter hooks twice:
// into the TUN and out of it). The storm, which runs holdfast on both, comes
// before any of them.
const (
	dirKernel   = "kernel"
	dirHAProxy  = "haproxy"
	dirHoldfast = "holdfast"
)

var measureOrder = []string{dirHoldfast, dirHAProxy, dirKernel}

// config is the parsed command line.
type config struct {
	groups     map[string]bool
	directors  map[string]bool
	runs       int
	duration   time.Duration
	holdfast   string // prebuilt binary; "" builds ./cmd/holdfast
	out        string
	stormConns int
	txqueuelen int // experiment: the TUN's txqueuelen once holdfast runs (0: as holdfast leaves it)
}

func parseFlags(args []string) (config, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	rows := fs.String("rows", strings.Join(allGroups, ","), "row groups to run, comma-separated: "+strings.Join(allGroups, ", "))
	dirs := fs.String("directors", strings.Join([]string{dirKernel, dirHAProxy, dirHoldfast}, ","), "directors to measure, comma-separated: kernel, haproxy, holdfast (the storm always uses holdfast)")
	var c config
	fs.IntVar(&c.runs, "runs", 3, "runs per row and director; the table shows the median")
	fs.DurationVar(&c.duration, "duration", 4*time.Second, "length of one measured run (iperf3 TCP adds 1 s of slow start it omits)")
	fs.StringVar(&c.holdfast, "holdfast", "", "holdfast binary to run (default: go build ./cmd/holdfast into a temporary directory)")
	fs.StringVar(&c.out, "out", "", "results file (default: bench/results.json in the module root)")
	fs.IntVar(&c.stormConns, "storm-conns", 10000, "idle keep-alive connections of the recovery storm")
	fs.IntVar(&c.txqueuelen, "tun-txqueuelen", 0, "experiment, not a measurement of holdfast as shipped: set the txqueuelen of each holdfast's TUN once it serves (0: leave it)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: bench [flags]   (as root; from the holdfast module)\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var err error
	if c.groups, err = parseSet("-rows", *rows, append(slices.Clone(allGroups), groupFastPath)); err != nil { // fastpath.go: not in the default set
		return c, err
	}
	if c.directors, err = parseSet("-directors", *dirs, measureOrder); err != nil {
		return c, err
	}
	switch {
	case c.runs < 1:
		return c, fmt.Errorf("-runs %d: want 1 or more", c.runs)
	case c.duration < time.Second:
		return c, fmt.Errorf("-duration %v: want 1s or more (iperf3 counts whole seconds)", c.duration)
	case c.stormConns < 1:
		return c, fmt.Errorf("-storm-conns %d: want 1 or more", c.stormConns)
	case c.txqueuelen < 0:
		return c, fmt.Errorf("-tun-txqueuelen %d: want a queue length, or 0 to leave it", c.txqueuelen)
	}
	return c, nil
}

func parseSet(flagName, v string, valid []string) (map[string]bool, error) {
	set := map[string]bool{}
	for _, s := range strings.Split(v, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !slices.Contains(valid, s) {
			return nil, fmt.Errorf("%s: %q is not one of %s", flagName, s, strings.Join(valid, ", "))
		}
		set[s] = true
	}
	if len(set) == 0 {
		return nil, fmt.Errorf("%s %q: name at least one of %s", flagName, v, strings.Join(valid, ", "))
	}
	return set, nil
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx, cfg, os.Stdout)
	interrupted := ctx.Err() != nil
	stop()
	if err != nil {
		if interrupted {
			fmt.Fprintln(os.Stderr, "bench: interrupted; everything it created is removed")
			os.Exit(130)
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// run checks the host, builds holdfast, builds the lab and measures; every
// resource it takes is released before it returns.
func run(ctx context.Context, cfg config, stdout io.Writer) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root to build network namespaces and TUN devices (sudo make bench)")
	}
	if err := checkTools(cfg); err != nil {
		return err
	}
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	if cfg.out == "" {
		cfg.out = filepath.Join(root, "bench", "results.json")
	}
	tmp, err := os.MkdirTemp("", "holdfast-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	b := newBench(cfg, tmp)
	if cfg.holdfast != "" {
		// The directors start in other namespaces, the same directory.
		if b.cfg.holdfast, err = filepath.Abs(cfg.holdfast); err != nil {
			return err
		}
		if _, err := os.Stat(b.cfg.holdfast); err != nil {
			return fmt.Errorf("-holdfast: %w", err)
		}
	} else {
		b.progress("building holdfast (go build ./cmd/holdfast)")
		bin := filepath.Join(tmp, "holdfast")
		cmd := exec.CommandContext(ctx, goTool(), "build", "-o", bin, "./cmd/holdfast")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build ./cmd/holdfast: %w\n%s", err, out)
		}
		b.cfg.holdfast = bin
	}
	if err := raiseNoFile(cfg); err != nil {
		return err
	}

	res, err := b.run(ctx)
	if ctx.Err() != nil {
		return errors.Join(ctx.Err(), err) // interrupted: keep the last complete results file
	}
	if res == nil {
		return err
	}
	// Whatever was measured is shown and kept, also after a failed phase.
	printTable(stdout, res)
	if werr := writeResults(cfg.out, res); werr != nil {
		return errors.Join(err, werr)
	}
	b.progress("results written to " + cfg.out)
	return err
}

// checkTools fails early, naming the Debian package, when a peer the chosen
// rows need is missing.
func checkTools(cfg config) error {
	type tool struct{ bin, pkg string }
	need := []tool{{"ip", "iproute2"}, {"ss", "iproute2"}}
	if cfg.groups[groupIperf] || cfg.groups[groupUDP] || cfg.groups[groupCookie] || cfg.groups[groupIPv6] {
		need = append(need, tool{"iperf3", "iperf3"})
	}
	if cfg.groups[groupCookie] || (cfg.directors[dirKernel] && cfg.groups[groupIPv6]) {
		need = append(need, tool{"nft", "nftables"})
	}
	if cfg.groups[groupWrk] || cfg.groups[groupIPv6] {
		need = append(need, tool{"wrk", "wrk"})
	}
	if cfg.directors[dirHAProxy] && (cfg.groups[groupIperf] || cfg.groups[groupWrk] || cfg.groups[groupIPv6]) {
		need = append(need, tool{"haproxy", "haproxy"})
	}
	if cfg.directors[dirKernel] && (cfg.groups[groupIperf] || cfg.groups[groupUDP] || cfg.groups[groupWrk] || cfg.groups[groupIPv6]) {
		need = append(need, tool{"iptables", "iptables"})
	}
	if cfg.holdfast == "" {
		need = append(need, tool{goTool(), "Go 1.26 (or give -holdfast)"})
	}
	var missing []string
	for _, t := range need {
		if _, err := exec.LookPath(t.bin); err != nil {
			missing = append(missing, fmt.Sprintf("%s (%s)", t.bin, t.pkg))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing tools: %s", strings.Join(missing, ", "))
	}
	return nil
}

// goTool is the go command: $GO as the Makefile passes it, else go on PATH.
func goTool() string {
	if g := os.Getenv("GO"); g != "" {
		return g
	}
	return "go"
}

// moduleRoot finds the holdfast module from the working directory upwards.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.HasPrefix(string(data), "module holdfast\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the holdfast module: run from its checkout (make bench)")
		}
		dir = parent
	}
}

// raiseNoFile lifts the soft RLIMIT_NOFILE to the hard one: the storm's
// client sockets live in this process (and, without nginx, the backends'
// too). The children (nginx, haproxy, holdfast) inherit it.
func raiseNoFile(cfg config) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("getrlimit(RLIMIT_NOFILE): %w", err)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("setrlimit(RLIMIT_NOFILE, %d): %w", lim.Max, err)
	}
	if cfg.groups[groupStorm] {
		need := uint64(cfg.stormConns) + 1024
		if _, err := exec.LookPath("nginx"); err != nil {
			need += uint64(cfg.stormConns) // the Go backends hold the server ends here
		}
		if lim.Cur < need {
			return fmt.Errorf("the storm needs %d open files in this process, RLIMIT_NOFILE allows %d (raise the hard limit, or lower -storm-conns)", need, lim.Cur)
		}
	}
	return nil
}
