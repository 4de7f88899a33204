//! Shared helpers of the kernel tests: compile a policy, load it, run
//! packets and compare verdicts and fired rules.

#![allow(dead_code)]

pub mod host;
pub mod net;
pub mod script;

use std::path::Path;
use xpol_runtime::loader::{Action, LoadOptions, LoadedPolicy};
use xpol_runtime::packet::hex;

/// Compiles `path` and loads it into the kernel, panicking with rendered
/// diagnostics on failure.
pub fn load_file(path: &Path) -> LoadedPolicy {
    let b = xpol_compiler::build(path, &xpol_compiler::BuildOptions::default());
    let out = b.output.unwrap_or_else(|| {
        panic!("{} does not compile:\n{}", path.display(), xpol_lang::render::render_human(&b.diagnostics, &b.sources, false))
    });
    LoadedPolicy::load_with(&out.object, &LoadOptions { missing_interfaces_ok: true, ..Default::default() })
        .unwrap_or_else(|e| panic!("{} does not load: {e}\n{}", path.display(), verifier_log(&e)))
}

fn verifier_log(e: &xpol_runtime::loader::RuntimeError) -> String {
    match e {
        xpol_runtime::loader::RuntimeError::Verifier { log, .. } => {
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        }
        _ => String::new(),
    }
}

/// Compiles and loads policy text (written to a temporary file).
pub fn load_text(text: &str) -> LoadedPolicy {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.xpol");
    std::fs::write(&path, text).expect("write policy");
    load_file(&path)
}

/// Compiles and loads policy text, keeping its checked IR (for the
/// reference semantics) and the temporary directory its file is in (its
/// diagnostics name it): for tests that follow the kernel with the
/// reference packet by packet.
pub fn load_text_with_ir(text: &str) -> (LoadedPolicy, xpol_compiler::ir::Policy, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.xpol");
    std::fs::write(&path, text).expect("write policy");
    let b = xpol_compiler::build(&path, &xpol_compiler::BuildOptions::default());
    let out = b.output.unwrap_or_else(|| panic!("does not compile:\n{}", xpol_lang::render::render_human(&b.diagnostics, &b.sources, false)));
    let kernel = LoadedPolicy::load_with(&out.object, &LoadOptions::default()).unwrap_or_else(|e| panic!("does not load: {e}\n{}", verifier_log(&e)));
    (kernel, out.ir, dir)
}

/// Runs `packet` through `hook` and checks the action and exactly which
/// rules fired (their packet counters moved by one, bytes by the length).
pub fn expect(p: &mut LoadedPolicy, hook: &str, what: &str, packet: &[u8], action: Action, fired: &[u32]) {
    let before = p.rule_counters().expect("counters");
    let out = p.test_run(hook, packet).unwrap_or_else(|e| panic!("{what}: test run failed: {e}"));
    let after = p.rule_counters().expect("counters");
    let got: Vec<u32> = after.iter().zip(&before).enumerate().filter(|(_, (a, b))| a.packets != b.packets).map(|(i, _)| i as u32).collect();
    assert_eq!(out.action, action, "{what}: wrong verdict (rules fired {got:?}); packet {}", hex(packet));
    assert_eq!(got, fired, "{what}: wrong rules fired (verdict {:?}); packet {}", out.action, hex(packet));
    for &r in fired {
        let (a, b) = (after[r as usize], before[r as usize]);
        assert_eq!(a.packets - b.packets, 1, "{what}: rule {r} counted more than once");
        assert_eq!(a.bytes - b.bytes, packet.len() as u64, "{what}: rule {r} counted wrong bytes");
    }
}

/// The skip gate, shorter to call.
pub fn kernel(test: &str) -> bool {
    xpol_runtime::testing::kernel_or_skip(test)
}

/// A small deterministic generator (xorshift64*): reproducible random
/// inputs without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[self.below(v.len() as u64) as usize]
    }
}
