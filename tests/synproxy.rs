//! `synproxy(...)` in the kernel (docs/language.md, "SYN proxy"): crafted
//! SYNs run with `BPF_PROG_TEST_RUN` come back as well-formed SYN-ACKs
//! (checksums, options, the cookie), and the ACK a client would send back
//! passes where the kernel's cookie check accepts it; IPv4 options, IPv6
//! extension headers and short or damaged headers are handled. Each
//! verdict the reference can decide is compared with it.

mod common;

use etherparse::{NetHeaders, PacketBuilder, PacketHeaders, TcpOptionElement, TransportHeader};
use xpol_compiler::ir;
use xpol_compiler::reference::{self, Outcome, State};
use xpol_lang::ast::Hook;
use xpol_runtime::loader::{Action, LoadedPolicy};

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const C4: [u8; 4] = [198, 18, 0, 1];
const S4: [u8; 4] = [198, 18, 0, 2];
const C6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const S6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const CLIENT_TS: u32 = 0x1234_5678;
const SEQ: u32 = 0xdead_beef;

const POLICY: &str = "xdp /tcp.dport == 8080/ { synproxy(mss: 1400, wscale: 9) }\nxdp { pass }\n";

struct Proxy {
    kernel: LoadedPolicy,
    ir: ir::Policy,
    _dir: tempfile::TempDir,
}

impl Proxy {
    fn new() -> Proxy {
        let (kernel, ir, dir) = common::load_text_with_ir(POLICY);
        Proxy { kernel, ir, _dir: dir }
    }

    /// The kernel's action and the frame it leaves; the reference must
    /// agree unless `reference_knows` is false (a valid cookie).
    fn run(&mut self, what: &str, frame: &[u8], reference_knows: bool) -> (Action, Vec<u8>) {
        let out = self.kernel.test_run("xdp", frame).unwrap_or_else(|e| panic!("{what}: {e}"));
        if reference_knows {
            let r = reference::evaluate(&self.ir, Hook::Xdp, frame, &mut State::default()).outcome;
            let same = matches!((out.action, r), (Action::Pass, Outcome::Pass) | (Action::Drop, Outcome::Drop) | (Action::Tx, Outcome::Tx));
            assert!(same, "{what}: the kernel says {:?}, the reference {r:?}", out.action);
        }
        (out.action, out.packet)
    }
}

fn syn_options() -> Vec<TcpOptionElement> {
    vec![
        TcpOptionElement::MaximumSegmentSize(1460),
        TcpOptionElement::SelectiveAcknowledgementPermitted,
        TcpOptionElement::Timestamp(CLIENT_TS, 0),
        TcpOptionElement::Noop,
        TcpOptionElement::WindowScale(7),
    ]
}

/// A TCP segment from the client to port 8080.
fn segment(v6: bool, seq: u32, ack: Option<u32>, syn: bool, options: &[TcpOptionElement]) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC);
    let ip = if v6 { eth.ipv6(C6, S6, 64) } else { eth.ipv4(C4, S4, 64) };
    let mut tcp = ip.tcp(40000, 8080, seq, 64240);
    if syn {
        tcp = tcp.syn();
    }
    if let Some(a) = ack {
        tcp = tcp.ack(a);
    }
    let tcp = tcp.options(options).expect("options fit");
    let mut out = Vec::new();
    tcp.write(&mut out, &[]).expect("write the frame");
    out
}

fn ones_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes.chunks(2).map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The SYN-ACK's fields the tests look at, checked to be well formed.
#[derive(Debug)]
struct SynAck {
    seq: u32,
    ack: u32,
    mss: Option<u16>,
    wscale: Option<u8>,
    sack: bool,
    ts: Option<(u32, u32)>,
}

fn check_synack(what: &str, frame: &[u8], v6: bool) -> SynAck {
    assert_eq!(&frame[0..6], &CLIENT_MAC, "{what}: back to the client's MAC");
    assert_eq!(&frame[6..12], &SERVER_MAC, "{what}: from the server's MAC");
    let h = PacketHeaders::from_ethernet_slice(frame).unwrap_or_else(|e| panic!("{what}: not a frame: {e}"));
    let Some(TransportHeader::Tcp(tcp)) = &h.transport else { panic!("{what}: no TCP header") };
    match &h.net {
        Some(NetHeaders::Ipv4(ip, ext)) => {
            assert!(!v6, "{what}: IPv4 answer to IPv6");
            assert_eq!((ip.source, ip.destination), (S4, C4), "{what}: addresses swapped");
            assert_eq!(ip.time_to_live, 64);
            assert!(ip.options.is_empty(), "{what}: no IPv4 options");
            assert!(ext.auth.is_none());
            assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "{what}: IPv4 checksum");
            assert_eq!(usize::from(ip.total_len), frame.len() - 14, "{what}: total length is the frame's");
            assert_eq!(tcp.checksum, tcp.calc_checksum_ipv4(ip, &[]).expect("checksum"), "{what}: TCP checksum");
        }
        Some(NetHeaders::Ipv6(ip, ext)) => {
            assert!(v6, "{what}: IPv6 answer to IPv4");
            assert_eq!((ip.source, ip.destination), (S6, C6), "{what}: addresses swapped");
            assert_eq!(ip.hop_limit, 64);
            assert!(ext.hop_by_hop_options.is_none(), "{what}: no extension header");
            assert_eq!(usize::from(ip.payload_length), frame.len() - 54, "{what}: payload length is the frame's");
            assert_eq!(tcp.checksum, tcp.calc_checksum_ipv6(ip, &[]).expect("checksum"), "{what}: TCP checksum");
        }
        other => panic!("{what}: not IP: {other:?}"),
    }
    assert!(tcp.syn && tcp.ack && !tcp.rst && !tcp.fin, "{what}: a SYN-ACK");
    assert_eq!((tcp.source_port, tcp.destination_port), (8080, 40000), "{what}: ports swapped");
    assert_eq!(tcp.acknowledgment_number, SEQ.wrapping_add(1), "{what}: acknowledges the SYN");
    assert_eq!(tcp.window_size, 0);
    let mut s = SynAck { seq: tcp.sequence_number, ack: tcp.acknowledgment_number, mss: None, wscale: None, sack: false, ts: None };
    for o in tcp.options_iterator() {
        match o.unwrap_or_else(|e| panic!("{what}: bad option: {e:?}")) {
            TcpOptionElement::MaximumSegmentSize(m) => s.mss = Some(m),
            TcpOptionElement::WindowScale(w) => s.wscale = Some(w),
            TcpOptionElement::SelectiveAcknowledgementPermitted => s.sack = true,
            TcpOptionElement::Timestamp(a, b) => s.ts = Some((a, b)),
            _ => {}
        }
    }
    s
}

/// The client's ACK of `synack`: acknowledges the cookie, echoes the
/// timestamp.
fn client_ack(v6: bool, synack: &SynAck, ack_delta: u32) -> Vec<u8> {
    let opts: Vec<TcpOptionElement> = synack.ts.map(|(ours, _)| vec![TcpOptionElement::Noop, TcpOptionElement::Noop, TcpOptionElement::Timestamp(CLIENT_TS + 1, ours)]).unwrap_or_default();
    segment(v6, synack.ack, Some(synack.seq.wrapping_add(1).wrapping_add(ack_delta)), false, &opts)
}

#[test]
fn syn_gets_a_syn_ack_and_its_ack_passes() {
    if !common::kernel("synproxy_syn_ack") {
        return;
    }
    let mut p = Proxy::new();
    for v6 in [false, true] {
        let what = if v6 { "IPv6 SYN" } else { "IPv4 SYN" };
        let syn = segment(v6, SEQ, None, true, &syn_options());
        let (action, out) = p.run(what, &syn, true);
        assert_eq!(action, Action::Tx, "{what}");
        let sa = check_synack(what, &out, v6);
        assert_eq!(sa.mss, Some(1400), "{what}: our MSS");
        assert_eq!(sa.wscale, Some(9), "{what}: our window scale");
        assert!(sa.sack, "{what}: SACK offered back");
        let (ours, echoed) = sa.ts.expect("a timestamp");
        assert_eq!(echoed, CLIENT_TS, "{what}: the client's timestamp echoed");
        // The client's options, as nftables' synproxy reads them back.
        assert_eq!(ours & 0xf, 7, "{what}: the client's window scale in our timestamp");
        assert_eq!(ours & 0x10, 0x10, "{what}: SACK in our timestamp");
        let (action, _) = p.run(&format!("{what}: the client's ACK"), &client_ack(v6, &sa, 0), false);
        assert_eq!(action, Action::Pass, "{what}: an ACK of the cookie passes");
        let (action, _) = p.run(&format!("{what}: a forged ACK"), &client_ack(v6, &sa, 0x1000), true);
        assert_eq!(action, Action::Drop, "{what}: an ACK of another number is dropped");
    }
    // A SYN without options: the MSS only.
    for v6 in [false, true] {
        let (action, out) = p.run("bare SYN", &segment(v6, SEQ, None, true, &[]), true);
        assert_eq!(action, Action::Tx);
        let sa = check_synack("bare SYN", &out, v6);
        assert_eq!((sa.mss, sa.wscale, sa.sack, sa.ts), (Some(1400), None, false, None));
    }
    // Other ports are the next rule's.
    let mut other = segment(false, SEQ, None, true, &[]);
    other[14 + 20 + 3] = 81;
    let ip_sum_unchanged = other.clone();
    let (action, _) = p.run("SYN to another port", &ip_sum_unchanged, true);
    assert_eq!(action, Action::Pass);
}

#[test]
fn ipv4_options_and_ipv6_extension_headers_are_answered_without_them() {
    if !common::kernel("synproxy_ip_options") {
        return;
    }
    let mut p = Proxy::new();
    // IPv4 with 4 bytes of options (NOPs and an end).
    let syn = segment(false, SEQ, None, true, &syn_options());
    let mut with_opts = syn[..34].to_vec();
    with_opts.extend([1, 1, 1, 0]);
    with_opts.extend(&syn[34..]);
    with_opts[14] = 0x46;
    let total = u16::from_be_bytes([with_opts[16], with_opts[17]]) + 4;
    with_opts[16..18].copy_from_slice(&total.to_be_bytes());
    with_opts[24..26].copy_from_slice(&[0, 0]);
    let sum = ones_sum(&with_opts[14..38]);
    with_opts[24..26].copy_from_slice(&sum.to_be_bytes());
    let (action, out) = p.run("IPv4 options", &with_opts, true);
    assert_eq!(action, Action::Tx);
    let sa = check_synack("IPv4 options", &out, false);
    assert_eq!(sa.wscale, Some(9));
    // IPv6 with a hop-by-hop header.
    let syn = segment(true, SEQ, None, true, &syn_options());
    let mut with_ext = syn[..54].to_vec();
    with_ext.extend([6, 0, 1, 4, 0, 0, 0, 0]);
    with_ext.extend(&syn[54..]);
    with_ext[20] = 0;
    let len = u16::from_be_bytes([with_ext[18], with_ext[19]]) + 8;
    with_ext[18..20].copy_from_slice(&len.to_be_bytes());
    let (action, out) = p.run("IPv6 hop-by-hop", &with_ext, true);
    assert_eq!(action, Action::Tx);
    let sa = check_synack("IPv6 hop-by-hop", &out, true);
    assert_eq!(sa.ts.map(|t| t.1), Some(CLIENT_TS));
}

#[test]
fn short_or_odd_segments_are_dropped() {
    if !common::kernel("synproxy_short") {
        return;
    }
    let mut p = Proxy::new();
    let syn = segment(false, SEQ, None, true, &syn_options());
    // A data offset past the frame's end.
    let mut long = syn.clone();
    long[14 + 20 + 12] = 0xf0;
    let (action, _) = p.run("data offset 15 in a shorter frame", &long, true);
    assert_eq!(action, Action::Drop);
    // A data offset under 5: the parser finds no TCP header, so the
    // rule's `tcp.dport` is absent, and the next rule decides.
    let mut short = syn.clone();
    short[14 + 20 + 12] = 0x40;
    let (action, _) = p.run("data offset 4", &short, true);
    assert_eq!(action, Action::Pass);
    // Cut inside the TCP header: the parser finds no TCP header, and the
    // rule's `tcp.dport` is absent: the next rule passes it.
    let (action, _) = p.run("cut TCP header", &syn[..14 + 20 + 10], true);
    assert_eq!(action, Action::Pass);
    // SYN with FIN, SYN-ACK, RST: dropped.
    for (flags, what) in [(0x03u8, "SYN+FIN"), (0x12, "SYN-ACK"), (0x04, "RST")] {
        let mut f = syn.clone();
        f[14 + 20 + 13] = flags;
        let (action, _) = p.run(what, &f, true);
        assert_eq!(action, Action::Drop, "{what}");
    }
    // A first fragment (more to come) is not answered: dropped.
    let mut first = syn.clone();
    first[20] |= 0x20;
    first[24..26].copy_from_slice(&[0, 0]);
    let sum = ones_sum(&first[14..34]);
    first[24..26].copy_from_slice(&sum.to_be_bytes());
    let (action, _) = p.run("first fragment", &first, true);
    assert_eq!(action, Action::Drop);
}
