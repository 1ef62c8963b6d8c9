// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
//
// holdfast's kernel fast path, prototype (issue 18): a tc (cls_bpf,
// direct-action) program on the director's client-facing and real-facing
// interfaces. For an IPv4 TCP segment whose tuple is in the flows map
// (written from Go, see ../fastpath.go) it does what the TUN path's
// nat.Director does to an established plain flow's segment -- rewrite the
// destination (client -> VIP becomes client -> real) or the source (real ->
// client becomes VIP -> client), write or restore the timestamp cookie
// (DESIGN.md section 5, item 1; nat/cookie.go), decrement the TTL -- and
// sends it out of the egress interface that the kernel's FIB names, with
// the neighbour's MAC. Everything else passes to the kernel unchanged
// (TC_ACT_OK), which routes it into the TUN as before: misses, SYN, FIN and
// RST (the flow's state machine lives in Go), IP options, fragments,
// packets the next link cannot carry (the TUN path answers them with
// ICMP fragmentation needed), TTL expiry, and any FIB answer other than a
// route with a neighbour. The decision to punt is taken before any byte
// of the packet changes.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define AF_INET 2

// A flow's key: the tuple of a segment as it arrives (IPv4 TCP only).
struct flow_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
};

// A flow's value: the tuple the segment leaves with, the direction, and
// where its cookie state is.
struct flow_val {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u32 slot;      // index into cookies (shared by the flow's two entries)
	__u16 cookie_id; // the real's id, written into the TSval (to_client)
	__u8 to_client;  // 1: a real's segment (write the cookie), 0: a client's (restore)
	__u8 pad;
	__u64 packets; // segments carried (a GSO packet counts its segments)
	__u64 bytes;
	// The FIB's answer for the rewritten tuple, cached (with cache_fib)
	// while fib_gen[0] equals gen: the egress link and the MACs.
	__u32 egress;
	__u32 gen;
	__u8 dmac[ETH_ALEN];
	__u8 smac[ETH_ALEN];
};

// cookie_state mirrors nat's cookieFlow: all TSvals in the client's space.
struct cookie_state {
	__u32 last;     // the last TSval sent to the client (with CK_SENT)
	__u32 raw;      // the largest raw TSval sent in last's bucket
	__u32 prev;     // a TSval sent in the bucket before (with CK_PREV)
	__u32 prev_raw; // the largest raw TSval sent in prev's bucket
	__u32 syn_ack;  // the raw TSval of the real's SYN-ACK (with CK_SYNACK)
	__u32 flags;
};

#define CK_SENT (1 << 0)
#define CK_PREV (1 << 1)
#define CK_SYNACK (1 << 2)
// CK_ROUNDUP: restore echoes before this path's first rewrite by rounding
// up (nat: a flow whose handshake crossed the director, or a moved flow).
#define CK_ROUNDUP (1 << 3)

// Counters, per CPU (stat_* indices; fastpath.go names them).
enum {
	STAT_FORWARD = 0,   // rewritten and redirected with the FIB's MACs
	STAT_FORWARD_NEIGH, // rewritten and redirected through bpf_redirect_neigh
	STAT_MISS,          // IPv4 TCP, no flow: passed
	STAT_PUNT_FLAGS,    // SYN, FIN or RST: passed to the TUN path
	STAT_PUNT_IP,       // IP options, a fragment, TTL <= 1: passed
	STAT_PUNT_FIB,      // no route, forwarding off, blackhole...: passed
	STAT_PUNT_MTU,      // larger than the egress link: passed (ICMP from the TUN path)
	STAT_OTHER,         // not IPv4 TCP: passed
	STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC); // memory follows the flows in it
	__uint(max_entries, 1 << 17);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 16);
	__type(key, __u32);
	__type(value, struct cookie_state);
} cookies SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

// fib_gen[0] is the generation of the routes and neighbours: the Go side
// bumps it on any change (netlink), which drops every cached FIB answer.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} fib_gen SEC(".maps");

// cookie_bits is nat.Config.CookieBits (0: cookies off), set at load.
volatile const __u32 cookie_bits = 0;

// cache_fib: keep the FIB's answer in the flow and ask the FIB again only
// when the generation moved (Config.CacheFIB), checking the MTU per packet.
volatile const __u32 cache_fib = 0;

#define ETH_OFF 0
#define IP_OFF (ETH_OFF + sizeof(struct ethhdr))
#define IP_CSUM_OFF (IP_OFF + offsetof(struct iphdr, check))
#define IP_TTL_OFF (IP_OFF + offsetof(struct iphdr, ttl))
#define IP_SRC_OFF (IP_OFF + offsetof(struct iphdr, saddr))
#define IP_DST_OFF (IP_OFF + offsetof(struct iphdr, daddr))
#define TCP_OFF (IP_OFF + sizeof(struct iphdr))
#define TCP_CSUM_OFF (TCP_OFF + offsetof(struct tcphdr, check))
#define TCP_SPORT_OFF (TCP_OFF + offsetof(struct tcphdr, source))
#define TCP_DPORT_OFF (TCP_OFF + offsetof(struct tcphdr, dest))
// Linux sends the timestamp option first, after two NOPs; the prototype
// handles that layout only (nat walks the options otherwise).
#define TS_OFF (TCP_OFF + sizeof(struct tcphdr))
#define TSVAL_OFF (TS_OFF + 4)
#define TSECR_OFF (TS_OFF + 8)

static __always_inline void count(__u32 i)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &i);
	if (v)
		*v += 1;
}

static __always_inline int seq_after(__u32 a, __u32 b) { return (__s32)(a - b) > 0; }

// replace32 writes v at off and folds the change into the TCP checksum.
static __always_inline int replace32(struct __sk_buff *skb, __u32 off, __be32 old, __be32 v, __u64 l4flags)
{
	if (old == v)
		return 0;
	if (bpf_l4_csum_replace(skb, TCP_CSUM_OFF, old, v, l4flags | 4))
		return -1;
	return bpf_skb_store_bytes(skb, off, &v, 4, 0);
}

// cookie_to_client is nat's cookieToClient for an established segment.
static __always_inline int cookie_to_client(struct __sk_buff *skb, struct flow_val *f, __be32 tsval)
{
	__u32 k = cookie_bits;
	__u32 mask = (1u << k) - 1;
	struct cookie_state *c = bpf_map_lookup_elem(&cookies, &f->slot);
	if (!c)
		return -1;
	__u32 raw = bpf_ntohl(tsval);
	__u32 v = (((raw >> k) + 1) << k) | f->cookie_id;
	if ((c->flags & CK_SENT) && seq_after(c->last, v)) {
		v = (c->last & ~mask) | f->cookie_id;
		if (seq_after(c->last, v))
			v += 1u << k;
	}
	if (!(c->flags & CK_SENT)) {
		c->raw = raw;
	} else if ((v >> k) == (c->last >> k)) {
		if (seq_after(raw, c->raw))
			c->raw = raw;
	} else {
		c->prev = c->last;
		c->prev_raw = c->raw;
		c->raw = raw;
		c->flags |= CK_PREV;
	}
	c->last = v;
	c->flags |= CK_SENT;
	return replace32(skb, TSVAL_OFF, tsval, bpf_htonl(v), 0);
}

// cookie_to_real is nat's cookieToReal for an established segment.
static __always_inline int cookie_to_real(struct __sk_buff *skb, struct flow_val *f, __be32 tsecr)
{
	__u32 k = cookie_bits;
	struct cookie_state *c = bpf_map_lookup_elem(&cookies, &f->slot);
	if (!c)
		return -1;
	if (!(c->flags & (CK_SENT | CK_SYNACK | CK_ROUNDUP)))
		return 0;
	__u32 e = bpf_ntohl(tsecr);
	if ((c->flags & CK_SYNACK) && e == c->syn_ack)
		return 0;
	__u32 v;
	if ((e >> k) == (c->last >> k))
		v = c->raw;
	else if ((c->flags & CK_PREV) && (e >> k) == (c->prev >> k))
		v = c->prev_raw;
	else
		v = (e & ~((1u << k) - 1)) - 1;
	return replace32(skb, TSECR_OFF, tsecr, bpf_htonl(v), 0);
}

SEC("tc")
int holdfast_fastpath(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + IP_OFF;
	struct tcphdr *tcp = data + TCP_OFF;

	if ((void *)(tcp + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->protocol != IPPROTO_TCP) {
		count(STAT_OTHER);
		return TC_ACT_OK;
	}
	struct flow_key key = {.saddr = ip->saddr, .daddr = ip->daddr, .sport = tcp->source, .dport = tcp->dest};
	struct flow_val *f = bpf_map_lookup_elem(&flows, &key);
	if (!f) {
		count(STAT_MISS);
		return TC_ACT_OK;
	}
	if (ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)) || ip->ttl <= 1) {
		count(STAT_PUNT_IP);
		return TC_ACT_OK;
	}
	if (tcp->syn || tcp->fin || tcp->rst) {
		count(STAT_PUNT_FLAGS);
		return TC_ACT_OK;
	}

	// Route the rewritten packet before changing it: a punt must leave
	// the packet as it came. DIRECT: the main table, not holdfast's
	// policy rule that sends everything arriving from the reals into the
	// TUN (stack/host/routes.go). tot_len 0: the kernel checks the skb
	// against the egress MTU itself, GSO packets by their segments.
	struct bpf_fib_lookup fib = {
		.family = AF_INET,
		.l4_protocol = IPPROTO_TCP,
		.sport = f->sport,
		.dport = f->dport,
		.tos = ip->tos,
		.ipv4_src = f->saddr,
		.ipv4_dst = f->daddr,
		.ifindex = skb->ingress_ifindex,
	};
	long rc;
	__u32 zero = 0, gen = 0;
	__u32 *g = cache_fib ? bpf_map_lookup_elem(&fib_gen, &zero) : 0;
	if (g)
		gen = *g;
	if (g && f->egress && f->gen == gen) {
		// The cached answer; the MTU check the FIB made, made here
		// (GSO packets by their segments).
		__u32 mtu = 0;
		if (bpf_check_mtu(skb, f->egress, &mtu, 0, 0) != BPF_MTU_CHK_RET_SUCCESS) {
			count(STAT_PUNT_MTU);
			return TC_ACT_OK;
		}
		rc = BPF_FIB_LKUP_RET_SUCCESS;
		fib.ifindex = f->egress;
		__builtin_memcpy(fib.dmac, f->dmac, ETH_ALEN);
		__builtin_memcpy(fib.smac, f->smac, ETH_ALEN);
	} else {
		rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_DIRECT);
		if (g && rc == BPF_FIB_LKUP_RET_SUCCESS) {
			__builtin_memcpy(f->dmac, fib.dmac, ETH_ALEN);
			__builtin_memcpy(f->smac, fib.smac, ETH_ALEN);
			f->gen = gen;
			f->egress = fib.ifindex;
		}
	}
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		count(STAT_PUNT_MTU);
		return TC_ACT_OK;
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
		count(STAT_PUNT_FIB);
		return TC_ACT_OK;
	}

	// Everything read from the packet before the helpers below change it
	// (they invalidate the packet pointers).
	__be32 old_src = ip->saddr, old_dst = ip->daddr;
	__be16 old_sport = tcp->source, old_dport = tcp->dest;
	__u16 old_ttl = *(__u16 *)((void *)ip + offsetof(struct iphdr, ttl)); // ttl and protocol
	__be32 ts_word = 0, tsval = 0, tsecr = 0;
	int has_ts = 0;
	if (cookie_bits && tcp->doff >= 8 && (void *)tcp + 32 <= data_end) {
		ts_word = *(__be32 *)((void *)tcp + 20);
		tsval = *(__be32 *)((void *)tcp + 24);
		tsecr = *(__be32 *)((void *)tcp + 28);
		has_ts = ts_word == bpf_htonl(0x0101080a);
	}
	int ack = tcp->ack;
	__u32 segs = skb->gso_segs ? skb->gso_segs : 1;

	if (has_ts) {
		int err = f->to_client ? cookie_to_client(skb, f, tsval) : (ack ? cookie_to_real(skb, f, tsecr) : 0);
		if (err)
			return TC_ACT_SHOT;
	}
	if (replace32(skb, IP_SRC_OFF, old_src, f->saddr, BPF_F_PSEUDO_HDR) ||
	    replace32(skb, IP_DST_OFF, old_dst, f->daddr, BPF_F_PSEUDO_HDR))
		return TC_ACT_SHOT;
	if (old_src != f->saddr && bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_src, f->saddr, 4))
		return TC_ACT_SHOT;
	if (old_dst != f->daddr && bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_dst, f->daddr, 4))
		return TC_ACT_SHOT;
	if (old_sport != f->sport) {
		if (bpf_l4_csum_replace(skb, TCP_CSUM_OFF, old_sport, f->sport, 2) ||
		    bpf_skb_store_bytes(skb, TCP_SPORT_OFF, &f->sport, 2, 0))
			return TC_ACT_SHOT;
	}
	if (old_dport != f->dport) {
		if (bpf_l4_csum_replace(skb, TCP_CSUM_OFF, old_dport, f->dport, 2) ||
		    bpf_skb_store_bytes(skb, TCP_DPORT_OFF, &f->dport, 2, 0))
			return TC_ACT_SHOT;
	}
	// The TTL, as the kernel's forwarding (and the TUN path's two trips
	// through it) would decrement it.
	__u16 new_ttl = old_ttl;
	((__u8 *)&new_ttl)[0] -= 1;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_ttl, new_ttl, 2) ||
	    bpf_skb_store_bytes(skb, IP_TTL_OFF, &new_ttl, 2, 0))
		return TC_ACT_SHOT;

	__sync_fetch_and_add(&f->packets, segs);
	__sync_fetch_and_add(&f->bytes, skb->len);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		struct bpf_redir_neigh nh = {.nh_family = fib.family, .ipv4_nh = fib.ipv4_dst};
		count(STAT_FORWARD_NEIGH);
		return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	}
	if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_dest), fib.dmac, ETH_ALEN, 0) ||
	    bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_source), fib.smac, ETH_ALEN, 0))
		return TC_ACT_SHOT;
	count(STAT_FORWARD);
	return bpf_redirect(fib.ifindex, 0);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
