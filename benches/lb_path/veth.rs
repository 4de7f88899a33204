//! Veth mode of the load-balancer benchmark: real frames from a generator
//! namespace through a load-balancer namespace to a backend namespace, CPU
//! time per forwarded packet: xpol's `lb(web, encap: ipip)` in XDP, the C
//! twin, and the kernel's own forwarding (IPVS in tunnel, direct-routing and
//! NAT mode where the kernel has IPVS; nftables DNAT; plain routing).
//!
//! Topology (all namespaces created here, named after this process,
//! removed on drop): one generator namespace, one backend namespace, and a
//! load-balancer namespace per peer, joined by two veth pairs per peer:
//! generator -> LB ingress, LB egress -> backend. In the LB namespace the
//! ingress veth has 198.18.0.2/24, the egress veth 198.18.1.1/24 with a
//! permanent neighbour entry for each backend (198.18.1.10-19), forwarding
//! on, reverse-path filtering off; IPv6 is off in all three namespaces (no
//! neighbour discovery in the counts). The backend side of each egress pair
//! runs a sink: an XDP program that counts what arrives by kind (IPIP to a
//! backend, UDP to a backend, UDP to the VIP, anything else) and drops it.
//!
//! A generator XDP program is test-run with `BPF_F_TEST_XDP_LIVE_FRAMES`
//! and `ingress_ifindex` on the generator end of a pair: each run writes
//! the whole 64-byte frame (the load balancer encapsulates in place, and
//! the kernel routes decrement the TTL in place, in pages the test run
//! recycles without copying the frame again) and returns `XDP_TX`, so the
//! frame arrives at the LB's ingress veth. The flow is one fixed UDP flow,
//! 198.18.7.7:40000 -> 198.18.0.100:53: after the first packet, each peer
//! finds it in its flow state (xpol's and C's flow table, IPVS's connection
//! table, conntrack): what is measured is the established-flow path. The
//! generator thread is pinned to the last CPU, where the NAPI polls of the
//! three veths also run; CPU ns per packet = (the generator thread's run
//! time from `/proc/thread-self/schedstat`, which on this kernel includes
//! the softirq work done in its context, + that CPU's ksoftirqd) / frames.
//! Before a sample is kept, the sink must have counted every frame sent,
//! as the kind the peer forwards.

use super::common::{cpu_busy_ns, ksoftirqd, runtime_ns, sh};
pub use super::common::have;
use super::{backend4, bench_source, c_defines, clang, clang_text, load_c, maglev_table, policy_text, unique_tag, Case, BACKENDS, CLIENT4, VIP4};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use xpol_runtime::loader::{LoadedPolicy, XdpAttachMode};
use xpol_runtime::packet::PacketSpec;
use xpol_runtime::sys;

/// Runs `ip ARGS`; a failure is a panic (the benchmark's own setup).
pub fn ip(args: &[&str]) {
    if let Err(e) = sh(None, "ip", args, None) {
        panic!("{e}");
    }
}

/// Sets sysctls in namespace `ns`.
pub fn sysctl(ns: &str, settings: &[&str]) {
    let mut args = vec!["-q", "-w"];
    args.extend_from_slice(settings);
    if let Err(e) = sh(Some(ns), "sysctl", &args, None) {
        panic!("{e}");
    }
}

/// A peer cannot run: a loud note; in quick mode under
/// XPOL_REQUIRE_KERNEL=1 (CI installs every tool) a missing tool fails the
/// run, a kernel built without a feature does not.
fn missing(what: &str, why: &str, tool: bool, quick: bool, skipped: &mut Vec<String>) {
    let msg = format!("{what}: {}", why.split_whitespace().collect::<Vec<_>>().join(" "));
    if tool && quick && std::env::var("XPOL_REQUIRE_KERNEL").is_ok_and(|v| v == "1") {
        panic!("{msg} (XPOL_REQUIRE_KERNEL=1: every tool must be installed)");
    }
    eprintln!("\n*** SKIPPED {msg} ***\n");
    skipped.push(msg);
}

/// What the sink counts, by kind of frame.
const KINDS: usize = 4;
const IPIP_TO_BACKEND: usize = 0;
const UDP_TO_BACKEND: usize = 1;
const UDP_TO_VIP: usize = 2;
const KIND_NAMES: [&str; KINDS] = ["IPIP to a backend", "UDP to a backend", "UDP to the VIP", "other"];

fn sink_source() -> String {
    let vip = u32::from_le_bytes(VIP4.octets());
    // 198.18.1.0/24 as loaded (little-endian load of the wire bytes).
    let backends = u32::from_le_bytes([198, 18, 1, 0]);
    format!(
        r#"typedef unsigned char __u8; typedef unsigned short __u16; typedef unsigned int __u32; typedef unsigned long long __u64;
#define SEC(n) __attribute__((section(n), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
struct xdp_md {{ __u32 data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex; }};
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
struct {{ __uint(type, 6); __type(key, __u32); __type(value, __u64); __uint(max_entries, {KINDS}); }} kinds SEC(".maps");
SEC("xdp") int sink(struct xdp_md *ctx) {{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    __u8 *p = data;
    __u32 k = 3;
    if (data + 34 <= end && p[12] == 0x08 && p[13] == 0x00) {{
        __u32 dst = *(__u32 *)(p + 30);
        if (p[23] == 4 && (dst & 0x00ffffff) == {backends:#x}) k = 0;
        else if (p[23] == 17 && (dst & 0x00ffffff) == {backends:#x}) k = 1;
        else if (p[23] == 17 && dst == {vip:#x}) k = 2;
    }}
    __u64 *c = bpf_map_lookup_elem(&kinds, &k);
    if (c) *c += 1;
    return 1;
}}
char _license[] SEC("license") = "GPL";
"#
    )
}

/// A generator that writes `frame` (64 bytes) over its packet and sends it.
fn generator_source(frame: &[u8]) -> String {
    assert_eq!(frame.len(), 64);
    let stores: String = frame.chunks(8).enumerate().map(|(i, c)| format!("    ((__u64 *)data)[{i}] = {:#018x}ULL;\n", u64::from_le_bytes(c.try_into().expect("8 bytes")))).collect();
    format!(
        "typedef unsigned long long __u64; typedef unsigned int __u32;\n#define SEC(n) __attribute__((section(n), used))\nstruct xdp_md {{ __u32 data, data_end; }};\nSEC(\"xdp\") int gen(struct xdp_md *ctx) {{\n    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;\n    if (data + 64 > end) return 0;\n{stores}    return 3;\n}}\nchar _l[] SEC(\"license\") = \"GPL\";\n"
    )
}

/// The namespaces; removing them removes the veth pairs, the IPVS and
/// nftables configuration and the XDP attachments in them.
struct Topology {
    gen: String,
    be: String,
    lbs: Vec<String>,
    tag: String,
}

/// One load-balancer namespace and its two pairs.
struct LbNs {
    ns: String,
    /// Generator end of the ingress pair (in the generator namespace).
    gen_dev: String,
    lb_in: String,
    lb_out: String,
    /// Backend end of the egress pair (in the backend namespace).
    be_dev: String,
}

impl Topology {
    fn new() -> Result<Topology, String> {
        let tag = unique_tag();
        let mut t = Topology { gen: format!("xpollv{tag}-g"), be: format!("xpollv{tag}-b"), lbs: Vec::new(), tag };
        for n in [t.gen.clone(), t.be.clone()] {
            t.add_ns(&n)?;
        }
        Ok(t)
    }

    fn add_ns(&mut self, n: &str) -> Result<(), String> {
        sh(None, "ip", &["netns", "add", n], None)?;
        if n != self.gen && n != self.be {
            self.lbs.push(n.to_string());
        }
        sh(None, "ip", &["-n", n, "link", "set", "lo", "up"], None)?;
        sh(Some(n), "sysctl", &["-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"], None)?;
        Ok(())
    }

    /// A new load-balancer namespace, wired (see the module documentation).
    fn lb(&mut self) -> Result<LbNs, String> {
        let i = self.lbs.len();
        let ns = format!("xpollv{}-l{i}", self.tag);
        self.add_ns(&ns)?;
        let t = &self.tag;
        let l = LbNs { ns: ns.clone(), gen_dev: format!("xg{t}-{i}"), lb_in: format!("xa{t}-{i}"), lb_out: format!("xb{t}-{i}"), be_dev: format!("xc{t}-{i}") };
        let ip = |args: &[&str]| sh(None, "ip", args, None).map(|_| ());
        ip(&["link", "add", &l.gen_dev, "netns", &self.gen, "address", "02:00:00:00:00:01", "type", "veth", "peer", "name", &l.lb_in, "netns", &ns, "address", "02:00:00:00:00:02"])?;
        ip(&["link", "add", &l.lb_out, "netns", &ns, "address", "02:00:00:00:01:01", "type", "veth", "peer", "name", &l.be_dev, "netns", &self.be, "address", "02:00:00:00:01:02"])?;
        sh(Some(&ns), "sysctl", &["-q", "-w", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"], None)?;
        ip(&["-n", &ns, "addr", "add", "198.18.0.2/24", "dev", &l.lb_in])?;
        ip(&["-n", &ns, "addr", "add", "198.18.1.1/24", "dev", &l.lb_out])?;
        for (n, dev) in [(&self.gen, &l.gen_dev), (&ns, &l.lb_in), (&ns, &l.lb_out), (&self.be, &l.be_dev)] {
            ip(&["-n", n, "link", "set", dev, "up"])?;
        }
        for b in 0..BACKENDS {
            ip(&["-n", &ns, "neigh", "replace", &backend4(b).to_string(), "lladdr", "02:00:00:00:01:02", "dev", &l.lb_out, "nud", "permanent"])?;
        }
        // NAPI on the ingress veth, which takes the generator's XDP_TX
        // frames without an XDP program of its own (the kernel peers).
        sh(Some(&ns), "ethtool", &["-K", &l.lb_in, "gro", "on"], None)?;
        Ok(l)
    }

    fn path(name: &str) -> PathBuf {
        Path::new("/run/netns").join(name)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for n in self.lbs.iter().chain([&self.gen, &self.be]) {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// What forwards (or drops) at the LB; kept alive while it is measured.
enum Peer {
    /// An XDP program of ours on the LB's ingress veth.
    Prog(aya::Ebpf),
    Xpol(Box<LoadedPolicy>),
    /// The kernel's stack, configured in the LB namespace.
    Kernel,
}

struct Setup {
    name: String,
    lb: LbNs,
    _peer: Peer,
    sink: aya::Ebpf,
    /// The kind every frame must arrive as; `None`: nothing arrives (the
    /// floor drops at the LB).
    kind: Option<usize>,
    /// Which generator: 0 sends to the VIP, 1 to backend 198.18.1.10.
    gen: usize,
}

impl Setup {
    fn sink_counts(&self) -> [u64; KINDS] {
        let arr: aya::maps::PerCpuArray<_, u64> = aya::maps::PerCpuArray::try_from(self.sink.map("kinds").expect("kinds")).expect("per-CPU array");
        let mut out = [0u64; KINDS];
        for (k, o) in out.iter_mut().enumerate() {
            *o = arr.get(&(k as u32), 0).expect("sink counter").iter().sum();
        }
        out
    }
}

/// One measured peer.
#[derive(Clone, Debug, Default)]
pub struct VethRow {
    pub peer: String,
    pub frames: u64,
    /// CPU ns per packet (generator thread + ksoftirqd), one per round.
    pub samples: Vec<f64>,
    /// /proc/stat busy ns per packet of the generator's CPU, one per round.
    pub cpu_busy: Vec<f64>,
    /// Frames the sink counted as the expected kind, over all rounds.
    pub forwarded: u64,
    pub kind: Option<usize>,
    pub reruns: u32,
}

struct Generator {
    progs: Vec<aya::Ebpf>,
    frame_len: usize,
    cpu: usize,
    ksoftirqd: Option<PathBuf>,
    ns: PathBuf,
}

impl Generator {
    /// Pushes `frames` frames of generator `which` out of `dev`; (CPU ns,
    /// /proc/stat busy ns) spent.
    fn push(&mut self, which: usize, dev: &str, frames: u32) -> (u64, u64) {
        let (len, cpu, ksoftirqd) = (self.frame_len, self.cpu, self.ksoftirqd.clone());
        let x: &mut Xdp = self.progs[which].program_mut("gen").expect("gen").try_into().expect("xdp");
        sys::in_netns(&self.ns, Some(cpu), move || {
            let ifindex = sys::if_nametoindex(dev);
            assert!(ifindex != 0, "no {dev} in the generator namespace");
            let ctx = super::xdp_ctx(len, ifindex);
            let data = vec![0u8; len];
            let me = Path::new("/proc/thread-self/schedstat");
            let k = |p: &Option<PathBuf>| p.as_deref().map_or(0, runtime_ns);
            let (t0, k0, b0) = (runtime_ns(me), k(&ksoftirqd), cpu_busy_ns(cpu));
            x.test_run(TestRunOptions { data_in: Some(&data), ctx_in: Some(&ctx), repeat: frames, attrs: TestRunAttrs::new().xdp_live_frames(64), ..Default::default() })
                .expect("BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES (kernel 5.18 or later)");
            let (t1, k1, b1) = (runtime_ns(me), k(&ksoftirqd), cpu_busy_ns(cpu));
            assert!(t1 > t0, "no run time in /proc/thread-self/schedstat (a kernel without CONFIG_SCHED_INFO): cannot measure CPU time");
            (t1 - t0 + (k1 - k0), b1.saturating_sub(b0))
        })
        .expect("enter the generator namespace")
    }
}

/// Samples of one peer run again at most, over all rounds, when frames were
/// lost on the way.
const MAX_RERUNS: u32 = 10;

/// The IPVS modes measured, as `ipvsadm -a` flags.
const IPVS_MODES: [(&str, &str, usize); 3] = [("tunnel (IPIP)", "-i", IPIP_TO_BACKEND), ("direct routing", "-g", UDP_TO_VIP), ("NAT", "-m", UDP_TO_BACKEND)];

/// The note that stands for every IPVS mode when IPVS cannot run.
pub const IPVS_ALL: &str = "IPVS (tunnel, direct routing and NAT)";

/// Why IPVS cannot run in namespace `ns`, if it cannot, and whether for
/// want of the tool (rather than of the kernel's IP_VS).
fn ipvs_unavailable(ns: &str) -> Option<(String, bool)> {
    if !have("ipvsadm") {
        return Some(("`ipvsadm` is not installed (apt-get install ipvsadm)".into(), true));
    }
    match sh(Some(ns), "ipvsadm", &["-Ln"], None) {
        Ok(_) => None,
        Err(e) => {
            let kernel = if Path::new("/proc/net/ip_vs").exists() { String::new() } else { " (no /proc/net/ip_vs: this kernel has no IP_VS, built in or as a module)".into() };
            Some((format!("{e}{kernel}"), false))
        }
    }
}

pub fn run(quick: bool, dir: &Path, skipped: &mut Vec<String>) -> Vec<VethRow> {
    let (rounds, frames) = if quick { (1u32, 20_000u32) } else { (5, 2_000_000) };
    for tool in ["ethtool", "timeout", "sysctl"] {
        if !have(tool) {
            missing("veth mode (all peers)", &format!("`{tool}` is not installed"), true, quick, skipped);
            return Vec::new();
        }
    }
    let case = Case { name: "ipip4-udp", label: "IPIP, IPv4 in IPv4", v6: false, gue: false, nat: false };
    let to_vip = PacketSpec::udp4(CLIENT4, VIP4, 40000, 53).payload(22).build();
    let direct = PacketSpec::udp4(CLIENT4, backend4(0), 40000, 53).payload(22).build();
    let gens: Vec<aya::Ebpf> = [&to_vip, &direct]
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let obj = clang_text(dir, &format!("gen{i}"), &generator_source(f));
            let mut e = aya::Ebpf::load_file(&obj).expect("load the generator");
            let x: &mut Xdp = e.program_mut("gen").expect("gen").try_into().expect("xdp");
            x.load().expect("the generator loads");
            e
        })
        .collect();
    let sink_obj = clang_text(dir, "sink", &sink_source());
    let floor_obj = clang_text(dir, "floor_drop", &super::floor_source("lb_floor", 1));
    let policy = dir.join("lb-veth.xpol");
    std::fs::write(&policy, policy_text(&case, "udp", 53)).expect("write policy");
    let object = xpol_compiler::build(&policy, &xpol_compiler::BuildOptions::default()).output.expect("the veth policy compiles").object;

    let cpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) - 1;
    let mut topo = Topology::new().expect("namespaces for veth mode");
    let be_path = Topology::path(&topo.be);
    let mut generator = Generator { progs: gens, frame_len: 64, cpu, ksoftirqd: ksoftirqd(cpu), ns: Topology::path(&topo.gen) };
    let load_prog = |obj: &Path, name: &str| {
        let mut e = aya::Ebpf::load_file(obj).expect("load object");
        let x: &mut Xdp = e.program_mut(name).expect("program").try_into().expect("xdp");
        x.load().expect("the program loads");
        e
    };
    let attach = |e: &mut aya::Ebpf, name: &str, ns: &Path, dev: &str| {
        sys::in_netns(ns, None, || {
            let x: &mut Xdp = e.program_mut(name).expect("program").try_into().expect("xdp");
            x.attach(dev, XdpMode::Driver).unwrap_or_else(|e| panic!("attach {name} to {dev}: {e}"));
        })
        .expect("enter the namespace");
    };
    let mut setups: Vec<Setup> = Vec::new();
    let mut add = |topo: &mut Topology, name: &str, kind: Option<usize>, gen: usize, peer: &mut dyn FnMut(&LbNs) -> Result<Peer, String>| -> Result<(), String> {
        let lb = topo.lb()?;
        let mut sink = load_prog(&sink_obj, "sink");
        attach(&mut sink, "sink", &be_path, &lb.be_dev);
        let peer = peer(&lb)?;
        setups.push(Setup { name: name.to_string(), lb, _peer: peer, sink, kind, gen });
        Ok(())
    };
    let lb_path = |lb: &LbNs| Topology::path(&lb.ns);

    add(&mut topo, "floor: XDP_DROP at the LB's ingress", None, 0, &mut |lb| {
        let mut e = load_prog(&floor_obj, "lb_floor");
        attach(&mut e, "lb_floor", &lb_path(lb), &lb.lb_in);
        Ok(Peer::Prog(e))
    })
    .expect("floor");
    add(&mut topo, "XDP redirect to the egress veth, no LB work", Some(UDP_TO_VIP), 0, &mut |lb| {
        let out = sys::in_netns(&lb_path(lb), None, || sys::if_nametoindex(&lb.lb_out)).expect("enter the namespace");
        let src = format!("#define SEC(n) __attribute__((section(n), used))\nstruct xdp_md;\nstatic long (*bpf_redirect)(unsigned int ifindex, unsigned long long flags) = (void *)23;\nSEC(\"xdp\") int redir(struct xdp_md *c) {{ return bpf_redirect({out}, 0); }}\nchar _l[] SEC(\"license\") = \"GPL\";\n");
        let obj = clang_text(dir, &format!("redirect-{}", lb.ns), &src);
        let mut e = load_prog(&obj, "redir");
        attach(&mut e, "redir", &lb_path(lb), &lb.lb_in);
        Ok(Peer::Prog(e))
    })
    .expect("redirect");
    let mut pool = None;
    add(&mut topo, "xpol `lb(web, encap: ipip)`, XDP", Some(IPIP_TO_BACKEND), 0, &mut |lb| {
        let mut p = LoadedPolicy::load(&object).expect("the veth policy loads");
        pool = Some(p.meta().pools[0].clone());
        sys::in_netns(&lb_path(lb), None, || p.attach("xdp", &lb.lb_in, XdpAttachMode::Native)).expect("enter the namespace").expect("attach xpol");
        Ok(Peer::Xpol(Box::new(p)))
    })
    .expect("xpol");
    let pool = pool.expect("the pool");
    let table = maglev_table(&pool);
    let c_obj = clang(dir, "c-veth", &bench_source("katran_like.c"), &c_defines(&case, &pool, 17, 53));
    add(&mut topo, "C `katran_like.c` (IPIP), XDP", Some(IPIP_TO_BACKEND), 0, &mut |lb| {
        let mut e = load_c(&c_obj, &pool, &table);
        let x: &mut Xdp = e.program_mut("katran_like").expect("program").try_into().expect("xdp");
        sys::in_netns(&lb_path(lb), None, || x.attach(&lb.lb_in, XdpMode::Driver).map(|_| ())).expect("enter the namespace").expect("attach C");
        Ok(Peer::Prog(e))
    })
    .expect("C");
    let vip = format!("{VIP4}:53");
    // Asked in the first load-balancer namespace made for IPVS; when IPVS
    // cannot run at all, one note stands for every mode.
    let mut ipvs_checked = false;
    for (mode, flag, kind) in IPVS_MODES {
        let r = add(&mut topo, &format!("IPVS {mode}, UDP, scheduler rr"), Some(kind), 0, &mut |lb| {
            if !ipvs_checked {
                ipvs_checked = true;
                if let Some((why, tool)) = ipvs_unavailable(&lb.ns) {
                    return Err(format!("{}{why}", if tool { "TOOL " } else { "KERNEL " }));
                }
            }
            // The VIP is local to the director: IPVS takes it at LOCAL_IN.
            sh(None, "ip", &["-n", &lb.ns, "addr", "add", &format!("{VIP4}/32"), "dev", "lo"], None)?;
            sh(Some(&lb.ns), "ipvsadm", &["-A", "-u", &vip, "-s", "rr"], None)?;
            for b in 0..BACKENDS {
                sh(Some(&lb.ns), "ipvsadm", &["-a", "-u", &vip, "-r", &format!("{}:53", backend4(b)), flag], None)?;
            }
            Ok(Peer::Kernel)
        });
        match r {
            Ok(()) => {}
            Err(why) => match why.strip_prefix("TOOL ").map(|w| (w, true)).or_else(|| why.strip_prefix("KERNEL ").map(|w| (w, false))) {
                Some((why, tool)) => {
                    missing(IPVS_ALL, why, tool, quick, skipped);
                    break;
                }
                None => missing(&format!("IPVS {mode}"), &why, false, quick, skipped),
            },
        }
    }
    if have("nft") {
        add(&mut topo, "nftables DNAT (jhash over the 5-tuple, conntrack)", Some(UDP_TO_BACKEND), 0, &mut |lb| {
            let map: Vec<String> = (0..BACKENDS).map(|b| format!("{b} : {}", backend4(b))).collect();
            let rules = format!(
                "table ip xpollb {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    ip daddr {VIP4} udp dport 53 dnat to jhash ip saddr . ip daddr . udp sport . udp dport mod {BACKENDS} map {{ {} }}\n  }}\n}}\n",
                map.join(", ")
            );
            sh(Some(&lb.ns), "nft", &["-f", "-"], Some(&rules))?;
            Ok(Peer::Kernel)
        })
        .expect("nftables DNAT");
    } else {
        missing("nftables DNAT", "`nft` is not installed (apt-get install nftables)", true, quick, skipped);
    }
    add(&mut topo, "kernel IP forwarding, no LB (frames sent to the backend's address)", Some(UDP_TO_BACKEND), 1, &mut |_| Ok(Peer::Kernel)).expect("forwarding");

    let mut rows: Vec<VethRow> = setups.iter().map(|s| VethRow { peer: s.name.clone(), kind: s.kind, ..VethRow::default() }).collect();
    // Warm-up (the flow enters each peer's flow state), and the proof that
    // each peer forwards every frame as it should.
    for s in &setups {
        let before = s.sink_counts();
        generator.push(s.gen, &s.lb.gen_dev, 1000);
        let after = s.sink_counts();
        let got: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        if let Some(kind) = s.kind {
            assert_eq!(got[kind], 1000, "{}: the backend side must receive every warm-up frame as {}; it counted {got:?} ({KIND_NAMES:?})", s.name, KIND_NAMES[kind]);
        } else {
            assert_eq!(got.iter().sum::<u64>(), 0, "{}: nothing should reach the backend side", s.name);
        }
    }
    for _ in 0..rounds {
        for (s, row) in setups.iter().zip(rows.iter_mut()) {
            // A sample in which the sink counted fewer frames than were
            // sent lost frames on the way (a veth ring overflows when the
            // machine is busy): such frames cost less, so the sample is run
            // again rather than kept.
            let (got, cpu_ns, busy_ns) = loop {
                let before = s.sink_counts();
                let (cpu_ns, busy_ns) = generator.push(s.gen, &s.lb.gen_dev, frames);
                let after = s.sink_counts();
                let got = s.kind.map_or(0, |k| after[k] - before[k]);
                if s.kind.is_some() && got < u64::from(frames) && row.reruns < MAX_RERUNS {
                    row.reruns += 1;
                    eprintln!("{}: {got} of {frames} frames reached the backend side; running the sample again", s.name);
                    continue;
                }
                break (got, cpu_ns, busy_ns);
            };
            if s.kind.is_some() {
                assert_eq!(got, u64::from(frames), "{}: the backend side must receive every frame sent", s.name);
            }
            row.forwarded += got;
            row.frames += u64::from(frames);
            row.samples.push(cpu_ns as f64 / f64::from(frames));
            row.cpu_busy.push(busy_ns as f64 / f64::from(frames));
        }
    }
    drop(setups);
    drop(topo);
    rows
}

/// The veth table (markdown, with the targets) and its JSON rows.
pub fn report(rows: &[VethRow], skipped: &[String]) -> (String, Vec<serde_json::Value>) {
    if rows.is_empty() {
        return ("Veth mode did not run.\n".into(), Vec::new());
    }
    let stat = |v: &[f64]| (super::median(v), super::min(v), super::max(v));
    let xpol = rows.iter().find(|r| r.peer.starts_with("xpol")).map(|r| stat(&r.samples).0);
    let mut md = String::new();
    let _ = writeln!(md, "| peer | CPU ns per packet (min-max) | vs xpol | /proc/stat busy ns/pkt | frames | counted at the backend side |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    let mut json = Vec::new();
    for r in rows {
        let (m, lo, hi) = stat(&r.samples);
        let ratio = xpol.map(|x| format!("{:.2}x", m / x)).unwrap_or_default();
        let counted = r.kind.map_or("(dropped at the LB)".to_string(), |k| format!("{} ({})", r.forwarded, KIND_NAMES[k]));
        let _ = writeln!(md, "| {} | {m:.0} ({lo:.0}-{hi:.0}) | {ratio} | {:.0} | {} | {counted} |", r.peer, super::median(&r.cpu_busy), r.frames);
        json.push(serde_json::json!({
            "peer": r.peer, "frames": r.frames, "forwarded": r.forwarded, "kind": r.kind.map(|k| KIND_NAMES[k]), "reruns": r.reruns,
            "cpu_ns_per_packet": {"median": m, "min": lo, "max": hi, "samples": r.samples},
            "cpu_busy_ns_per_packet": {"median": super::median(&r.cpu_busy), "samples": r.cpu_busy},
            "vs_xpol": xpol.map(|x| m / x),
        }));
    }
    let _ = writeln!(md, "\nTarget: xpol at least 4x fewer CPU ns per forwarded packet than IPVS:\n");
    let Some(x) = xpol else {
        let _ = writeln!(md, "- not measured (xpol did not run).");
        return (md, json);
    };
    let above_floor = |r: &VethRow| stat(&r.samples).0;
    let all = format!("{IPVS_ALL}: ");
    if let Some(why) = skipped.iter().find_map(|s| s.strip_prefix(&all)) {
        let _ = writeln!(md, "- Not measured in any mode (tunnel, direct routing, NAT): {why}.");
    }
    for (mode, _, _) in IPVS_MODES {
        match rows.iter().find(|r| r.peer.starts_with(&format!("IPVS {mode}"))) {
            Some(r) => {
                let ratio = above_floor(r) / x;
                let _ = writeln!(md, "- IPVS {mode}: {ratio:.2}x fewer ({}).", if ratio >= 4.0 { "met" } else { "not met" });
            }
            None => {
                let one = format!("IPVS {mode}: ");
                if let Some(why) = skipped.iter().find_map(|s| s.strip_prefix(&one)) {
                    let _ = writeln!(md, "- IPVS {mode}: not measured ({why}).");
                }
            }
        }
    }
    for (label, prefix) in [("nftables DNAT, the kernel's NAT load balancing that runs here", "nftables DNAT"), ("plain kernel IP forwarding (no load balancing at all)", "kernel IP forwarding")] {
        if let Some(r) = rows.iter().find(|r| r.peer.starts_with(prefix)) {
            let _ = writeln!(md, "- For comparison, {label}: {:.2}x xpol's CPU per packet.", above_floor(r) / x);
        }
    }
    (md, json)
}
