//! How the IPv6 prefixes of the named sets are laid out for BPF: one
//! leaf-pushed multibit trie per set, strides 16 then 8 bits, its nodes in
//! one array map shared by every IPv6 set of the policy.
//!
//! Why not an LPM trie (what IPv6 sets were before): `BPF_MAP_TYPE_LPM_TRIE`
//! walks a node per prefix bit in a helper call, 50 to 110 ns on the
//! ref-fw6 benchmark, where xpol's IPv4 tables cost a few ns. Here a
//! lookup reads at most 15 nodes, each with an array lookup the verifier
//! inlines (a bounds check and an add), and most stop after a few: below a
//! node, a region holding a single prefix is a *tail*, one compare of the
//! address with that prefix, instead of a chain of nodes one per 8 bits;
//! and a node whose prefixes all share more bits than its place says
//! starts past them (path compression: 2001:db8::/32 is one step from
//! the root, not three). The bits skipped are checked once, where the walk
//! ends on a hit: the node's region must hold the address. (A walk that
//! took a skip for an address outside the region can only end on a miss,
//! which is right, or on a hit or a tail in the region, which the checks
//! turn into the miss it should be: nothing outside a node's region but
//! inside its parent's entry is in the set.)
//!
//! - `nodes` (`BPF_MAP_TYPE_ARRAY`, key u32, value [`NODE_BYTES`]: 256 u32
//!   entries, then the node's region as four little-endian u64, address
//!   high and low, mask high and low): set number `k`'s root is nodes
//!   `256 k .. 256 k + 256`, read at node `256 k + (a >> 120)`, entry
//!   `(a >> 112) & 0xff` (the top 16 bits; its region is everything);
//!   every other node covers the 8 bits after its depth.
//! - `tails` (`BPF_MAP_TYPE_ARRAY`, key u32, value 32 bytes: the prefix's
//!   high and low 64 bits and their masks, each a little-endian u64 of the
//!   address in host order): the one prefix of a region.
//!
//! Entries: [`MISS`], [`HIT`] (every address below is in the set: prefixes
//! are pushed to the leaves, and membership does not care which prefix
//! holds), [`TAIL`]` | i` (in the set when it matches tail `i`), or
//! [`INLINE`] bits, `FIRST_CHILD + (i << 4 | d / 8)`, maybe with [`WIDE`] (go on in node
//! `i`, at depth `d`: the entry says the depth, so that the walk need not
//! read it from the node before it can index it).
//!
//! The compiler builds the table of a set's initial prefixes to size the
//! maps; the runtime builds all the sets' tables again from their elements
//! ([`Ipv6Table::concat`]) and sizes the maps to them before loading, so a
//! set the runtime changes (by reloading it) never runs out of nodes.

pub const MISS: u32 = 0;
pub const HIT: u32 = 1;
pub const FIRST_CHILD: u32 = 2;
/// The bit of an entry that makes it a tail's index.
pub const TAIL: u32 = 1 << 31;
/// The two bits of an entry that make it an *inline tail*: the one prefix
/// of the entry's region ends at most [`INLINE_MAX`] bits below it, and
/// the entry holds those bits (`INLINE | delta << 24 | bits`, the `delta`
/// bits after the region's end): a compare with the address instead of a
/// read of a tail.
pub const INLINE: u32 = 3 << 30;
pub const INLINE_MAX: u32 = 24;
pub const NODE_ENTRIES: usize = 256;
/// Root nodes per set: 65,536 entries for the top 16 bits.
pub const ROOT_NODES: u32 = 256;
/// Bytes of a node (entries, then its region), and of a tail.
pub const NODE_BYTES: u32 = 4 * NODE_ENTRIES as u32 + 32;
/// Where a node's region starts in its bytes.
pub const REGION_AT: u32 = 4 * NODE_ENTRIES as u32;
pub const TAIL_BYTES: u32 = 32;
/// Nodes read at most: the root, then one per 8 bits from bit 16 to 128.
pub const LEVELS: usize = 15;

/// Bytes of a root node in global data: its entries alone (a root's
/// region is everything).
pub const ROOT_NODE_BYTES: u64 = 4 * NODE_ENTRIES as u64;

/// Where the IPv6 sets' roots (`slots` sets, [`ROOT_NODES`] nodes each)
/// go: in global data right after the IPv4 tables' share of it
/// (`ipv4_global_bytes`, what [`crate::ipv4_table::placement`] returns,
/// 0 without IPv4 tables) when they fit in
/// [`crate::ipv4_table::GLOBAL_DATA_BUDGET`], read there with a plain
/// load instead of a map lookup; else `None`, and they are read from the
/// nodes map like the others. The compiler lays the roots out with it,
/// the runtime fills them with it.
pub fn root_placement(ipv4_global_bytes: u64, slots: u64) -> Option<u64> {
    let at = ipv4_global_bytes.div_ceil(8) * 8;
    let bytes = slots * u64::from(ROOT_NODES) * ROOT_NODE_BYTES;
    (at + bytes <= crate::ipv4_table::GLOBAL_DATA_BUDGET).then_some(at)
}

/// The IPv6 tables in global data, after the IPv4 tables' share
/// (`ipv4_global_bytes`) and for `slots` sets: the roots' offset, the
/// wide nodes' offset, how many wide nodes there is room for (a power of
/// two, at most [`MAX_GLOBAL_WIDES`]), their regions' offset, and the end; `None` when
/// the roots do not fit.
pub fn global_layout(ipv4_global_bytes: u64, slots: u64) -> Option<GlobalLayout> {
    let roots = root_placement(ipv4_global_bytes, slots)?;
    let wides = roots + slots * u64::from(ROOT_NODES) * ROOT_NODE_BYTES;
    let room = crate::ipv4_table::GLOBAL_DATA_BUDGET - wides;
    // A power of two, so that the program bounds an index with a mask.
    let fit = (room / (WIDE_BYTES + u64::from(TAIL_BYTES))).min(MAX_GLOBAL_WIDES);
    let count = if fit == 0 { 0 } else { 1 << fit.ilog2() };
    let regions = wides + count * WIDE_BYTES;
    Some(GlobalLayout { roots, wides, count, regions, end: regions + count * u64::from(TAIL_BYTES) })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobalLayout {
    pub roots: u64,
    pub wides: u64,
    pub count: u64,
    pub regions: u64,
    pub end: u64,
}

/// The IPv6 tables' part of global data, from the roots' offset to the
/// layout's end: roots, wide nodes, their regions.
pub fn global_bytes(t: &Ipv6Table, slots: usize, layout: &GlobalLayout) -> Vec<u8> {
    let mut out = roots_bytes(t, slots);
    out.resize((layout.wides - layout.roots) as usize, 0);
    for w in &t.wides {
        out.extend(w.iter().flat_map(|e| e.to_le_bytes()));
    }
    out.resize((layout.regions - layout.roots) as usize, 0);
    for r in &t.wide_regions {
        out.extend(r.bytes());
    }
    out.resize((layout.end - layout.roots) as usize, 0);
    out
}

/// The root nodes' entries as global data holds them: slot after slot.
pub fn roots_bytes(t: &Ipv6Table, slots: usize) -> Vec<u8> {
    t.nodes[..slots * ROOT_NODES as usize].iter().flat_map(|n| n.iter().flat_map(|e| e.to_le_bytes())).collect()
}

/// A prefix's tail: address (`hi`, `lo`, host order) and masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tail {
    pub hi: u64,
    pub lo: u64,
    pub mask_hi: u64,
    pub mask_lo: u64,
}

impl Tail {
    fn of(a: u128, len: u8) -> Tail {
        let m = mask(len);
        let a = a & m;
        Tail { hi: (a >> 64) as u64, lo: a as u64, mask_hi: (m >> 64) as u64, mask_lo: m as u64 }
    }
    pub fn bytes(&self) -> [u8; TAIL_BYTES as usize] {
        let mut out = [0u8; TAIL_BYTES as usize];
        for (i, w) in [self.hi, self.lo, self.mask_hi, self.mask_lo].iter().enumerate() {
            out[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
        }
        out
    }
    pub fn holds(&self, a: u128) -> bool {
        (a >> 64) as u64 & self.mask_hi == self.hi && a as u64 & self.mask_lo == self.lo
    }
    /// The inverse of [`Tail::bytes`].
    pub fn from_bytes(b: &[u8; TAIL_BYTES as usize]) -> Tail {
        let w = |i: usize| u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().expect("8 bytes"));
        Tail { hi: w(0), lo: w(1), mask_hi: w(2), mask_lo: w(3) }
    }
}

/// A node as the nodes map's value holds it: its entries, little-endian,
/// then its region.
pub fn node_value(entries: &[u32; NODE_ENTRIES], region: &Tail) -> Vec<u8> {
    let mut out: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    out.extend(region.bytes());
    out
}

/// Where an entry is stored: at a byte offset of global data, or of the
/// nodes map's values (node `i` at `i * NODE_BYTES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    Global(u64),
    Nodes(u64),
}

/// Where entry `at` is, the sets' roots and wide nodes in global data as
/// `layout` says, or the roots in the nodes map without one.
pub fn entry_place(at: EntryAt, layout: Option<&GlobalLayout>) -> Stored {
    let in_node = |node: u64, index: u32| Stored::Nodes(node * u64::from(NODE_BYTES) + 4 * u64::from(index));
    match (at, layout) {
        (EntryAt::Root { slot, index }, Some(l)) => Stored::Global(l.roots + 4 * (u64::from(slot) * (1 << 16) + u64::from(index))),
        (EntryAt::Root { slot, index }, None) => in_node(u64::from(slot * ROOT_NODES + (index >> 8)), index & 0xff),
        (EntryAt::Node { node, index }, _) => in_node(u64::from(node), index),
        // No wide node in global data without a layout.
        (EntryAt::Wide { wide, index }, l) => Stored::Global(l.map_or(0, |l| l.wides) + u64::from(wide) * WIDE_BYTES + 4 * u64::from(index)),
    }
}

/// Where node `node`'s region is in the nodes map's values.
pub fn region_place(node: u32) -> u64 {
    u64::from(node) * u64::from(NODE_BYTES) + u64::from(REGION_AT)
}

/// Where wide node `wide`'s region is in global data.
pub fn wide_region_place(layout: &GlobalLayout, wide: u32) -> u64 {
    layout.regions + u64::from(wide) * u64::from(TAIL_BYTES)
}

/// The mask of a prefix length (at most 128).
pub fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len.min(128)))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ipv6Table {
    /// Root nodes first ([`ROOT_NODES`] per set), then the others.
    pub nodes: Vec<[u32; NODE_ENTRIES]>,
    /// Each node's region (a root's: everything, `::/0`).
    pub regions: Vec<Tail>,
    pub tails: Vec<Tail>,
    /// Wide nodes in global data ([`GLOBAL`]), 65,536 entries each, and
    /// their regions.
    pub wides: Vec<Vec<u32>>,
    pub wide_regions: Vec<Tail>,
    /// Wide nodes that may still go to global data.
    global_wides_left: usize,
    /// No wide nodes in the nodes map either: an edit's subtree, whose
    /// nodes go to free places one by one ([`Ipv6Table::entry_of`]).
    no_map_wides: bool,
}

/// The bit of a child entry that makes its node *wide*: 256 nodes in a
/// row, indexed by the 16 bits after the depth as the root is (node
/// `i + (bits >> 8)`, entry `bits & 0xff`). A region holding at least
/// [`WIDE_MIN`] prefixes gets one: a read less on the way to each of
/// them, for 256 KiB.
pub const WIDE: u32 = 1 << 30;
/// With [`WIDE`]: the wide node is number `i` of those in global data,
/// after the roots ([`global_layout`]), read with a plain load; without
/// it, nodes `i ..` of the nodes map.
pub const GLOBAL: u32 = 1 << 29;
/// Wide nodes in global data at most.
pub const MAX_GLOBAL_WIDES: u64 = 8;
/// Bytes of a wide node in global data.
pub const WIDE_BYTES: u64 = 4 << 16;
pub const WIDE_MIN: usize = 2048;
/// The same for a wide node in global data, whose room is reserved
/// anyway: a region of this many prefixes or more gets one while there is
/// room left (the regions first met, from the lowest address).
pub const GLOBAL_WIDE_MIN: usize = 256;
/// Nodes a table may hold: what a child entry can address.
pub const MAX_NODES: usize = (1 << 25) - 1;

/// The entry leading to node `i` at depth `depth` (a multiple of 8).
pub fn child_entry(i: u32, depth: u32, wide: bool) -> u32 {
    (FIRST_CHILD + (i << 4 | depth / 8)) | if wide { WIDE } else { 0 }
}

/// The entry leading to wide node `w` in global data at depth `depth`.
pub fn global_wide_entry(w: u32, depth: u32) -> u32 {
    child_entry(w, depth, true) | GLOBAL
}

/// Whether a child entry leads to a wide node in global data.
pub fn is_global(e: u32) -> bool {
    e & (WIDE | GLOBAL) == WIDE | GLOBAL
}

/// The node, depth and wideness a child entry leads to.
pub fn child_of(e: u32) -> (u32, u32, bool) {
    let c = (e & !(WIDE | GLOBAL)) - FIRST_CHILD;
    (c >> 4, (c & 15) * 8, e & WIDE != 0)
}

impl Ipv6Table {
    /// The table of one set's prefixes (`(address, length)`; bits past the
    /// length are ignored).
    pub fn build(prefixes: impl IntoIterator<Item = (u128, u8)>) -> Ipv6Table {
        Self::build_with(prefixes, 0)
    }

    /// [`Ipv6Table::build`], with up to `global_wides` wide nodes in
    /// global data (the first regions that get one).
    pub fn build_with(prefixes: impl IntoIterator<Item = (u128, u8)>, global_wides: usize) -> Ipv6Table {
        let disjoint = disjoint(prefixes);
        let mut t = Ipv6Table {
            nodes: vec![[MISS; NODE_ENTRIES]; ROOT_NODES as usize],
            regions: vec![Tail::of(0, 0); ROOT_NODES as usize],
            global_wides_left: global_wides,
            ..Default::default()
        };
        // The root: 65,536 entries of 16 bits.
        let mut root = vec![MISS; 1 << 16];
        t.fill(&mut root, &disjoint, 0, 16);
        for (i, chunk) in root.chunks_exact(NODE_ENTRIES).enumerate() {
            t.nodes[i].copy_from_slice(chunk);
        }
        t
    }

    /// Fills `entries` (2^`stride` of them), the regions of `stride` bits
    /// after the first `depth` bits, from `prefixes`, all inside the
    /// region the entries divide and disjoint.
    fn fill(&mut self, entries: &mut [u32], prefixes: &[(u128, u8)], depth: u32, stride: u32) {
        let end = depth + stride;
        let index = |a: u128| ((a << depth) >> (128 - stride)) as usize;
        let mut i = 0;
        while i < prefixes.len() {
            let (a, len) = prefixes[i];
            let first = index(a);
            if u32::from(len) <= end {
                let n = 1usize << (end - u32::from(len));
                entries[first..first + n].fill(HIT);
                i += 1;
                continue;
            }
            // The run of prefixes inside entry `first`'s region.
            let mut j = i + 1;
            while j < prefixes.len() && index(prefixes[j].0) == first {
                j += 1;
            }
            entries[first] = self.run_entry(&prefixes[i..j], end);
            i = j;
        }
    }

    /// The entry of a region that ends at bit `end` and holds the disjoint
    /// prefixes `run` (one at least, all longer than `end`), with the
    /// nodes and tails it leads to added to the table.
    fn run_entry(&mut self, run: &[(u128, u8)], end: u32) -> u32 {
        let (i, j) = (0, run.len());
        let prefixes = run;
        let (a, len) = run[0];
        {
            if j == i + 1 && u32::from(len) - end <= INLINE_MAX {
                let delta = u32::from(len) - end;
                INLINE | delta << 24 | ((a << end) >> (128 - delta)) as u32
            } else if j == i + 1 {
                self.tails.push(Tail::of(a, len));
                TAIL | (self.tails.len() as u32 - 1)
            } else {
                // The node starts at the bits all its prefixes share (two
                // disjoint prefixes at least: fewer than 128, and none
                // shorter than that), in whole bytes, at most 120.
                let shared = (prefixes[i].0 ^ prefixes[j - 1].0).leading_zeros();
                let depth = (shared / 8 * 8).clamp(end, 120);
                let run = &prefixes[i..j];
                let at = self.nodes.len();
                if run.len() >= GLOBAL_WIDE_MIN && depth <= 112 && self.global_wides_left > 0 {
                    self.global_wides_left -= 1;
                    let mut wide = vec![MISS; 1 << 16];
                    self.fill(&mut wide, run, depth, 16);
                    self.wides.push(wide);
                    self.wide_regions.push(Tail::of(a, depth as u8));
                    global_wide_entry(self.wides.len() as u32 - 1, depth)
                } else if run.len() >= WIDE_MIN && depth <= 112 && !self.no_map_wides {
                    // Reserve the nodes' places before the children take theirs.
                    self.nodes.resize(at + 256, [MISS; NODE_ENTRIES]);
                    self.regions.resize(at + 256, Tail::of(a, depth as u8));
                    let mut wide = vec![MISS; 1 << 16];
                    self.fill(&mut wide, run, depth, 16);
                    for (k, chunk) in wide.chunks_exact(NODE_ENTRIES).enumerate() {
                        self.nodes[at + k].copy_from_slice(chunk);
                    }
                    child_entry(at as u32, depth, true)
                } else {
                    let mut node = [MISS; NODE_ENTRIES];
                    self.nodes.push(node);
                    self.regions.push(Tail::of(a, depth as u8));
                    self.fill(&mut node, run, depth, 8);
                    self.nodes[at] = node;
                    child_entry(at as u32, depth, false)
                }
            }
        }
    }

    /// The tables of several sets in one: set `k`'s root at nodes
    /// `256 k ..`, then every set's other nodes, then the tails, the
    /// entries renumbered.
    pub fn concat(tables: &[Ipv6Table]) -> Ipv6Table {
        let roots = ROOT_NODES as usize * tables.len();
        let mut out = Ipv6Table { nodes: vec![[MISS; NODE_ENTRIES]; roots], regions: vec![Tail::of(0, 0); roots], ..Default::default() };
        for (k, t) in tables.iter().enumerate() {
            // Node `i` of `t` (past its root) goes to `node_base + i`.
            let node_base = out.nodes.len() as u32 - ROOT_NODES;
            let tail_base = out.tails.len() as u32;
            let wide_base = out.wides.len() as u32;
            let renumber = |e: u32| match e {
                MISS | HIT => e,
                e if e & INLINE == INLINE => e,
                e if e & TAIL != 0 => TAIL | ((e & !TAIL) + tail_base),
                e if is_global(e) => {
                    let (w, depth, _) = child_of(e);
                    global_wide_entry(w + wide_base, depth)
                }
                e => {
                    let (i, depth, wide) = child_of(e);
                    child_entry(i + node_base, depth, wide)
                }
            };
            for (i, node) in t.nodes.iter().enumerate() {
                let node = node.map(renumber);
                if i < ROOT_NODES as usize {
                    out.nodes[k * ROOT_NODES as usize + i] = node;
                } else {
                    out.nodes.push(node);
                    out.regions.push(t.regions[i]);
                }
            }
            out.tails.extend(&t.tails);
            out.wides.extend(t.wides.iter().map(|w| w.iter().map(|&e| renumber(e)).collect::<Vec<u32>>()));
            out.wide_regions.extend(&t.wide_regions);
        }
        out
    }

    /// Whether address `a` is in set `slot`, read as the program reads it.
    pub fn holds(&self, slot: u32, a: u128) -> bool {
        let top = (a >> 112) as usize;
        let mut e = self.nodes[(slot * ROOT_NODES) as usize + (top >> 8)][top & 0xff];
        let mut region = Tail::of(0, 0);
        // Where the entry's region ends.
        let mut end = 16;
        for _ in 1..=LEVELS {
            match e {
                MISS => return false,
                HIT => return region.holds(a),
                e if e & INLINE == INLINE => {
                    let delta = (e >> 24) & 63;
                    return ((a << end) >> (128 - delta)) as u32 == e & 0xff_ffff && region.holds(a);
                }
                e if e & TAIL != 0 => return self.tails[(e & !TAIL) as usize].holds(a),
                child => {
                    let (i, depth, wide) = child_of(child);
                    let stride = if wide { 16 } else { 8 };
                    let bits = ((a << depth) >> (128 - stride)) as usize;
                    if is_global(child) {
                        e = self.wides[i as usize][bits];
                        region = self.wide_regions[i as usize];
                    } else {
                        let node = i as usize + (bits >> 8);
                        e = self.nodes[node][bits & 0xff];
                        region = self.regions[node];
                    }
                    end = depth + stride;
                }
            }
        }
        unreachable!("a walk ends within {LEVELS} nodes")
    }

    /// Node `i` as the map's value: its entries, little-endian.
    pub fn node_bytes(&self, i: usize) -> Vec<u8> {
        node_value(&self.nodes[i], &self.regions[i])
    }
}

/// The prefixes, masked, sorted, without those another one holds: they
/// are disjoint then, so the prefixes inside any region are a run of the
/// list. (Sorted by address then length, a prefix that holds others comes
/// just before them.)
fn disjoint(prefixes: impl IntoIterator<Item = (u128, u8)>) -> Vec<(u128, u8)> {
    let mut sorted: Vec<(u128, u8)> = prefixes.into_iter().map(|(a, len)| (a & mask(len), len.min(128))).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<(u128, u8)> = Vec::with_capacity(sorted.len());
    for (a, len) in sorted {
        if out.last().is_some_and(|&(b, l)| l <= len && a & mask(l) == b) {
            continue;
        }
        out.push((a, len));
    }
    out
}

/// One entry of the tables, as an edit names it: of a set's root (its
/// 65,536 entries), of a node of the nodes map, or of a wide node in
/// global data (its 65,536 entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryAt {
    Root { slot: u32, index: u32 },
    Node { node: u32, index: u32 },
    Wide { wide: u32, index: u32 },
}

/// What an editor reads of the tables where the programs read them.
pub trait Ipv6View {
    fn entry(&self, at: EntryAt) -> u32;
    /// The region of node `node` of the nodes map.
    fn region(&self, node: u32) -> Tail;
    /// The region of wide node `wide` in global data.
    fn wide_region(&self, wide: u32) -> Tail;
    /// Tail `i`, `None` past the tails.
    fn tail(&self, i: u32) -> Option<Tail>;
}

impl Ipv6View for Ipv6Table {
    fn entry(&self, at: EntryAt) -> u32 {
        match at {
            EntryAt::Root { slot, index } => self.nodes[(slot * ROOT_NODES + (index >> 8)) as usize][(index & 0xff) as usize],
            EntryAt::Node { node, index } => self.nodes[node as usize][index as usize],
            EntryAt::Wide { wide, index } => self.wides[wide as usize][index as usize],
        }
    }
    fn region(&self, node: u32) -> Tail {
        self.regions[node as usize]
    }
    fn wide_region(&self, wide: u32) -> Tail {
        self.wide_regions[wide as usize]
    }
    fn tail(&self, i: u32) -> Option<Tail> {
        self.tails.get(i as usize).copied()
    }
}

/// An entry an edit rewrites, and its region: the addresses that read
/// it, `(addr, end)` (a prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EditedEntry {
    pub at: EntryAt,
    pub region: (u128, u32),
}

/// The entries to rewrite so that set `slot` holds what it should once
/// prefix `(a, len)` is added or removed: the deepest ones whose regions
/// hold the prefix (all those of one node it covers when it is as short
/// as that node's stride, or shorter). Every address depends on one entry
/// of each node it reads, and no other entry's region meets the prefix,
/// so rewriting these (each a new subtree, [`Ipv6Table::entry_of`], then
/// one store) changes the set and nothing else, an entry at a time.
pub fn entries_to_edit(view: &impl Ipv6View, slot: u32, a: u128, len: u8) -> Vec<EditedEntry> {
    let len = u32::from(len.min(128));
    let a = a & mask(len as u8);
    // The entries of one node (of `stride` bits from `depth`) that
    // `(a, len)` meets.
    let covered = |depth: u32, stride: u32, at: &dyn Fn(u32) -> EntryAt| -> Vec<EditedEntry> {
        let end = depth + stride;
        let first = ((a << depth) >> (128 - stride)) as u32;
        let count = 1u32 << (end - len);
        (0..count).map(|k| EditedEntry { at: at(first + k), region: (a + (u128::from(k) << (128 - end)), end) }).collect()
    };
    if len <= 16 {
        return covered(0, 16, &|index| EntryAt::Root { slot, index });
    }
    let mut at = EntryAt::Root { slot, index: (a >> 112) as u32 };
    let mut end = 16;
    loop {
        let e = view.entry(at);
        let here = EditedEntry { at, region: (a & mask(end as u8), end) };
        if e == MISS || e == HIT || e & TAIL != 0 {
            return vec![here];
        }
        let (i, depth, wide) = child_of(e);
        let region = if is_global(e) { view.wide_region(i) } else { view.region(i) };
        if len < depth || !region.holds(a) {
            // The prefix is not inside the child's region: the entry's
            // subtree is made again (a node nearer the root, say).
            return vec![here];
        }
        let stride = if wide { 16 } else { 8 };
        let child_at = move |index: u32| if is_global(e) { EntryAt::Wide { wide: i, index } } else { EntryAt::Node { node: i + (index >> 8), index: index & 0xff } };
        if len <= depth + stride {
            return covered(depth, stride, &child_at);
        }
        at = child_at(((a << depth) >> (128 - stride)) as u32);
        end = depth + stride;
    }
}

/// The nodes of the nodes map and the tails entry `e` leads to (a wide
/// node's 256 nodes each; not wide nodes in global data, which are not
/// given out again, but what they lead to).
pub fn subtree_parts(view: &impl Ipv6View, e: u32, nodes: &mut Vec<u32>, tails: &mut Vec<u32>) {
    match e {
        MISS | HIT => {}
        e if e & INLINE == INLINE => {}
        e if e & TAIL != 0 => tails.push(e & !TAIL),
        e => {
            let (i, _, wide) = child_of(e);
            if is_global(e) {
                for index in 0..1 << 16 {
                    subtree_parts(view, view.entry(EntryAt::Wide { wide: i, index }), nodes, tails);
                }
                return;
            }
            for node in i..i + if wide { 256 } else { 1 } {
                nodes.push(node);
                for index in 0..NODE_ENTRIES as u32 {
                    subtree_parts(view, view.entry(EntryAt::Node { node, index }), nodes, tails);
                }
            }
        }
    }
}

/// The prefixes entry `e` of region `(r, end)` holds, as the tables hold
/// them (leaf-pushed: disjoint, maybe split): the set's membership in the
/// region, read back from the tables. An add rebuilds an entry from
/// these and the new prefix, so that it needs neither the set's list nor
/// to trust a copy of it.
pub fn entry_prefixes(view: &impl Ipv6View, e: u32, (r, end): (u128, u32), out: &mut Vec<(u128, u8)>) {
    match e {
        MISS => {}
        HIT => out.push((r & mask(end as u8), end as u8)),
        e if e & INLINE == INLINE => {
            let delta = (e >> 24) & 63;
            let bits = u128::from(e & 0xff_ffff);
            let len = end + delta;
            if delta == 0 || len > 128 {
                out.push((r & mask(end as u8), end as u8));
            } else {
                out.push(((r & mask(end as u8)) | bits << (128 - len), len as u8));
            }
        }
        e if e & TAIL != 0 => {
            // A tail is read only where its region is: it is inside it.
            out.extend(view.tail(e & !TAIL).map(|t| ((u128::from(t.hi) << 64) | u128::from(t.lo), (t.mask_hi.count_ones() + t.mask_lo.count_ones()) as u8)));
        }
        e => {
            let (i, depth, wide) = child_of(e);
            let region = if is_global(e) { view.wide_region(i) } else { view.region(i) };
            let base = (u128::from(region.hi) << 64 | u128::from(region.lo)) & mask(depth as u8);
            let stride = if wide { 16 } else { 8 };
            for index in 0..1u32 << stride {
                let at = if is_global(e) { EntryAt::Wide { wide: i, index } } else { EntryAt::Node { node: i + (index >> 8), index: index & 0xff } };
                let sub = base | u128::from(index) << (128 - depth - stride);
                entry_prefixes(view, view.entry(at), (sub, depth + stride), out);
            }
        }
    }
}

impl Ipv6Table {
    /// The entry of a region that ends at bit `end` in a table of
    /// `prefixes` (those of the set that meet the region; bits past a
    /// length are ignored), and the nodes and tails it leads to, numbered
    /// from 0 (no roots; no wide nodes, so that each node can go to any
    /// free place, [`Ipv6Table::relocated`]).
    pub fn entry_of(prefixes: impl IntoIterator<Item = (u128, u8)>, end: u32) -> (u32, Ipv6Table) {
        let run = disjoint(prefixes);
        let mut t = Ipv6Table { no_map_wides: true, ..Default::default() };
        let e = if run.is_empty() {
            MISS
        } else if run.iter().any(|&(_, len)| u32::from(len) <= end) {
            HIT
        } else {
            t.run_entry(&run, end)
        };
        (e, t)
    }

    /// Entry `e` of a table [`Ipv6Table::entry_of`] made, with its node
    /// `i` at `nodes_at[i]` and its tail `j` at `tails_at[j]`.
    pub fn relocated(e: u32, nodes_at: &[u32], tails_at: &[u32]) -> u32 {
        match e {
            MISS | HIT => e,
            e if e & INLINE == INLINE => e,
            e if e & TAIL != 0 => TAIL | tails_at[(e & !TAIL) as usize],
            e => {
                let (i, depth, wide) = child_of(e);
                debug_assert!(!wide, "entry_of makes no wide node");
                child_entry(nodes_at[i as usize], depth, wide)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> (u128, u8) {
        let (a, l) = s.split_once('/').unwrap();
        (u128::from(a.parse::<std::net::Ipv6Addr>().unwrap()), l.parse().unwrap())
    }

    fn a(s: &str) -> u128 {
        u128::from(s.parse::<std::net::Ipv6Addr>().unwrap())
    }

    #[test]
    fn membership_of_overlapping_prefixes_and_the_extremes() {
        let t = Ipv6Table::build(["2001:db8::/32", "2001:db8:1::/48", "2001:db8:ffff:7::/64", "::1/128", "fe80::/10"].map(p));
        assert!(t.holds(0, a("2001:db8:ffff:7::7")));
        assert!(t.holds(0, a("2001:db8:1::1")));
        assert!(!t.holds(0, a("2001:db9::")));
        assert!(t.holds(0, a("::1")));
        assert!(!t.holds(0, a("::2")));
        assert!(!t.holds(0, a("::")));
        assert!(t.holds(0, a("febf:ffff::")));
        assert!(!t.holds(0, a("fec0::")));
        let all = Ipv6Table::build([p("::/0")]);
        assert!(all.holds(0, 0) && all.holds(0, u128::MAX));
        // Two /64s in one /48: one node past the root, at depth 56 (the
        // bits they share), reached from the root's 2001 entry.
        let two = Ipv6Table::build(["2001:db8:1:2::/64", "2001:db8:1:3::/64"].map(p));
        assert_eq!(two.nodes.len(), ROOT_NODES as usize + 1);
        assert_eq!(child_of(two.nodes[0x20][0x01]), (ROOT_NODES, 56, false));
        assert!(two.holds(0, a("2001:db8:1:3::9")) && !two.holds(0, a("2001:db9:1:3::9")) && !two.holds(0, a("2001:db8:1:4::")));
        let none = Ipv6Table::build([]);
        assert!(!none.holds(0, 0) && !none.holds(0, u128::MAX));
    }

    /// Random prefixes, addresses on and around their bounds, against a
    /// plain scan; two sets in one table.
    #[test]
    fn random_sets_agree_with_a_scan() {
        let mut x = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..200 {
            let mut sets = Vec::new();
            for _ in 0..2 {
                let n = (next() % 60) as usize;
                // A narrow space so that prefixes nest and share nodes.
                let base = u128::from(0x2001_0db8u32) << 96;
                let prefixes: Vec<(u128, u8)> = (0..n)
                    .map(|_| {
                        let len = [0u8, 8, 16, 24, 31, 32, 40, 47, 48, 56, 63, 64, 65, 96, 120, 127, 128][(next() % 17) as usize];
                        let bits = (u128::from(next()) << 64 | u128::from(next())) & (u128::MAX >> 32) & !(u128::from(next() % 4) << 90);
                        // Half of them near one of a few addresses: long
                        // shared runs of bits, so compressed nodes.
                        let near = [0x2001_0db8_0001_0002_0003_0004_0005_0006u128, 0x2001_0db8_0001_00ff_0000_0000_0000_0000][(next() % 2) as usize];
                        let a = if next() % 2 == 0 { near ^ (u128::from(next() % 256) << (next() % 120)) } else { base | bits };
                        (a & mask(len), len)
                    })
                    .filter(|&(_, len)| round % 3 == 0 || len > 0)
                    .collect();
                sets.push(prefixes);
            }
            if round == 0 {
                // Enough prefixes in one /32 for a wide node.
                let many: Vec<(u128, u8)> = (0..WIDE_MIN + WIDE_MIN / 2)
                    .map(|_| {
                        let len = [48u8, 56, 64, 128, 47][(next() % 5) as usize];
                        let a = (0x2001_0db8u128 << 96) | (u128::from(next()) << 64 | u128::from(next())) & (u128::MAX >> 32);
                        (a & mask(len), len)
                    })
                    .collect();
                // The same prefixes moved to 2001:db9::/32, for a wide
                // node in global data (the other's is in the nodes).
                let moved: Vec<(u128, u8)> = many.iter().map(|&(a, len)| (a + (1u128 << 96), len)).collect();
                sets.push(many);
                sets.push(moved);
            }
            let tables: Vec<Ipv6Table> = sets.iter().enumerate().map(|(k, s)| Ipv6Table::build_with(s.iter().copied(), usize::from(k == 3))).collect();
            if round == 0 {
                assert!(is_global(tables[3].nodes[0x20][0x01]) && !is_global(tables[2].nodes[0x20][0x01]));
            }
            if round == 0 {
                assert!(tables[2].nodes[0x20].iter().any(|&e| e >= FIRST_CHILD && e & TAIL == 0 && child_of(e).2), "a wide node");
            }
            let t = Ipv6Table::concat(&tables);
            for (k, s) in sets.iter().enumerate() {
                let mut probes = vec![0u128, u128::MAX];
                for &(a, len) in s {
                    let last = a | !mask(len);
                    probes.extend([a, last, a.wrapping_sub(1), last.wrapping_add(1), a ^ 1 << 64, a ^ 1]);
                }
                for &(a, _) in sets.iter().flatten() {
                    probes.push(a);
                }
                for q in probes {
                    let want = s.iter().any(|&(a, len)| q & mask(len) == a);
                    assert_eq!(t.holds(k as u32, q), want, "set {k} ({} prefixes): {}", s.len(), std::net::Ipv6Addr::from(q));
                }
            }
        }
    }

    /// Edits in place, as the runtime makes them (`ipv6_edit`), on a
    /// table in memory: new nodes and tails appended, then the entry.
    fn edit(t: &mut Ipv6Table, slot: u32, members: &[(u128, u8)], (a, len): (u128, u8)) {
        let added = members.contains(&(a & mask(len), len));
        for EditedEntry { at, region: (r, end) } in entries_to_edit(t, slot, a, len) {
            let inside: Vec<(u128, u8)> = if added {
                // As the runtime adds: what the entry holds, and the prefix.
                let mut held = vec![(a, len)];
                entry_prefixes(t, t.entry(at), (r, end), &mut held);
                held
            } else {
                members
                    .iter()
                    .copied()
                    .filter(|&(b, l)| {
                        let shared = u32::from(l).min(end) as u8;
                        b & mask(shared) == r & mask(shared)
                    })
                    .collect()
            };
            let (e, sub) = Ipv6Table::entry_of(inside, end);
            let nodes_at: Vec<u32> = (0..sub.nodes.len() as u32).map(|i| t.nodes.len() as u32 + i).collect();
            let tails_at: Vec<u32> = (0..sub.tails.len() as u32).map(|i| t.tails.len() as u32 + i).collect();
            for node in &sub.nodes {
                t.nodes.push(node.map(|e| Ipv6Table::relocated(e, &nodes_at, &tails_at)));
            }
            t.regions.extend(&sub.regions);
            t.tails.extend(&sub.tails);
            let e = Ipv6Table::relocated(e, &nodes_at, &tails_at);
            match at {
                EntryAt::Root { slot, index } => t.nodes[(slot * ROOT_NODES + (index >> 8)) as usize][(index & 0xff) as usize] = e,
                EntryAt::Node { node, index } => t.nodes[node as usize][index as usize] = e,
                EntryAt::Wide { wide, index } => t.wides[wide as usize][index as usize] = e,
            }
        }
    }

    /// Random adds and deletes (nested prefixes, /0, /128, compressed,
    /// wide and global wide nodes, tails) made in place: after each, the
    /// table holds what a scan of the prefixes says and what a table
    /// built from them holds.
    #[test]
    fn edits_in_place_agree_with_a_scan_and_a_fresh_table() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let near = [0x2001_0db8_0001_0002_0003_0004_0005_0006u128, 0x2001_0db8_0001_00ff_0000_0000_0000_0000];
        let random = |next: &mut dyn FnMut() -> u64| {
            let len = [0u8, 8, 15, 16, 17, 24, 31, 32, 40, 47, 48, 56, 63, 64, 65, 96, 120, 127, 128][(next() % 19) as usize];
            let a = match next() % 3 {
                0 => near[(next() % 2) as usize] ^ (u128::from(next() % 256) << (next() % 120)),
                1 => (0x2001_0db8u128 << 96) | (u128::from(next()) << 64 | u128::from(next())) & (u128::MAX >> 32),
                _ => u128::from(next()) << 64 | u128::from(next()),
            };
            (a & mask(len), len)
        };
        for round in 0..6 {
            // Round 0 starts with a wide node in the map, round 1 with one
            // in global data.
            let mut members: Vec<(u128, u8)> = if round < 2 {
                (0..WIDE_MIN + 100).map(|_| ((0x2001_0db8u128 << 96) | (u128::from(next()) << 64 | u128::from(next())) & (u128::MAX >> 32), 64)).map(|(a, l)| (a & mask(l), l)).collect()
            } else {
                Vec::new()
            };
            members.sort_unstable();
            members.dedup();
            let mut t = Ipv6Table::build_with(members.iter().copied(), usize::from(round == 1));
            assert_eq!(t.wides.len(), usize::from(round == 1));
            for step in 0..150 {
                let p = if !members.is_empty() && next() % 3 == 0 {
                    members.swap_remove((next() % members.len() as u64) as usize)
                } else {
                    let p = random(&mut next);
                    if members.contains(&p) {
                        continue;
                    }
                    members.push(p);
                    p
                };
                if round % 2 == 0 && p.1 == 0 && next() % 2 == 0 {
                    // /0 now and then only: it hides the rest.
                    members.retain(|&q| q != p);
                }
                edit(&mut t, 0, &members, p);
                let fresh = Ipv6Table::build(members.iter().copied());
                let mut probes = vec![0u128, u128::MAX, p.0, p.0 | !mask(p.1)];
                for &(a, len) in members.iter().take(400) {
                    let last = a | !mask(len);
                    probes.extend([a, last, a.wrapping_sub(1), last.wrapping_add(1), a ^ 1 << 64, a ^ 1]);
                }
                for _ in 0..50 {
                    probes.push(random(&mut next).0 | u128::from(next()));
                }
                for q in probes {
                    let want = members.iter().any(|&(a, len)| q & mask(len) == a);
                    assert_eq!(t.holds(0, q), want, "round {round} step {step} after {:?}: {}", p, std::net::Ipv6Addr::from(q));
                    assert_eq!(fresh.holds(0, q), want);
                }
            }
        }
    }

    /// Where the editor reads and stores an entry or a region is where
    /// the fill put it: global data from `global_bytes`, nodes from
    /// `node_bytes`.
    #[test]
    fn places_agree_with_the_filled_bytes() {
        let many: Vec<(u128, u8)> = (0..300u128).map(|i| ((0x2001_0db8_0001u128 << 80) | (i << 64), 64)).collect();
        let sets = [Ipv6Table::build(["2001:db8:1:2::/64", "2001:db8:1:3::/64", "fe80::/10"].map(p)), Ipv6Table::build_with(many, 1)];
        let t = Ipv6Table::concat(&sets);
        let layout = global_layout(0, 2).expect("fits");
        let global = global_bytes(&t, 2, &layout);
        let word = |b: &[u8], at: u64| u32::from_le_bytes(b[at as usize..at as usize + 4].try_into().unwrap());
        let mut nodes = Vec::new();
        for i in 0..t.nodes.len() {
            nodes.extend(t.node_bytes(i));
        }
        let read = |at: EntryAt| match entry_place(at, Some(&layout)) {
            Stored::Global(o) => word(&global, o - layout.roots),
            Stored::Nodes(o) => word(&nodes, o),
        };
        let no_global = |at: EntryAt| match entry_place(at, None) {
            Stored::Nodes(o) => word(&nodes, o),
            Stored::Global(_) => unreachable!("roots in the nodes map"),
        };
        for slot in 0..2 {
            for index in [0u32, 0x2001, 0xfe80, 0xffff] {
                let at = EntryAt::Root { slot, index };
                assert_eq!(read(at), t.entry(at));
                assert_eq!(no_global(at), t.entry(at));
            }
        }
        for node in ROOT_NODES * 2..t.nodes.len() as u32 {
            for index in [0u32, 1, 2, 3, 255] {
                assert_eq!(read(EntryAt::Node { node, index }), t.entry(EntryAt::Node { node, index }));
            }
            let at = region_place(node) as usize;
            assert_eq!(Tail::from_bytes(nodes[at..at + 32].try_into().unwrap()), t.region(node));
        }
        assert_eq!(t.wides.len(), 1);
        for index in [0u32, 1, 0x12b, 0xffff] {
            assert_eq!(read(EntryAt::Wide { wide: 0, index }), t.entry(EntryAt::Wide { wide: 0, index }));
        }
        let at = (wide_region_place(&layout, 0) - layout.roots) as usize;
        assert_eq!(Tail::from_bytes(global[at..at + 32].try_into().unwrap()), t.wide_region(0));
    }
}
