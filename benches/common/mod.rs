//! What the benchmarks share: running tools in namespaces, the CPU
//! accounting of veth runs, statistics, and their sections of
//! BENCHMARKS.md. Included by each bench (`#[path = "common/mod.rs"]`),
//! which uses what it needs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs `cmd args...` under `timeout`, in namespace `ns` when given; the
/// output, or the error in words.
pub fn sh(ns: Option<&str>, cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut c = Command::new("timeout");
    c.arg("120");
    if let Some(ns) = ns {
        c.args(["ip", "netns", "exec", ns]);
    }
    c.arg(cmd).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = c.spawn().map_err(|e| format!("{cmd}: {e}"))?;
    if let Some(input) = stdin {
        use std::io::Write as _;
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).map_err(|e| format!("{cmd}: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{cmd} {}: {}{}", args.join(" "), String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout)))
    }
}

/// Whether `tool` is on the PATH.
pub fn have(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Run time in ns of a task, from its schedstat file.
pub fn runtime_ns(schedstat: &Path) -> u64 {
    std::fs::read_to_string(schedstat).ok().and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok())).unwrap_or(0)
}

/// Busy time of one CPU from /proc/stat, in ns.
pub fn cpu_busy_ns(cpu: usize) -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let name = format!("cpu{cpu}");
    let Some(line) = stat.lines().find(|l| l.split_whitespace().next() == Some(&name)) else { return 0 };
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal ...; USER_HZ = 100.
    let busy = f[0] + f[1] + f[2] + f[5] + f[6] + f.get(7).copied().unwrap_or(0);
    busy * 10_000_000
}

pub fn ksoftirqd(cpu: usize) -> Option<PathBuf> {
    let want = format!("ksoftirqd/{cpu}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == want).then(|| e.path().join("schedstat"))
    })
}

/// The median of `v` (the upper one of an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

/// `doc` with the level-2 section `heading` replaced by `section` (its
/// heading included), up to the next level-2 heading; appended when
/// `doc` has no such section. The other benchmarks' sections stay.
pub fn replace_section(doc: &str, heading: &str, section: &str) -> String {
    let marker = format!("\n## {heading}\n");
    match doc.find(&marker) {
        Some(at) => {
            let body = at + marker.len();
            let end = doc[body..].find("\n## ").map_or(doc.len(), |e| body + e);
            format!("{}\n\n{}\n{}", doc[..at].trim_end(), section.trim_end(), &doc[end..])
        }
        None => format!("{}\n\n{}\n", doc.trim_end(), section.trim_end()),
    }
}

/// The load average (1, 5, 15 min), as the reports quote it.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Where a run writes its numbers: a quick run's mean nothing and a
/// partial run's are not the table, so both stay out of the repository.
pub fn out_dir(root: &Path, quick: bool, complete: bool) -> PathBuf {
    if quick {
        root.join("target/bench-out-quick")
    } else if !complete {
        root.join("target/bench-out-partial")
    } else {
        root.join("bench-out")
    }
}

/// The commit a run measured, as the reports name it: the short hash,
/// and which of `paths` (of the repository at `root`) differ from it
/// when some do, since then the numbers are not that commit's.
pub fn commit_label(root: &Path, paths: &[&str]) -> String {
    let git = |args: &[&str]| Command::new("git").arg("-C").arg(root).args(args).output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    let mut diff = vec!["diff", "--name-only", "HEAD", "--"];
    diff.extend_from_slice(paths);
    let dirty = git(&diff);
    if dirty.is_empty() {
        commit
    } else {
        format!("{commit} (plus uncommitted changes to {})", dirty.lines().collect::<Vec<_>>().join(", "))
    }
}

/// The CPU's model name, from /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_default()
}

pub mod veth;
pub mod classbench;

/// Compiles policy text (written to `dir/NAME.xpol`) and loads it.
pub fn load_policy(dir: &Path, name: &str, text: &str) -> xpol_runtime::loader::LoadedPolicy {
    let path = dir.join(format!("{name}.xpol"));
    std::fs::write(&path, text).expect("write policy");
    let b = xpol_compiler::build(&path, &xpol_compiler::BuildOptions::default());
    let out = b.output.unwrap_or_else(|| panic!("{name}: {}", xpol_lang::render::render_human(&b.diagnostics, &b.sources, false)));
    xpol_runtime::loader::LoadedPolicy::load(&out.object).unwrap_or_else(|e| panic!("{name} loads: {e}"))
}

/// The packets counted by the first `counter` of nftables chain `family
/// table chain` in namespace `ns`.
pub fn nft_counter_packets(ns: &str, family: &str, table: &str, chain: &str) -> Result<u64, String> {
    let out = sh(Some(ns), "nft", &["-j", "list", "chain", family, table, chain], None)?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("rule"))
        .flat_map(|r| r["expr"].as_array().cloned().unwrap_or_default())
        .find_map(|e| e.get("counter").and_then(|c| c["packets"].as_u64()))
        .ok_or_else(|| format!("no counter in {out}"))
}

/// How a stateful feature's bench runs (rate limits, connection state,
/// logging, dynamic sets, SYN proxy): `quick` for the smoke run in
/// tests/bench_smoke.rs.
pub struct Mode {
    pub quick: bool,
}

/// What such a bench reports: the section for BENCHMARKS.md and the raw
/// numbers.
pub struct Report {
    pub markdown: String,
    pub json: serde_json::Value,
}

/// The repository.
pub fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Writes a bench's raw numbers and its section (NAME.json, NAME.md) in
/// `out_dir`.
pub fn write_report(out_dir: &std::path::Path, name: &str, json: &serde_json::Value, markdown: &str) {
    std::fs::create_dir_all(out_dir).expect("output directory");
    std::fs::write(out_dir.join(format!("{name}.json")), serde_json::to_string_pretty(json).expect("JSON")).expect("write the JSON report");
    std::fs::write(out_dir.join(format!("{name}.md")), markdown).expect("write the markdown report");
}

/// The `main` of a stateful feature's bench: skips loudly without BPF;
/// `--quick` for a smoke run, which leaves BENCHMARKS.md as it is; a full
/// run writes its section there.
pub fn bench_main(what: &str, run: fn(&Mode, &std::path::Path) -> Report, write_section: fn(&str, &serde_json::Value)) {
    if !xpol_runtime::testing::kernel_or_skip(what) {
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let out = out_dir(&root(), quick, true);
    let report = run(&Mode { quick }, &out);
    println!("{}", report.markdown);
    if !quick {
        write_section(&report.markdown, &report.json);
    }
}
