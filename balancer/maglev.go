package balancer

import (
	"net/netip"
	"slices"
)

// maglevSize is the size of an mh lookup table: a prime, IPVS mh's default
// (CONFIG_IP_VS_MH_TAB_INDEX 12: 4093). Maglev needs it well above the
// number of reals for an even spread (each real's share is within about
// N/M of its weight's) and for the minimal disruption bound; 4093 is 16 KiB
// per service.
const maglevSize = 4093

// maglev is the mh scheduler: Maglev hashing (Eisenbud et al., NSDI 2016),
// as IPVS mh and Katran. Its lookup table is a pure function of the reals'
// addresses and weights (buildMaglev), independent of the order they were
// given in: every director given the same reals builds the same table, and
// so sends a client to the same real, which a group of directors behind
// ECMP needs (DESIGN.md section 7). A real that leaves moves its own
// clients and few others (TestMaglevDisruption bounds it).
//
// The key is the client's address and port, or its address only (mh:addr,
// ipvsadm's mh without mh-port): all of one client's connections then go to
// one real.
//
// As sh, the table is built from the configured weights and ignores
// health: a down or quiesced (weight 0 after the build) real keeps its
// entries and Pick probes on to the next entry, so flapping health never
// reshuffles the clients of healthy reals, and a real that comes back gets
// its own clients back. A real added, removed, or given another non-zero
// weight rebuilds the table.
type maglev struct {
	addrOnly bool

	seen  view
	table []int32 // entry -> index in reals; empty if no real had a weight
}

func (s *maglev) Name() string {
	if s.addrOnly {
		return "mh:addr"
	}
	return "mh"
}

func (s *maglev) Pick(reals []*Real, client, _ netip.AddrPort) int {
	if len(reals) == 0 {
		return -1
	}
	if !s.seen.covers(reals) {
		s.seen.take(reals)
		s.table = buildMaglev(s.table, reals)
	}
	if len(s.table) == 0 {
		return -1
	}
	h := maglevKey(client, s.addrOnly)
	for off := range uint64(len(s.table)) {
		i := s.table[(h+off)%uint64(len(s.table))]
		if reals[i].Available() {
			return int(i)
		}
	}
	return -1
}

// maglevKey hashes the client (FNV-1a over its 16-byte address, and its
// port unless addrOnly): a fixed function, the same on every director, and
// written out so that Pick does not allocate.
func maglevKey(client netip.AddrPort, addrOnly bool) uint64 {
	a := client.Addr().Unmap().As16()
	h := fnv1a(fnvOffset, a[:])
	if !addrOnly {
		h = fnv1a(h, []byte{byte(client.Port() >> 8), byte(client.Port())})
	}
	return h
}

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func fnv1a(h uint64, b []byte) uint64 {
	for _, c := range b {
		h = (h ^ uint64(c)) * fnvPrime
	}
	return h
}

// buildMaglev fills table (reused if large enough) with Maglev's
// population over the reals of non-zero weight, in weighted form (as
// cilium's pkg/maglev): each round, every real earns its weight in credit
// and takes one entry per maximum weight of credit, so entries are shared
// in proportion to the weights. Each real's preference list is a
// permutation of the entries from its offset and skip, both from a hash of
// its address and port (maglevKey's): the order the reals come in does not matter (they are
// visited in address order).
func buildMaglev(table []int32, reals []*Real) []int32 {
	type cand struct {
		idx          int
		offset, skip uint64
		next         uint64 // the next position in its permutation
		weight       int
		credit       int
	}
	var cs []cand
	maxW := 0
	for i, r := range reals {
		if r.Weight <= 0 {
			continue
		}
		sum := maglevKey(r.Addr, false)
		cs = append(cs, cand{idx: i, offset: (sum >> 32) % maglevSize, skip: (sum&0xffffffff)%(maglevSize-1) + 1, weight: r.Weight})
		maxW = max(maxW, r.Weight)
	}
	if len(cs) == 0 {
		return table[:0]
	}
	slices.SortFunc(cs, func(a, b cand) int { return reals[a.idx].Addr.Compare(reals[b.idx].Addr) })
	table = resize(table, maglevSize)
	for i := range table {
		table[i] = -1
	}
	for filled := 0; filled < maglevSize; {
		for k := range cs {
			c := &cs[k]
			for c.credit += c.weight; c.credit >= maxW && filled < maglevSize; c.credit -= maxW {
				for {
					e := (c.offset + c.next*c.skip) % maglevSize
					c.next++
					if table[e] < 0 {
						table[e] = int32(c.idx)
						filled++
						break
					}
				}
			}
		}
	}
	return table
}
