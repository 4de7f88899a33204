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
use inkwell::values::IntValue;
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
        // and for packets without ports) and protocol.
        // Both only where the protocol is known (an IPv6 extension-header
        // chain that ends in bounds).
        let proto_ok = get(h.proto_ok);
        let frag = b.and(proto_ok, get(h.frag));
        let zero = b.c64(0);
        let sport = b.select(frag, zero, b.or(get(h.tcp_sport), get(h.udp_sport)));
        let dport = b.select(frag, zero, b.or(get(h.tcp_dport), get(h.udp_dport)));
        let proto = b.select(proto_ok, get(h.proto), zero);
        let ports_word = b.trunc(b.or(b.shl(sport, b.c64(16)), dport), i32t);
        let proto_word = b.trunc(proto, i32t);
        let key = b.stack_buf(FLOW_KEY_BYTES, "lb_key");
        b.store_at(key, 32, b.bswap(b.trunc(sport, b.m.cx.i16_type())));
        b.store_at(key, 34, b.bswap(b.trunc(dport, b.m.cx.i16_type())));
        b.store_at(key, 36, b.trunc(proto, b.m.i8()));

        // Addresses into the key and the hash, per family.
        let v4 = b.block("lb_v4");
        let v6 = b.block("lb_v6");
        let hashed = b.block("lb_hashed");
        b.cond_br_likely(is4, v4, v6);
        let mut incoming = Vec::new();
        for (family_v6, bb) in [(false, v4), (true, v6)] {
            b.at(bb);
            let (src, dst): (Vec<IntValue<'ctx>>, Vec<IntValue<'ctx>>) = if family_v6 {
                let (shi, slo, dhi, dlo) = (get(h.src6_hi), get(h.src6_lo), get(h.dst6_hi), get(h.dst6_lo));
                b.store_at(key, 0, b.bswap(shi));
                b.store_at(key, 8, b.bswap(slo));
                b.store_at(key, 16, b.bswap(dhi));
                b.store_at(key, 24, b.bswap(dlo));
                b.store_at(key, 37, b.c8(6));
                let words = |hi: IntValue<'ctx>, lo: IntValue<'ctx>| {
                    vec![b.trunc(b.lshr(hi, b.c64(32)), i32t), b.trunc(hi, i32t), b.trunc(b.lshr(lo, b.c64(32)), i32t), b.trunc(lo, i32t)]
                };
                (words(shi, slo), words(dhi, dlo))
            } else {
                let (s, d) = (b.trunc(get(h.src4), i32t), b.trunc(get(h.dst4), i32t));
                b.store_at(key, 0, s);
                b.store_at(key, 16, d);
                b.store_at(key, 37, b.c8(4));
                (vec![b.bswap(s)], vec![b.bswap(d)])
            };
            let words: Vec<IntValue<'ctx>> = match lb.hash {
                FlowHash::FiveTuple => src.into_iter().chain(dst).chain([ports_word, proto_word]).collect(),
                FlowHash::Source => src,
                FlowHash::Ports => vec![ports_word, proto_word],
            };
            incoming.push((murmur3(b, xpol_lang::maglev::FLOW_SEED, &words), b.cur()));
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
    fn encapsulate(&self, lb: &Balance, pool: PoolMaps<'ctx>, hash: IntValue<'ctx>, backend: inkwell::values::PointerValue<'ctx>) {
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
        // The backend's address as loaded (network order in memory).
        let dst: Vec<IntValue<'ctx>> = (0..if pool.v6 { 4 } else { 1 }).map(|i| b.load_raw(backend, 4 * i, 4)).collect();
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
            for (i, w) in dst.iter().enumerate() {
                b.store_at(data, 38 + 4 * i as u64, *w);
            }
        } else {
            let total = b.bswap(b.trunc(b.add(inner_len, b.c64(outer)), i16t));
            let frag = b.select(df, b.c16(0x0040), b.c16(0));
            let proto = b.trunc(next_proto, b.m.i8());
            b.store_at(data, 14, b.c8(0x45));
            b.store_at(data, 15, b.trunc(tos, b.m.i8()));
            b.store_at(data, 16, total);
            b.store_at(data, 18, b.c16(0));
            b.store_at(data, 20, frag);
            b.store_at(data, 22, b.c8(OUTER_TTL));
            b.store_at(data, 23, proto);
            b.store_at(data, 26, src[0]);
            b.store_at(data, 30, dst[0]);
            // The header checksum: the one's-complement sum of its 16-bit
            // words as stored (the sum does not depend on byte order),
            // folded, inverted. Summed from the values, not read back from
            // the packet: a wide load of bytes that narrower stores have
            // just written waits for them to reach the cache.
            let halves = |w: IntValue<'ctx>| {
                let w = b.zext64(w);
                b.add(b.and(w, b.c64(0xffff)), b.lshr(w, b.c64(16)))
            };
            let first = b.or(b.c64(0x45), b.shl(b.and(tos, b.c64(0xff)), b.c64(8)));
            let ttl_proto = b.or(b.c64(u64::from(OUTER_TTL)), b.shl(b.zext64(proto), b.c64(8)));
            let mut sum = b.add(b.add(first, b.zext64(total)), b.add(b.zext64(frag), ttl_proto));
            sum = b.add(sum, b.add(halves(src[0]), halves(dst[0])));
            for _ in 0..2 {
                sum = b.add(b.and(sum, b.c64(0xffff)), b.lshr(sum, b.c64(16)));
            }
            b.store_at(data, 24, b.trunc(b.xor(sum, b.c64(0xffff)), i16t));
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
        // The addresses from the values, not read back from the packet
        // (see the checksum).
        if !pool.v6 {
            b.store_at(fib, 12, b.trunc(tos, b.m.i8()));
        }
        for (i, (s, d)) in src.iter().zip(&dst).enumerate() {
            b.store_at(fib, 16 + 4 * i as u64, *s);
            b.store_at(fib, 32 + 4 * i as u64, *d);
        }
        let ret = b.helper_call(helper::FIB_LOOKUP, b.i64(), &[ctx.into(), fib.into(), b.c64(u64::from(FIB_PARAMS_BYTES)).into(), b.c64(0).into()]);
        let found = b.block("lb_next_hop");
        let not_found = b.block("lb_no_next_hop");
        b.cond_br_likely(b.eq(ret, b.c64(FIB_SUCCESS)), found, not_found);
        b.at(found);
        // smac at 52, dmac at 58 in the params; the frame wants dmac first.
        // `data` is still valid and checked: bpf_fib_lookup does not change
        // the packet (the verifier keeps packet pointers across it).
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
        b.ret(XDP_DROP);
        b.at(stack);
        b.ret(XDP_PASS);
        b.at(drop);
        b.ret(XDP_DROP);
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
