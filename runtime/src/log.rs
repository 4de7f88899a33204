//! Reading a policy's log records: the ring buffer its `log` statements
//! write to (aya's [`RingBuf`]), each record decoded with the object's
//! metadata (`xpol_lang::meta::LogRingMeta`, [`LogRecord::decode`]), and
//! the words `xpol run` and `xpol log` show of it: the rule's place, the
//! prefix, and one line of the packet's headers
//! (`198.18.0.1:40000 > 198.19.0.1:23 tcp S`).
//!
//! A ring buffer has one reader position, kept in a page the reader
//! maps: two readers of one policy's log would each take some records.
//! `xpol run` reads the ring of what it attached; `xpol log NAME` the
//! ring of an applied policy's current generation.

use crate::loader::{PolicyMaps, RuntimeError};
use crate::sys;
use aya::maps::{Map, MapData, RingBuf};
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::time::Duration;
use xpol_lang::meta::{self, LogMeta, LogRecord, LogRingMeta, RuleMeta};

type Result<T> = std::result::Result<T, RuntimeError>;

/// A reader of one policy's log records.
pub struct LogReader {
    ring: RingBuf<MapData>,
    lost: MapData,
    ring_meta: LogRingMeta,
    logs: Vec<LogMeta>,
    rules: Vec<RuleMeta>,
    cpus: usize,
    /// `CLOCK_REALTIME - CLOCK_MONOTONIC` when the reader opened, in
    /// nanoseconds: records are stamped with the monotonic clock.
    wall_offset_ns: i128,
    /// Records that could not be decoded (a layout this reader does not
    /// know, or a map changed from outside): skipped and counted.
    pub malformed: u64,
}

/// One record, with the statement and rule it names.
pub struct Entry<'a> {
    pub record: LogRecord,
    pub log: &'a LogMeta,
    pub rule: &'a RuleMeta,
    /// When it was written, in nanoseconds since the Unix epoch.
    pub unix_ns: u64,
}

impl LogReader {
    /// The reader of the log of the policy whose maps are `maps`; `None`
    /// when the policy logs nothing.
    pub fn open(maps: &PolicyMaps) -> Result<Option<LogReader>> {
        let meta = maps.meta();
        let Some(ring_meta) = meta.log_ring.clone() else { return Ok(None) };
        let map_err = |map: &str, e: &dyn std::fmt::Display| RuntimeError::Map { map: map.to_string(), source: std::io::Error::other(e.to_string()) };
        let dup = |map: &str| -> Result<MapData> {
            let fd = maps.map_data(map)?.fd().as_fd().try_clone_to_owned().map_err(|source| RuntimeError::Map { map: map.to_string(), source })?;
            MapData::from_fd(fd).map_err(|e| map_err(map, &e))
        };
        let ring_data = dup(&ring_meta.map)?;
        // The mapping aya makes is as long as the kernel's map says; the
        // records must fit in it.
        let info = ring_data.info().map_err(|e| map_err(&ring_meta.map, &e))?;
        if info.map_type().ok() != Some(aya::maps::MapType::RingBuf) || (info.max_entries() as usize) < 2 * ring_meta.record_bytes() {
            return Err(RuntimeError::BadMetadata(format!("`{}` is not the ring buffer the metadata describes", ring_meta.map)));
        }
        let ring = RingBuf::try_from(Map::RingBuf(ring_data)).map_err(|e| map_err(&ring_meta.map, &e))?;
        let lost = dup(&ring_meta.lost_map)?;
        let wall_offset_ns = wall_offset_ns();
        Ok(Some(LogReader { ring, lost, ring_meta, logs: meta.logs.clone(), rules: meta.rules.clone(), cpus: maps.cpus(), wall_offset_ns, malformed: 0 }))
    }

    /// The `log` statements whose records this reader reads.
    pub fn logs(&self) -> &[LogMeta] {
        &self.logs
    }

    /// Waits up to `timeout` for a record; true when one is there.
    pub fn wait(&self, timeout: Duration) -> Result<bool> {
        sys::wait_readable(self.ring.as_fd(), timeout).map_err(|source| RuntimeError::Map { map: self.ring_meta.map.clone(), source })
    }

    /// Calls `f` with every record written and not yet read, in the order
    /// they were written; returns how many there were.
    pub fn drain(&mut self, mut f: impl FnMut(&Entry<'_>)) -> usize {
        let mut n = 0;
        let LogReader { ring, ring_meta, logs, rules, wall_offset_ns, malformed, .. } = self;
        while let Some(item) = ring.next() {
            let decoded = LogRecord::decode(&item, ring_meta);
            drop(item);
            let Ok(record) = decoded else {
                *malformed += 1;
                continue;
            };
            let (Some(log), Some(rule)) = (logs.get(record.log as usize), rules.get(record.rule as usize)) else {
                *malformed += 1;
                continue;
            };
            let unix_ns = (i128::from(record.time_ns) + *wall_offset_ns).clamp(0, i128::from(u64::MAX)) as u64;
            f(&Entry { record, log, rule, unix_ns });
            n += 1;
        }
        n
    }

    /// Records each `log` statement lost because the ring was full
    /// (in [`LogReader::logs`] order), summed over CPUs.
    pub fn lost(&self) -> Result<Vec<u64>> {
        lost_records(self.lost.fd().as_fd(), self.logs.len(), self.cpus, &self.ring_meta.lost_map)
    }
}

impl PolicyMaps {
    /// Records each `log` statement lost because the ring buffer was full
    /// (in `ObjectMeta::logs` order); empty for a policy that logs nothing.
    pub fn log_lost(&self) -> Result<Vec<u64>> {
        let meta = self.meta();
        let Some(ring) = &meta.log_ring else { return Ok(Vec::new()) };
        lost_records(self.map_data(&ring.lost_map)?.fd().as_fd(), meta.logs.len(), self.cpus(), &ring.lost_map)
    }
}

fn lost_records(fd: std::os::fd::BorrowedFd<'_>, logs: usize, cpus: usize, map: &str) -> Result<Vec<u64>> {
    let mut value = vec![0u8; 8 * cpus];
    (0..logs as u32)
        .map(|i| {
            let found = sys::map_lookup(fd, &i.to_le_bytes(), &mut value).map_err(|source| RuntimeError::Map { map: map.to_string(), source })?;
            Ok(if found { value.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).fold(0, u64::wrapping_add) } else { 0 })
        })
        .collect()
}

/// `CLOCK_REALTIME - CLOCK_MONOTONIC` now, in nanoseconds.
fn wall_offset_ns() -> i128 {
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
    wall - i128::from(sys::monotonic_ns())
}

/// Interface names by index, looked up once each.
#[derive(Default)]
pub struct Interfaces(HashMap<u32, String>);

impl Interfaces {
    /// The name of interface `index` (its number when it has none now).
    pub fn name(&mut self, index: u32) -> String {
        self.0.entry(index).or_insert_with(|| sys::if_indextoname(index).unwrap_or_else(|| format!("if{index}"))).clone()
    }
}

/// `s` with every control character escaped: prefixes and file names are
/// checked when compiled, but a record's metadata comes from a pinned map.
pub fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// One line of a record, as `xpol run` and `xpol log` print it:
///
/// `12:00:01.123456 telnet: 198.18.0.1:40000 > 198.19.0.1:23 tcp S, 74 bytes on veth0 (xdp), rule p.xpol:3 drop`
///
/// The time is UTC; the prefix is as written (it usually ends with a
/// space or a colon).
pub fn line(e: &Entry<'_>, interfaces: &mut Interfaces) -> String {
    let r = &e.record;
    let hook = meta::hook_of_code(r.hook).unwrap_or("?");
    format!(
        "{} {}{}, {} bytes on {} ({hook}), rule {}:{} {}",
        clock(e.unix_ns),
        printable(&e.log.prefix),
        summary(&r.data),
        r.packet_len,
        printable(&interfaces.name(r.ifindex)),
        printable(&e.rule.file),
        e.log.line,
        r.verdict_name()
    )
}

/// A record as JSON (docs/json.md, `log`).
pub fn json(e: &Entry<'_>, interfaces: &mut Interfaces) -> serde_json::Value {
    let r = &e.record;
    serde_json::json!({
        "time_unix_ns": e.unix_ns, "prefix": e.log.prefix, "rule": r.rule, "rule_label": e.rule.label, "file": e.rule.file,
        "line": e.log.line, "column": e.log.column, "hook": meta::hook_of_code(r.hook), "verdict": r.verdict_name(),
        "interface": interfaces.name(r.ifindex), "ifindex": r.ifindex, "packet_len": r.packet_len, "captured": r.data.len(),
        "summary": summary(&r.data),
    })
}

/// `HH:MM:SS.uuuuuu`, UTC.
fn clock(unix_ns: u64) -> String {
    let s = unix_ns / 1_000_000_000;
    format!("{:02}:{:02}:{:02}.{:06}", s / 3600 % 24, s / 60 % 60, s % 60, unix_ns % 1_000_000_000 / 1000)
}

/// One line of a captured frame's headers, as far as they were captured:
/// `198.18.0.1:40000 > 198.19.0.1:23 tcp S`, `[2001:db8::1]:53 > [2001:db8::2]:5353 udp`,
/// `198.18.0.1 > 198.19.0.1 icmp 8/0`, `vlan 100 ...`, `ethertype 0x0806`.
pub fn summary(frame: &[u8]) -> String {
    use etherparse::{LaxNetSlice, LaxSlicedPacket, LinkSlice, TransportSlice, VlanSlice};
    let Ok(p) = LaxSlicedPacket::from_ethernet(frame) else { return format!("{} bytes, no Ethernet header", frame.len()) };
    let mut out = String::new();
    match &p.vlan {
        Some(VlanSlice::SingleVlan(v)) => out.push_str(&format!("vlan {} ", v.vlan_identifier().value())),
        Some(VlanSlice::DoubleVlan(v)) => out.push_str(&format!("vlan {}.{} ", v.outer().vlan_identifier().value(), v.inner().vlan_identifier().value())),
        None => {}
    }
    let (src, dst, payload) = match &p.net {
        Some(LaxNetSlice::Ipv4(ip)) => (ip.header().source_addr().into(), ip.header().destination_addr().into(), ip.payload()),
        Some(LaxNetSlice::Ipv6(ip)) => (ip.header().source_addr().into(), ip.header().destination_addr().into(), ip.payload()),
        None => {
            let ether_type = match (&p.vlan, &p.link) {
                (Some(VlanSlice::SingleVlan(v)), _) => Some(v.ether_type().0),
                (Some(VlanSlice::DoubleVlan(v)), _) => Some(v.inner().ether_type().0),
                (None, Some(LinkSlice::Ethernet2(e))) => Some(e.ether_type().0),
                _ => None,
            };
            out.push_str(&match ether_type {
                Some(t) => format!("ethertype 0x{t:04x}"),
                None => "not Ethernet II".to_string(),
            });
            return out;
        }
    };
    let host = |a: std::net::IpAddr, port: Option<u16>| match (a, port) {
        (std::net::IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        (a, Some(p)) => format!("{a}:{p}"),
        (a, None) => a.to_string(),
    };
    let ends = |sport: Option<u16>, dport: Option<u16>| format!("{} > {}", host(src, sport), host(dst, dport));
    match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let flags: String = [(t.syn(), 'S'), (t.fin(), 'F'), (t.rst(), 'R'), (t.psh(), 'P'), (t.urg(), 'U'), (t.ece(), 'E'), (t.cwr(), 'W'), (t.ack(), '.')]
                .iter()
                .filter(|(set, _)| *set)
                .map(|(_, c)| *c)
                .collect();
            out.push_str(&format!("{} tcp {}", ends(Some(t.source_port()), Some(t.destination_port())), if flags.is_empty() { "none" } else { &flags }));
        }
        Some(TransportSlice::Udp(u)) => out.push_str(&format!("{} udp", ends(Some(u.source_port()), Some(u.destination_port())))),
        Some(TransportSlice::Icmpv4(i)) => out.push_str(&format!("{} icmp {}/{}", ends(None, None), i.type_u8(), i.code_u8())),
        Some(TransportSlice::Icmpv6(i)) => out.push_str(&format!("{} icmp6 {}/{}", ends(None, None), i.type_u8(), i.code_u8())),
        None => {
            let what = if payload.fragmented { " fragment" } else if payload.incomplete { " (cut)" } else { "" };
            out.push_str(&format!("{} proto {}{what}", ends(None, None), payload.ip_number.0));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::summary;
    use crate::packet::PacketSpec;

    #[test]
    fn summaries_name_addresses_ports_and_flags() {
        let a = |s: &str| -> std::net::Ipv4Addr { s.parse().expect("literal") };
        let a6 = |s: &str| -> std::net::Ipv6Addr { s.parse().expect("literal") };
        assert_eq!(summary(&PacketSpec::tcp4(a("198.18.0.1"), a("198.18.1.1"), 1234, 23).syn().build()), "198.18.0.1:1234 > 198.18.1.1:23 tcp S");
        assert_eq!(summary(&PacketSpec::tcp4(a("198.18.0.1"), a("198.18.1.1"), 1234, 23).flags(0x12).build()), "198.18.0.1:1234 > 198.18.1.1:23 tcp S.");
        assert_eq!(summary(&PacketSpec::udp6(a6("2001:db8::1"), a6("2001:db8::2"), 53, 5353).build()), "[2001:db8::1]:53 > [2001:db8::2]:5353 udp");
        assert_eq!(summary(&PacketSpec::icmp4(a("198.18.0.1"), a("198.18.1.1"), 8, 0).vlan(100).build()), "vlan 100 198.18.0.1 > 198.18.1.1 icmp 8/0");
        assert_eq!(summary(&PacketSpec::ethertype(0x0806, 28).build()), "ethertype 0x0806");
        // Cut inside the TCP header: the addresses, and what is known.
        let cut = &PacketSpec::tcp4(a("198.18.0.1"), a("198.18.1.1"), 1234, 23).syn().build()[..40];
        assert!(summary(cut).starts_with("198.18.0.1 > 198.18.1.1 proto 6"), "{}", summary(cut));
        assert!(summary(&[1, 2, 3]).contains("no Ethernet header"));
    }
}
