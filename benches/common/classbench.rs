//! ClassBench rule sets and traces (`bench/classbench/`, README there) as
//! xpol policies, nftables rules and test frames: shared by
//! `benches/classbench.rs` and `benches/analysis.rs`.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use xpol_runtime::packet::{PacketSpec, L4};

/// A ClassBench rule's fields: each address a prefix (`None`: any), the
/// protocol (`None`: any), the port ranges of TCP or UDP (`None`: any, or
/// another protocol), and the verdict.
struct Rule<'a> {
    src: Option<&'a str>,
    dst: Option<&'a str>,
    proto: Option<&'a str>,
    /// `tcp` or `udp`, with the source and destination ranges.
    ports: Option<(&'static str, [Option<(&'a str, &'a str)>; 2])>,
    drop: bool,
}

fn parse(line: &str) -> Option<Rule<'_>> {
    let f: HashMap<&str, &str> = line.split_whitespace().map(|part| part.split_once('=')).collect::<Option<_>>()?;
    let prefix = |key| f.get(key).map(|v| (*v != "0.0.0.0/0").then_some(*v));
    let proto = *f.get("proto")?;
    let range = |key| -> Option<Option<(&str, &str)>> {
        let (lo, hi) = f.get(key)?.split_once('-')?;
        Some(((lo, hi) != ("0", "65535")).then_some((lo, hi)))
    };
    let ports = match proto {
        "6" => Some(("tcp", [range("sport")?, range("dport")?])),
        "17" => Some(("udp", [range("sport")?, range("dport")?])),
        _ => None,
    };
    Some(Rule { src: prefix("src")?, dst: prefix("dst")?, proto: (proto != "any").then_some(proto), ports, drop: *f.get("action")? == "drop" })
}

/// A ClassBench rule as an xpol rule: the addresses as IPv4 prefixes, the
/// ports of TCP or UDP, the protocol (none for `any`).
pub fn rule_text(line: &str) -> Option<String> {
    let r = parse(line)?;
    let mut conds = Vec::new();
    for (field, prefix) in [("ip4.src", r.src), ("ip4.dst", r.dst)] {
        conds.push(prefix.map_or("ip.version == 4".to_string(), |p| format!("{field} in {p}")));
    }
    conds.extend(r.proto.map(|p| format!("ip.proto == {p}")));
    if let Some((l4, ranges)) = r.ports {
        for (key, range) in ["sport", "dport"].into_iter().zip(ranges) {
            conds.extend(range.map(|(lo, hi)| if lo == hi { format!("{l4}.{key} == {lo}") } else { format!("{l4}.{key} in {lo}..{hi}") }));
        }
    }
    conds.dedup();
    Some(format!("xdp /{}/ {{ {} }}", conds.join(" && "), if r.drop { "drop" } else { "pass" }))
}

/// The same rule for an nftables chain, with a counter.
pub fn nft_rule(line: &str) -> Option<String> {
    let r = parse(line)?;
    let mut parts: Vec<String> = [("ip saddr", r.src), ("ip daddr", r.dst)].into_iter().filter_map(|(what, p)| Some(format!("{what} {}", p?))).collect();
    // Any protocol: the xpol rule's `ip.version == 4`.
    parts.push(r.proto.map_or("meta protocol ip".to_string(), |p| format!("ip protocol {p}")));
    if let Some((l4, ranges)) = r.ports {
        for (key, range) in ["sport", "dport"].into_iter().zip(ranges) {
            parts.extend(range.map(|(lo, hi)| if lo == hi { format!("{l4} {key} {lo}") } else { format!("{l4} {key} {lo}-{hi}") }));
        }
    }
    Some(format!("{} counter {}", parts.join(" "), if r.drop { "drop" } else { "accept" }))
}

/// The xpol policy of a `.rules` file.
pub fn policy(rules_file: &Path) -> String {
    let text = std::fs::read_to_string(rules_file).unwrap_or_else(|e| panic!("{}: {e}", rules_file.display()));
    text.lines().filter_map(rule_text).collect::<Vec<_>>().join("\n") + "\n"
}

/// The verdicts of a `.rules` file's rules, in order (`true`: drop).
pub fn drops(rules_file: &Path) -> Vec<bool> {
    let text = std::fs::read_to_string(rules_file).expect("rules file");
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| l.ends_with("action=drop")).collect()
}

/// A trace packet: its frame (64 bytes or so: TCP, UDP, ICMP echo, or the
/// bare protocol with 8 bytes of zeros) and the rule that matches it first
/// (`None`: no rule).
pub struct TracePacket {
    pub frame: Vec<u8>,
    pub expected: Option<usize>,
}

pub fn trace(trace_file: &Path) -> Vec<TracePacket> {
    let text = std::fs::read_to_string(trace_file).unwrap_or_else(|e| panic!("{}: {e}", trace_file.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (src, dst): (Ipv4Addr, Ipv4Addr) = (f[0].parse().expect("source"), f[1].parse().expect("destination"));
            let (sport, dport, proto): (u16, u16, u8) = (f[2].parse().expect("sport"), f[3].parse().expect("dport"), f[4].parse().expect("protocol"));
            let expected: i64 = f[5].parse().expect("rule index");
            let spec = match proto {
                6 => PacketSpec::tcp4(src, dst, sport, dport).payload(6),
                17 => PacketSpec::udp4(src, dst, sport, dport).payload(18),
                _ => {
                    let mut s = PacketSpec::udp4(src, dst, sport, dport).payload(18);
                    s.l4 = L4::Raw { protocol: proto, bytes: vec![0; 8] };
                    s
                }
            };
            TracePacket { frame: spec.build(), expected: usize::try_from(expected).ok() }
        })
        .collect()
}
