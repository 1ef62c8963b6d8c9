package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"holdfast/daemon"
	"holdfast/daemon/adminapi"
	"holdfast/nat"
	"holdfast/stack/tun/tuntest"

	"github.com/rs/zerolog"
)

// TestServiceDumpRoundTrip: a director run from a --config file, changed
// at runtime (a weight, a real added, one removed); holdfast service dump
// prints a file that the --config parser reads back as the services that
// run, cookie ids included, and a service whose reals were all removed.
func TestServiceDumpRoundTrip(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "in.json")
	const vip = "198.18.100.1"
	in := `{"services":[
  {"service":"tcp:` + vip + `:80","scheduler":"rr","persistence":"30m","check":"http:/healthz=204",
   "reals":["198.18.10.11:80","198.18.10.12:80*2","198.18.10.13:80,id=5"]},
  {"service":"udp:` + vip + `:53","scheduler":"sh","reals":["198.18.10.11:53"]}]}`
	if err := os.WriteFile(file, []byte(in), 0o600); err != nil {
		t.Fatal(err)
	}
	svcs, err := loadConfigFile(file)
	if err != nil {
		t.Fatal(err)
	}
	sock := fmt.Sprintf("@holdfast-test/%d/dump", os.Getpid())
	// READY=1: the director serves, its admin socket is up.
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "notify"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	cfg := daemon.Config{
		Services: svcs, Device: tuntest.NewMemDevice("mem0", 1), MTU: 1500,
		Timeouts: nat.NewTimeouts(15*time.Minute, 2*time.Minute, 5*time.Minute), MaxFlows: 100,
		Recovery:    daemon.Recovery{CookieBits: 4},
		AdminSocket: sock, NotifySocket: filepath.Join(dir, "notify"),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- daemon.Run(ctx, cfg, zerolog.Nop()) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	cl := adminapi.NewClient(sock)
	defer cl.Close()
	notify.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := notify.Read(make([]byte, 256)); err != nil {
		t.Fatalf("no READY=1: %v", err)
	}
	var running []adminapi.Service
	for _, ch := range []adminapi.RealChange{
		{Op: "weight", Service: "tcp:" + vip + ":80", Real: "198.18.10.12:80", Weight: 0},
		{Op: "add", Service: "tcp:" + vip + ":80", Real: "198.18.10.14:80*3"},
		{Op: "remove", Service: "tcp:" + vip + ":80", Real: "198.18.10.11:80"},
		{Op: "remove", Service: "udp:" + vip + ":53", Real: "198.18.10.11:53"}, // its only real: "reals": []
	} {
		if running, err = cl.ChangeReal(context.Background(), ch); err != nil {
			t.Fatalf("%+v: %v", ch, err)
		}
	}

	out, err := runCLI(t, "service", "dump", "--admin-socket", sock)
	if err != nil {
		t.Fatalf("service dump: %v\n%s", err, out)
	}
	dumped := filepath.Join(dir, "dump.json")
	if err := os.WriteFile(dumped, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	back, err := loadConfigFile(dumped)
	if err != nil {
		t.Fatalf("the dump is not a valid --config file: %v\n%s", err, out)
	}
	want := "tcp:" + vip + ":80 rr p=30m0s check 198.18.10.12:80*0 198.18.10.13:80*1 198.18.10.14:80*3; udp:" + vip + ":53 sh"
	if got := describe(back); got != want {
		t.Errorf("dump read back:\n%s\nwant\n%s\ndump:\n%s", got, want, out)
	}
	if got := back[0].Check.String(); got != "http:/healthz=204" {
		t.Errorf("check read back %q", got)
	}
	// Every real's cookie id is in the file, as the director has it.
	ids := map[string]uint16{}
	for _, s := range running {
		for _, r := range s.Reals {
			if !r.Removed {
				ids[s.Service+" "+r.Addr.String()] = r.CookieID
			}
		}
	}
	for _, s := range back {
		for _, r := range s.Reals {
			k := s.String() + " " + r.Addr.String()
			if !r.CookieIDSet || r.CookieID != ids[k] || r.CookieID == 0 {
				t.Errorf("%s: cookie id %d (given %v), running %d", k, r.CookieID, r.CookieIDSet, ids[k])
			}
		}
	}
	if !strings.HasPrefix(out, "{\n  \"services\": [") {
		t.Errorf("dump not indented JSON:\n%s", out)
	}
}
