//! The load balancer on a way out whose MTU the encapsulated packet
//! exceeds: the client gets an ICMP "fragmentation needed" (IPv4 with DF)
//! or ICMPv6 "packet too big" back, checksums right, quoting its packet;
//! an IPv4 packet without DF goes up the stack encapsulated (which
//! fragments it). The programs are test-run in a namespace of the test's
//! own whose route to the backends leaves by a veth of MTU 1300, so
//! `bpf_fib_lookup` answers "fragmentation needed".

mod common;
use common::net::{unique, Netns};

use etherparse::{Icmpv4Type, Icmpv6Type, NetSlice, SlicedPacket, TransportSlice};
use std::net::{Ipv4Addr, Ipv6Addr};
use xpol_runtime::loader::Action;
use xpol_runtime::packet::PacketSpec;

const POLICY: &str = "
pool web = { 198.18.1.10, 198.18.1.11 }
pool web6 = { 2001:db8:1::10, 2001:db8:1::11 }
xdp /ip.dst == 198.18.0.100/ { lb(web, encap: ipip, src: 198.18.0.1) }
xdp /ip.dst == 2001:db8::80/ { lb(web6, encap: ipip, src: 2001:db8::1) }
xdp /ip.dst == 198.18.0.101/ { lb(web6, encap: ipip, src: 2001:db8::1) }
";

/// A namespace with a veth of MTU 1300 routing the backends, forwarding
/// on (the FIB answers forwarding questions only where it is).
fn small_mtu() -> Netns {
    let ns = Netns::named(format!("xpol-mtu-{}", unique()));
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
    ns.ip(&["link", "set", "d0", "mtu", "1300", "up"]);
    ns.ip(&["link", "set", "d1", "up"]);
    ns.ip(&["addr", "add", "198.18.1.1/24", "dev", "d0"]);
    ns.ip(&["-6", "addr", "add", "2001:db8:1::1/64", "dev", "d0", "nodad"]);
    ns.sysctl("net.ipv4.ip_forward=1");
    ns.sysctl("net.ipv6.conf.all.forwarding=1");
    ns
}

fn big4(df: bool) -> Vec<u8> {
    PacketSpec::tcp4(Ipv4Addr::new(198, 18, 9, 1), Ipv4Addr::new(198, 18, 0, 100), 40000, 80).ipv4(|ip| ip.dont_fragment = df).payload(1400).build()
}

fn big6() -> Vec<u8> {
    PacketSpec::tcp6("2001:db8:9::1".parse().unwrap(), "2001:db8::80".parse().unwrap(), 40000, 80).payload(1400).build()
}

#[test]
fn too_big_once_encapsulated_gets_the_icmp_answer() {
    if !common::kernel("too_big_once_encapsulated_gets_the_icmp_answer") {
        return;
    }
    let mut p = common::load_text(POLICY);
    let ns = small_mtu();
    let run = |p: &mut xpol_runtime::loader::LoadedPolicy, packet: &[u8]| {
        ns.run(|| p.test_run("xdp", packet)).expect("test run")
    };

    // IPv4 with DF: "fragmentation needed", MTU 1300 - 20 of IPIP.
    let packet = big4(true);
    let out = run(&mut p, &packet);
    assert_eq!(out.action, Action::Tx, "sent back to the client");
    assert_eq!(&out.packet[0..6], &packet[6..12], "to the client's MAC");
    assert_eq!(&out.packet[6..12], &packet[0..6], "from the MAC it was sent to");
    let sliced = SlicedPacket::from_ethernet(&out.packet).expect("an Ethernet frame");
    let Some(NetSlice::Ipv4(ip)) = &sliced.net else { panic!("IPv4: {:?}", sliced.net) };
    let h = ip.header();
    assert_eq!((h.source_addr(), h.destination_addr()), (Ipv4Addr::new(198, 18, 0, 100), Ipv4Addr::new(198, 18, 9, 1)), "from the VIP to the client");
    assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum(), "IPv4 header checksum");
    assert_eq!(h.total_len(), 20 + 8 + 28);
    let Some(TransportSlice::Icmpv4(icmp)) = &sliced.transport else { panic!("ICMP: {:?}", sliced.transport) };
    assert!(matches!(icmp.icmp_type(), Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 })), "{:?}", icmp.icmp_type());
    assert_eq!(icmp.icmp_type().calc_checksum(icmp.payload()), icmp.checksum(), "ICMP checksum");
    assert_eq!(icmp.payload(), &packet[14..14 + 28], "quotes the IP header and 8 bytes");

    // IPv6: "packet too big", MTU 1300 - 40 of the outer IPv6 header.
    let packet = big6();
    let out = run(&mut p, &packet);
    assert_eq!(out.action, Action::Tx);
    let sliced = SlicedPacket::from_ethernet(&out.packet).expect("an Ethernet frame");
    let Some(NetSlice::Ipv6(ip)) = &sliced.net else { panic!("IPv6: {:?}", sliced.net) };
    let (src, dst): (Ipv6Addr, Ipv6Addr) = (ip.header().source_addr(), ip.header().destination_addr());
    assert_eq!((src, dst), ("2001:db8::80".parse().unwrap(), "2001:db8:9::1".parse().unwrap()));
    let Some(TransportSlice::Icmpv6(icmp)) = &sliced.transport else { panic!("ICMPv6: {:?}", sliced.transport) };
    assert_eq!(icmp.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1260 });
    let want = icmp.icmp_type().calc_checksum(src.octets(), dst.octets(), icmp.payload()).expect("checksum");
    assert_eq!(want, icmp.checksum(), "ICMPv6 checksum");
    assert_eq!(icmp.payload(), &packet[14..14 + 48], "quotes the IPv6 header and 8 bytes");

    // 4in6: forwarded IPv6 is never fragmented, so IPv4 is told even
    // without DF, MTU 1300 - 40.
    let packet = PacketSpec::tcp4(Ipv4Addr::new(198, 18, 9, 1), Ipv4Addr::new(198, 18, 0, 101), 40000, 80).payload(1400).build();
    let out = run(&mut p, &packet);
    assert_eq!(out.action, Action::Tx, "4in6 without DF: told");
    let sliced = SlicedPacket::from_ethernet(&out.packet).expect("an Ethernet frame");
    let Some(TransportSlice::Icmpv4(icmp)) = &sliced.transport else { panic!("ICMP: {:?}", sliced.transport) };
    assert!(matches!(icmp.icmp_type(), Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1260 })), "{:?}", icmp.icmp_type());
    assert_eq!(icmp.icmp_type().calc_checksum(icmp.payload()), icmp.checksum(), "ICMP checksum");

    // A VLAN-tagged packet is not answered on another VLAN: dropped.
    let tagged = PacketSpec::tcp4(Ipv4Addr::new(198, 18, 9, 1), Ipv4Addr::new(198, 18, 0, 100), 40000, 80).vlan(7).ipv4(|ip| ip.dont_fragment = true).payload(1400).build();
    assert_eq!(run(&mut p, &tagged).action, Action::Drop, "tagged and too big");

    // IPv4 without DF may be fragmented: up the stack, encapsulated.
    let packet = big4(false);
    let out = run(&mut p, &packet);
    assert_eq!(out.action, Action::Pass);
    let e = xpol_runtime::lb::decapsulate(&out.packet).expect("encapsulated");
    assert_eq!(e.inner, packet[14..], "the whole packet inside");
}
