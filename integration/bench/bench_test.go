package main

import (
	"bytes"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"holdfast/lab"
)

// TestFamily: the IPv6 rows use the lab's IPv6 twins, the IPv4 rows what
// they always did.
func TestFamily(t *testing.T) {
	r := &lab.Real{Addr: netip.MustParseAddr("198.18.10.11"), Addr6: netip.MustParseAddr("2001:2:0:10::11")}
	for _, tc := range []struct {
		f         family
		vip, addr string
	}{
		{ipv4, "198.18.100.1", "198.18.10.11"},
		{ipv6, "2001:2:0:100::1", "2001:2:0:10::11"},
	} {
		if got := tc.f.vip().String(); got != tc.vip {
			t.Errorf("family %d: vip %s, want %s", tc.f, got, tc.vip)
		}
		if got := tc.f.addr(r).String(); got != tc.addr {
			t.Errorf("family %d: addr %s, want %s", tc.f, got, tc.addr)
		}
	}
}

// TestRows: ipv6 is a default group, its rows are IPv6 and carry no
// target, and the IPv4 rows keep theirs.
func TestRows(t *testing.T) {
	cfg, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.groups[groupIPv6] {
		t.Errorf("default -rows %v: no %s", cfg.groups, groupIPv6)
	}
	targets := map[string]string{
		"tcp_1": ">= 0.60x kernel NAT, > HAProxy", "tcp_4": "> HAProxy", "udp_64": ">= 0.50x kernel NAT",
		"http_keepalive": ">= 0.65x kernel NAT, > HAProxy", "http_new_conn": ">= 0.75x kernel NAT, > HAProxy",
		"tcp6_1": "", "http6_keepalive": "",
	}
	for _, def := range rowDefs {
		want, ok := targets[def.key]
		if !ok {
			t.Errorf("row %s: not in the test", def.key)
			continue
		}
		if got := newRow(def).Target; got != want {
			t.Errorf("row %s: target %q, want %q", def.key, got, want)
		}
		if v6 := def.group == groupIPv6; v6 != (def.fam == ipv6) {
			t.Errorf("row %s: group %s, family %d", def.key, def.group, def.fam)
		}
	}
}

// TestNginxConf: one listen line per address of the real, as the IPv4-only
// lab always had it, and the bracketed IPv6 one in a dual-stack lab.
func TestNginxConf(t *testing.T) {
	for _, tc := range []struct {
		listen []netip.AddrPort
		want   string
	}{
		{[]netip.AddrPort{netip.MustParseAddrPort("198.18.10.11:80")},
			"    server {\n        listen 198.18.10.11:80 backlog=8192 reuseport;\n        location / {\n"},
		{[]netip.AddrPort{netip.MustParseAddrPort("198.18.10.11:80"), netip.MustParseAddrPort("[2001:2:0:10::11]:80")},
			"    server {\n        listen 198.18.10.11:80 backlog=8192 reuseport;\n        listen [2001:2:0:10::11]:80 backlog=8192 reuseport;\n        location / {\n"},
	} {
		var b bytes.Buffer
		err := nginxConf.Execute(&b, map[string]any{"Dir": "/x", "Workers": 2, "NoFile": 1024, "Conns": 960,
			"Listen": tc.listen, "Header": lab.RealHeader, "Label": "rs1"})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(b.String(), tc.want) {
			t.Errorf("nginx.conf for %v lacks\n%s\ngot:\n%s", tc.listen, tc.want, b.String())
		}
	}
}

// TestHAProxyConf: the IPv4 frontends as they were, the IPv6 ones bound
// to [VIP6]:port; haproxy -c accepts the file where HAProxy is installed.
func TestHAProxyConf(t *testing.T) {
	type service struct {
		Name       string
		Bind, Real netip.AddrPort
	}
	var b bytes.Buffer
	err := haproxyConf.Execute(&b, map[string]any{"MaxConn": 1000, "Threads": 2, "Label": "rs1", "Services": []service{
		{"5201", netip.MustParseAddrPort("198.18.100.1:5201"), netip.MustParseAddrPort("198.18.10.11:5201")},
		{"6_5201", netip.MustParseAddrPort("[2001:2:0:100::1]:5201"), netip.MustParseAddrPort("[2001:2:0:10::11]:5201")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"frontend fe_5201\n    bind 198.18.100.1:5201\n    default_backend be_5201\nbackend be_5201\n    server rs1 198.18.10.11:5201\n",
		"frontend fe_6_5201\n    bind [2001:2:0:100::1]:5201\n    default_backend be_6_5201\nbackend be_6_5201\n    server rs1 [2001:2:0:10::11]:5201\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("haproxy.cfg lacks\n%s\ngot:\n%s", want, b.String())
		}
	}
	if _, err := exec.LookPath("haproxy"); err != nil {
		t.Log("haproxy not installed: its check skipped")
		return
	}
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("haproxy", "-c", "-f", path).CombinedOutput(); err != nil {
		t.Errorf("haproxy -c: %v\n%s", err, out)
	}
}

// TestNAT6Conf: the ip6 DNAT rules, and nft -c accepts them where it can
// check (root, nftables installed).
func TestNAT6Conf(t *testing.T) {
	type rule struct {
		Proto string
		Port  uint16
		To    netip.AddrPort
	}
	var b bytes.Buffer
	err := nat6Conf.Execute(&b, map[string]any{"Table": nat6Table, "VIP": lab.VIP6, "Rules": []rule{
		{"tcp", 5201, netip.MustParseAddrPort("[2001:2:0:10::11]:5201")},
		{"udp", 5201, netip.MustParseAddrPort("[2001:2:0:10::11]:5201")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"table ip6 " + nat6Table + " {\n",
		"        type nat hook prerouting priority dstnat; policy accept;\n" +
			"        ip6 daddr 2001:2:0:100::1 tcp dport 5201 dnat to [2001:2:0:10::11]:5201\n" +
			"        ip6 daddr 2001:2:0:100::1 udp dport 5201 dnat to [2001:2:0:10::11]:5201\n    }\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("nat6.nft lacks\n%s\ngot:\n%s", want, b.String())
		}
	}
	if _, err := exec.LookPath("nft"); err != nil || os.Geteuid() != 0 {
		t.Log("nft -c needs nftables and root: skipped")
		return
	}
	path := filepath.Join(t.TempDir(), "nat6.nft")
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("nft", "-c", "-f", path).CombinedOutput(); err != nil {
		t.Errorf("nft -c: %v\n%s", err, out)
	}
}
