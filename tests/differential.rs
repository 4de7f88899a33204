//! Differential testing: every compiled policy, run in the kernel, against
//! the reference semantics (xpol_compiler::reference) on the same packets:
//! well-formed ones, adversarial ones, truncations, and seeded random
//! mutations. Verdicts and the rules that fired must be equal, packet by
//! packet, with map state carried from packet to packet on both sides.

mod common;

use common::Rng;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use xpol_compiler::reference::{evaluate, Outcome, State};
use xpol_runtime::loader::{Action, LoadOptions, LoadedPolicy};
use xpol_runtime::packet::{hex, Ipv6Ext, PacketSpec};


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
    let mut out: Vec<Vec<u8>> = base.iter().map(|s| s.build()).collect();
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

fn differential(path: &Path, packets: &[Vec<u8>]) -> usize {
    let b = xpol_compiler::build(path, &xpol_compiler::BuildOptions::default());
    let out = b.output.expect("compiles");
    let mut loaded = LoadedPolicy::load_with(&out.object, &LoadOptions { missing_interfaces_ok: true }).expect("loads");
    let mut checked = 0;
    for prog in &out.ir.programs {
        let hook = prog.hook;
        let mut state = State::default();
        for p in packets {
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
            let want = evaluate(&out.ir, hook, p, &mut state);
            assert_eq!(
                (outcome(got.action), &fired),
                (Some(want.outcome), &want.fired),
                "{} ({}): kernel and reference disagree on packet {}",
                path.display(),
                hook.as_str(),
                hex(p)
            );
            checked += 1;
        }
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
