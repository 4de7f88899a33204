//! Runtime error paths and the packet builder.

mod common;

use std::path::Path;
use xpol_compiler::codegen::Faults;
use xpol_compiler::{build, BuildOptions};
use xpol_runtime::loader::{LoadedPolicy, RuntimeError};
use xpol_runtime::packet::{Ipv6Ext, PacketSpec};

/// A program that reads L4 headers without checking the frame end is
/// rejected by the kernel, and the error carries the verifier's log.
#[test]
fn verifier_rejection_carries_the_log() {
    if !common::kernel("verifier_rejection_carries_the_log") {
        return;
    }
    let options = BuildOptions { faults: Faults { omit_l4_bounds_check: true, ..Faults::default() }, ..BuildOptions::default() };
    let b = build(Path::new("examples/firewall.xpol"), &options);
    let object = b.output.expect("compiles").object;
    match LoadedPolicy::load(&object) {
        Err(RuntimeError::Verifier { program, log, .. }) => {
            assert_eq!(program, "xpol_xdp");
            assert!(log.contains("invalid access to packet"), "{log}");
            // The log's line info points at the policy source.
            assert!(log.contains("firewall.xpol"), "{log}");
        }
        Err(e) => panic!("expected a verifier rejection, got {e}"),
        Ok(_) => panic!("the kernel accepted an unchecked packet access"),
    }
}

#[test]
fn object_without_metadata_is_refused() {
    let b = build(Path::new("examples/firewall.xpol"), &BuildOptions::default());
    let mut object = b.output.expect("compiles").object;
    // Rename the metadata section in the section-name string table.
    let at = object.windows(10).position(|w| w == b".xpol.meta").expect("section name present");
    object[at + 1] = b'X';
    assert!(matches!(LoadedPolicy::load(&object), Err(RuntimeError::NoMetadata)));
    assert!(matches!(LoadedPolicy::load(b"not an elf"), Err(RuntimeError::BadObject(_))));
}

#[test]
fn unknown_redirect_interface_is_named() {
    if !common::kernel("unknown_redirect_interface_is_named") {
        return;
    }
    let b = build(Path::new("tests/golden/ok/hooks.xpol"), &BuildOptions::default());
    match LoadedPolicy::load(&b.output.expect("compiles").object) {
        Err(e @ RuntimeError::UnknownInterface(_)) => assert!(e.to_string().contains("vxlan0"), "{e}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("loaded with a missing interface"),
    }
}

/// Well-formed packets from the builder parse back, field for field, with
/// etherparse.
#[test]
fn built_packets_parse_back() {
    use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
    let p = PacketSpec::tcp4("198.18.0.1".parse().unwrap(), "198.19.0.2".parse().unwrap(), 1234, 22).syn().vlan(7).ipv4(|ip| ip.options = vec![1; 8]);
    let bytes = p.build();
    let h = PacketHeaders::from_ethernet_slice(&bytes).expect("parses");
    assert!(matches!(h.vlan, Some(etherparse::VlanHeader::Single(v)) if v.vlan_id.value() == 7));
    let Some(NetHeaders::Ipv4(ip, _)) = &h.net else { panic!("not IPv4") };
    assert_eq!(ip.ihl(), 7);
    assert_eq!(ip.source, [198, 18, 0, 1]);
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    let Some(TransportHeader::Tcp(tcp)) = &h.transport else { panic!("not TCP") };
    assert_eq!((tcp.source_port, tcp.destination_port, tcp.syn), (1234, 22, true));
    assert_eq!(p.layout().l4, 14 + 4 + 28);

    let p6 = PacketSpec::udp6("2001:db8::1".parse().unwrap(), "2001:db8::2".parse().unwrap(), 53, 5353)
        .ext(Ipv6Ext::HopByHop { len8: 0 })
        .ext(Ipv6Ext::Routing { len8: 2 })
        .ext(Ipv6Ext::DestOpts { len8: 1 })
        .payload(5);
    let bytes = p6.build();
    let h = PacketHeaders::from_ethernet_slice(&bytes).expect("parses");
    let Some(TransportHeader::Udp(udp)) = &h.transport else { panic!("not UDP: {:?}", h.transport) };
    assert_eq!((udp.source_port, udp.destination_port, udp.length), (53, 5353, 13));
    assert_eq!(p6.layout().l4, 14 + 40 + 8 + 24 + 16);
    assert_eq!(p6.layout().len, bytes.len());
}

/// A CPU with a block of counters in global data and a CPU past the blocks
/// (counting in the per-CPU map) add up to the rule's count: a policy of
/// 2,049 rules has a block for CPU 0 only (`CountersMeta::for_rules`).
#[test]
fn counters_of_cpus_past_the_global_blocks_add_up() {
    if !common::kernel("counters_of_cpus_past_the_global_blocks_add_up") {
        return;
    }
    let rules = 2049;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("many.xpol");
    let source: String = (0..rules).map(|i| format!("xdp /udp.dport == {}/ {{ drop }}\n", 10_000 + i)).collect();
    std::fs::write(&path, source).expect("write policy");
    let output = build(&path, &BuildOptions::default()).output.expect("compiles");
    assert_eq!(output.meta.counters.global_cpus, 1, "{:?}", output.meta.counters);
    let mut loaded = LoadedPolicy::load(&output.object).expect("loads");
    let last = rules - 1;
    let packet = PacketSpec::udp4("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap(), 4000, 10_000 + last as u16).build();
    // CPU 0 counts in global data, any other CPU in the map.
    let cpus = xpol_runtime::sys::allowed_cpus().expect("sched_getaffinity");
    let runs: Vec<(usize, u64)> = match (cpus.contains(&0), cpus.iter().find(|&&c| c > 0)) {
        (true, Some(&other)) => vec![(0, 3), (other, 2)],
        (true, None) => {
            eprintln!("counters_of_cpus_past_the_global_blocks_add_up: only CPU 0 here, the map's way is not exercised");
            vec![(0, 5)]
        }
        (false, Some(&other)) => {
            eprintln!("counters_of_cpus_past_the_global_blocks_add_up: CPU 0 not allowed here, the global block is not exercised");
            vec![(other, 5)]
        }
        (false, None) => unreachable!("a thread runs on some CPU"),
    };
    for (cpu, times) in runs {
        xpol_runtime::sys::on_cpu(cpu, || {
            for _ in 0..times {
                assert_eq!(loaded.test_run("xdp", &packet).expect("runs").return_value, 1, "dropped");
            }
        })
        .expect("pin to a CPU");
    }
    let counters = loaded.rule_counters().expect("counters");
    assert_eq!(counters[last].packets, 5);
    assert_eq!(counters[last].bytes, 5 * packet.len() as u64);
    assert_eq!(counters.iter().map(|c| c.packets).sum::<u64>(), 5, "no other rule counted");
    loaded.reset_counters().expect("reset");
    assert!(loaded.rule_counters().expect("counters").iter().all(|c| c.packets == 0 && c.bytes == 0));
}

/// Lost updates count in the per-CPU counters map, in the slot after the
/// rules', and the CPUs' counts add up: here CPU 0 and another CPU each
/// lose updates to a full map. `reset_counters` clears them with the
/// rules' counters.
#[test]
fn lost_updates_of_every_cpu_add_up() {
    if !common::kernel("lost_updates_of_every_cpu_add_up") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("full.xpol");
    std::fs::write(&path, "xdp /udp.dport == 9/ { drop }\nmap @m max 1\nxdp /udp.dport == 53/ { @m[ip.src] = count(); drop }\n").expect("write policy");
    let output = build(&path, &BuildOptions::default()).output.expect("compiles");
    assert_eq!(output.meta.maps[0].lost_slot, Some(2), "after the two rules' slots");
    let mut loaded = LoadedPolicy::load(&output.object).expect("loads");
    let from = |i: u8| PacketSpec::udp4(std::net::Ipv4Addr::new(198, 18, 0, i), "198.18.0.2".parse().unwrap(), 4000, 53).build();
    let cpus = xpol_runtime::sys::allowed_cpus().expect("sched_getaffinity");
    let runs: Vec<(usize, u8)> = match (cpus.contains(&0), cpus.iter().find(|&&c| c > 0)) {
        (true, Some(&other)) => vec![(0, 3), (other, 3)],
        (true, None) => {
            eprintln!("lost_updates_of_every_cpu_add_up: only CPU 0 here, one CPU's count only");
            vec![(0, 6)]
        }
        (false, Some(&other)) => vec![(other, 6)],
        (false, None) => unreachable!("a thread runs on some CPU"),
    };
    // Six sources in all: the first fills the one entry, five are lost.
    let mut source_no = 1;
    for (cpu, sources) in runs {
        xpol_runtime::sys::on_cpu(cpu, || {
            for _ in 0..sources {
                assert_eq!(loaded.test_run("xdp", &from(source_no)).expect("runs").return_value, 1, "dropped");
                source_no += 1;
            }
        })
        .expect("pin to a CPU");
    }
    assert_eq!(loaded.lost_updates().expect("lost"), [5]);
    assert_eq!(loaded.map_entries("m").expect("entries").len(), 1);
    let counters = loaded.rule_counters().expect("counters");
    assert_eq!((counters.len(), counters[1].packets, counters[0].packets), (2, 6, 0), "the rules' counters are the rules' own");
    loaded.reset_counters().expect("reset");
    assert_eq!(loaded.lost_updates().expect("lost"), [0]);
}
