//! Dynamic sets in the kernel (docs/language.md, "Dynamic sets"):
//! programs run with `BPF_PROG_TEST_RUN`, each verdict checked against the
//! reference semantics, with the sets' contents compared after each
//! packet; what the runtime does to them (`xpol set`'s add, delete and
//! flush) seen by the next packet; an element whose time is up absent; a
//! full set evicting. The kernel's clock cannot be moved, so a time that
//! is up is set, not waited for.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use xpol_compiler::ir;
use xpol_compiler::reference::{self, KeyPart, Outcome, State};
use xpol_lang::ast::Hook;
use xpol_runtime::loader::{Action, KeyValue, LoadedPolicy};
use xpol_runtime::packet::PacketSpec;

const POLICY: &str = "
set banned: ip dynamic max 1024 timeout 10m
xdp /ip.src in banned/ { drop }
xdp /tcp.dport == 23/ { add(banned, ip.src); drop }
xdp /tcp.dport == 24/ { add(banned, ip.src, timeout: 1h); drop }
xdp /tcp.dport == 25/ { delete(banned, ip.src); pass }
tc:ingress /ip.src in banned/ { drop }
";

/// A policy in the kernel, with its IR and a reference state that follows
/// it packet by packet.
struct Dyn {
    kernel: LoadedPolicy,
    ir: ir::Policy,
    state: State,
    _dir: tempfile::TempDir,
}

impl Dyn {
    fn new(text: &str) -> Dyn {
        let (kernel, ir, dir) = common::load_text_with_ir(text);
        Dyn { kernel, ir, state: State::default(), _dir: dir }
    }

    /// The packet's verdict on `hook` in the kernel, after checking that
    /// the reference gives the same and that both hold the same elements.
    fn run(&mut self, hook: Hook, what: &str, packet: &PacketSpec) -> Action {
        let bytes = packet.build();
        let kernel = self.kernel.test_run(hook.as_str(), &bytes).unwrap_or_else(|e| panic!("{what}: {e}")).action;
        let reference = reference::evaluate(&self.ir, hook, &bytes, &mut self.state).outcome;
        let same = matches!((kernel, reference), (Action::Pass, Outcome::Pass) | (Action::Drop, Outcome::Drop));
        assert!(same, "{what}: the kernel says {kernel:?}, the reference {reference:?}");
        assert_eq!(self.kernel_elements(), self.reference_elements(), "{what}: the sets differ");
        kernel
    }

    fn xdp(&mut self, what: &str, packet: &PacketSpec) -> Action {
        self.run(Hook::Xdp, what, packet)
    }

    /// The kernel's live elements of `banned`, with the whole seconds they
    /// have left (rounded up; the clock runs).
    fn kernel_elements(&self) -> Vec<(String, Option<u64>)> {
        let mut v: Vec<(String, Option<u64>)> = self.kernel.maps().dynset_elements("banned").expect("elements").into_iter().map(|e| (e.key.to_string(), e.left_ns.map(minutes))).collect();
        v.sort();
        v
    }

    fn reference_elements(&self) -> Vec<(String, Option<u64>)> {
        let mut v: Vec<(String, Option<u64>)> = reference::dynset::elements(0, &self.state)
            .into_iter()
            .map(|(k, left)| {
                let KeyPart::Ip(a) = k else { panic!("an address: {k:?}") };
                (a.to_string(), left.map(minutes))
            })
            .collect();
        v.sort();
        v
    }
}

/// Time left in whole minutes, rounded up: the kernel's clock runs during
/// a test, the reference's does not.
fn minutes(ns: u64) -> u64 {
    ns.div_ceil(60_000_000_000)
}

fn tcp4(src: &str, dport: u16) -> PacketSpec {
    PacketSpec::tcp4(src.parse().expect("IPv4"), Ipv4Addr::new(198, 18, 0, 1), 40000, dport)
}

fn tcp6(src: &str, dport: u16) -> PacketSpec {
    PacketSpec::tcp6(src.parse().expect("IPv6"), "2001:db8::1".parse::<Ipv6Addr>().expect("IPv6"), 40000, dport)
}

#[test]
fn packets_add_and_delete_elements_of_both_families() {
    if !common::kernel("packets_add_and_delete_elements_of_both_families") {
        return;
    }
    let mut d = Dyn::new(POLICY);
    assert_eq!(d.xdp("before", &tcp4("198.18.0.7", 80)), Action::Pass);
    assert_eq!(d.xdp("a ban", &tcp4("198.18.0.7", 23)), Action::Drop);
    assert_eq!(d.kernel_elements(), [("198.18.0.7".to_string(), Some(10))], "banned for the set's 10 minutes");
    assert_eq!(d.xdp("banned", &tcp4("198.18.0.7", 80)), Action::Drop);
    assert_eq!(d.xdp("another source", &tcp4("198.18.0.8", 80)), Action::Pass);
    // TC reads what XDP wrote: one map.
    assert_eq!(d.run(Hook::TcIngress, "banned on tc", &tcp4("198.18.0.7", 80)), Action::Drop);
    // IPv6, with the add's own timeout.
    assert_eq!(d.xdp("an IPv6 ban", &tcp6("2001:db8::9", 24)), Action::Drop);
    assert_eq!(d.xdp("banned over IPv6", &tcp6("2001:db8::9", 80)), Action::Drop);
    assert!(d.kernel_elements().contains(&("2001:db8::9".to_string(), Some(60))), "{:?}", d.kernel_elements());
    // A packet's delete of an element the set does not hold changes
    // nothing; the runtime's delete unbans.
    assert_eq!(d.xdp("delete of an absent element", &tcp4("198.18.0.9", 25)), Action::Pass);
    assert!(d.kernel.maps().dynset_delete("banned", &KeyValue::Ip("198.18.0.7".parse().expect("IPv4"))).expect("delete"));
    d.state.dynsets.remove(&(0, KeyPart::Ip("198.18.0.7".parse().expect("IPv4"))));
    assert_eq!(d.xdp("unbanned", &tcp4("198.18.0.7", 80)), Action::Pass);
    // A packet that would delete its source's ban meets the ban first.
    assert_eq!(d.xdp("banned again", &tcp4("198.18.0.7", 23)), Action::Drop);
    assert_eq!(d.xdp("its delete comes too late", &tcp4("198.18.0.7", 25)), Action::Drop);
}

#[test]
fn an_element_whose_time_is_up_is_absent_and_an_add_renews_it() {
    if !common::kernel("an_element_whose_time_is_up_is_absent_and_an_add_renews_it") {
        return;
    }
    let mut d = Dyn::new(POLICY);
    let src: IpAddr = "198.18.0.7".parse().expect("IPv4");
    // Its time is up now: in the map, not in the set.
    d.kernel.maps().dynset_set("banned", &[(KeyValue::Ip(src), Some(0))]).expect("set");
    d.state.dynsets.insert((0, KeyPart::Ip(src)), d.state.clock_ns);
    assert!(d.kernel_elements().is_empty(), "{:?}", d.kernel_elements());
    assert_eq!(d.xdp("expired", &tcp4("198.18.0.7", 80)), Action::Pass);
    // 30 seconds left: still banned; the reference at the same point.
    d.kernel.maps().dynset_set("banned", &[(KeyValue::Ip(src), Some(30_000_000_000))]).expect("set");
    d.state.dynsets.insert((0, KeyPart::Ip(src)), d.state.clock_ns + 30_000_000_000);
    assert_eq!(d.xdp("30 s left", &tcp4("198.18.0.7", 80)), Action::Drop);
    // An add renews it to the whole timeout.
    d.kernel.maps().dynset_set("banned", &[(KeyValue::Ip(src), Some(0))]).expect("set");
    d.state.dynsets.insert((0, KeyPart::Ip(src)), d.state.clock_ns);
    assert_eq!(d.xdp("renewed", &tcp4("198.18.0.7", 23)), Action::Drop);
    assert_eq!(d.kernel_elements(), [("198.18.0.7".to_string(), Some(10))]);
    // And the reference's clock: 10 minutes later it is gone.
    d.state.advance(600_000_000_000);
    assert!(reference::dynset::elements(0, &d.state).is_empty());
}

fn run(kernel: &mut LoadedPolicy, p: &PacketSpec) -> Action {
    kernel.test_run("xdp", &p.build()).expect("run").action
}

#[test]
fn runtime_changes_are_seen_by_the_next_packet() {
    if !common::kernel("runtime_changes_are_seen_by_the_next_packet") {
        return;
    }
    let mut d = Dyn::new(POLICY);
    let meta = d.kernel.maps().dynset_meta("banned").expect("meta").clone();
    assert_eq!((meta.elem.as_str(), meta.max_entries, meta.timeout_ns), ("ip", 1024, Some(600_000_000_000)));
    let v6 = xpol_runtime::dynset::parse_element(&meta, "2001:db8::5").expect("an address");
    let v4 = KeyValue::Ip("198.18.0.5".parse().expect("IPv4"));
    d.kernel.maps().dynset_add("banned", &v6, Some(3_600_000_000_000)).expect("add");
    d.kernel.maps().dynset_add("banned", &v4, None).expect("add");
    assert_eq!(run(&mut d.kernel, &tcp6("2001:db8::5", 80)), Action::Drop);
    assert_eq!(run(&mut d.kernel, &tcp4("198.18.0.5", 80)), Action::Drop);
    let listed: Vec<String> = d.kernel.maps().dynset_elements("banned").expect("list").iter().map(|e| e.describe()).collect();
    assert_eq!(listed, ["198.18.0.5 (600s left)", "2001:db8::5 (3600s left)"]);
    assert!(d.kernel.maps().dynset_delete("banned", &v6).expect("delete"));
    assert!(!d.kernel.maps().dynset_delete("banned", &v6).expect("delete again"), "was not there any more");
    assert_eq!(run(&mut d.kernel, &tcp6("2001:db8::5", 80)), Action::Pass);
    assert_eq!(d.kernel.maps().dynset_flush("banned").expect("flush"), 1);
    assert_eq!(run(&mut d.kernel, &tcp4("198.18.0.5", 80)), Action::Pass);
    // Elements of another type are refused with the set's name.
    let err = xpol_runtime::dynset::parse_element(&meta, "198.18.0.0/24").expect_err("a prefix");
    assert!(err.to_string().contains("`banned`"), "{err}");
    assert!(d.kernel.maps().dynset_add("banned", &KeyValue::Int(7), None).is_err());
}

#[test]
fn a_full_set_evicts_and_keeps_its_size() {
    if !common::kernel("a_full_set_evicts_and_keeps_its_size") {
        return;
    }
    let mut d = Dyn::new("set banned: ip dynamic max 64 timeout 10m\nxdp /ip.src in banned/ { drop }\nxdp /tcp.dport == 23/ { add(banned, ip.src); drop }\n");
    for i in 0..1000u32 {
        let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i);
        d.kernel.test_run("xdp", &PacketSpec::tcp4(src, Ipv4Addr::new(198, 18, 0, 1), 40000, 23).build()).expect("run");
    }
    let held = d.kernel.maps().dynset_elements("banned").expect("elements");
    assert!(!held.is_empty() && held.len() <= 64, "an LRU map of 64 holds {} elements", held.len());
    // The last one added is there: eviction takes the least recently used.
    let last = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + 999);
    assert!(held.iter().any(|e| e.key == KeyValue::Ip(IpAddr::V4(last))), "{held:?}");
    let summary = d.kernel.maps().dynset_summaries().expect("summaries");
    assert_eq!((summary[0].capacity, summary[0].elements), (64, held.len() as u64));
}
