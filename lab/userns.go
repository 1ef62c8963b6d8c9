package lab

// Running `holdfast lab` as an ordinary user: the command re-executes itself
// as root of a new user namespace (user_namespaces(7)), where it holds
// CAP_NET_ADMIN and CAP_SYS_ADMIN over the network and mount namespaces it
// made along with it, and builds the lab there. None of the lab's
// namespaces, links and mounts is visible from the host, and the kernel
// removes all of them when the child exits. The CLI wraps the lab
// subcommands' actions around ReexecUnprivileged (cmd/holdfast/lab.go).

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
)

// usernsChildEnv marks the re-executed child: it sets up its mount namespace
// and never re-executes again. The child removes it from its environment, so
// the processes the lab starts do not inherit it. HOLDFAST_ is the CLI's
// environment prefix.
const usernsChildEnv = "HOLDFAST_USERNS_CHILD"

// exitWaitFailed is the status ReexecUnprivileged returns when it could not
// wait for the child: the CLI's runtime-error code.
const exitWaitFailed = 1

// sbinDirs are appended to the child's PATH: ip(8) lives in /usr/sbin or
// /sbin, which an ordinary user's PATH often lacks (Debian's default user
// PATH is /usr/local/bin:/usr/bin:/bin), while root's has them.
var sbinDirs = []string{"/usr/local/sbin", "/usr/sbin", "/sbin"}

// unprivError says why the lab cannot run unprivileged on this host: each
// entry names one missing kernel feature, permission or tool.
type unprivError struct {
	missing []string
}

// unprivPrefix starts every unprivError message; the integration test
// recognises a refusal (and skips with it) by this prefix.
const unprivPrefix = "cannot run unprivileged: "

func (e *unprivError) Error() string {
	return unprivPrefix + strings.Join(e.missing, "; ") + " (or run it as root)"
}

// ReexecUnprivileged gives an ordinary user the privileges a lab needs. When
// the process is not root (euid != 0) and not already inside the namespaces
// it made, it re-executes /proc/self/exe with
// args (os.Args, args[0] included) in a new user namespace, where uid and
// gid 0 map to the caller's, with a new network, mount and, where /proc can
// be mounted afresh, PID namespace. It forwards SIGINT, SIGTERM, SIGHUP and
// SIGQUIT to the child, waits for it and returns its exit status (128+N
// when signal N killed it) with reexec true: the caller then exits with code
// and does nothing else.
//
// In the child (marked by usernsChildEnv) it prepares the namespaces for
// ip(8) and returns reexec false: a private, writable /run with an empty
// /run/netns (the host's belong to the host's root), /proc of the new PID
// namespace, lo up. As root it does nothing and returns reexec false.
//
// When the host cannot do it, err names each missing piece (user namespaces
// disabled or limited to 0, /dev/net/tun not accessible, ip(8) not found,
// ...), checked before anything is started; its text starts with "cannot
// run unprivileged: ", which the integration tests recognise.
//
// The PID namespace makes the child its init: when the child exits, for
// whatever reason, the kernel kills every process the lab started in it, and
// the namespaces go with them. Should this process die first, the child gets
// SIGTERM.
func ReexecUnprivileged(args []string) (reexec bool, code int, err error) {
	if os.Getenv(usernsChildEnv) != "" {
		return false, 0, setupChild()
	}
	if os.Geteuid() == 0 {
		return false, 0, nil
	}
	path := withSbin(os.Getenv("PATH"))
	f := readHostFacts(path)
	if m := f.missing(); len(m) > 0 {
		return false, 0, &unprivError{missing: m}
	}
	return runChild(args, path, f.usePIDNS())
}

// runChild starts and waits for the child; see ReexecUnprivileged.
func runChild(args []string, path string, pidNS bool) (reexec bool, code int, err error) {
	flags := uintptr(syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET | syscall.CLONE_NEWNS)
	if pidNS {
		flags |= syscall.CLONE_NEWPID
	}
	cmd := &exec.Cmd{
		Path:   "/proc/self/exe",
		Args:   args,
		Env:    childEnv(os.Environ(), path),
		Stdin:  os.Stdin,
		Stdout: os.Stdout,
		Stderr: os.Stderr,
		SysProcAttr: &syscall.SysProcAttr{
			Cloneflags:  flags,
			UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Geteuid(), Size: 1}},
			GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getegid(), Size: 1}},
			// An unprivileged process may write gid_map only after denying
			// setgroups(2) in the namespace (user_namespaces(7)).
			GidMappingsEnableSetgroups: false,
			Pdeathsig:                  syscall.SIGTERM,
		},
	}
	// Pdeathsig fires when the thread that forked exits, not the process:
	// keep this goroutine on its thread until the child is gone.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	// Registered before the start, so a signal arriving in between is
	// forwarded rather than killing this process. Ctrl-C on a terminal
	// reaches the child twice (the terminal signals the whole foreground
	// process group, and this process forwards it): a handler that stops on
	// the first, as signal.NotifyContext does, is not disturbed by the
	// second.
	sigc := make(chan os.Signal, 4)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigc)

	if err := cmd.Start(); err != nil {
		return false, 0, &unprivError{missing: []string{startFailure(err)}}
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case s := <-sigc:
				cmd.Process.Signal(s) //nolint:errcheck // the child may be gone already
			case <-done:
				return
			}
		}
	}()
	err = cmd.Wait()
	if cmd.ProcessState == nil {
		return true, exitWaitFailed, fmt.Errorf("waiting for the unprivileged child: %w", err)
	}
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	return true, exitStatusCode(ws), nil
}

// exitStatusCode is a shell's $? for ws: the exit code, or 128+N after
// signal N.
func exitStatusCode(ws syscall.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// childEnv is env with PATH set to path and the child marker added.
func childEnv(env []string, path string) []string {
	out := make([]string, 0, len(env)+2)
	for _, kv := range env {
		if strings.HasPrefix(kv, "PATH=") || strings.HasPrefix(kv, usernsChildEnv+"=") {
			continue
		}
		out = append(out, kv)
	}
	return append(out, "PATH="+path, usernsChildEnv+"=1")
}

// withSbin is path with the sbinDirs it lacks appended.
func withSbin(path string) string {
	dirs := filepath.SplitList(path)
	for _, d := range sbinDirs {
		if !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	return strings.Join(dirs, string(filepath.ListSeparator))
}

// lookIn is exec.LookPath with an explicit PATH.
func lookIn(path, file string) (string, error) {
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			continue // the current directory: never for a privileged tool
		}
		p := filepath.Join(dir, file)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", exec.ErrNotFound
}

// hostFacts are what the up-front checks look at. readHostFacts gathers
// them; tests write them by hand.
type hostFacts struct {
	userNS     bool              // /proc/self/ns/user exists (CONFIG_USER_NS)
	sysctls    map[string]string // dotted key -> value, for the keys in checkedSysctls that exist
	apparmor   string            // this process's AppArmor label ("unconfined"), "" if unknown
	tunErr     error             // from opening /dev/net/tun read-write
	tunMode    uint32            // its permission bits, if it exists
	ip         string            // path of ip(8), "" if not found
	mountinfo  string            // /proc/self/mountinfo
	searchPath string            // the PATH ip was looked up in
}

// checkedSysctls are the sysctls the checks read.
var checkedSysctls = []string{
	// Debian and Ubuntu kernels' switch for unprivileged user namespaces.
	"kernel.unprivileged_userns_clone",
	// Ubuntu 23.10+: an unconfined process gets a user namespace without
	// capabilities.
	"kernel.apparmor_restrict_unprivileged_userns",
	"user.max_user_namespaces",
	"user.max_net_namespaces",
	"user.max_mnt_namespaces",
	"user.max_pid_namespaces",
}

func readHostFacts(path string) hostFacts {
	f := hostFacts{sysctls: map[string]string{}, searchPath: path}
	_, err := os.Stat("/proc/self/ns/user")
	f.userNS = err == nil
	for _, k := range checkedSysctls {
		if b, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(k, ".", "/")); err == nil {
			f.sysctls[k] = strings.TrimSpace(string(b))
		}
	}
	for _, p := range []string{"/proc/self/attr/apparmor/current", "/proc/self/attr/current"} {
		if b, err := os.ReadFile(p); err == nil {
			f.apparmor = strings.TrimSpace(strings.TrimRight(string(b), "\x00"))
			break
		}
	}
	// The device node belongs to the host's root, whom the user namespace
	// does not map: its root gets no CAP_DAC_OVERRIDE over it, so what this
	// user may open here is what the child may open. Opening without
	// TUNSETIFF creates nothing.
	if t, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0); err != nil {
		f.tunErr = err
	} else {
		t.Close()
	}
	var st syscall.Stat_t
	if syscall.Stat("/dev/net/tun", &st) == nil {
		f.tunMode = st.Mode & 0o777
	}
	f.ip, _ = lookIn(path, "ip")
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		f.mountinfo = string(b)
	}
	return f
}

// missing lists what the host lacks for an unprivileged lab, empty if
// nothing.
func (f hostFacts) missing() []string {
	var m []string
	if !f.userNS {
		m = append(m, "the kernel has no user namespaces (/proc/self/ns/user is missing: CONFIG_USER_NS is off)")
	}
	if f.sysctls["kernel.unprivileged_userns_clone"] == "0" {
		m = append(m, "user namespaces are disabled (kernel.unprivileged_userns_clone=0)")
	}
	for _, k := range []string{"user.max_user_namespaces", "user.max_net_namespaces", "user.max_mnt_namespaces"} {
		if f.sysctls[k] == "0" {
			m = append(m, k+" is 0")
		}
	}
	// The restriction applies to unconfined processes: a profile for
	// holdfast that allows "userns," lifts it.
	if f.sysctls["kernel.apparmor_restrict_unprivileged_userns"] == "1" && (f.apparmor == "" || f.apparmor == "unconfined") {
		m = append(m, "user namespaces are restricted by AppArmor (kernel.apparmor_restrict_unprivileged_userns=1)")
	}
	if f.tunErr != nil {
		m = append(m, "/dev/net/tun is not accessible: "+errnoText(f.tunErr)+tunFix(f.tunErr, f.tunMode))
	}
	if f.ip == "" {
		m = append(m, "ip (iproute2) not found (searched "+f.searchPath+")")
	}
	return m
}

// tunFix is what the user can do about err, from opening /dev/net/tun
// (mode: its permission bits), in parentheses, or "" if nothing is known.
// Opening the node grants nothing by itself (creating a TUN needs
// CAP_NET_ADMIN, which the lab has in its own namespaces only), which is
// why most distributions ship it mode 0666.
func tunFix(err error, mode uint32) string {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return ""
	}
	switch errno {
	case syscall.EACCES, syscall.EPERM:
		return fmt.Sprintf(" (it is mode %#o: `sudo chmod 0666 /dev/net/tun` lets users open it, as most distributions ship it,"+
			" and a udev rule KERNEL==\"tun\", MODE=\"0666\" in /etc/udev/rules.d/60-tun.rules keeps it so after a reboot)", mode)
	case syscall.ENOENT:
		return " (no device node: `sudo modprobe tun` loads the driver, which makes it)"
	case syscall.ENODEV, syscall.ENXIO:
		return " (no tun driver: `sudo modprobe tun`)"
	}
	return ""
}

// usePIDNS reports whether the child can have a PID namespace: the kernel
// allows one, and the child can mount a /proc for it (without which every
// /proc/<pid> path would name a host process). The kernel refuses a new proc
// mount in a user namespace while the existing one has something mounted
// over a part of it (mount_too_revealing in fs/namespace.c), as containers
// do to mask /proc/kcore; an empty directory such as binfmt_misc is fine.
func (f hostFacts) usePIDNS() bool {
	if f.sysctls["user.max_pid_namespaces"] == "0" {
		return false
	}
	return procRemountable(f.mountinfo)
}

// procRemountable reports whether mountinfo (proc_pid_mountinfo(5)) has a
// proc mount on /proc with nothing mounted below it but binfmt_misc.
func procRemountable(mountinfo string) bool {
	found := false
	for line := range strings.Lines(mountinfo) {
		f := strings.Fields(line)
		sep := slices.Index(f, "-")
		if sep < 5 || sep+1 >= len(f) {
			continue
		}
		root, point, fstype := f[3], f[4], f[sep+1]
		switch {
		case point == "/proc" && fstype == "proc" && root == "/":
			found = true
		case strings.HasPrefix(point, "/proc/") && point != "/proc/sys/fs/binfmt_misc":
			return false
		}
	}
	return found
}

// errnoText is the bare errno message of err ("permission denied"), or
// err's text if it has no errno.
func errnoText(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	return err.Error()
}

// startFailure names why the kernel refused the child's namespaces when the
// up-front checks passed.
func startFailure(err error) string {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return "re-executing in a user namespace: " + err.Error()
	}
	switch errno {
	case syscall.EPERM, syscall.EACCES:
		return "creating a user namespace was refused: " + errno.Error() +
			" (a seccomp filter, as in a container, a chroot or a security module forbids it)"
	case syscall.ENOSPC:
		return "creating the namespaces hit a limit: " + errno.Error() +
			" (user.max_user_namespaces, max_net_namespaces, max_mnt_namespaces or max_pid_namespaces)"
	case syscall.EUSERS:
		return "user namespaces are nested too deep: " + errno.Error()
	case syscall.EINVAL:
		return "the kernel cannot create user, network or mount namespaces: " + errno.Error()
	}
	return "re-executing in a user namespace: " + err.Error()
}

// setupChild runs once in the re-executed child, root of its user
// namespace, before the lab is built.
func setupChild() error {
	os.Unsetenv(usernsChildEnv)
	// The marker alone must not make a process mount over the host's
	// /run/netns: only the child runChild made has this uid_map.
	uidMap, err := os.ReadFile("/proc/self/uid_map")
	if err != nil || os.Geteuid() != 0 || !childUIDMap(string(uidMap)) {
		return fmt.Errorf("%s is set, but this process is not the child holdfast re-executed in a user namespace (euid %d, uid_map %q): unset it",
			usernsChildEnv, os.Geteuid(), strings.TrimSpace(string(uidMap)))
	}
	hostUID, _ = strconv.Atoi(strings.Fields(string(uidMap))[1])
	// The host's /proc, before the PID namespace's replaces it, still
	// knows this process's pid outside: `nsenter -t` needs that one.
	hostPID = readHostPID()
	// Nothing mounted here is to reach the host (it could not anyway: the
	// host's shared mounts are slaves in a less privileged namespace).
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return childSetupError("making / private", err)
	}
	if os.Getpid() == 1 {
		// The inherited /proc shows the host's PID namespace, where pids
		// the child sees mean other processes.
		if err := syscall.Mount("proc", "/proc", "proc", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, ""); err != nil {
			return childSetupError("mounting /proc for the PID namespace", err)
		}
	}
	if err := privateRun(); err != nil {
		return err
	}
	// The child's own network namespace holds no lab link, but localhost
	// should work in it.
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		return childSetupError("setting lo up", err)
	}
	return nil
}

// hostPID is this process's pid in the host's PID namespace when it is the
// re-executed child (setupChild sets it), 0 otherwise.
var hostPID int

// HostPID is the pid by which the user's other shells reach this
// unprivileged lab's namespaces (`nsenter -t PID -U -m`), 0 when the lab
// runs as root.
func HostPID() int { return hostPID }

// readHostPID reads the first (outermost) pid of NSpid in
// /proc/self/status (proc_pid_status(5)), or os.Getpid() without one.
func readHostPID() int {
	b, err := os.ReadFile("/proc/self/status")
	if err == nil {
		for line := range strings.Lines(string(b)) {
			if f := strings.Fields(line); len(f) > 1 && f[0] == "NSpid:" {
				if pid, err := strconv.Atoi(f[1]); err == nil {
					return pid
				}
			}
		}
	}
	return os.Getpid()
}

// childUIDMap reports whether uidMap (/proc/self/uid_map) is the one
// runChild writes: uid 0 and nothing else, mapped to some uid outside.
func childUIDMap(uidMap string) bool {
	f := strings.Fields(uidMap)
	return len(f) == 3 && f[0] == "0" && f[2] == "1"
}

func childSetupError(what string, err error) error {
	return &unprivError{missing: []string{"in the user namespace, " + what + ": " + err.Error()}}
}

// labRunDirs are the directories of /run the lab's processes write: `ip
// netns add` (netns), holdfast's admin sockets (holdfast), keepalived's
// state (keepalived). The child gets them empty and its own.
var labRunDirs = []string{"netns", "holdfast", "keepalived"}

// privateRun gives the child a /run of its own: the host's is root's, and
// its root is not the host's. A tmpfs covers /run and brings back the host's
// entries but the lab's (labRunDirs) and regular files (pid files and locks
// such as xtables.lock, which the lab's processes must be able to write),
// then holds an empty /run/netns. /var/run/netns, where ip(8) and
// vishvananda/netns may look instead, is made the same directory.
func privateRun() error {
	if err := shadowRun(); err != nil {
		return err
	}
	if err := os.Mkdir("/run/netns", 0o755); err != nil {
		return childSetupError("creating /run/netns", err)
	}
	run, err := os.Stat("/run/netns")
	if err != nil {
		return childSetupError("reading /run/netns", err)
	}
	if v, err := os.Stat("/var/run/netns"); err == nil && !os.SameFile(run, v) {
		if err := syscall.Mount("/run/netns", "/var/run/netns", "", syscall.MS_BIND, ""); err != nil {
			return childSetupError("binding /run/netns on /var/run/netns", err)
		}
	}
	return nil
}

// shadowRun mounts a tmpfs on /run and brings back the entries of the old
// /run that privateRun keeps: directories and sockets by bind mounts (with
// what is mounted below them), symlinks as copies (rootlesskit's "copy-up"
// does the same). An entry that cannot be brought back is left out.
func shadowRun() error {
	old, err := os.Open("/run")
	if err != nil {
		return childSetupError("opening /run", err)
	}
	defer old.Close()
	entries, err := old.ReadDir(-1)
	if err != nil {
		return childSetupError("reading /run", err)
	}
	if err := syscall.Mount("tmpfs", "/run", "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode=0755"); err != nil {
		return childSetupError("mounting a tmpfs on /run", err)
	}
	// The descriptor still reaches the covered /run.
	oldDir := fmt.Sprintf("/proc/self/fd/%d", old.Fd())
	for _, e := range entries {
		if !keepRunEntry(e.Name(), e.Type()) {
			continue
		}
		src, dst := filepath.Join(oldDir, e.Name()), filepath.Join("/run", e.Name())
		switch {
		case e.Type()&fs.ModeSymlink != 0:
			if target, err := os.Readlink(src); err == nil {
				os.Symlink(target, dst) //nolint:errcheck // left out
			}
		case e.IsDir():
			if os.Mkdir(dst, 0o755) == nil {
				syscall.Mount(src, dst, "", syscall.MS_BIND|syscall.MS_REC, "") //nolint:errcheck // left out
			}
		default:
			if f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); err == nil {
				f.Close()
				syscall.Mount(src, dst, "", syscall.MS_BIND|syscall.MS_REC, "") //nolint:errcheck // left out
			}
		}
	}
	return nil
}

// keepRunEntry reports whether shadowRun brings back the host's /run/name of
// type typ (fs.DirEntry.Type).
func keepRunEntry(name string, typ fs.FileMode) bool {
	if typ.IsRegular() {
		return false
	}
	return !(typ.IsDir() && slices.Contains(labRunDirs, name))
}
