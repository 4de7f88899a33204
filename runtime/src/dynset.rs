//! Dynamic sets (`meta::DynSetMeta`) from userspace: their live elements
//! with the time each has left (`xpol set NAME SET list`, `stats`), and
//! changes by hand (`xpol set NAME SET add|del|flush`). The programs write
//! them too (`add(...)`, `delete(...)`); a change here is one map update,
//! as theirs are, so nothing is locked against them.

use crate::loader::{decode_key, KeyValue, PolicyMaps, Result, RuntimeError};
use crate::sys;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use xpol_lang::meta::{self, DynSetMeta, KeyKind, ObjectMeta};

/// A live element of a dynamic set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynElement {
    pub key: KeyValue,
    /// Nanoseconds until its time is up; `None`: never.
    pub left_ns: Option<u64>,
}

impl DynElement {
    /// `198.18.0.7 (599s left)`, `198.18.0.7 (no timeout)`.
    pub fn describe(&self) -> String {
        match self.left_ns {
            Some(ns) => format!("{} ({}s left)", self.key, ns.div_ceil(1_000_000_000)),
            None => format!("{} (no timeout)", self.key),
        }
    }
}

/// A dynamic set's size, as reports show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynSetSummary {
    pub name: String,
    pub elements: u64,
    pub capacity: u32,
}

/// The key bytes of `key` in a set of `kind` elements (`KeyKind`'s
/// encoding); `None` when it is not of that kind.
pub fn encode_key(kind: KeyKind, key: &KeyValue) -> Option<Vec<u8>> {
    match (kind, key) {
        (KeyKind::Int, KeyValue::Int(i)) => Some(i.to_le_bytes().to_vec()),
        (KeyKind::Mac, KeyValue::Mac(m)) => Some(m.iter().fold(0u64, |a, &b| (a << 8) | u64::from(b)).to_le_bytes().to_vec()),
        (KeyKind::Ip, KeyValue::Ip(a)) => {
            let mut k = vec![0u8; 20];
            match a {
                IpAddr::V4(a) => {
                    k[..4].copy_from_slice(&4u32.to_le_bytes());
                    k[4..8].copy_from_slice(&a.octets());
                }
                IpAddr::V6(a) => {
                    k[..4].copy_from_slice(&6u32.to_le_bytes());
                    k[4..].copy_from_slice(&a.octets());
                }
            }
            Some(k)
        }
        _ => None,
    }
}

/// An element as written on the command line, for set `d`.
pub fn parse_element(d: &DynSetMeta, text: &str) -> Result<KeyValue> {
    let bad = |reason: &str| RuntimeError::SetElement { set: d.name.clone(), element: text.to_string(), reason: reason.to_string() };
    match d.key {
        KeyKind::Ip => text.parse::<IpAddr>().map(KeyValue::Ip).map_err(|_| bad("the set holds IPv4 or IPv6 addresses (no prefixes)")),
        KeyKind::Int => {
            let v = text.parse::<u64>().map_err(|_| bad("the set holds integers"))?;
            if d.elem == "port" && v > u64::from(u16::MAX) {
                return Err(bad("a port is 0 to 65535"));
            }
            Ok(KeyValue::Int(v))
        }
        KeyKind::Mac => {
            let parts: Vec<u8> = text.split(':').filter_map(|p| (p.len() == 2).then(|| u8::from_str_radix(p, 16).ok()).flatten()).collect();
            let mac: [u8; 6] = parts.try_into().map_err(|_| bad("the set holds MAC addresses such as 02:00:00:00:00:01"))?;
            Ok(KeyValue::Mac(mac))
        }
        KeyKind::Bool => Err(bad("the set holds booleans, which no policy declares")),
    }
}

impl PolicyMaps {
    /// The dynamic set named `name`.
    pub fn dynset_meta(&self, name: &str) -> Result<&DynSetMeta> {
        self.meta().dynsets.iter().find(|d| d.name == name).ok_or_else(|| RuntimeError::UnknownSet(name.to_string()))
    }

    /// Every key of set `d` with the end stored for it, whether its time
    /// is up or not.
    fn dynset_raw(&self, d: &DynSetMeta) -> Result<Vec<(Vec<u8>, u64)>> {
        let fd = self.map_data(&d.map)?.fd().as_fd();
        let mut out = Vec::new();
        crate::lb::for_each_entry(fd, d.key_size as usize, d.value_size as usize, |k, v| {
            if let Ok(end) = v.try_into().map(u64::from_le_bytes) {
                out.push((k.to_vec(), end));
            }
        })
        .map_err(|source| RuntimeError::Map { map: d.map.clone(), source })?;
        Ok(out)
    }

    /// The live elements of dynamic set `name` (those whose time is not
    /// up), in key order.
    pub fn dynset_elements(&self, name: &str) -> Result<Vec<DynElement>> {
        let d = self.dynset_meta(name)?;
        let now = sys::monotonic_coarse_ns();
        let mut out: Vec<(Vec<u8>, DynElement)> = self
            .dynset_raw(d)?
            .into_iter()
            .filter(|&(_, end)| end > now)
            .map(|(k, end)| {
                let key = decode_key(&[d.key], &k).pop().expect("one component");
                (k, DynElement { key, left_ns: (end != meta::DYNSET_FOREVER).then(|| end - now) })
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out.into_iter().map(|(_, e)| e).collect())
    }

    /// Adds `key` to dynamic set `name` for `timeout_ns` from now (`None`:
    /// the set's `timeout`, or no timeout without one), or moves its end.
    pub fn dynset_add(&self, name: &str, key: &KeyValue, timeout_ns: Option<u64>) -> Result<()> {
        let d = self.dynset_meta(name)?;
        let bytes = encode_key(d.key, key).ok_or_else(|| RuntimeError::SetElement { set: d.name.clone(), element: key.to_string(), reason: "not of the set's type".into() })?;
        let end = match timeout_ns.or(d.timeout_ns) {
            Some(t) => sys::monotonic_coarse_ns().saturating_add(t),
            None => meta::DYNSET_FOREVER,
        };
        let fd = self.map_data(&d.map)?.fd().as_fd();
        sys::map_update(fd, &bytes, &end.to_le_bytes(), 0).map_err(|source| RuntimeError::Map { map: d.map.clone(), source })
    }

    /// Deletes `key` from dynamic set `name`; whether it was there (an
    /// element whose time was up was not).
    pub fn dynset_delete(&self, name: &str, key: &KeyValue) -> Result<bool> {
        let d = self.dynset_meta(name)?;
        let live = self.dynset_elements(name)?.iter().any(|e| e.key == *key);
        let bytes = encode_key(d.key, key).ok_or_else(|| RuntimeError::SetElement { set: d.name.clone(), element: key.to_string(), reason: "not of the set's type".into() })?;
        let fd = self.map_data(&d.map)?.fd().as_fd();
        sys::map_delete(fd, &bytes).map_err(|source| RuntimeError::Map { map: d.map.clone(), source })?;
        Ok(live)
    }

    /// Empties dynamic set `name`; the live elements it held.
    pub fn dynset_flush(&self, name: &str) -> Result<usize> {
        let live = self.dynset_elements(name)?.len();
        let d = self.dynset_meta(name)?;
        let fd = self.map_data(&d.map)?.fd().as_fd();
        for (k, _) in self.dynset_raw(d)? {
            sys::map_delete(fd, &k).map_err(|source| RuntimeError::Map { map: d.map.clone(), source })?;
        }
        Ok(live)
    }

    /// Replaces dynamic set `name`'s contents with `elements`, each with
    /// the nanoseconds it has left (`None`: no timeout), for tests that
    /// compare the kernel with a reference on a clock of its own: the
    /// kernel's cannot be moved.
    pub fn dynset_set(&self, name: &str, elements: &[(KeyValue, Option<u64>)]) -> Result<()> {
        self.dynset_flush(name)?;
        let d = self.dynset_meta(name)?;
        let fd = self.map_data(&d.map)?.fd().as_fd();
        let now = sys::monotonic_coarse_ns();
        for (key, left) in elements {
            let bytes = encode_key(d.key, key).ok_or_else(|| RuntimeError::SetElement { set: d.name.clone(), element: key.to_string(), reason: "not of the set's type".into() })?;
            let end = left.map_or(meta::DYNSET_FOREVER, |l| now.saturating_add(l));
            sys::map_update(fd, &bytes, &end.to_le_bytes(), 0).map_err(|source| RuntimeError::Map { map: d.map.clone(), source })?;
        }
        Ok(())
    }

    /// Each dynamic set's live elements and capacity.
    pub fn dynset_summaries(&self) -> Result<Vec<DynSetSummary>> {
        self.meta()
            .dynsets
            .iter()
            .map(|d| Ok(DynSetSummary { name: d.name.clone(), elements: self.dynset_elements(&d.name)?.len() as u64, capacity: d.max_entries }))
            .collect()
    }
}

/// Hands on the map of each dynamic set of `new` declared as in `old`
/// (name, element type, size): an apply over a running policy keeps what
/// its packets added. Returns the sets kept.
pub(crate) fn carried_dynsets(old: &ObjectMeta, new: &ObjectMeta, old_maps: &PolicyMaps, adopt: &mut Vec<(String, Arc<std::os::fd::OwnedFd>)>) -> Result<Vec<String>> {
    let mut kept = Vec::new();
    for d in &new.dynsets {
        let same = old.dynsets.iter().find(|o| (&o.name, o.key, o.key_size, o.value_size, o.max_entries) == (&d.name, d.key, d.key_size, d.value_size, d.max_entries));
        if let Some(o) = same {
            adopt.push((d.map.clone(), Arc::new(old_maps.map_fd(&o.map)?)));
            kept.push(d.name.clone());
        }
    }
    Ok(kept)
}
