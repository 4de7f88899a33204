//! Diagnostics as plain data. Every pass (parser, checker, codegen budget,
//! verifier-log mapping) reports problems as [`Diagnostic`] values with spans;
//! turning them into terminal output (miette) or JSON happens only in
//! [`crate::render`].

use crate::span::Span;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Label {
    pub span: Span,
    pub message: String,
}

/// A change to the source that resolves a diagnostic: replace the text of
/// `span` (empty: insert at its start) with `replacement`. Editors offer
/// it as a quick fix; shown to people as a help line (`message`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Fix {
    /// The fix in words, e.g. "did you mean `drop`?".
    pub message: String,
    pub span: Span,
    pub replacement: String,
    /// The replacement is what the text almost certainly meant, and the
    /// result is valid where it stands (a misspelt keyword, `=` for `==`):
    /// a tool may apply it without asking. `false`: one plausible fix
    /// among others (which brace a missing `}` closes), for a person to
    /// choose.
    pub machine_applicable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Stable machine-readable code, e.g. `xpol::type::mismatch`.
    pub code: String,
    pub message: String,
    /// The first label is the primary one.
    pub labels: Vec<Label>,
    pub help: Option<String>,
    /// Suggested changes to the source, best first.
    pub fixes: Vec<Fix>,
}

impl Diagnostic {
    pub fn error(code: impl Into<String>, message: impl Into<String>) -> Diagnostic {
        Diagnostic { severity: Severity::Error, code: code.into(), message: message.into(), labels: Vec::new(), help: None, fixes: Vec::new() }
    }

    pub fn warning(code: impl Into<String>, message: impl Into<String>) -> Diagnostic {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(code, message) }
    }

    pub fn with_label(mut self, span: Span, message: impl Into<String>) -> Diagnostic {
        self.labels.push(Label { span, message: message.into() });
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    /// Adds a suggested fix: replace `span` with `replacement`.
    pub fn with_fix(mut self, span: Span, replacement: impl Into<String>, message: impl Into<String>, machine_applicable: bool) -> Diagnostic {
        self.fixes.push(Fix { message: message.into(), span, replacement: replacement.into(), machine_applicable });
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    pub fn primary_span(&self) -> Option<Span> {
        self.labels.first().map(|l| l.span)
    }
}

/// The most characters of a file's text a diagnostic quotes from a file
/// shown by excerpts only ([`crate::SourceFile::excerpts_only`]).
pub const EXCERPT_CHARS: usize = 40;

/// At most `max` characters of `text`, escaped (`escape_debug`: control
/// bytes, quotes and backslashes as Rust escapes), with `…` when cut: what
/// a diagnostic may quote of a file xpol reads, which may hold anything.
pub fn excerpt(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).flat_map(char::escape_debug).collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// A list of diagnostics from one pass; a pass fails when it holds any error.
pub type Diagnostics = Vec<Diagnostic>;

pub fn has_errors(diags: &[Diagnostic]) -> bool {
    diags.iter().any(Diagnostic::is_error)
}
