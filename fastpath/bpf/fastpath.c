// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
//
// holdfast's kernel fast path (issue 18): a tc (cls_bpf,
// direct-action) program on the director's client-facing and real-facing
// interfaces. For an IPv4 TCP segment whose tuple is in the flows map
// (written from Go, see ../fastpath.go) it does what the TUN path's
// nat.Director does to an established plain flow's segment -- rewrite the
// destination (client -> VIP becomes client -> real) or the source (real ->
// client becomes VIP -> client), write or restore the timestamp cookie
// (DESIGN.md section 5, item 1; nat/cookie.go), decrement the TTL -- and
// sends it out of the egress interface that the kernel's FIB names (or the
// flow's cached FIB answer, with cache_fib), with the neighbour's MAC. Everything else passes to the kernel unchanged
// (TC_ACT_OK), which routes it into the TUN as before: misses, SYN, FIN and
// RST (the flow's state machine lives in Go), segments outside the flow's
// window (nat/window.go's checks, ported: window_ok) and a client's ack of
// server bytes this director never carried (nat judges those: RFC 5961,
// stale flows), IP options, fragments,
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

// dir_win is one direction of a flow's window tracking (nat's dirWin), in
// the client's sequence spaces.
struct dir_win {
	__u32 end;     // the sequence after the highest segment sent
	__u32 ack;     // the highest ack sent (with W_*_ACKED)
	__u32 max_win; // the largest window advertised, in bytes
};

// flow_state is the state a flow's two entries share: the timestamp
// cookie (nat's cookieFlow, all TSvals in the client's space) and the
// window tracking (nat's tcpWin and stale mark). The Go side writes it
// when it offloads the flow and reads it back when it takes the flow back.
struct flow_state {
	__u32 last;     // the last TSval sent to the client (with CK_SENT)
	__u32 raw;      // the largest raw TSval sent in last's bucket
	__u32 prev;     // a TSval sent in the bucket before (with CK_PREV)
	__u32 prev_raw; // the largest raw TSval sent in prev's bucket
	__u32 syn_ack;  // the raw TSval of the real's SYN-ACK (with CK_SYNACK)
	__u32 flags;
	struct dir_win cli, srv;
	__u32 hi_srv;    // the highest server sequence forwarded (with W_HISRV_SEEN)
	__u8 win_flags;  // W_*
	__u8 cli_shift;  // the shift of a client's window field
	__u8 srv_shift;  // the shift of a real's window field
	__u8 pad;
};

#define CK_SENT (1 << 0)
#define CK_PREV (1 << 1)
#define CK_SYNACK (1 << 2)
// CK_ROUNDUP: restore echoes before this path's first rewrite by rounding
// up (nat: a flow whose handshake crossed the director, or a moved flow).
#define CK_ROUNDUP (1 << 3)

// Window flags (flow_state.win_flags).
#define W_CLI_SEEN (1 << 0)
#define W_CLI_ACKED (1 << 1)
#define W_SRV_SEEN (1 << 2)
#define W_SRV_ACKED (1 << 3)
#define W_LIBERAL (1 << 4)    // picked up mid-stream: acks may pass what crossed by a window
#define W_HISRV_SEEN (1 << 5) // hi_srv is valid
#define W_MARKED (1 << 6)     // the stale mark is set (nat: the first client ack)

// nat/window.go's constants.
#define LIBERAL_WIN (0xffffu << 14)
#define MIN_ACK_WIN 66000u

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
	STAT_PUNT_WINDOW,   // outside the flow's window, or an ack the Director must judge: passed
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
	__type(value, struct flow_state);
} states SEC(".maps");

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

#define IP_OFF sizeof(struct ethhdr)
#define TCP_OFF (IP_OFF + sizeof(struct iphdr))
#define TCP_CSUM_OFF (TCP_OFF + offsetof(struct tcphdr, check))
// Linux sends the timestamp option first, after two NOPs; the fast path
// handles that layout only (nat walks the options otherwise).

static __always_inline void count(__u32 i)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &i);
	if (v)
		*v += 1;
}

static __always_inline int seq_after(__u32 a, __u32 b) { return (__s32)(a - b) > 0; }

// One's complement arithmetic on raw (network order) words, as the
// kernel's csum_add and csum_fold: a checksum change is accumulated as a
// diff (~old + new for each changed word, RFC 1624) and applied once.
static __always_inline __u32 csum_add(__u32 s, __u32 v)
{
	s += v;
	return s + (s < v);
}

static __always_inline __u32 diff32(__u32 d, __u32 from, __u32 to) { return csum_add(csum_add(d, ~from), to); }

static __always_inline __u16 csum_fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

// cookie_to_client is nat's cookieToClient for an established segment: the
// TSval to write (the state updated as if it is written).
static __always_inline __be32 cookie_to_client(struct flow_state *c, __u16 cookie_id, __be32 tsval)
{
	__u32 k = cookie_bits;
	__u32 mask = (1u << k) - 1;
	__u32 raw = bpf_ntohl(tsval);
	__u32 v = (((raw >> k) + 1) << k) | cookie_id;
	if ((c->flags & CK_SENT) && seq_after(c->last, v)) {
		v = (c->last & ~mask) | cookie_id;
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
	return bpf_htonl(v);
}

// cookie_to_real is nat's cookieToReal for an established segment: the
// TSecr to write.
static __always_inline __be32 cookie_to_real(struct flow_state *c, __be32 tsecr)
{
	__u32 k = cookie_bits;
	if (!(c->flags & (CK_SENT | CK_SYNACK | CK_ROUNDUP)))
		return tsecr;
	__u32 e = bpf_ntohl(tsecr);
	if ((c->flags & CK_SYNACK) && e == c->syn_ack)
		return tsecr;
	__u32 v;
	if ((e >> k) == (c->last >> k))
		v = c->raw;
	else if ((c->flags & CK_PREV) && (e >> k) == (c->prev >> k))
		v = c->prev_raw;
	else
		v = (e & ~((1u << k) - 1)) - 1;
	return bpf_htonl(v);
}

static __always_inline __u32 max32(__u32 a, __u32 b) { return a > b ? a : b; }

// seg is a segment's numbers (a flow the fast path carries is never a
// recovered one: the client's spaces are the packet's).
struct seg {
	__u32 seq, end, ack, win;
	int has_ack;
};

// window_ok is nat's classify (window.go) for what the fast path carries:
// a segment without SYN, FIN or RST of a flow that is neither suspect nor
// in its handshake. It returns 0 where nat would not say winOK, and for a
// client's ack beyond the stale mark, which nat judges (suspect or stale):
// the fast path punts those.
static __always_inline int window_ok(struct flow_state *st, struct seg *sg, int from_client)
{
	__u8 wf = st->win_flags;
	struct dir_win *s = from_client ? &st->cli : &st->srv;
	struct dir_win *r = from_client ? &st->srv : &st->cli;
	int s_seen = wf & (from_client ? W_CLI_SEEN : W_SRV_SEEN);
	int r_seen = wf & (from_client ? W_SRV_SEEN : W_CLI_SEEN);
	int r_acked = wf & (from_client ? W_SRV_ACKED : W_CLI_ACKED);
	__u32 slack = (wf & W_LIBERAL) ? max32(max32(st->cli.max_win, st->srv.max_win), MIN_ACK_WIN) : 0;

	if (from_client && sg->has_ack && (wf & W_SRV_SEEN)) {
		if ((wf & W_MARKED) && seq_after(sg->ack, st->hi_srv))
			return 0;
		if (!(wf & W_MARKED) && seq_after(sg->ack, st->srv.end + slack))
			return 0;
	}
	// seqInWindow
	__u32 r_win = r_seen ? r->max_win : LIBERAL_WIN;
	if (r_acked && seq_after(sg->seq, r->ack + r_win))
		return 0;
	if (s_seen && seq_after(s->end - max32(r_win, MIN_ACK_WIN), sg->end))
		return 0;
	if (sg->has_ack && r_seen) {
		__u32 s_win = s_seen ? s->max_win : LIBERAL_WIN;
		if (seq_after(r->end - max32(s_win, MIN_ACK_WIN), sg->ack))
			return 0;
		if (!from_client && seq_after(sg->ack, r->end + slack))
			return 0;
	}
	return 1;
}

// window_learn is nat's learn and trackSeg's stale mark for an in-window
// segment.
static __always_inline void window_learn(struct flow_state *st, struct seg *sg, int from_client)
{
	struct dir_win *s = from_client ? &st->cli : &st->srv;
	__u8 seen = from_client ? W_CLI_SEEN : W_SRV_SEEN;
	__u8 acked = from_client ? W_CLI_ACKED : W_SRV_ACKED;
	__u8 wf = st->win_flags;
	if (!(wf & seen) || seq_after(sg->end, s->end))
		s->end = sg->end;
	if (sg->has_ack && (!(wf & acked) || seq_after(sg->ack, s->ack))) {
		s->ack = sg->ack;
		wf |= acked;
	}
	if (sg->win > s->max_win)
		s->max_win = sg->win;
	wf |= seen;
	if (!from_client && (!(wf & W_HISRV_SEEN) || seq_after(sg->end, st->hi_srv))) {
		st->hi_srv = sg->end;
		wf |= W_HISRV_SEEN;
	}
	st->win_flags = wf;
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
	struct flow_state *st = bpf_map_lookup_elem(&states, &f->slot);
	if (!st) {
		count(STAT_OTHER);
		return TC_ACT_OK;
	}
	int from_client = !f->to_client;
	__u32 tot = bpf_ntohs(ip->tot_len);
	if (!tot) // BIG TCP: the length is the skb's
		tot = skb->len - IP_OFF;
	struct seg sg = {.seq = bpf_ntohl(tcp->seq), .ack = bpf_ntohl(tcp->ack_seq), .has_ack = tcp->ack};
	sg.end = sg.seq + tot - sizeof(struct iphdr) - tcp->doff * 4;
	sg.win = (__u32)bpf_ntohs(tcp->window) << ((from_client ? st->cli_shift : st->srv_shift) & 15);
	if (!window_ok(st, &sg, from_client)) {
		count(STAT_PUNT_WINDOW);
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

	// The rewrite, by direct writes: the checksum changes are
	// accumulated and applied by two helper calls at the end (which also
	// do the right thing for a CHECKSUM_PARTIAL skb: only the pseudo
	// header's change then goes into the field). Per-field helpers cost
	// about 380 ns a packet (BenchmarkForward).
	__be32 old_src = ip->saddr, old_dst = ip->daddr;
	__u32 l3 = 0, pseudo = 0, l4 = 0;
	ip->saddr = f->saddr;
	ip->daddr = f->daddr;
	l3 = diff32(diff32(l3, old_src, f->saddr), old_dst, f->daddr);
	pseudo = diff32(diff32(pseudo, old_src, f->saddr), old_dst, f->daddr);
	// The TTL, as the kernel's forwarding (and the TUN path's two trips
	// through it) would decrement it: the 16-bit word of TTL and protocol.
	__u16 *ttlw = (__u16 *)((void *)ip + offsetof(struct iphdr, ttl));
	__u16 old_ttl = *ttlw;
	ip->ttl -= 1;
	l3 = diff32(l3, old_ttl, *ttlw);
	ip->check = csum_fold(csum_add(l3, ~(__u32)ip->check));
	l4 = diff32(diff32(l4, tcp->source, f->sport), tcp->dest, f->dport);
	tcp->source = f->sport;
	tcp->dest = f->dport;
	if (cookie_bits && tcp->doff >= 8 && (void *)tcp + 32 <= data_end &&
	    *(__be32 *)((void *)tcp + 20) == bpf_htonl(0x0101080a)) {
		__be32 *tsval = (__be32 *)((void *)tcp + 24), *tsecr = (__be32 *)((void *)tcp + 28);
		if (f->to_client) {
			__be32 v = cookie_to_client(st, f->cookie_id, *tsval);
			l4 = diff32(l4, *tsval, v);
			*tsval = v;
		} else if (tcp->ack) {
			__be32 v = cookie_to_real(st, *tsecr);
			l4 = diff32(l4, *tsecr, v);
			*tsecr = v;
		}
	}
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	}
	window_learn(st, &sg, from_client);
	__u32 segs = skb->gso_segs ? skb->gso_segs : 1;
	__sync_fetch_and_add(&f->packets, segs);
	__sync_fetch_and_add(&f->bytes, skb->len);
	if (bpf_l4_csum_replace(skb, TCP_CSUM_OFF, 0, pseudo, BPF_F_PSEUDO_HDR) ||
	    bpf_l4_csum_replace(skb, TCP_CSUM_OFF, 0, l4, 0))
		return TC_ACT_SHOT;
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		struct bpf_redir_neigh nh = {.nh_family = fib.family, .ipv4_nh = fib.ipv4_dst};
		count(STAT_FORWARD_NEIGH);
		return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	}
	count(STAT_FORWARD);
	return bpf_redirect(fib.ifindex, 0);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
