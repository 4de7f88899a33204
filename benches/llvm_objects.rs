//! The LLVM version comparison (issue 17, BENCHMARKS.md "LLVM versions"):
//! loads the objects `bench/llvm/compile.py` made of the same modules with
//! several LLVM versions, checks that every variant of a policy gives the
//! same verdicts, and measures them interleaved with `BPF_PROG_TEST_RUN`.
//!
//!   cargo bench --bench llvm_objects -- DIR [--rounds N]
//!
//! DIR holds `POLICY.VARIANT.o`; the variant `xpolc` (the object xpolc
//! itself wrote) is the baseline of the ratios. Policies named `ref-fw-*`
//! are run on ref-fw's allowed and blocked packets (repeat 100,000), `lb-*`
//! on the VIP's established flow and on new flows (single runs, as in
//! `benches/lb_path.rs`, in a network namespace of its own without routes,
//! so the encapsulated packet passes), rate limits not at all (their
//! verdicts change as the runs use up the budget), everything else on
//! ref-fw's allowed packet. Prints a markdown table (also DIR/results.md;
//! the samples in DIR/results.json); time is the kernel's BPF statistics'
//! run time per run (`BPF_ENABLE_STATS`). Objects the kernel rejects are
//! listed with the verifier's complaint. Needs root.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use xpol_runtime::loader::LoadedPolicy;
use xpol_runtime::packet::PacketSpec;
use xpol_runtime::sys;

const BASELINE: &str = "xpolc";
const REPEAT: u32 = 100_000;
const LB_RUNS: usize = 5_000;

struct Object {
    policy: String,
    variant: String,
    loaded: LoadedPolicy,
    /// (xlated insns, jited bytes, verifier-processed insns), summed over the programs.
    sizes: (u32, u32, u32),
    /// Run time per run (ns) by packet name, one per round.
    samples: BTreeMap<&'static str, Vec<f64>>,
}

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    PacketSpec::tcp4(src, dst, sport, dport).syn().payload(10).build()
}

fn lb_packet(flow: u64) -> Vec<u8> {
    let (src, sport) = if flow == 0 { (Ipv4Addr::new(198, 18, 7, 7), 40000) } else { (Ipv4Addr::from(0xc612_8000 | ((flow / 50_000) as u32 & 0x7fff)), 10_000 + (flow % 50_000) as u16) };
    PacketSpec::tcp4(src, Ipv4Addr::new(198, 18, 0, 100), sport, 80).ack().payload(10).build()
}

/// The packets a policy is measured on: (name, packet).
fn packets(policy: &str) -> Vec<(&'static str, Vec<u8>)> {
    let allowed = tcp(Ipv4Addr::new(198, 18, 7, 7), Ipv4Addr::new(198, 19, 255, 1), 40000, 80);
    if policy.contains("ratelimit") {
        // Its verdict depends on the rate limit's state, which the runs
        // change: the sizes and verifier work alone.
        Vec::new()
    } else if policy.starts_with("ref-fw") {
        vec![("allowed", allowed), ("blocked", tcp(Ipv4Addr::new(198, 19, 7, 7), Ipv4Addr::new(198, 19, 255, 1), 40000, 80))]
    } else if policy.starts_with("lb-") {
        vec![("established", lb_packet(0)), ("new", Vec::new())]
    } else {
        vec![("allowed", allowed)]
    }
}

fn sizes(loaded: &mut LoadedPolicy) -> (u32, u32, u32) {
    let hooks: Vec<String> = loaded.meta().programs.iter().map(|p| p.hook.clone()).collect();
    let mut total = (0, 0, 0);
    for h in hooks {
        let s = loaded.program_stats(&h).expect("program stats");
        total = (total.0 + s.xlated_bytes / 8, total.1 + s.jited_bytes, total.2 + s.verified_insns);
    }
    total
}

/// Run time per run (ns) of `packet` on `o`'s XDP program, and its return value.
fn sample(o: &mut Object, name: &str, packet: &[u8], next_flow: &mut u64) -> (f64, u32) {
    let before = o.loaded.program_stats("xdp").expect("stats");
    let mut rv = u32::MAX;
    if o.policy.starts_with("lb-") {
        for _ in 0..LB_RUNS {
            let p = if name == "new" {
                *next_flow += 1;
                lb_packet(*next_flow)
            } else {
                packet.to_vec()
            };
            rv = o.loaded.test_run("xdp", &p).expect("test run").return_value;
        }
    } else {
        o.loaded.bench("xdp", packet, REPEAT).expect("test run");
        rv = o.loaded.test_run("xdp", packet).expect("test run").return_value;
    }
    let after = o.loaded.program_stats("xdp").expect("stats");
    ((after.run_time_ns - before.run_time_ns) as f64 / (after.run_count - before.run_count) as f64, rv)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let dir = PathBuf::from(args.first().expect("usage: llvm_objects DIR [--rounds N]"));
    let rounds: usize = args.iter().position(|a| a == "--rounds").map(|i| args[i + 1].parse().expect("rounds")).unwrap_or(11);
    let stats_sysctl = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    assert!(stats_sysctl.trim() != "1", "kernel.bpf_stats_enabled is 1: set it to 0");
    let netns = Netns(format!("xpolllvm{}", std::process::id()));
    assert!(Command::new("ip").args(["netns", "add", &netns.0]).status().expect("ip").success(), "ip netns add");
    let ns_path = Path::new("/run/netns").join(&netns.0);
    let cpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) - 1;

    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).expect("DIR").map(|e| e.expect("entry").path()).filter(|p| p.extension().is_some_and(|e| e == "o")).collect();
    files.sort();
    let mut objects: Vec<Object> = Vec::new();
    let mut failed = Vec::new();
    for f in files {
        let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
        let (policy, variant) = stem.split_once('.').expect("POLICY.VARIANT.o");
        let bytes = std::fs::read(&f).expect("read object");
        match LoadedPolicy::load(&bytes) {
            Ok(mut loaded) => {
                let sizes = sizes(&mut loaded);
                objects.push(Object { policy: policy.into(), variant: variant.into(), loaded, sizes, samples: BTreeMap::new() });
            }
            Err(e) => {
                // The verifier's log, when it rejected the object: its last lines say why.
                let why = format!("{e:?}");
                let tail: String = why.chars().skip(why.chars().count().saturating_sub(1500)).collect();
                eprintln!("{stem}: does not load: {e}: {tail}");
                failed.push(format!("{stem}: {e}"));
            }
        }
    }
    let policies: Vec<String> = {
        let mut p: Vec<String> = objects.iter().map(|o| o.policy.clone()).collect();
        p.dedup();
        p
    };

    let mut next_flow = 0u64;
    let mut verdicts: BTreeMap<(String, &'static str), BTreeMap<u32, Vec<String>>> = BTreeMap::new();
    for round in 0..rounds {
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
        for policy in &policies {
            let mut group: Vec<&mut Object> = objects.iter_mut().filter(|o| &o.policy == policy && o.loaded.meta().programs.iter().any(|p| p.hook == "xdp")).collect();
            // A different program first in each round.
            let n = group.len().max(1);
            group.rotate_left(round % n);
            for (name, packet) in packets(policy) {
                for o in group.iter_mut() {
                    let (ns, rv) = sys::in_netns(&ns_path, Some(cpu), || sample(o, name, &packet, &mut next_flow)).expect("enter the namespace");
                    o.samples.entry(name).or_default().push(ns);
                    verdicts.entry((policy.clone(), name)).or_default().entry(rv).or_default().push(o.variant.clone());
                }
            }
        }
        eprintln!("round {} of {rounds}", round + 1);
    }
    let mut mismatches = Vec::new();
    for ((policy, packet), by_rv) in &verdicts {
        if by_rv.len() > 1 {
            mismatches.push(format!("{policy} {packet}: {by_rv:?}"));
        }
    }

    let mut md = String::new();
    let _ = writeln!(md, "| policy | variant | xlated insns | jited bytes | verifier insns | packet | ns/run | ratio to xpolc |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    let mut json = Vec::new();
    for o in &objects {
        let base = objects.iter().find(|b| b.policy == o.policy && b.variant == BASELINE);
        let mut cells = Vec::new();
        for (name, s) in &o.samples {
            let ratio = base.and_then(|b| b.samples.get(name)).map(|b| median(&s.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<_>>()));
            cells.push((name.to_string(), median(s), ratio));
        }
        if cells.is_empty() {
            let _ = writeln!(md, "| {} | {} | {} | {} | {} | - | - | - |", o.policy, o.variant, o.sizes.0, o.sizes.1, o.sizes.2);
        }
        for (name, ns, ratio) in &cells {
            let _ = writeln!(md, "| {} | {} | {} | {} | {} | {name} | {ns:.2} | {} |", o.policy, o.variant, o.sizes.0, o.sizes.1, o.sizes.2, ratio.map_or("-".into(), |r| format!("{r:.3}")));
        }
        json.push(serde_json::json!({
            "policy": o.policy, "variant": o.variant, "xlated_insns": o.sizes.0, "jited_bytes": o.sizes.1, "verified_insns": o.sizes.2,
            "samples": o.samples,
        }));
    }
    println!("{md}");
    if !failed.is_empty() {
        println!("Did not load:\n{}", failed.join("\n"));
    }
    let doc = serde_json::json!({ "rounds": rounds, "repeat": REPEAT, "lb_runs": LB_RUNS, "objects": json, "failed": failed, "verdict_mismatches": mismatches });
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&doc).unwrap()).expect("write results.json");
    std::fs::write(dir.join("results.md"), &md).expect("write results.md");
    assert!(mismatches.is_empty(), "variants disagree: {mismatches:?}");
}
