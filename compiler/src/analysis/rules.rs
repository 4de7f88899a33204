//! Rules to decisions: each probe of a program compiled to the regions
//! where it decides and what it decides there (the first-match walk over
//! them is `mod.rs`'s).

use super::predicate::{Compiler, Unknown, Want};
use super::space::{Cube, Dim, Set, Space};
use crate::ir::{self, ExprKind, StmtKind};
use std::collections::HashMap;
use xpol_lang::ast::{Hook, Verdict};

/// What a program does with a packet.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Pass,
    Drop,
    Tx,
    Abort,
    /// `redirect` to this interface.
    Redirect(String),
    /// `lb(POOL)`: balanced to a backend of the pool (which one, and
    /// whether it has one, depends on the pool's state).
    Lb(String),
    /// `synproxy(...)` with its options resolved: a SYN answered with a cookie, an ACK
    /// passed or dropped by its cookie, the rest dropped (which of these
    /// depends on the kernel's cookie secret; the same options decide
    /// alike).
    Synproxy(String),
    /// Depends on more than the packet: the reasons.
    Depends(Vec<String>),
}

impl Action {
    pub fn text(&self) -> String {
        match self {
            Action::Pass => "pass".into(),
            Action::Drop => "drop".into(),
            Action::Tx => "tx".into(),
            Action::Abort => "abort".into(),
            Action::Redirect(i) => format!("redirect({i})"),
            Action::Lb(p) => format!("lb({p})"),
            Action::Synproxy(text) => text.clone(),
            Action::Depends(r) => format!("depends on {}", r.join(", ")),
        }
    }
}

/// The outcome of a packet: the action and the rule that decided
/// (its identity: label or header text; `None`: no rule, the default).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Decision {
    pub action: Action,
    pub rule: Option<RuleRef>,
}

/// A rule as the analysis names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleRef {
    /// The rule's identity (docs/language.md, "Rule labels and rule
    /// identity"): its label, else its header.
    pub identity: String,
    pub id: ir::RuleId,
    /// 1-based line of the rule, for people.
    pub line: Option<usize>,
    /// A hash of the rule's signature (header, body, sets): two versions
    /// of a rule that depends on state decide alike only when equal.
    pub signature_hash: u64,
}

/// One probe compiled.
#[derive(Clone, Debug)]
pub struct CompiledRule {
    pub rule: RuleRef,
    pub span: xpol_lang::Span,
    /// What the rule is, for aligning two versions of a policy: its
    /// header, body and the contents of the sets it reads.
    pub signature: String,
    /// Where it decides, and what (disjoint); packets elsewhere go on.
    pub decides: Vec<(Space, Action)>,
    /// The smallest cube holding every region of `decides`.
    pub bound: Option<Cube>,
}

/// A program compiled: its rules in order.
#[derive(Clone, Debug)]
pub struct CompiledProgram {
    pub hook: Hook,
    pub rules: Vec<CompiledRule>,
}

fn outcome(v: Verdict, hook: Hook) -> Action {
    let tc = hook != Hook::Xdp;
    match (v, tc) {
        (Verdict::Pass, _) => Action::Pass,
        (Verdict::Drop, _) | (Verdict::Abort | Verdict::Tx, true) => Action::Drop,
        (Verdict::Tx, false) => Action::Tx,
        (Verdict::Abort, false) => Action::Abort,
    }
}

/// Compiles every probe of `prog`. `line_of` gives a span's line.
pub fn compile_program(c: &mut Compiler, prog: &ir::Program, line_of: &dyn Fn(xpol_lang::Span) -> Option<usize>) -> CompiledProgram {
    let policy = c.policy;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut rules = Vec::with_capacity(prog.probes.len());
    for probe in &prog.probes {
        let r = &policy.rules[probe.rule as usize];
        // Identity as `apply::rule_identities` gives it: the label, else
        // the header with ` #N` for repeats.
        let mut identity = r.label.clone().unwrap_or_else(|| r.text.clone());
        let n = seen.entry(identity.clone()).or_insert(0);
        *n += 1;
        if *n > 1 && r.label.is_none() {
            identity = format!("{identity} #{n}");
        }
        let signature = signature(policy, probe, c.symbolic_sets);
        let signature_hash = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            signature.hash(&mut h);
            h.finish()
        };
        let rule = RuleRef { identity, id: probe.rule, line: line_of(r.span), signature_hash };
        c.env.clear();
        let (sure, maybe, unknowns) = match &probe.predicate {
            None => (c.universe.clone(), Space::empty(), Vec::new()),
            Some(p) => {
                let may = c.region(p, Want::MayTrue);
                let unknowns = c.take_unknowns();
                c.spend((may.len() * may.len()) as u64);
                if unknowns.is_empty() {
                    (disjoint(may), Space::empty(), unknowns)
                } else {
                    let sure = disjoint(c.region(p, Want::SureTrue));
                    c.take_unknowns();
                    let maybe = disjoint(may).minus(&sure);
                    (sure, maybe, unknowns)
                }
            }
        };
        let mut decides = Vec::new();
        if !maybe.is_empty() {
            // Where the predicate may or may not hold, what the body
            // would decide depends on the state; what it would not decide
            // goes on either way.
            let mut rest = maybe;
            let mut would = Vec::new();
            body(c, &probe.body, &mut rest, prog.hook, &mut would);
            for (s, a) in would {
                let mut r = reasons(&unknowns);
                match a {
                    Action::Depends(more) => {
                        r.extend(more);
                        r.sort();
                        r.dedup();
                    }
                    // What the rule does if it fires: part of the decision.
                    a => r.push(format!("if it holds: {}", a.text())),
                }
                decides.push((s, Action::Depends(r)));
            }
        }
        let mut rest = sure;
        c.env.clear();
        body(c, &probe.body, &mut rest, prog.hook, &mut decides);
        decides.retain(|(s, _)| !s.is_empty());
        let bound = bound(decides.iter().flat_map(|(s, _)| s.0.iter()));
        rules.push(CompiledRule { rule, span: r.span, signature, decides, bound });
    }
    CompiledProgram { hook: prog.hook, rules }
}

fn reasons(u: &[Unknown]) -> Vec<String> {
    let mut r: Vec<String> = u.iter().map(|u| u.reason.clone()).collect();
    r.sort();
    r.dedup();
    r
}

/// A union of possibly overlapping cubes made disjoint.
pub fn disjoint(s: Space) -> Space {
    if s.0.len() <= 1 {
        return s;
    }
    let mut out = Space::empty();
    for c in s.0 {
        let piece = Space(vec![c]).minus(&out);
        out.extend_disjoint(piece);
    }
    out
}

/// The statements of a body run on the packets of `region`: what decides
/// goes to `out`, and `region` is left with the packets that go on.
fn body(c: &mut Compiler, stmts: &[ir::Stmt], region: &mut Space, hook: Hook, out: &mut Vec<(Space, Action)>) {
    for s in stmts {
        if region.is_empty() {
            return;
        }
        match &s.kind {
            StmtKind::Verdict(v) => {
                out.push((std::mem::take(region), outcome(*v, hook)));
                return;
            }
            StmtKind::Redirect(i) => {
                out.push((std::mem::take(region), Action::Redirect(c.policy.redirects[*i].ifname.clone())));
                return;
            }
            StmtKind::Lb(b) => {
                // `lb` passes what is not IP.
                let not_ip = Cube::full().with(Dim::L3, Set::one(0));
                let pass = region.intersect_cube(&not_ip);
                let ip = region.minus(&Space(vec![not_ip]));
                out.push((pass, Action::Pass));
                out.push((ip, Action::Lb(c.policy.pools[b.pool].name.clone())));
                *region = Space::empty();
                return;
            }
            StmtKind::Synproxy(id) => {
                out.push((std::mem::take(region), Action::Synproxy(c.policy.synproxies[*id].canonical())));
                return;
            }
            StmtKind::Let { local, value } => {
                c.env.insert(*local, value.clone());
            }
            // A record of the packet, a map or dynamic set written: the
            // verdict is what follows.
            StmtKind::MapUpdate { .. } | StmtKind::Log(_) | StmtKind::SetWrite { .. } => {}
            StmtKind::If { cond, then_body, else_body } => {
                let may = disjoint(c.region(cond, Want::MayTrue));
                let unknowns = c.take_unknowns();
                let sure = if unknowns.is_empty() { may.clone() } else { disjoint(c.region(cond, Want::SureTrue)) };
                c.take_unknowns();
                let mut then_r = region.intersect(&sure);
                let mut else_r = region.minus(&may);
                if !unknowns.is_empty() {
                    let depends = region.intersect(&may).minus(&sure);
                    out.push((depends, Action::Depends(reasons(&unknowns))));
                }
                let env = c.env.clone();
                body(c, then_body, &mut then_r, hook, out);
                c.env = env.clone();
                body(c, else_body, &mut else_r, hook, out);
                c.env = env;
                then_r.extend_disjoint(else_r);
                *region = then_r;
            }
        }
    }
}

/// The smallest cube holding all of `cubes`.
pub fn bound<'a>(cubes: impl Iterator<Item = &'a Cube>) -> Option<Cube> {
    let mut b: Option<Cube> = None;
    for c in cubes {
        match &mut b {
            None => b = Some(c.clone()),
            Some(b) => {
                for i in 0..b.0.len() {
                    if b.0[i] != c.0[i] {
                        let (lo, hi) = (b.0[i].first().unwrap_or(0).min(c.0[i].first().unwrap_or(0)), last(&b.0[i]).max(last(&c.0[i])));
                        b.0[i] = Set::range(lo, hi);
                    }
                }
            }
        }
    }
    b
}

fn last(s: &Set) -> u128 {
    s.0.last().map(|r| r.1).unwrap_or(0)
}

/// A probe's text for alignment: header, label, body, and the declared
/// contents of the named sets it reads. `log` statements are left out:
/// they write records and decide nothing, so a rule that only gained,
/// lost or changed a `log` decides as before.
fn signature(policy: &ir::Policy, probe: &ir::Probe, symbolic_sets: bool) -> String {
    let r = &policy.rules[probe.rule as usize];
    let mut s = format!("{:?}|{}|", r.label, probe.predicate.as_ref().map(|p| policy.expr_text(p)).unwrap_or_default());
    s.push_str(&policy.body_text(&without_logs(&probe.body)));
    let mut sets = Vec::new();
    if let Some(p) = &probe.predicate {
        named_sets(p, &mut sets);
    }
    for st in &probe.body {
        stmt_sets(st, &mut sets);
    }
    sets.sort();
    sets.dedup();
    for id in sets {
        let set = &policy.sets[id];
        // Symbolic sets: the name is the set, whatever it is declared with.
        if symbolic_sets && set.mutable {
            s.push_str(&format!("|{}", set.name));
        } else {
            // The contents by their hash, not their text: a set of a
            // million prefixes would add megabytes to every rule that
            // reads it (64 bits: two different contents collide with a
            // chance of one in 2^64, and then only align two rules).
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            set.contents.hash(&mut h);
            s.push_str(&format!("|{}=#{:016x}", set.name, h.finish()));
        }
    }
    s
}

/// A body with its `log` statements taken out, at every depth.
fn without_logs(body: &[ir::Stmt]) -> Vec<ir::Stmt> {
    body.iter()
        .filter(|s| !matches!(s.kind, StmtKind::Log(_)))
        .map(|s| match &s.kind {
            StmtKind::If { cond, then_body, else_body } => ir::Stmt {
                kind: StmtKind::If { cond: cond.clone(), then_body: without_logs(then_body), else_body: without_logs(else_body) },
                span: s.span,
            },
            _ => s.clone(),
        })
        .collect()
}

fn stmt_sets(s: &ir::Stmt, out: &mut Vec<usize>) {
    match &s.kind {
        StmtKind::If { cond, then_body, else_body } => {
            named_sets(cond, out);
            then_body.iter().chain(else_body).for_each(|s| stmt_sets(s, out));
        }
        StmtKind::Let { value, .. } => named_sets(value, out),
        _ => {}
    }
}

fn named_sets(e: &ir::Expr, out: &mut Vec<usize>) {
    match &e.kind {
        ExprKind::In(a, set) => {
            if let ir::SetRef::Named(id) = set {
                out.push(*id);
            }
            named_sets(a, out);
        }
        ExprKind::Const(_) | ExprKind::Field(_) | ExprKind::Local(_) => {}
        ExprKind::MapRead { keys, .. } | ExprKind::Limit { keys, .. } => keys.iter().for_each(|k| named_sets(k, out)),
        ExprKind::Neg(a) | ExprKind::BitNot(a) | ExprKind::Not(a) => named_sets(a, out),
        ExprKind::Arith(_, a, b) | ExprKind::Cmp(_, a, b) | ExprKind::And(a, b) | ExprKind::Or(a, b) => {
            named_sets(a, out);
            named_sets(b, out);
        }
    }
}
