// The kernel's conntrack through its kfunc against a table of one's own,
// per packet: the measurement behind docs/conntrack.md's choice. Built
// with clang-14 (the LLVM xpol uses) and loaded with bpftool (libbpf,
// which resolves kfunc calls; aya, xpol's loader, does not): see run.sh.
//
// Three XDP programs on an untagged IPv4/UDP frame: `parse_only` (the
// floor), `kfunc` (bpf_xdp_ct_lookup, read the entry's status, release
// it) and `own_map` (a 40-byte key with the endpoints in order, an LRU
// hash lookup, the expiry checked and written, as xpol's table does).
#pragma clang attribute push (__attribute__((preserve_access_index)), apply_to = record)
#include "vmlinux.h"
#pragma clang attribute pop
#define SEC(n) __attribute__((section(n), used))
#define __ksym __attribute__((section(".ksyms")))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, __u64 flags) = (void *)2;
static __u64 (*bpf_ktime_get_coarse_ns)(void) = (void *)160;

extern struct nf_conn *bpf_xdp_ct_lookup(struct xdp_md *, struct bpf_sock_tuple *, __u32, struct bpf_ct_opts *, __u32) __ksym;
extern void bpf_ct_release(struct nf_conn *) __ksym;

struct ctkey { __u32 lo[4]; __u32 hi[4]; __u16 lop, hip; __u8 proto, family, pad[2]; };
struct ctval { __u64 expires; __u8 state, flags, pad[6]; };
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, struct ctkey);
    __type(value, struct ctval);
} flows SEC(".maps");

static inline __attribute__((always_inline)) struct iphdr *ip4(struct xdp_md *ctx, struct udphdr **l4) {
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = data + 14;
    struct udphdr *u = data + 34;
    if ((void *)(u + 1) > end || eth->h_proto != __builtin_bswap16(0x0800) || ip->ihl != 5) return 0;
    *l4 = u;
    return ip;
}

SEC("xdp") int parse_only(struct xdp_md *ctx) {
    struct udphdr *u;
    struct iphdr *ip = ip4(ctx, &u);
    if (!ip) return XDP_ABORTED;
    return ip->protocol == 17 ? XDP_PASS : XDP_DROP;
}

SEC("xdp") int kfunc(struct xdp_md *ctx) {
    struct udphdr *u;
    struct iphdr *ip = ip4(ctx, &u);
    if (!ip) return XDP_ABORTED;
    struct bpf_sock_tuple t = {};
    t.ipv4.saddr = ip->saddr; t.ipv4.daddr = ip->daddr; t.ipv4.sport = u->source; t.ipv4.dport = u->dest;
    struct bpf_ct_opts o = { .netns_id = -1, .l4proto = ip->protocol };
    struct nf_conn *ct = bpf_xdp_ct_lookup(ctx, &t, sizeof(t.ipv4), &o, sizeof(o));
    if (!ct) return XDP_DROP;
    unsigned long status = ct->status;
    bpf_ct_release(ct);
    return (status & 2 /* IPS_SEEN_REPLY */) ? XDP_TX : XDP_PASS;
}

SEC("xdp") int own_map(struct xdp_md *ctx) {
    struct udphdr *u;
    struct iphdr *ip = ip4(ctx, &u);
    if (!ip) return XDP_ABORTED;
    struct ctkey k = {};
    int lo_first = ip->saddr < ip->daddr;
    k.lo[0] = lo_first ? ip->saddr : ip->daddr; k.hi[0] = lo_first ? ip->daddr : ip->saddr;
    k.lop = lo_first ? u->source : u->dest; k.hip = lo_first ? u->dest : u->source;
    k.proto = ip->protocol; k.family = 4;
    struct ctval *v = bpf_map_lookup_elem(&flows, &k);
    if (!v) {
        struct ctval n = { .expires = bpf_ktime_get_coarse_ns() + 30000000000ull, .state = 1, .flags = lo_first };
        bpf_map_update_elem(&flows, &k, &n, 0);
        return XDP_DROP;
    }
    __u64 now = bpf_ktime_get_coarse_ns();
    if (v->expires < now) return XDP_DROP;
    v->expires = now + 30000000000ull;
    return (v->flags & 2) ? XDP_TX : XDP_PASS;
}
char _license[] SEC("license") = "GPL";
