//! Pass 2, `check`: resolve names, check types, fold constants and lower the
//! syntax tree to the policy IR ([`crate::ir::Policy`]).
//!
//! The checker reports every error it finds, not only the first: a failing
//! sub-expression yields `None` and its parent goes on without it.

mod conntrack;
mod dynset;
pub mod fields;
mod lb;
mod limit;
pub mod lints;
mod log;
mod synproxy;
mod values;

use crate::ir::{self, ArithOp, CmpOp, ConstSet, ExprKind, MapOp, NamedSet, SetRef, StmtKind, Type, UserMap, Value};
use crate::load::Loaded;
use fields::Field;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use xpol_lang::ast::{self, BinOp, Hook, Item, UnOp};
use xpol_lang::meta::{MapValueKind, SetElem};
use xpol_lang::{Diagnostic, SourceMap, Span};

/// Constant sets up to this many elements are compared inline (a compare
/// chain costs less than a map lookup at this size); larger ones become
/// read-only maps.
pub const INLINE_SET_LIMIT: usize = 16;

/// The most elements an `int` or `mac` set may hold (its initial contents
/// and its `max N`; a range `a..b` counts b-a+1, as `max` counts them):
/// its hash map has an entry per integer, allocated when the policy loads.
/// About a second to fill, and some 100 MB with the default room for twice
/// as many.
pub const MAX_HASH_SET_ENTRIES: u64 = 1 << 20;

/// A compile-time value that is not a plain scalar.
#[derive(Clone, Debug)]
enum ConstVal {
    Value(Value),
    Cidr(IpAddr, u8),
    Range(u64, u64),
    Set(ConstSet, SetElem),
}

#[derive(Clone, Debug)]
enum Global {
    Const { value: Option<ConstVal>, span: Span },
    Set { id: ir::SetId, span: Span },
    /// A dynamic set; `None` when its declaration failed (reported).
    DynSet { id: Option<ir::DynSetId>, span: Span },
}

/// What checking an expression yields: a runtime value, or a constant that
/// only makes sense on the right of `in`.
#[derive(Clone, Debug)]
enum Operand {
    Expr(ir::Expr),
    Cidr(IpAddr, u8),
    Range(u64, u64),
    Set(ConstSet, SetElem, Option<String>),
    Named(ir::SetId),
    Dynamic(ir::DynSetId),
}

struct Checker<'a> {
    sources: &'a SourceMap,
    diags: Vec<Diagnostic>,
    globals: HashMap<String, Global>,
    sets: Vec<NamedSet>,
    /// Large constant sets already turned into maps, by const name.
    const_set_maps: HashMap<String, ir::SetId>,
    maps: Vec<UserMap>,
    map_ids: HashMap<String, ir::MapId>,
    /// Maps updated somewhere already, with the first update: their kind of
    /// value is fixed (a read alone does not fix it).
    written_maps: HashMap<ir::MapId, Span>,
    /// Every `@map` a rule names, even in a statement or expression that
    /// failed to check: a capacity declared for it is not "unused".
    mentioned_maps: std::collections::HashSet<String>,
    locals: Vec<ir::Local>,
    scopes: Vec<HashMap<String, ir::LocalId>>,
    redirects: Vec<ir::RedirectTarget>,
    rules: Vec<ir::Rule>,
    /// `rule "NAME"` labels seen so far, with the span of their first use.
    labels: HashMap<String, Span>,
    programs: BTreeMap<Hook, Vec<ir::Probe>>,
    hook: Hook,
    pools: Vec<ir::Pool>,
    pool_ids: HashMap<String, ir::PoolId>,
    /// Pools whose declaration has errors: `lb` over them says nothing more.
    failed_pools: std::collections::HashSet<ir::PoolId>,
    /// Pools some `lb(..., nat)` balances over: their replies are
    /// translated back on TC egress.
    nat_pools: std::collections::BTreeSet<ir::PoolId>,
    /// Pools declared empty whose family an `lb`'s `src:` gave.
    family_from_src: std::collections::HashSet<ir::PoolId>,
    limits: Vec<ir::Limit>,
    /// The first `ct.state` a rule reads: the policy then has a
    /// connection table.
    ct_first: Option<Span>,
    logs: Vec<ir::Log>,
    dynsets: Vec<ir::DynSet>,
    /// The expression about to be checked stands where a `limit(...)` may:
    /// a predicate or an `if` condition, through `&&`, `||` and `!`. Taken
    /// (reset) by every expression checked.
    in_condition: bool,
    synproxies: Vec<ir::Synproxy>,
    /// The predicate of the probe being checked (`synproxy` reads its
    /// ports from it).
    predicate: Option<ir::Expr>,
}

pub fn check(loaded: &Loaded, sources: &SourceMap) -> Result<ir::Policy, Vec<Diagnostic>> {
    let mut c = Checker {
        sources,
        diags: Vec::new(),
        globals: HashMap::new(),
        sets: Vec::new(),
        const_set_maps: HashMap::new(),
        maps: Vec::new(),
        map_ids: HashMap::new(),
        written_maps: HashMap::new(),
        mentioned_maps: Default::default(),
        locals: Vec::new(),
        scopes: Vec::new(),
        redirects: Vec::new(),
        rules: Vec::new(),
        labels: HashMap::new(),
        programs: BTreeMap::new(),
        hook: Hook::Xdp,
        pools: Vec::new(),
        pool_ids: HashMap::new(),
        failed_pools: Default::default(),
        nat_pools: Default::default(),
        family_from_src: Default::default(),
        limits: Vec::new(),
        ct_first: None,
        logs: Vec::new(),
        dynsets: Vec::new(),
        in_condition: false,
        synproxies: Vec::new(),
        predicate: None,
    };
    // Declarations first, in order: a const may use earlier consts and sets;
    // probes may use any set or const of the policy. A `default` one gives
    // way to a declaration of its name without `default`, wherever that is.
    let declared: HashSet<&str> = loaded
        .items
        .iter()
        .filter_map(|item| match item {
            Item::Const(d) if d.default.is_none() => Some(d.name.name.as_str()),
            Item::Pool(d) if d.default.is_none() => Some(d.name.name.as_str()),
            Item::Set(d) => Some(d.name.name.as_str()),
            _ => None,
        })
        .collect();
    let given_way = |default: &Option<Span>, name: &ast::Ident| default.is_some() && declared.contains(name.name.as_str());
    for item in &loaded.items {
        match item {
            Item::Const(decl) if given_way(&decl.default, &decl.name) => {}
            Item::Pool(decl) if given_way(&decl.default, &decl.name) => {}
            Item::Const(decl) => c.const_decl(decl),
            Item::Set(decl) => c.set_decl(decl),
            Item::Pool(decl) => c.pool_decl(decl),
            Item::Include(_) | Item::Map(_) | Item::Conntrack(_) | Item::Probe(_) | Item::Test(_) => {}
        }
    }
    // Tests describe the policy they are written in: an included file's
    // tests run when that file is tested, not the including policy.
    let root = loaded.files.last().map(|f| f.file).unwrap_or_default();
    let mut tests = Vec::new();
    for item in &loaded.items {
        match item {
            Item::Probe(probe) => c.probe(probe),
            Item::Test(block) if block.span.file == root => {
                let hook = block.hook.map(|(h, _)| h);
                tests.extend(block.cases.iter().filter_map(|case| c.test_case(&block.name.value, hook, case)))
            }
            _ => {}
        }
    }
    // `nat` translates replies back on TC egress: the policy has a
    // `tc:egress` program even without rules of its own there.
    if !c.nat_pools.is_empty() {
        c.programs.entry(Hook::TcEgress).or_default();
    }
    // `ct.state` needs its connections recorded both ways: the policy gets
    // the programs that do.
    let ct_decls: Vec<&ast::ConntrackDecl> = loaded.items.iter().filter_map(|i| if let Item::Conntrack(d) = i { Some(d) } else { None }).collect();
    let mut programs = std::mem::take(&mut c.programs);
    let conntrack = c.conntrack(&ct_decls, &mut programs);
    c.programs = programs;
    // A `@map` is made by its uses; `map @NAME max N` only sizes it,
    // wherever it stands, so it is checked once every rule is.
    let decls: Vec<&ast::MapDecl> = loaded.items.iter().filter_map(|i| if let Item::Map(d) = i { Some(d) } else { None }).collect();
    c.map_capacities(&decls);
    // `test ... on HOOK` needs probes on that hook.
    for item in &loaded.items {
        if let Item::Test(ast::TestBlock { hook, cases, span: block, .. }) = item {
            let hooks = hook.iter().chain(cases.iter().filter_map(|case| case.hook.as_ref()));
            for (hook, span) in hooks {
                if block.file == root && !c.programs.is_empty() && !c.programs.contains_key(hook) {
                    let have: Vec<&str> = c.programs.keys().map(|h| h.as_str()).collect();
                    c.error_help(*span, "xpol::test::hook", format!("the policy has no `{}` probe to test", hook.as_str()), "no probe on this hook", format!("the policy's hooks: {}", have.join(", ")));
                }
            }
        }
    }
    // A case must be able to pass on the hook it runs on.
    if let Some(&first) = c.programs.keys().next() {
        for case in &tests {
            let hook = case.hook.unwrap_or(first);
            if matches!(case.expect, ir::Outcome::Tx | ir::Outcome::Lb) && hook != Hook::Xdp {
                let what = case.expect.as_str();
                c.error_help(case.span, "xpol::test::verdict", format!("`{what}` is an XDP verdict, and this case runs on `{}`", hook.as_str()), "cannot pass", "expect `pass`, `drop`, `redirect` or `abort` on TC");
            }
            if let Some(rule) = case.decided_by.map(|r| &c.rules[r as usize]).filter(|r| r.hook != hook) {
                let msg = format!("the rule named by `by` runs on `{}`, and this case on `{}`", rule.hook.as_str(), hook.as_str());
                c.error_help(case.span, "xpol::test::rule", msg, "cannot pass", "name a rule of the hook the case runs on, or add `on HOOK` to the test block");
            }
        }
    }
    if c.programs.is_empty() && !xpol_lang::diagnostic::has_errors(&c.diags) {
        // Point at the root file's first line: there is no probe to point at.
        let root = loaded.files.last().map(|f| f.file).unwrap_or_default();
        let first_line = sources.get(root).line_text(1).len();
        let d = Diagnostic::error("xpol::empty", "the policy has no probes, so there is nothing to compile")
            .with_label(Span::new(root, 0, first_line), "this policy declares no `xdp` or `tc` probe")
            .with_help("add a rule such as `xdp /tcp.dport == 23/ { drop }`");
        c.diags.push(d);
    }
    if xpol_lang::diagnostic::has_errors(&c.diags) {
        return Err(c.diags);
    }
    let mut policy = ir::Policy {
        programs: c.programs.into_iter().map(|(hook, probes)| ir::Program { hook, probes }).collect(),
        rules: c.rules,
        sets: c.sets,
        maps: c.maps,
        locals: c.locals,
        redirects: c.redirects,
        pools: c.pools,
        nat_pools: c.nat_pools.into_iter().collect(),
        limits: c.limits,
        conntrack,
        logs: c.logs,
        dynsets: c.dynsets,
        synproxies: c.synproxies,
        tests,
        warnings: c.diags,
    };
    let lints = lints::lint(&policy);
    policy.warnings.extend(lints);
    Ok(policy)
}

fn elem_name(e: SetElem) -> &'static str {
    match e {
        SetElem::Cidr => "cidr",
        SetElem::Int => "int",
        SetElem::Mac => "mac",
    }
}

impl Checker<'_> {
    fn error(&mut self, span: Span, code: &str, message: impl Into<String>, label: impl Into<String>) {
        self.diags.push(Diagnostic::error(code, message).with_label(span, label));
    }

    fn error_help(&mut self, span: Span, code: &str, message: impl Into<String>, label: impl Into<String>, help: impl Into<String>) {
        self.diags.push(Diagnostic::error(code, message).with_label(span, label).with_help(help));
    }

    fn declare(&mut self, name: &ast::Ident, global: Global) {
        if let Some(prev) = self.globals.get(&name.name) {
            let prev_span = match prev {
                Global::Const { span, .. } | Global::Set { span, .. } | Global::DynSet { span, .. } => *span,
            };
            self.diags.push(
                Diagnostic::error("xpol::name::duplicate", format!("`{}` is declared twice", name.name))
                    .with_label(name.span, "declared again here")
                    .with_label(prev_span, "first declared here"),
            );
            return;
        }
        self.globals.insert(name.name.clone(), global);
    }

    fn const_decl(&mut self, decl: &ast::ConstDecl) {
        let value = self.expr(&decl.value).and_then(|op| match op {
            Operand::Expr(ir::Expr { kind: ExprKind::Const(v), .. }) => Some(ConstVal::Value(v)),
            Operand::Cidr(a, l) => Some(ConstVal::Cidr(a, l)),
            Operand::Range(lo, hi) => Some(ConstVal::Range(lo, hi)),
            Operand::Set(s, e, _) => Some(ConstVal::Set(s, e)),
            Operand::Named(_) | Operand::Dynamic(_) => {
                self.error_help(decl.value.span, "xpol::const", "a const cannot name a set", "this is a set", "use the set's name directly");
                None
            }
            Operand::Expr(_) => {
                self.error_help(
                    decl.value.span,
                    "xpol::const",
                    "a const must be known at compile time",
                    "this depends on the packet",
                    "use `let` inside a probe for values computed from the packet",
                );
                None
            }
        });
        self.declare(&decl.name, Global::Const { value, span: decl.name.span });
    }

    fn set_decl(&mut self, decl: &ast::SetDecl) {
        if let Some(dynamic) = &decl.dynamic {
            return self.dynset_decl(decl, dynamic);
        }
        let elem = match decl.ty.name.as_str() {
            "cidr" | "ip" => SetElem::Cidr,
            "int" | "port" => SetElem::Int,
            "mac" => SetElem::Mac,
            other => {
                let mut d = Diagnostic::error("xpol::set::type", format!("unknown set element type `{other}`"))
                    .with_label(decl.ty.span, "not an element type")
                    .with_help("sets hold `cidr` (addresses and prefixes; also written `ip`), `int` (numbers and ranges; also `port`) or `mac`");
                if let Some(t) = xpol_lang::suggest::closest(other, ["cidr", "ip", "int", "port", "mac"]) {
                    d = d.with_fix(decl.ty.span, t, format!("did you mean `{t}`?"), true);
                }
                self.diags.push(d);
                return;
            }
        };
        let (elements, span, file) = match &decl.init {
            ast::SetInit::Elements { elements, span } => (elements.as_slice(), *span, None),
            // Not read (the loader reads every one): nothing to say about it.
            ast::SetInit::File(path) => (&[][..], path.span, None),
            ast::SetInit::Read { path, elements } => (elements.as_slice(), path.span, Some(path.span)),
        };
        let contents = self.set_elements(elements, span, Some(elem)).map(|(s, _)| s).unwrap_or_default();
        if decl.ty.name == "port" {
            if let Some(&(_, hi)) = contents.ints.iter().find(|&&(_, hi)| hi > u64::from(u16::MAX)) {
                self.error_help(
                    span,
                    "xpol::set::element",
                    format!("set `{}` holds ports, and {hi} is not a port", decl.name.name),
                    "a port is 0 to 65535",
                    "declare it `int` if it holds other numbers",
                );
            }
        }
        self.check_map_entries(&decl.name.name, elem, &contents, span);
        let capacity = decl.max.and_then(|max| self.set_max(decl, elem, max, &contents, span));
        let id = self.sets.len();
        self.sets.push(NamedSet { name: decl.name.name.clone(), elem, contents, mutable: true, capacity, span: decl.name.span, file });
        self.declare(&decl.name, Global::Set { id, span: decl.name.span });
    }

    /// Checks a set's declared `max N` against its initial contents (whose
    /// elements span `init`); the capacity when it is usable.
    fn set_max(&mut self, decl: &ast::SetDecl, elem: SetElem, (max, span): (u64, Span), contents: &ConstSet, init: Span) -> Option<u64> {
        let name = &decl.name.name;
        if max == 0 {
            self.error_help(span, "xpol::set::max", format!("set `{name}` is declared with room for no element"), "`max 0`", "give the most elements the set may hold, or leave `max` out for the default");
            return None;
        }
        if max > u64::from(u32::MAX) {
            self.error_help(span, "xpol::set::max", format!("set `{name}` is declared larger than a BPF map can be"), "over 4294967295", "a BPF map holds at most 4294967295 entries");
            return None;
        }
        if elem != SetElem::Cidr && max > MAX_HASH_SET_ENTRIES {
            self.error_help(
                span,
                "xpol::set::max",
                format!("set `{name}` is declared with room for {max} elements, more than the {MAX_HASH_SET_ENTRIES} an `{}` set may hold", elem_name(elem)),
                "too large",
                "its hash map is allocated whole when the policy is loaded: declare a smaller `max`",
            );
            return None;
        }
        let n = contents.element_count();
        if n > max {
            self.diags.push(
                Diagnostic::error("xpol::set::max", format!("set `{name}` starts with {n} elements, more than its `max {max}`"))
                    .with_label(init, format!("{n} elements (a range `a..b` counts b-a+1)"))
                    .with_label(span, "declared here")
                    .with_help("raise `max`, or leave it out for the default (room for twice the initial elements, at least 1024)"),
            );
            return None;
        }
        Some(max)
    }

    /// Refuses an `int` or `mac` set (named, or a large constant set made a
    /// map) of more than [`MAX_HASH_SET_ENTRIES`] elements: its hash map
    /// holds each integer of a range as an entry, and the kernel allocates
    /// and the runtime fills them one by one (15 million took 31 s and
    /// 900 MB before the load failed). `span`: the set's contents.
    fn check_map_entries(&mut self, name: &str, elem: SetElem, contents: &ConstSet, span: Span) {
        let n = contents.element_count();
        if elem == SetElem::Cidr || n <= MAX_HASH_SET_ENTRIES {
            return;
        }
        let widest = contents.ints.iter().max_by_key(|(lo, hi)| hi - lo).filter(|(lo, hi)| hi > lo);
        let mut d = Diagnostic::error(
            "xpol::set::too_large",
            format!("set `{name}` would take {n} map entries, more than the {MAX_HASH_SET_ENTRIES} an `{}` set may hold", elem_name(elem)),
        )
        .with_label(span, format!("{n} elements (a range `a..b` counts b-a+1)"));
        d = d.with_help(match widest {
            Some((lo, hi)) => format!(
                "the range {lo}..{hi} alone counts {}; test a range in the rule instead (`FIELD in {lo}..{hi}`), which costs no map entries",
                (hi - lo).saturating_add(1)
            ),
            None => "split the set, or test ranges in the rules instead".to_string(),
        });
        self.diags.push(d);
    }

    /// Builds a constant set from literal elements, checking that they all
    /// have one element type (`want`, when the declaration gives it).
    fn set_elements(&mut self, elements: &[ast::Expr], span: Span, want: Option<SetElem>) -> Option<(ConstSet, SetElem)> {
        let mut set = ConstSet::default();
        let mut elem = want;
        let mut ok = true;
        for e in elements {
            let Some(op) = self.expr(e) else {
                ok = false;
                continue;
            };
            // One element, or the elements of a const set named inside.
            let (this, piece) = match op {
                Operand::Expr(ir::Expr { kind: ExprKind::Const(v), .. }) => match v {
                    Value::Int(i) => (SetElem::Int, ConstSet { ints: vec![(i, i)], ..ConstSet::default() }),
                    Value::Ip(IpAddr::V4(a)) => (SetElem::Cidr, ConstSet { v4: vec![(a, 32)], ..ConstSet::default() }),
                    Value::Ip(IpAddr::V6(a)) => (SetElem::Cidr, ConstSet { v6: vec![(a, 128)], ..ConstSet::default() }),
                    Value::Mac(m) => (SetElem::Mac, ConstSet { macs: vec![m], ..ConstSet::default() }),
                    Value::Bool(_) => {
                        self.error(e.span, "xpol::set::element", "a set cannot hold booleans", "boolean");
                        ok = false;
                        continue;
                    }
                },
                Operand::Cidr(a, 0) => {
                    self.zero_prefix(a, e.span);
                    let piece = match a {
                        IpAddr::V4(a) => ConstSet { v4: vec![(a, 0)], ..ConstSet::default() },
                        IpAddr::V6(a) => ConstSet { v6: vec![(a, 0)], ..ConstSet::default() },
                    };
                    (SetElem::Cidr, piece)
                }
                Operand::Cidr(IpAddr::V4(a), l) => (SetElem::Cidr, ConstSet { v4: vec![(a, l)], ..ConstSet::default() }),
                Operand::Cidr(IpAddr::V6(a), l) => (SetElem::Cidr, ConstSet { v6: vec![(a, l)], ..ConstSet::default() }),
                Operand::Range(lo, hi) => (SetElem::Int, ConstSet { ints: vec![(lo, hi)], ..ConstSet::default() }),
                // An empty const set adds nothing, of any type.
                Operand::Set(inner, _, _) if inner.is_empty() => continue,
                Operand::Set(inner, ie, _) => (ie, inner),
                Operand::Named(_) | Operand::Dynamic(_) | Operand::Expr(_) => {
                    self.error_help(
                        e.span,
                        "xpol::set::element",
                        "set elements must be constants",
                        "not known at compile time",
                        "elements are addresses, prefixes, numbers, ranges `a..b`, MAC addresses or consts",
                    );
                    ok = false;
                    continue;
                }
            };
            match elem {
                Some(want) if want != this => {
                    self.error(
                        e.span,
                        "xpol::set::element",
                        format!("this set holds `{}` elements, not `{}`", elem_name(want), elem_name(this)),
                        format!("a `{}` element", elem_name(this)),
                    );
                    ok = false;
                    continue;
                }
                _ => elem = Some(this),
            }
            set.v4.extend(piece.v4);
            set.v6.extend(piece.v6);
            set.ints.extend(piece.ints);
            set.macs.extend(piece.macs);
        }
        if !ok {
            return None;
        }
        normalize(&mut set);
        let _ = span;
        Some((set, elem.unwrap_or(SetElem::Int)))
    }

    fn probe(&mut self, probe: &ast::Probe) {
        self.hook = probe.hook;
        let id = self.rules.len() as ir::RuleId;
        // The rule starts at its label, if any (its line is the rule's
        // line); its text, the identity of an unlabelled rule, is the hook
        // and predicate, so that labelling a rule does not change its text.
        let header = Span { end: probe.body.span.start, ..probe.span };
        let text = self.sources.snippet(Span { start: probe.hook_span.start, ..header }).split_whitespace().collect::<Vec<_>>().join(" ");
        let label = probe.label.as_ref().and_then(|l| self.rule_label(l));
        self.rules.push(ir::Rule { id, hook: probe.hook, span: header, text, label });
        self.scopes.push(HashMap::new());
        let predicate = probe.predicate.as_ref().and_then(|p| {
            self.in_condition = true;
            self.bool_expr(p, "a predicate")
        });
        self.predicate = predicate.clone();
        let body = self.block(&probe.body);
        self.predicate = None;
        self.log_verdicts(&body, "none");
        self.scopes.pop();
        let probes = self.programs.entry(probe.hook).or_default();
        probes.push(ir::Probe { rule: id, predicate, body, span: probe.span });
    }

    /// A `rule "NAME"` label, if it is a usable identity: not empty, at most
    /// [`meta::RULE_LABEL_MAX`] bytes of [`meta::is_rule_label_char`], not a
    /// hook name (the identity of an unlabelled `xdp { ... }`), and used by
    /// one rule only.
    fn rule_label(&mut self, label: &ast::StrLit) -> Option<String> {
        use xpol_lang::meta::{is_rule_label_char, RULE_LABEL_MAX};
        let name = &label.value;
        let charset = "letters, digits and `_ . : / -`";
        if name.is_empty() {
            self.error_help(label.span, "xpol::label::empty", "a rule label cannot be empty", "empty label", format!("name the rule with {charset}, e.g. `rule \"ssh-in\"`, or leave `rule \"...\"` out"));
            return None;
        }
        if let Some(bad) = name.chars().find(|&c| !is_rule_label_char(c)) {
            let shown = match bad {
                ' ' => "a space".to_string(),
                c if c.is_whitespace() || c.is_control() => format!("{c:?}"),
                c => format!("`{c}`"),
            };
            self.error_help(
                label.span,
                "xpol::label::invalid",
                format!("the rule label `{}` contains {shown}", name.escape_debug()),
                "not allowed in a label",
                format!("a label may hold {charset}, so that metrics, JSON and shells take it as it is"),
            );
            return None;
        }
        if name.len() > RULE_LABEL_MAX {
            self.error_help(label.span, "xpol::label::too_long", format!("the rule label is {} characters long", name.len()), format!("over {RULE_LABEL_MAX}"), format!("a label has at most {RULE_LABEL_MAX} characters"));
            return None;
        }
        if Hook::ALL.iter().any(|h| h.as_str() == name) {
            self.error_help(
                label.span,
                "xpol::label::invalid",
                format!("the rule label `{name}` is a hook name"),
                "a hook name",
                format!("`{name}` is the identity of an unlabelled `{name} {{ ... }}` rule; choose another name"),
            );
            return None;
        }
        if let Some(&first) = self.labels.get(name) {
            self.diags.push(
                Diagnostic::error("xpol::label::duplicate", format!("two rules are labelled `{name}`"))
                    .with_label(label.span, "labelled again here")
                    .with_label(first, "first labelled here")
                    .with_help("a label is the rule's identity (its counters and metrics): give each rule its own"),
            );
            return None;
        }
        self.labels.insert(name.clone(), label.span);
        Some(name.clone())
    }

    /// One case of a `test` block: the packet's arguments must be known
    /// names with constant values of their types.
    fn test_case(&mut self, test: &str, hook: Option<Hook>, case: &ast::TestCase) -> Option<ir::TestCase> {
        use xpol_lang::testspec::{self, ArgType, ArgValue, TestPacket};
        let packet = match &case.packet {
            ast::PacketDesc::Hex(s) => {
                let digits: String = s.value.chars().filter(|c| !c.is_whitespace() && *c != ':').collect();
                let bytes: Option<Vec<u8>> =
                    digits.len().is_multiple_of(2).then(|| (0..digits.len()).step_by(2).map(|i| u8::from_str_radix(&digits[i..i + 2], 16).ok()).collect()).flatten();
                match bytes {
                    Some(b) if b.len() >= 14 => TestPacket::Hex(b),
                    Some(_) => {
                        self.error(s.span, "xpol::test::packet", "a raw packet needs at least 14 bytes (an Ethernet header)", "too short");
                        return None;
                    }
                    None => {
                        self.error(s.span, "xpol::test::packet", "not hexadecimal bytes", "expected pairs of hex digits");
                        return None;
                    }
                }
            }
            ast::PacketDesc::Fields { kind, args } => {
                if !testspec::KINDS.contains(&kind.name.as_str()) {
                    let mut d = Diagnostic::error("xpol::test::packet", format!("unknown packet kind `{}`", kind.name))
                        .with_label(kind.span, "not a packet kind")
                        .with_help("write `tcp(...)`, `udp(...)`, `icmp(...)` or `hex(\"...\")`");
                    if let Some(k) = xpol_lang::suggest::closest(&kind.name, testspec::KINDS.iter().copied()) {
                        d = d.with_fix(kind.span, k, format!("did you mean `{k}`?"), true);
                    }
                    self.diags.push(d);
                    return None;
                }
                let mut out: Vec<(String, ArgValue)> = Vec::new();
                let mut ok = true;
                for (name, value) in args {
                    let Some(ty) = testspec::arg_type(&name.name) else {
                        let known: Vec<&str> = testspec::ARGS.iter().map(|(n, _, _)| *n).collect();
                        let mut d = Diagnostic::error("xpol::test::packet", format!("unknown packet argument `{}`", name.name))
                            .with_label(name.span, "not an argument")
                            .with_help(format!("arguments: {}", known.join(", ")));
                        if let Some(a) = xpol_lang::suggest::closest(&name.name, known.iter().copied()) {
                            d = d.with_fix(name.span, a, format!("did you mean `{a}`?"), true);
                        }
                        self.diags.push(d);
                        ok = false;
                        continue;
                    };
                    if out.iter().any(|(n, _)| *n == name.name) {
                        self.error(name.span, "xpol::test::packet", format!("`{}` is given twice", name.name), "again here");
                        ok = false;
                        continue;
                    }
                    let v = match (ty, self.expr(value)) {
                        (ArgType::Int, Some(Operand::Expr(ir::Expr { kind: ExprKind::Const(Value::Int(i)), .. }))) => ArgValue::Int(i),
                        (ArgType::Ip, Some(Operand::Expr(ir::Expr { kind: ExprKind::Const(Value::Ip(a)), .. }))) => ArgValue::Ip(a),
                        (ArgType::Bool, Some(Operand::Expr(ir::Expr { kind: ExprKind::Const(Value::Bool(b)), .. }))) => ArgValue::Bool(b),
                        (_, None) => {
                            ok = false;
                            continue;
                        }
                        (ty, Some(_)) => {
                            let want = match ty {
                                ArgType::Int => "an integer",
                                ArgType::Ip => "an address",
                                ArgType::Bool => "`true` or `false`",
                            };
                            self.error(value.span, "xpol::test::packet", format!("`{}` takes {want}", name.name), "a constant of another type");
                            ok = false;
                            continue;
                        }
                    };
                    out.push((name.name.clone(), v));
                }
                if !ok {
                    return None;
                }
                TestPacket::Fields { kind: kind.name.clone(), args: out }
            }
        };
        let hook = case.hook.map(|(h, _)| h).or(hook);
        let expect = match case.expect.name.as_str() {
            "pass" => ir::Outcome::Pass,
            "drop" => ir::Outcome::Drop,
            "tx" => ir::Outcome::Tx,
            "abort" => ir::Outcome::Abort,
            "lb" => ir::Outcome::Lb,
            _ => ir::Outcome::Redirect,
        };
        let lb = match &case.lb {
            Some(lb) => Some(self.lb_expect(lb)?),
            None => None,
        };
        let decided_by = match case.decided_by {
            None => None,
            Some((line, lspan)) => {
                let rule = self.rules.iter().find(|r| r.span.file == case.span.file && self.sources.get(r.span.file).line_col(r.span.start).0 == line);
                match rule {
                    Some(r) => Some(r.id),
                    None => {
                        self.error_help(lspan, "xpol::test::rule", format!("no rule starts on line {line}"), "no rule here", "write the line where the deciding probe starts");
                        return None;
                    }
                }
            }
        };
        let mut maps = Vec::new();
        for m in &case.maps {
            maps.push(self.map_expect(m)?);
        }
        let mut logs = Vec::new();
        for l in &case.logs {
            logs.push(self.log_expect(l)?);
        }
        let after_ns = case.after.map_or(0, |(ns, _)| ns);
        Some(ir::TestCase { test: test.to_string(), hook, packet, expect, decided_by, maps, lb, after_ns, logs, span: case.span })
    }

    /// `@m[KEYS] == VALUE` in a test case: a map the rules above use, with
    /// constant keys of its key types and an integer value.
    fn map_expect(&mut self, m: &ast::MapExpect) -> Option<ir::MapExpect> {
        let Some(&id) = self.map_ids.get(&m.map.name) else {
            self.error_help(m.map.span, "xpol::test::map", format!("no rule above uses `@{}`", m.map.name), "unknown map", "a test can check the maps of the rules written before it");
            return None;
        };
        let want = self.maps[id].keys.clone();
        if want.len() != m.keys.len() {
            self.error(m.map.span, "xpol::test::map", format!("`@{}` has {} keys, not {}", m.map.name, want.len(), m.keys.len()), "wrong number of keys");
            return None;
        }
        let mut keys = Vec::new();
        for (k, ty) in m.keys.iter().zip(want) {
            match self.expr(k) {
                Some(Operand::Expr(ir::Expr { kind: ExprKind::Const(v), .. })) if v.ty() == ty => keys.push(v),
                Some(_) => {
                    self.error(k.span, "xpol::test::map", format!("a key of `@{}` here is a constant `{ty}`", m.map.name), "not a constant of that type");
                    return None;
                }
                None => return None,
            }
        }
        let value = self.const_int(&m.value, "a map value")?;
        Some(ir::MapExpect { map: id, keys, value, span: m.span })
    }

    fn block(&mut self, block: &ast::Block) -> Vec<ir::Stmt> {
        self.scopes.push(HashMap::new());
        let mut out = Vec::new();
        let mut ended: Option<Span> = None;
        for stmt in &block.stmts {
            if let Some(end) = ended.take() {
                self.diags.push(
                    Diagnostic::warning("xpol::unreachable", "this statement never runs")
                        .with_label(stmt.span, "unreachable")
                        .with_label(end, "evaluation ends here"),
                );
            }
            if matches!(stmt.kind, ast::StmtKind::Verdict(_) | ast::StmtKind::Redirect(_) | ast::StmtKind::Lb { .. } | ast::StmtKind::Synproxy(_)) {
                ended = Some(stmt.span);
            }
            if let Some(s) = self.stmt(stmt) {
                out.push(s);
            }
        }
        self.scopes.pop();
        out
    }

    fn stmt(&mut self, stmt: &ast::Stmt) -> Option<ir::Stmt> {
        let kind = match &stmt.kind {
            ast::StmtKind::Verdict(v) => {
                if *v == ast::Verdict::Tx && self.hook != Hook::Xdp {
                    self.error_help(
                        stmt.span,
                        "xpol::verdict",
                        format!("`tx` is only available in `xdp` probes, not in `{}`", self.hook.as_str()),
                        "not allowed here",
                        "use `redirect(IFNAME)` to send the packet out of an interface",
                    );
                    return None;
                }
                StmtKind::Verdict(*v)
            }
            ast::StmtKind::Redirect(target) => {
                self.interface_name(target)?;
                let idx = match self.redirects.iter().position(|r| r.ifname == target.value) {
                    Some(i) => i,
                    None => {
                        self.redirects.push(ir::RedirectTarget { ifname: target.value.clone(), span: target.span });
                        self.redirects.len() - 1
                    }
                };
                StmtKind::Redirect(idx)
            }
            ast::StmtKind::Lb { pool, args } => self.lb_stmt(stmt, pool, args)?,
            ast::StmtKind::Log(args) => self.log_stmt(stmt.span, args)?,
            ast::StmtKind::SetWrite { op, set, key, option } => self.set_write_stmt(*op, set, key, option)?,
            ast::StmtKind::Synproxy(args) => self.synproxy(stmt.span, args)?,
            ast::StmtKind::If { cond, then_block, else_block } => {
                self.in_condition = true;
                let cond = self.bool_expr(cond, "an `if` condition");
                let then_body = self.block(then_block);
                let else_body = else_block.as_ref().map(|b| self.block(b)).unwrap_or_default();
                StmtKind::If { cond: cond?, then_body, else_body }
            }
            ast::StmtKind::Let { name, value } => {
                let value = self.value_expr(value, "a `let`")?;
                let local = self.locals.len();
                self.locals.push(ir::Local { name: name.name.clone(), ty: value.ty });
                self.scopes.last_mut().expect("a probe always has a scope").insert(name.name.clone(), local);
                StmtKind::Let { local, value }
            }
            ast::StmtKind::MapAssign { map, keys, value } => {
                self.mentioned_maps.insert(map.name.clone());
                let keys = self.map_keys(keys);
                let (op, kind) = match &value.kind {
                    ast::ExprKind::Call { func, args } if func.name == "count" => {
                        if !args.is_empty() {
                            self.error(value.span, "xpol::map::count", "`count()` takes no arguments", "remove the arguments");
                        }
                        (Some(MapOp::Count), MapValueKind::Count)
                    }
                    // `count` without `()`, unless the policy has a name `count`.
                    ast::ExprKind::Path(segs) if segs.len() == 1 && segs[0].name == "count" && !self.names_value("count") => {
                        self.diags.push(
                            Diagnostic::error("xpol::map::count", "`count` is a function: it is written `count()`")
                                .with_label(value.span, "a name here")
                                .with_fix(Span { start: value.span.end, ..value.span }, "()", "write `count()`", true),
                        );
                        (Some(MapOp::Count), MapValueKind::Count)
                    }
                    ast::ExprKind::Path(segs) if segs.len() == 1 && segs[0].name == "sum" && !self.names_value("sum") => {
                        self.error_help(value.span, "xpol::map::sum", "`sum` is a function: it is written `sum(EXPR)`", "a name here", "give it the value to add, e.g. `sum(pkt.len)`");
                        (None, MapValueKind::Sum)
                    }
                    ast::ExprKind::Call { func, args } if func.name == "sum" => {
                        if args.len() != 1 {
                            self.error(value.span, "xpol::map::sum", "`sum(expr)` takes one integer argument", "here");
                            (None, MapValueKind::Sum)
                        } else {
                            (self.int_expr(&args[0], "`sum`").map(MapOp::Sum), MapValueKind::Sum)
                        }
                    }
                    _ => (self.int_expr(value, "a map value").map(MapOp::Assign), MapValueKind::Value),
                };
                let keys = keys?;
                let id = self.map_use(map, &keys, Some(kind))?;
                StmtKind::MapUpdate { map: id, keys, op: op? }
            }
        };
        Some(ir::Stmt { kind, span: stmt.span })
    }

    /// Refuses a `redirect` target no interface can be named (Linux's
    /// `dev_valid_name`): empty, `.` or `..`, over 15 bytes, or with `/`,
    /// `:` or blank space.
    fn interface_name(&mut self, target: &ast::StrLit) -> Option<()> {
        let name = &target.value;
        let why = if name.is_empty() {
            "an interface name is not empty".to_string()
        } else if name.len() > 15 {
            format!("an interface name has at most 15 bytes, and this has {}", name.len())
        } else if name == "." || name == ".." {
            format!("`{name}` is not an interface name")
        } else if let Some(c) = name.chars().find(|&c| c == '/' || c == ':' || c.is_whitespace()) {
            format!("an interface name has no {}", if c.is_whitespace() { "blank space".to_string() } else { format!("`{c}`") })
        } else {
            return Some(());
        };
        self.error_help(
            target.span,
            "xpol::redirect::name",
            format!("`{}` cannot be the name of a network interface", xpol_lang::diagnostic::excerpt(name, 40)),
            "not an interface name",
            format!("{why} (see `ip link` for the interfaces of a machine)"),
        );
        None
    }

    /// True when `name` is a local in scope or a global (a const or set).
    fn names_value(&self, name: &str) -> bool {
        self.lookup_local(name).is_some() || self.globals.contains_key(name)
    }

    fn map_keys(&mut self, keys: &[ast::Expr]) -> Option<Vec<ir::Expr>> {
        let mut out = Vec::new();
        let mut ok = true;
        for k in keys {
            match self.value_expr(k, "a map key") {
                Some(e) => out.push(e),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// Records a use of `@name` with these keys; the first use fixes the key
    /// types and (for writes) the kind of value.
    fn map_use(&mut self, name: &ast::Ident, keys: &[ir::Expr], kind: Option<MapValueKind>) -> Option<ir::MapId> {
        let key_types: Vec<Type> = keys.iter().map(|k| k.ty).collect();
        if let Some(&id) = self.map_ids.get(&name.name) {
            let m = &self.maps[id];
            if m.keys != key_types {
                let (prev, span) = (m.keys.clone(), m.span);
                let fmt = |t: &[Type]| t.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ");
                self.diags.push(
                    Diagnostic::error("xpol::map::keys", format!("`@{}` is used with different keys", name.name))
                        .with_label(name.span, format!("keys [{}] here", fmt(&key_types)))
                        .with_label(span, format!("keys [{}] first", fmt(&prev)))
                        .with_help("every use of a map must have the same number and types of keys"),
                );
                return None;
            }
            if let Some(kind) = kind {
                let m = &mut self.maps[id];
                if let Some(&first) = self.written_maps.get(&id) {
                    if m.value != kind {
                        let prev = m.value;
                        self.diags.push(
                            Diagnostic::error("xpol::map::value", format!("`@{}` is updated in two different ways", name.name))
                                .with_label(name.span, format!("{} here", value_kind_name(kind)))
                                .with_label(first, format!("{} first", value_kind_name(prev)))
                                .with_help("a map holds either counts, sums, or assigned values"),
                        );
                        return None;
                    }
                } else {
                    // The first update, after reads only.
                    m.value = kind;
                    self.written_maps.insert(id, name.span);
                }
            } else {
                self.maps[id].read = true;
            }
            return Some(id);
        }
        let id = self.maps.len();
        if kind.is_some() {
            self.written_maps.insert(id, name.span);
        }
        self.maps.push(UserMap {
            name: name.name.clone(),
            value: kind.unwrap_or(MapValueKind::Value),
            keys: key_types,
            read: kind.is_none(),
            capacity: None,
            span: name.span,
        });
        self.map_ids.insert(name.name.clone(), id);
        Some(id)
    }

    /// `map @NAME max N` declarations, after every rule is checked: each
    /// names a map some rule uses, once, with keys (a map without keys has
    /// its one entry and is never full), and a capacity from 1 to
    /// [`ir::MAX_MAP_ENTRIES`].
    fn map_capacities(&mut self, decls: &[&ast::MapDecl]) {
        let mut first: HashMap<&str, Span> = HashMap::new();
        for d in decls {
            let name = d.map.name.as_str();
            if let Some(&prev) = first.get(name) {
                self.diags.push(
                    Diagnostic::error("xpol::map::duplicate", format!("the capacity of `@{name}` is declared twice"))
                        .with_label(d.map.span, "declared again here")
                        .with_label(prev, "first declared here")
                        .with_help("keep one `map @NAME max N`"),
                );
                continue;
            }
            first.insert(name, d.map.span);
            let (max, max_span) = d.max;
            let capacity = if max == 0 {
                self.error_help(max_span, "xpol::map::max", format!("`@{name}` is declared with room for no entry"), "`max 0`", "give the most entries the map may hold, or leave the declaration out for the default (10240)");
                None
            } else if max > ir::MAX_MAP_ENTRIES {
                self.error_help(
                    max_span,
                    "xpol::map::max",
                    format!("`@{name}` is declared with room for {max} entries, more than the {} a map may hold", ir::MAX_MAP_ENTRIES),
                    format!("over {}", ir::MAX_MAP_ENTRIES),
                    "the kernel allocates every entry of a map when the policy loads (about 100 bytes an entry, plus 8 bytes an entry per CPU for a map the policy only writes): a larger map would take gigabytes",
                );
                None
            } else {
                Some(max as u32)
            };
            let Some(&id) = self.map_ids.get(name) else {
                if !self.mentioned_maps.contains(name) {
                    self.error_help(d.map.span, "xpol::map::unused", format!("`@{name}` is declared but no rule uses it"), "never used", "a map is made by the rules that update or read it: use it in a rule, or remove the declaration (check the spelling)");
                }
                continue;
            };
            if self.maps[id].keys.is_empty() {
                self.diags.push(
                    Diagnostic::error("xpol::map::keyless", format!("`@{name}` has no keys: it holds one value, and needs no capacity"))
                        .with_label(d.span, "declared here")
                        .with_label(self.maps[id].span, "used without keys here")
                        .with_help("remove the declaration; a map without keys has its one entry and is never full"),
                );
                continue;
            }
            self.maps[id].capacity = capacity;
        }
    }

    fn bool_expr(&mut self, e: &ast::Expr, what: &str) -> Option<ir::Expr> {
        let ex = self.value_expr(e, what)?;
        if ex.ty != Type::Bool {
            self.error_help(
                e.span,
                "xpol::type::mismatch",
                format!("{what} must be a boolean, but this is `{}`", ex.ty),
                format!("`{}`", ex.ty),
                "compare it, e.g. `x != 0`",
            );
            return None;
        }
        Some(ex)
    }

    fn int_expr(&mut self, e: &ast::Expr, what: &str) -> Option<ir::Expr> {
        let ex = self.value_expr(e, what)?;
        self.expect_int(ex, e.span, what)
    }

    /// `ex` (checked from the text at `span`) if it is an integer.
    fn expect_int(&mut self, ex: ir::Expr, span: Span, what: &str) -> Option<ir::Expr> {
        if ex.ty != Type::Int {
            self.error(span, "xpol::type::mismatch", format!("{what} must be an integer, but this is `{}`", ex.ty), format!("`{}`", ex.ty));
            return None;
        }
        Some(ex)
    }

    /// An expression that must be a single runtime value (not a set, prefix or range).
    fn value_expr(&mut self, e: &ast::Expr, what: &str) -> Option<ir::Expr> {
        match self.expr(e)? {
            Operand::Expr(ex) => Some(ex),
            other => {
                let thing = operand_name(&other);
                self.error_help(
                    e.span,
                    "xpol::type::mismatch",
                    format!("{what} needs a single value, but this is {thing}"),
                    thing,
                    "sets, prefixes and ranges go on the right of `in`, e.g. `ip.src in 10.0.0.0/8`",
                );
                None
            }
        }
    }

    fn lookup_local(&self, name: &str) -> Option<ir::LocalId> {
        self.scopes.iter().rev().find_map(|s| s.get(name).copied())
    }

    fn expr(&mut self, e: &ast::Expr) -> Option<Operand> {
        // A level takes some 22 KiB of stack in a debug build: more stack,
        // on the heap, when less than 64 KiB are left.
        stacker::maybe_grow(64 * 1024, 1024 * 1024, || self.expr_here(e))
    }

    fn expr_here(&mut self, e: &ast::Expr) -> Option<Operand> {
        let span = e.span;
        // Whether this expression may be a `limit`; its operands may only
        // through `&&`, `||` and `!`.
        let in_condition = std::mem::take(&mut self.in_condition);
        let mk = |kind: ExprKind, ty: Type| Operand::Expr(ir::Expr { kind, ty, span });
        match &e.kind {
            ast::ExprKind::Int(i) => Some(mk(ExprKind::Const(Value::Int(*i)), Type::Int)),
            ast::ExprKind::Bool(b) => Some(mk(ExprKind::Const(Value::Bool(*b)), Type::Bool)),
            ast::ExprKind::Ip(a) => Some(mk(ExprKind::Const(Value::Ip(*a)), Type::Ip)),
            ast::ExprKind::Mac(m) => Some(mk(ExprKind::Const(Value::Mac(ir::mac_to_u64(*m))), Type::Mac)),
            ast::ExprKind::Cidr(a, len) => self.cidr(*a, *len, span),
            ast::ExprKind::Range(lo, hi) => {
                let lo_v = self.const_int(lo, "a range bound");
                let hi_v = self.const_int(hi, "a range bound");
                let (lo_v, hi_v) = (lo_v?, hi_v?);
                if lo_v > hi_v {
                    self.error(span, "xpol::range", format!("the range {lo_v}..{hi_v} is empty"), "the first bound is greater than the second");
                    return None;
                }
                Some(Operand::Range(lo_v, hi_v))
            }
            ast::ExprKind::SetLit(elements) => {
                let (set, elem) = self.set_elements(elements, span, None)?;
                Some(Operand::Set(set, elem, None))
            }
            ast::ExprKind::Path(segs) => self.path(segs, span),
            ast::ExprKind::MapRead { map, keys } => {
                self.mentioned_maps.insert(map.name.clone());
                let keys = self.map_keys(keys)?;
                let id = self.map_use(map, &keys, None)?;
                Some(mk(ExprKind::MapRead { map: id, keys }, Type::Int))
            }
            ast::ExprKind::Call { func, .. } => {
                let msg = match func.name.as_str() {
                    "count" | "sum" => format!("`{}()` can only be the value of a map assignment", func.name),
                    other => format!("unknown function `{other}`"),
                };
                self.error_help(span, "xpol::call", msg, "here", "write e.g. `@hits[ip.src] = count()` or `@bytes[ip.src] = sum(pkt.len)`");
                None
            }
            ast::ExprKind::Limit(l) => self.limit(l, span, in_condition),
            ast::ExprKind::Unary { op, operand } => {
                self.in_condition = in_condition && *op == UnOp::Not;
                let a = self.value_expr(operand, "an operand")?;
                let (want, sym) = match op {
                    UnOp::Not => (Type::Bool, "!"),
                    UnOp::Neg => (Type::Int, "-"),
                    UnOp::BitNot => (Type::Int, "~"),
                };
                if a.ty != want {
                    self.error(operand.span, "xpol::type::mismatch", format!("`{sym}` needs `{want}`, but this is `{}`", a.ty), format!("`{}`", a.ty));
                    return None;
                }
                // Moved, not cloned: a clone per level of `!!!!...` costs
                // time and stack in the depth of the chain.
                let kind = match op {
                    UnOp::Not => ExprKind::Not(Box::new(a)),
                    UnOp::Neg => ExprKind::Neg(Box::new(a)),
                    UnOp::BitNot => ExprKind::BitNot(Box::new(a)),
                };
                Some(Operand::Expr(fold(ir::Expr { kind, ty: want, span })))
            }
            ast::ExprKind::Binary { op, lhs, rhs } => self.binary(*op, lhs, rhs, span, in_condition),
        }
    }

    fn const_int(&mut self, e: &ast::Expr, what: &str) -> Option<u64> {
        match self.expr(e)? {
            Operand::Expr(ir::Expr { kind: ExprKind::Const(Value::Int(i)), .. }) => Some(i),
            _ => {
                self.error(e.span, "xpol::range", format!("{what} must be a constant integer"), "not a constant integer");
                None
            }
        }
    }

    fn cidr(&mut self, addr: IpAddr, len: u8, span: Span) -> Option<Operand> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            self.error(span, "xpol::prefix", format!("prefix length {len} is longer than {max}"), "invalid prefix");
            return None;
        }
        let masked = mask_addr(addr, len);
        if masked != addr {
            self.error_help(
                span,
                "xpol::prefix::host_bits",
                format!("the prefix {addr}/{len} has host bits set"),
                "host bits set",
                format!("did you mean {masked}/{len}?"),
            );
            return None;
        }
        Some(Operand::Cidr(addr, len))
    }

    fn path(&mut self, segs: &[ast::Ident], span: Span) -> Option<Operand> {
        let name = segs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(".");
        if segs.len() == 1 {
            if let Some(local) = self.lookup_local(&name) {
                let ty = self.locals[local].ty;
                return Some(Operand::Expr(ir::Expr { kind: ExprKind::Local(local), ty, span }));
            }
            match self.globals.get(&name).cloned() {
                Some(Global::Set { id, .. }) => return Some(Operand::Named(id)),
                Some(Global::DynSet { id: Some(id), .. }) => return Some(Operand::Dynamic(id)),
                Some(Global::DynSet { id: None, .. }) => return None,
                Some(Global::Const { value: Some(v), .. }) => {
                    return Some(match v {
                        ConstVal::Value(v) => Operand::Expr(ir::Expr { kind: ExprKind::Const(v), ty: v.ty(), span }),
                        ConstVal::Cidr(a, l) => Operand::Cidr(a, l),
                        ConstVal::Range(lo, hi) => Operand::Range(lo, hi),
                        ConstVal::Set(s, e) => Operand::Set(s, e, Some(name)),
                    });
                }
                // Its declaration failed and was reported.
                Some(Global::Const { value: None, .. }) => return None,
                None => {}
            }
        }
        if let Some(f) = Field::by_name(&name) {
            if f == Field::CtState {
                self.ct_used(span);
            }
            return Some(Operand::Expr(ir::Expr { kind: ExprKind::Field(f), ty: f.ty(), span }));
        }
        if segs.len() == 1 && self.state_name_outside(&name, span) {
            return None;
        }
        let what = if segs.len() == 1 { "name" } else { "packet field" };
        let mut d = Diagnostic::error("xpol::name::unknown", format!("unknown {what} `{name}`")).with_label(span, "not defined");
        // The closest known name: a field for a dotted name; a local, a
        // const or set, or a constant for a plain one.
        let fix = if segs.len() == 1 {
            let mut names: Vec<&str> = self.scopes.iter().rev().flat_map(|s| s.keys().map(String::as_str)).collect();
            let mut globals: Vec<&str> = self.globals.keys().map(String::as_str).collect();
            globals.sort();
            names.extend(globals);
            names.extend(["true", "false"]);
            xpol_lang::suggest::closest(&name, names).map(|n| (n.to_string(), format!("did you mean `{n}`?")))
        } else {
            Field::suggest(&name).map(|f| (f.name().to_string(), format!("did you mean `{}`? ({})", f.name(), f.doc())))
        };
        // `dport`: a field's name without its header.
        let suffixed: Vec<Field> = Field::ALL.iter().copied().filter(|f| segs.len() == 1 && f.name().rsplit('.').next() == Some(name.as_str())).collect();
        d = match fix {
            Some((replacement, message)) => d.with_fix(span, replacement, message, true),
            None if !suffixed.is_empty() => {
                for f in suffixed {
                    d = d.with_fix(span, f.name(), format!("the packet field `{}`? ({})", f.name(), f.doc()), false);
                }
                d
            }
            None if segs.len() == 1 => d.with_help("declare it with `const`, `set` or `let` before using it"),
            None => d.with_help("see docs/language.md for the list of packet fields"),
        };
        self.diags.push(d);
        None
    }

    /// `in_condition`: the operation stands where a `limit` may, and so do
    /// the operands of `&&` and `||`.
    fn binary(&mut self, op: BinOp, lhs: &ast::Expr, rhs: &ast::Expr, span: Span, in_condition: bool) -> Option<Operand> {
        match op {
            BinOp::And | BinOp::Or => {
                self.in_condition = in_condition;
                let a = self.bool_expr(lhs, &format!("the left side of `{}`", op.as_str()));
                self.in_condition = in_condition;
                let b = self.bool_expr(rhs, &format!("the right side of `{}`", op.as_str()));
                let (a, b) = (Box::new(a?), Box::new(b?));
                let kind = if op == BinOp::And { ExprKind::And(a, b) } else { ExprKind::Or(a, b) };
                Some(Operand::Expr(fold(ir::Expr { kind, ty: Type::Bool, span })))
            }
            BinOp::In | BinOp::NotIn => {
                if let Some(checked) = self.ct_state_test(op, lhs, rhs, span) {
                    return checked;
                }
                let a = self.value_expr(lhs, "the left side of `in`");
                let set = self.expr(rhs);
                let (a, set) = (a?, set?);
                let set_ref = self.set_ref(&a, set, rhs.span, op == BinOp::NotIn)?;
                let mut e = ir::Expr { kind: ExprKind::In(Box::new(a), set_ref), ty: Type::Bool, span };
                if op == BinOp::NotIn {
                    e = ir::Expr { kind: ExprKind::Not(Box::new(e)), ty: Type::Bool, span };
                }
                Some(Operand::Expr(fold(e)))
            }
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                if let Some(checked) = self.ct_state_test(op, lhs, rhs, span) {
                    return checked;
                }
                let a = self.expr(lhs);
                let b = self.expr(rhs);
                let (a, b) = (a?, b?);
                let (a, b) = match (a, b) {
                    (Operand::Expr(a), Operand::Expr(b)) => (a, b),
                    (a, b) => {
                        let other = if matches!(a, Operand::Expr(_)) { b } else { a };
                        let thing = operand_name(&other);
                        self.error_help(
                            span,
                            "xpol::type::mismatch",
                            format!("`{}` compares single values, but one side is {thing}", op.as_str()),
                            format!("{thing} here"),
                            "to test membership in a set, prefix or range, use `in` (or `!in`)",
                        );
                        return None;
                    }
                };
                let cmp = match op {
                    BinOp::Eq => CmpOp::Eq,
                    BinOp::Ne => CmpOp::Ne,
                    BinOp::Lt => CmpOp::Lt,
                    BinOp::Le => CmpOp::Le,
                    BinOp::Gt => CmpOp::Gt,
                    _ => CmpOp::Ge,
                };
                if a.ty != b.ty {
                    self.diags.push(
                        Diagnostic::error("xpol::type::mismatch", format!("cannot compare `{}` with `{}`", a.ty, b.ty))
                            .with_label(a.span, format!("`{}`", a.ty))
                            .with_label(b.span, format!("`{}`", b.ty)),
                    );
                    return None;
                }
                if !matches!(cmp, CmpOp::Eq | CmpOp::Ne) && a.ty != Type::Int {
                    self.error(span, "xpol::type::mismatch", format!("`{}` orders integers only, not `{}`", op.as_str(), a.ty), "not integers");
                    return None;
                }
                self.comparison_can_hold(cmp, &a, &b, span)?;
                Some(Operand::Expr(fold(ir::Expr { kind: ExprKind::Cmp(cmp, Box::new(a), Box::new(b)), ty: Type::Bool, span })))
            }
            _ => {
                let arith = match op {
                    BinOp::Add => ArithOp::Add,
                    BinOp::Sub => ArithOp::Sub,
                    BinOp::Mul => ArithOp::Mul,
                    BinOp::Div => ArithOp::Div,
                    BinOp::Mod => ArithOp::Mod,
                    BinOp::BitAnd => ArithOp::And,
                    BinOp::BitOr => ArithOp::Or,
                    BinOp::BitXor => ArithOp::Xor,
                    BinOp::Shl => ArithOp::Shl,
                    _ => ArithOp::Shr,
                };
                let what = format!("an operand of `{}`", op.as_str());
                let a = self.value_expr(lhs, &what);
                let b = self.value_expr(rhs, &what);
                let (a, b) = (a?, b?);
                if let (Type::Bool, Type::Bool, BinOp::BitAnd | BinOp::BitOr) = (a.ty, b.ty, op) {
                    self.bitwise_on_booleans(op, lhs.span, rhs.span, span);
                    return None;
                }
                let a = self.expect_int(a, lhs.span, &what);
                let b = self.expect_int(b, rhs.span, &what);
                let (a, b) = (a?, b?);
                if matches!(arith, ArithOp::Div | ArithOp::Mod) && b.kind == ExprKind::Const(Value::Int(0)) {
                    self.error(rhs.span, "xpol::arith::div_zero", "division by zero", "this is 0");
                    return None;
                }
                Some(Operand::Expr(fold(ir::Expr { kind: ExprKind::Arith(arith, Box::new(a), Box::new(b)), ty: Type::Int, span })))
            }
        }
    }

    /// The right side of `x in S`, checked against the type of `x`.
    /// `negated`: for `!in`.
    fn set_ref(&mut self, lhs: &ir::Expr, set: Operand, span: Span, negated: bool) -> Option<SetRef> {
        let (elem, set_ref) = match set {
            Operand::Dynamic(id) => return self.dynset_ref(lhs, id, span),
            Operand::Named(id) => (self.sets[id].elem, SetRef::Named(id)),
            Operand::Cidr(a, l) => {
                if l == 0 {
                    self.zero_prefix(a, span);
                }
                let mut s = ConstSet::default();
                match a {
                    IpAddr::V4(a) => s.v4.push((a, l)),
                    IpAddr::V6(a) => s.v6.push((a, l)),
                }
                (SetElem::Cidr, SetRef::Inline(s))
            }
            Operand::Range(lo, hi) => (SetElem::Int, SetRef::Inline(ConstSet { ints: vec![(lo, hi)], ..ConstSet::default() })),
            Operand::Set(s, elem, name) => {
                if s.len() <= INLINE_SET_LIMIT {
                    (elem, SetRef::Inline(s))
                } else {
                    // Large constant sets become read-only maps, one per const.
                    let key = name.clone().unwrap_or_else(|| format!("anon{}", self.sets.len()));
                    let id = match self.const_set_maps.get(&key) {
                        Some(&id) => id,
                        None => {
                            let id = self.sets.len();
                            self.check_map_entries(&key, elem, &s, span);
                            self.sets.push(NamedSet { name: key.clone(), elem, contents: s, mutable: false, capacity: None, span, file: None });
                            self.const_set_maps.insert(key, id);
                            id
                        }
                    };
                    (elem, SetRef::Named(id))
                }
            }
            Operand::Expr(ir::Expr { kind: ExprKind::Const(v), .. }) => {
                let mut s = ConstSet::default();
                let elem = match v {
                    Value::Int(i) => {
                        s.ints.push((i, i));
                        SetElem::Int
                    }
                    Value::Ip(IpAddr::V4(a)) => {
                        s.v4.push((a, 32));
                        SetElem::Cidr
                    }
                    Value::Ip(IpAddr::V6(a)) => {
                        s.v6.push((a, 128));
                        SetElem::Cidr
                    }
                    Value::Mac(m) => {
                        s.macs.push(m);
                        SetElem::Mac
                    }
                    Value::Bool(_) => {
                        self.error(span, "xpol::type::mismatch", "`in` needs a set, prefix or range on its right", "a boolean");
                        return None;
                    }
                };
                (elem, SetRef::Inline(s))
            }
            Operand::Expr(_) => {
                self.error_help(
                    span,
                    "xpol::type::mismatch",
                    "`in` needs a set, prefix or range on its right",
                    "a value computed from the packet",
                    "compare values with `==`",
                );
                return None;
            }
        };
        let want = match lhs.ty {
            Type::Int => SetElem::Int,
            Type::Ip => SetElem::Cidr,
            Type::Mac => SetElem::Mac,
            Type::Bool => {
                self.error(lhs.span, "xpol::type::mismatch", "a boolean cannot be a set member", "boolean");
                return None;
            }
        };
        // An empty constant set has no element type: it fits any value.
        let empty = matches!(&set_ref, SetRef::Inline(s) if s.is_empty()) || matches!(&set_ref, SetRef::Named(id) if !self.sets[*id].mutable && self.sets[*id].contents.is_empty());
        if want != elem && !empty {
            self.diags.push(
                Diagnostic::error(
                    "xpol::type::mismatch",
                    format!("`{}` cannot be in a set of `{}`", lhs.ty, elem_name(elem)),
                )
                .with_label(lhs.span, format!("`{}`", lhs.ty))
                .with_label(span, format!("a set of `{}`", elem_name(elem))),
            );
            return None;
        }
        self.membership_can_hold(lhs, &set_ref, span, negated)?;
        Some(set_ref)
    }
}

fn value_kind_name(k: MapValueKind) -> &'static str {
    match k {
        MapValueKind::Count => "count()",
        MapValueKind::Sum => "sum()",
        MapValueKind::Value => "assigned",
    }
}

fn operand_name(op: &Operand) -> &'static str {
    match op {
        Operand::Expr(_) => "a value",
        Operand::Cidr(..) => "a prefix",
        Operand::Range(..) => "a range",
        Operand::Set(..) | Operand::Named(_) | Operand::Dynamic(_) => "a set",
    }
}

pub fn mask_addr(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 { 0 } else { u32::MAX << (32 - len as u32) };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if len == 0 { 0 } else { u128::MAX << (128 - len as u32) };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// Sorts and de-duplicates; merges overlapping or adjacent integer ranges.
fn normalize(set: &mut ConstSet) {
    set.v4.sort_by_key(|(a, l)| (u32::from(*a), *l));
    set.v4.dedup();
    set.v6.sort_by_key(|(a, l)| (u128::from(*a), *l));
    set.v6.dedup();
    set.macs.sort();
    set.macs.dedup();
    set.ints.sort();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(set.ints.len());
    for &(lo, hi) in &set.ints {
        match merged.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    set.ints = merged;
}

/// Folds an operation whose operands are all constants.
fn fold(e: ir::Expr) -> ir::Expr {
    use ExprKind::*;
    let c = |x: &ir::Expr| match x.kind {
        Const(v) => Some(v),
        _ => None,
    };
    let folded = match &e.kind {
        Not(a) => match c(a) {
            Some(Value::Bool(b)) => Some(Value::Bool(!b)),
            _ => None,
        },
        Neg(a) => match c(a) {
            Some(Value::Int(i)) => Some(Value::Int(i.wrapping_neg())),
            _ => None,
        },
        BitNot(a) => match c(a) {
            Some(Value::Int(i)) => Some(Value::Int(!i)),
            _ => None,
        },
        And(a, b) | Or(a, b) => match (c(a), c(b)) {
            (Some(Value::Bool(x)), Some(Value::Bool(y))) => Some(Value::Bool(if matches!(e.kind, And(..)) { x && y } else { x || y })),
            _ => None,
        },
        Arith(op, a, b) => match (c(a), c(b)) {
            (Some(Value::Int(x)), Some(Value::Int(y))) => Some(Value::Int(eval_arith(*op, x, y))),
            _ => None,
        },
        Cmp(op, a, b) => match (c(a), c(b)) {
            (Some(x), Some(y)) => Some(Value::Bool(eval_cmp(*op, x, y))),
            _ => None,
        },
        _ => None,
    };
    match folded {
        Some(v) => ir::Expr { kind: Const(v), ty: v.ty(), span: e.span },
        None => e,
    }
}

/// Integer semantics shared by constant folding and the documentation: u64,
/// wrapping; x / 0 = 0 and x % 0 = x as in BPF; shifts by 64 or more give 0.
pub fn eval_arith(op: ArithOp, x: u64, y: u64) -> u64 {
    match op {
        ArithOp::Add => x.wrapping_add(y),
        ArithOp::Sub => x.wrapping_sub(y),
        ArithOp::Mul => x.wrapping_mul(y),
        ArithOp::Div => x.checked_div(y).unwrap_or(0),
        ArithOp::Mod => x.checked_rem(y).unwrap_or(x),
        ArithOp::And => x & y,
        ArithOp::Or => x | y,
        ArithOp::Xor => x ^ y,
        ArithOp::Shl => if y >= 64 { 0 } else { x << y },
        ArithOp::Shr => if y >= 64 { 0 } else { x >> y },
    }
}

fn eval_cmp(op: CmpOp, x: Value, y: Value) -> bool {
    match op {
        CmpOp::Eq => x == y,
        CmpOp::Ne => x != y,
        _ => {
            let (Value::Int(x), Value::Int(y)) = (x, y) else { return false };
            match op {
                CmpOp::Lt => x < y,
                CmpOp::Le => x <= y,
                CmpOp::Gt => x > y,
                _ => x >= y,
            }
        }
    }
}
