//! Checking connection state: `ct.state` compared with the states' names
//! (`new`, `established`, `related`, `invalid`), `conntrack flows N`, and
//! the programs that record connections (docs/conntrack.md).

use super::{Checker, Operand};
use crate::check::fields::Field;
use crate::ir::{self, CmpOp, ConstSet, CtState, ExprKind, SetRef, Type, Value};
use std::collections::BTreeMap;
use xpol_lang::ast::{self, BinOp, Hook};
use xpol_lang::{Diagnostic, Span};

/// The options of `conntrack`.
const OPTIONS: [&str; 1] = ["flows"];

/// Whether `e` is the field `ct.state` as written.
fn is_ct_state(e: &ast::Expr) -> bool {
    matches!(&e.kind, ast::ExprKind::Path(segs) if segs.len() == 2 && segs[0].name == "ct" && segs[1].name == "state")
}

/// The state a plain name stands for in a comparison with `ct.state`.
fn state_named(e: &ast::Expr) -> Option<CtState> {
    match &e.kind {
        ast::ExprKind::Path(segs) if segs.len() == 1 => CtState::by_name(&segs[0].name),
        _ => None,
    }
}

fn state_names() -> String {
    CtState::ALL.iter().map(|s| format!("`{}`", s.name())).collect::<Vec<_>>().join(", ")
}

impl Checker<'_> {
    /// A comparison or membership test with `ct.state` on one side: the
    /// other side names states. `None` when neither side is `ct.state`
    /// (an ordinary operation); else the checked operation, or `Some(None)`
    /// after an error.
    pub(super) fn ct_state_test(&mut self, op: BinOp, lhs: &ast::Expr, rhs: &ast::Expr, span: Span) -> Option<Option<Operand>> {
        let (field_side, other) = match (is_ct_state(lhs), is_ct_state(rhs)) {
            (true, _) => (lhs, rhs),
            // `established == ct.state`; `x in ct.state` is not a test of states.
            (false, true) if matches!(op, BinOp::Eq | BinOp::Ne) => (rhs, lhs),
            _ => return None,
        };
        self.ct_used(field_side.span);
        let field = ir::Expr { kind: ExprKind::Field(Field::CtState), ty: Type::Int, span: field_side.span };
        let cmp = match op {
            BinOp::Eq => CmpOp::Eq,
            BinOp::Ne => CmpOp::Ne,
            BinOp::In | BinOp::NotIn => return Some(self.ct_state_in(field, other, op == BinOp::NotIn, span)),
            _ => {
                self.error_help(
                    span,
                    "xpol::conntrack::compare",
                    format!("`{}` does not order connection states", op.as_str()),
                    "states have no order",
                    format!("compare `ct.state` with `==`, `!=` or `in`, e.g. `ct.state in {{established, related}}` (states: {})", state_names()),
                );
                return Some(None);
            }
        };
        let Some(state) = self.state_operand(other) else { return Some(None) };
        let value = ir::Expr { kind: ExprKind::Const(Value::Int(state.number())), ty: Type::Int, span: other.span };
        Some(Some(Operand::Expr(ir::Expr { kind: ExprKind::Cmp(cmp, Box::new(field), Box::new(value)), ty: Type::Bool, span })))
    }

    /// `ct.state in {established, related}` (or `in established`).
    fn ct_state_in(&mut self, field: ir::Expr, set: &ast::Expr, negated: bool, span: Span) -> Option<Operand> {
        let elements: Vec<&ast::Expr> = match &set.kind {
            ast::ExprKind::SetLit(elements) => elements.iter().collect(),
            _ => vec![set],
        };
        if elements.is_empty() {
            self.error_help(set.span, "xpol::conntrack::compare", "an empty set of connection states", "no state", format!("name the states, e.g. `{{established, related}}` (states: {})", state_names()));
            return None;
        }
        let mut states = ConstSet::default();
        let mut ok = true;
        for e in elements {
            match self.state_operand(e) {
                Some(s) => states.ints.push((s.number(), s.number())),
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        states.ints.sort_unstable();
        states.ints.dedup();
        let mut e = ir::Expr { kind: ExprKind::In(Box::new(field), SetRef::Inline(states)), ty: Type::Bool, span };
        if negated {
            e = ir::Expr { kind: ExprKind::Not(Box::new(e)), ty: Type::Bool, span };
        }
        Some(Operand::Expr(e))
    }

    /// The state `e` names, or an error at it.
    fn state_operand(&mut self, e: &ast::Expr) -> Option<CtState> {
        if let Some(s) = state_named(e) {
            return Some(s);
        }
        let mut d = Diagnostic::error("xpol::conntrack::compare", "`ct.state` is compared with the name of a state")
            .with_label(e.span, "not a state")
            .with_help(format!("the states are {}", state_names()));
        if let ast::ExprKind::Path(segs) = &e.kind {
            if let Some(s) = segs.last().filter(|_| segs.len() == 1).and_then(|n| xpol_lang::suggest::closest(&n.name, CtState::ALL.iter().map(|s| s.name()))) {
                d = d.with_fix(e.span, s, format!("did you mean `{s}`?"), true);
            }
        }
        self.diags.push(d);
        None
    }

    /// A rule reads `ct.state` here.
    pub(super) fn ct_used(&mut self, span: Span) {
        self.ct_first.get_or_insert(span);
    }

    /// The error for a state's name outside a comparison with `ct.state`,
    /// if `name` is one.
    pub(super) fn state_name_outside(&mut self, name: &str, span: Span) -> bool {
        let Some(state) = CtState::by_name(name) else { return false };
        self.error_help(
            span,
            "xpol::name::unknown",
            format!("`{name}` is a connection state, and means one only compared with `ct.state`"),
            "not defined here",
            format!("write e.g. `ct.state == {}` or `ct.state in {{established, related}}`", state.name()),
        );
        true
    }

    /// The connection table, once every rule is checked: its options from
    /// the `conntrack` declarations, and the programs that record
    /// connections, which the policy gets if it lacks them.
    pub(super) fn conntrack(&mut self, decls: &[&ast::ConntrackDecl], programs: &mut BTreeMap<Hook, Vec<ir::Probe>>) -> Option<ir::Conntrack> {
        let mut flows: Option<u32> = None;
        let mut first: Option<Span> = None;
        for d in decls {
            // A second declaration is an error, and its options are
            // checked all the same.
            let again = first.is_some();
            if let Some(prev) = first {
                self.diags.push(
                    Diagnostic::error("xpol::conntrack::duplicate", "the connection table is declared twice")
                        .with_label(d.span, "declared again here")
                        .with_label(prev, "first declared here")
                        .with_help("keep one `conntrack ...` declaration with every option"),
                );
            }
            first.get_or_insert(d.span);
            let mut seen: Vec<&str> = Vec::new();
            for (word, value, ospan) in &d.options {
                let name = word.name.as_str();
                if !OPTIONS.contains(&name) {
                    let mut diag = Diagnostic::error("xpol::conntrack::option", format!("unknown `conntrack` option `{name}`"))
                        .with_label(word.span, "not an option")
                        .with_help("`conntrack flows N`: the most connections the table holds");
                    if let Some(o) = xpol_lang::suggest::closest(name, OPTIONS.iter().copied()) {
                        diag = diag.with_fix(word.span, o, format!("did you mean `{o}`?"), true);
                    }
                    self.diags.push(diag);
                    continue;
                }
                if seen.contains(&name) {
                    self.error(*ospan, "xpol::conntrack::option", format!("`{name}` is given twice"), "again here");
                    continue;
                }
                seen.push(name);
                if *value == 0 || *value > ir::MAX_CT_FLOWS {
                    self.error_help(
                        *ospan,
                        "xpol::conntrack::flows",
                        format!("the connection table cannot hold {value} connections"),
                        format!("not 1 to {}", ir::MAX_CT_FLOWS),
                        format!(
                            "give 1 to {} (the kernel allocates every entry when the policy loads, about 150 bytes each), or leave it out for {}",
                            ir::MAX_CT_FLOWS,
                            ir::DEFAULT_CT_FLOWS
                        ),
                    );
                    continue;
                }
                if !again {
                    flows = Some(*value as u32);
                }
            }
        }
        let Some(span) = self.ct_first else {
            if let Some(decl) = first {
                self.error_help(
                    decl,
                    "xpol::conntrack::unused",
                    "the connection table is declared but no rule reads `ct.state`",
                    "never used",
                    "the table is made for rules that read `ct.state`: write one, or remove the declaration",
                );
            }
            return None;
        };
        // Connections are recorded where packets come in and where they
        // go out: the first ingress program (XDP sees packets before TC)
        // and TC egress, which the policy gets without rules of its own.
        let ingress = if programs.contains_key(&Hook::Xdp) { Hook::Xdp } else { Hook::TcIngress };
        let trackers = vec![ingress, Hook::TcEgress];
        for &h in &trackers {
            programs.entry(h).or_default();
        }
        Some(ir::Conntrack { flows: flows.unwrap_or(ir::DEFAULT_CT_FLOWS), trackers, timeouts: ir::CtTimeouts::default(), span })
    }
}
