//! Named IPv6 sets compile to the shared IPv6 tables (a multibit trie in
//! two array maps, see lang/src/ipv6_table.rs). These tests load random
//! sets into the kernel and check membership on and around every prefix's
//! bounds against plain prefix matching and the reference interpreter.

mod common;

use common::{kernel, Rng};
use std::net::Ipv6Addr;
use xpol_compiler::ir::Outcome;
use xpol_compiler::reference::{self, State};
use xpol_lang::ast::Hook;
use xpol_lang::meta::SetMapKind;
use xpol_runtime::loader::{Action, LoadOptions, LoadedPolicy};
use xpol_runtime::packet::{hex, PacketSpec};

fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

fn covered(prefixes: &[(u128, u8)], a: u128) -> bool {
    prefixes.iter().any(|&(p, len)| a & mask(len) == p & mask(len))
}

/// Random prefixes, most inside 2001:db8::/32 (so that they nest and share
/// nodes), lengths drawn to hit every stride boundary and its neighbours.
fn random_prefixes(rng: &mut Rng, n: usize, with_zero: bool) -> Vec<(u128, u8)> {
    const LENGTHS: [u8; 22] = [1, 8, 15, 16, 17, 24, 31, 32, 33, 40, 47, 48, 49, 56, 63, 64, 65, 72, 96, 120, 127, 128];
    let mut out = Vec::new();
    for _ in 0..n {
        let len = LENGTHS[rng.below(LENGTHS.len() as u64) as usize];
        let bits = (u128::from(rng.next()) << 64) | u128::from(rng.next());
        // Few distinct values in bits 32..48: prefixes share /48s and /40s.
        let base = (u128::from(0x2001_0db8u32) << 96) | (u128::from(rng.below(4)) << 80);
        let a = if rng.below(8) == 0 { bits } else { base | (bits & (u128::MAX >> 48)) };
        out.push((a & mask(len), len));
    }
    if with_zero {
        out.push((0, 0));
    }
    out
}

/// Addresses on, just inside and just outside every prefix's bounds, and
/// a few random ones.
fn probes(rng: &mut Rng, prefixes: &[(u128, u8)]) -> Vec<u128> {
    let mut out = vec![0, u128::MAX, u128::from(Ipv6Addr::LOCALHOST)];
    for &(a, len) in prefixes {
        let (lo, hi) = (a & mask(len), a | !mask(len));
        out.extend([lo, hi, lo.wrapping_sub(1), hi.wrapping_add(1), lo ^ (1 << 64), lo | 1]);
    }
    for _ in 0..20 {
        out.push((u128::from(0x2001_0db8u32) << 96) | (u128::from(rng.next()) << 40) | u128::from(rng.below(1 << 20)));
    }
    out
}

fn text(prefixes: &[(u128, u8)]) -> String {
    prefixes.iter().map(|&(a, len)| format!("{}/{len}\n", Ipv6Addr::from(a))).collect()
}

/// Sets `s0`, `s1`, ... (from files, each `set`) and a rule per set, each
/// with its own verdict-free counter: `xdp /ip.src in sK/ { count }` is
/// not a thing, so rule K drops and the rules are tried one set at a time.
fn check_sets(sets: &[Vec<(u128, u8)>], probes: &[u128]) -> Vec<SetMapKind> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut policy = String::new();
    for (k, s) in sets.iter().enumerate() {
        std::fs::write(dir.path().join(format!("s{k}.txt")), text(s)).expect("write list");
        policy.push_str(&format!("set s{k}: cidr = file(\"s{k}.txt\")\n"));
    }
    // One policy per set under test would cost a load each; instead set K
    // is tested with the packet's destination port 1000 + K.
    for k in 0..sets.len() {
        policy.push_str(&format!("xdp /tcp.dport == {} && ip.src in s{k}/ {{ drop }}\n", 1000 + k));
    }
    let path = dir.path().join("policy.xpol");
    std::fs::write(&path, &policy).expect("write policy");
    let b = xpol_compiler::build(&path, &xpol_compiler::BuildOptions::default());
    let out = b.output.unwrap_or_else(|| panic!("{}", xpol_lang::render::render_human(&b.diagnostics, &b.sources, false)));
    let mut p = LoadedPolicy::load_with(&out.object, &LoadOptions { missing_interfaces_ok: true, ..Default::default() }).expect("load");
    let mut state = State::default();
    let dst: Ipv6Addr = "2001:db8::80".parse().expect("address");
    for (k, s) in sets.iter().enumerate() {
        for &a in probes {
            let packet = PacketSpec::tcp6(Ipv6Addr::from(a), dst, 40000, 1000 + k as u16).syn().build();
            let want = if covered(s, a) { Action::Drop } else { Action::Pass };
            let got = p.test_run("xdp", &packet).expect("test run").action;
            assert_eq!(got, want, "kernel, set s{k}, source {}: packet {}", Ipv6Addr::from(a), hex(&packet));
            let r = reference::evaluate(&out.ir, Hook::Xdp, &packet, &mut state);
            let want_ref = if want == Action::Drop { Outcome::Drop } else { Outcome::Pass };
            assert_eq!(r.outcome, want_ref, "reference, set s{k}, source {}", Ipv6Addr::from(a));
        }
    }
    out.meta.sets.iter().flat_map(|s| s.maps.iter().map(|m| m.kind)).collect()
}

#[test]
fn random_ipv6_sets_agree_with_prefix_matching() {
    if !kernel("random_ipv6_sets_agree_with_prefix_matching") {
        return;
    }
    let mut rng = Rng(0x5eed_0006);
    for round in 0..4 {
        let sets: Vec<Vec<(u128, u8)>> = (0..3).map(|k| random_prefixes(&mut rng, [0, 1, 40, 300][(round + k) % 4], round == 3 && k == 2)).collect();
        let all: Vec<(u128, u8)> = sets.iter().flatten().copied().collect();
        let probes = probes(&mut rng, &all);
        let kinds = check_sets(&sets, &probes);
        // Every set in the shared tables (IPv6 and, as each may get IPv4
        // prefixes, IPv4): no map of its own, but an LPM trie for the
        // IPv6 part of a set that starts without IPv6 prefixes.
        assert!(kinds.iter().all(|&k| k.is_shared_table() || k == SetMapKind::SharedLpmV6), "{kinds:?}");
        assert!(kinds.contains(&SetMapKind::Ipv6Node) && kinds.contains(&SetMapKind::Ipv6Tail), "{kinds:?}");
    }
}

/// The edges: /0 holds everything, /128 one address, overlapping prefixes
/// (one inside another, the same prefix twice) hold their union.
#[test]
fn ipv6_set_edges() {
    if !kernel("ipv6_set_edges") {
        return;
    }
    let p = |s: &str| {
        let (a, l) = s.split_once('/').expect("prefix");
        (u128::from(a.parse::<Ipv6Addr>().expect("address")), l.parse::<u8>().expect("length"))
    };
    let sets = vec![
        vec![p("::/0")],
        vec![p("2001:db8::1/128"), p("2001:db8::3/128"), p("::/128"), p("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128")],
        vec![p("2001:db8::/32"), p("2001:db8:1::/48"), p("2001:db8:1:2::/64"), p("2001:db8:1:2::/64"), p("2001:db9::/127")],
    ];
    let mut rng = Rng(7);
    let all: Vec<(u128, u8)> = sets.iter().flatten().copied().collect();
    let probes = probes(&mut rng, &all);
    check_sets(&sets, &probes);
}

/// A constant set of more than 16 IPv6 prefixes is a map too (the shared
/// tables). The four sets with the most IPv6 prefixes share the two maps
/// of the tables; the others share one LPM trie (each use of a set in
/// the tables is an inlined walk of some 250 instructions). Membership is
/// the same either way.
#[test]
fn the_largest_ipv6_sets_share_two_maps() {
    const SETS: u32 = 10;
    if !kernel("the_largest_ipv6_sets_share_two_maps") {
        return;
    }
    let mut text = String::new();
    for i in 0..SETS {
        text.push_str(&format!("set s{i}: cidr = {{ 2001:db8:{i:x}::/48, 2001:db8:ffff::{i:x}/128 }}\n"));
    }
    let big: Vec<String> = (0..40).map(|i| format!("2001:db8:beef:{i:x}::/64")).collect();
    text.push_str(&format!("const big = {{ {} }}\n", big.join(", ")));
    text.push_str("xdp /ip.src in big/ { tx }\n");
    for i in 0..SETS {
        text.push_str(&format!("xdp /ip.src in s{i}/ {{ drop }}\n"));
    }
    let mut p = common::load_text(&text);
    let maps: std::collections::BTreeSet<String> = p.meta().sets.iter().flat_map(|s| s.maps.iter().map(|m| m.map.clone())).collect();
    // Two for the IPv6 tables, the IPv4 tables every `set` has for the
    // IPv4 prefixes it may get, and one trie for the sets past the four.
    assert_eq!(maps.iter().filter(|m| m.starts_with("xpol_v6")).count(), 2, "{maps:?}");
    let in_tables: Vec<&str> = p.meta().sets.iter().filter(|s| s.ipv6_slot.is_some()).map(|s| s.name.as_str()).collect();
    assert_eq!(in_tables, ["s0", "s1", "s2", "big"], "the largest first, then in order");
    assert!(maps.contains(xpol_lang::meta::SETS_LPM6_MAP), "{maps:?}");
    let in_trie = p.meta().sets.iter().filter(|s| s.maps.iter().any(|m| m.kind == SetMapKind::SharedLpmV6)).count();
    assert_eq!(in_trie, SETS as usize - 3, "{maps:?}");
    assert!(maps.iter().all(|m| !m.starts_with("xs_")), "no set has a map of its own: {maps:?}");
    let dst: Ipv6Addr = "2001:db8::80".parse().expect("address");
    let run = |p: &mut LoadedPolicy, src: &str| p.test_run("xdp", &PacketSpec::tcp6(src.parse().expect("address"), dst, 40000, 80).syn().build()).expect("test run").action;
    for i in [0u32, 1, 5, SETS - 1] {
        assert_eq!(run(&mut p, &format!("2001:db8:{i:x}::5")), Action::Drop);
        assert_eq!(run(&mut p, &format!("2001:db8:ffff::{i:x}")), Action::Drop);
    }
    assert_eq!(run(&mut p, "2001:db8:ffff::100"), Action::Pass);
    assert_eq!(run(&mut p, &format!("2001:db8:{SETS:x}::1")), Action::Pass);
    assert_eq!(run(&mut p, "2001:db8:beef:27::1"), Action::Tx);
    assert_eq!(run(&mut p, "2001:db8:beef:28::1"), Action::Pass);
}

/// A set tested in more than two places stays in the LPM trie (each test
/// in the tables is an inlined walk, copied for every parse end of a
/// short policy); one tested twice is in the tables. Membership is the
/// same either way.
#[test]
fn a_set_tested_in_many_rules_keeps_its_trie() {
    if !kernel("a_set_tested_in_many_rules_keeps_its_trie") {
        return;
    }
    let text = "set many: cidr = { 2001:db8:1::/48, 2001:db8:2::/48 }\n\
                set twice: cidr = { 2001:db8:3::/48 }\n\
                xdp /tcp.dport == 22 && ip.src in many/ { drop }\n\
                xdp /tcp.dport == 23 && ip.src in many/ { drop }\n\
                xdp /udp.dport == 53 && ip.src in many/ { drop }\n\
                xdp /tcp.dport == 22 && ip.src in twice/ { drop }\n\
                xdp /tcp.dport == 23 && ip.src in twice/ { drop }\n\
                xdp { pass }\n";
    let mut p = common::load_text(text);
    let in_tables: Vec<&str> = p.meta().sets.iter().filter(|s| s.ipv6_slot.is_some()).map(|s| s.name.as_str()).collect();
    assert_eq!(in_tables, ["twice"]);
    let dst: Ipv6Addr = "2001:db8::80".parse().expect("address");
    let mut run = |src: &str, dport: u16| p.test_run("xdp", &PacketSpec::tcp6(src.parse().expect("address"), dst, 40000, dport).syn().build()).expect("test run").action;
    assert_eq!(run("2001:db8:2::7", 23), Action::Drop);
    assert_eq!(run("2001:db8:3::7", 23), Action::Drop);
    assert_eq!(run("2001:db8:4::7", 23), Action::Pass);
    assert_eq!(run("2001:db8:2::7", 80), Action::Pass);
}

/// A region of 2,048 prefixes or more gets a wide node (16 bits), in
/// global data while there is room: membership on its edges as anywhere.
#[test]
fn a_large_ipv6_set_walks_a_wide_node() {
    if !kernel("a_large_ipv6_set_walks_a_wide_node") {
        return;
    }
    let mut rng = Rng(0x5eed_0016);
    let big: Vec<(u128, u8)> = (0..2_500)
        .map(|_| {
            let len = [48u8, 56, 64, 128][rng.below(4) as usize];
            let a = (u128::from(0x2001_0db8u32) << 96) | (((u128::from(rng.next()) << 64) | u128::from(rng.next())) & (u128::MAX >> 32));
            (a & mask(len), len)
        })
        .collect();
    let probes = probes(&mut rng, &big[..400]);
    check_sets(&[big], &probes);
}
