//! A port scan banned end to end: `std/port-scan.xpol` applied with `xpol
//! apply` (in a bpffs of the test's own) on the host's veth in a namespace
//! of the test's own; a peer connects to the host's service, then scans
//! closed ports with real TCP connects: its first SYNs are answered
//! (refused), then its address is in the dynamic set `scanners` and
//! everything it sends is dropped, the service included. `xpol set ...
//! list` shows the ban with its time left, `del` lifts it; `add ADDR
//! timeout 1h` bans an IPv6 peer by hand, an apply of the policy again
//! keeps the ban, `flush` lifts every ban.
//!
//! Traffic stays between the namespaces this test creates (198.18.0.0/15,
//! 2001:db8::/32); every command is bounded in time, and the namespaces
//! and the bpffs (with what is attached and pinned) are removed even when
//! the test fails.

use std::process::Command;
use std::time::Duration;

mod common;
use common::net::{ip, python_ready, wait_bounded, Net};

/// A TCP echo server on PORT, both families; "ready" once listening; ends
/// when its input closes.
const SERVER: &str = r#"
import socket, sys, select
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
while True:
    r, _, _ = select.select([s, sys.stdin], [], [], 1)
    if sys.stdin in r:
        sys.exit(0)
    if s in r:
        c, _ = s.accept(); c.settimeout(2)
        try:
            c.sendall(c.recv(64))
        except OSError:
            pass
        c.close()
"#;

/// Connects to ADDRESS on each PORT in turn, waiting TIMEOUT seconds for
/// each: one word per port, ok (echoed), refused, timeout or error.
const CONNECT: &str = r#"
import socket, sys
addr, timeout = sys.argv[1], float(sys.argv[2])
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
out = []
for port in sys.argv[3:]:
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(timeout)
    try:
        s.connect((addr, int(port))); s.sendall(b"hello")
        out.append("ok" if s.recv(64) == b"hello" else "wrong")
    except socket.timeout:
        out.append("timeout")
    except ConnectionRefusedError:
        out.append("refused")
    except OSError as e:
        out.append("error%d" % e.errno)
    s.close()
print(" ".join(out), flush=True)
"#;

const POLICY: &str = "const scan_services = { 8080 }\ninclude \"std/port-scan.xpol\"\n";

fn usable() -> bool {
    xpol_runtime::testing::kernel_or_skip("port scan end to end")
        && Command::new("python3").arg("-c").arg("1").status().is_ok_and(|s| s.success())
        && Command::new("ip").arg("-V").status().is_ok_and(|s| s.success())
        && Command::new("unshare").arg("--help").output().is_ok_and(|o| o.status.success())
}

/// `CONNECT` in `ns` to `addr` on `ports`; its words.
fn connect(ns: &str, addr: &str, timeout: &str, ports: &[u16]) -> Vec<String> {
    let ports: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
    let out = common::net::output_bounded({
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, "timeout", "22", "python3", "-c", CONNECT, addr, timeout]).args(&ports);
        c
    });
    assert!(out.status.success(), "connect: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
}

/// The elements `xpol set scan scanners list --json` shows, with their
/// seconds left.
fn banned(host: &common::host::Host, ns: &str) -> Vec<(String, f64)> {
    let out: serde_json::Value = serde_json::from_str(&host.ok(ns, &["set", "scan", "scanners", "list", "--json"])).expect("JSON");
    assert_eq!((out["dynamic"].as_bool(), out["capacity"].as_u64()), (Some(true), Some(65536)), "{out}");
    out["elements"].as_array().expect("elements").iter().map(|e| (e["element"].as_str().expect("element").to_string(), e["left_s"].as_f64().expect("a timeout"))).collect()
}

#[test]
fn a_scanning_peer_is_banned_and_unbanned() {
    if !usable() {
        return;
    }
    // a: the scanning peer; b: the host with the policy.
    let net = Net::new();
    let host = common::host::Host::new();
    let n = net.addr_b.split('.').nth(2).expect("subnet").to_string();
    let (a4, b4) = (format!("198.18.{n}.1"), net.addr_b.clone());
    let (a6, b6) = (format!("2001:db8:{n}::1"), format!("2001:db8:{n}::2"));
    ip(&["-n", &net.a, "addr", "add", &format!("{a6}/64"), "dev", &net.va, "nodad"]);
    ip(&["-n", &net.b, "addr", "add", &format!("{b6}/64"), "dev", &net.vb, "nodad"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("scan.xpol");
    std::fs::write(&policy, POLICY).expect("write policy");
    host.ok(&net.b, &["apply", &policy.display().to_string(), "-i", &net.vb, "--name", "scan"]);
    let mut server = python_ready(&net.b, 120, SERVER, &["8080"]);

    assert_eq!(connect(&net.a, &b4, "2", &[8080]), ["ok"], "the service, before any scan");
    assert!(banned(&host, &net.b).is_empty());

    // The scan: 30 closed ports, one after another. A burst of 10 SYNs
    // to closed ports passes (each refused at once), the next one bans.
    let ports: Vec<u16> = (20000..20030).collect();
    let scan = connect(&net.a, &b4, "0.3", &ports);
    let refused = scan.iter().take_while(|w| *w == "refused").count();
    assert!(refused >= 10, "the first SYNs answered: {scan:?}");
    assert!(scan[refused..].iter().all(|w| w == "timeout") && refused < scan.len(), "then nothing: {scan:?}");
    let bans = banned(&host, &net.b);
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0].0, a4);
    assert!(bans[0].1 > 500.0 && bans[0].1 <= 600.0, "banned for 10 minutes: {bans:?}");
    assert_eq!(connect(&net.a, &b4, "1", &[8080]), ["timeout"], "banned: the service too");

    // Lifted by hand: the service answers again.
    host.ok(&net.b, &["set", "scan", "scanners", "del", &a4]);
    assert!(banned(&host, &net.b).is_empty());
    assert_eq!(connect(&net.a, &b4, "2", &[8080]), ["ok"], "unbanned");
    let del_again = host.xpol(&net.b, &["set", "scan", "scanners", "del", &a4]);
    assert!(!del_again.status.success() && String::from_utf8_lossy(&del_again.stderr).contains("did not hold"), "{del_again:?}");

    // An IPv6 peer banned by hand, for an hour; a flush lifts it.
    assert_eq!(connect(&net.a, &b6, "2", &[8080]), ["ok"], "IPv6, before");
    host.ok(&net.b, &["set", "scan", "scanners", "add", &a6, "timeout", "1h"]);
    let bans = banned(&host, &net.b);
    let same = |a: &str, b: &str| a.parse::<std::net::IpAddr>().ok() == b.parse().ok();
    assert!(bans.len() == 1 && same(&bans[0].0, &a6) && bans[0].1 > 3500.0 && bans[0].1 <= 3600.0, "{bans:?}");
    assert_eq!(connect(&net.a, &b6, "1", &[8080]), ["timeout"], "IPv6 banned");
    // Applied again (the same set declared): the ban is handed on.
    host.ok(&net.b, &["apply", &policy.display().to_string(), "-i", &net.vb, "--name", "scan"]);
    let kept = banned(&host, &net.b);
    assert!(kept.len() == 1 && same(&kept[0].0, &a6) && kept[0].1 > 3500.0, "kept across the apply: {kept:?}");
    assert_eq!(connect(&net.a, &b6, "1", &[8080]), ["timeout"], "still banned by the new programs");
    assert_eq!(connect(&net.a, &b4, "2", &[8080]), ["ok"], "IPv4 not");
    host.ok(&net.b, &["set", "scan", "scanners", "flush"]);
    assert_eq!(connect(&net.a, &b6, "2", &[8080]), ["ok"], "IPv6 after the flush");
    // Refused: not an address, or a prefix.
    let bad = host.xpol(&net.b, &["set", "scan", "scanners", "add", "198.18.0.0/24"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("scanners"), "{bad:?}");

    // The rules' counters: the ban dropped the scan's later SYNs.
    let stats: serde_json::Value = serde_json::from_str(&host.ok(&net.b, &["stats", "scan", "--json"])).expect("JSON");
    assert_eq!(stats["dynsets"][0], serde_json::json!({"name": "scanners", "elements": 0, "capacity": 65536}), "{stats}");
    let rules = stats["rules"].as_array().expect("rules");
    let by_label = |l: &str| rules.iter().find(|r| r["label"] == l).map_or(0, |r| r["packets"].as_u64().unwrap_or(0));
    assert!(by_label("port-scan-detect") >= 1 && by_label("port-scan-banned") >= 1, "{stats}");
    host.ok(&net.b, &["delete", "scan"]);
    drop(server.stdin.take());
    wait_bounded(&mut server, Duration::from_secs(10));
}
