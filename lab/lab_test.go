package lab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestPatternIsFixed(t *testing.T) {
	a, _ := io.ReadAll(Pattern(100_000))
	b, _ := io.ReadAll(Pattern(100_000))
	if len(a) != 100_000 || !bytes.Equal(a, b) {
		t.Fatalf("Pattern(100000): len %d, equal to a second read: %v", len(a), bytes.Equal(a, b))
	}
	short, _ := io.ReadAll(Pattern(1000))
	if !bytes.Equal(short, a[:1000]) {
		t.Fatal("Pattern(1000) is not a prefix of Pattern(100000)")
	}
	sum := sha256.Sum256(a)
	if got, want := PatternSHA256(100_000), hex.EncodeToString(sum[:]); got != want {
		t.Fatalf("PatternSHA256 = %s, want %s", got, want)
	}
	if PatternSHA256(100_000) == PatternSHA256(99_999) {
		t.Fatal("PatternSHA256 ignores the length")
	}
}

func TestHTTPHandler(t *testing.T) {
	var c Counters
	srv := httptest.NewServer(HTTPHandler("rs7", &c))
	defer srv.Close()

	get := func(path string) (*http.Response, []byte) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, body
	}

	resp, body := get("/")
	if resp.StatusCode != 200 || resp.Header.Get(RealHeader) != "rs7" || string(body) != "rs7\n" {
		t.Errorf("GET /: %d %s=%q body %q", resp.StatusCode, RealHeader, resp.Header.Get(RealHeader), body)
	}

	resp, body = get("/bytes?n=70000")
	sum := sha256.Sum256(body)
	if resp.StatusCode != 200 || resp.ContentLength != 70000 || len(body) != 70000 || hex.EncodeToString(sum[:]) != PatternSHA256(70000) {
		t.Errorf("GET /bytes?n=70000: %d, Content-Length %d, %d bytes, sha match %v",
			resp.StatusCode, resp.ContentLength, len(body), hex.EncodeToString(sum[:]) == PatternSHA256(70000))
	}
	for _, bad := range []string{"/bytes", "/bytes?n=-1", "/bytes?n=x", "/bytes?n=1073741825"} {
		if resp, _ := get(bad); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("GET %s: %d, want 400", bad, resp.StatusCode)
		}
	}

	resp, err := http.Post(srv.URL+"/upload", "application/octet-stream", Pattern(50000))
	if err != nil {
		t.Fatal(err)
	}
	var up UploadResult
	err = json.NewDecoder(resp.Body).Decode(&up)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if want := (UploadResult{Real: "rs7", Bytes: 50000, SHA256: PatternSHA256(50000)}); up != want {
		t.Errorf("POST /upload = %+v, want %+v", up, want)
	}
	if got := c.HTTPRequests.Load(); got != 7 {
		t.Errorf("HTTPRequests = %d, want 7", got)
	}
}

func TestServeUDPEcho(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var c Counters
	done := make(chan error, 1)
	go func() { done <- ServeUDPEcho(pc, &c) }()

	conn, err := net.Dial("udp4", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 2000)
	for i := range 20 {
		msg := bytes.Repeat([]byte{byte(i)}, 100+i*50)
		if _, err := conn.Write(msg); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := conn.Read(buf)
		if err != nil || !bytes.Equal(buf[:n], msg) {
			t.Fatalf("echo %d: %d bytes, err %v, equal %v", i, n, err, bytes.Equal(buf[:n], msg))
		}
	}
	if got := c.UDPDatagrams.Load(); got != 20 {
		t.Errorf("UDPDatagrams = %d, want 20", got)
	}
	pc.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ServeUDPEcho after Close = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServeUDPEcho still running 5s after its conn was closed")
	}
}

func TestProcWaitForLine(t *testing.T) {
	p, err := startProc("sh", exec.Command("sh", "-c", `echo two >&2; printf partial >&2; echo one; exec sleep 60`), procOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := p.WaitForLine(ctx, func(l Line) bool { return l.Stderr && l.Text == "two" })
	if err != nil || l != (Line{Stderr: true, Text: "two"}) {
		t.Fatalf("WaitForLine(two) = %+v, %v", l, err)
	}
	// Once "one" is out, the shell has written "partial" too.
	l, err = p.WaitForLine(ctx, func(l Line) bool { return !l.Stderr })
	if err != nil || l != (Line{Stderr: false, Text: "one"}) {
		t.Fatalf("WaitForLine(stdout) = %+v, %v", l, err)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	st, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ws := st.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Errorf("exit state %v, want killed by SIGTERM", st)
	}
	if got, want := p.Stderr(), "two\npartial\n"; got != want {
		t.Errorf("Stderr() = %q, want %q (the unterminated line flushed at exit)", got, want)
	}
	if got, want := p.Stdout(), "one\n"; got != want {
		t.Errorf("Stdout() = %q, want %q", got, want)
	}
	_, err = p.WaitForLine(ctx, func(l Line) bool { return l.Text == "never" })
	if !errors.Is(err, ErrExited) {
		t.Errorf("WaitForLine after exit = %v, want ErrExited", err)
	}
	if err := p.stop(); err != nil {
		t.Errorf("stop after exit = %v", err)
	}
}

func TestProcWaitForLineDeadline(t *testing.T) {
	p, err := startProc("sleep", exec.Command("sleep", "60"), procOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := p.WaitForLine(ctx, func(Line) bool { return true }); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitForLine on a silent process = %v, want DeadlineExceeded", err)
	}
	if err := p.stop(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	default:
		t.Fatal("stop returned with the process still running")
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	for _, tc := range []struct {
		opts Options
		want string
	}{
		{Options{Directors: 3}, "Directors = 3"},
		{Options{Directors: 3, ECMP: true}, "ECMP without BGP"},
		{Options{Directors: 4, BGP: true, ECMP: true}, "Directors = 4"},
		{Options{Reals: 101}, "Reals = 101"},
		{Options{Reals: -1}, "Reals = -1"},
		{Options{DirectorLinkMTU: 9000}, "DirectorLinkMTU = 9000"},
		{Options{Prefix: "a b"}, `Prefix "a b"`},
		{Options{Prefix: "-x"}, `Prefix "-x"`},
	} {
		l, err := New(tc.opts)
		if err == nil {
			l.Close()
			t.Errorf("New(%+v) succeeded", tc.opts)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want it to mention %q", tc.opts, err, tc.want)
		}
	}
}

func TestAlive(t *testing.T) {
	if !alive(os.Getpid()) {
		t.Fatal("alive(own pid) = false")
	}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	if !alive(pid) {
		t.Error("alive(running child) = false")
	}
	cmd.Process.Kill()
	// Wait for the child to die without reaping it (WNOWAIT): a zombie,
	// which counts as gone.
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		t.Fatalf("waitid(%d): %v", pid, err)
	}
	if alive(pid) {
		t.Error("alive(killed, unreaped child) = true")
	}
	cmd.Wait()
	if alive(pid) {
		t.Error("alive(reaped child) = true")
	}
}
