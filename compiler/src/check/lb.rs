//! Checking the load balancer: `pool` declarations, `lb(...)` statements
//! and `=> lb(POOL, ADDR)` test expectations.

use super::{Checker, Operand};
use crate::ir::{self, Balance, Delivery, Encap, ExprKind, FlowHash, OuterSource, Value};
use std::net::IpAddr;
use xpol_lang::ast::{self, Hook};
use xpol_lang::{maglev, meta};
use xpol_lang::{Diagnostic, Span};

/// The longest `idle D`: a day.
const MAX_IDLE_SECS: u64 = 24 * 3600;

const LB_OPTIONS: &str = "`encap: ipip` or `encap: gue, port: N`, `src: ADDR` or `src: PREFIX`, or `nat` (with `port: N`); `by: ip.src` or `by: ports`";

impl Checker<'_> {
    /// `pool NAME [table N] [flows N] [idle D] [max N] = { ADDR [weight W], ... }`:
    /// constant addresses of one family, each once; a prime table larger
    /// than the pool can grow to.
    pub(super) fn pool_decl(&mut self, decl: &ast::PoolDecl) {
        if let Some(&first) = self.pool_ids.get(&decl.name.name) {
            let span = self.pools[first].span;
            self.diags.push(
                Diagnostic::error("xpol::name::duplicate", format!("the pool `{}` is declared twice", decl.name.name))
                    .with_label(decl.name.span, "declared again here")
                    .with_label(span, "first declared here"),
            );
            return;
        }
        let mut table_size = maglev::DEFAULT_TABLE_SIZE;
        let mut flows = ir::DEFAULT_POOL_FLOWS;
        let mut max_backends: Option<(u32, Span)> = None;
        let mut ok = true;
        let mut seen: Vec<&str> = Vec::new();
        let mut idle_secs = meta::DEFAULT_IDLE_SECS;
        for ast::PoolOption { word, value: n, unit, span } in &decl.options {
            if seen.contains(&word.name.as_str()) {
                self.error(*span, "xpol::pool::option", format!("`{}` is given twice", word.name), "again here");
                ok = false;
                continue;
            }
            seen.push(&word.name);
            let is_time = word.name == "idle";
            if is_time != unit.is_some() {
                let (label, help) = if is_time {
                    ("no unit", format!("write the time with its unit: `idle {n}s`, or in minutes or hours (`5m`, `1h`)"))
                } else {
                    ("not a count", format!("`{}` takes a number, without a unit", word.name))
                };
                self.error_help(*span, "xpol::pool::option", format!("`{}` takes {}", word.name, if is_time { "a time" } else { "a number" }), label, help);
                ok = false;
                continue;
            }
            match word.name.as_str() {
                "idle" => {
                    if *n == 0 || *n > MAX_IDLE_SECS {
                        let help = format!("a flow that is not TCP keeps its backend from 1s to {}h without packets (the default is {}s)", MAX_IDLE_SECS / 3600, meta::DEFAULT_IDLE_SECS);
                        let written = match unit {
                            Some('h') => format!("{}h", n / 3600),
                            Some('m') => format!("{}m", n / 60),
                            _ => format!("{n}s"),
                        };
                        self.error_help(*span, "xpol::pool::idle", format!("an idle time of {written}"), "out of range", help);
                        ok = false;
                    } else {
                        idle_secs = *n as u32;
                    }
                }
                "table" => {
                    if *n < 2 || *n > u64::from(maglev::MAX_TABLE_SIZE) || !maglev::is_prime(*n as u32) {
                        let help = format!(
                            "the Maglev table needs a prime size, at least 100 times the backends for an even spread: e.g. 251, 1021, 4093, 16381, 65537 (the default), 262139, up to {}",
                            maglev::MAX_TABLE_SIZE
                        );
                        self.error_help(*span, "xpol::pool::table", format!("the table size {n} is not a prime up to {}", maglev::MAX_TABLE_SIZE), "not a usable table size", help);
                        ok = false;
                    } else {
                        table_size = *n as u32;
                    }
                }
                "flows" => {
                    if *n == 0 || *n > ir::MAX_POOL_FLOWS {
                        let help = format!("the flow table holds 1 to {} entries (the default is {})", ir::MAX_POOL_FLOWS, ir::DEFAULT_POOL_FLOWS);
                        self.error_help(*span, "xpol::pool::flows", format!("a flow table of {n} entries"), "out of range", help);
                        ok = false;
                    } else {
                        flows = *n as u32;
                    }
                }
                _ => {
                    if *n == 0 || *n > ir::MAX_POOL_BACKENDS {
                        let help = format!("a pool holds 1 to {} backends (the default room is {})", ir::MAX_POOL_BACKENDS, ir::DEFAULT_POOL_BACKENDS);
                        self.error_help(*span, "xpol::pool::max", format!("room for {n} backends"), "out of range", help);
                        ok = false;
                    } else {
                        max_backends = Some((*n as u32, *span));
                    }
                }
            }
        }
        let mut backends: Vec<ir::Backend> = Vec::new();
        let mut spans: Vec<Span> = Vec::new();
        let mut family: Option<(bool, Span)> = None;
        for be in &decl.backends {
            let addr = match self.expr(&be.addr) {
                Some(Operand::Expr(ir::Expr { kind: ExprKind::Const(Value::Ip(a)), .. })) => a,
                Some(_) => {
                    self.error_help(be.addr.span, "xpol::pool::backend", "a backend is an address", "not an address", "write the backend's address, e.g. `198.18.1.10` or `2001:db8:1::10`");
                    ok = false;
                    continue;
                }
                None => {
                    ok = false;
                    continue;
                }
            };
            if let Some((v6, first)) = family {
                if v6 != addr.is_ipv6() {
                    self.diags.push(
                        Diagnostic::error("xpol::pool::family", "a pool holds backends of one family")
                            .with_label(be.addr.span, if v6 { "an IPv4 backend" } else { "an IPv6 backend" })
                            .with_label(first, "the first backend")
                            .with_help("declare a pool per family; an IPv4 VIP may balance over IPv6 backends (4in6) and the reverse"),
                    );
                    ok = false;
                    continue;
                }
            } else {
                family = Some((addr.is_ipv6(), be.addr.span));
            }
            if let Some(i) = backends.iter().position(|b| b.addr == addr) {
                self.diags.push(
                    Diagnostic::error("xpol::pool::duplicate", format!("the backend {addr} is listed twice"))
                        .with_label(be.addr.span, "again here")
                        .with_label(spans[i], "first here")
                        .with_help("give a backend more of the traffic with `weight N`"),
                );
                ok = false;
                continue;
            }
            if unusable_backend(addr) {
                self.error_help(be.addr.span, "xpol::pool::backend", format!("{addr} cannot be a backend"), "not a unicast address", "a backend is a unicast address that packets can be sent to");
                ok = false;
                continue;
            }
            let weight = match be.weight {
                None => 1,
                Some((w, span)) if w > ir::MAX_BACKEND_WEIGHT => {
                    self.error_help(span, "xpol::pool::weight", format!("the weight {w} is over {}", ir::MAX_BACKEND_WEIGHT), "too large", "weights are relative: 2 gets twice the flows of 1");
                    ok = false;
                    continue;
                }
                Some((w, _)) => w as u32,
            };
            backends.push(ir::Backend { addr, weight });
            spans.push(be.addr.span);
        }
        let max = match max_backends {
            Some((n, span)) if (n as usize) < backends.len() => {
                self.error(span, "xpol::pool::max", format!("room for {n} backends, and the pool lists {}", backends.len()), "too small");
                ok = false;
                n
            }
            Some((n, _)) => n,
            // Room to grow, within the table.
            None => ir::DEFAULT_POOL_BACKENDS.min(table_size - 1).max(backends.len() as u32),
        };
        if ok && u64::from(max) >= u64::from(table_size) {
            self.error_help(decl.span, "xpol::pool::table", format!("a table of {table_size} slots for up to {max} backends"), "the table is too small", "the table needs more slots than backends (100 times as many for an even spread): raise `table N` or lower `max N`");
            ok = false;
        }
        // Kept even when wrong, so that `lb(NAME)` does not report it unknown.
        let id = self.pools.len();
        self.pool_ids.insert(decl.name.name.clone(), id);
        self.pools.push(ir::Pool {
            name: decl.name.name.clone(),
            v6: family.is_some_and(|(v6, _)| v6),
            backends,
            table_size,
            max_backends: max,
            flows,
            idle_secs,
            span: decl.name.span,
        });
        if !ok {
            self.failed_pools.insert(id);
        }
    }

    fn pool_ref(&mut self, name: &ast::Ident) -> Option<ir::PoolId> {
        match self.pool_ids.get(&name.name) {
            Some(&id) if self.failed_pools.contains(&id) => None,
            Some(&id) => Some(id),
            None => {
                let help = if self.pool_ids.is_empty() {
                    "declare it first: `pool web = { 198.18.1.10, 198.18.1.11 }`".to_string()
                } else {
                    let mut names: Vec<&str> = self.pool_ids.keys().map(String::as_str).collect();
                    names.sort_unstable();
                    format!("the pools: {}", names.join(", "))
                };
                self.error_help(name.span, "xpol::name::unknown", format!("unknown pool `{}`", name.name), "not a pool", help);
                None
            }
        }
    }

    /// `lb(POOL, encap: ..., src: ..., port: ..., by: ...)` in an `xdp` probe.
    pub(super) fn lb_stmt(&mut self, stmt: &ast::Stmt, pool: &ast::Ident, args: &[ast::LbArg]) -> Option<ir::StmtKind> {
        if self.hook != Hook::Xdp {
            self.error_help(
                stmt.span,
                "xpol::lb::hook",
                format!("`lb` balances in `xdp` probes, not in `{}`", self.hook.as_str()),
                "not available here",
                "move the rule to an `xdp` probe on the interface the VIP's traffic arrives on",
            );
            return None;
        }
        let pool_id = self.pool_ref(pool);
        let mut encap: Option<(&str, Span)> = None;
        let mut port: Option<(u16, Span)> = None;
        let mut src: Option<(OuterSource, Span)> = None;
        let mut hash = FlowHash::FiveTuple;
        let mut nat: Option<Span> = None;
        let mut ok = true;
        let mut seen: Vec<&str> = Vec::new();
        for arg in args {
            let name = arg.name.name.as_str();
            if seen.contains(&name) {
                self.error(arg.span, "xpol::lb::option", format!("`{name}` is given twice"), "again here");
                ok = false;
                continue;
            }
            seen.push(name);
            let value = arg.value.as_ref();
            let word = value.and_then(|v| match &v.kind {
                ast::ExprKind::Path(segs) => Some(segs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(".")),
                _ => None,
            });
            match (name, value) {
                ("encap", Some(v)) => match word.as_deref() {
                    Some(w @ ("ipip" | "gue")) => encap = Some((if w == "ipip" { "ipip" } else { "gue" }, v.span)),
                    _ => {
                        self.error_help(v.span, "xpol::lb::encap", "unknown encapsulation", "not `ipip` or `gue`", "write `encap: ipip` (IP in IP) or `encap: gue, port: N` (GUE in UDP)");
                        ok = false;
                    }
                },
                ("port", Some(v)) => match self.const_int(v, "a port") {
                    Some(p) if (1..=65535).contains(&p) => port = Some((p as u16, v.span)),
                    Some(p) => {
                        self.error(v.span, "xpol::lb::port", format!("{p} is not a port"), "1 to 65535");
                        ok = false;
                    }
                    None => ok = false,
                },
                ("src", Some(v)) => match self.expr(v) {
                    Some(Operand::Expr(ir::Expr { kind: ExprKind::Const(Value::Ip(a)), .. })) => src = Some((OuterSource::Fixed(a), v.span)),
                    Some(Operand::Cidr(a, l)) => src = Some((OuterSource::PerFlow(a, l), v.span)),
                    Some(_) => {
                        self.error_help(v.span, "xpol::lb::src", "the outer source is an address or a prefix", "not an address", "write `src: 198.18.0.1`, or `src: 198.18.200.0/24` for an address per flow");
                        ok = false;
                    }
                    None => ok = false,
                },
                ("by", Some(v)) => match word.as_deref() {
                    Some("ip.src") => hash = FlowHash::Source,
                    Some("ports") => hash = FlowHash::Ports,
                    Some("flow") => hash = FlowHash::FiveTuple,
                    _ => {
                        self.error_help(v.span, "xpol::lb::by", "unknown flow hash", "not a hash", "write `by: ip.src` (source affinity), `by: ports`, or leave `by` out for the 5-tuple");
                        ok = false;
                    }
                },
                ("encap" | "port" | "src" | "by", None) => {
                    self.error(arg.span, "xpol::lb::option", format!("`{name}` needs a value: `{name}: ...`"), "no value");
                    ok = false;
                }
                ("nat", None) => nat = Some(arg.span),
                ("nat", Some(v)) => {
                    self.error_help(v.span, "xpol::lb::option", "`nat` takes no value", "remove this", "write `lb(POOL, nat)`, or `lb(POOL, nat, port: N)` to send to port N of the backends");
                    ok = false;
                }
                _ => {
                    self.error_help(arg.span, "xpol::lb::option", format!("unknown `lb` option `{name}`"), "not an option", format!("options: {LB_OPTIONS}"));
                    ok = false;
                }
            }
        }
        // A wrong option is reported alone: what it would have provided is
        // not missing too.
        let pool_id = pool_id.filter(|_| ok)?;
        // A pool declared empty takes the family of its first
        // encapsulation's source.
        if let Some((OuterSource::Fixed(a) | OuterSource::PerFlow(a, _), _)) = src {
            if self.pools[pool_id].backends.is_empty() && self.family_from_src.insert(pool_id) {
                self.pools[pool_id].v6 = a.is_ipv6();
            }
        }
        let v6 = self.pools[pool_id].v6;
        let family = if v6 { "IPv6" } else { "IPv4" };
        if let Some(nat_span) = nat {
            let extra = [encap.map(|(_, s)| (s, "`encap`")), src.map(|(_, s)| (s, "`src`"))];
            if let Some((span, what)) = extra.into_iter().flatten().next() {
                self.diags.push(
                    Diagnostic::error("xpol::lb::nat", format!("{what} does not go with `nat`"))
                        .with_label(span, "an encapsulation option")
                        .with_label(nat_span, "translated, not encapsulated")
                        .with_help("`nat` rewrites the destination to the backend's (replies are translated back); `encap` wraps the packet instead: choose one"),
                );
                return None;
            }
            self.nat_pools.insert(pool_id);
            self.warn_empty_pool(pool_id, pool);
            return Some(ir::StmtKind::Lb(Balance { pool: pool_id, delivery: Delivery::Nat { port: port.map(|(p, _)| p) }, hash }));
        }
        let encap = match (encap, port) {
            (None, _) => {
                self.error_help(stmt.span, "xpol::lb::encap", "`lb` needs an encapsulation, or `nat`", "no `encap`", "add `encap: ipip` (IP in IP) or `encap: gue, port: N` (GUE in UDP), or `nat` to translate the destination");
                return None;
            }
            (Some(("ipip", _)), Some((_, span))) => {
                self.error_help(span, "xpol::lb::port", "`port` is the GUE port (or the backends' port with `nat`), and this `lb` uses `ipip`", "not used", "remove `port`, or use `encap: gue`");
                return None;
            }
            (Some(("ipip", _)), None) => Encap::Ipip,
            (Some((_, span)), None) => {
                self.error_help(span, "xpol::lb::port", "GUE needs the backends' UDP port", "no `port`", "add `port: N`, the port the backends' `fou`/`gue` receive on (e.g. 6080)");
                return None;
            }
            (Some(_), Some((p, _))) => Encap::Gue { port: p },
        };
        let src = match src {
            None => {
                let example = if v6 { "2001:db8::1" } else { "198.18.0.1" };
                self.error_help(stmt.span, "xpol::lb::src", "`lb` needs the outer source address", "no `src`", format!("add `src: ADDR`, an {family} address of this host (e.g. `src: {example}`), or a prefix for an address per flow"));
                return None;
            }
            Some((s, span)) => {
                let a = match s {
                    OuterSource::Fixed(a) | OuterSource::PerFlow(a, _) => a,
                };
                if unusable_backend(a) || matches!(s, OuterSource::Fixed(IpAddr::V4(v)) if v.is_loopback()) {
                    self.error_help(span, "xpol::lb::src", format!("{a} cannot be the outer source"), "not a unicast address of this host", "the outer source is an address of this host the backends can answer ICMP errors to");
                    return None;
                }
                if a.is_ipv6() != v6 {
                    let msg = format!("the pool `{}` holds {family} backends, so the outer source is an {family} address", pool.name);
                    self.error_help(span, "xpol::lb::src", msg, format!("not {family}"), "the outer header is of the backends' family");
                    return None;
                }
                s
            }
        };
        self.warn_empty_pool(pool_id, pool);
        Some(ir::StmtKind::Lb(Balance { pool: pool_id, delivery: Delivery::Encap { encap, src }, hash }))
    }

    fn warn_empty_pool(&mut self, pool_id: ir::PoolId, pool: &ast::Ident) {
        if self.pools[pool_id].backends.is_empty() {
            self.diags.push(
                Diagnostic::warning("xpol::lb::empty", format!("the pool `{}` has no backends yet", pool.name))
                    .with_label(pool.span, "packets here are dropped (and counted) until `xpol pool` adds a backend"),
            );
        }
    }

    /// `=> lb(POOL)` or `=> lb(POOL, ADDR)` in a test case.
    pub(super) fn lb_expect(&mut self, lb: &ast::LbExpect) -> Option<(ir::PoolId, Option<IpAddr>)> {
        let pool = self.pool_ref(&lb.pool)?;
        let Some(e) = &lb.backend else { return Some((pool, None)) };
        match self.expr(e)? {
            Operand::Expr(ir::Expr { kind: ExprKind::Const(Value::Ip(a)), .. }) if self.pools[pool].backends.iter().any(|b| b.addr == a) => Some((pool, Some(a))),
            Operand::Expr(ir::Expr { kind: ExprKind::Const(Value::Ip(a)), .. }) => {
                let list: Vec<String> = self.pools[pool].backends.iter().map(|b| b.addr.to_string()).collect();
                self.error_help(e.span, "xpol::test::lb", format!("{a} is not a backend of `{}`", lb.pool.name), "not in the pool", format!("its backends: {}", list.join(", ")));
                None
            }
            _ => {
                self.error(e.span, "xpol::test::lb", "the expected backend is an address", "not an address");
                None
            }
        }
    }
}

/// Addresses no packet can be sent to as a unicast destination.
fn unusable_backend(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => v.is_unspecified() || v.is_broadcast() || v.is_multicast(),
        IpAddr::V6(v) => v.is_unspecified() || v.is_multicast(),
    }
}
