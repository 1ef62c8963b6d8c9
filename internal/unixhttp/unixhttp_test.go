package unixhttp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"holdfast/internal/netnstest"

	"github.com/rs/zerolog"
)

func TestPeerAllowed(t *testing.T) {
	for _, tc := range []struct {
		name        string
		peer, owner int
		want        bool
	}{
		{"root calls a root server", 0, 0, true},
		{"root calls a user's server", 0, 1000, true},
		{"the server's user", 1000, 1000, true},
		{"another user", 1001, 1000, false},
		{"a user calls a root server", 1000, 0, false},
		{"nobody (an unmapped uid)", 65534, 1000, false},
	} {
		if got := PeerAllowed(tc.peer, tc.owner); got != tc.want {
			t.Errorf("%s: PeerAllowed(%d, %d) = %v, want %v", tc.name, tc.peer, tc.owner, got, tc.want)
		}
	}
}

func TestAbstract(t *testing.T) {
	for path, want := range map[string]bool{
		"@holdfast/hf0":          true,
		"/run/holdfast/hf0.sock": false,
		"holdfast.sock":          false,
		"":                       false,
	} {
		if got := Abstract(path); got != want {
			t.Errorf("Abstract(%q) = %v, want %v", path, got, want)
		}
	}
}

// abstractName is an abstract socket name no other test run uses.
func abstractName(t *testing.T) string {
	return fmt.Sprintf("@holdfast-test/%d/%s", os.Getpid(), t.Name())
}

func okHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { WriteJSON(w, "ok") })
}

func get(t *testing.T, path string) (string, error) {
	t.Helper()
	c := NewClient(path)
	defer c.HTTP.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var out string
	err := c.Do(ctx, "GET", "/", nil, &out)
	return out, err
}

// TestServeAbstract: an abstract socket leaves no file, a second listener
// on its name is ErrInUse, the server's own user is served, and the name
// is free again once stopped.
func TestServeAbstract(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir) // a file made by mistake would land here
	path := abstractName(t)
	stop, err := Serve(path, okHandler(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Serve(path, okHandler(), zerolog.Nop()); !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), path) {
		t.Fatalf("second Serve on %s: %v, want ErrInUse naming the socket", path, err)
	}
	if out, err := get(t, path); err != nil || out != "ok" {
		t.Fatalf("GET: %q, %v", out, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("an abstract socket made files: %v", ents)
	}
	stop()
	if _, err := get(t, path); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("GET after stop: %v, want ErrUnreachable", err)
	}
	stop, err = Serve(path, okHandler(), zerolog.Nop())
	if err != nil {
		t.Fatalf("Serve again after stop: %v", err)
	}
	stop()
}

// TestServeFile: a socket file is the running user's (0600), a leftover
// of a killed process is replaced, and stop removes the file.
func TestServeFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "admin.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // a killed process's leftover file
	stop, err := Serve(path, okHandler(), zerolog.Nop())
	if err != nil {
		t.Fatalf("Serve over a leftover: %v", err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket file: %v, %v", st, err)
	}
	if _, err := Listen(path); !errors.Is(err, ErrInUse) {
		t.Fatalf("Listen on a live socket: %v, want ErrInUse", err)
	}
	if out, err := get(t, path); err != nil || out != "ok" {
		t.Fatalf("GET: %q, %v", out, err)
	}
	stop()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file after stop: %v", err)
	}
}

// TestServeAbstractRefusesOtherUsers: a caller that is neither root nor
// the server's user gets a 403 that says why. The caller connects from a
// thread of its own whose uid alone is changed (setresuid(2) as a raw
// syscall is per thread; SO_PEERCRED records the connecting thread's
// credentials), which needs root.
func TestServeAbstractRefusesOtherUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to set another uid on the connecting thread (CI runs as root)")
	}
	path := abstractName(t)
	stop, err := Serve(path, okHandler(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	type dialed struct {
		c   net.Conn
		err error
	}
	ch := make(chan dialed, 1)
	go func() {
		// The thread keeps the changed uid: it stays locked, and the
		// runtime discards it when this goroutine ends.
		runtime.LockOSThread()
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESUID, 65534, 65534, 65534); e != 0 {
			ch <- dialed{err: fmt.Errorf("setresuid: %w", e)}
			return
		}
		c, err := net.Dial("unix", path)
		ch <- dialed{c, err}
	}()
	d := <-ch
	if d.err != nil {
		t.Fatal(d.err)
	}
	defer d.c.Close()
	d.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprint(d.c, "GET / HTTP/1.1\r\nHost: unix\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(d.c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body := make([]byte, 512)
	n, _ := resp.Body.Read(body)
	want := fmt.Sprintf("uid 65534 may not call this server (root or uid %d only)", os.Geteuid())
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body[:n]), want) {
		t.Fatalf("another user's call: %s %q, want 403 %q", resp.Status, body[:n], want)
	}
	// Root is still served.
	if out, err := get(t, path); err != nil || out != "ok" {
		t.Fatalf("GET as root: %q, %v", out, err)
	}
}

// TestAbstractPerNetNS: the same abstract name can be taken once per
// network namespace, and a client reaches its own namespace's server:
// what makes the default admin socket per namespace.
func TestAbstractPerNetNS(t *testing.T) {
	path := abstractName(t)
	outer, err := Serve(path, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { WriteJSON(w, "outer") }), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer outer()
	netnstest.Enter(t) // skips without root
	inner, err := Serve(path, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { WriteJSON(w, "inner") }), zerolog.Nop())
	if err != nil {
		t.Fatalf("the same abstract name in another network namespace: %v", err)
	}
	defer inner()
	// The client dials from this (locked, namespaced) goroutine: the HTTP
	// transport dials on other threads, in the outer namespace, so dial
	// by hand here.
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: unix\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b := make([]byte, 64)
	n, _ := resp.Body.Read(b)
	if got := strings.TrimSpace(string(b[:n])); got != `"inner"` {
		t.Fatalf("a client in the inner namespace reached %s", got)
	}
}
