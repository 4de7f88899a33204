//! A flood generator and its receivers on veth pairs, for the benchmarks
//! that compare a stateful xpol policy with nftables per packet
//! (`benches/limit.rs`, `benches/conntrack.rs`): two namespaces of the
//! benchmark's own, a pair per receiver, and frames pushed out of the
//! generator's side by an XDP program returning `XDP_TX`, test-run with
//! `BPF_F_TEST_XDP_LIVE_FRAMES`.

use super::{ksoftirqd, runtime_ns, sh};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp};
use std::path::{Path, PathBuf};
use std::process::Command;
use xpol_runtime::loader::LoadedPolicy;
use xpol_runtime::sys;

/// The generator and receiver namespaces; removing them (on drop) removes
/// the veth pairs, nft tables, conntrack entries and XDP attachments in
/// them.
pub struct Namespaces {
    pub gen: String,
    pub recv: String,
    /// Names the benchmark's pairs (`{tag}g{pid}-N`, `{tag}r{pid}-N`).
    tag: &'static str,
    pid: String,
    pairs: u32,
}

impl Namespaces {
    /// Two namespaces named after `tag` (a letter or two of the
    /// benchmark's) and this process.
    pub fn new(tag: &'static str) -> Result<Namespaces, String> {
        let pid = format!("{}", std::process::id() % 1_000_000);
        let ns = Namespaces { gen: format!("xpol{tag}{pid}-g"), recv: format!("xpol{tag}{pid}-r"), tag, pid, pairs: 0 };
        sh(None, "ip", &["netns", "add", &ns.gen], None)?;
        sh(None, "ip", &["netns", "add", &ns.recv], None)?;
        for n in [&ns.gen, &ns.recv] {
            sh(None, "ip", &["-n", n, "link", "set", "lo", "up"], None)?;
        }
        Ok(ns)
    }

    pub fn path(name: &str) -> PathBuf {
        Path::new("/run/netns").join(name)
    }

    /// A new veth pair (generator side, receiver side), up, with the test
    /// frames' MAC addresses (02:00:00:00:00:01 and :02), GRO on at the
    /// receiver (veth then polls with NAPI, which takes XDP_TX frames
    /// without an XDP program); the pair's index.
    pub fn pair(&mut self) -> Result<(String, String, u32), String> {
        let i = self.pairs;
        self.pairs += 1;
        let (g, r) = (format!("{}g{}-{i}", self.tag, self.pid), format!("{}r{}-{i}", self.tag, self.pid));
        sh(None, "ip", &["link", "add", &g, "netns", &self.gen, "address", "02:00:00:00:00:01", "type", "veth", "peer", "name", &r, "netns", &self.recv, "address", "02:00:00:00:00:02"], None)?;
        sh(None, "ip", &["-n", &self.gen, "link", "set", &g, "up"], None)?;
        sh(None, "ip", &["-n", &self.recv, "link", "set", &r, "up"], None)?;
        sh(Some(&self.recv), "ethtool", &["-K", &r, "gro", "on"], None)?;
        Ok((g, r, i))
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.gen]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.recv]).status();
    }
}

/// Pushes `frames` copies of `frame` out of `dev` (generator side, in
/// namespace `ns`) with `gen` (an XDP program returning XDP_TX), test-run
/// with `BPF_F_TEST_XDP_LIVE_FRAMES` on CPU `cpu`: the CPU ns spent (this
/// thread and the CPU's ksoftirqd, where the receiver's NAPI poll runs).
pub fn push(gen: &mut LoadedPolicy, ns: &Path, cpu: usize, dev: &str, frame: &[u8], frames: u32) -> u64 {
    push_with(gen.ebpf_mut(), "xpol_xdp", ns, cpu, dev, frame, frames)
}

/// [`push`] with XDP program `program` of `ebpf` as the generator (one
/// that writes its frame again each time, for receivers that rewrite it
/// in place: the pages are the generator's, handed over by reference).
pub fn push_with(ebpf: &mut aya::Ebpf, program: &str, ns: &Path, cpu: usize, dev: &str, frame: &[u8], frames: u32) -> u64 {
    let k = ksoftirqd(cpu);
    sys::in_netns(ns, Some(cpu), move || {
        let ifindex = sys::if_nametoindex(dev);
        assert!(ifindex != 0, "no {dev} in the generator namespace");
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let ctx: Vec<u8> = [0u32, frame.len() as u32, 0, ifindex, 0, 0].iter().flat_map(|v| v.to_ne_bytes()).collect();
        let me = Path::new("/proc/thread-self/schedstat");
        let soft = |p: &Option<PathBuf>| p.as_deref().map_or(0, runtime_ns);
        let (t0, k0) = (runtime_ns(me), soft(&k));
        let x: &mut Xdp = ebpf.program_mut(program).expect("generator").try_into().expect("XDP");
        x.test_run(TestRunOptions { data_in: Some(frame), ctx_in: Some(&ctx), repeat: frames, attrs: TestRunAttrs::new().xdp_live_frames(64), ..Default::default() })
            .expect("BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES (Linux 5.18 or later)");
        let (t1, k1) = (runtime_ns(me), soft(&k));
        assert!(t1 > t0, "no run time in /proc/thread-self/schedstat: cannot measure CPU time");
        t1 - t0 + (k1 - k0)
    })
    .expect("enter the generator namespace")
}
