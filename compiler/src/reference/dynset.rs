//! Dynamic sets as docs/language.md ("Dynamic sets") states them: an
//! element is in its set until its time is up, on the state's virtual
//! clock ([`super::State::clock_ns`]); `add` of an element already there
//! moves its end to `now + timeout`.

use super::{KeyPart, State};
use crate::ir;

/// The end of an element added without a timeout: never.
pub const FOREVER: u64 = u64::MAX;

/// Whether `key` is in dynamic set `id` now.
pub fn contains(id: ir::DynSetId, key: &KeyPart, state: &State) -> bool {
    state.dynsets.get(&(id, key.clone())).is_some_and(|&end| end > state.clock_ns)
}

/// `add(...)` or `delete(...)` of `key` in dynamic set `id`.
pub fn write(id: ir::DynSetId, key: KeyPart, op: ir::SetWrite, state: &mut State) {
    match op {
        ir::SetWrite::Add { timeout_ns } => {
            let end = timeout_ns.map_or(FOREVER, |t| state.clock_ns.saturating_add(t));
            state.dynsets.insert((id, key), end);
        }
        ir::SetWrite::Delete => {
            state.dynsets.remove(&(id, key));
        }
    }
}

/// The elements of dynamic set `id` whose time is not up, with the
/// nanoseconds each has left (`None`: no timeout), sorted.
pub fn elements(id: ir::DynSetId, state: &State) -> Vec<(KeyPart, Option<u64>)> {
    let mut out: Vec<(KeyPart, Option<u64>)> = state
        .dynsets
        .iter()
        .filter(|(&(set, _), &end)| set == id && end > state.clock_ns)
        .map(|((_, k), &end)| (k.clone(), (end != FOREVER).then(|| end - state.clock_ns)))
        .collect();
    out.sort_by(|a, b| format!("{:?}", a.0).cmp(&format!("{:?}", b.0)));
    out
}
