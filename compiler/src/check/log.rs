//! Checking `log("PREFIX", rate: R, burst: B)`: the prefix (what a
//! terminal will show), the options, and the rate, which becomes an
//! unkeyed limit of its own (docs/language.md, "Logging"); and, once a
//! rule's statements are checked, what the rule does after each `log`.

use super::Checker;
use crate::ir::{self, LimitUnit, StmtKind};
use xpol_lang::ast;
use xpol_lang::{Diagnostic, Span};

const OPTIONS: [&str; 2] = ["rate", "burst"];

impl Checker<'_> {
    /// `log(...)` at `span` with its arguments as written.
    pub(super) fn log_stmt(&mut self, span: Span, args: &[ast::LogArg]) -> Option<StmtKind> {
        let mut ok = true;
        let mut prefix: Option<&ast::StrLit> = None;
        let mut rate: Option<(&ast::Rate, Span)> = None;
        let mut burst: Option<(&ast::LogValue, Span)> = None;
        let mut seen: Vec<&str> = Vec::new();
        for (i, arg) in args.iter().enumerate() {
            match arg {
                ast::LogArg::Prefix(p) => {
                    if let Some(first) = prefix {
                        self.diags.push(
                            Diagnostic::error("xpol::log::prefix", "a `log` has one prefix")
                                .with_label(p.span, "a second prefix")
                                .with_label(first.span, "the first")
                                .with_help("join them into one string, e.g. `log(\"telnet drop: \")`"),
                        );
                        ok = false;
                    } else if i > 0 {
                        self.error_help(p.span, "xpol::log::prefix", "the prefix comes first in `log(...)`", "after an option", "write e.g. `log(\"telnet: \", rate: 10/s)`");
                        ok = false;
                    } else {
                        ok &= self.log_prefix(p);
                    }
                    prefix = prefix.or(Some(p));
                }
                ast::LogArg::Option { name, value, span: aspan } => {
                    let n = name.name.as_str();
                    if seen.contains(&n) {
                        self.error(*aspan, "xpol::log::option", format!("`{n}` is given twice"), "again here");
                        ok = false;
                        continue;
                    }
                    seen.push(n);
                    match (n, value) {
                        ("rate", ast::LogValue::Rate(r)) => rate = Some((r, *aspan)),
                        ("rate", other) => {
                            let vspan = log_value_span(other);
                            self.error_help(vspan, "xpol::log::rate", "a `log`'s rate is a number of packets per period", "not a rate", "write e.g. `rate: 10/s` or `rate: 100/m`");
                            ok = false;
                        }
                        ("burst", v) => burst = Some((v, *aspan)),
                        _ => {
                            let mut d = Diagnostic::error("xpol::log::option", format!("unknown `log` option `{n}`"))
                                .with_label(name.span, "not an option")
                                .with_help("options: `rate: N/s` (records at most that often), `burst: N` (that many at once after a quiet spell)");
                            if let Some(o) = xpol_lang::suggest::closest(n, OPTIONS) {
                                d = d.with_fix(name.span, o, format!("did you mean `{o}`?"), true);
                            }
                            self.diags.push(d);
                            ok = false;
                        }
                    }
                }
            }
        }
        let checked_rate = match rate {
            Some((r, _)) => {
                let checked = self.rate(r);
                if checked.is_some_and(|(_, _, unit)| unit == LimitUnit::Bytes) {
                    let unit = r.unit.as_ref().map_or(r.span, |u| u.span);
                    self.error_help(unit, "xpol::log::rate", "a `log`'s rate counts records, one per packet, not bytes", "a byte rate", "give the records per period, e.g. `rate: 10/s`");
                    return None;
                }
                checked
            }
            None => None,
        };
        let burst_units = match burst {
            None => None,
            Some((_, bspan)) if rate.is_none() => {
                self.error_help(bspan, "xpol::log::burst", "`burst` is the bucket of a `rate`, and this `log` has none", "no `rate`", "add a rate, e.g. `rate: 10/s, burst: 20`, or remove `burst`");
                return None;
            }
            Some((v, _)) => match v {
                ast::LogValue::Amount { count, unit, span } if unit.name == "packets" => Some((*count, *span)),
                ast::LogValue::Amount { unit, .. } => {
                    self.error_help(unit.span, "xpol::log::burst", format!("a `log`'s burst is a number of records (packets), not `{}`", unit.name), "not packets", "write e.g. `burst: 20` or `burst: 20 packets`");
                    return None;
                }
                ast::LogValue::Expr(e) => Some((self.const_int(e, "`burst`")?, e.span)),
                ast::LogValue::Rate(r) => {
                    self.error_help(r.span, "xpol::log::burst", "`burst` is a number of records", "a rate", "write e.g. `burst: 20`");
                    return None;
                }
            },
        };
        if !ok {
            return None;
        }
        let text = self.sources.snippet(span).split_whitespace().collect::<Vec<_>>().join(" ");
        let rule = self.rules.len().saturating_sub(1) as ir::RuleId;
        let limit = match (rate, checked_rate) {
            (None, _) => None,
            (Some(_), None) => return None,
            (Some((r, rspan)), Some((count, period_ns, unit))) => {
                let burst = match burst_units {
                    Some((0, bspan)) => {
                        self.error_help(bspan, "xpol::log::burst", "a burst of 0 lets no record through", "`burst: 0`", "the burst is the most records written at once: at least 1");
                        return None;
                    }
                    Some((b, _)) => b,
                    None => ir::DEFAULT_LIMIT_BURST_PACKETS,
                };
                if u128::from(burst) * u128::from(period_ns / count) > super::limit::MAX_DEPTH_NS {
                    let at = burst_units.map_or(r.span, |(_, s)| s);
                    self.error_help(at, "xpol::log::burst", format!("a burst of {burst} records at this rate is more than the bucket can hold"), "too large", "the bucket holds at most 2^62 ns of credit: declare a smaller `burst`");
                    return None;
                }
                let id = self.limits.len();
                self.limits.push(ir::Limit {
                    rule,
                    rate: count,
                    period_ns,
                    unit,
                    burst,
                    keys: Vec::new(),
                    size: ir::DEFAULT_LIMIT_SIZE,
                    text: text.clone(),
                    span: rspan,
                });
                Some(id)
            }
        };
        let id = self.logs.len();
        // What follows the statement is known once the rule is checked
        // (`log_verdicts`).
        self.logs.push(ir::Log { rule, prefix: prefix.map(|p| p.value.clone()).unwrap_or_default(), limit, verdict: "none", text, span });
        Some(StmtKind::Log(id))
    }

    /// A prefix a terminal can show as it is: at most
    /// [`ir::MAX_LOG_PREFIX`] bytes, no control characters.
    fn log_prefix(&mut self, p: &ast::StrLit) -> bool {
        if let Some(bad) = p.value.chars().find(|c| c.is_control()) {
            self.error_help(
                p.span,
                "xpol::log::prefix",
                format!("the prefix contains {bad:?}, a control character"),
                "not printable",
                "a prefix is printed on terminals and in logs as it is: use printable characters only",
            );
            return false;
        }
        if p.value.len() > ir::MAX_LOG_PREFIX {
            self.error_help(
                p.span,
                "xpol::log::prefix",
                format!("the prefix is {} bytes long", p.value.len()),
                format!("over {}", ir::MAX_LOG_PREFIX),
                format!("a prefix has at most {} bytes: it tags the record, the record says the rest", ir::MAX_LOG_PREFIX),
            );
            return false;
        }
        true
    }

    /// Sets what the rule does after each `log` in `stmts`, given what it
    /// does after them (`after`); returns what it does from their start.
    pub(super) fn log_verdicts(&mut self, stmts: &[ir::Stmt], after: &'static str) -> &'static str {
        let mut next = after;
        for s in stmts.iter().rev() {
            match &s.kind {
                StmtKind::Verdict(v) => next = v.as_str(),
                StmtKind::Redirect(_) => next = "redirect",
                StmtKind::Lb(_) => next = "lb",
                StmtKind::Synproxy(_) => next = "mixed",
                StmtKind::If { then_body, else_body, .. } => {
                    let then = self.log_verdicts(then_body, next);
                    let other = self.log_verdicts(else_body, next);
                    next = if then == other { then } else { "mixed" };
                }
                StmtKind::Log(id) => self.logs[*id].verdict = next,
                StmtKind::Let { .. } | StmtKind::MapUpdate { .. } | StmtKind::SetWrite { .. } => {}
            }
        }
        next
    }

    /// `log`, `log("PREFIX")`, `!log` or `!log("PREFIX")` in a test case:
    /// a prefix some `log` above has.
    pub(super) fn log_expect(&mut self, e: &ast::LogExpect) -> Option<ir::LogExpect> {
        if self.logs.is_empty() {
            self.error_help(e.span, "xpol::test::log", "no rule above logs", "nothing logs", "a test can expect the records of the `log` statements written before it");
            return None;
        }
        if let Some(p) = &e.prefix {
            if !self.logs.iter().any(|l| l.prefix == p.value) {
                let mut known: Vec<String> = self.logs.iter().map(|l| format!("{:?}", l.prefix)).collect();
                known.dedup();
                self.error_help(p.span, "xpol::test::log", format!("no `log` above has the prefix {:?}", p.value), "unknown prefix", format!("the prefixes: {}", known.join(", ")));
                return None;
            }
        }
        Some(ir::LogExpect { logged: e.logged, prefix: e.prefix.as_ref().map(|p| p.value.clone()), span: e.span })
    }
}

fn log_value_span(v: &ast::LogValue) -> Span {
    match v {
        ast::LogValue::Rate(r) => r.span,
        ast::LogValue::Amount { span, .. } => *span,
        ast::LogValue::Expr(e) => e.span,
    }
}
