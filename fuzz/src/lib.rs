//! What the fuzz targets check, shared by them: the parser and the whole
//! compiler driver never panic on any input, every diagnostic points inside
//! the sources it names, and every object they produce is well formed.

use object::{Object, ObjectSection};
use std::path::{Path, PathBuf};
use xpol_lang::{Diagnostic, FileId, SourceMap};

/// The parser on arbitrary text: a policy or diagnostics with spans inside
/// the text, never a panic.
pub fn check_parse(text: &str) {
    match xpol_lang::parser::parse(text, FileId(0)) {
        Ok(_) => {}
        Err(diags) => {
            assert!(!diags.is_empty(), "parse failed without a diagnostic");
            for d in &diags {
                assert!(d.is_error(), "parse failure reported as a warning: {d:?}");
                assert!(!d.labels.is_empty(), "syntax error without a span: {d:?}");
                for l in &d.labels {
                    assert_eq!(l.span.file, FileId(0), "span in another file: {d:?}");
                    assert!(in_text(text, l.span.start, l.span.end), "span {:?} outside the text ({} bytes): {d:?}", l.span, text.len());
                }
            }
        }
    }
}

fn in_text(text: &str, start: u32, end: u32) -> bool {
    let (s, e) = (start as usize, end as usize);
    s <= e && e <= text.len() && text.is_char_boundary(s) && text.is_char_boundary(e)
}

/// Inputs the compile target does not build: those naming files outside
/// the policy's own directory (`include "/dev/zero"`, `file("../..")`),
/// which would make the fuzzer read the host's files. Escapes in strings
/// make quoting ambiguous, so those inputs are only parsed.
pub fn touches_host_files(text: &str) -> bool {
    text.contains('\\')
        || text.split('"').skip(1).step_by(2).any(|s| s.contains("..") || (s.contains('/') && !s.starts_with("std/")) || s.starts_with('.'))
}

/// A scratch directory holding the policy file the compile targets write.
pub struct Scratch {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fuzz.xpol");
        Scratch { _dir: dir, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

/// The whole driver on `text` (written to the scratch policy file).
/// Returns whether it compiled.
pub fn check_compile(scratch: &Scratch, text: &str) -> bool {
    if touches_host_files(text) {
        check_parse(text);
        return false;
    }
    std::fs::write(scratch.path(), text).expect("write the policy");
    let b = xpol_compiler::build(scratch.path(), &xpol_compiler::BuildOptions::default());
    check_diagnostics(&b.diagnostics, &b.sources);
    let _ = xpol_lang::render::render_human(&b.diagnostics, &b.sources, false);
    let _ = xpol_lang::render::render_json(&b.diagnostics, &b.sources);
    match &b.output {
        None => {
            assert!(b.diagnostics.iter().any(Diagnostic::is_error), "the build failed without an error");
            for d in b.diagnostics.iter().filter(|d| d.is_error()) {
                assert!(!d.labels.is_empty(), "error without a span: {d:?}");
            }
            false
        }
        Some(out) => {
            assert!(!b.diagnostics.iter().any(Diagnostic::is_error), "an object and an error: {:?}", b.diagnostics);
            let sections: Vec<&str> = out.meta.programs.iter().map(|p| p.section.as_str()).collect();
            check_object(&out.object, &sections);
            true
        }
    }
}

/// Every label of every diagnostic lies inside a file of `sources`.
pub fn check_diagnostics(diags: &[Diagnostic], sources: &SourceMap) {
    let files: Vec<(FileId, &xpol_lang::SourceFile)> = sources.files().collect();
    for d in diags {
        for l in &d.labels {
            let f = files.iter().find(|(id, _)| *id == l.span.file).unwrap_or_else(|| panic!("span in an unknown file: {d:?}"));
            assert!(in_text(&f.1.text, l.span.start, l.span.end), "span {:?} outside `{}` ({} bytes): {d:?}", l.span, f.1.name, f.1.text.len());
        }
    }
}

/// A BPF ELF object with one non-empty program section per program (whole
/// instructions: a multiple of 8 bytes) and line info for each.
pub fn check_object(object: &[u8], program_sections: &[&str]) {
    let file = object::File::parse(object).expect("the object is a valid ELF file");
    assert_eq!(file.format(), object::BinaryFormat::Elf, "not ELF");
    assert_eq!(file.architecture(), object::Architecture::Bpf, "not BPF");
    assert!(!program_sections.is_empty(), "an object without programs");
    let lines = xpol_compiler::verifier::line_info(object);
    for name in program_sections {
        let s = file.section_by_name(name).unwrap_or_else(|| panic!("no section `{name}`"));
        let size = s.size();
        assert!(size > 0, "empty program section `{name}`");
        assert_eq!(size % 8, 0, "section `{name}` is {size} bytes, not whole instructions");
        let here: Vec<_> = lines.iter().filter(|l| l.section == *name).collect();
        assert!(!here.is_empty(), "no line info for `{name}`");
        for l in here {
            assert!((l.insn as u64) < size / 8, "line info past the end of `{name}`: {l:?}");
            assert!(!l.file.is_empty(), "line info without a file: {l:?}");
        }
    }
    for l in &lines {
        assert!(program_sections.contains(&l.section.as_str()), "line info for a section that is no program: {l:?}");
    }
}
