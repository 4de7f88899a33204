//! The IPv6 reference firewall benchmark ("ref-fw6", bench/ref-fw6/README.md):
//! xpol's IPv6 sets against a hand-written C program with an IPv6
//! `BPF_MAP_TYPE_LPM_TRIE`, and against xpol's IPv4 sets (the ref-fw
//! policy, bench/ref-fw) in the same run, interleaved, timed by the kernel
//! (BPF_PROG_TEST_RUN). The issue's target: at N = 100,000, the IPv6 set
//! at most 1.2x the IPv4 set's cost and under 0.5x the C trie's.
//!
//!   cargo bench --bench ref_fw6            full run; writes its section of BENCHMARKS.md and bench-out/ref-fw6.json
//!   cargo bench --bench ref_fw6 -- --quick smoke run (CI); asserts nothing about time
//!
//! Needs root and clang-14.

#![allow(dead_code)]

use aya::programs::{TestRun, TestRunOptions, Xdp};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use xpol_runtime::loader::LoadedPolicy;
use xpol_runtime::packet::PacketSpec;

#[path = "common/mod.rs"]
mod common;
use common::median;

pub const SIZES: [usize; 3] = [10, 1000, 100_000];
pub const ROUNDS: usize = 31;
pub const HEADING: &str = "IPv6 reference firewall (ref-fw6)";

/// What the table does not say, written under it.
const NOTES: &str = "How xpol's IPv6 sets got here, N = 100,000, run time vs xpol's IPv4 set (allowed / blocked), short runs of 5 rounds on the same loaded machine: one LPM trie per set, as before (commit 7855af0): 4.50x / 4.36x, 0.94x / 0.93x the C trie; a leaf-pushed multibit trie in array maps, strides 16 then 8, single-prefix regions as tails (c55d20d): 1.44x / 1.44x; with path compression (0f71af4): 1.42x / 1.36x (no gain: each level's read is a chain of dependent loads, and the 2001:db8::/32 levels were not where the time went); with 16-bit wide nodes for regions of 2,048 prefixes or more and tails inline in their entry (22dd7f8): 1.27x / 1.24x; with the roots in global data (820438d): 1.24x / 1.23x; with up to eight wide nodes in global data too (2da4256), for regions of 256 prefixes or more (ea66759): 1.21x / 1.19x in the full run above, the allowed packet 0.01x over the target. The row of the IPv4 policy given the IPv6 packets (its set's IPv6 part is an empty LPM trie) shows that parsing IPv6 costs about what IPv4 does: the difference is the walk, here a plain load of the root entry and one of a wide node in global data (then the inline tail for the blocked source, a miss for the allowed one), about 4-5 ns in run time; at N = 1,000 the walk is the same.\n\nMemory and time at N = 100,000: the IPv6 tables take about 1,000 bytes per prefix (nodes of 1 KiB; the runtime sizes the maps to the elements it loads, and a quarter more for live changes), against 41 bytes per prefix for the kernel's LPM trie; the IPv4 tables of the ref-fw `set` take about 700 (a `set` reserves room to grow). Global data holds 256 KiB of root per IPv6 set and room for eight wide nodes (2 MiB) when they fit after the IPv4 tables: at small N that is all the memory (the `.bss` map, IPv4 tables and counters included, is the figure shown). Compile and load of the IPv6 policy: the compile and load columns (a debug build of xpol here; load includes building the tables and one map update per node).\n\nLive changes: a single IPv6 prefix added to or removed from a set in the tables changes in place, copy on write (`runtime/src/ipv6_edit.rs`: the deepest entries whose regions hold it get a new subtree in free nodes and tails, then one store each), about 100,000 single updates a second in the live benchmark (section \"Live operation\"); a change that finds too little room left reloads the set. A set that starts without IPv6 prefixes keeps an LPM trie and changes in place. Not done: each use of a set in the tables is an inlined walk (about 3,000 instructions for this policy, which short policies copy per parse outcome), so only the four sets with the most IPv6 prefixes get the tables; a walk emitted once as a BPF function would lift that.";

pub struct Mode {
    pub quick: bool,
    pub sizes: Vec<usize>,
    pub rounds: usize,
}

impl Mode {
    pub fn quick() -> Mode {
        Mode { quick: true, sizes: SIZES.to_vec(), rounds: 2 }
    }
    fn complete(&self) -> bool {
        !self.quick && self.sizes == SIZES && self.rounds == ROUNDS
    }
}

pub struct Output {
    pub markdown: String,
    pub json: serde_json::Value,
}

/// What a row measures: the variants compared by ratio within a round.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Floor,
    XpolV4,
    XpolV6,
    /// The IPv4 policy given the IPv6 packets: its set's IPv6 part is an
    /// empty LPM trie, so this is about the IPv6 program without a walk
    /// (parsing, a lookup that finds nothing at once, the rules).
    XpolV4Given6,
    CLpmV6,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Floor => "floor (return XDP_PASS)",
            Kind::XpolV4 => "xpol, IPv4 `set` (ref-fw, 64-byte packets)",
            Kind::XpolV6 => "xpol, IPv6 `set`",
            Kind::XpolV4Given6 => "xpol, IPv4 `set` given the IPv6 packets (its IPv6 part an empty LPM trie)",
            Kind::CLpmV6 => "C, IPv6 LPM_TRIE",
        }
    }
}

enum Prog {
    Xpol(LoadedPolicy),
    C(aya::Ebpf),
}

impl Prog {
    fn c(&mut self) -> &mut Xdp {
        match self {
            Prog::C(e) => e.program_mut("ref_fw").expect("program ref_fw").try_into().expect("an XDP program"),
            Prog::Xpol(_) => unreachable!(),
        }
    }
    fn ns_per_packet(&mut self, packet: &[u8], repeat: u32) -> f64 {
        match self {
            Prog::Xpol(p) => p.bench("xdp", packet, repeat).expect("test run"),
            Prog::C(_) => self.c().test_run(TestRunOptions { data_in: Some(packet), repeat, ..Default::default() }).expect("test run").duration.as_nanos() as f64,
        }
    }
    fn verdict(&mut self, packet: &[u8]) -> u32 {
        match self {
            Prog::Xpol(p) => p.test_run("xdp", packet).expect("test run").return_value,
            Prog::C(_) => self.c().test_run(TestRunOptions { data_in: Some(packet), repeat: 1, ..Default::default() }).expect("test run").return_value,
        }
    }
    fn stats(&mut self) -> (u32, u32) {
        match self {
            Prog::Xpol(p) => {
                let s = p.program_stats("xdp").expect("stats");
                (s.xlated_bytes / 8, s.verified_insns)
            }
            Prog::C(_) => {
                let i = self.c().info().expect("info");
                (i.size_translated().unwrap_or(0) / 8, i.verified_instruction_count().unwrap_or(0))
            }
        }
    }
    fn run_stats(&mut self) -> (u64, u64) {
        match self {
            Prog::Xpol(p) => {
                let s = p.program_stats("xdp").expect("stats");
                (s.run_time_ns, s.run_count)
            }
            Prog::C(_) => {
                let i = self.c().info().expect("info");
                (i.run_time().as_nanos() as u64, i.run_count())
            }
        }
    }
    /// The memory the kernel accounts to the maps holding the sets
    /// (`memlock` in each map's fdinfo: for an LPM trie, its nodes; for an
    /// array, all of it). xpol's IPv4 tables in global data share the
    /// `.bss` map with the rule counters.
    fn set_memory(&mut self) -> u64 {
        let memlock = |fd: std::os::fd::BorrowedFd<'_>| {
            let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap_or_default();
            fdinfo.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0)
        };
        match self {
            Prog::Xpol(p) => {
                let mut names: Vec<String> = p.meta().sets.iter().flat_map(|s| s.maps.iter().map(|m| m.map.clone())).collect();
                names.sort();
                names.dedup();
                names.iter().filter_map(|n| p.maps().borrowed_map_fd(n)).map(memlock).sum()
            }
            Prog::C(e) => match e.map("blocklist") {
                Some(aya::maps::Map::LpmTrie(d)) => memlock(d.fd().as_fd()),
                _ => 0,
            },
        }
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn prefixes6(n: usize) -> Vec<(Ipv6Addr, u8)> {
    let path = root().join(format!("bench/ref-fw6/blocklist6-{n}.txt"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| {
            let (a, len) = l.trim().split_once('/').expect("a prefix");
            (a.parse().expect("an address"), len.parse().expect("a length"))
        })
        .collect()
}

/// The IPv6 ref-fw policy: the ref-fw's five rules with the IPv6 SSH net.
fn xpol_policy6(dir: &Path, n: usize) -> PathBuf {
    let list = root().join(format!("bench/ref-fw6/blocklist6-{n}.txt"));
    let text = format!(
        "set blocklist: cidr = file(\"{}\")\n\
         xdp /ip.src in blocklist/ {{ drop }}\n\
         xdp /tcp.dport == 22 && ip.src !in 2001:db8:51::/48/ {{ drop }}\n\
         xdp /tcp.dport == 22/ {{ pass }}\n\
         xdp /tcp.dport == 23/ {{ drop }}\n\
         xdp /tcp.dport == 80 || tcp.dport == 443/ {{ pass }}\n\
         xdp {{ pass }}\n",
        list.display()
    );
    let path = dir.join(format!("ref-fw6-{n}.xpol"));
    std::fs::write(&path, text).expect("write policy");
    path
}

/// The IPv4 ref-fw policy as `benches/ref_fw.rs` measures it (`set` variant).
fn xpol_policy4(dir: &Path, n: usize) -> PathBuf {
    let list = root().join(format!("bench/ref-fw/blocklist-{n}.txt"));
    let body = std::fs::read_to_string(root().join(format!("bench/ref-fw/ref-fw-{n}.xpol"))).expect("policy");
    let rules: String = body.lines().filter(|l| l.starts_with("xdp")).collect::<Vec<_>>().join("\n");
    let path = dir.join(format!("ref-fw-{n}.xpol"));
    std::fs::write(&path, format!("set blocklist: cidr = file(\"{}\")\n{rules}\n", list.display())).expect("write policy");
    path
}

/// The C twin: the same five rules over IPv6, the blocklist in an LPM trie
/// (key: prefix length, then the 16 address bytes as in the packet).
const C_SOURCE: &str = r#"typedef unsigned char __u8; typedef unsigned short __u16; typedef unsigned int __u32; typedef unsigned long long __u64;
#define SEC(n) __attribute__((section(n), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
#define __always_inline inline __attribute__((always_inline))
struct xdp_md { __u32 data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex; };
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
struct { __uint(type, 6); __type(key, __u32); __type(value, __u64); __uint(max_entries, 5); } counters SEC(".maps");
static __always_inline void count(__u32 rule) { __u64 *c = bpf_map_lookup_elem(&counters, &rule); if (c) *c += 1; }
struct lpm6_key { __u32 prefixlen; __u32 addr[4]; };
struct { __uint(type, 11); __type(key, struct lpm6_key); __type(value, __u8); __uint(max_entries, 200000); __uint(map_flags, 1); } blocklist SEC(".maps");
SEC("xdp") int ref_fw(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    __u8 *p = data;
    if (data + 54 > end || p[12] != 0x86 || p[13] != 0xdd || (p[14] >> 4) != 6) { count(4); return 2; }
    __u32 *src = (__u32 *)(p + 22);
    struct lpm6_key k = { 128, { src[0], src[1], src[2], src[3] } };
    if (bpf_map_lookup_elem(&blocklist, &k)) { count(0); return 1; }
    __u8 *l4 = p + 54;
    if (p[20] != 6 || (void *)(l4 + 20) > end) { count(4); return 2; }
    __u16 dport = (l4[2] << 8) | l4[3];
    /* 2001:db8:51::/48: the first 6 bytes 20 01 0d b8 00 51. */
    if (dport == 22) { count(1); return (src[0] == 0xb80d0120 && *(__u16 *)(p + 26) == 0x5100) ? 2 : 1; }
    if (dport == 23) { count(2); return 1; }
    if (dport == 80 || dport == 443) { count(3); return 2; }
    count(4);
    return 2;
}
char _license[] SEC("license") = "GPL";
"#;

fn clang(dir: &Path, name: &str, source: &str) -> PathBuf {
    let c = dir.join(format!("{name}.c"));
    let o = dir.join(format!("{name}.o"));
    std::fs::write(&c, source).expect("write C");
    let st = Command::new("clang-14").args(["-O2", "-g", "-target", "bpf", "-c"]).arg(&c).arg("-o").arg(&o).status().expect("clang-14 (apt-get install clang-14)");
    assert!(st.success(), "clang failed on {}", c.display());
    o
}

fn load_c(object: &Path, lpm: Option<&[(Ipv6Addr, u8)]>) -> aya::Ebpf {
    let mut ebpf = aya::Ebpf::load_file(object).expect("load C object");
    let p: &mut Xdp = ebpf.program_mut("ref_fw").expect("ref_fw").try_into().expect("xdp");
    p.load().expect("the kernel verifies the C peer");
    if let Some(list) = lpm {
        let mut trie: aya::maps::LpmTrie<_, [u8; 16], u8> = aya::maps::LpmTrie::try_from(ebpf.map_mut("blocklist").expect("blocklist")).expect("lpm");
        for (a, len) in list {
            trie.insert(&aya::maps::lpm_trie::Key::new(u32::from(*len), a.octets()), 1, 0).expect("insert");
        }
    }
    ebpf
}

struct Row {
    kind: Kind,
    n: usize,
    compile_ms: Option<f64>,
    load_ms: f64,
    insns: (u32, u32),
    memory: u64,
    samples: BTreeMap<&'static str, Vec<f64>>,
}

const PACKETS: [&str; 2] = ["allowed", "blocked"];
const STATS_SAMPLES: [&str; 2] = ["allowed_run_time", "blocked_run_time"];

fn build_and_load(policy: &Path) -> (LoadedPolicy, f64, f64) {
    let t = Instant::now();
    let b = xpol_compiler::build(policy, &xpol_compiler::BuildOptions::default());
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    let object = b.output.unwrap_or_else(|| panic!("{}: {}", policy.display(), xpol_lang::render::render_human(&b.diagnostics, &b.sources, false))).object;
    let t = Instant::now();
    let loaded = LoadedPolicy::load(&object).expect("the policy loads");
    (loaded, compile_ms, t.elapsed().as_secs_f64() * 1e3)
}

pub fn run(mode: &Mode, out_dir: &Path) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rounds, repeat) = if mode.quick { (2, 2_000) } else { (mode.rounds, 1_000_000) };
    let dst6: Ipv6Addr = "2001:db8:ffff::1".parse().unwrap();
    let packets6 = [
        PacketSpec::tcp6("2001:db8:7::7".parse().unwrap(), dst6, 40000, 80).syn().payload(4).build(),
        PacketSpec::tcp6("2001:db8:ffff:7::7".parse().unwrap(), dst6, 40000, 80).syn().payload(4).build(),
    ];
    assert_eq!(packets6[0].len(), 78);
    let dst4: Ipv4Addr = "198.19.255.1".parse().unwrap();
    let packets4 = [
        PacketSpec::tcp4("198.18.7.7".parse().unwrap(), dst4, 40000, 80).syn().payload(10).build(),
        PacketSpec::tcp4("198.19.7.7".parse().unwrap(), dst4, 40000, 80).syn().payload(10).build(),
    ];
    let stats_sysctl = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    assert!(stats_sysctl.trim() != "1", "kernel.bpf_stats_enabled is 1: set it to 0, the benchmark turns the statistics on when it needs them");

    let mut rows = Vec::new();
    let mut progs = Vec::new();
    let row = |kind, n, compile_ms, load_ms| Row { kind, n, compile_ms, load_ms, insns: (0, 0), memory: 0, samples: BTreeMap::new() };
    let floor = clang(dir.path(), "floor", "#define SEC(n) __attribute__((section(n), used))\nstruct xdp_md;\nSEC(\"xdp\") int ref_fw(struct xdp_md *c) { return 2; }\nchar _l[] SEC(\"license\") = \"GPL\";\n");
    let t = Instant::now();
    progs.push(Prog::C(load_c(&floor, None)));
    rows.push(row(Kind::Floor, 0, None, t.elapsed().as_secs_f64() * 1e3));
    let c_lpm = clang(dir.path(), "c_lpm6", C_SOURCE);
    for &n in &mode.sizes {
        let (p, c, l) = build_and_load(&xpol_policy4(dir.path(), n));
        progs.push(Prog::Xpol(p));
        rows.push(row(Kind::XpolV4, n, Some(c), l));
        if n == 100_000 {
            let (p, c, l) = build_and_load(&xpol_policy4(dir.path(), n));
            progs.push(Prog::Xpol(p));
            rows.push(row(Kind::XpolV4Given6, n, Some(c), l));
        }
        let (p, c, l) = build_and_load(&xpol_policy6(dir.path(), n));
        progs.push(Prog::Xpol(p));
        rows.push(row(Kind::XpolV6, n, Some(c), l));
        let list = prefixes6(n);
        let t = Instant::now();
        progs.push(Prog::C(load_c(&c_lpm, Some(&list))));
        rows.push(row(Kind::CLpmV6, n, None, t.elapsed().as_secs_f64() * 1e3));
    }
    let packets_of = |kind: Kind| if kind == Kind::XpolV4 { &packets4 } else { &packets6 };
    // Every program gives the reference verdicts before it is timed.
    for (p, r) in progs.iter_mut().zip(rows.iter_mut()) {
        if r.kind == Kind::XpolV4Given6 {
            assert_eq!(p.verdict(&packets6[1]), 2, "no IPv6 prefix: the blocked source passes");
        } else if r.kind != Kind::Floor {
            let [allowed, blocked] = packets_of(r.kind);
            assert_eq!(p.verdict(allowed), 2, "{} N={}: allowed packet", r.kind.label(), r.n);
            assert_eq!(p.verdict(blocked), 1, "{} N={}: blocked packet", r.kind.label(), r.n);
        }
        r.insns = p.stats();
        r.memory = p.set_memory();
    }
    for _ in 0..rounds {
        for (p, r) in progs.iter_mut().zip(rows.iter_mut()) {
            for (name, pkt) in PACKETS.iter().zip(packets_of(r.kind)) {
                let ns = p.ns_per_packet(pkt, repeat);
                r.samples.entry(name).or_default().push(ns);
            }
        }
        let _stats_on = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS (Linux 5.8)");
        for (p, r) in progs.iter_mut().zip(rows.iter_mut()) {
            for (name, pkt) in STATS_SAMPLES.iter().zip(packets_of(r.kind)) {
                let (t0, n0) = p.run_stats();
                p.ns_per_packet(pkt, repeat);
                let (t1, n1) = p.run_stats();
                assert_eq!(n1 - n0, u64::from(repeat), "{} N={}: runs counted", r.kind.label(), r.n);
                r.samples.entry(name).or_default().push((t1 - t0) as f64 / (n1 - n0) as f64);
            }
        }
    }
    drop(progs);
    report(&rows, mode.quick, repeat, rounds, out_dir)
}

fn report(rows: &[Row], quick: bool, repeat: u32, rounds: usize, out_dir: &Path) -> Output {
    let min = |v: &[f64]| v.iter().cloned().fold(f64::MAX, f64::min);
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let stat = |r: &Row, k: &str| {
        let v = &r.samples[k];
        (median(v), min(v), max(v))
    };
    let find = |kind: Kind, n: usize| rows.iter().find(|r| r.kind == kind && r.n == n);
    // Per round, the ratio of row `r` to row `to` (same N): both ran back
    // to back in that round.
    let ratios = |r: &Row, to: Option<&Row>, k: &str| -> Vec<f64> { to.map_or(Vec::new(), |c| r.samples[k].iter().zip(&c.samples[k]).map(|(x, c)| x / c).collect()) };
    let show = |v: &[f64]| if v.is_empty() { String::new() } else { format!("{:.2}x ({:.2}-{:.2})", median(v), min(v), max(v)) };
    let mut md = String::new();
    let _ = writeln!(md, "| program | N | allowed ns/pkt | blocked ns/pkt | allowed run time ns | blocked run time ns | allowed run time vs C trie | blocked run time vs C trie | allowed run time vs xpol IPv4 | blocked run time vs xpol IPv4 |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut json = Vec::new();
    for r in rows {
        let mut cells = Vec::new();
        for (k, d) in PACKETS.iter().chain(&STATS_SAMPLES).zip([0, 0, 2, 2]) {
            let (m, lo, hi) = stat(r, k);
            cells.push(format!("{m:.d$} ({lo:.d$}-{hi:.d$})"));
        }
        let is_v6 = matches!(r.kind, Kind::XpolV6 | Kind::CLpmV6 | Kind::XpolV4Given6);
        let vs_c = if is_v6 { find(Kind::CLpmV6, r.n) } else { None };
        let vs_v4 = if is_v6 { find(Kind::XpolV4, r.n) } else { None };
        for k in STATS_SAMPLES {
            cells.push(show(&ratios(r, vs_c, k)));
        }
        for k in STATS_SAMPLES {
            cells.push(show(&ratios(r, vs_v4, k)));
        }
        let _ = writeln!(md, "| {} | {} | {} |", r.kind.label(), r.n, cells.join(" | "));
        let mut j = serde_json::json!({
            "program": r.kind.label(), "n": r.n, "xlated_insns": r.insns.0, "verified_insns": r.insns.1,
            "compile_ms": r.compile_ms, "load_ms": r.load_ms, "map_memory_bytes": r.memory,
        });
        for k in PACKETS.iter().chain(&STATS_SAMPLES) {
            let (m, lo, hi) = stat(r, k);
            j[format!("{k}_ns")] = serde_json::json!({"median": m, "min": lo, "max": hi, "samples": r.samples[*k]});
            j[format!("{k}_vs_c_trie_per_round")] = serde_json::json!(ratios(r, vs_c, k));
            j[format!("{k}_vs_xpol_ipv4_per_round")] = serde_json::json!(ratios(r, vs_v4, k));
        }
        json.push(j);
    }
    let _ = writeln!(md, "\n| program | N | xlated insns | verifier insns | compile ms | load ms | sets' maps memory (KiB) | bytes per prefix |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let compile = r.compile_ms.map(|c| format!("{c:.0}")).unwrap_or_default();
        let per = if r.n > 0 { format!("{:.0}", r.memory as f64 / r.n as f64) } else { String::new() };
        let _ = writeln!(md, "| {} | {} | {} | {} | {compile} | {:.0} | {} | {per} |", r.kind.label(), r.n, r.insns.0, r.insns.1, r.load_ms, r.memory / 1024);
    }
    // The targets at N = 100,000, in run time (sub-ns resolution), the
    // worse of the two packets.
    let mut targets = serde_json::json!({});
    if let Some(v6) = find(Kind::XpolV6, 100_000) {
        let worst = |to: Option<&Row>| STATS_SAMPLES.iter().map(|k| median(&ratios(v6, to, k))).fold(0.0, f64::max);
        let vs_v4 = worst(find(Kind::XpolV4, 100_000));
        let vs_c = worst(find(Kind::CLpmV6, 100_000));
        let met = |ok: bool| if ok { "met" } else { "not met" };
        let _ = writeln!(md, "\nTargets at N=100000 (medians of the per-round ratios of run time, the worse packet):\n");
        let _ = writeln!(md, "- IPv6 set at most 1.2x the IPv4 set: {vs_v4:.2}x ({}).", met(vs_v4 <= 1.2));
        let _ = writeln!(md, "- IPv6 set under 0.5x the C LPM trie: {vs_c:.2}x ({}).", met(vs_c < 0.5));
        targets = serde_json::json!({"vs_xpol_ipv4": vs_v4, "vs_c_trie": vs_c});
    }
    let doc = serde_json::json!({"quick": quick, "repeat": repeat, "rounds": rounds, "results": json, "targets": targets});
    std::fs::create_dir_all(out_dir).expect("output dir");
    std::fs::write(out_dir.join("ref-fw6.json"), serde_json::to_string_pretty(&doc).expect("json")).expect("write json");
    Output { markdown: md, json: doc }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let sizes = match args.iter().position(|a| a == "--sizes") {
        Some(i) => args.get(i + 1).expect("--sizes takes a list").split(',').map(|n| n.parse().ok().filter(|n| SIZES.contains(n)).unwrap_or_else(|| panic!("--sizes: each of {SIZES:?}"))).collect(),
        None => SIZES.to_vec(),
    };
    let rounds = args.iter().position(|a| a == "--rounds").map_or(ROUNDS, |i| args.get(i + 1).and_then(|n| n.parse().ok()).filter(|&n| n > 0).expect("--rounds takes a number"));
    let mode = Mode { quick, sizes, rounds };
    let load_before = common::load_average();
    let out_dir = common::out_dir(root(), quick, mode.complete());
    let out = run(&mode, &out_dir);
    let load_after = common::load_average();
    println!("{}", out.markdown);
    if mode.complete() {
        let commit = common::commit_label(root(), &["compiler", "lang", "runtime", "benches", "bench", "src"]);
        let profile = if cfg!(debug_assertions) { " (userspace built in the dev profile: compile and load times are a debug build's)" } else { "" };
        let section = format!(
            "## {HEADING}\n\nThe IPv6 reference firewall (`bench/ref-fw6/README.md`): the ref-fw's five rules over a blocklist of N IPv6 prefixes, 78-byte TCP SYN to [2001:db8:ffff::1]:80 from an allowed source (2001:db8:7::7) and from a source covered by the last prefix (2001:db8:ffff:7::7). In the same run and rounds: the IPv4 ref-fw policy with its 64-byte packets (xpol's IPv4 set), a C twin with an IPv6 `BPF_MAP_TYPE_LPM_TRIE` (`benches/ref_fw6.rs`), and the floor.\n\nMeasured with `cargo bench --bench ref_fw6` at commit {commit} on {}, {} CPUs{profile}. Load average {load_before} before the run and {load_after} after it: the machine is shared, so other work ran beside the benchmark. {ROUNDS} interleaved rounds of `BPF_PROG_TEST_RUN`, repeat 1,000,000, median (min-max); run time as in the ref-fw table (BPF statistics, sub-ns); each ratio is taken within a round, then its median (min-max) over the rounds. Sets' memory is the kernel's `memlock` of the maps holding the sets (for an LPM trie its nodes; for xpol's IPv4 tables in global data the whole `.bss` map, rule counters included). Raw numbers: `bench-out/ref-fw6.json`.\n\n{}\n{NOTES}\n",
            common::cpu_model(),
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            out.markdown
        );
        let old = std::fs::read_to_string(root().join("BENCHMARKS.md")).unwrap_or_default();
        std::fs::write(root().join("BENCHMARKS.md"), common::replace_section(&old, HEADING, &section)).expect("write BENCHMARKS.md");
    }
}
