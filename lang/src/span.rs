//! Source positions. Every AST node carries a [`Span`]; spans travel unchanged
//! through the checker and the policy IR into codegen (debug locations, hence
//! `.BTF.ext` line info) and into the object's metadata, so that a verifier
//! rejection or a counter can be traced back to the user's text.

use serde::{Deserialize, Serialize};

/// Index of a file in a [`SourceMap`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileId(pub u32);

/// A byte range `start..end` in one source file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Span {
    pub file: FileId,
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn new(file: FileId, start: usize, end: usize) -> Span {
        Span { file, start: start as u32, end: end as u32 }
    }

    /// The smallest span covering both (same file assumed).
    pub fn to(self, other: Span) -> Span {
        Span { file: self.file, start: self.start.min(other.start), end: self.end.max(other.end) }
    }

    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// One loaded source file.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// The path as the user wrote it (or as an include resolved it); shown in diagnostics.
    pub name: String,
    /// Absolute path on disk when the file came from disk (LLVM reads line text from it
    /// for BTF line info); `None` for in-memory sources.
    pub path: Option<std::path::PathBuf>,
    pub text: String,
    /// Diagnostics show short escaped excerpts of this file
    /// ([`crate::diagnostic::excerpt`]), never its lines: a set file, or a
    /// file included that is not named `*.xpol`. A policy may name any path
    /// (`/etc/shadow`), and diagnostics end up in terminals and CI logs.
    pub excerpts_only: bool,
    line_starts: Vec<u32>,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, path: Option<std::path::PathBuf>, text: impl Into<String>) -> SourceFile {
        let text = text.into();
        let mut line_starts = vec![0u32];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i as u32 + 1));
        SourceFile { name: name.into(), path, text, excerpts_only: false, line_starts }
    }

    /// This file, shown in diagnostics by excerpts only (see [`SourceFile::excerpts_only`]).
    pub fn with_excerpts_only(mut self, excerpts_only: bool) -> SourceFile {
        self.excerpts_only = excerpts_only;
        self
    }

    /// Where each line starts (byte offsets, the first 0; lines end with
    /// `\n`).
    pub fn line_starts(&self) -> &[u32] {
        &self.line_starts
    }

    /// 1-based line and column (column counted in characters) of a byte offset.
    pub fn line_col(&self, offset: u32) -> (u32, u32) {
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        // A byte order mark at the start is no column of the first line.
        let start = match self.line_starts[line] as usize {
            0 if self.text.starts_with('\u{feff}') => '\u{feff}'.len_utf8(),
            s => s,
        };
        let end = (offset as usize).min(self.text.len());
        let col = self.text.get(start..end).map(|s| s.chars().count()).unwrap_or(0);
        (line as u32 + 1, col as u32 + 1)
    }

    /// The text of the 1-based line `line`, without its newline.
    pub fn line_text(&self, line: u32) -> &str {
        let i = (line.saturating_sub(1)) as usize;
        let Some(&start) = self.line_starts.get(i) else { return "" };
        let end = self.line_starts.get(i + 1).map(|&e| e as usize - 1).unwrap_or(self.text.len());
        &self.text[start as usize..end.max(start as usize)]
    }
}

/// All files of one compilation: the root policy and everything it includes.
#[derive(Clone, Debug, Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

impl SourceMap {
    pub fn new() -> SourceMap {
        SourceMap::default()
    }

    pub fn add(&mut self, file: SourceFile) -> FileId {
        self.files.push(file);
        FileId(self.files.len() as u32 - 1)
    }

    pub fn get(&self, id: FileId) -> &SourceFile {
        &self.files[id.0 as usize]
    }

    pub fn files(&self) -> impl Iterator<Item = (FileId, &SourceFile)> {
        self.files.iter().enumerate().map(|(i, f)| (FileId(i as u32), f))
    }

    /// The source text a span covers.
    pub fn snippet(&self, span: Span) -> &str {
        let text = &self.get(span.file).text;
        text.get(span.start as usize..span.end as usize).unwrap_or("")
    }

    /// `(file name, line, column)` of the start of a span, 1-based.
    pub fn location(&self, span: Span) -> (&str, u32, u32) {
        let f = self.get(span.file);
        let (l, c) = f.line_col(span.start);
        (&f.name, l, c)
    }
}
