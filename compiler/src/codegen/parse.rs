//! The packet parser every program starts with. It walks Ethernet, up to two
//! VLAN tags, IPv4 (with options) or IPv6 (with a bounded chain of extension
//! headers), and records each field with a presence flag in a stack slot.
//! The L4 header is parsed later, just before the first rule that reads an
//! L4 field ([`parse_l4_here`]): a packet that an earlier rule decides (a
//! blocklist hit) never pays for it. Slots whose values no rule reads are removed by LLVM
//! (mem2reg + dead code elimination), so a policy pays only for what it uses.
//!
//! A header counts as present only when it is complete inside the frame,
//! well formed (IPv4 version 4 and IHL at least 5, IPv6 version 6, TCP data
//! offset at least 5), and inside the IP datagram as its length field declares. L4 headers
//! are present only in unfragmented packets and first fragments.

use super::builder::{helper, Bpf};
use inkwell::basic_block::BasicBlock;
use inkwell::values::{IntValue, PointerValue};
use inkwell::IntPredicate;
use crate::check::fields::{Field, Layer};
use crate::ir::{self, ExprKind, MapOp, StmtKind};
use std::collections::HashMap;
use xpol_lang::ast::Hook;
use xpol_lang::Span;

/// The parts of the parser, for attributing their instructions to source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    Eth,
    Vlan,
    Ip4,
    Ip6,
    L4,
}

fn stages(f: Field) -> &'static [Stage] {
    match f.layer() {
        Layer::Packet => &[],
        Layer::Eth => &[Stage::Eth],
        Layer::Vlan1 | Layer::Vlan2 => &[Stage::Vlan],
        Layer::Ip | Layer::IpProto => &[Stage::Ip4, Stage::Ip6],
        Layer::Ip4 => &[Stage::Ip4],
        Layer::Ip6 => &[Stage::Ip6],
        Layer::Tcp | Layer::Udp | Layer::Ports | Layer::Icmp4 | Layer::Icmp6 => &[Stage::L4],
        // The connection's addresses, ports and flags.
        Layer::Ct => &[Stage::Eth, Stage::Vlan, Stage::Ip4, Stage::Ip6, Stage::L4],
    }
}

/// For each parser stage, the first expression (in rule order) that reads
/// a field the stage provides.
pub fn first_uses(prog: &ir::Program) -> HashMap<Stage, Span> {
    let mut out = HashMap::new();
    for p in &prog.probes {
        probe_fields(p, &mut |f, span| {
            for s in stages(f) {
                out.entry(*s).or_insert(span);
            }
        });
    }
    out
}

/// The index of the first probe of `prog` that reads a field of `stage`.
pub fn first_probe_using(prog: &ir::Program, stage: Stage) -> Option<usize> {
    prog.probes.iter().position(|p| {
        let mut uses = false;
        probe_fields(p, &mut |f, _| uses |= stages(f).contains(&stage));
        uses
    })
}

/// Whether some probe of `prog` reads `field`.
pub fn reads_field(prog: &ir::Program, field: Field) -> bool {
    let mut reads = false;
    for p in &prog.probes {
        probe_fields(p, &mut |f, _| reads |= f == field);
    }
    reads
}

/// The L4 headers that rules read fields of. The rules after the L4 parse
/// are emitted once for each of these headers (and once for everything
/// else, see [`parse_l4_split`]): on each copy LLVM then knows which
/// header the packet carries, and a rule such as `tcp.dport == 80 ||
/// tcp.dport == 443` becomes two compares instead of presence flags merged
/// from every protocol and combined with selects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L4Split {
    pub tcp: bool,
    pub udp: bool,
    pub icmp: bool,
}

impl L4Split {
    pub fn of(probes: &[ir::Probe]) -> L4Split {
        let mut split = L4Split::default();
        for p in probes {
            probe_fields(p, &mut |f, _| match f.layer() {
                Layer::Tcp => split.tcp = true,
                Layer::Udp => split.udp = true,
                Layer::Ports => (split.tcp, split.udp) = (true, true),
                Layer::Icmp4 | Layer::Icmp6 => split.icmp = true,
                _ => {}
            });
        }
        split
    }

    /// The L4 headers that the probes' predicates read fields of (not
    /// their bodies): a split for when [`L4Split::of`]'s copies would be too
    /// many. A rule such as `ip.dst == VIP && tcp.dport == 80` then has a
    /// copy where the packet is TCP, and what its body does (`lb`'s flow
    /// key, its ICMP errors) folds there too.
    pub fn of_predicates(probes: &[ir::Probe]) -> L4Split {
        let mut split = L4Split::default();
        for e in probes.iter().filter_map(|p| p.predicate.as_ref()) {
            expr_fields(e, &mut |f, _| match f.layer() {
                Layer::Tcp => split.tcp = true,
                Layer::Udp => split.udp = true,
                Layer::Ports => (split.tcp, split.udp) = (true, true),
                Layer::Icmp4 | Layer::Icmp6 => split.icmp = true,
                _ => {}
            });
        }
        split
    }

    /// The copies of `probes` this split would make and their summed
    /// [`super::probes_weight`], counting at each copy only the probes whose
    /// predicate may hold for its packets: LLVM folds the others away there
    /// (a predicate that needs TCP is never true at the copy for UDP).
    pub fn live_cost(&self, probes: &[ir::Probe]) -> (usize, usize) {
        let ends = [(self.tcp, L4Split { tcp: true, ..L4Split::default() }), (self.udp, L4Split { udp: true, ..L4Split::default() }), (self.icmp, L4Split { icmp: true, ..L4Split::default() }), (self.icmp, L4Split { icmp: true, ..L4Split::default() }), (true, L4Split::default())];
        let (mut rules, mut weight) = (0, 0);
        for (_, end) in ends.iter().filter(|(on, _)| *on) {
            for p in probes {
                let live = match p.predicate.as_ref().and_then(not_true_without) {
                    None => true,
                    Some(need) => (need.tcp && end.tcp) || (need.udp && end.udp) || (need.icmp && end.icmp),
                };
                if live {
                    rules += 1;
                    weight += super::probes_weight(std::slice::from_ref(p));
                }
            }
        }
        (rules, weight)
    }

    /// How many copies of the rules after the L4 parse this makes (at most:
    /// LLVM drops the copies a parse end cannot reach, such as ICMPv6 after
    /// IPv4).
    pub fn copies(&self) -> usize {
        1 + self.tcp as usize + self.udp as usize + 2 * self.icmp as usize
    }
}

/// The fields `lb(...)` reads: the flow's addresses, ports and protocol
/// (and whether it is a fragment), and what finds the flow an ICMP error
/// quotes; so the parser provides them.
const LB_FIELDS: [Field; 11] = [
    Field::IpSrc,
    Field::IpDst,
    Field::L4Sport,
    Field::L4Dport,
    Field::IpProto,
    Field::IpFrag,
    Field::Ip4Ihl,
    Field::Ip6NextHdr,
    Field::IcmpType,
    Field::Icmp6Type,
    Field::TcpFlags,
];

/// The fields `synproxy` reads: the TCP header's place and flags, whether
/// the packet is a fragment.
const SYNPROXY_FIELDS: [Field; 4] = [Field::TcpFlags, Field::TcpDport, Field::IpFrag, Field::Ip4Ihl];

/// The L4 headers without all of which `e` is unknown (three-valued logic,
/// docs/language.md: a comparison of an absent field is unknown, and so
/// are `!`, `&&` and `||` of unknowns); None when that is not known.
fn unknown_without(e: &ir::Expr) -> Option<L4Split> {
    let union = |a: L4Split, b: L4Split| L4Split { tcp: a.tcp || b.tcp, udp: a.udp || b.udp, icmp: a.icmp || b.icmp };
    match &e.kind {
        ExprKind::Field(f) => match f.layer() {
            Layer::Tcp => Some(L4Split { tcp: true, ..L4Split::default() }),
            Layer::Udp => Some(L4Split { udp: true, ..L4Split::default() }),
            Layer::Ports => Some(L4Split { tcp: true, udp: true, icmp: false }),
            Layer::Icmp4 | Layer::Icmp6 => Some(L4Split { icmp: true, ..L4Split::default() }),
            _ => None,
        },
        // A comparison with an absent operand is unknown.
        ExprKind::Cmp(_, a, b) => unknown_without(a).or_else(|| unknown_without(b)),
        ExprKind::In(a, _) | ExprKind::Not(a) => unknown_without(a),
        ExprKind::And(a, b) | ExprKind::Or(a, b) => Some(union(unknown_without(a)?, unknown_without(b)?)),
        _ => None,
    }
}

/// The L4 headers without all of which predicate `e` cannot be true (so it
/// does not hold); None when any packet may satisfy it, as far as this
/// tells.
fn not_true_without(e: &ir::Expr) -> Option<L4Split> {
    match &e.kind {
        // False or unknown `&&` anything is not true.
        ExprKind::And(a, b) => not_true_without(a).or_else(|| not_true_without(b)),
        ExprKind::Or(a, b) => {
            let (a, b) = (not_true_without(a)?, not_true_without(b)?);
            Some(L4Split { tcp: a.tcp || b.tcp, udp: a.udp || b.udp, icmp: a.icmp || b.icmp })
        }
        _ => unknown_without(e),
    }
}

/// Calls `visit` with every field an expression reads, and where.
fn expr_fields(e: &ir::Expr, visit: &mut impl FnMut(Field, Span)) {
    match &e.kind {
        ExprKind::Field(f) => visit(*f, e.span),
        ExprKind::Const(_) | ExprKind::Local(_) => {}
        ExprKind::MapRead { keys, .. } | ExprKind::Limit { keys, .. } => keys.iter().for_each(|k| expr_fields(k, visit)),
        ExprKind::Neg(a) | ExprKind::BitNot(a) | ExprKind::Not(a) | ExprKind::In(a, _) => expr_fields(a, visit),
        ExprKind::Arith(_, a, b) | ExprKind::Cmp(_, a, b) | ExprKind::And(a, b) | ExprKind::Or(a, b) => {
            expr_fields(a, visit);
            expr_fields(b, visit);
        }
    }
}

/// Calls `visit` with every field one probe reads, and where.
fn probe_fields(p: &ir::Probe, visit: &mut impl FnMut(Field, Span)) {
    fn stmts(list: &[ir::Stmt], visit: &mut impl FnMut(Field, Span)) {
        for s in list {
            match &s.kind {
                StmtKind::If { cond, then_body, else_body } => {
                    expr_fields(cond, visit);
                    stmts(then_body, visit);
                    stmts(else_body, visit);
                }
                StmtKind::Let { value, .. } => expr_fields(value, visit),
                StmtKind::SetWrite { key, .. } => expr_fields(key, visit),
                StmtKind::MapUpdate { keys, op, .. } => {
                    keys.iter().for_each(|k| expr_fields(k, visit));
                    if let MapOp::Sum(e) | MapOp::Assign(e) = op {
                        expr_fields(e, visit);
                    }
                }
                StmtKind::Lb(_) => {
                    for f in LB_FIELDS {
                        visit(f, s.span);
                    }
                }
                StmtKind::Synproxy(_) => {
                    for f in SYNPROXY_FIELDS {
                        visit(f, s.span);
                    }
                }
                // `log` reads the packet's bytes with a helper, not fields.
                StmtKind::Verdict(_) | StmtKind::Redirect(_) | StmtKind::Log(_) => {}
            }
        }
    }
    if let Some(e) = &p.predicate {
        expr_fields(e, visit);
    }
    stmts(&p.body, visit);
}

pub use crate::ir::MAX_IPV6_EXT;
/// Offsets beyond this (bytes from the frame start) are not parsed; it keeps
/// every packet offset provably small for the verifier.
pub(super) const MAX_L4_OFFSET: u64 = 1024;
/// TC programs see only the linear part of an skb: pull this much first.
const TC_PULL_LEN: u64 = 256;

/// Offsets in `struct __sk_buff` of the accelerated VLAN tag.
const SKB_VLAN_PRESENT: u64 = 20;
const SKB_VLAN_TCI: u64 = 24;

const ETH_P_IP: u64 = 0x0800;
const ETH_P_IPV6: u64 = 0x86dd;
const ETH_P_8021Q: u64 = 0x8100;
const ETH_P_8021AD: u64 = 0x88a8;

/// Stack slots of the parsed facts; `get` them where rules need them.
#[derive(Clone, Copy)]
pub struct Headers<'ctx> {
    pub data: PointerValue<'ctx>,
    /// The frame's end as the parser read it: with `data`, valid until a
    /// helper that changes the packet (the verifier keeps the bounds the
    /// parser checked on both).
    pub data_end: PointerValue<'ctx>,
    pub pkt_len: IntValue<'ctx>,
    pub eth_ok: PointerValue<'ctx>,
    pub eth_dst: PointerValue<'ctx>,
    pub eth_src: PointerValue<'ctx>,
    pub eth_type: PointerValue<'ctx>,
    pub vlan_depth: PointerValue<'ctx>,
    pub vlan1_ok: PointerValue<'ctx>,
    pub vlan1_tci: PointerValue<'ctx>,
    pub vlan2_ok: PointerValue<'ctx>,
    pub vlan2_tci: PointerValue<'ctx>,
    pub ip4_ok: PointerValue<'ctx>,
    pub ip6_ok: PointerValue<'ctx>,
    /// The L4 protocol is known (IPv4, or IPv6 whose chain ended in bounds).
    pub proto_ok: PointerValue<'ctx>,
    pub proto: PointerValue<'ctx>,
    pub ttl: PointerValue<'ctx>,
    pub ip_len: PointerValue<'ctx>,
    pub tos: PointerValue<'ctx>,
    pub frag: PointerValue<'ctx>,
    pub frag_off: PointerValue<'ctx>,
    /// IPv4 addresses as loaded (network order, so byte-swapped on
    /// little-endian BPF): rules read them through `Lower::field`.
    pub src4: PointerValue<'ctx>,
    pub dst4: PointerValue<'ctx>,
    pub ihl: PointerValue<'ctx>,
    pub ip4_id: PointerValue<'ctx>,
    pub df: PointerValue<'ctx>,
    /// IPv6 addresses as two host-order halves.
    pub src6_hi: PointerValue<'ctx>,
    pub src6_lo: PointerValue<'ctx>,
    pub dst6_hi: PointerValue<'ctx>,
    pub dst6_lo: PointerValue<'ctx>,
    pub ip6_nh: PointerValue<'ctx>,
    pub flow: PointerValue<'ctx>,
    pub tcp_ok: PointerValue<'ctx>,
    pub udp_ok: PointerValue<'ctx>,
    pub icmp4_ok: PointerValue<'ctx>,
    pub icmp6_ok: PointerValue<'ctx>,
    /// Ports of TCP and of UDP in slots of their own: a policy that reads
    /// only TCP ports then leaves the UDP parse dead, and LLVM removes it.
    pub tcp_sport: PointerValue<'ctx>,
    pub tcp_dport: PointerValue<'ctx>,
    pub udp_sport: PointerValue<'ctx>,
    pub udp_dport: PointerValue<'ctx>,
    pub tcp_flags: PointerValue<'ctx>,
    pub tcp_window: PointerValue<'ctx>,
    pub udp_len: PointerValue<'ctx>,
    pub icmp_type: PointerValue<'ctx>,
    pub icmp_code: PointerValue<'ctx>,
    /// ICMP and ICMPv6: bytes 4 and 5 of the header (an echo's identifier).
    pub icmp_id: PointerValue<'ctx>,
    /// Where the L4 header starts, from the frame's start (when the
    /// protocol is known).
    pub l4_off: PointerValue<'ctx>,
    /// `ct.state`: whether the packet has one, and its number
    /// (`codegen::conntrack`).
    pub ct_ok: PointerValue<'ctx>,
    pub ct_state: PointerValue<'ctx>,
    /// The address of the IPv4 header (as an integer), for the L4 parser
    /// at the IPv4 ends; not a fact.
    pub ip4_hdr: PointerValue<'ctx>,
}

/// The number of [`Headers::slots`].
pub const FACT_SLOTS: usize = 46;

impl<'ctx> Headers<'ctx> {
    /// Every fact slot (all but the packet pointer and length).
    pub fn slots(&self) -> [PointerValue<'ctx>; FACT_SLOTS] {
        let h = self;
        [
            h.eth_ok, h.eth_dst, h.eth_src, h.eth_type, h.vlan_depth, h.vlan1_ok, h.vlan1_tci, h.vlan2_ok, h.vlan2_tci, h.ip4_ok, h.ip6_ok,
            h.proto_ok, h.proto, h.ttl, h.ip_len, h.tos, h.frag, h.frag_off, h.src4, h.dst4, h.ihl, h.ip4_id, h.df, h.src6_hi, h.src6_lo,
            h.dst6_hi, h.dst6_lo, h.ip6_nh, h.flow, h.tcp_ok, h.udp_ok, h.icmp4_ok, h.icmp6_ok, h.tcp_sport, h.tcp_dport, h.udp_sport, h.udp_dport, h.tcp_flags,
            h.tcp_window,
            h.udp_len, h.icmp_type, h.icmp_code, h.icmp_id, h.l4_off, h.ct_ok, h.ct_state,
        ]
    }
}

/// The parser's result: the slots, and the blocks where parsing ends.
/// Rules are emitted once at each end, so that on every path LLVM sees the
/// fields that path stored (an IPv4 path knows it carries no IPv6 fields)
/// instead of a merge of every field of every path.
pub struct Parsed<'ctx> {
    pub headers: Headers<'ctx>,
    /// No IP header (or a malformed one), untagged IPv4 without options
    /// (the common frame: its header length is known there), other IPv4,
    /// untagged IPv6 whose upper layer follows the fixed header, other
    /// IPv6; only the first when not specializing.
    pub ends: Vec<BasicBlock<'ctx>>,
    /// The ends only IPv4 packets reach, when specializing: headers
    /// without options first.
    ip4_ends: Vec<BasicBlock<'ctx>>,
    /// The end only untagged IPv6 without extension headers reaches, when
    /// specializing.
    ip6_plain_end: Option<BasicBlock<'ctx>>,
    /// Where the L4 header is, for [`parse_l4_here`]; see [`Parsed::l4_at`].
    l4: L4At<'ctx>,
}

/// Emits the parser at the current position.
pub fn parse<'ctx>(b: &Bpf<'_, 'ctx>, hook: Hook, uses: &HashMap<Stage, Span>, specialize: bool, omit_l4_bounds_check: bool) -> Parsed<'ctx> {
    // Each header's instructions carry the position of the first rule that
    // reads it: a verifier complaint about them points at that rule.
    let locate = |stage: Stage| {
        if let Some(&span) = uses.get(&stage) {
            b.locate(span);
        }
    };
    let ctx = b.func.get_nth_param(0).expect("programs take a context").into_pointer_value();
    let i32t = b.m.cx.i32_type();
    let ctx_u32 = |off: u64| {
        let v = b.load_raw(ctx, off, 4);
        b.zext64(v)
    };
    let (data_off, end_off) = if hook == Hook::Xdp { (0, 4) } else { (76, 80) };
    let to_ptr = |v: IntValue<'ctx>| b.b.build_int_to_ptr(v, b.m.i8_ptr(), "pkt").expect("builder positioned");
    let mut data = to_ptr(ctx_u32(data_off));
    let mut data_end = to_ptr(ctx_u32(end_off));
    let pkt_len = if hook == Hook::Xdp {
        let d = b.b.build_ptr_to_int(data, b.i64(), "d").expect("builder positioned");
        let e = b.b.build_ptr_to_int(data_end, b.i64(), "e").expect("builder positioned");
        b.sub(e, d)
    } else {
        // skb->len counts non-linear data too; make the headers linear so
        // that direct packet access can see them.
        let skb_len = ctx_u32(0);
        let d = b.b.build_ptr_to_int(data, b.i64(), "d").expect("builder positioned");
        let e = b.b.build_ptr_to_int(data_end, b.i64(), "e").expect("builder positioned");
        let linear = b.sub(e, d);
        let want = b.select(b.cmp(IntPredicate::ULT, skb_len, b.c64(TC_PULL_LEN)), skb_len, b.c64(TC_PULL_LEN));
        let pull = b.block("pull");
        let pulled = b.block("pulled");
        b.cond_br(b.cmp(IntPredicate::ULT, linear, want), pull, pulled);
        b.at(pull);
        b.helper_call(helper::SKB_PULL_DATA, b.i64(), &[ctx.into(), want.into()]);
        b.br(pulled);
        b.at(pulled);
        data = to_ptr(ctx_u32(data_off));
        data_end = to_ptr(ctx_u32(end_off));
        skb_len
    };
    let _ = i32t;

    let z = b.c64(0);
    let f = b.bool(false);
    let h = Headers {
        data,
        data_end,
        pkt_len,
        eth_ok: b.var(f, "eth_ok"),
        eth_dst: b.var(z, "eth_dst"),
        eth_src: b.var(z, "eth_src"),
        eth_type: b.var(z, "eth_type"),
        vlan_depth: b.var(z, "vlan_depth"),
        vlan1_ok: b.var(f, "vlan1_ok"),
        vlan1_tci: b.var(z, "vlan1_tci"),
        vlan2_ok: b.var(f, "vlan2_ok"),
        vlan2_tci: b.var(z, "vlan2_tci"),
        ip4_ok: b.var(f, "ip4_ok"),
        ip6_ok: b.var(f, "ip6_ok"),
        proto_ok: b.var(f, "proto_ok"),
        proto: b.var(z, "proto"),
        ttl: b.var(z, "ttl"),
        ip_len: b.var(z, "ip_len"),
        tos: b.var(z, "tos"),
        frag: b.var(f, "frag"),
        frag_off: b.var(z, "frag_off"),
        src4: b.var(z, "src4"),
        dst4: b.var(z, "dst4"),
        ihl: b.var(z, "ihl"),
        ip4_id: b.var(z, "ip4_id"),
        df: b.var(f, "df"),
        src6_hi: b.var(z, "src6_hi"),
        src6_lo: b.var(z, "src6_lo"),
        dst6_hi: b.var(z, "dst6_hi"),
        dst6_lo: b.var(z, "dst6_lo"),
        ip6_nh: b.var(z, "ip6_nh"),
        flow: b.var(z, "flow"),
        tcp_ok: b.var(f, "tcp_ok"),
        udp_ok: b.var(f, "udp_ok"),
        icmp4_ok: b.var(f, "icmp4_ok"),
        icmp6_ok: b.var(f, "icmp6_ok"),
        tcp_sport: b.var(z, "tcp_sport"),
        tcp_dport: b.var(z, "tcp_dport"),
        udp_sport: b.var(z, "udp_sport"),
        udp_dport: b.var(z, "udp_dport"),
        tcp_flags: b.var(z, "tcp_flags"),
        tcp_window: b.var(z, "tcp_window"),
        udp_len: b.var(z, "udp_len"),
        icmp_type: b.var(z, "icmp_type"),
        icmp_code: b.var(z, "icmp_code"),
        icmp_id: b.var(z, "icmp_id"),
        l4_off: b.var(z, "l4_off"),
        ct_ok: b.var(f, "ct_ok"),
        ct_state: b.var(z, "ct_state"),
        ip4_hdr: b.var(z, "ip4_hdr"),
    };
    let t = b.bool(true);
    let done = b.block("parsed");
    let l3 = b.block("l3");
    let l3off = b.var(z, "l3off");
    let l4off = b.var(z, "l4off");
    // Offset (from the frame start) where the IP datagram ends by its own
    // length field: bytes past it are padding, not headers.
    let ip_end = b.var(z, "ip_end");

    let eth_facts = || {
        locate(Stage::Eth);
        b.set(h.eth_ok, t);
        b.set(h.eth_dst, load_mac(b, data, 0));
        b.set(h.eth_src, load_mac(b, data, 6));
    };
    // IPv4 from its fixed 20 bytes at `p` (offset `off`), known to be in
    // the frame, on to `to`; a malformed header ends parsing.
    let l4_v4 = b.block("l4_v4");
    let l4_v4_plain = b.block("l4_v4_plain");
    let ip4_header = |p: PointerValue<'ctx>, off: IntValue<'ctx>, to: BasicBlock<'ctx>| {
        let vihl = b.load_be(p, 0, 1);
        let ihl = b.and(vihl, b.c64(15));
        let hlen = b.mul(ihl, b.c64(4));
        let total = b.load_be(p, 2, 2);
        // Version 4 and IHL at least 5: the byte is 0x45..=0x4f, one compare.
        let vihl_ok = b.cmp(IntPredicate::ULE, b.sub(vihl, b.c64(0x45)), b.c64(0x4f - 0x45));
        let sane = b.and(vihl_ok, b.cmp(IntPredicate::UGE, total, hlen));
        let ip4_sane = b.block("ip4_sane");
        b.cond_br_likely(sane, ip4_sane, done);
        b.at(ip4_sane);
        // The options must be inside the frame too.
        let l4p = b.ptr_add(p, hlen);
        let ip4_whole = b.block("ip4_whole");
        b.cond_br_likely(b.fits(l4p, 0, data_end), ip4_whole, done);
        b.at(ip4_whole);
        b.set(h.ip4_ok, t);
        b.set(h.ip4_hdr, b.ptr_to_int(p));
        b.set(h.ihl, ihl);
        b.set(h.tos, b.load_be(p, 1, 1));
        b.set(h.ip_len, total);
        b.set(h.ip4_id, b.load_be(p, 4, 2));
        let fragw = b.load_be(p, 6, 2);
        let frag_off = b.mul(b.and(fragw, b.c64(0x1fff)), b.c64(8));
        let mf = b.cmp(IntPredicate::NE, b.and(fragw, b.c64(0x2000)), z);
        b.set(h.df, b.cmp(IntPredicate::NE, b.and(fragw, b.c64(0x4000)), z));
        b.set(h.frag_off, frag_off);
        b.set(h.frag, b.or(mf, b.cmp(IntPredicate::NE, frag_off, z)));
        b.set(h.ttl, b.load_be(p, 8, 1));
        b.set(h.proto, b.load_be(p, 9, 1));
        b.set(h.src4, b.zext64(b.load_raw(p, 12, 4)));
        b.set(h.dst4, b.zext64(b.load_raw(p, 16, 4)));
        b.set(h.proto_ok, t);
        let at = b.add(off, hlen);
        b.set(l4off, at);
        b.set(h.l4_off, at);
        b.set(ip_end, b.add(off, total));
        b.br(to);
    };
    // The fixed IPv6 header at `p` (offset `off`), known to be in the
    // frame, version 6; returns its next header.
    let ip6_header = |p: PointerValue<'ctx>, off: IntValue<'ctx>, w0: IntValue<'ctx>| {
        b.set(h.ip6_ok, t);
        b.set(h.tos, b.and(b.lshr(w0, b.c64(20)), b.c64(0xff)));
        b.set(h.flow, b.and(w0, b.c64(0xfffff)));
        let plen = b.load_be(p, 4, 2);
        b.set(h.ip_len, b.add(plen, b.c64(40)));
        let nh0 = b.load_be(p, 6, 1);
        b.set(h.ip6_nh, nh0);
        b.set(h.ttl, b.load_be(p, 7, 1));
        b.set(h.src6_hi, b.load_be(p, 8, 8));
        b.set(h.src6_lo, b.load_be(p, 16, 8));
        b.set(h.dst6_hi, b.load_be(p, 24, 8));
        b.set(h.dst6_lo, b.load_be(p, 32, 8));
        // Payload length 0 is a jumbogram (or BIG TCP): the frame bounds it.
        let frame_end = b.pkt_len_linear(data, data_end);
        let end = b.select(b.eq(plen, z), frame_end, b.add(off, b.add(plen, b.c64(40))));
        b.set(ip_end, end);
        nh0
    };
    // Next headers that are IPv6 extension headers (hop-by-hop, routing,
    // destination options, fragment, authentication).
    let is_ext = |nh: IntValue<'ctx>| [0u64, 43, 60, 44, 51].iter().fold(b.bool(false), |acc, &c| b.or(acc, b.eq(nh, b.c64(c))));
    let l4_v6 = b.block("l4_v6");
    let l4_v6_plain = b.block("l4_v6_plain");

    // The common frame first: untagged IPv4 with its fixed header in the
    // frame takes one bounds check and one compare of the EtherType as
    // stored (no byte swap) to reach the IP header at a constant offset.
    // Everything else (VLAN tags, IPv6, short frames) takes the general walk
    // below, which also handles this frame correctly, only slower.
    let fast_ip = |general: BasicBlock<'ctx>| {
        let maybe = b.block("maybe_ip4");
        let fast = b.block("ip4_untagged");
        let not4 = b.block("maybe_ip6");
        b.cond_br_likely(b.fits(data, 14 + 20, data_end), maybe, general);
        b.at(maybe);
        // The program is little-endian (bpfel): bytes 08 00 load as 0x0008.
        let raw_ethertype = b.zext64(b.load_raw(data, 12, 2));
        let as_loaded = |etype: u64| b.c64(u64::from(u16::from_le_bytes((etype as u16).to_be_bytes())));
        b.cond_br_likely(b.eq(raw_ethertype, as_loaded(ETH_P_IP)), fast, not4);

        // Untagged IPv6 whose upper-layer header follows the fixed header
        // (no extension header): a parse end of its own, where the L4
        // header is at a constant offset. Any other IPv6 takes the general
        // walk.
        b.at(not4);
        let maybe6 = b.block("ip6_untagged");
        let fixed6 = b.block("ip6_untagged_fixed");
        let plain6 = b.block("ip6_plain");
        b.cond_br(b.eq(raw_ethertype, as_loaded(ETH_P_IPV6)), maybe6, general);
        b.at(maybe6);
        b.cond_br_likely(b.fits(data, 14 + 40, data_end), fixed6, general);
        b.at(fixed6);
        let p = b.ptr_add(data, b.c64(14));
        let w0 = b.load_be(p, 0, 4);
        let nh0 = b.load_be(p, 6, 1);
        let version6 = b.eq(b.lshr(w0, b.c64(28)), b.c64(6));
        b.cond_br_likely(b.and(version6, b.not(is_ext(nh0))), plain6, general);
        b.at(plain6);
        eth_facts();
        b.set(h.eth_type, b.c64(ETH_P_IPV6));
        b.set(l3off, b.c64(14));
        locate(Stage::Ip6);
        let nh0 = ip6_header(p, b.c64(14), w0);
        b.set(h.proto, nh0);
        b.set(h.proto_ok, t);
        let at = b.c64(14 + 40);
        b.set(l4off, at);
        b.set(h.l4_off, at);
        b.br(l4_v6_plain);

        b.at(fast);
        eth_facts();
        b.set(h.eth_type, b.c64(ETH_P_IP));
        b.set(l3off, b.c64(14));
        locate(Stage::Ip4);
        // Most IPv4 headers have no options (version 4, IHL 5): those get
        // a parse end of their own, where LLVM knows the header's length
        // and finds the L4 header at a constant offset.
        let p = b.ptr_add(data, b.c64(14));
        let plain = b.block("ip4_plain");
        let with_options = b.block("ip4_options");
        b.cond_br_likely(b.eq(b.load_be(p, 0, 1), b.c64(0x45)), plain, with_options);
        b.at(plain);
        ip4_header(p, b.c64(14), l4_v4_plain);
        b.at(with_options);
        ip4_header(p, b.c64(14), l4_v4);
    };

    // Ethernet and VLAN tags, at constant offsets.
    let eth = b.block("eth");
    let general = b.block("eth_general");
    if hook == Hook::Xdp {
        fast_ip(general);
    } else {
        // On TC only when no VLAN tag was taken into the skb (see below).
        let no_accel = b.block("no_vlan_accel");
        b.cond_br(b.eq(ctx_u32(SKB_VLAN_PRESENT), z), no_accel, general);
        b.at(no_accel);
        fast_ip(general);
    }
    b.at(general);
    b.cond_br(b.fits(data, 14, data_end), eth, done);
    b.at(eth);
    eth_facts();
    // VLAN tags in the frame, from tag number `first` (the tag already
    // taken from the skb's metadata, if any, was number 1).
    let tags = |first: u64| {
        let mut etype = b.load_be(data, 12, 2);
        let mut off = 14u64;
        for depth in first..=2u64 {
            let tagged = b.block("tagged");
            let untagged = b.block("untagged");
            let is_vlan = b.or(b.eq(etype, b.c64(ETH_P_8021Q)), b.eq(etype, b.c64(ETH_P_8021AD)));
            b.set(h.eth_type, etype);
            b.set(l3off, b.c64(off));
            b.cond_br(is_vlan, tagged, untagged);
            b.at(untagged);
            b.br(l3);
            b.at(tagged);
            locate(Stage::Vlan);
            // A truncated tag: Ethernet is present, the tag and L3 are not.
            let whole = b.block("tag");
            b.cond_br(b.fits(data, off + 4, data_end), whole, done);
            b.at(whole);
            let (ok, tci) = if depth == 1 { (h.vlan1_ok, h.vlan1_tci) } else { (h.vlan2_ok, h.vlan2_tci) };
            b.set(ok, t);
            b.set(tci, b.load_be(data, off, 2));
            b.set(h.vlan_depth, b.c64(depth));
            etype = b.load_be(data, off + 2, 2);
            off += 4;
        }
        // After two tags: a third tag means we do not parse further.
        b.set(h.eth_type, etype);
        b.set(l3off, b.c64(off));
        let third = b.block("third_tag");
        let is_vlan = b.or(b.eq(etype, b.c64(ETH_P_8021Q)), b.eq(etype, b.c64(ETH_P_8021AD)));
        b.cond_br(is_vlan, third, l3);
        b.at(third);
        b.set(h.vlan_depth, b.c64(3));
        b.br(done);
    };
    if hook == Hook::Xdp {
        tags(1);
    } else {
        // On TC the outer tag may have been taken out of the frame into the
        // skb (VLAN acceleration: __sk_buff.vlan_present, .vlan_tci). It is
        // tag number 1; the frame then starts with what followed it.
        let accel = b.block("vlan_accel");
        let in_frame = b.block("vlan_in_frame");
        b.cond_br(b.cmp(IntPredicate::NE, ctx_u32(SKB_VLAN_PRESENT), z), accel, in_frame);
        b.at(accel);
        locate(Stage::Vlan);
        b.set(h.vlan1_ok, t);
        b.set(h.vlan1_tci, b.and(ctx_u32(SKB_VLAN_TCI), b.c64(0xffff)));
        b.set(h.vlan_depth, b.c64(1));
        tags(2);
        b.at(in_frame);
        tags(1);
    }

    // L3 dispatch.
    b.at(l3);
    let etype = b.get(h.eth_type);
    let off = b.get(l3off);
    let ip4 = b.block("ip4");
    let not4 = b.block("not_ip4");
    let ip6 = b.block("ip6");
    let (ip4_done, ip6_done) = if specialize { (b.block("ip4_parsed"), b.block("ip6_parsed")) } else { (done, done) };
    b.cond_br(b.eq(etype, b.c64(ETH_P_IP)), ip4, not4);
    b.at(not4);
    b.cond_br(b.eq(etype, b.c64(ETH_P_IPV6)), ip6, done);

    // IPv4.
    b.at(ip4);
    locate(Stage::Ip4);
    let p = b.pkt_ptr(data, off);
    let ip4_fixed = b.block("ip4_fixed");
    b.cond_br(b.fits(p, 20, data_end), ip4_fixed, done);
    b.at(ip4_fixed);
    ip4_header(p, off, l4_v4);

    // IPv6.
    b.at(ip6);
    locate(Stage::Ip6);
    let p = b.pkt_ptr(data, off);
    let ip6_fixed = b.block("ip6_fixed");
    b.cond_br(b.fits(p, 40, data_end), ip6_fixed, done);
    b.at(ip6_fixed);
    let w0 = b.load_be(p, 0, 4);
    let ip6_sane = b.block("ip6_sane");
    b.cond_br(b.eq(b.lshr(w0, b.c64(28)), b.c64(6)), ip6_sane, done);
    b.at(ip6_sane);
    let nh0 = ip6_header(p, off, w0);
    let nh = b.var(z, "nh");
    let xoff = b.var(z, "xoff");
    b.set(nh, nh0);
    b.set(xoff, b.add(off, b.c64(40)));
    // MAX_IPV6_EXT headers, then one more look to find the upper layer.
    for i in 0..=MAX_IPV6_EXT {
        let cur = b.get(nh);
        let o = b.get(xoff);
        if i == MAX_IPV6_EXT {
            let upper = b.block("upper");
            // Chain longer than the bound: IP is present, the upper layer unknown.
            b.cond_br(is_ext(cur), ip6_done, upper);
            b.at(upper);
            b.set(h.proto, cur);
            b.set(h.proto_ok, t);
            let at = o;
            b.set(l4off, at);
            b.set(h.l4_off, at);
            b.br(l4_v6);
            break;
        }
        let generic = b.block("ext_opts");
        let not_generic = b.block("ext_other");
        let fragh = b.block("ext_frag");
        let not_frag = b.block("ext_not_frag");
        let ah = b.block("ext_ah");
        let upper = b.block("upper");
        let next = b.block("ext_next");
        let is_generic = b.or(b.or(b.eq(cur, b.c64(0)), b.eq(cur, b.c64(43))), b.eq(cur, b.c64(60)));
        b.cond_br(is_generic, generic, not_generic);
        b.at(not_generic);
        b.cond_br(b.eq(cur, b.c64(44)), fragh, not_frag);
        b.at(not_frag);
        b.cond_br(b.eq(cur, b.c64(51)), ah, upper);
        // Each extension header needs its first 8 bytes inside the frame.
        let ext_p = |bb| {
            b.at(bb);
            let q = b.pkt_ptr(data, o);
            let whole = b.block("ext_whole");
            b.cond_br(b.fits(q, 8, data_end), whole, ip6_done);
            b.at(whole);
            q
        };
        // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
        let q = ext_p(generic);
        b.set(nh, b.load_be(q, 0, 1));
        b.set(xoff, b.add(o, b.mul(b.add(b.load_be(q, 1, 1), b.c64(1)), b.c64(8))));
        b.br(next);
        // Fragment header: 8 bytes.
        let q = ext_p(fragh);
        let fo = b.load_be(q, 2, 2);
        b.set(h.frag, t);
        b.set(h.frag_off, b.and(fo, b.c64(0xfff8)));
        b.set(nh, b.load_be(q, 0, 1));
        b.set(xoff, b.add(o, b.c64(8)));
        b.br(next);
        // Authentication header: (len + 2) * 4 bytes.
        let q = ext_p(ah);
        b.set(nh, b.load_be(q, 0, 1));
        b.set(xoff, b.add(o, b.mul(b.add(b.load_be(q, 1, 1), b.c64(2)), b.c64(4))));
        b.br(next);
        // Anything else is the upper-layer header.
        b.at(upper);
        b.set(h.proto, cur);
        b.set(h.proto_ok, t);
        let at = o;
        b.set(l4off, at);
        b.set(h.l4_off, at);
        b.br(l4_v6);
        // Keep the offset small and give the verifier one bounded range for
        // it on every path, so that its states can be pruned.
        b.at(next);
        let o2 = b.get(xoff);
        let bounded = b.block("ext_bounded");
        let in_dgram = b.cmp(IntPredicate::ULE, o2, b.get(ip_end));
        b.cond_br(b.and(b.cmp(IntPredicate::ULE, o2, b.c64(MAX_L4_OFFSET)), in_dgram), bounded, ip6_done);
        b.at(bounded);
        b.set(xoff, b.and(b.opaque(o2), b.c64(2 * MAX_L4_OFFSET - 1)));
    }

    b.at(l4_v4);
    b.br(ip4_done);
    let ip4_plain_done = if specialize { b.block("ip4_plain_parsed") } else { done };
    b.at(l4_v4_plain);
    b.br(ip4_plain_done);
    b.at(l4_v6);
    b.br(ip6_done);
    let ip6_plain_done = if specialize { b.block("ip6_plain_parsed") } else { done };
    b.at(l4_v6_plain);
    b.br(ip6_plain_done);
    let l4 = L4At { data, data_end, l4off, ip_end, omit_l4_bounds_check, span: uses.get(&Stage::L4).copied(), ip4: false, ip4_plain: false, ip6_plain: false };
    let ends = if specialize { vec![done, ip4_plain_done, ip4_done, ip6_plain_done, ip6_done] } else { vec![done] };
    let ip4_ends = if specialize { vec![ip4_plain_done, ip4_done] } else { Vec::new() };
    Parsed { headers: h, ends, ip4_ends, ip6_plain_end: specialize.then_some(ip6_plain_done), l4 }
}

impl<'ctx> Parsed<'ctx> {
    /// Where the L4 header is, for the rules emitted at parse end `end`.
    pub fn l4_at(&self, end: BasicBlock<'ctx>) -> L4At<'ctx> {
        L4At { ip4: self.ip4_ends.contains(&end), ip4_plain: self.ip4_ends.first() == Some(&end), ip6_plain: self.ip6_plain_end == Some(end), ..self.l4 }
    }
}

#[derive(Clone, Copy)]
pub struct L4At<'ctx> {
    data: PointerValue<'ctx>,
    data_end: PointerValue<'ctx>,
    l4off: PointerValue<'ctx>,
    ip_end: PointerValue<'ctx>,
    omit_l4_bounds_check: bool,
    span: Option<Span>,
    /// Only IPv4 packets get here (an IPv4 end of a specialized program).
    ip4: bool,
    /// Only IPv4 headers without options (0x45) get here.
    ip4_plain: bool,
    /// Only untagged IPv6 with the L4 header right after the fixed header
    /// gets here.
    ip6_plain: bool,
}

/// Parses the L4 header at the current position, where the IP header (if
/// any) has been parsed; continues after it. Without a known protocol
/// (no IP, or an IPv6 chain past the bound) the L4 fields stay absent.
pub fn parse_l4_here<'ctx>(b: &Bpf<'_, 'ctx>, h: &Headers<'ctx>, at: &L4At<'ctx>) {
    let done = b.block("l4_parsed");
    parse_l4(b, h, at, L4Exits { tcp: done, udp: done, icmp4: done, icmp6: done, other: done });
    b.at(done);
}

/// Parses the L4 header at the current position like [`parse_l4_here`],
/// and returns where parsing ends: one block for each header in `split`
/// (the packet carries it, its fields are set), and one for every other
/// packet. The caller emits the rules that follow at each.
pub fn parse_l4_split<'ctx>(b: &Bpf<'_, 'ctx>, h: &Headers<'ctx>, at: &L4At<'ctx>, split: L4Split) -> Vec<BasicBlock<'ctx>> {
    let other = b.block("l4_other");
    let or_other = |on: bool, name: &str| if on { b.block(name) } else { other };
    let exits = L4Exits {
        tcp: or_other(split.tcp, "l4_tcp"),
        udp: or_other(split.udp, "l4_udp"),
        icmp4: or_other(split.icmp, "l4_icmp4"),
        icmp6: or_other(split.icmp, "l4_icmp6"),
        other,
    };
    parse_l4(b, h, at, exits);
    let mut ends: Vec<BasicBlock<'ctx>> = Vec::new();
    for end in [exits.tcp, exits.udp, exits.icmp4, exits.icmp6, exits.other] {
        if !ends.contains(&end) {
            ends.push(end);
        }
    }
    ends
}

/// Where [`parse_l4`] goes on, by the header it found.
#[derive(Clone, Copy)]
struct L4Exits<'ctx> {
    tcp: BasicBlock<'ctx>,
    udp: BasicBlock<'ctx>,
    icmp4: BasicBlock<'ctx>,
    icmp6: BasicBlock<'ctx>,
    /// No L4 header: not first fragment, unknown protocol, incomplete or
    /// malformed header, no IP.
    other: BasicBlock<'ctx>,
}

/// The L4 header, from the current position; every way out goes to one of
/// `exits`.
fn parse_l4<'ctx>(b: &Bpf<'_, 'ctx>, h: &Headers<'ctx>, at: &L4At<'ctx>, exits: L4Exits<'ctx>) {
    let entry = b.block("l4");
    // Every way of finding no L4 header meets here first: the fields stay
    // absent, and are set so once, not on each way out (see
    // `Bpf::keep_block`).
    let done = b.block("l4_none");
    b.cond_br(b.get(h.proto_ok), entry, done);
    let (data, data_end, omit_l4_bounds_check) = (at.data, at.data_end, at.omit_l4_bounds_check);
    let z = b.c64(0);
    let t = b.bool(true);
    b.at(entry);
    if let Some(span) = at.span {
        b.locate(span);
    }
    let first = b.block("first_frag");
    // (where the header starts, its offset from the start of the IP
    // datagram or the frame, where the datagram ends in the same terms)
    let (q, o, dgram_end, proto) = if at.ip4 {
        // Only IPv4 gets here: read what the L4 header needs from the IPv4
        // header now, rather than keep parsed values alive (in registers or
        // spilled) across the rules before the first L4 rule.
        // Untagged without options, the header is at a constant offset:
        // the same address as the parser's loads, so that LLVM reuses them
        // (the total length) where no store or call came between.
        let p = if at.ip4_plain { b.ptr_add(data, b.c64(14)) } else { b.int_to_ptr(b.get(h.ip4_hdr)) };
        // Fragment offset 0 (13 bits; the low 5 of the first byte and the
        // second byte as loaded): unfragmented or a first fragment.
        let frag_off_as_loaded = u16::from_le_bytes(0x1fffu16.to_be_bytes());
        let fragw = b.zext64(b.load_raw(p, 6, 2));
        b.cond_br_likely(b.eq(b.and(fragw, b.c64(u64::from(frag_off_as_loaded))), z), first, done);
        b.at(first);
        // At the end of headers without options the length is known:
        // LLVM could not reuse the first byte's load after a helper call.
        let hlen = if at.ip4_plain { b.c64(20) } else { b.shl(b.and(b.load_be(p, 0, 1), b.c64(15)), b.c64(2)) };
        (b.pkt_ptr(p, hlen), hlen, b.load_be(p, 2, 2), b.load_be(p, 9, 1))
    } else if at.ip6_plain {
        // No fragment header: every packet here is a first fragment, and
        // the L4 header is at a constant offset.
        b.br(first);
        b.at(first);
        let o = b.c64(14 + 40);
        (b.pkt_ptr(data, o), o, b.get(at.ip_end), b.get(h.proto))
    } else {
        let o = b.get(at.l4off);
        let dgram_end = b.get(at.ip_end);
        b.cond_br_likely(b.eq(b.get(h.frag_off), z), first, done);
        b.at(first);
        let o = b.and(b.opaque(o), b.c64(2 * MAX_L4_OFFSET - 1));
        (b.pkt_ptr(data, o), o, dgram_end, b.get(h.proto))
    };
    // `n` bytes of L4 header inside the frame and inside the datagram.
    let whole = |n: u64| {
        let in_dgram = b.cmp(IntPredicate::ULE, b.add(o, b.c64(n)), dgram_end);
        if omit_l4_bounds_check {
            in_dgram
        } else {
            b.and(b.fits(q, n, data_end), in_dgram)
        }
    };
    // The protocol first, then the bounds: short-circuit branches cost less
    // than computing every condition and combining them. Protocols in the
    // order of their share of traffic (TCP, UDP, ICMP), each laid out as
    // the fall-through.
    let check = |is_proto: IntValue<'ctx>, n: u64, yes: BasicBlock<'ctx>, no: BasicBlock<'ctx>| {
        let bounds = b.block("l4_bounds");
        b.cond_br_likely(is_proto, bounds, no);
        b.at(bounds);
        b.cond_br_likely(whole(n), yes, no);
    };
    let is_tcp = b.block("tcp");
    let not_tcp = b.block("not_tcp");
    let is_udp = b.block("udp");
    let not_udp = b.block("not_udp");
    check(b.eq(proto, b.c64(6)), 20, is_tcp, not_tcp);
    b.at(is_tcp);
    let doff = b.lshr(b.load_be(q, 12, 1), b.c64(4));
    let tcp_sane = b.block("tcp_sane");
    b.cond_br_likely(b.cmp(IntPredicate::UGE, doff, b.c64(5)), tcp_sane, done);
    b.at(tcp_sane);
    b.set(h.tcp_ok, t);
    b.set(h.tcp_sport, b.load_be(q, 0, 2));
    b.set(h.tcp_dport, b.load_be(q, 2, 2));
    b.set(h.tcp_flags, b.load_be(q, 13, 1));
    b.set(h.tcp_window, b.load_be(q, 14, 2));
    b.br(exits.tcp);
    b.at(not_tcp);
    check(b.eq(proto, b.c64(17)), 8, is_udp, not_udp);
    b.at(is_udp);
    b.set(h.udp_ok, t);
    b.set(h.udp_sport, b.load_be(q, 0, 2));
    b.set(h.udp_dport, b.load_be(q, 2, 2));
    b.set(h.udp_len, b.load_be(q, 4, 2));
    b.br(exits.udp);
    b.at(not_udp);
    // ICMP over IPv4, then ICMPv6 over IPv6: type and code only.
    for (number, family, ok, exit) in [(1u64, h.ip4_ok, h.icmp4_ok, exits.icmp4), (58, h.ip6_ok, h.icmp6_ok, exits.icmp6)] {
        let is_icmp = b.block("icmp");
        let next = b.block("not_icmp");
        let family = b.get(family);
        check(b.and(b.eq(proto, b.c64(number)), family), 8, is_icmp, next);
        b.at(is_icmp);
        b.set(ok, t);
        b.set(h.icmp_type, b.load_be(q, 0, 1));
        b.set(h.icmp_code, b.load_be(q, 1, 1));
        b.set(h.icmp_id, b.load_be(q, 4, 2));
        b.br(exit);
        b.at(next);
    }
    b.br(done);
    b.at(done);
    b.keep_block();
    b.br(exits.other);

}


/// A MAC address as the integer whose low 6 bytes, big-endian, are the address.
fn load_mac<'ctx>(b: &Bpf<'_, 'ctx>, p: PointerValue<'ctx>, off: u64) -> IntValue<'ctx> {
    let hi = b.load_be(p, off, 2);
    let lo = b.load_be(p, off + 2, 4);
    b.or(b.shl(hi, b.c64(32)), lo)
}

impl<'ctx> Bpf<'_, 'ctx> {
    /// `data_end - data` as an offset.
    fn pkt_len_linear(&self, data: PointerValue<'ctx>, end: PointerValue<'ctx>) -> IntValue<'ctx> {
        let d = self.b.build_ptr_to_int(data, self.i64(), "d").expect("builder positioned");
        let e = self.b.build_ptr_to_int(end, self.i64(), "e").expect("builder positioned");
        self.sub(e, d)
    }
}
