//! The SYN proxy (`synproxy(...)`): what answering a SYN with a cookie in
//! XDP costs, and xpol against nftables' `synproxy` alone on a veth under
//! a SYN flood. The goal of issue 16: at least 3x fewer CPU ns per packet
//! than nftables.
//!
//!   cargo bench --bench synproxy             full run; writes the "SYN proxy" section of BENCHMARKS.md and bench-out/synproxy.json
//!   cargo bench --bench synproxy -- --quick  smoke run (CI, tests/bench_smoke.rs); asserts nothing about time; writes target/bench-out-quick/
//!
//! Needs root. *Test runs*: `BPF_PROG_TEST_RUN`. A SYN is rewritten in
//! place into its SYN-ACK, so a run with `repeat` would answer it once and
//! then see its own SYN-ACK: SYN rows are runs of one (the kernel's time
//! for the one run, which includes reading its clock), beside a policy
//! that sends the SYN back unchanged (`tx`) measured the same way; the
//! ACK rows (nothing rewritten) use `repeat`. *Veth*: a flood of one SYN
//! (with a Linux client's options; a C generator writes it into each
//! frame again) from a generator namespace to a
//! receiver namespace (both created here, removed on drop, addresses in
//! 198.18.0.0/15), through one veth pair per receiver: xpol's synproxy in
//! XDP (native; the SYN-ACK sent back with `XDP_TX`), or nftables'
//! `synproxy` alone (SYNs `notrack`, the statement in an input chain; it
//! answers from the stack). The CPU time per packet is the generator
//! thread's and its CPU's ksoftirqd's, as in `benches/limit.rs`.

#![allow(dead_code)]

#[path = "common/mod.rs"]
mod common;

use common::veth::{push_with, Namespaces};
use common::{have, load_policy, median, sh};
use etherparse::{PacketBuilder, PacketHeaders, TcpOptionElement, TransportHeader};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use xpol_runtime::loader::{Action, LoadedPolicy, XdpAttachMode};
use xpol_runtime::sys;

// A quick or full run, and what it reports: the same for every
// stateful feature's bench (tests/bench_smoke.rs runs them quick).
pub use common::{Mode, Report};
use common::root;

const GEN: [u8; 4] = [198, 18, 252, 7];
const RECV: [u8; 4] = [198, 18, 253, 1];
const GEN6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
const RECV6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const PORT: u16 = 8080;

const PROXY: &str = "xdp /tcp.dport == 8080/ { synproxy(mss: 1460, wscale: 7) }\nxdp { pass }\n";
const BOUNCE: &str = "xdp /tcp.dport == 8080/ { tx }\nxdp { pass }\n";
const DROP: &str = "xdp /tcp.dport == 8080/ { drop }\nxdp { pass }\n";

/// A TCP segment from the generator to the receiver's port 8080.
fn segment(v6: bool, seq: u32, ack: Option<u32>, options: &[TcpOptionElement]) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let ip = if v6 { eth.ipv6(GEN6, RECV6, 64) } else { eth.ipv4(GEN, RECV, 64) };
    let mut tcp = ip.tcp(40000, PORT, seq, 64240);
    tcp = match ack {
        Some(a) => tcp.ack(a),
        None => tcp.syn(),
    };
    let mut out = Vec::new();
    tcp.options(options).expect("options fit").write(&mut out, &[]).expect("write");
    out
}

/// A Linux client's SYN: MSS, SACK-permitted, timestamp, window scale.
fn syn(v6: bool) -> Vec<u8> {
    segment(v6, 1000, None, &[TcpOptionElement::MaximumSegmentSize(1460), TcpOptionElement::SelectiveAcknowledgementPermitted, TcpOptionElement::Timestamp(77, 0), TcpOptionElement::Noop, TcpOptionElement::WindowScale(7)])
}

/// The client's ACK of the SYN-ACK `p` gives `syn`: its cookie, valid for
/// a minute or more.
fn valid_ack(p: &mut LoadedPolicy, v6: bool) -> Vec<u8> {
    let out = p.test_run("xdp", &syn(v6)).expect("test run");
    assert_eq!(out.action, Action::Tx, "the SYN is answered");
    let h = PacketHeaders::from_ethernet_slice(&out.packet).expect("a SYN-ACK");
    let Some(TransportHeader::Tcp(t)) = h.transport else { panic!("TCP") };
    let ts = t.options_iterator().find_map(|o| match o {
        Ok(TcpOptionElement::Timestamp(a, _)) => Some(a),
        _ => None,
    });
    segment(v6, 1001, Some(t.sequence_number.wrapping_add(1)), &[TcpOptionElement::Noop, TcpOptionElement::Noop, TcpOptionElement::Timestamp(78, ts.unwrap_or(0))])
}

struct Case {
    name: &'static str,
    policy: &'static str,
    packet: Vec<u8>,
    action: Action,
    /// Runs of one (the packet is rewritten in place).
    single: bool,
}

fn ns_per_run(p: &LoadedPolicy, packet: &[u8], repeat: u32, single: bool) -> f64 {
    let fd = p.program_fd("xdp").expect("program");
    if single {
        let total: u64 = (0..repeat).map(|_| sys::prog_test_run(fd, packet, None, 1).expect("test run").duration_ns as u64).sum();
        total as f64 / f64::from(repeat)
    } else {
        f64::from(sys::prog_test_run(fd, packet, None, repeat).expect("test run").duration_ns)
    }
}

struct RunRow {
    name: &'static str,
    samples: Vec<f64>,
}

fn test_runs(mode: &Mode, dir: &Path) -> Vec<RunRow> {
    let (rounds, repeat, singles) = if mode.quick { (1, 10_000, 2_000) } else { (9, 2_000_000, 200_000) };
    let mut proxy = load_policy(dir, "proxy", PROXY);
    let ack4 = valid_ack(&mut proxy, false);
    let ack6 = valid_ack(&mut proxy, true);
    let mut forged = ack4.clone();
    // Another acknowledgement number: no cookie of ours.
    forged[14 + 20 + 8] ^= 0x55;
    let cases = vec![
        Case { name: "`tx` (the SYN sent back unchanged), runs of one", policy: BOUNCE, packet: syn(false), action: Action::Tx, single: true },
        Case { name: "`synproxy`: a SYN answered (IPv4), runs of one", policy: PROXY, packet: syn(false), action: Action::Tx, single: true },
        Case { name: "`synproxy`: a SYN answered (IPv6), runs of one", policy: PROXY, packet: syn(true), action: Action::Tx, single: true },
        Case { name: "`drop` (no synproxy): the ACK", policy: DROP, packet: ack4.clone(), action: Action::Drop, single: false },
        Case { name: "`synproxy`: an ACK with a valid cookie (passed, IPv4)", policy: PROXY, packet: ack4, action: Action::Pass, single: false },
        Case { name: "`synproxy`: an ACK with a valid cookie (passed, IPv6)", policy: PROXY, packet: ack6, action: Action::Pass, single: false },
        Case { name: "`synproxy`: an ACK with no valid cookie (dropped)", policy: PROXY, packet: forged, action: Action::Drop, single: false },
    ];
    let mut policies: Vec<LoadedPolicy> = cases.iter().enumerate().map(|(i, c)| load_policy(dir, &format!("run{i}"), c.policy)).collect();
    for (p, c) in policies.iter_mut().zip(&cases) {
        assert_eq!(p.test_run("xdp", &c.packet).expect("test run").action, c.action, "{}", c.name);
    }
    let cpu = sys::allowed_cpus().expect("CPUs")[0];
    let mut rows: Vec<RunRow> = cases.iter().map(|c| RunRow { name: c.name, samples: Vec::new() }).collect();
    for _ in 0..rounds {
        for ((p, c), row) in policies.iter().zip(&cases).zip(rows.iter_mut()) {
            let n = if c.single { singles } else { repeat };
            row.samples.push(sys::on_cpu(cpu, || ns_per_run(p, &c.packet, n, c.single)).expect("pinned"));
        }
    }
    rows
}

// ------------------------------------------------------------ veth

enum Peer {
    Xpol(Box<LoadedPolicy>),
    Nft { table: String },
}

impl Peer {
    /// SYNs its rule took so far.
    fn answered(&self, ns: &str) -> u64 {
        match self {
            Peer::Xpol(p) => p.rule_counters().expect("counters")[0].packets,
            Peer::Nft { table } => common::nft_counter_packets(ns, "inet", table, "input").unwrap_or_else(|e| panic!("{e}")),
        }
    }
}

struct VethRow {
    peer: String,
    samples: Vec<f64>,
    frames: u64,
    answered: u64,
}

fn dotted(a: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
}

/// The generator: writes the SYN into its frame each time, then sends it
/// (`XDP_TX`). The live-frames test run hands its pages to the receiver
/// by reference and does not write them again when they come back, so
/// after a receiver that rewrites the SYN in place (the synproxy) an
/// `xdp { tx }` generator sent that receiver's SYN-ACKs.
fn generator_source(frame: &[u8]) -> String {
    let bytes: Vec<String> = frame.iter().map(|b| format!("{b:#04x}")).collect();
    format!(
        "struct xdp_md {{ unsigned int data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex; }};\n\
         #define SEC(n) __attribute__((section(n), used))\n\
         static const unsigned char syn[{n}] = {{ {list} }};\n\
         SEC(\"xdp\") int gen_syn(struct xdp_md *ctx) {{\n\
         \tvoid *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;\n\
         \tif (data + {n} > end) return 1; /* XDP_DROP */\n\
         \t__builtin_memcpy(data, syn, {n});\n\
         \treturn 3; /* XDP_TX */\n\
         }}\n\
         char _license[] SEC(\"license\") = \"GPL\";\n",
        n = frame.len(),
        list = bytes.join(", ")
    )
}

fn clang_generator(dir: &Path, frame: &[u8]) -> Result<PathBuf, String> {
    let c = dir.join("gen_syn.c");
    let o = dir.join("gen_syn.o");
    std::fs::write(&c, generator_source(frame)).map_err(|e| e.to_string())?;
    let out = std::process::Command::new("clang-14").args(["-O2", "-target", "bpf", "-c"]).arg(&c).arg("-o").arg(&o).output().map_err(|e| format!("clang-14: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(o)
}

fn veth(mode: &Mode, dir: &Path, skipped: &mut Vec<String>) -> Vec<VethRow> {
    let (rounds, frames) = if mode.quick { (1u32, 20_000u32) } else { (5, 1_000_000) };
    for tool in ["ethtool", "nft", "clang-14"] {
        if !have(tool) {
            skipped.push(format!("veth mode: `{tool}` is not installed"));
            return Vec::new();
        }
    }
    let frame = syn(false);
    let cpu = *sys::allowed_cpus().expect("CPUs").last().expect("a CPU");
    let mut ns = Namespaces::new("s").expect("namespaces");
    let recv = ns.recv.clone();
    let recv_path = Namespaces::path(&recv);
    let gen_obj = clang_generator(dir, &frame).expect("the generator compiles");
    let mut gen = aya::Ebpf::load_file(&gen_obj).expect("load the generator");
    {
        let x: &mut aya::programs::Xdp = gen.program_mut("gen_syn").expect("gen_syn").try_into().expect("XDP");
        x.load().expect("the generator verifies");
    }
    let mut peers: Vec<(String, String, Peer)> = Vec::new();
    {
        let (g, r, _) = ns.pair().expect("veth pair");
        let mut p = load_policy(dir, "veth_xpol", PROXY);
        sys::in_netns(&recv_path, None, || p.attach("xdp", &r, XdpAttachMode::Native)).expect("receiver namespace").expect("attach xpol");
        peers.push(("xpol, XDP: `synproxy` (the SYN-ACK sent back with XDP_TX)".to_string(), g, Peer::Xpol(Box::new(p))));
    }
    {
        let (g, r, _) = ns.pair().expect("veth pair");
        let table = "xpolsp".to_string();
        sh(Some(&recv), "ip", &["addr", "add", &format!("{}/32", dotted(RECV)), "dev", &r], None).expect("address");
        sh(Some(&recv), "ip", &["route", "add", &format!("{}/32", dotted(GEN)), "dev", &r], None).expect("route");
        sh(Some(&recv), "ip", &["neigh", "replace", &dotted(GEN), "lladdr", "02:00:00:00:00:01", "dev", &r], None).expect("neighbour");
        let _ = sh(Some(&recv), "sysctl", &["-qw", "net.netfilter.nf_conntrack_tcp_loose=0"], None);
        let ruleset = format!(
            "table inet {table} {{\n  chain raw {{\n    type filter hook prerouting priority raw; policy accept;\n    iifname \"{r}\" tcp dport {PORT} tcp flags & (fin | syn | rst | ack) == syn notrack\n  }}\n  chain input {{\n    type filter hook input priority filter; policy accept;\n    iifname \"{r}\" tcp dport {PORT} ct state {{ invalid, untracked }} counter synproxy mss 1460 wscale 7 timestamp sack-perm\n    iifname \"{r}\" tcp dport {PORT} ct state invalid drop\n  }}\n}}\n"
        );
        let file = dir.join("synproxy.nft");
        std::fs::write(&file, ruleset).expect("write nft ruleset");
        sh(Some(&recv), "nft", &["-f", &file.display().to_string()], None).expect("nft loads the ruleset");
        peers.push(("nftables alone: `synproxy` in an inet input chain (SYNs `notrack`)".to_string(), g, Peer::Nft { table }));
    }
    let gen_ns = Namespaces::path(&ns.gen);
    for (_, g, _) in &peers {
        push_with(&mut gen, "gen_syn", &gen_ns, cpu, g, &frame, 1000);
    }
    let mut rows: Vec<VethRow> = peers.iter().map(|(name, _, _)| VethRow { peer: name.clone(), samples: Vec::new(), frames: 0, answered: 0 }).collect();
    for _ in 0..rounds {
        for ((name, g, peer), row) in peers.iter().zip(rows.iter_mut()) {
            let before = peer.answered(&recv);
            let ns_spent = push_with(&mut gen, "gen_syn", &gen_ns, cpu, g, &frame, frames);
            let after = peer.answered(&recv);
            let answered = after - before;
            assert!(answered + 1_000 >= u64::from(frames), "{name}: {answered} of {frames} SYNs reached the synproxy");
            row.samples.push(ns_spent as f64 / f64::from(frames));
            row.frames += u64::from(frames);
            row.answered += answered;
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
    let _ = writeln!(md, "| policy, packet | ns per run (min-max) | SYNs a second per core, the program alone |");
    let _ = writeln!(md, "|---|---:|---:|");
    let mut json_runs = Vec::new();
    for r in &runs {
        let (m, lo, hi) = stat(&r.samples);
        let per_core = if r.name.contains("SYN answered") { format!("{:.1} M", 1e3 / m) } else { String::new() };
        let _ = writeln!(md, "| {} | {m:.1} ({lo:.1}-{hi:.1}) | {per_core} |", r.name);
        json_runs.push(serde_json::json!({"case": r.name, "ns": r.samples, "median": m}));
    }
    let mut veth_md = String::new();
    let mut json_veth = Vec::new();
    if !veth_rows.is_empty() {
        let nft = veth_rows.iter().find(|r| r.peer.starts_with("nftables")).map(|r| median(&r.samples));
        let _ = writeln!(veth_md, "| receiver | CPU ns per SYN (min-max) | SYNs per second per core | vs nftables | frames | SYNs at the synproxy |");
        let _ = writeln!(veth_md, "|---|---:|---:|---:|---:|---:|");
        for r in &veth_rows {
            let (m, lo, hi) = stat(&r.samples);
            let vs = nft.map_or(String::new(), |n| format!("{:.2}x", m / n));
            let _ = writeln!(veth_md, "| {} | {m:.0} ({lo:.0}-{hi:.0}) | {:.0} | {vs} | {} | {} |", r.peer, 1e9 / m, r.frames, r.answered);
            json_veth.push(serde_json::json!({"peer": r.peer, "cpu_ns_per_packet": r.samples, "median": m, "frames": r.frames, "answered": r.answered}));
        }
        let xpol = veth_rows.iter().find(|r| r.peer.starts_with("xpol")).map(|r| median(&r.samples));
        let goal = match (xpol, nft) {
            (Some(x), Some(n)) => {
                let ratio = n / x;
                format!("{ratio:.1}x fewer CPU ns per SYN than nftables ({})", if ratio >= 3.0 { "met" } else { "**not met**" })
            }
            _ => "not measured".to_string(),
        };
        let _ = writeln!(veth_md, "\nGoal, at least 3x fewer CPU ns per packet than nftables' synproxy under a SYN flood: {goal}.");
    }
    for s in &skipped {
        let _ = writeln!(veth_md, "\nNot measured: {s}.");
    }
    let json = serde_json::json!({"test_runs": json_runs, "veth": json_veth, "skipped": skipped, "load_average": common::load_average()});
    let markdown = format!("### Test runs\n\n{md}\n### Veth: a SYN flood\n\n{veth_md}");
    common::write_report(out_dir, "synproxy", &json, &markdown);
    Report { markdown, json }
}

/// Replaces the "SYN proxy" section of BENCHMARKS.md.
fn write_section(markdown: &str, json: &serde_json::Value) {
    let path = root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let commit = common::commit_label(&root(), &["compiler", "lang", "runtime", "benches"]);
    let cpu = common::cpu_model();
    let kernel = sh(None, "uname", &["-r"], None).unwrap_or_default();
    let section = format!(
        "## SYN proxy\n\n\
         Measured with `cargo bench --bench synproxy` at commit {commit} on {cpu}, Linux {}, load average {} (a machine shared with other builds). Raw numbers: `bench-out/synproxy.json`.\n\n\
         *Test runs*: `BPF_PROG_TEST_RUN` on one CPU, 9 interleaved rounds, median (min-max). A SYN is rewritten into its SYN-ACK in place, so its rows are runs of one (200,000 a round; the kernel's time for one run includes reading its clock), beside a policy that sends the SYN back unchanged (`tx`) measured alike; the ACK rows use `repeat` 2,000,000. The SYN carries a Linux client's options (MSS, SACK-permitted, timestamp, window scale), which the synproxy reads one by one.\n\n\
         *Per core*: a core answers at most 10^9 / (the SYN row's ns) SYNs a second in XDP, the program alone (the test-run rows above; the kernel's receive path and the SYN-ACK's transmit come on top).\n\n\
         *Veth*: one 74-byte SYN to port {PORT}, written into its frame and sent with `XDP_TX` by a small C program each time (test-run with `BPF_F_TEST_XDP_LIVE_FRAMES`, one CPU: the pages go to the receiver by reference and come back as it left them, so a generator that only sends, as the other stateful benches', would send the synproxy's own SYN-ACKs after its first batch), out of one veth per receiver: xpol's `synproxy` in XDP (native; the SYN-ACK sent back with `XDP_TX` to the generator's side, GRO on there), or nftables' `synproxy` alone (the SYN `notrack` at raw priority, the statement in an inet input chain on `ct state {{ invalid, untracked }}`: it answers from the stack). CPU ns per SYN: the generator thread's run time and its CPU's ksoftirqd's (the receiver's poll runs on that CPU), over the frames; 5 rounds of 1,000,000 frames, median (min-max); the synproxy rule's counter must count every frame. SYNs per second per core: 10^9 over that. End to end (`tests/synproxy_e2e.rs`, generic XDP on a veth): a Python raw-socket flood of about 125,000 spoofed SYNs a second (1,503,000 in 12 s, all of them at the synproxy rule) while 8 real TCP connections, IPv4 and IPv6, connected and exchanged 4 KB each, all of them; that flood's rate is the Python generator's limit.\n\n\
         {markdown}",
        kernel.trim(),
        json["load_average"].as_str().unwrap_or("")
    );
    std::fs::write(&path, common::replace_section(&old, "SYN proxy", &section)).expect("write BENCHMARKS.md");
}

fn main() {
    common::bench_main("synproxy benchmark", run, write_section);
}
