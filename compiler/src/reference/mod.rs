//! The reference semantics: a checked policy evaluated on a packet's bytes
//! in plain Rust, written from docs/language.md and sharing nothing with
//! codegen but the IR. Tests run every compiled program against it.

use crate::check::eval_arith;
use crate::check::fields::Field;
use crate::ir::{self, CmpOp, ConstSet, ExprKind, MapOp, SetRef, StmtKind, Value};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use xpol_lang::ast::{Hook, Verdict};

pub use crate::ir::Outcome;
pub use lb::Balanced;
pub use log::Logged;

pub mod conntrack;
pub mod dynset;
mod lb;
mod limit;
mod log;
mod synproxy;

/// The result of one packet: the outcome and the rules that fired, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    pub outcome: Outcome,
    pub fired: Vec<u32>,
    /// The rule whose statements gave the verdict; `None`: the default.
    pub decided_by: Option<u32>,
    /// Where `lb` sent the packet (outcome `Lb`, or `Drop` without a backend).
    pub lb: Option<Balanced>,
    /// On `tc:egress` with `nat` pools: the reply translated back, when it
    /// was one (what the rules then saw, and what leaves).
    pub translated: Option<Vec<u8>>,
    /// The records the `log` statements wrote, in order.
    pub logs: Vec<Logged>,
}

/// A map key component as the reference stores it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyPart {
    Int(u64),
    Ip(IpAddr),
    Bool(bool),
}

/// The parsed facts of a packet: `None` is an absent field.
#[derive(Clone, Debug, Default)]
pub(crate) struct Facts {
    pub(crate) len: u64,
    pub(crate) eth: Option<(u64, u64, u64)>,
    pub(crate) vlan_depth: u64,
    pub(crate) vlan1: Option<u64>,
    pub(crate) vlan2: Option<u64>,
    pub(crate) ip: Option<IpFacts>,
    pub(crate) l4: Option<L4Facts>,
    /// Where the L4 header starts in the frame, when there is one.
    pub(crate) l4_off: Option<usize>,
}

#[derive(Clone, Debug)]
pub(crate) struct IpFacts {
    pub(crate) v6: bool,
    pub(crate) src: IpAddr,
    pub(crate) dst: IpAddr,
    pub(crate) ttl: u64,
    pub(crate) len: u64,
    pub(crate) tos: u64,
    /// (proto, frag, frag_off) when the upper layer is known.
    pub(crate) proto: Option<(u64, bool, u64)>,
    pub(crate) ihl: u64,
    pub(crate) id: u64,
    pub(crate) df: bool,
    pub(crate) nexthdr: u64,
    pub(crate) flow: u64,
}

#[derive(Clone, Debug)]
pub(crate) enum L4Facts {
    Tcp { sport: u64, dport: u64, flags: u64, window: u64 },
    Udp { sport: u64, dport: u64, len: u64 },
    Icmp { v6: bool, ty: u64, code: u64 },
}

fn be(p: &[u8], off: usize, n: usize) -> Option<u64> {
    p.get(off..off + n).map(|b| b.iter().fold(0u64, |a, &x| (a << 8) | x as u64))
}

/// Parses like the language says: docs/language.md, "Parsing".
pub(crate) fn parse(p: &[u8]) -> Facts {
    let mut f = Facts { len: p.len() as u64, ..Facts::default() };
    if p.len() < 14 {
        return f;
    }
    let mut etype = be(p, 12, 2).unwrap_or(0);
    let mut off = 14;
    let mut depth = 0u64;
    let is_tag = |t: u64| t == 0x8100 || t == 0x88a8;
    while is_tag(etype) {
        if depth == 2 {
            depth = 3;
            break;
        }
        let Some(tci) = be(p, off, 2).filter(|_| p.len() >= off + 4) else {
            f.eth = Some((be(p, 6, 6).unwrap_or(0), be(p, 0, 6).unwrap_or(0), etype));
            f.vlan_depth = depth;
            return f;
        };
        if depth == 0 { f.vlan1 = Some(tci) } else { f.vlan2 = Some(tci) }
        depth += 1;
        etype = be(p, off + 2, 2).unwrap_or(0);
        off += 4;
    }
    f.eth = Some((be(p, 6, 6).unwrap_or(0), be(p, 0, 6).unwrap_or(0), etype));
    f.vlan_depth = depth;
    if depth == 3 {
        return f;
    }
    let (ip, l4_at) = match etype {
        0x0800 => match ipv4(p, off) {
            Some(x) => x,
            None => return f,
        },
        0x86dd => match ipv6(p, off) {
            Some(x) => x,
            None => return f,
        },
        _ => return f,
    };
    if let (Some((proto, _, 0)), Some((l4off, ip_end))) = (ip.proto, l4_at) {
        let whole = |n: usize| l4off + n <= p.len() && l4off + n <= ip_end;
        f.l4 = match proto {
            6 if whole(20) && be(p, l4off + 12, 1).unwrap_or(0) >> 4 >= 5 => Some(L4Facts::Tcp {
                sport: be(p, l4off, 2).unwrap_or(0),
                dport: be(p, l4off + 2, 2).unwrap_or(0),
                flags: be(p, l4off + 13, 1).unwrap_or(0),
                window: be(p, l4off + 14, 2).unwrap_or(0),
            }),
            17 if whole(8) => Some(L4Facts::Udp { sport: be(p, l4off, 2).unwrap_or(0), dport: be(p, l4off + 2, 2).unwrap_or(0), len: be(p, l4off + 4, 2).unwrap_or(0) }),
            1 if !ip.v6 && whole(8) => Some(L4Facts::Icmp { v6: false, ty: be(p, l4off, 1).unwrap_or(0), code: be(p, l4off + 1, 1).unwrap_or(0) }),
            58 if ip.v6 && whole(8) => Some(L4Facts::Icmp { v6: true, ty: be(p, l4off, 1).unwrap_or(0), code: be(p, l4off + 1, 1).unwrap_or(0) }),
            _ => None,
        };
        f.l4_off = f.l4.as_ref().map(|_| l4off);
    }
    f.ip = Some(ip);
    f
}

/// An IPv4 header at `off`: the facts, and (L4 offset, datagram end).
fn ipv4(p: &[u8], off: usize) -> Option<(IpFacts, Option<(usize, usize)>)> {
    if p.len() < off + 20 {
        return None;
    }
    let vihl = p[off] as u64;
    let ihl = vihl & 15;
    let hlen = (ihl * 4) as usize;
    let total = be(p, off + 2, 2)?;
    if vihl >> 4 != 4 || ihl < 5 || (total as usize) < hlen || p.len() < off + hlen {
        return None;
    }
    let fragw = be(p, off + 6, 2)?;
    let frag_off = (fragw & 0x1fff) * 8;
    let frag = fragw & 0x2000 != 0 || frag_off != 0;
    let proto = be(p, off + 9, 1)?;
    let a = |o: usize| IpAddr::V4(Ipv4Addr::new(p[o], p[o + 1], p[o + 2], p[o + 3]));
    let facts = IpFacts {
        v6: false,
        src: a(off + 12),
        dst: a(off + 16),
        ttl: be(p, off + 8, 1)?,
        len: total,
        tos: be(p, off + 1, 1)?,
        proto: Some((proto, frag, frag_off)),
        ihl,
        id: be(p, off + 4, 2)?,
        df: fragw & 0x4000 != 0,
        nexthdr: 0,
        flow: 0,
    };
    Some((facts, Some((off + hlen, off + total as usize))))
}

/// An IPv6 header at `off` and its extension-header chain.
fn ipv6(p: &[u8], off: usize) -> Option<(IpFacts, Option<(usize, usize)>)> {
    if p.len() < off + 40 || p[off] >> 4 != 6 {
        return None;
    }
    let w0 = be(p, off, 4)?;
    let plen = be(p, off + 4, 2)? as usize;
    let ip_end = if plen == 0 { p.len() } else { off + 40 + plen };
    let a = |o: usize| {
        let b: [u8; 16] = p[o..o + 16].try_into().expect("16 bytes");
        IpAddr::V6(Ipv6Addr::from(b))
    };
    let nh0 = be(p, off + 6, 1)?;
    let mut facts = IpFacts {
        v6: true,
        src: a(off + 8),
        dst: a(off + 24),
        ttl: be(p, off + 7, 1)?,
        len: plen as u64 + 40,
        tos: (w0 >> 20) & 0xff,
        proto: None,
        ihl: 0,
        id: 0,
        df: false,
        nexthdr: nh0,
        flow: w0 & 0xfffff,
    };
    let (mut nh, mut x) = (nh0, off + 40);
    let (mut frag, mut frag_off) = (false, 0);
    for i in 0..=crate::ir::MAX_IPV6_EXT {
        let is_ext = matches!(nh, 0 | 43 | 60 | 44 | 51);
        if !is_ext {
            facts.proto = Some((nh, frag, frag_off));
            return Some((facts, Some((x, ip_end))));
        }
        if i == crate::ir::MAX_IPV6_EXT || p.len() < x + 8 {
            return Some((facts, None));
        }
        let len = match nh {
            44 => {
                frag = true;
                frag_off = be(p, x + 2, 2)? & 0xfff8;
                8
            }
            51 => (p[x + 1] as usize + 2) * 4,
            _ => (p[x + 1] as usize + 1) * 8,
        };
        nh = p[x] as u64;
        x += len;
        if x > 1024 || x > ip_end {
            return Some((facts, None));
        }
    }
    Some((facts, None))
}

/// Three-valued results: `None` is unknown (or an absent value).
#[derive(Clone, Debug, PartialEq)]
enum V {
    Int(u64),
    Bool(bool),
    Ip(IpAddr),
}

/// A policy's state between packets: its `@maps`, and per map the
/// updates lost because it was full.
#[derive(Clone, Debug, Default)]
pub struct State {
    pub maps: HashMap<(usize, Vec<KeyPart>), u64>,
    pub lost: HashMap<usize, u64>,
    /// Each pool's Maglev table, built when a packet first needs it.
    pub lb_tables: HashMap<ir::PoolId, Vec<u32>>,
    /// `nat`'s reverse translations: a reply's 5-tuple -> the VIP and port.
    pub nat: HashMap<(ir::PoolId, lb::NatKey), (IpAddr, u16)>,
    /// The clock `limit` reads, in nanoseconds: moved on by `after D` in
    /// tests (and by the caller), never by evaluating.
    pub clock_ns: u64,
    /// The buckets of each `limit` by key (none for an unkeyed one). Kept
    /// for every key: the kernel's LRU map forgets keys past its size,
    /// which tests stay under.
    pub limits: HashMap<(ir::LimitId, Vec<KeyPart>), limit::Bucket>,
    /// The connection table (`ct.state`), entries expired or not.
    pub conntrack: HashMap<conntrack::Key, conntrack::Entry>,
    /// The elements of the dynamic sets, with the time each one's is up
    /// (`dynset::FOREVER`: never); expired ones count as absent. Kept for
    /// every key: the kernel's LRU map evicts past its size, which tests
    /// stay under.
    pub dynsets: HashMap<(ir::DynSetId, KeyPart), u64>,
}

impl State {
    /// Moves the clock on (`after D` in a test).
    pub fn advance(&mut self, ns: u64) {
        self.clock_ns = self.clock_ns.saturating_add(ns);
    }

    /// The credit (nanoseconds) the bucket of `key` of limit `id` holds
    /// now, and what a full one holds; `None` for a bucket no packet made.
    pub fn limit_credit(&self, policy: &ir::Policy, id: ir::LimitId, key: &[KeyPart]) -> Option<(u64, u64)> {
        limit::credit(policy, id, key, self)
    }
}

struct Eval<'a> {
    policy: &'a ir::Policy,
    facts: Facts,
    packet: &'a [u8],
    /// Set by `lb`: where it sent the packet (`Some(None)`: not IP).
    lb: Option<Option<Balanced>>,
    locals: HashMap<ir::LocalId, Option<V>>,
    state: &'a mut State,
    /// `ct.state` of the packet (absent: `None`).
    ct: Option<ir::CtState>,
    hook: Hook,
    /// What the `log` statements wrote so far.
    logs: Vec<Logged>,
}

/// Evaluates the program of `hook` on `packet`. Redirect targets count as
/// unresolved (as in tests), so `redirect` aborts (XDP) or drops (TC).
pub fn evaluate(policy: &ir::Policy, hook: Hook, packet: &[u8], state: &mut State) -> Evaluation {
    let translated = if hook == Hook::TcEgress && !policy.nat_pools.is_empty() { lb::reverse_nat(policy, packet, state) } else { None };
    let packet = translated.as_deref().unwrap_or(packet);
    let mut evaluation = evaluate_rules(policy, hook, packet, state);
    evaluation.translated = translated;
    evaluation
}

fn evaluate_rules(policy: &ir::Policy, hook: Hook, packet: &[u8], state: &mut State) -> Evaluation {
    let facts = parse(packet);
    // The rules cannot change the table: what it says of the packet is
    // decided before them, and written after them if the packet passes.
    let ct = conntrack::classify(policy, &facts, packet, state);
    let records = policy.conntrack.as_ref().is_some_and(|c| c.trackers.contains(&hook));
    let mut evaluation = evaluate_probes(policy, hook, packet, facts, ct.state, state);
    if records && evaluation.outcome == Outcome::Pass {
        conntrack::commit(&ct, state);
    }
    evaluation.translated = None;
    evaluation
}

fn evaluate_probes(policy: &ir::Policy, hook: Hook, packet: &[u8], facts: Facts, ct: Option<ir::CtState>, state: &mut State) -> Evaluation {
    let mut e = Eval { policy, facts, packet, locals: HashMap::new(), state, lb: None, ct, hook, logs: Vec::new() };
    let mut fired = Vec::new();
    let tc = hook != Hook::Xdp;
    let outcome_of = |v: Verdict| match (v, tc) {
        (Verdict::Pass, _) => Outcome::Pass,
        (Verdict::Drop, _) | (Verdict::Abort | Verdict::Tx, true) => Outcome::Drop,
        (Verdict::Tx, false) => Outcome::Tx,
        (Verdict::Abort, false) => Outcome::Abort,
    };
    let Some(prog) = policy.programs.iter().find(|p| p.hook == hook) else {
        return Evaluation { outcome: Outcome::Pass, fired, decided_by: None, lb: None, translated: None, logs: Vec::new() };
    };
    for probe in &prog.probes {
        let holds = probe.predicate.as_ref().is_none_or(|p| e.holds(p));
        if !holds {
            continue;
        }
        fired.push(probe.rule);
        if let Some(v) = e.stmts(&probe.body) {
            let outcome = match (&e.lb, v) {
                (Some(Some(b)), _) if b.backend.is_some() => Outcome::Lb,
                (Some(Some(_)), _) => Outcome::Drop,
                // `lb` on a packet that is not IP.
                (Some(None), _) => Outcome::Pass,
                (None, v) => v.map(outcome_of).unwrap_or(if tc { Outcome::Drop } else { Outcome::Abort }),
            };
            let lb = e.lb.take().flatten();
            return Evaluation { outcome, fired, decided_by: Some(probe.rule), lb, translated: None, logs: e.logs };
        }
    }
    Evaluation { outcome: Outcome::Pass, fired, decided_by: None, lb: None, translated: None, logs: e.logs }
}

impl Eval<'_> {
    /// `Some(Some(v))`: verdict v; `Some(None)`: an unresolved redirect.
    fn stmts(&mut self, stmts: &[ir::Stmt]) -> Option<Option<Verdict>> {
        for s in stmts {
            match &s.kind {
                StmtKind::Verdict(v) => return Some(Some(*v)),
                StmtKind::Redirect(_) => return Some(None),
                StmtKind::Lb(balance) => {
                    self.lb = Some(lb::balance(self.policy, balance, &self.facts, self.packet, self.state));
                    return Some(None);
                }
                StmtKind::If { cond, then_body, else_body } => {
                    let body = if self.holds(cond) { then_body } else { else_body };
                    if let Some(v) = self.stmts(body) {
                        return Some(v);
                    }
                }
                StmtKind::Let { local, value } => {
                    let v = self.expr(value);
                    self.locals.insert(*local, v);
                }
                StmtKind::Synproxy(_) => return Some(Some(synproxy::verdict(&self.facts, self.packet))),
                StmtKind::Log(id) => {
                    if let Some(logged) = log::write(self.policy, *id, self.hook, self.packet, self.facts.len, self.state) {
                        self.logs.push(logged);
                    }
                }
                StmtKind::SetWrite { set, key, op } => {
                    if let Some(key) = self.key(std::slice::from_ref(key)).and_then(|mut k| k.pop()) {
                        dynset::write(*set, key, *op, self.state);
                    }
                }
                StmtKind::MapUpdate { map, keys, op } => {
                    let amount = match op {
                        MapOp::Count => Some(1),
                        MapOp::Sum(e) | MapOp::Assign(e) => self.int(e),
                    };
                    let (Some(key), Some(amount)) = (self.key(keys), amount) else { continue };
                    // A map holds at most `entries()` keys: an update that
                    // would add one more is lost, and counted.
                    let key = (*map, key);
                    if !self.state.maps.contains_key(&key) {
                        let held = self.state.maps.keys().filter(|(m, _)| m == map).count();
                        if held >= self.policy.maps[*map].entries() as usize {
                            *self.state.lost.entry(*map).or_insert(0) += 1;
                            continue;
                        }
                    }
                    let slot = self.state.maps.entry(key).or_insert(0);
                    *slot = match op {
                        MapOp::Assign(_) => amount,
                        _ => slot.wrapping_add(amount),
                    };
                }
            }
        }
        None
    }

    /// Whether a predicate or `if` condition holds (is true).
    fn holds(&mut self, e: &ir::Expr) -> bool {
        self.decide(e, true) == Some(true)
    }

    /// A condition's value, evaluated left to right and only as far as
    /// deciding whether it holds needs (docs/language.md, "Rate limits":
    /// a `limit` not reached takes no token). `positive`: an unknown value
    /// here counts as false for the outcome (so `a && b` need not look at
    /// `b` when `a` is unknown); under a `!` it counts as true.
    fn decide(&mut self, e: &ir::Expr, positive: bool) -> Option<bool> {
        match &e.kind {
            ExprKind::Not(a) => self.decide(a, !positive).map(|b| !b),
            ExprKind::And(a, b) => match self.decide(a, positive) {
                Some(false) => Some(false),
                None if positive => None,
                x => match (x, self.decide(b, positive)) {
                    (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                },
            },
            ExprKind::Or(a, b) => match self.decide(a, positive) {
                Some(true) => Some(true),
                None if !positive => None,
                x => match (x, self.decide(b, positive)) {
                    (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                },
            },
            ExprKind::Limit { limit, keys } => {
                let key = self.key(keys)?;
                Some(limit::take(self.policy, *limit, key, self.facts.len, self.state))
            }
            _ => self.expr(e).and_then(as_bool),
        }
    }

    fn key(&mut self, keys: &[ir::Expr]) -> Option<Vec<KeyPart>> {
        keys.iter()
            .map(|k| match self.expr(k)? {
                V::Int(i) => Some(KeyPart::Int(i)),
                V::Bool(b) => Some(KeyPart::Bool(b)),
                V::Ip(a) => Some(KeyPart::Ip(a)),
            })
            .collect()
    }

    fn int(&mut self, e: &ir::Expr) -> Option<u64> {
        match self.expr(e)? {
            V::Int(i) => Some(i),
            _ => None,
        }
    }

    fn field(&self, f: Field) -> Option<V> {
        let fa = &self.facts;
        let ip = fa.ip.as_ref();
        let v4 = ip.filter(|i| !i.v6);
        let v6 = ip.filter(|i| i.v6);
        let int = |x: Option<u64>| x.map(V::Int);
        let tcp = match &fa.l4 {
            Some(L4Facts::Tcp { sport, dport, flags, window }) => Some((*sport, *dport, *flags, *window)),
            _ => None,
        };
        let udp = match &fa.l4 {
            Some(L4Facts::Udp { sport, dport, len }) => Some((*sport, *dport, *len)),
            _ => None,
        };
        let icmp = |want6: bool| match &fa.l4 {
            Some(L4Facts::Icmp { v6, ty, code }) if *v6 == want6 => Some((*ty, *code)),
            _ => None,
        };
        let flag = |bit: u64| tcp.map(|t| V::Bool(t.2 & bit != 0));
        match f {
            Field::PktLen => Some(V::Int(fa.len)),
            Field::EthSrc => int(fa.eth.map(|e| e.0)),
            Field::EthDst => int(fa.eth.map(|e| e.1)),
            Field::EthType => int(fa.eth.map(|e| e.2)),
            Field::VlanDepth => int(fa.eth.map(|_| fa.vlan_depth)),
            Field::VlanId => int(fa.vlan1.map(|t| t & 0xfff)),
            Field::VlanPcp => int(fa.vlan1.map(|t| t >> 13)),
            Field::VlanInnerId => int(fa.vlan2.map(|t| t & 0xfff)),
            Field::VlanInnerPcp => int(fa.vlan2.map(|t| t >> 13)),
            Field::IpVersion => int(ip.map(|i| if i.v6 { 6 } else { 4 })),
            Field::IpSrc => ip.map(|i| V::Ip(i.src)),
            Field::IpDst => ip.map(|i| V::Ip(i.dst)),
            Field::IpProto => int(ip.and_then(|i| i.proto).map(|p| p.0)),
            Field::IpTtl => int(ip.map(|i| i.ttl)),
            Field::IpLen => int(ip.map(|i| i.len)),
            Field::IpDscp => int(ip.map(|i| i.tos >> 2)),
            Field::IpEcn => int(ip.map(|i| i.tos & 3)),
            Field::IpFrag => ip.and_then(|i| i.proto).map(|p| V::Bool(p.1)),
            Field::IpFragFirst => ip.and_then(|i| i.proto).map(|p| V::Bool(p.1 && p.2 == 0)),
            Field::IpFragOff => int(ip.and_then(|i| i.proto).map(|p| p.2)),
            Field::Ip4Src => v4.map(|i| V::Ip(i.src)),
            Field::Ip4Dst => v4.map(|i| V::Ip(i.dst)),
            Field::Ip4Ihl => int(v4.map(|i| i.ihl)),
            Field::Ip4Id => int(v4.map(|i| i.id)),
            Field::Ip4Df => v4.map(|i| V::Bool(i.df)),
            Field::Ip6Src => v6.map(|i| V::Ip(i.src)),
            Field::Ip6Dst => v6.map(|i| V::Ip(i.dst)),
            Field::Ip6NextHdr => int(v6.map(|i| i.nexthdr)),
            Field::Ip6HopLimit => int(v6.map(|i| i.ttl)),
            Field::Ip6FlowLabel => int(v6.map(|i| i.flow)),
            Field::TcpSport => int(tcp.map(|t| t.0)),
            Field::TcpDport => int(tcp.map(|t| t.1)),
            Field::TcpFlags => int(tcp.map(|t| t.2)),
            Field::TcpFin => flag(0x01),
            Field::TcpSyn => flag(0x02),
            Field::TcpRst => flag(0x04),
            Field::TcpPsh => flag(0x08),
            Field::TcpAck => flag(0x10),
            Field::TcpUrg => flag(0x20),
            Field::TcpEce => flag(0x40),
            Field::TcpCwr => flag(0x80),
            Field::TcpWindow => int(tcp.map(|t| t.3)),
            Field::UdpSport => int(udp.map(|u| u.0)),
            Field::UdpDport => int(udp.map(|u| u.1)),
            Field::UdpLen => int(udp.map(|u| u.2)),
            Field::L4Sport => int(tcp.map(|t| t.0).or(udp.map(|u| u.0))),
            Field::L4Dport => int(tcp.map(|t| t.1).or(udp.map(|u| u.1))),
            Field::IcmpType => int(icmp(false).map(|i| i.0)),
            Field::IcmpCode => int(icmp(false).map(|i| i.1)),
            Field::Icmp6Type => int(icmp(true).map(|i| i.0)),
            Field::Icmp6Code => int(icmp(true).map(|i| i.1)),
            Field::CtState => int(self.ct.map(|s| s.number())),
        }
    }

    fn expr(&mut self, e: &ir::Expr) -> Option<V> {
        match &e.kind {
            ExprKind::Const(v) => Some(match v {
                Value::Int(i) | Value::Mac(i) => V::Int(*i),
                Value::Bool(b) => V::Bool(*b),
                Value::Ip(a) => V::Ip(*a),
            }),
            ExprKind::Field(f) => self.field(*f),
            ExprKind::Local(l) => self.locals.get(l).cloned().flatten(),
            ExprKind::MapRead { map, keys } => {
                let key = self.key(keys)?;
                Some(V::Int(self.state.maps.get(&(*map, key)).copied().unwrap_or(0)))
            }
            ExprKind::Neg(a) => self.int(a).map(|x| V::Int(x.wrapping_neg())),
            ExprKind::BitNot(a) => self.int(a).map(|x| V::Int(!x)),
            ExprKind::Arith(op, a, b) => {
                let (x, y) = (self.int(a), self.int(b));
                Some(V::Int(eval_arith(*op, x?, y?)))
            }
            ExprKind::Cmp(op, a, b) => {
                let (x, y) = (self.expr(a), self.expr(b));
                let (x, y) = (x?, y?);
                Some(V::Bool(match (op, &x, &y) {
                    (CmpOp::Eq, _, _) => x == y,
                    (CmpOp::Ne, _, _) => x != y,
                    (op, V::Int(x), V::Int(y)) => match op {
                        CmpOp::Lt => x < y,
                        CmpOp::Le => x <= y,
                        CmpOp::Gt => x > y,
                        _ => x >= y,
                    },
                    _ => return None,
                }))
            }
            ExprKind::In(a, set) => {
                let v = self.expr(a)?;
                let contents: &ConstSet = match set {
                    SetRef::Inline(s) => s,
                    SetRef::Named(id) => &self.policy.sets[*id].contents,
                    SetRef::Dynamic(id) => {
                        let key = match v {
                            V::Int(i) => KeyPart::Int(i),
                            V::Ip(a) => KeyPart::Ip(a),
                            V::Bool(b) => KeyPart::Bool(b),
                        };
                        return Some(V::Bool(dynset::contains(*id, &key, self.state)));
                    }
                };
                Some(V::Bool(member(&v, contents)))
            }
            ExprKind::Not(a) => match self.expr(a)? {
                V::Bool(b) => Some(V::Bool(!b)),
                _ => None,
            },
            // Only in conditions (checked), where `decide` takes them.
            ExprKind::Limit { .. } => self.decide(e, true).map(V::Bool),
            ExprKind::And(a, b) | ExprKind::Or(a, b) => {
                let and = matches!(e.kind, ExprKind::And(..));
                let (x, y) = (self.expr(a), self.expr(b));
                let (x, y) = (x.and_then(as_bool), y.and_then(as_bool));
                // Kleene logic.
                if and {
                    match (x, y) {
                        (Some(false), _) | (_, Some(false)) => Some(V::Bool(false)),
                        (Some(true), Some(true)) => Some(V::Bool(true)),
                        _ => None,
                    }
                } else {
                    match (x, y) {
                        (Some(true), _) | (_, Some(true)) => Some(V::Bool(true)),
                        (Some(false), Some(false)) => Some(V::Bool(false)),
                        _ => None,
                    }
                }
            }
        }
    }
}

fn as_bool(v: V) -> Option<bool> {
    match v {
        V::Bool(b) => Some(b),
        _ => None,
    }
}

fn member(v: &V, s: &ConstSet) -> bool {
    match v {
        V::Int(x) => s.ints.iter().any(|&(lo, hi)| lo <= *x && *x <= hi) || s.macs.contains(x),
        V::Ip(IpAddr::V4(a)) => s.v4.iter().any(|(net, len)| {
            let m = if *len == 0 { 0 } else { u32::MAX << (32 - *len as u32) };
            u32::from(*a) & m == u32::from(*net) & m
        }),
        V::Ip(IpAddr::V6(a)) => s.v6.iter().any(|(net, len)| {
            let m = if *len == 0 { 0 } else { u128::MAX << (128 - *len as u32) };
            u128::from(*a) & m == u128::from(*net) & m
        }),
        V::Bool(_) => false,
    }
}
