/* The load balancer's packet path written by hand in C, Katran-style: the
 * peer of xpol's `lb(POOL, encap: ipip|gue, src: ADDR)` in benches/lb_path.rs.
 * It does the same work as compiler/src/codegen/lb.rs, with the same maps
 * and layouts (xpol_lang::meta::PoolMeta), so that the benchmark can fill
 * both with the same Maglev table and require the same output frames:
 *
 *   parse Ethernet, IPv4 (options too) or IPv6 (extension headers too),
 *   TCP or UDP; match one VIP rule (address, protocol, destination port);
 *   count the VIP (per-CPU packets and bytes: Katran's VIP stats, xpol's
 *   rule counter); flow key and murmur3 flow hash over the 5-tuple's
 *   words, addresses as loaded (little-endian, xpol_lang::maglev::addr_words)
 *   (xpol_lang::maglev::murmur3_words, FLOW_SEED); LRU
 *   flow table; on a miss the control word, the Maglev ring and the
 *   backends array, then the flow table's update; per-backend per-CPU
 *   counters; IPIP (IPv4 or IPv6 outer) or GUE (IPv4 or IPv6 outer) with
 *   bpf_xdp_adjust_head, the IPv4 header checksum and, over IPv6, the UDP
 *   checksum; or (NAT) the destination address and port rewritten in
 *   place with incremental checksum updates and the reply's translation
 *   recorded; bpf_fib_lookup for the next hop: XDP_TX or bpf_redirect,
 *   XDP_DROP when too big (XDP_PASS with NAT), XDP_PASS when the FIB has
 *   no complete answer.
 *
 * Differences from Katran kept on purpose, because xpol does it this way:
 * one LRU flow table shared by the CPUs (Katran has one per CPU), the next
 * hop from the FIB (Katran sends everything to one gateway MAC). VLAN-tagged
 * frames pass here (xpol strips the tags), which only makes C's path shorter.
 *
 * Compiled by the benchmark with clang-14 -O2 -g -target bpf and -D for:
 *   VIP_V6 (0: VIP4 as loaded; 1: VIP6_0..3 as loaded), VIP_PROTO, VIP_PORT,
 *   OUTER_V6, GUE, GUE_PORT, OUTER_SRC4 or OUTER_SRC6_0..3 (as loaded),
 *   TABLE_SIZE, MAX_BACKENDS, FLOWS, FLOW_SEED; or, instead of the
 *   encapsulation, NAT=1 (xpol's `lb(POOL, nat, port: NAT_PORT)`; NAT_PORT
 *   defaults to VIP_PORT, the port kept), with OUTER_V6 = VIP_V6 and GUE 0.
 * "As loaded": the 32-bit word a little-endian load of the wire bytes gives.
 * And, for the flow-table comparison (benches/lb_path/flow_table.rs), one of:
 *   PERCPU_FLOWS=1: the flow table is a BPF_MAP_TYPE_LRU_PERCPU_HASH (the
 *     keys shared, a value per CPU);
 *   PERCPU_TABLES=1: Katran's layout, a separate LRU_HASH per CPU of
 *     FLOWS / 2 entries each (Katran divides the configured size among
 *     its forwarding CPUs): two tables, picked by the parity of the CPU
 *     number, which gives each of the benchmark's two (consecutive) CPUs
 *     its own. Katran finds its CPU's table through an array of maps; the
 *     twin names the two maps directly, which is if anything cheaper;
 *   FLOWS_MAP_FLAGS=2 (BPF_F_NO_COMMON_LRU): the shared table with an LRU
 *     list per CPU instead of one for all;
 * and SATURATE, to test-run the flow table with BPF_PROG_TEST_RUN's repeat
 * (IPv4 only): 1, the program stops after the backend counters and passes
 * the packet as it came (no encapsulation, no FIB), so every repetition sees
 * the same flow; 2, the same, and each run first counts the packet's
 * source address's low 16 bits and TCP source port (as one number) up by
 * 1, so every repetition is a new flow.
 */

#ifndef PERCPU_FLOWS
#define PERCPU_FLOWS 0
#endif
#ifndef PERCPU_TABLES
#define PERCPU_TABLES 0
#endif
#if PERCPU_FLOWS && PERCPU_TABLES
#error "PERCPU_FLOWS and PERCPU_TABLES are two different layouts: one at most"
#endif
#ifndef FLOWS_MAP_FLAGS
#define FLOWS_MAP_FLAGS 0
#endif
#ifndef SATURATE
#define SATURATE 0
#endif
#if SATURATE && VIP_V6
#error "SATURATE is for IPv4"
#endif
#ifndef NAT
#define NAT 0
#endif
#ifndef NAT_PORT
#define NAT_PORT VIP_PORT
#endif
#if NAT && (GUE || OUTER_V6 != VIP_V6)
#error "NAT rewrites the packet in place: no GUE, no other family outside"
#endif
/* GUE over IPv6: its UDP checksum is derived from the packet inside (see
 * the encapsulation). */
#define GUE6 (GUE && OUTER_V6)
#if GUE6 && !VIP_V6
#error "GUE over IPv6 carries IPv6 here (xpol's 4in6 is not twinned)"
#endif

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;

#define SEC(n) __attribute__((section(n), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
#define INLINE static inline __attribute__((always_inline))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define bswap16 __builtin_bswap16
#define bswap32 __builtin_bswap32
/* An opaque use of x: code after it differs from the other branch's. */
#define ONE_SITE(x) asm volatile("" : "+r"(x))

enum { XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT };
enum { BPF_MAP_TYPE_ARRAY = 2, BPF_MAP_TYPE_PERCPU_ARRAY = 6, BPF_MAP_TYPE_LRU_HASH = 9, BPF_MAP_TYPE_LRU_PERCPU_HASH = 10 };
enum { FIB_SUCCESS = 0, FIB_FRAG_NEEDED = 8 }; /* BPF_FIB_LKUP_RET_* */

struct xdp_md {
	__u32 data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex;
};

struct bpf_fib_lookup {
	__u8 family;
	__u8 l4_protocol;
	__u16 sport;
	__u16 dport;
	__u16 tot_len;
	__u32 ifindex;
	union { __u8 tos; __u32 flowinfo; };
	union { __u32 ipv4_src; __u32 ipv6_src[4]; };
	union { __u32 ipv4_dst; __u32 ipv6_dst[4]; };
	__u16 h_vlan_proto, h_vlan_TCI;
	__u8 smac[6];
	__u8 dmac[6];
};

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, __u64 flags) = (void *)2;
#if PERCPU_TABLES
static __u32 (*bpf_get_smp_processor_id)(void) = (void *)8;
#endif
static long (*bpf_redirect)(__u32 ifindex, __u64 flags) = (void *)23;
static __u64 (*bpf_ktime_get_coarse_ns)(void) = (void *)160;
#if !NAT
static long (*bpf_xdp_adjust_head)(struct xdp_md *ctx, int delta) = (void *)44;
#endif
static long (*bpf_fib_lookup)(void *ctx, struct bpf_fib_lookup *params, int plen, __u32 flags) = (void *)69;

/* xpol_lang::meta::FlowKey: addresses as on the wire (IPv4 in word 0),
 * ports as on the wire (0 for fragments), protocol, 4 or 6. */
struct flow_key {
	__u32 src[4];
	__u32 dst[4];
	__u32 ports;
	__u8 proto;
	__u8 family;
	__u16 pad;
};
struct flow_value { __u32 backend, reserved; };
struct backend { __u32 addr[4]; __u32 flags; };
struct backend_counters { __u64 packets, bytes, new_flows; };
/* xpol_lang::meta::NatValue: the address and port the client sent to. */
struct nat_value { __u32 addr[4]; __u16 port, pad; };
struct vip_counters { __u64 packets, bytes; };

#define BACKEND_PRESENT 1

#if PERCPU_FLOWS
/* An LRU_PERCPU_HASH entry inserted by a program on one CPU reads as zeros
 * on every other CPU (the kernel zero-fills their values), and zero is
 * backend slot 0: a value is the flow's only with this mark, else the flow
 * is new on this CPU. */
#define FLOW_MARK 1
#else
#define FLOW_MARK 0
#endif

struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u32); __uint(max_entries, 2 * TABLE_SIZE); } ring SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u32); __uint(max_entries, 1); } control SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, struct backend); __uint(max_entries, MAX_BACKENDS); } backends SEC(".maps");
#if PERCPU_TABLES
struct { __uint(type, BPF_MAP_TYPE_LRU_HASH); __type(key, struct flow_key); __type(value, struct flow_value); __uint(max_entries, FLOWS / 2); } flows_even SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_LRU_HASH); __type(key, struct flow_key); __type(value, struct flow_value); __uint(max_entries, FLOWS / 2); } flows_odd SEC(".maps");
#elif PERCPU_FLOWS
struct { __uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH); __type(key, struct flow_key); __type(value, struct flow_value); __uint(max_entries, FLOWS); } flows SEC(".maps");
#elif FLOWS_MAP_FLAGS
struct { __uint(type, BPF_MAP_TYPE_LRU_HASH); __type(key, struct flow_key); __type(value, struct flow_value); __uint(max_entries, FLOWS); __uint(map_flags, FLOWS_MAP_FLAGS); } flows SEC(".maps");
#else
struct { __uint(type, BPF_MAP_TYPE_LRU_HASH); __type(key, struct flow_key); __type(value, struct flow_value); __uint(max_entries, FLOWS); } flows SEC(".maps");
#endif
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __type(key, __u32); __type(value, struct backend_counters); __uint(max_entries, MAX_BACKENDS + 1); } stats SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __type(key, __u32); __type(value, struct vip_counters); __uint(max_entries, 1); } vip_stats SEC(".maps");
#if NAT
/* The replies' translations, for TC egress (xpol_lang::meta::PoolMeta's
 * nat_map): key the reply's flow key (from the backend and its port to the
 * client and its port), value the VIP and its port. */
struct { __uint(type, BPF_MAP_TYPE_LRU_HASH); __type(key, struct flow_key); __type(value, struct nat_value); __uint(max_entries, FLOWS); } nat SEC(".maps");
#endif

/* MurmurHash3 x86_32 over whole words (xpol_lang::maglev::murmur3_words). */
INLINE __u32 rotl32(__u32 x, int r) { return (x << r) | (x >> (32 - r)); }
INLINE __u32 mm3_mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = rotl32(k, 15);
	k *= 0x1b873593;
	h ^= k;
	h = rotl32(h, 13);
	return h * 5 + 0xe6546b64;
}
INLINE __u32 mm3_final(__u32 h, __u32 words)
{
	h ^= words * 4;
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

#if NAT || GUE6
/* The 16-bit halves of a word, for a one's-complement sum. */
INLINE __u64 halves(__u32 w) { return (w & 0xffff) + (w >> 16); }
/* A one's-complement sum (less than 2^32) folded to 16 bits. */
INLINE __u32 fold16(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	return (sum & 0xffff) + (sum >> 16);
}
#endif
#if NAT
/* RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m'), `delta` the sum of ~m + m'
 * over the fields changed. */
INLINE __u16 csum_update(__u16 check, __u64 delta)
{
	return ~fold16((__u16)~check + delta);
}
#endif

#if VIP_PROTO == 6
#define L4_MIN 20
#else
#define L4_MIN 8
#endif

#if OUTER_V6
#define OUTER_IP 40
#else
#define OUTER_IP 20
#endif
#if GUE
#define OUTER_LEN (OUTER_IP + 8)
#else
#define OUTER_LEN OUTER_IP
#endif

#define MAX_IPV6_EXT 8
/* Flow entries as xpol's end: a TCP SYN is balanced by the table; other
 * flows expire after `idle 30s` (xpol_lang::meta::idle_ticks(30) ticks of
 * 2^30 ns of the coarse clock), their tick written once a tick. Katran
 * does the same (SYN skips its LRU; UDP entries have an atime). */
#define IDLE_TICKS 28
#define FLOW_TICK_SHIFT 30
#define MAX_L4_OFFSET 1024

SEC("xdp") int katran_like(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 frame_len = data_end - data;
	struct flow_key key = {};
	__u32 hash, ip_len, tos, df, ports;
	__u8 syn = 0;
#if NAT
	/* A packet of the VIP that NAT does not translate (a first fragment,
	 * IPv6 extension headers): dropped, counted as having no backend. */
	__u8 refuse = 0;
#endif

	if (data + 14 > data_end)
		return XDP_PASS;

#if !VIP_V6
	/* IPv4: the VIP is an IPv4 address. */
	__u8 *ip = data + 14;
	if (*(__u16 *)(data + 12) != bswap16(0x0800) || (void *)(ip + 20) > data_end)
		return XDP_PASS;
	__u8 vihl = ip[0];
	/* Version 4 and IHL at least 5: 0x45..0x4f. */
	if ((__u8)(vihl - 0x45) > 0x0a)
		return XDP_PASS;
	__u32 hlen = (vihl & 15) * 4;
	ip_len = bswap16(*(__u16 *)(ip + 2));
	if (ip_len < hlen || *(__u32 *)(ip + 16) != VIP4 || ip[9] != VIP_PROTO)
		return XDP_PASS;
	__u16 fragw = *(__u16 *)(ip + 6);
	/* Later fragments carry no ports: the rule does not match them. */
	if (fragw & bswap16(0x1fff))
		return XDP_PASS;
	__u8 *l4 = ip + hlen;
	if ((void *)(l4 + L4_MIN) > data_end || hlen + L4_MIN > ip_len)
		return XDP_PASS;
#if VIP_PROTO == 6
	if ((l4[12] >> 4) < 5)
		return XDP_PASS;
#endif
	if (*(__u16 *)(l4 + 2) != bswap16(VIP_PORT))
		return XDP_PASS;
#if SATURATE == 2
	/* The next flow: the source address's low 16 bits and the source port
	 * counted up as one 32-bit number. */
	__u32 counted = (((__u32)bswap16(*(__u16 *)(ip + 14)) << 16) | bswap16(*(__u16 *)l4)) + 1;
	*(__u16 *)(ip + 14) = bswap16(counted >> 16);
	*(__u16 *)l4 = bswap16(counted & 0xffff);
#endif
	/* A first fragment matches, but its flow has no ports. */
	ports = (fragw & bswap16(0x2000)) ? 0 : *(__u32 *)l4;
#if NAT
	refuse = (fragw & bswap16(0x2000)) != 0;
#endif
#if VIP_PROTO == 6
	syn = (l4[13] & 0x12) == 0x02;
#endif
	__u32 src = *(__u32 *)(ip + 12);
	key.src[0] = src;
	key.dst[0] = VIP4;
	key.ports = ports;
	key.proto = VIP_PROTO;
	key.family = 4;
	hash = mm3_mix(FLOW_SEED, src);
	hash = mm3_mix(hash, VIP4);
	hash = mm3_mix(hash, bswap32(ports));
	hash = mm3_mix(hash, VIP_PROTO);
	hash = mm3_final(hash, 4);
	tos = ip[1];
	df = (fragw & bswap16(0x4000)) != 0;
#else
	/* IPv6: the VIP is an IPv6 address. */
	__u8 *ip = data + 14;
	if (*(__u16 *)(data + 12) != bswap16(0x86dd) || (void *)(ip + 40) > data_end)
		return XDP_PASS;
	__u32 w0_raw = *(__u32 *)ip;
	__u32 w0 = bswap32(w0_raw);
	if ((w0 >> 28) != 6)
		return XDP_PASS;
	__u32 *dst = (__u32 *)(ip + 24);
	if (dst[0] != VIP6_0 || dst[1] != VIP6_1 || dst[2] != VIP6_2 || dst[3] != VIP6_3)
		return XDP_PASS;
	__u32 plen = bswap16(*(__u16 *)(ip + 4));
	ip_len = plen + 40;
	/* Payload length 0 (a jumbogram): the frame bounds the datagram. */
	__u64 dgram_end = plen ? 14 + 40 + plen : frame_len;
	__u32 nh = ip[6], off = 14 + 40, frag = 0;
	/* The common case first: the upper-layer header right away. */
	if (unlikely(nh != VIP_PROTO)) {
#if GUE6
		/* The outer UDP checksum would cover extension headers that
		 * the inner checksum does not (and a first fragment's inner
		 * checksum is the whole datagram's): such packets pass, as
		 * Katran's do (xpol sums their bytes). */
		return XDP_PASS;
#endif
#if NAT
		refuse = 1;
#endif
#pragma unroll
		for (int i = 0; i < MAX_IPV6_EXT; i++) {
			if (nh == VIP_PROTO)
				break;
			__u8 *x = data + off;
			if ((void *)(x + 8) > data_end)
				return XDP_PASS;
			if (nh == 0 || nh == 43 || nh == 60) {
				off += (x[1] + 1) * 8;
			} else if (nh == 44) {
				/* Later fragments carry no ports. */
				if (*(__u16 *)(x + 2) & bswap16(0xfff8))
					return XDP_PASS;
				frag = 1;
				off += 8;
			} else if (nh == 51) {
				off += (x[1] + 2) * 4;
			} else {
				return XDP_PASS;
			}
			nh = x[0];
			if (off > MAX_L4_OFFSET || off > dgram_end)
				return XDP_PASS;
		}
		if (nh != VIP_PROTO)
			return XDP_PASS;
	}
	__u8 *l4 = data + (off & (2 * MAX_L4_OFFSET - 1));
	if ((void *)(l4 + L4_MIN) > data_end || off + L4_MIN > dgram_end)
		return XDP_PASS;
#if VIP_PROTO == 6
	if ((l4[12] >> 4) < 5)
		return XDP_PASS;
#endif
	if (*(__u16 *)(l4 + 2) != bswap16(VIP_PORT))
		return XDP_PASS;
	ports = frag ? 0 : *(__u32 *)l4;
#if VIP_PROTO == 6
	syn = (l4[13] & 0x12) == 0x02;
#endif
	__u32 *src = (__u32 *)(ip + 8);
	__u32 s0 = src[0], s1 = src[1], s2 = src[2], s3 = src[3];
#if GUE6
	__u8 hop_limit = ip[7];
#if VIP_PROTO == 17
	__u16 inner_check = *(__u16 *)(l4 + 6);
#endif
#endif
	key.src[0] = s0;
	key.src[1] = s1;
	key.src[2] = s2;
	key.src[3] = s3;
	key.dst[0] = VIP6_0;
	key.dst[1] = VIP6_1;
	key.dst[2] = VIP6_2;
	key.dst[3] = VIP6_3;
	key.ports = ports;
	key.proto = VIP_PROTO;
	key.family = 6;
	hash = mm3_mix(FLOW_SEED, s0);
	hash = mm3_mix(hash, s1);
	hash = mm3_mix(hash, s2);
	hash = mm3_mix(hash, s3);
	hash = mm3_mix(hash, VIP6_0);
	hash = mm3_mix(hash, VIP6_1);
	hash = mm3_mix(hash, VIP6_2);
	hash = mm3_mix(hash, VIP6_3);
	hash = mm3_mix(hash, bswap32(ports));
	hash = mm3_mix(hash, VIP_PROTO);
	hash = mm3_final(hash, 10);
	tos = (w0 >> 20) & 0xff;
	df = 1;
#endif

	__u32 zero = 0;
	struct vip_counters *vc = bpf_map_lookup_elem(&vip_stats, &zero);
	if (vc) {
		vc->packets += 1;
		vc->bytes += frame_len;
	}
#if NAT
	if (unlikely(refuse))
		goto no_backend;
#endif

	/* An established flow keeps its backend while the slot holds one. */
	__u32 slot;
	__u64 new_flow = 0;
	struct backend *be = 0;
#if PERCPU_TABLES
	/* Two call sites, each with its own map: merged into one call on a
	 * selected map (what clang does unprompted), the verifier would no
	 * longer know the map there, and would neither inline the lookup nor
	 * call the update directly. ONE_SITE keeps the branches apart. */
	__u32 odd = bpf_get_smp_processor_id() & 1;
	struct flow_value *fv;
	if (odd) {
		fv = bpf_map_lookup_elem(&flows_odd, &key);
		ONE_SITE(fv);
	} else {
		fv = bpf_map_lookup_elem(&flows_even, &key);
	}
#else
	struct flow_value *fv = bpf_map_lookup_elem(&flows, &key);
#endif
#if PERCPU_FLOWS
	if (fv && !(fv->reserved & FLOW_MARK))
		fv = 0;
#endif
#if VIP_PROTO == 6
	if (unlikely(syn))
		fv = 0;
#elif !PERCPU_FLOWS
	if (likely(fv != 0)) {
		__u32 now = bpf_ktime_get_coarse_ns() >> FLOW_TICK_SHIFT;
		__u32 seen = fv->reserved;
		if (unlikely(now - seen > IDLE_TICKS))
			fv = 0;
		else if (seen != now)
			fv->reserved = now;
	}
#endif
	if (likely(fv != 0)) {
		slot = fv->backend;
		be = bpf_map_lookup_elem(&backends, &slot);
		if (be && !(be->flags & BACKEND_PRESENT))
			be = 0;
	}
	if (unlikely(!be)) {
		__u32 *half = bpf_map_lookup_elem(&control, &zero);
		if (!half)
			goto no_backend;
		__u32 idx = (*half & 1) * TABLE_SIZE + hash % TABLE_SIZE;
		__u32 *s = bpf_map_lookup_elem(&ring, &idx);
		if (!s)
			goto no_backend;
		slot = *s;
		be = bpf_map_lookup_elem(&backends, &slot);
		if (!be || !(be->flags & BACKEND_PRESENT))
			goto no_backend;
#if PERCPU_FLOWS
		struct flow_value nv = { .backend = slot, .reserved = FLOW_MARK };
#else
		struct flow_value nv = { .backend = slot, .reserved = bpf_ktime_get_coarse_ns() >> FLOW_TICK_SHIFT };
#endif
#if PERCPU_TABLES
		if (odd) {
			long r = bpf_map_update_elem(&flows_odd, &key, &nv, 0);
			ONE_SITE(r);
		} else {
			bpf_map_update_elem(&flows_even, &key, &nv, 0);
		}
#else
		bpf_map_update_elem(&flows, &key, &nv, 0);
#endif
		new_flow = 1;
	}
	struct backend_counters *bc = bpf_map_lookup_elem(&stats, &slot);
	if (bc) {
		bc->packets += 1;
		bc->bytes += frame_len;
		bc->new_flows += new_flow;
	}
#if SATURATE
	return XDP_PASS;
#endif

#if NAT
	/* DNAT: the destination address and port become the backend's, in
	 * place. The checksums are updated by the difference (RFC 1624), the
	 * old address and port being the VIP's, compiled in. */
#if VIP_V6
	__u32 n0 = be->addr[0], n1 = be->addr[1], n2 = be->addr[2], n3 = be->addr[3];
	__u64 delta = halves(~VIP6_0) + halves(~VIP6_1) + halves(~VIP6_2) + halves(~VIP6_3) + halves(n0) + halves(n1) + halves(n2) + halves(n3);
#else
	__u32 n0 = be->addr[0];
	__u64 delta = halves(~VIP4) + halves(n0);
	/* IPv4's header checksum covers the address. */
	*(__u16 *)(ip + 10) = csum_update(*(__u16 *)(ip + 10), delta);
#endif
	/* TCP's and UDP's cover the address (in the pseudo-header) and the port. */
	__u64 l4_delta = delta + (__u16)~bswap16(VIP_PORT) + bswap16(NAT_PORT);
#if VIP_PROTO == 6
	*(__u16 *)(l4 + 16) = csum_update(*(__u16 *)(l4 + 16), l4_delta);
#else
	/* A UDP checksum of 0 is none, and stays; a computed 0 is sent as 0xffff. */
	__u16 udp_check = *(__u16 *)(l4 + 6);
	if (udp_check) {
		udp_check = csum_update(udp_check, l4_delta);
		*(__u16 *)(l4 + 6) = udp_check ? udp_check : 0xffff;
	}
#endif
	/* The reply's translation back, for TC egress, unless it is recorded
	 * already for this VIP and port (the client's port may be reused
	 * towards another service on the same backend: this flow's wins). */
	struct flow_key reply = {};
	reply.src[0] = n0;
#if VIP_V6
	reply.src[1] = n1;
	reply.src[2] = n2;
	reply.src[3] = n3;
	reply.dst[0] = s0;
	reply.dst[1] = s1;
	reply.dst[2] = s2;
	reply.dst[3] = s3;
	reply.family = 6;
#else
	reply.dst[0] = src;
	reply.family = 4;
#endif
	/* From the backend's port to the client's. */
	reply.ports = bswap16(NAT_PORT) | (ports << 16);
	reply.proto = VIP_PROTO;
	struct nat_value *known = bpf_map_lookup_elem(&nat, &reply);
#if VIP_V6
	int same = known && known->addr[0] == VIP6_0 && known->addr[1] == VIP6_1 && known->addr[2] == VIP6_2 && known->addr[3] == VIP6_3 && known->port == bswap16(VIP_PORT);
#else
	int same = known && known->addr[0] == VIP4 && known->port == bswap16(VIP_PORT);
#endif
	if (unlikely(!same)) {
#if VIP_V6
		struct nat_value nv = { .addr = { VIP6_0, VIP6_1, VIP6_2, VIP6_3 }, .port = bswap16(VIP_PORT) };
#else
		struct nat_value nv = { .addr = { VIP4 }, .port = bswap16(VIP_PORT) };
#endif
		bpf_map_update_elem(&nat, &reply, &nv, 0);
	}
	/* The rewrite. */
	struct bpf_fib_lookup fib = {};
#if VIP_V6
	__u32 *daddr = (__u32 *)(ip + 24);
	daddr[0] = n0;
	daddr[1] = n1;
	daddr[2] = n2;
	daddr[3] = n3;
	fib.family = 10;
	fib.ipv6_src[0] = s0;
	fib.ipv6_src[1] = s1;
	fib.ipv6_src[2] = s2;
	fib.ipv6_src[3] = s3;
	fib.ipv6_dst[0] = n0;
	fib.ipv6_dst[1] = n1;
	fib.ipv6_dst[2] = n2;
	fib.ipv6_dst[3] = n3;
#else
	*(__u32 *)(ip + 16) = n0;
	fib.family = 2;
	fib.tos = tos;
	fib.ipv4_src = src;
	fib.ipv4_dst = n0;
#endif
	*(__u16 *)(l4 + 2) = bswap16(NAT_PORT);
	(void)df; /* the packet's own DF stays */
	(void)tos; /* IPv6's traffic class stays; IPv4's goes to the FIB */
#else
	/* Encapsulate: the outer headers go between the Ethernet header (the
	 * MACs as they came, for when the FIB gives no next hop) and the IP
	 * packet. */
	__u32 mac0 = *(__u32 *)data;
	__u64 mac1 = *(__u64 *)(data + 4);
	if (bpf_xdp_adjust_head(ctx, -OUTER_LEN))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + 14 + OUTER_LEN > data_end)
		return XDP_DROP;
	*(__u32 *)data = mac0;
	*(__u64 *)(data + 4) = mac1;
	__u8 *o = data + 14;
	__u32 outer_len = ip_len + OUTER_LEN;
#if GUE
	__u8 next = 17;
#elif VIP_V6
	__u8 next = 41;
#else
	__u8 next = 4;
#endif
	struct bpf_fib_lookup fib = {};
#if !OUTER_V6
	*(__u16 *)(data + 12) = bswap16(0x0800);
	__u32 daddr = be->addr[0];
	/* The header as five words as stored; the one's-complement sum does
	 * not depend on byte order, so it is summed as stored too. */
	__u32 h0 = 0x45 | (tos << 8) | ((__u32)bswap16(outer_len) << 16);
	__u32 h1 = df ? 0x00400000 : 0; /* id 0; DF */
	__u32 h2 = 64 | (next << 8);    /* TTL, protocol, checksum 0 */
	__u64 sum = (h0 & 0xffff) + (h0 >> 16) + (h1 >> 16) + h2 + (OUTER_SRC4 & 0xffff) + (OUTER_SRC4 >> 16) + (daddr & 0xffff) + (daddr >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	*(__u32 *)(o + 0) = h0;
	*(__u32 *)(o + 4) = h1;
	*(__u32 *)(o + 8) = h2 | ((__u32)(~sum & 0xffff) << 16);
	*(__u32 *)(o + 12) = OUTER_SRC4;
	*(__u32 *)(o + 16) = daddr;
	fib.family = 2;
	fib.tos = tos;
	fib.ipv4_src = OUTER_SRC4;
	fib.ipv4_dst = daddr;
#else
	(void)df; /* IPv6 outside: no DF bit */
	*(__u16 *)(data + 12) = bswap16(0x86dd);
	*(__u32 *)(o + 0) = bswap32((6u << 28) | (tos << 20) | (hash & 0xfffff));
	*(__u16 *)(o + 4) = bswap16(outer_len - 40);
	o[6] = next;
	o[7] = 64;
	*(__u32 *)(o + 8) = OUTER_SRC6_0;
	*(__u32 *)(o + 12) = OUTER_SRC6_1;
	*(__u32 *)(o + 16) = OUTER_SRC6_2;
	*(__u32 *)(o + 20) = OUTER_SRC6_3;
	__u32 d0 = be->addr[0], d1 = be->addr[1], d2 = be->addr[2], d3 = be->addr[3];
	*(__u32 *)(o + 24) = d0;
	*(__u32 *)(o + 28) = d1;
	*(__u32 *)(o + 32) = d2;
	*(__u32 *)(o + 36) = d3;
	fib.family = 10;
	fib.ipv6_src[0] = OUTER_SRC6_0;
	fib.ipv6_src[1] = OUTER_SRC6_1;
	fib.ipv6_src[2] = OUTER_SRC6_2;
	fib.ipv6_src[3] = OUTER_SRC6_3;
	fib.ipv6_dst[0] = d0;
	fib.ipv6_dst[1] = d1;
	fib.ipv6_dst[2] = d2;
	fib.ipv6_dst[3] = d3;
#endif
#if GUE
	__u8 *udp = o + OUTER_IP;
	__u16 gue_sport = bswap16(0xc000 | (hash & 0x3fff));
	__u16 udp_len = bswap16(ip_len + 8);
	*(__u16 *)(udp + 0) = gue_sport;
	*(__u16 *)(udp + 2) = bswap16(GUE_PORT);
	*(__u16 *)(udp + 4) = udp_len;
#if GUE6
	/* UDP over IPv6 needs a checksum (RFC 8200, 8.1): over the outer
	 * pseudo-header, the UDP header and the packet inside. Katran's way
	 * (gue_csum_v6): the inner TCP or UDP checksum already sums the
	 * segment with its own pseudo-header to 0, so the packet inside adds
	 * its IPv6 header less that pseudo-header: the addresses and length
	 * cancel, which leaves the first word, the next header and hop limit
	 * less the pseudo-header's next header. Katran makes a dozen
	 * bpf_csum_diff calls for it; here it is summed in registers, as
	 * stored (byte order does not change a one's-complement sum), like
	 * the IPv4 header's. */
	__u64 usum = 2 * (__u64)udp_len + gue_sport + bswap16(GUE_PORT) + bswap16(17)
		+ halves(OUTER_SRC6_0) + halves(OUTER_SRC6_1) + halves(OUTER_SRC6_2) + halves(OUTER_SRC6_3)
		+ halves(d0) + halves(d1) + halves(d2) + halves(d3)
		+ halves(w0_raw) + (VIP_PROTO | ((__u32)hop_limit << 8)) + (__u16)~bswap16(VIP_PROTO);
	__u16 udp_check = ~fold16(usum);
	/* 0 is "no checksum": a computed 0 is sent as 0xffff. */
	udp_check = udp_check ? udp_check : 0xffff;
#if VIP_PROTO == 17
	/* A UDP datagram inside without a checksum (which IPv6 does not
	 * allow) gets none outside either (RFC 6935 allows it for tunnels). */
	if (!inner_check)
		udp_check = 0;
#endif
	*(__u16 *)(udp + 6) = udp_check;
#else
	*(__u16 *)(udp + 6) = 0; /* no checksum over IPv4 */
#endif
#endif
#endif

	/* The next hop. */
	__u32 ingress = ctx->ingress_ifindex;
#if NAT
	fib.l4_protocol = VIP_PROTO;
	fib.tot_len = ip_len;
#else
	fib.l4_protocol = next;
	fib.tot_len = outer_len;
#endif
	fib.ifindex = ingress;
	long rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (likely(rc == FIB_SUCCESS)) {
		/* Packet pointers stay valid across bpf_fib_lookup. The MACs as
		 * two aligned loads from the stack (smac at 52, dmac at 58) and
		 * four stores, rather than twelve byte copies. */
		__u32 smac_head = *(__u32 *)((__u8 *)&fib + 52);
		__u64 tail = *(__u64 *)((__u8 *)&fib + 56);
		*(__u32 *)data = tail >> 16;
		*(__u16 *)(data + 4) = tail >> 48;
		*(__u32 *)(data + 6) = smac_head;
		*(__u16 *)(data + 10) = tail;
		if (fib.ifindex == ingress)
			return XDP_TX;
		return bpf_redirect(fib.ifindex, 0);
	}
#if NAT
	/* No next hop here (or too big: the stack answers the client): the
	 * stack forwards it. */
	return XDP_PASS;
#else
	/* Too big for the way out: dropped; anything else: the stack decides. */
	return rc == FIB_FRAG_NEEDED ? XDP_DROP : XDP_PASS;
#endif

no_backend:;
	__u32 none = MAX_BACKENDS;
	struct backend_counters *nc = bpf_map_lookup_elem(&stats, &none);
	if (nc) {
		nc->packets += 1;
		nc->bytes += frame_len;
	}
	return XDP_DROP;
}

char _license[] SEC("license") = "GPL";
