package lab

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Root's lab lives in /run/holdfast; an ordinary user's in its own
// XDG_RUNTIME_DIR if it has one, else in TMPDIR's holdfast-UID; the
// unprivileged child (euid 0, host uid known) picks what its user did.
func TestRuntimeDir(t *testing.T) {
	for _, tc := range []struct {
		name      string
		euid, uid int
		xdg       string
		want      string
	}{
		{"root", 0, -1, "/run/user/0", "/run/holdfast"},
		{"a user with a login session", 1000, -1, "/run/user/1000", "/run/user/1000/holdfast"},
		{"a user without one (no logind)", 1000, -1, "", "/tmp/holdfast-1000"},
		{"su keeps another user's XDG_RUNTIME_DIR", 1001, -1, "/run/user/1000", "/tmp/holdfast-1001"},
		{"a relative XDG_RUNTIME_DIR is ignored", 1000, -1, "run/user/1000", "/tmp/holdfast-1000"},
		{"the child of a user with a session", 0, 1000, "/run/user/1000", "/run/user/1000/holdfast"},
		{"the child of a user without one", 0, 65534, "", "/tmp/holdfast-65534"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The user's own is /run/user/UID (the child sees it as its euid's).
			user := tc.euid
			if tc.uid >= 0 {
				user = tc.uid
			}
			owns := func(dir string) bool { return dir == "/run/user/"+strconv.Itoa(user) }
			if got := runtimeDir(tc.euid, tc.uid, tc.xdg, "/tmp", owns); got != tc.want {
				t.Errorf("runtimeDir = %q, want %q", got, tc.want)
			}
		})
	}
}

// Only a directory of this user's, closed to others, is private: not one
// open to others, another user's, or a symlink to a private one.
func TestCheckPrivateDir(t *testing.T) {
	base := t.TempDir()
	uid := os.Geteuid()
	mk := func(name string, mode os.FileMode) string {
		dir := filepath.Join(base, name)
		if err := os.Mkdir(dir, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, mode); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	private := mk("private", 0o700)
	if err := checkPrivateDir(private, uid); err != nil {
		t.Errorf("checkPrivateDir(0700, own) = %v", err)
	}
	if err := checkPrivateDir(mk("open", 0o755), uid); err == nil || !strings.Contains(err.Error(), "mode 0755: others may enter it") {
		t.Errorf("checkPrivateDir(0755) = %v", err)
	}
	if err := checkPrivateDir(private, uid+1); err == nil || !strings.Contains(err.Error(), "not to this user") {
		t.Errorf("checkPrivateDir(another user's) = %v", err)
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink(private, link); err != nil {
		t.Fatal(err)
	}
	if err := checkPrivateDir(link, uid); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("checkPrivateDir(symlink) = %v", err)
	}
}

func TestReadHostPID(t *testing.T) {
	if got := readHostPID(); got != os.Getpid() {
		t.Errorf("readHostPID() = %d outside any PID namespace of ours, want os.Getpid() %d", got, os.Getpid())
	}
}
