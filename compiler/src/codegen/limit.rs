//! Lowering of `limit(...)`: a token bucket per key, exact under
//! concurrency (docs/language.md, "Rate limits").
//!
//! Each bucket is one u64 in a map shared by every CPU
//! (`xpol_lang::meta::LimitMeta`): the time, in nanoseconds of
//! `bpf_ktime_get_ns`, at which the bucket is full again (the generic cell
//! rate algorithm's "theoretical arrival time"). With `depth` the credit a
//! full bucket holds (burst's cost), the bucket holds `depth - (T - now)`
//! at `now` when `T > now`, else `depth`. A packet of cost `c` fits when
//! `max(T, now) + c - now <= depth`, and then `T` becomes `max(T, now) + c`:
//! nftables' `limit` with its nanosecond credit, in one word.
//!
//! One word, so that one atomic compare-and-exchange (`BPF_CMPXCHG`, Linux
//! 5.12) takes a token: a CPU reads `T`, decides, and writes its new `T`
//! only if no other CPU changed it meanwhile; if one did, it decides again
//! on the new value ([`ATTEMPTS`] times at most). A packet over the limit
//! writes nothing, so a flood that is over the limit only reads the
//! bucket's cache line, which every CPU can keep. Rather than
//! `bpf_spin_lock`, which needs the value described in BTF, allows no
//! helper call while held, and writes the lock (and so moves the cache
//! line between CPUs) for every packet, over the limit or not.
//!
//! The clock is `bpf_ktime_get_ns`: the coarse clock
//! (`bpf_ktime_get_coarse_ns`) moves in steps of a jiffy (1 to 10 ms), and a
//! bucket smaller than a step's credit (20 packets at 20,000/s in a 1 ms
//! step) would lose the rest of each step: the rate would fall to the
//! burst per step. But the precise clock is most of what a limit costs
//! (some 23 ns of 28 on the benchmark machine), and a packet over the
//! limit by more than the coarse clock can lag ([`COARSE_LAG_NS`]) is over
//! it whichever clock decides: such packets (most of a flood against a
//! rate slower than 50 a second) are decided with the coarse clock alone.

use super::builder::{helper, map_type, MapDef, ModuleCx, BPF_NOEXIST};
use super::lower::Lower;
use crate::ir::{self, LimitUnit};
use inkwell::basic_block::BasicBlock;
use inkwell::values::IntValue;
use inkwell::IntPredicate;
use xpol_lang::meta::{self, KeyKind};

/// Compare-and-exchange attempts before a packet counts as over the limit:
/// each failed one means another CPU took a token from the same bucket
/// meanwhile, so a packet that loses this many races met a bucket that
/// others were emptying. (Two CPUs doing nothing but take tokens from one
/// bucket, back to back, lost 8 in a row about once in 5,000 packets.)
pub const ATTEMPTS: usize = 16;

/// The most the coarse clock (`bpf_ktime_get_coarse_ns`, the monotonic
/// clock as of the last timer tick) may be behind the precise one: two
/// ticks at the slowest tick rate (HZ=100). A CPU leaving idle brings the
/// timekeeping up to date in its interrupt's entry, before any packet.
pub const COARSE_LAG_NS: u64 = 20_000_000;

/// A limit's map as codegen refers to it.
#[derive(Clone, Copy)]
pub struct LimitDef<'ctx> {
    pub map: MapDef<'ctx>,
    /// 0 for an unkeyed limit (an array of one bucket, key u32 0).
    pub key_size: u32,
}

/// The map name of limit number `i` in the object.
pub fn map_name(i: usize) -> String {
    format!("xlimit_{i}")
}

/// Bytes of the key of `by:` components of these types (a `@map`'s key
/// encoding, `KeyKind`).
fn key_kinds(keys: &[ir::Type]) -> Vec<KeyKind> {
    keys.iter()
        .map(|t| match t {
            ir::Type::Int => KeyKind::Int,
            ir::Type::Ip => KeyKind::Ip,
            ir::Type::Mac => KeyKind::Mac,
            ir::Type::Bool => KeyKind::Bool,
        })
        .collect()
}

/// Defines limit `i`'s map and describes it for the object's metadata.
pub fn define<'ctx>(m: &ModuleCx<'ctx>, i: usize, l: &ir::Limit, sources: &xpol_lang::SourceMap) -> (LimitDef<'ctx>, meta::LimitMeta) {
    let name = map_name(i);
    let keys = key_kinds(&l.keys);
    let key_bytes: u32 = keys.iter().map(|k| k.size() as u32).sum();
    let (def, key_size, entries) = if keys.is_empty() {
        (m.define_map(&name, map_type::ARRAY, 4, meta::LIMIT_VALUE_SIZE, 1, 0), 0, 1)
    } else {
        // One LRU list for all CPUs (no BPF_F_NO_COMMON_LRU): the buckets
        // are shared, and so is what gets evicted.
        (m.define_map(&name, map_type::LRU_HASH, key_bytes, meta::LIMIT_VALUE_SIZE, l.size, 0), key_bytes, l.size)
    };
    let (_, line, column) = sources.location(l.span);
    let depth_ns = Credit::of(l).depth;
    let meta = meta::LimitMeta { map: name, rule: l.rule, text: l.text.clone(), line, column, keys, key_size: key_size.max(4), max_entries: entries, depth_ns };
    (LimitDef { map: def, key_size }, meta)
}

/// Nanoseconds of credit: what a packet costs (`units * period / rate`,
/// rounded down) and what a full bucket holds, from compile-time
/// constants as docs/language.md states them.
struct Credit {
    /// `period / rate` and `period % rate`.
    quotient: u64,
    remainder: u64,
    rate: u64,
    /// What a full bucket holds: `burst` packets' cost, or `burst` bytes'.
    depth: u64,
}

impl Credit {
    fn of(l: &ir::Limit) -> Credit {
        let (quotient, remainder) = (l.period_ns / l.rate, l.period_ns % l.rate);
        let depth = match l.unit {
            LimitUnit::Packets => l.burst * quotient,
            // Checked to fit (`check::limit`).
            LimitUnit::Bytes => (u128::from(l.burst) * u128::from(l.period_ns) / u128::from(l.rate)) as u64,
        };
        Credit { quotient, remainder, rate: l.rate, depth }
    }
}

impl<'ctx> Lower<'_, '_, 'ctx> {
    /// Branches to `t` when the packet fits in its bucket of limit `id`
    /// (and takes its cost), to `f` when it does not, to `u` when a key
    /// component is absent.
    pub(super) fn limit(&mut self, id: ir::LimitId, keys: &[ir::Expr], t: BasicBlock<'ctx>, f: BasicBlock<'ctx>, u: BasicBlock<'ctx>) {
        let l = &self.policy.limits[id];
        let def = self.maps.limits[id];
        let credit = Credit::of(l);
        let unit = l.unit;
        let burst = l.burst;
        // The key first: its values may read maps (their own buffers).
        let key = if def.key_size > 0 {
            let (key, present) = self.key_buf(keys, def.key_size);
            let keyed = self.b.block("limit_key");
            self.b.cond_br_likely(present, keyed, u);
            self.b.at(keyed);
            key
        } else {
            let key = self.b.stack_buf(4, "key");
            self.b.store_at(key, 0, self.b.c32(0));
            key
        };
        let b = &self.b;
        // What this packet costs.
        let cost = match unit {
            LimitUnit::Packets => b.c64(credit.quotient),
            LimitUnit::Bytes => {
                // A packet larger than the burst never fits (and its cost
                // could overflow below).
                let len = b.pkt_len(self.h.pkt_len);
                let fits = b.block("limit_fits");
                b.cond_br_unlikely(b.cmp(IntPredicate::UGT, len, b.c64(burst)), f, fits);
                b.at(fits);
                // len * period / rate without overflow: len <= burst, and
                // burst * rate < 2^64 (checked).
                let whole = b.mul(len, b.c64(credit.quotient));
                if credit.remainder == 0 {
                    whole
                } else {
                    b.add(whole, b.udiv(b.mul(len, b.c64(credit.remainder)), b.c64(credit.rate)))
                }
            }
        };
        let p = b.map_lookup(def.map, key);
        let found = b.block("limit_bucket");
        let bucket = if def.key_size > 0 {
            // A key seen for the first time: a full bucket, less this
            // packet. Another CPU may insert the same key first (EEXIST):
            // then take the token from its bucket.
            let insert = b.block("limit_new");
            let raced = b.block("limit_raced");
            let found_first = b.block("limit_found");
            b.br_if_null(p, insert, found_first);
            b.at(insert);
            let value = b.stack_buf(8, "value");
            let now = b.helper_call(helper::KTIME_GET_NS, b.i64(), &[]);
            b.store_at(value, 0, b.add(now, cost));
            let r = b.map_update(def.map, key, value, BPF_NOEXIST);
            b.cond_br_likely(b.eq(r, b.c64(0)), t, raced);
            b.at(raced);
            let again = b.map_lookup(def.map, key);
            let found_again = b.block("limit_found_again");
            // Not there either (evicted at once, or the map refused it):
            // the packet passes; the LRU map always makes room.
            b.br_if_null(again, t, found_again);
            b.at(found_again);
            b.br(found);
            b.at(found_first);
            b.br(found);
            b.at(found);
            b.phi_ptr(&[(p, found_first), (again, found_again)])
        } else {
            // Key 0 of a one-entry array: always there.
            b.br_if_null(p, t, found);
            b.at(found);
            p
        };
        // Over the limit by more than the coarse clock can lag: decided
        // without the precise clock (a flood against a slow rate, most of
        // the time). The coarse clock is never ahead of the precise one,
        // so `coarse + COARSE_LAG_NS` is a time not yet reached, and a
        // packet that would not fit then does not fit now.
        let coarse = b.helper_call(helper::KTIME_GET_COARSE_NS, b.i64(), &[]);
        let full_at = b.load_u64_shared(bucket, 0);
        let precise = b.block("limit_precise");
        let surely_over = b.cmp(IntPredicate::UGT, b.add(full_at, cost), b.add(coarse, b.c64(COARSE_LAG_NS + credit.depth)));
        b.cond_br(surely_over, f, precise);
        b.at(precise);
        let now = b.helper_call(helper::KTIME_GET_NS, b.i64(), &[]);
        // A loop, not unrolled: its code once, whatever ATTEMPTS is. The
        // verifier walks it (bounded loops, Linux 5.3: the counter is
        // compared with a constant).
        let attempt = b.slot(b.i64(), "limit_attempt");
        b.set(attempt, b.c64(0));
        let try_take = b.block("limit_try");
        b.br(try_take);
        b.at(try_take);
        let old = b.load_u64_shared(bucket, 0);
        // Unsigned: a bucket never used (0) or full again reads as now.
        let from = b.select(b.cmp(IntPredicate::ULT, old, now), now, old);
        let new = b.add(from, cost);
        let take = b.block("limit_take");
        b.cond_br_unlikely(b.cmp(IntPredicate::UGT, b.sub(new, now), b.c64(credit.depth)), f, take);
        b.at(take);
        let taken = b.atomic_cmpxchg(bucket, 0, old, new);
        let retry = b.block("limit_retry");
        b.cond_br_likely(taken, t, retry);
        b.at(retry);
        // Hidden from LLVM, which would otherwise unroll the loop.
        let next = b.opaque(b.add(b.get(attempt), b.c64(1)));
        b.set(attempt, next);
        b.cond_br_likely(b.cmp(IntPredicate::ULT, next, b.c64(ATTEMPTS as u64)), try_take, f);
    }

    /// A limit as a value (a boolean's true and false flags), for a
    /// context that is not a branch: [`Lower::limit`] into blocks that
    /// merge.
    pub(super) fn limit_value(&mut self, id: ir::LimitId, keys: &[ir::Expr]) -> (IntValue<'ctx>, IntValue<'ctx>) {
        let t = self.b.block("limit_true");
        let f = self.b.block("limit_false");
        let u = self.b.block("limit_unknown");
        let done = self.b.block("limit_done");
        self.limit(id, keys, t, f, u);
        let b = &self.b;
        for bb in [t, f, u] {
            b.at(bb);
            b.br(done);
        }
        b.at(done);
        let flag = |yes: BasicBlock<'ctx>| b.phi(&[t, f, u].map(|bb| (b.bool(bb == yes), bb)));
        (flag(t), flag(f))
    }
}
