//! The load balancer's state in the kernel: filling a pool's maps (the
//! backends and their Maglev table, `xpol_lang::maglev`), reading its live
//! backends and their counters; and, for tests, taking apart the frames
//! `lb` sends. The maps' layouts are `xpol_lang::meta::PoolMeta`'s.
//!
//! A pool's live contents are its backends map: a slot holds a backend
//! when its flags have [`meta::BACKEND_PRESENT`], with the backend's weight
//! in the flags' top bits ([`meta::BACKEND_WEIGHT_SHIFT`]). The Maglev table
//! is a function of those contents ([`ring_of`]), so there is no second
//! record of them to disagree: `xpol pool` (`crate::lb_edit`) changes a
//! slot, then builds and switches the table.

use crate::loader::{PolicyMaps, Result, RuntimeError};
use crate::sys;
use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};
use xpol_lang::maglev;
use xpol_lang::meta::{self, PoolMeta};

/// One backend of a pool as it is now: its slot in the backends map (the
/// number the Maglev table and the flow table name it by), address and
/// weight (0: drained).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LiveBackend {
    pub slot: u32,
    pub addr: IpAddr,
    pub weight: u32,
}

impl LiveBackend {
    /// Drained: present for its established flows, given no new ones.
    pub fn drained(&self) -> bool {
        self.weight == 0
    }

    /// `active` or `drained`, as `xpol pool list` says.
    pub fn state(&self) -> &'static str {
        if self.drained() {
            "drained"
        } else {
            "active"
        }
    }
}

/// One backend's counters, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendStats {
    pub backend: LiveBackend,
    pub packets: u64,
    pub bytes: u64,
    /// Flows the Maglev table sent here.
    pub new_flows: u64,
    /// Flows in the flow table that go here.
    pub active_flows: u64,
}

/// A pool's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub name: String,
    /// The pool's backends now, by slot.
    pub backends: Vec<BackendStats>,
    /// Packets dropped because no backend had a weight.
    pub no_backend: u64,
    /// The backends' `active_flows` were counted (a scan of the flow
    /// table); see [`PolicyMaps::pool_stats_for_reports`].
    pub active_counted: bool,
}

/// The largest flow table the periodic reports scan for active flows: a
/// scan copies the whole table (about 48 bytes an entry), under the
/// store's shared lock, once per report.
pub const REPORT_SCAN_MAX_FLOWS: u32 = 1 << 18;

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Bytes of a backends map value ([`meta::BackendValue`]).
pub(crate) const BACKEND_VALUE: usize = std::mem::size_of::<meta::BackendValue>();

/// The value of a slot holding `addr` with `weight`.
pub(crate) fn backend_value(addr: IpAddr, weight: u32) -> [u8; BACKEND_VALUE] {
    let mut v = [0u8; BACKEND_VALUE];
    let o = octets(addr);
    v[..o.len()].copy_from_slice(&o);
    let flags = meta::BACKEND_PRESENT | (weight.min(meta::MAX_BACKEND_WEIGHT) << meta::BACKEND_WEIGHT_SHIFT);
    v[16..20].copy_from_slice(&flags.to_le_bytes());
    v
}

/// A freed slot's value: no flags, the address kept. A packet that found
/// the slot present an instant before reads the address after the flags,
/// so the address must stay whole until no program can hold the slot
/// (a grace period), and a new backend is written there only after one.
pub(crate) fn free_backend_value(addr: IpAddr) -> [u8; BACKEND_VALUE] {
    let mut v = [0u8; BACKEND_VALUE];
    let o = octets(addr);
    v[..o.len()].copy_from_slice(&o);
    v
}

/// The backend a slot's value holds (`None`: a free slot).
fn decode_backend(pool: &PoolMeta, slot: u32, v: &[u8]) -> Option<LiveBackend> {
    let flags = u32::from_le_bytes(v[16..20].try_into().expect("4 bytes"));
    if flags & meta::BACKEND_PRESENT == 0 {
        return None;
    }
    let addr = if pool.v6 {
        IpAddr::from(<[u8; 16]>::try_from(&v[..16]).expect("16 bytes"))
    } else {
        IpAddr::from(<[u8; 4]>::try_from(&v[..4]).expect("4 bytes"))
    };
    Some(LiveBackend { slot, addr, weight: flags >> meta::BACKEND_WEIGHT_SHIFT })
}

/// The pool as declared, slot `i` holding the `i`-th backend.
pub fn declared(pool: &PoolMeta) -> Vec<LiveBackend> {
    pool.backends.iter().enumerate().map(|(i, b)| LiveBackend { slot: i as u32, addr: b.addr, weight: b.weight }).collect()
}

/// The Maglev table of `backends` (slot numbers, [`maglev::NO_BACKEND`]
/// where no backend has a weight). The table depends on the addresses and
/// weights only, never on the slots.
pub fn ring_of(pool: &PoolMeta, backends: &[LiveBackend]) -> Result<Vec<u32>> {
    let addrs: Vec<Vec<u8>> = backends.iter().map(|b| octets(b.addr)).collect();
    let input: Vec<maglev::MaglevBackend> = addrs.iter().zip(backends).map(|(a, b)| maglev::MaglevBackend { addr: a, weight: b.weight }).collect();
    let table = maglev::build_table(&input, pool.table_size).map_err(|e| RuntimeError::BadMetadata(format!("pool `{}`: {e}", pool.name)))?;
    // build_table gives indices into `backends`: the slots they hold.
    Ok(table.into_iter().map(|i| backends.get(i as usize).map_or(maglev::NO_BACKEND, |b| b.slot)).collect())
}

/// The Maglev table of `pool`'s declared backends (slot numbers).
pub fn table(pool: &PoolMeta) -> Result<Vec<u32>> {
    ring_of(pool, &declared(pool))
}

/// Writes `ring` into half `half` of the pool's ring map: in one
/// `BPF_MAP_UPDATE_BATCH` where the kernel has it (Linux 5.6), else one
/// update per entry.
pub(crate) fn write_ring(fd: BorrowedFd<'_>, pool: &PoolMeta, half: u32, ring: &[u32]) -> Result<()> {
    let err = |source: std::io::Error| RuntimeError::Map { map: pool.ring_map.clone(), source };
    let base = half * pool.table_size;
    let keys: Vec<u8> = (0..ring.len() as u32).flat_map(|i| (base + i).to_le_bytes()).collect();
    let values: Vec<u8> = ring.iter().flat_map(|s| s.to_le_bytes()).collect();
    match sys::map_update_batch(fd, &keys, 4, &values, 4) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            for (k, v) in keys.chunks_exact(4).zip(values.chunks_exact(4)) {
                sys::map_update(fd, k, v, 0).map_err(err)?;
            }
            Ok(())
        }
        Err(e) => Err(err(e)),
    }
}

/// Calls `f` with every (key, value) of a hash or array map whose key and
/// value sizes are `key_size` and `value_size` (checked by the caller):
/// with `BPF_MAP_LOOKUP_BATCH` where the kernel has it, else key by key.
/// An entry deleted meanwhile (the flow table is an LRU) may be missed.
pub(crate) fn for_each_entry(fd: BorrowedFd<'_>, key_size: usize, value_size: usize, mut f: impl FnMut(&[u8], &[u8])) -> std::io::Result<()> {
    let mut batch = 1024usize;
    let mut token: Option<[u8; 8]> = None;
    loop {
        let (mut keys, mut values) = (vec![0u8; batch * key_size], vec![0u8; batch * value_size]);
        let mut next = [0u8; 8];
        match sys::map_lookup_batch(fd, token.as_ref(), &mut next, &mut keys, key_size, &mut values, value_size) {
            Ok((n, more)) => {
                for i in 0..n {
                    f(&keys[i * key_size..(i + 1) * key_size], &values[i * value_size..(i + 1) * value_size]);
                }
                if !more {
                    return Ok(());
                }
                token = Some(next);
            }
            // A hash bucket with more entries than the buffers hold.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && batch < 1 << 16 => batch *= 4,
            // No batches on this kernel (or for this map; 524 is the
            // kernel's ENOTSUPP): one key at a time, from the start
            // (nothing was read yet).
            Err(e) if token.is_none() && matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(524)) => {
                let mut key: Option<Vec<u8>> = None;
                let mut next = vec![0u8; key_size];
                let mut value = vec![0u8; value_size];
                while sys::map_next_key(fd, key.as_deref(), &mut next)? {
                    if sys::map_lookup(fd, &next, &mut value)? {
                        f(&next, &value);
                    }
                    key = Some(next.clone());
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

impl PolicyMaps {
    /// Writes every pool's backends, then its Maglev table (half 0, the
    /// one the control word names at first); except pools in `carried`,
    /// whose maps a replace handed on with their live contents.
    pub(crate) fn fill_pools(&self, carried: &[String]) -> Result<()> {
        for pool in self.meta().pools.iter().filter(|p| !carried.contains(&p.name)) {
            if pool.backends.len() > pool.max_backends as usize {
                return Err(RuntimeError::BadMetadata(format!("pool `{}` lists {} backends and has room for {}", pool.name, pool.backends.len(), pool.max_backends)));
            }
            for (slot, b) in pool.backends.iter().enumerate() {
                if b.addr.is_ipv6() != pool.v6 {
                    return Err(RuntimeError::BadMetadata(format!("pool `{}`: backend {} is not of the pool's family", pool.name, b.addr)));
                }
                if b.weight > meta::MAX_BACKEND_WEIGHT {
                    return Err(RuntimeError::BadMetadata(format!("pool `{}`: backend {} has a weight over {}", pool.name, b.addr, meta::MAX_BACKEND_WEIGHT)));
                }
                self.update(&pool.backends_map, &(slot as u32).to_le_bytes(), &backend_value(b.addr, b.weight))?;
            }
            let ring = table(pool)?;
            write_ring(self.map_data(&pool.ring_map)?.fd().as_fd(), pool, 0, &ring)?;
        }
        Ok(())
    }

    /// The backends `pool` holds now, by slot.
    pub fn pool_backends(&self, pool: &PoolMeta) -> Result<Vec<LiveBackend>> {
        let fd = self.map_data(&pool.backends_map)?.fd().as_fd();
        let mut out = Vec::new();
        for_each_entry(fd, 4, BACKEND_VALUE, |k, v| {
            let slot = u32::from_le_bytes(k.try_into().expect("4 bytes"));
            if slot < pool.max_backends {
                out.extend(decode_backend(pool, slot, v));
            }
        })
        .map_err(|source| RuntimeError::Map { map: pool.backends_map.clone(), source })?;
        out.sort_by_key(|b| b.slot);
        Ok(out)
    }

    /// How many entries of `pool`'s flow table name each slot and are in
    /// use (`meta::flow_alive`: not expired).
    pub fn pool_flows(&self, pool: &PoolMeta) -> Result<HashMap<u32, u64>> {
        let fd = self.map_data(&pool.flows_map)?.fd().as_fd();
        let mut flows: HashMap<u32, u64> = HashMap::new();
        let key = std::mem::size_of::<meta::FlowKey>();
        let value = std::mem::size_of::<meta::FlowValue>();
        let now = (sys::monotonic_coarse_ns() >> meta::FLOW_TICK_SHIFT) as u32;
        let idle = meta::idle_ticks(pool.idle_secs);
        for_each_entry(fd, key, value, |k, v| {
            let word = |i: usize| u32::from_le_bytes(v[i..i + 4].try_into().expect("4 bytes"));
            if meta::flow_alive(k[std::mem::offset_of!(meta::FlowKey, proto)], word(4), now, idle) {
                *flows.entry(word(0)).or_default() += 1;
            }
        })
        .map_err(|source| RuntimeError::Map { map: pool.flows_map.clone(), source })?;
        Ok(flows)
    }

    /// Every pool's backends (as they are now) and their counters, active
    /// flows counted.
    pub fn pool_stats(&self) -> Result<Vec<PoolStats>> {
        self.pool_stats_counting(u32::MAX)
    }

    /// As [`PolicyMaps::pool_stats`] for reports made every interval
    /// (`run`, `watch`, metrics): active flows are counted only in flow
    /// tables of at most [`REPORT_SCAN_MAX_FLOWS`] entries.
    pub fn pool_stats_for_reports(&self) -> Result<Vec<PoolStats>> {
        self.pool_stats_counting(REPORT_SCAN_MAX_FLOWS)
    }

    fn pool_stats_counting(&self, scan_max: u32) -> Result<Vec<PoolStats>> {
        let mut out = Vec::new();
        for pool in &self.meta().pools {
            let active_counted = pool.flows <= scan_max;
            let mut stats = PoolStats { name: pool.name.clone(), active_counted, ..Default::default() };
            let fd = self.map_data(&pool.stats_map)?.fd().as_fd();
            let mut buf = vec![0u8; 24 * self.cpus()];
            let mut read = |slot: u32| -> Result<[u64; 3]> {
                let mut sum = [0u64; 3];
                if sys::map_lookup(fd, &slot.to_le_bytes(), &mut buf).map_err(|source| RuntimeError::Map { map: pool.stats_map.clone(), source })? {
                    for cpu in buf.chunks_exact(24) {
                        for (i, s) in sum.iter_mut().enumerate() {
                            *s = s.wrapping_add(u64::from_le_bytes(cpu[8 * i..8 * i + 8].try_into().expect("8 bytes")));
                        }
                    }
                }
                Ok(sum)
            };
            let flows = if active_counted { self.pool_flows(pool)? } else { Default::default() };
            for backend in self.pool_backends(pool)? {
                let [packets, bytes, new_flows] = read(backend.slot)?;
                let active_flows = flows.get(&backend.slot).copied().unwrap_or(0);
                stats.backends.push(BackendStats { backend, packets, bytes, new_flows, active_flows });
            }
            stats.no_backend = read(pool.max_backends)?[0];
            out.push(stats);
        }
        Ok(out)
    }
}

/// A frame `lb` sent, taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encapsulated {
    pub outer_src: IpAddr,
    pub outer_dst: IpAddr,
    /// The GUE (UDP) destination port, for GUE.
    pub gue_port: Option<u16>,
    /// The packet inside, from its IP header on.
    pub inner: Vec<u8>,
}

/// Takes apart an encapsulated frame: Ethernet, then IPv4 or IPv6 carrying
/// IPIP (4, 41) or UDP (GUE variant 1: the IP packet right after the UDP
/// header, as long as the UDP length says). `None` for anything else, and,
/// as a receiver drops them, for UDP whose length is past the frame or
/// whose checksum is wrong (a checksum of 0, none, is taken over IPv6 too,
/// as Linux's `fou` does: `udp_sock_create6` with `use_udp6_rx_checksums`
/// off).
pub fn decapsulate(frame: &[u8]) -> Option<Encapsulated> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let l3 = frame.get(14..)?;
    let (src, dst, proto, rest): (IpAddr, IpAddr, u8, &[u8]) = match ethertype {
        0x0800 if l3.len() >= 20 && l3[0] == 0x45 => {
            let a = |o: usize| IpAddr::from(<[u8; 4]>::try_from(&l3[o..o + 4]).expect("4 bytes"));
            (a(12), a(16), l3[9], &l3[20..])
        }
        0x86dd if l3.len() >= 40 && l3[0] >> 4 == 6 => {
            let a = |o: usize| IpAddr::from(<[u8; 16]>::try_from(&l3[o..o + 16]).expect("16 bytes"));
            (a(8), a(24), l3[6], &l3[40..])
        }
        _ => return None,
    };
    match proto {
        4 | 41 => Some(Encapsulated { outer_src: src, outer_dst: dst, gue_port: None, inner: rest.to_vec() }),
        17 if rest.len() >= 8 => {
            let datagram = rest.get(..usize::from(u16::from_be_bytes([rest[4], rest[5]])))?;
            let checksum = u16::from_be_bytes([rest[6], rest[7]]);
            if checksum != 0 && !udp_checksum_right(src, dst, datagram) {
                return None;
            }
            Some(Encapsulated { outer_src: src, outer_dst: dst, gue_port: Some(u16::from_be_bytes([rest[2], rest[3]])), inner: datagram.get(8..)?.to_vec() })
        }
        _ => None,
    }
}

/// The one's-complement sum of a UDP datagram and its pseudo-header
/// (RFC 768, RFC 8200 8.1) is 0xffff.
fn udp_checksum_right(src: IpAddr, dst: IpAddr, datagram: &[u8]) -> bool {
    let words = |b: &[u8]| -> u64 { b.chunks(2).map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum() };
    let mut sum = words(&octets(src)) + words(&octets(dst)) + 17 + datagram.len() as u64 + words(datagram);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// Where a frame `lb` sent goes: the outer destination of an encapsulated
/// frame, else (`nat`) the destination of its IP header (after any VLAN
/// tags).
pub fn delivered_to(frame: &[u8]) -> Option<IpAddr> {
    if let Some(e) = decapsulate(frame) {
        return Some(e.outer_dst);
    }
    let mut at = 12;
    let mut ethertype = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        at += 4;
        ethertype = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
    }
    let l3 = at + 2;
    match ethertype {
        0x0800 => Some(IpAddr::from(<[u8; 4]>::try_from(frame.get(l3 + 16..l3 + 20)?).ok()?)),
        0x86dd => Some(IpAddr::from(<[u8; 16]>::try_from(frame.get(l3 + 24..l3 + 40)?).ok()?)),
        _ => None,
    }
}
