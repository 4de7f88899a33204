//! Many rules (issue 17): ClassBench `acl1` and `fw1` at 100, 1,000 and
//! 10,000 rules (`bench/classbench/`, README there), each rule an xpol rule
//! (`xdp /ip4.src in A && ip4.dst in B && ip.proto == P && tcp.dport in X..Y/
//! { drop|pass }`), over each set's 10,000-packet trace.
//!
//!   cargo bench --bench classbench            full run; writes its section of BENCHMARKS.md
//!   cargo bench --bench classbench -- --quick smoke run (tests/bench_smoke.rs): every size, few repeats
//!
//! Per set: xpol with its decision trees (`xpol_compiler::classifier`) and,
//! where it builds, xpol with every rule lowered one after another (the
//! linear baseline, `BuildOptions::linear_rules`): build and load time, the
//! verifier's processed instructions, program size, tree memory, and ns
//! per packet by `BPF_PROG_TEST_RUN` over the whole trace (interleaved
//! rounds). Every trace packet's verdict must be its expected rule's, and
//! each rule's counter must count exactly the trace packets ClassBench
//! says it matches first, or the run fails. On veth (10,000 rules):
//! nftables with the same rules (netdev ingress chain, a counter each)
//! against xpol (XDP native), CPU ns per packet for a sample of the trace.

#![allow(dead_code)]

#[path = "common/mod.rs"]
mod common;

use common::classbench::{self, TracePacket};
use common::veth::{push, Namespaces};
use common::{have, median, root, sh};
pub use common::{Mode, Report};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;
use xpol_runtime::loader::{LoadOptions, LoadedPolicy, XdpAttachMode};
use xpol_runtime::sys;

/// The goals (issue 17): 10,000 rules cost at most this times what 100
/// cost; nftables at 10,000 rules at least this times the CPU per packet;
/// 10,000 rules build and load within this many seconds.
const GOAL_SCALING: f64 = 2.0;
const GOAL_VS_NFT: f64 = 20.0;
const GOAL_BUILD_LOAD_SECS: f64 = 5.0;

const FAMILIES: [&str; 2] = ["acl1", "fw1"];
const SIZES: [usize; 3] = [100, 1000, 10_000];

struct Variant {
    name: &'static str,
    n: usize,
    family: &'static str,
    build_ms: f64,
    load_ms: f64,
    processed: u32,
    xlated: u32,
    tree_bytes: u64,
    policy: LoadedPolicy,
    ns: Vec<f64>,
}

/// `.rodata`'s size: the trees.
fn tree_bytes(object: &[u8]) -> u64 {
    use object::{Object, ObjectSection};
    let file = object::File::parse(object).expect("an ELF object");
    file.section_by_name(".rodata").map_or(0, |s| s.size())
}

fn build(dir: &Path, family: &'static str, n: usize, linear: bool) -> Result<Variant, String> {
    let rules = root().join(format!("bench/classbench/{family}-{n}.rules"));
    let path = dir.join(format!("{family}-{n}-{linear}.xpol"));
    std::fs::write(&path, classbench::policy(&rules)).expect("write the policy");
    let options = xpol_compiler::BuildOptions { linear_rules: linear, ..Default::default() };
    let t = Instant::now();
    let b = xpol_compiler::build(&path, &options);
    let build_ms = t.elapsed().as_secs_f64() * 1e3;
    let out = b.output.ok_or_else(|| {
        let errors: Vec<_> = b.diagnostics.iter().filter(|d| d.severity == xpol_lang::Severity::Error).map(|d| d.code.clone()).collect();
        format!("refused: {}", errors.join(", "))
    })?;
    let t = Instant::now();
    let mut policy = LoadedPolicy::load_with(&out.object, &LoadOptions::default()).map_err(|e| format!("not loaded: {e}"))?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let info = policy.program_stats("xdp").expect("program info");
    Ok(Variant {
        name: if linear { "xpol, rule after rule" } else { "xpol, decision trees" },
        n,
        family,
        build_ms,
        load_ms,
        processed: info.verified_insns,
        xlated: info.xlated_bytes / 8,
        tree_bytes: tree_bytes(&out.object),
        policy,
        ns: Vec::new(),
    })
}

/// Every packet once: its verdict is its expected rule's (pass when none),
/// and each rule counts exactly the packets it matches first.
fn check(v: &mut Variant, trace: &[TracePacket], drops: &[bool]) {
    let before = v.policy.rule_counters().expect("counters");
    let mut want = vec![0u64; drops.len()];
    for (i, p) in trace.iter().enumerate() {
        let got = v.policy.test_run("xdp", &p.frame).expect("test run").action;
        let drop = p.expected.is_some_and(|r| drops[r]);
        let expected = if drop { xpol_runtime::loader::Action::Drop } else { xpol_runtime::loader::Action::Pass };
        assert_eq!(got, expected, "{} {}-{}: trace packet {i} (rule {:?})", v.name, v.family, v.n, p.expected);
        if let Some(r) = p.expected {
            want[r] += 1;
        }
    }
    let after = v.policy.rule_counters().expect("counters");
    for (r, w) in want.iter().enumerate() {
        assert_eq!(after[r].packets - before[r].packets, *w, "{} {}-{}: rule {r}'s counter", v.name, v.family, v.n);
    }
}

/// Mean ns per packet over the trace, each packet test-run `repeat` times.
fn ns_per_packet(v: &LoadedPolicy, trace: &[TracePacket], repeat: u32) -> f64 {
    let fd = v.program_fd("xdp").expect("program");
    let total: f64 = trace.iter().map(|p| f64::from(sys::prog_test_run(fd, &p.frame, None, repeat).expect("test run").duration_ns)).sum();
    total / trace.len() as f64
}

struct VethRow {
    peer: String,
    family: &'static str,
    samples: Vec<f64>,
}

/// CPU ns per packet on veth at 10,000 rules (1,000 in a quick run): xpol (XDP native) against
/// nftables (netdev ingress), a sample of each trace pushed through, and
/// the floor (an XDP program that drops).
fn veth(mode: &Mode, dir: &Path, skipped: &mut Vec<String>) -> Vec<VethRow> {
    for tool in ["ethtool", "nft"] {
        if !have(tool) {
            skipped.push(format!("veth mode: `{tool}` is not installed"));
            return Vec::new();
        }
    }
    let n = if mode.quick { 1000 } else { 10_000 };
    let (rounds, sample, frames) = if mode.quick { (1, 4usize, 200u32) } else { (3, 32, 2_000) };
    let cpu = *sys::allowed_cpus().expect("CPUs").last().expect("a CPU");
    let mut ns = Namespaces::new("cb").expect("namespaces");
    let recv = ns.recv.clone();
    let recv_path = Namespaces::path(&recv);
    let gen_ns = Namespaces::path(&ns.gen);
    let mut gen = common::load_policy(dir, "generator", "xdp { tx }\n");
    let mut rows = Vec::new();
    for family in FAMILIES {
        let trace = classbench::trace(&root().join(format!("bench/classbench/{family}-{n}.trace")));
        let picked: Vec<&TracePacket> = (0..sample).map(|i| &trace[i * trace.len() / sample]).collect();
        let rules_file = root().join(format!("bench/classbench/{family}-{n}.rules"));
        // Peers: (name, generator side, how to read what it counted).
        let mut peers: Vec<(String, String, Option<LoadedPolicy>)> = Vec::new();
        let (g, r, _) = ns.pair().expect("veth pair");
        let v = build(dir, family, n, false).expect("xpol builds");
        let mut p = v.policy;
        sys::in_netns(&recv_path, None, || p.attach("xdp", &r, XdpAttachMode::Native)).expect("receiver namespace").expect("attach xpol");
        peers.push((format!("xpol, XDP, decision trees ({family}-{n})"), g, Some(p)));
        let (g, r, _) = ns.pair().expect("veth pair");
        let table = format!("xpolcb{family}");
        let rules: Vec<String> = std::fs::read_to_string(&rules_file).expect("rules").lines().filter_map(classbench::nft_rule).collect();
        let ruleset = format!(
            "table netdev {table} {{\n  chain ingress {{\n    type filter hook ingress device \"{r}\" priority -500; policy accept;\n    counter\n    {}\n  }}\n}}\n",
            rules.join("\n    ")
        );
        let file = dir.join(format!("{table}.nft"));
        std::fs::write(&file, ruleset).expect("write nft ruleset");
        sh(Some(&recv), "nft", &["-f", &file.display().to_string()], None).expect("nft loads the ruleset");
        peers.push((format!("nftables, netdev ingress ({family}-{n}, {} rules)", rules.len()), g, None));
        let (g, r, _) = ns.pair().expect("veth pair");
        let mut floor = common::load_policy(dir, &format!("floor{family}"), "xdp { drop }\n");
        sys::in_netns(&recv_path, None, || floor.attach("xdp", &r, XdpAttachMode::Native)).expect("receiver namespace").expect("attach the floor");
        peers.push(("floor: XDP `drop`".to_string(), g, Some(floor)));
        let counted = |peer: &Option<LoadedPolicy>| -> u64 {
            match peer {
                Some(p) => p.rule_counters().expect("counters").iter().map(|c| c.packets).sum(),
                None => common::nft_counter_packets(&recv, "netdev", &table, "ingress").unwrap_or_else(|e| panic!("{e}")),
            }
        };
        let mut samples = vec![Vec::new(); peers.len()];
        for _ in 0..rounds {
            for (i, (name, g, peer)) in peers.iter().enumerate() {
                let before = counted(peer);
                let mut spent = 0u64;
                for p in &picked {
                    spent += push(&mut gen, &gen_ns, cpu, g, &p.frame, frames);
                }
                let sent = frames as u64 * picked.len() as u64;
                let got = counted(peer) - before;
                // xpol counts the packets its rules decide; the rest pass
                // uncounted. nftables' first rule counts them all.
                if peer.is_none() {
                    assert!(got + sent / 100 >= sent && got <= sent + sent / 100, "{name}: counted {got} of {sent} frames");
                }
                samples[i].push(spent as f64 / sent as f64);
            }
        }
        for ((name, _, _), s) in peers.into_iter().zip(samples) {
            rows.push(VethRow { peer: name, family, samples: s });
        }
    }
    drop(ns);
    rows
}

pub fn run(mode: &Mode, out_dir: &Path) -> Report {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rounds, repeat) = if mode.quick { (1, 1) } else { (5, 50) };
    let mut variants: Vec<Variant> = Vec::new();
    let mut refused: Vec<(String, String)> = Vec::new();
    // Each program attached (XDP native) to a veth of the bench's own
    // namespaces while it is test-run: the kernel's XDP dispatcher then
    // holds it already, and a test run does not patch it into the
    // dispatcher and out again (an RCU wait each, milliseconds: 10,000
    // packets one by one would take minutes).
    let mut held = Namespaces::new("ct").expect("namespaces");
    let held_path = Namespaces::path(&held.recv);
    let mut traces = std::collections::HashMap::new();
    // Quick runs (tests/bench_smoke.rs, an unoptimized build) leave out
    // the largest sets.
    let sizes: &[usize] = if mode.quick { &SIZES[..2] } else { &SIZES };
    for family in FAMILIES {
        for &n in sizes {
            let rules = root().join(format!("bench/classbench/{family}-{n}.rules"));
            let trace = classbench::trace(&root().join(format!("bench/classbench/{family}-{n}.trace")));
            let drops = classbench::drops(&rules);
            for linear in [false, true] {
                match build(dir.path(), family, n, linear) {
                    Ok(mut v) => {
                        let (_, r, _) = held.pair().expect("veth pair");
                        sys::in_netns(&held_path, None, || v.policy.attach("xdp", &r, XdpAttachMode::Native)).expect("namespace").expect("attach");
                        check(&mut v, &trace, &drops);
                        variants.push(v);
                    }
                    Err(e) if linear => refused.push((format!("{family}-{n}"), e)),
                    Err(e) => panic!("{family}-{n}: {e}"),
                }
            }
            traces.insert((family, n), trace);
        }
    }
    for _ in 0..rounds {
        for v in variants.iter_mut() {
            let ns = ns_per_packet(&v.policy, &traces[&(v.family, v.n)], repeat);
            v.ns.push(ns);
        }
    }
    // Removing the namespaces removes the veths and detaches the programs.
    drop(held);
    let mut skipped = Vec::new();
    let veth_rows = veth(mode, dir.path(), &mut skipped);

    let stat = |v: &[f64]| (median(v), v.iter().cloned().fold(f64::MAX, f64::min), v.iter().cloned().fold(0.0, f64::max));
    let mut md = String::new();
    let _ = writeln!(md, "### BPF_PROG_TEST_RUN over each trace\n");
    let _ = writeln!(md, "| set | rules | lowering | ns per packet, mean over the trace, median of rounds (min-max) | build ms | load ms | verifier processed | xlated insns | tree bytes |");
    let _ = writeln!(md, "|---|---:|---|---:|---:|---:|---:|---:|---:|");
    let mut json = Vec::new();
    for v in &variants {
        let (m, lo, hi) = stat(&v.ns);
        let _ = writeln!(md, "| {} | {} | {} | {m:.1} ({lo:.1}-{hi:.1}) | {:.0} | {:.0} | {} | {} | {} |", v.family, v.n, v.name, v.build_ms, v.load_ms, v.processed, v.xlated, v.tree_bytes);
        json.push(serde_json::json!({"set": v.family, "rules": v.n, "lowering": v.name, "ns": v.ns, "median": m, "build_ms": v.build_ms, "load_ms": v.load_ms, "processed": v.processed, "xlated": v.xlated, "tree_bytes": v.tree_bytes}));
    }
    for (set, why) in &refused {
        let _ = writeln!(md, "| {set} | | xpol, rule after rule | {why} | | | | | |");
    }
    let mut goals = String::new();
    let tree = |f: &str, n: usize| variants.iter().find(|v| v.family == f && v.n == n && v.name.contains("trees"));
    for family in FAMILIES {
        if let (Some(a), Some(b)) = (tree(family, 100), tree(family, 10_000)) {
            let ratio = median(&b.ns) / median(&a.ns);
            let _ = writeln!(goals, "- {family}: 10,000 rules cost {ratio:.2}x what 100 cost (goal at most {GOAL_SCALING}x: {}).", if ratio <= GOAL_SCALING { "met" } else { "missed" });
            let secs = (b.build_ms + b.load_ms) / 1e3;
            let _ = writeln!(goals, "- {family}: 10,000 rules build and load in {secs:.2} s (goal under {GOAL_BUILD_LOAD_SECS} s: {}).", if secs < GOAL_BUILD_LOAD_SECS { "met" } else { "missed" });
        }
    }
    let mut veth_md = String::new();
    let mut json_veth = Vec::new();
    if !veth_rows.is_empty() {
        let _ = writeln!(veth_md, "### Veth: CPU ns per packet at 10,000 rules\n");
        let _ = writeln!(veth_md, "| receiver | CPU ns per packet, median (min-max) |");
        let _ = writeln!(veth_md, "|---|---:|");
        for r in &veth_rows {
            let (m, lo, hi) = stat(&r.samples);
            let _ = writeln!(veth_md, "| {} | {m:.0} ({lo:.0}-{hi:.0}) |", r.peer);
            json_veth.push(serde_json::json!({"peer": r.peer, "set": r.family, "samples": r.samples, "median": m}));
        }
        for family in FAMILIES {
            let find = |s: &str| veth_rows.iter().find(|r| r.family == family && r.peer.starts_with(s)).map(|r| median(&r.samples));
            if let (Some(x), Some(nft)) = (find("xpol"), find("nftables")) {
                let ratio = nft / x;
                let _ = writeln!(goals, "- {family}: nftables takes {ratio:.1}x the CPU per packet of xpol at 10,000 rules (goal at least {GOAL_VS_NFT}x: {}).", if ratio >= GOAL_VS_NFT { "met" } else { "missed" });
            }
        }
    }
    let skipped_md = if skipped.is_empty() { String::new() } else { format!("\nSkipped: {}.\n", skipped.join("; ")) };
    let markdown = format!("{md}\n{veth_md}\n{goals}{skipped_md}");
    let json = serde_json::json!({"quick": mode.quick, "rounds": rounds, "repeat": repeat, "test_runs": json, "veth": json_veth, "refused": refused, "skipped": skipped});
    common::write_report(out_dir, "classbench", &json, &markdown);
    Report { markdown, json }
}

fn write_section(markdown: &str, _json: &serde_json::Value) {
    let path = root().join("BENCHMARKS.md");
    let doc = std::fs::read_to_string(&path).expect("BENCHMARKS.md");
    let commit = common::commit_label(&root(), &["compiler", "benches/classbench.rs"]);
    let section = format!(
        "## Many rules: ClassBench (issue 17)\n\nClassBench `acl1` and `fw1` rule sets of 100, 1,000 and 10,000 rules with their 10,000-packet traces (`bench/classbench/`, README there), each rule `xdp /ip4.src in A && ip4.dst in B && ip.proto == P && tcp.sport in X..Y && tcp.dport in Z..W/ {{ drop|pass }}` (wildcards left out), measured with `cargo bench --bench classbench` at commit {commit} on {}, load average {} after the run (the machine is shared). *Decision trees* is xpol as it compiles such rules (`xpol_compiler::classifier`, ARCHITECTURE.md); *rule after rule* is the same policy with every rule lowered one after another, the lowering before the trees. ns per packet: every trace packet test-run 50 times (`BPF_PROG_TEST_RUN`, the kernel's mean per run in whole ns), the mean over the 10,000 packets, 5 interleaved rounds. Every trace packet's verdict is checked against the rule ClassBench says matches it first, and every rule's counter against the number of such packets. Build is `xpolc build` in-process (parse, check, lints, trees, LLVM); load includes the verifier. Tree bytes: the `.rodata` section.\n\n{markdown}",
        common::cpu_model(),
        common::load_average()
    );
    let doc = common::replace_section(&doc, "Many rules: ClassBench (issue 17)", &section);
    std::fs::write(&path, doc).expect("write BENCHMARKS.md");
}

fn main() {
    common::bench_main("classbench", run, write_section);
}
