//! A thousand named sets in one policy: the sets of each kind share their
//! maps (their id in the keys: `xpol_lang::meta::SETS_HASH_MAP`,
//! `SETS_LPM6_MAP`, and the IPv4 and IPv6 tables), so a policy's sets
//! take a few of the 64 maps the kernel allows a program, however many
//! it has. The kernel's verdicts are checked against the reference
//! semantics on packets inside and just outside many of the sets.

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use xpol_compiler::reference::{self, State};
use xpol_lang::ast::Hook;
use xpol_runtime::loader::{Action, LoadOptions, LoadedPolicy};
use xpol_runtime::packet::{hex, PacketSpec};

/// How the sets of [`policy`] are split among the kinds.
#[derive(Clone, Copy)]
struct Mix {
    /// `set aK: cidr`: IPv4 and IPv6 prefixes (K % 3 == 0), IPv4 only
    /// (1) or IPv6 only (2).
    ip: usize,
    /// `set vK: cidr` of 17 IPv6 prefixes each: the four largest sets of
    /// IPv6 prefixes are in the IPv6 tables, the others in the shared trie.
    ip6: usize,
    /// `set pK: port`: a port and a range of two.
    port: usize,
    /// `set tK: int`: two VLAN ids.
    int: usize,
    /// `set mK: mac`: two MAC addresses.
    mac: usize,
}

impl Mix {
    fn total(&self) -> usize {
        self.ip + self.ip6 + self.port + self.int + self.mac
    }
}

/// The 1,000 sets of the kernel test.
const THOUSAND: Mix = Mix { ip: 150, ip6: 50, port: 300, int: 250, mac: 250 };

/// Rules test every other set of each kind: 500 tests of a set (some 40
/// instructions each: a test of all 1,000 takes the program past the
/// 32,767 instructions a jump spans).
const EVERY: usize = 2;

fn a4(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, k as u8, 0)
}

fn a6(k: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, k as u16, 0, 0, 0, 0, 0)
}

/// The 17 prefixes of `vK`: /64s of 2001:db8:1:K::/64's neighbourhood.
fn v6_of(k: usize) -> Vec<Ipv6Addr> {
    (0..17).map(|j| Ipv6Addr::new(0x2001, 0xdb8, 0x1000 + k as u16, j * 2, 0, 0, 0, 0)).collect()
}

fn port(k: usize) -> u16 {
    2000 + 4 * k as u16
}

fn vlan(k: usize) -> u16 {
    100 + 3 * k as u16
}

fn mac(k: usize, j: u8) -> [u8; 6] {
    [0x02, 0x5e, (k >> 8) as u8, k as u8, j, 0x01]
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The policy: every set declared, and rules testing those whose index
/// is a multiple of `every` (of each kind), each rule two sets of one
/// kind with a verdict of its own. Sets of one kind are disjoint.
fn policy(mix: Mix, every: usize) -> String {
    let mut text = String::new();
    for k in 0..mix.ip {
        let mut elems = Vec::new();
        if k % 3 != 2 {
            elems.push(format!("{}/24", a4(k)));
            elems.push(format!("198.19.{k}.7/32", k = k % 256));
        }
        if k % 3 != 1 {
            elems.push(format!("{}/48", a6(k)));
        }
        text.push_str(&format!("set a{k}: cidr = {{ {} }}\n", elems.join(", ")));
    }
    for k in 0..mix.ip6 {
        let elems: Vec<String> = v6_of(k).iter().map(|a| format!("{a}/64")).collect();
        text.push_str(&format!("set v{k}: cidr = {{ {} }}\n", elems.join(", ")));
    }
    for k in 0..mix.port {
        text.push_str(&format!("set p{k}: port = {{ {}, {}..{} }}\n", port(k), port(k) + 1, port(k) + 2));
    }
    for k in 0..mix.int {
        text.push_str(&format!("set t{k}: int = {{ {}, {} }}\n", vlan(k), vlan(k) + 1));
    }
    for k in 0..mix.mac {
        text.push_str(&format!("set m{k}: mac = {{ {}, {} }}\n", mac_text(mac(k, 0)), mac_text(mac(k, 1))));
    }
    let verdicts = ["drop", "tx", "pass"];
    let mut rule = 0;
    let mut pairs = |text: &mut String, n: usize, prefix: &str, field: &str| {
        let tested: Vec<usize> = (0..n).step_by(every).collect();
        for pair in tested.chunks(2) {
            let tests: Vec<String> = pair.iter().map(|k| format!("{field} in {prefix}{k}")).collect();
            text.push_str(&format!("xdp /{}/ {{ {} }}\n", tests.join(" || "), verdicts[rule % 3]));
            rule += 1;
        }
    };
    pairs(&mut text, mix.ip, "a", "ip.src");
    pairs(&mut text, mix.ip6, "v", "ip.src");
    pairs(&mut text, mix.port, "p", "tcp.dport");
    pairs(&mut text, mix.int, "t", "vlan.id");
    pairs(&mut text, mix.mac, "m", "eth.src");
    text.push_str("xdp { pass }\n");
    text
}

/// A packet that belongs to no set but what the caller changes: an IPv4
/// or IPv6 source outside every prefix, port 1, no VLAN tag, a MAC no
/// set has.
fn base4(src: Ipv4Addr) -> PacketSpec {
    PacketSpec::tcp4(src, Ipv4Addr::new(198, 19, 255, 1), 40000, 1).syn()
}

fn base6(src: Ipv6Addr) -> PacketSpec {
    PacketSpec::tcp6(src, "2001:db8:ffff::1".parse().expect("address"), 40000, 1).syn()
}

const NOWHERE4: Ipv4Addr = Ipv4Addr::new(198, 19, 254, 1);

/// Packets inside and just outside sets of every kind (those tested and
/// others), `what` saying which.
fn packets(mix: Mix) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut push = |what: String, p: PacketSpec| out.push((what, p.build()));
    for k in (0..mix.ip).step_by(3).chain((1..mix.ip).step_by(7)).chain((2..mix.ip).step_by(11)) {
        let net = u32::from(a4(k));
        for (what, a) in [("first", net), ("last", net + 255), ("below", net - 1), ("above", net + 256)] {
            push(format!("a{k} IPv4 {what}"), base4(Ipv4Addr::from(a)));
        }
        push(format!("a{k} /32"), base4(Ipv4Addr::new(198, 19, (k % 256) as u8, 7)));
        push(format!("a{k} /32 + 1"), base4(Ipv4Addr::new(198, 19, (k % 256) as u8, 8)));
        let net6 = u128::from(a6(k));
        for (what, a) in [("first", net6), ("last", net6 | (u128::MAX >> 48)), ("above", net6 + (1 << 80))] {
            push(format!("a{k} IPv6 {what}"), base6(Ipv6Addr::from(a)));
        }
    }
    for k in (0..mix.ip6).step_by(3) {
        for (j, a) in v6_of(k).into_iter().enumerate().step_by(5) {
            let a = u128::from(a);
            push(format!("v{k} prefix {j}"), base6(Ipv6Addr::from(a | 0xabcd)));
            push(format!("v{k} past prefix {j}"), base6(Ipv6Addr::from(a + (1 << 64))));
        }
    }
    for k in (0..mix.port).step_by(5) {
        for d in 0..4 {
            push(format!("p{k} port +{d}"), base4(NOWHERE4).tcp(|t| t.dport = port(k) + d));
        }
    }
    for k in (0..mix.int).step_by(5) {
        for d in 0..3 {
            push(format!("t{k} vlan +{d}"), base4(NOWHERE4).vlan(vlan(k) + d));
        }
    }
    for k in (0..mix.mac).step_by(5) {
        for j in 0..3 {
            push(format!("m{k} mac {j}"), base4(NOWHERE4).eth(mac(k, j), [2, 0, 0, 0, 0, 2]));
        }
    }
    push("no set".into(), base4(NOWHERE4));
    out
}

fn build(text: &str) -> (xpol_compiler::Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.xpol");
    std::fs::write(&path, text).expect("write policy");
    let b = xpol_compiler::build(&path, &xpol_compiler::BuildOptions::default());
    let out = b.output.unwrap_or_else(|| panic!("does not compile:\n{}", xpol_lang::render::render_human(&b.diagnostics, &b.sources, false)));
    (out, dir)
}

/// The maps program `xdp` refers to, by name.
fn program_maps(out: &xpol_compiler::Output) -> BTreeSet<String> {
    let prog = out.meta.programs.iter().find(|p| p.hook == "xdp").expect("an xdp program");
    xpol_compiler::verifier::map_references(&out.object, &prog.name).into_iter().map(|(_, m)| m).collect()
}

fn outcome(a: Action) -> reference::Outcome {
    match a {
        Action::Drop => reference::Outcome::Drop,
        Action::Pass => reference::Outcome::Pass,
        Action::Tx => reference::Outcome::Tx,
        other => panic!("unexpected action {other:?}"),
    }
}

/// 1,000 sets of every kind load, and the kernel's verdicts and fired
/// rules are the reference's on packets in and around them.
#[test]
fn a_thousand_sets_load_and_agree_with_the_reference() {
    if !common::kernel("a_thousand_sets_load_and_agree_with_the_reference") {
        return;
    }
    assert_eq!(THOUSAND.total(), 1000);
    let (out, _dir) = build(&policy(THOUSAND, EVERY));
    assert_eq!(out.meta.sets.len(), 1000);
    let mut p = LoadedPolicy::load_with(&out.object, &LoadOptions { missing_interfaces_ok: true, ..Default::default() }).expect("load");
    let mut state = State::default();
    let mut fired_rules = BTreeSet::new();
    let mut verdicts = BTreeSet::new();
    for (what, packet) in packets(THOUSAND) {
        let before = p.rule_counters().expect("counters");
        let got = p.test_run("xdp", &packet).unwrap_or_else(|e| panic!("{what}: test run: {e}"));
        let after = p.rule_counters().expect("counters");
        let fired: Vec<u32> = after.iter().zip(&before).enumerate().filter(|(_, (a, b))| a.packets != b.packets).map(|(i, _)| i as u32).collect();
        let want = reference::evaluate(&out.ir, Hook::Xdp, &packet, &mut state);
        assert_eq!((outcome(got.action), &fired), (want.outcome, &want.fired), "{what}: kernel and reference disagree on packet {}", hex(&packet));
        fired_rules.extend(fired);
        verdicts.insert(format!("{:?}", got.action));
    }
    // The packets reached rules of every kind and every verdict, and the
    // catch-all: not a policy that passes everything.
    assert!(fired_rules.len() > 100, "only rules {fired_rules:?} fired");
    assert_eq!(verdicts.len(), 3, "{verdicts:?}");
}

/// The maps a program uses do not grow with its sets: a policy of 1,000
/// sets uses the maps one of 200 sets of the same kinds uses, and one more
/// (the IPv4 tables' leaves, in global data while they fit), eleven in
/// all.
#[test]
fn the_maps_of_a_policy_do_not_grow_with_its_sets() {
    let fifth = Mix { ip: 30, ip6: 10, port: 60, int: 50, mac: 50 };
    let (small, _d1) = build(&policy(fifth, EVERY));
    let (large, _d2) = build(&policy(THOUSAND, EVERY));
    let (small_maps, large_maps) = (program_maps(&small), program_maps(&large));
    assert!(small_maps.is_subset(&large_maps), "{small_maps:?} {large_maps:?}");
    assert!(large_maps.len() <= 11, "{large_maps:?}");
    let set_maps = |out: &xpol_compiler::Output| out.meta.sets.iter().flat_map(|s| s.maps.iter().map(|m| m.map.clone())).collect::<BTreeSet<_>>();
    assert!(set_maps(&small).is_subset(&set_maps(&large)));
    assert!(set_maps(&large).is_subset(&large_maps), "every set map is one the program uses");
    // Every set of a shared map has an id of its own there.
    let ids: BTreeSet<u32> = large.meta.sets.iter().filter_map(|s| s.id).collect();
    assert_eq!(ids.len(), large.meta.sets.iter().filter(|s| s.id.is_some()).count());
}
