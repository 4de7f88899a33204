//! Logging (`log(...)`): what a logging rule costs a packet, against the
//! same rule without the `log`, in one run.
//!
//!   cargo bench --bench log             full run; writes the "Logging" section of BENCHMARKS.md and bench-out/log.json
//!   cargo bench --bench log -- --quick  smoke run (CI, tests/bench_smoke.rs); asserts nothing about time; writes target/bench-out-quick/
//!
//! Needs root. Each policy alone, `BPF_PROG_TEST_RUN` with `repeat` on one
//! CPU (the kernel's mean time per run), the rows interleaved round by
//! round: the rule without `log`; with a `log` whose rate suppresses every
//! record (the flood case: 1 a second, decided by the coarse clock; and
//! 1,000 a second, by the precise one); with a `log` that writes every
//! record (runs of 1,000, the ring read between them, so that it never
//! fills); and one whose ring no one reads (full: each reservation fails
//! and the record is counted as lost).

#![allow(dead_code)]

#[path = "common/mod.rs"]
mod common;

use common::{load_policy, median, sh};
use std::fmt::Write as _;
use std::path::Path;
use xpol_runtime::loader::LoadedPolicy;
use xpol_runtime::log::LogReader;
use xpol_runtime::packet::PacketSpec;
use xpol_runtime::sys;

// A quick or full run, and what it reports: the same for every
// stateful feature's bench (tests/bench_smoke.rs runs them quick).
pub use common::{Mode, Report};
use common::root;

/// The frame of every measurement: TCP SYN to port 23, 74 bytes.
fn frame() -> Vec<u8> {
    PacketSpec::tcp4("198.19.7.7".parse().expect("v4"), "198.19.255.1".parse().expect("v4"), 40000, 23).syn().payload(20).build()
}

/// How a row's records are treated while it runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Records {
    /// The policy logs nothing, or its rate suppresses every record.
    None,
    /// Every run writes one: runs of [`WRITTEN_RUNS`], the ring read
    /// between them.
    Read,
    /// Every run tries to write one into a ring no one reads.
    Full,
}

/// Runs per test run of a row whose records are read: well within the
/// ring's 1,560 records.
const WRITTEN_RUNS: u32 = 1_000;

fn policies() -> Vec<(&'static str, String, Records)> {
    let rule = |log: &str| format!("xdp /tcp.dport == 23/ {{ {log}drop }}\n");
    vec![
        ("no `log` (`tcp.dport == 23`, drop)", rule(""), Records::None),
        ("`log(\"telnet: \", rate: 1/s, burst: 1)`, suppressed (coarse clock)", rule("log(\"telnet: \", rate: 1/s, burst: 1); "), Records::None),
        ("`log(\"telnet: \", rate: 1000/s, burst: 1)`, suppressed (precise clock)", rule("log(\"telnet: \", rate: 1000/s, burst: 1); "), Records::None),
        ("`log(\"telnet: \")`, every record written and read", rule("log(\"telnet: \"); "), Records::Read),
        ("`log(\"telnet: \")`, ring full (each record lost)", rule("log(\"telnet: \"); "), Records::Full),
    ]
}

struct Row {
    name: &'static str,
    records: Records,
    /// ns per run, one per round.
    samples: Vec<f64>,
    runs: u64,
    dropped: u64,
    logged: u64,
    lost: u64,
}

/// The kernel's mean ns per run over `repeat` runs, and the runs made;
/// for [`Records::Read`], over runs of [`WRITTEN_RUNS`] with the ring read
/// (outside the timed runs) between them, the records read added to
/// `logged`.
fn ns_per_run(p: &LoadedPolicy, reader: Option<&mut LogReader>, records: Records, packet: &[u8], repeat: u32, logged: &mut u64) -> (f64, u64) {
    let fd = p.program_fd("xdp").expect("program");
    match (records, reader) {
        (Records::Read, Some(reader)) => {
            let calls = repeat.div_ceil(WRITTEN_RUNS);
            let mut total = 0.0;
            for _ in 0..calls {
                total += f64::from(sys::prog_test_run(fd, packet, None, WRITTEN_RUNS).expect("test run").duration_ns);
                *logged += reader.drain(|_| {}) as u64;
            }
            (total / f64::from(calls), u64::from(calls) * u64::from(WRITTEN_RUNS))
        }
        _ => (f64::from(sys::prog_test_run(fd, packet, None, repeat).expect("test run").duration_ns), u64::from(repeat)),
    }
}

pub fn run(mode: &Mode, out_dir: &Path) -> Report {
    let (rounds, repeat) = if mode.quick { (1, 10_000) } else { (9, 2_000_000) };
    let dir = tempfile::tempdir().expect("tempdir");
    let packet = frame();
    let mut loaded: Vec<(LoadedPolicy, Option<LogReader>)> = policies()
        .iter()
        .enumerate()
        .map(|(i, (_, text, _))| {
            let p = load_policy(dir.path(), &format!("log{i}"), text);
            let reader = LogReader::open(p.maps()).expect("the ring");
            (p, reader)
        })
        .collect();
    let cpu = sys::allowed_cpus().expect("CPUs")[0];
    let mut rows: Vec<Row> = policies().into_iter().map(|(name, _, records)| Row { name, records, samples: Vec::new(), runs: 0, dropped: 0, logged: 0, lost: 0 }).collect();
    // The full ring's row fills its ring first.
    if let Some(i) = rows.iter().position(|r| r.records == Records::Full) {
        let fd = loaded[i].0.program_fd("xdp").expect("program");
        sys::prog_test_run(fd, &packet, None, 10_000).expect("fill the ring");
    }
    for _ in 0..rounds {
        // Interleaved: each round times every policy once.
        for ((p, reader), row) in loaded.iter_mut().zip(rows.iter_mut()) {
            let (records, mut logged) = (row.records, 0);
            let (ns, runs) = sys::on_cpu(cpu, || ns_per_run(p, reader.as_mut(), records, &packet, repeat, &mut logged)).expect("pinned");
            row.samples.push(ns);
            row.logged += logged;
            row.runs += runs;
        }
    }
    for ((p, reader), row) in loaded.iter_mut().zip(rows.iter_mut()) {
        row.dropped = p.rule_counters().expect("counters")[0].packets;
        if let Some(r) = reader.as_mut() {
            row.logged += r.drain(|_| {}) as u64;
            row.lost = r.lost().expect("lost").iter().sum();
        }
        // Every run was dropped by the rule (the fill runs too), and the
        // records are what the row says.
        let fill = if row.records == Records::Full { 10_000 } else { 0 };
        assert_eq!(row.dropped, row.runs + fill, "{}: every run dropped", row.name);
        match row.records {
            // What the rate lets through while the rows run: a few a
            // round at 1 a second, some hundreds at 1,000.
            Records::None => assert!(row.logged + row.lost <= row.runs / 100, "{}: {} records, {} lost of {} runs", row.name, row.logged, row.lost, row.runs),
            Records::Read => assert_eq!((row.logged, row.lost), (row.runs, 0), "{}: every record read", row.name),
            Records::Full => assert!(row.lost >= row.runs, "{}: {} lost of {} runs", row.name, row.lost, row.runs),
        }
    }
    let stat = |v: &[f64]| (median(v), v.iter().cloned().fold(f64::MAX, f64::min), v.iter().cloned().fold(0.0, f64::max));
    let base = median(&rows[0].samples);
    let mut md = String::new();
    let _ = writeln!(md, "| rule (74-byte TCP SYN to port 23, dropped) | ns per run (min-max) | more than without `log` | ratio | records written / lost |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    let mut json_rows = Vec::new();
    for r in &rows {
        let (m, lo, hi) = stat(&r.samples);
        let _ = writeln!(md, "| {} | {m:.1} ({lo:.1}-{hi:.1}) | {:+.1} ns | {:.2}x | {} / {} |", r.name, m - base, m / base, r.logged, r.lost);
        json_rows.push(serde_json::json!({"policy": r.name, "ns_per_run": r.samples, "median": m, "vs_no_log": m / base, "runs": r.runs, "dropped": r.dropped, "logged": r.logged, "lost": r.lost}));
    }
    let json = serde_json::json!({"test_runs": json_rows, "load_average": common::load_average()});
    common::write_report(out_dir, "log", &json, &md);
    Report { markdown: md, json }
}

/// Replaces the "Logging" section of BENCHMARKS.md.
fn write_section(markdown: &str, json: &serde_json::Value) {
    let path = root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let commit = common::commit_label(&root(), &["compiler", "lang", "runtime", "benches"]);
    let cpu = common::cpu_model();
    let kernel = sh(None, "uname", &["-r"], None).unwrap_or_default();
    let section = format!(
        "## Logging\n\n\
         Measured with `cargo bench --bench log` at commit {commit} on {cpu}, Linux {}, load average {} (a machine shared with other builds). Raw numbers: `bench-out/log.json`.\n\n\
         One rule, `BPF_PROG_TEST_RUN` with `repeat` 2,000,000 on one CPU (the kernel's mean time per run, its test loop's own work included), 9 interleaved rounds, median (min-max); the ratio is to the same rule without `log`, in the same run. A `log` whose rate suppresses the record costs what a `limit` over its rate costs (the rate is one: `codegen/limit.rs`): at 1 a second the coarse clock decides, at 1,000 a second the precise one must. A record written: the ring's reservation, the packet's first bytes copied by `bpf_xdp_load_bytes`, the submit (runs of 1,000, the ring read between them, outside the timed runs). A full ring: the reservation fails and the record is counted as lost.\n\n\
         {markdown}",
        kernel.trim(),
        json["load_average"].as_str().unwrap_or("")
    );
    std::fs::write(&path, common::replace_section(&old, "Logging", &section)).expect("write BENCHMARKS.md");
}

fn main() {
    common::bench_main("log benchmark", run, write_section);
}
