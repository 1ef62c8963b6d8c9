package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"
	"time"
)

// The anchor the failover tests measure holdfast against: kernel NAT on
// both directors with conntrackd (conntrack-tools) in FTFW mode keeping the
// backup's copy of the active director's connection table, the classic
// Linux primary-backup firewall. The backup keeps what it receives in
// conntrackd's external cache and commits it into its kernel table when it
// takes over (`conntrackd -c`, as keepalived's primary-backup.sh from
// conntrack-tools' examples does on "primary").

// SyncPrefix is the dedicated link between the two directors that
// conntrackd syncs over (StartConntrackSync): A is .1, B is .2.
var SyncPrefix = netip.MustParsePrefix("198.18.4.0/24")

// SyncIface is the sync link's interface in each director namespace.
const SyncIface = "ha0"

// conntrackdPort is the UDP port of the sync messages (conntrackd's usual).
const conntrackdPort = 3780

// SyncAddr is director d's address on the sync link.
func SyncAddr(d *Director) netip.Addr {
	b := SyncPrefix.Addr().As4()
	b[3] = byte(d.ID)
	return netip.AddrFrom4(b)
}

// KernelNATPerConnection is KernelNAT with a real chosen per connection,
// round robin over to: one iptables DNAT rule per real, each taking every
// k-th of the new connections that reach it (statistic nth). The nat table
// sees only the first packet of a connection, so the counters count
// connections. (A DNAT range would pick the real from a hash of the
// addresses only: one client's connections would all land on one real, and
// a backup director would pick that same real for a connection it picks up
// mid-stream, hiding what state sync is for.)
func (n *NS) KernelNATPerConnection(ctx context.Context, proto string, port int, to []netip.AddrPort) error {
	if len(to) == 0 {
		return fmt.Errorf("lab: %s: KernelNATPerConnection: no reals", n.Name)
	}
	if err := n.SetSysctl("net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	for i, r := range to {
		args := []string{"iptables", "-w", "-t", "nat", "-A", "PREROUTING", "-d", VIP.String() + "/32",
			"-p", proto, "--dport", strconv.Itoa(port)}
		if left := len(to) - i; left > 1 {
			args = append(args, "-m", "statistic", "--mode", "nth", "--every", strconv.Itoa(left), "--packet", "0")
		}
		args = append(args, "-j", "DNAT", "--to-destination", r.String())
		if out, err := n.Run(ctx, args...); err != nil {
			return fmt.Errorf("iptables DNAT in %s: %w: %s", n.Name, err, out)
		}
	}
	return nil
}

// conntrackdConf is one director's conntrackd configuration. Every path
// conntrackd would otherwise take from its global defaults (/var/lock,
// /var/run, /var/log) is in the sync's own directory, so that several labs
// (tests in parallel) and a system conntrackd never meet.
var conntrackdConf = template.Must(template.New("conntrackd.conf").Parse(`# conntrackd for director {{.Label}} of lab {{.Lab}}: written by holdfast's
# namespace lab, removed with it.
Sync {
	# Reliable replication (acknowledged, resent); the backup keeps the
	# peer's entries in its external cache until it commits them.
	Mode FTFW {
		DisableExternalCache Off
	}
	# Unicast over the dedicated link between the two directors.
	UDP {
		IPv4_address {{.Addr}}
		IPv4_Destination_Address {{.Peer}}
		Port {{.Port}}
		Interface {{.Iface}}
		SndSocketBuffer 1249280
		RcvSocketBuffer 1249280
		Checksum on
	}
}
General {
	# Started by the lab in the foreground, not by systemd.
	Systemd off
	HashSize 8192
	HashLimit 65536
	LogFile {{.Dir}}/conntrackd-{{.Label}}.log
	Syslog off
	LockFile {{.Dir}}/conntrackd-{{.Label}}.lock
	UNIX {
		Path {{.Dir}}/conntrackd-{{.Label}}.ctl
	}
	NetlinkBufferSize 2097152
	NetlinkBufferSizeMaxGrowth 8388608
	# Only the forwarded TCP connections: not the director's own traffic
	# (the sync messages are UDP anyway).
	Filter From Userspace {
		Protocol Accept {
			TCP
		}
		Address Ignore {
			IPv4_address 127.0.0.1
{{- range .Own}}
			IPv4_address {{.}}
{{- end}}
		}
	}
}
`))

// ConntrackSync is conntrackd running on both directors of a two-director
// lab (StartConntrackSync). The lab stops it on Close. Set once, read-only
// after: methods are safe for concurrent use.
type ConntrackSync struct {
	l     *Lab
	bin   string
	dir   string
	confs []string // per director, in Directors order
	procs []*Proc
}

// StartConntrackSync links the two directors with a dedicated veth
// (SyncIface, SyncPrefix), writes a conntrackd configuration for each into
// a fresh temporary directory, and starts conntrackd in each director's
// namespace (in the foreground: the PID the lab kills is conntrackd's own).
// It returns once both are initialised. Needs conntrackd (Debian package
// conntrackd).
func (l *Lab) StartConntrackSync() (_ *ConntrackSync, err error) {
	if len(l.Directors) != 2 {
		return nil, fmt.Errorf("lab: StartConntrackSync: needs 2 directors, have %d", len(l.Directors))
	}
	bin, err := exec.LookPath("conntrackd")
	if err != nil {
		return nil, fmt.Errorf("lab: StartConntrackSync needs conntrackd (Debian package conntrackd): %w", err)
	}
	a, b := l.Directors[0], l.Directors[1]
	if err := veth(a.NS, SyncIface, b.NS, SyncIface, 1500); err != nil {
		return nil, err
	}
	for _, d := range l.Directors {
		if _, err := d.IP("addr", "add", netip.PrefixFrom(SyncAddr(d), SyncPrefix.Bits()).String(), "dev", SyncIface); err != nil {
			return nil, err
		}
	}
	dir, err := os.MkdirTemp("", "holdfast-lab-conntrackd-")
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	s := &ConntrackSync{l: l, bin: bin, dir: dir}
	if err := l.register(nil, s.stop); err != nil {
		return nil, errors.Join(err, os.RemoveAll(dir))
	}
	for i, d := range l.Directors {
		peer := l.Directors[1-i]
		conf := filepath.Join(dir, "conntrackd-"+d.Label+".conf")
		var c strings.Builder
		err := conntrackdConf.Execute(&c, map[string]any{
			"Lab":   l.Prefix,
			"Label": d.Label,
			"Addr":  SyncAddr(d),
			"Peer":  SyncAddr(peer),
			"Port":  conntrackdPort,
			"Iface": SyncIface,
			"Dir":   dir,
			"Own":   []netip.Addr{SyncAddr(d), SyncAddr(peer), d.Uplink.Addr(), d.RSAddr.Addr()},
		})
		if err != nil {
			return nil, fmt.Errorf("lab: conntrackd configuration: %w", err)
		}
		if err := os.WriteFile(conf, []byte(c.String()), 0o600); err != nil {
			return nil, fmt.Errorf("lab: %w", err)
		}
		s.confs = append(s.confs, conf)
		p, err := d.Start("conntrackd-"+d.Label, bin, "-C", conf)
		if err != nil {
			return nil, err
		}
		s.procs = append(s.procs, p)
		// It prints this once its sockets (netlink, sync, UNIX) are open
		// and it runs its event loop.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = p.WaitForLine(ctx, func(ln Line) bool { return strings.Contains(ln.Text, "starting in console mode") })
		cancel()
		if err != nil {
			return nil, fmt.Errorf("lab: director %s: conntrackd not ready: %w\n%s", d.Label, err, tailLines(p.Lines(), 30))
		}
	}
	return s, nil
}

// Proc returns the conntrackd of Directors[i].
func (s *ConntrackSync) Proc(i int) *Proc { return s.procs[i] }

// ctl runs `conntrackd -C conf args...` in Directors[i]'s namespace (it talks
// to that director's conntrackd through its UNIX socket).
func (s *ConntrackSync) ctl(ctx context.Context, i int, args ...string) (string, error) {
	out, err := s.l.Directors[i].Run(ctx, append([]string{s.bin, "-C", s.confs[i]}, args...)...)
	if err != nil {
		return string(out), fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Commit commits the external cache of Directors[i]'s conntrackd (the
// entries its peer sent) into that director's kernel conntrack table: what
// a backup does when it becomes the primary.
func (s *ConntrackSync) Commit(ctx context.Context, i int) error {
	_, err := s.ctl(ctx, i, "-c")
	return err
}

// ExternalCache returns the external cache of Directors[i]'s conntrackd
// (`conntrackd -e`): what it holds of its peer's table, one entry a line
// in conntrack(8)'s format.
func (s *ConntrackSync) ExternalCache(ctx context.Context, i int) ([]string, error) {
	out, err := s.ctl(ctx, i, "-e")
	return entryLines(out), err
}

// ConntrackTable returns the kernel conntrack table of n (`conntrack -L`),
// one entry a line.
func (n *NS) ConntrackTable(ctx context.Context) ([]string, error) {
	out, err := n.Run(ctx, "conntrack", "-L")
	// conntrack prints its summary ("N flow entries have been shown") on
	// stderr, which Run mixes in.
	return entryLines(string(out)), err
}

func entryLines(out string) []string {
	var lines []string
	for _, ln := range strings.Split(out, "\n") {
		if strings.Contains(ln, "src=") {
			lines = append(lines, ln)
		}
	}
	return lines
}

// stop ends the conntrackd processes (SIGTERM, by PID: each removes its lock
// file and socket) and removes the directory. One that does not exit in
// time is left to the lab's SIGKILL.
func (s *ConntrackSync) stop() error { return stopProcs(s.procs, s.dir) }
