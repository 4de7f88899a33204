//! Random valid policies, for the differential test (tests/differential.rs,
//! seeded) and the `generated` fuzz target (fuzz/, driven by the fuzzer's
//! bytes). Every policy this module writes must compile: the generator keeps
//! types straight, declares what it uses, uses each map with one key layout
//! and one kind of update, and keeps `tx` out of TC hooks.
//!
//! Constants come from small pools shared with the packet generator, so that
//! generated rules match generated packets often enough to matter.
//!
//! A policy is kept as a small tree ([`Policy`], [`Rule`], [`Stmt`],
//! [`Expr`]) rather than text, so that the differential test can shrink it:
//! drop rules, statements and conjuncts ([`shrink_candidates`]).

#![allow(dead_code)]

use std::fmt::Write;

/// Where random choices come from: a seeded generator or fuzzer input.
pub trait Choice {
    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64;
}

fn pick<'a, T>(c: &mut impl Choice, v: &'a [T]) -> &'a T {
    &v[c.below(v.len() as u64) as usize]
}

fn chance(c: &mut impl Choice, percent: u64) -> bool {
    c.below(100) < percent
}

// ------------------------------------------------------------------ pools

pub const V4: &[&str] = &["198.18.0.1", "198.18.7.7", "203.0.113.9", "10.1.2.3", "192.0.2.200", "198.51.100.7", "8.8.8.8"];
pub const V4_NETS: &[&str] = &["198.18.0.0/15", "198.18.7.0/24", "203.0.113.0/24", "10.0.0.0/8", "0.0.0.0/0", "192.0.2.200/32", "198.51.100.0/25"];
pub const V6: &[&str] = &["2001:db8::7", "2001:db8:bad::1", "2001:db8:1::5", "fe80::1", "::1", "2a00::1"];
pub const V6_NETS: &[&str] = &["2001:db8::/32", "2001:db8:bad::/48", "fe80::/10", "::/0", "2001:db8:1::5/128", "2a00::/16"];
pub const MACS: &[[u8; 6]] = &[[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 0xa], [0xff; 6]];
pub const PORTS: &[u64] = &[0, 22, 23, 53, 80, 443, 1023, 1024, 8080, 40000, 65535];
pub const VLANS: &[u64] = &[0, 7, 100, 150, 4095];

const INT_FIELDS: &[(&str, &[u64])] = &[
    ("pkt.len", &[14, 54, 60, 64, 74, 100, 1514]),
    ("eth.type", &[0x0800, 0x86dd, 0x0806, 0x8100]),
    ("vlan.depth", &[0, 1, 2, 3]),
    ("vlan.id", VLANS),
    ("vlan.pcp", &[0, 3, 5, 7]),
    ("vlan.inner_id", VLANS),
    ("vlan.inner_pcp", &[0, 7]),
    ("ip.version", &[4, 6]),
    ("ip.proto", &[1, 6, 17, 58, 59, 47]),
    ("ip.ttl", &[0, 1, 64, 255]),
    ("ip.len", &[20, 40, 60, 576, 1500]),
    ("ip.dscp", &[0, 10, 46, 63]),
    ("ip.ecn", &[0, 1, 3]),
    ("ip.frag_off", &[0, 8, 64, 1480]),
    ("ip4.ihl", &[4, 5, 6, 15]),
    ("ip4.id", &[0, 1, 7, 0xffff]),
    ("ip6.nexthdr", &[0, 6, 17, 43, 44, 58, 60]),
    ("ip6.hoplimit", &[0, 1, 64, 255]),
    ("ip6.flowlabel", &[0, 1, 0xfffff]),
    ("tcp.sport", PORTS),
    ("tcp.dport", PORTS),
    ("tcp.flags", &[0, 1, 2, 0x10, 0x12, 0x29, 0xff]),
    ("tcp.window", &[0, 1024, 65535]),
    ("udp.sport", PORTS),
    ("udp.dport", PORTS),
    ("udp.len", &[0, 8, 16, 100]),
    ("l4.sport", PORTS),
    ("l4.dport", PORTS),
    ("icmp.type", &[0, 3, 8, 11]),
    ("icmp.code", &[0, 1, 4]),
    ("icmpv6.type", &[1, 128, 129, 135]),
    ("icmpv6.code", &[0, 4]),
];

const BOOL_FIELDS: &[&str] = &["ip.frag", "ip.frag_first", "ip4.df", "tcp.syn", "tcp.ack", "tcp.fin", "tcp.rst", "tcp.psh", "tcp.urg", "tcp.ece", "tcp.cwr"];

/// Address fields and the families they carry (4, 6, or 0 for both).
const IP_FIELDS: &[(&str, u8)] = &[("ip.src", 0), ("ip.dst", 0), ("ip4.src", 4), ("ip4.dst", 4), ("ip6.src", 6), ("ip6.dst", 6)];
const MAC_FIELDS: &[&str] = &["eth.src", "eth.dst"];
const ODD_INTS: &[u64] = &[0, 1, 2, 3, 5, 7, 8, 16, 63, 64, 70, 255, 0xffff, u64::MAX];

/// The values integer field `field` takes, as the checker knows them
/// (`check::fields::Field::values`): it refuses a field compared directly
/// with a constant it can never equal (`vlan.depth == 70`, `ip.ecn in
/// 53..1119`, `ip.len == 3`), so the generator compares fields directly
/// only in ways some value satisfies, and puts odd values against
/// arithmetic (which is not range-checked).
fn field_values(field: &str) -> &'static [(u64, u64)] {
    xpol_compiler::check::fields::Field::by_name(field).and_then(|f| f.values()).unwrap_or(&[(0, u64::MAX)])
}

/// Whether field `field` can hold `v`.
fn fits(field: &str, v: u64) -> bool {
    field_values(field).iter().any(|&(lo, hi)| lo <= v && v <= hi)
}

/// Whether some value of `field` satisfies `field OP v`.
fn satisfiable(field: &str, op: &str, v: u64) -> bool {
    field_values(field).iter().any(|&(lo, hi)| match op {
        "==" => lo <= v && v <= hi,
        "!=" => lo != hi || lo != v,
        "<" => lo < v,
        "<=" => lo <= v,
        ">" => hi > v,
        _ => hi >= v,
    })
}

/// `e` as generated, with a bare integer field wrapped in arithmetic so
/// that comparing it with any value stays a valid policy.
fn unranged(e: String) -> String {
    if INT_FIELDS.iter().any(|(f, _)| *f == e) {
        format!("({e} | 0)")
    } else {
        e
    }
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

// ------------------------------------------------------------------ the tree

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// A boolean expression the tree does not look into (a comparison, a
    /// membership test, a bool field or local).
    Atom(String),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stmt {
    /// `pass`, `drop`, `tx`, `abort`, or `redirect(...)`.
    Verdict(&'static str),
    If(Expr, Vec<Stmt>, Vec<Stmt>),
    /// `let` and map updates, as text.
    Plain(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub hook: &'static str,
    pub pred: Option<Expr>,
    pub body: Vec<Stmt>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decl {
    pub name: String,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub decls: Vec<Decl>,
    pub rules: Vec<Rule>,
}

impl Expr {
    fn render(&self, out: &mut String) {
        match self {
            Expr::Atom(s) => out.push_str(s),
            Expr::Not(e) => {
                out.push_str("!(");
                e.render(out);
                out.push(')');
            }
            Expr::And(a, b) | Expr::Or(a, b) => {
                out.push('(');
                a.render(out);
                out.push_str(if matches!(self, Expr::And(..)) { " && " } else { " || " });
                b.render(out);
                out.push(')');
            }
        }
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        self.render(&mut s);
        s
    }
}

fn render_stmts(stmts: &[Stmt], indent: usize, out: &mut String) {
    let pad = "    ".repeat(indent);
    for s in stmts {
        match s {
            Stmt::Verdict(v) => {
                let _ = writeln!(out, "{pad}{v}");
            }
            Stmt::Plain(t) => {
                let _ = writeln!(out, "{pad}{t}");
            }
            Stmt::If(c, t, e) => {
                let _ = writeln!(out, "{pad}if ({}) {{", c.text());
                render_stmts(t, indent + 1, out);
                if e.is_empty() {
                    let _ = writeln!(out, "{pad}}}");
                } else {
                    let _ = writeln!(out, "{pad}}} else {{");
                    render_stmts(e, indent + 1, out);
                    let _ = writeln!(out, "{pad}}}");
                }
            }
        }
    }
}

fn mentions(text: &str, name: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(name).any(|(i, _)| {
        !text[..i].chars().next_back().is_some_and(ident) && !text[i + name.len()..].chars().next().is_some_and(ident)
    })
}

impl Policy {
    /// The policy as source text; declarations no rule names are left out.
    pub fn text(&self) -> String {
        let mut rules = String::new();
        for r in &self.rules {
            match &r.pred {
                Some(p) => {
                    let _ = writeln!(rules, "{} /{}/ {{", r.hook, p.text());
                }
                None => {
                    let _ = writeln!(rules, "{} {{", r.hook);
                }
            }
            render_stmts(&r.body, 1, &mut rules);
            rules.push_str("}\n");
        }
        let mut out = String::new();
        for d in &self.decls {
            if mentions(&rules, &d.name) {
                out.push_str(&d.text);
                out.push('\n');
            }
        }
        out.push_str(&rules);
        out
    }

    pub fn size(&self) -> usize {
        fn e(x: &Expr) -> usize {
            match x {
                Expr::Atom(_) => 1,
                Expr::Not(a) => 1 + e(a),
                Expr::And(a, b) | Expr::Or(a, b) => 1 + e(a) + e(b),
            }
        }
        fn s(v: &[Stmt]) -> usize {
            v.iter()
                .map(|x| match x {
                    Stmt::If(c, t, f) => 1 + e(c) + s(t) + s(f),
                    _ => 1,
                })
                .sum()
        }
        self.rules.iter().map(|r| 1 + r.pred.as_ref().map_or(0, e) + s(&r.body)).sum()
    }
}

// ------------------------------------------------------------------ generating

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    Int,
    Bool,
    Ip,
    Mac,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MapKind {
    Count,
    Sum,
    Assign,
}

struct MapDecl {
    name: String,
    keys: Vec<Ty>,
    kind: MapKind,
    written: bool,
}

/// Named things an expression may use.
#[derive(Default)]
struct Names {
    cidr_sets: Vec<String>,
    int_sets: Vec<String>,
    mac_sets: Vec<String>,
    int_consts: Vec<String>,
    ranges: Vec<String>,
}

struct Gen<'c, C: Choice> {
    c: &'c mut C,
    names: Names,
    decls: Vec<Decl>,
    maps: Vec<MapDecl>,
    next_local: usize,
    /// Every atom reads the packet or a map: no constant (`true`,
    /// `65535 > 16`) makes a predicate decide every packet, or none.
    no_constant_atoms: bool,
}

/// A random valid policy.
pub fn policy(c: &mut impl Choice) -> Policy {
    let mut g = Gen { c, names: Names::default(), decls: Vec::new(), maps: Vec::new(), next_local: 0, no_constant_atoms: false };
    g.declarations();
    let hooks: &[&'static str] = match g.c.below(10) {
        0..=4 => &["xdp"],
        5 => &["tc:ingress"],
        6 => &["tc:egress"],
        7 => &["xdp", "tc:ingress"],
        8 => &["tc:ingress", "tc:egress"],
        _ => &["xdp", "tc:egress", "tc:ingress"],
    };
    let n = 1 + g.c.below(8) as usize;
    let mut rules = Vec::new();
    for i in 0..n {
        let hook = *pick(g.c, hooks);
        let pred = if i + 1 == n && chance(g.c, 40) || chance(g.c, 8) { None } else { Some(g.bool_expr(2, &[])) };
        let body = g.block(hook, 2, &[], true);
        rules.push(Rule { hook, pred, body });
    }
    Policy { decls: g.decls, rules }
}

/// A policy of `n` random rules on `hook` that all stay reachable, then
/// a final `HOOK { pass }`: for the compile-time benchmark
/// (benches/compile.rs), whose numbers are about policies of many rules
/// that codegen must keep, not ones LLVM drops. The constant pools above
/// are small (to match generated packets), so random predicates repeat
/// and imply one another; here each rule tests a value of its own (an
/// anchor: a port, an address), alone or `&&` a random condition, and
/// no earlier rule covers it. Bodies are mostly a verdict, as in a
/// firewall, now and then random statements.
pub fn reachable_rules(c: &mut impl Choice, hook: &'static str, n: usize) -> Policy {
    let mut g = Gen { c, names: Names::default(), decls: Vec::new(), maps: Vec::new(), next_local: 0, no_constant_atoms: true };
    g.declarations();
    let mut anchors = std::collections::HashSet::new();
    let mut rules: Vec<Rule> = Vec::with_capacity(n + 1);
    while rules.len() < n {
        let anchor = g.anchor();
        if !anchors.insert(anchor.clone()) {
            continue;
        }
        let anchor = Expr::Atom(anchor);
        let pred = if g.chance(60) { Expr::And(Box::new(anchor), Box::new(g.bool_expr(1, &[]))) } else { anchor };
        let body = if g.chance(85) { vec![Stmt::Verdict(*g.pick(&["pass", "drop"]))] } else { g.block(hook, 1, &[], true) };
        rules.push(Rule { hook, pred: Some(pred), body });
    }
    rules.push(Rule { hook, pred: None, body: vec![Stmt::Verdict("pass")] });
    Policy { decls: g.decls, rules }
}

impl<C: Choice> Gen<'_, C> {
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        pick(self.c, v)
    }

    fn chance(&mut self, percent: u64) -> bool {
        chance(self.c, percent)
    }

    fn declarations(&mut self) {
        for i in 0..self.c.below(5) {
            let name = format!("s{i}");
            let (text, kind) = match self.c.below(8) {
                0 | 1 => (format!("set {name}: cidr = {{ {} }}", { let n = 1 + self.c.below(5) as usize; self.prefix_elems(n, true) }), 0),
                2 => (format!("set {name}: ip = {{ {} }}", { let n = 1 + self.c.below(4) as usize; self.addr_elems(n) }), 0),
                3 => (format!("set {name}: port = {{ {} }}", { let n = 1 + self.c.below(5) as usize; self.int_elems(n, false, true) }), 1),
                4 => (format!("set {name}: int = {{ {} }}", { let n = 1 + self.c.below(5) as usize; self.int_elems(n, false, false) }), 1),
                5 => {
                    let n = 1 + self.c.below(3) as usize;
                    let elems: Vec<String> = (0..n).map(|_| mac_text(*self.pick(MACS))).collect();
                    (format!("set {name}: mac = {{ {} }}", elems.join(", ")), 2)
                }
                6 => {
                    // Constant sets: small ones are compared inline, more
                    // than 16 elements become a read-only map.
                    let big = self.chance(40);
                    if self.chance(50) {
                        let mut elems = { let n = 1 + self.c.below(6) as usize; self.prefix_elems(n, false) };
                        // A prefix of each family, so that `ip4.*` and
                        // `ip6.*` fields can both be tested against it (a
                        // constant set of the other family only is refused).
                        elems.push_str(", 203.0.113.0/24, 2001:db8:ffff::/48");
                        if big {
                            for k in 0..17 {
                                elems.push_str(&format!(", 100.{k}.0.0/16"));
                            }
                        }
                        (format!("const {name} = {{ {elems} }}"), 0)
                    } else {
                        let mut elems = { let n = 1 + self.c.below(6) as usize; self.int_elems(n, !big, false) };
                        if big {
                            for k in 0..17 {
                                elems.push_str(&format!(", {}", 2000 + 3 * k));
                            }
                        }
                        (format!("const {name} = {{ {elems} }}"), 1)
                    }
                }
                _ => {
                    if self.chance(50) {
                        let v = *self.pick(PORTS);
                        (format!("const {name} = {v}"), 3)
                    } else {
                        let lo = *self.pick(PORTS);
                        let hi = lo + self.c.below(3000);
                        (format!("const {name} = {lo}..{hi}"), 4)
                    }
                }
            };
            match kind {
                0 => self.names.cidr_sets.push(name.clone()),
                1 => self.names.int_sets.push(name.clone()),
                2 => self.names.mac_sets.push(name.clone()),
                3 => self.names.int_consts.push(name.clone()),
                _ => self.names.ranges.push(name.clone()),
            }
            self.decls.push(Decl { name, text });
        }
        for i in 0..self.c.below(4) {
            let nkeys = self.c.below(3) as usize;
            let keys = (0..nkeys).map(|_| *self.pick(&[Ty::Int, Ty::Int, Ty::Ip, Ty::Ip, Ty::Mac, Ty::Bool])).collect();
            let kind = *self.pick(&[MapKind::Count, MapKind::Count, MapKind::Sum, MapKind::Assign]);
            // Now and then a capacity small enough that the packets fill
            // the map: kernel and reference must then lose the same updates.
            if nkeys > 0 && self.chance(30) {
                let max = 1 + self.c.below(4);
                self.decls.push(Decl { name: format!("@m{i}"), text: format!("map @m{i} max {max}") });
            }
            self.maps.push(MapDecl { name: format!("m{i}"), keys, kind, written: false });
        }
    }

    fn prefix_elems(&mut self, n: usize, hosts: bool) -> String {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(match self.c.below(if hosts { 4 } else { 2 }) {
                0 => self.pick(V4_NETS).to_string(),
                1 => self.pick(V6_NETS).to_string(),
                2 => self.pick(V4).to_string(),
                _ => self.pick(V6).to_string(),
            });
        }
        v.join(", ")
    }

    fn addr_elems(&mut self, n: usize) -> String {
        let v: Vec<String> = (0..n).map(|_| if self.chance(50) { self.pick(V4).to_string() } else { self.pick(V6).to_string() }).collect();
        v.join(", ")
    }

    /// Ints and ranges; `wide` ranges only for constant sets compared
    /// inline (map-backed sets store ranges expanded), ports up to 65535.
    fn int_elems(&mut self, n: usize, wide: bool, port: bool) -> String {
        let mut v = Vec::new();
        for _ in 0..n {
            let a = *self.pick(PORTS);
            v.push(if self.chance(25) {
                let span = if wide { self.c.below(70000) } else { self.c.below(40) };
                format!("{a}..{}", if port { (a + span).min(65535) } else { a + span })
            } else if !port && self.chance(20) {
                let (_, pool) = *self.pick(INT_FIELDS);
                self.pick(pool).to_string()
            } else {
                a.to_string()
            });
        }
        v.join(", ")
    }

    /// An equality with a value drawn from a large space (a port, an
    /// address in 198.18.0.0/15 or 2001:db8::/32).
    fn anchor(&mut self) -> String {
        match self.c.below(6) {
            0 => format!("tcp.dport == {}", 1 + self.c.below(65534)),
            1 => format!("udp.dport == {}", 1 + self.c.below(65534)),
            2 => format!("tcp.sport == {}", 1 + self.c.below(65534)),
            3 => format!("ip4.src == 198.{}.{}.{}", 18 + self.c.below(2), self.c.below(256), self.c.below(256)),
            4 => format!("ip4.dst == 198.{}.{}.{}", 18 + self.c.below(2), self.c.below(256), self.c.below(256)),
            _ => format!("ip6.src == 2001:db8:{:x}::{:x}", self.c.below(0x10000), 1 + self.c.below(0xfffe)),
        }
    }

    // ---- expressions

    fn bool_expr(&mut self, depth: u32, locals: &[(String, Ty)]) -> Expr {
        if depth == 0 || self.chance(45) {
            return Expr::Atom(self.atom(locals));
        }
        match self.c.below(5) {
            0 => Expr::Not(Box::new(self.bool_expr(depth - 1, locals))),
            1 | 2 => Expr::And(Box::new(self.bool_expr(depth - 1, locals)), Box::new(self.bool_expr(depth - 1, locals))),
            _ => Expr::Or(Box::new(self.bool_expr(depth - 1, locals)), Box::new(self.bool_expr(depth - 1, locals))),
        }
    }

    fn local(&mut self, locals: &[(String, Ty)], ty: Ty) -> Option<String> {
        let v: Vec<&String> = locals.iter().filter(|(_, t)| *t == ty).map(|(n, _)| n).collect();
        (!v.is_empty()).then(|| self.pick(&v).to_string())
    }

    /// A boolean expression that is a leaf of the tree.
    fn atom(&mut self, locals: &[(String, Ty)]) -> String {
        loop {
            let atom = self.any_atom(locals);
            // Fields are named `layer.name`, maps `@name`.
            if !self.no_constant_atoms || atom.contains(['.', '@']) {
                return atom;
            }
        }
    }

    fn any_atom(&mut self, locals: &[(String, Ty)]) -> String {
        match self.c.below(100) {
            0..=29 => {
                let (f, pool) = *self.pick(INT_FIELDS);
                let op = *self.pick(&["==", "==", "!=", "<", "<=", ">", ">="]);
                let v = if self.chance(85) { *self.pick(pool) } else { *self.pick(ODD_INTS) };
                // A comparison no value of the field satisfies is refused.
                if satisfiable(f, op, v) {
                    format!("{f} {op} {v}")
                } else {
                    format!("{f} == {}", field_values(f)[0].0)
                }
            }
            30..=44 => {
                let (f, pool) = *self.pick(INT_FIELDS);
                let op = if self.chance(70) { "in" } else { "!in" };
                // A constant set none of whose elements the field can hold is refused.
                let mut in_pool: Vec<u64> = pool.iter().copied().filter(|&v| fits(f, v)).collect();
                if in_pool.is_empty() {
                    in_pool.push(field_values(f)[0].0);
                }
                let rhs = match self.c.below(4) {
                    0 if !self.names.int_sets.is_empty() && fits(f, 0xffff) => self.pick(&self.names.int_sets.clone()).clone(),
                    // The declared ranges start at a port: only for fields as wide.
                    1 if !self.names.ranges.is_empty() && fits(f, 0xffff) => self.pick(&self.names.ranges.clone()).clone(),
                    2 => {
                        let lo = *self.pick(&in_pool);
                        format!("{lo}..{}", lo + self.c.below(100))
                    }
                    _ => {
                        let n = 1 + self.c.below(4);
                        let v: Vec<String> = (0..n).map(|_| self.pick(&in_pool).to_string()).collect();
                        format!("{{{}}}", v.join(", "))
                    }
                };
                format!("{f} {op} {rhs}")
            }
            45..=64 => {
                let (f, fam) = *self.pick(IP_FIELDS);
                let v4 = fam == 4 || fam == 0 && self.chance(50);
                match self.c.below(5) {
                    0 | 1 => {
                        let op = if self.chance(70) { "==" } else { "!=" };
                        let a = if v4 { self.pick(V4) } else { self.pick(V6) };
                        format!("{f} {op} {a}")
                    }
                    2 if !self.names.cidr_sets.is_empty() => {
                        let op = if self.chance(70) { "in" } else { "!in" };
                        format!("{f} {op} {}", self.pick(&self.names.cidr_sets.clone()))
                    }
                    3 => {
                        let n = 1 + self.c.below(3);
                        let v: Vec<&str> = (0..n).map(|_| if v4 { *self.pick(V4_NETS) } else { *self.pick(V6_NETS) }).collect();
                        format!("{f} in {{{}}}", v.join(", "))
                    }
                    _ => {
                        let op = if self.chance(70) { "in" } else { "!in" };
                        format!("{f} {op} {}", if v4 { self.pick(V4_NETS) } else { self.pick(V6_NETS) })
                    }
                }
            }
            65..=69 => {
                let f = *self.pick(MAC_FIELDS);
                if !self.names.mac_sets.is_empty() && self.chance(50) {
                    format!("{f} in {}", self.pick(&self.names.mac_sets.clone()))
                } else {
                    let op = if self.chance(70) { "==" } else { "!=" };
                    format!("{f} {op} {}", mac_text(*self.pick(MACS)))
                }
            }
            70..=79 => {
                let f = *self.pick(BOOL_FIELDS);
                match self.c.below(4) {
                    0 => format!("{f} == {}", self.chance(50)),
                    1 => format!("{f} != {}", self.pick(BOOL_FIELDS)),
                    _ => f.to_string(),
                }
            }
            80..=89 => {
                let a = unranged(self.int_expr(2, locals));
                let op = *self.pick(&["==", "!=", "<", "<=", ">", ">="]);
                let b = if self.chance(60) { self.pick(ODD_INTS).to_string() } else { unranged(self.int_expr(1, locals)) };
                format!("{a} {op} {b}")
            }
            90..=93 => match (self.local(locals, Ty::Bool), self.local(locals, Ty::Ip)) {
                (Some(b), _) if self.chance(50) => b,
                (_, Some(ip)) => format!("{ip} in {}", self.pick(V4_NETS)),
                _ => format!("{} > {}", unranged(self.int_expr(1, locals)), self.pick(ODD_INTS)),
            },
            94..=98 => match self.map_read(locals) {
                Some(r) => format!("{r} {} {}", self.pick(&[">", ">=", "==", "<"]), self.c.below(4)),
                None => self.pick(BOOL_FIELDS).to_string(),
            },
            _ => self.pick(&["true", "false"]).to_string(),
        }
    }

    fn int_expr(&mut self, depth: u32, locals: &[(String, Ty)]) -> String {
        let k = self.c.below(if depth == 0 { 5 } else { 9 });
        match k {
            0 | 1 => self.pick(INT_FIELDS).0.to_string(),
            2 => {
                let (_, pool) = *self.pick(INT_FIELDS);
                self.pick(pool).to_string()
            }
            3 => self.local(locals, Ty::Int).unwrap_or_else(|| "pkt.len".into()),
            4 => match self.map_read(locals) {
                Some(r) => r,
                None if !self.names.int_consts.is_empty() => {
                    let v = self.names.int_consts.clone();
                    self.pick(&v).clone()
                }
                None => "ip.ttl".to_string(),
            },
            5 => {
                let f = if self.chance(50) { "-" } else { "~" };
                format!("{f}({})", self.int_expr(depth - 1, locals))
            }
            _ => {
                let op = *self.pick(&["+", "-", "*", "/", "%", "&", "|", "^", "<<", ">>"]);
                let a = self.int_expr(depth - 1, locals);
                let b = if matches!(op, "/" | "%") && self.chance(60) || self.chance(30) {
                    // Never a constant zero divisor: the checker refuses it.
                    self.pick(&ODD_INTS[1..]).to_string()
                } else {
                    self.int_expr(depth - 1, locals)
                };
                let b = if matches!(op, "/" | "%") && b.parse::<u64>() == Ok(0) { "3".to_string() } else { b };
                if matches!(op, "/" | "%") && !has_field(&b) && b.parse::<u64>().is_err() {
                    // A constant expression might fold to zero.
                    return format!("({a} {op} 7)");
                }
                format!("({a} {op} {b})")
            }
        }
    }

    fn key_expr(&mut self, ty: Ty) -> String {
        match ty {
            Ty::Int => self.pick(&["tcp.dport", "ip.proto", "(pkt.len % 4)", "vlan.id", "l4.sport", "ip.ttl"]).to_string(),
            Ty::Ip => self.pick(&["ip.src", "ip.dst", "ip4.src", "ip6.dst"]).to_string(),
            Ty::Mac => self.pick(MAC_FIELDS).to_string(),
            Ty::Bool => self.pick(&["tcp.syn", "ip.frag", "(ip.ttl > 63)"]).to_string(),
        }
    }

    fn keys(&mut self, tys: &[Ty]) -> String {
        if tys.is_empty() {
            return String::new();
        }
        let v: Vec<String> = tys.iter().map(|&t| self.key_expr(t)).collect();
        format!("[{}]", v.join(", "))
    }

    fn map_read(&mut self, _locals: &[(String, Ty)]) -> Option<String> {
        // Mostly maps already written above; a read before the first write
        // (or of a map never written) reads 0.
        let written: Vec<usize> = (0..self.maps.len()).filter(|&i| self.maps[i].written || self.c.below(4) == 0).collect();
        if written.is_empty() {
            return None;
        }
        let i = *self.pick(&written);
        let keys = self.maps[i].keys.clone();
        let k = self.keys(&keys);
        Some(format!("@{}{k}", self.maps[i].name))
    }

    // ---- statements

    fn block(&mut self, hook: &'static str, depth: u32, outer: &[(String, Ty)], top: bool) -> Vec<Stmt> {
        let mut locals = outer.to_vec();
        let mut out = Vec::new();
        for _ in 0..self.c.below(if top { 4 } else { 3 }) {
            match self.c.below(10) {
                0..=2 => {
                    let name = format!("v{}", self.next_local);
                    self.next_local += 1;
                    let (text, ty) = match self.c.below(4) {
                        0 => (self.bool_expr(1, &locals).text(), Ty::Bool),
                        1 => (self.pick(&["ip.src", "ip.dst", "ip6.src"]).to_string(), Ty::Ip),
                        _ => (self.int_expr(2, &locals), Ty::Int),
                    };
                    out.push(Stmt::Plain(format!("let {name} = {text}")));
                    locals.push((name, ty));
                }
                3..=6 if !self.maps.is_empty() => {
                    let i = self.c.below(self.maps.len() as u64) as usize;
                    let keys = self.maps[i].keys.clone();
                    let k = self.keys(&keys);
                    let rhs = match self.maps[i].kind {
                        MapKind::Count => "count()".to_string(),
                        MapKind::Sum => format!("sum({})", self.int_expr(1, &locals)),
                        MapKind::Assign => self.int_expr(1, &locals),
                    };
                    out.push(Stmt::Plain(format!("@{}{k} = {rhs}", self.maps[i].name)));
                    self.maps[i].written = true;
                }
                _ if depth > 0 => {
                    let cond = self.bool_expr(2, &locals);
                    let then = self.block(hook, depth - 1, &locals, false);
                    let els = if self.chance(50) { self.block(hook, depth - 1, &locals, false) } else { Vec::new() };
                    out.push(Stmt::If(cond, then, els));
                }
                _ => {}
            }
        }
        // A record of the packet, sometimes capped by a rate slow enough
        // that no token comes back while a policy runs.
        if self.chance(15) {
            let n = self.next_local;
            self.next_local += 1;
            out.push(Stmt::Plain(match self.c.below(3) {
                0 => "log".to_string(),
                1 => format!("log(\"g{n}: \")"),
                _ => format!("log(\"g{n}: \", rate: 1/m, burst: {})", 1 + self.c.below(3)),
            }));
        }
        if self.chance(if top { 75 } else { 40 }) {
            out.push(Stmt::Verdict(self.verdict(hook)));
        }
        out
    }

    fn verdict(&mut self, hook: &str) -> &'static str {
        let v = *self.pick(&["pass", "pass", "drop", "drop", "drop", "abort", "tx", "redirect(xpolgen0)"]);
        if v == "tx" && hook != "xdp" {
            "drop"
        } else {
            v
        }
    }
}

fn has_field(s: &str) -> bool {
    s.contains('.') || s.contains('@') || s.contains('v')
}

// ------------------------------------------------------------------ shrinking

fn expr_shrinks(e: &Expr) -> Vec<Expr> {
    match e {
        Expr::Atom(_) => Vec::new(),
        Expr::Not(a) => {
            let mut v = vec![(**a).clone()];
            v.extend(expr_shrinks(a).into_iter().map(|x| Expr::Not(Box::new(x))));
            v
        }
        Expr::And(a, b) | Expr::Or(a, b) => {
            let and = matches!(e, Expr::And(..));
            let mk = |x: Expr, y: Expr| if and { Expr::And(Box::new(x), Box::new(y)) } else { Expr::Or(Box::new(x), Box::new(y)) };
            let mut v = vec![(**a).clone(), (**b).clone()];
            v.extend(expr_shrinks(a).into_iter().map(|x| mk(x, (**b).clone())));
            v.extend(expr_shrinks(b).into_iter().map(|y| mk((**a).clone(), y)));
            v
        }
    }
}

fn stmts_shrinks(s: &[Stmt]) -> Vec<Vec<Stmt>> {
    let mut out = Vec::new();
    for i in 0..s.len() {
        let mut v = s.to_vec();
        v.remove(i);
        out.push(v);
        if let Stmt::If(c, t, e) = &s[i] {
            for body in [t, e] {
                let mut v = s.to_vec();
                v.splice(i..=i, body.iter().cloned());
                out.push(v);
            }
            for c2 in expr_shrinks(c) {
                let mut v = s.to_vec();
                v[i] = Stmt::If(c2, t.clone(), e.clone());
                out.push(v);
            }
            for t2 in stmts_shrinks(t) {
                let mut v = s.to_vec();
                v[i] = Stmt::If(c.clone(), t2, e.clone());
                out.push(v);
            }
            for e2 in stmts_shrinks(e) {
                let mut v = s.to_vec();
                v[i] = Stmt::If(c.clone(), t.clone(), e2);
                out.push(v);
            }
        }
        if let Stmt::Verdict(v0) = &s[i] {
            if *v0 != "pass" {
                let mut v = s.to_vec();
                v[i] = Stmt::Verdict("pass");
                out.push(v);
            }
        }
    }
    out
}

/// Smaller variants of `p`, the biggest cuts first: without a rule, without
/// a predicate, with a conjunct or a statement less.
pub fn shrink_candidates(p: &Policy) -> Vec<Policy> {
    let mut out = Vec::new();
    for i in 0..p.rules.len() {
        if p.rules.len() > 1 {
            let mut q = p.clone();
            q.rules.remove(i);
            out.push(q);
        }
    }
    for i in 0..p.rules.len() {
        let r = &p.rules[i];
        if let Some(pred) = &r.pred {
            let mut q = p.clone();
            q.rules[i].pred = None;
            out.push(q);
            for e in expr_shrinks(pred) {
                let mut q = p.clone();
                q.rules[i].pred = Some(e);
                out.push(q);
            }
        }
        for b in stmts_shrinks(&r.body) {
            let mut q = p.clone();
            q.rules[i].body = b;
            out.push(q);
        }
    }
    out
}
