//! IPv6 set membership: the walk of the shared IPv6 tables
//! (`xpol_lang::ipv6_table`), and their sizing.
//!
//! A walk reads the set's root node at the address's top 16 bits, then a
//! node while the entry it reads leads to one (at the depth the entry
//! says: nodes skip the bits all their prefixes share), each with an
//! array-map lookup that the verifier inlines; a hit checks the last
//! node's region (the bits skipped), a tail compares the whole prefix.
//! Unrolled: 15 levels at most, each a few instructions, and a packet
//! leaves at the first entry that decides.

use super::builder::{Bpf, MapDef, TableDef};
use crate::ir;
use inkwell::values::IntValue;
use inkwell::IntPredicate;
use xpol_lang::ipv6_table::{Ipv6Table, FIRST_CHILD, GLOBAL, HIT, INLINE, LEVELS, REGION_AT, ROOT_NODES, TAIL, TAIL_BYTES, WIDE, WIDE_BYTES};
use xpol_lang::meta::SetElem;

/// Where a set's IPv6 prefixes are.
#[derive(Clone, Copy)]
pub enum Ipv6Part<'ctx> {
    Tables(Ipv6Maps<'ctx>),
    /// The LPM trie shared by the IPv6 parts of the sets the tables do
    /// not take (`xpol_lang::meta::SETS_LPM6_MAP`), where the set's
    /// prefixes are under its id.
    Lpm { map: MapDef<'ctx>, id: u32 },
}

/// Whether the IPv6 address `hi:lo` (host order) is in `part`.
pub fn part_member<'ctx>(b: &Bpf<'_, 'ctx>, part: Ipv6Part<'ctx>, hi: IntValue<'ctx>, lo: IntValue<'ctx>) -> IntValue<'ctx> {
    match part {
        Ipv6Part::Tables(t) => member(b, t, hi, lo),
        Ipv6Part::Lpm { map, id } => {
            // `meta::sets_lpm6_key`: the length (the id's 32 bits and the
            // whole address), the id big-endian, the address.
            let i32t = b.m.cx.i32_type();
            let key = b.stack_buf(xpol_lang::meta::SETS_LPM6_KEY_SIZE, "key");
            b.store_at(key, 0, i32t.const_int(32 + 128, false));
            b.store_at(key, 4, i32t.const_int(u64::from(id.swap_bytes()), false));
            b.store_at(key, 8, b.bswap(hi));
            b.store_at(key, 16, b.bswap(lo));
            b.not(b.is_null(b.map_lookup(map, key)))
        }
    }
}

/// The maps a set's IPv6 membership reads, and where its root is.
#[derive(Clone, Copy)]
pub struct Ipv6Maps<'ctx> {
    pub nodes: MapDef<'ctx>,
    pub tails: MapDef<'ctx>,
    /// The root nodes in global data (`ipv6_table::root_placement`), when
    /// they are there rather than in `nodes`.
    pub roots: Option<TableDef<'ctx>>,
    /// Wide nodes in global data (`ipv6_table::global_layout`): how many
    /// there is room for, and where they and their regions are from
    /// `roots`.
    pub global_wides: u64,
    pub wides_at: u64,
    pub wide_regions_at: u64,
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

/// Sets in the IPv6 tables at most; see [`sizing`].
pub const MAX_TABLE_SETS: usize = 4;
/// Tests of a set in the tables at most; see [`sizing`].
pub const TABLE_MAX_USES: usize = 2;

/// How many times each of `policy.sets` is tested, in every program.
fn set_uses(policy: &ir::Policy) -> Vec<usize> {
    fn expr(e: &ir::Expr, uses: &mut [usize]) {
        use ir::ExprKind::*;
        match &e.kind {
            Field(_) | Const(_) | Local(_) => {}
            MapRead { keys, .. } | Limit { keys, .. } => keys.iter().for_each(|k| expr(k, uses)),
            Neg(a) | BitNot(a) | Not(a) => expr(a, uses),
            In(a, set) => {
                if let ir::SetRef::Named(i) = set {
                    uses[*i] += 1;
                }
                expr(a, uses);
            }
            Arith(_, a, b) | Cmp(_, a, b) | And(a, b) | Or(a, b) => {
                expr(a, uses);
                expr(b, uses);
            }
        }
    }
    fn stmts(list: &[ir::Stmt], uses: &mut [usize]) {
        for s in list {
            match &s.kind {
                ir::StmtKind::If { cond, then_body, else_body } => {
                    expr(cond, uses);
                    stmts(then_body, uses);
                    stmts(else_body, uses);
                }
                ir::StmtKind::Let { value, .. } => expr(value, uses),
                ir::StmtKind::MapUpdate { keys, op, .. } => {
                    keys.iter().for_each(|k| expr(k, uses));
                    if let ir::MapOp::Sum(e) | ir::MapOp::Assign(e) = op {
                        expr(e, uses);
                    }
                }
                ir::StmtKind::SetWrite { key, .. } => expr(key, uses),
                ir::StmtKind::Verdict(_) | ir::StmtKind::Redirect(_) | ir::StmtKind::Lb(_) | ir::StmtKind::Log(_) | ir::StmtKind::Synproxy(_) => {}
            }
        }
    }
    let mut uses = vec![0; policy.sets.len()];
    for prog in &policy.programs {
        for p in &prog.probes {
            if let Some(e) = &p.predicate {
                expr(e, &mut uses);
            }
            stmts(&p.body, &mut uses);
        }
    }
    uses
}

/// Every set of prefixes that holds IPv6 prefixes has a slot. A set
/// without any that may get some at run time (declared with `set`) keeps
/// the shared LPM trie for them instead (`SetMapKind::SharedLpmV6`; an LPM
/// trie each before), as all did before the tables: a walk is some 200 instructions where a lookup
/// in the trie is a few, so a policy of IPv4 prefixes compiles to the
/// program it did. The others answer no without a lookup.
///
/// Each use of a set in the tables is a walk inlined where it is used,
/// some 250 instructions, which short policies copy for every parse
/// outcome (about 3,000 in all for the ref-fw6 policy): only the
/// [`MAX_TABLE_SETS`] sets with the most IPv6 prefixes (where an LPM trie
/// is slowest) get the tables, the others' prefixes are in the shared trie. (A walk
/// emitted once, as a BPF function each use calls, would lift the cap.)
///
/// A set tested in more than [`TABLE_MAX_USES`] places keeps its trie too:
/// each test is a walk, times the parse ends of a short policy (eight
/// tests of one set in a 64-rule policy took it past 32,767
/// instructions).
pub fn sizing(policy: &ir::Policy) -> Ipv6Sizing {
    let mut slots = Vec::new();
    let mut tables = Vec::new();
    for i in table_sets(policy) {
        let s = &policy.sets[i];
        slots.push(i);
        tables.push(Ipv6Table::build(s.contents.v6.iter().map(|&(a, len)| (u128::from(a), len))));
    }
    let nodes = tables.iter().map(|t| t.nodes.len() as u64).sum();
    let tails = tables.iter().map(|t| t.tails.len() as u64).sum();
    Ipv6Sizing { slots, nodes, tails }
}

/// The sets (indexes in `policy.sets`, in slot order) that [`sizing`]
/// puts in the IPv6 tables.
pub fn table_sets(policy: &ir::Policy) -> Vec<usize> {
    let uses = set_uses(policy);
    let mut candidates: Vec<usize> = (0..policy.sets.len())
        .filter(|&i| {
            let s = &policy.sets[i];
            s.elem == SetElem::Cidr && !s.contents.v6.is_empty() && uses[i] <= TABLE_MAX_USES
        })
        .collect();
    candidates.sort_by_key(|&i| std::cmp::Reverse(policy.sets[i].contents.v6.len()));
    candidates.truncate(MAX_TABLE_SETS);
    candidates.sort_unstable();
    candidates
}

/// Whether the IPv6 address `hi:lo` (host order) is in the set of `t`.
pub fn member<'ctx>(b: &Bpf<'_, 'ctx>, t: Ipv6Maps<'ctx>, hi: IntValue<'ctx>, lo: IntValue<'ctx>) -> IntValue<'ctx> {
    let done = b.block("v6set_done");
    let tail = b.block("v6set_tail");
    let mut results = Vec::new();
    let mut tails = Vec::new();
    let key = b.stack_buf(4, "key");
    let i32t = b.m.cx.i32_type();
    // Node `node`, entry `byte`: the node and the entry, or a miss when
    // the node is past the map (never in a table the runtime wrote).
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
        (p, b.zext64(b.load_raw(b.ptr_add(p, b.mul(byte, b.c64(4))), 0, 4)))
    };
    // Whether the region at `r` holds the address: the bits a walk
    // skipped on its way there.
    let in_region = |r| {
        let [rh, rl, mh, ml] = [0, 8, 16, 24].map(|off| b.load_u64_at(r, off));
        b.and(b.eq(b.and(hi, mh), rh), b.eq(b.and(lo, ml), rl))
    };
    let top = b.lshr(hi, b.c64(48));
    let root = b.add(b.c64(t.root_base), b.lshr(top, b.c64(8)));
    let mut e = match t.roots {
        // A plain load: `root` is below the roots' end by construction.
        Some(g) => {
            let at = b.add(b.mul(root, b.c64(xpol_lang::ipv6_table::ROOT_NODE_BYTES)), b.mul(b.and(top, b.c64(0xff)), b.c64(4)));
            b.zext64(b.load_raw(b.ptr_add(g.base, at), 0, 4))
        }
        None => entry(root, b.and(top, b.c64(0xff)), &mut results).1,
    };
    // The root's entries decide without a region (it is everything).
    let mut region: Option<inkwell::values::PointerValue<'ctx>> = None;
    // The address's bits after the region of the entry `e`, from the top.
    let mut after = b.shl(hi, b.c64(16));
    for level in 0..LEVELS {
        let is_hit = b.eq(e, b.c64(u64::from(HIT)));
        let hit = |region: Option<_>, is_hit| match region {
            Some(p) => b.and(is_hit, in_region(p)),
            None => is_hit,
        };
        if level == LEVELS - 1 {
            // A node at depth 120: nothing below, so no tail or child.
            results.push((hit(region, is_hit), b.cur()));
            b.br(done);
            break;
        }
        let decided = b.block("v6set_decided");
        let deeper = b.block("v6set_deeper");
        b.cond_br(b.cmp(IntPredicate::ULT, e, b.c64(u64::from(FIRST_CHILD))), decided, deeper);
        b.at(decided);
        results.push((hit(region, is_hit), b.cur()));
        b.br(done);
        b.at(deeper);
        // An inline tail: the `delta` bits after the region, in the entry.
        let inline = b.block("v6set_inline");
        let not_inline = b.block("v6set_not_inline");
        b.cond_br(b.eq(b.and(e, b.c64(u64::from(INLINE))), b.c64(u64::from(INLINE))), inline, not_inline);
        b.at(inline);
        let delta = b.and(b.lshr(e, b.c64(24)), b.c64(63));
        let bits = b.lshr(after, b.and(b.sub(b.c64(64), delta), b.c64(63)));
        let matches = b.eq(bits, b.and(e, b.c64(0xff_ffff)));
        results.push((hit(region, matches), b.cur()));
        b.br(done);
        b.at(not_inline);
        let child = b.block("v6set_child");
        let to_tail = b.block("v6set_to_tail");
        b.cond_br(b.cmp(IntPredicate::NE, b.and(e, b.c64(u64::from(TAIL))), b.c64(0)), to_tail, child);
        b.at(to_tail);
        tails.push((b.and(e, b.c64(u64::from(!TAIL))), b.cur()));
        b.br(tail);
        b.at(child);
        // `ipv6_table::child_of`: node, depth in bits (16 to 120), wide.
        let c = b.sub(b.and(e, b.c64(u64::from(!(WIDE | GLOBAL)))), b.c64(u64::from(FIRST_CHILD)));
        let node = b.lshr(c, b.c64(4));
        let depth = b.mul(b.and(c, b.c64(15)), b.c64(8));
        // The 64 bits after `depth` (not 0: the root is the only node at
        // 0), shift amounts kept below 64.
        let below = b.or(b.shl(hi, b.and(depth, b.c64(63))), b.lshr(lo, b.and(b.sub(b.c64(64), depth), b.c64(63))));
        let window = b.select(b.cmp(IntPredicate::ULT, depth, b.c64(64)), below, b.shl(lo, b.and(b.sub(depth, b.c64(64)), b.c64(63))));
        let bits16 = b.lshr(window, b.c64(48));
        let join = b.block("v6set_next");
        let mut incoming = Vec::new();
        let in_map = b.block("v6set_in_map");
        match t.roots.filter(|_| t.global_wides > 0) {
            Some(g) => {
                // A wide node in global data: a plain load, its index
                // bounded with a mask (the room is a power of two; a table
                // the runtime wrote never needs it).
                let global = b.block("v6set_global");
                let flags = u64::from(WIDE | GLOBAL);
                b.cond_br(b.eq(b.and(e, b.c64(flags)), b.c64(flags)), global, in_map);
                b.at(global);
                let node = b.and(node, b.c64(t.global_wides - 1));
                let at = b.add(b.c64(t.wides_at), b.add(b.mul(node, b.c64(WIDE_BYTES)), b.mul(bits16, b.c64(4))));
                let next = b.zext64(b.load_raw(b.ptr_add(g.base, at), 0, 4));
                let r = b.ptr_add(g.base, b.add(b.c64(t.wide_regions_at), b.mul(node, b.c64(u64::from(TAIL_BYTES)))));
                incoming.push((next, r, b.shl(window, b.c64(16)), b.cur()));
                b.br(join);
            }
            None => b.br(in_map),
        }
        b.at(in_map);
        // A wide node in the map: 16 bits, the high 8 pick one of its 256 nodes.
        let wide = b.cmp(IntPredicate::NE, b.and(e, b.c64(u64::from(WIDE))), b.c64(0));
        let node = b.select(wide, b.add(node, b.lshr(bits16, b.c64(8))), node);
        let byte = b.select(wide, b.and(bits16, b.c64(0xff)), b.lshr(window, b.c64(56)));
        let after_map = b.select(wide, b.shl(window, b.c64(16)), b.shl(window, b.c64(8)));
        let (p, next) = entry(node, byte, &mut results);
        incoming.push((next, b.ptr_add(p, b.c64(u64::from(REGION_AT))), after_map, b.cur()));
        b.br(join);
        b.at(join);
        e = b.phi(&incoming.iter().map(|&(v, _, _, bb)| (v, bb)).collect::<Vec<_>>());
        region = Some(b.phi_ptr(&incoming.iter().map(|&(_, r, _, bb)| (r, bb)).collect::<Vec<_>>()));
        after = b.phi(&incoming.iter().map(|&(_, _, a, bb)| (a, bb)).collect::<Vec<_>>());
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
