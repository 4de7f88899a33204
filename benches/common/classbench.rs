//! ClassBench rule sets and traces (`bench/classbench/`, README there) as
//! xpol policies, nftables rules and test frames: shared by
//! `benches/classbench.rs` and `benches/analysis.rs`.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use xpol_runtime::packet::{PacketSpec, L4};

fn fields(line: &str) -> Option<HashMap<&str, &str>> {
    line.split_whitespace().map(|part| part.split_once('=')).collect()
}

/// A ClassBench rule as an xpol rule: the addresses as IPv4 prefixes, the
/// ports of TCP or UDP, the protocol (none for `any`).
pub fn rule_text(line: &str) -> Option<String> {
    let f = fields(line)?;
    let mut conds = Vec::new();
    for (field, key) in [("ip4.src", "src"), ("ip4.dst", "dst")] {
        let v = f.get(key)?;
        if *v != "0.0.0.0/0" {
            conds.push(format!("{field} in {v}"));
        } else {
            conds.push("ip.version == 4".to_string());
        }
    }
    let proto = *f.get("proto")?;
    let l4 = match proto {
        "6" => Some("tcp"),
        "17" => Some("udp"),
        _ => None,
    };
    if proto != "any" {
        conds.push(format!("ip.proto == {proto}"));
    }
    if let Some(l4) = l4 {
        for key in ["sport", "dport"] {
            let (lo, hi) = f.get(key)?.split_once('-')?;
            if (lo, hi) != ("0", "65535") {
                conds.push(if lo == hi { format!("{l4}.{key} == {lo}") } else { format!("{l4}.{key} in {lo}..{hi}") });
            }
        }
    }
    conds.dedup();
    Some(format!("xdp /{}/ {{ {} }}", conds.join(" && "), f.get("action")?))
}

/// The same rule for an nftables chain (with a counter): `None` parts are
/// wildcards.
pub fn nft_rule(line: &str) -> Option<String> {
    let f = fields(line)?;
    let mut parts = Vec::new();
    for (key, what) in [("src", "ip saddr"), ("dst", "ip daddr")] {
        let v = f.get(key)?;
        if *v != "0.0.0.0/0" {
            parts.push(format!("{what} {v}"));
        }
    }
    let proto = *f.get("proto")?;
    let l4 = match proto {
        "6" => Some("tcp"),
        "17" => Some("udp"),
        _ => None,
    };
    if proto != "any" {
        parts.push(format!("ip protocol {proto}"));
    } else {
        // The xpol rule's `ip.version == 4`.
        parts.push("meta protocol ip".to_string());
    }
    if let Some(l4) = l4 {
        for key in ["sport", "dport"] {
            let (lo, hi) = f.get(key)?.split_once('-')?;
            if (lo, hi) != ("0", "65535") {
                parts.push(if lo == hi { format!("{l4} {key} {lo}") } else { format!("{l4} {key} {lo}-{hi}") });
            }
        }
    }
    let verdict = if *f.get("action")? == "drop" { "drop" } else { "accept" };
    Some(format!("{} counter {verdict}", parts.join(" ")))
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
