//! Building test packets, including malformed ones.
//!
//! Headers are written byte by byte rather than through a packet crate: the
//! point of these packets is often to be wrong in one precise way (IHL below
//! 5, a total length longer than the frame, an extension-header chain past
//! the parser's bound), which well-behaved builders refuse to produce. The
//! tests cross-check well-formed packets against etherparse's parser.

use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VlanTag {
    /// 0x8100 (802.1Q) or 0x88a8 (802.1ad).
    pub tpid: u16,
    pub pcp: u8,
    pub id: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4Spec {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub tos: u8,
    pub id: u16,
    pub dont_fragment: bool,
    pub more_fragments: bool,
    /// Fragment offset in bytes (a multiple of 8).
    pub frag_offset: u16,
    /// Options, padded with zeros to a multiple of 4 bytes.
    pub options: Vec<u8>,
    /// Overrides: the IHL nibble, the total length, the protocol.
    pub ihl: Option<u8>,
    pub total_len: Option<u16>,
    pub protocol: Option<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv6Ext {
    /// Hop-by-hop options of (1 + len8) * 8 bytes.
    HopByHop { len8: u8 },
    Routing { len8: u8 },
    DestOpts { len8: u8 },
    /// Fragment header; offset in bytes (a multiple of 8).
    Fragment { offset: u16, more: bool, id: u32 },
    /// Authentication header of (2 + len4) * 4 bytes.
    Auth { len4: u8 },
}

impl Ipv6Ext {
    fn code(self) -> u8 {
        match self {
            Ipv6Ext::HopByHop { .. } => 0,
            Ipv6Ext::Routing { .. } => 43,
            Ipv6Ext::DestOpts { .. } => 60,
            Ipv6Ext::Fragment { .. } => 44,
            Ipv6Ext::Auth { .. } => 51,
        }
    }

    fn len(self) -> usize {
        match self {
            Ipv6Ext::HopByHop { len8 } | Ipv6Ext::Routing { len8 } | Ipv6Ext::DestOpts { len8 } => (1 + len8 as usize) * 8,
            Ipv6Ext::Fragment { .. } => 8,
            Ipv6Ext::Auth { len4 } => (2 + len4 as usize) * 4,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6Spec {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    pub traffic_class: u8,
    pub flow_label: u32,
    pub ext: Vec<Ipv6Ext>,
    /// Override of the payload length field.
    pub payload_len: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L3 {
    Ipv4(Ipv4Spec),
    Ipv6(Ipv6Spec),
    /// Any other EtherType, followed by the payload.
    Other { ethertype: u16 },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpSpec {
    pub sport: u16,
    pub dport: u16,
    /// FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, URG 0x20, ECE 0x40, CWR 0x80.
    pub flags: u8,
    pub window: u16,
    /// Override of the data offset nibble.
    pub data_offset: Option<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    None,
    Tcp(TcpSpec),
    Udp { sport: u16, dport: u16 },
    Icmp4 { ty: u8, code: u8 },
    Icmp6 { ty: u8, code: u8 },
    /// An upper-layer protocol number and its bytes.
    Raw { protocol: u8, bytes: Vec<u8> },
}

impl L4 {
    fn protocol(&self) -> u8 {
        match self {
            L4::None => 59,
            L4::Tcp(_) => 6,
            L4::Udp { .. } => 17,
            L4::Icmp4 { .. } => 1,
            L4::Icmp6 { .. } => 58,
            L4::Raw { protocol, .. } => *protocol,
        }
    }
}

/// A packet described by its headers; [`PacketSpec::build`] gives the bytes
/// of the Ethernet frame (no FCS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketSpec {
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub vlans: Vec<VlanTag>,
    pub l3: L3,
    pub l4: L4,
    pub payload: Vec<u8>,
}

/// Where the headers of a built packet start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub l3: usize,
    /// Start of each IPv6 extension header.
    pub ext: Vec<usize>,
    pub l4: usize,
    /// End of the fixed L4 header.
    pub l4_end: usize,
    pub len: usize,
}

fn v4(src: Ipv4Addr, dst: Ipv4Addr) -> Ipv4Spec {
    Ipv4Spec {
        src,
        dst,
        ttl: 64,
        tos: 0,
        id: 1,
        dont_fragment: false,
        more_fragments: false,
        frag_offset: 0,
        options: Vec::new(),
        ihl: None,
        total_len: None,
        protocol: None,
    }
}

fn v6(src: Ipv6Addr, dst: Ipv6Addr) -> Ipv6Spec {
    Ipv6Spec { src, dst, hop_limit: 64, traffic_class: 0, flow_label: 0, ext: Vec::new(), payload_len: None }
}

impl PacketSpec {
    fn new(l3: L3, l4: L4) -> PacketSpec {
        PacketSpec { eth_src: [2, 0, 0, 0, 0, 1], eth_dst: [2, 0, 0, 0, 0, 2], vlans: Vec::new(), l3, l4, payload: Vec::new() }
    }

    pub fn tcp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> PacketSpec {
        Self::new(L3::Ipv4(v4(src, dst)), L4::Tcp(TcpSpec { sport, dport, window: 65535, ..TcpSpec::default() }))
    }

    pub fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> PacketSpec {
        Self::new(L3::Ipv4(v4(src, dst)), L4::Udp { sport, dport })
    }

    pub fn icmp4(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, code: u8) -> PacketSpec {
        Self::new(L3::Ipv4(v4(src, dst)), L4::Icmp4 { ty, code })
    }

    pub fn tcp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> PacketSpec {
        Self::new(L3::Ipv6(v6(src, dst)), L4::Tcp(TcpSpec { sport, dport, window: 65535, ..TcpSpec::default() }))
    }

    pub fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> PacketSpec {
        Self::new(L3::Ipv6(v6(src, dst)), L4::Udp { sport, dport })
    }

    pub fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, code: u8) -> PacketSpec {
        Self::new(L3::Ipv6(v6(src, dst)), L4::Icmp6 { ty, code })
    }

    /// A frame of another EtherType (ARP, ...) with `len` payload bytes.
    pub fn ethertype(ethertype: u16, len: usize) -> PacketSpec {
        PacketSpec { payload: vec![0; len], ..Self::new(L3::Other { ethertype }, L4::None) }
    }

    // ---- builder-style setters

    pub fn flags(mut self, flags: u8) -> Self {
        if let L4::Tcp(t) = &mut self.l4 {
            t.flags = flags;
        }
        self
    }

    pub fn syn(self) -> Self {
        let f = self.tcp_flags();
        self.flags(f | 0x02)
    }

    pub fn ack(self) -> Self {
        let f = self.tcp_flags();
        self.flags(f | 0x10)
    }

    fn tcp_flags(&self) -> u8 {
        match &self.l4 {
            L4::Tcp(t) => t.flags,
            _ => 0,
        }
    }

    pub fn tcp(mut self, f: impl FnOnce(&mut TcpSpec)) -> Self {
        if let L4::Tcp(t) = &mut self.l4 {
            f(t);
        }
        self
    }

    pub fn eth(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.eth_src = src;
        self.eth_dst = dst;
        self
    }

    pub fn vlan(mut self, id: u16) -> Self {
        self.vlans.push(VlanTag { tpid: 0x8100, pcp: 0, id });
        self
    }

    pub fn vlan_tag(mut self, tag: VlanTag) -> Self {
        self.vlans.push(tag);
        self
    }

    /// 802.1ad outer tag, 802.1Q inner tag.
    pub fn qinq(mut self, outer: u16, inner: u16) -> Self {
        self.vlans.push(VlanTag { tpid: 0x88a8, pcp: 0, id: outer });
        self.vlans.push(VlanTag { tpid: 0x8100, pcp: 0, id: inner });
        self
    }

    pub fn ipv4(mut self, f: impl FnOnce(&mut Ipv4Spec)) -> Self {
        if let L3::Ipv4(ip) = &mut self.l3 {
            f(ip);
        }
        self
    }

    pub fn ipv6(mut self, f: impl FnOnce(&mut Ipv6Spec)) -> Self {
        if let L3::Ipv6(ip) = &mut self.l3 {
            f(ip);
        }
        self
    }

    /// A fragment: IPv4 offset and MF flag, or an IPv6 fragment header.
    pub fn frag(self, offset: u16, more: bool) -> Self {
        match self.l3 {
            L3::Ipv4(_) => self.ipv4(|ip| {
                ip.frag_offset = offset;
                ip.more_fragments = more;
            }),
            _ => self.ext(Ipv6Ext::Fragment { offset, more, id: 7 }),
        }
    }

    pub fn ext(self, e: Ipv6Ext) -> Self {
        self.ipv6(|ip| ip.ext.push(e))
    }

    pub fn payload(mut self, len: usize) -> Self {
        self.payload = (0..len).map(|i| i as u8).collect();
        self
    }

    // ---- bytes

    /// The header offsets of the built packet.
    pub fn layout(&self) -> Layout {
        let l3 = 14 + 4 * self.vlans.len();
        let mut ext = Vec::new();
        let l4 = match &self.l3 {
            L3::Ipv4(ip) => l3 + 20 + padded(&ip.options).len(),
            L3::Ipv6(ip) => {
                let mut o = l3 + 40;
                for e in &ip.ext {
                    ext.push(o);
                    o += e.len();
                }
                o
            }
            L3::Other { .. } => l3,
        };
        let l4_len = match &self.l4 {
            L4::None => 0,
            L4::Tcp(_) => 20,
            L4::Udp { .. } | L4::Icmp4 { .. } | L4::Icmp6 { .. } => 8,
            L4::Raw { bytes, .. } => bytes.len(),
        };
        Layout { l3, ext, l4, l4_end: l4 + l4_len, len: l4 + l4_len + self.payload.len() }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(128);
        p.extend(self.eth_dst);
        p.extend(self.eth_src);
        // Tags, outermost first: each TPID is followed by its TCI.
        for v in &self.vlans {
            p.extend(v.tpid.to_be_bytes());
            p.extend((((v.pcp as u16) << 13) | (v.id & 0xfff)).to_be_bytes());
        }
        let ethertype = match &self.l3 {
            L3::Ipv4(_) => 0x0800,
            L3::Ipv6(_) => 0x86dd,
            L3::Other { ethertype } => *ethertype,
        };
        p.extend(ethertype.to_be_bytes());

        let mut l4 = self.l4_bytes();
        l4.extend(&self.payload);
        match &self.l3 {
            L3::Ipv4(ip) => {
                let options = padded(&ip.options);
                let hlen = 20 + options.len();
                let total = ip.total_len.unwrap_or((hlen + l4.len()) as u16);
                let ihl = ip.ihl.unwrap_or((hlen / 4) as u8);
                let flags_frag = (u16::from(ip.dont_fragment) << 14) | (u16::from(ip.more_fragments) << 13) | (ip.frag_offset / 8);
                let proto = ip.protocol.unwrap_or(self.l4.protocol());
                let mut h = vec![0x40 | (ihl & 0xf), ip.tos];
                h.extend(total.to_be_bytes());
                h.extend(ip.id.to_be_bytes());
                h.extend(flags_frag.to_be_bytes());
                h.extend([ip.ttl, proto, 0, 0]);
                h.extend(ip.src.octets());
                h.extend(ip.dst.octets());
                h.extend(&options);
                let sum = checksum(&h, 0);
                h[10..12].copy_from_slice(&sum.to_be_bytes());
                if let Some(off) = l4_checksum_offset(&self.l4) {
                    let mut pseudo = Vec::new();
                    pseudo.extend(ip.src.octets());
                    pseudo.extend(ip.dst.octets());
                    pseudo.extend([0, proto]);
                    pseudo.extend((l4.len() as u16).to_be_bytes());
                    let sum = if matches!(self.l4, L4::Icmp4 { .. }) { checksum(&l4, 0) } else { checksum(&l4, sum_words(&pseudo)) };
                    l4[off..off + 2].copy_from_slice(&sum.to_be_bytes());
                }
                p.extend(h);
            }
            L3::Ipv6(ip) => {
                let mut ext_bytes = Vec::new();
                let codes: Vec<u8> = ip.ext.iter().map(|e| e.code()).chain([self.l4.protocol()]).collect();
                for (i, e) in ip.ext.iter().enumerate() {
                    let next = codes[i + 1];
                    let mut b = vec![0u8; e.len()];
                    b[0] = next;
                    match e {
                        Ipv6Ext::HopByHop { len8 } | Ipv6Ext::Routing { len8 } | Ipv6Ext::DestOpts { len8 } => {
                            b[1] = *len8;
                            // PadN option filling the rest (options headers).
                            if !matches!(e, Ipv6Ext::Routing { .. }) {
                                b[2] = 1;
                                b[3] = (e.len() - 4) as u8;
                            }
                        }
                        Ipv6Ext::Fragment { offset, more, id } => {
                            b[2..4].copy_from_slice(&((offset & 0xfff8) | u16::from(*more)).to_be_bytes());
                            b[4..8].copy_from_slice(&id.to_be_bytes());
                        }
                        Ipv6Ext::Auth { len4 } => b[1] = *len4,
                    }
                    ext_bytes.extend(b);
                }
                let plen = ip.payload_len.unwrap_or((ext_bytes.len() + l4.len()) as u16);
                let w0 = (6u32 << 28) | ((ip.traffic_class as u32) << 20) | (ip.flow_label & 0xfffff);
                let mut h = w0.to_be_bytes().to_vec();
                h.extend(plen.to_be_bytes());
                h.extend([codes[0], ip.hop_limit]);
                h.extend(ip.src.octets());
                h.extend(ip.dst.octets());
                if let Some(off) = l4_checksum_offset(&self.l4) {
                    let mut pseudo = Vec::new();
                    pseudo.extend(ip.src.octets());
                    pseudo.extend(ip.dst.octets());
                    pseudo.extend((l4.len() as u32).to_be_bytes());
                    pseudo.extend([0, 0, 0, self.l4.protocol()]);
                    let sum = checksum(&l4, sum_words(&pseudo));
                    l4[off..off + 2].copy_from_slice(&sum.to_be_bytes());
                }
                p.extend(h);
                p.extend(ext_bytes);
            }
            L3::Other { .. } => {}
        }
        p.extend(l4);
        p
    }

    fn l4_bytes(&self) -> Vec<u8> {
        match &self.l4 {
            L4::None => Vec::new(),
            L4::Tcp(t) => {
                let mut h = Vec::with_capacity(20);
                h.extend(t.sport.to_be_bytes());
                h.extend(t.dport.to_be_bytes());
                h.extend(1000u32.to_be_bytes());
                h.extend(0u32.to_be_bytes());
                h.extend([t.data_offset.unwrap_or(5) << 4, t.flags]);
                h.extend(t.window.to_be_bytes());
                h.extend([0, 0, 0, 0]);
                h
            }
            L4::Udp { sport, dport } => {
                let mut h = Vec::with_capacity(8);
                h.extend(sport.to_be_bytes());
                h.extend(dport.to_be_bytes());
                h.extend(((8 + self.payload.len()) as u16).to_be_bytes());
                h.extend([0, 0]);
                h
            }
            L4::Icmp4 { ty, code } | L4::Icmp6 { ty, code } => vec![*ty, *code, 0, 0, 0, 1, 0, 1],
            L4::Raw { bytes, .. } => bytes.clone(),
        }
    }
}

fn padded(options: &[u8]) -> Vec<u8> {
    let mut o = options.to_vec();
    while !o.len().is_multiple_of(4) {
        o.push(0);
    }
    o
}

fn l4_checksum_offset(l4: &L4) -> Option<usize> {
    match l4 {
        L4::Tcp(_) => Some(16),
        L4::Udp { .. } => Some(6),
        L4::Icmp4 { .. } | L4::Icmp6 { .. } => Some(2),
        _ => None,
    }
}

fn sum_words(b: &[u8]) -> u32 {
    b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum()
}

/// The Internet checksum of `b`, starting from a partial sum.
fn checksum(b: &[u8], initial: u32) -> u16 {
    let mut s = initial as u64 + sum_words(b) as u64;
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Hex dump for failure messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join("")
}

/// The bytes of a packet described in a policy's `test` block.
pub fn from_test(packet: &xpol_lang::testspec::TestPacket) -> Vec<u8> {
    use std::net::IpAddr;
    use xpol_lang::testspec::{ArgValue, TestPacket};
    let (kind, args) = match packet {
        TestPacket::Hex(bytes) => return bytes.clone(),
        TestPacket::Fields { kind, args } => (kind, args),
    };
    let get = |name: &str| args.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let int = |name: &str, default: u64| match get(name) {
        Some(ArgValue::Int(i)) => i,
        _ => default,
    };
    let flag = |name: &str| matches!(get(name), Some(ArgValue::Bool(true)));
    let ip = |name: &str| match get(name) {
        Some(ArgValue::Ip(a)) => Some(a),
        _ => None,
    };
    let v6 = ip("src").is_some_and(|a| a.is_ipv6()) || ip("dst").is_some_and(|a| a.is_ipv6());
    let (src, dst) = if v6 {
        (ip("src").unwrap_or("2001:db8::1".parse().expect("literal")), ip("dst").unwrap_or("2001:db8::2".parse().expect("literal")))
    } else {
        (ip("src").unwrap_or("198.18.0.1".parse().expect("literal")), ip("dst").unwrap_or("198.18.0.2".parse().expect("literal")))
    };
    let (sport, dport) = (int("sport", 40000) as u16, int("dport", 80) as u16);
    let mut spec = match (kind.as_str(), src, dst) {
        ("udp", IpAddr::V4(s), IpAddr::V4(d)) => PacketSpec::udp4(s, d, sport, dport),
        ("icmp", IpAddr::V4(s), IpAddr::V4(d)) => PacketSpec::icmp4(s, d, int("type", 8) as u8, int("code", 0) as u8),
        (_, IpAddr::V4(s), IpAddr::V4(d)) => PacketSpec::tcp4(s, d, sport, dport),
        ("udp", s, d) => PacketSpec::udp6(v6_of(s), v6_of(d), sport, dport),
        ("icmp", s, d) => PacketSpec::icmp6(v6_of(s), v6_of(d), int("type", 128) as u8, int("code", 0) as u8),
        (_, s, d) => PacketSpec::tcp6(v6_of(s), v6_of(d), sport, dport),
    };
    let mut flags = int("flags", 0) as u8;
    for (name, bit) in [("fin", 0x01), ("syn", 0x02), ("rst", 0x04), ("ack", 0x10)] {
        if flag(name) {
            flags |= bit;
        }
    }
    spec = spec.flags(flags);
    if let Some(ArgValue::Int(ttl)) = get("ttl") {
        spec = spec.ipv4(|ip| ip.ttl = ttl as u8).ipv6(|ip| ip.hop_limit = ttl as u8);
    }
    if let Some(ArgValue::Int(id)) = get("vlan") {
        spec = spec.vlan(id as u16);
    }
    if let Some(ArgValue::Int(id)) = get("inner_vlan") {
        spec = spec.vlan(id as u16);
    }
    if get("frag").is_some() || flag("more_frags") {
        spec = spec.frag(int("frag", 0) as u16, flag("more_frags"));
    }
    spec = spec.payload(int("payload", 0) as usize);
    // ICMP with an identifier or a quoted packet: the header's bytes
    // written out (without a checksum).
    if kind == "icmp" && (get("id").is_some() || get("quote").is_some()) {
        let (ty, code) = (int("type", if v6 { 128 } else { 8 }) as u8, int("code", 0) as u8);
        let id = (int("id", 1) as u16).to_be_bytes();
        let mut bytes = vec![ty, code, 0, 0, id[0], id[1], 0, 1];
        if let Some(ArgValue::Int(proto)) = get("quote") {
            bytes.extend(quoted(ip("quote_src").unwrap_or(dst), ip("quote_dst").unwrap_or(src), proto as u8, sport, dport, id));
        }
        spec.l4 = L4::Raw { protocol: if v6 { 58 } else { 1 }, bytes };
    }
    spec.build()
}

/// The packet an ICMP error quotes: its IP header and the first 8 bytes
/// after it (ports, or an echo request with identifier `id`).
fn quoted(src: std::net::IpAddr, dst: std::net::IpAddr, proto: u8, sport: u16, dport: u16, id: [u8; 2]) -> Vec<u8> {
    let mut q = Vec::new();
    match (src, dst) {
        (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
            q.extend([0x45, 0, 0, 28, 0, 1, 0, 0, 64, proto, 0, 0]);
            q.extend(s.octets());
            q.extend(d.octets());
        }
        (s, d) => {
            q.extend([0x60, 0, 0, 0, 0, 8, proto, 64]);
            q.extend(v6_of(s).octets());
            q.extend(v6_of(d).octets());
        }
    }
    match proto {
        1 => q.extend([8, 0, 0, 0, id[0], id[1], 0, 1]),
        58 => q.extend([128, 0, 0, 0, id[0], id[1], 0, 1]),
        _ => {
            q.extend(sport.to_be_bytes());
            q.extend(dport.to_be_bytes());
            q.extend([0, 0, 0, 0]);
        }
    }
    q
}

/// An IPv4 address given where the other is IPv6 maps into IPv6.
fn v6_of(a: std::net::IpAddr) -> Ipv6Addr {
    match a {
        std::net::IpAddr::V6(a) => a,
        std::net::IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}
