//! Logging in the kernel (`log(...)`, docs/language.md "Logging"):
//! programs run with `BPF_PROG_TEST_RUN`, the records read back from the
//! policy's ring buffer and compared with what the reference semantics
//! says each `log` writes (rule, prefix, verdict, lengths, the packet's
//! first bytes), on XDP and TC, IPv4 and IPv6, short and long packets;
//! the verdict is the one without `log`; a rate caps the records, and a
//! full ring counts what it lost.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};
use xpol_compiler::ir;
use xpol_compiler::reference::{self, Logged, State};
use xpol_lang::ast::Hook;
use xpol_lang::meta::LogRecord;
use xpol_runtime::loader::{Action, LoadedPolicy};
use xpol_runtime::log::LogReader;
use xpol_runtime::packet::{hex, Ipv6Ext, PacketSpec};

/// A policy in the kernel with its ring's reader, its IR and a reference
/// state that follows it packet by packet.
struct Logging {
    kernel: LoadedPolicy,
    reader: LogReader,
    ir: ir::Policy,
    state: State,
    _dir: tempfile::TempDir,
}

impl Logging {
    fn new(text: &str) -> Logging {
        let (kernel, ir, dir) = common::load_text_with_ir(text);
        let reader = LogReader::open(kernel.maps()).expect("open the ring").expect("the policy logs");
        Logging { kernel, reader, ir, state: State::default(), _dir: dir }
    }

    /// Runs `packet` on `hook` in the kernel and the reference: the
    /// verdicts agree, and so do the records (all but their time and
    /// interface). Returns the kernel's verdict and records.
    fn run(&mut self, what: &str, hook: Hook, packet: &[u8]) -> (Action, Vec<LogRecord>) {
        let got = self.kernel.test_run(hook.as_str(), packet).unwrap_or_else(|e| panic!("{what}: {e}"));
        let mut records = Vec::new();
        self.reader.drain(|e| records.push(e.record.clone()));
        let want = reference::evaluate(&self.ir, hook, packet, &mut self.state);
        assert_eq!(Some(want.outcome), outcome(got.action), "{what}: verdicts differ on {}", hex(packet));
        let kernel: Vec<RecordView<'_>> = records.iter().map(|r| (r.log, r.rule, r.verdict_name(), r.packet_len, r.hook, &r.data[..])).collect();
        let reference: Vec<RecordView<'_>> = want.logs.iter().map(|l: &Logged| (l.log as u32, l.rule, l.verdict, l.packet_len as u32, hook_code(l.hook), &l.data[..])).collect();
        assert_eq!(kernel, reference, "{what}: records differ on {}", hex(packet));
        (got.action, records)
    }
}

/// What kernel and reference must agree on in a record: statement, rule,
/// verdict, packet length, hook and bytes.
type RecordView<'a> = (u32, u32, &'a str, u32, u8, &'a [u8]);

fn hook_code(h: Hook) -> u8 {
    xpol_lang::meta::hook_code(h.as_str())
}

fn outcome(a: Action) -> Option<reference::Outcome> {
    Some(match a {
        Action::Pass => reference::Outcome::Pass,
        Action::Drop => reference::Outcome::Drop,
        Action::Tx => reference::Outcome::Tx,
        Action::Abort => reference::Outcome::Abort,
        Action::Redirect => reference::Outcome::Redirect,
        Action::Other(_) => return None,
    })
}

fn a4(s: &str) -> Ipv4Addr {
    s.parse().expect("IPv4 literal")
}

fn a6(s: &str) -> Ipv6Addr {
    s.parse().expect("IPv6 literal")
}

fn telnet() -> PacketSpec {
    PacketSpec::tcp4(a4("198.18.0.1"), a4("198.18.1.1"), 1234, 23).syn()
}

const POLICY: &str = r#"
xdp /tcp.dport == 23/ { log("telnet: "); drop }
xdp /ip.proto == 17/ { log }
xdp /tcp.dport == 22/ { log("ssh: "); if ip.src == 198.18.0.1 { pass } drop }
tc:ingress /tcp.dport == 23/ { log("telnet in: "); drop }
tc:egress /tcp.dport == 23/ { log("telnet out: ") }
"#;

/// A record names its statement, rule, hook and what the rule does after
/// it; holds the packet's length and its first 128 bytes (all of a
/// shorter packet); and the verdict is the rule's.
#[test]
fn records_hold_the_rule_and_the_packets_first_bytes() {
    if !common::kernel("records_hold_the_rule_and_the_packets_first_bytes") {
        return;
    }
    let mut p = Logging::new(POLICY);
    let short = telnet().build();
    let (action, records) = p.run("telnet", Hook::Xdp, &short);
    assert_eq!(action, Action::Drop);
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!((r.log, r.rule, r.verdict_name(), r.hook), (0, 0, "drop", 0));
    assert_eq!((r.packet_len as usize, &r.data[..]), (short.len(), &short[..]), "a short packet is captured whole");
    assert_eq!(p.reader.logs()[0].prefix, "telnet: ");
    // A long one: its first 128 bytes.
    let long = telnet().payload(1000).build();
    let (_, records) = p.run("a long telnet packet", Hook::Xdp, &long);
    assert_eq!((records[0].packet_len as usize, &records[0].data[..]), (long.len(), &long[..128]));
    // No prefix, evaluation goes on (`none`), the packet passes.
    let udp = PacketSpec::udp6(a6("2001:db8::1"), a6("2001:db8::2"), 53, 5353).payload(300).build();
    let (action, records) = p.run("udp over IPv6", Hook::Xdp, &udp);
    assert_eq!(action, Action::Pass);
    assert_eq!((records[0].log, records[0].verdict_name(), records[0].data.len()), (1, "none", 128));
    // An `if` after the `log` decides: `mixed`, and both verdicts stay.
    let (action, records) = p.run("ssh from the allowed source", Hook::Xdp, &PacketSpec::tcp4(a4("198.18.0.1"), a4("198.18.1.1"), 1, 22).syn().build());
    assert_eq!((action, records[0].verdict_name()), (Action::Pass, "mixed"));
    let (action, _) = p.run("ssh from another", Hook::Xdp, &PacketSpec::tcp4(a4("198.18.0.2"), a4("198.18.1.1"), 1, 22).syn().build());
    assert_eq!(action, Action::Drop);
    // Nothing logs what no `log` reaches.
    let (_, records) = p.run("web", Hook::Xdp, &PacketSpec::tcp4(a4("198.18.0.1"), a4("198.18.1.1"), 1, 80).syn().build());
    assert!(records.is_empty());
}

/// Short frames are captured whole, whatever their length (down to an
/// Ethernet header alone), and frames of every shape around the capture
/// size are cut at it: on XDP and on both TC hooks.
#[test]
fn short_and_odd_packets_are_captured_safely() {
    if !common::kernel("short_and_odd_packets_are_captured_safely") {
        return;
    }
    let mut p = Logging::new("xdp { log }\ntc:ingress { log(\"in \") }\ntc:egress { log(\"out \") }\n");
    let tcp6 = PacketSpec::tcp6(a6("2001:db8::1"), a6("2001:db8::2"), 1, 80).syn();
    let mut packets = vec![
        PacketSpec::ethertype(0x0806, 0).build(),
        PacketSpec::ethertype(0x0806, 28).build(),
        telnet().build(),
        tcp6.clone().ext(Ipv6Ext::HopByHop { len8: 1 }).build(),
        tcp6.clone().vlan(7).build(),
    ];
    // Every length from the Ethernet header to past the capture size.
    let full = telnet().payload(200).build();
    packets.extend((14..=140).map(|n| full[..n].to_vec()));
    for hook in [Hook::Xdp, Hook::TcIngress, Hook::TcEgress] {
        for packet in &packets {
            // The kernel builds no skb for some short frames on TC.
            if hook != Hook::Xdp && p.kernel.test_run(hook.as_str(), packet).is_err() {
                continue;
            }
            p.reader.drain(|_| {});
            let (_, records) = p.run(&format!("{} bytes on {}", packet.len(), hook.as_str()), hook, packet);
            assert_eq!(records.len(), 1);
            assert_eq!(records[0].data.len(), packet.len().min(128));
        }
    }
}

/// `rate:` caps the records (the rule still decides every packet), and
/// its bucket refills with time as a `limit`'s does.
#[test]
fn a_rate_caps_the_records_not_the_verdicts() {
    if !common::kernel("a_rate_caps_the_records_not_the_verdicts") {
        return;
    }
    let mut p = Logging::new("xdp /tcp.dport == 23/ { log(\"telnet: \", rate: 1/m, burst: 3); drop }\n");
    let packet = telnet().build();
    let mut logged = 0;
    for i in 0..20 {
        let (action, records) = p.run(&format!("telnet #{i}"), Hook::Xdp, &packet);
        assert_eq!(action, Action::Drop, "the rate limits records, not the rule");
        logged += records.len();
    }
    assert_eq!(logged, 3, "the burst, then nothing");
    assert_eq!(p.kernel.rule_counters().expect("counters")[0].packets, 20);
    // A minute later, one more.
    p.state.advance(60_000_000_000);
    p.kernel.advance_limits(60_000_000_000).expect("advance");
    let logged: usize = (0..5).map(|i| p.run(&format!("a minute later #{i}"), Hook::Xdp, &packet).1.len()).sum();
    assert_eq!(logged, 1);
    assert_eq!(p.reader.lost().expect("lost"), vec![0]);
}

/// A ring no one reads fills up: the records past it are counted as lost
/// (per `log`), not written over the unread ones, and the verdicts stay.
#[test]
fn a_full_ring_counts_what_it_lost() {
    if !common::kernel("a_full_ring_counts_what_it_lost") {
        return;
    }
    let mut p = Logging::new("xdp /tcp.dport == 23/ { log(\"telnet: \"); drop }\nxdp /ip.proto == 17/ { log(\"udp: \") }\n");
    let packet = telnet().build();
    const SENT: usize = 2500;
    for _ in 0..SENT {
        assert_eq!(p.kernel.test_run("xdp", &packet).expect("test run").action, Action::Drop);
    }
    let mut read = 0;
    p.reader.drain(|e| {
        assert_eq!(e.log.prefix, "telnet: ");
        read += 1;
    });
    let lost = p.reader.lost().expect("lost");
    // 256 KiB of 160-byte records with the kernel's 8-byte header each.
    let room = xpol_lang::meta::LOG_RING_BYTES as usize / (xpol_lang::meta::LOG_RECORD_BYTES as usize + 8);
    assert_eq!((read, lost[0] as usize, lost[1]), (room, SENT - room, 0), "the ring holds {room} records");
    // Read, it has room again.
    let (_, records) = p.run("after reading", Hook::Xdp, &packet);
    assert_eq!(records.len(), 1);
    assert_eq!(p.kernel.maps().log_lost().expect("lost"), lost, "the report's count is the reader's");
}

/// `xpol test` runs each case's packet in the kernel and the reference,
/// and compares their records with each other and with the case's
/// `, log(...)` and `, !log` (a rate's bucket held by the test's clock).
#[test]
fn xpol_test_checks_log_expectations() {
    if !common::kernel("xpol_test_checks_log_expectations") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.xpol");
    std::fs::write(
        &good,
        "xdp /tcp.dport == 23/ { log(\"telnet: \", rate: 1/m, burst: 1); drop }\nxdp /ip.proto == 17/ { log }\n\
         test \"rated\" {\n  tcp(dport: 23) => drop, log(\"telnet: \")\n  tcp(dport: 23) => drop, !log\n  after 1m\n  tcp(dport: 23) => drop, log\n  udp(dport: 53) => pass, log, !log(\"telnet: \")\n  tcp(dport: 80) => pass, !log\n}\n",
    )
    .expect("write");
    let out = common::net::output_bounded({
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_xpol"));
        c.arg("test").arg(&good);
        c
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("5 passed; 0 failed"), "{text}");
    let bad = dir.path().join("bad.xpol");
    std::fs::write(&bad, "xdp /tcp.dport == 23/ { log(\"telnet: \", rate: 1/m, burst: 1); drop }\ntest \"t\" {\n  tcp(dport: 23) => drop, log\n  tcp(dport: 23) => drop, log(\"telnet: \")\n}\n").expect("write");
    let out = common::net::output_bounded({
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_xpol"));
        c.arg("test").arg(&bad);
        c
    });
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("expected drop, log(\"telnet: \")") && err.contains("the kernel logged nothing, the reference nothing"), "{err}");
}

/// A kernel without the helpers `log` needs (before 5.18 for XDP's
/// `bpf_xdp_load_bytes`, 5.8 for the ring buffer) refuses the program:
/// the diagnostic names the helper, `log` and the version, at the `log`.
#[test]
fn an_old_kernel_is_named_with_the_version_log_needs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log.xpol");
    std::fs::write(&path, "xdp /tcp.dport == 23/ { log(\"telnet: \"); drop }\n").expect("write");
    let b = xpol_compiler::build(&path, &xpol_compiler::BuildOptions::default());
    let out = b.output.expect("compiles");
    for (id, name, version) in [(189, "bpf_xdp_load_bytes", "5.18"), (131, "bpf_ringbuf_reserve", "5.8")] {
        // What a kernel without the helper says.
        let log = format!("0: R1=ctx() R10=fp0\n0: (85) call unknown#{id}\ninvalid func unknown#{id}\nprocessed 1 insns (limit 1000000)\n");
        let d = xpol_compiler::verifier::explain("xpol_xdp", "xdp", &log, &out.object, &out.located, &b.sources, false);
        assert_eq!(d.code, "xpol::verifier::kernel_lacks");
        assert!(d.message.contains(name) && d.message.contains("`log`") && d.message.contains(&format!("Linux {version}")), "{}", d.message);
    }
    // A kernel without ring buffers refuses the map: named, at the first `log`.
    let d = xpol_compiler::verifier::explain_map("xpol_log", &std::io::Error::from_raw_os_error(22), &out);
    assert!(d.message.contains("ring buffer of the `log` statements") && d.message.contains("5.8"), "{}", d.message);
    assert_eq!(d.labels.first().map(|l| l.span), Some(out.ir.logs[0].span));
}
