package lab

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
)

// Where a lab's sockets live (the supervisor's and the directors' admin
// sockets). Root's lab uses /run/holdfast. An ordinary user's lab runs in
// namespaces of its own (userns.go) whose /run is private, so its sockets
// must be in a directory that the user's other shells see too and that
// only the user can enter: $XDG_RUNTIME_DIR/holdfast (systemd-logind makes
// /run/user/UID, mode 0700, for a login session), else, for a user without
// one (su, sudo -u, ssh without pam_systemd, a container), TMPDIR's
// holdfast-UID, as tmux does with /tmp/tmux-UID.

// rootRunDir is root's runtime directory of the lab.
const rootRunDir = "/run/holdfast"

// hostUID is the caller's uid outside the user namespace when this process
// is the re-executed child (setupChild sets it), -1 otherwise.
var hostUID = -1

// RuntimeDir is the directory of the lab's sockets for the user running
// this process (see the comment above); in the unprivileged child it is
// the directory of the user who started it, so that both agree.
func RuntimeDir() string {
	return runtimeDir(os.Geteuid(), hostUID, os.Getenv("XDG_RUNTIME_DIR"), os.TempDir(), privateDirOf(os.Geteuid()))
}

// runtimeDir is RuntimeDir's rule: euid is this process's, host the
// caller's uid outside the user namespace (-1: this process is not the
// child), xdg $XDG_RUNTIME_DIR, tmp the temporary directory, private
// reports whether a directory is one only euid can enter.
func runtimeDir(euid, host int, xdg, tmp string, private func(string) bool) string {
	if euid == 0 && host < 0 {
		return rootRunDir
	}
	uid := euid
	if host >= 0 {
		uid = host
	}
	// su keeps the first user's XDG_RUNTIME_DIR, which is not this user's.
	if filepath.IsAbs(xdg) && private(xdg) {
		return filepath.Join(xdg, "holdfast")
	}
	return filepath.Join(tmp, "holdfast-"+strconv.Itoa(uid))
}

// privateDirOf returns a check that a path is a directory (not a symlink)
// owned by uid and closed to everybody else. In the child, the user's own
// files show as owned by uid 0, which is the child's euid.
func privateDirOf(uid int) func(string) bool {
	return func(dir string) bool { return checkPrivateDir(dir, uid) == nil }
}

func checkPrivateDir(dir string, uid int) error {
	var st syscall.Stat_t
	if err := syscall.Lstat(dir, &st); err != nil {
		return err
	}
	switch {
	case st.Mode&syscall.S_IFMT != syscall.S_IFDIR:
		return fmt.Errorf("%s is not a directory", dir)
	case int(st.Uid) != uid:
		return fmt.Errorf("%s belongs to uid %d, not to this user (uid %d)", dir, st.Uid, uid)
	case st.Mode&0o077 != 0:
		return fmt.Errorf("%s is mode %#o: others may enter it (want 0700)", dir, st.Mode&0o777)
	}
	return nil
}

// EnsureRuntimeDir creates RuntimeDir if it is missing and returns it. An
// ordinary user's directory must be that user's own and mode 0700: in a
// shared /tmp another user could have made it first, to read the sockets
// or put one of theirs in their place.
func EnsureRuntimeDir() (string, error) {
	dir := RuntimeDir()
	if dir == rootRunDir {
		return dir, os.MkdirAll(dir, 0o755)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
		return "", fmt.Errorf("lab: runtime directory: %w", err)
	}
	if err := checkPrivateDir(dir, os.Geteuid()); err != nil {
		return "", fmt.Errorf("lab: refusing the runtime directory: %w", err)
	}
	return dir, nil
}

// SupervisorSocket is the control socket of the lab `holdfast lab up`
// runs for this user: lab.sock in RuntimeDir.
func SupervisorSocket() string { return filepath.Join(RuntimeDir(), "lab.sock") }

// EnterArgv is the command line that runs a command in one of this lab's
// namespaces from the user's shell: append the namespace's name and the
// command. As root that is `ip netns exec`; an unprivileged lab's
// namespaces are named in its own mount namespace, inside its user
// namespace, which nsenter(1) enters first (the user owns both, so needs
// no privilege for it), by the pid the host knows the lab by. The user
// keeps its own uid (--preserve-credentials), which the user namespace
// maps to its root, and its groups: the lab denied setgroups(2) there.
func EnterArgv() []string {
	ip, err := exec.LookPath("ip")
	if err != nil {
		ip = "ip"
	}
	if HostPID() == 0 {
		return []string{"ip", "netns", "exec"}
	}
	return []string{"nsenter", "-t", strconv.Itoa(HostPID()), "-U", "-m", "--preserve-credentials", "--", ip, "netns", "exec"}
}
