//! Pass 3, `codegen`: policy IR to a BPF ELF object through LLVM.
//!
//! One object holds one program per hook the policy uses (`xdp`, and
//! `classifier` programs for `tc:ingress` / `tc:egress`), the maps (per-rule
//! counters, named sets, `@maps`), BTF with line info pointing at the
//! `.xpol` sources, a `license` section, and the metadata section
//! ([`xpol_lang::meta::META_SECTION`]).

pub mod builder;
pub mod faults;
mod ipv6_set;
mod budget;
mod classify;
mod conntrack;
mod dynset;
mod lb;
mod limit;
mod log;
pub mod lower;
pub mod parse;
mod synproxy;

use crate::ir;
use builder::{map_type, Bpf, ModuleCx, BPF_F_NO_PREALLOC};
use inkwell::context::Context;
use inkwell::debug_info::{AsDIScope, DIFlags, DIFlagsConstants, DWARFEmissionKind, DWARFSourceLanguage};
use inkwell::module::Linkage;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetTriple};
use inkwell::{AddressSpace, OptimizationLevel};
use lower::{map_is_per_cpu, map_key_size, Ipv4Maps, Lower, Maps, SetMaps, Table, UserMapDef};
use std::collections::HashMap;
use xpol_lang::ast::Hook;
use xpol_lang::ipv4_table::{self, Ipv4Table};
use xpol_lang::meta::{self, KeyKind, ObjectMeta, SetElem, SetMapKind, SetMapMeta};
use xpol_lang::{Diagnostic, SourceMap, Span};

pub use faults::Faults;
pub use budget::{MAX_JUMP_SEQUENCE, MAX_PROGRAM_INSNS};

mod located;
pub use located::Located;

pub struct Generated {
    pub object: Vec<u8>,
    /// Every debug location of the object and its span.
    pub located: Vec<Located>,
    pub meta: ObjectMeta,
    pub llvm_ir: String,
    pub asm: String,
    /// Per program, the instructions it was certain to take before LLVM
    /// ran (`budget::SizeFloor`; 0 for a specialized program), which the
    /// compiled program must not be smaller than: for the tests that hold
    /// the early refusal of programs too large to its promise.
    pub size_floors: Vec<(Hook, usize)>,
}

pub fn program_name(hook: Hook) -> &'static str {
    match hook {
        Hook::Xdp => "xpol_xdp",
        Hook::TcIngress => "xpol_tc_ingress",
        Hook::TcEgress => "xpol_tc_egress",
    }
}

fn section(hook: Hook) -> &'static str {
    match hook {
        Hook::Xdp => "xdp",
        Hook::TcIngress | Hook::TcEgress => "classifier",
    }
}

fn codegen_error(message: impl Into<String>) -> Vec<Diagnostic> {
    vec![Diagnostic::error("xpol::codegen", message).with_help("this is a bug in xpol; please report it with the policy")]
}

/// What a rule that fires decides, for labelling its counters: its verdict
/// when its body always gives the same one (`pass`, `drop`, `tx`, `abort`,
/// `redirect`), `mixed` when that depends on an `if`, `none` when it lets
/// evaluation go on.
fn rule_verdict(body: &[ir::Stmt]) -> &'static str {
    let mut conditional = false;
    for s in body {
        match &s.kind {
            ir::StmtKind::Verdict(v) => return if conditional { "mixed" } else { v.as_str() },
            ir::StmtKind::Redirect(_) => return if conditional { "mixed" } else { "redirect" },
            ir::StmtKind::Lb(_) => return if conditional { "mixed" } else { "lb" },
            ir::StmtKind::Synproxy(_) => return "mixed",
            ir::StmtKind::If { then_body, else_body, .. } => {
                conditional |= rule_verdict(then_body) != "none" || rule_verdict(else_body) != "none";
            }
            ir::StmtKind::Let { .. } | ir::StmtKind::MapUpdate { .. } | ir::StmtKind::Log(_) | ir::StmtKind::SetWrite { .. } => {}
        }
    }
    if conditional { "mixed" } else { "none" }
}

/// Capacity of a named set in elements (a range `a..b` counts b-a+1), and
/// so of its LPM trie or hash map: for a set the runtime may update, `max
/// N` as declared, else room to grow (twice the initial elements, at least
/// 1024); exactly the contents for the compiler's read-only ones.
pub fn set_capacity(s: &ir::NamedSet) -> u32 {
    let n = s.contents.element_count();
    let capacity = match (s.mutable, s.capacity) {
        (true, Some(max)) => max,
        (true, None) => n.saturating_mul(2).max(1024),
        (false, _) => n.max(1),
    };
    capacity.min(u64::from(u32::MAX)) as u32
}

/// How the IPv4 sets share the three tables of `ipv4_table`.
struct Ipv4Sizing {
    /// The set (index in `policy.sets`) of each slot.
    slots: Vec<usize>,
    /// Levels each slot's lookup reads (see `lower::Ipv4Maps::levels`).
    levels: Vec<u32>,
    /// Capacities: root entries, mid and leaf chunks.
    root: u64,
    mid: u64,
    leaf: u64,
    mid_wide: bool,
}

/// Which sets get a slot in the IPv4 tables and how large the tables are.
/// A constant set gets a slot when it has IPv4 prefixes, and exactly the
/// chunks they use. A set the runtime may change always gets one, even
/// without IPv4 prefixes yet, with lookups down to the leaves and room to
/// grow (`ipv4_table::growable_chunks`): with the default capacity (twice
/// the initial elements) about twice the chunks its prefixes use, so a
/// blocklist of 100,000 prefixes spread like the benchmark's takes about
/// 32 MiB of mid chunks (capped at one per /16) and 3 MiB of leaves.
fn ipv4_sizing(policy: &ir::Policy) -> Ipv4Sizing {
    let mut z = Ipv4Sizing { slots: Vec::new(), levels: Vec::new(), root: 0, mid: 0, leaf: 0, mid_wide: false };
    for (i, s) in policy.sets.iter().enumerate() {
        if s.elem != SetElem::Cidr || (!s.mutable && s.contents.v4.is_empty()) {
            continue;
        }
        let table = Ipv4Table::build(s.contents.v4.iter().map(|&(a, len)| (u32::from(a), len)));
        let (mid, leaf) = if s.mutable {
            ipv4_table::growable_chunks(&table, s.contents.v4.len() as u64, u64::from(set_capacity(s)), s.capacity.is_some())
        } else {
            (table.mid.len() as u64, table.leaf.len() as u64)
        };
        z.slots.push(i);
        z.levels.push(if s.mutable { 3 } else { table.levels() });
        z.root += u64::from(ipv4_table::ROOT_ENTRIES);
        z.mid += mid;
        z.leaf += leaf;
    }
    z.mid_wide = Ipv4Table::mid_wide_for(z.leaf);
    z
}

/// Up to this many rules, rules are emitted once per parse outcome and the
/// module gets LLVM's O2; beyond, once, with [`LONG_PASSES`]: O2's jump
/// threading and the copies grow faster than linearly with the number of
/// rules.
pub const SPECIALIZE_MAX_RULES: usize = 64;

/// LLVM's passes for policies of more than [`SPECIALIZE_MAX_RULES`] rules:
/// scalar replacement of the stack slots, CSE, CFG simplification with
/// the hoisting of what both sides of a branch begin with, instcombine.
/// What the rest of O1 adds (the inliner's and loop pipelines, IPSCCP,
/// the later instcombines and reassociation, vectorizers) runs over the
/// whole program for nothing there: the code is a chain of rules without
/// loops or calls. Measured against O1 on 87 generated policies of 65 to
/// 2,500 rules: 2.6% fewer instructions in all (from 18% fewer to 2%
/// more), and on 5,000 random rules 2.4 s of passes instead of 9.0 s.
/// Every one of those programs still verified in the kernel.
pub const LONG_PASSES: &str = "function(sroa,early-cse,simplifycfg,instcombine,simplifycfg<hoist-common-insts>)";

/// The passes for `policy`'s module.
fn passes(policy: &ir::Policy) -> &'static str {
    if policy.rules.len() <= SPECIALIZE_MAX_RULES {
        "default<O2>"
    } else {
        LONG_PASSES
    }
}

/// Up to this [`branch_weight`], rules may be specialized per parse end with
/// the facts in registers. There the verifier follows each parser path
/// through the rules, and rules that combine many conditions or carry
/// statements multiply the states it keeps: 20 rules of 3 to 10 mixed
/// `&&`/`||` conditions with map updates took it past 1,000,000 processed
/// instructions. Past this weight the facts go into a map instead (see
/// `Bpf::spill_facts`), and the same policy verifies in about 50,000.
pub const SPECIALIZE_MAX_WEIGHT: usize = 32;

/// Per-CPU scratch map of the parsed facts in programs that are not
/// [`specialized`].
pub const FACTS_MAP: &str = "xpol_facts";

/// Whether the rules are emitted once per parse end with the facts in
/// registers (fast), rather than once after moving the facts into
/// [`FACTS_MAP`] (bounded verifier work and stack).
///
/// Not with connection state beside a `log`, `limit` or `synproxy`: each parse end
/// then reaches them in as many states as the connection's lookup leaves,
/// which the verifier cannot merge. Four `log(.., rate:)` rules after a
/// `ct.state` rule on `tc:ingress` took it to 570,000 processed
/// instructions specialized, and 90,000 with the facts in the map; a
/// `synproxy` after a `ct.state` rule 445,000 specialized.
pub fn specialized(policy: &ir::Policy) -> bool {
    let stateful_beside_ct = policy.conntrack.is_some() && !(policy.logs.is_empty() && policy.limits.is_empty() && policy.synproxies.is_empty());
    !stateful_beside_ct && policy.rules.len() <= SPECIALIZE_MAX_RULES && policy.programs.iter().all(|p| branch_weight(p) <= SPECIALIZE_MAX_WEIGHT)
}

/// An estimate, from the IR, of what makes the verifier's work grow when
/// rules are specialized: each `&&`, `||` or `!` combines three-valued
/// results through branches, each `if`, `let` and map update adds paths
/// or state. A rule of one comparison and a verdict weighs nothing: only
/// the packets it does not match go on. A rule that lets its packets go
/// on (no verdict) weighs [`FALL_THROUGH_WEIGHT`]: both its outcomes go
/// on, each knowing a different range of the field it compared, and the
/// verifier cannot merge them: 40 such rules of one comparison each took
/// it past 1,000,000 processed instructions.
pub fn branch_weight(prog: &ir::Program) -> usize {
    probes_weight(&prog.probes)
}

/// [`branch_weight`] of some of a program's probes.
pub fn probes_weight(probes: &[ir::Probe]) -> usize {
    fn expr(e: &ir::Expr) -> usize {
        use ir::ExprKind::*;
        match &e.kind {
            Field(_) | Const(_) | Local(_) => 0,
            MapRead { keys, .. } => 1 + keys.iter().map(expr).sum::<usize>(),
            // A lookup, maybe an insert, and the compare-and-exchange
            // attempts, each a way out.
            Limit { keys, .. } => 4 + keys.iter().map(expr).sum::<usize>(),
            Neg(a) | BitNot(a) | In(a, _) => expr(a),
            Not(a) => 1 + expr(a),
            Arith(_, a, b) | Cmp(_, a, b) => expr(a) + expr(b),
            And(a, b) | Or(a, b) => 1 + expr(a) + expr(b),
        }
    }
    fn stmts(list: &[ir::Stmt]) -> usize {
        list.iter()
            .map(|s| match &s.kind {
                ir::StmtKind::Verdict(_) | ir::StmtKind::Redirect(_) => 0,
                // The ring buffer's reservation (a way out when it is
                // full), and a rate's bucket as a `limit`'s (whether or
                // not the `log` has one: the IR alone does not say).
                ir::StmtKind::Log(_) => 5,
                // A clock read and an update or delete.
                ir::StmtKind::SetWrite { key, .. } => 2 + expr(key),
                // Hashing, two or three lookups, the encapsulation, the FIB.
                ir::StmtKind::Lb(_) => 16,
                // Two cookie helpers, the option loop, the rewrite.
                ir::StmtKind::Synproxy(_) => 16,
                ir::StmtKind::If { cond, then_body, else_body } => 1 + expr(cond) + stmts(then_body) + stmts(else_body),
                ir::StmtKind::Let { value, .. } => 1 + expr(value),
                ir::StmtKind::MapUpdate { keys, op, .. } => {
                    let value = match op {
                        ir::MapOp::Count => 0,
                        ir::MapOp::Sum(e) | ir::MapOp::Assign(e) => expr(e),
                    };
                    1 + keys.iter().map(expr).sum::<usize>() + value
                }
            })
            .sum()
    }
    probes
        .iter()
        .map(|p| {
            let fall_through = if p.predicate.is_some() && !ends(&p.body) { FALL_THROUGH_WEIGHT } else { 0 };
            p.predicate.as_ref().map_or(0, expr) + stmts(&p.body) + fall_through
        })
        .sum()
}

/// The [`branch_weight`] of a rule with a predicate whose packets go on to
/// the next rule when it matches.
pub const FALL_THROUGH_WEIGHT: usize = 2;

/// Per program, the instructions the kernel's verifier is estimated to
/// process (`budget::processed_estimate`; refused past
/// [`MAX_PROCESSED_INSNS`]): what `tests/limits.rs` compares with the
/// kernel's count.
pub fn processed_estimates(policy: &ir::Policy) -> Vec<(Hook, usize)> {
    policy.programs.iter().map(|p| (p.hook, budget::processed_estimate(policy, p).total())).collect()
}

pub use budget::MAX_PROCESSED_INSNS;

/// The index of the probe of `prog` before which the L4 header is
/// parsed: the first that reads an L4 field, or the first of all in a
/// program that records connections (which parses every header for them).
pub(crate) fn l4_parsed_before(policy: &ir::Policy, prog: &ir::Program) -> Option<usize> {
    let records = policy.conntrack.as_ref().is_some_and(|ct| ct.trackers.contains(&prog.hook));
    if records {
        Some(0)
    } else {
        parse::first_probe_using(prog, parse::Stage::L4)
    }
}

/// Whether every packet that runs `body` gets its verdict there (its last
/// statement is a verdict, redirect or `lb`, or an `if` whose branches
/// both end).
pub(crate) fn ends(body: &[ir::Stmt]) -> bool {
    body.last().is_some_and(|s| match &s.kind {
        ir::StmtKind::Verdict(_) | ir::StmtKind::Redirect(_) | ir::StmtKind::Lb(_) | ir::StmtKind::Synproxy(_) => true,
        ir::StmtKind::If { then_body, else_body, .. } => ends(then_body) && ends(else_body),
        _ => false,
    })
}

pub fn generate(policy: &ir::Policy, sources: &SourceMap, options: &crate::BuildOptions) -> Result<Generated, Vec<Diagnostic>> {
    generate_timed(policy, sources, options).0
}

/// How long each phase of [`generate`] took: building the LLVM IR (up to
/// a refusal before LLVM runs, when there is one), LLVM's verifier, its
/// passes, emitting the object, the budget checks; the phases it went
/// through, also when the policy is refused. For `benches/compile.rs`.
pub type Phases = Vec<(&'static str, std::time::Duration)>;

/// [`generate`], and its [`Phases`].
pub fn generate_timed(policy: &ir::Policy, sources: &SourceMap, options: &crate::BuildOptions) -> (Result<Generated, Vec<Diagnostic>>, Phases) {
    let mut watch = Stopwatch::start();
    let generated = generate_with(policy, sources, options, &mut watch);
    (generated, watch.phases)
}

fn generate_with(policy: &ir::Policy, sources: &SourceMap, options: &crate::BuildOptions, watch: &mut Stopwatch) -> Result<Generated, Vec<Diagnostic>> {
    Target::initialize_bpf(&InitializationConfig::default());
    let triple = TargetTriple::create("bpfel");
    let target = Target::from_triple(&triple).map_err(|e| codegen_error(format!("LLVM has no BPF target: {e}")))?;
    let tm = target
        .create_target_machine(&triple, "v3", "", OptimizationLevel::Default, RelocMode::Default, CodeModel::Default)
        .ok_or_else(|| codegen_error("LLVM could not create a BPF target machine"))?;

    let cx = Context::create();
    if !options.text {
        builder::discard_value_names(&cx);
    }
    let llvm_errors = builder::LlvmErrors::install(&cx);
    let module = cx.create_module("xpol");
    module.set_triple(&triple);
    module.set_data_layout(&tm.get_target_data().get_data_layout());

    // Debug info: BTF and .BTF.ext line info are generated from it. LLVM
    // reads each line's text from the file on disk, so give real paths.
    let (_, root) = sources.files().next().ok_or_else(|| codegen_error("no source files"))?;
    let (dir, name) = split_path(root);
    let (di, di_cu) = module.create_debug_info_builder(
        true,
        DWARFSourceLanguage::C,
        &name,
        &dir,
        "xpolc",
        true,
        "",
        0,
        "",
        DWARFEmissionKind::Full,
        0,
        false,
        false,
        "",
        "",
    );
    let di_int = di.create_basic_type("int", 32, 0x05, DIFlags::ZERO).map_err(|e| codegen_error(e.to_string()))?.as_type();
    let m = ModuleCx { cx: &cx, module, di, di_cu, di_int };
    let files: HashMap<_, _> = sources
        .files()
        .map(|(id, f)| {
            let (dir, name) = split_path(f);
            (id, m.di.create_file(&name, &dir))
        })
        .collect();

    // Maps. The per-CPU counters map holds a slot per rule, then one per
    // @map for its lost updates; the blocks in global data the rules' only.
    let counter_slots = meta::counter_slots(policy.rules.len(), policy.maps.len());
    let mut meta = ObjectMeta {
        version: meta::META_VERSION,
        source: root.name.clone(),
        programs: Vec::new(),
        rules: Vec::new(),
        sets: Vec::new(),
        maps: Vec::new(),
        redirects: policy.redirects.iter().map(|r| r.ifname.clone()).collect(),
        counters: meta::CountersMeta::for_rules(policy.rules.len()),
        pools: Vec::new(),
        limits: Vec::new(),
        conntrack: None,
        log_ring: None,
        logs: Vec::new(),
        dynsets: Vec::new(),
        synproxies: policy
            .synproxies
            .iter()
            .map(|s| meta::SynproxyMeta { rule: s.rule, ports: s.ports.clone(), mss: s.mss, wscale: s.wscale, sack: s.sack, timestamps: s.timestamps })
            .collect(),
    };
    let rules_map = m.define_map(meta::RULES_MAP, map_type::PERCPU_ARRAY, 4, 16, counter_slots.clamp(1, u32::MAX as usize) as u32, 0);
    let rules = m.counters(rules_map, meta::COUNTERS_MAP, meta.counters.global_cpus, meta.counters.stride);
    // The IPv4 sets' tables, one after another in three shared tables.
    let sizing = ipv4_sizing(policy);
    let v6_sizing = ipv6_set::sizing(policy);
    let v6_slots = v6_sizing.slots.len() as u64;
    let v6_root_bytes = v6_slots * u64::from(xpol_lang::ipv6_table::ROOT_NODES) * xpol_lang::ipv6_table::ROOT_NODE_BYTES;
    let mid_wide = sizing.mid_wide;
    let chunks = |n: u64| n.clamp(1, u64::from(u32::MAX)) as u32;
    // Where the IPv6 roots go (`ipv6_table::root_placement`), after the
    // IPv4 tables' global data.
    let v4_global_bytes = if sizing.slots.is_empty() {
        0
    } else {
        ipv4_table::placement(u64::from(chunks(sizing.root)), u64::from(chunks(sizing.mid)), u64::from(chunks(sizing.leaf)), mid_wide).1
    };
    let v6_layout = (v6_slots > 0).then(|| xpol_lang::ipv6_table::global_layout(v4_global_bytes, v6_slots)).flatten();
    let v6_root_at = v6_layout.map(|l| l.roots);
    let v6_root_bytes = v6_layout.map_or(v6_root_bytes, |l| l.end - l.roots);
    let mut v6_root_global = None;
    let ipv4_maps = (!sizing.slots.is_empty()).then(|| {
        let mid_kind = if mid_wide { SetMapKind::Ipv4Mid32 } else { SetMapKind::Ipv4Mid16 };
        // (kind, map name when not in global data, bytes per chunk, chunks)
        let shared = [
            (SetMapKind::Ipv4Root, meta::IPV4_ROOT_MAP, 4, chunks(sizing.root)),
            (mid_kind, meta::IPV4_MID_MAP, Ipv4Table::mid_chunk_bytes(mid_wide), chunks(sizing.mid)),
            (SetMapKind::Ipv4Leaf, meta::IPV4_LEAF_MAP, ipv4_table::LEAF_BYTES, chunks(sizing.leaf)),
        ];
        let [root, mid, leaf] = shared.map(|(_, _, _, chunks)| u64::from(chunks));
        let (places, global_bytes) = ipv4_table::placement(root, mid, leaf, mid_wide);
        let offsets: Vec<u64> = places.iter().filter_map(|p| match p {
            ipv4_table::Placement::Global { offset } => Some(*offset),
            ipv4_table::Placement::Map => None,
        }).collect();
        // The IPv6 roots after the IPv4 tables in global data, when they fit.
        let v6_root = v6_root_at.map(|at| (at, at + v6_root_bytes));
        let offsets: Vec<u64> = offsets.into_iter().chain(v6_root.map(|(at, _)| at)).collect();
        let total = v6_root.map_or(global_bytes, |(_, end)| end.max(global_bytes));
        let mut globals = m.global_tables(meta::IPV4_TABLES_MAP, &offsets, total).into_iter();
        let mut defs = Vec::new();
        let mut metas = Vec::new();
        for (&(kind, name, chunk_bytes, chunks), place) in shared.iter().zip(places) {
            let (table, map) = match place {
                ipv4_table::Placement::Global { .. } => (Table::Global(globals.next().expect("one global per offset")), meta::IPV4_TABLES_MAP),
                ipv4_table::Placement::Map => (Table::Map(m.define_map(name, map_type::ARRAY, 4, chunk_bytes, chunks, 0)), name),
            };
            defs.push(table);
            metas.push(SetMapMeta { map: map.to_string(), kind, max_entries: chunks });
        }
        let v6_root_table = v6_root.map(|_| globals.next().expect("one global per offset"));
        (defs, metas, v6_root_table)
    });
    // The IPv6 sets' tables: two maps shared by all of them, sized to the
    // initial prefixes (the runtime sizes them again to what it fills).
    let ipv4_maps = ipv4_maps.map(|(defs, metas, root)| {
        v6_root_global = root;
        (defs, metas)
    });
    if sizing.slots.is_empty() {
        // No IPv4 tables: the roots alone in global data.
        if let Some(at) = v6_root_at {
            v6_root_global = m.global_tables(meta::IPV4_TABLES_MAP, &[at], at + v6_root_bytes).into_iter().next();
        }
    }
    let ipv6_maps = (!v6_sizing.slots.is_empty()).then(|| {
        let nodes = chunks(ipv6_set::root_nodes(v6_sizing.slots.len()) + v6_sizing.nodes);
        let tails = chunks(v6_sizing.tails);
        let defs = (
            m.define_map(meta::IPV6_NODES_MAP, map_type::ARRAY, 4, xpol_lang::ipv6_table::NODE_BYTES, nodes, 0),
            m.define_map(meta::IPV6_TAILS_MAP, map_type::ARRAY, 4, xpol_lang::ipv6_table::TAIL_BYTES, tails, 0),
        );
        let mut metas = vec![
            SetMapMeta { map: meta::IPV6_NODES_MAP.to_string(), kind: SetMapKind::Ipv6Node, max_entries: nodes },
            SetMapMeta { map: meta::IPV6_TAILS_MAP.to_string(), kind: SetMapKind::Ipv6Tail, max_entries: tails },
        ];
        if v6_root_global.is_some() {
            let roots = chunks(ipv6_set::root_nodes(v6_sizing.slots.len()));
            metas.push(SetMapMeta { map: meta::IPV4_TABLES_MAP.to_string(), kind: SetMapKind::Ipv6Root, max_entries: roots });
        }
        (defs, metas)
    });
    // The sets of ports, integers and MACs in one hash map, and the IPv6
    // parts the tables do not take in one LPM trie, each keyed by the
    // set's id (its index): two maps of a program's 64 however many sets
    // a policy has. Each is as large as its sets' capacities together.
    let in_lpm6 = |i: usize, s: &ir::NamedSet| s.elem == SetElem::Cidr && !v6_sizing.slots.contains(&i) && (s.mutable || !s.contents.v6.is_empty());
    let in_hash = |s: &ir::NamedSet| matches!(s.elem, SetElem::Int | SetElem::Mac);
    let total = |pick: &dyn Fn(usize, &ir::NamedSet) -> bool| -> Option<u32> {
        let mut sets = policy.sets.iter().enumerate().filter(|&(i, s)| pick(i, s)).peekable();
        sets.peek()?;
        Some(sets.fold(0u64, |n, (_, s)| n + u64::from(set_capacity(s))).clamp(1, u64::from(u32::MAX)) as u32)
    };
    // Neither is preallocated: only the runtime adds elements, and the
    // maps then take the memory of the sets' contents, not of their room
    // to grow (a thousand sets of the default 1,024 would preallocate
    // some 80 MB). A lookup costs the same.
    let shared_hash = total(&|_, s| in_hash(s)).map(|entries| {
        let def = m.define_map(meta::SETS_HASH_MAP, map_type::HASH, meta::SETS_HASH_KEY_SIZE, 1, entries, BPF_F_NO_PREALLOC);
        (def, SetMapMeta { map: meta::SETS_HASH_MAP.to_string(), kind: SetMapKind::SharedHash, max_entries: entries })
    });
    let shared_lpm6 = total(&in_lpm6).map(|entries| {
        let def = m.define_map(meta::SETS_LPM6_MAP, map_type::LPM_TRIE, meta::SETS_LPM6_KEY_SIZE, 1, entries, BPF_F_NO_PREALLOC);
        (def, SetMapMeta { map: meta::SETS_LPM6_MAP.to_string(), kind: SetMapKind::SharedLpmV6, max_entries: entries })
    });
    let mut set_maps = Vec::new();
    for (set_index, s) in policy.sets.iter().enumerate() {
        let capacity = set_capacity(s);
        let id = u32::try_from(set_index).map_err(|_| codegen_error("more sets than a u32 counts"))?;
        let mut maps = SetMaps::default();
        let mut metas = Vec::new();
        let mut ipv4_slot = None;
        let mut ipv6_slot = None;
        let mut ipv4_metas = Vec::new();
        match s.elem {
            SetElem::Cidr => {
                // No slot (a constant set without IPv4 element): membership
                // is then false without a lookup.
                if let (Some(slot), Some((defs, shared))) = (sizing.slots.iter().position(|&i| i == set_index), &ipv4_maps) {
                    ipv4_slot = Some(slot as u32);
                    maps.v4 = Some(Ipv4Maps {
                        root: defs[0],
                        mid: defs[1],
                        leaf: defs[2],
                        mid_chunks: u64::from(shared[1].max_entries),
                        leaf_chunks: u64::from(shared[2].max_entries),
                        mid_wide,
                        root_base: slot as u64 * ipv4_table::ROOT_ENTRIES as u64,
                        levels: sizing.levels[slot],
                    });
                    ipv4_metas.extend(shared.iter().cloned());
                }
                if let (Some(slot), Some(((nodes, tails), shared))) = (v6_sizing.slots.iter().position(|&i| i == set_index), &ipv6_maps) {
                    ipv6_slot = Some(slot as u32);
                    maps.v6 = Some(ipv6_set::Ipv6Part::Tables(ipv6_set::Ipv6Maps {
                        nodes: *nodes,
                        tails: *tails,
                        roots: v6_root_global,
                        global_wides: v6_layout.map_or(0, |l| l.count),
                        wides_at: v6_layout.map_or(0, |l| l.wides - l.roots),
                        wide_regions_at: v6_layout.map_or(0, |l| l.regions - l.roots),
                        root_base: ipv6_set::root_nodes(slot),
                    }));
                    ipv4_metas.extend(shared.iter().cloned());
                } else if let (true, Some((def, shared))) = (in_lpm6(set_index, s), &shared_lpm6) {
                    // No IPv6 prefix yet, or past the sets the tables take:
                    // the shared trie (see `ipv6_set::sizing`).
                    maps.v6 = Some(ipv6_set::Ipv6Part::Lpm { map: *def, id });
                    metas.push(shared.clone());
                }
            }
            SetElem::Int | SetElem::Mac => {
                if let Some((def, shared)) = &shared_hash {
                    maps.hash = Some((*def, id));
                    metas.push(shared.clone());
                }
            }
        }
        metas.splice(0..0, ipv4_metas);
        let shared_id = metas.iter().any(|m| m.kind.is_keyed_by_set()).then_some(id);
        set_maps.push(maps);
        meta.sets.push(meta::SetMeta {
            name: s.name.clone(),
            elem: s.elem,
            maps: metas,
            ipv4_slot,
            ipv6_slot,
            id: shared_id,
            elements: s.contents.elements(),
            capacity: u64::from(capacity),
            mutable: s.mutable,
        });
    }
    let mut users = Vec::new();
    for (i, u) in policy.maps.iter().enumerate() {
        let per_cpu = map_is_per_cpu(u);
        let key_size = map_key_size(u);
        let name = format!("xm_{}", u.name);
        let ty = if per_cpu { map_type::PERCPU_HASH } else { map_type::HASH };
        // Preallocated (no BPF_F_NO_PREALLOC): an update on the packet path
        // never allocates, and a full map refuses a new key with E2BIG.
        let def = m.define_map(&name, ty, key_size, 8, u.entries(), 0);
        let lost_slot = meta::lost_slot(policy.rules.len(), i);
        users.push(UserMapDef { def, per_cpu, key_size, lost_slot });
        meta.maps.push(meta::UserMapMeta {
            name: u.name.clone(),
            map: name,
            value: u.value,
            per_cpu,
            keys: u
                .keys
                .iter()
                .map(|t| match t {
                    ir::Type::Int => KeyKind::Int,
                    ir::Type::Ip => KeyKind::Ip,
                    ir::Type::Mac => KeyKind::Mac,
                    ir::Type::Bool => KeyKind::Bool,
                })
                .collect(),
            key_size,
            max_entries: u.entries(),
            lost_slot: Some(lost_slot),
        });
    }
    let redirect = (!policy.redirects.is_empty())
        .then(|| m.define_map(meta::REDIRECT_MAP, map_type::ARRAY, 4, 4, policy.redirects.len() as u32, 0));
    let mut pools = Vec::new();
    for pool in &policy.pools {
        let (maps, pool_meta) = lb::define_pool(&m, pool, policy.nat_pools.contains(&pools.len()));
        pools.push(maps);
        meta.pools.push(pool_meta);
    }
    let mut limits = Vec::new();
    for (i, l) in policy.limits.iter().enumerate() {
        let (def, limit_meta) = limit::define(&m, i, l, sources);
        limits.push(def);
        meta.limits.push(limit_meta);
    }
    let conntrack = policy.conntrack.as_ref().map(|ct| {
        let (def, ct_meta) = conntrack::define(&m, ct);
        meta.conntrack = Some(ct_meta);
        def
    });
        let log = log::define(&m, policy, sources).map(|(maps, ring, logs)| {
        meta.log_ring = Some(ring);
        meta.logs = logs;
        maps
    });
    let mut dynsets = Vec::new();
    for (i, d) in policy.dynsets.iter().enumerate() {
        let (def, dynset_meta) = dynset::define(&m, i, d);
        dynsets.push(def);
        meta.dynsets.push(dynset_meta);
    }
    let classified = classify::define(&m, policy, options);
    let maps = Maps { rules, sets: set_maps, users, redirect, pools, limits, conntrack, log, dynsets, classified };
    // Heavy or long policies read the parsed facts from a map, see `Bpf::spill_facts`.
    let specialize = specialized(policy);
    let facts_map = (!specialize)
        .then(|| m.define_map(FACTS_MAP, map_type::PERCPU_ARRAY, 4, 8 * (parse::FACT_SLOTS as u32 + 1), 1, 0));

    // Programs.
    let mut located = Vec::new();
    let mut size_floors = Vec::new();
    let mut stack_uses: Vec<(&str, Vec<(u32, Option<Span>)>)> = Vec::new();
    for prog in &policy.programs {
        let fname = program_name(prog.hook);
        // The context type, by name and size (the kernel wants to know the
        // size of what the argument points to; members are not needed).
        let (ctx_name, ctx_size) = if prog.hook == Hook::Xdp { ("xdp_md", 24) } else { ("__sk_buff", 192) };
        let i8p = m.i8_ptr();
        let fty = cx.i32_type().fn_type(&[i8p.into()], false);
        let func = m.module.add_function(fname, fty, Some(Linkage::External));
        func.set_section(Some(section(prog.hook)));
        // Without `nounwind` LLVM emits .eh_frame, which BPF loaders reject.
        func.add_attribute(inkwell::attributes::AttributeLoc::Function, cx.create_enum_attribute(inkwell::attributes::Attribute::get_named_enum_kind_id("nounwind"), 0));

        let first = prog.probes.first().map(|p| p.span).unwrap_or_default();
        let (line, _) = sources.get(first.file).line_col(first.start);
        let file = files[&first.file];
        let ctx_ty = m.di.create_struct_type(m.di_cu.as_debug_info_scope(), ctx_name, file, 0, ctx_size * 8, 32, DIFlags::ZERO, None, &[], 0, None, "");
        let ctx_ptr = m.di.create_pointer_type("", ctx_ty.as_type(), 64, 64, AddressSpace::default());
        let sub_ty = m.di.create_subroutine_type(file, Some(m.di_int), &[ctx_ptr.as_type()], DIFlags::PROTOTYPED);
        let sub = m.di.create_function(m.di_cu.as_debug_info_scope(), fname, None, file, line, sub_ty, false, true, line, DIFlags::PROTOTYPED, true);
        func.set_subprogram(sub);
        // The kernel rejects BTF whose function arguments have no names.
        m.di.create_parameter_variable(sub.as_debug_info_scope(), "ctx", 1, file, line, ctx_ptr.as_type(), true, DIFlags::ZERO);

        let mut b = Bpf::new(&m, func, sub, sources, &files);
        b.omit_null_check = options.faults.omit_null_check;
        b.long_program = !specialize;
        b.scopes.borrow_mut().push((first.file, sub.as_debug_info_scope(), None));
        b.set_location(sub.as_debug_info_scope(), line, 1);
        if prog.hook == Hook::TcEgress && !policy.nat_pools.is_empty() {
            let nat: Vec<lb::PoolMaps> = policy.nat_pools.iter().map(|&p| maps.pools[p]).collect();
            lb::reverse_nat(&b, &nat);
        }
        let mut uses = parse::first_uses(prog);
        let l4_before = l4_parsed_before(policy, prog);
        // A program that records connections parses every header for them
        // before its first rule (its instructions blamed on the first
        // `ct.state` of the policy); one that only reads `ct.state`, before
        // the first rule that does.
        let records = policy.conntrack.as_ref().filter(|ct| ct.trackers.contains(&prog.hook));
        if let Some(ct) = records {
            for stage in [parse::Stage::Eth, parse::Stage::Vlan, parse::Stage::Ip4, parse::Stage::Ip6, parse::Stage::L4] {
                uses.entry(stage).or_insert(ct.span);
            }
        }
        let ct_classify = records.is_some() || (policy.conntrack.is_some() && parse::reads_field(prog, crate::check::fields::Field::CtState));
        // A program without rules of its own (the `tc:egress` of `nat` or
        // of the connection table) gains nothing from a parse end per
        // header, and would repeat its work at each.
        let parsed = parse::parse(&b, prog.hook, &uses, specialize && !prog.probes.is_empty(), options.faults.omit_l4_bounds_check);
        for &end in &parsed.ends {
            b.at(end);
            faults::emit(&b, &options.faults, prog);
            let mut lower = Lower::new(&mut b, parsed.headers, policy, &maps, prog.hook);
            lower.ct_classify = ct_classify;
            if let Some(rule) = lower.program(&prog.probes, l4_before.map(|i| (i, parsed.l4_at(end))), facts_map) {
                watch.lap("LLVM IR, until refused");
                return Err(vec![budget::too_large_early(prog.hook, &lower.floor, rule + 1, &prog.probes[rule])]);
            }
            size_floors.push((prog.hook, lower.floor.insns));
        }
        located.extend(b.located.take());
        stack_uses.push((fname, b.stack_uses.take()));

        meta.programs.push(meta::ProgramMeta { hook: prog.hook.as_str().to_string(), name: fname.to_string(), section: section(prog.hook).to_string() });
    }
    // Each rule's probe by rule number, found once (a search per rule was
    // quadratic in the rules).
    let mut probes: HashMap<ir::RuleId, &ir::Probe> = HashMap::new();
    for p in policy.programs.iter().flat_map(|p| &p.probes) {
        probes.entry(p.rule).or_insert(p);
    }
    for r in &policy.rules {
        let (file, line, column) = sources.location(r.span);
        let probe = probes.get(&r.id).copied();
        let verdict = probe.map_or("none", |p| rule_verdict(&p.body)).to_string();
        meta.rules.push(meta::RuleMeta { id: r.id, hook: r.hook.as_str().to_string(), file: file.to_string(), line, column, text: r.text.clone(), verdict, label: r.label.clone() });
    }

    m.blob("_license", "license", &faults::license(&options.faults));
    let meta_json = serde_json::to_vec(&meta).map_err(|e| codegen_error(format!("cannot encode metadata: {e}")))?;
    m.blob("xpol_meta", meta::META_SECTION, &meta_json);
    m.di.finalize();

    watch.lap("LLVM IR");
    m.module.verify().map_err(|e| codegen_error(format!("LLVM rejected the generated module: {}", e.to_string())))?;
    watch.lap("LLVM verifier");
    let dump = std::env::var_os(DUMP_ENV).map(|dir| (std::path::PathBuf::from(dir), split_path(root).1.trim_end_matches(".xpol").to_string()));
    if let Some((dir, stem)) = &dump {
        // Without it, `opt` and `llc` read the module without its debug
        // info (so without BTF), as LLVM's bitcode and IR readers drop
        // debug info of an unknown version; in process nothing reads it.
        let version = cx.i32_type().const_int(3, false);
        m.module.add_basic_value_flag("Debug Info Version", inkwell::module::FlagBehavior::Warning, version);
        dump_module(&m.module, &dir.join(format!("{stem}.pre")), Some(passes(policy)));
    }
    m.module
        .run_passes(passes(policy), &tm, PassBuilderOptions::create())
        .map_err(|e| codegen_error(format!("LLVM optimisation failed: {}", e.to_string())))?;
    m.lay_out_likely_fallthrough();
    watch.lap("LLVM passes");
    if let Some((dir, stem)) = &dump {
        dump_module(&m.module, &dir.join(format!("{stem}.post")), None);
    }

    let (llvm_ir, asm) = if options.text {
        let asm = tm.write_to_memory_buffer(&m.module, FileType::Assembly).map_err(|e| codegen_error(e.to_string()))?;
        (m.module.print_to_string().to_string(), String::from_utf8_lossy(asm.as_slice()).into_owned())
    } else {
        (String::new(), String::new())
    };
    let obj = tm.write_to_memory_buffer(&m.module, FileType::Object).map_err(|e| codegen_error(e.to_string()))?;
    watch.lap("object");
    let errors = llvm_errors.take();
    if !errors.is_empty() {
        return Err(llvm_failures(&errors, policy, &stack_uses));
    }
    let within = budget::check_object(obj.as_slice(), policy, &located, sources);
    watch.lap("budgets");
    within?;
    Ok(Generated { object: obj.as_slice().to_vec(), located, meta, llvm_ir, asm, size_floors })
}

/// When set, a directory where each build writes its module before LLVM's
/// passes (`NAME.pre.bc`, `.ll`, and the pass pipeline in `.passes`) and
/// after them and the block layout (`NAME.post.bc`, `.ll`): to compile
/// the same module with other LLVM versions' `opt` and `llc` (issue 17,
/// BENCHMARKS.md "LLVM versions"). A debugging aid: failures to write are
/// ignored.
pub const DUMP_ENV: &str = "XPOL_LLVM_DUMP";

fn dump_module(module: &inkwell::module::Module, base: &std::path::Path, passes: Option<&str>) {
    let with = |ext: &str| std::path::PathBuf::from(format!("{}.{ext}", base.display()));
    let _ = module.write_bitcode_to_path(&with("bc"));
    let _ = module.print_to_file(with("ll"));
    if let Some(p) = passes {
        let _ = std::fs::write(with("passes"), p);
    }
}

/// Phases' durations, one after another.
struct Stopwatch {
    phases: Vec<(&'static str, std::time::Duration)>,
    started: std::time::Instant,
}

impl Stopwatch {
    fn start() -> Stopwatch {
        Stopwatch { phases: Vec::new(), started: std::time::Instant::now() }
    }

    /// The phase `name` ended now.
    fn lap(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.phases.push((name, now - self.started));
        self.started = now;
    }
}

/// Errors the BPF backend reported (it still wrote an object, which must
/// not be used). The one a policy can cause is a stack frame over the
/// kernel's 512 bytes: blamed on the code whose stack buffer took the
/// program's buffers past it (`stack_uses`: by program, each buffer's size
/// and span as first needed), else on the one that needed the largest.
fn llvm_failures(errors: &[String], policy: &ir::Policy, stack_uses: &[(&str, Vec<(u32, Option<Span>)>)]) -> Vec<Diagnostic> {
    const STACK_LIMIT: u32 = 512;
    let mut diags = Vec::new();
    let mut other: Vec<&str> = Vec::new();
    let mut over: Vec<&str> = Vec::new();
    for e in errors {
        if !e.contains("stack limit") {
            other.push(e);
            continue;
        }
        // LLVM repeats the error at each instruction it concerns and names
        // the function: one diagnostic per program.
        let program = stack_uses.iter().map(|(p, _)| *p).find(|p| e.contains(p)).unwrap_or("");
        if !over.contains(&program) {
            over.push(program);
        }
    }
    for program in over {
        let uses = stack_uses.iter().find(|(p, _)| *p == program).map(|(_, u)| u.as_slice()).unwrap_or_default();
        let hook = policy.programs.iter().find(|p| program_name(p.hook) == program).map_or("its", |p| p.hook.as_str());
        let mut d = Diagnostic::error("xpol::budget::stack", format!("the `{hook}` program needs more than the {STACK_LIMIT} bytes of stack the kernel allows a BPF program"))
            .with_help("use fewer distinct @map key shapes (each needs its own key buffer; an address key takes 20 bytes), or split the policy across hooks");
        let mut total = 0;
        let crossing = uses.iter().find(|(n, _)| {
            total += n;
            total > STACK_LIMIT
        });
        let blamed = match crossing {
            Some((n, span)) => span.map(|s| (s, format!("this needs a {n}-byte buffer, and with the ones before it {total} bytes"))),
            // The buffers fit, with LLVM's own slots they do not: the
            // largest is the one to cut.
            None => uses.iter().filter(|(_, s)| s.is_some()).max_by_key(|(n, _)| *n).map(|(n, s)| (s.expect("filtered"), format!("the largest stack buffer ({n} bytes; {total} in all, besides the compiler's own)"))),
        };
        match blamed.or_else(|| policy.rules.first().map(|r| (r.span, "in the program of this rule's hook".to_string()))) {
            Some((span, label)) => d = d.with_label(span, label),
            None => {}
        }
        diags.push(d);
    }
    other.sort_unstable();
    other.dedup();
    diags.extend(other.into_iter().map(|e| codegen_error(format!("LLVM: {e}")).remove(0)));
    diags
}

/// Directory and file name for debug info: the real path when the file came
/// from disk.
fn split_path(f: &xpol_lang::SourceFile) -> (String, String) {
    match &f.path {
        Some(p) => (
            p.parent().map(|d| d.display().to_string()).unwrap_or_default(),
            p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| f.name.clone()),
        ),
        None => (String::new(), f.name.clone()),
    }
}
