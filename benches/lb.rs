//! The load-balancer benchmark, one section per part:
//!
//! - `maglev` (`lb/maglev.rs`): userspace, no kernel: how evenly Maglev
//!   tables share flows, how many move when a backend leaves or joins, how
//!   long a table takes to build.
//!
//!   cargo bench --bench lb             full run; writes its sections of BENCHMARKS.md and bench-out/lb.json, bench-out/lb.md
//!   cargo bench --bench lb -- --quick  smoke run (CI): samples, asserts nothing about time; writes target/bench-out-quick/
//!
//! A section that needs the kernel calls `xpol_runtime::testing::kernel_or_skip`
//! itself, so that the userspace sections run anywhere.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

#[path = "common/mod.rs"]
mod common;
pub use common::replace_section;

#[path = "lb/maglev.rs"]
mod maglev;

pub struct Mode {
    /// Smoke run: samples instead of every case, one run per timing.
    pub quick: bool,
}

/// One section of the report.
pub struct Section {
    /// Its key in lb.json.
    pub key: &'static str,
    /// Its heading in BENCHMARKS.md (level 2), which the full run replaces.
    pub heading: &'static str,
    /// Its body: text and tables, level-3 headings at most.
    pub markdown: String,
    pub json: serde_json::Value,
}

pub struct Report {
    pub sections: Vec<Section>,
}

impl Report {
    pub fn section(&self, key: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.key == key)
    }

    pub fn markdown(&self) -> String {
        self.sections.iter().map(|s| format!("## {}\n\n{}", s.heading, s.markdown)).collect::<Vec<_>>().join("\n")
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn run(mode: &Mode, out_dir: &Path) -> Report {
    let sections = vec![maglev::run(mode)];
    let report = Report { sections };
    let json = serde_json::json!({
        "quick": mode.quick,
        "sections": report.sections.iter().map(|s| (s.key.to_string(), s.json.clone())).collect::<serde_json::Map<_, _>>(),
    });
    std::fs::create_dir_all(out_dir).expect("output directory");
    std::fs::write(out_dir.join("lb.json"), serde_json::to_string_pretty(&json).expect("JSON")).expect("write lb.json");
    std::fs::write(out_dir.join("lb.md"), report.markdown()).expect("write lb.md");
    report
}

/// `load`: the load average (1, 5, 15 min) before and after the run.
fn write_sections(report: &Report, load: &(String, String)) {
    let commit = common::commit_label(&root(), &["lang", "benches"]);
    let machine = common::cpu_model();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let path = root().join("BENCHMARKS.md");
    let mut doc = std::fs::read_to_string(&path).unwrap_or_default();
    for s in &report.sections {
        let section = format!(
            "## {}\n\nMeasured with `cargo bench --bench lb` at commit {commit} on {machine}, {cpus} CPUs. Load average (1, 5, 15 min) {} before the run and {} after it: the machine is shared, so other work ran beside the benchmark. Raw numbers: `bench-out/lb.json`.\n\n{}",
            s.heading, load.0, load.1, s.markdown
        );
        doc = replace_section(&doc, s.heading, &section);
    }
    std::fs::write(&path, doc).expect("write BENCHMARKS.md");
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // A quick run's numbers mean nothing: keep them out of the repository.
    let out = if quick { root().join("target/bench-out-quick") } else { root().join("bench-out") };
    let load_before = common::load_average();
    let report = run(&Mode { quick }, &out);
    let load = (load_before, common::load_average());
    println!("{}", report.markdown());
    if !quick {
        write_sections(&report, &load);
    }
}
