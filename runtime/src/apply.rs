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
//! - Pools whose declaration (backends, `table`, `flows`, `max`) is
//!   unchanged keep their maps: the backends `xpol pool` made of them, the
//!   Maglev table, the flow table (established flows keep their backend)
//!   and the per-backend counters. A pool whose declaration changed starts
//!   afresh from it, with an empty flow table.
//! - Dynamic sets declared with the same name, type and `max`: the same
//!   kernel map, with the elements the packets (and `xpol set`) added.
//! - Per-rule counters of the rules that still exist, by rule identity
//!   ([`rule_identities`], [`carried_rules`]): added to the new generation's counters once the
//!   old programs can no longer run.

use crate::ipv4_edit::Ipv4Editor;
use crate::ipv6_edit::Ipv6Editor;
use xpol_lang::ipv4_table::mask;
use crate::loader::{self, LoadOptions, LoadedPolicy, RuntimeError, XdpAttachMode};
use crate::store::{self, Attachment, Generation, Record, Store};
use crate::synproxy;
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
    /// Pools that kept their live backends and flows.
    pub pools_kept: Vec<String>,
    /// Pools filled from the new declaration.
    pub pools_reset: Vec<String>,
    /// The connection table was handed on (`ct.state`): the same size.
    pub conntrack_kept: bool,
    /// The nftables table of the policy's `synproxy`, installed or
    /// replaced (docs/language.md, "SYN proxy"); it stays while the
    /// policy is applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synproxy_table: Option<String>,
    /// What went wrong after the switch (the new version runs).
    pub warnings: Vec<String>,
}

/// The mode as the applied record keeps it and messages show it: the
/// words of `--mode` and xdp-tools (`skb`, not `generic`).
fn mode_name(mode: XdpAttachMode) -> &'static str {
    match mode {
        XdpAttachMode::Auto => "auto",
        XdpAttachMode::Native => "native",
        XdpAttachMode::Generic => "skb",
    }
}

/// A mode as a record keeps it; records applied by an older xpol say
/// `generic` for `skb`.
pub fn parse_mode(mode: &str) -> Option<XdpAttachMode> {
    match mode {
        "auto" => Some(XdpAttachMode::Auto),
        "native" | "drv" => Some(XdpAttachMode::Native),
        "generic" | "skb" => Some(XdpAttachMode::Generic),
        _ => None,
    }
}

/// A rule's identity across versions of a policy: its `rule "NAME"`
/// label when it has one; else its header (hook and predicate) as
/// written, with white space folded, and, for rules with the same header,
/// which of them it is in source order (` #2`, ...; labelled rules count
/// too, so that labelling one of two alike rules does not renumber the
/// other). A labelled rule keeps its identity whatever else changes,
/// predicate included. An unlabelled one survives moving it, editing its
/// body, editing any other rule and running from another directory;
/// editing its predicate makes it a new rule. The two kinds never collide:
/// a label has no space, and the compiler refuses the only header
/// identities without one (a hook name alone) as labels.
pub fn rule_identities(meta: &ObjectMeta) -> Vec<String> {
    meta.rules.iter().zip(header_identities(meta)).map(|(r, header)| r.label.clone().unwrap_or(header)).collect()
}

/// Each rule's identity as if no rule had a label.
fn header_identities(meta: &ObjectMeta) -> Vec<String> {
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

/// For each rule of `new`, the rule of `old` whose counters it carries on:
/// the one with the same identity ([`rule_identities`]); failing that, when
/// a label was added to or taken from a rule whose header stayed the same,
/// the old rule of that header (if no other rule carried it on already),
/// so that labelling the rules of a running policy restarts no counter.
pub fn carried_rules(old: &ObjectMeta, new: &ObjectMeta) -> Vec<Option<usize>> {
    let old_ids = rule_identities(old);
    let mut from: Vec<Option<usize>> = rule_identities(new).iter().map(|id| old_ids.iter().position(|o| o == id)).collect();
    let (old_headers, new_headers) = (header_identities(old), header_identities(new));
    for i in 0..from.len() {
        if from[i].is_some() {
            continue;
        }
        let relabelled = |j: &usize| {
            old.rules[*j].label.is_some() != new.rules[i].label.is_some() && old_headers[*j] == new_headers[i] && !from.contains(&Some(*j))
        };
        from[i] = (0..old.rules.len()).find(relabelled);
    }
    from
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
                let mut programs = HashMap::new();
                for &id in &applied.known_programs {
                    match sys::prog_fd_by_id(id) {
                        Ok(fd) => {
                            programs.insert(id, fd);
                        }
                        // Said as what it is, not later as a program
                        // "changed from outside" (a container or service
                        // without CAP_SYS_ADMIN).
                        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                            return Err(fail(
                                "replacing an applied policy opens its running programs by id, which the kernel allows only with CAP_SYS_ADMIN (docs/security.md, Capabilities); nothing was replaced".into(),
                            ));
                        }
                        // Gone since the record was written: nothing runs it.
                        Err(_) => {}
                    }
                }
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
    if let Some(w) = req.hooks.as_deref().and_then(|h| crate::conntrack::unattached_trackers(&meta, h)) {
        outcome.warnings.push(w);
    }

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
        let (kept, reset) = carried_pools(&prev.record.meta, &meta, old, &mut adopt_maps)?;
        (outcome.pools_kept, outcome.pools_reset) = (kept, reset);
        outcome.conntrack_kept = carried_conntrack(&prev.record.meta, &meta, old, &mut adopt_maps)?;
        crate::dynset::carried_dynsets(&prev.record.meta, &meta, old, &mut adopt_maps)?;
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
    let had_synproxy = previous.is_some_and(|p| !p.record.meta.synproxies.is_empty());
    let has_synproxy = !meta.synproxies.is_empty();
    // The host's side of a `synproxy`, before any link runs the new
    // programs: their SYN-ACKs need netfilter's synproxy to complete the
    // handshakes from the first packet. One nft transaction replaces the
    // previous version's table in place. The table first: it loads
    // nf_conntrack, whose sysctl may not exist before (early at boot).
    let (mut tcp_loose_before, mut loose_changed) = (None, None);
    if has_synproxy {
        let installed = synproxy::install_table(req.name, &req.interfaces, &meta.synproxies)
            .map_err(RuntimeError::from)
            .and_then(|()| Ok((recorded_tcp_loose(store, req.name, previous)?, synproxy::loose_to_zero()?)));
        match installed {
            Ok((before, changed)) => (tcp_loose_before, loose_changed) = (before, changed),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&gen_dir);
                undo_netfilter(req.name, previous, None);
                return Err(forget(e));
            }
        }
        outcome.synproxy_table = Some(synproxy::table_name(req.name));
    }
    let staged = stage(&mut loaded, req, previous, &taken, &gen_dir, generation, tcp_loose_before);
    let (record, base) = match staged {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&gen_dir);
            if has_synproxy {
                undo_netfilter(req.name, previous, loose_changed.as_deref());
            }
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
            if has_synproxy {
                undo_netfilter(req.name, previous, loose_changed.as_deref());
            }
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
    // A `synproxy` the new version no longer has: its table goes once no
    // program sends SYN-ACKs for it, and the sysctl when no other applied
    // policy needs it.
    if let Some(prev) = previous.filter(|_| had_synproxy && !has_synproxy) {
        if let Err(e) = synproxy::remove_table(req.name) {
            outcome.warnings.push(format!("the old version's synproxy table: {e}"));
        }
        if let Err(e) = store.release_tcp_loose(req.name, prev.record.tcp_loose_before.as_deref()) {
            outcome.warnings.push(format!("putting back {}: {e}", synproxy::TCP_LOOSE));
        }
    }
    Ok(outcome)
}

/// What `nf_conntrack_tcp_loose` was before xpol set it to 0, for the
/// record of a version with a `synproxy`: its value now when not 0, else
/// what the previous version or another applied policy recorded (xpol set
/// it), else nothing (it was 0 without xpol).
fn recorded_tcp_loose(store: &Store, name: &str, previous: Option<&Generation>) -> Result<Option<String>> {
    let now = std::fs::read_to_string(synproxy::TCP_LOOSE).map_err(synproxy::SynproxyError::Sysctl)?.trim().to_string();
    if now != "0" {
        return Ok(Some(now));
    }
    if let Some(v) = previous.and_then(|p| p.record.tcp_loose_before.clone()) {
        return Ok(Some(v));
    }
    Ok(store.other_synproxy(name)?.1)
}

/// Puts the host's side of `synproxy` back as the previous version had it
/// (its table, or none) after a failed apply; `loose_before`: the sysctl's
/// value when this apply changed it. Best effort: the apply's own error is
/// the one reported.
fn undo_netfilter(name: &str, previous: Option<&Generation>, loose_before: Option<&str>) {
    match previous.filter(|p| !p.record.meta.synproxies.is_empty()) {
        Some(p) => {
            let interfaces = p.record.attachments.iter().fold(Vec::<String>::new(), |mut out, a| {
                if !out.contains(&a.interface) {
                    out.push(a.interface.clone());
                }
                out
            });
            let _ = synproxy::install_table(name, &interfaces, &p.record.meta.synproxies);
        }
        None => {
            let _ = synproxy::remove_table(name);
        }
    }
    if let Some(v) = loose_before {
        let _ = synproxy::restore_loose(v);
    }
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
/// identity ([`carried_rules`]), a `@map`'s lost updates when the map is
/// handed on (the same kernel map, [`xpol_lang::meta::UserMapMeta::same_map`]);
/// and how many new rules had an old one.
pub fn carried_counters(old_meta: &ObjectMeta, old: &[RuleCounters], new_meta: &ObjectMeta) -> (Vec<RuleCounters>, usize) {
    let from = carried_rules(old_meta, new_meta);
    let carried = from.iter().flatten().count();
    let mut counters: Vec<RuleCounters> = from.iter().map(|f| f.and_then(|i| old.get(i).copied()).unwrap_or_default()).collect();
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

/// Hands on the maps of each pool of `new` declared as in `old` (the
/// module doc): the loader then leaves them as they are. Returns the pools
/// kept and those filled afresh.
fn carried_pools(old: &ObjectMeta, new: &ObjectMeta, old_maps: &loader::PolicyMaps, adopt: &mut Vec<(String, Arc<std::os::fd::OwnedFd>)>) -> Result<(Vec<String>, Vec<String>)> {
    let (mut kept, mut reset) = (Vec::new(), Vec::new());
    for p in &new.pools {
        // The whole declaration, map names included: the same maps, of the same sizes.
        if !old.pools.contains(p) {
            reset.push(p.name.clone());
            continue;
        }
        for m in [&p.ring_map, &p.control_map, &p.backends_map, &p.flows_map, &p.stats_map].into_iter().chain(&p.nat_map) {
            adopt.push((m.clone(), Arc::new(old_maps.map_fd(m)?)));
        }
        kept.push(p.name.clone());
    }
    Ok((kept, reset))
}

/// Hands on the connection table when both versions have one of the same
/// size (its layout is the metadata version's): connections the old
/// version recorded stay established across the replace. Returns whether
/// it did.
fn carried_conntrack(old: &ObjectMeta, new: &ObjectMeta, old_maps: &loader::PolicyMaps, adopt: &mut Vec<(String, Arc<std::os::fd::OwnedFd>)>) -> Result<bool> {
    let (Some(o), Some(n)) = (&old.conntrack, &new.conntrack) else { return Ok(false) };
    if (&o.map, o.max_entries) != (&n.map, n.max_entries) || old.version != new.version {
        return Ok(false);
    }
    adopt.push((n.map.clone(), Arc::new(old_maps.map_fd(&n.map)?)));
    Ok(true)
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
fn stage(
    loaded: &mut LoadedPolicy,
    req: &ApplyRequest,
    previous: Option<&Generation>,
    taken: &[String],
    gen_dir: &Path,
    generation: u64,
    tcp_loose_before: Option<String>,
) -> Result<(Record, std::os::fd::OwnedFd)> {
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
        tcp_loose_before,
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

/// What [`replace_attached`] did.
#[derive(Debug, Default)]
pub struct Replaced {
    /// Rules whose counters were carried over.
    pub rules_carried: usize,
    /// `@maps` handed on to the new programs.
    pub maps_kept: Vec<String>,
    /// Pools whose declaration is unchanged: their backends, table, flows
    /// and counters handed on.
    pub pools_kept: Vec<String>,
    /// The connection table was handed on.
    pub conntrack_kept: bool,
    /// Hooks attached afresh: the new version has them, the old did not.
    pub attached: Vec<String>,
    /// Hooks detached: the old version had them, the new one does not.
    pub detached: Vec<String>,
    /// What went wrong after the switch (the new version runs).
    pub warnings: Vec<String>,
}

/// Replaces a policy this process holds attached (`xpol run`: links held
/// by descriptor, nothing in bpffs) with `object`, as [`apply`] replaces an
/// applied one: the new programs are loaded and verified beside the
/// running ones with the unchanged `@maps` handed on, each link that
/// stays is switched with `BPF_LINK_UPDATE` (a compare-and-swap: every
/// packet meets the old program or the new one), and once the old
/// programs can no longer run, their counters are carried to the new rules
/// by identity ([`carried_rules`]). Sets need nothing carried: without a
/// store nothing changes them, so their contents are their declaration.
/// Pools declared as before keep their maps, and so their flow tables
/// (established flows keep their backend) and counters.
///
/// `hooks` are the hooks to have attached on `iface` afterwards: a link of
/// a hook among them is switched, a hook without one is attached (in
/// `mode`), a link of any other hook is detached. On error nothing
/// changed: `running` runs and holds what it did (links switched before a
/// failure are switched back).
pub fn replace_attached(running: &mut LoadedPolicy, object: &[u8], hooks: &[String], iface: &str, mode: XdpAttachMode) -> Result<Replaced> {
    let meta = loader::read_meta(object)?;
    if hooks.is_empty() {
        return Err(RuntimeError::Replace("the new version would attach nothing".into()));
    }
    if let Some(h) = hooks.iter().find(|h| !meta.programs.iter().any(|p| &p.hook == *h)) {
        return Err(RuntimeError::Replace(format!("the new version has no `{h}` program")));
    }
    let mut outcome = Replaced::default();
    let mut adopt_maps = Vec::new();
    for m in &meta.maps {
        // The same kernel map whatever else moved (its lost-update slot
        // follows the number of rules).
        if running.meta().maps.iter().any(|o| o.same_map(m)) {
            adopt_maps.push((m.map.clone(), Arc::new(running.maps().map_fd(&m.map)?)));
            outcome.maps_kept.push(m.name.clone());
        }
    }
    outcome.pools_kept = carried_pools(running.meta(), &meta, running.maps(), &mut adopt_maps)?.0;
    outcome.conntrack_kept = carried_conntrack(running.meta(), &meta, running.maps(), &mut adopt_maps)?;
    crate::dynset::carried_dynsets(running.meta(), &meta, running.maps(), &mut adopt_maps)?;
    let mut new = LoadedPolicy::load_with(object, &LoadOptions { missing_interfaces_ok: false, adopt_maps })?;
    let links = running.take_links();
    let (kept, dropped) = match switch_attached(running, &mut new, links, hooks, iface, mode, &mut outcome) {
        Ok(split) => split,
        Err((links, e)) => {
            running.hold_links(links);
            return Err(e);
        }
    };
    new.hold_links(kept);
    let old = std::mem::replace(running, new);
    outcome.detached = dropped.iter().map(|(hook, _)| hook.clone()).collect();
    drop(dropped);
    // Once the old programs can no longer run, their counters are final.
    sys::wait_for_running_programs();
    // Every slot: rules, and the lost updates of the maps handed on.
    match old.maps().slot_counters() {
        Ok(counters) => {
            let (base, carried) = carried_counters(old.meta(), &counters, running.meta());
            running.set_base(base);
            outcome.rules_carried = carried;
        }
        Err(e) => outcome.warnings.push(format!("the counters of the old version are lost: {e}")),
    }
    Ok(outcome)
}

/// A hook and the link attaching its program, as a policy holds them.
type HeldLink = (String, loader::AttachedLink);

/// The switch of [`replace_attached`]: the links of `hooks` switched from
/// `old`'s programs to `new`'s, hooks without a link attached with `new`
/// (held by it). Returns the switched links and those of other hooks (to
/// detach); on failure, every link as it was, with the error.
#[allow(clippy::type_complexity)]
fn switch_attached(
    old: &LoadedPolicy,
    new: &mut LoadedPolicy,
    links: Vec<HeldLink>,
    hooks: &[String],
    iface: &str,
    mode: XdpAttachMode,
    outcome: &mut Replaced,
) -> std::result::Result<(Vec<HeldLink>, Vec<HeldLink>), (Vec<HeldLink>, RuntimeError)> {
    // A link is switched through its id: a BPF link (XDP, tcx). A TC
    // program attached through netlink (Linux before 6.6) has no link to
    // switch, and attaching beside it would run both.
    let mut switch = Vec::new();
    for (hook, link) in links.iter().filter(|(h, _)| hooks.contains(h)) {
        match link {
            loader::AttachedLink::Fd { id, .. } => switch.push((hook.clone(), *id)),
            loader::AttachedLink::Netlink { .. } => {
                let e = RuntimeError::Replace(format!("`{hook}` is attached through netlink, whose program cannot be switched in place: that needs TC links (tcx, Linux 6.6)"));
                return Err((links, e));
            }
        }
    }
    let update = |id: u32, to: std::os::fd::BorrowedFd<'_>, from: std::os::fd::BorrowedFd<'_>| {
        sys::link_fd_by_id(id).and_then(|link| sys::link_update(link.as_fd(), to, from))
    };
    let mut switched = Vec::new();
    let mut failure = None;
    for (hook, id) in &switch {
        let step = old.program_fd(hook).and_then(|from| {
            let to = new.program_fd(hook)?;
            update(*id, to, from).map_err(|e| RuntimeError::Replace(format!("switching `{hook}` on {iface}: {e}")))
        });
        match step {
            Ok(()) => switched.push((hook.clone(), *id)),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if failure.is_none() {
        for hook in hooks.iter().filter(|h| !links.iter().any(|(held, _)| held == *h)) {
            match new.attach(hook, iface, mode) {
                Ok(()) => outcome.attached.push(hook.clone()),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
    }
    if let Some(e) = failure {
        // Back to the old programs; links attached by `new` go with it.
        let stuck: Vec<String> = switched
            .into_iter()
            .filter(|(hook, id)| {
                let back = new.program_fd(hook).and_then(|from| Ok((from, old.program_fd(hook)?)));
                !back.is_ok_and(|(from, to)| update(*id, to, from).is_ok())
            })
            .map(|(hook, _)| hook)
            .collect();
        outcome.attached.clear();
        let e = if stuck.is_empty() {
            e
        } else {
            // The link keeps the new program loaded; its counters go unread.
            RuntimeError::Replace(format!("{e}; and {} could not be switched back: it runs the new version, uncounted", stuck.join(", ")))
        };
        return Err((links, e));
    }
    Ok(links.into_iter().partition(|(hook, _)| hooks.contains(hook)))
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
/// A single element is added or removed in place: one that lives in one
/// key of a hash or LPM map (an integer, a MAC address, an IPv6 prefix)
/// with one map update, which the kernel makes atomic for the packet
/// path; an IPv4 prefix by copy on write in the shared prefix tables, one
/// /16 at a time (`ipv4_edit`); an IPv6 prefix of a set in the IPv6
/// tables likewise, a subtree at a time (`ipv6_edit`). Everything else (ranges, several elements
/// at once, replace and flush, and an IPv4 change that finds no free
/// chunk) loads the applied object again with the new contents and
/// switches to it, as a replace does: a packet sees the whole old set or
/// the whole new one.
pub struct SetEditor {
    name: String,
    set: xpol_lang::meta::SetMeta,
    elements: store::ElementStore,
    maps: HashMap<String, std::os::fd::OwnedFd>,
    /// The generation the editor changes in place.
    dir: std::path::PathBuf,
    /// The set's IPv4 tables, when they can be changed in place.
    v4: Option<Ipv4Editor>,
    /// The set's IPv4 prefixes, read the first time a delete needs those
    /// inside a short prefix, then kept up to date by this editor.
    v4_members: Option<std::collections::BTreeSet<(u32, u8)>>,
    /// The set's IPv6 tables, when they can be changed in place.
    v6: Option<Ipv6Editor>,
    /// The set's IPv6 prefixes (masked), read at the first in-place IPv6
    /// delete, then kept up to date by this editor.
    v6_members: Option<std::collections::BTreeSet<(u128, u8)>>,
    /// The entries an integer set takes in the hash map the sets share
    /// (a range one per integer), read at its first in-place add, then
    /// kept up to date by this editor.
    entries: Option<u64>,
}

impl SetEditor {
    /// The editor of set `set` of the applied policy `name`; `store` must
    /// be opened for changes ([`Store::write`]).
    pub fn open(store: &Store, name: &str, set: &str) -> Result<SetEditor> {
        if !store.exclusive() {
            return Err(RuntimeError::Store("changing a set needs the store opened for changes (Store::write)".into()));
        }
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
        for m in s.maps.iter().filter(|m| !m.kind.is_shared_table()) {
            let path = current.dir.join(&m.map);
            let fd = sys::obj_get(&path, 0).map_err(|e| RuntimeError::Store(format!("{}: {e}", path.display())))?;
            // The kernel writes a map's own key size: it must be the one the metadata says.
            let key_size = m.kind.key_size().ok_or_else(|| RuntimeError::BadMetadata(format!("set `{set}` has an odd map `{}`", m.map)))?;
            store::check_map_shape(&path, fd.as_fd(), key_size, 1)?;
            maps.insert(m.map.clone(), fd);
        }
        // Tables that cannot be opened for editing in place (an odd shape, a
        // map that will not map) are rebuilt by the reload a change then takes.
        let v4 = Ipv4Editor::open(&current.dir, s).ok().flatten();
        let v6 = Ipv6Editor::open(&current.dir, meta, s).ok().flatten();
        let elements = store::ElementStore::open(&current.dir, set)?;
        Ok(SetEditor { name: name.into(), set: s.clone(), dir: current.dir.clone(), elements, maps, v4, v4_members: None, v6, v6_members: None, entries: None })
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
        let mut keys = self.set.maps.iter().filter(|m| !m.kind.is_shared_table()).flat_map(|m| {
            loader::set_keys(&self.set, m.kind, element).unwrap_or_default().into_iter().map(move |k| (m.map.as_str(), k))
        });
        let (map, key) = keys.next()?;
        keys.next().is_none().then(|| self.maps.get(map).map(|fd| (fd, key))).flatten()
    }

    /// Applies `change`; the editor then refers to the set as changed.
    pub fn change(&mut self, store: &Store, change: SetChange) -> Result<()> {
        // A reload (by another editor, or an apply, of this process) made
        // a new generation and removed this one: edit the new one.
        if std::fs::symlink_metadata(&self.dir).is_err() {
            *self = SetEditor::open(store, &self.name, &self.set.name)?;
        }
        let one = match &change {
            SetChange::Add(v) | SetChange::Delete(v) if v.len() == 1 => Some(self.canonical(&v[0])?),
            _ => None,
        };
        if let Some(e) = one {
            let add = matches!(change, SetChange::Add(_));
            if let Some((fd, key)) = self.single_key(&e) {
                if add || self.set.elem != xpol_lang::meta::SetElem::Int || !self.covered_by_another(&e)? {
                    let fd = fd.try_clone().map_err(|source| RuntimeError::Map { map: format!("set {}", self.set.name), source })?;
                    return self.change_in_place_counted(add, &e, fd.as_fd(), &key);
                }
            }
            if let (Some(prefix), true) = (self.ipv4_prefix(&e), self.v4.is_some()) {
                let done = self.change_ipv4_in_place(store, add, &e, prefix);
                if done.is_err() {
                    // The index may have missed the change: read it again when needed.
                    self.v4_members = None;
                }
                return done;
            }
            if let (Some(prefix), true) = (self.ipv6_prefix(&e), self.v6.is_some()) {
                let done = self.change_ipv6_in_place(store, add, &e, prefix);
                if done.is_err() {
                    // The index may have missed the change: read it again when needed.
                    self.v6_members = None;
                }
                return done;
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

    fn full(&self) -> RuntimeError {
        RuntimeError::SetFull { set: self.set.name.clone(), capacity: self.set.capacity, needed: "and one more was added".into() }
    }

    /// `e` as an IPv4 prefix (address in host order, length), when the set
    /// keeps it in the IPv4 tables.
    fn ipv4_prefix(&self, e: &str) -> Option<(u32, u8)> {
        match loader::parse_prefix(e) {
            Ok((std::net::IpAddr::V4(a), len)) if self.set.elem == xpol_lang::meta::SetElem::Cidr && self.set.ipv4_slot.is_some() => Some((u32::from(a), len as u8)),
            _ => None,
        }
    }

    /// One IPv4 prefix added or removed in the tables in place, in the
    /// order [`SetEditor::change_in_place`] keeps; when the tables have no
    /// free chunk left, by reloading the set as listed.
    fn change_ipv4_in_place(&mut self, store: &Store, add: bool, e: &str, (addr, len): (u32, u8)) -> Result<()> {
        if add {
            let listed = self.elements.contains(e)?;
            if !listed {
                self.elements.insert(e).map_err(|_| self.full())?;
            }
            let v4 = self.v4.as_ref().expect("checked by the caller");
            let done = match v4.paint(addr, len, true, &[]) {
                Ok(Ok(())) => {
                    if let Some(members) = &mut self.v4_members {
                        members.insert((addr, len));
                    }
                    return Ok(());
                }
                // Out of chunks (nothing changed yet): reload with the
                // element, which packs the tables.
                Ok(Err(_)) => self.elements.elements().and_then(|elements| self.switch_to(store, elements)),
                Err(e) => Err(e),
            };
            // Neither in place nor by reloading (the set is full): not added.
            if done.is_err() && !listed {
                let _ = self.elements.remove(e);
            }
            return done;
        }
        if !self.elements.contains(e)? {
            return Err(self.not_in_set(e));
        }
        // A shorter prefix of the set still holds every address of `e`.
        let mut covered = false;
        for l in 0..len {
            covered |= self.elements.contains(&ipv4_text(addr & mask(l), l))?;
        }
        if !covered {
            let keep = self.ipv4_inside(addr, len)?;
            let v4 = self.v4.as_ref().expect("checked by the caller");
            if v4.paint(addr, len, false, &keep)?.is_err() {
                let mut elements = self.elements.elements()?;
                elements.retain(|x| x != e);
                return self.switch_to(store, elements);
            }
        }
        if let Some(members) = &mut self.v4_members {
            members.remove(&(addr, len));
        }
        self.elements.remove(e).map(|_| ())
    }

    /// `e` as an IPv6 prefix (address masked, length), when the set keeps
    /// it in the IPv6 tables.
    fn ipv6_prefix(&self, e: &str) -> Option<(u128, u8)> {
        match loader::parse_prefix(e) {
            Ok((std::net::IpAddr::V6(a), len)) if self.set.elem == xpol_lang::meta::SetElem::Cidr && self.set.ipv6_slot.is_some() => {
                Some((u128::from(a) & xpol_lang::ipv6_table::mask(len as u8), len as u8))
            }
            _ => None,
        }
    }

    /// One IPv6 prefix added or removed in the IPv6 tables in place
    /// (`ipv6_edit`): listed first on add, unlisted last on delete, as
    /// [`SetEditor::change_in_place`]; when the tables have too little
    /// room left, by reloading the set as listed.
    fn change_ipv6_in_place(&mut self, store: &Store, add: bool, e: &str, prefix: (u128, u8)) -> Result<()> {
        let listed = self.elements.contains(e)?;
        if !add && !listed {
            return Err(self.not_in_set(e));
        }
        if add && !listed {
            self.elements.insert(e).map_err(|_| self.full())?;
        }
        // An add needs only the tables (what they hold, and the prefix); a
        // delete, the prefixes left inside the ones it changes.
        if !add && self.v6_members.is_none() {
            let mut members = std::collections::BTreeSet::new();
            self.elements.for_each(|x| members.extend(self.ipv6_prefix(x)))?;
            self.v6_members = Some(members);
        }
        if let Some(members) = &mut self.v6_members {
            // The list holds the element on add; on delete it goes last.
            if add {
                members.insert(prefix);
            } else {
                members.remove(&prefix);
            }
        }
        let v6 = self.v6.as_ref().expect("checked by the caller");
        let changed = match &self.v6_members {
            Some(members) if !add => v6.remove(members, prefix),
            _ => v6.add(prefix),
        };
        let done = match changed {
            Ok(Ok(())) if add => return Ok(()),
            Ok(Ok(())) => return self.elements.remove(e).map(|_| ()),
            // Too little room (nothing changed yet): reload with the
            // change, which sizes the tables again (and opens the new
            // generation's editor).
            Ok(Err(_)) => self.elements.elements().and_then(|mut elements| {
                if !add {
                    elements.retain(|x| x != e);
                }
                self.switch_to(store, elements)
            }),
            Err(err) => Err(err),
        };
        // Neither in place nor by reloading: not added.
        if done.is_err() && add && !listed {
            let _ = self.elements.remove(e);
        }
        done
    }

    /// The set's IPv4 prefixes strictly inside `(addr, len)`: asked one by
    /// one when there are few possible ones (62 at most, from /27), else
    /// found among every element.
    fn ipv4_inside(&mut self, addr: u32, len: u8) -> Result<Vec<(u32, u8)>> {
        let mut inside = Vec::new();
        if len >= 27 {
            for l in len + 1..=32 {
                for i in 0..1u32 << (l - len) {
                    let a = addr | (i << (32 - l));
                    if self.elements.contains(&ipv4_text(a, l))? {
                        inside.push((a, l));
                    }
                }
            }
            return Ok(inside);
        }
        if self.v4_members.is_none() {
            let mut members = std::collections::BTreeSet::new();
            self.elements.for_each(|e| members.extend(self.ipv4_prefix(e)))?;
            self.v4_members = Some(members);
        }
        let last = addr | !mask(len);
        let members = self.v4_members.as_ref().expect("read above");
        Ok(members.range((addr, 0)..=(last, 32)).copied().filter(|&(_, l)| l > len).collect())
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
        let full = || self.full();
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

    /// [`SetEditor::change_in_place`], keeping an integer set in a hash map
    /// the sets share within its capacity: there the map's own size (the
    /// sets' together) does not stop it, and the list counts a range as
    /// one element where the map holds an entry per integer.
    fn change_in_place_counted(&mut self, add: bool, e: &str, map: std::os::fd::BorrowedFd<'_>, key: &[u8]) -> Result<()> {
        let shared = self.set.elem == xpol_lang::meta::SetElem::Int && self.set.maps.iter().any(|m| m.kind == xpol_lang::meta::SetMapKind::SharedHash);
        if !shared {
            return self.change_in_place(add, e, map, key);
        }
        let listed = self.elements.contains(e)?;
        if add && !listed {
            let entries = match self.entries {
                Some(n) => n,
                None => {
                    let mut n = 0u64;
                    self.elements.for_each(|x| n = n.saturating_add(loader::element_count(x)))?;
                    n
                }
            };
            self.entries = Some(entries);
            if self.set.capacity > 0 && entries >= self.set.capacity {
                return Err(self.full());
            }
        }
        let done = self.change_in_place(add, e, map, key);
        if listed != add {
            self.entries = match (&done, self.entries) {
                (Ok(()), Some(n)) if add => Some(n + 1),
                (Ok(()), Some(n)) => Some(n.saturating_sub(1)),
                // Counted again when needed.
                _ => None,
            };
        }
        done
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

/// An IPv4 prefix in the canonical text of set elements
/// (`loader::canonical_element`): `198.51.100.0/24`.
fn ipv4_text(addr: u32, len: u8) -> String {
    format!("{}/{len}", std::net::Ipv4Addr::from(addr))
}

#[cfg(test)]
mod tests {
    use super::{carried_rules, rule_identities};
    use xpol_lang::meta::{ObjectMeta, RuleMeta};

    /// A policy's metadata with rules of these (label, header) pairs.
    fn meta(rules: &[(Option<&str>, &str)]) -> ObjectMeta {
        let rules = rules
            .iter()
            .enumerate()
            .map(|(i, (label, text))| RuleMeta {
                id: i as u32,
                hook: "xdp".into(),
                file: "p.xpol".into(),
                line: i as u32 + 1,
                column: 1,
                text: text.to_string(),
                verdict: "pass".into(),
                label: label.map(str::to_string),
            })
            .collect();
        ObjectMeta { version: 5, source: "p.xpol".into(), programs: vec![], rules, sets: vec![], maps: vec![], redirects: vec![], counters: Default::default(), pools: vec![], limits: vec![], conntrack: None, log_ring: None, logs: vec![], dynsets: vec![], synproxies: vec![] }
    }

    #[test]
    fn labels_are_identities_and_headers_count_every_rule() {
        let m = meta(&[(Some("ssh-in"), "xdp /tcp.dport == 22/"), (None, "xdp  /tcp.dport == 22/"), (None, "xdp")]);
        assert_eq!(rule_identities(&m), ["ssh-in", "xdp /tcp.dport == 22/ #2", "xdp"]);
    }

    #[test]
    fn a_labelled_rule_carries_across_predicate_edits_and_moves() {
        let old = meta(&[(Some("web"), "xdp /tcp.dport == 80/"), (None, "xdp /udp.dport == 9/"), (None, "xdp")]);
        let new = meta(&[(None, "xdp"), (None, "xdp /udp.dport == 10/"), (Some("web"), "xdp /tcp.dport in {80, 443}/")]);
        assert_eq!(carried_rules(&old, &new), [Some(2), None, Some(0)], "the unlabelled edited rule restarts");
    }

    #[test]
    fn adding_or_removing_a_label_keeps_the_counters_of_an_unchanged_header() {
        let old = meta(&[(None, "xdp /x/"), (None, "xdp /x/"), (Some("b"), "xdp /y/")]);
        // The first `/x/` labelled: it carries its own, the second keeps `#2`;
        // `b` unlabelled keeps its counters; a renamed label is a new rule.
        let new = meta(&[(Some("a"), "xdp /x/"), (None, "xdp /x/"), (None, "xdp /y/")]);
        assert_eq!(carried_rules(&old, &new), [Some(0), Some(1), Some(2)]);
        let renamed = meta(&[(None, "xdp /x/"), (None, "xdp /x/"), (Some("c"), "xdp /y/")]);
        assert_eq!(carried_rules(&old, &renamed), [Some(0), Some(1), None]);
        // An old rule is carried on once only: `b` moved to another
        // predicate keeps its counters, the rule now on its old header
        // starts afresh.
        let old = meta(&[(Some("b"), "xdp /y/")]);
        let moved = meta(&[(Some("b"), "xdp /z/"), (None, "xdp /y/")]);
        assert_eq!(carried_rules(&old, &moved), [Some(0), None]);
    }
}
