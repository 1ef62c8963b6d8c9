package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestBadInputs: every bad input a user can give (a flag, a variable, a
// config file, a control command's flag) is refused before anything starts
// or is sent: exit 2, stdout empty, one line on stderr that names the flag,
// variable or file and says what was expected. A case without cmd runs
// `holdfast run` with a TUN name, a recovery address and its args; with
// config, the file is written and given as --config, and {config} in want
// is its path.
func TestBadInputs(t *testing.T) {
	dir := t.TempDir()
	config := filepath.Join(dir, "services.json")
	if err := os.WriteFile(config, []byte(`{"services":[{"service":"tcp:198.18.0.10:80","reals":["198.18.10.11:80"]}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	config6 := filepath.Join(dir, "services6.json") // valid, with an IPv6 service
	if err := os.WriteFile(config6, []byte(`{"services":[{"service":"tcp:198.18.0.10:80","reals":["198.18.10.11:80"]},{"service":"tcp:[2001:2::10]:80","reals":["[2001:2:0:20::11]:80"]}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	const (
		tcp80  = "tcp:198.18.0.10:80"
		udp53  = "udp:198.18.0.10:53"
		rs1_80 = "198.18.10.11:80"
		rs1_53 = "198.18.10.11:53"
	)
	const (
		tcp6 = "tcp:[2001:2::10]:80"
		rs6  = "[2001:2:0:20::11]:80"
		// What a bad --recovery-addr expects.
		recAddrWant = "; expected a unicast IPv4 or global unicast IPv6 address, e.g. 198.18.200.1 or 2001:2:0:30::1"
	)
	const one = "--service=tcp:198.18.0.10:80 --real=198.18.10.11:80" // a valid service, for the other flags' cases
	for _, tc := range []struct {
		name   string
		env    []string
		cmd    []string // the whole command line instead of run's
		config string   // a config file's content
		args   []string
		want   string // the whole line, after "holdfast: "
	}{
		{name: "real before the first of two services",
			args: []string{"--real", rs1_80, "--service", tcp80, "--service", udp53, "--real", rs1_53},
			want: "--real 198.18.10.11:80 before any --service (with several services, each --service comes first and owns the flags after it)"},
		{name: "scheduler before the first of two services, = form",
			args: []string{"--scheduler=sh", "--service=" + tcp80, "--real=" + rs1_80, "--service=" + udp53, "--real=" + rs1_53},
			want: "--scheduler sh before any --service (with several services, each --service comes first and owns the flags after it)"},
		{name: "second service without a real",
			args: []string{"--service", tcp80, "--real", rs1_80, "--service", udp53, "--scheduler", "rr"},
			want: "--service udp:198.18.0.10:53 has no --real ADDR:PORT[*WEIGHT]"},
		{name: "duplicate service",
			args: []string{"--service", tcp80, "--real", rs1_80, "--service", tcp80, "--real", "198.18.10.12:80"},
			want: "--service tcp:198.18.0.10:80 given twice (each --service starts a new service; give all of its flags after one --service)"},
		{name: "duplicate service written otherwise",
			args: []string{"--service", tcp80, "--real", rs1_80, "--service", "TCP:[::ffff:198.18.0.10]:80", "--real", "198.18.10.12:80"},
			want: "--service TCP:[::ffff:198.18.0.10]:80 given twice (each --service starts a new service; give all of its flags after one --service)"},
		{name: "scheduler twice for one service",
			args: []string{"--service", tcp80, "--scheduler", "rr", "--real", rs1_80, "--scheduler", "sh"},
			want: "--scheduler sh: --service tcp:198.18.0.10:80 already has --scheduler rr (one per service)"},
		{name: "check twice for the second service",
			args: []string{"--service", udp53, "--real", rs1_53, "--service", tcp80, "--check", "tcp", "--real", rs1_80, "--check=http:/"},
			want: "--check http:/: --service tcp:198.18.0.10:80 already has --check tcp (one per service)"},
		{name: "bad scheduler of the second service",
			args: []string{"--service", tcp80, "--real", rs1_80, "--service", udp53, "--scheduler", "fastest", "--real", rs1_53},
			want: `--scheduler: unknown scheduler "fastest" (expected rr, wrr, sh, dh, lc, mh or mh:addr)`},
		{name: "bad persistence of the second service",
			args: []string{"--service", tcp80, "--real", rs1_80, "--service", udp53, "--persistence", "soon", "--real", rs1_53},
			want: `--persistence: invalid duration "soon": expected a non-negative Go duration, e.g. 30m or 1h30m`},
		{name: "duplicate real of the second service",
			args: []string{"--service", tcp80, "--real", rs1_80, "--service", udp53, "--real", rs1_53, "--real", rs1_53},
			want: "--real: duplicate real 198.18.10.11:53, already given as reals[0] (--service udp:198.18.0.10:53)"},
		{name: "IPv6 real of an IPv4 service",
			args: []string{"--service", tcp80, "--real", "[2001:db8::1]:80"},
			want: "--real: real [2001:db8::1]:80 and VIP 198.18.0.10 are of different IP versions (--service tcp:198.18.0.10:80)"},
		{name: "real without service",
			args: []string{"--real", rs1_80},
			want: "--real given without --service PROTO:VIP:PORT"},
		{name: "variable without service",
			env:  []string{"HOLDFAST_REAL=" + rs1_80},
			want: "HOLDFAST_REAL given without --service PROTO:VIP:PORT"},
		{name: "variable with two services",
			env:  []string{"HOLDFAST_SCHEDULER=sh"},
			args: []string{"--service", tcp80, "--real", rs1_80, "--service", udp53, "--real", rs1_53},
			want: "HOLDFAST_SCHEDULER is set and 2 --service flags are given: environment variables have no order, so they can describe one service only (unset it, or give that service's --scheduler on the command line)"},
		{name: "service variable with two services",
			env:  []string{"HOLDFAST_SERVICE=" + tcp80},
			args: []string{"--service", tcp80, "--real", rs1_80, "--service", udp53, "--real", rs1_53},
			want: "HOLDFAST_SERVICE is set and 2 --service flags are given: environment variables have no order, so they can describe one service only (unset it, or give that service's --service on the command line)"},
		{name: "per-service flag with config",
			args: []string{"--config", config, "--scheduler", "rr"},
			want: "--scheduler rr: per-service flags cannot be combined with --config (put the service in the config file)"},
		{name: "service flag with config",
			args: []string{"--service", udp53, "--real", rs1_53, "--config", config},
			want: "--service udp:198.18.0.10:53: per-service flags cannot be combined with --config (put the service in the config file)"},
		{name: "per-service variable with config",
			env:  []string{"HOLDFAST_REAL=" + rs1_80},
			args: []string{"--config", config},
			want: "HOLDFAST_REAL is set: per-service variables cannot be combined with --config (unset it, and put the service in the config file)"},
		{name: "config variable with per-service flag",
			env:  []string{"HOLDFAST_CONFIG=" + config},
			args: []string{"--check", "tcp"},
			want: "--check tcp: per-service flags cannot be combined with --config (put the service in the config file)"},
		// The director's flags.
		{name: "TUN name", args: []string{"--tun", "a/b", one}, want: `--tun "a/b": expected an interface name: 1 to 15 characters, no '/', ':' or space, not . or ..`},
		{name: "TUN MTU", args: []string{"--tun-mtu", "100", one}, want: "--tun-mtu 100: expected 0 (auto) or 576..65535"},
		{name: "TUN queues", args: []string{"--tun-queues", "0", one}, want: "--tun-queues 0: expected 1..64"},
		{name: "packet nice", args: []string{"--packet-nice", "30", one}, want: "--packet-nice 30: expected -20..19 (0: leave the priority)"},
		{name: "route table", args: []string{"--route-table", "254", one}, want: "--route-table 254: expected a table number other than 253, 254, 255 (default, main, local)"},
		{name: "routes without the reals' interface", args: []string{"--setup-routes", one}, want: "--setup-routes needs --real-iface IFNAME (the interface facing the real servers)"},
		{name: "metrics address", args: []string{"--metrics-addr", "foo", one}, want: `--metrics-addr "foo": expected ADDR:PORT, e.g. 127.0.0.1:9100`},
		{name: "max flows", args: []string{"--max-flows", "0", one}, want: "--max-flows 0: expected a positive number"},
		{name: "max flows not a number", args: []string{"--max-flows", "x", one}, want: `run: --max-flows "x": expected an integer (see 'holdfast run --help')`},
		{name: "TCP timeout", args: []string{"--timeout-tcp", "0s", one}, want: "--timeout-tcp 0s: expected a positive duration, e.g. 15m0s"},
		{name: "check rise", args: []string{"--check-rise", "0", one}, want: "--check-interval/--check-timeout/--check-rise/--check-fall: check rise 0: expected at least 1 successful check to mark a real up"},
		{name: "check timeout over the interval", args: []string{"--check-timeout", "5s", "--check-interval", "1s", one},
			want: "--check-interval/--check-timeout/--check-rise/--check-fall: check timeout 5s exceeds the check interval 1s: expected a timeout no longer than the interval"},
		{name: "log level", args: []string{"--log-level", "loud", one}, want: `--log-level "loud": expected debug, info, warn or error`},
		{name: "log format", args: []string{"--log-format", "xml", one}, want: `--log-format "xml": expected json or console`},
		{name: "an argument", args: []string{one, "extra"}, want: `run: unexpected argument "extra" (every setting is a --flag)`},
		// Recovery.
		{name: "recovery on or off", args: []string{"--recovery", "maybe", one}, want: `--recovery "maybe": expected on or off`},
		{name: "recovery address multicast", args: []string{"--recovery-addr", "224.0.0.1", one}, want: `--recovery-addr "224.0.0.1": is multicast` + recAddrWant},
		{name: "recovery address not an address", args: []string{"--recovery-addr", "2001:2:0:30::1/64", one},
			want: `--recovery-addr "2001:2:0:30::1/64": expected a unicast IPv4 or IPv6 address, e.g. 198.18.200.1 or 2001:2:0:30::1`},
		{name: "recovery address IPv6 link-local", args: []string{"--recovery-addr", "fe80::1", one}, want: `--recovery-addr "fe80::1": is link-local` + recAddrWant},
		{name: "recovery address IPv6 multicast", args: []string{"--recovery-addr", "ff02::1", one}, want: `--recovery-addr "ff02::1": is multicast` + recAddrWant},
		{name: "recovery address IPv6 unspecified", args: []string{"--recovery-addr", "::", one}, want: `--recovery-addr "::": is unspecified` + recAddrWant},
		{name: "recovery address IPv6 loopback", args: []string{"--recovery-addr", "::1", one}, want: `--recovery-addr "::1": is loopback` + recAddrWant},
		{name: "recovery address with a zone", args: []string{"--recovery-addr", "fe80::1%eth0", one}, want: `--recovery-addr "fe80::1%eth0": has a zone, which is not supported` + recAddrWant},
		{name: "recovery address twice", args: []string{"--recovery-addr", "::ffff:198.18.200.1", one}, want: "--recovery-addr 198.18.200.1 given twice"},
		{name: "IPv6 service with IPv4 recovery addresses only", args: []string{"--service", tcp6, "--real", rs6},
			want: "service tcp:[2001:2::10]:80 is IPv6 and every recovery address is IPv4 (a recovery dials the service's real from a recovery address of its IP version): give --recovery-addr an address of that version too, or --recovery=off"},
		{name: "IPv4 service with IPv6 recovery addresses only", cmd: []string{"run", "--tun", "hf0", "--recovery-addr", "2001:2:0:30::1", one},
			want: "service tcp:198.18.0.10:80 is IPv4 and every recovery address is IPv6 (a recovery dials the service's real from a recovery address of its IP version): give --recovery-addr an address of that version too, or --recovery=off"},
		{name: "IPv6 service in a config with IPv4 recovery addresses only", args: []string{"--config", config6},
			want: "service tcp:[2001:2::10]:80 is IPv6 and every recovery address is IPv4 (a recovery dials the service's real from a recovery address of its IP version): give --recovery-addr an address of that version too, or --recovery=off"},
		{name: "recovery allow IPv6 with host bits", args: []string{"--recovery-allow", "2001:2::1/48", one}, want: `--recovery-allow "2001:2::1/48": host bits set; expected a network prefix (2001:2::/48?)`},
		{name: "recovery allow not a prefix", args: []string{"--recovery-allow", "2001:2::", one}, want: `--recovery-allow "2001:2::": expected an IPv4 or IPv6 CIDR prefix, e.g. 198.18.0.0/15 or 2001:2::/48`},
		{name: "recovery address a VIP", cmd: []string{"run", "--tun", "hf0", "--recovery-addr", "198.18.0.10", one},
			want: "--recovery-addr 198.18.0.10: is the VIP of service tcp:198.18.0.10:80 (a recovery address is the director's own, routed to it, never a VIP or a real)"},
		{name: "recovery address a real", cmd: []string{"run", "--tun", "hf0", "--recovery-addr", "198.18.10.11", one},
			want: "--recovery-addr 198.18.10.11: is a real of service tcp:198.18.0.10:80 (a recovery address is the director's own, routed to it, never a VIP or a real)"},
		{name: "adoption", args: []string{"--adoption", "maybe", one}, want: `--adoption "maybe": expected auto, on or off`},
		{name: "director id", args: []string{"--director-id", "9", one}, want: "--director-id 9: expected 1..8"},
		{name: "recovery ports upside down", args: []string{"--recovery-ports", "80-10", one}, want: `--recovery-ports "80-10": expected LO-HI with 1 <= LO <= HI <= 65535, e.g. 10000-16499`},
		{name: "recovery ports over a service port", args: []string{"--recovery-ports", "1-100", one},
			want: "--recovery-ports 1-100: holds port 80 of service tcp:198.18.0.10:80; a recovered connection from it reads as the service's reply on the reals' side: choose a range clear of the services' ports"},
		{name: "recovery ports over a real's port", args: []string{"--recovery-ports", "8000-8100", "--service", "tcp:198.18.0.10:80", "--real", "198.18.10.11:8080"},
			want: "--recovery-ports 8000-8100: holds port 8080 of service tcp:198.18.0.10:80; a recovered connection from it reads as the service's reply on the reals' side: choose a range clear of the services' ports"},
		{name: "recovery window scale", args: []string{"--recovery-wscale", "15", one}, want: "--recovery-wscale 15: expected 0..14"},
		{name: "recovery MSS", args: []string{"--recovery-mss", "100", one}, want: "--recovery-mss 100: expected 536..65495 (or unset for the TUN MTU - 40 on IPv4, - 60 on IPv6)"},
		{name: "recovery allow with host bits", args: []string{"--recovery-allow", "198.18.0.1/15", one}, want: `--recovery-allow "198.18.0.1/15": host bits set; expected a network prefix (198.18.0.0/15?)`},
		{name: "park bytes", args: []string{"--park-bytes", "10", one}, want: `--park-bytes "10": expected a size of at least 64KiB, e.g. 64MiB`},
		{name: "cookie bits", args: []string{"--ts-cookie-bits", "99", one}, want: "--ts-cookie-bits 99: expected 0..9 (0: no timestamp cookies)"},
		// Services on the command line.
		{name: "unknown check", args: []string{one, "--check", "udp"}, want: `--check: invalid check "udp": expected none, tcp, http:/PATH or http:/PATH=STATUS`},
		{name: "a TCP check of a UDP service", args: []string{"--service", "udp:198.18.0.10:53", "--real", "198.18.10.11:53", "--check", "tcp"},
			want: "--check: service udp:198.18.0.10:53: the check tcp probes its reals over TCP; a UDP service takes no check (none)"},
		{name: "weight out of range", args: []string{one, "--real", "198.18.10.12:80*70000"}, want: `--real: invalid real "198.18.10.12:80*70000": weight 70000: expected a number 0..65535`},
		{name: "real is the VIP", args: []string{"--service", "tcp:198.18.0.10:80", "--real", "198.18.0.10:80"}, want: "--real: real 198.18.0.10:80 is the service's own VIP:PORT (--service tcp:198.18.0.10:80)"},
		// IPv6 services (refused before nat runs: these need no IPv6 packet path).
		{name: "IPv4 real of an IPv6 service", args: []string{"--service", tcp6, "--real", rs6, "--real", rs1_80},
			want: "--real: real 198.18.10.11:80 and VIP 2001:2::10 are of different IP versions (--service tcp:[2001:2::10]:80)"},
		{name: "IPv6 real without brackets", args: []string{"--service", tcp6, "--real", "2001:2:0:20::11:80"},
			want: `--real: invalid real "2001:2:0:20::11:80": put IPv6 addresses in brackets: [2001:2:0:20::11]:80`},
		{name: "IPv6 VIP without brackets", args: []string{"--service", "tcp:2001:2::10:80", "--real", rs6},
			want: `--service: invalid service "tcp:2001:2::10:80": put IPv6 addresses in brackets: [2001:2::10]:80`},
		{name: "IPv6 link-local VIP", args: []string{"--service", "tcp:[fe80::10]:80", "--real", rs6},
			want: `--service: invalid service "tcp:[fe80::10]:80": address fe80::10 is link-local`},
		{name: "IPv6 multicast VIP", args: []string{"--service", "udp:[ff05::1:3]:547", "--real", "[2001:2:0:20::11]:547"},
			want: `--service: invalid service "udp:[ff05::1:3]:547": address ff05::1:3 is multicast`},
		{name: "IPv6 link-local real", args: []string{"--service", tcp6, "--real", "[fe80::11]:80"},
			want: `--real: invalid real "[fe80::11]:80": address fe80::11 is link-local`},
		{name: "IPv6 real with a zone", args: []string{"--service", tcp6, "--real", "[fe80::11%eth1]:80"},
			want: `--real: invalid real "[fe80::11%eth1]:80": address fe80::11%eth1 has a zone, which is not supported`},
		{name: "IPv6 multicast real in a config", config: `{"services":[{"service":"tcp:[2001:2::10]:80","reals":["[ff02::1]:80"]}]}`,
			want: `config {config}: services[0].reals[0]: invalid real "[ff02::1]:80": address ff02::1 is multicast`},
		// BGP.
		{name: "BGP flag without BGP", args: []string{"--bgp-med", "20", one}, want: "--bgp-med needs BGP on: --bgp-local-as N and --bgp-peer or --bgp-real-peer ADDR"},
		{name: "BGP without its AS and id", args: []string{"--bgp-peer", "198.18.1.1", one}, want: "BGP needs --bgp-local-as, --bgp-peer-as, --bgp-router-id"},
		{name: "BGP without a peer", args: []string{"--bgp-local-as", "65001", "--bgp-peer-as", "65000", "--bgp-router-id", "198.18.2.2", one},
			want: "BGP needs --bgp-peer or --bgp-real-peer"},
		{name: "iBGP", args: []string{"--bgp-local-as", "65000", "--bgp-peer-as", "65000", "--bgp-router-id", "198.18.2.2", "--bgp-peer", "198.18.1.1", one},
			want: "--bgp-peer-as 65000 is --bgp-local-as: holdfast speaks eBGP only (the routers' AS must differ)"},
		{name: "AS 0", args: []string{"--bgp-local-as", "0", "--bgp-peer-as", "65000", "--bgp-router-id", "198.18.2.2", "--bgp-peer", "198.18.1.1", one},
			want: "--bgp-local-as 0: expected an AS number 1..4294967295"},
		{name: "IPv6 router id", args: []string{"--bgp-local-as", "65001", "--bgp-peer-as", "65000", "--bgp-router-id", "2001:2::1", "--bgp-peer", "198.18.1.1", one},
			want: `--bgp-router-id "2001:2::1": expected a non-zero IPv4 address (the BGP identifier), e.g. 198.18.2.2`},
		{name: "peer on both sides", args: []string{"--bgp-local-as", "65001", "--bgp-peer-as", "65000", "--bgp-router-id", "198.18.2.2", "--bgp-peer", "198.18.1.1", "--bgp-real-peer", "198.18.1.1", one},
			want: "--bgp-real-peer 198.18.1.1: already given as --bgp-peer (a router is a client-side or a real-side peer, once)"},
		{name: "peer not an address", args: []string{"--bgp-local-as", "65001", "--bgp-peer-as", "65000", "--bgp-router-id", "198.18.2.2", "--bgp-peer", "router1", one},
			want: `--bgp-peer "router1": expected a router's unicast address, IPv4 or IPv6 (no brackets), e.g. 198.18.1.1 or 2001:2:0:1::1`},
		{name: "IPv6 peer in brackets", args: []string{"--bgp-local-as", "65001", "--bgp-peer-as", "65000", "--bgp-router-id", "198.18.2.2", "--bgp-peer", "[2001:2:0:11::1]", one},
			want: `--bgp-peer "[2001:2:0:11::1]": expected a router's unicast address, IPv4 or IPv6 (no brackets), e.g. 198.18.1.1 or 2001:2:0:1::1`},
		{name: "IPv6 announce with IPv4 real-side peers only", args: []string{"--bgp-local-as", "65001", "--bgp-peer-as", "65000", "--bgp-router-id", "198.18.2.2", "--bgp-real-peer", "198.18.20.1", "--bgp-announce", "0.0.0.0/0", "--bgp-announce", "::/0", one},
			want: "--bgp-announce ::/0 is IPv6 and every --bgp-real-peer is IPv4: it would reach no router (a prefix goes only over sessions of its family); add an IPv6 --bgp-real-peer"},
		{name: "IPv4 announce with IPv6 real-side peers only", args: []string{"--bgp-local-as", "65001", "--bgp-peer-as", "65000", "--bgp-router-id", "198.18.2.2", "--bgp-real-peer", "2001:2:0:20::1", "--bgp-announce", "0.0.0.0/0", one},
			want: "--bgp-announce 0.0.0.0/0 is IPv4 and every --bgp-real-peer is IPv6: it would reach no router (a prefix goes only over sessions of its family); add an IPv4 --bgp-real-peer"},
		{name: "announce with host bits", args: []string{"--bgp-local-as", "65001", "--bgp-peer-as", "65000", "--bgp-router-id", "198.18.2.2", "--bgp-real-peer", "198.18.20.1", "--bgp-announce", "198.18.1.1/24", one},
			want: `--bgp-announce "198.18.1.1/24": host bits set; expected a network prefix (198.18.1.0/24?)`},
		{name: "announce without a real-side peer", args: []string{"--bgp-local-as", "65001", "--bgp-peer-as", "65000", "--bgp-router-id", "198.18.2.2", "--bgp-peer", "198.18.1.1", "--bgp-announce", "0.0.0.0/0", one},
			want: "--bgp-announce needs a --bgp-real-peer: the prefixes go to the real-side routers"},
		{name: "hold time too short", args: []string{"--bgp-local-as", "65001", "--bgp-peer-as", "65000", "--bgp-router-id", "198.18.2.2", "--bgp-peer", "198.18.1.1", "--bgp-hold-time", "2s", one},
			want: "--bgp-hold-time 2s: expected whole seconds, 3s..65535s (RFC 4271)"},
		{name: "keepalive over a third of the hold time", args: []string{"--bgp-local-as", "65001", "--bgp-peer-as", "65000", "--bgp-router-id", "198.18.2.2", "--bgp-peer", "198.18.1.1", "--bgp-keepalive", "4s", one},
			want: "--bgp-keepalive 4s: expected whole seconds, 1s..a third of --bgp-hold-time (3s)"},
		{name: "bfd mode unknown", args: []string{"--bgp-local-as", "65001", "--bgp-peer-as", "65000", "--bgp-router-id", "198.18.2.2", "--bgp-peer", "198.18.1.1", "--bfd", "on", one},
			want: `--bfd "on": expected passive, active or off`},
		{name: "bfd interval too short", args: []string{"--bgp-local-as", "65001", "--bgp-peer-as", "65000", "--bgp-router-id", "198.18.2.2", "--bgp-peer", "198.18.1.1", "--bfd-interval", "1ms", one},
			want: "--bfd-interval 1ms: expected 10ms..10s"},
		{name: "bfd multiplier 0", args: []string{"--bgp-local-as", "65001", "--bgp-peer-as", "65000", "--bgp-router-id", "198.18.2.2", "--bgp-peer", "198.18.1.1", "--bfd-multiplier", "0", one},
			want: "--bfd-multiplier 0: expected 1..255"},
		{name: "bfd timer with bfd off", args: []string{"--bgp-local-as", "65001", "--bgp-peer-as", "65000", "--bgp-router-id", "198.18.2.2", "--bgp-peer", "198.18.1.1", "--bfd", "off", "--bfd-interval", "1s", one},
			want: "--bfd-interval with --bfd off: BFD is off"},
		{name: "bfd without bgp", args: []string{"--bfd", "active", one},
			want: "--bfd needs BGP on: --bgp-local-as N and --bgp-peer or --bgp-real-peer ADDR"},
		// The config file.
		{name: "config missing", cmd: []string{"run", "--tun", "hf0", "--recovery-addr", "198.18.200.1", "--config", filepath.Join(dir, "none.json")},
			want: "--config: open " + filepath.Join(dir, "none.json") + ": no such file or directory"},
		{name: "config empty", config: "", want: "config {config}: line 1: the file ends before the JSON does (expected JSON as in the README)"},
		{name: "config cut short", config: `{"services":[`, want: "config {config}: line 1: the file ends before the JSON does (expected JSON as in the README)"},
		{name: "config not an object", config: `[1]`, want: `config {config}: line 1 col 2: the file: a JSON array, expected an object {"services": [...]} (as in the README)`},
		{name: "config reals not a list", config: `{"services":[{"service":"tcp:198.18.0.10:80","reals":"198.18.10.11:80"}]}`,
			want: "config {config}: line 1 col 71: services.reals: a JSON string, expected a list (as in the README)"},
		{name: "config no services", config: `{"services":[]}`, want: `config {config}: no services; expected {"services":[{"service":"tcp:VIP:PORT","reals":["ADDR:PORT"]}]}`},
		{name: "config unknown field", config: `{"services":[{"service":"tcp:198.18.0.10:80","reals":["198.18.10.11:80"],"bogus":1}]}`,
			want: `config {config}: unknown field "bogus" (expected the fields services, and in each service: service, scheduler, persistence, reals, check)`},
		{name: "config bad real", config: `{"services":[{"service":"tcp:198.18.0.10:80","reals":["x"]}]}`,
			want: `config {config}: services[0].reals[0]: invalid real "x": expected ADDR:PORT[*WEIGHT][,id=N], e.g. 198.18.10.11:80*2`},
		{name: "config service twice", config: `{"services":[{"service":"tcp:198.18.0.10:80","reals":["198.18.10.11:80"]},{"service":"tcp:198.18.0.10:80","reals":["198.18.10.12:80"]}]}`,
			want: "config {config}: services[1]: duplicate service tcp:198.18.0.10:80, already given as services[0]"},
		{name: "config data after the object", config: `{"services":[{"service":"tcp:198.18.0.10:80","reals":["198.18.10.11:80"]}]} {}`,
			want: "config {config}: unexpected data after the top-level object"},
		// The control commands (refused before they dial the director).
		{name: "conns state", cmd: []string{"conns", "--state", "bogus"}, want: `--state "bogus": expected one of ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT, TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, UDP`},
		{name: "conns service", cmd: []string{"conns", "--service", "x"}, want: `--service: invalid service "x": expected PROTO:VIP:PORT with PROTO tcp or udp, e.g. tcp:198.18.0.10:80`},
		{name: "conns real", cmd: []string{"conns", "--real", "y"}, want: `--real "y": expected ADDR:PORT`},
		{name: "conns IPv6 real without brackets", cmd: []string{"conns", "--real", "2001:2:0:20::11:80"}, want: `--real "2001:2:0:20::11:80": put IPv6 addresses in brackets: [2001:2:0:20::11]:80`},
		{name: "real weight IPv6 real without brackets", cmd: []string{"real", "weight", "--service", "tcp:[2001:2::10]:80", "--real", "2001:2:0:20::11:80", "--weight", "1"},
			want: `--real "2001:2:0:20::11:80": put IPv6 addresses in brackets: [2001:2:0:20::11]:80`},
		{name: "stats watch with JSON", cmd: []string{"stats", "--watch", "--json"}, want: "stats: --watch is for the table, not --json"},
		{name: "stats negative interval", cmd: []string{"stats", "--interval", "-1s"}, want: "stats: --interval -1s: expected a positive duration (0 without --watch: no rates)"},
		{name: "real add without flags", cmd: []string{"real", "add"}, want: "real add: --service, --real not set (see 'holdfast real add --help')"},
		{name: "real add bad real", cmd: []string{"real", "add", "--service", "tcp:198.18.0.10:80", "--real", "x"},
			want: `--real: invalid real "x": expected ADDR:PORT[*WEIGHT][,id=N], e.g. 198.18.10.11:80*2`},
		{name: "real weight with a weight in the real", cmd: []string{"real", "weight", "--service", "tcp:198.18.0.10:80", "--real", "198.18.10.11:80*2", "--weight", "1"},
			want: `--real "198.18.10.11:80*2": expected ADDR:PORT (no weight, no id: they are not part of a real's name)`},
		{name: "real remove rehome with an id", cmd: []string{"real", "remove", "--rehome", "198.18.10.11:80,id=3"},
			want: `--rehome "198.18.10.11:80,id=3": expected ADDR:PORT (no weight, no id: they are not part of a real's name)`},
		{name: "real remove bad service", cmd: []string{"real", "remove", "--service", "x", "--real", "198.18.10.11:80"},
			want: `--service: invalid service "x": expected PROTO:VIP:PORT with PROTO tcp or udp, e.g. tcp:198.18.0.10:80`},
		{name: "service list with an argument", cmd: []string{"service", "list", "tcp:198.18.0.10:80"},
			want: `service list: unexpected argument "tcp:198.18.0.10:80" (every setting is a --flag)`},
		{name: "unknown command", cmd: []string{"nosuch"}, want: `unknown command "nosuch" (see 'holdfast --help')`},
		{name: "unknown flag", cmd: []string{"conns", "--bogus"}, want: "conns: unknown flag --bogus (see 'holdfast conns --help')"},
		{name: "no service",
			want: "no service: give --service PROTO:VIP:PORT with --real ADDR:PORT, or --config FILE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args, want := tc.cmd, tc.want
			if args == nil {
				args = append([]string{"run", "--tun", "hf0", "--log-format", "json", "--recovery-addr", "198.18.200.1"}, tc.args...)
			}
			if strings.Contains(tc.want, "{config}") {
				path := filepath.Join(t.TempDir(), "c.json")
				if err := os.WriteFile(path, []byte(tc.config), 0o644); err != nil {
					t.Fatal(err)
				}
				args, want = append(args, "--config", path), strings.ReplaceAll(want, "{config}", path)
			}
			args = slices.Concat(args[:0:0], splitOne(args))
			code, stdout, stderr := holdfast(t, tc.env, args...)
			if code != exitUsage {
				t.Errorf("exit %d, want %d", code, exitUsage)
			}
			if want := "holdfast: " + want + "\n"; stderr != want {
				t.Errorf("stderr\n%q, want\n%q", stderr, want)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing", stdout)
			}
		})
	}
}

// splitOne splits an argument holding several flags (the cases' `one`).
func splitOne(args []string) []string {
	var out []string
	for _, a := range args {
		if strings.HasPrefix(a, "--service=") && strings.Contains(a, " ") {
			out = append(out, strings.Fields(a)...)
			continue
		}
		out = append(out, a)
	}
	return out
}
