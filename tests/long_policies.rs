//! Policies of more than `SPECIALIZE_MAX_RULES` rules are compiled
//! differently: the parsed facts move into a per-CPU map before the first
//! rule (`Bpf::spill_facts`), so that the verifier checks the rules once
//! instead of once per parser path. These tests take the examples, append
//! rules until that mode is on, and check that the program still gives the
//! reference's verdict and fires the reference's rules, and that long
//! policies of heavy rules stay within the verifier's limits.

mod common;

use common::{kernel, Rng};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::Command;
use xpol_compiler::codegen::SPECIALIZE_MAX_RULES;
use xpol_compiler::ir::Outcome;
use xpol_compiler::reference::{self, State};
use xpol_lang::ast::Hook;
use xpol_runtime::loader::{Action, LoadOptions, LoadedPolicy};
use xpol_runtime::packet::{hex, Ipv6Ext, PacketSpec};

/// `example` with enough never-matching rules appended (after its test
/// blocks, so that the lines its tests name stay the same).
fn padded(example: &str, dir: &Path) -> std::path::PathBuf {
    let mut text = std::fs::read_to_string(example).expect("read example");
    text.push_str("\n// Padding: past this many rules the facts live in a map.\n");
    for i in 0..=SPECIALIZE_MAX_RULES {
        text.push_str(&format!("xdp /udp.dport == {} && ip.ttl == 1/ {{ drop }}\n", 60000 + i));
    }
    let path = dir.join(Path::new(example).file_name().expect("a file name"));
    std::fs::write(&path, text).expect("write padded policy");
    path
}

fn action(o: Outcome) -> Action {
    match o {
        Outcome::Pass => Action::Pass,
        Outcome::Drop => Action::Drop,
        Outcome::Tx => Action::Tx,
        Outcome::Redirect => Action::Redirect,
        Outcome::Abort => Action::Abort,
        Outcome::Lb => panic!("the policies padded here have no `lb`"),
    }
}

fn packets() -> Vec<Vec<u8>> {
    let a4 = |s: &str| -> Ipv4Addr { s.parse().expect("IPv4") };
    let a6 = |s: &str| -> Ipv6Addr { s.parse().expect("IPv6") };
    let mut out = Vec::new();
    for src in ["198.18.0.7", "203.0.113.9", "10.1.2.3", "198.51.100.20", "192.168.1.1"] {
        for dport in [22, 23, 53, 80, 443, 8080] {
            out.push(PacketSpec::tcp4(a4(src), a4("198.19.255.1"), 40000, dport).syn().build());
            out.push(PacketSpec::tcp4(a4(src), a4("198.19.255.1"), 40000, dport).syn().vlan(7).build());
            out.push(PacketSpec::udp4(a4(src), a4("198.19.255.1"), 40000, dport).build());
        }
        out.push(PacketSpec::tcp4(a4(src), a4("198.19.255.1"), 40000, 22).frag(64, true).build());
        out.push(PacketSpec::icmp4(a4(src), a4("198.19.255.1"), 8, 0).build());
    }
    for src in ["2001:db8::7", "fe80::1", "2001:db8:ffff::1"] {
        for dport in [22, 80, 443] {
            out.push(PacketSpec::tcp6(a6(src), a6("2001:db8::80"), 40000, dport).syn().build());
            out.push(PacketSpec::tcp6(a6(src), a6("2001:db8::80"), 40000, dport).syn().ext(Ipv6Ext::HopByHop { len8: 0 }).build());
            out.push(PacketSpec::udp6(a6(src), a6("2001:db8::80"), 40000, dport).build());
        }
    }
    // Truncations and random bytes.
    let base = out.clone();
    for p in base.iter().step_by(5) {
        for len in [14, 20, 33, 34, 40, 53, 54] {
            out.push(p[..len.min(p.len())].to_vec());
        }
    }
    let mut rng = Rng(0x10_ac1e5);
    for _ in 0..200 {
        let mut p = base[rng.below(base.len() as u64) as usize].clone();
        let i = rng.below(p.len() as u64) as usize;
        p[i] = rng.next() as u8;
        out.push(p);
    }
    out
}

#[test]
fn padded_examples_agree_with_the_reference() {
    if !kernel("padded_examples_agree_with_the_reference") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for example in ["examples/firewall.xpol", "examples/edge.xpol"] {
        let path = padded(example, dir.path());
        let b = xpol_compiler::build(&path, &xpol_compiler::BuildOptions::default());
        let out = b.output.unwrap_or_else(|| panic!("{}", xpol_lang::render::render_human(&b.diagnostics, &b.sources, false)));
        assert!(out.ir.rules.len() > SPECIALIZE_MAX_RULES);
        let mut p = LoadedPolicy::load_with(&out.object, &LoadOptions { missing_interfaces_ok: true, ..Default::default() }).expect("load");
        let mut state = State::default();
        for packet in packets() {
            let before = p.rule_counters().expect("counters");
            let got = p.test_run("xdp", &packet).expect("test run").action;
            let after = p.rule_counters().expect("counters");
            let fired: Vec<u32> = after.iter().zip(&before).enumerate().filter(|(_, (a, b))| a.packets != b.packets).map(|(i, _)| i as u32).collect();
            let want = reference::evaluate(&out.ir, Hook::Xdp, &packet, &mut state);
            assert_eq!((got, &fired), (action(want.outcome), &want.fired), "{example} (padded), packet {}", hex(&packet));
        }

        // The example's own test blocks, through `xpol test`.
        let r = Command::new(env!("CARGO_BIN_EXE_xpol")).arg("test").arg(&path).output().expect("run xpol");
        assert!(r.status.success(), "{example} (padded): {}{}", String::from_utf8_lossy(&r.stdout), String::from_utf8_lossy(&r.stderr));
    }
}

/// Heavy rules (3-valued `||`, @map updates keyed by address, `let`, VLAN)
/// by the hundred: every one that the program-size budget lets through
/// loads in the kernel, whose verifier would otherwise follow each parser
/// path through every rule (past 1,000,000 instructions at 100 rules), and
/// no longer overflows the 512-byte stack.
#[test]
fn hundreds_of_heavy_rules_load() {
    if !kernel("hundreds_of_heavy_rules_load") {
        return;
    }
    let mut text = String::new();
    for i in 0..480 {
        text.push_str(&match i % 4 {
            0 => format!("xdp /tcp.dport == {} && ip.src in 10.{}.0.0/16/ {{ drop }}\n", 1000 + i, i % 256),
            1 => format!("xdp /udp.dport == {} || ip.ttl == {}/ {{ @c[ip.src] = count(); }}\n", 1000 + i, i % 256),
            2 => format!("xdp /ip.dst == 198.18.{}.{}/ {{ if tcp.syn {{ drop }} else {{ pass }} }}\n", i % 256, (i * 7) % 256),
            _ => format!("xdp /vlan.id == {} && ip.proto == 17/ {{ let x = udp.sport + 1; if x > 100 {{ drop }} }}\n", i % 4000),
        });
    }
    let mut p = common::load_text(&text);
    let stats = p.program_stats("xdp").expect("stats");
    assert!(stats.verified_insns < 500_000, "{} instructions processed", stats.verified_insns);
    // Rule 1 counts UDP to 1001 by source; rule 3 (`vlan.id == 3`) does not match untagged.
    let pkt = PacketSpec::udp4("198.18.0.9".parse().unwrap(), "198.19.0.1".parse().unwrap(), 5, 1001).build();
    common::expect(&mut p, "xdp", "udp to 1001", &pkt, Action::Pass, &[1]);
    let entries = p.map_entries("c").expect("@c");
    assert_eq!(entries.len(), 1);
}


/// Few rules, but each combining many conditions, with map updates and
/// nested `if`s: specialized per parser path the verifier's work grew
/// exponentially with them (25 such rules: past 1,000,000 instructions).
/// Their branch weight moves the facts into the map; they load, and the
/// examples, light, stay specialized (the fast form).
#[test]
fn heavy_rules_are_not_specialized_and_load() {
    if !kernel("heavy_rules_are_not_specialized_and_load") {
        return;
    }
    let text = heavy_rules(25, 25, true);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("heavy.xpol");
    std::fs::write(&path, &text).expect("write");
    let b = xpol_compiler::build(&path, &xpol_compiler::BuildOptions::default());
    let out = b.output.expect("compiles");
    assert!(!xpol_compiler::codegen::specialized(&out.ir), "weight {:?}", out.ir.programs.iter().map(xpol_compiler::codegen::branch_weight).collect::<Vec<_>>());
    let mut p = common::load_file(&path);
    let stats = p.program_stats("xdp").expect("stats");
    assert!(stats.verified_insns < 500_000, "{} instructions processed", stats.verified_insns);

    for example in ["examples/firewall.xpol", "examples/edge.xpol", "bench/ref-fw/ref-fw-10.xpol"] {
        let b = xpol_compiler::build(Path::new(example), &xpol_compiler::BuildOptions::default());
        assert!(xpol_compiler::codegen::specialized(&b.output.expect("compiles").ir), "{example}");
    }
}

/// `n` rules, each a predicate of 3 to 10 comparisons joined by random
/// `&&`/`||` (on fields including `pkt.len`), with a body that counts into
/// @maps (`drops`: some bodies may drop; else every rule falls through).
fn heavy_rules(n: usize, seed: u64, drops: bool) -> String {
    let fields = ["tcp.dport", "udp.dport", "ip.ttl", "tcp.sport", "udp.sport", "vlan.id", "ip.proto", "pkt.len", "icmp.type", "eth.type"];
    let mut rng = Rng(seed);
    let mut text = String::new();
    for i in 0..n {
        let terms = 3 + rng.below(8) as usize;
        let mut pred = String::new();
        for j in 0..terms {
            let op = ["==", "!=", ">", "<"][rng.below(4) as usize];
            // A constant the field can hold (the checker refuses a
            // comparison no packet satisfies).
            let field = fields[rng.below(fields.len() as u64) as usize];
            let max = match field {
                "ip.ttl" | "ip.proto" | "icmp.type" => 255,
                _ => 1999,
            };
            pred.push_str(&format!("{field} {op} {}", 1 + rng.below(max)));
            if j + 1 < terms {
                pred.push_str(if rng.below(2) == 0 { " || " } else { " && " });
            }
        }
        let body = match i % 3 {
            0 => format!("@m{}[ip.src, tcp.dport, udp.sport] = count();", i % 5),
            1 if drops => format!("if ip.ttl > {} {{ @c[ip.dst] = count(); }} else {{ if vlan.id == {i} {{ drop }} }}", i % 255),
            1 => format!("if ip.ttl > {} {{ @c[ip.dst] = count(); }} else {{ @e[vlan.id] = count(); }}", i % 255),
            _ => format!("let x = tcp.dport + udp.dport; if x > {i} {{ @s[ip.src] = sum(pkt.len); }}"),
        };
        text.push_str(&format!("xdp /{pred}/ {{ {body} }}\n"));
    }
    text
}

/// 150 such rules that all fall through: the verifier's work stays about
/// linear in the program's size. (It grew with every rule while the rules
/// compared `pkt.len` in a register that stayed live: each comparison split
/// its range, and no two paths looked alike.)
#[test]
fn heavy_rules_that_fall_through_verify_in_linear_work() {
    if !kernel("heavy_rules_that_fall_through_verify_in_linear_work") {
        return;
    }
    let mut p = common::load_text(&heavy_rules(150, 7, false));
    let stats = p.program_stats("xdp").expect("stats");
    let insns = stats.xlated_bytes / 8;
    assert!(stats.verified_insns < 10 * insns, "{} instructions processed for {insns}", stats.verified_insns);
}

/// The size limit is per program: the two TC programs share the
/// `classifier` section, and two programs of some 22,000 instructions each
/// (over the limit together, each within it) build, and the kernel
/// verifies both.
#[test]
fn tc_programs_are_measured_one_by_one() {
    let mut rng = Rng(0x7c5e);
    let mut text = String::new();
    for hook in ["tc:ingress", "tc:egress"] {
        for i in 0..220 {
            // Sixteen scattered ports: sixteen compares each (no range),
            // compared with `true`: rules the decision trees do not take,
            // which stay one after another.
            let ports: Vec<String> = (0..16).map(|_| (1 + rng.below(65534)).to_string()).collect();
            text.push_str(&format!("{hook} /(tcp.dport in {{{}}}) == true && ip.ttl == {}/ {{ drop }}\n", ports.join(", "), i % 250 + 1));
        }
        text.push_str(&format!("{hook} {{ pass }}\n"));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tc.xpol");
    std::fs::write(&path, text).expect("write policy");
    let b = xpol_compiler::build(&path, &xpol_compiler::BuildOptions::default());
    let errors: Vec<_> = b.diagnostics.iter().filter(|d| d.is_error()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let out = b.output.as_ref().expect("an object");
    let limit = xpol_compiler::codegen::MAX_PROGRAM_INSNS;
    let sizes: Vec<usize> = ["xpol_tc_ingress", "xpol_tc_egress"]
        .iter()
        .map(|p| xpol_compiler::verifier::program_range(&out.object, p).expect("the program's symbol").2)
        .collect();
    assert!(sizes.iter().all(|&n| n <= limit) && sizes.iter().sum::<usize>() > limit, "each within the limit, both over it: {sizes:?}");
    if !kernel("tc_programs_are_measured_one_by_one") {
        return;
    }
    LoadedPolicy::load(&out.object).expect("the kernel verifies both programs");
}
