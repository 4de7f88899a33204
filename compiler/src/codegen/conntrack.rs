//! Lowering of connection state (docs/conntrack.md): xpol's own table of
//! connections, which the programs of the policy keep.
//!
//! One LRU hash map shared by all CPUs (`xpol_lang::meta::ConntrackMeta`),
//! one entry per connection, keyed so that both directions find it (the
//! endpoints in order, `meta::CtKey`), valued with its expiry, TCP state
//! and flags (`meta::CtValue`). After the L4 parse a program that reads
//! `ct.state` or records connections classifies the packet
//! ([`Lower::ct_here`]): one lookup, then straight-line selects for TCP's
//! flags or UDP's and echoes' directions, or for an ICMP error a second
//! lookup of the connection it quotes. The state goes into the facts
//! (`Headers::ct_ok`, `Headers::ct_state`) that rules read, and the entry
//! the packet would leave into a stack buffer. Where the program records
//! (`ir::Conntrack::trackers`), every way out that passes the packet
//! writes that entry first ([`Lower::ret_pass`]): in place when the
//! connection has one (two stores; a packet that races another CPU's for
//! the same connection may lose its write, as the last one wins), else
//! with `bpf_map_update_elem`.
//!
//! Why not the kernel's conntrack through `bpf_xdp_ct_lookup`: see
//! docs/conntrack.md, "Why a table of its own". The clock is
//! `bpf_ktime_get_coarse_ns`: timeouts are seconds, and a jiffy's
//! precision costs a few nanoseconds instead of some 20.

use super::builder::{helper, map_type, Bpf, MapDef, ModuleCx, BPF_ANY};
use super::lower::Lower;
use crate::ir::{self, CtState};
use inkwell::basic_block::BasicBlock;
use inkwell::values::{IntValue, PointerValue};
use inkwell::IntPredicate;
use xpol_lang::ast::Hook;
use xpol_lang::meta::{self, ConntrackMeta};

/// The connection table as codegen refers to it.
#[derive(Clone)]
pub struct CtDef<'ctx> {
    pub map: MapDef<'ctx>,
    /// A per-CPU word for [`Lower::ct_launder`].
    pub scratch: MapDef<'ctx>,
    pub timeouts: ir::CtTimeouts,
    pub trackers: Vec<Hook>,
}

/// Defines the table's map and describes it for the object's metadata.
pub fn define<'ctx>(m: &ModuleCx<'ctx>, ct: &ir::Conntrack) -> (CtDef<'ctx>, ConntrackMeta) {
    // One LRU list for all CPUs (no BPF_F_NO_COMMON_LRU): a connection's
    // packets come in on one CPU and go out on another.
    let map = m.define_map(meta::CONNTRACK_MAP, map_type::LRU_HASH, meta::CT_KEY_SIZE, meta::CT_VALUE_SIZE, ct.flows, 0);
    let meta = ConntrackMeta { map: meta::CONNTRACK_MAP.to_string(), max_entries: ct.flows, trackers: ct.trackers.iter().map(|h| h.as_str().to_string()).collect() };
    let scratch = m.define_map(SCRATCH_MAP, map_type::PERCPU_ARRAY, 4, 24, 1, 0);
    (CtDef { map, scratch, timeouts: ct.timeouts, trackers: ct.trackers.clone() }, meta)
}

/// The per-CPU scratch map of [`Lower::ct_launder`].
pub const SCRATCH_MAP: &str = "xpol_ct_scratch";

/// What a program that records connections writes when it passes the
/// packet: the entry in `value` under `key` (both stack buffers filled by
/// the classification) when `write`, in place at `entry` when the lookup
/// found one.
#[derive(Clone, Copy)]
pub struct CtWrite<'ctx> {
    write: IntValue<'ctx>,
    entry: PointerValue<'ctx>,
    key: PointerValue<'ctx>,
    value: PointerValue<'ctx>,
}

/// Bounds the quoted packet's offset for the verifier. The L4 header
/// starts at most 1024 bytes into the frame (`parse::MAX_L4_OFFSET`), so
/// the quote and its L4 header (60 bytes of IPv4 header after it) stay
/// below this and the mask never changes an offset.
const MAX_QUOTE_OFFSET: u64 = 2 * super::parse::MAX_L4_OFFSET - 1;
// A mask: all ones below a power of two.
const _: () = assert!((MAX_QUOTE_OFFSET + 1).is_power_of_two());

/// An address for ordering and for the key: as a number (IPv4 in `lo`),
/// and the key's 16 bytes as two little-endian words (network order in
/// memory).
#[derive(Clone, Copy)]
struct Addr<'ctx> {
    hi: IntValue<'ctx>,
    lo: IntValue<'ctx>,
    word0: IntValue<'ctx>,
    word1: IntValue<'ctx>,
}

/// Branchless arithmetic on truth values held as 0 or 1 in an i64. BPF
/// has no conditional move and no set-on-condition: LLVM lowers every
/// `select`, and every comparison made a value, to a conditional jump,
/// and the verifier walks both ways of each. Where such values feed one
/// another (the TCP table), it walked each combination through the rest
/// of the program: a host firewall of five rules took it past 500,000
/// processed instructions. Computed with masks and shifts instead, the
/// classification is straight-line code. `Bpf::opaque` stops LLVM from
/// folding a mask or a sign bit back into a compare or a select.
struct Flat<'b, 'a, 'ctx> {
    b: &'b Bpf<'a, 'ctx>,
}

impl<'ctx> Flat<'_, '_, 'ctx> {
    fn c(&self, v: u64) -> IntValue<'ctx> {
        self.b.c64(v)
    }

    /// An i1 as 0 or 1.
    fn of(&self, v: IntValue<'ctx>) -> IntValue<'ctx> {
        self.b.zext64(v)
    }

    /// As an i1, for a branch.
    fn test(&self, v: IntValue<'ctx>) -> IntValue<'ctx> {
        self.b.cmp(IntPredicate::NE, v, self.c(0))
    }

    fn and(&self, x: IntValue<'ctx>, y: IntValue<'ctx>) -> IntValue<'ctx> {
        self.b.and(x, y)
    }

    fn or(&self, x: IntValue<'ctx>, y: IntValue<'ctx>) -> IntValue<'ctx> {
        self.b.or(x, y)
    }

    fn not(&self, x: IntValue<'ctx>) -> IntValue<'ctx> {
        self.b.xor(x, self.c(1))
    }

    /// Bit `n` of `x`.
    fn bit(&self, x: IntValue<'ctx>, n: u32) -> IntValue<'ctx> {
        self.b.and(self.b.lshr(x, self.c(u64::from(n))), self.c(1))
    }

    /// `x != 0`: the sign bit of `x | -x`.
    fn nonzero(&self, x: IntValue<'ctx>) -> IntValue<'ctx> {
        let b = self.b;
        b.lshr(b.opaque(b.or(x, b.sub(self.c(0), x))), self.c(63))
    }

    fn eq(&self, x: IntValue<'ctx>, y: IntValue<'ctx>) -> IntValue<'ctx> {
        self.not(self.nonzero(self.b.xor(x, y)))
    }

    /// `x < y` unsigned, for any 64-bit values: the borrow of `x - y`.
    fn ult(&self, x: IntValue<'ctx>, y: IntValue<'ctx>) -> IntValue<'ctx> {
        let b = self.b;
        let nx = b.not(x);
        let borrow = b.or(b.and(nx, y), b.and(b.or(nx, y), b.sub(x, y)));
        b.lshr(b.opaque(borrow), self.c(63))
    }

    fn ule(&self, x: IntValue<'ctx>, y: IntValue<'ctx>) -> IntValue<'ctx> {
        self.not(self.ult(y, x))
    }

    /// `c ? x : y` for `c` 0 or 1.
    fn sel(&self, c: IntValue<'ctx>, x: IntValue<'ctx>, y: IntValue<'ctx>) -> IntValue<'ctx> {
        let b = self.b;
        let m = b.opaque(b.sub(self.c(0), c));
        b.or(b.and(x, m), b.and(y, b.not(m)))
    }
}

impl<'ctx> Lower<'_, '_, 'ctx> {
    fn flat(&self) -> Flat<'_, '_, 'ctx> {
        Flat { b: self.b }
    }

    /// An IPv4 address as loaded (network order in memory, zero-extended).
    fn ct_addr4(&self, raw: IntValue<'ctx>) -> Addr<'ctx> {
        let b = &self.b;
        let raw32 = b.trunc(raw, b.m.cx.i32_type());
        Addr { hi: b.c64(0), lo: b.zext64(b.bswap(raw32)), word0: b.zext64(raw32), word1: b.c64(0) }
    }

    /// An IPv6 address as two host-order halves.
    fn ct_addr6(&self, hi: IntValue<'ctx>, lo: IntValue<'ctx>) -> Addr<'ctx> {
        Addr { hi, lo, word0: self.b.bswap(hi), word1: self.b.bswap(lo) }
    }

    /// `c ? x : y` (`c` 0 or 1).
    fn ct_pick(&self, c: IntValue<'ctx>, x: Addr<'ctx>, y: Addr<'ctx>) -> Addr<'ctx> {
        let f = self.flat();
        Addr { hi: f.sel(c, x.hi, y.hi), lo: f.sel(c, x.lo, y.lo), word0: f.sel(c, x.word0, y.word0), word1: f.sel(c, x.word1, y.word1) }
    }

    /// `c ? x : y` for an i1 fact of the parser (the family): a select,
    /// which LLVM folds where the program was specialized for it.
    fn ct_pick_fact(&self, c: IntValue<'ctx>, x: Addr<'ctx>, y: Addr<'ctx>) -> Addr<'ctx> {
        let b = &self.b;
        Addr { hi: b.select(c, x.hi, y.hi), lo: b.select(c, x.lo, y.lo), word0: b.select(c, x.word0, y.word0), word1: b.select(c, x.word1, y.word1) }
    }

    /// Whether `(a, ap)` comes first in the order of endpoints: the lesser
    /// address as a number, then the lesser port; 1 when equal.
    fn ct_first(&self, a: Addr<'ctx>, ap: IntValue<'ctx>, c: Addr<'ctx>, cp: IntValue<'ctx>) -> IntValue<'ctx> {
        let f = self.flat();
        let hi_eq = f.eq(a.hi, c.hi);
        let lt = f.or(f.ult(a.hi, c.hi), f.and(hi_eq, f.ult(a.lo, c.lo)));
        let same = f.and(hi_eq, f.eq(a.lo, c.lo));
        f.or(lt, f.and(same, f.ule(ap, cp)))
    }

    /// Fills the 40-byte key (`meta::CtKey`) of the connection from `lo`
    /// to `hi` (`v6` an i1).
    fn ct_key(&self, key: PointerValue<'ctx>, (lo, lo_port): (Addr<'ctx>, IntValue<'ctx>), (hi, hi_port): (Addr<'ctx>, IntValue<'ctx>), proto: IntValue<'ctx>, v6: IntValue<'ctx>) {
        let b = &self.b;
        let be16 = |p: IntValue<'ctx>| b.or(b.shl(b.and(p, b.c64(0xff)), b.c64(8)), b.and(b.lshr(p, b.c64(8)), b.c64(0xff)));
        b.store_at(key, 0, lo.word0);
        b.store_at(key, 8, lo.word1);
        b.store_at(key, 16, hi.word0);
        b.store_at(key, 24, hi.word1);
        let family = b.select(v6, b.c64(6), b.c64(4));
        let tail = b.or(b.or(be16(lo_port), b.shl(be16(hi_port), b.c64(16))), b.or(b.shl(proto, b.c64(32)), b.shl(family, b.c64(40))));
        b.store_at(key, 32, tail);
    }

    /// Whether the connection of `key` has a live entry: the entry (null
    /// when there is none), its state and flags (0 when not live), and
    /// whether it is live at `now` (0 or 1).
    fn ct_lookup(&self, def: &CtDef<'ctx>, key: PointerValue<'ctx>, now: IntValue<'ctx>) -> (PointerValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>) {
        let b = &self.b;
        let f = self.flat();
        let p = b.map_lookup(def.map, key);
        let from = b.cur();
        let found = b.block("ct_found");
        let done = b.block("ct_looked_up");
        b.br_if_null(p, done, found);
        b.at(found);
        let expires = b.load_u64_at(p, 0);
        let word = b.load_u64_at(p, 8);
        let live = f.ult(now, expires);
        // All of the word's state and flags when live, none else.
        let live_mask = b.opaque(b.sub(b.c64(0), live));
        let state = b.and(b.and(word, b.c64(0xff)), live_mask);
        let flags = b.and(b.and(b.lshr(word, b.c64(8)), b.c64(0xff)), live_mask);
        let found_end = b.cur();
        b.br(done);
        b.at(done);
        let merge = |v: IntValue<'ctx>| {
            let mut incoming = vec![(v, found_end)];
            if !b.omit_null_check {
                incoming.push((b.c64(0), from));
            }
            b.phi(&incoming)
        };
        let (state, flags, live) = (merge(state), merge(flags), merge(live));
        (p, state, flags, live)
    }

    /// Classifies the packet here, after the L4 parse (docs/conntrack.md):
    /// sets `ct.state`'s facts, and where the program records
    /// connections, what [`Lower::ret_pass`] writes.
    pub(super) fn ct_here(&mut self) {
        let Some(def) = self.maps.conntrack.clone() else { return };
        let records = def.trackers.contains(&self.hook);
        let b = &self.b;
        let f = self.flat();
        let h = &self.h;
        let get = |p| b.get_fact(p);
        let t = def.timeouts;
        let num = |s: CtState| b.c64(s.number());
        // The parser's facts as i1, chosen by selects that LLVM folds
        // where the program was specialized for the header; what the
        // packet's bytes decide, in `Flat` arithmetic.
        let (tcp1, udp1, icmp4_1, icmp6_1) = (get(h.tcp_ok), get(h.udp_ok), get(h.icmp4_ok), get(h.icmp6_ok));
        let v6 = get(h.ip6_ok);
        let icmp1 = b.or(icmp4_1, icmp6_1);
        let icmp = f.of(icmp1);
        let ty = get(h.icmp_type);
        let is = |x: u64| f.eq(ty, b.c64(x));
        let echo_req = f.and(icmp, b.select(v6, is(128), is(8)));
        let echo_rep = f.and(icmp, b.select(v6, is(129), is(0)));
        let err4 = f.or(f.or(is(3), is(4)), f.or(f.or(is(5), is(11)), is(12)));
        let err6 = f.ule(b.sub(ty, b.c64(1)), b.c64(3));
        let error = f.and(icmp, b.select(v6, err6, err4));
        let flow = f.or(f.of(b.or(tcp1, udp1)), f.or(echo_req, echo_rep));

        // Shared with `lb` (see `lb::FLOW_KEY_BUF`).
        let key = b.stack_buf(meta::CT_KEY_SIZE, super::lb::FLOW_KEY_BUF);
        let value = b.stack_buf(meta::CT_VALUE_SIZE, "ct_value");
        let null = b.m.i8_ptr().const_null();
        let done = b.block("ct_done");
        // (has a state, its number, write: each 0 or 1; entry) on each way into `done`.
        let mut out: Vec<(IntValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>, PointerValue<'ctx>, BasicBlock<'ctx>)> = Vec::new();
        let flow_bb = b.block("ct_flow");
        let not_flow = b.block("ct_not_flow");
        let error_bb = b.block("ct_icmp_error");
        b.cond_br_likely(f.test(flow), flow_bb, not_flow);
        b.at(not_flow);
        let absent = b.cur();
        b.cond_br(f.test(error), error_bb, done);
        out.push((b.c64(0), b.c64(0), b.c64(0), null, absent));

        // A connection's packet: TCP, UDP or an echo.
        b.at(flow_bb);
        let now = b.helper_call(helper::KTIME_GET_COARSE_NS, b.i64(), &[]);
        let src = self.ct_pick_fact(v6, self.ct_addr6(get(h.src6_hi), get(h.src6_lo)), self.ct_addr4(get(h.src4)));
        let dst = self.ct_pick_fact(v6, self.ct_addr6(get(h.dst6_hi), get(h.dst6_lo)), self.ct_addr4(get(h.dst4)));
        let id = get(h.icmp_id);
        let sport = b.select(tcp1, get(h.tcp_sport), b.select(udp1, get(h.udp_sport), id));
        let dport = b.select(tcp1, get(h.tcp_dport), b.select(udp1, get(h.udp_dport), id));
        let proto = b.select(tcp1, b.c64(6), b.select(udp1, b.c64(17), b.select(v6, b.c64(58), b.c64(1))));
        // An echo's requester is its `lo` side.
        let from_lo = b.select(icmp1, echo_req, self.ct_first(src, sport, dst, dport));
        let (lo, hi) = (self.ct_pick(from_lo, src, dst), self.ct_pick(from_lo, dst, src));
        let (lo_port, hi_port) = (f.sel(from_lo, sport, dport), f.sel(from_lo, dport, sport));
        self.ct_key(key, (lo, lo_port), (hi, hi_port), proto, v6);
        let (entry, st, fl, live) = self.ct_lookup(&def, key, now);
        let b = &self.b;
        let f = self.flat();
        let c = |v: u8| b.c64(u64::from(v));
        let flag_bit = |m: u8| m.trailing_zeros();
        let orig = f.eq(from_lo, f.bit(fl, flag_bit(meta::CT_ORIG_LO)));
        let reply = f.not(orig);
        let seen = f.bit(fl, flag_bit(meta::CT_SEEN_REPLY));
        let new_flags = b.mul(from_lo, c(meta::CT_ORIG_LO));
        let seen_if_reply = b.or(fl, b.mul(reply, c(meta::CT_SEEN_REPLY)));
        let by_direction = f.sel(f.and(orig, f.not(seen)), num(CtState::New), num(CtState::Established));

        // Most packets are a live TCP connection's ACKs (no SYN, FIN or
        // RST) in ESTABLISHED: they only refresh it, and skip the table
        // below (a branch: the two ways meet again at the laundering).
        let flags = get(h.tcp_flags);
        let plain_ack = f.eq(b.and(flags, b.c64(0x17)), b.c64(0x10));
        let steady = f.and(f.and(f.of(tcp1), live), f.and(plain_ack, f.eq(st, c(meta::CT_TCP_ESTABLISHED))));
        let fast = b.block("ct_established");
        let slow = b.block("ct_classify");
        let classified = b.block("ct_classified");
        b.cond_br_likely(f.test(steady), fast, slow);
        b.at(fast);
        b.store_at(value, 0, b.add(now, b.c64(t.tcp_established)));
        b.store_at(value, 8, b.or(c(meta::CT_TCP_ESTABLISHED), b.shl(seen_if_reply, b.c64(8))));
        let fast_end = b.cur();
        b.br(classified);
        b.at(slow);
        // By protocol: a branch on the parser's fact, which LLVM folds
        // where the program was specialized for the header.
        let tcp_bb = b.block("ct_tcp");
        let other_bb = b.block("ct_udp_echo");
        b.cond_br(tcp1, tcp_bb, other_bb);
        b.at(tcp_bb);

        // TCP (docs/conntrack.md, "TCP"): the packet's class by its flags.
        let (fin, syn, rst, ack) = (f.bit(flags, 0), f.bit(flags, 1), f.bit(flags, 2), f.bit(flags, 4));
        let not_rst = f.not(rst);
        let c_synack = f.and(not_rst, f.and(syn, ack));
        let c_syn = f.and(not_rst, f.and(syn, f.not(ack)));
        let not_syn = f.and(not_rst, f.not(syn));
        let c_fin = f.and(not_syn, fin);
        let c_ack = f.and(not_syn, f.and(f.not(fin), ack));
        let st_is = |s: u8| f.eq(st, c(s));
        let (ss, sr, est, tw, close) = (st_is(meta::CT_TCP_SYN_SENT), st_is(meta::CT_TCP_SYN_RECV), st_is(meta::CT_TCP_ESTABLISHED), st_is(meta::CT_TCP_TIME_WAIT), st_is(meta::CT_TCP_CLOSE));
        let reopen = f.and(c_syn, f.or(tw, close));
        let valid_live = f.or(
            f.or(rst, f.and(c_syn, f.or(f.and(orig, ss), reopen))),
            f.or(f.and(c_synack, f.and(reply, f.or(f.or(ss, sr), est))), f.and(f.or(c_fin, c_ack), f.not(ss))),
        );
        let fin_bit = f.sel(orig, c(meta::CT_FIN_ORIG), c(meta::CT_FIN_REPLY));
        let fl_fin = b.or(seen_if_reply, b.mul(f.and(c_fin, f.not(close)), fin_bit));
        let both_fins = meta::CT_FIN_ORIG | meta::CT_FIN_REPLY;
        let both = f.eq(b.and(fl_fin, c(both_fins)), c(both_fins));
        let next_live = f.sel(
            rst,
            c(meta::CT_TCP_CLOSE),
            f.sel(
                c_syn,
                c(meta::CT_TCP_SYN_SENT),
                f.sel(
                    c_synack,
                    f.sel(est, c(meta::CT_TCP_ESTABLISHED), c(meta::CT_TCP_SYN_RECV)),
                    f.sel(
                        c_fin,
                        f.sel(close, c(meta::CT_TCP_CLOSE), f.sel(both, c(meta::CT_TCP_TIME_WAIT), c(meta::CT_TCP_FIN_WAIT))),
                        f.sel(f.and(sr, orig), c(meta::CT_TCP_ESTABLISHED), st),
                    ),
                ),
            ),
        );
        let kept = f.and(live, f.not(reopen));
        let tcp_valid = f.sel(live, valid_live, f.or(c_syn, c_ack));
        let tcp_next = f.sel(live, next_live, f.sel(c_syn, c(meta::CT_TCP_SYN_SENT), c(meta::CT_TCP_ESTABLISHED)));
        let tcp_flags_out = f.sel(kept, fl_fin, new_flags);
        let tcp_state = f.sel(tcp_valid, f.sel(kept, by_direction, num(CtState::New)), num(CtState::Invalid));
        let tcp_timeout = [
            (meta::CT_TCP_SYN_SENT, t.tcp_syn_sent),
            (meta::CT_TCP_SYN_RECV, t.tcp_syn_recv),
            (meta::CT_TCP_FIN_WAIT, t.tcp_fin_wait),
            (meta::CT_TCP_TIME_WAIT, t.tcp_time_wait),
            (meta::CT_TCP_CLOSE, t.tcp_close),
        ]
        .iter()
        .fold(b.c64(t.tcp_established), |acc, &(st, ns)| f.sel(f.eq(tcp_next, c(st)), b.c64(ns), acc));
        b.store_at(value, 0, b.add(now, tcp_timeout));
        b.store_at(value, 8, b.or(tcp_next, b.shl(tcp_flags_out, b.c64(8))));
        let tcp_end = b.cur();
        b.br(classified);

        // UDP and echoes: the direction decides; an echo reply without its
        // request is invalid.
        b.at(other_bb);
        let dead_ok = f.not(f.and(icmp, f.not(from_lo)));
        let other_write = f.or(live, dead_ok);
        let other_flags = f.sel(live, seen_if_reply, new_flags);
        let other_state = f.sel(live, by_direction, f.sel(dead_ok, num(CtState::New), num(CtState::Invalid)));
        let replied = f.bit(other_flags, flag_bit(meta::CT_SEEN_REPLY));
        let other_timeout = b.select(icmp1, b.c64(t.icmp), f.sel(replied, b.c64(t.udp_replied), b.c64(t.udp_unreplied)));

        b.store_at(value, 0, b.add(now, other_timeout));
        b.store_at(value, 8, b.shl(other_flags, b.c64(8)));
        let other_end = b.cur();
        b.br(classified);
        b.at(classified);
        let state = b.phi(&[(by_direction, fast_end), (tcp_state, tcp_end), (other_state, other_end)]);
        let write = b.phi(&[(b.c64(1), fast_end), (tcp_valid, tcp_end), (other_write, other_end)]);
        out.push((b.c64(1), state, write, entry, b.cur()));
        b.br(done);

        // An ICMP error: related to the connection whose packet it quotes.
        b.at(error_bb);
        let related = self.ct_quoted(&def, key, v6);
        let b = &self.b;
        let f = self.flat();
        out.push((b.c64(1), f.sel(related, num(CtState::Related), num(CtState::Invalid)), b.c64(0), null, b.cur()));
        b.br(done);

        b.at(done);
        let ok = b.phi(&out.iter().map(|&(o, _, _, _, bb)| (o, bb)).collect::<Vec<_>>());
        let state = b.phi(&out.iter().map(|&(_, s, _, _, bb)| (s, bb)).collect::<Vec<_>>());
        let write = b.phi(&out.iter().map(|&(_, _, w, _, bb)| (w, bb)).collect::<Vec<_>>());
        let entry = b.phi_ptr(&out.iter().map(|&(_, _, _, e, bb)| (e, bb)).collect::<Vec<_>>());
        let [ok, state, write] = self.ct_launder(&def, [ok, state, write]);
        let b = &self.b;
        let (ok, write) = (b.cmp(IntPredicate::NE, ok, b.c64(0)), b.cmp(IntPredicate::NE, write, b.c64(0)));
        self.ct_write = records.then_some(CtWrite { write, entry, key, value });
        b.set(h.ct_ok, ok);
        b.set(h.ct_state, state);
    }

    /// `values` passed through the table's per-CPU scratch word (stored,
    /// then loaded back as the verifier cannot follow): the ways the
    /// classification reached them (the absent, the connection's and the
    /// error's) then meet as one state for the verifier, instead of each
    /// carrying its constants through every rule after it.
    fn ct_launder(&self, def: &CtDef<'ctx>, values: [IntValue<'ctx>; 3]) -> [IntValue<'ctx>; 3] {
        let b = &self.b;
        let key = b.stack_buf(4, "key");
        b.store_at(key, 0, b.c32(0));
        let s = b.map_lookup(def.scratch, key);
        let from = b.cur();
        let there = b.block("ct_scratch");
        let after = b.block("ct_laundered");
        b.br_if_null(s, after, there);
        b.at(there);
        for (i, v) in values.iter().enumerate() {
            b.store_at(s, 8 * i as u64, *v);
        }
        let back: Vec<IntValue<'ctx>> = (0..values.len()).map(|i| b.load_u64_shared(s, 8 * i as u64)).collect();
        let there_end = b.cur();
        b.br(after);
        b.at(after);
        // The key 0 of a one-entry array is always there; without it the
        // packet has no state.
        let merged: Vec<IntValue<'ctx>> = back
            .iter()
            .map(|&v| {
                let mut incoming = vec![(v, there_end)];
                if !b.omit_null_check {
                    incoming.push((b.c64(0), from));
                }
                b.phi(&incoming)
            })
            .collect();
        [merged[0], merged[1], merged[2]]
    }

    /// Whether the ICMP error here quotes a packet of a connection with a
    /// live entry (0 or 1): an IP header of the error's family, whole, and 8 bytes
    /// of TCP, UDP or an echo right after it (IPv4: not a later fragment).
    /// Uses `key` as its buffer; `v6` is the parser's i1.
    fn ct_quoted(&self, def: &CtDef<'ctx>, key: PointerValue<'ctx>, v6: IntValue<'ctx>) -> IntValue<'ctx> {
        let b = &self.b;
        let f = self.flat();
        let h = &self.h;
        let get = |p| b.get_fact(p);
        let (data, end) = (h.data, h.data_end);
        let at = b.and(b.add(get(h.l4_off), b.c64(8)), b.c64(MAX_QUOTE_OFFSET));
        let q = b.pkt_ptr(data, at);
        let done = b.block("ct_quote_done");
        let mut results: Vec<(IntValue<'ctx>, BasicBlock<'ctx>)> = Vec::new();
        let fail = |results: &mut Vec<_>| results.push((b.c64(0), b.cur()));
        // The quoted IP header, by the error's family.
        let q4 = b.block("ct_quote4");
        let q6 = b.block("ct_quote6");
        let l4 = b.block("ct_quote_l4");
        b.cond_br(v6, q6, q4);
        b.at(q6);
        let ok6 = b.block("ct_quote6_ok");
        fail(&mut results);
        b.cond_br(b.fits(q, 48, end), ok6, done);
        b.at(ok6);
        let v6_ok = b.block("ct_quote6_v");
        fail(&mut results);
        b.cond_br(b.eq(b.lshr(b.load_be(q, 0, 1), b.c64(4)), b.c64(6)), v6_ok, done);
        b.at(v6_ok);
        let src6 = self.ct_addr6(b.load_be(q, 8, 8), b.load_be(q, 16, 8));
        let dst6 = self.ct_addr6(b.load_be(q, 24, 8), b.load_be(q, 32, 8));
        let proto6 = b.load_be(q, 6, 1);
        let hlen6 = b.c64(40);
        let end6 = b.cur();
        b.br(l4);
        b.at(q4);
        let ok4 = b.block("ct_quote4_ok");
        fail(&mut results);
        b.cond_br(b.fits(q, 20, end), ok4, done);
        b.at(ok4);
        let vihl = b.load_be(q, 0, 1);
        let sane = b.and(b.cmp(IntPredicate::ULE, b.sub(vihl, b.c64(0x45)), b.c64(0x4f - 0x45)), b.eq(b.and(b.load_be(q, 6, 2), b.c64(0x1fff)), b.c64(0)));
        let v4_ok = b.block("ct_quote4_v");
        fail(&mut results);
        b.cond_br(sane, v4_ok, done);
        b.at(v4_ok);
        let src4 = self.ct_addr4(b.zext64(b.load_raw(q, 12, 4)));
        let dst4 = self.ct_addr4(b.zext64(b.load_raw(q, 16, 4)));
        let proto4 = b.load_be(q, 9, 1);
        let hlen4 = b.mul(b.and(vihl, b.c64(15)), b.c64(4));
        let end4 = b.cur();
        b.br(l4);

        // The quoted L4 header's 8 bytes.
        b.at(l4);
        let phi_addr = |x: Addr<'ctx>, y: Addr<'ctx>| Addr {
            hi: b.phi(&[(x.hi, end6), (y.hi, end4)]),
            lo: b.phi(&[(x.lo, end6), (y.lo, end4)]),
            word0: b.phi(&[(x.word0, end6), (y.word0, end4)]),
            word1: b.phi(&[(x.word1, end6), (y.word1, end4)]),
        };
        let (src, dst) = (phi_addr(src6, src4), phi_addr(dst6, dst4));
        let proto = b.phi(&[(proto6, end6), (proto4, end4)]);
        let hlen = b.phi(&[(hlen6, end6), (hlen4, end4)]);
        let p = b.pkt_ptr(data, b.and(b.add(at, hlen), b.c64(MAX_QUOTE_OFFSET)));
        let whole = b.block("ct_quote_l4_whole");
        fail(&mut results);
        b.cond_br(b.fits(p, 8, end), whole, done);
        b.at(whole);
        let (w0, w1) = (b.load_be(p, 0, 2), b.load_be(p, 2, 2));
        let id = b.load_be(p, 4, 2);
        let ty = b.lshr(w0, b.c64(8));
        let ports = f.or(f.eq(proto, b.c64(6)), f.eq(proto, b.c64(17)));
        let icmp = f.eq(proto, b.select(v6, b.c64(58), b.c64(1)));
        let request = f.and(icmp, f.eq(ty, b.select(v6, b.c64(128), b.c64(8))));
        let reply = f.and(icmp, f.eq(ty, b.select(v6, b.c64(129), b.c64(0))));
        let known = b.block("ct_quote_known");
        fail(&mut results);
        b.cond_br(f.test(f.or(ports, f.or(request, reply))), known, done);
        b.at(known);
        let from_lo = f.sel(ports, self.ct_first(src, w0, dst, w1), request);
        let (sport, dport) = (f.sel(ports, w0, id), f.sel(ports, w1, id));
        let (lo, hi) = (self.ct_pick(from_lo, src, dst), self.ct_pick(from_lo, dst, src));
        let (lo_port, hi_port) = (f.sel(from_lo, sport, dport), f.sel(from_lo, dport, sport));
        self.ct_key(key, (lo, lo_port), (hi, hi_port), proto, v6);
        let now = b.helper_call(helper::KTIME_GET_COARSE_NS, b.i64(), &[]);
        let (_, _, _, live) = self.ct_lookup(def, key, now);
        results.push((live, b.cur()));
        b.br(done);
        b.at(done);
        b.phi(&results)
    }

    /// Returns `pass`, first writing the connection's entry where this
    /// program records connections.
    pub(super) fn ret_pass(&mut self, code: u64, apart: bool) {
        if let Some(w) = self.ct_write {
            let b = &self.b;
            let write = b.block("ct_write");
            let in_place = b.block("ct_in_place");
            let insert = b.block("ct_insert");
            let written = b.block("ct_written");
            b.cond_br_likely(w.write, write, written);
            b.at(write);
            b.cond_br_likely(b.not(b.is_null(w.entry)), in_place, insert);
            b.at(in_place);
            b.store_at(w.entry, 0, b.load_u64_at(w.value, 0));
            b.store_at(w.entry, 8, b.load_u64_at(w.value, 8));
            b.br(written);
            b.at(insert);
            // A full table makes room (LRU); another CPU's insert of the
            // same connection may win: either way nothing to count.
            b.map_update(self.maps.conntrack.as_ref().expect("a table to write").map, w.key, w.value, BPF_ANY);
            b.br(written);
            b.at(written);
        }
        if apart {
            self.b.ret_apart(code);
        } else {
            self.b.ret(code);
        }
    }
}
