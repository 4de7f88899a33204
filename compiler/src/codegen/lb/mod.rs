//! Lowering of `lb(POOL, ...)`: the load balancer's packet path in XDP.
//!
//! For a packet of an IP flow: the flow key and hash (the 5-tuple, or what
//! `by:` names; [`xpol_lang::maglev::murmur3_words`] over
//! [`xpol_lang::maglev::addr_words`], little-endian words as loaded), the
//! flow table (an established flow keeps its backend while the backend is
//! in the pool; a TCP SYN starts over, other flows expire when idle), else
//! the Maglev table; then the packet is encapsulated towards the backend (IPIP or GUE,
//! `bpf_xdp_adjust_head`), its next hop found with `bpf_fib_lookup`, and it
//! is sent with `XDP_TX` or a redirect. When the FIB has no complete answer
//! (no route, no neighbour entry yet) the encapsulated packet goes up the
//! kernel's stack, which resolves the neighbour and forwards it.
//!
//! The maps and their layouts are `xpol_lang::meta::PoolMeta`'s. Delivery
//! has a module each: [`encap`] (IPIP, GUE, the next hop, packet too big)
//! and [`nat`] (the rewrite, and its reverse on `tc:egress`).

mod encap;
mod nat;

pub use nat::reverse_nat;

use super::builder::{helper, map_type, Bpf, MapDef, ModuleCx, BPF_ANY, XDP_MD_INGRESS_IFINDEX};
use super::lower::Lower;
use crate::ir::{self, Balance, Delivery, Encap, FlowHash, OuterSource};
use inkwell::values::{IntValue, PointerValue};
use inkwell::IntPredicate;
use std::net::IpAddr;
use xpol_lang::meta::{self, PoolMeta};

/// The maps of one pool, as codegen refers to them.
#[derive(Clone, Copy)]
pub struct PoolMaps<'ctx> {
    pub ring: MapDef<'ctx>,
    pub control: MapDef<'ctx>,
    pub backends: MapDef<'ctx>,
    pub flows: MapDef<'ctx>,
    pub stats: MapDef<'ctx>,
    /// With `nat`: reply 5-tuple -> the VIP and port to put back.
    pub nat: Option<MapDef<'ctx>>,
    pub table_size: u32,
    pub max_backends: u32,
    /// `PoolMeta::idle_secs` in ticks of `meta::FLOW_TICK_SHIFT`.
    pub idle_ticks: u32,
    pub v6: bool,
}

/// Size of [`meta::FlowKey`].
const FLOW_KEY_BYTES: u32 = 40;

/// The purpose of the 40-byte stack buffer of a flow's key
/// ([`Bpf::stack_buf`]): the connection table's key, `lb`'s flow key and
/// its NAT reply key. One buffer: each is done with it before the next
/// asks for it (`lb` ends the packet's evaluation without writing the
/// connection's entry, the one later use of the connection's key), and a
/// policy with `ct.state` and `lb` in one program took 80 bytes more of
/// the kernel's 512 than this (the stack's limit, with LLVM's spills).
pub const FLOW_KEY_BUF: &str = "flow_key";
/// Size of [`meta::BackendValue`].
const BACKEND_BYTES: u32 = 20;
/// Size of [`meta::NatValue`].
const NAT_VALUE_BYTES: u32 = 20;
/// Size of [`meta::BackendCounters`].
const STATS_BYTES: u32 = 24;

/// Defines a pool's maps and describes them for the object's metadata.
pub fn define_pool<'ctx>(m: &ModuleCx<'ctx>, pool: &ir::Pool, nat: bool) -> (PoolMaps<'ctx>, PoolMeta) {
    let name = |suffix: &str| format!("xl_{}_{suffix}", pool.name);
    let meta = PoolMeta {
        name: pool.name.clone(),
        v6: pool.v6,
        backends: pool.backends.iter().map(|b| meta::BackendMeta { addr: b.addr, weight: b.weight }).collect(),
        table_size: pool.table_size,
        max_backends: pool.max_backends,
        flows: pool.flows,
        idle_secs: pool.idle_secs,
        ring_map: name("ring"),
        control_map: name("ctl"),
        backends_map: name("be"),
        flows_map: name("flows"),
        stats_map: name("stats"),
        nat_map: nat.then(|| name("nat")),
    };
    let maps = PoolMaps {
        ring: m.define_map(&meta.ring_map, map_type::ARRAY, 4, 4, 2 * pool.table_size, 0),
        control: m.define_map(&meta.control_map, map_type::ARRAY, 4, 4, 1, 0),
        backends: m.define_map(&meta.backends_map, map_type::ARRAY, 4, BACKEND_BYTES, pool.max_backends, 0),
        flows: m.define_map(&meta.flows_map, map_type::LRU_HASH, FLOW_KEY_BYTES, 8, pool.flows, 0),
        stats: m.define_map(&meta.stats_map, map_type::PERCPU_ARRAY, 4, STATS_BYTES, pool.max_backends + 1, 0),
        nat: meta.nat_map.as_ref().map(|n| m.define_map(n, map_type::LRU_HASH, FLOW_KEY_BYTES, NAT_VALUE_BYTES, pool.flows, 0)),
        table_size: pool.table_size,
        max_backends: pool.max_backends,
        idle_ticks: meta::idle_ticks(pool.idle_secs),
        v6: pool.v6,
    };
    (maps, meta)
}

/// An address of the flow: IPv4 as loaded (network order in memory), or
/// IPv6 as two big-endian halves (as the parser keeps them).
#[derive(Clone, Copy)]
enum Addr<'ctx> {
    V4(IntValue<'ctx>),
    V6(IntValue<'ctx>, IntValue<'ctx>),
}

/// Bounds the quoted packet's offsets for the verifier (as the parser
/// bounds its own, `parse::MAX_L4_OFFSET`).
const MAX_QUOTE_OFFSET: u64 = 0x3ff;

/// XDP return codes.
const XDP_DROP: u64 = 1;
const XDP_PASS: u64 = 2;
const XDP_TX: u64 = 3;
/// The outer header's TTL or hop limit.
pub const OUTER_TTL: u8 = 64;
/// `bpf_fib_lookup` results (enum `BPF_FIB_LKUP_RET_*`).
const FIB_SUCCESS: u64 = 0;
const FIB_FRAG_NEEDED: u64 = 8;
/// `struct bpf_fib_lookup`: its size and the offsets used.
const FIB_PARAMS_BYTES: u32 = 64;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// Flags of `bpf_l4_csum_replace`: the field is in the pseudo-header; a
/// UDP checksum of 0 stays 0 (and a computed 0 becomes 0xffff).
const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;

/// The outer headers' length: IPv4 or IPv6, and UDP for GUE.
pub fn outer_len(v6: bool, encap: Encap) -> u64 {
    (if v6 { 40 } else { 20 }) + if matches!(encap, Encap::Gue { .. }) { 8 } else { 0 }
}

impl<'ctx> Lower<'_, '_, 'ctx> {
    /// `lb(...)`: ends the packet's evaluation (see the module doc). A
    /// packet that is not IP passes; one whose pool has no backend for it
    /// is dropped and counted in the pool's last stats slot.
    pub(super) fn balance(&self, lb: &Balance) {
        let pool = self.maps.pools[lb.pool];
        let b = &*self.b;
        let h = &self.h;
        let get = |p| b.get_fact(p);
        let i32t = b.m.cx.i32_type();
        let is4 = get(h.ip4_ok);
        let is6 = get(h.ip6_ok);
        let ip = b.block("lb_ip");
        let not_ip = b.block("lb_not_ip");
        b.cond_br_likely(b.or(is4, is6), ip, not_ip);
        b.at(not_ip);
        b.ret(XDP_PASS);
        b.at(ip);
        if let Delivery::Nat { .. } = lb.delivery {
            // `nat` translates TCP and UDP of the pool's family, whose L4
            // header is right after the IP header (no IPv6 extension
            // headers), and no fragment (later ones carry no ports): the
            // rest is dropped, counted as having no backend.
            let family = if pool.v6 { is6 } else { is4 };
            let l4 = b.or(get(h.tcp_ok), get(h.udp_ok));
            let whole = b.not(b.and(get(h.proto_ok), get(h.frag)));
            let direct = if pool.v6 { b.eq(get(h.ip6_nh), get(h.proto)) } else { b.bool(true) };
            let can = b.block("lb_nat_can");
            let cannot = b.block("lb_nat_cannot");
            b.cond_br_likely(b.and(b.and(family, l4), b.and(whole, direct)), can, cannot);
            b.at(cannot);
            self.count_backend(pool, b.c32(pool.max_backends), b.c64(0));
            b.ret(XDP_DROP);
            b.at(can);
        }

        // The flow: ports (0 for fragments, whose later parts carry none,
        // and for packets without ports) and protocol, both only where the
        // protocol is known (an IPv6 extension-header chain that ends in
        // bounds).
        // Chosen by the header the parser found rather than combined: where
        // the rule implies TCP (or UDP), LLVM knows the flag and folds the
        // choice, and the protocol word of the hash becomes a constant.
        let proto_ok = get(h.proto_ok);
        let frag = b.and(proto_ok, get(h.frag));
        let zero = b.c64(0);
        let (tcp, udp) = (get(h.tcp_ok), get(h.udp_ok));
        // Both ports as one word, chosen once (one branch on the fragment
        // bit, not one per port), swapped back to the wire's order where
        // the parser's loads are, so that LLVM folds the two swaps.
        let ports = b.trunc(b.select(frag, zero, b.select(tcp, ports_word(b, get(h.tcp_sport), get(h.tcp_dport)), b.select(udp, ports_word(b, get(h.udp_sport), get(h.udp_dport)), zero))), i32t);
        let proto = b.select(tcp, b.c64(6), b.select(udp, b.c64(17), b.select(proto_ok, get(h.proto), zero)));
        let key = b.stack_buf(FLOW_KEY_BYTES, FLOW_KEY_BUF);

        // An ICMP error about a flow (unreachable, fragmentation needed,
        // time exceeded, parameter problem; ICMPv6 1 to 4) goes where the
        // flow it quotes goes: the quoted packet is a reply of that flow,
        // its addresses and ports the other way round.
        let icmp_type = get(h.icmp_type);
        let is_type = |t: u64| b.eq(icmp_type, b.c64(t));
        let icmp4 = get(h.icmp4_ok);
        let icmp6 = b.and(get(h.icmp6_ok), b.eq(get(h.ip6_nh), b.c64(58)));
        // The hash where every packet needs it (the outer header carries
        // it), computed on each path of the flow's key, where LLVM folds
        // what the rule makes constant (the VIP); otherwise only a new flow
        // computes it, for the Maglev table: an established IPv4-in-IPv4 or
        // NAT flow goes without (about 70 instructions).
        let eager = match lb.delivery {
            Delivery::Encap { encap, src } => pool.v6 || matches!(encap, Encap::Gue { .. }) || matches!(src, OuterSource::PerFlow(..)),
            Delivery::Nat { .. } => false,
        };
        let hashed = b.block("lb_hashed");
        let mut incoming = Vec::new();
        let v4 = b.block("lb_v4");
        let v6 = b.block("lb_v6");
        let by_family = b.block("lb_by_family");
        let icmp = b.block("lb_icmp");
        let icmp_err = b.block("lb_icmp_error");
        // Tested apart from the type, so that a packet the parser knows is
        // not ICMP skips the type's compares.
        b.cond_br_unlikely(b.or(icmp4, icmp6), icmp, by_family);
        b.at(icmp);
        let err4 = b.and(icmp4, b.or(is_type(3), b.or(is_type(11), is_type(12))));
        let err6 = b.and(icmp6, b.and(b.cmp(IntPredicate::UGE, icmp_type, b.c64(1)), b.cmp(IntPredicate::ULE, icmp_type, b.c64(4))));
        b.cond_br(b.or(err4, err6), icmp_err, by_family);
        b.at(by_family);
        b.cond_br_likely(is4, v4, v6);

        // The quoted packet: 8 bytes into the ICMP message, its IP header
        // (and at least its ports for TCP and UDP). One that is cut short
        // is balanced as the packet itself.
        b.at(icmp_err);
        let quoted4 = b.block("lb_quoted4");
        let quoted6 = b.block("lb_quoted6");
        let l3 = b.add(b.c64(14), b.mul(get(h.vlan_depth), b.c64(4)));
        let ihl = get(h.ihl);
        b.cond_br(is4, quoted4, quoted6);
        for family_v6 in [false, true] {
            b.at(if family_v6 { quoted6 } else { quoted4 });
            let ip_hdr = if family_v6 { b.c64(40) } else { b.mul(ihl, b.c64(4)) };
            let at = b.and(b.add(b.add(l3, ip_hdr), b.c64(8)), b.c64(MAX_QUOTE_OFFSET));
            let (data, end) = b.xdp_bounds();
            let q = b.pkt_ptr(data, at);
            let min = if family_v6 { 40 } else { 20 };
            let whole = b.block("lb_quoted_header");
            b.cond_br_likely(b.fits(q, min, end), whole, if family_v6 { v6 } else { v4 });
            b.at(whole);
            let (qsrc, qdst, qproto, qhl) = if family_v6 {
                let a = |off: u64| Addr::V6(b.load_be(q, off, 8), b.load_be(q, off + 8, 8));
                (a(8), a(24), b.load_be(q, 6, 1), b.c64(40))
            } else {
                let a = |off: u64| Addr::V4(b.load_raw(q, off, 4));
                (a(12), a(16), b.load_be(q, 9, 1), b.mul(b.and(b.load_be(q, 0, 1), b.c64(0xf)), b.c64(4)))
            };
            // The quoted ports, when the quote holds them (TCP or UDP, and
            // not a later IPv4 fragment, whose payload starts elsewhere).
            let first = if family_v6 { b.bool(true) } else { b.eq(b.and(b.load_be(q, 6, 2), b.c64(0x1fff)), b.c64(0)) };
            let has_ports = b.and(first, b.or(b.eq(qproto, b.c64(6)), b.eq(qproto, b.c64(17))));
            let p = b.pkt_ptr(data, b.and(b.add(at, qhl), b.c64(MAX_QUOTE_OFFSET)));
            let ports_there = b.block("lb_quoted_ports");
            let no_ports = b.block("lb_quoted_no_ports");
            let ports_done = b.block("lb_quoted_ports_done");
            b.cond_br(b.and(has_ports, b.fits(p, 4, end)), ports_there, no_ports);
            b.at(ports_there);
            let (qs, qd) = (b.load_be(p, 0, 2), b.load_be(p, 2, 2));
            // The flow the other way round.
            let reversed = b.trunc(ports_word(b, qd, qs), i32t);
            b.br(ports_done);
            b.at(no_ports);
            b.br(ports_done);
            b.at(ports_done);
            let qports = b.phi(&[(reversed, ports_there), (b.c32(0), no_ports)]);
            let words = self.flow_key(lb, key, qdst, qsrc, qports, qproto);
            let hash = eager.then(|| murmur3(b, xpol_lang::maglev::FLOW_SEED, &words));
            incoming.push((family_v6, hash, b.zext64(b.eq(qproto, b.c64(6))), b.cur()));
            b.br(hashed);
        }

        // Any other packet: its own flow.
        for family_v6 in [false, true] {
            b.at(if family_v6 { v6 } else { v4 });
            let (src, dst) = if family_v6 {
                (Addr::V6(get(h.src6_hi), get(h.src6_lo)), Addr::V6(get(h.dst6_hi), get(h.dst6_lo)))
            } else {
                (Addr::V4(b.trunc(get(h.src4), i32t)), Addr::V4(b.trunc(get(h.dst4), i32t)))
            };
            let words = self.flow_key(lb, key, src, dst, ports, proto);
            let hash = eager.then(|| murmur3(b, xpol_lang::maglev::FLOW_SEED, &words));
            // TCP as the parser saw it: a constant where the program was
            // specialized for the L4 header.
            incoming.push((family_v6, hash, b.zext64(get(h.tcp_ok)), b.cur()));
            b.br(hashed);
        }
        b.at(hashed);
        // The flow's protocol is TCP (the key's: the quoted flow's for an
        // ICMP error).
        let flow_tcp = b.phi(&incoming.iter().map(|&(_, _, t, bb)| (t, bb)).collect::<Vec<_>>());
        let eager_hash = eager.then(|| b.phi(&incoming.iter().filter_map(|&(_, h, _, bb)| Some((h?, bb))).collect::<Vec<_>>()));
        // Otherwise the words are read back from the key where a new flow
        // needs them: carried over the merge instead, they would be set
        // (spilled) on every packet's path.
        let flow_v6 = b.phi(&incoming.iter().map(|&(v6, _, _, bb)| (b.bool(v6), bb)).collect::<Vec<_>>());
        let families = (incoming.iter().any(|&(v6, ..)| !v6), incoming.iter().any(|&(v6, ..)| v6));

        // The flow table: a flow keeps its backend while the backend's slot
        // holds one. A TCP SYN (without ACK) starts a connection, which the
        // table balances: the entry may be the same 5-tuple's previous
        // connection, and the pool may have changed since (a drained
        // backend gets no new connections).
        let slot_key = b.stack_buf(4, "lb_slot");
        let lookup = b.block("lb_flow_lookup");
        let hit = b.block("lb_flow_hit");
        let miss = b.block("lb_flow_miss");
        let chosen = b.block("lb_backend");
        let none = b.block("lb_no_backend");
        let syn = b.and(get(h.tcp_ok), b.eq(b.and(get(h.tcp_flags), b.c64(0x12)), b.c64(0x02)));
        b.cond_br_unlikely(syn, miss, lookup);
        b.at(lookup);
        let flow = b.map_lookup(pool.flows, key);
        b.br_if_null(flow, miss, hit);
        b.at(hit);
        let hit_slot = b.load_raw(flow, 0, 4);
        // A flow that is not TCP (the key's protocol: a quoted flow's for
        // an ICMP error) has no end to see: its entry expires when idle.
        let live = b.block("lb_flow_live");
        let idle_check = b.block("lb_flow_idle_check");
        b.cond_br_likely(b.cmp(IntPredicate::NE, flow_tcp, b.c64(0)), live, idle_check);
        b.at(idle_check);
        let now = flow_tick(b);
        let seen = b.load_raw(flow, 4, 4);
        let touch = b.block("lb_flow_touch");
        let touched = b.block("lb_flow_touched");
        b.cond_br_unlikely(b.cmp(IntPredicate::UGT, b.sub(now, seen), b.c32(pool.idle_ticks)), miss, touch);
        b.at(touch);
        // Written once a tick, not per packet: a store to the shared entry
        // on every packet would move its cache line between CPUs.
        b.cond_br(b.eq(seen, now), live, touched);
        b.at(touched);
        b.store_at(flow, 4, now);
        b.br(live);
        b.at(live);
        let hit_be = self.present_backend(pool, slot_key, hit_slot, miss);
        let hit_ok = b.cur();
        b.br(chosen);
        // A new flow (or one whose backend left): the Maglev table.
        b.at(miss);
        let ring_key = b.stack_buf(4, "lb_ring");
        b.store_at(ring_key, 0, b.c32(0));
        let control = b.map_lookup(pool.control, ring_key);
        let half_found = b.block("lb_half");
        b.br_if_null(control, none, half_found);
        b.at(half_found);
        // The half in use (0 or 1, `PoolMeta::control_map`).
        let base = b.mul(b.and(b.load_raw(control, 0, 4), b.c32(1)), b.c32(pool.table_size));
        let hash = eager_hash.unwrap_or_else(|| hash_of_key(b, key, lb.hash, flow_v6, families));
        b.store_at(ring_key, 0, b.add(base, b.urem(hash, b.c32(pool.table_size))));
        let ring = b.map_lookup(pool.ring, ring_key);
        let ring_found = b.block("lb_ring_found");
        b.br_if_null(ring, none, ring_found);
        b.at(ring_found);
        let new_slot = b.load_raw(ring, 0, 4);
        let new_be = self.present_backend(pool, slot_key, new_slot, none);
        let value = b.stack_buf(8, "lb_flow_value");
        b.store_at(value, 0, new_slot);
        b.store_at(value, 4, flow_tick(b));
        // A full LRU table evicts its least recently used flow; an update
        // fails only without memory, and the packet still goes on.
        b.map_update(pool.flows, key, value, BPF_ANY);
        let new_ok = b.cur();
        b.br(chosen);

        // No backend: drop, counted in the last slot.
        b.at(none);
        self.count_backend(pool, b.c32(pool.max_backends), b.c64(0));
        b.ret(XDP_DROP);

        b.at(chosen);
        let slot = b.phi(&[(hit_slot, hit_ok), (new_slot, new_ok)]);
        let backend = b.phi_ptr(&[(hit_be, hit_ok), (new_be, new_ok)]);
        let new_flow = b.phi(&[(b.c64(0), hit_ok), (b.c64(1), new_ok)]);
        self.count_backend(pool, slot, new_flow);
        match lb.delivery {
            Delivery::Encap { encap, src } => self.encapsulate(encap, src, pool, eager_hash, backend),
            Delivery::Nat { port } => self.translate(pool, port, backend),
        }
    }

    /// The value of backend `slot` (a pointer to its [`meta::BackendValue`]),
    /// the builder in a block reached only when the slot holds a backend;
    /// otherwise to `absent`.
    fn present_backend(&self, pool: PoolMaps<'ctx>, slot_key: PointerValue<'ctx>, slot: IntValue<'ctx>, absent: inkwell::basic_block::BasicBlock<'ctx>) -> PointerValue<'ctx> {
        let b = &*self.b;
        b.store_at(slot_key, 0, slot);
        let value = b.map_lookup(pool.backends, slot_key);
        let found = b.block("lb_backend_found");
        b.br_if_null(value, absent, found);
        b.at(found);
        let present = b.cmp(IntPredicate::NE, b.and(b.load_raw(value, 16, 4), b.c32(meta::BACKEND_PRESENT)), b.c32(0));
        let ok = b.block("lb_backend_present");
        b.cond_br_likely(present, ok, absent);
        b.at(ok);
        value
    }

    /// Writes the flow key (see [`meta::FlowKey`]) and returns the words
    /// of its hash (the words of `maglev::addr_words`, the ports and the
    /// protocol, as `lb.hash` selects them; [`hash_of_key`] reads the same
    /// words from the key). `ports`: both ports as stored ([`ports_word`]).
    fn flow_key(&self, lb: &Balance, key: PointerValue<'ctx>, src: Addr<'ctx>, dst: Addr<'ctx>, ports: IntValue<'ctx>, proto: IntValue<'ctx>) -> Vec<IntValue<'ctx>> {
        let b = &*self.b;
        let i32t = b.m.cx.i32_type();
        b.store_at(key, 32, ports);
        b.store_at(key, 36, b.trunc(proto, b.m.i8()));
        // `maglev::addr_words`: the address's bytes 4 at a time as
        // little-endian words, which is how they are loaded.
        let words = |a: Addr<'ctx>, off: u64| -> Vec<IntValue<'ctx>> {
            match a {
                Addr::V4(raw) => {
                    b.store_at(key, off, raw);
                    b.store_at(key, 37, b.c8(4));
                    vec![raw]
                }
                Addr::V6(hi, lo) => {
                    let (hi, lo) = (b.bswap(hi), b.bswap(lo));
                    b.store_at(key, off, hi);
                    b.store_at(key, off + 8, lo);
                    b.store_at(key, 37, b.c8(6));
                    vec![b.trunc(hi, i32t), b.trunc(b.lshr(hi, b.c64(32)), i32t), b.trunc(lo, i32t), b.trunc(b.lshr(lo, b.c64(32)), i32t)]
                }
            }
        };
        let (src, dst) = (words(src, 0), words(dst, 16));
        // Source and destination port, big-endian: one word.
        let ports_word = b.bswap(ports);
        let proto_word = b.trunc(proto, i32t);
        let words: Vec<IntValue<'ctx>> = match lb.hash {
            FlowHash::FiveTuple => src.into_iter().chain(dst).chain([ports_word, proto_word]).collect(),
            FlowHash::Source => src,
            FlowHash::Ports => vec![ports_word, proto_word],
        };
        words
    }

    /// Counts a packet (and a new flow when `new_flow` is 1) for backend
    /// slot `slot` in the pool's per-CPU stats.
    fn count_backend(&self, pool: PoolMaps<'ctx>, slot: IntValue<'ctx>, new_flow: IntValue<'ctx>) {
        let b = &*self.b;
        let key = b.stack_buf(4, "key");
        b.store_at(key, 0, slot);
        let p = b.map_lookup(pool.stats, key);
        let bump = b.block("lb_count");
        let done = b.block("lb_counted");
        b.br_if_null(p, done, bump);
        b.at(bump);
        b.add_u64_at(p, 0, b.c64(1), false);
        b.add_u64_at(p, 8, b.pkt_len(self.h.pkt_len), false);
        b.add_u64_at(p, 16, new_flow, false);
        b.br(done);
        b.at(done);
    }
}

/// The source and destination port (host order, as the parser gives
/// them) as the 32-bit word the key stores: both big-endian, as on the wire.
fn ports_word<'ctx>(b: &Bpf<'_, 'ctx>, sport: IntValue<'ctx>, dport: IntValue<'ctx>) -> IntValue<'ctx> {
    let i16t = b.m.cx.i16_type();
    let be = |p: IntValue<'ctx>| b.zext64(b.bswap(b.trunc(p, i16t)));
    b.or(be(sport), b.shl(be(dport), b.c64(16)))
}

/// Adds the `words` 32-bit words at `p + off`, as 16-bit halves as
/// loaded, to `sum`: the one's-complement sum of the Internet checksum
/// does not depend on byte order.
fn ones_sum<'ctx>(b: &Bpf<'_, 'ctx>, p: PointerValue<'ctx>, off: u64, words: u64, sum: IntValue<'ctx>) -> IntValue<'ctx> {
    (0..words).fold(sum, |sum, i| {
        let w = b.zext64(b.load_raw(p, off + 4 * i, 4));
        b.add(sum, b.add(b.and(w, b.c64(0xffff)), b.lshr(w, b.c64(16))))
    })
}

/// The checksum of a one's-complement sum: folded to 16 bits, inverted.
fn fold<'ctx>(b: &Bpf<'_, 'ctx>, sum: IntValue<'ctx>) -> IntValue<'ctx> {
    let mut sum = sum;
    for _ in 0..3 {
        sum = b.add(b.and(sum, b.c64(0xffff)), b.lshr(sum, b.c64(16)));
    }
    b.trunc(b.xor(sum, b.c64(0xffff)), b.m.cx.i16_type())
}

/// The current tick of `meta::FlowValue::seen` (u32). The coarse clock
/// (Linux 5.11) is enough for ticks of a second, and cheaper than
/// `bpf_ktime_get_ns` on every UDP packet.
fn flow_tick<'ctx>(b: &Bpf<'_, 'ctx>) -> IntValue<'ctx> {
    let ns = b.helper_call(helper::KTIME_GET_COARSE_NS, b.i64(), &[]);
    b.trunc(b.lshr(ns, b.c64(u64::from(meta::FLOW_TICK_SHIFT))), b.m.cx.i32_type())
}

/// The flow hash of the key at `key` (as [`Lower::flow_key`] wrote it),
/// from the words stored there: the addresses' words as loaded, the ports
/// as one big-endian word, the protocol. `v6`: the key's family, and which
/// families reach here (`families`: IPv4, IPv6); where only one does, its
/// hash alone is computed.
fn hash_of_key<'ctx>(b: &Bpf<'_, 'ctx>, key: PointerValue<'ctx>, by: FlowHash, v6: IntValue<'ctx>, families: (bool, bool)) -> IntValue<'ctx> {
    let i32t = b.m.cx.i32_type();
    let seed = xpol_lang::maglev::FLOW_SEED;
    let hash = |family_v6: bool| {
        let n = if family_v6 { 4 } else { 1 };
        let addr = |off: u64| (0..n).map(|i| b.load_raw(key, off + 4 * i, 4)).collect::<Vec<_>>();
        // Source and destination port, big-endian in the key: one word.
        let ports = b.bswap(b.load_raw(key, 32, 4));
        let proto = b.trunc(b.zext64(b.load_raw(key, 36, 1)), i32t);
        let words: Vec<IntValue<'ctx>> = match by {
            FlowHash::FiveTuple => addr(0).into_iter().chain(addr(16)).chain([ports, proto]).collect(),
            FlowHash::Source => addr(0),
            FlowHash::Ports => vec![ports, proto],
        };
        murmur3(b, seed, &words)
    };
    match families {
        (true, true) => b.select(v6, hash(true), hash(false)),
        (false, true) => hash(true),
        _ => hash(false),
    }
}

/// murmur3_32 over whole 32-bit words, as
/// [`xpol_lang::maglev::murmur3_words`] computes it.
fn murmur3<'ctx>(b: &Bpf<'_, 'ctx>, seed: u32, words: &[IntValue<'ctx>]) -> IntValue<'ctx> {
    let rotl = |x: IntValue<'ctx>, r: u32| b.or(b.shl(x, b.c32(r)), b.lshr(x, b.c32(32 - r)));
    let mut h = b.c32(seed);
    for &k in words {
        let k = b.mul(k, b.c32(0xcc9e_2d51));
        let k = rotl(k, 15);
        let k = b.mul(k, b.c32(0x1b87_3593));
        h = b.xor(h, k);
        h = rotl(h, 13);
        h = b.add(b.mul(h, b.c32(5)), b.c32(0xe654_6b64));
    }
    h = b.xor(h, b.c32(4 * words.len() as u32));
    h = b.xor(h, b.lshr(h, b.c32(16)));
    h = b.mul(h, b.c32(0x85eb_ca6b));
    h = b.xor(h, b.lshr(h, b.c32(13)));
    h = b.mul(h, b.c32(0xc2b2_ae35));
    b.xor(h, b.lshr(h, b.c32(16)))
}
