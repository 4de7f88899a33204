//! Policy analysis (`xpolc diff`, `xpolc query`, the exact `shadowed`
//! lint) against the reference semantics and the kernel:
//!
//! - random policy pairs (tests/policygen: a policy and one edit of it, a
//!   rule moved, or another policy): every example packet of a reported
//!   difference gets the reported verdicts and rules from the reference;
//!   random packets the reference decides differently lie in a reported
//!   region, and those inside a region get what it says;
//! - the examples of a few fixed pairs, built and run through both
//!   compiled programs with `BPF_PROG_TEST_RUN`;
//! - golden text of diff and query output.

mod common;
mod policygen;

use common::Rng;
use std::path::Path;
use xpol_compiler::analysis::{self, example, rules::Action, rules::Decision, Budget, DiffOptions};
use xpol_compiler::ir;
use xpol_compiler::reference::{evaluate, Evaluation, Outcome, State};
use xpol_lang::ast::Hook;
use xpol_runtime::packet::{PacketSpec, L4};

impl policygen::Choice for Rng {
    fn below(&mut self, n: u64) -> u64 {
        Rng::below(self, n)
    }
}

fn check(path: &Path, text: &str) -> Option<(ir::Policy, xpol_lang::SourceMap)> {
    let c = xpol_compiler::check_text(path, text.to_string());
    Some((c.ir?, c.sources))
}

/// Whether the reference's evaluation is what the analysis says.
fn agrees(d: &Decision, ev: &Evaluation) -> bool {
    let outcome = match &d.action {
        Action::Pass => ev.outcome == Outcome::Pass,
        Action::Drop => ev.outcome == Outcome::Drop,
        Action::Tx => ev.outcome == Outcome::Tx,
        Action::Abort => ev.outcome == Outcome::Abort,
        // The reference resolves no interface: a redirect aborts (XDP) or
        // drops (TC).
        Action::Redirect(_) => matches!(ev.outcome, Outcome::Abort | Outcome::Drop),
        Action::Lb(_) => matches!(ev.outcome, Outcome::Lb | Outcome::Drop),
        // The reference answers a SYN (tx) and drops the rest (the cookie
        // is the kernel's secret).
        Action::Synproxy(_) => matches!(ev.outcome, Outcome::Tx | Outcome::Drop),
        // The state decides: anything the rules allow.
        Action::Depends(_) => return true,
    };
    outcome && d.rule.as_ref().map(|r| r.id) == ev.decided_by
}

fn depends(p: &analysis::Path) -> bool {
    p.iter().any(|d| matches!(d.action, Action::Depends(_)))
}

/// The last decision of a path, when nothing before it depends on state.
fn agrees_path(p: &analysis::Path, ev: &Evaluation) -> bool {
    depends(p) || agrees(p.last().expect("a decision"), ev)
}

fn v4(rng: &mut Rng) -> std::net::Ipv4Addr {
    rng.pick(policygen::V4).parse().expect("v4")
}

fn v6(rng: &mut Rng) -> std::net::Ipv6Addr {
    rng.pick(policygen::V6).parse().expect("v6")
}

/// Random frames from the generator's pools: each family and L4, tags,
/// fragments, cut and mutated.
fn packets(rng: &mut Rng, n: usize) -> Vec<Vec<u8>> {
    let port = |rng: &mut Rng| policygen::PORTS[rng.below(policygen::PORTS.len() as u64) as usize] as u16;
    let mut out = Vec::new();
    for _ in 0..n {
        let mut spec = match rng.below(9) {
            0 | 1 => PacketSpec::tcp4(v4(rng), v4(rng), port(rng), port(rng)),
            2 => PacketSpec::tcp6(v6(rng), v6(rng), port(rng), port(rng)),
            3 => PacketSpec::udp4(v4(rng), v4(rng), port(rng), port(rng)),
            4 => PacketSpec::udp6(v6(rng), v6(rng), port(rng), port(rng)),
            5 => PacketSpec::icmp4(v4(rng), v4(rng), [0, 3, 8, 11][rng.below(4) as usize], rng.below(5) as u8),
            6 => PacketSpec::icmp6(v6(rng), v6(rng), [1, 128, 129, 135][rng.below(4) as usize], 0),
            7 => PacketSpec::ethertype([0x0806, 0x88cc][rng.below(2) as usize], rng.below(60) as usize),
            _ => PacketSpec { l4: L4::Raw { protocol: [47, 58, 59][rng.below(3) as usize], bytes: vec![0; 8] }, ..PacketSpec::tcp4(v4(rng), v4(rng), 1, 2) },
        };
        spec.eth_src = policygen::MACS[rng.below(4) as usize];
        if let L4::Tcp(t) = &mut spec.l4 {
            t.flags = [0, 2, 0x10, 0x12, 0x29, 1][rng.below(6) as usize];
        }
        if rng.below(6) == 0 {
            spec = spec.vlan(policygen::VLANS[rng.below(policygen::VLANS.len() as u64) as usize] as u16);
        }
        if rng.below(8) == 0 {
            spec = spec.frag([0, 8, 1480][rng.below(3) as usize], rng.below(2) == 0);
        }
        let mut p = spec.payload([0, 0, 6, 64][rng.below(4) as usize]).build();
        match rng.below(10) {
            0 => p.truncate(14 + rng.below((p.len() - 13) as u64) as usize),
            1 => {
                let at = 12 + rng.below((p.len().min(80) - 12) as u64) as usize;
                p[at] = rng.next() as u8;
            }
            _ => {}
        }
        out.push(p);
    }
    out
}

/// One pair: the diff's regions checked on their examples and on sampled
/// packets. Returns (regions, sampled packets found in a region).
fn check_pair(dir: &Path, a: &str, b: &str, rules: bool, sample: &[Vec<u8>]) -> (usize, usize) {
    let (Some((pa, sa)), Some((pb, sb))) = (check(&dir.join("a.xpol"), a), check(&dir.join("b.xpol"), b)) else { return (0, 0) };
    let d = match analysis::diff(&pa, &sa, &pb, &sb, DiffOptions { rules, ..Default::default() }, Budget { max_cubes: 50_000, max_steps: 200_000_000 }) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipped (budget): {e}");
            return (0, 0);
        }
    };
    let ctx = || format!("--- old\n{a}--- new\n{b}");
    for r in &d.regions {
        let hook = r.region.hook;
        let eo = evaluate(&pa, hook, &r.region.example.bytes, &mut State::default());
        let en = evaluate(&pb, hook, &r.region.example.bytes, &mut State::default());
        assert!(
            agrees_path(&r.old, &eo) && agrees_path(&r.new, &en),
            "{}\nregion {:?}: {:?} -> {:?}\nexample {}\nreference: {:?} / {:?}",
            ctx(),
            r.region.fields,
            r.old,
            r.new,
            r.region.example.summary,
            (eo.outcome, eo.decided_by),
            (en.outcome, en.decided_by)
        );
    }
    let mut inside = 0;
    let hooks: Vec<Hook> = pa.programs.iter().chain(&pb.programs).map(|p| p.hook).collect();
    for p in sample {
        let point = example::locate(p);
        for &hook in &hooks {
            let eo = evaluate(&pa, hook, p, &mut State::default());
            let en = evaluate(&pb, hook, p, &mut State::default());
            let region = d.regions.iter().find(|r| r.region.hook == hook && r.region.cube.intersects(&point));
            match region {
                Some(r) => {
                    inside += 1;
                    if !depends(&r.old) && !depends(&r.new) {
                        assert!(agrees_path(&r.old, &eo) && agrees_path(&r.new, &en), "{}\npacket {:02x?} in region {:?} ({:?} -> {:?}) but the reference says {:?} / {:?}", ctx(), p, r.region.fields, r.old, r.new, eo, en);
                    }
                }
                None => {
                    let identity = |p: &ir::Policy, r: Option<u32>| r.map(|r| p.rules[r as usize].label.clone().unwrap_or_else(|| p.rules[r as usize].text.clone()));
                    let differ = eo.outcome != en.outcome || (rules && identity(&pa, eo.decided_by) != identity(&pb, en.decided_by));
                    assert!(!differ, "{}\n{hook:?}: packet {:02x?} decided differently ({:?} by {:?} -> {:?} by {:?}) outside every reported region", ctx(), p, eo.outcome, eo.decided_by, en.outcome, en.decided_by);
                }
            }
        }
    }
    (d.regions.len(), inside)
}

/// Random pairs: a policy and one edit (a rule removed, a predicate or
/// conjunct dropped, a verdict changed), a rule moved, or another policy.
#[test]
fn diff_regions_are_exact_against_the_reference() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seeds: u64 = std::env::var("XPOL_ANALYSIS_PAIRS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let (mut regions, mut inside, mut pairs) = (0, 0, 0);
    for seed in 1..=seeds {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let a = policygen::policy(&mut rng);
        let b = match rng.below(3) {
            0 => {
                let c = policygen::shrink_candidates(&a);
                if c.is_empty() {
                    continue;
                }
                c[rng.below(c.len() as u64) as usize].clone()
            }
            1 if a.rules.len() > 1 => {
                let mut b = a.clone();
                let i = rng.below(b.rules.len() as u64) as usize;
                let r = b.rules.remove(i);
                let j = rng.below(b.rules.len() as u64 + 1) as usize;
                b.rules.insert(j, r);
                b
            }
            _ => policygen::policy(&mut rng),
        };
        let sample = packets(&mut rng, 150);
        if std::env::var_os("XPOL_ANALYSIS_SHOW").is_some() {
            eprintln!("seed {seed}");
        }
        let (r, i) = check_pair(dir.path(), &a.text(), &b.text(), seed % 2 == 0, &sample);
        regions += r;
        inside += i;
        pairs += 1;
    }
    eprintln!("analysis: {pairs} pairs, {regions} regions, {inside} sampled packets inside a region");
    assert!(regions > 50 && inside > 50, "{regions} {inside}");
}

/// `ct.state` is an unknown exactly where a packet has a connection: the
/// reference, with an empty table (a lone SYN-ACK or echo reply is
/// invalid, an ICMP error about nothing too), decides packets differently
/// only inside the reported regions, and neighbour discovery, other
/// protocols, later fragments and cut headers (no state) lie outside them.
#[test]
fn connection_state_is_unknown_where_a_connection_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng(0x5eed_c0de);
    let sample = packets(&mut rng, 3000);
    let pairs = [
        ("xdp /ct.state == invalid/ { drop }\n", "xdp /ip.proto == 1/ { drop }\n"),
        ("xdp /ct.state != new/ { drop }\nxdp /ip.proto == 17/ { pass }\n", "xdp /ip.proto == 17/ { pass }\n"),
        ("xdp /!(ct.state in {established, related})/ { drop }\n", "xdp { pass }\n"),
        ("tc:ingress /ct.state in {new, established, related, invalid}/ { drop }\n", "tc:ingress /tcp.dport == 22/ { drop }\n"),
    ];
    let mut inside = 0;
    for (a, b) in pairs {
        let (regions, i) = check_pair(dir.path(), a, b, false, &sample);
        assert!(regions > 0, "{a}{b}");
        inside += i;
    }
    assert!(inside > 100, "{inside}");
}

/// Fixed pairs (old, new) for the kernel and the golden output.
const PAIRS: &[(&str, &str, &str)] = &[
    (
        "issue",
        "xdp /tcp.dport in 1..1000/ { drop }\nxdp /tcp.dport == 22/ { pass }\n",
        "xdp /tcp.dport == 22 && ip.src in 198.51.100.0/25/ { pass }\nxdp /tcp.dport in 1..1000/ { drop }\n",
    ),
    (
        "families",
        "xdp /ip.src in 198.51.100.0/24/ { drop }\n",
        "xdp /ip.frag && !ip.frag_first/ { drop }\nxdp /ip4.src in 198.51.100.0/24 || ip6.src in 2001:db8::/32/ { drop }\n",
    ),
    ("same", "xdp /!(tcp.dport == 22)/ { drop }\n", "xdp /tcp.dport != 22/ { drop }\n"),
    ("vlan", "xdp /vlan.id == 100/ { drop }\n", "xdp /vlan.depth >= 1 && vlan.id != 100/ { pass }\nxdp { drop }\n"),
    (
        "limit",
        "xdp /tcp.dport == 22 && limit(10/s)/ { pass }\nxdp /tcp.dport == 22/ { drop }\n",
        "xdp /tcp.dport == 22/ { drop }\n",
    ),
    (
        // Connection state is an unknown like a limit's: SSH without an
        // established connection was passed, and now is dropped.
        "conntrack",
        "xdp /ct.state in {established, related}/ { pass }\nxdp /tcp.dport == 22/ { pass }\nxdp /ip.proto == 6/ { drop }\n",
        "xdp /ct.state in {established, related}/ { pass }\nxdp /ip.proto == 6/ { drop }\n",
    ),
    (
        // A dynamic set is state like a map; `add` decides nothing.
        "dynset",
        "set scanners: ip dynamic max 1024 timeout 10m\nxdp /ip.src in scanners/ { drop }\nxdp /tcp.dport == 23/ { add(scanners, ip.src) drop }\n",
        "set scanners: ip dynamic max 1024 timeout 10m\nxdp /ip.src in scanners/ { drop }\nxdp /tcp.dport == 23/ { drop }\nxdp /tcp.dport == 25/ { drop }\n",
    ),
    (
        // `log` writes a record and decides nothing: no difference.
        "log",
        "xdp /tcp.dport == 23/ { log(\"telnet: \") drop }\nxdp /ct.state in {new, established, related, invalid}/ { log(\"any: \", rate: 1/s) pass }\n",
        "xdp /tcp.dport == 23/ { drop }\nxdp /ct.state in {new, established, related, invalid}/ { pass }\n",
    ),
    (
        // A SYN proxy decides like a verdict; other options, another one.
        "synproxy",
        "xdp /tcp.dport == 80/ { synproxy }\nxdp /tcp.dport == 443/ { drop }\nxdp { pass }\n",
        "xdp /tcp.dport == 80/ { synproxy(mss: 1400) }\nxdp /tcp.dport == 443/ { synproxy }\nxdp { pass }\n",
    ),
];

/// Pairs that decide every packet alike.
const NO_DIFFERENCE: &[&str] = &["same", "log"];

fn write_pair(dir: &Path, old: &str, new: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (a, b) = (dir.join("old.xpol"), dir.join("new.xpol"));
    std::fs::write(&a, old).expect("write");
    std::fs::write(&b, new).expect("write");
    (a, b)
}

fn xpolc(args: &[&std::ffi::OsStr]) -> (String, Option<i32>) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xpolc")).args(args).output().expect("xpolc runs");
    (String::from_utf8_lossy(&out.stdout).into_owned(), out.status.code())
}

/// `xpolc diff` and `xpolc query` as people read them, and their exit
/// status (0 the same, 1 different).
#[test]
fn diff_and_query_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, old, new) in PAIRS {
        let (a, b) = write_pair(dir.path(), old, new);
        let (text, code) = xpolc(&["diff".as_ref(), a.as_os_str(), b.as_os_str()]);
        assert_eq!(code, Some(if NO_DIFFERENCE.contains(name) { 0 } else { 1 }), "{name}: {text}");
        insta::assert_snapshot!(format!("diff__{name}"), text);
        let (json, _) = xpolc(&["diff".as_ref(), "--json".as_ref(), a.as_os_str(), b.as_os_str()]);
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert!(v["differences"].is_array(), "{json}");
    }
    // Symbolic sets: the telnet rule's removal shows whatever the set
    // holds, the rest only for sources in it.
    let (old, new) = SYMBOLIC_PAIRS[0];
    let (a, b) = write_pair(dir.path(), &old.replace("CONTENTS", "203.0.113.0/24"), &new.replace("CONTENTS", "203.0.113.0/24, 198.51.100.0/24"));
    let (text, code) = xpolc(&["diff".as_ref(), "--sets".as_ref(), "symbolic".as_ref(), a.as_os_str(), b.as_os_str()]);
    assert_eq!(code, Some(1), "{text}");
    insta::assert_snapshot!("diff__sets_symbolic", text);
    let (json, _) = xpolc(&["diff".as_ref(), "--json".as_ref(), "--sets".as_ref(), "symbolic".as_ref(), a.as_os_str(), b.as_os_str()]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["differences"].as_array().map(|d| d.iter().filter(|r| r["when"] == serde_json::json!(["ip.src in blocked"])).count()), Some(2), "{json}");
    let (a, _) = write_pair(dir.path(), PAIRS[0].1, PAIRS[0].2);
    let (text, code) = xpolc(&["query".as_ref(), a.as_os_str(), "tcp.dport == 22 && ip.src !in 198.51.100.0/24".as_ref()]);
    assert_eq!(code, Some(0));
    insta::assert_snapshot!("query__issue", text);
}

/// Each example of each fixed pair, run through both compiled programs
/// with BPF_PROG_TEST_RUN, gets the reported verdicts.
#[test]
fn examples_get_the_reported_verdicts_in_the_kernel() {
    if !common::kernel("examples_get_the_reported_verdicts_in_the_kernel") {
        return;
    }
    use xpol_runtime::loader::{Action as Kernel, LoadOptions, LoadedPolicy};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ran = 0;
    for (name, old, new) in PAIRS {
        let (a, b) = write_pair(dir.path(), old, new);
        let ba = xpol_compiler::build(&a, &Default::default());
        let bb = xpol_compiler::build(&b, &Default::default());
        let (oa, ob) = (ba.output.expect("old builds"), bb.output.expect("new builds"));
        let d = analysis::diff(&oa.ir, &ba.sources, &ob.ir, &bb.sources, DiffOptions::default(), Budget::default()).expect("diff");
        let opts = LoadOptions { missing_interfaces_ok: true, ..Default::default() };
        let mut la = LoadedPolicy::load_with(&oa.object, &opts).expect("old loads");
        let mut lb = LoadedPolicy::load_with(&ob.object, &opts).expect("new loads");
        for r in &d.regions {
            let bytes = &r.region.example.bytes;
            // XDP test runs need an Ethernet header.
            if bytes.len() < 14 {
                continue;
            }
            // What the kernel may do with the example; a SYN proxy answers
            // a SYN and drops the rest but an ACK with a cookie.
            let expect = |p: &analysis::Path| match p.last().map(|d| &d.action) {
                Some(Action::Pass) => vec![Kernel::Pass],
                Some(Action::Drop) => vec![Kernel::Drop],
                Some(Action::Synproxy(_)) => vec![Kernel::Tx, Kernel::Drop],
                other => panic!("{name}: no kernel expectation for {other:?}"),
            };
            let hook = r.region.hook.as_str();
            let (ka, kb) = (la.test_run(hook, bytes).expect("run old").action, lb.test_run(hook, bytes).expect("run new").action);
            if !depends(&r.old) {
                assert!(expect(&r.old).contains(&ka), "{name}: old {ka:?} on {}", r.region.example.summary);
            }
            if !depends(&r.new) {
                assert!(expect(&r.new).contains(&kb), "{name}: new {kb:?} on {}", r.region.example.summary);
            }
            if expect(&r.old).len() == 1 && expect(&r.new).len() == 1 && !depends(&r.old) && !depends(&r.new) {
                assert_ne!(ka, kb, "{name}: the kernel decides {} alike", r.region.example.summary);
            }
            ran += 1;
        }
    }
    assert!(ran >= 6, "{ran}");
}

/// The policy without its line `line` (the golden case's rules are one
/// line each).
fn without_line(text: &str, line: usize) -> String {
    text.lines().enumerate().filter(|(i, _)| i + 1 != line).map(|(_, l)| format!("{l}\n")).collect()
}

/// `xpol::lint::redundant`'s claim checked: each rule it flags (in
/// tests/golden/ok/redundant.xpol and in seeded random policies from
/// tests/policygen) is removed, and `xpolc diff` finds no difference;
/// where there is a kernel, both policies are built and run with
/// BPF_PROG_TEST_RUN on packets the flagged rule decides (examples of its
/// region, which the reference confirms it decides) and on random
/// packets, and the kernel decides each alike in both.
#[test]
fn removing_a_redundant_rule_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = common::kernel("removing_a_redundant_rule_changes_nothing");
    let mut rng = Rng(0x0bad_5eed);
    // (policy, the policy without the flagged rule, the rule)
    let mut cases: Vec<(String, String, ir::RuleId)> = Vec::new();
    let golden = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ok/redundant.xpol")).expect("golden case");
    let (ir, sources) = check(&dir.path().join("golden.xpol"), &golden).expect("checks");
    let found = analysis::reachability(&ir, Budget::default()).expect("within the budget");
    assert_eq!(found.redundant.len(), 2, "{found:?}");
    for r in &found.redundant {
        cases.push((golden.clone(), without_line(&golden, sources.location(r.span).1 as usize), r.rule));
    }
    // Random policies seldom hold a redundant rule: each gets up to three,
    // a rule that only decides (a verdict) copied just before itself with
    // its predicate narrowed by another rule's (or its negation). The lint
    // flags such a copy when nothing there depends on state, and may flag
    // others.
    let seeds: u64 = std::env::var("XPOL_ANALYSIS_PAIRS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    for seed in 1..=seeds {
        let mut g = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1);
        let mut p = if seed % 2 == 0 {
            policygen::policy(&mut g)
        } else {
            // Firewall-like rules, each reachable, without the catch-all.
            let mut p = policygen::reachable_rules(&mut g, if seed % 4 == 1 { "xdp" } else { "tc:ingress" }, 8);
            p.rules.pop();
            p
        };
        for _ in 0..3 {
            let plain: Vec<usize> = (0..p.rules.len()).filter(|&i| p.rules[i].pred.is_some() && matches!(p.rules[i].body.as_slice(), [policygen::Stmt::Verdict(_)])).collect();
            let preds: Vec<policygen::Expr> = p.rules.iter().filter_map(|r| r.pred.clone()).collect();
            if plain.is_empty() {
                break;
            }
            let j = plain[g.below(plain.len() as u64) as usize];
            let other = preds[g.below(preds.len() as u64) as usize].clone();
            let other = if g.below(2) == 0 { other } else { policygen::Expr::Not(Box::new(other)) };
            let mut narrow = p.rules[j].clone();
            narrow.pred = Some(policygen::Expr::And(Box::new(narrow.pred.take().expect("a predicate")), Box::new(other)));
            p.rules.insert(j, narrow);
        }
        let text = p.text();
        let Some((ir, _)) = check(&dir.path().join("gen.xpol"), &text) else { continue };
        let Ok(found) = analysis::reachability(&ir, Budget { max_cubes: 50_000, max_steps: 200_000_000 }) else { continue };
        assert_eq!(ir.rules.len(), p.rules.len(), "{text}");
        if std::env::var_os("XPOL_ANALYSIS_SHOW").is_some() {
            eprintln!("seed {seed}: {} redundant, {} unreachable\n{text}", found.redundant.len(), found.unreachable.len());
        }
        for r in &found.redundant {
            let mut q = p.clone();
            q.rules.remove(r.rule as usize);
            cases.push((text.clone(), q.text(), r.rule));
        }
    }
    assert!(cases.len() >= 12, "only {} redundant rules found", cases.len());
    let mut kernel_runs = 0;
    for (n, (with, without, rule)) in cases.iter().enumerate() {
        let (a, b) = write_pair(dir.path(), with, without);
        let (pa, sa) = check(&a, with).expect("checks");
        let (pb, sb) = check(&b, without).expect("checks without the rule");
        let d = analysis::diff(&pa, &sa, &pb, &sb, DiffOptions::default(), Budget::default()).expect("diff");
        assert!(d.regions.is_empty(), "--- with\n{with}--- without\n{without}differences: {:?}", d.regions.iter().map(|r| &r.region.fields).collect::<Vec<_>>());
        let (text, code) = xpolc(&["diff".as_ref(), a.as_os_str(), b.as_os_str()]);
        assert_eq!((text.as_str(), code), ("no difference\n", Some(0)), "{with}");
        // The kernel, on the first cases without state (limits, maps):
        // the two programs then see the same packets in the same order.
        if !kernel || n >= 16 || with.contains("limit(") || with.contains('@') {
            continue;
        }
        let flagged = analysis::reachability(&pa, Budget::default()).expect("within the budget").redundant;
        let r = flagged.iter().find(|r| r.rule == *rule).expect("flagged again");
        let universe = analysis::space::universe();
        let mut frames: Vec<Vec<u8>> = Vec::new();
        for cube in r.decides.0.iter().take(40) {
            let Some(ex) = example::realize(cube, &universe) else { continue };
            let ev = evaluate(&pa, r.hook, &ex.bytes, &mut State::default());
            if ev.decided_by == Some(r.rule) {
                frames.push(ex.bytes);
            }
        }
        assert!(!frames.is_empty(), "no example of the flagged rule's packets the reference confirms: {with}");
        frames.extend(packets(&mut rng, 150));
        use xpol_runtime::loader::{LoadOptions, LoadedPolicy};
        let ba = xpol_compiler::build(&a, &Default::default());
        let bb = xpol_compiler::build(&b, &Default::default());
        let (Some(oa), Some(ob)) = (ba.output, bb.output) else { continue };
        let opts = LoadOptions { missing_interfaces_ok: true, ..Default::default() };
        let mut la = LoadedPolicy::load_with(&oa.object, &opts).expect("loads");
        let mut lb = LoadedPolicy::load_with(&ob.object, &opts).expect("loads without the rule");
        let hook = r.hook.as_str();
        for f in frames.iter().filter(|f| f.len() >= 14) {
            let (ka, kb) = match (la.test_run(hook, f), lb.test_run(hook, f)) {
                (Ok(a), Ok(b)) => (a.action, b.action),
                // The kernel test-runs TC only on longer frames (as in
                // tests/differential.rs).
                _ if r.hook != Hook::Xdp && f.len() < 64 => continue,
                (a, b) => panic!("{hook}: {f:02x?}: {a:?} / {b:?}"),
            };
            assert_eq!(ka, kb, "{hook}: {f:02x?}\n--- with\n{with}--- without\n{without}");
            kernel_runs += 1;
        }
    }
    eprintln!("redundant: {} rules removed, {kernel_runs} kernel runs alike", cases.len());
    assert!(!kernel || kernel_runs > 100, "{kernel_runs}");
}

/// The exact lints are quiet past the small budget every check gives
/// them (a warning there is one nobody can act on), and `xpolc check
/// --exact` runs them with the analysis' own: on a policy of 700 rules a
/// check says nothing of the rule the first one shadows, the exact lints
/// with the larger budget find it, and past a budget they say where they
/// stopped only when asked. `--exact` on a small policy repeats nothing.
#[test]
fn exact_lints_are_quiet_past_their_budget_unless_asked() {
    use xpol_compiler::check::lints::{exact_reachability, REACHABILITY_BUDGET};
    let mut text: String = (0..700).map(|i| format!("xdp /tcp.dport == {} && ip.src in 10.{}.0.0/16/ {{ drop }}\n", 1000 + i, i % 200)).collect();
    text.push_str("xdp /tcp.dport == 1000 && ip.src in 10.0.1.0/24/ { pass }\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let c = xpol_compiler::check_text(&dir.path().join("big.xpol"), text);
    let ir = c.ir.as_ref().expect("checks");
    let codes = |ds: &[xpol_lang::Diagnostic]| ds.iter().map(|d| d.code.clone()).collect::<Vec<_>>();
    assert!(!codes(&c.diagnostics).iter().any(|c| c == "xpol::lint::shadowed" || c == "xpol::lint::reachability_skipped"), "{:?}", codes(&c.diagnostics));
    assert!(analysis::reachability(ir, REACHABILITY_BUDGET).is_err(), "the policy must be past the check's budget");
    let exact = exact_reachability(ir, &c.diagnostics, Budget::default(), true);
    assert_eq!(codes(&exact), ["xpol::lint::shadowed"], "{exact:?}");
    assert_eq!(c.sources.location(exact[0].labels[0].span).1, 701);
    assert_eq!(c.sources.location(exact[0].labels[1].span).1, 1);
    assert!(exact_reachability(ir, &[], REACHABILITY_BUDGET, false).is_empty());
    assert_eq!(codes(&exact_reachability(ir, &[], REACHABILITY_BUDGET, true)), ["xpol::lint::reachability_skipped"]);

    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ok/redundant.xpol");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xpolc")).args(["check".as_ref(), "--exact".as_ref(), golden.as_os_str()]).output().expect("xpolc runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("xpol::lint::redundant").count(), 2, "{stderr}");
}

/// Pairs with sets the runtime may change, `CONTENTS` standing for what
/// both declare.
const SYMBOLIC_PAIRS: &[(&str, &str)] = &[
    (
        "set blocked: cidr = { CONTENTS }\nxdp /tcp.dport == 23/ { drop }\nxdp /ip.src in blocked/ { drop }\n",
        "set blocked: cidr = { CONTENTS }\nxdp /ip.src in blocked && tcp.dport == 22/ { drop }\n",
    ),
    (
        "set blocked: cidr = { CONTENTS }\nset admins: cidr = { 192.0.2.0/24 }\nxdp /ip.dst in admins/ { pass }\nxdp /ip.src in blocked/ { drop }\n",
        "set blocked: cidr = { CONTENTS }\nset admins: cidr = { 192.0.2.0/24 }\nxdp /ip.src in blocked/ { drop }\nxdp /ip.dst in admins || tcp.dport == 443/ { pass }\nxdp /ip.proto == 17/ { drop }\n",
    ),
];

/// `xpolc diff --sets symbolic`: one diff whatever the sets hold. For
/// several contents, the same in both versions, the reference decides
/// sampled packets differently only inside a reported region whose
/// condition (`ip.src in blocked`, ...) the packet meets, and those inside
/// such a region get what it says; the report is the same whatever the
/// policies declare.
#[test]
fn symbolic_sets_are_exact_whatever_they_hold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let contents = ["203.0.113.0/24", "198.18.0.0/15, 2001:db8::/32", "10.0.0.0/8, 198.51.100.0/25, 192.0.2.0/24", "0.0.0.0/0, ::/0"];
    let mut rng = Rng(0x5e75);
    let sample = packets(&mut rng, 800);
    let (mut inside, mut differ) = (0, 0);
    for (old, new) in SYMBOLIC_PAIRS {
        let options = DiffOptions { rules: false, symbolic_sets: true };
        let mut reports = Vec::new();
        for c in contents {
            let (a, b) = (old.replace("CONTENTS", c), new.replace("CONTENTS", c));
            let (pa, sa) = check(&dir.path().join("a.xpol"), &a).expect("old checks");
            let (pb, sb) = check(&dir.path().join("b.xpol"), &b).expect("new checks");
            let d = analysis::diff(&pa, &sa, &pb, &sb, options, Budget::default()).expect("diff");
            reports.push(d.regions.iter().map(|r| format!("{:?} {:?} {:?} {:?}", r.when, r.region.fields, r.old, r.new)).collect::<Vec<_>>());
            assert!(d.regions.iter().any(|r| !r.when.is_empty()), "{a}{b}");
            // What a packet's fields are in, by the reference: drop when in
            // the set, pass by the second rule when not, the default when
            // the field is absent.
            let probes = std::cell::RefCell::new(std::collections::HashMap::new());
            let member = |set: &str, field: &str, p: &[u8]| -> Option<bool> {
                let mut probes = probes.borrow_mut();
                let pp = probes.entry((set.to_string(), field.to_string())).or_insert_with(|| {
                    let declared = if set == "admins" { "192.0.2.0/24" } else { c };
                    let probe = format!("set {set}: cidr = {{ {declared} }}\nxdp /{field} in {set}/ {{ drop }}\nxdp /{field} !in {set}/ {{ pass }}\n");
                    check(&dir.path().join("m.xpol"), &probe).expect("membership probe checks").0
                });
                let ev = evaluate(pp, Hook::Xdp, p, &mut State::default());
                ev.decided_by.map(|_| ev.outcome == Outcome::Drop)
            };
            let holds = |when: &[String], p: &[u8]| {
                when.iter().all(|w| {
                    let words: Vec<&str> = w.split(' ').collect();
                    let [field, op, set] = words[..] else { panic!("condition {w}") };
                    member(set, field, p).is_none_or(|m| m == (op == "in"))
                })
            };
            for p in &sample {
                let point = example::locate(p);
                let eo = evaluate(&pa, Hook::Xdp, p, &mut State::default());
                let en = evaluate(&pb, Hook::Xdp, p, &mut State::default());
                let region = d.regions.iter().find(|r| r.region.cube.intersects(&point) && holds(&r.when, p));
                match region {
                    Some(r) => {
                        inside += 1;
                        assert!(agrees_path(&r.old, &eo) && agrees_path(&r.new, &en), "contents {c}\n{a}{b}packet {p:02x?} in {:?} when {:?}: {:?} -> {:?}, but the reference says {:?} / {:?}", r.region.fields, r.when, r.old, r.new, eo, en);
                    }
                    None => assert_eq!(eo.outcome, en.outcome, "contents {c}\n{a}{b}packet {p:02x?} decided differently outside every region"),
                }
                differ += (eo.outcome != en.outcome) as usize;
            }
        }
        assert!(reports.windows(2).all(|w| w[0] == w[1]), "the report changed with the declared contents: {reports:#?}");
    }
    eprintln!("symbolic sets: {inside} sampled packets inside a region, {differ} decided differently");
    assert!(inside > 100 && differ > 50, "{inside} {differ}");
}
