//! Lowering of one program's probes to LLVM IR through [`Bpf`].
//!
//! Values follow the language's three-valued logic: every value carries a
//! presence flag (a field the packet does not carry is absent), and a
//! boolean is a pair of flags (`t`: known true, `f`: known false; neither:
//! unknown). A predicate or `if` condition holds only when it is known true.

use super::budget::SizeFloor;
use super::builder::{Bpf, Counters, MapDef, TableDef, BPF_ANY, BPF_NOEXIST};
use super::parse::{self, Headers, L4At};
use crate::check::fields::Field;
use crate::ir::{self, ArithOp, CmpOp, ConstSet, ExprKind, MapOp, SetRef, StmtKind, Type, Value};
use inkwell::basic_block::BasicBlock;
use inkwell::values::{InstructionOpcode, IntValue, PointerValue};
use inkwell::IntPredicate;
use std::collections::HashMap;
use std::net::IpAddr;
use xpol_lang::ast::{Hook, Verdict};
use xpol_lang::meta::MapValueKind;
use xpol_lang::Span;

/// The maps of one object, as codegen refers to them.
pub struct Maps<'ctx> {
    pub rules: Counters<'ctx>,
    pub sets: Vec<SetMaps<'ctx>>,
    pub users: Vec<UserMapDef<'ctx>>,
    pub redirect: Option<MapDef<'ctx>>,
    pub pools: Vec<super::lb::PoolMaps<'ctx>>,
    /// By `ir::LimitId`.
    pub limits: Vec<super::limit::LimitDef<'ctx>>,
    /// The connection table, when a rule reads `ct.state`.
    pub conntrack: Option<super::conntrack::CtDef<'ctx>>,
    /// The ring buffer of a policy that logs.
    pub log: Option<super::log::LogMaps<'ctx>>,
    /// By `ir::DynSetId`.
    pub dynsets: Vec<super::dynset::DynSetDef<'ctx>>,
    /// The runs of rules lowered as a tree walk.
    pub classified: super::classify::Runs<'ctx>,
}

#[derive(Default)]
pub struct SetMaps<'ctx> {
    pub v4: Option<Ipv4Maps<'ctx>>,
    pub v6: Option<super::ipv6_set::Ipv6Part<'ctx>>,
    /// The hash map shared by the sets of ports, integers and MACs, and
    /// the set's id there.
    pub hash: Option<(MapDef<'ctx>, u32)>,
}

/// One of the three tables of the IPv4 sets, where
/// `xpol_lang::ipv4_table::placement` put it.
#[derive(Clone, Copy)]
pub enum Table<'ctx> {
    Global(TableDef<'ctx>),
    Map(MapDef<'ctx>),
}

/// Where one set's IPv4 prefix table is (`xpol_lang::ipv4_table`): the
/// three shared tables and the set's first root entry.
#[derive(Clone, Copy)]
pub struct Ipv4Maps<'ctx> {
    pub root: Table<'ctx>,
    pub mid: Table<'ctx>,
    pub leaf: Table<'ctx>,
    /// Chunks the `mid` and `leaf` tables hold: a child index read from a
    /// table in global data is checked against them (the verifier wants
    /// every offset bounded; a valid table never fails the check).
    pub mid_chunks: u64,
    pub leaf_chunks: u64,
    /// `mid` entries are u32, else u16.
    pub mid_wide: bool,
    pub root_base: u64,
    /// Levels this set's entries lead to (1: root only; 3: down to leaves):
    /// the lookups past them are not emitted.
    pub levels: u32,
}

pub struct UserMapDef<'ctx> {
    pub def: MapDef<'ctx>,
    pub per_cpu: bool,
    pub key_size: u32,
    /// The counter slot of its lost updates (`xpol_lang::meta::lost_slot`).
    pub lost_slot: u32,
}

#[derive(Clone, Copy)]
pub(super) enum Val<'ctx> {
    /// Integers and MAC addresses (i64).
    Int { v: IntValue<'ctx>, present: IntValue<'ctx> },
    Bool { t: IntValue<'ctx>, f: IntValue<'ctx> },
    /// An address of either family: `v4` in host order when `!v6`, else
    /// `hi`/`lo` host-order halves.
    Ip { present: IntValue<'ctx>, v6: IntValue<'ctx>, v4: IntValue<'ctx>, hi: IntValue<'ctx>, lo: IntValue<'ctx> },
}

pub struct Lower<'l, 'a, 'ctx> {
    pub b: &'l mut Bpf<'a, 'ctx>,
    pub h: Headers<'ctx>,
    pub policy: &'l ir::Policy,
    pub maps: &'l Maps<'ctx>,
    pub hook: Hook,
    locals: HashMap<ir::LocalId, Val<'ctx>>,
    /// IPv4 addresses in host order (as [`Val::Ip`] holds them) made from
    /// an address as loaded: constant prefixes are compared with the
    /// loaded value and byte-swapped constants instead, so that a rule
    /// that only compares (a blocklist of a few prefixes) needs no swap.
    raw_v4: std::cell::RefCell<HashMap<IntValue<'ctx>, IntValue<'ctx>>>,
    /// The program classifies packets by the connection table after the
    /// L4 parse (it reads `ct.state` or records connections).
    pub ct_classify: bool,
    /// What a pass writes to the connection table, in a program that
    /// records connections, once classified (`conntrack.rs`).
    pub(super) ct_write: Option<super::conntrack::CtWrite<'ctx>>,
    /// The predicate being lowered has one location, its own: the
    /// comparisons in it get none of theirs (see `Lower::rule`).
    predicate_located: bool,
    /// What the program certainly takes, when it reads the facts from the
    /// facts map.
    pub floor: SizeFloor,
}

/// A long program's rules reload the facts' address from the stack once
/// every this many rules (`Bpf::reload_facts_pointer`): often enough that
/// no address LLVM keeps in a register lives across more than a few
/// rules, seldom enough to cost little. Measured on generated policies of
/// 300 to 3,000 rules: against a reload per rule, 1 to 15% fewer
/// instructions (the most on rules that read one or two facts, which LLVM
/// can keep in registers), and never more than 2% above not reloading at
/// all, which took up to 20% more on rules that read many facts.
pub const FACTS_RELOAD_RULES: usize = 16;

/// Verdict-only rules that share one counting tail in long programs.
pub const TAIL_RULES: usize = 256;

/// The counting tails of a long program (`Lower::rules_on_facts_map`):
/// verdict-only rules jump to the tail of their verdict, which counts the
/// rule (its number a phi of the rules that jump there) and returns the
/// verdict. A tail per verdict, so that the return code is a constant: a
/// phi of a few constants over thousands of rules made LLVM keep each
/// constant in one register across the whole program, and its register
/// coalescing grew quadratically. And new tails after every
/// [`TAIL_RULES`] rules: LLVM's passes revisit all of a phi's entries
/// each time one changes, which made one tail for thousands of rules
/// quadratic in compile time.
#[derive(Default)]
struct Tails<'ctx> {
    /// Tails of the current run of rules.
    open: Vec<Tail<'ctx>>,
    /// Rules that jumped into `open`.
    rules: usize,
    done: Vec<Tail<'ctx>>,
}

struct Tail<'ctx> {
    code: u64,
    block: BasicBlock<'ctx>,
    /// The rule number of each block that jumps here.
    from: Vec<(IntValue<'ctx>, BasicBlock<'ctx>)>,
}

impl<'ctx> Tails<'ctx> {
    /// The tail a rule returning `code` jumps to.
    fn to(&mut self, b: &Bpf<'_, 'ctx>, code: u64) -> &mut Tail<'ctx> {
        if self.rules == TAIL_RULES {
            self.done.append(&mut self.open);
            self.rules = 0;
        }
        self.rules += 1;
        let i = match self.open.iter().position(|t| t.code == code) {
            Some(i) => i,
            None => {
                self.open.push(Tail { code, block: b.block("count_and_return"), from: Vec::new() });
                self.open.len() - 1
            }
        };
        &mut self.open[i]
    }
}

/// The volatile loads in `bb` (reads of the facts map, see
/// [`SizeFloor`]).
fn volatile_loads(bb: BasicBlock<'_>) -> usize {
    std::iter::successors(bb.get_first_instruction(), |i| i.get_next_instruction())
        .filter(|i| i.get_opcode() == InstructionOpcode::Load && i.get_volatile() == Ok(true))
        .count()
}

/// Return codes: XDP actions, or TC actions for `tc:*` hooks.
pub(super) fn verdict_code(hook: Hook, v: Verdict) -> u64 {
    match (hook, v) {
        (Hook::Xdp, Verdict::Abort) => 0,
        (Hook::Xdp, Verdict::Drop) => 1,
        (Hook::Xdp, Verdict::Pass) => 2,
        (Hook::Xdp, Verdict::Tx) => 3,
        // `pass` is TC_ACT_UNSPEC (TCX_NEXT), not TC_ACT_OK (TCX_PASS):
        // the next program on the hook (another policy, Cilium's, ...) still
        // sees the packet, and with none left it passes. TC_ACT_OK would end
        // the chain, so a policy attached after this one would never run
        // (nftables: an `accept` in one table does not skip the others).
        // TC_ACT_SHOT for the rest; `tx` is rejected by the checker for tc.
        (_, Verdict::Pass) => u64::from(u32::MAX),
        (_, Verdict::Drop | Verdict::Abort | Verdict::Tx) => 2,
    }
}

impl<'l, 'a, 'ctx> Lower<'l, 'a, 'ctx> {
    pub fn new(
        b: &'l mut Bpf<'a, 'ctx>,
        h: Headers<'ctx>,
        policy: &'l ir::Policy,
        maps: &'l Maps<'ctx>,
        hook: Hook,
    ) -> Self {
        Lower { b, h, policy, maps, hook, locals: HashMap::new(), raw_v4: Default::default(), ct_classify: false, ct_write: None, predicate_located: false, floor: SizeFloor::default() }
    }

    fn loc(&mut self, span: Span) {
        self.b.locate(span);
    }

    /// All probes in order, then the default verdict. `l4`: the index of
    /// the first probe that reads L4 fields, before which the L4 header is
    /// parsed. With `facts_map`, the L4 header is parsed first and every
    /// fact moved into that map (see [`Bpf::spill_facts`]).
    ///
    /// Returns, for a long program certainly too large (see
    /// [`SizeFloor`], in `floor`), the index of the probe where it crosses
    /// the limit; the lowering stopped there.
    pub fn program(&mut self, probes: &[ir::Probe], l4: Option<(usize, L4At<'ctx>)>, facts_map: Option<MapDef<'ctx>>) -> Option<usize> {
        match facts_map {
            Some(map) => self.rules_on_facts_map(probes, l4, map),
            None => {
                self.rules_in_place(probes, l4);
                None
            }
        }
    }

    /// Specialized (short) programs: each rule counts and returns in place.
    /// A shared tail's rule number and verdict would be phis that LLVM
    /// keeps in registers across every rule (or spills), which costs the
    /// common path more than the copies cost in size. The rules after the
    /// L4 parse are emitted once per L4 header they read (see
    /// [`parse::L4Split`]) while the copies stay within the rule count and
    /// branch weight that specializing allows.
    fn rules_in_place(&mut self, probes: &[ir::Probe], l4: Option<(usize, L4At<'ctx>)>) {
        let offset = self.probe_offset(probes);
        let mut i = 0;
        while i < probes.len() {
            if let Some((_, at)) = l4.filter(|&(first, _)| first == i) {
                let rest = &probes[i..];
                // The copies multiply code and the verifier's work: keep
                // them within what specializing allows a whole program.
                // Split by every header the rules read, else by those their
                // predicates read (a VIP rule's `tcp.dport` before an `lb`,
                // whose body reads every L4 header).
                let affordable = |split: &parse::L4Split| {
                    let copies = split.copies();
                    copies * rest.len() <= super::SPECIALIZE_MAX_RULES && copies * super::probes_weight(rest) <= super::SPECIALIZE_MAX_WEIGHT
                };
                // The split by predicates is weighed by the rules live at
                // each copy: a VIP rule's `lb` is live at the TCP copy only.
                let by_predicates = parse::L4Split::of_predicates(rest);
                let live_affordable = |split: &parse::L4Split| {
                    let (rules, weight) = split.live_cost(rest);
                    split.copies() > 1 && rules <= super::SPECIALIZE_MAX_RULES && weight <= super::SPECIALIZE_MAX_WEIGHT
                };
                let split = Some(parse::L4Split::of(rest)).filter(affordable).or(Some(by_predicates).filter(live_affordable));
                if let Some(split) = split {
                    for end in parse::parse_l4_split(self.b, &self.h, &at, split) {
                        self.b.at(end);
                        self.l4_parsed();
                        self.rules_in_place(rest, None);
                    }
                    return;
                }
                parse::parse_l4_here(self.b, &self.h, &at);
                self.l4_parsed();
            }
            i = self.rule_or_run(probes, offset, i, None);
        }
        // A program that records connections and has no rules of its own
        // (the `tc:egress` the checker gave it) parses L4 after them all.
        if let Some((_, at)) = l4.filter(|&(first, _)| first == probes.len()) {
            parse::parse_l4_here(self.b, &self.h, &at);
            self.l4_parsed();
        }
        // No rule decided: pass.
        self.ret_pass(verdict_code(self.hook, Verdict::Pass), false);
    }

    /// Right after the L4 parse: the connection state, where the program
    /// needs it.
    fn l4_parsed(&mut self) {
        if self.ct_classify {
            self.ct_here();
        }
    }

    /// Long programs: the facts are in a map, and rules whose body is only
    /// a verdict share a tail that counts and returns ([`Tails`]): such a
    /// rule then costs its predicate, its rule number and a jump.
    /// Stops early, returning the probe where the program crosses the size
    /// limit, when its [`SizeFloor`] does.
    fn rules_on_facts_map(&mut self, probes: &[ir::Probe], l4: Option<(usize, L4At<'ctx>)>, map: MapDef<'ctx>) -> Option<usize> {
        if let Some((_, at)) = l4 {
            parse::parse_l4_here(self.b, &self.h, &at);
            self.l4_parsed();
        }
        self.b.spill_facts(map, &self.h.slots(), self.h.pkt_len, verdict_code(self.hook, Verdict::Pass));
        let mut tails = Tails::default();
        let offset = self.probe_offset(probes);
        let mut i = 0;
        while i < probes.len() {
            let start = self.b.cur();
            let next = self.rule_or_run(probes, offset, i, Some((&mut tails, i % FACTS_RELOAD_RULES == 0)));
            if next == i + 1 && self.floor.add(&probes[i], volatile_loads(start)) {
                return Some(i);
            }
            i = next;
        }
        // No rule decided: pass.
        let pass = verdict_code(self.hook, Verdict::Pass);
        self.ret_pass(pass, false);
        for tail in tails.done.into_iter().chain(tails.open) {
            self.b.at(tail.block);
            let rule = self.b.phi(&tail.from);
            self.b.reload_facts_pointer();
            self.b.bump_counter(self.maps.rules, rule, self.b.pkt_len(self.h.pkt_len));
            // A pass writes the connection's entry first.
            if tail.code == pass {
                self.ret_pass(pass, true);
            } else {
                self.b.ret_apart(tail.code);
            }
        }
        None
    }

    /// Probe `i`, or the run of rules starting there lowered as a tree
    /// walk (`classify.rs`); returns the index of the probe after it.
    /// `offset`: the index in the program of `probes[0]` ([`Lower::probe_offset`]).
    fn rule_or_run(&mut self, probes: &[ir::Probe], offset: usize, i: usize, long: Option<(&mut Tails<'ctx>, bool)>) -> usize {
        let maps = self.maps;
        if let Some(run) = maps.classified.by_start.get(&(self.hook, offset + i)) {
            if long.as_ref().is_some_and(|(_, reload)| *reload) {
                self.b.reload_facts_pointer();
            }
            self.classify(run, &probes[i]);
            return i + run.probes.len();
        }
        self.rule(&probes[i], long);
        i + 1
    }

    /// The index in its program of `probes[0]`: runs are found over the
    /// program's probes, and a specialized copy after the L4 parse lowers
    /// a tail of them.
    fn probe_offset(&self, probes: &[ir::Probe]) -> usize {
        let Some(first) = probes.first() else { return 0 };
        let Some(all) = self.policy.programs.iter().find(|p| p.hook == self.hook) else { return 0 };
        all.probes.iter().position(|p| std::ptr::eq(p, first)).unwrap_or(0)
    }

    /// One probe: its predicate, then its body (counted), or on to the
    /// next probe. With `tails` (a long program), a body that is only a
    /// verdict jumps to the tail of its verdict with its rule number, and
    /// with `reload` the rule first reloads the facts' address
    /// ([`FACTS_RELOAD_RULES`]).
    ///
    /// In a long program (with `tails`) the rule's code up to its body has
    /// one location, its predicate's: each change of location is a
    /// line-info record, and LLVM 14's BTF writer looks each record's
    /// source line up in its string table by a linear scan, quadratic in
    /// the rules: with a location per comparison (four or five records a
    /// rule), that scan took 40% of compiling 10,000 rules. A rejection is
    /// then explained at the predicate rather than at one comparison in it.
    fn rule(&mut self, probe: &ir::Probe, long: Option<(&mut Tails<'ctx>, bool)>) {
        let (tails, reload) = match long {
            Some((tails, reload)) => (Some(tails), reload),
            None => (None, false),
        };
        let i32t = self.b.m.cx.i32_type();
        let at = match (&tails, &probe.predicate) {
            (Some(_), Some(p)) => p.span,
            _ => probe.span,
        };
        self.loc(at);
        if reload {
            self.b.reload_facts_pointer();
        }
        let next = self.b.block("next_rule");
        let fire = self.b.block("rule");
        self.predicate_located = tails.is_some();
        match &probe.predicate {
            Some(p) => self.branch3(p, fire, next, next),
            None => self.b.br(fire),
        }
        self.predicate_located = false;
        self.b.at(fire);
        self.loc(at);
        if let (Some(tails), [ir::Stmt { kind: StmtKind::Verdict(v), .. }]) = (tails, probe.body.as_slice()) {
            let tail = tails.to(self.b, verdict_code(self.hook, *v));
            tail.from.push((i32t.const_int(probe.rule as u64, false), self.b.cur()));
            self.b.br(tail.block);
        } else {
            self.b.bump_counter(self.maps.rules, i32t.const_int(probe.rule as u64, false), self.b.pkt_len(self.h.pkt_len));
            self.stmts(&probe.body);
            if !self.b.terminated() {
                self.b.br(next);
            }
        }
        self.b.at(next);
    }

    fn stmts(&mut self, stmts: &[ir::Stmt]) {
        for s in stmts {
            if self.b.terminated() {
                break;
            }
            self.loc(s.span);
            self.stmt(s);
        }
    }

    fn stmt(&mut self, s: &ir::Stmt) {
        match &s.kind {
            StmtKind::Verdict(Verdict::Pass) => self.ret_pass(verdict_code(self.hook, Verdict::Pass), true),
            StmtKind::Verdict(v) => self.b.ret_apart(verdict_code(self.hook, *v)),
            StmtKind::Redirect(i) => self.redirect(*i),
            StmtKind::If { cond, then_body, else_body } => {
                let then_bb = self.b.block("then");
                let else_bb = self.b.block("else");
                let merge = self.b.block("endif");
                self.branch3(cond, then_bb, else_bb, else_bb);
                for (bb, body) in [(then_bb, then_body), (else_bb, else_body)] {
                    self.b.at(bb);
                    self.stmts(body);
                    if !self.b.terminated() {
                        self.b.br(merge);
                    }
                }
                self.b.at(merge);
            }
            StmtKind::Let { local, value } => {
                let v = self.value(value);
                self.locals.insert(*local, v);
            }
            StmtKind::MapUpdate { map, keys, op } => self.map_update(*map, keys, op),
            StmtKind::Lb(lb) => self.balance(lb),
            StmtKind::Log(id) => self.log(*id),
            StmtKind::SetWrite { set, key, op } => self.dynset_write(*set, key, *op),
            StmtKind::Synproxy(id) => self.synproxy(*id),
        }
    }

    fn redirect(&mut self, slot: usize) {
        let Some(map) = self.maps.redirect else { return };
        let abort = verdict_code(self.hook, Verdict::Abort);
        let key = self.b.stack_buf(4, "key");
        self.b.store_at(key, 0, self.b.m.cx.i32_type().const_int(slot as u64, false));
        let p = self.b.map_lookup(map, key);
        let found = self.b.block("redir_found");
        let fail = self.b.block("redir_unset");
        self.b.br_if_null(p, fail, found);
        self.b.at(fail);
        self.b.ret(abort);
        self.b.at(found);
        let ifindex = self.b.zext64(self.b.load_raw(p, 0, 4));
        let go = self.b.block("redir");
        let unset = self.b.block("redir_zero");
        self.b.cond_br(self.b.eq(ifindex, self.b.c64(0)), unset, go);
        self.b.at(unset);
        self.b.ret(abort);
        self.b.at(go);
        let r = self.b.helper_call(super::builder::helper::REDIRECT, self.b.i64(), &[ifindex.into(), self.b.c64(0).into()]);
        self.b.ret_value(r);
    }

    // ------------------------------------------------------------ conditions

    /// Branches to `t`, `f` or `u` as `e` is true, false or unknown. `&&` and
    /// `||` short-circuit; each operand is emitted once when `u` is `t` or
    /// `f` (always, from the callers).
    fn branch3(&mut self, e: &ir::Expr, t: BasicBlock<'ctx>, f: BasicBlock<'ctx>, u: BasicBlock<'ctx>) {
        match &e.kind {
            ExprKind::Const(Value::Bool(c)) => self.b.br(if *c { t } else { f }),
            ExprKind::Not(a) => self.branch3(a, f, t, u),
            ExprKind::Limit { limit, keys } => {
                self.loc(e.span);
                self.limit(*limit, keys, t, f, u);
            }
            ExprKind::And(lhs, rhs) | ExprKind::Or(lhs, rhs) => {
                let is_and = matches!(e.kind, ExprKind::And(..));
                // Kleene logic: after an unknown left operand the right one
                // decides between unknown and one of the known outcomes,
                // `And`: (u, f, u) instead of (t, f, u); `Or`: (t, u, u)
                // instead of (t, f, u). Predicates and `if` conditions are
                // branched on with u == f ("not taken"), and `!` only swaps
                // t and f, so u always equals t or f: then the unknown case
                // continues like a known one, or goes to one block whatever
                // the right operand, and the right operand is emitted once,
                // with no flag. The other arm keeps the lowering correct for
                // any targets.
                let unknown_targets = if is_and { (u, f, u) } else { (t, u, u) };
                if unknown_targets == (t, f, u) || (unknown_targets.0 == unknown_targets.1 && unknown_targets.1 == unknown_targets.2) {
                    // After an unknown left operand: the same as after a
                    // known one, or one block whatever the right operand.
                    let eval_rhs = self.b.block(if is_and { "and_rhs" } else { "or_rhs" });
                    let after_unknown = if unknown_targets == (t, f, u) { eval_rhs } else { unknown_targets.0 };
                    if is_and {
                        self.branch3(lhs, eval_rhs, f, after_unknown);
                    } else {
                        self.branch3(lhs, t, eval_rhs, after_unknown);
                    }
                    self.b.at(eval_rhs);
                    self.branch3(rhs, t, f, u);
                } else {
                    // Three distinct targets (no caller makes them: see
                    // above): emit the right operand once per case rather
                    // than carry a flag across it, which the verifier would
                    // track as two states for every path (nested, 2^depth).
                    let known = self.b.block("lhs_known");
                    let unknown = self.b.block("lhs_unknown");
                    if is_and {
                        self.branch3(lhs, known, f, unknown);
                    } else {
                        self.branch3(lhs, t, known, unknown);
                    }
                    self.b.at(known);
                    self.branch3(rhs, t, f, u);
                    self.b.at(unknown);
                    let (t2, f2, u2) = unknown_targets;
                    self.branch3(rhs, t2, f2, u2);
                }
            }
            _ => {
                if !self.predicate_located {
                    self.loc(e.span);
                }
                let Val::Bool { t: vt, f: vf } = self.value(e) else { unreachable!("checked: conditions are boolean") };
                let not_true = self.b.block("not_true");
                // Most packets pass most conditions by: the way on is the
                // fall-through.
                self.b.cond_br_unlikely(vt, t, not_true);
                self.b.at(not_true);
                self.b.cond_br(vf, f, u);
            }
        }
    }

    // ------------------------------------------------------------ values

    fn yes(&self) -> IntValue<'ctx> {
        self.b.bool(true)
    }

    fn value(&mut self, e: &ir::Expr) -> Val<'ctx> {
        match &e.kind {
            ExprKind::Const(v) => self.constant(*v),
            ExprKind::Field(f) => self.field(*f),
            ExprKind::Local(l) => self.locals[l],
            ExprKind::MapRead { map, keys } => self.map_read(*map, keys),
            ExprKind::Neg(a) | ExprKind::BitNot(a) => {
                let (v, present) = self.int(a);
                let r = if matches!(e.kind, ExprKind::Neg(_)) { self.b.sub(self.b.c64(0), v) } else { self.b.not(v) };
                Val::Int { v: r, present }
            }
            ExprKind::Arith(op, a, c) => {
                let (x, pa) = self.int(a);
                let (y, pc) = self.int(c);
                Val::Int { v: self.arith(*op, x, y), present: self.b.and(pa, pc) }
            }
            ExprKind::Cmp(op, a, c) => self.compare(*op, a, c),
            ExprKind::In(a, set) => self.member(a, set),
            ExprKind::Not(a) => match self.value(a) {
                Val::Bool { t, f } => Val::Bool { t: f, f: t },
                _ => unreachable!("checked: `!` takes a boolean"),
            },
            ExprKind::Limit { limit, keys } => {
                let (t, f) = self.limit_value(*limit, keys);
                Val::Bool { t, f }
            }
            ExprKind::And(a, c) | ExprKind::Or(a, c) => {
                let (Val::Bool { t: at, f: af }, Val::Bool { t: ct, f: cf }) = (self.value(a), self.value(c)) else {
                    unreachable!("checked: logic takes booleans")
                };
                if matches!(e.kind, ExprKind::And(..)) {
                    Val::Bool { t: self.b.and(at, ct), f: self.b.or(af, cf) }
                } else {
                    Val::Bool { t: self.b.or(at, ct), f: self.b.and(af, cf) }
                }
            }
        }
    }

    fn int(&mut self, e: &ir::Expr) -> (IntValue<'ctx>, IntValue<'ctx>) {
        match self.value(e) {
            Val::Int { v, present } => (v, present),
            _ => unreachable!("checked: an integer"),
        }
    }

    fn known(&self, v: Val<'ctx>) -> IntValue<'ctx> {
        match v {
            Val::Int { present, .. } | Val::Ip { present, .. } => present,
            Val::Bool { t, f } => self.b.or(t, f),
        }
    }

    fn bool_of(&self, present: IntValue<'ctx>, c: IntValue<'ctx>) -> Val<'ctx> {
        Val::Bool { t: self.b.and(present, c), f: self.b.and(present, self.b.not(c)) }
    }

    fn constant(&self, v: Value) -> Val<'ctx> {
        let b = &self.b;
        match v {
            Value::Int(i) | Value::Mac(i) => Val::Int { v: b.c64(i), present: self.yes() },
            Value::Bool(x) => Val::Bool { t: b.bool(x), f: b.bool(!x) },
            Value::Ip(IpAddr::V4(a)) => {
                Val::Ip { present: self.yes(), v6: b.bool(false), v4: b.c64(u32::from(a) as u64), hi: b.c64(0), lo: b.c64(0) }
            }
            Value::Ip(IpAddr::V6(a)) => {
                let x = u128::from(a);
                Val::Ip { present: self.yes(), v6: b.bool(true), v4: b.c64(0), hi: b.c64((x >> 64) as u64), lo: b.c64(x as u64) }
            }
        }
    }

    pub(super) fn field(&mut self, f: Field) -> Val<'ctx> {
        let h = &self.h;
        let b = &self.b;
        let get = |p: PointerValue<'ctx>| b.get_fact(p);
        let ip = || b.or(get(h.ip4_ok), get(h.ip6_ok));
        let ports = || b.or(get(h.tcp_ok), get(h.udp_ok));
        let int = |v: IntValue<'ctx>, present: IntValue<'ctx>| Val::Int { v, present };
        let flag = |bit: u64| {
            let set = b.cmp(IntPredicate::NE, b.and(get(h.tcp_flags), b.c64(bit)), b.c64(0));
            let present = get(h.tcp_ok);
            Val::Bool { t: b.and(present, set), f: b.and(present, b.not(set)) }
        };
        let no = b.bool(false);
        let zero = b.c64(0);
        match f {
            Field::PktLen => int(b.pkt_len(h.pkt_len), self.yes()),
            Field::EthSrc => int(get(h.eth_src), get(h.eth_ok)),
            Field::EthDst => int(get(h.eth_dst), get(h.eth_ok)),
            Field::EthType => int(get(h.eth_type), get(h.eth_ok)),
            Field::VlanDepth => int(get(h.vlan_depth), get(h.eth_ok)),
            Field::VlanId => int(b.and(get(h.vlan1_tci), b.c64(0xfff)), get(h.vlan1_ok)),
            Field::VlanPcp => int(b.lshr(get(h.vlan1_tci), b.c64(13)), get(h.vlan1_ok)),
            Field::VlanInnerId => int(b.and(get(h.vlan2_tci), b.c64(0xfff)), get(h.vlan2_ok)),
            Field::VlanInnerPcp => int(b.lshr(get(h.vlan2_tci), b.c64(13)), get(h.vlan2_ok)),
            Field::IpVersion => int(b.select(get(h.ip6_ok), b.c64(6), b.c64(4)), ip()),
            Field::IpSrc | Field::IpDst | Field::Ip4Src | Field::Ip4Dst | Field::Ip6Src | Field::Ip6Dst => {
                let src = matches!(f, Field::IpSrc | Field::Ip4Src | Field::Ip6Src);
                let (v4, hi, lo) = if src { (h.src4, h.src6_hi, h.src6_lo) } else { (h.dst4, h.dst6_hi, h.dst6_lo) };
                let raw4 = get(v4);
                let v4 = b.zext64(b.bswap(b.trunc(raw4, b.m.cx.i32_type())));
                self.raw_v4.borrow_mut().insert(v4, raw4);
                let (hi, lo) = (get(hi), get(lo));
                match f {
                    Field::Ip4Src | Field::Ip4Dst => Val::Ip { present: get(h.ip4_ok), v6: no, v4, hi: zero, lo: zero },
                    Field::Ip6Src | Field::Ip6Dst => Val::Ip { present: get(h.ip6_ok), v6: b.bool(true), v4: zero, hi, lo },
                    _ => Val::Ip { present: ip(), v6: get(h.ip6_ok), v4, hi, lo },
                }
            }
            Field::IpProto => int(get(h.proto), get(h.proto_ok)),
            Field::IpTtl => int(get(h.ttl), ip()),
            Field::IpLen => int(get(h.ip_len), ip()),
            Field::IpDscp => int(b.lshr(get(h.tos), b.c64(2)), ip()),
            Field::IpEcn => int(b.and(get(h.tos), b.c64(3)), ip()),
            Field::IpFrag => self.bool_of(get(h.proto_ok), get(h.frag)),
            Field::IpFragFirst => {
                let first = b.and(get(h.frag), b.eq(get(h.frag_off), zero));
                self.bool_of(get(h.proto_ok), first)
            }
            Field::IpFragOff => int(get(h.frag_off), get(h.proto_ok)),
            Field::Ip4Ihl => int(get(h.ihl), get(h.ip4_ok)),
            Field::Ip4Id => int(get(h.ip4_id), get(h.ip4_ok)),
            Field::Ip4Df => self.bool_of(get(h.ip4_ok), get(h.df)),
            Field::Ip6NextHdr => int(get(h.ip6_nh), get(h.ip6_ok)),
            Field::Ip6HopLimit => int(get(h.ttl), get(h.ip6_ok)),
            Field::Ip6FlowLabel => int(get(h.flow), get(h.ip6_ok)),
            Field::TcpSport => int(get(h.tcp_sport), get(h.tcp_ok)),
            Field::TcpDport => int(get(h.tcp_dport), get(h.tcp_ok)),
            Field::TcpFlags => int(get(h.tcp_flags), get(h.tcp_ok)),
            Field::TcpFin => flag(0x01),
            Field::TcpSyn => flag(0x02),
            Field::TcpRst => flag(0x04),
            Field::TcpPsh => flag(0x08),
            Field::TcpAck => flag(0x10),
            Field::TcpUrg => flag(0x20),
            Field::TcpEce => flag(0x40),
            Field::TcpCwr => flag(0x80),
            Field::TcpWindow => int(get(h.tcp_window), get(h.tcp_ok)),
            Field::UdpSport => int(get(h.udp_sport), get(h.udp_ok)),
            Field::UdpDport => int(get(h.udp_dport), get(h.udp_ok)),
            Field::UdpLen => int(get(h.udp_len), get(h.udp_ok)),
            // At most one protocol's slots are set; the others stay 0.
            Field::L4Sport => int(b.or(get(h.tcp_sport), get(h.udp_sport)), ports()),
            Field::L4Dport => int(b.or(get(h.tcp_dport), get(h.udp_dport)), ports()),
            Field::IcmpType => int(get(h.icmp_type), get(h.icmp4_ok)),
            Field::IcmpCode => int(get(h.icmp_code), get(h.icmp4_ok)),
            Field::Icmp6Type => int(get(h.icmp_type), get(h.icmp6_ok)),
            Field::Icmp6Code => int(get(h.icmp_code), get(h.icmp6_ok)),
            Field::CtState => int(get(h.ct_state), get(h.ct_ok)),
        }
    }

    /// u64 arithmetic with the documented results where LLVM would have
    /// undefined behaviour: x / 0 = 0, x % 0 = x, shifts by >= 64 give 0.
    fn arith(&self, op: ArithOp, x: IntValue<'ctx>, y: IntValue<'ctx>) -> IntValue<'ctx> {
        let b = &self.b;
        let zero = b.c64(0);
        match op {
            ArithOp::Add => b.add(x, y),
            ArithOp::Sub => b.sub(x, y),
            ArithOp::Mul => b.mul(x, y),
            ArithOp::And => b.and(x, y),
            ArithOp::Or => b.or(x, y),
            ArithOp::Xor => b.xor(x, y),
            ArithOp::Div | ArithOp::Mod => {
                let is0 = b.eq(y, zero);
                let safe = b.select(is0, b.c64(1), y);
                if op == ArithOp::Div {
                    b.select(is0, zero, b.udiv(x, safe))
                } else {
                    b.select(is0, x, b.urem(x, safe))
                }
            }
            ArithOp::Shl | ArithOp::Shr => {
                let big = b.cmp(IntPredicate::UGE, y, b.c64(64));
                let safe = b.and(y, b.c64(63));
                let r = if op == ArithOp::Shl { b.shl(x, safe) } else { b.lshr(x, safe) };
                b.select(big, zero, r)
            }
        }
    }

    fn compare(&mut self, op: CmpOp, a: &ir::Expr, c: &ir::Expr) -> Val<'ctx> {
        let (va, vc) = (self.value(a), self.value(c));
        let present = self.b.and(self.known(va), self.known(vc));
        let b = &self.b;
        let eq = match (va, vc) {
            (Val::Int { v: x, .. }, Val::Int { v: y, .. }) => {
                let pred = match op {
                    CmpOp::Eq => IntPredicate::EQ,
                    CmpOp::Ne => IntPredicate::NE,
                    CmpOp::Lt => IntPredicate::ULT,
                    CmpOp::Le => IntPredicate::ULE,
                    CmpOp::Gt => IntPredicate::UGT,
                    CmpOp::Ge => IntPredicate::UGE,
                };
                return self.bool_of(present, b.cmp(pred, x, y));
            }
            (Val::Bool { t: x, .. }, Val::Bool { t: y, .. }) => b.eq(x, y),
            (Val::Ip { v6: f1, v4: a1, hi: h1, lo: l1, .. }, Val::Ip { v6: f2, v4: a2, hi: h2, lo: l2, .. }) => {
                let same6 = b.and(b.eq(h1, h2), b.eq(l1, l2));
                let same = b.select(f1, same6, eq32(b, a1, a2));
                b.and(b.eq(f1, f2), same)
            }
            _ => unreachable!("checked: comparison of equal types"),
        };
        let c = if op == CmpOp::Ne { b.not(eq) } else { eq };
        self.bool_of(present, c)
    }

    // ------------------------------------------------------------ sets

    fn member(&mut self, a: &ir::Expr, set: &SetRef) -> Val<'ctx> {
        let va = self.value(a);
        let present = self.known(va);
        let c = match set {
            SetRef::Inline(s) => self.inline_member(va, s),
            SetRef::Named(_) | SetRef::Dynamic(_) => {
                // Look up only when the value is present: a lookup is a helper call.
                let lookup = self.b.block("set_lookup");
                let after = self.b.block("set_done");
                let from = self.b.cur();
                self.b.cond_br(present, lookup, after);
                self.b.at(lookup);
                let r = match set {
                    SetRef::Dynamic(id) => self.dynset_member(*id, a),
                    SetRef::Named(id) => self.named_member(va, *id),
                    SetRef::Inline(_) => unreachable!("matched above"),
                };
                let looked = self.b.cur();
                self.b.br(after);
                self.b.at(after);
                self.b.phi(&[(self.b.bool(false), from), (r, looked)])
            }
        };
        self.bool_of(present, c)
    }

    fn inline_member(&self, v: Val<'ctx>, s: &ConstSet) -> IntValue<'ctx> {
        let b = &self.b;
        let mut any = b.bool(false);
        match v {
            Val::Int { v, .. } if !s.macs.is_empty() => {
                for &m in &s.macs {
                    any = b.or(any, b.eq(v, b.c64(m)));
                }
            }
            Val::Int { v, .. } => {
                for &(lo, hi) in &s.ints {
                    let c = if lo == hi {
                        b.eq(v, b.c64(lo))
                    } else {
                        // lo <= v <= hi as one unsigned compare.
                        b.cmp(IntPredicate::ULE, b.sub(v, b.c64(lo)), b.c64(hi - lo))
                    };
                    any = b.or(any, c);
                }
            }
            Val::Ip { v6, v4, hi, lo, .. } => {
                let mut any4 = b.bool(false);
                // BPF is little-endian: an address as loaded is its host
                // order byte-swapped, and so are the mask and prefix.
                let raw = self.raw_v4.borrow().get(&v4).copied();
                for &(net, len) in &s.v4 {
                    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len as u32) };
                    let net = u32::from(net) & mask;
                    let hit = match raw {
                        Some(raw) => eq32(b, b.and(raw, b.c64(u64::from(mask.swap_bytes()))), b.c64(u64::from(net.swap_bytes()))),
                        None => eq32(b, b.and(v4, b.c64(u64::from(mask))), b.c64(u64::from(net))),
                    };
                    any4 = b.or(any4, hit);
                }
                let mut any6 = b.bool(false);
                for &(net, len) in &s.v6 {
                    let net = u128::from(net);
                    let (nh, nl) = ((net >> 64) as u64, net as u64);
                    let c = if len <= 64 {
                        let m = if len == 0 { 0 } else { u64::MAX << (64 - len as u32) };
                        b.eq(b.and(hi, b.c64(m)), b.c64(nh & m))
                    } else {
                        let m = u64::MAX << (128 - len as u32);
                        b.and(b.eq(hi, b.c64(nh)), b.eq(b.and(lo, b.c64(m)), b.c64(nl & m)))
                    };
                    any6 = b.or(any6, c);
                }
                any = b.select(v6, any6, any4);
            }
            Val::Bool { .. } => unreachable!("checked: booleans are not set members"),
        }
        any
    }

    /// Emitted only where the value is present.
    fn named_member(&mut self, v: Val<'ctx>, id: ir::SetId) -> IntValue<'ctx> {
        let maps = &self.maps.sets[id];
        let b = &self.b;
        match v {
            Val::Int { v, .. } => match maps.hash {
                Some((map, id)) => {
                    // `meta::sets_hash_key`: the value, then the set's id.
                    let key = b.stack_buf(xpol_lang::meta::SETS_HASH_KEY_SIZE, "key");
                    b.store_at(key, 0, v);
                    b.store_at(key, 8, b.c32(id));
                    let p = b.map_lookup(map, key);
                    b.not(b.is_null(p))
                }
                None => b.bool(false),
            },
            Val::Ip { v6, v4, hi, lo, .. } => {
                let is4 = b.block("set_v4");
                let is6 = b.block("set_v6");
                let done = b.block("set_done");
                b.cond_br(v6, is6, is4);
                b.at(is4);
                let hit4 = match maps.v4 {
                    Some(t) => self.ipv4_table_member(t, v4),
                    None => b.bool(false),
                };
                let mut hits = vec![(hit4, b.cur())];
                b.br(done);
                b.at(is6);
                let hit6 = match maps.v6 {
                    Some(part) => super::ipv6_set::part_member(b, part, hi, lo),
                    None => b.bool(false),
                };
                hits.push((hit6, b.cur()));
                b.br(done);
                b.at(done);
                b.phi(&hits)
            }
            Val::Bool { .. } => unreachable!("checked: booleans are not set members"),
        }
    }

    /// Whether the IPv4 address `a` (host order, in an i64) is in a prefix
    /// table: up to three reads (a load from global data or a map lookup),
    /// each entry saying miss, hit, or which chunk of the next level to read.
    fn ipv4_table_member(&self, t: Ipv4Maps<'ctx>, a: IntValue<'ctx>) -> IntValue<'ctx> {
        use xpol_lang::ipv4_table::{Ipv4Table, FIRST_CHILD, HIT, LEAF_BYTES};
        let b = &self.b;
        let done = b.block("table_done");
        let mut results = Vec::new();
        // Entry `e` decides when it is not a child pointer; else continue in `next`.
        let decide_or = |e: IntValue<'ctx>, results: &mut Vec<(IntValue<'ctx>, _)>, next: &str| {
            let decided = b.block("table_decided");
            let go_on = b.block(next);
            b.cond_br(b.cmp(IntPredicate::ULT, e, b.c64(FIRST_CHILD as u64)), decided, go_on);
            b.at(decided);
            results.push((b.eq(e, b.c64(HIT as u64)), b.cur()));
            b.br(done);
            b.at(go_on);
        };
        // Chunk `index` (of `bytes` bytes) of a table. In global data: an
        // address, after checking `index` against `bound` (the table's
        // chunks) unless it is `None`, an index in range by construction
        // (out of range, never in a table the runtime wrote, is a miss). In
        // an array map: a lookup, whose miss is also a miss.
        let chunk = |t: Table<'ctx>, index: IntValue<'ctx>, bound: Option<u64>, bytes: u64, results: &mut Vec<(IntValue<'ctx>, _)>| {
            let miss = b.block("table_miss");
            let found = b.block("table_chunk");
            let p = match t {
                Table::Global(g) => {
                    match bound {
                        Some(chunks) => b.cond_br_likely(b.cmp(IntPredicate::ULT, index, b.c64(chunks)), found, miss),
                        None => b.br(found),
                    }
                    b.at(found);
                    b.ptr_add(g.base, b.mul(index, b.c64(bytes)))
                }
                Table::Map(map) => {
                    let key = b.stack_buf(4, "key");
                    b.store_at(key, 0, b.trunc(index, b.m.cx.i32_type()));
                    let p = b.map_lookup(map, key);
                    b.br_if_null(p, miss, found);
                    b.at(found);
                    p
                }
            };
            let after = b.cur();
            b.at(miss);
            results.push((b.bool(false), b.cur()));
            b.br(done);
            b.at(after);
            p
        };
        // The last level read: its entry (or bit) is the answer.
        let finish = |hit: IntValue<'ctx>, mut results: Vec<(IntValue<'ctx>, _)>| {
            results.push((hit, b.cur()));
            b.br(done);
            b.at(done);
            b.phi(&results)
        };
        // Below 65,536: inside the set's root. (`a` is a u32, but read from
        // the facts map the verifier sees 64 bits: the mask says so; LLVM
        // drops it where it knows.)
        let root_index = b.add(b.c64(t.root_base), b.and(b.lshr(a, b.c64(16)), b.c64(0xffff)));
        let root = chunk(t.root, root_index, None, 4, &mut results);
        let e = b.zext64(b.load_raw(root, 0, 4));
        if t.levels == 1 {
            return finish(b.eq(e, b.c64(HIT as u64)), results);
        }
        decide_or(e, &mut results, "table_mid");
        let width = if t.mid_wide { 4 } else { 2 };
        let mid = chunk(t.mid, b.sub(e, b.c64(FIRST_CHILD as u64)), Some(t.mid_chunks), u64::from(Ipv4Table::mid_chunk_bytes(t.mid_wide)), &mut results);
        let at = b.mul(b.and(b.lshr(a, b.c64(8)), b.c64(0xff)), b.c64(width));
        let e = b.zext64(b.load_raw(b.ptr_add(mid, at), 0, width as u32));
        if t.levels == 2 {
            return finish(b.eq(e, b.c64(HIT as u64)), results);
        }
        decide_or(e, &mut results, "table_leaf");
        let leaf = chunk(t.leaf, b.sub(e, b.c64(FIRST_CHILD as u64)), Some(t.leaf_chunks), u64::from(LEAF_BYTES), &mut results);
        let low = b.and(a, b.c64(0xff));
        let byte = b.zext64(b.load_raw(b.ptr_add(leaf, b.lshr(low, b.c64(3))), 0, 1));
        let bit = b.and(b.lshr(byte, b.and(low, b.c64(7))), b.c64(1));
        finish(b.eq(bit, b.c64(1)), results)
    }

    // ------------------------------------------------------------ @maps

    /// Writes the key of `@map[keys]` into a zeroed stack buffer; returns it
    /// and whether every key component is present.
    fn map_key(&mut self, map: ir::MapId, keys: &[ir::Expr]) -> (PointerValue<'ctx>, IntValue<'ctx>) {
        self.key_buf(keys, self.maps.users[map].key_size)
    }

    /// Writes `keys` encoded as a map key (`xpol_lang::meta::KeyKind`) into
    /// a zeroed stack buffer of `key_size` bytes; returns it and whether
    /// every component is present.
    pub(super) fn key_buf(&mut self, keys: &[ir::Expr], key_size: u32) -> (PointerValue<'ctx>, IntValue<'ctx>) {
        let vals: Vec<Val<'ctx>> = keys.iter().map(|k| self.value(k)).collect();
        let b = &self.b;
        let key = b.stack_buf(key_size, "key");
        let mut present = b.bool(true);
        let mut off = 0u64;
        for v in vals {
            present = b.and(present, self.known(v));
            match v {
                Val::Int { v, .. } => {
                    b.store_at(key, off, v);
                    off += 8;
                }
                Val::Bool { t, .. } => {
                    b.store_at(key, off, b.b.build_int_z_extend(t, b.m.cx.i32_type(), "b").expect("builder positioned"));
                    off += 4;
                }
                Val::Ip { v6, v4, hi, lo, .. } => {
                    let i32t = b.m.cx.i32_type();
                    let family = b.select(v6, i32t.const_int(6, false), i32t.const_int(4, false));
                    b.store_at(key, off, family);
                    let a4 = b.zext64(b.bswap(b.trunc(v4, i32t)));
                    b.store_at(key, off + 4, b.select(v6, b.bswap(hi), a4));
                    b.store_at(key, off + 12, b.select(v6, b.bswap(lo), b.c64(0)));
                    off += 20;
                }
            }
        }
        (key, present)
    }

    fn map_read(&mut self, map: ir::MapId, keys: &[ir::Expr]) -> Val<'ctx> {
        let (key, present) = self.map_key(map, keys);
        let b = &self.b;
        let lookup = b.block("map_read");
        let found = b.block("map_found");
        let done = b.block("map_read_done");
        let from = b.cur();
        b.cond_br(present, lookup, done);
        b.at(lookup);
        let p = b.map_lookup(self.maps.users[map].def, key);
        let missing = b.cur();
        b.br_if_null(p, done, found);
        b.at(found);
        let v = b.load_u64_at(p, 0);
        b.br(done);
        b.at(done);
        // Absent key component, or a key not in the map: 0.
        let mut incoming = vec![(b.c64(0), from), (v, found)];
        if !b.omit_null_check {
            incoming.push((b.c64(0), missing));
        }
        let v = b.phi(&incoming);
        Val::Int { v, present }
    }

    fn map_update(&mut self, map: ir::MapId, keys: &[ir::Expr], op: &MapOp) {
        // The value first: reading a map in it uses the shared key buffer.
        let amount = match op {
            MapOp::Count => None,
            MapOp::Sum(e) | MapOp::Assign(e) => Some(self.int(e)),
        };
        let (key, mut present) = self.map_key(map, keys);
        let amount = amount.map(|(v, p)| {
            present = self.b.and(present, p);
            v
        });
        let def = &self.maps.users[map];
        let b = &self.b;
        let update = b.block("map_update");
        let done = b.block("map_updated");
        b.cond_br(present, update, done);
        b.at(update);
        let value = b.stack_buf(8, "value");
        match op {
            MapOp::Assign(_) => {
                b.store_at(value, 0, amount.expect("assign has a value"));
                // Fails when the key is new and the map full: counted.
                let r = b.map_update(def.def, key, value, BPF_ANY);
                b.count_if_map_full(r, self.maps.rules, def.lost_slot);
            }
            MapOp::Count | MapOp::Sum(_) => {
                let add = amount.unwrap_or_else(|| b.c64(1));
                let p = b.map_lookup(def.def, key);
                let found = b.block("map_found");
                let insert = b.block("map_insert");
                b.br_if_null(p, insert, found);
                b.at(found);
                b.add_u64_at(p, 0, add, !def.per_cpu);
                b.br(done);
                b.at(insert);
                b.store_at(value, 0, add);
                // Another CPU may insert the same key first; then this
                // update fails and that increment is lost, as in bpftrace.
                // A full map refuses the new key: counted as lost.
                let r = b.map_update(def.def, key, value, BPF_NOEXIST);
                b.count_if_map_full(r, self.maps.rules, def.lost_slot);
            }
        }
        b.br(done);
        b.at(done);
    }
}

/// Whether a user map can be per-CPU: only when the program never reads it.
pub fn map_is_per_cpu(m: &ir::UserMap) -> bool {
    !m.read && matches!(m.value, MapValueKind::Count | MapValueKind::Sum)
}

/// Key size in bytes of a user map (a keyless map has a u32 key 0).
pub fn map_key_size(m: &ir::UserMap) -> u32 {
    let n: u32 = m
        .keys
        .iter()
        .map(|t| match t {
            Type::Int | Type::Mac => 8,
            Type::Ip => 20,
            Type::Bool => 4,
        })
        .sum();
    n.max(4)
}

/// Equality of two IPv4 addresses (held zero-extended in i64) as a 32-bit
/// compare: BPF has 32-bit jumps with 32-bit immediates, while a 64-bit
/// compare with a constant of 2^31 or more needs a 16-byte load of the
/// constant into a register first.
fn eq32<'ctx>(b: &Bpf<'_, 'ctx>, x: IntValue<'ctx>, y: IntValue<'ctx>) -> IntValue<'ctx> {
    let i32t = b.m.cx.i32_type();
    b.eq(b.trunc(x, i32t), b.trunc(y, i32t))
}

