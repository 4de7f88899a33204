//! The connection table (`meta::ConntrackMeta`) from userspace: its live
//! entries decoded, counted by state (for `xpol run`, `stats` and
//! metrics), and, for tests, replaced with the entries a reference holds.
//! The programs own it (docs/conntrack.md); this only reads it, except in
//! tests.

use crate::loader::{PolicyMaps, Result, RuntimeError};
use crate::sys;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::fd::AsFd;
use xpol_lang::meta::{self, CtKey, CtValue};

/// A live entry of the connection table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtEntry {
    pub key: CtKey,
    pub value: CtValue,
    /// The side that sent the connection's first packet, and the other.
    pub from: (IpAddr, u16),
    pub to: (IpAddr, u16),
    /// `tcp established`, `udp replied`, ... (`meta::ct_state_name`).
    pub state: String,
    /// Nanoseconds until it expires without packets.
    pub expires_in_ns: u64,
}

impl CtEntry {
    fn decode(key: CtKey, value: CtValue, now: u64) -> CtEntry {
        let (lo, hi) = key.endpoints();
        let (from, to) = if value.flags & meta::CT_ORIG_LO != 0 { (lo, hi) } else { (hi, lo) };
        CtEntry { key, value, from, to, state: meta::ct_state_name(key.proto, value.state, value.flags), expires_in_ns: value.expires().saturating_sub(now) }
    }

    /// `tcp 198.18.0.2:40000 -> 198.18.0.9:443 established, 431999s`.
    pub fn describe(&self) -> String {
        let end = |(a, p): (IpAddr, u16)| match (a, self.key.proto) {
            (_, 1 | 58) => a.to_string(),
            (IpAddr::V6(a), _) => format!("[{a}]:{p}"),
            (IpAddr::V4(a), _) => format!("{a}:{p}"),
        };
        let id = if matches!(self.key.proto, 1 | 58) { format!(" id {}", u16::from_be_bytes(self.key.lo_port)) } else { String::new() };
        let (proto, state) = self.state.split_once(' ').unwrap_or(("", &self.state));
        format!("{proto} {} -> {}{id} {state}, expires in {}s", end(self.from), end(self.to), self.expires_in_ns.div_ceil(1_000_000_000))
    }
}

/// The table's entries and its state, as reports show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CtSummary {
    pub entries: u64,
    pub capacity: u32,
    /// Live entries by state (`tcp established`, ...).
    pub states: BTreeMap<String, u64>,
}

impl PolicyMaps {
    fn ct_meta(&self) -> Result<&meta::ConntrackMeta> {
        self.meta().conntrack.as_ref().ok_or_else(|| RuntimeError::UnknownMap(meta::CONNTRACK_MAP.to_string()))
    }

    /// Every key and value of the table, expired or not.
    fn ct_raw(&self) -> Result<Vec<(CtKey, CtValue)>> {
        let map = &self.ct_meta()?.map;
        let fd = self.map_data(map)?.fd().as_fd();
        let mut out = Vec::new();
        crate::lb::for_each_entry(fd, meta::CT_KEY_SIZE as usize, meta::CT_VALUE_SIZE as usize, |k, v| {
            if let (Some(k), Some(v)) = (CtKey::from_bytes(k), CtValue::from_bytes(v)) {
                out.push((k, v));
            }
        })
        .map_err(|source| RuntimeError::Map { map: map.clone(), source })?;
        Ok(out)
    }

    /// The table's live entries (expired ones wait for the LRU to reuse
    /// them), the longest-lived first.
    pub fn ct_entries(&self) -> Result<Vec<CtEntry>> {
        let now = sys::monotonic_coarse_ns();
        let mut out: Vec<CtEntry> = self.ct_raw()?.into_iter().filter(|(_, v)| v.expires() > now).map(|(k, v)| CtEntry::decode(k, v, now)).collect();
        out.sort_by(|a, b| b.expires_in_ns.cmp(&a.expires_in_ns).then_with(|| a.key.to_bytes().cmp(&b.key.to_bytes())));
        Ok(out)
    }

    /// The table's live entries counted by state; `None` for a policy
    /// without one.
    pub fn ct_summary(&self) -> Result<Option<CtSummary>> {
        let Some(ct) = &self.meta().conntrack else { return Ok(None) };
        let mut summary = CtSummary { capacity: ct.max_entries, ..CtSummary::default() };
        for e in self.ct_entries()? {
            summary.entries += 1;
            *summary.states.entry(e.state).or_insert(0) += 1;
        }
        Ok(Some(summary))
    }

    /// Moves the table's clock on by `ns` nanoseconds, as if that much time
    /// had passed since its entries were last written: `after D` for
    /// tests that compare the kernel with a reference (the kernel's clock
    /// cannot be moved). Each entry expires `ns` earlier.
    pub fn ct_advance(&self, ns: u64) -> Result<()> {
        let map = &self.ct_meta()?.map;
        let fd = self.map_data(map)?.fd().as_fd();
        for (k, v) in self.ct_raw()? {
            let v = CtValue { expires_ns: v.expires().saturating_sub(ns).to_le_bytes(), ..v };
            sys::map_update(fd, &k.to_bytes(), &v.to_bytes(), 0).map_err(|source| RuntimeError::Map { map: map.clone(), source })?;
        }
        Ok(())
    }

    /// Replaces the table's contents with `entries`, whose expiry is given
    /// as nanoseconds from now (0: expired), for tests that compare the
    /// kernel with a reference on a clock of its own: the kernel's
    /// cannot be moved.
    pub fn ct_set(&self, entries: &[(CtKey, CtValue, u64)]) -> Result<()> {
        let map = &self.ct_meta()?.map;
        let fd = self.map_data(map)?.fd().as_fd();
        let err = |source| RuntimeError::Map { map: map.clone(), source };
        for (k, _) in self.ct_raw()? {
            sys::map_delete(fd, &k.to_bytes()).map_err(err)?;
        }
        let now = sys::monotonic_coarse_ns();
        for (k, v, remaining) in entries {
            let v = CtValue { expires_ns: now.saturating_add(*remaining).to_le_bytes(), ..*v };
            sys::map_update(fd, &k.to_bytes(), &v.to_bytes(), 0).map_err(err)?;
        }
        Ok(())
    }
}

/// The warning for attaching only `hooks` of a policy whose connection
/// table some of the others keep: connections seen by a program left out
/// are not recorded (replies to what the host sends would be `new`).
pub fn unattached_trackers(meta: &meta::ObjectMeta, hooks: &[String]) -> Option<String> {
    let ct = meta.conntrack.as_ref()?;
    let missing: Vec<&str> = ct.trackers.iter().filter(|t| !hooks.contains(t)).map(String::as_str).collect();
    (!missing.is_empty()).then(|| {
        format!(
            "the connection table (`ct.state`) is kept by the {} programs, and `{}` is not attached: the connections its packets make are not recorded (docs/conntrack.md)",
            ct.trackers.join(" and "),
            missing.join("` and `")
        )
    })
}
