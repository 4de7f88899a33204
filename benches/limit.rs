//! Rate limits (`limit(...)`): what a limit costs a packet, and xpol
//! against nftables' `limit rate` on a veth. The goal of issue 16: at least
//! 3x fewer CPU ns per packet than nftables.
//!
//!   cargo bench --bench limit             full run; writes the "Rate limits" section of BENCHMARKS.md and bench-out/limit.json
//!   cargo bench --bench limit -- --quick  smoke run (CI, tests/bench_smoke.rs); asserts nothing about time; writes target/bench-out-quick/
//!
//! Needs root. *Test runs*: each policy alone, `BPF_PROG_TEST_RUN` with
//! `repeat` on one CPU (the kernel's mean time per run), the same policy
//! without the limit beside it; then two CPUs at once on one bucket. *Veth*:
//! a flood of 64-byte UDP frames from a generator namespace to a receiver
//! namespace (both created here, removed on drop, addresses in
//! 198.18.0.0/15), through one veth pair per peer, where the peer drops
//! what is over a rate of 1 packet a second: xpol in XDP, nftables'
//! `limit rate over` in a netdev ingress chain; the CPU time per packet is
//! the generator thread's and its CPU's ksoftirqd's (the receiver's NAPI
//! poll runs there), as in `benches/ref_fw/veth.rs`.

#![allow(dead_code)]

#[path = "common/mod.rs"]
mod common;

use common::veth::{push, Namespaces};
use common::{have, load_policy, median, sh};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Barrier};
use xpol_runtime::loader::{LoadedPolicy, XdpAttachMode};
use xpol_runtime::packet::PacketSpec;
use xpol_runtime::sys;

// A quick or full run, and what it reports: the same for every
// stateful feature's bench (tests/bench_smoke.rs runs them quick).
pub use common::{Mode, Report};
use common::root;

/// The frame of every measurement: UDP to port 9 (discard), 64 bytes.
fn frame() -> Vec<u8> {
    PacketSpec::udp4("198.19.7.7".parse().expect("v4"), "198.19.255.1".parse().expect("v4"), 40000, 9).payload(18).build()
}

// ------------------------------------------------------------ test runs

/// The policies timed with test runs: (name, policy). Over the limit: a
/// rate of 1 a second, so that every run but the first finds the bucket
/// empty (the flood case: a read, no write); within it: 10^9 a second, so
/// that every run takes a token (a compare-and-exchange), with a burst of
/// a millisecond's tokens: a packet whose run is held up (an interrupt)
/// after it read the clock finds the bucket moved on by the other CPU's
/// packets meanwhile, and with a burst of a microsecond's it would not
/// fit.
fn test_run_policies() -> Vec<(&'static str, String)> {
    let rule = |limit: &str| format!("xdp /udp.dport == 9{limit}/ {{ drop }}\n");
    vec![
        ("no limit (`udp.dport == 9`, drop)", rule("")),
        ("one bucket, over the limit (1/s: decided by the coarse clock)", rule(" && !limit(1/s, burst: 1)")),
        ("one bucket, over the limit (1000/s: by the precise clock)", rule(" && !limit(1000/s, burst: 1)")),
        ("one bucket, within the limit", rule(" && !limit(1000000000/s, burst: 1000000)")),
        ("a bucket per source, over the limit (1/s)", rule(" && !limit(1/s, burst: 1, by: ip.src)")),
        ("a bucket per source, within the limit", rule(" && !limit(1000000000/s, burst: 1000000, by: ip.src)")),
    ]
}

/// The kernel's mean ns per run of `repeat` runs, one call.
fn ns_per_run(p: &LoadedPolicy, packet: &[u8], repeat: u32) -> f64 {
    let fd = p.program_fd("xdp").expect("program");
    f64::from(sys::prog_test_run(fd, packet, None, repeat).expect("test run").duration_ns)
}

struct TestRunRow {
    name: &'static str,
    /// One CPU: ns per run, one per round.
    one: Vec<f64>,
    /// Two CPUs at once on one bucket: each lane's ns per run, per round.
    two: Vec<f64>,
    runs: u64,
    /// Runs the rule dropped.
    dropped: u64,
}

fn test_runs(mode: &Mode, dir: &Path) -> Vec<TestRunRow> {
    let (rounds, repeat) = if mode.quick { (1, 10_000) } else { (9, 2_000_000) };
    let packet = frame();
    let policies: Vec<(&str, LoadedPolicy)> = test_run_policies().into_iter().enumerate().map(|(i, (name, text))| (name, load_policy(dir, &format!("run{i}"), &text))).collect();
    let cpus = sys::allowed_cpus().expect("CPUs");
    let pair = [cpus[0], *cpus.get(1).unwrap_or(&cpus[0])];
    let mut rows: Vec<TestRunRow> = policies.iter().map(|(name, _)| TestRunRow { name, one: Vec::new(), two: Vec::new(), runs: 0, dropped: 0 }).collect();
    for _ in 0..rounds {
        // Interleaved: each round times every policy once.
        for ((_, p), row) in policies.iter().zip(rows.iter_mut()) {
            row.one.push(sys::on_cpu(pair[0], || ns_per_run(p, &packet, repeat)).expect("pinned"));
            let barrier = Arc::new(Barrier::new(2));
            let lanes: Vec<f64> = std::thread::scope(|s| {
                let handles: Vec<_> = pair
                    .iter()
                    .map(|&cpu| {
                        let (barrier, packet) = (barrier.clone(), &packet);
                        s.spawn(move || {
                            sys::on_cpu(cpu, || {
                                barrier.wait();
                                ns_per_run(p, packet, repeat)
                            })
                            .expect("pinned")
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().expect("lane")).collect()
            });
            row.two.extend(lanes);
        }
    }
    // Every policy dropped every run (all but a few within the limit's
    // burst or rate, which pass): the limit was evaluated.
    for ((name, p), row) in policies.iter().zip(rows.iter_mut()) {
        let runs = u64::from(repeat) * (row.one.len() + row.two.len()) as u64;
        let dropped = p.rule_counters().expect("counters")[0].packets;
        (row.runs, row.dropped) = (runs, dropped);
        if name.contains("within") {
            // Nearly nothing: a run held up for longer than the burst's
            // millisecond after it read the clock (an interrupt) finds the
            // bucket moved on by the other CPU meanwhile, and is over. At
            // most one in 100,000, and a quick run's 30,000 may meet one
            // or two such interrupts too.
            assert!(dropped <= (runs / 100_000).max(2), "{name}: {dropped} of {runs} runs dropped within the limit");
            if dropped > 0 {
                eprintln!("{name}: {dropped} of {runs} runs were over the limit");
            }
        } else {
            // The burst, and what the rate lets through (1,000 a second
            // for some seconds at most).
            assert!(dropped + 100_000 >= runs && dropped <= runs, "{name}: {dropped} of {runs} runs dropped");
        }
    }
    rows
}

// ------------------------------------------------------------ veth

/// What drops the flood at the receiver side of one pair.
enum Peer {
    Xpol(Box<LoadedPolicy>),
    Nft { table: String },
}

impl Peer {
    /// Packets its rule dropped so far.
    fn dropped(&self, ns: &str) -> u64 {
        match self {
            Peer::Xpol(p) => p.rule_counters().expect("counters")[0].packets,
            Peer::Nft { table } => common::nft_counter_packets(ns, "netdev", table, "ingress").unwrap_or_else(|e| panic!("{e}")),
        }
    }
}

/// nftables' ruleset: a limit of `rate` a second (by source when
/// `keyed`) in a netdev ingress chain of `dev`.
fn nft_ruleset(table: &str, dev: &str, keyed: bool, rate: u32) -> String {
    let (set, rule) = if keyed {
        ("  set per_source { type ipv4_addr; size 65536; flags dynamic; }\n".to_string(), format!("update @per_source {{ ip saddr limit rate over {rate}/second burst 1 packets }} counter drop"))
    } else {
        (String::new(), format!("limit rate over {rate}/second burst 1 packets counter drop"))
    };
    format!("table netdev {table} {{\n{set}  chain ingress {{\n    type filter hook ingress device \"{dev}\" priority -500; policy accept;\n    {rule}\n  }}\n}}\n")
}

struct VethRow {
    peer: String,
    /// CPU ns per packet, one per round.
    samples: Vec<f64>,
    frames: u64,
    dropped: u64,
}

/// A veth pair of `ns`, with addresses (its index `i`: 198.18.251.4i+1
/// on the generator's side, +2 on the receiver's).
fn pair(ns: &mut Namespaces) -> (String, String) {
    let (g, r, i) = ns.pair().expect("veth pair");
    sh(None, "ip", &["-n", &ns.gen, "addr", "add", &format!("198.18.251.{}/30", 4 * i + 1), "dev", &g], None).expect("address");
    sh(None, "ip", &["-n", &ns.recv, "addr", "add", &format!("198.18.251.{}/30", 4 * i + 2), "dev", &r], None).expect("address");
    (g, r)
}

fn veth(mode: &Mode, dir: &Path, skipped: &mut Vec<String>) -> Vec<VethRow> {
    let (rounds, frames) = if mode.quick { (1u32, 20_000u32) } else { (5, 2_000_000) };
    for tool in ["ethtool", "timeout", "nft"] {
        if !have(tool) {
            skipped.push(format!("veth mode: `{tool}` is not installed"));
            return Vec::new();
        }
    }
    let frame = frame();
    let cpu = *sys::allowed_cpus().expect("CPUs").last().expect("a CPU");
    let mut ns = Namespaces::new("l").expect("namespaces");
    let recv = ns.recv.clone();
    let recv_path = Namespaces::path(&recv);
    let mut gen = load_policy(dir, "generator", "xdp { tx }\n");
    let mut peers: Vec<(String, String, Peer)> = Vec::new();
    let xpol_peers = [
        ("xpol, XDP: no limit (`udp.dport == 9`, drop)", "xdp /udp.dport == 9/ { drop }\n"),
        ("xpol, XDP: `!limit(1/s, burst: 1)`", "xdp /udp.dport == 9 && !limit(1/s, burst: 1)/ { drop }\n"),
        ("xpol, XDP: `!limit(1/s, burst: 1, by: ip.src)`", "xdp /udp.dport == 9 && !limit(1/s, burst: 1, by: ip.src)/ { drop }\n"),
        ("xpol, XDP: `!limit(1000/s, burst: 1)`", "xdp /udp.dport == 9 && !limit(1000/s, burst: 1)/ { drop }\n"),
    ];
    for (i, (name, text)) in xpol_peers.iter().enumerate() {
        let (g, r) = pair(&mut ns);
        let mut p = load_policy(dir, &format!("veth{i}"), text);
        sys::in_netns(&recv_path, None, || p.attach("xdp", &r, XdpAttachMode::Native)).expect("receiver namespace").expect("attach xpol");
        peers.push((name.to_string(), g, Peer::Xpol(Box::new(p))));
    }
    for (keyed, rate, name) in [
        (false, 1, "nftables, netdev ingress: `limit rate over 1/second burst 1 packets`"),
        (true, 1, "nftables, netdev ingress: `update @per_source { ip saddr limit rate over 1/second burst 1 packets }`"),
        (false, 1000, "nftables, netdev ingress: `limit rate over 1000/second burst 1 packets`"),
    ] {
        let (g, r) = pair(&mut ns);
        let table = format!("xpollimit{}{rate}", keyed as u8);
        let file = dir.join(format!("{table}.nft"));
        std::fs::write(&file, nft_ruleset(&table, &r, keyed, rate)).expect("write nft ruleset");
        sh(Some(&recv), "nft", &["-f", &file.display().to_string()], None).expect("nft loads the ruleset");
        peers.push((name.to_string(), g, Peer::Nft { table }));
    }
    let gen_ns = Namespaces::path(&ns.gen);
    // Warm-up: the first packet of each peer fits in its bucket; the rest
    // are dropped from then on.
    for (_, g, _) in &peers {
        push(&mut gen, &gen_ns, cpu, g, &frame, 1000);
    }
    let mut rows: Vec<VethRow> = peers.iter().map(|(name, _, _)| VethRow { peer: name.clone(), samples: Vec::new(), frames: 0, dropped: 0 }).collect();
    for _ in 0..rounds {
        for ((name, g, peer), row) in peers.iter().zip(rows.iter_mut()) {
            let before = peer.dropped(&recv);
            let ns_spent = push(&mut gen, &gen_ns, cpu, g, &frame, frames);
            let after = peer.dropped(&recv);
            // The rate lets a few packets through per sample (a second or
            // so of it); fewer drops than that means frames were lost
            // before the peer. A few more: frames of the sample before,
            // still queued when it ended (the receiver's poll may run in
            // ksoftirqd after the push returns).
            let dropped = after - before;
            assert!(dropped + 5_000 >= u64::from(frames) && dropped <= u64::from(frames) + 1_000, "{name}: {dropped} of {frames} frames dropped by the rule");
            row.samples.push(ns_spent as f64 / f64::from(frames));
            row.frames += u64::from(frames);
            row.dropped += after - before;
        }
    }
    drop(peers);
    drop(ns);
    rows
}

// ------------------------------------------------------------ report

pub fn run(mode: &Mode, out_dir: &Path) -> Report {
    let dir = tempfile::tempdir().expect("tempdir");
    let runs = test_runs(mode, dir.path());
    let mut skipped = Vec::new();
    let veth_rows = veth(mode, dir.path(), &mut skipped);
    let stat = |v: &[f64]| (median(v), v.iter().cloned().fold(f64::MAX, f64::min), v.iter().cloned().fold(0.0, f64::max));
    let mut md = String::new();
    let base = median(&runs[0].one);
    let _ = writeln!(md, "| policy (one rule, 64-byte UDP frames) | ns per run, one CPU (min-max) | more than without the limit | ns per run, two CPUs on one bucket, each (min-max) | runs dropped by the rule |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    let mut json_runs = Vec::new();
    for r in &runs {
        let (m, lo, hi) = stat(&r.one);
        let (m2, lo2, hi2) = stat(&r.two);
        let _ = writeln!(md, "| {} | {m:.1} ({lo:.1}-{hi:.1}) | {:+.1} ns | {m2:.1} ({lo2:.1}-{hi2:.1}) | {} of {} |", r.name, m - base, r.dropped, r.runs);
        json_runs.push(serde_json::json!({"policy": r.name, "one_cpu_ns": r.one, "two_cpus_ns": r.two, "one_cpu_median": m, "two_cpus_median": m2, "runs": r.runs, "dropped": r.dropped}));
    }
    let nft = veth_rows.iter().find(|r| r.peer.contains("`limit rate over 1/second")).map(|r| median(&r.samples));
    let nft_1000 = veth_rows.iter().find(|r| r.peer.contains("`limit rate over 1000/second")).map(|r| median(&r.samples));
    let nft_keyed = veth_rows.iter().find(|r| r.peer.contains("@per_source")).map(|r| median(&r.samples));
    let mut veth_md = String::new();
    let mut json_veth = Vec::new();
    if !veth_rows.is_empty() {
        let _ = writeln!(veth_md, "| receiver | CPU ns per packet (min-max) | vs nftables (one bucket / per source) | frames | dropped by the rule |");
        let _ = writeln!(veth_md, "|---|---:|---:|---:|---:|");
        for r in &veth_rows {
            let (m, lo, hi) = stat(&r.samples);
            let vs = match (nft, nft_keyed) {
                (Some(a), Some(b)) => format!("{:.2}x / {:.2}x", m / a, m / b),
                _ => String::new(),
            };
            let _ = writeln!(veth_md, "| {} | {m:.0} ({lo:.0}-{hi:.0}) | {vs} | {} | {} |", r.peer, r.frames, r.dropped);
            json_veth.push(serde_json::json!({"peer": r.peer, "cpu_ns_per_packet": r.samples, "median": m, "frames": r.frames, "dropped_by_rule": r.dropped}));
        }
        let goal = |name: &str, xpol: Option<f64>, nft: Option<f64>| match (xpol, nft) {
            (Some(x), Some(n)) => {
                let ratio = n / x;
                format!("{name}: {ratio:.1}x fewer CPU ns per packet than nftables ({})", if ratio >= 3.0 { "met" } else { "**not met**" })
            }
            _ => format!("{name}: not measured"),
        };
        let xpol_one = veth_rows.iter().find(|r| r.peer.contains("limit(1/s, burst: 1)`")).map(|r| median(&r.samples));
        let xpol_keyed = veth_rows.iter().find(|r| r.peer.contains("by: ip.src")).map(|r| median(&r.samples));
        let xpol_1000 = veth_rows.iter().find(|r| r.peer.contains("limit(1000/s")).map(|r| median(&r.samples));
        let _ = writeln!(
            veth_md,
            "\nGoal, at least 3x fewer CPU ns per packet than nftables: {}; {}; {}.",
            goal("one bucket at 1/s", xpol_one, nft),
            goal("a bucket per source at 1/s", xpol_keyed, nft_keyed),
            goal("one bucket at 1000/s (the precise clock for every packet)", xpol_1000, nft_1000)
        );
    }
    for s in &skipped {
        let _ = writeln!(veth_md, "\nNot measured: {s}.");
    }
    let json = serde_json::json!({"test_runs": json_runs, "veth": json_veth, "skipped": skipped, "load_average": common::load_average()});
    let markdown = format!("### Test runs\n\n{md}\n### Veth: a flood over the limit\n\n{veth_md}");
    common::write_report(out_dir, "limit", &json, &markdown);
    Report { markdown, json }
}

/// Replaces the "Rate limits" section of BENCHMARKS.md.
fn write_section(markdown: &str, json: &serde_json::Value) {
    let path = root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let commit = common::commit_label(&root(), &["compiler", "lang", "runtime", "benches"]);
    let cpu = common::cpu_model();
    let kernel = sh(None, "uname", &["-r"], None).unwrap_or_default();
    let section = format!(
        "## Rate limits\n\n\
         Measured with `cargo bench --bench limit` at commit {commit} on {cpu}, Linux {}, load average {} (a machine shared with other builds). Raw numbers: `bench-out/limit.json`.\n\n\
         *Test runs*: one rule, `BPF_PROG_TEST_RUN` with `repeat` 2,000,000 (the kernel's mean time per run, which includes its test loop's own work per run), 9 interleaved rounds, median (min-max). Over the limit: every run finds its bucket empty and only reads it, the flood case; at 1 a second the coarse clock decides (the bucket is short by more than it can lag), at 1,000 a second the precise one must (`bpf_ktime_get_ns`, the difference between the two rows). Within it (10^9 a second, a burst of a millisecond's tokens): every run takes a token with a compare-and-exchange; a run held up after it read the clock (an interrupt) for longer than the burst finds the bucket moved on by the other CPU's runs and is over, the few drops in those rows. Two CPUs: both run the same policy at once, on one bucket (one source), each lane's time per run.\n\n\
         *Veth*: 64-byte UDP frames pushed by an XDP program returning `XDP_TX` (test-run with `BPF_F_TEST_XDP_LIVE_FRAMES`, one CPU) out of one veth per receiver, into a namespace where the receiver drops what is over a rate of 1 a second (or 1,000, where xpol reads the precise clock for every packet): xpol in XDP (native, veth), nftables in a netdev ingress chain (an skb per frame). CPU ns per packet: the generator thread's run time and its CPU's ksoftirqd's (the receiver's NAPI poll runs on that CPU), over the frames; 5 rounds of 2,000,000 frames, median (min-max); the rule's counter must count every frame but those the rate lets through. The generator's and veth's own cost is in every row (the first row drops without a limit).\n\n\
         {markdown}",
        kernel.trim(),
        json["load_average"].as_str().unwrap_or("")
    );
    std::fs::write(&path, common::replace_section(&old, "Rate limits", &section)).expect("write BENCHMARKS.md");
}

fn main() {
    common::bench_main("limit benchmark", run, write_section);
}
