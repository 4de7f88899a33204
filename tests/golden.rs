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
//!
//! A `fail/` case about a size limit would be a file of thousands of rules.
//! Such a case holds a line `//! repeat A..B: TEXT` instead, which stands
//! for the lines TEXT with `{i}` replaced by A, A+1, ... B-1; so may the
//! files in `fail/include/` it includes. Such a case is built from a copy
//! of `fail/` with every such line expanded, shown as `<expanded>/`: the
//! line numbers in its snapshot are those of the expanded file.

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

/// The marker of a line that stands for many (see the module's doc).
const REPEAT: &str = "//! repeat ";

/// `text` with every `//! repeat A..B: TEXT` line expanded.
fn expand(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let Some(spec) = line.strip_prefix(REPEAT) else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let (range, template) = spec.split_once(": ").unwrap_or_else(|| panic!("`{line}`: expected `{REPEAT}A..B: TEXT`"));
        let (a, b) = range.split_once("..").unwrap_or_else(|| panic!("`{line}`: expected a range A..B"));
        let (a, b): (u64, u64) = (a.parse().expect("A of A..B"), b.parse().expect("B of A..B"));
        for i in a..b {
            out.push_str(&template.replace("{i}", &i.to_string()));
            out.push('\n');
        }
    }
    out
}

/// Whether `case`, or a file it includes from `fail/include/`, holds a
/// line to expand.
fn needs_expansion(case: &Path) -> bool {
    let text = std::fs::read_to_string(case).expect("read case");
    let dir = case.parent().expect("a folder");
    text.contains(REPEAT)
        || text.lines().filter_map(|l| l.trim().strip_prefix("include \"")?.strip_suffix('"')).any(|inc| std::fs::read_to_string(dir.join(inc)).is_ok_and(|t| t.contains(REPEAT)))
}

/// A copy of `fail/` and `fail/include/`, expanded, in `dir`.
fn expanded_copy(from: &Path, dir: &Path) {
    for sub in ["", "include"] {
        std::fs::create_dir_all(dir.join(sub)).expect("create folder");
        for entry in std::fs::read_dir(from.join(sub)).expect("read folder") {
            let path = entry.expect("dir entry").path();
            if path.is_file() {
                let text = std::fs::read_to_string(&path).expect("read case file");
                std::fs::write(dir.join(sub).join(path.file_name().expect("a name")), expand(&text)).expect("write expanded file");
            }
        }
    }
}

/// Builds a `fail/` case (at `case`, `shown` as `shown`) and checks that
/// it fails with errors that all have a place.
fn must_fail(case: &Path, shown: &Path) -> xpol_compiler::Build {
    let b = build(case, &BuildOptions::default());
    assert!(b.output.is_none(), "{} must fail to compile, but it compiled", shown.display());
    assert!(b.diagnostics.iter().any(|d| d.is_error()));
    for d in &b.diagnostics {
        assert!(!d.labels.is_empty() || d.code == "xpol::io", "{}: diagnostic without a span: {d:?}", shown.display());
    }
    b
}

#[test]
fn golden_fail() {
    for case in cases("tests/golden/fail").into_iter().filter(|c| !needs_expansion(c)) {
        let b = must_fail(&case, &case);
        snapshot(&format!("fail__{}", stem(&case)), &render_human(&b.diagnostics, &b.sources, false));
    }
}

/// The `fail/` cases with lines to expand (a test of their own: they take
/// most of the time, and the harness runs tests side by side).
#[test]
fn golden_fail_expanded() {
    let dir = tempfile::tempdir().expect("tempdir");
    expanded_copy(Path::new("tests/golden/fail"), dir.path());
    let expanded: Vec<PathBuf> = cases("tests/golden/fail").into_iter().filter(|c| needs_expansion(c)).collect();
    assert!(!expanded.is_empty(), "no case to expand");
    for case in expanded {
        let b = must_fail(&dir.path().join(case.file_name().expect("a name")), &case);
        let text = render_human(&b.diagnostics, &b.sources, false).replace(&dir.path().display().to_string(), "<expanded>");
        snapshot(&format!("fail__{}", stem(&case)), &text);
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

/// The JSON stream (`xpolc check --message-format json`: the records,
/// then the summary) and the SARIF log (`--message-format sarif`) of a
/// few failing cases: several errors, fixes, a budget error in a file
/// after an include, a file shown by excerpts only.
#[test]
fn golden_json_and_sarif_diagnostics() {
    for name in ["many-errors", "name-suggestions", "budget-maps-after-include", "set-file-bad"] {
        let b = build(&Path::new("tests/golden/fail").join(format!("{name}.xpol")), &BuildOptions::default());
        let json = xpol_lang::render::render_json(&b.diagnostics, &b.sources) + &xpol_lang::render::render_json_summary(&b.diagnostics, &b.sources, !b.failed());
        snapshot(&format!("json__{name}"), &json);
        snapshot(&format!("sarif__{name}"), &xpol_lang::render::render_sarif(&b.diagnostics, &b.sources, env!("CARGO_PKG_VERSION"), true));
    }
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
