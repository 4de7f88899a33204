//! Checking `limit(RATE, burst: B, by: KEY, size: N)`: its units and
//! bounds, its key, and where it stands (a condition, through `&&`, `||`
//! and `!`: docs/language.md, "Rate limits").

use super::{Checker, Operand};
use crate::ir::{self, ExprKind, LimitUnit, Type};
use xpol_lang::ast;
use xpol_lang::{Diagnostic, Span};

/// Periods of a rate, as written after `/`, in nanoseconds.
const PERIODS: &[(&str, u64)] = &[
    ("s", 1_000_000_000),
    ("sec", 1_000_000_000),
    ("second", 1_000_000_000),
    ("m", 60_000_000_000),
    ("min", 60_000_000_000),
    ("minute", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("hour", 3_600_000_000_000),
    ("d", 86_400_000_000_000),
    ("day", 86_400_000_000_000),
];

/// Units of a rate or a burst, in packets or bytes (as nftables counts
/// them: a kbyte is 1024 bytes).
const UNITS: &[(&str, LimitUnit, u64)] = &[
    ("packets", LimitUnit::Packets, 1),
    ("bytes", LimitUnit::Bytes, 1),
    ("kbytes", LimitUnit::Bytes, 1 << 10),
    ("mbytes", LimitUnit::Bytes, 1 << 20),
    ("gbytes", LimitUnit::Bytes, 1 << 30),
];

const OPTIONS: [&str; 3] = ["burst", "by", "size"];

/// The most nanoseconds of credit a bucket may hold (2^62, some 146
/// years): sums of times in the kernel stay far from wrapping.
pub(super) const MAX_DEPTH_NS: u128 = 1 << 62;

/// The largest byte rate, per nanosecond: 64 bytes (64 GB/s), where a
/// minimal Ethernet frame costs a nanosecond.
const MAX_BYTES_PER_NS: u64 = 64;

fn unit_name(u: LimitUnit) -> &'static str {
    match u {
        LimitUnit::Packets => "packets",
        LimitUnit::Bytes => "bytes",
    }
}

impl Checker<'_> {
    /// `limit(...)` at `span`; `in_condition`: it stands in a predicate or
    /// an `if` condition, through `&&`, `||` and `!` only.
    pub(super) fn limit(&mut self, l: &ast::Limit, span: Span, in_condition: bool) -> Option<Operand> {
        let mut ok = true;
        if !in_condition {
            self.error_help(
                span,
                "xpol::limit::place",
                "`limit(...)` can only be tested in a rule's predicate or an `if` condition",
                "not in a condition",
                "write it in the predicate, e.g. `xdp /ip.proto == 1 && !limit(100/s)/ { drop }`, combined with `&&`, `||` and `!` only: it takes a token when evaluated, so it cannot be stored or compared",
            );
            ok = false;
        }
        let rate = self.rate(&l.rate);
        let mut burst: Option<(u64, Span)> = None;
        let mut keys: Option<(Vec<ir::Expr>, Span)> = None;
        let mut size: Option<(u64, Span)> = None;
        let mut seen: Vec<&str> = Vec::new();
        for arg in &l.args {
            let name = arg.name.name.as_str();
            if seen.contains(&name) {
                self.error(arg.span, "xpol::limit::option", format!("`{name}` is given twice"), "again here");
                ok = false;
                continue;
            }
            seen.push(name);
            match name {
                "burst" => match self.burst(&arg.value, rate.map(|(_, _, u)| u)) {
                    Some(b) => burst = Some(b),
                    None => ok = false,
                },
                "by" => match self.limit_keys(&arg.value) {
                    Some(k) => keys = Some(k),
                    None => ok = false,
                },
                "size" => match self.limit_count(&arg.value, "`size`") {
                    Some(n) => size = Some(n),
                    None => ok = false,
                },
                _ => {
                    let mut d = Diagnostic::error("xpol::limit::option", format!("unknown `limit` option `{name}`"))
                        .with_label(arg.name.span, "not an option")
                        .with_help("options: `burst: N` (the bucket's size), `by: FIELD` or `by: (FIELD, ...)` (a bucket per key), `size: N` (buckets kept)");
                    if let Some(o) = xpol_lang::suggest::closest(name, OPTIONS) {
                        d = d.with_fix(arg.name.span, o, format!("did you mean `{o}`?"), true);
                    }
                    self.diags.push(d);
                    ok = false;
                }
            }
        }
        let (rate, period_ns, unit) = rate?;
        let burst_units = match burst {
            Some((0, bspan)) => {
                self.error_help(bspan, "xpol::limit::burst", "a burst of 0 lets no packet through", "`burst: 0`", "the burst is the most the bucket holds: at least one packet (or, for a byte rate, the largest packet)");
                return None;
            }
            Some((b, _)) => b,
            None => match unit {
                LimitUnit::Packets => ir::DEFAULT_LIMIT_BURST_PACKETS,
                // One period's bytes, as nftables' bucket without `burst`.
                LimitUnit::Bytes => rate,
            },
        };
        let burst_span = burst.map_or(l.rate.span, |(_, s)| s);
        // The bucket's depth in nanoseconds, and what the kernel computes
        // from it, must stay within 64 bits (docs/language.md).
        let depth = match unit {
            LimitUnit::Packets => u128::from(burst_units) * u128::from(period_ns / rate),
            LimitUnit::Bytes => u128::from(burst_units) * u128::from(period_ns) / u128::from(rate),
        };
        let product = u128::from(burst_units) * u128::from(rate);
        if depth > MAX_DEPTH_NS || (unit == LimitUnit::Bytes && product >= 1u128 << 64) {
            self.error_help(
                burst_span,
                "xpol::limit::burst",
                format!("a burst of {burst_units} {} at this rate is more than the bucket can hold", unit_name(unit)),
                "too large",
                "the bucket holds at most 2^62 ns of credit, and for a byte rate the burst times the rate must stay under 2^64: declare a smaller `burst`",
            );
            return None;
        }
        let size = match (&keys, size) {
            (None, Some((_, sspan))) => {
                self.error_help(sspan, "xpol::limit::size", "`size` is the number of buckets kept per key, and this limit has one bucket", "no `by`", "add `by: FIELD` for a bucket per key, or remove `size`");
                return None;
            }
            (_, Some((0, sspan))) => {
                self.error_help(sspan, "xpol::limit::size", "a limit with room for no bucket", "`size: 0`", format!("give the number of keys to keep buckets for (default {})", ir::DEFAULT_LIMIT_SIZE));
                return None;
            }
            (_, Some((n, sspan))) if n > ir::MAX_LIMIT_SIZE => {
                self.error_help(
                    sspan,
                    "xpol::limit::size",
                    format!("room for {n} buckets is more than the {} a limit may keep", ir::MAX_LIMIT_SIZE),
                    format!("over {}", ir::MAX_LIMIT_SIZE),
                    "the kernel allocates every bucket when the policy loads (about 100 bytes each): declare a smaller `size`",
                );
                return None;
            }
            (_, Some((n, _))) => n as u32,
            (_, None) => ir::DEFAULT_LIMIT_SIZE,
        };
        if !ok {
            return None;
        }
        let (key_exprs, key_types) = match keys {
            Some((exprs, _)) => {
                let types = exprs.iter().map(|e| e.ty).collect();
                (exprs, types)
            }
            None => (Vec::new(), Vec::new()),
        };
        let text = self.sources.snippet(span).split_whitespace().collect::<Vec<_>>().join(" ");
        let id = self.limits.len();
        let rule = self.rules.len().saturating_sub(1) as ir::RuleId;
        self.limits.push(ir::Limit { rule, rate, period_ns, unit, burst: burst_units, keys: key_types, size, text, span });
        Some(Operand::Expr(ir::Expr { kind: ExprKind::Limit { limit: id, keys: key_exprs }, ty: Type::Bool, span }))
    }

    /// `100/s`, `10 mbytes/minute`: units per period, the period in
    /// nanoseconds, and what is counted.
    pub(super) fn rate(&mut self, r: &ast::Rate) -> Option<(u64, u64, LimitUnit)> {
        let mut ok = true;
        let period = PERIODS.iter().find(|(n, _)| *n == r.per.name).map(|(_, ns)| *ns);
        if period.is_none() {
            let mut d = Diagnostic::error("xpol::limit::rate", format!("unknown period `{}`", r.per.name))
                .with_label(r.per.span, "not a period")
                .with_help("a rate is per `s` (`second`), `m` (`minute`), `h` (`hour`) or `d` (`day`): `100/s`, `10 mbytes/m`");
            if let Some(p) = xpol_lang::suggest::closest(&r.per.name, PERIODS.iter().map(|(n, _)| *n)) {
                d = d.with_fix(r.per.span, p, format!("did you mean `{p}`?"), true);
            }
            self.diags.push(d);
            ok = false;
        }
        let (unit, scale) = match &r.unit {
            None => (LimitUnit::Packets, 1),
            Some(u) => match UNITS.iter().find(|(n, _, _)| *n == u.name) {
                Some(&(_, unit, scale)) => (unit, scale),
                None => {
                    let mut d = Diagnostic::error("xpol::limit::rate", format!("unknown unit `{}`", u.name))
                        .with_label(u.span, "not a unit")
                        .with_help("a rate counts packets (`100/s`) or bytes: `bytes`, `kbytes`, `mbytes`, `gbytes` (of 1024), e.g. `10 mbytes/s`");
                    if let Some(n) = xpol_lang::suggest::closest(&u.name, UNITS.iter().map(|(n, _, _)| *n)) {
                        d = d.with_fix(u.span, n, format!("did you mean `{n}`?"), true);
                    }
                    self.diags.push(d);
                    ok = false;
                    (LimitUnit::Packets, 1)
                }
            },
        };
        let period_ns = period?;
        if !ok {
            return None;
        }
        let rate = r.count.checked_mul(scale);
        let too_fast = match (unit, rate) {
            (_, None) => true,
            (LimitUnit::Packets, Some(n)) => n > period_ns,
            (LimitUnit::Bytes, Some(n)) => n > period_ns.saturating_mul(MAX_BYTES_PER_NS),
        };
        if r.count == 0 {
            self.error_help(r.span, "xpol::limit::rate", "a rate of 0 lets nothing through", "no rate", "to drop every packet, write `drop`; a rate is at least `1/d`");
            return None;
        }
        if too_fast {
            let most = match unit {
                LimitUnit::Packets => "a packet per nanosecond",
                LimitUnit::Bytes => "64 bytes per nanosecond",
            };
            self.error_help(r.span, "xpol::limit::rate", format!("the rate is more than {most}, the fastest a limit counts"), "too fast", "a limit this fast limits nothing: leave it out");
            return None;
        }
        Some((rate?, period_ns, unit))
    }

    /// `burst: 20`, `burst: 20 packets`, `burst: 64 kbytes`: units of the
    /// rate's kind (`rate_unit`, when the rate checked).
    fn burst(&mut self, v: &ast::LimitValue, rate_unit: Option<LimitUnit>) -> Option<(u64, Span)> {
        match v {
            ast::LimitValue::Amount { count, unit, span } => {
                let Some(&(_, u, scale)) = UNITS.iter().find(|(n, _, _)| *n == unit.name) else {
                    let mut d = Diagnostic::error("xpol::limit::burst", format!("unknown unit `{}`", unit.name))
                        .with_label(unit.span, "not a unit")
                        .with_help("a burst is in packets (`20`, `20 packets`) or, for a byte rate, bytes (`65536`, `64 kbytes`)");
                    if let Some(n) = xpol_lang::suggest::closest(&unit.name, UNITS.iter().map(|(n, _, _)| *n)) {
                        d = d.with_fix(unit.span, n, format!("did you mean `{n}`?"), true);
                    }
                    self.diags.push(d);
                    return None;
                };
                if rate_unit.is_some_and(|r| r != u) {
                    let want = rate_unit.map_or("", unit_name);
                    self.error_help(*span, "xpol::limit::burst", format!("the rate counts {want}, and this burst {}", unit_name(u)), format!("not {want}"), "give the burst in the rate's unit");
                    return None;
                }
                match count.checked_mul(scale) {
                    Some(n) => Some((n, *span)),
                    None => {
                        self.error(*span, "xpol::limit::burst", "the burst does not fit in 64 bits", "too large");
                        None
                    }
                }
            }
            other => self.limit_count(other, "`burst`"),
        }
    }

    /// A constant integer option (`size: 65536`, `burst: 20`).
    fn limit_count(&mut self, v: &ast::LimitValue, what: &str) -> Option<(u64, Span)> {
        match v {
            ast::LimitValue::Expr(e) => self.const_int(e, what).map(|n| (n, e.span)),
            ast::LimitValue::Tuple(_, span) | ast::LimitValue::Amount { span, .. } => {
                self.error(*span, "xpol::limit::option", format!("{what} is a number"), "not a number");
                None
            }
        }
    }

    /// `by: FIELD` or `by: (FIELD, ...)`: values of the packet, as `@map`
    /// keys; the span of the key.
    fn limit_keys(&mut self, v: &ast::LimitValue) -> Option<(Vec<ir::Expr>, Span)> {
        let (exprs, span): (Vec<&ast::Expr>, Span) = match v {
            ast::LimitValue::Expr(e) => (vec![e], e.span),
            ast::LimitValue::Tuple(v, span) => (v.iter().collect(), *span),
            ast::LimitValue::Amount { span, .. } => {
                self.error_help(*span, "xpol::limit::key", "`by` names the fields whose values get a bucket each", "not a field", "write e.g. `by: ip.src` or `by: (ip.src, tcp.dport)`");
                return None;
            }
        };
        let mut keys = Vec::new();
        let mut ok = true;
        for e in exprs {
            match self.value_expr(e, "a `limit` key") {
                Some(k) => keys.push(k),
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        if keys.iter().all(|k| matches!(k.kind, ExprKind::Const(_))) {
            self.error_help(span, "xpol::limit::key", "this key is the same for every packet", "a constant", "`by` takes packet fields (`by: ip.src`); for one bucket, leave `by` out");
            return None;
        }
        Some((keys, span))
    }
}
