//! Security lints over the checked policy: warnings with spans for rules
//! that do not do what they seem to.

use crate::check::fields::{Field, Layer};
use crate::ir::{self, ExprKind, StmtKind};
use xpol_lang::ast::Verdict;
use std::collections::HashMap;
use xpol_lang::Diagnostic;

fn reads_l4(e: &ir::Expr) -> bool {
    match &e.kind {
        ExprKind::Field(f) => matches!(f.layer(), Layer::Tcp | Layer::Udp | Layer::Ports | Layer::Icmp4 | Layer::Icmp6 | Layer::Ct),
        ExprKind::Const(_) | ExprKind::Local(_) => false,
        ExprKind::MapRead { keys, .. } | ExprKind::Limit { keys, .. } => keys.iter().any(reads_l4),
        ExprKind::Neg(a) | ExprKind::BitNot(a) | ExprKind::Not(a) | ExprKind::In(a, _) => reads_l4(a),
        ExprKind::Arith(_, a, b) | ExprKind::Cmp(_, a, b) | ExprKind::And(a, b) | ExprKind::Or(a, b) => reads_l4(a) || reads_l4(b),
    }
}

fn reads(e: &ir::Expr, field: Field) -> bool {
    match &e.kind {
        ExprKind::Field(f) => *f == field,
        ExprKind::Const(_) | ExprKind::Local(_) => false,
        ExprKind::MapRead { keys, .. } | ExprKind::Limit { keys, .. } => keys.iter().any(|k| reads(k, field)),
        ExprKind::Neg(a) | ExprKind::BitNot(a) | ExprKind::Not(a) | ExprKind::In(a, _) => reads(a, field),
        ExprKind::Arith(_, a, b) | ExprKind::Cmp(_, a, b) | ExprKind::And(a, b) | ExprKind::Or(a, b) => reads(a, field) || reads(b, field),
    }
}

/// The verdict a probe always reaches: its body is statements that cannot
/// decide or branch (`let`, `@map` updates such as `count()`, `log`), ending in
/// that verdict. A drop rule that also counts (`{ @c[ip.src] = count();
/// drop }`) drops every packet it matches as surely as `{ drop }` does.
fn only_verdict(p: &ir::Probe) -> Option<Verdict> {
    let (last, before) = p.body.split_last()?;
    let StmtKind::Verdict(v) = last.kind else { return None };
    before.iter().all(|s| matches!(s.kind, StmtKind::Let { .. } | StmtKind::MapUpdate { .. } | StmtKind::Log(_))).then_some(v)
}

pub fn lint(policy: &ir::Policy) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    // A set file with no elements (a download cut short, the wrong file)
    // compiles into rules that never match: a blocklist that blocks nothing.
    for set in &policy.sets {
        if let Some(path) = set.file.filter(|_| set.contents.element_count() == 0) {
            out.push(
                Diagnostic::warning("xpol::lint::empty_set_file", format!("set `{}` is read from a file with no elements: rules testing it never match", set.name))
                    .with_label(path, "no elements in this file")
                    .with_help("check the file; a set meant to start empty (filled with `xpol set`) is written `= {}`"),
            );
        }
    }
    for prog in &policy.programs {
        let default_drop = prog.probes.iter().any(|p| p.predicate.is_none() && only_verdict(p) == Some(Verdict::Drop));
        let mut fragments_handled = false;
        // The first verdict-only probe of each predicate text: a lookup,
        // not a scan of the ones before (policies have tens of thousands).
        let mut seen: HashMap<String, &ir::Probe> = HashMap::new();
        let mut catch_all: Option<&ir::Probe> = None;
        for p in &prog.probes {
            let rule = &policy.rules[p.rule as usize];
            if let Some(all) = catch_all {
                let first = &policy.rules[all.rule as usize];
                out.push(
                    Diagnostic::warning("xpol::lint::shadowed", "this rule never runs: an earlier rule decides every packet")
                        .with_label(rule.span, "never runs")
                        .with_label(first.span, "this rule has no predicate and always decides"),
                );
                continue;
            }
            if let Some(pred) = &p.predicate {
                if reads(pred, Field::IpFrag) || reads(pred, Field::IpFragFirst) || reads(pred, Field::IpFragOff) {
                    fragments_handled = true;
                }
                let text = policy.expr_text(pred);
                if let Some(earlier) = seen.get(&text) {
                    let first = &policy.rules[earlier.rule as usize];
                    out.push(
                        Diagnostic::warning("xpol::lint::shadowed", "this rule never decides: an earlier rule with the same predicate always does")
                            .with_label(rule.span, "shadowed")
                            .with_label(first.span, "decides first"),
                    );
                }
                if only_verdict(p) == Some(Verdict::Drop) && reads_l4(pred) && !fragments_handled && !default_drop {
                    out.push(
                        Diagnostic::warning(
                            "xpol::lint::fragment_bypass",
                            "non-first fragments carry no L4 header, so this drop rule never matches them, and they pass",
                        )
                        .with_label(pred.span, "reads L4 fields")
                        .with_help(format!(
                            "drop them earlier, e.g. `{h} /ip.frag && !ip.frag_first/ {{ drop }}`, or end with `{h} {{ drop }}`",
                            h = prog.hook.as_str()
                        )),
                    );
                    // Once per program is enough to make the point.
                    fragments_handled = true;
                }
                if only_verdict(p).is_some() {
                    seen.entry(text).or_insert(p);
                }
            } else if only_verdict(p).is_some() {
                catch_all = Some(p);
            }
        }
    }
    out.extend(exact_reachability(policy, &out, REACHABILITY_BUDGET, false));
    out
}

/// The work the exact reachability analysis may do in every check: a
/// thousand reachable rules (benches/compile.rs) stay well under it.
/// Past it the exact lints say nothing (`xpolc check --exact` runs them
/// with the analysis' own budget, and says where they stop).
pub const REACHABILITY_BUDGET: crate::analysis::Budget = crate::analysis::Budget { max_cubes: 20_000, max_steps: 400_000 };

/// The exact lints (`crate::analysis::reachability`) within `budget`:
/// rules no packet reaches because earlier rules decide every packet they
/// match (`xpol::lint::shadowed`), and rules whose removal changes nothing
/// (`xpol::lint::redundant`), besides those `found` has already. Past the
/// budget: nothing, or with `say_skipped` an
/// `xpol::lint::reachability_skipped` warning where the analysis stopped.
pub fn exact_reachability(policy: &ir::Policy, found: &[Diagnostic], budget: crate::analysis::Budget, say_skipped: bool) -> Vec<Diagnostic> {
    let warned: std::collections::HashSet<(&str, xpol_lang::Span)> = found
        .iter()
        .filter(|d| d.code == "xpol::lint::shadowed" || d.code == "xpol::lint::redundant")
        .filter_map(|d| d.labels.first().map(|l| (d.code.as_str(), l.span)))
        .collect();
    match crate::analysis::reachability(policy, budget) {
        Ok(found) => {
            let shadowed = found.unreachable.into_iter().filter(|u| !warned.contains(&("xpol::lint::shadowed", u.span))).map(|u| {
                let mut d = Diagnostic::warning("xpol::lint::shadowed", "this rule never runs: earlier rules decide every packet it matches").with_label(u.span, "never runs");
                for (i, s) in u.covered_by.iter().enumerate() {
                    d = d.with_label(*s, if i == 0 { "decides its packets first" } else { "and this one" });
                }
                d
            });
            let redundant = found.redundant.into_iter().filter(|r| !warned.contains(&("xpol::lint::redundant", r.span))).map(|r| {
                let mut d = Diagnostic::warning("xpol::lint::redundant", "this rule changes nothing: the rules after it decide every packet it decides alike")
                    .with_label(r.span, "removing it changes no verdict");
                for (i, s) in r.covered_by.iter().enumerate() {
                    d = d.with_label(*s, if i == 0 { "decides its packets alike" } else { "and this one" });
                }
                d.with_help("remove it; `xpolc diff` of the policy without it says `no difference` (docs/analysis.md)")
            });
            let mut out: Vec<Diagnostic> = shadowed.chain(redundant).collect();
            if let (Some((_, span)), true) = (found.redundant_stopped, say_skipped) {
                out.push(
                    Diagnostic::warning("xpol::lint::reachability_skipped", "the exact check for rules that change nothing stopped here (its budget is spent): rules from here on were not looked at")
                        .with_label(span, "stopped at this rule"),
                );
            }
            out
        }
        Err(_) if !say_skipped => Vec::new(),
        Err(e) => {
            let span = match &e {
                crate::analysis::AnalysisError::TooLarge { span, .. } => *span,
            };
            let d = Diagnostic::warning(
                "xpol::lint::reachability_skipped",
                "the exact check for rules no packet reaches and rules that change nothing stopped here (its budget is spent); only rules after a catch-all or with an earlier rule's predicate were looked for",
            )
            .with_help("`xpolc diff` and `xpolc query` analyse larger policies (docs/analysis.md)");
            vec![match span {
                Some(s) => d.with_label(s, "stopped at this rule"),
                None => d,
            }]
        }
    }
}

/// Diagnostics for the interfaces `redirect` names that do not exist
/// (`exists` says which do: the binaries ask the kernel). Warnings where
/// the policy is only checked (it may be meant for another machine),
/// errors where it is about to run (`xpolc check --kernel`, `xpol run`,
/// `xpol apply`): a `redirect` to a missing interface would abort its
/// packets.
pub fn missing_interfaces(policy: &ir::Policy, exists: impl Fn(&str) -> bool, severity: xpol_lang::Severity) -> Vec<Diagnostic> {
    policy
        .redirects
        .iter()
        .filter(|r| !exists(&r.ifname))
        .map(|r| {
            let message = format!("no network interface `{}` on this machine", xpol_lang::diagnostic::excerpt(&r.ifname, 40));
            let d = match severity {
                xpol_lang::Severity::Error => Diagnostic::error("xpol::redirect::no_interface", message).with_help("the interface must exist when the policy loads (see `ip link`)"),
                xpol_lang::Severity::Warning => Diagnostic::warning("xpol::redirect::no_interface", message)
                    .with_help("`xpol run` and `xpol apply` refuse the policy here; on the machine it is meant for, check `ip link`"),
            };
            d.with_label(r.span, "redirect target")
        })
        .collect()
}
