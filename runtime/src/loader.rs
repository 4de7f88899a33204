//! Loading a compiled policy object: programs verified by the kernel, named
//! sets filled from the object's metadata, and `BPF_PROG_TEST_RUN`.

use crate::sys;
use aya::maps::{Map, MapData};
use aya::programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};
use object::{Object, ObjectSection};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::os::fd::AsFd;
use xpol_lang::ipv4_table::{self, Ipv4Table};
use xpol_lang::ipv6_table::{self, Ipv6Table};
use xpol_lang::meta::{self, KeyKind, ObjectMeta, RuleCounters, SetMapKind};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Synproxy(#[from] crate::synproxy::SynproxyError),
    #[error("the object has no `{}` section: it was not built by xpolc", meta::META_SECTION)]
    NoMetadata,
    #[error("the object's metadata cannot be read: {0}")]
    BadMetadata(String),
    #[error("the object was built for metadata version {found}, this runtime reads version {expected}: rebuild it with this xpolc")]
    MetadataVersion { found: u32, expected: u32 },
    #[error("not a BPF object: {0}")]
    BadObject(String),
    /// Holds the reason in words, naming the missing capabilities.
    #[error("{0}")]
    NotPermitted(String),
    #[error("the kernel verifier rejected program `{program}`: {source}")]
    Verifier { program: String, log: String, source: std::io::Error },
    #[error("cannot load program `{program}`: {message}")]
    Program { program: String, message: String },
    #[error("the policy has no program for hook `{0}`")]
    UnknownHook(String),
    #[error("the policy has no map `{0}`")]
    UnknownMap(String),
    #[error("redirect target `{0}`: no such network interface")]
    UnknownInterface(String),
    #[error("no network interface named `{0}` (see `ip link`)")]
    NoSuchInterface(String),
    #[error("`{iface}` already has an XDP program attached: {holder}")]
    XdpBusy { iface: String, holder: String },
    #[error("the driver of `{iface}` has no native XDP support; use `--mode skb` (or `--mode auto`)")]
    NoNativeXdp { iface: String },
    #[error("cannot attach `{program}` to `{iface}`: {message}")]
    Attach { program: String, iface: String, message: String },
    #[error("set `{set}`: element `{element}` cannot be stored: {reason}")]
    SetElement { set: String, element: String, reason: String },
    /// The elements given for a set do not fit in the maps the compiler
    /// sized for it; `needed` says what overflowed, as words.
    #[error("set `{set}` is full: it holds at most {capacity} elements (declared with `max N`, or the compiler's default), {needed}; rebuild the policy with a larger `max`")]
    SetFull { set: String, capacity: u64, needed: String },
    #[error("the policy has no set `{0}`")]
    UnknownSet(String),
    #[error("map `{map}`: {source}")]
    Map { map: String, source: std::io::Error },
    #[error("BPF_PROG_TEST_RUN failed: {0}")]
    TestRun(String),
    #[error("{0}")]
    Pin(String),
    #[error("{0}")]
    Store(String),
    #[error("refusing to use {}: {reason}. xpol did not make it; someone else may have planted it: inspect it, remove it, and run xpol again", path.display())]
    StoreUnsafe { path: PathBuf, reason: String },
    #[error("no policy is applied as `{0}` (see `xpol list`)")]
    NotApplied(String),
    #[error("policy `{name}`: {message}")]
    Apply { name: String, message: String },
    /// A change to a pool of an applied policy that was refused; nothing
    /// was changed.
    #[error("pool `{pool}` of `{name}`: {message}")]
    Pool { name: String, pool: String, message: String },
    #[error("bpffs: {0}")]
    Bpffs(String),
    #[error("this kernel lacks a feature: {0}")]
    KernelFeature(String),
    /// A replace of a policy this process runs attached
    /// ([`crate::apply::replace_attached`]) did not happen; the old one runs.
    #[error("not replaced, the running version stays: {0}")]
    Replace(String),
}

pub(crate) type Result<T> = std::result::Result<T, RuntimeError>;

/// What a program decided, decoded for its hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Pass,
    Drop,
    Tx,
    Abort,
    Redirect,
    Other(i64),
}

#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub action: Action,
    pub return_value: u32,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
    pub duration_ns: u64,
}

/// One component of a decoded `@map` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyValue {
    Int(u64),
    Ip(IpAddr),
    Mac([u8; 6]),
    Bool(bool),
}

impl fmt::Display for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyValue::Int(i) => write!(f, "{i}"),
            KeyValue::Ip(ip) => write!(f, "{ip}"),
            KeyValue::Mac(m) => write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5]),
            KeyValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// How to attach an XDP program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpAttachMode {
    /// Native when the driver has it, else generic: the kernel chooses.
    #[default]
    Auto,
    /// In the driver; fails when the driver has no XDP support.
    Native,
    /// In the kernel's network stack (works on every interface, slower).
    Generic,
}

/// What the kernel reports about a loaded program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProgramStats {
    /// Size of the verified (translated) BPF code; 8 bytes per instruction.
    pub xlated_bytes: u32,
    /// Size of the JIT-compiled machine code.
    pub jited_bytes: u32,
    /// Instructions the verifier processed.
    pub verified_insns: u32,
    /// Time spent in the program and runs counted while the kernel's BPF
    /// statistics were enabled (`BPF_ENABLE_STATS`, or the sysctl
    /// `kernel.bpf_stats_enabled`); zero otherwise.
    pub run_time_ns: u64,
    pub run_count: u64,
}

#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Leave a redirect slot empty (its `redirect` then aborts) when the
    /// interface does not exist here, instead of failing: for test runs of
    /// policies written for another host.
    pub missing_interfaces_ok: bool,
    /// Give the programs these existing maps (by map name in the object)
    /// instead of new ones: state that a replaced policy hands on. Each
    /// must have the same type, sizes and flags as the object's map.
    pub adopt_maps: Vec<(String, std::sync::Arc<std::os::fd::OwnedFd>)>,
}

/// The maps of a policy with its metadata: enough to read and reset its
/// counters, whether the policy was loaded by this process or pinned by
/// another.
pub struct PolicyMaps {
    meta: ObjectMeta,
    maps: HashMap<String, MapData>,
    cpus: usize,
    /// Counters carried over from earlier generations of an applied
    /// policy, one per counter slot ([`meta::counter_slots`]), added to
    /// what the kernel counts (empty: none).
    base: Vec<RuleCounters>,
}

/// A link keeping a program attached; dropping it detaches.
pub(crate) enum AttachedLink {
    /// A BPF link (XDP from Linux 5.9, tcx from 6.6), with its id: it can
    /// be pinned, and asked whether it is still attached.
    Fd { link: aya::programs::links::FdLink, id: u32 },
    /// A netlink attachment (TC before tcx), held until dropped.
    Netlink { _held: aya::programs::tc::SchedClassifierLink },
}

impl AttachedLink {
    fn fd(link: aya::programs::links::FdLink) -> Result<AttachedLink> {
        let id = link.info().map_err(|e| RuntimeError::Pin(format!("link info: {e}")))?.id();
        Ok(AttachedLink::Fd { link, id })
    }
}

/// A policy loaded in the kernel, attached to nothing until [`LoadedPolicy::attach`].
pub struct LoadedPolicy {
    // Links first: fields drop in order, and links must go before programs.
    links: Vec<(String, AttachedLink)>,
    ebpf: Ebpf,
    state: PolicyMaps,
}

/// Reads the metadata section of an object.
pub fn read_meta(object: &[u8]) -> Result<ObjectMeta> {
    let file = object::File::parse(object).map_err(|e| RuntimeError::BadObject(e.to_string()))?;
    let section = file.section_by_name(meta::META_SECTION).ok_or(RuntimeError::NoMetadata)?;
    let data = section.data().map_err(|e| RuntimeError::BadMetadata(e.to_string()))?;
    let meta: ObjectMeta = serde_json::from_slice(data).map_err(|e| RuntimeError::BadMetadata(e.to_string()))?;
    if meta.version != meta::META_VERSION {
        return Err(RuntimeError::MetadataVersion { found: meta.version, expected: meta::META_VERSION });
    }
    meta.check().map_err(RuntimeError::BadMetadata)?;
    Ok(meta)
}

/// Makes the object's map `name` the existing map `existing`, before any
/// program is loaded (see [`sys::replace_fd`]), after checking that the
/// two have the same type, sizes and flags.
fn adopt_map(ebpf: &Ebpf, name: &str, existing: &std::os::fd::OwnedFd) -> Result<()> {
    let map = ebpf.map(name).ok_or_else(|| RuntimeError::UnknownMap(name.to_string()))?;
    let data = match map {
        Map::Array(m) | Map::HashMap(m) | Map::LruHashMap(m) | Map::PerCpuHashMap(m) | Map::PerCpuArray(m) | Map::LpmTrie(m) => m,
        _ => return Err(RuntimeError::UnknownMap(name.to_string())),
    };
    let err = |e: aya::maps::MapError| RuntimeError::Map { map: name.to_string(), source: std::io::Error::other(e.to_string()) };
    let new = data.info().map_err(err)?;
    let dup = existing.try_clone().map_err(|source| RuntimeError::Map { map: name.to_string(), source })?;
    let old = MapData::from_fd(dup).map_err(err)?.info().map_err(err)?;
    let shape = |i: &aya::maps::MapInfo| (i.map_type().ok().map(|t| t as u32), i.key_size(), i.value_size(), i.max_entries(), i.map_flags());
    if shape(&new) != shape(&old) {
        return Err(RuntimeError::Map { map: name.to_string(), source: std::io::Error::other("the existing map has another type or size") });
    }
    sys::replace_fd(existing.as_fd(), data.fd().as_fd()).map_err(|source| RuntimeError::Map { map: name.to_string(), source })
}

/// Puts a mappable array map (`BPF_F_MMAPABLE`) of the same sizes in place
/// of the object's array map `name`, before any program is loaded: the
/// IPv4 tables (in `.bss` or arrays of their own), which `xpol set` then
/// changes word by word through a mapping (`ipv4_edit`). aya creates maps
/// without the flag, and it cannot be added to an existing map.
fn make_mappable(ebpf: &Ebpf, name: &str) -> Result<()> {
    let err = |source: std::io::Error| RuntimeError::Map { map: name.to_string(), source };
    let Some(Map::Array(data)) = ebpf.map(name) else { return Err(RuntimeError::UnknownMap(name.to_string())) };
    let info = data.info().map_err(|e| err(std::io::Error::other(e.to_string())))?;
    let mappable = match sys::mmapable_array_create(info.name_as_str().unwrap_or("xpol_v4tables"), info.value_size(), info.max_entries()) {
        Ok(fd) => fd,
        // Before Linux 5.5 arrays cannot be mapped: keep aya's map; `xpol
        // set` then changes IPv4 prefixes by reloading (`ipv4_edit` finds
        // the tables unmappable).
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(()),
        Err(e) => return Err(err(e)),
    };
    sys::replace_fd(mappable.as_fd(), data.fd().as_fd()).map_err(err)
}

/// Refuses maps whose key or value size in the kernel is not what the
/// metadata says: xpol sizes its buffers from the metadata, and the kernel
/// writes (lookups) or reads (updates) the map's own sizes, so a metadata
/// that understates them (an object changed after xpolc built it, a
/// planted pin) would have the kernel write past a buffer. `what` names
/// where the maps come from. The IPv4 tables are checked where they are
/// written (`fill_ipv4_tables`, `ipv4_edit`), as their sizes depend on
/// their placement.
fn check_map_shapes(maps: &HashMap<String, MapData>, meta: &ObjectMeta, what: &str) -> Result<()> {
    let mut expected: Vec<(&str, u32, u32)> = vec![(meta::RULES_MAP, 4, 16)];
    expected.extend(meta.maps.iter().map(|m| (m.map.as_str(), m.key_size, 8)));
    expected.extend(meta.limits.iter().map(|l| (l.map.as_str(), l.key_size, meta::LIMIT_VALUE_SIZE)));
    if !meta.redirects.is_empty() {
        expected.push((meta::REDIRECT_MAP, 4, 4));
    }
    if let Some(ct) = &meta.conntrack {
        expected.push((ct.map.as_str(), meta::CT_KEY_SIZE, meta::CT_VALUE_SIZE));
    }
    expected.extend(meta.dynsets.iter().map(|d| (d.map.as_str(), d.key_size, d.value_size)));
    if let Some(ring) = &meta.log_ring {
        // A ring buffer has no key or value; its size is checked where
        // it is read (`crate::log`).
        expected.extend([(ring.map.as_str(), 0, 0), (ring.lost_map.as_str(), 4, 8)]);
    }
    for m in meta.sets.iter().flat_map(|s| &s.maps) {
        match m.kind {
            SetMapKind::LpmV4 | SetMapKind::HashU64 | SetMapKind::LpmV6 | SetMapKind::SharedHash | SetMapKind::SharedLpmV6 => {
                expected.push((&m.map, m.kind.key_size().expect("a map of an element per key"), 1))
            }
            SetMapKind::Ipv6Node => expected.push((&m.map, 4, ipv6_table::NODE_BYTES)),
            SetMapKind::Ipv6Tail => expected.push((&m.map, 4, ipv6_table::TAIL_BYTES)),
            SetMapKind::Ipv6Root | SetMapKind::Ipv4Root | SetMapKind::Ipv4Mid16 | SetMapKind::Ipv4Mid32 | SetMapKind::Ipv4Leaf => {}
        }
    }
    for p in &meta.pools {
        expected.extend([
            (p.ring_map.as_str(), 4, 4),
            (p.control_map.as_str(), 4, 4),
            (p.backends_map.as_str(), 4, std::mem::size_of::<meta::BackendValue>() as u32),
            (p.flows_map.as_str(), std::mem::size_of::<meta::FlowKey>() as u32, std::mem::size_of::<meta::FlowValue>() as u32),
            (p.stats_map.as_str(), 4, std::mem::size_of::<meta::BackendCounters>() as u32),
        ]);
        if let Some(nat) = &p.nat_map {
            expected.push((nat.as_str(), std::mem::size_of::<meta::FlowKey>() as u32, std::mem::size_of::<meta::NatValue>() as u32));
        }
    }
    for (map, key, value) in expected {
        let Some(data) = maps.get(map) else { continue };
        let info = data.info().map_err(|e| RuntimeError::Map { map: map.to_string(), source: std::io::Error::other(e.to_string()) })?;
        let (k, v) = (info.key_size(), info.value_size());
        if (k, v) != (key, value) {
            return Err(RuntimeError::BadMetadata(format!(
                "the {what} `{map}` has {k}-byte keys and {v}-byte values, the metadata says {key} and {value}: the object was changed after xpolc built it; rebuild it"
            )));
        }
    }
    Ok(())
}

fn map_data(map: Map) -> Option<MapData> {
    match map {
        Map::Array(m) | Map::HashMap(m) | Map::LruHashMap(m) | Map::PerCpuHashMap(m) | Map::PerCpuArray(m) | Map::LpmTrie(m) | Map::RingBuf(m) => Some(m),
        _ => None,
    }
}

impl LoadedPolicy {
    /// Loads every program of the object (the kernel verifies each), and
    /// fills named sets and redirect targets.
    pub fn load(object: &[u8]) -> Result<LoadedPolicy> {
        Self::load_with(object, &LoadOptions::default())
    }

    pub fn load_with(object: &[u8], options: &LoadOptions) -> Result<LoadedPolicy> {
        Self::load_inner(object, options, None, &HashMap::new())
    }

    /// As [`LoadedPolicy::load_with`], but each set named in `elements` is
    /// filled with the elements given there (in the canonical text form of
    /// [`meta::SetMeta::elements`]: `198.51.100.0/24`, `2001:db8::/32`,
    /// `80`, `8000..8099`, `02:00:00:00:00:01`) instead of those in the
    /// object; [`LoadedPolicy::meta`] then lists them. Fails with
    /// [`RuntimeError::SetFull`] when they do not fit in the set's maps.
    pub fn load_with_elements(object: &[u8], options: &LoadOptions, elements: &HashMap<String, Vec<String>>) -> Result<LoadedPolicy> {
        Self::load_inner(object, options, None, elements)
    }

    /// Test-only: as [`LoadedPolicy::load_with`], but every map of a named
    /// set (but the IPv4 and IPv6 tables) holds at most `capacity` entries,
    /// those the sets share in all, so that filling more fails as a full
    /// map does (`E2BIG`). Never used by the binaries.
    #[doc(hidden)]
    pub fn load_with_set_capacity(object: &[u8], options: &LoadOptions, capacity: u32) -> Result<LoadedPolicy> {
        Self::load_inner(object, options, Some(capacity), &HashMap::new())
    }

    fn load_inner(object: &[u8], options: &LoadOptions, set_capacity: Option<u32>, elements: &HashMap<String, Vec<String>>) -> Result<LoadedPolicy> {
        let mut meta = read_meta(object)?;
        for (name, list) in elements {
            let set = meta.sets.iter_mut().find(|s| &s.name == name).ok_or_else(|| RuntimeError::UnknownSet(name.clone()))?;
            set.elements = list.clone();
        }
        if let Err(reason) = sys::can_load_bpf() {
            return Err(RuntimeError::NotPermitted(reason));
        }
        // Before the verifier, which would only say "unknown func".
        if !meta.synproxies.is_empty() {
            crate::synproxy::check_kernel()?;
        }
        let mut loader = EbpfLoader::new();
        if let Some(n) = set_capacity {
            // The IPv4 tables are one-entry maps in global data; their
            // capacity is their value's size.
            for m in meta.sets.iter().flat_map(|s| &s.maps).filter(|m| !m.kind.is_shared_table()) {
                loader.map_max_entries(&m.map, n);
            }
        }
        // The IPv6 tables' maps take what these elements need: built here
        // once, written once the maps exist.
        let ipv6 = build_ipv6_tables(&meta)?;
        if let Some(t) = &ipv6 {
            // Room for in-place changes (`ipv6_edit`): a quarter more, 256
            // nodes (256 KiB) and 1,024 tails at least; a change that finds
            // too little reloads, which sizes them again.
            let room = |n: usize, least: usize| u32::try_from(n + (n / 4).max(least)).unwrap_or(u32::MAX);
            loader.map_max_entries(meta::IPV6_NODES_MAP, room(t.nodes.len(), 256).min(ipv6_table::MAX_NODES as u32));
            loader.map_max_entries(meta::IPV6_TAILS_MAP, room(t.tails.len(), 1024));
        }
        let mut ebpf = loader.load(object).map_err(|e| match e {
            // The kernel refused a map: say which, with its errno.
            aya::EbpfError::MapError(aya::maps::MapError::CreateError { name, io_error }) => RuntimeError::Map { map: name, source: io_error },
            e => RuntimeError::BadObject(e.to_string()),
        })?;
        // The IPv4 and IPv6 tables change in place through mappings
        // (`ipv4_edit`, `ipv6_edit`).
        let mut tables: Vec<&str> = meta.sets.iter().flat_map(|s| &s.maps).filter(|m| m.kind.is_shared_table()).map(|m| m.map.as_str()).collect();
        tables.sort_unstable();
        tables.dedup();
        for map in tables {
            make_mappable(&ebpf, map)?;
        }
        for (name, existing) in &options.adopt_maps {
            adopt_map(&ebpf, name, existing)?;
        }
        for p in &meta.programs {
            let prog = ebpf.program_mut(&p.name).ok_or_else(|| RuntimeError::Program {
                program: p.name.clone(),
                message: "missing from the object".into(),
            })?;
            let loaded = if p.hook == "xdp" {
                let x: &mut Xdp = prog.try_into().map_err(|e: ProgramError| program_error(&p.name, e))?;
                x.load()
            } else {
                let c: &mut SchedClassifier = prog.try_into().map_err(|e: ProgramError| program_error(&p.name, e))?;
                c.load()
            };
            loaded.map_err(|e| program_error(&p.name, e))?;
        }
        let names: Vec<String> = ebpf.maps().map(|(n, _)| n.to_string()).collect();
        let mut maps = HashMap::new();
        for name in names {
            if let Some(data) = ebpf.take_map(&name).and_then(map_data) {
                maps.insert(name, data);
            }
        }
        check_map_shapes(&maps, &meta, "object's map")?;
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| RuntimeError::TestRun(format!("{what}: {e}")))?;
        let mut policy = LoadedPolicy { links: Vec::new(), ebpf, state: PolicyMaps { meta, maps, cpus, base: Vec::new() } };
        policy.fill_sets(ipv6.as_ref())?;
        if let Some(t) = &ipv6 {
            policy.fill_ipv6_tables(t)?;
        }
        policy.fill_redirects(options.missing_interfaces_ok)?;
        // A pool whose maps a replace handed on keeps its live contents.
        let adopted = |m: &str| options.adopt_maps.iter().any(|(name, _)| name == m);
        let carried: Vec<String> = policy.state.meta.pools.iter().filter(|p| adopted(&p.ring_map) && adopted(&p.backends_map)).map(|p| p.name.clone()).collect();
        policy.state.fill_pools(&carried)?;
        Ok(policy)
    }

    pub fn meta(&self) -> &ObjectMeta {
        &self.state.meta
    }

    /// The counters and maps, for reading.
    pub fn maps(&self) -> &PolicyMaps {
        &self.state
    }

    /// Per-rule counters summed over CPUs, indexed by rule id.
    pub fn rule_counters(&self) -> Result<Vec<RuleCounters>> {
        self.state.rule_counters()
    }

    /// Updates lost per `@map` (in [`ObjectMeta::maps`] order), see
    /// [`PolicyMaps::lost_updates`].
    pub fn lost_updates(&self) -> Result<Vec<u64>> {
        self.state.lost_updates()
    }

    pub fn reset_counters(&mut self) -> Result<()> {
        self.state.reset_counters()
    }

    /// Entries of `@name`, keys decoded, values summed over CPUs.
    pub fn map_entries(&self, name: &str) -> Result<Vec<(Vec<KeyValue>, u64)>> {
        self.state.map_entries(name)
    }

    /// See [`PolicyMaps::limit_buckets`].
    pub fn limit_buckets(&self, limit: usize) -> Result<Vec<LimitBucket>> {
        self.state.limit_buckets(limit)
    }

    /// See [`PolicyMaps::advance_limits`].
    pub fn advance_limits(&self, ns: u64) -> Result<()> {
        self.state.advance_limits(ns)
    }

    /// See [`PolicyMaps::set_limit_credit`].
    pub fn set_limit_credit(&self, limit: usize, credit: impl Fn(&[KeyValue]) -> Option<u64>) -> Result<Vec<Vec<KeyValue>>> {
        self.state.set_limit_credit(limit, credit)
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    fn fill_sets(&mut self, ipv6: Option<&Ipv6Table>) -> Result<()> {
        for set in &self.state.meta.sets {
            check_set_fits(set)?;
        }
        // The IPv6 roots and wide nodes in global data, where the compiler
        // put them.
        let roots = match (ipv6, ipv6_global_layout(&self.state.meta)?) {
            (Some(t), Some(layout)) => {
                let slots = self.state.meta.sets.iter().filter(|s| s.ipv6_slot.is_some()).count();
                Some((layout.roots as usize, ipv6_table::global_bytes(t, slots, &layout)))
            }
            _ => None,
        };
        self.fill_ipv4_tables(roots)?;
        for set in &self.state.meta.sets {
            for m in set.maps.iter().filter(|m| !m.kind.is_shared_table()) {
                for element in &set.elements {
                    // Every element of a set with IPv4 tables was parsed
                    // there (a bad one failed the load): its IPv6 trie
                    // holds none without a colon. A million IPv4 prefixes
                    // are not parsed twice.
                    if matches!(m.kind, SetMapKind::LpmV6 | SetMapKind::SharedLpmV6) && set.ipv4_slot.is_some() && !element.contains(':') {
                        continue;
                    }
                    let keys = set_keys(set, m.kind, element).map_err(|reason| element_error(set, element, reason))?;
                    for key in keys {
                        self.state.update(&m.map, &key, &[1]).map_err(|e| self.state.set_full(set, m, e))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Builds the IPv4 prefix tables of the sets (as the compiler did to
    /// size the maps), one after another in slot order, and writes them
    /// into the shared tables.
    fn fill_ipv4_tables(&self, roots: Option<(usize, Vec<u8>)>) -> Result<()> {
        let mut sets: Vec<&meta::SetMeta> = self.state.meta.sets.iter().filter(|s| s.ipv4_slot.is_some()).collect();
        if sets.is_empty() {
            return match roots {
                Some((at, bytes)) => self.write_global_tables(vec![0u8; at], Some((at, bytes))),
                None => Ok(()),
            };
        }
        sets.sort_by_key(|s| s.ipv4_slot);
        let mut tables = Vec::new();
        for (slot, set) in sets.iter().enumerate() {
            if set.ipv4_slot != Some(slot as u32) {
                return Err(RuntimeError::BadMetadata(format!("set `{}` has IPv4 slot {:?}, expected {slot}", set.name, set.ipv4_slot)));
            }
            tables.push(Ipv4Table::build(ipv4_prefixes(set)?));
        }
        let shape = Ipv4Shape::of(sets[0])?;
        shape.check_fits(&sets, &tables)?;
        let table = Ipv4Table::concat(&tables);
        let wide = shape.mid_wide;
        if table.root.len() as u64 > shape.capacities[0] || (!wide && table.mid_wide()) {
            return Err(ipv4_wrong_shape());
        }
        // Each table where the compiler put it (`ipv4_table::placement`,
        // from the capacities in the metadata): global data (`.bss`),
        // written whole in one update, or an array map, one chunk per entry.
        let [root, mid, leaf] = shape.capacities;
        let (places, global_bytes) = ipv4_table::placement(root, mid, leaf, wide);
        // Each table as its bytes, chunk after chunk, and its chunk size.
        let tables: [(Vec<u8>, usize); 3] = [
            (table.root.iter().flat_map(|e| e.to_le_bytes()).collect(), 4),
            (mid_bytes(&table, wide), Ipv4Table::mid_chunk_bytes(wide) as usize),
            (table.leaf.concat(), ipv4_table::LEAF_BYTES as usize),
        ];
        let mut global = vec![0u8; global_bytes as usize];
        for ((place, map), (bytes, chunk_bytes)) in places.iter().zip(shape.maps).zip(&tables) {
            let in_global = matches!(place, ipv4_table::Placement::Global { .. });
            if in_global != (map == meta::IPV4_TABLES_MAP) {
                return Err(ipv4_wrong_shape());
            }
            match place {
                ipv4_table::Placement::Global { offset } => {
                    global[*offset as usize..*offset as usize + bytes.len()].copy_from_slice(bytes);
                }
                ipv4_table::Placement::Map => {
                    // Each update hands the kernel one chunk: the map's
                    // value must be exactly that (see `check_map_shapes`).
                    let info = self.state.map(map)?.info().map_err(|e| RuntimeError::BadMetadata(format!("map `{map}`: {e}")))?;
                    if (info.key_size(), info.value_size()) != (4, *chunk_bytes as u32) {
                        return Err(ipv4_wrong_shape());
                    }
                    // Through a mapping (the loader made the map mappable:
                    // `make_mappable`), in one copy: a million prefixes
                    // fill some 500,000 chunks, a system call each
                    // otherwise. The chunks are 8-byte multiples, so the
                    // map's values lie back to back as in `bytes`.
                    let fd = self.state.map(map)?.fd().as_fd();
                    if *chunk_bytes % 8 == 0 && !bytes.is_empty() {
                        if let Ok(mapped) = sys::MappedValue::map(fd, bytes.len()) {
                            mapped.write(0, bytes);
                            continue;
                        }
                    }
                    // Before Linux 5.5 (no mappable arrays), an update
                    // per chunk; zero chunks are there already (an array
                    // map starts zeroed).
                    for (i, chunk) in bytes.chunks_exact(*chunk_bytes).enumerate().filter(|(_, c)| c.iter().any(|&b| b != 0)) {
                        self.state.update(map, &(i as u32).to_le_bytes(), chunk)?;
                    }
                }
            }
        }
        self.write_global_tables(global, roots)
    }

    /// Writes the tables in global data: `global` (the IPv4 tables'
    /// share) and the IPv6 roots at their offset.
    fn write_global_tables(&self, mut global: Vec<u8>, roots: Option<(usize, Vec<u8>)>) -> Result<()> {
        if let Some((at, bytes)) = roots {
            global.resize(global.len().max(at + bytes.len()), 0);
            global[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        if global.is_empty() {
            return Ok(());
        }
        let map = meta::IPV4_TABLES_MAP;
        let size = self.state.value_size(map)?;
        if size < global.len() as u64 {
            return Err(RuntimeError::BadMetadata(format!("the object's map `{map}` is smaller than its sets' tables: rebuild the object")));
        }
        global.resize(size as usize, 0);
        // The whole value in one update: the program never sees a table
        // half written, as it is not attached yet.
        self.state.update(map, &0u32.to_le_bytes(), &global)
    }



    /// Writes the IPv6 tables ([`build_ipv6_tables`]) into their maps,
    /// sized to them at load: nodes and tails that are not all zeroes (an
    /// array map starts zeroed).
    fn fill_ipv6_tables(&self, t: &Ipv6Table) -> Result<()> {
        for (i, _) in t.nodes.iter().enumerate().filter(|(_, n)| n.iter().any(|&e| e != ipv6_table::MISS)) {
            self.state.update(meta::IPV6_NODES_MAP, &(i as u32).to_le_bytes(), &t.node_bytes(i))?;
        }
        for (i, tail) in t.tails.iter().enumerate() {
            self.state.update(meta::IPV6_TAILS_MAP, &(i as u32).to_le_bytes(), &tail.bytes())?;
        }
        Ok(())
    }

    fn fill_redirects(&mut self, missing_ok: bool) -> Result<()> {
        for (slot, ifname) in self.state.meta.redirects.iter().enumerate() {
            let ifindex = sys::if_nametoindex(ifname);
            if ifindex == 0 {
                if missing_ok {
                    continue;
                }
                return Err(RuntimeError::UnknownInterface(ifname.clone()));
            }
            self.state.update(meta::REDIRECT_MAP, &(slot as u32).to_le_bytes(), &ifindex.to_le_bytes())?;
        }
        Ok(())
    }

    fn program_name(&self, hook: &str) -> Result<String> {
        self.state.meta.programs.iter().find(|p| p.hook == hook).map(|p| p.name.clone()).ok_or_else(|| RuntimeError::UnknownHook(hook.to_string()))
    }

    fn run(&mut self, hook: &str, packet: &[u8], repeat: u32) -> Result<RunOutcome> {
        let name = self.program_name(hook)?;
        let prog = self.ebpf.program_mut(&name).ok_or_else(|| RuntimeError::UnknownHook(hook.to_string()))?;
        // XDP may grow the packet (up to the headroom); leave room.
        let mut out = vec![0u8; packet.len() + 512];
        let opts = TestRunOptions { data_in: Some(packet), data_out: Some(&mut out), repeat, ..Default::default() };
        let r = if hook == "xdp" {
            let x: &mut Xdp = prog.try_into().map_err(|e: ProgramError| RuntimeError::TestRun(e.to_string()))?;
            x.test_run(opts)
        } else {
            let c: &mut SchedClassifier = prog.try_into().map_err(|e: ProgramError| RuntimeError::TestRun(e.to_string()))?;
            c.test_run(opts)
        }
        .map_err(|e| RuntimeError::TestRun(format!("{e} (packet of {} bytes; the kernel test-runs XDP on 14 bytes or more, TC on more than 14)", packet.len())))?;
        out.truncate((r.data_size_out as usize).min(out.len()));
        Ok(RunOutcome { action: decode_action(hook, r.return_value), return_value: r.return_value, packet: out, duration_ns: r.duration.as_nanos() as u64 })
    }

    /// Runs the program of `hook` (`xdp`, `tc:ingress`, `tc:egress`) once on
    /// `packet` with `BPF_PROG_TEST_RUN`.
    pub fn test_run(&mut self, hook: &str, packet: &[u8]) -> Result<RunOutcome> {
        self.run(hook, packet, 1)
    }

    /// Nanoseconds per run over `repeat` runs, as the kernel measured them.
    pub fn bench(&mut self, hook: &str, packet: &[u8], repeat: u32) -> Result<f64> {
        let r = self.run(hook, packet, repeat)?;
        Ok(r.duration_ns as f64)
    }

    /// Attaches the program of `hook` to `iface` through a BPF link (XDP;
    /// TC via tcx on kernels from 6.6, else a clsact qdisc). Dropping the
    /// policy detaches it, and so does the kernel when the process dies,
    /// since the link lives only as long as its file descriptor.
    pub fn attach(&mut self, hook: &str, iface: &str, mode: XdpAttachMode) -> Result<()> {
        if sys::if_nametoindex(iface) == 0 {
            return Err(RuntimeError::NoSuchInterface(iface.to_string()));
        }
        let name = self.program_name(hook)?;
        let prog = self.ebpf.program_mut(&name).ok_or_else(|| RuntimeError::UnknownHook(hook.to_string()))?;
        let attach_error = |e: ProgramError| {
            let errno = match &e {
                ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
                _ => None,
            };
            match errno {
                Some(libc::EBUSY) | Some(libc::EEXIST) => RuntimeError::XdpBusy { iface: iface.to_string(), holder: xdp_holder(iface, None) },
                Some(libc::EOPNOTSUPP) if mode == XdpAttachMode::Native => RuntimeError::NoNativeXdp { iface: iface.to_string() },
                Some(libc::EPERM) => RuntimeError::NotPermitted(format!("not permitted to attach to `{iface}`: CAP_NET_ADMIN is needed ({e})")),
                _ => RuntimeError::Attach { program: name.clone(), iface: iface.to_string(), message: e.to_string() },
            }
        };
        if hook == "xdp" {
            let x: &mut Xdp = prog.try_into().map_err(attach_error)?;
            let mode = match mode {
                XdpAttachMode::Auto => aya::programs::XdpMode::Default,
                XdpAttachMode::Native => aya::programs::XdpMode::Driver,
                XdpAttachMode::Generic => aya::programs::XdpMode::Skb,
            };
            let id = x.attach(iface, mode).map_err(attach_error)?;
            let link = x.take_link(id).map_err(attach_error)?;
            // aya attaches XDP through a BPF link wherever the kernel has them (5.9).
            let link = aya::programs::links::FdLink::try_from(link).map_err(|e| {
                RuntimeError::KernelFeature(format!("XDP through BPF links needs Linux 5.9 ({e})"))
            })?;
            self.links.push((hook.to_string(), AttachedLink::fd(link)?));
        } else {
            let attach_type = if hook == "tc:ingress" { aya::programs::TcAttachType::Ingress } else { aya::programs::TcAttachType::Egress };
            // tcx needs no qdisc; older kernels attach below a clsact qdisc,
            // which may already be there.
            let tcx = aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
            if !tcx {
                let _ = aya::programs::tc::qdisc_add_clsact(iface);
            }
            let c: &mut SchedClassifier = prog.try_into().map_err(attach_error)?;
            let id = c.attach(iface, attach_type).map_err(attach_error)?;
            let link = c.take_link(id).map_err(attach_error)?;
            let link = if tcx {
                let fd = aya::programs::links::FdLink::try_from(link).map_err(|e| RuntimeError::Attach {
                    program: name.clone(),
                    iface: iface.to_string(),
                    message: format!("a tcx attachment without a BPF link: {e}"),
                })?;
                AttachedLink::fd(fd)?
            } else {
                AttachedLink::Netlink { _held: link }
            };
            self.links.push((hook.to_string(), link));
        }
        Ok(())
    }

    /// Pins the maps other processes use: the object's own maps, the
    /// counters in global data (`xpol stats`) and the IPv4 set tables in
    /// global data (`xpol set`); not the rest of global data. bpffs
    /// refuses dots in names: global data is pinned under [`pin_file`]'s name.
    pub(crate) fn pin_maps(&self, dir: &Path) -> Result<()> {
        let pinned = |m: &str| !m.starts_with('.') || m == meta::COUNTERS_MAP || m == meta::IPV4_TABLES_MAP;
        for (map, data) in self.state.maps.iter().filter(|(m, _)| pinned(m)) {
            data.pin(dir.join(pin_file(map))).map_err(|e| RuntimeError::Pin(format!("map {map}: {e}")))?;
        }
        Ok(())
    }

    /// Pins the link attached last at `path`: the pin keeps the program
    /// attached after this process exits.
    pub(crate) fn pin_last_link(&mut self, path: &Path) -> Result<()> {
        let Some((hook, link)) = self.links.pop() else { return Err(RuntimeError::Pin("nothing attached to pin".into())) };
        let AttachedLink::Fd { link: fd, .. } = link else {
            return Err(RuntimeError::KernelFeature(format!(
                "keeping `{hook}` attached needs BPF links, which this kernel does not offer for it: TC links (tcx) need Linux 6.6"
            )));
        };
        // The pin keeps the link: dropping this handle leaves it attached.
        fd.pin(path).map_err(|e| RuntimeError::Pin(format!("{}: {e}", path.display())))?;
        Ok(())
    }

    /// The program of `hook`, loaded.
    pub fn program_fd(&self, hook: &str) -> Result<std::os::fd::BorrowedFd<'_>> {
        let name = self.program_name(hook)?;
        let prog = self.ebpf.program(&name).ok_or_else(|| RuntimeError::UnknownHook(hook.to_string()))?;
        let fd = prog.fd().map_err(|e| RuntimeError::Program { program: name.clone(), message: e.to_string() })?;
        Ok(fd.as_fd())
    }

    /// The live state of each link this process holds: (hook, attached).
    /// A link is detached when its interface went away or someone detached
    /// it from outside; the kernel then reports no interface for it.
    pub fn links_attached(&self) -> Vec<(String, bool)> {
        self.links
            .iter()
            .map(|(hook, link)| {
                let attached = match link {
                    AttachedLink::Fd { id, .. } => sys::link_fd_by_id(*id).and_then(|fd| sys::link_info(fd.as_fd())).map_or(true, |i| i.ifindex != 0),
                    // A netlink attachment cannot be asked; assume it holds.
                    AttachedLink::Netlink { .. } => true,
                };
                (hook.clone(), attached)
            })
            .collect()
    }

    /// The links this policy holds, taken out (for the policy replacing
    /// it: a link moved there stays attached when this one is dropped).
    pub(crate) fn take_links(&mut self) -> Vec<(String, AttachedLink)> {
        std::mem::take(&mut self.links)
    }

    /// Holds `links` from now on; dropping this policy detaches them.
    pub(crate) fn hold_links(&mut self, links: Vec<(String, AttachedLink)>) {
        self.links.extend(links);
    }

    /// Counters that earlier programs counted, added to this policy's from
    /// now on (as the pinned `base` of an applied policy is).
    pub(crate) fn set_base(&mut self, base: Vec<RuleCounters>) {
        self.state.base = base;
    }

    /// Sizes and verifier work of the program of `hook`.
    pub fn program_stats(&mut self, hook: &str) -> Result<ProgramStats> {
        let name = self.program_name(hook)?;
        let prog = self.ebpf.program_mut(&name).ok_or_else(|| RuntimeError::UnknownHook(hook.to_string()))?;
        let err = |e: ProgramError| RuntimeError::Program { program: name.clone(), message: e.to_string() };
        let info = if hook == "xdp" {
            let x: &mut Xdp = prog.try_into().map_err(err)?;
            x.info()
        } else {
            let c: &mut SchedClassifier = prog.try_into().map_err(err)?;
            c.info()
        }
        .map_err(|e| RuntimeError::Program { program: name.clone(), message: e.to_string() })?;
        Ok(ProgramStats {
            xlated_bytes: info.size_translated().unwrap_or(0),
            jited_bytes: info.size_jitted(),
            verified_insns: info.verified_instruction_count().unwrap_or(0),
            run_time_ns: info.run_time().as_nanos() as u64,
            run_count: info.run_count(),
        })
    }

}

impl PolicyMaps {
    pub fn meta(&self) -> &ObjectMeta {
        &self.meta
    }

    /// The maps pinned in `dir` (a generation of an applied policy, see
    /// [`crate::store`]), with the counters carried over into it.
    pub(crate) fn open_dir(dir: &Path, meta: ObjectMeta, base: Vec<RuleCounters>) -> Result<PolicyMaps> {
        let mut maps = HashMap::new();
        let entries = std::fs::read_dir(dir).map_err(|e| RuntimeError::Store(format!("{}: {e}", dir.display())))?;
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file == "record" || file == "base" || file.starts_with("elems_") {
                continue;
            }
            let data = MapData::from_pin(entry.path()).map_err(|e| RuntimeError::Store(format!("map {file}: {e}")))?;
            maps.insert(map_of_pin_file(&file), data);
        }
        check_map_shapes(&maps, &meta, "pinned map")?;
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| RuntimeError::TestRun(format!("{what}: {e}")))?;
        Ok(PolicyMaps { meta, maps, cpus, base })
    }

    /// A pinned map of this policy by its name in the object, for handing
    /// on to the next generation.
    pub(crate) fn map_fd(&self, name: &str) -> Result<std::os::fd::OwnedFd> {
        self.map(name)?.fd().as_fd().try_clone_to_owned().map_err(|source| RuntimeError::Map { map: name.to_string(), source })
    }

    fn map(&self, name: &str) -> Result<&MapData> {
        self.maps.get(name).ok_or_else(|| RuntimeError::UnknownMap(name.to_string()))
    }

    /// The file descriptor of map `name` (for reading its kernel
    /// accounting, as the benchmarks do).
    pub fn borrowed_map_fd(&self, name: &str) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.maps.get(name).map(|m| m.fd().as_fd())
    }

    /// The object has a map of this name (in the object, not as loaded).
    pub fn has_map(&self, name: &str) -> bool {
        self.maps.contains_key(name)
    }

    pub(crate) fn map_data(&self, name: &str) -> Result<&MapData> {
        self.map(name)
    }

    /// The CPUs a per-CPU map has a value for.
    pub(crate) fn cpus(&self) -> usize {
        self.cpus
    }

    /// The kernel's value size of `map`.
    fn value_size(&self, map: &str) -> Result<u64> {
        Ok(self.map(map)?.info().map_err(|e| RuntimeError::BadMetadata(format!("map `{map}`: {e}")))?.value_size() as u64)
    }

    /// The counters' blocks in global data, checked against the metadata
    /// (a lookup writes the whole value, whatever the buffer's size).
    fn counter_blocks(&self) -> Result<(&'static str, usize)> {
        let map = meta::COUNTERS_MAP;
        let bytes = self.meta.counters.bytes();
        if self.value_size(map)? != bytes {
            return Err(RuntimeError::BadMetadata(format!("the object's map `{map}` does not hold the {bytes} bytes of counters its metadata says")));
        }
        Ok((map, bytes as usize))
    }

    /// Writes one entry of the policy's map `map` (its name in the object)
    /// as the kernel stores it: for tools and tests that change state the
    /// metadata describes (a pool's backends, ring or control word:
    /// `meta::PoolMeta`) without a dedicated call.
    pub fn update(&self, map: &str, key: &[u8], value: &[u8]) -> Result<()> {
        sys::map_update(self.map(map)?.fd().as_fd(), key, value, 0).map_err(|source| RuntimeError::Map { map: map.to_string(), source })
    }

    /// `error`, from adding an element of `set` to its map `m`, as
    /// [`RuntimeError::SetFull`] when the kernel says the map is full: a
    /// hash map with E2BIG, an LPM trie with ENOSPC.
    fn set_full(&self, set: &meta::SetMeta, m: &meta::SetMapMeta, error: RuntimeError) -> RuntimeError {
        match &error {
            RuntimeError::Map { source, .. } if matches!(source.raw_os_error(), Some(libc::E2BIG) | Some(libc::ENOSPC)) => {
                // The map's own size: a test may have loaded it smaller than the metadata says.
                let capacity = self.map(&m.map).ok().and_then(|d| d.info().ok()).map_or(u64::from(m.max_entries), |i| u64::from(i.max_entries()));
                RuntimeError::SetFull {
                    set: set.name.clone(),
                    capacity,
                    needed: format!("and the kernel refused more in its map `{}` ({source})", m.map),
                }
            }
            _ => error,
        }
    }

    /// Per-rule counters summed over CPUs, indexed by rule id: the CPUs'
    /// blocks in global data ([`meta::COUNTERS_MAP`]) plus the per-CPU
    /// array for CPUs past them ([`meta::RULES_MAP`]).
    pub fn rule_counters(&self) -> Result<Vec<RuleCounters>> {
        let mut out = self.slot_counters()?;
        out.truncate(self.meta.rules.len());
        Ok(out)
    }

    /// Updates lost per `@map`, in [`ObjectMeta::maps`] order: those that
    /// did not fit in the full map since the first apply (carried across a
    /// replace with the map). 0 for objects from before they were counted.
    pub fn lost_updates(&self) -> Result<Vec<u64>> {
        let slots = self.slot_counters()?;
        Ok(self.meta.maps.iter().map(|m| m.lost_slot.and_then(|s| slots.get(s as usize)).map_or(0, |c| c.packets)).collect())
    }

    /// Every counter slot ([`meta::counter_slots`]: the rules', then the
    /// maps' lost updates) summed over CPUs, with what earlier generations
    /// counted.
    pub fn slot_counters(&self) -> Result<Vec<RuleCounters>> {
        let mut out = vec![RuleCounters::default(); self.meta.counter_slots()];
        for (c, b) in out.iter_mut().zip(&self.base) {
            *c = *b;
        }
        let add = |c: &mut RuleCounters, bytes: &[u8]| {
            c.packets = c.packets.wrapping_add(u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes")));
            c.bytes = c.bytes.wrapping_add(u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")));
        };
        let layout = self.meta.counters;
        if layout.global_cpus > 0 {
            let (map, bytes) = self.counter_blocks()?;
            let mut global = vec![0u8; bytes];
            let found = sys::map_lookup(self.map(map)?.fd().as_fd(), &0u32.to_le_bytes(), &mut global).map_err(|source| RuntimeError::Map { map: map.into(), source })?;
            if found {
                // The blocks hold the rules' slots only (`meta::counter_slots`).
                for block in global.chunks_exact(layout.stride as usize) {
                    out.iter_mut().take(self.meta.rules.len()).zip(block.chunks_exact(16)).for_each(|(c, bytes)| add(c, bytes));
                }
            }
        }
        let fd = self.map(meta::RULES_MAP)?.fd().as_fd();
        let mut buf = vec![0u8; 16 * self.cpus];
        for (id, c) in out.iter_mut().enumerate() {
            let found = sys::map_lookup(fd, &(id as u32).to_le_bytes(), &mut buf).map_err(|source| RuntimeError::Map { map: meta::RULES_MAP.into(), source })?;
            if found {
                buf.chunks_exact(16).for_each(|cpu| add(c, cpu));
            }
        }
        Ok(out)
    }

    pub fn reset_counters(&self) -> Result<()> {
        let layout = self.meta.counters;
        if layout.global_cpus > 0 {
            let (map, bytes) = self.counter_blocks()?;
            self.update(map, &0u32.to_le_bytes(), &vec![0u8; bytes])?;
        }
        let zero = vec![0u8; 16 * self.cpus];
        for id in 0..self.meta.counter_slots() as u32 {
            self.update(meta::RULES_MAP, &id.to_le_bytes(), &zero)?;
        }
        Ok(())
    }

    /// Entries of `@name`, keys decoded, values summed over CPUs.
    pub fn map_entries(&self, name: &str) -> Result<Vec<(Vec<KeyValue>, u64)>> {
        let m = self.meta.maps.iter().find(|m| m.name == name).ok_or_else(|| RuntimeError::UnknownMap(format!("@{name}")))?;
        let fd = self.map(&m.map)?.fd().as_fd();
        let err = |source| RuntimeError::Map { map: m.map.clone(), source };
        let mut out = Vec::new();
        let mut key = vec![0u8; m.key_size as usize];
        let mut next = vec![0u8; m.key_size as usize];
        let mut value = vec![0u8; if m.per_cpu { 8 * self.cpus } else { 8 }];
        let mut first = true;
        while sys::map_next_key(fd, (!first).then_some(&key[..]), &mut next).map_err(err)? {
            first = false;
            std::mem::swap(&mut key, &mut next);
            if sys::map_lookup(fd, &key, &mut value).map_err(err)? {
                // Sums wrap, in the kernel and here (the language's arithmetic).
                let v = value.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).fold(0u64, u64::wrapping_add);
                out.push((decode_key(&m.keys, &key), v));
            }
        }
        out.sort_by_key(|e| std::cmp::Reverse(e.1));
        Ok(out)
    }

}

/// One bucket of a `limit` (`meta::LimitMeta`): its key, decoded (none
/// for an unkeyed limit), and the credit it holds now, in nanoseconds out
/// of the limit's `depth_ns`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitBucket {
    pub key: Vec<KeyValue>,
    pub credit_ns: u64,
}

impl PolicyMaps {
    /// Every bucket of limit number `limit` (in [`ObjectMeta::limits`]
    /// order) with the credit it holds now, the emptiest first.
    pub fn limit_buckets(&self, limit: usize) -> Result<Vec<LimitBucket>> {
        let l = self.meta.limits.get(limit).ok_or_else(|| RuntimeError::UnknownMap(format!("limit #{limit}")))?;
        let now = sys::monotonic_ns();
        let mut out: Vec<LimitBucket> = self
            .limit_values(l)?
            .into_iter()
            .map(|(key, full_at)| LimitBucket { key: decode_key(&l.keys, &key), credit_ns: l.depth_ns - full_at.saturating_sub(now).min(l.depth_ns) })
            .collect();
        out.sort_by_key(|b| b.credit_ns);
        Ok(out)
    }

    /// Moves every limit's clock on by `ns` nanoseconds, as if that much
    /// time had passed since its buckets were last used: `after D` in a
    /// test (the kernel's clock cannot be moved). A bucket's value is when
    /// it is full again; each moves `ns` earlier.
    pub fn advance_limits(&self, ns: u64) -> Result<()> {
        for l in &self.meta.limits {
            for (key, full_at) in self.limit_values(l)? {
                // 0 and anything past is a full bucket (`meta::LimitMeta`).
                self.update(&l.map, &key, &full_at.saturating_sub(ns).to_le_bytes())?;
            }
        }
        Ok(())
    }

    /// Sets every bucket of limit number `limit` to hold `credit(key)`
    /// nanoseconds of credit now (capped at a full bucket), for tests that
    /// compare the kernel with a reference whose clock they move: the
    /// kernel's clock cannot be moved or stopped. Returns the keys
    /// `credit` knows nothing of, left as they are.
    pub fn set_limit_credit(&self, limit: usize, credit: impl Fn(&[KeyValue]) -> Option<u64>) -> Result<Vec<Vec<KeyValue>>> {
        let l = self.meta.limits.get(limit).ok_or_else(|| RuntimeError::UnknownMap(format!("limit #{limit}")))?;
        let mut unknown = Vec::new();
        for (key, _) in self.limit_values(l)? {
            let decoded = decode_key(&l.keys, &key);
            match credit(&decoded) {
                Some(c) => {
                    let full_at = sys::monotonic_ns() + l.depth_ns - c.min(l.depth_ns);
                    self.update(&l.map, &key, &full_at.to_le_bytes())?;
                }
                None => unknown.push(decoded),
            }
        }
        Ok(unknown)
    }

    /// Every key of a limit's map (u32 0 for an unkeyed one) and its value.
    fn limit_values(&self, l: &meta::LimitMeta) -> Result<Vec<(Vec<u8>, u64)>> {
        let fd = self.map(&l.map)?.fd().as_fd();
        let err = |source| RuntimeError::Map { map: l.map.clone(), source };
        let mut out = Vec::new();
        let mut key = vec![0u8; l.key_size as usize];
        let mut next = vec![0u8; l.key_size as usize];
        let mut value = [0u8; meta::LIMIT_VALUE_SIZE as usize];
        let mut first = true;
        while sys::map_next_key(fd, (!first).then_some(&key[..]), &mut next).map_err(err)? {
            first = false;
            std::mem::swap(&mut key, &mut next);
            if sys::map_lookup(fd, &key, &mut value).map_err(err)? {
                out.push((key.clone(), u64::from_le_bytes(value)));
            }
        }
        Ok(out)
    }
}

/// The file a map is pinned as: its name, or for global data (`.data`)
/// `global_data`, since bpffs refuses dots in names.
pub(crate) fn pin_file(map: &str) -> String {
    match map.strip_prefix('.') {
        Some(section) => format!("global_{section}"),
        None => map.to_string(),
    }
}

/// The map pinned as `file`, the inverse of [`pin_file`] (map names in
/// objects never start with `global_`: they are `xpol_*`, `xs_*`, `xm_*`).
fn map_of_pin_file(file: &str) -> String {
    match file.strip_prefix("global_") {
        Some(section) => format!(".{section}"),
        None => file.to_string(),
    }
}

/// Who holds the XDP hook of `iface`, and the command that frees it.
/// `store`: the store when this process holds it (an apply); else it is
/// read without waiting, as another process may be changing it.
pub(crate) fn xdp_holder(iface: &str, store: Option<&crate::store::Store>) -> String {
    let ifindex = sys::if_nametoindex(iface);
    let links: Vec<sys::LinkInfo> = sys::links().into_iter().filter(|l| l.link_type == sys::BPF_LINK_TYPE_XDP && l.ifindex == ifindex).collect();
    // Every program on the hook with its mode, links' included; without
    // it, the links alone.
    let attached = sys::xdp_programs(ifindex);
    let netlink_ids: Vec<u32> = attached.as_ref().map_or(Vec::new(), |a| a.iter().map(|(_, id)| *id).collect());
    let mut programs = held_programs(links.iter().map(|l| l.prog_id).chain(netlink_ids));
    let mut program = |id: u32| programs.remove(&id).unwrap_or(HeldProgram { id, name: None, tag: None });
    let read = || crate::store::Store::read_now().ok().flatten();
    let mut holders = Vec::new();
    for link in &links {
        let applied = match store {
            Some(store) => store.holder(iface, "xdp", link.prog_id),
            None => read().and_then(|store| store.holder(iface, "xdp", link.prog_id)),
        };
        holders.push(match applied {
            Some(name) => XdpHolder::Policy { name },
            None => XdpHolder::Link { link: link.id, program: program(link.prog_id) },
        });
    }
    match attached {
        Ok(attached) => {
            // A link's program is also on the hook: said above.
            for (mode, id) in attached.into_iter().filter(|(_, id)| !links.iter().any(|l| l.prog_id == *id)) {
                let program = program(id);
                holders.push(if program.name.as_deref() == Some(LIBXDP_DISPATCHER) {
                    XdpHolder::Dispatcher { mode, program }
                } else {
                    XdpHolder::Netlink { mode, program }
                });
            }
            xdp_advice(iface, &holders)
        }
        Err(_) if !holders.is_empty() => xdp_advice(iface, &holders),
        Err(e) => format!(
            "xpol could not ask the kernel which program ({e}); `ip link show dev {iface}` names it and its mode, and `ip link set dev {iface} xdpgeneric off` (generic), `xdpdrv off` (driver) or `xdpoffload off` (offload) removes it"
        ),
    }
}

/// The name libxdp gives its dispatcher, the program that runs the ones
/// xdp-loader (and other libxdp tools) attach to an interface.
const LIBXDP_DISPATCHER: &str = "xdp_dispatcher";

/// What is attached to an interface's XDP hook, as xpol tells them apart:
/// each is removed another way.
#[derive(Clone, Debug, PartialEq, Eq)]
enum XdpHolder {
    /// An applied xpol policy (its link pinned in xpol's store).
    Policy { name: String },
    /// Another BPF link: `ip link` cannot remove it.
    Link { link: u32, program: HeldProgram },
    /// libxdp's dispatcher, attached through netlink.
    Dispatcher { mode: sys::XdpMode, program: HeldProgram },
    /// Any other program attached through netlink (`ip link`, libbpf's
    /// `bpf_xdp_attach`), removed only by naming its mode.
    Netlink { mode: sys::XdpMode, program: HeldProgram },
}

/// A program, as the kernel names it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HeldProgram {
    id: u32,
    name: Option<String>,
    tag: Option<u64>,
}

impl fmt::Display for HeldProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "program {}", self.id)?;
        if let Some(name) = self.name.as_deref().filter(|n| !n.is_empty()) {
            write!(f, " `{name}`")?;
        }
        if let Some(tag) = self.tag {
            write!(f, " (tag {tag:016x})")?;
        }
        Ok(())
    }
}

/// The names and tags of the programs `ids`, from the kernel; a program
/// that went away meanwhile is missing.
fn held_programs(ids: impl Iterator<Item = u32>) -> HashMap<u32, HeldProgram> {
    let ids: Vec<u32> = ids.collect();
    aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .filter(|p| ids.contains(&p.id()))
        .map(|p| (p.id(), HeldProgram { id: p.id(), name: p.name_as_str().map(str::to_string), tag: Some(p.tag()) }))
        .collect()
}

/// The mode's words, and iproute2's keyword for it.
fn mode_words(mode: sys::XdpMode) -> (&'static str, &'static str) {
    match mode {
        sys::XdpMode::Driver => ("driver (native)", "xdpdrv"),
        sys::XdpMode::Generic => ("generic (skb)", "xdpgeneric"),
        sys::XdpMode::Offload => ("offload (hardware)", "xdpoffload"),
    }
}

/// One sentence per holder, each with the command that removes it. (`ip
/// link set ... xdp off` names no mode: the kernel takes it as driver
/// mode where the driver has native XDP, so it returns success and
/// leaves a generic program in place; and it cannot remove a link.)
fn xdp_advice(iface: &str, holders: &[XdpHolder]) -> String {
    if holders.is_empty() {
        return format!("nothing is attached to it any more (it was removed meanwhile): try again; `ip link show dev {iface}` shows what is attached");
    }
    let one = |holder: &XdpHolder| match holder {
        XdpHolder::Policy { name } => format!("the xpol policy `{name}` holds it; replace it with `xpol apply ... --name {name}`, or remove it with `xpol delete {name}`"),
        XdpHolder::Link { link, program } => {
            format!("BPF link {link}, of {program}, holds it, and `ip link ... xdp off` cannot remove a link; its owner must, or `bpftool link detach id {link}`")
        }
        XdpHolder::Dispatcher { mode, program } => {
            let (words, keyword) = mode_words(*mode);
            format!(
                "libxdp's dispatcher, {program}, attached in {words} mode, holds it for programs that xdp-loader or another libxdp tool attached; remove them with `xdp-loader unload {iface} --all` (or `ip link set dev {iface} {keyword} off`, which leaves libxdp's pins under /sys/fs/bpf/xdp behind)"
            )
        }
        XdpHolder::Netlink { mode, program } => {
            let (words, keyword) = mode_words(*mode);
            format!("{program}, attached through netlink in {words} mode, holds it; remove it with `ip link set dev {iface} {keyword} off`")
        }
    };
    holders.iter().map(one).collect::<Vec<_>>().join("; and ")
}

fn program_error(program: &str, e: ProgramError) -> RuntimeError {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            if io_error.raw_os_error() == Some(libc::EPERM) && log.trim().is_empty() {
                RuntimeError::NotPermitted(format!("the kernel refused to load `{program}` ({io_error}): run as root, or grant CAP_BPF and CAP_NET_ADMIN"))
            } else {
                RuntimeError::Verifier { program: program.to_string(), log, source: io_error }
            }
        }
        other => RuntimeError::Program { program: program.to_string(), message: other.to_string() },
    }
}

/// Return codes: XDP actions, or TC actions (`TC_ACT_UNSPEC`, -1, counts as
/// pass: the next classifier or the default decides).
pub fn decode_action(hook: &str, rv: u32) -> Action {
    if hook == "xdp" {
        match rv {
            0 => Action::Abort,
            1 => Action::Drop,
            2 => Action::Pass,
            3 => Action::Tx,
            4 => Action::Redirect,
            other => Action::Other(other as i64),
        }
    } else {
        match rv as i32 {
            0 | -1 => Action::Pass,
            2 => Action::Drop,
            7 => Action::Redirect,
            other => Action::Other(other as i64),
        }
    }
}

fn element_error(set: &meta::SetMeta, element: &str, reason: String) -> RuntimeError {
    RuntimeError::SetElement { set: set.name.clone(), element: element.to_string(), reason }
}

/// Refuses elements that the set's maps cannot hold: more than its
/// capacity (as the compiler counts them: a range `a..b` is b-a+1), or an
/// address of a family it has no map for (a constant set, or an object
/// from before sets could grow).
fn check_set_fits(set: &meta::SetMeta) -> Result<()> {
    let count = set.elements.iter().fold(0u64, |n, e| n.saturating_add(element_count(e)));
    if set.capacity > 0 && count > set.capacity {
        return Err(RuntimeError::SetFull { set: set.name.clone(), capacity: set.capacity, needed: format!("and {count} were given") });
    }
    if set.elem != meta::SetElem::Cidr {
        return Ok(());
    }
    let has = |kind: SetMapKind| set.maps.iter().any(|m| m.kind == kind);
    for element in &set.elements {
        let stored = match parse_prefix(element) {
            Ok((IpAddr::V4(_), _)) => set.ipv4_slot.is_some() || has(SetMapKind::LpmV4),
            Ok((IpAddr::V6(_), _)) => set.ipv6_slot.is_some() || has(SetMapKind::LpmV6) || has(SetMapKind::SharedLpmV6),
            Err(reason) => return Err(element_error(set, element, reason)),
        };
        if !stored {
            let reason = "the object has no map for this address family in this set (a constant set, or an object built before sets could grow): rebuild the policy";
            return Err(element_error(set, element, reason.into()));
        }
    }
    Ok(())
}

/// How many elements `element` counts as: b-a+1 for a range `a..b`, else 1.
pub(crate) fn element_count(element: &str) -> u64 {
    let int = |s: &str| s.trim().parse::<u64>().ok();
    match element.split_once("..").and_then(|(lo, hi)| Some((int(lo)?, int(hi)?))) {
        Some((lo, hi)) if hi >= lo => (hi - lo).saturating_add(1),
        _ => 1,
    }
}

/// The `mid` chunks of `table` one after another, as the map holds them
/// ([`Ipv4Table::mid_value`] of each, without a vector per chunk: a
/// million prefixes fill some 65,000 chunks).
fn mid_bytes(table: &Ipv4Table, wide: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(table.mid.len() * Ipv4Table::mid_chunk_bytes(wide) as usize);
    for chunk in &table.mid {
        for &e in chunk {
            if wide {
                out.extend_from_slice(&e.to_le_bytes());
            } else {
                out.extend_from_slice(&(e as u16).to_le_bytes());
            }
        }
    }
    out
}

/// The IPv4 prefixes of a set (address in host order, length).
fn ipv4_prefixes(set: &meta::SetMeta) -> Result<Vec<(u32, u8)>> {
    let mut prefixes = Vec::new();
    for element in &set.elements {
        match parse_prefix(element) {
            Ok((IpAddr::V4(a), len)) => prefixes.push((u32::from(a), len as u8)),
            Ok(_) => {}
            Err(reason) => return Err(element_error(set, element, reason)),
        }
    }
    Ok(prefixes)
}

/// The bytes of global data the IPv4 tables take
/// (`ipv4_table::placement`), 0 without IPv4 tables.
fn ipv4_global_bytes(meta: &ObjectMeta) -> Result<u64> {
    match meta.sets.iter().find(|s| s.ipv4_slot.is_some()) {
        Some(set) => {
            let shape = Ipv4Shape::of(set)?;
            let [root, mid, leaf] = shape.capacities;
            Ok(ipv4_table::placement(root, mid, leaf, shape.mid_wide).1)
        }
        None => Ok(0),
    }
}

/// Where the IPv6 tables' part of global data is
/// (`ipv6_table::global_layout`), when the object has one.
pub(crate) fn ipv6_global_layout(meta: &ObjectMeta) -> Result<Option<ipv6_table::GlobalLayout>> {
    if !meta.sets.iter().flat_map(|s| &s.maps).any(|m| m.kind == SetMapKind::Ipv6Root) {
        return Ok(None);
    }
    let slots = meta.sets.iter().filter(|s| s.ipv6_slot.is_some()).count() as u64;
    ipv6_table::global_layout(ipv4_global_bytes(meta)?, slots)
        .map(Some)
        .ok_or_else(|| RuntimeError::BadMetadata("the object's IPv6 roots do not fit in its global data: rebuild the object with this version of xpolc".into()))
}

/// The IPv6 tables of the sets with an IPv6 slot, one after another in
/// slot order (as the compiler laid them out to size the maps), from their
/// elements; `None` when no set has one.
fn build_ipv6_tables(meta: &ObjectMeta) -> Result<Option<Ipv6Table>> {
    let mut sets: Vec<&meta::SetMeta> = meta.sets.iter().filter(|s| s.ipv6_slot.is_some()).collect();
    if sets.is_empty() {
        return Ok(None);
    }
    sets.sort_by_key(|s| s.ipv6_slot);
    let wides_left = ipv6_global_layout(meta)?.map_or(0, |l| l.count as usize);
    let mut tables = Vec::new();
    for (slot, set) in sets.iter().enumerate() {
        if set.ipv6_slot != Some(slot as u32) {
            return Err(RuntimeError::BadMetadata(format!("set `{}` has IPv6 slot {:?}, expected {slot}", set.name, set.ipv6_slot)));
        }
        let mut prefixes = Vec::new();
        for element in &set.elements {
            match parse_prefix(element) {
                Ok((IpAddr::V6(a), len)) => prefixes.push((u128::from(a), len as u8)),
                Ok(_) => {}
                Err(reason) => return Err(element_error(set, element, reason)),
            }
        }
        // The wide nodes global data has room for go to the first sets
        // that need them.
        let left = wides_left - tables.iter().map(|t: &Ipv6Table| t.wides.len()).sum::<usize>();
        tables.push(Ipv6Table::build_with(prefixes, left));
    }
    let table = Ipv6Table::concat(&tables);
    if table.nodes.len() > ipv6_table::MAX_NODES || table.tails.len() >= 1 << 30 {
        let set = sets.iter().map(|s| format!("`{}`", s.name)).collect::<Vec<_>>().join(", ");
        return Err(RuntimeError::BadMetadata(format!("the IPv6 prefixes of sets {set} need more than the {} nodes of the IPv6 tables", ipv6_table::MAX_NODES)));
    }
    Ok(Some(table))
}

fn ipv4_wrong_shape() -> RuntimeError {
    RuntimeError::BadMetadata("the object's IPv4 tables do not have the shape of its sets: rebuild the object with this version of xpolc".into())
}

/// The shared IPv4 tables as the metadata describes them: for root, mid
/// and leaf, the capacity (root entries, chunks) and the map holding it;
/// and whether `mid` entries are u32.
pub(crate) struct Ipv4Shape<'a> {
    pub(crate) capacities: [u64; 3],
    pub(crate) maps: [&'a str; 3],
    pub(crate) mid_wide: bool,
}

impl<'a> Ipv4Shape<'a> {
    /// From the maps of a set with an IPv4 slot (every such set lists the
    /// same three).
    pub(crate) fn of(set: &'a meta::SetMeta) -> Result<Ipv4Shape<'a>> {
        let find = |kinds: &[SetMapKind]| set.maps.iter().find(|m| kinds.contains(&m.kind)).ok_or_else(ipv4_wrong_shape);
        let found = [find(&[SetMapKind::Ipv4Root])?, find(&[SetMapKind::Ipv4Mid16, SetMapKind::Ipv4Mid32])?, find(&[SetMapKind::Ipv4Leaf])?];
        Ok(Ipv4Shape {
            capacities: found.map(|m| u64::from(m.max_entries)),
            maps: found.map(|m| m.map.as_str()),
            mid_wide: found[1].kind == SetMapKind::Ipv4Mid32,
        })
    }

    /// The chunks of the sets' tables (in slot order) are pooled: the
    /// first set at which they add up to more than the object has is full.
    fn check_fits(&self, sets: &[&meta::SetMeta], tables: &[Ipv4Table]) -> Result<()> {
        let (mut mid, mut leaf) = (0u64, 0u64);
        for (set, t) in sets.iter().zip(tables) {
            mid += t.mid.len() as u64;
            leaf += t.leaf.len() as u64;
            for (name, used, room) in [("mid", mid, self.capacities[1]), ("leaf", leaf, self.capacities[2])] {
                if used > room {
                    let needed = format!("and its IPv4 prefixes, with those of the sets before it, need {used} chunks of the shared IPv4 table `{name}`, which holds {room}");
                    return Err(RuntimeError::SetFull { set: set.name.clone(), capacity: set.capacity, needed });
                }
            }
        }
        Ok(())
    }
}

/// The map keys that store one set element (ranges expand to every integer).
/// A set element in prefix form (`198.51.100.0/24`, an address alone is a
/// full-length prefix).
pub(crate) fn parse_prefix(s: &str) -> std::result::Result<(IpAddr, u32), String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => {
            let a: IpAddr = a.parse().map_err(|_| "not an address".to_string())?;
            (a, l.parse().map_err(|_| "bad prefix length".to_string())?)
        }
        None => {
            let a: IpAddr = s.parse().map_err(|_| "not an address".to_string())?;
            (a, if a.is_ipv4() { 32 } else { 128 })
        }
    };
    if len > if addr.is_ipv4() { 32 } else { 128 } {
        return Err("bad prefix length".into());
    }
    Ok((addr, len))
}

/// An element of a set of kind `elem` in its canonical text form (as in
/// [`meta::SetMeta::elements`]), or why it is not one.
pub fn canonical_element(elem: meta::SetElem, text: &str) -> std::result::Result<String, String> {
    let text = text.trim();
    match elem {
        meta::SetElem::Cidr => {
            let (addr, len) = parse_prefix(text)?;
            let masked = match addr {
                IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & u32::MAX.checked_shl(32 - len).unwrap_or(0))),
                IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & u128::MAX.checked_shl(128 - len).unwrap_or(0))),
            };
            if masked != addr {
                return Err(format!("host bits are set (the prefix is {masked}/{len})"));
            }
            Ok(format!("{addr}/{len}"))
        }
        meta::SetElem::Int => {
            let int = |s: &str| s.trim().parse::<u64>().map_err(|_| "not an integer or a range `a..b`".to_string());
            match text.split_once("..") {
                Some((lo, hi)) => {
                    let (lo, hi) = (int(lo)?, int(hi)?);
                    if lo > hi {
                        return Err("an empty range".into());
                    }
                    Ok(if lo == hi { lo.to_string() } else { format!("{lo}..{hi}") })
                }
                None => Ok(int(text)?.to_string()),
            }
        }
        meta::SetElem::Mac => {
            let parts: Vec<&str> = text.split(':').collect();
            if parts.len() != 6 || parts.iter().any(|p| p.len() != 2 || u8::from_str_radix(p, 16).is_err()) {
                return Err("not a MAC address such as 02:00:00:00:00:01".into());
            }
            Ok(text.to_ascii_lowercase())
        }
    }
}

/// The keys that hold `element` of `set` in its map of kind `kind` (none
/// when that map does not hold it: the other address family's, or a
/// table filled whole).
pub(crate) fn set_keys(set: &meta::SetMeta, kind: SetMapKind, element: &str) -> std::result::Result<Vec<Vec<u8>>, String> {
    // In a map the sets share, under the set's id (checked with the metadata).
    let id = || set.id.ok_or_else(|| "the set has no id in its shared map: rebuild the policy".to_string());
    match kind {
        SetMapKind::Ipv4Root | SetMapKind::Ipv4Mid16 | SetMapKind::Ipv4Mid32 | SetMapKind::Ipv4Leaf => {
            unreachable!("IPv4 tables are filled whole by fill_ipv4_tables")
        }
        // Filled whole by `fill_ipv6_tables`: no element is one key there.
        SetMapKind::Ipv6Node | SetMapKind::Ipv6Tail | SetMapKind::Ipv6Root => Ok(Vec::new()),
        SetMapKind::LpmV4 | SetMapKind::LpmV6 | SetMapKind::SharedLpmV6 => {
            let (addr, len) = parse_prefix(element)?;
            let mut key = len.to_le_bytes().to_vec();
            match (kind, addr) {
                (SetMapKind::LpmV4, IpAddr::V4(a)) => key.extend(a.octets()),
                (SetMapKind::LpmV6, IpAddr::V6(a)) => key.extend(a.octets()),
                (SetMapKind::SharedLpmV6, IpAddr::V6(a)) => key = meta::sets_lpm6_key(id()?, a.octets(), len).to_vec(),
                // The other family's map does not hold this element.
                _ => return Ok(Vec::new()),
            }
            Ok(vec![key])
        }
        SetMapKind::HashU64 | SetMapKind::SharedHash => {
            let key = |v: u64| -> std::result::Result<Vec<u8>, String> {
                Ok(match kind {
                    SetMapKind::SharedHash => meta::sets_hash_key(id()?, v).to_vec(),
                    _ => v.to_le_bytes().to_vec(),
                })
            };
            if element.split(':').count() == 6 {
                let mut v = 0u64;
                for part in element.split(':') {
                    v = (v << 8) | u64::from(u8::from_str_radix(part, 16).map_err(|_| "not a MAC address".to_string())?);
                }
                return Ok(vec![key(v)?]);
            }
            let int = |s: &str| s.trim().parse::<u64>().map_err(|_| "not an integer".to_string());
            let (lo, hi) = match element.split_once("..") {
                Some((lo, hi)) => (int(lo)?, int(hi)?),
                None => (int(element)?, int(element)?),
            };
            if hi.saturating_sub(lo) > 16_000_000 {
                return Err("range too large to store expanded".into());
            }
            (lo..=hi).map(key).collect()
        }
    }
}

pub(crate) fn decode_key(kinds: &[KeyKind], key: &[u8]) -> Vec<KeyValue> {
    let mut out = Vec::new();
    let mut off = 0;
    for k in kinds {
        let b = &key[off..off + k.size()];
        out.push(match k {
            KeyKind::Int => KeyValue::Int(u64::from_le_bytes(b.try_into().expect("8 bytes"))),
            KeyKind::Mac => {
                let v = u64::from_le_bytes(b.try_into().expect("8 bytes")).to_be_bytes();
                KeyValue::Mac([v[2], v[3], v[4], v[5], v[6], v[7]])
            }
            KeyKind::Bool => KeyValue::Bool(b[0] != 0),
            KeyKind::Ip => {
                let family = u32::from_le_bytes(b[0..4].try_into().expect("4 bytes"));
                if family == 6 {
                    let a: [u8; 16] = b[4..20].try_into().expect("16 bytes");
                    KeyValue::Ip(IpAddr::V6(Ipv6Addr::from(a)))
                } else {
                    KeyValue::Ip(IpAddr::V4(Ipv4Addr::new(b[4], b[5], b[6], b[7])))
                }
            }
        });
        off += k.size();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{xdp_advice, HeldProgram, XdpHolder};
    use crate::sys::XdpMode;

    fn program(id: u32, name: &str) -> HeldProgram {
        HeldProgram { id, name: Some(name.to_string()), tag: Some(0x614b434cd8324ecc) }
    }

    /// Each holder gets the command that removes it: for a program
    /// attached through netlink, the one of its mode (`xdp off` names no
    /// mode and leaves a generic program on a veth in place).
    #[test]
    fn xdp_advice_names_the_holder_and_the_command_for_it() {
        let policy = xdp_advice("eth0", &[XdpHolder::Policy { name: "web".into() }]);
        assert!(policy.contains("the xpol policy `web` holds it") && policy.contains("`xpol delete web`"), "{policy}");

        let link = xdp_advice("eth0", &[XdpHolder::Link { link: 5, program: program(12, "xpol_xdp") }]);
        assert!(link.contains("BPF link 5, of program 12 `xpol_xdp` (tag 614b434cd8324ecc)") && link.contains("`bpftool link detach id 5`"), "{link}");

        for (mode, words, keyword) in [(XdpMode::Generic, "generic", "xdpgeneric"), (XdpMode::Driver, "driver", "xdpdrv"), (XdpMode::Offload, "offload", "xdpoffload")] {
            let plain = xdp_advice("eth0", &[XdpHolder::Netlink { mode, program: program(7, "xdp_held_pass") }]);
            assert!(plain.starts_with("program 7 `xdp_held_pass` (tag 614b434cd8324ecc), attached through netlink"), "{plain}");
            assert!(plain.contains(&format!("in {words} ")) && plain.contains(&format!("`ip link set dev eth0 {keyword} off`")), "{plain}");
            assert!(!plain.contains(" xdp off"), "{plain}");

            let dispatcher = xdp_advice("eth0", &[XdpHolder::Dispatcher { mode, program: program(9, "xdp_dispatcher") }]);
            assert!(dispatcher.contains("libxdp's dispatcher, program 9 `xdp_dispatcher`") && dispatcher.contains("`xdp-loader unload eth0 --all`"), "{dispatcher}");
            assert!(dispatcher.contains(&format!("`ip link set dev eth0 {keyword} off`")), "{dispatcher}");
        }

        // Driver and offload at once (XDP_ATTACHED_MULTI): both commands.
        let multi = xdp_advice(
            "eth0",
            &[XdpHolder::Netlink { mode: XdpMode::Driver, program: program(8, "a") }, XdpHolder::Netlink { mode: XdpMode::Offload, program: program(9, "b") }],
        );
        assert!(multi.contains("`ip link set dev eth0 xdpdrv off`") && multi.contains("`ip link set dev eth0 xdpoffload off`"), "{multi}");

        // A program without a name (kernels before 4.15) is still named by id.
        let unnamed = xdp_advice("eth0", &[XdpHolder::Netlink { mode: XdpMode::Generic, program: HeldProgram { id: 3, name: None, tag: None } }]);
        assert!(unnamed.starts_with("program 3, attached"), "{unnamed}");

        // Gone meanwhile: say so rather than advise a command.
        let gone = xdp_advice("eth0", &[]);
        assert!(gone.contains("try again") && !gone.contains(" off`"), "{gone}");
    }

    /// An element's keys in a set's own map (records of META_VERSION 14
    /// and older) and in the maps the sets share (under the set's id).
    #[test]
    fn set_keys_of_own_and_shared_maps() {
        use std::net::Ipv6Addr;
        use xpol_lang::meta::{self, SetElem, SetMapKind, SetMeta};
        let set = |elem, id| SetMeta { name: "s".into(), elem, maps: Vec::new(), ipv4_slot: None, ipv6_slot: None, id, elements: Vec::new(), capacity: 0, mutable: true };
        let ints = set(SetElem::Int, Some(7));
        assert_eq!(super::set_keys(&ints, SetMapKind::HashU64, "80"), Ok(vec![80u64.to_le_bytes().to_vec()]));
        let shared: Vec<Vec<u8>> = (8000u64..=8001).map(|v| meta::sets_hash_key(7, v).to_vec()).collect();
        assert_eq!(super::set_keys(&ints, SetMapKind::SharedHash, "8000..8001"), Ok(shared));
        let mac = super::set_keys(&set(SetElem::Mac, Some(2)), SetMapKind::SharedHash, "02:00:00:00:00:01").expect("a MAC");
        assert_eq!(mac, [meta::sets_hash_key(2, 0x0200_0000_0001).to_vec()]);
        let cidr = set(SetElem::Cidr, Some(3));
        let a: Ipv6Addr = "2001:db8::".parse().expect("address");
        assert_eq!(super::set_keys(&cidr, SetMapKind::SharedLpmV6, "2001:db8::/32"), Ok(vec![meta::sets_lpm6_key(3, a.octets(), 32).to_vec()]));
        assert_eq!(super::set_keys(&cidr, SetMapKind::SharedLpmV6, "198.51.100.0/24"), Ok(Vec::new()), "IPv4 is in the tables");
        let mut old = 32u32.to_le_bytes().to_vec();
        old.extend(a.octets());
        assert_eq!(super::set_keys(&set(SetElem::Cidr, None), SetMapKind::LpmV6, "2001:db8::/32"), Ok(vec![old]));
        assert!(super::set_keys(&set(SetElem::Int, None), SetMapKind::SharedHash, "80").is_err(), "no id, no key");
    }
}
