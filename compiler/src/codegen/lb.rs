//! Lowering of `lb(POOL, ...)`: the load balancer's packet path in XDP.
//!
//! For a packet of an IP flow: the flow key and hash (the 5-tuple, or what
//! `by:` names; [`xpol_lang::maglev::murmur3_words`] over
//! [`xpol_lang::maglev::addr_words`], little-endian words as loaded), the flow table (an established flow
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
    pub v6: bool,
}

/// Size of [`meta::FlowKey`].
const FLOW_KEY_BYTES: u32 = 40;
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
        b.store_at(ring_key, 0, b.add(base, b.urem(hash, b.c32(pool.table_size))));
        let ring = b.map_lookup(pool.ring, ring_key);
        let ring_found = b.block("lb_ring_found");
        b.br_if_null(ring, none, ring_found);
        b.at(ring_found);
        let new_slot = b.load_raw(ring, 0, 4);
        let new_be = self.present_backend(pool, slot_key, new_slot, none);
        let value = b.stack_buf(8, "lb_flow_value");
        b.store_at(value, 0, new_slot);
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
            Delivery::Encap { encap, src } => self.encapsulate(encap, src, pool, hash, backend),
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

    /// Writes the flow key (see [`meta::FlowKey`]) and returns the flow
    /// hash (`xpol_lang::maglev::murmur3_words` over the words of
    /// `maglev::addr_words`, the ports and the protocol).
    #[allow(clippy::too_many_arguments)]
    fn flow_key(&self, lb: &Balance, key: PointerValue<'ctx>, src: Addr<'ctx>, dst: Addr<'ctx>, sport: IntValue<'ctx>, dport: IntValue<'ctx>, proto: IntValue<'ctx>) -> IntValue<'ctx> {
        let b = &*self.b;
        let i32t = b.m.cx.i32_type();
        let i16t = b.m.cx.i16_type();
        b.store_at(key, 32, b.bswap(b.trunc(sport, i16t)));
        b.store_at(key, 34, b.bswap(b.trunc(dport, i16t)));
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
    fn encapsulate(&self, encap: Encap, src: OuterSource, pool: PoolMaps<'ctx>, hash: IntValue<'ctx>, backend: PointerValue<'ctx>) {
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
        let outer = outer_len(pool.v6, encap);
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
        let gue = matches!(encap, Encap::Gue { .. });
        let inner_proto = b.select(inner_v6, b.c64(41), b.c64(4));
        let next_proto = if gue { b.c64(17) } else { inner_proto };
        let ip_hdr = if pool.v6 { 40 } else { 20 };
        let src = self.outer_source_words(src, hash);
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
        if let Encap::Gue { port } = encap {
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
        let ret = self.send_by_fib(fib, ingress, data);
        // Too big for the way out: the client is told. Anything else (no
        // route, no neighbour entry yet, forwarding off): the stack decides.
        let too_big = b.block("lb_too_big");
        let stack = b.block("lb_to_stack");
        b.cond_br(b.eq(ret, b.c64(FIB_FRAG_NEEDED)), too_big, stack);
        b.at(too_big);
        let dont_fragment = get(h.df);
        let options = b.cmp(IntPredicate::NE, get(h.ihl), b.c64(5));
        self.packet_too_big(pool, encap, fib, [macs_lo, macs_hi], inner_v6, dont_fragment, options, get(h.vlan_depth), drop);
        b.at(stack);
        b.ret(XDP_PASS);
        b.at(drop);
        b.ret(XDP_DROP);
    }

    /// Looks up the next hop (`fib`: a filled `struct bpf_fib_lookup`) and,
    /// when the FIB has it, sets the frame's Ethernet addresses (`data`:
    /// the frame, checked to hold 14 bytes) and sends it: `XDP_TX` back out of the ingress interface, else a redirect.
    /// Otherwise returns the FIB's answer, the builder in a block of its
    /// own for the caller to decide.
    fn send_by_fib(&self, fib: PointerValue<'ctx>, ingress: IntValue<'ctx>, data: PointerValue<'ctx>) -> IntValue<'ctx> {
        let b = &*self.b;
        let i16t = b.m.cx.i16_type();
        let i32t = b.m.cx.i32_type();
        // An input lookup, as for a packet forwarded from the ingress
        // interface (which must have forwarding on, else the FIB says so
        // and the stack gets the packet). `BPF_FIB_LOOKUP_OUTPUT` would
        // bind the way out to the ingress interface.
        let ret = b.helper_call(helper::FIB_LOOKUP, b.i64(), &[b.ctx().into(), fib.into(), b.c64(u64::from(FIB_PARAMS_BYTES)).into(), b.c64(0).into()]);
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
        b.at(not_found);
        ret
    }

    /// `nat`: rewrites the destination address (and port, with `port`) to
    /// the backend's, with incremental checksum updates (RFC 1624; a UDP
    /// checksum of 0, none, stays 0), records the reply's translation for
    /// TC egress (`nat_map`), and sends the packet on by the FIB (else up
    /// the stack, which forwards it). `balance` let only TCP and UDP
    /// packets of the pool's family, not fragments, come here.
    fn translate(&self, pool: PoolMaps<'ctx>, port: Option<u16>, backend: PointerValue<'ctx>) {
        let b = &*self.b;
        let h = &self.h;
        let get = |p| b.get_fact(p);
        let i16t = b.m.cx.i16_type();
        let i32t = b.m.cx.i32_type();
        let Some(nat_map) = pool.nat else { return b.ret(XDP_DROP) };
        let drop = b.block("lb_nat_drop");
        let l3 = b.add(b.c64(14), b.mul(get(h.vlan_depth), b.c64(4)));
        let ip_hdr = if pool.v6 { b.c64(40) } else { b.mul(get(h.ihl), b.c64(4)) };
        let tcp = get(h.tcp_ok);
        let (data, end) = b.xdp_bounds();
        let ip = b.pkt_ptr(data, b.and(l3, b.c64(MAX_QUOTE_OFFSET)));
        let l4 = b.pkt_ptr(data, b.and(b.add(l3, ip_hdr), b.c64(MAX_QUOTE_OFFSET)));
        let (addr_off, addr_words) = if pool.v6 { (24, 4) } else { (16, 1) };
        let headers = b.block("lb_nat_headers");
        let ip_ok = b.and(b.fits(data, 14, end), b.fits(ip, if pool.v6 { 40 } else { 20 }, end));
        let ok = b.and(ip_ok, b.fits(l4, 20, end));
        let ok_udp = b.and(ip_ok, b.fits(l4, 8, end));
        b.cond_br_likely(b.select(tcp, ok, ok_udp), headers, drop);
        b.at(headers);
        // The one's-complement difference the rewrite makes, summed as
        // loaded (RFC 1624's sum does not depend on byte order).
        let halves = |w: IntValue<'ctx>| (b.and(b.zext64(w), b.c64(0xffff)), b.lshr(b.zext64(w), b.c64(16)));
        let mut addr_delta = b.c64(0);
        let mut old_addr = Vec::new();
        for i in 0..addr_words {
            let old = b.load_raw(ip, addr_off + 4 * i, 4);
            let new = b.load_raw(backend, 4 * i, 4);
            let (o1, o2) = halves(old);
            let (n1, n2) = halves(new);
            addr_delta = b.add(addr_delta, b.add(b.add(b.xor(o1, b.c64(0xffff)), b.xor(o2, b.c64(0xffff))), b.add(n1, n2)));
            old_addr.push(old);
        }
        let old_port = b.load_raw(l4, 2, 2);
        let new_port = port.map_or(old_port, |p| b.c16(p.swap_bytes()));
        let port_delta = b.add(b.xor(b.zext64(old_port), b.c64(0xffff)), b.zext64(new_port));
        let l4_delta = b.add(addr_delta, port_delta);
        // HC' = ~(~HC + delta), folded.
        let updated = |old: IntValue<'ctx>, delta: IntValue<'ctx>| fold(b, b.add(b.xor(b.zext64(old), b.c64(0xffff)), delta));
        if !pool.v6 {
            b.store_at(ip, 10, updated(b.load_raw(ip, 10, 2), addr_delta));
        }
        let tcp_bb = b.block("lb_nat_tcp");
        let udp_bb = b.block("lb_nat_udp");
        let l4_done = b.block("lb_nat_l4_done");
        b.cond_br(tcp, tcp_bb, udp_bb);
        b.at(tcp_bb);
        b.store_at(l4, 16, updated(b.load_raw(l4, 16, 2), l4_delta));
        b.br(l4_done);
        b.at(udp_bb);
        // UDP: 0 is "no checksum" and stays; a computed 0 is sent as 0xffff.
        let old_sum = b.load_raw(l4, 6, 2);
        let sum = updated(old_sum, l4_delta);
        let sum = b.select(b.eq(sum, b.c16(0)), b.c16(0xffff), sum);
        b.store_at(l4, 6, b.select(b.eq(old_sum, b.c16(0)), b.c16(0), sum));
        b.br(l4_done);
        b.at(l4_done);
        // The reply's translation back, unless it is recorded already (its
        // entry may have left the LRU table before the flow's).
        let reply = b.stack_buf(FLOW_KEY_BYTES, "lb_nat_key");
        for i in 0..4 {
            b.store_at(reply, 4 * i, b.load_raw(backend, 4 * i, 4));
        }
        let src_off = if pool.v6 { 8 } else { 12 };
        for i in 0..addr_words {
            b.store_at(reply, 16 + 4 * i, b.load_raw(ip, src_off + 4 * i, 4));
        }
        b.store_at(reply, 32, new_port);
        b.store_at(reply, 34, b.load_raw(l4, 0, 2));
        b.store_at(reply, 36, b.select(tcp, b.c8(6), b.c8(17)));
        b.store_at(reply, 37, b.c8(if pool.v6 { 6 } else { 4 }));
        let known = b.map_lookup(nat_map, reply);
        let record = b.block("lb_nat_record");
        let recorded = b.block("lb_nat_recorded");
        let compare = b.block("lb_nat_compare");
        b.br_if_null(known, record, compare);
        // Recorded for another VIP or port (the client's port reused
        // towards another service on the same backend): this flow's wins.
        b.at(compare);
        let mut same = b.eq(b.load_raw(known, 16, 2), old_port);
        for (i, w) in old_addr.iter().enumerate() {
            same = b.and(same, b.eq(b.load_raw(known, 4 * i as u64, 4), *w));
        }
        b.cond_br_likely(same, recorded, record);
        b.at(record);
        let value = b.stack_buf(NAT_VALUE_BYTES, "lb_nat_value");
        for (i, w) in old_addr.iter().enumerate() {
            b.store_at(value, 4 * i as u64, *w);
        }
        b.store_at(value, 16, old_port);
        b.map_update(nat_map, reply, value, BPF_ANY);
        b.br(recorded);
        b.at(recorded);
        // The rewrite.
        for i in 0..addr_words {
            b.store_at(ip, addr_off + 4 * i, b.load_raw(backend, 4 * i, 4));
        }
        b.store_at(l4, 2, new_port);

        let fib = b.stack_buf(FIB_PARAMS_BYTES, "lb_fib");
        b.store_at(fib, 0, b.c8(if pool.v6 { AF_INET6 } else { AF_INET }));
        b.store_at(fib, 1, b.select(tcp, b.c8(6), b.c8(17)));
        b.store_at(fib, 6, b.trunc(get(h.ip_len), i16t));
        let ingress = b.load_raw(b.ctx(), XDP_MD_INGRESS_IFINDEX, 4);
        b.store_at(fib, 8, ingress);
        if pool.v6 {
            for i in 0..4u64 {
                b.store_at(fib, 16 + 4 * i, b.load_raw(ip, 8 + 4 * i, 4));
                b.store_at(fib, 32 + 4 * i, b.load_raw(ip, 24 + 4 * i, 4));
            }
        } else {
            b.store_at(fib, 12, b.trunc(get(h.tos), b.m.i8()));
            b.store_at(fib, 16, b.load_raw(ip, 12, 4));
            b.store_at(fib, 32, b.load_raw(ip, 16, 4));
        }
        let _ = i32t;
        self.send_by_fib(fib, ingress, data);
        // No next hop here (or too big: the stack answers the client):
        // the stack forwards it.
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
    /// (RFC 792, RFC 4443). An IPv4 packet without DF in an IPv4 outer
    /// header may be fragmented: the outer header has no DF either, and the
    /// stack fragments it; in an IPv6 outer header (which no router
    /// fragments) it is answered too. An IPv4 packet with options is
    /// dropped (its quote would be longer), and so is a VLAN-tagged one
    /// (the answer would leave untagged).
    #[allow(clippy::too_many_arguments)]
    fn packet_too_big(&self, pool: PoolMaps<'ctx>, encap: Encap, fib: PointerValue<'ctx>, macs: [IntValue<'ctx>; 2], inner_v6: IntValue<'ctx>, dont_fragment: IntValue<'ctx>, options: IntValue<'ctx>, vlan_depth: IntValue<'ctx>, drop: inkwell::basic_block::BasicBlock<'ctx>) {
        let b = &*self.b;
        let i16t = b.m.cx.i16_type();
        let i32t = b.m.cx.i32_type();
        let ctx = b.ctx();
        let outer = outer_len(pool.v6, encap);
        let mtu = b.zext64(b.load_raw(fib, 6, 2));
        let inner_mtu = b.select(b.cmp(IntPredicate::UGT, mtu, b.c64(outer)), b.sub(mtu, b.c64(outer)), b.c64(0));
        let answer4 = b.block("lb_frag_needed");
        let answer6 = b.block("lb_packet_too_big");
        let v4 = b.block("lb_too_big_v4");
        let fragmentable = b.block("lb_fragmentable");
        // The answer goes back untagged: a tagged packet is dropped rather
        // than answered on another VLAN.
        let untagged = b.block("lb_too_big_untagged");
        b.cond_br(b.eq(vlan_depth, b.c64(0)), untagged, drop);
        b.at(untagged);
        b.cond_br(inner_v6, answer6, v4);
        b.at(v4);
        let no_options = b.block("lb_too_big_plain");
        b.cond_br(options, drop, no_options);
        b.at(no_options);
        if pool.v6 {
            // Forwarded IPv6 is never fragmented: told even without DF.
            b.br(answer4);
        } else {
            b.cond_br(dont_fragment, answer4, fragmentable);
        }
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

/// The start of the `tc:egress` program of a policy with `nat` pools: a
/// reply whose 5-tuple a `nat` recorded (the pool's `nat_map`) gets the
/// VIP and port back as its source, with the kernel's checksum helpers
/// (which know a checksum the device will finish, `CHECKSUM_PARTIAL`;
/// a UDP checksum of 0 stays 0). Reads the frame itself, before the
/// policy's parser: untagged IPv4 (not a fragment) or IPv6 (no extension
/// header), TCP or UDP. Leaves the builder where the program goes on.
pub fn reverse_nat<'ctx>(b: &Bpf<'_, 'ctx>, pools: &[PoolMaps<'ctx>]) {
    const TC_PULL: u64 = 128;
    let ctx = b.ctx();
    let i32t = b.m.cx.i32_type();
    let done = b.block("nat_back_done");
    // The headers in the linear part.
    let skb_len = b.zext64(b.load_raw(ctx, 0, 4));
    let skb_bounds = || (b.int_to_ptr(b.zext64(b.load_raw(ctx, 76, 4))), b.int_to_ptr(b.zext64(b.load_raw(ctx, 80, 4))));
    let (data, end) = skb_bounds();
    let linear = b.sub(b.ptr_to_int(end), b.ptr_to_int(data));
    let want = b.select(b.cmp(IntPredicate::ULT, skb_len, b.c64(TC_PULL)), skb_len, b.c64(TC_PULL));
    let pull = b.block("nat_back_pull");
    let pulled = b.block("nat_back_pulled");
    b.cond_br(b.cmp(IntPredicate::ULT, linear, want), pull, pulled);
    b.at(pull);
    b.helper_call(helper::SKB_PULL_DATA, b.i64(), &[ctx.into(), want.into()]);
    b.br(pulled);
    b.at(pulled);
    let (data, end) = skb_bounds();
    let eth = b.block("nat_back_eth");
    b.cond_br_likely(b.fits(data, 14, end), eth, done);
    b.at(eth);
    let ethertype = b.load_raw(data, 12, 2);
    let v4 = b.block("nat_back_v4");
    let not_v4 = b.block("nat_back_not_v4");
    let v6 = b.block("nat_back_v6");
    b.cond_br(b.eq(ethertype, b.c16(0x0008)), v4, not_v4);
    b.at(not_v4);
    b.cond_br(b.eq(ethertype, b.c16(0xdd86)), v6, done);
    for family_v6 in [false, true] {
        b.at(if family_v6 { v6 } else { v4 });
        let family: Vec<&PoolMaps<'ctx>> = pools.iter().filter(|p| p.v6 == family_v6).collect();
        if family.is_empty() {
            b.br(done);
            continue;
        }
        let ip = b.pkt_ptr(data, b.c64(14));
        let header = b.block("nat_back_ip");
        b.cond_br_likely(b.fits(ip, if family_v6 { 40 } else { 20 }, end), header, done);
        b.at(header);
        let (l4_off, proto, usable) = if family_v6 {
            let proto = b.load_be(ip, 6, 1);
            (b.c64(54), proto, b.eq(b.lshr(b.load_be(ip, 0, 1), b.c64(4)), b.c64(6)))
        } else {
            let first = b.load_be(ip, 0, 1);
            let ihl = b.and(first, b.c64(0xf));
            let whole = b.eq(b.and(b.load_be(ip, 6, 2), b.c64(0x3fff)), b.c64(0));
            let ok = b.and(b.and(b.eq(b.lshr(first, b.c64(4)), b.c64(4)), b.cmp(IntPredicate::UGE, ihl, b.c64(5))), whole);
            (b.add(b.c64(14), b.mul(ihl, b.c64(4))), b.load_be(ip, 9, 1), ok)
        };
        let tcp = b.eq(proto, b.c64(6));
        let l4_proto = b.or(tcp, b.eq(proto, b.c64(17)));
        let l4 = b.pkt_ptr(data, b.and(l4_off, b.c64(MAX_QUOTE_OFFSET)));
        let has_l4 = b.select(tcp, b.fits(l4, 18, end), b.fits(l4, 8, end));
        let translatable = b.block("nat_back_l4");
        b.cond_br(b.and(b.and(usable, l4_proto), has_l4), translatable, done);
        b.at(translatable);
        let (src_at, words) = if family_v6 { (8u64, 4u64) } else { (12, 1) };
        let key = b.stack_buf(FLOW_KEY_BYTES, "nat_back_key");
        let mut old_src = Vec::new();
        for i in 0..words {
            let w = b.load_raw(ip, src_at + 4 * i, 4);
            old_src.push(w);
            b.store_at(key, 4 * i, w);
            b.store_at(key, 16 + 4 * i, b.load_raw(ip, src_at + 4 * words + 4 * i, 4));
        }
        let old_port = b.load_raw(l4, 0, 2);
        b.store_at(key, 32, old_port);
        b.store_at(key, 34, b.load_raw(l4, 2, 2));
        b.store_at(key, 36, b.trunc(proto, b.m.i8()));
        b.store_at(key, 37, b.c8(if family_v6 { 6 } else { 4 }));
        // Offsets from the frame's start, for the helpers (which move the
        // packet: every value is read before them).
        let l4_at = b.and(l4_off, b.c64(MAX_QUOTE_OFFSET));
        let csum_at = b.add(l4_at, b.select(tcp, b.c64(16), b.c64(6)));
        let l4_flags = b.select(tcp, b.c64(0), b.c64(BPF_F_MARK_MANGLED_0));
        for pool in family {
            let Some(nat) = pool.nat else { continue };
            let back = b.map_lookup(nat, key);
            let found = b.block("nat_back_found");
            let next = b.block("nat_back_next");
            b.br_if_null(back, next, found);
            b.at(found);
            for (i, old) in old_src.iter().enumerate() {
                let new = b.load_raw(back, 4 * i as u64, 4);
                b.helper_call(helper::L4_CSUM_REPLACE, b.i64(), &[ctx.into(), csum_at.into(), b.zext64(*old).into(), b.zext64(new).into(), b.or(l4_flags, b.c64(BPF_F_PSEUDO_HDR | 4)).into()]);
                if !family_v6 {
                    b.helper_call(helper::L3_CSUM_REPLACE, b.i64(), &[ctx.into(), b.c64(24).into(), b.zext64(*old).into(), b.zext64(new).into(), b.c64(4).into()]);
                }
            }
            let new_port = b.load_raw(back, 16, 2);
            b.helper_call(helper::L4_CSUM_REPLACE, b.i64(), &[ctx.into(), csum_at.into(), b.zext64(old_port).into(), b.zext64(new_port).into(), b.or(l4_flags, b.c64(2)).into()]);
            let src_off = 14 + src_at;
            b.helper_call(helper::SKB_STORE_BYTES, b.i64(), &[ctx.into(), b.c64(src_off).into(), back.into(), b.c64(4 * words).into(), b.c64(0).into()]);
            let port_ptr = b.ptr_add(back, b.c64(16));
            b.helper_call(helper::SKB_STORE_BYTES, b.i64(), &[ctx.into(), l4_at.into(), port_ptr.into(), b.c64(2).into(), b.c64(0).into()]);
            b.br(done);
            b.at(next);
        }
        b.br(done);
    }
    let _ = i32t;
    b.at(done);
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
