//! `xpolc lsp`: a language server on stdin/stdout for editors.
//!
//! Diagnostics as you type (parse, check, lints on every change; the full
//! build with codegen budgets on save), hover on packet fields, go-to-
//! definition of sets, consts, pools, maps and included files, completion
//! of fields and declared names, and code actions from the compiler's
//! machine-applicable fixes ([`fixes_of`]).
//!
//! Built on `lsp-server` + `lsp-types`, rust-analyzer's crates, rather than
//! `tower-lsp`: every request here is a short CPU-bound pass over one
//! policy, answered in order, so an async runtime would buy nothing but a
//! second execution model in the binary (tokio is only in `xpol`, for the
//! metrics endpoint). lsp-server is a blocking message loop over channels,
//! which is all this needs and is easy to reason about; lsp-types gives the
//! protocol's types.
//!
//! Positions: the protocol counts columns in UTF-16 code units (the only
//! encoding every client supports); spans are byte offsets. [`LineIndex`]
//! converts both ways.

use anyhow::{Context, Result};
use lsp_server::{Connection, ErrorCode, Message, Notification, Request, Response};
use lsp_types::notification::{
    DidChangeTextDocument, DidCloseTextDocument, DidOpenTextDocument, DidSaveTextDocument, Notification as _,
    PublishDiagnostics,
};
use lsp_types::request::{CodeActionRequest, Completion, GotoDefinition, HoverRequest, Request as _};
use lsp_types::{
    CodeAction, CodeActionKind, CodeActionOrCommand, CodeActionParams, CodeActionProviderCapability, CompletionItem,
    CompletionItemKind, CompletionOptions, CompletionParams, CompletionResponse, CompletionTextEdit,
    DiagnosticRelatedInformation, DiagnosticSeverity, Documentation, GotoDefinitionParams, GotoDefinitionResponse,
    Hover, HoverContents, HoverParams, HoverProviderCapability, InitializeResult, Location, MarkupContent, MarkupKind,
    NumberOrString, OneOf, Position, PublishDiagnosticsParams, Range, ServerCapabilities, ServerInfo,
    TextDocumentSyncCapability, TextDocumentSyncKind, TextDocumentSyncOptions, TextDocumentSyncSaveOptions, TextEdit,
    Url, WorkspaceEdit,
};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use xpol_compiler::check::fields::{Field, Layer};
use xpol_lang::ast::{Block, Item, Policy, StmtKind};
use xpol_lang::{FileId, SourceMap, Span};

/// How long the client must be quiet after an edit before the document is
/// checked again.
const QUIET: std::time::Duration = std::time::Duration::from_millis(50);

/// The root file of every analysis is the first one the loader adds.
const ROOT: FileId = FileId(0);

/// Serves one client on stdin/stdout until it sends `exit` or closes stdin.
pub fn run() -> Result<()> {
    // The parser and checker recurse on expression depth: a deeply nested
    // policy typed into an editor must not overflow the stack and kill the
    // server. The stack is reserved, not committed, until used.
    std::thread::Builder::new()
        .name("xpolc-lsp".into())
        .stack_size(256 << 20)
        .spawn(serve)
        .context("starting the language server thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("the language server thread panicked"))?
}

fn serve() -> Result<()> {
    let (connection, io_threads) = Connection::stdio();
    let capabilities = ServerCapabilities {
        text_document_sync: Some(TextDocumentSyncCapability::Options(TextDocumentSyncOptions {
            open_close: Some(true),
            change: Some(TextDocumentSyncKind::FULL),
            save: Some(TextDocumentSyncSaveOptions::Supported(true)),
            ..Default::default()
        })),
        hover_provider: Some(HoverProviderCapability::Simple(true)),
        definition_provider: Some(OneOf::Left(true)),
        completion_provider: Some(CompletionOptions {
            trigger_characters: Some(vec![".".into(), "@".into(), "/".into()]),
            ..Default::default()
        }),
        code_action_provider: Some(CodeActionProviderCapability::Simple(true)),
        ..Default::default()
    };
    let (id, _params) = connection.initialize_start()?;
    let result = InitializeResult {
        capabilities,
        server_info: Some(ServerInfo { name: "xpolc".into(), version: Some(env!("CARGO_PKG_VERSION").into()) }),
    };
    connection.initialize_finish(id, serde_json::to_value(result)?)?;

    let mut server = Server { docs: HashMap::new(), published: HashMap::new(), outbox: Vec::new(), dirty: HashSet::new() };
    loop {
        // Edits come faster than a large policy checks: an analysis waits
        // until the client has been quiet for a moment, so a burst of
        // keystrokes costs one check of the last text, not one per key.
        let msg = if server.dirty.is_empty() {
            match connection.receiver.recv() {
                Ok(msg) => msg,
                Err(_) => break,
            }
        } else {
            match connection.receiver.recv_timeout(QUIET) {
                Ok(msg) => msg,
                Err(e) if e.is_timeout() => {
                    server.analyze_dirty();
                    server.flush(&connection)?;
                    continue;
                }
                Err(_) => break,
            }
        };
        match msg {
            Message::Request(req) => {
                if connection.handle_shutdown(&req)? {
                    break;
                }
                // Code actions answer the diagnostics of the current text.
                if req.method == CodeActionRequest::METHOD {
                    server.analyze_dirty();
                }
                let resp = server.request(req);
                server.flush(&connection)?;
                connection.sender.send(resp.into())?;
            }
            Message::Notification(n) if n.method == "exit" => break,
            Message::Notification(n) => server.notification(n),
            Message::Response(_) => {}
        }
        server.flush(&connection)?;
    }
    drop(connection);
    io_threads.join()?;
    Ok(())
}

struct Server {
    docs: HashMap<Url, Document>,
    /// The diagnostics last published, per target file and per open
    /// document whose analysis produced them: a document's errors may lie
    /// in a file it includes, and two open documents may include the same
    /// file, so a target's list is the union over documents.
    published: HashMap<Url, HashMap<Url, Vec<lsp_types::Diagnostic>>>,
    /// Notifications to send after the current message.
    outbox: Vec<Notification>,
    /// Documents edited since their last analysis.
    dirty: HashSet<Url>,
}

struct Document {
    /// The file the buffer is (includes resolve relative to it); a stand-in
    /// name for a buffer that is no file.
    path: PathBuf,
    text: String,
    /// The latest analysis of `text`: what diagnostics and code actions use.
    latest: Analysis,
    /// Declarations from the last text that parsed: what definition, hover
    /// and completion use while the buffer does not parse.
    names: Names,
}

struct Analysis {
    sources: SourceMap,
    diagnostics: Vec<xpol_lang::Diagnostic>,
}

#[derive(Default)]
struct Names {
    sources: SourceMap,
    decls: Vec<Decl>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DeclKind {
    Set,
    Const,
    Pool,
    /// `map @NAME max N`, or the first `@NAME[...] = ...` when it has no
    /// `map` declaration (maps are declared by their uses).
    Map,
}

impl DeclKind {
    fn word(self) -> &'static str {
        match self {
            DeclKind::Set => "set",
            DeclKind::Const => "const",
            DeclKind::Pool => "pool",
            DeclKind::Map => "map",
        }
    }
}

struct Decl {
    /// As written in expressions: maps with their `@`.
    name: String,
    kind: DeclKind,
    /// The name in the declaration.
    name_span: Span,
    /// The whole declaration (shown on hover).
    span: Span,
    /// A `default` declaration, which gives way to one without it.
    default: bool,
}

impl Server {
    fn notification(&mut self, n: Notification) {
        match n.method.as_str() {
            DidOpenTextDocument::METHOD => {
                if let Ok(p) = n.extract::<lsp_types::DidOpenTextDocumentParams>(DidOpenTextDocument::METHOD) {
                    let uri = p.text_document.uri;
                    let path = document_path(&uri);
                    let doc = Document { path, text: p.text_document.text, latest: Analysis::empty(), names: Names::default() };
                    self.docs.insert(uri.clone(), doc);
                    self.analyze(&uri, false);
                }
            }
            DidChangeTextDocument::METHOD => {
                if let Ok(p) = n.extract::<lsp_types::DidChangeTextDocumentParams>(DidChangeTextDocument::METHOD) {
                    let uri = p.text_document.uri;
                    // Full sync: the last change holds the whole text.
                    if let (Some(doc), Some(change)) = (self.docs.get_mut(&uri), p.content_changes.into_iter().last()) {
                        doc.text = change.text;
                        self.dirty.insert(uri);
                    }
                }
            }
            DidSaveTextDocument::METHOD => {
                if let Ok(p) = n.extract::<lsp_types::DidSaveTextDocumentParams>(DidSaveTextDocument::METHOD) {
                    let uri = p.text_document.uri;
                    if let (Some(doc), Some(text)) = (self.docs.get_mut(&uri), p.text) {
                        doc.text = text;
                    }
                    if self.docs.contains_key(&uri) {
                        self.dirty.remove(&uri);
                        self.analyze(&uri, true);
                        self.recheck_includers(&uri);
                    }
                }
            }
            DidCloseTextDocument::METHOD => {
                if let Ok(p) = n.extract::<lsp_types::DidCloseTextDocumentParams>(DidCloseTextDocument::METHOD) {
                    let uri = p.text_document.uri;
                    self.docs.remove(&uri);
                    self.dirty.remove(&uri);
                    self.publish(&uri, HashMap::new());
                }
            }
            _ => {}
        }
    }

    fn analyze_dirty(&mut self) {
        for uri in std::mem::take(&mut self.dirty) {
            self.analyze(&uri, false);
        }
    }

    /// Open documents read their includes from disk: when one of those
    /// files is saved, they are checked again.
    fn recheck_includers(&mut self, saved: &Url) {
        let Ok(path) = saved.to_file_path() else { return };
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        let includers: Vec<Url> = self
            .docs
            .iter()
            .filter(|(uri, doc)| {
                *uri != saved && doc.latest.sources.files().any(|(id, f)| id != ROOT && f.path.as_deref() == Some(&path))
            })
            .map(|(uri, _)| uri.clone())
            .collect();
        for uri in includers {
            self.analyze(&uri, false);
        }
    }

    fn flush(&mut self, connection: &Connection) -> Result<()> {
        for n in self.outbox.drain(..) {
            connection.sender.send(n.into())?;
        }
        Ok(())
    }

    /// Re-checks a document and publishes its diagnostics. `build` also
    /// generates code, which adds the codegen budgets (program size, maps,
    /// jumps per program): milliseconds for ordinary policies, so done on
    /// save rather than on every keystroke.
    fn analyze(&mut self, uri: &Url, build: bool) {
        let Some(doc) = self.docs.get_mut(uri) else { return };
        let (path, text) = (doc.path.clone(), doc.text.clone());
        // A compiler bug must cost one analysis, not the editor's session.
        let outcome = std::panic::catch_unwind(move || {
            if build {
                let b = xpol_compiler::build_text(&path, text.clone(), &xpol_compiler::BuildOptions::default());
                // Declarations come from a check of the same text (the build
                // keeps its syntax trees only when it succeeds).
                let checked = xpol_compiler::check_text(&path, text);
                (Analysis { sources: b.sources, diagnostics: b.diagnostics }, names_of(&checked.loaded, &checked.sources))
            } else {
                let checked = xpol_compiler::check_text(&path, text);
                let names = names_of(&checked.loaded, &checked.sources);
                (Analysis { sources: checked.sources, diagnostics: checked.diagnostics }, names)
            }
        });
        match outcome {
            Ok((analysis, names)) => {
                doc.latest = analysis;
                if let Some(names) = names.or_else(|| names_of_root(&doc.path, &doc.text)) {
                    doc.names = names;
                }
            }
            Err(_) => {
                let mut sources = SourceMap::new();
                sources.add(xpol_lang::SourceFile::new(doc.path.display().to_string(), None, doc.text.clone()));
                let d = xpol_lang::Diagnostic::error("xpol::internal", "internal compiler error while checking this file")
                    .with_label(Span::new(ROOT, 0, 0), "")
                    .with_help("please report it with this file");
                doc.latest = Analysis { sources, diagnostics: vec![d] };
            }
        }
        let mut by_target: HashMap<Url, Vec<lsp_types::Diagnostic>> = HashMap::new();
        by_target.insert(uri.clone(), Vec::new());
        for d in &doc.latest.diagnostics {
            let (target, diag) = to_lsp_diagnostic(d, &doc.latest.sources, uri);
            by_target.entry(target).or_default().push(diag);
        }
        self.publish(uri, by_target);
    }

    /// Replaces what document `root` contributes to each file's diagnostics
    /// and republishes every file whose list changed.
    fn publish(&mut self, root: &Url, by_target: HashMap<Url, Vec<lsp_types::Diagnostic>>) {
        let mut affected: HashSet<Url> = by_target.keys().cloned().collect();
        for (target, per_root) in &mut self.published {
            if per_root.remove(root).is_some() {
                affected.insert(target.clone());
            }
        }
        for (target, diags) in by_target {
            self.published.entry(target).or_default().insert(root.clone(), diags);
        }
        for target in affected {
            let mut diagnostics: Vec<lsp_types::Diagnostic> = Vec::new();
            if let Some(per_root) = self.published.get(&target) {
                for d in per_root.values().flatten() {
                    if !diagnostics.contains(d) {
                        diagnostics.push(d.clone());
                    }
                }
            }
            if self.published.get(&target).is_some_and(HashMap::is_empty) {
                self.published.remove(&target);
            }
            let params = PublishDiagnosticsParams { uri: target, diagnostics, version: None };
            self.outbox.push(Notification::new(PublishDiagnostics::METHOD.into(), params));
        }
    }

    fn request(&mut self, req: Request) -> Response {
        let id = req.id.clone();
        let result = match req.method.as_str() {
            HoverRequest::METHOD => params::<HoverParams>(req).map(|p| json(self.hover(p))),
            GotoDefinition::METHOD => params::<GotoDefinitionParams>(req).map(|p| json(self.definition(p))),
            Completion::METHOD => params::<CompletionParams>(req).map(|p| json(self.completion(p))),
            CodeActionRequest::METHOD => params::<CodeActionParams>(req).map(|p| json(self.code_actions(p))),
            _ => return Response::new_err(id, ErrorCode::MethodNotFound as i32, format!("unhandled request `{}`", req.method)),
        };
        match result {
            Ok(value) => Response::new_ok(id, value),
            Err(e) => Response::new_err(id, ErrorCode::InvalidParams as i32, e),
        }
    }

    fn hover(&self, p: HoverParams) -> Option<Hover> {
        let pos = p.text_document_position_params;
        let doc = self.docs.get(&pos.text_document.uri)?;
        let index = LineIndex::new(&doc.text);
        let (start, end) = word_at(&doc.text, index.offset(pos.position))?;
        let word = &doc.text[start..end];
        let text = if let Some(field) = Field::by_name(word) {
            format!("```xpol\n{}: {}\n```\n{}\n\nPresent when {}.", field.name(), field.ty(), field.doc(), layer_phrase(field.layer()))
        } else {
            let decl = doc.names.lookup(word).next()?;
            let mut shown: String = doc.names.sources.snippet(decl.span).lines().take(8).collect::<Vec<_>>().join("\n");
            if shown.is_empty() {
                shown = decl.name.clone();
            }
            let (file, line, _) = doc.names.sources.location(decl.name_span);
            format!("{} `{}` ({file}:{line})\n```xpol\n{shown}\n```", decl.kind.word(), decl.name)
        };
        Some(Hover {
            contents: HoverContents::Markup(MarkupContent { kind: MarkupKind::Markdown, value: text }),
            range: Some(Range::new(index.position(start), index.position(end))),
        })
    }

    fn definition(&self, p: GotoDefinitionParams) -> Option<GotoDefinitionResponse> {
        let pos = p.text_document_position_params;
        let uri = &pos.text_document.uri;
        let doc = self.docs.get(uri)?;
        let offset = LineIndex::new(&doc.text).offset(pos.position);
        if let Some(target) = quoted_path_at(&doc.text, offset) {
            let path = self.resolve_include(doc, &target)?;
            let uri = Url::from_file_path(path).ok()?;
            return Some(GotoDefinitionResponse::Scalar(Location::new(uri, Range::default())));
        }
        let (start, end) = word_at(&doc.text, offset)?;
        let word = &doc.text[start..end];
        // A name declared `default` gives way to a declaration without it.
        let mut decls: Vec<&Decl> = doc.names.lookup(word).collect();
        if decls.iter().any(|d| !d.default) {
            decls.retain(|d| !d.default);
        }
        let locations: Vec<Location> =
            decls.iter().filter_map(|d| location(&doc.names.sources, d.name_span, uri)).collect();
        match locations.len() {
            0 => None,
            1 => Some(GotoDefinitionResponse::Scalar(locations.into_iter().next()?)),
            _ => Some(GotoDefinitionResponse::Array(locations)),
        }
    }

    /// The file `include "TARGET"` or `file("TARGET")` names, as the loader
    /// resolves it: relative to the document, else the standard library.
    fn resolve_include(&self, doc: &Document, target: &str) -> Option<PathBuf> {
        let local = doc.path.parent().map(|d| d.join(target)).filter(|p| p.is_file());
        if let Some(p) = local {
            return Some(std::fs::canonicalize(&p).unwrap_or(p));
        }
        // The standard library is compiled in; the loader records where its
        // checked-out copy is, when there is one.
        [&doc.names.sources, &doc.latest.sources]
            .into_iter()
            .flat_map(|s| s.files().map(|(_, f)| f).collect::<Vec<_>>())
            .find(|f| f.name == target)
            .and_then(|f| f.path.clone())
    }

    fn completion(&self, p: CompletionParams) -> Option<CompletionResponse> {
        let pos = p.text_document_position;
        let doc = self.docs.get(&pos.text_document.uri)?;
        let index = LineIndex::new(&doc.text);
        let offset = index.offset(pos.position);
        // Replace the whole dotted word typed so far: editors split words at
        // `.`, and `tcp.d` completed to `tcp.dport` must not become
        // `tcp.tcp.dport`.
        let bytes = doc.text.as_bytes();
        let mut start = offset;
        while start > 0 && is_word_byte(bytes[start - 1]) {
            start -= 1;
        }
        let prefix = &doc.text[start..offset];
        let range = Range::new(index.position(start), index.position(offset));
        let item = |label: String, kind, detail: String, doc: String| CompletionItem {
            label: label.clone(),
            kind: Some(kind),
            detail: Some(detail),
            documentation: (!doc.is_empty())
                .then_some(Documentation::MarkupContent(MarkupContent { kind: MarkupKind::Markdown, value: doc })),
            text_edit: Some(CompletionTextEdit::Edit(TextEdit::new(range, label))),
            ..Default::default()
        };
        let mut items = Vec::new();
        if !prefix.starts_with('@') {
            for f in Field::ALL {
                items.push(item(f.name().into(), CompletionItemKind::FIELD, format!("{} field", f.ty()), f.doc().into()));
            }
        }
        let mut seen = HashSet::new();
        for d in &doc.names.decls {
            if !seen.insert(&d.name) {
                continue;
            }
            let kind = match d.kind {
                DeclKind::Set => CompletionItemKind::VARIABLE,
                DeclKind::Const => CompletionItemKind::CONSTANT,
                DeclKind::Pool => CompletionItemKind::STRUCT,
                DeclKind::Map => CompletionItemKind::VARIABLE,
            };
            let snippet = doc.names.sources.snippet(d.span).lines().next().unwrap_or("").to_string();
            items.push(item(d.name.clone(), kind, d.kind.word().into(), format!("```xpol\n{snippet}\n```")));
        }
        Some(CompletionResponse::Array(items))
    }

    fn code_actions(&self, p: CodeActionParams) -> Option<Vec<CodeActionOrCommand>> {
        let uri = &p.text_document.uri;
        let doc = self.docs.get(uri)?;
        Some(code_actions(&doc.latest, uri, p.range, fixes_of))
    }
}

impl Analysis {
    fn empty() -> Analysis {
        Analysis { sources: SourceMap::new(), diagnostics: Vec::new() }
    }
}

impl Names {
    fn lookup<'a>(&'a self, word: &'a str) -> impl Iterator<Item = &'a Decl> + 'a {
        self.decls.iter().filter(move |d| d.name == word)
    }
}

/// An edit the editor can apply for a diagnostic: `span` replaced by
/// `replacement`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fix {
    title: String,
    span: Span,
    replacement: String,
}

/// The one place that maps a compiler diagnostic to the fixes offered as
/// code actions: each of its fixes (`Diagnostic::fixes`), machine-
/// applicable or not, since a person chooses in an editor.
fn fixes_of(diagnostic: &xpol_lang::Diagnostic) -> Vec<Fix> {
    diagnostic.fixes.iter().map(|f| Fix { title: f.message.clone(), span: f.span, replacement: f.replacement.clone() }).collect()
}

/// Quick fixes for the diagnostics of `analysis` whose primary range meets
/// `range` in the document `uri`.
fn code_actions(
    analysis: &Analysis,
    uri: &Url,
    range: Range,
    fixes_of: impl Fn(&xpol_lang::Diagnostic) -> Vec<Fix>,
) -> Vec<CodeActionOrCommand> {
    let mut actions = Vec::new();
    for d in &analysis.diagnostics {
        let (target, diag) = to_lsp_diagnostic(d, &analysis.sources, uri);
        if &target != uri || diag.range.end < range.start || range.end < diag.range.start {
            continue;
        }
        for fix in fixes_of(d) {
            let Some(at) = location(&analysis.sources, fix.span, uri) else { continue };
            let edit = WorkspaceEdit {
                changes: Some(HashMap::from([(at.uri, vec![TextEdit::new(at.range, fix.replacement)])])),
                ..Default::default()
            };
            actions.push(CodeActionOrCommand::CodeAction(CodeAction {
                title: fix.title,
                kind: Some(CodeActionKind::QUICKFIX),
                diagnostics: Some(vec![diag.clone()]),
                edit: Some(edit),
                is_preferred: Some(true),
                ..Default::default()
            }));
        }
    }
    actions
}

/// An xpol diagnostic as the protocol's, and the file it belongs to: the
/// file of its primary label (an included file has its own URI). A
/// diagnostic without a label, or in a file that is not on disk (the
/// compiled-in standard library), is shown at the document's start with
/// its location in the message.
fn to_lsp_diagnostic(d: &xpol_lang::Diagnostic, sources: &SourceMap, root: &Url) -> (Url, lsp_types::Diagnostic) {
    let mut message = d.message.clone();
    let primary = d.labels.first().and_then(|l| location(sources, l.span, root).map(|at| (l, at)));
    let (target, range) = match &primary {
        Some((label, at)) => {
            if !label.message.is_empty() && label.message != d.message {
                message.push_str(&format!("\n{}", label.message));
            }
            (at.uri.clone(), at.range)
        }
        None => {
            if let Some(l) = d.labels.first() {
                let (file, line, col) = sources.location(l.span);
                message = format!("{file}:{line}:{col}: {message}");
                if !l.message.is_empty() {
                    message.push_str(&format!("\n{}", l.message));
                }
            }
            (root.clone(), Range::default())
        }
    };
    // Fixes in words, as the terminal shows them (their edits are the
    // code actions).
    for fix in &d.fixes {
        message.push_str(&format!("\nhelp: {}", fix.message));
    }
    if let Some(help) = &d.help {
        message.push_str(&format!("\nhelp: {help}"));
    }
    let related: Vec<DiagnosticRelatedInformation> = d
        .labels
        .iter()
        .skip(1)
        .filter_map(|l| {
            let location = location(sources, l.span, root)?;
            let message = if l.message.is_empty() { "related".to_string() } else { l.message.clone() };
            Some(DiagnosticRelatedInformation { location, message })
        })
        .collect();
    let diag = lsp_types::Diagnostic {
        range,
        severity: Some(match d.severity {
            xpol_lang::Severity::Error => DiagnosticSeverity::ERROR,
            xpol_lang::Severity::Warning => DiagnosticSeverity::WARNING,
        }),
        code: Some(NumberOrString::String(d.code.clone())),
        source: Some("xpolc".into()),
        message,
        related_information: (!related.is_empty()).then_some(related),
        ..Default::default()
    };
    (target, diag)
}

/// Where a span is, as the protocol says it: the root file is the
/// document itself (whatever its URI), other files by their path on disk.
fn location(sources: &SourceMap, span: Span, root: &Url) -> Option<Location> {
    if span.file.0 as usize >= sources.files().count() {
        return None;
    }
    let file = sources.get(span.file);
    let uri = if span.file == ROOT { root.clone() } else { Url::from_file_path(file.path.as_ref()?).ok()? };
    let index = LineIndex::new(&file.text);
    Some(Location::new(uri, Range::new(index.position(span.start as usize), index.position(span.end as usize))))
}

/// The declarations of every file loaded (root and includes).
fn names_of(loaded: &Option<xpol_compiler::load::Loaded>, sources: &SourceMap) -> Option<Names> {
    let loaded = loaded.as_ref()?;
    let mut decls = Vec::new();
    for f in &loaded.files {
        collect_decls(&f.policy, &mut decls);
    }
    Some(Names { sources: sources.clone(), decls })
}

/// When an include fails to load, the root may still parse alone: its own
/// names stay usable.
fn names_of_root(path: &Path, text: &str) -> Option<Names> {
    let policy = xpol_lang::parser::parse(text, ROOT).ok()?;
    let mut sources = SourceMap::new();
    sources.add(xpol_lang::SourceFile::new(path.display().to_string(), None, text));
    let mut decls = Vec::new();
    collect_decls(&policy, &mut decls);
    Some(Names { sources, decls })
}

fn collect_decls(policy: &Policy, decls: &mut Vec<Decl>) {
    let mut map_uses = Vec::new();
    for item in &policy.items {
        match item {
            Item::Set(s) => decls.push(Decl {
                name: s.name.name.clone(),
                kind: DeclKind::Set,
                name_span: s.name.span,
                span: s.span,
                default: false,
            }),
            Item::Const(c) => decls.push(Decl {
                name: c.name.name.clone(),
                kind: DeclKind::Const,
                name_span: c.name.span,
                span: c.span,
                default: c.default.is_some(),
            }),
            Item::Pool(p) => decls.push(Decl {
                name: p.name.name.clone(),
                kind: DeclKind::Pool,
                name_span: p.name.span,
                span: p.span,
                default: p.default.is_some(),
            }),
            Item::Map(m) => decls.push(Decl {
                name: format!("@{}", m.map.name),
                kind: DeclKind::Map,
                name_span: m.map.span,
                span: m.span,
                default: false,
            }),
            Item::Probe(p) => map_assignments(&p.body, &mut map_uses),
            Item::Include(_) | Item::Test(_) | Item::Conntrack(_) => {}
        }
    }
    // A map without a `map` declaration is defined by its first assignment.
    for (name, span) in map_uses {
        let name = format!("@{name}");
        if !decls.iter().any(|d| d.name == name) {
            decls.push(Decl { name, kind: DeclKind::Map, name_span: span, span, default: false });
        }
    }
}

fn map_assignments(block: &Block, out: &mut Vec<(String, Span)>) {
    for stmt in &block.stmts {
        match &stmt.kind {
            StmtKind::MapAssign { map, .. } => out.push((map.name.clone(), map.span)),
            StmtKind::If { then_block, else_block, .. } => {
                map_assignments(then_block, out);
                if let Some(b) = else_block {
                    map_assignments(b, out);
                }
            }
            _ => {}
        }
    }
}

fn layer_phrase(layer: Layer) -> &'static str {
    match layer {
        Layer::Packet => "always",
        Layer::Eth => "the frame has a full Ethernet header",
        Layer::Vlan1 => "the frame has at least one VLAN tag",
        Layer::Vlan2 => "the frame has at least two VLAN tags",
        Layer::Ip => "the packet has a valid IPv4 or IPv6 header",
        Layer::Ip4 => "the packet has a valid IPv4 header",
        Layer::Ip6 => "the packet has a valid IPv6 header",
        Layer::IpProto => "the packet's upper-layer protocol is known",
        Layer::Tcp => "the packet has a complete TCP header (not a later fragment)",
        Layer::Udp => "the packet has a complete UDP header (not a later fragment)",
        Layer::Ports => "the packet has a complete TCP or UDP header (not a later fragment)",
        Layer::Icmp4 => "the packet has an ICMP header",
        Layer::Icmp6 => "the packet has an ICMPv6 header",
        Layer::Ct => "the packet is TCP, UDP, an ICMP echo or an ICMP error (not a later fragment)",
    }
}

/// The characters of a name as hover and definition see it: dotted field
/// names (`tcp.dport`) and maps (`@blocked`) are one word.
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'@'
}

/// The byte range of the word at (or just before) `offset`.
fn word_at(text: &str, offset: usize) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut start = offset.min(bytes.len());
    while start > 0 && is_word_byte(bytes[start - 1]) {
        start -= 1;
    }
    let mut end = offset.min(bytes.len());
    while end < bytes.len() && is_word_byte(bytes[end]) {
        end += 1;
    }
    // A word ends at a sentence's dot too: `admins.` names `admins`.
    let word = text[start..end].trim_end_matches('.');
    (!word.is_empty()).then_some((start, start + word.len()))
}

/// The path in `include "PATH"` or `file("PATH")` when `offset` is inside
/// its quotes.
fn quoted_path_at(text: &str, offset: usize) -> Option<String> {
    let line_start = text[..offset.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[line_start..].find('\n').map_or(text.len(), |i| line_start + i);
    let line = &text[line_start..line_end];
    let at = offset - line_start;
    let open = line[..at.min(line.len())].rfind('"')?;
    let close = open + 1 + line[open + 1..].find('"')?;
    if at <= open || at > close {
        return None;
    }
    let before = line[..open].trim_end();
    (before.ends_with("include") || before.ends_with("file(")).then(|| line[open + 1..close].to_string())
}

/// The file a document is, for resolving its includes: a `file:` URI's
/// path; any other buffer (an unsaved one) gets a name with no directory,
/// so only the standard library resolves.
fn document_path(uri: &Url) -> PathBuf {
    uri.to_file_path().unwrap_or_else(|_| {
        let last = uri.path_segments().and_then(|mut s| s.next_back()).unwrap_or("untitled.xpol");
        PathBuf::from(if last.is_empty() { "untitled.xpol" } else { last })
    })
}

fn params<P: serde::de::DeserializeOwned>(req: Request) -> Result<P, String> {
    serde_json::from_value(req.params).map_err(|e| format!("invalid parameters for `{}`: {e}", req.method))
}

fn json<T: serde::Serialize>(value: T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// Line starts of a text, to convert byte offsets to the protocol's
/// positions (line, UTF-16 column) and back.
struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> LineIndex<'a> {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, starts }
    }

    fn position(&self, offset: usize) -> Position {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&s| s <= offset) - 1;
        let character = self.text[self.starts[line]..offset].encode_utf16().count();
        Position::new(line as u32, character as u32)
    }

    /// The byte offset of a position; past a line's end means its end, past
    /// the last line the text's end.
    fn offset(&self, pos: Position) -> usize {
        let Some(&start) = self.starts.get(pos.line as usize) else { return self.text.len() };
        let end = self.starts.get(pos.line as usize + 1).map_or(self.text.len(), |&e| e - 1);
        let mut units = 0u32;
        for (i, c) in self.text[start..end].char_indices() {
            if units >= pos.character {
                return start + i;
            }
            units += c.len_utf16() as u32;
        }
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_utf16_units() {
        // `é` is 2 bytes and 1 unit; `😀` is 4 bytes and 2 units.
        let text = "ab\né😀x\n";
        let index = LineIndex::new(text);
        let x = text.find('x').unwrap();
        assert_eq!(index.position(x), Position::new(1, 3));
        assert_eq!(index.offset(Position::new(1, 3)), x);
        assert_eq!(index.position(text.len()), Position::new(2, 0));
        // Inside a surrogate pair or past the end of a line: clamped.
        assert_eq!(index.offset(Position::new(1, 99)), x + 1);
        assert_eq!(index.offset(Position::new(9, 0)), text.len());
    }

    #[test]
    fn words_and_quoted_paths() {
        let text = "xdp /tcp.dport == 22/ { @hits = count() }\ninclude \"std/bogons.xpol\"\n";
        let at = |s: &str| text.find(s).unwrap();
        let (s, e) = word_at(text, at("dport")).unwrap();
        assert_eq!(&text[s..e], "tcp.dport");
        let (s, e) = word_at(text, at("hits")).unwrap();
        assert_eq!(&text[s..e], "@hits");
        assert_eq!(quoted_path_at(text, at("bogons")).as_deref(), Some("std/bogons.xpol"));
        assert_eq!(quoted_path_at(text, at("include")), None);
    }

    #[test]
    fn code_actions_carry_the_fix_as_an_edit() {
        let text = "xdp /ip.src = 10.0.0.1/ { drop }\n";
        let mut sources = SourceMap::new();
        let id = sources.add(xpol_lang::SourceFile::new("t.xpol", None, text));
        let eq = text.find(" = ").unwrap() + 1;
        let d = xpol_lang::Diagnostic::error("xpol::syntax", "expected `==`").with_label(Span::new(id, eq, eq + 1), "here");
        let analysis = Analysis { sources, diagnostics: vec![d] };
        let uri = Url::parse("file:///tmp/t.xpol").unwrap();
        let fix = |d: &xpol_lang::Diagnostic| {
            vec![Fix { title: "use `==`".into(), span: d.primary_span().unwrap(), replacement: "==".into() }]
        };
        let whole = Range::new(Position::new(0, 0), Position::new(1, 0));
        let actions = code_actions(&analysis, &uri, whole, fix);
        assert_eq!(actions.len(), 1);
        let CodeActionOrCommand::CodeAction(a) = &actions[0] else { panic!("not a code action") };
        let edits = &a.edit.as_ref().unwrap().changes.as_ref().unwrap()[&uri];
        assert_eq!(edits, &vec![TextEdit::new(Range::new(Position::new(0, 12), Position::new(0, 13)), "==".into())]);
        // A range elsewhere gets nothing; nor does the real mapping, yet.
        let elsewhere = Range::new(Position::new(5, 0), Position::new(5, 1));
        assert!(code_actions(&analysis, &uri, elsewhere, fix).is_empty());
        assert!(code_actions(&analysis, &uri, whole, fixes_of).is_empty());
    }
}
