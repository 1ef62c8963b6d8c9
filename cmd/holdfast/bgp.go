package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"holdfast/bfd"
	"holdfast/daemon"
	"holdfast/daemon/adminapi"
	"holdfast/internal/unixhttp"

	"github.com/urfave/cli/v2"
)

// parseBGP reads the BGP flag group: nil when BGP is off (no --bgp-local-as
// and no peer); any other BGP flag then is refused, as it would do nothing.
func parseBGP(c *cli.Context) (*daemon.BGP, error) {
	on := c.IsSet(bgpLocalASFlag.Name) || len(c.StringSlice(bgpPeerFlag.Name))+len(c.StringSlice(bgpRealPeerFlag.Name)) > 0
	if !on {
		for _, f := range []cli.Flag{bgpPeerASFlag, bgpRouterIDFlag, bgpAnnounceFlag, bgpMEDFlag, bgpHoldFlag, bgpKeepaliveFlag, bgpPasswordFlag, bgpDrainFlag, bfdFlag, bfdIntervalFlag, bfdMultiplierFlag} {
			if n := f.Names()[0]; c.IsSet(n) {
				return nil, usagef("--%s needs BGP on: --%s N and --%s or --%s ADDR", n, bgpLocalASFlag.Name, bgpPeerFlag.Name, bgpRealPeerFlag.Name)
			}
		}
		return nil, nil
	}
	var b daemon.BGP
	var missing []string
	for _, f := range []cli.Flag{bgpLocalASFlag, bgpPeerASFlag, bgpRouterIDFlag} {
		if !c.IsSet(f.Names()[0]) {
			missing = append(missing, "--"+f.Names()[0])
		}
	}
	if len(c.StringSlice(bgpPeerFlag.Name))+len(c.StringSlice(bgpRealPeerFlag.Name)) == 0 {
		missing = append(missing, "--"+bgpPeerFlag.Name+" or --"+bgpRealPeerFlag.Name)
	}
	if len(missing) > 0 {
		return nil, usagef("BGP needs %s", strings.Join(missing, ", "))
	}
	as := func(f *cli.UintFlag) (uint32, error) {
		v := c.Uint(f.Name)
		if v < 1 || v > math.MaxUint32 {
			return 0, usagef("--%s %d: expected an AS number 1..4294967295", f.Name, v)
		}
		return uint32(v), nil
	}
	var err error
	if b.LocalAS, err = as(bgpLocalASFlag); err != nil {
		return nil, err
	}
	if b.PeerAS, err = as(bgpPeerASFlag); err != nil {
		return nil, err
	}
	if b.PeerAS == b.LocalAS {
		return nil, usagef("--%s %d is --%s: holdfast speaks eBGP only (the routers' AS must differ)", bgpPeerASFlag.Name, b.PeerAS, bgpLocalASFlag.Name)
	}
	s := c.String(bgpRouterIDFlag.Name)
	if b.RouterID, err = netip.ParseAddr(s); err != nil || !b.RouterID.Is4() || b.RouterID.IsUnspecified() {
		return nil, usagef("--%s %q: expected a non-zero IPv4 address (the BGP identifier), e.g. 198.18.2.2", bgpRouterIDFlag.Name, s)
	}
	seen := map[netip.Addr]string{}
	peers := func(f *cli.StringSliceFlag) ([]netip.Addr, error) {
		var out []netip.Addr
		for _, s := range c.StringSlice(f.Name) {
			a, err := netip.ParseAddr(s)
			if err != nil || !a.IsGlobalUnicast() || a.Zone() != "" {
				return nil, usagef("--%s %q: expected a router's unicast address, IPv4 or IPv6 (no brackets), e.g. 198.18.1.1 or 2001:2:0:1::1", f.Name, s)
			}
			a = a.Unmap()
			if prev, dup := seen[a]; dup {
				return nil, usagef("--%s %s: already given as --%s (a router is a client-side or a real-side peer, once)", f.Name, a, prev)
			}
			seen[a] = f.Name
			out = append(out, a)
		}
		return out, nil
	}
	if b.ClientPeers, err = peers(bgpPeerFlag); err != nil {
		return nil, err
	}
	if b.RealPeers, err = peers(bgpRealPeerFlag); err != nil {
		return nil, err
	}
	for _, s := range c.StringSlice(bgpAnnounceFlag.Name) {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, usagef("--%s %q: expected a prefix, e.g. 0.0.0.0/0 or 198.18.1.0/24", bgpAnnounceFlag.Name, s)
		}
		if p.Masked() != p {
			return nil, usagef("--%s %q: host bits set; expected a network prefix (%s?)", bgpAnnounceFlag.Name, s, p.Masked())
		}
		b.Announce = append(b.Announce, p)
	}
	if len(b.RealPeers) == 0 && len(b.Announce) > 0 {
		return nil, usagef("--%s needs a --%s: the prefixes go to the real-side routers", bgpAnnounceFlag.Name, bgpRealPeerFlag.Name)
	}
	// A prefix goes only over sessions of its family (bgp/doc.go: next hop
	// self needs an address of the family): an announce prefix of a family
	// no real-side peer has would reach no router.
	for _, p := range b.Announce {
		is4 := p.Addr().Unmap().Is4() // the speaker sends a mapped prefix as IPv4
		if !slices.ContainsFunc(b.RealPeers, func(a netip.Addr) bool { return a.Is4() == is4 }) {
			fam, other := "IPv6", "IPv4"
			if is4 {
				fam, other = other, fam
			}
			return nil, usagef("--%s %s is %s and every --%s is %s: it would reach no router (a prefix goes only over sessions of its family); add an %s --%s", bgpAnnounceFlag.Name, p, fam, bgpRealPeerFlag.Name, other, fam, bgpRealPeerFlag.Name)
		}
	}
	m := c.Uint(bgpMEDFlag.Name)
	if m > math.MaxUint32 {
		return nil, usagef("--%s %d: expected 0..4294967295", bgpMEDFlag.Name, m)
	}
	b.MED = uint32(m)
	b.HoldTime, b.Keepalive = c.Duration(bgpHoldFlag.Name), c.Duration(bgpKeepaliveFlag.Name)
	if b.HoldTime < 3*time.Second || b.HoldTime > 65535*time.Second || b.HoldTime%time.Second != 0 {
		return nil, usagef("--%s %s: expected whole seconds, 3s..65535s (RFC 4271)", bgpHoldFlag.Name, b.HoldTime)
	}
	if b.Keepalive < time.Second || b.Keepalive > b.HoldTime/3 || b.Keepalive%time.Second != 0 {
		return nil, usagef("--%s %s: expected whole seconds, 1s..a third of --%s (%s)", bgpKeepaliveFlag.Name, b.Keepalive, bgpHoldFlag.Name, b.HoldTime/3)
	}
	b.Password = c.String(bgpPasswordFlag.Name)
	if len(b.Password) > 80 {
		return nil, usagef("--%s: %d bytes; TCP-MD5 keys are 80 bytes at most", bgpPasswordFlag.Name, len(b.Password))
	}
	if b.Drain = c.Duration(bgpDrainFlag.Name); b.Drain < 0 {
		return nil, usagef("--%s %s: expected a duration of 0 or more, e.g. 5s", bgpDrainFlag.Name, b.Drain)
	}
	if b.BFD, err = parseBFD(c); err != nil {
		return nil, err
	}
	return &b, nil
}

// parseBFD reads --bfd and its timers: nil with --bfd off.
func parseBFD(c *cli.Context) (*bfd.Config, error) {
	var cfg bfd.Config
	switch m := c.String(bfdFlag.Name); m {
	case "passive":
	case "active":
		cfg.Active = true
	case "off":
		for _, f := range []cli.Flag{bfdIntervalFlag, bfdMultiplierFlag} {
			if n := f.Names()[0]; c.IsSet(n) {
				return nil, usagef("--%s with --%s off: BFD is off", n, bfdFlag.Name)
			}
		}
		return nil, nil
	default:
		return nil, usagef("--%s %q: expected passive, active or off", bfdFlag.Name, m)
	}
	cfg.Interval = c.Duration(bfdIntervalFlag.Name)
	if cfg.Interval < 10*time.Millisecond || cfg.Interval > 10*time.Second || cfg.Interval%time.Microsecond != 0 {
		return nil, usagef("--%s %s: expected 10ms..10s", bfdIntervalFlag.Name, cfg.Interval)
	}
	m := c.Uint(bfdMultiplierFlag.Name)
	if m < 1 || m > 255 {
		return nil, usagef("--%s %d: expected 1..255", bfdMultiplierFlag.Name, m)
	}
	cfg.Multiplier = uint8(m)
	return &cfg, nil
}

// bgpCommand is `holdfast bgp`: the sessions (as `birdc show protocols`)
// and what is announced (as `show route export`).
func bgpCommand() *cli.Command {
	return &cli.Command{
		Name: "bgp", Usage: "the BGP sessions of a running director and what it announces to each side",
		Flags: ctlFlags(jsonFlag), OnUsageError: usageError, Action: ctlBGP,
	}
}

func ctlBGP(c *cli.Context) error {
	cl := ctlClient(c)
	info, err := director(cl)
	if err != nil {
		return err
	}
	st, err := cl.BGP(c.Context)
	if err != nil {
		if errors.Is(err, unixhttp.ErrUnreachable) {
			return cli.Exit(unreachable(err).Error(), exitRuntime)
		}
		return cli.Exit(err.Error(), exitRuntime)
	}
	if c.Bool(jsonFlag.Name) {
		return printJSON(struct {
			Director *adminapi.Info `json:"director"`
			BGP      adminapi.BGP   `json:"bgp"`
		}{info, st})
	}
	fmt.Println(directorLine(info))
	return writeBGP(os.Stdout, st)
}

// writeBGP writes the speaker's state for people.
func writeBGP(out io.Writer, st adminapi.BGP) error {
	state := ""
	if st.Withdrawn {
		state = "  (stopping: everything withdrawn)"
	}
	fmt.Fprintf(out, "local AS %d  router id %s  MED %d%s\n", st.LocalAS, st.RouterID, st.MED, state)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "PEER\tSIDE\tAS\tSTATE\tSINCE\tADVERTISED\tRECEIVED\tBFD\tINFO")
	for _, p := range st.Peers {
		since := "-"
		if !p.Since.IsZero() {
			since = p.Since.Local().Format("15:04:05")
		}
		info := p.LastError
		if p.State == "Established" {
			info = "up " + (time.Duration(p.Uptime * float64(time.Second))).Round(time.Second).String()
		}
		b := "off"
		if p.BFD != nil {
			b = p.BFD.State
			if p.BFD.State == "Up" {
				b += " " + time.Duration(p.BFD.DetectTime*float64(time.Second)).String()
			} else if p.BFD.TxInterval == 0 && p.BFD.Since.IsZero() {
				b = "not asked"
			}
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%d\t%d\t%s\t%s\n", p.Addr, p.Side, p.AS, p.State, since, p.Advertised, p.Received, b, info)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	list := func(ps []string) string {
		if len(ps) == 0 {
			return "nothing"
		}
		return strings.Join(ps, " ")
	}
	_, err := fmt.Fprintf(out, "announced to the client side: %s\nannounced to the real side:   %s\n", list(st.ClientSide), list(st.RealSide))
	return err
}

func (c *directorClient) BGP(ctx context.Context) (adminapi.BGP, error) {
	out, err := c.Client.BGP(ctx)
	return out, flagError(err)
}
