//! Cubes to words: a region as the fields it constrains, in the
//! language's names (`tcp.dport 22, ip.src in 198.51.100.0/25`).

use super::space::{prefixes_at_most, Cube, Dim, Set, Space, L4_ICMP, L4_NONE, L4_TCP, L4_UDP, NEXTHDR_IS_PROTO, PROTO_ABSENT};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Whether a dimension is read by some field in some class of the cube.
fn relevant(c: &Cube, d: Dim) -> bool {
    let has = |dim: Dim, v: u128| c.get(dim).contains(v);
    let ip = has(Dim::L3, 4) || has(Dim::L3, 6);
    match d {
        Dim::L2 | Dim::Len => true,
        Dim::EthSrc | Dim::EthDst | Dim::EthType | Dim::VlanDepth | Dim::L3 => has(Dim::L2, 1),
        Dim::Vlan1Id | Dim::Vlan1Pcp => has(Dim::L2, 1) && c.get(Dim::VlanDepth).intersects(&Set::range(1, 3)),
        Dim::Vlan2Id | Dim::Vlan2Pcp => has(Dim::L2, 1) && c.get(Dim::VlanDepth).intersects(&Set::range(2, 3)),
        Dim::Src | Dim::Dst | Dim::Ttl | Dim::IpLen | Dim::Dscp | Dim::Ecn | Dim::Proto | Dim::L4 => ip,
        Dim::Frag | Dim::FragOff8 => ip && c.get(Dim::Proto).intersects(&Set::range(0, 255)),
        Dim::Ihl | Dim::Id | Dim::Df => has(Dim::L3, 4),
        Dim::Flow | Dim::NextHdr => has(Dim::L3, 6),
        Dim::Sport | Dim::Dport => ip && (has(Dim::L4, L4_TCP) || has(Dim::L4, L4_UDP)),
        Dim::TcpFlags | Dim::Window => ip && has(Dim::L4, L4_TCP),
        Dim::UdpLen => ip && has(Dim::L4, L4_UDP),
        Dim::IcmpType | Dim::IcmpCode => ip && has(Dim::L4, L4_ICMP),
    }
}

/// The cube with every dimension no field reads in its classes made
/// full: the same packets, fewer differences between cubes.
pub fn clear_irrelevant(c: &Cube) -> Cube {
    let mut out = c.clone();
    for d in Dim::ALL {
        if !relevant(c, d) {
            out.set(d, Set::full(d));
        }
    }
    out
}

/// What the universe allows for `d` in the classes of `c`: the packets
/// with its Ethernet, IP and L4 headers (not narrower: a cube of one
/// IPv6 extension-header class must say so).
fn allowed(c: &Cube, d: Dim, universe: &Space) -> Set {
    let mut s = Set::empty();
    for u in &universe.0 {
        let keys: &[Dim] = match d {
            Dim::L2 => &[],
            Dim::L3 => &[Dim::L2],
            Dim::L4 => &[Dim::L2, Dim::L3],
            _ => &[Dim::L2, Dim::L3, Dim::L4],
        };
        if keys.iter().all(|&k| u.get(k).intersects(c.get(k))) {
            s = s.union(u.get(d));
        }
    }
    s
}

/// The region in words: class first, then each constrained field.
pub fn describe(c: &Cube, universe: &Space) -> Vec<String> {
    let mut parts = Vec::new();
    let l2 = c.get(Dim::L2);
    if !l2.contains(1) {
        parts.push("no Ethernet header".to_string());
    } else {
        let l3 = c.get(Dim::L3);
        let l3_allowed = allowed(c, Dim::L3, universe);
        if !l3_allowed.is_subset(l3) || !l2.contains(0) {
            let names: Vec<&str> = [(0, "not IP"), (4, "ipv4"), (6, "ipv6")].iter().filter(|(v, _)| l3.contains(*v)).map(|(_, n)| *n).collect();
            if names == ["ipv4", "ipv6"] {
                parts.push("ip".into());
            } else if names.len() != 3 {
                parts.push(names.join(" or "));
            }
        }
        let l4 = c.get(Dim::L4);
        if relevant(c, Dim::L4) && !allowed(c, Dim::L4, universe).is_subset(l4) {
            let icmp = if l3.contains(4) && !l3.contains(6) {
                "icmp"
            } else if l3.contains(6) && !l3.contains(4) {
                "icmpv6"
            } else {
                "icmp or icmpv6"
            };
            let names: Vec<&str> = [(L4_NONE, "no L4 header"), (L4_TCP, "tcp"), (L4_UDP, "udp"), (L4_ICMP, icmp)].iter().filter(|(v, _)| l4.contains(*v)).map(|(_, n)| *n).collect();
            parts.push(names.join(" or "));
        }
    }
    for d in Dim::ALL {
        if matches!(d, Dim::L2 | Dim::L3 | Dim::L4) || !relevant(c, d) {
            continue;
        }
        let s = c.get(d);
        let allowed = allowed(c, d, universe);
        if allowed.is_subset(s) {
            continue;
        }
        let s = s.intersect(&allowed);
        parts.push(field_text(c, d, &s, &allowed));
    }
    if parts.is_empty() {
        parts.push("every packet".into());
    }
    parts
}

fn name(c: &Cube, d: Dim) -> &'static str {
    let l4 = c.get(Dim::L4);
    let tcp_only = !l4.contains(L4_UDP);
    let udp_only = !l4.contains(L4_TCP);
    let v6_only = !c.get(Dim::L3).contains(4);
    match d {
        Dim::Len => "pkt.len",
        Dim::EthSrc => "eth.src",
        Dim::EthDst => "eth.dst",
        Dim::EthType => "eth.type",
        Dim::VlanDepth => "vlan.depth",
        Dim::Vlan1Id => "vlan.id",
        Dim::Vlan1Pcp => "vlan.pcp",
        Dim::Vlan2Id => "vlan.inner_id",
        Dim::Vlan2Pcp => "vlan.inner_pcp",
        Dim::Src => "ip.src",
        Dim::Dst => "ip.dst",
        Dim::Ttl => "ip.ttl",
        Dim::IpLen => "ip.len",
        Dim::Dscp => "ip.dscp",
        Dim::Ecn => "ip.ecn",
        Dim::Proto => "ip.proto",
        Dim::Frag => "ip.frag",
        Dim::FragOff8 => "ip.frag_off",
        Dim::NextHdr => "ip6.nexthdr",
        Dim::Ihl => "ip4.ihl",
        Dim::Id => "ip4.id",
        Dim::Df => "ip4.df",
        Dim::Flow => "ip6.flowlabel",
        Dim::Sport if tcp_only => "tcp.sport",
        Dim::Sport if udp_only => "udp.sport",
        Dim::Sport => "l4.sport",
        Dim::Dport if tcp_only => "tcp.dport",
        Dim::Dport if udp_only => "udp.dport",
        Dim::Dport => "l4.dport",
        Dim::TcpFlags => "tcp.flags",
        Dim::Window => "tcp.window",
        Dim::UdpLen => "udp.len",
        Dim::IcmpType if v6_only => "icmpv6.type",
        Dim::IcmpType => "icmp.type",
        Dim::IcmpCode if v6_only => "icmpv6.code",
        Dim::IcmpCode => "icmp.code",
        Dim::L2 | Dim::L3 | Dim::L4 => "",
    }
}

fn field_text(c: &Cube, d: Dim, s: &Set, allowed: &Set) -> String {
    let n = name(c, d);
    match d {
        Dim::Frag | Dim::Df => format!("{n} {}", if s.contains(1) { "true" } else { "false" }),
        Dim::Proto if s.contains(PROTO_ABSENT) && s.count() == 1 => "ip.proto unknown (IPv6 chain not walked to its end)".into(),
        Dim::Proto => {
            let known = Set::range(0, 255);
            let values = s.intersect(&known);
            let unknown = if s.contains(PROTO_ABSENT) { " or unknown" } else { "" };
            if allowed.intersect(&known).is_subset(&values) {
                format!("ip.proto known{unknown}")
            } else {
                format!("ip.proto {}{unknown}", ints(&values, &allowed.intersect(&known), 1, |v| v.to_string()))
            }
        }
        Dim::NextHdr => {
            let direct = s.contains(NEXTHDR_IS_PROTO);
            let ext = s.minus(&Set::one(NEXTHDR_IS_PROTO));
            match (direct, ext.is_empty()) {
                (true, true) => "no IPv6 extension header".into(),
                (false, _) if allowed.minus(&Set::one(NEXTHDR_IS_PROTO)).is_subset(&ext) => "IPv6 extension headers".into(),
                (false, _) => format!("first IPv6 extension header {}", ints(&ext, &allowed.minus(&Set::one(NEXTHDR_IS_PROTO)), 1, |v| v.to_string())),
                (true, false) => format!("no IPv6 extension header, or first {}", ints(&ext, &allowed.minus(&Set::one(NEXTHDR_IS_PROTO)), 1, |v| v.to_string())),
            }
        }
        Dim::Src | Dim::Dst => {
            let l3 = c.get(Dim::L3);
            let v4 = l3.contains(4) && !l3.contains(6);
            let bits = if v4 { 32 } else { 128 };
            addrs(n, s, allowed, bits)
        }
        Dim::EthSrc | Dim::EthDst => format!("{n} {}", ints(s, allowed, 1, |v| crate::ir::fmt_mac(v as u64))),
        Dim::EthType | Dim::TcpFlags => format!("{n} {}", ints(s, allowed, 1, |v| format!("0x{v:02x}"))),
        Dim::FragOff8 => format!("{n} {}", ints(s, allowed, 8, |v| v.to_string())),
        _ => format!("{n} {}", ints(s, allowed, 1, |v| v.to_string())),
    }
}

/// A set of integers: `22`, `1024..65535`, `{22, 80..90}`, or `not ...`
/// when the complement is shorter. Values are dimension values times `scale`.
fn ints(s: &Set, allowed: &Set, scale: u128, f: impl Fn(u128) -> String) -> String {
    let show = |s: &Set| {
        let parts: Vec<String> = s
            .0
            .iter()
            .take(8)
            .map(|&(a, b)| if a == b { f(a * scale) } else if scale == 1 { format!("{}..{}", f(a), f(b)) } else { format!("{}..{} (multiples of {scale})", f(a * scale), f(b * scale)) })
            .collect();
        let more = if s.0.len() > 8 { format!(", ... {} ranges", s.0.len()) } else { String::new() };
        if parts.len() == 1 && more.is_empty() {
            parts[0].clone()
        } else {
            format!("{{{}{more}}}", parts.join(", "))
        }
    };
    let not = allowed.minus(s);
    if not.0.len() < s.0.len() && !not.is_empty() {
        format!("not {}", show(&not))
    } else {
        show(s)
    }
}

fn addrs(n: &str, s: &Set, allowed: &Set, bits: u32) -> String {
    let fmt = |(a, len): (u128, u32)| {
        let addr = if bits == 32 { Ipv4Addr::from(a as u32).to_string() } else { Ipv6Addr::from(a).to_string() };
        if len == bits {
            addr
        } else {
            format!("{addr}/{len}")
        }
    };
    // At most 100 prefixes: a longer list is shown by its first few.
    let list = |s: &Set| -> Vec<String> { s.0.iter().flat_map(|&(a, b)| prefixes_at_most(a, b, bits, 100)).take(100).map(fmt).collect() };
    let yes = list(s);
    let not = list(&allowed.minus(s));
    let show = |v: &[String]| {
        if v.len() == 1 {
            v[0].clone()
        } else if v.len() <= 6 {
            format!("{{{}}}", v.join(", "))
        } else {
            let n = if v.len() >= 100 { "100 or more".to_string() } else { v.len().to_string() };
            format!("{{{}, ... {n} prefixes}}", v[..4].join(", "))
        }
    };
    if !not.is_empty() && not.len() < yes.len() {
        format!("{n} not in {}", show(&not))
    } else if yes.len() == 1 && !yes[0].contains('/') {
        format!("{n} {}", yes[0])
    } else {
        format!("{n} in {}", show(&yes))
    }
}
