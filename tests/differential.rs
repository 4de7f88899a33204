//! Differential testing: every compiled policy, run in the kernel, against
//! the reference semantics (xpol_compiler::reference) on the same packets:
//! well-formed ones, adversarial ones, truncations, and seeded random
//! mutations. Verdicts and the rules that fired must be equal, packet by
//! packet, with map state carried from packet to packet on both sides, and
//! so must the records `log` statements write (read from the kernel's
//! ring buffer after each packet).
//!
//! Two sources of policies: the fixed examples and golden policies, and
//! seeded random policies (tests/policygen) with packets drawn from the same
//! constant pools. For generated policies the rule counters (packets and
//! bytes), every `@map` and the log records are compared too, and a disagreement is shrunk
//! (rules, conjuncts, statements, packets, packet bytes) before it is shown.

mod common;
mod policygen;

use common::Rng;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use xpol_compiler::ir::{self, CmpOp, ExprKind, MapOp, StmtKind, Type};
use xpol_compiler::reference::{evaluate, Evaluation, KeyPart, Outcome, State};
use xpol_lang::ast::Hook;
use xpol_runtime::loader::{Action, LoadOptions, LoadedPolicy};
use xpol_runtime::packet::{hex, Ipv4Spec, Ipv6Ext, PacketSpec, VlanTag, L3, L4};


fn corpus() -> Vec<Vec<u8>> {
    let v4: Vec<Ipv4Addr> = ["198.18.7.7", "203.0.113.9", "198.51.100.7", "198.51.100.8", "10.1.2.3", "8.8.8.8", "192.0.2.200", "17.0.0.5", "198.18.0.99", "198.18.53.1", "224.0.0.5"]
        .iter()
        .map(|s| s.parse().expect("v4"))
        .collect();
    let v6: Vec<Ipv6Addr> = ["2001:db8:bad::1", "2001:db8:1::5", "2001:db8::7", "fe80::1", "2a00::1", "2001:db8:dead::9", "2001:db8:53::1"]
        .iter()
        .map(|s| s.parse().expect("v6"))
        .collect();
    let ports = [0u16, 22, 23, 25, 53, 80, 443, 3003, 4789, 5010, 8080, 1999];
    let mut base = Vec::new();
    for (i, &p) in ports.iter().enumerate() {
        let (s4, d4) = (v4[i % v4.len()], v4[(i + 3) % v4.len()]);
        let (s6, d6) = (v6[i % v6.len()], v6[(i + 2) % v6.len()]);
        base.push(PacketSpec::tcp4(s4, d4, 40000, p).flags([0x02, 0x12, 0x10, 0x01, 0x29, 0][i % 6]));
        base.push(PacketSpec::udp4(s4, d4, 1000 + i as u16, p).payload(i * 3));
        base.push(PacketSpec::tcp6(s6, d6, 40000, p).syn());
        base.push(PacketSpec::udp6(s6, d6, 5353, p));
    }
    for &s in &v4 {
        base.push(PacketSpec::tcp4(s, "198.19.255.1".parse().unwrap(), 1, 80).syn());
        base.push(PacketSpec::icmp4(s, "198.19.0.1".parse().unwrap(), 8, 0));
        base.push(PacketSpec::icmp4(s, "198.19.0.1".parse().unwrap(), 3, 4));
    }
    for &s in &v6 {
        base.push(PacketSpec::icmp6(s, "2001:db8::1".parse().unwrap(), 135, 0));
        base.push(PacketSpec::icmp6(s, "2001:db8::1".parse().unwrap(), 128, 0));
    }
    let ssh = || PacketSpec::tcp4("198.18.0.7".parse().unwrap(), "198.19.0.1".parse().unwrap(), 1, 22).syn();
    let ssh6 = || PacketSpec::tcp6("2001:db8::7".parse().unwrap(), "2001:db8::1".parse().unwrap(), 1, 22).syn();
    base.extend([
        ssh().vlan(100),
        ssh().vlan(150).eth([2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 2]),
        ssh().qinq(10, 20),
        ssh().qinq(10, 20).vlan(30),
        ssh().frag(0, true),
        ssh().frag(8, true),
        ssh().frag(1480, false),
        // An offset with bits in the first byte of the field (2048 and up),
        // with DF and MF around it: the L4 parser masks the field as loaded.
        ssh().frag(2048, false),
        ssh().frag(8192, true).ipv4(|ip| ip.dont_fragment = true),
        ssh().ipv4(|ip| ip.options = vec![1; 8]),
        ssh().ipv4(|ip| ip.ihl = Some(4)),
        ssh().ipv4(|ip| ip.total_len = Some(39)),
        ssh().ipv4(|ip| ip.dont_fragment = true),
        ssh().payload(1500),
        ssh6().ext(Ipv6Ext::HopByHop { len8: 0 }).ext(Ipv6Ext::Routing { len8: 1 }).ext(Ipv6Ext::Fragment { offset: 0, more: true, id: 1 }),
        ssh6().ext(Ipv6Ext::Fragment { offset: 16, more: false, id: 1 }),
        ssh6().ext(Ipv6Ext::Auth { len4: 4 }),
        ssh6().ipv6(|ip| ip.payload_len = Some(0)),
        PacketSpec::ethertype(0x0806, 28),
        PacketSpec::udp4("198.18.0.1".parse().unwrap(), "198.19.0.1".parse().unwrap(), 1, 4789),
    ]);
    for i in 0..9 {
        let mut s = ssh6();
        for _ in 0..i {
            s = s.ext(Ipv6Ext::DestOpts { len8: 0 });
        }
        base.push(s);
    }
    base.extend(gue6_packets());
    let mut out: Vec<Vec<u8>> = base.iter().map(|s| s.build()).collect();
    // UDP without a checksum to those VIPs.
    for (spec, l4) in [
        (PacketSpec::udp4("198.18.9.1".parse().unwrap(), "198.18.0.106".parse().unwrap(), 5353, 53).payload(11), 14 + 20),
        (PacketSpec::udp6("2001:db8:9::1".parse().unwrap(), "2001:db8::53".parse().unwrap(), 5353, 53).payload(11), 14 + 40),
    ] {
        let mut p = spec.build();
        p[l4 + 6..l4 + 8].copy_from_slice(&[0, 0]);
        out.push(p);
    }
    // Truncations of a few shapes.
    for spec in [ssh(), ssh6().ext(Ipv6Ext::HopByHop { len8: 0 }), ssh().qinq(1, 2)] {
        let full = spec.build();
        out.extend((14..full.len()).map(|n| full[..n].to_vec()));
    }
    // Random mutations of header bytes.
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let originals = out.clone();
    for p in &originals {
        for _ in 0..6 {
            let mut q = p.clone();
            for _ in 0..1 + rng.below(3) {
                let at = 12 + rng.below((q.len().min(90) - 12).max(1) as u64) as usize;
                if at < q.len() {
                    q[at] = rng.next() as u8;
                }
            }
            out.push(q);
        }
    }
    out
}

/// Packets to the VIPs of GUE over IPv6 in examples/lb.xpol (2001:db8::53,
/// UDP to port 53) and tests/golden/ok/lb.xpol (198.18.0.106 and
/// 2001:db8::106): those whose own checksums give the outer UDP checksum
/// (TCP, UDP, ICMP, ICMPv6), and those whose bytes are summed (fragments,
/// extension headers, UDP without a checksum, other protocols) or cannot
/// be (longer than the frame), at odd and even lengths; the corpus's
/// mutations then give them wrong checksums.
fn gue6_packets() -> Vec<PacketSpec> {
    let c4: Ipv4Addr = "198.18.9.1".parse().expect("v4");
    let c6: Ipv6Addr = "2001:db8:9::1".parse().expect("v6");
    let vip4: Ipv4Addr = "198.18.0.106".parse().expect("v4");
    let raw = |protocol: u8, n: usize| L4::Raw { protocol, bytes: (0..n).map(|i| (i * 5 + 1) as u8).collect() };
    let mut out = Vec::new();
    for vip6 in ["2001:db8::53", "2001:db8::106"] {
        let vip6: Ipv6Addr = vip6.parse().expect("v6");
        let udp6 = |n: usize| PacketSpec::udp6(c6, vip6, 5353, 53).payload(n);
        let tcp6 = |n: usize| PacketSpec::tcp6(c6, vip6, 40000, 53).ack().payload(n);
        out.extend([
            udp6(0),
            udp6(33),
            udp6(1001),
            udp6(7).vlan(8),
            tcp6(3),
            PacketSpec::icmp6(c6, vip6, 128, 0).payload(5),
            PacketSpec::icmp6(c6, vip6, 1, 4).payload(48),
            udp6(11).frag(0, true),
            udp6(300).frag(0, true),
            PacketSpec { l4: raw(17, 77), ..udp6(0) }.frag(1448, false),
            udp6(9).ext(Ipv6Ext::HopByHop { len8: 0 }),
            udp6(10).ext(Ipv6Ext::DestOpts { len8: 1 }).ext(Ipv6Ext::Routing { len8: 0 }),
            PacketSpec { l4: L4::None, ..udp6(0) },
            PacketSpec { l4: raw(47, 13), ..udp6(0) },
            udp6(20).ipv6(|ip| ip.payload_len = Some(1400)),
            udp6(20).ext(Ipv6Ext::HopByHop { len8: 0 }).ipv6(|ip| ip.payload_len = Some(1400)),
            udp6(20).ipv6(|ip| ip.payload_len = Some(0)),
        ]);
    }
    let udp4 = |n: usize| PacketSpec::udp4(c4, vip4, 5353, 53).payload(n);
    out.extend([
        udp4(0),
        udp4(33),
        PacketSpec::tcp4(c4, vip4, 40000, 80).syn().payload(1001),
        PacketSpec::icmp4(c4, vip4, 8, 0).payload(3),
        udp4(12).ipv4(|ip| ip.options = vec![1; 8]),
        udp4(11).frag(0, true),
        PacketSpec { l4: raw(17, 99), ..udp4(0) }.frag(1480, false),
        PacketSpec { l4: raw(47, 13), ..udp4(0) },
        udp4(20).ipv4(|ip| ip.total_len = Some(1400)),
        PacketSpec { l4: raw(6, 40), ..udp4(0) }.frag(8, true).ipv4(|ip| ip.total_len = Some(1400)),
    ]);
    out
}

fn policies() -> Vec<PathBuf> {
    let mut v = Vec::new();
    for dir in ["examples", "tests/golden/ok"] {
        for e in std::fs::read_dir(dir).expect("dir").flatten() {
            if e.path().extension().is_some_and(|x| x == "xpol") {
                v.push(e.path());
            }
        }
    }
    v.sort();
    v
}

fn outcome(a: Action) -> Option<Outcome> {
    Some(match a {
        Action::Pass => Outcome::Pass,
        Action::Drop => Outcome::Drop,
        Action::Tx => Outcome::Tx,
        Action::Abort => Outcome::Abort,
        Action::Redirect => Outcome::Redirect,
        Action::Other(_) => return None,
    })
}

/// `Lb` when the kernel sent on the frame the reference built for `lb`: up
/// the stack as it is (PASS; the FIB had no next hop), or with the next
/// hop's Ethernet addresses (TX, redirect).
fn balanced(got: &xpol_runtime::loader::RunOutcome, want: &Evaluation) -> Option<Outcome> {
    let frame = &want.lb.as_ref().filter(|b| b.backend.is_some())?.frame;
    let same = match got.action {
        Action::Pass => got.packet == *frame,
        Action::Tx | Action::Redirect => got.packet.get(12..) == frame.get(12..),
        _ => false,
    };
    same.then_some(Outcome::Lb)
}

/// The policy with every `limit` slowed to a unit (a packet, or a byte)
/// a minute, and its object: the kernel's clock moves while the packets
/// run, the reference's does not, and at that rate the run's few seconds
/// bring back no token and decide no byte (the rates as written are tested
/// with moved clocks in tests/limit.rs).
fn slowed_limits(mut ir: ir::Policy, sources: &xpol_lang::SourceMap) -> (ir::Policy, Vec<u8>) {
    for l in &mut ir.limits {
        l.period_ns = l.rate.saturating_mul(60_000_000_000);
    }
    let object = xpol_compiler::codegen::generate(&ir, sources, &xpol_compiler::BuildOptions::default()).unwrap_or_else(|e| panic!("slowed limits: {e:?}")).object;
    (ir, object)
}

fn differential(path: &Path, packets: &[Vec<u8>]) -> usize {
    let b = xpol_compiler::build(path, &xpol_compiler::BuildOptions::default());
    let out = b.output.expect("compiles");
    let (ir, object) = if out.ir.limits.is_empty() { (out.ir.clone(), out.object.clone()) } else { slowed_limits(out.ir.clone(), &b.sources) };
    let mut loaded = LoadedPolicy::load_with(&object, &LoadOptions { missing_interfaces_ok: true, ..Default::default() }).expect("loads");
    let mut log_reader = xpol_runtime::log::LogReader::open(loaded.maps()).expect("the log ring");
    let mut checked = 0;
    let mut logged = 0;
    let mut dynset_elements = 0;
    for prog in &ir.programs {
        let hook = prog.hook;
        let mut state = State::default();
        // Dynamic sets start empty for each hook's run, as the reference's
        // state does; from there the kernel's evolve on their own (no
        // timeout in these policies ends within a run).
        for d in &ir.dynsets {
            loaded.maps().dynset_flush(&d.name).expect("flush a dynamic set");
        }
        for p in packets {
            // The connection table is the kernel's, shared by the hooks and
            // on a clock that runs: set to the reference's before each
            // packet (tests/conntrack.rs compares the tables themselves).
            if ir.conntrack.is_some() {
                loaded.maps().ct_set(&state.ct_stored()).expect("set the connection table");
            }
            let before = loaded.rule_counters().expect("counters");
            let got = match loaded.test_run(hook.as_str(), p) {
                Ok(got) => got,
                // The kernel refuses to test-run some short frames on TC
                // (it builds an skb and wants its network header); XDP
                // takes every frame from 14 bytes.
                Err(_) if hook != xpol_lang::ast::Hook::Xdp && p.len() < 64 => continue,
                Err(e) => panic!("{}: test run failed on {}: {e}", path.display(), hex(p)),
            };
            let after = loaded.rule_counters().expect("counters");
            let fired: Vec<u32> = after.iter().zip(&before).enumerate().filter(|(_, (a, b))| a.packets != b.packets).map(|(i, _)| i as u32).collect();
            let want = evaluate(&ir, hook, p, &mut state);
            assert_eq!(
                (balanced(&got, &want).or(outcome(got.action)), &fired),
                (Some(want.outcome), &want.fired),
                "{} ({}): kernel and reference disagree on packet {}",
                path.display(),
                hook.as_str(),
                hex(p)
            );
            // The records the `log` statements wrote: the same as the
            // reference's, all but their time and interface.
            if let Some(r) = log_reader.as_mut() {
                let mut kernel = Vec::new();
                r.drain(|e| kernel.push((e.record.log as usize, e.record.rule, e.record.verdict_name(), u64::from(e.record.packet_len), e.record.hook, e.record.data.clone())));
                let hook_code = xpol_lang::meta::hook_code(hook.as_str());
                let reference: Vec<_> = want.logs.iter().map(|l| (l.log, l.rule, l.verdict, l.packet_len, hook_code, l.data.clone())).collect();
                assert_eq!(kernel, reference, "{} ({}): the log records differ on packet {}", path.display(), hook.as_str(), hex(p));
                logged += kernel.len();
            }
            // What `add` and `delete` left in the dynamic sets.
            if !ir.dynsets.is_empty() {
                let (kernel, reference) = dynset_states(&loaded, &ir, &state);
                assert_eq!(kernel, reference, "{} ({}): the dynamic sets differ after packet {}", path.display(), hook.as_str(), hex(p));
                dynset_elements += kernel.len();
            }
            // `nat`'s translation back on TC egress: the frame leaves as the
            // reference translated it, or as it came.
            if hook == xpol_lang::ast::Hook::TcEgress && !ir.nat_pools.is_empty() && got.action == Action::Pass {
                let want_frame = want.translated.as_deref().unwrap_or(p);
                assert_eq!(&got.packet[..], want_frame, "{} ({}): the frame leaves otherwise than the reference says: packet {}", path.display(), hook.as_str(), hex(p));
            }
            checked += 1;
        }
    }
    if !ir.limits.is_empty() {
        eprintln!("{}: limits' rules fired {:?} times", path.display(), ir.limits.iter().map(|l| loaded.rule_counters().expect("counters")[l.rule as usize].packets).collect::<Vec<_>>());
    }
    if !ir.dynsets.is_empty() {
        eprintln!("{}: {dynset_elements} dynamic set elements agreed", path.display());
        assert!(dynset_elements > 0, "{}: the corpus added nothing to the dynamic sets", path.display());
    }
    if let Some(r) = &log_reader {
        eprintln!("{}: {logged} log records agreed", path.display());
        assert!(logged > 0, "{}: a policy that logs logged nothing of the corpus", path.display());
        assert_eq!(r.malformed, 0);
    }
    checked
}

#[test]
fn compiled_policies_agree_with_the_reference() {
    if !common::kernel("compiled_policies_agree_with_the_reference") {
        return;
    }
    let packets = corpus();
    let mut total = 0;
    for path in policies() {
        total += differential(&path, &packets);
    }
    eprintln!("differential: {total} packet runs agreed");
    assert!(total > 5000, "{total}");
}

// ------------------------------------------------------------ generated policies

impl policygen::Choice for Rng {
    fn below(&mut self, n: u64) -> u64 {
        Rng::below(self, n)
    }
}

/// The semantics the kernel is compared with: [`evaluate`], or a
/// deliberately wrong one in the test of the minimizer.
type Reference = fn(&ir::Policy, Hook, &[u8], &mut State) -> Evaluation;

/// Why a generated case failed.
#[derive(Clone, Debug)]
enum Failure {
    /// The generator wrote a policy the compiler refuses (a bug in one of them).
    Compile(String),
    /// The kernel refused the object.
    Load(String),
    /// Kernel and reference disagree on the `packet`th packet.
    Mismatch { hook: Hook, packet: usize, what: String },
}

impl Failure {
    fn same_kind(&self, other: &Failure) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Compile(d) => write!(f, "the generated policy does not compile:\n{d}"),
            Failure::Load(e) => write!(f, "the kernel refuses the object: {e}"),
            Failure::Mismatch { hook, packet, what } => write!(f, "{} disagrees on packet #{packet}: {what}", hook.as_str()),
        }
    }
}

fn fmt_key(ty: Type, k: &KeyPart) -> String {
    match (ty, k) {
        (Type::Mac, KeyPart::Int(m)) => ir::fmt_mac(*m),
        (_, KeyPart::Int(i)) => i.to_string(),
        (_, KeyPart::Ip(a)) => a.to_string(),
        (_, KeyPart::Bool(b)) => b.to_string(),
    }
}

/// The live elements of every dynamic set as `name element`, from the
/// kernel and from the reference, with the time each has left rounded to
/// minutes (the kernel's clock runs during the test; no timeout of these
/// policies is near a minute's edge, 0 for none).
fn dynset_states(loaded: &LoadedPolicy, policy: &ir::Policy, state: &State) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    const MINUTE: u64 = 60_000_000_000;
    let mut kernel = BTreeMap::new();
    let mut reference = BTreeMap::new();
    for (i, d) in policy.dynsets.iter().enumerate() {
        for e in loaded.maps().dynset_elements(&d.name).expect("dynamic set elements") {
            kernel.insert(format!("{} {}", d.name, e.key), e.left_ns.map_or(0, |ns| ns.div_ceil(MINUTE)));
        }
        for (k, left) in xpol_compiler::reference::dynset::elements(i, state) {
            reference.insert(format!("{} {}", d.name, fmt_key(d.key, &k)), left.map_or(0, |ns| ns.div_ceil(MINUTE)));
        }
    }
    (kernel, reference)
}

/// Every `@map` entry as `name[key, ...]` -> value, and each map's lost
/// updates (a full map) as `name lost`, from the kernel and from the
/// reference. Values of per-CPU maps holding the last value written are
/// left out (0): summing them over CPUs means nothing when the test thread
/// moved between CPUs.
fn map_states(loaded: &LoadedPolicy, policy: &ir::Policy, state: &State) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let mut kernel = BTreeMap::new();
    let mut reference = BTreeMap::new();
    let lost = loaded.lost_updates().expect("lost updates");
    for (i, m) in policy.maps.iter().enumerate() {
        kernel.insert(format!("@{} lost", m.name), lost[i]);
        reference.insert(format!("@{} lost", m.name), state.lost.get(&i).copied().unwrap_or(0));
        let meta = loaded.meta().maps.iter().find(|x| x.name == m.name).expect("map in the metadata");
        let keep = |v: u64| if meta.per_cpu && meta.value == xpol_lang::meta::MapValueKind::Value { 0 } else { v };
        for (key, v) in loaded.map_entries(&m.name).expect("map entries") {
            let key: Vec<String> = key.iter().map(|k| k.to_string()).collect();
            kernel.insert(format!("@{}[{}]", m.name, key.join(", ")), keep(v));
        }
        for ((id, key), v) in &state.maps {
            if *id == i {
                let key: Vec<String> = key.iter().zip(&m.keys).map(|(k, t)| fmt_key(*t, k)).collect();
                reference.insert(format!("@{}[{}]", m.name, key.join(", ")), keep(*v));
            }
        }
    }
    (kernel, reference)
}

/// Compiles `text`, loads it, and runs every packet through every program
/// of the policy (one map state for all of them, as in the kernel), comparing
/// the verdict, the rules fired, their packet and byte counters and the maps
/// after each packet. Ok: the number of packet runs, and of those a rule
/// decided.
fn run_generated(path: &Path, text: &str, packets: &[Vec<u8>], reference: Reference) -> Result<(usize, usize), Failure> {
    std::fs::write(path, text).expect("write policy");
    let b = xpol_compiler::build(path, &xpol_compiler::BuildOptions::default());
    let Some(out) = b.output else {
        return Err(Failure::Compile(xpol_lang::render::render_human(&b.diagnostics, &b.sources, false)));
    };
    let mut loaded = LoadedPolicy::load_with(&out.object, &LoadOptions { missing_interfaces_ok: true, ..Default::default() }).map_err(|e| Failure::Load(e.to_string()))?;
    let mut log_reader = xpol_runtime::log::LogReader::open(loaded.maps()).map_err(|e| Failure::Load(e.to_string()))?;
    let mut state = State::default();
    let (mut runs, mut decided) = (0, 0);
    for prog in &out.ir.programs {
        let hook = prog.hook;
        for (i, p) in packets.iter().enumerate() {
            let mismatch = |what: String| Failure::Mismatch { hook, packet: i, what };
            let before = loaded.rule_counters().expect("counters");
            let got = match loaded.test_run(hook.as_str(), p) {
                Ok(got) => got,
                Err(_) if hook != Hook::Xdp && p.len() < 64 => continue,
                Err(e) => return Err(mismatch(format!("the test run failed: {e}"))),
            };
            let after = loaded.rule_counters().expect("counters");
            let fired: Vec<u32> = after.iter().zip(&before).enumerate().filter(|(_, (a, b))| a.packets != b.packets).map(|(i, _)| i as u32).collect();
            let want = reference(&out.ir, hook, p, &mut state);
            if (outcome(got.action), &fired) != (Some(want.outcome), &want.fired) {
                return Err(mismatch(format!(
                    "kernel {:?} with rules {fired:?} fired, reference {:?} with rules {:?}",
                    got.action, want.outcome, want.fired
                )));
            }
            for &r in &fired {
                let (a, b) = (after[r as usize], before[r as usize]);
                if a.packets - b.packets != 1 || a.bytes - b.bytes != p.len() as u64 {
                    return Err(mismatch(format!("rule {r} counted {} packets, {} bytes", a.packets - b.packets, a.bytes - b.bytes)));
                }
            }
            if let Some(r) = log_reader.as_mut() {
                let mut kernel = Vec::new();
                r.drain(|e| kernel.push((e.record.log as usize, e.record.rule, e.record.verdict_name(), u64::from(e.record.packet_len), e.record.data.clone())));
                let reference: Vec<_> = want.logs.iter().map(|l| (l.log, l.rule, l.verdict, l.packet_len, l.data.clone())).collect();
                if kernel != reference {
                    let short = |v: &[(usize, u32, &str, u64, Vec<u8>)]| v.iter().map(|(l, r, v, n, d)| format!("log#{l} rule {r} {v} {n}/{} bytes", d.len())).collect::<Vec<_>>();
                    return Err(mismatch(format!("log records differ:\n  kernel    {:?}\n  reference {:?}", short(&kernel), short(&reference))));
                }
            }
            if !out.ir.maps.is_empty() {
                let (kernel, reference) = map_states(&loaded, &out.ir, &state);
                if kernel != reference {
                    return Err(mismatch(format!("maps differ:\n  kernel    {kernel:?}\n  reference {reference:?}")));
                }
            }
            runs += 1;
            decided += usize::from(want.decided_by.is_some());
        }
    }
    Ok((runs, decided))
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().expect("v4")
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("v6")
}

/// A packet built from the same pools as the policies' constants: any
/// family and L4, VLAN tags, fragments, options, extension headers, and
/// now and then a header field that lies.
fn random_spec(rng: &mut Rng) -> PacketSpec {
    use policygen::{MACS, PORTS, V4, V6, VLANS};
    let port = |rng: &mut Rng| PORTS[rng.below(PORTS.len() as u64) as usize] as u16;
    let six = rng.below(2) == 1;
    let (s4, d4) = (v4(rng.pick(V4)), v4(rng.pick(V4)));
    let (s6, d6) = (v6(rng.pick(V6)), v6(rng.pick(V6)));
    let mut spec = match (rng.below(20), six) {
        (0..=7, false) => PacketSpec::tcp4(s4, d4, port(rng), port(rng)),
        (0..=7, true) => PacketSpec::tcp6(s6, d6, port(rng), port(rng)),
        (8..=13, false) => PacketSpec::udp4(s4, d4, port(rng), port(rng)),
        (8..=13, true) => PacketSpec::udp6(s6, d6, port(rng), port(rng)),
        (14..=16, false) => PacketSpec::icmp4(s4, d4, [0, 3, 8, 11][rng.below(4) as usize], rng.below(5) as u8),
        (14..=16, true) => PacketSpec::icmp6(s6, d6, [1, 128, 129, 135][rng.below(4) as usize], rng.below(5) as u8),
        (17, _) => PacketSpec::ethertype([0x0806, 0x88cc, 0x8847][rng.below(3) as usize], rng.below(60) as usize),
        (18, false) => PacketSpec { l4: L4::Raw { protocol: [47, 58, 59][rng.below(3) as usize], bytes: vec![0; 8] }, ..PacketSpec::tcp4(s4, d4, 1, 2) },
        _ => PacketSpec { l4: [L4::Icmp4 { ty: 8, code: 0 }, L4::None][rng.below(2) as usize].clone(), ..PacketSpec::tcp6(s6, d6, 1, 2) },
    };
    spec.eth_src = MACS[rng.below(MACS.len() as u64) as usize];
    spec.eth_dst = MACS[rng.below(MACS.len() as u64) as usize];
    let tags = [0, 0, 0, 0, 0, 0, 1, 1, 2, 3][rng.below(10) as usize];
    for _ in 0..tags {
        let tpid = if rng.below(2) == 0 { 0x8100 } else { 0x88a8 };
        spec.vlans.push(VlanTag { tpid, pcp: rng.below(8) as u8, id: VLANS[rng.below(VLANS.len() as u64) as usize] as u16 });
    }
    if let L4::Tcp(t) = &mut spec.l4 {
        t.flags = if rng.below(3) == 0 { rng.next() as u8 } else { [0, 2, 0x10, 0x12, 0x29, 1][rng.below(6) as usize] };
        t.window = [0, 1024, 65535][rng.below(3) as usize];
        if rng.below(30) == 0 {
            t.data_offset = Some(rng.below(16) as u8);
        }
    }
    match &mut spec.l3 {
        L3::Ipv4(ip) => random_v4(rng, ip),
        L3::Ipv6(ip) => {
            ip.hop_limit = [0, 1, 64, 255][rng.below(4) as usize];
            ip.traffic_class = rng.next() as u8;
            ip.flow_label = [0, 1, 0xfffff][rng.below(3) as usize];
            if rng.below(6) == 0 {
                for _ in 0..1 + rng.below(9) {
                    ip.ext.push(match rng.below(5) {
                        0 => Ipv6Ext::HopByHop { len8: rng.below(3) as u8 },
                        1 => Ipv6Ext::Routing { len8: rng.below(3) as u8 },
                        2 => Ipv6Ext::DestOpts { len8: rng.below(3) as u8 },
                        3 => Ipv6Ext::Auth { len4: rng.below(4) as u8 },
                        _ => Ipv6Ext::Fragment { offset: [0, 8, 64, 1480][rng.below(4) as usize], more: rng.below(2) == 0, id: 9 },
                    });
                }
            }
            if rng.below(20) == 0 {
                ip.payload_len = Some([0, 1, 8, 2000][rng.below(4) as usize]);
            }
        }
        L3::Other { .. } => {}
    }
    let payload = [0, 0, 0, 1, 6, 20, 64, 1400][rng.below(8) as usize];
    spec.payload(payload)
}

fn random_v4(rng: &mut Rng, ip: &mut Ipv4Spec) {
    ip.ttl = [0, 1, 64, 255][rng.below(4) as usize];
    ip.tos = rng.next() as u8;
    ip.id = [0, 1, 7, 0xffff][rng.below(4) as usize];
    ip.dont_fragment = rng.below(3) == 0;
    if rng.below(8) == 0 {
        ip.frag_offset = [0, 8, 64, 1480][rng.below(4) as usize];
        ip.more_fragments = rng.below(2) == 0;
    }
    if rng.below(10) == 0 {
        ip.options = vec![1; 4 * (1 + rng.below(10) as usize)];
    }
    if rng.below(30) == 0 {
        ip.ihl = Some(rng.below(16) as u8);
    }
    if rng.below(20) == 0 {
        ip.total_len = Some([0, 19, 20, 39, 41, 1500][rng.below(6) as usize]);
    }
}

/// The packets one generated policy runs: valid ones from the pools, cut
/// and mutated ones, random bytes, and a sample of the fixed corpus.
fn packets_for(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = (0..70).map(|_| random_spec(rng).build()).collect();
    for i in 0..30 {
        let mut p = out[i].clone();
        if rng.below(2) == 0 {
            p.truncate(14 + rng.below((p.len() - 13) as u64) as usize);
        } else {
            for _ in 0..1 + rng.below(3) {
                let at = 12 + rng.below((p.len().min(90) - 12) as u64) as usize;
                p[at] = rng.next() as u8;
            }
        }
        out.push(p);
    }
    for _ in 0..8 {
        let mut p: Vec<u8> = (0..14 + rng.below(100)).map(|_| rng.next() as u8).collect();
        if rng.below(2) == 0 {
            p[12..14].copy_from_slice(&[[0x08, 0x00], [0x86, 0xdd]][rng.below(2) as usize]);
        }
        out.push(p);
    }
    for _ in 0..20 {
        out.push(corpus[rng.below(corpus.len() as u64) as usize].clone());
    }
    out
}

/// Shrinks a failing case: the packets up to the failing one, then as few
/// of them as still fail, then the policy (rules, predicates, conjuncts,
/// statements), then each packet's bytes (shorter, zeroed), while the case
/// still fails the same way. Returns the smaller case, its failure and the
/// number of trials.
fn minimize(path: &Path, policy: &policygen::Policy, packets: &[Vec<u8>], failure: &Failure, reference: Reference) -> (policygen::Policy, Vec<Vec<u8>>, Failure, usize) {
    const MAX_TRIALS: usize = 1500;
    let trials = std::cell::Cell::new(0);
    let fails = |p: &policygen::Policy, pk: &[Vec<u8>]| -> Option<Failure> {
        trials.set(trials.get() + 1);
        match run_generated(path, &p.text(), pk, reference) {
            Err(f) if f.same_kind(failure) => Some(f),
            _ => None,
        }
    };
    let (mut p, mut pk, mut f) = (policy.clone(), packets.to_vec(), failure.clone());
    let cut = |pk: &mut Vec<Vec<u8>>, f: &Failure| {
        if let Failure::Mismatch { packet, .. } = f {
            pk.truncate(packet + 1);
        }
    };
    cut(&mut pk, &f);
    // Packets: the failing one alone, else drop chunks of the earlier ones.
    if pk.len() > 1 {
        let last = vec![pk.last().expect("a packet").clone()];
        if let Some(g) = fails(&p, &last) {
            (pk, f) = (last, g);
        }
    }
    let mut chunk = pk.len() / 2;
    while chunk > 0 && pk.len() > 1 {
        let mut at = 0;
        while at + 1 < pk.len() {
            let mut fewer = pk.clone();
            fewer.drain(at..(at + chunk).min(pk.len() - 1));
            match fails(&p, &fewer) {
                Some(g) => {
                    (pk, f) = (fewer, g);
                    cut(&mut pk, &f);
                }
                None => at += chunk,
            }
        }
        chunk /= 2;
    }
    for _round in 0..2 {
        // The policy: take the first smaller variant that still fails, again.
        'shrink: loop {
            for q in policygen::shrink_candidates(&p) {
                if trials.get() >= MAX_TRIALS {
                    break 'shrink;
                }
                if let Some(g) = fails(&q, &pk) {
                    (p, f) = (q, g);
                    cut(&mut pk, &f);
                    continue 'shrink;
                }
            }
            break;
        }
        // Packet bytes: shorter, then zeroed in 4-byte steps from the end.
        for i in 0..pk.len() {
            for step in [64, 16, 4, 1] {
                while pk[i].len() > 14 + step && trials.get() < MAX_TRIALS {
                    let mut q = pk.clone();
                    let n = q[i].len() - step;
                    q[i].truncate(n);
                    match fails(&p, &q) {
                        Some(g) => (pk, f) = (q, g),
                        None => break,
                    }
                }
            }
            let mut at = pk[i].len();
            while at > 14 && trials.get() < MAX_TRIALS {
                let from = at.saturating_sub(4).max(14);
                if pk[i][from..at].iter().any(|&b| b != 0) {
                    let mut q = pk.clone();
                    q[i][from..at].fill(0);
                    if let Some(g) = fails(&p, &q) {
                        (pk, f) = (q, g);
                    }
                }
                at = from;
            }
        }
    }
    (p, pk, f, trials.get())
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Seeds are spread so that neighbouring cases differ in every choice.
fn seed_rng(seed: u64) -> Rng {
    Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
}

fn report(i: u64, seed: u64, min: &(policygen::Policy, Vec<Vec<u8>>, Failure, usize), original: &Failure) -> String {
    let (p, pk, f, trials) = min;
    let packets: Vec<String> = pk.iter().map(|p| format!("  {}", hex(p))).collect();
    format!(
        "generated policy #{i} (seed {seed}): {original}\n\nminimized in {trials} trials to: {f}\n--- policy ---\n{}--- packets, in order (hex) ---\n{}\n\nreproduce: XPOL_DIFF_SEED={seed} XPOL_DIFF_POLICIES=1 cargo test --test differential generated",
        p.text(),
        packets.join("\n")
    )
}

/// The generator's contract (tests/policygen): every policy it writes
/// passes the checker, so the differential test and the `generated` fuzz
/// target test codegen, not the generator. Checked without a kernel, over
/// more seeds than the kernel test runs.
#[test]
fn generated_policies_pass_the_checker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("generated.xpol");
    for seed in 0..3000 {
        let mut rng = seed_rng(seed);
        let text = policygen::policy(&mut rng).text();
        let checked = xpol_compiler::check_text(&path, text.clone());
        let errors: Vec<&xpol_lang::Diagnostic> = checked.diagnostics.iter().filter(|d| d.is_error()).collect();
        assert!(errors.is_empty(), "seed {seed}:\n{text}\n{errors:#?}");
    }
}

/// Seeded random policies, each with its own packets, within a time budget
/// (`XPOL_DIFF_SECONDS`, default 60) and a count (`XPOL_DIFF_POLICIES`,
/// default 400); `XPOL_DIFF_SEED` starts elsewhere than the fixed seed.
#[test]
fn generated_policies_agree_with_the_reference() {
    if !common::kernel("generated_policies_agree_with_the_reference") {
        return;
    }
    let _alone = TIMED.lock().unwrap_or_else(|e| e.into_inner());
    let budget = Duration::from_secs(env_or("XPOL_DIFF_SECONDS", 60));
    let count: u64 = env_or("XPOL_DIFF_POLICIES", 400);
    let first: u64 = env_or("XPOL_DIFF_SEED", 1);
    let corpus = corpus();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("generated.xpol");
    let start = Instant::now();
    let (mut policies, mut runs, mut decided, mut logging) = (0u64, 0usize, 0usize, 0u64);
    for i in 0..count {
        if start.elapsed() > budget {
            break;
        }
        let seed = first + i;
        let mut rng = seed_rng(seed);
        let policy = policygen::policy(&mut rng);
        let packets = packets_for(&mut rng, &corpus);
        if std::env::var_os("XPOL_DIFF_SHOW").is_some() {
            eprintln!("--- generated policy #{i} (seed {seed})\n{}", policy.text());
        }
        match run_generated(&path, &policy.text(), &packets, evaluate) {
            Ok((n, d)) => {
                runs += n;
                decided += d;
            }
            Err(f @ Failure::Compile(_)) => panic!("generated policy #{i} (seed {seed}):\n{}\n{f}", policy.text()),
            Err(f) => {
                let min = minimize(&path, &policy, &packets, &f, evaluate);
                panic!("{}", report(i, seed, &min, &f));
            }
        }
        policies += 1;
        logging += u64::from(policy.text().contains("log"));
    }
    eprintln!(
        "differential: {policies} generated policies ({logging} with `log`), {runs} packet runs agreed ({decided} decided by a rule) in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    assert!(policies >= count.min(100), "only {policies} policies within the budget");
    assert!(logging > 0 || policies < 20, "no generated policy logs");
}

/// Held by each test that counts what it did within a time budget: they
/// take turns rather than share the CPUs.
static TIMED: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A reference that reads `!=` as `==`: wrong on purpose, to test the minimizer.
fn ne_as_eq(policy: &ir::Policy, hook: Hook, packet: &[u8], state: &mut State) -> Evaluation {
    fn expr(e: &mut ir::Expr) {
        match &mut e.kind {
            ExprKind::Cmp(op, a, b) => {
                if *op == CmpOp::Ne {
                    *op = CmpOp::Eq;
                }
                expr(a);
                expr(b);
            }
            ExprKind::Neg(a) | ExprKind::BitNot(a) | ExprKind::Not(a) | ExprKind::In(a, _) => expr(a),
            ExprKind::Arith(_, a, b) | ExprKind::And(a, b) | ExprKind::Or(a, b) => {
                expr(a);
                expr(b);
            }
            ExprKind::MapRead { keys, .. } | ExprKind::Limit { keys, .. } => keys.iter_mut().for_each(expr),
            ExprKind::Const(_) | ExprKind::Field(_) | ExprKind::Local(_) => {}
        }
    }
    fn stmts(v: &mut [ir::Stmt]) {
        for s in v {
            match &mut s.kind {
                StmtKind::If { cond, then_body, else_body } => {
                    expr(cond);
                    stmts(then_body);
                    stmts(else_body);
                }
                StmtKind::Let { value, .. } => expr(value),
                StmtKind::MapUpdate { keys, op, .. } => {
                    keys.iter_mut().for_each(expr);
                    if let MapOp::Sum(e) | MapOp::Assign(e) = op {
                        expr(e);
                    }
                }
                StmtKind::SetWrite { key, .. } => expr(key),
                StmtKind::Verdict(_) | StmtKind::Redirect(_) | StmtKind::Lb(_) | StmtKind::Log(_) | StmtKind::Synproxy(_) => {}
            }
        }
    }
    let mut p = policy.clone();
    for prog in &mut p.programs {
        for probe in &mut prog.probes {
            if let Some(e) = &mut probe.predicate {
                expr(e);
            }
            stmts(&mut probe.body);
        }
    }
    evaluate(&p, hook, packet, state)
}

/// The minimizer, on a reference that is wrong about `!=`: the first
/// generated policy that shows it shrinks to one rule whose `!=` is the
/// whole difference, and one packet.
#[test]
fn the_minimizer_isolates_a_wrong_reference() {
    if !common::kernel("the_minimizer_isolates_a_wrong_reference") {
        return;
    }
    let corpus = corpus();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("generated.xpol");
    for seed in 1..200 {
        let mut rng = seed_rng(seed);
        let policy = policygen::policy(&mut rng);
        let packets = packets_for(&mut rng, &corpus);
        let Err(f) = run_generated(&path, &policy.text(), &packets, ne_as_eq) else { continue };
        assert!(matches!(f, Failure::Mismatch { .. }), "{f}");
        let min = minimize(&path, &policy, &packets, &f, ne_as_eq);
        let (p, pk, _, trials) = &min;
        let text = p.text();
        eprintln!("{}", report(0, seed, &min, &f));
        assert_eq!(p.rules.len(), 1, "{text}");
        assert!(p.size() <= 4, "not minimal: {text}");
        assert!(text.contains("!="), "{text}");
        assert_eq!(pk.len(), 1, "{} packets", pk.len());
        assert!(pk[0].len() <= packets.iter().map(Vec::len).max().unwrap_or(0));
        assert!(*trials > 1);
        // The small case is right with the true reference.
        run_generated(&path, &text, pk, evaluate).expect("agrees with the real reference");
        return;
    }
    panic!("no generated policy used `!=` where it matters");
}

/// A policy whose rules the classifier takes (`xpol_compiler::classifier`):
/// 40 to 160 rules of tests of header fields against constants, drawn from
/// the addresses and ports the packets carry, in every shape it lowers
/// (prefixes, ranges, `!=`, `!`, `||` of one field, flags, TCP and UDP ports
/// in one dimension, `ip.src` of IPv4 constants on IPv6 packets).
fn classified_policy(rng: &mut Rng) -> String {
    let addrs = ["198.18.7.7", "203.0.113.9", "198.51.100.7", "198.51.100.8", "10.1.2.3", "8.8.8.8", "192.0.2.200", "17.0.0.5", "198.18.0.99", "198.18.53.1"];
    let ports = ["0", "22", "23", "25", "53", "80", "443", "3003", "4789", "5010", "8080", "1999", "1000", "1005", "40000", "5353"];
    let mut rules = Vec::new();
    let n = 40 + rng.below(120);
    // Six kinds of test per policy: a rule set tests a few fields (a tree
    // takes at most `classifier::MAX_DIMS`).
    let kinds: Vec<u64> = (0..6).map(|_| rng.below(22)).collect();
    let flag = ["tcp.syn", "!tcp.ack", "tcp.fin", "ip.frag", "!ip.frag_first"][rng.below(5) as usize];
    for _ in 0..n {
        let mut atoms = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let len = [8u32, 16, 24, 31, 32][rng.below(5) as usize];
            // The prefix of that length around one of the packets' addresses.
            let a = Ipv4Addr::from(u32::from(v4(rng.pick(&addrs))) & !((1u64 << (32 - len)) - 1) as u32);
            let p = rng.pick(&ports);
            let q = rng.pick(&ports);
            let (lo, hi) = { let (x, y): (u32, u32) = (p.parse().unwrap(), q.parse().unwrap()); (x.min(y), x.max(y)) };
            let atom = match kinds[rng.below(kinds.len() as u64) as usize] {
                0 => format!("ip4.src in {a}/{len}"),
                1 => format!("ip4.dst in {a}/{len}"),
                2 => format!("ip.src in {a}/{len}"),
                3 => format!("ip.dst != {a}"),
                4 => format!("ip4.src !in {{{a}/{len}, 198.51.100.0/24}}"),
                5 => format!("ip.proto == {}", ["6", "17", "1", "58"][rng.below(4) as usize]),
                6 => format!("tcp.dport == {p}"),
                7 => format!("tcp.sport in {lo}..{hi}"),
                8 => format!("udp.dport in {lo}..{hi}"),
                9 => format!("udp.sport == {p}"),
                10 => format!("l4.dport != {p}"),
                11 => format!("(tcp.dport == {p} || tcp.dport == {q})"),
                12 => format!("!(udp.dport in {lo}..{hi})"),
                13 => flag.to_string(),
                14 => format!("ip.ttl {} {}", ["<", ">=", "==", "!="][rng.below(4) as usize], rng.below(256)),
                15 => format!("ip.version == {}", ["4", "6"][rng.below(2) as usize]),
                16 => format!("icmp.type == {}", [0, 3, 8][rng.below(3) as usize]),
                17 => format!("vlan.id == {}", rng.below(8)),
                18 => format!("tcp.dport in {{{p}, {q}, 8000..8100}}"),
                19 => format!("l4.sport > {p}"),
                20 => format!("ip.dst in {{{a}/{len}, 198.51.100.0/24}}"),
                _ => format!("pkt.len < {}", 60 + rng.below(100)),
            };
            atoms.push(atom);
        }
        let verdict = ["pass", "drop"][rng.below(2) as usize];
        rules.push(format!("xdp /{}/ {{ {verdict} }}", atoms.join(" && ")));
        // A rule the classifier does not take, between two runs.
        if n >= 80 && rules.len() as u64 == n / 2 {
            rules.push("xdp /ip.dst in {2001:db8::/33, 198.18.0.0/15}/ { pass }".to_string());
        }
    }
    if rng.below(3) == 0 {
        rules.push("xdp { drop }".to_string());
    }
    rules.join("\n") + "\n"
}

/// Policies of many header rules are lowered as decision-tree walks
/// (`codegen/classify.rs`): the kernel's verdicts and rule counters agree
/// with the reference's, rule after rule, on the corpus (IPv4 with options,
/// IPv6 with extension headers, VLAN tags, fragments, truncations) and on
/// random and mutated packets.
#[test]
fn classified_policies_agree_with_the_reference() {
    if !common::kernel("classified_policies_agree_with_the_reference") {
        return;
    }
    let _alone = TIMED.lock().unwrap_or_else(|e| e.into_inner());
    // Beside the other differential tests (same binary, same CPUs): a
    // smaller budget than theirs.
    let budget = Duration::from_secs(env_or("XPOL_CLASSIFY_SECONDS", 30));
    let count: u64 = env_or("XPOL_CLASSIFY_POLICIES", 30);
    let corpus = corpus();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("classified.xpol");
    let start = Instant::now();
    let (mut policies, mut runs, mut decided) = (0u64, 0usize, 0usize);
    for i in 0..count {
        if start.elapsed() > budget {
            break;
        }
        let seed = 0xc1a55 + i;
        let mut rng = seed_rng(seed);
        let text = classified_policy(&mut rng);
        let checked = xpol_compiler::check_text(&path, text.clone());
        let Some(ir) = checked.ir else {
            panic!("policy #{i} (seed {seed}) does not check:\n{text}\n{}", xpol_lang::render::render_human(&checked.diagnostics, &checked.sources, false));
        };
        let runs_of = xpol_compiler::classifier::runs(&ir.programs[0].probes, None);
        assert!(!runs_of.is_empty(), "policy #{i} (seed {seed}) has a run of classifiable rules:\n{text}");
        // Codegen walks the trees `build_parts` makes of its runs.
        let probes = &ir.programs[0].probes;
        let boxes: Vec<_> = probes[runs_of[0].clone()].iter().map(|p| {
            let (b, _) = xpol_compiler::classifier::classifiable(p).expect("a run's rules are classifiable");
            (b, p.rule, 0)
        }).collect();
        assert!(!xpol_compiler::classifier::build_parts(&boxes).is_empty(), "policy #{i} (seed {seed}) gets a tree");
        let mut packets = packets_for(&mut rng, &corpus);
        packets.extend(corpus.iter().cloned());
        match run_generated(&path, &text, &packets, evaluate) {
            Ok((n, d)) => {
                runs += n;
                decided += d;
            }
            Err(f) => panic!("classified policy #{i} (seed {seed}):\n{text}\n{f}"),
        }
        policies += 1;
    }
    eprintln!("classified: {policies} policies, {runs} packet runs agreed ({decided} decided by a rule) in {:.1}s", start.elapsed().as_secs_f64());
    assert!(policies >= count.min(5), "only {policies} policies within the budget");
    assert!(decided * 4 > runs, "too few packets decided by a rule ({decided} of {runs}): the test exercises too little");
}
