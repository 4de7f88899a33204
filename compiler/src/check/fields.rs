//! The packet fields a policy can read: their names, types, and the header
//! a packet must carry for the field to be present.

use crate::ir::Type;

/// A header the packet must carry, intact and not cut by the frame or by the
/// IP length, for a field to be present. Codegen computes one presence flag
/// per layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layer {
    /// Always present.
    Packet,
    /// A full 14-byte Ethernet header.
    Eth,
    /// At least one VLAN tag.
    Vlan1,
    /// At least two VLAN tags.
    Vlan2,
    /// A valid IPv4 or IPv6 header.
    Ip,
    /// A valid IPv4 header.
    Ip4,
    /// A valid IPv6 header.
    Ip6,
    /// A valid IP header whose upper-layer protocol is known (IPv6: the
    /// extension-header chain was walked to its end within the bound).
    IpProto,
    /// A complete TCP header in an unfragmented packet or a first fragment.
    Tcp,
    Udp,
    /// TCP or UDP.
    Ports,
    Icmp4,
    Icmp6,
    /// A packet of a protocol the connection table tracks: TCP, UDP,
    /// ICMP or ICMPv6 echo, or an ICMP error (docs/conntrack.md).
    Ct,
}

macro_rules! fields {
    ($( $variant:ident = $name:literal, $ty:ident, $layer:ident, $doc:literal; )*) => {
        /// A packet field.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Field { $( #[doc = $doc] $variant, )* }

        impl Field {
            pub const ALL: &'static [Field] = &[$(Field::$variant,)*];

            /// The name as written in policies, e.g. `tcp.dport`.
            pub fn name(self) -> &'static str {
                match self { $(Field::$variant => $name,)* }
            }

            pub fn ty(self) -> Type {
                match self { $(Field::$variant => Type::$ty,)* }
            }

            pub fn layer(self) -> Layer {
                match self { $(Field::$variant => Layer::$layer,)* }
            }

            pub fn doc(self) -> &'static str {
                match self { $(Field::$variant => $doc,)* }
            }
        }
    };
}

fields! {
    PktLen = "pkt.len", Int, Packet, "Length of the packet in bytes (XDP: the frame; TC: skb->len).";
    EthSrc = "eth.src", Mac, Eth, "Source MAC address.";
    EthDst = "eth.dst", Mac, Eth, "Destination MAC address.";
    EthType = "eth.type", Int, Eth, "EtherType of the payload, after any VLAN tags (0x0800 IPv4, 0x86dd IPv6, 0x0806 ARP).";
    VlanDepth = "vlan.depth", Int, Eth, "Number of VLAN tags (0, 1, 2; 3 means three or more, and then no L3 header is parsed).";
    VlanId = "vlan.id", Int, Vlan1, "VLAN ID of the outer tag (802.1Q or 802.1ad).";
    VlanPcp = "vlan.pcp", Int, Vlan1, "Priority code point of the outer tag.";
    VlanInnerId = "vlan.inner_id", Int, Vlan2, "VLAN ID of the inner tag (QinQ).";
    VlanInnerPcp = "vlan.inner_pcp", Int, Vlan2, "Priority code point of the inner tag.";
    IpVersion = "ip.version", Int, Ip, "4 or 6.";
    IpSrc = "ip.src", Ip, Ip, "Source address, IPv4 or IPv6.";
    IpDst = "ip.dst", Ip, Ip, "Destination address, IPv4 or IPv6.";
    IpProto = "ip.proto", Int, IpProto, "Upper-layer protocol (IPv6: the header after all extension headers).";
    IpTtl = "ip.ttl", Int, Ip, "TTL (IPv4) or hop limit (IPv6).";
    IpLen = "ip.len", Int, Ip, "Total length from the IP header (IPv6: 40 + payload length).";
    IpDscp = "ip.dscp", Int, Ip, "DSCP (6 bits of the TOS / traffic class byte).";
    IpEcn = "ip.ecn", Int, Ip, "ECN (2 bits of the TOS / traffic class byte).";
    IpFrag = "ip.frag", Bool, IpProto, "The packet is a fragment (IPv4 MF set or offset non-zero; IPv6 fragment header).";
    IpFragFirst = "ip.frag_first", Bool, IpProto, "The packet is the first fragment of a fragmented datagram.";
    IpFragOff = "ip.frag_off", Int, IpProto, "Fragment offset in bytes (0 when not a fragment).";
    Ip4Src = "ip4.src", Ip, Ip4, "IPv4 source address.";
    Ip4Dst = "ip4.dst", Ip, Ip4, "IPv4 destination address.";
    Ip4Ihl = "ip4.ihl", Int, Ip4, "IPv4 header length in 32-bit words (5 to 15).";
    Ip4Id = "ip4.id", Int, Ip4, "IPv4 identification.";
    Ip4Df = "ip4.df", Bool, Ip4, "IPv4 don't-fragment flag.";
    Ip6Src = "ip6.src", Ip, Ip6, "IPv6 source address.";
    Ip6Dst = "ip6.dst", Ip, Ip6, "IPv6 destination address.";
    Ip6NextHdr = "ip6.nexthdr", Int, Ip6, "Next-header field of the fixed IPv6 header (the first extension header, if any).";
    Ip6HopLimit = "ip6.hoplimit", Int, Ip6, "IPv6 hop limit.";
    Ip6FlowLabel = "ip6.flowlabel", Int, Ip6, "IPv6 flow label (20 bits).";
    TcpSport = "tcp.sport", Int, Tcp, "TCP source port.";
    TcpDport = "tcp.dport", Int, Tcp, "TCP destination port.";
    TcpFlags = "tcp.flags", Int, Tcp, "TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, URG 0x20, ECE 0x40, CWR 0x80).";
    TcpSyn = "tcp.syn", Bool, Tcp, "TCP SYN flag.";
    TcpAck = "tcp.ack", Bool, Tcp, "TCP ACK flag.";
    TcpFin = "tcp.fin", Bool, Tcp, "TCP FIN flag.";
    TcpRst = "tcp.rst", Bool, Tcp, "TCP RST flag.";
    TcpPsh = "tcp.psh", Bool, Tcp, "TCP PSH flag.";
    TcpUrg = "tcp.urg", Bool, Tcp, "TCP URG flag.";
    TcpEce = "tcp.ece", Bool, Tcp, "TCP ECE flag.";
    TcpCwr = "tcp.cwr", Bool, Tcp, "TCP CWR flag.";
    TcpWindow = "tcp.window", Int, Tcp, "TCP window.";
    UdpSport = "udp.sport", Int, Udp, "UDP source port.";
    UdpDport = "udp.dport", Int, Udp, "UDP destination port.";
    UdpLen = "udp.len", Int, Udp, "UDP length field.";
    L4Sport = "l4.sport", Int, Ports, "Source port of TCP or UDP.";
    L4Dport = "l4.dport", Int, Ports, "Destination port of TCP or UDP.";
    IcmpType = "icmp.type", Int, Icmp4, "ICMP (IPv4) type.";
    IcmpCode = "icmp.code", Int, Icmp4, "ICMP (IPv4) code.";
    Icmp6Type = "icmpv6.type", Int, Icmp6, "ICMPv6 type.";
    Icmp6Code = "icmpv6.code", Int, Icmp6, "ICMPv6 code.";
    CtState = "ct.state", Int, Ct, "Connection state: `new`, `established`, `related` or `invalid` (docs/conntrack.md); compared with those names.";
}

impl Field {
    pub fn by_name(name: &str) -> Option<Field> {
        Field::ALL.iter().copied().find(|f| f.name() == name)
    }

    /// The known field closest to a misspelt name, for "did you mean".
    pub fn suggest(name: &str) -> Option<Field> {
        xpol_lang::suggest::closest(name, Field::ALL.iter().map(|f| f.name())).and_then(Field::by_name)
    }

    /// The values an `int` field takes, as inclusive ranges in order: the
    /// width of the header field it reads, and what the parser lets
    /// through (an IPv4 header of fewer than 5 words is not IPv4;
    /// `ip.version` is 4 or 6). `None` for fields of other types.
    /// docs/language.md lists them.
    pub fn values(self) -> Option<&'static [(u64, u64)]> {
        use Field::*;
        const U8: &[(u64, u64)] = &[(0, 0xff)];
        const U16: &[(u64, u64)] = &[(0, 0xffff)];
        Some(match self {
            PktLen => &[(0, u32::MAX as u64)],
            EthType => U16,
            VlanDepth => &[(0, 3)],
            VlanId | VlanInnerId => &[(0, 4095)],
            VlanPcp | VlanInnerPcp => &[(0, 7)],
            IpVersion => &[(4, 4), (6, 6)],
            IpProto | IpTtl | Ip6NextHdr | Ip6HopLimit | TcpFlags | IcmpType | IcmpCode | Icmp6Type | Icmp6Code => U8,
            // IPv4: the total length, at least the header; IPv6: 40 + the
            // payload length.
            IpLen => &[(20, 0xffff + 40)],
            IpDscp => &[(0, 63)],
            IpEcn => &[(0, 3)],
            // 13 bits of 8-byte units.
            IpFragOff => &[(0, 0x1fff * 8)],
            Ip4Ihl => &[(5, 15)],
            Ip4Id | TcpSport | TcpDport | TcpWindow | UdpSport | UdpDport | UdpLen | L4Sport | L4Dport => U16,
            Ip6FlowLabel => &[(0, (1 << 20) - 1)],
            // The states' numbers (`CtState::number`).
            CtState => &[(0, 3)],
            _ => return None,
        })
    }

    /// True for the IPv4-only address fields.
    pub fn is_v4_only(self) -> bool {
        matches!(self, Field::Ip4Src | Field::Ip4Dst)
    }

    pub fn is_v6_only(self) -> bool {
        matches!(self, Field::Ip6Src | Field::Ip6Dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every integer field says which values it takes (a field added
    /// without them would let `FIELD == 70000` through), and only those.
    #[test]
    fn integer_fields_have_their_values() {
        for &f in Field::ALL {
            match (f.ty(), f.values()) {
                (Type::Int, Some(values)) => {
                    assert!(!values.is_empty() && values.windows(2).all(|w| w[0].1 < w[1].0), "{}: ranges in order", f.name());
                    assert!(values.iter().all(|&(lo, hi)| lo <= hi && hi <= u64::from(u32::MAX)), "{}", f.name());
                }
                (Type::Int, None) => panic!("{} has no values", f.name()),
                (_, values) => assert!(values.is_none(), "{} is not an integer", f.name()),
            }
        }
        assert_eq!(Field::TcpDport.values(), Some(&[(0, 65535)][..]));
        assert_eq!(Field::IpVersion.values(), Some(&[(4, 4), (6, 6)][..]));
    }

    #[test]
    fn misspelt_fields_are_suggested() {
        assert_eq!(Field::suggest("tcp.dprot"), Some(Field::TcpDport));
        assert_eq!(Field::suggest("ip.sr"), Some(Field::IpSrc));
        assert_eq!(Field::suggest("banana.split"), None);
    }
}
