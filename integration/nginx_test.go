package integration

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"holdfast/lab"
)

// nginxPort is the port nginx serves on the reals, beside the lab's own
// backend on lab.DefaultHTTPPort.
const nginxPort = 8081

// nginxBytes is the size of the file nginx serves at /1m.
const nginxBytes = 1 << 20

// startNginx runs nginx on real r, listening on port of each of its
// addresses (IPv6 too in a dual-stack lab): "/" answers the real's label
// (also in the lab.RealHeader header), /1m is lab.Pattern(nginxBytes). One
// process (master_process off), so that the lab's SIGKILL on Close leaves
// no worker behind. It returns once nginx accepts connections on every
// address; t's cleanup stops it.
func startNginx(t *testing.T, r *lab.Real, port int) {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		t.Skip("skipping: needs nginx (apt-get install nginx-light, as .ci/run does)")
	}
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "1m"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(f, lab.Pattern(nginxBytes)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	var listen strings.Builder
	for _, a := range r.Addrs() {
		fmt.Fprintf(&listen, "        listen %s;\n", netip.AddrPortFrom(a, uint16(port)))
	}
	conf := fmt.Sprintf(`# written by holdfast's integration tests
daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log stderr warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    server {
%[2]s        location = /1m {
            root %[1]s;
            default_type application/octet-stream;
            add_header %[3]s %[4]s;
        }
        location / {
            add_header %[3]s %[4]s;
            return 200 "%[4]s\n";
        }
    }
}
`, dir, listen.String(), lab.RealHeader, r.Label)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	// -e: the error log before the configuration is read (nginx would open
	// /var/log/nginx/error.log otherwise).
	p, err := r.Start("nginx-"+r.Label, bin, "-e", "stderr", "-c", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Signal(syscall.SIGQUIT) // graceful stop
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := p.Wait(ctx); err != nil {
			t.Errorf("nginx on %s did not stop: %v\n%s", r.Label, err, p.Stderr())
		}
	})
	// nginx announces nothing once it listens: poll a connection to each
	// address every 20 ms, from the real's own namespace, for at most 10 s.
	for _, a := range r.Addrs() {
		addr := netip.AddrPortFrom(a, uint16(port)).String()
		for deadline := time.Now().Add(10 * time.Second); ; {
			c, err := r.Dial("tcp", addr)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-p.Done():
				t.Fatalf("nginx on %s exited: %s", r.Label, p.Stderr())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("nginx on %s not accepting on %s after 10 s: %v\n%s", r.Label, addr, err, p.Stderr())
			}
			time.Sleep(20 * time.Millisecond) // poll interval
		}
	}
}

// TestNginxFamilies: nginx on the reals, listening on both families; one
// dual-stack director serves VIP:8081 and [VIP6]:8081 over them. Per family:
// 60 new-connection curl GETs spread 20/20/20 over the reals, and a 1 MiB
// file nginx sends arrives intact (SHA-256) through the VIP.
func TestNginxFamilies(t *testing.T) {
	for _, f := range bothFamilies {
		t.Run(f.String(), func(t *testing.T) {
			l := NewLab(t, lab.Options{Reals: 3, IPv6: true})
			for _, r := range l.Reals {
				startNginx(t, r, nginxPort)
			}
			d := l.Directors[0]
			var args []string
			for _, g := range bothFamilies {
				args = append(args, "--service", "tcp:"+netip.AddrPortFrom(g.vip().Addr(), nginxPort).String(), "--scheduler", "rr")
				args = append(args, g.realFlags(l, nginxPort)...)
			}
			StartDirector(t, d.NS, directorArgs(d, args...)...)
			vip := netip.AddrPortFrom(f.vip().Addr(), nginxPort)

			// One curl, 60 transfers (-: starts the next one, with its
			// own options); "Connection: close" makes nginx close each
			// connection after its response, so every transfer opens a
			// new one.
			curl := []string{"curl", "-sS", "-g", "--max-time", "30"}
			for i := range 60 {
				if i > 0 {
					curl = append(curl, "-:")
				}
				curl = append(curl, "-H", "Connection: close", "-o", "/dev/null", "-w", "%header{"+lab.RealHeader+"} %{remote_ip}\n", httpURL(vip, "/"))
			}
			out, err := runIn(l.Client, 60*time.Second, curl...)
			if err != nil {
				t.Fatalf("curl: %v\n%s", err, out)
			}
			got := map[string]int{}
			for _, ln := range strings.Split(strings.TrimSpace(out), "\n") {
				real, remote, _ := strings.Cut(ln, " ")
				if remote != vip.Addr().String() {
					t.Errorf("curl talked to %q, want %v", remote, vip.Addr())
				}
				got[real]++
			}
			t.Logf("%v: 60 curl GETs to %v answered by nginx on %v", f, vip, got)
			if want := map[string]int{"rs1": 20, "rs2": 20, "rs3": 20}; !maps.Equal(got, want) {
				t.Errorf("GETs per real %v, want %v", got, want)
			}

			c := newVIPClient(t, l.Client, false, netip.Addr{})
			real, err := download(c, httpURL(vip, "/1m"), nginxBytes, lab.PatternSHA256(nginxBytes))
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%v: 1 MiB from nginx on %s intact", f, real)
		})
	}
}
