//! A host firewall on connection state, end to end: `std/host-firewall.xpol`
//! ("established and related pass, new only to port 8080, drop the rest")
//! attached with `xpol run` to the host's veth in a namespace of the
//! test's own; real TCP and UDP from the host out (their replies pass as
//! established), over IPv4 and IPv6, and connections in: to port 8080
//! accepted, to another listening port dropped. The final report of
//! `xpol run --json` shows the connections in the table, and the rules'
//! counters.
//!
//! Traffic stays between the namespaces this test creates (198.18.0.0/15,
//! 2001:db8::/32); every command is bounded in time, and the namespaces
//! (with what is attached in them) are removed even when the test fails.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::net::{ip, python_ready, wait_bounded, Net};

/// Echo servers: `tcp,PORT` or `udp,PORT` on every address of both
/// families. Says "ready" once listening; ends when its input closes.
const SERVER: &str = r#"
import socket, sys, select
socks = {}
for spec in sys.argv[1:]:
    proto, port = spec.split(",")
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", int(port)))
    if proto == "tcp":
        s.listen(16)
    socks[s] = proto
print("ready", flush=True)
while True:
    r, _, _ = select.select(list(socks) + [sys.stdin], [], [], 1)
    for s in r:
        if s is sys.stdin:
            sys.exit(0)
        if socks[s] == "tcp":
            c, _ = s.accept(); c.settimeout(2)
            try:
                c.sendall(c.recv(64))
            except OSError:
                pass
            c.close()
        else:
            data, peer = s.recvfrom(64); s.sendto(data, peer)
"#;

/// Tries each `PROTO,ADDRESS,PORT`: sends "hello" and waits 2 s for it to
/// come back. Prints one word per try: ok, timeout, refused or error.
const CLIENT: &str = r#"
import socket, sys
out = []
for spec in sys.argv[1:]:
    proto, addr, port = spec.split(",")
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        if proto == "tcp":
            s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(2)
            s.connect((addr, int(port))); s.sendall(b"hello"); got = s.recv(64)
        else:
            s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(2)
            s.sendto(b"hello", (addr, int(port))); got = s.recvfrom(64)[0]
        out.append("ok" if got == b"hello" else "wrong")
    except socket.timeout:
        out.append("timeout")
    except ConnectionRefusedError:
        out.append("refused")
    except OSError as e:
        out.append("error%d" % e.errno)
print(" ".join(out), flush=True)
"#;

const POLICY: &str = "const host_tcp = { 8080 }\nconst host_udp = { 5300 }\ninclude \"std/host-firewall.xpol\"\n";

fn usable() -> bool {
    xpol_runtime::testing::kernel_or_skip("conntrack end to end")
        && Command::new("python3").arg("-c").arg("1").status().is_ok_and(|s| s.success())
        && Command::new("ip").arg("-V").status().is_ok_and(|s| s.success())
}

/// `CLIENT` in `ns` with `tries`; its words.
fn client(ns: &str, tries: &[String]) -> Vec<String> {
    let out = common::net::output_bounded({
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, "timeout", "20", "python3", "-c", CLIENT]).args(tries);
        c
    });
    assert!(out.status.success(), "client: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
}

#[test]
fn host_firewall_on_connection_state() {
    if !usable() {
        return;
    }
    // a: a peer on the outside; b: the host with the firewall.
    let net = Net::new();
    let n = net.addr_b.split('.').nth(2).expect("subnet").to_string();
    let (a4, b4) = (format!("198.18.{n}.1"), net.addr_b.clone());
    let (a6, b6) = (format!("2001:db8:{n}::1"), format!("2001:db8:{n}::2"));
    ip(&["-n", &net.a, "addr", "add", &format!("{a6}/64"), "dev", &net.va, "nodad"]);
    ip(&["-n", &net.b, "addr", "add", &format!("{b6}/64"), "dev", &net.vb, "nodad"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("host.xpol");
    std::fs::write(&policy, POLICY).expect("write policy");

    let mut peer_servers = python_ready(&net.a, 60, SERVER, &["tcp,9000", "udp,9053"]);
    let mut host_servers = python_ready(&net.b, 60, SERVER, &["tcp,8080", "tcp,9001", "udp,5300"]);
    // Before the firewall: every service answers from both sides.
    let before = client(&net.a, &[format!("tcp,{b4},8080"), format!("tcp,{b4},9001")]);
    assert_eq!(before, ["ok", "ok"], "without the firewall");

    let mut run = Command::new("ip")
        .args(["netns", "exec", &net.b, env!("CARGO_BIN_EXE_xpol"), "run"])
        .arg(&policy)
        .args(["-i", &net.vb, "--json", "--interval", "1", "--duration", "40"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start xpol run");
    let start = Instant::now();
    while !net.link_b().contains("xdp") && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(net.link_b().contains("xdp"), "attached: {}", net.link_b());
    // The TC program too: its attachment follows the XDP one.
    std::thread::sleep(Duration::from_millis(500));

    // The host's own connections out, and their replies.
    let out = client(&net.b, &[format!("tcp,{a4},9000"), format!("udp,{a4},9053"), format!("tcp,{a6},9000"), format!("udp,{a6},9053")]);
    assert_eq!(out, ["ok", "ok", "ok", "ok"], "the host's connections out: TCP and UDP, IPv4 and IPv6");
    // Connections in: the service's port, and another that listens.
    let inbound = client(&net.a, &[format!("tcp,{b4},8080"), format!("tcp,{b6},8080"), format!("udp,{b4},5300"), format!("tcp,{b4},9001"), format!("tcp,{b6},9001")]);
    assert_eq!(inbound, ["ok", "ok", "ok", "timeout", "timeout"], "in: to port 8080 and UDP 5300 accepted, to 9001 dropped");

    // The report the run prints when it ends.
    let pid = run.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let status = wait_bounded(&mut run, Duration::from_secs(15));
    let (mut report, mut err) = (String::new(), String::new());
    run.stdout.take().expect("stdout").read_to_string(&mut report).expect("read");
    run.stderr.take().expect("stderr").read_to_string(&mut err).expect("read");
    assert!(status.success(), "xpol run: {err}");
    assert!(!err.contains("warning"), "no warning: every hook attached: {err}");
    let last: serde_json::Value = serde_json::from_str(report.lines().last().expect("a report")).expect("JSON");
    let ct = &last["report"]["conntrack"];
    let states = ct["states"].as_object().unwrap_or_else(|| panic!("the table's states: {last}"));
    // The TCP connections closed (time_wait or close); UDP answered.
    assert!(states.keys().any(|s| s.starts_with("tcp ")), "{ct}");
    assert!(states.get("udp replied").and_then(|n| n.as_u64()).unwrap_or(0) >= 2, "{ct}");
    assert!(ct["entries"].as_u64().unwrap_or(0) >= 6, "{ct}");
    let rules = last["report"]["rules"].as_array().expect("rules");
    let by_text = |text: &str| rules.iter().find(|r| r["text"].as_str().is_some_and(|t| t.contains(text))).map_or(0, |r| r["packets"].as_u64().unwrap_or(0));
    assert!(by_text("ct.state in {established, related}") > 0, "replies passed as established: {last}");
    assert!(by_text("ip.version in {4, 6}") > 0, "the SYNs to 9001 were dropped: {last}");
    let link = net.link_b();
    assert!(!link.contains("xdp"), "still attached after exit: {link}");
    for s in [&mut peer_servers, &mut host_servers] {
        drop(s.stdin.take());
        wait_bounded(s, Duration::from_secs(10));
    }
}

/// An applied host firewall (`xpol apply`, in a bpffs of the test's own):
/// `xpol ct` lists the host's connection with its state, `xpol stats`
/// counts it, and a replace by a changed policy keeps it.
#[test]
fn applied_table_is_listed_and_kept_across_a_replace() {
    if !usable() || !Command::new("unshare").arg("--help").output().is_ok_and(|o| o.status.success()) {
        return;
    }
    let net = Net::new();
    let host = common::host::Host::new();
    let n = net.addr_b.split('.').nth(2).expect("subnet").to_string();
    let a4 = format!("198.18.{n}.1");
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("host.xpol");
    std::fs::write(&policy, POLICY).expect("write policy");
    let policy = policy.display().to_string();
    host.ok(&net.b, &["apply", &policy, "-i", &net.vb, "--name", "fw"]);
    let mut peer = python_ready(&net.a, 60, SERVER, &["udp,9053"]);
    assert_eq!(client(&net.b, &[format!("udp,{a4},9053")]), ["ok"], "the host's query answered");

    let listed = |host: &common::host::Host| -> Vec<serde_json::Value> {
        host.ok(&net.b, &["ct", "fw", "--json"]).lines().map(|l| serde_json::from_str(l).expect("JSON")).collect()
    };
    let before = listed(&host);
    let query = before.iter().find(|e| e["to"] == a4.as_str() && e["to_port"] == 9053).unwrap_or_else(|| panic!("the query's connection: {before:?}"));
    assert_eq!(query["state"], "udp replied", "{query}");
    assert_eq!(query["from"], net.addr_b.as_str());
    let summary = before.last().expect("a summary");
    assert!(summary["entries"].as_u64().unwrap_or(0) >= 1 && summary["states"]["udp replied"].as_u64().unwrap_or(0) >= 1, "{summary}");
    let stats: serde_json::Value = serde_json::from_str(&host.ok(&net.b, &["stats", "fw", "--json"])).expect("JSON");
    assert!(stats["conntrack"]["states"]["udp replied"].as_u64().unwrap_or(0) >= 1, "{stats}");

    // Another service: a replace, which hands the table on.
    let changed = dir.path().join("host2.xpol");
    std::fs::write(&changed, POLICY.replace("{ 8080 }", "{ 8080, 8081 }")).expect("write policy");
    let out = host.xpol(&net.b, &["apply", &changed.display().to_string(), "-i", &net.vb, "--name", "fw"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("connections kept"), "{err}");
    let after = listed(&host);
    let kept = after.iter().find(|e| e["to"] == a4.as_str() && e["to_port"] == 9053).unwrap_or_else(|| panic!("kept: {after:?}"));
    assert_eq!(kept["from_port"], query["from_port"]);
    assert_eq!(kept["state"], "udp replied");
    // And it still lets the answers in.
    assert_eq!(client(&net.b, &[format!("udp,{a4},9053")]), ["ok"]);
    host.ok(&net.b, &["delete", "fw"]);
    drop(peer.stdin.take());
    wait_bounded(&mut peer, Duration::from_secs(10));
}
