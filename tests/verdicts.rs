//! Kernel verdict tests: compiled programs run with BPF_PROG_TEST_RUN on
//! crafted packets, checked against the verdict and the rules that fired
//! under the language's semantics (docs/language.md).

mod common;

use common::{expect, kernel, load_file, load_text};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use xpol_runtime::loader::Action::{self, *};
use xpol_runtime::packet::{Ipv6Ext, PacketSpec, VlanTag};

fn a4(s: &str) -> Ipv4Addr {
    s.parse().expect("IPv4 literal")
}

fn a6(s: &str) -> Ipv6Addr {
    s.parse().expect("IPv6 literal")
}

/// TCP SYN from `src` to 198.19.255.1:`dport`.
fn syn4(src: &str, dport: u16) -> PacketSpec {
    PacketSpec::tcp4(a4(src), a4("198.19.255.1"), 40000, dport).syn()
}

fn syn6(src: &str, dport: u16) -> PacketSpec {
    PacketSpec::tcp6(a6(src), a6("2001:db8::80"), 40000, dport).syn()
}

#[test]
fn example_firewall() {
    if !kernel("example_firewall") {
        return;
    }
    let mut p = load_file(Path::new("examples/firewall.xpol"));
    let cases: Vec<(&str, PacketSpec, Action, &[u32])> = vec![
        ("web from an allowed source", syn4("198.18.7.7", 80), Pass, &[4]),
        ("web in the 8000..8099 range", syn4("198.18.7.7", 8080), Pass, &[4]),
        ("blocklisted IPv4 source", syn4("203.0.113.9", 80), Drop, &[0]),
        ("ssh from an admin", syn4("198.51.100.7", 22), Pass, &[5]),
        ("ssh from elsewhere", syn4("198.18.9.9", 22), Drop, &[2]),
        ("telnet", syn4("198.18.9.9", 23), Drop, &[3]),
        ("udp falls through", PacketSpec::udp4(a4("198.18.9.9"), a4("198.19.255.1"), 1, 53), Pass, &[5]),
        ("blocklisted IPv6 source", syn6("2001:db8:bad::1", 443), Drop, &[0]),
        ("ssh from an IPv6 admin", syn6("2001:db8:1::5", 22), Pass, &[5]),
        ("ssh from another IPv6 source", syn6("2001:db8:2::5", 22), Drop, &[2]),
        // A non-first fragment has no ports for the ssh rule to match: the
        // fragment rule drops it, and the first fragment, before them.
        ("non-first TCP fragment", syn4("198.18.9.9", 22).frag(64, false), Drop, &[1]),
        ("first TCP fragment", syn4("198.18.9.9", 22).frag(0, true), Drop, &[1]),
        ("non-first TCP fragment from an admin", syn4("198.51.100.7", 22).frag(64, false), Drop, &[1]),
        ("UDP fragment", PacketSpec::udp4(a4("198.18.9.9"), a4("198.19.255.1"), 1, 53).frag(1480, false), Pass, &[5]),
        ("ARP", PacketSpec::ethertype(0x0806, 28), Pass, &[5]),
    ];
    for (what, spec, action, fired) in cases {
        expect(&mut p, "xdp", what, &spec.build(), action, fired);
    }
    // The blocked sources were counted in @blocked, keyed by address.
    let entries = p.map_entries("blocked").expect("@blocked");
    let keys: Vec<String> = entries.iter().map(|(k, _)| k[0].to_string()).collect();
    assert!(keys.contains(&"203.0.113.9".to_string()) && keys.contains(&"2001:db8:bad::1".to_string()), "{keys:?}");
}

#[test]
fn example_edge() {
    if !kernel("example_edge") {
        return;
    }
    let mut p = load_file(Path::new("examples/edge.xpol"));
    // Rules 0-5 come from std/tcp-sanity.xpol (0: tiny fragments), then the
    // edge rules (6, 7: neighbour and multicast listener discovery).
    let bogon = syn4("10.1.2.3", 80);
    expect(&mut p, "xdp", "bogon source", &bogon.build(), Drop, &[8]);
    expect(&mut p, "xdp", "bogon source on a customer VLAN passes the bogon rule", &bogon.clone().vlan(150).build(), Pass, &[14]);
    expect(&mut p, "xdp", "null scan", &syn4("192.0.2.1", 80).flags(0).build(), Drop, &[1]);
    expect(&mut p, "xdp", "syn+fin", &syn4("192.0.2.1", 80).flags(0x03).build(), Drop, &[2]);
    let frag = PacketSpec::tcp4(a4("192.0.2.1"), a4("198.19.0.1"), 1, 80).frag(8, true);
    expect(&mut p, "xdp", "tiny TCP fragment", &frag.build(), Drop, &[0]);
    let ping = PacketSpec::icmp4(a4("8.8.8.8"), a4("198.19.0.1"), 8, 0);
    expect(&mut p, "xdp", "ping", &ping.build(), Pass, &[12]);
    let ptb = PacketSpec::icmp4(a4("8.8.8.8"), a4("198.19.0.1"), 3, 4);
    expect(&mut p, "xdp", "packet too big", &ptb.build(), Pass, &[10]);
    // Neighbour discovery from this link (hop limit 255, as RFC 4861
    // sends it) passes before the bogon rule (fe80::/10 is a bogon), MLD
    // from a link-local source too; with a lower hop limit it crossed a
    // router, and its source is a bogon like any other.
    let nd = |src: &str, ty: u8, hops: u8| PacketSpec::icmp6(a6(src), a6("ff02::1"), ty, 0).ipv6(|ip| ip.hop_limit = hops).build();
    expect(&mut p, "xdp", "neighbour solicitation from fe80::", &nd("fe80::1", 135, 255), Pass, &[6]);
    expect(&mut p, "xdp", "router advertisement from fe80::", &nd("fe80::1", 134, 255), Pass, &[6]);
    expect(&mut p, "xdp", "neighbour solicitation from :: (duplicate address detection)", &nd("::", 135, 255), Pass, &[6]);
    expect(&mut p, "xdp", "MLD query from fe80::", &nd("fe80::1", 130, 1), Pass, &[7]);
    expect(&mut p, "xdp", "router advertisement from fe80:: that crossed a router", &nd("fe80::1", 134, 64), Drop, &[8]);
    expect(&mut p, "xdp", "neighbour solicitation from a bogon", &nd("2001:db8::1", 135, 64), Drop, &[8]);
    expect(&mut p, "xdp", "neighbour solicitation from afar falls through (the kernel ignores it)", &nd("2003::1", 135, 64), Pass, &[16]);
    let ptb6 = PacketSpec::icmp6(a6("2003::1"), a6("2001:db8::2"), 2, 0);
    expect(&mut p, "xdp", "packet too big", &ptb6.build(), Pass, &[11]);
    let dns_ok = PacketSpec::udp4(a4("192.0.2.1"), a4("198.18.53.1"), 3333, 53);
    expect(&mut p, "xdp", "dns to our server", &dns_ok.build(), Drop, &[8]);
    let dns_ok = PacketSpec::udp4(a4("8.8.8.8"), a4("198.18.53.1"), 3333, 53);
    expect(&mut p, "xdp", "dns to our server", &dns_ok.build(), Pass, &[13]);
    let dns_bad = PacketSpec::udp4(a4("8.8.8.8"), a4("198.18.53.9"), 3333, 53);
    expect(&mut p, "xdp", "dns elsewhere", &dns_bad.build(), Drop, &[13]);
    expect(&mut p, "xdp", "web", &syn4("8.8.8.8", 443).build(), Pass, &[14]);
    expect(&mut p, "xdp", "other syn", &syn4("8.8.8.8", 25).build(), Drop, &[15]);
    expect(&mut p, "xdp", "other ack", &syn4("8.8.8.8", 25).flags(0x10).build(), Pass, &[16]);
    let sums = p.map_entries("dns_bytes").expect("@dns_bytes");
    assert_eq!(sums.len(), 1);
    assert_eq!(sums[0].1, dns_ok.build().len() as u64);
}

/// Rate accounting through a map read in the same program (shared map,
/// atomic adds): the 101st ping from a source is dropped.
#[test]
fn map_read_in_predicate() {
    if !kernel("map_read_in_predicate") {
        return;
    }
    let mut p = load_file(Path::new("examples/edge.xpol"));
    let ping = PacketSpec::icmp4(a4("8.8.4.4"), a4("198.19.0.1"), 8, 0).build();
    for i in 0..100 {
        expect(&mut p, "xdp", &format!("ping {i}"), &ping, Pass, &[12]);
    }
    expect(&mut p, "xdp", "ping 101", &ping, Drop, &[12]);
    let pings = p.map_entries("pings").expect("@pings");
    assert_eq!(pings[0].1, 101);
}

const PROBE_POLICY: &str = "
xdp /tcp.dport == 22/ { drop }
xdp /!(tcp.dport == 22)/ { abort }
xdp /udp.dport == 53/ { tx }
xdp { pass }
";

/// Packets that must or must not expose their TCP header, whatever wraps it.
#[test]
fn parsing_cannot_be_fooled() {
    if !kernel("parsing_cannot_be_fooled") {
        return;
    }
    let mut p = load_text(PROBE_POLICY);
    let ssh = || syn4("198.18.0.7", 22);
    let mut cases: Vec<(&str, PacketSpec, Action, &[u32])> = vec![
        ("plain", ssh(), Drop, &[0]),
        ("other port", syn4("198.18.0.7", 80), Abort, &[1]),
        ("udp 53", PacketSpec::udp4(a4("198.18.0.7"), a4("198.19.0.1"), 1, 53), Tx, &[2]),
        ("IPv4 options (IHL 7)", ssh().ipv4(|ip| ip.options = vec![1; 8]), Drop, &[0]),
        ("IPv4 options (IHL 15)", ssh().ipv4(|ip| ip.options = vec![1; 40]), Drop, &[0]),
        ("IHL 4 is malformed", ssh().ipv4(|ip| ip.ihl = Some(4)), Pass, &[3]),
        ("IHL 0 is malformed", ssh().ipv4(|ip| ip.ihl = Some(0)), Pass, &[3]),
        // IHL 6 puts TCP 4 bytes later, past the end of the 40-byte datagram.
        ("IHL 6 with a 40-byte datagram", ssh().ipv4(|ip| ip.ihl = Some(6)), Pass, &[3]),
        ("IHL 6 reads the port at the wrong place", ssh().ipv4(|ip| ip.ihl = Some(6)).payload(4), Abort, &[1]),
        ("total length shorter than the header", ssh().ipv4(|ip| ip.total_len = Some(19)), Pass, &[3]),
        ("total length ends inside TCP", ssh().ipv4(|ip| ip.total_len = Some(39)), Pass, &[3]),
        ("total length covers TCP exactly", ssh().ipv4(|ip| ip.total_len = Some(40)), Drop, &[0]),
        ("total length beyond the frame", ssh().ipv4(|ip| ip.total_len = Some(1500)), Drop, &[0]),
        // The TCP bytes read as a UDP header to port 22.
        ("protocol says UDP", ssh().ipv4(|ip| ip.protocol = Some(17)), Pass, &[3]),
        ("TCP data offset 4", ssh().tcp(|t| t.data_offset = Some(4)), Pass, &[3]),
        ("first fragment", ssh().frag(0, true), Drop, &[0]),
        ("middle fragment", ssh().frag(1480, true), Pass, &[3]),
        ("last fragment", ssh().frag(1480, false), Pass, &[3]),
        ("fragment at offset 8", ssh().frag(8, true), Pass, &[3]),
        ("VLAN", ssh().vlan(100), Drop, &[0]),
        ("802.1ad single tag", ssh().vlan_tag(VlanTag { tpid: 0x88a8, pcp: 3, id: 7 }), Drop, &[0]),
        ("QinQ", ssh().qinq(10, 20), Drop, &[0]),
        ("three tags: not parsed", ssh().qinq(10, 20).vlan(30), Pass, &[3]),
        ("IPv6", syn6("2001:db8::7", 22), Drop, &[0]),
        ("IPv6 other port", syn6("2001:db8::7", 80), Abort, &[1]),
        (
            "IPv6 hop-by-hop, routing, fragment, destination options",
            syn6("2001:db8::7", 22)
                .ext(Ipv6Ext::HopByHop { len8: 0 })
                .ext(Ipv6Ext::Routing { len8: 2 })
                .ext(Ipv6Ext::Fragment { offset: 0, more: true, id: 1 })
                .ext(Ipv6Ext::DestOpts { len8: 1 }),
            Drop,
            &[0],
        ),
        ("IPv6 authentication header", syn6("2001:db8::7", 22).ext(Ipv6Ext::Auth { len4: 4 }), Drop, &[0]),
        ("IPv6 non-first fragment", syn6("2001:db8::7", 22).ext(Ipv6Ext::Fragment { offset: 8, more: false, id: 1 }), Pass, &[3]),
        ("IPv6 chain of 8 headers", chain(8), Drop, &[0]),
        ("IPv6 chain of 9 headers: past the bound", chain(9), Pass, &[3]),
        ("IPv6 payload length ends before TCP", syn6("2001:db8::7", 22).ipv6(|ip| ip.payload_len = Some(10)), Pass, &[3]),
        ("IPv6 payload length 0 (jumbogram)", syn6("2001:db8::7", 22).ipv6(|ip| ip.payload_len = Some(0)), Drop, &[0]),
    ];
    cases.push(("ARP", PacketSpec::ethertype(0x0806, 28), Pass, &[3]));
    for (what, spec, action, fired) in cases {
        expect(&mut p, "xdp", what, &spec.build(), action, fired);
    }
}

fn chain(n: usize) -> PacketSpec {
    let mut s = syn6("2001:db8::7", 22);
    for _ in 0..n {
        s = s.ext(Ipv6Ext::DestOpts { len8: 0 });
    }
    s
}

/// Byte-level corruptions the builder does not express.
#[test]
fn parsing_cannot_be_fooled_raw() {
    if !kernel("parsing_cannot_be_fooled_raw") {
        return;
    }
    let mut p = load_text(PROBE_POLICY);
    let mut v6 = syn6("2001:db8::7", 22).build();
    v6[14] = 0x40 | (v6[14] & 0x0f);
    expect(&mut p, "xdp", "IPv6 EtherType with version 4", &v6, Pass, &[3]);
    let mut v4 = syn4("198.18.0.7", 22).build();
    v4[14] = 0x65;
    expect(&mut p, "xdp", "IPv4 EtherType with version 6", &v4, Pass, &[3]);
}

/// Every truncation of a packet: the TCP rule holds exactly when the whole
/// TCP header is in the frame, and the negated rule never fires on a
/// packet cut inside TCP.
#[test]
fn truncation_at_every_length() {
    if !kernel("truncation_at_every_length") {
        return;
    }
    let mut p = load_text(PROBE_POLICY);
    let specs = [
        ("IPv4", syn4("198.18.0.7", 22)),
        ("IPv4 with options", syn4("198.18.0.7", 22).ipv4(|ip| ip.options = vec![1; 12])),
        ("QinQ IPv4", syn4("198.18.0.7", 22).qinq(1, 2)),
        ("IPv6", syn6("2001:db8::7", 22)),
        ("IPv6 with extension headers", syn6("2001:db8::7", 22).ext(Ipv6Ext::HopByHop { len8: 1 }).ext(Ipv6Ext::Fragment { offset: 0, more: true, id: 9 })),
        ("VLAN IPv6", syn6("2001:db8::7", 22).vlan(5)),
    ];
    for (name, spec) in specs {
        let full = spec.build();
        let layout = spec.layout();
        for len in 14..=full.len() {
            let what = format!("{name} cut to {len} of {} bytes", full.len());
            if len >= layout.l4_end {
                expect(&mut p, "xdp", &what, &full[..len], Drop, &[0]);
            } else {
                expect(&mut p, "xdp", &what, &full[..len], Pass, &[3]);
            }
        }
    }
}

/// Each field, in a one-rule policy: a packet with the value matches, one
/// with another value does not, and one without the header does not either
/// (nor does the negation of the rule).
#[test]
fn every_field() {
    if !kernel("every_field") {
        return;
    }
    let base4 = || PacketSpec::tcp4(a4("198.18.0.1"), a4("198.19.0.2"), 1234, 80);
    let base6 = || PacketSpec::tcp6(a6("2001:db8::1"), a6("2001:db8::2"), 1234, 80);
    let udp4 = || PacketSpec::udp4(a4("198.18.0.1"), a4("198.19.0.2"), 5353, 53);
    let icmp4 = || PacketSpec::icmp4(a4("198.18.0.1"), a4("198.19.0.2"), 8, 0);
    let icmp6 = || PacketSpec::icmp6(a6("2001:db8::1"), a6("2001:db8::2"), 128, 0);
    let arp = || PacketSpec::ethertype(0x0806, 28);
    // (predicate, packet where it holds, packet where it is false, packet lacking the field)
    let cases: Vec<(&str, PacketSpec, PacketSpec, Option<PacketSpec>)> = vec![
        ("pkt.len == 54", base4(), base4().payload(1), None),
        ("eth.src == 02:00:00:00:00:01", base4(), base4().eth([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 2]), None),
        ("eth.dst == 02:00:00:00:00:02", base4(), base4().eth([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 9]), None),
        ("eth.type == 0x0806", arp(), base4(), None),
        ("eth.type == 0x0800", base4().vlan(3), base6(), None),
        ("vlan.depth == 2", base4().qinq(1, 2), base4().vlan(1), None),
        ("vlan.id == 100", base4().vlan(100), base4().vlan(101), Some(base4())),
        ("vlan.pcp == 5", base4().vlan_tag(VlanTag { tpid: 0x8100, pcp: 5, id: 1 }), base4().vlan(1), Some(base4())),
        ("vlan.inner_id == 20", base4().qinq(10, 20), base4().qinq(20, 10), Some(base4().vlan(20))),
        ("vlan.inner_pcp == 0", base4().qinq(10, 20), base4().vlan(10).vlan_tag(VlanTag { tpid: 0x8100, pcp: 2, id: 20 }), Some(base4().vlan(1))),
        ("ip.version == 6", base6(), base4(), Some(arp())),
        ("ip.src == 198.18.0.1", base4(), base6(), Some(arp())),
        ("ip.src == 2001:db8::1", base6(), base4(), Some(arp())),
        ("ip.dst in 198.19.0.0/16", base4(), base6(), Some(arp())),
        ("ip.dst in 2001:db8::/126", base6(), base4(), Some(arp())),
        ("ip.proto == 17", udp4(), base4(), Some(arp())),
        ("ip.proto == 58", icmp6(), base6(), Some(arp())),
        ("ip.ttl == 64", base4(), base4().ipv4(|ip| ip.ttl = 1), Some(arp())),
        ("ip.ttl == 1", base6().ipv6(|ip| ip.hop_limit = 1), base6(), Some(arp())),
        ("ip.len == 40", base4(), base4().payload(2), Some(arp())),
        ("ip.len == 60", base6(), base6().payload(2), Some(arp())),
        ("ip.dscp == 46", base4().ipv4(|ip| ip.tos = 46 << 2), base4(), Some(arp())),
        ("ip.dscp == 10", base6().ipv6(|ip| ip.traffic_class = 10 << 2), base6(), Some(arp())),
        ("ip.ecn == 3", base4().ipv4(|ip| ip.tos = 3), base4(), Some(arp())),
        ("ip.frag", base4().frag(0, true), base4(), Some(arp())),
        ("ip.frag", base6().frag(16, false), base6(), Some(arp())),
        ("ip.frag_first", base4().frag(0, true), base4().frag(8, true), Some(arp())),
        ("ip.frag_off == 1480", base4().frag(1480, true), base4().frag(8, true), Some(arp())),
        ("ip.frag_off == 16", base6().frag(16, true), base6(), Some(arp())),
        ("ip4.src == 198.18.0.1", base4(), base4().ipv4(|ip| ip.src = a4("198.18.0.9")), Some(base6())),
        ("ip4.dst == 198.19.0.2", base4(), base4().ipv4(|ip| ip.dst = a4("198.19.0.9")), Some(base6())),
        ("ip4.ihl == 6", base4().ipv4(|ip| ip.options = vec![1; 4]), base4(), Some(base6())),
        ("ip4.id == 1", base4(), base4().ipv4(|ip| ip.id = 2), Some(base6())),
        ("ip4.df", base4().ipv4(|ip| ip.dont_fragment = true), base4(), Some(base6())),
        ("ip6.src == 2001:db8::1", base6(), base6().ipv6(|ip| ip.src = a6("2001:db8::9")), Some(base4())),
        ("ip6.dst == 2001:db8::2", base6(), base6().ipv6(|ip| ip.dst = a6("2001:db8::9")), Some(base4())),
        ("ip6.nexthdr == 0", base6().ext(Ipv6Ext::HopByHop { len8: 0 }), base6(), Some(base4())),
        ("ip6.hoplimit == 64", base6(), base6().ipv6(|ip| ip.hop_limit = 3), Some(base4())),
        ("ip6.flowlabel == 0x12345", base6().ipv6(|ip| ip.flow_label = 0x12345), base6(), Some(base4())),
        ("tcp.sport == 1234", base4(), base6().tcp(|t| t.sport = 1), Some(udp4())),
        ("tcp.dport == 80", base6(), base4().tcp(|t| t.dport = 81), Some(udp4())),
        ("tcp.flags == 0x12", base4().flags(0x12), base4().flags(0x02), Some(udp4())),
        ("tcp.syn", base4().flags(0x02), base4().flags(0x10), Some(udp4())),
        ("tcp.ack", base4().flags(0x10), base4().flags(0x02), Some(udp4())),
        ("tcp.fin", base4().flags(0x01), base4().flags(0x02), Some(udp4())),
        ("tcp.rst", base4().flags(0x04), base4().flags(0x02), Some(udp4())),
        ("tcp.psh", base4().flags(0x08), base4().flags(0x02), Some(udp4())),
        ("tcp.urg", base4().flags(0x20), base4().flags(0x02), Some(udp4())),
        ("tcp.ece", base4().flags(0x40), base4().flags(0x02), Some(udp4())),
        ("tcp.cwr", base4().flags(0x80), base4().flags(0x02), Some(udp4())),
        ("tcp.window == 65535", base4(), base4().tcp(|t| t.window = 1), Some(udp4())),
        ("udp.sport == 5353", udp4(), PacketSpec::udp4(a4("1.1.1.1"), a4("1.1.1.2"), 1, 53), Some(base4())),
        ("udp.dport == 53", udp4(), PacketSpec::udp4(a4("1.1.1.1"), a4("1.1.1.2"), 5353, 54), Some(base4().tcp(|t| t.dport = 53))),
        ("udp.len == 8", udp4(), udp4().payload(1), Some(base4())),
        ("l4.sport == 1234", base4(), udp4(), Some(icmp4())),
        ("l4.dport == 53", udp4(), base4(), Some(icmp4())),
        ("icmp.type == 8", icmp4(), PacketSpec::icmp4(a4("1.1.1.1"), a4("1.1.1.2"), 0, 0), Some(icmp6())),
        ("icmp.code == 4", PacketSpec::icmp4(a4("1.1.1.1"), a4("1.1.1.2"), 3, 4), icmp4(), Some(base4())),
        ("icmpv6.type == 128", icmp6(), PacketSpec::icmp6(a6("2001:db8::1"), a6("2001:db8::2"), 129, 0), Some(icmp4())),
        ("icmpv6.code == 1", PacketSpec::icmp6(a6("2001:db8::1"), a6("2001:db8::2"), 1, 1), icmp6(), Some(base6())),
    ];
    for (pred, yes, no, absent) in cases {
        // Rule 0 is the predicate, rule 1 its negation, rule 2 the default.
        let mut p = load_text(&format!("xdp /{pred}/ {{ drop }}\nxdp /!({pred})/ {{ abort }}\nxdp {{ pass }}\n"));
        expect(&mut p, "xdp", &format!("`{pred}` holds"), &yes.build(), Drop, &[0]);
        expect(&mut p, "xdp", &format!("`{pred}` is false"), &no.build(), Abort, &[1]);
        if let Some(absent) = absent {
            expect(&mut p, "xdp", &format!("`{pred}` on a packet without the field"), &absent.build(), Pass, &[2]);
        }
    }
}

/// The golden `ok` cases, in the kernel.
#[test]
fn golden_logic() {
    if !kernel("golden_logic") {
        return;
    }
    let mut p = load_file(Path::new("tests/golden/ok/logic.xpol"));
    // Rule 0 `!(tcp.dport == 22)` holds for TCP to any port but 22, and is
    // unknown (does not fire) for UDP.
    expect(&mut p, "xdp", "tcp 80", &syn4("198.18.0.1", 80).build(), Pass, &[0]);
    let small = syn4("198.18.0.1", 22);
    // len 54: half = 28, 28 % 7 = 0: pass.
    expect(&mut p, "xdp", "ssh small", &small.build(), Pass, &[1]);
    // len 1501+ drops.
    expect(&mut p, "xdp", "ssh big", &small.clone().payload(1500).build(), Drop, &[1]);
    // len 60: half = 31, 31 % 7 = 3 and 120 > 100: abort.
    expect(&mut p, "xdp", "ssh 60", &small.clone().payload(6).build(), Abort, &[1]);
    // UDP 53 reaches rule 1 through `||` with an unknown left side.
    expect(&mut p, "xdp", "dns", &PacketSpec::udp4(a4("198.18.0.1"), a4("198.19.0.1"), 1, 53).build(), Pass, &[1]);
    // UDP elsewhere: rule 2 needs tcp.dport (unknown), rule 3 too: default pass.
    expect(&mut p, "xdp", "udp other", &PacketSpec::udp4(a4("198.18.0.1"), a4("198.19.0.1"), 1, 54).build(), Pass, &[]);
}

#[test]
fn golden_sets() {
    if !kernel("golden_sets") {
        return;
    }
    let mut p = load_file(Path::new("tests/golden/ok/sets.xpol"));
    expect(&mut p, "xdp", "blocked prefix", &syn4("203.0.113.77", 1).build(), Drop, &[0]);
    expect(&mut p, "xdp", "blocked address", &syn4("198.18.7.7", 1).build(), Drop, &[0]);
    expect(&mut p, "xdp", "blocked v6", &syn6("2001:db8:bad:1::1", 1).build(), Drop, &[0]);
    expect(&mut p, "xdp", "from the set file", &syn4("192.0.2.200", 1).build(), Drop, &[0]);
    expect(&mut p, "xdp", "single address in the set file", &syn4("198.51.100.7", 1).build(), Drop, &[0]);
    expect(&mut p, "xdp", "neighbour of the set file address", &syn4("198.51.100.8", 1).build(), Pass, &[4]);
    expect(&mut p, "xdp", "v6 from the set file", &syn6("2001:db8:dead:beef::1", 1).build(), Drop, &[0]);
    expect(&mut p, "xdp", "port in the port set", &syn4("198.18.0.1", 3003).build(), Drop, &[1]);
    expect(&mut p, "xdp", "port just past the range", &syn4("198.18.0.1", 3006).build(), Pass, &[4]);
    expect(&mut p, "xdp", "udp in the inline range", &PacketSpec::udp4(a4("198.18.0.1"), a4("1.1.1.1"), 1, 5010).build(), Drop, &[1]);
    expect(&mut p, "xdp", "udp past the inline range", &PacketSpec::udp4(a4("198.18.0.1"), a4("1.1.1.1"), 1, 5011).build(), Pass, &[4]);
    let mac = syn4("198.18.0.1", 1).eth([2, 0, 0, 0, 0, 0xb], [2, 0, 0, 0, 0, 9]);
    expect(&mut p, "xdp", "mac in the mac set", &mac.build(), Pass, &[2]);
    let to_large = PacketSpec::tcp4(a4("198.18.0.1"), a4("17.0.0.5"), 1, 1);
    expect(&mut p, "xdp", "destination in the large const set", &to_large.build(), Pass, &[3]);
    let to_small = PacketSpec::tcp6(a6("2001:db9::1"), a6("2001:db8::5"), 1, 1);
    expect(&mut p, "xdp", "destination in the small const set (v6)", &to_small.build(), Pass, &[3]);
    let src_large = PacketSpec::tcp4(a4("12.0.0.1"), a4("198.19.0.1"), 1, 1);
    expect(&mut p, "xdp", "source in the large const set", &src_large.build(), Pass, &[]);
}

#[test]
fn golden_maps() {
    if !kernel("golden_maps") {
        return;
    }
    let mut p = load_file(Path::new("tests/golden/ok/maps.xpol"));
    let pkt = syn4("198.18.0.1", 443).build();
    for _ in 0..3 {
        expect(&mut p, "xdp", "counted", &pkt, Pass, &[0, 1]);
    }
    let per_source = p.map_entries("per_source").expect("map");
    assert_eq!(per_source.len(), 1);
    assert_eq!(per_source[0].0[0].to_string(), "198.18.0.1");
    assert_eq!(per_source[0].1, 3);
    let bytes = p.map_entries("bytes").expect("map");
    assert_eq!(bytes[0].0.iter().map(|k| k.to_string()).collect::<Vec<_>>(), ["198.18.0.1", "443"]);
    assert_eq!(bytes[0].1, 3 * pkt.len() as u64);
    assert_eq!(p.map_entries("last_len").expect("map")[0].1, pkt.len() as u64);
    assert_eq!(p.map_entries("last_len").expect("map")[0].0[0].to_string(), "02:00:00:00:00:01");
    assert_eq!(p.map_entries("total").expect("map")[0].1, 3);
    assert_eq!(p.map_entries("syn").expect("map")[0].0[0].to_string(), "true");
    // A UDP packet has no tcp.dport: @bytes is not updated, the others are.
    let udp = PacketSpec::udp4(a4("198.18.0.1"), a4("198.19.0.1"), 1, 2).build();
    expect(&mut p, "xdp", "udp", &udp, Pass, &[0, 1]);
    assert_eq!(p.map_entries("bytes").expect("map").len(), 1);
    assert_eq!(p.map_entries("total").expect("map")[0].1, 4);
}

/// `map @NAME max 4` and packets from 10 sources: each map keeps 4
/// entries and counts the 6 updates that found it full, through
/// `PolicyMaps` (what `xpol stats` reads), for each way a map is updated: a
/// per-CPU count (a map only written), a shared count (a map also read,
/// updated atomically) and an assigned value. An update of an entry the
/// full map holds is not lost.
#[test]
fn full_maps_keep_their_entries_and_count_lost_updates() {
    if !kernel("full_maps_keep_their_entries_and_count_lost_updates") {
        return;
    }
    let mut p = load_text(
        "map @m max 4\nmap @shared max 4\nmap @last max 4\n\
         xdp /udp.dport == 53/ { @m[ip.src] = count(); @shared[ip.src] = count(); @last[ip.src] = udp.sport; if (@shared[ip.src] > 1000) { drop } pass }\n",
    );
    let from = |i: u16| PacketSpec::udp4(Ipv4Addr::new(198, 18, 0, i as u8 + 1), a4("198.19.0.1"), 1000 + i, 53).build();
    for i in 0..10 {
        expect(&mut p, "xdp", &format!("source {i}"), &from(i), Pass, &[0]);
    }
    expect(&mut p, "xdp", "the first source again", &from(0), Pass, &[0]);
    let maps = p.maps();
    assert_eq!(maps.lost_updates().expect("lost updates"), [6, 6, 6]);
    assert_eq!(maps.meta().maps.iter().map(|m| m.max_entries).collect::<Vec<_>>(), [4, 4, 4]);
    for name in ["m", "shared", "last"] {
        let entries = maps.map_entries(name).expect("entries");
        let mut sources: Vec<String> = entries.iter().map(|(k, _)| k[0].to_string()).collect();
        sources.sort();
        assert_eq!(sources, ["198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.0.4"], "@{name} kept its first four entries");
    }
    let first = |name: &str| maps.map_entries(name).expect("entries").into_iter().find(|(k, _)| k[0].to_string() == "198.18.0.1").map(|(_, v)| v);
    assert_eq!((first("m"), first("shared"), first("last")), (Some(2), Some(2), Some(1000)));
    // The rule's own counters are unaffected by the maps' slots after them.
    assert_eq!(p.rule_counters().expect("counters").len(), 1);
    assert_eq!(p.rule_counters().expect("counters")[0].packets, 11);
}

#[test]
fn golden_hooks() {
    if !kernel("golden_hooks") {
        return;
    }
    let mut p = load_file(Path::new("tests/golden/ok/hooks.xpol"));
    // Redirect targets do not exist here: their slots stay empty and
    // `redirect` aborts (XDP) or drops (TC).
    let vxlan = PacketSpec::udp4(a4("198.18.0.1"), a4("198.19.0.1"), 1, 4789).build();
    expect(&mut p, "xdp", "vxlan", &vxlan, Abort, &[0]);
    expect(&mut p, "xdp", "other", &syn4("198.18.0.1", 25).build(), Pass, &[1]);
    expect(&mut p, "tc:ingress", "smtp", &syn4("198.18.0.1", 25).build(), Drop, &[2]);
    let to99 = PacketSpec::tcp4(a4("198.18.0.1"), a4("198.18.0.99"), 1, 1).build();
    expect(&mut p, "tc:ingress", "redirect without a target", &to99, Drop, &[3]);
    expect(&mut p, "tc:ingress", "default", &syn4("198.18.0.1", 80).build(), Pass, &[]);
    let rst = PacketSpec::tcp4(a4("198.18.0.1"), a4("198.19.3.4"), 1, 1).flags(0x04).build();
    expect(&mut p, "tc:egress", "rst", &rst, Drop, &[4]);
    expect(&mut p, "tc:egress", "other", &syn4("198.18.0.1", 80).build(), Pass, &[5]);
}

#[test]
fn golden_fields_and_warnings_load() {
    if !kernel("golden_fields_and_warnings_load") {
        return;
    }
    let mut p = load_file(Path::new("tests/golden/ok/fields.xpol"));
    expect(&mut p, "xdp", "jumbo", &syn4("198.18.0.1", 80).payload(1500).build(), Drop, &[0]);
    expect(&mut p, "xdp", "from 02:..:01", &syn4("198.18.0.5", 80).build(), Pass, &[1]);
    let mut w = load_file(Path::new("tests/golden/ok/warnings.xpol"));
    expect(&mut w, "xdp", "telnet", &syn4("198.18.0.1", 23).build(), Drop, &[1]);
    expect(&mut w, "xdp", "v4 never in a v6 set", &syn4("198.18.0.1", 80).build(), Pass, &[2]);
}

#[test]
fn std_policies() {
    if !kernel("std_policies") {
        return;
    }
    let mut p = load_text("include \"std/bogons.xpol\"\nxdp /ip.src in bogons/ { drop }\nxdp { pass }\n");
    for (src, bogon) in [("10.0.0.1", true), ("100.64.1.1", true), ("8.8.8.8", false), ("224.0.0.5", true), ("198.18.0.1", true), ("11.0.0.1", false)] {
        let want = if bogon { (Drop, &[0u32][..]) } else { (Pass, &[1u32][..]) };
        expect(&mut p, "xdp", src, &syn4(src, 80).build(), want.0, want.1);
    }
    for (src, bogon) in [("fe80::1", true), ("2001:db8::1", true), ("2a00::1", false), ("::ffff:1.2.3.4", true)] {
        let want = if bogon { (Drop, &[0u32][..]) } else { (Pass, &[1u32][..]) };
        expect(&mut p, "xdp", src, &syn6(src, 80).build(), want.0, want.1);
    }
    let mut s = load_text("include \"std/tcp-sanity.xpol\"\nxdp { pass }\n");
    let cases: [(&str, PacketSpec, Action, &[u32]); 7] = [
        ("normal syn", syn4("198.18.0.1", 80), Pass, &[6]),
        ("null", syn4("198.18.0.1", 80).flags(0), Drop, &[1]),
        ("syn+rst", syn4("198.18.0.1", 80).flags(0x06), Drop, &[2]),
        ("xmas", syn4("198.18.0.1", 80).flags(0x29), Drop, &[3]),
        ("fin without ack", syn4("198.18.0.1", 80).flags(0x01), Drop, &[4]),
        ("port 0", syn4("198.18.0.1", 0), Drop, &[5]),
        ("tiny fragment", syn4("198.18.0.1", 80).frag(8, true), Drop, &[0]),
    ];
    for (what, spec, action, fired) in cases {
        expect(&mut s, "xdp", what, &spec.build(), action, fired);
    }
}

/// The reference firewall with 100,000 prefixes compiles and loads; the
/// blocked source (covered by the last prefix) is dropped.
#[test]
fn ref_fw_100k_prefixes() {
    if !kernel("ref_fw_100k_prefixes") {
        return;
    }
    let start = std::time::Instant::now();
    let mut p = load_file(Path::new("bench/ref-fw/ref-fw-100000.xpol"));
    eprintln!("ref-fw-100000: compiled and loaded in {:?}", start.elapsed());
    let blocked = PacketSpec::tcp4(a4("198.19.7.7"), a4("198.19.255.1"), 40000, 80).syn().build();
    let allowed = PacketSpec::tcp4(a4("198.18.7.7"), a4("198.19.255.1"), 40000, 80).syn().build();
    expect(&mut p, "xdp", "blocked", &blocked, Drop, &[0]);
    expect(&mut p, "xdp", "allowed", &allowed, Pass, &[4]);
}
