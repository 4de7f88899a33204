//! The flow table, shared by the CPUs or per CPU (issue 13: "LRU flow ->
//! backend (per-CPU or shared: measure and say why)"). xpol keeps one
//! `BPF_MAP_TYPE_LRU_HASH` per pool that every CPU reads and writes; Katran
//! keeps one LRU table per CPU. Measured with the C twin
//! (`bench/lb/katran_like.c`, IPIP over IPv4, the pool of the packet-path
//! part), compiled once per layout, otherwise identical:
//!
//! - shared: one `LRU_HASH` of `flows` entries (xpol's layout);
//! - `-DPERCPU_FLOWS=1`: one `LRU_PERCPU_HASH` of `flows` entries (keys,
//!   hash buckets and LRU lists shared; a value per CPU);
//! - `-DPERCPU_TABLES=1`: Katran's layout, an `LRU_HASH` per CPU of
//!   `flows / 2` entries each (nothing shared);
//! - the shared layout with `flows / 2` entries: a control for the size of
//!   those tables (what the size alone changes);
//! - `-DFLOWS_MAP_FLAGS=2`: the shared table with an LRU list per CPU
//!   (`BPF_F_NO_COMMON_LRU`), what xpol could switch to if the shared LRU
//!   list's lock ever showed.
//!
//! Two methods, both with `BPF_PROG_TEST_RUN` and the kernel's BPF
//! statistics for the program's own run time:
//!
//! - *per packet*: the whole program (parse to encapsulation and FIB), one
//!   test run per packet as in the packet-path part (`repeat` would run the
//!   program again on the already encapsulated frame); varying 5-tuples are
//!   different frames, one per call. The system call around each run keeps
//!   the share of a CPU's time spent in the program low (the report says
//!   how low), so two CPUs meet in the table less often than at line rate.
//! - *saturated*: the twin built with `-DSATURATE` (it stops after the
//!   backend counters and passes the packet unchanged, or first counts its
//!   source address and port up by one, which the next repetition sees),
//!   test-run with a long `repeat`: the CPUs do nothing but parse, hash,
//!   use the table and count, back to back, which is where sharing would
//!   cost most.
//!
//! Each lane is a thread pinned to one CPU (`sys::in_netns` with a CPU:
//! `sched_setaffinity`) in the `pass` namespace (no route: the encapsulated
//! packet passes); two lanes start together (a barrier) on two CPUs and run
//! the same program, so the statistics (summed over CPUs) give the mean run
//! time per packet while both CPUs use the table. Scenarios: established
//! flows (every packet a flow-table hit) on one CPU; on two CPUs each with
//! its own flow (as RSS spreads flows); on two CPUs with the same flow (one
//! entry read by both); new flows (every packet a 5-tuple never seen, into
//! tables filled beforehand, so that every insert evicts) on one CPU and on
//! two. Interleaved rounds, the layouts' order rotating; median (min-max)
//! over the rounds; each ratio taken within a round.
//!
//! Before anything is timed, each layout shows what it does with a flow
//! that reaches a second CPU after the pool changed (its backend drained:
//! the Maglev table switched to one without it): a shared table keeps the
//! flow on its backend, the per-CPU layouts balance it again, elsewhere.

use super::common::median;
use super::{bench_source, c_defines, clang, expected_backend, load_c, maglev_table, max, min, policy_text, vip_packet, Prog, TestNamespaces, CASES, RUNS};
use aya::maps::{Array, HashMap, MapError, PerCpuHashMap};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Barrier;
use std::time::Instant;
use xpol_lang::meta::PoolMeta;
use xpol_runtime::packet::PacketSpec;
use xpol_runtime::sys;

/// The heading of this part's section of BENCHMARKS.md.
pub const SECTION: &str = "Load balancer: flow table, shared or per CPU";

/// Entries of the flow table and slots of the Maglev table (a prime) in
/// quick mode: small, so that filling them stays quick.
const QUICK_FLOWS: u32 = 2048;
const QUICK_TABLE: u32 = 1021;
/// Flows beyond the table's size each CPU sends to fill it.
const FILL_MARGIN: u32 = 1000;
/// XDP_PASS: the `pass` namespace has no route to the backends.
const PASS: u32 = 2;
/// Saturated method: repetitions of the one test run per lane and sample,
/// established and new flows. Long, so that the loop outlasts what the
/// kernel does around a test run with `repeat` (it switches its XDP
/// dispatcher to the program and back: two RCU grace periods, milliseconds)
/// and the lanes' loops overlap. At most 2^20: a new-flow run counts its
/// packet's source address (low 16 bits) and port up from a base 2^20 apart.
const SATURATED_REPEAT_ESTABLISHED: u32 = 1_000_000;
const SATURATED_REPEAT_NEW: u32 = 250_000;
/// Saturated runs' new flows: base addresses from 198.19.0.0, 16 apart.
const SATURATED_BASE: u32 = 0xc613_0000;
const SATURATED_BASES: u32 = 4096;

/// How the C twin keeps its flows.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Layout {
    Shared,
    PerCpuValues,
    PerCpuTables,
    /// The shared layout with half the entries: the size of each per-CPU table.
    SharedHalf,
    /// The shared table with an LRU list per CPU.
    SharedCpuLru,
}

pub const LAYOUTS: [Layout; 5] = [Layout::Shared, Layout::PerCpuValues, Layout::PerCpuTables, Layout::SharedHalf, Layout::SharedCpuLru];

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Shared => "shared",
            Layout::PerCpuValues => "percpu_values",
            Layout::PerCpuTables => "percpu_tables",
            Layout::SharedHalf => "shared_half",
            Layout::SharedCpuLru => "shared_no_common_lru",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Layout::Shared => "shared `LRU_HASH` (xpol)",
            Layout::PerCpuValues => "`LRU_PERCPU_HASH`",
            Layout::PerCpuTables => "an `LRU_HASH` per CPU, half the entries each (Katran)",
            Layout::SharedHalf => "shared, half the entries",
            Layout::SharedCpuLru => "shared, `BPF_F_NO_COMMON_LRU`",
        }
    }
    /// The layout's name in the ratio table's headings.
    fn short(self) -> &'static str {
        match self {
            Layout::Shared => "shared",
            Layout::PerCpuValues => "`LRU_PERCPU_HASH`",
            Layout::PerCpuTables => "per-CPU tables",
            Layout::SharedHalf => "shared half",
            Layout::SharedCpuLru => "`NO_COMMON_LRU`",
        }
    }
    fn define(self) -> Option<&'static str> {
        match self {
            Layout::Shared | Layout::SharedHalf => None,
            Layout::PerCpuValues => Some("-DPERCPU_FLOWS=1"),
            Layout::PerCpuTables => Some("-DPERCPU_TABLES=1"),
            Layout::SharedCpuLru => Some("-DFLOWS_MAP_FLAGS=2"),
        }
    }
    /// The `FLOWS` the twin is compiled with (per-CPU tables: each holds half).
    fn flows(self, pool_flows: u32) -> u32 {
        match self {
            Layout::SharedHalf => pool_flows / 2,
            _ => pool_flows,
        }
    }
    /// Whether every CPU sees every flow's entry.
    fn shared(self) -> bool {
        !matches!(self, Layout::PerCpuValues | Layout::PerCpuTables)
    }
}

/// What the lanes of a sample send.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Scenario {
    /// (a) One CPU, one established flow.
    EstablishedOne,
    /// (b) Two CPUs, each its own established flow.
    EstablishedTwoOwn,
    /// (b) Two CPUs, the same established flow.
    EstablishedTwoSame,
    /// (c) One CPU, every packet a new flow.
    NewOne,
    /// (c) Two CPUs, every packet a new flow.
    NewTwo,
}

pub const SCENARIOS: [Scenario; 5] = [Scenario::EstablishedOne, Scenario::EstablishedTwoOwn, Scenario::EstablishedTwoSame, Scenario::NewOne, Scenario::NewTwo];

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::EstablishedOne => "established_1cpu",
            Scenario::EstablishedTwoOwn => "established_2cpu_own_flows",
            Scenario::EstablishedTwoSame => "established_2cpu_same_flow",
            Scenario::NewOne => "new_1cpu",
            Scenario::NewTwo => "new_2cpu",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Scenario::EstablishedOne => "established, 1 CPU",
            Scenario::EstablishedTwoOwn => "established, 2 CPUs, each its own flow",
            Scenario::EstablishedTwoSame => "established, 2 CPUs, the same flow",
            Scenario::NewOne => "new flows (evicting), 1 CPU",
            Scenario::NewTwo => "new flows (evicting), 2 CPUs",
        }
    }
    fn cpus(self) -> usize {
        match self {
            Scenario::EstablishedOne | Scenario::NewOne => 1,
            _ => 2,
        }
    }
    fn new_flows(self) -> bool {
        matches!(self, Scenario::NewOne | Scenario::NewTwo)
    }
}

/// How a sample's packets are run.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Method {
    /// The whole program, one test run per packet.
    PerPacket,
    /// The flow table and counters only, test runs with `repeat`.
    Saturated,
}

pub const METHODS: [Method; 2] = [Method::PerPacket, Method::Saturated];

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::PerPacket => "per_packet",
            Method::Saturated => "saturated",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Method::PerPacket => "per packet",
            Method::Saturated => "saturated",
        }
    }
}

/// What this part produced: the markdown of its section's tables, its JSON
/// document (also written to `out_dir/lb-flow-table.json`), and what could
/// not run.
pub struct Output {
    pub markdown: String,
    pub json: serde_json::Value,
    pub skipped: Vec<String>,
}

/// One lane of a sample: a CPU and the packets it sends, one test run
/// each, with `repeat` repetitions.
struct Lane<'a> {
    cpu: usize,
    packets: &'a [Vec<u8>],
    repeat: u32,
}

/// One sample of one layout.
struct Timed {
    /// BPF statistics run time per run (ns), over all lanes.
    run_time: f64,
    /// Mean test-run duration per run (ns) each lane's runs reported.
    test_run: Vec<f64>,
    /// Wall-clock time per run (ns) of each lane, system calls included.
    wall: Vec<f64>,
    /// How much of the sample both lanes were running: the time between the
    /// later start and the earlier end over the whole sample (1 for one lane).
    overlap: f64,
}

/// The program's (run time ns, runs) in the kernel's BPF statistics.
fn run_stats(xdp: &Xdp) -> (u64, u64) {
    let i = xdp.info().expect("program info");
    (i.run_time().as_nanos() as u64, i.run_count())
}

/// Test-runs each of `packets` on `xdp` (in the calling thread's namespace
/// and CPU) with `repeat`, every run to XDP_PASS; the sum of the reported
/// durations (ns).
fn test_runs(xdp: &Xdp, cpu: usize, packets: &[Vec<u8>], repeat: u32) -> u64 {
    let mut total = 0u64;
    for p in packets {
        let r = xdp.test_run(TestRunOptions { data_in: Some(p), repeat, ..Default::default() }).expect("test run");
        assert_eq!(r.return_value, PASS, "a run on CPU {cpu} returned {}", r.return_value);
        total += r.duration.as_nanos() as u64 * u64::from(repeat.max(1));
    }
    total
}

/// Runs the lanes at once (one thread each, pinned to its CPU, in the
/// namespace `ns`) on `xdp`, with the BPF statistics on.
fn timed(xdp: &Xdp, ns: &Path, lanes: &[Lane]) -> Timed {
    let (t0, n0) = run_stats(xdp);
    let start = Barrier::new(lanes.len());
    let got: Vec<(u64, Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = lanes
            .iter()
            .map(|lane| {
                let start = &start;
                s.spawn(move || {
                    sys::in_netns(ns, Some(lane.cpu), || {
                        start.wait();
                        let began = Instant::now();
                        let total = test_runs(xdp, lane.cpu, lane.packets, lane.repeat);
                        (total, began, Instant::now())
                    })
                    .expect("enter the namespace")
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    let (t1, n1) = run_stats(xdp);
    let runs = |l: &Lane| l.packets.len() as u64 * u64::from(l.repeat);
    let sent: u64 = lanes.iter().map(runs).sum();
    assert_eq!(n1 - n0, sent, "the BPF statistics counted {} of {sent} runs", n1 - n0);
    let first_start = got.iter().map(|g| g.1).min().expect("a lane");
    let last_start = got.iter().map(|g| g.1).max().expect("a lane");
    let first_end = got.iter().map(|g| g.2).min().expect("a lane");
    let last_end = got.iter().map(|g| g.2).max().expect("a lane");
    let whole = last_end.duration_since(first_start).as_secs_f64();
    let both = first_end.saturating_duration_since(last_start).as_secs_f64();
    Timed {
        run_time: (t1 - t0) as f64 / (n1 - n0) as f64,
        test_run: got.iter().zip(lanes).map(|(g, l)| g.0 as f64 / runs(l) as f64).collect(),
        wall: got.iter().zip(lanes).map(|(g, l)| g.2.duration_since(g.1).as_nanos() as f64 / runs(l) as f64).collect(),
        overlap: if whole > 0.0 { both / whole } else { 1.0 },
    }
}

/// Test-runs `packets` on CPU `cpu` with `repeat`, untimed (the fill, and
/// the warm-up of established flows).
fn send(prog: &Prog, ns: &Path, cpu: usize, packets: &[Vec<u8>], repeat: u32) {
    let xdp = prog.xdp_ref();
    sys::in_netns(ns, Some(cpu), || test_runs(xdp, cpu, packets, repeat)).expect("enter the namespace");
}

/// The flow-table key of an untagged IPv4 TCP or UDP packet
/// (`xpol_lang::meta::FlowKey`: addresses and ports as on the wire).
fn flow_key(packet: &[u8]) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..4].copy_from_slice(&packet[26..30]);
    k[16..20].copy_from_slice(&packet[30..34]);
    k[32..36].copy_from_slice(&packet[34..38]);
    k[36] = packet[23];
    k[37] = 4;
    k
}

/// What a layout's flow table holds for `key`, as seen by CPU `cpu`: the
/// backend slot, or `None` when that CPU has no backend for it.
fn entry(prog: &Prog, layout: Layout, key: &[u8; 40], cpu: usize) -> Option<u32> {
    let Prog::C { ebpf, .. } = prog else { unreachable!("the C twin") };
    let found = |r: Result<[u32; 2], MapError>| match r {
        Ok(v) => Some(v[0]),
        Err(MapError::KeyNotFound) => None,
        Err(e) => panic!("flow table lookup: {e}"),
    };
    let hash = |name: &str| found(HashMap::<_, [u8; 40], [u32; 2]>::try_from(ebpf.map(name).expect("flow table")).expect("hash").get(key, 0));
    match layout {
        Layout::Shared | Layout::SharedHalf | Layout::SharedCpuLru => hash("flows"),
        Layout::PerCpuValues => {
            let table: PerCpuHashMap<_, [u8; 40], [u32; 2]> = PerCpuHashMap::try_from(ebpf.map("flows").expect("flows")).expect("per-CPU hash");
            let v = match table.get(key, 0) {
                Ok(v) => v[cpu],
                Err(MapError::KeyNotFound) => return None,
                Err(e) => panic!("flow table lookup: {e}"),
            };
            // Unmarked (zeros): another CPU's entry, no backend for this one.
            (v[1] & 1 == 1).then_some(v[0])
        }
        Layout::PerCpuTables => hash(if cpu % 2 == 1 { "flows_odd" } else { "flows_even" }),
    }
}

/// Switches the twin's pool to `table` in half `half` of its ring (then
/// the control word), as `xpol pool` does.
fn switch_table(prog: &mut Prog, table: &[u32], half: u32) {
    let Prog::C { ebpf, .. } = prog else { unreachable!("the C twin") };
    let size = table.len() as u32;
    {
        let mut ring: Array<_, u32> = Array::try_from(ebpf.map_mut("ring").expect("ring")).expect("array");
        for (i, slot) in table.iter().enumerate() {
            ring.set(half * size + i as u32, *slot, 0).expect("ring slot");
        }
    }
    let mut control: Array<_, u32> = Array::try_from(ebpf.map_mut("control").expect("control")).expect("array");
    control.set(0, half, 0).expect("control word");
}

/// The backend a frame the twin sent on CPU `cpu` was encapsulated towards.
fn sent_to(prog: &mut Prog, ns: &Path, cpu: usize, packet: &[u8]) -> IpAddr {
    let (ret, frame) = sys::in_netns(ns, Some(cpu), || prog.run(packet, None)).expect("enter the namespace");
    assert_eq!(ret, PASS, "the twin returned {ret}");
    xpol_runtime::lb::decapsulate(&frame).unwrap_or_else(|| panic!("not an encapsulated frame: {}", xpol_runtime::packet::hex(&frame))).outer_dst
}

/// What happened to a flow that reached a second CPU after the pool changed.
struct PoolChange {
    /// The flow's backend, from its first packet (on the first CPU).
    first: IpAddr,
    /// Whether the second CPU had a backend for the flow before its packet.
    second_cpu_knew: bool,
    /// Where the packet on the second CPU went, after the change.
    second: IpAddr,
    /// Where the next packet on the first CPU went.
    first_again: IpAddr,
    /// Flows the twin counted as new for these three packets.
    new_flows: u64,
}

/// The flow of `packet` on CPU `a`; its backend drained (the Maglev table
/// switched to one without it, the backend still present, as `xpol pool
/// ... drain`); its next packet on CPU `b`, then on `a` again.
fn pool_change(prog: &mut Prog, layout: Layout, pool: &PoolMeta, table: &[u32], ns: &Path, (a, b): (usize, usize), packet: &[u8]) -> PoolChange {
    let key = flow_key(packet);
    let new_before = prog.pool_counters().1;
    let first = sent_to(prog, ns, a, packet);
    assert_eq!(first, expected_backend(pool, table, packet), "{}: the backend Maglev gives the flow", layout.name());
    let slot = pool.backends.iter().position(|be| be.addr == first).expect("a backend of the pool");
    assert_eq!(entry(prog, layout, &key, a), Some(slot as u32), "{}: CPU {a} holds the flow's backend", layout.name());
    let second_cpu_knew = entry(prog, layout, &key, b).is_some();
    let mut drained = pool.clone();
    drained.backends[slot].weight = 0;
    let drained_table = maglev_table(&drained);
    switch_table(prog, &drained_table, 1);
    let second = sent_to(prog, ns, b, packet);
    let first_again = sent_to(prog, ns, a, packet);
    switch_table(prog, table, 0);
    let new_flows = prog.pool_counters().1 - new_before;
    if second_cpu_knew {
        assert_eq!(second, first, "{}: the second CPU knew the flow and still sent it elsewhere", layout.name());
    } else {
        assert_eq!(second, expected_backend(&drained, &drained_table, packet), "{}: a flow new to the second CPU goes where the new table says", layout.name());
    }
    assert_eq!(first_again, first, "{}: the first CPU keeps the flow's backend", layout.name());
    PoolChange { first, second_cpu_knew, second, first_again, new_flows }
}

/// The two CPUs of the two-lane scenarios, `(a, b)`: `b` the last allowed
/// one, `a` the last before it of the other parity (the per-CPU-tables twin
/// picks its table by parity). The one-lane scenarios run on `b`. `None`
/// without two such CPUs.
fn cpu_pair() -> Option<(usize, usize)> {
    let cpus = sys::allowed_cpus().expect("sched_getaffinity");
    let b = *cpus.last()?;
    let a = *cpus.iter().rev().find(|&&c| c % 2 != b % 2)?;
    Some((a, b))
}

/// The memory the kernel accounts to a layout's flow tables (`memlock` in
/// the maps' fdinfo), in bytes.
fn table_memory(prog: &Prog, layout: Layout) -> u64 {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let Prog::C { ebpf, .. } = prog else { unreachable!("the C twin") };
    let names: &[&str] = if layout == Layout::PerCpuTables { &["flows_even", "flows_odd"] } else { &["flows"] };
    names
        .iter()
        .map(|name| {
            let data = match ebpf.map(name).expect("flow table") {
                aya::maps::Map::LruHashMap(d) | aya::maps::Map::PerCpuLruHashMap(d) => d,
                _ => panic!("{name} is not an LRU hash"),
            };
            let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", data.fd().as_fd().as_raw_fd())).expect("the map's fdinfo");
            fdinfo.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse::<u64>().ok()).expect("memlock in the map's fdinfo")
        })
        .sum()
}

/// The number of possible CPUs (what a per-CPU value is allocated for).
fn possible_cpus() -> usize {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    s.trim().split(',').filter(|r| !r.is_empty()).map(|r| r.split_once('-').map_or(1, |(lo, hi)| hi.parse::<usize>().unwrap_or(0) + 1 - lo.parse::<usize>().unwrap_or(0))).sum()
}

/// One compiled twin and what was sent to it, for the check of its counters.
struct Twin {
    layout: Layout,
    prog: Prog,
    /// Runs (packets) sent, and of them runs of a flow never seen.
    runs: u64,
    new_runs: u64,
}

impl Twin {
    fn load(dir: &Path, layout: Layout, saturate: u8, pool: &PoolMeta, table: &[u32]) -> Twin {
        let case = CASES[0];
        let sized = PoolMeta { flows: layout.flows(pool.flows), ..pool.clone() };
        let mut defines = c_defines(&case, &sized, 6, 80);
        defines.extend(layout.define().map(String::from));
        defines.push(format!("-DSATURATE={saturate}"));
        let obj = clang(dir, &format!("c-{}-{saturate}", layout.name()), &bench_source("katran_like.c"), &defines);
        Twin { layout, prog: Prog::C { ebpf: load_c(&obj, pool, table), name: "katran_like".into() }, runs: 0, new_runs: 0 }
    }
}

pub fn run(quick: bool, rounds: usize, out_dir: &Path) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let runs = if quick { 200 } else { RUNS };
    let (sat_repeat_est, sat_repeat_new) = if quick { (500, 500) } else { (SATURATED_REPEAT_ESTABLISHED, SATURATED_REPEAT_NEW) };
    let stats_sysctl = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    assert!(stats_sysctl.trim() != "1", "kernel.bpf_stats_enabled is 1: set it to 0 (sysctl -w kernel.bpf_stats_enabled=0), the benchmark turns the statistics on when it needs them");
    let mut skipped = Vec::new();
    let case = CASES[0];

    // The pool of the packet-path part (xpol's defaults); in quick mode
    // small tables.
    let policy = dir.path().join("lb.xpol");
    std::fs::write(&policy, policy_text(&case, "tcp", 80)).expect("write policy");
    let object = xpol_compiler::build(&policy, &xpol_compiler::BuildOptions::default()).output.unwrap_or_else(|| panic!("{} compiles", policy.display())).object;
    let mut pool = xpol_runtime::loader::LoadedPolicy::load(&object).expect("the xpol load balancer loads").meta().pools[0].clone();
    if quick {
        pool.flows = QUICK_FLOWS;
        pool.table_size = QUICK_TABLE;
    }
    let table = maglev_table(&pool);

    let Some((cpu_a, cpu_b)) = cpu_pair() else {
        let msg = "flow table: not two CPUs of different parity to run on (the flow-table part needs two)".to_string();
        eprintln!("\n*** SKIPPED {msg} ***\n");
        skipped.push(msg);
        return Output { markdown: String::new(), json: serde_json::json!({"skipped": skipped}), skipped };
    };
    let ns = TestNamespaces::new();
    let pass = Path::new("/run/netns").join(&ns.pass);

    // Per layout: the whole program; the saturated builds for established
    // flows (1) and for new flows (2).
    let mut twins: BTreeMap<(Method, Layout, bool), Twin> = BTreeMap::new();
    for layout in LAYOUTS {
        twins.insert((Method::PerPacket, layout, false), Twin::load(dir.path(), layout, 0, &pool, &table));
        twins.insert((Method::Saturated, layout, false), Twin::load(dir.path(), layout, 1, &pool, &table));
        twins.insert((Method::Saturated, layout, true), Twin::load(dir.path(), layout, 2, &pool, &table));
    }

    // Flow numbers never used twice: every "new" flow is new to every table.
    let mut next_flow = 1u64;
    let mut fresh = |n: usize| -> Vec<Vec<u8>> {
        let v = (0..n as u64).map(|i| vip_packet(&case, next_flow + i)).collect();
        next_flow += n as u64;
        v
    };
    // The saturated runs' new flows: per test run a base never used
    // before, from which the runs count the source address (low 16 bits)
    // and port up, at most 2^20 apart: 198.19.0.0:0, 198.19.0.16:0, ...
    let mut next_base = 0u32;
    let mut bases = |n: usize| -> Vec<Vec<u8>> {
        let v = (0..n as u32).map(|i| PacketSpec::tcp4(Ipv4Addr::from(SATURATED_BASE + 16 * (next_base + i)), super::VIP4, 0, 80).ack().payload(10).build()).collect();
        next_base += n as u32;
        assert!(next_base <= SATURATED_BASES, "more saturated test runs than bases");
        v
    };

    // A flow that reaches a second CPU after its backend was drained.
    let mut changes = Vec::new();
    for layout in LAYOUTS {
        let twin = twins.get_mut(&(Method::PerPacket, layout, false)).expect("twin");
        let packet = fresh(1).remove(0);
        let c = pool_change(&mut twin.prog, layout, &pool, &table, &pass, (cpu_a, cpu_b), &packet);
        twin.runs += 3;
        let shared = layout.shared();
        assert_eq!((c.second_cpu_knew, c.second == c.first, c.new_flows), (shared, shared, if shared { 1 } else { 2 }), "{}: a shared table keeps the flow's backend on every CPU; per CPU, the second CPU balances the flow again", layout.name());
        twin.new_runs += c.new_flows;
        changes.push((layout, c));
    }

    // Every table that takes new flows filled from both CPUs beforehand, so
    // that every new flow measured evicts one.
    let fill: Vec<(usize, Vec<Vec<u8>>)> = [cpu_a, cpu_b].iter().map(|&cpu| (cpu, fresh((pool.flows + FILL_MARGIN) as usize))).collect();
    let fill_repeat = pool.flows + FILL_MARGIN;
    let sat_fill: Vec<(usize, Vec<Vec<u8>>)> = [cpu_a, cpu_b].iter().map(|&cpu| (cpu, bases((pool.flows + FILL_MARGIN).div_ceil(fill_repeat) as usize))).collect();
    for ((method, _, sat_new), twin) in twins.iter_mut() {
        let (packets, repeat) = match (method, sat_new) {
            (Method::PerPacket, _) => (&fill, 1),
            (Method::Saturated, true) => (&sat_fill, fill_repeat),
            (Method::Saturated, false) => continue,
        };
        for (cpu, p) in packets {
            send(&twin.prog, &pass, *cpu, p, repeat);
            twin.runs += p.len() as u64 * u64::from(repeat);
            twin.new_runs += p.len() as u64 * u64::from(repeat);
        }
    }

    let memory: Vec<(Layout, u64)> = LAYOUTS.iter().map(|&l| (l, table_memory(&twins[&(Method::PerPacket, l, false)].prog, l))).collect();

    let est_a = fresh(1);
    let est_b = fresh(1);
    let est_same = fresh(1);
    let _stats_on = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS (Linux 5.8)");
    let mut series: BTreeMap<(Method, Scenario, Layout), Vec<Timed>> = BTreeMap::new();
    for round in 0..rounds {
        for method in METHODS {
            // Per packet: `runs` packets of one run each; saturated: one
            // packet of many runs.
            let n = if method == Method::PerPacket { runs } else { 1 };
            let many = |p: &[Vec<u8>]| vec![p[0].clone(); n];
            let (own_a, own_b, same) = (many(&est_a), many(&est_b), many(&est_same));
            for scenario in SCENARIOS {
                let repeat = match method {
                    Method::PerPacket => 1,
                    Method::Saturated if scenario.new_flows() => sat_repeat_new,
                    Method::Saturated => sat_repeat_est,
                };
                let (new_a, new_b) = match (scenario.new_flows(), method) {
                    (false, _) => (Vec::new(), Vec::new()),
                    (true, Method::PerPacket) => (fresh(n), fresh(n)),
                    (true, Method::Saturated) => (bases(n), bases(n)),
                };
                let lane = |cpu: usize, packets| Lane { cpu, packets, repeat };
                let lanes: Vec<Lane> = match scenario {
                    Scenario::EstablishedOne => vec![lane(cpu_b, &own_b)],
                    Scenario::EstablishedTwoOwn => vec![lane(cpu_a, &own_a), lane(cpu_b, &own_b)],
                    Scenario::EstablishedTwoSame => vec![lane(cpu_a, &same), lane(cpu_b, &same)],
                    Scenario::NewOne => vec![lane(cpu_b, &new_b)],
                    Scenario::NewTwo => vec![lane(cpu_a, &new_a), lane(cpu_b, &new_b)],
                };
                // Which layout goes first rotates with the round.
                for k in 0..LAYOUTS.len() {
                    let layout = LAYOUTS[(k + round) % LAYOUTS.len()];
                    let twin = twins.get_mut(&(method, layout, method == Method::Saturated && scenario.new_flows())).expect("twin");
                    if !scenario.new_flows() {
                        // Each lane's flow established on its CPU (new
                        // flows of other samples may have evicted it).
                        for lane in &lanes {
                            send(&twin.prog, &pass, lane.cpu, &lane.packets[..1], 1);
                            twin.runs += 1;
                        }
                    }
                    let t = timed(twin.prog.xdp_ref(), &pass, &lanes);
                    let sent: u64 = lanes.iter().map(|l| l.packets.len() as u64 * u64::from(l.repeat)).sum();
                    twin.runs += sent;
                    if scenario.new_flows() {
                        twin.new_runs += sent;
                    }
                    series.entry((method, scenario, layout)).or_default().push(t);
                }
            }
        }
    }

    // Every packet balanced, every new flow through the ring: the twins'
    // counters say so. Per packet, a few more new flows than sent may be
    // counted: established flows found evicted at their warm-up (at most
    // one per lane and sample). The saturated builds for established flows
    // have tables no new flow reaches: each of their three flows is new
    // once, on each CPU that sees it for the per-CPU layouts.
    let mut counters = Vec::new();
    for ((method, layout, sat_new), twin) in &twins {
        let (packets, new) = twin.prog.pool_counters();
        let what = format!("{} {}{}", method.name(), layout.name(), if *sat_new { " (new flows)" } else { "" });
        assert_eq!(packets, twin.runs, "{what}: the pool counted {packets} packets of {}", twin.runs);
        match (method, sat_new) {
            (Method::PerPacket, _) => assert!(new >= twin.new_runs && new <= twin.new_runs + 5 * rounds as u64, "{what}: {new} new flows counted, {} sent", twin.new_runs),
            (Method::Saturated, true) => assert_eq!(new, twin.new_runs, "{what}: every repetition a new flow"),
            (Method::Saturated, false) => assert_eq!(new, if layout.shared() { 3 } else { 4 }, "{what}: new flows counted"),
        }
        counters.push(serde_json::json!({"method": method.name(), "layout": layout.name(), "new_flow_build": sat_new, "packets": packets, "new_flows": new, "new_flow_packets_sent": twin.new_runs}));
    }
    drop(ns);

    let (markdown, json) = report(&series, &changes, &memory, &pool, (cpu_a, cpu_b), quick, rounds, (runs, sat_repeat_est, sat_repeat_new), counters, &skipped);
    std::fs::create_dir_all(out_dir).expect("output dir");
    std::fs::write(out_dir.join("lb-flow-table.json"), serde_json::to_string_pretty(&json).expect("json")).expect("write json");
    Output { markdown, json, skipped }
}

/// The comparisons the ratio table shows: (layout, against).
const PAIRS: [(Layout, Layout); 5] = [
    (Layout::PerCpuValues, Layout::Shared),
    (Layout::PerCpuTables, Layout::Shared),
    (Layout::SharedHalf, Layout::Shared),
    (Layout::PerCpuTables, Layout::SharedHalf),
    (Layout::SharedCpuLru, Layout::Shared),
];

#[allow(clippy::too_many_arguments)]
fn report(
    series: &BTreeMap<(Method, Scenario, Layout), Vec<Timed>>,
    changes: &[(Layout, PoolChange)],
    memory: &[(Layout, u64)],
    pool: &PoolMeta,
    cpus: (usize, usize),
    quick: bool,
    rounds: usize,
    (runs, sat_repeat_est, sat_repeat_new): (usize, u32, u32),
    counters: Vec<serde_json::Value>,
    skipped: &[String],
) -> (String, serde_json::Value) {
    let cell = |v: &[f64], d: usize| format!("{:.d$} ({:.d$}-{:.d$})", median(v), min(v), max(v));
    let run_times = |m: Method, s: Scenario, l: Layout| -> Vec<f64> { series[&(m, s, l)].iter().map(|t| t.run_time).collect() };
    let ratio = |m: Method, s: Scenario, l: Layout, against: Layout| -> Vec<f64> { run_times(m, s, l).iter().zip(&run_times(m, s, against)).map(|(x, a)| x / a).collect() };
    let mut md = String::new();
    let _ = writeln!(md, "Run time per packet, ns (the program alone, from the BPF statistics), median (min-max) over the rounds; *in the program*: the median share of a lane's wall-clock time spent in the program (run time over wall-clock time per run); *both CPUs running*: the median share of a two-CPU sample during which both lanes ran.\n");
    let _ = writeln!(md, "| method | scenario | {} | in the program | both CPUs running |", LAYOUTS.map(|l| l.label()).join(" | "));
    let _ = writeln!(md, "|---|---|{}---:|---:|", "---:|".repeat(LAYOUTS.len()));
    let mut ratios = String::new();
    let _ = writeln!(ratios, "Ratios, each taken within a round, median (min-max) over the rounds:\n");
    let _ = writeln!(ratios, "| method | scenario | {} |", PAIRS.map(|(l, a)| format!("{} vs {}", l.short(), a.short())).join(" | "));
    let _ = writeln!(ratios, "|---|---|{}", "---:|".repeat(PAIRS.len()));
    let mut results = Vec::new();
    for method in METHODS {
        for scenario in SCENARIOS {
            let overlap: Vec<f64> = LAYOUTS.iter().flat_map(|&l| series[&(method, scenario, l)].iter().map(|t| t.overlap)).collect();
            let overlap_cell = if scenario.cpus() == 1 { String::new() } else { format!("{:.0}%", 100.0 * median(&overlap)) };
            let duty: Vec<f64> = LAYOUTS.iter().flat_map(|&l| series[&(method, scenario, l)].iter().map(|t| t.run_time / (t.wall.iter().sum::<f64>() / t.wall.len() as f64))).collect();
            let _ = writeln!(md, "| {} | {} | {} | {:.0}% | {overlap_cell} |", method.label(), scenario.label(), LAYOUTS.map(|l| cell(&run_times(method, scenario, l), 1)).join(" | "), 100.0 * median(&duty));
            let _ = writeln!(ratios, "| {} | {} | {} |", method.label(), scenario.label(), PAIRS.map(|(l, a)| cell(&ratio(method, scenario, l, a), 2).replacen(' ', "x ", 1)).join(" | "));
            for layout in LAYOUTS {
                let s = &series[&(method, scenario, layout)];
                results.push(serde_json::json!({
                    "method": method.name(), "scenario": scenario.name(), "layout": layout.name(), "cpus": scenario.cpus(),
                    "run_time_ns": s.iter().map(|t| t.run_time).collect::<Vec<_>>(),
                    "vs_shared_per_round": ratio(method, scenario, layout, Layout::Shared),
                    "test_run_ns_per_lane": s.iter().map(|t| t.test_run.clone()).collect::<Vec<_>>(),
                    "wall_ns_per_run_per_lane": s.iter().map(|t| t.wall.clone()).collect::<Vec<_>>(),
                    "overlap": s.iter().map(|t| t.overlap).collect::<Vec<_>>(),
                }));
            }
        }
    }
    let _ = write!(md, "\n{ratios}");

    let _ = writeln!(md, "\nA flow's first packet on CPU {}, its backend then drained (the Maglev table switched to one without it, as `xpol pool ... drain`), its next packet on CPU {}, then one on CPU {} again:\n", cpus.0, cpus.1, cpus.0);
    let _ = writeln!(md, "| layout | first packet to | CPU {} had the flow's backend | packet on CPU {} to | next packet on CPU {} to | flows counted new |", cpus.1, cpus.1, cpus.0);
    let _ = writeln!(md, "|---|---|---|---|---|---:|");
    let mut change_json = Vec::new();
    for (layout, c) in changes {
        let moved = if c.second == c.first { format!("{} (the same)", c.second) } else { format!("{} (another)", c.second) };
        let _ = writeln!(md, "| {} | {} | {} | {moved} | {} | {} |", layout.label(), c.first, if c.second_cpu_knew { "yes" } else { "no" }, c.first_again, c.new_flows);
        change_json.push(serde_json::json!({"layout": layout.name(), "first": c.first.to_string(), "second_cpu_knew": c.second_cpu_knew, "second": c.second.to_string(), "first_again": c.first_again.to_string(), "new_flows": c.new_flows}));
    }
    let _ = writeln!(md, "\nThe flow tables' memory, as the kernel accounts it (`memlock`), {} possible CPUs:\n", possible_cpus());
    let _ = writeln!(md, "| layout | entries | memory |");
    let _ = writeln!(md, "|---|---:|---:|");
    for (layout, bytes) in memory {
        let entries = match layout {
            Layout::PerCpuTables => format!("2 x {}", pool.flows / 2),
            _ => layout.flows(pool.flows).to_string(),
        };
        let _ = writeln!(md, "| {} | {entries} | {:.1} MiB |", layout.label(), *bytes as f64 / (1024.0 * 1024.0));
    }
    let medians: serde_json::Map<String, serde_json::Value> = METHODS
        .iter()
        .flat_map(|&m| SCENARIOS.iter().flat_map(move |&s| LAYOUTS.iter().map(move |&l| (m, s, l))))
        .map(|(m, s, l)| (format!("{}/{}/{}", m.name(), s.name(), l.name()), serde_json::json!(median(&run_times(m, s, l)))))
        .collect();
    let json = serde_json::json!({
        "quick": quick, "rounds": rounds, "cpus": [cpus.0, cpus.1], "possible_cpus": possible_cpus(),
        "per_packet": {"runs_per_lane": runs}, "saturated": {"repeat_established": sat_repeat_est, "repeat_new": sat_repeat_new, "test_runs_per_lane": 1},
        "flows": pool.flows, "table_size": pool.table_size, "backends": pool.backends.len(),
        "median_run_time_ns": medians,
        "table_memory_bytes": memory.iter().map(|(l, b)| (l.name().to_string(), serde_json::json!(b))).collect::<serde_json::Map<_, _>>(),
        "results": results, "pool_change": change_json, "counters": counters, "skipped": skipped,
    });
    (md, json)
}

/// The medians of a complete run that the section's reasoning quotes.
struct Findings<'a> {
    results: &'a [serde_json::Value],
}

impl Findings<'_> {
    fn run_times(&self, m: Method, s: Scenario, l: Layout) -> Vec<f64> {
        let row = self.results.iter().find(|r| r["method"] == m.name() && r["scenario"] == s.name() && r["layout"] == l.name()).expect("a result row");
        row["run_time_ns"].as_array().expect("run times").iter().map(|v| v.as_f64().expect("a number")).collect()
    }
    fn ns(&self, m: Method, s: Scenario, l: Layout) -> f64 {
        median(&self.run_times(m, s, l))
    }
    /// The median of the per-round ratios of `l` to `against`.
    fn ratio(&self, m: Method, s: Scenario, l: Layout, against: Layout) -> f64 {
        let r: Vec<f64> = self.run_times(m, s, l).iter().zip(self.run_times(m, s, against)).map(|(x, a)| x / a).collect();
        median(&r)
    }
    /// The median over the rounds of the run time with two CPUs over the
    /// run time with one, in the same round: what a second CPU doing the
    /// same at the same time costs.
    fn growth(&self, m: Method, one: Scenario, two: Scenario, l: Layout) -> f64 {
        let r: Vec<f64> = self.run_times(m, two, l).iter().zip(self.run_times(m, one, l)).map(|(t, o)| t / o).collect();
        median(&r)
    }
    /// "lo-hi%": the range over `scenarios` of the median share of a lane's
    /// wall-clock time spent in the program, with method `m`.
    fn duty(&self, m: Method, scenarios: &[Scenario]) -> String {
        let v: Vec<f64> = scenarios
            .iter()
            .map(|&s| {
                let shares: Vec<f64> = self
                    .results
                    .iter()
                    .filter(|r| r["method"] == m.name() && r["scenario"] == s.name())
                    .flat_map(|r| {
                        let run_times = r["run_time_ns"].as_array().expect("run times").clone();
                        let walls = r["wall_ns_per_run_per_lane"].as_array().expect("wall times").clone();
                        run_times.into_iter().zip(walls).map(|(t, w)| {
                            let w: Vec<f64> = w.as_array().expect("lanes").iter().map(|v| v.as_f64().expect("a number")).collect();
                            t.as_f64().expect("a number") / (w.iter().sum::<f64>() / w.len() as f64)
                        })
                    })
                    .collect();
                median(&shares)
            })
            .collect();
        format!("{:.0}-{:.0}%", 100.0 * min(&v), 100.0 * max(&v))
    }
    /// "lo-hix": the range of the ratio's medians over `scenarios` and both methods.
    fn range(&self, scenarios: &[Scenario], l: Layout, against: Layout) -> String {
        let v: Vec<f64> = METHODS.iter().flat_map(|&m| scenarios.iter().map(move |&s| self.ratio(m, s, l, against))).collect();
        format!("{:.2}-{:.2}x", min(&v), max(&v))
    }
}

/// This part's section of BENCHMARKS.md, from a complete run.
pub fn section(out: &Output, measured: &str) -> String {
    let j = &out.json;
    let f = Findings { results: j["results"].as_array().expect("results") };
    let established = [Scenario::EstablishedOne, Scenario::EstablishedTwoOwn, Scenario::EstablishedTwoSame];
    let (pp, sat) = (Method::PerPacket, Method::Saturated);
    let (shared, values, tables, half, cpu_lru) = (Layout::Shared, Layout::PerCpuValues, Layout::PerCpuTables, Layout::SharedHalf, Layout::SharedCpuLru);
    let mib = |l: Layout| j["table_memory_bytes"][l.name()].as_f64().unwrap_or(0.0) / (1024.0 * 1024.0);
    let overlaps: Vec<f64> = f.results.iter().filter(|r| r["cpus"] == 2).flat_map(|r| r["overlap"].as_array().expect("overlap").iter().map(|v| v.as_f64().expect("a number")).collect::<Vec<_>>()).collect();
    let new_growth = |m: Method, l: Layout| f.growth(m, Scenario::NewOne, Scenario::NewTwo, l);
    let same_growth = |l: Layout| f.growth(sat, Scenario::EstablishedOne, Scenario::EstablishedTwoSame, l);
    // Growth beyond per-CPU tables' (which share nothing: theirs is the
    // machine's), on new flows.
    let excess = |m: Method, l: Layout| new_growth(m, l) / new_growth(m, tables);
    let mut growth_table = String::from("| layout | established, the same flow, saturated | new flows, per packet | new flows, saturated |\n|---|---:|---:|---:|\n");
    for l in LAYOUTS {
        let _ = writeln!(growth_table, "| {} | {:.2}x | {:.2}x | {:.2}x |", l.label(), same_growth(l), new_growth(pp, l), new_growth(sat, l));
    }
    let shared_layouts = [shared, half, cpu_lru, values];
    let (worst, worst_layout, worst_method) = shared_layouts.iter().flat_map(|&l| [(excess(pp, l), l, pp), (excess(sat, l), l, sat)]).fold((0.0f64, shared, pp), |w, c| if c.0 > w.0 { c } else { w });
    let excesses = shared_layouts.map(|l| format!("{} {:.2}x and {:.2}x", l.short(), excess(pp, l), excess(sat, l))).join(", ");
    let size_1cpu = |l: Layout, against: Layout| format!("{:.2}x and {:.2}x", f.ratio(pp, Scenario::NewOne, l, against), f.ratio(sat, Scenario::NewOne, l, against));
    format!(
        "## {SECTION}\n\n\
{measured} Raw numbers: `bench-out/lb-flow-table.json`.\n\n\
xpol keeps one `BPF_MAP_TYPE_LRU_HASH` flow table per pool, shared by all CPUs; Katran keeps one per CPU. Measured with the C twin (`bench/lb/katran_like.c`, the IPIP-over-IPv4 case of the section above: 10 backends, Maglev table of {table} slots, flow table of {flows} entries), compiled once per layout, otherwise identical (`benches/lb_path/flow_table.rs`): xpol's shared `LRU_HASH`; `LRU_PERCPU_HASH` (`-DPERCPU_FLOWS=1`: keys, hash buckets and LRU lists shared, a value per CPU; an entry inserted on one CPU reads as zeros on the others, which the twin must tell from backend slot 0, so it marks its values); Katran's layout, an `LRU_HASH` per CPU with half the entries each (`-DPERCPU_TABLES=1`; Katran divides its configured size among its CPUs; the twin picks its CPU's table by the CPU number's parity, without Katran's array-of-maps lookup, so if anything it is cheaper than Katran); as a control for that size, the shared table with half the entries; and the shared table with an LRU list per CPU (`BPF_F_NO_COMMON_LRU`). Two CPUs, {cpu_a} and {cpu_b} (one-CPU scenarios on {cpu_b}), each lane a thread pinned there with `sched_setaffinity`; two lanes start together and run the same program. *Per packet*: the whole program, one `BPF_PROG_TEST_RUN` per packet (`repeat` would run it again on the already encapsulated frame, see above), {runs} packets per lane and sample; a new flow is a new frame (new source address and port) per call. Around each run the CPU is in the system call and the test loop: a lane spends {pp_est_duty} of its time in the program on established flows and {pp_new_duty} on new flows, so two CPUs meet in the table less often than at line rate. *Saturated*: the twin built with `-DSATURATE`, which stops after the backend counters and passes the packet unchanged (established flows) or first counts its source address (low 16 bits) and port up by one, which the next repetition sees (every repetition a new flow); one test run per lane and sample, with `repeat` {rep_est} (established) or {rep_new} (new flows): the CPUs do nothing but parse, hash, use the flow table and count, back to back ({sat_duty} of a lane's wall-clock time in the program; the rest is the test loop's own work between repetitions, the kernel switching its XDP dispatcher to the program and back around a test run with `repeat`, and other work on this shared machine). New flows go into tables filled beforehand from both CPUs, so that every insert evicts. *Run time*: the kernel's BPF statistics, summed over the CPUs, per run: the program alone. {rounds} interleaved rounds, the layouts' order rotating; median (min-max) over the rounds. Every packet is counted by the twin's per-backend counters and every new flow counted as one, or the run fails.\n\n\
{tables}\n\
What a second CPU doing the same at the same time costs each layout: the run time with two CPUs over the run time with one, taken within each round, median over the rounds:\n\n\
{growth_table}\n\
### Why one shared table\n\n\
**What sharing costs.** On established flows, what nearly every packet is, nothing measurable: per-CPU tables cost {est_tables} the shared table's run time and `LRU_PERCPU_HASH` {est_values} (medians of the per-round ratios, over the three established scenarios and both methods), and two CPUs on one flow cost the shared table what one does ({same_shared:.2}x, saturated). A hit writes nothing another CPU reads (the LRU's reference bit is written only when found clear, the counters are per CPU), so the entry's cache lines are read by both CPUs and never move.\n\n\
On new flows Katran's per-CPU tables are cheaper, {nt_pp:.0} ns per packet against {ns_pp:.0} ns with the shared table on one CPU ({r_pp:.2}x; saturated {nt_sat:.0} against {ns_sat:.0} ns, {r_sat:.2}x). On one CPU that is the size of the table an insert works in, not its being per CPU: the shared table with half the entries, the size of each per-CPU table, is {half_1} of the full one (per packet and saturated), and per-CPU tables {tables_half_1} of it. A shared table gets that by its size (`flows N`, sized to the flows there are). What sharing itself costs on new flows shows in the growth from one CPU to two, set against that of per-CPU tables, which share nothing (their growth is the machine's: caches, memory and other work shared by the CPUs): {excesses} (per packet and saturated): a second CPU inserting new flows at the same time costs a shared layout at most {worst_pct:.0}% more than it costs per-CPU tables here ({worst_layout}, {worst_method}). An insert takes entries from a free list of its own CPU, and the one lock of the shared LRU list only when that list is empty, to move up to 128 entries into it (an LRU list per CPU has no such lock); the hash table's locks are per bucket. `LRU_PERCPU_HASH` keeps shared what costs (keys, buckets, LRU lists and their locks) and splits only the value, which xpol never writes on a hit; its insert zero-fills the value of every possible CPU: {new_values} of the shared table on new flows. An LRU list per CPU (`BPF_F_NO_COMMON_LRU`) is {new_cpu_lru} of the shared table on new flows; it keeps one table for lookups, and so the correctness below, but each CPU then evicts only among its own list's entries, `flows` divided by the possible CPUs, which divides the capacity for inserts as per-CPU tables do. It is the change to make, rather than per-CPU tables, should inserts from many CPUs at once cost more than measured here.\n\n\
**What per-CPU tables break.** A per-CPU table knows a flow's backend only on the CPUs that have seen the flow; on any other, the flow is new and goes where the Maglev table says now. The pool-change table above shows it: after the flow's backend was drained, its next packet on the other CPU went to another backend with both per-CPU layouts (the connection breaks), and to its own with every shared one. One flow's packets reach several CPUs whenever:\n\n\
- an ICMP error about the flow arrives: a router's \"fragmentation needed\" (or \"packet too big\") has the router's address and no ports, so receive-side scaling hashes it to another CPU than the flow's; `lb` balances it as the flow it quotes, by that flow's entry (docs/language.md, \"ICMP errors\"), which only a shared table has on that CPU: with per-CPU tables the error would go where the Maglev table sends the flow now, not to the backend that holds the connection once a pool change has moved the flow, and path-MTU discovery would fail for it;\n\
- with `nat`, the backend's reply is translated back by `tc:egress` on whatever CPU the reply arrives on, hashed from the reply's own addresses; the translation was recorded on the client's packets' CPU;\n\
- receive-side scaling moves flows between CPUs (`ethtool -X`, a change of queue count or interrupt affinity, a NIC reset): every moved flow is balanced again, and, the pool having changed since, sent elsewhere: exactly when the flow table is there to keep flows where they are.\n\n\
Per-CPU tables also divide the capacity: Katran gives each CPU the configured size divided by the CPUs; a flow seen on two CPUs takes an entry on each, and a CPU with more than its share of flows evicts while the others have room. `LRU_PERCPU_HASH` keeps the capacity but holds a value per possible CPU for every entry ({m_values:.1} MiB against {m_shared:.1} MiB here, with {possible} possible CPUs; 8 bytes more per entry for each possible CPU).\n\n\
So xpol keeps one shared `LRU_HASH` per pool: sharing costs nothing on established flows, and on new flows at most {worst_pct:.0}% when two CPUs do nothing but insert ({x_sat_pct:.0}% for xpol's table as sized here), while per-CPU tables send flows to the wrong backend in the cases above.\n\n\
Limits: two CPUs (all this machine has), shared with other work: during the two-CPU samples both lanes ran {ov_lo:.0}-{ov_hi:.0}% of the time (median {ov:.0}%). Contention that would only show with many CPUs inserting at once is not measured here.\n",
        table = j["table_size"],
        flows = j["flows"],
        cpu_a = j["cpus"][0],
        cpu_b = j["cpus"][1],
        runs = j["per_packet"]["runs_per_lane"],
        rep_est = j["saturated"]["repeat_established"],
        rep_new = j["saturated"]["repeat_new"],
        rounds = j["rounds"],
        tables = out.markdown,
        pp_est_duty = f.duty(pp, &established),
        pp_new_duty = f.duty(pp, &[Scenario::NewOne, Scenario::NewTwo]),
        sat_duty = f.duty(sat, &SCENARIOS),
        est_tables = f.range(&established, tables, shared),
        est_values = f.range(&established, values, shared),
        same_shared = same_growth(shared),
        nt_pp = f.ns(pp, Scenario::NewOne, tables),
        ns_pp = f.ns(pp, Scenario::NewOne, shared),
        r_pp = f.ratio(pp, Scenario::NewOne, tables, shared),
        nt_sat = f.ns(sat, Scenario::NewOne, tables),
        ns_sat = f.ns(sat, Scenario::NewOne, shared),
        r_sat = f.ratio(sat, Scenario::NewOne, tables, shared),
        half_1 = size_1cpu(half, shared),
        tables_half_1 = size_1cpu(tables, half),
        worst_pct = 100.0 * (worst - 1.0).max(0.0),
        worst_layout = worst_layout.label(),
        worst_method = worst_method.label(),
        x_sat_pct = 100.0 * (excess(sat, shared) - 1.0).max(0.0),
        new_values = f.range(&[Scenario::NewOne, Scenario::NewTwo], values, shared),
        new_cpu_lru = f.range(&[Scenario::NewOne, Scenario::NewTwo], cpu_lru, shared),
        m_values = mib(values),
        m_shared = mib(shared),
        possible = j["possible_cpus"],
        ov_lo = 100.0 * min(&overlaps),
        ov_hi = 100.0 * max(&overlaps),
        ov = 100.0 * median(&overlaps),
    )
}
