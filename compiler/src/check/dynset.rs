//! Checking dynamic sets (docs/language.md, "Dynamic sets"): the
//! declaration `set NAME: TYPE dynamic [max N] [timeout D]`, and the
//! statements `add(SET, KEY [, timeout: D])` and `delete(SET, KEY)` that
//! write one from the packet path. `KEY in SET` is checked with the other
//! memberships (`Checker::set_ref`).

use super::{Checker, Global};
use crate::ir::{self, StmtKind, Type};
use xpol_lang::ast;
use xpol_lang::{Diagnostic, Span};

const NS_PER_S: u64 = 1_000_000_000;

/// The longest timeout: a year, so that `now + timeout` never wraps the
/// kernel's nanosecond clock and a mistyped unit is caught.
pub const MAX_DYNSET_TIMEOUT_S: u64 = 366 * 86_400;

impl Checker<'_> {
    /// `set NAME: TYPE dynamic ...`.
    pub(super) fn dynset_decl(&mut self, decl: &ast::SetDecl, dynamic: &ast::DynamicSet) {
        if let Some(span) = dynamic.init {
            self.error_help(
                span,
                "xpol::set::dynamic",
                format!("dynamic set `{}` starts empty: its packets fill it", decl.name.name),
                "elements given",
                "remove `= ...`; `xpol set NAME SET add ADDR` adds elements to a running policy",
            );
        }
        let key = match decl.ty.name.as_str() {
            "ip" => Some(Type::Ip),
            "int" | "port" => Some(Type::Int),
            "mac" => Some(Type::Mac),
            "cidr" => {
                self.error_help(
                    decl.ty.span,
                    "xpol::set::type",
                    "a dynamic set holds addresses, not prefixes",
                    "`cidr`",
                    "declare it `ip`: `add(SET, ip.src)` adds the packet's address (IPv4 or IPv6)",
                );
                None
            }
            other => {
                let mut d = Diagnostic::error("xpol::set::type", format!("unknown set element type `{other}`"))
                    .with_label(decl.ty.span, "not an element type")
                    .with_help("a dynamic set holds `ip` (addresses of either family), `int`, `port` or `mac`");
                if let Some(t) = xpol_lang::suggest::closest(other, ["ip", "int", "port", "mac"]) {
                    d = d.with_fix(decl.ty.span, t, format!("did you mean `{t}`?"), true);
                }
                self.diags.push(d);
                None
            }
        };
        let size = match decl.max {
            None => Some(ir::DEFAULT_DYNSET_SIZE),
            Some((n, span)) if n == 0 || n > ir::MAX_DYNSET_SIZE => {
                self.error_help(
                    span,
                    "xpol::set::max",
                    format!("a dynamic set holds 1 to {} elements", ir::MAX_DYNSET_SIZE),
                    format!("{n}"),
                    format!("leave `max` out for {} elements", ir::DEFAULT_DYNSET_SIZE),
                );
                None
            }
            Some((n, _)) => Some(n as u32),
        };
        let timeout_ns = match dynamic.timeout {
            None => Some(None),
            Some((secs, span)) => self.dynset_timeout(secs, span).map(Some),
        };
        // Declared even when wrong, so that its uses say nothing more.
        let id = self.dynsets.len();
        if let (Some(key), Some(size), Some(timeout_ns)) = (key, size, timeout_ns) {
            self.dynsets.push(ir::DynSet { name: decl.name.name.clone(), key, elem: decl.ty.name.clone(), size, timeout_ns, span: decl.name.span });
            self.declare(&decl.name, Global::DynSet { id: Some(id), span: decl.name.span });
        } else {
            self.declare(&decl.name, Global::DynSet { id: None, span: decl.name.span });
        }
    }

    /// A timeout of `secs` seconds written at `span`, in nanoseconds.
    fn dynset_timeout(&mut self, secs: u64, span: Span) -> Option<u64> {
        if secs == 0 || secs > MAX_DYNSET_TIMEOUT_S {
            self.error_help(
                span,
                "xpol::set::timeout",
                "a dynamic set's timeout is 1 second to 366 days",
                if secs == 0 { "0".to_string() } else { "too long".to_string() },
                "write e.g. `timeout 10m`; without a timeout an element stays until deleted",
            );
            return None;
        }
        Some(secs * NS_PER_S)
    }

    /// `add(SET, KEY, timeout: D)` or `delete(SET, KEY)`.
    pub(super) fn set_write_stmt(&mut self, op: ast::SetOp, set: &ast::Ident, key: &ast::Expr, option: &Option<(ast::Ident, u64, Span)>) -> Option<StmtKind> {
        let verb = match op {
            ast::SetOp::Add => "add",
            ast::SetOp::Delete => "delete",
        };
        let key = self.value_expr(key, &format!("the key of `{verb}`"));
        let id = self.dynset_named(set, verb)?;
        let key = key?;
        let d = &self.dynsets[id];
        if key.ty != d.key {
            let msg = format!("dynamic set `{}` holds `{}`, and this is `{}`", d.name, d.key, key.ty);
            let decl = d.span;
            self.diags.push(Diagnostic::error("xpol::type::mismatch", msg).with_label(key.span, format!("`{}`", key.ty)).with_label(decl, "declared here"));
            return None;
        }
        let default = d.timeout_ns;
        let op = match (op, option) {
            (ast::SetOp::Add, None) => ir::SetWrite::Add { timeout_ns: default },
            (ast::SetOp::Add, Some((word, secs, span))) if word.name == "timeout" => ir::SetWrite::Add { timeout_ns: Some(self.dynset_timeout(*secs, *span)?) },
            (ast::SetOp::Delete, Some((word, _, span))) if word.name == "timeout" => {
                self.error_help(*span, "xpol::set::option", "`delete` takes no timeout", "here", "remove it: `delete(SET, KEY)`");
                return None;
            }
            (_, Some((word, _, _))) => {
                let mut d = Diagnostic::error("xpol::set::option", format!("unknown `{verb}` option `{}`", word.name)).with_label(word.span, "not an option");
                d = if op == ast::SetOp::Add {
                    d.with_help("`add` takes `timeout: D`, e.g. `add(banned, ip.src, timeout: 10m)`")
                } else {
                    d.with_help("`delete` takes no options")
                };
                if let (ast::SetOp::Add, Some(o)) = (op, xpol_lang::suggest::closest(&word.name, ["timeout"])) {
                    d = d.with_fix(word.span, o, format!("did you mean `{o}`?"), true);
                }
                self.diags.push(d);
                return None;
            }
            (ast::SetOp::Delete, None) => ir::SetWrite::Delete,
        };
        Some(StmtKind::SetWrite { set: id, key, op })
    }

    /// The dynamic set `set` names, for `verb`; `None` after reporting why
    /// not.
    fn dynset_named(&mut self, set: &ast::Ident, verb: &str) -> Option<ir::DynSetId> {
        match self.globals.get(&set.name).cloned() {
            Some(Global::DynSet { id, .. }) => id,
            Some(Global::Set { span, .. }) => {
                self.diags.push(
                    Diagnostic::error("xpol::set::not_dynamic", format!("`{verb}` writes a dynamic set, and `{}` is not one", set.name))
                        .with_label(set.span, "a set the packet path cannot write")
                        .with_label(span, "declared here")
                        .with_help(format!("declare it `set {}: ip dynamic timeout 10m` (no initial elements); `xpol set` changes other sets", set.name)),
                );
                None
            }
            Some(Global::Const { .. }) => {
                self.error_help(set.span, "xpol::set::not_dynamic", format!("`{verb}` writes a dynamic set, and `{}` is a const", set.name), "a const", "declare a set with `set NAME: ip dynamic`");
                None
            }
            None => {
                let names: Vec<String> = self.globals.iter().filter(|(_, g)| matches!(g, Global::DynSet { .. })).map(|(n, _)| n.clone()).collect();
                let mut d = Diagnostic::error("xpol::name::unknown", format!("unknown set `{}`", set.name))
                    .with_label(set.span, "not declared")
                    .with_help(format!("declare it: `set {}: ip dynamic timeout 10m`", set.name));
                if let Some(n) = xpol_lang::suggest::closest(&set.name, names.iter().map(|s| s.as_str())) {
                    d = d.with_fix(set.span, n, format!("did you mean `{n}`?"), true);
                }
                self.diags.push(d);
                None
            }
        }
    }

    /// The right side of `KEY in SET` when it is a dynamic set.
    pub(super) fn dynset_ref(&mut self, lhs: &ir::Expr, id: ir::DynSetId, span: Span) -> Option<ir::SetRef> {
        let d = &self.dynsets[id];
        if lhs.ty != d.key {
            let msg = format!("`{}` cannot be in dynamic set `{}`, which holds `{}`", lhs.ty, d.name, d.key);
            let d = Diagnostic::error("xpol::type::mismatch", msg).with_label(lhs.span, format!("`{}`", lhs.ty)).with_label(span, format!("a set of `{}`", self.dynsets[id].key));
            self.diags.push(d);
            return None;
        }
        Some(ir::SetRef::Dynamic(id))
    }
}

