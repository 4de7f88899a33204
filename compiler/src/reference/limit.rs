//! `limit(...)` as docs/language.md ("Rate limits") states it: a token
//! bucket per key holding nanoseconds of credit, read here with exact
//! integer arithmetic on a virtual clock ([`super::State::clock_ns`]).
//! Written as the credit a bucket holds and when it was last looked at
//! (nftables' form), not as codegen's one-word form.

use super::{KeyPart, State};
use crate::ir::{self, LimitUnit};

/// A bucket: `credit` nanoseconds of credit at time `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub credit: u64,
    pub at: u64,
}

/// What a full bucket of limit `l` holds, in nanoseconds.
fn depth(l: &ir::Limit) -> u128 {
    let (period, rate) = (u128::from(l.period_ns), u128::from(l.rate));
    match l.unit {
        LimitUnit::Packets => u128::from(l.burst) * (period / rate),
        LimitUnit::Bytes => u128::from(l.burst) * period / rate,
    }
}

/// The credit the bucket of `key` of limit `id` holds at the state's
/// clock, and what a full one holds (nanoseconds); `None` when no packet
/// has made it yet.
pub fn credit(policy: &ir::Policy, id: ir::LimitId, key: &[KeyPart], state: &State) -> Option<(u64, u64)> {
    let depth = depth(&policy.limits[id]);
    let b = state.limits.get(&(id, key.to_vec()))?;
    let credit = (u128::from(b.credit) + u128::from(state.clock_ns.saturating_sub(b.at))).min(depth);
    Some((credit as u64, depth as u64))
}

/// Whether a packet of `len` bytes fits in the bucket of `key` of limit
/// `id` at the state's clock; if it does, its cost is taken.
pub fn take(policy: &ir::Policy, id: ir::LimitId, key: Vec<KeyPart>, len: u64, state: &mut State) -> bool {
    let l = &policy.limits[id];
    let (period, rate) = (u128::from(l.period_ns), u128::from(l.rate));
    // What a full bucket holds, and what this packet costs: whole
    // nanoseconds, rounded down.
    let depth = depth(l);
    let cost = match l.unit {
        LimitUnit::Packets => period / rate,
        LimitUnit::Bytes => {
            if len > l.burst {
                return false;
            }
            u128::from(len) * period / rate
        }
    };
    let now = state.clock_ns;
    // A key seen for the first time has a full bucket.
    let bucket = state.limits.entry((id, key)).or_insert(Bucket { credit: depth as u64, at: now });
    // Credit comes at one nanosecond per nanosecond, up to a full bucket.
    let credit = (u128::from(bucket.credit) + u128::from(now.saturating_sub(bucket.at))).min(depth);
    *bucket = Bucket { credit: credit as u64, at: now };
    if cost <= credit {
        bucket.credit = (credit - cost) as u64;
        true
    } else {
        false
    }
}
