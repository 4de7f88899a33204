//! Veth mode of the ref-fw benchmark: real frames through a veth pair, CPU
//! time per blocked packet, xpol against the C LPM_TRIE peer, nftables and
//! iptables with ipset on the same ruleset.
//!
//! A generator namespace and a receiver namespace (both created here, named
//! after this process, removed on drop) are joined by one veth pair per peer.
//! A generator XDP program that returns `XDP_TX` is test-run with
//! `BPF_F_TEST_XDP_LIVE_FRAMES` and `ingress_ifindex` set to the generator
//! side of a pair: each of its frames (the 64-byte "blocked" TCP SYN) goes
//! out of that veth and arrives at the receiver side, where the peer drops
//! it. The generator thread is pinned to one CPU; the receiver's NAPI poll
//! runs in softirq on that same CPU, inline at the end of each batch (or in
//! that CPU's ksoftirqd). CPU time = the generator thread's run time
//! (`/proc/thread-self/schedstat`, which on this kernel includes the softirq
//! work done in its context) + the run time of `ksoftirqd/CPU`, divided by
//! the frames. `/proc/stat` busy time of that CPU is kept beside it as a
//! cross-check (it also counts whatever else ran there).
//!
//! Traffic: 198.19.7.7 -> 198.19.255.1 (inside 198.18.0.0/15), between the
//! two namespaces only. Before any figure is kept, the peer's own counter of
//! its first (blocklist) rule must have grown by exactly the frames sent.

use super::common::{cpu_busy_ns, ksoftirqd, runtime_ns, sh};
use super::{clang, load_c, prefixes, xpol_policy, CRunner};
pub use super::common::have;
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use xpol_runtime::loader::{LoadedPolicy, XdpAttachMode};
use xpol_runtime::sys;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One measured peer at one N.
#[derive(Clone, Debug, Default)]
pub struct VethRow {
    pub peer: String,
    pub n: usize,
    pub frames: u64,
    /// CPU ns per packet (generator thread + ksoftirqd), one per round.
    pub samples: Vec<f64>,
    /// /proc/stat busy ns per packet of the generator's CPU, one per round.
    pub cpu_busy: Vec<f64>,
    /// Frames the peer's blocklist rule counted, over all rounds.
    pub dropped: u64,
    /// Samples run again because frames were lost before the peer.
    pub reruns: u32,
}

/// A peer cannot run: loud note; a failure in quick mode under
/// XPOL_REQUIRE_KERNEL=1 (CI installs every tool).
pub fn missing(what: &str, why: &str, quick: bool, skipped: &mut Vec<String>) {
    let msg = format!("{what}: {why}");
    if quick && std::env::var("XPOL_REQUIRE_KERNEL").is_ok_and(|v| v == "1") {
        panic!("{msg} (XPOL_REQUIRE_KERNEL=1: every peer must run)");
    }
    eprintln!("\n*** SKIPPED peer {msg} ***\n");
    skipped.push(msg);
}

/// The generator and receiver namespaces; removing them removes the veth
/// pairs, nft tables, ipsets, iptables rules and XDP attachments in them.
struct Namespaces {
    gen: String,
    recv: String,
    tag: String,
    pairs: u32,
}

impl Namespaces {
    fn new() -> Result<Namespaces, String> {
        let tag = format!("{}{}", std::process::id() % 1_000_000, NEXT.fetch_add(1, Ordering::SeqCst));
        let ns = Namespaces { gen: format!("xpolb{tag}-g"), recv: format!("xpolb{tag}-r"), tag, pairs: 0 };
        sh(None, "ip", &["netns", "add", &ns.gen], None)?;
        sh(None, "ip", &["netns", "add", &ns.recv], None)?;
        for n in [&ns.gen, &ns.recv] {
            sh(None, "ip", &["-n", n, "link", "set", "lo", "up"], None)?;
        }
        Ok(ns)
    }

    fn path(name: &str) -> PathBuf {
        Path::new("/run/netns").join(name)
    }

    /// A new veth pair (generator side, receiver side), up, with the MAC
    /// addresses of the test packets, GRO on at the receiver (veth then
    /// polls with NAPI, needed to take XDP_TX frames without an XDP program).
    fn pair(&mut self) -> Result<(String, String), String> {
        let i = self.pairs;
        self.pairs += 1;
        let (g, r) = (format!("xg{}-{i}", self.tag), format!("xr{}-{i}", self.tag));
        sh(None, "ip", &["link", "add", &g, "netns", &self.gen, "address", "02:00:00:00:00:01", "type", "veth", "peer", "name", &r, "netns", &self.recv, "address", "02:00:00:00:00:02"], None)?;
        sh(None, "ip", &["-n", &self.gen, "addr", "add", &format!("198.18.252.{}/30", 4 * i + 1), "dev", &g], None)?;
        sh(None, "ip", &["-n", &self.recv, "addr", "add", &format!("198.18.252.{}/30", 4 * i + 2), "dev", &r], None)?;
        sh(None, "ip", &["-n", &self.gen, "link", "set", &g, "up"], None)?;
        sh(None, "ip", &["-n", &self.recv, "link", "set", &r, "up"], None)?;
        sh(Some(&self.recv), "ethtool", &["-K", &r, "gro", "on"], None)?;
        Ok((g, r))
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.gen]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.recv]).status();
    }
}

/// What drops the frames at the receiver side of one pair.
enum Peer {
    /// `return XDP_DROP`: the cost of generating and delivering a frame.
    Floor(CRunner),
    Xpol(Box<LoadedPolicy>),
    CLpm(CRunner),
    Nft { table: String },
    Iptables { bin: String },
}

impl Peer {
    /// Packets counted by the blocklist rule so far.
    fn dropped(&self, ns: &str) -> Result<u64, String> {
        match self {
            Peer::Floor(_) => Ok(0),
            Peer::Xpol(p) => Ok(p.rule_counters().map_err(|e| e.to_string())?[0].packets),
            Peer::CLpm(c) => {
                let map = c.0.map("counters").ok_or("no counters map")?;
                let arr: aya::maps::PerCpuArray<_, u64> = aya::maps::PerCpuArray::try_from(map).map_err(|e| e.to_string())?;
                Ok(arr.get(&0, 0).map_err(|e| e.to_string())?.iter().sum())
            }
            Peer::Nft { table } => super::common::nft_counter_packets(ns, "netdev", table, "ingress"),
            Peer::Iptables { bin } => {
                let out = sh(Some(ns), bin, &["-w", "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"], None)?;
                // Two header lines, then one line per rule: pkts bytes target ...
                let line = out.lines().nth(2).ok_or_else(|| format!("no rule in {out}"))?;
                line.split_whitespace().next().and_then(|p| p.parse().ok()).ok_or_else(|| format!("cannot read {line}"))
            }
        }
    }
}

/// The ruleset of ref-fw for nftables' netdev ingress hook.
fn nft_ruleset(table: &str, dev: &str, list: &[(Ipv4Addr, u8)]) -> String {
    let elements: Vec<String> = list.iter().map(|(a, l)| format!("{a}/{l}")).collect();
    format!(
        "table netdev {table} {{\n  set blocklist {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {} }} }}\n  chain ingress {{\n    type filter hook ingress device \"{dev}\" priority -500; policy accept;\n    ip saddr @blocklist counter drop\n    tcp dport 22 ip saddr != 198.51.100.0/24 counter drop\n    tcp dport 22 counter accept\n    tcp dport 23 counter drop\n    tcp dport {{ 80, 443 }} counter accept\n    counter accept\n  }}\n}}\n",
        elements.join(", ")
    )
}

/// iptables-legacy when the kernel has it, else the nft backend.
fn iptables_bin(ns: &str) -> Option<String> {
    ["iptables-legacy", "iptables-nft", "iptables"].into_iter().find(|b| have(b) && sh(Some(ns), b, &["-w", "-t", "raw", "-L", "-n"], None).is_ok()).map(str::to_string)
}

fn iptables_rules(bin: &str, ns: &str, dev: &str, list: &[(Ipv4Addr, u8)]) -> Result<(), String> {
    let mut restore = String::from("create xpolbl hash:net family inet hashsize 65536 maxelem 262144\n");
    for (a, l) in list {
        let _ = writeln!(restore, "add xpolbl {a}/{l}");
    }
    sh(Some(ns), "ipset", &["restore"], Some(&restore))?;
    let rules: [&[&str]; 6] = [
        &["-m", "set", "--match-set", "xpolbl", "src", "-j", "DROP"],
        &["-p", "tcp", "--dport", "22", "!", "-s", "198.51.100.0/24", "-j", "DROP"],
        &["-p", "tcp", "--dport", "22", "-j", "ACCEPT"],
        &["-p", "tcp", "--dport", "23", "-j", "DROP"],
        &["-p", "tcp", "-m", "multiport", "--dports", "80,443", "-j", "ACCEPT"],
        &["-j", "ACCEPT"],
    ];
    for r in rules {
        let mut args = vec!["-w", "-t", "raw", "-A", "PREROUTING", "-i", dev];
        args.extend_from_slice(r);
        sh(Some(ns), bin, &args, None)?;
    }
    Ok(())
}

struct Generator {
    prog: CRunner,
    frame: Vec<u8>,
    cpu: usize,
    ksoftirqd: Option<PathBuf>,
    ns: PathBuf,
}

impl Generator {
    /// Pushes `frames` copies of the frame out of `dev` (generator side);
    /// (CPU ns, /proc/stat busy ns) spent.
    fn push(&mut self, dev: &str, frames: u32) -> (u64, u64) {
        let (frame, cpu, ksoftirqd) = (&self.frame, self.cpu, self.ksoftirqd.clone());
        let prog = &mut self.prog;
        sys::in_netns(&self.ns, Some(cpu), move || {
            let ifindex = sys::if_nametoindex(dev);
            assert!(ifindex != 0, "no {dev} in the generator namespace");
            // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
            // data_end must be the frame's length.
            let ctx: Vec<u8> = [0u32, frame.len() as u32, 0, ifindex, 0, 0].iter().flat_map(|v| v.to_ne_bytes()).collect();
            let me = Path::new("/proc/thread-self/schedstat");
            let k = |p: &Option<PathBuf>| p.as_deref().map_or(0, runtime_ns);
            let (t0, k0, b0) = (runtime_ns(me), k(&ksoftirqd), cpu_busy_ns(cpu));
            let x: &mut Xdp = prog.prog();
            x.test_run(TestRunOptions { data_in: Some(frame), ctx_in: Some(&ctx), repeat: frames, attrs: TestRunAttrs::new().xdp_live_frames(64), ..Default::default() })
                .expect("BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES (kernel 5.18 or later)");
            let (t1, k1, b1) = (runtime_ns(me), k(&ksoftirqd), cpu_busy_ns(cpu));
            assert!(t1 > t0, "no run time in /proc/thread-self/schedstat (a kernel without CONFIG_SCHED_INFO): cannot measure CPU time");
            (t1 - t0 + (k1 - k0), b1.saturating_sub(b0))
        })
        .expect("enter the generator namespace")
    }
}

/// Samples of one peer run again at most, over all rounds, when frames were
/// lost before the peer.
const MAX_RERUNS: u32 = 10;

/// Sizes measured in veth mode.
pub fn sizes(quick: bool) -> Vec<usize> {
    if quick {
        vec![10]
    } else {
        vec![10, 1000, 100_000]
    }
}

/// Runs veth mode; rows for every peer that could run, notes for those
/// that could not.
pub fn run(quick: bool, dir: &Path, skipped: &mut Vec<String>) -> Vec<VethRow> {
    let (rounds, frames) = if quick { (1u32, 20_000u32) } else { (5, 2_000_000) };
    let blocked = xpol_runtime::packet::PacketSpec::tcp4("198.19.7.7".parse().unwrap(), "198.19.255.1".parse().unwrap(), 40000, 80).syn().payload(10).build();
    for tool in ["ethtool", "timeout"] {
        if !have(tool) {
            missing("veth mode (all peers)", &format!("`{tool}` is not installed (apt-get install ethtool coreutils)"), quick, skipped);
            return Vec::new();
        }
    }
    let gen_obj = clang(dir, "gen_tx", "#define SEC(n) __attribute__((section(n), used))\nstruct xdp_md;\nSEC(\"xdp\") int ref_fw(struct xdp_md *c) { return 3; }\nchar _l[] SEC(\"license\") = \"GPL\";\n");
    let floor_obj = clang(dir, "floor_drop", "#define SEC(n) __attribute__((section(n), used))\nstruct xdp_md;\nSEC(\"xdp\") int ref_fw(struct xdp_md *c) { return 1; }\nchar _l[] SEC(\"license\") = \"GPL\";\n");
    let c_lpm = clang(dir, "c_lpm_veth", &super::c_source(None));
    let cpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) - 1;
    let mut rows = Vec::new();
    for n in sizes(quick) {
        let list = prefixes(n);
        let mut ns = Namespaces::new().expect("namespaces for veth mode");
        let recv = ns.recv.clone();
        let recv_path = Namespaces::path(&recv);
        let mut gen = Generator { prog: load_c(&gen_obj, None), frame: blocked.clone(), cpu, ksoftirqd: ksoftirqd(cpu), ns: Namespaces::path(&ns.gen) };
        // (name, generator-side device, peer)
        let mut peers: Vec<(String, String, Peer)> = Vec::new();
        let attach_c = |c: &mut CRunner, dev: &str| {
            sys::in_netns(&recv_path, None, || {
                let x = c.prog();
                x.attach(dev, XdpMode::Driver).expect("attach C peer");
            })
            .expect("enter the receiver namespace");
        };
        if n == sizes(quick)[0] {
            let (g, r) = ns.pair().expect("veth pair");
            let mut c = load_c(&floor_obj, None);
            attach_c(&mut c, &r);
            peers.push(("floor (XDP, return XDP_DROP)".into(), g, Peer::Floor(c)));
        }
        {
            let (g, r) = ns.pair().expect("veth pair");
            let policy = xpol_policy(dir, n, false);
            let object = xpol_compiler::build(&policy, &xpol_compiler::BuildOptions::default()).output.expect("ref-fw compiles").object;
            let mut p = LoadedPolicy::load(&object).expect("ref-fw loads");
            sys::in_netns(&recv_path, None, || p.attach("xdp", &r, XdpAttachMode::Native)).expect("enter the receiver namespace").expect("attach xpol");
            peers.push(("xpol, `set` (map), XDP".into(), g, Peer::Xpol(Box::new(p))));
        }
        {
            let (g, r) = ns.pair().expect("veth pair");
            let mut c = load_c(&c_lpm, Some(&list));
            attach_c(&mut c, &r);
            peers.push(("C, LPM_TRIE, XDP".into(), g, Peer::CLpm(c)));
        }
        if have("nft") {
            let (g, r) = ns.pair().expect("veth pair");
            let table = "xpolbench".to_string();
            let file = dir.join(format!("nft-{n}.conf"));
            std::fs::write(&file, nft_ruleset(&table, &r, &list)).expect("write nft ruleset");
            sh(Some(&recv), "nft", &["-f", &file.display().to_string()], None).expect("nft loads the ruleset");
            peers.push(("nftables, netdev ingress, interval set".into(), g, Peer::Nft { table }));
        } else {
            missing("nftables", "`nft` is not installed (apt-get install nftables)", quick, skipped);
        }
        match (have("ipset"), iptables_bin(&recv)) {
            (true, Some(bin)) => {
                let (g, r) = ns.pair().expect("veth pair");
                iptables_rules(&bin, &recv, &r, &list).expect("iptables rules and ipset");
                let name = if bin == "iptables-legacy" { "iptables-legacy raw PREROUTING, ipset hash:net".to_string() } else { format!("{bin} (nft backend) raw PREROUTING, ipset hash:net") };
                peers.push((name, g, Peer::Iptables { bin }));
            }
            (false, _) => missing("iptables with ipset", "`ipset` is not installed (apt-get install ipset)", quick, skipped),
            (_, None) => missing("iptables with ipset", "no working iptables (apt-get install iptables)", quick, skipped),
        }
        let mut rows_n: Vec<VethRow> = peers.iter().map(|(name, _, _)| VethRow { peer: name.clone(), n, frames: 0, ..VethRow::default() }).collect();
        // Warm-up, and the proof that each peer drops exactly what it is sent.
        for (name, g, peer) in &peers {
            let before = peer.dropped(&recv).expect("peer counter");
            gen.push(g, 1000);
            let after = peer.dropped(&recv).expect("peer counter");
            if !matches!(peer, Peer::Floor(_)) {
                assert_eq!(after - before, 1000, "{name} N={n}: the blocklist rule must count every blocked frame of the warm-up");
            }
        }
        for _ in 0..rounds {
            for ((name, g, peer), row) in peers.iter().zip(rows_n.iter_mut()) {
                // A sample whose peer counted fewer frames than were sent
                // lost frames on the way (the veth ring overflows when the
                // machine is busy): such frames cost less, so the sample is
                // run again rather than kept. Counting more is a failure.
                let (before, after, cpu_ns, busy_ns) = loop {
                    let before = peer.dropped(&recv).expect("peer counter");
                    let (cpu_ns, busy_ns) = gen.push(g, frames);
                    let after = peer.dropped(&recv).expect("peer counter");
                    let short = !matches!(peer, Peer::Floor(_)) && after - before < u64::from(frames);
                    if short && row.reruns < MAX_RERUNS {
                        row.reruns += 1;
                        eprintln!("{name} N={n}: {} of {frames} frames reached the peer; running the sample again", after - before);
                        continue;
                    }
                    break (before, after, cpu_ns, busy_ns);
                };
                if !matches!(peer, Peer::Floor(_)) {
                    assert_eq!(after - before, u64::from(frames), "{name} N={n}: the blocklist rule must count every frame sent");
                }
                row.dropped += after - before;
                row.frames += u64::from(frames);
                row.samples.push(cpu_ns as f64 / f64::from(frames));
                row.cpu_busy.push(busy_ns as f64 / f64::from(frames));
            }
        }
        rows.extend(rows_n);
        drop(peers);
        drop(ns);
    }
    rows
}

/// The veth table (markdown) and its JSON rows.
pub fn report(rows: &[VethRow]) -> (String, Vec<serde_json::Value>) {
    let stat = |v: &[f64]| (super::median(v), v.iter().cloned().fold(f64::MAX, f64::min), v.iter().cloned().fold(0.0, f64::max));
    let mut by_n: BTreeMap<usize, f64> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.peer.starts_with("nftables")) {
        by_n.insert(r.n, stat(&r.samples).0);
    }
    let mut md = String::new();
    let _ = writeln!(md, "| peer | N | CPU ns per blocked packet (min-max) | vs nftables | /proc/stat busy ns/pkt | frames | dropped by rule |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    let mut json = Vec::new();
    for r in rows {
        let (m, lo, hi) = stat(&r.samples);
        let ratio = by_n.get(&r.n).map(|nft| format!("{:.2}x", m / nft)).unwrap_or_default();
        let busy = super::median(&r.cpu_busy);
        let dropped = if r.peer.starts_with("floor") { "(no counter)".to_string() } else { r.dropped.to_string() };
        let _ = writeln!(md, "| {} | {} | {m:.0} ({lo:.0}-{hi:.0}) | {ratio} | {busy:.0} | {} | {dropped} |", r.peer, r.n, r.frames);
        json.push(serde_json::json!({
            "peer": r.peer, "n": r.n, "frames": r.frames, "dropped_by_rule": r.dropped, "reruns": r.reruns,
            "cpu_ns_per_packet": {"median": m, "min": lo, "max": hi, "samples": r.samples},
            "cpu_busy_ns_per_packet": {"median": busy, "samples": r.cpu_busy},
            "vs_nftables": by_n.get(&r.n).map(|nft| m / nft),
        }));
    }
    // The target: xpol at least 2x fewer CPU ns per blocked packet than
    // nftables at the largest N measured.
    if let Some((&n, &nft)) = by_n.iter().next_back() {
        if let Some(x) = rows.iter().find(|r| r.n == n && r.peer.starts_with("xpol")) {
            let ratio = nft / stat(&x.samples).0;
            let verdict = if ratio >= 2.0 { "met" } else { "MISSED" };
            let _ = writeln!(md, "\nTarget: xpol at least 2x fewer CPU ns per blocked packet than nftables at N={n}: {ratio:.1}x fewer ({verdict}).");
        }
    }
    (md, json)
}
