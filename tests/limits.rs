//! What `xpolc check` accepts, the kernel accepts (issue 14): policies
//! generated to aim at each kernel limit (rules per hook, rules that fall
//! through, maps per program, pending branches, program size, both TC
//! programs in one section, heavy conditions, the verifier's processed
//! instructions with connection state, logs, rate limits and load
//! balancing) are built; a policy that builds must load (every program
//! verified), and one that does not must be refused with a located error.
//! For every program loaded, the compiler's estimate of the instructions
//! the verifier processes (`codegen::processed_estimates`) must be at or
//! above the kernel's count. Bounded in time: `XPOL_LIMITS_SECS`
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

/// A program the kernel loaded: its hook, the compiler's estimate of the
/// instructions the verifier processes, and the kernel's count.
#[derive(Debug)]
struct Processed {
    hook: String,
    estimate: usize,
    kernel: u32,
}

/// Builds and loads `text`; panics (saving the policy) when the kernel
/// rejects what the compiler accepted, when an error has no place, or
/// when the kernel processed more instructions than estimated.
fn fate(what: &str, text: &str, dir: &Path) -> Fate {
    fate_counted(what, text, dir).0
}

/// [`fate`], with the instructions the kernel processed for each program
/// it loaded.
fn fate_counted(what: &str, text: &str, dir: &Path) -> (Fate, Vec<Processed>) {
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
        return (Fate::Refused(errors.iter().map(|e| e.code.clone()).collect()), Vec::new());
    }
    let out = b.output.as_ref().expect("built");
    let estimates = xpol_compiler::codegen::processed_estimates(&out.ir);
    match LoadedPolicy::load(&out.object) {
        Ok(mut loaded) => {
            let mut counts = Vec::new();
            for (hook, estimate) in estimates {
                let hook = hook.as_str().to_string();
                let kernel = loaded.program_stats(&hook).unwrap_or_else(|e| fail(what, text, &format!("no statistics for `{hook}`: {e}"))).verified_insns;
                if estimate < kernel as usize {
                    fail(what, text, &format!("the `{hook}` program: the kernel processed {kernel} instructions, more than the {estimate} estimated"));
                }
                counts.push(Processed { hook, estimate, kernel });
            }
            (Fate::Loaded, counts)
        }
        Err(RuntimeError::Verifier { program, log, .. }) if log.contains("cannot be patched due to 16-bit range") => {
            let section = out.meta.programs.iter().find(|p| p.name == program).map(|p| p.section.clone()).unwrap_or_default();
            let d = xpol_compiler::verifier::explain(&program, &section, &log, &out.object, &out.located, &b.sources, false);
            if d.code != "xpol::verifier::too_long_once_rewritten" {
                fail(what, text, &format!("the kernel's rewriting limit, not explained: {d:?}"));
            }
            (Fate::KernelOnly, Vec::new())
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

/// `n` rules of one equality, each a comparison of a comparison (`== true`):
/// rules the decision trees do not take, so they stay one after another
/// and meet the limits of such rules. `trees`: plain equalities, which the
/// trees take.
fn equalities(n: usize, hook: &str) -> String {
    equalities_as(n, hook, false)
}

fn equalities_as(n: usize, hook: &str, trees: bool) -> String {
    let mut text: String = if trees {
        (0..n).map(|i| format!("{hook} /tcp.dport == {i}/ {{ drop }}\n")).collect()
    } else {
        (0..n).map(|i| format!("{hook} /(tcp.dport == {i}) == true/ {{ drop }}\n")).collect()
    };
    text.push_str(&format!("{hook} {{ pass }}\n"));
    text
}

/// Pools for the load-balancing rules: IPv4 and IPv6 backends.
const POOLS: &str = "pool p4 = { 198.18.1.10, 198.18.1.11 weight 2 }\npool p6 = { 2001:db8:1::10, 2001:db8:1::11 }\n";

/// An `lb` statement: NAT or an encapsulation, to either pool.
fn balance(rng: &mut Rng) -> String {
    let pool = rng.pick(&["p4", "p6"]);
    match rng.below(5) {
        0 => format!("lb({pool}, nat)"),
        1 => format!("lb({pool}, nat, port: {})", 1 + rng.below(65534)),
        2 => format!("lb({pool}, encap: ipip, src: {})", if pool == "p4" { "198.18.0.250" } else { "2001:db8::250" }),
        3 => format!("lb({pool}, encap: gue, port: 6080, src: {}, by: ip.src)", if pool == "p4" { "198.18.200.0/24" } else { "2001:db8::250" }),
        _ => format!("lb({pool}, encap: gue, port: 6080, src: {}, by: ports)", if pool == "p4" { "198.18.0.250" } else { "2001:db8::250" }),
    }
}

/// A rule `i` of a stateful kind on `hook`: connection state, a log, a
/// rate limit, a map update (falling through), a load-balanced address
/// (XDP only, and only when `lb`), a dynamic set tested or written, a SYN
/// proxy (XDP only), or one comparison with a verdict.
fn stateful_rule(rng: &mut Rng, hook: &str, i: usize, ct: bool, lb: bool) -> String {
    let cmp = comparison(rng);
    let verdict = rng.pick(&["drop", "pass"]);
    match rng.below(9) {
        0 if ct => match rng.below(3) {
            0 => format!("{hook} /ct.state in {{established, related}}/ {{ pass }}\n"),
            1 => format!("{hook} /ct.state == new && {cmp}/ {{ {verdict} }}\n"),
            _ => format!("{hook} /ct.state == new || {cmp}/ {{ @ct{}[ip.src] = count() }}\n", i % 4),
        },
        1 => match rng.below(3) {
            0 => format!("{hook} /{cmp}/ {{ log(\"l{i}: \"); {verdict} }}\n"),
            1 => format!("{hook} /{cmp}/ {{ log(\"l{i}: \", rate: {}/s, burst: 3) }}\n", 1 + rng.below(100)),
            _ => format!("{hook} /{cmp}/ {{ log }}\n"),
        },
        2 => {
            let by = rng.pick(&["", ", by: ip.src", ", by: ip.dst", ", by: ip.src, tcp.dport"]);
            let rate = if rng.below(4) == 0 { "64 kbytes/s, burst: 16 kbytes" } else { "100/s" };
            format!("{hook} /{cmp} && !limit({rate}{by})/ {{ drop }}\n")
        }
        3 => format!("{hook} /{cmp}/ {{ @m{}[ip.src] = count() }}\n", i % 4),
        4 if lb && hook == "xdp" => format!("xdp /ip.dst == {}/ {{ {} }}\n", vip(i), balance(rng)),
        5 => match rng.below(3) {
            0 => format!("{hook} /ip.src in {DYNSET}/ {{ {verdict} }}\n"),
            1 => format!("{hook} /{cmp}/ {{ add({DYNSET}, ip.src) }}\n"),
            _ => format!("{hook} /{cmp} && ip.src in {DYNSET}/ {{ delete({DYNSET}, ip.src); {verdict} }}\n"),
        },
        6 if hook == "xdp" => format!("xdp /tcp.dport == {}/ {{ synproxy }}\n", 1 + i % 65535),
        _ => format!("{hook} /{cmp}/ {{ {verdict} }}\n"),
    }
}

/// The dynamic set stateful rules write and test, declared by every
/// policy that has them ([`DYNSET_DECLARATION`]).
const DYNSET: &str = "seen";
const DYNSET_DECLARATION: &str = "set seen: ip dynamic max 4096 timeout 10m\n";

/// An address of its own for rule `i` to balance.
fn vip(i: usize) -> String {
    if i % 2 == 0 {
        format!("198.18.{}.{}", 100 + i / 250, 1 + i % 250)
    } else {
        format!("2001:db8:80::{:x}", i + 1)
    }
}

/// `n` stateful rules over `hooks`, each hook ending in a final rule or
/// not; connection state and load balancing each in some policies.
fn stateful(rng: &mut Rng, n: usize, hooks: &[&str]) -> String {
    // `lb` and `ct.state` in one program take it past the stack the
    // kernel allows (`xpol::budget::stack`): mostly one or the other.
    let ct = rng.below(2) == 0;
    let lb = !ct || rng.below(8) == 0;
    let mut text = String::from(if lb { POOLS } else { "" }) + DYNSET_DECLARATION;
    for i in 0..n {
        let hook = hooks[rng.below(hooks.len() as u64) as usize];
        text.push_str(&stateful_rule(rng, hook, i, ct, lb));
    }
    for hook in hooks {
        if rng.below(2) == 0 {
            text.push_str(&format!("{hook} {{ pass }}\n"));
        }
    }
    text
}

/// `n` rules that balance addresses over one pool by NAT (the construct
/// the verifier works hardest on: about 27,000 instructions each), the
/// others' rules mixed in with probability `mixed` percent.
fn nat_rules(rng: &mut Rng, n: usize, mixed: u64) -> String {
    let mut text = String::from(POOLS) + DYNSET_DECLARATION;
    let mut i = 0;
    while i < n {
        if rng.below(100) < mixed {
            text.push_str(&stateful_rule(rng, "xdp", 1000 + i, false, false));
        }
        text.push_str(&format!("xdp /ip.dst == 198.18.0.{}/ {{ lb(p4, nat) }}\n", 1 + i));
        i += 1;
    }
    text + "xdp { pass }\n"
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
    // Sets share their maps, however many there are.
    assert_eq!(fate("63 IPv6 sets", &ipv6_sets(63), dir.path()), Fate::Loaded);
    assert_eq!(fate("100 literal sets", &literal_sets(&mut rng, 100), dir.path()), Fate::Loaded);
    // Pending branches: 4,091 equalities load; 4,094 are refused (the
    // kernel stops at "the sequence of 8193 jumps").
    assert_eq!(fate("4091 equalities", &equalities(4091, "xdp"), dir.path()), Fate::Loaded);
    assert_eq!(fate("4094 equalities", &equalities(4094, "xdp"), dir.path()), Fate::Refused(vec!["xpol::budget::jump_sequence".into()]));
    assert_eq!(fate("4094 equalities on tc:ingress", &equalities(4094, "tc:ingress"), dir.path()), Fate::Refused(vec!["xpol::budget::jump_sequence".into()]));
    // The same equalities as the decision trees take them: no limit near.
    assert_eq!(fate("20000 equalities in a tree", &equalities_as(20_000, "xdp", true), dir.path()), Fate::Loaded);
    // Rules that fall through: linear verifier work whatever their number.
    for n in [30, 40, 60] {
        assert_eq!(fate(&format!("{n} rules without verdicts"), &comparisons(&mut rng, "xdp", n, 100), dir.path()), Fate::Loaded);
    }
    // Processed instructions: 34 `lb(p4, nat)` rules load, and 35 and 36
    // are refused by the estimate (997,510 for 34). The kernel processed
    // about 947,000 for 34 when the estimate was measured; since rules are
    // split by the L4 headers their predicates read (a VIP rule's `lb` runs
    // where the packet is known TCP), about 472,000: the estimate is now
    // twice the kernel's count for NAT rules (recalibrating
    // `PROCESSED_LB_NAT` is left open).
    let (loaded, counts) = fate_counted("34 NAT rules", &nat_rules(&mut rng, 34, 0), dir.path());
    assert_eq!(loaded, Fate::Loaded);
    let xdp = counts.iter().find(|c| c.hook == "xdp").expect("the xdp program");
    eprintln!("34 NAT rules: the kernel processed {} instructions, estimated {}", xdp.kernel, xdp.estimate);
    assert!(xdp.kernel > 400_000 && (xdp.kernel as usize) <= xdp.estimate as usize, "{xdp:?}: the case must stay near half the limit, under its estimate");
    for n in [35, 36] {
        assert_eq!(fate(&format!("{n} NAT rules"), &nat_rules(&mut rng, n, 0), dir.path()), Fate::Refused(vec!["xpol::budget::processed".into()]));
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
    // The loaded program whose kernel count came closest to its estimate.
    let mut closest: Option<(String, Processed)> = None;
    while Instant::now() < deadline {
        let kind = rng.below(10);
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
            6 => {
                let n = 40 + rng.below(40) as usize;
                (format!("{n} literal sets"), literal_sets(&mut rng, n))
            }
            7 => {
                // Few rules (the facts in registers) or many (in a map).
                let n = if rng.below(2) == 0 { 1 + rng.below(20) } else { 20 + rng.below(200) } as usize;
                let hooks: &[&str] = match rng.below(4) {
                    0 => &["xdp"],
                    1 => &["tc:ingress"],
                    2 => &["xdp", "tc:egress"],
                    _ => &["tc:ingress", "tc:egress"],
                };
                (format!("{n} stateful rules on {hooks:?}"), stateful(&mut rng, n, hooks))
            }
            _ => {
                let n = 20 + rng.below(20) as usize;
                let mixed = rng.below(50);
                (format!("{n} NAT rules, {mixed}% others mixed in"), nat_rules(&mut rng, n, mixed))
            }
        };
        tried += 1;
        let what = format!("seed {seed}, policy {tried}: {what}");
        let (f, counts) = fate_counted(&what, &text, dir.path());
        for c in counts {
            if closest.as_ref().is_none_or(|(_, b)| c.kernel as f64 / c.estimate as f64 > b.kernel as f64 / b.estimate as f64) {
                closest = Some((what.clone(), c));
            }
        }
        match f {
            Fate::Loaded => loaded += 1,
            Fate::Refused(_) => refused += 1,
            Fate::KernelOnly => kernel_only += 1,
        }
    }
    eprintln!("limits: {tried} policies in {secs} s: {loaded} loaded, {refused} refused with a located error, {kernel_only} refused by the kernel's rewriting limit");
    if let Some((what, c)) = closest {
        eprintln!("limits: closest to its estimate: {what}: `{}` processed {} instructions, estimated {}", c.hook, c.kernel, c.estimate);
    }
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
    // Compared comparisons: rules the decision trees do not take.
    let text: String = (0..20_000).map(|i| format!("xdp /(tcp.dport == {}) == true/ {{ drop }}\n", 1 + i % 65_000)).collect();
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

/// The processed-instructions estimate refuses nothing common: every
/// example, and every std policy included by a one-rule policy, is
/// estimated far under the limit (the kernel's counts, with the
/// estimates: examples/lb.xpol 87,831 for 99,150; std/host-firewall.xpol
/// 112,797 for 165,000). No kernel needed.
#[test]
fn common_policies_are_estimated_far_under_the_processed_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut paths: Vec<PathBuf> = std::fs::read_dir("examples").expect("read examples").map(|e| e.expect("entry").path()).filter(|p| p.extension().is_some_and(|e| e == "xpol")).collect();
    for entry in std::fs::read_dir("std-policies").expect("read std-policies") {
        let name = entry.expect("entry").file_name().to_string_lossy().into_owned();
        let wrapper = dir.path().join(format!("use-{name}"));
        std::fs::write(&wrapper, format!("include \"std/{name}\"\nxdp {{ pass }}\n")).expect("write wrapper");
        paths.push(wrapper);
    }
    assert!(paths.len() >= 8, "{paths:?}");
    for path in paths {
        let b = build(&path, &BuildOptions::default());
        let out = b.output.unwrap_or_else(|| panic!("{} builds: {:?}", path.display(), b.diagnostics));
        for (hook, estimate) in xpol_compiler::codegen::processed_estimates(&out.ir) {
            eprintln!("{}: `{}` estimated {estimate}", path.display(), hook.as_str());
            assert!(estimate < xpol_compiler::codegen::MAX_PROCESSED_INSNS / 3, "{}: `{}` estimated {estimate}", path.display(), hook.as_str());
        }
    }
}
