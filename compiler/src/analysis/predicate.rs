//! Predicates to regions: an IR expression to the packets for which it is
//! true and those for which it is false (the rest: unknown, a field
//! absent), with the language's three-valued logic.
//!
//! What the packet alone does not decide enters as an *atom*: a
//! `limit(...)` (rate-limit state), a `@map` read (map contents), or a
//! comparison this module does not take apart (two fields, or arithmetic
//! over a field too wide to enumerate). An atom can be true or false for
//! any packet that carries what it reads, each occurrence independently.
//! Every region is then computed twice: where the expression *may* be
//! true (false), and where it *surely* is; for an expression without
//! atoms both are the same.

use super::space::{prefixes, Cube, Dim, Set, Space, L4_ICMP, L4_TCP, L4_UDP, IPV6_EXT, NEXTHDR_IS_PROTO, PROTO_ABSENT};
use crate::check::eval_arith;
use crate::check::fields::Field;
use crate::ir::{self, CmpOp, ConstSet, ExprKind, SetRef, Type, Value};
use std::collections::HashMap;
use std::net::IpAddr;
use xpol_lang::Span;

/// Why a region depends on more than the packet.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Unknown {
    /// "rate-limit state (limit(...))", "the contents of @m", ...
    pub reason: String,
    pub span: Span,
}

/// Which region of an expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    MayTrue,
    MayFalse,
    SureTrue,
    SureFalse,
}

impl Want {
    fn negated(self) -> Want {
        match self {
            Want::MayTrue => Want::MayFalse,
            Want::MayFalse => Want::MayTrue,
            Want::SureTrue => Want::SureFalse,
            Want::SureFalse => Want::SureTrue,
        }
    }

    fn truth(self) -> bool {
        matches!(self, Want::MayTrue | Want::SureTrue)
    }

    fn sure(self) -> bool {
        matches!(self, Want::SureTrue | Want::SureFalse)
    }
}

/// How a field's value is read from a dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The value is the dimension's times `scale`.
    Int { scale: u128 },
    V4,
    V6,
    /// 0 or 1.
    Bool,
    /// A bit of the TCP flags.
    Flag(u8),
    /// `ip.frag_first`: `Frag` 1 and `FragOff8` 0.
    FragFirst,
}

/// One way a field is present: where, and how its value is read.
#[derive(Clone, Debug)]
struct Alt {
    guard: Space,
    dim: Dim,
    kind: Kind,
}

/// ICMP types with a connection state (echo reply, errors, echo request),
/// as `reference/conntrack.rs` classifies them; other ICMP messages
/// (neighbour discovery, router advertisements) have none.
const CT_ICMP4_TYPES: [u128; 7] = [0, 3, 4, 5, 8, 11, 12];
const CT_ICMP6_TYPES: [u128; 6] = [1, 2, 3, 4, 128, 129];

/// The reason a test of `ct.state` depends on more than the packet.
const CT_REASON: &str = "connection state (ct.state)";

/// Largest number of values enumerated to take apart arithmetic on a field.
const ENUMERATE_MAX: u128 = 1 << 17;

/// What an operand of a comparison is.
enum Term {
    Const(Value),
    /// The field itself.
    Field(Field),
    /// Arithmetic over one field and constants.
    OneField(Field),
    /// Something the packet alone does not decide, or that is not taken
    /// apart; `fields`: what must be present for it to have a value.
    Opaque { fields: Vec<Field>, reason: Option<String> },
}

pub struct Compiler<'p> {
    pub policy: &'p ir::Policy,
    pub universe: Space,
    alts: HashMap<Field, Vec<Alt>>,
    present: HashMap<Field, Space>,
    /// `let` bindings in scope: locals stand for their expressions.
    pub env: HashMap<ir::LocalId, ir::Expr>,
    /// The atoms met since the last [`Compiler::take_unknowns`].
    unknowns: Vec<Unknown>,
    /// Cube operations done, and the most allowed: past it every region
    /// is empty and `exhausted` says so (the caller gives up).
    pub work: u64,
    pub work_limit: u64,
    pub exhausted: bool,
    /// `--sets symbolic`: the sets the runtime may change are taken as
    /// unknown contents, not as declared. A test of a field against one
    /// is true or false as `assumed` says (by set name and field), and an
    /// atom where it says nothing.
    pub symbolic_sets: bool,
    pub assumed: HashMap<(String, Field), bool>,
}

impl<'p> Compiler<'p> {
    pub fn new(policy: &'p ir::Policy) -> Compiler<'p> {
        Compiler {
            policy,
            universe: super::space::universe(),
            alts: HashMap::new(),
            present: HashMap::new(),
            env: HashMap::new(),
            unknowns: Vec::new(),
            work: 0,
            work_limit: u64::MAX,
            exhausted: false,
            symbolic_sets: false,
            assumed: HashMap::new(),
        }
    }

    /// Counts `n` operations; false once past the limit.
    pub fn spend(&mut self, n: u64) -> bool {
        self.work = self.work.saturating_add(n);
        if self.work > self.work_limit {
            self.exhausted = true;
        }
        !self.exhausted
    }

    pub fn take_unknowns(&mut self) -> Vec<Unknown> {
        std::mem::take(&mut self.unknowns)
    }

    fn alts(&mut self, f: Field) -> Vec<Alt> {
        if let Some(a) = self.alts.get(&f) {
            return a.clone();
        }
        let g = |pairs: &[&(Dim, Set)]| {
            let mut c = Cube::full();
            for &(d, s) in pairs {
                c.set(*d, s.clone());
            }
            c
        };
        let int = Kind::Int { scale: 1 };
        let eth = (Dim::L2, Set::one(1));
        let ip = (Dim::L3, Set::from_ranges(vec![(4, 4), (6, 6)]));
        let v4 = (Dim::L3, Set::one(4));
        let v6 = (Dim::L3, Set::one(6));
        let proto = (Dim::Proto, Set::range(0, 255));
        let tcp = (Dim::L4, Set::one(L4_TCP));
        let udp = (Dim::L4, Set::one(L4_UDP));
        let ports = (Dim::L4, Set::range(L4_TCP, L4_UDP));
        let icmp = (Dim::L4, Set::one(L4_ICMP));
        use Field::*;
        let raw: Vec<(Cube, Dim, Kind)> = match f {
            PktLen => vec![(Cube::full(), Dim::Len, int)],
            EthSrc => vec![(g(&[&eth]), Dim::EthSrc, int)],
            EthDst => vec![(g(&[&eth]), Dim::EthDst, int)],
            EthType => vec![(g(&[&eth]), Dim::EthType, int)],
            VlanDepth => vec![(g(&[&eth]), Dim::VlanDepth, int)],
            VlanId => vec![(g(&[&eth, &(Dim::VlanDepth, Set::range(1, 3))]), Dim::Vlan1Id, int)],
            VlanPcp => vec![(g(&[&eth, &(Dim::VlanDepth, Set::range(1, 3))]), Dim::Vlan1Pcp, int)],
            VlanInnerId => vec![(g(&[&eth, &(Dim::VlanDepth, Set::range(2, 3))]), Dim::Vlan2Id, int)],
            VlanInnerPcp => vec![(g(&[&eth, &(Dim::VlanDepth, Set::range(2, 3))]), Dim::Vlan2Pcp, int)],
            IpVersion => vec![(g(&[&ip]), Dim::L3, int)],
            IpSrc => vec![(g(&[&v4]), Dim::Src, Kind::V4), (g(&[&v6]), Dim::Src, Kind::V6)],
            IpDst => vec![(g(&[&v4]), Dim::Dst, Kind::V4), (g(&[&v6]), Dim::Dst, Kind::V6)],
            IpProto => vec![(g(&[&ip, &proto]), Dim::Proto, int)],
            IpTtl => vec![(g(&[&ip]), Dim::Ttl, int)],
            IpLen => vec![(g(&[&ip]), Dim::IpLen, int)],
            IpDscp => vec![(g(&[&ip]), Dim::Dscp, int)],
            IpEcn => vec![(g(&[&ip]), Dim::Ecn, int)],
            IpFrag => vec![(g(&[&ip, &proto]), Dim::Frag, Kind::Bool)],
            IpFragFirst => vec![(g(&[&ip, &proto]), Dim::Frag, Kind::FragFirst)],
            IpFragOff => vec![(g(&[&ip, &proto]), Dim::FragOff8, Kind::Int { scale: 8 })],
            Ip4Src => vec![(g(&[&v4]), Dim::Src, Kind::V4)],
            Ip4Dst => vec![(g(&[&v4]), Dim::Dst, Kind::V4)],
            Ip4Ihl => vec![(g(&[&v4]), Dim::Ihl, int)],
            Ip4Id => vec![(g(&[&v4]), Dim::Id, int)],
            Ip4Df => vec![(g(&[&v4]), Dim::Df, Kind::Bool)],
            Ip6Src => vec![(g(&[&v6]), Dim::Src, Kind::V6)],
            Ip6Dst => vec![(g(&[&v6]), Dim::Dst, Kind::V6)],
            Ip6NextHdr => vec![
                (g(&[&v6, &(Dim::NextHdr, Set::one(NEXTHDR_IS_PROTO))]), Dim::Proto, int),
                (g(&[&v6, &(Dim::NextHdr, Set::from_ranges(IPV6_EXT.iter().map(|&e| (e, e)).collect()))]), Dim::NextHdr, int),
            ],
            Ip6HopLimit => vec![(g(&[&v6]), Dim::Ttl, int)],
            Ip6FlowLabel => vec![(g(&[&v6]), Dim::Flow, int)],
            TcpSport => vec![(g(&[&tcp]), Dim::Sport, int)],
            TcpDport => vec![(g(&[&tcp]), Dim::Dport, int)],
            TcpFlags => vec![(g(&[&tcp]), Dim::TcpFlags, int)],
            TcpFin => vec![(g(&[&tcp]), Dim::TcpFlags, Kind::Flag(0x01))],
            TcpSyn => vec![(g(&[&tcp]), Dim::TcpFlags, Kind::Flag(0x02))],
            TcpRst => vec![(g(&[&tcp]), Dim::TcpFlags, Kind::Flag(0x04))],
            TcpPsh => vec![(g(&[&tcp]), Dim::TcpFlags, Kind::Flag(0x08))],
            TcpAck => vec![(g(&[&tcp]), Dim::TcpFlags, Kind::Flag(0x10))],
            TcpUrg => vec![(g(&[&tcp]), Dim::TcpFlags, Kind::Flag(0x20))],
            TcpEce => vec![(g(&[&tcp]), Dim::TcpFlags, Kind::Flag(0x40))],
            TcpCwr => vec![(g(&[&tcp]), Dim::TcpFlags, Kind::Flag(0x80))],
            TcpWindow => vec![(g(&[&tcp]), Dim::Window, int)],
            UdpSport => vec![(g(&[&udp]), Dim::Sport, int)],
            UdpDport => vec![(g(&[&udp]), Dim::Dport, int)],
            UdpLen => vec![(g(&[&udp]), Dim::UdpLen, int)],
            L4Sport => vec![(g(&[&ports]), Dim::Sport, int)],
            L4Dport => vec![(g(&[&ports]), Dim::Dport, int)],
            IcmpType => vec![(g(&[&icmp, &v4]), Dim::IcmpType, int)],
            IcmpCode => vec![(g(&[&icmp, &v4]), Dim::IcmpCode, int)],
            Icmp6Type => vec![(g(&[&icmp, &v6]), Dim::IcmpType, int)],
            Icmp6Code => vec![(g(&[&icmp, &v6]), Dim::IcmpCode, int)],
            // Where a packet has a connection (docs/conntrack.md): TCP,
            // UDP, ICMP echoes and errors, a first fragment or whole. Its
            // value is the table's, not the packet's: `term` makes every
            // test of it an atom; the dimension here only says where.
            CtState => vec![
                (g(&[&ports]), Dim::L4, int),
                (g(&[&icmp, &v4, &(Dim::IcmpType, Set::from_ranges(CT_ICMP4_TYPES.iter().map(|&t| (t, t)).collect()))]), Dim::L4, int),
                (g(&[&icmp, &v6, &(Dim::IcmpType, Set::from_ranges(CT_ICMP6_TYPES.iter().map(|&t| (t, t)).collect()))]), Dim::L4, int),
            ],
        };
        let alts: Vec<Alt> = raw.into_iter().map(|(c, dim, kind)| Alt { guard: self.universe.intersect_cube(&c), dim, kind }).collect();
        let mut present = Space::empty();
        for a in &alts {
            present.extend_disjoint(a.guard.clone());
        }
        self.present.insert(f, present);
        self.alts.insert(f, alts.clone());
        alts
    }

    /// The packets that carry `f`.
    pub fn present(&mut self, f: Field) -> Space {
        self.alts(f);
        self.present[&f].clone()
    }

    /// The packets that carry every field of `fields`.
    fn all_present(&mut self, fields: &[Field]) -> Space {
        let mut out = self.universe.clone();
        for &f in fields {
            let p = self.present(f);
            out = out.intersect(&p);
        }
        out
    }

    /// The region of a boolean expression.
    pub fn region(&mut self, e: &ir::Expr, want: Want) -> Space {
        match &e.kind {
            ExprKind::Not(a) => self.region(a, want.negated()),
            ExprKind::And(a, b) | ExprKind::Or(a, b) => {
                let and = matches!(e.kind, ExprKind::And(..));
                // `a && b` is true where both are; false where either is.
                let meet = and == want.truth();
                let x = self.region(a, want);
                if meet && x.is_empty() {
                    return x;
                }
                let y = self.region(b, want);
                if !self.spend((x.len() * y.len()) as u64 + 1) {
                    return Space::empty();
                }
                if meet {
                    x.intersect(&y)
                } else {
                    let mut x = x;
                    x.extend_disjoint(y);
                    x
                }
            }
            ExprKind::Const(Value::Bool(b)) => {
                if *b == want.truth() {
                    self.universe.clone()
                } else {
                    Space::empty()
                }
            }
            ExprKind::Local(l) => match self.env.get(l).cloned() {
                Some(v) => self.region(&v, want),
                None => self.atom(&[], Some("a local bound where the analysis does not follow".to_string()), e.span, want),
            },
            ExprKind::Field(f) => {
                let alts = self.alts(*f);
                let mut out = Space::empty();
                for a in alts {
                    let set = match a.kind {
                        Kind::Bool => Set::one(want.truth() as u128),
                        Kind::Flag(bit) => flag_set(bit, want.truth()),
                        Kind::FragFirst => {
                            let first: Vec<Cube> = a.guard.0.iter().filter_map(|c| c.clone().narrow(Dim::Frag, &Set::one(1)).and_then(|c| c.narrow(Dim::FragOff8, &Set::one(0)))).collect();
                            let first = Space(first);
                            out.extend_disjoint(if want.truth() { first } else { a.guard.minus(&first) });
                            continue;
                        }
                        _ => Set::empty(),
                    };
                    out.extend_disjoint(narrow(&a.guard, a.dim, &set));
                }
                out
            }
            ExprKind::Limit { limit, keys } => {
                let fields = fields_of_all(keys, &self.env);
                let text = self.policy.limits.get(*limit).map(|l| l.text.clone()).unwrap_or_default();
                self.atom(&fields, Some(format!("rate-limit state ({text})")), e.span, want)
            }
            ExprKind::In(a, set) => self.membership(a, set, e.span, want),
            ExprKind::Cmp(op, a, b) => self.compare(*op, a, b, e.span, want),
            // Not boolean: the checker allows none of these here.
            _ => self.atom(&[], Some("an expression the analysis does not take apart".into()), e.span, want),
        }
    }

    /// An atom: may be true or false wherever `fields` are present
    /// (never surely either); unknown elsewhere. `reason: None`: a
    /// comparison that is unknown wherever defined (ordering addresses).
    fn atom(&mut self, fields: &[Field], reason: Option<String>, span: Span, want: Want) -> Space {
        let Some(reason) = reason else { return Space::empty() };
        self.unknowns.push(Unknown { reason, span });
        if want.sure() {
            Space::empty()
        } else {
            self.all_present(fields)
        }
    }

    fn term(&self, e: &ir::Expr) -> Term {
        match &e.kind {
            ExprKind::Const(v) => Term::Const(*v),
            ExprKind::Field(Field::CtState) => Term::Opaque { fields: vec![Field::CtState], reason: Some(CT_REASON.into()) },
            ExprKind::Field(f) => Term::Field(*f),
            ExprKind::Local(l) => match self.env.get(l) {
                Some(v) => self.term(v),
                None => Term::Opaque { fields: vec![], reason: Some("a local bound where the analysis does not follow".into()) },
            },
            ExprKind::MapRead { map, keys } => {
                let name = self.policy.maps.get(*map).map(|m| m.name.clone()).unwrap_or_default();
                Term::Opaque { fields: fields_of_all(keys, &self.env), reason: Some(format!("the contents of @{name}")) }
            }
            ExprKind::Neg(a) | ExprKind::BitNot(a) => match self.term(a) {
                Term::Const(Value::Int(x)) => Term::Const(Value::Int(if matches!(e.kind, ExprKind::Neg(_)) { x.wrapping_neg() } else { !x })),
                Term::Field(f) | Term::OneField(f) => Term::OneField(f),
                t => t,
            },
            ExprKind::Arith(op, a, b) => {
                let (x, y) = (self.term(a), self.term(b));
                match (x, y) {
                    (Term::Const(Value::Int(x)), Term::Const(Value::Int(y))) => Term::Const(Value::Int(eval_arith(*op, x, y))),
                    (Term::Field(f), Term::Const(Value::Int(c))) if identity(*op, c) => Term::Field(f),
                    (Term::Field(f) | Term::OneField(f), Term::Const(_)) | (Term::Const(_), Term::Field(f) | Term::OneField(f)) => Term::OneField(f),
                    (Term::Field(f) | Term::OneField(f), Term::Field(g) | Term::OneField(g)) if f == g => Term::OneField(f),
                    (x, y) => {
                        let mut fields = term_fields(&x);
                        fields.extend(term_fields(&y));
                        let reason = term_reason(&x).or(term_reason(&y)).unwrap_or_else(|| "arithmetic over several fields".into());
                        Term::Opaque { fields, reason: Some(reason) }
                    }
                }
            }
            _ => Term::Opaque { fields: fields_of(e, &self.env), reason: Some("an expression the analysis does not take apart".into()) },
        }
    }

    fn membership(&mut self, a: &ir::Expr, set: &SetRef, span: Span, want: Want) -> Space {
        if let SetRef::Named(id) = set {
            let named = &self.policy.sets[*id];
            if self.symbolic_sets && named.mutable {
                let name = named.name.clone();
                return match self.term(a) {
                    Term::Field(f) => match self.assumed.get(&(name.clone(), f)).copied() {
                        // Wherever the field is present, as assumed.
                        Some(member) => {
                            if member == want.truth() {
                                self.present(f)
                            } else {
                                Space::empty()
                            }
                        }
                        None => self.atom(&[f], Some(format!("the contents of set {name}")), span, want),
                    },
                    t => {
                        let fields = term_fields(&t);
                        self.atom(&fields, Some(format!("the contents of set {name}")), span, want)
                    }
                };
            }
        }
        let contents: ConstSet = match set {
            SetRef::Inline(s) => s.clone(),
            SetRef::Named(id) => {
                // A set's elements are work like cubes, counted before they
                // are taken apart: every later step copies their intervals
                // (tens of MB for a blocklist of a million prefixes), so a
                // budgeted analysis (the lints of every check) stops here
                // rather than spend seconds on them.
                let c = &self.policy.sets[*id].contents;
                if !self.spend((c.v4.len() + c.v6.len() + c.ints.len() + c.macs.len()) as u64) {
                    return Space::empty();
                }
                c.clone()
            }
            // A dynamic set holds what the packet path added and its time
            // has not taken away: state, like a map.
            SetRef::Dynamic(id) => {
                let name = self.policy.dynsets.get(*id).map(|d| d.name.clone()).unwrap_or_default();
                let fields = fields_of(a, &self.env);
                return self.atom(&fields, Some(format!("the contents of dynamic set {name}")), span, want);
            }
        };
        let ints = Set::from_ranges(contents.ints.iter().map(|&(a, b)| (a as u128, b as u128)).chain(contents.macs.iter().map(|&m| (m as u128, m as u128))).collect());
        let v4 = Set::from_ranges(contents.v4.iter().map(|&(n, l)| prefix_range(u32::from(n) as u128, l as u32, 32)).collect());
        let v6 = Set::from_ranges(contents.v6.iter().map(|&(n, l)| prefix_range(u128::from(n), l as u32, 128)).collect());
        // Every state: true wherever the packet has one, whatever the
        // table holds.
        if matches!(a.kind, ExprKind::Field(Field::CtState)) && ir::CtState::ALL.iter().all(|s| ints.contains(s.number() as u128)) {
            let present = self.present(Field::CtState);
            return if want.truth() { present } else { Space::empty() };
        }
        match self.term(a) {
            Term::Field(f) => self.field_test(f, want, |kind| match kind {
                Kind::V4 => v4.clone(),
                Kind::V6 => v6.clone(),
                Kind::Int { scale } => scaled(&ints, scale),
                _ => Set::empty(),
            }),
            Term::Const(v) => {
                let holds = match v {
                    Value::Int(x) | Value::Mac(x) => ints.contains(x as u128),
                    Value::Ip(IpAddr::V4(x)) => v4.contains(u32::from(x) as u128),
                    Value::Ip(IpAddr::V6(x)) => v6.contains(u128::from(x)),
                    Value::Bool(_) => false,
                };
                self.constant(holds, want)
            }
            Term::OneField(f) => self.enumerate(f, want, span, |v| Some(ints.contains(v as u128))),
            Term::Opaque { fields, reason } => self.atom(&fields, reason, span, want),
        }
    }

    fn constant(&self, holds: bool, want: Want) -> Space {
        if holds == want.truth() {
            self.universe.clone()
        } else {
            Space::empty()
        }
    }

    /// Where field `f` is present and its value is (`want` true) or is not
    /// (false) in `values(kind)`, a set of dimension values.
    fn field_test(&mut self, f: Field, want: Want, values: impl Fn(Kind) -> Set) -> Space {
        let mut out = Space::empty();
        for a in self.alts(f) {
            let yes = values(a.kind);
            let s = if want.truth() { yes } else { Set::full(a.dim).minus(&yes) };
            out.extend_disjoint(narrow(&a.guard, a.dim, &s));
        }
        out
    }

    /// Arithmetic over field `f` (an int field) taken apart by trying every
    /// value; an atom when the field has too many.
    fn enumerate(&mut self, f: Field, want: Want, span: Span, test: impl Fn(u64) -> Option<bool>) -> Space {
        let alts = self.alts(f);
        let mut out = Space::empty();
        for a in &alts {
            let Kind::Int { scale } = a.kind else { return self.atom(&[f], Some("a comparison the analysis does not take apart".into()), span, want) };
            let mut domain = Set::empty();
            for c in &a.guard.0 {
                domain = domain.union(c.get(a.dim));
            }
            if domain.count() > ENUMERATE_MAX || !self.spend(domain.count() as u64) {
                return self.atom(&[f], Some(format!("arithmetic over {} (too many values to enumerate)", f.name())), span, want);
            }
            let mut yes = Vec::new();
            for &(lo, hi) in &domain.0 {
                for d in lo..=hi {
                    let v = (d * scale) as u64;
                    if test(v) == Some(want.truth()) {
                        yes.push((d, d));
                    }
                }
            }
            out.extend_disjoint(narrow(&a.guard, a.dim, &Set::from_ranges(yes)));
        }
        out
    }

    fn compare(&mut self, op: CmpOp, a: &ir::Expr, b: &ir::Expr, span: Span, want: Want) -> Space {
        if a.ty == Type::Bool || b.ty == Type::Bool {
            return self.compare_bools(op, a, b, span, want);
        }
        let (x, y) = (self.term(a), self.term(b));
        match (x, y) {
            (Term::Const(x), Term::Const(y)) => {
                let holds = const_cmp(op, x, y);
                match holds {
                    Some(h) => self.constant(h, want),
                    None => Space::empty(),
                }
            }
            (Term::Field(f), Term::Const(c)) => self.field_cmp(f, op, c, want),
            (Term::Const(c), Term::Field(f)) => self.field_cmp(f, op.flipped(), c, want),
            (Term::Opaque { fields, reason }, other) | (other, Term::Opaque { fields, reason }) => {
                let mut fields = fields;
                fields.extend(term_fields(&other));
                self.atom(&fields, reason, span, want)
            }
            (x, y) => {
                let f = match (&x, &y) {
                    (Term::Field(f) | Term::OneField(f), Term::Const(_)) | (Term::Const(_), Term::Field(f) | Term::OneField(f)) => Some(*f),
                    (Term::Field(f) | Term::OneField(f), Term::Field(g) | Term::OneField(g)) if f == g => Some(*f),
                    _ => None,
                };
                let Some(f) = f.filter(|f| f.ty() == Type::Int) else {
                    let mut fields = term_fields(&x);
                    fields.extend(term_fields(&y));
                    return self.atom(&fields, Some("a comparison of two fields".into()), span, want);
                };
                let env = self.env.clone();
                self.enumerate(
                    f,
                    want,
                    span,
                    |v| {
                        let x = eval_one(a, v, &env)?;
                        let y = eval_one(b, v, &env)?;
                        Some(int_cmp(op, x, y))
                    },
                )
            }
        }
    }

    /// `FIELD OP CONST`.
    fn field_cmp(&mut self, f: Field, op: CmpOp, c: Value, want: Want) -> Space {
        match c {
            Value::Int(c) | Value::Mac(c) => {
                let values = op_values(op, c);
                self.field_test(f, want, |kind| match kind {
                    Kind::Int { scale } => scaled(&values, scale),
                    _ => Set::empty(),
                })
            }
            Value::Ip(ip) => {
                let eq = match op {
                    CmpOp::Eq => true,
                    CmpOp::Ne => false,
                    // Addresses are not ordered: unknown wherever present.
                    _ => return Space::empty(),
                };
                self.field_test(f, want, |kind| {
                    let equal = match (kind, ip) {
                        (Kind::V4, IpAddr::V4(a)) => Set::one(u32::from(a) as u128),
                        (Kind::V6, IpAddr::V6(a)) => Set::one(u128::from(a)),
                        _ => Set::empty(),
                    };
                    if eq {
                        equal
                    } else {
                        Set::full(Dim::Src).minus(&equal)
                    }
                })
            }
            Value::Bool(_) => Space::empty(),
        }
    }

    fn compare_bools(&mut self, op: CmpOp, a: &ir::Expr, b: &ir::Expr, span: Span, want: Want) -> Space {
        let eq = match op {
            CmpOp::Eq => true,
            CmpOp::Ne => false,
            _ => return self.atom(&[], None, span, want),
        };
        // a == b is true where both are true or both false; false where
        // they differ; unknown where either is.
        let same = want.truth() == eq;
        let pos = if want.sure() { Want::SureTrue } else { Want::MayTrue };
        let neg = pos.negated();
        let (at, af, bt, bf) = (self.region(a, pos), self.region(a, neg), self.region(b, pos), self.region(b, neg));
        let mut out = if same { at.intersect(&bt) } else { at.intersect(&bf) };
        out.extend_disjoint(if same { af.intersect(&bf) } else { af.intersect(&bt) });
        out
    }
}

fn narrow(space: &Space, d: Dim, s: &Set) -> Space {
    Space(space.0.iter().filter_map(|c| c.clone().narrow(d, s)).collect())
}

fn flag_set(bit: u8, set: bool) -> Set {
    Set::from_ranges((0u128..256).filter(|v| (*v as u8 & bit != 0) == set).map(|v| (v, v)).collect())
}

fn prefix_range(net: u128, len: u32, bits: u32) -> (u128, u128) {
    let host = bits - len;
    let mask: u128 = if host >= 128 { u128::MAX } else { (1u128 << host) - 1 };
    (net & !mask, net | mask)
}

/// The values `x` with `x OP c`.
fn op_values(op: CmpOp, c: u64) -> Set {
    let c = c as u128;
    let max = u64::MAX as u128;
    match op {
        CmpOp::Eq => Set::one(c),
        CmpOp::Ne => Set::range(0, max).minus(&Set::one(c)),
        CmpOp::Lt => {
            if c == 0 {
                Set::empty()
            } else {
                Set::range(0, c - 1)
            }
        }
        CmpOp::Le => Set::range(0, c),
        CmpOp::Gt => Set::range(c + 1, max),
        CmpOp::Ge => Set::range(c, max),
    }
}

/// The dimension values `d` with `d * scale` in `values`.
fn scaled(values: &Set, scale: u128) -> Set {
    if scale == 1 {
        return values.clone();
    }
    Set::from_ranges(values.0.iter().map(|&(lo, hi)| (lo.div_ceil(scale), hi / scale)).collect())
}

fn identity(op: ir::ArithOp, c: u64) -> bool {
    use ir::ArithOp::*;
    match op {
        Add | Sub | Or | Xor | Shl | Shr => c == 0,
        Mul | Div => c == 1,
        And => c == u64::MAX,
        Mod => false,
    }
}

fn int_cmp(op: CmpOp, x: u64, y: u64) -> bool {
    match op {
        CmpOp::Eq => x == y,
        CmpOp::Ne => x != y,
        CmpOp::Lt => x < y,
        CmpOp::Le => x <= y,
        CmpOp::Gt => x > y,
        CmpOp::Ge => x >= y,
    }
}

fn const_cmp(op: CmpOp, x: Value, y: Value) -> Option<bool> {
    let as_int = |v: Value| match v {
        Value::Int(i) | Value::Mac(i) => Some(i),
        _ => None,
    };
    match op {
        CmpOp::Eq => Some(x == y || (as_int(x).is_some() && as_int(x) == as_int(y))),
        CmpOp::Ne => Some(!(x == y || (as_int(x).is_some() && as_int(x) == as_int(y)))),
        _ => Some(int_cmp(op, as_int(x)?, as_int(y)?)),
    }
}

/// An int expression over one field, at the field's value `v`.
fn eval_one(e: &ir::Expr, v: u64, env: &HashMap<ir::LocalId, ir::Expr>) -> Option<u64> {
    match &e.kind {
        ExprKind::Const(Value::Int(x) | Value::Mac(x)) => Some(*x),
        ExprKind::Field(_) => Some(v),
        ExprKind::Local(l) => eval_one(env.get(l)?, v, env),
        ExprKind::Neg(a) => eval_one(a, v, env).map(u64::wrapping_neg),
        ExprKind::BitNot(a) => eval_one(a, v, env).map(|x| !x),
        ExprKind::Arith(op, a, b) => Some(eval_arith(*op, eval_one(a, v, env)?, eval_one(b, v, env)?)),
        _ => None,
    }
}

fn term_fields(t: &Term) -> Vec<Field> {
    match t {
        Term::Const(_) => vec![],
        Term::Field(f) | Term::OneField(f) => vec![*f],
        Term::Opaque { fields, .. } => fields.clone(),
    }
}

fn term_reason(t: &Term) -> Option<String> {
    match t {
        Term::Opaque { reason, .. } => reason.clone(),
        _ => None,
    }
}

/// The fields an expression reads (through locals in scope).
pub fn fields_of(e: &ir::Expr, env: &HashMap<ir::LocalId, ir::Expr>) -> Vec<Field> {
    let mut out = Vec::new();
    walk_fields(e, env, &mut out);
    out.sort();
    out.dedup();
    out
}

fn fields_of_all(es: &[ir::Expr], env: &HashMap<ir::LocalId, ir::Expr>) -> Vec<Field> {
    let mut out = Vec::new();
    for e in es {
        walk_fields(e, env, &mut out);
    }
    out.sort();
    out.dedup();
    out
}

fn walk_fields(e: &ir::Expr, env: &HashMap<ir::LocalId, ir::Expr>, out: &mut Vec<Field>) {
    match &e.kind {
        ExprKind::Field(f) => out.push(*f),
        ExprKind::Const(_) => {}
        ExprKind::Local(l) => {
            if let Some(v) = env.get(l) {
                walk_fields(v, env, out)
            }
        }
        ExprKind::MapRead { keys, .. } | ExprKind::Limit { keys, .. } => keys.iter().for_each(|k| walk_fields(k, env, out)),
        ExprKind::Neg(a) | ExprKind::BitNot(a) | ExprKind::Not(a) | ExprKind::In(a, _) => walk_fields(a, env, out),
        ExprKind::Arith(_, a, b) | ExprKind::Cmp(_, a, b) | ExprKind::And(a, b) | ExprKind::Or(a, b) => {
            walk_fields(a, env, out);
            walk_fields(b, env, out);
        }
    }
}

/// Prefixes of an address interval, for display.
pub fn addr_prefixes(lo: u128, hi: u128, v6: bool) -> Vec<(u128, u32)> {
    prefixes(lo, hi, if v6 { 128 } else { 32 })
}

#[allow(dead_code)]
const _: u128 = PROTO_ABSENT;
