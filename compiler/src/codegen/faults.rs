//! Test-only codegen faults: programs the kernel must reject, one per class
//! of the verifier catalog (`crate::verifier`), so that tests prove with
//! real rejections that each class is reported at the right line and column
//! of the policy (`tests/verifier.rs`).
//!
//! Architecture invariant: faults are reachable only through
//! `BuildOptions::faults`, never from the CLI.
//!
//! The faults that add instructions emit them at the start of each program
//! (after the packet parser, before the first probe), located at the
//! program's *fault site*: the first statement of its first probe that has
//! statements, else its first probe.

use super::builder::Bpf;
use inkwell::IntPredicate;
use crate::ir;
use xpol_lang::Span;

/// Faults injected on purpose, to prove that verifier rejections are mapped
/// back to source. Reachable only from tests, never from the CLI.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Skip the frame-end check before reading L4 headers.
    pub omit_l4_bounds_check: bool,
    /// Skip the null check after map lookups.
    pub omit_null_check: bool,
    /// Store 8 bytes at 520 bytes below the frame pointer, past the 512
    /// bytes of stack a BPF program has.
    pub stack_overflow: bool,
    /// A counting loop of 2^31 iterations, which the verifier walks one
    /// iteration at a time until it has processed 1,000,000 instructions.
    pub long_loop: bool,
    /// A loop whose condition never changes: the verifier sees the same
    /// state again at the loop head.
    pub endless_loop: bool,
    /// Call this kernel helper (by id, without arguments), e.g. an skb-only
    /// helper from XDP, a GPL-only one, or an id no kernel has.
    pub call_helper: Option<u64>,
    /// The license section's text instead of `GPL`.
    pub license: Option<String>,
}

/// The span a program's faults stand for (see the module documentation).
pub fn site(prog: &ir::Program) -> Option<Span> {
    prog.probes.iter().find_map(|p| p.body.first().map(|s| s.span)).or_else(|| prog.probes.first().map(|p| p.span))
}

/// Emits the instruction faults of `faults` at the builder's position (one
/// parse outcome's end), located at the program's fault site.
pub fn emit(b: &Bpf, faults: &Faults, prog: &ir::Program) {
    let Some(span) = site(prog) else { return };
    if !(faults.stack_overflow || faults.long_loop || faults.endless_loop || faults.call_helper.is_some()) {
        return;
    }
    b.locate(span);
    if faults.stack_overflow {
        // 520 bytes below an 8-byte slot, through a register LLVM cannot
        // see into (it would refuse the offset itself).
        let slot = b.pkt_ptr(b.stack_buf(8, "fault"), b.c64(0));
        b.store_at(slot, (-520i64) as u64, b.c64(0));
    }
    if faults.long_loop {
        // i = 0; do { i = opaque(i) + 1 } while i < 2^31: the verifier knows
        // i at every iteration and walks them all.
        let i = b.var(b.c64(0), "fault_i");
        let (body, done) = (b.block("fault_loop"), b.block("fault_loop_end"));
        b.br(body);
        b.at(body);
        let next = b.add(b.opaque(b.get(i)), b.c64(1));
        b.set(i, next);
        b.cond_br(b.cmp(IntPredicate::ULT, next, b.c64(1 << 31)), body, done);
        b.at(done);
    }
    if faults.endless_loop {
        // do {} while opaque(1) != 0: the same state at every iteration.
        let (body, done) = (b.block("fault_endless"), b.block("fault_endless_end"));
        b.br(body);
        b.at(body);
        let one = b.opaque(b.c64(1));
        b.cond_br(b.cmp(IntPredicate::NE, one, b.c64(0)), body, done);
        b.at(done);
    }
    if let Some(id) = faults.call_helper {
        b.helper_call(id, b.i64(), &[]);
    }
}

/// The contents of the object's `license` section (NUL-terminated).
pub fn license(faults: &Faults) -> Vec<u8> {
    let mut text = faults.license.as_deref().unwrap_or("GPL").as_bytes().to_vec();
    text.push(0);
    text
}
