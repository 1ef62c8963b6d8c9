package lab

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// okFacts is a host where an unprivileged lab can run.
func okFacts() hostFacts {
	return hostFacts{
		userNS: true,
		sysctls: map[string]string{
			"user.max_user_namespaces": "63432",
			"user.max_net_namespaces":  "63432",
			"user.max_mnt_namespaces":  "63432",
			"user.max_pid_namespaces":  "63432",
		},
		apparmor:   "unconfined",
		ip:         "/usr/sbin/ip",
		mountinfo:  "22 27 0:21 / /proc rw,relatime - proc proc rw\n",
		searchPath: "/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
	}
}

// tunChmodFix is the fix missing() gives for a /dev/net/tun of mode 0600.
const tunChmodFix = " (it is mode 0600: `sudo chmod 0666 /dev/net/tun` lets users open it, as most distributions ship it," +
	` and a udev rule KERNEL=="tun", MODE="0666" in /etc/udev/rules.d/60-tun.rules keeps it so after a reboot)`

func TestHostFactsMissing(t *testing.T) {
	tests := []struct {
		name string
		edit func(*hostFacts)
		want []string
	}{
		{"all there", func(*hostFacts) {}, nil},
		{"no user namespaces in the kernel", func(f *hostFacts) { f.userNS = false },
			[]string{"the kernel has no user namespaces (/proc/self/ns/user is missing: CONFIG_USER_NS is off)"}},
		{"debian switch off", func(f *hostFacts) { f.sysctls["kernel.unprivileged_userns_clone"] = "0" },
			[]string{"user namespaces are disabled (kernel.unprivileged_userns_clone=0)"}},
		{"debian switch on", func(f *hostFacts) { f.sysctls["kernel.unprivileged_userns_clone"] = "1" }, nil},
		{"no user namespaces allowed", func(f *hostFacts) { f.sysctls["user.max_user_namespaces"] = "0" },
			[]string{"user.max_user_namespaces is 0"}},
		{"no network namespaces allowed", func(f *hostFacts) { f.sysctls["user.max_net_namespaces"] = "0" },
			[]string{"user.max_net_namespaces is 0"}},
		{"no mount namespaces allowed", func(f *hostFacts) { f.sysctls["user.max_mnt_namespaces"] = "0" },
			[]string{"user.max_mnt_namespaces is 0"}},
		{"no PID namespaces: the child goes without", func(f *hostFacts) { f.sysctls["user.max_pid_namespaces"] = "0" }, nil},
		{"apparmor restricts an unconfined process", func(f *hostFacts) {
			f.sysctls["kernel.apparmor_restrict_unprivileged_userns"] = "1"
		}, []string{"user namespaces are restricted by AppArmor (kernel.apparmor_restrict_unprivileged_userns=1)"}},
		{"apparmor restricts, label unknown", func(f *hostFacts) {
			f.sysctls["kernel.apparmor_restrict_unprivileged_userns"] = "1"
			f.apparmor = ""
		}, []string{"user namespaces are restricted by AppArmor (kernel.apparmor_restrict_unprivileged_userns=1)"}},
		{"apparmor restricts, but a profile confines holdfast", func(f *hostFacts) {
			f.sysctls["kernel.apparmor_restrict_unprivileged_userns"] = "1"
			f.apparmor = "holdfast (enforce)"
		}, nil},
		{"tun mode 0600", func(f *hostFacts) {
			f.tunErr = &fs.PathError{Op: "open", Path: "/dev/net/tun", Err: syscall.EACCES}
			f.tunMode = 0o600
		}, []string{"/dev/net/tun is not accessible: permission denied" + tunChmodFix}},
		{"no tun node", func(f *hostFacts) {
			f.tunErr = &fs.PathError{Op: "open", Path: "/dev/net/tun", Err: syscall.ENOENT}
		}, []string{"/dev/net/tun is not accessible: no such file or directory (no device node: `sudo modprobe tun` loads the driver, which makes it)"}},
		{"no tun driver", func(f *hostFacts) {
			f.tunErr = &fs.PathError{Op: "open", Path: "/dev/net/tun", Err: syscall.ENODEV}
		}, []string{"/dev/net/tun is not accessible: no such device (no tun driver: `sudo modprobe tun`)"}},
		{"no ip", func(f *hostFacts) { f.ip = "" },
			[]string{"ip (iproute2) not found (searched /usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin)"}},
		{"several, in order", func(f *hostFacts) {
			f.sysctls["user.max_user_namespaces"] = "0"
			f.tunErr = &fs.PathError{Op: "open", Path: "/dev/net/tun", Err: syscall.EACCES}
			f.tunMode = 0o600
			f.ip = ""
		}, []string{
			"user.max_user_namespaces is 0",
			"/dev/net/tun is not accessible: permission denied" + tunChmodFix,
			"ip (iproute2) not found (searched /usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin)",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := okFacts()
			tt.edit(&f)
			if got := f.missing(); !slices.Equal(got, tt.want) {
				t.Errorf("missing() =\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}

func TestUnprivErrorMessage(t *testing.T) {
	err := error(&unprivError{missing: []string{"user.max_user_namespaces is 0", "/dev/net/tun is not accessible: permission denied"}})
	want := "cannot run unprivileged: user.max_user_namespaces is 0; /dev/net/tun is not accessible: permission denied (or run it as root)"
	if err.Error() != want {
		t.Errorf("Error() = %q, want %q", err, want)
	}
	if !strings.HasPrefix(err.Error(), unprivPrefix) {
		t.Errorf("Error() = %q does not start with %q", err, unprivPrefix)
	}
}

func TestUsePIDNS(t *testing.T) {
	const (
		proc     = "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
		root     = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
		binfmt   = "40 22 0:40 / /proc/sys/fs/binfmt_misc rw,relatime shared:9 - autofs systemd-1 rw,fd=29\n"
		kcore    = "41 22 0:5 /null /proc/kcore rw,nosuid - devtmpfs udev rw\n"
		optional = "22 27 0:21 / /proc rw,relatime shared:12 master:1 - proc proc rw\n"
		procSub  = "22 27 0:21 /sys /proc rw,relatime - proc proc rw\n"
	)
	tests := []struct {
		name      string
		mountinfo string
		maxPID    string
		want      bool
	}{
		{"plain /proc", root + proc, "", true},
		{"optional fields", root + optional, "", true},
		{"binfmt_misc below /proc", root + proc + binfmt, "", true},
		{"a container's masked /proc/kcore", root + proc + kcore, "", false},
		{"/proc is a part of a proc", root + procSub, "", false},
		{"no /proc", root, "", false},
		{"unreadable mountinfo", "", "", false},
		{"PID namespaces limited to 0", root + proc, "0", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := okFacts()
			f.mountinfo = tt.mountinfo
			if tt.maxPID != "" {
				f.sysctls["user.max_pid_namespaces"] = tt.maxPID
			}
			if got := f.usePIDNS(); got != tt.want {
				t.Errorf("usePIDNS() = %v, want %v for mountinfo\n%s", got, tt.want, tt.mountinfo)
			}
		})
	}
}

func TestWithSbin(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/usr/local/bin:/usr/bin:/bin", "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"},
		{"/usr/sbin:/usr/bin", "/usr/sbin:/usr/bin:/usr/local/sbin:/sbin"},
		{"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		{"", "/usr/local/sbin:/usr/sbin:/sbin"},
	}
	for _, tt := range tests {
		if got := withSbin(tt.in); got != tt.want {
			t.Errorf("withSbin(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestLookIn(t *testing.T) {
	dir := t.TempDir()
	notExec, onlyDir, found := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "c")
	for _, d := range []string{notExec, onlyDir, found} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(notExec, "ip"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(onlyDir, "ip"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(found, "ip"), nil, 0o755); err != nil {
		t.Fatal(err)
	}
	path := strings.Join([]string{"", notExec, onlyDir, found}, ":")
	if got, err := lookIn(path, "ip"); err != nil || got != filepath.Join(found, "ip") {
		t.Errorf("lookIn(%q) = %q, %v; want %q", path, got, err, filepath.Join(found, "ip"))
	}
	if got, err := lookIn(notExec+":"+onlyDir, "ip"); !errors.Is(err, exec.ErrNotFound) {
		t.Errorf("lookIn without an executable ip = %q, %v; want exec.ErrNotFound", got, err)
	}
}

func TestChildEnv(t *testing.T) {
	in := []string{"HOME=/home/u", "PATH=/usr/bin", usernsChildEnv + "=stale", "PATHX=keep"}
	got := childEnv(in, "/usr/bin:/usr/sbin")
	want := []string{"HOME=/home/u", "PATHX=keep", "PATH=/usr/bin:/usr/sbin", usernsChildEnv + "=1"}
	if !slices.Equal(got, want) {
		t.Errorf("childEnv = %q, want %q", got, want)
	}
}

func TestExitStatusCode(t *testing.T) {
	tests := []struct {
		ws   syscall.WaitStatus // as wait(2) encodes it
		want int
	}{
		{0, 0},
		{1 << 8, 1},
		{130 << 8, 130},
		{syscall.WaitStatus(syscall.SIGINT), 130},
		{syscall.WaitStatus(syscall.SIGKILL), 137},
		{syscall.WaitStatus(syscall.SIGTERM) | 0x80, 143}, // with a core dump
	}
	for _, tt := range tests {
		if got := exitStatusCode(tt.ws); got != tt.want {
			t.Errorf("exitStatusCode(%#x) = %d, want %d", uint32(tt.ws), got, tt.want)
		}
	}
}

func TestStartFailure(t *testing.T) {
	fork := func(errno syscall.Errno) error {
		return &fs.PathError{Op: "fork/exec", Path: "/proc/self/exe", Err: errno}
	}
	tests := []struct {
		err  error
		want string
	}{
		{fork(syscall.EPERM), "creating a user namespace was refused: operation not permitted (a seccomp filter, as in a container, a chroot or a security module forbids it)"},
		{fork(syscall.ENOSPC), "creating the namespaces hit a limit: no space left on device (user.max_user_namespaces, max_net_namespaces, max_mnt_namespaces or max_pid_namespaces)"},
		{fork(syscall.EUSERS), "user namespaces are nested too deep: too many users"},
		{fork(syscall.EINVAL), "the kernel cannot create user, network or mount namespaces: invalid argument"},
		{fork(syscall.ENOMEM), "re-executing in a user namespace: fork/exec /proc/self/exe: cannot allocate memory"},
		{fmt.Errorf("odd"), "re-executing in a user namespace: odd"},
	}
	for _, tt := range tests {
		if got := startFailure(tt.err); got != tt.want {
			t.Errorf("startFailure(%v) =\n%q\nwant\n%q", tt.err, got, tt.want)
		}
	}
}

// As root, outside the child, ReexecUnprivileged leaves the process alone.
func TestReexecUnprivilegedAsRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: as an ordinary user ReexecUnprivileged would re-execute the test binary")
	}
	t.Setenv(usernsChildEnv, "")
	reexec, code, err := ReexecUnprivileged([]string{"holdfast", "lab", "demo"})
	if reexec || code != 0 || err != nil {
		t.Errorf("ReexecUnprivileged as root = %v, %d, %v; want false, 0, nil", reexec, code, err)
	}
}

func TestChildUIDMap(t *testing.T) {
	tests := []struct {
		uidMap string
		want   bool
	}{
		{"         0      65534          1\n", true},
		{"0 1000 1", true},
		{"         0          0 4294967295\n", false}, // the initial user namespace
		{"0 100000 65536\n", false},                   // newuidmap's range
		{"0 1000 1\n1 100000 65535\n", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := childUIDMap(tt.uidMap); got != tt.want {
			t.Errorf("childUIDMap(%q) = %v, want %v", tt.uidMap, got, tt.want)
		}
	}
}

func TestKeepRunEntry(t *testing.T) {
	tests := []struct {
		name string
		typ  fs.FileMode
		want bool
	}{
		{"systemd", fs.ModeDir, true},
		{"user", fs.ModeDir, true},
		{"netns", fs.ModeDir, false},    // the lab's own, empty
		{"holdfast", fs.ModeDir, false}, // admin sockets
		{"keepalived", fs.ModeDir, false},
		{"xtables.lock", 0, false}, // a lock the lab's iptables must write
		{"sshd.pid", 0, false},
		{"netns", 0, false},
		{"initctl", fs.ModeNamedPipe, true},
		{"docker.sock", fs.ModeSocket, true},
		{"lock", fs.ModeSymlink, true},
		{"holdfast", fs.ModeSymlink, true},
	}
	for _, tt := range tests {
		if got := keepRunEntry(tt.name, tt.typ); got != tt.want {
			t.Errorf("keepRunEntry(%q, %v) = %v, want %v", tt.name, tt.typ, got, tt.want)
		}
	}
}
