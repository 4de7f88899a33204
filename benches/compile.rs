//! Compile time (issue 14, "Fast"): `xpolc check` and `xpolc build` of
//! policies of 100 to 10,000 random rules that all stay reachable
//! (`tests/policygen::reachable_rules`, a fixed seed per size), and the
//! time to the "too large" error for a policy far over the size budget
//! (20,000 rules of one comparison, the case of the issue).
//! The goals: 1,000 rules checked in under 2 s, 10,000 in under 20 s, or a
//! located "too large" error in under 1 s when the estimate before
//! compiling already exceeds the budget.
//!
//!   cargo bench --bench compile             full run; writes the "Compile time" section of BENCHMARKS.md and bench-out/compile.json
//!   cargo bench --bench compile -- --quick  smoke run (CI): 100 and 1,000 rules and the policy far over, once each; asserts nothing about time; writes target/bench-out-quick/
//!   cargo bench --bench compile -- --baseline PATH/TO/xpolc [--baseline-label TEXT]
//!                                           also times `check` with another xpolc (an older commit's, which TEXT names) on the same policies, in the same run
//!
//! No kernel needed. Times are wall clock of the `xpolc` processes (what a
//! user waits for, process start and output included), median of
//! [`RUNS`]; where the time goes is measured once more in-process, phase
//! by phase.

#![allow(dead_code)]

#[path = "common/mod.rs"]
mod common;

#[path = "../tests/policygen/mod.rs"]
mod policygen;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xpol_compiler::BuildOptions;
use xpol_lang::maglev::SplitMix64;

impl policygen::Choice for SplitMix64 {
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Rules per measured policy.
pub const SIZES: [usize; 5] = [100, 1_000, 2_000, 5_000, 10_000];
/// Rules of the policy far over the size budget: one comparison each,
/// some six times what a program may hold.
pub const FAR_OVER: usize = 20_000;
/// Runs of each process in a full run (the median is reported).
pub const RUNS: usize = 3;
/// A run of the baseline `xpolc` longer than this is stopped.
const BASELINE_TIMEOUT: Duration = Duration::from_secs(180);
const SEED: u64 = 0x14_c0de;

pub const SECTION: &str = "Compile time";

pub struct Mode {
    /// Smoke run: two sizes and the policy far over, one run each.
    pub quick: bool,
    /// Another `xpolc` to time `check` with, on the same policies, and
    /// what it is ("xpolc at commit …").
    pub baseline: Option<PathBuf>,
    pub baseline_label: Option<String>,
}

pub struct Report {
    pub markdown: String,
    pub json: serde_json::Value,
}

/// The measured policy of `n` reachable rules on `xdp`.
pub fn policy_text(n: usize) -> String {
    policygen::reachable_rules(&mut SplitMix64(SEED ^ n as u64), "xdp", n).text()
}

/// The policy far over the budget: [`FAR_OVER`] rules `xdp /(tcp.dport ==
/// N) == true/ { drop }`, each port once.
pub fn far_over_text() -> String {
    // Compared comparisons (`== true`): rules the decision trees do not
    // take (plain equalities are one tree, far under every limit).
    (1..=FAR_OVER).map(|port| format!("xdp /(tcp.dport == {port}) == true/ {{ drop }}\n")).collect()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Wall-clock seconds of `bin args...`, and whether it succeeded; `None`
/// when it ran past `timeout` (then it is killed).
fn time_process(bin: &Path, args: &[&std::ffi::OsStr], timeout: Duration) -> (Option<f64>, bool) {
    let started = Instant::now();
    let mut child = Command::new(bin).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return (Some(started.elapsed().as_secs_f64()), status.success());
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return (None, false);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// How compiling one policy ended.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    /// Built: the `xdp` program's instructions.
    Built(usize),
    /// Refused with `code` at `line`; `early` when before LLVM ran.
    Refused { code: String, line: u32, early: bool },
}

/// One policy compiled in-process, phase by phase.
struct Phases {
    outcome: Outcome,
    /// (phase, seconds): parsing and loading, checking and lints, then
    /// codegen's own (`codegen::generate_timed`).
    phases: Vec<(String, f64)>,
}

fn compile_in_process(path: &Path) -> Phases {
    let mut sources = xpol_lang::SourceMap::new();
    let t = Instant::now();
    let loaded = xpol_compiler::load::load(path, &mut sources).unwrap_or_else(|d| panic!("the generated policy does not load: {d:?}"));
    let mut phases = vec![("parse and load".to_string(), t.elapsed().as_secs_f64())];
    let t = Instant::now();
    let ir = xpol_compiler::check::check(&loaded, &sources).unwrap_or_else(|d| panic!("the generated policy does not check: {d:?}"));
    phases.push(("check and lints".to_string(), t.elapsed().as_secs_f64()));
    let (generated, codegen) = xpol_compiler::codegen::generate_timed(&ir, &sources, &BuildOptions::default());
    phases.extend(codegen.iter().map(|(name, d)| (name.to_string(), d.as_secs_f64())));
    let outcome = match generated {
        Ok(gen) => {
            let (_, _, insns) = xpol_compiler::verifier::program_range(&gen.object, "xpol_xdp").expect("an xdp program");
            Outcome::Built(insns)
        }
        Err(errors) => {
            let e = errors.iter().find(|e| e.is_error()).expect("an error");
            let line = e.primary_span().map_or(0, |s| sources.location(s).1);
            Outcome::Refused { code: e.code.clone(), line, early: e.message.contains("refused before compiling") }
        }
    };
    Phases { outcome, phases }
}

fn median(v: &[f64]) -> f64 {
    common::median(v)
}

fn secs(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.1} s")
    }
}

fn rules_text(rules: usize) -> String {
    if rules == FAR_OVER {
        format!("{rules} of one comparison")
    } else {
        rules.to_string()
    }
}

fn outcome_text(o: &Outcome) -> String {
    match o {
        Outcome::Built(insns) => format!("built: {insns} instructions"),
        Outcome::Refused { code, line, early: true } => format!("`{code}` at line {line}, before compiling"),
        Outcome::Refused { code, line, early: false } => format!("`{code}` at line {line}, compiled"),
    }
}

/// One measured policy.
struct Measured {
    rules: usize,
    outcome: Outcome,
    check: Vec<f64>,
    build: Vec<f64>,
    baseline: Option<Option<f64>>,
    phases: Vec<(String, f64)>,
}

/// The goal a measurement answers, and whether it is met.
fn goal(m: &Measured) -> String {
    let check = median(&m.check);
    let early = matches!(m.outcome, Outcome::Refused { early: true, .. });
    let met = |ok: bool| if ok { "met" } else { "not met" };
    match m.rules {
        1_000 => format!("< 2 s: {}", met(check < 2.0)),
        10_000 if early => format!("< 20 s, or refused before compiling in < 1 s: {}", met(check < 1.0)),
        10_000 => format!("< 20 s: {}", met(check < 20.0)),
        FAR_OVER => format!("refused before compiling, located, in < 1 s: {}", met(early && check < 1.0)),
        _ => String::new(),
    }
}

pub fn run(mode: &Mode, out_dir: &Path) -> Report {
    let xpolc = PathBuf::from(env!("CARGO_BIN_EXE_xpolc"));
    let dir = tempfile::tempdir().expect("tempdir");
    let sizes: Vec<usize> = if mode.quick { vec![100, 1_000] } else { SIZES.to_vec() };
    let runs = if mode.quick { 1 } else { RUNS };
    let mut measured = Vec::new();
    for &rules in sizes.iter().chain(&[FAR_OVER]) {
        let path = dir.path().join(format!("rules-{rules}.xpol"));
        std::fs::write(&path, if rules == FAR_OVER { far_over_text() } else { policy_text(rules) }).expect("write policy");
        let object = dir.path().join(format!("rules-{rules}.o"));
        let (mut check, mut build) = (Vec::new(), Vec::new());
        // Interleaved: a check, then a build, `runs` times.
        for _ in 0..runs {
            let (t, _) = time_process(&xpolc, &["check".as_ref(), path.as_os_str()], Duration::from_secs(3600));
            check.push(t.expect("no timeout"));
            let (t, _) = time_process(&xpolc, &["build".as_ref(), "-o".as_ref(), object.as_os_str(), path.as_os_str()], Duration::from_secs(3600));
            build.push(t.expect("no timeout"));
        }
        let baseline = mode.baseline.as_ref().map(|bin| time_process(bin, &["check".as_ref(), path.as_os_str()], BASELINE_TIMEOUT).0);
        let p = compile_in_process(&path);
        eprintln!("{rules} rules: {}, check {:?}, build {:?}, baseline {baseline:?}", outcome_text(&p.outcome), check, build);
        measured.push(Measured { rules, outcome: p.outcome, check, build, baseline, phases: p.phases });
    }
    report(&measured, mode, runs, out_dir)
}

fn report(measured: &[Measured], mode: &Mode, runs: usize, out_dir: &Path) -> Report {
    let baseline_name = mode.baseline.as_ref().map(|b| b.display().to_string());
    let mut md = String::new();
    md.push_str(&format!(
        "| rules | outcome | `xpolc check` | `xpolc build` | goal |{}\n|---:|---|---:|---:|---|{}\n",
        if baseline_name.is_some() { " `xpolc check` before |" } else { "" },
        if baseline_name.is_some() { "---:|" } else { "" }
    ));
    for m in measured {
        let before = match &m.baseline {
            Some(Some(t)) => format!(" {} |", secs(*t)),
            Some(None) => format!(" > {} s (stopped) |", BASELINE_TIMEOUT.as_secs()),
            None => String::new(),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |{before}\n",
            rules_text(m.rules),
            outcome_text(&m.outcome),
            secs(median(&m.check)),
            secs(median(&m.build)),
            goal(m)
        ));
    }
    // Where the time goes: every phase that any policy has, in order.
    let mut names: Vec<&str> = Vec::new();
    for m in measured {
        for (name, _) in &m.phases {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
    }
    md.push_str(&format!("\n| rules | {} |\n|---:|{}\n", names.join(" | "), "---:|".repeat(names.len())));
    for m in measured {
        let cells: Vec<String> = names.iter().map(|n| m.phases.iter().find(|(p, _)| p == n).map_or(String::new(), |(_, s)| secs(*s))).collect();
        md.push_str(&format!("| {} | {} |\n", rules_text(m.rules), cells.join(" | ")));
    }
    let json = serde_json::json!({
        "runs": runs,
        "quick": mode.quick,
        "baseline": baseline_name,
        "policies": measured.iter().map(|m| serde_json::json!({
            "rules": m.rules,
            "policy": if m.rules == FAR_OVER { "one comparison each" } else { "policygen::reachable_rules" },
            "outcome": outcome_text(&m.outcome),
            "instructions": match m.outcome { Outcome::Built(n) => Some(n), _ => None },
            "refused": match &m.outcome { Outcome::Refused { code, line, early } => Some(serde_json::json!({"code": code, "line": line, "before_compiling": early})), _ => None },
            "check_s": m.check,
            "build_s": m.build,
            "check_median_s": median(&m.check),
            "build_median_s": median(&m.build),
            "baseline_check_s": m.baseline.map(|b| b.map_or(serde_json::Value::Null, |t| t.into())),
            "phases_s": m.phases.iter().map(|(n, s)| serde_json::json!([n, s])).collect::<Vec<_>>(),
            "goal": goal(m),
        })).collect::<Vec<_>>(),
    });
    std::fs::create_dir_all(out_dir).expect("output directory");
    std::fs::write(out_dir.join("compile.json"), serde_json::to_string_pretty(&json).expect("JSON")).expect("write compile.json");
    Report { markdown: md, json }
}

/// Replaces the "Compile time" section of BENCHMARKS.md; the others stay.
fn write_section(report: &Report, load: &(String, String), mode: &Mode) {
    let baseline = mode.baseline.as_deref();
    let commit = common::commit_label(&root(), &["compiler", "lang", "src", "benches", "tests/policygen"]);
    let machine = common::cpu_model();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let command = match (baseline, &mode.baseline_label) {
        (Some(b), Some(label)) => format!("cargo bench --bench compile -- --baseline {} --baseline-label '{label}'", b.display()),
        (Some(b), None) => format!("cargo bench --bench compile -- --baseline {}", b.display()),
        _ => "cargo bench --bench compile".to_string(),
    };
    let before = match baseline {
        Some(b) => format!(
            " The last column is `{} check`{} on the same files in the same run (once each; stopped after {} s).",
            b.display(),
            mode.baseline_label.as_ref().map_or(String::new(), |l| format!(", {l},")),
            BASELINE_TIMEOUT.as_secs()
        ),
        None => String::new(),
    };
    let section = format!(
        "## {SECTION}\n\n\
Measured with `{command}` at commit {commit} on {machine}, {cpus} CPUs, kernel {}. Load average (1, 5, 15 min) {} before the run and {} after it: the machine is shared, so other work ran beside the benchmark. Raw numbers: `bench-out/compile.json`.\n\n\
Policies of N random rules on `xdp` from `tests/policygen::reachable_rules` (a fixed seed per N), all reachable: each rule tests a port or an address of its own, alone or `&&` a random condition, mostly with a verdict (15% run random statements: `let`, `if`, `@map` updates), then `xdp {{ pass }}`. About 1,000 such rules fit in a program's 32,767 instructions. The last row is the policy far over the budget: 20,000 rules `xdp /tcp.dport == N/ {{ drop }}` (about 4,000 fit: the budget of branches the verifier keeps pending comes first). The goals (issue 14, \"Fast\"): 1,000 rules checked in under 2 s; 10,000 in under 20 s, or a located \"too large\" error in under 1 s when the estimate before compiling already exceeds the budget. *`xpolc check`* and *`xpolc build`* are the wall-clock times of the processes (what a user waits for: process start, everything up to the object or the error, the diagnostics written), median of {RUNS} runs, check and build interleaved. A policy whose rules are certain to take more than the limit (what each rule reads and tests before its first branch: `budget::SizeFloor`, a tenth to a half of what the rules take compiled) is refused while it is lowered, before LLVM runs (*before compiling*); one that is not is compiled and refused by the check on the object (*compiled*, at the rule holding the instruction past the limit): between about 1,000 and 8,000 of these rules, where most of the time is LLVM's instruction selection and register allocation (*object* below).{before}\n\n\
{}\n\
The second table is one more in-process run of each policy, phase by phase (`codegen::generate_timed`): parse and load, check and lints, then codegen: building the LLVM IR (for a policy refused before compiling, up to the refusal), LLVM's verifier, its passes (O2 up to 64 rules, `codegen::LONG_PASSES` beyond), emitting the object (instruction selection, register allocation, BTF), the budget checks on the object.\n",
        kernel.trim(),
        load.0,
        load.1,
        report.markdown
    );
    let path = root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let tmp = root().join("BENCHMARKS.md.tmp");
    std::fs::write(&tmp, common::replace_section(&old, SECTION, &section)).expect("write BENCHMARKS.md");
    std::fs::rename(&tmp, &path).expect("replace BENCHMARKS.md");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let baseline = args.iter().position(|a| a == "--baseline").map(|i| PathBuf::from(args.get(i + 1).expect("--baseline takes the path of an xpolc")));
    let baseline_label = args.iter().position(|a| a == "--baseline-label").map(|i| args.get(i + 1).expect("--baseline-label takes a text").clone());
    let mode = Mode { quick, baseline, baseline_label };
    let load_before = common::load_average();
    let out_dir = common::out_dir(&root(), quick, true);
    let report = run(&mode, &out_dir);
    let load = (load_before, common::load_average());
    println!("{}", report.markdown);
    if !quick {
        write_section(&report, &load, &mode);
    }
}
