//! The only place where diagnostics become text: miette reports for people,
//! JSON lines for editors and tools, SARIF for CI annotations.

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
