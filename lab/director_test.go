package lab

import (
	"context"
	"net/http"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"holdfast/internal/unixhttp"

	"github.com/rs/zerolog"
)

// statsSample is a /stats answer in the contract's shape (the Prometheus
// names without "holdfast_"), with counters the lab does not read.
const statsSample = `{
  "flows": {"plain/established": 3, "recovered/established": 1, "adopted/fin_wait": 2},
  "flows_created_total": 12,
  "flows_reused_total": 1,
  "recoveries_started_total": 5,
  "recoveries_succeeded_total": 4,
  "recoveries_failed_total": {"refused": 1, "timeout": 0, "no_real": 0, "error": 0},
  "recovery_latency_seconds": {"count": 4, "sum": 0.002, "buckets": {"0.0005": 1, "0.001": 4}},
  "adoptions_total": 2,
  "adoption_aborted_dials_total": 1,
  "client_resets_total": 1,
  "stale_flows_total": 6,
  "old_real_resets_total": 3,
  "misses_total": 0, "recoveries_inflight": 0, "cookie_steers_total": 0, "cookie_steers_confirmed_total": 0, "probe_steers_total": 0,
  "challenges_sent_total": 0, "challenges_passed_total": 0, "challenges_reset_total": 0, "icmp_errors_translated_total": 2,
  "drops_total": {"no_flow": 3, "recovery_rate": 7},
  "packets_total": {"forward": 100, "to_stack": 4},
  "device_queue_packets_read_total": {"2": 30, "0": 100, "10": 7, "1": 50, "3": 0, "4": 1, "5": 1, "6": 1, "7": 1, "8": 1, "9": 1}
}`

func TestDecodeStats(t *testing.T) {
	got, err := decodeStats([]byte(statsSample))
	if err != nil {
		t.Fatal(err)
	}
	want := DirectorStats{
		Flows: 6, FlowsCreated: 12, RecoveryStarted: 5, Recovered: 4, Adopted: 2, AdoptAborts: 1,
		ClientResets: 1, StaleFlows: 6, OldRealResets: 3, ICMPTranslated: 2,
		RecoveryFailed: map[string]int{"refused": 1, "timeout": 0, "no_real": 0, "error": 0},
		Drops:          map[string]uint64{"no_flow": 3, "recovery_rate": 7},
		// By queue number, not by the keys' text order ("10" after "9").
		ReadByQueue: []uint64{100, 50, 30, 0, 1, 1, 1, 1, 1, 1, 7},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("decodeStats =\n%+v\nwant\n%+v", got, want)
	}
	if got.Failed() != 1 {
		t.Errorf("Failed() = %d, want 1", got.Failed())
	}
}

func TestDecodeStatsRejects(t *testing.T) {
	for _, tc := range []struct {
		name, from, to, want string
	}{
		{"a renamed counter", `"adoptions_total"`, `"adopted"`, `no "adoptions_total"`},
		{"the old flows number", `"flows": {"plain/established": 3, "recovered/established": 1, "adopted/fin_wait": 2}`, `"flows": 6`, "flows:"},
		{"a gap in the queues", `"3": 0`, `"11": 0`, `queue "11" of 11`},
		{"a queue that is no number", `"3": 0`, `"q3": 0`, `queue "q3"`},
		{"a queue with a leading zero", `"3": 0`, `"03": 0`, `queue "03"`},
		{"not JSON", `{`, `[`, "director stats"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := strings.Replace(statsSample, tc.from, tc.to, 1)
			if in == statsSample {
				t.Fatalf("%q not in the sample", tc.from)
			}
			if _, err := decodeStats([]byte(in)); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("decodeStats = %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// readStats GETs /stats on the admin socket.
func TestReadStatsFromAdminSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "admin.sock")
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(statsSample))
	})
	stop, err := unixhttp.Serve(sock, mux, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	s, err := readStats(context.Background(), sock)
	if err != nil || s.Flows != 6 || s.Recovered != 4 || len(s.ReadByQueue) != 11 {
		t.Errorf("readStats = %+v, %v", s, err)
	}
	if _, err := readStats(context.Background(), filepath.Join(t.TempDir(), "none.sock")); err == nil || !strings.Contains(err.Error(), "GET /stats") {
		t.Errorf("readStats with no director = %v, want an error naming GET /stats", err)
	}
}
