//! The load balancer's packet path (issue 13): xpol's `lb(...)` against the
//! same work written by hand in C (`bench/lb/katran_like.c`, Katran-style),
//! measured in one run, interleaved, with `BPF_PROG_TEST_RUN` and the
//! kernel's own per-run timing (`BPF_ENABLE_STATS`); then, on veth, the CPU
//! each forwarded packet costs, against the kernel's own load balancing.
//!
//!   cargo bench --bench lb_path              full run; writes the "Load balancer: packet path" and "Load balancer: flow table,
//!                                            shared or per CPU" sections of BENCHMARKS.md, bench-out/lb-path.json
//!                                            and bench-out/lb-flow-table.json
//!   cargo bench --bench lb_path -- --quick   smoke run (CI); asserts nothing about time; writes target/bench-out-quick/
//!   cargo bench --bench lb_path -- --no-veth [--rounds 11]
//!                                            a focused run; writes target/bench-out-partial/
//!   cargo bench --bench lb_path -- --flow-table
//!                                            the flow-table part alone (shared or per-CPU,
//!                                            `lb_path/flow_table.rs`); with every round, writes
//!                                            its section of BENCHMARKS.md and bench-out/lb-flow-table.json
//!   cargo bench --bench lb_path -- --no-veth --no-flow-table   the packet path alone
//!
//! Needs root and clang-14; veth mode needs ethtool and nftables, and
//! ipvsadm with a kernel built with IP_VS for the IPVS rows. Everything runs
//! in network namespaces this benchmark creates (198.18.0.0/15 and
//! 2001:db8::/32, no route out), removed at the end, also on failure.
//!
//! Why each test run is one run (`repeat` 1) and not a million: with
//! `repeat`, the kernel runs the program again on the same `xdp_buff`
//! without resetting it, so after the first run every later one would see
//! the packet already encapsulated (data moved by `bpf_xdp_adjust_head`)
//! and pass it untouched: the figure would be that of a non-matching
//! packet. The benchmark shows it (`repeat_runs_balanced` in the JSON: the
//! pool's counters grow by 1, not by the repeat count). So each sample is
//! many single runs, one system call each; the kernel's BPF statistics
//! time the program alone in each of them, and the mean test-run duration
//! of the single runs is kept beside it.

#![allow(dead_code)]

use aya::programs::{TestRun, TestRunOptions, Xdp};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use xpol_lang::maglev;
use xpol_lang::meta::PoolMeta;
use xpol_runtime::loader::LoadedPolicy;
use xpol_runtime::packet::PacketSpec;
use xpol_runtime::sys;

#[path = "common/mod.rs"]
mod common;
use common::{median, replace_section};

#[path = "lb_path/veth.rs"]
mod veth;

#[path = "lb_path/flow_table.rs"]
pub mod flow_table;

/// The heading of this benchmark's section of BENCHMARKS.md.
pub const SECTION: &str = "Load balancer: packet path";
/// Interleaved rounds of a full run.
pub const ROUNDS: usize = 31;
/// Single test runs per sample in a full run.
const RUNS: usize = 50_000;

pub struct Mode {
    /// Smoke run: one short round, numbers mean nothing.
    pub quick: bool,
    pub veth: bool,
    pub rounds: usize,
}

impl Mode {
    pub fn quick() -> Mode {
        Mode { quick: true, veth: true, rounds: 1 }
    }
    /// Everything: the run BENCHMARKS.md is written from.
    fn complete(&self) -> bool {
        !self.quick && self.veth && self.rounds == ROUNDS
    }
}

/// What one run produced: the markdown of both parts, the JSON document
/// (also written to `out_dir/lb-path.json`), and the peers that could not
/// run (with the reason).
pub struct Output {
    pub table: String,
    pub veth: String,
    pub json: serde_json::Value,
    pub skipped: Vec<String>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A name part no other run of this benchmark (or another process) uses.
pub fn unique_tag() -> String {
    format!("{}{}", std::process::id() % 1_000_000, NEXT.fetch_add(1, Ordering::SeqCst))
}

// ------------------------------------------------------------------ cases

/// The client, the VIP and the pools of every case.
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 7);
pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
pub const OUTER_SRC4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 7, 0, 0, 0, 0, 7);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
const OUTER_SRC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const BACKENDS: usize = 10;
pub const GUE_PORT: u16 = 6080;
/// The backends' port of the DNAT cases (`lb(web, nat, port: 8080)`): the
/// VIP's port 80 is rewritten too.
pub const NAT_PORT: u16 = 8080;

/// One delivery measured: an encapsulation, or DNAT.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Case {
    pub name: &'static str,
    pub label: &'static str,
    pub v6: bool,
    pub gue: bool,
    /// `lb(web, nat, port: NAT_PORT)` rather than an encapsulation.
    pub nat: bool,
}

const CASES: [Case; 6] = [
    Case { name: "ipip4", label: "IPIP, IPv4 in IPv4", v6: false, gue: false, nat: false },
    Case { name: "ipip6", label: "IPIP, IPv6 in IPv6", v6: true, gue: false, nat: false },
    Case { name: "gue4", label: "GUE over IPv4 (IPv4 inside)", v6: false, gue: true, nat: false },
    Case { name: "gue6", label: "GUE over IPv6 (IPv6 inside)", v6: true, gue: true, nat: false },
    Case { name: "nat4", label: "DNAT, IPv4", v6: false, gue: false, nat: true },
    Case { name: "nat6", label: "DNAT, IPv6", v6: true, gue: false, nat: true },
];

pub fn backend4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 10 + i as u8)
}

fn backend6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10 + i as u16)
}

/// The xpol policy of a case: one pool, one VIP rule. `proto`/`port`: the
/// VIP's protocol (`tcp` or `udp`) and port.
pub fn policy_text(case: &Case, proto: &str, port: u16) -> String {
    let (pool, vip, src) = if case.v6 {
        ((0..BACKENDS).map(|i| backend6(i).to_string()).collect::<Vec<_>>(), IpAddr::V6(VIP6), IpAddr::V6(OUTER_SRC6))
    } else {
        ((0..BACKENDS).map(|i| backend4(i).to_string()).collect::<Vec<_>>(), IpAddr::V4(VIP4), IpAddr::V4(OUTER_SRC4))
    };
    let delivery = if case.nat {
        format!("nat, port: {NAT_PORT}")
    } else {
        let encap = if case.gue { format!("gue, port: {GUE_PORT}") } else { "ipip".to_string() };
        format!("encap: {encap}, src: {src}")
    };
    format!("pool web = {{ {} }}\nxdp /ip.dst == {vip} && {proto}.dport == {port}/ {{ lb(web, {delivery}) }}\n", pool.join(", "))
}

/// The 32-bit words of an address as a little-endian load of its wire
/// bytes gives them (what the C program compares and stores).
fn loaded_words(a: IpAddr) -> Vec<u32> {
    let o = octets(a);
    o.chunks(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The `-D` definitions that make `bench/lb/katran_like.c` the C twin of
/// the case's policy, sized like its pool.
pub fn c_defines(case: &Case, pool: &PoolMeta, proto: u8, port: u16) -> Vec<String> {
    let mut d = vec![
        format!("-DVIP_V6={}", u8::from(case.v6)),
        format!("-DOUTER_V6={}", u8::from(case.v6)),
        format!("-DGUE={}", u8::from(case.gue)),
        format!("-DGUE_PORT={GUE_PORT}"),
        format!("-DNAT={}", u8::from(case.nat)),
        format!("-DNAT_PORT={NAT_PORT}"),
        format!("-DVIP_PROTO={proto}"),
        format!("-DVIP_PORT={port}"),
        format!("-DTABLE_SIZE={}", pool.table_size),
        format!("-DMAX_BACKENDS={}", pool.max_backends),
        format!("-DFLOWS={}", pool.flows),
        format!("-DFLOW_SEED={:#x}", maglev::FLOW_SEED),
    ];
    if case.v6 {
        for (i, w) in loaded_words(IpAddr::V6(VIP6)).iter().enumerate() {
            d.push(format!("-DVIP6_{i}={w:#010x}"));
        }
        for (i, w) in loaded_words(IpAddr::V6(OUTER_SRC6)).iter().enumerate() {
            d.push(format!("-DOUTER_SRC6_{i}={w:#010x}"));
        }
    } else {
        d.push(format!("-DVIP4={:#010x}", loaded_words(IpAddr::V4(VIP4))[0]));
        d.push(format!("-DOUTER_SRC4={:#010x}", loaded_words(IpAddr::V4(OUTER_SRC4))[0]));
    }
    d
}

/// A packet of the case's VIP: the client's flow number `flow` (source
/// address and port vary with it), TCP ACK to port 80, 10 bytes of payload.
fn vip_packet(case: &Case, flow: u64) -> Vec<u8> {
    let sport = 10_000 + (flow % 50_000) as u16;
    let host = (flow / 50_000) as u32;
    if case.v6 {
        let src = if flow == 0 { CLIENT6 } else { Ipv6Addr::from(u128::from(Ipv6Addr::new(0x2001, 0xdb8, 8, 0, 0, 0, 0, 0)) | u128::from(host)) };
        PacketSpec::tcp6(src, VIP6, if flow == 0 { 40000 } else { sport }, 80).ack().payload(10).build()
    } else {
        // 198.18.128.0/17 for new flows: 32768 addresses of 50,000 ports.
        let src = if flow == 0 { CLIENT4 } else { Ipv4Addr::from(0xc612_8000 | (host & 0x7fff)) };
        PacketSpec::tcp4(src, VIP4, if flow == 0 { 40000 } else { sport }, 80).ack().payload(10).build()
    }
}

/// The backend the pool's Maglev table gives the flow of `packet` (an
/// untagged TCP or UDP packet without options or extension headers).
pub fn expected_backend(pool: &PoolMeta, table: &[u32], packet: &[u8]) -> IpAddr {
    let v6 = u16::from_be_bytes([packet[12], packet[13]]) == 0x86dd;
    let (src, dst, l4, proto) = if v6 { (&packet[22..38], &packet[38..54], 54, packet[20]) } else { (&packet[26..30], &packet[30..34], 34, packet[23]) };
    let ports = u32::from_be_bytes([packet[l4], packet[l4 + 1], packet[l4 + 2], packet[l4 + 3]]);
    let mut words = maglev::addr_words(src);
    words.extend(maglev::addr_words(dst));
    words.extend([ports, u32::from(proto)]);
    let hash = maglev::murmur3_words(maglev::FLOW_SEED, &words);
    pool.backends[table[(hash % pool.table_size) as usize] as usize].addr
}

/// The pool's Maglev table, as both programs get it.
pub fn maglev_table(pool: &PoolMeta) -> Vec<u32> {
    let addrs: Vec<Vec<u8>> = pool.backends.iter().map(|b| octets(b.addr)).collect();
    let backends: Vec<maglev::MaglevBackend> = addrs.iter().zip(&pool.backends).map(|(a, b)| maglev::MaglevBackend { addr: a, weight: b.weight }).collect();
    maglev::build_table(&backends, pool.table_size).expect("the pool's Maglev table")
}

// ------------------------------------------------------------------ programs

pub fn clang(dir: &Path, name: &str, source: &Path, defines: &[String]) -> PathBuf {
    let o = dir.join(format!("{name}.o"));
    let out = Command::new("clang-14")
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-c"])
        .args(defines)
        .arg(source)
        .arg("-o")
        .arg(&o)
        .output()
        .expect("clang-14 (apt-get install clang-14)");
    assert!(out.status.success(), "clang failed on {}: {}", source.display(), String::from_utf8_lossy(&out.stderr));
    o
}

/// A C program from source text (the small helpers: floors, generators).
pub fn clang_text(dir: &Path, name: &str, text: &str) -> PathBuf {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, text).expect("write C");
    clang(dir, name, &c, &[])
}

pub fn bench_source(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/lb").join(file)
}

/// The C twin, loaded and filled with `table` and the pool's backends.
pub fn load_c(object: &Path, pool: &PoolMeta, table: &[u32]) -> aya::Ebpf {
    let mut ebpf = aya::Ebpf::load_file(object).expect("load the C object");
    let p: &mut Xdp = ebpf.program_mut("katran_like").expect("program katran_like").try_into().expect("an XDP program");
    p.load().expect("the kernel verifies the C load balancer");
    {
        let mut backends: aya::maps::Array<_, [u8; 20]> = aya::maps::Array::try_from(ebpf.map_mut("backends").expect("backends")).expect("array");
        for (slot, b) in pool.backends.iter().enumerate() {
            let mut v = [0u8; 20];
            let o = octets(b.addr);
            v[..o.len()].copy_from_slice(&o);
            v[16..].copy_from_slice(&xpol_lang::meta::BACKEND_PRESENT.to_le_bytes());
            backends.set(slot as u32, v, 0).expect("backend");
        }
    }
    {
        let mut ring: aya::maps::Array<_, u32> = aya::maps::Array::try_from(ebpf.map_mut("ring").expect("ring")).expect("array");
        for (i, slot) in table.iter().enumerate() {
            ring.set(i as u32, *slot, 0).expect("ring slot");
        }
    }
    let mut control: aya::maps::Array<_, u32> = aya::maps::Array::try_from(ebpf.map_mut("control").expect("control")).expect("array");
    control.set(0, 0, 0).expect("control word");
    ebpf
}

/// A program that only returns `code` (the floor rows).
pub fn floor_source(name: &str, code: u32) -> String {
    format!("#define SEC(n) __attribute__((section(n), used))\nstruct xdp_md;\nSEC(\"xdp\") int {name}(struct xdp_md *c) {{ return {code}; }}\nchar _l[] SEC(\"license\") = \"GPL\";\n")
}

/// One measured program, test-run through aya by name.
pub enum Prog {
    Xpol { policy: Box<LoadedPolicy>, name: String },
    C { ebpf: aya::Ebpf, name: String },
}

impl Prog {
    pub fn xpol(object: &[u8]) -> Prog {
        let policy = LoadedPolicy::load(object).expect("the xpol load balancer loads");
        let name = policy.meta().programs.iter().find(|p| p.hook == "xdp").expect("an xdp program").name.clone();
        Prog::Xpol { policy: Box::new(policy), name }
    }

    pub fn xdp(&mut self) -> &mut Xdp {
        match self {
            Prog::Xpol { policy, name } => policy.ebpf_mut().program_mut(name).expect("program").try_into().expect("xdp"),
            Prog::C { ebpf, name } => ebpf.program_mut(name).expect("program").try_into().expect("xdp"),
        }
    }

    /// The C twin's program, for test runs from several threads at once.
    pub fn xdp_ref(&self) -> &Xdp {
        match self {
            Prog::Xpol { .. } => unimplemented!("only the C twin is run from several threads"),
            Prog::C { ebpf, name } => ebpf.program(name).expect("program").try_into().expect("xdp"),
        }
    }

    /// (return value, output frame) of one run.
    fn run(&mut self, packet: &[u8], ctx: Option<&[u8]>) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; packet.len() + 256];
        let r = self.xdp().test_run(TestRunOptions { data_in: Some(packet), data_out: Some(&mut out), ctx_in: ctx, ..Default::default() }).expect("test run");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    /// (run time ns, runs) the kernel's BPF statistics counted so far.
    fn run_stats(&mut self) -> (u64, u64) {
        let i = self.xdp().info().expect("program info");
        (i.run_time().as_nanos() as u64, i.run_count())
    }

    /// (xlated insns, jited bytes, verified insns).
    fn sizes(&mut self) -> (u32, u32, u32) {
        let i = self.xdp().info().expect("program info");
        (i.size_translated().unwrap_or(0) / 8, i.size_jitted(), i.verified_instruction_count().unwrap_or(0))
    }

    /// Packets, bytes and new flows the pool's counters hold (all backends).
    fn pool_counters(&self) -> (u64, u64) {
        match self {
            Prog::Xpol { policy, .. } => {
                let s = policy.maps().pool_stats().expect("pool stats");
                let b = &s[0].backends;
                (b.iter().map(|b| b.packets).sum(), b.iter().map(|b| b.new_flows).sum())
            }
            Prog::C { ebpf, .. } => {
                let stats: aya::maps::PerCpuArray<_, [u64; 3]> = aya::maps::PerCpuArray::try_from(ebpf.map("stats").expect("stats")).expect("per-CPU array");
                let (mut packets, mut new) = (0, 0);
                for slot in 0..BACKENDS as u32 {
                    for v in stats.get(&slot, 0).expect("stats slot").iter() {
                        packets += v[0];
                        new += v[2];
                    }
                }
                (packets, new)
            }
        }
    }

    /// The entries of the pool's NAT map (the DNAT cases): reply flow key
    /// -> the VIP and its port.
    fn nat_entries(&mut self) -> BTreeMap<[u8; 40], [u8; 20]> {
        let name = match self {
            Prog::Xpol { policy, .. } => policy.meta().pools[0].nat_map.clone().expect("a pool with a NAT map"),
            Prog::C { .. } => "nat".to_string(),
        };
        // The map as the kernel knows it, among the program's: the runtime
        // keeps xpol's maps to itself.
        let ids = self.xdp().info().expect("program info").map_ids().expect("the program's maps").expect("a kernel that lists a program's maps");
        let named = |id: u32| aya::maps::MapInfo::from_id(id).ok().is_some_and(|i| i.name_as_str() == Some(name.as_str()));
        let id = ids.into_iter().find(|&id| named(id)).unwrap_or_else(|| panic!("no map {name} among the program's"));
        let map = aya::maps::Map::from_map_data(aya::maps::MapData::from_id(id).expect("the NAT map")).expect("a map aya knows");
        let map: aya::maps::HashMap<_, [u8; 40], [u8; 20]> = aya::maps::HashMap::try_from(map).expect("a hash map");
        map.iter().map(|e| e.expect("a NAT map entry")).collect()
    }
}

// ------------------------------------------------------------------ namespaces

/// The test-run namespaces: `pass`, with forwarding on and no route at all
/// (`bpf_fib_lookup` finds no route: NOT_FWDED, the packet passes); `tx`,
/// with a veth pair whose first end has the backends' prefixes and a
/// permanent neighbour entry for each backend (FIB success, XDP_TX when the
/// test run's ingress is that end). Removed on drop.
struct TestNamespaces {
    pass: String,
    tx: String,
    tx_dev: String,
}

/// The MACs of the `tx` namespace's veth pair: the program sends to the
/// second end's.
const TX_SMAC: [u8; 6] = [2, 0, 0, 0, 2, 1];
const TX_DMAC: [u8; 6] = [2, 0, 0, 0, 2, 2];

fn mac(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

impl TestNamespaces {
    fn new() -> TestNamespaces {
        let tag = unique_tag();
        let ns = TestNamespaces { pass: format!("xpollb{tag}-p"), tx: format!("xpollb{tag}-t"), tx_dev: format!("xt{tag}a") };
        let peer = format!("xt{tag}b");
        for n in [&ns.pass, &ns.tx] {
            veth::ip(&["netns", "add", n]);
            veth::sysctl(n, &["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]);
        }
        let t = ns.tx.as_str();
        veth::ip(&["-n", t, "link", "add", &ns.tx_dev, "address", &mac(&TX_SMAC), "type", "veth", "peer", "name", &peer, "address", &mac(&TX_DMAC)]);
        veth::ip(&["-n", t, "addr", "add", "198.18.1.1/24", "dev", &ns.tx_dev]);
        veth::ip(&["-n", t, "-6", "addr", "add", "2001:db8:1::1/64", "dev", &ns.tx_dev, "nodad"]);
        veth::ip(&["-n", t, "link", "set", &ns.tx_dev, "up"]);
        veth::ip(&["-n", t, "link", "set", &peer, "up"]);
        for i in 0..BACKENDS {
            for a in [backend4(i).to_string(), backend6(i).to_string()] {
                veth::ip(&["-n", t, "neigh", "replace", &a, "lladdr", &mac(&TX_DMAC), "dev", &ns.tx_dev, "nud", "permanent"]);
            }
        }
        ns
    }
}

impl Drop for TestNamespaces {
    fn drop(&mut self) {
        for n in [&self.pass, &self.tx] {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Where a test run's FIB lookup ends.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Exit {
    /// No route: the encapsulated packet passes to the stack.
    Pass,
    /// Route and neighbour: MACs from the FIB, XDP_TX.
    Tx,
}

const EXITS: [Exit; 2] = [Exit::Pass, Exit::Tx];

impl Exit {
    fn name(self) -> &'static str {
        match self {
            Exit::Pass => "pass",
            Exit::Tx => "tx",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Exit::Pass => "no route: XDP_PASS",
            Exit::Tx => "route + neighbour: XDP_TX",
        }
    }
}

/// Which flows a sample's packets belong to.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Flow {
    /// Every packet of the same flow: a flow-table hit.
    Established,
    /// Every packet a flow never seen: flow-table miss, Maglev ring,
    /// flow-table insert (evicting the least recently used entry of the
    /// full table).
    New,
}

const FLOWS: [Flow; 2] = [Flow::Established, Flow::New];

impl Flow {
    fn name(self) -> &'static str {
        match self {
            Flow::Established => "established",
            Flow::New => "new",
        }
    }
}

/// `struct xdp_md` with `ingress_ifindex`, for a frame of `len` bytes.
pub fn xdp_ctx(len: usize, ifindex: u32) -> Vec<u8> {
    [0u32, len as u32, 0, ifindex, 0, 0].iter().flat_map(|v| v.to_ne_bytes()).collect()
}

// ------------------------------------------------------------------ measurement

/// The samples of one program on one (case, flow, exit).
#[derive(Default)]
struct Series {
    /// Mean test-run duration (ns) of single runs, statistics off; one per round.
    duration: Vec<f64>,
    /// BPF statistics run time per run (ns); one per round.
    run_time: Vec<f64>,
}

/// One sample: `packets` run once each; the mean duration the kernel
/// reported, or with `stats` the run time per run the BPF statistics counted.
fn sample(prog: &mut Prog, packets: &[Vec<u8>], ctx_ifindex: Option<u32>, stats: bool, expect: u32) -> f64 {
    let ctx = ctx_ifindex.map(|i| xdp_ctx(packets[0].len(), i));
    let (t0, n0) = prog.run_stats();
    let mut total = 0u64;
    for p in packets {
        let r = prog.xdp().test_run(TestRunOptions { data_in: Some(p), ctx_in: ctx.as_deref(), ..Default::default() }).expect("test run");
        assert_eq!(r.return_value, expect, "a measured run returned {} rather than {expect}", r.return_value);
        total += r.duration.as_nanos() as u64;
    }
    if stats {
        let (t1, n1) = prog.run_stats();
        assert_eq!(n1 - n0, packets.len() as u64, "the BPF statistics counted {} of {} runs", n1 - n0, packets.len());
        (t1 - t0) as f64 / (n1 - n0) as f64
    } else {
        total as f64 / packets.len() as f64
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().cloned().fold(f64::MAX, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().cloned().fold(0.0, f64::max)
}

/// The measured programs of one case.
struct CaseProgs {
    case: Case,
    xpol: Prog,
    c: Prog,
    pool: PoolMeta,
    table: Vec<u32>,
    sizes: [(u32, u32, u32); 2],
    /// Runs of each program on its packets, for the check of its counters.
    runs: u64,
    new_flow_runs: u64,
}

/// Checks that xpol and C give the same verdict and the same frame for
/// `packet` at `exit`, and that the frame is the packet encapsulated
/// towards the backend Maglev gives its flow (or, for DNAT, translated to
/// it).
fn check_same_frames(cp: &mut CaseProgs, packet: &[u8], exit: Exit, ctx: Option<&[u8]>) {
    let (xr, xf) = cp.xpol.run(packet, ctx);
    let (cr, cf) = cp.c.run(packet, ctx);
    let what = format!("{} ({}), {}", cp.case.label, exit.label(), xpol_runtime::packet::hex(packet));
    assert_eq!(xr, cr, "{what}: xpol returned {xr}, C {cr}");
    assert_eq!(xf, cf, "{what}: xpol and C sent different frames:\n xpol {}\n C    {}", xpol_runtime::packet::hex(&xf), xpol_runtime::packet::hex(&cf));
    let want = match exit {
        Exit::Pass => 2,
        Exit::Tx => 3,
    };
    assert_eq!(xr, want, "{what}: expected return value {want}");
    match exit {
        Exit::Pass => assert_eq!(&xf[..12], &packet[..12], "{what}: the MACs as they came"),
        Exit::Tx => {
            assert_eq!(&xf[..6], &TX_DMAC, "{what}: destination MAC from the FIB");
            assert_eq!(&xf[6..12], &TX_SMAC, "{what}: source MAC from the FIB");
        }
    }
    let backend = expected_backend(&cp.pool, &cp.table, packet);
    if cp.case.nat {
        check_translated(&what, packet, &xf, backend);
    } else {
        let e = xpol_runtime::lb::decapsulate(&xf).unwrap_or_else(|| panic!("{what}: not an encapsulated frame: {}", xpol_runtime::packet::hex(&xf)));
        assert_eq!(e.outer_dst, backend, "{what}: the backend Maglev gives the flow");
        assert_eq!(e.inner, &packet[14..], "{what}: the packet inside");
        assert_eq!(e.gue_port, cp.case.gue.then_some(GUE_PORT), "{what}: GUE port");
        // `decapsulate` checked the UDP checksum; over IPv6 there must be one.
        if cp.case.gue && cp.case.v6 {
            assert_ne!(&xf[14 + 40 + 6..14 + 40 + 8], &[0, 0], "{what}: GUE over IPv6 carries a UDP checksum");
        }
    }
    cp.runs += 1;
}

/// A DNAT frame (`lb(web, nat, port: NAT_PORT)`): the TCP packet with the
/// backend's address and `NAT_PORT` as its destination and its checksums
/// right (by etherparse's own checksum code, not the programs'
/// arithmetic), every other byte after the Ethernet addresses as it came.
fn check_translated(what: &str, packet: &[u8], frame: &[u8], backend: IpAddr) {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let p = SlicedPacket::from_ethernet(frame).unwrap_or_else(|e| panic!("{what}: {e}: {}", xpol_runtime::packet::hex(frame)));
    let (dst, l3_at, l4_at): (IpAddr, usize, usize) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum(), "{what}: IPv4 header checksum");
            (h.destination_addr().into(), 14, 14 + usize::from(h.ihl()) * 4)
        }
        Some(NetSlice::Ipv6(ip)) => (ip.header().destination_addr().into(), 14, 14 + 40),
        other => panic!("{what}: not IP: {other:?}"),
    };
    let (dport, check, want) = match (&p.transport, &p.net) {
        (Some(TransportSlice::Tcp(t)), Some(NetSlice::Ipv4(ip))) => (t.destination_port(), t.checksum(), t.to_header().calc_checksum_ipv4(&ip.header().to_header(), t.payload()).expect("TCP checksum")),
        (Some(TransportSlice::Tcp(t)), Some(NetSlice::Ipv6(ip))) => (t.destination_port(), t.checksum(), t.to_header().calc_checksum_ipv6(&ip.header().to_header(), t.payload()).expect("TCP checksum")),
        other => panic!("{what}: not TCP: {other:?}"),
    };
    assert_eq!(check, want, "{what}: TCP checksum");
    assert_eq!(dst, backend, "{what}: to the backend Maglev gives the flow");
    assert_eq!(dport, NAT_PORT, "{what}: to the backend's port");
    // Everything else as it came: the packet with the frame's destination
    // address, port and checksums is the frame.
    let mut expected = packet.to_vec();
    let (dst_at, dst_len) = if backend.is_ipv6() { (l3_at + 24, 16) } else { (l3_at + 16, 4) };
    let mut take = |from: usize, len: usize| expected[from..from + len].copy_from_slice(&frame[from..from + len]);
    take(dst_at, dst_len);
    take(l4_at + 2, 2);
    take(l4_at + 16, 2);
    if !backend.is_ipv6() {
        take(l3_at + 10, 2);
    }
    assert_eq!(&frame[12..], &expected[12..], "{what}: only the destination and the checksums changed");
}

/// The reply translations a DNAT flow's packet should have recorded in
/// its pool's NAT map (`xpol_lang::meta::PoolMeta::nat_map`): key the
/// reply's [`xpol_lang::meta::FlowKey`] (from the backend and `NAT_PORT` to
/// the client and its port), value the [`xpol_lang::meta::NatValue`] of the
/// VIP and its port. `packet`: an untagged TCP packet without options or
/// extension headers.
fn nat_entry(pool: &PoolMeta, table: &[u32], packet: &[u8]) -> ([u8; 40], [u8; 20]) {
    let v6 = u16::from_be_bytes([packet[12], packet[13]]) == 0x86dd;
    let (src, dst, l4) = if v6 { (&packet[22..38], &packet[38..54], 54) } else { (&packet[26..30], &packet[30..34], 34) };
    let mut key = [0u8; 40];
    let backend = octets(expected_backend(pool, table, packet));
    key[..backend.len()].copy_from_slice(&backend);
    key[16..16 + src.len()].copy_from_slice(src);
    key[32..34].copy_from_slice(&NAT_PORT.to_be_bytes());
    key[34..36].copy_from_slice(&packet[l4..l4 + 2]);
    key[36] = 6;
    key[37] = if v6 { 6 } else { 4 };
    let mut value = [0u8; 20];
    value[..dst.len()].copy_from_slice(dst);
    value[16..18].copy_from_slice(&packet[l4 + 2..l4 + 4]);
    (key, value)
}

pub fn run(mode: &Mode, out_dir: &Path) -> Output {
    let quick = mode.quick;
    let dir = tempfile::tempdir().expect("tempdir");
    let (rounds, runs) = if quick { (1, 200) } else { (mode.rounds, RUNS) };
    let stats_sysctl = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    assert!(stats_sysctl.trim() != "1", "kernel.bpf_stats_enabled is 1: set it to 0 (sysctl -w kernel.bpf_stats_enabled=0), the benchmark turns the statistics on when it needs them");
    let mut skipped = Vec::new();
    let cpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) - 1;
    let ns = TestNamespaces::new();
    let ns_path = |n: &str| Path::new("/run/netns").join(n);
    let (pass_ns, tx_ns) = (ns_path(&ns.pass), ns_path(&ns.tx));
    let tx_ifindex = sys::in_netns(&tx_ns, None, || sys::if_nametoindex(&ns.tx_dev)).expect("enter the tx namespace");
    assert!(tx_ifindex != 0, "no {} in the tx namespace", ns.tx_dev);
    let ctx_of = |exit: Exit| match exit {
        Exit::Pass => None,
        Exit::Tx => Some(tx_ifindex),
    };

    // The programs.
    let mut progs: Vec<CaseProgs> = Vec::new();
    let mut compile_ms = BTreeMap::new();
    for case in CASES {
        let policy = dir.path().join(format!("lb-{}.xpol", case.name));
        std::fs::write(&policy, policy_text(&case, "tcp", 80)).expect("write policy");
        let t = std::time::Instant::now();
        let object = xpol_compiler::build(&policy, &xpol_compiler::BuildOptions::default()).output.unwrap_or_else(|| panic!("{} compiles", policy.display())).object;
        compile_ms.insert(case.name, t.elapsed().as_secs_f64() * 1e3);
        let mut xpol = Prog::xpol(&object);
        let pool = match &xpol {
            Prog::Xpol { policy, .. } => policy.meta().pools[0].clone(),
            Prog::C { .. } => unreachable!(),
        };
        let table = maglev_table(&pool);
        let obj = clang(dir.path(), &format!("c-{}", case.name), &bench_source("katran_like.c"), &c_defines(&case, &pool, 6, 80));
        let mut c = Prog::C { ebpf: load_c(&obj, &pool, &table), name: "katran_like".into() };
        let sizes = [xpol.sizes(), c.sizes()];
        progs.push(CaseProgs { case, xpol, c, pool, table, sizes, runs: 0, new_flow_runs: 0 });
    }
    let floor_obj = clang_text(dir.path(), "floor", &floor_source("lb_floor", 2));
    let mut floor = Prog::C { ebpf: aya::Ebpf::load_file(&floor_obj).expect("load floor"), name: "lb_floor".into() };
    let p: &mut Xdp = floor.xdp();
    p.load().expect("floor loads");
    let floor_sizes = floor.sizes();

    // New flows: a fresh flow number for every packet, never reused.
    let mut next_flow = 1u64;
    let mut new_flows = |case: &Case, n: usize| -> Vec<Vec<u8>> {
        let v = (0..n as u64).map(|i| vip_packet(case, next_flow + i)).collect();
        next_flow += n as u64;
        v
    };

    // Same frames, same verdicts, before anything is timed: the
    // established flow's packet and a new flow, at both exits.
    for cp in progs.iter_mut() {
        let established = vip_packet(&cp.case, 0);
        let fresh = new_flows(&cp.case, 2);
        for (exit, p) in [(Exit::Pass, &established), (Exit::Pass, &fresh[0]), (Exit::Tx, &established), (Exit::Tx, &fresh[1])] {
            let path = if exit == Exit::Pass { &pass_ns } else { &tx_ns };
            let ctx = ctx_of(exit).map(|i| xdp_ctx(p.len(), i));
            sys::in_netns(path, None, || check_same_frames(cp, p, exit, ctx.as_deref())).expect("enter the namespace");
        }
        cp.new_flow_runs += 3;
        // DNAT: both recorded the same reply translations, one per flow.
        if cp.case.nat {
            let want: BTreeMap<_, _> = [&established, &fresh[0], &fresh[1]].into_iter().map(|p| nat_entry(&cp.pool, &cp.table, p)).collect();
            for (who, prog) in [("xpol", &mut cp.xpol), ("C", &mut cp.c)] {
                assert_eq!(prog.nat_entries(), want, "{who} {}: the NAT map holds the reply translation of each flow sent", cp.case.label);
            }
        }
    }

    // `repeat` does not reset the packet: with repeat 1000 the pool counts
    // one packet, not 1000 (see the module documentation).
    let repeat_runs_balanced = {
        let cp = &mut progs[0];
        let before = cp.xpol.pool_counters().0;
        let p = vip_packet(&cp.case, 0);
        sys::in_netns(&pass_ns, None, || cp.xpol.xdp().test_run(TestRunOptions { data_in: Some(&p), repeat: 1000, ..Default::default() }).expect("test run")).expect("enter the namespace");
        let counted = cp.xpol.pool_counters().0 - before;
        cp.runs += counted;
        counted
    };
    assert!(repeat_runs_balanced < 1000, "BPF_PROG_TEST_RUN with repeat balanced every repeat: this kernel resets the packet, and the benchmark could use repeat");

    // Fill the flow tables, so that every new flow measured evicts one
    // (the steady state of a busy balancer).
    if !quick {
        for cp in progs.iter_mut() {
            let fill = new_flows(&cp.case, cp.pool.flows as usize + 1000);
            sys::in_netns(&pass_ns, Some(cpu), || {
                for prog in [&mut cp.xpol, &mut cp.c] {
                    sample(prog, &fill, None, false, 2);
                }
            })
            .expect("enter the namespace");
            cp.runs += fill.len() as u64;
            cp.new_flow_runs += fill.len() as u64;
        }
    }

    // Interleaved rounds. In each: every program, case, flow kind and exit
    // once with the statistics off (test-run durations), then once more
    // with them on (run time). xpol and C of a case run back to back on the
    // same packets; new flows are new to both (each has its own table).
    let mut series: BTreeMap<(usize, Flow, Exit, bool), Series> = BTreeMap::new();
    let mut floor_series = Series::default();
    let floor_packet = vip_packet(&CASES[0], 0);
    for round in 0..rounds {
        for stats in [false, true] {
            let _stats_on = stats.then(|| aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS (Linux 5.8)"));
            for exit in EXITS {
                let path = if exit == Exit::Pass { &pass_ns } else { &tx_ns };
                let expect = if exit == Exit::Pass { 2 } else { 3 };
                for (ci, cp) in progs.iter_mut().enumerate() {
                    for flow in FLOWS {
                        let packets = match flow {
                            Flow::Established => vec![vip_packet(&cp.case, 0); runs],
                            Flow::New => new_flows(&cp.case, runs),
                        };
                        // Alternate which program goes first.
                        let order: [bool; 2] = if round % 2 == 0 { [true, false] } else { [false, true] };
                        let ifindex = ctx_of(exit);
                        let got = sys::in_netns(path, Some(cpu), || {
                            let mut got = [0.0; 2];
                            for is_xpol in order {
                                let prog = if is_xpol { &mut cp.xpol } else { &mut cp.c };
                                got[usize::from(!is_xpol)] = sample(prog, &packets, ifindex, stats, expect);
                            }
                            got
                        })
                        .expect("enter the namespace");
                        cp.runs += packets.len() as u64;
                        if flow == Flow::New {
                            cp.new_flow_runs += packets.len() as u64;
                        }
                        for (is_c, ns) in got.iter().enumerate() {
                            let s = series.entry((2 * ci + is_c, flow, exit, stats)).or_default();
                            if stats { s.run_time.push(*ns) } else { s.duration.push(*ns) }
                        }
                    }
                }
            }
            let packets = vec![floor_packet.clone(); runs];
            let ns_per = sys::in_netns(&pass_ns, Some(cpu), || sample(&mut floor, &packets, None, stats, 2)).expect("enter the namespace");
            if stats { floor_series.run_time.push(ns_per) } else { floor_series.duration.push(ns_per) }
        }
    }

    // Every run was balanced, and every new flow went through the ring and
    // into the flow table: the pool's counters say so, in both programs.
    let mut counters = Vec::new();
    for cp in &progs {
        for (who, prog) in [("xpol", &cp.xpol), ("C", &cp.c)] {
            let (packets, new) = prog.pool_counters();
            // xpol also counted the `repeat` run above; C did not run it.
            let runs = if who == "C" && cp.case == CASES[0] { cp.runs - repeat_runs_balanced } else { cp.runs };
            assert_eq!(packets, runs, "{who} {}: the pool counted {packets} packets of {runs} runs", cp.case.label);
            // At least every new flow; at most a few more, when the
            // established flow was evicted from the full table.
            assert!(new >= cp.new_flow_runs && new <= cp.new_flow_runs + 4 * rounds as u64 + 4, "{who} {}: {new} new flows counted, {} sent", cp.case.label, cp.new_flow_runs);
            counters.push(serde_json::json!({"program": who, "case": cp.case.name, "packets": packets, "new_flows": new, "new_flow_packets_sent": cp.new_flow_runs}));
        }
    }
    // The NAT maps after the run: every entry translates back to the VIP
    // and its port, and where no table was filled (nothing evicted, which
    // the kernel's LRU does at times of its own), both hold the same
    // replies.
    let mut nat_maps = Vec::new();
    for cp in progs.iter_mut().filter(|cp| cp.case.nat) {
        let (x, c) = (cp.xpol.nat_entries(), cp.c.nat_entries());
        let vip_value = nat_entry(&cp.pool, &cp.table, &vip_packet(&cp.case, 0)).1;
        for (who, entries) in [("xpol", &x), ("C", &c)] {
            assert!(entries.values().all(|v| *v == vip_value), "{who} {}: a NAT entry that does not translate back to the VIP", cp.case.label);
        }
        if quick {
            assert!(x == c, "{}: xpol's and C's NAT maps differ after the run ({} and {} entries)", cp.case.label, x.len(), c.len());
        }
        let both = x.keys().filter(|k| c.contains_key(*k)).count();
        nat_maps.push(serde_json::json!({"case": cp.case.name, "xpol_entries": x.len(), "c_entries": c.len(), "in_both": both}));
    }
    drop(ns);

    let veth_rows = if mode.veth { veth::run(quick, dir.path(), &mut skipped) } else { Vec::new() };
    let (veth_md, veth_json) = veth::report(&veth_rows, &skipped);
    let (table, results) = report(&progs, &series, &floor_series, floor_sizes, &compile_ms);
    let pool = &progs[0].pool;
    let json = serde_json::json!({
        "quick": quick, "rounds": rounds, "runs_per_sample": runs,
        "pool": {"backends": pool.backends.len(), "table_size": pool.table_size, "flows": pool.flows, "max_backends": pool.max_backends},
        "repeat_runs_balanced": {"repeat": 1000, "balanced": repeat_runs_balanced},
        "results": results, "counters": counters, "nat_maps": nat_maps, "veth": veth_json, "skipped": skipped,
    });
    std::fs::create_dir_all(out_dir).expect("output dir");
    std::fs::write(out_dir.join("lb-path.json"), serde_json::to_string_pretty(&json).expect("json")).expect("write json");
    Output { table, veth: veth_md, json, skipped }
}

/// The test-run tables (markdown) and their JSON rows.
fn report(progs: &[CaseProgs], series: &BTreeMap<(usize, Flow, Exit, bool), Series>, floor: &Series, floor_sizes: (u32, u32, u32), compile_ms: &BTreeMap<&str, f64>) -> (String, Vec<serde_json::Value>) {
    let cell = |v: &[f64], d: usize| format!("{:.d$} ({:.d$}-{:.d$})", median(v), min(v), max(v));
    let ratios = |x: &[f64], c: &[f64]| -> Vec<f64> { x.iter().zip(c).map(|(x, c)| x / c).collect() };
    let mut md = String::new();
    let _ = writeln!(md, "| case | flow | exit | C run time ns | xpol run time ns | xpol vs C, run time | C test-run ns | xpol test-run ns | xpol vs C, test run |");
    let _ = writeln!(md, "|---|---|---|---:|---:|---:|---:|---:|---:|");
    let mut json = Vec::new();
    let mut verdicts = Vec::new();
    for (ci, cp) in progs.iter().enumerate() {
        for flow in FLOWS {
            for exit in EXITS {
                let get = |p: usize, stats: bool| {
                    let s = &series[&(2 * ci + p, flow, exit, stats)];
                    if stats { s.run_time.clone() } else { s.duration.clone() }
                };
                let (xr, cr, xd, cd) = (get(0, true), get(1, true), get(0, false), get(1, false));
                let (rr, rd) = (ratios(&xr, &cr), ratios(&xd, &cd));
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    cp.case.label,
                    flow.name(),
                    exit.label(),
                    cell(&cr, 1),
                    cell(&xr, 1),
                    cell(&rr, 2).replacen(' ', "x ", 1),
                    cell(&cd, 1),
                    cell(&xd, 1),
                    cell(&rd, 2).replacen(' ', "x ", 1)
                );
                verdicts.push((cp.case.label, flow, exit, median(&rr), min(&rr), max(&rr)));
                json.push(serde_json::json!({
                    "case": cp.case.name, "flow": flow.name(), "exit": exit.name(),
                    "xpol_run_time_ns": xr, "c_run_time_ns": cr, "xpol_vs_c_run_time_per_round": rr,
                    "xpol_test_run_ns": xd, "c_test_run_ns": cd, "xpol_vs_c_test_run_per_round": rd,
                }));
            }
        }
    }
    let _ = writeln!(md, "| floor (return XDP_PASS) | | | {} | | | {} | | |", cell(&floor.run_time, 1), cell(&floor.duration, 1));
    json.push(serde_json::json!({"case": "floor", "run_time_ns": floor.run_time, "test_run_ns": floor.duration}));

    let _ = writeln!(md, "\n| case | program | xlated insns | jited bytes | verifier insns | compile ms |");
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|");
    for cp in progs {
        for (who, s) in [("xpol", cp.sizes[0]), ("C", cp.sizes[1])] {
            let compile = if who == "xpol" { format!("{:.0}", compile_ms[cp.case.name]) } else { String::new() };
            let _ = writeln!(md, "| {} | {who} | {} | {} | {} | {compile} |", cp.case.label, s.0, s.1, s.2);
        }
    }
    let _ = writeln!(md, "| floor | C | {} | {} | {} | |", floor_sizes.0, floor_sizes.1, floor_sizes.2);

    let _ = writeln!(md, "\nTarget: xpol at most 1.0x the C equivalent (median of the per-round ratios of run time):\n");
    for (label, flow, exit, r, lo, hi) in verdicts {
        let _ = writeln!(md, "- {label}, {} flow, {}: {r:.3}x, per round {lo:.2}-{hi:.2} ({}).", flow.name(), exit.label(), if r <= 1.0 { "met" } else { "not met" });
    }
    (md, json)
}

/// Where and when a run was made, as each section of BENCHMARKS.md says.
struct RunEnv {
    command: String,
    commit: String,
    machine: String,
    cpus: usize,
    kernel: String,
    load_before: String,
    load_after: String,
}

impl RunEnv {
    fn now(root: &Path, command: &str, load_before: String) -> RunEnv {
        let machine = common::cpu_model();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
        let commit = common::commit_label(root, &["compiler", "lang", "runtime", "benches", "bench", "src"]);
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
        RunEnv { command: command.to_string(), commit, machine, cpus, kernel, load_before, load_after: common::load_average() }
    }

    /// The first sentence of a section: what was run, where, under what load.
    fn measured(&self) -> String {
        format!(
            "Measured with `{}` at commit {} on {}, {} CPUs, kernel {}. Load average (1, 5, 15 min) {} before the run and {} after it: the machine is shared, so other work ran beside the benchmark.",
            self.command, self.commit, self.machine, self.cpus, self.kernel, self.load_before, self.load_after
        )
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let rounds = args.iter().position(|a| a == "--rounds").map_or(ROUNDS, |i| args.get(i + 1).and_then(|n| n.parse().ok()).filter(|&n| n > 0).expect("--rounds takes a number, at least 1"));
    let flow_table_only = args.iter().any(|a| a == "--flow-table");
    let no_flow_table = args.iter().any(|a| a == "--no-flow-table");
    let mode = Mode { quick, veth: !args.iter().any(|a| a == "--no-veth"), rounds: if quick { 1 } else { rounds } };
    if !xpol_runtime::testing::kernel_or_skip("lb_path benchmark") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let load_before = common::load_average();
    let path_out = (!flow_table_only).then(|| run(&mode, &common::out_dir(root, quick, mode.complete())));
    // The flow-table part is complete with every round (veth plays no part in it).
    let flow_complete = !quick && mode.rounds == ROUNDS;
    let flow_out = (!no_flow_table).then(|| flow_table::run(quick, mode.rounds, &common::out_dir(root, quick, flow_complete)));
    if let Some(out) = &path_out {
        println!("{}\n{}", out.table, out.veth);
    }
    if let Some(out) = &flow_out {
        println!("{}", out.markdown);
    }
    for s in path_out.iter().flat_map(|o| &o.skipped).chain(flow_out.iter().flat_map(|o| &o.skipped)) {
        println!("SKIPPED: {s}");
    }
    let command = if flow_table_only { "cargo bench --bench lb_path -- --flow-table" } else { "cargo bench --bench lb_path" };
    let env = RunEnv::now(root, command, load_before);
    let path = root.join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let mut new = old.clone();
    if let Some(out) = path_out.as_ref().filter(|_| mode.complete()) {
        new = replace_section(&new, SECTION, &path_section(out, &env));
    }
    if let Some(flow_out) = flow_out.as_ref().filter(|o| flow_complete && !o.markdown.is_empty()) {
        new = replace_section(&new, flow_table::SECTION, &flow_table::section(flow_out, &env.measured()));
    }
    if new != old {
        let tmp = root.join("BENCHMARKS.md.tmp");
        std::fs::write(&tmp, new).expect("write BENCHMARKS.md");
        std::fs::rename(&tmp, &path).expect("replace BENCHMARKS.md");
    }
}

/// The packet-path part's section of BENCHMARKS.md.
fn path_section(out: &Output, env: &RunEnv) -> String {
    let skipped = if out.skipped.is_empty() { String::new() } else { format!("\n**Skipped:** {}\n", out.skipped.join("; ")) };
    format!(
        "## {SECTION}\n\n\
{} Raw numbers: `bench-out/lb-path.json`.\n{skipped}\n\
### BPF_PROG_TEST_RUN: xpol against the same work in C\n\n\
xpol's `lb(web, encap: ipip|gue, src: ADDR)` and `lb(web, nat, port: {NAT_PORT})` behind one VIP rule (`ip.dst == VIP && tcp.dport == 80`), a pool of {BACKENDS} backends (Maglev table of {} slots, flow table of {} flows), against `bench/lb/katran_like.c`: the same work written by hand in C as Katran would do it (parse, VIP match, VIP counters, murmur3 flow hash, LRU flow table, control word and Maglev ring on a miss, backends array, per-backend per-CPU counters; then either `bpf_xdp_adjust_head` and the outer headers with the IPv4 header checksum, and over IPv6 GUE's UDP checksum, computed in registers, or, for DNAT, the destination address and port rewritten in place with incremental checksum updates (RFC 1624) and the reply's translation recorded in the pool's NAT map unless already there; `bpf_fib_lookup`, `XDP_TX`/redirect/`XDP_PASS`), compiled with `clang-14 -O2` once per case (`-D` switches), its maps filled with the same Maglev table (`xpol_lang::maglev::build_table`); `bench/lb/README.md` says what it does differently. Before anything is timed, both must send byte-identical frames, encapsulated towards the backend Maglev gives the flow (GUE over IPv6 with a UDP checksum that verifies) or, for DNAT, the packet with that backend's address and port {NAT_PORT} as its destination and every checksum right (etherparse's), for an established and a new flow at both exits, and for DNAT both NAT maps must hold exactly the reply translations of the flows sent, or the run fails; after, each pool's counters must hold exactly the packets sent, and every NAT entry must translate back to the VIP. Packets: TCP ACK with 10 bytes of payload from 198.18.7.7:40000 to 198.18.0.100:80 (64 bytes), or 2001:db8:7::7 to 2001:db8::100 (84 bytes); outer source 198.18.0.1 or 2001:db8::1; GUE port {GUE_PORT}.\n\n\
Each test run is a single run (`repeat` 1): with `repeat`, the kernel runs the program again on the same `xdp_buff` without resetting it, so every run after the first would see the packet already encapsulated (or translated, no longer to the VIP) and pass it (the benchmark checks it: a test run with repeat 1,000 balances {} packet). A sample is {RUNS} single runs, one system call each, pinned to one CPU: *run time* is what the kernel's BPF statistics (`BPF_ENABLE_STATS`) count per run (the program alone plus two `sched_clock()` reads: see the floor row), *test-run* the mean of the durations `BPF_PROG_TEST_RUN` reports with the statistics off (the program plus the test loop's own clock reads and bottom-half toggling). {ROUNDS} interleaved rounds; median (min-max) over the rounds; each ratio is taken within a round, where xpol and C ran back to back on the same packets (which goes first alternates). *Established flow*: the same packet every run (flow-table hit). *New flow*: every packet a flow never seen before (source address and port vary; flow-table miss, control word, ring, backend, flow-table insert; for DNAT also a NAT-map miss and insert), into flow tables (and NAT maps) filled beforehand, so that every insert evicts the least recently used flow. Exits: a namespace with forwarding on and no route (`bpf_fib_lookup` answers NOT_FWDED, the encapsulated or translated packet passes), and one with the backends' prefixes on a veth and permanent neighbour entries, the test run's ingress on that veth (FIB success, MACs written, `XDP_TX`).\n\n{}\n\
Where the difference between xpol and C comes from (the instructions each executes on the established-flow path, by part of codegen): `bench/lb/README.md`.\n\n\
### Veth: CPU per forwarded packet\n\n\
A generator namespace sends one UDP flow (198.18.7.7:40000 to the VIP 198.18.0.100:53, 64-byte frames) into a load-balancer namespace, which forwards it over a second veth pair into a backend namespace (`benches/lb_path/veth.rs`); each peer has a load-balancer namespace of its own. The generator is an XDP program test-run with `BPF_F_TEST_XDP_LIVE_FRAMES` (batches of 64) with `ingress_ifindex` on its veth, returning `XDP_TX`; it writes the whole frame on every run, since the load balancer encapsulates in place (and the kernel's forwarding decrements the TTL in place) in pages the test run recycles without copying the frame again. The generator thread is pinned to the last CPU, where the three veths' NAPI polls run too; CPU ns per packet = (run time of the generator thread from `/proc/thread-self/schedstat`, which on this kernel (no IRQ time accounting) includes the softirq work done in its context, + run time of that CPU's ksoftirqd) / frames: generating, the load balancer's receive, work and transmit, and the backend side's receive. 2,000,000 frames per sample, 5 interleaved rounds, median (min-max). On the backend side an XDP program counts what arrives by kind (IPIP to a backend, UDP to a backend, UDP to the VIP, other) and drops it: every frame sent must arrive as the kind the peer forwards, or the run fails (a sample that lost frames on the way is run again, at most 10 times per peer). The flow is established before anything is measured (1,000 frames): what is measured is the established-flow path of every peer (xpol's and C's flow table, IPVS's connection table, conntrack). Peers: the floor (`XDP_DROP` at the load balancer's ingress: generating and delivering a frame); an XDP program that only redirects to the egress veth (the XDP forwarding path without load-balancing work); xpol's `lb(web, encap: ipip, src: 198.18.0.1)` behind `ip.dst == 198.18.0.100 && udp.dport == 53`, native XDP on the ingress veth, the next hop from `bpf_fib_lookup` (a route to the backends' /24 on the egress veth and a permanent neighbour entry for each backend), `bpf_redirect` to the egress veth; the C twin, the same way; IPVS in tunnel (IPIP), direct-routing and NAT mode (`ipvsadm`, UDP service on the VIP, scheduler rr, the same 10 backends), where the kernel has IP_VS; nftables DNAT in `prerouting` with `jhash` over the 5-tuple into a map of the 10 backends (the kernel's NAT load balancing with conntrack, what is there when IPVS is not); and plain kernel IP forwarding of frames sent straight to a backend's address (no load balancing at all). The egress veth's peer runs the counting XDP program, so XDP redirects reach it as frames and the kernel's transmits as packets it takes with NAPI.\n\n{}",
        env.measured(),
        out.json["pool"]["table_size"],
        out.json["pool"]["flows"],
        out.json["repeat_runs_balanced"]["balanced"],
        out.table,
        out.veth,
    )
}
