// Command bgpspeaker runs a bgp.Speaker for the integration tests, inside a
// network namespace (`ip netns exec`): GoBGP dials from goroutines of its
// own, which a namespace entered by one locked thread would not hold.
//
// It reads one command a line on standard input and answers each with one
// JSON line on standard output ({"err": "...", "status": {...}}):
//
//	client P[,P...]   SetClientSide (an empty list: "client")
//	real P[,P...]     SetRealSide
//	withdraw          WithdrawAll
//	status            Status
//	close             Close, then exit
//
// It logs (zerolog JSON) to standard error. A test tool: the product links
// none of it.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"holdfast/bgp"
)

func main() {
	var (
		localAS  = flag.Uint("local-as", 65001, "local AS")
		peerAS   = flag.Uint("peer-as", 65000, "peer AS")
		routerID = flag.String("router-id", "", "router ID")
		client   = flag.String("client-peer", "", "client-side peers, comma-separated")
		real     = flag.String("real-peer", "", "real-side peers, comma-separated")
		med      = flag.Uint("med", 0, "MED")
		password = flag.String("password", "", "TCP-MD5 password")
	)
	flag.Parse()
	log := zerolog.New(os.Stderr).With().Timestamp().Logger().Level(zerolog.DebugLevel)
	cfg := bgp.Config{
		LocalAS:  uint32(*localAS),
		PeerAS:   uint32(*peerAS),
		MED:      uint32(*med),
		Password: *password,
		Log:      log,
	}
	var err error
	if cfg.RouterID, err = netip.ParseAddr(*routerID); err != nil {
		fail(err)
	}
	if cfg.ClientPeers, err = addrs(*client); err != nil {
		fail(err)
	}
	if cfg.RealPeers, err = addrs(*real); err != nil {
		fail(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	sp, err := bgp.New(ctx, cfg)
	cancel()
	if err != nil {
		fail(err)
	}
	out := json.NewEncoder(os.Stdout)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		verb, arg, _ := strings.Cut(strings.TrimSpace(in.Text()), " ")
		var err error
		switch verb {
		case "client", "real":
			var ps []netip.Prefix
			if ps, err = prefixes(arg); err == nil {
				if verb == "client" {
					err = sp.SetClientSide(ps)
				} else {
					err = sp.SetRealSide(ps)
				}
			}
		case "withdraw":
			err = sp.WithdrawAll()
		case "status":
		case "close":
			err = sp.Close()
		default:
			err = fmt.Errorf("unknown command %q", verb)
		}
		r := struct {
			Err    string     `json:"err,omitempty"`
			Status bgp.Status `json:"status"`
		}{Status: sp.Status()}
		if err != nil {
			r.Err = err.Error()
		}
		if err := out.Encode(r); err != nil {
			fail(err)
		}
		if verb == "close" {
			return
		}
	}
	// Standard input closed (the test ended): stop as the daemon would.
	_ = sp.Close()
}

func addrs(s string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' }) {
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

func prefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' }) {
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bgpspeaker:", err)
	os.Exit(1)
}
