//! Lowering of `lb(POOL, ...)`: the load balancer's packet path in XDP.
//!
//! For a packet of an IP flow: the flow key and hash (the 5-tuple, or what
//! `by:` names; [`xpol_lang::maglev::murmur3_words`] over
//! [`xpol_lang::maglev::addr_words`]), the flow table (an established flow
//! keeps its backend while the backend is in the pool), else the Maglev
//! table; then the packet is encapsulated towards the backend (IPIP or GUE,
//! `bpf_xdp_adjust_head`), its next hop found with `bpf_fib_lookup`, and it
//! is sent with `XDP_TX` or a redirect. When the FIB has no complete answer
//! (no route, no neighbour entry yet) the encapsulated packet goes up the
//! kernel's stack, which resolves the neighbour and forwards it.
//!
//! The maps and their layouts are `xpol_lang::meta::PoolMeta`'s.

use super::builder::{helper, map_type, Bpf, MapDef, ModuleCx, BPF_ANY};
use super::lower::Lower;
use crate::ir::{self, Balance, Encap, FlowHash, OuterSource};
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
    pub table_size: u32,
    pub max_backends: u32,
    pub v6: bool,
}

/// Size of [`meta::FlowKey`].
const FLOW_KEY_BYTES: u32 = 40;
/// Size of [`meta::BackendValue`].
const BACKEND_BYTES: u32 = 20;
/// Size of [`meta::BackendCounters`].
const STATS_BYTES: u32 = 24;

/// Defines a pool's maps and describes them for the object's metadata.
pub fn define_pool<'ctx>(m: &ModuleCx<'ctx>, pool: &ir::Pool) -> (PoolMaps<'ctx>, PoolMeta) {
    let name = |suffix: &str| format!("xl_{}_{suffix}", pool.name);
    let meta = PoolMeta {
        name: pool.name.clone(),
        v6: pool.v6,
        backends: pool.backends.iter().map(|b| meta::BackendMeta { addr: b.addr, weight: b.weight }).collect(),
        table_size: pool.table_size,
        max_backends: pool.max_backends,
        flows: pool.flows,
        ring_map: name("ring"),
        control_map: name("ctl"),
        backends_map: name("be"),
        flows_map: name("flows"),
        stats_map: name("stats"),
    };
    let maps = PoolMaps {
        ring: m.define_map(&meta.ring_map, map_type::ARRAY, 4, 4, 2 * pool.table_size, 0),
        control: m.define_map(&meta.control_map, map_type::ARRAY, 4, 4, 1, 0),
        backends: m.define_map(&meta.backends_map, map_type::ARRAY, 4, BACKEND_BYTES, pool.max_backends, 0),
        flows: m.define_map(&meta.flows_map, map_type::LRU_HASH, FLOW_KEY_BYTES, 8, pool.flows, 0),
        stats: m.define_map(&meta.stats_map, map_type::PERCPU_ARRAY, 4, STATS_BYTES, pool.max_backends + 1, 0),
        table_size: pool.table_size,
        max_backends: pool.max_backends,
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
/// `struct xdp_md`'s `ingress_ifindex`.
const XDP_MD_INGRESS_IFINDEX: u64 = 12;

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

        // The flow: ports (0 for fragments, whose later parts carry none,
        // and for packets without ports) and protocol, both only where the
        // protocol is known (an IPv6 extension-header chain that ends in
        // bounds).
        let proto_ok = get(h.proto_ok);
        let frag = b.and(proto_ok, get(h.frag));
        let zero = b.c64(0);
        let sport = b.select(frag, zero, b.or(get(h.tcp_sport), get(h.udp_sport)));
        let dport = b.select(frag, zero, b.or(get(h.tcp_dport), get(h.udp_dport)));
        let proto = b.select(proto_ok, get(h.proto), zero);
        let key = b.stack_buf(FLOW_KEY_BYTES, "lb_key");

        // An ICMP error about a flow (unreachable, fragmentation needed,
        // time exceeded, parameter problem; ICMPv6 1 to 4) goes where the
        // flow it quotes goes: the quoted packet is a reply of that flow,
        // its addresses and ports the other way round.
        let icmp_type = get(h.icmp_type);
        let is_type = |t: u64| b.eq(icmp_type, b.c64(t));
        let err4 = b.and(get(h.icmp4_ok), b.or(is_type(3), b.or(is_type(11), is_type(12))));
        let err6 = b.and(b.and(get(h.icmp6_ok), b.eq(get(h.ip6_nh), b.c64(58))), b.and(b.cmp(IntPredicate::UGE, icmp_type, b.c64(1)), b.cmp(IntPredicate::ULE, icmp_type, b.c64(4))));
        let hashed = b.block("lb_hashed");
        let mut incoming = Vec::new();
        let v4 = b.block("lb_v4");
        let v6 = b.block("lb_v6");
        let by_family = b.block("lb_by_family");
        let icmp_err = b.block("lb_icmp_error");
        b.cond_br_unlikely(b.or(err4, err6), icmp_err, by_family);
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
            // The quoted ports, when the quote holds them.
            let has_ports = b.or(b.eq(qproto, b.c64(6)), b.eq(qproto, b.c64(17)));
            let p = b.pkt_ptr(data, b.and(b.add(at, qhl), b.c64(MAX_QUOTE_OFFSET)));
            let ports_there = b.block("lb_quoted_ports");
            let no_ports = b.block("lb_quoted_no_ports");
            let ports_done = b.block("lb_quoted_ports_done");
            b.cond_br(b.and(has_ports, b.fits(p, 4, end)), ports_there, no_ports);
            b.at(ports_there);
            let (qs, qd) = (b.load_be(p, 0, 2), b.load_be(p, 2, 2));
            b.br(ports_done);
            b.at(no_ports);
            b.br(ports_done);
            b.at(ports_done);
            let qsport = b.phi(&[(qs, ports_there), (zero, no_ports)]);
            let qdport = b.phi(&[(qd, ports_there), (zero, no_ports)]);
            // The flow the other way round.
            let hash = self.flow_key(lb, key, qdst, qsrc, qdport, qsport, qproto);
            incoming.push((hash, b.cur()));
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
            let hash = self.flow_key(lb, key, src, dst, sport, dport, proto);
            incoming.push((hash, b.cur()));
            b.br(hashed);
        }
        b.at(hashed);
        let hash = b.phi(&incoming);

        // The flow table: a flow keeps its backend while the backend's slot
        // holds one.
        let slot_key = b.stack_buf(4, "lb_slot");
        let flow = b.map_lookup(pool.flows, key);
        let hit = b.block("lb_flow_hit");
        let miss = b.block("lb_flow_miss");
        let chosen = b.block("lb_backend");
        let none = b.block("lb_no_backend");
        b.br_if_null(flow, miss, hit);
        b.at(hit);
        let hit_slot = b.load_raw(flow, 0, 4);
        b.store_at(slot_key, 0, hit_slot);
        let hit_be = b.map_lookup(pool.backends, slot_key);
        let hit_found = b.block("lb_hit_found");
        b.br_if_null(hit_be, miss, hit_found);
        b.at(hit_found);
        let present = b.cmp(IntPredicate::NE, b.and(b.load_raw(hit_be, 16, 4), b.c32(meta::BACKEND_PRESENT)), b.c32(0));
        let hit_ok = b.block("lb_hit_ok");
        b.cond_br_likely(present, hit_ok, miss);
        b.at(hit_ok);
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
        b.store_at(ring_key, 0, b.add(base, b.urem(hash, b.c32(pool.table_size))));
        let ring = b.map_lookup(pool.ring, ring_key);
        let ring_found = b.block("lb_ring_found");
        b.br_if_null(ring, none, ring_found);
        b.at(ring_found);
        let new_slot = b.load_raw(ring, 0, 4);
        b.store_at(slot_key, 0, new_slot);
        let new_be = b.map_lookup(pool.backends, slot_key);
        let new_found = b.block("lb_new_found");
        b.br_if_null(new_be, none, new_found);
        b.at(new_found);
        let present = b.cmp(IntPredicate::NE, b.and(b.load_raw(new_be, 16, 4), b.c32(meta::BACKEND_PRESENT)), b.c32(0));
        let new_ok = b.block("lb_new_ok");
        b.cond_br_likely(present, new_ok, none);
        b.at(new_ok);
        let value = b.stack_buf(8, "lb_flow_value");
        b.store_at(value, 0, new_slot);
        // A full LRU table evicts its least recently used flow; an update
        // fails only without memory, and the packet still goes on.
        b.map_update(pool.flows, key, value, BPF_ANY);
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
        self.encapsulate(lb, pool, hash, backend);
    }

    /// Writes the flow key (see [`meta::FlowKey`]) and returns the flow
    /// hash (`xpol_lang::maglev::murmur3_words` over big-endian words).
    #[allow(clippy::too_many_arguments)]
    fn flow_key(&self, lb: &Balance, key: PointerValue<'ctx>, src: Addr<'ctx>, dst: Addr<'ctx>, sport: IntValue<'ctx>, dport: IntValue<'ctx>, proto: IntValue<'ctx>) -> IntValue<'ctx> {
        let b = &*self.b;
        let i32t = b.m.cx.i32_type();
        let i16t = b.m.cx.i16_type();
        b.store_at(key, 32, b.bswap(b.trunc(sport, i16t)));
        b.store_at(key, 34, b.bswap(b.trunc(dport, i16t)));
        b.store_at(key, 36, b.trunc(proto, b.m.i8()));
        let words = |a: Addr<'ctx>, off: u64| -> Vec<IntValue<'ctx>> {
            match a {
                Addr::V4(raw) => {
                    b.store_at(key, off, raw);
                    b.store_at(key, 37, b.c8(4));
                    vec![b.bswap(raw)]
                }
                Addr::V6(hi, lo) => {
                    b.store_at(key, off, b.bswap(hi));
                    b.store_at(key, off + 8, b.bswap(lo));
                    b.store_at(key, 37, b.c8(6));
                    vec![b.trunc(b.lshr(hi, b.c64(32)), i32t), b.trunc(hi, i32t), b.trunc(b.lshr(lo, b.c64(32)), i32t), b.trunc(lo, i32t)]
                }
            }
        };
        let (src, dst) = (words(src, 0), words(dst, 16));
        let ports_word = b.trunc(b.or(b.shl(sport, b.c64(16)), dport), i32t);
        let proto_word = b.trunc(proto, i32t);
        let words: Vec<IntValue<'ctx>> = match lb.hash {
            FlowHash::FiveTuple => src.into_iter().chain(dst).chain([ports_word, proto_word]).collect(),
            FlowHash::Source => src,
            FlowHash::Ports => vec![ports_word, proto_word],
        };
        murmur3(b, xpol_lang::maglev::FLOW_SEED, &words)
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

    /// Puts the outer headers in front of the packet's IP header (dropping
    /// any VLAN tags) and sends it to `backend` (a pointer to its
    /// [`meta::BackendValue`]).
    fn encapsulate(&self, lb: &Balance, pool: PoolMaps<'ctx>, hash: IntValue<'ctx>, backend: PointerValue<'ctx>) {
        let b = &*self.b;
        let h = &self.h;
        let get = |p| b.get_fact(p);
        let i16t = b.m.cx.i16_type();
        let i32t = b.m.cx.i32_type();
        let ctx = b.ctx();
        let inner_v6 = get(h.ip6_ok);
        let inner_len = get(h.ip_len);
        let tos = get(h.tos);
        // IPv4 inside: the outer IPv4 header says "don't fragment" when the
        // inner one does; IPv6 is never fragmented on the way.
        let df = b.or(inner_v6, get(h.df));
        let outer = outer_len(pool.v6, lb.encap);
        let growth = b.sub(b.c64(outer), b.mul(get(h.vlan_depth), b.c64(4)));

        // The Ethernet addresses, kept for when the FIB gives no next hop.
        let drop = b.block("lb_cannot_encap");
        let (data, end) = b.xdp_bounds();
        let has_eth = b.block("lb_eth");
        b.cond_br_likely(b.fits(data, 14, end), has_eth, drop);
        b.at(has_eth);
        let macs_lo = b.load_raw(data, 0, 8);
        let macs_hi = b.load_raw(data, 8, 4);
        let grown = b.helper_call(helper::XDP_ADJUST_HEAD, b.i64(), &[ctx.into(), b.sub(b.c64(0), growth).into()]);
        let adjusted = b.block("lb_grown");
        b.cond_br_likely(b.eq(grown, b.c64(0)), adjusted, drop);
        b.at(adjusted);
        let (data, end) = b.xdp_bounds();
        let room = b.block("lb_room");
        b.cond_br_likely(b.fits(data, 14 + outer, end), room, drop);
        b.at(room);
        b.store_at(data, 0, macs_lo);
        b.store_at(data, 8, macs_hi);
        b.store_at(data, 12, b.c16(if pool.v6 { 0xdd86 } else { 0x0008 }));
        let gue = matches!(lb.encap, Encap::Gue { .. });
        let inner_proto = b.select(inner_v6, b.c64(41), b.c64(4));
        let next_proto = if gue { b.c64(17) } else { inner_proto };
        let ip_hdr = if pool.v6 { 40 } else { 20 };
        let src = self.outer_source_words(lb.src, hash);
        if pool.v6 {
            let flow_label = b.zext64(b.and(hash, b.c32(0xf_ffff)));
            let word0 = b.or(b.or(b.c64(6 << 28), b.shl(tos, b.c64(20))), flow_label);
            b.store_at(data, 14, b.bswap(b.trunc(word0, i32t)));
            let payload = b.add(inner_len, b.c64(outer - 40));
            b.store_at(data, 18, b.bswap(b.trunc(payload, i16t)));
            b.store_at(data, 20, b.trunc(next_proto, b.m.i8()));
            b.store_at(data, 21, b.c8(OUTER_TTL));
            for (i, w) in src.iter().enumerate() {
                b.store_at(data, 22 + 4 * i as u64, *w);
            }
            for i in 0..4 {
                b.store_at(data, 38 + 4 * i, b.load_raw(backend, 4 * i, 4));
            }
        } else {
            b.store_at(data, 14, b.c8(0x45));
            b.store_at(data, 15, b.trunc(tos, b.m.i8()));
            b.store_at(data, 16, b.bswap(b.trunc(b.add(inner_len, b.c64(outer)), i16t)));
            b.store_at(data, 18, b.c16(0));
            b.store_at(data, 20, b.select(df, b.c16(0x0040), b.c16(0)));
            b.store_at(data, 22, b.c8(OUTER_TTL));
            b.store_at(data, 23, b.trunc(next_proto, b.m.i8()));
            b.store_at(data, 24, b.c16(0));
            b.store_at(data, 26, src[0]);
            b.store_at(data, 30, b.load_raw(backend, 0, 4));
            // The header checksum: the one's-complement sum of its 16-bit
            // words, summed as loaded (the sum does not depend on byte
            // order), folded, inverted.
            b.store_at(data, 24, fold(b, ones_sum(b, data, 14, 5, b.c64(0))));
        }
        if let Encap::Gue { port } = lb.encap {
            let udp = 14 + ip_hdr;
            let sport = b.or(b.and(hash, b.c32(0x3fff)), b.c32(0xc000));
            b.store_at(data, udp, b.bswap(b.trunc(sport, i16t)));
            b.store_at(data, udp + 2, b.c16(port.swap_bytes()));
            b.store_at(data, udp + 4, b.bswap(b.trunc(b.add(inner_len, b.c64(8)), i16t)));
            // Zero: no checksum, which UDP over IPv4 allows (the inner
            // packet carries its own).
            b.store_at(data, udp + 6, b.c16(0));
        }

        // The next hop.
        let fib = b.stack_buf(FIB_PARAMS_BYTES, "lb_fib");
        b.store_at(fib, 0, b.c8(if pool.v6 { AF_INET6 } else { AF_INET }));
        b.store_at(fib, 1, b.trunc(next_proto, b.m.i8()));
        // The outer packet's length, for the MTU check.
        b.store_at(fib, 6, b.trunc(b.add(inner_len, b.c64(outer)), i16t));
        let ingress = b.load_raw(ctx, XDP_MD_INGRESS_IFINDEX, 4);
        b.store_at(fib, 8, ingress);
        if pool.v6 {
            for i in 0..4u64 {
                b.store_at(fib, 16 + 4 * i, b.load_raw(data, 22 + 4 * i, 4));
                b.store_at(fib, 32 + 4 * i, b.load_raw(data, 38 + 4 * i, 4));
            }
        } else {
            b.store_at(fib, 12, b.trunc(tos, b.m.i8()));
            b.store_at(fib, 16, b.load_raw(data, 26, 4));
            b.store_at(fib, 32, b.load_raw(data, 30, 4));
        }
        // An input lookup, as for a packet forwarded from the ingress
        // interface (which must have forwarding on, else the FIB says
        // so and the stack gets the packet). `BPF_FIB_LOOKUP_OUTPUT`
        // would bind the way out to the ingress interface.
        let ret = b.helper_call(helper::FIB_LOOKUP, b.i64(), &[ctx.into(), fib.into(), b.c64(u64::from(FIB_PARAMS_BYTES)).into(), b.c64(0).into()]);
        let found = b.block("lb_next_hop");
        let not_found = b.block("lb_no_next_hop");
        b.cond_br_likely(b.eq(ret, b.c64(FIB_SUCCESS)), found, not_found);
        b.at(found);
        // smac at 52, dmac at 58 in the params; the frame wants dmac first.
        let (data, end) = b.xdp_bounds();
        let write = b.block("lb_set_macs");
        b.cond_br_likely(b.fits(data, 14, end), write, drop);
        b.at(write);
        let smac_head = b.load_raw(fib, 52, 4);
        let tail = b.load_raw(fib, 56, 8);
        b.store_at(data, 0, b.trunc(b.lshr(tail, b.c64(16)), i32t));
        b.store_at(data, 4, b.trunc(b.lshr(tail, b.c64(48)), i16t));
        b.store_at(data, 6, smac_head);
        b.store_at(data, 10, b.trunc(tail, i16t));
        let out = b.load_raw(fib, 8, 4);
        let same = b.block("lb_tx");
        let other = b.block("lb_redirect");
        b.cond_br_likely(b.eq(out, ingress), same, other);
        b.at(same);
        b.ret(XDP_TX);
        b.at(other);
        let r = b.helper_call(helper::REDIRECT, b.i64(), &[b.zext64(out).into(), b.c64(0).into()]);
        b.ret_value(r);
        // Too big for the way out: dropped (ICMP errors are not sent yet).
        // Anything else (no route, no neighbour entry yet, forwarding off):
        // the stack decides.
        b.at(not_found);
        let too_big = b.block("lb_too_big");
        let stack = b.block("lb_to_stack");
        b.cond_br(b.eq(ret, b.c64(FIB_FRAG_NEEDED)), too_big, stack);
        b.at(too_big);
        let dont_fragment = get(h.df);
        let options = b.cmp(IntPredicate::NE, get(h.ihl), b.c64(5));
        self.packet_too_big(pool, lb, fib, [macs_lo, macs_hi], inner_v6, dont_fragment, options, drop);
        b.at(stack);
        b.ret(XDP_PASS);
        b.at(drop);
        b.ret(XDP_DROP);
    }

    /// The encapsulated packet is over the way out's MTU (`fib` holds the
    /// FIB's answer, its `mtu_result`): tell the client, as a router would,
    /// with an ICMP "fragmentation needed" (IPv4 with DF) or ICMPv6
    /// "packet too big" sent back out of the interface the packet came in
    /// by, from the address it was sent to (the VIP), naming the MTU less
    /// the outer headers and quoting the packet's IP header and 8 bytes
    /// (RFC 792, RFC 4443). An IPv4 packet without DF may be fragmented:
    /// the outer header has no DF either, and the stack fragments it. An
    /// IPv4 packet with options is dropped (its quote would be longer).
    #[allow(clippy::too_many_arguments)]
    fn packet_too_big(&self, pool: PoolMaps<'ctx>, lb: &Balance, fib: PointerValue<'ctx>, macs: [IntValue<'ctx>; 2], inner_v6: IntValue<'ctx>, dont_fragment: IntValue<'ctx>, options: IntValue<'ctx>, drop: inkwell::basic_block::BasicBlock<'ctx>) {
        let b = &*self.b;
        let i16t = b.m.cx.i16_type();
        let i32t = b.m.cx.i32_type();
        let ctx = b.ctx();
        let outer = outer_len(pool.v6, lb.encap);
        let mtu = b.zext64(b.load_raw(fib, 6, 2));
        let inner_mtu = b.select(b.cmp(IntPredicate::UGT, mtu, b.c64(outer)), b.sub(mtu, b.c64(outer)), b.c64(0));
        let answer4 = b.block("lb_frag_needed");
        let answer6 = b.block("lb_packet_too_big");
        let v4 = b.block("lb_too_big_v4");
        let fragmentable = b.block("lb_fragmentable");
        b.cond_br(inner_v6, answer6, v4);
        b.at(v4);
        let no_options = b.block("lb_too_big_plain");
        b.cond_br(options, drop, no_options);
        b.at(no_options);
        b.cond_br(dont_fragment, answer4, fragmentable);
        b.at(fragmentable);
        b.ret(XDP_PASS);
        for v6 in [false, true] {
            b.at(if v6 { answer6 } else { answer4 });
            // IP header and ICMP header, then the quote.
            let (headers, quote) = if v6 { (48u64, 48u64) } else { (28, 28) };
            let moved = b.helper_call(helper::XDP_ADJUST_HEAD, b.i64(), &[ctx.into(), b.c64(outer.wrapping_sub(headers)).into()]);
            let headed = b.block("lb_icmp_headed");
            b.cond_br_likely(b.eq(moved, b.c64(0)), headed, drop);
            b.at(headed);
            let total = 14 + headers + quote;
            let (data, end) = b.xdp_bounds();
            let cut = b.sub(b.c64(total), b.sub(b.ptr_to_int(end), b.ptr_to_int(data)));
            let cut_ok = b.helper_call(helper::XDP_ADJUST_TAIL, b.i64(), &[ctx.into(), cut.into()]);
            let tailed = b.block("lb_icmp_tailed");
            b.cond_br_likely(b.eq(cut_ok, b.c64(0)), tailed, drop);
            b.at(tailed);
            let (data, end) = b.xdp_bounds();
            let room = b.block("lb_icmp_room");
            b.cond_br_likely(b.fits(data, total, end), room, drop);
            b.at(room);
            // Back to where it came from: the Ethernet addresses swapped.
            let [lo, hi] = macs;
            b.store_at(data, 0, b.trunc(b.lshr(lo, b.c64(48)), i16t));
            b.store_at(data, 2, hi);
            b.store_at(data, 6, b.trunc(lo, i32t));
            b.store_at(data, 10, b.trunc(b.lshr(lo, b.c64(32)), i16t));
            let q = 14 + headers;
            if v6 {
                b.store_at(data, 12, b.c16(0xdd86));
                b.store_at(data, 14, b.c32(0x60u32));
                b.store_at(data, 18, b.c16((8 + quote as u16).swap_bytes()));
                b.store_at(data, 20, b.c8(58));
                b.store_at(data, 21, b.c8(OUTER_TTL));
                // From the address the packet was sent to, to its source.
                for i in 0..4 {
                    b.store_at(data, 22 + 4 * i, b.load_raw(data, q + 24 + 4 * i, 4));
                    b.store_at(data, 38 + 4 * i, b.load_raw(data, q + 8 + 4 * i, 4));
                }
                b.store_at(data, 54, b.c8(2));
                b.store_at(data, 55, b.c8(0));
                b.store_at(data, 56, b.c16(0));
                b.store_at(data, 58, b.bswap(b.trunc(inner_mtu, i32t)));
                // The checksum covers a pseudo-header: the addresses, the
                // length and the next header.
                let pseudo = b.c64(u64::from((8 + quote as u16).swap_bytes()) + u64::from(58u16.swap_bytes()));
                let sum = ones_sum(b, data, 22, 8, pseudo);
                let sum = ones_sum(b, data, 54, (8 + quote) / 4, sum);
                b.store_at(data, 56, fold(b, sum));
            } else {
                b.store_at(data, 12, b.c16(0x0008));
                b.store_at(data, 14, b.c16(0xc045));
                b.store_at(data, 16, b.c16((20 + 8 + quote as u16).swap_bytes()));
                b.store_at(data, 18, b.c32(0));
                b.store_at(data, 22, b.c8(OUTER_TTL));
                b.store_at(data, 23, b.c8(1));
                b.store_at(data, 24, b.c16(0));
                b.store_at(data, 26, b.load_raw(data, q + 16, 4));
                b.store_at(data, 30, b.load_raw(data, q + 12, 4));
                b.store_at(data, 24, fold(b, ones_sum(b, data, 14, 5, b.c64(0))));
                b.store_at(data, 34, b.c8(3));
                b.store_at(data, 35, b.c8(4));
                b.store_at(data, 36, b.c16(0));
                b.store_at(data, 38, b.c16(0));
                b.store_at(data, 40, b.bswap(b.trunc(inner_mtu, i16t)));
                b.store_at(data, 36, fold(b, ones_sum(b, data, 34, (8 + quote) / 4, b.c64(0))));
            }
            b.ret(XDP_TX);
        }
    }

    /// The outer source address as the words to store (as loaded: network
    /// order in memory): one for IPv4, four for IPv6.
    fn outer_source_words(&self, src: OuterSource, hash: IntValue<'ctx>) -> Vec<IntValue<'ctx>> {
        let b = &*self.b;
        let raw = |octets: &[u8]| -> Vec<IntValue<'ctx>> { octets.chunks(4).map(|c| b.c32(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect() };
        match src {
            OuterSource::Fixed(IpAddr::V4(a)) => raw(&a.octets()),
            OuterSource::Fixed(IpAddr::V6(a)) => raw(&a.octets()),
            OuterSource::PerFlow(a, len) => {
                let octets = match a {
                    IpAddr::V4(a) => a.octets().to_vec(),
                    IpAddr::V6(a) => a.octets().to_vec(),
                };
                let mut words = raw(&octets);
                let host = octets.len() as u32 * 8 - u32::from(len);
                let mask = if host >= 32 { u32::MAX } else { (1u32 << host) - 1 };
                let last = octets.len() / 4 - 1;
                let prefix = u32::from_be_bytes([octets[4 * last], octets[4 * last + 1], octets[4 * last + 2], octets[4 * last + 3]]);
                words[last] = b.bswap(b.or(b.c32(prefix), b.and(hash, b.c32(mask))));
                words
            }
        }
    }
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
