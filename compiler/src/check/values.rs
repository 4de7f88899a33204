//! Whether a comparison or a membership test on a packet field can hold,
//! given the values the field takes ([`Field::values`]: `tcp.dport` is 0 to
//! 65535) and the address family of `ip4.*` and `ip6.*`. A test that can
//! never hold is an error (the policy says something it cannot mean); one
//! that always holds where the field is present, a warning.

use super::{Checker, ConstSet};
use crate::ir::{self, CmpOp, ExprKind, SetRef, Type, Value};
use std::net::IpAddr;
use xpol_lang::{Diagnostic, Span};

use super::fields::Field;

/// The values as words: "0 to 65535", "4 or 6".
fn describe(values: &[(u64, u64)]) -> String {
    let parts: Vec<String> = values.iter().map(|&(lo, hi)| if lo == hi { lo.to_string() } else { format!("{lo} to {hi}") }).collect();
    match parts.as_slice() {
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
        [] => "nothing".to_string(),
    }
}

fn holds(values: &[(u64, u64)], v: u64) -> bool {
    values.iter().any(|&(lo, hi)| lo <= v && v <= hi)
}

/// 4 or 6 for an `ip4.*`/`ip6.*` field or an address constant, and
/// whether it is a field.
fn family(e: &ir::Expr) -> Option<(u8, bool)> {
    match e.kind {
        ExprKind::Field(f) if f.is_v4_only() => Some((4, true)),
        ExprKind::Field(f) if f.is_v6_only() => Some((6, true)),
        ExprKind::Const(Value::Ip(IpAddr::V4(_))) => Some((4, false)),
        ExprKind::Const(Value::Ip(IpAddr::V6(_))) => Some((6, false)),
        _ => None,
    }
}

fn an_address(family: u8) -> &'static str {
    if family == 4 {
        "an IPv4 address"
    } else {
        "an IPv6 address"
    }
}

/// The field of the other family (`ip4.src` -> `ip6.src`) and the field of
/// both (`ip.src`).
fn other_family(f: Field) -> Option<(Field, Field)> {
    Some(match f {
        Field::Ip4Src => (Field::Ip6Src, Field::IpSrc),
        Field::Ip4Dst => (Field::Ip6Dst, Field::IpDst),
        Field::Ip6Src => (Field::Ip4Src, Field::IpSrc),
        Field::Ip6Dst => (Field::Ip4Dst, Field::IpDst),
        _ => return None,
    })
}

impl Checker<'_> {
    /// Checks `a OP b` (of one type, checked) against the values a field in
    /// it takes; `None` when it can never hold (reported).
    pub(super) fn comparison_can_hold(&mut self, op: CmpOp, a: &ir::Expr, b: &ir::Expr, span: Span) -> Option<()> {
        match a.ty {
            Type::Int => self.int_comparison(op, a, b, span),
            Type::Ip => self.family_comparison(op, a, b, span),
            _ => Some(()),
        }
    }

    fn int_comparison(&mut self, op: CmpOp, a: &ir::Expr, b: &ir::Expr, span: Span) -> Option<()> {
        let (f, fspan, op, c, cspan) = match (&a.kind, &b.kind) {
            (ExprKind::Field(f), ExprKind::Const(Value::Int(c))) => (*f, a.span, op, *c, b.span),
            (ExprKind::Const(Value::Int(c)), ExprKind::Field(f)) => (*f, b.span, op.flipped(), *c, a.span),
            _ => return Some(()),
        };
        let Some(values) = f.values() else { return Some(()) };
        let (min, max) = (values[0].0, values[values.len() - 1].1);
        let (never, always) = match op {
            CmpOp::Eq => (!holds(values, c), false),
            CmpOp::Ne => (false, !holds(values, c)),
            CmpOp::Lt => (c <= min, c > max),
            CmpOp::Le => (c < min, c >= max),
            CmpOp::Gt => (c >= max, c < min),
            CmpOp::Ge => (c > max, c <= min),
        };
        // Always true with a value of the field (`ip.ttl >= 0`) says the
        // field is present, which may be meant; with another, a mistake.
        let always = always && !holds(values, c);
        let shown = format!("{} {} {c}", f.name(), op.as_str());
        let range = describe(values);
        let beyond = if c > max {
            format!("over {max}")
        } else if c < min {
            format!("under {min}")
        } else if c == max && never {
            format!("the largest `{}`", f.name())
        } else if c == min && never {
            format!("the smallest `{}`", f.name())
        } else {
            format!("not a value of `{}`", f.name())
        };
        let _ = span;
        if never {
            self.diags.push(
                Diagnostic::error("xpol::range::never", format!("`{shown}` is never true: `{}` is {range}", f.name()))
                    .with_label(cspan, beyond)
                    .with_label(fspan, range),
            );
            return None;
        }
        if always {
            self.diags.push(
                Diagnostic::warning("xpol::lint::always_true", format!("`{shown}` holds for every packet that has `{}`, which is {range}", f.name()))
                    .with_label(cspan, beyond)
                    .with_label(fspan, range),
            );
        }
        Some(())
    }

    fn family_comparison(&mut self, op: CmpOp, a: &ir::Expr, b: &ir::Expr, _span: Span) -> Option<()> {
        let (Some((fa, a_field)), Some((fb, b_field))) = (family(a), family(b)) else { return Some(()) };
        if fa == fb || !(a_field || b_field) || !matches!(op, CmpOp::Eq | CmpOp::Ne) {
            return Some(());
        }
        let (field, other) = if a_field { (a, b) } else { (b, a) };
        let ExprKind::Field(f) = field.kind else { return Some(()) };
        let text = |e: &ir::Expr| match e.kind {
            ExprKind::Field(f) => f.name().to_string(),
            ExprKind::Const(v) => v.to_string(),
            _ => String::new(),
        };
        let shown = format!("{} {} {}", text(a), op.as_str(), text(b));
        let (f_family, o_family) = if a_field { (fa, fb) } else { (fb, fa) };
        if op == CmpOp::Ne {
            self.diags.push(
                Diagnostic::warning("xpol::lint::always_true", format!("`{shown}` holds for every packet that has `{}`: {} is never {}", f.name(), an_address(f_family), an_address(o_family)))
                    .with_label(field.span, an_address(f_family))
                    .with_label(other.span, an_address(o_family)),
            );
            return Some(());
        }
        let mut d = Diagnostic::error("xpol::type::family", format!("`{shown}` is never true: {} is never {}", an_address(f_family), an_address(o_family)))
            .with_label(field.span, an_address(f_family))
            .with_label(other.span, an_address(o_family));
        if let (Some((counterpart, both)), false) = (other_family(f), matches!(other.kind, ExprKind::Field(_))) {
            d = d.with_fix(
                field.span,
                counterpart.name(),
                format!("test `{}` for IPv{o_family} packets, or `{}`, which holds either family", counterpart.name(), both.name()),
                false,
            );
        }
        self.diags.push(d);
        None
    }

    /// Checks `lhs in set` (`negated`: `!in`) against the values a field
    /// takes; `None` when it can never hold (reported).
    pub(super) fn membership_can_hold(&mut self, lhs: &ir::Expr, set: &SetRef, span: Span, negated: bool) -> Option<()> {
        // A set declared with `set` may change while the policy runs: what
        // it holds now only warns.
        let (contents, fixed, name): (ConstSet, bool, Option<String>) = match set {
            SetRef::Named(id) => {
                let s = &self.sets[*id];
                (s.contents.clone(), !s.mutable, s.mutable.then(|| s.name.clone()))
            }
            SetRef::Inline(s) => (s.clone(), true, None),
            // Written by the packet path: any value may be in it.
            SetRef::Dynamic(_) => return Some(()),
        };
        if contents.is_empty() {
            if fixed {
                let holds = if negated { "`!in` it always holds" } else { "`in` it never holds" };
                self.diags.push(
                    Diagnostic::warning("xpol::lint::empty_set", format!("this set is empty, so {holds}"))
                        .with_label(span, "no elements")
                        .with_help("a set filled while the policy runs (`xpol set`) is declared `set NAME: TYPE = {}`"),
                );
            }
            return Some(());
        }
        let ExprKind::Field(f) = lhs.kind else { return Some(()) };
        let family_missing = (f.is_v4_only() && contents.v4.is_empty()) || (f.is_v6_only() && contents.v6.is_empty());
        if family_missing {
            let (have, want) = if f.is_v4_only() { ("IPv6", "IPv4") } else { ("IPv4", "IPv6") };
            let why = format!("it holds {have} prefixes only, and `{}` is {}", f.name(), if want == "IPv4" { "an IPv4 address" } else { "an IPv6 address" });
            let help = Some(format!("use `{}`, which holds either family", other_family(f).map_or("ip.src", |(_, both)| both.name())));
            return self.cannot_be_in(f, (lhs.span, an_address(if want == "IPv4" { 4 } else { 6 }).to_string()), span, (fixed, negated, name), "xpol::type::family", why, help);
        }
        let Some(values) = f.values() else { return Some(()) };
        if contents.ints.is_empty() {
            return Some(());
        }
        let overlaps = |&(lo, hi): &(u64, u64)| values.iter().any(|&(a, b)| lo <= b && a <= hi);
        let within = |&(lo, hi): &(u64, u64)| values.iter().any(|&(a, b)| a <= lo && hi <= b);
        let range = describe(values);
        if !contents.ints.iter().any(overlaps) {
            let why = format!("`{}` is {range}", f.name());
            return self.cannot_be_in(f, (lhs.span, range), span, (fixed, negated, name), "xpol::range::never", why, None);
        }
        if let Some(&(lo, hi)) = contents.ints.iter().find(|e| !within(e)) {
            let (what, never) = if lo == hi { (format!("{lo}"), true) } else { (format!("{lo}..{hi}"), !overlaps(&(lo, hi))) };
            let message = if never {
                format!("{what} never matches `{}`, which is {range}", f.name())
            } else {
                format!("the range {what} reaches past the values of `{}`, which is {range}", f.name())
            };
            self.diags.push(Diagnostic::warning("xpol::lint::out_of_range", message).with_label(span, format!("holds {what}")).with_label(lhs.span, range));
        }
        Some(())
    }

    /// `f in S` where no element of `S` can be a value of `f`: an error for
    /// a set fixed at compile time, a warning for `!in` (always holds) and
    /// for a named set (it may change).
    #[allow(clippy::too_many_arguments)]
    fn cannot_be_in(&mut self, f: Field, (fspan, field_label): (Span, String), span: Span, (fixed, negated, name): (bool, bool, Option<String>), code: &str, why: String, help: Option<String>) -> Option<()> {
        let d = match (fixed, negated) {
            (true, false) => Diagnostic::error(code, format!("`{}` is never in this set: {why}", f.name())),
            (true, true) => Diagnostic::warning("xpol::lint::always_true", format!("this `!in` holds for every packet that has `{}`: {why}", f.name())),
            (false, _) => Diagnostic::warning(
                "xpol::lint::never_matches",
                format!("set `{}` starts with no element `{}` can match: {why}", name.as_deref().unwrap_or(""), f.name()),
            ),
        };
        let help = match (help, fixed) {
            (help, true) => help,
            (Some(help), false) => Some(format!("{help}; `xpol set` may add elements it matches later")),
            (None, false) => Some("`xpol set` may add elements it matches later".to_string()),
        };
        let mut d = d.with_label(span, "this set").with_label(fspan, field_label);
        if let Some(help) = help {
            d = d.with_help(help);
        }
        self.diags.push(d);
        if fixed && !negated {
            None
        } else {
            Some(())
        }
    }

    /// `a & b`, `a | b` on booleans: `&&`, `||` were meant.
    pub(super) fn bitwise_on_booleans(&mut self, op: xpol_lang::ast::BinOp, lhs: Span, rhs: Span, span: Span) {
        let (sym, logical) = if op == xpol_lang::ast::BinOp::BitAnd { ("&", "&&") } else { ("|", "||") };
        let mut d = Diagnostic::error("xpol::type::mismatch", format!("`{sym}` works on the bits of integers, and these are booleans"))
            .with_label(lhs, "`bool`")
            .with_label(rhs, "`bool`");
        // The operator is the one `sym` between the operands.
        let between = Span { start: lhs.end, end: rhs.start, ..span };
        if let Some(i) = self.sources.snippet(between).find(sym) {
            let at = between.start + i as u32;
            d = d.with_fix(Span { start: at, end: at + 1, ..span }, logical, format!("did you mean `{logical}`?"), true);
        }
        self.diags.push(d);
    }

    /// A `/0` prefix tested or held in a set: every address of its family.
    pub(super) fn zero_prefix(&mut self, addr: IpAddr, span: Span) {
        // A slip (a zero typed for a length, a list gone wrong) that makes
        // a blocklist block everything.
        let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
        self.diags.push(
            Diagnostic::warning("xpol::lint::zero_prefix", format!("a /0 prefix matches every {family} address"))
                .with_label(span, format!("every {family} address"))
                .with_help(format!("if that is meant, test the family instead (`ip.version == {}`)", if addr.is_ipv4() { 4 } else { 6 })),
        );
    }
}
