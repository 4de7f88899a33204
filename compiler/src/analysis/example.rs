//! Cubes to packets: a concrete frame in a cube, or none when the cube
//! holds no packet (its lengths leave no room for the headers its class
//! carries). The frame is written byte by byte as `reference::parse`
//! reads it, so that it can be run through the reference and through
//! compiled programs alike.

use super::space::{Cube, Dim, Set, Space, IPV6_EXT, L4_ICMP, L4_NONE, L4_TCP, L4_UDP, NEXTHDR_IS_PROTO, PROTO_ABSENT};
use std::net::{Ipv4Addr, Ipv6Addr};

/// A packet of a region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// The whole frame.
    pub bytes: Vec<u8>,
    /// The frame for people: `ipv4 198.51.100.1 -> 10.0.0.1 tcp 1024 -> 22, 54 bytes`.
    pub summary: String,
}

/// The values chosen for a packet, before its bytes.
#[derive(Clone, Debug)]
struct Plan {
    v: [u128; super::space::NDIMS],
    /// How an absent L4 header or protocol is made absent.
    cut: Cut,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    None,
    /// TCP with a data offset below 5.
    TcpOffset,
    /// The frame ends inside the header.
    Frame,
    /// The datagram's length ends inside the header.
    Datagram,
    /// IPv6: a chain of more extension headers than the parser walks.
    LongChain,
}

const TAGS: [u128; 2] = [0x8100, 0x88a8];

/// Up to `n` values of a set, the first ones, preferring `prefer`.
fn candidates(s: &Set, prefer: &[u128], n: usize) -> Vec<u128> {
    let mut out: Vec<u128> = prefer.iter().copied().filter(|v| s.contains(*v)).collect();
    for &(lo, hi) in &s.0 {
        let mut v = lo;
        while out.len() < n + prefer.len() {
            if !out.contains(&v) {
                out.push(v);
            }
            if v == hi {
                break;
            }
            v += 1;
        }
    }
    out.truncate(n.max(1) + prefer.len());
    out
}

/// The smallest value of `s` in `lo..=hi`.
fn pick(s: &Set, lo: u128, hi: u128) -> Option<u128> {
    s.at_least(lo).filter(|&v| v <= hi)
}

/// A packet in the cube, if it holds one, as small as the cube allows.
pub fn realize(c: &Cube, universe: &Space) -> Option<Example> {
    for u in &universe.0 {
        let Some(piece) = c.intersect(u) else { continue };
        if let Some(plan) = plan(&piece) {
            return Some(build(&plan));
        }
    }
    None
}

fn plan(c: &Cube) -> Option<Plan> {
    let g = |d: Dim| c.get(d);
    let mut v = [0u128; super::space::NDIMS];
    for d in Dim::ALL {
        v[d as usize] = g(d).first()?;
    }
    // Nicer defaults where the cube leaves the choice.
    for (d, nice) in [(Dim::Ttl, 64u128), (Dim::Ihl, 5), (Dim::Sport, 1024), (Dim::Window, 8192), (Dim::Proto, 6)] {
        if g(d).contains(nice) {
            v[d as usize] = nice;
        }
    }
    let l2 = v[Dim::L2 as usize];
    if l2 == 0 {
        v[Dim::Len as usize] = pick(g(Dim::Len), 0, 13)?;
        return Some(Plan { v, cut: Cut::None });
    }
    let l3 = v[Dim::L3 as usize];
    let l4 = v[Dim::L4 as usize];
    for depth in candidates(g(Dim::VlanDepth), &[], 4) {
        v[Dim::VlanDepth as usize] = depth;
        let base = 14 + 4 * depth.min(2);
        if l3 == 0 {
            for et in candidates(g(Dim::EthType), &[0x0806], 3) {
                v[Dim::EthType as usize] = et;
                let (lo, hi) = if TAGS.contains(&et) && depth < 3 { (base, base + 3) } else { (base, u32::MAX as u128) };
                if let Some(len) = pick(g(Dim::Len), lo, hi) {
                    v[Dim::Len as usize] = len;
                    return Some(Plan { v, cut: Cut::None });
                }
            }
            continue;
        }
        let l4n: u128 = match l4 {
            L4_TCP => 20,
            L4_UDP | L4_ICMP => 8,
            _ => 0,
        };
        let protos = candidates(g(Dim::Proto), &[59, 6, 253], 2);
        let ihls = if l3 == 4 { candidates(g(Dim::Ihl), &[], 1) } else { vec![0] };
        for &proto in &protos {
            v[Dim::Proto as usize] = proto;
            for &ihl in &ihls {
                v[Dim::Ihl as usize] = ihl;
                if let Some(p) = lengths(c, &mut v, l3, l4, l4n, base, ihl, proto) {
                    return Some(p);
                }
            }
        }
    }
    None
}

/// Chooses `pkt.len` and `ip.len` for an IP packet (and how an absent
/// header is cut), or none fits.
#[allow(clippy::too_many_arguments)]
fn lengths(c: &Cube, v: &mut [u128; super::space::NDIMS], l3: u128, l4: u128, l4n: u128, base: u128, ihl: u128, proto: u128) -> Option<Plan> {
    let lens = c.get(Dim::Len);
    let iplens = c.get(Dim::IpLen);
    let frag = v[Dim::Frag as usize] == 1;
    let off = v[Dim::FragOff8 as usize];
    let nh = v[Dim::NextHdr as usize];
    // Bytes of IP header (and IPv6 extension headers) before L4.
    let hdr = if l3 == 4 {
        4 * ihl
    } else {
        let mut n = 40;
        if nh != NEXTHDR_IS_PROTO {
            n += 8;
            if frag && nh != 44 {
                n += 8;
            }
        }
        n
    };
    let mut set = |len: u128, iplen: u128, cut: Cut| {
        v[Dim::Len as usize] = len;
        v[Dim::IpLen as usize] = iplen;
        Some(Plan { v: *v, cut })
    };
    let ip_min = if l3 == 4 { 4 * ihl } else { 40 };
    if l3 == 6 && proto == PROTO_ABSENT {
        // The chain cut by the frame, by the datagram, or too long.
        let first_ext = base + 40;
        if let (Some(len), Some(iplen)) = (pick(lens, first_ext, first_ext + 7), pick(iplens, 40, 0xffff + 40)) {
            return set(len, iplen, Cut::Frame);
        }
        if let (Some(len), Some(iplen)) = (pick(lens, first_ext, u32::MAX as u128), pick(iplens, 41, 47)) {
            return set(len, iplen, Cut::Datagram);
        }
        let long = 8 * 8;
        let iplen = if iplens.contains(40) { Some(40) } else { pick(iplens, 40 + long, 0xffff + 40) };
        if let (Some(len), Some(iplen)) = (pick(lens, base + 40 + long, u32::MAX as u128), iplen) {
            return set(len, iplen, Cut::LongChain);
        }
        return None;
    }
    // IPv6 with extension headers: a payload length shorter than the
    // chain cuts it (no protocol), unless 0 (a jumbogram).
    let ip_ok = |iplen: u128, need: u128| iplen >= need || (l3 == 6 && iplen == 40);
    let needs_cut = l4 == L4_NONE && off == 0 && !frag_hides(frag, off) && matches!((l3, proto), (4, 17) | (4, 1) | (6, 17) | (6, 58));
    if l4 == L4_NONE && off == 0 && proto == 6 {
        // A TCP header with a data offset below 5 is no TCP header.
        let len = pick(lens, base + hdr, u32::MAX as u128)?;
        let iplen = first_ok(iplens, ip_min.max(hdr), &ip_ok, hdr)?;
        return set(len, iplen, Cut::TcpOffset);
    }
    if needs_cut {
        // Cut by the frame inside the 8-byte header...
        if let (Some(len), Some(iplen)) = (pick(lens, base + hdr, base + hdr + 7), first_ok(iplens, ip_min.max(hdr), &ip_ok, hdr)) {
            return set(len, iplen, Cut::Frame);
        }
        // ... or by the datagram.
        let lo = ip_min.max(hdr).max(if l3 == 6 { 41 } else { 0 });
        if let (Some(len), Some(iplen)) = (pick(lens, base + hdr, u32::MAX as u128), pick(iplens, lo, hdr + 7)) {
            return set(len, iplen, Cut::Datagram);
        }
        return None;
    }
    let need = hdr + l4n;
    let len = pick(lens, base + need, u32::MAX as u128)?;
    let iplen = first_ok(iplens, ip_min.max(need), &ip_ok, need)?;
    set(len, iplen, Cut::None)
}

/// A fragment past the first carries no L4 header anyway.
fn frag_hides(_frag: bool, off: u128) -> bool {
    off != 0
}

/// The smallest `ip.len` of the set that `ok` accepts, trying 40 first
/// (an IPv6 jumbogram) and then values from `lo`.
fn first_ok(s: &Set, lo: u128, ok: &dyn Fn(u128, u128) -> bool, need: u128) -> Option<u128> {
    if s.contains(40) && ok(40, need) {
        return Some(40);
    }
    s.at_least(lo).filter(|&x| ok(x, need))
}

fn build(p: &Plan) -> Example {
    let v = |d: Dim| p.v[d as usize];
    let len = v(Dim::Len) as usize;
    if v(Dim::L2) == 0 {
        return Example { bytes: vec![0; len], summary: format!("{len} bytes, no Ethernet header") };
    }
    let mut b = Vec::with_capacity(len.max(64));
    b.extend_from_slice(&(v(Dim::EthDst) as u64).to_be_bytes()[2..]);
    b.extend_from_slice(&(v(Dim::EthSrc) as u64).to_be_bytes()[2..]);
    let depth = v(Dim::VlanDepth);
    let et = v(Dim::EthType) as u16;
    let tci = |id: u128, pcp: u128| ((pcp as u16) << 13) | id as u16;
    let mut summary = String::new();
    let tags = depth.min(2);
    for i in 0..tags {
        b.extend_from_slice(&0x8100u16.to_be_bytes());
        let t = if i == 0 { tci(v(Dim::Vlan1Id), v(Dim::Vlan1Pcp)) } else { tci(v(Dim::Vlan2Id), v(Dim::Vlan2Pcp)) };
        b.extend_from_slice(&t.to_be_bytes());
        summary.push_str(&format!("vlan {} ", t & 0xfff));
    }
    b.extend_from_slice(&et.to_be_bytes());
    let l3 = v(Dim::L3);
    if l3 == 0 {
        if depth == 3 {
            summary.push_str("+ a third tag, ");
        }
        summary.push_str(&format!("eth.type 0x{et:04x}, not IP"));
        // A header that is not IP: version 0.
        b.resize(len.max(b.len()), 0);
        b.truncate(len);
        return Example { summary: format!("{summary}, {len} bytes"), bytes: b };
    }
    let ip_at = b.len();
    let proto = v(Dim::Proto);
    let l4 = v(Dim::L4);
    let tos = ((v(Dim::Dscp) << 2) | v(Dim::Ecn)) as u8;
    let frag = v(Dim::Frag) == 1;
    let off = v(Dim::FragOff8) as u16;
    let (src, dst);
    if l3 == 4 {
        let ihl = v(Dim::Ihl) as u8;
        b.push(0x40 | ihl);
        b.push(tos);
        b.extend_from_slice(&(v(Dim::IpLen) as u16).to_be_bytes());
        b.extend_from_slice(&(v(Dim::Id) as u16).to_be_bytes());
        let mut fw = off & 0x1fff;
        if frag && off == 0 {
            fw |= 0x2000;
        }
        if v(Dim::Df) == 1 {
            fw |= 0x4000;
        }
        b.extend_from_slice(&fw.to_be_bytes());
        b.push(v(Dim::Ttl) as u8);
        b.push(proto as u8);
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&(v(Dim::Src) as u32).to_be_bytes());
        b.extend_from_slice(&(v(Dim::Dst) as u32).to_be_bytes());
        b.resize(ip_at + 4 * ihl as usize, 0);
        src = Ipv4Addr::from(v(Dim::Src) as u32).to_string();
        dst = Ipv4Addr::from(v(Dim::Dst) as u32).to_string();
        summary.push_str(&format!("ipv4 {src} -> {dst}"));
    } else {
        let w0 = (6u32 << 28) | ((tos as u32) << 20) | v(Dim::Flow) as u32;
        b.extend_from_slice(&w0.to_be_bytes());
        b.extend_from_slice(&((v(Dim::IpLen) - 40) as u16).to_be_bytes());
        let nh = v(Dim::NextHdr);
        let first = if nh == NEXTHDR_IS_PROTO { proto } else { nh };
        b.push(first as u8);
        b.push(v(Dim::Ttl) as u8);
        b.extend_from_slice(&v(Dim::Src).to_be_bytes());
        b.extend_from_slice(&v(Dim::Dst).to_be_bytes());
        src = Ipv6Addr::from(v(Dim::Src)).to_string();
        dst = Ipv6Addr::from(v(Dim::Dst)).to_string();
        summary.push_str(&format!("ipv6 {src} -> {dst}"));
        if nh != NEXTHDR_IS_PROTO {
            if p.cut == Cut::LongChain {
                // Eight destination-options headers, the last naming a ninth.
                for _ in 0..8 {
                    b.extend_from_slice(&[60, 0, 0, 0, 0, 0, 0, 0]);
                }
                b[ip_at + 6] = nh as u8;
                summary.push_str(", a chain of more than 8 extension headers");
            } else {
                // The first extension header, then a fragment header when
                // the packet is a fragment and the first is not one.
                let frag_after = frag && nh != 44;
                let next = if frag_after { 44 } else { proto };
                let next = if proto == PROTO_ABSENT { 60 } else { next };
                let hdr_at = b.len();
                ext_header(&mut b, nh as u8, next as u8, off, frag);
                if frag_after {
                    ext_header(&mut b, 44, proto as u8, off, frag);
                }
                if p.cut == Cut::Frame && proto == PROTO_ABSENT {
                    b.truncate(hdr_at);
                }
                summary.push_str(&format!(", extension header {nh}"));
            }
        }
    }
    if proto != PROTO_ABSENT {
        summary.push_str(&format!(", proto {proto}"));
    }
    if frag {
        summary.push_str(&format!(", fragment at {}", off as u32 * 8));
    }
    let l4_at = b.len();
    match l4 {
        L4_TCP => {
            b.extend_from_slice(&(v(Dim::Sport) as u16).to_be_bytes());
            b.extend_from_slice(&(v(Dim::Dport) as u16).to_be_bytes());
            b.extend_from_slice(&[0; 8]);
            b.push(0x50);
            b.push(v(Dim::TcpFlags) as u8);
            b.extend_from_slice(&(v(Dim::Window) as u16).to_be_bytes());
            b.extend_from_slice(&[0; 4]);
            summary.push_str(&format!(", tcp {} -> {} flags 0x{:02x}", v(Dim::Sport), v(Dim::Dport), v(Dim::TcpFlags)));
        }
        L4_UDP => {
            b.extend_from_slice(&(v(Dim::Sport) as u16).to_be_bytes());
            b.extend_from_slice(&(v(Dim::Dport) as u16).to_be_bytes());
            b.extend_from_slice(&(v(Dim::UdpLen) as u16).to_be_bytes());
            b.extend_from_slice(&[0; 2]);
            summary.push_str(&format!(", udp {} -> {}", v(Dim::Sport), v(Dim::Dport)));
        }
        L4_ICMP => {
            b.push(v(Dim::IcmpType) as u8);
            b.push(v(Dim::IcmpCode) as u8);
            b.extend_from_slice(&[0; 6]);
            summary.push_str(&format!(", {} type {} code {}", if l3 == 4 { "icmp" } else { "icmpv6" }, v(Dim::IcmpType), v(Dim::IcmpCode)));
        }
        _ => {
            if p.cut == Cut::TcpOffset {
                // A TCP header whose data offset (0) is below 5.
                b.extend_from_slice(&[0; 20]);
                summary.push_str(", no L4 header (TCP data offset 0)");
            } else if matches!(p.cut, Cut::Frame | Cut::Datagram) && proto != PROTO_ABSENT {
                summary.push_str(", no L4 header (cut short)");
            } else if proto == PROTO_ABSENT {
                summary.push_str(", protocol unknown");
            }
        }
    }
    let _ = l4_at;
    // Padding to the length, or the frame cut there.
    b.resize(len, 0);
    Example { summary: format!("{summary}, {len} bytes"), bytes: b }
}

fn ext_header(b: &mut Vec<u8>, kind: u8, next: u8, off: u16, frag: bool) {
    if kind == 44 {
        let w = (off << 3) | if frag && off == 0 { 1 } else { 0 };
        b.extend_from_slice(&[next, 0]);
        b.extend_from_slice(&w.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, 1]);
    } else {
        // Hop-by-hop, routing, destination options (length in 8-byte
        // units after the first 8) or AH (4-byte units after the first 8,
        // written as 0 + 2): 8 bytes each here.
        let hlen = 0u8;
        b.extend_from_slice(&[next, hlen, 0, 0, 0, 0, 0, 0]);
    }
    debug_assert!(IPV6_EXT.contains(&(kind as u128)));
}

/// The point of the packet space a frame is, as the reference parses it
/// (for tests: is a packet inside a reported region?). Dimensions the
/// frame's classes do not use are 0.
pub fn locate(frame: &[u8]) -> Cube {
    use crate::reference::{parse, L4Facts};
    use std::net::IpAddr;
    let f = parse(frame);
    let mut v = [0u128; super::space::NDIMS];
    let mut put = |d: Dim, x: u128| v[d as usize] = x;
    put(Dim::Len, f.len as u128);
    if let Some((src, dst, et)) = f.eth {
        put(Dim::L2, 1);
        put(Dim::EthSrc, src as u128);
        put(Dim::EthDst, dst as u128);
        put(Dim::EthType, et as u128);
        put(Dim::VlanDepth, f.vlan_depth as u128);
        if let Some(t) = f.vlan1 {
            put(Dim::Vlan1Id, (t & 0xfff) as u128);
            put(Dim::Vlan1Pcp, (t >> 13) as u128);
        }
        if let Some(t) = f.vlan2 {
            put(Dim::Vlan2Id, (t & 0xfff) as u128);
            put(Dim::Vlan2Pcp, (t >> 13) as u128);
        }
    }
    if let Some(ip) = &f.ip {
        let addr = |a: IpAddr| match a {
            IpAddr::V4(a) => u32::from(a) as u128,
            IpAddr::V6(a) => u128::from(a),
        };
        put(Dim::L3, if ip.v6 { 6 } else { 4 });
        put(Dim::Src, addr(ip.src));
        put(Dim::Dst, addr(ip.dst));
        put(Dim::Ttl, ip.ttl as u128);
        put(Dim::IpLen, ip.len as u128);
        put(Dim::Dscp, (ip.tos >> 2) as u128);
        put(Dim::Ecn, (ip.tos & 3) as u128);
        match ip.proto {
            Some((p, frag, off)) => {
                put(Dim::Proto, p as u128);
                put(Dim::Frag, frag as u128);
                put(Dim::FragOff8, (off / 8) as u128);
            }
            None => put(Dim::Proto, PROTO_ABSENT),
        }
        if ip.v6 {
            let ext = IPV6_EXT.contains(&(ip.nexthdr as u128));
            put(Dim::NextHdr, if ext { ip.nexthdr as u128 } else { NEXTHDR_IS_PROTO });
            put(Dim::Flow, ip.flow as u128);
        } else {
            put(Dim::Ihl, ip.ihl as u128);
            put(Dim::Id, ip.id as u128);
            put(Dim::Df, ip.df as u128);
        }
        match &f.l4 {
            Some(L4Facts::Tcp { sport, dport, flags, window }) => {
                put(Dim::L4, L4_TCP);
                put(Dim::Sport, *sport as u128);
                put(Dim::Dport, *dport as u128);
                put(Dim::TcpFlags, *flags as u128);
                put(Dim::Window, *window as u128);
            }
            Some(L4Facts::Udp { sport, dport, len }) => {
                put(Dim::L4, L4_UDP);
                put(Dim::Sport, *sport as u128);
                put(Dim::Dport, *dport as u128);
                put(Dim::UdpLen, *len as u128);
            }
            Some(L4Facts::Icmp { ty, code, .. }) => {
                put(Dim::L4, L4_ICMP);
                put(Dim::IcmpType, *ty as u128);
                put(Dim::IcmpCode, *code as u128);
            }
            None => {}
        }
    }
    super::describe::clear_irrelevant(&Cube(v.map(Set::one)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::space::universe;

    /// Every example the builder makes lies in its cube as the reference
    /// parses it, for each class of the universe and a few narrowings.
    #[test]
    fn examples_parse_back_into_their_cubes() {
        let u = universe();
        let mut cubes: Vec<Cube> = u.0.clone();
        for c in &u.0 {
            cubes.push(c.clone().with(Dim::VlanDepth, c.get(Dim::VlanDepth).intersect(&Set::range(1, 3))));
            cubes.push(c.clone().with(Dim::Len, c.get(Dim::Len).intersect(&Set::range(0, 60))));
            cubes.push(c.clone().with(Dim::Proto, c.get(Dim::Proto).intersect(&Set::from_ranges(vec![(17, 17), (58, 58), (1, 1)]))));
            cubes.push(c.clone().with(Dim::Ihl, c.get(Dim::Ihl).intersect(&Set::range(7, 15))).with(Dim::IpLen, c.get(Dim::IpLen).intersect(&Set::range(0, 60))));
        }
        let mut made = 0;
        for c in cubes.iter().filter(|c| !c.is_empty()) {
            if let Some(e) = realize(c, &u) {
                let p = locate(&e.bytes);
                assert!(p.intersect(c).is_some() && u.intersects_cube(&p), "{c:?}\n{}\n{p:?}", e.summary);
                made += 1;
            }
        }
        assert!(made >= u.len() * 3, "{made}");
    }
}
