package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"holdfast/lab"
)

// logLines returns the JSON log lines of a director's stderr whose
// message starts with prefix.
func logLines(t *testing.T, stderr, prefix string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(stderr, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) != nil {
			continue
		}
		if msg, _ := m["message"].(string); strings.HasPrefix(msg, prefix) {
			out = append(out, m)
		}
	}
	return out
}

// num reads a JSON number field (0 if absent).
func num(m map[string]any, key string) uint64 {
	f, _ := m[key].(float64)
	return uint64(f)
}

// stopDirector sends SIGTERM to p and waits for its exit (status 0), so
// that its exit lines can be read; StartDirector's cleanup then leaves it.
func stopDirector(t *testing.T, p *lab.Proc) {
	t.Helper()
	killed.Store(p, true)
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := p.Wait(ctx)
	if err != nil || st.ExitCode() != 0 {
		t.Fatalf("director after SIGTERM: %v %v\n%s", st, err, tail(p.Stderr(), 40))
	}
}

// TestFastPathTransfer: a director with --fast-path tc carries a 256 MiB
// download and a 64 MiB upload over one keep-alive connection, both intact
// (SHA-256 of the lab's pattern), and the tc program carries most of their
// packets: its forward counter is at least 9 times what went through the
// TUN (the handshake, the FINs, the segments before the offload). The
// director says at start that the fast path is tc and on which links, and
// at stop what the program carried.
func TestFastPathTransfer(t *testing.T) {
	const down, up = 256 << 20, 64 << 20
	l := startLab(t, lab.Options{Reals: 3})
	d := l.Directors[0]
	args := append([]string{"--fast-path", "tc", "--service", "tcp:" + vipHTTP.String(), "--scheduler", "rr"}, realFlags(l, lab.DefaultHTTPPort)...)
	p := StartDirector(t, d.NS, directorArgs(d, args...)...)
	if ls := logLines(t, p.Stderr(), "fast path: tc on "); len(ls) != 1 || !strings.Contains(ls[0]["message"].(string), d.RSIface) {
		t.Fatalf("start lines %v: want one \"fast path: tc on ...\" naming %s\n%s", ls, d.RSIface, tail(p.Stderr(), 20))
	}

	c := newVIPClient(t, l.Client, true, netip.Addr{})
	resp, err := c.Get(httpURL(vipHTTP, "/bytes?n="+strconv.Itoa(down)))
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	got, err := io.Copy(h, resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || got != down || hex.EncodeToString(h.Sum(nil)) != lab.PatternSHA256(down) {
		t.Fatalf("download: status %d, %d of %d bytes, err %v, sha256 match %v", resp.StatusCode, got, down, err,
			hex.EncodeToString(h.Sum(nil)) == lab.PatternSHA256(down))
	}
	resp, err = c.Post(httpURL(vipHTTP, "/upload"), "application/octet-stream", lab.Pattern(up))
	if err != nil {
		t.Fatal(err)
	}
	var res lab.UploadResult
	err = json.NewDecoder(resp.Body).Decode(&res)
	resp.Body.Close()
	if err != nil || res.Bytes != up || res.SHA256 != lab.PatternSHA256(up) {
		t.Fatalf("upload: %+v, %v: want %d bytes, the pattern's digest", res, err, up)
	}
	if n := c.dials.Load(); n != 1 {
		t.Fatalf("%d connections, want the one keep-alive connection", n)
	}
	c.CloseIdleConnections()

	stopDirector(t, p)
	stderr := p.Stderr()
	fl := logLines(t, stderr, "fast path stopped")
	sl := logLines(t, stderr, "stopped")
	if len(fl) != 1 || len(sl) == 0 {
		t.Fatalf("exit lines: fast path %v, counters %d\n%s", fl, len(sl), tail(stderr, 20))
	}
	fast := num(fl[0], "fast_forward") + num(fl[0], "fast_forward_neigh")
	var tunPkts uint64
	pt, _ := sl[len(sl)-1]["packets_total"].(map[string]any)
	for _, v := range pt {
		f, _ := v.(float64)
		tunPkts += uint64(f)
	}
	t.Logf("fast path carried %d packets, the TUN path read %d (%.1f%% carried); program counters %v", fast, tunPkts,
		100*float64(fast)/float64(fast+tunPkts), fl[0])
	if fast < 9*tunPkts || fast == 0 {
		t.Errorf("the fast path carried %d packets and the TUN path read %d: want the fast path at least 90%%", fast, tunPkts)
	}
}

// TestFastPathFlags: --fast-path xdp is refused as not built and a mode
// that is none as a bad value, each with one line and exit 2, before
// anything starts.
func TestFastPathFlags(t *testing.T) {
	requireRoot(t)
	for _, c := range []struct{ mode, want string }{
		{"xdp", "holdfast: --fast-path xdp: not built"},
		{"ebpf", `holdfast: --fast-path "ebpf": expected auto, off, tc or xdp`},
	} {
		cmd := exec.Command(holdfastBinary(t), "run", "--tun", "hffp0", "--fast-path", c.mode,
			"--service", "tcp:198.18.100.1:80", "--real", "198.18.10.11:80")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		lines := strings.Split(strings.TrimRight(stderr.String(), "\n"), "\n")
		if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 2 || len(lines) != 1 || !strings.HasPrefix(lines[0], c.want) {
			t.Errorf("--fast-path %s: %v, stderr %q: want exit 2 and one line %q...", c.mode, err, stderr.String(), c.want)
		}
	}
}
