// The acceptance of issue 15 (IPv6), measured with real peers: each test
// runs its IPv4 twin first in the same run, through the same kind of lab
// (dual-stack) and director (serving tcp:VIP:80 and tcp:[VIP6]:80 at
// once), so that "the IPv4 results unchanged" is measured next to the IPv6
// ones.

package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"holdfast/lab"
)

// startFamilyDirector starts director A of l with both families' services
// (familyServices) and extra flags.
func startFamilyDirector(t *testing.T, l *lab.Lab, extra ...string) *lab.Director {
	t.Helper()
	d := l.Directors[0]
	StartDirector(t, d.NS, directorArgs(d, append(familyServices(l), extra...)...)...)
	return d
}

// TestRoundRobinFamilies: 600 new-connection GETs to the family's VIP,
// rr over three reals: exactly 200 each, 0 failures, 600 connections.
func TestRoundRobinFamilies(t *testing.T) {
	for _, f := range bothFamilies {
		t.Run(f.String(), func(t *testing.T) {
			l := dualStackLab(t, lab.Options{Reals: 3})
			startFamilyDirector(t, l)
			c := newVIPClient(t, l.Client, false, netip.Addr{})
			got := countReals(t, c, httpURL(f.vip(), "/"), 600, 8)
			t.Logf("%v: 600 GETs to %v: %v", f, f.vip(), got)
			if want := map[string]int{"rs1": 200, "rs2": 200, "rs3": 200}; !maps.Equal(got, want) {
				t.Errorf("requests per real %v, want %v", got, want)
			}
			if n := c.dials.Load(); n != 600 {
				t.Errorf("client dialed %d connections, want 600", n)
			}
		})
	}
}

// TestRealClientsFamilies: ping of the family's VIP answered 3 of 3 (the
// director answers echo requests to a VIP itself) and curl gets a real's
// answer.
func TestRealClientsFamilies(t *testing.T) {
	for _, f := range bothFamilies {
		t.Run(f.String(), func(t *testing.T) {
			l := dualStackLab(t, lab.Options{Reals: 3})
			startFamilyDirector(t, l)
			flag := "-4"
			if f.ipv6 {
				flag = "-6"
			}
			out, err := runIn(l.Client, 15*time.Second, "ping", flag, "-c", "3", "-W", "1", f.vip().Addr().String())
			t.Logf("ping %s -c 3 %v: %s", flag, f.vip().Addr(), lineWith(out, "packets transmitted"))
			if err != nil || !strings.Contains(out, "3 packets transmitted, 3 received") {
				t.Errorf("ping %s -c 3 -W 1 %s: %v\n%s", flag, f.vip().Addr(), err, out)
			}
			url := httpURL(f.vip(), "/")
			out, err = runIn(l.Client, 15*time.Second, "curl", "-sS", "-g", "--max-time", "10", "-D", "-", "-o", "/dev/null",
				"-w", "status=%{http_code} remote=%{remote_ip}\n", url)
			if err != nil || !strings.Contains(out, "status=200") || !strings.Contains(out, lab.RealHeader+": rs") ||
				!strings.Contains(out, "remote="+f.vip().Addr().String()) {
				t.Errorf("curl %s: %v\n%s", url, err, out)
			}
		})
	}
}

// lineWith is the first line of out that contains s, or "".
func lineWith(out, s string) string {
	for _, ln := range strings.Split(out, "\n") {
		if strings.Contains(ln, s) {
			return ln
		}
	}
	return ""
}

// TestPathMTUFamilies: three 1 MiB downloads and three 1 MiB uploads
// through the family's VIP arrive intact (SHA-256), with the client link at
// 1500 and a 1400-byte link on the way to the reals:
//
//   - "real link": the real-server segment itself is at 1400 (the reals'
//     and the director's ports);
//   - "router hop": the reals sit at 1500 behind two routers joined by a
//     1400-byte link that neither endpoint sits on. The client's full-sized
//     segments, rewritten for the real, draw the near router's "too big"
//     (ICMP fragmentation needed, ICMPv6 Packet Too Big) about a
//     client-to-real packet, sent to the client through the director: the
//     NAT must translate it (the director's icmp_errors_translated_total
//     moves) and the client must have learned a path MTU of at most 1400
//     for the VIP. Linux leaves tcp_mtu_probing off, so without it the
//     uploads would stall.
func TestPathMTUFamilies(t *testing.T) {
	const n = 1 << 20
	for _, topo := range []struct {
		name string
		opts lab.Options
		hop  bool
	}{
		{"real link 1400", lab.Options{Reals: 3, RealLinkMTU: 1400}, false},
		{"router hop 1400", lab.Options{Reals: 3, RealHopMTU: 1400}, true},
	} {
		for _, f := range bothFamilies {
			t.Run(strings.ReplaceAll(topo.name, " ", "_")+"/"+f.String(), func(t *testing.T) {
				l := dualStackLab(t, topo.opts)
				d := startFamilyDirector(t, l)
				c := newVIPClient(t, l.Client, false, netip.Addr{})
				want := lab.PatternSHA256(n)
				// Uploads first: a real that has learned a path MTU to the
				// client (in a download) advertises an MSS that fits it, and
				// the client would then never send a segment too big.
				var down, up []string
				for i := range 3 {
					real, err := upload(c, httpURL(f.vip(), "/upload"), n, want)
					if err != nil {
						t.Fatalf("upload %d: %v", i+1, err)
					}
					up = append(up, real)
				}
				for i := range 3 {
					real, err := download(c, httpURL(f.vip(), "/bytes?n="+strconv.Itoa(n)), n, want)
					if err != nil {
						t.Fatalf("download %d: %v", i+1, err)
					}
					down = append(down, real)
				}
				st := directorCounters(t, d)
				t.Logf("%s, %v: 3 uploads of 1 MiB intact to %v, 3 downloads of 1 MiB intact from %v; ICMP errors translated by the director: %d",
					topo.name, f, up, down, st.ICMPTranslated)
				if topo.hop {
					if st.ICMPTranslated == 0 {
						t.Errorf("the director translated no ICMP error: the near router's too-big about the client's packets did not go through the NAT")
					}
					checkPMTU(t, l.Client, f.vip().Addr().String(), 1400)
				}
			})
		}
	}
}

// download GETs url on a new connection and requires n bytes with SHA-256
// sum; it returns the real that answered.
func download(c *vipClient, url string, n int64, sum string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	h := sha256.New()
	got, err := io.Copy(h, resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || got != n || hex.EncodeToString(h.Sum(nil)) != sum {
		return "", fmt.Errorf("GET %s: status %d, %d bytes, err %v, sha256 match %v", url, resp.StatusCode, got, err, hex.EncodeToString(h.Sum(nil)) == sum)
	}
	return resp.Header.Get(lab.RealHeader), nil
}

// upload POSTs n bytes of lab.Pattern to url and requires the real to have
// read n bytes with SHA-256 sum; it returns the real.
func upload(c *vipClient, url string, n int64, sum string) (string, error) {
	req, err := http.NewRequest(http.MethodPost, url, lab.Pattern(n))
	if err != nil {
		return "", err
	}
	req.ContentLength = n
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var res lab.UploadResult
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil || resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("POST %s: status %d, decoding the answer: %v", url, resp.StatusCode, err)
	}
	if res.Bytes != n || res.SHA256 != sum {
		return "", fmt.Errorf("POST %s: %s received %d bytes with sha256 %s, want %d bytes with %s", url, res.Real, res.Bytes, res.SHA256, n, sum)
	}
	return res.Real, nil
}

// TestFailoverIdleFamilies: 200 idle keep-alive connections to the
// family's VIP survive a kill-and-flip failover, 200 of 200, each found by
// B; with client timestamps on (B steers by the timestamp cookie) and off
// (by the owner probe or a recovery, which dials from the family's
// recovery address).
func TestFailoverIdleFamilies(t *testing.T) {
	for _, ts := range []bool{true, false} {
		for _, f := range bothFamilies {
			t.Run(f.String()+"/"+timestampsName(ts), func(t *testing.T) {
				p, conns, errs := idleFailoverOn(t, newFamilyPair(t, f, clientTimestamps(t, ts)))
				checkIdleFailover(t, p, conns, errs)
			})
		}
	}
}

// TestFailbackAndSecondFailoverFamilies: failover, failback, failover with
// 200 keep-alive connections to the family's VIP: 200 of 200 after each,
// and B's flows found stale on the second failover.
func TestFailbackAndSecondFailoverFamilies(t *testing.T) {
	for _, f := range bothFamilies {
		t.Run(f.String(), func(t *testing.T) {
			p, conns, errs := idleFailoverOn(t, newFamilyPair(t, f, nil))
			failbackAndSecondFailover(t, p, conns, errs)
		})
	}
}

// TestFailoverWrkFamilies: wrk to the family's VIP through a failover
// (TestFailoverWrk's run): 0 socket errors, 0 timeouts (stalled sockets),
// 0 non-2xx.
func TestFailoverWrkFamilies(t *testing.T) {
	for _, size := range []int{16 << 10, 1 << 20} {
		for _, f := range bothFamilies {
			name := fmt.Sprintf("%dKiB", size>>10)
			t.Run(name+"/"+f.String(), func(t *testing.T) {
				wrkFailover(t, newFamilyPair(t, f, nil), name, 16, size)
			})
		}
	}
}

// TestUploadFailoverSteeringFamilies: the slow-upload failover
// (TestUploadFailoverSteering) to the family's VIP, client timestamps on
// and off: 16 of 16 uploads intact, each stored on its connection's
// original real only.
func TestUploadFailoverSteeringFamilies(t *testing.T) {
	for _, ts := range []bool{true, false} {
		for _, f := range bothFamilies {
			t.Run(f.String()+"/"+timestampsName(ts), func(t *testing.T) {
				r := slowUploads(t, familyRig(t, f, "holdfast "+f.String(), clientTimestamps(t, ts)))
				t.Logf("slow uploads, %s, client %s: %v", r.name, timestampsName(ts), r)
				if r.lost() != 0 {
					t.Errorf("lost %d of %d uploads, want 0; first: %v", r.lost(), len(r.outcomes), r.firstLost)
				}
				if !r.storedConsistent() {
					t.Errorf("the reals stored %v uploads, the client got intact answers from %v: want each upload stored on exactly the real that answered it", r.stored, r.answered)
				}
			})
		}
	}
}

// TestFailoverBusyFamilies: 64 keep-alive connections to the family's VIP
// download 16 KiB..1 MiB bodies without pause (TestFailoverBusy's load)
// through a failover: every body intact, every connection found by B.
func TestFailoverBusyFamilies(t *testing.T) {
	for _, f := range bothFamilies {
		t.Run(f.String(), func(t *testing.T) {
			p := newFamilyPair(t, f, nil)
			busyThrough(t, p, 64, busySizes, func() { p.failover(t) })
		})
	}
}

// TestRehomeDeadRealFamilies: TestRehomeDeadReal over each family in a
// dual-stack lab: 120 keep-alive connections, one real black-holed, every
// connection keeps working and those on the dead real are recovered on
// another one (over IPv6, a recovery dial from RecoveryAddr6).
func TestRehomeDeadRealFamilies(t *testing.T) {
	for _, f := range bothFamilies {
		t.Run(f.String(), func(t *testing.T) {
			testRehomeDeadReal(t, NewLab(t, lab.Options{Directors: 1, Reals: 3, IPv6: true}), f)
		})
	}
}
