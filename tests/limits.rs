//! What `xpolc check` accepts, the kernel accepts (issue 14): policies
//! generated to aim at each kernel limit (rules per hook, rules that fall
//! through, maps per program, pending branches, program size, both TC
//! programs in one section, heavy conditions) are built; a policy that
//! builds must load (every program verified), and one that does not must
//! be refused with a located error. Bounded in time: `XPOL_LIMITS_SECS`
//! (default 45) of generated policies after the fixed boundary cases.
//! A failing policy is written to `target/limits-failure-N.xpol`.

mod common;
mod policygen;

use common::Rng;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use xpol_compiler::{build, BuildOptions};
use xpol_runtime::loader::{LoadedPolicy, RuntimeError};

impl policygen::Choice for Rng {
    fn below(&mut self, n: u64) -> u64 {
        Rng::below(self, n)
    }
}

/// How a policy fared: refused at compile time (with every error
/// located), built and loaded, or built and refused by the kernel for the
/// one limit only the kernel can check (docs/language.md, Limits: a
/// program too long once the kernel has removed unreachable code and
/// inlined its map lookups), explained at its place.
#[derive(Debug, PartialEq)]
enum Fate {
    Refused(Vec<String>),
    Loaded,
    KernelOnly,
}

/// Builds and loads `text`; panics (saving the policy) when the kernel
/// rejects what the compiler accepted, or when an error has no place.
fn fate(what: &str, text: &str, dir: &Path) -> Fate {
    let path = dir.join("policy.xpol");
    std::fs::write(&path, text).expect("write policy");
    let b = build(&path, &BuildOptions::default());
    let errors: Vec<_> = b.diagnostics.iter().filter(|d| d.is_error()).collect();
    if !errors.is_empty() {
        for e in &errors {
            if e.primary_span().is_none() {
                fail(what, text, &format!("an error without a place: {e:?}"));
            }
        }
        return Fate::Refused(errors.iter().map(|e| e.code.clone()).collect());
    }
    let out = b.output.as_ref().expect("built");
    match LoadedPolicy::load(&out.object) {
        Ok(_) => Fate::Loaded,
        Err(RuntimeError::Verifier { program, log, .. }) if log.contains("cannot be patched due to 16-bit range") => {
            let section = out.meta.programs.iter().find(|p| p.name == program).map(|p| p.section.clone()).unwrap_or_default();
            let d = xpol_compiler::verifier::explain(&program, &section, &log, &out.object, &out.located, &b.sources, false);
            if d.code != "xpol::verifier::too_long_once_rewritten" {
                fail(what, text, &format!("the kernel's rewriting limit, not explained: {d:?}"));
            }
            Fate::KernelOnly
        }
        Err(RuntimeError::Verifier { program, log, .. }) => {
            let last: Vec<&str> = log.lines().rev().take(6).collect();
            fail(what, text, &format!("accepted by the compiler, rejected by the kernel ({program}): {last:?}"))
        }
        Err(e) => fail(what, text, &format!("accepted by the compiler, not loaded: {e}")),
    }
}

fn fail(what: &str, text: &str, why: &str) -> ! {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let n = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
    let saved = dir.join(format!("limits-failure-{n}.xpol"));
    let _ = std::fs::write(&saved, text);
    panic!("{what}: {why}\n(the policy is in {})", saved.display());
}

/// Fields and constants strictly inside their values (docs/language.md,
/// Fields), so that every comparison can hold: the checker refuses one
/// that cannot, and these policies are about the kernel's limits.
const FIELDS: &[(&str, u64, u64)] = &[("pkt.len", 61, 1600), ("ip.ttl", 1, 254), ("tcp.dport", 1, 65534), ("tcp.sport", 1, 65534), ("udp.dport", 1, 65534), ("ip.len", 21, 1500), ("tcp.window", 1, 65534), ("ip.proto", 1, 254)];
const OPS: &[&str] = &["==", "!=", "<", "<=", ">", ">="];

fn comparison(rng: &mut Rng) -> String {
    let (field, lo, hi) = FIELDS[rng.below(FIELDS.len() as u64) as usize];
    format!("{field} {} {}", rng.pick(OPS), lo + rng.below(hi - lo + 1))
}

/// `n` rules of one comparison on `hook`, each with a verdict or, with
/// probability `fall_through` percent, none; then a final rule or not.
fn comparisons(rng: &mut Rng, hook: &str, n: usize, fall_through: u64) -> String {
    let mut text = String::new();
    for _ in 0..n {
        let body = if rng.below(100) < fall_through { "" } else { rng.pick(&["drop", "pass"]) };
        text.push_str(&format!("{hook} /{}/ {{ {body} }}\n", comparison(rng)));
    }
    if rng.below(2) == 0 {
        text.push_str(&format!("{hook} {{ pass }}\n"));
    }
    text
}

/// One rule whose condition joins `n` comparisons with `&&`, `||` and `!`.
fn heavy_rule(rng: &mut Rng, n: usize) -> String {
    let mut e = comparison(rng);
    for _ in 1..n {
        let c = comparison(rng);
        e = match rng.below(3) {
            0 => format!("({e}) && {c}"),
            1 => format!("({e}) || {c}"),
            _ => format!("!({e}) || {c}"),
        };
    }
    format!("xdp /{e}/ {{ drop }}\n")
}

fn keyless_maps(n: usize) -> String {
    let body: Vec<String> = (0..n).map(|i| format!("@m{i} = count()")).collect();
    format!("xdp /tcp.dport == 80/ {{ {}; drop }}\nxdp {{ pass }}\n", body.join("; "))
}

fn ipv6_sets(n: usize) -> String {
    let mut text: String = (0..n).map(|i| format!("set s{i}: cidr = {{ 2001:db8:{i:x}::/48 }}\n")).collect();
    text.extend((0..n).map(|i| format!("xdp /ip.src in s{i}/ {{ drop }}\n")));
    text + "xdp { pass }\n"
}

fn literal_sets(rng: &mut Rng, n: usize) -> String {
    let mut text = String::new();
    for _ in 0..n {
        let ports: Vec<String> = (0..17).map(|_| (1 + rng.below(65534)).to_string()).collect();
        text.push_str(&format!("xdp /tcp.dport in {{{}}}/ {{ drop }}\n", ports.join(", ")));
    }
    text + "xdp { pass }\n"
}

fn equalities(n: usize, hook: &str) -> String {
    let mut text: String = (0..n).map(|i| format!("{hook} /tcp.dport == {i}/ {{ drop }}\n")).collect();
    text.push_str(&format!("{hook} {{ pass }}\n"));
    text
}

/// The boundaries, each on both sides: what loads must build, what does
/// not must be refused.
#[test]
fn boundary_cases_build_only_what_loads() {
    if !common::kernel("boundary_cases_build_only_what_loads") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng(0x1_1a17);
    // Maps: 61 keyless @maps and xpol's own make 64.
    assert_eq!(fate("61 keyless maps", &keyless_maps(61), dir.path()), Fate::Loaded);
    assert_eq!(fate("62 keyless maps", &keyless_maps(62), dir.path()), Fate::Refused(vec!["xpol::budget::maps".into()]));
    assert_eq!(fate("63 IPv6 sets", &ipv6_sets(63), dir.path()), Fate::Refused(vec!["xpol::budget::maps".into()]));
    assert_eq!(fate("100 literal sets", &literal_sets(&mut rng, 100), dir.path()), Fate::Refused(vec!["xpol::budget::maps".into()]));
    // Pending branches: 4,091 equalities load; 4,094 are refused (the
    // kernel stops at "the sequence of 8193 jumps").
    assert_eq!(fate("4091 equalities", &equalities(4091, "xdp"), dir.path()), Fate::Loaded);
    assert_eq!(fate("4094 equalities", &equalities(4094, "xdp"), dir.path()), Fate::Refused(vec!["xpol::budget::jump_sequence".into()]));
    assert_eq!(fate("4094 equalities on tc:ingress", &equalities(4094, "tc:ingress"), dir.path()), Fate::Refused(vec!["xpol::budget::jump_sequence".into()]));
    // Rules that fall through: linear verifier work whatever their number.
    for n in [30, 40, 60] {
        assert_eq!(fate(&format!("{n} rules without verdicts"), &comparisons(&mut rng, "xdp", n, 100), dir.path()), Fate::Loaded);
    }
}

/// Random policies aimed at the limits, for a bounded time.
#[test]
fn generated_policies_build_only_what_loads() {
    if !common::kernel("generated_policies_build_only_what_loads") {
        return;
    }
    let secs = std::env::var("XPOL_LIMITS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(45);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let dir = tempfile::tempdir().expect("tempdir");
    let seed = std::env::var("XPOL_LIMITS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_u64);
    let mut rng = Rng(seed | 1);
    let (mut loaded, mut refused, mut kernel_only, mut tried) = (0, 0, 0, 0);
    while Instant::now() < deadline {
        let kind = rng.below(7);
        let (what, text) = match kind {
            0 => {
                let n = 10 + rng.below(120) as usize;
                let fall_through = rng.below(101);
                (format!("{n} comparisons, {fall_through}% falling through"), comparisons(&mut rng, "xdp", n, fall_through))
            }
            1 => {
                let n = 200 + rng.below(4000) as usize;
                (format!("{n} comparisons with verdicts"), comparisons(&mut rng, "xdp", n, 0))
            }
            2 => {
                let n = 55 + rng.below(12) as usize;
                (format!("{n} keyless maps"), keyless_maps(n))
            }
            3 => {
                let n = 50 + rng.below(20) as usize;
                (format!("{n} IPv6 sets"), ipv6_sets(n))
            }
            4 => {
                let (a, b) = (rng.below(3000) as usize, rng.below(3000) as usize);
                (format!("two TC programs of {a} and {b} rules"), comparisons(&mut rng, "tc:ingress", a, 10) + &comparisons(&mut rng, "tc:egress", b, 10))
            }
            5 => {
                let rules = 1 + rng.below(40) as usize;
                let text: String = (0..rules)
                    .map(|_| {
                        let terms = 2 + rng.below(10) as usize;
                        heavy_rule(&mut rng, terms)
                    })
                    .collect();
                (format!("{rules} heavy rules"), text + "xdp { pass }\n")
            }
            _ => {
                let n = 40 + rng.below(40) as usize;
                (format!("{n} literal sets"), literal_sets(&mut rng, n))
            }
        };
        tried += 1;
        match fate(&format!("seed {seed}, policy {tried}: {what}"), &text, dir.path()) {
            Fate::Loaded => loaded += 1,
            Fate::Refused(_) => refused += 1,
            Fate::KernelOnly => kernel_only += 1,
        }
    }
    eprintln!("limits: {tried} policies in {secs} s: {loaded} loaded, {refused} refused with a located error, {kernel_only} refused by the kernel's rewriting limit");
    assert!(tried > 0);
}

/// Codegen refuses a long program early, before LLVM runs, when the
/// instructions it is certain to take already pass the limit
/// (`budget::SizeFloor`). That floor must never be above what the
/// program takes compiled: checked on every program of policies of many
/// shapes and sizes, up to and past the limit (no kernel needed).
#[test]
fn the_early_size_floor_is_never_above_the_compiled_size() {
    use xpol_compiler::codegen::{generate, program_name};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.xpol");
    let mut rng = Rng(0xf100_4);
    let (mut compared, mut refused) = (0, 0);
    for i in 0..16 {
        let text = match i % 4 {
            0 => {
                let n = 1000 + rng.below(5000) as usize;
                let fall_through = rng.below(20);
                comparisons(&mut rng, "xdp", n, fall_through)
            }
            1 => {
                let n = 65 + rng.below(1500) as usize;
                policygen::reachable_rules(&mut rng, "xdp", n).text()
            }
            2 => {
                let (a, b) = (65 + rng.below(2000) as usize, 65 + rng.below(2000) as usize);
                comparisons(&mut rng, "tc:ingress", a, 10) + &comparisons(&mut rng, "tc:egress", b, 10)
            }
            _ => {
                let rules = 65 + rng.below(200) as usize;
                let text: String = (0..rules)
                    .map(|_| {
                        let terms = 1 + rng.below(6) as usize;
                        heavy_rule(&mut rng, terms)
                    })
                    .collect();
                text + &literal_sets(&mut rng, 30)
            }
        };
        std::fs::write(&path, &text).expect("write policy");
        let mut sources = xpol_lang::SourceMap::new();
        let loaded = xpol_compiler::load::load(&path, &mut sources).unwrap_or_else(|d| fail("load", &text, &format!("{d:?}")));
        let ir = xpol_compiler::check::check(&loaded, &sources).unwrap_or_else(|d| fail("check", &text, &format!("{d:?}")));
        match generate(&ir, &sources, &BuildOptions::default()) {
            Ok(gen) => {
                for (hook, floor) in gen.size_floors.iter().filter(|(_, floor)| *floor > 0) {
                    let (_, _, insns) = xpol_compiler::verifier::program_range(&gen.object, program_name(*hook)).expect("the program is in the object");
                    if *floor > insns {
                        fail(&format!("policy {i}"), &text, &format!("the `{}` program takes {insns} instructions, under its floor of {floor}", hook.as_str()));
                    }
                    eprintln!("policy {i}: `{}` floor {floor}, compiled {insns}", hook.as_str());
                    compared += 1;
                }
            }
            Err(errors) => {
                eprintln!("policy {i}: refused: {:?}", errors.iter().map(|e| e.message.as_str()).collect::<Vec<_>>());
                if errors.iter().any(|e| e.primary_span().is_none() || !e.code.starts_with("xpol::budget::")) {
                    fail(&format!("policy {i}"), &text, &format!("refused without a budget error at a place: {errors:?}"));
                }
                refused += 1;
            }
        }
    }
    eprintln!("size floor: {compared} programs compared with their compiled size, {refused} policies refused by a budget");
    assert!(compared >= 10, "{compared}");
}

/// A policy far over the size limit is refused before LLVM runs, with the
/// error of the compiled check, at the rule where the instructions it is
/// certain to take pass the limit (one rule per line here).
#[test]
fn a_policy_far_over_the_size_limit_is_refused_before_compiling() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.xpol");
    let text: String = (0..20_000).map(|i| format!("xdp /tcp.dport == {}/ {{ drop }}\n", 1 + i % 65_000)).collect();
    std::fs::write(&path, &text).expect("write policy");
    let b = build(&path, &BuildOptions::default());
    let errors: Vec<_> = b.diagnostics.iter().filter(|d| d.is_error()).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = errors[0];
    assert_eq!(e.code, "xpol::budget::program_size");
    assert!(e.message.contains("refused before compiling the rest"), "{}", e.message);
    let span = e.primary_span().expect("a place");
    let (_, line, column) = b.sources.location(span);
    assert_eq!(column, 1, "at a rule");
    let rules: usize = e.message.split("its first ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).expect("the rules counted");
    assert_eq!(line as usize, rules, "the rule where the count passes the limit: {}", e.message);
    assert!(rules < 20_000 && rules > 3_000, "{rules}");
}
