//! Connection state (`ct.state`, docs/conntrack.md) in the kernel against
//! the reference semantics: packets run with `BPF_PROG_TEST_RUN` through
//! the programs that keep the table (`xdp` for what comes in, `tc:egress`
//! for what goes out) and the one that only reads it (`tc:ingress`), each
//! compared with `reference::evaluate` on verdict, rules fired and the
//! whole table after the packet. The kernel's clock cannot be moved: before
//! each packet its table is set to the reference's (each entry with the
//! time it has left), so each step checks the kernel's transition from the
//! reference's state; `after` moves the reference's clock only.
//!
//! Sequences are handshakes and closes both ways, unsolicited packets,
//! timeouts, echoes and ICMP errors, over IPv4 and IPv6, with VLAN tags,
//! IPv6 extension headers, fragments and truncated headers; and seeded
//! random sequences of all of these, on a short policy (rules specialized
//! per parse end) and a long one (rules over the facts map).

mod common;

use common::Rng;
use std::net::{IpAddr, Ipv4Addr};
use xpol_compiler::ir;
use xpol_compiler::reference::{self, Outcome, State};
use xpol_lang::ast::Hook;
use xpol_lang::meta::{CtKey, CtValue};
use xpol_runtime::conntrack::CtEntry;
use xpol_runtime::loader::{Action, LoadedPolicy};
use xpol_runtime::packet::{hex, Ipv6Ext, PacketSpec, L4};

/// A policy in the kernel and the reference, packet by packet.
struct Tracked {
    kernel: LoadedPolicy,
    ir: ir::Policy,
    state: State,
    _dir: tempfile::TempDir,
}

/// Rules that tell every state apart (each its own rule), on each hook.
const POLICY: &str = r#"
xdp /ct.state == invalid/ { drop }
xdp /ct.state == related/ { pass }
// New connections from this peer to port 53 are refused: not recorded.
xdp /ct.state == new && ip.src == 198.18.0.10 && l4.dport == 53/ { drop }
xdp /ct.state == new/ { pass }
xdp /ct.state == established/ { pass }
// No state: not IP, a later fragment, a cut header, another protocol.
xdp { abort }

tc:ingress /ct.state == established/ { pass }
tc:ingress /ct.state in {new, related}/ { pass }
tc:ingress /ct.state != invalid/ { drop }
tc:ingress { pass }

tc:egress /ct.state == new && tcp.dport == 25/ { drop }
tc:egress /ct.state == invalid/ { drop }
tc:egress /ct.state in {established, related}/ { pass }
"#;

impl Tracked {
    fn new(text: &str) -> Tracked {
        let (kernel, ir, dir) = common::load_text_with_ir(text);
        Tracked { kernel, ir, state: State::default(), _dir: dir }
    }

    /// Runs `bytes` through `hook` in both engines from the reference's
    /// table; both must give the same verdict, fire the same rules and
    /// leave the same table. Returns the verdict.
    fn run(&mut self, what: &str, hook: Hook, bytes: &[u8]) -> reference::Evaluation {
        self.kernel.maps().ct_set(&self.state.ct_stored()).expect("set the kernel's table");
        let before = self.kernel.rule_counters().expect("counters");
        let kernel = self.kernel.test_run(hook.as_str(), bytes).unwrap_or_else(|e| panic!("{what} on {}: {e}", hook.as_str())).action;
        let after = self.kernel.rule_counters().expect("counters");
        let fired: Vec<u32> = after.iter().zip(&before).enumerate().filter(|(_, (a, b))| a.packets > b.packets).map(|(i, _)| i as u32).collect();
        let reference = reference::evaluate(&self.ir, hook, bytes, &mut self.state);
        let same = matches!(
            (kernel, reference.outcome),
            (Action::Pass, Outcome::Pass) | (Action::Drop, Outcome::Drop) | (Action::Abort, Outcome::Abort) | (Action::Tx, Outcome::Tx)
        );
        assert!(same, "{what} on {}: the kernel says {kernel:?}, the reference {:?}; packet {}", hook.as_str(), reference.outcome, hex(bytes));
        assert_eq!(fired, reference.fired, "{what} on {}: rules fired; packet {}", hook.as_str(), hex(bytes));
        let kernel_table = self.kernel.maps().ct_entries().expect("the kernel's table");
        let differences = differences(&kernel_table, &self.state.ct_stored());
        assert!(differences.is_empty(), "{what} on {}: the tables differ after packet {}:\n{}", hook.as_str(), hex(bytes), differences.join("\n"));
        reference
    }

    /// `ct.state` of the packet as the policy's rules tell it on `hook`
    /// (see [`POLICY`]), checked in both engines.
    fn state_of(&mut self, what: &str, hook: Hook, bytes: &[u8]) -> &'static str {
        let decided = self.run(what, hook, bytes).decided_by;
        self.state_name(hook, decided)
    }

    /// The state the rule that decided says (see [`POLICY`]), by its text.
    fn state_name(&self, hook: Hook, rule: Option<u32>) -> &'static str {
        let text = rule.map_or("", |r| self.ir.rules[r as usize].text.as_str());
        match (hook, text) {
            (Hook::Xdp, "xdp /ct.state == invalid/") => "invalid",
            (Hook::Xdp, "xdp /ct.state == related/") => "related",
            (Hook::Xdp, t) if t.starts_with("xdp /ct.state == new") => "new",
            (Hook::Xdp, "xdp /ct.state == established/") => "established",
            (Hook::Xdp, "xdp") => "absent",
            (Hook::TcEgress, "tc:egress /ct.state == invalid/") => "invalid",
            (Hook::TcEgress, "tc:egress /ct.state in {established, related}/") => "established or related",
            (Hook::TcEgress, t) if t.starts_with("tc:egress /ct.state == new") => "new",
            (Hook::TcEgress, "") => "new or absent",
            _ => "?",
        }
    }

    fn advance(&mut self, secs: u64) {
        self.state.advance(secs * 1_000_000_000);
    }
}

/// How the kernel's table differs from the reference's (entries, states,
/// flags, time left within a second).
fn differences(kernel: &[CtEntry], reference: &[(CtKey, CtValue, u64)]) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v, left) in reference {
        match kernel.iter().find(|e| e.key == *k) {
            None => out.push(format!("the reference has {:?} {:?}, the kernel not", k.endpoints(), v)),
            Some(e) if (e.value.state, e.value.flags) != (v.state, v.flags) => out.push(format!("{}: kernel state {} flags {:#x}, reference state {} flags {:#x}", e.describe(), e.value.state, e.value.flags, v.state, v.flags)),
            Some(e) if e.expires_in_ns.abs_diff(*left) > 1_000_000_000 => out.push(format!("{}: the reference's expires in {} ms", e.describe(), left / 1_000_000)),
            Some(_) => {}
        }
    }
    for e in kernel.iter().filter(|e| !reference.iter().any(|(k, _, _)| *k == e.key)) {
        out.push(format!("the kernel has {}, the reference not", e.describe()));
    }
    out
}

const HOST4: &str = "198.18.0.2";
const HOST6: &str = "2001:db8::2";

fn a4(s: &str) -> Ipv4Addr {
    s.parse().expect("IPv4 literal")
}


const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> PacketSpec {
    match (src.parse::<IpAddr>().expect("address"), dst.parse::<IpAddr>().expect("address")) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketSpec::tcp4(s, d, sport, dport).flags(flags),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketSpec::tcp6(s, d, sport, dport).flags(flags),
        _ => panic!("one family"),
    }
}

fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> PacketSpec {
    match (src.parse::<IpAddr>().expect("address"), dst.parse::<IpAddr>().expect("address")) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketSpec::udp4(s, d, sport, dport),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketSpec::udp6(s, d, sport, dport),
        _ => panic!("one family"),
    }
}

/// An ICMP or ICMPv6 message of `ty` whose rest of header holds `id`,
/// followed by `body`.
fn icmp(src: &str, dst: &str, ty: u8, id: u16, body: &[u8]) -> PacketSpec {
    let mut bytes = vec![ty, 0, 0, 0];
    bytes.extend(id.to_be_bytes());
    bytes.extend([0, 1]);
    bytes.extend(body);
    match (src.parse::<IpAddr>().expect("address"), dst.parse::<IpAddr>().expect("address")) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut p = PacketSpec::icmp4(s, d, ty, 0);
            p.l4 = L4::Raw { protocol: 1, bytes };
            p
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut p = PacketSpec::icmp6(s, d, ty, 0);
            p.l4 = L4::Raw { protocol: 58, bytes };
            p
        }
        _ => panic!("one family"),
    }
}

/// An ICMP error (destination unreachable: type 3, ICMPv6 1) from `from`
/// to `to` quoting `quoted`'s IP header and `keep` bytes after it.
fn error_about(from: &str, to: &str, quoted: &PacketSpec, keep: usize) -> PacketSpec {
    let q = quoted.build();
    let layout = quoted.layout();
    let end = (layout.l4 + keep).min(q.len());
    let v6 = from.contains(':');
    icmp(from, to, if v6 { 1 } else { 3 }, 0, &q[layout.l3..end])
}

/// A handshake out, data, a close, and what comes after, on IPv4 and
/// IPv6, plain and VLAN-tagged.
#[test]
fn outgoing_connection_lifecycle() {
    if !common::kernel("outgoing_connection_lifecycle") {
        return;
    }
    for (host, peer) in [(HOST4, "198.18.0.9"), (HOST6, "2001:db8::9")] {
        for vlan in [None, Some(7)] {
            let mut t = Tracked::new(POLICY);
            let tag = |p: PacketSpec| match vlan {
                Some(id) => p.vlan(id),
                None => p,
            };
            let out = |f: u8| tag(tcp(host, peer, 40000, 443, f)).build();
            let back = |f: u8| tag(tcp(peer, host, 443, 40000, f)).build();
            let what = format!("{host} vlan {vlan:?}");
            // Unsolicited before the connection exists.
            assert_eq!(t.state_of(&what, Hook::Xdp, &back(SYN | ACK)), "invalid");
            assert_eq!(t.state_of(&what, Hook::TcEgress, &out(SYN)), "new or absent");
            assert_eq!(t.state_of(&what, Hook::Xdp, &back(SYN | ACK)), "established");
            // The host's ACK completes it; data both ways.
            assert_eq!(t.state_of(&what, Hook::TcEgress, &out(ACK)), "established or related");
            assert_eq!(t.state_of(&what, Hook::Xdp, &back(PSH | ACK)), "established");
            // tc:ingress reads the table the xdp program keeps.
            assert_eq!(t.run(&what, Hook::TcIngress, &back(ACK)).outcome, Outcome::Pass);
            // Close from the peer, then the host; then a new SYN reopens.
            assert_eq!(t.state_of(&what, Hook::Xdp, &back(FIN | ACK)), "established");
            assert_eq!(t.state_of(&what, Hook::TcEgress, &out(FIN | ACK)), "established or related");
            t.advance(121);
            assert_eq!(t.state_of(&what, Hook::Xdp, &back(ACK)), "new", "time-wait expired: an ACK is picked up as new");
        }
    }
}

/// A connection to a service of the host: the SYN comes in as new, the
/// host answers out as established; a SYN that a rule drops is not
/// recorded.
#[test]
fn incoming_connection() {
    if !common::kernel("incoming_connection") {
        return;
    }
    let mut t = Tracked::new(POLICY);
    let peer = "198.18.0.9";
    assert_eq!(t.state_of("syn in", Hook::Xdp, &tcp(peer, HOST4, 50000, 22, SYN).build()), "new");
    assert_eq!(t.state_of("syn again", Hook::Xdp, &tcp(peer, HOST4, 50000, 22, SYN).build()), "new");
    assert_eq!(t.state_of("syn-ack out", Hook::TcEgress, &tcp(HOST4, peer, 22, 50000, SYN | ACK).build()), "established or related");
    assert_eq!(t.state_of("ack in", Hook::Xdp, &tcp(peer, HOST4, 50000, 22, ACK).build()), "established");
    // A dropped new packet leaves nothing: its answer would be invalid.
    assert_eq!(t.state_of("refused", Hook::Xdp, &udp("198.18.0.10", HOST4, 5000, 53).build()), "new");
    assert_eq!(t.state.ct_stored().len(), 1);
    // RST closes; 10 s later the connection is gone.
    assert_eq!(t.state_of("rst", Hook::Xdp, &tcp(peer, HOST4, 50000, 22, RST).build()), "established");
    t.advance(10);
    assert!(t.state.ct_stored().is_empty());
    assert_eq!(t.state_of("fin after", Hook::Xdp, &tcp(peer, HOST4, 50000, 22, FIN | ACK).build()), "invalid");
}

/// UDP and echoes: new until answered, then established; timeouts of 30 s
/// unanswered and 120 s answered; an echo reply nobody asked for is
/// invalid.
#[test]
fn udp_and_echo() {
    if !common::kernel("udp_and_echo") {
        return;
    }
    let mut t = Tracked::new(POLICY);
    let dns = "198.18.0.53";
    assert_eq!(t.state_of("query", Hook::TcEgress, &udp(HOST4, dns, 5353, 53).build()), "new or absent");
    t.advance(29);
    assert_eq!(t.state_of("answer", Hook::Xdp, &udp(dns, HOST4, 53, 5353).build()), "established");
    t.advance(119);
    assert_eq!(t.state_of("late answer", Hook::Xdp, &udp(dns, HOST4, 53, 5353).build()), "established");
    t.advance(120);
    assert_eq!(t.state_of("too late", Hook::Xdp, &udp(dns, HOST4, 53, 5353).build()), "new");
    // Echo over IPv6, by identifier.
    let peer = "2001:db8::9";
    assert_eq!(t.state_of("unasked reply", Hook::Xdp, &icmp(peer, HOST6, 129, 7, &[]).build()), "invalid");
    assert_eq!(t.state_of("request", Hook::TcEgress, &icmp(HOST6, peer, 128, 7, &[]).build()), "new or absent");
    assert_eq!(t.state_of("reply", Hook::Xdp, &icmp(peer, HOST6, 129, 7, &[]).build()), "established");
    assert_eq!(t.state_of("other id", Hook::Xdp, &icmp(peer, HOST6, 129, 8, &[]).build()), "invalid");
    // The peer's own request with the same identifier is its own echo.
    assert_eq!(t.state_of("peer's request", Hook::Xdp, &icmp(peer, HOST6, 128, 7, &[]).build()), "new");
    t.advance(30);
    assert_eq!(t.state_of("expired", Hook::Xdp, &icmp(peer, HOST6, 129, 7, &[]).build()), "invalid");
}

/// ICMP errors are related to the connection whose packet they quote,
/// whole enough to find it; otherwise invalid.
#[test]
fn errors_are_related() {
    if !common::kernel("errors_are_related") {
        return;
    }
    let mut t = Tracked::new(POLICY);
    for (host, peer, router) in [(HOST4, "198.18.0.99", "198.18.1.1"), (HOST6, "2001:db8::99", "2001:db8:1::1")] {
        let sent = udp(host, peer, 4000, 9999);
        assert_eq!(t.state_of("sent", Hook::TcEgress, &sent.build()), "new or absent");
        assert_eq!(t.state_of("unreachable", Hook::Xdp, &error_about(peer, host, &sent, 8).build()), "related");
        assert_eq!(t.state_of("from a router", Hook::Xdp, &error_about(router, host, &sent, 8).build()), "related");
        // The quote cut inside its ports; another connection's.
        assert_eq!(t.state_of("cut quote", Hook::Xdp, &error_about(router, host, &sent, 3).build()), "invalid");
        assert_eq!(t.state_of("unknown", Hook::Xdp, &error_about(router, host, &udp(host, peer, 4001, 9999), 8).build()), "invalid");
        // About an echo the host sent.
        let ping = icmp(host, peer, if host.contains(':') { 128 } else { 8 }, 9, &[]);
        assert_eq!(t.state_of("ping", Hook::TcEgress, &ping.build()), "new or absent");
        assert_eq!(t.state_of("ping unreachable", Hook::Xdp, &error_about(router, host, &ping, 8).build()), "related");
        // Related going out too: the host's own error about a connection.
        assert_eq!(t.state_of("error out", Hook::TcEgress, &error_about(host, peer, &udp(peer, host, 9999, 4000), 8).build()), "established or related");
    }
    // An IPv4 quote with options in its header.
    let sent = udp(HOST4, "198.18.0.98", 4000, 9999).ipv4(|ip| ip.options = vec![1, 1, 1, 1]);
    assert_eq!(t.state_of("sent with options", Hook::TcEgress, &sent.build()), "new or absent");
    assert_eq!(t.state_of("quote with options", Hook::Xdp, &error_about("198.18.1.1", HOST4, &sent, 8).build()), "related");
}

/// Packets without a connection state: later fragments, cut headers,
/// other protocols, neighbour discovery; first fragments and IPv6
/// extension headers are tracked.
#[test]
fn packets_without_state() {
    if !common::kernel("packets_without_state") {
        return;
    }
    let mut t = Tracked::new(POLICY);
    let peer = "198.18.0.9";
    let first = tcp(peer, HOST4, 50000, 22, SYN).frag(0, true);
    assert_eq!(t.state_of("first fragment", Hook::Xdp, &first.build()), "new");
    assert_eq!(t.state_of("later fragment", Hook::Xdp, &tcp(peer, HOST4, 50000, 22, ACK).frag(64, false).build()), "absent");
    let mut cut = tcp(peer, HOST4, 50000, 22, ACK).build();
    cut.truncate(14 + 20 + 12);
    assert_eq!(t.state_of("cut TCP header", Hook::Xdp, &cut), "absent");
    assert_eq!(t.state_of("neighbour solicitation", Hook::Xdp, &icmp("2001:db8::9", HOST6, 135, 0, &[0; 16]).build()), "absent");
    let mut gre = PacketSpec::tcp4(a4(peer), a4(HOST4), 1, 2);
    gre.l4 = L4::Raw { protocol: 47, bytes: vec![0; 8] };
    assert_eq!(t.state_of("GRE", Hook::Xdp, &gre.build()), "absent");
    assert_eq!(t.state_of("arp", Hook::Xdp, &PacketSpec::ethertype(0x0806, 28).build()), "absent");
    let ext = tcp("2001:db8::9", HOST6, 50000, 22, SYN).ext(Ipv6Ext::HopByHop { len8: 0 }).ext(Ipv6Ext::DestOpts { len8: 1 });
    assert_eq!(t.state_of("IPv6 with extension headers", Hook::Xdp, &ext.build()), "new");
    assert_eq!(t.state_of("qinq", Hook::Xdp, &tcp(peer, HOST4, 50001, 22, SYN).qinq(5, 6).build()), "new");
}

/// The table holds `conntrack flows N` connections: past that the least
/// recently used are forgotten, and their next packet is judged as if
/// they had never been (the kernel's LRU: the reference keeps every
/// entry, so this compares the kernel with itself).
#[test]
fn a_full_table_forgets_the_oldest() {
    if !common::kernel("a_full_table_forgets_the_oldest") {
        return;
    }
    let mut p = common::load_text("conntrack flows 64\nxdp /ct.state == established/ { pass }\nxdp { drop }\n");
    assert_eq!(p.meta().conntrack.as_ref().expect("a table").max_entries, 64);
    let peer = a4("198.18.0.9");
    for port in 0..1000u16 {
        let out = p.test_run("tc:egress", &PacketSpec::tcp4(a4(HOST4), peer, 10000 + port, 443).flags(SYN).build()).expect("run");
        assert_eq!(out.action, Action::Pass);
    }
    let entries = p.maps().ct_entries().expect("entries");
    assert!(entries.len() <= 64 && entries.len() >= 32, "{} entries in a table of 64", entries.len());
    let answer = |p: &mut LoadedPolicy, port: u16| p.test_run("xdp", &PacketSpec::tcp4(peer, a4(HOST4), 443, 10000 + port).flags(SYN | ACK).build()).expect("run").action;
    assert_eq!(answer(&mut p, 999), Action::Pass, "the last connection is there");
    assert_eq!(answer(&mut p, 0), Action::Drop, "the first was forgotten");
    let summary = p.maps().ct_summary().expect("summary").expect("a table");
    assert_eq!(summary.capacity, 64);
    assert_eq!(summary.states.values().sum::<u64>(), summary.entries);
    assert!(summary.states.contains_key("tcp syn_recv"), "{summary:?}");
}

/// Packets of every kind in random order and directions, with time
/// moving on, through every program: both engines agree at each step.
fn random_sequences(policy: &str, specialized: bool, seed: u64, steps: usize) {
    let mut t = Tracked::new(policy);
    assert_eq!(xpol_compiler::codegen::specialized(&t.ir), specialized, "the rules are specialized per parse end, or read the facts map");
    let mut rng = Rng(seed);
    let peers4 = ["198.18.0.9", "198.18.0.10", "198.18.0.1"];
    let peers6 = ["2001:db8::9", "2001:db8::10"];
    let ports = [22u16, 25, 53, 443, 40000, 40001];
    let flags = [SYN, SYN | ACK, ACK, PSH | ACK, FIN | ACK, FIN, RST, RST | ACK, 0, SYN | FIN];
    let mut sent: Vec<PacketSpec> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for step in 0..steps {
        if rng.below(8) == 0 {
            t.advance([1, 5, 10, 29, 30, 31, 59, 61, 119, 121, 600][rng.below(11) as usize]);
        }
        let v6 = rng.below(3) == 0;
        let (host, peer) = if v6 { (HOST6, peers6[rng.below(2) as usize]) } else { (HOST4, peers4[rng.below(3) as usize]) };
        let mut outgoing = rng.below(2) == 0;
        let (src, dst) = if outgoing { (host, peer) } else { (peer, host) };
        let (sport, dport) = (ports[rng.below(6) as usize], ports[rng.below(6) as usize]);
        let mut p = match rng.below(10) {
            0..=4 => tcp(src, dst, sport, dport, flags[rng.below(flags.len() as u64) as usize]),
            5 | 6 => udp(src, dst, sport, dport),
            7 => icmp(src, dst, [8, 0, 128, 129, 3, 11, 1, 13][rng.below(8) as usize], rng.below(2) as u16, &[]),
            _ => match sent.get(rng.below(sent.len() as u64 + 2) as usize) {
                // An error about a packet sent before, the other way.
                Some(q) if q.build().len() > 14 => {
                    // Mostly coming in, where related errors matter.
                    outgoing = rng.below(4) == 0;
                    let keep = [8, 8, 8, 4, 2][rng.below(5) as usize];
                    let from = if q.layout().l3 > 0 && matches!(q.l3, xpol_runtime::packet::L3::Ipv6(_)) { "2001:db8:1::1" } else { "198.18.1.1" };
                    let to = match &q.l3 {
                        xpol_runtime::packet::L3::Ipv4(ip) => ip.src.to_string(),
                        xpol_runtime::packet::L3::Ipv6(ip) => ip.src.to_string(),
                        _ => host.to_string(),
                    };
                    error_about(from, &to, q, keep)
                }
                _ => tcp(src, dst, sport, dport, ACK),
            },
        };
        // Often the next packet of a connection that went through: the
        // other way (a reply), or the same way again, with new flags.
        if rng.below(5) < 2 && !sent.is_empty() {
            let q = sent[rng.below(sent.len() as u64) as usize].clone();
            let back = rng.below(3) > 0;
            if let Some(next) = continuation(&q, back, flags[rng.below(flags.len() as u64) as usize]) {
                outgoing = matches!(&next.l3, xpol_runtime::packet::L3::Ipv4(ip) if ip.src.to_string() == HOST4)
                    || matches!(&next.l3, xpol_runtime::packet::L3::Ipv6(ip) if ip.src.to_string() == HOST6);
                p = next;
            }
        }
        match rng.below(12) {
            0 => p = p.vlan(3),
            1 => p = p.qinq(3, 4),
            2 if !v6 => p = p.frag(0, true),
            3 => p = p.frag(64, false),
            4 if v6 => p = p.ext(Ipv6Ext::HopByHop { len8: 0 }),
            _ => {}
        }
        let mut bytes = p.build();
        let hook = if outgoing { Hook::TcEgress } else if rng.below(4) == 0 { Hook::TcIngress } else { Hook::Xdp };
        // Cut short: anywhere past the Ethernet header on XDP; on TC past
        // the IP header, as the kernel test-runs no frame whose IP header
        // is cut there.
        let shortest = if hook == Hook::Xdp { 14 } else { p.layout().l4.max(14) };
        if rng.below(16) == 0 && bytes.len() > shortest + 1 {
            let cut = shortest + rng.below((bytes.len() - shortest) as u64) as usize;
            bytes.truncate(cut);
        }
        let e = t.run(&format!("seed {seed} step {step}"), hook, &bytes);
        if hook == Hook::Xdp {
            seen.insert(t.state_name(hook, e.decided_by));
        }
        // What errors quote: packets that went through.
        if e.outcome == Outcome::Pass {
            sent.push(p);
            if sent.len() > 8 {
                sent.remove(0);
            }
        }
    }
    // Every state came up (on the xdp program's rules), not only the
    // easy ones.
    let all: std::collections::BTreeSet<&str> = ["absent", "established", "invalid", "new", "related"].into();
    assert_eq!(seen, all, "seed {seed}: the states the sequence reached");
}

/// The packet after `q` in its connection: the other way (`back`: the
/// addresses and ports swapped, an echo request answered) or the same
/// way; TCP with `flags`. `None` for what has no next packet here.
fn continuation(q: &PacketSpec, back: bool, flags: u8) -> Option<PacketSpec> {
    use xpol_runtime::packet::L3;
    let mut p = PacketSpec { vlans: Vec::new(), ..q.clone() };
    match &mut p.l3 {
        L3::Ipv4(ip) => {
            ip.more_fragments = false;
            ip.frag_offset = 0;
            if back {
                std::mem::swap(&mut ip.src, &mut ip.dst);
            }
        }
        L3::Ipv6(ip) => {
            ip.ext.clear();
            if back {
                std::mem::swap(&mut ip.src, &mut ip.dst);
            }
        }
        L3::Other { .. } => return None,
    }
    match &mut p.l4 {
        L4::Tcp(t) => {
            if back {
                std::mem::swap(&mut t.sport, &mut t.dport);
            }
            t.flags = flags;
        }
        L4::Udp { sport, dport } if back => std::mem::swap(sport, dport),
        L4::Udp { .. } => {}
        L4::Raw { protocol: 1 | 58, bytes } if back => {
            bytes[0] = match bytes[0] {
                8 => 0,
                0 => 8,
                128 => 129,
                129 => 128,
                _ => return None,
            }
        }
        L4::Raw { protocol: 1 | 58, .. } => {}
        _ => return None,
    }
    Some(p)
}

#[test]
fn random_sequences_specialized() {
    if !common::kernel("random_sequences_specialized") {
        return;
    }
    for seed in 1..=6 {
        random_sequences(POLICY, true, seed, 300);
    }
}

/// The same on a policy too long to specialize: the rules read the facts
/// from a map, and the shared counting tail passes through the table's
/// write.
#[test]
fn random_sequences_long_policy() {
    if !common::kernel("random_sequences_long_policy") {
        return;
    }
    let filler: String = (0..70).map(|i| format!("xdp /udp.dport == {}/ {{ drop }}\n", 7000 + i)).collect();
    let policy = format!("{filler}{POLICY}");
    for seed in 11..=13 {
        random_sequences(&policy, false, seed, 300);
    }
}
