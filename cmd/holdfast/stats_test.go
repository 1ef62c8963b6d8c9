package main

import (
	"bytes"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"holdfast/daemon/adminapi"
)

// TestStatRows: every shape of /stats becomes rows, sorted by name, and
// only counters (names ending in _total, a histogram's count and sum) can
// have a rate.
func TestStatRows(t *testing.T) {
	st := map[string]any{
		"director":            map[string]any{"pid": 1.0},
		"flows_created_total": 12.0,
		"recoveries_inflight": 2.0,
		"drops_total":         map[string]any{"truncated": 1.0, "no_service": 0.0},
		"flows":               map[string]any{"plain/ESTABLISHED": 3.0},
		"recovery_seconds":    map[string]any{"count": 4.0, "sum": 0.5, "buckets": map[string]any{"0.001": 1.0}},
	}
	want := []statRow{
		{"drops_total{no_service}", 0, true},
		{"drops_total{truncated}", 1, true},
		{"flows_created_total", 12, true},
		{"flows{plain/ESTABLISHED}", 3, false},
		{"recoveries_inflight", 2, false},
		{"recovery_seconds{count}", 4, true},
		{"recovery_seconds{sum}", 0.5, true},
	}
	if got := statRows(st); !slices.Equal(got, want) {
		t.Errorf("statRows\n got %v\nwant %v", got, want)
	}
}

func TestStatRates(t *testing.T) {
	prev := []statRow{{"a_total", 10, true}, {"b_total", 50, true}, {"flows", 3, false}}
	cur := []statRow{{"a_total", 30, true}, {"b_total", 5, true}, {"flows", 9, false}, {"new_total", 7, true}}
	// a: 20 in 2 s; b went down (a restart): no rate; a gauge and a
	// counter new in cur have none either.
	want := map[string]float64{"a_total": 10}
	if got := statRates(prev, cur, 2*time.Second); !maps.Equal(got, want) {
		t.Errorf("statRates = %v, want %v", got, want)
	}
	if got := statRates(nil, cur, time.Second); got != nil {
		t.Errorf("statRates without a first sample = %v, want none", got)
	}
}

// TestStatsTable: the director line first, then the non-zero rows with
// their rates, "-" where there is none.
func TestStatsTable(t *testing.T) {
	info := &adminapi.Info{ID: 1, PID: 7, TUN: "hf0", NetNS: 9, Version: "test"}
	rows := []statRow{
		{"drops_total{no_service}", 0, true},
		{"drops_total{truncated}", 3, true},
		{"flows_created_total", 1200, true},
		{"flows{plain/ESTABLISHED}", 40, false},
		{"recovery_seconds{sum}", 0.25, true},
	}
	var b bytes.Buffer
	if err := writeStatsTable(&b, info, rows, map[string]float64{"flows_created_total": 150, "drops_total{truncated}": 0.5}); err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"director 1  pid 7  tun hf0  netns 9  up 0s  version test",
		"COUNTER                   VALUE  PER-SECOND",
		"drops_total{truncated}        3        0.50",
		"flows_created_total        1200         150",
		"flows{plain/ESTABLISHED}     40           -",
		"recovery_seconds{sum}      0.25           -",
		"",
	}, "\n")
	if got := b.String(); got != want {
		t.Errorf("table\n%s\nwant\n%s", got, want)
	}
}
