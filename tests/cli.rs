//! The binaries as a user runs them.

use std::process::Command;

fn xpolc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xpolc"))
}

#[test]
fn build_writes_an_object_atomically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("fw.o");
    let r = xpolc().args(["build", "examples/firewall.xpol", "-o"]).arg(&out).output().expect("run xpolc");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let bytes = std::fs::read(&out).expect("object written");
    assert_eq!(&bytes[..4], b"\x7fELF");
    // Only the object: no temporary file left beside it.
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
}

#[test]
fn failed_build_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("bad.o");
    let r = xpolc().args(["build", "tests/golden/fail/type-mismatch.xpol", "-o"]).arg(&out).output().expect("run xpolc");
    assert!(!r.status.success());
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(stderr.contains("cannot compare `int` with `ip`"), "{stderr}");
    assert!(stderr.contains("type-mismatch.xpol:1:"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
}

#[test]
fn emit_ir_prints_the_policy_ir() {
    let r = xpolc().args(["build", "examples/firewall.xpol", "--emit", "ir"]).output().expect("run xpolc");
    assert!(r.status.success());
    let ir = String::from_utf8_lossy(&r.stdout);
    assert!(ir.contains("program xdp:") && ir.contains("rule 0 `xdp /ip.src in blocklist/`"), "{ir}");
    for emit in ["ast", "llvm", "asm"] {
        let r = xpolc().args(["build", "examples/firewall.xpol", "--emit", emit]).output().expect("run xpolc");
        assert!(r.status.success() && !r.stdout.is_empty(), "--emit {emit}");
    }
}

/// JSON records on stdout, one per line, then the summary; nothing else.
fn json_records(r: &std::process::Output) -> Vec<serde_json::Value> {
    let out = String::from_utf8_lossy(&r.stdout);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {l}"))).collect();
    assert!(lines.iter().all(|l| l["schema"] == 1), "every record carries the schema: {out}");
    let last = lines.last().unwrap_or_else(|| panic!("no summary: {out}"));
    assert!(last["summary"].is_object() && lines[..lines.len() - 1].iter().all(|l| l.get("summary").is_none()), "one summary, last: {out}");
    lines
}

/// The diagnostics of [`json_records`], without the summary.
fn json_diagnostics(r: &std::process::Output) -> Vec<serde_json::Value> {
    let mut lines = json_records(r);
    lines.pop();
    lines
}

#[test]
fn check_reports_json_for_editors() {
    let r = xpolc().args(["check", "tests/golden/fail/many-errors.xpol", "--message-format", "json"]).output().expect("run xpolc");
    assert!(!r.status.success());
    assert!(r.stderr.is_empty(), "nothing for people: {}", String::from_utf8_lossy(&r.stderr));
    let records = json_records(&r);
    assert_eq!(records.last().expect("summary")["summary"], serde_json::json!({"errors": 4, "warnings": 0, "files": ["tests/golden/fail/many-errors.xpol"], "success": false}));
    let lines = json_diagnostics(&r);
    assert_eq!(lines.len(), 4, "every error is reported");
    assert_eq!(lines[0]["code"], "xpol::name::unknown");
    assert_eq!(lines[0]["line"], 2);
    assert_eq!(lines[0]["column"], 6);
    assert_eq!(lines[0]["end_column"], 15);
    assert_eq!(lines[0]["severity"], "error");
    // The suggestion is a fix an editor can apply: the span and its text.
    let fix = &lines[0]["fixes"][0];
    assert_eq!((fix["replacement"].as_str(), fix["machine_applicable"].as_bool()), (Some("tcp.dport"), Some(true)), "{fix}");
    assert_eq!((fix["line"].as_u64(), fix["column"].as_u64(), fix["end_column"].as_u64()), (Some(2), Some(6), Some(15)), "{fix}");
    assert!(fix["message"].as_str().expect("message").contains("did you mean `tcp.dport`?"), "{fix}");
}

/// Every syntax error of a file, each with its fix, in JSON: applying the
/// machine-applicable fixes gives a policy that parses.
#[test]
fn syntax_errors_carry_fixes_that_apply() {
    let source = "xdp /tcp.dport == 22/ { dorp }\nxdp /tcp.dport = 23/ { drop }\nxdp /ip.ttl < 3 and tcp.syn/ { drop }\nxpd { pass }\n";
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("typos.xpol");
    std::fs::write(&path, source).expect("write");
    let r = xpolc().args(["check", "--message-format", "json"]).arg(&path).output().expect("run xpolc");
    assert!(!r.status.success());
    let lines = json_diagnostics(&r);
    assert_eq!(lines.len(), 4, "one error per line of the file: {lines:?}");
    // Apply the first machine-applicable fix of each (line and column,
    // 1-based, columns in characters: ASCII here), last first.
    let mut fixed: Vec<String> = source.lines().map(str::to_string).collect();
    let mut fixes: Vec<&serde_json::Value> = lines.iter().filter_map(|d| d["fixes"].as_array()?.iter().find(|f| f["machine_applicable"] == true)).collect();
    assert_eq!(fixes.len(), 4, "{lines:?}");
    fixes.sort_by_key(|f| std::cmp::Reverse((f["line"].as_u64(), f["column"].as_u64())));
    for f in fixes {
        let line = &mut fixed[f["line"].as_u64().expect("line") as usize - 1];
        let (start, end) = (f["column"].as_u64().expect("column") as usize - 1, f["end_column"].as_u64().expect("end") as usize - 1);
        line.replace_range(start..end, f["replacement"].as_str().expect("replacement"));
    }
    std::fs::write(&path, fixed.join("\n")).expect("write");
    let r = xpolc().args(["check", "--message-format", "json"]).arg(&path).output().expect("run xpolc");
    assert!(r.status.success(), "{}\n{}", fixed.join("\n"), String::from_utf8_lossy(&r.stdout));
    assert_eq!(json_records(&r).last().expect("summary")["summary"]["success"], true);
    assert_eq!(fixed, ["xdp /tcp.dport == 22/ { drop }", "xdp /tcp.dport == 23/ { drop }", "xdp /ip.ttl < 3 && tcp.syn/ { drop }", "xdp { pass }"]);
}

#[test]
fn check_accepts_a_good_policy() {
    let r = xpolc().args(["check", "examples/edge.xpol"]).output().expect("run xpolc");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

#[test]
fn missing_file_is_an_error_not_a_panic() {
    let r = xpolc().args(["build", "no/such/policy.xpol"]).output().expect("run xpolc");
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("cannot read policy"));
}

#[test]
fn xpol_test_runs_sample_packets_when_a_policy_has_no_tests() {
    if !xpol_runtime::testing::kernel_or_skip("xpol_test_runs_sample_packets_when_a_policy_has_no_tests") {
        return;
    }
    let r = Command::new(env!("CARGO_BIN_EXE_xpol")).args(["test", "tests/golden/ok/sets.xpol"]).output().expect("run xpol");
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{}{}", out, String::from_utf8_lossy(&r.stderr));
    assert!(out.contains("verified by the kernel: 5 rules"), "{out}");
    assert!(out.contains("tcp 203.0.113.9 -> 198.19.255.1:80 syn             drop      #0 (line 14)"), "{out}");
}

#[test]
fn xpol_test_runs_a_pcap() {
    if !xpol_runtime::testing::kernel_or_skip("xpol_test_runs_a_pcap") {
        return;
    }
    use xpol_runtime::packet::PacketSpec;
    let dir = tempfile::tempdir().expect("tempdir");
    let pcap = dir.path().join("t.pcap");
    let frames = vec![
        PacketSpec::tcp4("203.0.113.9".parse().unwrap(), "198.19.0.1".parse().unwrap(), 1, 80).syn().build(),
        PacketSpec::tcp4("198.18.0.9".parse().unwrap(), "198.19.0.1".parse().unwrap(), 1, 23).syn().build(),
        PacketSpec::udp6("2001:db8::9".parse().unwrap(), "2001:db8::1".parse().unwrap(), 1, 53).build(),
        vec![0u8; 10],
    ];
    xpol_runtime::pcap::write_frames(&pcap, &frames).expect("write pcap");
    let r = Command::new(env!("CARGO_BIN_EXE_xpol")).args(["test", "examples/firewall.xpol", "--json", "--pcap"]).arg(&pcap).output().expect("run xpol");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&r.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    assert_eq!(lines.len(), 5);
    assert_eq!((lines[0]["verdict"].as_str(), lines[0]["fired"][0].as_u64()), (Some("drop"), Some(0)));
    assert_eq!((lines[1]["verdict"].as_str(), lines[1]["fired"][0].as_u64()), (Some("drop"), Some(3)));
    assert_eq!((lines[2]["verdict"].as_str(), lines[2]["fired"][0].as_u64()), (Some("pass"), Some(5)));
    assert!(lines[3]["verdict"].as_str().expect("verdict").starts_with("error"), "a 10-byte frame cannot be test-run");
    assert_eq!(lines[4]["counters"]["rules"][0]["packets"], 1);
    assert!(lines.iter().all(|l| l["schema"] == 1), "every record carries the schema (docs/json.md)");
}

/// `xpol test --json` on a policy's test cases: one record per case, then
/// the result, each with `"schema": 1` (docs/json.md).
#[test]
fn xpol_test_json_has_a_schema_and_a_record_per_case() {
    if !xpol_runtime::testing::kernel_or_skip("xpol_test_json_has_a_schema_and_a_record_per_case") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("t.xpol");
    std::fs::write(&p, "xdp /tcp.dport == 22/ { drop }\nxdp { pass }\ntest \"ssh\" {\n    tcp(dport: 22) => drop by 1\n    tcp(dport: 23) => drop\n}\n").expect("write");
    let r = Command::new(env!("CARGO_BIN_EXE_xpol")).arg("test").arg(&p).arg("--json").output().expect("run xpol");
    assert!(!r.status.success(), "one case fails");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&r.stdout).lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines.iter().all(|l| l["schema"] == 1), "{lines:?}");
    let pass = &lines[0];
    assert_eq!((pass["test"].as_str(), pass["case"].as_str(), pass["line"].as_u64()), (Some("ssh"), Some("tcp(dport: 22) => drop by 1"), Some(4)), "{pass}");
    assert_eq!((pass["expect"].as_str(), pass["expect_by"].as_u64(), pass["kernel"].as_str(), pass["reference"].as_str()), (Some("drop"), Some(1), Some("drop"), Some("drop")));
    assert_eq!((pass["decided_by"].as_u64(), pass["ok"].as_bool()), (Some(1), Some(true)));
    let fail = &lines[1];
    assert_eq!((fail["kernel"].as_str(), fail["decided_by"].as_u64(), fail["ok"].as_bool()), (Some("pass"), Some(2), Some(false)), "{fail}");
    assert_eq!(lines[2]["result"], serde_json::json!({"passed": 1, "failed": 1, "ok": false}));
}

/// `xpol test --pcap`: a map declared `max 4` and packets from 10 sources.
/// The JSON report gives its entries, capacity and the 6 lost updates; the
/// text report says so too, with a warning that names the fix.
#[test]
fn xpol_test_shows_lost_map_updates() {
    if !xpol_runtime::testing::kernel_or_skip("xpol_test_shows_lost_map_updates") {
        return;
    }
    use xpol_runtime::packet::PacketSpec;
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("full.xpol");
    std::fs::write(&policy, "map @m max 4\nxdp { @m[ip.src] = count(); pass }\n").expect("write policy");
    let pcap = dir.path().join("t.pcap");
    let frames: Vec<Vec<u8>> = (1..=10).map(|i| PacketSpec::udp4(std::net::Ipv4Addr::new(198, 18, 0, i), "198.19.0.1".parse().unwrap(), 1, 53).build()).collect();
    xpol_runtime::pcap::write_frames(&pcap, &frames).expect("write pcap");
    let run = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xpol"));
        cmd.arg("test").arg(&policy).arg("--pcap").arg(&pcap);
        if json {
            cmd.arg("--json");
        }
        let r = cmd.output().expect("run xpol");
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        String::from_utf8_lossy(&r.stdout).into_owned()
    };
    let out = run(true);
    let last: serde_json::Value = serde_json::from_str(out.lines().last().expect("a report")).expect("JSON");
    let m = &last["counters"]["maps"][0];
    assert_eq!((m["name"].as_str(), m["entries"].as_u64(), m["capacity"].as_u64(), m["lost"].as_u64()), (Some("m"), Some(4), Some(4), Some(6)), "{last}");
    let out = run(false);
    assert!(out.contains("@m: 4/4 entries, 6 lost updates"), "{out}");
    assert!(out.contains("warning: @m was full: 6 updates found no room among its 4 entries and were lost; declare `map @m max N` with a larger N"), "{out}");
}

/// The tests written in every example, std policy and golden policy pass
/// on both the kernel and the reference semantics. (std/bogons.xpol is a
/// set with no probes: examples/edge.xpol tests it.)
#[test]
fn policy_tests_pass() {
    if !xpol_runtime::testing::kernel_or_skip("policy_tests_pass") {
        return;
    }
    let mut policies = Vec::new();
    for dir in ["examples", "std-policies", "tests/golden/ok"] {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if path.extension().is_some_and(|e| e == "xpol") && text.lines().any(|l| l.starts_with("test \"")) {
                policies.push(path.display().to_string());
            }
        }
    }
    for required in ["examples/firewall.xpol", "examples/edge.xpol", "std-policies/tcp-sanity.xpol", "std-policies/host-firewall.xpol", "tests/golden/ok/hooks.xpol"] {
        assert!(policies.iter().any(|p| p == required), "{required} has tests");
    }
    for policy in &policies {
        let policy = policy.as_str();
        let r = Command::new(env!("CARGO_BIN_EXE_xpol")).args(["test", policy]).output().expect("run xpol");
        let out = String::from_utf8_lossy(&r.stdout);
        assert!(r.status.success(), "{policy}: {out}{}", String::from_utf8_lossy(&r.stderr));
        assert!(out.contains("test result: ok.") && !out.contains(" 0 passed"), "{policy}: {out}");
    }
}

#[test]
fn failing_policy_test_points_at_the_case() {
    if !xpol_runtime::testing::kernel_or_skip("failing_policy_test_points_at_the_case") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("t.xpol");
    std::fs::write(&p, "xdp /tcp.dport == 22/ { drop }\nxdp { pass }\ntest \"wrong on purpose\" {\n    tcp(dport: 22) => pass\n    tcp(dport: 23) => pass by 2\n    tcp(dport: 24) => pass by 1\n}\n").expect("write");
    let r = Command::new(env!("CARGO_BIN_EXE_xpol")).arg("test").arg(&p).output().expect("run xpol");
    assert!(!r.status.success());
    let out = String::from_utf8_lossy(&r.stdout);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(out.contains("test wrong on purpose ... FAILED") && out.contains("1 passed; 2 failed"), "{out}");
    assert!(err.contains("t.xpol:4:5") && err.contains("the kernel gave drop, the reference drop, decided by the rule on line 1"), "{err}");
    // Right verdict, wrong deciding rule.
    assert!(err.contains("t.xpol:6:5") && err.contains("expected pass by the rule on line 1"), "{err}");
}

/// 65 sets, one map more than the kernel allows a program: refused before
/// anything is loaded (`xpol::budget::maps`), so `--kernel` has no
/// verifier log to show or write (`--verifier-log` leaves nothing behind).
/// The log's rendering for a real rejection is tested with codegen faults
/// in tests/verifier.rs (`verbose_rejection_shows_the_log_lines`): no
/// policy the CLI can build is known to be rejected any more
/// (tests/limits.rs).
#[test]
fn check_kernel_refuses_over_budget_before_loading() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("verifier.log");
    let policy = "tests/verifier/too-many-maps.xpol";
    let r = xpolc().args(["check", "--kernel", "--verbose", "--verifier-log"]).arg(&log).arg(policy).output().expect("run xpolc");
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("xpol::budget::maps") && err.contains("too-many-maps.xpol:130"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0, "no log: nothing was loaded");
}

/// `xpol test` refuses the same policy the same way.
#[test]
fn xpol_test_refuses_over_budget_before_loading() {
    let r = Command::new(env!("CARGO_BIN_EXE_xpol")).args(["test", "tests/verifier/too-many-maps.xpol", "--verbose"]).output().expect("run xpol");
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("xpol::budget::maps"), "{err}");
}

/// `--verbose` and `--verifier-log` only mean something with `--kernel`.
#[test]
fn verifier_flags_need_kernel() {
    let r = xpolc().args(["check", "--verbose", "examples/edge.xpol"]).output().expect("run xpolc");
    assert_eq!(r.status.code(), Some(2), "{}", String::from_utf8_lossy(&r.stderr));
}

/// A set too large for the kernel to create its map (E2BIG) is refused by
/// the compiler first, in JSON, at its contents: how many entries it would
/// take and the limit.
#[test]
fn check_kernel_map_too_large_in_json() {
    if !xpol_runtime::testing::kernel_or_skip("check_kernel_map_too_large_in_json") {
        return;
    }
    let r = xpolc().args(["check", "--kernel", "--message-format", "json", "tests/verifier/set-too-large.xpol"]).output().expect("run xpolc");
    assert!(!r.status.success());
    let lines = json_diagnostics(&r);
    let d = lines.iter().find(|d| d["code"] == "xpol::set::too_large").expect("the set diagnostic");
    assert_eq!((d["line"].as_u64(), d["column"].as_u64()), (Some(4), Some(17)), "{d}");
    assert!(d["message"].as_str().is_some_and(|m| m.contains("1073741824 map entries, more than the 1048576")), "{d}");
}

/// Policies nested far past the parser's bound (a chain of 3,000 `||`,
/// 5,000 of `&&`, `+`, `!`, unary `-`, 5,000 parentheses) give a
/// diagnostic, not a stack overflow: compiled on a 2 MiB thread (the
/// default of a spawned thread) and by `xpolc` (the main thread's 8 MiB).
/// Just under the bound they compile on the 2 MiB thread: every pass after
/// the parser handles the depth it allows.
#[test]
fn deep_expressions_are_diagnostics_not_crashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = |n: usize, term: &dyn Fn(usize) -> String, op: &str| (0..n).map(term).collect::<Vec<_>>().join(op);
    let deep = |n: usize| {
        vec![
            ("or", format!("xdp /{}/ {{ drop }}", chain(n, &|i| format!("tcp.dport == {i}"), " || "))),
            ("and", format!("xdp /{}/ {{ drop }}", chain(n, &|i| format!("tcp.dport != {i}"), " && "))),
            ("add", format!("xdp /tcp.dport == {}/ {{ drop }}", chain(n, &|_| "ip.ttl".to_string(), " + "))),
            ("not", format!("xdp /{}tcp.syn/ {{ drop }}", "!".repeat(n))),
            ("neg", format!("xdp /tcp.dport == {}ip.ttl/ {{ drop }}", "- ".repeat(n))),
        ]
    };
    let compile_on_2mib = |path: std::path::PathBuf| {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let b = xpol_compiler::build(&path, &xpol_compiler::BuildOptions::default());
                (b.output.is_some(), b.diagnostics.iter().map(|d| d.code.clone()).collect::<Vec<_>>())
            })
            .expect("spawn")
            .join()
            .expect("no overflow")
    };
    let mut cases = deep(5000);
    cases[0] = ("or", deep(3000).remove(0).1);
    cases.push(("parens", format!("xdp /{}tcp.syn{}/ {{ drop }}", "(".repeat(5000), ")".repeat(5000))));
    for (name, text) in cases {
        let path = dir.path().join(format!("deep-{name}.xpol"));
        std::fs::write(&path, text).expect("write");
        let (ok, codes) = compile_on_2mib(path.clone());
        let want = if name == "parens" { "xpol::syntax" } else { "xpol::syntax::too_deep" };
        assert!(!ok && codes == [want], "{name}: {codes:?}");
        let r = xpolc().args(["check", "--message-format", "json"]).arg(&path).output().expect("run xpolc");
        assert_eq!(r.status.code(), Some(1), "{name}: {}", String::from_utf8_lossy(&r.stdout));
        let d = json_diagnostics(&r).remove(0);
        assert_eq!(d["code"], want, "{name}: {d}");
        assert_eq!(d["line"], 1, "{name}: {d}");
    }
    // Just under the bound (256 levels: a comparison under 250 `||`).
    for (name, text) in deep(250) {
        let path = dir.path().join(format!("within-{name}.xpol"));
        std::fs::write(&path, text).expect("write");
        let (ok, codes) = compile_on_2mib(path);
        assert!(ok, "{name}: {codes:?}");
    }
}

/// `redirect` to an interface this machine lacks: `xpolc check` warns
/// (the policy may be meant for another machine), `xpol run` refuses it
/// before loading anything, at the `redirect`.
#[test]
fn redirect_to_a_missing_interface() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("redirect.xpol");
    std::fs::write(&path, "xdp /tcp.dport == 22/ { redirect(xpolnoif0) }\nxdp { pass }\n").expect("write");
    let r = xpolc().args(["check", "--message-format", "json"]).arg(&path).output().expect("run xpolc");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stdout));
    let d = json_diagnostics(&r).remove(0);
    assert_eq!((d["code"].as_str(), d["severity"].as_str()), (Some("xpol::redirect::no_interface"), Some("warning")), "{d}");
    assert_eq!((d["line"].as_u64(), d["column"].as_u64()), (Some(1), Some(34)), "{d}");
    // `xpol run` checks before it loads or attaches: the interface it is
    // given does not exist either, so nothing could be attached anyway.
    let r = Command::new(env!("CARGO_BIN_EXE_xpol")).args(["run"]).arg(&path).args(["-i", "xpolnoif1"]).output().expect("run xpol");
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("no network interface `xpolnoif0` on this machine") && err.contains("redirect.xpol:1:34"), "{err}");
}

/// Under `--kernel`, a missing interface is an error (the programs are
/// still verified).
#[test]
fn check_kernel_refuses_a_missing_redirect_interface() {
    if !xpol_runtime::testing::kernel_or_skip("check_kernel_refuses_a_missing_redirect_interface") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("redirect.xpol");
    std::fs::write(&path, "xdp /tcp.dport == 22/ { redirect(xpolnoif0) }\nxdp /tcp.dport == 23/ { redirect(lo) }\n").expect("write");
    let r = xpolc().args(["check", "--kernel"]).arg(&path).output().expect("run xpolc");
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("verified by the kernel") && err.contains("no network interface `xpolnoif0`"), "{err}");
    assert!(!err.contains("`lo`"), "lo exists: {err}");
}

/// The one limit left to the kernel (docs/language.md, Limits): a program
/// within the compiler's size budget that the kernel's rewriting (map
/// lookups inlined) makes too long for its jumps. `check --kernel` names
/// the rule where the kernel could not rewrite, in the file it is in (here
/// an included one), from the instruction the kernel names ("insn N
/// cannot be patched", counted in the program as loaded), not at 1:1.
#[test]
fn check_kernel_locates_too_long_once_rewritten_in_an_include() {
    if !xpol_runtime::testing::kernel_or_skip("check_kernel_locates_too_long_once_rewritten_in_an_include") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("inc")).expect("mkdir");
    // 240 rules of two map updates each: about 31,600 instructions as
    // compiled (250 pass the compiler's budget), more once the kernel
    // inlines the lookups (238 load).
    let rules: String = (1..=240).map(|i| format!("xdp /tcp.dport == {i}/ {{ @m[ip.src] = count(); @c = count() }}\n")).collect();
    std::fs::write(dir.path().join("inc/rules.xpol"), &rules).expect("write");
    std::fs::write(dir.path().join("main.xpol"), "include \"inc/rules.xpol\"\nxdp { pass }\n").expect("write");
    let r = xpolc().current_dir(dir.path()).args(["check", "--kernel", "main.xpol"]).output().expect("run xpolc");
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("xpol::verifier::too_long_once_rewritten"), "{err}");
    // `╭─[inc/rules.xpol:LINE:COLUMN]`: a rule near the end, at its first
    // map update (column 26), whose lookup the kernel could not inline.
    let at = err.split("╭─[").nth(1).and_then(|s| s.split(']').next()).expect("a located error");
    let mut parts = at.rsplitn(3, ':');
    let (column, line, file) = (parts.next(), parts.next().and_then(|l| l.parse::<usize>().ok()), parts.next());
    assert_eq!(file, Some("inc/rules.xpol"), "{err}");
    assert_eq!(column, Some("26"), "{err}");
    assert!(line.is_some_and(|l| (100..=240).contains(&l)), "a rule near the end, not the first: {err}");
    assert!(err.contains("cannot be patched due to 16-bit range"), "{err}");
}

/// `xpolc check -` reads the policy from standard input: diagnostics name
/// it `<stdin>`, and its includes are read relative to the current
/// directory (docs/json.md). Also `build -` with `-o`.
#[test]
fn check_reads_the_policy_from_stdin() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("inc")).expect("mkdir");
    std::fs::write(dir.path().join("inc/ssh.xpol"), "xdp /tcp.dport == 22/ { drop }\n").expect("write");
    let run = |args: &[&str], stdin: &[u8]| {
        let mut child = xpolc()
            .current_dir(dir.path())
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run xpolc");
        child.stdin.take().expect("stdin").write_all(stdin).expect("write stdin");
        child.wait_with_output().expect("xpolc output")
    };
    let policy = b"include \"inc/ssh.xpol\"\nxdp /tcp.dprot == 23/ { drop }\n";
    let r = run(&["check", "--message-format", "json", "-"], policy);
    assert_eq!(r.status.code(), Some(1));
    let records = json_records(&r);
    assert_eq!((records[0]["file"].as_str(), records[0]["line"].as_u64(), records[0]["column"].as_u64()), (Some("<stdin>"), Some(2), Some(6)), "{records:?}");
    assert_eq!(records.last().expect("summary")["summary"]["files"], serde_json::json!(["<stdin>", "inc/ssh.xpol"]), "the include was read relative to the current directory");
    // For people, on stderr.
    let r = run(&["check", "-"], policy);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.stdout.is_empty() && err.contains("<stdin>:2:6") && err.contains("did you mean `tcp.dport`?"), "{err}");
    // A good policy: an object from `build - -o`.
    let r = run(&["build", "-", "-o", "out.o"], b"include \"inc/ssh.xpol\"\nxdp { pass }\n");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(std::fs::metadata(dir.path().join("out.o")).is_ok_and(|m| m.len() > 0));
    let r = run(&["build", "-"], b"xdp { pass }\n");
    assert!(!r.status.success() && String::from_utf8_lossy(&r.stderr).contains("-o"), "no object name to make up");
    // Not UTF-8: an `xpol::io` error without a place, closed by the summary.
    let r = run(&["check", "--message-format", "json", "-"], b"xdp { pass }\n\xff\n");
    assert_eq!(r.status.code(), Some(1));
    let records = json_records(&r);
    assert_eq!((records[0]["code"].as_str(), records[0]["file"].as_str()), (Some("xpol::io"), None), "{records:?}");
    assert!(records[0]["message"].as_str().is_some_and(|m| m.contains("standard input") && m.contains("UTF-8")), "{records:?}");
}

/// In JSON and SARIF, stdout holds the diagnostics and nothing else: what
/// `build` says about the object it wrote goes to stderr, and a failure of
/// the command itself (an object it cannot write) is one more diagnostic
/// before the summary.
#[test]
fn machine_formats_own_stdout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("edge.o");
    let r = xpolc().args(["build", "examples/edge.xpol", "--message-format", "json", "-o"]).arg(&out).output().expect("run xpolc");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let records = json_records(&r);
    assert_eq!(records.last().expect("summary")["summary"]["success"], true);
    assert!(String::from_utf8_lossy(&r.stderr).contains("wrote"), "people are told on stderr");
    // The object's folder does not exist: the command fails, in JSON.
    let r = xpolc().args(["build", "examples/edge.xpol", "--message-format", "json", "-o"]).arg(dir.path().join("no/such/dir/edge.o")).output().expect("run xpolc");
    assert_eq!(r.status.code(), Some(1));
    let records = json_records(&r);
    let fatal = records.iter().find(|d| d["code"] == "xpol::cli").unwrap_or_else(|| panic!("the failure as a diagnostic: {records:?}"));
    assert!(fatal["file"].is_null() && fatal["severity"] == "error", "{fatal}");
    assert_eq!(records.last().expect("summary")["summary"]["success"], false);
    let r = xpolc().args(["build", "examples/edge.xpol", "--message-format", "sarif", "-o"]).arg(dir.path().join("no/such/dir/edge.o")).output().expect("run xpolc");
    let log: serde_json::Value = serde_json::from_slice(&r.stdout).expect("one SARIF log");
    assert_eq!(log["runs"][0]["invocations"][0]["executionSuccessful"], false, "{log}");
    // `--emit` prints to stdout too: not with a machine format.
    let r = xpolc().args(["build", "examples/edge.xpol", "--emit", "ir", "--message-format", "json"]).output().expect("run xpolc");
    assert!(!r.status.success() && r.stdout.is_empty());
}

/// The SARIF 2.1.0 log of `--message-format sarif`, checked for the
/// properties SARIF requires and the references it makes (rule and
/// artifact indexes), on failing cases with several errors, related
/// locations, fixes, includes, a file shown by excerpts only, stdin.
#[test]
fn sarif_output_is_well_formed() {
    let cases = ["tests/golden/fail/many-errors.xpol", "tests/golden/fail/name-suggestions.xpol", "tests/golden/fail/budget-maps-after-include.xpol", "tests/golden/fail/set-file-bad.xpol", "examples/edge.xpol"];
    let mut results = 0;
    for case in cases {
        let r = xpolc().args(["check", "--message-format", "sarif", case]).output().expect("run xpolc");
        let log: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap_or_else(|e| panic!("{case}: one JSON document ({e})"));
        assert_eq!(r.status.success(), case.starts_with("examples/"), "{case}");
        results += validate_sarif(&log, case);
    }
    assert!(results >= 10, "the cases have results: {results}");
    // From stdin: the name as a URI reference.
    let mut child = xpolc().args(["check", "--message-format", "sarif", "-"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().expect("run xpolc");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), b"xdp { dorp }\n").expect("write stdin");
    let log: serde_json::Value = serde_json::from_slice(&child.wait_with_output().expect("output").stdout).expect("SARIF");
    validate_sarif(&log, "stdin");
    assert_eq!(log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"], "%3Cstdin%3E");
}

/// Checks a SARIF log's structure; returns how many results it has.
fn validate_sarif(log: &serde_json::Value, case: &str) -> usize {
    use serde_json::Value;
    let at = |v: &Value, key: &str| -> Value { v.get(key).cloned().unwrap_or_else(|| panic!("{case}: `{key}` missing in {v}")) };
    let uint = |v: &Value, key: &str| -> u64 { at(v, key).as_u64().unwrap_or_else(|| panic!("{case}: `{key}` is not a non-negative integer in {v}")) };
    assert_eq!(at(log, "version"), "2.1.0", "{case}");
    assert!(at(log, "$schema").as_str().is_some_and(|s| s.contains("sarif-2.1.0")), "{case}");
    let runs = at(log, "runs");
    let runs = runs.as_array().expect("runs is an array");
    assert_eq!(runs.len(), 1, "{case}: one run");
    let run = &runs[0];
    let driver = at(&at(run, "tool"), "driver");
    assert_eq!(at(&driver, "name"), "xpolc");
    assert!(at(&driver, "version").is_string());
    let rules = at(&driver, "rules").as_array().cloned().expect("rules is an array");
    let ids: Vec<&str> = rules.iter().map(|r| r["id"].as_str().expect("a rule has an id")).collect();
    assert!(ids.iter().enumerate().all(|(i, id)| !ids[..i].contains(id)), "{case}: rule ids are unique: {ids:?}");
    for r in &rules {
        assert!(["error", "warning", "note", "none"].contains(&at(&at(r, "defaultConfiguration"), "level").as_str().expect("level")), "{case}");
    }
    assert_eq!(at(run, "columnKind"), "unicodeCodePoints");
    let artifacts = at(run, "artifacts").as_array().cloned().expect("artifacts is an array");
    for inv in at(run, "invocations").as_array().expect("invocations is an array") {
        assert!(at(inv, "executionSuccessful").is_boolean(), "{case}");
    }
    let check_artifact = |loc: &Value| {
        let uri = at(loc, "uri");
        let uri = uri.as_str().expect("uri is a string");
        assert!(!uri.is_empty() && uri.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~/%:".contains(&b)), "{case}: `{uri}` is a URI reference");
        let index = uint(loc, "index") as usize;
        assert_eq!(artifacts.get(index).map(|a| &a["location"]["uri"]), Some(&Value::from(uri)), "{case}: artifact {index}");
    };
    let check_region = |region: &Value| {
        let (sl, sc, el, ec) = (uint(region, "startLine"), uint(region, "startColumn"), uint(region, "endLine"), uint(region, "endColumn"));
        assert!(sl >= 1 && sc >= 1 && el >= sl && ec >= 1 && (el > sl || ec >= sc), "{case}: region {region}");
    };
    let check_location = |loc: &Value| {
        let physical = at(loc, "physicalLocation");
        check_artifact(&at(&physical, "artifactLocation"));
        check_region(&at(&physical, "region"));
    };
    let results = at(run, "results").as_array().cloned().expect("results is an array");
    for result in &results {
        assert!(at(&at(result, "message"), "text").as_str().is_some_and(|t| !t.is_empty()), "{case}: a result has a message");
        let rule = at(result, "ruleId");
        let index = uint(result, "ruleIndex") as usize;
        assert_eq!(ids.get(index).copied(), rule.as_str(), "{case}: ruleIndex names ruleId");
        assert!(["error", "warning", "note", "none"].contains(&at(result, "level").as_str().expect("level")), "{case}");
        let locations = result.get("locations").and_then(Value::as_array).cloned().unwrap_or_default();
        assert!(locations.len() <= 1, "{case}: one primary location");
        locations.iter().for_each(check_location);
        let related = result.get("relatedLocations").and_then(Value::as_array).cloned().unwrap_or_default();
        let rel_ids: Vec<u64> = related.iter().map(|l| uint(l, "id")).collect();
        assert!(rel_ids.iter().enumerate().all(|(i, id)| !rel_ids[..i].contains(id)), "{case}: related ids are unique");
        related.iter().for_each(check_location);
        for fix in result.get("fixes").and_then(Value::as_array).cloned().unwrap_or_default() {
            assert!(at(&at(&fix, "description"), "text").is_string(), "{case}");
            let changes = at(&fix, "artifactChanges").as_array().cloned().expect("artifactChanges is an array");
            assert!(!changes.is_empty(), "{case}: a fix changes something");
            for change in changes {
                check_artifact(&at(&change, "artifactLocation"));
                let replacements = at(&change, "replacements").as_array().cloned().expect("replacements is an array");
                assert!(!replacements.is_empty(), "{case}");
                for r in replacements {
                    check_region(&at(&r, "deletedRegion"));
                    assert!(at(&at(&r, "insertedContent"), "text").is_string(), "{case}");
                }
            }
        }
    }
    results.len()
}

/// Shell completions and man pages come from the clap definitions: each
/// shell's script names the subcommands, and the man pages are roff with
/// a NAME section, one per subcommand, written with no temporary file left.
#[test]
fn completions_and_man_pages_are_generated() {
    let binaries: [(&str, &str, &[&str], &str); 2] = [
        (env!("CARGO_BIN_EXE_xpol"), "xpol", &["run", "apply", "delete", "list", "stats", "watch", "set", "pool", "test", "demo", "agent"], "8"),
        (env!("CARGO_BIN_EXE_xpolc"), "xpolc", &["build", "check", "lsp", "diff", "query"], "1"),
    ];
    for (exe, name, subcommands, section) in binaries {
        for shell in ["bash", "zsh", "fish"] {
            let r = Command::new(exe).args(["completions", shell]).output().expect("run");
            assert!(r.status.success(), "{name} completions {shell}: {}", String::from_utf8_lossy(&r.stderr));
            let script = String::from_utf8(r.stdout).expect("utf-8");
            assert!(script.contains(name), "{name} completions {shell} names the command");
            for sub in subcommands {
                assert!(script.contains(sub), "{name} completions {shell} lacks `{sub}`:\n{script}");
            }
        }
        let r = Command::new(exe).arg("man").output().expect("run");
        assert!(r.status.success(), "{name} man: {}", String::from_utf8_lossy(&r.stderr));
        let page = String::from_utf8(r.stdout).expect("utf-8");
        assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
        assert!(page.contains(&format!(".TH {name} {section}")) && page.contains(".SH NAME") && page.contains(".SH SUBCOMMANDS"), "{page}");

        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("man");
        let r = Command::new(exe).args(["man", "--out"]).arg(&out).output().expect("run");
        assert!(r.status.success(), "{name} man --out: {}", String::from_utf8_lossy(&r.stderr));
        let mut files: Vec<String> = std::fs::read_dir(&out).expect("dir").map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect();
        files.sort();
        assert!(files.contains(&format!("{name}.{section}")), "{files:?}");
        for sub in subcommands {
            assert!(files.contains(&format!("{name}-{sub}.{section}")), "no page for `{sub}`: {files:?}");
        }
        for f in &files {
            assert!(f.ends_with(&format!(".{section}")), "a stray file: {f}");
            let page = std::fs::read_to_string(out.join(f)).expect("read");
            assert!(page.contains(".SH NAME") && page.contains(&f[..f.len() - 2].replace('-', "\\-")), "{f}:\n{page}");
        }
    }
    // The values clap completes are spelled as in the language and in
    // xdp-tools (fish lists each value as `VALUE\tDESCRIPTION`); the old
    // spellings are accepted, not offered.
    let r = Command::new(env!("CARGO_BIN_EXE_xpol")).args(["completions", "fish"]).output().expect("run");
    let script = String::from_utf8_lossy(&r.stdout);
    for offered in ["tc:ingress\\t", "tc:egress\\t", "skb\\t", "native\\t"] {
        assert!(script.contains(offered), "{offered} in {script}");
    }
    for old in ["tc-ingress\\t", "generic\\t"] {
        assert!(!script.contains(old), "{old} in {script}");
    }
}
