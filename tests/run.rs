//! `xpol run` end to end: two network namespaces joined by a veth pair,
//! the policy attached on one side, UDP datagrams sent from the other; we
//! check which datagrams arrive, the counters `xpol run --json` reports,
//! and that nothing stays attached afterwards.
//!
//! Traffic stays between the namespaces this test creates, with addresses in
//! 198.18.0.0/15; every command is bounded in time and the namespaces are
//! removed even when the test fails.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::net::{ip, output_bounded, python_ready, wait_bounded, Net};

/// Counts datagrams to ports 7 and 9: says "ready" once it listens, and
/// when its standard input closes (the sender is done) and half a second
/// more passed without a datagram, prints both counts.
const RECEIVER: &str = r#"
import socket, select, sys, time
socks = {}
for port in (7, 9):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port)); socks[s] = port
got = {7: 0, 9: 0}
print("ready", flush=True)
stop = None; last = time.time()
while stop is None or time.time() - max(stop, last) < 0.5:
    r, _, _ = select.select(list(socks) + ([sys.stdin] if stop is None else []), [], [], 0.1)
    for s in r:
        if s is sys.stdin:
            sys.stdin.read(); stop = time.time()
        else:
            s.recv(2048); got[socks[s]] += 1; last = time.time()
print(got[7], got[9])
"#;

const SENDER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port, n in ((9, 10), (7, 5)):
    for i in range(n):
        s.sendto(b"x" * 20, (sys.argv[1], port))
"#;

/// Where the policy is attached: on the receiver's interface (XDP, TC
/// ingress) or on the sender's (TC egress).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Receiver,
    Sender,
}

/// Fresh namespaces and the policy in a temporary file (kept alive by the
/// returned directory).
fn setup(policy: &str) -> (Net, tempfile::TempDir, std::path::PathBuf) {
    let net = Net::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("p.xpol");
    std::fs::write(&path, policy).expect("write policy");
    (net, dir, path)
}

fn end_to_end(hook_args: &[&str], policy: &str) {
    end_to_end_on(hook_args, policy, Side::Receiver)
}

fn end_to_end_on(hook_args: &[&str], policy: &str, side: Side) {
    let (net, _dir, policy_path) = setup(policy);
    let (ns, dev) = match side {
        Side::Receiver => (net.b.clone(), net.vb.clone()),
        Side::Sender => (net.a.clone(), net.va.clone()),
    };
    let mut run = Command::new("ip")
        .args(["netns", "exec", &ns, env!("CARGO_BIN_EXE_xpol"), "run"])
        .arg(&policy_path)
        .args(["-i", &dev, "--json", "--interval", "1", "--duration", "5"])
        .args(hook_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start xpol run");
    // Wait until the program is attached.
    let start = Instant::now();
    while !net.link_b().contains("xdp") && !net.link_b().contains("prog") && start.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(send_and_count(&net), "5 0", "datagrams to port 7 pass, to port 9 are dropped");

    let status = wait_bounded(&mut run, Duration::from_secs(15));
    let mut out = String::new();
    run.stdout.take().expect("stdout").read_to_string(&mut out).expect("read");
    let mut err = String::new();
    run.stderr.take().expect("stderr").read_to_string(&mut err).expect("read");
    assert!(status.success(), "xpol run failed: {err}");
    assert!(err.contains("detached from"), "{err}");
    let last: serde_json::Value = serde_json::from_str(out.lines().last().expect("output")).expect("JSON");
    assert_eq!((&last["final"], &last["schema"]), (&serde_json::json!(true), &serde_json::json!(1)), "{last}");
    let rules = last["report"]["rules"].as_array().expect("rules");
    assert_eq!(rules[0]["packets"], 10, "rule 0 (drop port 9) counted every datagram: {out}");
    assert_eq!(rules[1]["packets"], 5, "rule 1 (pass port 7): {out}");
    // 20 bytes of payload + UDP 8 + IP 20 + Ethernet 14.
    assert_eq!(rules[0]["bytes"], 10 * 62);
    let link = net.link_b();
    assert!(!link.contains("xdp") && !link.contains("prog/"), "still attached after exit: {link}");
    let _ = ns;
}

/// Sends 10 datagrams to port 9 and 5 to port 7 from a to b; how many
/// arrived at each, as "PORT7 PORT9".
fn send_and_count(net: &Net) -> String {
    // Send once it listens, however long Python takes to start.
    let mut receiver = python_ready(&net.b, 30, RECEIVER, &[]);
    let sent = Command::new("ip").args(["netns", "exec", &net.a, "timeout", "5", "python3", "-c", SENDER, &net.addr_b]).status().expect("sender");
    assert!(sent.success());
    drop(receiver.stdin.take());
    assert!(wait_bounded(&mut receiver, Duration::from_secs(15)).success());
    let mut got = String::new();
    receiver.stdout.take().expect("stdout").read_to_string(&mut got).expect("read");
    got.trim().to_string()
}

const XDP_POLICY: &str = "xdp /udp.dport == 9/ { drop }\nxdp /udp.dport == 7/ { pass }\nxdp { pass }\n";
const TC_POLICY: &str = "tc:ingress /udp.dport == 9/ { drop }\ntc:ingress /udp.dport == 7/ { pass }\ntc:ingress { pass }\n";

fn usable() -> bool {
    xpol_runtime::testing::kernel_or_skip("xpol run end to end")
        && Command::new("python3").arg("-c").arg("1").status().is_ok_and(|s| s.success())
        && Command::new("ip").arg("-V").status().is_ok_and(|s| s.success())
}

/// `--mode skb` (xdp-tools' word; `generic`, the older one, parses to the
/// same mode: see the unit tests in src/bin/xpol.rs).
#[test]
fn run_xdp_skb() {
    if usable() {
        end_to_end(&["--mode", "skb"], XDP_POLICY);
    }
}

#[test]
fn run_xdp_native() {
    if usable() {
        end_to_end(&["--mode", "native"], XDP_POLICY);
    }
}

#[test]
fn run_tc_ingress() {
    if usable() {
        end_to_end(&[], TC_POLICY);
    }
}

const TC_EGRESS_POLICY: &str = "tc:egress /udp.dport == 9/ { drop }\ntc:egress /udp.dport == 7/ { pass }\ntc:egress { pass }\n";

#[test]
fn run_tc_egress() {
    if usable() {
        end_to_end_on(&[], TC_EGRESS_POLICY, Side::Sender);
    }
}

#[test]
fn run_unknown_interface_is_explained() {
    if !usable() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_xpol")).args(["run", "examples/firewall.xpol", "-i", "nosuchif0", "--duration", "1"]).output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no network interface named `nosuchif0`"), "{err}");
}

/// Runs `xpol run` inside namespace `ns` with a bound on time.
fn xpol_run_in(ns: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "timeout", "20", env!("CARGO_BIN_EXE_xpol"), "run"]).args(args);
    output_bounded(cmd)
}

#[test]
fn run_on_lo_in_a_fresh_namespace() {
    if !usable() {
        return;
    }
    let (net, _dir, policy) = setup(XDP_POLICY);
    ip(&["-n", &net.b, "addr", "add", "198.19.250.1/32", "dev", "lo"]);
    let p = policy.to_str().expect("utf-8 path").to_string();
    let ns = net.b.clone();
    let runner = std::thread::spawn(move || xpol_run_in(&ns, &[&p, "-i", "lo", "--mode", "generic", "--json", "--duration", "3"]));
    std::thread::sleep(Duration::from_millis(1200));
    let sent = Command::new("ip").args(["netns", "exec", &net.b, "timeout", "5", "python3", "-c", SENDER, "198.19.250.1"]).status().expect("sender");
    assert!(sent.success());
    let out = runner.join().expect("runner");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().expect("output")).expect("JSON");
    assert_eq!(last["report"]["rules"][0]["packets"], 10, "{stdout}");
    assert_eq!(last["report"]["rules"][1]["packets"], 5, "{stdout}");
}

#[test]
fn run_errors_are_explained() {
    if !usable() {
        return;
    }
    let (net, _dir, policy) = setup(XDP_POLICY);
    let p = policy.to_str().expect("utf-8 path").to_string();

    // lo has no native XDP.
    let out = xpol_run_in(&net.b, &[&p, "-i", "lo", "--mode", "native", "--duration", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no native XDP support; use `--mode skb`"), "{err}");

    // A second XDP program on the same interface is refused, with the fix.
    let ns = net.b.clone();
    let (p1, vb) = (p.clone(), net.vb.clone());
    let first = std::thread::spawn(move || xpol_run_in(&ns, &[&p1, "-i", &vb, "--duration", "3"]));
    std::thread::sleep(Duration::from_millis(1200));
    let out = xpol_run_in(&net.b, &[&p, "-i", &net.vb, "--duration", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already has an XDP program attached") && err.contains(", of program ") && err.contains("bpftool link detach id"), "{err}");
    assert!(first.join().expect("first run").status.success());

    // Without privileges: say what is missing.
    if Command::new("setpriv").arg("--version").output().is_ok() {
        let out = Command::new("timeout")
            .args(["20", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
            .arg(env!("CARGO_BIN_EXE_xpol"))
            .args(["run", &p, "-i", "lo", "--duration", "1"])
            .output()
            .expect("setpriv");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("CAP_BPF") && err.contains("CAP_NET_ADMIN"), "{err}");
    }
}

/// An XDP program as `ip link set ... obj` attaches it (through netlink,
/// not a link); `NAME` is replaced by the program's name.
const HELD_XDP_C: &str = r#"
#define SEC(n) __attribute__((section(n), used))
struct xdp_md { unsigned int data; };
SEC("xdp") int NAME(struct xdp_md *ctx) { return 2; }
char _license[] SEC("license") = "GPL";
"#;

/// `HELD_XDP_C` with the program named `name`, compiled into `dir`.
fn held_xdp_object(dir: &Path, name: &str) -> std::path::PathBuf {
    let c = dir.join(format!("{name}.c"));
    let obj = dir.join(format!("{name}.o"));
    std::fs::write(&c, HELD_XDP_C.replace("NAME", name)).expect("write C");
    let built = Command::new("clang-14").args(["-O2", "-target", "bpf", "-c"]).arg(&c).arg("-o").arg(&obj).status().expect("clang-14 (apt-get install clang-14)");
    assert!(built.success(), "clang-14 {}", c.display());
    obj
}

/// The id of the XDP program on `dev` in namespace `ns` (in any mode), per `ip -j link`.
fn xdp_prog_id(ns: &str, dev: &str) -> Option<u64> {
    let out = Command::new("ip").args(["-n", ns, "-j", "link", "show", dev]).output().expect("ip link");
    let link: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j");
    link[0]["xdp"]["prog"]["id"].as_u64()
}

/// The first command in backquotes in `message` that starts with `start`.
fn advised_command(message: &str, start: &str) -> Vec<String> {
    let at = message.find(&format!("`{start}")).unwrap_or_else(|| panic!("no `{start}...` in: {message}"));
    let command = &message[at + 1..];
    let command = &command[..command.find('`').expect("closing backquote")];
    command.split_whitespace().map(str::to_string).collect()
}

/// Runs the advised command in namespace `ns`, as the user would.
fn run_advice(ns: &str, command: &[String]) {
    let out = output_bounded({
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(command);
        c
    });
    assert!(out.status.success(), "{}: {}", command.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A program that `ip link` attached (through netlink, not a BPF link)
/// holds the hook: the error names it and gives the command for its mode,
/// and that command really frees the hook. (`ip link set ... xdp off`, the
/// advice before, names no mode: on a veth, which has native XDP, the
/// kernel takes it as driver mode, returns success, and a generic program
/// stays.)
#[test]
fn busy_hook_advice_frees_a_program_attached_through_netlink() {
    if !usable() {
        return;
    }
    let (net, dir, policy) = setup(XDP_POLICY);
    let p = policy.to_str().expect("utf-8 path").to_string();
    let obj = held_xdp_object(dir.path(), "xdp_held_pass");
    let obj = obj.to_str().expect("utf-8 path");
    for (attach, words, off) in [("xdpgeneric", "generic", "xdpgeneric"), ("xdpdrv", "driver", "xdpdrv")] {
        ip(&["-n", &net.b, "link", "set", "dev", &net.vb, attach, "obj", obj, "sec", "xdp"]);
        let id = xdp_prog_id(&net.b, &net.vb).expect("the program is attached");
        if attach == "xdpgeneric" {
            ip(&["-n", &net.b, "link", "set", "dev", &net.vb, "xdp", "off"]);
            assert_eq!(xdp_prog_id(&net.b, &net.vb), Some(id), "`xdp off` left the generic program in place");
        }

        let out = xpol_run_in(&net.b, &[&p, "-i", &net.vb, "--duration", "1"]);
        assert!(!out.status.success(), "{attach}: xpol run attached over another program");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("program {id} `xdp_held_pass`")) && err.contains(&format!("in {words} ")), "{attach}: {err}");
        let command = advised_command(&err, "ip link set");
        assert_eq!(command, ["ip", "link", "set", "dev", &net.vb, off, "off"], "{err}");

        run_advice(&net.b, &command);
        assert_eq!(xdp_prog_id(&net.b, &net.vb), None, "{attach}: `{}` left the program", command.join(" "));
        let out = xpol_run_in(&net.b, &[&p, "-i", &net.vb, "--duration", "1"]);
        assert!(out.status.success(), "{attach}: after `{}`: {}", command.join(" "), String::from_utf8_lossy(&out.stderr));
    }
}

/// libxdp's dispatcher holds the hook: the error says so and gives
/// `xdp-loader unload IFACE --all`, which frees it. The dispatcher here is
/// a program of the dispatcher's name attached as libxdp attaches it
/// (netlink, driver mode): xdp-tools 1.3.1 (bookworm) cannot load its own
/// dispatcher on every kernel (on 6.18 the kernel refuses its freplace
/// check with EPERM, and libxdp falls back to attaching the program alone).
#[test]
fn busy_hook_advice_frees_a_libxdp_dispatcher() {
    if !usable() {
        return;
    }
    let (net, dir, policy) = setup(XDP_POLICY);
    let p = policy.to_str().expect("utf-8 path").to_string();
    let obj = held_xdp_object(dir.path(), "xdp_dispatcher");
    ip(&["-n", &net.b, "link", "set", "dev", &net.vb, "xdpdrv", "obj", obj.to_str().expect("utf-8 path"), "sec", "xdp"]);
    let id = xdp_prog_id(&net.b, &net.vb).expect("the program is attached");

    let out = xpol_run_in(&net.b, &[&p, "-i", &net.vb, "--duration", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("libxdp's dispatcher, program {id} `xdp_dispatcher`")), "{err}");
    assert_eq!(advised_command(&err, "ip link set"), ["ip", "link", "set", "dev", &net.vb, "xdpdrv", "off"], "{err}");
    let command = advised_command(&err, "xdp-loader");
    assert_eq!(command, ["xdp-loader", "unload", &net.vb, "--all"], "{err}");

    run_advice(&net.b, &command);
    assert_eq!(xdp_prog_id(&net.b, &net.vb), None, "`{}` left the dispatcher", command.join(" "));
    let out = xpol_run_in(&net.b, &[&p, "-i", &net.vb, "--duration", "1"]);
    assert!(out.status.success(), "after `{}`: {}", command.join(" "), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn killed_process_leaves_nothing_attached() {
    if !usable() {
        return;
    }
    let (net, _dir, policy) = setup(XDP_POLICY);
    let mut child = start_attached(&net, &policy, &[]);
    // SIGKILL: no handler runs; the kernel drops the link with the process.
    Command::new("pkill").args(["-KILL", "-f", &policy.display().to_string()]).status().expect("pkill");
    wait_bounded(&mut child, Duration::from_secs(5));
    let start = Instant::now();
    while net.link_b().contains("xdp") && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!net.link_b().contains("xdp"), "still attached: {}", net.link_b());
}

/// `xpol run` notices when its program no longer filters (here: the
/// interface went away) and fails, rather than report zeros and exit 0.
#[test]
fn run_fails_when_its_link_is_gone() {
    if !usable() {
        return;
    }
    let (net, _dir, policy) = setup(XDP_POLICY);
    let mut child = start_attached(&net, &policy, &["--interval", "0.2"]);
    ip(&["-n", &net.b, "link", "del", &net.vb]);
    let status = wait_bounded(&mut child, Duration::from_secs(10));
    let mut err = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut err).expect("read");
    assert!(!status.success(), "exit status {status}: {err}");
    assert!(err.contains("no longer attached") && err.contains("filters nothing"), "{err}");
}

/// Starts `xpol run` on the receiver side for up to 30 s and waits until it
/// is attached.
fn start_attached(net: &Net, policy: &Path, extra: &[&str]) -> std::process::Child {
    let child = Command::new("ip")
        .args(["netns", "exec", &net.b, env!("CARGO_BIN_EXE_xpol"), "run"])
        .arg(policy)
        .args(["-i", &net.vb, "--duration", "30"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start xpol run");
    let start = Instant::now();
    while !net.link_b().contains("xdp") && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(net.link_b().contains("xdp"), "attached while running");
    child
}

/// SIGTERM (as from systemd or `kill`) detaches and prints the final report.
#[test]
fn sigterm_detaches_and_reports() {
    if !usable() {
        return;
    }
    let (net, _dir, policy) = setup(XDP_POLICY);
    let mut child = start_attached(&net, &policy, &["--json"]);
    Command::new("pkill").args(["-TERM", "-f", &format!("{} -i {}", policy.display(), net.vb)]).status().expect("pkill");
    let status = wait_bounded(&mut child, Duration::from_secs(10));
    let out = child.wait_with_output().expect("output");
    assert!(status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("detached from"));
    let last = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").to_string();
    assert!(last.contains("\"final\":true"), "{last}");
    assert!(!net.link_b().contains("xdp"), "still attached: {}", net.link_b());
}

/// A scrape by a client that others make hard: ten idle connections open
/// first (a one-at-a-time server would keep the scrape waiting past its
/// 3 s timeout), then the scrape; a request split across two segments; a
/// HEAD; a path that only starts with `/metrics`. Prints one line per
/// answer, then the scraped text.
const HOSTILE_SCRAPE: &str = r#"
import socket, sys, time, urllib.request, urllib.error
url = "http://127.0.0.1:9464/metrics"
idle = [socket.create_connection(("127.0.0.1", 9464)) for _ in range(10)]
body = urllib.request.urlopen(url, timeout=3).read().decode()
s = socket.create_connection(("127.0.0.1", 9464))
s.sendall(b"GET /metr"); time.sleep(0.3); s.sendall(b"ics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
print("split", s.makefile("rb").readline().decode().strip())
r = urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=3)
print("head", r.status, len(r.read()))
try:
    urllib.request.urlopen(url + "XYZ", timeout=3); print("prefix 200")
except urllib.error.HTTPError as e:
    print("prefix", e.code)
print(body)
"#;

/// `--metrics PORT` serves the rule counters in Prometheus text format on
/// 127.0.0.1, labelled with the rule's source location (scraped over the
/// loopback of the namespace the test made), to well-behaved and
/// ill-behaved clients alike.
#[test]
fn metrics_endpoint_serves_rule_counters() {
    if !usable() {
        return;
    }
    let (net, _dir, policy) = setup(XDP_POLICY);
    let ns = net.b.clone();
    let (p, vb) = (policy.display().to_string(), net.vb.clone());
    let runner = std::thread::spawn(move || xpol_run_in(&ns, &[&p, "-i", &vb, "--interval", "0.2", "--duration", "5", "--metrics", "9464"]));
    std::thread::sleep(Duration::from_millis(1000));
    let sent = Command::new("ip").args(["netns", "exec", &net.a, "timeout", "5", "python3", "-c", SENDER, &net.addr_b]).status().expect("sender");
    assert!(sent.success());
    std::thread::sleep(Duration::from_millis(600));
    let scrape = Command::new("ip").args(["netns", "exec", &net.b, "timeout", "8", "python3", "-c", HOSTILE_SCRAPE]).output().expect("scrape");
    let text = String::from_utf8_lossy(&scrape.stdout);
    assert!(scrape.status.success(), "{text}{}", String::from_utf8_lossy(&scrape.stderr));
    assert!(runner.join().expect("runner").status.success());
    assert!(text.contains("split HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("head 200 0"), "{text}");
    assert!(text.contains("prefix 404"), "{text}");
    assert!(text.contains("# TYPE xpol_rule_packets_total counter"), "{text}");
    let line = text.lines().find(|l| l.starts_with("xpol_rule_packets_total") && l.contains("rule=\"xdp /udp.dport == 9/\"")).expect("the rule on port 9");
    assert!(line.contains("policy=\"p\"") && line.contains("rule=\"xdp /udp.dport == 9/\"") && line.contains("verdict=\"drop\"") && line.ends_with(" 10"), "{line}");
    assert!(text.contains("xpol_rule_bytes_total{"), "{text}");
}

/// A TC program of the sender's egress that pushes VLAN tag 100 onto every
/// frame with `bpf_skb_vlan_push`: the tag travels as skb metadata (VLAN
/// acceleration), not in the frame, as it does from NICs that strip tags.
const VLAN_PUSH_C: &str = r#"
#define SEC(n) __attribute__((section(n), used))
struct __sk_buff { unsigned int len; };
static long (*bpf_skb_vlan_push)(void *skb, unsigned short proto, unsigned short tci) = (void *)18;
SEC("tc") int push(struct __sk_buff *skb) { bpf_skb_vlan_push(skb, 0x0081, 100); return 0; }
char _license[] SEC("license") = "GPL";
"#;

/// On TC a VLAN tag may live in the skb instead of the frame; `vlan.id`
/// must see it (before, such packets looked untagged and a VLAN rule was
/// silently bypassed).
#[test]
fn run_tc_ingress_sees_accelerated_vlan_tags() {
    if !usable() {
        return;
    }
    let policy = "tc:ingress /vlan.id == 100 && udp.dport == 9/ { drop }\ntc:ingress /udp.dport == 9/ { pass }\ntc:ingress /udp.dport == 7 && vlan.id == 100/ { pass }\ntc:ingress { pass }\n";
    let (net, dir, policy_path) = setup(policy);
    let c = dir.path().join("push.c");
    let obj = dir.path().join("push.o");
    std::fs::write(&c, VLAN_PUSH_C).expect("write C");
    let built = Command::new("clang-14").args(["-O2", "-target", "bpf", "-c"]).arg(&c).arg("-o").arg(&obj).status().expect("clang-14 (apt-get install clang-14)");
    assert!(built.success());
    // Tagged frames cannot resolve neighbours here (no 802.1Q devices):
    // a static entry for the receiver.
    let link = Command::new("ip").args(["-n", &net.b, "-j", "link", "show", &net.vb]).output().expect("ip link");
    let link: serde_json::Value = serde_json::from_slice(&link.stdout).expect("ip -j");
    let mac = link[0]["address"].as_str().expect("a MAC address").to_string();
    ip(&["-n", &net.a, "neigh", "add", &net.addr_b, "lladdr", &mac, "dev", &net.va]);
    let tc = |args: &[&str]| {
        let out = Command::new("ip").args(["netns", "exec", &net.a, "tc"]).args(args).output().expect("run tc");
        assert!(out.status.success(), "tc {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    };
    tc(&["qdisc", "add", "dev", &net.va, "clsact"]);
    tc(&["filter", "add", "dev", &net.va, "egress", "bpf", "da", "obj", obj.to_str().expect("utf-8"), "sec", "tc"]);

    let p = policy_path.to_str().expect("utf-8 path").to_string();
    let (ns, dev) = (net.b.clone(), net.vb.clone());
    let runner = std::thread::spawn(move || xpol_run_in(&ns, &[&p, "-i", &dev, "--hook", "tc:ingress", "--json", "--duration", "3"]));
    std::thread::sleep(Duration::from_millis(1200));
    let sent = Command::new("ip").args(["netns", "exec", &net.a, "timeout", "5", "python3", "-c", SENDER, &net.addr_b]).status().expect("sender");
    assert!(sent.success());
    let out = runner.join().expect("runner");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().expect("output")).expect("JSON");
    let rules = &last["report"]["rules"];
    assert_eq!(rules[0]["packets"], 10, "tagged datagrams to port 9 match the VLAN rule: {stdout}");
    assert_eq!(rules[1]["packets"], 0, "{stdout}");
    assert_eq!(rules[2]["packets"], 5, "tagged datagrams to port 7: {stdout}");
}

/// The object `xpolc build` writes loads with the standard tools too (the
/// README says so): `ip link ... xdp obj` attaches it to a veth in a
/// namespace of this test, and bpftool (libbpf) loads it, global-data
/// tables of IPv4 sets included. Their sets are empty: only the xpol
/// runtime fills them from the object's metadata.
#[test]
fn standard_tools_load_the_object() {
    if !xpol_runtime::testing::kernel_or_skip("standard_tools_load_the_object") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let object = dir.path().join("firewall.o");
    let out = Command::new(env!("CARGO_BIN_EXE_xpolc")).args(["build", "examples/firewall.xpol", "-o"]).arg(&object).output().expect("xpolc");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let net = Net::new();
    let object = object.to_str().expect("utf-8 path");
    let attach = Command::new("timeout").args(["20", "ip", "-n", &net.b, "link", "set", "dev", &net.vb, "xdpgeneric", "obj", object, "sec", "xdp"]).output().expect("ip");
    assert!(attach.status.success(), "ip link ... xdp obj: {}", String::from_utf8_lossy(&attach.stderr));
    assert!(net.link_b().contains("prog/xdp"), "{}", net.link_b());
    ip(&["-n", &net.b, "link", "set", "dev", &net.vb, "xdpgeneric", "off"]);
    assert!(!net.link_b().contains("prog/xdp"), "{}", net.link_b());

    let have_bpftool = Command::new("bpftool").arg("version").output().is_ok_and(|o| o.status.success());
    if !have_bpftool {
        let why = "bpftool is not installed (apt-get install bpftool)";
        assert!(std::env::var("XPOL_REQUIRE_KERNEL").map_or(true, |v| v != "1"), "standard_tools_load_the_object: {why}");
        eprintln!("\n*** SKIPPED standard_tools_load_the_object (bpftool part): {why} ***\n");
        return;
    }
    // A pin of our own, removed even if the assertion fails.
    struct Pin(String);
    impl Drop for Pin {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let pin = Pin(format!("/sys/fs/bpf/xpol-t{}-bpftool", std::process::id()));
    let load = Command::new("timeout").args(["20", "bpftool", "prog", "load", object, &pin.0]).output().expect("bpftool");
    assert!(load.status.success(), "bpftool prog load: {}", String::from_utf8_lossy(&load.stderr));
    let show = Command::new("bpftool").args(["prog", "show", "pinned", &pin.0]).output().expect("bpftool");
    assert!(String::from_utf8_lossy(&show.stdout).contains("xpol_xdp"), "{}", String::from_utf8_lossy(&show.stdout));
}

/// The lines of a child's output as they come, through a channel.
fn lines_of(stream: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stream)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits up to 20 s for a line that `wanted` accepts, keeping every line
/// read in `seen` (for the failure message).
fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, seen: &mut Vec<String>, what: &str, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if wanted(&line) {
                    return line;
                }
            }
            Err(_) => panic!("no {what} within 20 s; so far:\n{}", seen.join("\n")),
        }
    }
}

/// Kills a child when the test ends, however it ends (`ip netns exec`
/// execs the command: the child is xpol itself).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `xpol run --watch`: an edit of the policy switches the attached program
/// in place (no detach: the XDP link stays, its program changes), the new
/// verdict holds for real traffic at once, a labelled rule keeps its
/// counters, and a version that does not compile leaves the running one.
#[test]
fn run_watch_replaces_the_program_in_place() {
    if !usable() {
        return;
    }
    const V1: &str = "rule \"seven\" xdp /udp.dport == 7/ { drop }\nxdp /udp.dport == 9/ { pass }\nxdp { pass }\n";
    const V2: &str = "rule \"seven\" xdp /udp.dport == 7 && ip.ttl > 0/ { pass }\nxdp /udp.dport == 9/ { pass }\nxdp { pass }\n";
    let (net, _dir, policy) = setup(V1);
    let child = Command::new("ip")
        .args(["netns", "exec", &net.b, env!("CARGO_BIN_EXE_xpol"), "run", "--watch"])
        .arg(&policy)
        .args(["-i", &net.vb, "--mode", "generic", "--json", "--interval", "0.2", "--duration", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start xpol run --watch");
    let mut run = KillOnDrop(child);
    let (out, err) = (lines_of(run.0.stdout.take().expect("stdout")), lines_of(run.0.stderr.take().expect("stderr")));
    let (mut reports, mut messages) = (Vec::new(), Vec::new());
    wait_for_line(&err, &mut messages, "watching message", |l| l.starts_with("watching 1 file(s)"));
    let xdp_prog = |net: &Net| {
        let link: serde_json::Value = serde_json::from_slice(&Command::new("ip").args(["-n", &net.b, "-j", "link", "show", &net.vb]).output().expect("ip").stdout).expect("ip -j");
        link[0]["xdp"]["prog"]["id"].as_u64().expect("an XDP program attached")
    };
    // The BPF link running a program: the same link before and after a
    // replace is a switch in place, not a detach and attach.
    let link_running = |prog: u64| xpol_runtime::sys::links().into_iter().find(|l| u64::from(l.prog_id) == prog).map(|l| l.id).expect("a link runs the program");
    let first = xdp_prog(&net);
    let link = link_running(first);
    assert_eq!(send_and_count(&net), "0 10", "version 1 drops port 7");

    // A broken version: reported, and version 1 stays.
    std::fs::write(&policy, "rule \"seven\" xdp /udp.dport == 7/ { drop \n").expect("write");
    wait_for_line(&err, &mut messages, "refusal", |l| l.contains("not replaced; the running version stays"));
    assert_eq!(xdp_prog(&net), first);
    assert_eq!(send_and_count(&net), "0 10", "version 1 still runs");

    std::fs::write(&policy, V2).expect("write");
    wait_for_line(&err, &mut messages, "replace", |l| l.starts_with("replaced"));
    let second = xdp_prog(&net);
    assert_ne!(second, first, "the link runs the new program");
    assert_eq!(link_running(second), link, "the same link: switched, never detached");
    assert_eq!(send_and_count(&net), "5 10", "version 2 passes port 7");

    let report = wait_for_line(&out, &mut reports, "report of version 2", |l| {
        serde_json::from_str::<serde_json::Value>(l).is_ok_and(|r| r["generation"] == 2 && r["rules"][1]["packets"] == 30)
    });
    let report: serde_json::Value = serde_json::from_str(&report).expect("JSON");
    let rules = report["rules"].as_array().expect("rules");
    assert_eq!((rules[0]["key"].as_str(), rules[0]["packets"].as_u64()), (Some("seven"), Some(15)), "counted across versions: {report}");
    assert_eq!(rules[0]["verdict"], "pass", "{report}");
    Command::new("kill").args(["-TERM", &run.0.id().to_string()]).status().expect("kill");
    assert!(wait_bounded(&mut run.0, Duration::from_secs(10)).success());
    let all: Vec<String> = err.iter().collect();
    messages.extend(all);
    assert_eq!(messages.iter().filter(|m| m.starts_with("detached from")).count(), 1, "detached once, at the end: {messages:?}");
    assert!(!net.link_b().contains("xdp"), "nothing left attached: {}", net.link_b());
}

/// `xpol run` of a policy with pools says which sysctls the load balancer
/// needs when they are off (a fresh namespace has forwarding off), and
/// says nothing once they are on.
#[test]
fn run_warns_of_what_the_load_balancer_needs() {
    if !usable() {
        return;
    }
    let policy = "pool web = { 198.18.1.10 }\npool web6 = { 2001:db8:1::10 }\n\
        xdp /ip.dst == 198.18.0.100/ { lb(web, encap: ipip, src: 198.18.0.1) }\n\
        xdp /ip.dst == 2001:db8::100/ { lb(web6, encap: ipip, src: 2001:db8::1) }\n";
    let (net, _dir, path) = setup(policy);
    let p = path.to_str().expect("utf-8 path").to_string();
    let out = xpol_run_in(&net.b, &[&p, "-i", &net.vb, "--mode", "generic", "--duration", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("IPv4 forwarding is off on {}", net.vb)), "{stderr}");
    assert!(stderr.contains(&format!("IPv6 forwarding is off on {}", net.vb)), "{stderr}");
    assert!(stderr.contains(&format!("/proc/sys/net/ipv4/conf/{}/accept_local", net.vb)), "{stderr}");
    for setting in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", &format!("net.ipv4.conf.{}.accept_local=1", net.vb)] {
        let st = Command::new("ip").args(["netns", "exec", &net.b, "sysctl", "-qw", setting]).status().expect("sysctl");
        assert!(st.success(), "{setting}");
    }
    let out = xpol_run_in(&net.b, &[&p, "-i", &net.vb, "--mode", "generic", "--duration", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("warning"), "{stderr}");
}
