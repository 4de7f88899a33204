//! The load balancer's state in the kernel: filling a pool's maps (the
//! backends and their Maglev table, `xpol_lang::maglev`) and reading its
//! per-backend counters; and, for tests, taking apart the frames `lb`
//! sends. The maps' layouts are `xpol_lang::meta::PoolMeta`'s.

use crate::loader::{PolicyMaps, Result, RuntimeError};
use crate::sys;
use std::net::IpAddr;
use std::os::fd::AsFd;
use xpol_lang::maglev;
use xpol_lang::meta::{self, PoolMeta};

/// One backend's counters, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    pub addr: Option<IpAddr>,
    pub weight: u32,
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
    /// By backend slot (the pool's backends in order).
    pub backends: Vec<BackendStats>,
    /// Packets dropped because no backend had a weight.
    pub no_backend: u64,
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The value of a backend slot in the backends map.
fn backend_value(addr: IpAddr) -> [u8; 20] {
    let mut v = [0u8; 20];
    let o = octets(addr);
    v[..o.len()].copy_from_slice(&o);
    v[16..20].copy_from_slice(&meta::BACKEND_PRESENT.to_le_bytes());
    v
}

/// The Maglev table of `pool`'s backends (slot numbers).
pub fn table(pool: &PoolMeta) -> Result<Vec<u32>> {
    let addrs: Vec<Vec<u8>> = pool.backends.iter().map(|b| octets(b.addr)).collect();
    let backends: Vec<maglev::MaglevBackend> = addrs.iter().zip(&pool.backends).map(|(a, b)| maglev::MaglevBackend { addr: a, weight: b.weight }).collect();
    maglev::build_table(&backends, pool.table_size).map_err(|e| RuntimeError::BadMetadata(format!("pool `{}`: {e}", pool.name)))
}

impl PolicyMaps {
    /// Writes every pool's backends, then its Maglev table.
    pub(crate) fn fill_pools(&self) -> Result<()> {
        for pool in &self.meta().pools {
            if pool.backends.len() > pool.max_backends as usize {
                return Err(RuntimeError::BadMetadata(format!("pool `{}` lists {} backends and has room for {}", pool.name, pool.backends.len(), pool.max_backends)));
            }
            for (slot, b) in pool.backends.iter().enumerate() {
                if b.addr.is_ipv6() != pool.v6 {
                    return Err(RuntimeError::BadMetadata(format!("pool `{}`: backend {} is not of the pool's family", pool.name, b.addr)));
                }
                self.update(&pool.backends_map, &(slot as u32).to_le_bytes(), &backend_value(b.addr))?;
            }
            let ring = table(pool)?;
            let fd = self.map_data(&pool.ring_map)?.fd().as_fd();
            for (i, slot) in ring.iter().enumerate() {
                sys::map_update(fd, &(i as u32).to_le_bytes(), &slot.to_le_bytes(), 0).map_err(|source| RuntimeError::Map { map: pool.ring_map.clone(), source })?;
            }
        }
        Ok(())
    }

    /// Every pool's counters.
    pub fn pool_stats(&self) -> Result<Vec<PoolStats>> {
        let mut out = Vec::new();
        for pool in &self.meta().pools {
            let mut stats = PoolStats { name: pool.name.clone(), ..Default::default() };
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
            for (slot, b) in pool.backends.iter().enumerate() {
                let [packets, bytes, new_flows] = read(slot as u32)?;
                stats.backends.push(BackendStats { addr: Some(b.addr), weight: b.weight, packets, bytes, new_flows, active_flows: 0 });
            }
            stats.no_backend = read(pool.max_backends)?[0];
            // Active flows: the flow table's entries per backend.
            let flows = self.map_data(&pool.flows_map)?.fd().as_fd();
            let mut key: Option<Vec<u8>> = None;
            let mut next = vec![0u8; std::mem::size_of::<meta::FlowKey>()];
            let mut value = [0u8; 8];
            while sys::map_next_key(flows, key.as_deref(), &mut next).map_err(|source| RuntimeError::Map { map: pool.flows_map.clone(), source })? {
                if sys::map_lookup(flows, &next, &mut value).unwrap_or(false) {
                    let slot = u32::from_le_bytes(value[..4].try_into().expect("4 bytes")) as usize;
                    if let Some(b) = stats.backends.get_mut(slot) {
                        b.active_flows += 1;
                    }
                }
                key = Some(next.clone());
            }
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
/// header). `None` for anything else.
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
        17 if rest.len() >= 8 => Some(Encapsulated { outer_src: src, outer_dst: dst, gue_port: Some(u16::from_be_bytes([rest[2], rest[3]])), inner: rest[8..].to_vec() }),
        _ => None,
    }
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
