//! Golden tests. A case is one `.xpol` file; its folder says what must
//! happen:
//! - `tests/golden/ok/`: compiles; the policy IR (and any warnings) is
//!   snapshotted.
//! - `tests/golden/fail/`: fails; the rendered diagnostics are snapshotted.
//! - `examples/`: compile, like `ok/`.
//! - `std-policies/`: compile when included by a one-probe policy.
//!
//! Snapshots live in `tests/golden/snapshots/`; `cargo insta review` updates
//! them. LLVM IR is deliberately not snapshotted: it changes with LLVM.

use std::path::{Path, PathBuf};
use xpol_compiler::{build, BuildOptions};
use xpol_lang::render::render_human;

fn cases(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {dir}: {e}"))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "xpol"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no cases in {dir}");
    v
}

fn snapshot(name: &str, content: &str) {
    insta::with_settings!({
        snapshot_path => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/snapshots"),
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        insta::assert_snapshot!(name, content);
    });
}

fn stem(p: &Path) -> String {
    p.file_stem().expect("a file name").to_string_lossy().into_owned()
}

/// Compiles `path` and returns the text to snapshot, or panics with the
/// diagnostics when it fails.
fn must_compile(path: &Path) -> String {
    let b = build(path, &BuildOptions::default());
    let diags = render_human(&b.diagnostics, &b.sources, false);
    let out = b.output.unwrap_or_else(|| panic!("{} must compile, but:\n{diags}", path.display()));
    assert!(!out.object.is_empty());
    if diags.is_empty() {
        out.ir.to_string()
    } else {
        format!("{}\n--- warnings ---\n{diags}", out.ir)
    }
}

#[test]
fn golden_ok() {
    for case in cases("tests/golden/ok") {
        snapshot(&format!("ok__{}", stem(&case)), &must_compile(&case));
    }
}

#[test]
fn golden_fail() {
    for case in cases("tests/golden/fail") {
        let b = build(&case, &BuildOptions::default());
        assert!(b.output.is_none(), "{} must fail to compile, but it compiled", case.display());
        assert!(b.diagnostics.iter().any(|d| d.is_error()));
        for d in &b.diagnostics {
            assert!(!d.labels.is_empty() || d.code == "xpol::io", "{}: diagnostic without a span: {d:?}", case.display());
        }
        snapshot(&format!("fail__{}", stem(&case)), &render_human(&b.diagnostics, &b.sources, false));
    }
}

#[test]
fn golden_examples() {
    for case in cases("examples") {
        snapshot(&format!("example__{}", stem(&case)), &must_compile(&case));
    }
}

#[test]
fn golden_std_policies() {
    let dir = tempfile::tempdir().expect("tempdir");
    for case in cases("std-policies") {
        let name = case.file_name().expect("a file name").to_string_lossy().into_owned();
        let wrapper = dir.path().join(format!("use-{}", name));
        std::fs::write(&wrapper, format!("include \"std/{name}\"\nxdp {{ pass }}\n")).expect("write wrapper");
        let text = must_compile(&wrapper).replace(&dir.path().display().to_string(), "<tmp>");
        snapshot(&format!("std__{}", stem(&case)), &text);
    }
}

/// The JSON form editors and CI annotations consume, for a policy with
/// several errors.
#[test]
fn golden_json_diagnostics() {
    let b = build(Path::new("tests/golden/fail/many-errors.xpol"), &BuildOptions::default());
    snapshot("json__many-errors", &xpol_lang::render::render_json(&b.diagnostics, &b.sources));
}

/// Every example and std policy checks without a warning, unless its text
/// explains the warning it keeps and names it on a line of its own,
/// `// expect-warning: CODE` (one line per warning it gives, e.g.
/// `// expect-warning: xpol::lint::shadowed`). A new user's first policy
/// is copied from these: a warning they print must be meant. A std policy
/// is checked as a policy that includes it.
#[test]
fn examples_and_std_policies_are_warning_free() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut checked = 0;
    for case in cases("examples").into_iter().chain(cases("std-policies")) {
        let text = std::fs::read_to_string(&case).expect("read the policy");
        let mut expected: Vec<String> =
            text.lines().filter_map(|l| l.trim().strip_prefix("// expect-warning:")).map(|code| code.trim().to_string()).collect();
        let built = if case.starts_with("std-policies") {
            let name = case.file_name().expect("a file name").to_string_lossy().into_owned();
            let wrapper = dir.path().join(format!("use-{name}"));
            std::fs::write(&wrapper, format!("include \"std/{name}\"\nxdp {{ pass }}\n")).expect("write wrapper");
            build(&wrapper, &BuildOptions::default())
        } else {
            build(&case, &BuildOptions::default())
        };
        let rendered = render_human(&built.diagnostics, &built.sources, false);
        assert!(built.output.is_some(), "{} must compile:\n{rendered}", case.display());
        let mut warnings: Vec<String> = built.diagnostics.iter().filter(|d| !d.is_error()).map(|d| d.code.to_string()).collect();
        warnings.sort();
        expected.sort();
        assert_eq!(
            warnings,
            expected,
            "{}: its warnings must be the ones it names with `// expect-warning: CODE` lines (fix the policy, or explain the warning and name it):\n{rendered}",
            case.display()
        );
        checked += 1;
    }
    assert!(checked >= 6, "examples and std policies: {checked}");
}
