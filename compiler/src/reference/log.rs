//! `log(...)` as docs/language.md ("Logging") states it: a record of the
//! rule, what the rule does after the `log`, the packet's length and its
//! first 128 bytes, written when the packet fits in the `log`'s rate (a
//! bucket as `limit`'s, see `limit.rs`). The verdict does not change.

use super::{limit, State};
use crate::ir;
use xpol_lang::ast::Hook;

/// The bytes of the packet a record holds at most (docs/language.md).
pub const CAPTURE: usize = 128;

/// A record a `log` wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    pub log: ir::LogId,
    pub rule: ir::RuleId,
    pub hook: Hook,
    /// What the rule does after the `log` (`ir::Log::verdict`).
    pub verdict: &'static str,
    pub prefix: String,
    /// `pkt.len`.
    pub packet_len: u64,
    /// The packet's first bytes, [`CAPTURE`] at most.
    pub data: Vec<u8>,
}

/// The record `log` number `id` writes for `packet` (of length `len`) on
/// `hook`, or `None` when its rate suppresses it (taking a token when not).
pub fn write(policy: &ir::Policy, id: ir::LogId, hook: Hook, packet: &[u8], len: u64, state: &mut State) -> Option<Logged> {
    let l = &policy.logs[id];
    if let Some(limit) = l.limit {
        if !limit::take(policy, limit, Vec::new(), len, state) {
            return None;
        }
    }
    Some(Logged {
        log: id,
        rule: l.rule,
        hook,
        verdict: l.verdict,
        prefix: l.prefix.clone(),
        packet_len: len,
        data: packet[..packet.len().min(CAPTURE)].to_vec(),
    })
}
