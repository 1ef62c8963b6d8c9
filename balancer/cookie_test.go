package balancer

import (
	"net/netip"
	"strings"
	"testing"
)

func TestDerivedCookieID(t *testing.T) {
	tests := []struct {
		addr string
		k    int
		want uint16
	}{
		// (0x0a0b + 80) mod 15 + 1 = (2571 + 80) mod 15 + 1 = 2651 mod 15 + 1 = 12
		{"198.18.10.11:80", 4, 12},
		{"198.18.10.12:80", 4, 13},
		{"198.18.10.13:80", 4, 14},
		{"198.18.10.14:80", 4, 15},
		{"198.18.10.15:80", 4, 1}, // wraps past 2^k-1, never 0
		{"198.18.10.11:81", 4, 13},
		{"[2001:db8::a0b]:80", 4, 12}, // IPv6: the low 16 bits too
		{"198.18.10.11:80", 1, 1},
		{"198.18.10.11:80", 9, (2571+80)%511 + 1},
	}
	for _, tt := range tests {
		if got := DerivedCookieID(netip.MustParseAddrPort(tt.addr), tt.k); got != tt.want {
			t.Errorf("DerivedCookieID(%s, %d) = %d, want %d", tt.addr, tt.k, got, tt.want)
		}
	}
	// Consecutive addresses get distinct ids, 2^k-1 of them.
	seen := map[uint16]bool{}
	for i := range 15 {
		a := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(1 + i)}), 8080)
		id := DerivedCookieID(a, 4)
		if id < 1 || id > 15 || seen[id] {
			t.Fatalf("address %s: id %d (seen %v)", a, id, seen)
		}
		seen[id] = true
	}
}

func svcOf(t *testing.T, reals ...string) *Service {
	t.Helper()
	s, err := ServiceConfig{Service: "tcp:198.18.0.10:80", Reals: reals}.Build()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestAssignCookieIDs(t *testing.T) {
	s := svcOf(t, "198.18.10.11:80", "198.18.10.12:80,id=3", "198.18.10.13:80")
	if n, err := AssignCookieIDs(s, 4); err != nil || n != 0 {
		t.Fatalf("AssignCookieIDs = %d, %v", n, err)
	}
	for i, want := range []uint16{12, 3, 14} {
		if got := s.Reals[i].CookieID; got != want {
			t.Errorf("real %d: id %d, want %d", i, got, want)
		}
	}
	if !s.Reals[1].CookieIDSet || s.Reals[0].CookieIDSet {
		t.Errorf("CookieIDSet: %v %v", s.Reals[0].CookieIDSet, s.Reals[1].CookieIDSet)
	}
	// k = 0: no ids, explicit ones kept for a later k.
	if _, err := AssignCookieIDs(s, 0); err != nil || s.Reals[0].CookieID != 0 || s.Reals[1].CookieID != 0 {
		t.Fatalf("k = 0: %v %d %d", err, s.Reals[0].CookieID, s.Reals[1].CookieID)
	}

	// A collision names both reals and the way out.
	s = svcOf(t, "198.18.10.11:80", "198.18.10.20:80,id=12")
	_, err := AssignCookieIDs(s, 4)
	want := "service tcp:198.18.0.10:80: reals 198.18.10.11:80 and 198.18.10.20:80 have the same cookie id 12; give one of them its own with ,id=N (1..15)"
	if err == nil || err.Error() != want {
		t.Fatalf("collision: %v\nwant %s", err, want)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Fatal("not one line")
	}
	// An explicit id beyond 2^k-1.
	s = svcOf(t, "198.18.10.11:80,id=16")
	if _, err := AssignCookieIDs(s, 4); err == nil || !strings.Contains(err.Error(), "cookie id 16: expected 1..15 with 4 cookie bits") {
		t.Fatalf("id 16, k 4: %v", err)
	}
	if _, err := AssignCookieIDs(s, 5); err != nil || s.Reals[0].CookieID != 16 {
		t.Fatalf("id 16, k 5: %v %d", err, s.Reals[0].CookieID)
	}

	// More reals than ids: the first 2^k-1 get theirs, the rest 0.
	var reals []string
	for i := range 5 {
		reals = append(reals, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(1 + i)}), 80).String())
	}
	s = svcOf(t, reals...)
	n, err := AssignCookieIDs(s, 2)
	if err != nil || n != 2 {
		t.Fatalf("5 reals, k 2: %d, %v", n, err)
	}
	for i, r := range s.Reals {
		if (i < 3) != (r.CookieID != 0) {
			t.Errorf("real %d: id %d", i, r.CookieID)
		}
	}
}
