//! The benchmarks in quick mode: every program gives the reference verdicts,
//! veth mode's peers drop every blocked frame they are sent (their own
//! counters say so), and the report is written. Nothing about time is
//! asserted.

#[path = "../benches/ref_fw.rs"]
mod ref_fw;

#[path = "../benches/live.rs"]
mod live;

#[path = "../benches/lb.rs"]
mod lb;

#[path = "../benches/limit.rs"]
mod limit;

#[path = "../benches/conntrack.rs"]
mod conntrack;
#[path = "../benches/log.rs"]
mod log;
#[path = "../benches/dynset.rs"]
mod dynset;
#[path = "../benches/shared_sets.rs"]
mod shared_sets;

#[path = "../benches/synproxy.rs"]
mod synproxy;

/// The load-balancer benchmark in quick mode: its userspace section (Maglev)
/// runs without a kernel, gives the seeded distribution, and the report is
/// written.
#[test]
fn lb_quick() {
    let out = tempfile::tempdir().expect("tempdir");
    let report = lb::run(&lb::Mode { quick: true }, out.path());
    let maglev = report.section("maglev").expect("the Maglev section");
    assert!(maglev.markdown.contains("### Removing or adding one backend"), "{}", maglev.markdown);
    assert_eq!(maglev.json["targets"]["distribution_over_slots"], true, "{}", maglev.markdown);
    // One row per N: 2, 3, 5, 10, 20, 50, 100.
    assert_eq!(maglev.json["disruption"].as_array().expect("disruption rows").len(), 7);
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("lb.json")).expect("lb.json")).expect("valid");
    assert!(json["sections"]["maglev"]["build_ms"].is_array());
    assert!(out.path().join("lb.md").exists());
}

/// A benchmark rewrites its own section of BENCHMARKS.md and keeps the others.
#[test]
fn lb_replaces_its_section_only() {
    let doc = "# Benchmarks\n\nintro\n\n## Live operation\n\nlive\n";
    let added = lb::replace_section(doc, "Load balancer: Maglev", "## Load balancer: Maglev\n\nfirst\n");
    assert_eq!(added, "# Benchmarks\n\nintro\n\n## Live operation\n\nlive\n\n## Load balancer: Maglev\n\nfirst\n");
    let doc = format!("{added}\n## Later\n\nlater\n");
    let replaced = lb::replace_section(&doc, "Load balancer: Maglev", "## Load balancer: Maglev\n\nsecond\n");
    assert_eq!(replaced, "# Benchmarks\n\nintro\n\n## Live operation\n\nlive\n\n## Load balancer: Maglev\n\nsecond\n\n## Later\n\nlater\n");
}

#[path = "../benches/lb_path.rs"]
mod lb_path;

#[path = "../benches/compile.rs"]
mod compile;

/// The compile-time benchmark in quick mode (no kernel needed): 100 rules
/// build, the policy far over the size budget is refused before compiling
/// at a rule, and the report is written.
#[test]
fn compile_quick() {
    let out = tempfile::tempdir().expect("tempdir");
    let report = compile::run(&compile::Mode { quick: true, baseline: None, baseline_label: None }, out.path());
    let policies = report.json["policies"].as_array().expect("policies");
    assert_eq!(policies.len(), 3, "{}", report.markdown);
    assert!(policies[0]["instructions"].as_u64().is_some_and(|n| n > 0), "{}", report.markdown);
    let far = &policies[2];
    assert_eq!(far["refused"]["code"], "xpol::budget::program_size", "{}", report.markdown);
    assert_eq!(far["refused"]["before_compiling"], true, "{}", report.markdown);
    assert!(far["refused"]["line"].as_u64().is_some_and(|l| l > 0 && l <= compile::FAR_OVER as u64), "{}", report.markdown);
    assert!(out.path().join("compile.json").exists());
}

/// The live-operation benchmark in quick mode: every measured change
/// succeeds (each is checked as it runs) and the report is written.
#[test]
fn live_quick() {
    if !xpol_runtime::testing::kernel_or_skip("live_quick") {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let report = live::run(&live::Mode { quick: true }, out.path());
    assert!(report.markdown.contains("single updates of an IPv4 set"), "{}", report.markdown);
    assert_eq!(report.json["replace_set_prefixes"], 1000);
    assert!(out.path().join("live.json").exists());
}

#[path = "../benches/ref_fw6.rs"]
mod ref_fw6;

/// The IPv6 reference firewall in quick mode: every program gives the
/// reference verdicts (checked as it runs), each row is there, and the
/// targets' ratios are computed.
#[test]
fn ref_fw6_quick() {
    if !xpol_runtime::testing::kernel_or_skip("ref_fw6_quick") {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let report = ref_fw6::run(&ref_fw6::Mode::quick(), out.path());
    assert!(report.markdown.contains("C, IPv6 LPM_TRIE") && report.markdown.contains("xpol, IPv6 `set`"), "{}", report.markdown);
    // The floor, then per N: xpol IPv4, xpol IPv6, the C trie; and at
    // N = 100,000 the IPv4 policy given the IPv6 packets.
    assert_eq!(report.json["results"].as_array().expect("results").len(), 1 + 3 * ref_fw6::SIZES.len() + 1, "{}", report.markdown);
    assert!(report.json["targets"]["vs_c_trie"].as_f64().is_some_and(|r| r > 0.0), "{}", report.markdown);
    assert!(out.path().join("ref-fw6.json").exists());
}

#[test]
fn ref_fw_quick() {
    if !xpol_runtime::testing::kernel_or_skip("ref_fw_quick") {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let report = ref_fw::run(&ref_fw::Mode::quick(), out.path());
    let table = &report.table;
    assert!(table.contains("C, LPM_TRIE") && table.contains("xpol, `set` (map)"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("ref-fw.json")).expect("json")).expect("valid");
    let skipped = |what: &str| report.skipped.iter().any(|s| s.starts_with(what));
    // 11 programs, and xdp-filter at N=10.
    let expected = 11 + usize::from(!skipped("xdp-filter"));
    assert_eq!(json["results"].as_array().expect("results").len(), expected, "{table}");
    // Veth at N=10: floor, xpol, C LPM_TRIE, nftables, iptables with ipset.
    let veth = json["veth"].as_array().expect("veth rows");
    if !skipped("veth mode") {
        let expected = 3 + usize::from(!skipped("nftables")) + usize::from(!skipped("iptables"));
        assert_eq!(veth.len(), expected, "{}", report.veth);
        for row in veth {
            assert_eq!(row["n"], 10);
            assert!(row["frames"].as_u64().expect("frames") > 0);
            if !row["peer"].as_str().expect("peer").starts_with("floor") {
                assert_eq!(row["dropped_by_rule"], row["frames"], "{row}");
            }
        }
    }
}

/// The load balancer's packet-path benchmark in quick mode: xpol and the C
/// twin send byte-identical frames towards the backend Maglev gives each
/// flow, and the pools count every packet (both checked as it runs); on
/// veth, every peer that ran delivered every frame to the backend side as
/// the kind it forwards.
#[test]
fn lb_path_quick() {
    if !xpol_runtime::testing::kernel_or_skip("lb_path_quick") {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let report = lb_path::run(&lb_path::Mode::quick(), out.path());
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("lb-path.json")).expect("json")).expect("valid");
    // Four encapsulations and DNAT of both families, established and new
    // flows, two exits; the floor.
    assert_eq!(json["results"].as_array().expect("results").len(), 6 * 2 * 2 + 1, "{}", report.table);
    // The DNAT cases' NAT maps were compared (equal, in a quick run).
    let nat_maps = json["nat_maps"].as_array().expect("nat_maps");
    assert_eq!(nat_maps.len(), 2, "{}", report.table);
    for m in nat_maps {
        assert!(m["xpol_entries"].as_u64().expect("entries") > 0 && m["xpol_entries"] == m["c_entries"] && m["in_both"] == m["c_entries"], "{m}");
    }
    // BPF_PROG_TEST_RUN with repeat does not reset the packet (why the
    // benchmark runs each packet once per call).
    assert_eq!(json["repeat_runs_balanced"]["balanced"], 1);
    for c in json["counters"].as_array().expect("counters") {
        assert!(c["packets"].as_u64().expect("packets") > 0 && c["new_flows"].as_u64().expect("new flows") >= c["new_flow_packets_sent"].as_u64().expect("sent"), "{c}");
    }
    let skipped = |what: &str| report.skipped.iter().any(|s| s.starts_with(what));
    if !skipped("veth mode") {
        let veth = json["veth"].as_array().expect("veth rows");
        // Floor, redirect, xpol, C, nftables DNAT, forwarding; IPVS where the kernel has it.
        let ipvs = if skipped("IPVS (") { 0 } else { ["IPVS tunnel", "IPVS direct", "IPVS NAT"].iter().filter(|m| !skipped(m)).count() };
        assert_eq!(veth.len(), 5 + usize::from(!skipped("nftables")) + ipvs, "{}", report.veth);
        for row in veth {
            assert!(row["frames"].as_u64().expect("frames") > 0, "{row}");
            if !row["kind"].is_null() {
                assert_eq!(row["forwarded"], row["frames"], "{row}");
            }
        }
        assert!(veth.iter().any(|r| r["peer"].as_str().expect("peer").starts_with("xpol") && r["kind"] == "IPIP to a backend"), "{}", report.veth);
    }
}


/// The flow-table part of the load balancer's packet-path benchmark in
/// quick mode: every layout measured in every scenario by both methods, the
/// twins' counters checked as it runs (every packet, every new flow), and
/// what a flow does on a second CPU after its backend was drained: kept by
/// every shared table, balanced again elsewhere by the per-CPU ones.
#[test]
fn lb_flow_table_quick() {
    if !xpol_runtime::testing::kernel_or_skip("lb_flow_table_quick") {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let report = lb_path::flow_table::run(true, 1, out.path());
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("lb-flow-table.json")).expect("json")).expect("valid");
    if report.skipped.iter().any(|s| s.starts_with("flow table: not two CPUs")) {
        // One CPU: nothing to compare; said loudly by the benchmark.
        assert!(json["skipped"].as_array().is_some_and(|s| !s.is_empty()), "{json}");
        return;
    }
    let layouts = lb_path::flow_table::LAYOUTS.len();
    assert_eq!(json["results"].as_array().expect("results").len(), lb_path::flow_table::METHODS.len() * lb_path::flow_table::SCENARIOS.len() * layouts, "{}", report.markdown);
    let changes = json["pool_change"].as_array().expect("pool_change");
    assert_eq!(changes.len(), layouts);
    for c in changes {
        let per_cpu = ["percpu_values", "percpu_tables"].contains(&c["layout"].as_str().expect("layout"));
        assert_eq!(c["second"] == c["first"], !per_cpu, "{c}");
        assert_eq!(c["second_cpu_knew"], !per_cpu, "{c}");
        assert_eq!(c["first_again"], c["first"], "{c}");
    }
    // Three twins per layout (whole program; saturated, established and
    // new flows), each of which balanced packets and counted the new flows.
    let counters = json["counters"].as_array().expect("counters");
    assert_eq!(counters.len(), 3 * layouts);
    for c in counters {
        assert!(c["packets"].as_u64().expect("packets") > 0 && c["new_flows"].as_u64().expect("new flows") >= c["new_flow_packets_sent"].as_u64().expect("sent"), "{c}");
    }
}

/// The rate-limit benchmark in quick mode: every policy's rule dropped
/// what was over its limit and nothing within it, in test runs and on
/// veth (its own assertions), and the report has both tables.
#[test]
fn limit_quick() {
    if !xpol_runtime::testing::kernel_or_skip("limit_quick") {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let report = limit::run(&limit::Mode { quick: true }, out.path());
    assert!(report.markdown.contains("### Test runs") && report.markdown.contains("### Veth"), "{}", report.markdown);
    assert_eq!(report.json["test_runs"].as_array().map(Vec::len), Some(6), "{}", report.json);
    let veth = report.json["veth"].as_array().expect("veth rows");
    assert!(veth.len() == 7 || !report.json["skipped"].as_array().is_some_and(Vec::is_empty), "{}", report.json);
    assert!(out.path().join("limit.json").exists());
}

#[path = "../benches/analysis.rs"]
mod analysis_bench;

/// The policy-analysis benchmark in quick mode (no kernel needed): the
/// 1,000-rule ClassBench set and its edited version differ, the edits are
/// the rules compared, and a query answers.
#[test]
fn analysis_quick() {
    let (markdown, json) = analysis_bench::run(true);
    assert_eq!(json["rules"], 1000, "{markdown}");
    assert!(json["regions"].as_u64().is_some_and(|n| n > 0), "{markdown}");
    // One rule changed (2 sides), one moved (2), one removed (1).
    assert!(json["changed_rules"].as_u64().is_some_and(|n| (5..=20).contains(&n)), "{markdown}");
    assert!(json["query_answers"].as_u64().is_some_and(|n| n > 0), "{markdown}");
}

/// The connection-state benchmark in quick mode: every case gives its
/// verdict before and after its runs (the connections are there and stay
/// established), the veth receivers drop every frame of the established
/// connection (their counters say so), and the report is written.
#[test]
fn conntrack_quick() {
    if !xpol_runtime::testing::kernel_or_skip("conntrack_quick") {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let report = conntrack::run(&conntrack::Mode { quick: true }, out.path());
    assert_eq!(report.json["test_runs"].as_array().expect("test-run rows").len(), 7, "{}", report.markdown);
    let skipped = report.json["skipped"].as_array().expect("skipped").len();
    if skipped == 0 {
        assert_eq!(report.json["veth"].as_array().expect("veth rows").len(), 3, "{}", report.markdown);
    }
    assert!(out.path().join("conntrack.json").exists() && out.path().join("conntrack.md").exists());
}

/// The logging benchmark in quick mode: every row's rule dropped every
/// run, rates suppressed records, the read ring got every record and the
/// unread one lost them (its own assertions), and the report is written.
#[test]
fn log_quick() {
    if !xpol_runtime::testing::kernel_or_skip("log_quick") {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let report = log::run(&log::Mode { quick: true }, out.path());
    assert_eq!(report.json["test_runs"].as_array().map(Vec::len), Some(5), "{}", report.json);
    assert!(report.markdown.contains("suppressed (coarse clock)"), "{}", report.markdown);
    assert!(out.path().join("log.json").exists());
}

/// The dynamic-set benchmark in quick mode: every rule dropped every run
/// (through its set: its own assertions), the add kept one element, and
/// the report has every row.
#[test]
fn dynset_quick() {
    if !xpol_runtime::testing::kernel_or_skip("dynset_quick") {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let report = dynset::run(&dynset::Mode { quick: true }, out.path());
    assert_eq!(report.json["test_runs"].as_array().map(Vec::len), Some(5), "{}", report.json);
    assert!(report.markdown.contains("`add(d, ip.src)`"), "{}", report.markdown);
    assert!(out.path().join("dynset.json").exists());
}

/// The shared-set-maps benchmark in quick mode: every rule dropped every
/// run (through its set: its own assertions), and the report has every row.
#[test]
fn shared_sets_quick() {
    if !xpol_runtime::testing::kernel_or_skip("shared_sets_quick") {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let report = shared_sets::run(&shared_sets::Mode { quick: true }, out.path());
    assert_eq!(report.json["test_runs"].as_array().map(Vec::len), Some(6), "{}", report.json);
    assert!(report.markdown.contains("in the shared trie"), "{}", report.markdown);
    assert!(out.path().join("shared_sets.json").exists());
}

/// The SYN proxy benchmark in quick mode: every case gives its verdict (a
/// SYN answered, a valid cookie's ACK passed, a forged one dropped), the
/// veth receivers' synproxies saw every SYN (their counters say so), and
/// the report is written.
#[test]
fn synproxy_quick() {
    if !xpol_runtime::testing::kernel_or_skip("synproxy_quick") {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let report = synproxy::run(&synproxy::Mode { quick: true }, out.path());
    assert_eq!(report.json["test_runs"].as_array().expect("test-run rows").len(), 7, "{}", report.markdown);
    if report.json["skipped"].as_array().is_some_and(Vec::is_empty) {
        assert_eq!(report.json["veth"].as_array().expect("veth rows").len(), 2, "{}", report.markdown);
    }
    assert!(out.path().join("synproxy.json").exists() && out.path().join("synproxy.md").exists());
}

#[path = "../benches/classbench.rs"]
mod classbench_bench;

/// The ClassBench benchmark in quick mode: each set at 100 and 1,000 rules builds
/// with its decision trees, every trace packet gets its expected rule's
/// verdict and every rule's counter its packets (checked as it runs), the
/// linear baseline builds where it fits, and the veth peers run.
#[test]
fn classbench_quick() {
    if !xpol_runtime::testing::kernel_or_skip("classbench_quick") {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let report = classbench_bench::run(&classbench_bench::Mode { quick: true }, out.path());
    let runs = report.json["test_runs"].as_array().expect("test runs");
    let trees = runs.iter().filter(|r| r["lowering"].as_str().is_some_and(|l| l.contains("trees"))).count();
    assert_eq!(trees, 4, "{}", report.markdown);
    assert!(runs.iter().all(|r| r["tree_bytes"].as_u64().is_some_and(|b| b > 0) || !r["lowering"].as_str().unwrap_or("").contains("trees")), "{}", report.markdown);
    let veth = report.json["veth"].as_array().expect("veth rows");
    assert!(veth.len() == 6 || !report.json["skipped"].as_array().is_some_and(Vec::is_empty), "{}", report.json);
    assert!(out.path().join("classbench.json").exists());
}

#[path = "../benches/millions.rs"]
mod millions;

/// The millions-of-prefixes benchmark in quick mode (100,000 prefixes):
/// xpol and the C LPM trie give every trace packet its verdict (the
/// bench's own assertions), the memory of both is measured, and the
/// report has its rows.
#[test]
fn millions_quick() {
    if !xpol_runtime::testing::kernel_or_skip("millions_quick") {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let report = millions::run(&millions::Mode { quick: true }, out.path());
    let rows = report.json["results"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{}", report.markdown);
    let row = &rows[0];
    assert_eq!(row["n"], 100_000);
    assert!(row["xpol"]["memlock_bytes"].as_u64().is_some_and(|b| b >= row["xpol"]["tables_in_use_bytes"].as_u64().unwrap_or(u64::MAX)), "{}", report.json);
    assert!(row["c_lpm_trie"]["memlock_bytes"].as_u64().is_some_and(|b| b > 0), "{}", report.json);
    assert!(report.markdown.contains("| xpol / C | 100000 |"), "{}", report.markdown);
    assert!(out.path().join("millions.json").exists());
}

/// The generator is seeded: the same distinct prefixes in every run, of
/// the lengths of its mix only.
#[test]
fn millions_prefixes_are_seeded_and_distinct() {
    let a = millions::prefixes(20_000);
    assert_eq!(a, millions::prefixes(20_000));
    let mut sorted = a.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 20_000);
    assert!(a.iter().all(|&(p, len)| millions::LENGTH_MIX.iter().any(|&(l, _)| l == len) && p & !xpol_lang::ipv4_table::mask(len) == 0));
}
