//! Applied policies end to end: `xpol apply`, `delete`, `list`, `stats`,
//! `set`, with real traffic between two network namespaces this test
//! creates (addresses in 198.18.0.0/15).
//!
//! Each test but one runs xpol in a private mount namespace with a BPF
//! filesystem of its own (`Host`): tests cannot see each other's policies
//! or the host's, and when the test ends, however it ends, that bpffs goes
//! away with its pins, so nothing stays attached. The exception drives the
//! library in this process, in the host's store, under a name of its own
//! that it deletes when it ends.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;
use common::host::{apply_in_host_store, running_program, Host};
use common::net::{output_bounded, python_ready, wait_bounded, Net};

fn usable() -> bool {
    xpol_runtime::testing::kernel_or_skip("xpol apply end to end")
        && ["python3", "ip", "unshare", "nsenter"].iter().all(|p| Command::new(p).arg("--version").output().is_ok() || *p == "python3")
}

/// Two namespaces joined by a veth, a private bpffs, a directory for policies.
fn fixture() -> (Net, Host, tempfile::TempDir) {
    (Net::new(), Host::new(), tempfile::tempdir().expect("tempdir"))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write policy");
    path
}

/// The counters of the rule with identity `key` in a `stats --json` report.
fn rule_packets(report: &serde_json::Value, key: &str) -> u64 {
    let rules = report["rules"].as_array().expect("rules");
    let rule = rules.iter().find(|r| r["key"] == key).unwrap_or_else(|| panic!("no rule `{key}` in {report}"));
    rule["packets"].as_u64().expect("packets")
}

fn stats(host: &Host, net: &Net, name: &str) -> serde_json::Value {
    serde_json::from_str(&host.ok(&net.b, &["stats", name, "--json"])).expect("JSON")
}

/// Receives numbered datagrams on UDP port 7 until 1.5 s pass without one
/// after its standard input closes; prints how many distinct ones came.
const RECEIVER: &str = r#"
import socket, select, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 7))
seen = set(); stop = None; last = time.time()
print("ready", flush=True)
while True:
    r, _, _ = select.select([s, sys.stdin], [], [], 0.1)
    if s in r:
        seen.add(s.recv(64)); last = time.time()
    if sys.stdin in r and stop is None:
        sys.stdin.read(); stop = time.time()
    if stop is not None and time.time() - max(stop, last) > 1.5:
        break
print(len(seen))
"#;

/// Sends numbered datagrams to port 7 (about 500 a second) until its
/// standard input closes; says "ready" once the first is sent, and at the
/// end prints how many it sent.
const SENDER: &str = r#"
import socket, select, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
n = 0
while True:
    s.sendto(b"%d" % n, (sys.argv[1], 7)); n += 1
    if n == 1:
        print("ready", flush=True)
    if select.select([sys.stdin], [], [], 0)[0]:
        break
    time.sleep(0.002)
print(n)
"#;

/// A steady stream of numbered datagrams from a to b.
struct Stream {
    receiver: Child,
    sender: Child,
}

impl Stream {
    fn start(net: &Net) -> Stream {
        let receiver = python_ready(&net.b, 120, RECEIVER, &[]);
        // Not a fixed wait for the start: a stream stopped before its
        // first datagram proves nothing. Then a while of sending, so that
        // a test that stops it at once still sees a stream.
        let sender = python_ready(&net.a, 120, SENDER, &[&net.addr_b]);
        std::thread::sleep(Duration::from_millis(300));
        Stream { receiver, sender }
    }

    /// Stops the stream: (sent, received).
    fn stop(mut self) -> (u64, u64) {
        let count = |child: &mut Child| {
            drop(child.stdin.take());
            assert!(wait_bounded(child, Duration::from_secs(20)).success());
            let mut out = String::new();
            child.stdout.take().expect("stdout").read_to_string(&mut out).expect("read");
            out.split_whitespace().last().expect("a count").parse::<u64>().expect("a number")
        };
        let sent = count(&mut self.sender);
        let received = count(&mut self.receiver);
        (sent, received)
    }
}

/// Both policies pass the stream to port 7 (and count it in `@seen`), and
/// differ elsewhere: rules added, removed and moved around it.
const POLICY_A: &str = "xdp /tcp.dport == 23/ { drop }\nxdp /udp.dport == 7/ { @seen = count(); pass }\nxdp /udp.dport == 9/ { drop }\nxdp { pass }\n";
const POLICY_B: &str = "xdp /udp.dport == 5/ { drop }\nxdp /udp.dport == 9/ { drop }\nxdp /udp.dport == 7/ { @seen = count(); pass }\nxdp /tcp.dport == 23/ { drop }\nxdp { pass }\n";

#[test]
fn applied_policy_outlives_the_process_until_deleted() {
    if !usable() {
        return;
    }
    let (net, host, dir) = fixture();
    let policy = write(dir.path(), "a.xpol", POLICY_A);
    let p = policy.to_str().expect("utf-8");
    host.ok(&net.b, &["apply", p, "-i", &net.vb, "--name", "web"]);
    assert!(net.link_b().contains("xdp"), "attached after xpol exited: {}", net.link_b());

    let stream = Stream::start(&net);
    std::thread::sleep(Duration::from_millis(500));
    let (sent, received) = stream.stop();
    assert_eq!(sent, received, "every datagram to port 7 passes");
    let list = host.ok(&net.b, &["list"]);
    assert!(list.contains("web") && list.contains(&net.vb) && list.contains("a.xpol"), "{list}");
    let list: serde_json::Value = serde_json::from_str(host.ok(&net.b, &["list", "--json"]).lines().next().expect("a line")).expect("JSON");
    assert_eq!(list["policy"]["ok"], true, "{list}");
    let report = stats(&host, &net, "web");
    assert_eq!(rule_packets(&report, "xdp /udp.dport == 7/"), sent);
    // Another policy on the same hook is told who holds it.
    let busy = host.xpol(&net.b, &["apply", p, "-i", &net.vb, "--name", "other"]);
    let err = String::from_utf8_lossy(&busy.stderr);
    assert!(!busy.status.success() && err.contains("the xpol policy `web` holds it"), "{err}");
    assert!(host.xpol(&net.b, &["stats", "other"]).status.code() != Some(0), "nothing left of the failed apply");
    assert_eq!(report["maps"][0]["top"][0]["value"], sent, "{report}");

    host.ok(&net.b, &["delete", "web"]);
    assert!(!net.link_b().contains("xdp"), "detached: {}", net.link_b());
    let again = host.xpol(&net.b, &["stats", "web"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no policy is applied as `web`"), "{}", String::from_utf8_lossy(&again.stderr));
}

/// Twenty replacements under a steady stream: not one passed packet is
/// lost, and the counters of the rule that stays are monotonic and exact.
#[test]
fn replacing_twenty_times_under_traffic_loses_nothing() {
    if !usable() {
        return;
    }
    let (net, host, dir) = fixture();
    let a = write(dir.path(), "a.xpol", POLICY_A);
    let b = write(dir.path(), "b.xpol", POLICY_B);
    let (a, b) = (a.to_str().expect("utf-8"), b.to_str().expect("utf-8"));
    host.ok(&net.b, &["apply", a, "-i", &net.vb, "--name", "live"]);
    let stream = Stream::start(&net);
    let mut last = 0;
    for i in 0..20 {
        let policy = if i % 2 == 0 { b } else { a };
        let out = host.xpol(&net.b, &["apply", policy, "-i", &net.vb, "--name", "live"]);
        assert!(out.status.success(), "apply {i}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("kept @maps: seen"), "{}", String::from_utf8_lossy(&out.stderr));
        let now = rule_packets(&stats(&host, &net, "live"), "xdp /udp.dport == 7/");
        assert!(now >= last, "the counter went back from {last} to {now} at replacement {i}");
        last = now;
    }
    let (sent, received) = stream.stop();
    assert!(sent > 500, "the stream ran ({sent} datagrams)");
    assert_eq!(received, sent, "no datagram lost across 20 replacements");
    let report = stats(&host, &net, "live");
    assert_eq!(report["generation"], 21);
    assert_eq!(rule_packets(&report, "xdp /udp.dport == 7/"), sent, "exact counter: {report}");
    assert_eq!(report["maps"][0]["top"][0]["value"], sent, "@seen was handed on, never reset: {report}");
    let files = host.sh("ls /sys/fs/bpf/xpol/live");
    assert_eq!(String::from_utf8_lossy(&files.stdout).split_whitespace().collect::<Vec<_>>(), ["gen_21", "link_0"], "one link, one generation");
}

/// A rule's label is its identity: across a replace that edits the
/// predicates of two rules, the labelled one keeps its counters (and shows
/// its label), the unlabelled one is a new rule that starts at 0.
#[test]
fn labelled_rule_keeps_its_counters_when_its_predicate_changes() {
    if !usable() {
        return;
    }
    let (net, host, dir) = fixture();
    // The first rule counts and lets evaluation go on, so the stream fires both.
    let v1 = write(dir.path(), "v1.xpol", "xdp /udp.dport == 7 && ip.ttl > 0/ { @seen = count() }\nrule \"stream\" xdp /udp.dport == 7/ { pass }\nxdp { pass }\n");
    let v2 = write(dir.path(), "v2.xpol", "xdp /udp.dport == 7 && ip.ttl > 1/ { @seen = count() }\nrule \"stream\" xdp /udp.dport in {7, 8}/ { pass }\nxdp { pass }\n");
    let (v1, v2) = (v1.to_str().expect("utf-8"), v2.to_str().expect("utf-8"));
    host.ok(&net.b, &["apply", v1, "-i", &net.vb, "--name", "lab"]);
    let (first, received) = Stream::start(&net).stop();
    assert_eq!(first, received);
    let report = stats(&host, &net, "lab");
    assert_eq!(rule_packets(&report, "stream"), first, "{report}");
    assert_eq!(rule_packets(&report, "xdp /udp.dport == 7 && ip.ttl > 0/"), first, "{report}");

    let out: serde_json::Value = serde_json::from_str(&host.ok(&net.b, &["apply", v2, "-i", &net.vb, "--name", "lab", "--json"])).expect("JSON");
    assert_eq!(out["outcome"]["rules_carried"], 2, "`stream` and the last rule: {out}");
    let report = stats(&host, &net, "lab");
    assert_eq!(rule_packets(&report, "stream"), first, "the labelled rule kept its counters: {report}");
    assert_eq!(rule_packets(&report, "xdp /udp.dport == 7 && ip.ttl > 1/"), 0, "the edited unlabelled rule is new: {report}");
    let (second, received) = Stream::start(&net).stop();
    assert_eq!(second, received);
    let report = stats(&host, &net, "lab");
    assert_eq!(rule_packets(&report, "stream"), first + second, "{report}");
    assert_eq!(rule_packets(&report, "xdp /udp.dport == 7 && ip.ttl > 1/"), second, "{report}");
    let stream = report["rules"].as_array().expect("rules").iter().find(|r| r["key"] == "stream").expect("the labelled rule").clone();
    assert_eq!((stream["label"].as_str(), stream["text"].as_str()), (Some("stream"), Some("xdp /udp.dport in {7, 8}/")), "{stream}");
    let table = host.ok(&net.b, &["stats", "lab"]);
    assert!(table.contains("[stream] xdp /udp.dport in {7, 8}/"), "{table}");
}

/// `xpol set` changes under traffic: a stream the set never holds is never
/// dropped, an element added drops at once, removed passes at once; and
/// live contents survive a re-apply of an unchanged declaration, but not
/// of a changed one.
#[test]
fn set_changes_are_atomic_and_survive_reapply() {
    if !usable() {
        return;
    }
    let (net, host, dir) = fixture();
    let text = "set ports: int = { 9 }\nxdp /udp.dport in ports/ { drop }\nxdp /udp.dport == 7/ { pass }\nxdp { pass }\n";
    let policy = write(dir.path(), "p.xpol", text);
    let p = policy.to_str().expect("utf-8");
    host.ok(&net.b, &["apply", p, "-i", &net.vb, "--name", "s"]);
    let stream = Stream::start(&net);
    for i in 0..10 {
        let port = (20000 + i).to_string();
        host.ok(&net.b, &["set", "s", "ports", "add", &port, "30000..30010"]);
        host.ok(&net.b, &["set", "s", "ports", "del", &port]);
    }
    let (sent, received) = stream.stop();
    assert_eq!(sent, received, "port 7 was never in the set: no datagram dropped");
    let listed = host.ok(&net.b, &["set", "s", "ports", "list"]);
    assert_eq!(listed.lines().collect::<Vec<_>>(), ["9", "30000..30010"]);

    // A single port inside a listed range: removing it leaves the range whole.
    host.ok(&net.b, &["set", "s", "ports", "add", "5..8"]);
    host.ok(&net.b, &["set", "s", "ports", "add", "7"]);
    host.ok(&net.b, &["set", "s", "ports", "del", "7"]);
    let (sent, received) = Stream::start(&net).stop();
    assert!(sent > 0 && received == 0, "5..8 still holds 7: {received} of {sent} passed");
    host.ok(&net.b, &["set", "s", "ports", "del", "5..8"]);

    // Port 7 in the set: the stream is dropped; out again: it passes.
    host.ok(&net.b, &["set", "s", "ports", "add", "7"]);
    let (sent, received) = Stream::start(&net).stop();
    assert!(sent > 0 && received == 0, "dropped while in the set: {received} of {sent}");
    host.ok(&net.b, &["set", "s", "ports", "del", "7"]);
    let (sent, received) = Stream::start(&net).stop();
    assert_eq!(sent, received, "passes once removed");

    // An unrelated edit keeps the live contents; a changed declaration resets them.
    let edited = write(dir.path(), "p.xpol", &format!("{text}xdp /tcp.dport == 23/ {{ drop }}\n"));
    let out = host.xpol(&net.b, &["apply", edited.to_str().expect("utf-8"), "-i", &net.vb, "--name", "s"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("sets kept live: ports"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(host.ok(&net.b, &["set", "s", "ports", "list"]).lines().count(), 2);
    let redeclared = write(dir.path(), "p.xpol", &text.replace("{ 9 }", "{ 9, 11 }"));
    host.ok(&net.b, &["apply", redeclared.to_str().expect("utf-8"), "-i", &net.vb, "--name", "s"]);
    assert_eq!(host.ok(&net.b, &["set", "s", "ports", "list"]).lines().collect::<Vec<_>>(), ["9", "11"]);

    // Bad elements and names are refused, naming what is wrong.
    let bad = host.xpol(&net.b, &["set", "s", "ports", "add", "eighty"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("not an integer"), "{}", String::from_utf8_lossy(&bad.stderr));
    let bad = host.xpol(&net.b, &["set", "s", "nosuch", "add", "1"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("has no set `nosuch` (its sets: ports)"), "{}", String::from_utf8_lossy(&bad.stderr));
}

/// Sends datagrams "0", "1", ... "149" to port 7 (about one a millisecond)
/// and exits: UDP lengths 9 (ten), 10 (ninety) and 11 (fifty).
const FIXED_SENDER: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for n in range(150):
    s.sendto(b"%d" % n, (sys.argv[1], 7)); time.sleep(0.001)
"#;

fn send_150(net: &Net) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net.a, "timeout", "20", "python3", "-c", FIXED_SENDER, &net.addr_b]);
    let out = output_bounded(cmd);
    assert!(out.status.success(), "sender: {}", String::from_utf8_lossy(&out.stderr));
}

/// A full `@map` (`max 2`, keyed by UDP length, of which the sender has
/// three) and its lost updates in `stats --json`: carried across a replace
/// that keeps the map, while a replace that changes its capacity gives a
/// new, empty map whose lost updates count from 0, without an error.
#[test]
fn full_map_and_lost_updates_across_replace() {
    if !usable() {
        return;
    }
    let (net, host, dir) = fixture();
    let policy = |max: u32, extra: &str| format!("{extra}map @lens max {max}\nxdp /udp.dport == 7/ {{ @lens[udp.len] = count(); pass }}\nxdp {{ pass }}\n");
    let fill = |report: &serde_json::Value| {
        let m = &report["maps"][0];
        (m["name"].as_str().map(str::to_string), m["entries"].as_u64(), m["capacity"].as_u64(), m["lost"].as_u64())
    };
    let lens = Some("lens".to_string());
    let a = write(dir.path(), "a.xpol", &policy(2, ""));
    host.ok(&net.b, &["apply", a.to_str().expect("utf-8"), "-i", &net.vb, "--name", "full"]);
    send_150(&net);
    assert_eq!(fill(&stats(&host, &net, "full")), (lens.clone(), Some(2), Some(2), Some(50)), "the 3-digit datagrams found no room");
    let text = host.ok(&net.b, &["stats", "full"]);
    assert!(text.contains("@lens (2/2 entries, 50 lost updates)") && text.contains("warning: @lens was full: 50 updates"), "{text}");

    // Another rule, the same map: handed on with its lost updates.
    let b = write(dir.path(), "b.xpol", &policy(2, "xdp /udp.dport == 9/ { drop }\n"));
    let out = host.xpol(&net.b, &["apply", b.to_str().expect("utf-8"), "-i", &net.vb, "--name", "full"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stderr).contains("kept @maps: lens"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fill(&stats(&host, &net, "full")), (lens.clone(), Some(2), Some(2), Some(50)));
    send_150(&net);
    assert_eq!(fill(&stats(&host, &net, "full")), (lens.clone(), Some(2), Some(2), Some(100)), "counted on in the new generation");

    // A new capacity: a new map, empty, and no lost update carried.
    let c = write(dir.path(), "c.xpol", &policy(3, "xdp /udp.dport == 9/ { drop }\n"));
    let out = host.xpol(&net.b, &["apply", c.to_str().expect("utf-8"), "-i", &net.vb, "--name", "full"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stderr).contains("kept @maps: none"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fill(&stats(&host, &net, "full")), (lens.clone(), Some(0), Some(3), Some(0)));
    send_150(&net);
    assert_eq!(fill(&stats(&host, &net, "full")), (lens, Some(3), Some(3), Some(0)), "three lengths fit in three entries");
}

/// The store refuses directories it did not make: another user's, one
/// others can write, a symbolic link, a plain file; and it never follows a
/// link planted below it.
#[test]
fn store_refuses_what_xpol_did_not_make() {
    if !usable() {
        return;
    }
    let (net, host, dir) = fixture();
    let policy = write(dir.path(), "a.xpol", POLICY_A);
    let p = policy.to_str().expect("utf-8");
    for (setup, reason) in [
        ("mkdir -m 700 /sys/fs/bpf/xpol && chown 65534 /sys/fs/bpf/xpol", "belongs to uid 65534"),
        ("mkdir /sys/fs/bpf/xpol && chmod 1777 /sys/fs/bpf/xpol", "others may write or read it"),
        ("mkdir -m 700 /sys/fs/bpf/elsewhere && ln -s /sys/fs/bpf/elsewhere /sys/fs/bpf/xpol", "is a symbolic link"),
    ] {
        let made = host.sh(&format!("rm -rf /sys/fs/bpf/xpol /sys/fs/bpf/elsewhere; {setup}"));
        assert!(made.status.success(), "{setup}: {}", String::from_utf8_lossy(&made.stderr));
        let out = host.xpol(&net.b, &["apply", p, "-i", &net.vb, "--name", "x"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("refusing to use /sys/fs/bpf/xpol") && err.contains(reason), "{setup}: {err}");
        assert!(!net.link_b().contains("xdp"), "nothing attached: {}", net.link_b());
        let list = host.xpol(&net.b, &["list"]);
        assert!(!list.status.success(), "list refuses too: {}", String::from_utf8_lossy(&list.stdout));
    }
    // A link planted inside the store is reported, not followed.
    host.sh("rm -rf /sys/fs/bpf/xpol /sys/fs/bpf/elsewhere");
    host.ok(&net.b, &["apply", p, "-i", &net.vb, "--name", "real"]);
    let planted = host.sh("mkdir -m 700 /sys/fs/bpf/elsewhere && ln -s /sys/fs/bpf/elsewhere /sys/fs/bpf/xpol/evil");
    assert!(planted.status.success());
    let list = host.ok(&net.b, &["list"]);
    assert!(list.contains("real") && list.contains("evil") && list.contains("is a symbolic link"), "{list}");
    let umask = host.sh("stat -c %a /sys/fs/bpf/xpol /sys/fs/bpf/xpol/real /sys/fs/bpf/xpol/real/gen_1 /sys/fs/bpf/xpol/real/gen_1/record");
    assert_eq!(String::from_utf8_lossy(&umask.stdout).split_whitespace().collect::<Vec<_>>(), ["700", "700", "700", "600"]);
}

/// A record that cannot be read (truncated, or not xpol's) does not hide
/// an attached policy: `list` shows it with the problem, `delete` removes it.
#[test]
fn unreadable_record_is_listed_and_deletable() {
    if !usable() || Command::new("bpftool").arg("version").output().is_err() {
        return;
    }
    let (net, host, dir) = fixture();
    let policy = write(dir.path(), "a.xpol", POLICY_A);
    host.ok(&net.b, &["apply", policy.to_str().expect("utf-8"), "-i", &net.vb, "--name", "rec"]);
    let broken = host.sh("cd /sys/fs/bpf/xpol/rec/gen_1 && rm record && bpftool map create /sys/fs/bpf/xpol/rec/gen_1/record type array key 4 value 16 entries 1 name junk");
    assert!(broken.status.success(), "{}", String::from_utf8_lossy(&broken.stderr));
    let list = host.ok(&net.b, &["list"]);
    assert!(list.contains("rec") && list.contains("not xpol's") && list.contains("xpol delete"), "{list}");
    assert!(net.link_b().contains("xdp"));
    // What cannot be read cannot be replaced (or put back): refused, left as it is.
    let again = host.xpol(&net.b, &["apply", policy.to_str().expect("utf-8"), "-i", &net.vb, "--name", "rec"]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("nothing was changed"), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(net.link_b().contains("xdp"), "still attached");
    host.ok(&net.b, &["delete", "rec"]);
    assert!(!net.link_b().contains("xdp"), "detached: {}", net.link_b());
}

/// SIGKILL of `xpol apply` at any point leaves the policy listed, with a
/// generation that runs, and deletable.
#[test]
fn killed_applies_leave_a_listed_deletable_policy() {
    if !usable() {
        return;
    }
    let (net, host, dir) = fixture();
    let a = write(dir.path(), "a.xpol", POLICY_A);
    let b = write(dir.path(), "b.xpol", POLICY_B);
    host.ok(&net.b, &["apply", a.to_str().expect("utf-8"), "-i", &net.vb, "--name", "k"]);
    let mut rng = common::Rng(7);
    for i in 0..12 {
        let policy = if i % 2 == 0 { &b } else { &a };
        let mut cmd = host.command(&net.b, env!("CARGO_BIN_EXE_xpol"));
        let mut child = cmd.args(["apply", policy.to_str().expect("utf-8"), "-i", &net.vb, "--name", "k"]).stderr(Stdio::null()).spawn().expect("apply");
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        // Kill xpol itself, not only the `timeout` in front of it.
        let _ = Command::new("pkill").args(["-KILL", "-f", &format!("apply {} -i {}", policy.display(), net.vb)]).status();
        wait_bounded(&mut child, Duration::from_secs(30));
        let list = host.ok(&net.b, &["list", "--json"]);
        let entry: serde_json::Value = serde_json::from_str(list.lines().next().unwrap_or_else(|| panic!("kill {i}: nothing listed"))).expect("JSON");
        assert_eq!(entry["policy"]["name"], "k", "{list}");
        // The link runs the generation listed: no problem to report.
        assert_eq!(entry["policy"]["ok"], true, "kill {i}: {list}");
        assert!(net.link_b().contains("xdp"), "kill {i}: still attached");
    }
    // Leftovers of killed applies do not stop the next one.
    host.ok(&net.b, &["apply", a.to_str().expect("utf-8"), "-i", &net.vb, "--name", "k"]);
    host.ok(&net.b, &["delete", "k"]);
    assert!(!net.link_b().contains("xdp"), "detached: {}", net.link_b());
    // A first apply killed: nothing attached that is not listed, and what
    // is listed can be deleted.
    for delay in [50, 150, 300] {
        let mut cmd = host.command(&net.b, env!("CARGO_BIN_EXE_xpol"));
        let mut child = cmd.args(["apply", a.to_str().expect("utf-8"), "-i", &net.vb, "--name", "k"]).stderr(Stdio::null()).spawn().expect("apply");
        std::thread::sleep(Duration::from_millis(delay));
        let _ = Command::new("pkill").args(["-KILL", "-f", &format!("apply {} -i {}", a.display(), net.vb)]).status();
        wait_bounded(&mut child, Duration::from_secs(30));
        let listed = host.ok(&net.b, &["list"]).contains("k ");
        assert!(listed || !net.link_b().contains("xdp"), "attached but not listed after a kill at {delay} ms");
        if listed {
            host.ok(&net.b, &["delete", "k"]);
        }
        assert!(!net.link_b().contains("xdp"), "detached: {}", net.link_b());
    }
    let gone = host.sh("ls /sys/fs/bpf/xpol");
    assert!(String::from_utf8_lossy(&gone.stdout).trim().is_empty(), "{}", String::from_utf8_lossy(&gone.stdout));
}

/// Under `ip netns exec`, /sys is remounted without the BPF filesystem:
/// pins made there would vanish. xpol refuses and says what to use.
#[test]
fn apply_under_ip_netns_exec_is_refused_with_the_fix() {
    if !usable() {
        return;
    }
    let net = Net::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = write(dir.path(), "a.xpol", POLICY_A);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net.b, "timeout", "20", env!("CARGO_BIN_EXE_xpol"), "apply"]).arg(&policy).args(["-i", &net.vb, "--name", "nx"]);
    let out = output_bounded(cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("nsenter --net"), "{err}");
    assert!(!net.link_b().contains("xdp"), "nothing attached: {}", net.link_b());
}

/// The generation of applied policy `name`, or `None` when not listed.
fn generation(host: &Host, net: &Net, name: &str) -> Option<u64> {
    let list = host.ok(&net.b, &["list", "--json"]);
    list.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find(|e| e["policy"]["name"] == name).and_then(|e| e["policy"]["generation"].as_u64())
}

/// Waits up to 20 s for `name` to reach generation `g`.
fn wait_generation(host: &Host, net: &Net, name: &str, g: u64) {
    let start = std::time::Instant::now();
    while generation(host, net, name) != Some(g) {
        assert!(start.elapsed() < Duration::from_secs(20), "generation {g} of `{name}` never came: {:?}", generation(host, net, name));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `apply --watch` applies again when the policy or a set file it reads
/// changes; a broken version is reported and the running one stays.
#[test]
fn apply_watch_follows_the_policy_and_its_set_file() {
    if !usable() {
        return;
    }
    let (net, host, dir) = fixture();
    write(dir.path(), "ports.txt", "9\n");
    let policy = write(dir.path(), "w.xpol", "set ports: int = file(\"ports.txt\")\nxdp /udp.dport in ports/ { drop }\nxdp { pass }\n");
    let mut cmd = host.command(&net.b, env!("CARGO_BIN_EXE_xpol"));
    let mut watcher = cmd
        .args(["apply", "--watch", policy.to_str().expect("utf-8"), "-i", &net.vb, "--name", "w"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("apply --watch");
    wait_generation(&host, &net, "w", 1);
    write(dir.path(), "ports.txt", "9\n7\n");
    wait_generation(&host, &net, "w", 2);
    assert_eq!(host.ok(&net.b, &["set", "w", "ports", "list"]).lines().collect::<Vec<_>>(), ["7", "9"], "the new declaration of the set");
    let (sent, received) = Stream::start(&net).stop();
    assert!(sent > 0 && received == 0, "port 7 dropped now");
    write(dir.path(), "w.xpol", "set ports: int = file(\"ports.txt\")\nxdp /udp.dport in ports/ { drop \n");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(generation(&host, &net, "w"), Some(2), "a broken version is not applied");
    write(dir.path(), "w.xpol", "set ports: int = file(\"ports.txt\")\nxdp /udp.dport in ports/ { drop }\nxdp /udp.dport == 5/ { drop }\nxdp { pass }\n");
    wait_generation(&host, &net, "w", 3);
    let _ = Command::new("pkill").args(["-TERM", "-f", &format!("apply --watch {}", policy.display())]).status();
    let status = wait_bounded(&mut watcher, Duration::from_secs(10));
    let mut err = String::new();
    watcher.stderr.take().expect("stderr").read_to_string(&mut err).expect("read");
    assert!(err.contains("not applied; the running version stays"), "{err}");
    assert!(status.success() || status.code() == Some(124), "{status}: {err}");
    assert_eq!(generation(&host, &net, "w"), Some(3), "stays applied after the watcher stops");
}

/// `apply --watch` whose first version cannot be applied: with nothing
/// of the name applied it exits 1 (a service manager then retries, as
/// `xpol@.service` does); with an earlier version applied, that one stays
/// and it keeps watching for a fix.
#[test]
fn apply_watch_fails_only_when_nothing_would_run() {
    if !usable() {
        return;
    }
    let (net, host, dir) = fixture();
    let broken = write(dir.path(), "broken.xpol", "xdp /udp.dport == 7/ { drop \n");
    let broken = broken.to_str().expect("utf-8");
    let out = host.xpol(&net.b, &["apply", "--watch", broken, "-i", &net.vb, "--name", "w"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not closed") && err.contains("no earlier version of `w` is applied: nothing to keep running"), "{err}");
    assert_eq!(generation(&host, &net, "w"), None);

    let good = write(dir.path(), "good.xpol", "xdp { pass }\n");
    host.ok(&net.b, &["apply", good.to_str().expect("utf-8"), "-i", &net.vb, "--name", "w"]);
    let mut watcher = host
        .command(&net.b, env!("CARGO_BIN_EXE_xpol"))
        .args(["apply", "--watch", broken, "-i", &net.vb, "--name", "w"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("apply --watch");
    let mut stderr = std::io::BufReader::new(watcher.stderr.take().expect("stderr"));
    let mut said = String::new();
    while !said.starts_with("watching") {
        said.clear();
        assert!(std::io::BufRead::read_line(&mut stderr, &mut said).expect("read") > 0, "apply --watch ended instead of watching");
    }
    assert!(watcher.try_wait().expect("try_wait").is_none(), "still watching");
    assert_eq!(generation(&host, &net, "w"), Some(1), "the earlier version stays");
    let _ = Command::new("pkill").args(["-TERM", "-f", &format!("apply --watch {broken}")]).status();
    wait_bounded(&mut watcher, Duration::from_secs(10));
}

/// IPv4 prefixes live in the shared prefix tables: a change of several
/// elements loads the policy again and switches, a single one is made in
/// place. Under a steady stream, ten changes of both kinds lose nothing;
/// the sender's prefix added drops it, removed passes it; a set past its
/// declared capacity is refused by name.
#[test]
fn ipv4_set_changes_switch_without_loss() {
    if !usable() {
        return;
    }
    let (net, host, dir) = fixture();
    let text = "set nets: cidr = { 203.0.113.0/24 }\nset small: cidr max 2 = { 192.0.2.1 }\nxdp /ip.src in nets/ { drop }\nxdp /ip.src in small/ { drop }\nxdp { pass }\n";
    let policy = write(dir.path(), "n.xpol", text);
    host.ok(&net.b, &["apply", policy.to_str().expect("utf-8"), "-i", &net.vb, "--name", "n"]);
    let stream = Stream::start(&net);
    for i in 0..5 {
        let p = format!("198.51.100.{i}/32");
        host.ok(&net.b, &["set", "n", "nets", "add", &p, "2001:db8:bad::/48"]);
        host.ok(&net.b, &["set", "n", "nets", "del", &p]);
    }
    let (sent, received) = stream.stop();
    assert_eq!(sent, received, "no datagram lost across ten switches");
    assert_eq!(host.ok(&net.b, &["set", "n", "nets", "list"]).lines().collect::<Vec<_>>(), ["203.0.113.0/24", "2001:db8:bad::/48"]);

    let sender = format!("{}.0/30", net.addr_b.rsplit_once('.').expect("an IPv4 address").0);
    host.ok(&net.b, &["set", "n", "nets", "add", &sender]);
    let (sent, received) = Stream::start(&net).stop();
    assert!(sent > 0 && received == 0, "the sender's prefix drops: {received} of {sent}");
    host.ok(&net.b, &["set", "n", "nets", "flush"]);
    let (sent, received) = Stream::start(&net).stop();
    assert_eq!(sent, received, "flushed: passes");

    let full = host.xpol(&net.b, &["set", "n", "small", "add", "192.0.2.2", "192.0.2.3"]);
    let err = String::from_utf8_lossy(&full.stderr);
    assert!(!full.status.success() && err.contains("set `small` is full"), "{err}");
    assert_eq!(host.ok(&net.b, &["set", "n", "small", "list"]).lines().collect::<Vec<_>>(), ["192.0.2.1/32"], "unchanged");
    let bad = host.xpol(&net.b, &["set", "n", "nets", "add", "198.51.100.1/24"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("host bits are set (the prefix is 198.51.100.0/24)"), "{}", String::from_utf8_lossy(&bad.stderr));
}

/// Whether XDP program `prog` drops a UDP datagram from `src`
/// (`BPF_PROG_TEST_RUN`).
fn drops_source(prog: &std::os::fd::OwnedFd, src: std::net::Ipv4Addr) -> bool {
    let packet = xpol_runtime::packet::PacketSpec::udp4(src, std::net::Ipv4Addr::new(198, 18, 0, 1), 1000, 53).build();
    xpol_runtime::sys::prog_test_run(std::os::fd::AsFd::as_fd(prog), &packet, None, 1).expect("test run").retval == 1 // XDP_DROP
}

/// 10,000 single-element changes and a replace of 100,000 IPv4 prefixes,
/// through the library (what `xpol set` runs, without 10,000 process
/// starts), while a stream flows whose port and source no version of the
/// sets holds: not one datagram may be dropped. Uses the host's store,
/// under a name of its own.
#[test]
fn ten_thousand_set_changes_and_a_large_replace_under_traffic() {
    if !usable() {
        return;
    }
    use xpol_runtime::apply::{self, SetChange, SetEditor};
    use xpol_runtime::store::Store;
    let net = Net::new();
    let text = "set ports: int max 20000 = { 9 }\nset nets: cidr max 200000 = { 203.0.113.0/24 }\nxdp /udp.dport in ports/ { drop }\nxdp /ip.src in nets/ { drop }\nxdp { pass }\n";
    let policy = apply_in_host_store(&net, "many", text);
    let name = &policy.0;
    let blocklist: Vec<String> = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/ref-fw/blocklist-100000.txt"))
        .expect("blocklist")
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        // The sender's own addresses (198.18.0.0/15) are never in the set.
        .filter(|l| !l.starts_with("198.18.") && !l.starts_with("198.19."))
        .collect();
    assert!(blocklist.len() > 99_000);
    let stream = Stream::start(&net);
    let store = Store::write().expect("store");
    let mut ports = SetEditor::open(&store, &name, "ports").expect("ports");
    for i in 0..10_000u32 {
        let port = (10_000 + i / 2).to_string();
        let change = if i % 2 == 0 { SetChange::Add(vec![port]) } else { SetChange::Delete(vec![port]) };
        ports.change(&store, change).unwrap_or_else(|e| panic!("change {i}: {e}"));
    }
    apply::change_set(&store, &name, "nets", SetChange::Replace(blocklist.clone())).expect("replace 100k");
    drop(store);
    let (sent, received) = stream.stop();
    assert!(sent > 100, "the stream ran: {sent}");
    assert_eq!(sent, received, "no datagram dropped by a set that never held it");
    let store = Store::read().expect("store").expect("exists");
    let current = store.applied(&name).expect("applied").current.expect("current");
    assert_eq!(current.elements("ports").expect("ports"), ["9"]);
    assert_eq!(current.elements("nets").expect("nets").len(), blocklist.len());
}

/// A replace that fails after switching a link (here: a second interface
/// that does not exist) switches it back: the old version runs, listed, and
/// the next apply works. Duplicate interfaces make one link; a link
/// detached from outside is attached again by the next apply.
#[test]
fn failed_switch_rolls_back_and_links_are_repaired() {
    if !usable() || Command::new("bpftool").arg("version").output().is_err() {
        return;
    }
    let (net, host, dir) = fixture();
    let a = write(dir.path(), "a.xpol", POLICY_A);
    let b = write(dir.path(), "b.xpol", POLICY_B);
    let (a, b) = (a.to_str().expect("utf-8"), b.to_str().expect("utf-8"));
    host.ok(&net.b, &["apply", a, "-i", &net.vb, "-i", &net.vb, "--name", "rb"]);
    let files = |host: &Host| String::from_utf8_lossy(&host.sh("ls /sys/fs/bpf/xpol/rb").stdout).split_whitespace().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(files(&host), ["gen_1", "link_0"], "one link for an interface named twice");

    let failed = host.xpol(&net.b, &["apply", b, "-i", &net.vb, "-i", "nosuchif0", "--name", "rb"]);
    assert!(!failed.status.success() && String::from_utf8_lossy(&failed.stderr).contains("nosuchif0"), "{}", String::from_utf8_lossy(&failed.stderr));
    let entry: serde_json::Value = serde_json::from_str(host.ok(&net.b, &["list", "--json"]).lines().next().expect("listed")).expect("JSON");
    assert_eq!(entry["policy"]["generation"], 1, "{entry}");
    assert_eq!(entry["policy"]["ok"], true, "the old version runs, as listed: {entry}");
    assert_eq!(files(&host), ["gen_1", "link_0"]);
    let (sent, received) = Stream::start(&net).stop();
    assert_eq!(sent, received);
    assert_eq!(rule_packets(&stats(&host, &net, "rb"), "xdp /udp.dport == 7/"), sent, "the old version counts");

    // Detached from outside: listed as a problem, attached again by apply.
    let id = entry["policy"]["links"][0]["prog_id"].as_u64().expect("prog id");
    let links = Command::new("bpftool").args(["-j", "link", "show"]).output().expect("bpftool");
    let links: serde_json::Value = serde_json::from_slice(&links.stdout).expect("bpftool JSON");
    let link = links.as_array().expect("links").iter().find(|l| l["prog_id"] == id).expect("the policy's link")["id"].as_u64().expect("id");
    let detach = Command::new("bpftool").args(["link", "detach", "id", &link.to_string()]).output().expect("bpftool");
    assert!(detach.status.success(), "{}", String::from_utf8_lossy(&detach.stderr));
    assert!(!net.link_b().contains("xdp"));
    assert!(host.ok(&net.b, &["list"]).contains("no longer attached"));
    host.ok(&net.b, &["apply", b, "-i", &net.vb, "--name", "rb"]);
    assert!(net.link_b().contains("xdp"), "attached again");
    let entry: serde_json::Value = serde_json::from_str(host.ok(&net.b, &["list", "--json"]).lines().next().expect("listed")).expect("JSON");
    assert_eq!(entry["policy"]["ok"], true, "{entry}");
}

/// Single IPv4 prefixes change in place (`ipv4_edit`): 1,200 random adds
/// and deletes of nested prefixes from /5 to /32, with a steady stream the
/// set never holds flowing through. The program never changes (no
/// reload), no datagram is lost, and after every 40 changes the attached
/// program, run on packets at every prefix's edges and at random
/// addresses, gives exactly the verdict of the set as listed. Once with
/// every table in global data, once with the mid and leaf tables in array
/// maps of their own (a set declared large).
#[test]
fn ipv4_single_changes_are_in_place_and_exact() {
    if !usable() {
        return;
    }
    ipv4_walk(4_000, 1);
    ipv4_walk(100_000, 2);
}

fn ipv4_walk(capacity: u32, seed: u64) {
    use std::net::Ipv4Addr;
    use xpol_runtime::apply::{SetChange, SetEditor};
    use xpol_runtime::store::Store;
    let net = Net::new();
    let policy = apply_in_host_store(&net, "v4", &format!("set nets: cidr max {capacity} = {{ 203.0.113.0/24 }}\nxdp /ip.src in nets/ {{ drop }}\nxdp {{ pass }}\n"));
    let name = &policy.0;
    let store = Store::write().expect("store");
    let before = running_program(&store, &name);
    let prog = xpol_runtime::sys::prog_fd_by_id(before).expect("the program");
    let dropped = |a: u32| drops_source(&prog, Ipv4Addr::from(a));

    let stream = Stream::start(&net);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(seed);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mask = |len: u8| u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    let mut members: Vec<(u32, u8)> = vec![(0xcb00_7100, 24)];
    let mut editor = SetEditor::open(&store, &name, "nets").expect("the set");
    for step in 0..1_200 {
        if members.len() > 1 && next() % 5 < 2 {
            let (a, len) = members.remove((next() % members.len() as u64) as usize);
            editor.change(&store, SetChange::Delete(vec![format!("{}/{len}", Ipv4Addr::from(a))])).unwrap_or_else(|e| panic!("step {step}: {e}"));
        } else {
            // Inside 8.0.0.0/5, far from the stream's 198.18.0.0/15; long
            // prefixes crowd into a few /16s so that they nest.
            let len = [5u8, 8, 12, 16, 20, 23, 24, 26, 28, 30, 31, 32][(next() % 12) as usize];
            let a = (0x0800_0000 | (next() as u32 & 0x0703_0fff)) & mask(len);
            if members.contains(&(a, len)) {
                continue;
            }
            members.push((a, len));
            editor.change(&store, SetChange::Add(vec![format!("{}/{len}", Ipv4Addr::from(a))])).unwrap_or_else(|e| panic!("step {step}: {e}"));
        }
        if step % 40 != 39 {
            continue;
        }
        let holds = |x: u32| members.iter().any(|&(a, len)| x & mask(len) == a);
        let mut probes: Vec<u32> = (0..64).map(|_| 0x0800_0000 | (next() as u32 & 0x07ff_ffff)).collect();
        for &(a, len) in &members {
            let last = a | !mask(len);
            probes.extend([a, last, a.wrapping_sub(1), last.wrapping_add(1)]);
        }
        for x in probes {
            assert_eq!(dropped(x), holds(x), "step {step}: {} with {} prefixes", Ipv4Addr::from(x), members.len());
        }
    }
    drop(editor);
    let (sent, received) = stream.stop();
    assert!(sent > 0, "the stream ran: {sent}");
    assert_eq!(sent, received, "no datagram lost or dropped");
    assert_eq!(running_program(&store, &name), before, "every change was made in place: the program is the same");
    let mut listed = store.applied(&name).expect("applied").current.expect("current").elements("nets").expect("elements");
    let mut expected: Vec<String> = members.iter().map(|&(a, len)| format!("{}/{len}", Ipv4Addr::from(a))).collect();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);
}

/// Random single IPv6 adds and deletes (nested prefixes, /0 now and then,
/// /128, long shared runs of bits for path-compressed nodes, prefixes that
/// become tails and inline tails, and a region of 300 prefixes that starts
/// in a wide node in global data) are made in place in the IPv6 tables
/// (`ipv6_edit`): after every few, the running program's verdicts
/// (`BPF_PROG_TEST_RUN`) are a plain prefix scan's on every prefix's
/// bounds and around them, and the program is the one applied.
#[test]
fn ipv6_single_changes_are_in_place_and_exact() {
    use std::net::Ipv6Addr;
    use xpol_runtime::apply::{SetChange, SetEditor};
    use xpol_runtime::store::Store;
    if !usable() {
        return;
    }
    let mask = |len: u8| u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // 300 /64s in 2001:db8:1::/48: a wide node in global data.
    let mut members: Vec<(u128, u8)> = (0..300).map(|_| ((0x2001_0db8_0001u128 << 80) | (u128::from(next() as u16) << 64), 64)).collect();
    members.sort_unstable();
    members.dedup();
    let text = |&(a, len): &(u128, u8)| format!("{}/{len}", Ipv6Addr::from(a));
    let initial: Vec<String> = members.iter().map(text).collect();
    let net = Net::new();
    let policy = apply_in_host_store(&net, "v6", &format!("set nets: cidr max 20000 = {{ {} }}\nxdp /ip6.src in nets/ {{ drop }}\nxdp {{ pass }}\n", initial.join(", ")));
    let name = &policy.0;
    let store = Store::write().expect("store");
    let before = running_program(&store, name);
    let prog = xpol_runtime::sys::prog_fd_by_id(before).expect("the program");
    let dropped = |a: u128| {
        let packet = xpol_runtime::packet::PacketSpec::udp6(Ipv6Addr::from(a), "2001:db8::1".parse().expect("address"), 1000, 53).build();
        xpol_runtime::sys::prog_test_run(std::os::fd::AsFd::as_fd(&prog), &packet, None, 1).expect("test run").retval == 1 // XDP_DROP
    };
    let near = [0x2001_0db8_0001_0002_0003_0004_0005_0006u128, 0x2001_0db8_0002_00ff_0000_0000_0000_0000, 0x2001_0db8_0001_1234_0000_0000_0000_0000];
    let mut editor = SetEditor::open(&store, name, "nets").expect("the set");
    for step in 0..1_500 {
        if members.len() > 1 && next() % 5 < 2 {
            // Recent ones more often, so that /0 does not stay long.
            let at = if next() % 2 == 0 { members.len() - 1 } else { (next() % members.len() as u64) as usize };
            let p = members.remove(at);
            editor.change(&store, SetChange::Delete(vec![text(&p)])).unwrap_or_else(|e| panic!("step {step}: delete {}: {e}", text(&p)));
        } else {
            let len = [0u8, 8, 16, 24, 32, 40, 47, 48, 52, 56, 63, 64, 65, 72, 80, 96, 112, 120, 127, 128][(next() % 20) as usize];
            if len == 0 && next() % 4 != 0 {
                continue;
            }
            let a = match next() % 3 {
                0 => near[(next() % 3) as usize] ^ (u128::from(next() % 256) << (next() % 120)),
                1 => (0x2001_0db8u128 << 96) | (u128::from(next()) << 64 | u128::from(next())) & (u128::MAX >> 32),
                _ => u128::from(next()) << 64 | u128::from(next()),
            } & mask(len);
            if members.contains(&(a, len)) {
                continue;
            }
            members.push((a, len));
            editor.change(&store, SetChange::Add(vec![text(&(a, len))])).unwrap_or_else(|e| panic!("step {step}: add {}: {e}", text(&(a, len))));
        }
        if step % 25 != 24 {
            continue;
        }
        let holds = |x: u128| members.iter().any(|&(a, len)| x & mask(len) == a);
        let mut probes: Vec<u128> = (0..32).map(|_| near[(next() % 3) as usize] ^ u128::from(next()) << (next() % 64)).collect();
        for &(a, len) in &members {
            let last = a | !mask(len);
            probes.extend([a, last, a.wrapping_sub(1), last.wrapping_add(1), a ^ 1 << 64]);
        }
        for x in probes {
            assert_eq!(dropped(x), holds(x), "step {step}: {} with {} prefixes", Ipv6Addr::from(x), members.len());
        }
    }
    drop(editor);
    assert_eq!(running_program(&store, name), before, "every change was made in place: the program is the same");
    let mut listed = store.applied(name).expect("applied").current.expect("current").elements("nets").expect("elements");
    let mut expected: Vec<String> = members.iter().map(text).collect();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);
}

/// IPv6 changes in place until the IPv6 tables' room runs out (the loader
/// leaves 256 nodes and 1,024 tails past what the prefixes need): the
/// change that finds too little reloads the set, which sizes the tables
/// again, and the changes after it are in place in the new generation.
/// The verdicts stay those of a prefix scan throughout.
#[test]
fn ipv6_in_place_out_of_room_reloads() {
    use std::net::Ipv6Addr;
    use xpol_runtime::apply::{SetChange, SetEditor};
    use xpol_runtime::store::Store;
    if !usable() {
        return;
    }
    let net = Net::new();
    let policy = apply_in_host_store(&net, "v6-room", "set nets: cidr max 5000 = { 2001:db8:bad::/48 }\nxdp /ip6.src in nets/ { drop }\nxdp { pass }\n");
    let name = &policy.0;
    let store = Store::write().expect("store");
    let first = running_program(&store, name);
    let dropped = |a: u128| {
        let prog = xpol_runtime::sys::prog_fd_by_id(running_program(&store, name)).expect("the program");
        let packet = xpol_runtime::packet::PacketSpec::udp6(Ipv6Addr::from(a), "2001:db8::1".parse().expect("address"), 1000, 53).build();
        xpol_runtime::sys::prog_test_run(std::os::fd::AsFd::as_fd(&prog), &packet, None, 1).expect("test run").retval == 1 // XDP_DROP
    };
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // /128s spread over 2001:db8::/32: a node per entry of the /32's node
    // and a tail each, soon more than the room left.
    let added: Vec<u128> = (0..1_500).map(|_| (0x2001_0db8u128 << 96) | (u128::from(next()) << 64 | u128::from(next())) & (u128::MAX >> 32)).collect();
    let mut editor = SetEditor::open(&store, name, "nets").expect("the set");
    let mut reloaded_at = None;
    for (i, &a) in added.iter().enumerate() {
        editor.change(&store, SetChange::Add(vec![format!("{}/128", Ipv6Addr::from(a))])).unwrap_or_else(|e| panic!("add {i}: {e}"));
        if reloaded_at.is_none() && running_program(&store, name) != first {
            reloaded_at = Some(i);
        }
    }
    let at = reloaded_at.expect("the room ran out once");
    assert!(at > 200, "hundreds of changes in place first: reloaded at {at}");
    let reloaded = running_program(&store, name);
    for &a in &added {
        assert!(dropped(a) && !dropped(a ^ 1) && !dropped(a ^ 1 << 100), "{}", Ipv6Addr::from(a));
    }
    assert!(dropped(0x2001_0db8_0bad_0001u128 << 64));
    // Deleting them all is in place: nothing new is needed.
    for (i, &a) in added.iter().enumerate() {
        editor.change(&store, SetChange::Delete(vec![format!("{}/128", Ipv6Addr::from(a))])).unwrap_or_else(|e| panic!("delete {i}: {e}"));
    }
    assert_eq!(running_program(&store, name), reloaded, "the deletes were made in place");
    assert!(added.iter().all(|&a| !dropped(a)) && dropped(0x2001_0db8_0bad_0001u128 << 64));
    drop(editor);
    let listed = store.applied(name).expect("applied").current.expect("current").elements("nets").expect("elements");
    assert_eq!(listed, ["2001:db8:bad::/48"]);
}

/// Two policies on one interface's TC ingress both see the traffic: the
/// first one's `pass` hands a packet on to the second (TCX_NEXT, not
/// TC_ACT_OK, which would end the chain), whose `drop` then drops the
/// stream; with the second deleted, the stream flows again.
#[test]
fn tc_policies_stack_on_one_hook() {
    if !usable() {
        return;
    }
    // Keeping a TC policy applied needs tcx links (Linux 6.6).
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut version = release.trim().split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u32>().ok());
    if (version.next().unwrap_or(0), version.next().unwrap_or(0)) < (6, 6) {
        eprintln!("SKIPPED tc_policies_stack_on_one_hook: applying TC policies needs tcx (Linux 6.6), this is {}", release.trim());
        return;
    }
    let (net, host, dir) = fixture();
    let first = write(dir.path(), "first.xpol", "tc:ingress /udp.dport == 9/ { drop }\ntc:ingress { pass }\n");
    let second = write(dir.path(), "second.xpol", "tc:ingress /udp.dport == 7/ { drop }\ntc:ingress { pass }\n");
    host.ok(&net.b, &["apply", first.to_str().expect("utf-8"), "-i", &net.vb, "--name", "first"]);
    let (sent, received) = Stream::start(&net).stop();
    assert!(sent > 0 && sent == received, "the first policy passes the stream: {received} of {sent}");
    host.ok(&net.b, &["apply", second.to_str().expect("utf-8"), "-i", &net.vb, "--name", "second"]);
    let (sent, received) = Stream::start(&net).stop();
    assert!(sent > 0 && received == 0, "the second policy sees what the first passed, and drops it: {received} of {sent}");
    let stats = stats(&host, &net, "first");
    assert!(rule_packets(&stats, "tc:ingress") >= sent, "the first policy saw the stream too: {stats}");
    host.ok(&net.b, &["delete", "second"]);
    let (sent, received) = Stream::start(&net).stop();
    assert!(sent > 0 && sent == received, "the first alone passes it again: {received} of {sent}");
}

/// A set whose room is the compiler's estimate runs out of `mid` chunks
/// after 15 /24s in new /16s: the next one finds no room in place, the
/// reload that would pack the tables finds the set full, and the element
/// is not listed (nor enforced). A delete frees a chunk, which the next
/// add takes after a grace period, in place.
#[test]
fn ipv4_in_place_out_of_room_adds_nothing() {
    if !usable() {
        return;
    }
    use std::net::Ipv4Addr;
    use xpol_runtime::apply::{SetChange, SetEditor};
    use xpol_runtime::store::Store;
    let net = Net::new();
    // 100 /24s in 10.1.0.0/16: one mid chunk; the estimate gives 16.
    let initial: Vec<String> = (0..100).map(|i| format!("10.1.{i}.0/24")).collect();
    let policy = apply_in_host_store(&net, "v4-room", &format!("set nets: cidr = {{ {} }}\nxdp /ip.src in nets/ {{ drop }}\nxdp {{ pass }}\n", initial.join(", ")));
    let name = &policy.0;
    let store = Store::write().expect("store");
    let before = running_program(&store, &name);
    let prog = xpol_runtime::sys::prog_fd_by_id(before).expect("the program");
    let dropped = |a: Ipv4Addr| drops_source(&prog, a);
    let mut editor = SetEditor::open(&store, &name, "nets").expect("the set");
    for i in 0..15 {
        editor.change(&store, SetChange::Add(vec![format!("10.{}.7.0/24", 10 + i)])).unwrap_or_else(|e| panic!("add {i}: {e}"));
    }
    assert!(dropped(Ipv4Addr::new(10, 24, 7, 1)), "the 15th /24 is enforced");
    let err = editor.change(&store, SetChange::Add(vec!["10.99.7.0/24".into()])).expect_err("no room left");
    assert!(err.to_string().contains("set `nets` is full"), "{err}");
    assert!(!dropped(Ipv4Addr::new(10, 99, 7, 1)), "not enforced");
    let listed = store.applied(&name).expect("applied").current.expect("current").elements("nets").expect("elements");
    assert_eq!(listed.len(), 115, "not listed either");
    assert!(!listed.contains(&"10.99.7.0/24".to_string()));
    editor.change(&store, SetChange::Delete(vec!["10.10.7.0/24".into()])).expect("delete");
    editor.change(&store, SetChange::Add(vec!["10.99.7.0/24".into()])).expect("room again after a delete");
    assert!(dropped(Ipv4Addr::new(10, 99, 7, 1)) && !dropped(Ipv4Addr::new(10, 10, 7, 1)) && dropped(Ipv4Addr::new(10, 1, 42, 9)));
    assert_eq!(running_program(&store, &name), before, "every change that succeeded was made in place");
}
