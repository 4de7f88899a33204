//! Live changes to sets that share their maps (`xpol_lang::meta::
//! SETS_HASH_MAP`, `SETS_LPM6_MAP`): one element of one set changes in
//! place under that set's id and no other set's, and a set keeps within
//! its own capacity although the map it shares has room for all of them.
//!
//! The policy is applied in the host's store under a name of this test
//! process, deleted when the test ends (`common::host::HostPolicy`), on
//! the veth of a namespace pair the test creates; packets are only run
//! through the program (BPF_PROG_TEST_RUN).

mod common;

use common::host::{apply_in_host_store, running_program};
use common::net::Net;
use std::net::{Ipv4Addr, Ipv6Addr};
use xpol_runtime::apply::{SetChange, SetEditor};
use xpol_runtime::loader::RuntimeError;
use xpol_runtime::packet::PacketSpec;
use xpol_runtime::store::Store;

const POLICY: &str = "set a: port max 50 = { 22 }
set b: port max 50 = { 22, 80 }
set r: int max 10 = { 100..107 }
set m: mac = { 02:00:00:00:00:aa }
set w: cidr max 100 = { 198.18.5.0/24 }
set w2: cidr max 100 = { 198.18.6.0/24 }
xdp /udp.dport in a/ { drop }
xdp /udp.dport in b/ { tx }
xdp /ip.ttl in r/ { drop }
xdp /eth.src in m/ { drop }
xdp /ip.src in w/ { drop }
xdp /ip.src in w2/ { tx }
xdp { pass }
";

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

#[test]
fn one_sets_change_in_a_shared_map_is_its_own() {
    if !xpol_runtime::testing::kernel_or_skip("one_sets_change_in_a_shared_map_is_its_own") {
        return;
    }
    let net = Net::new();
    let policy = apply_in_host_store(&net, "sharedsets", POLICY);
    let name = &policy.0;
    let store = Store::write().expect("store");
    let before = running_program(&store, name);
    // The program the link runs now.
    let run = |packet: PacketSpec| {
        let prog = xpol_runtime::sys::prog_fd_by_id(running_program(&store, name)).expect("the program");
        xpol_runtime::sys::prog_test_run(std::os::fd::AsFd::as_fd(&prog), &packet.build(), None, 1).expect("test run").retval
    };
    let src4 = Ipv4Addr::new(198, 18, 0, 1);
    let dst4 = Ipv4Addr::new(198, 19, 0, 1);
    let port = |p: u16| run(PacketSpec::udp4(src4, dst4, 1000, p));
    let ttl = |t: u8| run(PacketSpec::udp4(src4, dst4, 1000, 9).ipv4(|ip| ip.ttl = t));
    let from6 = |a: &str| run(PacketSpec::udp6(a.parse::<Ipv6Addr>().expect("address"), "2001:db8::1".parse().expect("address"), 1000, 9));
    assert_eq!((port(22), port(80), port(443)), (XDP_DROP, XDP_TX, XDP_PASS));

    // Both port sets hold 22 in the one hash map, each under its id:
    // taking it from `a` leaves `b`'s.
    let mut a = SetEditor::open(&store, name, "a").expect("set a");
    a.change(&store, SetChange::Add(vec!["443".into()])).expect("add 443");
    a.change(&store, SetChange::Delete(vec!["22".into()])).expect("delete 22");
    assert_eq!((port(22), port(80), port(443)), (XDP_TX, XDP_TX, XDP_DROP));

    // A MAC in the same hash map.
    let mac = |m: [u8; 6]| run(PacketSpec::udp4(src4, dst4, 1000, 9).eth(m, [2, 0, 0, 0, 0, 2]));
    let mut m = SetEditor::open(&store, name, "m").expect("set m");
    m.change(&store, SetChange::Add(vec!["02:00:00:00:00:bb".into()])).expect("add a MAC");
    assert_eq!((mac([2, 0, 0, 0, 0, 0xaa]), mac([2, 0, 0, 0, 0, 0xbb]), mac([2, 0, 0, 0, 0, 0xcc])), (XDP_DROP, XDP_DROP, XDP_PASS));

    // The IPv6 parts of sets declared without IPv6 prefixes are in one
    // LPM trie, each under its id.
    let mut w = SetEditor::open(&store, name, "w").expect("set w");
    let mut w2 = SetEditor::open(&store, name, "w2").expect("set w2");
    w.change(&store, SetChange::Add(vec!["2001:db8:77::/48".into()])).expect("add to w");
    w2.change(&store, SetChange::Add(vec!["2001:db8:77:1::/64".into()])).expect("add to w2");
    assert_eq!((from6("2001:db8:77::1"), from6("2001:db8:77:1::1"), from6("2001:db8:78::1")), (XDP_DROP, XDP_DROP, XDP_PASS));
    w.change(&store, SetChange::Delete(vec!["2001:db8:77::/48".into()])).expect("delete from w");
    assert_eq!((from6("2001:db8:77::1"), from6("2001:db8:77:1::1")), (XDP_PASS, XDP_TX), "w2's prefix stays, w's goes");

    // `r` holds 8 integers of its 10 (the range is 8 entries of the map):
    // two more fit, the third is refused, though the shared map has room.
    let mut r = SetEditor::open(&store, name, "r").expect("set r");
    r.change(&store, SetChange::Add(vec!["200".into()])).expect("add 200");
    r.change(&store, SetChange::Add(vec!["201".into()])).expect("add 201");
    match r.change(&store, SetChange::Add(vec!["202".into()])) {
        Err(RuntimeError::SetFull { set, capacity, .. }) => assert_eq!((set.as_str(), capacity), ("r", 10)),
        other => panic!("expected the set to be full, got {other:?}"),
    }
    assert_eq!((ttl(100), ttl(107), ttl(200), ttl(201), ttl(202)), (XDP_DROP, XDP_DROP, XDP_DROP, XDP_DROP, XDP_PASS));
    // Room again after a delete.
    r.change(&store, SetChange::Delete(vec!["200".into()])).expect("delete 200");
    r.change(&store, SetChange::Add(vec!["202".into()])).expect("add 202");
    assert_eq!((ttl(200), ttl(202)), (XDP_PASS, XDP_DROP));

    assert_eq!(running_program(&store, name), before, "every change was made in place");
    let current = store.applied(name).expect("applied").current.expect("current");
    let elements = |s: &str| current.elements(s).expect("elements");
    assert_eq!((elements("a"), elements("b")), (vec!["443".to_string()], vec!["22".to_string(), "80".to_string()]));
    assert_eq!(elements("r"), ["100..107", "201", "202"]);
    assert_eq!(elements("w2"), ["198.18.6.0/24", "2001:db8:77:1::/64"]);
    // Several elements at once reload the set: the other sets keep theirs.
    a.change(&store, SetChange::Add(vec!["1000".into(), "1001".into()])).expect("add two");
    assert_ne!(running_program(&store, name), before, "a reload");
    assert_eq!((port(22), port(443), port(1001), ttl(202)), (XDP_TX, XDP_DROP, XDP_DROP, XDP_DROP));
    assert_eq!((from6("2001:db8:77:1::1"), mac([2, 0, 0, 0, 0, 0xbb])), (XDP_TX, XDP_DROP));
}
