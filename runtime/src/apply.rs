//! Applying a policy so that it outlives the process (`xpol apply`), and
//! replacing an applied policy without a gap while keeping its state.
//!
//! A replace loads and verifies the new object beside the running one,
//! hands it the state that survives (below), and then switches every link
//! with `BPF_LINK_UPDATE`, a compare-and-swap on the program the link runs:
//! each packet meets the old program or the new one, never neither. If
//! anything fails before the switch, the old program keeps running and
//! nothing of the new one is left; if a switch fails halfway, the links
//! already switched are switched back.
//!
//! What survives a replace:
//! - `@maps` whose name and type (keys, value kind, per-CPU, capacity) are
//!   unchanged: the new programs use the same kernel maps, so nothing is
//!   copied and no update is lost; and so do their counts of lost updates
//!   (a map full before is full after). A map whose capacity changed is a
//!   new, empty map, whose lost updates count from 0.
//! - Named sets: a set whose declaration in the policy is unchanged keeps
//!   its live contents (what `xpol set` made of it); a set whose
//!   declaration changed gets the new declaration.
//! - Per-rule counters of the rules that still exist, by rule identity
//!   ([`rule_identities`]): added to the new generation's counters once the
//!   old programs can no longer run.

use crate::loader::{self, LoadOptions, LoadedPolicy, RuntimeError, XdpAttachMode};
use crate::store::{self, Attachment, Generation, Record, Store};
use crate::sys;
use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use xpol_lang::meta::{ObjectMeta, RuleCounters};

type Result<T> = std::result::Result<T, RuntimeError>;

/// What to apply, and where.
pub struct ApplyRequest<'a> {
    pub name: &'a str,
    pub object: &'a [u8],
    /// The policy as the user named it (shown by `xpol list`).
    pub source: String,
    pub interfaces: Vec<String>,
    /// The hooks to attach; `None`: every hook the policy has.
    pub hooks: Option<Vec<String>>,
    pub mode: XdpAttachMode,
    /// Set contents that replace the live ones (from `xpol set`).
    pub set_contents: BTreeMap<String, Vec<String>>,
}

/// What an apply did.
#[derive(Debug, Default, serde::Serialize)]
pub struct ApplyOutcome {
    pub generation: u64,
    /// A running policy was replaced (rather than first applied).
    pub replaced: bool,
    /// Rules whose counters were carried over.
    pub rules_carried: usize,
    /// `@maps` handed on to the new programs.
    pub maps_kept: Vec<String>,
    /// Sets that kept their live contents.
    pub sets_kept: Vec<String>,
    /// Sets filled from the new declaration.
    pub sets_reset: Vec<String>,
    /// What went wrong after the switch (the new version runs).
    pub warnings: Vec<String>,
}

fn mode_name(mode: XdpAttachMode) -> &'static str {
    match mode {
        XdpAttachMode::Auto => "auto",
        XdpAttachMode::Native => "native",
        XdpAttachMode::Generic => "generic",
    }
}

pub fn parse_mode(mode: &str) -> Option<XdpAttachMode> {
    match mode {
        "auto" => Some(XdpAttachMode::Auto),
        "native" | "drv" => Some(XdpAttachMode::Native),
        "generic" | "skb" => Some(XdpAttachMode::Generic),
        _ => None,
    }
}

/// A rule's identity across versions of a policy: its header (hook and
/// predicate) as written, with white space folded, and, for rules with the
/// same header, which of them it is in source order (` #2`, ...). It
/// survives moving a rule, editing its body, editing any other rule and
/// running from another directory; editing its predicate makes it a new
/// rule.
pub fn rule_identities(meta: &ObjectMeta) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    meta.rules
        .iter()
        .map(|r| {
            let key = r.text.split_whitespace().collect::<Vec<_>>().join(" ");
            let n = seen.entry(key.clone()).or_default();
            *n += 1;
            if *n == 1 { key } else { format!("{key} #{n}") }
        })
        .collect()
}

/// What a replace needs of the running policy.
struct Running {
    generation: Generation,
    /// Descriptors of every program a readable generation names, held
    /// from before the switch to after it: the kernel frees a program that
    /// nothing runs, and a rollback must be able to switch back to it.
    programs: HashMap<u32, std::os::fd::OwnedFd>,
    /// Link pins in the policy's directory, recorded or not.
    pinned_links: Vec<String>,
}

/// Applies `req` under the (exclusively locked) store: first apply, or
/// replace of the running generation.
pub fn apply(store: &Store, req: &ApplyRequest) -> Result<ApplyOutcome> {
    store::check_name(req.name)?;
    let fail = |message: String| RuntimeError::Apply { name: req.name.to_string(), message };
    let dir = store.dir(req.name);
    let mut running = None;
    if std::fs::symlink_metadata(&dir).is_ok() {
        let applied = store.applied(req.name)?;
        match applied.current {
            Some(generation) => {
                let programs = applied.known_programs.iter().filter_map(|&id| sys::prog_fd_by_id(id).ok().map(|fd| (id, fd))).collect();
                running = Some(Running { generation, programs, pinned_links: applied.pinned_links });
            }
            // Links that run nothing xpol can read: never replace (or
            // remove) what cannot be put back.
            None if !applied.pinned_links.is_empty() => {
                return Err(fail(format!("{}; nothing was changed", applied.problems.join("; "))));
            }
            None => {}
        }
    }
    let previous = running.as_ref().map(|r| &r.generation);
    let req = &normalized(req, previous)?;
    // Nothing of a first apply that fails stays behind (the directory
    // holds no link of a running policy: see above).
    let forget = |e: RuntimeError| {
        if previous.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        e
    };
    store::own_dir(&dir)?;
    let meta = loader::read_meta(req.object).map_err(forget)?;
    let mut outcome = ApplyOutcome { replaced: previous.is_some(), ..Default::default() };

    // State handed on: set contents and @maps.
    let set_elements = carried_sets(&meta, previous, &req.set_contents, &mut outcome).map_err(forget)?;
    let mut adopt_maps = Vec::new();
    let old_maps = previous.map(Generation::maps).transpose()?;
    if let (Some(prev), Some(old)) = (previous, &old_maps) {
        for m in &meta.maps {
            if prev.record.meta.maps.iter().any(|o| o.same_map(m)) {
                adopt_maps.push((m.map.clone(), Arc::new(old.map_fd(&m.map)?)));
                outcome.maps_kept.push(m.name.clone());
            }
        }
    }
    let options = LoadOptions { missing_interfaces_ok: false, adopt_maps };
    let mut loaded = LoadedPolicy::load_with_elements(req.object, &options, &set_elements).map_err(forget)?;

    // The new generation: maps, carried-counter slots and record, pinned
    // before any link runs it.
    let generation = store::generations(&dir)?.last().copied().unwrap_or(0).max(previous.map_or(0, |p| p.record.generation)) + 1;
    outcome.generation = generation;
    let gen_dir = dir.join(format!("gen_{generation}"));
    store::own_dir(&gen_dir).map_err(forget)?;
    let taken = running.as_ref().map(|r| r.pinned_links.clone()).unwrap_or_default();
    let staged = stage(&mut loaded, req, previous, &taken, &gen_dir, generation);
    let (record, base) = match staged {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&gen_dir);
            return Err(forget(e));
        }
    };
    // What the old rules counted so far, carried already, so that a kill
    // during the switch loses at most what they count meanwhile.
    if let (Some(prev), Some(old)) = (previous, &old_maps) {
        let (counters, _) = carried_counters(&prev.record.meta, &old.slot_counters()?, &record.meta);
        store::write_base(&base, &counters)?;
    }

    // The switch.
    let no_programs = HashMap::new();
    let held = running.as_ref().map_or(&no_programs, |r| &r.programs);
    if let Err(failure) = switch(&mut loaded, &dir, &record, held) {
        if failure.rolled_back {
            let _ = std::fs::remove_dir_all(&gen_dir);
            return Err(forget(name_the_holder(store, failure.error)));
        }
        // Some links run the new generation and could not be switched
        // back: keep it, so that what runs stays listed.
        return Err(fail(format!("{}; some links already run the new version and could not be switched back: `xpol list` shows the state, `xpol apply` again completes it", failure.error)));
    }

    // Past the switch the new version runs: what fails now is a warning.
    if let (Some(prev), Some(old)) = (previous, &old_maps) {
        // Once the old programs can no longer run, their counters are final.
        sys::wait_for_running_programs();
        let carried = old.slot_counters().and_then(|c| {
            let (counters, carried) = carried_counters(&prev.record.meta, &c, &record.meta);
            store::write_base(&base, &counters).map(|()| carried)
        });
        match carried {
            Ok(n) => outcome.rules_carried = n,
            Err(e) => outcome.warnings.push(format!("counters of the old version: {e}")),
        }
    }
    // Links the new version does not have (dropped attachments, leftovers
    // of an interrupted apply): unpinning detaches them.
    for link in store::link_pins(&dir)?.into_iter().filter(|l| !record.attachments.iter().any(|a| &a.link == l)) {
        if let Err(e) = std::fs::remove_file(dir.join(&link)) {
            outcome.warnings.push(format!("cannot remove {link}: {e}"));
        }
    }
    // Earlier generations are no longer run by anything.
    for g in store::generations(&dir)?.into_iter().filter(|&g| g != generation) {
        if let Err(e) = std::fs::remove_dir_all(dir.join(format!("gen_{g}"))) {
            outcome.warnings.push(format!("cannot remove generation {g}: {e}"));
        }
    }
    Ok(outcome)
}

/// `req` with interfaces and hooks each named once (a link per pair), and
/// the XDP mode of a replace: a link keeps its mode across
/// `BPF_LINK_UPDATE`, so `auto` keeps the running one and another mode is
/// refused.
fn normalized<'a>(req: &ApplyRequest<'a>, previous: Option<&Generation>) -> Result<ApplyRequest<'a>> {
    let unique = |v: &[String]| v.iter().fold(Vec::<String>::new(), |mut out, x| {
        if !out.contains(x) {
            out.push(x.clone());
        }
        out
    });
    let interfaces = unique(&req.interfaces);
    let hooks = req.hooks.as_deref().map(unique);
    let mut mode = req.mode;
    if let Some(old) = previous.and_then(|p| p.record.attachments.iter().find(|a| a.hook == "xdp")) {
        let old_mode = parse_mode(&old.mode).unwrap_or_default();
        if mode == XdpAttachMode::Auto {
            mode = old_mode;
        } else if mode != old_mode {
            return Err(RuntimeError::Apply {
                name: req.name.to_string(),
                message: format!(
                    "it runs XDP in {} mode, and a replace keeps the mode; to change it, `xpol delete {}` and apply again (a gap)",
                    old.mode, req.name
                ),
            });
        }
    }
    Ok(ApplyRequest {
        name: req.name,
        object: req.object,
        source: req.source.clone(),
        interfaces,
        hooks,
        mode,
        set_contents: req.set_contents.clone(),
    })
}

/// The old counters of each new counter slot, from the old slots
/// (`old`, see `xpol_lang::meta::counter_slots`): a rule's by rule
/// identity, a `@map`'s lost updates when the map is handed on (the same
/// kernel map, [`xpol_lang::meta::UserMapMeta::same_map`]); and how many new rules had an
/// old one.
fn carried_counters(old_meta: &ObjectMeta, old: &[RuleCounters], new_meta: &ObjectMeta) -> (Vec<RuleCounters>, usize) {
    let old_ids = rule_identities(old_meta);
    let mut carried = 0;
    let mut counters: Vec<RuleCounters> = rule_identities(new_meta)
        .iter()
        .map(|id| match old_ids.iter().position(|o| o == id) {
            Some(i) => {
                carried += 1;
                old.get(i).copied().unwrap_or_default()
            }
            None => RuleCounters::default(),
        })
        .collect();
    counters.resize(new_meta.counter_slots(), RuleCounters::default());
    for m in &new_meta.maps {
        let old_map = old_meta.maps.iter().find(|o| o.same_map(m));
        if let (Some(new), Some(was)) = (m.lost_slot, old_map.and_then(|o| o.lost_slot)) {
            if let (Some(c), Some(v)) = (counters.get_mut(new as usize), old.get(was as usize)) {
                *c = *v;
            }
        }
    }
    (counters, carried)
}

/// An XDP hook held by another applied policy: say which, with the store
/// this apply holds (the loader cannot read it meanwhile).
fn name_the_holder(store: &Store, e: RuntimeError) -> RuntimeError {
    match e {
        RuntimeError::XdpBusy { iface, .. } => RuntimeError::XdpBusy { holder: loader::xdp_holder(&iface, Some(store)), iface },
        e => e,
    }
}

/// The contents each set of the new object gets (see the module doc).
fn carried_sets(meta: &ObjectMeta, previous: Option<&Generation>, given: &BTreeMap<String, Vec<String>>, outcome: &mut ApplyOutcome) -> Result<HashMap<String, Vec<String>>> {
    let mut out = HashMap::new();
    for s in &meta.sets {
        if let Some(elements) = given.get(&s.name) {
            out.insert(s.name.clone(), elements.clone());
            continue;
        }
        // A failed read of the live contents is an error, never a reset.
        let keeps = previous.filter(|p| {
            p.record.meta.sets.iter().any(|o| o.name == s.name && o.elem == s.elem)
                && p.record.declared.get(&s.name) == Some(&store::declaration_digest(&s.elements))
        });
        let live = keeps.map(|p| p.elements(&s.name)).transpose()?;
        match live {
            Some(elements) => {
                outcome.sets_kept.push(s.name.clone());
                out.insert(s.name.clone(), elements);
            }
            None => outcome.sets_reset.push(s.name.clone()),
        }
    }
    Ok(out)
}

/// Pins the new generation's maps, its carried-counter map, its sets'
/// elements and its record.
fn stage(loaded: &mut LoadedPolicy, req: &ApplyRequest, previous: Option<&Generation>, taken: &[String], gen_dir: &Path, generation: u64) -> Result<(Record, std::os::fd::OwnedFd)> {
    loaded.pin_maps(gen_dir)?;
    let mut meta = loaded.meta().clone();
    for s in &mut meta.sets {
        // The set's declared capacity; objects from before it was recorded: the maps'.
        let capacity = if s.capacity > 0 { s.capacity } else { s.maps.iter().map(|m| u64::from(m.max_entries)).max().unwrap_or(1024) };
        store::ElementStore::create(gen_dir, &s.name, &s.elements, capacity)?;
        s.elements.clear();
    }
    let base = store::create_base(gen_dir, meta.counter_slots())?;
    let hooks: Vec<String> = match &req.hooks {
        Some(h) => h.clone(),
        None => meta.programs.iter().map(|p| p.hook.clone()).collect(),
    };
    let mut programs = BTreeMap::new();
    for h in &hooks {
        programs.insert(h.clone(), sys::prog_id(loaded.program_fd(h)?).map_err(|e| RuntimeError::Store(format!("program info: {e}")))?);
    }
    // Links keep their pin file across generations; new ones take free names.
    let old = previous.map(|p| p.record.attachments.clone()).unwrap_or_default();
    // Never the name of a pin already there (a leftover is removed after the switch).
    let mut used: Vec<String> = old.iter().map(|a| a.link.clone()).chain(taken.iter().cloned()).collect();
    let mut attachments = Vec::new();
    for iface in &req.interfaces {
        for hook in &hooks {
            let link = match old.iter().find(|a| &a.interface == iface && &a.hook == hook) {
                Some(a) => a.link.clone(),
                None => {
                    let free = (0..).map(|i| format!("link_{i}")).find(|l| !used.contains(l)).expect("a free name");
                    used.push(free.clone());
                    free
                }
            };
            attachments.push(Attachment { interface: iface.clone(), hook: hook.clone(), mode: mode_name(req.mode).into(), link });
        }
    }
    // Declarations come from the object (the policy's own text), whatever
    // contents the sets were filled with.
    let object_meta = loader::read_meta(req.object)?;
    let declared = object_meta.sets.iter().map(|s| (s.name.clone(), store::declaration_digest(&s.elements))).collect();
    let record = Record {
        schema: store::RECORD_SCHEMA,
        name: req.name.to_string(),
        generation,
        source: req.source.clone(),
        applied_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        attachments,
        programs,
        meta,
        declared,
    };
    store::write_record(gen_dir, &record, req.object)?;
    Ok((record, base))
}

/// Why a switch failed, and whether every link runs what it ran before.
struct SwitchFailure {
    error: RuntimeError,
    rolled_back: bool,
}

/// What one step of a switch did, to undo it.
enum Step {
    /// The link ran this program (held in `held`) and now runs the new one.
    Updated(u32),
    /// A new link was attached and pinned.
    Attached,
}

/// Switches every attachment of `record` to the new programs. A link
/// pinned and attached is switched by compare-and-swap from the program
/// it runs, which must be one of this policy's (`held`: a kill during an
/// earlier switch may have left links on different generations); a link
/// whose interface went away, or that is missing, is attached afresh. On
/// failure, switches back what it switched.
fn switch(loaded: &mut LoadedPolicy, dir: &Path, record: &Record, held: &HashMap<u32, std::os::fd::OwnedFd>) -> std::result::Result<(), SwitchFailure> {
    let fail = |message: String| RuntimeError::Apply { name: record.name.clone(), message };
    let mut done: Vec<(&Attachment, Step)> = Vec::new();
    let mut failed = None;
    for a in &record.attachments {
        let path = dir.join(&a.link);
        let link = sys::obj_get(&path, 0).ok().and_then(|fd| sys::link_info(fd.as_fd()).ok().map(|info| (fd, info)));
        let step = match link {
            Some((fd, info)) if info.ifindex != 0 => match held.get(&info.prog_id) {
                Some(expected) => loaded
                    .program_fd(&a.hook)
                    .and_then(|new| sys::link_update(fd.as_fd(), new, expected.as_fd()).map_err(|e| fail(format!("switching {} on {}: {e}", a.hook, a.interface))))
                    .map(|()| Step::Updated(info.prog_id)),
                None => Err(fail(format!(
                    "{} on {} runs program {}, which is not this policy's (changed from outside); nothing was replaced",
                    a.hook, a.interface, info.prog_id
                ))),
            },
            // Missing, or detached under us: attach afresh.
            stale => {
                if stale.is_some() {
                    let _ = std::fs::remove_file(&path);
                }
                let mode = parse_mode(&a.mode).unwrap_or_default();
                loaded.attach(&a.hook, &a.interface, mode).and_then(|()| loaded.pin_last_link(&path)).map(|()| Step::Attached)
            }
        };
        match step {
            Ok(step) => done.push((a, step)),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let Some(error) = failed else { return Ok(()) };
    let mut rolled_back = true;
    for (a, step) in done {
        let path = dir.join(&a.link);
        rolled_back &= match step {
            Step::Updated(id) => {
                let back = sys::obj_get(&path, 0).ok().zip(held.get(&id)).zip(loaded.program_fd(&a.hook).ok());
                back.is_some_and(|((link, old), new)| sys::link_update(link.as_fd(), old.as_fd(), new).is_ok())
            }
            Step::Attached => std::fs::remove_file(&path).is_ok(),
        };
    }
    Err(SwitchFailure { error, rolled_back })
}

/// A change to one named set of an applied policy.
pub enum SetChange {
    Add(Vec<String>),
    Delete(Vec<String>),
    Replace(Vec<String>),
    Flush,
}

/// Changes set `set` of the applied policy `name` (see [`SetEditor`]).
pub fn change_set(store: &Store, name: &str, set: &str, change: SetChange) -> Result<()> {
    SetEditor::open(store, name, set)?.change(store, change)
}

/// Changes to one named set of an applied policy, under the store's lock.
///
/// A single element that lives in one key of a hash or LPM map (an
/// integer, a MAC address, an IPv6 prefix) is added or removed in place:
/// one map update, which the kernel makes atomic for the packet path.
/// Everything else (IPv4 prefixes, which live in the shared prefix
/// tables; ranges; several elements at once; replace and flush) loads the
/// applied object again with the new contents and switches to it, as a
/// replace does: a packet sees the whole old set or the whole new one.
pub struct SetEditor {
    name: String,
    set: xpol_lang::meta::SetMeta,
    elements: store::ElementStore,
    maps: HashMap<String, std::os::fd::OwnedFd>,
}

impl SetEditor {
    pub fn open(store: &Store, name: &str, set: &str) -> Result<SetEditor> {
        let applied = store.applied(name)?;
        let current = applied.current.ok_or_else(|| RuntimeError::NotApplied(name.to_string()))?;
        let meta = &current.record.meta;
        let s = meta.sets.iter().find(|s| s.name == set).ok_or_else(|| {
            let names: Vec<&str> = meta.sets.iter().map(|s| s.name.as_str()).collect();
            RuntimeError::Apply { name: name.into(), message: format!("has no set `{set}` (its sets: {})", if names.is_empty() { "none".into() } else { names.join(", ") }) }
        })?;
        if !s.mutable {
            return Err(RuntimeError::Apply { name: name.into(), message: format!("`{set}` is a constant set: change it in the policy") });
        }
        // In-place changes go to the current generation's maps: they must be
        // what every link runs.
        if let Some(l) = applied.links.iter().find(|l| l.attached && !current.record.programs.values().any(|&p| p == l.prog_id)) {
            return Err(RuntimeError::Apply {
                name: name.into(),
                message: format!("{} on {} does not run the recorded version; `xpol apply` again repairs it", l.hook, l.interface),
            });
        }
        let mut maps = HashMap::new();
        for m in s.maps.iter().filter(|m| !m.kind.is_ipv4_table()) {
            let path = current.dir.join(&m.map);
            let fd = sys::obj_get(&path, 0).map_err(|e| RuntimeError::Store(format!("{}: {e}", path.display())))?;
            // The kernel writes a map's own key size: it must be the one the metadata says.
            let key_size = if m.kind == xpol_lang::meta::SetMapKind::LpmV6 { 20 } else { 8 };
            store::check_map_shape(&path, fd.as_fd(), key_size, 1)?;
            maps.insert(m.map.clone(), fd);
        }
        Ok(SetEditor { name: name.into(), set: s.clone(), elements: store::ElementStore::open(&current.dir, set)?, maps })
    }

    fn canonical(&self, e: &str) -> Result<String> {
        loader::canonical_element(self.set.elem, e).map_err(|reason| RuntimeError::SetElement { set: self.set.name.clone(), element: e.escape_debug().to_string(), reason })
    }

    /// The one map key that holds `element`, if it lives in one key of a
    /// hash or LPM map (not in the IPv4 tables).
    fn single_key(&self, element: &str) -> Option<(&std::os::fd::OwnedFd, Vec<u8>)> {
        if self.set.elem == xpol_lang::meta::SetElem::Cidr && !element.contains(':') {
            return None;
        }
        let mut keys = self.set.maps.iter().filter(|m| !m.kind.is_ipv4_table()).flat_map(|m| {
            loader::set_keys(m.kind, element).unwrap_or_default().into_iter().map(move |k| (m.map.as_str(), k))
        });
        let (map, key) = keys.next()?;
        keys.next().is_none().then(|| self.maps.get(map).map(|fd| (fd, key))).flatten()
    }

    /// Applies `change`; the editor then refers to the set as changed.
    pub fn change(&mut self, store: &Store, change: SetChange) -> Result<()> {
        let one = match &change {
            SetChange::Add(v) | SetChange::Delete(v) if v.len() == 1 => Some(self.canonical(&v[0])?),
            _ => None,
        };
        if let Some(e) = one {
            let add = matches!(change, SetChange::Add(_));
            if let Some((fd, key)) = self.single_key(&e) {
                if add || self.set.elem != xpol_lang::meta::SetElem::Int || !self.covered_by_another(&e)? {
                    return self.change_in_place(add, &e, fd.as_fd(), &key);
                }
            }
        }
        let mut elements = self.elements.elements()?;
        match change {
            SetChange::Add(new) => {
                for e in &new {
                    let e = self.canonical(e)?;
                    if !elements.contains(&e) {
                        elements.push(e);
                    }
                }
            }
            SetChange::Delete(gone) => {
                for e in &gone {
                    let e = self.canonical(e)?;
                    let at = elements.iter().position(|x| *x == e).ok_or_else(|| self.not_in_set(&e))?;
                    elements.remove(at);
                }
            }
            SetChange::Replace(new) => elements = new.iter().map(|e| self.canonical(e)).collect::<Result<_>>()?,
            SetChange::Flush => elements.clear(),
        }
        self.switch_to(store, elements)
    }

    fn not_in_set(&self, e: &str) -> RuntimeError {
        RuntimeError::SetElement { set: self.set.name.clone(), element: e.to_string(), reason: "not in the set".into() }
    }

    /// One element added or removed with one map update. The list first on
    /// add, the packet path first on delete, and an add or delete of what
    /// is (not) listed still updates the map: a crash between the two
    /// leaves a listed element that repeating the command mends.
    fn change_in_place(&self, add: bool, e: &str, map: std::os::fd::BorrowedFd<'_>, key: &[u8]) -> Result<()> {
        let err = |source: std::io::Error| RuntimeError::Map { map: format!("set {}", self.set.name), source };
        let full = || RuntimeError::SetFull {
            set: self.set.name.clone(),
            capacity: self.set.capacity,
            needed: "and one more was added".into(),
        };
        if add {
            if !self.elements.contains(e)? {
                self.elements.insert(e).map_err(|_| full())?;
            }
            sys::map_update(map, key, &[1], 0).map_err(|source| {
                let _ = self.elements.remove(e);
                match source.raw_os_error() {
                    Some(libc::E2BIG) | Some(libc::ENOSPC) => full(),
                    _ => err(source),
                }
            })
        } else {
            if !self.elements.contains(e)? {
                return Err(self.not_in_set(e));
            }
            sys::map_delete(map, key).map_err(err)?;
            self.elements.remove(e).map(|_| ())
        }
    }

    /// Whether another element of the set covers `e`'s one key (an integer
    /// inside a listed range): deleting the key would then remove more
    /// than `e`.
    fn covered_by_another(&self, e: &str) -> Result<bool> {
        let Ok(v) = e.parse::<u64>() else { return Ok(false) };
        Ok(self.elements.elements()?.iter().any(|x| {
            x.split_once("..").and_then(|(lo, hi)| Some((lo.parse::<u64>().ok()?, hi.parse::<u64>().ok()?))).is_some_and(|(lo, hi)| lo <= v && v <= hi)
        }))
    }

    /// Loads the applied object again with `elements` in the set and
    /// switches to it.
    fn switch_to(&mut self, store: &Store, elements: Vec<String>) -> Result<()> {
        let applied = store.applied(&self.name)?;
        let current = applied.current.ok_or_else(|| RuntimeError::NotApplied(self.name.clone()))?;
        let r = &current.record;
        // The same attachments (`apply` names each pair once, and `auto`
        // keeps the running XDP mode).
        let req = ApplyRequest {
            name: &self.name,
            object: &current.object,
            source: r.source.clone(),
            interfaces: r.attachments.iter().map(|a| a.interface.clone()).collect(),
            hooks: Some(r.attachments.iter().map(|a| a.hook.clone()).collect()),
            mode: XdpAttachMode::Auto,
            set_contents: BTreeMap::from([(self.set.name.clone(), elements)]),
        };
        // Every other set keeps its live contents: the object's
        // declarations are the ones recorded, so the carry-over rule keeps them.
        apply(store, &req)?;
        *self = SetEditor::open(store, &self.name, &self.set.name)?;
        Ok(())
    }
}
