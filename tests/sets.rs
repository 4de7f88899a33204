//! Named IPv4 sets compile to prefix tables (three tables, in global data
//! or array maps, see lang/src/ipv4_table.rs). These tests load such sets into the kernel and
//! check membership on the edges of every prefix against plain prefix
//! matching and against the reference interpreter.

mod common;

use common::{kernel, Rng};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use xpol_compiler::ir::Outcome;
use xpol_compiler::reference::{self, State};
use xpol_lang::ast::Hook;
use xpol_lang::meta::SetMapKind;
use xpol_runtime::loader::{Action, LoadOptions, LoadedPolicy, RuntimeError};
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
    assert_eq!(kinds, [SetMapKind::Ipv4Root, SetMapKind::Ipv4Mid16, SetMapKind::Ipv4Leaf, SetMapKind::SharedLpmV6]);
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
    assert_eq!(kinds, [SetMapKind::Ipv4Root, SetMapKind::Ipv4Mid32, SetMapKind::Ipv4Leaf, SetMapKind::SharedLpmV6]);
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

/// Compiles `text` to an object.
fn compile(text: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.xpol");
    std::fs::write(&path, text).expect("write policy");
    let b = xpol_compiler::build(&path, &xpol_compiler::BuildOptions::default());
    b.output.unwrap_or_else(|| panic!("{}", xpol_lang::render::render_human(&b.diagnostics, &b.sources, false))).object
}

/// Sets of one address family, and a port set, each with room to grow.
const GROWING: &str = "set v6only: cidr max 300 = { 2001:db8:bad::/48 }
set v4only: cidr = { 203.0.113.0/24 }
set ports: port max 120 = { 22 }
xdp /ip.src in v6only/ { drop }
xdp /ip.src in v4only/ { tx }
xdp /tcp.dport in ports/ { abort }
";

fn elements(sets: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
    sets.iter().map(|(name, list)| (name.to_string(), list.iter().map(|e| e.to_string()).collect())).collect()
}

/// A set declared with elements of one address family takes the other's
/// when the runtime fills it with new elements, and an int set more ports,
/// within the declared or default capacity.
#[test]
fn sets_take_new_elements_of_either_family_within_capacity() {
    if !kernel("sets_take_new_elements_of_either_family_within_capacity") {
        return;
    }
    let object = compile(GROWING);
    let mut hosts: Vec<String> = (0..200).map(|i| format!("10.{i}.{}.9/32", i % 7)).collect();
    hosts.extend(["2001:db8:bad::/48".into(), "198.51.100.0/24".into(), "192.0.2.7".into()]);
    let host_refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let given = elements(&[("v6only", &host_refs), ("v4only", &["203.0.113.0/24", "2001:db8:1::/48"]), ("ports", &["22", "443", "8000..8099"])]);
    let mut p = LoadedPolicy::load_with_elements(&object, &LoadOptions { missing_interfaces_ok: true, ..Default::default() }, &given).expect("load");
    let ports = p.meta().sets.iter().find(|s| s.name == "ports").expect("set ports");
    assert_eq!((ports.elements.len(), ports.capacity, ports.mutable), (3, 120, true), "the metadata lists what was loaded");
    let dst4: Ipv4Addr = "198.19.255.1".parse().expect("address");
    let dst6: Ipv6Addr = "2001:db8::80".parse().expect("address");
    let cases: [(&str, u16, Action); 12] = [
        ("198.51.100.77", 80, Action::Drop),
        ("192.0.2.7", 80, Action::Drop),
        ("192.0.2.8", 80, Action::Pass),
        ("10.0.0.9", 80, Action::Drop),
        ("10.199.3.9", 80, Action::Drop),
        ("10.199.3.10", 80, Action::Pass),
        ("2001:db8:bad::1", 80, Action::Drop),
        ("2001:db8:1::5", 80, Action::Tx),
        ("203.0.113.5", 80, Action::Tx),
        ("2001:db8:2::5", 8050, Action::Abort),
        ("198.18.0.1", 443, Action::Abort),
        ("198.18.0.1", 8100, Action::Pass),
    ];
    for (src, dport, want) in cases {
        let packet = match src.parse::<IpAddr>().expect("address") {
            IpAddr::V4(a) => PacketSpec::tcp4(a, dst4, 40000, dport).syn().build(),
            IpAddr::V6(a) => PacketSpec::tcp6(a, dst6, 40000, dport).syn().build(),
        };
        let got = p.test_run("xdp", &packet).expect("test run").action;
        assert_eq!(got, want, "source {src}, port {dport}: packet {}", hex(&packet));
    }
}

/// Elements past a set's capacity, or past the room of the shared IPv4
/// tables, are refused with `SetFull` naming the set.
#[test]
fn sets_past_their_capacity_are_full() {
    if !kernel("sets_past_their_capacity_are_full") {
        return;
    }
    let object = compile(GROWING);
    let options = LoadOptions { missing_interfaces_ok: true, ..Default::default() };
    let full = |given: HashMap<String, Vec<String>>| match LoadedPolicy::load_with_elements(&object, &options, &given) {
        Err(RuntimeError::SetFull { set, capacity, needed }) => (set, capacity, needed),
        Err(e) => panic!("expected SetFull, got: {e}"),
        Ok(_) => panic!("the elements were accepted"),
    };
    // 22 and 200 ports: 201 elements, over `max 120`.
    let (set, capacity, needed) = full(elements(&[("ports", &["22", "8000..8199"])]));
    assert_eq!((set.as_str(), capacity, needed.as_str()), ("ports", 120, "and 201 were given"));
    // Within v4only's default capacity (1024), but each /32 in a /24 of
    // its own needs a leaf chunk, and the tables have far fewer.
    let hosts: Vec<String> = (0..1000).map(|i| format!("10.{}.{}.1/32", i / 256, i % 256)).collect();
    let host_refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let (set, capacity, needed) = full(elements(&[("v4only", &host_refs)]));
    assert_eq!((set.as_str(), capacity), ("v4only", 1024), "{needed}");
    assert!(needed.contains("`leaf`"), "{needed}");
    let message = RuntimeError::SetFull { set, capacity, needed }.to_string();
    assert!(message.starts_with("set `v4only` is full: it holds at most 1024 elements") && message.ends_with("rebuild the policy with a larger `max`"), "{message}");
    // A set the policy does not have.
    assert!(matches!(LoadedPolicy::load_with_elements(&object, &options, &elements(&[("nope", &[])])), Err(RuntimeError::UnknownSet(s)) if s == "nope"));
}
