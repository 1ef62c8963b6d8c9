package balancer

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

var schedulerNames = []string{"rr", "wrr", "sh", "dh", "lc", "mh", "mh:addr"}

// realsW builds reals 198.18.10.1:80, 198.18.10.2:80, ... with the given weights.
func realsW(weights ...int) []*Real {
	rs := make([]*Real, len(weights))
	for i, w := range weights {
		rs[i] = &Real{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 10, byte(i + 1)}), 80), Weight: w}
	}
	return rs
}

// client returns the i-th client address in 198.18.0.0/15, with a port that
// varies independently of the address.
func client(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18 + byte(i>>16&1), byte(i >> 8), byte(i)}), uint16(40000+i%7919))
}

var vip = netip.MustParseAddrPort("198.18.0.10:80")

func mustScheduler(t testing.TB, name string) Scheduler {
	t.Helper()
	s, err := NewScheduler(name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// picks returns n picks as a string of letters, a for index 0, '-' for -1.
func picks(s Scheduler, reals []*Real, n int) string {
	var b strings.Builder
	for i := range n {
		switch p := s.Pick(reals, client(i), vip); {
		case p < 0:
			b.WriteByte('-')
		default:
			b.WriteByte(byte('a' + p))
		}
	}
	return b.String()
}

func TestNewScheduler(t *testing.T) {
	for _, name := range append(schedulerNames, "WRR") {
		s, err := NewScheduler(name)
		if err != nil {
			t.Fatalf("NewScheduler(%q): %v", name, err)
		}
		if got, want := s.Name(), strings.ToLower(name); got != want {
			t.Errorf("NewScheduler(%q).Name() = %q, want %q", name, got, want)
		}
	}
	for _, name := range []string{"xx", "", "wlc", "maglev"} {
		_, err := NewScheduler(name)
		want := fmt.Sprintf("unknown scheduler %q (expected rr, wrr, sh, dh, lc, mh or mh:addr)", name)
		if err == nil || err.Error() != want {
			t.Errorf("NewScheduler(%q) error = %v, want %q", name, err, want)
		}
	}
}

func TestRoundRobin(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
		want    string
	}{
		{"equal", []int{1, 1, 1}, "abcabcabc"},
		{"weight value ignored", []int{3, 1}, "ababab"},
		{"weight 0 skipped", []int{1, 0, 1, 0}, "acacac"},
		{"single", []int{7}, "aaa"},
		{"all zero", []int{0, 0}, "---"},
		{"empty", nil, "---"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := picks(mustScheduler(t, "rr"), realsW(tt.weights...), len(tt.want))
			if got != tt.want {
				t.Errorf("picks = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestWeightedRoundRobin(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
		period  string // the picks of one period, which then repeats.
	}{
		{"3:2:1", []int{3, 2, 1}, "abacba"},
		{"5:1:1", []int{5, 1, 1}, "aabacaa"},
		{"equal", []int{1, 1, 1}, "abc"},
		{"weight 0 skipped", []int{2, 0, 1}, "aca"},
		{"all zero", []int{0, 0, 0}, "-"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reps := 600 / len(tt.period)
			got := picks(mustScheduler(t, "wrr"), realsW(tt.weights...), reps*len(tt.period))
			if want := strings.Repeat(tt.period, reps); got != want {
				t.Errorf("picks = %s..., want %s...", got[:24], want[:24])
			}
		})
	}
}

func TestWeightedRoundRobinExactCounts(t *testing.T) {
	s, reals := mustScheduler(t, "wrr"), realsW(3, 2, 1)
	counts := make([]int, len(reals))
	prev, run := -1, 0
	for i := range 600 {
		p := s.Pick(reals, client(i), vip)
		counts[p]++
		// Smooth: plain weighted round robin would give real 0 three flows
		// in a row; this never gives more than two.
		if run++; p != prev {
			prev, run = p, 1
		}
		if run > 2 {
			t.Fatalf("pick %d: real %d %d times in a row", i, p, run)
		}
	}
	if want := []int{300, 200, 100}; fmt.Sprint(counts) != fmt.Sprint(want) {
		t.Errorf("counts over 600 picks = %v, want %v", counts, want)
	}
}

func TestWeightedRoundRobinChanges(t *testing.T) {
	s, reals := mustScheduler(t, "wrr"), realsW(3, 2, 1)
	picks(s, reals, 4) // leave credit in the state

	reals[2].Weight = 3 // weight change: state starts again
	if got, want := picks(s, reals, 8), "acbacbac"; got != want {
		t.Errorf("after weight change: %s, want %s", got, want)
	}
	reals = append(reals, realsW(0, 0, 0, 6)[3]) // growth: weights 3:2:3:6
	if got := picks(s, reals, 14); strings.Count(got, "d") != 6 || strings.Count(got, "b") != 2 {
		t.Errorf("after growth: %s, want d in 6 and b in 2 of 14 picks", got)
	}
	reals = reals[:1] // shrink
	if got, want := picks(s, reals, 3), "aaa"; got != want {
		t.Errorf("after shrink: %s, want %s", got, want)
	}
}

func TestLeastConn(t *testing.T) {
	type r struct{ weight, active, inactive int }
	tests := []struct {
		name  string
		reals []r
		want  int
	}{
		{"idle: first", []r{{1, 0, 0}, {1, 0, 0}}, 0},
		{"least active", []r{{1, 5, 0}, {1, 2, 0}, {1, 3, 0}}, 1},
		{"255 inactive < 1 active", []r{{1, 1, 0}, {1, 0, 255}}, 1},
		{"256 inactive = 1 active: first", []r{{1, 1, 0}, {1, 0, 256}}, 0},
		{"weight: 2 active on 3 beats 1 on 1", []r{{1, 1, 0}, {3, 2, 0}}, 1},
		{"weight: 4 active on 3 loses to 1 on 1", []r{{1, 1, 0}, {3, 4, 0}}, 0},
		{"weight 0 skipped though idle", []r{{0, 0, 0}, {1, 9, 9}}, 1},
		{"all zero", []r{{0, 0, 0}, {0, 0, 0}}, -1},
		{"empty", nil, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reals := make([]*Real, len(tt.reals))
			for i, x := range tt.reals {
				reals[i] = &Real{Addr: client(i), Weight: x.weight, Active: x.active, Inactive: x.inactive}
			}
			if got := mustScheduler(t, "lc").Pick(reals, client(0), vip); got != tt.want {
				t.Errorf("Pick = %d, want %d", got, tt.want)
			}
		})
	}
}

// TestLeastConnFollowsWeights simulates flows that never end: lc then shares
// them out in proportion to weight.
func TestLeastConnFollowsWeights(t *testing.T) {
	s, reals := mustScheduler(t, "lc"), realsW(3, 2, 1)
	for i := range 600 {
		reals[s.Pick(reals, client(i), vip)].Active++
	}
	for i, want := range []int{300, 200, 100} {
		if reals[i].Active != want {
			t.Errorf("real %d has %d flows, want %d", i, reals[i].Active, want)
		}
	}
}

func TestSourceHashStable(t *testing.T) {
	s, reals := mustScheduler(t, "sh"), realsW(3, 2, 1)
	for i := range 1000 {
		c := client(i)
		first := s.Pick(reals, c, vip)
		for port := range uint16(5) {
			// The port is not hashed: a client's every connection lands on
			// one real.
			other := netip.AddrPortFrom(c.Addr(), 1024+port)
			if got := s.Pick(reals, other, vip); got != first {
				t.Fatalf("client %v: Pick = %d, then %d from %v", c, first, got, other)
			}
		}
	}
	// A second instance with the same reals agrees: the table depends only
	// on the reals (two directors of a pair agree without sync).
	s2 := mustScheduler(t, "sh")
	for i := range 1000 {
		if a, b := s.Pick(reals, client(i), vip), s2.Pick(reals, client(i), vip); a != b {
			t.Fatalf("client %v: %d on one scheduler, %d on another", client(i), a, b)
		}
	}
}

func TestHashSpread(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
	}{
		{"equal", []int{1, 1, 1, 1}},
		{"3:2:1", []int{3, 2, 1}},
		{"weight 0", []int{1, 0, 1}},
		{"large weights", []int{65535, 30000, 1000}},
	}
	const clients = 50000
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, reals := mustScheduler(t, "sh"), realsW(tt.weights...)
			counts := make([]int, len(reals))
			for i := range clients {
				counts[s.Pick(reals, client(i), vip)]++
			}
			total := 0
			for _, w := range tt.weights {
				total += w
			}
			for i, w := range tt.weights {
				want := clients * w / total
				// One bucket of 256 is 0.4%; allow the table's rounding and
				// the hash's unevenness.
				if d := counts[i] - want; d < -clients/50 || d > clients/50 {
					t.Errorf("real %d (weight %d): %d clients, want %d ± %d", i, w, counts[i], want, clients/50)
				}
			}
		})
	}
}

// TestSourceHashQuiesce checks the disruption bound: setting a real's weight
// to 0 moves only its own clients, and restoring the weight moves them back.
func TestSourceHashQuiesce(t *testing.T) {
	s, reals := mustScheduler(t, "sh"), realsW(1, 1, 1)
	const n = 3000
	before := make([]int, n)
	for i := range before {
		before[i] = s.Pick(reals, client(i), vip)
	}
	reals[1].Weight = 0
	moved := 0
	for i := range n {
		got := s.Pick(reals, client(i), vip)
		switch {
		case got == 1:
			t.Fatalf("client %v went to quiesced real 1", client(i))
		case before[i] != 1 && got != before[i]:
			t.Fatalf("client %v moved from real %d to %d though its real is unchanged", client(i), before[i], got)
		case before[i] == 1:
			moved++
		}
	}
	if moved == 0 {
		t.Fatal("no client was on real 1")
	}
	reals[1].Weight = 1
	for i := range n {
		if got := s.Pick(reals, client(i), vip); got != before[i] {
			t.Fatalf("client %v: real %d after restore, want %d", client(i), got, before[i])
		}
	}
}

func TestDestinationHash(t *testing.T) {
	s, reals := mustScheduler(t, "dh"), realsW(1, 1, 1)
	want := s.Pick(reals, client(0), vip)
	for i := range 1000 {
		if got := s.Pick(reals, client(i), vip); got != want {
			t.Fatalf("client %v: Pick = %d, want %d (same destination)", client(i), got, want)
		}
	}
	// Different destinations spread over the reals.
	seen := map[int]bool{}
	for i := range 100 {
		seen[s.Pick(reals, client(0), client(i))] = true
	}
	if len(seen) != len(reals) {
		t.Errorf("100 destinations reached %d reals, want %d", len(seen), len(reals))
	}
}

// TestWeightZeroNeverPicked runs every scheduler over reals where some are
// quiesced, with lc load changing as flows are added.
func TestWeightZeroNeverPicked(t *testing.T) {
	for _, name := range schedulerNames {
		t.Run(name, func(t *testing.T) {
			s, reals := mustScheduler(t, name), realsW(0, 2, 0, 1, 0)
			for i := range 2000 {
				p := s.Pick(reals, client(i), client(i*7))
				if p < 0 || reals[p].Weight == 0 {
					t.Fatalf("pick %d = %d, want a real with a weight", i, p)
				}
				reals[p].Active++
			}
		})
	}
}

func TestAllZeroOrEmpty(t *testing.T) {
	for _, name := range schedulerNames {
		for _, reals := range [][]*Real{nil, {}, realsW(0), realsW(0, 0, 0)} {
			s := mustScheduler(t, name)
			if got := s.Pick(reals, client(1), vip); got != -1 {
				t.Errorf("%s: Pick over %d reals of weight 0 = %d, want -1", name, len(reals), got)
			}
		}
	}
}

// TestRealsChange grows, shrinks and reweights the reals between picks, as
// runtime add and remove will: no panic, and every pick is a real that can
// take a flow.
func TestRealsChange(t *testing.T) {
	all := realsW(1, 2, 3, 0, 5, 1, 1)
	steps := [][]*Real{all[:3], all[:5], all[:1], all[:0], all[2:4], all[3:4], all, all[:2]}
	for _, name := range schedulerNames {
		t.Run(name, func(t *testing.T) {
			s := mustScheduler(t, name)
			for k, reals := range steps {
				for i := range 50 {
					p := s.Pick(reals, client(i), client(i+k))
					want := false
					for _, r := range reals {
						want = want || r.Weight > 0
					}
					switch {
					case !want && p != -1:
						t.Fatalf("step %d: Pick = %d, want -1", k, p)
					case want && (p < 0 || p >= len(reals) || reals[p].Weight == 0):
						t.Fatalf("step %d: Pick = %d over %d reals", k, p, len(reals))
					}
				}
				if k == 4 {
					all[2].Weight = 9 // and a weight change in place
				}
			}
		})
	}
}

func TestPickAllocs(t *testing.T) {
	for _, name := range schedulerNames {
		t.Run(name, func(t *testing.T) {
			s, reals := mustScheduler(t, name), realsW(3, 0, 2, 1)
			s.Pick(reals, client(0), vip) // builds the state
			i := 0
			allocs := testing.AllocsPerRun(1000, func() {
				i++
				s.Pick(reals, client(i), vip)
			})
			if allocs != 0 {
				t.Errorf("Pick allocates %v times per call, want 0", allocs)
			}
		})
	}
}

func BenchmarkPick(b *testing.B) {
	for _, name := range schedulerNames {
		b.Run(name, func(b *testing.B) {
			s, reals := mustScheduler(b, name), realsW(3, 2, 1, 1, 1, 1, 1, 1)
			i := 0
			for b.Loop() {
				i++
				s.Pick(reals, client(i), vip)
			}
		})
	}
}

// TestDown runs every scheduler through health changes on one instance, as the
// checker would make them: a down real is never picked, all down gives -1,
// and a real back up is picked again.
func TestDown(t *testing.T) {
	steps := []struct {
		name string
		down string // one byte per real: 'd' down, anything else up.
		want string // exactly the reals picked over many clients; "" = only -1.
	}{
		{"all up", "...", "abc"},
		{"b down", ".d.", "ac"},
		{"a and c down", "d.d", "b"},
		{"all down", "ddd", ""},
		{"b back up", "d.d", "b"},
		{"all back up", "...", "abc"},
		{"c down", "..d", "ab"},
	}
	for _, name := range schedulerNames {
		t.Run(name, func(t *testing.T) {
			s, reals := mustScheduler(t, name), realsW(2, 1, 1)
			for _, st := range steps {
				for i, r := range reals {
					r.Down = st.down[i] == 'd'
					r.Active = 0 // lc: each step starts idle.
				}
				var seen [3]bool
				for i := range 300 {
					// dh hashes the destination: vary it too.
					p := s.Pick(reals, client(i), client(i*7))
					switch {
					case st.want == "" && p != -1:
						t.Fatalf("%s: pick %d = %d, want -1", st.name, i, p)
					case st.want == "":
					case p < 0 || !strings.ContainsRune(st.want, rune('a'+p)):
						t.Fatalf("%s: pick %d = %d, want one of %s", st.name, i, p, st.want)
					default:
						seen[p] = true
						reals[p].Active++
					}
				}
				for _, c := range st.want {
					if !seen[c-'a'] {
						t.Errorf("%s: real %c never picked in 300 flows", st.name, c)
					}
				}
			}
		})
	}
}

// TestDownAndWeightZero: health and weight combine; either one stops new
// flows, and coming back up does not undo a quiesce.
func TestDownAndWeightZero(t *testing.T) {
	for _, name := range schedulerNames {
		t.Run(name, func(t *testing.T) {
			s, reals := mustScheduler(t, name), realsW(1, 0, 1)
			reals[1].Down = true
			reals[2].Down = true
			for i := range 100 {
				if p := s.Pick(reals, client(i), client(i*7)); p != 0 {
					t.Fatalf("b quiesced and down, c down: Pick = %d, want 0", p)
				}
			}
			reals[1].Down = false
			reals[0].Down = true
			for i := range 100 {
				if p := s.Pick(reals, client(i), client(i*7)); p != -1 {
					t.Fatalf("a and c down, b up but quiesced: Pick = %d, want -1", p)
				}
			}
		})
	}
}

// TestSourceHashDown checks the disruption bound for health, as
// TestSourceHashQuiesce does for weight: a real going down moves only its own
// clients, and they come back when it is up.
func TestSourceHashDown(t *testing.T) {
	s, reals := mustScheduler(t, "sh"), realsW(1, 2, 1)
	const n = 3000
	before := make([]int, n)
	for i := range before {
		before[i] = s.Pick(reals, client(i), vip)
	}
	reals[1].Down = true
	moved := 0
	for i := range n {
		got := s.Pick(reals, client(i), vip)
		switch {
		case got == 1:
			t.Fatalf("client %v went to down real 1", client(i))
		case before[i] != 1 && got != before[i]:
			t.Fatalf("client %v moved from real %d to %d though its real is up", client(i), before[i], got)
		case before[i] == 1:
			moved++
		}
	}
	if moved == 0 {
		t.Fatal("no client was on real 1")
	}
	reals[1].Down = false
	for i := range n {
		if got := s.Pick(reals, client(i), vip); got != before[i] {
			t.Fatalf("client %v: real %d after real 1 came back up, want %d", client(i), got, before[i])
		}
	}
}

// TestSourceHashBuiltWhileDown: a table built while a real is down (a fresh
// scheduler, a reload) still gives that real its buckets, so it gets exactly
// its own clients when it comes up and nobody else moves.
func TestSourceHashBuiltWhileDown(t *testing.T) {
	ref, up := mustScheduler(t, "sh"), realsW(1, 2, 1)
	s, reals := mustScheduler(t, "sh"), realsW(1, 2, 1)
	reals[1].Down = true
	const n = 3000
	for i := range n {
		want := ref.Pick(up, client(i), vip)
		got := s.Pick(reals, client(i), vip)
		if want != 1 && got != want {
			t.Fatalf("client %v: real %d while real 1 is down, want %d", client(i), got, want)
		}
	}
	reals[1].Down = false
	for i := range n {
		if want, got := ref.Pick(up, client(i), vip), s.Pick(reals, client(i), vip); got != want {
			t.Fatalf("client %v: real %d after real 1 came up, want %d", client(i), got, want)
		}
	}
}

// TestPickAllocsHealthChanges: reals going down and up between picks, as the
// checker makes them, cost no allocation either (wrr restarts its credit in
// place, sh and dh keep their table).
func TestPickAllocsHealthChanges(t *testing.T) {
	for _, name := range schedulerNames {
		t.Run(name, func(t *testing.T) {
			s, reals := mustScheduler(t, name), realsW(3, 0, 2, 1)
			reals[3].Down = true
			s.Pick(reals, client(0), vip) // builds the state
			i := 0
			allocs := testing.AllocsPerRun(1000, func() {
				i++
				reals[2].Down = i%3 == 0
				if p := s.Pick(reals, client(i), vip); p < 0 || !reals[p].Available() {
					t.Fatalf("Pick = %d, want an available real", p)
				}
			})
			if allocs != 0 {
				t.Errorf("Pick allocates %v times per call, want 0", allocs)
			}
		})
	}
}
