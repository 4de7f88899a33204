//! Dynamic sets (`set NAME: ip dynamic`, `add(...)`, `in`): what a lookup
//! and an add cost a packet, beside a rule without a set and a named set
//! (`set NAME: ip = {...}`, the three-level IPv4 table) in the same run.
//!
//!   cargo bench --bench dynset             full run; writes the "Dynamic sets" section of BENCHMARKS.md and bench-out/dynset.json
//!   cargo bench --bench dynset -- --quick  smoke run (tests/bench_smoke.rs); asserts nothing about time; writes target/bench-out-quick/
//!
//! Needs root. Each policy alone, `BPF_PROG_TEST_RUN` with `repeat` on one
//! CPU (the kernel's mean time per run), rounds interleaved; every rule
//! must drop every run (its counter says so), so each run went through
//! the set.

#![allow(dead_code)]

#[path = "common/mod.rs"]
mod common;

use common::{load_policy, median, sh};
use std::fmt::Write as _;
use std::path::Path;
use xpol_runtime::loader::{KeyValue, LoadedPolicy};
use xpol_runtime::packet::PacketSpec;
use xpol_runtime::sys;

// A quick or full run, and what it reports: the same for every
// stateful feature's bench (tests/bench_smoke.rs runs them quick).
pub use common::{Mode, Report};
use common::root;

const SOURCE: &str = "198.19.7.7";

/// The frame of every measurement: UDP to port 9 (discard), 64 bytes.
fn frame() -> Vec<u8> {
    PacketSpec::udp4(SOURCE.parse().expect("v4"), "198.19.255.1".parse().expect("v4"), 40000, 9).payload(18).build()
}

/// The policies timed: (name, policy, whether the frame's source is put in
/// the dynamic set `d` first). Each drops every run.
fn policies() -> Vec<(&'static str, String, bool)> {
    let dynamic = "set d: ip dynamic timeout 1h\n";
    vec![
        ("no set (`udp.dport == 9`, drop)", "xdp /udp.dport == 9/ { drop }\n".to_string(), false),
        ("named set, the source in it (`ip.src in s`)", format!("set s: ip = {{ {SOURCE} }}\nxdp /ip.src in s/ {{ drop }}\n"), false),
        ("dynamic set, the source in it (`ip.src in d`)", format!("{dynamic}xdp /ip.src in d/ {{ drop }}\n"), true),
        ("dynamic set, the source not in it (`ip.src !in d`)", format!("{dynamic}xdp /ip.src !in d/ {{ drop }}\n"), false),
        ("`add(d, ip.src)` for every packet", format!("{dynamic}xdp /udp.dport == 9/ {{ add(d, ip.src); drop }}\n"), false),
    ]
}

fn ns_per_run(p: &LoadedPolicy, packet: &[u8], repeat: u32) -> f64 {
    let fd = p.program_fd("xdp").expect("program");
    f64::from(sys::prog_test_run(fd, packet, None, repeat).expect("test run").duration_ns)
}

pub fn run(mode: &Mode, out_dir: &Path) -> Report {
    let (rounds, repeat) = if mode.quick { (1, 10_000) } else { (9, 2_000_000) };
    let packet = frame();
    let dir = tempfile::tempdir().expect("tempdir");
    let policies: Vec<(&str, LoadedPolicy)> = policies()
        .into_iter()
        .enumerate()
        .map(|(i, (name, text, fill))| {
            let p = load_policy(dir.path(), &format!("dynset{i}"), &text);
            if fill {
                p.maps().dynset_add("d", &KeyValue::Ip(SOURCE.parse().expect("v4")), None).expect("add the source");
            }
            (name, p)
        })
        .collect();
    let cpu = sys::allowed_cpus().expect("CPUs")[0];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); policies.len()];
    for _ in 0..rounds {
        for ((_, p), s) in policies.iter().zip(samples.iter_mut()) {
            s.push(sys::on_cpu(cpu, || ns_per_run(p, &packet, repeat)).expect("pinned"));
        }
    }
    let runs = u64::from(repeat) * rounds as u64;
    let mut md = String::from("| policy | ns per run | over no set |\n|---|---|---|\n");
    let mut json_rows = Vec::new();
    let base = median(&samples[0]);
    for ((name, p), s) in policies.iter().zip(&samples) {
        let dropped = p.rule_counters().expect("counters")[0].packets;
        assert_eq!(dropped, runs, "{name}: the rule dropped {dropped} of {runs} runs");
        let (m, lo, hi) = (median(s), s.iter().copied().fold(f64::INFINITY, f64::min), s.iter().copied().fold(0.0, f64::max));
        let _ = writeln!(md, "| {name} | {m:.1} ({lo:.1}-{hi:.1}) | {:+.1} |", m - base);
        json_rows.push(serde_json::json!({"policy": name, "ns_per_run": s, "median": m, "runs": runs, "dropped": dropped}));
    }
    let added = policies[4].1.maps().dynset_elements("d").expect("elements");
    assert_eq!(added.len(), 1, "the add kept one element: {added:?}");
    let json = serde_json::json!({"test_runs": json_rows, "load_average": common::load_average()});
    common::write_report(out_dir, "dynset", &json, &md);
    Report { markdown: md, json }
}

/// Replaces the "Dynamic sets" section of BENCHMARKS.md.
fn write_section(markdown: &str, json: &serde_json::Value) {
    let path = root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let commit = common::commit_label(&root(), &["compiler", "lang", "runtime", "benches"]);
    let cpu = common::cpu_model();
    let kernel = sh(None, "uname", &["-r"], None).unwrap_or_default();
    let section = format!(
        "## Dynamic sets\n\n\
         Measured with `cargo bench --bench dynset` at commit {commit} on {cpu}, Linux {}, load average {} (a machine shared with other builds). Raw numbers: `bench-out/dynset.json`.\n\n\
         One rule, `BPF_PROG_TEST_RUN` with `repeat` 2,000,000 (the kernel's mean time per run, which includes its test loop's own work per run), 9 interleaved rounds, median (min-max), one CPU; every rule dropped every run. A dynamic set's `in` is one LRU-hash lookup and a read of the coarse clock when found; `add` a clock read and a lookup, then for an element the set holds (every run but the first here: the same source) its end moved on with a store in place, for a new one an insert (`bpf_map_update_elem`, which takes an entry from the LRU's free list: some 140 ns when every add was one). The named set is the three-level IPv4 table, plain loads.\n\n\
         {markdown}",
        kernel.trim(),
        json["load_average"].as_str().unwrap_or("")
    );
    std::fs::write(&path, common::replace_section(&old, "Dynamic sets", &section)).expect("write BENCHMARKS.md");
}

fn main() {
    common::bench_main("dynamic set benchmark", run, write_section);
}
