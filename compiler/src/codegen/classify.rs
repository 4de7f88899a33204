//! Lowering of long runs of header rules to a walk of their decision tree
//! (`crate::classifier`): the trees in read-only global data, the walk
//! and the counting of the rule that matched.
//!
//! The walk is data-driven: its code depends on the tree's depth, its
//! dimensions and its largest leaf, not on the rules, so 10,000 rules take
//! the verifier no more work than 100.

use super::builder::{ModuleCx, TableDef};
use super::lower::{Lower, Val};
use crate::classifier::{self, node, DimKind, Tree};
use crate::check::fields::Field;
use crate::ir;
use inkwell::values::IntValue;
use inkwell::IntPredicate;
use std::collections::HashMap;
use std::ops::Range;
use xpol_lang::ast::{Hook, Verdict};

/// The ELF section of the trees: loaders make it a frozen one-entry array
/// map whose value the program addresses directly.
pub const SECTION: &str = ".rodata";

/// A run of rules lowered as a tree walk.
pub struct RunDef<'ctx> {
    /// The probes it replaces, by index in the program.
    pub probes: Range<usize>,
    pub tree: Tree,
    /// The tree's first byte, in global data.
    pub base: TableDef<'ctx>,
}

/// The classified runs of each program, by hook and first probe index.
#[derive(Default)]
pub struct Runs<'ctx> {
    pub by_start: HashMap<(Hook, usize), RunDef<'ctx>>,
}

/// The runs of `prog` that become trees when their trees can be built:
/// long enough, and not across the place the L4 header is parsed.
pub fn runs(policy: &ir::Policy, prog: &ir::Program) -> Vec<Range<usize>> {
    classifier::runs(&prog.probes, super::l4_parsed_before(policy, prog))
}

/// Builds the trees of every program's runs into one global (a run whose
/// tree is refused stays rule after rule).
pub fn define<'ctx>(m: &ModuleCx<'ctx>, policy: &ir::Policy, options: &crate::BuildOptions) -> Runs<'ctx> {
    if options.linear_rules {
        return Runs::default();
    }
    let mut built = Vec::new();
    let mut bytes: Vec<u8> = Vec::new();
    for prog in &policy.programs {
        for run in runs(policy, prog) {
            let rules: Vec<_> = prog.probes[run.clone()]
                .iter()
                .map(|p| {
                    let (b, v) = classifier::classifiable(p).expect("runs hold classifiable probes");
                    (b, p.rule, super::lower::verdict_code(prog.hook, v) as u32)
                })
                .collect();
            let parts = classifier::build_parts(&rules);
            for (part, tree) in parts {
                if bytes.len() + tree.bytes.len() > classifier::MAX_TREES_BYTES {
                    continue;
                }
                let at = bytes.len() as u64;
                bytes.extend_from_slice(&tree.bytes);
                while bytes.len() % 8 != 0 {
                    bytes.push(0);
                }
                built.push((prog.hook, run.start + part.start..run.start + part.end, tree, at));
            }
        }
    }
    let mut out = Runs::default();
    if built.is_empty() {
        return out;
    }
    let base = m.read_only_data("xpol_trees", SECTION, &bytes);
    for (hook, run, tree, at) in built {
        out.by_start.insert((hook, run.start), RunDef { probes: run, tree, base: m.table_at(base, at) });
    }
    out
}

impl<'ctx> Lower<'_, '_, 'ctx> {
    /// The walk of `run`'s tree for this packet: the rule that matched is
    /// counted and decides; a packet no rule matches goes on after the run.
    pub(super) fn classify(&mut self, run: &RunDef<'ctx>, first: &ir::Probe) {
        let tree = &run.tree;
        self.b.locate(first.predicate.as_ref().map_or(first.span, |p| p.span));
        // The packet's extended values: in registers for the leaf's
        // checks, and in a stack array the walk indexes by dimension.
        let values: Vec<IntValue<'ctx>> = tree.dims.iter().map(|d| self.extended_value(*d)).collect();
        let b = &self.b;
        let slots = b.stack_buf(8 * classifier::MAX_DIMS as u32, "classify");
        for i in 0..classifier::MAX_DIMS {
            b.store_at(slots, 8 * i as u64, values.get(i).copied().unwrap_or_else(|| b.c64(0)));
        }
        let base = run.base.base;
        let none = b.block("classify_none");
        let leaf = b.block("classify_leaf");
        let mut at_leaf = Vec::new();
        let mut idx = b.c64(0);
        // Internal nodes on the longest path, then the leaf it ends in.
        for level in 0..=tree.depth {
            let idx_ok = b.opaque(idx);
            let load = b.block("classify_node");
            b.cond_br_likely(b.cmp(IntPredicate::ULT, idx_ok, b.c64(tree.nodes)), load, none);
            b.at(load);
            let n = b.load_u64_at(b.ptr_add(base, b.mul(idx_ok, b.c64(8))), 0);
            if level == tree.depth {
                at_leaf.push((n, b.cur()));
                b.br(leaf);
                break;
            }
            let inner = b.block("classify_cut");
            b.cond_br(b.eq(b.and(n, b.c64(node::LEAF)), b.c64(0)), inner, leaf);
            at_leaf.push((n, load));
            b.at(inner);
            let field = |shift: u64, mask: u64| b.and(b.lshr(n, b.c64(shift)), b.c64(mask));
            let dim = field(node::DIM_SHIFT, node::DIM_MASK);
            let v = b.load_u64_at(b.ptr_add(slots, b.mul(dim, b.c64(8))), 0);
            let cut = b.and(b.lshr(v, field(node::SHIFT_SHIFT, node::SHIFT_MASK)), field(node::MASK_SHIFT, node::MASK_MASK));
            idx = b.add(b.lshr(n, b.c64(node::BASE_SHIFT)), cut);
        }
        // The leaf: its rules in order, each checked in every dimension.
        b.at(leaf);
        let n = b.phi(&at_leaf);
        let count = b.and(b.lshr(n, b.c64(node::MASK_SHIFT)), b.c64(node::MASK_MASK));
        let entry0 = b.lshr(n, b.c64(node::BASE_SHIFT));
        let matched = b.block("classify_match");
        let mut hits = Vec::new();
        let record = Tree::record_bytes(tree.dims.len());
        for i in 0..tree.max_leaf as u64 {
            let more = b.block("classify_entry");
            b.cond_br_likely(b.cmp(IntPredicate::ULT, b.c64(i), count), more, none);
            b.at(more);
            let e = b.opaque(b.add(entry0, b.c64(i)));
            let read = b.block("classify_rule");
            b.cond_br_likely(b.cmp(IntPredicate::ULT, e, b.c64(tree.entries)), read, none);
            b.at(read);
            let r = b.opaque(b.zext64(b.load_raw(b.ptr_add(base, b.add(b.c64(tree.entries_at), b.mul(e, b.c64(4)))), 0, 4)));
            let check = b.block("classify_check");
            b.cond_br_likely(b.cmp(IntPredicate::ULT, r, b.c64(tree.records)), check, none);
            b.at(check);
            let rec = b.ptr_add(base, b.add(b.c64(tree.records_at), b.mul(r, b.c64(record))));
            let next = b.block("classify_next");
            for (d, &v) in values.iter().enumerate() {
                let lo = b.load_u64_at(rec, 8 + 16 * d as u64);
                let hi = b.load_u64_at(rec, 16 + 16 * d as u64);
                let inside = b.block("classify_dim");
                let out = b.or(b.cmp(IntPredicate::ULT, v, lo), b.cmp(IntPredicate::UGT, v, hi));
                b.cond_br(out, next, inside);
                b.at(inside);
            }
            hits.push((b.zext64(b.load_raw(rec, 0, 4)), b.zext64(b.load_raw(rec, 4, 4)), b.cur()));
            b.br(matched);
            b.at(next);
        }
        b.br(none);
        // Counted, and decided by its return code.
        b.at(matched);
        let rule = b.phi(&hits.iter().map(|&(r, _, bb)| (r, bb)).collect::<Vec<_>>());
        let code = b.phi(&hits.iter().map(|&(_, c, bb)| (c, bb)).collect::<Vec<_>>());
        // The counter's address needs the rule number bounded (a valid
        // tree holds only the policy's rule numbers).
        let rule = b.opaque(rule);
        let counted = b.block("classify_count");
        b.cond_br_likely(b.cmp(IntPredicate::ULT, rule, b.c64(self.policy.rules.len() as u64)), counted, none);
        b.at(counted);
        b.bump_counter(self.maps.rules, b.trunc(rule, b.m.cx.i32_type()), b.pkt_len(self.h.pkt_len));
        let pass_code = super::lower::verdict_code(self.hook, Verdict::Pass);
        let pass = b.block("classify_pass");
        let other = b.block("classify_verdict");
        b.cond_br(b.eq(code, b.c64(pass_code)), pass, other);
        b.at(other);
        b.ret_value(code);
        b.at(pass);
        self.ret_pass(pass_code, true);
        self.b.at(none);
    }

    /// A field's extended value (`crate::classifier`): 0 when absent.
    fn extended_value(&mut self, d: classifier::Dim) -> IntValue<'ctx> {
        if d.kind == DimKind::Port {
            // A TCP port + 1, a UDP port + 65,537, or 0.
            let (tcp, udp) = if d.field == Field::L4Sport { (Field::TcpSport, Field::UdpSport) } else { (Field::TcpDport, Field::UdpDport) };
            let (Val::Int { v: t, present: t_ok }, Val::Int { v: u, present: u_ok }) = (self.field(tcp), self.field(udp)) else {
                unreachable!("ports are integers")
            };
            let b = &self.b;
            let t = b.mul(b.add(t, b.c64(1)), b.zext64(t_ok));
            let u = b.mul(b.add(u, b.c64(classifier::UDP_PORTS + 1)), b.zext64(u_ok));
            return b.add(t, u);
        }
        let v = self.field(d.field);
        let b = &self.b;
        match v {
            // 1 false, 2 true.
            Val::Bool { t, f } => b.add(b.zext64(f), b.mul(b.zext64(t), b.c64(2))),
            Val::Int { v, present } => b.mul(b.add(v, b.c64(1)), b.zext64(present)),
            Val::Ip { present, v6, v4, .. } => {
                let v = b.select(v6, b.c64(classifier::V6_POINT - 1), v4);
                b.mul(b.add(v, b.c64(1)), b.zext64(present))
            }
        }
    }
}
