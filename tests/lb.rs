//! The load balancer (`pool` and `lb(...)`, issue 13) in the kernel.
//!
//! - Frames (`BPF_PROG_TEST_RUN`): every encapsulation (4in4, 6in6, 4in6,
//!   6in4, GUE over IPv4 and IPv6 with IPv4 and IPv6 inside) taken apart
//!   with etherparse, each checksum verified (GUE's over IPv6 on covered,
//!   summed, corrupt and overlong packets too), each outer field against what docs/language.md
//!   says, the backend against the Maglev table and the whole frame against
//!   the reference semantics; the next hop from the FIB (a route and a
//!   permanent neighbour entry) and the MTU check.
//! - Crafted packets: VLAN and QinQ tags, IPv4 options, IPv6 extension
//!   headers, fragments, truncated headers, ARP, traffic for no VIP.
//! - The flow table and the pool's maps changed under it: established
//!   flows stay, flows of a removed backend move, new flows follow the
//!   table; per-backend counters; a pool without backends.
//! - Determinism: two loads in two namespaces agree on 100,000 flows.
//! - End to end: a client, the LB and three backends on one Ethernet
//!   segment (a bridge in a namespace), real TCP connections to six VIPs
//!   (IPIP and GUE, IPv4 and IPv6 outside and inside), direct server
//!   return, a backend drained and removed under a long-lived connection.
//!
//! Test runs happen in fresh network namespaces: there `bpf_fib_lookup`
//! finds no route (forwarding is off), so `lb` passes its frame up the
//! stack and the test sees exactly what the reference builds. Traffic
//! stays between the namespaces a test creates (198.18.0.0/15,
//! 2001:db8::/32); namespaces and processes go away when a test ends, also
//! when it fails.

mod common;
use common::script::Script;

use common::net::{ip, output_bounded, unique, Netns};
use common::Rng;
use etherparse::{Ipv4Header, Ipv6Header, TcpHeader, UdpHeader};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::time::{Duration, Instant};
use xpol_compiler::ir;
use xpol_compiler::reference::{self, Evaluation, Outcome};
use xpol_lang::ast::Hook;
use xpol_lang::maglev;
use xpol_lang::meta::{self, PoolMeta};
use xpol_runtime::loader::{Action, LoadedPolicy, RunOutcome};
use xpol_runtime::packet::{hex, Ipv6Ext, PacketSpec, L4};

// ------------------------------------------------------------ helpers

/// A compiled policy: its IR (for the reference) and its object.
struct Compiled {
    ir: ir::Policy,
    object: Vec<u8>,
    llvm_ir: String,
}

fn compile(text: &str) -> Compiled {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lb.xpol");
    std::fs::write(&path, text).expect("write policy");
    let b = xpol_compiler::build(&path, &xpol_compiler::BuildOptions { text: true, ..Default::default() });
    let out = b.output.unwrap_or_else(|| panic!("does not compile:\n{}\n{text}", xpol_lang::render::render_human(&b.diagnostics, &b.sources, false)));
    Compiled { ir: out.ir, object: out.object, llvm_ir: out.llvm_ir }
}

impl Compiled {
    fn load(&self) -> LoadedPolicy {
        LoadedPolicy::load(&self.object).unwrap_or_else(|e| panic!("does not load: {e}"))
    }

    fn evaluate(&self, packet: &[u8]) -> Evaluation {
        reference::evaluate(&self.ir, Hook::Xdp, packet, &mut reference::State::default())
    }
}

/// A namespace of this file's own name.
fn netns() -> Netns {
    Netns::named(format!("xpol-lb{}", unique()))
}

/// The MAC address of `dev` in `ns`.
fn mac(ns: &Netns, dev: &str) -> [u8; 6] {
    let out = output_bounded({
        let mut c = Command::new("ip");
        c.args(["-n", &ns.name, "-j", "link", "show", "dev", dev]);
        c
    });
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("ip -j link show {dev}: {e}"));
    parse_mac(v[0]["address"].as_str().expect("address"))
}

fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s.split(':').map(|x| u8::from_str_radix(x, 16).expect("hex")).collect();
    v.try_into().expect("6 bytes")
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().expect("IPv4 literal")
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("IPv6 literal")
}

/// The flow hash as docs/language.md defines it, written again here.
fn flow_hash(by: By, src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8) -> u32 {
    let ports = (u32::from(sport) << 16) | u32::from(dport);
    let mut words = Vec::new();
    if by != By::Ports {
        words.extend(maglev::addr_words(&octets(src)));
    }
    if by == By::Flow {
        words.extend(maglev::addr_words(&octets(dst)));
    }
    if by != By::Src {
        words.extend([ports, u32::from(proto)]);
    }
    maglev::murmur3_words(maglev::FLOW_SEED, &words)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum By {
    Flow,
    Src,
    Ports,
}

#[derive(Clone, Copy, Debug)]
enum Src {
    Fixed(IpAddr),
    Prefix(IpAddr, u8),
}

impl Src {
    fn text(self) -> String {
        match self {
            Src::Fixed(a) => a.to_string(),
            Src::Prefix(a, l) => format!("{a}/{l}"),
        }
    }

    /// The outer source for a flow of hash `hash`: the prefix's host bits
    /// (the last 32 at most) from the hash.
    fn outer(self, hash: u32) -> IpAddr {
        match self {
            Src::Fixed(a) => a,
            Src::Prefix(a, len) => {
                let mut o = octets(a);
                let host = o.len() as u32 * 8 - u32::from(len);
                let mask = if host >= 32 { u32::MAX } else { (1u32 << host) - 1 };
                let n = o.len();
                let last = u32::from_be_bytes(o[n - 4..].try_into().expect("4 bytes")) | (hash & mask);
                o[n - 4..].copy_from_slice(&last.to_be_bytes());
                if n == 4 {
                    IpAddr::from(<[u8; 4]>::try_from(&o[..]).expect("4"))
                } else {
                    IpAddr::from(<[u8; 16]>::try_from(&o[..]).expect("16"))
                }
            }
        }
    }
}

/// A VIP rule: `xdp /ip.dst == DST/ { lb(POOL, ...) }`.
#[derive(Clone, Copy, Debug)]
struct Vip {
    what: &'static str,
    dst: &'static str,
    pool: &'static str,
    gue: Option<u16>,
    src: Src,
    by: By,
}

impl Vip {
    fn rule(&self) -> String {
        let encap = match self.gue {
            Some(p) => format!("encap: gue, port: {p}"),
            None => "encap: ipip".to_string(),
        };
        let by = match self.by {
            By::Flow => "",
            By::Src => ", by: ip.src",
            By::Ports => ", by: ports",
        };
        format!("xdp /ip.dst == {}/ {{ lb({}, {encap}, src: {}{by}) }}\n", self.dst, self.pool, self.src.text())
    }

    fn dst(&self) -> IpAddr {
        self.dst.parse().expect("VIP")
    }
}

/// A pool's backends by slot and its Maglev table, as the runtime builds it.
struct PoolTable {
    meta: PoolMeta,
    table: Vec<u32>,
}

impl PoolTable {
    fn of(p: &LoadedPolicy, name: &str) -> PoolTable {
        let meta = p.meta().pools.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("pool {name}")).clone();
        let table = xpol_runtime::lb::table(&meta).expect("table");
        PoolTable { meta, table }
    }

    fn backend(&self, hash: u32) -> IpAddr {
        let slot = self.table[(hash % self.meta.table_size) as usize];
        self.meta.backends[slot as usize].addr
    }

    fn slot_of(&self, addr: IpAddr) -> u32 {
        self.meta.backends.iter().position(|b| b.addr == addr).unwrap_or_else(|| panic!("{addr} is not a backend of {}", self.meta.name)) as u32
    }
}

/// What an encapsulated frame must be.
struct Want {
    backend: IpAddr,
    src: IpAddr,
    hash: u32,
    gue: Option<u16>,
    /// The packet's ToS / traffic class.
    tos: u8,
    /// The packet is IPv6, or IPv4 with DF.
    df: bool,
}

/// Takes an encapsulated frame apart with etherparse and checks every
/// field: Ethernet (original MACs), the outer IPv4 header (its checksum
/// too) or IPv6 header, the GUE UDP header, and the packet inside,
/// byte for byte the input's from `l3` on.
fn check_frame(what: &str, input: &[u8], l3: usize, out: &[u8], want: &Want) {
    let ctx = || format!("{what}: in {} out {}", hex(input), hex(out));
    assert_eq!(out[..12], input[..12], "{}: the Ethernet addresses stay (no next hop)", ctx());
    let inner = &input[l3..];
    let outer_v6 = want.backend.is_ipv6();
    let inner_proto = if inner[0] >> 4 == 6 { 41 } else { 4 };
    let (next, rest) = if outer_v6 {
        assert_eq!(out[12..14], [0x86, 0xdd], "{}", ctx());
        let (h, rest) = Ipv6Header::from_slice(&out[14..]).unwrap_or_else(|e| panic!("{}: outer IPv6: {e}", ctx()));
        assert_eq!(h.traffic_class, want.tos, "{}: traffic class copied", ctx());
        assert_eq!(h.flow_label.value(), want.hash & 0xf_ffff, "{}: flow label = hash & 0xfffff", ctx());
        assert_eq!(h.hop_limit, 64, "{}", ctx());
        assert_eq!(usize::from(h.payload_length), out.len() - 14 - 40, "{}: payload length", ctx());
        assert_eq!(IpAddr::from(h.source), want.src, "{}: outer source", ctx());
        assert_eq!(IpAddr::from(h.destination), want.backend, "{}: outer destination", ctx());
        (h.next_header.0, rest)
    } else {
        assert_eq!(out[12..14], [0x08, 0x00], "{}", ctx());
        let (h, rest) = Ipv4Header::from_slice(&out[14..]).unwrap_or_else(|e| panic!("{}: outer IPv4: {e}", ctx()));
        assert_eq!(h.header_len(), 20, "{}: no options", ctx());
        assert_eq!(h.header_checksum, h.calc_header_checksum(), "{}: outer IPv4 header checksum", ctx());
        assert_eq!(internet_checksum(&out[14..34]), 0, "{}: the header sums to 0xffff", ctx());
        assert_eq!((h.dscp.value() << 2) | h.ecn.value(), want.tos, "{}: ToS copied", ctx());
        assert_eq!(usize::from(h.total_len), out.len() - 14, "{}: total length", ctx());
        assert_eq!(h.identification, 0, "{}", ctx());
        assert_eq!(h.dont_fragment, want.df, "{}: DF", ctx());
        assert!(!h.more_fragments && h.fragment_offset.value() == 0, "{}", ctx());
        assert_eq!(h.time_to_live, 64, "{}", ctx());
        assert_eq!(IpAddr::from(h.source), want.src, "{}: outer source", ctx());
        assert_eq!(IpAddr::from(h.destination), want.backend, "{}: outer destination", ctx());
        (h.protocol.0, rest)
    };
    let rest = match want.gue {
        None => {
            assert_eq!(next, inner_proto, "{}: IPIP protocol", ctx());
            rest
        }
        Some(port) => {
            assert_eq!(next, 17, "{}: GUE is UDP", ctx());
            let (u, rest) = UdpHeader::from_slice(rest).unwrap_or_else(|e| panic!("{}: UDP: {e}", ctx()));
            assert_eq!(u.source_port, 0xc000 | (want.hash & 0x3fff) as u16, "{}: GUE source port", ctx());
            assert_eq!(u.destination_port, port, "{}: GUE port", ctx());
            assert_eq!(usize::from(u.length), rest.len() + 8, "{}: UDP length", ctx());
            if outer_v6 {
                assert_eq!(gue6_checksum_verifies(out), Some(true), "{}: the UDP checksum over IPv6 sums to 0xffff", ctx());
                let (h, _) = Ipv6Header::from_slice(&out[14..]).expect("outer IPv6");
                assert_eq!(Ok(u.checksum), u.calc_checksum_ipv6(&h, rest), "{}: etherparse's UDP checksum", ctx());
            } else {
                assert_eq!(u.checksum, 0, "{}: no UDP checksum over IPv4", ctx());
            }
            // GUE variant 1: the first two bits are 01, which an IP
            // version nibble of 4 or 6 gives.
            assert_eq!(rest[0] >> 6, 1, "{}: GUE variant 1", ctx());
            rest
        }
    };
    assert_eq!(rest, inner, "{}: the packet inside is the input's from its IP header on", ctx());
}

/// The one's-complement sum of `b`, inverted: 0 over a header with a
/// right checksum.
fn internet_checksum(b: &[u8]) -> u16 {
    let mut s: u32 = b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// For a frame of GUE over IPv6: whether its UDP checksum is right (the
/// one's-complement sum of the pseudo-header, the UDP header and its
/// payload, the UDP length's bytes, is 0xffff), computed here from the
/// bytes; `None` for a checksum of 0 (none) or another frame.
fn gue6_checksum_verifies(frame: &[u8]) -> Option<bool> {
    if frame.get(12..14)? != [0x86, 0xdd] || *frame.get(14 + 6)? != 17 {
        return None;
    }
    let udp = frame.get(54..)?;
    let len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    if u16::from_be_bytes([*udp.get(6)?, *udp.get(7)?]) == 0 {
        return None;
    }
    let mut bytes = frame[22..54].to_vec();
    bytes.extend((len as u32).to_be_bytes());
    bytes.extend([0, 0, 0, 17]);
    bytes.extend(udp.get(..len)?);
    Some(internet_checksum(&bytes) == 0)
}

/// Checks the checksums of an IP packet (IPv4 header; TCP or UDP over
/// IPv4 or IPv6 without extension headers, unfragmented) with etherparse.
fn check_inner_checksums(what: &str, inner: &[u8]) {
    let l4 = |proto: u8, bytes: &[u8], v4: Option<&Ipv4Header>, v6: Option<&Ipv6Header>| match proto {
        6 => {
            let (t, payload) = TcpHeader::from_slice(bytes).unwrap_or_else(|e| panic!("{what}: TCP: {e}"));
            let sum = match (v4, v6) {
                (Some(h), _) => t.calc_checksum_ipv4(h, payload),
                (_, Some(h)) => t.calc_checksum_ipv6(h, payload),
                _ => unreachable!(),
            };
            assert_eq!(t.checksum, sum.expect("size"), "{what}: inner TCP checksum");
        }
        17 => {
            let (u, payload) = UdpHeader::from_slice(bytes).unwrap_or_else(|e| panic!("{what}: UDP: {e}"));
            let sum = match (v4, v6) {
                (Some(h), _) => u.calc_checksum_ipv4(h, payload),
                (_, Some(h)) => u.calc_checksum_ipv6(h, payload),
                _ => unreachable!(),
            };
            assert_eq!(u.checksum, sum.expect("size"), "{what}: inner UDP checksum");
        }
        _ => {}
    };
    if inner[0] >> 4 == 4 {
        let (h, rest) = Ipv4Header::from_slice(inner).unwrap_or_else(|e| panic!("{what}: inner IPv4: {e}"));
        assert_eq!(h.header_checksum, h.calc_header_checksum(), "{what}: inner IPv4 header checksum");
        if !h.is_fragmenting_payload() {
            l4(h.protocol.0, &rest[..usize::from(h.total_len) - h.header_len()], Some(&h), None);
        }
    } else {
        let (h, rest) = Ipv6Header::from_slice(inner).unwrap_or_else(|e| panic!("{what}: inner IPv6: {e}"));
        l4(h.next_header.0, &rest[..usize::from(h.payload_length)], None, Some(&h));
    }
}

/// The kernel and the reference agree on `packet`: the same outcome, and
/// for `lb` the same frame (the kernel passes it up: no next hop).
fn agree(what: &str, compiled: &Compiled, kernel: &RunOutcome, packet: &[u8]) -> Evaluation {
    agree_in(what, compiled, kernel, packet, &mut reference::State::default())
}

/// [`agree`], the reference keeping its state (connections) in `state`.
fn agree_in(what: &str, compiled: &Compiled, kernel: &RunOutcome, packet: &[u8], state: &mut reference::State) -> Evaluation {
    let r = reference::evaluate(&compiled.ir, Hook::Xdp, packet, state);
    let ctx = || format!("{what}: kernel {:?}, reference {:?}; in {} out {}", kernel.action, r.outcome, hex(packet), hex(&kernel.packet));
    match r.outcome {
        Outcome::Lb => {
            let b = r.lb.as_ref().expect("balanced");
            assert_eq!(kernel.action, Action::Pass, "{}", ctx());
            assert_eq!(kernel.packet, b.frame, "{}: the kernel's frame is the reference's\n  ref {}", ctx(), hex(&b.frame));
        }
        Outcome::Pass => {
            assert_eq!(kernel.action, Action::Pass, "{}", ctx());
            assert_eq!(kernel.packet, packet, "{}: passed untouched", ctx());
        }
        Outcome::Drop => assert_eq!(kernel.action, Action::Drop, "{}", ctx()),
        other => panic!("{}: unexpected reference outcome {other:?}", ctx()),
    }
    r
}

const POOLS: &str = "pool web4 = { 198.18.1.10 weight 2, 198.18.1.11, 198.18.1.12 }
pool web6 = { 2001:db8:1::10, 2001:db8:1::11, 2001:db8:1::12 weight 3 }
";

fn random_v4(rng: &mut Rng) -> Ipv4Addr {
    Ipv4Addr::new(198, 18 + rng.below(2) as u8, rng.below(256) as u8, 1 + rng.below(254) as u8)
}

fn random_v6(rng: &mut Rng) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, rng.below(65536) as u16, 0, rng.below(65536) as u16, 0, rng.below(65536) as u16, 1 + rng.below(65535) as u16)
}

/// A random packet to `dst`: TCP, UDP or ICMP from a random source, with
/// random ToS, DF, TTL, flow label and payload. Returns the bytes and the
/// 5-tuple the hash takes.
fn random_packet(rng: &mut Rng, dst: IpAddr) -> (Vec<u8>, IpAddr, u16, u16, u8, u8, bool) {
    let (sport, dport) = (1024 + rng.below(64000) as u16, [80u16, 443, 53, 8080][rng.below(4) as usize]);
    let kind = rng.below(10);
    let tos = rng.below(256) as u8;
    let df = rng.below(2) == 1;
    let ttl = 1 + rng.below(255) as u8;
    let payload = rng.below(300) as usize;
    let (spec, src, proto) = match dst {
        IpAddr::V4(d) => {
            let s = random_v4(rng);
            let (spec, proto) = match kind {
                0..=4 => (PacketSpec::tcp4(s, d, sport, dport).syn(), 6),
                5..=8 => (PacketSpec::udp4(s, d, sport, dport), 17),
                _ => (PacketSpec::icmp4(s, d, 8, 0), 1),
            };
            (
                spec.ipv4(|ip| {
                    ip.tos = tos;
                    ip.dont_fragment = df;
                    ip.ttl = ttl;
                    ip.id = sport;
                }),
                IpAddr::V4(s),
                proto,
            )
        }
        IpAddr::V6(d) => {
            let s = random_v6(rng);
            let (spec, proto) = match kind {
                0..=4 => (PacketSpec::tcp6(s, d, sport, dport).ack(), 6),
                5..=8 => (PacketSpec::udp6(s, d, sport, dport), 17),
                _ => (PacketSpec::icmp6(s, d, 128, 0), 58),
            };
            let label = rng.below(1 << 20) as u32;
            (
                spec.ipv6(|ip| {
                    ip.traffic_class = tos;
                    ip.flow_label = label;
                    ip.hop_limit = ttl;
                }),
                IpAddr::V6(s),
                proto,
            )
        }
    };
    let (sport, dport) = if proto == 1 || proto == 58 { (0, 0) } else { (sport, dport) };
    let bytes = spec.payload(payload).build();
    (bytes, src, sport, dport, proto, tos, df || dst.is_ipv6())
}

// ------------------------------------------------------------ 1. frames

const VIPS: &[Vip] = &[
    Vip { what: "4in4", dst: "198.18.0.100", pool: "web4", gue: None, src: Src::Fixed(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))), by: By::Flow },
    Vip { what: "6in6", dst: "2001:db8::100", pool: "web6", gue: None, src: Src::Fixed(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))), by: By::Flow },
    Vip { what: "4in6, a source per flow from a /64", dst: "198.18.0.101", pool: "web6", gue: None, src: Src::Prefix(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0)), 64), by: By::Flow },
    Vip { what: "4in6, a source per flow from a /120", dst: "198.18.0.104", pool: "web6", gue: None, src: Src::Prefix(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0)), 120), by: By::Flow },
    Vip { what: "6in4, a source per flow from a /24", dst: "2001:db8::101", pool: "web4", gue: None, src: Src::Prefix(IpAddr::V4(Ipv4Addr::new(198, 18, 200, 0)), 24), by: By::Flow },
    Vip { what: "GUE, IPv4 inside", dst: "198.18.0.102", pool: "web4", gue: Some(6080), src: Src::Fixed(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))), by: By::Flow },
    Vip { what: "GUE, IPv6 inside, by ip.src", dst: "2001:db8::102", pool: "web4", gue: Some(6080), src: Src::Fixed(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))), by: By::Src },
    Vip { what: "4in4 by ports, a source per flow from a /16", dst: "198.18.0.103", pool: "web4", gue: None, src: Src::Prefix(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 0)), 16), by: By::Ports },
    Vip { what: "GUE over IPv6, IPv6 inside", dst: "2001:db8::103", pool: "web6", gue: Some(6080), src: Src::Fixed(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))), by: By::Flow },
    Vip { what: "GUE over IPv6, IPv4 inside, a source per flow from a /64", dst: "198.18.0.105", pool: "web6", gue: Some(6080), src: Src::Prefix(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0)), 64), by: By::Flow },
];

/// The VIP rules after `before`.
fn vips_policy(before: &str) -> Compiled {
    let mut text = POOLS.to_string() + before;
    for v in VIPS {
        text += &v.rule();
    }
    compile(&text)
}

/// Every encapsulation, on random TCP, UDP and ICMP packets: the frame
/// the kernel passes up (no route in a fresh namespace) taken apart and
/// checked field by field, its backend the Maglev table's for the flow
/// hash computed here, and the whole frame the reference's.
#[test]
fn encapsulations_frame_by_frame() {
    if !common::kernel("lb encapsulations") {
        return;
    }
    let compiled = vips_policy("");
    check_vips(&compiled, 0x1b_5eed, VIPS);
}

/// The same checks in the other shapes codegen gives a program: the
/// policy of all VIPs is not specialized (eight `lb`s weigh too much: the
/// facts go through the per-CPU facts map before the rules), nor is one
/// with more rules than codegen specializes; a policy of one VIP is, and
/// so is one with `lb` under `if`, after a map update.
#[test]
fn encapsulations_in_every_program_shape() {
    if !common::kernel("lb program shapes") {
        return;
    }
    let specialized = |c: &Compiled| !c.llvm_ir.contains(xpol_compiler::codegen::FACTS_MAP);
    assert!(!specialized(&vips_policy("")), "the policy of every VIP goes through the facts map");
    let many: String = (0..xpol_compiler::codegen::SPECIALIZE_MAX_RULES + 6).map(|i| format!("xdp /ip.src == 198.18.250.{i} || tcp.dport == {}/ {{ drop }}\n", 30000 + i)).collect();
    let compiled = vips_policy(&many);
    assert!(!specialized(&compiled), "more rules than codegen specializes");
    check_vips(&compiled, 0x5eed_2, VIPS);
    for (i, vip) in VIPS.iter().enumerate() {
        let compiled = compile(&format!("{POOLS}xdp /tcp.dport == 23/ {{ drop }}\n{}", vip.rule()));
        assert!(specialized(&compiled), "{}: one VIP, specialized", vip.what);
        check_vips(&compiled, 0x5eed_3 + i as u64, std::slice::from_ref(vip));
    }

    let compiled = compile(&format!(
        "{POOLS}xdp /tcp.dport == 23/ {{ drop }}\n\
         xdp /ip.dst == 198.18.0.100 || ip.dst == 2001:db8::100/ {{\n\
           @seen[ip.src] = count()\n\
           if (ip.len > 200) {{ lb(web4, encap: gue, port: 6080, src: 198.18.0.1) }} else {{ pass }}\n\
         }}\n"
    ));
    assert!(specialized(&compiled), "lb under if: specialized");
    let mut p = compiled.load();
    let ns = netns();
    let mut rng = Rng(99);
    let (mut gue, mut passed) = (0, 0);
    for i in 0..200 {
        let dst = if i % 2 == 0 { IpAddr::V4(v4("198.18.0.100")) } else { IpAddr::V6(v6("2001:db8::100")) };
        let (bytes, ..) = random_packet(&mut rng, dst);
        let out = ns.run(|| p.test_run("xdp", &bytes)).expect("test run");
        let r = agree(&format!("lb under if #{i}"), &compiled, &out, &bytes);
        assert_eq!(r.outcome == Outcome::Lb, bytes.len() - 14 > 200, "#{i}: the branch ip.len chose");
        if r.outcome == Outcome::Lb {
            assert_eq!(xpol_runtime::lb::decapsulate(&out.packet).expect("encapsulated").gue_port, Some(6080));
            gue += 1;
        } else {
            passed += 1;
        }
    }
    assert!(gue > 20 && passed > 20, "both branches ran: {gue} GUE, {passed} passed");
    // The map update before `lb` ran for every packet (none to port 23).
    let counted: u64 = p.map_entries("seen").expect("@seen").iter().map(|(_, n)| n).sum();
    assert_eq!(counted, 200, "@seen counted every packet");
}

/// `lb` and `ct.state` in one program: the connection table's key and
/// `lb`'s flow key share a stack buffer; before, the second policy needed
/// more than the kernel's 512 bytes of stack and did not compile. Each
/// loads, and decides as the reference does (its connection table kept
/// across the packets, as the kernel's is).
#[test]
fn lb_beside_connection_state() {
    if !common::kernel("lb beside ct.state") {
        return;
    }
    let cases = [
        ("GUE for new connections", "xdp /ct.state == new && ip.dst == 198.18.0.100/ { lb(web4, encap: gue, port: 6080, src: 198.18.0.1) }\n", &["198.18.0.100"][..]),
        ("NAT, then a ct.state rule", "xdp /ip.dst == 198.18.0.100 && tcp.dport == 80/ { lb(web4, nat, port: 8080) }\nxdp /ct.state == invalid/ { drop }\n", &["198.18.0.100"][..]),
    ];
    for (what, rules, dsts) in cases {
        let compiled = compile(&format!("{POOLS}{rules}"));
        let mut p = LoadedPolicy::load(&compiled.object).unwrap_or_else(|e| panic!("{what}: does not load: {e}"));
        let ns = netns();
        let mut state = reference::State::default();
        let mut rng = Rng(0x5eed_c7);
        let mut balanced = 0;
        for i in 0..200 {
            let dst: IpAddr = dsts[i % dsts.len()].parse().expect("an address");
            let (bytes, ..) = random_packet(&mut rng, dst);
            let out = ns.run(|| p.test_run("xdp", &bytes)).expect("test run");
            let r = agree_in(&format!("{what} #{i}"), &compiled, &out, &bytes, &mut state);
            balanced += usize::from(r.outcome == Outcome::Lb);
        }
        assert!(balanced > 20, "{what}: {balanced} of 200 packets balanced");
    }
}

fn check_vips(compiled: &Compiled, seed: u64, vips: &[Vip]) {
    let mut p = compiled.load();
    let tables: HashMap<&str, PoolTable> = ["web4", "web6"].into_iter().map(|n| (n, PoolTable::of(&p, n))).collect();
    let ns = netns();
    let mut rng = Rng(seed);
    for vip in vips {
        let mut used: BTreeMap<IpAddr, u32> = BTreeMap::new();
        for i in 0..60 {
            let (bytes, src, sport, dport, proto, tos, df) = random_packet(&mut rng, vip.dst());
            let what = format!("{} #{i}", vip.what);
            let out = ns.run(|| p.test_run("xdp", &bytes)).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(out.action, Action::Pass, "{what}: no next hop here: up the stack");
            let hash = flow_hash(vip.by, src, vip.dst(), sport, dport, proto);
            let t = &tables[vip.pool];
            let backend = t.backend(hash);
            let want = Want { backend, src: vip.src.outer(hash), hash, gue: vip.gue, tos, df };
            check_frame(&what, &bytes, 14, &out.packet, &want);
            check_inner_checksums(&what, &bytes[14..]);
            let r = agree(&what, compiled, &out, &bytes);
            assert_eq!(r.lb.as_ref().and_then(|b| b.backend), Some(backend), "{what}: the reference's backend");
            assert!(t.meta.backends.iter().any(|b| b.addr == backend));
            *used.entry(backend).or_default() += 1;
        }
        // By source or by flow, 60 random flows reach every backend.
        assert_eq!(used.len(), tables[vip.pool].meta.backends.len(), "{}: flows spread over every backend: {used:?}", vip.what);
    }
}

/// With a route and a permanent neighbour entry for the backends, `lb`
/// sends the frame itself: redirected to the interface the FIB names (a
/// test run comes in on `lo`), with the neighbour's MAC as destination and
/// the interface's as source; the rest is the reference's frame. A frame
/// over the way out's MTU is dropped, one that just fits is sent.
#[test]
fn next_hop_from_the_fib() {
    if !common::kernel("lb next hop from the FIB") {
        return;
    }
    let compiled = vips_policy("");
    let mut p = compiled.load();
    let ns = netns();
    let dev = format!("n{}", unique());
    let peer = format!("{dev}p");
    ns.ip(&["link", "add", &dev, "address", "02:00:00:00:aa:01", "type", "veth", "peer", "name", &peer]);
    ns.ip(&["link", "set", &dev, "up"]);
    ns.ip(&["link", "set", &peer, "up"]);
    ns.ip(&["addr", "add", "198.18.1.1/24", "dev", &dev]);
    ns.ip(&["addr", "add", "2001:db8:1::1/64", "dev", &dev, "nodad"]);
    ns.sysctl("net.ipv4.ip_forward=1");
    ns.sysctl("net.ipv6.conf.all.forwarding=1");
    let neighbour = |a: IpAddr| -> [u8; 6] {
        let last = octets(a)[octets(a).len() - 1];
        [0x02, 0, 0, 0, if a.is_ipv6() { 0x66 } else { 0x44 }, last]
    };
    for pool in &p.meta().pools {
        for b in &pool.backends {
            let mac = neighbour(b.addr).iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":");
            ns.ip(&["neigh", "add", &b.addr.to_string(), "lladdr", &mac, "dev", &dev, "nud", "permanent"]);
        }
    }
    let dev_mac = mac(&ns, &dev);
    assert_eq!(dev_mac, [2, 0, 0, 0, 0xaa, 1]);
    let mut rng = Rng(77);
    for vip in VIPS {
        for i in 0..10 {
            let (bytes, ..) = random_packet(&mut rng, vip.dst());
            let what = format!("{} #{i} with a next hop", vip.what);
            let out = ns.run(|| p.test_run("xdp", &bytes)).expect("test run");
            let r = compiled.evaluate(&bytes);
            let b = r.lb.as_ref().expect("balanced");
            let backend = b.backend.expect("a backend");
            assert_eq!(out.action, Action::Redirect, "{what}: sent to the FIB's interface; out {}", hex(&out.packet));
            assert_eq!(out.packet[..6], neighbour(backend), "{what}: destination MAC = the neighbour's");
            assert_eq!(out.packet[6..12], dev_mac, "{what}: source MAC = the interface's");
            assert_eq!(out.packet[12..], b.frame[12..], "{what}: the rest is the reference's frame");
        }
    }
    // The MTU: the outer packet (inner + 20) against the interface's 1300.
    ns.ip(&["link", "set", &dev, "mtu", "1300"]);
    let vip = VIPS[0];
    let at = |inner_len: usize| {
        let spec = PacketSpec::udp4(v4("198.18.3.3"), v4(vip.dst), 5000, 53);
        spec.payload(inner_len - 28).build()
    };
    let fits = at(1280);
    let out = ns.run(|| p.test_run("xdp", &fits)).expect("test run");
    assert_eq!(out.action, Action::Redirect, "1,300 bytes outer fit an MTU of 1,300");
    let too_big = at(1281);
    let out = ns.run(|| p.test_run("xdp", &too_big)).expect("test run");
    assert_eq!(out.action, Action::Pass, "1,301 bytes outer do not fit, and without DF: up the stack, to be fragmented");
    assert_eq!(xpol_runtime::lb::decapsulate(&out.packet).map(|e| e.inner), Some(too_big[14..].to_vec()), "encapsulated");
    let mut with_df = too_big.clone();
    with_df[14 + 6] |= 0x40;
    let sum = internet_checksum(&{
        let mut h = with_df[14..34].to_vec();
        h[10..12].copy_from_slice(&[0, 0]);
        h
    });
    with_df[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
    let out = ns.run(|| p.test_run("xdp", &with_df)).expect("test run");
    assert_eq!(out.action, Action::Tx, "with DF: fragmentation needed, back to the client");
    assert_eq!((out.packet[14 + 9], out.packet[14 + 20]), (1, 3), "ICMP destination unreachable");
    // The same for an IPv6 outer header (inner + 40), 6in6.
    let at6 = |inner_len: usize| PacketSpec::udp6(v6("2001:db8:3::3"), v6(VIPS[1].dst), 5000, 53).payload(inner_len - 48).build();
    let out = ns.run(|| p.test_run("xdp", &at6(1260))).expect("test run");
    assert_eq!(out.action, Action::Redirect, "IPv6: 1,300 bytes outer fit");
    let out = ns.run(|| p.test_run("xdp", &at6(1261))).expect("test run");
    assert_eq!(out.action, Action::Tx, "IPv6: 1,301 bytes outer do not fit: packet too big, back to the client");
    assert_eq!((out.packet[14 + 6], out.packet[14 + 40]), (58, 2), "ICMPv6 packet too big");

    // Forwarding on and no route to the backends: the FIB says "not
    // forwarded", and the stack decides: the frame passes, as built.
    let bare = netns();
    bare.sysctl("net.ipv4.ip_forward=1");
    bare.sysctl("net.ipv6.conf.all.forwarding=1");
    for vip in VIPS {
        let (bytes, ..) = random_packet(&mut rng, vip.dst());
        let out = bare.run(|| p.test_run("xdp", &bytes)).expect("test run");
        agree(&format!("{}, forwarding on, no route", vip.what), &compiled, &out, &bytes);
    }
}

// ------------------------------------------------------------ 2. crafted packets

const CRAFTED_POLICY: &str = "pool web4 = { 198.18.1.10 weight 2, 198.18.1.11, 198.18.1.12 }
pool web6 = { 2001:db8:1::10, 2001:db8:1::11, 2001:db8:1::12 weight 3 }
xdp /ip.dst == 198.18.0.100/ { lb(web4, encap: ipip, src: 198.18.0.1) }
xdp /ip.dst == 2001:db8::100/ { lb(web6, encap: ipip, src: 2001:db8::1) }
xdp /ip.dst == 198.18.0.102/ { lb(web4, encap: gue, port: 6080, src: 198.18.0.1) }
xdp /eth.type == 0x0806/ { lb(web4, encap: ipip, src: 198.18.0.1) }
";

/// Packets that are hard to parse, each through the kernel and the
/// reference: the same outcome and byte for byte the same frame.
#[test]
fn crafted_packets_match_the_reference() {
    if !common::kernel("lb crafted packets") {
        return;
    }
    let compiled = compile(CRAFTED_POLICY);
    let mut p = compiled.load();
    let t4 = PoolTable::of(&p, "web4");
    let t6 = PoolTable::of(&p, "web6");
    let ns = netns();
    let (c4, vip4, vip4g, other4) = (v4("198.18.5.5"), v4("198.18.0.100"), v4("198.18.0.102"), v4("198.18.0.200"));
    let (c6, vip6, other6) = (v6("2001:db8:5::5"), v6("2001:db8::100"), v6("2001:db8::200"));
    let mut run = |what: &str, bytes: &[u8]| -> (RunOutcome, Evaluation) {
        let out = ns.run(|| p.test_run("xdp", bytes)).unwrap_or_else(|e| panic!("{what}: {e}"));
        let r = agree(what, &compiled, &out, bytes);
        (out, r)
    };
    let backend_of = |r: &Evaluation| r.lb.as_ref().and_then(|b| b.backend);
    let tcp4 = || PacketSpec::tcp4(c4, vip4, 40000, 80).syn().payload(40);
    let tcp6 = || PacketSpec::tcp6(c6, vip6, 40000, 80).syn().payload(40);

    // VLAN and QinQ: the tags are dropped; the frame is 4 or 8 bytes
    // shorter than a tagged frame with the outer header would be.
    for (what, spec, tags) in [
        ("802.1Q IPv4", tcp4().vlan(10), 1),
        ("QinQ IPv4", tcp4().qinq(100, 10), 2),
        ("802.1Q IPv6", tcp6().vlan(4094), 1),
        ("QinQ IPv6", tcp6().qinq(7, 8), 2),
        ("802.1Q IPv4 to GUE", PacketSpec::udp4(c4, vip4g, 1, 2).vlan(5).payload(3), 1),
    ] {
        let bytes = spec.build();
        let (out, r) = run(what, &bytes);
        let backend = backend_of(&r).expect("balanced");
        let l3 = 14 + 4 * tags;
        let gue = what.contains("GUE");
        let outer = if backend.is_ipv6() { 40 } else { 20 } + if gue { 8 } else { 0 };
        assert_eq!(out.packet.len(), bytes.len() - 4 * tags + outer, "{what}: tags dropped");
        assert_eq!(out.packet[14 + outer..], bytes[l3..], "{what}: the packet from its IP header on");
        assert!(out.packet[12..14] != [0x81, 0x00] && out.packet[12..14] != [0x88, 0xa8], "{what}: no tag left");
        // The same flow untagged goes to the same backend.
        let untagged = match spec_family(&bytes, l3) {
            4 => tcp4().build(),
            _ => tcp6().build(),
        };
        if !gue {
            let (_, r2) = run(&format!("{what}, untagged"), &untagged);
            assert_eq!(backend_of(&r2), Some(backend), "{what}: the tag is not part of the flow");
        }
    }

    // IPv4 options: the header is longer; the packet inside keeps them.
    for options in [vec![1, 1, 1, 1], vec![7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0], vec![1; 40]] {
        let what = format!("IPv4 with {} bytes of options", options.len());
        let bytes = tcp4().ipv4(|ip| ip.options = options.clone()).build();
        let (out, r) = run(&what, &bytes);
        let backend = backend_of(&r).expect("balanced");
        assert_eq!(backend, t4.backend(flow_hash(By::Flow, c4.into(), vip4.into(), 40000, 80, 6)), "{what}: the ports past the options count");
        check_frame(&what, &bytes, 14, &out.packet, &Want { backend, src: "198.18.0.1".parse().unwrap(), hash: flow_hash(By::Flow, c4.into(), vip4.into(), 40000, 80, 6), gue: None, tos: 0, df: false });
    }

    // IPv6 extension headers before TCP: the ports behind them count.
    let plain6 = flow_hash(By::Flow, c6.into(), vip6.into(), 40000, 80, 6);
    for exts in [
        vec![Ipv6Ext::HopByHop { len8: 0 }],
        vec![Ipv6Ext::DestOpts { len8: 2 }],
        vec![Ipv6Ext::Routing { len8: 1 }],
        vec![Ipv6Ext::Auth { len4: 1 }],
        vec![Ipv6Ext::HopByHop { len8: 0 }, Ipv6Ext::Routing { len8: 0 }, Ipv6Ext::DestOpts { len8: 1 }],
    ] {
        let what = format!("IPv6 with {exts:?}");
        let mut spec = tcp6();
        for e in &exts {
            spec = spec.ext(*e);
        }
        let bytes = spec.build();
        let (out, r) = run(&what, &bytes);
        let backend = backend_of(&r).expect("balanced");
        assert_eq!(backend, t6.backend(plain6), "{what}: hashed on the TCP ports past the chain");
        check_frame(&what, &bytes, 14, &out.packet, &Want { backend, src: "2001:db8::1".parse().unwrap(), hash: plain6, gue: None, tos: 0, df: true });
    }

    // Fragments: the first (ports present) and later ones (none) of one
    // datagram all hash with ports 0, so they reach one backend.
    let frag4 = flow_hash(By::Flow, c4.into(), vip4.into(), 0, 0, 6);
    let frag6 = flow_hash(By::Flow, c6.into(), vip6.into(), 0, 0, 6);
    let later = |proto: u8| L4::Raw { protocol: proto, bytes: (0..64).collect() };
    for (what, bytes, want) in [
        ("IPv4 first fragment", tcp4().frag(0, true).build(), t4.backend(frag4)),
        ("IPv4 middle fragment", PacketSpec { l4: later(6), ..tcp4() }.frag(1480, true).build(), t4.backend(frag4)),
        ("IPv4 last fragment", PacketSpec { l4: later(6), ..tcp4() }.frag(2960, false).build(), t4.backend(frag4)),
        ("IPv6 first fragment", tcp6().frag(0, true).build(), t6.backend(frag6)),
        ("IPv6 last fragment", PacketSpec { l4: later(6), ..tcp6() }.frag(1448, false).build(), t6.backend(frag6)),
        ("IPv6 fragment behind a hop-by-hop header", PacketSpec { l4: later(6), ..tcp6() }.ext(Ipv6Ext::HopByHop { len8: 0 }).frag(8, true).build(), t6.backend(frag6)),
    ] {
        let (_, r) = run(what, &bytes);
        assert_eq!(backend_of(&r), Some(want), "{what}: ports 0, one backend for the datagram");
    }

    // Truncated and malformed headers.
    let whole4 = tcp4().build();
    let whole6 = tcp6().build();
    let cut = |b: &[u8], n: usize| b[..n].to_vec();
    for (what, bytes) in [
        ("IPv4 header cut", cut(&whole4, 14 + 12)),
        ("TCP header cut after the ports", cut(&whole4, 14 + 20 + 6)),
        ("IPv4 total length past the frame", tcp4().ipv4(|ip| ip.total_len = Some(1400)).build()),
        ("IPv4 total length short of the header", tcp4().ipv4(|ip| ip.total_len = Some(12)).build()),
        ("IPv4 IHL 4", tcp4().ipv4(|ip| ip.ihl = Some(4)).build()),
        ("IPv4 IHL past the frame", cut(&tcp4().ipv4(|ip| ip.options = vec![1; 40]).build(), 14 + 30)),
        ("TCP data offset 4", tcp4().tcp(|t| t.data_offset = Some(4)).build()),
        ("IPv6 header cut", cut(&whole6, 14 + 39)),
        ("TCP over IPv6 cut", cut(&whole6, 14 + 40 + 10)),
        ("IPv6 extension header cut", cut(&tcp6().ext(Ipv6Ext::DestOpts { len8: 4 }).build(), 14 + 40 + 12)),
        ("IPv6 payload length short of TCP", tcp6().ipv6(|ip| ip.payload_len = Some(8)).build()),
        ("IPv6 chain past the parser's bound", {
            let mut s = tcp6();
            for _ in 0..12 {
                s = s.ext(Ipv6Ext::DestOpts { len8: 0 });
            }
            s.build()
        }),
        ("Ethernet header only", cut(&whole4, 14)),
        ("VLAN tag cut", cut(&tcp4().vlan(3).build(), 16)),
        ("three VLAN tags", tcp4().vlan(1).vlan(2).vlan(3).build()),
        ("padded to 60 bytes", {
            let mut b = PacketSpec::udp4(c4, vip4, 9, 9).build();
            b.resize(60, 0);
            b
        }),
        ("ICMP to the VIP", PacketSpec::icmp4(c4, vip4, 8, 0).build()),
        ("IPv4 DF with ECN", tcp4().ipv4(|ip| {
            ip.dont_fragment = true;
            ip.tos = 0xb9;
        }).build()),
    ] {
        run(what, &bytes);
    }

    // Non-IP traffic reaching `lb` (the ARP rule) passes untouched; so
    // does IP traffic for no VIP.
    for (what, bytes) in [
        ("ARP reaching lb", PacketSpec::ethertype(0x0806, 28).payload(28).build()),
        ("ARP behind a VLAN tag reaching lb", PacketSpec::ethertype(0x0806, 28).payload(28).vlan(9).build()),
        ("TCP to no VIP", PacketSpec::tcp4(c4, other4, 1, 80).payload(10).build()),
        ("TCP over IPv6 to no VIP", PacketSpec::tcp6(c6, other6, 1, 80).build()),
        ("IPX", PacketSpec::ethertype(0x8137, 50).build()),
    ] {
        let out = ns.run(|| p.test_run("xdp", &bytes)).expect("test run");
        assert_eq!(out.action, Action::Pass, "{what}");
        assert_eq!(out.packet, bytes, "{what}: untouched byte for byte");
        agree(what, &compiled, &out, &bytes);
    }
}

/// Every kind of crafted packet of the test above, to the VIPs and
/// elsewhere.
fn crafted_packets() -> Vec<(String, Vec<u8>)> {
    let (c4, c6) = (v4("198.18.5.5"), v6("2001:db8:5::5"));
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut rng = Rng(0xc0ffee);
    for dst4 in [v4("198.18.0.100"), v4("198.18.0.102"), v4("198.18.0.200")] {
        let tcp4 = || PacketSpec::tcp4(c4, dst4, 40000, 80).syn().payload(40);
        let udp4 = || PacketSpec::udp4(c4, dst4, 40000, 53).payload(20);
        for (what, spec) in [
            ("TCP", tcp4()),
            ("UDP", udp4()),
            ("802.1Q", tcp4().vlan(10)),
            ("QinQ", udp4().qinq(100, 10)),
            ("three tags", tcp4().vlan(1).vlan(2).vlan(3)),
            ("options", tcp4().ipv4(|ip| ip.options = vec![7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0])),
            ("40 bytes of options behind a tag", udp4().vlan(7).ipv4(|ip| ip.options = vec![1; 40])),
            ("first fragment", tcp4().frag(0, true)),
            ("later fragment", PacketSpec { l4: L4::Raw { protocol: 6, bytes: (0..64).collect() }, ..tcp4() }.frag(1480, false)),
            ("total length past the frame", tcp4().ipv4(|ip| ip.total_len = Some(1400))),
            ("total length short of the header", tcp4().ipv4(|ip| ip.total_len = Some(12))),
            ("IHL 4", tcp4().ipv4(|ip| ip.ihl = Some(4))),
            ("TCP data offset 4", tcp4().tcp(|t| t.data_offset = Some(4))),
            ("ICMP", PacketSpec::icmp4(c4, dst4, 8, 0)),
            ("DF and ECN", tcp4().ipv4(|ip| {
                ip.dont_fragment = true;
                ip.tos = 0xb9;
            })),
        ] {
            let bytes = spec.build();
            for n in [14 + 12, 14 + 20 + 6, 14 + 20 + 19, 16] {
                if n < bytes.len() {
                    out.push((format!("{what} to {dst4}, cut to {n}"), bytes[..n].to_vec()));
                }
            }
            out.push((format!("{what} to {dst4}"), bytes));
        }
        let mut padded = udp4().payload(0).build();
        padded.resize(60, 0);
        out.push((format!("padded to 60 bytes, to {dst4}"), padded));
    }
    for dst6 in [v6("2001:db8::100"), v6("2001:db8::200")] {
        let tcp6 = || PacketSpec::tcp6(c6, dst6, 40000, 80).syn().payload(40);
        let mut chain = tcp6();
        for _ in 0..12 {
            chain = chain.ext(Ipv6Ext::DestOpts { len8: 0 });
        }
        for (what, spec) in [
            ("TCP", tcp6()),
            ("802.1Q", tcp6().vlan(4094)),
            ("QinQ", tcp6().qinq(7, 8)),
            ("hop-by-hop", tcp6().ext(Ipv6Ext::HopByHop { len8: 0 })),
            ("routing, auth", tcp6().ext(Ipv6Ext::Routing { len8: 1 }).ext(Ipv6Ext::Auth { len4: 1 })),
            ("three extension headers", tcp6().ext(Ipv6Ext::HopByHop { len8: 0 }).ext(Ipv6Ext::Routing { len8: 0 }).ext(Ipv6Ext::DestOpts { len8: 1 })),
            ("first fragment", tcp6().frag(0, true)),
            ("later fragment behind hop-by-hop", PacketSpec { l4: L4::Raw { protocol: 6, bytes: (0..64).collect() }, ..tcp6() }.ext(Ipv6Ext::HopByHop { len8: 0 }).frag(8, true)),
            ("payload length short of TCP", tcp6().ipv6(|ip| ip.payload_len = Some(8))),
            ("a chain past the parser's bound", chain),
            ("UDP", PacketSpec::udp6(c6, dst6, 1, 53)),
            ("ICMPv6", PacketSpec::icmp6(c6, dst6, 128, 0)),
        ] {
            let bytes = spec.build();
            for n in [14 + 39, 14 + 40 + 6, 14 + 40 + 12] {
                if n < bytes.len() {
                    out.push((format!("{what} to {dst6}, cut to {n}"), bytes[..n].to_vec()));
                }
            }
            out.push((format!("{what} to {dst6}"), bytes));
        }
    }
    out.push(("ARP".into(), PacketSpec::ethertype(0x0806, 28).payload(28).build()));
    out.push(("ARP behind a tag".into(), PacketSpec::ethertype(0x0806, 28).payload(28).vlan(9).build()));
    out.push(("IPX".into(), PacketSpec::ethertype(0x8137, 50).build()));
    out.push(("Ethernet header only".into(), PacketSpec::ethertype(0x0800, 0).build()));
    for i in 0..40 {
        let dst = [IpAddr::V4(v4("198.18.0.100")), IpAddr::V4(v4("198.18.0.102")), IpAddr::V6(v6("2001:db8::100"))][i % 3];
        out.push((format!("random #{i}"), random_packet(&mut rng, dst).0));
    }
    out
}

/// The crafted packets through specialized programs (one `lb` each),
/// whose parser has a path per header shape, and through the policy of
/// the test above: the kernel's frame is the reference's for each.
#[test]
fn crafted_packets_in_specialized_programs() {
    if !common::kernel("lb crafted packets, specialized") {
        return;
    }
    let packets = crafted_packets();
    let ns = netns();
    let vips = "ip.dst in {198.18.0.100, 198.18.0.102, 2001:db8::100}";
    for (name, text) in [
        ("IPIP to IPv4 backends", format!("{POOLS}xdp /{vips}/ {{ lb(web4, encap: ipip, src: 198.18.0.1) }}\n")),
        ("GUE", format!("{POOLS}xdp /{vips}/ {{ lb(web4, encap: gue, port: 6080, src: 198.18.200.0/24) }}\n")),
        ("IPIP to IPv6 backends, by ports", format!("{POOLS}xdp /tcp.dport == 22/ {{ drop }}\nxdp /{vips}/ {{ lb(web6, encap: ipip, src: 2001:db8::1, by: ports) }}\n")),
        ("lb for everything", format!("{POOLS}xdp {{ lb(web6, encap: ipip, src: 2001:db8::/96, by: ip.src) }}\n")),
        ("not specialized", CRAFTED_POLICY.to_string()),
    ] {
        let compiled = compile(&text);
        let specialized = !compiled.llvm_ir.contains(xpol_compiler::codegen::FACTS_MAP);
        assert_eq!(specialized, name != "not specialized", "{name}");
        let mut p = compiled.load();
        let mut balanced = 0;
        for (what, bytes) in &packets {
            let out = ns.run(|| p.test_run("xdp", bytes)).unwrap_or_else(|e| panic!("{what}: {e}"));
            if agree(&format!("{name}: {what}"), &compiled, &out, bytes).outcome == Outcome::Lb {
                balanced += 1;
            }
        }
        assert!(balanced > packets.len() / 3, "{name}: {balanced} of {} balanced", packets.len());
    }
}

// ------------------------------------------------------------ GUE over IPv6

const GUE6_POLICY: &str = "pool web6 = { 2001:db8:1::10, 2001:db8:1::11, 2001:db8:1::12 weight 3 }
xdp /ip.dst == 2001:db8::103/ { lb(web6, encap: gue, port: 6080, src: 2001:db8::1) }
xdp /ip.dst == 198.18.0.105/ { lb(web6, encap: gue, port: 6080, src: 2001:db8:ff::/64) }
";

/// What the outer UDP checksum of a frame of GUE over IPv6 is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outer {
    /// Right: the sum over the frame's bytes is 0xffff.
    Right,
    /// Wrong, as the packet inside's own checksums are.
    Wrong,
    /// 0, none: the frame does not hold the whole packet.
    None,
    /// The packet inside is longer than the frame: whatever the reference says.
    Any,
}

/// The outer UDP checksum of GUE over IPv6 (docs/language.md, "Load
/// balancing"), on packets whose own checksums cover them (TCP, UDP,
/// ICMP, ICMPv6: the outer one is derived from them, right exactly when
/// they are) and on those whose do not (fragments, extension headers, UDP
/// without a checksum, other protocols: summed over the bytes, at every
/// length's chunks and last bytes), and on packets longer than the frame.
/// Each frame is the reference's, and its checksum is computed here from
/// its bytes and by etherparse.
#[test]
fn gue6_outer_udp_checksums() {
    if !common::kernel("lb GUE over IPv6 checksums") {
        return;
    }
    let compiled = compile(GUE6_POLICY);
    let mut p = compiled.load();
    let ns = netns();
    let (c4, vip4, c6, vip6) = (v4("198.18.5.5"), v4("198.18.0.105"), v6("2001:db8:5::5"), v6("2001:db8::103"));
    let tcp6 = |n: usize| PacketSpec::tcp6(c6, vip6, 40000, 80).ack().payload(n);
    let udp6 = |n: usize| PacketSpec::udp6(c6, vip6, 5353, 53).payload(n);
    let tcp4 = |n: usize| PacketSpec::tcp4(c4, vip4, 40000, 80).ack().payload(n);
    let udp4 = |n: usize| PacketSpec::udp4(c4, vip4, 5353, 53).payload(n);
    let raw = |protocol: u8, n: usize| L4::Raw { protocol, bytes: (0..n).map(|i| (i * 7 + 3) as u8).collect() };
    // A byte changed at `at` (from the IP header).
    let flip = |mut b: Vec<u8>, at: usize| {
        b[14 + at] ^= 0x5a;
        b
    };
    let no_udp_checksum = |mut b: Vec<u8>, l4: usize| {
        b[14 + l4 + 6..14 + l4 + 8].copy_from_slice(&[0, 0]);
        b
    };
    let mut cases: Vec<(String, Vec<u8>, Outer)> = Vec::new();
    // Covered by their own checksums, odd lengths too.
    for n in [0, 1, 2, 3, 5, 64, 1001, 1400] {
        cases.push((format!("TCP over IPv6, {n} bytes"), tcp6(n).build(), Outer::Right));
        cases.push((format!("UDP over IPv6, {n} bytes"), udp6(n).build(), Outer::Right));
        cases.push((format!("ICMPv6 echo, {n} bytes"), PacketSpec::icmp6(c6, vip6, 128, 0).payload(n).build(), Outer::Right));
        cases.push((format!("TCP over IPv4, {n} bytes"), tcp4(n).build(), Outer::Right));
        cases.push((format!("UDP over IPv4, {n} bytes"), udp4(n).build(), Outer::Right));
        cases.push((format!("ICMP echo, {n} bytes"), PacketSpec::icmp4(c4, vip4, 8, 0).payload(n).build(), Outer::Right));
    }
    cases.push(("TCP over IPv4 with options".into(), tcp4(9).ipv4(|ip| ip.options = vec![1; 12]).build(), Outer::Right));
    cases.push(("TCP over IPv6 with ToS and a flow label".into(), tcp6(9).ipv6(|ip| {
        ip.traffic_class = 0xb9;
        ip.flow_label = 0xabcde;
        ip.hop_limit = 3;
    }).build(), Outer::Right));
    // Summed over the bytes: every chunk and every last 0 to 3 bytes.
    for n in [0, 1, 2, 3, 4, 7, 9, 15, 30, 33, 63, 126, 129, 255, 258, 511, 515, 1023, 1025, 2047, 2050, 3001] {
        cases.push((format!("IPv6 first fragment, {n} bytes"), tcp6(n).frag(0, true).build(), Outer::Right));
        cases.push((format!("IPv4 later fragment, {n} bytes"), PacketSpec { l4: raw(6, n), ..tcp4(0) }.frag(1480, false).build(), Outer::Right));
    }
    for (what, spec) in [
        ("IPv6 later fragment", PacketSpec { l4: raw(6, 101), ..tcp6(0) }.frag(1448, false)),
        ("TCP behind a hop-by-hop header", tcp6(17).ext(Ipv6Ext::HopByHop { len8: 0 })),
        ("UDP behind destination options", udp6(18).ext(Ipv6Ext::DestOpts { len8: 1 })),
        ("ICMPv6 behind routing and authentication headers", PacketSpec::icmp6(c6, vip6, 128, 0).payload(3).ext(Ipv6Ext::Routing { len8: 1 }).ext(Ipv6Ext::Auth { len4: 1 })),
        ("IPv6, no next header", PacketSpec { l4: L4::None, ..tcp6(0) }),
        ("IPv6, GRE", PacketSpec { l4: raw(47, 13), ..tcp6(0) }),
        ("IPv4 first fragment", tcp4(21).frag(0, true)),
        ("IPv4, GRE", PacketSpec { l4: raw(47, 13), ..tcp4(0) }),
        ("IPv4, UDP cut short of its header", PacketSpec { l4: raw(17, 5), ..tcp4(0) }),
    ] {
        cases.push((what.to_string(), spec.build(), Outer::Right));
    }
    cases.push(("UDP over IPv4 without a checksum".into(), no_udp_checksum(udp4(11).build(), 20), Outer::Right));
    cases.push(("UDP over IPv6 without a checksum".into(), no_udp_checksum(udp6(11).build(), 40), Outer::Right));
    // Wrong inside: wrong outside, where derived; right where summed.
    cases.push(("TCP over IPv6, a payload byte changed".into(), flip(tcp6(30).build(), 40 + 20 + 5), Outer::Wrong));
    cases.push(("UDP over IPv6, its checksum changed".into(), flip(udp6(30).build(), 40 + 6), Outer::Wrong));
    cases.push(("TCP over IPv4, its header checksum changed".into(), flip(tcp4(30).build(), 10), Outer::Wrong));
    cases.push(("ICMP, a byte changed".into(), flip(PacketSpec::icmp4(c4, vip4, 8, 0).payload(8).build(), 20 + 9), Outer::Wrong));
    cases.push(("IPv6 first fragment, a payload byte changed".into(), flip(tcp6(30).frag(0, true).build(), 40 + 8 + 20 + 5), Outer::Right));
    // Longer than the frame.
    cases.push(("hop-by-hop, payload length past the frame".into(), tcp6(10).ext(Ipv6Ext::HopByHop { len8: 0 }).ipv6(|ip| ip.payload_len = Some(1400)).build(), Outer::None));
    cases.push(("IPv4 later fragment, total length past the frame".into(), PacketSpec { l4: raw(6, 40), ..tcp4(0) }.frag(8, true).ipv4(|ip| ip.total_len = Some(1400)).build(), Outer::None));
    cases.push(("TCP over IPv6, payload length past the frame".into(), tcp6(10).ipv6(|ip| ip.payload_len = Some(1400)).build(), Outer::Any));
    cases.push(("TCP over IPv6, payload length 0".into(), tcp6(10).ipv6(|ip| ip.payload_len = Some(0)).build(), Outer::Any));

    let mut seen = BTreeMap::new();
    for (what, bytes, want) in &cases {
        let out = ns.run(|| p.test_run("xdp", bytes)).unwrap_or_else(|e| panic!("{what}: {e}"));
        let r = agree(what, &compiled, &out, bytes);
        assert_eq!(r.outcome, Outcome::Lb, "{what}: balanced");
        let checksum = u16::from_be_bytes([out.packet[60], out.packet[61]]);
        let got = match gue6_checksum_verifies(&out.packet) {
            Some(true) => Outer::Right,
            Some(false) => Outer::Wrong,
            None if checksum == 0 => Outer::None,
            None => Outer::Any,
        };
        if *want != Outer::Any {
            assert_eq!(got, *want, "{what}: the outer UDP checksum {checksum:#06x}; out {}", hex(&out.packet));
        }
        // A receiver (`lb::decapsulate`) takes a right checksum, and drops
        // a wrong one, and a datagram longer than the frame.
        let e = xpol_runtime::lb::decapsulate(&out.packet);
        match got {
            Outer::Right => {
                let e = e.unwrap_or_else(|| panic!("{what}: not taken apart: {}", hex(&out.packet)));
                assert_eq!(e.gue_port, Some(6080), "{what}");
                assert_eq!(e.inner, bytes[14..], "{what}: the packet inside");
            }
            Outer::Wrong | Outer::None => assert_eq!(e, None, "{what}: a receiver drops it"),
            Outer::Any => {}
        }
        if got == Outer::Right {
            let (h, rest) = Ipv6Header::from_slice(&out.packet[14..]).expect("outer IPv6");
            let (u, payload) = UdpHeader::from_slice(rest).expect("UDP");
            assert_eq!(Ok(u.checksum), u.calc_checksum_ipv6(&h, &payload[..usize::from(u.length) - 8]), "{what}: etherparse's UDP checksum");
        }
        *seen.entry(format!("{got:?}")).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 4, "every kind of outer checksum: {seen:?}");
}

/// The IP version of the packet at `l3`.
fn spec_family(bytes: &[u8], l3: usize) -> u8 {
    bytes[l3] >> 4
}

// ------------------------------------------------------------ 3. flow table

/// Writes a pool's maps the way a pool change does (`meta::PoolMeta`).
struct PoolWriter {
    pool: PoolMeta,
}

impl PoolWriter {
    fn new(p: &LoadedPolicy, name: &str) -> PoolWriter {
        PoolWriter { pool: PoolTable::of(p, name).meta }
    }

    /// Fills half `half` of the ring.
    fn ring(&self, p: &LoadedPolicy, half: u32, slots: &[u32]) {
        assert_eq!(slots.len(), self.pool.table_size as usize);
        for (i, s) in slots.iter().enumerate() {
            let key = half * self.pool.table_size + i as u32;
            p.maps().update(&self.pool.ring_map, &key.to_le_bytes(), &s.to_le_bytes()).expect("ring");
        }
    }

    fn activate(&self, p: &LoadedPolicy, half: u32) {
        p.maps().update(&self.pool.control_map, &0u32.to_le_bytes(), &half.to_le_bytes()).expect("control");
    }

    fn backend(&self, p: &LoadedPolicy, slot: u32, addr: IpAddr, present: bool) {
        let mut v = [0u8; 20];
        let o = octets(addr);
        v[..o.len()].copy_from_slice(&o);
        v[16..].copy_from_slice(&(if present { meta::BACKEND_PRESENT } else { 0 }).to_le_bytes());
        p.maps().update(&self.pool.backends_map, &slot.to_le_bytes(), &v).expect("backend");
    }

    /// The Maglev table of the pool with the weights `weights` (by slot).
    fn table_with(&self, weights: &[u32]) -> Vec<u32> {
        let addrs: Vec<Vec<u8>> = self.pool.backends.iter().map(|b| octets(b.addr)).collect();
        let backends: Vec<maglev::MaglevBackend> = addrs.iter().zip(weights).map(|(a, &w)| maglev::MaglevBackend { addr: a, weight: w }).collect();
        maglev::build_table(&backends, self.pool.table_size).expect("table")
    }
}

fn stats_of(p: &LoadedPolicy, pool: &str) -> xpol_runtime::lb::PoolStats {
    p.maps().pool_stats().expect("pool stats").into_iter().find(|s| s.name == pool).expect("the pool's stats")
}

const FLOW_POLICY: &str = "pool web table 251 max 8 = { 198.18.1.10, 198.18.1.11, 198.18.1.12 }
pool empty = {}
xdp /ip.dst == 198.18.0.100/ { lb(web, encap: ipip, src: 198.18.0.1) }
xdp /ip.dst == 198.18.0.200/ { lb(empty, encap: ipip, src: 198.18.0.1) }
";

/// The flow table against changes of the pool's maps: an established
/// flow keeps its backend when the ring changes; a flow whose backend
/// left is balanced again (and keeps its new backend when the old one
/// comes back); new flows follow the ring, and the control word picks the
/// half. Counters per backend, and drops for want of a backend.
#[test]
fn flow_table_and_pool_changes() {
    if !common::kernel("lb flow table") {
        return;
    }
    let compiled = compile(FLOW_POLICY);
    let mut p = compiled.load();
    let t = PoolTable::of(&p, "web");
    let ns = netns();
    let vip = v4("198.18.0.100");
    let flow = |n: u8, len: usize| PacketSpec::tcp4(Ipv4Addr::new(198, 18, 7, n), vip, 1000 + u16::from(n), 80).ack().payload(len).build();
    let send = |p: &mut LoadedPolicy, bytes: &[u8]| -> Option<IpAddr> {
        let out = ns.run(|| p.test_run("xdp", bytes)).expect("test run");
        match out.action {
            Action::Pass => Some(xpol_runtime::lb::decapsulate(&out.packet).expect("encapsulated").outer_dst),
            Action::Drop => None,
            a => panic!("unexpected {a:?}"),
        }
    };
    let hash_of = |n: u8| flow_hash(By::Flow, Ipv4Addr::new(198, 18, 7, n).into(), vip.into(), 1000 + u16::from(n), 80, 6);

    // Flow 1, three packets: one backend, one new flow.
    let first = t.backend(hash_of(1));
    let mut sent_bytes = 0;
    for len in [0, 100, 1000] {
        let b = flow(1, len);
        sent_bytes += b.len() as u64;
        assert_eq!(send(&mut p, &b), Some(first), "flow 1 goes where the table says");
    }
    let s = stats_of(&p, "web");
    let a = t.slot_of(first) as usize;
    for (i, b) in s.backends.iter().enumerate() {
        if i == a {
            assert_eq!((b.packets, b.bytes, b.new_flows, b.active_flows), (3, sent_bytes, 1, 1), "the first backend's counters: {s:?}");
        } else {
            assert_eq!((b.packets, b.bytes, b.new_flows, b.active_flows), (0, 0, 0, 0), "backend {i}: {s:?}");
        }
    }
    assert_eq!(s.no_backend, 0);

    // Every ring slot of half 0 to another backend.
    let w = PoolWriter::new(&p, "web");
    let x = (a as u32 + 1) % 3;
    let x_addr = t.meta.backends[x as usize].addr;
    w.ring(&p, 0, &vec![x; 251]);
    assert_eq!(send(&mut p, &flow(1, 10)), Some(first), "an established flow stays when the ring changes");
    // A new flow whose table slot was not the other backend's before.
    let n = (2..200).find(|&n| t.backend(hash_of(n)) != x_addr).expect("a flow the old table sent elsewhere");
    assert_eq!(send(&mut p, &flow(n, 10)), Some(x_addr), "a new flow follows the new ring");

    // The first backend leaves (its slot no longer present): flow 1 is
    // balanced again, to the ring's backend, and stays there when the
    // first backend comes back (the flow table has the new one).
    w.backend(&p, a as u32, first, false);
    assert_eq!(send(&mut p, &flow(1, 10)), Some(x_addr), "a flow whose backend left is balanced again");
    w.backend(&p, a as u32, first, true);
    assert_eq!(send(&mut p, &flow(1, 10)), Some(x_addr), "and keeps its new backend");
    let s = stats_of(&p, "web");
    assert_eq!(s.backends[x as usize].new_flows, 2, "flow n and flow 1 again: {s:?}");
    assert_eq!(s.backends[x as usize].active_flows, 2, "{s:?}");
    assert_eq!(s.backends[a].active_flows, 0, "{s:?}");

    // Half 1 to the third backend; the control word switches to it.
    let y = (a as u32 + 2) % 3;
    let y_addr = t.meta.backends[y as usize].addr;
    w.ring(&p, 1, &vec![y; 251]);
    assert_eq!(send(&mut p, &flow(201, 10)), Some(x_addr), "half 0 is still in use");
    w.activate(&p, 1);
    assert_eq!(send(&mut p, &flow(202, 10)), Some(y_addr), "the control word picks half 1");
    assert_eq!(send(&mut p, &flow(201, 10)), Some(x_addr), "flow 201 stays");
    w.activate(&p, 0);

    // A ring slot naming no backend (past `max`, or an empty slot): drop,
    // counted in the pool's last slot.
    w.ring(&p, 0, &vec![maglev::NO_BACKEND; 251]);
    let before = stats_of(&p, "web").no_backend;
    assert_eq!(send(&mut p, &flow(203, 10)), None, "no backend: dropped");
    w.ring(&p, 0, &vec![5; 251]);
    assert_eq!(send(&mut p, &flow(204, 10)), None, "an empty backend slot: dropped");
    assert_eq!(stats_of(&p, "web").no_backend, before + 2);
    assert_eq!(send(&mut p, &flow(1, 10)), Some(x_addr), "established flows are not affected");

    // A pool without backends drops and counts, as the reference says.
    let empty = PacketSpec::tcp4(v4("198.18.7.1"), v4("198.18.0.200"), 1, 80).build();
    for _ in 0..3 {
        let out = ns.run(|| p.test_run("xdp", &empty)).expect("test run");
        let r = agree("a pool without backends", &compiled, &out, &empty);
        assert_eq!(r.outcome, Outcome::Drop);
    }
    let s = stats_of(&p, "empty");
    assert_eq!((s.backends.len(), s.no_backend), (0, 3), "{s:?}");
}

const IDLE_POLICY: &str = "pool web table 251 idle 5s = { 198.18.1.10, 198.18.1.11, 198.18.1.12 }
xdp /ip.dst == 198.18.0.100/ { lb(web, encap: ipip, src: 198.18.0.1) }
";

/// Entries that end: a TCP SYN starts a connection, balanced by the table
/// whatever the flow table holds for its 5-tuple (which stays with the
/// connection's backend afterwards); a UDP entry lasts `idle` without
/// packets, then the flow is balanced again. The entry is aged by writing
/// its tick (`meta::FlowValue::seen`) rather than by waiting.
#[test]
fn flow_entries_follow_connections_and_expire_when_idle() {
    if !common::kernel("lb flow entries end") {
        return;
    }
    let compiled = compile(IDLE_POLICY);
    let mut p = compiled.load();
    let t = PoolTable::of(&p, "web");
    assert_eq!(t.meta.idle_secs, 5);
    let ns = netns();
    let vip = v4("198.18.0.100");
    let client = v4("198.18.7.1");
    let send = |p: &mut LoadedPolicy, bytes: &[u8]| -> IpAddr {
        let out = ns.run(|| p.test_run("xdp", bytes)).expect("test run");
        assert_eq!(out.action, Action::Pass, "balanced and passed up (no FIB here)");
        xpol_runtime::lb::decapsulate(&out.packet).expect("encapsulated").outer_dst
    };
    let tcp = |flags: u8| PacketSpec::tcp4(client, vip, 40000, 80).flags(flags).build();
    let udp = PacketSpec::udp4(client, vip, 40001, 53).payload(20).build();
    let tcp_first = t.backend(flow_hash(By::Flow, client.into(), vip.into(), 40000, 80, 6));
    let udp_first = t.backend(flow_hash(By::Flow, client.into(), vip.into(), 40001, 53, 17));
    assert_eq!(send(&mut p, &tcp(0x02)), tcp_first, "the SYN goes where the table says");
    assert_eq!(send(&mut p, &tcp(0x10)), tcp_first);
    assert_eq!(send(&mut p, &udp), udp_first);

    // The whole ring to a backend neither flow is on (two flows, three
    // backends: there is one).
    let w = PoolWriter::new(&p, "web");
    let other = (0..3).find(|&s| t.meta.backends[s].addr != tcp_first && t.meta.backends[s].addr != udp_first).expect("a third backend");
    let other_addr = t.meta.backends[other].addr;
    w.ring(&p, 0, &vec![other as u32; 251]);
    assert_eq!(send(&mut p, &tcp(0x10)), tcp_first, "an established connection stays");
    assert_eq!(send(&mut p, &udp), udp_first, "a UDP flow seen within `idle` stays");

    // A new connection on the same 5-tuple: the table's backend, and its
    // later segments follow it there.
    let before = stats_of(&p, "web").backends[other].new_flows;
    assert_eq!(send(&mut p, &tcp(0x02)), other_addr, "a SYN is balanced by the table");
    assert_eq!(send(&mut p, &tcp(0x10)), other_addr, "the connection's segments follow its SYN");
    assert_eq!(send(&mut p, &tcp(0x12)), other_addr, "a SYN-ACK is not a new connection");
    assert_eq!(stats_of(&p, "web").backends[other].new_flows, before + 1, "one new flow for the SYN");

    // The UDP entry, idle for longer than `idle`: no longer active, and
    // its next packet is balanced again.
    let mut key = meta::FlowKey { sport: 40001u16.to_be_bytes(), dport: 53u16.to_be_bytes(), proto: 17, family: 4, ..Default::default() };
    key.src[..4].copy_from_slice(&client.octets());
    key.dst[..4].copy_from_slice(&vip.octets());
    let now = (xpol_runtime::sys::monotonic_coarse_ns() >> meta::FLOW_TICK_SHIFT) as u32;
    let udp_slot = t.slot_of(udp_first);
    let aged = |ticks_ago: u32| {
        let mut v = udp_slot.to_le_bytes().to_vec();
        v.extend(now.wrapping_sub(ticks_ago).to_le_bytes());
        p.maps().update(&t.meta.flows_map, &flow_key_bytes(&key), &v).expect("age the entry");
    };
    let idle = meta::idle_ticks(5);
    aged(idle);
    // (The TCP connection is on `other` now: the UDP flow is the only one
    // on its backend.)
    assert_eq!(stats_of(&p, "web").backends[udp_slot as usize].active_flows, 1, "an entry idle for `idle` is still active");
    aged(idle + 2);
    let active = stats_of(&p, "web").backends[udp_slot as usize].active_flows;
    assert_eq!(active, 0, "an entry idle for longer is not counted active");
    assert_eq!(send(&mut p, &udp), other_addr, "an expired UDP flow is balanced again");
    assert_eq!(send(&mut p, &udp), other_addr, "and stays on its new backend");
}

/// A flow key's bytes as the programs write them (`meta::FlowKey`).
fn flow_key_bytes(key: &meta::FlowKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(40);
    for part in [&key.src[..], &key.dst, &key.sport, &key.dport, &[key.proto, key.family], &key.pad] {
        out.extend_from_slice(part);
    }
    out
}

// ------------------------------------------------------------ 4. determinism

/// Flows of the determinism test: 100,000, as `benches/` measures.
const DETERMINISM_FLOWS: usize = 100_000;

/// Two loads of one policy, each in a namespace of its own, send 100,000
/// random flows to the same backends, the ones the Maglev table built
/// here gives.
#[test]
fn two_loads_agree_on_every_flow() {
    if !common::kernel("lb determinism") {
        return;
    }
    let compiled = compile(
        "pool web = { 198.18.1.10 weight 3, 198.18.1.11, 198.18.1.12 weight 2, 198.18.1.13, 198.18.1.14 weight 0, 198.18.1.15 }\n\
         xdp /ip.dst == 198.18.0.100/ { lb(web, encap: ipip, src: 198.18.0.1) }\n",
    );
    let mut rng = Rng(0xdede);
    let flows: Vec<(Ipv4Addr, u16, u16, bool)> = (0..DETERMINISM_FLOWS).map(|_| (random_v4(&mut rng), 1024 + rng.below(60000) as u16, 1 + rng.below(65535) as u16, rng.below(2) == 0)).collect();
    let vip = v4("198.18.0.100");
    let backends_of = |p: &mut LoadedPolicy, ns: &Netns| -> (Vec<IpAddr>, Duration) {
        let start = Instant::now();
        let got = ns.run(|| {
            flows
                .iter()
                .map(|&(src, sport, dport, tcp)| {
                    let spec = if tcp { PacketSpec::tcp4(src, vip, sport, dport).syn() } else { PacketSpec::udp4(src, vip, sport, dport) };
                    let out = p.test_run("xdp", &spec.build()).expect("test run");
                    assert_eq!(out.action, Action::Pass);
                    xpol_runtime::lb::decapsulate(&out.packet).expect("encapsulated").outer_dst
                })
                .collect()
        });
        (got, start.elapsed())
    };
    let (ns1, ns2) = (netns(), netns());
    let mut p1 = compiled.load();
    let mut p2 = compiled.load();
    let (one, took) = backends_of(&mut p1, &ns1);
    let (two, _) = backends_of(&mut p2, &ns2);
    eprintln!("{DETERMINISM_FLOWS} flows through one load took {took:?}");
    let t = PoolTable::of(&p1, "web");
    let mut per: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for (i, ((a, b), &(src, sport, dport, tcp))) in one.iter().zip(&two).zip(&flows).enumerate() {
        assert_eq!(a, b, "flow {i} ({src}:{sport} -> :{dport}): the two loads disagree");
        let want = t.backend(flow_hash(By::Flow, src.into(), vip.into(), sport, dport, if tcp { 6 } else { 17 }));
        assert_eq!(*a, want, "flow {i}: not the Maglev table's backend");
        *per.entry(*a).or_default() += 1;
    }
    // Weights 3:1:2:1:0:1 of 8: each share within 2% of the flows.
    assert!(!per.contains_key(&"198.18.1.14".parse().unwrap()), "a backend of weight 0 gets no flows: {per:?}");
    for (addr, w) in [("198.18.1.10", 3.0), ("198.18.1.11", 1.0), ("198.18.1.12", 2.0), ("198.18.1.13", 1.0), ("198.18.1.15", 1.0)] {
        let share = per[&addr.parse::<IpAddr>().unwrap()] as f64 / DETERMINISM_FLOWS as f64;
        assert!((share - w / 8.0).abs() < 0.02, "{addr}: share {share:.3}, weight {w}/8: {per:?}");
    }
}

// ------------------------------------------------------------ 5. end to end

/// On each backend: decapsulates IPIP (raw sockets for protocol 4 over
/// IPv4, 4 and 41 over IPv6) and GUE (UDP sockets on port 6080, over IPv4
/// and IPv6) and hands the packet inside to the kernel through a TUN
/// device, since this kernel may have no `ipip` or `fou` module (the
/// kernel then checks the outer IPv4 header and the outer UDP checksum
/// over IPv6, which an ordinary UDP socket needs right, not 0, on the way
/// in, and the inner headers and TCP checksum on the way up); and answers
/// TCP on port 80 with its name, one line per line received. Exits when
/// its standard input closes.
const BACKEND: &str = r#"
import fcntl, os, select, socket, struct, subprocess, sys, threading
name = sys.argv[1]
tun = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(tun, 0x400454ca, struct.pack("16sH", b"xtun", 0x0001 | 0x1000))  # TUNSETIFF, IFF_TUN | IFF_NO_PI
subprocess.run(["ip", "link", "set", "xtun", "up"], check=True)
with open("/proc/sys/net/ipv4/conf/xtun/rp_filter", "w") as f:
    f.write("0")
ipip = socket.socket(socket.AF_INET, socket.SOCK_RAW, 4)
# Over IPv6, raw sockets get the payload without the outer header.
in6 = [socket.socket(socket.AF_INET6, socket.SOCK_RAW, p) for p in (4, 41)]
gue = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
gue.bind(("0.0.0.0", 6080))
gue6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
gue6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
gue6.bind(("::", 6080))
srv = socket.socket(socket.AF_INET6)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
srv.bind(("::", 80))
srv.listen(256)
def decap():
    while True:
        r, _, _ = select.select([ipip, gue, gue6] + in6, [], [])
        for s in r:
            data = s.recv(65535)
            if s is ipip:
                data = data[(data[0] & 15) * 4:]
            os.write(tun, data)
def serve(c):
    try:
        f = c.makefile("rb")
        for line in f:
            c.sendall(name.encode() + b"\n")
    except OSError:
        pass
    c.close()
def accept():
    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
threading.Thread(target=decap, daemon=True).start()
threading.Thread(target=accept, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"#;

/// Makes `n` TCP connections to VIP:80, one after another, each sending a
/// line and reading the backend's name; prints the names and failures.
const CLIENT: &str = r#"
import json, socket, sys
vip, n = sys.argv[1], int(sys.argv[2])
names, failed = {}, []
for i in range(n):
    try:
        s = socket.create_connection((vip, 80), timeout=4)
        s.sendall(b"hello\n")
        name = s.makefile("rb").readline().decode().strip()
        s.close()
        if not name:
            raise OSError("no answer")
        names[name] = names.get(name, 0) + 1
    except OSError as e:
        failed.append(repr(e))
print(json.dumps({"names": names, "failed": failed}))
"#;

/// One long-lived connection: prints the backend's answer once connected
/// and once per line read on standard input ("error ..." when the
/// connection failed).
const LONG_LIVED: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=4)
f = s.makefile("rb")
def ask():
    try:
        s.sendall(b"again\n")
        line = f.readline().decode().strip()
        return line or "error closed"
    except OSError as e:
        return "error " + type(e).__name__
print(ask(), flush=True)
for _ in sys.stdin:
    print(ask(), flush=True)
"#;


/// Client, LB and backends on one Ethernet segment: a bridge in a
/// namespace of its own, a veth pair from each host to it. The LB is
/// one-armed: what it balances leaves by the interface it came in by
/// (`XDP_TX`), or, before the LB knows the backend's MAC, up the stack,
/// which forwards it and resolves the neighbour. Backends answer the
/// client directly (direct server return).
struct Segment {
    // Scripts before namespaces: they end first.
    scripts: Vec<Script>,
    hosts: Vec<Netns>,
    switch: Netns,
    tag: String,
}

const CLIENT_ADDR: &str = "198.18.100.1";
const LB_ADDR: &str = "198.18.100.2";
const VIP_IPIP: &str = "198.18.101.80";
const VIP_GUE: &str = "198.18.101.81";
const BACKENDS: [&str; 3] = ["198.18.100.11", "198.18.100.12", "198.18.100.13"];
/// IPv6 on the same segment: IPv4 and IPv6 VIPs over the backends' IPv6
/// addresses, by IPIP (4in6, 6in6) and GUE.
const CLIENT_ADDR6: &str = "2001:db8:100::1";
const LB_ADDR6: &str = "2001:db8:100::2";
const VIP_4IN6: &str = "198.18.101.82";
const VIP_6IN6: &str = "2001:db8:101::80";
const VIP_GUE_4IN6: &str = "198.18.101.83";
const VIP_GUE6: &str = "2001:db8:101::81";
const BACKENDS6: [&str; 3] = ["2001:db8:100::11", "2001:db8:100::12", "2001:db8:100::13"];

impl Segment {
    /// Host 0 the client, 1 the LB, 2.. the backends.
    fn new() -> Segment {
        let mut seg = Segment { scripts: Vec::new(), hosts: Vec::new(), switch: netns(), tag: unique() };
        let br = "br0";
        seg.switch.ip(&["link", "add", br, "type", "bridge"]);
        seg.switch.ip(&["link", "set", br, "up"]);
        let addrs: Vec<&str> = [CLIENT_ADDR, LB_ADDR].into_iter().chain(BACKENDS).collect();
        let addrs6: Vec<&str> = [CLIENT_ADDR6, LB_ADDR6].into_iter().chain(BACKENDS6).collect();
        for (i, (addr, addr6)) in addrs.iter().zip(&addrs6).enumerate() {
            let host = netns();
            let (dev, port) = (seg.dev(i), seg.port(i));
            ip(&["link", "add", &dev, "netns", &host.name, "type", "veth", "peer", "name", &port, "netns", &seg.switch.name]);
            seg.switch.ip(&["link", "set", &port, "master", br]);
            seg.switch.ip(&["link", "set", &port, "up"]);
            host.ip(&["addr", "add", &format!("{addr}/24"), "dev", &dev]);
            host.ip(&["addr", "add", &format!("{addr6}/64"), "dev", &dev, "nodad"]);
            host.ip(&["link", "set", &dev, "up"]);
            seg.hosts.push(host);
        }
        // The client sends whole checksums, as a NIC's driver hands them
        // up: with veth's checksum offload its TCP checksums would stay
        // partial across the LB, which the backends' TUN devices (unlike
        // an `ipip` device, which keeps the skb's checksum state) cannot
        // complete.
        let client = &seg.hosts[0];
        let tx = Command::new("ip").args(["netns", "exec", &client.name, "ethtool", "-K", &seg.dev(0), "tx", "off"]).output().expect("ethtool");
        assert!(tx.status.success(), "ethtool: {}", String::from_utf8_lossy(&tx.stderr));
        // The client reaches the VIPs through the LB.
        for vip in [VIP_IPIP, VIP_GUE, VIP_4IN6, VIP_GUE_4IN6] {
            seg.hosts[0].ip(&["route", "add", &format!("{vip}/32"), "via", LB_ADDR]);
        }
        for vip in [VIP_6IN6, VIP_GUE6] {
            seg.hosts[0].ip(&["-6", "route", "add", &format!("{vip}/128"), "via", LB_ADDR6]);
        }
        // The LB forwards what `lb` passes up before it knows a backend's
        // MAC. The outer source is the LB's own address, which the stack
        // takes for a martian source on a packet it receives unless
        // accept_local is on; it sends no ICMP redirects for packets that
        // leave by the interface they came in by.
        let lb = &seg.hosts[1];
        lb.sysctl("net.ipv4.ip_forward=1");
        lb.sysctl("net.ipv6.conf.all.forwarding=1");
        lb.sysctl(&format!("net.ipv4.conf.{}.accept_local=1", seg.dev(1)));
        lb.sysctl("net.ipv4.conf.all.send_redirects=0");
        lb.sysctl(&format!("net.ipv4.conf.{}.send_redirects=0", seg.dev(1)));
        // Backends: the VIPs on lo, not answered for on the segment (ARP);
        // no reverse-path filter for the packets the TUN device hands in.
        for i in 2..seg.hosts.len() {
            let b = &seg.hosts[i];
            for vip in [VIP_IPIP, VIP_GUE, VIP_4IN6, VIP_GUE_4IN6] {
                b.ip(&["addr", "add", &format!("{vip}/32"), "dev", "lo"]);
            }
            for vip in [VIP_6IN6, VIP_GUE6] {
                b.ip(&["addr", "add", &format!("{vip}/128"), "dev", "lo"]);
            }
            for s in ["net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0", "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"] {
                b.sysctl(s);
            }
        }
        seg
    }

    /// The switch's port towards host `i`.
    fn port(&self, i: usize) -> String {
        format!("s{}-{i}", self.tag)
    }

    fn dev(&self, i: usize) -> String {
        format!("h{}-{i}", self.tag)
    }

    fn start_backends(&mut self) {
        for i in 2..self.hosts.len() {
            let name = format!("backend{}", i - 1);
            let mut s = Script::start(&self.hosts[i].name, 120, BACKEND, &[&name]);
            assert_eq!(s.line(), "ready", "{name} starts");
            self.scripts.push(s);
        }
    }

    /// `n` connections to `vip` from the client: backend name -> count.
    fn connect(&self, vip: &str, n: usize) -> BTreeMap<String, u64> {
        let out = output_bounded({
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &self.hosts[0].name, "timeout", "24", "python3", "-c", CLIENT, vip, &n.to_string()]);
            c
        });
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "client: {text} {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("client output {text}: {e}"));
        assert_eq!(v["failed"], serde_json::json!([]), "every connection to {vip} completes: {v}");
        v["names"].as_object().expect("names").iter().map(|(k, v)| (k.clone(), v.as_u64().expect("count"))).collect()
    }
}

/// Connections to every VIP spread over the three backends; a drained
/// backend gets no new connections and keeps its established one; a
/// removed backend gets nothing, and new connections still complete.
fn end_to_end(mode: xpol_runtime::loader::XdpAttachMode) {
    let compiled = compile(&format!(
        "pool web = {{ {} }}\n\
         pool web6 = {{ {} }}\n\
         xdp /ip.dst == {VIP_IPIP} && tcp.dport == 80/ {{ lb(web, encap: ipip, src: {LB_ADDR}) }}\n\
         xdp /ip.dst == {VIP_GUE} && tcp.dport == 80/ {{ lb(web, encap: gue, port: 6080, src: {LB_ADDR}) }}\n\
         xdp /ip.dst == {VIP_4IN6} && tcp.dport == 80/ {{ lb(web6, encap: ipip, src: {LB_ADDR6}) }}\n\
         xdp /ip.dst == {VIP_6IN6} && tcp.dport == 80/ {{ lb(web6, encap: ipip, src: {LB_ADDR6}) }}\n\
         xdp /ip.dst == {VIP_GUE_4IN6} && tcp.dport == 80/ {{ lb(web6, encap: gue, port: 6080, src: {LB_ADDR6}) }}\n\
         xdp /ip.dst == {VIP_GUE6} && tcp.dport == 80/ {{ lb(web6, encap: gue, port: 6080, src: {LB_ADDR6}) }}\n",
        BACKENDS.join(", "),
        BACKENDS6.join(", ")
    ));
    let mut seg = Segment::new();
    let mut p = compiled.load();
    let lb_dev = seg.dev(1);
    seg.hosts[1].run(|| p.attach("xdp", &lb_dev, mode)).unwrap_or_else(|e| panic!("attach to the LB's interface: {e}"));
    // Native XDP_TX on a veth hands the frame to the peer's NAPI, which
    // veth runs only while the peer has an XDP program (GRO on, which
    // older kernels also took, does not do it on 6.18): an XDP program
    // that passes everything on the switch's port towards the LB.
    let mut peer = compile("xdp { pass }\n").load();
    if mode == xpol_runtime::loader::XdpAttachMode::Native {
        let port = seg.port(1);
        seg.switch.run(|| peer.attach("xdp", &port, mode)).unwrap_or_else(|e| panic!("attach to the switch's port: {e}"));
    }
    seg.start_backends();
    let names: Vec<String> = (1..=BACKENDS.len()).map(|i| format!("backend{i}")).collect();

    const N: usize = 60;
    let vips = [VIP_IPIP, VIP_GUE, VIP_4IN6, VIP_6IN6, VIP_GUE_4IN6, VIP_GUE6];
    for vip in vips {
        let got = seg.connect(vip, N);
        assert_eq!(got.values().sum::<u64>(), N as u64, "{vip}: {got:?}");
        assert_eq!(got.len(), BACKENDS.len(), "{vip}: {N} connections reach every backend: {got:?}");
    }
    let s6 = stats_of(&p, "web6");
    assert_eq!(s6.backends.iter().map(|b| b.new_flows).sum::<u64>(), 4 * N as u64, "{s6:?}");
    let s = stats_of(&p, "web");
    let new_flows: u64 = s.backends.iter().map(|b| b.new_flows).sum();
    assert_eq!(new_flows, 2 * N as u64, "one new flow per connection: {s:?}");
    assert!(s.backends.iter().all(|b| b.packets >= 4 * b.new_flows), "SYN, ACK, data, FIN at least, per connection: {s:?}");
    // Both ways out were taken: up the stack, which forwarded the first
    // packets to each backend (the LB had no neighbour entry yet), and
    // XDP_TX (veth counts it in native mode).
    let lb = &seg.hosts[1];
    let (forwarded4, forwarded6) = (snmp(lb, "Ip", "ForwDatagrams"), snmp6(lb, "Ip6OutForwDatagrams"));
    eprintln!("{mode:?}: {s:?} {s6:?}; the stack forwarded {forwarded4} IPv4, {forwarded6} IPv6 packets");
    for (family, forwarded) in [("IPv4", forwarded4), ("IPv6", forwarded6)] {
        assert!((1..2 * N as u64).contains(&forwarded), "{family}: the stack forwarded the first packets, not all: {forwarded}");
    }
    if mode == xpol_runtime::loader::XdpAttachMode::Native {
        let tx = veth_stat(lb, &lb_dev, "rx_queue_0_xdp_tx");
        eprintln!("{mode:?}: XDP_TX {tx}");
        assert!(tx >= 4 * vips.len() as u64 * N as u64 - forwarded4 - forwarded6, "the rest left by XDP_TX: {tx}");
    }

    // A long-lived connection; then its backend is drained (weight 0: a
    // new table in the other half, then the control word).
    let mut long = Script::start(&seg.hosts[0].name, 60, LONG_LIVED, &[VIP_IPIP]);
    let held = long.line();
    let slot = names.iter().position(|n| *n == held).unwrap_or_else(|| panic!("the long-lived connection's answer: {held:?}"));
    let w = PoolWriter::new(&p, "web");
    let mut weights = vec![1; BACKENDS.len()];
    weights[slot] = 0;
    w.ring(&p, 1, &w.table_with(&weights));
    w.activate(&p, 1);
    for vip in [VIP_IPIP, VIP_GUE] {
        let got = seg.connect(vip, N);
        assert!(!got.contains_key(&held), "{vip}: the drained {held} gets no new connections: {got:?}");
        assert_eq!(got.len(), BACKENDS.len() - 1, "{vip}: the others get them all: {got:?}");
    }
    long.say("again");
    assert_eq!(long.line(), held, "the established connection stays on the drained backend");

    // Removed: its slot no longer present. New connections still all
    // complete; the long-lived one is balanced to another backend, which
    // knows nothing of it and resets it.
    w.backend(&p, slot as u32, BACKENDS[slot].parse().unwrap(), false);
    let got = seg.connect(VIP_IPIP, N);
    assert!(!got.contains_key(&held), "{got:?}");
    long.say("again");
    let after = long.line();
    assert!(after.starts_with("error"), "the removed backend's connection went elsewhere and was reset: {after:?}");
    drop(long);
    let link = Command::new("ip").args(["-n", &seg.hosts[1].name, "link", "show", &lb_dev]).output().expect("ip");
    assert!(String::from_utf8_lossy(&link.stdout).contains("xdp"), "still attached at the end");
    drop(p);
    drop(peer);
    drop(seg);
}

/// A counter of /proc/net/snmp in namespace `ns` ("Ip", "ForwDatagrams").
fn snmp(ns: &Netns, group: &str, name: &str) -> u64 {
    let text = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/snmp")).expect("read /proc/thread-self/net/snmp");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&format!("{group}: "))).collect();
    let names: Vec<&str> = lines[0].split_whitespace().collect();
    let values: Vec<&str> = lines[1].split_whitespace().collect();
    let i = names.iter().position(|n| *n == name).unwrap_or_else(|| panic!("no {group} {name}"));
    values[i].parse().expect("a number")
}

/// A counter of /proc/net/snmp6 in namespace `ns`.
fn snmp6(ns: &Netns, name: &str) -> u64 {
    let text = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/snmp6")).expect("read /proc/thread-self/net/snmp6");
    text.lines().find_map(|l| l.strip_prefix(name).map(str::trim)).unwrap_or_else(|| panic!("no {name}")).parse().expect("a number")
}

/// A statistic `ethtool -S` shows for a veth.
fn veth_stat(ns: &Netns, dev: &str, name: &str) -> u64 {
    let out = output_bounded({
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name, "ethtool", "-S", dev]);
        c
    });
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| l.trim().strip_prefix(&format!("{name}: "))).unwrap_or_else(|| panic!("no {name} in {text}")).parse().expect("a number")
}

fn e2e_usable(test: &str) -> bool {
    common::kernel(test)
        && Command::new("python3").arg("-c").arg("1").status().is_ok_and(|s| s.success())
        && Command::new("ethtool").arg("--version").output().is_ok_and(|o| o.status.success())
}

#[test]
fn end_to_end_native_xdp() {
    if e2e_usable("lb end to end (native XDP)") {
        end_to_end(xpol_runtime::loader::XdpAttachMode::Native);
    }
}

#[test]
fn end_to_end_generic_xdp() {
    if e2e_usable("lb end to end (generic XDP)") {
        end_to_end(xpol_runtime::loader::XdpAttachMode::Generic);
    }
}
