//! Checking `synproxy(mss: N, wscale: N, sack, timestamps)`: XDP only,
//! its options, and the TCP ports the rule's predicate protects
//! (docs/language.md, "SYN proxy").

use super::Checker;
use crate::ir::{self, CmpOp, ExprKind, Field, SetRef, StmtKind, Value};
use xpol_lang::ast::Hook;
use xpol_lang::ast;
use xpol_lang::{Diagnostic, Span};

const OPTIONS: [&str; 4] = ["mss", "wscale", "sack", "timestamps"];

/// The defaults: nftables' usual `synproxy mss 1460 wscale 7 timestamp
/// sack-perm`.
pub const DEFAULT_MSS: u16 = 1460;
pub const DEFAULT_WSCALE: u8 = 7;
/// The largest window scale TCP allows (RFC 7323).
const MAX_WSCALE: u64 = 14;
/// The smallest MSS an IPv4 host must accept (RFC 879), and the largest an
/// MTU of 64 KiB leaves.
const MSS_RANGE: (u64, u64) = (536, 65495);

/// The TCP destination ports `e` lets through, where it says so plainly:
/// `tcp.dport == N`, `tcp.dport in {...}` (constants), or a conjunction
/// with one of them.
pub fn predicate_ports(e: &ir::Expr) -> Option<Vec<(u16, u16)>> {
    let is_dport = |x: &ir::Expr| matches!(x.kind, ExprKind::Field(Field::TcpDport) | ExprKind::Field(Field::L4Dport));
    match &e.kind {
        ExprKind::Cmp(CmpOp::Eq, a, b) => match (&a.kind, &b.kind) {
            (_, ExprKind::Const(Value::Int(n))) if is_dport(a) => u16::try_from(*n).ok().map(|p| vec![(p, p)]),
            (ExprKind::Const(Value::Int(n)), _) if is_dport(b) => u16::try_from(*n).ok().map(|p| vec![(p, p)]),
            _ => None,
        },
        ExprKind::In(a, SetRef::Inline(set)) if is_dport(a) && !set.ints.is_empty() => {
            set.ints.iter().map(|&(lo, hi)| Some((u16::try_from(lo).ok()?, u16::try_from(hi.min(65535)).ok()?))).collect()
        }
        ExprKind::And(a, b) => predicate_ports(a).or_else(|| predicate_ports(b)),
        _ => None,
    }
}

impl Checker<'_> {
    /// `synproxy(...)` at `span`.
    pub(super) fn synproxy(&mut self, span: Span, args: &[ast::LbArg]) -> Option<StmtKind> {
        let mut ok = true;
        if self.hook != Hook::Xdp {
            self.error_help(
                span,
                "xpol::synproxy::hook",
                format!("`synproxy` is only available in `xdp` probes, not in `{}`", self.hook.as_str()),
                "not allowed here",
                "the SYN-ACK goes back out of the interface the SYN came in by (`XDP_TX`), before the kernel spends anything on the packet: write the rule on `xdp`",
            );
            ok = false;
        }
        let (mut mss, mut wscale, mut sack, mut timestamps) = (DEFAULT_MSS, DEFAULT_WSCALE, true, true);
        let mut seen: Vec<&str> = Vec::new();
        for arg in args {
            let name = arg.name.name.as_str();
            if seen.contains(&name) {
                self.error(arg.span, "xpol::synproxy::option", format!("`{name}` is given twice"), "again here");
                ok = false;
                continue;
            }
            seen.push(name);
            match name {
                "mss" | "wscale" => {
                    let Some(v) = &arg.value else {
                        self.error_help(arg.span, "xpol::synproxy::option", format!("`{name}` takes a number"), "no value", format!("write e.g. `{name}: {}`", if name == "mss" { "1460" } else { "7" }));
                        ok = false;
                        continue;
                    };
                    let Some(n) = self.const_int(v, &format!("`{name}`")) else {
                        ok = false;
                        continue;
                    };
                    let (lo, hi) = if name == "mss" { MSS_RANGE } else { (0, MAX_WSCALE) };
                    if n < lo || n > hi {
                        self.error_help(v.span, "xpol::synproxy::option", format!("`{name}: {n}` is out of range"), format!("not in {lo}..{hi}"), if name == "mss" { "the MSS the server takes, e.g. 1460 for an MTU of 1500" } else { "a window scale is 0 to 14 (RFC 7323); it must be the server's own" });
                        ok = false;
                    } else if name == "mss" {
                        mss = n as u16;
                    } else {
                        wscale = n as u8;
                    }
                }
                "sack" | "timestamps" => {
                    let on = match &arg.value {
                        None => true,
                        Some(ast::Expr { kind: ast::ExprKind::Bool(b), .. }) => *b,
                        Some(v) => {
                            self.error_help(v.span, "xpol::synproxy::option", format!("`{name}` is on or off"), "not `true` or `false`", format!("write `{name}` (on, the default) or `{name}: false`"));
                            ok = false;
                            continue;
                        }
                    };
                    if name == "sack" {
                        sack = on;
                    } else {
                        timestamps = on;
                    }
                }
                _ => {
                    let mut d = Diagnostic::error("xpol::synproxy::option", format!("unknown `synproxy` option `{name}`"))
                        .with_label(arg.name.span, "not an option")
                        .with_help("options: `mss: N`, `wscale: N`, `sack` (or `sack: false`), `timestamps` (or `timestamps: false`)");
                    if let Some(o) = xpol_lang::suggest::closest(name, OPTIONS) {
                        d = d.with_fix(arg.name.span, o, format!("did you mean `{o}`?"), true);
                    }
                    self.diags.push(d);
                    ok = false;
                }
            }
        }
        let ports = self.predicate.as_ref().and_then(predicate_ports);
        let Some(ports) = ports else {
            self.error_help(
                span,
                "xpol::synproxy::ports",
                "`synproxy` needs its rule's predicate to name the TCP ports it protects",
                "for which ports?",
                "write the ports in the predicate, e.g. `xdp /tcp.dport in {80, 443}/ { synproxy }`: the host's netfilter side (which completes the handshake with the server) is scoped to them",
            );
            return None;
        };
        if !ok {
            return None;
        }
        let text = self.sources.snippet(span).split_whitespace().collect::<Vec<_>>().join(" ");
        let rule = self.rules.len().saturating_sub(1) as ir::RuleId;
        self.synproxies.push(ir::Synproxy { rule, mss, wscale, sack, timestamps, ports, text, span });
        Some(StmtKind::Synproxy(self.synproxies.len() - 1))
    }
}
