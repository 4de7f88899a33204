//! The gate every kernel test passes first.

/// True when BPF programs can be loaded here. Otherwise the test should
/// return early: this prints a loud SKIPPED line, or panics when
/// `XPOL_REQUIRE_KERNEL=1` (as CI sets it), so that a CI run can never pass
/// by skipping its kernel tests.
pub fn kernel_or_skip(test: &str) -> bool {
    match crate::sys::can_load_bpf() {
        Ok(()) => true,
        Err(reason) => {
            if std::env::var("XPOL_REQUIRE_KERNEL").is_ok_and(|v| v == "1") {
                panic!("{test}: kernel BPF is required (XPOL_REQUIRE_KERNEL=1) but unavailable: {reason}");
            }
            eprintln!("\n*** SKIPPED (no kernel BPF): {test}: {reason}; set XPOL_REQUIRE_KERNEL=1 to make this a failure ***\n");
            false
        }
    }
}
