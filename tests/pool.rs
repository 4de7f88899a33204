//! `xpol pool`: the load balancer's pools changed on an applied policy.
//!
//! Which backend a flow goes to is read from the running program itself:
//! each flow's packet is test-run (`BPF_PROG_TEST_RUN`) through the program
//! the policy's link runs, on its real maps (flow table, Maglev table,
//! backends), and the frame it sends is taken apart (`lb::decapsulate`).
//! What a new flow should get is computed here from the documented flow
//! hash and `maglev::build_table`, independently of the runtime's table
//! plumbing (slots, halves, batches).
//!
//! One test drives the library in the host's store, under a name of its
//! own (as `tests/apply.rs` does), to see the ring's halves and the control
//! word; the other drives the `xpol` binary in a private bpffs (`Host`),
//! one process per command.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use xpol_lang::maglev;
use xpol_runtime::lb;
use xpol_runtime::lb_edit::{PoolChange, PoolEditor};
use xpol_runtime::sys;

mod common;
use common::host::{apply_in_host_store, running_program, Host};
use common::net::Net;

fn usable() -> bool {
    xpol_runtime::testing::kernel_or_skip("xpol pool end to end") && ["unshare", "nsenter", "ip"].iter().all(|p| Command::new(p).arg("--version").output().is_ok())
}

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

/// Two pools: `web` (three backends, room for the default 256) and
/// `small` (room for 2), each behind a VIP; a set, to reload by.
const POLICY: &str = "\
pool web = { 198.18.1.10, 198.18.1.11, 198.18.1.12 }
pool small max 2 = { 198.18.2.10 }
set blocked: cidr = { 203.0.113.0/24 }
xdp /ip.src in blocked/ { drop }
xdp /ip.dst == 198.18.0.100/ { lb(web, encap: ipip, src: 198.18.0.1) }
xdp /ip.dst == 198.18.0.101/ { lb(small, encap: ipip, src: 198.18.0.1) }
xdp { pass }
";

fn v4(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// Flow `i`: a TCP connection to the VIP's port 80 from its own source
/// address and port.
fn flow(i: u32) -> (Ipv4Addr, u16) {
    (Ipv4Addr::new(198, 19, (i / 200) as u8, (i % 200) as u8 + 1), 10_000 + (i % 50_000) as u16)
}

fn packet(i: u32) -> Vec<u8> {
    let (src, sport) = flow(i);
    xpol_runtime::packet::PacketSpec::tcp4(src, VIP, sport, 80).ack().build()
}

/// The flow hash as documented (`xpol_lang::maglev`): the 5-tuple's words.
fn flow_hash(i: u32) -> u32 {
    let (src, sport) = flow(i);
    // Addresses as `maglev::addr_words` feeds them: their bytes as a
    // little-endian word.
    let word = |a: Ipv4Addr| u32::from_le_bytes(a.octets());
    maglev::murmur3_words(maglev::FLOW_SEED, &[word(src), word(VIP), u32::from(sport) << 16 | 80, 6])
}

/// Where the program sends flow `i`'s packet: the outer destination of
/// the frame it sent, or `None` when it dropped it.
fn sent_to(prog: &OwnedFd, i: u32) -> Option<IpAddr> {
    let (ret, frame) = sys::prog_test_run_frame(prog.as_fd(), &packet(i)).expect("test run");
    if ret == 1 {
        return None; // XDP_DROP: no backend
    }
    let e = lb::decapsulate(&frame).unwrap_or_else(|| panic!("flow {i}: not an encapsulated frame (action {ret})"));
    Some(e.outer_dst)
}

/// What the pool should be, and what the flow table and counters should
/// hold, kept beside the kernel's.
#[derive(Default)]
struct Model {
    /// Backends and weights.
    backends: Vec<(IpAddr, u32)>,
    /// The backend each flow went to last.
    flows: HashMap<u32, IpAddr>,
    /// Per backend: packets and new flows since it was added.
    packets: HashMap<IpAddr, u64>,
    new_flows: HashMap<IpAddr, u64>,
}

impl Model {
    fn new(backends: &[(&str, u32)]) -> Model {
        Model { backends: backends.iter().map(|&(a, w)| (v4(a), w)).collect(), ..Default::default() }
    }

    /// The Maglev table of the pool, as addresses.
    fn table(&self) -> Vec<Option<IpAddr>> {
        let octets: Vec<[u8; 4]> = self.backends.iter().map(|(a, _)| match a {
            IpAddr::V4(a) => a.octets(),
            IpAddr::V6(_) => unreachable!("IPv4 pools"),
        }).collect();
        let input: Vec<maglev::MaglevBackend> = octets.iter().zip(&self.backends).map(|(o, &(_, weight))| maglev::MaglevBackend { addr: o, weight }).collect();
        let table = maglev::build_table(&input, maglev::DEFAULT_TABLE_SIZE).expect("a table");
        table.iter().map(|&i| self.backends.get(i as usize).map(|b| b.0)).collect()
    }

    fn set(&mut self, addr: &str, weight: Option<u32>) {
        let addr = v4(addr);
        self.backends.retain(|b| b.0 != addr);
        if let Some(w) = weight {
            self.backends.push((addr, w));
        }
    }

    /// Sends each flow once through `prog`; checks that a flow the flow
    /// table knows (on a backend still there) keeps its backend, and that
    /// any other goes where the table says. Returns how many went by the
    /// table.
    fn send(&mut self, prog: &OwnedFd, flows: std::ops::Range<u32>) -> usize {
        let table = self.table();
        let mut by_table = 0;
        for i in flows {
            let got = sent_to(prog, i).unwrap_or_else(|| panic!("flow {i} dropped"));
            let kept = self.flows.get(&i).copied().filter(|b| self.backends.iter().any(|(a, _)| a == b));
            match kept {
                Some(b) => assert_eq!(got, b, "flow {i} is established on {b}: it stays there"),
                None => {
                    let want = table[(flow_hash(i) % maglev::DEFAULT_TABLE_SIZE) as usize].expect("a backend");
                    assert_eq!(got, want, "new flow {i} goes where the Maglev table says");
                    *self.new_flows.entry(got).or_default() += 1;
                    by_table += 1;
                }
            }
            *self.packets.entry(got).or_default() += 1;
            self.flows.insert(i, got);
        }
        by_table
    }

    /// How many established flows (sent before) the table of the pool now
    /// would send elsewhere: they prove that the flow table kept them.
    fn would_move(&self, flows: std::ops::Range<u32>) -> usize {
        let table = self.table();
        flows.filter(|i| self.flows.get(i).is_some_and(|b| table[(flow_hash(*i) % maglev::DEFAULT_TABLE_SIZE) as usize] != Some(*b))).count()
    }

    /// A backend added afresh: its counters start at 0.
    fn restart(&mut self, addr: &str) {
        self.packets.remove(&v4(addr));
        self.new_flows.remove(&v4(addr));
    }
}

/// The pool's ring half `half` as addresses (through the live backends'
/// slots).
fn ring_addrs(editor: &PoolEditor, half: u32) -> Vec<Option<IpAddr>> {
    let slots: HashMap<u32, IpAddr> = editor.backends().expect("backends").iter().map(|b| (b.slot, b.addr)).collect();
    editor.ring(half).expect("ring").iter().map(|s| slots.get(s).copied()).collect()
}

/// Everything a refused change must leave as it was.
fn snapshot(editor: &PoolEditor) -> (Vec<lb::LiveBackend>, u32, Vec<u32>) {
    let half = editor.active_half().expect("half");
    (editor.backends().expect("backends"), half, editor.ring(half).expect("ring"))
}

/// Adds, drains, reweighs and deletes backends of a running pool through
/// the library, and checks after each change: one switch of the control
/// word to the half holding the new table (the other half untouched), new
/// flows where that table says, established flows where they were (unless
/// their backend went), a freed slot's old flows balanced again when it is
/// taken, the per-backend counters, and refusals that change nothing.
#[test]
fn pool_changes_switch_tables_and_keep_established_flows() {
    if !usable() {
        return;
    }
    use xpol_runtime::store::Store;
    let net = Net::new();
    let policy = apply_in_host_store(&net, "pool", POLICY);
    let name = policy.0.as_str();
    let store = Store::write().expect("store");
    let prog = sys::prog_fd_by_id(running_program(&store, name)).expect("the running program");
    let mut web = PoolEditor::open(&store, name, "web").expect("editor");
    let mut model = Model::new(&[("198.18.1.10", 1), ("198.18.1.11", 1), ("198.18.1.12", 1)]);
    assert_eq!(web.active_half().expect("half"), 0, "the loader fills half 0");
    assert_eq!(ring_addrs(&web, 0), model.table(), "the loaded table");
    assert_eq!(model.send(&prog, 0..600), 600);

    // Add: one switch, to half 1, which holds the new table; half 0 keeps the old.
    let old_table = model.table();
    web.change(&store, PoolChange::Add { addr: v4("198.18.1.13"), weight: 1 }).expect("add");
    model.set("198.18.1.13", Some(1));
    assert_eq!(web.active_half().expect("half"), 1, "the control word names the other half");
    assert_eq!(ring_addrs(&web, 1), model.table(), "the new table in the half now in use");
    assert_eq!(ring_addrs(&web, 0), old_table, "the old table untouched in the other half");
    assert!(model.would_move(0..600) > 100, "a quarter of the flows would move by the table: the flow table holds them");
    model.send(&prog, 0..600);
    model.send(&prog, 1000..1600);
    assert!(model.flows.values().filter(|b| **b == v4("198.18.1.13")).count() > 100, "new flows reach the added backend");

    // Drain: established flows of .11 stay, new flows never go there.
    web.change(&store, PoolChange::Drain(v4("198.18.1.11"))).expect("drain");
    model.set("198.18.1.11", Some(0));
    assert_eq!(web.active_half().expect("half"), 0);
    assert_eq!(ring_addrs(&web, 0), model.table());
    let on_11 = model.flows.values().filter(|b| **b == v4("198.18.1.11")).count();
    assert!(on_11 > 100, "flows established on .11: {on_11}");
    model.send(&prog, 0..600);
    model.send(&prog, 1000..1600);
    model.send(&prog, 2000..2600);
    assert!((2000..2600).all(|i| model.flows[&i] != v4("198.18.1.11")), "no new flow goes to the drained backend");

    // Weight: .12 takes three shares.
    web.change(&store, PoolChange::Weight { addr: v4("198.18.1.12"), weight: 3 }).expect("weight");
    model.set("198.18.1.12", Some(3));
    assert_eq!(ring_addrs(&web, 1), model.table());
    model.send(&prog, 3000..4000);
    let share = |b: &str| (3000..4000).filter(|i| model.flows[i] == v4(b)).count();
    assert!(share("198.18.1.12") > 2 * share("198.18.1.10"), "weight 3 against 1: {} and {}", share("198.18.1.12"), share("198.18.1.10"));

    // Delete .10: its flows are balanced again by the table; the others stay.
    let on_10: Vec<u32> = model.flows.iter().filter(|(_, b)| **b == v4("198.18.1.10")).map(|(i, _)| *i).collect();
    assert!(!on_10.is_empty());
    web.change(&store, PoolChange::Delete(v4("198.18.1.10"))).expect("delete");
    model.set("198.18.1.10", None);
    assert_eq!(ring_addrs(&web, 0), model.table());
    assert!(web.backends().expect("backends").iter().all(|b| b.addr != v4("198.18.1.10")), "its slot is free");
    for range in [0..600, 1000..1600, 2000..2600, 3000..4000] {
        model.send(&prog, range);
    }
    assert!(on_10.iter().all(|i| model.flows[i] != v4("198.18.1.10")));

    // A freed slot taken again: flows the old backend left in the flow
    // table (not seen since its delete) go by the table, not to the newcomer.
    let on_12: Vec<u32> = model.flows.iter().filter(|(_, b)| **b == v4("198.18.1.12")).map(|(i, _)| *i).collect();
    let slot_12 = web.backends().expect("backends").iter().find(|b| b.addr == v4("198.18.1.12")).expect(".12").slot;
    web.change(&store, PoolChange::Delete(v4("198.18.1.12"))).expect("delete .12");
    model.set("198.18.1.12", None);
    web.change(&store, PoolChange::Add { addr: v4("198.18.1.14"), weight: 1 }).expect("add .14");
    web.change(&store, PoolChange::Add { addr: v4("198.18.1.15"), weight: 1 }).expect("add .15");
    model.set("198.18.1.14", Some(1));
    model.set("198.18.1.15", Some(1));
    model.restart("198.18.1.14");
    model.restart("198.18.1.15");
    let slots: HashMap<IpAddr, u32> = web.backends().expect("backends").iter().map(|b| (b.addr, b.slot)).collect();
    assert_eq!((slots[&v4("198.18.1.14")], slots[&v4("198.18.1.15")]), (0, slot_12), "the lowest free slots are taken: .10's, then .12's");
    let table = model.table();
    let elsewhere = on_12.iter().filter(|i| table[(flow_hash(**i) % maglev::DEFAULT_TABLE_SIZE) as usize] != Some(v4("198.18.1.15"))).count();
    assert!(elsewhere > 100, "flows of .12 the table sends elsewhere than .15: {elsewhere}");
    for range in [0..600, 1000..1600, 2000..2600, 3000..4000] {
        model.send(&prog, range);
    }

    // Counters: per backend, since it was added; and flows now in the table.
    let stats = web.maps().pool_stats().expect("stats");
    let pool = stats.iter().find(|p| p.name == "web").expect("web");
    assert_eq!(pool.backends.len(), 4);
    for b in &pool.backends {
        let addr = b.backend.addr;
        assert_eq!(b.packets, model.packets.get(&addr).copied().unwrap_or(0), "packets of {addr}");
        assert_eq!(b.new_flows, model.new_flows.get(&addr).copied().unwrap_or(0), "new flows of {addr}");
        assert_eq!(b.active_flows, model.flows.values().filter(|x| **x == addr).count() as u64, "flows of {addr} in the flow table");
        assert_eq!(b.bytes, b.packets * packet(0).len() as u64, "bytes of {addr}");
        assert_eq!(b.backend.weight, model.backends.iter().find(|x| x.0 == addr).expect("in the model").1);
    }
    assert_eq!(pool.no_backend, 0);

    // Refusals: an error naming the problem, and nothing written.
    let before = snapshot(&web);
    let refused = |web: &mut PoolEditor, change: PoolChange, says: &str| {
        let e = web.change(&store, change).expect_err("refused").to_string();
        assert!(e.contains(says), "{change:?}: `{e}` does not say `{says}`");
        assert_eq!(snapshot(web), before, "{change:?} changed nothing");
    };
    refused(&mut web, PoolChange::Add { addr: v4("198.18.1.13"), weight: 2 }, "198.18.1.13 is already in the pool (active, weight 1)");
    refused(&mut web, PoolChange::Add { addr: v4("2001:db8::1"), weight: 1 }, "2001:db8::1 is an IPv6 address, and the pool holds IPv4 backends");
    refused(&mut web, PoolChange::Add { addr: v4("224.0.0.1"), weight: 1 }, "cannot be a backend");
    refused(&mut web, PoolChange::Add { addr: v4("198.18.1.16"), weight: 65_536 }, "the weight 65536 is out of range");
    refused(&mut web, PoolChange::Delete(v4("198.18.1.99")), "198.18.1.99 is not in the pool");
    refused(&mut web, PoolChange::Drain(v4("198.18.1.10")), "198.18.1.10 is not in the pool");
    refused(&mut web, PoolChange::Weight { addr: v4("198.18.1.11"), weight: 100_000 }, "out of range");

    // A full pool.
    let mut small = PoolEditor::open(&store, name, "small").expect("small");
    small.change(&store, PoolChange::Add { addr: v4("198.18.2.11"), weight: 1 }).expect("room for 2");
    let before = snapshot(&small);
    let e = small.change(&store, PoolChange::Add { addr: v4("198.18.2.12"), weight: 1 }).expect_err("full").to_string();
    assert!(e.contains("pool `small`") && e.contains("it is full: it holds at most 2 backends (`max 2`"), "{e}");
    assert_eq!(snapshot(&small), before);
    assert!(PoolEditor::open(&store, name, "nosuch").err().expect("no such pool").to_string().contains("has no pool `nosuch` (its pools: web, small)"));

    // A backends map changed from outside (root can): a second slot with
    // an address already there is named, and nothing is written.
    let current = store.applied(name).expect("applied").current.expect("current");
    let backends = sys::obj_get(&current.dir.join("xl_web_be"), 0).expect("the pinned backends map");
    let mut planted = [0u8; 20];
    planted[..4].copy_from_slice(&[198, 18, 1, 13]);
    planted[16..].copy_from_slice(&(1u32 | 1 << 16).to_le_bytes());
    sys::map_update(backends.as_fd(), &9u32.to_le_bytes(), &planted, 0).expect("plant");
    let before = snapshot(&web);
    let slot_13 = before.0.iter().find(|b| b.addr == v4("198.18.1.13")).expect(".13").slot;
    let e = web.change(&store, PoolChange::Weight { addr: v4("198.18.1.11"), weight: 1 }).expect_err("refused").to_string();
    assert!(e.contains(&format!("slots {slot_13} and 9 both hold 198.18.1.13")) && e.contains("changed from outside xpol"), "{e}");
    assert_eq!(snapshot(&web), before);
    assert_eq!(web.maps().pool_stats().expect("still readable")[0].backends.len(), 5, "listed as it is");
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write policy");
    path
}

/// `xpol pool NAME POOL list --json` as JSON.
fn listed(host: &Host, net: &Net, pool: &str) -> serde_json::Value {
    serde_json::from_str(&host.ok(&net.b, &["pool", "p", pool, "list", "--json"])).expect("JSON")
}

/// The backends of a `list --json` as (address, weight, state).
fn members(list: &serde_json::Value) -> Vec<(String, u64, String)> {
    list["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| (b["address"].as_str().expect("address").to_string(), b["weight"].as_u64().expect("weight"), b["state"].as_str().expect("state").to_string()))
        .collect()
}

fn member(addr: &str, weight: u64, state: &str) -> (String, u64, String) {
    (addr.to_string(), weight, state.to_string())
}

/// The program the applied policy `p` runs now (it changes with each
/// reload), opened by id from `xpol list --json`.
fn program(host: &Host, net: &Net) -> OwnedFd {
    let list: serde_json::Value = serde_json::from_str(host.ok(&net.b, &["list", "--json"]).lines().next().expect("a line")).expect("JSON");
    let id = list["policy"]["links"][0]["prog_id"].as_u64().expect("a program id");
    sys::prog_fd_by_id(id as u32).expect("the running program")
}

/// Where flows `range` go now.
fn routes(prog: &OwnedFd, range: std::ops::Range<u32>) -> Vec<Option<IpAddr>> {
    range.map(|i| sent_to(prog, i)).collect()
}

/// The `xpol` binary, one process per command, in a private bpffs: changes
/// persist from one command to the next, and across reloads that keep the
/// pool's declaration (a set change, a re-apply with another rule), with
/// the flow table (established flows stay); a changed declaration starts
/// afresh. Stats in JSON from `pool list` and `stats`. Bad input is
/// refused with the reason and a failing exit status, and changes nothing.
#[test]
fn pool_commands_persist_and_refuse_bad_input() {
    if !usable() {
        return;
    }
    let net = Net::new();
    let host = Host::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "p.xpol", POLICY);
    let p = path.to_str().expect("utf-8");
    host.ok(&net.b, &["apply", p, "-i", &net.vb, "--name", "p"]);
    let list = listed(&host, &net, "web");
    assert_eq!(list["max"], 256);
    assert_eq!(list["table_size"], 65537);
    assert_eq!(members(&list), [member("198.18.1.10", 1, "active"), member("198.18.1.11", 1, "active"), member("198.18.1.12", 1, "active")]);

    let prog = program(&host, &net);
    let established = routes(&prog, 0..300);
    assert!(established.iter().all(Option::is_some));
    host.ok(&net.b, &["pool", "p", "web", "add", "198.18.1.13", "weight", "2"]);
    host.ok(&net.b, &["pool", "p", "web", "drain", "198.18.1.11"]);
    host.ok(&net.b, &["pool", "p", "web", "weight", "198.18.1.10", "3"]);
    host.ok(&net.b, &["pool", "p", "web", "del", "198.18.1.12"]);
    host.ok(&net.b, &["pool", "p", "web", "add", "198.18.1.14"]);
    let live = [member("198.18.1.10", 3, "active"), member("198.18.1.11", 0, "drained"), member("198.18.1.14", 1, "active"), member("198.18.1.13", 2, "active")];
    let list = listed(&host, &net, "web");
    assert_eq!(members(&list), live, "by slot: .14 took .12's");
    assert_eq!(list["backends"][2]["slot"], 2);
    let now = routes(&prog, 0..300);
    for (i, (before, after)) in established.iter().zip(&now).enumerate() {
        if *before != Some(v4("198.18.1.12")) {
            assert_eq!(before, after, "flow {i} keeps its backend across five commands");
        } else {
            assert!(after.is_some_and(|a| a != v4("198.18.1.12")), "flow {i} of the deleted backend goes elsewhere");
        }
    }

    // The counters, in `pool list --json` and `stats --json`.
    let list = listed(&host, &net, "web");
    let backends = list["backends"].as_array().expect("backends");
    let sum = |field: &str| backends.iter().map(|b| b[field].as_u64().expect("a count")).sum::<u64>();
    let on_12 = established.iter().filter(|b| **b == Some(v4("198.18.1.12"))).count() as u64;
    assert_eq!(sum("packets"), 600 - on_12, "every packet counted, but those of the deleted backend");
    assert_eq!(sum("active_flows"), 300, "each flow in the flow table once");
    // The first packets of the flows that stayed, and the second ones of
    // .12's (their first ones went with .12's counters).
    assert_eq!(sum("new_flows"), 300, "new flows");
    assert!(on_12 > 0, "some flows went to .12");
    let report: serde_json::Value = serde_json::from_str(&host.ok(&net.b, &["stats", "p", "--json"])).expect("JSON");
    let pools = report["pools"].as_array().expect("pools");
    assert_eq!(pools.iter().map(|p| p["name"].as_str().expect("name")).collect::<Vec<_>>(), ["web", "small"]);
    assert_eq!(pools[0]["backends"], list["backends"], "stats shows what pool list shows");
    assert!(host.ok(&net.b, &["stats", "p"]).contains("pool web:"));

    // Refused, with the reason; nothing changed.
    let before = host.ok(&net.b, &["pool", "p", "web", "list", "--json"]);
    for (args, says) in [
        (vec!["pool", "nope", "web", "list"], "no policy is applied as `nope`"),
        (vec!["pool", "nope", "web", "add", "198.18.1.20"], "no policy is applied as `nope`"),
        (vec!["pool", "p", "nope", "add", "198.18.1.20"], "has no pool `nope` (its pools: web, small)"),
        (vec!["pool", "p", "nope", "list"], "has no pool `nope` (its pools: web, small)"),
        (vec!["pool", "p", "web", "add", "2001:db8::10"], "2001:db8::10 is an IPv6 address, and the pool holds IPv4 backends"),
        (vec!["pool", "p", "web", "add", "198.18.1.13"], "198.18.1.13 is already in the pool (active, weight 2)"),
        (vec!["pool", "p", "web", "add", "198.18.1.11", "weight", "4"], "198.18.1.11 is already in the pool (drained, weight 0)"),
        (vec!["pool", "p", "web", "del", "198.18.1.99"], "198.18.1.99 is not in the pool"),
        (vec!["pool", "p", "web", "drain", "198.18.1.12"], "198.18.1.12 is not in the pool"),
        (vec!["pool", "p", "web", "weight", "198.18.1.10", "70000"], "the weight 70000 is out of range: a weight is 0 (drained) to 65535"),
        (vec!["pool", "p", "web", "weight", "198.18.1.10", "1.5"], "not a weight"),
        (vec!["pool", "p", "web", "add", "198.18.1.20", "weight", "x"], "not a weight"),
        (vec!["pool", "p", "web", "add", "198.18.1.20", "wait", "2"], "after the address, `weight W` or nothing"),
        (vec!["pool", "p", "web", "add", "198.18.1"], "is not an IPv4 or IPv6 address"),
        (vec!["pool", "p", "web", "add", "255.255.255.255"], "cannot be a backend"),
    ] {
        let out = host.xpol(&net.b, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "xpol {}: {err}", args.join(" "));
    }
    host.ok(&net.b, &["pool", "p", "small", "add", "198.18.2.11"]);
    let full = host.xpol(&net.b, &["pool", "p", "small", "add", "198.18.2.12"]);
    let err = String::from_utf8_lossy(&full.stderr);
    assert!(!full.status.success() && err.contains("pool `small` of `p`: it is full: it holds at most 2 backends (`max 2`"), "{err}");
    assert_eq!(members(&listed(&host, &net, "small")), [member("198.18.2.10", 1, "active"), member("198.18.2.11", 1, "active")]);
    assert_eq!(host.ok(&net.b, &["pool", "p", "web", "list", "--json"]), before, "nothing changed, counters included");

    // A set change that reloads the policy keeps the pool and its flows.
    host.ok(&net.b, &["set", "p", "blocked", "flush"]);
    let prog = program(&host, &net);
    let before: serde_json::Value = serde_json::from_str(&before).expect("JSON");
    assert_eq!(listed(&host, &net, "web")["backends"], before["backends"], "the backends and their counters");
    assert_eq!(routes(&prog, 0..300), now, "established flows stay across the reload");

    // A re-apply with another rule keeps it; a changed declaration does not.
    let edited = write(dir.path(), "p.xpol", &POLICY.replace("xdp { pass }", "xdp /tcp.dport == 23/ { drop }\nxdp { pass }"));
    let out = host.xpol(&net.b, &["apply", edited.to_str().expect("utf-8"), "-i", &net.vb, "--name", "p"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("pools kept live: web, small; pools from the new source: none"), "{err}");
    assert_eq!(members(&listed(&host, &net, "web")), live);
    assert_eq!(routes(&program(&host, &net), 0..300), now, "established flows stay across the re-apply");
    let redeclared = write(dir.path(), "p.xpol", &POLICY.replace("198.18.1.12 }", "198.18.1.12, 198.18.1.20 }"));
    let out = host.xpol(&net.b, &["apply", redeclared.to_str().expect("utf-8"), "-i", &net.vb, "--name", "p", "--json"]);
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(outcome["outcome"]["pools_kept"], serde_json::json!(["small"]), "{outcome}");
    assert_eq!(outcome["outcome"]["pools_reset"], serde_json::json!(["web"]), "{outcome}");
    assert_eq!(
        members(&listed(&host, &net, "web")),
        [member("198.18.1.10", 1, "active"), member("198.18.1.11", 1, "active"), member("198.18.1.12", 1, "active"), member("198.18.1.20", 1, "active")]
    );
    assert_eq!(members(&listed(&host, &net, "small")), [member("198.18.2.10", 1, "active"), member("198.18.2.11", 1, "active")], "`small` kept");
}

/// `xpol run --watch`'s replace (`apply::replace_attached`) hands on the
/// maps of the pools declared as before: their flow tables and counters
/// go on; a pool whose declaration changed starts afresh.
#[test]
fn run_watch_replace_keeps_unchanged_pools() {
    if !usable() {
        return;
    }
    use xpol_runtime::loader::{LoadedPolicy, XdpAttachMode};
    let net = Net::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let object = |text: &str| {
        let path = write(dir.path(), "w.xpol", text);
        xpol_compiler::build(&path, &xpol_compiler::BuildOptions::default()).output.expect("compiles").object
    };
    let netns = PathBuf::from("/run/netns").join(&net.b);
    let flows = |policy: &mut LoadedPolicy| -> Vec<IpAddr> {
        (0..300).map(|i| lb::decapsulate(&policy.test_run("xdp", &packet(i)).expect("test run").packet).expect("encapsulated").outer_dst).collect()
    };
    let web = |policy: &LoadedPolicy| policy.maps().pool_stats().expect("stats").into_iter().find(|p| p.name == "web").expect("web");
    let totals = |p: &lb::PoolStats| (p.backends.iter().map(|b| b.packets).sum::<u64>(), p.backends.iter().map(|b| b.active_flows).sum::<u64>());

    let mut policy = LoadedPolicy::load(&object(POLICY)).expect("loads");
    sys::in_netns(&netns, None, || policy.attach("xdp", &net.vb, XdpAttachMode::Auto)).expect("netns").expect("attach");
    let before = flows(&mut policy);
    assert_eq!(totals(&web(&policy)), (300, 300));

    let edited = POLICY.replace("xdp { pass }", "xdp /tcp.dport == 23/ { drop }\nxdp { pass }");
    let done = sys::in_netns(&netns, None, || xpol_runtime::apply::replace_attached(&mut policy, &object(&edited), &["xdp".to_string()], &net.vb, XdpAttachMode::Auto))
        .expect("netns")
        .expect("replaced");
    assert_eq!(done.pools_kept, ["web", "small"]);
    assert_eq!(totals(&web(&policy)), (300, 300), "the new program has the old flow table and counters");
    assert_eq!(flows(&mut policy), before);
    assert_eq!(totals(&web(&policy)), (600, 300), "established: no new flow");

    let redeclared = edited.replace("198.18.1.12 }", "198.18.1.12, 198.18.1.20 }");
    let done = sys::in_netns(&netns, None, || xpol_runtime::apply::replace_attached(&mut policy, &object(&redeclared), &["xdp".to_string()], &net.vb, XdpAttachMode::Auto))
        .expect("netns")
        .expect("replaced");
    assert_eq!(done.pools_kept, ["small"]);
    assert_eq!(totals(&web(&policy)), (0, 0), "a changed pool starts afresh");
    assert_eq!(web(&policy).backends.len(), 4);
}

/// Sends datagrams to the VIP's port 7, each from a new socket (a new
/// source port: a new flow, which the Maglev table balances), until its
/// standard input closes; says "ready" after the first, and at the end
/// prints how many it sent.
const NEW_FLOWS_SENDER: &str = r#"
import socket, select, sys, time
n = 0
while True:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"%d" % n, (sys.argv[1], 7)); s.close(); n += 1
    if n == 1:
        print("ready", flush=True)
    if select.select([sys.stdin], [], [], 0)[0]:
        break
    time.sleep(0.001)
print(n)
"#;

/// Runs `NEW_FLOWS_SENDER` from namespace a while `changes` runs; the
/// number of datagrams it sent.
fn under_traffic(net: &Net, changes: impl FnOnce()) -> u64 {
    use std::io::Read;
    let mut sender = common::net::python_ready(&net.a, 120, NEW_FLOWS_SENDER, &[&VIP.to_string()]);
    changes();
    drop(sender.stdin.take());
    assert!(common::net::wait_bounded(&mut sender, std::time::Duration::from_secs(20)).success());
    let mut out = String::new();
    sender.stdout.take().expect("stdout").read_to_string(&mut out).expect("read");
    let sent = out.split_whitespace().last().expect("a count").parse().expect("a number");
    assert!(sent > 30, "the stream ran: {sent}");
    sent
}

/// Real traffic, every datagram a new flow (so each one reads the Maglev
/// table), while the table is switched 30 times (adds, weights, drains;
/// some backend always has a weight): every datagram is counted on a
/// backend. Then 20 switches that add and delete backends: no datagram
/// meets a freed slot.
#[test]
fn table_switches_under_traffic_leave_no_packet_without_a_backend() {
    if !usable() || Command::new("python3").arg("--version").output().is_err() {
        return;
    }
    use xpol_runtime::store::Store;
    let net = Net::new();
    let policy = apply_in_host_store(&net, "pool-traffic", POLICY);
    let name = policy.0.as_str();
    common::net::ip(&["-n", &net.a, "route", "add", &format!("{VIP}/32"), "via", &net.addr_b]);
    let store = Store::write().expect("store");
    let mut web = PoolEditor::open(&store, name, "web").expect("editor");
    let counted = |web: &PoolEditor| {
        let pool = web.maps().pool_stats().expect("stats").into_iter().find(|p| p.name == "web").expect("web");
        (pool.backends.iter().map(|b| b.packets).sum::<u64>(), pool.no_backend)
    };
    // The last datagrams may still be on their way through the veth.
    let settled = |web: &PoolEditor, sent: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while counted(web).0 < sent && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        counted(web)
    };

    let mut halves = Vec::new();
    let sent = under_traffic(&net, || {
        for i in 0..10 {
            let extra = v4(&format!("198.18.1.{}", 100 + i));
            web.change(&store, PoolChange::Add { addr: extra, weight: 1 }).expect("add");
            web.change(&store, PoolChange::Weight { addr: v4("198.18.1.10"), weight: 1 + i }).expect("weight");
            web.change(&store, PoolChange::Drain(extra)).expect("drain");
            halves.push(web.active_half().expect("half"));
        }
    });
    assert_eq!(halves, [1, 0, 1, 0, 1, 0, 1, 0, 1, 0], "three switches per round");
    assert_eq!(settled(&web, sent), (sent, 0), "every datagram on a backend, none without one");

    under_traffic(&net, || {
        for i in 0..10 {
            let extra = v4(&format!("198.18.1.{}", 200 + i));
            web.change(&store, PoolChange::Add { addr: extra, weight: 5 }).expect("add");
            web.change(&store, PoolChange::Delete(extra)).expect("delete");
        }
    });
    assert_eq!(counted(&web).1, 0, "no datagram met a slot freed under it");
}
