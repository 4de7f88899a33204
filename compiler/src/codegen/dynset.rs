//! Lowering of dynamic sets (docs/language.md, "Dynamic sets"): `KEY in
//! SET`, `add(SET, KEY, timeout: D)` and `delete(SET, KEY)`.
//!
//! Each set is an `LRU_HASH` shared by every CPU (`meta::DynSetMeta`): key
//! the element encoded as a `@map`'s key component (`Lower::key_buf`),
//! value the time its time is up, on the coarse clock
//! (`bpf_ktime_get_coarse_ns`). An element whose time is up reads as
//! absent, so nothing has to delete it: the LRU map reuses its entry when
//! it needs room. The coarse clock, because a timeout is seconds and a
//! jiffy's lag (at most 10 ms) is nothing against that, and it costs a
//! few nanoseconds where the precise one costs some twenty; and it is the
//! clock `xpol set` reads (`CLOCK_MONOTONIC_COARSE`).
//!
//! An add looks the element up: one the set holds has its end moved on
//! with a plain store, a new one is inserted with `bpf_map_update_elem`
//! (`BPF_ANY`); when CPUs add the same element at once, one end wins,
//! which is within a jiffy of the others. When the map is full,
//! the kernel evicts the element used least recently (one LRU list for all
//! CPUs; it may evict a little before the map is full, from another CPU's
//! share of free entries).

use super::builder::{helper, map_type, MapDef, ModuleCx};
use super::lower::Lower;
use crate::ir;
use inkwell::values::IntValue;
use inkwell::IntPredicate;
use xpol_lang::meta::{self, KeyKind};

/// `BPF_ANY`: create or update.
const BPF_ANY: u64 = 0;

/// A dynamic set's map as codegen refers to it.
#[derive(Clone, Copy)]
pub struct DynSetDef<'ctx> {
    pub map: MapDef<'ctx>,
    pub key_size: u32,
}

/// The map name of dynamic set number `i` in the object.
pub fn map_name(i: usize) -> String {
    format!("xdynset_{i}")
}

fn key_kind(t: ir::Type) -> KeyKind {
    match t {
        ir::Type::Ip => KeyKind::Ip,
        ir::Type::Mac => KeyKind::Mac,
        ir::Type::Int => KeyKind::Int,
        ir::Type::Bool => KeyKind::Bool,
    }
}

/// Defines dynamic set `i`'s map and describes it for the object's
/// metadata.
pub fn define<'ctx>(m: &ModuleCx<'ctx>, i: usize, d: &ir::DynSet) -> (DynSetDef<'ctx>, meta::DynSetMeta) {
    let name = map_name(i);
    let key = key_kind(d.key);
    let key_size = key.size() as u32;
    // One LRU list for all CPUs (no BPF_F_NO_COMMON_LRU): the set is one
    // set, whichever CPU added an element.
    let def = m.define_map(&name, map_type::LRU_HASH, key_size, meta::DYNSET_VALUE_SIZE, d.size, 0);
    let meta = meta::DynSetMeta {
        name: d.name.clone(),
        map: name,
        elem: d.elem.clone(),
        key,
        key_size,
        value_size: meta::DYNSET_VALUE_SIZE,
        max_entries: d.size,
        timeout_ns: d.timeout_ns,
    };
    (DynSetDef { map: def, key_size }, meta)
}

impl<'ctx> Lower<'_, '_, 'ctx> {
    /// Whether the element `key` (present: checked by the caller) is in
    /// dynamic set `id` and its time is not up.
    pub(super) fn dynset_member(&mut self, id: ir::DynSetId, key: &ir::Expr) -> IntValue<'ctx> {
        let def = self.maps.dynsets[id];
        let (buf, _) = self.key_buf(std::slice::from_ref(key), def.key_size);
        let b = &self.b;
        let p = b.map_lookup(def.map, buf);
        let found = b.block("dynset_found");
        let done = b.block("dynset_done");
        let from = b.cur();
        b.br_if_null(p, done, found);
        b.at(found);
        let end = b.load_u64_shared(p, 0);
        let now = b.helper_call(helper::KTIME_GET_COARSE_NS, b.i64(), &[]);
        let live = b.cmp(IntPredicate::UGT, end, now);
        let looked = b.cur();
        b.br(done);
        b.at(done);
        let mut incoming = vec![(live, looked)];
        if !b.omit_null_check {
            incoming.push((b.bool(false), from));
        }
        b.phi(&incoming)
    }

    /// `add(...)` or `delete(...)`: nothing when a key component is absent.
    pub(super) fn dynset_write(&mut self, id: ir::DynSetId, key: &ir::Expr, op: ir::SetWrite) {
        let def = self.maps.dynsets[id];
        let (buf, present) = self.key_buf(std::slice::from_ref(key), def.key_size);
        let b = &self.b;
        let write = b.block("dynset_write");
        let done = b.block("dynset_written");
        b.cond_br_likely(present, write, done);
        b.at(write);
        match op {
            ir::SetWrite::Add { timeout_ns } => {
                let end = match timeout_ns {
                    Some(t) => b.add(b.helper_call(helper::KTIME_GET_COARSE_NS, b.i64(), &[]), b.c64(t)),
                    None => b.c64(meta::DYNSET_FOREVER),
                };
                // An element the set holds has its end moved on in place:
                // an update of an LRU hash takes a new entry from the free
                // list every time (some 140 ns against 15, BENCHMARKS.md,
                // "Dynamic sets"), and the lookup marks it used. (A delete
                // meanwhile, by `xpol set`, makes the store land in an entry
                // being freed: the delete wins, as if it came after.)
                let p = b.map_lookup(def.map, buf);
                let renew = b.block("dynset_renew");
                let insert = b.block("dynset_insert");
                b.br_if_null(p, insert, renew);
                b.at(renew);
                b.store_at(p, 0, end);
                b.br(done);
                b.at(insert);
                let value = b.stack_buf(8, "value");
                b.store_at(value, 0, end);
                // Fails only when the kernel cannot allocate: the element
                // is then not added, as when it is evicted at once.
                b.map_update(def.map, buf, value, BPF_ANY);
            }
            ir::SetWrite::Delete => {
                b.map_delete(def.map, buf);
            }
        }
        b.br(done);
        b.at(done);
    }
}
