//! The SYN proxy end to end: a real TCP server in one namespace behind
//! `xpol run` with a `synproxy` rule on its veth, a SYN flood (a Python
//! raw socket, spoofed sources in 198.19.0.0/16) from the other
//! namespace, and a real TCP client there that connects and exchanges
//! data, IPv4 and IPv6, while the flood runs. `xpol run` installs its
//! nftables table (and `nf_conntrack_tcp_loose=0`) while it runs and
//! removes them when it ends.
//!
//! Then the same under `xpol apply` (in a private bpffs, `Host`): the
//! table and the sysctl stay after the process, follow a replace (new
//! ports, no `synproxy`), and go at `xpol delete`.
//!
//! Traffic stays between the namespaces this test creates (198.18.0.0/15,
//! 2001:db8::/32); every command is bounded in time, and the namespaces
//! (with what is attached and installed in them) are removed even when the
//! test fails.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::host::Host;
use common::net::{ip, python_ready, wait_bounded, Net};

/// An echo server on TCP port PORT of both families: says "ready" once
/// listening; ends when its input closes.
const SERVER: &str = r#"
import socket, sys, select
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1])))
s.listen(64)
print("ready", flush=True)
while True:
    r, _, _ = select.select([s, sys.stdin], [], [], 1)
    if sys.stdin in r:
        sys.exit(0)
    if s in r:
        c, _ = s.accept(); c.settimeout(3)
        try:
            while True:
                d = c.recv(4096)
                if not d:
                    break
                c.sendall(d)
        except OSError:
            pass
        c.close()
"#;

/// Each `ADDRESS,PORT`: connects, sends 4 messages of 1000 bytes and reads
/// each back (3 s each). One word per try: ok, timeout, refused, error.
const CLIENT: &str = r#"
import socket, sys
out = []
for spec in sys.argv[1:]:
    addr, port = spec.rsplit(",", 1)
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(3)
        s.connect((addr, int(port)))
        ok = True
        for i in range(4):
            msg = bytes([65 + i]) * 1000
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                d = s.recv(4096)
                if not d:
                    break
                got += d
            ok = ok and got == msg
        s.close()
        out.append("ok" if ok else "wrong")
    except socket.timeout:
        out.append("timeout")
    except ConnectionRefusedError:
        out.append("refused")
    except OSError as e:
        out.append("error%d" % e.errno)
print(" ".join(out), flush=True)
"#;

/// SYNs to ADDRESS:PORT for SECS seconds from spoofed sources
/// 198.19.X.Y and changing ports (the TCP checksum left 0: the proxy
/// answers before anything checks it). Says "ready", then at the end the
/// number sent.
const FLOOD: &str = r#"
import socket, struct, sys, time
dst, port, secs = socket.inet_aton(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
tail = struct.pack("!IIBBHHH", 0x01020304, 0, 0x50, 0x02, 64240, 0, 0)
print("ready", flush=True)
n = 0
end = time.time() + secs
while time.time() < end:
    for i in range(500):
        n += 1
        src = bytes([198, 19, (n >> 8) & 255, n & 255])
        iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, 6, 0, src, dst)
        try:
            s.sendto(iph + struct.pack("!HH", 1024 + n % 60000, port) + tail, (sys.argv[1], 0))
        except OSError:
            pass
print(n, flush=True)
"#;

const POLICY: &str = "xdp /ct.state == established/ { pass }\nxdp /tcp.dport == 8080/ { synproxy(mss: 1400, wscale: 7) }\nxdp { pass }\n";

fn usable() -> bool {
    xpol_runtime::testing::kernel_or_skip("synproxy end to end")
        && Command::new("python3").arg("-c").arg("1").status().is_ok_and(|s| s.success())
        && Command::new("nft").arg("--version").output().is_ok_and(|o| o.status.success())
}

fn client(ns: &str, tries: &[String]) -> Vec<String> {
    let out = common::net::output_bounded({
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, "timeout", "20", "python3", "-c", CLIENT]).args(tries);
        c
    });
    assert!(out.status.success(), "client: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
}

fn exec(ns: &str, args: &[&str]) -> String {
    let out = common::net::output_bounded({
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(args);
        c
    });
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn clients_connect_through_a_syn_flood() {
    if !usable() {
        return;
    }
    // a: the clients and the flood; b: the server behind the proxy.
    let net = Net::new();
    let n = net.addr_b.split('.').nth(2).expect("subnet").to_string();
    let b4 = net.addr_b.clone();
    let (a6, b6) = (format!("2001:db8:{n}::1"), format!("2001:db8:{n}::2"));
    ip(&["-n", &net.a, "addr", "add", &format!("{a6}/64"), "dev", &net.va, "nodad"]);
    ip(&["-n", &net.b, "addr", "add", &format!("{b6}/64"), "dev", &net.vb, "nodad"]);
    let loose_before = exec(&net.b, &["cat", "/proc/sys/net/netfilter/nf_conntrack_tcp_loose"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("proxy.xpol");
    std::fs::write(&policy, POLICY).expect("write policy");

    let mut server = python_ready(&net.b, 90, SERVER, &["8080"]);
    let mut run = Command::new("ip")
        .args(["netns", "exec", &net.b, env!("CARGO_BIN_EXE_xpol"), "run"])
        .arg(&policy)
        // Generic XDP: on this machine's veth pairs, frames a native XDP
        // program sends back with XDP_TX did not reach the peer (even a
        // plain `tx`, with GRO on at the peer); the skb path sends them
        // through the peer's ordinary receive.
        .args(["-i", &net.vb, "--mode", "generic", "--json", "--interval", "1", "--duration", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start xpol run");
    let start = Instant::now();
    while !net.link_b().contains("xdp") && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(net.link_b().contains("xdp"), "attached: {}", net.link_b());
    std::thread::sleep(Duration::from_millis(500));
    let tables = exec(&net.b, &["nft", "list", "tables"]);
    assert!(tables.contains("xpol_synproxy_run_"), "the netfilter side installed: {tables}");
    assert_eq!(exec(&net.b, &["cat", "/proc/sys/net/netfilter/nf_conntrack_tcp_loose"]).trim(), "0");

    // Before the flood.
    let tries = [format!("{b4},8080"), format!("{b6},8080")];
    assert_eq!(client(&net.a, &tries), ["ok", "ok"], "through the proxy, no flood");
    // During the flood: twice more each, a second apart.
    let mut flood = python_ready(&net.a, 30, FLOOD, &[&b4, "8080", "12"]);
    std::thread::sleep(Duration::from_secs(1));
    let mut during = Vec::new();
    for _ in 0..3 {
        during.extend(client(&net.a, &tries));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(during.iter().all(|w| w == "ok"), "clients during the flood: {during:?}");
    let still_flooding = flood.try_wait().expect("wait").is_none();
    assert!(still_flooding, "the flood ran through the clients' connections");
    let mut sent = String::new();
    wait_bounded(&mut flood, Duration::from_secs(25));
    flood.stdout.take().expect("stdout").read_to_string(&mut sent).expect("read");
    let sent: u64 = sent.split_whitespace().last().and_then(|w| w.parse().ok()).unwrap_or(0);

    let pid = run.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let status = wait_bounded(&mut run, Duration::from_secs(15));
    let (mut report, mut err) = (String::new(), String::new());
    run.stdout.take().expect("stdout").read_to_string(&mut report).expect("read");
    run.stderr.take().expect("stderr").read_to_string(&mut err).expect("read");
    assert!(status.success(), "xpol run: {err}");
    let last: serde_json::Value = serde_json::from_str(report.lines().last().expect("a report")).expect("JSON");
    let rules = last["report"]["rules"].as_array().expect("rules");
    let proxied = rules.iter().find(|r| r["text"].as_str().is_some_and(|t| t.contains("8080"))).map_or(0, |r| r["packets"].as_u64().unwrap_or(0));
    eprintln!("flood: {sent} SYNs sent; the synproxy rule saw {proxied} packets");
    assert!(sent > 1000 && proxied >= sent / 2, "the flood reached the proxy: {sent} sent, {proxied} at the rule");
    // Removed when the run ended.
    let tables = exec(&net.b, &["nft", "list", "tables"]);
    assert!(!tables.contains("xpol_synproxy"), "the netfilter side removed: {tables}");
    assert_eq!(exec(&net.b, &["cat", "/proc/sys/net/netfilter/nf_conntrack_tcp_loose"]), loose_before, "the sysctl put back");
    assert!(!net.link_b().contains("xdp"), "detached");
    drop(server.stdin.take());
    wait_bounded(&mut server, Duration::from_secs(10));
}

const LOOSE: &str = "/proc/sys/net/netfilter/nf_conntrack_tcp_loose";

/// `nft list table inet xpol_synproxy_web` in `ns`: the ruleset, or
/// `None` when there is no such table.
fn web_table(ns: &str) -> Option<String> {
    let out = common::net::output_bounded({
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, "nft", "list", "table", "inet", "xpol_synproxy_web"]);
        c
    });
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn applied_synproxy_keeps_its_netfilter_side_until_deleted() {
    if !usable() {
        return;
    }
    let net = Net::new();
    let host = Host::new();
    let dir = tempfile::tempdir().expect("tempdir");
    // Loose tracking on (the kernel's default), to see it put back.
    exec(&net.b, &["sh", "-c", &format!("echo 1 > {LOOSE}")]);
    assert_eq!(exec(&net.b, &["cat", LOOSE]).trim(), "1");
    let write = |file: &str, text: &str| {
        let path = dir.path().join(file);
        std::fs::write(&path, text).expect("write policy");
        path.to_str().expect("UTF-8 path").to_string()
    };
    let on_8080 = write("a.xpol", POLICY);
    let on_8081 = write("b.xpol", &POLICY.replace("8080", "8081"));
    let without = write("c.xpol", "xdp /tcp.dport == 23/ { drop }\nxdp { pass }\n");
    // Generic XDP, as above.
    let apply = |path: &str| host.ok(&net.b, &["apply", path, "-i", &net.vb, "--name", "web", "--mode", "generic"]);
    let mut server = python_ready(&net.b, 90, SERVER, &["8080"]);
    let mut server2 = python_ready(&net.b, 90, SERVER, &["8081"]);
    let (to_8080, to_8081) = ([format!("{},8080", net.addr_b)], [format!("{},8081", net.addr_b)]);

    // Applied: the xpol process has ended, its netfilter side stays.
    apply(&on_8080);
    let table = web_table(&net.b).expect("the synproxy table after apply");
    assert!(table.contains("8080") && table.contains("synproxy mss 1400"), "{table}");
    assert_eq!(exec(&net.b, &["cat", LOOSE]).trim(), "0");
    assert_eq!(client(&net.a, &to_8080), ["ok"], "a connection through the applied proxy");
    // A flushed ruleset: `xpol list` says so, an apply again repairs it.
    exec(&net.b, &["nft", "delete", "table", "inet", "xpol_synproxy_web"]);
    let listed = host.ok(&net.b, &["list"]);
    assert!(listed.contains("problem: the nftables table inet xpol_synproxy_web of its `synproxy` is missing"), "{listed}");
    apply(&on_8080);
    assert!(web_table(&net.b).is_some(), "put back by the apply");
    assert!(!host.ok(&net.b, &["list"]).contains("problem"));

    // Replaced with other ports: the same table, the new ports.
    apply(&on_8081);
    let table = web_table(&net.b).expect("the synproxy table after a replace");
    assert!(table.contains("8081") && !table.contains("8080"), "{table}");
    assert_eq!(client(&net.a, &to_8081), ["ok"], "through the replaced proxy");

    // Replaced with a version without `synproxy`: the table goes, and the
    // sysctl (no other applied policy needs it).
    apply(&without);
    assert_eq!(web_table(&net.b), None, "the table of a policy that no longer has a synproxy");
    assert_eq!(exec(&net.b, &["cat", LOOSE]).trim(), "1");
    assert!(net.link_b().contains("xdp"), "the policy still runs");

    // Back, then deleted: table and sysctl as they were.
    apply(&on_8080);
    assert!(web_table(&net.b).is_some_and(|t| t.contains("8080")));
    assert_eq!(exec(&net.b, &["cat", LOOSE]).trim(), "0");
    host.ok(&net.b, &["delete", "web"]);
    assert_eq!(web_table(&net.b), None, "the table after delete");
    assert_eq!(exec(&net.b, &["cat", LOOSE]).trim(), "1", "the sysctl put back at delete");
    assert!(!net.link_b().contains("xdp"), "detached");

    for s in [&mut server, &mut server2] {
        drop(s.stdin.take());
        wait_bounded(s, Duration::from_secs(10));
    }
}

/// Two applied policies with a `synproxy` in one namespace: the sysctl
/// stays 0 while either is applied, and goes back when the last one is
/// deleted (whichever set it).
#[test]
fn the_sysctl_goes_back_with_the_last_applied_synproxy() {
    if !usable() {
        return;
    }
    let net = Net::new();
    let host = Host::new();
    let dir = tempfile::tempdir().expect("tempdir");
    // A second interface in b for the second policy (one XDP program an interface).
    ip(&["-n", &net.b, "link", "add", "sp0", "type", "veth", "peer", "name", "sp1"]);
    ip(&["-n", &net.b, "link", "set", "sp0", "up"]);
    exec(&net.b, &["sh", "-c", &format!("echo 1 > {LOOSE}")]);
    let policy = dir.path().join("p.xpol");
    std::fs::write(&policy, POLICY).expect("write policy");
    let policy = policy.to_str().expect("UTF-8 path");
    let tables = || exec(&net.b, &["nft", "list", "tables"]);
    host.ok(&net.b, &["apply", policy, "-i", &net.vb, "--name", "web", "--mode", "generic"]);
    host.ok(&net.b, &["apply", policy, "-i", "sp0", "--name", "other-1", "--mode", "generic"]);
    assert!(tables().contains("xpol_synproxy_web") && tables().contains("xpol_synproxy_other-1"), "{}", tables());
    assert_eq!(exec(&net.b, &["cat", LOOSE]).trim(), "0");
    let other = web_table(&net.b).map(|_| exec(&net.b, &["nft", "list", "table", "inet", "xpol_synproxy_other-1"])).expect("both tables");
    assert!(other.contains("\"sp0\"") && !other.contains(&net.vb), "each table on its policy's interface: {other}");

    host.ok(&net.b, &["delete", "web"]);
    assert!(!tables().contains("xpol_synproxy_web") && tables().contains("xpol_synproxy_other-1"), "{}", tables());
    assert_eq!(exec(&net.b, &["cat", LOOSE]).trim(), "0", "`other-1` still needs it");
    host.ok(&net.b, &["delete", "other-1"]);
    assert!(!tables().contains("xpol_synproxy"), "{}", tables());
    assert_eq!(exec(&net.b, &["cat", LOOSE]).trim(), "1", "put back with the last one");
}

/// Without `nft` (PATH without /usr/sbin), an apply of a policy with
/// `synproxy` fails saying so and changes nothing: a first apply leaves
/// nothing applied, a replace leaves the running version and its table.
#[test]
fn without_nft_an_apply_changes_nothing() {
    if !usable() {
        return;
    }
    let net = Net::new();
    let host = Host::new();
    let dir = tempfile::tempdir().expect("tempdir");
    exec(&net.b, &["sh", "-c", &format!("echo 1 > {LOOSE}")]);
    let write = |file: &str, text: &str| {
        let path = dir.path().join(file);
        std::fs::write(&path, text).expect("write policy");
        path.to_str().expect("UTF-8 path").to_string()
    };
    let (on_8080, on_8081) = (write("a.xpol", POLICY), write("b.xpol", &POLICY.replace("8080", "8081")));
    let apply_without_nft = |path: &str| {
        let mut cmd = host.command(&net.b, env!("CARGO_BIN_EXE_xpol"));
        cmd.args(["apply", path, "-i", &net.vb, "--name", "web", "--mode", "generic"]).env("PATH", "/usr/bin:/bin");
        common::net::output_bounded(cmd)
    };

    let out = apply_without_nft(&on_8080);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("nftables (the `nft` command)"), "{err}");
    assert!(!host.ok(&net.b, &["list"]).contains("web"), "nothing applied");
    assert!(!net.link_b().contains("xdp"), "nothing attached");
    assert_eq!(exec(&net.b, &["cat", LOOSE]).trim(), "1");

    host.ok(&net.b, &["apply", &on_8080, "-i", &net.vb, "--name", "web", "--mode", "generic"]);
    let out = apply_without_nft(&on_8081);
    assert!(!out.status.success(), "a replace without nft");
    let table = web_table(&net.b).expect("the running version's table");
    assert!(table.contains("8080") && !table.contains("8081"), "{table}");
    let listed = host.ok(&net.b, &["list", "-j"]);
    assert!(listed.contains("a.xpol") && listed.contains("\"generation\":1"), "the first version runs: {listed}");
    assert_eq!(exec(&net.b, &["cat", LOOSE]).trim(), "0");
    // A delete without nft: the policy goes and the sysctl back; the
    // table stays, and the error says so.
    let mut cmd = host.command(&net.b, env!("CARGO_BIN_EXE_xpol"));
    cmd.args(["delete", "web"]).env("PATH", "/usr/bin:/bin");
    let out = common::net::output_bounded(cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("was detached and removed, but not all of its `synproxy`'s host side (nftables table inet xpol_synproxy_web)"), "{err}");
    assert!(!host.ok(&net.b, &["list"]).contains("web") && !net.link_b().contains("xdp"), "deleted");
    assert_eq!(exec(&net.b, &["cat", LOOSE]).trim(), "1");
    assert!(web_table(&net.b).is_some());
}
