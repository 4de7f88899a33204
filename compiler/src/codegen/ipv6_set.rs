//! IPv6 set membership: the walk of the shared IPv6 tables
//! (`xpol_lang::ipv6_table`), and their sizing.
//!
//! A walk reads the set's root node at the address's top 16 bits, then a
//! node per 8 bits while the entry it reads leads to one, each with an
//! array-map lookup that the verifier inlines; at most one tail compare
//! ends it. Unrolled: 15 levels at most, each a few instructions, and a
//! packet leaves at the first entry that decides.

use super::builder::{Bpf, MapDef};
use crate::ir;
use inkwell::values::IntValue;
use inkwell::IntPredicate;
use xpol_lang::ipv6_table::{Ipv6Table, FIRST_CHILD, HIT, LEVELS, ROOT_NODES, TAIL};
use xpol_lang::meta::SetElem;

/// The maps a set's IPv6 membership reads, and where its root is.
#[derive(Clone, Copy)]
pub struct Ipv6Maps<'ctx> {
    pub nodes: MapDef<'ctx>,
    pub tails: MapDef<'ctx>,
    /// The set's first root node: `ROOT_NODES * slot`.
    pub root_base: u64,
}

/// The IPv6 sets of a policy (their indexes in `policy.sets`, in slot
/// order), and the nodes and tails their initial prefixes take.
pub struct Ipv6Sizing {
    pub slots: Vec<usize>,
    pub nodes: u64,
    pub tails: u64,
}

/// Every set of prefixes that holds IPv6 prefixes, or may get some at run
/// time (declared with `set`), has a slot; the others answer no without a
/// lookup.
pub fn sizing(policy: &ir::Policy) -> Ipv6Sizing {
    let mut slots = Vec::new();
    let mut tables = Vec::new();
    for (i, s) in policy.sets.iter().enumerate() {
        if s.elem != SetElem::Cidr || (!s.mutable && s.contents.v6.is_empty()) {
            continue;
        }
        slots.push(i);
        tables.push(Ipv6Table::build(s.contents.v6.iter().map(|&(a, len)| (u128::from(a), len))));
    }
    let nodes = tables.iter().map(|t| t.nodes.len() as u64).sum();
    let tails = tables.iter().map(|t| t.tails.len() as u64).sum();
    Ipv6Sizing { slots, nodes, tails }
}

/// Whether the IPv6 address `hi:lo` (host order) is in the set of `t`.
pub fn member<'ctx>(b: &Bpf<'_, 'ctx>, t: Ipv6Maps<'ctx>, hi: IntValue<'ctx>, lo: IntValue<'ctx>) -> IntValue<'ctx> {
    let done = b.block("v6set_done");
    let tail = b.block("v6set_tail");
    let mut results = Vec::new();
    let mut tails = Vec::new();
    let key = b.stack_buf(4, "key");
    let i32t = b.m.cx.i32_type();
    // Node `node`, entry `byte`: the entry, or a miss when the node is
    // past the map (never in a table the runtime wrote).
    let entry = |node: IntValue<'ctx>, byte: IntValue<'ctx>, results: &mut Vec<(IntValue<'ctx>, _)>| {
        b.store_at(key, 0, b.trunc(node, i32t));
        let p = b.map_lookup(t.nodes, key);
        let found = b.block("v6set_node");
        let miss = b.block("v6set_miss");
        b.br_if_null(p, miss, found);
        b.at(miss);
        results.push((b.bool(false), b.cur()));
        b.br(done);
        b.at(found);
        b.zext64(b.load_raw(b.ptr_add(p, b.mul(byte, b.c64(4))), 0, 4))
    };
    let top = b.lshr(hi, b.c64(48));
    let mut node = b.add(b.c64(t.root_base), b.lshr(top, b.c64(8)));
    let mut byte = b.and(top, b.c64(0xff));
    for level in 0..LEVELS {
        let e = entry(node, byte, &mut results);
        if level == LEVELS - 1 {
            // Bits 120..128: nothing is longer, so no tail or child.
            results.push((b.eq(e, b.c64(u64::from(HIT))), b.cur()));
            b.br(done);
            break;
        }
        let decided = b.block("v6set_decided");
        let deeper = b.block("v6set_deeper");
        b.cond_br(b.cmp(IntPredicate::ULT, e, b.c64(u64::from(FIRST_CHILD))), decided, deeper);
        b.at(decided);
        results.push((b.eq(e, b.c64(u64::from(HIT))), b.cur()));
        b.br(done);
        b.at(deeper);
        let child = b.block("v6set_child");
        let to_tail = b.block("v6set_to_tail");
        b.cond_br(b.cmp(IntPredicate::NE, b.and(e, b.c64(u64::from(TAIL))), b.c64(0)), to_tail, child);
        b.at(to_tail);
        tails.push((b.and(e, b.c64(u64::from(!TAIL))), b.cur()));
        b.br(tail);
        b.at(child);
        node = b.sub(e, b.c64(u64::from(FIRST_CHILD)));
        // The 8 bits after the first 16 + 8 * level.
        let next = level + 1;
        byte = if next <= 6 { b.lshr(hi, b.c64(48 - 8 * next as u64)) } else { b.lshr(lo, b.c64(56 - 8 * (next as u64 - 7))) };
        byte = b.and(byte, b.c64(0xff));
    }
    b.at(tail);
    let index = b.phi(&tails);
    b.store_at(key, 0, b.trunc(index, i32t));
    let p = b.map_lookup(t.tails, key);
    let found = b.block("v6set_tail_found");
    let miss = b.block("v6set_tail_miss");
    b.br_if_null(p, miss, found);
    b.at(miss);
    results.push((b.bool(false), b.cur()));
    b.br(done);
    b.at(found);
    let [th, tl, mh, ml] = [0, 8, 16, 24].map(|off| b.load_u64_at(p, off));
    let hit = b.and(b.eq(b.and(hi, mh), th), b.eq(b.and(lo, ml), tl));
    results.push((hit, b.cur()));
    b.br(done);
    b.at(done);
    b.phi(&results)
}

/// Root nodes of `slots` sets.
pub fn root_nodes(slots: usize) -> u64 {
    u64::from(ROOT_NODES) * slots as u64
}
