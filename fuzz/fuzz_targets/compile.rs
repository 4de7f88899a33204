//! The whole compiler driver (load, check, codegen) on arbitrary source: no
//! panic, every error has a span inside the sources, and every object is a
//! valid BPF ELF with whole-instruction program sections and line info.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static SCRATCH: OnceLock<xpol_fuzz::Scratch> = OnceLock::new();

fuzz_target!(|text: &str| {
    let scratch = SCRATCH.get_or_init(xpol_fuzz::Scratch::new);
    xpol_fuzz::check_compile(scratch, text);
});
