//! Live operation: how fast an applied policy changes. The goals of the
//! live-operation issue: at least 10,000 single set updates per second,
//! and a replace of 100,000 prefixes in under 1 s.
//!
//!   cargo bench --bench live             full run; writes the "Live operation" section of BENCHMARKS.md and bench-out/live.json
//!   cargo bench --bench live -- --quick  smoke run (CI); asserts nothing about time; writes target/bench-out-quick/
//!
//! Needs root. The policy is applied, as `bench-live-PID` in the host's
//! store, to a veth pair inside a network namespace this benchmark creates
//! (no traffic is sent); both are removed at the end, also on failure.
//! Each set update is `xpol_runtime::apply::change_set`, what `xpol set`
//! runs, without the process start.

#![allow(dead_code)]

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use xpol_runtime::apply::{self, ApplyRequest, SetChange};
use xpol_runtime::store::Store;

pub struct Mode {
    pub quick: bool,
}

pub struct Report {
    pub markdown: String,
    pub json: serde_json::Value,
}

/// The namespace and the applied policy, removed on drop.
struct Scratch {
    netns: String,
    name: String,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Ok(store) = Store::write() {
            let _ = store.delete(&self.name);
        }
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn policy_text(capacity: usize) -> String {
    format!(
        "set v4: cidr max {capacity} = {{ 203.0.113.0/24 }}\n\
         set v6: cidr = {{ 2001:db8:bad::/48 }}\n\
         set ports: int = {{ 23 }}\n\
         xdp /ip.src in v4/ {{ drop }}\n\
         xdp /ip.src in v6/ {{ drop }}\n\
         xdp /tcp.dport in ports/ {{ drop }}\n\
         xdp {{ pass }}\n"
    )
}

/// `ops` single-element changes to `set`, alternately adding and removing
/// the element `element(i)`: updates per second.
fn single_updates(store: &Store, name: &str, set: &str, ops: usize, element: impl Fn(usize) -> String) -> f64 {
    let start = Instant::now();
    let mut editor = apply::SetEditor::open(store, name, set).expect("the set");
    for i in 0..ops {
        let e = element(i / 2);
        let change = if i % 2 == 0 { SetChange::Add(vec![e]) } else { SetChange::Delete(vec![e]) };
        editor.change(store, change).unwrap_or_else(|e| panic!("{set} update {i}: {e}"));
    }
    ops as f64 / start.elapsed().as_secs_f64()
}

pub fn run(mode: &Mode, out_dir: &Path) -> Report {
    let pid = std::process::id();
    let scratch = Scratch { netns: format!("xpol-bl-{pid}"), name: format!("bench-live-{pid}") };
    ip(&["netns", "add", &scratch.netns]);
    let (va, vb) = (format!("xbl{pid}a"), format!("xbl{pid}b"));
    ip(&["-n", &scratch.netns, "link", "add", &va, "type", "veth", "peer", "name", &vb]);
    ip(&["-n", &scratch.netns, "link", "set", &va, "up"]);
    ip(&["-n", &scratch.netns, "link", "set", &vb, "up"]);

    let (prefixes, single_ops, replaces) = if mode.quick { (1_000, 20, 3) } else { (100_000, 2_000, 11) };
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("live.xpol");
    std::fs::write(&policy, policy_text(prefixes * 2)).expect("write policy");
    let build = xpol_compiler::build(&policy, &xpol_compiler::BuildOptions::default());
    let object = build.output.expect("the live policy compiles").object;
    let blocklist: Vec<String> = std::fs::read_to_string(root().join(format!("bench/ref-fw/blocklist-{}.txt", if mode.quick { 1000 } else { 100_000 })))
        .expect("the ref-fw blocklist")
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .take(prefixes)
        .collect();

    let netns = PathBuf::from("/run/netns").join(&scratch.netns);
    let name = scratch.name.clone();
    let mode_quick = mode.quick;
    let results = xpol_runtime::sys::in_netns(&netns, None, move || {
        let store = Store::write().expect("the store");
        let req = || ApplyRequest {
            name: &name,
            object: &object,
            source: "live.xpol".into(),
            interfaces: vec![vb.clone()],
            hooks: None,
            mode: xpol_runtime::loader::XdpAttachMode::Generic,
            set_contents: Default::default(),
        };
        let start = Instant::now();
        apply::apply(&store, &req()).expect("first apply");
        let first_apply_ms = start.elapsed().as_secs_f64() * 1e3;
        let replace_ms = common::median(
            &(0..replaces)
                .map(|_| {
                    let start = Instant::now();
                    apply::apply(&store, &req()).expect("replace");
                    start.elapsed().as_secs_f64() * 1e3
                })
                .collect::<Vec<f64>>(),
        );
        let ports = single_updates(&store, &name, "ports", single_ops, |i| (10_000 + i).to_string());
        let v6 = single_updates(&store, &name, "v6", single_ops, |i| format!("2001:db8:{:x}::/48", 0x100 + i));
        let v4 = single_updates(&store, &name, "v4", single_ops, |i| format!("192.0.{}.{}/32", 2 + i / 256 % 4, i % 256));
        // What one `xpol set` command costs, process start and store lock
        // included: milliseconds per command, alternately adding and
        // deleting `element`.
        let cli_ops = if mode_quick { 4 } else { 40 };
        let cli_ms = |set: &str, element: &str| {
            let start = Instant::now();
            for i in 0..cli_ops {
                let op = if i % 2 == 0 { "add" } else { "del" };
                let out = Command::new(env!("CARGO_BIN_EXE_xpol")).args(["set", &name, set, op, element]).output().expect("xpol set");
                assert!(out.status.success(), "xpol set: {}", String::from_utf8_lossy(&out.stderr));
            }
            start.elapsed().as_secs_f64() * 1e3 / f64::from(cli_ops)
        };
        drop(store);
        let cli_int_ms = cli_ms("ports", "40000");
        let store = Store::write().expect("the store");
        let start = Instant::now();
        apply::change_set(&store, &name, "v4", SetChange::Replace(blocklist.clone())).expect("replace the IPv4 set");
        let replace_set_ms = start.elapsed().as_secs_f64() * 1e3;
        let size = store.applied(&name).and_then(|a| a.current.expect("current").elements("v4")).expect("the set's elements").len();
        assert_eq!(size, blocklist.len());
        // Into the large set: /24s and /32s of 240.0.0.0/6, which the
        // blocklist does not use; the /24s fill whole /16s, the /32s
        // crowd a few /24s.
        let v4_large = single_updates(&store, &name, "v4", single_ops, |i| {
            if i % 2 == 0 { format!("{}.{}.{}.0/24", 240 + i / 65536 % 4, i / 256 % 256, i % 256) } else { format!("241.0.{}.{}/32", i / 256 % 256, i % 256) }
        });
        drop(store);
        let cli_v4_ms = cli_ms("v4", "240.0.0.7");
        serde_json::json!({
            "first_apply_ms": first_apply_ms,
            "replace_ms": replace_ms,
            "single_updates_per_s": {"int": ports, "ipv6": v6, "ipv4": v4, "ipv4_into_large_set": v4_large},
            "single_ops": single_ops,
            "replace_set_prefixes": size,
            "replace_set_ms": replace_set_ms,
            "xpol_set_command_ms": cli_int_ms,
            "xpol_set_ipv4_command_ms": cli_v4_ms,
        })
    })
    .expect("enter the namespace");
    drop(scratch);

    let r = &results;
    let ups = &r["single_updates_per_s"];
    let met = |ok: bool| if ok { "met" } else { "**not met**" };
    let markdown = format!(
        "| measure | result | goal |\n|---|---:|---|\n\
         | first `xpol apply` (load, verify, pin, attach) | {:.0} ms | |\n\
         | replace (`xpol apply` over itself), median of {replaces} | {:.0} ms | |\n\
         | single updates of an int set (`xpol set … add/del`, one held `SetEditor`) | {:.0} /s | ≥ 10,000/s: {} |\n\
         | single updates of an IPv6 set | {:.0} /s | ≥ 10,000/s: {} |\n\
         | single updates of an IPv4 set | {:.0} /s | ≥ 10,000/s: {} |\n\
         | replace of the IPv4 set with {} prefixes | {:.0} ms | < 1 s: {} |\n\
         | single updates of the IPv4 set holding them | {:.0} /s | ≥ 10,000/s: {} |\n\
         | one `xpol set … add` command, int set (process start, store lock, update) | {:.1} ms | |\n\
         | one `xpol set … add` command, IPv4 set of {} prefixes | {:.1} ms | |\n",
        r["first_apply_ms"].as_f64().unwrap_or(0.0),
        r["replace_ms"].as_f64().unwrap_or(0.0),
        ups["int"].as_f64().unwrap_or(0.0),
        met(ups["int"].as_f64().unwrap_or(0.0) >= 10_000.0),
        ups["ipv6"].as_f64().unwrap_or(0.0),
        met(ups["ipv6"].as_f64().unwrap_or(0.0) >= 10_000.0),
        ups["ipv4"].as_f64().unwrap_or(0.0),
        met(ups["ipv4"].as_f64().unwrap_or(0.0) >= 10_000.0),
        r["replace_set_prefixes"],
        r["replace_set_ms"].as_f64().unwrap_or(0.0),
        met(r["replace_set_ms"].as_f64().unwrap_or(f64::INFINITY) < 1000.0),
        ups["ipv4_into_large_set"].as_f64().unwrap_or(0.0),
        met(ups["ipv4_into_large_set"].as_f64().unwrap_or(0.0) >= 10_000.0),
        r["xpol_set_command_ms"].as_f64().unwrap_or(0.0),
        r["replace_set_prefixes"],
        r["xpol_set_ipv4_command_ms"].as_f64().unwrap_or(0.0),
    );
    std::fs::create_dir_all(out_dir).expect("output directory");
    std::fs::write(out_dir.join("live.json"), serde_json::to_string_pretty(&results).expect("JSON")).expect("write live.json");
    Report { markdown, json: results }
}

/// Replaces the "Live operation" section of BENCHMARKS.md, up to the next
/// level-2 heading: the sections after it (`benches/lb.rs`) stay.
fn write_section(markdown: &str) {
    let path = root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let commit = common::commit_label(&root(), &["compiler", "lang", "runtime", "benches"]);
    let section = format!(
        "## Live operation\n\nMeasured with `cargo bench --bench live` at commit {commit}: a policy with an IPv4 set, an IPv6 set and an int set applied (XDP, generic) to a veth in a namespace of the benchmark's own; each update is `apply::change_set`, what `xpol set` runs, without starting a process. Every update is atomic for the packet path (see README, \"Protect a host\"). Integers and MACs change in place, one map update each; a single IPv4 prefix changes in place too, copy on write in the shared prefix tables (a /16's new chunks, then its root entry in one store; the set here is declared `max 200000`), and so does a single IPv6 prefix in the shared IPv6 tables (the deepest entries whose regions hold it get a new subtree in free nodes and tails, then one store each; `runtime/src/ipv6_edit.rs`). A replace loads the policy again with the new contents and switches to it. Each update alternately adds and deletes. Raw numbers: `bench-out/live.json`.\n\n{markdown}"
    );
    std::fs::write(&path, common::replace_section(&old, "Live operation", &section)).expect("write BENCHMARKS.md");
}

fn main() {
    if !xpol_runtime::testing::kernel_or_skip("live benchmark") {
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let out = if quick { root().join("target/bench-out-quick") } else { root().join("bench-out") };
    let report = run(&Mode { quick }, &out);
    println!("{}", report.markdown);
    if !quick {
        write_section(&report.markdown);
    }
}
