//! Changing one IPv4 set's prefix tables in place, while programs read
//! them: what makes `xpol set NAME SET add 192.0.2.7` cost microseconds
//! instead of a reload.
//!
//! The tables (`xpol_lang::ipv4_table`) answer for an address with at most
//! three reads: its /16's root entry, then maybe an entry of a `mid` chunk,
//! then maybe a bit of a `leaf` chunk. Every address depends on exactly one
//! root entry, so a change is made copy on write, one /16 at a time: the
//! /16's new `mid` chunk and changed leaves are written into free chunks
//! (no program reads them), then its root entry, one aligned u32 in the
//! mappable global-data map, is stored in one go. A packet reads the old
//! root entry and the old chunks, or the new entry and the new chunks:
//! its verdict is one the set gave before or after the change.
//!
//! The chunks the old entry led to are freed, but a program that read the
//! old entry may still be reading them: they are used again only after
//! [`sys::wait_for_running_programs`]. A process waits once before it
//! first uses a chunk it found free (a writer before it may have died
//! before waiting), then whenever it runs short of chunks and has freed
//! some. A change reserves every chunk it needs before its first root
//! store, so that running short never leaves a change half made.
//!
//! Architecture invariant: only chunks that no root entry leads to are
//! written, and a root entry is only ever written by
//! [`MappedValue::publish_u32`], after the chunks it leads to.

use crate::loader::{Ipv4Shape, RuntimeError};
use crate::sys::{self, MappedValue};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use xpol_lang::ipv4_table::{self, mask, Ipv4Table, Placement, FIRST_CHILD, HIT, LEAF_BYTES, MISS, ROOT_ENTRIES};
use xpol_lang::meta::{self, SetMeta};

type Result<T> = std::result::Result<T, RuntimeError>;

const LEAF: usize = LEAF_BYTES as usize;
const ROOT_LEVEL: usize = 0;
const MID_LEVEL: usize = 1;
const LEAF_LEVEL: usize = 2;

/// The addresses of one /24 in the set: none, all, or those of a leaf
/// bitmap (bit `a & 7` of byte `a >> 3`), with the leaf chunk that holds
/// it when it is unchanged since it was read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Slash24 {
    Miss,
    Hit,
    Leaf { bits: [u8; LEAF], chunk: Option<u32> },
}

/// The addresses of one /16 in the set.
#[derive(Clone, PartialEq, Eq, Debug)]
enum Slash16 {
    Miss,
    Hit,
    Mid(Box<[Slash24; 256]>),
}

/// Whether prefix `(addr, len)` has addresses in /16 number `hi`.
fn touches(addr: u32, len: u8, hi: u32) -> bool {
    if len <= 16 {
        (hi << 16) & mask(len) == addr & mask(len)
    } else {
        addr >> 16 == hi
    }
}

impl Slash24 {
    /// Makes every address of `(addr, len)` (a prefix longer than /24
    /// inside this /24) a member or not.
    fn paint(&mut self, addr: u32, len: u8, member: bool) {
        let (mut bits, chunk) = match *self {
            Slash24::Miss => ([0u8; LEAF], None),
            Slash24::Hit => ([0xff; LEAF], None),
            Slash24::Leaf { bits, chunk } => (bits, chunk),
        };
        let before = bits;
        let start = (addr & 0xff) as usize;
        for a in start..start + (1usize << (32 - len)) {
            if member {
                bits[a >> 3] |= 1 << (a & 7);
            } else {
                bits[a >> 3] &= !(1 << (a & 7));
            }
        }
        *self = if bits == [0; LEAF] {
            Slash24::Miss
        } else if bits == [0xff; LEAF] {
            Slash24::Hit
        } else {
            Slash24::Leaf { bits, chunk: if bits == before { chunk } else { None } }
        };
    }
}

impl Slash16 {
    /// Makes every address of `(addr, len)` that lies in this /16 a member
    /// or not; the caller passes only prefixes that touch it ([`touches`]).
    fn paint(&mut self, addr: u32, len: u8, member: bool) {
        let whole = if member { Slash16::Hit } else { Slash16::Miss };
        if len <= 16 {
            *self = whole;
            return;
        }
        if let Slash16::Miss | Slash16::Hit = self {
            let fill = if *self == Slash16::Hit { Slash24::Hit } else { Slash24::Miss };
            *self = Slash16::Mid(Box::new([fill; 256]));
        }
        let Slash16::Mid(entries) = self else { unreachable!("expanded above") };
        let m = ((addr >> 8) & 0xff) as usize;
        if len <= 24 {
            entries[m..m + (1usize << (24 - len))].fill(if member { Slash24::Hit } else { Slash24::Miss });
        } else {
            entries[m].paint(addr, len, member);
        }
        // Fewest chunks: a /16 that is all or nothing needs none.
        if entries.iter().all(|e| *e == Slash24::Miss) {
            *self = Slash16::Miss;
        } else if entries.iter().all(|e| *e == Slash24::Hit) {
            *self = Slash16::Hit;
        }
    }
}

/// Where one of the three tables is mapped: chunk `i` at
/// `offset + i * stride` of mapping `map`.
struct Level {
    map: usize,
    offset: usize,
    stride: usize,
}

/// The shared IPv4 tables of a generation, mapped for writing.
struct Tables {
    /// The global-data map, the array maps, as the levels need them.
    mapped: Vec<MappedValue>,
    levels: [Level; 3],
    chunk_bytes: [usize; 3],
    /// Root entries, mid chunks, leaf chunks.
    capacities: [u64; 3],
    mid_wide: bool,
}

impl Tables {
    /// The tables of the generation in `dir`, or `None` when they cannot
    /// be changed in place: the generation was applied by an xpol that did
    /// not make them mappable.
    fn open(dir: &Path, set: &SetMeta) -> Result<Option<Tables>> {
        let shape = Ipv4Shape::of(set)?;
        let [root, mid, leaf] = shape.capacities;
        let (places, global_bytes) = ipv4_table::placement(root, mid, leaf, shape.mid_wide);
        let chunk_bytes = [4, Ipv4Table::mid_chunk_bytes(shape.mid_wide) as usize, LEAF];
        let mut mapped = Vec::new();
        let mut global = None;
        let mut levels = Vec::new();
        for (((place, map), bytes), capacity) in places.iter().zip(shape.maps).zip(chunk_bytes).zip(shape.capacities) {
            let (file, entries, value, len, offset, stride) = match place {
                Placement::Global { offset } => {
                    if let Some(at) = global {
                        levels.push(Level { map: at, offset: *offset as usize, stride: bytes });
                        continue;
                    }
                    (meta::IPV4_TABLES_MAP, 1, None, global_bytes as usize, *offset as usize, bytes)
                }
                // An array map's values are 8-aligned.
                Placement::Map => (map, capacity, Some(bytes as u32), bytes.next_multiple_of(8) * capacity as usize, 0, bytes.next_multiple_of(8)),
            };
            let path = dir.join(crate::loader::pin_file(file));
            let Ok(fd) = sys::obj_get(&path, 0) else { return Ok(None) };
            let (_, key_size, value_size, max_entries) = sys::map_shape(fd.as_fd()).map_err(|e| RuntimeError::Store(format!("{}: {e}", path.display())))?;
            let fits = value.map_or(u64::from(value_size) >= global_bytes, |v| v == value_size);
            if key_size != 4 || u64::from(max_entries) != entries || !fits {
                return Err(RuntimeError::Store(format!("{}: not the policy's IPv4 table", path.display())));
            }
            let Ok(m) = MappedValue::map(fd.as_fd(), len) else { return Ok(None) };
            if matches!(place, Placement::Global { .. }) {
                global = Some(mapped.len());
            }
            levels.push(Level { map: mapped.len(), offset, stride });
            mapped.push(m);
        }
        let levels = levels.try_into().unwrap_or_else(|_| unreachable!("three levels"));
        Ok(Some(Tables { mapped, levels, chunk_bytes, capacities: shape.capacities, mid_wide: shape.mid_wide }))
    }

    /// The mapping and byte offset of chunk `index` of `level`.
    fn at(&self, level: usize, index: u32) -> (&MappedValue, usize) {
        let l = &self.levels[level];
        (&self.mapped[l.map], l.offset + index as usize * l.stride)
    }

    fn read(&self, level: usize, index: u32, out: &mut [u8]) {
        debug_assert_eq!(out.len(), self.chunk_bytes[level]);
        let (m, at) = self.at(level, index);
        m.read(at, out);
    }

    /// Writes a chunk that no root entry leads to.
    fn write(&self, level: usize, index: u32, bytes: &[u8]) {
        let (m, at) = self.at(level, index);
        m.write(at, bytes);
    }

    fn root(&self, entry: u32) -> u32 {
        let mut word = [0u8; 4];
        self.read(ROOT_LEVEL, entry, &mut word);
        u32::from_le_bytes(word)
    }

    /// Points a root entry at what was written for it, in one store.
    fn publish_root(&self, entry: u32, value: u32) {
        let (m, at) = self.at(ROOT_LEVEL, entry);
        m.publish_u32(at, value);
    }

    fn mid_entries(&self, chunk: u32) -> [u32; 256] {
        let mut bytes = vec![0u8; self.chunk_bytes[MID_LEVEL]];
        self.read(MID_LEVEL, chunk, &mut bytes);
        let mut entries = [0u32; 256];
        if self.mid_wide {
            for (e, b) in entries.iter_mut().zip(bytes.chunks_exact(4)) {
                *e = u32::from_le_bytes(b.try_into().expect("4 bytes"));
            }
        } else {
            for (e, b) in entries.iter_mut().zip(bytes.chunks_exact(2)) {
                *e = u32::from(u16::from_le_bytes(b.try_into().expect("2 bytes")));
            }
        }
        entries
    }

    /// A child index read from a table, if it is one within the capacity.
    fn child(&self, entry: u32, level: usize) -> Option<u32> {
        (entry >= FIRST_CHILD && u64::from(entry - FIRST_CHILD) < self.capacities[level]).then(|| entry - FIRST_CHILD)
    }
}

/// Why a change could not be made in place: the caller reloads instead.
#[derive(Debug)]
pub(crate) struct NoRoom;

/// The mapped tables of one generation and their chunk allocator, shared
/// by every editor of this process on that generation (the store's lock
/// keeps other processes out): two editors with free lists of their own
/// would hand out the same chunk.
struct Generation {
    tables: Tables,
    /// Chunks of `mid` and `leaf` (index 0 and 1) no root entry leads to.
    free: [Vec<u32>; 2],
    /// Chunks stopped being used since the last grace period, perhaps
    /// still being read.
    freed: [Vec<u32>; 2],
    /// Whether a grace period has passed since the chunks were counted.
    waited: bool,
}

/// The generations this process has open for in-place edits, by directory.
static OPEN: Mutex<Vec<(PathBuf, Weak<Mutex<Generation>>)>> = Mutex::new(Vec::new());

/// Edits one set's slot of the shared tables of a generation; the store's
/// write lock must be held while it lives.
pub(crate) struct Ipv4Editor {
    generation: Arc<Mutex<Generation>>,
    slot: u32,
}

impl Ipv4Editor {
    /// The editor of `set`'s slot in the generation in `dir`, or `None`
    /// when its tables cannot be changed in place ([`Tables::open`]).
    pub(crate) fn open(dir: &Path, set: &SetMeta) -> Result<Option<Ipv4Editor>> {
        let Some(slot) = set.ipv4_slot else { return Ok(None) };
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|(_, g)| g.strong_count() > 0);
        let generation = match open.iter().find(|(d, _)| d == dir).and_then(|(_, g)| g.upgrade()) {
            Some(g) => g,
            None => {
                let Some(g) = Generation::open(dir, set)? else { return Ok(None) };
                let g = Arc::new(Mutex::new(g));
                open.push((dir.to_path_buf(), Arc::downgrade(&g)));
                g
            }
        };
        let capacity = generation.lock().unwrap_or_else(|e| e.into_inner()).tables.capacities[ROOT_LEVEL];
        if u64::from(slot + 1) * u64::from(ROOT_ENTRIES) > capacity {
            return Err(RuntimeError::BadMetadata(format!("set `{}` has an IPv4 slot past the tables", set.name)));
        }
        Ok(Some(Ipv4Editor { generation, slot }))
    }

    /// Makes the addresses of prefix `(addr, len)` members (`member`) or
    /// not, then members again those of `keep` (prefixes inside it that
    /// stay in the set). `Err(NoRoom)` inside `Ok`: not enough free chunks
    /// for the whole change, found before any of it was made; the caller
    /// reloads the set instead.
    pub(crate) fn paint(&self, addr: u32, len: u8, member: bool, keep: &[(u32, u8)]) -> Result<std::result::Result<(), NoRoom>> {
        self.generation.lock().unwrap_or_else(|e| e.into_inner()).paint(self.slot, addr, len, member, keep)
    }
}

impl Generation {
    fn open(dir: &Path, set: &SetMeta) -> Result<Option<Generation>> {
        let Some(tables) = Tables::open(dir, set)? else { return Ok(None) };
        // Every chunk some root entry leads to, of every set's slot.
        let mut used = [vec![false; tables.capacities[MID_LEVEL] as usize], vec![false; tables.capacities[LEAF_LEVEL] as usize]];
        for entry in 0..tables.capacities[ROOT_LEVEL] as u32 {
            let Some(mid) = tables.child(tables.root(entry), MID_LEVEL) else { continue };
            if std::mem::replace(&mut used[0][mid as usize], true) {
                continue;
            }
            for e in tables.mid_entries(mid) {
                if let Some(leaf) = tables.child(e, LEAF_LEVEL) {
                    used[1][leaf as usize] = true;
                }
            }
        }
        // Lowest chunks first (popped from the end).
        let free = used.map(|u| (0..u.len() as u32).rev().filter(|&i| !u[i as usize]).collect());
        Ok(Some(Generation { tables, free, freed: [Vec::new(), Vec::new()], waited: false }))
    }

    /// Whether `mids` and `leaves` free chunks can be taken now, waiting
    /// for running programs first when that is what frees them: chunks
    /// freed here, and, once, those found free at opening (a writer before
    /// this process may have died before its own wait).
    fn reserve(&mut self, mids: usize, leaves: usize) -> bool {
        let short = self.free[0].len() < mids || self.free[1].len() < leaves;
        if !self.waited || (short && self.freed.iter().any(|f| !f.is_empty())) {
            sys::wait_for_running_programs();
            self.waited = true;
            for (free, freed) in self.free.iter_mut().zip(&mut self.freed) {
                free.append(freed);
            }
        }
        self.free[0].len() >= mids && self.free[1].len() >= leaves
    }

    /// A chunk [`Generation::reserve`] made sure of.
    fn take(&mut self, pool: usize) -> u32 {
        self.free[pool].pop().expect("reserved before the change")
    }

    /// What /16 `hi` of slot `slot` holds, and the chunks it uses.
    fn read(&self, slot: u32, hi: u32) -> Result<(Slash16, Vec<(usize, u32)>)> {
        let entry = self.tables.root(slot * ROOT_ENTRIES + hi);
        let mut chunks = Vec::new();
        let s = match entry {
            MISS => Slash16::Miss,
            HIT => Slash16::Hit,
            e => {
                let mid = self.tables.child(e, MID_LEVEL).ok_or_else(|| bad_entry(hi))?;
                chunks.push((0, mid));
                let mut entries = Box::new([Slash24::Miss; 256]);
                for (slot, e) in entries.iter_mut().zip(self.tables.mid_entries(mid)) {
                    *slot = match e {
                        MISS => Slash24::Miss,
                        HIT => Slash24::Hit,
                        e => {
                            let leaf = self.tables.child(e, LEAF_LEVEL).ok_or_else(|| bad_entry(hi))?;
                            chunks.push((1, leaf));
                            let mut bits = [0u8; LEAF];
                            self.tables.read(LEAF_LEVEL, leaf, &mut bits);
                            Slash24::Leaf { bits, chunk: Some(leaf) }
                        }
                    };
                }
                Slash16::Mid(entries)
            }
        };
        Ok((s, chunks))
    }

    /// See [`Ipv4Editor::paint`]. Every /16's new contents are worked out
    /// and the chunks they need reserved before the first root store: a
    /// shortage midway would leave the set neither old nor new.
    fn paint(&mut self, slot: u32, addr: u32, len: u8, member: bool, keep: &[(u32, u8)]) -> Result<std::result::Result<(), NoRoom>> {
        let addr = addr & mask(len);
        let first = addr >> 16;
        let count = if len >= 16 { 1 } else { 1u32 << (16 - len) };
        let mut changes = Vec::new();
        let (mut mids, mut leaves) = (0, 0);
        for hi in first..first + count {
            let (old, chunks) = self.read(slot, hi)?;
            let mut new = old.clone();
            new.paint(addr, len, member);
            for &(a, l) in keep.iter().filter(|&&(a, l)| touches(a, l, hi)) {
                new.paint(a, l, true);
            }
            if new == old {
                continue;
            }
            if let Slash16::Mid(entries) = &new {
                mids += 1;
                leaves += entries.iter().filter(|e| matches!(e, Slash24::Leaf { chunk: None, .. })).count();
            }
            changes.push((hi, new, chunks));
        }
        if !self.reserve(mids, leaves) {
            return Ok(Err(NoRoom));
        }
        for (hi, new, chunks) in changes {
            self.publish(slot, hi, &new, &chunks)?;
        }
        Ok(Ok(()))
    }

    /// Writes `new` into reserved free chunks, then points /16 `hi`'s root
    /// entry at it, then frees the `old` chunks it no longer uses.
    fn publish(&mut self, slot: u32, hi: u32, new: &Slash16, old: &[(usize, u32)]) -> Result<()> {
        let root = self.write_chunks(new)?;
        self.tables.publish_root(slot * ROOT_ENTRIES + hi, root);
        let kept: Vec<u32> = match new {
            Slash16::Mid(entries) => entries.iter().filter_map(|e| if let Slash24::Leaf { chunk: Some(c), .. } = e { Some(*c) } else { None }).collect(),
            _ => Vec::new(),
        };
        for &(pool, chunk) in old {
            if !(pool == 1 && kept.contains(&chunk)) {
                self.freed[pool].push(chunk);
            }
        }
        Ok(())
    }

    /// Writes the chunks of `new` (those not already in place) into
    /// reserved free chunks; its root entry.
    fn write_chunks(&mut self, new: &Slash16) -> Result<u32> {
        let entries = match new {
            Slash16::Miss => return Ok(MISS),
            Slash16::Hit => return Ok(HIT),
            Slash16::Mid(entries) => entries,
        };
        let mut values = [MISS; 256];
        for (value, e) in values.iter_mut().zip(entries.iter()) {
            *value = match *e {
                Slash24::Miss => MISS,
                Slash24::Hit => HIT,
                Slash24::Leaf { chunk: Some(c), .. } => FIRST_CHILD + c,
                Slash24::Leaf { bits, chunk: None } => {
                    let leaf = self.take(1);
                    self.tables.write(LEAF_LEVEL, leaf, &bits);
                    FIRST_CHILD + leaf
                }
            };
        }
        let mid = self.take(0);
        let bytes: Vec<u8> = if self.tables.mid_wide {
            values.iter().flat_map(|v| v.to_le_bytes()).collect()
        } else {
            // The compiler made entries u16 only when every leaf index fits.
            let narrow: Option<Vec<u16>> = values.iter().map(|&v| u16::try_from(v).ok()).collect();
            narrow.ok_or_else(|| bad_entry(0))?.iter().flat_map(|v| v.to_le_bytes()).collect()
        };
        self.tables.write(MID_LEVEL, mid, &bytes);
        Ok(FIRST_CHILD + mid)
    }
}

fn bad_entry(hi: u32) -> RuntimeError {
    RuntimeError::Store(format!("the IPv4 tables hold an entry past their chunks (at /16 number {hi}): `xpol apply` the policy again to rebuild them"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Membership of `a` in a /16 model.
    fn holds(s: &Slash16, a: u32) -> bool {
        match s {
            Slash16::Miss => false,
            Slash16::Hit => true,
            Slash16::Mid(e) => match e[((a >> 8) & 0xff) as usize] {
                Slash24::Miss => false,
                Slash24::Hit => true,
                Slash24::Leaf { bits, .. } => bits[((a & 0xff) >> 3) as usize] & (1 << (a & 7)) != 0,
            },
        }
    }

    /// Painting prefixes in and out of a /16 gives the membership of the
    /// table built from the prefixes left, on every address.
    #[test]
    fn painting_matches_a_table_built_from_scratch() {
        let hi = 0xc633u32; // 198.51.0.0/16
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut members: Vec<(u32, u8)> = Vec::new();
        let mut s = Slash16::Miss;
        for step in 0..400 {
            let len = [12u8, 16, 18, 23, 24, 25, 27, 30, 31, 32][(next() % 10) as usize];
            let a = ((hi << 16) | (next() as u32 & 0xffff)) & mask(len);
            if next() % 3 == 0 && !members.is_empty() {
                let (a, len) = members.remove((next() % members.len() as u64) as usize);
                let keep: Vec<(u32, u8)> = members.iter().copied().filter(|&(b, l)| l > len && b & mask(len) == a).collect();
                let covered = members.iter().any(|&(b, l)| l <= len && a & mask(l) == b);
                if !covered {
                    s.paint(a, len, false);
                    for (b, l) in keep {
                        s.paint(b, l, true);
                    }
                }
            } else if !members.contains(&(a, len)) {
                members.push((a, len));
                s.paint(a, len, true);
            }
            let table = Ipv4Table::build(members.iter().copied());
            for low in 0..=0xffffu32 {
                let a = (hi << 16) | low;
                assert_eq!(holds(&s, a), table.contains(a), "step {step}, address {}", std::net::Ipv4Addr::from(a));
            }
        }
    }

    #[test]
    fn a_prefix_touches_the_slash16s_it_covers() {
        assert!(touches(0x0a00_0000, 8, 0x0a00));
        assert!(touches(0x0a00_0000, 8, 0x0aff));
        assert!(!touches(0x0a00_0000, 8, 0x0b00));
        assert!(touches(0x0a01_0200, 24, 0x0a01));
        assert!(!touches(0x0a01_0200, 24, 0x0a02));
    }
}
