package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"

	"github.com/vishvananda/netns"
)

// NS is one named network namespace of a lab (`ip netns list` shows Name).
type NS struct {
	Name string // full name, Prefix + Role
	Role string // "client", "router", "switch", "dirA", "dirB", "rs1", ...
	lab  *Lab
}

func (n *NS) String() string { return n.Name }

// Do runs f on a goroutine locked to an OS thread that is inside n, then
// moves the thread back. Sockets f creates stay in n for their whole life
// (a socket's namespace is fixed when it is created), so they may be used
// from any goroutine afterwards.
//
// f must not start goroutines that create sockets: those run on other
// threads, in the host namespace.
func (n *NS) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		// If the thread cannot be moved back it stays locked: the goroutine
		// exits locked and the runtime destroys the thread instead of reusing
		// it in the wrong namespace.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("lab: current netns: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(n.Name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("lab: netns %s: %w", n.Name, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("lab: enter netns %s: %w", n.Name, err)
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("lab: leave netns %s: %w", n.Name, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Listen is net.Listen inside n.
func (n *NS) Listen(network, address string) (ln net.Listener, err error) {
	err = n.Do(func() error {
		ln, err = net.Listen(network, address)
		return err
	})
	return ln, err
}

// ListenPacket is net.ListenPacket inside n.
func (n *NS) ListenPacket(network, address string) (pc net.PacketConn, err error) {
	err = n.Do(func() error {
		pc, err = net.ListenPacket(network, address)
		return err
	})
	return pc, err
}

// Dial is net.Dial inside n.
func (n *NS) Dial(network, address string) (net.Conn, error) {
	return n.Dialer(nil)(context.Background(), network, address)
}

// Dialer returns a DialContext-shaped function (as http.Transport.DialContext
// wants) that dials with d inside n; nil d means a zero net.Dialer. Addresses
// must be IP literals: a name lookup would run on other goroutines.
func (n *NS) Dialer(d *net.Dialer) func(ctx context.Context, network, address string) (net.Conn, error) {
	if d == nil {
		d = &net.Dialer{}
	}
	return func(ctx context.Context, network, address string) (c net.Conn, err error) {
		host, _, err := net.SplitHostPort(address)
		if err != nil {
			return nil, err
		}
		if net.ParseIP(host) == nil {
			return nil, fmt.Errorf("lab: dial %s from %s: want an IP literal", address, n.Name)
		}
		err = n.Do(func() error {
			c, err = d.DialContext(ctx, network, address)
			return err
		})
		return c, err
	}
}

// SetSysctl writes a sysctl of n, key in dotted form ("net.ipv4.ip_forward").
// /proc/sys/net shows the namespace of the thread that opens it.
func (n *NS) SetSysctl(key, value string) error {
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	return n.Do(func() error {
		if err := os.WriteFile(path, []byte(value), 0); err != nil {
			return fmt.Errorf("lab: %s: sysctl %s=%s: %w", n.Name, key, value, err)
		}
		return nil
	})
}

// Sysctl reads a sysctl of n, key in dotted form.
func (n *NS) Sysctl(key string) (string, error) {
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	var v []byte
	err := n.Do(func() (err error) {
		v, err = os.ReadFile(path)
		return err
	})
	return strings.TrimSpace(string(v)), err
}

// IP runs `ip -n <ns> args...` and returns its output.
func (n *NS) IP(args ...string) (string, error) {
	out, err := run("ip", append([]string{"-n", n.Name}, args...)...)
	return string(out), err
}

// Run runs argv inside n (`ip netns exec`) to completion and returns its
// combined output. The process is killed (by PID) when ctx ends.
func (n *NS) Run(ctx context.Context, argv ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name}, argv...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("lab: %s: %s: %w", n.Name, strings.Join(argv, " "), err)
	}
	return out.Bytes(), err
}

// Start starts argv inside n (`ip netns exec`, which execs argv, so the PID
// is argv's own) and returns it running. The lab kills it on Close if it is
// still running; name labels it in errors.
func (n *NS) Start(name string, argv ...string) (*Proc, error) {
	return n.start(name, nil, procOptions{}, argv...)
}

// StartReady starts argv inside n as Start does, with NOTIFY_SOCKET naming
// a socket of the lab's, and returns it once it has sent READY=1 there
// (sd_notify(3)), as `holdfast run` does once it serves. If it exits first
// or ctx ends, it is killed and the error carries its stderr.
func (n *NS) StartReady(ctx context.Context, name string, argv ...string) (*Proc, error) {
	return n.startReady(ctx, name, procOptions{}, argv...)
}

// startReady is StartReady with o shaping what the Proc keeps.
func (n *NS) startReady(ctx context.Context, name string, o procOptions, argv ...string) (*Proc, error) {
	return startReady(ctx, func(env []string) (*Proc, error) { return n.start(name, env, o, argv...) })
}

// start is Start with env added to the lab's environment.
func (n *NS) start(name string, env []string, o procOptions, argv ...string) (*Proc, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("lab: %s: Start %s: empty argv", n.Name, name)
	}
	p, err := startProc(name, command(env, append([]string{"ip", "netns", "exec", n.Name}, argv...)...), o)
	if err != nil {
		return nil, fmt.Errorf("lab: %s: %w", n.Name, err)
	}
	if err := n.lab.register(p, nil); err != nil {
		return nil, errors.Join(err, p.stop())
	}
	return p, nil
}

// run runs a host command and returns its combined output; the error carries
// the command line and the output.
func run(name string, args ...string) ([]byte, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("lab: %s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// LinkStats are an interface's packet and byte counters.
type LinkStats struct {
	RxPackets, TxPackets uint64
	RxBytes, TxBytes     uint64
}

// LinkStats reads the counters of interface ifname in n.
func (n *NS) LinkStats(ifname string) (LinkStats, error) {
	out, err := n.IP("-s", "-j", "link", "show", "dev", ifname)
	if err != nil {
		return LinkStats{}, err
	}
	var links []struct {
		Stats64 struct {
			Rx struct{ Bytes, Packets uint64 } `json:"rx"`
			Tx struct{ Bytes, Packets uint64 } `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		return LinkStats{}, fmt.Errorf("lab: %s: ip -s -j link show dev %s: %q: %v", n.Name, ifname, out, err)
	}
	s := links[0].Stats64
	return LinkStats{RxPackets: s.Rx.Packets, TxPackets: s.Tx.Packets, RxBytes: s.Rx.Bytes, TxBytes: s.Tx.Bytes}, nil
}

// KernelNAT makes n a kernel NAT director for VIP:port of proto (tcp or
// udp), the anchor the tests and the bench measure holdfast against:
// forwarding on, and an iptables DNAT rule to to (ADDR:PORT, or a range
// ADDR-ADDR:PORT) with conntrack. No SNAT: the reals route back through n.
func (n *NS) KernelNAT(ctx context.Context, proto string, port int, to string) error {
	if err := n.SetSysctl("net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	out, err := n.Run(ctx, "iptables", "-w", "-t", "nat", "-A", "PREROUTING", "-d", VIP.String()+"/32",
		"-p", proto, "--dport", strconv.Itoa(port), "-j", "DNAT", "--to-destination", to)
	if err != nil {
		return fmt.Errorf("iptables DNAT in %s: %w: %s", n.Name, err, out)
	}
	return nil
}
