//! Changing one IPv6 set's prefixes in the shared IPv6 tables in place,
//! while programs read them: what makes `xpol set NAME SET add
//! 2001:db8::/48` cost microseconds instead of a reload.
//!
//! The tables (`xpol_lang::ipv6_table`) are a trie of 32-bit entries; an
//! address reads one entry of each node on its way. Adding or removing a
//! prefix changes the membership of its addresses alone, so it rewrites
//! only the deepest entries whose regions hold it
//! ([`ipv6_table::entries_to_edit`]): for each, the subtree it should lead
//! to is built alone from the set's prefixes that meet its region
//! ([`Ipv6Table::entry_of`], the same code that builds whole tables), its
//! nodes and tails are written into free places no entry leads to, then
//! the entry, one aligned u32 in a mappable array, is stored in one go. A
//! packet reads the old entry and the old subtree, or the new entry and
//! the new subtree: its verdict is one the set gave before or after.
//!
//! Freed nodes and tails may still be read by a program that read the old
//! entry: as in `ipv4_edit`, they are used again only after
//! [`sys::wait_for_running_programs`] (once before the first use of what
//! was found free, then when short and something was freed). A change
//! reserves everything it needs before its first store; when the maps have
//! too little room left (the loader leaves a quarter more, 256 nodes and
//! 1,024 tails at least), the caller reloads the set instead, which sizes
//! the maps again. Wide nodes in global data are not given out again: an
//! edit that replaces one builds ordinary nodes in the map.
//!
//! Architecture invariant: only nodes and tails that no entry leads to are
//! written, and an entry programs may read is only ever written by
//! [`MappedValue::publish_u32`], after what it leads to.

use crate::ipv4_edit::NoRoom;
use crate::loader::RuntimeError;
use crate::sys::{self, MappedValue};
use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use xpol_lang::ipv6_table::{self, mask, EntryAt, GlobalLayout, Ipv6Table, Ipv6View, Stored, Tail, NODE_BYTES, NODE_ENTRIES, ROOT_NODES, TAIL_BYTES};
use xpol_lang::meta::{self, ObjectMeta, SetMeta};

type Result<T> = std::result::Result<T, RuntimeError>;

/// The IPv6 tables of a generation, mapped for writing.
struct Tables {
    nodes: MappedValue,
    node_count: u32,
    tails: MappedValue,
    tail_count: u32,
    /// Global data, with the roots and wide nodes, when they are there.
    global: Option<(MappedValue, GlobalLayout)>,
    slots: u32,
}

impl Tables {
    /// The tables of the generation in `dir`, or `None` when they cannot
    /// be changed in place (not mappable: applied by an older xpol, or a
    /// kernel before 5.5).
    fn open(dir: &Path, object: &ObjectMeta) -> Result<Option<Tables>> {
        let slots = object.sets.iter().filter(|s| s.ipv6_slot.is_some()).count() as u32;
        let layout = crate::loader::ipv6_global_layout(object)?;
        let open = |map: &str, value: Option<u32>| -> Result<Option<(MappedValue, u32, u32)>> {
            let path = dir.join(crate::loader::pin_file(map));
            let Ok(fd) = sys::obj_get(&path, 0) else { return Ok(None) };
            let (_, key_size, value_size, entries) = sys::map_shape(fd.as_fd()).map_err(|e| RuntimeError::Store(format!("{}: {e}", path.display())))?;
            if key_size != 4 || value.is_some_and(|v| v != value_size) {
                return Err(RuntimeError::Store(format!("{}: not the policy's IPv6 table", path.display())));
            }
            let len = value_size.next_multiple_of(8) as usize * entries as usize;
            Ok(MappedValue::map(fd.as_fd(), len).ok().map(|m| (m, entries, value_size)))
        };
        let Some((nodes, node_count, _)) = open(meta::IPV6_NODES_MAP, Some(NODE_BYTES))? else { return Ok(None) };
        let Some((tails, tail_count, _)) = open(meta::IPV6_TAILS_MAP, Some(TAIL_BYTES))? else { return Ok(None) };
        let global = match layout {
            Some(l) => {
                let Some((m, entries, value_size)) = open(meta::IPV4_TABLES_MAP, None)? else { return Ok(None) };
                if entries != 1 || u64::from(value_size) < l.end {
                    return Err(RuntimeError::Store("the global data is smaller than its IPv6 tables".into()));
                }
                Some((m, l))
            }
            None => None,
        };
        if u64::from(slots) * u64::from(ROOT_NODES) > u64::from(node_count) && global.is_none() {
            return Err(RuntimeError::Store("the IPv6 nodes map is smaller than the sets' roots".into()));
        }
        Ok(Some(Tables { nodes, node_count, tails, tail_count, global, slots }))
    }

    fn place(&self, at: EntryAt) -> Stored {
        ipv6_table::entry_place(at, self.global.as_ref().map(|(_, l)| l))
    }

    /// The mapping and byte offset of an entry, checked to be in it.
    fn entry_at(&self, at: EntryAt) -> Option<(&MappedValue, usize)> {
        let ok_node = |n: u32| n < self.node_count;
        match (at, self.place(at)) {
            (EntryAt::Node { node, index }, Stored::Nodes(o)) if ok_node(node) && index < NODE_ENTRIES as u32 => Some((&self.nodes, o as usize)),
            (EntryAt::Root { slot, index }, Stored::Nodes(o)) if slot < self.slots && index < 1 << 16 => Some((&self.nodes, o as usize)),
            (EntryAt::Root { slot, index }, Stored::Global(o)) if slot < self.slots && index < 1 << 16 => self.global.as_ref().map(|(m, _)| (m, o as usize)),
            (EntryAt::Wide { wide, index }, Stored::Global(o)) => self.global.as_ref().filter(|(_, l)| u64::from(wide) < l.count && index < 1 << 16).map(|(m, _)| (m, o as usize)),
            _ => None,
        }
    }

    fn read_tail(m: &MappedValue, at: usize) -> Tail {
        let mut b = [0u8; TAIL_BYTES as usize];
        m.read(at, &mut b);
        Tail::from_bytes(&b)
    }
}

/// Reads as programs read; a place past the maps (a damaged table) reads
/// as a miss, and the walk that finds free space refuses it
/// ([`Generation::open`]).
impl Ipv6View for Tables {
    fn entry(&self, at: EntryAt) -> u32 {
        let Some((m, o)) = self.entry_at(at) else { return ipv6_table::MISS };
        let mut w = [0u8; 4];
        m.read(o, &mut w);
        u32::from_le_bytes(w)
    }
    fn region(&self, node: u32) -> Tail {
        if node >= self.node_count {
            return Tail { hi: 0, lo: 0, mask_hi: 0, mask_lo: 0 };
        }
        Self::read_tail(&self.nodes, ipv6_table::region_place(node) as usize)
    }
    fn wide_region(&self, wide: u32) -> Tail {
        match &self.global {
            Some((m, l)) if u64::from(wide) < l.count => Self::read_tail(m, ipv6_table::wide_region_place(l, wide) as usize),
            _ => Tail { hi: 0, lo: 0, mask_hi: 0, mask_lo: 0 },
        }
    }
    fn tail(&self, i: u32) -> Option<Tail> {
        (i < self.tail_count).then(|| Self::read_tail(&self.tails, i as usize * TAIL_BYTES as usize))
    }
}

/// The mapped tables of one generation and their allocator, shared by
/// every editor of this process on it (see `ipv4_edit`).
struct Generation {
    tables: Tables,
    /// Nodes and tails no entry leads to (lowest popped first).
    free: [Vec<u32>; 2],
    /// Freed since the last grace period, perhaps still read.
    freed: [Vec<u32>; 2],
    waited: bool,
}

static OPEN: Mutex<Vec<(PathBuf, Weak<Mutex<Generation>>)>> = Mutex::new(Vec::new());

/// Edits one set's slot of the IPv6 tables of a generation; the store's
/// write lock must be held while it lives.
pub(crate) struct Ipv6Editor {
    generation: Arc<Mutex<Generation>>,
    slot: u32,
}

impl Ipv6Editor {
    /// The editor of `set`'s slot in the generation in `dir` (whose
    /// metadata is `object`), or `None` when its tables cannot be changed
    /// in place.
    pub(crate) fn open(dir: &Path, object: &ObjectMeta, set: &SetMeta) -> Result<Option<Ipv6Editor>> {
        let Some(slot) = set.ipv6_slot else { return Ok(None) };
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|(_, g)| g.strong_count() > 0);
        let generation = match open.iter().find(|(d, _)| d == dir).and_then(|(_, g)| g.upgrade()) {
            Some(g) => g,
            None => {
                let Some(g) = Generation::open(dir, object)? else { return Ok(None) };
                let g = Arc::new(Mutex::new(g));
                open.push((dir.to_path_buf(), Arc::downgrade(&g)));
                g
            }
        };
        if slot >= generation.lock().unwrap_or_else(|e| e.into_inner()).tables.slots {
            return Err(RuntimeError::BadMetadata(format!("set `{}` has an IPv6 slot past the tables", set.name)));
        }
        Ok(Some(Ipv6Editor { generation, slot }))
    }

    /// Adds prefix `added` (masked): each entry it changes is rebuilt
    /// from what the tables hold there and the prefix
    /// ([`ipv6_table::entry_prefixes`]). `Err(NoRoom)` inside `Ok`: too
    /// few free nodes or tails, found before anything was written; the
    /// caller reloads instead.
    pub(crate) fn add(&self, added: (u128, u8)) -> Result<std::result::Result<(), NoRoom>> {
        self.generation.lock().unwrap_or_else(|e| e.into_inner()).change(self.slot, None, added)
    }

    /// Makes the tables hold `members` (the set's IPv6 prefixes, masked,
    /// once `removed` was deleted) where `removed` was; as
    /// [`Ipv6Editor::add`] otherwise.
    pub(crate) fn remove(&self, members: &BTreeSet<(u128, u8)>, removed: (u128, u8)) -> Result<std::result::Result<(), NoRoom>> {
        self.generation.lock().unwrap_or_else(|e| e.into_inner()).change(self.slot, Some(members), removed)
    }
}

/// The prefixes of `members` that meet region `(r, end)`: those shorter
/// that hold it, then those inside it (itself included).
fn meeting(members: &BTreeSet<(u128, u8)>, r: u128, end: u32) -> Vec<(u128, u8)> {
    let mut out: Vec<(u128, u8)> = (0..end as u8).map(|l| (r & mask(l), l)).filter(|p| members.contains(p)).collect();
    let last = r | !mask(end as u8);
    out.extend(members.range((r, end as u8)..=(last, 128)).filter(|&&(_, l)| u32::from(l) >= end));
    out
}

impl Generation {
    fn open(dir: &Path, object: &ObjectMeta) -> Result<Option<Generation>> {
        let Some(tables) = Tables::open(dir, object)? else { return Ok(None) };
        let mut nodes = Vec::new();
        let mut tails = Vec::new();
        for slot in 0..tables.slots {
            for index in 0..1 << 16 {
                ipv6_table::subtree_parts(&tables, tables.entry(EntryAt::Root { slot, index }), &mut nodes, &mut tails);
            }
        }
        let mut used = [vec![false; tables.node_count as usize], vec![false; tables.tail_count as usize]];
        if tables.global.is_none() {
            // The roots are the first nodes of the map.
            used[0][..(tables.slots * ROOT_NODES) as usize].fill(true);
        }
        for (pool, parts) in [nodes, tails].into_iter().enumerate() {
            for i in parts {
                let slot = used[pool].get_mut(i as usize).ok_or_else(damaged)?;
                *slot = true;
            }
        }
        let free = used.map(|u| (0..u.len() as u32).rev().filter(|&i| !u[i as usize]).collect());
        Ok(Some(Generation { tables, free, freed: [Vec::new(), Vec::new()], waited: false }))
    }

    /// Whether `nodes` free nodes and `tails` free tails can be taken now
    /// (see `ipv4_edit`'s `reserve`).
    fn reserve(&mut self, nodes: usize, tails: usize) -> bool {
        let short = self.free[0].len() < nodes || self.free[1].len() < tails;
        if !self.waited || (short && self.freed.iter().any(|f| !f.is_empty())) {
            sys::wait_for_running_programs();
            self.waited = true;
            for (free, freed) in self.free.iter_mut().zip(&mut self.freed) {
                free.append(freed);
            }
        }
        self.free[0].len() >= nodes && self.free[1].len() >= tails
    }

    /// The change of prefix `(a, len)`: added without `members`, else
    /// removed, `members` what the set holds then.
    fn change(&mut self, slot: u32, members: Option<&BTreeSet<(u128, u8)>>, (a, len): (u128, u8)) -> Result<std::result::Result<(), NoRoom>> {
        let mut edits = Vec::new();
        let (mut nodes, mut tails) = (0, 0);
        for edited in ipv6_table::entries_to_edit(&self.tables, slot, a, len) {
            if self.tables.entry_at(edited.at).is_none() {
                return Err(damaged());
            }
            let (r, end) = edited.region;
            let held = match members {
                Some(members) => meeting(members, r, end),
                None => {
                    let mut held = vec![(a, len)];
                    ipv6_table::entry_prefixes(&self.tables, self.tables.entry(edited.at), (r, end), &mut held);
                    held
                }
            };
            let (entry, sub) = Ipv6Table::entry_of(held, end);
            nodes += sub.nodes.len();
            tails += sub.tails.len();
            edits.push((edited.at, entry, sub));
        }
        if !self.reserve(nodes, tails) {
            return Ok(Err(NoRoom));
        }
        for (at, entry, sub) in edits {
            let old = self.tables.entry(at);
            let nodes_at: Vec<u32> = sub.nodes.iter().map(|_| self.free[0].pop().expect("reserved")).collect();
            let tails_at: Vec<u32> = sub.tails.iter().map(|_| self.free[1].pop().expect("reserved")).collect();
            for (i, node) in sub.nodes.iter().enumerate() {
                let entries = node.map(|e| Ipv6Table::relocated(e, &nodes_at, &tails_at));
                self.tables.nodes.write(nodes_at[i] as usize * NODE_BYTES as usize, &ipv6_table::node_value(&entries, &sub.regions[i]));
            }
            for (tail, &at) in sub.tails.iter().zip(&tails_at) {
                self.tables.tails.write(at as usize * TAIL_BYTES as usize, &tail.bytes());
            }
            let entry = Ipv6Table::relocated(entry, &nodes_at, &tails_at);
            let mut gone = (Vec::new(), Vec::new());
            ipv6_table::subtree_parts(&self.tables, old, &mut gone.0, &mut gone.1);
            let (m, o) = self.tables.entry_at(at).ok_or_else(damaged)?;
            m.publish_u32(o, entry);
            // (A damaged entry may have led past the maps: not ours to give out.)
            let (node_count, tail_count) = (self.tables.node_count, self.tables.tail_count);
            self.freed[0].extend(gone.0.into_iter().filter(|&n| n < node_count && (self.tables.global.is_some() || n >= self.tables.slots * ROOT_NODES)));
            self.freed[1].extend(gone.1.into_iter().filter(|&t| t < tail_count));
        }
        Ok(Ok(()))
    }
}

fn damaged() -> RuntimeError {
    RuntimeError::Store("the IPv6 tables hold an entry past their maps: `xpol apply` the policy again to rebuild them".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The prefixes meeting a region: those holding it and those inside
    /// it, not those beside it.
    #[test]
    fn the_prefixes_meeting_a_region() {
        let p = |s: &str| {
            let (a, l) = s.split_once('/').unwrap();
            let l: u8 = l.parse().unwrap();
            (u128::from(a.parse::<std::net::Ipv6Addr>().unwrap()) & mask(l), l)
        };
        let members: BTreeSet<(u128, u8)> = ["::/0", "2001:db8::/32", "2001:db8:1::/48", "2001:db8:1:ffff::/64", "2001:db8:2::/48", "2001:db8:1::/40", "2001:db9::/32"].map(p).into_iter().collect();
        let (r, end) = p("2001:db8:1::/48");
        let mut got = meeting(&members, r, u32::from(end));
        got.sort_unstable();
        let mut want = ["::/0", "2001:db8::/32", "2001:db8::/40", "2001:db8:1::/48", "2001:db8:1:ffff::/64"].map(p).to_vec();
        want.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(meeting(&members, u128::MAX, 128), [p("::/0")]);
    }
}
