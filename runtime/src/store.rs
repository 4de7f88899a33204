//! Applied policies in bpffs. Everything xpol knows about a policy that
//! outlives its process lives beside that policy's pins, so there is no
//! second store that can disagree with the kernel:
//!
//! ```text
//! /sys/fs/bpf/xpol/            0700 root: the store (checked before every use)
//!   NAME/                      one applied policy (0700)
//!     link_0, link_1, ...      pinned links: they keep the programs attached
//!     gen_7/                   a generation: one load of the policy (0700)
//!       record                 blob map: the record (JSON) and the object (ELF)
//!       base                   counters carried over from earlier generations
//!       elems_SET              each named set's live elements (a map
//!                              of their canonical text): `xpol set` changes
//!                              it with the set, the record never
//!       xpol_rules, global_data, global_bss, xm_*, xs_*, ...   the programs' maps
//!                              (global_bss and xpol_v4*: the IPv4 set tables,
//!                              mappable, which `xpol set` changes in place)
//!       xl_POOL_be, _ring, _ctl, _flows, _stats   a pool's maps: `xl_POOL_be`
//!                              is the pool's live contents (`crate::lb`),
//!                              which `xpol pool` changes in place with the
//!                              Maglev table (`crate::lb_edit`)
//! ```
//!
//! The links are the truth. The current generation is the one whose record
//! names the programs the links run; a generation left behind by an apply
//! that was killed (complete or not) is garbage that the next apply or
//! delete removes. So a SIGKILL at any point leaves either the old or the
//! new generation current, and the policy listed and deletable.
//!
//! Security: `/sys/fs/bpf` is world-writable (sticky). xpol creates its
//! directories 0700 itself, whatever the umask, and refuses a directory it
//! did not create (not root's, open to others, or a symbolic link),
//! naming the path. Below its own 0700 directory only root can create
//! anything, so no other check can be raced. Pins are 0600 (the kernel
//! applies the umask to 0600); records hold set elements and are
//! therefore readable by root only.

use crate::loader::{RuntimeError, PolicyMaps};
use crate::sys;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use xpol_lang::meta::{ObjectMeta, RuleCounters};

type Result<T> = std::result::Result<T, RuntimeError>;

/// The BPF filesystem xpol pins in.
pub const BPFFS: &str = "/sys/fs/bpf";
/// The store: one directory per applied policy.
pub const STORE_ROOT: &str = "/sys/fs/bpf/xpol";
/// Version of [`Record`]'s JSON; see docs/json.md.
pub const RECORD_SCHEMA: u32 = 1;

/// Bytes per value of a blob map.
const BLOB_CHUNK: usize = 64 << 10;
const BLOB_MAGIC: &[u8; 8] = b"XPOLREC1";

/// One interface and hook a policy is attached to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub interface: String,
    /// `xdp`, `tc:ingress` or `tc:egress`.
    pub hook: String,
    /// XDP mode: `auto`, `native` or `generic`.
    pub mode: String,
    /// The link's pin file in the policy's directory.
    pub link: String,
}

/// What xpol keeps of one generation of an applied policy.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub schema: u32,
    pub name: String,
    pub generation: u64,
    /// The policy file (or object) as the user named it.
    pub source: String,
    /// Seconds since the Unix epoch.
    pub applied_unix: u64,
    pub attachments: Vec<Attachment>,
    /// The id of each hook's program in this generation: what its links
    /// must run for the generation to be current.
    pub programs: BTreeMap<String, u32>,
    /// The object's metadata without the sets' elements: those live in
    /// `elems_SET` ([`Generation::elements`]), so that changing a set never
    /// rewrites the record, however large the set.
    pub meta: ObjectMeta,
    /// A digest of each set's elements as the policy itself declared them
    /// ([`declaration_digest`]): on the next apply, a set whose declaration
    /// did not change keeps its live contents (`xpol set` changes
    /// survive), one whose declaration changed gets the new declaration.
    pub declared: BTreeMap<String, u64>,
    /// `net.netfilter.nf_conntrack_tcp_loose` as it was before xpol set
    /// it to 0 for a `synproxy` (this policy's or another applied one's):
    /// put back when the last applied policy with a `synproxy` goes
    /// ([`Store::delete`], or an apply of a version without one). `None`:
    /// no `synproxy`, or the sysctl was 0 already. Absent from records of
    /// an older xpol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_loose_before: Option<String>,
}

/// A digest of a set's declared elements (FNV-1a over their canonical
/// text): equal declarations give equal digests.
pub fn declaration_digest(elements: &[String]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in elements.iter().flat_map(|e| e.bytes().chain([b'\n'])) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Bytes of the text in a key of an `elems_SET` map: the canonical text,
/// zero-padded (the longest, an IPv6 prefix or a range of two u64, is 43
/// bytes). The key is the prefix length (all of it) and then the text.
pub const ELEMENT_KEY_BYTES: usize = 64;
const ELEMENT_KEY: usize = 4 + ELEMENT_KEY_BYTES;

/// The live elements of one set in a generation (`elems_SET`).
pub struct ElementStore {
    fd: OwnedFd,
}

impl ElementStore {
    fn key(element: &str) -> Result<[u8; ELEMENT_KEY]> {
        let mut key = [0u8; ELEMENT_KEY];
        if element.len() > ELEMENT_KEY_BYTES {
            return Err(RuntimeError::Store(format!("element `{}` is too long", element.escape_debug())));
        }
        key[..4].copy_from_slice(&(8 * ELEMENT_KEY_BYTES as u32).to_le_bytes());
        key[4..4 + element.len()].copy_from_slice(element.as_bytes());
        Ok(key)
    }

    /// Creates and pins `dir/elems_SET` holding `elements`.
    pub(crate) fn create(dir: &Path, set: &str, elements: &[String], capacity: u64) -> Result<ElementStore> {
        let path = dir.join(format!("elems_{set}"));
        let io = |e: std::io::Error| RuntimeError::Store(format!("{}: {e}", path.display()));
        let entries = capacity.max(elements.len() as u64).clamp(1, u64::from(u32::MAX / 2)) as u32;
        let store = ElementStore { fd: sys::string_set_create("xpol_elems", ELEMENT_KEY as u32, entries).map_err(io)? };
        for e in elements {
            store.insert(e)?;
        }
        sys::obj_pin(store.fd.as_fd(), &path).map_err(io)?;
        Ok(store)
    }

    pub(crate) fn open(dir: &Path, set: &str) -> Result<ElementStore> {
        let path = dir.join(format!("elems_{set}"));
        let fd = sys::obj_get(&path, 0).map_err(|e| RuntimeError::Store(format!("{}: {e}", path.display())))?;
        check_map_shape(&path, fd.as_fd(), ELEMENT_KEY as u32, 1)?;
        Ok(ElementStore { fd })
    }

    pub fn contains(&self, element: &str) -> Result<bool> {
        let mut value = [0u8; 1];
        sys::map_lookup(self.fd.as_fd(), &Self::key(element)?, &mut value).map_err(|e| RuntimeError::Store(format!("set elements: {e}")))
    }

    pub fn insert(&self, element: &str) -> Result<()> {
        sys::map_update(self.fd.as_fd(), &Self::key(element)?, &[1], 0).map_err(|e| RuntimeError::Store(format!("set elements: {e}")))
    }

    pub fn remove(&self, element: &str) -> Result<bool> {
        sys::map_delete(self.fd.as_fd(), &Self::key(element)?).map_err(|e| RuntimeError::Store(format!("set elements: {e}")))
    }

    /// Every element, sorted.
    pub fn elements(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        self.for_each(|e| out.push(e.to_string()))?;
        out.sort_by_cached_key(|e| element_order(e));
        Ok(out)
    }

    /// Calls `f` with every element, in no particular order.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&str)) -> Result<()> {
        let err = |e: std::io::Error| RuntimeError::Store(format!("set elements: {e}"));
        let (mut key, mut next) = ([0u8; ELEMENT_KEY], [0u8; ELEMENT_KEY]);
        let mut first = true;
        while sys::map_next_key(self.fd.as_fd(), (!first).then_some(&key[..]), &mut next).map_err(err)? {
            first = false;
            key = next;
            let text = &key[4..];
            let end = text.iter().position(|&b| b == 0).unwrap_or(ELEMENT_KEY_BYTES);
            f(&String::from_utf8_lossy(&text[..end]));
        }
        Ok(())
    }
}

/// A record and the object it was loaded from.
pub struct Generation {
    pub record: Record,
    pub object: Vec<u8>,
    pub dir: PathBuf,
}

/// What the kernel says of one attachment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LinkState {
    pub interface: String,
    pub hook: String,
    /// The link still hooks the interface (`false`: the interface went
    /// away, or someone detached it from outside).
    pub attached: bool,
    pub prog_id: u32,
}

/// An applied policy as found in the store.
pub struct Applied {
    pub name: String,
    /// The current generation; `None` when no readable record matches
    /// (an apply that was killed before its first record was complete).
    pub current: Option<Generation>,
    pub links: Vec<LinkState>,
    /// Problems found, in words (unreadable records, detached links).
    pub problems: Vec<String>,
    /// The link pins in the policy's directory, recorded or not.
    pub pinned_links: Vec<String>,
    /// The programs of every readable generation: what a link of this
    /// policy may run.
    pub known_programs: std::collections::BTreeSet<u32>,
}

/// The store, locked: shared for readers, exclusive for writers, so that a
/// reader never sees a generation removed under it and two writers never
/// interleave.
pub struct Store {
    root: PathBuf,
    _lock: File,
    /// Opened by [`Store::write`]: this process may change policies.
    exclusive: bool,
}

/// Why a directory is not xpol's, or `None` when it is.
fn foreign(path: &Path) -> Result<Option<String>> {
    let md = match std::fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RuntimeError::Store(format!("{}: {e}", path.display()))),
    };
    Ok(if md.file_type().is_symlink() {
        Some("it is a symbolic link".into())
    } else if !md.is_dir() {
        Some("it is not a directory".into())
    } else if md.uid() != sys::euid() {
        Some(format!("it belongs to uid {}, not to the user xpol runs as ({})", md.uid(), sys::euid()))
    } else if md.mode() & 0o077 != 0 {
        Some(format!("its mode is {:04o}: others may write or read it (xpol makes its directories 0700)", md.mode() & 0o7777))
    } else {
        None
    })
}

/// Makes `path` a directory of xpol's (0700, whatever the umask), or
/// checks that the one there is; never follows a symbolic link.
pub(crate) fn own_dir(path: &Path) -> Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| RuntimeError::Store(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => check_dir(path),
        Err(e) => Err(RuntimeError::Store(format!("cannot create {}: {e}", path.display()))),
    }
}

/// Checks that `path` is a directory xpol made.
fn check_dir(path: &Path) -> Result<()> {
    // Root's store seen by another user: a matter of rights, not a trap.
    if sys::euid() != 0 && std::fs::symlink_metadata(path).is_ok_and(|md| md.uid() == 0 && md.is_dir()) {
        return Err(RuntimeError::NotPermitted(format!("{} belongs to root: run xpol as root (applied policies are readable by root only)", path.display())));
    }
    match foreign(path)? {
        None => Ok(()),
        Some(why) => Err(RuntimeError::StoreUnsafe { path: path.to_path_buf(), reason: why }),
    }
}

/// Whether `name` can name an applied policy: a file name in bpffs that
/// xpol's own entries (`.`-prefixed, `gen_`) cannot clash with.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty() && name.len() <= 64 && !name.starts_with('-') && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(RuntimeError::Store(format!(
            "`{}` is not a valid policy name: use 1 to 64 letters, digits, `-` and `_`",
            name.escape_debug()
        )));
    }
    Ok(())
}

fn bpffs_missing() -> RuntimeError {
    let private_mounts = std::fs::read_link("/proc/self/ns/mnt").ok() != std::fs::read_link("/proc/1/ns/mnt").ok();
    RuntimeError::Bpffs(if private_mounts {
        "no BPF filesystem at /sys/fs/bpf in this mount namespace; pins made here would vanish with it. Under `ip netns exec` (which remounts /sys), use `nsenter --net=/run/netns/NAME` instead, or mount the host's bpffs".into()
    } else {
        "no BPF filesystem at /sys/fs/bpf: mount one with `mount -t bpf bpf /sys/fs/bpf`".into()
    })
}

impl Store {
    /// Opens the store for reading (shared lock); an absent store is empty.
    pub fn read() -> Result<Option<Store>> {
        Self::read_with(true)
    }

    /// As [`Store::read`], but `None` rather than wait while a writer
    /// holds the store (which may be this very process).
    pub fn read_now() -> Result<Option<Store>> {
        Self::read_with(false)
    }

    fn read_with(wait: bool) -> Result<Option<Store>> {
        let root = Path::new(STORE_ROOT);
        if !sys::is_bpffs(Path::new(BPFFS)) {
            return Err(bpffs_missing());
        }
        if std::fs::symlink_metadata(root).is_err() {
            return Ok(None);
        }
        check_dir(root)?;
        let lock = File::open(root).map_err(|e| not_permitted_or(root, e))?;
        if wait {
            lock.lock_shared().map_err(|e| RuntimeError::Store(format!("cannot lock {}: {e}", root.display())))?;
        } else if lock.try_lock_shared().is_err() {
            return Ok(None);
        }
        check_dir(root)?;
        Ok(Some(Store { root: root.to_path_buf(), _lock: lock, exclusive: false }))
    }

    /// Opens the store for changes (exclusive lock), creating it.
    pub fn write() -> Result<Store> {
        if !sys::is_bpffs(Path::new(BPFFS)) {
            return Err(bpffs_missing());
        }
        let root = Path::new(STORE_ROOT);
        own_dir(root).map_err(|e| match e {
            RuntimeError::Store(m) if m.contains("Permission denied") || m.contains("Read-only") => RuntimeError::Bpffs(format!(
                "{m}; xpol needs a writable BPF filesystem at /sys/fs/bpf (root, or CAP_BPF with write access)"
            )),
            e => e,
        })?;
        let lock = File::open(root).map_err(|e| not_permitted_or(root, e))?;
        lock.lock().map_err(|e| RuntimeError::Store(format!("cannot lock {}: {e}", root.display())))?;
        check_dir(root)?;
        Ok(Store { root: root.to_path_buf(), _lock: lock, exclusive: true })
    }

    /// Whether this handle holds the exclusive lock ([`Store::write`]).
    pub fn exclusive(&self) -> bool {
        self.exclusive
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The names of the applied policies (whatever their state), sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        let entries = std::fs::read_dir(&self.root).map_err(|e| RuntimeError::Store(format!("{}: {e}", self.root.display())))?;
        let mut names: Vec<String> = entries.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).filter(|n| check_name(n).is_ok()).collect();
        names.sort();
        Ok(names)
    }

    /// The applied policy `name` as the store and the kernel have it.
    pub fn applied(&self, name: &str) -> Result<Applied> {
        check_name(name)?;
        let dir = self.dir(name);
        if std::fs::symlink_metadata(&dir).is_err() {
            return Err(RuntimeError::NotApplied(name.to_string()));
        }
        check_dir(&dir)?;
        let mut problems = Vec::new();
        let mut gens = Vec::new();
        for g in generations(&dir)? {
            match read_generation(&dir.join(format!("gen_{g}"))) {
                Ok(gen) => gens.push(gen),
                Err(e) => problems.push(format!("generation {g}: {e}")),
            }
        }
        let known_programs = gens.iter().flat_map(|g| g.record.programs.values().copied()).collect();
        // The links: which programs run, and whether they are still hooked.
        let mut pinned = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| RuntimeError::Store(format!("{}: {e}", dir.display())))?.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if !file.starts_with("link_") {
                continue;
            }
            let info = sys::obj_get(&entry.path(), 0).and_then(|fd| sys::link_info(fd.as_fd()));
            match info {
                Ok(info) => pinned.push((file, Some(info))),
                Err(e) => {
                    problems.push(format!("link {file}: {e}"));
                    pinned.push((file, None));
                }
            }
        }
        let runs = |g: &Generation, id: u32| g.record.programs.values().any(|&p| p == id);
        let ids: Vec<u32> = pinned.iter().filter_map(|(_, i)| i.map(|i| i.prog_id)).collect();
        // The generation the links run; when they disagree (an apply killed
        // while switching), the one most of them run; without links, the newest.
        let score = |g: &Generation| ids.iter().filter(|&&id| runs(g, id)).count();
        let best = (0..gens.len()).max_by_key(|&i| (score(&gens[i]), i));
        let current = match best {
            Some(i) if ids.is_empty() || score(&gens[i]) > 0 => Some(gens.swap_remove(i)),
            _ => None,
        };
        let mut links = Vec::new();
        if let Some(g) = &current {
            for a in &g.record.attachments {
                let found = pinned.iter().find(|(f, _)| *f == a.link).and_then(|(_, i)| *i);
                let attached = found.is_some_and(|i| i.ifindex != 0);
                let prog_id = found.map_or(0, |i| i.prog_id);
                if !attached {
                    problems.push(format!("{} on {} is no longer attached (the interface went away, or it was detached from outside); `xpol apply` again attaches it", a.hook, a.interface));
                } else if !runs(g, prog_id) {
                    problems.push(format!(
                        "{} on {} runs program {prog_id}, not this generation's ({}); `xpol apply` again repairs it",
                        a.hook,
                        a.interface,
                        if gens.iter().any(|o| runs(o, prog_id)) { "an apply was interrupted while switching" } else { "changed from outside" }
                    ));
                }
                links.push(LinkState { interface: a.interface.clone(), hook: a.hook.clone(), attached, prog_id });
            }
            for (file, _) in pinned.iter().filter(|(f, _)| !g.record.attachments.iter().any(|a| &a.link == f)) {
                problems.push(format!("link {file} is not part of the policy (an apply was interrupted); `xpol apply` again removes it"));
            }
        } else if !pinned.is_empty() {
            problems.push("its links run no program that a readable record names; `xpol delete` removes it".into());
        } else {
            problems.push("no complete record: an apply was interrupted; `xpol delete` removes it".into());
        }
        Ok(Applied { name: name.to_string(), current, links, problems, pinned_links: pinned.into_iter().map(|(f, _)| f).collect(), known_programs })
    }

    /// The applied policy whose program `prog_id` runs on `hook` of `iface`.
    pub fn holder(&self, iface: &str, hook: &str, prog_id: u32) -> Option<String> {
        self.names().ok()?.into_iter().find(|n| {
            self.applied(n).is_ok_and(|a| a.links.iter().any(|l| l.interface == iface && l.hook == hook && l.prog_id == prog_id))
        })
    }

    /// Removes an applied policy: unpinning its links detaches it (no
    /// process holds them), and its maps go with their last reference.
    pub fn delete(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let dir = self.dir(name);
        if std::fs::symlink_metadata(&dir).is_err() {
            return Err(RuntimeError::NotApplied(name.to_string()));
        }
        check_dir(&dir)?;
        // What its record says of a `synproxy`; an unreadable record may
        // have had one: its table is removed if present.
        let record = self.applied(name).ok().and_then(|a| a.current).map(|g| g.record);
        std::fs::remove_dir_all(&dir).map_err(|e| RuntimeError::Store(format!("cannot remove {}: {e}", dir.display())))?;
        // The programs are gone: the host's side of their `synproxy` goes after them.
        match &record {
            Some(r) if !r.meta.synproxies.is_empty() => {
                // Both tried: the sysctl goes back even if nft cannot run.
                let removed = crate::synproxy::remove_table(name).map_err(RuntimeError::from);
                let released = self.release_tcp_loose(name, r.tcp_loose_before.as_deref());
                removed.and(released).map_err(|e| RuntimeError::Store(format!("`{name}` was detached and removed, but not all of its `synproxy`'s host side (nftables table inet {}): {e}", crate::synproxy::table_name(name))))?;
            }
            Some(_) => {}
            None => {
                let _ = crate::synproxy::remove_table(name);
            }
        }
        Ok(())
    }

    /// The sysctl value recorded by another applied policy with a
    /// `synproxy` than `name`, and whether there is one (it still needs
    /// the sysctl at 0).
    pub(crate) fn other_synproxy(&self, name: &str) -> Result<(bool, Option<String>)> {
        let mut any = false;
        let mut before = None;
        for other in self.names()?.into_iter().filter(|n| n != name) {
            let Ok(Some(g)) = self.applied(&other).map(|a| a.current) else { continue };
            if !g.record.meta.synproxies.is_empty() {
                any = true;
                before = before.or(g.record.tcp_loose_before);
            }
        }
        Ok((any, before))
    }

    /// `name`'s `synproxy` went: when it was the last applied one
    /// with a `synproxy`, the sysctl goes back to `before` (recorded when
    /// xpol first set it to 0).
    pub(crate) fn release_tcp_loose(&self, name: &str, before: Option<&str>) -> Result<()> {
        if let Some(value) = before {
            if !self.other_synproxy(name)?.0 {
                crate::synproxy::restore_loose(value)?;
            }
        }
        Ok(())
    }
}

fn not_permitted_or(path: &Path, e: std::io::Error) -> RuntimeError {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        RuntimeError::NotPermitted(format!("cannot open {}: run as root (xpol keeps applied policies there, readable by root only)", path.display()))
    } else {
        RuntimeError::Store(format!("{}: {e}", path.display()))
    }
}

/// The link pins in a policy's directory.
pub(crate) fn link_pins(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).map_err(|e| RuntimeError::Store(format!("{}: {e}", dir.display())))?;
    Ok(entries.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).filter(|n| n.starts_with("link_")).collect())
}

/// The generation numbers under a policy's directory, ascending.
pub(crate) fn generations(dir: &Path) -> Result<Vec<u64>> {
    let entries = std::fs::read_dir(dir).map_err(|e| RuntimeError::Store(format!("{}: {e}", dir.display())))?;
    let mut gens: Vec<u64> = entries.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_prefix("gen_")).and_then(|g| g.parse().ok())).collect();
    gens.sort_unstable();
    Ok(gens)
}

/// Checks that the map pinned at `path` has the key and value sizes xpol
/// reads it with: the kernel writes a map's own sizes into the buffers it
/// is given, so a pin of another shape (planted, or from another version)
/// must never reach a lookup.
pub(crate) fn check_map_shape(path: &Path, fd: std::os::fd::BorrowedFd<'_>, key_size: u32, value_size: u32) -> Result<()> {
    let (_, key, value, _) = sys::map_shape(fd).map_err(|e| RuntimeError::Store(format!("{}: {e}", path.display())))?;
    if (key, value) != (key_size, value_size) {
        return Err(RuntimeError::Store(format!(
            "{}: a map with {key}-byte keys and {value}-byte values, where xpol keeps {key_size} and {value_size}: not xpol's, or from another version",
            path.display()
        )));
    }
    Ok(())
}

/// Reads a generation's record and object.
pub(crate) fn read_generation(dir: &Path) -> Result<Generation> {
    check_dir(dir)?;
    let blob = read_blob(&dir.join("record"))?;
    let bad = |why: &str| RuntimeError::Store(format!("{}: {why}", dir.join("record").display()));
    if blob.len() < 16 || &blob[..8] != BLOB_MAGIC {
        return Err(bad("not an xpol record"));
    }
    let json_len = u32::from_le_bytes(blob[8..12].try_into().expect("4 bytes")) as usize;
    let object_len = u32::from_le_bytes(blob[12..16].try_into().expect("4 bytes")) as usize;
    if blob.len() < 16 + json_len + object_len {
        return Err(bad("truncated"));
    }
    let record: Record = serde_json::from_slice(&blob[16..16 + json_len]).map_err(|e| bad(&format!("unreadable ({e})")))?;
    if record.schema != RECORD_SCHEMA {
        return Err(bad(&format!("record schema {} (this xpol reads {RECORD_SCHEMA})", record.schema)));
    }
    record.meta.check().map_err(|e| bad(&e))?;
    let object = blob[16 + json_len..16 + json_len + object_len].to_vec();
    Ok(Generation { record, object, dir: dir.to_path_buf() })
}

/// Writes a record and its object as the blob map `dir/record`. The map is
/// filled before it is pinned, and never written again: a reader sees a
/// whole record or none.
pub(crate) fn write_record(dir: &Path, record: &Record, object: &[u8]) -> Result<()> {
    let json = serde_json::to_vec(record).map_err(|e| RuntimeError::Store(e.to_string()))?;
    let too_big = || RuntimeError::Store("record over 4 GiB".into());
    let mut blob = Vec::with_capacity(16 + json.len() + object.len());
    blob.extend_from_slice(BLOB_MAGIC);
    blob.extend_from_slice(&u32::try_from(json.len()).map_err(|_| too_big())?.to_le_bytes());
    blob.extend_from_slice(&u32::try_from(object.len()).map_err(|_| too_big())?.to_le_bytes());
    blob.extend_from_slice(&json);
    blob.extend_from_slice(object);
    let chunks = blob.len().div_ceil(BLOB_CHUNK).max(1);
    let io = |e: std::io::Error| RuntimeError::Store(format!("{}: {e}", dir.join("record").display()));
    let fd = sys::array_map_create("xpol_record", BLOB_CHUNK as u32, chunks as u32).map_err(io)?;
    blob.resize(chunks * BLOB_CHUNK, 0);
    for (i, chunk) in blob.chunks_exact(BLOB_CHUNK).enumerate() {
        sys::map_update(fd.as_fd(), &(i as u32).to_le_bytes(), chunk, 0).map_err(io)?;
    }
    sys::obj_pin(fd.as_fd(), &dir.join("record")).map_err(io)
}

fn read_blob(path: &Path) -> Result<Vec<u8>> {
    let io = |e: std::io::Error| RuntimeError::Store(format!("{}: {e}", path.display()));
    let fd = sys::obj_get(path, sys::BPF_F_RDONLY).map_err(io)?;
    check_map_shape(path, fd.as_fd(), 4, BLOB_CHUNK as u32)?;
    let mut out = Vec::new();
    let mut chunk = vec![0u8; BLOB_CHUNK];
    let mut i = 0u32;
    // An array map has every key below max_entries; the first missing one ends it.
    while sys::map_lookup(fd.as_fd(), &i.to_le_bytes(), &mut chunk).map_err(io)? {
        out.extend_from_slice(&chunk);
        i += 1;
        if out.len() >= 16 {
            let need = 16 + u32::from_le_bytes(out[8..12].try_into().expect("4")) as usize + u32::from_le_bytes(out[12..16].try_into().expect("4")) as usize;
            if out.len() >= need {
                break;
            }
        }
    }
    Ok(out)
}

/// The counters carried over into a generation: one (packets, bytes) per
/// counter slot (`xpol_lang::meta::counter_slots`: the rules', then the
/// `@maps`' lost updates), in a one-entry array map `dir/base`, written
/// once after the switch (when the previous generation's counters are
/// final).
pub(crate) fn create_base(dir: &Path, slots: usize) -> Result<OwnedFd> {
    let io = |e: std::io::Error| RuntimeError::Store(format!("{}: {e}", dir.join("base").display()));
    let fd = sys::array_map_create("xpol_base", (16 * slots.max(1)) as u32, 1).map_err(io)?;
    sys::obj_pin(fd.as_fd(), &dir.join("base")).map_err(io)?;
    Ok(fd)
}

pub(crate) fn write_base(fd: &OwnedFd, counters: &[RuleCounters]) -> Result<()> {
    let mut value = vec![0u8; 16 * counters.len().max(1)];
    for (c, out) in counters.iter().zip(value.chunks_exact_mut(16)) {
        out[..8].copy_from_slice(&c.packets.to_le_bytes());
        out[8..].copy_from_slice(&c.bytes.to_le_bytes());
    }
    sys::map_update(fd.as_fd(), &0u32.to_le_bytes(), &value, 0).map_err(|e| RuntimeError::Store(format!("base counters: {e}")))
}

/// The carried-over counters of a generation, one per counter slot
/// (zeros when it has none).
pub(crate) fn read_base(dir: &Path, slots: usize) -> Vec<RuleCounters> {
    let mut out = vec![RuleCounters::default(); slots];
    let path = dir.join("base");
    let Ok(fd) = sys::obj_get(&path, sys::BPF_F_RDONLY) else { return out };
    if check_map_shape(&path, fd.as_fd(), 4, 16 * slots.max(1) as u32).is_err() {
        return out;
    }
    let mut value = vec![0u8; 16 * slots.max(1)];
    if sys::map_lookup(fd.as_fd(), &0u32.to_le_bytes(), &mut value).unwrap_or(false) {
        for (c, v) in out.iter_mut().zip(value.chunks_exact(16)) {
            c.packets = u64::from_le_bytes(v[..8].try_into().expect("8"));
            c.bytes = u64::from_le_bytes(v[8..].try_into().expect("8"));
        }
    }
    out
}

/// Elements in the order people read them: numbers and addresses by
/// value (IPv4 before IPv6), then by prefix length or range end.
fn element_order(e: &str) -> (u8, u128, u128, String) {
    if let Some((lo, hi)) = e.split_once("..").and_then(|(l, h)| Some((l.parse::<u64>().ok()?, h.parse::<u64>().ok()?))) {
        return (0, u128::from(lo), u128::from(hi), String::new());
    }
    if let Ok(n) = e.parse::<u64>() {
        return (0, u128::from(n), u128::from(n), String::new());
    }
    let (addr, len) = e.split_once('/').unwrap_or((e, ""));
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => (1, u128::from(u32::from(a)), len.parse().unwrap_or(32), String::new()),
        Ok(std::net::IpAddr::V6(a)) => (2, u128::from(a), len.parse().unwrap_or(128), String::new()),
        Err(_) => (3, 0, 0, e.to_string()),
    }
}

impl Generation {
    /// The generation's maps and counters, for reading (`xpol stats`),
    /// with the sets' live elements in the metadata.
    pub fn maps(&self) -> Result<PolicyMaps> {
        PolicyMaps::open_dir(&self.dir, self.live_meta()?, read_base(&self.dir, self.record.meta.counter_slots()))
    }

    /// The live elements of set `set`.
    pub fn elements(&self, set: &str) -> Result<Vec<String>> {
        ElementStore::open(&self.dir, set)?.elements()
    }

    /// The record's metadata with each set's live elements.
    pub fn live_meta(&self) -> Result<ObjectMeta> {
        let mut meta = self.record.meta.clone();
        for s in &mut meta.sets {
            s.elements = self.elements(&s.name)?;
        }
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    /// A record of an xpol from before `xpol apply` took `synproxy` has no
    /// `tcp_loose_before` and reads as `None`; one with it round-trips.
    #[test]
    fn records_without_the_sysctl_value_read_as_none() {
        let old = r#"{"schema":1,"name":"web","generation":3,"source":"web.xpol","applied_unix":0,"attachments":[],"programs":{},
            "meta":{"version":11,"source":"p.xpol","programs":[],"rules":[],"sets":[],"maps":[],"redirects":[]},"declared":{}}"#;
        let record: super::Record = serde_json::from_str(old).expect("reads");
        assert_eq!(record.tcp_loose_before, None);
        assert!(!serde_json::to_string(&record).expect("writes").contains("tcp_loose_before"));
        let with = super::Record { tcp_loose_before: Some("1".into()), ..record };
        let back: super::Record = serde_json::from_str(&serde_json::to_string(&with).expect("writes")).expect("reads");
        assert_eq!(back.tcp_loose_before.as_deref(), Some("1"));
    }
}
