//! Packets described by their fields, as `test` blocks in policies write
//! them: `tcp(src: 198.51.100.7, dport: 22, syn: true)`. The checker
//! validates them against [`ARGS`]; the runtime builds the bytes.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The kinds of packet a test can describe: `tcp`, `udp`, `icmp`, and raw
/// bytes with `hex("...")`. The address family follows `src` and `dst`
/// (IPv4 unless one of them is IPv6).
pub const KINDS: &[&str] = &["tcp", "udp", "icmp"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgType {
    Int,
    Ip,
    Bool,
}

/// The arguments a packet description may give, with their types.
pub const ARGS: &[(&str, ArgType, &str)] = &[
    ("src", ArgType::Ip, "source address (default 198.18.0.1 or 2001:db8::1)"),
    ("dst", ArgType::Ip, "destination address (default 198.18.0.2 or 2001:db8::2)"),
    ("sport", ArgType::Int, "TCP/UDP source port (default 40000)"),
    ("dport", ArgType::Int, "TCP/UDP destination port (default 80)"),
    ("flags", ArgType::Int, "TCP flags byte"),
    ("syn", ArgType::Bool, "TCP SYN"),
    ("ack", ArgType::Bool, "TCP ACK"),
    ("fin", ArgType::Bool, "TCP FIN"),
    ("rst", ArgType::Bool, "TCP RST"),
    ("type", ArgType::Int, "ICMP type"),
    ("code", ArgType::Int, "ICMP code"),
    ("ttl", ArgType::Int, "TTL or hop limit"),
    ("vlan", ArgType::Int, "an 802.1Q tag with this VLAN ID"),
    ("inner_vlan", ArgType::Int, "a second (inner) tag"),
    ("frag", ArgType::Int, "fragment offset in bytes (makes the packet a fragment)"),
    ("more_frags", ArgType::Bool, "more-fragments flag"),
    ("payload", ArgType::Int, "payload length in bytes"),
    ("id", ArgType::Int, "ICMP echo identifier (default 1), also of a quoted echo"),
    ("quote", ArgType::Int, "ICMP errors: quote a packet of this protocol (6, 17, or 1 or 58 for an echo request), with `sport` and `dport`"),
    ("quote_src", ArgType::Ip, "source of the quoted packet (default: this packet's `dst`)"),
    ("quote_dst", ArgType::Ip, "destination of the quoted packet (default: this packet's `src`)"),
];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArgValue {
    Int(u64),
    Ip(IpAddr),
    Bool(bool),
}

/// A checked packet description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TestPacket {
    Hex(Vec<u8>),
    Fields { kind: String, args: Vec<(String, ArgValue)> },
}

pub fn arg_type(name: &str) -> Option<ArgType> {
    ARGS.iter().find(|(n, _, _)| *n == name).map(|(_, t, _)| *t)
}
