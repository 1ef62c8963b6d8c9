package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"holdfast/daemon/adminapi"
	"holdfast/internal/unixhttp"

	"github.com/rs/zerolog"
)

// TestDefaultAdminSocket: without --admin-socket the socket is abstract
// (scoped by network namespace) and named after the TUN.
func TestDefaultAdminSocket(t *testing.T) {
	for tun, want := range map[string]string{"hf0": "@holdfast/hf0", "tun-a.1": "@holdfast/tun-a.1"} {
		if got := defaultAdminSocket(tun); got != want || !unixhttp.Abstract(got) {
			t.Errorf("defaultAdminSocket(%q) = %q, want the abstract %q", tun, got, want)
		}
	}
}

func TestDirectorLine(t *testing.T) {
	info := &adminapi.Info{ID: 2, PID: 4242, TUN: "hf0", NetNS: 4026532512, Uptime: 192.4, Version: "(devel) 1bc51af0e2d4"}
	want := "director 2  pid 4242  tun hf0  netns 4026532512  up 3m12s  version (devel) 1bc51af0e2d4"
	if got := directorLine(info); got != want {
		t.Errorf("directorLine = %q\nwant %q", got, want)
	}
	info.NetNSName = "hf1-dirB"
	want = "director 2  pid 4242  tun hf0  netns hf1-dirB (4026532512)  up 3m12s  version (devel) 1bc51af0e2d4"
	if got := directorLine(info); got != want {
		t.Errorf("directorLine = %q\nwant %q", got, want)
	}
	if got := directorLine(nil); !strings.HasPrefix(got, "director: unknown") {
		t.Errorf("directorLine(nil) = %q", got)
	}
}

// runCLI runs the holdfast CLI with args and returns its stdout and error.
func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var err error
	out := captureStdout(t, func() { err = newApp().Run(append([]string{"holdfast"}, args...)) })
	return out, err
}

// TestCtlNamesTheDirector: conns, service list and stats say which
// director answered first: a line, or a "director" field of the JSON.
func TestCtlNamesTheDirector(t *testing.T) {
	info := adminapi.Info{ID: 1, PID: 777, TUN: "hf0", NetNS: 4026531840, Started: time.Now(), Version: "test", Socket: "@x"}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+adminapi.PathInfo, func(w http.ResponseWriter, _ *http.Request) { unixhttp.WriteJSON(w, info) })
	mux.HandleFunc("GET "+adminapi.PathConns, func(w http.ResponseWriter, _ *http.Request) {
		unixhttp.WriteJSON(w, []adminapi.Conn{{Proto: "tcp", Client: "198.18.1.1:40000", VIP: "198.18.100.1:80", Real: "198.18.10.11:80", State: "ESTABLISHED", Kind: "plain"}})
	})
	mux.HandleFunc("GET "+adminapi.PathServices, func(w http.ResponseWriter, _ *http.Request) {
		unixhttp.WriteJSON(w, []adminapi.Service{{Service: "tcp:198.18.100.1:80", Scheduler: "rr"}})
	})
	mux.HandleFunc("GET "+adminapi.PathStats, func(w http.ResponseWriter, _ *http.Request) {
		unixhttp.WriteJSON(w, map[string]any{"flows_created_total": 1})
	})
	sock := fmt.Sprintf("@holdfast-test/%d/ctl", os.Getpid())
	stop, err := unixhttp.Serve(sock, mux, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	for _, args := range [][]string{{"conns"}, {"service", "list", "--interval", "10ms"}, {"stats", "--interval", "10ms"}} {
		out, err := runCLI(t, append(args, "--admin-socket", sock)...)
		if err != nil || !strings.HasPrefix(out, "director 1  pid 777  tun hf0  netns 4026531840  up 0s  version test\n") {
			t.Errorf("holdfast %v: %v\n%s", args, err, out)
		}
	}
	// The table: one counter, the same in both samples.
	if out, err := runCLI(t, "stats", "--interval", "10ms", "--admin-socket", sock); err != nil || !strings.HasSuffix(out, "\nflows_created_total      1           0\n") {
		t.Errorf("holdfast stats: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		args []string
		key  string
	}{
		{[]string{"conns", "--json"}, "conns"},
		{[]string{"service", "list", "--json", "--interval", "0"}, "services"},
		{[]string{"stats", "--json"}, "flows_created_total"},
	} {
		out, err := runCLI(t, append(tc.args, "--admin-socket", sock)...)
		var m map[string]json.RawMessage
		var got adminapi.Info
		if err != nil || json.Unmarshal([]byte(out), &m) != nil || json.Unmarshal(m["director"], &got) != nil || got.PID != 777 || m[tc.key] == nil {
			t.Errorf("holdfast %v: %v\n%s", tc.args, err, out)
		}
	}
	// No server in this namespace: the error says where it looked.
	_, err = runCLI(t, "conns", "--tun", "hf-none")
	if err == nil || !strings.Contains(err.Error(), "@holdfast/hf-none") || !strings.Contains(err.Error(), "in this network namespace") {
		t.Errorf("holdfast conns without a director: %v", err)
	}
}
