//! Millions of IPv4 prefixes (issue 17): the reference firewall
//! (`bench/ref-fw/`) with a blocklist of 1,000,000 and 10,000,000
//! prefixes, against its C peer with an LPM trie (`ref_fw::c_source`) in
//! the same run: build and load time, kernel memory per prefix, and ns
//! per packet over a trace of addresses in and out of the set.
//!
//!   cargo bench --bench millions             full run; writes the "Millions" section of BENCHMARKS.md and bench-out/millions.json
//!   cargo bench --bench millions -- --quick  smoke run (tests/bench_smoke.rs): 100,000 prefixes; asserts nothing about time; writes target/bench-out-quick/
//!
//! Needs root and clang-14. The prefixes come from a seeded generator
//! ([`prefixes`]): nothing to download, the same list in every run.

#![allow(dead_code)]

#[path = "common/mod.rs"]
mod common;

#[path = "ref_fw.rs"]
mod ref_fw;

use common::{median, sh};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;
use std::time::Instant;
use xpol_lang::ipv4_table::{mask, Ipv4Table, LEAF_BYTES, ROOT_ENTRIES};
use xpol_runtime::loader::{LoadedPolicy, XdpAttachMode};
use xpol_runtime::packet::PacketSpec;
use xpol_runtime::sys;

pub use common::{Mode, Report};
use common::root;

pub const FULL_SIZES: [usize; 2] = [1_000_000, 10_000_000];
pub const QUICK_SIZES: [usize; 1] = [100_000];

/// Prefix lengths and their weight in 1,000: ref-fw's lengths (/16 to
/// /32), weighted as a blocklist is (half single addresses, many /24s,
/// fewer prefixes the shorter they are). ref-fw's uniform mix would cover
/// almost every address at 10,000,000 prefixes (some 590,000 /16s alone),
/// leaving no misses; this one covers about 10% of the addresses at
/// 1,000,000 and about 60% at 10,000,000.
pub const LENGTH_MIX: [(u8, u32); 17] = [
    (16, 1),
    (17, 2),
    (18, 3),
    (19, 4),
    (20, 10),
    (21, 20),
    (22, 40),
    (23, 50),
    (24, 300),
    (25, 10),
    (26, 10),
    (27, 10),
    (28, 10),
    (29, 10),
    (30, 10),
    (31, 10),
    (32, 500),
];

/// xorshift64*: small, seeded, the same sequence everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The length of [`LENGTH_MIX`] that `pick` (below the sum of its
/// weights) falls on.
fn length(mut pick: u32) -> u8 {
    for &(len, weight) in &LENGTH_MIX {
        if pick < weight {
            return len;
        }
        pick -= weight;
    }
    unreachable!("pick is below the sum of the weights")
}

/// `n` distinct IPv4 prefixes (address in host order, bits past the
/// length zero, length) from a fixed seed, lengths drawn from
/// [`LENGTH_MIX`], addresses uniform.
pub fn prefixes(n: usize) -> Vec<(u32, u8)> {
    let total: u32 = LENGTH_MIX.iter().map(|(_, w)| w).sum();
    let mut rng = Rng::new(0x6d69_6c6c_696f_6e73 ^ n as u64);
    let mut out: Vec<(u32, u8)> = Vec::with_capacity(n);
    while out.len() < n {
        while out.len() < n {
            let r = rng.next();
            let len = length((r >> 40) as u32 % total);
            out.push((r as u32 & mask(len), len));
        }
        // Distinct: the few duplicates drawn are drawn again.
        out.sort_unstable();
        out.dedup();
    }
    // In drawn order, not sorted: as a list would come.
    let mut shuffle = Rng::new(0x5eed);
    for i in (1..out.len()).rev() {
        out.swap(i, (shuffle.next() % (i as u64 + 1)) as usize);
    }
    out
}

/// The addresses of the trace: `half` in the set (a random address of a
/// random prefix) and `half` not in it, interleaved, with whether each is
/// in it (by `oracle`).
fn trace(list: &[(u32, u8)], oracle: &Ipv4Table, half: usize) -> Vec<(Ipv4Addr, bool)> {
    let mut rng = Rng::new(0x7472_6163_65);
    let mut out = Vec::with_capacity(2 * half);
    for _ in 0..half {
        let (p, len) = list[(rng.next() % list.len() as u64) as usize];
        let hit = p | (rng.next() as u32 & !mask(len));
        let miss = loop {
            let a = rng.next() as u32;
            if !oracle.contains(a) {
                break a;
            }
        };
        assert!(oracle.contains(hit));
        out.push((Ipv4Addr::from(hit), true));
        out.push((Ipv4Addr::from(miss), false));
    }
    out
}

fn packet(src: Ipv4Addr) -> Vec<u8> {
    PacketSpec::tcp4(src, "198.19.255.1".parse().expect("v4"), 40000, 80).syn().payload(10).build()
}

/// The ref-fw policy with the blocklist read from `list`.
fn policy_text(list: &Path) -> String {
    let body = std::fs::read_to_string(root().join("bench/ref-fw/ref-fw-10.xpol")).expect("bench/ref-fw/ref-fw-10.xpol");
    let rules: Vec<&str> = body.lines().filter(|l| l.starts_with("xdp")).collect();
    format!("set blocklist: cidr = file(\"{}\")\n{}\n", list.display(), rules.join("\n"))
}

/// `memlock:` of a map's fdinfo: what the kernel charges for it (since
/// Linux 6.4 the map type's own count of its memory).
fn memlock(fd: BorrowedFd<'_>) -> u64 {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).expect("fdinfo");
    info.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse().ok()).expect("memlock in fdinfo")
}

/// Each map a program uses: its name, type and memlock bytes.
fn program_maps(info: &aya::programs::ProgramInfo) -> Vec<(String, String, u64)> {
    let ids = info.map_ids().expect("map ids").unwrap_or_default();
    ids.into_iter()
        .map(|id| {
            let m = aya::maps::MapInfo::from_id(id).expect("map by id");
            let fd = m.fd().expect("map fd");
            (m.name_as_str().unwrap_or("").to_string(), format!("{:?}", m.map_type().ok()), memlock(fd.as_fd()))
        })
        .collect()
}

/// CPU time of this thread so far (ns), from its schedstat: in the
/// kernel too (map creation, the verifier).
fn cpu_ns() -> u64 {
    common::runtime_ns(Path::new("/proc/thread-self/schedstat"))
}

/// `n` with a comma every three digits, as the targets are written.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Whether the kernel's BPF run-time statistics are on.
fn bpf_stats_on() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() == "1")
}

/// `/proc/meminfo` field in bytes.
fn meminfo(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    let kb: u64 = text.lines().find_map(|l| l.strip_prefix(field).and_then(|v| v.trim_start_matches(':').split_whitespace().next()?.parse().ok())).expect("a meminfo field");
    kb * 1024
}

/// The C peer loaded with room for `n` prefixes, and the time and the
/// unreclaimable slab memory its `n` inserts took.
struct CPeer {
    ebpf: aya::Ebpf,
    load_s: f64,
    insert_s: f64,
    slab_bytes: i64,
}

fn load_c(object: &Path, list: &[(u32, u8)]) -> CPeer {
    let t = Instant::now();
    let mut ebpf = aya::EbpfLoader::new().map_max_entries("blocklist", list.len() as u32).load_file(object).expect("load the C object");
    let p: &mut aya::programs::Xdp = ebpf.program_mut("ref_fw").expect("ref_fw").try_into().expect("xdp");
    p.load().expect("the kernel verifies the C peer");
    let load_s = t.elapsed().as_secs_f64();
    let mut trie: aya::maps::LpmTrie<_, u32, u8> = aya::maps::LpmTrie::try_from(ebpf.map_mut("blocklist").expect("blocklist")).expect("lpm");
    let slab_before = meminfo("SUnreclaim") as i64;
    let t = Instant::now();
    for &(a, len) in list {
        trie.insert(&aya::maps::lpm_trie::Key::new(u32::from(len), a.to_be()), 1, 0).expect("insert");
    }
    let insert_s = t.elapsed().as_secs_f64();
    let slab_bytes = meminfo("SUnreclaim") as i64 - slab_before;
    CPeer { ebpf, load_s, insert_s, slab_bytes }
}

/// Mean ns per packet over the trace: each packet test-run `repeat`
/// times (the kernel's whole-ns mean per run), the means averaged.
fn trace_ns(prog: BorrowedFd<'_>, packets: &[Vec<u8>], repeat: u32) -> f64 {
    let sum: u64 = packets.iter().map(|p| u64::from(sys::prog_test_run(prog, p, None, repeat).expect("test run").duration_ns)).sum();
    sum as f64 / packets.len() as f64
}

fn spread(v: &[f64]) -> (f64, f64, f64) {
    (median(v), v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(0.0, f64::max))
}

pub fn run(mode: &Mode, out_dir: &Path) -> Report {
    run_sizes(mode, if mode.quick { &QUICK_SIZES } else { &FULL_SIZES }, out_dir)
}

/// [`run`] for these numbers of prefixes.
pub fn run_sizes(mode: &Mode, sizes: &[usize], out_dir: &Path) -> Report {
    let (rounds, repeat, half) = if mode.quick { (1, 100, 32) } else { (7, 2_000, 256) };
    let dir = tempfile::tempdir().expect("tempdir");
    let c_object = ref_fw::clang(dir.path(), "c_lpm", &ref_fw::c_source(None));
    let floor = ref_fw::clang(dir.path(), "floor", "#define SEC(n) __attribute__((section(n), used))\nstruct xdp_md;\nSEC(\"xdp\") int ref_fw(struct xdp_md *c) { return 2; }\nchar _l[] SEC(\"license\") = \"GPL\";\n");
    let mut floor = aya::Ebpf::load_file(&floor).expect("floor");
    let floor_prog: &mut aya::programs::Xdp = floor.program_mut("ref_fw").expect("floor").try_into().expect("xdp");
    floor_prog.load().expect("floor loads");
    let cpu = sys::allowed_cpus().expect("CPUs")[0];
    let mut md = String::new();
    let mut rows = Vec::new();
    let mut ns_md = String::new();
    for &n in sizes {
        let t = Instant::now();
        let list = prefixes(n);
        let generate_s = t.elapsed().as_secs_f64();
        let list_path = dir.path().join(format!("blocklist-{n}.txt"));
        let mut text = String::with_capacity(n * 18);
        for &(a, len) in &list {
            let _ = writeln!(text, "{}/{len}", Ipv4Addr::from(a));
        }
        std::fs::write(&list_path, text).expect("write the blocklist");
        let policy = dir.path().join(format!("millions-{n}.xpol"));
        std::fs::write(&policy, policy_text(&list_path)).expect("write the policy");

        // xpol: build, then load (verifier, maps created and filled).
        // Wall time, and this thread's CPU time (the machine is shared:
        // other work stretches the wall time, not the CPU time).
        let (t, cpu0) = (Instant::now(), cpu_ns());
        let b = xpol_compiler::build(&policy, &xpol_compiler::BuildOptions::default());
        let (build_s, build_cpu_s) = (t.elapsed().as_secs_f64(), (cpu_ns() - cpu0) as f64 / 1e9);
        let object = b.output.unwrap_or_else(|| panic!("N={n}: {}", xpol_lang::render::render_human(&b.diagnostics, &b.sources, false))).object;
        let (t, cpu0) = (Instant::now(), cpu_ns());
        let mut xpol = LoadedPolicy::load(&object).expect("the policy loads");
        let (load_s, load_cpu_s) = (t.elapsed().as_secs_f64(), (cpu_ns() - cpu0) as f64 / 1e9);
        drop(object);
        let prog_name = xpol.meta().programs.iter().find(|p| p.hook == "xdp").expect("an xdp program").name.clone();
        let xpol_maps = {
            let x: &mut aya::programs::Xdp = xpol.ebpf_mut().program_mut(&prog_name).expect("program").try_into().expect("xdp");
            program_maps(&x.info().expect("info"))
        };
        let xpol_bytes: u64 = xpol_maps.iter().map(|m| m.2).sum();
        // What the tables hold now, without the room for growth.
        let oracle = Ipv4Table::build(list.iter().copied());
        let in_use = 4 * u64::from(ROOT_ENTRIES) + oracle.mid.len() as u64 * u64::from(Ipv4Table::mid_chunk_bytes(oracle.mid_wide())) + oracle.leaf.len() as u64 * u64::from(LEAF_BYTES);

        // The C peer with its LPM trie.
        let mut c = load_c(&c_object, &list);
        let c_maps = {
            let x: &mut aya::programs::Xdp = c.ebpf.program_mut("ref_fw").expect("ref_fw").try_into().expect("xdp");
            program_maps(&x.info().expect("info"))
        };
        let c_memlock: u64 = c_maps.iter().filter(|m| m.0 == "blocklist").map(|m| m.2).sum();

        // Verdicts: every trace packet, both programs, against the oracle.
        let trace = trace(&list, &oracle, half);
        let packets: Vec<Vec<u8>> = trace.iter().map(|(a, _)| packet(*a)).collect();
        // Each program attached to a veth of the bench's own namespaces
        // while it is test-run: the kernel's XDP dispatcher then holds it
        // already, and a test run does not patch the dispatcher in and
        // out (a synchronize_rcu per run, milliseconds on a busy machine).
        let mut ns = common::veth::Namespaces::new("mi").expect("namespaces");
        let (g, r, _) = ns.pair().expect("a veth pair");
        let (floor_dev, _, _) = ns.pair().expect("a second veth pair");
        let (gen_path, recv_path) = (common::veth::Namespaces::path(&ns.gen), common::veth::Namespaces::path(&ns.recv));
        sys::in_netns(&gen_path, None, || xpol.attach("xdp", &g, XdpAttachMode::Native)).expect("generator namespace").expect("attach xpol");
        let c_prog: &mut aya::programs::Xdp = c.ebpf.program_mut("ref_fw").expect("ref_fw").try_into().expect("xdp");
        sys::in_netns(&recv_path, None, || c_prog.attach(&r, aya::programs::XdpMode::Driver).map(drop)).expect("receiver namespace").expect("attach C");
        let floor_prog: &mut aya::programs::Xdp = floor.program_mut("ref_fw").expect("floor").try_into().expect("xdp");
        let floor_link = sys::in_netns(&gen_path, None, || floor_prog.attach(&floor_dev, aya::programs::XdpMode::Driver)).expect("generator namespace").expect("attach the floor");
        let xpol_fd = xpol.program_fd("xdp").expect("program");
        let c_prog: &aya::programs::Xdp = c.ebpf.program("ref_fw").expect("ref_fw").try_into().expect("xdp");
        let c_fd = c_prog.fd().expect("fd").as_fd();
        let floor_prog: &aya::programs::Xdp = floor.program("ref_fw").expect("floor").try_into().expect("xdp");
        let floor_fd = floor_prog.fd().expect("fd").as_fd();
        for ((addr, hit), p) in trace.iter().zip(&packets) {
            let want = if *hit { 1 } else { 2 };
            for (who, fd) in [("xpol", xpol_fd), ("C, LPM_TRIE", c_fd)] {
                let got = sys::prog_test_run(fd, p, None, 1).expect("test run").retval;
                assert_eq!(got, want, "N={n}, {who}: {addr} {} the set", if *hit { "in" } else { "not in" });
            }
        }
        let hits: Vec<Vec<u8>> = packets.iter().zip(&trace).filter(|(_, t)| t.1).map(|(p, _)| p.clone()).collect();
        let misses: Vec<Vec<u8>> = packets.iter().zip(&trace).filter(|(_, t)| !t.1).map(|(p, _)| p.clone()).collect();
        // Rounds interleaved, one CPU: hits and misses each with `repeat`
        // runs of each packet (its lines warm), and the whole trace once
        // (each packet one run, after the others: colder lines, plus the
        // test run's own fixed cost, the floor row).
        let progs = [("xpol", xpol_fd), ("C, LPM_TRIE", c_fd), ("floor (return XDP_PASS)", floor_fd)];
        let mut samples = vec![[Vec::new(), Vec::new(), Vec::new()]; progs.len()];
        // The kernel's BPF statistics (turned on by any process, e.g.
        // another benchmark) add two clock reads to every run: a round
        // that may have run with them is taken again.
        let mut redone = 0;
        sys::on_cpu(cpu, || {
            let mut done = 0;
            while done < rounds {
                let before = bpf_stats_on();
                let round: Vec<[f64; 3]> = progs.iter().map(|(_, fd)| [trace_ns(*fd, &hits, repeat), trace_ns(*fd, &misses, repeat), trace_ns(*fd, &packets, 1)]).collect();
                if before || bpf_stats_on() {
                    redone += 1;
                    assert!(redone <= 60, "kernel.bpf_stats_enabled stayed on (another process has BPF_ENABLE_STATS): the test-run times would include its clock reads");
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    continue;
                }
                for (s, r) in samples.iter_mut().zip(round) {
                    for (k, v) in r.into_iter().enumerate() {
                        s[k].push(v);
                    }
                }
                done += 1;
            }
        })
        .expect("pinned");
        let ratio = |k: usize| -> Vec<f64> { samples[0][k].iter().zip(&samples[1][k]).map(|(x, c)| x / c).collect() };
        for ((name, _), s) in progs.iter().zip(&samples) {
            let cells: Vec<String> = s.iter().map(|v| spread(v)).map(|(m, lo, hi)| format!("{m:.1} ({lo:.1}-{hi:.1})")).collect();
            let _ = writeln!(ns_md, "| {name} | {n} | {} |", cells.join(" | "));
        }
        let (hit_ratio, miss_ratio, once_ratio) = (median(&ratio(0)), median(&ratio(1)), median(&ratio(2)));
        let _ = writeln!(ns_md, "| xpol / C | {n} | {hit_ratio:.2}x | {miss_ratio:.2}x | {once_ratio:.2}x |");
        // Each minus the floor of its round: what the programs add to a
        // test run, whatever the run itself cost then.
        let above = |k: usize| -> Vec<f64> { (0..samples[0][k].len()).map(|i| (samples[0][k][i] - samples[2][k][i]) / (samples[1][k][i] - samples[2][k][i])).collect() };
        let _ = writeln!(ns_md, "| xpol / C, each above the floor | {n} | {:.2}x | {:.2}x | {:.2}x |", median(&above(0)), median(&above(1)), median(&above(2)));

        let c_load = c.load_s + c.insert_s;
        let row = serde_json::json!({
            "n": n, "generate_s": generate_s,
            "xpol": {
                "build_s": build_s, "load_s": load_s, "build_and_load_s": build_s + load_s,
                "build_cpu_s": build_cpu_s, "load_cpu_s": load_cpu_s, "build_and_load_cpu_s": build_cpu_s + load_cpu_s,
                "memlock_bytes": xpol_bytes, "bytes_per_prefix": xpol_bytes as f64 / n as f64,
                "tables_in_use_bytes": in_use, "mid_chunks_in_use": oracle.mid.len(), "leaf_chunks_in_use": oracle.leaf.len(),
                "maps": xpol_maps.iter().map(|(name, kind, bytes)| serde_json::json!({"name": name, "type": kind, "memlock": bytes})).collect::<Vec<_>>(),
                "ns": {"hits": samples[0][0], "misses": samples[0][1], "once": samples[0][2]},
            },
            "c_lpm_trie": {
                "load_s": c.load_s, "insert_s": c.insert_s, "load_and_insert_s": c_load,
                "memlock_bytes": c_memlock, "memlock_per_prefix": c_memlock as f64 / n as f64,
                "slab_bytes": c.slab_bytes, "slab_per_prefix": c.slab_bytes as f64 / n as f64,
                "ns": {"hits": samples[1][0], "misses": samples[1][1], "once": samples[1][2]},
            },
            "floor_ns": {"hits": samples[2][0], "misses": samples[2][1], "once": samples[2][2]},
            "xpol_over_c": {"hits": ratio(0), "misses": ratio(1), "once": ratio(2)},
            "rounds_redone_for_bpf_stats": redone,
            "xpol_over_c_above_floor": {"hits": above(0), "misses": above(1), "once": above(2)},
        });
        println!("N={n}: {row}");
        rows.push(row);
        // Free this size's maps before the next one's are measured.
        let floor_prog: &mut aya::programs::Xdp = floor.program_mut("ref_fw").expect("floor").try_into().expect("xdp");
        floor_prog.detach(floor_link).expect("detach the floor");
        drop(xpol);
        drop(c);
        drop(ns);
    }
    let mb = |b: f64| b / (1 << 20) as f64;
    let _ = writeln!(md, "| N | xpol build s (CPU s) | xpol load s (CPU s) | xpol build + load s (CPU s) | C LPM trie load + N inserts s | xpol kernel MiB (memlock) | of which tables in use MiB | C LPM trie memlock MiB | C LPM trie slab MiB | xpol bytes/prefix | C memlock bytes/prefix | C slab bytes/prefix |");
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let (x, c) = (&r["xpol"], &r["c_lpm_trie"]);
        let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
        let _ = writeln!(
            md,
            "| {} | {:.2} ({:.2}) | {:.2} ({:.2}) | {:.2} ({:.2}) | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r["n"], f(&x["build_s"]), f(&x["build_cpu_s"]), f(&x["load_s"]), f(&x["load_cpu_s"]), f(&x["build_and_load_s"]), f(&x["build_and_load_cpu_s"]), f(&c["load_and_insert_s"]),
            mb(f(&x["memlock_bytes"])), mb(f(&x["tables_in_use_bytes"])), mb(f(&c["memlock_bytes"])), mb(f(&c["slab_bytes"])),
            f(&x["bytes_per_prefix"]), f(&c["memlock_per_prefix"]), f(&c["slab_per_prefix"]),
        );
    }
    let _ = writeln!(md, "\n| program | N | hits ns/pkt (repeat {repeat}) | misses ns/pkt (repeat {repeat}) | whole trace, each packet once, ns/pkt |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    md.push_str(&ns_md);
    let _ = writeln!(md, "\nTargets (this run):\n");
    let met = |ok: bool| if ok { "met" } else { "not met" };
    let mut targets = Vec::new();
    for r in &rows {
        let (x, c) = (&r["xpol"], &r["c_lpm_trie"]);
        let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
        let n = r["n"].as_u64().unwrap_or(0);
        let shown = thousands(n);
        if n == 1_000_000 {
            let (s, cpu) = (f(&x["build_and_load_s"]), f(&x["build_and_load_cpu_s"]));
            let _ = writeln!(
                md,
                "- N=1,000,000: xpol build + load under 3 s: {:.2} s + {:.2} s = {s:.2} s wall time ({}); {:.2} s + {:.2} s = {cpu:.2} s CPU time ({}).",
                f(&x["build_s"]), f(&x["load_s"]), met(s < 3.0), f(&x["build_cpu_s"]), f(&x["load_cpu_s"]), met(cpu < 3.0)
            );
            targets.push(serde_json::json!({"target": "1M build + load < 3 s", "wall_s": s, "cpu_s": cpu, "met_by_wall": s < 3.0, "met_by_cpu": cpu < 3.0}));
        }
        let (xb, cm, cs) = (f(&x["memlock_bytes"]), f(&c["memlock_bytes"]), f(&c["slab_bytes"]));
        let _ = writeln!(
            md,
            "- N={shown}: xpol's kernel memory at most the LPM trie's: {:.1} MiB against {:.1} MiB of slab the trie's inserts took ({}), {:.1} MiB it reports as memlock ({}).",
            mb(xb), mb(cs), met(xb <= cs), mb(cm), met(xb <= cm)
        );
        targets.push(serde_json::json!({"target": format!("N={n} memory <= LPM trie"), "xpol_bytes": xb, "lpm_slab_bytes": cs, "lpm_memlock_bytes": cm, "met_by_slab": xb <= cs, "met_by_memlock": xb <= cm}));
    }
    let json = serde_json::json!({"quick": mode.quick, "rounds": rounds, "repeat": repeat, "trace": 2 * half, "length_mix": LENGTH_MIX, "results": rows, "targets": targets, "load_average": common::load_average()});
    common::write_report(out_dir, "millions", &json, &md);
    Report { markdown: md, json }
}

/// Replaces the "Millions" section of BENCHMARKS.md.
fn write_section(markdown: &str, json: &serde_json::Value) {
    let path = root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let commit = common::commit_label(&root(), &["compiler", "lang", "runtime", "benches"]);
    let cpu = common::cpu_model();
    let kernel = sh(None, "uname", &["-r"], None).unwrap_or_default();
    let section = format!(
        "## Millions of prefixes (issue 17)\n\n\
         Measured with `cargo bench --bench millions` at commit {commit} on {cpu}, Linux {}, load average {} (a machine shared with other builds). Raw numbers: `bench-out/millions.json`. Before this issue's changes (the bench at d12c6d3, 1M prefixes, a machine at load average 10): build 15.98 s (`xpolc build` of such a policy took 6.9 s of CPU: the lints' analysis copied the set's 500,000 intervals rule after rule, and a rule's signature held the text of every element) and load 1.47 s (an update system call per table chunk, some 570,000); memory and ns/packet as now.\n\n\
         The reference firewall (ref-fw) with a blocklist of N IPv4 prefixes from a seeded generator (`benches/millions.rs`, `prefixes`): distinct prefixes, lengths /16 to /32 weighted as a blocklist is (half /32, 30% /24, the rest fewer the shorter: `LENGTH_MIX`), addresses uniform. xpol reads them with `set blocklist: cidr = file(...)` (default room: twice the initial elements); its C peer from `benches/ref_fw.rs` (same rules, an LPM trie sized to N) gets them one `bpf_map_update_elem` each. \
         *Build* is `xpol_compiler::build` in-process (the file read and parsed, the tables built to size them, the object written in memory); *load* is `LoadedPolicy::load` (metadata read, maps created, verifier, tables built again and written). \
         Kernel memory: `memlock` of each map's fdinfo (the map type's own count), summed over all of xpol's maps (its tables are arrays and global data, allocated whole, room for growth included; *in use* is what the prefixes fill); for the LPM trie its `memlock` counts one node per prefix only, so the growth of the kernel's unreclaimable slab (`SUnreclaim` in /proc/meminfo) over the N inserts is given too, which counts the trie's intermediate nodes and each node's rounding up to its allocation size (and anything else the machine allocated meanwhile). \
         ns per packet: `BPF_PROG_TEST_RUN` on one CPU over a trace of {} packets (64-byte TCP SYN to port 80), half from addresses in the set (a random address of a random prefix), half from addresses in none; every packet's verdict is checked against the generator's prefixes for both programs first. Hits and misses: each packet `repeat` times, the kernel's whole-ns mean per run averaged over the packets (the packet's table lines warm); whole trace once: each packet one run after the others (colder lines), which includes the test run's own cost (the floor row). {} interleaved rounds, median (min-max); xpol / C is the median of the per-round ratios; a round during which the kernel's BPF statistics were on (another process's `BPF_ENABLE_STATS`: two clock reads more per run) is taken again. \
         The memory goal is judged on the trie's slab growth, what the kernel allocated for it: its `memlock` is one node per prefix of 24 + 4 + 1 bytes, while the allocator rounds each node up and the trie adds an intermediate node wherever two prefixes part (the slab grew by some 120 bytes per prefix). xpol's tables are one 256 KiB root per set, then 1 KiB mid chunks (one per /16 holding longer prefixes: all 65,536 from about a million prefixes on, 64 MiB) and 32-byte leaves (one per /24 holding longer prefixes), with room for twice the initial elements: from about a million prefixes on, the mid level is full and each further prefix costs at most a leaf.\n\n\
         {markdown}",
        kernel.trim(),
        json["load_average"].as_str().unwrap_or(""),
        json["trace"],
        json["rounds"],
    );
    std::fs::write(&path, common::replace_section(&old, "Millions of prefixes (issue 17)", &section)).expect("write BENCHMARKS.md");
}

fn main() {
    // `--sizes N,M`: a focused run at those sizes, full rounds; its report
    // goes to target/bench-out-partial/, BENCHMARKS.md stays as it is.
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--sizes") {
        Some(i) if xpol_runtime::testing::kernel_or_skip("millions benchmark") => {
            let sizes: Vec<usize> = args.get(i + 1).expect("--sizes takes a list, e.g. 1000000").split(',').map(|n| n.parse().expect("a number of prefixes")).collect();
            let report = run_sizes(&Mode { quick: false }, &sizes, &common::out_dir(&root(), false, false));
            println!("{}", report.markdown);
        }
        Some(_) => {}
        None => common::bench_main("millions benchmark", run, write_section),
    }
}
