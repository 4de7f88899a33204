//! Policies written by the differential test's generator (tests/policygen),
//! its choices taken from the fuzzer's bytes: each must compile, to a valid
//! object (see `xpol_fuzz::check_compile`).
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

#[path = "../../tests/policygen/mod.rs"]
mod policygen;

struct Bytes<'a, 'b>(&'b mut Unstructured<'a>);

impl policygen::Choice for Bytes<'_, '_> {
    fn below(&mut self, n: u64) -> u64 {
        self.0.int_in_range(0..=n - 1).unwrap_or(0)
    }
}

static SCRATCH: OnceLock<xpol_fuzz::Scratch> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let scratch = SCRATCH.get_or_init(xpol_fuzz::Scratch::new);
    let mut u = Unstructured::new(data);
    let policy = policygen::policy(&mut Bytes(&mut u));
    let text = policy.text();
    assert!(xpol_fuzz::check_compile(scratch, &text), "a generated policy does not compile:\n{text}");
});
