//! Lowering of `log(...)`: a record of the packet in the policy's ring
//! buffer (docs/language.md, "Logging"; the layout is
//! `xpol_lang::meta::LogRingMeta`'s, the one contract with the runtime).
//!
//! A record is reserved in the ring (`bpf_ringbuf_reserve`, Linux 5.8),
//! filled in place and submitted: no copy through the stack, whose 512
//! bytes the rules' keys need. The packet's first bytes are copied by the
//! kernel (`bpf_xdp_load_bytes`, Linux 5.18, which also reads the
//! fragments of a multi-buffer frame; `bpf_skb_load_bytes` on TC, which
//! reads past the linear part), so that a short packet is copied whole
//! and a long one cut at the capture size without a loop the verifier
//! would walk byte by byte. When the ring is full, the record is counted
//! as lost (`LOG_LOST_MAP`, per CPU) instead.
//!
//! `rate:` is an unkeyed `limit` of the `log`'s own (`codegen/limit.rs`):
//! exact across CPUs and, when it suppresses the record, a lookup in a
//! one-entry array, the coarse clock and a compare (a flood well over the
//! rate is decided without the precise clock). A per-CPU budget would be
//! cheaper still by a cache line shared between CPUs, but would let
//! through the rate once per CPU: `rate: 10/s` would mean 10 a second on
//! one CPU and 640 on 64, which is not what a rate says.

use super::builder::{helper, map_type, MapDef, ModuleCx};
use super::lower::Lower;
use crate::ir;
use inkwell::IntPredicate;
use xpol_lang::ast::Hook;
use xpol_lang::meta::{self, LogMeta, LogRingMeta};

/// The maps of a policy that logs.
#[derive(Clone, Copy)]
pub struct LogMaps<'ctx> {
    pub ring: MapDef<'ctx>,
    pub lost: MapDef<'ctx>,
}

/// Offset of the interface index in `__sk_buff` (`ifindex`).
const SKB_IFINDEX: u64 = 40;

/// Defines the ring buffer and the lost-record counters of a policy with
/// `log` statements, and describes them and each statement for the
/// object's metadata; `None` for a policy that logs nothing.
pub fn define<'ctx>(m: &ModuleCx<'ctx>, policy: &ir::Policy, sources: &xpol_lang::SourceMap) -> Option<(LogMaps<'ctx>, LogRingMeta, Vec<LogMeta>)> {
    if policy.logs.is_empty() {
        return None;
    }
    let ring_meta = LogRingMeta::current();
    // A ring buffer's size is its max_entries; it has no key or value.
    let ring = m.define_map(&ring_meta.map, map_type::RINGBUF, 0, 0, ring_meta.ring_bytes, 0);
    let lost = m.define_map(&ring_meta.lost_map, map_type::PERCPU_ARRAY, 4, 8, policy.logs.len().min(u32::MAX as usize) as u32, 0);
    let logs = policy
        .logs
        .iter()
        .map(|l| {
            let (_, line, column) = sources.location(l.span);
            LogMeta { rule: l.rule, prefix: l.prefix.clone(), line, column, text: l.text.clone(), verdict: l.verdict.to_string(), limit: l.limit.map(|i| i as u32) }
        })
        .collect();
    Some((LogMaps { ring, lost }, ring_meta, logs))
}

impl<'ctx> Lower<'_, '_, 'ctx> {
    /// `log` number `id`: a record of the packet when it fits in the
    /// `log`'s rate (if any); evaluation goes on after it either way.
    pub(super) fn log(&mut self, id: ir::LogId) {
        let Some(maps) = self.maps.log else { return };
        let l = &self.policy.logs[id];
        let (rule, verdict, limit) = (l.rule, meta::log_verdict_code(l.verdict), l.limit);
        let hook = meta::hook_code(self.hook.as_str());
        let done = self.b.block("log_done");
        if let Some(limit) = limit {
            let write = self.b.block("log_write");
            // Unkeyed: never unknown.
            self.limit(limit, &[], write, done, done);
            self.b.at(write);
        }
        let b = &self.b;
        let record = b.ringbuf_reserve(maps.ring, u64::from(meta::LOG_RECORD_BYTES));
        let full = b.block("log_full");
        let fill = b.block("log_fill");
        b.br_if_null(record, full, fill);

        // No room: counted as lost, on this CPU.
        b.at(full);
        let key = b.stack_buf(4, "key");
        b.store_at(key, 0, b.c32(id as u32));
        let slot = b.map_lookup(maps.lost, key);
        let count = b.block("log_count_lost");
        b.br_if_null(slot, done, count);
        b.at(count);
        b.add_u64_at(slot, 0, b.c64(1), false);
        b.br(done);

        b.at(fill);
        let i32t = b.m.cx.i32_type();
        let now = b.helper_call(helper::KTIME_GET_NS, b.i64(), &[]);
        b.store_at(record, meta::log_at::TIME as u64, now);
        b.store_at(record, meta::log_at::LOG as u64, b.c32(id as u32));
        b.store_at(record, meta::log_at::RULE as u64, b.c32(rule));
        let len = b.pkt_len(self.h.pkt_len);
        b.store_at(record, meta::log_at::PACKET_LEN as u64, b.trunc(len, i32t));
        let ctx = b.ctx();
        let ifindex = b.load_raw(ctx, if self.hook == Hook::Xdp { super::builder::XDP_MD_INGRESS_IFINDEX } else { SKB_IFINDEX }, 4);
        b.store_at(record, meta::log_at::IFINDEX as u64, ifindex);
        b.store_at(record, meta::log_at::HOOK as u64, b.c8(hook));
        b.store_at(record, meta::log_at::VERDICT as u64, b.c8(verdict));
        b.store_at(record, meta::log_at::RESERVED as u64, b.c32(0));
        // The first `min(len, capture)` bytes. The helper wants a length
        // the verifier knows to be within the record, and not 0: it is
        // given as `((n - 1) & (capture - 1)) + 1`, which is `n` for `n` in
        // 1..=capture (a power of two) and bounded for the verifier,
        // through a register LLVM cannot see into (it would otherwise drop
        // the mask it can prove useless). A packet of 0 bytes asks for the
        // whole capture, which the helper refuses: nothing captured.
        let capture = u64::from(meta::LOG_CAPTURE_BYTES);
        debug_assert!(capture.is_power_of_two());
        let wanted = b.select(b.cmp(IntPredicate::ULT, len, b.c64(capture)), len, b.c64(capture));
        let n = b.add(b.and(b.opaque(b.sub(wanted, b.c64(1))), b.c64(capture - 1)), b.c64(1));
        let data = b.ptr_add(record, b.c64(u64::from(meta::LOG_HEADER_BYTES)));
        let copy = if self.hook == Hook::Xdp { helper::XDP_LOAD_BYTES } else { helper::SKB_LOAD_BYTES };
        let r = b.helper_call(copy, b.i64(), &[ctx.into(), b.c64(0).into(), data.into(), n.into()]);
        let captured = b.select(b.eq(r, b.c64(0)), n, b.c64(0));
        b.store_at(record, meta::log_at::CAPTURED as u64, b.trunc(captured, b.m.cx.i16_type()));
        b.ringbuf_submit(record);
        b.br(done);
        b.at(done);
    }
}
