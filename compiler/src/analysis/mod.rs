//! Policy analysis on the checked IR: which packets two versions of a
//! policy decide differently (`xpolc diff`), which rules no packet can
//! reach (the exact `shadowed` lint), and what packets of a predicate get
//! (`xpolc query`). docs/analysis.md says what is exact and what is not.
//!
//! The passes, each from one representation to the next:
//!
//! | module | what |
//! |---|---|
//! | `space.rs` | the packet space: cubes of per-dimension interval sets, subtraction |
//! | `predicate.rs` | an IR expression -> the regions where it is true, false, or depends on state |
//! | `rules.rs` | a program -> per rule, where it decides and what; the first-match walk |
//! | `example.rs` | a cube -> a packet in it (bytes), or none |
//! | `describe.rs` | a cube -> words over the fields it constrains |
//! | this file | diff, reachability, query |

pub mod describe;
pub mod example;
pub mod predicate;
pub mod rules;
pub mod space;

use crate::ir;
use example::Example;
use predicate::{Compiler, Want};
use rules::{CompiledProgram, Decision};
use space::{Cube, Space};
use std::collections::{BTreeMap, HashMap};
use xpol_lang::ast::Hook;
use xpol_lang::{Diagnostic, SourceMap, Span};

/// Why an analysis stopped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnalysisError {
    /// The regions grew past the budget (cubes held at once).
    #[error("the analysis of {hook} stopped at {cubes} regions (the limit is {limit}): the rules split the packet space too finely")]
    TooLarge { hook: String, cubes: usize, limit: usize, span: Option<Span> },
}

impl AnalysisError {
    pub fn diagnostic(&self) -> Diagnostic {
        let d = Diagnostic::error("xpol::analysis::too_large", self.to_string());
        match self {
            AnalysisError::TooLarge { span: Some(s), .. } => d.with_label(*s, "here"),
            _ => d,
        }
    }
}

/// Bounds on the work of an analysis.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// The most cubes the remaining space of a walk may hold.
    pub max_cubes: usize,
    /// The most cube intersections a walk may try.
    pub max_steps: u64,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget { max_cubes: 200_000, max_steps: 2_000_000_000 }
    }
}

/// One region of a diff or a query.
#[derive(Clone, Debug)]
pub struct Region {
    pub hook: Hook,
    /// The region in words (class, then each constrained field).
    pub fields: Vec<String>,
    pub cube: Cube,
    /// A packet of the region.
    pub example: Example,
}

/// Packets the two versions decide differently.
#[derive(Clone, Debug)]
pub struct DiffRegion {
    pub region: Region,
    pub old: Path,
    pub new: Path,
    /// With `--sets symbolic`: the contents of sets under which the
    /// difference is there (`ip.src in blocked`, `ip.src !in blocked`);
    /// empty when it is there whatever they are.
    pub when: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Diff {
    pub regions: Vec<DiffRegion>,
    /// Rules (by identity) of either version that differ and were
    /// compared, per hook: the rest are the same in both, in order.
    pub changed_rules: usize,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct DiffOptions {
    /// Also a different deciding rule with the same verdict (`--rules`).
    pub rules: bool,
    /// `--sets symbolic`: sets the runtime may change have unknown
    /// contents (the same in both versions), not their declared ones.
    pub symbolic_sets: bool,
}

/// The most tests of a field against a symbolic set (by set and field)
/// a diff takes apart case by case (a diff for each way the packet may be
/// in them or not); past it each test is an unknown like a map read.
pub const SYMBOLIC_TESTS_MAX: usize = 4;

/// The tests of a field against a set the runtime may change, by set name
/// and field, anywhere in the policy.
fn set_tests(policy: &ir::Policy) -> Vec<(String, crate::check::fields::Field)> {
    fn expr(policy: &ir::Policy, e: &ir::Expr, out: &mut Vec<(String, crate::check::fields::Field)>) {
        use ir::ExprKind::*;
        match &e.kind {
            In(a, ir::SetRef::Named(id)) => {
                if let (Field(f), true) = (&a.kind, policy.sets[*id].mutable) {
                    out.push((policy.sets[*id].name.clone(), *f));
                }
                expr(policy, a, out);
            }
            In(a, _) | Neg(a) | BitNot(a) | Not(a) => expr(policy, a, out),
            Arith(_, a, b) | Cmp(_, a, b) | And(a, b) | Or(a, b) => {
                expr(policy, a, out);
                expr(policy, b, out);
            }
            MapRead { keys, .. } | Limit { keys, .. } => keys.iter().for_each(|k| expr(policy, k, out)),
            Const(_) | Field(_) | Local(_) => {}
        }
    }
    fn stmts(policy: &ir::Policy, body: &[ir::Stmt], out: &mut Vec<(String, crate::check::fields::Field)>) {
        for s in body {
            match &s.kind {
                ir::StmtKind::If { cond, then_body, else_body } => {
                    expr(policy, cond, out);
                    stmts(policy, then_body, out);
                    stmts(policy, else_body, out);
                }
                ir::StmtKind::Let { value, .. } => expr(policy, value, out),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    for prog in &policy.programs {
        for p in &prog.probes {
            if let Some(e) = &p.predicate {
                expr(policy, e, &mut out);
            }
            stmts(policy, &p.body, &mut out);
        }
    }
    out.sort();
    out.dedup();
    out
}

fn line_of(sources: &SourceMap) -> impl Fn(Span) -> Option<usize> + '_ {
    move |s| Some(sources.location(s).1 as usize)
}

/// Compiles every program of a policy.
pub fn compile<'p>(policy: &'p ir::Policy, sources: &SourceMap) -> (Compiler<'p>, Vec<CompiledProgram>) {
    compile_assuming(policy, sources, false, &HashMap::new())
}

/// Compiles every program, symbolic sets as `assumed` says.
fn compile_assuming<'p>(policy: &'p ir::Policy, sources: &SourceMap, symbolic_sets: bool, assumed: &HashMap<(String, crate::check::fields::Field), bool>) -> (Compiler<'p>, Vec<CompiledProgram>) {
    let mut c = Compiler::new(policy);
    c.symbolic_sets = symbolic_sets;
    c.assumed = assumed.clone();
    let lines = line_of(sources);
    let progs = policy.programs.iter().map(|p| rules::compile_program(&mut c, p, &lines)).collect();
    (c, progs)
}

/// The packets `old` and `new` decide differently, per hook, as regions
/// with an example each.
///
/// With symbolic sets, one diff for each way a packet may be in them or
/// not (up to [`SYMBOLIC_TESTS_MAX`] tests): a difference every way has
/// alike is there whatever the contents and is listed once; the others
/// are listed with the way (`DiffRegion::when`).
pub fn diff(old: &ir::Policy, old_sources: &SourceMap, new: &ir::Policy, new_sources: &SourceMap, options: DiffOptions, budget: Budget) -> Result<Diff, AnalysisError> {
    let none = HashMap::new();
    if !options.symbolic_sets {
        return diff_assuming(old, old_sources, new, new_sources, options, budget, &none);
    }
    let mut tests = set_tests(old);
    tests.extend(set_tests(new));
    tests.sort();
    tests.dedup();
    if tests.is_empty() || tests.len() > SYMBOLIC_TESTS_MAX {
        return diff_assuming(old, old_sources, new, new_sources, options, budget, &none);
    }
    let mut cases = Vec::new();
    for bits in 0u32..(1 << tests.len()) {
        let assumed: HashMap<_, _> = tests.iter().enumerate().map(|(i, t)| (t.clone(), bits >> i & 1 == 1)).collect();
        let when: Vec<String> = tests.iter().enumerate().map(|(i, (set, f))| format!("{} {} {set}", f.name(), if bits >> i & 1 == 1 { "in" } else { "!in" })).collect();
        cases.push((when, diff_assuming(old, old_sources, new, new_sources, options, budget, &assumed)?));
    }
    type Key = (&'static str, Vec<String>, Path, Path);
    let key = |r: &DiffRegion| -> Key { (r.region.hook.as_str(), r.region.fields.clone(), r.old.clone(), r.new.clone()) };
    let mut everywhere: std::collections::HashSet<Key> = cases[0].1.regions.iter().map(key).collect();
    for (_, d) in &cases[1..] {
        let here: std::collections::HashSet<Key> = d.regions.iter().map(key).collect();
        everywhere.retain(|k| here.contains(k));
    }
    let mut out = Diff { regions: Vec::new(), changed_rules: cases[0].1.changed_rules };
    let mut listed = std::collections::HashSet::new();
    for (when, d) in cases {
        for mut r in d.regions {
            let k = key(&r);
            if everywhere.contains(&k) {
                if listed.insert(k) {
                    out.regions.push(r);
                }
            } else {
                r.when = when.clone();
                out.regions.push(r);
            }
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn diff_assuming(
    old: &ir::Policy,
    old_sources: &SourceMap,
    new: &ir::Policy,
    new_sources: &SourceMap,
    options: DiffOptions,
    budget: Budget,
    assumed: &HashMap<(String, crate::check::fields::Field), bool>,
) -> Result<Diff, AnalysisError> {
    let (c_old, p_old) = compile_assuming(old, old_sources, options.symbolic_sets, assumed);
    let (_c_new, p_new) = compile_assuming(new, new_sources, options.symbolic_sets, assumed);
    let universe = c_old.universe.clone();
    let mut hooks: Vec<Hook> = p_old.iter().chain(p_new.iter()).map(|p| p.hook).collect();
    hooks.sort_by_key(|h| h.as_str());
    hooks.dedup();
    let empty = |hook| CompiledProgram { hook, rules: Vec::new() };
    let mut out = Diff::default();
    for hook in hooks {
        let a = p_old.iter().find(|p| p.hook == hook).cloned().unwrap_or_else(|| empty(hook));
        let b = p_new.iter().find(|p| p.hook == hook).cloned().unwrap_or_else(|| empty(hook));
        let (ma, mb) = align(&a.rules.iter().map(|r| r.signature.as_str()).collect::<Vec<_>>(), &b.rules.iter().map(|r| r.signature.as_str()).collect::<Vec<_>>());
        // Only packets some unmatched rule decides can be decided
        // differently: the matched rules are the same, in the same order.
        let mut focus = Space::empty();
        for (prog, matched) in [(&a, &ma), (&b, &mb)] {
            for (r, m) in prog.rules.iter().zip(matched.iter()) {
                if !*m {
                    out.changed_rules += 1;
                    for (s, _) in &r.decides {
                        focus.extend_disjoint(s.clone());
                    }
                }
            }
        }
        if focus.is_empty() {
            continue;
        }
        let focus = rules::disjoint(focus);
        let wa = walk(&a, &focus, budget)?;
        let wb = walk(&b, &focus, budget)?;
        // Rules are compared by identity (ids and lines move between
        // versions); a decision that depends on state is the same only as
        // the same version of the same rule's.
        let same_one = |x: &Decision, y: &Decision| {
            let depends = matches!(x.action, rules::Action::Depends(_)) || matches!(y.action, rules::Action::Depends(_));
            let by_rule = options.rules || depends;
            let key = |d: &Decision| d.rule.as_ref().map(|r| (r.identity.clone(), if depends { r.signature_hash } else { 0 }));
            x.action == y.action && (!by_rule || key(x) == key(y))
        };
        let same = |x: &Path, y: &Path| x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_one(a, b));
        let mut groups: BTreeMap<(Path, Path), Space> = BTreeMap::new();
        for (sa, da) in &wa {
            for (sb, db) in &wb {
                if same(da, db) || !sa.intersects(sb) {
                    continue;
                }
                let both = sa.intersect(sb);
                if !both.is_empty() {
                    groups.entry((da.clone(), db.clone())).or_default().extend_disjoint(both);
                }
            }
        }
        for ((da, db), space) in groups {
            for region in regions(hook, space, &universe) {
                out.regions.push(DiffRegion { region, old: da.clone(), new: db.clone(), when: Vec::new() });
            }
        }
    }
    Ok(out)
}

/// Cubes made few and described, each with an example; cubes without a
/// packet dropped.
fn regions(hook: Hook, space: Space, universe: &Space) -> Vec<Region> {
    let mut s = Space(space.0.iter().map(describe::clear_irrelevant).collect());
    s = rules::disjoint(s);
    s.coalesce_in(universe, 300);
    let mut out = Vec::new();
    for cube in s.0 {
        // A cube the example builder finds no packet in holds none: its
        // lengths leave no room for the headers of its classes.
        let Some(example) = example::realize(&cube, universe) else { continue };
        out.push(Region { hook, fields: describe::describe(&cube, universe), cube, example });
    }
    out
}

/// What a program does with a packet: the rules before that may decide
/// it, depending on state ([`rules::Action::Depends`]: if they do not,
/// the packet goes on), then the decision.
pub type Path = Vec<Decision>;

/// The first-match walk within the budget: `region` partitioned by the
/// [`Path`] of its packets.
fn walk(prog: &CompiledProgram, region: &Space, budget: Budget) -> Result<Vec<(Space, Path)>, AnalysisError> {
    let mut rest: Vec<(Space, Path)> = vec![(region.clone(), Vec::new())];
    let mut out = Vec::new();
    let mut steps = 0u64;
    for r in &prog.rules {
        if rest.is_empty() {
            break;
        }
        let Some(b) = &r.bound else { continue };
        steps += rest.len() as u64;
        if !rest.iter().any(|(g, _)| g.intersects_cube(b)) {
            continue;
        }
        for (s, action) in &r.decides {
            let mut next = Vec::with_capacity(rest.len());
            for (g, prefix) in rest.drain(..) {
                steps += (g.len() * s.len()) as u64;
                // Only the cubes `s` meets are cut; the others (most of a
                // fragmented space) are moved on as they are, not copied
                // by the subtraction.
                let (touched, mut kept): (Vec<Cube>, Vec<Cube>) = g.0.into_iter().partition(|c| s.intersects_cube(c));
                if touched.is_empty() {
                    next.push((Space(kept), prefix));
                    continue;
                }
                let touched = Space(touched);
                let hit = touched.intersect(s);
                if hit.is_empty() {
                    kept.extend(touched.0);
                    next.push((Space(kept), prefix));
                    continue;
                }
                kept.extend(touched.minus(s).0);
                let remain = Space(kept);
                if !remain.is_empty() {
                    next.push((remain, prefix.clone()));
                }
                let mut path = prefix;
                path.push(Decision { action: action.clone(), rule: Some(r.rule.clone()) });
                if matches!(action, rules::Action::Depends(_)) {
                    next.push((hit, path));
                } else {
                    out.push((hit, path));
                }
            }
            rest = next;
        }
        let cubes: usize = rest.iter().map(|(g, _)| g.len()).sum();
        if cubes > budget.max_cubes || steps > budget.max_steps {
            return Err(AnalysisError::TooLarge { hook: prog.hook.as_str().to_string(), cubes, limit: budget.max_cubes, span: Some(r.span) });
        }
    }
    for (g, mut path) in rest {
        if !g.is_empty() {
            path.push(Decision { action: rules::Action::Pass, rule: None });
            out.push((g, path));
        }
    }
    Ok(out)
}

/// Aligns two rule sequences by signature: patience diff (signatures
/// unique in both, longest increasing run of them), then equal runs
/// grown around each anchor. `true`: matched.
pub fn align(a: &[&str], b: &[&str]) -> (Vec<bool>, Vec<bool>) {
    let mut ma = vec![false; a.len()];
    let mut mb = vec![false; b.len()];
    let mut count: HashMap<&str, (usize, usize, usize, usize)> = HashMap::new();
    for (i, s) in a.iter().enumerate() {
        let e = count.entry(s).or_insert((0, 0, 0, 0));
        e.0 += 1;
        e.2 = i;
    }
    for (j, s) in b.iter().enumerate() {
        let e = count.entry(s).or_insert((0, 0, 0, 0));
        e.1 += 1;
        e.3 = j;
    }
    let mut pairs: Vec<(usize, usize)> = count.values().filter(|e| e.0 == 1 && e.1 == 1).map(|e| (e.2, e.3)).collect();
    pairs.sort_unstable();
    // Longest increasing subsequence of the j's.
    let mut tails: Vec<usize> = Vec::new();
    let mut prev = vec![usize::MAX; pairs.len()];
    for k in 0..pairs.len() {
        let j = pairs[k].1;
        let pos = tails.partition_point(|&t| pairs[t].1 < j);
        if pos > 0 {
            prev[k] = tails[pos - 1];
        }
        if pos == tails.len() {
            tails.push(k);
        } else {
            tails[pos] = k;
        }
    }
    let mut anchors = Vec::new();
    let mut k = tails.last().copied().unwrap_or(usize::MAX);
    while k != usize::MAX {
        anchors.push(pairs[k]);
        k = prev[k];
    }
    anchors.reverse();
    // Start and end as anchors too, then grow equal runs between them.
    let (mut i, mut j) = (0usize, 0usize);
    for &(ai, bj) in anchors.iter().chain(std::iter::once(&(a.len(), b.len()))) {
        // Forward from the previous anchor.
        while i < ai && j < bj && a[i] == b[j] {
            ma[i] = true;
            mb[j] = true;
            i += 1;
            j += 1;
        }
        // Backward from this anchor.
        let (mut x, mut y) = (ai, bj);
        while x > i && y > j && a[x - 1] == b[y - 1] {
            ma[x - 1] = true;
            mb[y - 1] = true;
            x -= 1;
            y -= 1;
        }
        if ai < a.len() {
            ma[ai] = true;
            mb[bj] = true;
        }
        i = ai + 1;
        j = bj + 1;
    }
    (ma, mb)
}

/// A rule no packet reaches: every packet it matches is decided before.
#[derive(Clone, Debug)]
pub struct Unreachable {
    pub hook: Hook,
    pub rule: ir::RuleId,
    pub span: Span,
    /// The earlier rules that decide its packets (their spans).
    pub covered_by: Vec<Span>,
}

/// A rule whose removal changes nothing: every packet it decides, the
/// rules after it decide alike.
#[derive(Clone, Debug)]
pub struct Redundant {
    pub hook: Hook,
    pub rule: ir::RuleId,
    pub span: Span,
    /// The later rules that decide its packets alike (their spans, in
    /// order).
    pub covered_by: Vec<Span>,
    /// The packets it decides (for examples).
    pub decides: Space,
}

/// What the exact reachability analysis finds.
#[derive(Clone, Debug, Default)]
pub struct Reachability {
    pub unreachable: Vec<Unreachable>,
    pub redundant: Vec<Redundant>,
    /// Where the search for redundant rules stopped, past the budget (the
    /// unreachable rules are all found: they are looked for first).
    pub redundant_stopped: Option<(Hook, Span)>,
}

/// Whether a space holds a packet (some cube the example builder fills).
fn feasible(s: &Space, universe: &Space) -> bool {
    s.0.iter().any(|cube| example::realize(cube, universe).is_some())
}

/// Whether a body does more than decide: writes a record (`log`), a map
/// (`@m[...] = ...`) or a dynamic set (`add`, `delete`). Removing such a
/// rule changes what it writes.
fn writes(body: &[ir::Stmt]) -> bool {
    body.iter().any(|s| match &s.kind {
        ir::StmtKind::Log(_) | ir::StmtKind::MapUpdate { .. } | ir::StmtKind::SetWrite { .. } => true,
        ir::StmtKind::If { then_body, else_body, .. } => writes(then_body) || writes(else_body),
        _ => false,
    })
}

/// Rules of `policy` that no packet reaches, and rules whose removal
/// changes nothing, or `Err` past the budget. Rules that match no packet
/// at all are in neither (nothing covers them). A rule is redundant when
/// every packet it decides, rules after it decide alike; it is never
/// reported when it depends on state, writes a record or a map, or when
/// some of its packets meet a later rule that depends on state, or fall
/// to the default or a catch-all rule (an explicit rule saying what the
/// default does documents it), or when a rule that covers it is in
/// another file (an included policy stands alone). Removing every rule
/// reported at once changes nothing either: a rule's redundancy rests on
/// the rules after it only, so removing the last one first keeps each
/// earlier one redundant.
pub fn reachability(policy: &ir::Policy, budget: Budget) -> Result<Reachability, AnalysisError> {
    let mut c = Compiler::new(policy);
    c.work_limit = budget.max_steps;
    let too_large = |hook: Hook, span: Span, cubes: usize| AnalysisError::TooLarge { hook: hook.as_str().to_string(), cubes, limit: budget.max_cubes, span: Some(span) };
    let universe = c.universe.clone();
    let mut out = Reachability::default();
    for prog in &policy.programs {
        let compiled = rules::compile_program(&mut c, prog, &|_| None);
        if c.exhausted {
            return Err(too_large(prog.hook, prog.probes.first().map(|p| p.span).unwrap_or_default(), 0));
        }
        // Per rule: where it fires (its predicate may hold).
        c.env.clear();
        let fires: Vec<Space> = prog
            .probes
            .iter()
            .map(|p| match &p.predicate {
                None => universe.clone(),
                Some(e) => {
                    let s = rules::disjoint(c.region(e, Want::MayTrue));
                    c.take_unknowns();
                    s
                }
            })
            .collect();
        let mut rest = universe.clone();
        let mut decided: Vec<(usize, Space)> = Vec::new();
        // Per rule that may be redundant: the packets that reach it and
        // that it decides, and what it decides.
        let mut reached: Vec<Option<Vec<(Space, rules::Action)>>> = Vec::with_capacity(compiled.rules.len());
        if c.exhausted {
            return Err(too_large(prog.hook, prog.probes.first().map(|p| p.span).unwrap_or_default(), 0));
        }
        let mut steps = c.work;
        for (i, r) in compiled.rules.iter().enumerate() {
            let f = &fires[i];
            steps += (rest.len() * f.len().max(1)) as u64;
            let reaching = rest.intersect(f);
            let reachable = feasible(&reaching, &universe);
            steps += reaching.len() as u64;
            if !reachable && !f.is_empty() && feasible(f, &universe) {
                steps += decided.iter().map(|(_, s)| (s.len() * f.len()) as u64).sum::<u64>();
                let covered_by: Vec<Span> = decided.iter().filter(|(_, s)| s.intersects(f)).map(|(j, _)| compiled.rules[*j].span).take(4).collect();
                out.unreachable.push(Unreachable { hook: prog.hook, rule: r.rule.id, span: r.span, covered_by });
            }
            let candidate = reachable && !writes(&prog.probes[i].body) && r.decides.iter().all(|(_, a)| !matches!(a, rules::Action::Depends(_)));
            let mut mine = Vec::new();
            for (s, action) in &r.decides {
                if matches!(action, rules::Action::Depends(_)) || !rest.intersects(s) {
                    continue;
                }
                steps += (rest.len() * s.len()) as u64;
                let hit = rest.intersect(s);
                // `rest \ s`, the same as `rest \ hit`, with fewer cubes to take.
                steps += (rest.len() * s.len()) as u64;
                rest = rest.minus(s);
                if candidate && !hit.is_empty() {
                    mine.push((hit.clone(), action.clone()));
                }
                decided.push((i, hit));
            }
            reached.push(candidate.then_some(mine));
            if rest.len() > budget.max_cubes || steps > budget.max_steps {
                return Err(too_large(prog.hook, r.span, rest.len()));
            }
        }
        // Redundancy: the packets a rule decides, walked through the rules
        // after it; redundant when each gets the same action from one of
        // them, with nothing on the way that depends on state.
        for (i, mine) in reached.iter().enumerate() {
            if out.redundant_stopped.is_some() {
                break;
            }
            let Some(mine) = mine else { continue };
            let r = &compiled.rules[i];
            let mut covered_by: Vec<usize> = Vec::new();
            let mut redundant = true;
            let mut all = Space::empty();
            'actions: for (hit, action) in mine {
                all.extend_disjoint(hit.clone());
                let mut left = hit.clone();
                for (j, later) in compiled.rules.iter().enumerate().skip(i + 1) {
                    // A catch-all says what the default does: the packets
                    // left fall to it (not redundant).
                    if prog.probes[j].predicate.is_none() {
                        break;
                    }
                    steps += 1;
                    let Some(b) = &later.bound else { continue };
                    if !left.intersects_cube(b) {
                        continue;
                    }
                    for (s, a) in &later.decides {
                        steps += (left.len() * s.len()) as u64;
                        if !left.intersects(s) {
                            continue;
                        }
                        let meet = left.intersect(s);
                        if meet.is_empty() {
                            continue;
                        }
                        if a != action && feasible(&meet, &universe) {
                            redundant = false;
                            break 'actions;
                        }
                        left = left.minus(s);
                        if a == action && !covered_by.contains(&j) {
                            covered_by.push(j);
                        }
                    }
                    if left.is_empty() || steps > budget.max_steps || left.len() > budget.max_cubes {
                        break;
                    }
                }
                if steps > budget.max_steps || left.len() > budget.max_cubes {
                    out.redundant_stopped = Some((prog.hook, r.span));
                    redundant = false;
                    break;
                }
                // What no later rule decides falls to the default.
                if feasible(&left, &universe) {
                    redundant = false;
                    break;
                }
            }
            // Only within one file: a rule of an included file (a std
            // policy) covered by the including file's is not the
            // includer's to remove, nor the other way.
            let one_file = covered_by.iter().all(|&j| compiled.rules[j].span.file == r.span.file);
            if redundant && !covered_by.is_empty() && one_file {
                covered_by.sort_unstable();
                let covered_by = covered_by.iter().map(|&j| compiled.rules[j].span).take(4).collect();
                out.redundant.push(Redundant { hook: prog.hook, rule: r.rule.id, span: r.span, covered_by, decides: all });
            }
        }
    }
    Ok(out)
}

/// What packets of a predicate get: per decision, regions with examples.
pub fn query(policy: &ir::Policy, sources: &SourceMap, hook: Hook, predicate: &ir::Expr, budget: Budget) -> Result<Vec<(Path, Region)>, AnalysisError> {
    let (mut c, progs) = compile(policy, sources);
    let universe = c.universe.clone();
    c.env.clear();
    let q = rules::disjoint(c.region(predicate, Want::MayTrue));
    c.take_unknowns();
    let empty = CompiledProgram { hook, rules: Vec::new() };
    let prog = progs.iter().find(|p| p.hook == hook).unwrap_or(&empty);
    let parts = walk(prog, &q, budget)?;
    let mut groups: BTreeMap<Path, Space> = BTreeMap::new();
    for (s, d) in parts {
        groups.entry(d).or_default().extend_disjoint(s);
    }
    let mut out = Vec::new();
    for (d, s) in groups {
        for r in regions(hook, s, &universe) {
            out.push((d.clone(), r));
        }
    }
    Ok(out)
}
