package main

import (
	"strings"
	"time"

	"holdfast/balancer"
	"holdfast/bfd"
	"holdfast/bgp"
	"holdfast/daemon"
	"holdfast/nat"

	"github.com/urfave/cli/v2"
)

// Every flag of every subcommand, in one place, with its category and its
// HOLDFAST_* environment variable.

const envPrefix = "HOLDFAST_"

func env(name string) []string { return []string{envPrefix + name} }

const (
	catService = "Service"
	catDevice  = "Device and routes"
	catTable   = "Flow table"
	catRecover = "Recovery"
	catChecks  = "Health checks"
	catBGP     = "BGP"
	catAdmin   = "Admin API and metrics"
	catLog     = "Logging"
)

// categoryOrder is the order of the option groups in the help and the man
// page (help.go): what a director serves first, then what it needs in the
// order of setting one up; uncategorized options (a subcommand's own) come
// before all of them.
var categoryOrder = []string{"", catService, catDevice, catTable, catRecover, catChecks, catBGP, catAdmin, catLog}

var (
	tunFlag = &cli.StringFlag{
		Name: "tun", Value: "hf0", Category: catDevice, EnvVars: env("TUN"),
		Usage: "name of the TUN device to create or attach to",
	}
	setupRoutesFlag = &cli.BoolFlag{
		Name: "setup-routes", Category: catDevice, EnvVars: env("SETUP_ROUTES"),
		Usage: "route the VIPs and the real-server side into the TUN (IPv6 too when a VIP or recovery address is IPv6), set its MTU and sysctls; undone on exit (needs --real-iface)",
	}
	realIfaceFlag = &cli.StringFlag{
		Name: "real-iface", Category: catDevice, EnvVars: env("REAL_IFACE"),
		Usage: "interface facing the real servers (packets arriving on it are policy-routed into the TUN)",
	}
	routeTableFlag = &cli.IntFlag{
		Name: "route-table", Value: 100, Category: catDevice, EnvVars: env("ROUTE_TABLE"),
		Usage: "policy routing table used by --setup-routes",
	}
	tunOffloadFlag = &cli.BoolFlag{
		Name: "tun-offload", Value: true, Category: catDevice, EnvVars: env("TUN_OFFLOAD"),
		Usage: "open the TUN with a virtio-net header: TCP segmentation and checksum offload (falls back to a plain TUN where unsupported)",
	}
	tunQueuesFlag = &cli.IntFlag{
		Name: "tun-queues", Value: 1, Category: catDevice, EnvVars: env("TUN_QUEUES"),
		Usage: "TUN queues, each with its own packet thread (IFF_MULTI_QUEUE; with --tun-offload only)",
	}
	packetNiceFlag = &cli.IntFlag{
		Name: "packet-nice", Value: -10, Category: catDevice, EnvVars: env("PACKET_NICE"),
		Usage: "nice value of the packet threads, -20..19 (0: leave it): they should not wait behind ordinary processes, as the kernel's own forwarding never does; needs CAP_SYS_NICE, else logged and left",
	}
	fastPathFlag = &cli.StringFlag{
		Name: "fast-path", Value: "off", Category: catDevice, EnvVars: env("FAST_PATH"),
		Usage: "kernel fast path for established flows: off (the TUN path alone), tc (a tc eBPF program on the director's links; fail at start if it cannot load or attach), auto (tc where possible, else off, logged) or xdp (not built)",
	}
	tunMTUFlag = &cli.IntFlag{
		Name: "tun-mtu", Category: catDevice, EnvVars: env("TUN_MTU"),
		Usage: "TUN MTU set by --setup-routes (0 = the smallest MTU of the other links)",
	}

	configFlag = &cli.PathFlag{
		Name: "config", Category: catService, EnvVars: env("CONFIG"),
		Usage: "JSON file with several services: {\"services\": [{\"service\": .., \"scheduler\": .., \"persistence\": .., \"check\": .., \"reals\": [..]}]} (instead of the per-service flags; reread on SIGHUP)",
	}

	timeoutTCPFlag = &cli.DurationFlag{
		Name: "timeout-tcp", Value: 15 * time.Minute, Category: catTable, EnvVars: env("TIMEOUT_TCP"),
		Usage: "idle timeout of an ESTABLISHED TCP flow",
	}
	timeoutTCPFinFlag = &cli.DurationFlag{
		Name: "timeout-tcpfin", Value: 2 * time.Minute, Category: catTable, EnvVars: env("TIMEOUT_TCPFIN"),
		Usage: "idle timeout of a TCP flow after a FIN (FIN_WAIT, TIME_WAIT)",
	}
	timeoutUDPFlag = &cli.DurationFlag{
		Name: "timeout-udp", Value: 5 * time.Minute, Category: catTable, EnvVars: env("TIMEOUT_UDP"),
		Usage: "idle timeout of a UDP flow",
	}
	maxFlowsFlag = &cli.IntFlag{
		Name: "max-flows", Value: 1_000_000, Category: catTable, EnvVars: env("MAX_FLOWS"),
		Usage: "most flows held at once; new flows beyond it are dropped and counted",
	}

	logLevelFlag = &cli.StringFlag{
		Name: "log-level", Value: "info", Category: catLog, EnvVars: env("LOG_LEVEL"),
		Usage: "debug, info, warn or error",
	}
	logFormatFlag = &cli.StringFlag{
		Name: "log-format", Category: catLog, EnvVars: env("LOG_FORMAT"),
		Usage: "json or console (default: console on a terminal, json otherwise)",
	}
)

var (
	recoveryFlag = &cli.StringFlag{
		Name: "recovery", Value: "on", Category: catRecover, EnvVars: env("RECOVERY"),
		Usage: "on: splice mid-stream connections with no flow into a new connection to a real; off: schedule them like new flows (a plain NAT director without state sync)",
	}
	recoveryAddrFlag = &cli.StringSliceFlag{
		Name: "recovery-addr", Category: catRecover, EnvVars: env("RECOVERY_ADDR"),
		Usage: "address recovery connections come from, IPv4 or IPv6 (repeatable; with recovery on, one of each IP version the services use; shared by the directors of a pair, routed to the active one, never on-link for the reals)",
	}
	adoptionFlag = &cli.StringFlag{
		Name: "adoption", Value: "auto", Category: catRecover, EnvVars: env("ADOPTION"),
		Usage: "auto, on or off: adopt a real's packet that has no flow (the real proves it holds the connection; plain NAT, no recovery); auto follows --recovery, so that --recovery=off stays a plain NAT director; on with --recovery=off for a director behind ECMP that sees only the reals' replies",
	}
	recoveryPortsFlag = &cli.StringFlag{
		Name: "recovery-ports", Category: catRecover, EnvVars: env("RECOVERY_PORTS"),
		Usage: "local port range LO-HI of recovery connections (default: derived from --director-id)",
	}
	directorIDFlag = &cli.IntFlag{
		Name: "director-id", Value: 1, Category: catRecover, EnvVars: env("DIRECTOR_ID"),
		Usage: "this director's number among those sharing its recovery address, 1..8: picks a recovery port range disjoint from theirs (6500 ports from 10000 + 6500 * (N-1))",
	}
	recoveryWScaleFlag = &cli.IntFlag{
		Name: "recovery-wscale", Value: 7, Category: catRecover, EnvVars: env("RECOVERY_WSCALE"),
		Usage: "window scale advertised in recovery SYNs, 0..14 (7 is what Linux clients usually use)",
	}
	recoveryMSSFlag = &cli.IntFlag{
		Name: "recovery-mss", Category: catRecover, EnvVars: env("RECOVERY_MSS"), DefaultText: "TUN MTU - 40 on IPv4, - 60 on IPv6",
		Usage: "MSS advertised in recovery SYNs",
	}
	recoveryTimeoutFlag = &cli.DurationFlag{
		Name: "recovery-timeout", Value: 3 * time.Second, Category: catRecover, EnvVars: env("RECOVERY_TIMEOUT"),
		Usage: "time a recovery handshake may take before the next real is tried (3 at most)",
	}
	recoveryRateFlag = &cli.IntFlag{
		Name: "recovery-rate", Value: 20000, Category: catRecover, EnvVars: env("RECOVERY_RATE"),
		Usage: "recoveries started per second at most (token bucket)",
	}
	recoveryMaxInflightFlag = &cli.IntFlag{
		Name: "recovery-max-inflight", Value: 4096, Category: catRecover, EnvVars: env("RECOVERY_MAX_INFLIGHT"),
		Usage: "recoveries in flight at once at most",
	}
	recoveryAllowFlag = &cli.StringSliceFlag{
		Name: "recovery-allow", Category: catRecover, EnvVars: env("RECOVERY_ALLOW"),
		Usage: "client prefix (CIDR, IPv4 or IPv6) allowed to trigger recovery (repeatable; default any)",
	}
	recoveryPrefixLen4Flag = &cli.IntFlag{
		Name: "recovery-prefix-len4", Value: nat.DefaultPrefixLen4, Category: catRecover, EnvVars: env("RECOVERY_PREFIX_LEN4"),
		Usage: "bits of an IPv4 client's address that make its budget prefix (the per-prefix recovery caps), 1..32",
	}
	recoveryPrefixLen6Flag = &cli.IntFlag{
		Name: "recovery-prefix-len6", Value: nat.DefaultPrefixLen6, Category: catRecover, EnvVars: env("RECOVERY_PREFIX_LEN6"),
		Usage: "bits of an IPv6 client's address that make its budget prefix, 1..128",
	}
	recoveryPrefixInflightFlag = &cli.IntFlag{
		Name: "recovery-prefix-inflight", Value: nat.DefaultPrefixInflight, Category: catRecover, EnvVars: env("RECOVERY_PREFIX_INFLIGHT"),
		Usage: "recoveries in flight at once per client prefix at most",
	}
	recoveryPrefixFlowsFlag = &cli.IntFlag{
		Name: "recovery-prefix-flows", Value: nat.DefaultPrefixFlows, Category: catRecover, EnvVars: env("RECOVERY_PREFIX_FLOWS"),
		Usage: "recovered flows alive (and recoveries in flight) per client prefix at most",
	}
	timeoutRecoveredUnconfirmedFlag = &cli.DurationFlag{
		Name: "timeout-recovered-unconfirmed", Value: nat.DefaultUnconfirmedTimeout, Category: catRecover, EnvVars: env("TIMEOUT_RECOVERED_UNCONFIRMED"),
		Usage: "idle timeout of a recovered flow until its client acknowledges server data (a forged trigger's source never does); refreshed by the client's segments only",
	}
	tsCookieBitsFlag = &cli.IntFlag{
		Name: "ts-cookie-bits", Value: nat.DefaultCookieBits, Category: catRecover, EnvVars: env("TS_COOKIE_BITS"),
		Usage: "bits of the server's TCP timestamp that carry its real's cookie id, 0..9 (0: off): 2^K-1 reals a service get one, and any director finds the real of a connection from the client's echo",
	}
	parkBytesFlag = &cli.StringFlag{
		Name: "park-bytes", Value: "64MiB", Category: catRecover, EnvVars: env("PARK_BYTES"),
		Usage: "bytes of client segments parked while their recovery is in flight, all flows together (suffixes KiB, MiB, GiB)",
	}
)

var (
	adminSocketFlag = &cli.StringFlag{
		Name: "admin-socket", Category: catAdmin, EnvVars: env("ADMIN_SOCKET"),
		Usage: "unix socket file of the admin API (0600, owned by the running user); default: the abstract socket @holdfast/<tun> of this network namespace, root and the running user only",
	}
	metricsAddrFlag = &cli.StringFlag{
		Name: "metrics-addr", Category: catAdmin, EnvVars: env("METRICS_ADDR"),
		Usage: "serve Prometheus metrics on ADDR:PORT at /metrics (default off)",
	}
	jsonFlag = &cli.BoolFlag{Name: "json", Usage: "print JSON"}

	pprofAddrFlag = &cli.StringFlag{
		Name: "pprof-addr", Category: catAdmin, EnvVars: env("PPROF_ADDR"),
		Usage: "serve Go's pprof profiles on ADDR:PORT at /debug/pprof/ (default off; keep it on a local address)",
	}

	checkIntervalFlag = &cli.DurationFlag{
		Name: "check-interval", Value: 2 * time.Second, Category: catChecks, EnvVars: env("CHECK_INTERVAL"),
		Usage: "time between two checks of a real (every service's --check)",
	}
	checkTimeoutFlag = &cli.DurationFlag{
		Name: "check-timeout", Value: 2 * time.Second, Category: catChecks, EnvVars: env("CHECK_TIMEOUT"),
		Usage: "time one check may take (at most --check-interval)",
	}
	checkRiseFlag = &cli.IntFlag{
		Name: "check-rise", Value: 2, Category: catChecks, EnvVars: env("CHECK_RISE"),
		Usage: "consecutive successful checks that mark a down real up",
	}
	checkFallFlag = &cli.IntFlag{
		Name: "check-fall", Value: 3, Category: catChecks, EnvVars: env("CHECK_FALL"),
		Usage: "consecutive failed checks that mark an up real down",
	}
)

// BGP: the embedded speaker (bgp.go).
var (
	bgpLocalASFlag = &cli.UintFlag{
		Name: "bgp-local-as", Category: catBGP, EnvVars: env("BGP_LOCAL_AS"), DefaultText: "none: no BGP",
		Usage: "this director's AS number; setting it (with --bgp-peer or --bgp-real-peer) turns BGP on",
	}
	bgpPeerASFlag = &cli.UintFlag{
		Name: "bgp-peer-as", Category: catBGP, EnvVars: env("BGP_PEER_AS"), DefaultText: "none",
		Usage: "the routers' AS number (eBGP: not --bgp-local-as)",
	}
	bgpRouterIDFlag = &cli.StringFlag{
		Name: "bgp-router-id", Category: catBGP, EnvVars: env("BGP_ROUTER_ID"),
		Usage: "BGP identifier, an IPv4 address unique among the routers' peers (usually the director's own uplink address)",
	}
	bgpPeerFlag = &cli.StringSliceFlag{
		Name: "bgp-peer", Category: catBGP, EnvVars: env("BGP_PEER"),
		Usage: "client-side router ADDR (repeatable): sent the VIPs while their services have a real up",
	}
	bgpRealPeerFlag = &cli.StringSliceFlag{
		Name: "bgp-real-peer", Category: catBGP, EnvVars: env("BGP_REAL_PEER"),
		Usage: "real-side router ADDR (repeatable): sent the recovery addresses and the --bgp-announce prefixes",
	}
	bgpAnnounceFlag = &cli.StringSliceFlag{
		Name: "bgp-announce", Category: catBGP, EnvVars: env("BGP_ANNOUNCE"),
		Usage: "prefix sent to the real-side routers (repeatable), e.g. 0.0.0.0/0 or the client prefixes, so the reals' replies come back through a director",
	}
	bgpMEDFlag = &cli.UintFlag{
		Name: "bgp-med", Category: catBGP, EnvVars: env("BGP_MED"),
		Usage: "MED of everything announced (a pair: the backup announces a higher one)",
	}
	bgpHoldFlag = &cli.DurationFlag{
		Name: "bgp-hold-time", Value: bgp.DefaultHoldTime, Category: catBGP, EnvVars: env("BGP_HOLD_TIME"),
		Usage: "hold time proposed to the peers (3s..65535s; the routers notice a silent director after it)",
	}
	bgpKeepaliveFlag = &cli.DurationFlag{
		Name: "bgp-keepalive", Value: bgp.DefaultKeepalive, Category: catBGP, EnvVars: env("BGP_KEEPALIVE"),
		Usage: "keepalive interval (at most a third of the hold time)",
	}
	bgpPasswordFlag = &cli.StringFlag{
		Name: "bgp-password", Category: catBGP, EnvVars: env("BGP_PASSWORD"),
		Usage: "TCP-MD5 password of every session (RFC 2385; prefer the environment variable, the command line is visible to every user)",
	}
	bgpDrainFlag = &cli.DurationFlag{
		Name: "bgp-drain", Value: 5 * time.Second, Category: catBGP, EnvVars: env("BGP_DRAIN"),
		Usage: "on SIGTERM, time to keep forwarding after everything is withdrawn, while the routers move the traffic away",
	}
	bfdFlag = &cli.StringFlag{
		Name: "bfd", Value: "passive", Category: catBGP, EnvVars: env("BFD"),
		Usage: "passive, active or off: BFD (RFC 5880, single hop) with the BGP peers, so that a router notices a dead director in --bfd-interval x --bfd-multiplier rather than the hold time; passive answers the routers configured for it (BIRD bfd on, FRR neighbor ... bfd) and sends nothing to the others",
	}
	bfdIntervalFlag = &cli.DurationFlag{
		Name: "bfd-interval", Value: bfd.DefaultInterval, Category: catBGP, EnvVars: env("BFD_INTERVAL"),
		Usage: "BFD transmit and receive interval once a session is up (10ms..10s)",
	}
	bfdMultiplierFlag = &cli.UintFlag{
		Name: "bfd-multiplier", Value: bfd.DefaultMultiplier, Category: catBGP, EnvVars: env("BFD_MULTIPLIER"),
		Usage: "BFD detect multiplier: the router declares the director dead after this many intervals without a packet (1..255)",
	}
)

// Names of the per-service flags.
const (
	serviceFlagName     = "service"
	schedulerFlagName   = "scheduler"
	realFlagName        = "real"
	persistenceFlagName = "persistence"
	checkFlagName       = "check"
)

// serviceFlags returns the five per-service flags sharing a new
// serviceArgs (services.go), which records them in argument order.
func serviceFlags() []cli.Flag {
	sa := &serviceArgs{env: map[string]string{}}
	mk := func(name, def, usage string) cli.Flag {
		return &serviceFlag{sa: sa, GenericFlag: &cli.GenericFlag{
			Name: name, Category: catService, EnvVars: env(strings.ToUpper(name)),
			Value: &serviceValue{sa: sa, name: name}, DefaultText: def, Usage: usage,
		}}
	}
	return []cli.Flag{
		mk(serviceFlagName, "", "virtual service PROTO:VIP:PORT, PROTO tcp or udp, an IPv6 VIP in brackets (tcp:[2001:2::10]:80) (repeatable: each --service owns the --scheduler, --real, --persistence and --check that follow it, until the next --service; HOLDFAST_* variables can describe one service only)"),
		mk(schedulerFlagName, balancer.DefaultScheduler, "scheduler of its --service: rr, wrr, sh, dh, lc, mh (Maglev: the same choice on every director; mh:addr hashes the client's address only, not its port)"),
		mk(realFlagName, "", "real server ADDR:PORT[*WEIGHT][,id=N] of its --service, of the VIP's IP version ([ADDR]:PORT for IPv6) (repeatable; weight 1 by default, 0 = no new flows; N its timestamp cookie id, default derived from the address)"),
		mk(persistenceFlagName, "", "keep a client address on its real this long after its last flow (as ipvsadm -p), e.g. 10m; per --service"),
		mk(checkFlagName, "none", "health check of its --service's reals: none, tcp, http:/PATH or http:/PATH=STATUS (config files: \"check\" per service; --check-interval and the other check-* flags are for every service)"),
	}
}

// runFlags returns the flags of `holdfast run`; the per-service ones
// (services.go) are new at every call, as they record what one parse saw.
func runFlags() []cli.Flag {
	return append(serviceFlags(), []cli.Flag{
		configFlag,
		tunFlag, setupRoutesFlag, realIfaceFlag, routeTableFlag, tunMTUFlag, tunOffloadFlag, tunQueuesFlag, packetNiceFlag, fastPathFlag,
		timeoutTCPFlag, timeoutTCPFinFlag, timeoutUDPFlag, maxFlowsFlag,
		recoveryFlag, adoptionFlag, directorIDFlag, recoveryAddrFlag, recoveryPortsFlag, recoveryAllowFlag,
		recoveryRateFlag, recoveryMaxInflightFlag,
		recoveryPrefixLen4Flag, recoveryPrefixLen6Flag, recoveryPrefixInflightFlag, recoveryPrefixFlowsFlag,
		parkBytesFlag, recoveryTimeoutFlag, recoveryWScaleFlag, recoveryMSSFlag,
		timeoutRecoveredUnconfirmedFlag, tsCookieBitsFlag,
		checkIntervalFlag, checkTimeoutFlag, checkRiseFlag, checkFallFlag,
		bgpLocalASFlag, bgpPeerASFlag, bgpRouterIDFlag, bgpPeerFlag, bgpRealPeerFlag, bgpAnnounceFlag, bgpMEDFlag,
		bgpHoldFlag, bgpKeepaliveFlag, bgpPasswordFlag, bgpDrainFlag,
		bfdFlag, bfdIntervalFlag, bfdMultiplierFlag,
		adminSocketFlag, metricsAddrFlag, pprofAddrFlag,
		logLevelFlag, logFormatFlag,
	}...)
}

// parseFastPath is --fast-path's value as the daemon's mode.
func parseFastPath(c *cli.Context) (daemon.FastPathMode, error) {
	switch v := daemon.FastPathMode(c.String(fastPathFlag.Name)); v {
	case daemon.FastPathOff, daemon.FastPathAuto, daemon.FastPathTC:
		return v, nil
	case daemon.FastPathXDP:
		return "", usagef("--%s xdp: %v", fastPathFlag.Name, strings.TrimPrefix(daemon.ErrXDPNotBuilt.Error(), "xdp: "))
	default:
		return "", usagef("--%s %q: expected auto, off, tc or xdp", fastPathFlag.Name, string(v))
	}
}
