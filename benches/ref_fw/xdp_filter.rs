//! xdp-filter (Debian's xdp-tools) as a peer in the BPF_PROG_TEST_RUN table.
//!
//! xdp-filter matches exact addresses (a hash map, at most 10,000 entries)
//! and destination ports; it cannot express prefixes, nor rule b of ref-fw
//! (SSH only from 198.51.100.0/24). So it gets the blocklist as N exact
//! source addresses — the first address of each prefix, and for the last
//! prefix the blocked test source 198.19.7.7 itself — and rule c as
//! `xdp-filter port 23`. The program is loaded by `xdp-filter load` on a
//! veth in a namespace of its own, with its maps pinned in a private bpffs
//! mount (`LIBXDP_BPFFS`), so nothing is shared with the host; the program
//! the interface runs (the libxdp dispatcher, or xdp-filter's own program
//! when libxdp attached it directly) is found by id and test-run with the
//! same packets as every other program.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use xpol_runtime::sys;

static NEXT: AtomicU32 = AtomicU32::new(0);

pub const NOTE: &str = "xdp-filter: exact source addresses only (the first address of each prefix; the last prefix as the blocked source itself), no rule b (SSH only from 198.51.100.0/24); rule c as a port filter";

pub struct XdpFilter {
    // Fields drop in order: the descriptors go before the namespace and the mount.
    prog: aya::programs::ProgramFd,
    info: aya::programs::ProgramInfo,
    pub program: String,
    _guard: Guard,
}

fn run(env: &PathBuf, ns: Option<&str>, args: &[&str]) -> Result<String, String> {
    let mut c = Command::new("timeout");
    c.arg("60");
    if let Some(ns) = ns {
        c.args(["ip", "netns", "exec", ns]);
        if args.first() == Some(&"xdp-filter") {
            // xdp-filter's `ip` and `port` commands look for the maps under
            // /sys/fs/bpf whatever LIBXDP_BPFFS says: give them the private
            // bpffs there, in the mount namespace `ip netns exec` made.
            c.args(["sh", "-c", "mount --bind \"$0\" /sys/fs/bpf && exec \"$@\""]).arg(env);
        }
    }
    let out = c.args(args).env("LIBXDP_BPFFS", env).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{}: {}{}", args.join(" "), String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout)))
    }
}

/// The exact addresses xdp-filter gets for a blocklist.
pub fn addresses(list: &[(Ipv4Addr, u8)]) -> Vec<Ipv4Addr> {
    let blocked: Ipv4Addr = "198.19.7.7".parse().expect("address");
    list.iter()
        .map(|(a, l)| {
            let mask = if *l == 0 { 0 } else { u32::MAX << (32 - u32::from(*l)) };
            if u32::from(blocked) & mask == u32::from(*a) & mask {
                blocked
            } else {
                *a
            }
        })
        .collect()
}

impl XdpFilter {
    pub fn load(addrs: &[Ipv4Addr]) -> Result<XdpFilter, String> {
        let tag = format!("{}{}", std::process::id() % 1_000_000, NEXT.fetch_add(1, Ordering::SeqCst));
        let ns = format!("xpolb{tag}-xf");
        let bpffs = std::env::temp_dir().join(format!("xpolb{tag}-bpffs"));
        let _ = std::fs::create_dir_all(&bpffs);
        let mut guard = Guard { ns: ns.clone(), bpffs: bpffs.clone(), mounted: false };
        let ip = |args: &[&str]| run(&bpffs, None, &[&["ip"], args].concat());
        ip(&["netns", "add", &ns])?;
        let dev = format!("xf{tag}");
        ip(&["link", "add", &dev, "netns", &ns, "type", "veth", "peer", "name", &format!("xf{tag}p"), "netns", &ns])?;
        ip(&["-n", &ns, "link", "set", &dev, "up"])?;
        ip(&["-n", &ns, "link", "set", &format!("xf{tag}p"), "up"])?;
        run(&bpffs, None, &["mount", "-t", "bpf", "bpf", &bpffs.display().to_string()])?;
        guard.mounted = true;
        run(&bpffs, Some(&ns), &["xdp-filter", "load", "--mode", "native", "--policy", "allow", "--features", "ipv4,tcp", &dev])?;
        for a in addrs {
            run(&bpffs, Some(&ns), &["xdp-filter", "ip", "--mode", "src", &a.to_string()])?;
        }
        run(&bpffs, Some(&ns), &["xdp-filter", "port", "--mode", "dst", "--proto", "tcp", "23"])?;
        let link = run(&bpffs, None, &["ip", "-n", &ns, "-d", "link", "show", "dev", &dev])?;
        let (id, program) = link
            .split("prog/xdp id ")
            .nth(1)
            .and_then(|rest| {
                let mut w = rest.split_whitespace();
                let id: u32 = w.next()?.parse().ok()?;
                let name = if w.next() == Some("name") { w.next().unwrap_or("?") } else { "?" };
                Some((id, name.to_string()))
            })
            .ok_or_else(|| format!("xdp-filter attached no XDP program to {dev}: {link}"))?;
        let info = aya::programs::loaded_programs()
            .flatten()
            .find(|p| p.id() == id)
            .ok_or_else(|| format!("program id {id} not found"))?;
        let prog = info.fd().map_err(|e| e.to_string())?;
        Ok(XdpFilter { prog, info, program, _guard: guard })
    }

    pub fn test_run(&self, packet: &[u8], repeat: u32) -> sys::TestRunReport {
        sys::prog_test_run(self.prog.as_fd(), packet, None, repeat).expect("test-run xdp-filter")
    }

    pub fn info(&self) -> (u32, u32, u32) {
        let i = &self.info;
        (i.size_translated().unwrap_or(0) / 8, i.size_jitted(), i.verified_instruction_count().unwrap_or(0))
    }

    /// Run time (ns) and runs counted by the kernel's BPF statistics so far.
    pub fn run_stats(&self) -> (u64, u64) {
        let id = self.info.id();
        let info = aya::programs::loaded_programs().flatten().find(|i| i.id() == id).expect("xdp-filter's program is loaded");
        (info.run_time().as_nanos() as u64, info.run_count())
    }
}

/// Removes the namespace (and with it the veth and the attachment) and the
/// private bpffs (and with it the pinned maps).
struct Guard {
    ns: String,
    bpffs: PathBuf,
    mounted: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        if self.mounted {
            let _ = Command::new("umount").arg(&self.bpffs).status();
        }
        let _ = std::fs::remove_dir(&self.bpffs);
    }
}
