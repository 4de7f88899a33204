//! Long runs of header rules compiled into a decision tree (issue 17,
//! "thousands of rules at the cost of ten").
//!
//! A run of at least [`MIN_RULES`] consecutive rules whose predicates only
//! test header fields against constants (`ip4.src in 10.0.0.0/8 &&
//! tcp.dport in 1024..65535`, the shape of firewall rule sets) and whose
//! body is only a verdict is not lowered rule after rule: codegen walks a
//! tree in read-only global data instead (`codegen/classify.rs`), whose
//! leaves list the few rules a packet can match, in priority order. The
//! cost is the tree's depth plus one short leaf, whatever the rule count,
//! and the code is the same few hundred instructions for 100 rules or
//! 10,000, so the verifier's work does not grow with the rules either.
//!
//! **Values.** Each tested field is a *dimension*. A packet's value in a
//! dimension is its *extended value*: 0 when the packet does not carry the
//! field, else the field's value plus one (booleans: 1 false, 2 true; `ip.src`
//! of an IPv6 packet, tested against IPv4 constants only: 2^32 + 1). The
//! language's three-valued logic then needs nothing of its own: a test of a
//! field holds only for present values, so no rule's interval contains 0
//! unless the rule does not test the field at all.
//!
//! **Rules.** A predicate becomes a box, one set of extended values per
//! dimension ([`rule_box`]): `&&` intersects, `||` and `!` stay within one
//! field (`!` is the complement among present values, as `!` of an unknown
//! is unknown). A set of several intervals splits the rule into sub-rules
//! with one interval per dimension, all with the rule's number, so first
//! match is unchanged.
//!
//! **Tree.** HiCuts (Gupta and McKeown, "Packet classification using
//! hierarchical intelligent cuttings", Hot Interconnects 1999): a node cuts
//! its box in one dimension into 2^k equal parts, on bit boundaries, so a
//! child is `(value >> shift) & mask` with no subtraction; the dimension
//! and the number of cuts are chosen to make the largest child smallest
//! within a space budget ([`SPACE_FACTOR`]). A node whose rules number at
//! most [`LEAF_RULES`] is a leaf; the rules after one that covers a node's
//! whole box never match there and are dropped.

use crate::check::fields::Field;
use crate::ir::{self, CmpOp, ExprKind, SetRef, StmtKind, Type, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use xpol_lang::ast::Verdict;

/// Runs shorter than this stay rule after rule (fewer instructions than a
/// walk for the common packet).
pub const MIN_RULES: usize = 32;
/// Dimensions one tree may test (the walk reads a packet's values by index
/// from an array of this many).
pub const MAX_DIMS: usize = 8;
/// Rules a leaf may hold before a node is cut.
pub const LEAF_RULES: usize = 8;
/// Sub-rules one rule may split into (the product of its sets' intervals).
pub const MAX_SUBRULES: usize = 64;
/// HiCuts' space measure: a cut into `n` children whose lists hold `s`
/// rules in all is allowed while `s + n <= SPACE_FACTOR * rules`.
pub const SPACE_FACTOR: usize = 4;
/// Levels below the root a walk may take (the walk is unrolled this far at
/// most).
pub const MAX_DEPTH: usize = 24;
/// Bits one cut may take (at most 2^8 children).
pub const MAX_CUT_BITS: u32 = 8;
/// A tree is refused past this many bytes (then the rules stay rule after
/// rule): global data is one array map value, and the kernel allocates it
/// in one piece.
pub const MAX_TREE_BYTES: usize = 3 << 20;
/// All of a policy's trees take at most this many bytes (a tree past it
/// leaves its rules rule after rule).
pub const MAX_TREES_BYTES: usize = 16 << 20;
/// A leaf holds at most this many rules: a walk scans a leaf unrolled.
pub const MAX_LEAF: usize = 64;

/// A header field as the classifier reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dim {
    pub field: Field,
    pub kind: DimKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DimKind {
    /// An integer or MAC field: value + 1.
    Int,
    /// A boolean field: 1 false, 2 true.
    Bool,
    /// An address field tested against IPv4 constants only: the IPv4
    /// address + 1; `ip.src`/`ip.dst` of an IPv6 packet is [`V6_POINT`].
    Ip4,
    /// The TCP and UDP ports of one side (`tcp.dport`, `udp.dport` and
    /// `l4.dport` share a dimension, named by the `l4` field): a TCP port
    /// + 1, a UDP port + [`UDP_PORTS`] + 1. A packet carries at most one of
    /// the two, so rule sets that test both protocols' ports (firewall
    /// rules) need one dimension per side, not two.
    Port,
}

/// Where the UDP ports start in a [`DimKind::Port`] dimension.
pub const UDP_PORTS: u64 = 1 << 16;

/// The extended value of an IPv6 packet's `ip.src`/`ip.dst` in an
/// [`DimKind::Ip4`] dimension: present, and in no IPv4 set.
pub const V6_POINT: u64 = (1 << 32) + 1;

impl Dim {
    /// The largest extended value.
    pub fn max_value(self) -> u64 {
        match self.kind {
            DimKind::Bool => 2,
            DimKind::Ip4 => V6_POINT,
            DimKind::Port => 2 * UDP_PORTS,
            DimKind::Int if self.field.ty() == Type::Mac => 1 << 48,
            DimKind::Int => self.field.values().and_then(|v| v.last()).map_or(u64::from(u32::MAX), |&(_, hi)| hi) + 1,
        }
    }

    /// Bits that hold every extended value.
    pub fn bits(self) -> u32 {
        64 - self.max_value().leading_zeros()
    }

    /// The extended values of a present field.
    fn present(self) -> Intervals {
        self.present_of(self.field)
    }

    /// The extended values of `field` (one of this dimension's) when the
    /// packet carries it.
    fn present_of(self, field: Field) -> Intervals {
        match self.kind {
            DimKind::Port => match field {
                Field::TcpSport | Field::TcpDport => Intervals(vec![(1, UDP_PORTS)]),
                Field::UdpSport | Field::UdpDport => Intervals(vec![(UDP_PORTS + 1, 2 * UDP_PORTS)]),
                _ => Intervals(vec![(1, 2 * UDP_PORTS)]),
            },
            // `ip4.src` is absent from IPv6 packets; `ip.src` is present.
            DimKind::Ip4 if self.field.is_v4_only() => Intervals(vec![(1, 1 << 32)]),
            _ => Intervals(vec![(1, self.max_value())]),
        }
    }
}

/// Sorted, disjoint, inclusive intervals of extended values.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Intervals(pub Vec<(u64, u64)>);

impl Intervals {
    fn from_unsorted(mut v: Vec<(u64, u64)>) -> Intervals {
        v.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (lo, hi) in v {
            match out.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        Intervals(out)
    }

    fn intersect(&self, other: &Intervals) -> Intervals {
        let mut out = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < self.0.len() && j < other.0.len() {
            let (a, b) = (self.0[i], other.0[j]);
            let (lo, hi) = (a.0.max(b.0), a.1.min(b.1));
            if lo <= hi {
                out.push((lo, hi));
            }
            if a.1 < b.1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        Intervals(out)
    }

    fn union(&self, other: &Intervals) -> Intervals {
        Intervals::from_unsorted(self.0.iter().chain(&other.0).copied().collect())
    }

    /// The values of `within` not in `self`.
    fn complement_within(&self, within: &Intervals) -> Intervals {
        let mut out = Vec::new();
        for &(lo, hi) in &within.0 {
            // The next value not yet covered, if any is left.
            let mut at = Some(lo);
            for &(a, b) in &self.0 {
                let Some(s) = at else { break };
                if b < s || a > hi {
                    continue;
                }
                if a > s {
                    out.push((s, a - 1));
                }
                at = if b >= hi { None } else { Some(b + 1) };
            }
            if let Some(s) = at {
                out.push((s, hi));
            }
        }
        Intervals::from_unsorted(out)
    }
}

/// What a predicate requires: per dimension, the extended values it holds
/// for (a dimension not named: any, absent included).
pub type RuleBox = BTreeMap<Dim, Intervals>;

/// The box of a predicate, or `None` when it is not only tests of header
/// fields against constants in the shapes the classifier takes.
pub fn rule_box(e: &ir::Expr) -> Option<RuleBox> {
    match &e.kind {
        ExprKind::Const(Value::Bool(true)) => Some(RuleBox::new()),
        // A rule that never matches (the checker folds contradictions):
        // no value in some dimension.
        ExprKind::Const(Value::Bool(false)) => Some(RuleBox::from([(Dim { field: Field::IpVersion, kind: DimKind::Int }, Intervals::default())])),
        ExprKind::And(a, b) => {
            let (mut x, y) = (rule_box(a)?, rule_box(b)?);
            for (d, s) in y {
                let merged = match x.get(&d) {
                    Some(t) => t.intersect(&s),
                    None => s,
                };
                x.insert(d, merged);
            }
            Some(x)
        }
        _ => {
            let (d, s, _) = atom(e)?;
            Some(RuleBox::from([(d, s)]))
        }
    }
}

/// A test of one field: its dimension, the extended values it holds for,
/// and the values the field has when present (its universe: `!` is the
/// complement there, since `!` of unknown is unknown). `||` joins tests
/// with the same universe only: `!(tcp.dport == 80 || udp.dport == 53)` is
/// unknown, not true, for TCP to port 22.
fn atom(e: &ir::Expr) -> Option<(Dim, Intervals, Intervals)> {
    match &e.kind {
        ExprKind::Or(a, b) => {
            let (d, s, u) = atom(a)?;
            let (d2, t, u2) = atom(b)?;
            (d == d2 && u == u2).then(|| (d, s.union(&t), u))
        }
        ExprKind::Not(a) => {
            let (d, s, u) = atom(a)?;
            Some((d, s.complement_within(&u), u))
        }
        ExprKind::Field(f) if f.ty() == Type::Bool => {
            let d = Dim { field: *f, kind: DimKind::Bool };
            Some((d, Intervals(vec![(2, 2)]), d.present()))
        }
        ExprKind::Cmp(op, a, b) => match (&a.kind, &b.kind) {
            (ExprKind::Field(f), ExprKind::Const(c)) => compare(*f, *op, *c),
            (ExprKind::Const(c), ExprKind::Field(f)) => compare(*f, flip(*op), *c),
            _ => None,
        },
        ExprKind::In(a, SetRef::Inline(set)) => {
            let ExprKind::Field(f) = a.kind else { return None };
            let dim = dim_of(f)?;
            let universe = dim.present_of(f);
            let values = match dim.kind {
                DimKind::Int if f.ty() == Type::Mac => Intervals::from_unsorted(set.macs.iter().map(|&m| (m + 1, m + 1)).collect()),
                DimKind::Int => {
                    let max = f.values().and_then(|v| v.last()).map_or(0, |&(_, hi)| hi);
                    Intervals::from_unsorted(set.ints.iter().filter(|r| r.0 <= max).map(|&(lo, hi)| (lo + 1, hi.min(max) + 1)).collect())
                }
                DimKind::Port => {
                    let ports = Intervals::from_unsorted(set.ints.iter().filter(|r| r.0 < UDP_PORTS).map(|&(lo, hi)| (lo, hi.min(UDP_PORTS - 1))).collect());
                    port_values(f, &ports)
                }
                DimKind::Ip4 => {
                    // An IPv6 prefix could match an `ip.src` of IPv6.
                    if !set.v6.is_empty() && !f.is_v4_only() {
                        return None;
                    }
                    Intervals::from_unsorted(
                        set.v4
                            .iter()
                            .map(|&(a, len)| {
                                let lo = u64::from(u32::from(a));
                                let size = 1u64 << (32 - u32::from(len));
                                (lo + 1, lo + size)
                            })
                            .collect(),
                    )
                }
                DimKind::Bool => return None,
            };
            let values = values.intersect(&universe);
            Some((dim, values, universe))
        }
        _ => None,
    }
}

fn flip(op: CmpOp) -> CmpOp {
    match op {
        CmpOp::Lt => CmpOp::Gt,
        CmpOp::Le => CmpOp::Ge,
        CmpOp::Gt => CmpOp::Lt,
        CmpOp::Ge => CmpOp::Le,
        same => same,
    }
}

fn dim_of(f: Field) -> Option<Dim> {
    match f {
        Field::TcpSport | Field::UdpSport | Field::L4Sport => return Some(Dim { field: Field::L4Sport, kind: DimKind::Port }),
        Field::TcpDport | Field::UdpDport | Field::L4Dport => return Some(Dim { field: Field::L4Dport, kind: DimKind::Port }),
        _ => {}
    }
    let kind = match f.ty() {
        Type::Int | Type::Mac => DimKind::Int,
        Type::Bool => DimKind::Bool,
        Type::Ip if f.is_v6_only() => return None,
        Type::Ip => DimKind::Ip4,
    };
    Some(Dim { field: f, kind })
}

fn compare(f: Field, op: CmpOp, c: Value) -> Option<(Dim, Intervals, Intervals)> {
    let dim = dim_of(f)?;
    if dim.kind == DimKind::Port {
        // On the port numbers first, then where this field's ports are.
        let Value::Int(v) = c else { return None };
        let ports = Intervals(vec![(0, UDP_PORTS - 1)]);
        let values = order(op, v, &ports)?;
        return Some((dim, port_values(f, &values), dim.present_of(f)));
    }
    let present = dim.present_of(f);
    let point = match (dim.kind, c) {
        (DimKind::Int, Value::Int(v) | Value::Mac(v)) => v.checked_add(1)?,
        (DimKind::Bool, Value::Bool(v)) => 1 + u64::from(v),
        (DimKind::Ip4, Value::Ip(IpAddr::V4(a))) => u64::from(u32::from(a)) + 1,
        _ => return None,
    };
    let values = match op {
        CmpOp::Eq | CmpOp::Ne => order(op, point, &present)?,
        // Orders only for integers: the checker allows no other.
        _ if dim.kind != DimKind::Int => return None,
        _ => order(op, point, &present)?,
    };
    Some((dim, values, present))
}

/// The values of `universe` that `x OP point` holds for.
fn order(op: CmpOp, point: u64, universe: &Intervals) -> Option<Intervals> {
    let (lo, hi) = (universe.0.first()?.0, universe.0.last()?.1);
    let range = |a: u64, b: u64| if a <= b { Intervals(vec![(a, b)]) } else { Intervals::default() };
    let values = match op {
        CmpOp::Eq => range(point, point),
        CmpOp::Ne => range(point, point).complement_within(universe),
        CmpOp::Lt => range(lo, point.checked_sub(1)?),
        CmpOp::Le => range(lo, point),
        CmpOp::Gt => range(point.saturating_add(1), hi),
        CmpOp::Ge => range(point, hi),
    };
    Some(values.intersect(universe))
}

/// Port numbers as extended values of `field`'s dimension: a TCP field's
/// at +1, a UDP field's at +65,537, an `l4` field's at both.
fn port_values(field: Field, ports: &Intervals) -> Intervals {
    let at: &[u64] = match field {
        Field::TcpSport | Field::TcpDport => &[1],
        Field::UdpSport | Field::UdpDport => &[UDP_PORTS + 1],
        _ => &[1, UDP_PORTS + 1],
    };
    Intervals::from_unsorted(at.iter().flat_map(|&a| ports.0.iter().map(move |&(lo, hi)| (lo + a, hi + a))).collect())
}

/// A rule the classifier takes: its box and verdict.
pub fn classifiable(probe: &ir::Probe) -> Option<(RuleBox, Verdict)> {
    let [ir::Stmt { kind: StmtKind::Verdict(v), .. }] = probe.body.as_slice() else { return None };
    let b = match &probe.predicate {
        Some(p) => rule_box(p)?,
        None => RuleBox::new(),
    };
    let subrules: usize = b.values().map(|s| s.0.len().max(1)).product();
    (subrules <= MAX_SUBRULES).then_some((b, *v))
}

/// Runs of probes to classify: `[start, end)` ranges of at least
/// [`MIN_RULES`] classifiable probes, testing at most [`MAX_DIMS`]
/// dimensions in all, none crossing `split` (where the L4 header is
/// parsed, when a probe after it is the first to read it).
pub fn runs(probes: &[ir::Probe], split: Option<usize>) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut dims: Vec<Dim> = Vec::new();
    let close = |start: usize, end: usize, out: &mut Vec<std::ops::Range<usize>>| {
        if end - start >= MIN_RULES {
            out.push(start..end);
        }
    };
    let mut i = 0;
    while i < probes.len() {
        if split == Some(i) && i > start {
            close(start, i, &mut out);
            start = i;
            dims.clear();
        }
        match classifiable(&probes[i]) {
            Some((b, _)) => {
                let mut more = dims.clone();
                for d in b.keys() {
                    if !more.contains(d) {
                        more.push(*d);
                    }
                }
                if more.len() > MAX_DIMS {
                    close(start, i, &mut out);
                    start = i;
                    dims.clear();
                    continue;
                }
                dims = more;
            }
            None => {
                close(start, i, &mut out);
                start = i + 1;
                dims.clear();
            }
        }
        i += 1;
    }
    close(start, probes.len(), &mut out);
    out
}

/// One sub-rule: a rule's number and return code, and one interval per
/// dimension of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubRule {
    pub rule: ir::RuleId,
    pub code: u32,
    pub ranges: Vec<(u64, u64)>,
}

/// A run's tree, serialized for global data, and what the walk needs to
/// know of it.
#[derive(Clone, Debug)]
pub struct Tree {
    pub dims: Vec<Dim>,
    /// Nodes (u64 each, the root first), then leaf entries (u32 sub-rule
    /// indices), then sub-rule records ([`Tree::record_bytes`]).
    pub bytes: Vec<u8>,
    pub nodes: u64,
    pub entries_at: u64,
    pub entries: u64,
    pub records_at: u64,
    pub records: u64,
    /// Internal nodes on the longest path from the root to a leaf.
    pub depth: usize,
    /// Rules in the largest leaf.
    pub max_leaf: usize,
}

/// Node encoding (one u64): bit 0 set for a leaf. Internal: bits 1-3 the
/// dimension, 4-9 the shift, 10-25 the mask, 32-63 the first child's index.
/// Leaf: bits 10-25 the rule count, 32-63 the first leaf entry.
pub mod node {
    pub const LEAF: u64 = 1;
    pub const DIM_SHIFT: u64 = 1;
    pub const DIM_MASK: u64 = 7;
    pub const SHIFT_SHIFT: u64 = 4;
    pub const SHIFT_MASK: u64 = 63;
    pub const MASK_SHIFT: u64 = 10;
    pub const MASK_MASK: u64 = 0xffff;
    pub const BASE_SHIFT: u64 = 32;
}

impl Tree {
    /// Bytes of a sub-rule record: the rule number (u32), its return code
    /// (u32), then `lo` and `hi` (u64 each) per dimension.
    pub fn record_bytes(dims: usize) -> u64 {
        8 + 16 * dims as u64
    }

    /// The first match for a packet's extended values (one per
    /// dimension), read from the serialized tree as the kernel's walk
    /// reads it: (rule, return code).
    pub fn lookup(&self, values: &[u64]) -> Option<(ir::RuleId, u32)> {
        let u64_at = |off: u64| u64::from_le_bytes(self.bytes[off as usize..off as usize + 8].try_into().expect("8 bytes"));
        let u32_at = |off: u64| u32::from_le_bytes(self.bytes[off as usize..off as usize + 4].try_into().expect("4 bytes"));
        let mut idx = 0u64;
        let mut n = u64_at(0);
        for _ in 0..=self.depth {
            n = u64_at(idx * 8);
            if n & node::LEAF != 0 {
                break;
            }
            let d = ((n >> node::DIM_SHIFT) & node::DIM_MASK) as usize;
            let shift = (n >> node::SHIFT_SHIFT) & node::SHIFT_MASK;
            let mask = (n >> node::MASK_SHIFT) & node::MASK_MASK;
            idx = (n >> node::BASE_SHIFT) + ((values[d] >> shift) & mask);
        }
        assert!(n & node::LEAF != 0, "a walk ends in a leaf within the depth");
        let count = (n >> node::MASK_SHIFT) & node::MASK_MASK;
        let first = n >> node::BASE_SHIFT;
        let rec = Tree::record_bytes(self.dims.len());
        for e in first..first + count {
            let r = u64::from(u32_at(self.entries_at + e * 4));
            let at = self.records_at + r * rec;
            let hit = (0..self.dims.len() as u64).all(|d| {
                let (lo, hi) = (u64_at(at + 8 + 16 * d), u64_at(at + 16 + 16 * d));
                (lo..=hi).contains(&values[d as usize])
            });
            if hit {
                return Some((u32_at(at), u32_at(at + 4)));
            }
        }
        None
    }
}

/// The sub-rules of rules (box, rule number, return code), in order, over
/// `dims`.
pub fn subrules(rules: &[(RuleBox, ir::RuleId, u32)], dims: &[Dim]) -> Vec<SubRule> {
    let mut out = Vec::new();
    for (b, rule, code) in rules {
        let mut partial: Vec<Vec<(u64, u64)>> = vec![Vec::new()];
        for d in dims {
            let choices = match b.get(d) {
                Some(s) => s.0.clone(),
                None => vec![(0, u64::MAX)],
            };
            partial = partial.iter().flat_map(|p| choices.iter().map(move |&c| p.iter().copied().chain([c]).collect())).collect();
        }
        out.extend(partial.into_iter().map(|ranges| SubRule { rule: *rule, code: *code, ranges }));
    }
    out
}

/// A node's box: per dimension, the aligned block `[lo, lo + 2^free)`.
#[derive(Clone, Copy)]
struct Span1 {
    lo: u64,
    free: u32,
}

impl Span1 {
    fn hi(self) -> u64 {
        if self.free >= 64 {
            u64::MAX
        } else {
            self.lo + ((1u64 << self.free) - 1)
        }
    }
}

enum Built {
    Leaf(Vec<u32>),
    Cut { dim: usize, shift: u32, bits: u32, children: Vec<Built> },
}

struct Builder<'s> {
    subs: &'s [SubRule],
    /// Nodes so far: past [`MAX_TREE_BYTES`] in nodes alone the tree is
    /// refused, so the build stops growing it.
    nodes: usize,
    /// Rules in every node's list so far: the build stops growing the tree
    /// past [`MAX_LISTED`] (its leaves then stay large, and are refused).
    listed: usize,
}

/// Rules listed in all of a tree's nodes at most (bounds the build's time
/// and memory before serializing can refuse the tree).
const MAX_LISTED: usize = 1_500_000;

impl Builder<'_> {
    fn covers(&self, s: u32, bx: &[Span1]) -> bool {
        let r = &self.subs[s as usize];
        r.ranges.iter().zip(bx).all(|(&(lo, hi), b)| lo <= b.lo && hi >= b.hi())
    }

    /// Drops the rules of `list` that never match in `bx`: those after one
    /// that covers the whole box and, in short lists, those an earlier
    /// rule covers within the box.
    fn prune(&self, list: &mut Vec<u32>, bx: &[Span1]) {
        if let Some(i) = list.iter().position(|&s| self.covers(s, bx)) {
            list.truncate(i + 1);
        }
        if list.len() > PRUNE_PAIRS_BELOW {
            return;
        }
        let clip = |s: u32| -> Vec<(u64, u64)> {
            self.subs[s as usize].ranges.iter().zip(bx).map(|(&(lo, hi), b)| (lo.max(b.lo), hi.min(b.hi()))).collect()
        };
        let clipped: Vec<Vec<(u64, u64)>> = list.iter().map(|&s| clip(s)).collect();
        let mut keep = vec![true; list.len()];
        for j in 1..list.len() {
            keep[j] = !(0..j).any(|i| keep[i] && clipped[i].iter().zip(&clipped[j]).all(|(a, b)| a.0 <= b.0 && a.1 >= b.1));
        }
        let mut k = keep.iter();
        list.retain(|_| *k.next().expect("one flag per rule"));
    }

    fn build(&mut self, mut list: Vec<u32>, bx: &[Span1], depth: usize) -> Built {
        self.prune(&mut list, bx);
        if list.len() <= LEAF_RULES || depth >= MAX_DEPTH || self.listed > MAX_LISTED || self.nodes * 8 > MAX_TREE_BYTES {
            return Built::Leaf(list);
        }
        // The cut making the largest child smallest within the space
        // budget; ties to fewer rules in all, then to fewer children.
        let mut best: Option<(usize, usize, usize, u32)> = None; // (max child, total, dim, bits)
        for (d, b) in bx.iter().enumerate() {
            let top = b.free.min(MAX_CUT_BITS);
            for bits in (1..=top).rev() {
                let n = 1usize << bits;
                let shift = b.free - bits;
                let mut diff = vec![0i64; n + 1];
                for &s in &list {
                    let (lo, hi) = self.subs[s as usize].ranges[d];
                    let (lo, hi) = (lo.max(b.lo), hi.min(b.hi()));
                    let (a, z) = (((lo - b.lo) >> shift) as usize, ((hi - b.lo) >> shift) as usize);
                    diff[a] += 1;
                    diff[z + 1] -= 1;
                }
                let (mut run, mut max, mut total) = (0i64, 0usize, 0usize);
                for c in diff.iter().take(n) {
                    run += c;
                    max = max.max(run as usize);
                    total += run as usize;
                }
                if total + n > SPACE_FACTOR * list.len() + 2 {
                    continue;
                }
                if best.map_or(true, |(m, t, _, bb)| (max, total, bits) < (m, t, bb)) {
                    best = Some((max, total, d, bits));
                }
                break;
            }
        }
        let Some((_, _, d, bits)) = best else { return Built::Leaf(list) };
        let b = bx[d];
        let shift = b.free - bits;
        // Each rule into the children its interval reaches.
        let mut lists: Vec<Vec<u32>> = vec![Vec::new(); 1 << bits];
        for &s in &list {
            let (lo, hi) = self.subs[s as usize].ranges[d];
            let (lo, hi) = (lo.max(b.lo), hi.min(b.hi()));
            for c in ((lo - b.lo) >> shift)..=((hi - b.lo) >> shift) {
                lists[c as usize].push(s);
            }
        }
        let mut boxes = Vec::with_capacity(1 << bits);
        for (c, child) in lists.iter_mut().enumerate() {
            let mut sub = bx.to_vec();
            sub[d] = Span1 { lo: b.lo + ((c as u64) << shift), free: shift };
            self.prune(child, &sub);
            boxes.push(sub);
        }
        // A cut that separates nothing (every child keeps every rule) only
        // makes the walk longer.
        if lists.iter().all(|l| l.len() == list.len()) {
            return Built::Leaf(list);
        }
        self.nodes += lists.len();
        let mut children = Vec::with_capacity(lists.len());
        for (child, sub) in lists.into_iter().zip(boxes) {
            self.listed += child.len();
            children.push(self.build(child, &sub, depth + 1));
        }
        Built::Cut { dim: d, shift, bits, children }
    }
}

/// Lists of at most this many rules are pruned of rules an earlier one
/// covers (quadratic in the list).
const PRUNE_PAIRS_BELOW: usize = 24;

/// Why a run is not classified after all.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The tree would take more than [`MAX_TREE_BYTES`].
    TooLarge(usize),
    /// Some leaf holds more than [`MAX_LEAF`] rules (rules too alike to
    /// tell apart).
    LeafTooLarge(usize),
}

/// Trees for `rules` (box, rule number, return code, in priority order):
/// one for them all, or when that tree is refused, trees for each half,
/// and so on down to [`MIN_RULES`] rules (the rules of a part no tree
/// takes stay rule after rule). Walked one after another, the parts keep
/// first match. Returns each part's range in `rules` and its tree.
pub fn build_parts(rules: &[(RuleBox, ir::RuleId, u32)]) -> Vec<(std::ops::Range<usize>, Tree)> {
    let mut out = Vec::new();
    let mut todo = vec![0..rules.len()];
    while let Some(part) = todo.pop() {
        match build(&rules[part.clone()]) {
            Ok(tree) => out.push((part, tree)),
            Err(_) if part.len() >= 2 * MIN_RULES => {
                let mid = part.start + part.len() / 2;
                // Popped first half first.
                todo.push(mid..part.end);
                todo.push(part.start..mid);
            }
            Err(_) => {}
        }
    }
    out
}

/// The tree of `rules` (box, rule number, return code), in priority order.
pub fn build(rules: &[(RuleBox, ir::RuleId, u32)]) -> Result<Tree, Refused> {
    let mut dims: Vec<Dim> = Vec::new();
    for (b, _, _) in rules {
        for d in b.keys() {
            if !dims.contains(d) {
                dims.push(*d);
            }
        }
    }
    // A run of rules that test nothing still needs one dimension to walk.
    if dims.is_empty() {
        dims.push(Dim { field: Field::IpVersion, kind: DimKind::Int });
    }
    let subs = subrules(rules, &dims);
    let root: Vec<Span1> = dims.iter().map(|d| Span1 { lo: 0, free: d.bits() }).collect();
    // Sub-rules that match nothing (an empty set) are dropped here.
    let list: Vec<u32> = (0..subs.len() as u32).filter(|&s| subs[s as usize].ranges.iter().all(|r| r.0 <= r.1)).collect();
    let mut builder = Builder { subs: &subs, nodes: 1, listed: 0 };
    let tree = builder.build(list, &root, 0);
    if builder.listed > MAX_LISTED || builder.nodes * 8 > MAX_TREE_BYTES {
        return Err(Refused::TooLarge(builder.nodes * 8));
    }
    serialize(&tree, &subs, dims)
}

fn serialize(tree: &Built, subs: &[SubRule], dims: Vec<Dim>) -> Result<Tree, Refused> {
    // Breadth first: a node's children are consecutive.
    let mut nodes: Vec<u64> = vec![0];
    let mut entries: Vec<u32> = Vec::new();
    let mut leaf_at: HashMap<Vec<u32>, (u64, u64)> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([(tree, 0usize, 0usize)]);
    let (mut depth, mut max_leaf) = (0, 0);
    while let Some((t, at, level)) = queue.pop_front() {
        nodes[at] = match t {
            Built::Leaf(list) => {
                max_leaf = max_leaf.max(list.len());
                if list.len() > MAX_LEAF {
                    return Err(Refused::LeafTooLarge(list.len()));
                }
                let (first, count) = *leaf_at.entry(list.clone()).or_insert_with(|| {
                    let first = entries.len() as u64;
                    entries.extend(list);
                    (first, list.len() as u64)
                });
                node::LEAF | (count << node::MASK_SHIFT) | (first << node::BASE_SHIFT)
            }
            Built::Cut { dim, shift, bits, children } => {
                depth = depth.max(level + 1);
                let base = nodes.len();
                nodes.extend(std::iter::repeat(0).take(children.len()));
                for (i, c) in children.iter().enumerate() {
                    queue.push_back((c, base + i, level + 1));
                }
                ((*dim as u64) << node::DIM_SHIFT)
                    | (u64::from(*shift) << node::SHIFT_SHIFT)
                    | (((1u64 << bits) - 1) << node::MASK_SHIFT)
                    | ((base as u64) << node::BASE_SHIFT)
            }
        };
        let bytes = nodes.len() * 8 + entries.len() * 4 + subs.len() * Tree::record_bytes(dims.len()) as usize;
        if bytes > MAX_TREE_BYTES {
            return Err(Refused::TooLarge(bytes));
        }
    }
    let mut bytes = Vec::with_capacity(nodes.len() * 8 + entries.len() * 4);
    for n in &nodes {
        bytes.extend_from_slice(&n.to_le_bytes());
    }
    let entries_at = bytes.len() as u64;
    for e in &entries {
        bytes.extend_from_slice(&e.to_le_bytes());
    }
    // Records 8-byte aligned.
    while bytes.len() % 8 != 0 {
        bytes.push(0);
    }
    let records_at = bytes.len() as u64;
    for s in subs {
        bytes.extend_from_slice(&s.rule.to_le_bytes());
        bytes.extend_from_slice(&s.code.to_le_bytes());
        for &(lo, hi) in &s.ranges {
            bytes.extend_from_slice(&lo.to_le_bytes());
            bytes.extend_from_slice(&hi.to_le_bytes());
        }
    }
    if bytes.len() > MAX_TREE_BYTES {
        return Err(Refused::TooLarge(bytes.len()));
    }
    Ok(Tree {
        dims,
        bytes,
        nodes: nodes.len() as u64,
        entries_at,
        entries: entries.len() as u64,
        records_at,
        records: subs.len() as u64,
        depth,
        max_leaf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// First match by scanning the sub-rules, the definition the tree
    /// must agree with.
    fn linear(subs: &[SubRule], v: &[u64]) -> Option<(ir::RuleId, u32)> {
        subs.iter().find(|s| s.ranges.iter().zip(v).all(|(&(lo, hi), x)| (lo..=hi).contains(x))).map(|s| (s.rule, s.code))
    }

    fn dims() -> Vec<Dim> {
        vec![
            Dim { field: Field::Ip4Src, kind: DimKind::Ip4 },
            Dim { field: Field::Ip4Dst, kind: DimKind::Ip4 },
            Dim { field: Field::IpProto, kind: DimKind::Int },
            Dim { field: Field::L4Dport, kind: DimKind::Port },
            Dim { field: Field::IpTtl, kind: DimKind::Int },
            Dim { field: Field::TcpSyn, kind: DimKind::Bool },
        ]
    }

    /// Random rules of prefixes, port ranges, protocols and flags (many
    /// wildcards, as in firewall rule sets), and random packets near their
    /// edges and absent fields: the tree's first match is the scan's.
    #[test]
    fn trees_find_the_first_match() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        for round in 0..30 {
            let n = 40 + round * 37;
            let ds = dims();
            let mut rules = Vec::new();
            for r in 0..n {
                let mut b = RuleBox::new();
                for d in &ds {
                    let x = xorshift(&mut seed);
                    if x % 3 == 0 {
                        continue;
                    }
                    let iv = match d.kind {
                        DimKind::Ip4 => {
                            let len = [8u64, 16, 24, 28, 32][(x >> 8) as usize % 5];
                            let a = (x >> 20) as u32 as u64 & !((1u64 << (32 - len)) - 1) & 0xff0f_ffff;
                            (a + 1, a + (1 << (32 - len)))
                        }
                        DimKind::Bool => {
                            let v = 1 + (x >> 9) % 2;
                            (v, v)
                        }
                        DimKind::Int | DimKind::Port => {
                            let lo = (x >> 12) % d.max_value();
                            let hi = (lo + (x >> 40) % 2000).min(d.max_value() - 1);
                            (lo + 1, hi + 1)
                        }
                    };
                    b.insert(*d, Intervals(vec![iv]));
                }
                rules.push((b, r as u32, (r % 3) as u32));
            }
            let parts = build_parts(&rules);
            assert!(!parts.is_empty(), "round {round}: some part of {n} rules makes a tree");
            let (part, tree) = &parts[0];
            let subs = subrules(&rules[part.clone()], &tree.dims);
            for _ in 0..2000 {
                let v: Vec<u64> = tree
                    .dims
                    .iter()
                    .map(|d| {
                        let x = xorshift(&mut seed);
                        match x % 4 {
                            0 => 0,
                            // Near a rule's edge.
                            1 => {
                                let s = &subs[(x >> 8) as usize % subs.len()];
                                let i = tree.dims.iter().position(|e| e == d).expect("dim");
                                let (lo, hi) = s.ranges[i];
                                let edge = if x & 1 << 20 != 0 { lo } else { hi };
                                edge.saturating_add((x >> 30) % 3).saturating_sub(1).min(d.max_value())
                            }
                            _ => (x >> 16) % (d.max_value() + 1),
                        }
                    })
                    .collect();
                assert_eq!(tree.lookup(&v), linear(&subs, &v), "round {round}, values {v:?}");
            }
        }
    }

    #[test]
    fn predicates_become_boxes_in_three_valued_logic() {
        let d = Dim { field: Field::TcpDport, kind: DimKind::Int };
        let present = d.present();
        assert_eq!(present, Intervals(vec![(1, 65536)]));
        // `!= 22`: present and not 22 (an absent port is unknown, not true).
        let ne = Intervals(vec![(23, 23)]).complement_within(&present);
        assert_eq!(ne, Intervals(vec![(1, 22), (24, 65536)]));
        assert_eq!(Intervals(vec![(1, 65536)]).complement_within(&present), Intervals(vec![]));
        assert_eq!(Intervals(vec![]).complement_within(&present), present);
        let ip = Dim { field: Field::IpSrc, kind: DimKind::Ip4 };
        // `ip.src` of an IPv6 packet is present, in no IPv4 set.
        assert_eq!(ip.present(), Intervals(vec![(1, V6_POINT)]));
        assert_eq!(Dim { field: Field::Ip4Src, kind: DimKind::Ip4 }.present(), Intervals(vec![(1, 1 << 32)]));
    }
}
