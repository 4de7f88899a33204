//! Policy analysis (issue 19, "Fast"): `xpolc diff` of two ClassBench
//! policies of 10,000 rules (bench/classbench/fw1-10000.rules, written as
//! xpol rules) that differ by one rule changed, one moved and one removed.
//! The goal: under 10 s. Also `xpolc query` on the same policy.
//!
//!   cargo bench --bench analysis             full run; writes the "Policy analysis" section of BENCHMARKS.md and bench-out/analysis.json
//!   cargo bench --bench analysis -- --quick  smoke run (CI): the 1,000-rule set; asserts nothing about time; writes target/bench-out-quick/
//!
//! No kernel needed. Times are in-process wall clock: checking both
//! versions (parse, load, check, lints), and the analysis itself.

#![allow(dead_code)]

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;
use common::classbench::rule_text;
use xpol_compiler::analysis::{self, Budget, DiffOptions};

pub const SECTION: &str = "Policy analysis";
/// The goal of issue 19 for the 10,000-rule diff, in seconds.
pub const GOAL_SECS: f64 = 10.0;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The policy of a `.rules` file, and the edited version: rule N/2
/// changed (its verdict flipped), rule N/100 moved to 4N/5, rule 7N/10
/// removed.
pub fn policies(rules_file: &Path) -> (String, String) {
    let text = std::fs::read_to_string(rules_file).expect("rules file");
    let rules: Vec<String> = text.lines().filter_map(rule_text).collect();
    let n = rules.len();
    let mut new = rules.clone();
    let flip = |r: &str| if r.ends_with("{ drop }") { r.replace("{ drop }", "{ pass }") } else { r.replace("{ pass }", "{ drop }") };
    new[n / 2] = flip(&new[n / 2]);
    new.remove(7 * n / 10);
    let moved = new.remove(n / 100);
    new.insert(4 * n / 5, moved);
    let join = |v: &[String]| v.join("\n") + "\n";
    (join(&rules), join(&new))
}

pub struct Measured {
    pub rules: usize,
    pub check_secs: f64,
    pub diff_secs: f64,
    pub regions: usize,
    pub changed_rules: usize,
    pub query_secs: f64,
    pub query_answers: usize,
}

pub fn measure(rules_file: &Path) -> Measured {
    let (old, new) = policies(rules_file);
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Instant::now();
    let a = xpol_compiler::check_text(&dir.path().join("old.xpol"), old);
    let b = xpol_compiler::check_text(&dir.path().join("new.xpol"), new);
    let check_secs = t.elapsed().as_secs_f64();
    let (ia, ib) = (a.ir.expect("old checks"), b.ir.expect("new checks"));
    let t = Instant::now();
    let d = analysis::diff(&ia, &a.sources, &ib, &b.sources, DiffOptions::default(), Budget::default()).expect("diff within budget");
    let diff_secs = t.elapsed().as_secs_f64();
    // A query: what can TCP to port 22 from outside 10.0.0.0/8 get?
    let q = xpol_compiler::check_text(&dir.path().join("q.xpol"), "xdp /tcp.dport == 22 && ip.src !in 10.0.0.0/8/ { pass }\n".to_string());
    let qir = q.ir.expect("query checks");
    let pred = qir.programs[0].probes[0].predicate.clone().expect("predicate");
    let t = Instant::now();
    let answers = analysis::query(&ia, &a.sources, xpol_lang::ast::Hook::Xdp, &pred, Budget::default()).expect("query within budget");
    let query_secs = t.elapsed().as_secs_f64();
    Measured { rules: ia.rules.len(), check_secs, diff_secs, regions: d.regions.len(), changed_rules: d.changed_rules, query_secs, query_answers: answers.len() }
}

pub fn run(quick: bool) -> (String, serde_json::Value) {
    let file = if quick { "fw1-1000.rules" } else { "fw1-10000.rules" };
    let m = measure(&root().join("bench/classbench").join(file));
    let total = m.check_secs + m.diff_secs;
    let met = if total < GOAL_SECS { "met" } else { "not met" };
    let markdown = format!(
        "| rules | check both | diff | total | goal (< {GOAL_SECS} s) | rules compared | regions | query | answers |\n|---|---|---|---|---|---|---|---|---|\n| {} | {:.2} s | {:.2} s | {:.2} s | {met} | {} | {} | {:.2} s | {} |\n",
        m.rules, m.check_secs, m.diff_secs, total, m.changed_rules, m.regions, m.query_secs, m.query_answers
    );
    let json = serde_json::json!({
        "rules_file": file, "rules": m.rules, "check_secs": m.check_secs, "diff_secs": m.diff_secs, "total_secs": total,
        "goal_secs": GOAL_SECS, "goal_met": total < GOAL_SECS, "changed_rules": m.changed_rules, "regions": m.regions,
        "query_secs": m.query_secs, "query_answers": m.query_answers,
    });
    (markdown, json)
}

fn git(args: &[&str]) -> String {
    std::process::Command::new("git").args(args).current_dir(root()).output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let load_before = common::load_average();
    let out_dir = common::out_dir(&root(), quick, true);
    let (markdown, json) = run(quick);
    println!("{markdown}");
    std::fs::create_dir_all(&out_dir).expect("create the output directory");
    std::fs::write(out_dir.join("analysis.json"), serde_json::to_string_pretty(&json).expect("json")).expect("write analysis.json");
    if quick {
        return;
    }
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let section = format!(
        "## {SECTION}\n\n\
Measured with `cargo bench --bench analysis` at commit {commit}, {cpus} CPUs; load average {load_before} before the run, {} after (a shared machine). Raw numbers: `bench-out/analysis.json`.\n\n\
`xpolc diff` of two versions of ClassBench `fw1-10000` (bench/classbench/, from ../shared/data/classbench/: 10,000 rules, each `xdp /ip4.src in A && ip4.dst in B && ip.proto == P && tcp.dport in X..Y .../ {{ drop|pass }}`), the second with rule 5,000 changed (its verdict flipped), rule 100 moved to position 8,000 and rule 7,000 removed. The goal (issue 19, \"Fast\"): under {GOAL_SECS} s. *check both* is parsing and checking both versions (lints included, the exact lints, shadowed then redundant, spending their budget on each); *diff* is the analysis: aligning the rules, then the first-match walk of both versions over the packets the unaligned rules decide, the regions described and an example packet made for each. *query* is `xpolc query` of `tcp.dport == 22 && ip.src !in 10.0.0.0/8` on the first version (the walk over the whole program). In-process wall clock, one run.\n\n{markdown}\n\
Why the query takes {:.0} s when the diff takes {:.0}: a diff walks only the packets some changed rule decides, a query the whole program over its predicate's packets. `tcp.dport == 22 && ip.src !in 10.0.0.0/8` meets most of the rules, and each rule's address prefixes cut what is left of it: the remaining space grows to thousands of cubes ({} answer regions in the end), and every rule is tested against every one of them (`analysis::walk`: a bounding-box test per cube, then intersection and subtraction where it meets), so the cost is rules x fragments, cube operations over 33 dimensions. Indexing the remaining cubes by one dimension (as the rule classifier buckets rules) would skip most tests; it is not done.\n",
        common::load_average(),
        json["query_secs"].as_f64().unwrap_or(0.0),
        json["diff_secs"].as_f64().unwrap_or(0.0),
        json["query_answers"],
    );
    let path = root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let tmp = root().join("BENCHMARKS.md.tmp");
    std::fs::write(&tmp, common::replace_section(&old, SECTION, &section)).expect("write BENCHMARKS.md");
    std::fs::rename(&tmp, &path).expect("replace BENCHMARKS.md");
}
