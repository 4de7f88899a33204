//! `lb(POOL, nat)`: the packet's destination becomes the backend's, and
//! the reply's source the VIP's again on TC egress, with every checksum
//! still right. Checked with etherparse's own checksum code, not the
//! reference semantics' (the differential test compares the two engines;
//! this one catches an arithmetic both might share).

mod common;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use xpol_runtime::loader::{Action, LoadedPolicy};
use xpol_runtime::packet::PacketSpec;

const POLICY: &str = "
pool app = { 198.18.1.10, 198.18.1.11 }
pool app6 = { 2001:db8:1::10, 2001:db8:1::11 }
xdp /ip.dst == 198.18.0.100 && tcp.dport == 80/ { lb(app, nat, port: 8080) }
xdp /ip.dst == 198.18.0.100 && udp.dport == 53/ { lb(app, nat) }
xdp /ip.dst == 2001:db8::100 && (tcp.dport == 80 || udp.dport == 53)/ { lb(app6, nat, port: 5353) }
";

/// The frame's addresses and ports, with its checksums verified.
fn checked(frame: &[u8]) -> (IpAddr, IpAddr, u16, u16) {
    let p = SlicedPacket::from_ethernet(frame).unwrap_or_else(|e| panic!("{e}: {}", xpol_runtime::packet::hex(frame)));
    let (src, dst): (IpAddr, IpAddr) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum(), "IPv4 header checksum");
            (h.source_addr().into(), h.destination_addr().into())
        }
        Some(NetSlice::Ipv6(ip)) => (ip.header().source_addr().into(), ip.header().destination_addr().into()),
        other => panic!("not IP: {other:?}"),
    };
    let (sport, dport, sum, want) = match (&p.transport, &p.net) {
        (Some(TransportSlice::Tcp(t)), Some(NetSlice::Ipv4(ip))) => {
            (t.source_port(), t.destination_port(), t.checksum(), t.to_header().calc_checksum_ipv4(&ip.header().to_header(), t.payload()).expect("sum"))
        }
        (Some(TransportSlice::Tcp(t)), Some(NetSlice::Ipv6(ip))) => {
            (t.source_port(), t.destination_port(), t.checksum(), t.to_header().calc_checksum_ipv6(&ip.header().to_header(), t.payload()).expect("sum"))
        }
        (Some(TransportSlice::Udp(u)), Some(NetSlice::Ipv4(ip))) if u.checksum() == 0 => (u.source_port(), u.destination_port(), 0, 0),
        (Some(TransportSlice::Udp(u)), Some(NetSlice::Ipv4(ip))) => {
            (u.source_port(), u.destination_port(), u.checksum(), u.to_header().calc_checksum_ipv4(&ip.header().to_header(), u.payload()).expect("sum"))
        }
        (Some(TransportSlice::Udp(u)), Some(NetSlice::Ipv6(ip))) => {
            (u.source_port(), u.destination_port(), u.checksum(), u.to_header().calc_checksum_ipv6(&ip.header().to_header(), u.payload()).expect("sum"))
        }
        other => panic!("not TCP or UDP: {other:?}"),
    };
    assert_eq!(sum, want, "L4 checksum of {}", xpol_runtime::packet::hex(frame));
    (src, dst, sport, dport)
}

/// Runs `packet` through XDP (translated to a backend), then the backend's
/// reply through TC egress (translated back); both frames' checksums
/// right, the reply leaving from the VIP and its port.
fn round_trip(p: &mut LoadedPolicy, packet: Vec<u8>, backends: &[IpAddr], backend_port: u16, reply: impl Fn(IpAddr) -> PacketSpec) {
    let (client, vip, cport, vport) = checked(&packet);
    let out = p.test_run("xdp", &packet).expect("test run");
    assert!(matches!(out.action, Action::Pass | Action::Tx | Action::Redirect), "{:?}", out.action);
    let (src, backend, sport, dport) = checked(&out.packet);
    assert!(backends.contains(&backend), "to a backend, not {backend}");
    assert_eq!((src, sport, dport), (client, cport, backend_port), "the client's address and port kept, the backend's port");
    assert_eq!(out.packet.len(), packet.len());

    let answer = reply(backend).build();
    let (_, _, s, d) = checked(&answer);
    assert_eq!((s, d), (backend_port, cport));
    let back = p.test_run("tc:egress", &answer).expect("test run");
    assert_eq!(back.action, Action::Pass);
    let (src, dst, sport, dport) = checked(&back.packet);
    assert_eq!((src, dst, sport, dport), (vip, client, vport, cport), "the reply from the VIP");
}

#[test]
fn nat_translates_both_ways_with_right_checksums() {
    if !common::kernel("nat_translates_both_ways_with_right_checksums") {
        return;
    }
    let mut p = common::load_text(POLICY);
    let v4 = |a: u8| IpAddr::V4(Ipv4Addr::new(198, 18, 1, a));
    let client = Ipv4Addr::new(198, 18, 9, 1);
    let vip = Ipv4Addr::new(198, 18, 0, 100);
    let to_v4 = |b: IpAddr| match b {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => panic!("an IPv4 backend"),
    };
    let to_v6 = |b: IpAddr| match b {
        IpAddr::V6(a) => a,
        IpAddr::V4(_) => panic!("an IPv6 backend"),
    };

    // TCP with a payload, to another port.
    let syn = PacketSpec::tcp4(client, vip, 40000, 80).payload(33).build();
    round_trip(&mut p, syn, &[v4(10), v4(11)], 8080, |b| PacketSpec::tcp4(to_v4(b), client, 8080, 40000).payload(17));
    // UDP with a checksum, the port kept.
    for sport in [40001, 40002, 40003] {
        let q = PacketSpec::udp4(client, vip, sport, 53).payload(20).build();
        round_trip(&mut p, q, &[v4(10), v4(11)], 53, |b| PacketSpec::udp4(to_v4(b), client, 53, sport).payload(40));
    }
    // UDP without a checksum: it stays without.
    let mut q = PacketSpec::udp4(client, vip, 40100, 53).payload(8).build();
    q[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    let out = p.test_run("xdp", &q).expect("test run");
    assert_eq!(&out.packet[14 + 20 + 6..14 + 20 + 8], &[0, 0], "no checksum stays none");
    checked(&out.packet);

    // IPv6, TCP and UDP.
    let (c6, vip6): (Ipv6Addr, Ipv6Addr) = ("2001:db8:9::1".parse().unwrap(), "2001:db8::100".parse().unwrap());
    let b6 = ["2001:db8:1::10".parse().unwrap(), "2001:db8:1::11".parse().unwrap()];
    let syn = PacketSpec::tcp6(c6, vip6, 40000, 80).payload(10).build();
    round_trip(&mut p, syn, &b6, 5353, |b| PacketSpec::tcp6(to_v6(b), c6, 5353, 40000).payload(3));
    let q = PacketSpec::udp6(c6, vip6, 40000, 53).payload(12).build();
    round_trip(&mut p, q, &b6, 5353, |b| PacketSpec::udp6(to_v6(b), c6, 5353, 40000).payload(12));

    // A packet of no translated flow leaves TC egress as it is.
    for other in [PacketSpec::tcp4(Ipv4Addr::new(198, 18, 1, 10), client, 8080, 1).build(), PacketSpec::udp4(Ipv4Addr::new(198, 18, 1, 99), client, 53, 40001).build()] {
        let untouched = p.test_run("tc:egress", &other).expect("test run");
        assert_eq!((untouched.action, &untouched.packet), (Action::Pass, &other));
    }

    // Not translatable: fragments, another family, ICMP: dropped.
    for packet in [
        PacketSpec::tcp4(client, vip, 40000, 80).frag(0, true).payload(16).build(),
        PacketSpec::icmp4(client, vip, 8, 0).build(),
    ] {
        let out = p.test_run("xdp", &packet).expect("test run");
        // ICMP does not match the rules (no port): it passes untouched.
        assert!(matches!(out.action, Action::Drop | Action::Pass), "{:?}", out.action);
        if out.action == Action::Pass {
            assert_eq!(out.packet, packet);
        }
    }
}
