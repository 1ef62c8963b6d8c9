package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"holdfast/lab"
)

// TestPathMTU: with the router-director links at MTU 1400 while client and
// reals use 1500, a 1 MiB download and a 1 MiB upload through the VIP both
// complete intact. Linux leaves tcp_mtu_probing off, so without working
// path-MTU discovery both would stall on their first full-sized segment.
//
// Upload: the client's 1500-byte packets meet the narrow link at the router,
// which answers "fragmentation needed" (no director involved). Download: the
// real's 1500-byte packets meet the director's TUN, whose MTU --setup-routes
// sets to the narrowest link (DESIGN.md section 4), and the director's kernel
// answers the real. Both ends must have learned a path MTU of at most 1400,
// which the test checks so that it cannot pass on a path that never
// constrained them.
func TestPathMTU(t *testing.T) {
	const n = 1 << 20
	l := startLab(t, lab.Options{Reals: 3, DirectorLinkMTU: 1400})
	d := l.Directors[0]
	args := append([]string{"--service", "tcp:" + vipHTTP.String(), "--scheduler", "rr"}, realFlags(l, lab.DefaultHTTPPort)...)
	StartDirector(t, d.NS, directorArgs(d, args...)...)
	c := newVIPClient(t, l.Client, false, netip.Addr{})

	t.Run("download", func(t *testing.T) {
		resp, err := c.Get(httpURL(vipHTTP, "/bytes?n="+strconv.Itoa(n)))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		h := sha256.New()
		got, err := io.Copy(h, resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK || got != n || hex.EncodeToString(h.Sum(nil)) != lab.PatternSHA256(n) {
			t.Fatalf("GET /bytes?n=%d: status %d, %d bytes, err %v, sha256 match %v",
				n, resp.StatusCode, got, err, hex.EncodeToString(h.Sum(nil)) == lab.PatternSHA256(n))
		}
		real := l.Reals[0]
		for _, r := range l.Reals {
			if r.Label == resp.Header.Get(lab.RealHeader) {
				real = r
			}
		}
		checkPMTU(t, real.NS, lab.ClientAddr.String(), 1400)
	})

	t.Run("upload", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodPost, httpURL(vipHTTP, "/upload"), lab.Pattern(n))
		if err != nil {
			t.Fatal(err)
		}
		req.ContentLength = n
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var up lab.UploadResult
		if err := json.NewDecoder(resp.Body).Decode(&up); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("POST /upload: status %d, decoding the answer: %v", resp.StatusCode, err)
		}
		if up.Bytes != n || up.SHA256 != lab.PatternSHA256(n) {
			t.Errorf("%s received %d bytes with sha256 %s, want %d bytes with %s", up.Real, up.Bytes, up.SHA256, n, lab.PatternSHA256(n))
		}
		checkPMTU(t, l.Client, lab.VIP.String(), 1400)
	})
}

var routeMTU = regexp.MustCompile(`\bmtu ([0-9]+)\b`)

// checkPMTU requires ns to hold a learned path MTU of at most max for dst
// (`ip route get` shows the exception as "cache expires ... mtu N").
func checkPMTU(t *testing.T, ns *lab.NS, dst string, max int) {
	t.Helper()
	out, err := ns.IP("route", "get", dst)
	if err != nil {
		t.Fatal(err)
	}
	m := routeMTU.FindStringSubmatch(out)
	if m == nil {
		t.Errorf("%s: no path MTU learned for %s: %q", ns.Role, dst, out)
		return
	}
	t.Logf("%s: ip route get %s: %s", ns.Role, dst, strings.Join(strings.Fields(out), " "))
	if mtu, _ := strconv.Atoi(m[1]); mtu > max {
		t.Errorf("%s: path MTU to %s is %d, want at most %d: %q", ns.Role, dst, mtu, max, out)
	}
}
