//! Connection state (`ct.state`): what the connection table costs a
//! packet, and xpol against nftables' `ct state established` on a veth.
//! The goal of issue 16: at least 3x fewer CPU ns per packet than
//! nftables.
//!
//!   cargo bench --bench conntrack             full run; writes the "Connection state" section of BENCHMARKS.md and bench-out/conntrack.json
//!   cargo bench --bench conntrack -- --quick  smoke run (CI, tests/bench_smoke.rs); asserts nothing about time; writes target/bench-out-quick/
//!
//! Needs root. *Test runs*: each policy alone, `BPF_PROG_TEST_RUN` with
//! `repeat` on one CPU, a host firewall on connection state beside the
//! same rules without it (a TCP ACK passes as a reply); then two CPUs at
//! once on one connection (its entry written by both). *Veth*: a flood of
//! 64-byte UDP frames of one connection the receiver started, from a
//! generator namespace to a receiver namespace (both created here,
//! removed on drop, addresses in 198.18.0.0/15), through one veth pair per
//! receiver, where the receiver drops what is established: xpol in XDP,
//! nftables in an inet prerouting chain after its conntrack; the CPU time
//! per packet is the generator thread's and its CPU's ksoftirqd's, as in
//! `benches/limit.rs` (whose namespaces and generator this copies).

#![allow(dead_code)]

#[path = "common/mod.rs"]
mod common;

use common::veth::{push, Namespaces};
use common::{have, load_policy, median, sh};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Barrier};
use xpol_runtime::loader::{LoadedPolicy, XdpAttachMode};
use xpol_runtime::packet::PacketSpec;
use xpol_runtime::sys;

// A quick or full run, and what it reports: the same for every
// stateful feature's bench (tests/bench_smoke.rs runs them quick).
pub use common::{Mode, Report};
use common::root;

fn v4(s: &str) -> Ipv4Addr {
    s.parse().expect("IPv4 literal")
}

// ------------------------------------------------------------ test runs

/// The host firewall on connection state, and the same rules without it
/// (a stateless firewall lets replies in by their ACK flag).
const WITH_CT: &str = "xdp /ct.state in {established, related}/ { pass }\nxdp /ct.state == new && tcp.dport == 22/ { pass }\nxdp { drop }\n";
const WITHOUT_CT: &str = "xdp /tcp.ack/ { pass }\nxdp /tcp.dport == 22/ { pass }\nxdp { drop }\n";

/// A TC program's own cost in a test run (an skb per run) for the
/// `tc:egress` row.
const EGRESS_WITHOUT_CT: &str = "tc:egress /tcp.dport == 25/ { drop }\n";

const HOST: &str = "198.18.0.2";
const PEER: &str = "198.18.0.9";

fn tcp4(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    PacketSpec::tcp4(v4(src), v4(dst), sport, dport).flags(flags).payload(6).build()
}

/// What each test-run row runs: (name, policy, hook, packet, verdict).
struct Case {
    name: &'static str,
    policy: &'static str,
    hook: &'static str,
    packet: Vec<u8>,
    pass: bool,
}

fn cases() -> Vec<Case> {
    let v6 = |src: &str, dst: &str, sport, dport, flags| PacketSpec::tcp6(src.parse().expect("v6"), dst.parse().expect("v6"), sport, dport).flags(flags).payload(6).build();
    let quoted = PacketSpec::udp4(v4(HOST), v4(PEER), 5353, 53).build();
    let mut error = PacketSpec::icmp4(v4("198.18.1.1"), v4(HOST), 3, 3);
    let mut body = vec![3, 3, 0, 0, 0, 0, 0, 0];
    body.extend(&quoted[14..14 + 28]);
    error.l4 = xpol_runtime::packet::L4::Raw { protocol: 1, bytes: body };
    vec![
        Case { name: "without `ct.state` (`tcp.ack` passes): a reply's ACK", policy: WITHOUT_CT, hook: "xdp", packet: tcp4(PEER, HOST, 443, 40000, 0x10), pass: true },
        Case { name: "with `ct.state`: an established connection's ACK (a lookup and the entry's write)", policy: WITH_CT, hook: "xdp", packet: tcp4(PEER, HOST, 443, 40000, 0x10), pass: true },
        Case { name: "with `ct.state`: the same over IPv6", policy: WITH_CT, hook: "xdp", packet: v6("2001:db8::9", "2001:db8::2", 443, 40000, 0x10), pass: true },
        Case { name: "with `ct.state`: an unsolicited SYN-ACK (a lookup that misses; invalid, dropped)", policy: WITH_CT, hook: "xdp", packet: tcp4(PEER, HOST, 443, 40001, 0x12), pass: false },
        Case { name: "with `ct.state`: an ICMP error about the host's query (two lookups; related)", policy: WITH_CT, hook: "xdp", packet: error.build(), pass: true },
        Case { name: "without `ct.state`, `tc:egress` (`tcp.dport == 25` dropped): the host's ACK out", policy: EGRESS_WITHOUT_CT, hook: "tc:egress", packet: tcp4(HOST, PEER, 40000, 443, 0x10), pass: true },
        Case { name: "with `ct.state`, `tc:egress`: the host's ACK out (a lookup and the entry's write)", policy: WITH_CT, hook: "tc:egress", packet: tcp4(HOST, PEER, 40000, 443, 0x10), pass: true },
    ]
}

/// Makes the connections the cases run on: a TCP handshake and a DNS
/// query, through the policy's own programs.
fn connect(p: &mut LoadedPolicy) {
    if p.meta().conntrack.is_none() {
        return;
    }
    let run = |p: &mut LoadedPolicy, hook: &str, packet: Vec<u8>| assert_eq!(p.test_run(hook, &packet).expect("test run").action, xpol_runtime::loader::Action::Pass, "{hook}");
    run(p, "tc:egress", tcp4(HOST, PEER, 40000, 443, 0x02));
    run(p, "xdp", tcp4(PEER, HOST, 443, 40000, 0x12));
    run(p, "tc:egress", tcp4(HOST, PEER, 40000, 443, 0x10));
    let six = |src: &str, dst: &str, sport, dport, flags| PacketSpec::tcp6(src.parse().expect("v6"), dst.parse().expect("v6"), sport, dport).flags(flags).build();
    run(p, "tc:egress", six("2001:db8::2", "2001:db8::9", 40000, 443, 0x02));
    run(p, "xdp", six("2001:db8::9", "2001:db8::2", 443, 40000, 0x12));
    run(p, "tc:egress", PacketSpec::udp4(v4(HOST), v4(PEER), 5353, 53).build());
    // Made to last the run: nothing refreshes the query's entry (an
    // error about it does not), unanswered it would go in 30 s.
    let entries = p.maps().ct_entries().expect("entries");
    p.maps().ct_set(&entries.iter().map(|e| (e.key, e.value, 3_600_000_000_000)).collect::<Vec<_>>()).expect("set the entries");
}

fn ns_per_run(p: &LoadedPolicy, hook: &str, packet: &[u8], repeat: u32) -> f64 {
    let fd = p.program_fd(hook).expect("program");
    f64::from(sys::prog_test_run(fd, packet, None, repeat).expect("test run").duration_ns)
}

struct TestRunRow {
    name: &'static str,
    one: Vec<f64>,
    two: Vec<f64>,
}

fn test_runs(mode: &Mode, dir: &Path) -> Vec<TestRunRow> {
    let (rounds, repeat) = if mode.quick { (1, 10_000) } else { (9, 2_000_000) };
    let cases = cases();
    let mut policies: Vec<LoadedPolicy> = cases.iter().enumerate().map(|(i, c)| load_policy(dir, &format!("run{i}"), c.policy)).collect();
    for (p, c) in policies.iter_mut().zip(&cases) {
        connect(p);
        // Every case gives its verdict (the connections are there).
        let action = p.test_run(c.hook, &c.packet).expect("test run").action;
        assert_eq!(action == xpol_runtime::loader::Action::Pass, c.pass, "{}: {action:?}", c.name);
    }
    let cpus = sys::allowed_cpus().expect("CPUs");
    let pair = [cpus[0], *cpus.get(1).unwrap_or(&cpus[0])];
    let mut rows: Vec<TestRunRow> = cases.iter().map(|c| TestRunRow { name: c.name, one: Vec::new(), two: Vec::new() }).collect();
    for _ in 0..rounds {
        for ((p, c), row) in policies.iter().zip(&cases).zip(rows.iter_mut()) {
            row.one.push(sys::on_cpu(pair[0], || ns_per_run(p, c.hook, &c.packet, repeat)).expect("pinned"));
            let barrier = Arc::new(Barrier::new(2));
            let lanes: Vec<f64> = std::thread::scope(|s| {
                let handles: Vec<_> = pair
                    .iter()
                    .map(|&cpu| {
                        let (barrier, packet) = (barrier.clone(), &c.packet);
                        s.spawn(move || {
                            sys::on_cpu(cpu, || {
                                barrier.wait();
                                ns_per_run(p, c.hook, packet, repeat)
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
    // The connections are still there, as established as before.
    for (p, c) in policies.iter_mut().zip(&cases) {
        let action = p.test_run(c.hook, &c.packet).expect("test run").action;
        assert_eq!(action == xpol_runtime::loader::Action::Pass, c.pass, "{} after the runs", c.name);
    }
    rows
}

// ------------------------------------------------------------ veth

/// The flood's connection: the receiver (`RECV`, port 9) started it
/// towards `GEN` port 40000; the generator's frames are its replies.
const GEN: &str = "198.18.252.7";
const RECV: &str = "198.18.253.1";

fn frame() -> Vec<u8> {
    PacketSpec::udp4(v4(GEN), v4(RECV), 40000, 9).payload(18).build()
}

enum Peer {
    Xpol(Box<LoadedPolicy>),
    Nft { table: String },
}

impl Peer {
    /// Frames its rule dropped so far.
    fn dropped(&self, ns: &str) -> u64 {
        match self {
            Peer::Xpol(p) => p.rule_counters().expect("counters")[0].packets,
            Peer::Nft { table } => common::nft_counter_packets(ns, "inet", table, "pre").unwrap_or_else(|e| panic!("{e}")),
        }
    }
}

struct VethRow {
    peer: String,
    samples: Vec<f64>,
    frames: u64,
    dropped: u64,
}

/// Starts the flood's connection from the receiver side of pair `r`: the
/// receiver sends one datagram from `RECV`:9 to `GEN`:40000 (its own
/// stack, so that nftables' conntrack records it).
fn start_connection(recv: &str, r: &str) -> Result<(), String> {
    sh(Some(recv), "ip", &["addr", "add", &format!("{RECV}/32"), "dev", r], None)?;
    sh(Some(recv), "ip", &["route", "add", &format!("{GEN}/32"), "dev", r], None)?;
    sh(Some(recv), "ip", &["neigh", "replace", GEN, "lladdr", "02:00:00:00:00:01", "dev", r], None)?;
    let script = format!("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('{RECV}', 9)); s.sendto(b'x', ('{GEN}', 40000))");
    sh(Some(recv), "python3", &["-c", &script], None).map(|_| ())
}

fn veth(mode: &Mode, dir: &Path, skipped: &mut Vec<String>) -> Vec<VethRow> {
    let (rounds, frames) = if mode.quick { (1u32, 20_000u32) } else { (5, 2_000_000) };
    for tool in ["ethtool", "timeout", "nft", "python3"] {
        if !have(tool) {
            skipped.push(format!("veth mode: `{tool}` is not installed"));
            return Vec::new();
        }
    }
    let frame = frame();
    let cpu = *sys::allowed_cpus().expect("CPUs").last().expect("a CPU");
    let mut ns = Namespaces::new("c").expect("namespaces");
    let recv = ns.recv.clone();
    let recv_path = Namespaces::path(&recv);
    let mut gen = load_policy(dir, "generator", "xdp { tx }\n");
    let mut peers: Vec<(String, String, Peer)> = Vec::new();
    for (i, (name, text)) in [
        ("xpol, XDP: without connection state (`udp.dport == 9`, drop)", "xdp /udp.dport == 9/ { drop }\n"),
        ("xpol, XDP: `ct.state == established`, drop", "xdp /ct.state == established/ { drop }\n"),
    ]
    .iter()
    .enumerate()
    {
        let (g, r, _) = ns.pair().expect("veth pair");
        let mut p = load_policy(dir, &format!("veth{i}"), text);
        if p.meta().conntrack.is_some() {
            // The receiver's connection, recorded by the policy's own
            // tc:egress program, made to last the run (a drop does not
            // refresh an entry).
            let out = PacketSpec::udp4(v4(RECV), v4(GEN), 9, 40000).build();
            assert_eq!(p.test_run("tc:egress", &out).expect("test run").action, xpol_runtime::loader::Action::Pass);
            let entries = p.maps().ct_entries().expect("entries");
            assert_eq!(entries.len(), 1, "the connection");
            p.maps().ct_set(&entries.iter().map(|e| (e.key, e.value, 3_600_000_000_000)).collect::<Vec<_>>()).expect("set the entry");
        }
        sys::in_netns(&recv_path, None, || p.attach("xdp", &r, XdpAttachMode::Native)).expect("receiver namespace").expect("attach xpol");
        peers.push((name.to_string(), g, Peer::Xpol(Box::new(p))));
    }
    {
        let name = "nftables, inet prerouting after conntrack: `ct state established counter drop`";
        let (g, r, _) = ns.pair().expect("veth pair");
        let table = "xpolct".to_string();
        let ruleset = format!("table inet {table} {{\n  chain pre {{\n    type filter hook prerouting priority 0; policy accept;\n    iifname \"{r}\" ct state established counter drop\n  }}\n}}\n");
        let file = dir.join("ct.nft");
        std::fs::write(&file, ruleset).expect("write nft ruleset");
        sh(Some(&recv), "nft", &["-f", &file.display().to_string()], None).expect("nft loads the ruleset");
        start_connection(&recv, &r).expect("the receiver starts the connection");
        peers.push((name.to_string(), g, Peer::Nft { table }));
    }
    let gen_ns = Namespaces::path(&ns.gen);
    for (_, g, _) in &peers {
        push(&mut gen, &gen_ns, cpu, g, &frame, 1000);
    }
    let mut rows: Vec<VethRow> = peers.iter().map(|(name, _, _)| VethRow { peer: name.clone(), samples: Vec::new(), frames: 0, dropped: 0 }).collect();
    for _ in 0..rounds {
        for ((name, g, peer), row) in peers.iter().zip(rows.iter_mut()) {
            let before = peer.dropped(&recv);
            let ns_spent = push(&mut gen, &gen_ns, cpu, g, &frame, frames);
            let after = peer.dropped(&recv);
            // Every frame was established and dropped by the rule (a few
            // of the sample before may still have been queued).
            let dropped = after - before;
            assert!(dropped + 1_000 >= u64::from(frames) && dropped <= u64::from(frames) + 1_000, "{name}: {dropped} of {frames} frames dropped by the rule");
            row.samples.push(ns_spent as f64 / f64::from(frames));
            row.frames += u64::from(frames);
            row.dropped += dropped;
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
    // Each row against the first row without `ct.state` of its hook.
    let base_of = |name: &str| {
        let egress = name.contains("tc:egress");
        runs.iter().find(|r| r.name.starts_with("without") && r.name.contains("tc:egress") == egress).map_or(1.0, |r| median(&r.one))
    };
    let _ = writeln!(md, "| policy, packet | ns per run, one CPU (min-max) | vs without `ct.state` | ns per run, two CPUs on one connection, each (min-max) |");
    let _ = writeln!(md, "|---|---:|---:|---:|");
    let mut json_runs = Vec::new();
    for r in &runs {
        let (m, lo, hi) = stat(&r.one);
        let (m2, lo2, hi2) = stat(&r.two);
        let base = base_of(r.name);
        let _ = writeln!(md, "| {} | {m:.1} ({lo:.1}-{hi:.1}) | {:.2}x ({:+.1} ns) | {m2:.1} ({lo2:.1}-{hi2:.1}) |", r.name, m / base, m - base);
        json_runs.push(serde_json::json!({"case": r.name, "one_cpu_ns": r.one, "two_cpus_ns": r.two, "one_cpu_median": m, "two_cpus_median": m2}));
    }
    let mut veth_md = String::new();
    let mut json_veth = Vec::new();
    if !veth_rows.is_empty() {
        let nft = veth_rows.iter().find(|r| r.peer.starts_with("nftables")).map(|r| median(&r.samples));
        let _ = writeln!(veth_md, "| receiver | CPU ns per packet (min-max) | vs nftables | frames | dropped by the rule |");
        let _ = writeln!(veth_md, "|---|---:|---:|---:|---:|");
        for r in &veth_rows {
            let (m, lo, hi) = stat(&r.samples);
            let vs = nft.map_or(String::new(), |n| format!("{:.2}x", m / n));
            let _ = writeln!(veth_md, "| {} | {m:.0} ({lo:.0}-{hi:.0}) | {vs} | {} | {} |", r.peer, r.frames, r.dropped);
            json_veth.push(serde_json::json!({"peer": r.peer, "cpu_ns_per_packet": r.samples, "median": m, "frames": r.frames, "dropped_by_rule": r.dropped}));
        }
        let xpol = veth_rows.iter().find(|r| r.peer.contains("ct.state")).map(|r| median(&r.samples));
        let goal = match (xpol, nft) {
            (Some(x), Some(n)) => {
                let ratio = n / x;
                format!("{ratio:.1}x fewer CPU ns per packet than nftables ({})", if ratio >= 3.0 { "met" } else { "**not met**" })
            }
            _ => "not measured".to_string(),
        };
        let _ = writeln!(veth_md, "\nGoal, at least 3x fewer CPU ns per packet than nftables on an established connection's packets: {goal}.");
    }
    for s in &skipped {
        let _ = writeln!(veth_md, "\nNot measured: {s}.");
    }
    let json = serde_json::json!({"test_runs": json_runs, "veth": json_veth, "skipped": skipped, "load_average": common::load_average()});
    let markdown = format!("### Test runs\n\n{md}\n### Veth: an established connection's flood\n\n{veth_md}");
    common::write_report(out_dir, "conntrack", &json, &markdown);
    Report { markdown, json }
}

/// Replaces the "Connection state" section of BENCHMARKS.md.
fn write_section(markdown: &str, json: &serde_json::Value) {
    let path = root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let commit = common::commit_label(&root(), &["compiler", "lang", "runtime", "benches"]);
    let cpu = common::cpu_model();
    let kernel = sh(None, "uname", &["-r"], None).unwrap_or_default();
    let section = format!(
        "## Connection state\n\n\
         Measured with `cargo bench --bench conntrack` at commit {commit} on {cpu}, Linux {}, load average {} (a machine shared with other builds). Raw numbers: `bench-out/conntrack.json`. Why xpol keeps a table of its own rather than call the kernel's conntrack (`bpf_xdp_ct_lookup`): docs/conntrack.md, with its measurement in `bench/ct/`.\n\n\
         *Test runs*: `BPF_PROG_TEST_RUN` with `repeat` 2,000,000 (the kernel's mean time per run, which includes its test loop's own work per run), 9 interleaved rounds, median (min-max). The policy with `ct.state` is a host firewall (`ct.state in {{established, related}}` passes, new only to port 22, the rest dropped); without, the same rules with `tcp.ack` in place of the state (the stateless firewall's way to let replies in). The connections were made through the policy's own programs first (a handshake, a DNS query); an established packet that passes rewrites its entry's expiry (two stores). Two CPUs: both run the same case at once, on one connection, each lane's time per run: every run writes the same entry.\n\n\
         *Veth*: 64-byte UDP frames of a connection the receiver started (`{RECV}`:9 to `{GEN}`:40000, so every frame is established), pushed by an XDP program returning `XDP_TX` (test-run with `BPF_F_TEST_XDP_LIVE_FRAMES`, one CPU) out of one veth per receiver, whose rule drops them: xpol in XDP (native, veth; the connection recorded by its `tc:egress` program), nftables in an inet prerouting chain, after its conntrack (`ct state established counter drop`; the connection recorded by the receiver's own datagram). Dropping keeps the rest of the stack's work out of the numbers; so an xpol entry is not rewritten here (a drop writes nothing; the test runs above include the write). CPU ns per packet: the generator thread's run time and its CPU's ksoftirqd's (the receiver's poll runs on that CPU), over the frames; 5 rounds of 2,000,000 frames, median (min-max); the rule's counter must count every frame.\n\n\
         {markdown}",
        kernel.trim(),
        json["load_average"].as_str().unwrap_or("")
    );
    std::fs::write(&path, common::replace_section(&old, "Connection state", &section)).expect("write BENCHMARKS.md");
}

fn main() {
    common::bench_main("conntrack benchmark", run, write_section);
}
