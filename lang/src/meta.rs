//! The metadata that `xpolc build` embeds in every object (ELF section
//! [`META_SECTION`], JSON), so that the runtime and other tools can label
//! counters with source rules, fill named sets, and decode `@map` keys
//! without the policy source.
//!
//! Written by the compiler, read by the runtime; both sides use these types.

use serde::{Deserialize, Serialize};

/// ELF section holding the JSON-encoded [`ObjectMeta`]. Loaders (aya,
/// libbpf) ignore sections they do not know.
pub const META_SECTION: &str = ".xpol.meta";

/// Name of the per-CPU array of counters: key = counter slot (u32; see
/// [`counter_slots`]), value = [`RuleCounters`] (two u64: packets, bytes).
/// A rule's slot counts here only on CPUs past
/// [`CountersMeta::global_cpus`]; the others count in [`COUNTERS_MAP`]. A
/// rule's count is the sum of both. The lost-update slots count here on
/// every CPU.
pub const RULES_MAP: &str = "xpol_rules";

/// The counter slots of a policy in [`RULES_MAP`]: slot `r` for rule `r`
/// (its [`RuleMeta::id`]), then slot `rules + i` for the lost updates of
/// `@map` `i` (in [`ObjectMeta::maps`] order; [`UserMapMeta::lost_slot`]),
/// which counts in `packets` and leaves `bytes` 0. The blocks of
/// [`COUNTERS_MAP`] hold the rules' slots only: a lost update is rare (the
/// map is full), and its count there would cost every update of a map
/// about twice the code (the program-size budget), where a lookup in the
/// per-CPU array costs a helper call when an update is lost and nothing
/// otherwise.
pub fn counter_slots(rules: usize, maps: usize) -> usize {
    rules + maps
}

/// The counter slot of the lost updates of `@map` number `map` (see
/// [`counter_slots`]).
pub fn lost_slot(rules: usize, map: usize) -> u32 {
    (rules + map).min(u32::MAX as usize) as u32
}

/// Global data holding the per-rule counters of the first
/// [`CountersMeta::global_cpus`] CPUs: the ELF section `.data`, which
/// loaders make a one-entry array map (named after the section). CPU `c`
/// has the block at `c * stride`, rule `r` the [`RuleCounters`] at
/// `16 * r` in it. Programs find their block with the CPU number
/// (`bpf_get_smp_processor_id`, which the kernel inlines on x86-64 since
/// Linux 6.10) and count with plain loads and stores, without a map
/// lookup: a CPU only ever writes its own block.
pub const COUNTERS_MAP: &str = ".data";

/// Bump when the layout of maps or of this schema changes incompatibly.
/// 5: sets the runtime may change have maps for both families and room to
/// grow (`SetMeta::capacity`), which older runtimes misread.
/// 6: [`RULES_MAP`] holds a slot per `@map` after the rules' (lost
/// updates, [`UserMapMeta::lost_slot`]), and a map without keys has one
/// entry.
/// 7: load-balancer pools ([`PoolMeta`]); a backend's weight is in its
/// flags ([`BACKEND_WEIGHT_SHIFT`]), which the first pools' maps lacked.
/// 8: pools' idle times and NAT maps.
/// 9: rate limits ([`LimitMeta`]), whose maps older runtimes would not
/// know to show, check or carry.
/// 10: logging ([`LogRingMeta`], [`LogMeta`]): a ring buffer of records
/// older runtimes would leave unread (and, with `--pcap-out`, unwritten).
/// 11: the connection table ([`ConntrackMeta`]).
/// 12: dynamic sets ([`DynSetMeta`]), written by the programs, which
/// older runtimes would not show or let `xpol set` change.
/// 13: SYN proxies ([`SynproxyMeta`]): the host's netfilter side, which
/// older runtimes would not install.
/// 14: IPv6 sets in the shared IPv6 tables ([`SetMeta::ipv6_slot`],
/// [`SetMapKind::Ipv6Node`]) instead of an LPM trie each; older runtimes
/// would not fill them.
/// 15: every set of ports, integers or MACs in one hash map
/// ([`SETS_HASH_MAP`]) and the IPv6 parts the IPv6 tables do not take in
/// one LPM trie ([`SETS_LPM6_MAP`]), keyed by [`SetMeta::id`], instead of
/// a map per set; older runtimes would fill them without the set's id.
pub const META_VERSION: u32 = 15;

/// Where the per-rule counters of the CPUs below `global_cpus` are in
/// [`COUNTERS_MAP`]; see [`CountersMeta::for_rules`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountersMeta {
    /// CPUs with a block in global data (0: every CPU counts in [`RULES_MAP`]).
    pub global_cpus: u32,
    /// Bytes per CPU block: 16 per rule and 56 more, so that no two CPUs
    /// write the same cache line even where the kernel puts the map's
    /// value at an address that is only 8-aligned (array maps without
    /// `BPF_F_MMAPABLE`, as aya makes them); rounded up to a power of two,
    /// so that programs find a block with a shift, not a multiply.
    pub stride: u32,
}

impl CountersMeta {
    /// The most CPUs given a block in global data.
    pub const MAX_GLOBAL_CPUS: u32 = 256;
    /// The most bytes of blocks: the section is part of the object file
    /// (zeros), so long policies give fewer CPUs a block.
    pub const MAX_GLOBAL_BYTES: u32 = 64 << 10;

    /// The layout for a policy of `rules` rules.
    pub fn for_rules(rules: usize) -> CountersMeta {
        let stride = (16 * rules as u64 + 56).next_power_of_two().max(64);
        let cpus = (u64::from(Self::MAX_GLOBAL_BYTES) / stride).min(u64::from(Self::MAX_GLOBAL_CPUS));
        CountersMeta { global_cpus: cpus as u32, stride: stride.min(u64::from(u32::MAX)) as u32 }
    }

    /// Bytes of [`COUNTERS_MAP`]'s value.
    pub fn bytes(&self) -> u64 {
        u64::from(self.global_cpus) * u64::from(self.stride)
    }
}

/// Where the three tables shared by the IPv4 sets ([`crate::ipv4_table`])
/// are, as [`crate::ipv4_table::placement`] decides: global data, the ELF
/// section `.bss`, which loaders make a one-entry array map (named after
/// the section) whose value programs read directly, holding the tables
/// that fit back to back; the others in array maps of their own, one chunk
/// per entry. A set map's `max_entries` is the table's capacity in chunks
/// (root entries, mid and leaf chunks) in either case.
pub const IPV4_TABLES_MAP: &str = ".bss";
pub const IPV4_ROOT_MAP: &str = "xpol_v4root";
pub const IPV4_MID_MAP: &str = "xpol_v4mid";
pub const IPV4_LEAF_MAP: &str = "xpol_v4leaf";

/// The two array maps shared by the IPv6 sets ([`crate::ipv6_table`]):
/// its nodes and its tails. The runtime sizes them to the tables it
/// builds from the sets' elements before it loads the object, so their
/// `max_entries` in the object (and the metadata) are the initial
/// contents' only.
pub const IPV6_NODES_MAP: &str = "xpol_v6nodes";
pub const IPV6_TAILS_MAP: &str = "xpol_v6tails";

/// The hash map shared by every set of ports, integers or MACs
/// ([`SetMapKind::SharedHash`]), and the LPM trie shared by the IPv6 parts
/// of the sets the IPv6 tables do not take ([`SetMapKind::SharedLpmV6`]):
/// a set's entries are those whose key starts with (holds) its
/// [`SetMeta::id`], so that a policy's sets, however many, take two maps
/// of a program's 64. Each is sized to the sum of its sets' capacities.
pub const SETS_HASH_MAP: &str = "xpol_sethash";
pub const SETS_LPM6_MAP: &str = "xpol_setlpm6";

/// Bytes of a [`SETS_HASH_MAP`] key: the element as a little-endian u64
/// (as for [`SetMapKind::HashU64`]), then the set's id, a little-endian
/// u32.
pub const SETS_HASH_KEY_SIZE: u32 = 12;

/// Bytes of a [`SETS_LPM6_MAP`] key: the prefix length (u32,
/// little-endian: 32 + the prefix's length), then the set's id (u32,
/// big-endian: the first 32 bits the trie matches), then the 16 address
/// bytes in network order.
pub const SETS_LPM6_KEY_SIZE: u32 = 24;

/// The key of integer (or MAC as an integer) `value` of set `id` in
/// [`SETS_HASH_MAP`].
pub fn sets_hash_key(id: u32, value: u64) -> [u8; SETS_HASH_KEY_SIZE as usize] {
    let mut key = [0u8; SETS_HASH_KEY_SIZE as usize];
    key[..8].copy_from_slice(&value.to_le_bytes());
    key[8..].copy_from_slice(&id.to_le_bytes());
    key
}

/// The key of IPv6 prefix `addr/len` of set `id` in [`SETS_LPM6_MAP`].
pub fn sets_lpm6_key(id: u32, addr: [u8; 16], len: u32) -> [u8; SETS_LPM6_KEY_SIZE as usize] {
    let mut key = [0u8; SETS_LPM6_KEY_SIZE as usize];
    key[..4].copy_from_slice(&(32 + len).to_le_bytes());
    key[4..8].copy_from_slice(&id.to_be_bytes());
    key[8..].copy_from_slice(&addr);
    key
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub version: u32,
    /// The root policy file as the user named it.
    pub source: String,
    pub programs: Vec<ProgramMeta>,
    /// Every probe of every hook; `rules[i].id == i`.
    pub rules: Vec<RuleMeta>,
    pub sets: Vec<SetMeta>,
    pub maps: Vec<UserMapMeta>,
    /// Interfaces named by `redirect(...)`; slot `i` of the [`REDIRECT_MAP`]
    /// must hold the ifindex of `redirects[i]`.
    pub redirects: Vec<String>,
    /// Absent in records pinned by runtimes before META_VERSION 4: no
    /// blocks, every CPU counts in [`RULES_MAP`] (what those objects do).
    #[serde(default)]
    pub counters: CountersMeta,
    /// The `pool`s that `lb(...)` statements balance over (absent before
    /// the load balancer existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolMeta>,
    /// Every `limit(...)` of the rules and the rate of every
    /// `log(..., rate: R)` ([`LogMeta::limit`]), in source order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitMeta>,
    /// The connection table, when a rule reads `ct.state` (absent before
    /// META_VERSION 11).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<ConntrackMeta>,
    /// The ring buffer `log` statements write to; `None` when the policy
    /// logs nothing (and in records written before logging existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_ring: Option<LogRingMeta>,
    /// Every `log` statement, in source order: a record's
    /// [`LogRecord::log`] is an index here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<LogMeta>,
    /// The sets declared `dynamic`, in source order (absent before
    /// META_VERSION 12).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dynsets: Vec<DynSetMeta>,
    /// Every `synproxy(...)`, in source order: what the runtime installs
    /// on the host's netfilter side (absent before META_VERSION 13).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub synproxies: Vec<SynproxyMeta>,
}

/// One `synproxy(...)`: the TCP ports its rule protects and the options
/// its SYN-ACK offers, which netfilter's synproxy (completing the
/// handshake with the server) must offer alike.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynproxyMeta {
    pub rule: u32,
    /// Inclusive ranges of destination ports.
    pub ports: Vec<(u16, u16)>,
    pub mss: u16,
    pub wscale: u8,
    pub sack: bool,
    pub timestamps: bool,
}

impl ObjectMeta {
    /// The counter slots of [`RULES_MAP`]: one per rule, and the
    /// lost-update slots of its maps (none in objects from before them).
    pub fn counter_slots(&self) -> usize {
        let lost = self.maps.iter().filter_map(|m| m.lost_slot).map(|s| s as usize + 1).max().unwrap_or(0);
        lost.max(self.rules.len())
    }

    /// What the runtime relies on besides the maps' sizes (which it checks
    /// against the kernel's): rule ids are their indices, a `@map`'s key
    /// holds its components, the counters' blocks hold every rule. A
    /// metadata that breaks these was not written by xpolc.
    pub fn check(&self) -> Result<(), String> {
        if let Some(r) = self.rules.iter().enumerate().find(|(i, r)| r.id as usize != *i) {
            return Err(format!("rule {} has id {}", r.0, r.1.id));
        }
        // Two sets of one id in a shared map would hold each other's elements.
        let mut ids = std::collections::HashSet::new();
        for s in &self.sets {
            for m in s.maps.iter().filter(|m| m.kind.is_keyed_by_set()) {
                let Some(id) = s.id else { return Err(format!("set `{}` is in the shared map `{}` without an id", s.name, m.map)) };
                if !ids.insert((m.map.as_str(), id)) {
                    return Err(format!("set `{}` has id {id} in the shared map `{}`, as another set has", s.name, m.map));
                }
            }
        }
        for m in &self.maps {
            let needed: usize = m.keys.iter().map(|k| k.size()).sum();
            if needed > m.key_size as usize {
                return Err(format!("map `{}` has {}-byte keys, too short for its {needed} bytes of key components", m.name, m.key_size));
            }
        }
        for l in &self.limits {
            let needed: usize = l.keys.iter().map(|k| k.size()).sum();
            if needed > l.key_size as usize {
                return Err(format!("limit map `{}` has {}-byte keys, too short for its {needed} bytes of key components", l.map, l.key_size));
            }
        }
        for d in &self.dynsets {
            if d.key.size() != d.key_size as usize || d.value_size != DYNSET_VALUE_SIZE {
                return Err(format!("dynamic set `{}` has {}-byte keys and {}-byte values, not the layout of its `{:?}` elements", d.name, d.key_size, d.value_size, d.key));
            }
        }
        if !self.logs.is_empty() {
            let Some(ring) = &self.log_ring else { return Err(format!("{} `log` statements and no ring buffer", self.logs.len())) };
            ring.check()?;
        }
        for (i, l) in self.logs.iter().enumerate() {
            if l.rule as usize >= self.rules.len() {
                return Err(format!("log statement {i} is in rule {}, which does not exist", l.rule));
            }
            if l.limit.is_some_and(|n| n as usize >= self.limits.len()) {
                return Err(format!("log statement {i} has a rate that is no limit of the object"));
            }
        }
        let c = self.counters;
        if c.global_cpus > 0 && (c.stride == 0 || u64::from(c.stride) < 16 * self.rules.len() as u64) {
            return Err(format!("counter blocks of {} bytes cannot hold {} rules", c.stride, self.rules.len()));
        }
        Ok(())
    }
}

/// Array map (u32 -> u32 ifindex) filled by the runtime for `redirect(IFNAME)`.
pub const REDIRECT_MAP: &str = "xpol_redirect";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramMeta {
    /// `xdp`, `tc:ingress` or `tc:egress`.
    pub hook: String,
    /// Program (function) name in the object.
    pub name: String,
    /// ELF section of the program (`xdp`, `classifier`).
    pub section: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleMeta {
    pub id: u32,
    pub hook: String,
    pub file: String,
    /// 1-based.
    pub line: u32,
    /// 1-based.
    pub column: u32,
    /// The probe's header as written (hook and predicate, without a
    /// `rule "NAME"` label), on one line.
    pub text: String,
    /// What the rule decides when it fires: `pass`, `drop`, `tx`, `abort`,
    /// `redirect`, `mixed` (depends on an `if`) or `none` (evaluation goes
    /// on). Absent in objects built before it was recorded.
    #[serde(default)]
    pub verdict: String,
    /// `rule "NAME"` as written before the hook, when the policy labels
    /// the rule: then it is the rule's identity (counters carried across
    /// a replace, the `rule` label of metrics). Absent in objects built
    /// before labels existed, and for unlabelled rules; runtimes that do
    /// not know it ignore it and fall back to the header text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// The most bytes of a `rule "NAME"` label.
pub const RULE_LABEL_MAX: usize = 64;

/// Whether `c` may appear in a `rule "NAME"` label: letters, digits and
/// `_ . : / -`, so that a label is a Prometheus label value, a JSON key and
/// a shell word without quoting or escaping. Without a space, a label can
/// only equal the identity of an unlabelled rule that has no predicate: a
/// hook name alone, which the compiler refuses as a label.
pub fn is_rule_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '-')
}

/// Counters of one rule on one CPU, as laid out in [`RULES_MAP`] and in
/// the blocks of [`COUNTERS_MAP`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[repr(C)]
pub struct RuleCounters {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SetElem {
    /// IPv4 or IPv6 prefixes (an address is a full-length prefix).
    Cidr,
    /// Unsigned integers and ranges (ports, protocols, ...).
    Int,
    /// MAC addresses.
    Mac,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetMeta {
    pub name: String,
    pub elem: SetElem,
    /// The BPF maps holding the set.
    pub maps: Vec<SetMapMeta>,
    /// For a set with IPv4 elements: its number among the IPv4 sets, whose
    /// tables are shared (root entries `65536 * slot ..`), see
    /// [`IPV4_TABLES_MAP`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_slot: Option<u32>,
    /// For a set with IPv6 elements (or that may get some): its number
    /// among the IPv6 sets, whose tables are shared (root nodes
    /// `256 * slot ..`), see [`IPV6_NODES_MAP`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_slot: Option<u32>,
    /// The set's id in the maps shared by the sets of its kind
    /// ([`SETS_HASH_MAP`], [`SETS_LPM6_MAP`]), when one of its maps is
    /// one of them: its index among the object's sets. Absent before
    /// META_VERSION 15, when each set had maps of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    /// Initial contents in their canonical text form (`198.51.100.0/24`,
    /// `2001:db8::/32`, `80`, `8000..8099`, `02:00:00:00:00:01`), which the
    /// loader inserts into [`SetMeta::maps`].
    pub elements: Vec<String>,
    /// The most elements the set's maps hold (a range `a..b` counts b-a+1,
    /// a prefix one): `max N` as declared, else the compiler's default. The
    /// runtime refuses to fill more. 0 in objects built before it existed:
    /// no limit known but the maps' own.
    #[serde(default)]
    pub capacity: u64,
    /// Declared with `set`: its maps have room for `capacity` elements of
    /// either address family, so the runtime may change its elements. A
    /// constant set the compiler made a map of is sized to its contents.
    #[serde(default)]
    pub mutable: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetMapKind {
    /// `BPF_MAP_TYPE_LPM_TRIE`, key `{ u32 prefixlen; u8 addr[4] }` (v4, 8
    /// bytes) or `{ u32 prefixlen; u8 addr[16] }` (v6, 20 bytes), address in
    /// network byte order; value one byte, 1.
    LpmV4,
    LpmV6,
    /// The three array maps of the IPv4 prefix tables
    /// ([`crate::ipv4_table`]), shared by every IPv4 set: `root`
    /// (`BPF_MAP_TYPE_ARRAY` of u32, 65,536 per set), `mid` (chunks of 256
    /// u16 or u32 entries), `leaf` (32-byte bitmaps). The runtime builds
    /// the tables from the elements and fills all three.
    Ipv4Root,
    Ipv4Mid16,
    Ipv4Mid32,
    Ipv4Leaf,
    /// The two array maps of the IPv6 tables ([`crate::ipv6_table`]),
    /// shared by every IPv6 set: nodes (256 u32 entries) and tails (32
    /// bytes). The runtime builds the tables from the elements, sizes the
    /// maps and fills both.
    Ipv6Node,
    Ipv6Tail,
    /// The IPv6 sets' root nodes in global data (`map` is
    /// [`IPV4_TABLES_MAP`]; `max_entries` the root nodes), where
    /// [`crate::ipv6_table::root_placement`] puts them when they fit.
    Ipv6Root,
    /// `BPF_MAP_TYPE_HASH`, key a little-endian u64 (an integer, or a MAC
    /// address as the integer whose big-endian low 6 bytes are the MAC);
    /// value one byte, 1. Ranges are stored expanded. A map per set
    /// (objects before META_VERSION 15).
    HashU64,
    /// [`SETS_HASH_MAP`], shared by every set of ports, integers or MACs:
    /// key [`sets_hash_key`] ([`SETS_HASH_KEY_SIZE`] bytes), value one
    /// byte, 1. Ranges are stored expanded.
    SharedHash,
    /// [`SETS_LPM6_MAP`], an LPM trie shared by the IPv6 parts of the
    /// sets the IPv6 tables do not take: key [`sets_lpm6_key`]
    /// ([`SETS_LPM6_KEY_SIZE`] bytes), value one byte, 1.
    SharedLpmV6,
}

impl SetMapKind {
    /// One of the maps of an IPv4 prefix table, filled together.
    pub fn is_ipv4_table(self) -> bool {
        matches!(self, SetMapKind::Ipv4Root | SetMapKind::Ipv4Mid16 | SetMapKind::Ipv4Mid32 | SetMapKind::Ipv4Leaf)
    }

    /// One of the maps of the IPv6 tables, filled together.
    pub fn is_ipv6_table(self) -> bool {
        matches!(self, SetMapKind::Ipv6Node | SetMapKind::Ipv6Tail | SetMapKind::Ipv6Root)
    }

    /// A map shared by all the sets of a family, filled whole from all of
    /// them rather than an element at a time.
    pub fn is_shared_table(self) -> bool {
        self.is_ipv4_table() || self.is_ipv6_table()
    }

    /// A map shared by the sets of a kind that holds each element in its
    /// own keys, prefixed with the set's [`SetMeta::id`].
    pub fn is_keyed_by_set(self) -> bool {
        matches!(self, SetMapKind::SharedHash | SetMapKind::SharedLpmV6)
    }

    /// Bytes of a key of a map of this kind that holds an element per key
    /// (not one of the tables).
    pub fn key_size(self) -> Option<u32> {
        match self {
            SetMapKind::LpmV4 | SetMapKind::HashU64 => Some(8),
            SetMapKind::LpmV6 => Some(20),
            SetMapKind::SharedHash => Some(SETS_HASH_KEY_SIZE),
            SetMapKind::SharedLpmV6 => Some(SETS_LPM6_KEY_SIZE),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetMapMeta {
    /// Map name in the object.
    pub map: String,
    pub kind: SetMapKind,
    pub max_entries: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MapValueKind {
    /// `count()`: u64
    Count,
    /// `sum(expr)`: u64
    Sum,
    /// `@m[k] = expr`: u64, last value written
    Value,
}

/// How one key component of a `@map` is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// u64, little-endian.
    Int,
    /// 20 bytes: family (u32 little-endian, 4 or 6) then 16 address bytes
    /// in network order (IPv4 in the first 4, the rest zero).
    Ip,
    /// 8 bytes: u64 as for [`SetMapKind::HashU64`].
    Mac,
    /// 4 bytes: u32 little-endian, 0 or 1.
    Bool,
}

impl KeyKind {
    pub fn size(self) -> usize {
        match self {
            KeyKind::Int | KeyKind::Mac => 8,
            KeyKind::Ip => 20,
            KeyKind::Bool => 4,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserMapMeta {
    /// As written, without `@`.
    pub name: String,
    /// Map name in the object.
    pub map: String,
    pub value: MapValueKind,
    /// `BPF_MAP_TYPE_PERCPU_HASH` when true (values are summed over CPUs when
    /// read), else `BPF_MAP_TYPE_HASH`.
    pub per_cpu: bool,
    /// Key components in order; the key is their encodings concatenated
    /// (every size is a multiple of 4, so stack stores stay aligned), padded
    /// with zeros to `key_size`. A keyless map has one u32 key 0.
    pub keys: Vec<KeyKind>,
    pub key_size: u32,
    /// The most entries the map holds: `map @NAME max N` as declared, else
    /// the compiler's default (1 for a map without keys).
    pub max_entries: u32,
    /// The counter slot in [`RULES_MAP`] ([`counter_slots`]) counting the
    /// updates of this map that would have added an entry to it when it
    /// was full (the kernel refused them with `E2BIG`). `None` in objects
    /// built before lost updates were counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_slot: Option<u32>,
}

impl UserMapMeta {
    /// The same kernel map (name, type, key and value, capacity) in two
    /// objects, whatever else the metadata says: a replace hands such a
    /// map on.
    pub fn same_map(&self, other: &UserMapMeta) -> bool {
        (&self.name, &self.map, self.value, self.per_cpu, &self.keys, self.key_size, self.max_entries)
            == (&other.name, &other.map, other.value, other.per_cpu, &other.keys, other.key_size, other.max_entries)
    }
}

// ------------------------------------------------------------ rate limits

/// A `limit(...)` in a rule: a token bucket per key (docs/language.md,
/// "Rate limits"), all of them in one map shared by the CPUs:
///
/// - keyed (`by: ...`): `BPF_MAP_TYPE_LRU_HASH` of `max_entries` entries
///   (`size: N`), key the components encoded as a `@map`'s ([`KeyKind`],
///   concatenated, padded with zeros to `key_size`);
/// - unkeyed: `BPF_MAP_TYPE_ARRAY` of one entry, key u32 0.
///
/// The value is [`LIMIT_VALUE_SIZE`] bytes: a u64, the time (the kernel's
/// `CLOCK_MONOTONIC` in nanoseconds, `bpf_ktime_get_ns`) at which the
/// bucket is full again, its credit spent until then; a time already
/// past (0 included) is a full bucket. Programs change it with an atomic
/// compare-and-exchange only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitMeta {
    /// Map name in the object.
    pub map: String,
    /// The rule ([`RuleMeta::id`]) whose predicate or statements hold it.
    pub rule: u32,
    /// The `limit(...)` as written, on one line.
    pub text: String,
    /// 1-based line and column of `limit` in the rule's file.
    pub line: u32,
    pub column: u32,
    /// The components of `by:` (none: unkeyed).
    pub keys: Vec<KeyKind>,
    pub key_size: u32,
    pub max_entries: u32,
    /// Nanoseconds of credit a full bucket holds: a bucket whose value is
    /// `T` holds `depth_ns - (T - now)` at `now` (all of it once `T <=
    /// now`).
    pub depth_ns: u64,
}

/// Bytes of a limit map's value (see [`LimitMeta`]).
pub const LIMIT_VALUE_SIZE: u32 = 8;

// ------------------------------------------------------------ dynamic sets

/// A set declared `dynamic` (docs/language.md, "Dynamic sets"), which the
/// programs write with `add(...)` and `delete(...)`:
/// `BPF_MAP_TYPE_LRU_HASH` of `max_entries` entries shared by every CPU,
/// key the element encoded as a `@map`'s key component ([`KeyKind`]: an
/// address as family and 16 bytes, an int or a MAC as a little-endian
/// u64), value [`DYNSET_VALUE_SIZE`] bytes: a little-endian u64, the time
/// on `CLOCK_MONOTONIC_COARSE` (`bpf_ktime_get_coarse_ns`) in
/// nanoseconds at which the element's time is up ([`DYNSET_FOREVER`]:
/// never). An element whose time is up is absent, whether or not the map
/// still holds it. When the map is full, an add evicts the element used
/// least recently (the LRU map's choice, approximately).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DynSetMeta {
    /// As declared.
    pub name: String,
    /// Map name in the object.
    pub map: String,
    /// The element type as declared (`ip`, `int`, `port`, `mac`).
    pub elem: String,
    pub key: KeyKind,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// `timeout D` as declared, in nanoseconds: what `xpol set ... add`
    /// gives an element without its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ns: Option<u64>,
}

/// Bytes of a dynamic set's map value (see [`DynSetMeta`]).
pub const DYNSET_VALUE_SIZE: u32 = 8;
/// The end of an element added without a timeout.
pub const DYNSET_FOREVER: u64 = u64::MAX;

// ------------------------------------------------------------ connection table

/// The connection table that `ct.state` reads (docs/conntrack.md):
/// `BPF_MAP_TYPE_LRU_HASH`, `max_entries` entries, key [`CtKey`], value
/// [`CtValue`]. The programs named in `trackers` insert and update
/// entries for the packets they pass; every program reads them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackMeta {
    pub map: String,
    pub max_entries: u32,
    /// The hooks whose programs record connections.
    pub trackers: Vec<String>,
}

/// The map name of the connection table.
pub const CONNTRACK_MAP: &str = "xpol_ct";

/// A key of the connection table: one entry per connection, found from
/// either direction. For TCP and UDP the endpoints are in order: `lo` is
/// the lesser (address as a number, as its network-order bytes compare,
/// then port) of the packet's source and destination. For an ICMP or
/// ICMPv6 echo, `lo` is the side that sends the requests, `hi` the side
/// that answers, and both ports hold the echo's identifier. Addresses in
/// network order (IPv4 in the first 4 bytes, the rest zero), ports in
/// network order, the protocol (6, 17, 1, 58), and 4 or 6.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct CtKey {
    pub lo: [u8; 16],
    pub hi: [u8; 16],
    pub lo_port: [u8; 2],
    pub hi_port: [u8; 2],
    pub proto: u8,
    pub family: u8,
    pub pad: [u8; 2],
}

/// A value of the connection table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct CtValue {
    /// When the entry expires: `CLOCK_MONOTONIC_COARSE` nanoseconds (the
    /// kernel's `bpf_ktime_get_coarse_ns`), little-endian. An entry whose
    /// time has come is no entry.
    pub expires_ns: [u8; 8],
    /// TCP: one of `CT_TCP_*`; 0 for UDP and ICMP.
    pub state: u8,
    /// `CT_ORIG_LO`, `CT_SEEN_REPLY`, `CT_FIN_ORIG`, `CT_FIN_REPLY`.
    pub flags: u8,
    pub pad: [u8; 6],
}

impl CtKey {
    pub fn to_bytes(&self) -> [u8; CT_KEY_SIZE as usize] {
        let mut b = [0u8; CT_KEY_SIZE as usize];
        b[..16].copy_from_slice(&self.lo);
        b[16..32].copy_from_slice(&self.hi);
        b[32..34].copy_from_slice(&self.lo_port);
        b[34..36].copy_from_slice(&self.hi_port);
        b[36] = self.proto;
        b[37] = self.family;
        b[38..40].copy_from_slice(&self.pad);
        b
    }

    /// `None` unless `b` is a key's [`CT_KEY_SIZE`] bytes.
    pub fn from_bytes(b: &[u8]) -> Option<CtKey> {
        let b: &[u8; CT_KEY_SIZE as usize] = b.try_into().ok()?;
        Some(CtKey {
            lo: b[0..16].try_into().ok()?,
            hi: b[16..32].try_into().ok()?,
            lo_port: [b[32], b[33]],
            hi_port: [b[34], b[35]],
            proto: b[36],
            family: b[37],
            pad: [b[38], b[39]],
        })
    }

    /// The `lo` and `hi` endpoints as addresses and ports.
    pub fn endpoints(&self) -> ((std::net::IpAddr, u16), (std::net::IpAddr, u16)) {
        let addr = |a: &[u8; 16]| -> std::net::IpAddr {
            if self.family == 6 {
                std::net::Ipv6Addr::from(*a).into()
            } else {
                std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).into()
            }
        };
        ((addr(&self.lo), u16::from_be_bytes(self.lo_port)), (addr(&self.hi), u16::from_be_bytes(self.hi_port)))
    }
}

impl CtValue {
    pub fn to_bytes(&self) -> [u8; CT_VALUE_SIZE as usize] {
        let mut b = [0u8; CT_VALUE_SIZE as usize];
        b[..8].copy_from_slice(&self.expires_ns);
        b[8] = self.state;
        b[9] = self.flags;
        b[10..].copy_from_slice(&self.pad);
        b
    }

    /// `None` unless `b` is a value's [`CT_VALUE_SIZE`] bytes.
    pub fn from_bytes(b: &[u8]) -> Option<CtValue> {
        let b: &[u8; CT_VALUE_SIZE as usize] = b.try_into().ok()?;
        Some(CtValue { expires_ns: b[..8].try_into().ok()?, state: b[8], flags: b[9], pad: b[10..].try_into().ok()? })
    }

    pub fn expires(&self) -> u64 {
        u64::from_le_bytes(self.expires_ns)
    }
}

/// Bytes of [`CtKey`] and [`CtValue`].
pub const CT_KEY_SIZE: u32 = 40;
pub const CT_VALUE_SIZE: u32 = 16;

/// TCP states of [`CtValue::state`].
pub const CT_TCP_SYN_SENT: u8 = 1;
pub const CT_TCP_SYN_RECV: u8 = 2;
pub const CT_TCP_ESTABLISHED: u8 = 3;
pub const CT_TCP_FIN_WAIT: u8 = 4;
pub const CT_TCP_TIME_WAIT: u8 = 5;
pub const CT_TCP_CLOSE: u8 = 6;

/// Bits of [`CtValue::flags`]: the connection's first packet came from
/// the key's `lo` endpoint (always, for an echo); a packet the other way
/// has passed; a FIN has passed from the originator, from the other side.
pub const CT_ORIG_LO: u8 = 1;
pub const CT_SEEN_REPLY: u8 = 2;
pub const CT_FIN_ORIG: u8 = 4;
pub const CT_FIN_REPLY: u8 = 8;

/// An entry's state as `xpol` shows it: `tcp established`, `udp
/// replied`, `icmp unreplied`.
pub fn ct_state_name(proto: u8, state: u8, flags: u8) -> String {
    let p = match proto {
        6 => "tcp",
        17 => "udp",
        1 => "icmp",
        58 => "icmpv6",
        _ => "other",
    };
    let s = match (proto, state) {
        (6, CT_TCP_SYN_SENT) => "syn_sent",
        (6, CT_TCP_SYN_RECV) => "syn_recv",
        (6, CT_TCP_ESTABLISHED) => "established",
        (6, CT_TCP_FIN_WAIT) => "fin_wait",
        (6, CT_TCP_TIME_WAIT) => "time_wait",
        (6, CT_TCP_CLOSE) => "close",
        (6, _) => "unknown",
        _ if flags & CT_SEEN_REPLY != 0 => "replied",
        _ => "unreplied",
    };
    format!("{p} {s}")
}

// ------------------------------------------------------------ logging

/// The ring buffer (`BPF_MAP_TYPE_RINGBUF`, Linux 5.8) that every `log`
/// statement of a policy writes its records to, one map for all programs.
pub const LOG_RING_MAP: &str = "xpol_log";
/// The per-CPU array (`BPF_MAP_TYPE_PERCPU_ARRAY`) of records lost because
/// the ring buffer was full: key u32, the `log` statement's index in
/// [`ObjectMeta::logs`]; value u64, summed over CPUs.
pub const LOG_LOST_MAP: &str = "xpol_log_lost";
/// Bytes of the ring buffer: with [`LOG_RECORD_BYTES`] and the kernel's
/// 8-byte header per record, room for 1,489 records that no reader has
/// taken yet.
pub const LOG_RING_BYTES: u32 = 256 << 10;
/// The most bytes of a packet a record holds (from the start of the
/// frame): Ethernet, IPv6 with 40 bytes of extension headers and TCP with
/// options fit.
pub const LOG_CAPTURE_BYTES: u32 = 128;
/// Bytes of a record's header ([`LogRecord`]), before the packet's bytes.
pub const LOG_HEADER_BYTES: u32 = 32;
/// Bytes of a record: the header, then [`LOG_CAPTURE_BYTES`] of which the
/// first `captured` are the packet's (the rest is whatever the ring held).
pub const LOG_RECORD_BYTES: u32 = LOG_HEADER_BYTES + LOG_CAPTURE_BYTES;

/// Where a policy's log records go, and their size. A record, as the
/// programs write it (little-endian, the machine's order):
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | `time_ns`: `bpf_ktime_get_ns` (`CLOCK_MONOTONIC`) when it was written |
/// | 8 | 4 | `log`: the statement's index in [`ObjectMeta::logs`] |
/// | 12 | 4 | `rule`: [`RuleMeta::id`] |
/// | 16 | 4 | `packet_len`: the packet's length (`pkt.len`: XDP the frame, TC `skb->len`) |
/// | 20 | 4 | `ifindex`: XDP the receiving interface, TC `skb->ifindex` |
/// | 24 | 2 | `captured`: bytes of the packet that follow (at most `capture`) |
/// | 26 | 1 | `hook`: 0 `xdp`, 1 `tc:ingress`, 2 `tc:egress` ([`hook_code`]) |
/// | 27 | 1 | `verdict`: what the rule does after the `log` ([`log_verdict_code`]) |
/// | 28 | 4 | 0 |
/// | 32 | `capture` | the packet's first `captured` bytes |
///
/// A runtime reads `header_bytes` and `capture` from here, not from its
/// own constants, so that a record layout grown at the end stays
/// readable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRingMeta {
    /// The ring buffer's map name ([`LOG_RING_MAP`]).
    pub map: String,
    /// The lost records' map ([`LOG_LOST_MAP`]).
    pub lost_map: String,
    /// Bytes of the ring buffer (its `max_entries`).
    pub ring_bytes: u32,
    pub header_bytes: u32,
    /// Bytes of packet room in a record.
    pub capture: u32,
}

impl LogRingMeta {
    /// The ring of an object built now.
    pub fn current() -> LogRingMeta {
        LogRingMeta {
            map: LOG_RING_MAP.to_string(),
            lost_map: LOG_LOST_MAP.to_string(),
            ring_bytes: LOG_RING_BYTES,
            header_bytes: LOG_HEADER_BYTES,
            capture: LOG_CAPTURE_BYTES,
        }
    }

    /// Bytes of one record.
    pub fn record_bytes(&self) -> usize {
        self.header_bytes as usize + self.capture as usize
    }

    fn check(&self) -> Result<(), String> {
        if self.header_bytes < LOG_HEADER_BYTES || self.capture > 65_535 || self.record_bytes() as u64 > u64::from(self.ring_bytes) / 2 {
            return Err(format!("a log record of {} + {} bytes does not fit this ring of {} bytes", self.header_bytes, self.capture, self.ring_bytes));
        }
        Ok(())
    }
}

/// A `log` statement (docs/language.md, "Logging").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogMeta {
    /// The rule ([`RuleMeta::id`]) whose statements hold it.
    pub rule: u32,
    /// `log("PREFIX")`; empty without one.
    pub prefix: String,
    /// 1-based line and column of `log` in the rule's file.
    pub line: u32,
    pub column: u32,
    /// The statement as written, on one line.
    pub text: String,
    /// What the rule does after the `log`, as [`RuleMeta::verdict`] says
    /// it: `pass`, `drop`, `tx`, `abort`, `redirect`, `lb`, `mixed` (an
    /// `if` after it decides) or `none` (evaluation goes on to the next
    /// rule).
    pub verdict: String,
    /// `rate:`: the limit ([`ObjectMeta::limits`] index) a record must fit
    /// in to be written; `None`: every packet is logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// The code of a hook in a log record.
pub fn hook_code(hook: &str) -> u8 {
    match hook {
        "xdp" => 0,
        "tc:ingress" => 1,
        _ => 2,
    }
}

/// The hook of a log record's code.
pub fn hook_of_code(code: u8) -> Option<&'static str> {
    ["xdp", "tc:ingress", "tc:egress"].get(usize::from(code)).copied()
}

/// The verdicts a log record names, by code ([`log_verdict_code`]).
pub const LOG_VERDICTS: [&str; 8] = ["none", "pass", "drop", "tx", "abort", "redirect", "lb", "mixed"];

/// The code of a [`LogMeta::verdict`] in a record (0, `none`, for a word it
/// does not know).
pub fn log_verdict_code(verdict: &str) -> u8 {
    LOG_VERDICTS.iter().position(|v| *v == verdict).unwrap_or(0) as u8
}

/// Offsets of a log record's header fields (the table at [`LogRingMeta`]):
/// the programs write them there (`codegen/log.rs`), [`LogRecord`] reads
/// them.
pub mod log_at {
    pub const TIME: usize = 0;
    pub const LOG: usize = 8;
    pub const RULE: usize = 12;
    pub const PACKET_LEN: usize = 16;
    pub const IFINDEX: usize = 20;
    pub const CAPTURED: usize = 24;
    pub const HOOK: usize = 26;
    pub const VERDICT: usize = 27;
    pub const RESERVED: usize = 28;
}

/// One log record, decoded ([`LogRingMeta`] describes the layout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub time_ns: u64,
    pub log: u32,
    pub rule: u32,
    pub packet_len: u32,
    pub ifindex: u32,
    pub hook: u8,
    pub verdict: u8,
    /// The packet's first bytes (as many as were captured).
    pub data: Vec<u8>,
}

impl LogRecord {
    /// Decodes a record of the ring `ring` describes. A record shorter
    /// than its header, or claiming more bytes than it holds, is refused.
    pub fn decode(bytes: &[u8], ring: &LogRingMeta) -> Result<LogRecord, String> {
        let header = ring.header_bytes as usize;
        if bytes.len() < header || header < LOG_HEADER_BYTES as usize {
            return Err(format!("a log record of {} bytes, shorter than its {header}-byte header", bytes.len()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let captured = usize::from(u16::from_le_bytes([bytes[log_at::CAPTURED], bytes[log_at::CAPTURED + 1]]));
        if captured > ring.capture as usize || header + captured > bytes.len() {
            return Err(format!("a log record claims {captured} bytes of packet, and holds {}", bytes.len().saturating_sub(header).min(ring.capture as usize)));
        }
        Ok(LogRecord {
            time_ns: u64::from_le_bytes(bytes[log_at::TIME..log_at::TIME + 8].try_into().expect("8 bytes")),
            log: u32_at(log_at::LOG),
            rule: u32_at(log_at::RULE),
            packet_len: u32_at(log_at::PACKET_LEN),
            ifindex: u32_at(log_at::IFINDEX),
            hook: bytes[log_at::HOOK],
            verdict: bytes[log_at::VERDICT],
            data: bytes[header..header + captured].to_vec(),
        })
    }

    /// Encodes the record as a program writes it (for tests and tools).
    pub fn encode(&self, ring: &LogRingMeta) -> Vec<u8> {
        let mut out = vec![0u8; ring.record_bytes()];
        out[log_at::TIME..log_at::TIME + 8].copy_from_slice(&self.time_ns.to_le_bytes());
        out[log_at::LOG..log_at::LOG + 4].copy_from_slice(&self.log.to_le_bytes());
        out[log_at::RULE..log_at::RULE + 4].copy_from_slice(&self.rule.to_le_bytes());
        out[log_at::PACKET_LEN..log_at::PACKET_LEN + 4].copy_from_slice(&self.packet_len.to_le_bytes());
        out[log_at::IFINDEX..log_at::IFINDEX + 4].copy_from_slice(&self.ifindex.to_le_bytes());
        let captured = self.data.len().min(ring.capture as usize);
        out[log_at::CAPTURED..log_at::CAPTURED + 2].copy_from_slice(&(captured as u16).to_le_bytes());
        out[log_at::HOOK] = self.hook;
        out[log_at::VERDICT] = self.verdict;
        let at = ring.header_bytes as usize;
        out[at..at + captured].copy_from_slice(&self.data[..captured]);
        out
    }

    /// The verdict's word ([`LOG_VERDICTS`]).
    pub fn verdict_name(&self) -> &'static str {
        LOG_VERDICTS.get(usize::from(self.verdict)).copied().unwrap_or("none")
    }
}

// ------------------------------------------------------------ load balancer

/// A `pool` of backends: its initial contents and the four maps the
/// programs balance with. The runtime builds the Maglev table
/// ([`crate::maglev::build_table`]) from the backends and fills the maps;
/// `xpol pool` changes them on a running policy.
///
/// - `ring_map`: `BPF_MAP_TYPE_ARRAY`, `2 * table_size` entries: two
///   Maglev tables, the one in use and the next (a double buffer), key u32
///   (`half * table_size` + the flow hash modulo `table_size`), value u32:
///   the backend slot, or [`crate::maglev::NO_BACKEND`].
/// - `control_map`: `BPF_MAP_TYPE_ARRAY`, one entry, value u32: the half of
///   `ring_map` in use (0 or 1). The runtime writes the other half, then
///   switches with one update of this value, then waits for a grace period
///   before it writes that half again.
/// - `backends_map`: `BPF_MAP_TYPE_ARRAY`, `max_backends` entries, key u32
///   (the backend slot), value [`BackendValue`].
/// - `flows_map`: `BPF_MAP_TYPE_LRU_HASH`, `flows` entries, key
///   [`FlowKey`], value [`FlowValue`]: the backend each flow went to, so
///   that established flows stay there when the pool changes. A TCP SYN
///   (without ACK) starts a connection: it is balanced by the table and
///   replaces its flow's entry. Any other flow's entry lasts `idle_secs`
///   without packets (its `seen` tick).
/// - `stats_map`: `BPF_MAP_TYPE_PERCPU_ARRAY`, `max_backends + 1` entries,
///   key u32 (the backend slot; the last one counts packets dropped for
///   want of a backend), value [`BackendCounters`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolMeta {
    pub name: String,
    /// The backends' family: every backend of a pool has the same.
    pub v6: bool,
    /// The backends as declared: slot `i` holds `backends[i]`.
    pub backends: Vec<BackendMeta>,
    /// Slots of the Maglev lookup table (a prime).
    pub table_size: u32,
    /// Slots of the backends map: the most backends the pool can hold.
    pub max_backends: u32,
    /// Entries of the flow table.
    pub flows: u32,
    /// How long a flow that is not TCP keeps its backend without packets
    /// (`idle D`), in seconds.
    #[serde(default = "default_idle_secs")]
    pub idle_secs: u32,
    pub ring_map: String,
    pub control_map: String,
    pub backends_map: String,
    pub flows_map: String,
    pub stats_map: String,
    /// With `lb(POOL, nat)`: `BPF_MAP_TYPE_LRU_HASH`, `flows` entries, key
    /// [`FlowKey`] of a reply (from the backend to the client), value
    /// [`NatValue`]: the address and port the client sent to, which the
    /// `tc:egress` program puts back as the reply's source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_map: Option<String>,
}

/// `idle D` when a pool does not say: UDP's usual idle timeout (Katran's,
/// and the kernel conntrack's for unreplied UDP).
pub const DEFAULT_IDLE_SECS: u32 = 30;

fn default_idle_secs() -> u32 {
    DEFAULT_IDLE_SECS
}

/// The clock of [`FlowValue::seen`]: `CLOCK_MONOTONIC_COARSE` nanoseconds (the
/// kernel's `bpf_ktime_get_coarse_ns`) shifted right by this, ticks of about
/// 1.07 s, so that a u32 does not wrap in a machine's uptime.
pub const FLOW_TICK_SHIFT: u32 = 30;

/// `idle_secs` in ticks of [`FLOW_TICK_SHIFT`], rounded up: an entry whose
/// last packet is more ticks ago than this has expired.
pub fn idle_ticks(idle_secs: u32) -> u32 {
    let tick = 1u64 << FLOW_TICK_SHIFT;
    (u64::from(idle_secs) * 1_000_000_000).div_ceil(tick) as u32
}

/// Whether a flow entry (its key's protocol, its value's `seen`) is still
/// in use at tick `now`: TCP entries until the table evicts them (or a new
/// connection replaces them), others for `idle_ticks` after their last
/// packet, as the programs decide.
pub fn flow_alive(proto: u8, seen: u32, now: u32, idle_ticks: u32) -> bool {
    proto == 6 || now.wrapping_sub(seen) <= idle_ticks
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendMeta {
    pub addr: std::net::IpAddr,
    /// 0: drained (no new flows; its established flows stay).
    pub weight: u32,
}

/// Bit of [`BackendValue::flags`]: the slot holds a backend. A flow whose
/// slot lost its backend is balanced again.
pub const BACKEND_PRESENT: u32 = 1;
/// The backend's weight is kept in the top 16 bits of
/// [`BackendValue::flags`] (`flags >> BACKEND_WEIGHT_SHIFT`), so that the
/// backends map alone is the pool's live state (`xpol pool` reads and
/// changes it there, and it persists with the map's pin). The packet path
/// reads [`BACKEND_PRESENT`] only: the weight shapes the Maglev table.
pub const BACKEND_WEIGHT_SHIFT: u32 = 16;
/// The largest weight of a backend (what [`BACKEND_WEIGHT_SHIFT`] leaves room for).
pub const MAX_BACKEND_WEIGHT: u32 = 0xffff;

/// A value of a pool's backends map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct BackendValue {
    /// Network order; IPv4 in the first 4 bytes, the rest zero.
    pub addr: [u8; 16],
    /// [`BACKEND_PRESENT`], and the weight from [`BACKEND_WEIGHT_SHIFT`]
    /// up; 0 for a free slot. Present with weight 0: drained (no new
    /// flows; its established flows stay).
    pub flags: u32,
}

/// A key of a pool's flow table: the 5-tuple as the packet carries it.
/// Addresses in network order (IPv4 in the first 4 bytes, the rest
/// zero), ports in network order as on the wire (0 for packets without
/// ports, and for every fragment), the protocol, and 4 or 6.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub family: u8,
    pub pad: [u8; 2],
}

/// A value of a pool's flow table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FlowValue {
    /// The backend slot.
    pub backend: u32,
    /// The tick ([`FLOW_TICK_SHIFT`]) of the flow's last packet (of its
    /// first, for TCP).
    pub seen: u32,
}

/// A value of a pool's NAT map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct NatValue {
    /// The VIP, network order (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// The VIP's port, network order.
    pub port: [u8; 2],
    pub pad: [u8; 2],
}

/// Counters of one backend on one CPU (a pool's stats map).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[repr(C)]
pub struct BackendCounters {
    pub packets: u64,
    pub bytes: u64,
    /// Flows the Maglev table sent here (flow-table misses).
    pub new_flows: u64,
}

#[cfg(test)]
mod tests {
    use super::CountersMeta;

    #[test]
    fn counter_blocks_are_cache_lines_within_the_budget() {
        // 6 rules: 96 bytes and 56 of slack in a 256-byte block, for 256 CPUs.
        assert_eq!(CountersMeta::for_rules(6), CountersMeta { global_cpus: 256, stride: 256 });
        assert_eq!(CountersMeta::for_rules(0), CountersMeta { global_cpus: 256, stride: 64 });
        for rules in [1, 16, 17, 64, 1000, 2048, 2049, 4096, 4097, 100_000] {
            let c = CountersMeta::for_rules(rules);
            assert!(c.stride.is_power_of_two() && c.stride >= 64, "{rules}");
            assert!(u64::from(c.stride) >= 16 * rules as u64 + 56, "{rules}");
            assert!(c.bytes() <= u64::from(CountersMeta::MAX_GLOBAL_BYTES), "{rules}");
            assert!(c.global_cpus <= CountersMeta::MAX_GLOBAL_CPUS, "{rules}");
        }
        assert_eq!(CountersMeta::for_rules(2044).global_cpus, 2);
        assert_eq!(CountersMeta::for_rules(2045).global_cpus, 1);
        assert_eq!(CountersMeta::for_rules(4093).global_cpus, 0);
        // What records pinned before the layout existed read as.
        assert_eq!(CountersMeta::default().global_cpus, 0);
    }

    /// Metadata of a map from before lost updates were counted reads as
    /// having no lost-update slot, and is the same kernel map as one that
    /// has one.
    #[test]
    fn map_metadata_without_a_lost_slot_reads_as_none() {
        let old = r#"{"name":"m","map":"xm_m","value":"count","per_cpu":true,"keys":["ip"],"key_size":20,"max_entries":10240}"#;
        let m: super::UserMapMeta = serde_json::from_str(old).expect("reads");
        assert_eq!(m.lost_slot, None);
        let new = super::UserMapMeta { lost_slot: Some(3), ..m.clone() };
        assert!(m.same_map(&new));
        assert!(!m.same_map(&super::UserMapMeta { max_entries: 4, ..new }));
        assert_eq!((super::counter_slots(3, 2), super::lost_slot(3, 1)), (5, 4));
    }

    /// Metadata written before META_VERSION 4 (a pinned policy's record)
    /// still reads: no counter blocks, every CPU counts in the map.
    #[test]
    fn metadata_without_a_counter_layout_reads_as_none() {
        let old = r#"{"version":3,"source":"p.xpol","programs":[],"rules":[],"sets":[],"maps":[],"redirects":[]}"#;
        let meta: super::ObjectMeta = serde_json::from_str(old).expect("reads");
        assert_eq!(meta.counters, CountersMeta::default());
    }

    /// A record pinned before the connection table (META_VERSION 9) has
    /// none; one with it keeps it through a round trip.
    #[test]
    fn metadata_without_a_connection_table_reads_as_none() {
        let old = r#"{"version":9,"source":"p.xpol","programs":[],"rules":[],"sets":[],"maps":[],"redirects":[],"limits":[]}"#;
        let meta: super::ObjectMeta = serde_json::from_str(old).expect("reads");
        assert_eq!(meta.conntrack, None);
        let with = super::ObjectMeta {
            conntrack: Some(super::ConntrackMeta { map: super::CONNTRACK_MAP.into(), max_entries: 64, trackers: vec!["xdp".into(), "tc:egress".into()] }),
            ..meta
        };
        let back: super::ObjectMeta = serde_json::from_str(&serde_json::to_string(&with).expect("writes")).expect("reads");
        assert_eq!(back, with);
    }

    /// A record pinned before dynamic sets (META_VERSION 11) has none and
    /// checks; one with a set keeps it through a round trip, and a set
    /// whose key size is not its element's is refused.
    #[test]
    fn metadata_without_dynamic_sets_reads_as_none() {
        let old = r#"{"version":11,"source":"p.xpol","programs":[],"rules":[],"sets":[],"maps":[],"redirects":[]}"#;
        let meta: super::ObjectMeta = serde_json::from_str(old).expect("reads");
        assert!(meta.dynsets.is_empty() && meta.check().is_ok());
        let set = super::DynSetMeta { name: "banned".into(), map: "xdynset_0".into(), elem: "ip".into(), key: super::KeyKind::Ip, key_size: 20, value_size: 8, max_entries: 64, timeout_ns: Some(600_000_000_000) };
        let with = super::ObjectMeta { dynsets: vec![set.clone()], ..meta.clone() };
        let back: super::ObjectMeta = serde_json::from_str(&serde_json::to_string(&with).expect("writes")).expect("reads");
        assert_eq!(back, with);
        let bad = super::ObjectMeta { dynsets: vec![super::DynSetMeta { key_size: 8, ..set }], ..meta };
        assert!(bad.check().is_err());
    }

    /// Keys and values of the connection table read back as written.
    #[test]
    fn connection_table_entries_round_trip() {
        let key = super::CtKey { lo: [198, 18, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], hi: [198, 18, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], lo_port: 40000u16.to_be_bytes(), hi_port: 443u16.to_be_bytes(), proto: 6, family: 4, pad: [0; 2] };
        assert_eq!(super::CtKey::from_bytes(&key.to_bytes()), Some(key));
        assert_eq!(key.endpoints(), (("198.18.0.2".parse().unwrap(), 40000), ("198.18.0.9".parse().unwrap(), 443)));
        let value = super::CtValue { expires_ns: 7u64.to_le_bytes(), state: super::CT_TCP_ESTABLISHED, flags: super::CT_ORIG_LO | super::CT_SEEN_REPLY, pad: [0; 6] };
        assert_eq!(super::CtValue::from_bytes(&value.to_bytes()), Some(value));
        assert_eq!(super::ct_state_name(6, value.state, value.flags), "tcp established");
        assert_eq!(super::ct_state_name(17, 0, super::CT_SEEN_REPLY), "udp replied");
        assert!(super::CtKey::from_bytes(&[0; 39]).is_none());
    }

    /// Metadata written before logging (META_VERSION 9, a pinned
    /// policy's record) reads as logging nothing; a record encodes and
    /// decodes to itself, and one claiming more bytes than it holds is
    /// refused.
    #[test]
    fn logs_read_from_old_metadata_and_records_round_trip() {
        let old = r#"{"version":9,"source":"p.xpol","programs":[],"rules":[],"sets":[],"maps":[],"redirects":[],"limits":[]}"#;
        let meta: super::ObjectMeta = serde_json::from_str(old).expect("reads");
        assert!(meta.log_ring.is_none() && meta.logs.is_empty());
        assert!(meta.check().is_ok());
        let ring = super::LogRingMeta::current();
        let r = super::LogRecord { time_ns: 7, log: 1, rule: 2, packet_len: 60, ifindex: 3, hook: 1, verdict: 2, data: (0..60).collect() };
        let bytes = r.encode(&ring);
        assert_eq!(bytes.len(), 160);
        assert_eq!(super::LogRecord::decode(&bytes, &ring), Ok(r.clone()));
        assert_eq!(r.verdict_name(), "drop");
        let mut lying = bytes.clone();
        lying[24..26].copy_from_slice(&200u16.to_le_bytes());
        assert!(super::LogRecord::decode(&lying, &ring).is_err());
        assert!(super::LogRecord::decode(&bytes[..20], &ring).is_err());
        assert_eq!((super::log_verdict_code("mixed"), super::hook_of_code(2)), (7, Some("tc:egress")));
    }

    /// A record pinned before the sets shared their maps (META_VERSION
    /// 14) names a map per set and no id, and still reads and checks;
    /// two sets of one id in a shared map are refused.
    #[test]
    fn sets_with_maps_of_their_own_or_ids_in_shared_ones() {
        let old = r#"{"version":14,"source":"p.xpol","programs":[],"rules":[],"maps":[],"redirects":[],
            "sets":[{"name":"ports","elem":"int","maps":[{"map":"xs_ports","kind":"hash_u64","max_entries":4}],"elements":["22"],"capacity":4,"mutable":true}]}"#;
        let meta: super::ObjectMeta = serde_json::from_str(old).expect("reads");
        assert_eq!((meta.sets[0].id, meta.sets[0].maps[0].kind), (None, super::SetMapKind::HashU64));
        assert_eq!(meta.check(), Ok(()));
        let shared = |id: Option<u32>| super::SetMeta {
            name: format!("s{id:?}"),
            elem: super::SetElem::Int,
            maps: vec![super::SetMapMeta { map: super::SETS_HASH_MAP.into(), kind: super::SetMapKind::SharedHash, max_entries: 8 }],
            ipv4_slot: None,
            ipv6_slot: None,
            id,
            elements: Vec::new(),
            capacity: 4,
            mutable: true,
        };
        let with = |sets| super::ObjectMeta { sets, ..meta.clone() };
        assert_eq!(with(vec![shared(Some(0)), shared(Some(1))]).check(), Ok(()));
        assert!(with(vec![shared(Some(1)), shared(Some(1))]).check().is_err());
        assert!(with(vec![shared(None)]).check().is_err());
        // The id leads the IPv6 trie's key (big-endian, 32 bits of the
        // prefix) and follows the value in the hash map's.
        assert_eq!(super::sets_hash_key(3, 0x0102)[..], [2, 1, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0]);
        let k = super::sets_lpm6_key(3, [0x20; 16], 48);
        assert_eq!((&k[..4], &k[4..8], k[8]), (&80u32.to_le_bytes()[..], &[0, 0, 0, 3][..], 0x20));
    }
}
