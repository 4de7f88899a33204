//! The only place where diagnostics become text: miette reports for people,
//! JSON lines for editors and tools, SARIF for CI annotations.

use crate::diagnostic::{Diagnostic, Severity};
use crate::span::{FileId, SourceMap, Span};
use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteDiagnostic, MietteError, MietteSpanContents, NamedSource, SourceCode, SourceSpan, SpanContents};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

/// Renders every diagnostic as a miette report. Without `color` the output
/// is plain and stable (golden tests snapshot it).
pub fn render_human(diags: &[Diagnostic], sources: &SourceMap, color: bool) -> String {
    let theme = if color { GraphicalTheme::unicode() } else { GraphicalTheme::unicode_nocolor() };
    let handler = GraphicalReportHandler::new_themed(theme).with_width(100).with_links(false);
    let mut out = String::new();
    let mut texts = HashMap::new();
    for d in diags {
        let report = to_report(d, sources, &mut texts);
        if handler.render_report(&mut out, report.as_ref()).is_err() {
            out.push_str(&format!("{}: {}\n", d.code, d.message));
        }
    }
    out
}

/// A file's text for miette, shared by the reports of one rendering
/// (a report owns its source: a copy of the file for each diagnostic was
/// quadratic, 2.4 s for 670 warnings on 20,000 rules), that gives miette
/// the text from a few lines before a span on: miette finds a span's lines
/// by counting them from the start of what it is given.
struct SharedText {
    text: Arc<str>,
    line_starts: Arc<[u32]>,
    /// A `\r` not before a `\n` ends a line for miette but not in
    /// `line_starts`: then miette gets the whole text, as it always did.
    lone_cr: bool,
}

impl SharedText {
    fn new(file: &crate::span::SourceFile) -> SharedText {
        let bytes = file.text.as_bytes();
        let lone_cr = bytes.iter().enumerate().any(|(i, &b)| b == b'\r' && bytes.get(i + 1) != Some(&b'\n'));
        SharedText { text: Arc::from(file.text.as_str()), line_starts: Arc::from(file.line_starts()), lone_cr }
    }
}

impl SourceCode for SharedText {
    fn read_span<'a>(&'a self, span: &SourceSpan, before: usize, after: usize) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        // From the start of a line more than `before` lines above the
        // span's: miette's result from there is its result from the top,
        // moved by the lines and bytes left out.
        let line = self.line_starts.partition_point(|&s| s as usize <= span.offset()).saturating_sub(1);
        let first = if self.lone_cr { 0 } else { line.saturating_sub(before + 1) };
        let start = self.line_starts.get(first).map_or(0, |&s| s as usize);
        let window = self.text.as_bytes().get(start..).ok_or(MietteError::OutOfBounds)?;
        let c = <[u8] as SourceCode>::read_span(window, &SourceSpan::new((span.offset() - start).into(), span.len()), before, after)?;
        let moved = SourceSpan::new((c.span().offset() + start).into(), c.span().len());
        Ok(Box::new(MietteSpanContents::new(c.data(), moved, c.line() + first, c.column(), c.line_count() + first)))
    }
}

fn to_report(d: &Diagnostic, sources: &SourceMap, texts: &mut HashMap<FileId, Arc<SharedText>>) -> miette::Report {
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
    let Some(id) = snippet_file else { return miette::Report::new(md) };
    let file = sources.get(id);
    let text = Arc::clone(texts.entry(id).or_insert_with(|| Arc::new(SharedText::new(file))));
    miette::Report::new(md).with_source_code(NamedSource::new(file.name.clone(), text))
}

/// The version of the JSON diagnostics' records (`"schema"`, docs/json.md):
/// a field may be added without changing it; one removed or changing
/// meaning takes a new number.
pub const JSON_SCHEMA: u32 = 1;

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
    schema: u32,
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
/// columns in characters), each with `"schema"`: [`JSON_SCHEMA`]. A
/// stream of them ends with [`render_json_summary`].
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
            schema: JSON_SCHEMA,
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
        // Through a `Value`: its keys come out sorted, as they always have.
        let mut value = serde_json::to_value(&j).unwrap_or_default();
        value["labels"] = serde_json::to_value(&labels).unwrap_or_default();
        out.push_str(&value.to_string());
        out.push('\n');
    }
    out
}

#[derive(Serialize)]
struct JsonSummary<'a> {
    errors: usize,
    warnings: usize,
    files: Vec<&'a str>,
    success: bool,
}

/// The record that closes a stream of [`render_json`] records, on one
/// line: `{"schema": 1, "summary": {"errors", "warnings", "files",
/// "success"}}`. `files`: every file read (the policy, its includes, set
/// files), as diagnostics name them; `success`: the command did what it
/// was asked (no error; for `check --kernel`, the kernel took every
/// program).
pub fn render_json_summary(diags: &[Diagnostic], sources: &SourceMap, success: bool) -> String {
    let summary = JsonSummary {
        errors: diags.iter().filter(|d| d.is_error()).count(),
        warnings: diags.iter().filter(|d| !d.is_error()).count(),
        files: sources.files().map(|(_, f)| f.name.as_str()).collect(),
        success,
    };
    format!("{}\n", serde_json::json!({ "schema": JSON_SCHEMA, "summary": summary }))
}

/// The SARIF version [`render_sarif`] writes.
pub const SARIF_VERSION: &str = "2.1.0";

/// A SARIF 2.1.0 log (OASIS), as CI systems read it to annotate changes:
/// the subset xpol fills, written by hand rather than with a crate
/// (`serde-sarif` generates the whole schema's types at build time, with
/// five more build dependencies, for the dozen objects used here).
/// Required properties are plain fields, optional ones skipped when empty.
mod sarif {
    use serde::Serialize;

    #[derive(Serialize)]
    pub struct Log<'a> {
        #[serde(rename = "$schema")]
        pub schema: &'static str,
        pub version: &'static str,
        pub runs: Vec<Run<'a>>,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Run<'a> {
        pub tool: Tool<'a>,
        pub invocations: Vec<Invocation>,
        pub artifacts: Vec<Artifact>,
        pub results: Vec<Result<'a>>,
        /// Columns count characters, as in every xpol diagnostic (SARIF's
        /// default is UTF-16 code units).
        pub column_kind: &'static str,
    }

    #[derive(Serialize)]
    pub struct Tool<'a> {
        pub driver: Driver<'a>,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Driver<'a> {
        pub name: &'static str,
        pub version: &'a str,
        pub rules: Vec<Rule<'a>>,
    }

    /// A `reportingDescriptor`: one per diagnostic code.
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Rule<'a> {
        pub id: &'a str,
        pub default_configuration: Configuration,
    }

    #[derive(Serialize)]
    pub struct Configuration {
        pub level: &'static str,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Invocation {
        /// Whether the tool ran to its end, whatever it found (a policy
        /// with errors is a successful execution).
        pub execution_successful: bool,
    }

    #[derive(Serialize)]
    pub struct Artifact {
        pub location: ArtifactLocation,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Result<'a> {
        pub rule_id: &'a str,
        pub rule_index: usize,
        pub level: &'static str,
        pub message: Message,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        pub locations: Vec<Location>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        pub related_locations: Vec<Location>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        pub fixes: Vec<Fix>,
    }

    #[derive(Serialize)]
    pub struct Message {
        pub text: String,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Location {
        #[serde(skip_serializing_if = "Option::is_none")]
        pub id: Option<usize>,
        pub physical_location: PhysicalLocation,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub message: Option<Message>,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct PhysicalLocation {
        pub artifact_location: ArtifactLocation,
        pub region: Region,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ArtifactLocation {
        pub uri: String,
        pub index: usize,
    }

    /// 1-based; `end_column` is the column just past the region (equal to
    /// `start_column` on one line: an empty region, an insertion point).
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Region {
        pub start_line: u32,
        pub start_column: u32,
        pub end_line: u32,
        pub end_column: u32,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Fix {
        pub description: Message,
        pub artifact_changes: Vec<ArtifactChange>,
        /// `machineApplicable`: see `Fix::machine_applicable`.
        pub properties: serde_json::Value,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ArtifactChange {
        pub artifact_location: ArtifactLocation,
        pub replacements: Vec<Replacement>,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Replacement {
        pub deleted_region: Region,
        pub inserted_content: Content,
    }

    #[derive(Serialize)]
    pub struct Content {
        pub text: String,
    }
}

/// A file's name as a URI reference: a relative one for a relative name
/// (`policies/edge.xpol`, `<stdin>` as `%3Cstdin%3E`), `file://` for an
/// absolute path; bytes other than unreserved ones and `/` escaped.
fn file_uri(name: &str) -> String {
    let mut uri = String::from(if name.starts_with('/') { "file://" } else { "" });
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri
}

/// The diagnostics as one SARIF 2.1.0 log, for CI systems that annotate
/// changes: one run of the tool `xpolc` (`tool_version`), a rule per
/// diagnostic code, a result per diagnostic (its message with the help
/// after it; the primary label as its location, the other labels as
/// related locations; its fixes as SARIF fixes), the files read as
/// artifacts. `execution_successful`: the tool ran to its end (a policy
/// with errors still did).
pub fn render_sarif(diags: &[Diagnostic], sources: &SourceMap, tool_version: &str, execution_successful: bool) -> String {
    use sarif::*;
    let level = |s: Severity| match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let artifact = |span: Span| ArtifactLocation { uri: file_uri(&sources.get(span.file).name), index: span.file.0 as usize };
    let region = |span: Span| {
        let (_, start_line, start_column, end_line, end_column) = position(sources, span);
        Region { start_line, start_column, end_line, end_column }
    };
    let mut rules: Vec<Rule> = Vec::new();
    let mut results = Vec::new();
    for d in diags {
        let rule_index = match rules.iter().position(|r| r.id == d.code) {
            Some(i) => i,
            None => {
                rules.push(Rule { id: &d.code, default_configuration: Configuration { level: level(d.severity) } });
                rules.len() - 1
            }
        };
        let text = match &d.help {
            Some(help) => format!("{}\n\nhelp: {help}", d.message),
            None => d.message.clone(),
        };
        let location = |(i, l): (usize, &crate::diagnostic::Label)| Location {
            id: (i > 0).then_some(i),
            physical_location: PhysicalLocation { artifact_location: artifact(l.span), region: region(l.span) },
            message: (!l.message.is_empty()).then(|| Message { text: l.message.clone() }),
        };
        let mut locations: Vec<Location> = d.labels.iter().enumerate().map(location).collect();
        let related_locations = locations.split_off(locations.len().min(1));
        let fixes = d
            .fixes
            .iter()
            .map(|f| Fix {
                description: Message { text: f.message.clone() },
                artifact_changes: vec![ArtifactChange {
                    artifact_location: artifact(f.span),
                    replacements: vec![Replacement { deleted_region: region(f.span), inserted_content: Content { text: f.replacement.clone() } }],
                }],
                properties: serde_json::json!({ "machineApplicable": f.machine_applicable }),
            })
            .collect();
        results.push(Result { rule_id: &d.code, rule_index, level: level(d.severity), message: Message { text }, locations, related_locations, fixes });
    }
    let artifacts = sources.files().map(|(id, f)| Artifact { location: ArtifactLocation { uri: file_uri(&f.name), index: id.0 as usize } }).collect();
    let log = Log {
        schema: "https://json.schemastore.org/sarif-2.1.0.json",
        version: SARIF_VERSION,
        runs: vec![Run {
            tool: Tool { driver: Driver { name: "xpolc", version: tool_version, rules } },
            invocations: vec![Invocation { execution_successful }],
            artifacts,
            results,
            column_kind: "unicodeCodePoints",
        }],
    };
    let mut out = serde_json::to_string_pretty(&log).unwrap_or_default();
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::SharedText;
    use crate::span::SourceFile;
    use miette::{SourceCode, SourceSpan};

    /// miette gets from [`SharedText`] what it gets from the whole text:
    /// the same bytes, span, line, column and line count, for spans at the
    /// top, in the middle, over several lines and at the end, with `\n`,
    /// `\r\n` and lone `\r` line ends.
    #[test]
    fn shared_text_reads_spans_as_the_whole_text_does() {
        let body: String = (0..40).map(|i| format!("xdp /tcp.dport == {i}/ {{ drop }}\n")).collect();
        for text in [body.clone(), body.replace('\n', "\r\n"), body.replacen('\n', "\r", 3), format!("{body}xdp {{ pass }}")] {
            let shared = SharedText::new(&SourceFile::new("t.xpol", None, text.clone()));
            let len = text.len();
            for (offset, span_len) in [(0, 3), (4, 0), (len / 2, 5), (len / 2, 200), (len - 5, 5), (len, 0), (len - 1, 1)] {
                for (before, after) in [(0, 0), (1, 1), (2, 3), (5, 0)] {
                    let span = SourceSpan::new(offset.into(), span_len);
                    let want = <str as SourceCode>::read_span(&text, &span, before, after);
                    let got = shared.read_span(&span, before, after);
                    match (want, got) {
                        (Ok(w), Ok(g)) => {
                            assert_eq!((w.data(), w.span(), w.line(), w.column(), w.line_count()), (g.data(), g.span(), g.line(), g.column(), g.line_count()), "{offset}+{span_len}, {before}/{after}");
                        }
                        (Err(_), Err(_)) => {}
                        (w, g) => panic!("{offset}+{span_len}, {before}/{after}: {:?} against {:?}", w.is_ok(), g.is_ok()),
                    }
                }
            }
        }
    }
}
