//! Verifier rejections, produced for real in the kernel, shown at the
//! policy expression the failing instruction came from.

mod common;

use std::path::Path;
use xpol_compiler::codegen::Faults;
use xpol_compiler::{build, BuildOptions};
use xpol_runtime::loader::{LoadedPolicy, RuntimeError};

/// Builds `path` with `faults`, loads it, and returns the explained
/// rejection rendered as text.
fn rejection(path: &Path, faults: Faults) -> (xpol_lang::Diagnostic, String) {
    let b = build(path, &BuildOptions { faults, ..BuildOptions::default() });
    let out = b.output.as_ref().expect("compiles");
    let (program, log) = match LoadedPolicy::load(&out.object) {
        Err(RuntimeError::Verifier { program, log, .. }) => (program, log),
        Err(e) => panic!("expected a verifier rejection, got: {e}"),
        Ok(_) => panic!("the kernel accepted the faulty program"),
    };
    let section = out.meta.programs.iter().find(|p| p.name == program).expect("program").section.clone();
    let d = xpol_compiler::verifier::explain(&program, &section, &log, &out.object, &out.located, &b.sources, false);
    let text = xpol_lang::render::render_human(std::slice::from_ref(&d), &b.sources, false);
    (d, text)
}

#[test]
fn missing_bounds_check_points_at_the_first_rule_reading_l4() {
    if !common::kernel("missing_bounds_check_points_at_the_first_rule_reading_l4") {
        return;
    }
    let (d, text) = rejection(Path::new("examples/firewall.xpol"), Faults { omit_l4_bounds_check: true, ..Faults::default() });
    assert_eq!(d.code, "xpol::verifier::packet_bounds", "{text}");
    // Rule 1 (line 16, column 6) is the first to read `tcp.dport`.
    assert!(text.contains("examples/firewall.xpol:16:6"), "{text}");
    assert!(text.contains("tcp.dport"), "{text}");
    assert!(d.message.contains("has not proven to lie inside the packet"), "{text}");
}

#[test]
fn missing_null_check_points_at_the_map_update() {
    if !common::kernel("missing_null_check_points_at_the_map_update") {
        return;
    }
    let (d, text) = rejection(Path::new("tests/golden/ok/maps.xpol"), Faults { omit_null_check: true, ..Faults::default() });
    assert_eq!(d.code, "xpol::verifier::null_check", "{text}");
    // The first map update of the policy, `@per_source[ip.src] = count()` (line 3).
    assert!(text.contains("tests/golden/ok/maps.xpol:3:5"), "{text}");
}

#[test]
fn line_info_names_the_policy_file() {
    let b = build(Path::new("examples/firewall.xpol"), &BuildOptions::default());
    let out = b.output.expect("compiles");
    let info = xpol_compiler::verifier::line_info(&out.object);
    assert!(!info.is_empty());
    assert!(info.iter().all(|l| l.section == "xdp"));
    assert!(info.iter().any(|l| l.file.ends_with("examples/firewall.xpol") && l.line == 15), "{info:?}");
}

#[test]
fn failing_instruction_is_found_in_a_log() {
    let log = "0: R1=ctx() R10=fp0\n; xdp @ p.xpol:1\n0: (b4) w0 = 2\n7: (71) r1 = *(u8 *)(r2 +1)\ninvalid access to packet, off=1 size=1, R2(id=21,off=1,r=0)\nR2 offset is outside of the packet\nprocessed 622 insns (limit 1000000)\n";
    let (insn, msg) = xpol_compiler::verifier::failing_insn(log).expect("found");
    assert_eq!(insn, 7);
    assert!(msg.starts_with("invalid access to packet"));
    assert!(!msg.contains("processed"));
}

/// `n` rules of the same shape, each with two comparisons.
fn many_rules(n: usize) -> String {
    let mut s = String::from("xdp /ip.src in 203.0.113.0/24/ { drop }\n");
    for i in 0..n {
        s.push_str(&format!("xdp /tcp.dport == {} && ip.ttl > {}/ {{ drop }}\n", i + 1000, i % 200));
    }
    s.push_str("xdp { pass }\n");
    s
}

/// The program-size budget: a policy under it loads in the kernel; one
/// over it is refused before loading, at the rule that crosses the limit
/// (LLVM 14 would otherwise wrap 16-bit jump offsets silently).
#[test]
fn program_size_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let over = dir.path().join("over.xpol");
    std::fs::write(&over, many_rules(2000)).expect("write");
    let b = build(&over, &BuildOptions::default());
    assert!(b.output.is_none(), "2000 rules must exceed the budget");
    let d = b.diagnostics.iter().find(|d| d.code == "xpol::budget::program_size").expect("the budget diagnostic");
    let line = b.sources.location(d.primary_span().expect("a span")).1;
    assert!((1000..2000).contains(&line), "points at a rule in the middle, not at line {line}");

    if !common::kernel("program_size_budget") {
        return;
    }
    let under = dir.path().join("under.xpol");
    std::fs::write(&under, many_rules(1000)).expect("write");
    let mut p = common::load_file(&under);
    let stats = p.program_stats("xdp").expect("stats");
    assert!(stats.xlated_bytes as usize / 8 <= xpol_compiler::codegen::MAX_PROGRAM_INSNS);
    // Rule 1000 is `tcp.dport == 1999 && ip.ttl > 199`.
    let pkt = xpol_runtime::packet::PacketSpec::tcp4("198.18.0.1".parse().unwrap(), "198.19.0.1".parse().unwrap(), 1, 1999).ipv4(|ip| ip.ttl = 255).build();
    common::expect(&mut p, "xdp", "the last numbered rule", &pkt, xpol_runtime::loader::Action::Drop, &[1000]);
}
