//! Named IPv4 sets compile to prefix tables (three tables, in global data
//! or array maps, see lang/src/ipv4_table.rs). These tests load such sets into the kernel and
//! check membership on the edges of every prefix against plain prefix
//! matching and against the reference interpreter.

mod common;

use common::{kernel, Rng};
use std::net::Ipv4Addr;
use xpol_compiler::ir::Outcome;
use xpol_compiler::reference::{self, State};
use xpol_lang::ast::Hook;
use xpol_lang::meta::SetMapKind;
use xpol_runtime::loader::{Action, LoadOptions, LoadedPolicy};
use xpol_runtime::packet::{hex, PacketSpec};

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

fn covered(prefixes: &[(u32, u8)], a: u32) -> bool {
    prefixes.iter().any(|&(p, len)| a & mask(len) == p & mask(len))
}

/// Builds `set s: cidr = file(...)` with `prefixes` and a policy dropping
/// sources in it; checks on both engines and against prefix matching the
/// edges of every prefix in `edges_of` and the addresses `extra`. Returns
/// the set's map kinds.
fn check(prefixes: &[(u32, u8)], edges_of: &[(u32, u8)], extra: &[u32]) -> Vec<SetMapKind> {
    let dir = tempfile::tempdir().expect("tempdir");
    let list: String = prefixes.iter().map(|&(a, len)| format!("{}/{len}\n", Ipv4Addr::from(a & mask(len)))).collect();
    std::fs::write(dir.path().join("s.txt"), list).expect("write list");
    let path = dir.path().join("policy.xpol");
    std::fs::write(&path, "set s: cidr = file(\"s.txt\")\nxdp /ip.src in s/ { drop }\n").expect("write policy");
    let b = xpol_compiler::build(&path, &xpol_compiler::BuildOptions::default());
    let out = b.output.unwrap_or_else(|| panic!("{}", xpol_lang::render::render_human(&b.diagnostics, &b.sources, false)));
    let mut policy = LoadedPolicy::load_with(&out.object, &LoadOptions { missing_interfaces_ok: true, ..Default::default() }).expect("load");

    // The first, last, one-before and one-after address of every prefix.
    let mut addrs: Vec<u32> = extra.to_vec();
    for &(a, len) in edges_of {
        let (lo, hi) = (a & mask(len), a | !mask(len));
        addrs.extend([lo, hi, lo.wrapping_sub(1), hi.wrapping_add(1)]);
    }
    let mut state = State::default();
    for a in addrs {
        let packet = PacketSpec::tcp4(Ipv4Addr::from(a), "198.19.255.1".parse().expect("address"), 40000, 80).syn().build();
        let want = if covered(prefixes, a) { Action::Drop } else { Action::Pass };
        let got = policy.test_run("xdp", &packet).expect("test run").action;
        assert_eq!(got, want, "kernel, source {}: packet {}", Ipv4Addr::from(a), hex(&packet));
        let r = reference::evaluate(&out.ir, Hook::Xdp, &packet, &mut state);
        let want_ref = if want == Action::Drop { Outcome::Drop } else { Outcome::Pass };
        assert_eq!(r.outcome, want_ref, "reference, source {}", Ipv4Addr::from(a));
    }
    out.meta.sets[0].maps.iter().map(|m| m.kind).collect()
}

#[test]
fn prefix_table_agrees_with_prefix_matching() {
    if !kernel("prefix_table_agrees_with_prefix_matching") {
        return;
    }
    // Nested and overlapping prefixes of every length from /8 to /32,
    // concentrated in 198.18.0.0/15 so that chunks share /16s and /24s.
    let mut rng = Rng(0x5e7_7ab1e);
    let mut prefixes = vec![(0x0a00_0000, 8), (0xc612_0000, 16), (0xc613_4000, 18), (0xc613_4100, 24), (0xc613_4180, 25), (0xc613_42ff, 32)];
    for _ in 0..1500 {
        let a = 0xc612_0000 | (rng.next() as u32 & 0x0001_ffff);
        prefixes.push((a, 17 + rng.below(16) as u8));
    }
    for _ in 0..500 {
        prefixes.push((rng.next() as u32, 8 + rng.below(25) as u8));
    }
    let extra: Vec<u32> = (0..2000).map(|_| rng.next() as u32).collect();
    let kinds = check(&prefixes, &prefixes, &extra);
    assert_eq!(kinds, [SetMapKind::Ipv4Root, SetMapKind::Ipv4Mid16, SetMapKind::Ipv4Leaf]);
}

#[test]
fn prefix_table_with_wide_mid_entries() {
    if !kernel("prefix_table_with_wide_mid_entries") {
        return;
    }
    // More /24s holding host routes than a u16 can index: mid entries are
    // u32. All 70,000 are in the set; the edges of a sample are tested.
    let prefixes: Vec<(u32, u8)> = (0..70_000u32).map(|i| (0x0a00_0000 + (i << 8) + (i & 0xff), 32)).collect();
    let sample: Vec<(u32, u8)> = prefixes.iter().step_by(997).copied().collect();
    let kinds = check(&prefixes, &sample, &[0x0a00_0000, 0x0a01_1170, 0x0b00_0000]);
    assert_eq!(kinds, [SetMapKind::Ipv4Root, SetMapKind::Ipv4Mid32, SetMapKind::Ipv4Leaf]);
}

/// The IPv4 sets of a policy share three tables (the kernel allows a
/// program 64 maps): forty sets load (their root, 10 MiB, in an array map,
/// as it is over the global-data budget), and each answers for its own
/// prefixes only.
#[test]
fn forty_ipv4_sets_share_three_maps() {
    if !kernel("forty_ipv4_sets_share_three_maps") {
        return;
    }
    let mut text = String::new();
    for i in 0..40 {
        text.push_str(&format!("set s{i}: cidr = {{ 10.{i}.0.0/24, 10.{i}.1.7/32, 2001:db8:{i}::/48 }}\n"));
    }
    for i in 0..40 {
        text.push_str(&format!("xdp /ip.src in s{i}/ {{ drop }}\n"));
    }
    let mut p = common::load_text(&text);
    let dst: Ipv4Addr = "198.19.255.1".parse().expect("address");
    for i in [0u32, 1, 17, 39] {
        for (src, fires) in [(format!("10.{i}.0.9"), true), (format!("10.{i}.1.7"), true), (format!("10.{i}.1.8"), false), (format!("10.{i}.2.1"), false)] {
            let packet = PacketSpec::tcp4(src.parse().expect("address"), dst, 40000, 80).syn().build();
            let (action, fired): (Action, &[u32]) = if fires { (Action::Drop, &[i]) } else { (Action::Pass, &[]) };
            common::expect(&mut p, "xdp", &src, &packet, action, fired);
        }
        let six = PacketSpec::tcp6(format!("2001:db8:{i}::5").parse().expect("address"), "2001:db8::80".parse().expect("address"), 40000, 80).syn().build();
        common::expect(&mut p, "xdp", "IPv6 member", &six, Action::Drop, &[i]);
    }
}
