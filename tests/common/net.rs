//! Test hosts: network namespaces joined by a veth pair, and bounded
//! waits. Traffic stays between the namespaces a test creates, with
//! addresses in 198.18.0.0/15; the namespaces are removed on drop, even
//! when the test fails.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Two namespaces and a veth pair, removed on drop.
pub struct Net {
    pub a: String,
    pub b: String,
    pub va: String,
    pub vb: String,
    pub addr_b: String,
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl Net {
    pub fn new() -> Net {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}{}", std::process::id() % 100_000, n);
        let net = Net {
            a: format!("xpol-t{id}-a"),
            b: format!("xpol-t{id}-b"),
            va: format!("xa{id}"),
            vb: format!("xb{id}"),
            addr_b: format!("198.18.{}.2", n % 250),
        };
        ip(&["netns", "add", &net.a]);
        ip(&["netns", "add", &net.b]);
        ip(&["link", "add", &net.va, "netns", &net.a, "type", "veth", "peer", "name", &net.vb, "netns", &net.b]);
        let sub = n % 250;
        ip(&["-n", &net.a, "addr", "add", &format!("198.18.{sub}.1/30"), "dev", &net.va]);
        ip(&["-n", &net.b, "addr", "add", &format!("198.18.{sub}.2/30"), "dev", &net.vb]);
        for (ns, dev) in [(&net.a, &net.va), (&net.b, &net.vb)] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        net
    }

    pub fn link_b(&self) -> String {
        let out = Command::new("ip").args(["-n", &self.b, "link", "show", &self.vb]).output().expect("ip link");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting the namespaces deletes the veth pair and whatever is attached.
        let _ = Command::new("ip").args(["netns", "del", &self.a]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.b]).status();
    }
}

/// Waits for a child, killing it after `limit`.
pub fn wait_bounded(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command to its end, killing it after 25 s.
pub fn output_bounded(mut cmd: Command) -> std::process::Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start");
    wait_bounded(&mut child, Duration::from_secs(25));
    child.wait_with_output().expect("output")
}

/// `python3 -c SCRIPT ARGS` in namespace `ns` (killed after `secs`), with
/// stdin and stdout piped, returned once it printed its first line
/// ("ready"): however long Python takes to start on a loaded machine, a
/// script that listens or sends has begun to.
pub fn python_ready(ns: &str, secs: u32, script: &str, args: &[&str]) -> std::process::Child {
    use std::io::BufRead;
    let mut child = super::script::spawn(ns, secs, script, args);
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.as_mut().expect("stdout"));
    out.read_line(&mut line).expect("the script says it is ready");
    assert_eq!(line.trim(), "ready", "the script's first line");
    child
}

/// A short tag unique to this process and call, for namespace and
/// interface names.
pub fn unique() -> String {
    format!("{}{}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::SeqCst))
}

/// A network namespace of the test's own (loopback up), removed on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn named(name: String) -> Netns {
        let ns = Netns { name };
        ip(&["netns", "add", &ns.name]);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread inside the namespace: test runs see its
    /// loopback device as their ingress, and its FIB.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        xpol_runtime::sys::in_netns(&self.path(), None, f).expect("enter the namespace")
    }

    /// `ip -n NAME ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// A command in the namespace, which must succeed (`sysctl`, `ethtool`); its output.
    pub fn exec(&self, args: &[&str]) -> String {
        let out = output_bounded({
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &self.name]).args(args);
            c
        });
        assert!(out.status.success(), "{} in {}: {}", args.join(" "), self.name, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn sysctl(&self, setting: &str) {
        self.exec(&["sysctl", "-qw", setting]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}
