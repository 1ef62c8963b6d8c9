package main

import (
	"bytes"
	"encoding/json"
	"maps"
	"net/netip"
	"strings"
	"testing"
	"time"

	"holdfast/daemon/adminapi"
)

var (
	rsA = netip.MustParseAddrPort("198.18.10.11:80")
	rsB = netip.MustParseAddrPort("198.18.10.12:80")
	rsC = netip.MustParseAddrPort("198.18.10.13:80")
)

func sample(a, b adminapi.Real) []adminapi.Service {
	return []adminapi.Service{{Service: "tcp:198.18.100.1:80", Scheduler: "rr", Reals: []adminapi.Real{a, b}}}
}

// TestRealRates: the rates of ipvsadm --rate from two samples; a real
// that is new, or whose counters went down, has none.
func TestRealRates(t *testing.T) {
	prev := sample(
		adminapi.Real{Addr: rsA, Conns: 10, PacketsIn: 100, PacketsOut: 80, BytesIn: 1000, BytesOut: 8000},
		adminapi.Real{Addr: rsB, Conns: 50},
	)
	cur := sample(
		adminapi.Real{Addr: rsA, Conns: 30, PacketsIn: 140, PacketsOut: 100, BytesIn: 3000, BytesOut: 48000},
		adminapi.Real{Addr: rsB, Conns: 3},
	)
	cur[0].Reals = append(cur[0].Reals, adminapi.Real{Addr: rsC, Conns: 1})
	want := map[realKey]realRate{
		{"tcp:198.18.100.1:80", rsA}: {Conns: 10, PacketsIn: 20, PacketsOut: 10, BytesIn: 1000, BytesOut: 20000},
	}
	if got := realRates(prev, cur, 2*time.Second); !maps.Equal(got, want) {
		t.Errorf("realRates = %v, want %v", got, want)
	}
	if got := realRates(nil, cur, time.Second); got != nil {
		t.Errorf("realRates without a first sample = %v", got)
	}
}

// TestServicesTable: per real its connections, their rate ("-": none) and
// its bytes, as ipvsadm --stats and --rate show them.
func TestServicesTable(t *testing.T) {
	svcs := sample(
		adminapi.Real{Addr: rsA, Weight: 1, Active: 2, Inactive: 1, Conns: 30, PacketsIn: 140, PacketsOut: 100, BytesIn: 3000, BytesOut: 48000, CookieID: 3},
		adminapi.Real{Addr: rsB, Weight: 0, Down: true, Conns: 3},
	)
	var b bytes.Buffer
	if err := writeServices(&b, svcs, map[realKey]realRate{{svcs[0].Service, rsA}: {Conns: 2.5}}); err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"tcp:198.18.100.1:80  scheduler rr  persistence 0s",
		"  REAL             WEIGHT  COOKIE  HEALTH  ACTIVE  INACTIVE  CONNS  CONNS/S  PACKETS-IN  PACKETS-OUT  BYTES-IN  BYTES-OUT",
		"  198.18.10.11:80  1       3       up      2       1         30     2.50     140         100          3000      48000",
		"  198.18.10.12:80  0       -       down    0       0         3      -        0           0            0         0",
		"",
	}, "\n")
	if got := b.String(); got != want {
		t.Errorf("table\n%s\nwant\n%s", got, want)
	}
}

// TestServicesJSONRates: service list --json is the API's services, each
// real with a "rate" object when there are two samples.
func TestServicesJSONRates(t *testing.T) {
	svcs := sample(adminapi.Real{Addr: rsA, Conns: 30}, adminapi.Real{Addr: rsB})
	out, err := json.Marshal(withRates(svcs, map[realKey]realRate{{svcs[0].Service, rsA}: {Conns: 2, BytesIn: 100}}))
	if err != nil {
		t.Fatal(err)
	}
	var got []struct {
		Service string `json:"service"`
		Reals   []struct {
			Addr  string          `json:"addr"`
			Conns uint64          `json:"conns"`
			Rate  json.RawMessage `json:"rate"`
		} `json:"reals"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Service != svcs[0].Service || len(got[0].Reals) != 2 ||
		got[0].Reals[0].Conns != 30 || string(got[0].Reals[0].Rate) != `{"conns_per_s":2,"packets_in_per_s":0,"packets_out_per_s":0,"bytes_in_per_s":100,"bytes_out_per_s":0}` ||
		got[0].Reals[1].Rate != nil {
		t.Errorf("service list JSON %s", out)
	}
}
