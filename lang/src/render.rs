//! The only place where diagnostics become text: miette reports for people,
//! JSON lines for editors and CI annotations.

use crate::diagnostic::{Diagnostic, Severity};
use crate::span::{SourceMap, Span};
use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteDiagnostic, NamedSource};
use serde::Serialize;

/// Renders every diagnostic as a miette report. Without `color` the output
/// is plain and stable (golden tests snapshot it).
pub fn render_human(diags: &[Diagnostic], sources: &SourceMap, color: bool) -> String {
    let theme = if color { GraphicalTheme::unicode() } else { GraphicalTheme::unicode_nocolor() };
    let handler = GraphicalReportHandler::new_themed(theme).with_width(100).with_links(false);
    let mut out = String::new();
    for d in diags {
        let report = to_report(d, sources);
        if handler.render_report(&mut out, report.as_ref()).is_err() {
            out.push_str(&format!("{}: {}\n", d.code, d.message));
        }
    }
    out
}

fn to_report(d: &Diagnostic, sources: &SourceMap) -> miette::Report {
    let mut md = MietteDiagnostic::new(d.message.clone()).with_code(d.code.clone()).with_severity(match d.severity {
        Severity::Error => miette::Severity::Error,
        Severity::Warning => miette::Severity::Warning,
    });
    // The help, then each suggested fix in words (`Fix::message`): the
    // replacement itself is for editors (JSON).
    let helps: Vec<&str> = d.help.iter().map(String::as_str).chain(d.fixes.iter().map(|f| f.message.as_str())).filter(|h| !h.is_empty()).collect();
    if !helps.is_empty() {
        md = md.with_help(helps.join("\n"));
    }
    let Some(primary) = d.primary_span() else { return miette::Report::new(md) };
    // One snippet per report: the primary label's file, unless it is shown
    // by excerpts only. Labels in other files (or in such a file) are named
    // in the help text instead, with an excerpt of what they point at.
    let snippet_file = (!sources.get(primary.file).excerpts_only).then_some(primary.file);
    let mut labels = Vec::new();
    let mut elsewhere = Vec::new();
    for (i, l) in d.labels.iter().enumerate() {
        if Some(l.span.file) == snippet_file {
            let text = (!l.message.is_empty()).then(|| l.message.clone());
            let ls = LabeledSpan::new_with_span(text, (l.span.start as usize, l.span.len().max(usize::from(l.span.is_empty() && i == 0))));
            labels.push(if i == 0 { LabeledSpan::new_primary_with_span(ls.label().map(str::to_string), *ls.inner()) } else { ls });
        } else {
            let (file, line, col) = sources.location(l.span);
            let quoted = if sources.get(l.span.file).excerpts_only {
                format!(" (`{}`)", crate::diagnostic::excerpt(sources.snippet(l.span), crate::diagnostic::EXCERPT_CHARS))
            } else {
                String::new()
            };
            elsewhere.push(format!("{file}:{line}:{col}: {}{quoted}", l.message));
        }
    }
    md = md.with_labels(labels);
    if !elsewhere.is_empty() {
        let extra = elsewhere.join("\n");
        md.help = Some(match md.help.take() {
            Some(h) => format!("{h}\n{extra}"),
            None => extra,
        });
    }
    let Some(file) = snippet_file.map(|f| sources.get(f)) else { return miette::Report::new(md) };
    miette::Report::new(md).with_source_code(NamedSource::new(file.name.clone(), file.text.clone()))
}

#[derive(Serialize)]
struct JsonLabel<'a> {
    file: &'a str,
    line: u32,
    column: u32,
    end_line: u32,
    end_column: u32,
    message: &'a str,
}

#[derive(Serialize)]
struct JsonFix<'a> {
    message: &'a str,
    file: &'a str,
    line: u32,
    column: u32,
    end_line: u32,
    end_column: u32,
    replacement: &'a str,
    machine_applicable: bool,
}

#[derive(Serialize)]
struct JsonDiagnostic<'a> {
    file: Option<&'a str>,
    line: Option<u32>,
    column: Option<u32>,
    end_line: Option<u32>,
    end_column: Option<u32>,
    severity: Severity,
    code: &'a str,
    message: &'a str,
    labels: Vec<JsonLabel<'a>>,
    help: Option<&'a str>,
    fixes: Vec<JsonFix<'a>>,
}

fn position(sources: &SourceMap, span: Span) -> (&str, u32, u32, u32, u32) {
    let f = sources.get(span.file);
    let (l, c) = f.line_col(span.start);
    let (el, ec) = f.line_col(span.end);
    (&f.name, l, c, el, ec)
}

/// One JSON object per line per diagnostic (1-based lines and columns,
/// columns in characters).
pub fn render_json(diags: &[Diagnostic], sources: &SourceMap) -> String {
    let mut out = String::new();
    for d in diags {
        let labels: Vec<JsonLabel> = d
            .labels
            .iter()
            .map(|l| {
                let (file, line, column, end_line, end_column) = position(sources, l.span);
                JsonLabel { file, line, column, end_line, end_column, message: &l.message }
            })
            .collect();
        let fixes: Vec<JsonFix> = d
            .fixes
            .iter()
            .map(|f| {
                let (file, line, column, end_line, end_column) = position(sources, f.span);
                JsonFix { message: &f.message, file, line, column, end_line, end_column, replacement: &f.replacement, machine_applicable: f.machine_applicable }
            })
            .collect();
        let first = labels.first();
        let j = JsonDiagnostic {
            file: first.map(|l| l.file),
            line: first.map(|l| l.line),
            column: first.map(|l| l.column),
            end_line: first.map(|l| l.end_line),
            end_column: first.map(|l| l.end_column),
            severity: d.severity,
            code: &d.code,
            message: &d.message,
            help: d.help.as_deref(),
            labels: Vec::new(),
            fixes,
        };
        let mut value = serde_json::to_value(&j).unwrap_or_default();
        value["labels"] = serde_json::to_value(&labels).unwrap_or_default();
        out.push_str(&value.to_string());
        out.push('\n');
    }
    out
}
