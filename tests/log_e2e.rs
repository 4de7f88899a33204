//! Logging end to end: real UDP datagrams between two network namespaces
//! this test creates (addresses in 198.18.0.0/15), a policy whose `log`
//! statements record some of them; `xpol run` prints the records as they
//! come and `xpol log NAME` follows an applied policy's (across a
//! replace), and `--pcap-out` writes the logged packets as a pcap that two
//! readers parse (pcap-file with etherparse, and a few lines of Python's
//! `struct`). Every command is bounded in time; the namespaces, and the
//! private bpffs of applied policies, go away even when a test fails.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::host::Host;
use common::net::{output_bounded, wait_bounded, Net};

/// Sends `N` datagrams of 20 bytes to port 9 and `M` to port 7 of
/// `argv[1]`, paced so that none is lost on the way.
const SENDER: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port, n in ((9, int(sys.argv[2])), (7, int(sys.argv[3]))):
    for i in range(n):
        s.sendto(b"x" * 20, (sys.argv[1], port)); time.sleep(0.002)
"#;

/// Reads a classic pcap (either byte order, micro- or nanosecond
/// stamps) with nothing but `struct`, and prints per packet its captured
/// and original lengths and its UDP destination port.
const PCAP_READER: &str = r#"
import struct, sys
data = open(sys.argv[1], "rb").read()
magic = data[:4]
order = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}[magic]
_, _, _, _, _, _, linktype = struct.unpack(order + "IHHiIII", data[:24])
assert linktype == 1, linktype
at = 24
while at < len(data):
    sec, frac, incl, orig = struct.unpack(order + "IIII", data[at:at + 16])
    frame = data[at + 16:at + 16 + incl]
    at += 16 + incl
    dport = struct.unpack(">H", frame[14 + 20 + 2:14 + 20 + 4])[0]
    print(incl, orig, dport)
"#;

fn usable(test: &str) -> bool {
    xpol_runtime::testing::kernel_or_skip(test)
}

fn send(net: &Net, to_discard: u32, to_echo: u32) {
    let sent = Command::new("ip")
        .args(["netns", "exec", &net.a, "timeout", "10", "python3", "-c", SENDER, &net.addr_b, &to_discard.to_string(), &to_echo.to_string()])
        .status()
        .expect("sender");
    assert!(sent.success());
}

/// The frames of a capture, read by pcap-file, each checked with
/// etherparse: IPv4 and UDP from a to b, 62 bytes long, to `port`.
fn frames_by_port(path: &Path, net: &Net) -> Vec<u16> {
    let capture = xpol_runtime::pcap::read_frames(path).expect("the capture reads");
    assert!(capture.stopped.is_none(), "{:?}", capture.stopped);
    capture
        .frames
        .iter()
        .map(|f| {
            let p = etherparse::SlicedPacket::from_ethernet(f).expect("an Ethernet frame");
            let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else { panic!("not IPv4: {f:?}") };
            assert_eq!(ip.header().destination_addr().to_string(), net.addr_b);
            let Some(etherparse::TransportSlice::Udp(u)) = &p.transport else { panic!("not UDP: {f:?}") };
            assert_eq!(f.len(), 62, "the whole datagram: 14 + 20 + 8 + 20 bytes");
            u.destination_port()
        })
        .collect()
}

/// The same capture read by Python's `struct`: (captured, original,
/// port) per packet.
fn frames_by_python(path: &Path) -> Vec<(usize, usize, u16)> {
    let out = output_bounded({
        let mut c = Command::new("timeout");
        c.args(["20", "python3", "-c", PCAP_READER]).arg(path);
        c
    });
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Vec<usize> = l.split_whitespace().map(|x| x.parse().expect("a number")).collect();
            (v[0], v[1], v[2] as u16)
        })
        .collect()
}

const RUN_POLICY: &str = r#"
xdp /udp.dport == 9/ { log("discard: "); drop }
xdp /udp.dport == 7/ { log("echo: ", rate: 1/m, burst: 2); pass }
"#;

/// `xpol run` prints a line per record as the datagrams arrive (the
/// rate capping one `log`), and `--pcap-out` writes them as a pcap, mode
/// 0600, renamed into place when it stops.
#[test]
fn run_prints_records_of_real_traffic_and_writes_a_pcap() {
    if !usable("run_prints_records_of_real_traffic_and_writes_a_pcap") {
        return;
    }
    let net = Net::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("p.xpol");
    std::fs::write(&policy, RUN_POLICY).expect("write policy");
    let capture = dir.path().join("logged.pcap");
    let mut run = Command::new("ip")
        .args(["netns", "exec", &net.b, "timeout", "60", env!("CARGO_BIN_EXE_xpol"), "run"])
        .arg(&policy)
        .args(["-i", &net.vb, "--interval", "1", "--duration", "6", "--pcap-out"])
        .arg(&capture)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start xpol run");
    // Attached once it says so.
    let mut err = BufReader::new(run.stderr.take().expect("stderr"));
    let mut line = String::new();
    let start = Instant::now();
    while !line.starts_with("attached") {
        line.clear();
        assert!(err.read_line(&mut line).expect("read") > 0, "xpol run ended before attaching");
        assert!(start.elapsed() < Duration::from_secs(30));
    }
    send(&net, 10, 5);
    assert!(wait_bounded(&mut run, Duration::from_secs(30)).success());
    let mut out = String::new();
    run.stdout.take().expect("stdout").read_to_string(&mut out).expect("read");
    let mut rest = String::new();
    err.read_to_string(&mut rest).expect("read");
    let logs: Vec<&str> = out.lines().filter(|l| l.starts_with("log ")).collect();
    let addr_a = format!("{}.1", net.addr_b.rsplit_once('.').expect("a dotted quad").0);
    let discard = format!("discard: {addr_a}:");
    let to_discard: Vec<&&str> = logs.iter().filter(|l| l.contains(&discard) && l.contains(&format!("> {}:9 udp", net.addr_b))).collect();
    assert_eq!(to_discard.len(), 10, "a record per datagram to port 9:\n{out}");
    assert!(to_discard.iter().all(|l| l.contains("62 bytes on") && l.contains(&net.vb) && l.contains("(xdp)") && l.contains("p.xpol:2 drop")), "{out}");
    let to_echo = logs.iter().filter(|l| l.contains("echo: ") && l.contains(":7 udp") && l.ends_with("p.xpol:3 pass")).count();
    assert_eq!(to_echo, 2, "the rate lets the burst through:\n{out}");
    assert_eq!(logs.len(), 12, "{out}");
    assert!(rest.contains("12 log records"), "{rest}");
    // The capture: the same packets, whole (62 < 128 bytes), in order.
    let mut want = vec![9u16; 10];
    want.extend([7, 7]);
    assert_eq!(frames_by_port(&capture, &net), want);
    let python: Vec<(usize, usize, u16)> = frames_by_python(&capture);
    assert_eq!(python, want.iter().map(|&p| (62, 62, p)).collect::<Vec<_>>());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&capture).expect("capture").permissions().mode() & 0o777, 0o600, "captured traffic is root's to read");
    let left: Vec<String> = std::fs::read_dir(dir.path()).expect("dir").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left.len(), 2, "no temporary file left: {left:?}");
}

/// `xpol log NAME` prints an applied policy's records as JSON, follows it
/// when it is applied again (the new generation's ring), and its
/// `--pcap-out` holds every record of both.
#[test]
fn log_follows_an_applied_policy_across_a_replace() {
    if !usable("log_follows_an_applied_policy_across_a_replace") {
        return;
    }
    let (net, host, dir) = (Net::new(), Host::new(), tempfile::tempdir().expect("tempdir"));
    let first = dir.path().join("first.xpol");
    std::fs::write(&first, "xdp /udp.dport == 9/ { log(\"first: \"); drop }\n").expect("write");
    let second = dir.path().join("second.xpol");
    std::fs::write(&second, "xdp /udp.dport == 7/ { log(\"second: \") }\nxdp /udp.dport == 9/ { drop }\n").expect("write");
    let capture = dir.path().join("followed.pcap");
    host.ok(&net.b, &["apply", first.to_str().expect("utf-8"), "-i", &net.vb, "--name", "logged"]);
    let mut follower = host.command(&net.b, env!("CARGO_BIN_EXE_xpol"));
    let mut follower = follower
        .args(["log", "logged", "--json", "--duration", "12", "--pcap-out"])
        .arg(&capture)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start xpol log");
    let mut err = BufReader::new(follower.stderr.take().expect("stderr"));
    let mut line = String::new();
    err.read_line(&mut line).expect("read");
    assert!(line.starts_with("following the log of `logged`"), "{line}");
    send(&net, 4, 3);
    host.ok(&net.b, &["apply", second.to_str().expect("utf-8"), "-i", &net.vb, "--name", "logged"]);
    // The follower notices within a second or so; it says so.
    line.clear();
    err.read_line(&mut line).expect("read");
    assert!(line.contains("was replaced: following generation"), "{line}");
    send(&net, 2, 5);
    assert!(wait_bounded(&mut follower, Duration::from_secs(40)).success());
    let mut out = String::new();
    follower.stdout.take().expect("stdout").read_to_string(&mut out).expect("read");
    let records: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    let prefixes: Vec<&str> = records.iter().map(|r| r["log"]["prefix"].as_str().expect("prefix")).collect();
    assert_eq!(prefixes, [vec!["first: "; 4], vec!["second: "; 5]].concat(), "{out}");
    for r in &records {
        let log = &r["log"];
        assert_eq!((log["packet_len"].as_u64(), log["captured"].as_u64(), log["hook"].as_str()), (Some(62), Some(62), Some("xdp")), "{r}");
        assert_eq!(log["interface"], net.vb.as_str(), "{r}");
    }
    assert_eq!((records[0]["log"]["verdict"].as_str(), records[4]["log"]["verdict"].as_str()), (Some("drop"), Some("none")));
    assert!(records[0]["log"]["summary"].as_str().is_some_and(|s| s.ends_with(&format!("{}:9 udp", net.addr_b))), "{}", records[0]);
    let mut want = vec![9u16; 4];
    want.extend([7; 5]);
    assert_eq!(frames_by_port(&capture, &net), want);
    // The report lists the `log` with what it lost (nothing: it was read).
    let report: serde_json::Value = serde_json::from_str(&host.ok(&net.b, &["stats", "logged", "--json"])).expect("JSON");
    assert_eq!((report["logs"][0]["prefix"].as_str(), report["logs"][0]["lost"].as_u64(), report["logs"][0]["line"].as_u64()), (Some("second: "), Some(0), Some(1)), "{report}");
    host.ok(&net.b, &["delete", "logged"]);
}

/// `--pcap-out` follows the rules of every output xpol writes as root: a
/// symbolic link is refused before anything is read or attached, and so
/// is a directory; nothing is created.
#[test]
fn pcap_out_refuses_links_and_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("target.pcap");
    std::fs::write(&target, "keep").expect("write");
    let link = dir.path().join("link.pcap");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    for (path, why) in [(&link, "symbolic link"), (&dir.path().to_path_buf(), "directory")] {
        let out = output_bounded({
            let mut c = Command::new(env!("CARGO_BIN_EXE_xpol"));
            c.args(["log", "no-such-policy", "--pcap-out"]).arg(path);
            c
        });
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{err}");
    }
    assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep");
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 2, "nothing created");
}
