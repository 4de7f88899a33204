//! `xpol pool`: changing the backends of a pool of an applied policy in
//! place, on the maps the running programs read, under the store's
//! exclusive lock.
//!
//! A pool's live contents are its backends map (`crate::lb`): each change
//! writes a slot there, then builds the Maglev table of the new contents
//! and switches to it. The ring map holds two tables (`PoolMeta::ring_map`):
//! the new one is written into the half no program reads, and one update of
//! the control word switches the programs to it. A program that read the
//! old control word may still be reading the old half, so that half is
//! written again only after a grace period (`sys::wait_for_running_programs`).
//!
//! The order of the writes keeps every packet on a backend that is there:
//!
//! - add: the slot's leftover flow-table entries (of a backend deleted from
//!   it earlier) are removed and its counters zeroed, then the backend is
//!   written (present), then the table that sends flows to it;
//! - delete: the table without the backend first; after the grace period,
//!   when no program can still pick the slot from the old table, the slot
//!   is freed. Its established flows then find it empty and are balanced
//!   again by the table;
//! - drain (weight 0) and weight: the weight, then the table. A drained
//!   backend stays present, so the flows the flow table sends to it stay.
//!
//! A killed command leaves the slot written and the table possibly behind
//! it (a deleted backend drained rather than gone): the next change of the
//! pool builds the table from the backends map again; `xpol pool ... weight
//! ADDR W` with the weight it has does only that.

use crate::lb::{self, LiveBackend, BACKEND_VALUE};
use crate::loader::{PolicyMaps, Result, RuntimeError};
use crate::store::Store;
use crate::sys;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use xpol_lang::meta::{self, PoolMeta};

/// A change to one pool of an applied policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolChange {
    /// A new backend, in the lowest free slot (weight 0: drained).
    Add { addr: IpAddr, weight: u32 },
    /// Removes a backend; its established flows are balanced again.
    Delete(IpAddr),
    /// Weight 0: no new flows, established ones stay.
    Drain(IpAddr),
    /// Changes a backend's share of new flows (0: drained).
    Weight { addr: IpAddr, weight: u32 },
}

/// Changes pool `pool` of the applied policy `name` (see [`PoolEditor`]).
pub fn change_pool(store: &Store, name: &str, pool: &str, change: PoolChange) -> Result<()> {
    PoolEditor::open(store, name, pool)?.change(store, change)
}

/// Changes to one pool of an applied policy, in place (see the module doc).
pub struct PoolEditor {
    name: String,
    pool: PoolMeta,
    /// The generation whose maps the editor changes.
    dir: PathBuf,
    maps: PolicyMaps,
    /// Whether a program may still read the half of the ring that is not
    /// in use: true after a switch until a grace period has passed, and at
    /// first (another process may have switched just before).
    unsettled: bool,
}

impl PoolEditor {
    /// The editor of pool `pool` of the applied policy `name`; `store` must
    /// be opened for changes ([`Store::write`]).
    pub fn open(store: &Store, name: &str, pool: &str) -> Result<PoolEditor> {
        if !store.exclusive() {
            return Err(RuntimeError::Store("changing a pool needs the store opened for changes (Store::write)".into()));
        }
        let applied = store.applied(name)?;
        let current = applied.current.ok_or_else(|| RuntimeError::NotApplied(name.to_string()))?;
        let meta = &current.record.meta;
        let p = meta.pools.iter().find(|p| p.name == pool).ok_or_else(|| {
            let names: Vec<&str> = meta.pools.iter().map(|p| p.name.as_str()).collect();
            RuntimeError::Apply { name: name.into(), message: format!("has no pool `{pool}` (its pools: {})", if names.is_empty() { "none".into() } else { names.join(", ") }) }
        })?;
        // Changes go to the current generation's maps: they must be what
        // every link runs.
        if let Some(l) = applied.links.iter().find(|l| l.attached && !current.record.programs.values().any(|&id| id == l.prog_id)) {
            return Err(RuntimeError::Apply {
                name: name.into(),
                message: format!("{} on {} does not run the recorded version; `xpol apply` again repairs it", l.hook, l.interface),
            });
        }
        // The pinned maps, their shapes checked against the metadata.
        let maps = PolicyMaps::open_dir(&current.dir, meta.clone(), Vec::new())?;
        Ok(PoolEditor { name: name.into(), pool: p.clone(), dir: current.dir.clone(), maps, unsettled: true })
    }

    /// The pool's metadata (its declaration and maps).
    pub fn pool(&self) -> &PoolMeta {
        &self.pool
    }

    /// The pool's backends now, by slot.
    pub fn backends(&self) -> Result<Vec<LiveBackend>> {
        self.maps.pool_backends(&self.pool)
    }

    /// The half of the ring the programs read (the control word).
    pub fn active_half(&self) -> Result<u32> {
        let mut value = [0u8; 4];
        let fd = self.maps.map_data(&self.pool.control_map)?.fd().as_fd();
        sys::map_lookup(fd, &0u32.to_le_bytes(), &mut value).map_err(|source| self.map_error(&self.pool.control_map, source))?;
        Ok(u32::from_le_bytes(value) & 1)
    }

    /// Half `half` (0 or 1) of the ring: a Maglev table of backend slots.
    pub fn ring(&self, half: u32) -> Result<Vec<u32>> {
        let fd = self.maps.map_data(&self.pool.ring_map)?.fd().as_fd();
        let (start, end) = (half * self.pool.table_size, (half + 1) * self.pool.table_size);
        let mut ring = vec![xpol_lang::maglev::NO_BACKEND; self.pool.table_size as usize];
        lb::for_each_entry(fd, 4, 4, |k, v| {
            let i = u32::from_le_bytes(k.try_into().expect("4 bytes"));
            if (start..end).contains(&i) {
                ring[(i - start) as usize] = u32::from_le_bytes(v.try_into().expect("4 bytes"));
            }
        })
        .map_err(|source| self.map_error(&self.pool.ring_map, source))?;
        Ok(ring)
    }

    /// The maps, for reading counters.
    pub fn maps(&self) -> &PolicyMaps {
        &self.maps
    }

    fn map_error(&self, map: &str, source: std::io::Error) -> RuntimeError {
        RuntimeError::Map { map: map.to_string(), source }
    }

    fn refuse(&self, message: String) -> RuntimeError {
        RuntimeError::Pool { name: self.name.clone(), pool: self.pool.name.clone(), message }
    }

    /// Applies `change`, or refuses it with nothing written.
    pub fn change(&mut self, store: &Store, change: PoolChange) -> Result<()> {
        // A reload (an apply, or a set change that loads the policy again)
        // made a new generation and removed this one: edit the new one.
        if std::fs::symlink_metadata(&self.dir).is_err() {
            *self = PoolEditor::open(store, &self.name, &self.pool.name)?;
        }
        let mut backends = self.backends()?;
        // Only xpol writes the map, one slot per address; anything else was
        // done from outside, and no table can be built from it.
        for (i, b) in backends.iter().enumerate() {
            if let Some(other) = backends[..i].iter().find(|o| o.addr == b.addr) {
                return Err(RuntimeError::Store(format!(
                    "pool `{}` of `{}`: slots {} and {} both hold {}: its backends map ({}) was changed from outside xpol; nothing was changed. Applying the policy with a changed pool declaration starts the pool afresh",
                    self.pool.name, self.name, other.slot, b.slot, b.addr, self.pool.backends_map
                )));
            }
        }
        let addr = match change {
            PoolChange::Add { addr, .. } | PoolChange::Delete(addr) | PoolChange::Drain(addr) | PoolChange::Weight { addr, .. } => addr,
        };
        self.check_address(addr)?;
        if let PoolChange::Add { weight, .. } | PoolChange::Weight { weight, .. } = change {
            if weight > meta::MAX_BACKEND_WEIGHT {
                return Err(self.refuse(format!("the weight {weight} is out of range: a weight is 0 (drained) to {}", meta::MAX_BACKEND_WEIGHT)));
            }
        }
        let at = backends.iter().position(|b| b.addr == addr);
        match (change, at) {
            (PoolChange::Add { weight, .. }, None) => {
                let slot = (0..self.pool.max_backends).find(|s| !backends.iter().any(|b| b.slot == *s)).ok_or_else(|| {
                    self.refuse(format!(
                        "it is full: it holds at most {} backends (`max {}` in its declaration); remove one, or declare the pool with a larger `max N` and apply again",
                        self.pool.max_backends, self.pool.max_backends
                    ))
                })?;
                backends.push(LiveBackend { slot, addr, weight });
                // Built before anything is written: a table that cannot be
                // built changes nothing.
                let ring = lb::ring_of(&self.pool, &backends)?;
                self.clear_slot_state(slot)?;
                // A slot this process freed may still be read by a program
                // that found it present: the new address only after them.
                self.settle();
                self.write_slot(slot, &lb::backend_value(addr, weight))?;
                self.switch_ring(&ring)
            }
            (PoolChange::Add { .. }, Some(i)) => Err(self.refuse(format!(
                "{addr} is already in the pool ({}, weight {}); `xpol pool {} {} weight {addr} W` changes its weight",
                backends[i].state(),
                backends[i].weight,
                self.name,
                self.pool.name
            ))),
            (PoolChange::Delete(_) | PoolChange::Drain(_) | PoolChange::Weight { .. }, None) => {
                // A few, for a pool may hold thousands.
                let mut listed: Vec<String> = backends.iter().take(8).map(|b| b.addr.to_string()).collect();
                if backends.len() > 8 {
                    listed.push(format!("and {} more: `xpol pool {} {} list`", backends.len() - 8, self.name, self.pool.name));
                }
                Err(self.refuse(format!("{addr} is not in the pool (its backends: {})", if listed.is_empty() { "none".into() } else { listed.join(", ") })))
            }
            (PoolChange::Delete(_), Some(i)) => {
                let gone = backends.remove(i);
                let ring = lb::ring_of(&self.pool, &backends)?;
                // Drained first: what a killed delete leaves is a backend
                // that takes no new flows, as the table then says.
                self.write_slot(gone.slot, &lb::backend_value(addr, 0))?;
                self.switch_ring(&ring)?;
                // No program can pick the slot from the old table any more.
                // Freed with its address kept (`lb::free_backend_value`): a
                // flow-table hit may have seen it present and not yet read
                // the address.
                self.settle();
                self.write_slot(gone.slot, &lb::free_backend_value(addr))?;
                self.unsettled = true;
                Ok(())
            }
            (PoolChange::Drain(_), Some(i)) | (PoolChange::Weight { .. }, Some(i)) => {
                let weight = if let PoolChange::Weight { weight, .. } = change { weight } else { 0 };
                backends[i].weight = weight;
                let ring = lb::ring_of(&self.pool, &backends)?;
                self.write_slot(backends[i].slot, &lb::backend_value(addr, weight))?;
                self.switch_ring(&ring)
            }
        }
    }

    /// Refuses an address the pool cannot hold: of the other family (the
    /// programs encapsulate for the pool's family), or not unicast.
    fn check_address(&self, addr: IpAddr) -> Result<()> {
        let family = |v6: bool| if v6 { "IPv6" } else { "IPv4" };
        if addr.is_ipv6() != self.pool.v6 {
            let why = if self.pool.backends.is_empty() && !self.pool.v6 { " (a pool declared empty takes the family of its `lb`'s `src:`, IPv4 with `nat`)" } else { "" };
            return Err(self.refuse(format!("{addr} is an {} address, and the pool holds {} backends{why}", family(addr.is_ipv6()), family(self.pool.v6))));
        }
        let unusable = match addr {
            IpAddr::V4(v) => v.is_unspecified() || v.is_broadcast() || v.is_multicast(),
            IpAddr::V6(v) => v.is_unspecified() || v.is_multicast(),
        };
        if unusable {
            return Err(self.refuse(format!("{addr} cannot be a backend: a backend is a unicast address that packets can be sent to")));
        }
        Ok(())
    }

    fn write_slot(&self, slot: u32, value: &[u8; BACKEND_VALUE]) -> Result<()> {
        self.maps.update(&self.pool.backends_map, &slot.to_le_bytes(), value)
    }

    /// Forgets what a slot's earlier backend left: flow-table entries that
    /// still name the slot (flows not seen since that backend was deleted:
    /// they would go to the new one rather than be balanced by the table)
    /// and its counters. No program writes either for a free slot: no
    /// table leads to it, and a flow that finds it empty is balanced again.
    fn clear_slot_state(&self, slot: u32) -> Result<()> {
        let flows = self.maps.map_data(&self.pool.flows_map)?.fd().as_fd();
        let mut stale = Vec::new();
        lb::for_each_entry(flows, std::mem::size_of::<meta::FlowKey>(), std::mem::size_of::<meta::FlowValue>(), |k, v| {
            if v[..4] == slot.to_le_bytes() {
                stale.push(k.to_vec());
            }
        })
        .map_err(|source| self.map_error(&self.pool.flows_map, source))?;
        for key in stale {
            sys::map_delete(flows, &key).map_err(|source| self.map_error(&self.pool.flows_map, source))?;
        }
        let zeros = vec![0u8; std::mem::size_of::<meta::BackendCounters>() * self.maps.cpus()];
        self.maps.update(&self.pool.stats_map, &slot.to_le_bytes(), &zeros)
    }

    /// Writes `ring` (a Maglev table) into the half of the ring no program
    /// reads, and switches the programs to it.
    fn switch_ring(&mut self, ring: &[u32]) -> Result<()> {
        let next = 1 - self.active_half()?;
        self.settle();
        lb::write_ring(self.maps.map_data(&self.pool.ring_map)?.fd().as_fd(), &self.pool, next, ring)?;
        // The table's stores before the switch's, on any CPU (the syscalls
        // alone order them only on x86).
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.unsettled = true;
        self.maps.update(&self.pool.control_map, &0u32.to_le_bytes(), &next.to_le_bytes())
    }

    /// Waits, if needed, until no program can be reading the half of the
    /// ring that is not in use.
    fn settle(&mut self) {
        if self.unsettled {
            sys::wait_for_running_programs();
            self.unsettled = false;
        }
    }
}
