package lab

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"holdfast/internal/unixhttp"

	"github.com/rs/zerolog"
)

// A group member's holdfast runs every service with mh (whatever scheduler
// the service arguments had), adoption on and the ECMP timers, after the
// lab's plumbing, and extra comes last (a later --recovery=off wins).
func TestECMPHoldfastArgs(t *testing.T) {
	l := &Lab{ecmp: true, bgp: &bgpState{}}
	d := &Director{NS: &NS{Name: "hfx-dirB", Role: "dirB", lab: l}, Label: "B", ID: 2, RSIface: DirectorRSIface}
	bgpAddrs(d)
	services := []string{"--service", "tcp:198.18.100.1:80", "--scheduler", "rr", "--real", "198.18.10.11:80",
		"--service", "udp:198.18.100.1:5353", "--scheduler", "wrr", "--real", "198.18.10.11:5353"}
	args := ECMPHoldfastArgs(d, services, "--recovery=off")
	if args[0] != "run" || args[len(args)-1] != "--recovery=off" {
		t.Errorf("args %q: want run first and extra last", args)
	}
	var scheds []string
	for i, a := range args {
		if a == "--scheduler" {
			scheds = append(scheds, args[i+1])
		}
	}
	if !slices.Equal(scheds, []string{"mh", "mh"}) {
		t.Errorf("schedulers %q, want mh for both services", scheds)
	}
	joined := strings.Join(args, " ")
	for _, want := range []string{"--adoption on", "--director-id 2",
		"--recovery-addr 198.18.200.2", "--bgp-med 10", "--bgp-peer 198.18.12.1", "--bgp-real-peer 198.18.20.1"} {
		if !strings.Contains(joined, want) {
			t.Errorf("args %q: no %q", joined, want)
		}
	}
	if services[3] != "rr" {
		t.Errorf("ECMPHoldfastArgs changed its caller's services: %q", services)
	}
}

func TestParseDirector(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
		ok   bool
	}{
		{"A", "A", true}, {"c", "C", true}, {"1", "A", true}, {"3", "C", true},
		{"D", "", false}, {"4", "", false}, {"0", "", false}, {"AB", "", false}, {"", "", false}, {"-f", "", false},
	} {
		if got, ok := ParseDirector(tc.in); got != tc.want || ok != tc.ok {
			t.Errorf("ParseDirector(%q) = %q, %v; want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestNextHopsString(t *testing.T) {
	if got := (NextHops{ClientSide: []string{"A", "B"}, RealSide: []string{"A", "B"}}).String(); got != "2 (A, B)" {
		t.Errorf("same next hops: %q", got)
	}
	if got := (NextHops{ClientSide: []string{"B"}, RealSide: []string{"A", "B"}}).String(); got != "1 (B) client side, 2 (A, B) real side" {
		t.Errorf("different next hops: %q", got)
	}
}

// lab kill, start and leave reach the supervisor by POST /COMMAND/LABEL
// and pass its refusals through: not an ECMP lab, no such director, a
// director whose holdfast is not running, or runs already.
func TestAskDirectorRefusals(t *testing.T) {
	a, b := &Director{Label: "A", ID: 1}, &Director{Label: "B", ID: 2}
	for _, tc := range []struct {
		name    string
		ecmp    bool
		command string
		label   string
		want    string
	}{
		{"pair", false, AskKill, "A", "lab kill is for an ECMP lab (holdfast lab up --bgp --ecmp); in this one use holdfast lab failover"},
		{"no such director", true, AskLeave, "C", "this lab has no director C (it has A (1), B (2))"},
		{"not running", true, AskKill, "A", "director A's holdfast is not running (holdfast lab start A)"},
		{"leave not running", true, AskLeave, "B", "director B's holdfast is not running (holdfast lab start B)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "lab.sock")
			s := &Supervisor{l: &Lab{Directors: []*Director{a, b}}, ecmp: tc.ecmp,
				dirs: make([]*Proc, 2), unplugged: make([]bool, 2), leaving: make([]bool, 2),
				down: make(chan struct{}), gone: make(chan struct{})}
			stop, err := unixhttp.Serve(sock, s.handler(), zerolog.Nop())
			if err != nil {
				t.Fatal(err)
			}
			defer stop()
			if _, err := AskDirector(context.Background(), sock, tc.command, tc.label); err == nil || err.Error() != tc.want {
				t.Errorf("AskDirector(%s %s) = %v, want %q", tc.command, tc.label, err, tc.want)
			}
		})
	}
	if _, err := AskDirector(context.Background(), "/nonexistent", AskStatus, "A"); err == nil || !strings.Contains(err.Error(), `"status"`) {
		t.Errorf("AskDirector(status) = %v, want a refusal naming the command", err)
	}
	if _, err := Ask(context.Background(), "/nonexistent", AskKill); err == nil || !strings.Contains(err.Error(), `"kill"`) {
		t.Errorf("Ask(kill) = %v, want a refusal: kill names a director (AskDirector)", err)
	}
}
