package integration

import (
	"strings"
	"testing"
	"time"

	"holdfast/lab"
)

// TestRealClients uses stock clients from the client namespace: ping of the
// VIP (the director answers echo requests to a VIP itself) and curl.
func TestRealClients(t *testing.T) {
	l := startLab(t, lab.Options{Reals: 3})
	d := l.Directors[0]
	args := append([]string{"--service", "tcp:" + vipHTTP.String(), "--scheduler", "rr"}, realFlags(l, lab.DefaultHTTPPort)...)
	StartDirector(t, d.NS, directorArgs(d, args...)...)

	t.Run("ping", func(t *testing.T) {
		out, err := runIn(l.Client, 15*time.Second, "ping", "-c", "3", "-W", "1", lab.VIP.String())
		if err != nil || !strings.Contains(out, "3 packets transmitted, 3 received") {
			t.Errorf("ping -c 3 -W 1 %s: %v\n%s", lab.VIP, err, out)
		}
	})
	t.Run("curl", func(t *testing.T) {
		out, err := runIn(l.Client, 15*time.Second, "curl", "-sS", "--max-time", "10", "-D", "-", "-o", "/dev/null",
			"-w", "status=%{http_code}\n", httpURL(vipHTTP, "/"))
		if err != nil || !strings.Contains(out, "status=200") || !strings.Contains(out, lab.RealHeader+": rs") {
			t.Errorf("curl %s: %v\n%s", httpURL(vipHTTP, "/"), err, out)
		}
	})
}
