package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"holdfast/lab"
)

// The cookie group (issue 13, "Cookie cost on the real's TCP"): what the
// timestamp cookie costs the real's TCP. The director rewrites the low bits
// of the real's TSval and restores the client's TSecr, and the real reads
// that echo for its RTT samples (RTO, the sender's loss recovery) and its
// receive autotuning (tcp_rcv_rtt_measure_ts), so a restore that is off
// shows as throughput lost under loss: one iperf3 TCP stream through
// holdfast on director A, 1 % random loss each way on the client's link,
// downloads (-R, the real sends) and uploads (the real receives), with
// --ts-cookie-bits 4 and 0; and once with cookies on, on a flow that moved
// to director B mid-transfer (A killed, routes moved, B finds the flow by
// its cookie), where every echo B restores has no record and is rounded up
// to its bucket's end.

// Cookie is the cookie group's result.
type Cookie struct {
	Directions []*CookieDirection `json:"directions"`
	// Within is the target: on/off and moved/on within this of 1.
	Within float64 `json:"target_within"`
	Met    *bool   `json:"target_met"`
	// Loss is the nftables rule set in the router namespace for the group.
	Loss string `json:"loss_rule"`
	// LossToClient and LossFromClient add up the rule's counters over every
	// run: what crossed the router's client link, and what it dropped.
	LossToClient   lossCount `json:"loss_to_client"`
	LossFromClient lossCount `json:"loss_from_client"`
	// TCPTimestamps is net.ipv4.tcp_timestamps of the client and rs1.
	TCPTimestamps map[string]string `json:"tcp_timestamps_sysctl"`
	// TimestampsAllRuns: the client's ss -ti showed "ts" on every
	// connection to the VIP in every run that checked.
	TimestampsAllRuns bool    `json:"timestamps_every_run"`
	Seconds           float64 `json:"group_seconds"`
	Method            string  `json:"method"`
	Error             string  `json:"error,omitempty"`
}

// CookieDirection is one direction: cookies on, off, and on a moved flow.
type CookieDirection struct {
	Key         string      `json:"key"` // "download", "upload"
	Name        string      `json:"name"`
	On          *CookieCell `json:"cookie_on"`
	Off         *CookieCell `json:"cookie_off"`
	Moved       *CookieCell `json:"moved_cookie_on"`
	OnOverOff   *float64    `json:"on_over_off"`
	MovedOverOn *float64    `json:"moved_over_on"`
	Met         *bool       `json:"target_met"`
}

// CookieCell is one variant of a direction: its runs and their median.
type CookieCell struct {
	Median *float64     `json:"median_gbit_s"`
	Runs   []*CookieRun `json:"runs"`
}

// CookieRun is one measured run.
type CookieRun struct {
	Run int `json:"run"`
	// Gbps: the bytes that reached the receiver's link (headers
	// included) in the window (ckBefore+ckSettle on, -duration long): for
	// a moved flow, from 1 s after the failover.
	Gbps float64 `json:"gbit_s"`
	// IperfGbps is iperf3's receiver figure for the whole test, the first
	// second omitted (0 when iperf3 did not finish), and Retransmits its
	// sender's count.
	IperfGbps   float64 `json:"iperf3_gbit_s"`
	Retransmits int     `json:"sender_retransmits"`
	// Timestamps: ss -ti on the client showed "ts" on every connection to
	// the VIP (control and data) during the run.
	Timestamps bool      `json:"timestamps"`
	SS         string    `json:"ss_sample,omitempty"` // the data connection's ss -ti line (first run of a cell)
	ToClient   lossCount `json:"loss_to_client"`
	FromClient lossCount `json:"loss_from_client"`
	Moved      *movedRun `json:"moved,omitempty"`
	// IperfKilled: iperf3 had not finished ckGrace after its end (its
	// control connection's close), and was killed; the window was measured.
	IperfKilled string `json:"iperf3_killed,omitempty"`
	Error       string `json:"error,omitempty"`
}

// movedRun is what a moved-flow run adds: when the failover came, what
// director B counted, and the first second after it.
type movedRun struct {
	FailoverAt      float64 `json:"failover_at_s"`        // after iperf3 started
	FirstSecondGbps float64 `json:"first_second_gbit_s"`  // the second right after the failover (not in the figure)
	CookieSteers    int     `json:"b_cookie_steers"`      // misses B steered by cookie
	CookieConfirmed int     `json:"b_cookie_confirmed"`   // of those, confirmed by the real
	ProbeSteers     int     `json:"b_probe_steers"`       // steered by owner probe
	Recovered       int     `json:"b_recovered"`          // recovered (new connection to a real)
	Adopted         int     `json:"b_adopted"`            // adopted from a real's packet
	Misses          int     `json:"b_misses"`             // mid-stream segments with no flow
	Flows           int     `json:"b_flows_after"`        // B's flows at the end
	Drops           string  `json:"b_drops,omitempty"`    // B's non-zero drop counters
	FailedRecovery  int     `json:"b_failed_recoveries"`  // B's failed recoveries
	ClientResets    int     `json:"b_client_resets"`      // RSTs B sent to clients
	StaleFlows      int     `json:"b_stale_flows"`        // flows B found stale
	FoundByCookie   bool    `json:"found_by_cookie_only"` // every connection B picked up came by a confirmed cookie
}

// lossCount is what the loss rule saw and dropped on one direction.
type lossCount struct {
	Packets        uint64 `json:"packets"`
	Bytes          uint64 `json:"bytes"`
	DroppedPackets uint64 `json:"dropped_packets"`
	DroppedBytes   uint64 `json:"dropped_bytes"`
}

func (c *lossCount) add(o lossCount) {
	c.Packets += o.Packets
	c.Bytes += o.Bytes
	c.DroppedPackets += o.DroppedPackets
	c.DroppedBytes += o.DroppedBytes
}

func (c lossCount) sub(o lossCount) lossCount {
	return lossCount{c.Packets - o.Packets, c.Bytes - o.Bytes, c.DroppedPackets - o.DroppedPackets, c.DroppedBytes - o.DroppedBytes}
}

// cookieWithin is the target: within 5 % of each other.
const cookieWithin = 0.05

// Cookie variants, in the order a run starts with (rotating).
const (
	ckOn    = "on"
	ckOff   = "off"
	ckMoved = "moved"
)

var cookieVariants = []string{ckOn, ckOff, ckMoved}

// The loss rule: a table of its own in the router namespace, dropping 1 %
// of what crosses the client link (cl0) each way, with counters of what
// passed and what it dropped. netem is not available everywhere; numgen is
// nftables' own. The router forwards GSO packets (the client's TSO,
// holdfast's TUN offload: about 40-60 KB each), so a drop loses a burst of
// segments; the counters show 1 % of the bytes either way. Making the
// senders' links carry single segments (gso_max_segs 1) was tried: the
// client's upload fell to about 0.25 Gbit/s with or without the cookie, and
// what holdfast writes to its TUN stayed GSO-sized.
const (
	lossTable = "hfbench_loss"
	lossIface = "cl0" // the router's end of the client link (lab.wire)
)

var lossRules = `table ip ` + lossTable + ` {
	chain forward {
		type filter hook forward priority filter; policy accept;
		oifname "` + lossIface + `" counter comment "to_client_seen"
		oifname "` + lossIface + `" numgen random mod 100 < 1 counter drop comment "to_client_dropped"
		iifname "` + lossIface + `" counter comment "from_client_seen"
		iifname "` + lossIface + `" numgen random mod 100 < 1 counter drop comment "from_client_dropped"
	}
}
`

const cookieMethod = "holdfast only, every VIP port to rs1; iperf3 -c VIP -t 3+D+1 -O 1, 1 stream, -R for downloads (rs1 sends); " +
	"1 % random loss each way on the client link (nftables in the router namespace: numgen random mod 100 < 1 drop, " +
	"oifname and iifname cl0, with counters; the router forwards GSO packets, so a drop is a burst of segments, 1 % of the bytes); on: --ts-cookie-bits 4 (the default), off: --ts-cookie-bits 0, holdfast on " +
	"director A. moved: holdfast with cookies on on A and B, 2 s after iperf3 started SIGKILL A and lab.Failover to B " +
	"(routes moved). Every variant: Gbit/s = the bytes that reached the receiver's link (the client's up0 for downloads, " +
	"rs1's eth0 for uploads; headers included) from 3 s to 3+D s after iperf3 started, i.e. from 1 s after the failover " +
	"(iperf3's own figure, for the whole test, is kept per run as iperf3_gbit_s; a moved run's iperf3 may not finish, see " +
	"iperf3_killed). Runs interleaved: for each run, each direction, each variant in turn (the order rotating); the figure " +
	"is the median; ratios are of medians; the target holds when on/off and moved/on are both within 5 % of 1. " +
	"Timestamps: the client's ss -tio 1.5 s into each run shows ts on every connection to the VIP."

// runCookie runs the cookie group. A failure ends the group with its
// error in the result; the rest of the bench goes on.
func (b *bench) runCookie(ctx context.Context) error {
	start := time.Now()
	c := &Cookie{Within: cookieWithin, Loss: strings.Join(strings.Fields(lossRules), " "), Method: cookieMethod,
		TCPTimestamps: map[string]string{}, TimestampsAllRuns: true}
	b.res.Cookie = c
	for _, d := range []struct{ key, name string }{{"download", "download (real -> client, -R)"}, {"upload", "upload (client -> real)"}} {
		c.Directions = append(c.Directions, &CookieDirection{Key: d.key, Name: d.name, On: &CookieCell{}, Off: &CookieCell{}, Moved: &CookieCell{}})
	}
	defer func() {
		c.finish()
		c.Seconds = time.Since(start).Seconds()
	}()
	err := b.cookie(ctx, c)
	if err != nil && ctx.Err() == nil {
		c.Error = err.Error()
		b.progress("cookie group failed: " + err.Error())
		return nil
	}
	return err
}

func (b *bench) cookie(ctx context.Context, c *Cookie) (err error) {
	for _, ns := range []*lab.NS{b.l.Client, b.rs1.NS} {
		v, err := ns.Sysctl("net.ipv4.tcp_timestamps")
		if err != nil {
			return err
		}
		c.TCPTimestamps[ns.Role] = v
	}
	path := filepath.Join(b.tmp, "loss.nft")
	if err := os.WriteFile(path, []byte(lossRules), 0o600); err != nil {
		return err
	}
	if out, err := b.l.Router.Run(ctx, "nft", "-f", path); err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if out, derr := b.l.Router.Run(dctx, "nft", "delete", "table", "ip", lossTable); derr != nil {
			err = errors.Join(err, fmt.Errorf("%w: %s", derr, out))
		}
	}()
	cfg, err := b.holdfastConfig("holdfast-cookie.json", b.throughputServices())
	if err != nil {
		return err
	}
	turn := 0
	for run := 1; run <= b.cfg.runs; run++ {
		for _, d := range c.Directions {
			turn++
			for k := range cookieVariants {
				v := cookieVariants[(k+turn)%len(cookieVariants)]
				b.progress(fmt.Sprintf("cookie: %s, %s, run %d/%d", d.Key, v, run, b.cfg.runs))
				r, err := b.cookieRun(ctx, cfg, d.Key == "download", v)
				if ctx.Err() != nil {
					return ctx.Err()
				}
				r.Run = run
				if err != nil {
					r.Error = err.Error()
					b.progress("cookie: " + d.Key + ", " + v + ": " + err.Error())
				}
				cell := d.cell(v)
				if len(cell.Runs) > 0 {
					r.SS = "" // one sample a cell is enough
				}
				cell.Runs = append(cell.Runs, r)
				c.LossToClient.add(r.ToClient)
				c.LossFromClient.add(r.FromClient)
				if r.Error == "" && !r.Timestamps {
					c.TimestampsAllRuns = false
				}
			}
		}
	}
	return nil
}

func (d *CookieDirection) cell(variant string) *CookieCell {
	switch variant {
	case ckOn:
		return d.On
	case ckOff:
		return d.Off
	default:
		return d.Moved
	}
}

// cookieRun is one run of one variant: it starts the directors it needs,
// measures, and stops them. An error that is the run's own (iperf3 failed)
// comes back in the run with what was measured; one from the lab too.
func (b *bench) cookieRun(ctx context.Context, cfg string, download bool, variant string) (r *CookieRun, err error) {
	r = &CookieRun{}
	bits := "4"
	if variant == ckOff {
		bits = "0"
	}
	args := []string{"--config", cfg, "--ts-cookie-bits", bits}
	if err := b.use(b.dirA); err != nil {
		return r, err
	}
	a, err := b.startHoldfast(ctx, b.dirA, args...)
	if err != nil {
		return r, err
	}
	var bp *lab.Proc
	defer func() {
		if bp != nil {
			b.res.addCounters(fmt.Sprintf("cookie %s %s B", direction(download), variant), b.holdfastStats(context.Background(), b.dirB))
			err = errors.Join(err, stopHoldfast(bp))
		}
		select {
		case <-a.Done(): // killed by the failover
		default:
			b.res.addCounters(fmt.Sprintf("cookie %s %s A", direction(download), variant), b.holdfastStats(context.Background(), b.dirA))
			err = errors.Join(err, stopHoldfast(a))
		}
		err = errors.Join(err, b.use(b.dirA))
	}()
	if variant == ckMoved {
		if bp, err = b.startHoldfast(ctx, b.dirB, args...); err != nil {
			return r, err
		}
	}
	if err := b.checkPath(ctx, b.l.VIPs()...); err != nil {
		return r, err
	}
	loss0, err := b.lossCounters(ctx)
	if err != nil {
		return r, err
	}
	err = b.cookieMeasure(ctx, r, download, variant == ckMoved, a)
	loss1, lerr := b.lossCounters(ctx)
	if lerr != nil {
		return r, errors.Join(err, lerr)
	}
	r.ToClient, r.FromClient = loss1[0].sub(loss0[0]), loss1[1].sub(loss0[1])
	return r, err
}

func direction(download bool) string {
	if download {
		return "download"
	}
	return "upload"
}

// Timing of a run, the same for every variant: iperf3 runs -t
// ckBefore+ckSettle+D+1 s; a moved run fails over ckBefore after iperf3
// started (its slow start and a second through A), and every variant counts
// the bytes that reached the receiver's link in the D seconds from
// ckBefore+ckSettle on (B picking the flow up, and the losses the switch
// itself costs, are not the cookie's steady cost), ending a second before
// the sender stops.
const (
	ckBefore = 2 * time.Second
	ckSettle = time.Second
	// ckGrace is how long after its end iperf3 may take to finish before
	// it is killed: after a failover its control connection may not close
	// (see printCookie's notes).
	ckGrace = 3 * time.Second
)

// cookieMeasure runs one iperf3 stream (-R for a download) through the
// active director, fails over to B mid-transfer if moved, and measures the
// receiver's link in the window.
func (b *bench) cookieMeasure(ctx context.Context, r *CookieRun, download, moved bool, a *lab.Proc) error {
	window := b.cfg.duration.Round(time.Second)
	total := ckBefore + ckSettle + window + time.Second
	args := []string{"-t", strconv.Itoa(int(total / time.Second)), "-O", "1"}
	// The receiver's link: the client's for downloads, rs1's for uploads.
	rx := func() (uint64, error) {
		ls, err := b.l.Client.LinkStats(lab.ClientIface)
		return ls.RxBytes, err
	}
	if download {
		args = append(args, "-R")
	} else {
		rx = func() (uint64, error) {
			ls, err := b.rs1.LinkStats(lab.RealIface)
			return ls.RxBytes, err
		}
	}
	if moved {
		r.Moved = &movedRun{}
	}
	var (
		failAt        time.Duration
		gbps, firstGb float64
	)
	res, runErr := b.cookieIperf(ctx, r, total+ckGrace, func(started time.Time) error {
		at := func(d time.Duration) error {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Until(started.Add(d))):
				return nil
			}
		}
		if err := at(ckBefore); err != nil {
			return err
		}
		var f0 uint64
		if moved {
			failAt = time.Since(started)
			var err error
			if f0, err = rx(); err != nil {
				return err
			}
			err = b.l.Failover(ctx, 1, func() error {
				if err := a.Signal(syscall.SIGKILL); err != nil {
					return err
				}
				<-a.Done()
				// A killed director leaves its admin socket behind.
				os.Remove(lab.AdminSocket(b.dirA)) //nolint:errcheck // gone is fine
				return nil
			})
			if err != nil {
				return fmt.Errorf("failover: %w", err)
			}
			b.active = b.dirB
		}
		if err := at(ckBefore + ckSettle); err != nil {
			return err
		}
		t0 := time.Now()
		c0, err := rx()
		if err != nil {
			return err
		}
		if moved {
			firstGb = 8 * float64(c0-f0) / t0.Sub(started.Add(failAt)).Seconds() / 1e9
		}
		if err := at(ckBefore + ckSettle + window); err != nil {
			return err
		}
		c1, err := rx()
		if err != nil {
			return err
		}
		gbps = 8 * float64(c1-c0) / time.Since(t0).Seconds() / 1e9
		return nil
	}, args...)
	r.Gbps = gbps
	r.IperfGbps = res.End.SumReceived.BitsPerSecond / 1e9
	r.Retransmits = res.End.SumSent.Retransmits
	if m := r.Moved; m != nil {
		m.FailoverAt, m.FirstSecondGbps = failAt.Seconds(), firstGb
		if st, err := lab.ReadStats(ctx, b.dirB); err == nil {
			m.CookieSteers, m.CookieConfirmed, m.ProbeSteers = st.CookieSteers, st.CookieConfirmed, st.ProbeSteers
			m.Recovered, m.Adopted, m.Misses, m.Flows = st.Recovered, st.Adopted, st.Misses, st.Flows
			m.FailedRecovery, m.ClientResets, m.StaleFlows = st.Failed(), st.ClientResets, st.StaleFlows
			var drops []string
			for _, k := range keys(st.Drops) {
				if st.Drops[k] != 0 {
					drops = append(drops, fmt.Sprintf("%s %d", k, st.Drops[k]))
				}
			}
			m.Drops = strings.Join(drops, ", ")
			m.FoundByCookie = st.CookieConfirmed > 0 && st.Found() == st.CookieConfirmed
		} else {
			runErr = errors.Join(runErr, err)
		}
	}
	var killed *iperfKilled
	if errors.As(runErr, &killed) && gbps > 0 {
		// The window is measured; what iperf3 could not finish is a note.
		r.IperfKilled = killed.Error()
		return nil
	}
	return runErr
}

// cookieIperfResult is the part of iperf3's -J output this group reads.
type cookieIperfResult struct {
	Error string `json:"error"`
	End   struct {
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
		SumSent struct {
			Retransmits int `json:"retransmits"`
		} `json:"sum_sent"`
	} `json:"end"`
}

// iperfKilled is an iperf3 client that did not finish in time.
type iperfKilled struct{ after time.Duration }

func (e *iperfKilled) Error() string {
	return fmt.Sprintf("iperf3 did not finish within %v of its start: killed", e.after)
}

// cookieIperf runs one iperf3 test from the client to VIP:iperfPort
// against a one-off server on rs1, as bench.iperf does, and kills it if it
// has not finished after limit. Meanwhile it checks the client's
// connections for timestamps 1.5 s in (ss), and runs during on its own
// goroutine with the time the client started; during's error is returned
// first.
func (b *bench) cookieIperf(ctx context.Context, r *CookieRun, limit time.Duration, during func(started time.Time) error, args ...string) (cookieIperfResult, error) {
	var res cookieIperfResult
	srv, err := b.iperfServer(ctx, ipv4)
	if err != nil {
		return res, err
	}
	defer stopProc(srv, syscall.SIGTERM, 5*time.Second) //nolint:errcheck // a one-off server has usually exited
	cctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	argv := append([]string{"iperf3", "-c", lab.VIP.String(), "-p", strconv.Itoa(iperfPort), "-J", "--connect-timeout", "3000"}, args...)
	started := time.Now()
	tsDone := make(chan struct{})
	go func() {
		defer close(tsDone)
		select {
		case <-cctx.Done():
			return
		case <-time.After(1500 * time.Millisecond):
		}
		r.Timestamps, r.SS = b.clientTimestamps(cctx)
	}()
	duringErr := make(chan error, 1)
	go func() { duringErr <- during(started) }()
	out, runErr := b.l.Client.Run(cctx, argv...)
	<-tsDone
	if err := <-duringErr; err != nil {
		return res, err
	}
	if cctx.Err() != nil && ctx.Err() == nil {
		return res, &iperfKilled{limit}
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return res, errors.Join(runErr, fmt.Errorf("iperf3 output: %w: %.300s", err, out))
	}
	if res.Error != "" {
		return res, fmt.Errorf("iperf3: %s", res.Error)
	}
	return res, runErr
}

var ssTimestamps = regexp.MustCompile(`(^|\s)ts(\s|$)`)

// clientTimestamps reports whether every TCP connection of the client to
// VIP:iperfPort has timestamps (ss -tio lists "ts" among its options: iproute2 shows the options only with -o, the timers), and
// the info line of the busiest one.
func (b *bench) clientTimestamps(ctx context.Context) (bool, string) {
	out, err := b.l.Client.Run(ctx, "ss", "-Htnio", "dst", netip.AddrPortFrom(lab.VIP, iperfPort).String())
	if err != nil {
		return false, ""
	}
	// One socket is a line and its indented info line.
	socks, withTS := 0, 0
	var sample string
	var most uint64
	for line := range strings.Lines(string(out)) {
		if !strings.HasPrefix(line, "\t") && !strings.HasPrefix(line, " ") {
			socks++
			continue
		}
		if ssTimestamps.MatchString(line) {
			withTS++
		}
		if n := ssBytes(line); n >= most {
			most, sample = n, strings.Join(strings.Fields(line), " ")
		}
	}
	return socks > 0 && withTS == socks, sample
}

var ssBytesField = regexp.MustCompile(`bytes_(?:acked|received):(\d+)`)

func ssBytes(line string) uint64 {
	var n uint64
	for _, m := range ssBytesField.FindAllStringSubmatch(line, -1) {
		v, _ := strconv.ParseUint(m[1], 10, 64)
		n += v
	}
	return n
}

// lossCounters reads the loss rule's counters: to the client, from it.
func (b *bench) lossCounters(ctx context.Context) ([2]lossCount, error) {
	var lc [2]lossCount
	out, err := b.l.Router.Run(ctx, "nft", "-j", "list", "table", "ip", lossTable)
	if err != nil {
		return lc, fmt.Errorf("%w: %s", err, out)
	}
	var doc struct {
		Nftables []struct {
			Rule *struct {
				Comment string `json:"comment"`
				Expr    []struct {
					Counter *struct {
						Packets uint64 `json:"packets"`
						Bytes   uint64 `json:"bytes"`
					} `json:"counter"`
				} `json:"expr"`
			} `json:"rule"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return lc, fmt.Errorf("nft -j list table ip %s: %w: %.300s", lossTable, err, out)
	}
	seen := 0
	for _, x := range doc.Nftables {
		if x.Rule == nil {
			continue
		}
		for _, e := range x.Rule.Expr {
			if e.Counter == nil {
				continue
			}
			p, n := e.Counter.Packets, e.Counter.Bytes
			switch x.Rule.Comment {
			case "to_client_seen":
				lc[0].Packets, lc[0].Bytes = p, n
			case "to_client_dropped":
				lc[0].DroppedPackets, lc[0].DroppedBytes = p, n
			case "from_client_seen":
				lc[1].Packets, lc[1].Bytes = p, n
			case "from_client_dropped":
				lc[1].DroppedPackets, lc[1].DroppedBytes = p, n
			default:
				continue
			}
			seen++
		}
	}
	if seen != 4 {
		return lc, fmt.Errorf("nft table %s: %d of 4 counters found", lossTable, seen)
	}
	return lc, nil
}

// finish computes the medians, the ratios and the target.
func (c *Cookie) finish() {
	met, known := true, true
	for _, d := range c.Directions {
		for _, cell := range []*CookieCell{d.On, d.Off, d.Moved} {
			var v []float64
			for _, r := range cell.Runs {
				if r.Error == "" {
					v = append(v, r.Gbps)
				}
			}
			cell.Median = medianPtr(v)
		}
		d.OnOverOff, d.MovedOverOn = ratioOf(d.On.Median, d.Off.Median), ratioOf(d.Moved.Median, d.On.Median)
		if d.OnOverOff == nil || d.MovedOverOn == nil {
			known = false
			continue
		}
		ok := math.Abs(*d.OnOverOff-1) <= cookieWithin && math.Abs(*d.MovedOverOn-1) <= cookieWithin
		d.Met = &ok
		met = met && ok
	}
	if known || !met {
		c.Met = &met
	}
}

func ratioOf(a, b *float64) *float64 {
	if a == nil || b == nil || *b == 0 {
		return nil
	}
	v := *a / *b
	return &v
}

// printCookie is the group's part of the table.
func printCookie(w io.Writer, c *Cookie) {
	fmt.Fprintf(w, "\ntimestamp cookie on the real's TCP (holdfast, iperf3 1 stream, 1%% random loss each way on the client link; %.0f s)\n", c.Seconds)
	if c.Error != "" {
		fmt.Fprintf(w, "  failed: %s\n", firstLine(c.Error))
	}
	fmt.Fprintf(w, "%-32s %-7s %10s %10s %8s %10s %9s  %s\n", "", "", "cookie on", "cookie off", "on/off", "moved (on)", "moved/on", "target")
	for _, d := range c.Directions {
		fmt.Fprintf(w, "%-32s %-7s %10s %10s %8s %10s %9s  within %.0f%%%s\n", d.Name, "Gbit/s",
			gbpsText(d.On.Median), gbpsText(d.Off.Median), ratioText(d.OnOverOff), gbpsText(d.Moved.Median), ratioText(d.MovedOverOn),
			100*c.Within, metText(d.Met))
	}
	for _, d := range c.Directions {
		fmt.Fprintf(w, "  %-8s runs: on %s; off %s; moved %s\n", d.Key, runsText(d.On), runsText(d.Off), runsText(d.Moved))
	}
	for _, d := range c.Directions {
		fmt.Fprintf(w, "  %-8s iperf3's own figure (Gbit/s, sender retransmits): on %s; off %s\n", d.Key, iperfText(d.On), iperfText(d.Off))
	}
	ts := "yes"
	if !c.TimestampsAllRuns {
		ts = "NO"
	}
	fmt.Fprintf(w, "  timestamps on every connection of every run (client ss -ti): %s; tcp_timestamps client %s, rs1 %s\n",
		ts, c.TCPTimestamps["client"], c.TCPTimestamps["rs1"])
	fmt.Fprintf(w, "  loss rule dropped %s to the client, %s from it\n", lossText(c.LossToClient), lossText(c.LossFromClient))
	for _, d := range c.Directions {
		for _, r := range d.Moved.Runs {
			if m := r.Moved; m != nil {
				fmt.Fprintf(w, "  moved %s run %d: failover at %.2f s, first second after %.2f Gbit/s; B: %d misses, %d cookie steers (%d confirmed), %d probe, %d recovered, %d adopted, %d stale%s\n",
					d.Key, r.Run, m.FailoverAt, m.FirstSecondGbps, m.Misses, m.CookieSteers, m.CookieConfirmed, m.ProbeSteers, m.Recovered, m.Adopted, m.StaleFlows, dropsText(m.Drops))
			}
		}
	}
	for _, d := range c.Directions {
		for _, v := range cookieVariants {
			for _, r := range d.cell(v).Runs {
				if r.Error != "" {
					fmt.Fprintf(w, "  %s %s run %d: %s\n", d.Key, v, r.Run, firstLine(r.Error))
				} else if r.IperfKilled != "" {
					fmt.Fprintf(w, "  %s %s run %d: %s (the window was measured)\n", d.Key, v, r.Run, r.IperfKilled)
				}
			}
		}
	}
}

func gbpsText(v *float64) string {
	if v == nil {
		return "failed"
	}
	return fmt.Sprintf("%.2f", *v)
}

func runsText(c *CookieCell) string {
	var s []string
	for _, r := range c.Runs {
		if r.Error != "" {
			s = append(s, "failed")
			continue
		}
		s = append(s, fmt.Sprintf("%.2f", r.Gbps))
	}
	return strings.Join(s, ", ")
}

func iperfText(c *CookieCell) string {
	var s []string
	for _, r := range c.Runs {
		if r.Error != "" {
			s = append(s, "failed")
			continue
		}
		s = append(s, fmt.Sprintf("%.2f (%d)", r.IperfGbps, r.Retransmits))
	}
	return strings.Join(s, ", ")
}

func lossText(l lossCount) string {
	if l.Packets == 0 {
		return "nothing (no packets seen)"
	}
	// The "seen" counter comes before the drop rule: it counts the
	// dropped packets too.
	return fmt.Sprintf("%d of %d packets (%.2f%%; %.2f%% of bytes)", l.DroppedPackets, l.Packets,
		100*float64(l.DroppedPackets)/float64(l.Packets), 100*float64(l.DroppedBytes)/float64(max(1, l.Bytes)))
}

func dropsText(s string) string {
	if s == "" {
		return ""
	}
	return "; drops " + s
}
