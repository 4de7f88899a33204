//! The reference semantics of `lb(...)` (docs/language.md, "Load
//! balancing"): which backend a packet goes to and the frame that leaves,
//! computed from the packet's facts without codegen's help.
//!
//! The reference has no flow table: with the pool as declared, a flow's
//! first packet and every later one get the backend the Maglev table
//! gives, which is what the flow table keeps.

use super::{Facts, L4Facts, State};
use crate::ir::{self, Balance, Delivery, Encap, FlowHash, OuterSource};
use std::net::IpAddr;
use xpol_lang::maglev;

/// Where `lb` sent a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Balanced {
    pub pool: ir::PoolId,
    /// `None`: the pool has no backend for it (the packet is dropped).
    pub backend: Option<IpAddr>,
    /// The frame as it leaves when the FIB gives no next hop (the
    /// Ethernet addresses as they came); empty without a backend.
    pub frame: Vec<u8>,
}

/// The outer TTL or hop limit.
const OUTER_TTL: u8 = 64;

/// `lb` on a packet with facts `f` and bytes `packet`; `None` when the
/// packet is not IP (it passes).
pub(super) fn balance(policy: &ir::Policy, lb: &Balance, f: &Facts, packet: &[u8], state: &mut State) -> Option<Balanced> {
    let ip = f.ip.as_ref()?;
    let pool = &policy.pools[lb.pool];
    let l3 = 14 + 4 * f.vlan_depth as usize;
    let no_backend = Some(Balanced { pool: lb.pool, backend: None, frame: Vec::new() });
    // `nat` takes TCP and UDP of the pool's family, not fragments, with
    // no IPv6 extension header; it drops the rest.
    if let Delivery::Nat { .. } = lb.delivery {
        let l4 = matches!(f.l4, Some(L4Facts::Tcp { .. } | L4Facts::Udp { .. }));
        let whole = !matches!(ip.proto, Some((_, true, _)));
        let direct = !ip.v6 || ip.proto.is_some_and(|(p, _, _)| p == ip.nexthdr);
        if ip.v6 != pool.v6 || !l4 || !whole || !direct {
            return no_backend;
        }
    }
    let flow = match quoted_flow(f, ip, packet, l3) {
        Some(flow) => flow,
        None => {
            let (proto, frag) = match ip.proto {
                Some((proto, frag, _)) => (proto as u32, frag),
                None => (0, false),
            };
            let (sport, dport) = match &f.l4 {
                Some(L4Facts::Tcp { sport, dport, .. } | L4Facts::Udp { sport, dport, .. }) if !frag => (*sport as u32, *dport as u32),
                _ => (0, 0),
            };
            Flow { src: ip.src, dst: ip.dst, sport, dport, proto }
        }
    };
    let ports = (flow.sport << 16) | flow.dport;
    let mut words = Vec::new();
    match lb.hash {
        FlowHash::FiveTuple => {
            words.extend(maglev::addr_words(&octets(flow.src)));
            words.extend(maglev::addr_words(&octets(flow.dst)));
            words.extend([ports, flow.proto]);
        }
        FlowHash::Source => words.extend(maglev::addr_words(&octets(flow.src))),
        FlowHash::Ports => words.extend([ports, flow.proto]),
    }
    let hash = maglev::murmur3_words(maglev::FLOW_SEED, &words);
    let table = state.lb_tables.entry(lb.pool).or_insert_with(|| {
        let addrs: Vec<Vec<u8>> = pool.backends.iter().map(|b| octets(b.addr)).collect();
        let backends: Vec<maglev::MaglevBackend> = addrs.iter().zip(&pool.backends).map(|(a, b)| maglev::MaglevBackend { addr: a, weight: b.weight }).collect();
        maglev::build_table(&backends, pool.table_size).unwrap_or_default()
    });
    let slot = table.get((hash % pool.table_size) as usize).copied().unwrap_or(maglev::NO_BACKEND);
    let Some(backend) = pool.backends.get(slot as usize).map(|b| b.addr) else {
        return no_backend;
    };
    let (encap, src) = match lb.delivery {
        Delivery::Encap { encap, src } => (encap, src),
        Delivery::Nat { port } => return Some(translate(lb.pool, f, ip, packet, l3, backend, port, state)),
    };

    // The frame: the Ethernet addresses, the outer headers, the packet
    // from its IP header on (VLAN tags dropped).
    let inner = &packet[l3.min(packet.len())..];
    let inner_len = ip.len;
    let gue = matches!(encap, Encap::Gue { .. });
    let next = if gue { 17 } else if ip.v6 { 41 } else { 4 };
    let udp_len = if gue { 8 } else { 0 };
    let src = outer_source(src, hash);
    let mut frame = packet[..12].to_vec();
    if pool.v6 {
        frame.extend([0x86, 0xdd]);
        let word0 = (6u32 << 28) | ((ip.tos as u32) << 20) | (hash & 0xf_ffff);
        frame.extend(word0.to_be_bytes());
        frame.extend(((inner_len + udp_len) as u16).to_be_bytes());
        frame.extend([next, OUTER_TTL]);
        frame.extend(octets(src));
        frame.extend(octets(backend));
    } else {
        frame.extend([0x08, 0x00]);
        let df = ip.v6 || ip.df;
        let mut h = vec![0x45, ip.tos as u8];
        h.extend(((inner_len + 20 + udp_len) as u16).to_be_bytes());
        h.extend([0, 0, if df { 0x40 } else { 0 }, 0, OUTER_TTL, next, 0, 0]);
        h.extend(octets(src));
        h.extend(octets(backend));
        let sum = checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        frame.extend(h);
    }
    if let Encap::Gue { port } = encap {
        let mut udp = Vec::with_capacity(8);
        udp.extend((0xc000u16 | (hash & 0x3fff) as u16).to_be_bytes());
        udp.extend(port.to_be_bytes());
        udp.extend(((inner_len + 8) as u16).to_be_bytes());
        udp.extend([0, 0]);
        if pool.v6 {
            let sum = gue6_checksum(f, ip, packet, l3, &octets(src), &octets(backend), &udp);
            udp[6..8].copy_from_slice(&sum.to_be_bytes());
        }
        frame.extend(udp);
    }
    frame.extend_from_slice(inner);
    Some(Balanced { pool: lb.pool, backend: Some(backend), frame })
}

/// The UDP checksum of GUE over IPv6 (docs/language.md, "Load
/// balancing", outer checksums): over the pseudo-header (`src`, `dst`, the
/// UDP length, 17), the UDP header `udp` (checksum 0) and the packet
/// inside, its `ip.len` bytes from `l3`.
///
/// The rule codegen follows: TCP, ICMP over IPv4, ICMPv6 right after the
/// IPv6 header and UDP with a checksum, not fragments, have the packet
/// inside's sum derived from its own checksums, assumed right; the
/// others are summed over their bytes, or get 0 when the frame does not
/// hold them all. Here a derived packet whose checksums are right is
/// summed over its bytes too: the derivation must give the same; one
/// whose checksums are wrong gets what the derivation gives.
fn gue6_checksum(f: &Facts, ip: &super::IpFacts, packet: &[u8], l3: usize, src: &[u8], dst: &[u8], udp: &[u8]) -> u16 {
    let inner = packet.get(l3..l3 + ip.len as usize).filter(|_| ip.len <= GUE6_MAX_SUMMED);
    let mut outer = sum_words(src) + sum_words(dst) + sum_words(&udp[4..6]) + 17 + sum_words(udp);
    let (proto, whole) = match ip.proto {
        Some((p, frag, _)) => (p, !frag && (!ip.v6 || p == ip.nexthdr)),
        None => (0, false),
    };
    let hlen = if ip.v6 { 40 } else { 4 * ip.ihl as usize };
    let udp_checked = matches!(f.l4, Some(L4Facts::Udp { .. })) && super::be(packet, l3 + hlen + 6, 2).is_some_and(|c| c != 0);
    let derived = whole && (proto == 6 || (proto == 1 && !ip.v6) || (proto == 58 && ip.v6) || (proto == 17 && udp_checked));
    let finish = |sum: u64| match !fold(sum) {
        0 => 0xffff,
        c => c,
    };
    match inner {
        Some(bytes) if !derived || inner_checksums_verify(ip, proto, bytes) => finish(outer + sum_words(bytes)),
        _ if derived => {
            let inner = if ip.v6 {
                (6 << 12 | ip.tos << 4 | ip.flow >> 16) + (ip.flow & 0xffff) + ip.ttl + 255 * proto
            } else if proto == 1 {
                0
            } else {
                let pseudo = sum_words(&octets(ip.src)) + sum_words(&octets(ip.dst)) + proto + (ip.len - 4 * ip.ihl);
                u64::from(!fold(pseudo))
            };
            outer += inner;
            finish(outer)
        }
        _ => 0,
    }
}

/// The longest packet inside whose bytes GUE over IPv6 sums.
const GUE6_MAX_SUMMED: u64 = 4095;

/// The IPv4 header checksum and the L4 checksum (TCP, UDP, ICMP, ICMPv6)
/// of the IP packet `bytes` are right: each sum is 0 in one's complement.
fn inner_checksums_verify(ip: &super::IpFacts, proto: u64, bytes: &[u8]) -> bool {
    let zero = |sum: u64| sum.is_multiple_of(0xffff);
    let hlen = if ip.v6 { 40 } else { 4 * ip.ihl as usize };
    if bytes.len() < hlen || (!ip.v6 && !zero(sum_words(&bytes[..hlen]))) {
        return false;
    }
    let l4 = &bytes[hlen..];
    let pseudo = sum_words(&octets(ip.src)) + sum_words(&octets(ip.dst)) + proto + l4.len() as u64;
    zero(if proto == 1 { sum_words(l4) } else { pseudo + sum_words(l4) })
}

/// The sum of `b` as big-endian 16-bit words (a last odd byte padded with 0).
fn sum_words(b: &[u8]) -> u64 {
    b.chunks(2).map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum()
}

/// A one's-complement sum folded to 16 bits.
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// `nat`: the packet with its destination (and port, with `port`) the
/// backend's, checksums updated incrementally (RFC 1624: a checksum that
/// was wrong stays wrong; a UDP checksum of 0 stays 0, a computed 0 is
/// sent as 0xffff); records the reply's translation back in `state`.
#[allow(clippy::too_many_arguments)]
fn translate(pool: ir::PoolId, f: &Facts, ip: &super::IpFacts, packet: &[u8], l3: usize, backend: IpAddr, port: Option<u16>, state: &mut State) -> Balanced {
    let mut frame = packet.to_vec();
    let (dst_at, hlen) = if ip.v6 { (l3 + 24, 40) } else { (l3 + 16, 4 * ip.ihl as usize) };
    let l4 = l3 + hlen;
    let (tcp, sport, dport) = match f.l4 {
        Some(L4Facts::Tcp { sport, dport, .. }) => (true, sport as u16, dport as u16),
        Some(L4Facts::Udp { sport, dport, .. }) => (false, sport as u16, dport as u16),
        _ => unreachable!("nat takes TCP and UDP only"),
    };
    let new_port = port.unwrap_or(dport);
    rewrite(&mut frame, l3, ip.v6, l4, tcp, dst_at, &octets(backend), l4 + 2, new_port);
    let reply = NatKey { src: backend, dst: ip.src, sport: new_port, dport: sport, proto: if tcp { 6 } else { 17 } };
    state.nat.insert((pool, reply), (ip.dst, dport));
    Balanced { pool, backend: Some(backend), frame }
}

/// Puts `addr` at `addr_at` and `port` at `port_at` of a TCP or UDP
/// packet whose IP header is at `l3` and L4 header at `l4`, updating the
/// IPv4 header checksum and the L4 checksum incrementally (RFC 1624: a
/// checksum that was wrong stays wrong; a UDP checksum of 0 stays 0, a
/// computed 0 is sent as 0xffff).
#[allow(clippy::too_many_arguments)]
fn rewrite(frame: &mut [u8], l3: usize, v6: bool, l4: usize, tcp: bool, addr_at: usize, addr: &[u8], port_at: usize, port: u16) {
    let words = |b: &[u8]| b.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect::<Vec<u16>>();
    let addr_change: Vec<(u16, u16)> = words(&frame[addr_at..addr_at + addr.len()]).into_iter().zip(words(addr)).collect();
    let mut l4_change = addr_change.clone();
    l4_change.push((u16::from_be_bytes([frame[port_at], frame[port_at + 1]]), port));
    if !v6 {
        let c = u16::from_be_bytes([frame[l3 + 10], frame[l3 + 11]]);
        frame[l3 + 10..l3 + 12].copy_from_slice(&incremental(c, &addr_change).to_be_bytes());
    }
    let at = if tcp { l4 + 16 } else { l4 + 6 };
    let c = u16::from_be_bytes([frame[at], frame[at + 1]]);
    let c = match (tcp, c, incremental(c, &l4_change)) {
        (false, 0, _) => 0,
        (false, _, 0) => 0xffff,
        (_, _, new) => new,
    };
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    frame[addr_at..addr_at + addr.len()].copy_from_slice(addr);
    frame[port_at..port_at + 2].copy_from_slice(&port.to_be_bytes());
}

/// A reply's 5-tuple, as the reverse translation finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NatKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// RFC 1624, eqn. 3: the checksum `c` after 16-bit words change from the
/// first to the second of each pair.
fn incremental(c: u16, changes: &[(u16, u16)]) -> u16 {
    let mut sum = u32::from(!c);
    for &(old, new) in changes {
        sum += u32::from(!old) + u32::from(new);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The `tc:egress` program's first step when the policy has `nat` pools:
/// a reply whose 5-tuple a `nat` recorded gets the VIP and port back as
/// its source, checksums updated (a UDP checksum of 0 stays 0). Reads the
/// frame itself: untagged IPv4 (not a fragment) or IPv6 (no extension
/// header), TCP or UDP whole in the frame.
pub(super) fn reverse_nat(policy: &ir::Policy, packet: &[u8], state: &State) -> Option<Vec<u8>> {
    let be16 = |o: usize| packet.get(o..o + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let (v6, l4, proto, src_at) = match be16(12)? {
        0x0800 => {
            let ip = packet.get(14..34)?;
            let ihl = usize::from(ip[0] & 0xf);
            if ip[0] >> 4 != 4 || ihl < 5 || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
                return None;
            }
            (false, 14 + 4 * ihl, ip[9], 26)
        }
        0x86dd => {
            let ip = packet.get(14..54)?;
            if ip[0] >> 4 != 6 {
                return None;
            }
            (true, 54, ip[6], 22)
        }
        _ => return None,
    };
    let tcp = match proto {
        6 => true,
        17 => false,
        _ => return None,
    };
    packet.get(l4..l4 + if tcp { 18 } else { 8 })?;
    let alen = if v6 { 16 } else { 4 };
    let addr = |o: usize| -> IpAddr {
        if v6 {
            IpAddr::from(<[u8; 16]>::try_from(&packet[o..o + 16]).expect("16 bytes"))
        } else {
            IpAddr::from(<[u8; 4]>::try_from(&packet[o..o + 4]).expect("4 bytes"))
        }
    };
    let key = NatKey { src: addr(src_at), dst: addr(src_at + alen), sport: be16(l4)?, dport: be16(l4 + 2)?, proto };
    // The pools in order, the first that knows the reply.
    let &(vip, vport) = policy.nat_pools.iter().find_map(|&pool| state.nat.get(&(pool, key)))?;
    let mut out = packet.to_vec();
    rewrite(&mut out, 14, v6, l4, tcp, src_at, &octets(vip), l4, vport);
    Some(out)
}

/// The flow a packet belongs to, as the hash and the flow table see it.
struct Flow {
    src: IpAddr,
    dst: IpAddr,
    sport: u32,
    dport: u32,
    proto: u32,
}

/// For an ICMP error about a flow (ICMP unreachable, time exceeded,
/// parameter problem; ICMPv6 1 to 4 right after the IPv6 header), the flow
/// it quotes, the other way round: the quote is a packet the flow's
/// backend sent. `None` for any other packet, and for a quote cut short
/// of its IP header. The quote's ports are read where its header length
/// says, when the protocol is TCP or UDP and the frame holds them.
fn quoted_flow(f: &Facts, ip: &super::IpFacts, p: &[u8], l3: usize) -> Option<Flow> {
    let (v6, ty) = match f.l4 {
        Some(L4Facts::Icmp { v6, ty, .. }) => (v6, ty),
        _ => return None,
    };
    let error = if v6 { ip.nexthdr == 58 && (1..=4).contains(&ty) } else { matches!(ty, 3 | 11 | 12) };
    if !error {
        return None;
    }
    let q = l3 + if v6 { 40 } else { 4 * ip.ihl as usize } + 8;
    let (src, dst, proto, hl): (IpAddr, IpAddr, u32, usize) = if v6 {
        let b = p.get(q..q + 40)?;
        let a = |o: usize| IpAddr::from(<[u8; 16]>::try_from(&b[o..o + 16]).expect("16 bytes"));
        (a(8), a(24), u32::from(b[6]), 40)
    } else {
        let b = p.get(q..q + 20)?;
        let a = |o: usize| IpAddr::from(<[u8; 4]>::try_from(&b[o..o + 4]).expect("4 bytes"));
        (a(12), a(16), u32::from(b[9]), 4 * usize::from(b[0] & 0xf))
    };
    // A later IPv4 fragment's payload holds no ports.
    let later_fragment = !v6 && u16::from_be_bytes([p[q + 6], p[q + 7]]) & 0x1fff != 0;
    let (sport, dport) = match p.get(q + hl..q + hl + 4) {
        Some(x) if (proto == 6 || proto == 17) && !later_fragment => (u32::from(u16::from_be_bytes([x[0], x[1]])), u32::from(u16::from_be_bytes([x[2], x[3]]))),
        _ => (0, 0),
    };
    Some(Flow { src: dst, dst: src, sport: dport, dport: sport, proto })
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The outer source: the address, or the prefix with its host bits (the
/// last 32 at most) from the flow hash.
fn outer_source(src: OuterSource, hash: u32) -> IpAddr {
    match src {
        OuterSource::Fixed(a) => a,
        OuterSource::PerFlow(a, len) => {
            let mut b = octets(a);
            let host_bits = (b.len() * 8) as u32 - u32::from(len);
            let n = b.len();
            let last = u32::from_be_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]);
            let mask = if host_bits >= 32 { u32::MAX } else { (1u32 << host_bits) - 1 };
            b[n - 4..].copy_from_slice(&(last | (hash & mask)).to_be_bytes());
            match a {
                IpAddr::V4(_) => IpAddr::from(<[u8; 4]>::try_from(&b[..]).expect("4 bytes")),
                IpAddr::V6(_) => IpAddr::from(<[u8; 16]>::try_from(&b[..]).expect("16 bytes")),
            }
        }
    }
}

/// The Internet checksum (RFC 1071) of a header.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
