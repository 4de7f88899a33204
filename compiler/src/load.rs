//! Pass 1, `load`: read the root policy, parse it, and follow `include`s and
//! `file(...)` set initialisers, adding every file read to the [`SourceMap`].
//!
//! Output: the files' syntax trees, and the items of all files flattened in
//! evaluation order (an included file's items stand where its `include` is).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use xpol_lang::ast::{Expr, ExprKind, Item, Policy, SetInit};
use xpol_lang::diagnostic::{excerpt, EXCERPT_CHARS};
use xpol_lang::{Diagnostic, FileId, SourceFile, SourceMap, Span};

/// The standard library, compiled into the binary so that `include "std/..."`
/// works wherever xpolc is installed.
pub const STD_POLICIES: &[(&str, &str)] = &[
    ("bogons.xpol", include_str!("../../std-policies/bogons.xpol")),
    ("tcp-sanity.xpol", include_str!("../../std-policies/tcp-sanity.xpol")),
    ("lb-service.xpol", include_str!("../../std-policies/lb-service.xpol")),
    ("host-firewall.xpol", include_str!("../../std-policies/host-firewall.xpol")),
    ("icmp-limit.xpol", include_str!("../../std-policies/icmp-limit.xpol")),
    ("syn-limit.xpol", include_str!("../../std-policies/syn-limit.xpol")),
    ("port-scan.xpol", include_str!("../../std-policies/port-scan.xpol")),
    ("syn-guard.xpol", include_str!("../../std-policies/syn-guard.xpol")),
];

/// Where the Debian package installs the standard library (`pkg/build-deb`).
pub const STD_INSTALLED: &str = "/usr/share/xpol/std-policies";

/// A file on disk with the very text of std policy `name`, to point debug
/// info at, so that BTF line info carries the line text (LLVM reads it from
/// the file): the checkout xpolc was built from, else the package's copy.
/// A file whose text differs (another version) would give wrong lines.
fn std_on_disk(name: &str, text: &str) -> Option<PathBuf> {
    let dirs = [Path::new(env!("CARGO_MANIFEST_DIR")).join("../std-policies"), PathBuf::from(STD_INSTALLED)];
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| xpol_lang::input::read_file(p, xpol_lang::input::SOURCE_LIMIT).is_ok_and(|t| t == text.as_bytes()))
        .and_then(|p| std::fs::canonicalize(p).ok())
}

/// Includes nested deeper than this are reported as a cycle-like error.
const MAX_INCLUDE_DEPTH: usize = 16;

pub struct LoadedFile {
    pub file: FileId,
    pub policy: Policy,
}

pub struct Loaded {
    pub files: Vec<LoadedFile>,
    /// All items in evaluation order, includes expanded (each file once).
    pub items: Vec<Item>,
}

struct Loader<'a> {
    sources: &'a mut SourceMap,
    diags: Vec<Diagnostic>,
    files: Vec<LoadedFile>,
    items: Vec<Item>,
    /// Canonical key of every file already included, so each is included once.
    seen: HashMap<String, FileId>,
}

pub fn load(root: &Path, sources: &mut SourceMap) -> Result<Loaded, Vec<Diagnostic>> {
    let text = match xpol_lang::input::read_text(root, xpol_lang::input::SOURCE_LIMIT) {
        Ok(t) => t,
        Err(e) => {
            return Err(vec![Diagnostic::error("xpol::io", format!("cannot read policy `{}`: {e}", root.display()))]);
        }
    };
    load_text(root, text, sources)
}

/// [`load`] with the root file's text given rather than read from `root`:
/// an editor's buffer, which may differ from what is on disk. `root` still
/// names the file, and its includes and set files are read from disk
/// relative to it.
pub fn load_text(root: &Path, text: String, sources: &mut SourceMap) -> Result<Loaded, Vec<Diagnostic>> {
    let abs = std::fs::canonicalize(root).ok();
    let mut loader = Loader { sources, diags: Vec::new(), files: Vec::new(), items: Vec::new(), seen: HashMap::new() };
    let key = abs.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| root.display().to_string());
    loader.file(root.display().to_string(), abs, key, text, 0);
    if xpol_lang::diagnostic::has_errors(&loader.diags) {
        Err(loader.diags)
    } else {
        Ok(Loaded { files: loader.files, items: loader.items })
    }
}

/// The name diagnostics give a policy read from standard input.
pub const STDIN_NAME: &str = "<stdin>";

/// [`load`] of a policy read from standard input (`xpolc check -`): named
/// [`STDIN_NAME`], with no file on disk; its includes and set files are
/// read relative to the current directory.
pub fn load_stdin(text: String, sources: &mut SourceMap) -> Result<Loaded, Vec<Diagnostic>> {
    let mut loader = Loader { sources, diags: Vec::new(), files: Vec::new(), items: Vec::new(), seen: HashMap::new() };
    let cwd = std::env::current_dir().ok();
    loader.file_in(STDIN_NAME.to_string(), None, cwd, STDIN_NAME.to_string(), text, 0, false);
    if xpol_lang::diagnostic::has_errors(&loader.diags) {
        Err(loader.diags)
    } else {
        Ok(Loaded { files: loader.files, items: loader.items })
    }
}

impl Loader<'_> {
    fn file(&mut self, name: String, path: Option<PathBuf>, key: String, text: String, depth: usize) {
        // A file not named as a policy (after links) may be anything a
        // policy names (`include "/etc/shadow"`): shown by excerpts only.
        let policy_named = path.as_deref().unwrap_or(Path::new(&name)).extension().is_some_and(|e| e == "xpol");
        let dir = path.as_deref().and_then(Path::parent).map(Path::to_path_buf);
        self.file_in(name, path, dir, key, text, depth, !policy_named);
    }

    /// A file whose includes and set files are read relative to `dir`.
    #[allow(clippy::too_many_arguments)]
    fn file_in(&mut self, name: String, path: Option<PathBuf>, dir: Option<PathBuf>, key: String, text: String, depth: usize, excerpts_only: bool) {
        let id = self.sources.add(SourceFile::new(name, path, text).with_excerpts_only(excerpts_only));
        self.seen.insert(key, id);
        let parsed = xpol_lang::parser::parse(&self.sources.get(id).text, id);
        let mut policy = match parsed {
            Ok(p) => p,
            Err(d) => {
                self.diags.extend(d);
                return;
            }
        };
        // Files this one names are shown relative to how this one was named,
        // so diagnostics do not depend on where the checkout lives.
        let shown_dir = Path::new(&self.sources.get(id).name).parent().map(Path::to_path_buf).unwrap_or_default();
        for item in &mut policy.items {
            match item {
                Item::Include(inc) => {
                    if depth >= MAX_INCLUDE_DEPTH {
                        self.diags.push(
                            Diagnostic::error("xpol::include", "includes are nested too deeply").with_label(inc.span, "included here"),
                        );
                        continue;
                    }
                    self.include(&inc.path.value, inc.path.span, dir.as_deref(), &shown_dir, depth);
                }
                Item::Set(set) => {
                    if let SetInit::File(path) = &set.init {
                        let elements = self.set_file(&path.value, path.span, dir.as_deref(), &shown_dir);
                        set.init = SetInit::Read { path: path.clone(), elements };
                    }
                    self.items.push(item.clone());
                }
                _ => self.items.push(item.clone()),
            }
        }
        self.files.push(LoadedFile { file: id, policy });
    }

    fn include(&mut self, target: &str, span: Span, dir: Option<&Path>, shown_dir: &Path, depth: usize) {
        // A path relative to the including file wins over the standard library.
        // Anything there is this file (a FIFO or a device too, which
        // `read_text` refuses, rather than "cannot find").
        let local = dir.map(|d| d.join(target)).filter(|p| p.exists());
        if let Some(p) = local {
            let abs = std::fs::canonicalize(&p).unwrap_or(p.clone());
            let key = abs.display().to_string();
            if self.seen.contains_key(&key) {
                return;
            }
            match xpol_lang::input::read_text(&abs, xpol_lang::input::SOURCE_LIMIT) {
                Ok(text) => self.file(shown_dir.join(target).display().to_string(), Some(abs), key, text, depth + 1),
                Err(e) => self.diags.push(
                    Diagnostic::error("xpol::include", format!("cannot read `{}`: {e}", p.display())).with_label(span, "included here"),
                ),
            }
            return;
        }
        if let Some(name) = target.strip_prefix("std/") {
            if let Some((_, text)) = STD_POLICIES.iter().find(|(n, _)| *n == name) {
                let key = format!("<std>/{name}");
                if self.seen.contains_key(&key) {
                    return;
                }
                let disk = std_on_disk(name, text);
                self.file(target.to_string(), disk, key, text.to_string(), depth + 1);
                return;
            }
        }
        let names: Vec<String> = STD_POLICIES.iter().map(|(n, _)| format!("std/{n}")).collect();
        self.diags.push(
            Diagnostic::error("xpol::include", format!("cannot find `{target}`"))
                .with_label(span, "no such file")
                .with_help(format!(
                    "paths are relative to the including file; the standard library has: {}",
                    names.join(", ")
                )),
        );
    }

    /// Reads a set file: one element per line; `#` starts a comment.
    fn set_file(&mut self, target: &str, span: Span, dir: Option<&Path>, shown_dir: &Path) -> Vec<Expr> {
        let path = match dir {
            Some(d) => d.join(target),
            None => PathBuf::from(target),
        };
        let text = match xpol_lang::input::read_text(&path, xpol_lang::input::DATA_LIMIT) {
            Ok(t) => t,
            Err(e) => {
                self.diags.push(
                    Diagnostic::error("xpol::set_file", format!("cannot read set file `{}`: {e}", shown_dir.join(target).display()))
                        .with_label(span, "named here"),
                );
                return Vec::new();
            }
        };
        let abs = std::fs::canonicalize(&path).ok();
        let id = self.sources.add(SourceFile::new(shown_dir.join(target).display().to_string(), abs, text).with_excerpts_only(true));
        let text = &self.sources.get(id).text;
        let mut out = Vec::new();
        let mut errors = Vec::new();
        let mut offset = 0usize;
        for line in text.split_inclusive('\n') {
            let content = line.split('#').next().unwrap_or("");
            let trimmed = content.trim();
            if !trimmed.is_empty() {
                let start = offset + (content.len() - content.trim_start().len());
                let espan = Span::new(id, start, start + trimmed.len());
                match parse_element(trimmed, espan) {
                    Some(kind) => out.push(Expr { kind, span: espan }),
                    None => errors.push(
                        Diagnostic::error(
                            "xpol::set_file",
                            format!("`{}` is not an address, prefix, number, range or MAC", excerpt(trimmed, EXCERPT_CHARS)),
                        )
                            .with_label(espan, "in this set file"),
                    ),
                }
            }
            offset += line.len();
        }
        // A broken file reports its first errors, not thousands.
        let n = errors.len();
        self.diags.extend(errors.into_iter().take(10));
        if n > 10 {
            self.diags.push(
                Diagnostic::error("xpol::set_file", format!("{} more bad lines in this set file", n - 10)).with_label(span, "named here"),
            );
        }
        out
    }
}

/// One element of a set file, in the same forms as in policies.
fn parse_element(s: &str, span: Span) -> Option<ExprKind> {
    if let Some((addr, len)) = s.split_once('/') {
        let addr: IpAddr = addr.parse().ok()?;
        let len: u8 = len.parse().ok()?;
        return Some(ExprKind::Cidr(addr, len));
    }
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Some(ExprKind::Ip(addr));
    }
    if let Some(mac) = parse_mac(s) {
        return Some(ExprKind::Mac(mac));
    }
    let int = |t: &str| -> Option<u64> {
        match t.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => t.parse().ok(),
        }
    };
    if let Some((lo, hi)) = s.split_once("..") {
        let (lo, hi) = (int(lo.trim())?, int(hi.trim())?);
        return Some(ExprKind::Range(
            Box::new(Expr { kind: ExprKind::Int(lo), span }),
            Box::new(Expr { kind: ExprKind::Int(hi), span }),
        ));
    }
    int(s).map(ExprKind::Int)
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}
