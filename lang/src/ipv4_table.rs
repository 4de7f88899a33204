//! How a named set of IPv4 prefixes is laid out for BPF: a three-level
//! table with strides 16, 8 and 8 bits, held in global data.
//!
//! Why not an LPM trie: `BPF_MAP_TYPE_LPM_TRIE` walks one node per prefix
//! bit in a helper call, and costs grow with the set (about 25 ns at 10
//! prefixes, 80 ns at 100,000 on the benchmark machine). A table in global
//! data is read with a plain load, one in an array map with a lookup the
//! verifier inlines, so membership costs at most three of them whatever the
//! size of the set.
//!
//! - `root`: 65,536 u32 entries, one per /16 (key: the top 16 bits).
//! - `mid`: chunks of 256 entries, one per /24 of a /16 that holds longer
//!   prefixes (key: chunk index; entry index: bits 8..16 of the address).
//!   Entries are u16 when every leaf index fits, else u32 ([`Ipv4Table::mid_wide`]).
//! - `leaf`: 256-bit bitmaps, one per /24 that holds prefixes longer than
//!   /24 (key: leaf index; bit: the low 8 bits of the address, bit `a & 7`
//!   of byte `a >> 3`).
//!
//! Entry values in `root` and `mid`: [`MISS`], [`HIT`] (every address below
//! is in the set), or `FIRST_CHILD + i`: look in chunk `i` of the next level.
//!
//! All the IPv4 sets of a policy share the three tables ([`Ipv4Table::concat`]):
//! set number `k` has root entries `65536 * k ..`, and the chunks of all
//! sets are pooled, so a policy pays at most three maps of the kernel's 64
//! per program whatever its number of sets. The tables that fit in
//! [`GLOBAL_DATA_BUDGET`] are global data (the `.bss` map, see
//! `meta::IPV4_TABLES_MAP`), read with plain loads; the others are array
//! maps ([`placement`]).
//!
//! The compiler builds the tables to size them; the runtime builds them
//! again from the same elements, or from the new elements of a set it
//! changes, to fill them. Both use [`Ipv4Table::build`] and
//! [`Ipv4Table::concat`]. A set the runtime may change gets more chunks
//! than its initial prefixes use ([`growable_chunks`]); the capacities
//! are in the metadata, and the runtime fills within them.

pub const MISS: u32 = 0;
pub const HIT: u32 = 1;
pub const FIRST_CHILD: u32 = 2;
pub const ROOT_ENTRIES: u32 = 1 << 16;
/// Bytes of one leaf bitmap.
pub const LEAF_BYTES: u32 = 32;

/// The most bytes of tables kept in global data. Older kernels (Debian
/// bookworm's 6.1 among them) refuse an array map value over
/// `KMALLOC_MAX_SIZE`, 4 MiB; tables past this budget stay array maps.
pub const GLOBAL_DATA_BUDGET: u64 = 4 << 20;

/// Where one of the three tables lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// In global data (the `.bss` map's one value) at this byte offset:
    /// read with a plain load.
    Global { offset: u64 },
    /// In an array map of its own, one chunk per entry: read with an
    /// (inlined) map lookup.
    Map,
}

/// Where the root, mid and leaf tables of these capacities (root entries,
/// mid and leaf chunks) go: in global data while they fit in
/// [`GLOBAL_DATA_BUDGET`], in that order (each at an offset rounded up to
/// 8), else in array maps; and the size of the global-data value. The
/// compiler lays the tables out with it, the runtime fills them with it.
pub fn placement(root_entries: u64, mid_chunks: u64, leaf_chunks: u64, mid_wide: bool) -> ([Placement; 3], u64) {
    let sizes = [4 * root_entries, u64::from(Ipv4Table::mid_chunk_bytes(mid_wide)) * mid_chunks, u64::from(LEAF_BYTES) * leaf_chunks];
    let mut places = [Placement::Map; 3];
    let mut at = 0u64;
    for (place, size) in places.iter_mut().zip(sizes) {
        if at + size <= GLOBAL_DATA_BUDGET {
            *place = Placement::Global { offset: at };
            at += size.div_ceil(8) * 8;
        }
    }
    (places, at)
}

/// Fewest `mid` and `leaf` chunks reserved for a set the runtime may
/// change (within its capacity), however few chunks its initial prefixes
/// use (none when they are all /16 or shorter): 8 KiB and 2 KiB of tables.
pub const MIN_MID_CHUNKS: u64 = 16;
pub const MIN_LEAF_CHUNKS: u64 = 64;

/// The `mid` and `leaf` chunks to reserve for a set that the runtime may
/// change (`set`), whose initial IPv4 prefixes (`initial` of them) fill
/// `table`, and that may hold up to `capacity` elements.
///
/// A capacity the user declared (`max N`) is a promise: any N prefixes
/// fit, so each level gets a chunk per element (a prefix adds at most one
/// chunk per level), `mid` at most 65,536 (one per /16). The default room
/// is an estimate instead: the chunks the initial prefixes use, scaled by
/// `capacity / initial`, new prefixes assumed to spread over /16s and /24s
/// as the initial ones do (without any initial IPv4 prefix, a chunk per
/// element). Either way at least [`MIN_MID_CHUNKS`] and
/// [`MIN_LEAF_CHUNKS`], at most one chunk per element, and never fewer
/// than the initial prefixes use. The compiler sizes the tables with it
/// and records the sums in the metadata, where the runtime reads them.
pub fn growable_chunks(table: &Ipv4Table, initial: u64, capacity: u64, declared: bool) -> (u64, u64) {
    let grow = |used: usize, min: u64, max: u64| {
        let used = used as u64;
        let scaled = if initial == 0 || declared {
            capacity
        } else {
            (u128::from(used) * u128::from(capacity)).div_ceil(u128::from(initial)).min(u128::from(u64::MAX)) as u64
        };
        scaled.max(min).min(max).max(used)
    };
    (grow(table.mid.len(), MIN_MID_CHUNKS, capacity.min(u64::from(ROOT_ENTRIES))), grow(table.leaf.len(), MIN_LEAF_CHUNKS, capacity))
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ipv4Table {
    pub root: Vec<u32>,
    pub mid: Vec<[u32; 256]>,
    pub leaf: Vec<[u8; LEAF_BYTES as usize]>,
}

impl Ipv4Table {
    /// Builds the table of a set of prefixes (`(address, length)`, address
    /// in host order; bits past the length are ignored).
    pub fn build(prefixes: impl IntoIterator<Item = (u32, u8)>) -> Ipv4Table {
        let mut sorted: Vec<(u32, u8)> = prefixes.into_iter().map(|(a, len)| (a & mask(len), len.min(32))).collect();
        // Shorter prefixes first: a longer prefix inside a covered range
        // then needs no chunk, and no chunk is ever orphaned.
        sorted.sort_unstable_by_key(|&(a, len)| (len, a));
        sorted.dedup();
        let mut t = Ipv4Table { root: vec![MISS; ROOT_ENTRIES as usize], mid: Vec::new(), leaf: Vec::new() };
        for (a, len) in sorted {
            let hi = (a >> 16) as usize;
            if len <= 16 {
                let n = 1usize << (16 - len);
                t.root[hi..hi + n].fill(HIT);
                continue;
            }
            let mid = match t.root[hi] {
                HIT => continue,
                MISS => {
                    t.mid.push([MISS; 256]);
                    t.root[hi] = FIRST_CHILD + t.mid.len() as u32 - 1;
                    t.mid.len() - 1
                }
                child => (child - FIRST_CHILD) as usize,
            };
            let m = ((a >> 8) & 0xff) as usize;
            if len <= 24 {
                let n = 1usize << (24 - len);
                t.mid[mid][m..m + n].fill(HIT);
                continue;
            }
            let leaf = match t.mid[mid][m] {
                HIT => continue,
                MISS => {
                    t.leaf.push([0; LEAF_BYTES as usize]);
                    t.mid[mid][m] = FIRST_CHILD + t.leaf.len() as u32 - 1;
                    t.leaf.len() - 1
                }
                child => (child - FIRST_CHILD) as usize,
            };
            let lo = (a & 0xff) as usize;
            for bit in lo..lo + (1usize << (32 - len)) {
                t.leaf[leaf][bit >> 3] |= 1 << (bit & 7);
            }
        }
        t
    }

    /// The tables of several sets as one: roots one after the other,
    /// chunks pooled, child indices shifted to match.
    pub fn concat(tables: &[Ipv4Table]) -> Ipv4Table {
        let mut out = Ipv4Table::default();
        for t in tables {
            let (mid_base, leaf_base) = (out.mid.len() as u32, out.leaf.len() as u32);
            let shift = |e: u32, base: u32| if e >= FIRST_CHILD { e + base } else { e };
            out.root.extend(t.root.iter().map(|&e| shift(e, mid_base)));
            out.mid.extend(t.mid.iter().map(|c| c.map(|e| shift(e, leaf_base))));
            out.leaf.extend_from_slice(&t.leaf);
        }
        out
    }

    /// How many chunks of the next levels a set's lookup may visit: 1 (root
    /// only), 2 (and mid) or 3.
    pub fn levels(&self) -> u32 {
        if !self.leaf.is_empty() {
            3
        } else if !self.mid.is_empty() {
            2
        } else {
            1
        }
    }

    /// Whether `mid` entries need 32 bits (more leaves than a u16 can index).
    pub fn mid_wide(&self) -> bool {
        Self::mid_wide_for(self.leaf.len() as u64)
    }

    /// Whether `mid` entries need 32 bits to index `leaf_chunks` leaves.
    pub fn mid_wide_for(leaf_chunks: u64) -> bool {
        leaf_chunks + FIRST_CHILD as u64 > u16::MAX as u64
    }

    /// Bytes of one `mid` chunk as stored in the map.
    pub fn mid_chunk_bytes(wide: bool) -> u32 {
        if wide {
            256 * 4
        } else {
            256 * 2
        }
    }

    /// One `mid` chunk encoded as the map value (little-endian entries).
    pub fn mid_value(&self, chunk: usize, wide: bool) -> Vec<u8> {
        let c = &self.mid[chunk];
        if wide {
            c.iter().flat_map(|e| e.to_le_bytes()).collect()
        } else {
            c.iter().flat_map(|&e| (e as u16).to_le_bytes()).collect()
        }
    }

    /// Membership, walking the table as the generated code does.
    pub fn contains(&self, addr: u32) -> bool {
        self.contains_in(0, addr)
    }

    /// Membership in set number `slot` of a concatenated table.
    pub fn contains_in(&self, slot: usize, addr: u32) -> bool {
        let mut e = self.root[slot * ROOT_ENTRIES as usize + (addr >> 16) as usize];
        if e >= FIRST_CHILD {
            e = self.mid[(e - FIRST_CHILD) as usize][((addr >> 8) & 0xff) as usize];
            if e >= FIRST_CHILD {
                let leaf = &self.leaf[(e - FIRST_CHILD) as usize];
                let bit = (addr & 0xff) as usize;
                return leaf[bit >> 3] & (1 << (bit & 7)) != 0;
            }
        }
        e == HIT
    }
}

/// The netmask of a prefix of `len` bits (at most 32), in host order.
pub fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len.min(32) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(prefixes: &[(u32, u8)], a: u32) -> bool {
        prefixes.iter().any(|&(p, len)| a & mask(len) == p & mask(len))
    }

    #[test]
    fn agrees_with_prefix_matching() {
        // A deterministic mix of lengths, nested and overlapping prefixes.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut prefixes = vec![(0xc6120000, 15), (0xc6120100, 24), (0xc6120180, 25), (0x0a000001, 32), (0x0a000000, 8)];
        for _ in 0..2000 {
            let r = next();
            let base = 0xc6000000 | (r as u32 & 0x00ffffff);
            prefixes.push((base, 14 + (r >> 40) as u8 % 19));
        }
        let t = Ipv4Table::build(prefixes.iter().copied());
        for _ in 0..100_000 {
            let r = next();
            let a = if r & 1 == 0 { 0xc6000000 | (r >> 8) as u32 & 0x00ffffff } else { (r >> 8) as u32 };
            assert_eq!(t.contains(a), naive(&prefixes, a), "{a:#x}");
        }
        for &(p, len) in &prefixes {
            assert!(t.contains(p) && t.contains(p | !mask(len)));
        }
        assert!(!t.mid_wide());
    }

    #[test]
    fn concatenated_tables_keep_each_set() {
        let sets = [vec![(0x0a000000, 8)], vec![(0xc6336407, 32), (0xc6120000, 20)], vec![], vec![(0xc6336400, 24), (0x01020304, 32)]];
        let tables: Vec<Ipv4Table> = sets.iter().map(|s| Ipv4Table::build(s.iter().copied())).collect();
        let all = Ipv4Table::concat(&tables);
        assert_eq!(all.root.len(), 4 * ROOT_ENTRIES as usize);
        for (k, t) in tables.iter().enumerate() {
            for a in [0x0a000001u32, 0xc6336407, 0xc6336406, 0xc6120fff, 0xc6121000, 0x01020304, 0x01020305, 0xc63364ff] {
                assert_eq!(all.contains_in(k, a), t.contains(a), "set {k}, {a:#x}");
            }
        }
        assert_eq!([tables[0].levels(), tables[1].levels(), tables[2].levels(), tables[3].levels()], [1, 3, 1, 3]);
    }

    #[test]
    fn shapes() {
        assert_eq!(Ipv4Table::build([]).mid.len(), 0);
        let t = Ipv4Table::build([(0, 0)]);
        assert!(t.root.iter().all(|&e| e == HIT) && t.mid.is_empty());
        let t = Ipv4Table::build([(0xc6336407, 32), (0xc6336400, 24)]);
        assert_eq!((t.mid.len(), t.leaf.len()), (1, 0), "the /32 lies inside the /24");
        let t = Ipv4Table::build([(0xc6336407, 32)]);
        assert_eq!((t.mid.len(), t.leaf.len()), (1, 1));
        assert_eq!(t.mid_value(0, false).len(), 512);
        assert!(t.contains(0xc6336407) && !t.contains(0xc6336406));
    }

    #[test]
    fn growable_sets_get_room_in_proportion() {
        // No IPv4 prefix yet: a chunk per element.
        assert_eq!(growable_chunks(&Ipv4Table::build([]), 0, 1024, false), (1024, 1024));
        assert_eq!(growable_chunks(&Ipv4Table::build([]), 0, 100_000, false), (65_536, 100_000));
        // Prefixes of /16 or shorter use no chunk: the minimums, within the capacity.
        let short = Ipv4Table::build([(0x0a000000, 8)]);
        assert_eq!(growable_chunks(&short, 1, 1024, false), (MIN_MID_CHUNKS, MIN_LEAF_CHUNKS));
        assert_eq!(growable_chunks(&short, 1, 10, false), (10, 10));
        // Two /32s in one /24: one chunk of each, scaled by 1000 / 2.
        let t = Ipv4Table::build([(0xc6336407, 32), (0xc6336408, 32)]);
        assert_eq!(growable_chunks(&t, 2, 1000, false), (500, 500));
        // Capped at one mid chunk per /16, and never below what is used.
        let many = Ipv4Table::build((0..3000u32).map(|i| (i << 16 | 0x0101, 32)));
        assert_eq!(growable_chunks(&many, 3000, 200_000, false), (65_536, 200_000));
        assert_eq!(growable_chunks(&many, 3000, 1, false), (3000, 3000));
        // A declared capacity is a promise: any N prefixes fit, whatever the initial ones.
        assert_eq!(growable_chunks(&short, 1, 200_000, true), (65_536, 200_000));
        assert_eq!(growable_chunks(&t, 2, 1000, true), (1000, 1000));
    }

    #[test]
    fn placement_keeps_global_data_under_the_budget() {
        use Placement::*;
        // One set, small: all three in global data, 8-byte aligned.
        let (p, total) = placement(65536, 3, 1, false);
        assert_eq!(p, [Global { offset: 0 }, Global { offset: 262_144 }, Global { offset: 262_144 + 1536 }]);
        assert_eq!(total, 262_144 + 1536 + 32);
        // A big mid table goes to a map; the leaves still fit after the root.
        let (p, total) = placement(65536, 60_000, 40_000, false);
        assert_eq!(p, [Global { offset: 0 }, Map, Global { offset: 262_144 }]);
        assert_eq!(total, 262_144 + 40_000 * 32);
        // Seventeen sets: the root alone is over 4 MiB.
        let (p, _) = placement(17 * 65536, 1, 1, true);
        assert_eq!(p[0], Map);
        assert!(p.iter().all(|p| match p {
            Global { offset } => *offset < GLOBAL_DATA_BUDGET,
            Map => true,
        }));
    }
}
