//! `xpol demo` end to end: it creates its namespaces, attaches the bundled
//! examples/firewall.xpol, sends its traffic and removes everything; the
//! counters it reports must be what that traffic gives, rule by rule.

use std::process::Command;

mod common;
use common::net::output_bounded;

#[test]
fn demo_counts_what_it_sent_and_leaves_nothing() {
    if !xpol_runtime::testing::kernel_or_skip("xpol demo") {
        return;
    }
    let namespaces = || String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().expect("ip netns").stdout).into_owned();
    let out = output_bounded({
        let mut c = Command::new(env!("CARGO_BIN_EXE_xpol"));
        c.args(["demo", "--json"]);
        c
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "xpol demo failed: {stderr}");
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().expect("a report")).expect("JSON");
    assert_eq!(last["demo"]["web_ok"], true, "the real connection to the web server: {last}");
    // What each rule (by line of examples/firewall.xpol) must have counted.
    let steps = last["demo"]["steps"].as_array().expect("steps");
    let expected = |line: u64| steps.iter().filter(|s| s["line"] == line).map(|s| s["frames"].as_u64().unwrap()).sum::<u64>();
    let counted = |line: u64| {
        let rule = last["report"]["rules"].as_array().expect("rules").iter().find(|r| r["line"] == line).unwrap_or_else(|| panic!("no rule on line {line}"));
        rule["packets"].as_u64().unwrap()
    };
    // Blocklisted sources, TCP fragments, ssh from outside, telnet: exactly
    // the frames sent (these sources and ports send nothing else).
    for (line, n) in [(15, 6), (16, 1), (17, 3), (18, 2)] {
        assert_eq!(expected(line), n, "the demo's traffic for line {line}");
        assert_eq!(counted(line), n, "line {line}: {last}");
    }
    // Web: the frames, and the real connection's packets (at least its
    // SYN, ACK and request) on top.
    assert!(counted(19) >= expected(19) + 3, "line 19: {last}");
    // The rest: the admin's ssh and the UDP fragment, plus whatever the
    // kernel itself sends (ARP, neighbour discovery).
    assert!(counted(20) >= expected(20) && expected(20) == 3, "line 20: {last}");
    // Each ssh and telnet frame dropped was logged (3 + 2, within the
    // rules' `rate: 10/s` bursts).
    assert_eq!(last["demo"]["log_records"], 5, "{last}");
    let blocked = &last["report"]["maps"][0];
    assert_eq!(blocked["name"], "blocked");
    assert_eq!(blocked["entries"], 2, "{blocked}");
    assert!(stderr.contains("removed the namespaces"), "{stderr}");
    assert!(!namespaces().contains(&format!("xpol-demo-{}", last_pid(&stderr))), "namespaces left behind: {}", namespaces());
}

/// The process id in the demo's namespace names, as it reported them.
fn last_pid(stderr: &str) -> String {
    let at = stderr.find("xpol-demo-").expect("the namespaces are named") + "xpol-demo-".len();
    stderr[at..].chars().take_while(char::is_ascii_digit).collect()
}
