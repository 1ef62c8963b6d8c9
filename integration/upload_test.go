// Slow-upload failover (issue 13, "Slow uploads"): 16 keep-alive
// connections each make a small request, then send a 1 MiB POST /upload
// body slowly; the active director dies while every one is in the middle of
// its body, and each sends the rest through the other director. An upload
// survives when it is answered 200 with the byte count and SHA-256 of what
// was sent, by the real that answered the connection's first request.
//
// The default suite runs the anchor, kernel NAT with conntrackd state sync
// (lab.StartConntrackSync), and asserts only what must hold for it: the
// run completes and the backup had the entries before the failover. The
// holdfast variants, whose acceptance (16 of 16) the director does not meet
// yet, are in steering_pending_test.go behind the build tag `steering`:
//
//	go test -count=1 -tags steering -run 'TestUploadFailover|TestIdleFailoverOriginalReal' -v ./integration/

package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"holdfast/lab"
)

const (
	uploadConns = 16
	uploadSize  = 1 << 20
	uploadChunk = 64 << 10
	// uploadPace is the pause after each chunk: load pacing (a slow
	// client), not a wait for an event. 1 MiB then takes about 1.6 s.
	uploadPace = 100 * time.Millisecond
	// The failover begins once every connection has sent uploadMark bytes
	// of its body; none sends more than uploadHold before it has begun, so
	// every one is in the middle of its body when the director dies however
	// long the wait for the slowest takes.
	uploadMark = 4 * uploadChunk
	uploadHold = 12 * uploadChunk
	// uploadDeadline bounds one upload, failover included: a connection
	// still waiting then is lost (timeout).
	uploadDeadline = 20 * time.Second
)

// uploadRig is one side of the comparison: a lab whose two directors carry
// the VIP, A active, and its failover (kill A, move the routes to B).
type uploadRig struct {
	name     string
	l        *lab.Lab
	vip      netip.AddrPort // the uploads go there; zero means vipHTTP
	failover func(t *testing.T)
	// beforeFailover, if set, runs once every connection made its first
	// request, before the uploads start (the anchor checks its sync there).
	beforeFailover func(t *testing.T, conns []*httpConn)
}

// clientTimestamps is the setup of a variant: the client's TCP timestamps
// on (Linux's default) or off (as Windows clients have them).
func clientTimestamps(t *testing.T, on bool) func(*lab.Lab) {
	return func(l *lab.Lab) {
		if on {
			return
		}
		if err := l.Client.SetSysctl("net.ipv4.tcp_timestamps", "0"); err != nil {
			t.Fatal(err)
		}
	}
}

func timestampsName(on bool) string {
	if on {
		return "timestamps on"
	}
	return "timestamps off"
}

// uploadOutcome is what one connection saw.
type uploadOutcome struct {
	owner  string // the real that answered its first request
	status int    // of the upload's response, 0 if none
	res    lab.UploadResult
	err    error
}

var uploadSum = lab.PatternSHA256(uploadSize)

func (o uploadOutcome) intact() bool {
	return o.err == nil && (o.status == http.StatusOK || o.status == http.StatusCreated) &&
		o.res.Bytes == uploadSize && o.res.SHA256 == uploadSum && o.res.Real == o.owner
}

// why says how an upload was lost.
func (o uploadOutcome) why() string {
	switch {
	case o.intact():
		return ""
	case o.status != 0 && o.status != http.StatusOK && o.status != http.StatusCreated:
		// Answered before the write failed, or after it was all sent.
		return "status " + strconv.Itoa(o.status)
	case errors.Is(o.err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.Is(o.err, syscall.ECONNRESET) || errors.Is(o.err, syscall.EPIPE) || errors.Is(o.err, io.EOF) || errors.Is(o.err, io.ErrUnexpectedEOF):
		return "reset"
	case o.err != nil:
		return "error"
	case o.res.Real != o.owner:
		return "other real"
	}
	return "corrupt"
}

// uploadReport is one variant's figures.
type uploadReport struct {
	name      string
	outcomes  []uploadOutcome
	sentMin   int64            // least body bytes a connection had sent when the failover began
	sentMax   int64            // most
	stored    map[string]int64 // uploads each real read to the end during the run
	answered  map[string]int64 // intact uploads the client got from each real
	failover  time.Duration    // the failover call (kill, flip, and the anchor's commit)
	took      time.Duration    // from the first upload byte to the last answer
	firstLost error
}

func (r uploadReport) lost() int {
	n := 0
	for _, o := range r.outcomes {
		if !o.intact() {
			n++
		}
	}
	return n
}

func (r uploadReport) String() string {
	why := map[string]int{}
	for _, o := range r.outcomes {
		if w := o.why(); w != "" {
			why[w]++
		}
	}
	var stored, answered int64
	for _, n := range r.stored {
		stored += n
	}
	for _, n := range r.answered {
		answered += n
	}
	s := fmt.Sprintf("%s: lost %d of %d %v; bodies %d..%d KiB sent at the failover; stored on the reals %d (%v), answered intact %d; failover %v, uploads %v",
		r.name, r.lost(), len(r.outcomes), why, r.sentMin>>10, r.sentMax>>10, stored, r.stored, answered,
		r.failover.Round(time.Millisecond), r.took.Round(time.Millisecond))
	if r.firstLost != nil {
		s += fmt.Sprintf("; first loss: %v", r.firstLost)
	}
	return s
}

// slowUploads runs the slow-upload failover on rig and returns its figures.
func slowUploads(t *testing.T, rig *uploadRig) uploadReport {
	t.Helper()
	vip := rig.vip
	if !vip.IsValid() {
		vip = vipHTTP
	}
	conns := dialVIP(t, rig.l.Client, vip, uploadConns)
	owner := owners(t, conns)
	if rig.beforeFailover != nil {
		rig.beforeFailover(t, conns)
	}
	storedBefore := map[string]int64{}
	for _, r := range rig.l.Reals {
		storedBefore[r.Label] = r.Stats.Uploads.Load()
	}

	var (
		sent       = make([]atomic.Int64, len(conns))
		marked     sync.WaitGroup // every connection has sent uploadMark bytes (or failed before)
		failedOver = make(chan struct{})
		outcomes   = make([]uploadOutcome, len(conns))
		done       sync.WaitGroup
		early      atomic.Int64 // connections that failed before the failover
	)
	marked.Add(len(conns))
	start := time.Now()
	for i, h := range conns {
		done.Go(func() {
			o := uploadOutcome{owner: owner[i]}
			// Load pacing: the connections' chunks are spread evenly over
			// the pace period, so that at any moment of the failover some
			// connection is sending (started together, all would send in
			// the same instant and pause together).
			time.Sleep(time.Duration(i) * uploadPace / time.Duration(len(conns)))
			o.status, o.res, o.err = h.slowUpload(&sent[i], marked.Done, failedOver)
			if o.err != nil {
				select {
				case <-failedOver:
				default:
					early.Add(1)
				}
			}
			outcomes[i] = o
		})
	}
	marked.Wait()
	if n := early.Load(); n > 0 {
		close(failedOver)
		done.Wait()
		for _, o := range outcomes {
			if o.err != nil {
				t.Fatalf("%s: %d uploads failed before the failover; first: %v", rig.name, n, o.err)
			}
		}
	}
	r := uploadReport{name: rig.name, sentMin: uploadSize, stored: map[string]int64{}, answered: map[string]int64{}}
	for i := range sent {
		n := sent[i].Load()
		r.sentMin, r.sentMax = min(r.sentMin, n), max(r.sentMax, n)
	}
	if r.sentMin < uploadMark || r.sentMax >= uploadSize {
		t.Fatalf("%s: at the failover the connections had sent %d..%d body bytes, want each at least %d and less than %d", rig.name, r.sentMin, r.sentMax, uploadMark, uploadSize)
	}
	fstart := time.Now()
	rig.failover(t)
	r.failover = time.Since(fstart)
	close(failedOver)
	done.Wait()
	r.took = time.Since(start)

	r.outcomes = outcomes
	for _, o := range outcomes {
		if o.intact() {
			r.answered[o.res.Real]++
		} else if r.firstLost == nil {
			r.firstLost = fmt.Errorf("%s (status %d, %d bytes, real %q, first request answered by %s): %v", o.why(), o.status, o.res.Bytes, o.res.Real, o.owner, o.err)
		}
	}
	for _, rl := range rig.l.Reals {
		if n := rl.Stats.Uploads.Load() - storedBefore[rl.Label]; n != 0 {
			r.stored[rl.Label] = n
		}
	}
	return r
}

// slowUpload sends POST /upload with a body of uploadSize bytes of
// lab.Pattern in uploadChunk pieces paced by uploadPace, counting what it
// wrote in sent. It calls marked once it has written uploadMark body bytes
// (or failed before), and writes no more than uploadHold before hold is
// closed. It returns the response's status and decoded body.
func (h *httpConn) slowUpload(sent *atomic.Int64, marked func(), hold <-chan struct{}) (int, lab.UploadResult, error) {
	var res lab.UploadResult
	once := sync.OnceFunc(marked)
	defer once()
	h.c.SetDeadline(time.Now().Add(uploadDeadline))
	req, _ := http.NewRequest("POST", "http://"+h.vip.String()+"/upload", nil)
	head := fmt.Sprintf("POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", h.vip, uploadSize)
	if _, err := io.WriteString(h.c, head); err != nil {
		return 0, res, fmt.Errorf("%s: write head: %w", h.c.LocalAddr(), err)
	}
	body := lab.Pattern(uploadSize)
	buf := make([]byte, uploadChunk)
	var n int64
	for n < uploadSize {
		if n >= uploadHold {
			<-hold
		}
		k, err := io.ReadFull(body, buf[:min(int64(len(buf)), uploadSize-n)])
		if err != nil {
			return 0, res, err // Pattern never fails
		}
		if _, err := h.c.Write(buf[:k]); err != nil {
			// The real may have answered (400) before it stopped reading.
			st, _, _ := h.readUploadResponse(req)
			return st, res, fmt.Errorf("%s: write body at %d: %w", h.c.LocalAddr(), n, err)
		}
		n += int64(k)
		sent.Store(n)
		if n >= uploadMark {
			once()
		}
		if n < uploadSize {
			time.Sleep(uploadPace) // load pacing: a slow client
		}
	}
	return h.readUploadResponse(req)
}

func (h *httpConn) readUploadResponse(req *http.Request) (int, lab.UploadResult, error) {
	var res lab.UploadResult
	resp, err := http.ReadResponse(h.br, req)
	if err != nil {
		return 0, res, fmt.Errorf("%s: read response: %w", h.c.LocalAddr(), err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, res, fmt.Errorf("%s: read response body: %w", h.c.LocalAddr(), err)
	}
	if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusCreated {
		if err := json.Unmarshal(data, &res); err != nil {
			return resp.StatusCode, res, fmt.Errorf("%s: upload answer %q: %w", h.c.LocalAddr(), data, err)
		}
	}
	return resp.StatusCode, res, nil
}

// --- the anchor: kernel NAT with conntrackd state sync ---

// anchorPair is kernel NAT on both directors (a real chosen per connection)
// with conntrackd in FTFW mode between them.
type anchorPair struct {
	l    *lab.Lab
	sync *lab.ConntrackSync
}

func newAnchorPair(t *testing.T, setup func(*lab.Lab)) *anchorPair {
	t.Helper()
	for _, bin := range []string{"iptables", "conntrack", "conntrackd"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("the kernel NAT + conntrackd anchor needs %s (.ci/run installs it: apt-get install iptables conntrack conntrackd)", bin)
		}
	}
	l := NewLab(t, lab.Options{Directors: 2, Reals: 3})
	if err := l.ServeBackends(); err != nil {
		t.Fatal(err)
	}
	if setup != nil {
		setup(l)
	}
	for _, d := range l.Directors {
		kernelNATDirector(t, l, d)
	}
	s, err := l.StartConntrackSync()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i := range l.Directors {
				p := s.Proc(i)
				t.Logf("%s (pid %d):\n%s", p.Name, p.PID(), tail(p.Stdout()+p.Stderr(), 30))
			}
		}
	})
	return &anchorPair{l: l, sync: s}
}

// clientPorts are the client's ports of conns.
func clientPorts(conns []*httpConn) []uint16 {
	ports := make([]uint16, len(conns))
	for i, h := range conns {
		ports[i] = netip.MustParseAddrPort(h.c.LocalAddr().String()).Port()
	}
	return ports
}

// vipEntries picks, from conntrack entry lines, those of connections to
// vipHTTP and returns them by client port.
func vipEntries(lines []string) map[uint16]string {
	out := map[uint16]string{}
	for _, ln := range lines {
		var dst, sport, dport string
		for _, f := range strings.Fields(ln) {
			// The first of each is the original direction's.
			if v, ok := strings.CutPrefix(f, "dst="); ok && dst == "" {
				dst = v
			} else if v, ok := strings.CutPrefix(f, "sport="); ok && sport == "" {
				sport = v
			} else if v, ok := strings.CutPrefix(f, "dport="); ok && dport == "" {
				dport = v
			}
		}
		if dst != lab.VIP.String() || dport != strconv.Itoa(lab.DefaultHTTPPort) {
			continue
		}
		if p, err := strconv.ParseUint(sport, 10, 16); err == nil {
			out[uint16(p)] = ln
		}
	}
	return out
}

func missing(have map[uint16]string, ports []uint16) []uint16 {
	var out []uint16
	for _, p := range ports {
		if _, ok := have[p]; !ok {
			out = append(out, p)
		}
	}
	return out
}

// waitSynced waits until B's conntrackd holds every connection of conns in
// its external cache (what it would commit). It polls: conntrackd tells no
// one when a peer's update arrived, and the lab can only ask it for its
// cache; every 20 ms, for at most 10 s.
func (a *anchorPair) waitSynced(t *testing.T, conns []*httpConn) {
	t.Helper()
	ports := clientPorts(conns)
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		lines, err := a.sync.ExternalCache(ctx, 1)
		cancel()
		if err != nil {
			t.Fatalf("B's external cache: %v", err)
		}
		m := missing(vipEntries(lines), ports)
		if len(m) == 0 {
			t.Logf("B's conntrackd holds all %d connections in its external cache before the failover", len(ports))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("B's conntrackd external cache lacks %d of %d connections after 10 s (client ports %v); it holds:\n%s",
				len(m), len(ports), m, strings.Join(lines, "\n"))
		}
		time.Sleep(20 * time.Millisecond) // poll interval: conntrackd announces nothing when entries arrive
	}
}

// failover is the kill-and-flip: A dies (its conntrackd is killed, its
// links go down: its kernel table is gone with it), the routes move to B,
// and B commits its external cache into its kernel table, as keepalived's
// primary-backup.sh does when B becomes the primary.
func (a *anchorPair) failover(t *testing.T) {
	t.Helper()
	A := a.l.Directors[0]
	p := a.sync.Proc(0)
	if err := p.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL A's conntrackd: %v", err)
	}
	for _, ifname := range []string{A.UplinkIface, A.RSIface, lab.SyncIface} {
		if _, err := A.IP("link", "set", ifname, "down"); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.l.Flip(1); err != nil {
		t.Fatal(err)
	}
	flipped := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.sync.Commit(ctx, 1); err != nil {
		t.Fatalf("B commits its external cache: %v", err)
	}
	t.Logf("B committed its external cache %v after the routes moved to it", time.Since(flipped).Round(time.Millisecond))
	if _, err := p.Wait(ctx); err != nil {
		t.Fatalf("A's conntrackd did not die: %v", err)
	}
}

func (a *anchorPair) rig() *uploadRig {
	var ports []uint16
	return &uploadRig{
		name: "kernel NAT + conntrackd",
		l:    a.l,
		beforeFailover: func(t *testing.T, conns []*httpConn) {
			ports = clientPorts(conns)
			a.waitSynced(t, conns)
		},
		failover: func(t *testing.T) {
			a.failover(t)
			// What the commit put in B's kernel table, for the log.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			lines, err := a.l.Directors[1].ConntrackTable(ctx)
			if err != nil {
				t.Fatalf("conntrack -L in B: %v", err)
			}
			t.Logf("B's kernel table after the commit: %d of %d connections", len(ports)-len(missing(vipEntries(lines), ports)), len(ports))
		},
	}
}

// TestUploadFailover is the slow-upload failover through the anchor, with
// client timestamps on and off. It asserts that the run completes and that
// the sync reached the backup before the failover; the losses are logged
// (the issue measured 7 of 16).
func TestUploadFailover(t *testing.T) {
	for _, ts := range []bool{true, false} {
		t.Run("kernelNAT+conntrackd/"+timestampsName(ts), func(t *testing.T) {
			a := newAnchorPair(t, clientTimestamps(t, ts))
			r := slowUploads(t, a.rig())
			t.Logf("slow uploads, %s, client %s: %v", r.name, timestampsName(ts), r)
		})
	}
}

// kernelNATDirector makes d a kernel NAT director for the lab's HTTP
// service: DNAT spread per connection over the reals, and a blackhole for
// the VIPs, since (as setupKernelNAT says) a segment conntrack finds
// INVALID is not translated, and must not go back to the router.
func kernelNATDirector(t *testing.T, l *lab.Lab, d *lab.Director) {
	t.Helper()
	var reals []netip.AddrPort
	for _, r := range l.Reals {
		reals = append(reals, netip.AddrPortFrom(r.Addr, lab.DefaultHTTPPort))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err := d.KernelNATPerConnection(ctx, "tcp", lab.DefaultHTTPPort, reals)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.IP("route", "add", "blackhole", lab.VIPPrefix.String()); err != nil {
		t.Fatal(err)
	}
}
