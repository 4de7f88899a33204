//! Verifier rejections, produced for real in the kernel, shown at the
//! policy expression the failing instruction came from.

mod common;

use std::path::Path;
use xpol_compiler::codegen::Faults;
use xpol_compiler::{build, BuildOptions};
use xpol_runtime::loader::{LoadedPolicy, RuntimeError};
use xpol_lang::meta;

/// Snapshots a rendered diagnostic beside the golden ones, with
/// instruction numbers, registers and offsets replaced by `N` (they change
/// with code generation; the line and column must not).
fn snapshot(name: &str, content: &str) {
    let mut out = String::new();
    let mut rest = content;
    while let Some(i) = ["instruction ", "insn ", "insn#", " R", "(R", "id=", "off=", "r="].iter().filter_map(|w| rest.find(w).map(|i| i + w.len())).min() {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let sign = usize::from(rest.starts_with('-') && rest[1..].starts_with(|c: char| c.is_ascii_digit()));
        let digits = sign + rest[sign..].len() - rest[sign..].trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 {
            out.push('N');
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    insta::with_settings!({
        snapshot_path => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/snapshots"),
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        insta::assert_snapshot!(name, out);
    });
}

/// The policy the fault tests build; every instruction fault stands for
/// its line 6, column 5.
const FAULTS: &str = "tests/verifier/faults.xpol";

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
    // Rule 2 (line 17, column 6) is the first to read `tcp.dport`.
    assert!(text.contains("examples/firewall.xpol:17:6"), "{text}");
    assert!(text.contains("tcp.dport"), "{text}");
    assert!(d.message.contains("has not proven to lie inside the packet"), "{text}");
    snapshot("verifier__packet_bounds", &text);
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
    snapshot("verifier__null_check", &text);
}

/// `--verbose` (`explain`'s `verbose`) adds the lines of the verifier's
/// log that matter to the diagnostic.
#[test]
fn verbose_rejection_shows_the_log_lines() {
    if !common::kernel("verbose_rejection_shows_the_log_lines") {
        return;
    }
    let b = build(Path::new("tests/golden/ok/maps.xpol"), &BuildOptions { faults: Faults { omit_null_check: true, ..Faults::default() }, ..BuildOptions::default() });
    let out = b.output.as_ref().expect("compiles");
    let Err(RuntimeError::Verifier { program, log, .. }) = LoadedPolicy::load(&out.object) else { panic!("expected a verifier rejection") };
    let d = xpol_compiler::verifier::explain(&program, "xdp", &log, &out.object, &out.located, &b.sources, true);
    let help = d.help.clone().unwrap_or_default();
    assert!(help.contains("verifier log (the lines that matter):") && help.contains("map_value_or_null"), "{help}");
}

/// Line info names the file of each instruction: a rejection in an
/// included file is shown there, one in the including file after an
/// include is shown in the including file (LLVM 14 names the function's
/// file in BTF line info unless codegen says otherwise).
#[test]
fn rejections_name_the_file_across_includes() {
    if !common::kernel("rejections_name_the_file_across_includes") {
        return;
    }
    let null_check = Faults { omit_null_check: true, ..Faults::default() };
    let (d, text) = rejection(Path::new("tests/verifier/include/main.xpol"), null_check.clone());
    assert_eq!(d.code, "xpol::verifier::null_check", "{text}");
    assert!(text.contains("tests/verifier/include/lib.xpol:5:5"), "in the included file: {text}");
    snapshot("verifier__in_included_file", &text);
    let (d, text) = rejection(Path::new("tests/verifier/include/first.xpol"), null_check);
    assert_eq!(d.code, "xpol::verifier::null_check", "{text}");
    assert!(text.contains("tests/verifier/include/first.xpol:5:5"), "in the including file: {text}");
}

/// The two TC programs share the `classifier` section: a rejection of
/// `tc:egress`, whose instructions the verifier counts from its own start,
/// is shown at its rule, not at a `tc:ingress` rule.
#[test]
fn tc_egress_rejection_points_into_tc_egress() {
    if !common::kernel("tc_egress_rejection_points_into_tc_egress") {
        return;
    }
    let (d, text) = rejection(Path::new("tests/verifier/tc-egress.xpol"), Faults { omit_null_check: true, ..Faults::default() });
    assert_eq!(d.code, "xpol::verifier::null_check", "{text}");
    assert!(d.message.contains("xpol_tc_egress"), "{text}");
    // The first unchecked lookup there: the parsed facts (a per-CPU map in
    // TC programs) read for `tcp.sport`.
    assert!(text.contains("tests/verifier/tc-egress.xpol:65:12"), "{text}");
    snapshot("verifier__tc_egress", &text);
}

/// One instruction fault in `tests/verifier/faults.xpol`: the class, the
/// position (line 6, column 5, the first statement) and the snapshot.
fn fault_case(test: &str, faults: Faults, code: &str, words: &str) -> (xpol_lang::Diagnostic, String) {
    let (d, text) = rejection(Path::new(FAULTS), faults);
    assert_eq!(d.code, code, "{test}: {text}");
    assert!(text.contains("tests/verifier/faults.xpol:6:5"), "{test}: {text}");
    assert!(text.contains(words), "{test}: {text}");
    snapshot(&format!("verifier__{test}"), &text);
    (d, text)
}

#[test]
fn stack_over_512_bytes() {
    if !common::kernel("stack_over_512_bytes") {
        return;
    }
    fault_case("stack", Faults { stack_overflow: true, ..Faults::default() }, "xpol::verifier::stack", "invalid write to stack");
}

#[test]
fn too_many_processed_instructions() {
    if !common::kernel("too_many_processed_instructions") {
        return;
    }
    fault_case("too_complex", Faults { long_loop: true, ..Faults::default() }, "xpol::verifier::too_complex", "BPF program is too large");
}

#[test]
fn loop_the_verifier_cannot_bound() {
    if !common::kernel("loop_the_verifier_cannot_bound") {
        return;
    }
    fault_case("unbounded_loop", Faults { endless_loop: true, ..Faults::default() }, "xpol::verifier::unbounded_loop", "infinite loop detected");
}

#[test]
fn helper_not_allowed_for_xdp() {
    if !common::kernel("helper_not_allowed_for_xdp") {
        return;
    }
    // bpf_skb_store_bytes works on socket buffers: TC, not XDP.
    let (d, _) = fault_case("helper_not_allowed", Faults { call_helper: Some(9), ..Faults::default() }, "xpol::verifier::helper_not_allowed", "bpf_skb_store_bytes");
    assert!(d.message.contains("which XDP programs cannot call"), "{}", d.message);
}

#[test]
fn gpl_only_helper_from_a_non_gpl_object() {
    if !common::kernel("gpl_only_helper_from_a_non_gpl_object") {
        return;
    }
    let faults = Faults { license: Some("Proprietary".into()), call_helper: Some(6), ..Faults::default() };
    let (d, _) = fault_case("gpl_only", faults, "xpol::verifier::gpl_only", "cannot call GPL-restricted function");
    assert!(d.message.contains("`bpf_trace_printk` (helper 6, added in Linux 4.1) is GPL-only and the object's license is `Proprietary`"), "{}", d.message);
}

#[test]
fn kernel_lacks_the_helper() {
    if !common::kernel("kernel_lacks_the_helper") {
        return;
    }
    // No kernel has helper 999 (helpers end near 212; new functions are kfuncs).
    let (d, _) = fault_case("kernel_lacks", Faults { call_helper: Some(999), ..Faults::default() }, "xpol::verifier::kernel_lacks", "invalid func unknown#999");
    assert!(d.message.contains("this kernel has no helper 999"), "{}", d.message);
}

/// A rejection the catalog does not know (a helper called without its
/// arguments) still points at the line, with the verifier's own words.
#[test]
fn rejection_outside_the_catalog_keeps_the_verifiers_words() {
    if !common::kernel("rejection_outside_the_catalog_keeps_the_verifiers_words") {
        return;
    }
    let b = build(Path::new(FAULTS), &BuildOptions { faults: Faults { call_helper: Some(1), ..Faults::default() }, ..BuildOptions::default() });
    let out = b.output.as_ref().expect("compiles");
    let Err(RuntimeError::Verifier { log, .. }) = LoadedPolicy::load(&out.object) else { panic!("expected a verifier rejection") };
    let (_, message) = xpol_compiler::verifier::failing_insn(&log).expect("a failing instruction");
    let (d, text) = rejection(Path::new(FAULTS), Faults { call_helper: Some(1), ..Faults::default() });
    assert_eq!(d.code, "xpol::verifier", "{text}");
    assert!(text.contains("tests/verifier/faults.xpol:6:5"), "{text}");
    let first = message.lines().next().expect("a message");
    assert!(d.labels[0].message.ends_with(first) && d.help.as_deref().is_some_and(|h| h.contains(first)), "{text}");
}

/// The table behind `kernel_lacks` names a known helper and its version.
#[test]
fn kernel_lacks_names_a_known_helper_and_its_version() {
    let b = build(Path::new(FAULTS), &BuildOptions::default());
    let out = b.output.expect("compiles");
    let log = "0: R1=ctx() R10=fp0\n0: (85) call unknown#130\ninvalid func unknown#130\nprocessed 1 insns (limit 1000000)\n";
    let d = xpol_compiler::verifier::explain("xpol_xdp", "xdp", log, &out.object, &out.located, &b.sources, false);
    assert_eq!(d.code, "xpol::verifier::kernel_lacks");
    assert!(d.message.ends_with("`bpf_ringbuf_output` (helper 130) needs Linux 5.8 or newer"), "{}", d.message);
    assert_eq!(xpol_compiler::verifier::map_type_info(11), Some(("BPF_MAP_TYPE_LPM_TRIE", "4.11")));
}

/// A kernel without BPF atomics (before 5.12) refuses `limit`'s
/// compare-and-exchange: the diagnostic names the feature and the version.
#[test]
fn kernel_without_atomics_is_named_with_its_version() {
    let dir = std::env::temp_dir().join(format!("xpol-atomics-{}", common::net::unique()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("limit.xpol");
    std::fs::write(&path, "xdp /ip.proto == 1 && !limit(100/s)/ { drop }\n").expect("write");
    let b = build(&path, &BuildOptions::default());
    let out = b.output.expect("compiles");
    // What Linux 5.10 says of the instruction.
    let log = "0: R1=ctx() R10=fp0\n0: (db) r0 = atomic64_cmpxchg((u64 *)(r1 +0), r0, r3)\nBPF_XADD uses reserved fields\nprocessed 40 insns (limit 1000000)\n";
    let d = xpol_compiler::verifier::explain("xpol_xdp", "xdp", log, &out.object, &out.located, &b.sources, false);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(d.code, "xpol::verifier::no_atomics");
    assert!(d.message.contains("BPF_CMPXCHG") && d.message.contains("Linux 5.12"), "{}", d.message);
    assert!(d.help.as_deref().is_some_and(|h| h.contains("5.12")), "{d:?}");
}

/// Loads `path` (its set maps with room for `set_capacity` entries, when
/// given) and explains the kernel's refusal of a map.
fn map_refusal(path: &str, set_capacity: Option<u32>) -> (xpol_lang::Diagnostic, String) {
    let b = build(Path::new(path), &BuildOptions::default());
    let out = b.output.as_ref().expect("compiles");
    let options = xpol_runtime::loader::LoadOptions::default();
    let r = match set_capacity {
        Some(n) => LoadedPolicy::load_with_set_capacity(&out.object, &options, n),
        None => LoadedPolicy::load_with(&out.object, &options),
    };
    let (map, source) = match r {
        Err(RuntimeError::Map { map, source }) => (map, source),
        Err(e) => panic!("expected a map error, got: {e}"),
        Ok(_) => panic!("the kernel accepted the map"),
    };
    let d = xpol_compiler::verifier::explain_map(&map, &source, out);
    let text = xpol_lang::render::render_human(std::slice::from_ref(&d), &b.sources, false);
    (d, text)
}

/// A set map that is full: the kernel refuses the third element (E2BIG),
/// which the runtime reports as the set being full.
#[test]
fn set_map_full() {
    if !common::kernel("set_map_full") {
        return;
    }
    let b = build(Path::new("tests/verifier/set-full.xpol"), &BuildOptions::default());
    let out = b.output.as_ref().expect("compiles");
    match LoadedPolicy::load_with_set_capacity(&out.object, &xpol_runtime::loader::LoadOptions::default(), 2) {
        Err(RuntimeError::SetFull { set, capacity, needed }) => {
            assert_eq!((set.as_str(), capacity), ("ports", 2));
            assert!(needed.contains(&format!("map `{}`", xpol_lang::meta::SETS_HASH_MAP)), "{needed}");
        }
        Err(e) => panic!("expected SetFull, got: {e}"),
        Ok(_) => panic!("the kernel accepted the elements"),
    }
}

/// A genuine one: a set too large for the kernel to create its map. The
/// compiler refuses such sets (`xpol::set::too_large`), so the test asks
/// the loader for the room.
#[test]
fn set_map_too_large() {
    if !common::kernel("set_map_too_large") {
        return;
    }
    let (d, text) = map_refusal("tests/verifier/set-huge.xpol", Some(u32::MAX));
    assert_eq!(d.code, "xpol::verifier::map_too_large", "{text}");
    assert!(text.contains("tests/verifier/set-huge.xpol:5:5"), "{text}");
    snapshot("verifier__map_too_large", &text);
}

/// 65 `@map`s in one program, and 65 sets sharing a map: one map more
/// than the kernel allows, refused at compile time (`xpol::budget::maps`),
/// at the `@map` that is the 65th map the program uses in source order
/// (xpol's own first, then the sets' shared map), which
/// here is also where the kernel stops (it resolves maps in instruction
/// order; a program of 64 maps loads, see `tests/limits.rs`).
#[test]
fn too_many_maps() {
    let b = build(Path::new("tests/verifier/too-many-maps.xpol"), &BuildOptions::default());
    let d = b.diagnostics.iter().find(|d| d.is_error()).expect("refused");
    let text = xpol_lang::render::render_human(std::slice::from_ref(d), &b.sources, false);
    assert_eq!(d.code, "xpol::budget::maps", "{text}");
    assert!(text.contains("tests/verifier/too-many-maps.xpol:130:26"), "{text}");
    snapshot("verifier__too_many_maps", &text);
}

/// The JSON form of a verifier diagnostic.
#[test]
fn json_verifier_diagnostic() {
    if !common::kernel("json_verifier_diagnostic") {
        return;
    }
    let b = build(Path::new(FAULTS), &BuildOptions { faults: Faults { call_helper: Some(9), ..Faults::default() }, ..BuildOptions::default() });
    let out = b.output.as_ref().expect("compiles");
    let Err(RuntimeError::Verifier { program, log, .. }) = LoadedPolicy::load(&out.object) else { panic!("expected a verifier rejection") };
    let d = xpol_compiler::verifier::explain(&program, "xdp", &log, &out.object, &out.located, &b.sources, false);
    let json = xpol_lang::render::render_json(&[d], &b.sources);
    let v: serde_json::Value = serde_json::from_str(json.trim()).expect("one JSON object");
    assert_eq!((v["line"].as_u64(), v["column"].as_u64()), (Some(6), Some(5)), "{json}");
    snapshot("json__verifier", &json);
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
        // `== true`: a rule the decision trees do not take.
        s.push_str(&format!("xdp /(tcp.dport == {}) == true && ip.ttl > {}/ {{ drop }}\n", i + 1000, i % 200));
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
    std::fs::write(&over, many_rules(3000)).expect("write");
    let b = build(&over, &BuildOptions::default());
    assert!(b.output.is_none(), "3000 rules must exceed the budget");
    let d = b.diagnostics.iter().find(|d| d.code == "xpol::budget::program_size").expect("the budget diagnostic");
    let line = b.sources.location(d.primary_span().expect("a span")).1;
    assert!((2000..3000).contains(&line), "points at a rule in the middle, not at line {line}");

    if !common::kernel("program_size_budget") {
        return;
    }
    let under = dir.path().join("under.xpol");
    std::fs::write(&under, many_rules(2000)).expect("write");
    let mut p = common::load_file(&under);
    let stats = p.program_stats("xdp").expect("stats");
    assert!(stats.xlated_bytes as usize / 8 <= xpol_compiler::codegen::MAX_PROGRAM_INSNS);
    // Rule 2000 is `tcp.dport == 2999 && ip.ttl > 199`.
    let pkt = xpol_runtime::packet::PacketSpec::tcp4("198.18.0.1".parse().unwrap(), "198.19.0.1".parse().unwrap(), 1, 2999).ipv4(|ip| ip.ttl = 255).build();
    common::expect(&mut p, "xdp", "the last numbered rule", &pkt, xpol_runtime::loader::Action::Drop, &[2000]);
}

/// A policy at the limits of specializing (64 rules, branch weight 32,
/// reading TCP, UDP and ICMP fields, with map updates and a named set, so
/// helper calls between the rules) is emitted once per parse end and per
/// L4 header; the verifier must still accept it with plenty of room below
/// its 1,000,000 processed instructions.
#[test]
fn specialized_policy_at_the_limits_verifies_with_room() {
    if !common::kernel("specialized_policy_at_the_limits_verifies_with_room") {
        return;
    }
    let mut policy = String::from("set nets: cidr = { 10.0.0.0/8, 2001:db8:1::/48 }\n");
    for i in 0..8 {
        // Weight 2 each: `&&` and a map update.
        policy.push_str(&format!("xdp /tcp.dport == {} && ip.src in nets/ {{ @hits[ip.src] = count(); drop }}\n", 1000 + i));
    }
    for i in 0..8 {
        // Weight 1 each.
        policy.push_str(&format!("xdp /udp.dport == {} || icmp.type == {i}/ {{ drop }}\n", 2000 + i));
    }
    for i in 0..4 {
        // Weight 2 each.
        policy.push_str(&format!("xdp /(tcp.sport == {i} || udp.sport == {i}) && ip.ttl < 5/ {{ drop }}\n"));
    }
    for i in 0..43 {
        policy.push_str(&format!("xdp /ip.src == 198.18.{i}.1/ {{ pass }}\n"));
    }
    policy.push_str("xdp { pass }\n");
    let mut loaded = common::load_text(&policy);
    assert_eq!(loaded.meta().rules.len(), xpol_compiler::codegen::SPECIALIZE_MAX_RULES);
    // Specialized: no map of parsed facts.
    // (The loader takes every map out of aya's `Ebpf`: ask its own list.)
    assert!(loaded.maps().has_map(meta::RULES_MAP), "the loader lists the object's maps");
    assert!(!loaded.maps().has_map(xpol_compiler::codegen::FACTS_MAP), "the policy was not specialized");
    let stats = loaded.program_stats("xdp").expect("program stats");
    eprintln!("specialized policy at the limits: {} instructions processed by the verifier", stats.verified_insns);
    assert!(stats.verified_insns > 0 && stats.verified_insns < 250_000, "the verifier processed {} instructions", stats.verified_insns);
}
