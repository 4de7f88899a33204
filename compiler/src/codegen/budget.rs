//! Kernel limits checked on the compiled object, before anything is
//! loaded: each program's size, the maps it uses, and the branches the
//! verifier must keep pending on its first walk. Beyond a limit the error points at the rule
//! where the program crosses it (line info, `verifier::span_of_insn`).
//!
//! A long program whose size is certainly over the limit is refused
//! earlier, while its rules are lowered and before LLVM runs
//! ([`SizeFloor`]): compiling tens of thousands of rules only to measure
//! that they do not fit took a minute.

use super::{program_name, Located};
use crate::check::fields::Field;
use crate::ir::{self, CmpOp, ExprKind, Value};
use std::collections::HashMap;
use xpol_lang::meta::{self, SetElem};
use xpol_lang::ast::Hook;
use xpol_lang::{Diagnostic, FileId, SourceMap, Span};

/// BPF jump offsets are 16 bits; LLVM 14 has no longer jump and would wrap
/// them silently, so a program past this size could jump anywhere.
pub const MAX_PROGRAM_INSNS: usize = 32_767;

/// The verifier's `BPF_COMPLEXITY_LIMIT_JMP_SEQ`: the branch states it
/// keeps pending at once ("The sequence of N jumps is too complex").
pub const MAX_JUMP_SEQUENCE: usize = 8_192;

/// The verifier's `MAX_USED_MAPS`: maps one program may use.
pub const MAX_MAPS_PER_PROGRAM: usize = 64;

/// Every budget, for every program of the object.
pub fn check_object(object: &[u8], policy: &ir::Policy, located: &[Located], sources: &SourceMap) -> Result<(), Vec<Diagnostic>> {
    let mut diags = Vec::new();
    for prog in &policy.programs {
        let name = program_name(prog.hook);
        let Some((section, start, insns)) = crate::verifier::program_range(object, name) else { continue };
        let hook = prog.hook.as_str();
        let at = |insn: usize, label: &str, d: Diagnostic| match crate::verifier::span_of_insn(object, name, insn, located, sources) {
            Some(span) => d.with_label(span, label),
            None => d,
        };
        let maps = crate::verifier::first_map_uses(object, name);
        let size_over = insns > MAX_PROGRAM_INSNS;
        // Which rule each instruction comes from, for the limits whose
        // crossing is a matter of the rules' order in the source (size,
        // maps) rather than of the instructions' order in the object,
        // which LLVM lays out as it likes.
        let rules = (size_over || maps.len() > MAX_MAPS_PER_PROGRAM).then(|| RuleOfInsn::new(prog, &crate::verifier::insn_spans(object, name, located, sources)));
        if let Some(rules) = rules.as_ref().filter(|_| size_over) {
            let d = Diagnostic::error("xpol::budget::program_size", format!("the `{hook}` program needs {insns} instructions, more than the {MAX_PROGRAM_INSNS} a BPF jump can span"))
                .with_help("put long literal sets in a `set` (one map lookup instead of a comparison each), or merge rules with the same verdict into one rule with `in { ... }`");
            diags.push(match size_crossing(prog, rules, MAX_PROGRAM_INSNS) {
                Some((probe, total)) => {
                    let span = policy.rules.iter().find(|r| r.id == prog.probes[probe].rule).map_or(prog.probes[probe].span, |r| r.span);
                    d.with_label(span, format!("with this rule the program reaches {total} instructions"))
                }
                None => at(MAX_PROGRAM_INSNS, "the program passes the limit here", d),
            });
            continue;
        }
        let code = program_code(object, &section, start, insns);
        if let Some(rules) = rules.as_ref().filter(|_| maps.len() > MAX_MAPS_PER_PROGRAM) {
            let d = Diagnostic::error(
                "xpol::budget::maps",
                format!("the `{hook}` program uses {} maps, more than the {MAX_MAPS_PER_PROGRAM} the kernel allows one program", maps.len()),
            )
            .with_help("each `@map` is a map (the named and large constant sets share a few: IPv4 tables, IPv6 tables and trie, and a hash map for ports, integers and MACs), besides xpol's own (rule counters; parsed facts in long policies): use fewer `@maps` in this hook");
            let crossing = maps_in_source_order(&crate::verifier::map_references(object, name), rules).into_iter().nth(MAX_MAPS_PER_PROGRAM);
            diags.push(match crossing {
                Some((map, Some(span))) => d.with_label(span, format!("{}, the program's map {}", describe_map(&map, policy), MAX_MAPS_PER_PROGRAM + 1)),
                _ => at(maps[MAX_MAPS_PER_PROGRAM], &format!("map {} of the program", MAX_MAPS_PER_PROGRAM + 1), d),
            });
        }
        let estimate = processed_estimate(policy, prog);
        if estimate.total() > MAX_PROCESSED_INSNS {
            diags.extend(too_much_verifier_work(policy, prog, &estimate));
        }
        if let Some(insn) = first_walk_crossing(code, MAX_JUMP_SEQUENCE) {
            let d = Diagnostic::error(
                "xpol::budget::jump_sequence",
                format!("the `{hook}` program makes the verifier keep more than {MAX_JUMP_SEQUENCE} branches pending: the rules a packet can pass one after another hold too many conditions"),
            )
            .with_help("merge rules with the same verdict into one rule with `in { ... }`, or put the values in a named `set` (one lookup for all of them)");
            diags.push(at(insn, "the branches pending reach the limit here", d));
        }
    }
    if diags.is_empty() {
        Ok(())
    } else {
        Err(diags)
    }
}

/// The verifier's `BPF_COMPLEXITY_LIMIT_INSNS`: instructions it processes
/// (walks, counting each instruction once per state it reaches it in)
/// before it gives up on a program.
pub const MAX_PROCESSED_INSNS: usize = 1_000_000;

/// What the verifier processes for a program, estimated from the IR
/// before anything is compiled: a sum of per-construct costs, each at or
/// above the most the kernel (6.18) was measured to process for that
/// construct (`tests/limits.rs` checks the sum against the kernel's count
/// on every policy it loads). The verifier's work is not a function of
/// the IR in general (it depends on which states it can prune), but xpol
/// shapes programs so that it is nearly a sum: long programs keep the
/// parsed facts in a map (`codegen::specialized`) and each rule's work is
/// mostly its own. The costs, measured with `xpolc check --kernel` on
/// policies of one construct repeated:
///
/// - [`PROCESSED_BASE`]: the parser and the program's frame; at most
///   about 29,000 (XDP with `lb(.., nat)`'s program-wide code).
/// - a rule: [`PROCESSED_RULE`], and [`PROCESSED_TEST`] per comparison,
///   membership test or boolean operator of its condition (measured: 46
///   per rule of two comparisons with a verdict, 57 of three tests, 90 of
///   one comparison with a map update and no verdict; 210 for rules of ten
///   mixed terms with a verdict, 370 with a map update instead), and
///   [`PROCESSED_STMT`] per `@map` update, `let` or `if`. Kept low: a
///   program of thousands of rules must not be refused here when the
///   kernel processes a tenth of the limit (2,000 rules of three tests:
///   115,000, estimated 290,000).
/// - [`PROCESSED_LOG`] per `log` (about 1,100 with a rate, 200 without),
///   [`PROCESSED_LIMIT`] per `limit` (about 1,400 keyed).
/// - `lb`: its verifier work depends on the delivery and on how the
///   program is shaped. In a program with the facts in registers (at most
///   two `lb`: their weight keeps the rest in a map), up to about 75,000
///   each (GUE to IPv6 backends: 90,233 for a program of one such rule;
///   105,470 for one with three other rules), [`PROCESSED_LB_SPECIALIZED`]
///   with a margin (the weight keeps such a program far under the limit);
///   otherwise, per
///   `lb(.., nat)` 27,014 when the rules are NAT rules alone (36 of them
///   on one pool cross the limit), up to about 5% more with other rules
///   before them (the verifier walks the balancing code in more states):
///   [`PROCESSED_LB_NAT`] is 5% over, so 35 such rules, which the kernel
///   takes (with 974,000), are refused; per `lb(.., nat)` to IPv6
///   backends and per encapsulating `lb` at most about 6,600
///   ([`PROCESSED_LB_ENCAP`]).
/// - connection state: a program whose rules read `ct.state` about
///   100,000 to 127,000, recording connections or not, and one that
///   records them and has rules up to 110,000 ([`PROCESSED_CT_CLASSIFY`]);
///   one that only records them (the `tc:egress` program the table adds)
///   about 66,000 ([`PROCESSED_CT_RECORD`]).
/// - `synproxy`: about 9,000 to 16,000 each in a program with the facts in
///   the map (40 of them 378,418 in all; one after a `ct.state` rule
///   110,373), 30,000 for a lone one specialized (60,084 with its
///   program): [`PROCESSED_SYNPROXY`], times the specialized factor there.
///   A dynamic set's `add` or `delete` is a statement (60 of them with 30
///   tests of dynamic sets: 26,930).
pub const PROCESSED_BASE: usize = 30_000;
/// A run of rules lowered as tree walks (`classify.rs`): the walks'
/// instructions are the same for any rules; ClassBench's 100 to 10,000
/// rules, in one to six trees, took the verifier 24,000 to 29,000 with the
/// program's parse (`benches/classbench.rs`), so a run costs this and its
/// rules nothing.
pub const PROCESSED_CLASSIFIED_RUN: usize = 40_000;
pub const PROCESSED_RULE: usize = 40;
pub const PROCESSED_TEST: usize = 15;
pub const PROCESSED_STMT: usize = 150;
pub const PROCESSED_LOG: usize = 1_500;
pub const PROCESSED_LIMIT: usize = 2_000;
pub const PROCESSED_LB_SPECIALIZED: usize = 100_000;
pub const PROCESSED_LB_NAT: usize = 28_400;
pub const PROCESSED_LB_ENCAP: usize = 8_000;
pub const PROCESSED_SYNPROXY: usize = 20_000;
pub const PROCESSED_CT_CLASSIFY: usize = 135_000;
pub const PROCESSED_CT_RECORD: usize = 70_000;
/// A test of a named set of prefixes, besides [`PROCESSED_TEST`]: the
/// IPv4 tables' walk (up to three reads, each a branch) and the IPv6
/// part's lookup. Measured on rules of one such test with a verdict in
/// long programs: about 140 a rule for IPv4 prefixes alone, 170 with
/// IPv6 ones in the shared trie (a `set` has an IPv4 walk for the
/// prefixes it may get), where a rule of one comparison takes 55.
pub const PROCESSED_CIDR_SET: usize = 130;
/// A test of a set in the IPv6 tables, besides [`PROCESSED_CIDR_SET`]:
/// a walk of up to 15 levels inlined where it is used (eight such tests,
/// two of each of four sets, in a program specialized per parse end: about
/// 4,000 each, where [`PROCESSED_SPECIALIZED_FACTOR`] applies).
pub const PROCESSED_IPV6_TABLE_SET: usize = 1_200;
/// A test of a named set of ports, integers or MACs, besides
/// [`PROCESSED_TEST`]: the key and a hash lookup (57 to 59 a rule of one
/// such test with a verdict, in long programs).
pub const PROCESSED_HASH_SET: usize = 10;
/// In a program that also balances (`lb`), the work is not quite a sum:
/// the first `limit` or `log` adds about 16,500 (the verifier walks part
/// of the balancing code again for the states it leaves), each further
/// `limit` about 3,500 and `log` about 4,400 ([`PROCESSED_LIMIT_BESIDE_LB`],
/// [`PROCESSED_LOG_BESIDE_LB`]; a `log` with a rate counts as both).
pub const PROCESSED_STATE_BESIDE_LB: usize = 20_000;
pub const PROCESSED_LIMIT_BESIDE_LB: usize = 4_000;
/// A `log` in a TC program whose rules are specialized per parse end (at
/// most six: their weight keeps more in the facts map): the verifier
/// walks its copy of the packet once per parse end; four rate-limited
/// logs that let packets go on took 62,000 (15,000 in XDP).
pub const PROCESSED_LOG_TC_SPECIALIZED: usize = 15_000;
/// Rules specialized per parse end (at most 64, of a weight of at most
/// `codegen::SPECIALIZE_MAX_WEIGHT`) are walked once per end the
/// verifier cannot merge: their rule, test, statement, `limit` and `log`
/// costs are multiplied by this (a `limit`, a rate-limited `log`, a
/// `log` and two `@map` updates that let packets go on, in six XDP rules:
/// 36,648 processed, 36,160 estimated without the factor). Generous:
/// the weight bounds such a program far under the limit.
pub const PROCESSED_SPECIALIZED_FACTOR: usize = 4;
pub const PROCESSED_LOG_BESIDE_LB: usize = 5_000;

/// [`processed_estimate`] of one program: what the program costs before
/// its rules, and what each rule (each probe, in the program's order)
/// adds.
pub struct ProcessedEstimate {
    pub base: usize,
    pub per_probe: Vec<usize>,
}

impl ProcessedEstimate {
    pub fn total(&self) -> usize {
        self.base + self.per_probe.iter().sum::<usize>()
    }

    /// The probe with which the running total passes `limit`, and the
    /// total there.
    fn crossing(&self, limit: usize) -> Option<(usize, usize)> {
        let mut total = self.base;
        self.per_probe.iter().enumerate().find_map(|(i, n)| {
            total += n;
            (total > limit).then_some((i, total))
        })
    }
}

/// The verifier's work for program `prog` of `policy`, estimated (see
/// [`MAX_PROCESSED_INSNS`] for the costs and how they were measured).
pub fn processed_estimate(policy: &ir::Policy, prog: &ir::Program) -> ProcessedEstimate {
    let (mut balances, mut stateful) = (false, false);
    for p in &prog.probes {
        visit_stmts(&p.body, &mut |s| match &s.kind {
            ir::StmtKind::Lb(_) => balances = true,
            ir::StmtKind::Log(_) => stateful = true,
            _ => {}
        });
        stateful |= p.predicate.as_ref().is_some_and(has_limit) || any_expr(&p.body, &has_limit);
    }
    let specialized = super::specialized(policy);
    // Rules specialized per parse end are walked once per end: their
    // costs times [`PROCESSED_SPECIALIZED_FACTOR`].
    let times = if specialized { PROCESSED_SPECIALIZED_FACTOR } else { 1 };
    let costs = Costs {
        policy,
        specialized,
        rule: PROCESSED_RULE * times,
        test: PROCESSED_TEST * times,
        stmt: PROCESSED_STMT * times,
        limit: times * if balances { PROCESSED_LIMIT_BESIDE_LB } else { PROCESSED_LIMIT },
        named_sets: Vec::new(),
        log: if balances {
            PROCESSED_LOG_BESIDE_LB * times
        } else if specialized && prog.hook != Hook::Xdp {
            PROCESSED_LOG_TC_SPECIALIZED
        } else {
            PROCESSED_LOG * times
        },
    };
    let records = policy.conntrack.as_ref().is_some_and(|ct| ct.trackers.contains(&prog.hook));
    // Measured with the recording where the program also records; a
    // program that records and has rules of its own costs about as much
    // (110,000 measured for a `tc:egress` of four rules).
    let ct = if policy.conntrack.is_some() && (super::parse::reads_field(prog, Field::CtState) || records && !prog.probes.is_empty()) {
        PROCESSED_CT_CLASSIFY
    } else if records {
        PROCESSED_CT_RECORD
    } else {
        0
    };
    let beside_lb = if balances && stateful { PROCESSED_STATE_BESIDE_LB } else { 0 };
    let base = PROCESSED_BASE + ct + beside_lb;
    // What a test of each named set adds, by `ir::SetId`.
    let in_v6_tables = super::ipv6_set::table_sets(policy);
    let named_sets = policy
        .sets
        .iter()
        .enumerate()
        .map(|(i, s)| match s.elem {
            SetElem::Cidr if in_v6_tables.contains(&i) => times * (PROCESSED_CIDR_SET + PROCESSED_IPV6_TABLE_SET),
            SetElem::Cidr => times * PROCESSED_CIDR_SET,
            SetElem::Int | SetElem::Mac => times * PROCESSED_HASH_SET,
        })
        .collect();
    let costs = Costs { named_sets, ..costs };
    let runs = super::classify::runs(policy, prog);
    let per_probe = prog
        .probes
        .iter()
        .enumerate()
        .map(|(i, p)| match runs.iter().find(|r| r.contains(&i)) {
            Some(run) if run.start == i => PROCESSED_CLASSIFIED_RUN,
            Some(_) => 0,
            None => costs.rule + p.predicate.as_ref().map_or(0, |e| costs.expr(e)) + costs.stmts(&p.body),
        })
        .collect();
    ProcessedEstimate { base, per_probe }
}

/// What each construct costs in one program.
struct Costs<'a> {
    policy: &'a ir::Policy,
    specialized: bool,
    rule: usize,
    test: usize,
    stmt: usize,
    limit: usize,
    log: usize,
    /// What a test of each named set adds to [`Costs::test`].
    named_sets: Vec<usize>,
}

impl Costs<'_> {
    fn expr(&self, e: &ir::Expr) -> usize {
        match &e.kind {
            ExprKind::Field(Field::CtState) => self.test,
            ExprKind::Field(_) | ExprKind::Const(_) | ExprKind::Local(_) => 0,
            ExprKind::MapRead { keys, .. } => self.stmt + keys.iter().map(|k| self.expr(k)).sum::<usize>(),
            ExprKind::Limit { keys, .. } => self.limit + keys.iter().map(|k| self.expr(k)).sum::<usize>(),
            ExprKind::Neg(a) | ExprKind::BitNot(a) => self.expr(a),
            ExprKind::In(a, ir::SetRef::Named(id)) => self.test + self.named_sets.get(*id).copied().unwrap_or(0) + self.expr(a),
            ExprKind::Not(a) | ExprKind::In(a, _) => self.test + self.expr(a),
            ExprKind::Arith(_, a, b) => self.expr(a) + self.expr(b),
            ExprKind::Cmp(_, a, b) | ExprKind::And(a, b) | ExprKind::Or(a, b) => self.test + self.expr(a) + self.expr(b),
        }
    }

    fn stmts(&self, body: &[ir::Stmt]) -> usize {
        body.iter()
            .map(|s| match &s.kind {
                ir::StmtKind::Verdict(_) | ir::StmtKind::Redirect(_) => 0,
                // A rate is a `limit` of its own.
                ir::StmtKind::Log(id) => self.log + if self.policy.logs.get(*id).is_some_and(|l| l.limit.is_some()) { self.limit } else { 0 },
                ir::StmtKind::SetWrite { key, .. } => self.stmt + self.expr(key),
                ir::StmtKind::Synproxy(_) => PROCESSED_SYNPROXY * if self.specialized { PROCESSED_SPECIALIZED_FACTOR } else { 1 },
                ir::StmtKind::Lb(_) if self.specialized => PROCESSED_LB_SPECIALIZED,
                ir::StmtKind::Lb(b) => match b.delivery {
                    ir::Delivery::Nat { .. } if self.policy.pools.get(b.pool).is_some_and(|p| p.v6) => PROCESSED_LB_ENCAP,
                    ir::Delivery::Nat { .. } => PROCESSED_LB_NAT,
                    ir::Delivery::Encap { .. } => PROCESSED_LB_ENCAP,
                },
                ir::StmtKind::If { cond, then_body, else_body } => self.stmt + self.expr(cond) + self.stmts(then_body) + self.stmts(else_body),
                ir::StmtKind::Let { value, .. } => self.stmt + self.expr(value),
                ir::StmtKind::MapUpdate { keys, op, .. } => {
                    let value = match op {
                        ir::MapOp::Count => 0,
                        ir::MapOp::Sum(e) | ir::MapOp::Assign(e) => self.expr(e),
                    };
                    self.stmt + keys.iter().map(|k| self.expr(k)).sum::<usize>() + value
                }
            })
            .sum()
    }
}

/// Whether `e` holds a `limit`.
fn has_limit(e: &ir::Expr) -> bool {
    match &e.kind {
        ExprKind::Limit { .. } => true,
        ExprKind::Field(_) | ExprKind::Const(_) | ExprKind::Local(_) => false,
        ExprKind::MapRead { keys, .. } => keys.iter().any(has_limit),
        ExprKind::Neg(a) | ExprKind::BitNot(a) | ExprKind::Not(a) | ExprKind::In(a, _) => has_limit(a),
        ExprKind::Arith(_, a, b) | ExprKind::Cmp(_, a, b) | ExprKind::And(a, b) | ExprKind::Or(a, b) => has_limit(a) || has_limit(b),
    }
}

/// Whether an expression of the statements `body` (conditions, values,
/// keys) satisfies `f`.
fn any_expr(body: &[ir::Stmt], f: &impl Fn(&ir::Expr) -> bool) -> bool {
    body.iter().any(|s| match &s.kind {
        ir::StmtKind::If { cond, then_body, else_body } => f(cond) || any_expr(then_body, f) || any_expr(else_body, f),
        ir::StmtKind::Let { value, .. } => f(value),
        ir::StmtKind::MapUpdate { keys, op, .. } => keys.iter().any(f) || matches!(op, ir::MapOp::Sum(e) | ir::MapOp::Assign(e) if f(e)),
        _ => false,
    })
}

/// The error for a program whose [`processed_estimate`] passes
/// [`MAX_PROCESSED_INSNS`], at the rule where it does, with a help for
/// what that rule holds.
fn too_much_verifier_work(policy: &ir::Policy, prog: &ir::Program, estimate: &ProcessedEstimate) -> Option<Diagnostic> {
    let hook = prog.hook.as_str();
    let d = Diagnostic::error(
        "xpol::budget::processed",
        format!(
            "the `{hook}` program would make the kernel's verifier process about {} instructions, more than the {MAX_PROCESSED_INSNS} it allows one program (an estimate from the rules, at or above what the kernel processes for each)",
            estimate.total()
        ),
    );
    let Some((probe, total)) = estimate.crossing(MAX_PROCESSED_INSNS) else {
        // The program's own code alone: nothing a rule can change.
        let span = policy.conntrack.as_ref().map(|ct| ct.span).or(prog.probes.first().map(|p| p.span))?;
        return Some(d.with_label(span, "the program's own code passes the limit").with_help("split the policy: give this hook fewer stateful features"));
    };
    let p = &prog.probes[probe];
    let mut has = (false, false, false);
    visit_stmts(&p.body, &mut |s| match &s.kind {
        ir::StmtKind::Lb(b) => {
            if matches!(b.delivery, ir::Delivery::Nat { .. }) {
                has.0 = true
            } else {
                has.1 = true
            }
        }
        ir::StmtKind::Log(_) => has.2 = true,
        _ => {}
    });
    let help = match has {
        (true, _, _) => "the verifier walks each `lb(POOL, nat)` on its own (about 27,000 instructions each, 28,400 in the estimate): balance several addresses to one pool in one rule (`ip.dst in { ... }`) rather than a rule each",
        (_, true, _) => "the verifier walks each `lb` on its own: balance several addresses to one pool in one rule (`ip.dst in { ... }`) rather than a rule each",
        (_, _, true) => "the verifier walks each `log` and `limit` on its own: log from fewer rules (one rule with `in { ... }` for several values), or split the policy across hooks",
        _ => "merge rules with the same body into one rule with `in { ... }` or a named `set`, or split the policy across hooks",
    };
    let span = policy.rules.iter().find(|r| r.id == p.rule).map_or(p.span, |r| r.span);
    Some(d.with_label(span, format!("with this rule the estimate reaches {total}")).with_help(help))
}

fn visit_stmts(body: &[ir::Stmt], f: &mut impl FnMut(&ir::Stmt)) {
    for s in body {
        f(s);
        if let ir::StmtKind::If { then_body, else_body, .. } = &s.kind {
            visit_stmts(then_body, f);
            visit_stmts(else_body, f);
        }
    }
}

/// A lower bound on the size of a long program (one whose rules read the
/// parsed facts from the facts map: `Lower::rules_on_facts_map`), summed
/// rule by rule as they are lowered, and what a rule adds to it:
///
/// - the volatile loads in the block where the rule starts, which every
///   packet that reaches the rule runs (a reload of the facts' address,
///   and the facts the predicate reads before its first branch: a field's
///   value and its presence flag). LLVM removes no volatile load and
///   merges none, so each is a BPF instruction, as long as its block stays
///   reachable;
/// - one instruction for the decision of a predicate whose first test is a
///   field compared with a constant ([`decides_first`]): its outcome
///   depends on loads LLVM knows nothing of, both ways, so some
///   instruction (a jump, or a select, which BPF has only as a jump) must
///   decide it, one per rule (each rule's loads are its own, so no two
///   rules' tests can become one).
///
/// A rule's first block stays reachable unless LLVM can prove that an
/// earlier rule decides every packet. That needs an earlier rule that
/// always ends in a verdict and whose predicate LLVM can prove true for
/// every packet: once such a rule may be there ([`may_hold_always`]),
/// nothing after it is counted. Everything else the program holds (the
/// parser, the counting, the rest of each predicate, the bodies) only adds
/// to the size. The kernel removes no reachable code either, so the
/// program is too large as the kernel sees it too.
#[derive(Default)]
pub struct SizeFloor {
    /// Instructions certainly in the program.
    pub insns: usize,
    /// A rule before may decide every packet as far as LLVM can tell:
    /// later rules may be removed, and count nothing.
    closed: bool,
}

impl SizeFloor {
    /// Rule `probe`, whose first block holds `certain` volatile loads, was
    /// lowered. Returns whether the floor is now past the limit: the
    /// program is too large, and this is the rule where it crosses.
    pub fn add(&mut self, probe: &ir::Probe, certain: usize) -> bool {
        if self.closed {
            return false;
        }
        self.insns += certain + usize::from(probe.predicate.as_ref().is_some_and(decides_first));
        if super::ends(&probe.body) && probe.predicate.as_ref().is_none_or(may_hold_always) {
            self.closed = true;
        }
        self.insns > MAX_PROGRAM_INSNS
    }
}

/// The error for a program whose [`SizeFloor`] crossed the limit at
/// `probe`: the code and help of the check on the compiled object.
pub fn too_large_early(hook: xpol_lang::ast::Hook, floor: &SizeFloor, rules: usize, probe: &ir::Probe) -> Diagnostic {
    Diagnostic::error(
        "xpol::budget::program_size",
        format!(
            "the `{}` program needs more than the {MAX_PROGRAM_INSNS} instructions a BPF jump can span: its first {rules} rules alone take at least {} (the fields each reads and tests first; refused before compiling the rest)",
            hook.as_str(),
            floor.insns
        ),
    )
    .with_help("put long literal sets in a `set` (one map lookup instead of a comparison each), or merge rules with the same verdict into one rule with `in { ... }`")
    .with_label(probe.span, "the program passes the limit here")
}

/// Whether predicate `e` starts (as `Lower::branch3` lowers it: the left
/// operand of `&&` and `||` first) with a field other than `pkt.len`
/// compared with a constant. Such a test holds for some packets and not
/// for others as far as LLVM can tell: the field's presence flag is a
/// volatile load (so it is not known to hold), and the checker refuses a
/// comparison no value of the field satisfies (`check::values`), while
/// every value of the field is one LLVM sees the loaded fact might give
/// (so it is not known to fail).
pub fn decides_first(e: &ir::Expr) -> bool {
    match &e.kind {
        ExprKind::Not(a) | ExprKind::And(a, _) | ExprKind::Or(a, _) => decides_first(a),
        ExprKind::Cmp(_, a, b) => matches!(
            (&a.kind, &b.kind),
            (ExprKind::Field(f), ExprKind::Const(_)) | (ExprKind::Const(_), ExprKind::Field(f)) if *f != Field::PktLen
        ),
        _ => false,
    }
}

/// Whether LLVM might prove that predicate `e` holds for every packet (as
/// `Lower::branch3` lowers it: the way to the next rule would then be
/// gone). A comparison, membership test or boolean field whose operands
/// read a field with a presence flag holds only when that flag, a
/// volatile load, is set: LLVM cannot prove that. Anything else
/// (constants, `pkt.len`, which is always present, locals and map reads,
/// whose presence LLVM might know) might be proven to hold.
pub fn may_hold_always(e: &ir::Expr) -> bool {
    constant_outcomes(e).0
}

/// Whether LLVM might prove `e` (as `Lower::branch3` lowers it) true for
/// every packet, and whether false for every packet.
fn constant_outcomes(e: &ir::Expr) -> (bool, bool) {
    match &e.kind {
        ExprKind::Const(Value::Bool(b)) => (*b, !*b),
        ExprKind::Not(a) => {
            let (t, f) = constant_outcomes(a);
            (f, t)
        }
        ExprKind::And(a, b) => {
            let ((ta, fa), (tb, fb)) = (constant_outcomes(a), constant_outcomes(b));
            (ta && tb, fa || fb)
        }
        ExprKind::Or(a, b) => {
            let ((ta, fa), (tb, fb)) = (constant_outcomes(a), constant_outcomes(b));
            (ta || tb, fa && fb)
        }
        _ if reads_presence_flag(e) => (false, false),
        // `pkt.len`, always present, as loaded (volatile, any 64-bit value
        // as far as LLVM knows), against a constant: provable only at the
        // ends of the range.
        ExprKind::Cmp(op, a, b) => match (&a.kind, &b.kind) {
            (ExprKind::Field(Field::PktLen), ExprKind::Const(Value::Int(c))) => pkt_len_outcomes(*op, *c),
            (ExprKind::Const(Value::Int(c)), ExprKind::Field(Field::PktLen)) => pkt_len_outcomes(op.flipped(), *c),
            _ => (true, true),
        },
        _ => (true, true),
    }
}

/// [`constant_outcomes`] of `pkt.len OP c`.
fn pkt_len_outcomes(op: CmpOp, c: u64) -> (bool, bool) {
    let (min, max) = (c == 0, c == u64::MAX);
    match op {
        CmpOp::Eq | CmpOp::Ne => (false, false),
        CmpOp::Ge => (min, false),
        CmpOp::Le => (max, false),
        CmpOp::Lt => (false, min),
        CmpOp::Gt => (false, max),
    }
}

/// Whether both outcomes of value `e` are and-ed with a field's presence
/// flag (`Lower::value`: a comparison's operands', a membership test's
/// value's, arithmetic's operands', a boolean field's own).
fn reads_presence_flag(e: &ir::Expr) -> bool {
    match &e.kind {
        ExprKind::Field(f) => *f != Field::PktLen,
        ExprKind::Neg(a) | ExprKind::BitNot(a) | ExprKind::Not(a) | ExprKind::In(a, _) => reads_presence_flag(a),
        ExprKind::Arith(_, a, b) | ExprKind::Cmp(_, a, b) => reads_presence_flag(a) || reads_presence_flag(b),
        _ => false,
    }
}

/// The probe (index in the program) each instruction was generated for,
/// from the span its line info points at; `None` for code no probe's span
/// holds (the packet parser before any rule, shared tails).
struct RuleOfInsn {
    probes: Vec<Option<usize>>,
    spans: Vec<Option<Span>>,
}

impl RuleOfInsn {
    fn new(prog: &ir::Program, spans: &[Option<Span>]) -> RuleOfInsn {
        // Per file, the probes' spans in source order (they do not overlap).
        let mut by_file: HashMap<FileId, Vec<(Span, usize)>> = HashMap::new();
        for (i, p) in prog.probes.iter().enumerate() {
            by_file.entry(p.span.file).or_default().push((p.span, i));
        }
        for v in by_file.values_mut() {
            v.sort_by_key(|(s, _)| s.start);
        }
        let probe_of = |s: Span| {
            let v = by_file.get(&s.file)?;
            let i = v.partition_point(|(p, _)| p.start <= s.start).checked_sub(1)?;
            let (p, probe) = v[i];
            (s.end <= p.end).then_some(probe)
        };
        RuleOfInsn { probes: spans.iter().map(|s| s.and_then(probe_of)).collect(), spans: spans.to_vec() }
    }
}

/// The probe with which the program's instructions, counted rule by rule
/// in the program's order (code of no rule first), pass `limit`, and the
/// count there.
fn size_crossing(prog: &ir::Program, rules: &RuleOfInsn, limit: usize) -> Option<(usize, usize)> {
    let mut per_probe = vec![0usize; prog.probes.len()];
    let mut total = 0;
    for p in &rules.probes {
        match p {
            Some(i) => per_probe[*i] += 1,
            None => total += 1,
        }
    }
    per_probe.iter().enumerate().find_map(|(i, n)| {
        total += n;
        (total > limit).then_some((i, total))
    })
}

/// The program's maps in the order the source first uses them: xpol's own
/// that no rule accounts for first (those used by code of no rule, and
/// the parsed facts, which the parser's code fills wherever its line info
/// points), then by the rule and the position in it of their first use;
/// each with the span of that use.
fn maps_in_source_order(references: &[(usize, String)], rules: &RuleOfInsn) -> Vec<(String, Option<Span>)> {
    let mut first: Vec<((usize, u32), String, Option<Span>)> = Vec::new();
    for (insn, map) in references {
        let span = rules.spans.get(*insn).copied().flatten();
        let probe = rules.probes.get(*insn).copied().flatten();
        let key = match probe {
            Some(p) if map != super::FACTS_MAP => (p + 1, span.map_or(0, |s| s.start)),
            _ => (0, 0),
        };
        match first.iter_mut().find(|(_, m, _)| m == map) {
            Some(f) if key < f.0 => *f = (key, map.clone(), span),
            Some(_) => {}
            None => first.push((key, map.clone(), span)),
        }
    }
    first.sort_by_key(|f| f.0);
    first.into_iter().map(|(_, m, s)| (m, s)).collect()
}

/// A map of the object in the policy's words.
fn describe_map(map: &str, policy: &ir::Policy) -> String {
    if let Some(name) = map.strip_prefix("xm_") {
        return format!("`@{name}`");
    }
    if let Some(pool) = policy.pools.iter().find(|p| map.starts_with(&format!("xl_{}_", p.name))) {
        return format!("a map of pool `{}`", pool.name);
    }
    if [meta::IPV4_TABLES_MAP, meta::IPV4_ROOT_MAP, meta::IPV4_MID_MAP, meta::IPV4_LEAF_MAP].contains(&map) {
        return "the IPv4 set tables".to_string();
    }
    if [meta::IPV6_NODES_MAP, meta::IPV6_TAILS_MAP].contains(&map) {
        return "the IPv6 set tables".to_string();
    }
    if map == meta::SETS_HASH_MAP {
        return "the hash map of the sets of ports, integers and MACs".to_string();
    }
    if map == meta::SETS_LPM6_MAP {
        return "the LPM trie of the sets' IPv6 prefixes".to_string();
    }
    format!("xpol's own map `{map}`")
}

/// The program's instructions (8 bytes each), empty when they cannot be read.
fn program_code<'a>(object: &'a [u8], section: &str, start: usize, insns: usize) -> &'a [u8] {
    use object::{Object, ObjectSection};
    let data = object::File::parse(object).ok().and_then(|f| f.section_by_name(section)?.data().ok());
    data.and_then(|d| d.get(start * 8..(start + insns) * 8)).unwrap_or_default()
}

/// The verifier's first walk of a program: from the first instruction,
/// it follows each conditional jump's fall-through and keeps the jump's
/// target pending, until an exit. Nothing is pruned on that walk (no
/// state has been explored before), so when it meets more than `limit`
/// conditional jumps whose outcome it cannot tell, the kernel refuses the
/// program. The walk here tells an outcome from registers set to
/// constants (as the verifier does); the verifier also tells some from
/// value ranges, which rule tests on packet fields seldom give it, so the
/// count may be a few too high, never too low. Returns the instruction
/// (from the program's start) where the count passes `limit`.
fn first_walk_crossing(code: &[u8], limit: usize) -> Option<usize> {
    const BPF_LD: u8 = 0x00;
    const BPF_LDX: u8 = 0x01;
    const BPF_STX: u8 = 0x03;
    const BPF_ALU: u8 = 0x04;
    const BPF_JMP: u8 = 0x05;
    const BPF_JMP32: u8 = 0x06;
    const BPF_ALU64: u8 = 0x07;
    const BPF_X: u8 = 0x08;
    const BPF_LD_IMM64: u8 = 0x18;
    const BPF_ATOMIC: u8 = 0xc0;
    const BPF_MOV: u8 = 0xb0;
    const BPF_JA: u8 = 0x00;
    const BPF_CALL: u8 = 0x80;
    const BPF_EXIT: u8 = 0x90;
    let n = code.len() / 8;
    let mut pc = 0usize;
    let mut pending = 0usize;
    // Registers known to hold a constant (r0 to r10).
    let mut known: [Option<u64>; 11] = [None; 11];
    // A walk longer than the program loops (a back edge): stop.
    for _ in 0..=n {
        let insn = code.get(pc * 8..pc * 8 + 8)?;
        let (opcode, class, op) = (insn[0], insn[0] & 0x07, insn[0] & 0xf0);
        let (dst, src) = (usize::from(insn[1] & 0x0f).min(10), usize::from(insn[1] >> 4).min(10));
        let off = i16::from_le_bytes([insn[2], insn[3]]) as isize;
        let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
        pc = match class {
            _ if opcode == BPF_LD_IMM64 => {
                known[dst] = None;
                pc + 2
            }
            BPF_JMP if op == BPF_EXIT => return None,
            BPF_JMP if op == BPF_CALL => {
                known[..6].fill(None);
                pc + 1
            }
            BPF_JMP if op == BPF_JA => pc.checked_add_signed(off + 1)?,
            BPF_JMP | BPF_JMP32 => {
                let taken = match (known[dst], opcode & BPF_X) {
                    (Some(v), 0) => {
                        let (v, k) = if class == BPF_JMP32 { (v as u32 as u64, imm as u32 as u64) } else { (v, imm as i64 as u64) };
                        jump_taken(op, v, k)
                    }
                    _ => None,
                };
                match taken {
                    Some(true) => pc.checked_add_signed(off + 1)?,
                    Some(false) => pc + 1,
                    None => {
                        pending += 1;
                        if pending > limit {
                            return Some(pc);
                        }
                        pc + 1
                    }
                }
            }
            BPF_ALU | BPF_ALU64 => {
                known[dst] = match (op, opcode & BPF_X) {
                    (BPF_MOV, 0) if class == BPF_ALU64 => Some(imm as i64 as u64),
                    (BPF_MOV, 0) => Some(u64::from(imm as u32)),
                    (BPF_MOV, _) if class == BPF_ALU64 => known[src],
                    _ => None,
                };
                pc + 1
            }
            BPF_LD | BPF_LDX => {
                known[dst] = None;
                pc + 1
            }
            // An atomic with fetch writes its source register (r0 for a
            // compare-and-exchange).
            BPF_STX if opcode & 0xe0 == BPF_ATOMIC => {
                known[src] = None;
                known[0] = None;
                pc + 1
            }
            _ => pc + 1,
        };
    }
    None
}

/// The outcome of conditional jump `op` on known operands, unsigned or
/// signed as the operation says; `None` for an operation not decided here.
fn jump_taken(op: u8, v: u64, k: u64) -> Option<bool> {
    Some(match op {
        0x10 => v == k,
        0x50 => v != k,
        0x20 => v > k,
        0x30 => v >= k,
        0xa0 => v < k,
        0xb0 => v <= k,
        0x40 => v & k != 0,
        0x60 => (v as i64) > (k as i64),
        0x70 => (v as i64) >= (k as i64),
        0xc0 => (v as i64) < (k as i64),
        0xd0 => (v as i64) <= (k as i64),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::{decides_first, first_walk_crossing, may_hold_always};
    use crate::check::fields::Field;
    use crate::ir::{CmpOp, Expr, ExprKind, Value};

    fn e(kind: ExprKind) -> Expr {
        Expr { kind, ty: crate::ir::Type::Bool, span: Default::default() }
    }

    fn cmp(op: CmpOp, f: Field, c: u64) -> Expr {
        e(ExprKind::Cmp(op, Box::new(e(ExprKind::Field(f))), Box::new(e(ExprKind::Const(Value::Int(c))))))
    }

    /// What LLVM might prove true for every packet ends the size floor's
    /// count; a field's presence flag (a volatile load) is what it cannot.
    #[test]
    fn a_presence_flag_keeps_a_predicate_from_holding_always() {
        let dport = cmp(CmpOp::Le, Field::TcpDport, u64::MAX);
        assert!(!may_hold_always(&dport), "tcp.dport <= MAX still needs a TCP header");
        assert!(!may_hold_always(&e(ExprKind::Not(Box::new(dport.clone())))));
        assert!(may_hold_always(&cmp(CmpOp::Ge, Field::PktLen, 0)), "pkt.len >= 0: always present, always true");
        assert!(may_hold_always(&cmp(CmpOp::Le, Field::PktLen, u64::MAX)));
        assert!(!may_hold_always(&cmp(CmpOp::Ge, Field::PktLen, 1)));
        assert!(!may_hold_always(&cmp(CmpOp::Eq, Field::PktLen, 64)));
        let always = e(ExprKind::Const(Value::Bool(true)));
        assert!(may_hold_always(&always));
        assert!(may_hold_always(&e(ExprKind::Or(Box::new(dport.clone()), Box::new(always.clone())))));
        assert!(!may_hold_always(&e(ExprKind::And(Box::new(dport.clone()), Box::new(always.clone())))));
        // `!(pkt.len < 0)`: false never holds, so the negation always does.
        assert!(may_hold_always(&e(ExprKind::Not(Box::new(cmp(CmpOp::Lt, Field::PktLen, 0))))));
    }

    /// The test a predicate makes first counts as an instruction of the
    /// size floor when it compares a field that has a presence flag.
    #[test]
    fn a_field_compared_first_decides() {
        let dport = cmp(CmpOp::Eq, Field::TcpDport, 80);
        let len = cmp(CmpOp::Eq, Field::PktLen, 64);
        assert!(decides_first(&dport));
        assert!(decides_first(&e(ExprKind::Not(Box::new(dport.clone())))));
        assert!(decides_first(&e(ExprKind::And(Box::new(dport.clone()), Box::new(len.clone())))));
        assert!(!decides_first(&e(ExprKind::Or(Box::new(len.clone()), Box::new(dport.clone())))), "`pkt.len` first: always present");
        assert!(!decides_first(&e(ExprKind::Const(Value::Bool(true)))));
    }

    /// An instruction: opcode, then zeroes but the offset.
    fn insn(opcode: u8, off: i16) -> [u8; 8] {
        let o = off.to_le_bytes();
        [opcode, 0, o[0], o[1], 0, 0, 0, 0]
    }

    #[test]
    fn jumps_on_constants_are_decided_not_pending() {
        // r1 = 5; if r1 == 5 goto +1 (taken, over an exit); if r2 == 0
        // (unknown: pending); exit.
        let mov = [0xb7, 0x01, 0, 0, 5, 0, 0, 0];
        let jeq_r1 = [0x15, 0x01, 1, 0, 5, 0, 0, 0];
        let jeq_r2 = [0x15, 0x02, 0, 0, 0, 0, 0, 0];
        let code: Vec<u8> = [mov, jeq_r1, insn(0x95, 0), jeq_r2, insn(0x95, 0)].concat();
        assert_eq!(first_walk_crossing(&code, 0), Some(3));
        assert_eq!(first_walk_crossing(&code, 1), None);
    }

    #[test]
    fn counts_conditional_jumps_on_the_fall_through_walk() {
        // jeq, ja +1 (over a jne), jgt, exit: two pending.
        let code: Vec<u8> = [insn(0x15, 5), insn(0x05, 1), insn(0x55, 9), insn(0x25, 7), insn(0x95, 0)].concat();
        assert_eq!(first_walk_crossing(&code, 2), None);
        assert_eq!(first_walk_crossing(&code, 1), Some(3));
        // A 16-byte load counts once, and its second half is no jump.
        let code: Vec<u8> = [insn(0x18, 0), insn(0x15, 0), insn(0x15, 1), insn(0x95, 0)].concat();
        assert_eq!(first_walk_crossing(&code, 0), Some(2));
    }
}
