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

#[test]
fn check_reports_json_for_editors() {
    let r = xpolc().args(["check", "tests/golden/fail/many-errors.xpol", "--message-format", "json"]).output().expect("run xpolc");
    assert!(!r.status.success());
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&r.stderr).lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
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
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&r.stderr).lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
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
    assert!(r.status.success(), "{}\n{}", fixed.join("\n"), String::from_utf8_lossy(&r.stderr));
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
    for required in ["examples/firewall.xpol", "examples/edge.xpol", "std-policies/tcp-sanity.xpol", "tests/golden/ok/hooks.xpol"] {
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
    assert!(err.contains("xpol::budget::maps") && err.contains("too-many-maps.xpol:133"), "{err}");
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
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&r.stderr).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
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
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{name}: {err}");
        let d: serde_json::Value = serde_json::from_str(err.lines().next().expect("a diagnostic")).expect("JSON");
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
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let d: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&r.stderr).lines().next().expect("a warning")).expect("JSON");
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

/// Shell completions and man pages come from the clap definitions: each
/// shell's script names the subcommands, and the man pages are roff with
/// a NAME section, one per subcommand, written with no temporary file left.
#[test]
fn completions_and_man_pages_are_generated() {
    let binaries: [(&str, &str, &[&str], &str); 2] = [
        (env!("CARGO_BIN_EXE_xpol"), "xpol", &["run", "apply", "delete", "list", "stats", "watch", "set", "pool", "test"], "8"),
        (env!("CARGO_BIN_EXE_xpolc"), "xpolc", &["build", "check", "lsp"], "1"),
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
