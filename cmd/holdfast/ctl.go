package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"holdfast/balancer"
	"holdfast/daemon/adminapi"
	"holdfast/internal/unixhttp"
	"holdfast/nat"

	"github.com/urfave/cli/v2"
)

// The client side of the admin API: subcommands that talk to a running
// `holdfast run` through its --admin-socket.

// ctlFlags are the flags that find the director: its TUN name (the default
// socket, one per network namespace, is named after it) or the socket
// itself.
func ctlFlags(more ...cli.Flag) []cli.Flag {
	return append([]cli.Flag{tunFlag, adminSocketFlag}, more...)
}

func ctlClient(c *cli.Context) *directorClient {
	path := c.String(adminSocketFlag.Name)
	if path == "" {
		path = defaultAdminSocket(c.String(tunFlag.Name))
	}
	return &directorClient{adminapi.NewClient(path)}
}

func ctlCommands() []*cli.Command {
	serviceReal := []cli.Flag{
		&cli.StringFlag{Name: "service", Required: true, Usage: "the service, PROTO:VIP:PORT"},
		&cli.StringFlag{Name: "real", Required: true, Usage: "the real, ADDR:PORT (with add: ADDR:PORT[*WEIGHT][,id=N], N its timestamp cookie id)"},
	}
	return noArgs([]*cli.Command{
		{
			Name: "conns", Usage: "list the flows of a running director (like ipvsadm -Lnc), and how many",
			Flags: ctlFlags(jsonFlag,
				&cli.StringFlag{Name: "service", Usage: "only the flows of the service PROTO:VIP:PORT"},
				&cli.StringFlag{Name: "real", Usage: "only the flows to the real ADDR:PORT"},
				&cli.StringFlag{Name: "state", Usage: "only the flows in STATE (" + strings.Join(nat.StateNames()[1:], ", ") + ")"},
			),
			OnUsageError: usageError, Action: ctlConns,
		},
		{
			Name: "stats", Usage: "print the non-zero counters of a running director with their rates per second (--json: every counter)",
			Flags: ctlFlags(jsonFlag, statsWatchFlag, statsIntervalFlag), OnUsageError: usageError, Action: ctlStats,
		},
		{
			Name: "service", Usage: "services of a running director",
			Subcommands: []*cli.Command{{
				Name: "list", Usage: "list services and reals with weights, health, flow counts, connections and bytes, and rates (like ipvsadm -Ln --stats --rate)",
				Flags: ctlFlags(jsonFlag, &cli.DurationFlag{Name: "interval", Value: time.Second,
					Usage: "time between the two samples the rates come from (0: one sample, no rates; with --json the default is 0)"}),
				OnUsageError: usageError, Action: ctlServiceList,
			}, dumpCommand()},
		},
		{
			Name: "real", Usage: "change the reals of a running director (applies at once, existing flows stay)",
			Subcommands: []*cli.Command{
				{
					Name: "add", Usage: "add a real to a service",
					Flags: ctlFlags(serviceReal...), OnUsageError: usageError,
					Action: func(c *cli.Context) error { return ctlReal(c, adminapi.RealChange{Op: "add"}) },
				},
				{
					Name: "remove", Usage: "remove a real: no new flows; its flows finish, or with --rehome move to other reals",
					Flags: ctlFlags(
						&cli.StringFlag{Name: "service", Usage: "the service, PROTO:VIP:PORT (default: every service with the real)"},
						&cli.StringFlag{Name: "real", Usage: "the real, ADDR:PORT: its flows finish where they are"},
						&cli.StringFlag{Name: "rehome", Usage: "the real, ADDR:PORT: each of its flows moves to another real at its next request (drain for maintenance)"},
					),
					OnUsageError: usageError,
					Action: func(c *cli.Context) error {
						ch := adminapi.RealChange{Op: "remove", Service: c.String("service"), Real: c.String("real")}
						switch r := c.String("rehome"); {
						case r != "" && ch.Real != "":
							return usagef("real remove: give --real ADDR:PORT or --rehome ADDR:PORT, not both")
						case r != "":
							ch.Real, ch.Rehome = r, true
						case ch.Real == "":
							return usagef("real remove: expected --real ADDR:PORT or --rehome ADDR:PORT")
						}
						return sendReal(c, ch)
					},
				},
				{
					Name: "weight", Usage: "set a real's weight (0: no new flows, its flows continue)",
					Flags:        ctlFlags(append(serviceReal, &cli.IntFlag{Name: "weight", Required: true, Usage: "0..65535"})...),
					OnUsageError: usageError,
					Action: func(c *cli.Context) error {
						return ctlReal(c, adminapi.RealChange{Op: "weight", Weight: c.Int("weight")})
					},
				},
			},
		},
	})
}

// noArgs refuses arguments to the control commands (every setting is a
// flag): `service list tcp:VIP:80` would otherwise list every service.
func noArgs(cmds []*cli.Command) []*cli.Command {
	for _, cmd := range cmds {
		noArgs(cmd.Subcommands)
		if cmd.Action == nil {
			continue
		}
		action := cmd.Action
		cmd.Action = func(c *cli.Context) error {
			if c.Args().Len() > 0 {
				return usagef("%s: unexpected argument %q (every setting is a --flag)", strings.TrimPrefix(c.Command.HelpName, c.App.Name+" "), c.Args().First())
			}
			return action(c)
		}
	}
	return cmds
}

// director asks which director answers on the socket: conns, service
// list and stats say it first (a line, or a "director" field in JSON), as
// the default socket's name does not tell which process has it. A
// director that cannot say (one older than /info) is no reason to fail.
func director(cl *directorClient) (*adminapi.Info, error) {
	info, err := cl.info()
	if errors.Is(err, unixhttp.ErrUnreachable) {
		return nil, cli.Exit(err.Error(), exitRuntime)
	}
	if err != nil {
		return nil, nil //nolint:nilerr // see above: the answer is still useful
	}
	return &info, nil
}

// directorLine is the line that names the director that answered.
func directorLine(info *adminapi.Info) string {
	if info == nil {
		return "director: unknown (it does not answer GET " + adminapi.PathInfo + ")"
	}
	ns := strconv.FormatUint(info.NetNS, 10)
	if info.NetNSName != "" {
		ns = info.NetNSName + " (" + ns + ")"
	}
	up := time.Duration(info.Uptime * float64(time.Second)).Round(time.Second)
	return fmt.Sprintf("director %d  pid %d  tun %s  netns %s  up %s  version %s",
		info.ID, info.PID, info.TUN, ns, up, info.Version)
}

// connFilter is what conns --service, --real and --state keep: the zero
// value of a field keeps every flow. The admin API answers every flow;
// the filter is the client's.
type connFilter struct {
	proto string // "tcp" or "udp", with vip
	vip   netip.AddrPort
	real  netip.AddrPort
	state string // as the API names it
}

// newConnFilter reads conns' filter flags.
func newConnFilter(c *cli.Context) (connFilter, error) {
	var f connFilter
	if s := c.String("service"); s != "" {
		proto, vip, err := balancer.ParseService(s)
		if err != nil {
			return f, usagef("--service: %v", err)
		}
		f.proto, f.vip = proto.String(), vip
	}
	if s := c.String("real"); s != "" {
		ap, err := netip.ParseAddrPort(s)
		if hint := balancer.BracketHint(s); err != nil && hint != "" {
			return f, usagef("--real %q: %s", s, hint)
		}
		if err != nil {
			return f, usagef("--real %q: expected ADDR:PORT", s)
		}
		f.real = ap
	}
	if s := c.String("state"); s != "" {
		st, ok := nat.StateNamed(s)
		if !ok || st == nat.StateNone {
			return f, usagef("--state %q: expected one of %s", s, strings.Join(nat.StateNames()[1:], ", "))
		}
		f.state = st.String()
	}
	return f, nil
}

// keep reports whether the flow passes the filter.
func (f connFilter) keep(c adminapi.Conn) bool {
	same := func(want netip.AddrPort, got string) bool {
		ap, err := netip.ParseAddrPort(got)
		return err == nil && ap == want
	}
	switch {
	case f.proto != "" && (c.Proto != f.proto || !same(f.vip, c.VIP)):
		return false
	case f.real.IsValid() && !same(f.real, c.Real):
		return false
	case f.state != "" && c.State != f.state:
		return false
	}
	return true
}

// filter returns the flows that pass.
func (f connFilter) filter(conns []adminapi.Conn) []adminapi.Conn {
	out := conns[:0:0]
	for _, c := range conns {
		if f.keep(c) {
			out = append(out, c)
		}
	}
	return out
}

func ctlConns(c *cli.Context) error {
	filter, err := newConnFilter(c)
	if err != nil {
		return err
	}
	cl := ctlClient(c)
	info, err := director(cl)
	if err != nil {
		return err
	}
	conns, err := cl.conns()
	if err != nil {
		return cli.Exit(err.Error(), exitRuntime)
	}
	conns = filter.filter(conns)
	if c.Bool(jsonFlag.Name) {
		return printJSON(struct {
			Director *adminapi.Info  `json:"director"`
			Conns    []adminapi.Conn `json:"conns"`
		}{info, conns})
	}
	fmt.Println(directorLine(info))
	return writeConns(os.Stdout, conns)
}

// writeConns writes the flows' table, sorted by client, and their count.
func writeConns(out io.Writer, conns []adminapi.Conn) error {
	sort.Slice(conns, func(i, j int) bool { return conns[i].Client < conns[j].Client })
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "PRO\tCLIENT\tVIP\tREAL\tSTATE\tKIND\tEXPIRES\tLOCAL\tSEQ-DELTA\tACK-DELTA")
	for _, f := range conns {
		local := f.Local
		if local == "" {
			local = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\n", strings.ToUpper(f.Proto), f.Client, f.VIP, f.Real,
			f.State, f.Kind, fmtExpiry(f.ExpiresIn), local, f.SeqDelta, f.AckDelta)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	flows := "flows"
	if len(conns) == 1 {
		flows = "flow"
	}
	_, err := fmt.Fprintf(out, "%d %s\n", len(conns), flows)
	return err
}

func fmtExpiry(s float64) string {
	n := int(s + 0.5)
	return fmt.Sprintf("%02d:%02d", n/60, n%60)
}

// realRate is a real's traffic per second between two samples (ipvsadm
// --rate).
type realRate struct {
	Conns      float64 `json:"conns_per_s"`
	PacketsIn  float64 `json:"packets_in_per_s"`
	PacketsOut float64 `json:"packets_out_per_s"`
	BytesIn    float64 `json:"bytes_in_per_s"`
	BytesOut   float64 `json:"bytes_out_per_s"`
}

// realKey names a real of a service across two samples.
type realKey struct {
	service string
	addr    netip.AddrPort
}

// realRates is the rate of every real of cur that prev, dt earlier, has
// too, with counters that did not go down (a restart between the two).
func realRates(prev, cur []adminapi.Service, dt time.Duration) map[realKey]realRate {
	if dt <= 0 || prev == nil {
		return nil
	}
	before := make(map[realKey]adminapi.Real)
	for _, s := range prev {
		for _, r := range s.Reals {
			before[realKey{s.Service, r.Addr}] = r
		}
	}
	per := func(a, b uint64) float64 { return float64(b-a) / dt.Seconds() }
	rates := make(map[realKey]realRate)
	for _, s := range cur {
		for _, r := range s.Reals {
			k := realKey{s.Service, r.Addr}
			p, ok := before[k]
			if !ok || r.Conns < p.Conns || r.PacketsIn < p.PacketsIn || r.PacketsOut < p.PacketsOut || r.BytesIn < p.BytesIn || r.BytesOut < p.BytesOut {
				continue
			}
			rates[k] = realRate{per(p.Conns, r.Conns), per(p.PacketsIn, r.PacketsIn), per(p.PacketsOut, r.PacketsOut), per(p.BytesIn, r.BytesIn), per(p.BytesOut, r.BytesOut)}
		}
	}
	return rates
}

// ratedService is a service as service list --json prints it: the API's,
// each real with its rates (none with --interval 0).
type ratedService struct {
	adminapi.Service
	Reals []ratedReal `json:"reals"`
}

type ratedReal struct {
	adminapi.Real
	Rate *realRate `json:"rate,omitempty"`
}

func withRates(svcs []adminapi.Service, rates map[realKey]realRate) []ratedService {
	out := make([]ratedService, 0, len(svcs))
	for _, s := range svcs {
		rs := ratedService{Service: s, Reals: make([]ratedReal, 0, len(s.Reals))}
		for _, r := range s.Reals {
			rr := ratedReal{Real: r}
			if rate, ok := rates[realKey{s.Service, r.Addr}]; ok {
				rr.Rate = &rate
			}
			rs.Reals = append(rs.Reals, rr)
		}
		out = append(out, rs)
	}
	return out
}

func ctlServiceList(c *cli.Context) error {
	interval := c.Duration("interval")
	if interval < 0 {
		return usagef("service list: --interval %s: expected a duration, 0 for no rates", interval)
	}
	if c.Bool(jsonFlag.Name) && !c.IsSet("interval") {
		// A script asks for the counters, not for a second's wait: rates
		// in JSON only with an --interval given.
		interval = 0
	}
	cl := ctlClient(c)
	info, err := director(cl)
	if err != nil {
		return err
	}
	var prev []adminapi.Service
	var prevAt time.Time
	if interval > 0 {
		if prev, err = cl.services(); err != nil {
			return cli.Exit(err.Error(), exitRuntime)
		}
		prevAt = time.Now()
		time.Sleep(interval)
	}
	svcs, err := cl.services()
	if err != nil {
		return cli.Exit(err.Error(), exitRuntime)
	}
	rates := realRates(prev, svcs, time.Since(prevAt))
	if c.Bool(jsonFlag.Name) {
		return printJSON(struct {
			Director *adminapi.Info `json:"director"`
			Services []ratedService `json:"services"`
		}{info, withRates(svcs, rates)})
	}
	fmt.Println(directorLine(info))
	return writeServices(os.Stdout, svcs, rates)
}

// writeServices writes each service's line and the table of its reals
// ("-" for a rate: none).
func writeServices(out io.Writer, svcs []adminapi.Service, rates map[realKey]realRate) error {
	for _, s := range svcs {
		fmt.Fprintf(out, "%s  scheduler %s  persistence %s\n", s.Service, s.Scheduler, s.Persistence)
		w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(w, "  REAL\tWEIGHT\tCOOKIE\tHEALTH\tACTIVE\tINACTIVE\tCONNS\tCONNS/S\tPACKETS-IN\tPACKETS-OUT\tBYTES-IN\tBYTES-OUT")
		for _, r := range s.Reals {
			health := "up"
			if r.Down {
				health = "down"
			}
			if r.Removed {
				health += ",removed"
			}
			if r.Rehome {
				health += ",rehoming"
			}
			cookie := "-" // no cookie id: cookies off, or more reals than ids
			if r.CookieID != 0 {
				cookie = strconv.Itoa(int(r.CookieID))
			}
			cps := "-"
			if rate, ok := rates[realKey{s.Service, r.Addr}]; ok {
				cps = fmtNum(rate.Conns)
			}
			fmt.Fprintf(w, "  %s\t%d\t%s\t%s\t%d\t%d\t%d\t%s\t%d\t%d\t%d\t%d\n", r.Addr, r.Weight, cookie, health, r.Active, r.Inactive,
				r.Conns, cps, r.PacketsIn, r.PacketsOut, r.BytesIn, r.BytesOut)
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
	return nil
}

func ctlReal(c *cli.Context, ch adminapi.RealChange) error {
	ch.Service, ch.Real = c.String("service"), c.String("real")
	return sendReal(c, ch)
}

func sendReal(c *cli.Context, ch adminapi.RealChange) error {
	if ch.Service != "" {
		if _, _, err := balancer.ParseService(ch.Service); err != nil {
			return usagef("--service: %v", err)
		}
	}
	if ch.Op == "add" {
		if _, _, _, err := balancer.ParseReal(ch.Real); err != nil {
			return usagef("--real: %v", err)
		}
	} else if _, err := netip.ParseAddrPort(ch.Real); err != nil {
		if hint := balancer.BracketHint(ch.Real); hint != "" {
			return usagef("--%s %q: %s", map[bool]string{true: "rehome", false: "real"}[ch.Rehome], ch.Real, hint)
		}
		return usagef("--%s %q: expected ADDR:PORT (no weight, no id: they are not part of a real's name)", map[bool]string{true: "rehome", false: "real"}[ch.Rehome], ch.Real)
	}
	if err := ctlClient(c).changeReal(ch); err != nil {
		code := exitUsage // the director refused the change
		if errors.Is(err, unixhttp.ErrUnreachable) {
			code = exitRuntime
		}
		return cli.Exit(err.Error(), code)
	}
	fmt.Printf("%s %s: done\n", ch.Op, ch.Real)
	return nil
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
