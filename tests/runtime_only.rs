//! The LLVM-free `xpol` (`cargo build --no-default-features --bin xpol`,
//! the root package's `compiler` feature off): it links no libLLVM, refuses
//! a `.xpol` source with the command that makes the object, and tests,
//! applies, runs and inspects an object built by `xpolc`, as the full
//! `xpol` does.
//!
//! The binary is `$XPOL_RUNTIME_ONLY_BIN` when set (CI builds it in release,
//! as the README's sizes are), else it is built here, into
//! target/runtime-only: a target directory of its own, since building it
//! into this one would put it in place of the full `xpol` the other tests
//! run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

mod common;
use common::host::Host;
use common::net::{output_bounded, Net};

/// The LLVM-free `xpol`, built once per test process.
fn runtime_only() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("XPOL_RUNTIME_ONLY_BIN") {
            let bin = PathBuf::from(bin);
            assert!(bin.is_file(), "XPOL_RUNTIME_ONLY_BIN={} is not a file", bin.display());
            return bin;
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target = root.join("target/runtime-only");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(root)
            .args(["build", "--locked", "--no-default-features", "--bin", "xpol", "--target-dir"])
            .arg(&target)
            .output()
            .expect("run cargo");
        assert!(out.status.success(), "the LLVM-free xpol does not build:\n{}", String::from_utf8_lossy(&out.stderr));
        target.join("debug/xpol")
    })
}

fn run(bin: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("timeout");
    cmd.arg("60").arg(bin).args(args);
    output_bounded(cmd)
}

/// The shared libraries `bin` links, as `ldd` lists them.
fn linked(bin: &Path) -> String {
    let out = Command::new("ldd").arg(bin).output().expect("run ldd");
    assert!(out.status.success(), "ldd {}: {}", bin.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The point of the feature: no libLLVM (the full `xpol` links it, so the
/// check can tell them apart), and the commands are all there.
#[test]
fn links_no_llvm_and_has_every_command() {
    let bin = runtime_only();
    let libs = linked(bin);
    assert!(!libs.to_lowercase().contains("llvm"), "the LLVM-free xpol links LLVM:\n{libs}");
    let full = linked(Path::new(env!("CARGO_BIN_EXE_xpol")));
    assert!(full.contains("libLLVM"), "the full xpol links libLLVM:\n{full}");
    let help = run(bin, &["--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    for command in ["run", "apply", "delete", "list", "stats", "watch", "set", "pool", "test", "demo", "agent", "completions", "man"] {
        assert!(help.lines().any(|l| l.trim_start().starts_with(command)), "no `{command}` in:\n{help}");
    }
}

/// A source is checked (its own errors come first) and then refused with
/// the `xpolc build` command that makes its object; no panic, exit 1.
#[test]
fn a_source_is_refused_with_the_command_that_compiles_it() {
    let bin = runtime_only();
    for args in [&["test", "examples/firewall.xpol"][..], &["apply", "examples/firewall.xpol", "-i", "lo", "--name", "n"]] {
        let out = run(bin, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("xpol::no_codegen") && err.contains("xpolc build examples/firewall.xpol -o examples/firewall.o"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // The demo compiles its bundled policy: refused before it creates anything.
    let out = run(bin, &["demo"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "demo: {err}");
    assert!(err.contains("without the compiler") && !err.contains("created the namespaces") && !err.contains("panicked"), "demo: {err}");
    // A policy with an error gets that error, at its line, before the refusal.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.xpol");
    std::fs::write(&bad, "xdp /tcp.dport == 198.18.0.1/ { drop }\n").expect("write");
    let out = run(bin, &["test", bad.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("bad.xpol:1:") && err.contains("cannot compare"), "{err}");
}

/// An object from `xpolc build`: the LLVM-free `xpol test` gives the same
/// verdicts and counters as the full one; `apply` attaches it, so that
/// real packets between two namespaces count in `stats`; `run` shows them
/// live; `list` and `delete` manage it.
#[test]
fn an_object_from_xpolc_is_tested_applied_and_run() {
    if !xpol_runtime::testing::kernel_or_skip("the LLVM-free xpol on an object from xpolc") {
        return;
    }
    let bin = runtime_only();
    let dir = tempfile::tempdir().expect("tempdir");
    let object = dir.path().join("fw.o");
    let built = Command::new(env!("CARGO_BIN_EXE_xpolc")).args(["build", "examples/firewall.xpol", "-o"]).arg(&object).output().expect("run xpolc");
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let object = object.to_str().expect("utf-8");
    let ours = run(bin, &["test", object]);
    assert!(ours.status.success(), "{}", String::from_utf8_lossy(&ours.stderr));
    let full = run(Path::new(env!("CARGO_BIN_EXE_xpol")), &["test", object]);
    assert!(full.status.success(), "{}", String::from_utf8_lossy(&full.stderr));
    let ours = String::from_utf8_lossy(&ours.stdout);
    assert!(ours.contains("drop") && ours.contains("pass"), "{ours}");
    // Line for line, but a hash map's entries come in no fixed order.
    let lines = |s: &str| {
        let mut v: Vec<String> = s.lines().map(str::to_string).collect();
        v.sort();
        v
    };
    assert_eq!(lines(&ours), lines(&String::from_utf8_lossy(&full.stdout)), "the same object, the same report");

    // Datagrams to port 7 count in @seen; everything passes.
    let policy = dir.path().join("seen.xpol");
    std::fs::write(&policy, "xdp /udp.dport == 7/ { @seen = count(); pass }\nxdp { pass }\n").expect("write");
    let object = dir.path().join("seen.o");
    let built = Command::new(env!("CARGO_BIN_EXE_xpolc")).arg("build").arg(&policy).arg("-o").arg(&object).output().expect("run xpolc");
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let object = object.to_str().expect("utf-8");
    let (net, host) = (Net::new(), Host::new());
    let xpol = |args: &[&str]| {
        let mut cmd = host.command(&net.b, bin.to_str().expect("utf-8"));
        cmd.args(args);
        output_bounded(cmd)
    };
    let ok = |args: &[&str]| {
        let out = xpol(args);
        assert!(out.status.success(), "xpol {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // `n` datagrams from namespace a to port 7 of b.
    let send = |n: u32| {
        let script = format!("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor _ in range({n}): s.sendto(b'x', ('{}', 7))\n", net.addr_b);
        let out = output_bounded({
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &net.a, "python3", "-c", &script]);
            c
        });
        assert!(out.status.success(), "send: {}", String::from_utf8_lossy(&out.stderr));
    };
    // One JSON line per applied policy.
    let listed = || -> Vec<serde_json::Value> { ok(&["list", "-j"]).lines().map(|l| serde_json::from_str(l).expect("JSON")).collect() };
    ok(&["apply", object, "-i", &net.vb, "--name", "seen"]);
    let list = listed();
    assert_eq!((list.len(), &list[0]["policy"]["name"], &list[0]["policy"]["ok"]), (1, &"seen".into(), &true.into()), "{list:?}");
    send(3);
    let stats: serde_json::Value = serde_json::from_str(&ok(&["stats", "seen", "-j"])).expect("JSON");
    let seen = &stats["maps"].as_array().expect("maps")[0];
    assert_eq!((seen["name"].as_str(), seen["top"][0]["value"].as_u64()), (Some("seen"), Some(3)), "{stats}");
    ok(&["delete", "seen"]);
    assert!(listed().is_empty(), "deleted");

    // `run` attaches for its duration and reports what passed meanwhile.
    let mut cmd = host.command(&net.b, bin.to_str().expect("utf-8"));
    cmd.args(["run", object, "-i", &net.vb, "--duration", "4", "-j"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("xpol run");
    // It says so once attached; send then.
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut said = String::new();
    while !said.starts_with("attached") {
        said.clear();
        assert!(std::io::BufRead::read_line(&mut stderr, &mut said).expect("read") > 0, "xpol run ended before attaching");
    }
    send(3);
    let out = child.wait_with_output().expect("xpol run ends after --duration");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let last: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().expect("a final report")).expect("JSON");
    let rules = last["report"]["rules"].as_array().expect("rules");
    assert_eq!(rules[0]["packets"].as_u64(), Some(3), "the datagrams sent while attached: {last}");
}
